#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Load test (issue 7 item 4): N students (`LOAD_STUDENTS`, default 100; `proxlab-bench start` runs 500)
//! sign in with their passwords (real argon2) and press Start — twice, a double click — at the same
//! moment, against the real `proxlab serve` and a fake PVE cluster whose start tasks take 0.5 s.
//!
//! It proves: every student gets an answer (no timeout, no 5xx without a JSON message; a 503 "busy"
//! sign-in is retried after its `Retry-After`, as a browser user would); every start succeeds and its
//! answer shows the VM running; PVE received exactly one start per VM (the fake's own request log);
//! Proxlab's power operations in flight towards PVE (read from the order of the fake's log: a start is
//! open from its `POST .../status/start` until Proxlab's refresh `GET .../status/current`) overlap but
//! never exceed the bound (`web::WebConfig::power_concurrency`, 16); every VM runs afterwards per the fake's state; `/health` answers 200 throughout.
//! Prints sign-in and start p50/p99, wall time and the server's peak RSS.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use testkit::{ClusterSpec, FakeCluster};

const PASSWORD: &str = "load-test-pw-1";

/// Proxlab's default bound of power operations in flight towards one cluster.
const POWER_CONCURRENCY: usize = 16;

fn write_config(dir: &Path, fake: &FakeCluster) -> PathBuf {
    let text = format!(
        "listen = \"{}\"\ndata_dir = \"{}\"\n[sync]\ninterval_secs = 5\n\n[[cluster]]\nid = \"lab\"\nurl = \"{}\"\n\
         token_id = \"{}\"\ntoken_secret = \"{}\"\nca_file = \"{}\"\n",
        free_addr(),
        dir.join("data").display(),
        fake.url,
        fake.token_id,
        fake.token_secret,
        fake.ca_file.display()
    );
    let path = dir.join("proxlab.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// What one student saw.
#[derive(Debug)]
struct Outcome {
    vmid: u32,
    /// From the common start signal to a session (including retries).
    login: Duration,
    /// Sign-in attempts answered 503/429 before the one that succeeded.
    login_retries: u32,
    /// From pressing Start to the later of the two answers.
    start: Duration,
    /// Status and body of both start answers.
    answers: Vec<(u16, Value)>,
}

/// A plain answer: 2xx, or a JSON `{"error": {"message": ...}}` with a non-empty message.
fn answer_is_plain(status: u16, body: &Value) -> bool {
    (200..300).contains(&status)
        || body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.trim().is_empty())
}

/// Signs in with the password (JSON form of `POST /login`), retrying a 503/429 after its `Retry-After`
/// as a user would; returns (session cookie, CSRF token, retries).
async fn sign_in(http: &reqwest::Client, base: &str, name: &str) -> Result<(String, String, u32), String> {
    let mut retries = 0;
    loop {
        let r = http
            .post(format!("{base}/login"))
            .header("content-type", "application/json")
            .body(json!({"username": name, "password": PASSWORD}).to_string())
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(|e| format!("{name}: sign-in got no answer: {e}"))?;
        let status = r.status().as_u16();
        let retry_after = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let cookie = r
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().to_string());
        let body: Value = serde_json::from_slice(&r.bytes().await.map_err(|e| format!("{name}: {e}"))?)
            .unwrap_or(Value::Null);
        if !answer_is_plain(status, &body) {
            return Err(format!(
                "{name}: sign-in answered {status} without a message: {body}"
            ));
        }
        match (status, retry_after) {
            (200, _) => {
                let csrf = body["csrf_token"].as_str().unwrap_or_default().to_string();
                return Ok((cookie.ok_or(format!("{name}: no session cookie"))?, csrf, retries));
            }
            (503 | 429, Some(secs)) if retries < 30 => {
                retries += 1;
                tokio::time::sleep(Duration::from_secs(secs)).await;
            }
            _ => return Err(format!("{name}: sign-in answered {status}: {body}")),
        }
    }
}

async fn student(
    http: reqwest::Client,
    base: String,
    name: String,
    vmid: u32,
    go: Arc<tokio::sync::Barrier>,
    press_now: Arc<tokio::sync::Barrier>,
) -> Result<Outcome, String> {
    go.wait().await;
    let t0 = Instant::now();
    let session = sign_in(&http, &base, &name).await;
    let login = t0.elapsed();
    // Everyone presses Start at the same moment, also those whose sign-in failed (they report it then).
    press_now.wait().await;
    let (cookie, csrf, retries) = session?;
    let t1 = Instant::now();
    let press = || {
        let http = http.clone();
        let (url, cookie, csrf) = (
            format!("{base}/api/vm/{vmid}/start"),
            cookie.clone(),
            csrf.clone(),
        );
        async move {
            let r = http
                .post(url)
                .header("cookie", cookie)
                .header("x-csrf-token", csrf)
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .map_err(|e| format!("start of {vmid} got no answer: {e}"))?;
            let status = r.status().as_u16();
            let bytes = r.bytes().await.map_err(|e| format!("{vmid}: {e}"))?;
            Ok::<_, String>((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
        }
    };
    let (a, b) = tokio::join!(press(), press());
    Ok(Outcome {
        vmid,
        login,
        login_retries: retries,
        start: t1.elapsed(),
        answers: vec![a?, b?],
    })
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// Peak resident memory (`VmHWM`) of process `pid`, MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// The most power operations Proxlab had open towards PVE at once, from the order of the fake's request
/// log: a VM's operation opens at its `POST .../qemu/{vmid}/status/start` and closes at Proxlab's next
/// `GET .../qemu/{vmid}/status/current` (the refresh after the task ended).
fn max_in_flight(log: &[Value]) -> usize {
    let vmid_of = |path: &str, suffix: &str| -> Option<u32> {
        let rest = path.strip_suffix(suffix)?;
        rest.rsplit('/').next()?.parse().ok()
    };
    let (mut open, mut max) = (BTreeSet::new(), 0);
    for r in log {
        let path = r["path"].as_str().unwrap_or_default();
        if r["method"] == "POST"
            && let Some(vmid) = vmid_of(path, "/status/start")
        {
            open.insert(vmid);
            max = max.max(open.len());
        } else if r["method"] == "GET"
            && let Some(vmid) = vmid_of(path, "/status/current")
        {
            open.remove(&vmid);
        }
    }
    max
}

/// The whole storm: N students sign in at once, then press Start at once; see the module doc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn students_sign_in_and_press_start_at_the_same_moment() {
    let n: usize = std::env::var("LOAD_STUDENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    // Generated guests: odd indexes are stopped VMs 1001, 1003, ...
    let fake = tokio::task::spawn_blocking(move || FakeCluster::start(ClusterSpec::generated(2 * n + 2)))
        .await
        .unwrap()
        .unwrap();
    let vmids: Vec<u32> = (0..n).map(|i| 1001 + 2 * i as u32).collect();
    // A start takes 2 PVE seconds at 0.25 real s each: tasks overlap as on a real cluster.
    fake.control("POST", "/time-scale", json!({"value": 0.25}))
        .unwrap();
    for vmid in &vmids {
        fake.control("POST", "/guest", json!({"vmid": vmid, "start_secs": 2}))
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &fake);
    let token = admin_token(&cfg);
    let server = serve(&cfg);
    let base = server.base.clone();
    let http = testkit::http_client();

    // The first sync, then N students and their assignments through the admin API.
    wait_first_sync(&base, &token, 30).await;
    let setup = Instant::now();
    for (i, vmid) in vmids.iter().enumerate() {
        let name = format!("student{i:04}");
        let r = http
            .post(format!("{base}/api/users"))
            .bearer_auth(&token)
            .json(&json!({"name": name, "role": "student", "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        let r = http
            .post(format!("{base}/api/user-vm-assignments"))
            .bearer_auth(&token)
            .json(&json!({"user": name, "vmid": vmid, "cluster": "lab"}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    let setup = setup.elapsed();

    // /health is polled every 100 ms during the storm.
    let stop = Arc::new(AtomicBool::new(false));
    let health = tokio::spawn({
        let (http, base, stop) = (http.clone(), base.clone(), stop.clone());
        async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let status = http
                    .get(format!("{base}/health"))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                seen.push((status, t.elapsed()));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            seen
        }
    });

    fake.control("DELETE", "/requests", Value::Null).unwrap();
    let go = Arc::new(tokio::sync::Barrier::new(n + 1));
    let press_now = Arc::new(tokio::sync::Barrier::new(n + 1));
    let tasks: Vec<_> = vmids
        .iter()
        .enumerate()
        .map(|(i, vmid)| {
            tokio::spawn(student(
                http.clone(),
                base.clone(),
                format!("student{i:04}"),
                *vmid,
                go.clone(),
                press_now.clone(),
            ))
        })
        .collect();
    go.wait().await;
    let t0 = Instant::now();
    press_now.wait().await;
    let sign_in_wall = t0.elapsed();
    let t_press = Instant::now();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    let (wall, press_wall) = (t0.elapsed(), t_press.elapsed());
    stop.store(true, Ordering::Relaxed);
    let health = health.await.unwrap();
    let peak = peak_rss_mib(server.child.id());

    // Every student got an answer, and every start succeeded with the VM running.
    let errors: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(
        errors.is_empty(),
        "{} students without an answer: {errors:?}",
        errors.len()
    );
    let outcomes: Vec<Outcome> = outcomes.into_iter().map(Result::unwrap).collect();
    for o in &outcomes {
        for (status, body) in &o.answers {
            assert!(answer_is_plain(*status, body), "{}: {status} {body}", o.vmid);
            assert_eq!(*status, 200, "start of {}: {body}", o.vmid);
            assert_eq!(body["ok"], true, "{body}");
            assert_eq!(body["guest"]["status"], "running", "{body}");
        }
    }

    // PVE's view: exactly one start per VM, bounded overlap, all running.
    let log = fake.requests_since(0).unwrap();
    let mut starts: BTreeMap<u32, usize> = BTreeMap::new();
    for r in &log {
        let path = r["path"].as_str().unwrap_or_default();
        if r["method"] == "POST"
            && let Some(rest) = path.strip_suffix("/status/start")
        {
            *starts
                .entry(rest.rsplit('/').next().unwrap().parse().unwrap())
                .or_default() += 1;
        }
    }
    for vmid in &vmids {
        assert_eq!(starts.get(vmid), Some(&1), "start tasks of VM {vmid}");
    }
    assert_eq!(starts.len(), n, "starts of VMs nobody pressed: {starts:?}");
    let in_flight = max_in_flight(&log);
    // web::WebConfig::power_concurrency (default 16) bounds the operations per cluster; they do overlap.
    assert!(
        (2..=POWER_CONCURRENCY).contains(&in_flight),
        "power operations in flight at once: {in_flight}"
    );
    let state = fake.state().unwrap();
    let running: BTreeSet<u64> = state["guests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["status"] == "running")
        .filter_map(|g| g["vmid"].as_u64())
        .collect();
    for vmid in &vmids {
        assert!(
            running.contains(&u64::from(*vmid)),
            "VM {vmid} not running at PVE"
        );
    }
    assert!(!health.is_empty());
    let bad: Vec<_> = health.iter().filter(|(s, _)| *s != 200).collect();
    assert!(bad.is_empty(), "/health during the storm: {bad:?}");

    let mut logins: Vec<Duration> = outcomes.iter().map(|o| o.login).collect();
    let mut presses: Vec<Duration> = outcomes.iter().map(|o| o.start).collect();
    logins.sort();
    presses.sort();
    let retries: u32 = outcomes.iter().map(|o| o.login_retries).sum();
    let health_max = health.iter().map(|(_, d)| *d).max().unwrap_or_default();
    println!(
        "load: {n} students; setup (users + assignments via API) {:.1} s; wall {:.2} s = all signed in after \
         {:.2} s + all starts answered {:.2} s after the common press",
        setup.as_secs_f64(),
        wall.as_secs_f64(),
        sign_in_wall.as_secs_f64(),
        press_wall.as_secs_f64()
    );
    println!(
        "sign-in p50 {:.0} ms p99 {:.0} ms ({retries} busy answers retried); start answer p50 {:.0} ms p99 {:.0} ms",
        pct(&logins, 0.5),
        pct(&logins, 0.99),
        pct(&presses, 0.5),
        pct(&presses, 0.99)
    );
    println!(
        "PVE: {} requests, {} start tasks for {n} VMs (2 clicks each), max {in_flight} power operations in \
         flight (bound {POWER_CONCURRENCY}); /health {} polls all 200, slowest {:.0} ms; server peak RSS {peak:.1} MiB",
        log.len(),
        starts.values().sum::<usize>(),
        health.len(),
        health_max.as_secs_f64() * 1000.0
    );
    drop(server);
}
