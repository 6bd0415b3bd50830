//! The shipped `plugins/idle-shutdown` against a real fake cluster with a time scale: an idle
//! VM is shut down after the configured idle time (from CPU samples over injected time), a busy
//! one is left alone; outside class hours student VMs go down and teacher VMs stay.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use script::{Hook, Limits, ScriptRuntime, SetSources};
use serde_json::json;

/// Monday 2024-01-01 12:00 UTC.
const MONDAY_NOON: u64 = 1_704_110_400;

async fn wait_status(client: &pve::PveClient, node: &str, vmid: u32, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let st = client
            .guest_status(node, pve::GuestKind::Qemu, vmid)
            .await
            .unwrap();
        if st.status == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "VM {vmid} still {} (want {want})",
            st.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sources(settings: serde_json::Value) -> SetSources {
    SetSources {
        defaults: Some(repo_scripts()),
        plugin_dirs: vec![repo_plugins()],
        enabled_plugins: vec!["idle-shutdown".into()],
        plugin_settings: [("idle-shutdown".to_string(), settings)].into_iter().collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_vm_is_shut_down_after_the_idle_time_and_busy_vm_is_left_alone() {
    let fc = testkit::FakeCluster::start(testkit::ClusterSpec {
        time_scale: 0.01,
        ..testkit::ClusterSpec::lab()
    })
    .unwrap();
    // 1101 (pve1) idles, 1104 (pve1) works.
    fc.control("POST", "/guest", json!({"vmid": 1101, "stats": {"cpu": 0.01}}))
        .unwrap();
    fc.control("POST", "/guest", json!({"vmid": 1104, "stats": {"cpu": 0.9}}))
        .unwrap();

    let host = ClusterHost::new(&[("lab", &fc)], MONDAY_NOON);
    let rt = ScriptRuntime::new(host.clone(), Limits::default());
    let set = Arc::new(rt.load_set(&sources(json!({"cpu_threshold": 0.05}))).unwrap());
    let plugin = set.plugin("idle-shutdown").unwrap();
    assert_eq!(
        plugin.hook(Hook::OnTick).unwrap().interval,
        Some(Duration::from_secs(60))
    );

    // The class lowers the idle time to 10 minutes for itself.
    let event = json!({"classes": [{
        "id": "netsec", "name": "Network security",
        "plugins": {"idle-shutdown": {"idle_minutes": 10}},
        "vms": [
            {"cluster": "lab", "vmid": 1101, "role": "student", "user": "s01"},
            {"cluster": "lab", "vmid": 1104, "role": "student", "user": "s04"}
        ]
    }]});

    // One inventory sync and one scheduler tick per (injected) minute.
    let mut shut_at = None;
    for minute in 0..=12u64 {
        host.refresh().await;
        let runs = rt.tick(&set, event.clone()).await;
        assert_eq!(runs.len(), 1, "on_tick due every minute");
        let actions = runs[0].result.as_ref().unwrap().as_array().unwrap().clone();
        if !actions.is_empty() {
            assert_eq!(actions.len(), 1, "{actions:?}");
            assert_eq!(actions[0]["vmid"], 1101);
            assert_eq!(actions[0]["action"], "shutdown");
            assert!(
                actions[0]["reason"]
                    .as_str()
                    .unwrap()
                    .starts_with("idle for 10 min")
            );
            assert!(shut_at.is_none(), "shut down twice");
            shut_at = Some(minute);
        }
        host.advance(60);
    }
    // Samples exist from minute 0; the window [now-600, now] is first covered at minute 10.
    assert_eq!(shut_at, Some(10));
    let client = pve_client(&fc);
    wait_status(&client, "pve1", 1101, "stopped").await;
    let busy = client
        .guest_status("pve1", pve::GuestKind::Qemu, 1104)
        .await
        .unwrap();
    assert_eq!(busy.status, "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_low_reading_is_not_idleness() {
    let fc = testkit::FakeCluster::start(testkit::ClusterSpec::lab()).unwrap();
    let host = ClusterHost::new(&[("lab", &fc)], MONDAY_NOON);
    let rt = ScriptRuntime::new(host.clone(), Limits::default());
    let set = Arc::new(rt.load_set(&sources(json!({"idle_minutes": 5}))).unwrap());
    let event =
        json!({"classes": [{"id": "c", "vms": [{"cluster": "lab", "vmid": 1107, "role": "student"}]}]});
    // Busy for 5 minutes, then one idle reading: no shutdown.
    fc.control("POST", "/guest", json!({"vmid": 1107, "stats": {"cpu": 0.8}}))
        .unwrap();
    for _ in 0..5 {
        host.refresh().await;
        host.advance(60);
    }
    fc.control("POST", "/guest", json!({"vmid": 1107, "stats": {"cpu": 0.0}}))
        .unwrap();
    host.refresh().await;
    let runs = rt.tick(&set, event).await;
    assert_eq!(runs[0].result.as_ref().unwrap(), &json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_class_hours_student_vms_stop_and_teacher_vms_stay() {
    let fc = testkit::FakeCluster::start(testkit::ClusterSpec {
        time_scale: 0.01,
        ..testkit::ClusterSpec::lab()
    })
    .unwrap();
    // Monday 20:00 local (UTC+1): outside "mon-fri 08:00-17:30".
    let host = ClusterHost::new(&[("lab", &fc)], MONDAY_NOON + 7 * 3600);
    host.refresh().await;
    let rt = ScriptRuntime::new(host.clone(), Limits::default());
    let set = Arc::new(
        rt.load_set(&sources(
            json!({"class_hours": ["mon-fri 08:00-17:30"], "utc_offset_minutes": 60, "action": "stop"}),
        ))
        .unwrap(),
    );
    let event = json!({"classes": [{"id": "winadm", "vms": [
        {"cluster": "lab", "vmid": 1201, "role": "student"},
        {"cluster": "lab", "vmid": 1204, "role": "teacher"}
    ]}]});
    let runs = rt.dispatch(&set, Hook::OnTick, event.clone()).await;
    let actions = runs[0].result.as_ref().unwrap().as_array().unwrap().clone();
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert_eq!(actions[0]["vmid"], 1201);
    assert_eq!(actions[0]["reason"], "outside class hours");
    let client = pve_client(&fc);
    wait_status(&client, "pve2", 1201, "stopped").await;
    assert_eq!(
        client
            .guest_status("pve2", pve::GuestKind::Qemu, 1204)
            .await
            .unwrap()
            .status,
        "running"
    );

    // Inside the hours (Tuesday 09:00 local) nothing happens to the remaining VMs.
    host.now.store(
        MONDAY_NOON + 86_400 - 4 * 3600,
        std::sync::atomic::Ordering::SeqCst,
    );
    host.refresh().await;
    let event =
        json!({"classes": [{"id": "winadm", "vms": [{"cluster": "lab", "vmid": 1205, "role": "student"}]}]});
    let runs = rt.dispatch(&set, Hook::OnTick, event).await;
    assert_eq!(runs[0].result.as_ref().unwrap(), &json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_class_override_fails_that_run_with_a_clear_message() {
    let host = ClusterHost::new(&[], MONDAY_NOON);
    let rt = ScriptRuntime::new(host, Limits::default());
    let set = Arc::new(rt.load_set(&sources(json!({}))).unwrap());
    let event =
        json!({"classes": [{"id": "c1", "plugins": {"idle-shutdown": {"idle_minutes": "ten"}}, "vms": []}]});
    let runs = rt.dispatch(&set, Hook::OnTick, event).await;
    let err = runs[0].result.as_ref().unwrap_err().to_string();
    assert!(err.contains("idle_minutes") && err.contains("c1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_site_setting_is_a_load_error() {
    let host = ClusterHost::new(&[], MONDAY_NOON);
    let rt = ScriptRuntime::new(host, Limits::default());
    let errs = rt
        .load_set(&sources(json!({"cpu_threshold": "low", "nonsense": 1})))
        .unwrap_err();
    let text = script::format_load_errors(&errs);
    assert!(
        text.contains("cpu_threshold") && text.contains("nonsense"),
        "{text}"
    );
}
