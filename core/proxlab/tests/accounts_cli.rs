//! `proxlab user …` and `proxlab token …` with the real binary: passwords from stdin, never argv.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{bin, run_cli_output};

fn config(dir: &Path, listen: &str) -> PathBuf {
    let path = dir.join("proxlab.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"{listen}\"\ndata_dir = \"{}\"\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    path
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn users_and_tokens_are_managed_from_the_cli_and_serve_needs_an_admin_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "0.0.0.0:0");
    // Without an admin, a non-loopback listen address is refused with the fix in the message.
    let out = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        msg.contains("no admin account") && msg.contains("proxlab user add"),
        "{msg}"
    );

    let out = run_cli_output(
        &cfg,
        &["user", "add", "Teacher.One", "--role", "teacher"],
        "long-enough-pw\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = run_cli_output(
        &cfg,
        &["user", "add", "eve@pve", "--role", "admin"],
        "long-enough-pw\n",
    );
    assert!(
        !out.status.success() && text(&out).contains("'@'"),
        "{}",
        text(&out)
    );
    let out = run_cli_output(&cfg, &["user", "add", "short", "--role", "student"], "abc\n");
    assert!(
        !out.status.success() && text(&out).contains("at least 8"),
        "{}",
        text(&out)
    );
    let out = run_cli_output(
        &cfg,
        &[
            "user",
            "add",
            "admin",
            "--role",
            "admin",
            "--display-name",
            "Site Admin",
        ],
        "admin-password\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = run_cli_output(&cfg, &["user", "list"], "");
    let list = text(&out);
    assert!(
        list.contains("teacher.one") && list.contains("admin") && list.contains("Site Admin"),
        "{list}"
    );
    assert!(
        !list.contains("admin-password") && !list.contains("$argon2"),
        "{list}"
    );

    let out = run_cli_output(
        &cfg,
        &[
            "token",
            "create",
            "--user",
            "admin",
            "--expires",
            "30d",
            "--description",
            "ci",
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out));
    let secret = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(secret.starts_with("plx_") && secret.len() > 40, "{secret}");
    let out = run_cli_output(&cfg, &["token", "list"], "");
    let list = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        list.contains("active") && list.contains("ci") && !list.contains(&secret),
        "{list}"
    );
    let id = list
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let out = run_cli_output(&cfg, &["token", "revoke", &id], "");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&run_cli_output(&cfg, &["token", "list"], "").stdout).contains("revoked")
    );

    let out = run_cli_output(&cfg, &["user", "passwd", "teacher.one"], "another-password\n");
    assert!(out.status.success(), "{}", text(&out));
    let out = run_cli_output(&cfg, &["user", "disable", "teacher.one"], "");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&run_cli_output(&cfg, &["user", "list"], "")).contains("disabled"));
}
