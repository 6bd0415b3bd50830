//! The harness against the real parts it starts: fakepve clusters over verified HTTPS, the control API,
//! and loopback OpenSSH servers reached with the real `ssh` client.
// The helpers below are test code outside `#[test]` functions, where clippy's allow-unwrap-in-tests
// does not reach.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::{ClusterSpec, FakeCluster, NodeSshd, temp_dir, unique_loopback};

async fn api_get(cluster: &FakeCluster, path: &str) -> Value {
    let response = cluster
        .https_client()
        .unwrap()
        .get(format!("{}{path}", cluster.api_base))
        .header("Authorization", cluster.token_header())
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:?}"));
    assert!(
        response.status().is_success(),
        "GET {path}: {}",
        response.status()
    );
    response.json::<Value>().await.unwrap()["data"].take()
}

#[tokio::test]
async fn lab_cluster_answers_version_over_tls_verified_with_its_ca_and_token() {
    let cluster = FakeCluster::start(ClusterSpec::lab()).unwrap();
    assert!(cluster.url.starts_with("https://127."));
    assert_eq!(cluster.token_id, "root@pam!portal");
    assert_eq!(cluster.cert_sha256.len(), 95, "{}", cluster.cert_sha256);

    let version = api_get(&cluster, "/version").await;
    assert!(
        version["version"].as_str().is_some_and(|v| v.starts_with('9')),
        "{version}"
    );

    // Without the token: 401, as PVE answers.
    let anonymous = cluster
        .https_client()
        .unwrap()
        .get(format!("{}/version", cluster.api_base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);

    // A client that does not trust the CA file refuses the certificate.
    let roots = rustls::RootCertStore::empty();
    let untrusting = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(untrusting)
        .build()
        .unwrap();
    let refused = client.get(format!("{}/version", cluster.api_base)).send().await;
    assert!(refused.is_err(), "TLS without the CA must fail");
}

#[tokio::test]
async fn quorum_fault_shows_in_cluster_status() {
    let cluster = FakeCluster::start(ClusterSpec::lab()).unwrap();
    let quorate = |status: &Value| {
        status
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == "cluster")
            .map(|e| e["quorate"].clone())
    };
    assert_eq!(
        quorate(&api_get(&cluster, "/cluster/status").await),
        Some(json!(1))
    );

    let answer = cluster
        .control("POST", "/quorum", json!({"quorate": false}))
        .unwrap();
    assert_eq!(answer["quorate"], false);
    assert_eq!(
        quorate(&api_get(&cluster, "/cluster/status").await),
        Some(json!(0))
    );
    assert_eq!(cluster.state().unwrap()["quorate"], false);

    cluster
        .control("POST", "/quorum", json!({"quorate": true}))
        .unwrap();
    assert_eq!(
        quorate(&api_get(&cluster, "/cluster/status").await),
        Some(json!(1))
    );
}

#[test]
fn control_api_errors_name_the_status_and_message() {
    let cluster = FakeCluster::start(ClusterSpec::lab()).unwrap();
    let err = cluster
        .control("POST", "/lock", json!({"vmid": 424242, "lock": "backup"}))
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("HTTP 404") && text.contains("no guest 424242"),
        "{text}"
    );
    assert!(matches!(
        err.downcast_ref::<testkit::TestkitError>(),
        Some(testkit::TestkitError::Control { .. })
    ));
}

#[tokio::test]
async fn requests_are_counted_and_listed() {
    let cluster = FakeCluster::start(ClusterSpec::lab()).unwrap();
    let before = cluster.request_count().unwrap();
    api_get(&cluster, "/nodes").await;
    assert_eq!(cluster.request_count().unwrap(), before + 1);
    let rows = cluster.requests_since(before).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["method"], "GET");
    assert!(
        rows[0]["path"].as_str().unwrap().ends_with("/nodes"),
        "{}",
        rows[0]
    );
}

#[tokio::test]
async fn generated_cluster_lists_2000_guests_in_cluster_resources() {
    let cluster = FakeCluster::start(ClusterSpec::generated(2000)).unwrap();
    let resources = api_get(&cluster, "/cluster/resources?type=vm").await;
    let guests: Vec<&Value> = resources
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["type"] == "qemu")
        .collect();
    assert_eq!(guests.len(), 2000);
    assert!(
        guests
            .iter()
            .any(|g| g["name"] == "lab-2999" && g["vmid"] == 2999)
    );
    let running = guests.iter().filter(|g| g["status"] == "running").count();
    assert!((900..=1100).contains(&running), "{running} running");
    let templates = guests.iter().filter(|g| g["template"] == 1).count();
    assert_eq!(templates, 4);
    // Templates have real base images on the dir-backed storage.
    assert!(
        cluster.storage_dirs["labnfs"]
            .join("images/1000/base-1000-disk-0.qcow2")
            .is_file()
    );
}

#[test]
fn shared_returns_the_same_running_cluster() {
    let first = FakeCluster::shared();
    let second = FakeCluster::shared();
    assert!(std::ptr::eq(first, second));
    let health = first.control("GET", "/health", Value::Null).unwrap();
    assert_eq!(health["ok"], true);
    assert_eq!(health["cluster"], "school-lab");
}

#[tokio::test]
async fn start_many_serves_every_cluster_with_one_ca_file() {
    let clusters = FakeCluster::start_many(vec![
        ClusterSpec {
            name: Some("lab-a".into()),
            ..ClusterSpec::lab()
        },
        ClusterSpec {
            name: Some("lab-b".into()),
            ..ClusterSpec::generated(10)
        },
    ])
    .unwrap();
    assert_eq!(clusters[0].ca_file, clusters[1].ca_file);
    assert_eq!(clusters[0].cert_sha256, clusters[1].cert_sha256);
    assert_ne!(clusters[0].host, clusters[1].host);
    for (cluster, name) in clusters.iter().zip(["lab-a", "lab-b"]) {
        let status = api_get(cluster, "/cluster/status").await;
        let entry = status
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == "cluster")
            .unwrap()
            .clone();
        assert_eq!(entry["name"], name);
    }
}

#[tokio::test]
async fn extra_guests_get_loopback_agent_addresses_from_the_agent_prefix() {
    let spec = ClusterSpec {
        agent_prefix: Some("127.60".into()),
        extra_guests: vec![json!({
            "vmid": 4001, "name": "student-4001", "node": "pve1", "status": "running",
            "config": {"agent": "1", "memory": 1024, "net0": "virtio=BC:24:11:40:01:00,bridge=vmbr0"}
        })],
        ..ClusterSpec::lab()
    };
    let cluster = FakeCluster::start(spec).unwrap();
    let answer = api_get(&cluster, "/nodes/pve1/qemu/4001/agent/network-get-interfaces").await;
    let text = answer.to_string();
    assert!(text.contains("127.60.16.3"), "{text}");
}

#[test]
fn lab_storage_dir_holds_the_template_base_images() {
    let cluster = FakeCluster::start(ClusterSpec::lab()).unwrap();
    let labnfs = &cluster.storage_dirs["labnfs"];
    assert!(labnfs.starts_with(&cluster.state_dir));
    assert!(labnfs.join("images/9000/base-9000-disk-0.qcow2").is_file());
    let state = cluster.state().unwrap();
    assert_eq!(state["storage_dirs"]["labnfs"], json!(labnfs));
}

#[test]
fn dropping_a_cluster_stops_its_sim_and_removes_its_state_dir() {
    let cluster = FakeCluster::start(ClusterSpec::lab()).unwrap();
    let (pid, dir, host, port) = (
        cluster.pid,
        cluster.state_dir.clone(),
        cluster.host.clone(),
        cluster.port,
    );
    drop(cluster);
    let alive = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| !c.is_empty())
        .unwrap_or(false);
    assert!(!alive, "sim {pid} still runs");
    assert!(!dir.exists());
    assert!(std::net::TcpStream::connect((host.as_str(), port)).is_err());
}

#[test]
fn a_missing_guests_file_is_named_in_the_error() {
    let spec = ClusterSpec {
        guests_file: "/nonexistent/guests.json".into(),
        ..ClusterSpec::lab()
    };
    let err = format!("{:#}", FakeCluster::start(spec).unwrap_err());
    assert!(err.contains("/nonexistent/guests.json"), "{err}");
}

#[test]
fn a_crashing_sim_reports_its_log_tail() {
    let dir = temp_dir("testkit-bad-");
    let file = dir.path().join("bad.json");
    // A local_dir on a storage type that cannot hold files makes sim.py exit at load.
    std::fs::write(
        &file,
        r#"{"cluster": {"storages": {"x": {"type": "rbd", "local_dir": "x"}}}, "guests": []}"#,
    )
    .unwrap();
    let err = format!(
        "{:#}",
        FakeCluster::start(ClusterSpec {
            guests_file: file,
            ..ClusterSpec::lab()
        })
        .unwrap_err()
    );
    assert!(
        err.contains("exited before it was ready") && err.contains("local_dir needs a file-based type"),
        "{err}"
    );
}

fn ssh(sshd: &NodeSshd, extra: &[&str], command: &str) -> Output {
    Command::new("ssh")
        .args(extra)
        .args(sshd.ssh_args())
        .arg(command)
        .output()
        .unwrap()
}

#[test]
fn node_sshd_runs_commands_with_key_login_and_a_pinned_host_key() {
    let sshd = NodeSshd::start().unwrap();
    assert!(
        sshd.host_key_sha256.starts_with("SHA256:"),
        "{}",
        sshd.host_key_sha256
    );
    assert!(sshd.host_public_key.starts_with("ssh-ed25519 AAAA"));
    let out = ssh(&sshd, &[], "echo hi");
    assert!(
        out.status.success(),
        "ssh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hi");

    // Another host key under the same name is refused (strict checking against known_hosts).
    let other = NodeSshd::start().unwrap();
    let mismatch = Command::new("ssh")
        .args([
            "-o",
            &format!("UserKnownHostsFile={}", other.known_hosts_file.display()),
        ])
        .args(sshd.ssh_args())
        .arg("true")
        .output()
        .unwrap();
    assert!(!mismatch.status.success());
}

#[test]
fn node_sshd_on_a_chosen_address_refuses_passwords() {
    let host = unique_loopback();
    let port = testkit::free_port(&host);
    let sshd = NodeSshd::start_on(&host, port).unwrap();
    assert_eq!((sshd.host.as_str(), sshd.port), (host.as_str(), port));
    assert!(
        sshd.known_hosts_line
            .starts_with(&format!("[{host}]:{port} ssh-ed25519 "))
    );
    let askpass = askpass_script("whatever");
    let out = password_ssh(&sshd, &askpass, "true");
    assert!(!out.status.success(), "password login must be off in key mode");
}

#[test]
fn dropping_node_sshd_stops_it() {
    let sshd = NodeSshd::start().unwrap();
    let (pid, host, port) = (sshd.pid, sshd.host.clone(), sshd.port);
    assert!(std::net::TcpStream::connect((host.as_str(), port)).is_ok());
    drop(sshd);
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect((host.as_str(), port)).is_ok() {
        assert!(Instant::now() < deadline, "sshd {pid} still listens");
        std::thread::sleep(Duration::from_millis(20));
    }
    let alive = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| !c.is_empty())
        .unwrap_or(false);
    assert!(!alive);
}

/// An SSH_ASKPASS program printing `password` (OpenSSH reads the password from it; no sshpass needed).
fn askpass_script(password: &str) -> tempfile::TempDir {
    let dir = temp_dir("testkit-askpass-");
    let script = dir.path().join("askpass");
    std::fs::write(&script, format!("#!/bin/sh\nprintf '%s\\n' '{password}'\n")).unwrap();
    Command::new("chmod").arg("700").arg(&script).status().unwrap();
    dir
}

fn password_ssh(sshd: &NodeSshd, askpass: &tempfile::TempDir, command: &str) -> Output {
    Command::new("ssh")
        .env("SSH_ASKPASS", askpass.path().join("askpass"))
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .stdin(std::process::Stdio::null())
        .args([
            "-o",
            &format!("UserKnownHostsFile={}", sshd.known_hosts_file.display()),
        ])
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "PubkeyAuthentication=no"])
        .args([
            "-o",
            "PreferredAuthentications=password",
            "-o",
            "NumberOfPasswordPrompts=1",
        ])
        .args(["-p", &sshd.port.to_string()])
        .arg(format!("{}@{}", sshd.user, sshd.host))
        .arg(command)
        .output()
        .unwrap()
}

#[test]
fn password_sshd_accepts_the_password_and_refuses_a_wrong_one() {
    if !Path::new("/proc/self").exists() || !is_root() {
        eprintln!("skipped: password mode needs root (useradd/chpasswd)");
        return;
    }
    let host = unique_loopback();
    let port = testkit::free_port(&host);
    let sshd = NodeSshd::start_with_password(&host, port, "proxlab-student", "s3cret pass").unwrap();
    assert_eq!(
        format!("{sshd:?}").matches("s3cret").count(),
        0,
        "Debug must hide the password"
    );

    let good = password_ssh(&sshd, &askpass_script("s3cret pass"), "id -un");
    assert!(
        good.status.success(),
        "password login failed: {}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&good.stdout).trim(), "proxlab-student");

    let bad = password_ssh(&sshd, &askpass_script("wrong"), "id -un");
    assert!(!bad.status.success());

    // The client key works for the same user too.
    let out = ssh(&sshd, &[], "echo hi");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hi",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}
