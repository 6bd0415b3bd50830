//! Power operations follow the PVE task by UPID on their own, not inside the HTTP request: a browser
//! that drops a Start, or a Shut down of a guest that ignores ACPI, never leaves the VM stuck "in
//! progress"; Stop always works, also while a shutdown is pending (PVE's `overrule-shutdown`); and a
//! guest Proxmox shows locked is refused by name without a request to PVE.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod connect_common;

use std::time::Duration;

use connect_common::{Portal, VM, portal};
use serde_json::{Value, json};
use web::connect::ConnectConfig;

/// `POST /api/vm/{vmid}/{action}` as `stud`, giving up after `limit` (a browser that goes away):
/// `Some((status, body))`, `None` when the client gave up first.
async fn power(p: &Portal, vmid: u32, action: &str, limit: Duration) -> Option<(u16, Value)> {
    let (cookie, csrf) = p.session("stud");
    let req = testkit::http_client()
        .post(format!("{}/api/vm/{vmid}/{action}", p.base))
        .header("cookie", cookie)
        .header("x-csrf-token", csrf)
        .header("origin", &p.origin)
        .timeout(limit)
        .send();
    match req.await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            Some((status, resp.json().await.unwrap_or(Value::Null)))
        }
        Err(e) if e.is_timeout() => None,
        Err(e) => panic!("{action}: {e}"),
    }
}

fn fake_status(p: &Portal, vmid: u32) -> String {
    let state = p.fake.state().unwrap();
    state["guests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["vmid"] == vmid)
        .map(|g| g["status"].as_str().unwrap_or_default().to_string())
        .unwrap()
}

async fn wait_fake_status(p: &Portal, vmid: u32, want: &str, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while fake_status(p, vmid) != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "VM {vmid} never became {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const LONG: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_an_ignored_shutdown_and_a_dropped_start_leaves_nothing_in_progress() {
    let p = portal(vec![], ConnectConfig::default(), None).await;
    // PVE seconds run 50 times faster; the guest ignores ACPI, so a shutdown task waits for its
    // 180 s timeout (3.6 s here) and fails.
    p.fake
        .control("POST", "/time-scale", json!({"value": 0.02}))
        .unwrap();
    p.fake
        .control(
            "POST",
            "/guest",
            json!({"vmid": VM, "acpi": false, "start_secs": 100}),
        )
        .unwrap();
    // The student asks for a shutdown and closes the tab after half a second.
    assert!(
        power(&p, VM, "shutdown", Duration::from_millis(500))
            .await
            .is_none()
    );
    // Stop is not refused by the portal as "a shutdown is still in progress": it goes to PVE with
    // `overrule-shutdown` (which aborts the shutdown task on PVE 8.1 and later; the fake cluster models
    // that for containers only, so here PVE may still answer that the VM's config is locked).
    let (status, body) = power(&p, VM, "stop", LONG).await.unwrap();
    assert!(
        !body.to_string().contains("still in progress"),
        "the portal refused Stop: {status} {body}"
    );
    let stops: Vec<Value> = p
        .fake
        .requests_since(0)
        .unwrap()
        .into_iter()
        .filter(|r| {
            r["path"]
                .as_str()
                .is_some_and(|s| s.ends_with(&format!("/{VM}/status/stop")))
        })
        .collect();
    assert_eq!(stops.len(), 1, "{stops:?}");
    assert!(
        stops[0]["body"].to_string().contains("overrule-shutdown"),
        "{stops:?}"
    );
    // Once PVE's shutdown task has given up, Stop works — the dropped request left nothing behind.
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let (status, body) = power(&p, VM, "stop", LONG).await.unwrap();
        if status == 200 {
            break;
        }
        assert!(!body.to_string().contains("still in progress"), "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "Stop never worked: {body}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(fake_status(&p, VM), "stopped");

    // A Start whose browser goes away after 300 ms (the start takes 2 s): the start still completes,
    // and once PVE's task has ended nothing is left "in progress".
    p.fake
        .control(
            "POST",
            "/guest",
            json!({"vmid": VM, "acpi": true, "shutdown_secs": 1}),
        )
        .unwrap();
    assert!(power(&p, VM, "start", Duration::from_millis(300)).await.is_none());
    wait_fake_status(&p, VM, "running", LONG).await;
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let (status, body) = power(&p, VM, "reboot", LONG).await.unwrap();
        if status == 200 {
            break;
        }
        // Only while the start's task is being confirmed may the reboot wait its turn.
        assert_eq!(status, 409, "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the start stays in progress: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_locked_in_proxmox_is_refused_by_name_without_asking_proxmox() {
    let p = portal(vec![], ConnectConfig::default(), None).await;
    p.fake
        .control("POST", "/lock", json!({"vmid": VM, "lock": "backup"}))
        .unwrap();
    for r in p.state.syncer.sync_once().await {
        r.unwrap();
    }
    let before = p.fake.request_count().unwrap();
    for action in ["start", "stop", "reboot", "revert"] {
        let (status, body) = power(&p, VM, action, LONG).await.unwrap();
        assert_eq!(status, 409, "{action}: {body}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains("locked (backup)"), "{action}: {msg}");
        assert_eq!(body["error"]["code"], "locked");
    }
    let sent: Vec<Value> = p
        .fake
        .requests_since(before)
        .unwrap()
        .into_iter()
        .filter(|r| r["method"] == "POST")
        .collect();
    assert!(sent.is_empty(), "requests to PVE: {sent:?}");
}
