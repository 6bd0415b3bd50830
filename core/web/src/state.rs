//! Application state shared by every handler: cheap handles only.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use futures::future::{BoxFuture, Shared};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sync::{Inventory, Syncer};
use tokio::sync::Mutex;

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

/// Outcome of a power operation, shared by every caller that asked for the same operation at once.
pub type OpResult = Result<serde_json::Value, (u16, String, String)>;

/// Power operations in flight by `(cluster, vmid)`: the operation's name and its shared future.
/// Operations in flight per VM: `(name, generation, shared result)`. The generation tells a finishing
/// operation whether the entry is still its own (a Stop may have overruled it).
pub type InFlight = HashMap<(String, u32), (String, u64, Shared<BoxFuture<'static, OpResult>>)>;

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
    /// Power operations in flight by `(cluster, vmid)`: concurrent identical requests join one task.
    pub(crate) in_flight: Arc<Mutex<InFlight>>,
    /// One semaphore of `config.power_concurrency` permits per cluster id: bounds power operations
    /// towards each cluster.
    pub(crate) power_permits: Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>>,
    pub(crate) http_requests: Family<HttpLabels, Counter>,
    /// Page theme (see [`crate::pages`]); `None`: the embedded default theme, built on first use.
    /// Set with [`AppState::with_themes`].
    pub themes: Option<Arc<crate::theme::Themes>>,
    /// Reloaders shown on `/admin/reload` besides the theme's, as `(name, source)`.
    /// Add with [`AppState::with_reload_source`].
    pub reload_sources: Arc<Vec<(String, Arc<dyn crate::pages::ReloadSource>)>>,
    /// Accounts, sessions, tokens and the access index ([`crate::auth`]). Replace with
    /// [`AppState::with_auth`].
    pub auth: Arc<crate::auth::AuthState>,
    /// Connecting to VMs: RDP scripts, terminal/console settings, address verifications, the shutdown
    /// signal of the relays ([`crate::connect`]). Replace with [`AppState::with_connect`].
    pub connect: Arc<crate::connect::ConnectState>,
    /// Classes, templates, invites and deployment jobs ([`crate::classes`]); `None`: those routes answer
    /// 503. Set with [`AppState::with_deployer`].
    pub deploy: Option<deploy::Deployer>,
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
        AppState {
            auth,
            inventory,
            syncer,
            config: Arc::new(config),
            started: Instant::now(),
            in_flight: Arc::default(),
            power_permits: Arc::default(),
            http_requests: Family::default(),
            themes: None,
            reload_sources: Arc::default(),
            connect: Arc::default(),
            deploy: None,
        }
    }

    /// Waits for a permit to run one power operation against `cluster` (see
    /// [`WebConfig::power_concurrency`]); hold it until the operation's task is done.
    pub(crate) async fn power_permit(&self, cluster: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let sem = {
            let mut map = self.power_permits.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(cluster.to_string())
                .or_insert_with(|| {
                    Arc::new(tokio::sync::Semaphore::new(self.config.power_concurrency.max(1)))
                })
                .clone()
        };
        sem.acquire_owned().await.ok()
    }

    /// Sets the deployment service behind the class, template, invite and job routes.
    pub fn with_deployer(mut self, deployer: deploy::Deployer) -> AppState {
        self.deploy = Some(deployer);
        self
    }

    /// Replaces the connect state (settings, RDP scripts, facts shared with the IP discovery).
    pub fn with_connect(mut self, connect: Arc<crate::connect::ConnectState>) -> AppState {
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
            Decision::NotFound => Err(crate::error::AppError::NotFound(format!(
                "no VM {vmid} in cluster {cluster}"
            ))),
            Decision::Forbidden => Err(crate::error::AppError::Forbidden("not allowed".into())),
        }
    }

    /// The cluster a bare VMID refers to: `?cluster=` if given, else the default.
    pub fn resolve_cluster(&self, requested: Option<&str>) -> String {
        match requested {
            Some(c) if !c.is_empty() => c.to_string(),
            _ => self.config.default_cluster.clone(),
        }
    }
}
