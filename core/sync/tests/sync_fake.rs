//! The sync against real fake PVE clusters (fakepve via testkit): inventory, IPs, staleness, and the ways
//! real PVE answers trip clients up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use pve::{Auth, PveClient, PveConfig, Secret, Tls};
use serde_json::json;
use sync::{AgentDiscovery, ClusterHandle, Inventory, SyncConfig, Syncer};
use testkit::{ClusterSpec, FakeCluster};

fn client(c: &FakeCluster) -> PveClient {
    let auth = Auth::Token {
        id: c.token_id.clone(),
        secret: Secret::new(c.token_secret.clone()),
    };
    PveClient::new(PveConfig::new(
        c.url.parse().unwrap(),
        auth,
        Tls::CaFile(c.ca_file.clone()),
    ))
    .unwrap()
}

fn syncer(clusters: &[(&str, &FakeCluster)], store: Option<store::Store>) -> Arc<Syncer> {
    let names: Vec<(String, String)> = clusters
        .iter()
        .map(|(id, _)| (id.to_string(), id.to_string()))
        .collect();
    let inv = Inventory::load(store, &names).unwrap();
    let handles = clusters
        .iter()
        .map(|(id, c)| ClusterHandle {
            id: id.to_string(),
            name: id.to_string(),
            client: client(c),
        })
        .collect();
    let cfg = SyncConfig {
        ip_backoff: Duration::from_millis(100),
        ..SyncConfig::default()
    };
    Syncer::new(inv, handles, cfg, Arc::new(AgentDiscovery))
}

fn guests_with_agent_missing_disabled_or_stopped() -> Vec<serde_json::Value> {
    vec![
        json!({"vmid": 131, "name": "w11-lab", "node": "pve1", "status": "running",
               "config": {"net0": "virtio=BC:24:11:00:01:31,bridge=vmbr0", "memory": 2048}}),
        json!({"vmid": 132, "name": "agent-off", "node": "pve1", "status": "running",
               "config": {"net0": "virtio=BC:24:11:00:01:32,bridge=vmbr0", "agent": "enabled=0"}}),
        json!({"vmid": 133, "name": "agent-zero", "node": "pve2", "status": "running",
               "config": {"net0": "virtio=BC:24:11:00:01:33,bridge=vmbr0", "agent": "0"}}),
        json!({"vmid": 134, "name": "agent-on-stopped", "node": "pve2", "status": "stopped",
               "config": {"net0": "virtio=BC:24:11:00:01:34,bridge=vmbr0", "agent": "1,fstrim_cloned_disks=1"}}),
        json!({"vmid": 135, "name": "agent-enabled-form", "node": "pve3", "status": "running",
               "config": {"net0": "virtio=BC:24:11:00:01:35,bridge=vmbr0", "agent": "enabled=1,fstrim_cloned_disks=1"}}),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clusters_sync_every_guest_with_agent_ips() {
    let clusters = tokio::task::spawn_blocking(|| {
        FakeCluster::start_many(vec![ClusterSpec::lab(), ClusterSpec::lab(), ClusterSpec::lab()])
    })
    .await
    .unwrap()
    .unwrap();
    let s = syncer(
        &[("a", &clusters[0]), ("b", &clusters[1]), ("c", &clusters[2])],
        None,
    );
    let results = s.sync_once().await;
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    let snap = s.inventory().snapshot();
    for (id, fake) in [("a", &clusters[0]), ("b", &clusters[1]), ("c", &clusters[2])] {
        let state = fake.state().unwrap();
        let fake_guests = state["guests"].as_array().unwrap();
        assert_eq!(snap.cluster_guests(id).count(), fake_guests.len(), "cluster {id}");
        // Running guests get the address the fake's agent reports (lo listed first is skipped).
        let g = snap.guest(id, 1101).expect("1101");
        assert_eq!(g.status, "running");
        let ip = g.ip.as_ref().expect("1101 has an IP");
        assert_eq!(ip.source, "guest-agent");
        assert_eq!(ip.address, "10.41.0.10");
        assert_eq!(
            snap.guest(id, 1201).unwrap().ip.as_ref().unwrap().address,
            "10.42.0.10"
        );
        // Containers: LXC interfaces or the config's static ip= (when `/interfaces` gives nothing).
        let ct = snap.guest(id, 1301).unwrap();
        assert_eq!(
            ct.ip.as_ref().map(|i| i.address.as_str()),
            Some("10.43.0.10"),
            "{ct:?}"
        );
        assert!(snap.clusters[id].with_ip >= 15, "{:?}", snap.clusters[id]);
        assert_eq!(snap.clusters[id].status, "ok");
    }
    // Templates recognised, whatever the form of the field.
    assert!(snap.guest("a", 9000).unwrap().template);
    assert!(snap.guest("a", 9002).unwrap().template);
    assert!(!snap.guest("a", 100).unwrap().template);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_agent_calls_for_guests_without_an_enabled_agent() {
    let spec = ClusterSpec {
        extra_guests: guests_with_agent_missing_disabled_or_stopped(),
        ..ClusterSpec::lab()
    };
    let fake = tokio::task::spawn_blocking(move || FakeCluster::start(spec))
        .await
        .unwrap()
        .unwrap();
    let s = syncer(&[("lab", &fake)], None);
    let before = fake.request_count().unwrap();
    s.sync_once().await;
    // A second round must not poll guests whose IP is known or whose agent is off.
    s.sync_once().await;
    let reqs = fake.requests_since(before).unwrap();
    let agent_paths: Vec<String> = reqs
        .iter()
        .map(|r| r["path"].as_str().unwrap_or_default().to_string())
        .filter(|p| p.contains("/agent/"))
        .collect();
    for vmid in [131, 132, 133, 134] {
        assert!(
            !agent_paths.iter().any(|p| p.contains(&format!("/qemu/{vmid}/"))),
            "agent call for {vmid}: {agent_paths:?}"
        );
    }
    // The `enabled=1,...` form is understood as on.
    assert!(
        agent_paths.iter().any(|p| p.contains("/qemu/135/agent/")),
        "{agent_paths:?}"
    );
    let snap = s.inventory().snapshot();
    assert_eq!(snap.guest("lab", 132).unwrap().agent, Some(false));
    assert!(snap.guest("lab", 135).unwrap().ip.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_not_running_falls_back_without_failing_the_sync() {
    let spec = ClusterSpec::lab();
    let fake = tokio::task::spawn_blocking(move || FakeCluster::start(spec))
        .await
        .unwrap()
        .unwrap();
    // VM 104 "monitoring" is running; give it an agent flag but no agent answering.
    fake.control(
        "POST",
        "/fail",
        json!({"method": "GET", "path": "/nodes/pve1/qemu/1101/agent/network-get-interfaces",
        "status": 500, "message": "QEMU guest agent is not running\n"}),
    )
    .unwrap();
    let s = syncer(&[("lab", &fake)], None);
    let results = s.sync_once().await;
    assert!(results[0].is_ok(), "{results:?}");
    let snap = s.inventory().snapshot();
    assert!(snap.guest("lab", 1101).unwrap().ip.is_none());
    assert!(
        snap.guest("lab", 1104).unwrap().ip.is_some(),
        "other guests still get their IPs"
    );
    // Backed off: an immediate second round does not ask 1101's agent again.
    let before = fake.request_count().unwrap();
    s.sync_once().await;
    let again = fake
        .requests_since(before)
        .unwrap()
        .iter()
        .filter(|r| {
            r["path"]
                .as_str()
                .unwrap_or_default()
                .contains("/qemu/1101/agent")
        })
        .count();
    assert_eq!(again, 0, "agent of 1101 must be backed off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_node_and_lost_quorum_keep_the_inventory_marked_stale_until_recovery() {
    let fake = tokio::task::spawn_blocking(|| FakeCluster::start(ClusterSpec::lab()))
        .await
        .unwrap()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = store::Store::open(dir.path()).unwrap();
    let s = syncer(&[("lab", &fake)], Some(store.clone()));
    s.sync_once().await;
    let total = s.inventory().snapshot().cluster_guests("lab").count();
    let before_1102 = s.inventory().snapshot().guest("lab", 1102).unwrap().clone();
    assert_eq!(before_1102.status, "running");

    // One node down: node pve2 goes offline: its guests stay, with their last known state, marked stale.
    fake.control("POST", "/node", json!({"node": "pve2", "online": false}))
        .unwrap();
    let rep = s
        .tick_cluster("lab", true)
        .await
        .expect("a partial sync is not a failure");
    assert!(rep.stale > 0);
    let snap = s.inventory().snapshot();
    assert_eq!(
        snap.cluster_guests("lab").count(),
        total,
        "no guest is dropped because its node is down"
    );
    let g = snap.guest("lab", 1102).unwrap();
    assert_eq!(g.status, "running", "last known state kept");
    assert!(
        g.stale.as_deref().unwrap_or_default().contains("pve2"),
        "{:?}",
        g.stale
    );
    assert_eq!(snap.clusters["lab"].status, "partial");
    assert_eq!(snap.clusters["lab"].offline_nodes, vec!["pve2".to_string()]);
    // Persisted too.
    assert!(
        store
            .inventory
            .get(&store::vm_key("lab", 1102))
            .unwrap()
            .unwrap()
            .stale
            .is_some()
    );

    // Quorum lost: the whole cluster is stale with the reason.
    fake.control("POST", "/node", json!({"node": "pve2", "online": true}))
        .unwrap();
    fake.control("POST", "/quorum", json!({"quorate": false}))
        .unwrap();
    let mut events = s.inventory().subscribe();
    s.tick_cluster("lab", true).await.unwrap();
    let snap = s.inventory().snapshot();
    assert_eq!(snap.clusters["lab"].status, "stale");
    assert!(snap.clusters["lab"].reason.as_deref().unwrap().contains("quorum"));
    assert!(snap.clusters["lab"].stale_since.is_some());
    assert_eq!(snap.cluster_guests("lab").count(), total);
    let ev = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let Ok(sync::Event::Cluster { state }) = events.recv().await {
                return state;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(ev.status, "stale");

    // Recovery clears staleness by itself.
    fake.control("POST", "/quorum", json!({"quorate": true})).unwrap();
    s.tick_cluster("lab", true).await.unwrap();
    let snap = s.inventory().snapshot();
    assert_eq!(snap.clusters["lab"].status, "ok");
    assert!(snap.guest("lab", 1102).unwrap().stale.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_cluster_keeps_last_inventory_and_others_are_unaffected() {
    let clusters =
        tokio::task::spawn_blocking(|| FakeCluster::start_many(vec![ClusterSpec::lab(), ClusterSpec::lab()]))
            .await
            .unwrap()
            .unwrap();
    let s = syncer(&[("up", &clusters[0]), ("down", &clusters[1])], None);
    s.sync_once().await;
    let n = s.inventory().snapshot().cluster_guests("down").count();
    clusters[1]
        .control(
            "POST",
            "/fail",
            json!({"method": "GET", "path": "/cluster/resources", "status": 595,
            "message": "No route to host", "times": 100}),
        )
        .unwrap();
    let results = s.sync_once().await;
    assert!(results[0].is_ok());
    let err = results[1].as_ref().unwrap_err().to_string();
    assert!(err.contains("down"), "{err}");
    let snap = s.inventory().snapshot();
    assert_eq!(snap.cluster_guests("down").count(), n, "last inventory kept");
    assert_eq!(snap.clusters["down"].status, "stale");
    assert_eq!(snap.clusters["up"].status, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_after_start_publishes_the_change_and_chases_the_ip() {
    let fake = FakeCluster::shared();
    let s = syncer(&[("lab", fake)], None);
    s.sync_once().await;
    // 1110 is stopped in the lab cluster (its agent answers once running: auto_agent 10.60.4.112); start it through the API like the portal does.
    let c = client(fake);
    let mut events = s.inventory().subscribe();
    let upid = c
        .power("pve1", pve::GuestKind::Qemu, 1110, pve::PowerAction::Start)
        .await
        .unwrap();
    c.wait_task(&upid, Duration::from_secs(30)).await.unwrap();
    let g = s.refresh_guest("lab", 1110).await.unwrap();
    assert_eq!(g.status, "running");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut saw_running = false;
    let mut saw_ip = false;
    while tokio::time::Instant::now() < deadline && !(saw_running && saw_ip) {
        if let Ok(Ok(sync::Event::Guest { guest })) =
            tokio::time::timeout(Duration::from_millis(500), events.recv()).await
            && guest.vmid == 1110
        {
            saw_running |= guest.status == "running";
            saw_ip |= guest.ip.as_ref().is_some_and(|ip| ip.address == "10.60.4.112");
        }
    }
    assert!(saw_running && saw_ip, "running={saw_running} ip={saw_ip}");
    // Leave the shared cluster as we found it.
    let upid = c
        .power("pve1", pve::GuestKind::Qemu, 1110, pve::PowerAction::Stop)
        .await
        .unwrap();
    c.wait_task(&upid, Duration::from_secs(30)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_without_vm_audit_is_reported_by_name_not_as_no_vms() {
    // A guests file whose cluster grants a privilege-separated token only Sys.Audit on /.
    let dir = tempfile::tempdir().unwrap();
    let mut spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(testkit::sim_dir().join("lab-cluster.json")).unwrap())
            .unwrap();
    spec["cluster"]["users"]["viewer@pve"] = json!("viewer-pass");
    spec["cluster"]["apitokens"]["viewer@pve!portal"] = json!("viewer-secret");
    spec["cluster"]["acl"] = json!([{"user": "viewer@pve!portal", "path": "/", "privs": ["Sys.Audit"]}]);
    let file = dir.path().join("weak.json");
    std::fs::write(&file, spec.to_string()).unwrap();
    let fake = tokio::task::spawn_blocking(move || {
        FakeCluster::start(ClusterSpec {
            guests_file: file,
            ..ClusterSpec::lab()
        })
    })
    .await
    .unwrap()
    .unwrap();
    let auth = Auth::Token {
        id: "viewer@pve!portal".into(),
        secret: Secret::new("viewer-secret"),
    };
    let weak = PveClient::new(PveConfig::new(
        fake.url.parse().unwrap(),
        auth,
        Tls::CaFile(fake.ca_file.clone()),
    ))
    .unwrap();
    let inv = Inventory::load(None, &[("lab".into(), "lab".into())]).unwrap();
    let s = Syncer::new(
        inv,
        vec![ClusterHandle {
            id: "lab".into(),
            name: "lab".into(),
            client: weak,
        }],
        SyncConfig::default(),
        Arc::new(AgentDiscovery),
    );
    s.sync_once().await;
    let st = s.inventory().snapshot().clusters["lab"].clone();
    assert!(
        st.warnings
            .iter()
            .any(|w| w.starts_with("token lacks VM.Audit") && w.ends_with("on /vms")),
        "{st:?}"
    );
    if st.guests == 0 {
        assert!(
            st.warnings.iter().any(|w| w == "no VMs visible to this token"),
            "{st:?}"
        );
    }
    // The full token has no warning.
    let ok = syncer(&[("lab", &fake)], None);
    ok.sync_once().await;
    assert!(ok.inventory().snapshot().clusters["lab"].warnings.is_empty());
}
