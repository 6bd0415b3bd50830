//! `GET /api/vm/{vmid}/connect` (what the portal's "Connect" offers), the terminal page, and the vendored
//! npm files, through the real router over the fake cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod connect_common;

use std::time::Duration;

use connect_common::{OTHER_VM, Portal, VM, VM_IP, guest, portal};
use serde_json::{Value, json};
use web::connect::ConnectConfig;

const LINUX_VM: u32 = 4006;
const PENDING_VM: u32 = 4007;
const STOPPED_VM: u32 = 4008;
const CT: u32 = 4009;

async fn api_portal() -> Portal {
    let mut pending = guest(PENDING_VM, "no-agent-yet", "l26", "");
    pending["config"]["agent"] = json!("0");
    let mut stopped = guest(STOPPED_VM, "stopped-vm", "l26", "");
    stopped["status"] = json!("stopped");
    let ct = json!({"type": "lxc", "vmid": CT, "name": "ct-4009", "node": "pve2", "status": "running",
        "ostemplate": "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst",
        "config": {"memory": 512, "rootfs": "local-lvm:vm-4009-disk-0,size=8G",
                   "net0": "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:40:0F:A9,ip=127.60.16.11/8"}});
    let guests = vec![
        guest(VM, "w11-lab-01", "win11", ""),
        guest(OTHER_VM, "w11-lab-02", "win11", ""),
        guest(LINUX_VM, "ubuntu-lab", "l26", "ssh-port-2222"),
        pending,
        stopped,
        ct,
    ];
    let p = portal(guests, ConnectConfig::default(), None).await;
    for vmid in [LINUX_VM, PENDING_VM, STOPPED_VM, CT] {
        p.store
            .create_assignment(store::AssignmentRecord {
                cluster: "lab".into(),
                vmid,
                user: "stud".into(),
                ..Default::default()
            })
            .unwrap();
    }
    p.state.auth.rebuild_index();
    p
}

async fn info(p: &Portal, vmid: u32) -> Value {
    let (status, _, body) = p.get(Some("stud"), &format!("/api/vm/{vmid}/connect")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// Asks until `done(answer)` (the OS type and the verification are fetched in the background).
async fn info_until(p: &Portal, vmid: u32, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let v = info(p, vmid).await;
        if done(&v) {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "never settled: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kinds(v: &Value) -> Vec<&str> {
    v["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["kind"].as_str().unwrap())
        .collect()
}

fn method<'a>(v: &'a Value, kind: &str) -> &'a Value {
    v["methods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["kind"] == kind)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_offers_what_fits_the_vm_with_its_verified_address() {
    let p = api_portal().await;
    // Windows: RDP recommended, console always, no SSH. The address is verified in the background.
    let v = info_until(&p, VM, |v| {
        v["os"] == "windows" && v["address"]["verification"]["state"] != "checking"
    })
    .await;
    assert_eq!(v["ostype"], "win11");
    assert_eq!(kinds(&v), ["rdp", "console"]);
    let rdp = method(&v, "rdp");
    assert_eq!(
        (rdp["available"].clone(), rdp["recommended"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(rdp["url"], format!("/rdp/{VM}.rdp"));
    assert_eq!(rdp["copy"], VM_IP);
    assert_eq!(v["address"]["state"], "found");
    assert_eq!(v["address"]["ip"], VM_IP);
    assert_eq!(v["address"]["source"], "guest-agent");
    let check = &v["address"]["verification"];
    assert_eq!(
        check["state"], "reachable",
        "loopback answers ping; no ARP entry to compare: {check}"
    );
    assert_eq!(check["method"], "ping");
    assert!(check["age_secs"].as_u64().unwrap() < 60);

    // Linux: SSH recommended with the configured port (tag ssh-port-2222), no RDP.
    let v = info_until(&p, LINUX_VM, |v| v["os"] == "linux").await;
    assert_eq!(kinds(&v), ["ssh", "console"]);
    let ssh = method(&v, "ssh");
    assert_eq!(ssh["recommended"], true);
    assert_eq!(
        method(&v, "console")["recommended"],
        false,
        "one way is recommended, not two"
    );
    assert_eq!(ssh["port"], 2222);
    assert_eq!(ssh["url"], format!("/ssh/{LINUX_VM}"));
    assert_eq!(ssh["copy"], "ssh -p 2222 127.60.16.8");

    // Containers are Linux without a config read.
    let v = info(&p, CT).await;
    assert_eq!(
        (v["os"].as_str(), kinds(&v)),
        (Some("linux"), vec!["ssh", "console"])
    );

    // Address still pending (no agent): RDP/SSH wait with a reason, the console is the way in.
    let v = info_until(&p, PENDING_VM, |v| v["os"] != "unknown").await;
    assert_eq!(v["address"]["state"], "pending");
    let ssh = method(&v, "ssh");
    assert_eq!(ssh["available"], false);
    assert_eq!(ssh["recommended"], false);
    assert_eq!(ssh["reason"], "waiting for the VM's address");
    let console = method(&v, "console");
    assert_eq!(
        (console["available"].clone(), console["recommended"].clone()),
        (json!(true), json!(true))
    );

    // Stopped: nothing is available, the address is gone.
    let v = info(&p, STOPPED_VM).await;
    assert_eq!(v["address"]["state"], "not_running");
    assert!(
        v["methods"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["available"] == false),
        "{v}"
    );

    // Another student's VM does not exist for this student; anonymous callers sign in first.
    assert_eq!(
        p.get(Some("stud"), &format!("/api/vm/{OTHER_VM}/connect"))
            .await
            .0,
        404
    );
    assert_eq!(p.get(None, &format!("/api/vm/{VM}/connect")).await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_page_loads_xterm_from_the_vendored_files_for_the_owner_only() {
    let p = api_portal().await;
    let (status, _, body) = p.get(Some("stud"), &format!("/ssh/{LINUX_VM}")).await;
    assert_eq!(status, 200);
    let html = String::from_utf8(body).unwrap().replace("&#x2f;", "/");
    for needle in [
        "/static/vendor/xterm/xterm.js",
        "/static/vendor/xterm/xterm.css",
        "/static/vendor/xterm-addon-fit/addon-fit.js",
        &format!("data-ws-path=\"/ws/terminal/{LINUX_VM}?cluster=lab\""),
        &format!("data-token-path=\"/api/vm/{LINUX_VM}/connect-token?cluster=lab\""),
        "Terminal · ubuntu-lab",
    ] {
        assert!(html.contains(needle), "{needle} missing in {html}");
    }
    assert_eq!(p.get(Some("stud2"), &format!("/ssh/{LINUX_VM}")).await.0, 404);
    let (status, headers, _) = p.get(None, &format!("/ssh/{LINUX_VM}")).await;
    assert_eq!(status, 303);
    assert!(headers["location"].to_str().unwrap().starts_with("/login?next="));

    // The vendored files (dev/setup runs dev/build-assets): served with a JavaScript type; nothing
    // outside the vendor folder.
    let (status, headers, body) = p.get(None, "/static/vendor/xterm/xterm.js").await;
    assert_eq!(status, 200, "run dev/build-assets (dev/setup does)");
    assert_eq!(headers["content-type"], "text/javascript; charset=utf-8");
    assert!(body.len() > 100_000);
    assert_eq!(p.get(None, "/static/vendor/novnc/core/rfb.js").await.0, 200);
    assert_eq!(p.get(None, "/static/vendor/VERSIONS").await.0, 200);
    assert_eq!(p.get(None, "/static/vendor/..%2f..%2fCargo.toml").await.0, 404);
    assert_eq!(p.get(None, "/static/vendor/nope.js").await.0, 404);
}
