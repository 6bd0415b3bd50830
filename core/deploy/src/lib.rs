//! # deploy — classes and fast deployment
//!
//! This crate owns Proxlab's headline (DESIGN §5): a teacher creates a class and every student has a VM
//! seconds later, safely.
//!
//! - **Templates** ([`Deployer::register_template`], [`Deployer::sync_templates`]): PVE templates with
//!   cached specs (cores, sockets, memory MiB, disks with storage/format/size, bridges, ostype, EFI/TPM,
//!   agent flag) in the store's `templates` tree.
//! - **VMID reservation** ([`Deployer::reserve_vmids`]): VMIDs inside the cluster's configured
//!   `vmid_range`, taken atomically in the `vmid_reservations` tree (compare-and-swap per key) after a
//!   check against `GET /cluster/resources` and the target storage's volumes, and flushed to disk before
//!   anything is created under them. Never a bare `/cluster/nextid`.
//! - **The job runner**: the workflow script's `plan(ctx)` decides the VMs; the core runs `create_vm(ctx,
//!   vm)` in parallel with limits per node, per storage and in all; every step is journaled in the `jobs`
//!   tree before and after it runs; progress is broadcast as [`JobEvent`]s (the web layer's SSE); lock
//!   timeouts of parallel clones and other transient failures are retried with jittered backoff and reported
//!   as "queued / retrying"; a failed VM is reported and retryable without failing the class.
//! - **Classes** ([`Deployer::create_class`] …): create, list, show, update, delete (only the owner; only
//!   VMs Proxlab created; never the template), co-owners, teacher VM power, the class page's VM list.
//! - **Invites** ([`Deployer::create_invite`], [`Deployer::join`]): tokens of 256 random bits stored as
//!   SHA-256, expiry (7 days by default) or never, revocable; joining assigns the first free VM in one
//!   sled transaction over the assignments; a full class puts the user on the waiting list.
//! - **Reset on leaving** ([`Deployer::unassign`]): a VM taken from its student is re-made on the class
//!   base by a journaled `reset` job before anyone else gets it; joins and the waiting list skip it
//!   until then.
//! - **Publish** ([`Deployer::publish`]): the teacher VM's disk becomes a NEW class base version; students
//!   move on their next revert (default) or at once; old bases are deleted only when no VM uses them.
//! - **Protected bases**: a class base Proxlab made carries `protection: 1` and an owner's note in its
//!   description on PVE; Proxlab lifts the flag only when it removes the base itself.
//! - **Crash recovery** ([`Deployer::recover`]): unfinished jobs are resumed or cleaned up from the
//!   journal, so no VM, disk or VMID reservation is left that Proxlab does not know about.
//! - **Node operations** ([`NodeOps`]): the cloner's executors per node as [`script::Qcow2Ops`] and
//!   `ssh::exec`, used by the server's script host and by [`StaticHost`].
//!
//! It must never:
//! - touch a VM it did not create (the template, or anything outside its reservations) — deletion and
//!   cleanup check the VMID is reserved by Proxlab and the VM carries Proxlab's tag or planned name;
//! - create anything under a VMID whose reservation is not on disk yet;
//! - run `qemu-img rebase -u` onto a different base (publish makes a new base; VMs move by being re-made);
//! - know about HTTP (the `web` crate maps [`DeployError`] to statuses; this crate names only the cases);
//! - log or store an invite token (only its SHA-256).

#![warn(missing_docs)]

mod classes;
mod cleanup;
mod config;
mod error;
mod host;
mod invites;
mod journal;
mod limits;
mod nodes;
mod protect;
mod publish;
mod quotas;
mod recovery;
mod reset;
mod runner;
mod templates;
mod trees;
mod vmids;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use script::{Host, ScriptRuntime, ScriptSet};
use store::Store;
use tokio::sync::broadcast;

pub use classes::{
    ClassSpec, ClassUpdate, ClassVmView, MAX_CORES, MAX_POOL, MAX_SOCKETS, MEMORY_MIB_RANGE, PoolChange,
    PowerAction, check_specs, pool_after_adding, pool_change,
};
pub use cleanup::is_proxlab_vm;
pub use config::{ClusterDeploy, DeployConfig, DeployLimits};
pub use error::{DeployError, Result};
pub use host::{Clock, StaticHost};
pub use invites::{Invite, InviteToken, InviteTtl, JoinOutcome, MAX_EXPIRY, RegistrationClaim, expiry_after};
pub use journal::{JobEvent, JobEventKind};
pub use nodes::{NodeOps, NodeTarget, host_error};
pub use publish::{PublishMode, RevertOutcome};
pub use quotas::{TeacherLimits, TeacherUsage};
pub use recovery::RecoveryReport;
pub use templates::{TemplateRef, TemplateStats, linked_clone_preflight, template_from_config};
pub use trees::{ClassVm, InviteRecord, Reservation, VmDisk, VmRole};

/// Where the deployer gets the current script set (e.g. `move || reloader.current()`). A job keeps the
/// set it started with until it ends.
pub type ScriptSource = Arc<dyn Fn() -> Arc<ScriptSet> + Send + Sync>;

/// The deployment service. Cheap to clone; one per server.
#[derive(Clone)]
pub struct Deployer {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    host: Arc<dyn Host>,
    scripts: ScriptSource,
    runtime: ScriptRuntime,
    cfg: DeployConfig,
    events: broadcast::Sender<JobEvent>,
    reservations: trees::JsonTree<Reservation>,
    vms: trees::JsonTree<ClassVm>,
    invites: trees::JsonTree<InviteRecord>,
    /// Per-teacher limits an admin set (tree `teacher_limits`, key = account name).
    teacher_limits: trees::JsonTree<TeacherLimits>,
    /// Serialises "count the teacher's classes and VMs, then store the new ones" in this process.
    quota_lock: Mutex<()>,
    limiter: limits::Limiter,
    /// Jobs running in this process, by id.
    running: Mutex<HashMap<String, Arc<journal::Journal>>>,
    /// Serialises VMID scans in this process (the per-key compare-and-swap is what makes it safe).
    reserve_lock: tokio::sync::Mutex<()>,
}

impl Deployer {
    /// A deployer over `store` (its trees plus `vmid_reservations`, `class_vms`, `invites`), reaching
    /// PVE and the nodes through `host`, running workflows from `scripts`.
    ///
    /// Call [`Deployer::recover`] once at start, before serving requests.
    /// Errors: [`DeployError::Store`] when the trees cannot be opened.
    pub fn new(
        store: Store,
        host: Arc<dyn Host>,
        scripts: ScriptSource,
        cfg: DeployConfig,
    ) -> Result<Deployer> {
        if cfg.limits.invite_ttl > MAX_EXPIRY || cfg.limits.invite_ttl.is_zero() {
            return Err(DeployError::Invalid(format!(
                "limits.invite_ttl of {} s is outside 1..={} s (one year)",
                cfg.limits.invite_ttl.as_secs(),
                MAX_EXPIRY.as_secs()
            )));
        }
        let mut limits = cfg.script_limits.clone();
        limits.max_concurrent = limits.max_concurrent.max(cfg.limits.total).max(2);
        let runtime = ScriptRuntime::new(host.clone(), limits);
        let (events, _) = broadcast::channel(4096);
        Ok(Deployer {
            inner: Arc::new(Inner {
                reservations: trees::JsonTree::open(&store, "vmid_reservations")?,
                vms: trees::JsonTree::open(&store, "class_vms")?,
                invites: trees::JsonTree::open(&store, "invites")?,
                teacher_limits: trees::JsonTree::open(&store, "teacher_limits")?,
                quota_lock: Mutex::new(()),
                limiter: limits::Limiter::new(&cfg.limits),
                store,
                host,
                scripts,
                runtime,
                cfg,
                events,
                running: Mutex::new(HashMap::new()),
                reserve_lock: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Every job change from now on (state, step, progress, script messages). A slow receiver loses old
    /// events (`RecvError::Lagged`); the job record ([`Deployer::job`]) is the full truth.
    pub fn events(&self) -> broadcast::Receiver<JobEvent> {
        self.inner.events.subscribe()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The configuration.
    pub fn config(&self) -> &DeployConfig {
        &self.inner.cfg
    }

    /// A job's record (state, steps with their journal, error summary).
    pub fn job(&self, id: &str) -> Result<store::JobRecord> {
        self.inner
            .store
            .jobs
            .get(id)?
            .ok_or_else(|| DeployError::not_found(format!("job {id}")))
    }

    /// Jobs of a class, newest first.
    pub fn jobs_of_class(&self, class_id: &str) -> Result<Vec<store::JobRecord>> {
        let mut v: Vec<store::JobRecord> = self
            .inner
            .store
            .jobs
            .values()?
            .into_iter()
            .filter(|j| j.class_id.as_deref() == Some(class_id))
            .collect();
        v.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        Ok(v)
    }

    /// Waits until job `id` has ended (done, failed or cancelled), at most `timeout`; returns its record.
    /// Errors: [`DeployError::NotFound`]; [`DeployError::Conflict`] when it is still running at the deadline.
    pub async fn wait_job(&self, id: &str, timeout: Duration) -> Result<store::JobRecord> {
        // A huge timeout (from a config) must not overflow the clock: then wait "a year".
        let start = tokio::time::Instant::now();
        let deadline = start
            .checked_add(timeout)
            .unwrap_or(start + Duration::from_secs(365 * 24 * 3600));
        let mut rx = self.events();
        loop {
            let job = self.job(id)?;
            if is_terminal(job.state) {
                return Ok(job);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(DeployError::Conflict(format!("job {id} is still running")));
            }
            // Any event (or a lag) is a reason to look again; the timer bounds the wait.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(500)), rx.recv()).await;
        }
    }

    fn now(&self) -> u64 {
        self.inner.host.now()
    }

    fn clock(&self) -> Arc<dyn Fn() -> u64 + Send + Sync> {
        let host = self.inner.host.clone();
        Arc::new(move || host.now())
    }

    fn pve(&self, cluster: &str) -> Result<pve::PveClient> {
        self.inner
            .host
            .pve(cluster)
            .ok_or_else(|| DeployError::UnknownCluster(cluster.to_string()))
    }

    /// The VM-operations service of the host: every power action on a class VM goes through it.
    fn ops(&self) -> Result<ops::Ops> {
        self.inner.host.ops().ok_or_else(|| {
            DeployError::Host(script::HostError::new(
                "ops.unavailable",
                "this host performs no VM operations",
            ))
        })
    }

    fn scripts(&self) -> Arc<ScriptSet> {
        (self.inner.scripts)()
    }

    fn new_id(&self, prefix: &str) -> Result<String> {
        Ok(format!("{prefix}{}", self.inner.store.next_id()?))
    }

    /// Flush the database (the journal points that must survive a crash).
    async fn flush(&self) -> Result<()> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || store.flush_covering())
            .await
            .map_err(|e| DeployError::Store(store::StoreError::Io(format!("flush: {e}"))))??;
        Ok(())
    }
}

pub(crate) fn is_terminal(s: store::JobState) -> bool {
    matches!(
        s,
        store::JobState::Done | store::JobState::Failed | store::JobState::Cancelled
    )
}
