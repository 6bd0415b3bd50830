//! Cluster-wide faults against a real fake cluster: lost quorum, an offline node, slow tasks, and a
//! privilege-separated token. Each test starts its own cluster, since these faults hit everyone.

// Setup helpers outside #[test] fns panic on failure, as tests do.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{requests, token_client};
use pve::{
    Auth, GuestKind, PowerAction, PveClient, PveConfig, PveError, REQUIRED_VM_PRIVILEGES, Secret,
    TaskOutcome, Tls,
};
use serde_json::json;
use testkit::{ClusterSpec, FakeCluster};

#[tokio::test]
async fn lost_quorum_fails_writes_with_no_quorum_and_shows_in_cluster_status() {
    let c = FakeCluster::start(ClusterSpec::lab()).unwrap();
    let pve = token_client(&c);
    c.control("POST", "/quorum", json!({"quorate": false})).unwrap();
    let err = pve
        .power("pve1", GuestKind::Qemu, 1110, PowerAction::Start)
        .await
        .unwrap_err();
    assert!(
        matches!(err, PveError::NoQuorum(ref m) if m == "cluster not ready - no quorum?"),
        "{err:?}"
    );
    assert!(err.is_retryable());
    let status = pve.cluster_status().await.unwrap();
    assert_eq!(
        status.iter().find(|e| e.kind == "cluster").unwrap().quorate,
        Some(false)
    );
    // Reads still work.
    assert!(!pve.cluster_resources().await.unwrap().is_empty());
    c.control("POST", "/quorum", json!({"quorate": true})).unwrap();
    let upid = pve
        .power("pve1", GuestKind::Qemu, 1110, PowerAction::Start)
        .await
        .unwrap();
    assert_eq!(
        pve.wait_task(&upid, Duration::from_secs(10)).await.unwrap(),
        TaskOutcome::Ok
    );
}

#[tokio::test]
async fn offline_node_gives_node_unreachable_after_read_retries() {
    let c = FakeCluster::start(ClusterSpec::lab()).unwrap();
    let pve = token_client(&c);
    c.control("POST", "/node", json!({"node": "pve2", "online": false}))
        .unwrap();
    let mark = c.request_count().unwrap();
    let err = pve.guest_status("pve2", GuestKind::Qemu, 1102).await.unwrap_err();
    assert!(
        matches!(err, PveError::NodeUnreachable { status: 595, ref message } if message == "No route to host"),
        "{err:?}"
    );
    assert_eq!(
        requests(&c, mark, "GET", "/nodes/pve2/qemu/1102/status/current").len(),
        3
    );
    // Writes to that node fail at once, without a retry.
    let mark = c.request_count().unwrap();
    let w = pve
        .power("pve2", GuestKind::Qemu, 1102, PowerAction::Stop)
        .await
        .unwrap_err();
    assert!(matches!(w, PveError::NodeUnreachable { .. }), "{w:?}");
    assert_eq!(
        requests(&c, mark, "POST", "/nodes/pve2/qemu/1102/status/stop").len(),
        1
    );
    // The rest of the cluster answers; the node list says which node is gone.
    pve.guest_status("pve1", GuestKind::Qemu, 1101).await.unwrap();
    let nodes = pve.nodes().await.unwrap();
    assert!(!nodes.iter().find(|n| n.node == "pve2").unwrap().is_online());
    let rows = pve.cluster_resources().await.unwrap();
    assert_eq!(rows.iter().find(|r| r.vmid == 1102).unwrap().status, "unknown");
}

#[tokio::test]
async fn wait_task_polls_a_running_task_until_ok_or_times_out() {
    // 0.01 real s per PVE s: a start takes a moment, a 45 s shutdown takes 0.45 s.
    let c = FakeCluster::start(ClusterSpec {
        time_scale: 0.01,
        ..ClusterSpec::lab()
    })
    .unwrap();
    let pve = token_client(&c);
    let start = pve
        .power("pve3", GuestKind::Qemu, 1208, PowerAction::Start)
        .await
        .unwrap();
    assert_eq!(
        pve.wait_task(&start, Duration::from_secs(20)).await.unwrap(),
        TaskOutcome::Ok
    );
    let mark = c.request_count().unwrap();
    let shutdown = pve
        .power("pve3", GuestKind::Qemu, 1208, PowerAction::Shutdown)
        .await
        .unwrap();
    match pve.wait_task(&shutdown, Duration::from_millis(100)).await {
        Err(PveError::TaskTimeout { upid }) => assert_eq!(upid, shutdown.to_string()),
        other => panic!("{other:?}"),
    }
    // Polling hit the node in the UPID with the UPID percent-encoded.
    let polls = requests(&c, mark, "GET", "/status");
    assert!(polls.iter().any(|r| {
        r["path"]
            .as_str()
            .unwrap()
            .starts_with("/api2/json/nodes/pve3/tasks/UPID:pve3:")
    }));
    assert_eq!(
        pve.wait_task(&shutdown, Duration::from_secs(20)).await.unwrap(),
        TaskOutcome::Ok
    );
    let st = pve.guest_status("pve3", GuestKind::Qemu, 1208).await.unwrap();
    assert_eq!(st.status, "stopped");
}

#[tokio::test]
async fn privilege_separated_token_sees_nothing_and_permissions_name_what_is_missing() {
    // A token with only Sys.Audit on / gets an empty guest list (HTTP 200), and the
    // permissions check names every missing VM privilege.
    let lab: serde_json::Value =
        serde_json::from_slice(&std::fs::read(testkit::sim_dir().join("lab-cluster.json")).unwrap()).unwrap();
    let mut guests = lab.clone();
    guests["cluster"]["apitokens"]["auditor@pve!privsep"] = json!("11111111-fake-4000-8000-privsep0000");
    guests["cluster"]["acl"] = json!([{"user": "auditor@pve!privsep", "path": "/", "privs": ["Sys.Audit"]}]);
    let dir = testkit::temp_dir("pve-privsep-token-");
    let file = dir.path().join("guests.json");
    std::fs::write(&file, serde_json::to_vec(&guests).unwrap()).unwrap();
    let c = FakeCluster::start(ClusterSpec {
        guests_file: file,
        ..ClusterSpec::lab()
    })
    .unwrap();

    let cfg = PveConfig::new(
        c.url.parse().unwrap(),
        Auth::Token {
            id: "auditor@pve!privsep".into(),
            secret: Secret::new("11111111-fake-4000-8000-privsep0000"),
        },
        Tls::CaFile(c.ca_file.clone()),
    );
    let pve = PveClient::new(cfg).unwrap();
    assert!(pve.cluster_resources().await.unwrap().is_empty());
    let perms = pve.permissions().await.unwrap();
    assert_eq!(
        perms.missing("/vms", REQUIRED_VM_PRIVILEGES),
        REQUIRED_VM_PRIVILEGES
    );
    assert!(perms.missing("/", &["Sys.Audit"]).is_empty());
    // The root token of the same cluster sees the guests.
    assert!(!token_client(&c).cluster_resources().await.unwrap().is_empty());
}
