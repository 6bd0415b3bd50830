//! Application state shared by every handler: cheap handles only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sync::{Inventory, Syncer};

/// Settings of the HTTP layer.
#[derive(Clone, Debug)]
pub struct WebConfig {
    /// Cluster used for bare-VMID paths when the user has none selected.
    pub default_cluster: String,
    /// Maximum time to wait for a power task, seconds.
    pub task_timeout_secs: u64,
    /// Request timeout for non-streaming routes, seconds.
    pub request_timeout_secs: u64,
    /// Power operations and reverts in flight towards one cluster at once (request + task wait + refresh);
    /// more wait their turn. Default 16.
    pub power_concurrency: usize,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            default_cluster: String::new(),
            task_timeout_secs: 300,
            request_timeout_secs: 60,
            power_concurrency: 16,
        }
    }
}

/// `?cluster=ID` on VM paths.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ClusterQuery {
    pub cluster: Option<String>,
}

/// Labels of the HTTP request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub status: u16,
}

/// Everything a handler needs.
#[derive(Clone)]
pub struct AppState {
    pub inventory: Arc<Inventory>,
    pub syncer: Arc<Syncer>,
    pub config: Arc<WebConfig>,
    pub started: Instant,
    /// Power actions and reverts ([`ops`]): one at a time per VM, bounded per cluster, in their own tasks.
    pub ops: ops::Ops,
    pub(crate) http_requests: Family<HttpLabels, Counter>,
    /// Page theme (see [`crate::render`]); `None`: the embedded default theme, built on first use.
    /// Set with [`AppState::with_themes`].
    pub themes: Option<Arc<crate::theme::Themes>>,
    /// Reloaders shown on `/admin/reload` besides the theme's, as `(name, source)`.
    /// Add with [`AppState::with_reload_source`].
    pub reload_sources: Arc<Vec<(String, Arc<dyn ReloadSource>)>>,
    /// Accounts, sessions, tokens and the access index ([`crate::auth`]). Replace with
    /// [`AppState::with_auth`].
    pub auth: Arc<crate::auth::AuthState>,
    /// Connecting to VMs: RDP scripts, terminal/console settings, address verifications, the shutdown
    /// signal of the relays ([`crate::relays`]). Replace with [`AppState::with_connect`].
    pub connect: Arc<crate::relays::ConnectState>,
    /// Classes, templates, invites and deployment jobs ([`crate::views::classes`]); `None`: those routes answer
    /// 503. Set with [`AppState::with_deployer`].
    pub deploy: Option<deploy::Deployer>,
    /// Class hours and usage-hour quotas ([`crate::hours`]); `None`: those routes answer 503. Set with
    /// [`AppState::with_hours`].
    pub hours: Option<hours::Hours>,
}

impl AppState {
    /// State over an inventory and its syncer. Accounts live in the inventory's store, or in a temporary
    /// database when the inventory has none (benchmarks); set real ones with [`AppState::with_auth`].
    ///
    /// Panics only if no temporary database can be created (no writable temp dir).
    pub fn new(inventory: Arc<Inventory>, syncer: Arc<Syncer>, config: WebConfig) -> AppState {
        let store = match inventory
            .store()
            .cloned()
            .map(Ok)
            .unwrap_or_else(store::Store::open_temporary)
        {
            Ok(s) => s,
            Err(e) => panic!("cannot open a temporary account database: {e}"),
        };
        let auth = crate::auth::AuthState::new(store, crate::auth::AuthConfig::default());
        let ops = ops::Ops::new(
            syncer.clone(),
            ops::OpsConfig {
                task_timeout: Duration::from_secs(config.task_timeout_secs),
                per_cluster: config.power_concurrency.max(1),
            },
        );
        AppState {
            auth,
            inventory,
            syncer,
            config: Arc::new(config),
            started: Instant::now(),
            ops,
            http_requests: Family::default(),
            themes: None,
            reload_sources: Arc::default(),
            connect: Arc::default(),
            deploy: None,
            hours: None,
        }
    }

    /// Uses `ops` as the VM-operations service instead of the one [`AppState::new`] made, so the web layer
    /// shares one service (single flight per VM, permits per cluster) with the deployer and the scripts.
    pub fn with_ops(mut self, ops: ops::Ops) -> AppState {
        self.ops = ops;
        self
    }

    /// Sets the deployment service behind the class, template, invite and job routes.
    pub fn with_deployer(mut self, deployer: deploy::Deployer) -> AppState {
        self.deploy = Some(deployer);
        self
    }

    /// Runs class hours and quotas with `hours`.
    pub fn with_hours(mut self, hours: hours::Hours) -> AppState {
        self.hours = Some(hours);
        self
    }

    /// Replaces the connect state (settings, RDP scripts, facts shared with the IP discovery).
    pub fn with_connect(mut self, connect: Arc<crate::relays::ConnectState>) -> AppState {
        self.connect = connect;
        self
    }

    /// Replaces the auth state (accounts database and settings).
    pub fn with_auth(mut self, auth: Arc<crate::auth::AuthState>) -> AppState {
        self.auth = auth;
        self
    }

    /// The cluster a bare VMID of `p` refers to: `?cluster=` if given, else the user's active cluster,
    /// else the default.
    pub fn cluster_for(&self, p: &crate::auth::Principal, requested: Option<&str>) -> String {
        match requested {
            Some(c) if !c.is_empty() => c.to_string(),
            _ => p
                .active_cluster
                .clone()
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| self.config.default_cluster.clone()),
        }
    }

    /// Resolves the cluster of a VM path for `p` and asks [`crate::auth::decide`] whether `p` may do
    /// `action` to it. Returns the cluster id; a VM `p` may not see is 404 with the same message as a VM
    /// that does not exist.
    pub fn authorize_vm(
        &self,
        p: &crate::auth::Principal,
        vmid: u32,
        requested_cluster: Option<&str>,
        action: crate::auth::Action,
    ) -> Result<String, crate::error::AppError> {
        use crate::auth::{Decision, Target, decide};
        let cluster = self.cluster_for(p, requested_cluster);
        match decide(
            p,
            action,
            &Target::Vm {
                cluster: &cluster,
                vmid,
            },
            &self.auth.index(),
        ) {
            Decision::Allow => Ok(cluster),
            Decision::NotFound => Err(no_vm(&cluster, vmid)),
            Decision::Forbidden => Err(crate::error::AppError::Forbidden("not allowed".into())),
        }
    }

    /// The inventory record of VM `vmid` of `cluster` (after [`AppState::authorize_vm`]); 404, with
    /// the message of a VM the caller may not see, while the inventory does not hold it.
    pub fn guest(&self, cluster: &str, vmid: u32) -> Result<Arc<store::GuestRecord>, crate::error::AppError> {
        self.inventory
            .snapshot()
            .guest(cluster, vmid)
            .cloned()
            .ok_or_else(|| no_vm(cluster, vmid))
    }

    /// The cluster a bare VMID refers to: `?cluster=` if given, else the default.
    pub fn resolve_cluster(&self, requested: Option<&str>) -> String {
        match requested {
            Some(c) if !c.is_empty() => c.to_string(),
            _ => self.config.default_cluster.clone(),
        }
    }
}

/// Anything whose reload state `/admin/reload` shows: implemented by every [`script::Reloader`] and by
/// [`crate::theme::Themes`].
pub trait ReloadSource: Send + Sync {
    /// Generation, last success, last errors, watch mode.
    fn reload_status(&self) -> script::ReloadStatus;
}

impl<T: Send + Sync + 'static> ReloadSource for script::Reloader<T> {
    fn reload_status(&self) -> script::ReloadStatus {
        self.status()
    }
}

impl ReloadSource for crate::theme::Themes {
    fn reload_status(&self) -> script::ReloadStatus {
        self.status()
    }
}

/// The one answer for a VM that does not exist and a VM the caller may not see: 404.
fn no_vm(cluster: &str, vmid: u32) -> crate::error::AppError {
    crate::error::AppError::NotFound(format!("no VM {vmid} in cluster {cluster}"))
}
