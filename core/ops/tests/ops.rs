//! The VM-operations service against a fake PVE cluster: identical operations join one PVE task, a
//! different one is refused while it runs but Stop always goes through, the guest is refreshed in the
//! inventory, and failures come back typed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use ops::{OpError, Ops, OpsConfig};
use pve::{Auth, PowerAction, PveClient, PveConfig, Secret, Tls};
use serde_json::json;
use sync::{AgentDiscovery, ClusterHandle, Inventory, SyncConfig, Syncer};
use testkit::{ClusterSpec, FakeCluster};

const VM: u32 = 4001;

async fn rig() -> (FakeCluster, Arc<Syncer>, Ops) {
    let spec = ClusterSpec {
        extra_guests: vec![
            json!({"vmid": VM, "name": "ops-vm", "node": "pve1", "status": "stopped",
            "config": {"memory": 512, "cores": 1, "scsi0": "local-lvm:vm-4001-disk-0,size=4G"}}),
        ],
        ..ClusterSpec::lab()
    };
    let fake = tokio::task::spawn_blocking(move || FakeCluster::start(spec))
        .await
        .unwrap()
        .unwrap();
    let client = PveClient::new(PveConfig::new(
        fake.url.parse().unwrap(),
        Auth::Token {
            id: fake.token_id.clone(),
            secret: Secret::new(fake.token_secret.clone()),
        },
        Tls::CaFile(fake.ca_file.clone()),
    ))
    .unwrap();
    let inventory = Inventory::load(None, &[("lab".into(), "Lab".into())]).unwrap();
    let handles = vec![ClusterHandle {
        id: "lab".into(),
        name: "Lab".into(),
        client,
    }];
    let syncer = Syncer::new(
        inventory,
        handles,
        SyncConfig::default(),
        Arc::new(AgentDiscovery),
    );
    for r in syncer.sync_once().await {
        r.unwrap();
    }
    let ops = Ops::new(syncer.clone(), OpsConfig::default());
    (fake, syncer, ops)
}

fn status_posts(fake: &FakeCluster, since: usize, action: &str) -> usize {
    fake.requests_since(since)
        .unwrap()
        .iter()
        .filter(|r| {
            r["method"] == "POST"
                && r["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with(&format!("/{VM}/status/{action}")))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_starts_at_once_make_one_task_a_shutdown_meanwhile_is_refused_and_stop_goes_through() {
    let (fake, syncer, ops) = rig().await;
    // Starting takes 2 s here (40 PVE s at 0.05 real s each).
    fake.control("POST", "/time-scale", json!({"value": 0.05}))
        .unwrap();
    fake.control("POST", "/guest", json!({"vmid": VM, "start_secs": 40}))
        .unwrap();
    let before = fake.request_count().unwrap();
    let starts: Vec<_> = (0..10)
        .map(|_| {
            let ops = ops.clone();
            tokio::spawn(async move { ops.power("lab", VM, PowerAction::Start).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    match ops.power("lab", VM, PowerAction::Shutdown).await {
        Err(OpError::Busy { running }) => assert_eq!(running, "start"),
        other => panic!("a shutdown during the start: {other:?}"),
    }
    let mut upids = Vec::new();
    for s in starts {
        let out = s.await.unwrap().unwrap();
        upids.push(out.upid.clone().unwrap());
        assert_eq!(out.exitstatus.as_deref(), Some("OK"));
    }
    upids.dedup();
    assert_eq!(upids.len(), 1, "one task for ten requests");
    assert_eq!(status_posts(&fake, before, "start"), 1);
    // The inventory shows the result at once, without waiting for a sync tick.
    let g = syncer.inventory().snapshot().guest("lab", VM).cloned().unwrap();
    assert_eq!(g.status, "running");
    assert_eq!(ops.in_flight().await, 0, "nothing is left in flight");

    // A reboot runs; Stop is accepted meanwhile and sent with overrule-shutdown.
    fake.control("POST", "/guest", json!({"vmid": VM, "shutdown_secs": 40}))
        .unwrap();
    let reboot = {
        let ops = ops.clone();
        tokio::spawn(async move { ops.power("lab", VM, PowerAction::Reboot).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = fake.request_count().unwrap();
    let stop = ops.power("lab", VM, PowerAction::Stop).await;
    assert!(!matches!(stop, Err(OpError::Busy { .. })), "{stop:?}");
    let sent = fake.requests_since(before).unwrap();
    let stop_req = sent
        .iter()
        .find(|r| r["path"].as_str().is_some_and(|p| p.ends_with("/status/stop")))
        .unwrap();
    assert!(
        stop_req["body"].to_string().contains("overrule-shutdown"),
        "{stop_req}"
    );
    let _ = reboot.await.unwrap();
    assert_eq!(ops.in_flight().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_typed_a_lock_a_missing_vm_and_a_missing_baseline() {
    let (fake, syncer, ops) = rig().await;
    assert!(matches!(
        ops.power("lab", 4999, PowerAction::Start).await,
        Err(OpError::NotFound(_))
    ));
    assert!(matches!(
        ops.revert_to_snapshot("lab", VM, None).await,
        Err(OpError::NoBaseline)
    ));
    fake.control("POST", "/lock", json!({"vmid": VM, "lock": "backup"}))
        .unwrap();
    for r in syncer.sync_once().await {
        r.unwrap();
    }
    let before = fake.request_count().unwrap();
    match ops.power("lab", VM, PowerAction::Start).await {
        Err(e @ OpError::Locked { .. }) => {
            assert_eq!(e.code(), "locked");
            assert!(e.to_string().contains("VM is locked (backup)"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.request_count().unwrap(), before, "nothing was asked of PVE");
    // A PVE error keeps PVE's words: a rollback to a snapshot that does not exist.
    fake.control("POST", "/lock", json!({"vmid": VM, "lock": null}))
        .unwrap();
    for r in syncer.sync_once().await {
        r.unwrap();
    }
    match ops.revert_to_snapshot("lab", VM, Some("nosuchsnap".into())).await {
        Err(OpError::Pve(e)) => assert!(!e.to_string().is_empty()),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_power_action_answers_with_its_upid_before_the_task_ends_and_still_refreshes() {
    let (fake, syncer, ops) = rig().await;
    fake.control("POST", "/time-scale", json!({"value": 0.05}))
        .unwrap();
    fake.control("POST", "/guest", json!({"vmid": VM, "start_secs": 40}))
        .unwrap();
    let upid = ops
        .power_started("lab", VM, PowerAction::Start)
        .await
        .unwrap()
        .expect("a task was started");
    assert!(upid.starts_with("UPID:"), "{upid}");
    assert_eq!(ops.in_flight().await, 1, "the operation still follows its task");
    // A second start joins the one in flight: one task.
    let joined = ops.power("lab", VM, PowerAction::Start).await.unwrap();
    assert_eq!(joined.upid.as_deref(), Some(upid.as_str()));
    let g = syncer.inventory().snapshot().guest("lab", VM).cloned().unwrap();
    assert_eq!(g.status, "running");
    assert_eq!(ops.in_flight().await, 0);
    // Nothing to do: no task, no UPID.
    assert_eq!(
        ops.power_started("lab", VM, PowerAction::Start).await.unwrap(),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_power_action_reads_the_guest_from_pve_instead_of_a_stale_inventory() {
    let (fake, syncer, ops) = rig().await;
    // Started behind the inventory's back: the inventory still says stopped.
    let client = syncer.client("lab").cloned().unwrap();
    let upid = client
        .power("pve1", pve::GuestKind::Qemu, VM, PowerAction::Start)
        .await
        .unwrap();
    client.wait_task(&upid, Duration::from_secs(30)).await.unwrap();
    let g = syncer.inventory().snapshot().guest("lab", VM).cloned().unwrap();
    assert_eq!(g.status, "stopped");
    let before = fake.request_count().unwrap();
    let out = ops.power_fresh("lab", VM, PowerAction::Stop).await.unwrap();
    assert!(out.upid.is_some(), "the stop was sent: {out:?}");
    assert_eq!(status_posts(&fake, before, "stop"), 1);
    let g = syncer.inventory().snapshot().guest("lab", VM).cloned().unwrap();
    assert_eq!(g.status, "stopped");
}
