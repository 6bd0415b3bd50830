//! Shared helpers of the `proxlab` end-to-end tests: the real binary, a served instance that is
//! stopped by its PID when dropped, admin accounts and tokens made through the CLI.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_proxlab")
}

pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// The server's stderr log.
    pub log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// A crash: SIGKILL through the child handle (`Child::kill`), reaped; the TERM of `Drop` is skipped
    /// (the PID is free again once reaped, so it must not be signalled any more).
    pub fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::forget(self);
    }
}

pub fn serve(cfg: &Path) -> Server {
    let log = cfg.with_extension("log");
    let mut child = Command::new(bin())
        .env("PROXLAB_TEST_MODE", "1")
        .args(["serve", "--config"])
        .arg(cfg)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert!(
        line.contains("http://"),
        "server did not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let addr = line.trim().rsplit("http://").next().unwrap().to_string();
    Server {
        child,
        base: format!("http://{addr}"),
        log,
    }
}

pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Creates the admin account and an API token for it with the CLI (the server must not run yet):
/// every API route but `/health` needs a signed-in caller.
pub fn admin_token(cfg: &Path) -> String {
    let mut child = Command::new(bin())
        .env("PROXLAB_TEST_MODE", "1")
        .args(["user", "add", "admin", "--role", "admin", "--config"])
        .arg(cfg)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"admin-password\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let out = Command::new(bin())
        .env("PROXLAB_TEST_MODE", "1")
        .args(["token", "create", "--user", "admin", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Runs `proxlab ARGS --config CFG` with `stdin`; returns its output whatever its exit status.
pub fn run_cli_output(cfg: &Path, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(bin())
        .env("PROXLAB_TEST_MODE", "1")
        .args(args)
        .arg("--config")
        .arg(cfg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// Runs `proxlab ARGS --config CFG` with `stdin`, asserts success and returns its trimmed stdout.
pub fn run_cli(cfg: &Path, args: &[&str], stdin: &str) -> String {
    let out = run_cli_output(cfg, args, stdin);
    assert!(
        out.status.success(),
        "proxlab {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs `cmd` with stdout/stderr in files; kills it (by its own handle) after `limit`.
pub fn run_with_limit(mut cmd: Command, dir: &Path, limit: Duration) -> (bool, String, String) {
    let out = dir.join("node.out");
    let err = dir.join("node.err");
    let mut child = cmd
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("cannot start node");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(&out).unwrap_or_default();
    let mut stderr = std::fs::read_to_string(&err).unwrap_or_default();
    if status.is_none() {
        stderr.push_str(&format!("\n(killed after {limit:?})"));
    }
    (status.is_some_and(|s| s.success()), stdout, stderr)
}

/// Fails with the fix when what the browser tests need is missing (never skips): `/usr/bin/chromium`,
/// `node`, `node_modules/playwright-core` and the vendored xterm.js (`assets/vendor/xterm`), all
/// installed by `dev/setup`.
pub fn check_browser_prerequisites(root: &Path) {
    let mut missing = Vec::new();
    if !Path::new("/usr/bin/chromium").exists() {
        missing.push("/usr/bin/chromium (apt-get install chromium)".to_string());
    }
    if Command::new("node")
        .arg("--version")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        missing.push("node (apt-get install nodejs npm)".to_string());
    }
    let files = [
        (
            "node_modules/playwright-core/package.json",
            "npm ci in the repository root",
        ),
        ("assets/vendor/xterm/xterm.js", "dev/build-assets"),
    ];
    for (rel, fix) in files {
        if !root.join(rel).exists() {
            missing.push(format!("{}/{rel} ({fix})", root.display()));
        }
    }
    assert!(
        missing.is_empty(),
        "the browser test cannot run; missing: {}. Run dev/setup, which installs all of them.",
        missing.join(", ")
    );
}

/// Waits (up to `secs`) until `GET /api/sync/status` with the admin `token` shows every cluster `ok`.
pub async fn wait_first_sync(base: &str, token: &str, secs: u64) {
    let http = testkit::http_client();
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v: serde_json::Value = http
            .get(format!("{base}/api/sync/status"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let clusters = v["clusters"].as_array().cloned().unwrap_or_default();
        if !clusters.is_empty() && clusters.iter().all(|c| c["status"] == "ok") {
            return;
        }
        assert!(Instant::now() < deadline, "no first sync: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One JSON API request with the bearer `token`: `(status, body)`, the body parsed as JSON or kept as a
/// string when it is not JSON.
pub async fn api_call(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = http.request(method, format!("{base}{path}")).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}
