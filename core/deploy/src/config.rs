//! Settings of the deployer: per-cluster VMID ranges and storage paths, and the job runner's limits.

use std::collections::BTreeMap;
use std::time::Duration;

/// Everything the [`crate::Deployer`] is configured with.
#[derive(Clone, Debug, Default)]
pub struct DeployConfig {
    /// Per cluster id (`[[cluster]] id`).
    pub clusters: BTreeMap<String, ClusterDeploy>,
    /// Concurrency, retries and timeouts of jobs.
    pub limits: DeployLimits,
    /// Sandbox limits for workflow scripts. The deployer runs them on a runtime of its own whose
    /// `max_concurrent` is raised to [`DeployLimits::total`], so a class deploys in parallel without
    /// starving the server's other scripts (IP tiers, RDP).
    pub script_limits: script::Limits,
}

/// Deployment settings of one cluster.
#[derive(Clone, Debug, Default)]
pub struct ClusterDeploy {
    /// VMIDs Proxlab may use for the VMs it creates, inclusive (`[[cluster]] vmid_range`). Without a
    /// range Proxlab creates no VM in the cluster.
    pub vmid_range: Option<(u32, u32)>,
    /// Storage ID for class disks when a class names none (default: the template disk's storage).
    pub default_storage: Option<String>,
    /// Mount path of file storages on the nodes, by storage ID (`/mnt/pve/labnfs`); from
    /// `[[cluster.node]] storage_roots`. Storages not listed are asked from PVE (`GET /storage/{id}`).
    pub storage_paths: BTreeMap<String, String>,
}

/// Concurrency, retry and timeout limits of the job runner (parallel clones of one template hit PVE lock
/// timeouts).
#[derive(Clone, Debug)]
pub struct DeployLimits {
    /// VM creations at once on one node (default 6).
    pub per_node: usize,
    /// VM creations at once on one storage (default 6; 2–3 avoids storage lock timeouts for full clones,
    /// overlays are cheap and do not hold the storage lock for long).
    pub per_storage: usize,
    /// VM creations at once in all (default 12): also the deployer's script concurrency.
    pub total: usize,
    /// Attempts per VM before it is reported failed (retryable failures only; default 5).
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt with ±50 % jitter (default 500 ms).
    pub backoff_base: Duration,
    /// Longest retry delay (default 10 s).
    pub backoff_max: Duration,
    /// How long one PVE task may run (create, snapshot, destroy; default 600 s).
    pub task_timeout: Duration,
    /// Largest pool size of a class (default 500).
    pub max_pool: u32,
    /// Lifetime of an invite link when none is given (default 7 days).
    pub invite_ttl: Duration,
    /// Self-registrations one invite link allows per minute (default 10).
    pub registrations_per_minute: u32,
    /// Classes one teacher may own, unless an admin set another limit for them (default 10).
    pub classes_per_teacher: u32,
    /// VMs (VMIDs held: the teacher VM, class base and student VMs of every class they own) one teacher
    /// may have, unless an admin set another limit for them (default 1000).
    pub vms_per_teacher: u32,
}

impl Default for DeployLimits {
    fn default() -> Self {
        DeployLimits {
            per_node: 6,
            per_storage: 6,
            total: 12,
            max_attempts: 5,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
            task_timeout: Duration::from_secs(600),
            max_pool: 500,
            invite_ttl: Duration::from_secs(7 * 24 * 3600),
            registrations_per_minute: 10,
            classes_per_teacher: 10,
            vms_per_teacher: 1000,
        }
    }
}
