//! The [`Host`] trait: the only door from a script to the outside world.
//!
//! Host functions (`pve::`, `inventory::`, `ssh::`, `qcow2::`, `net::`, `job::`) call these methods.
//! They run on the blocking thread that runs the script, so an `async` operation is driven with
//! `host.runtime().block_on(..)` there — never on a Tokio worker thread.

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// Output of a command run on a node (`ssh::exec`): both streams as UTF-8 (lossy) text and the exit
/// status (`-1` when the command was killed by a signal or the status is unknown).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutput {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Exit status of the remote command.
    pub status: i32,
}

/// A failure reported by the host, thrown into the script as `#{code, message}`.
///
/// `code` is dotted and stable (`ssh.unreachable`, `ssh.auth`, `qcow2.failed`, `pve.locked`, ...);
/// scripts may branch on it with `try { .. } catch (e) { if e.code == "pve.locked" { .. } }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostError {
    /// Machine-readable code.
    pub code: String,
    /// Human-readable message (no secrets).
    pub message: String,
}

impl HostError {
    /// Creates a host error with a code and a message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        HostError {
            code: code.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// QCOW2 operations on a node's storage, implemented by the cloner (over SSH with `qemu-img`, or
/// locally when the portal runs on the node). Paths are absolute paths on that node.
pub trait Qcow2Ops: Send + Sync + 'static {
    /// `qemu-img info --output=json -f FORMAT PATH` as parsed JSON (keys as qemu-img prints them:
    /// `format`, `virtual-size` in bytes, `actual-size` in bytes, `backing-filename`, ...). `format`
    /// (`qcow2` or `raw`) is what the volume's config states; it is never probed.
    fn info(
        &self,
        cluster: &str,
        node: &str,
        path: &str,
        format: &str,
    ) -> BoxFuture<'static, Result<serde_json::Value, HostError>>;

    /// `qemu-img create -f qcow2 -b BASE -F BASE_FORMAT OVERLAY`: a new overlay whose backing file is
    /// the absolute path `base`. Fails if `overlay` exists.
    fn create_overlay(
        &self,
        cluster: &str,
        node: &str,
        base: &str,
        base_format: &str,
        overlay: &str,
    ) -> BoxFuture<'static, Result<(), HostError>>;

    /// `qemu-img convert -f SRC_FORMAT -O qcow2 SRC DST`: a standalone copy of `src` with its backing
    /// chain merged (a class base image). `src_format` (`qcow2` or `raw`) is what the volume's config
    /// states; the chain is checked first (every backing file inside the storage). Fails if `dst`
    /// exists.
    fn flatten(
        &self,
        cluster: &str,
        node: &str,
        src: &str,
        src_format: &str,
        dst: &str,
    ) -> BoxFuture<'static, Result<(), HostError>>;
}

/// Where a running job reports what a script does (`job::progress`, `job::step`).
/// Implemented by the job runner (journal in sled + SSE); tests use a recording sink.
pub trait JobSink: Send + Sync + 'static {
    /// Overall progress: `done` of `total` units (VMs for a deployment) and a short message.
    fn progress(&self, done: u64, total: u64, message: &str);
    /// Status of one step: `key` names it (e.g. a VM name or `base-image`), `status` is one of
    /// `pending`, `running`, `ok`, `failed`, `skipped`; `detail` is free text (an error message).
    fn step(&self, key: &str, status: &str, detail: &str);
}

/// Everything a script may reach. Implemented by the server (`proxlab`) over its PVE clients,
/// inventory, SSH executor and clock; tests implement it over a fake cluster.
///
/// Every method is called from a blocking thread. Methods returning a future are driven with
/// [`Host::runtime`]'s `block_on`. Defaults answer "not available", so a host only needs to
/// implement what it offers.
pub trait Host: Send + Sync + 'static {
    /// The Tokio runtime that drives network futures (`Handle::current()` of the server).
    fn runtime(&self) -> tokio::runtime::Handle;

    /// The API client for a configured cluster id (`[[cluster]] id` in `proxlab.toml`), or `None`.
    fn pve(&self, _cluster: &str) -> Option<pve::PveClient> {
        None
    }

    /// The VM-operations service every power action goes through (`pve::power`), the same one the
    /// portal's buttons use; `None`: this host performs none.
    fn ops(&self) -> Option<ops::Ops> {
        None
    }

    /// Ids of the configured clusters.
    fn clusters(&self) -> Vec<String> {
        Vec::new()
    }

    /// One inventory record (`cluster/vmid`: node, name, type, status, cpus, maxmem (bytes),
    /// ip, ip_source, mac, tags, ...), as the inventory stores it; `None` if unknown.
    fn inventory_guest(&self, _cluster: &str, _vmid: u32) -> Option<serde_json::Value> {
        None
    }

    /// All inventory records of a cluster (same shape as [`Host::inventory_guest`]).
    fn inventory_guests(&self, _cluster: &str) -> Vec<serde_json::Value> {
        Vec::new()
    }

    /// CPU samples of a guest as `(unix seconds, cpu fraction)`, oldest first, as the inventory
    /// recorded them on each sync tick (PVE's `cpu` field of `/cluster/resources`: the used
    /// fraction of the guest's vCPUs). Samples are kept only while the guest runs — the history
    /// restarts when it starts — and for at least the longest idle window a plugin uses
    /// (`idle-shutdown`: `idle_minutes`, default 30 min).
    fn cpu_samples(&self, _cluster: &str, _vmid: u32) -> Vec<(u64, f64)> {
        Vec::new()
    }

    /// Runs `argv` on a configured node of a cluster over SSH. The implementation must quote each
    /// element for the remote shell (see [`cloner::shell_join`]); it never passes a script string
    /// to a shell unquoted.
    fn ssh_exec(
        &self,
        _cluster: &str,
        _node: &str,
        _argv: &[String],
    ) -> BoxFuture<'static, Result<ExecOutput, HostError>> {
        Box::pin(async { Err(HostError::new("ssh.unavailable", "no SSH executor configured")) })
    }

    /// QCOW2 operations, if this host has them (filled in by the cloner).
    fn qcow2(&self) -> Option<Arc<dyn Qcow2Ops>> {
        None
    }

    /// The current time in unix seconds (injectable for tests).
    fn now(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// A host with nothing behind it: every outside call answers "not available".
///
/// Only for pure engine tests (limits, syntax, sets, reload) and for `proxlab script check`,
/// which compiles but never runs a script. Tests of `pve::` functions use a real fake cluster.
pub struct NullHost {
    handle: tokio::runtime::Handle,
}

impl NullHost {
    /// A null host driving futures on `handle`.
    pub fn new(handle: tokio::runtime::Handle) -> Self {
        NullHost { handle }
    }
}

impl Host for NullHost {
    fn runtime(&self) -> tokio::runtime::Handle {
        self.handle.clone()
    }
}
