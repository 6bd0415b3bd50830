//! The SSH terminal end to end: a WebSocket client (as xterm.js would be) → the real router on a
//! loopback port → russh → a real OpenSSH sshd standing in for the guest on the loopback address the
//! fake cluster's agent reports for VM 4001 (127.60.16.3, `allow_ranges = ["127.60.0.0/16"]`).
//! Covers: resize before input and after a reconnect, pings through an idle-cutting proxy and the idle
//! timeout 4000, 1001 at shutdown, and the Origin check plus one-time token. Needs root (sshd password mode).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod connect_common;

use std::time::Duration;

use connect_common::{OTHER_VM, Portal, Term, VM, VM_IP, idle_cutting_proxy, portal};
use serde_json::json;
use testkit::NodeSshd;
use web::connect::ConnectConfig;

const USER: &str = "labstud";
const PASSWORD: &str = "lab-pass-42";
const SECS: Duration = Duration::from_secs(20);

async fn guest_sshd() -> NodeSshd {
    tokio::task::spawn_blocking(|| {
        let port = testkit::free_port(VM_IP);
        NodeSshd::start_with_password(VM_IP, port, USER, PASSWORD)
    })
    .await
    .unwrap()
    .unwrap()
}

async fn setup(cfg: impl FnOnce(&mut ConnectConfig)) -> (Portal, NodeSshd) {
    let sshd = guest_sshd().await;
    let mut c = ConnectConfig {
        ssh_port: sshd.port,
        ..ConnectConfig::default()
    };
    cfg(&mut c);
    (portal(vec![], c, None).await, sshd)
}

/// Opens a terminal to [`VM`] as `stud` (fresh token, the portal's origin), through `via` if given.
async fn open(p: &Portal, via: Option<std::net::SocketAddr>) -> Term {
    let token = p.token("stud", VM, "ssh").await.unwrap();
    let (ws, _) = p
        .ws(
            "stud",
            &format!("/ws/terminal/{VM}?token={token}"),
            Some(&p.origin),
            None,
            via,
        )
        .await
        .unwrap();
    Term::new(ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn student_logs_in_runs_unicode_and_a_fullscreen_program_after_resize_and_another_student_is_refused() {
    let (p, _sshd) = setup(|_| {}).await;
    let mut t = open(&p, None).await;
    t.control(json!({"type": "hello", "cols": 100, "rows": 30})).await;
    t.login(USER, PASSWORD).await;
    let size = t.run("stty size").await;
    assert!(size.contains("30 100"), "PTY made with the hello size: {size:?}");

    // Non-ASCII output, typed as ASCII escapes so only the output holds the characters.
    let out = t
        .run(r"printf 'gr\303\274\303\237e \346\227\245\346\234\254\350\252\236 \342\234\223\n'")
        .await;
    assert!(out.contains("grüße 日本語 ✓"), "{out:?}");
    // Lots of multi-byte characters: whatever the SSH reads' boundaries, every frame is whole UTF-8.
    let from = t.screen.frames.len();
    let out = t
        .run(r"for i in $(seq 1 4000); do printf '\303\274\346\227\245\342\234\223'; done; echo")
        .await;
    assert_eq!(out.matches("ü日✓").count(), 4000, "all characters arrive");
    for (i, f) in t.screen.frames[from..].iter().enumerate() {
        assert!(
            std::str::from_utf8(f).is_ok(),
            "frame {i} splits a UTF-8 character: {f:?}"
        );
    }

    // Resize, then a full-screen-ish program sees the new size (window-change reaches the PTY).
    t.control(json!({"type": "resize", "cols": 132, "rows": 40}))
        .await;
    let size = t.run("stty size; tput cols; tput lines").await;
    assert!(size.contains("40 132"), "{size:?}");
    assert!(
        size.contains("\r\n132\r\n40\r\n"),
        "tput sees the new size: {size:?}"
    );
    // Zero and non-numbers are ignored, too large values clamped to 1000.
    t.control(json!({"type": "resize", "cols": 0, "rows": 10})).await;
    t.control(json!({"type": "resize", "cols": "NaN", "rows": 10}))
        .await;
    let size = t.run("stty size").await;
    assert!(size.contains("40 132"), "ignored: {size:?}");
    t.control(json!({"type": "resize", "cols": 5000, "rows": 50}))
        .await;
    let size = t.run("stty size").await;
    assert!(size.contains("50 1000"), "clamped: {size:?}");

    assert!(
        t.screen
            .status
            .iter()
            .any(|s| s["type"] == "hostkey" && s["status"] == "new"),
        "{:?}",
        t.screen.status
    );
    assert!(t.screen.status.iter().any(|s| s["state"] == "connected"));
    t.type_text("exit\r").await;
    let (code, reason) = t.closed(SECS).await;
    assert_eq!(code, 1000, "{reason}");
    assert!(reason.contains("exit status 0"), "{reason}");

    // Another student: no token for this VM, and no upgrade either (404: the VM does not exist for them).
    assert_eq!(p.token("stud2", VM, "ssh").await, Err(404));
    let own = p.token("stud", VM, "ssh").await.unwrap();
    let refused = p
        .ws(
            "stud2",
            &format!("/ws/terminal/{VM}?token={own}"),
            Some(&p.origin),
            None,
            None,
        )
        .await;
    assert_eq!(refused.err(), Some(404));
    // stud2's own token does not open stud's VM either.
    let theirs = p.token("stud2", OTHER_VM, "ssh").await.unwrap();
    let refused = p
        .ws(
            "stud",
            &format!("/ws/terminal/{VM}?token={theirs}"),
            Some(&p.origin),
            None,
            None,
        )
        .await;
    assert_eq!(refused.err(), Some(403));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_gets_a_pty_of_the_new_hello_size_before_typed_ahead_input() {
    let (p, _sshd) = setup(|_| {}).await;
    let mut t = open(&p, None).await;
    t.control(json!({"type": "hello", "cols": 90, "rows": 20})).await;
    t.login(USER, PASSWORD).await;
    t.control(json!({"type": "resize", "cols": 132, "rows": 40}))
        .await;
    assert!(t.run("stty size").await.contains("40 132"));
    drop(t); // the socket drops without a close frame

    // Reconnect with another size; the command is typed ahead in the same frame as the password, so it
    // reaches the shell only if the PTY already has the hello size.
    let mut t = open(&p, None).await;
    t.control(json!({"type": "hello", "cols": 120, "rows": 30})).await;
    t.expect("login as: ", SECS).await;
    t.type_text(&format!("{USER}\r")).await;
    t.expect("password: ", SECS).await;
    t.type_text(&format!("{PASSWORD}\rstty size; echo \"BE\"\"GONE\"\r"))
        .await;
    let out = t.expect("BEGONE", SECS).await;
    assert!(
        out.contains("30 120"),
        "typed-ahead input ran after the PTY got 120x30: {out:?}"
    );
    assert!(!out.contains(PASSWORD), "the password is never echoed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_keep_an_idle_terminal_alive_through_a_proxy_and_the_idle_timeout_closes_with_4000() {
    let (p, _sshd) = setup(|c| {
        c.ws_ping_interval = Duration::from_millis(250);
        c.idle_timeout = Duration::from_secs(5);
    })
    .await;
    // The proxy cuts connections that carry nothing for 1 s (like nginx's 60 s, scaled down).
    let proxy = idle_cutting_proxy(p.addr, Duration::from_secs(1)).await;
    let mut t = open(&p, Some(proxy)).await;
    t.control(json!({"type": "hello", "cols": 80, "rows": 24})).await;
    t.login(USER, PASSWORD).await;
    assert!(t.run("echo ready").await.contains("ready"));
    // Idle for 3 s (three times the proxy's limit): the server's pings keep the socket open.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        t.run("echo still-here").await.contains("still-here"),
        "the session survived the idle proxy"
    );
    assert!(t.screen.closed.is_none());
    // Without input for 5 s the session ends on purpose, with a 4000-range code and a reason.
    let started = tokio::time::Instant::now();
    let (code, reason) = t.closed(Duration::from_secs(15)).await;
    assert_eq!(code, 4000, "{reason}");
    assert!(reason.contains("without input"), "{reason}");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "closed too early: {:?}",
        started.elapsed()
    );
    assert!(
        t.screen.text().contains("Closed after"),
        "the reason shows in the terminal too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_needs_the_portals_exact_origin_and_a_one_time_token() {
    let (p, _sshd) = setup(|_| {}).await;
    let path = |t: &str| format!("/ws/terminal/{VM}?token={t}");
    let token = p.token("stud", VM, "ssh").await.unwrap();
    let host = p.addr.to_string();
    for bad in [
        "https://evil.example.net".to_string(),
        format!("http://vm210.lab.{host}"),
        format!("{}.evil.example.net", p.origin),
        "null".to_string(),
        format!("https://{host}"),
    ] {
        assert_eq!(
            p.ws("stud", &path(&token), Some(&bad), None, None).await.err(),
            Some(403),
            "Origin {bad}"
        );
    }
    assert_eq!(
        p.ws("stud", &path(&token), None, None, None).await.err(),
        Some(403),
        "no Origin with a cookie"
    );
    // The refused attempts did not use the token up; the portal's own origin gets 101 once.
    let (ws, resp) = p
        .ws("stud", &path(&token), Some(&p.origin), None, None)
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 101);
    drop(ws);
    assert_eq!(
        p.ws("stud", &path(&token), Some(&p.origin), None, None)
            .await
            .err(),
        Some(403),
        "one time only"
    );
    assert_eq!(
        p.ws("stud", &path("made-up"), Some(&p.origin), None, None)
            .await
            .err(),
        Some(403)
    );
    assert_eq!(
        p.ws("stud", &format!("/ws/terminal/{VM}"), Some(&p.origin), None, None)
            .await
            .err(),
        Some(403),
        "no token"
    );
    // A console token does not open a terminal.
    let console = p.token("stud", VM, "console").await.unwrap();
    assert_eq!(
        p.ws("stud", &path(&console), Some(&p.origin), None, None)
            .await
            .err(),
        Some(403)
    );
    // A token is good for 30 s only.
    let token = p.token("stud", VM, "ssh").await.unwrap();
    p.clock.advance(Duration::from_secs(31));
    assert_eq!(
        p.ws("stud", &path(&token), Some(&p.origin), None, None)
            .await
            .err(),
        Some(403),
        "expired"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guest_host_key_is_recorded_per_vm_and_a_change_stops_the_login_until_the_user_says_yes() {
    let (p, sshd) = setup(|_| {}).await;
    let mut t = open(&p, None).await;
    t.control(json!({"type": "hello", "cols": 80, "rows": 24})).await;
    t.expect("login as: ", SECS).await;
    let rec = web::connect::hostkeys::get(&p.store, "lab", VM)
        .unwrap()
        .expect("recorded on first use");
    assert_eq!(
        rec.openssh.split_whitespace().nth(1),
        sshd.host_public_key.split_whitespace().nth(1)
    );
    drop(t);
    let mut t = open(&p, None).await;
    t.control(json!({"type": "hello", "cols": 80, "rows": 24})).await;
    t.expect("login as: ", SECS).await;
    assert!(
        t.screen
            .status
            .iter()
            .any(|s| s["type"] == "hostkey" && s["status"] == "known")
    );
    drop(t);

    // Pretend the VM had another key before (rebuilt VM, or someone in the middle).
    let mut old = rec.clone();
    old.openssh = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOld0ld0ld0ld0ld0ld0ld0ld0ld0ld0ld0ld0ld0ld0l".into();
    old.fingerprint = "SHA256:oldoldoldoldoldoldoldoldoldoldoldoldoldoldo".into();
    web::connect::hostkeys::record(&p.store, "lab", VM, &old).unwrap();
    let mut t = open(&p, None).await;
    t.control(json!({"type": "hello", "cols": 80, "rows": 24})).await;
    t.expect("HOST KEY OF THIS VM HAS CHANGED", SECS).await;
    t.expect("Type", SECS).await;
    assert!(
        t.screen
            .status
            .iter()
            .any(|s| s["type"] == "hostkey" && s["status"] == "changed" && s["previous"] == old.fingerprint)
    );
    assert!(
        !t.screen.text().contains("login as:"),
        "no credentials are asked before the user decides"
    );
    t.type_text("no\r").await;
    let (code, _) = t.closed(SECS).await;
    assert_eq!(code, 4002);
    assert_eq!(
        web::connect::hostkeys::get(&p.store, "lab", VM)
            .unwrap()
            .unwrap()
            .openssh,
        old.openssh,
        "kept"
    );

    let mut t = open(&p, None).await;
    t.control(json!({"type": "hello", "cols": 80, "rows": 24})).await;
    t.expect("HOST KEY OF THIS VM HAS CHANGED", SECS).await;
    t.type_text("yes\r").await;
    t.login(USER, PASSWORD).await;
    assert!(t.run("echo trusted").await.contains("trusted"));
    assert_eq!(
        web::connect::hostkeys::get(&p.store, "lab", VM)
            .unwrap()
            .unwrap()
            .openssh,
        rec.openssh,
        "the new key is recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_close_with_4001_and_a_user_gets_at_most_their_session_limit() {
    let (p, _sshd) = setup(|c| c.max_sessions_per_user = 2).await;
    let mut t = open(&p, None).await;
    t.control(json!({"type": "hello", "cols": 80, "rows": 24})).await;
    t.expect("login as: ", SECS).await;
    t.type_text(&format!("{USER}\r")).await;
    for _ in 0..3 {
        t.expect("password: ", SECS).await;
        t.type_text("wrong-password\r").await;
    }
    let (code, reason) = t.closed(SECS).await;
    assert_eq!(code, 4001, "{reason}");
    assert!(t.screen.text().contains("Permission denied"));

    let a = open(&p, None).await;
    let b = open(&p, None).await;
    let token = p.token("stud", VM, "ssh").await.unwrap();
    let third = p
        .ws(
            "stud",
            &format!("/ws/terminal/{VM}?token={token}"),
            Some(&p.origin),
            None,
            None,
        )
        .await;
    assert_eq!(third.err(), Some(429), "third session refused before the upgrade");
    drop(a);
    // The slot comes back once the server noticed the closed socket.
    let deadline = tokio::time::Instant::now() + SECS;
    loop {
        let token = p.token("stud", VM, "ssh").await.unwrap();
        match p
            .ws(
                "stud",
                &format!("/ws/terminal/{VM}?token={token}"),
                Some(&p.origin),
                None,
                None,
            )
            .await
        {
            Ok(_) => break,
            Err(429) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(s) => panic!("status {s}"),
        }
    }
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_open_terminals_with_1001_and_refuses_new_ones() {
    let (p, _sshd) = setup(|_| {}).await;
    let mut t = open(&p, None).await;
    t.control(json!({"type": "hello", "cols": 80, "rows": 24})).await;
    t.login(USER, PASSWORD).await;
    assert!(t.run("echo before").await.contains("before"));
    let mut waiting = open(&p, None).await; // still at the login prompt
    waiting
        .control(json!({"type": "hello", "cols": 80, "rows": 24}))
        .await;
    waiting.expect("login as: ", SECS).await;
    p.state.connect.begin_shutdown();
    let (code, reason) = t.closed(SECS).await;
    assert_eq!((code, reason.as_str()), (1001, "server restarting"));
    let (code, _) = waiting.closed(SECS).await;
    assert_eq!(code, 1001);
    assert_eq!(p.state.connect.drain(SECS).await, 0, "every relay ended");
    let token = p.token("stud", VM, "ssh").await.unwrap();
    let refused = p
        .ws(
            "stud",
            &format!("/ws/terminal/{VM}?token={token}"),
            Some(&p.origin),
            None,
            None,
        )
        .await;
    assert_eq!(refused.err(), Some(503));
}

/// The attack: a student keeps a terminal open after their account is disabled (or their session is
/// signed out) and goes on using the VM. The relay closes with 4009 and a reason in plain words within a
/// second of the change; a new terminal is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_terminal_closes_with_4009_within_a_second_of_the_student_being_disabled() {
    let (p, _sshd) = setup(|_| {}).await;
    let mut t = open(&p, None).await;
    t.control(json!({"type": "hello", "cols": 80, "rows": 24})).await;
    t.login(USER, PASSWORD).await;
    assert!(t.run("echo before").await.contains("before"));
    p.store.set_user_disabled("stud", true).unwrap();
    let (code, reason) = t.closed(Duration::from_millis(1500)).await;
    assert_eq!(code, web::connect::close::SIGNED_OUT, "{reason}");
    assert!(reason.contains("session ended"), "{reason}");
    assert_eq!(p.token("stud", VM, "ssh").await.err(), Some(401));
}
