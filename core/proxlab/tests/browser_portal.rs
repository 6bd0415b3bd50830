//! The student portal in a real browser (issue 4): Debian's headless chromium, driven by playwright-core
//! (`tests/browser/portal.mjs`), against the real `proxlab serve` binary and a fake PVE cluster.
//!
//! A student signs in, sees only their VMs, starts one, sees it go to running and its IP appear without a
//! reload (SSE), opens the Connect menu and reverts the VM through the confirmation dialog; a VM that a
//! backup holds has its buttons disabled, titled `Locked by Proxmox (backup)`. Screenshots are
//! kept under `target/test-artifacts/` (`portal.png`, `portal-after-revert.png`, `portal-failure.png`).
//!
//! Needs `/usr/bin/chromium`, `node` and `node_modules/playwright-core` (all installed by `dev/setup`); the
//! test fails, with that fix in the message, when one is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use testkit::{ClusterSpec, FakeCluster};

/// The student's stopped VM with a `baseline` snapshot (started and reverted in the browser).
const VM: u32 = 1501;
/// The other student's VM (must not show).
const OTHER_VM: u32 = 1502;
/// The student's second VM (running).
const SECOND_VM: u32 = 1503;

/// A stopped qemu guest like the lab's student VMs: guest agent on (the sim answers with a 127.60.x.x
/// address once it runs), a qcow2 disk on the dir-backed `labnfs` (so it can be snapshotted).
fn guest(vmid: u32, name: &str, node: &str, status: &str) -> Value {
    json!({
        "vmid": vmid, "name": name, "node": node, "status": status, "pool": "class-netsec",
        "config": {
            "memory": 2048, "cores": 2, "agent": "1", "ostype": "l26", "scsihw": "virtio-scsi-single",
            "scsi0": format!("labnfs:{vmid}/vm-{vmid}-disk-0.qcow2,iothread=1,size=32G"),
            "net0": format!("virtio=BC:24:11:15:{:02X}:{:02X},bridge=vmbr0,firewall=1", vmid / 256 % 256, vmid % 256),
            "tags": "class-netsec;student",
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn student_starts_a_vm_sees_it_run_with_its_ip_live_and_reverts_it_in_chromium() {
    let root = testkit::workspace_root();
    check_browser_prerequisites(&root);

    let spec = ClusterSpec {
        agent_prefix: Some("127.60".into()),
        extra_guests: vec![
            guest(VM, "portal-s01", "pve2", "stopped"),
            guest(OTHER_VM, "portal-s02", "pve2", "stopped"),
            guest(SECOND_VM, "portal-s03", "pve3", "running"),
        ],
        ..ClusterSpec::lab()
    };
    let fake = tokio::task::spawn_blocking(move || FakeCluster::start(spec))
        .await
        .unwrap()
        .unwrap();
    // The baseline snapshot the revert returns to, made through the PVE API like a deployment would.
    let pve = fake.https_client().unwrap();
    let r = pve
        .post(format!("{}/nodes/pve2/qemu/{VM}/snapshot", fake.api_base))
        .header("authorization", fake.token_header())
        .form(&[("snapname", "baseline")])
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "snapshot: {}",
        r.text().await.unwrap_or_default()
    );

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("proxlab.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"{}\"\ndata_dir = \"{}\"\n\n[sync]\ninterval_secs = 1.0\n\n[ip]\nallow_ranges = [\"127.60.0.0/16\"]\n\n\
             [[cluster]]\nid = \"lab\"\nname = \"School lab\"\nurl = \"{}\"\ntoken_id = \"{}\"\ntoken_secret = \"{}\"\nca_file = \"{}\"\n",
            free_addr(),
            dir.path().join("data").display(),
            fake.url,
            fake.token_id,
            fake.token_secret,
            fake.ca_file.display()
        ),
    )
    .unwrap();
    // Accounts from the CLI (passwords on stdin), before the server holds the database.
    run_cli(
        &cfg,
        &[
            "user",
            "add",
            "stud",
            "--role",
            "student",
            "--display-name",
            "Stu Dent",
        ],
        "stud-password-1\n",
    );
    run_cli(
        &cfg,
        &["user", "add", "stud2", "--role", "student"],
        "stud2-password-1\n",
    );
    run_cli(
        &cfg,
        &["user", "add", "admin", "--role", "admin"],
        "admin-password-1\n",
    );
    let token = run_cli(
        &cfg,
        &[
            "token",
            "create",
            "--user",
            "admin",
            "--description",
            "browser test",
        ],
        "",
    );

    let server = serve(&cfg);
    let http = testkit::http_client();
    let base = server.base.clone();
    wait_first_sync(&base, &token, 20).await;
    // Assignments through the admin JSON API.
    for (user, vmid, baseline) in [
        ("stud", VM, Some("baseline")),
        ("stud", SECOND_VM, None),
        ("stud2", OTHER_VM, None),
    ] {
        let r = http
            .post(format!("{base}/api/user-vm-assignments"))
            .bearer_auth(&token)
            .json(&json!({"user": user, "vmid": vmid, "cluster": "lab", "baseline_snapshot": baseline}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    }

    let artifacts = root.join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    for old in ["portal.png", "portal-after-revert.png", "portal-failure.png"] {
        let _ = std::fs::remove_file(artifacts.join(old));
    }
    let profile = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.json");
    std::fs::write(
        &plan,
        json!({
            "user": "stud", "password": "stud-password-1",
            "own": ["portal-s01", "portal-s03"], "others": ["portal-s02", "netsec-s01"],
            "vm": "portal-s01", "artifacts": artifacts, "profile": profile.path(),
            "locked_vm": "portal-s03", "locked_error": "Locked by Proxmox (backup)",
        })
        .to_string(),
    )
    .unwrap();
    // A backup holds the second VM: its Stop must show PVE's own error.
    fake.control("POST", "/lock", json!({"vmid": SECOND_VM, "lock": "backup"}))
        .unwrap();
    let before = fake.request_count().unwrap();
    let mut node = Command::new("node");
    node.arg(root.join("tests/browser/portal.mjs"))
        .arg(&base)
        .arg(&plan)
        .current_dir(&root);
    let dir_path = dir.path().to_path_buf();
    let (ok, stdout, stderr) =
        tokio::task::spawn_blocking(move || run_with_limit(node, &dir_path, Duration::from_secs(180)))
            .await
            .unwrap();
    // What the server itself says about the VM (for the failure message).
    let server_view: Value = http
        .get(format!("{base}/api/vm/{VM}/status?cluster=lab"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or(Value::Null);
    assert!(
        ok,
        "browser test failed (screenshot: {}):\n{stderr}\n{stdout}\nserver's view of VM {VM}: {server_view}\nserver log:\n{}",
        artifacts.join("portal-failure.png").display(),
        std::fs::read_to_string(&server.log).unwrap_or_default()
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap();
    assert_eq!(seen["ok"], true, "{stdout}");
    eprintln!("browser saw: {seen}");
    assert_eq!(seen["login_url"], "/login?next=%2Fportal");
    assert_eq!(seen["names"], json!(["portal-s01", "portal-s03"]));
    assert!(seen["ip"].as_str().unwrap().starts_with("127.60."), "{seen}");
    assert!(seen["dialog"].as_str().unwrap().contains("baseline"), "{seen}");
    assert!(
        seen["locked_result"]
            .as_str()
            .unwrap()
            .contains("Locked by Proxmox (backup)"),
        "{seen}"
    );

    // The kept screenshots are real PNG files.
    for shot in ["portal.png", "portal-after-revert.png"] {
        let bytes = std::fs::read(artifacts.join(shot)).unwrap();
        assert!(bytes.len() > 10_000 && bytes.starts_with(b"\x89PNG"), "{shot}");
    }
    // The browser made exactly one start task and one rollback to the baseline.
    let requests = fake.requests_since(before).unwrap();
    let count = |suffix: &str| {
        requests
            .iter()
            .filter(|r| r["method"] == "POST" && r["path"].as_str().unwrap_or_default().ends_with(suffix))
            .count()
    };
    assert_eq!(count(&format!("/qemu/{VM}/status/start")), 1);
    assert_eq!(count(&format!("/qemu/{VM}/snapshot/baseline/rollback")), 1);
}
