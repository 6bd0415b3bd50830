//! The SSH terminal in a real browser (issue 6): Debian's headless chromium, driven by playwright-core
//! (`tests/browser/terminal.mjs`), against the real `proxlab serve` binary, a fake PVE cluster and a real
//! OpenSSH sshd standing in for the guest on the loopback address the fake's guest agent reports for it
//! (VM 4001 → 127.60.16.3, `[ip] allow_ranges = ["127.60.0.0/16"]`).
//!
//! A student opens `/ssh/4001` (xterm.js), logs in to the guest with the password typed into the
//! terminal, sees non-ASCII output rendered, shrinks the browser window and sees the shell and a
//! full-screen draw use the new size (the resize reaches the PTY); another student is refused (404 page,
//! 404 connect token, no WebSocket). The screenshot is kept as `target/test-artifacts/terminal.png`
//! (`terminal-failure.png` when a step fails).
//!
//! Needs root (the sshd's password login creates a local user), `/usr/bin/chromium`, `node` and
//! `node_modules/playwright-core` (all installed by `dev/setup`); the test fails, with the fix in the
//! message, when one is missing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use testkit::{ClusterSpec, FakeCluster, NodeSshd};

/// The student's running VM; the fake's agent reports [`VM_IP`] for it.
const VM: u32 = 4001;
/// The other student's VM.
const OTHER_VM: u32 = 4002;
/// The loopback address the fake cluster's guest agent reports for [`VM`].
const VM_IP: &str = "127.60.16.3";
/// The guest's login (a local account made by [`NodeSshd::start_with_password`]).
const GUEST_USER: &str = "termstud";
const GUEST_PASSWORD: &str = "term-pass-61";

/// A running qemu guest with the agent on (the fake answers with a 127.60.x.x address) and a net0 MAC.
fn guest(vmid: u32, name: &str) -> Value {
    json!({
        "vmid": vmid, "name": name, "node": "pve1", "status": "running",
        "config": {
            "memory": 1024, "cores": 1, "agent": "1", "ostype": "l26",
            "scsi0": format!("local-lvm:vm-{vmid}-disk-0,size=8G"),
            "net0": format!("virtio=BC:24:11:40:{:02X}:{:02X},bridge=vmbr0", vmid / 256 % 256, vmid % 256),
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn student_logs_in_to_their_vm_in_the_browser_terminal_sees_unicode_and_resize_and_another_student_is_refused()
 {
    let root = testkit::workspace_root();
    check_browser_prerequisites(&root);

    // The "VM": a real sshd with password login on the address the fake's agent reports for it.
    let sshd = tokio::task::spawn_blocking(|| {
        let port = testkit::free_port(VM_IP);
        NodeSshd::start_with_password(VM_IP, port, GUEST_USER, GUEST_PASSWORD)
    })
    .await
    .unwrap()
    .unwrap();
    let spec = ClusterSpec {
        agent_prefix: Some("127.60".into()),
        extra_guests: vec![guest(VM, "term-s01"), guest(OTHER_VM, "term-s02")],
        ..ClusterSpec::lab()
    };
    let fake = tokio::task::spawn_blocking(move || FakeCluster::start(spec))
        .await
        .unwrap()
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("proxlab.toml");
    let listen = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    std::fs::write(
        &cfg,
        format!(
            "listen = \"{listen}\"\npublic_url = \"http://{listen}\"\ndata_dir = \"{}\"\n\n\
             [sync]\ninterval_secs = 1.0\n\n[ip]\nallow_ranges = [\"127.60.0.0/16\"]\n\n\
             [connect]\nssh_port = {}\nvendor_dir = \"{}\"\n\n\
             [[cluster]]\nid = \"lab\"\nname = \"School lab\"\nurl = \"{}\"\ntoken_id = \"{}\"\ntoken_secret = \"{}\"\nca_file = \"{}\"\n",
            dir.path().join("data").display(),
            sshd.port,
            root.join("assets/vendor").display(),
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
        &["user", "add", "stud", "--role", "student"],
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
            "terminal browser test",
        ],
        "",
    );

    let server = serve(&cfg);
    let http = testkit::http_client();
    let base = server.base.clone();
    assert_eq!(base, format!("http://{listen}"));
    wait_first_sync(&base, &token, 20).await;
    for (user, vmid) in [("stud", VM), ("stud2", OTHER_VM)] {
        let r = http
            .post(format!("{base}/api/user-vm-assignments"))
            .bearer_auth(&token)
            .json(&json!({"user": user, "vmid": vmid, "cluster": "lab"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    }
    // Wait until the server has found (and checked) the VM's address: the sshd's loopback address.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v: Value = http
            .get(format!("{base}/api/vm/{VM}/connect?cluster=lab"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or(Value::Null);
        let ssh_ready = v["methods"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["kind"] == "ssh" && m["available"] == true));
        if v["address"]["state"] == "found" && ssh_ready {
            assert_eq!(v["address"]["ip"], VM_IP, "{v}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no address for VM {VM}: {v}\nserver log:\n{}",
            std::fs::read_to_string(&server.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let artifacts = root.join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    for old in ["terminal.png", "terminal-failure.png"] {
        let _ = std::fs::remove_file(artifacts.join(old));
    }
    let profile = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.json");
    std::fs::write(
        &plan,
        json!({
            "user": "stud", "password": "stud-password-1", "vmid": VM,
            "guest_user": GUEST_USER, "guest_password": GUEST_PASSWORD,
            "other_user": "stud2", "other_password": "stud2-password-1",
            "artifacts": artifacts, "profile": profile.path(),
        })
        .to_string(),
    )
    .unwrap();
    let mut node = Command::new("node");
    node.arg(root.join("tests/browser/terminal.mjs"))
        .arg(&base)
        .arg(&plan)
        .current_dir(&root);
    let dir_path = dir.path().to_path_buf();
    let (ok, stdout, stderr) =
        tokio::task::spawn_blocking(move || run_with_limit(node, &dir_path, Duration::from_secs(180)))
            .await
            .unwrap();
    assert!(
        ok,
        "browser test failed (screenshot: {}):\n{stderr}\n{stdout}\nserver log:\n{}",
        artifacts.join("terminal-failure.png").display(),
        std::fs::read_to_string(&server.log).unwrap_or_default()
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap();
    eprintln!("browser saw: {seen}");
    assert_eq!(seen["ok"], true, "{stdout}");
    // The rendered terminal shows the characters whole (the command typed only ASCII escapes).
    assert_eq!(seen["unicode"], "U8:Grüße ✓ 日本語", "{seen}");
    // The window shrank: the PTY, `tput` and the rendered grid agree on the new, smaller size.
    let before = &seen["size_before"];
    let after = &seen["size_after"];
    assert!(
        after["cols"].as_u64() < before["cols"].as_u64() && after["rows"].as_u64() < before["rows"].as_u64(),
        "{seen}"
    );
    assert_eq!(after["tput_cols"], after["cols"], "{seen}");
    assert_eq!(after["tput_lines"], after["rows"], "{seen}");
    assert_eq!(after["rendered_rows"], after["rows"], "{seen}");
    assert!(
        seen["fullscreen"]["last"].as_str().unwrap().ends_with("END"),
        "{seen}"
    );
    assert!(
        seen["closed"].as_str().unwrap().contains("(1000)"),
        "the session ended normally: {seen}"
    );
    // Only the terminal page lets xterm.js's own <style> elements in; scripts stay 'self' everywhere.
    let csp_terminal = seen["csp_terminal"].as_str().unwrap();
    assert!(
        csp_terminal.contains("style-src 'self' 'unsafe-inline'")
            && csp_terminal.contains("script-src 'self';"),
        "{csp_terminal}"
    );
    assert!(
        !seen["csp_portal"].as_str().unwrap().contains("unsafe-inline"),
        "{seen}"
    );
    // The other student: no page, no token, no socket.
    assert_eq!(seen["other_page"], 404, "{seen}");
    assert_eq!(seen["other"]["token_status"], 404, "{seen}");
    assert_ne!(seen["other"]["ws"], "open", "{seen}");
    let bytes = std::fs::read(artifacts.join("terminal.png")).unwrap();
    assert!(
        bytes.len() > 10_000 && bytes.starts_with(b"\x89PNG"),
        "terminal.png"
    );
    drop(server);
    drop(sshd);
}
