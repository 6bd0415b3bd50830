//! `scripts/API.md` is generated from the engine's metadata; this snapshot test fails when the
//! host API changes and the file was not regenerated. Regenerate with
//! `UPDATE_API_MD=1 cargo test -p script --test api_md`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

#[test]
fn api_md_matches_the_engine() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/API.md");
    let generated = script::api_markdown(&script::Limits::default());
    if std::env::var("UPDATE_API_MD").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "scripts/API.md is out of date with the host API; run `UPDATE_API_MD=1 cargo test -p script --test api_md` and review the diff"
    );
}

#[test]
fn every_host_function_is_documented() {
    let md = script::api_markdown(&script::Limits::default());
    for ns in ["pve", "inventory", "ssh", "qcow2", "net", "log", "job"] {
        assert!(md.contains(&format!("## `{ns}::`")), "namespace {ns} missing");
    }
    // Each function heading is followed by a non-empty doc paragraph.
    let mut lines = md.lines().peekable();
    while let Some(l) = lines.next() {
        if l.starts_with("### `") {
            assert_eq!(lines.next(), Some(""));
            let doc = lines.next().unwrap_or("");
            assert!(!doc.trim().is_empty(), "{l} has no documentation");
        }
    }
    for f in [
        "pve::wait_task(cluster: String, upid: Dynamic, timeout_s: int) -> String",
        "net::tcp_open(",
        "job::progress(",
    ] {
        assert!(md.contains(f), "{f} missing");
    }
}
