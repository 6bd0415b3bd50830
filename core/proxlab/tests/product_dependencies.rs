//! The test harness stays out of the product: `testkit` (fake PVE clusters, loopback sshd) reaches the
//! `proxlab` binary only through the `demo` feature, so a server built with
//! `cargo build -p proxlab --no-default-features` links none of it.
//!
//! Asks the real `cargo tree` of this workspace for the normal (non-dev, non-build) dependencies;
//! that reads the manifests and `Cargo.lock` only and compiles nothing, so it takes about a second.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

/// Every package `proxlab` links with `features` (one `name vX.Y.Z` per line, duplicates kept).
fn linked_packages(features: &[&str]) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .args([
            "tree",
            "-p",
            "proxlab",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .args(features)
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn links_testkit(packages: &[String]) -> bool {
    packages.iter().any(|p| p.starts_with("testkit "))
}

#[test]
fn server_built_without_default_features_links_no_testkit() {
    let packages = linked_packages(&["--no-default-features"]);
    assert!(
        packages.iter().any(|p| p.starts_with("web ")),
        "the tree lists the server's crates: {packages:?}"
    );
    assert!(
        !links_testkit(&packages),
        "testkit must only come with the `demo` feature: {packages:?}"
    );
}

#[test]
fn default_build_links_testkit_for_the_demo_command_only_through_its_feature() {
    assert!(
        links_testkit(&linked_packages(&[])),
        "the default build has `proxlab demo`, which needs testkit"
    );
    assert!(links_testkit(&linked_packages(&[
        "--no-default-features",
        "--features",
        "demo"
    ])));
}
