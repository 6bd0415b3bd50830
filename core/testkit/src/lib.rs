//! testkit: the test-only harness of Proxlab.
//!
//! It owns starting and stopping the real parts that tests run against:
//! - fake Proxmox VE clusters ([`FakeCluster`]): `pve-sim/sim.py` (next to this crate) run by the PyPI
//!   package `fakepve[crypto]==0.5.0` in a virtualenv that [`ensure_venv`] creates on first use; the PVE API
//!   over HTTPS (verified with a per-run CA file) plus a plain-HTTP JSON control API for faults;
//! - loopback OpenSSH servers ([`NodeSshd`]) that play a PVE node's shell, or a guest VM with password login;
//! - unique loopback addresses, free ports and temp dirs so test binaries run in parallel without colliding.
//!
//! What it must never do:
//! - be a dependency of the `proxlab` binary or of any non-dev dependency (fakepve is AGPL-3.0: it stays a
//!   test-time tool in a venv; `pve-sim/sim.py` carries the AGPL header, this crate only launches it);
//! - listen on or contact any address outside 127.0.0.0/8;
//! - end a process it did not start: every kill is by the PID of a child it spawned, after checking that
//!   `/proc/PID/cmdline` is still that child's command line.
//!
//! The API is synchronous (blocking) so it works from any test, async or not, and from a `static OnceLock`.
//! Functions return `anyhow::Result`; the error inside is a [`TestkitError`] naming what failed (with the
//! tail of the sim's or sshd's log), so callers may `downcast_ref` it.

mod cluster;
mod control;
mod proc;
mod sshd;
mod venv;

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

pub use cluster::{ClusterSpec, FakeCluster, LAB_TOKEN_ID};
pub use sshd::NodeSshd;
pub use venv::{FAKEPVE_REQUIREMENT, ensure_venv};

/// A plain HTTP client for talking to a Proxlab server under test (loopback, no TLS roots; the workspace
/// builds reqwest without a default crypto provider, so this installs ring's). No request timeout:
/// streaming responses (SSE) stay open; callers bound their waits.
pub fn http_client() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| {
        b.with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    });
    let mut builder = reqwest::Client::builder();
    if let Ok(tls) = tls {
        builder = builder.use_preconfigured_tls(tls);
    }
    builder
        .build()
        .unwrap_or_else(|e| panic!("cannot build the test HTTP client: {e}"))
}

/// The one error type of this crate. Public functions return `anyhow::Result` carrying one of these.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// A program the harness needs is not installed; `hint` is the command that installs it.
    #[error("{tool} is missing: {hint}")]
    MissingTool {
        /// The missing program, e.g. `/usr/sbin/sshd`.
        tool: String,
        /// How to install it, e.g. `apt-get install openssh-server`.
        hint: String,
    },
    /// A helper command (python, pip, ssh-keygen, useradd, ...) failed.
    #[error("{what} failed: {detail}")]
    Command {
        /// What was being done, e.g. `pip install fakepve[crypto]==0.5.0 into /x/.venv/pve-sim`.
        what: String,
        /// Exit status and the tail of its output.
        detail: String,
    },
    /// A server did not say it was ready before the deadline.
    #[error("{what} did not become ready within {secs} s; log tail:\n{log_tail}")]
    NotReady {
        /// Which server, with its address.
        what: String,
        /// The timeout in seconds.
        secs: u64,
        /// The last lines of its log.
        log_tail: String,
    },
    /// A server exited while starting.
    #[error("{what} exited before it was ready ({status}); log tail:\n{log_tail}")]
    Exited {
        /// Which server, with its address.
        what: String,
        /// Its exit status.
        status: String,
        /// The last lines of its log.
        log_tail: String,
    },
    /// The sim's control API answered with a non-2xx status.
    #[error("control API {method} {path} answered HTTP {status}: {body}")]
    Control {
        /// HTTP method.
        method: String,
        /// Request path, e.g. `/quorum`.
        path: String,
        /// HTTP status code.
        status: u16,
        /// Response body (text).
        body: String,
    },
    /// An argument the harness cannot use (not a loopback address, bad user name, ...).
    #[error("invalid input: {0}")]
    Invalid(String),
}

/// The cargo workspace root (the folder with the top `Cargo.toml` and `core/testkit/pve-sim`): the
/// checkout the running executable sits in (`target/<profile>/...`), else this crate's manifest dir
/// `/../..` as compiled, else the first such folder above the current directory. (A compiled-in path
/// alone goes stale when a checkout moves or shares another checkout's target dir.)
pub fn workspace_root() -> PathBuf {
    let is_root = |p: &Path| p.join("core/testkit/pve-sim/sim.py").is_file();
    let above = |start: Option<PathBuf>| {
        start.and_then(|s| s.ancestors().find(|p| is_root(p)).map(Path::to_path_buf))
    };
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let compiled = manifest
        .parent()
        .and_then(|core| core.parent())
        .map(PathBuf::from)
        .unwrap_or(manifest);
    above(std::env::current_exe().ok())
        .or_else(|| is_root(&compiled).then(|| compiled.clone()))
        .or_else(|| above(std::env::current_dir().ok()))
        .unwrap_or(compiled)
}

/// The folder holding `sim.py` and `lab-cluster.json`: `core/testkit/pve-sim`, or env `PROXLAB_PVE_SIM_DIR`.
pub fn sim_dir() -> PathBuf {
    match std::env::var_os("PROXLAB_PVE_SIM_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => workspace_root().join("core/testkit/pve-sim"),
    }
}

static LOOPBACK_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A loopback address unique to this process and call: `127.<a>.<b>.<c>`, where `a.b` come from the PID
/// (a in 1..=251, never 0 and never 60, so 127.0.0.x and pve-sim's guest range 127.60.x.x stay free) and `c`
/// (1..=254) from a per-process counter. Linux routes all of 127.0.0.0/8 to `lo`, so no setup is needed.
/// Addresses repeat within one process only after 254 calls.
pub fn unique_loopback() -> String {
    loopback_for(
        std::process::id(),
        LOOPBACK_COUNTER.fetch_add(1, Ordering::Relaxed),
    )
}

fn loopback_for(pid: u32, count: u32) -> String {
    let slot = pid % (251 * 256);
    let mut a = 1 + slot / 256;
    if a >= 60 {
        a += 1;
    }
    let b = slot % 256;
    let c = 1 + count % 254;
    format!("127.{a}.{b}.{c}")
}

/// True if `host` is an IPv4 address in 127.0.0.0/8.
pub(crate) fn is_loopback(host: &str) -> bool {
    host.parse::<Ipv4Addr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

/// A TCP port that is free on `host` right now (the kernel picks it: bind `host:0`, read, close).
///
/// Panics with a message if `host` cannot be bound (not a local address): a harness setup error.
pub fn free_port(host: &str) -> u16 {
    match TcpListener::bind((host, 0)).and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(e) => panic!("testkit: cannot bind {host}:0 to find a free port: {e}"),
    }
}

/// True if `host:port` can be bound now.
pub(crate) fn port_is_free(host: &str, port: u16) -> bool {
    TcpListener::bind((host, port)).is_ok()
}

/// A fresh temp dir `<tmp>/<prefix>XXXXXX`, removed when the returned value is dropped.
///
/// Panics with a message if the system temp dir is not writable.
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    match tempfile::Builder::new().prefix(prefix).tempdir() {
        Ok(dir) => dir,
        Err(e) => panic!("testkit: cannot create a temp dir with prefix {prefix:?}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_avoid_127_0_and_127_60() {
        for pid in [
            0,
            1,
            255,
            256,
            59 * 256,
            60 * 256 - 1,
            60 * 256,
            61 * 256,
            4_194_303,
            u32::MAX,
        ] {
            for count in [0, 1, 253, 254, 1000] {
                let host = loopback_for(pid, count);
                let octets: Vec<u32> = host.split('.').map(|o| o.parse().unwrap()).collect();
                assert_eq!(octets.len(), 4, "{host}");
                assert_eq!(octets[0], 127);
                assert!(octets[1] != 0 && octets[1] != 60 && octets[1] <= 255, "{host}");
                assert!(octets[2] <= 255 && (1..=254).contains(&octets[3]), "{host}");
                assert!(is_loopback(&host));
            }
        }
    }

    #[test]
    fn unique_loopback_differs_per_call() {
        let a = unique_loopback();
        let b = unique_loopback();
        assert_ne!(a, b);
        assert!(is_loopback(&a) && is_loopback(&b));
    }

    #[test]
    fn free_port_can_be_bound() {
        let host = unique_loopback();
        let port = free_port(&host);
        assert!(port > 0);
        assert!(port_is_free(&host, port));
    }

    #[test]
    fn workspace_root_has_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"));
        assert!(sim_dir().join("sim.py").is_file());
    }
}
