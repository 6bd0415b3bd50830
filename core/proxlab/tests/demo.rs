//! `proxlab demo`, the README's first command, as a newcomer runs it: a fake cluster starts, the portal
//! serves, the demo class is deployed and an invite link printed; the demo accounts sign in.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, free_addr};

#[test]
fn the_demo_serves_a_deployed_class_and_its_accounts_sign_in() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let mut child = Command::new(bin())
        .args(["demo", "--listen", &listen, "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut seen = Vec::new();
    let invite = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(url) = line.split("invite link for students: ").nth(1) {
                    break url.trim().to_string();
                }
                seen.push(line);
            }
            Err(_) => {
                let _ = Command::new("kill").arg(pid.to_string()).status();
                panic!(
                    "no invite link within 4 minutes; stdout:\n{}\nstderr:\n{}",
                    seen.join("\n"),
                    std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default()
                );
            }
        }
    };
    let result = std::panic::catch_unwind(|| {
        assert!(invite.starts_with(&format!("http://{listen}/join/")), "{invite}");
        assert!(
            seen.iter()
                .any(|l| l.contains("sign in as student / demo-student")),
            "{seen:?}"
        );
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let http = testkit::http_client();
            let health = http.get(format!("http://{listen}/health")).send().await.unwrap();
            assert_eq!(health.status(), 200);
            let login = http
                .post(format!("http://{listen}/login"))
                .header("origin", format!("http://{listen}"))
                .json(&serde_json::json!({"username": "student", "password": "demo-student"}))
                .send()
                .await
                .unwrap();
            assert_eq!(login.status(), 200, "{}", login.text().await.unwrap());
        });
    });
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let _ = child.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
