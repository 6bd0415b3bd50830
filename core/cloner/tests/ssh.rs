//! The SSH executor against a real OpenSSH sshd on loopback (testkit's `NodeSshd`, plus a custom one for
//! RSA keys and legacy algorithms).

// Helpers here are test code outside `#[test]` functions, where clippy's allow-unwrap-in-tests does
// not reach.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cloner::{ClonerError, Executor, HostKeyPolicy, NodeAccess, SshExecutor, SshPool};
use common::{CustomSshd, access, argv, count_lines, pinned, wait_until};
use testkit::NodeSshd;

/// An Ed25519 public key that belongs to no server here.
const OTHER_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";

fn start() -> NodeSshd {
    NodeSshd::start().expect("loopback sshd")
}

#[tokio::test]
async fn command_status_stdout_and_stderr_come_back() {
    let sshd = start();
    let exec = SshExecutor::new(pinned(&sshd)).unwrap();
    let out = exec
        .run(&argv(&["sh", "-c", "echo out; echo err >&2; exit 3"]))
        .await
        .unwrap();
    assert_eq!(out.status, 3);
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    let failed = out.check(&argv(&["sh", "-c", "…"])).unwrap_err();
    assert!(matches!(failed, ClonerError::CommandFailed { status: 3, ref stderr, .. } if stderr == "err"));
    assert_eq!(
        exec.describe(),
        format!("ssh {}@{}:{}", sshd.user, sshd.host, sshd.port)
    );
}

#[tokio::test]
async fn odd_arguments_reach_the_remote_program_unchanged() {
    let sshd = start();
    let exec = SshExecutor::new(pinned(&sshd)).unwrap();
    let odd = [
        "with space",
        "it's",
        "'",
        "",
        "$HOME",
        "`id`",
        "$(echo pwned)",
        "a\nb",
        "semi;colon && true",
        "star*",
        "back\\slash",
        "jörg",
        "-n",
    ];
    let mut a = argv(&["printf", "%s\\0"]);
    a.extend(odd.iter().map(|s| s.to_string()));
    let out = exec.run(&a).await.unwrap();
    assert!(out.success(), "{out:?}");
    let got: Vec<&[u8]> = out.stdout.split(|b| *b == 0).collect();
    assert_eq!(got.len(), odd.len() + 1);
    for (g, want) in got.iter().zip(odd) {
        assert_eq!(*g, want.as_bytes());
    }
}

#[tokio::test]
async fn nul_byte_in_an_argument_is_refused_without_running_anything() {
    let sshd = start();
    let exec = SshExecutor::new(pinned(&sshd)).unwrap();
    let e = exec.run(&argv(&["echo", "a\0b"])).await.unwrap_err();
    assert!(matches!(e, ClonerError::Config(_)), "{e}");
    assert_eq!(exec.connections_made(), 0);
}

#[tokio::test]
async fn wrong_pinned_fingerprint_is_refused_before_authentication() {
    let sshd = start();
    let wrong = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let exec = SshExecutor::new(access(&sshd, HostKeyPolicy::Fingerprint(wrong.into()))).unwrap();
    let e = exec.run(&argv(&["true"])).await.unwrap_err();
    match &e {
        ClonerError::HostKeyMismatch {
            expected, presented, ..
        } => {
            assert_eq!(expected, wrong);
            assert_eq!(presented, &sshd.host_key_sha256);
        }
        other => panic!("expected HostKeyMismatch, got {other}"),
    }
    assert!(e.to_string().contains(&sshd.host_key_sha256), "{e}");
    // sshd saw the connection end before any user authentication.
    assert!(
        wait_until(Duration::from_secs(5), || count_lines(&sshd.log, "[preauth]") > 0),
        "no preauth disconnect logged:\n{}",
        std::fs::read_to_string(&sshd.log).unwrap_or_default()
    );
    let log = std::fs::read_to_string(&sshd.log).unwrap();
    assert!(!log.contains("Accepted publickey"), "{log}");
    assert!(
        !log.contains("publickey for"),
        "authentication was attempted:\n{log}"
    );
    assert_eq!(exec.connections_made(), 0);
}

#[tokio::test]
async fn right_fingerprint_and_known_hosts_file_are_accepted() {
    let sshd = start();
    for policy in [
        HostKeyPolicy::Fingerprint(sshd.host_key_sha256.clone()),
        HostKeyPolicy::KnownHosts(sshd.known_hosts_file.clone()),
    ] {
        let exec = SshExecutor::new(access(&sshd, policy.clone())).unwrap();
        let out = exec.run(&argv(&["echo", "ok"])).await.unwrap();
        assert_eq!(out.stdout, b"ok\n", "{policy:?}");
    }
}

#[tokio::test]
async fn known_hosts_with_another_key_for_the_node_is_a_mismatch() {
    let sshd = start();
    let dir = testkit::temp_dir("cloner-kh-");
    let file = dir.path().join("known_hosts");
    std::fs::write(&file, format!("[{}]:{} {OTHER_KEY}\n", sshd.host, sshd.port)).unwrap();
    let exec = SshExecutor::new(access(&sshd, HostKeyPolicy::KnownHosts(file))).unwrap();
    let e = exec.run(&argv(&["true"])).await.unwrap_err();
    match e {
        ClonerError::HostKeyMismatch {
            expected, presented, ..
        } => {
            assert!(expected.starts_with("ssh-ed25519 SHA256:"), "{expected}");
            assert_eq!(presented, sshd.host_key_sha256);
        }
        other => panic!("expected HostKeyMismatch, got {other}"),
    }
    assert_eq!(count_lines(&sshd.log, "Accepted publickey"), 0);
}

#[tokio::test]
async fn node_missing_from_known_hosts_is_unknown_and_not_recorded() {
    let sshd = start();
    let dir = testkit::temp_dir("cloner-kh-");
    let file = dir.path().join("known_hosts");
    // An entry for the same address on another port does not vouch for this one.
    let other_port = format!("[{}]:{} {}\n", sshd.host, sshd.port + 1, sshd.host_public_key);
    std::fs::write(&file, &other_port).unwrap();
    let exec = SshExecutor::new(access(&sshd, HostKeyPolicy::KnownHosts(file.clone()))).unwrap();
    let e = exec.run(&argv(&["true"])).await.unwrap_err();
    assert!(
        matches!(&e, ClonerError::UnknownHostKey { presented, .. } if presented.ends_with(&sshd.host_key_sha256)),
        "{e}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), other_port);
}

#[tokio::test]
async fn trust_on_first_use_records_the_key_and_then_enforces_it() {
    let sshd = start();
    let dir = testkit::temp_dir("cloner-tofu-");
    let file = dir.path().join("state/known_hosts");
    let exec = SshExecutor::new(access(&sshd, HostKeyPolicy::TrustOnFirstUse(file.clone()))).unwrap();
    exec.run(&argv(&["true"])).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        format!("{}\n", sshd.known_hosts_line)
    );

    // The recorded file now works as a strict known_hosts file.
    let strict = SshExecutor::new(access(&sshd, HostKeyPolicy::KnownHosts(file.clone()))).unwrap();
    strict.run(&argv(&["true"])).await.unwrap();

    // TOFU never overrides a recorded key: a different recorded key is a mismatch.
    let other = dir.path().join("other_known_hosts");
    std::fs::write(&other, format!("[{}]:{} {OTHER_KEY}\n", sshd.host, sshd.port)).unwrap();
    let tofu = SshExecutor::new(access(&sshd, HostKeyPolicy::TrustOnFirstUse(other.clone()))).unwrap();
    let e = tofu.run(&argv(&["true"])).await.unwrap_err();
    assert!(matches!(e, ClonerError::HostKeyMismatch { .. }), "{e}");
    assert_eq!(std::fs::read_to_string(&other).unwrap().lines().count(), 1);
}

#[tokio::test]
async fn fifty_parallel_commands_share_one_connection() {
    let sshd = start();
    let exec = SshExecutor::new(pinned(&sshd)).unwrap();
    let runs = (0..50).map(|i| {
        let exec = exec.clone();
        async move {
            let out = exec
                .run(&argv(&["sh", "-c", &format!("sleep 0.05; echo {i}")]))
                .await?;
            Ok::<_, ClonerError>((i, out))
        }
    });
    let results = futures::future::join_all(runs).await;
    for r in results {
        let (i, out) = r.unwrap();
        assert_eq!(out.stdout_text(), format!("{i}\n"));
    }
    assert_eq!(exec.connections_made(), 1);
    // sshd agrees: one login in its log, however many channels were opened.
    assert_eq!(
        count_lines(&sshd.log, "Accepted publickey"),
        1,
        "{}",
        std::fs::read_to_string(&sshd.log).unwrap()
    );
}

#[tokio::test]
async fn pool_hands_out_one_executor_per_node() {
    let sshd = start();
    let pool = SshPool::new();
    let a = pool.get("lab/node-a", &pinned(&sshd)).unwrap();
    a.run(&argv(&["true"])).await.unwrap();
    let again = pool.get("lab/node-a", &pinned(&sshd)).unwrap();
    again.run(&argv(&["true"])).await.unwrap();
    assert_eq!(again.connections_made(), 1);
    assert_eq!(count_lines(&sshd.log, "Accepted publickey"), 1);
}

#[tokio::test]
async fn command_timeout_stops_the_command_and_keeps_the_connection() {
    let sshd = start();
    let exec = SshExecutor::new(pinned(&sshd)).unwrap();
    let marker = format!("cloner-timeout-{}", std::process::id());
    let started = Instant::now();
    let e = exec
        .run_with_timeout(
            &argv(&["bash", "-c", &format!("exec -a {marker} sleep 30")]),
            Duration::from_millis(1500),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClonerError::Timeout { after, .. } if after == Duration::from_millis(1500)),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    // The remote command ends too (the `timeout` wrapper, a second after our deadline), not 30 s later.
    let mut gone = false;
    for _ in 0..200 {
        let ps = std::process::Command::new("ps")
            .args(["-eo", "args"])
            .output()
            .unwrap();
        if !String::from_utf8_lossy(&ps.stdout).contains(&marker) {
            gone = true;
            break;
        }
        // Async wait: the connection's task must keep running on this test's runtime meanwhile.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(gone, "the timed-out command is still running");
    assert!(started.elapsed() < Duration::from_secs(6));
    // The connection is still good for the next command.
    assert_eq!(
        exec.run(&argv(&["echo", "next"])).await.unwrap().stdout,
        b"next\n"
    );
    assert_eq!(exec.connections_made(), 1);
}

#[tokio::test]
async fn connect_timeout_when_the_server_never_speaks() {
    let host = testkit::unique_loopback();
    let listener = std::net::TcpListener::bind((host.as_str(), 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let node = NodeAccess {
        port,
        connect_timeout: Duration::from_millis(300),
        ..NodeAccess::new(
            &host,
            "root",
            "/nonexistent",
            HostKeyPolicy::KnownHosts("/nonexistent".into()),
        )
    };
    let exec = SshExecutor::new(node).unwrap();
    let started = Instant::now();
    let e = exec.run(&argv(&["true"])).await.unwrap_err();
    assert!(matches!(e, ClonerError::Timeout { .. }), "{e}");
    assert!(e.is_transient());
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(listener);
}

#[tokio::test]
async fn closed_port_is_a_connect_error() {
    let host = testkit::unique_loopback();
    let port = testkit::free_port(&host);
    let node = NodeAccess {
        port,
        ..NodeAccess::new(
            &host,
            "root",
            "/nonexistent",
            HostKeyPolicy::KnownHosts("/nonexistent".into()),
        )
    };
    let e = SshExecutor::new(node)
        .unwrap()
        .run(&argv(&["true"]))
        .await
        .unwrap_err();
    assert!(matches!(e, ClonerError::Connect { .. }), "{e}");
}

#[tokio::test]
async fn lost_connection_is_remade_for_the_next_command() {
    let sshd = start();
    let exec = SshExecutor::new(pinned(&sshd)).unwrap();
    exec.run(&argv(&["true"])).await.unwrap();
    // Kill this connection's own sshd session process (an ancestor of the remote shell).
    let kill_own_session = r#"p=$$; while [ "$p" -gt 1 ]; do
        case "$(tr '\0' ' ' </proc/$p/cmdline)" in "sshd: "*@notty*) kill -9 "$p"; exit 0;; esac
        p=$(awk '/^PPid:/{print $2}' /proc/$p/status); done; exit 1"#;
    let e = exec.run(&argv(&["sh", "-c", kill_own_session])).await;
    assert!(e.is_err(), "the command died with its connection: {e:?}");
    let out = exec.run(&argv(&["echo", "back"])).await.unwrap();
    assert_eq!(out.stdout, b"back\n");
    assert_eq!(exec.connections_made(), 2);
}

#[tokio::test]
async fn unknown_client_key_is_an_auth_error() {
    let sshd = start();
    let dir = testkit::temp_dir("cloner-key-");
    let key = dir.path().join("stranger");
    common::keygen(&key, "ed25519");
    let node = NodeAccess {
        key_file: key,
        ..pinned(&sshd)
    };
    let e = SshExecutor::new(node)
        .unwrap()
        .run(&argv(&["true"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClonerError::Auth { user, .. } if user == &sshd.user),
        "{e}"
    );

    let missing = NodeAccess {
        key_file: dir.path().join("missing"),
        ..pinned(&sshd)
    };
    let e = SshExecutor::new(missing)
        .unwrap()
        .run(&argv(&["true"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClonerError::Auth { message, .. } if message.contains("missing")),
        "{e}"
    );
}

#[tokio::test]
async fn legacy_only_server_fails_fast_naming_what_it_offers() {
    let legacy = CustomSshd::start("diffie-hellman-group14-sha1", "ssh-rsa");
    let exec = SshExecutor::new(legacy.access(false)).unwrap();
    let started = Instant::now();
    let e = exec.run(&argv(&["true"])).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    match &e {
        ClonerError::Negotiation { kind, offered, .. } => {
            assert_eq!(kind, "kex");
            assert!(offered.contains("diffie-hellman-group14-sha1"), "{offered}");
        }
        other => panic!("expected Negotiation, got {other}"),
    }
    assert!(
        e.to_string().contains("offers only: diffie-hellman-group14-sha1"),
        "{e}"
    );
}

#[tokio::test]
async fn ssh_rsa_only_host_key_is_a_host_key_negotiation_error() {
    let sshd = CustomSshd::start("curve25519-sha256", "ssh-rsa");
    let e = SshExecutor::new(sshd.access(false))
        .unwrap()
        .run(&argv(&["true"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClonerError::Negotiation { kind, offered, .. } if kind == "host key" && offered.contains("ssh-rsa")),
        "{e}"
    );
}

#[tokio::test]
async fn legacy_profile_connects_with_rsa_keys() {
    let legacy = CustomSshd::start("diffie-hellman-group14-sha1", "ssh-rsa");
    let exec = Arc::new(SshExecutor::new(legacy.access(true)).unwrap());
    let out = exec.run(&argv(&["echo", "old appliance"])).await.unwrap();
    assert_eq!(out.stdout, b"old appliance\n");
    assert_eq!(count_lines(&legacy.log, "Accepted publickey"), 1);
}

#[tokio::test]
async fn rsa_client_key_works_with_the_modern_profile() {
    let sshd = CustomSshd::start("curve25519-sha256", "rsa-sha2-512,rsa-sha2-256");
    let out = SshExecutor::new(sshd.access(false))
        .unwrap()
        .run(&argv(&["echo", "rsa"]))
        .await
        .unwrap();
    assert_eq!(out.stdout, b"rsa\n");
    let log = std::fs::read_to_string(&sshd.log).unwrap();
    assert!(log.contains("Accepted publickey") && log.contains("RSA"), "{log}");
}

#[tokio::test]
async fn keepalive_probes_an_idle_connection_and_drops_a_silent_node() {
    use std::sync::atomic::Ordering;
    let sshd = start();
    let relay = common::Relay::start(&sshd.host, sshd.port).await;
    let node = NodeAccess {
        host: relay.host.clone(),
        port: relay.port,
        keepalive_interval: Duration::from_millis(200),
        ..pinned(&sshd)
    };
    let exec = SshExecutor::new(node).unwrap();
    exec.run(&argv(&["true"])).await.unwrap();

    // Idle: the client sends keepalives on its own.
    let before = relay.client_bytes.load(Ordering::SeqCst);
    let mut probed = false;
    for _ in 0..100 {
        if relay.client_bytes.load(Ordering::SeqCst) > before {
            probed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(probed, "no keepalive sent while idle");

    // The node goes silent: after 3 unanswered keepalives the client gives the connection up (closes
    // it), and the next command makes a new one.
    relay.frozen.store(true, Ordering::SeqCst);
    let mut gave_up = false;
    for _ in 0..150 {
        if relay.client_closed.load(Ordering::SeqCst) > 0 {
            gave_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gave_up, "the silent connection was never given up");
    relay.frozen.store(false, Ordering::SeqCst);
    assert_eq!(
        exec.run(&argv(&["echo", "again"])).await.unwrap().stdout,
        b"again\n"
    );
    assert_eq!(exec.connections_made(), 2);
}
