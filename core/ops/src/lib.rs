//! VM operations: the power actions (start, stop, shut down, reboot, suspend, resume) and the revert to
//! a snapshot, for every caller that operates a guest on a student's or teacher's behalf.
//!
//! What holds for every operation:
//! - **one at a time per VM**: identical requests for the same VM while one is in flight join it (ten
//!   clicks make one PVE task); a different one is refused with [`OpError::Busy`] — except Stop, which
//!   always runs (with PVE's `overrule-shutdown`), the student's way out of a hung start or shutdown;
//! - **bounded towards each cluster**: at most `per_cluster` operations run against one cluster at once;
//!   a class pressing Start together queues here, not on the cluster;
//! - **independent of the caller**: the operation runs in its own task and follows the PVE task by UPID to
//!   its end, so a browser that drops the request or a request timeout never leaves a VM "in progress";
//!   the in-flight entry goes when the operation ends;
//! - **what PVE would refuse is refused here first**: a guest the inventory shows locked (other than
//!   `suspended`), a template, a VM already in the wanted state (answered at once, without a task);
//! - **the inventory shows the truth at once**: the guest is refreshed after the task, whatever its
//!   outcome, which publishes its event.
//!
//! Results are typed ([`OpOutcome`], [`OpError`]); mapping them to HTTP is the web layer's business.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use pve::{GuestKind, PowerAction, PveError};
use serde::Serialize;
use serde_json::Value;
use store::GuestRecord;
use sync::Syncer;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};

/// What a finished operation did.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct OpOutcome {
    /// Always true (a failure is an [`OpError`]); kept for clients reading `ok`.
    pub ok: bool,
    /// `start`, `stop`, `shutdown`, `reboot`, `suspend`, `resume` or `revert`.
    pub action: String,
    /// The PVE task's UPID (`None` when nothing had to be done).
    pub upid: Option<String>,
    /// The task's exit status (`OK`, `WARNINGS: n`).
    pub exitstatus: Option<String>,
    /// A sentence for the user when nothing had to be done (`VM 101 is already running`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The snapshot a revert rolled back to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// What another service reported (a class VM's revert by the deployer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Value>,
    /// The guest as the inventory shows it afterwards.
    pub guest: Option<Value>,
}

impl OpOutcome {
    fn new(action: &str) -> OpOutcome {
        OpOutcome {
            ok: true,
            action: action.to_string(),
            ..OpOutcome::default()
        }
    }
}

/// Why an operation did not happen or failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum OpError {
    /// No such guest in the cluster, or no such cluster.
    #[error("{0}")]
    NotFound(String),
    /// Another operation of this VM is still running.
    #[error("a {running} of this VM is still in progress{}", if running == "stop" || running == "revert" { "" } else { "; Stop always works" })]
    Busy {
        /// The operation in flight.
        running: String,
    },
    /// Proxmox holds a lock on the guest.
    #[error("VM is locked ({lock}): Proxmox holds VM {vmid} for a {lock}; try again when it has finished")]
    Locked {
        /// VMID.
        vmid: u32,
        /// PVE's lock (`backup`, `clone`, `migrate`, …).
        lock: String,
    },
    /// The operation cannot apply to this guest (a template).
    #[error("{0}")]
    NotApplicable(String),
    /// A revert was asked for a VM without a baseline snapshot.
    #[error("this VM has no baseline snapshot to revert to")]
    NoBaseline,
    /// PVE refused or the task failed; PVE's own status and message.
    #[error("{0}")]
    Pve(Arc<PveError>),
    /// Another service the operation ran failed (the deployer reverting a class VM), with the code and
    /// HTTP status that service gives its errors.
    #[error("{message}")]
    Service {
        /// Suggested HTTP status.
        status: u16,
        /// Machine-readable code.
        code: String,
        /// The message for the user.
        message: String,
    },
    /// The operation's task ended abnormally.
    #[error("the operation failed: {0}")]
    Internal(String),
}

impl OpError {
    /// Machine-readable code (`not_found`, `conflict`, `locked`, `no_baseline`, PVE's and services'
    /// own codes, `internal`).
    pub fn code(&self) -> String {
        match self {
            OpError::NotFound(_) => "not_found".into(),
            OpError::Busy { .. } | OpError::NotApplicable(_) => "conflict".into(),
            OpError::Locked { .. } => "locked".into(),
            OpError::NoBaseline => "no_baseline".into(),
            OpError::Pve(_) => "pve_error".into(),
            OpError::Service { code, .. } => code.clone(),
            OpError::Internal(_) => "internal".into(),
        }
    }
}

impl From<PveError> for OpError {
    fn from(e: PveError) -> Self {
        OpError::Pve(Arc::new(e))
    }
}

/// The result every caller of the same in-flight operation shares.
pub type OpResult = Result<OpOutcome, OpError>;

/// `(name, generation, shared result)` per `(cluster, vmid)`: the generation tells a finishing operation
/// whether the entry is still its own (a Stop may have replaced it).
type InFlight = HashMap<(String, u32), (String, u64, Shared<BoxFuture<'static, OpResult>>)>;

/// Settings.
#[derive(Clone, Debug)]
pub struct OpsConfig {
    /// How long an operation follows its PVE task (default 300 s).
    pub task_timeout: Duration,
    /// Operations at once towards one cluster (default 16).
    pub per_cluster: usize,
}

impl Default for OpsConfig {
    fn default() -> Self {
        OpsConfig {
            task_timeout: Duration::from_secs(300),
            per_cluster: 16,
        }
    }
}

/// The VM-operations service; cheap to clone, one per process.
#[derive(Clone)]
pub struct Ops {
    syncer: Arc<Syncer>,
    config: OpsConfig,
    in_flight: Arc<Mutex<InFlight>>,
    permits: Arc<std::sync::Mutex<HashMap<String, Arc<Semaphore>>>>,
    generation: Arc<AtomicU64>,
}

/// The lock that stops every power action and revert on a guest, if any: PVE refuses them anyway, so
/// they are refused without asking. `suspended` (a hibernated VM) is no such lock: starting resumes it.
pub fn blocking_lock(g: &GuestRecord) -> Option<&str> {
    g.lock.as_deref().filter(|l| *l != "suspended")
}

impl Ops {
    /// The service over the syncer's clients and inventory.
    pub fn new(syncer: Arc<Syncer>, config: OpsConfig) -> Ops {
        Ops {
            syncer,
            config,
            in_flight: Arc::default(),
            permits: Arc::default(),
            generation: Arc::new(AtomicU64::new(1)),
        }
    }

    /// The guest as the inventory shows it; one inventory tick first when it is not there yet (a VM
    /// created moments ago, before the next sync).
    async fn guest(&self, cluster: &str, vmid: u32) -> Result<Arc<GuestRecord>, OpError> {
        let find = || self.syncer.inventory().snapshot().guest(cluster, vmid).cloned();
        if let Some(g) = find() {
            return Ok(g);
        }
        if let Err(e) = self.syncer.tick_cluster(cluster, false).await {
            tracing::debug!(cluster, vmid, error = %e, "inventory tick for an unknown guest failed");
        }
        find().ok_or_else(|| OpError::NotFound(format!("no VM {vmid} in cluster {cluster}")))
    }

    /// The guest, refused when Proxmox holds a lock on it.
    async fn unlocked_guest(&self, cluster: &str, vmid: u32) -> Result<Arc<GuestRecord>, OpError> {
        let g = self.guest(cluster, vmid).await?;
        if let Some(lock) = blocking_lock(&g) {
            return Err(OpError::Locked {
                vmid,
                lock: lock.to_string(),
            });
        }
        Ok(g)
    }

    /// Refuses at once when the inventory shows `cluster`/`vmid` locked (before any other work).
    pub fn check_unlocked(&self, cluster: &str, vmid: u32) -> Result<(), OpError> {
        match self.syncer.inventory().snapshot().guest(cluster, vmid) {
            Some(g) => match blocking_lock(g) {
                Some(lock) => Err(OpError::Locked {
                    vmid,
                    lock: lock.to_string(),
                }),
                None => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// Runs (or joins) power action `action` on `cluster`/`vmid`.
    pub async fn power(&self, cluster: &str, vmid: u32, action: PowerAction) -> OpResult {
        let me = self.clone();
        let c = cluster.to_string();
        self.exclusive(cluster, vmid, action.as_str(), async move {
            me.run_power(c, vmid, action, None).await
        })
        .await
    }

    /// Like [`Ops::power`], but answers as soon as PVE has accepted the task: its UPID (`None` when
    /// nothing had to be done, or when the operation joined one already in flight and ended without a
    /// task). The operation still follows the task to its end and refreshes the guest in its own task;
    /// for callers that wait on the UPID themselves or not at all (scripts' `pve::power`, plugins).
    pub async fn power_started(
        &self,
        cluster: &str,
        vmid: u32,
        action: PowerAction,
    ) -> Result<Option<String>, OpError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let me = self.clone();
        let c = cluster.to_string();
        let whole = self.exclusive(cluster, vmid, action.as_str(), async move {
            me.run_power(c, vmid, action, Some(tx)).await
        });
        tokio::pin!(whole);
        tokio::select! {
            r = &mut whole => r.map(|o| o.upid),
            Ok(upid) = rx => Ok(Some(upid)),
        }
    }

    /// Like [`Ops::power`], but the guest's state is re-read from PVE first instead of trusted from the
    /// inventory: for callers that act on VMs they changed moments ago (the deployer stopping its own
    /// VMs before it destroys them), where the inventory may not have seen the change yet.
    pub async fn power_fresh(&self, cluster: &str, vmid: u32, action: PowerAction) -> OpResult {
        if self.syncer.inventory().snapshot().guest(cluster, vmid).is_some() {
            if let Err(e) = self.syncer.refresh_guest(cluster, vmid).await {
                tracing::debug!(cluster, vmid, error = %e, "re-reading the guest before a power action failed");
            }
        } else if let Err(e) = self.syncer.tick_cluster(cluster, false).await {
            tracing::debug!(cluster, vmid, error = %e, "inventory tick for an unknown guest failed");
        }
        self.power(cluster, vmid, action).await
    }

    /// Rolls `cluster`/`vmid` back to `snapshot` (an assignment's baseline), one at a time like
    /// [`Ops::power`]. `None`: [`OpError::NoBaseline`].
    pub async fn revert_to_snapshot(&self, cluster: &str, vmid: u32, snapshot: Option<String>) -> OpResult {
        let snapshot = snapshot.ok_or(OpError::NoBaseline)?;
        let me = self.clone();
        let c = cluster.to_string();
        self.exclusive(cluster, vmid, "revert", async move {
            me.run_revert(c, vmid, snapshot).await
        })
        .await
    }

    /// Runs `op` as operation `name` of the VM under the same rules as the power actions (one at a time,
    /// in its own task): for operations another service performs, such as a class VM's revert.
    pub async fn exclusive(
        &self,
        cluster: &str,
        vmid: u32,
        name: &str,
        op: impl std::future::Future<Output = OpResult> + Send + 'static,
    ) -> OpResult {
        let key = (cluster.to_string(), vmid);
        let fut = {
            let mut map = self.in_flight.lock().await;
            match map.get(&key) {
                Some((running, _, fut)) if running == name => fut.clone(),
                Some((running, _, _)) if name != "stop" || running == "revert" => {
                    return Err(OpError::Busy {
                        running: running.clone(),
                    });
                }
                _ => {
                    let generation = self.generation.fetch_add(1, Ordering::Relaxed);
                    let flights = self.in_flight.clone();
                    let key2 = key.clone();
                    let task = tokio::spawn(async move {
                        let out = op.await;
                        let mut map = flights.lock().await;
                        if map.get(&key2).is_some_and(|(_, g, _)| *g == generation) {
                            map.remove(&key2);
                        }
                        out
                    });
                    let fut = async move {
                        task.await
                            .unwrap_or_else(|e| Err(OpError::Internal(e.to_string())))
                    }
                    .boxed()
                    .shared();
                    map.insert(key, (name.to_string(), generation, fut.clone()));
                    fut
                }
            }
        };
        fut.await
    }

    /// Operations in flight, for tests and metrics.
    pub async fn in_flight(&self) -> usize {
        self.in_flight.lock().await.len()
    }

    async fn permit(&self, cluster: &str) -> Option<OwnedSemaphorePermit> {
        let sem = {
            let mut map = self.permits.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(cluster.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(self.config.per_cluster.max(1))))
                .clone()
        };
        sem.acquire_owned().await.ok()
    }

    fn client(&self, cluster: &str) -> Result<pve::PveClient, OpError> {
        self.syncer
            .client(cluster)
            .cloned()
            .ok_or_else(|| OpError::NotFound(format!("unknown cluster {cluster}")))
    }

    /// Follows `upid` to its end, refreshes the guest whatever the outcome, and fills the outcome.
    async fn follow(
        &self,
        client: &pve::PveClient,
        cluster: &str,
        vmid: u32,
        upid: pve::Upid,
        mut out: OpOutcome,
    ) -> OpResult {
        let outcome = client.wait_task(&upid, self.config.task_timeout).await;
        let refreshed = self.syncer.refresh_guest(cluster, vmid).await;
        out.exitstatus = Some(match outcome? {
            pve::TaskOutcome::Ok => "OK".to_string(),
            pve::TaskOutcome::Warnings(n) => format!("WARNINGS: {n}"),
        });
        out.upid = Some(upid.to_string());
        out.guest = refreshed.ok().and_then(|g| serde_json::to_value(g.as_ref()).ok());
        Ok(out)
    }

    /// `started` gets the UPID as soon as PVE accepted the task.
    async fn run_power(
        &self,
        cluster: String,
        vmid: u32,
        action: PowerAction,
        started: Option<tokio::sync::oneshot::Sender<String>>,
    ) -> OpResult {
        let g = self.unlocked_guest(&cluster, vmid).await?;
        if g.template {
            return Err(OpError::NotApplicable(format!(
                "{} is a template; templates cannot be started",
                g.name
            )));
        }
        let client = self.client(&cluster)?;
        let kind = if g.kind == "lxc" {
            GuestKind::Lxc
        } else {
            GuestKind::Qemu
        };
        // Nothing to do: answer at once, without a task.
        let already = match action {
            PowerAction::Start => g.status == "running" && g.state != "paused",
            PowerAction::Stop | PowerAction::Shutdown => g.status == "stopped" && g.state != "hibernated",
            _ => false,
        };
        if already {
            let mut out = OpOutcome::new(action.as_str());
            out.message = Some(format!("VM {vmid} is already {}", g.status));
            out.guest = serde_json::to_value(g.as_ref()).ok();
            return Ok(out);
        }
        // A paused VM is resumed, not started.
        let action = if action == PowerAction::Start && g.state == "paused" {
            PowerAction::Resume
        } else {
            action
        };
        let _permit = self.permit(&cluster).await;
        let upid = if action == PowerAction::Stop {
            // Stop is the student's way out of a hung guest: it also aborts a pending shutdown task.
            client.stop_overruling_shutdown(&g.node, kind, vmid).await?
        } else {
            client.power(&g.node, kind, vmid, action).await?
        };
        if let Some(tx) = started {
            let _ = tx.send(upid.to_string());
        }
        tracing::debug!(cluster = %cluster, vmid, action = action.as_str(), upid = %upid, "following the power task");
        self.follow(&client, &cluster, vmid, upid, OpOutcome::new(action.as_str()))
            .await
    }

    async fn run_revert(&self, cluster: String, vmid: u32, snapshot: String) -> OpResult {
        let g = self.unlocked_guest(&cluster, vmid).await?;
        let client = self.client(&cluster)?;
        let kind = if g.kind == "lxc" {
            GuestKind::Lxc
        } else {
            GuestKind::Qemu
        };
        let _permit = self.permit(&cluster).await;
        let upid = client.snapshot_rollback(&g.node, kind, vmid, &snapshot).await?;
        let mut out = OpOutcome::new("revert");
        out.snapshot = Some(snapshot);
        self.follow(&client, &cluster, vmid, upid, out).await
    }
}
