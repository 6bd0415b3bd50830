//! End-to-end tests of the core platform: the real `proxlab` binary against fake PVE clusters.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use testkit::{ClusterSpec, FakeCluster};

fn write_config(dir: &Path, listen: &str, clusters: &[(&str, &FakeCluster)], extra: &str) -> PathBuf {
    let mut text = format!(
        "listen = \"{listen}\"\ndata_dir = \"{}\"\n{extra}\n",
        dir.join("data").display()
    );
    for (id, c) in clusters {
        text.push_str(&format!(
            "[[cluster]]\nid = \"{id}\"\nurl = \"{}\"\ntoken_id = \"{}\"\ntoken_secret = \"{}\"\nca_file = \"{}\"\n",
            c.url,
            c.token_id,
            c.token_secret,
            c.ca_file.display()
        ));
    }
    let path = dir.join("proxlab.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn sync_once_reports_every_guest_of_three_clusters_and_names_the_failing_one() {
    let clusters =
        FakeCluster::start_many(vec![ClusterSpec::lab(), ClusterSpec::lab(), ClusterSpec::lab()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "127.0.0.1:0",
        &[
            ("alpha", &clusters[0]),
            ("beta", &clusters[1]),
            ("gamma", &clusters[2]),
        ],
        "",
    );
    let out = Command::new(bin())
        .args(["sync", "--once", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let guests = clusters[0].state().unwrap()["guests"].as_array().unwrap().len();
    for id in ["alpha", "beta", "gamma"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no line for {id}: {stdout}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[1].parse::<usize>().unwrap(), guests, "{line}");
        assert!(
            cols[3].parse::<usize>().unwrap() >= 15,
            "running guests with IP: {line}"
        );
        assert!(line.ends_with("ok"), "{line}");
    }

    // beta's network fails: exit non-zero, beta named, alpha and gamma complete.
    clusters[1]
        .control("POST", "/network", json!({"drop_rate": 1.0, "seed": 1}))
        .unwrap();
    let out = Command::new(bin())
        .args(["sync", "--once", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    let beta = stdout.lines().find(|l| l.starts_with("beta")).unwrap();
    assert!(beta.contains("FAILED"), "{beta}");
    for id in ["alpha", "gamma"] {
        let line = stdout.lines().find(|l| l.starts_with(id)).unwrap();
        assert!(line.ends_with("ok"), "{line}");
        assert_eq!(
            line.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap(),
            guests
        );
    }
}

async fn wait_for(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_is_visible_in_api_and_events_within_two_seconds_and_staleness_shows_in_health() {
    let fake = tokio::task::spawn_blocking(|| FakeCluster::start(ClusterSpec::lab()))
        .await
        .unwrap()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A long tick interval: the start must show without waiting for a full sync.
    let cfg = write_config(
        dir.path(),
        &free_addr(),
        &[("lab", &fake)],
        "[sync]\ninterval_secs = 60\nquorum_interval_secs = 60\n",
    );
    let token = admin_token(&cfg);
    let server = serve(&cfg);
    let http = testkit::http_client();
    let base = server.base.clone();
    wait_for("first sync", Duration::from_secs(10), async || {
        let v: Value = http
            .get(format!("{base}/health"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["clusters"][0]["status"] == "ok"
    })
    .await;

    // Subscribe to events, then start VM 1110 through the portal's API.
    let mut sse = http
        .get(format!("{base}/api/events"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    assert!(sse.headers().get("content-encoding").is_none());
    let resp: Value = http
        .post(format!("{base}/api/vm/1110/start"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let task_ended = Instant::now();
    assert_eq!(resp["ok"], true, "{resp}");
    assert_eq!(resp["exitstatus"], "OK");
    // Visible in /api/vms at once.
    let vms: Value = http
        .get(format!("{base}/api/vms"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let g = vms
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["vmid"] == 1110)
        .unwrap();
    assert_eq!(g["status"], "running");
    // And on the event stream, within 2 s of the task ending.
    let mut buf = String::new();
    let seen = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(chunk) = sse.chunk().await.unwrap() {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            if buf.contains("\"vmid\":1110") && buf.contains("\"status\":\"running\"") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(seen, Ok(true), "events: {buf}");
    assert!(task_ended.elapsed() < Duration::from_secs(2));

    // Ten concurrent starts of a stopped VM make one start task.
    let before = fake.request_count().unwrap();
    let futs = (0..10).map(|_| {
        http.post(format!("{base}/api/vm/1203/start"))
            .bearer_auth(&token)
            .send()
    });
    for r in futures::future::join_all(futs).await {
        assert!(r.unwrap().status().is_success());
    }
    let starts = fake
        .requests_since(before)
        .unwrap()
        .iter()
        .filter(|r| {
            r["method"] == "POST"
                && r["path"]
                    .as_str()
                    .unwrap_or_default()
                    .ends_with("/qemu/1203/status/start")
        })
        .count();
    assert_eq!(starts, 1);

    // A task error shows PVE's own message.
    let r = http
        .post(format!("{base}/api/vm/1112/stop"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("locked"),
        "{body}"
    );

    // Quorum lost: /health names the cluster and why; recovery clears by itself.
    fake.control("POST", "/quorum", json!({"quorate": false}))
        .unwrap();
    http.post(format!("{base}/api/sync/trigger"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    wait_for("stale", Duration::from_secs(10), async || {
        let v: Value = http
            .get(format!("{base}/health"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["status"] == "degraded"
            && v["clusters"][0]["id"] == "lab"
            && v["clusters"][0]["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("quorum")
    })
    .await;
    let vms: Value = http
        .get(format!("{base}/api/vms"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(vms.as_array().unwrap().len() > 40, "inventory kept while stale");
    fake.control("POST", "/quorum", json!({"quorate": true})).unwrap();
    http.post(format!("{base}/api/sync/trigger"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    wait_for("recovery", Duration::from_secs(10), async || {
        let v: Value = http
            .get(format!("{base}/health"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["status"] == "ok"
    })
    .await;

    // Metrics and summary.
    let m = http
        .get(format!("{base}/metrics"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("proxlab_guests{cluster=\"lab\"}"), "{m}");
    let s: Value = http
        .get(format!("{base}/api/sync/inventory/summary"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s["clusters"][0]["cluster"], "lab");
    assert!(s["total"]["guests"].as_u64().unwrap() > 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_serves_the_stored_inventory_at_once() {
    let fake = tokio::task::spawn_blocking(|| FakeCluster::start(ClusterSpec::lab()))
        .await
        .unwrap()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "127.0.0.1:0", &[("lab", &fake)], "");
    // Keep the CA file: the fake's own copy goes away with it.
    let ca = dir.path().join("ca.crt");
    std::fs::copy(&fake.ca_file, &ca).unwrap();
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&fake.ca_file.display().to_string(), &ca.display().to_string());
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(bin())
        .args(["sync", "--once", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success());
    // The cluster goes away entirely; a fresh server still serves the stored inventory, marked stale.
    let url = fake.url.clone();
    drop(fake);
    assert!(std::fs::read_to_string(&cfg).unwrap().contains(&url));
    let token = admin_token(&cfg);
    let started = Instant::now();
    let server = serve(&cfg);
    let body = testkit::http_client()
        .get(format!("{}/api/vms", server.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let vms: Value = serde_json::from_str(&body).unwrap();
    assert!(vms.as_array().unwrap().len() > 40);
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn serve_refuses_a_non_loopback_listen_address() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxlab.toml");
    std::fs::write(&path, "listen = \"0.0.0.0:8080\"\n").unwrap();
    let out = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}

#[test]
fn unknown_config_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxlab.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:8080\"\nlisten_addr = 1\n").unwrap();
    let out = Command::new(bin())
        .args(["sync", "--once", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen_addr"));
}

/// Every output of `check`, `sync --once`, the account CLI and `serve` (its log at debug level) is free
/// of the cluster's API secret and password — with the right secret, a wrong one, a whole token header
/// pasted into `token_id`, and a wrong ticket password.
#[test]
fn no_secret_appears_in_the_output_of_check_serve_or_the_cli() {
    let fake = FakeCluster::start(ClusterSpec::lab()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = fake.token_secret.clone();
    let run = |cfg: &Path, args: &[&str]| {
        let out = Command::new(bin())
            .env("PROXLAB_TEST_MODE", "1")
            .env("PROXLAB_LOG", "debug")
            .args(args)
            .arg("--config")
            .arg(cfg)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let assert_clean = |what: &str, text: &str, hidden: &[&str]| {
        for h in hidden {
            assert!(!text.contains(h), "{what} printed a secret:\n{text}");
        }
    };
    // The right secret.
    let cfg = write_config(dir.path(), "127.0.0.1:0", &[("lab", &fake)], "");
    let out = run(&cfg, &["check"]);
    assert!(out.contains("connected"), "{out}");
    assert!(
        out.contains("guest_networks is empty"),
        "check warns about empty guest networks: {out}"
    );
    assert_clean("check", &out, &[&secret]);
    assert_clean("sync --once", &run(&cfg, &["sync", "--once"]), &[&secret]);
    assert_clean("user list", &run(&cfg, &["user", "list"]), &[&secret]);
    let server = serve(&cfg);
    std::thread::sleep(Duration::from_secs(2));
    let log = std::fs::read_to_string(&server.log).unwrap();
    drop(server);
    assert!(!log.is_empty());
    assert_clean("serve", &log, &[&secret]);

    // A wrong secret: check fails and says so, without either secret.
    let wrong = "11111111-2222-4333-8444-555555555555";
    let text = std::fs::read_to_string(&cfg).unwrap().replace(&secret, wrong);
    std::fs::write(&cfg, &text).unwrap();
    let out = run(&cfg, &["check"]);
    assert!(out.contains("cannot connect"), "{out}");
    assert_clean("check with a wrong secret", &out, &[&secret, wrong]);

    // The whole header pasted into token_id: refused locally, the secret not repeated.
    let pasted = text.replace(
        &format!("token_id = \"{}\"", fake.token_id),
        &format!("token_id = \"PVEAPIToken={}={secret}\"", fake.token_id),
    );
    std::fs::write(&cfg, &pasted).unwrap();
    let out = run(&cfg, &["check"]);
    assert!(out.contains("token_id") && out.contains("not shown"), "{out}");
    assert_clean("check with a pasted header", &out, &[&secret]);

    // Ticket login with a wrong password.
    let password = "wrong-Pa55word-for-root";
    let ticket = text
        .replace(
            &format!("token_id = \"{}\"", fake.token_id),
            "user = \"root@pam\"",
        )
        .replace(
            &format!("token_secret = \"{wrong}\""),
            &format!("password = \"{password}\""),
        );
    std::fs::write(&cfg, &ticket).unwrap();
    let out = run(&cfg, &["check"]);
    assert!(out.contains("cannot connect"), "{out}");
    assert_clean("check with a wrong password", &out, &[password]);
}
