//! Connecting to a VM (DESIGN §7, issue 6): the `.rdp` download, the SSH terminal and the noVNC console
//! in the browser, the "Connect" summary the portal renders, the verification of guest addresses, and the
//! pinned npm assets (xterm.js, noVNC) served from disk.
//!
//! Routes (all registered in [`crate::auth::table`], all asking [`crate::auth::decide`] with
//! [`crate::auth::Action::ConnectVm`] for the VM):
//! - `GET /api/vm/{vmid}/connect` — what fits the VM (RDP for Windows, SSH for Linux, console always), the
//!   copyable address, its discovery tier and its verification with age ([`api::connect_info`]);
//! - `GET /rdp/{vmid}.rdp` — the `.rdp` file from `scripts/rdp/default.rhai` ([`rdp::rdp_file`]);
//! - `GET /ssh/{vmid}` + `GET /ws/terminal/{vmid}` — the terminal page and its WebSocket ([`ssh`]);
//! - `GET /console/{vmid}` + `GET /ws/console/{vmid}` — the noVNC page and the VNC relay ([`console`]);
//! - `GET /static/vendor/{*path}` — the vendored npm files ([`vendor`]).
//!
//! What this module must never do: connect anywhere but the VM's own verified address (SSH) or the VM's
//! cluster (console); take a target address or port from the request; store or log a guest password; let
//! a PVE ticket or API token reach the browser.

pub mod api;
pub mod console;
pub mod hostkeys;
pub mod net;
pub mod rdp;
pub mod ssh;
pub mod vendor;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use serde::Serialize;
use tokio::sync::{Notify, watch};

use crate::auth::{Principal, Via};
use crate::error::AppError;
use crate::state::AppState;

pub use net::{IpCheck, MacCheck, VerifyConfig, VerifyScope, verify};

/// WebSocket close codes of the terminal and console relays (4000–4999 is the application range of
/// RFC 6455 §7.4.2). The reason text of every close says what happened in words a student understands.
pub mod close {
    /// The user typed nothing for [`super::ConnectConfig::idle_timeout`].
    pub const IDLE: u16 = 4000;
    /// The guest refused the user name / password.
    pub const AUTH_FAILED: u16 = 4001;
    /// The guest's host key changed and the user did not accept the new one.
    pub const HOST_KEY: u16 = 4002;
    /// The user has too many terminals and consoles open.
    pub const TOO_MANY: u16 = 4003;
    /// The VM has no (verified) address, or its address now answers with another machine's MAC.
    pub const NO_ADDRESS: u16 = 4004;
    /// The SSH (or VNC) connection failed: refused, timed out, no common algorithm (C12).
    pub const CONNECT_FAILED: u16 = 4005;
    /// Nobody typed the credentials in time.
    pub const LOGIN_TIMEOUT: u16 = 4006;
    /// The VM stopped or was taken away from the user while connected.
    pub const VM_GONE: u16 = 4007;
    /// The first message was not a `hello` / the protocol was broken by the client.
    pub const PROTOCOL: u16 = 4008;
    /// The user's session ended while connected: signed out, disabled, role changed, password changed.
    pub const SIGNED_OUT: u16 = 4009;
}

/// Close reason of [`close::SIGNED_OUT`].
pub const SIGNED_OUT_REASON: &str = "your session ended (signed out, disabled or changed); sign in again";

/// Settings of the connect features (`[connect]` in `proxlab.toml`).
#[derive(Clone, Debug)]
pub struct ConnectConfig {
    /// TCP port of the guests' SSH servers (default 22). A VM tag `ssh-port-NNNN` (set by admins in PVE)
    /// moves it for that VM. Never taken from a request.
    pub ssh_port: u16,
    /// Limit for TCP connect + key exchange with a guest (default 10 s).
    pub ssh_connect_timeout: Duration,
    /// SSH keepalive on the guest leg (`ServerAliveInterval`-like; default 15 s, 3 missed → closed).
    pub ssh_keepalive: Duration,
    /// WebSocket ping interval towards the browser (B38; default 25 s), so idle proxies keep the socket.
    pub ws_ping_interval: Duration,
    /// A terminal without user input for this long is closed with code 4000 (default 30 min).
    pub idle_timeout: Duration,
    /// Time to type the guest user name and password (default 120 s).
    pub login_timeout: Duration,
    /// How long the terminal waits for the browser's `hello` (its size) before using 80×24 (default 5 s).
    pub hello_timeout: Duration,
    /// Terminals plus consoles one user may have open at once (default 4).
    pub max_sessions_per_user: usize,
    /// VM tag that turns on the legacy SSH algorithm profile for old guests (C12; default `ssh-legacy`).
    pub legacy_tag: String,
    /// Name of the RDP script under `scripts/rdp/` (default `default`).
    pub rdp_script: String,
    /// Folder with the vendored npm files (`xterm/`, `xterm-addon-fit/`, `novnc/`), filled by
    /// `dev/build-assets`; default `<checkout>/assets/vendor`.
    pub vendor_dir: PathBuf,
    /// Address verification (ping / TCP, then ARP MAC).
    pub verify: VerifyConfig,
}

impl Default for ConnectConfig {
    fn default() -> Self {
        ConnectConfig {
            ssh_port: 22,
            ssh_connect_timeout: Duration::from_secs(10),
            ssh_keepalive: Duration::from_secs(15),
            ws_ping_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(30 * 60),
            login_timeout: Duration::from_secs(120),
            hello_timeout: Duration::from_secs(5),
            max_sessions_per_user: 4,
            legacy_tag: "ssh-legacy".into(),
            rdp_script: "default".into(),
            vendor_dir: default_vendor_dir(),
            verify: VerifyConfig::default(),
        }
    }
}

/// `<checkout>/assets/vendor`: where `dev/build-assets` copies the pinned npm files — in the checkout
/// the running executable sits in (`target/<profile>/...`), else in the one this crate was compiled in.
pub fn default_vendor_dir() -> PathBuf {
    let in_checkout =
        |p: &std::path::Path| p.join("Cargo.toml").is_file() && p.join("assets/vendor").is_dir();
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .find(|p| in_checkout(p))
                .map(|p| p.join("assets/vendor"))
        })
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/vendor"))
}

/// Where the current script set comes from (a hot-reloading [`script::Reloader`] in the server, a fixed
/// set in tests).
pub trait ScriptSetSource: Send + Sync + 'static {
    /// The set to use for one request.
    fn current_set(&self) -> Arc<script::ScriptSet>;
}

impl ScriptSetSource for script::Reloader<script::ScriptSet> {
    fn current_set(&self) -> Arc<script::ScriptSet> {
        self.current()
    }
}

impl ScriptSetSource for Arc<script::ScriptSet> {
    fn current_set(&self) -> Arc<script::ScriptSet> {
        self.clone()
    }
}

/// The script runtime and set the RDP route uses.
#[derive(Clone)]
pub struct Scripts {
    /// The runtime (host modules, limits).
    pub runtime: script::ScriptRuntime,
    /// The set source.
    pub set: Arc<dyn ScriptSetSource>,
}

/// What Proxlab knows about a guest beyond the inventory, for connecting: the verification of its
/// address and its OS type. Filled by the IP discovery (after each lookup) and by the connect API.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct GuestFacts {
    /// The last verification of the guest's address.
    pub check: Option<IpCheck>,
    /// PVE `ostype` from the config (`win11`, `l26`, …; LXC: `lxc`), once read.
    pub ostype: Option<String>,
}

/// [`GuestFacts`] per `(cluster, vmid)`, shared by the discovery and the web layer (in memory: a restart
/// verifies again).
#[derive(Debug, Default)]
pub struct FactsBook {
    map: Mutex<HashMap<(String, u32), GuestFacts>>,
}

impl FactsBook {
    /// An empty book.
    pub fn new() -> Arc<FactsBook> {
        Arc::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u32), GuestFacts>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The facts of one guest (default when unknown).
    pub fn get(&self, cluster: &str, vmid: u32) -> GuestFacts {
        self.lock()
            .get(&(cluster.to_string(), vmid))
            .cloned()
            .unwrap_or_default()
    }

    /// Records a verification.
    pub fn set_check(&self, cluster: &str, vmid: u32, check: IpCheck) {
        self.lock().entry((cluster.to_string(), vmid)).or_default().check = Some(check);
    }

    /// Records the OS type.
    pub fn set_ostype(&self, cluster: &str, vmid: u32, ostype: &str) {
        self.lock().entry((cluster.to_string(), vmid)).or_default().ostype = Some(ostype.to_string());
    }

    /// Forgets the verification of a guest (its address went away: it stopped).
    pub fn clear_check(&self, cluster: &str, vmid: u32) {
        if let Some(f) = self.lock().get_mut(&(cluster.to_string(), vmid)) {
            f.check = None;
        }
    }
}

/// Shared state of the connect features: settings, scripts, facts, the per-user session count and the
/// shutdown signal every relay listens to (C08).
pub struct ConnectState {
    /// Settings.
    pub config: ConnectConfig,
    /// Scripts for the RDP file (`None`: the built-in default settings).
    pub scripts: Option<Scripts>,
    /// Address verifications and OS types.
    pub facts: Arc<FactsBook>,
    sessions: Mutex<HashMap<String, usize>>,
    active: AtomicUsize,
    drained: Notify,
    shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for ConnectState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectState")
            .field("config", &self.config)
            .field("active", &self.active.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl Default for ConnectState {
    fn default() -> Self {
        ConnectState::build(ConnectConfig::default(), None, FactsBook::new())
    }
}

impl ConnectState {
    /// State with `config`, the RDP `scripts` (if any) and a facts book shared with the IP discovery.
    pub fn new(config: ConnectConfig, scripts: Option<Scripts>, facts: Arc<FactsBook>) -> Arc<ConnectState> {
        Arc::new(Self::build(config, scripts, facts))
    }

    fn build(config: ConnectConfig, scripts: Option<Scripts>, facts: Arc<FactsBook>) -> ConnectState {
        let (shutdown, _) = watch::channel(false);
        ConnectState {
            config,
            scripts,
            facts,
            sessions: Mutex::default(),
            active: AtomicUsize::new(0),
            drained: Notify::new(),
            shutdown,
        }
    }

    /// Reserves one of `user`'s terminal/console slots; `None` when [`ConnectConfig::max_sessions_per_user`]
    /// are in use. The slot is given back when the guard drops.
    pub fn reserve(self: &Arc<Self>, user: &str) -> Option<SessionGuard> {
        let mut map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(user.to_string()).or_default();
        if *n >= self.config.max_sessions_per_user.max(1) {
            return None;
        }
        *n += 1;
        self.active.fetch_add(1, Ordering::SeqCst);
        Some(SessionGuard {
            state: self.clone(),
            user: user.to_string(),
        })
    }

    /// Open terminal and console relays.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Tells every relay to close (code 1001, "server restarting") and refuses new ones (C08).
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// True once [`ConnectState::begin_shutdown`] was called.
    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// A receiver that changes to `true` at shutdown.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Waits until every relay has closed, at most `limit`. Returns the number still open.
    pub async fn drain(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.drained.notified();
            if self.active() == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.active();
            }
        }
    }
}

/// Resolves once `rx` reads `true` (or its sender is gone). Holds no guard across an await, so the
/// future is `Send`.
pub async fn shutdown_requested(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// One reserved session slot (see [`ConnectState::reserve`]).
pub struct SessionGuard {
    state: Arc<ConnectState>,
    user: String,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut map = self.state.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.user);
            }
        }
        drop(map);
        self.state.active.fetch_sub(1, Ordering::SeqCst);
        self.state.drained.notify_waiters();
    }
}

/// `?cluster=` and `?token=` of the connect routes.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ConnectQuery {
    /// Cluster of the VMID (default: the caller's active cluster).
    pub cluster: Option<String>,
    /// The one-time connect token (WebSocket upgrades only, C09).
    pub token: Option<String>,
}

/// The checks every WebSocket upgrade passes before anything is connected (C09), in this order: the VM
/// is the caller's (404 otherwise, as for a VM that does not exist); a cookie session's `Origin` equals
/// the portal's own exactly (a bearer-token client may omit it); the one-time connect token was issued to
/// this user for this VM and `purpose` within the last 30 s. Returns the cluster id.
pub fn check_upgrade(
    st: &AppState,
    p: &Principal,
    vmid: u32,
    q: &ConnectQuery,
    headers: &HeaderMap,
    purpose: &str,
) -> Result<String, AppError> {
    let cluster = st.authorize_vm(p, vmid, q.cluster.as_deref(), crate::auth::Action::ConnectVm)?;
    match p.via {
        Via::Session { .. } => st.auth.check_ws_origin(headers)?,
        Via::Token { .. } => {
            if headers.contains_key(axum::http::header::ORIGIN) {
                st.auth.check_ws_origin(headers)?;
            }
        }
    }
    let token = q.token.as_deref().unwrap_or_default();
    let grant = if token.is_empty() {
        None
    } else {
        st.auth.take_connect_token(token)
    };
    match grant {
        Some(g) if g.user == p.name && g.cluster == cluster && g.vmid == vmid && g.purpose == purpose => {}
        _ => {
            return Err(AppError::Forbidden(
                "a fresh connect token is needed (POST /api/vm/{vmid}/connect-token)".into(),
            ));
        }
    }
    if st.connect.shutting_down() {
        return Err(AppError::Unavailable("the portal is restarting".into()));
    }
    Ok(cluster)
}

/// The VM tag value after `prefix` as a port (`ssh-port-2222` → 2222), if any.
pub fn tag_port(tags: &[String], prefix: &str) -> Option<u16> {
    tags.iter()
        .filter_map(|t| t.strip_prefix(prefix))
        .find_map(|p| p.parse::<u16>().ok().filter(|p| *p > 0))
}

/// The user map scripts receive: `{name, display_name, role}`.
pub fn user_json(p: &Principal) -> serde_json::Value {
    serde_json::json!({
        "name": p.name,
        "display_name": p.display_name,
        "role": serde_json::to_value(p.role).unwrap_or(serde_json::Value::Null),
    })
}

/// The `vm` map scripts receive (IP tiers, RDP): the inventory record (`cluster`, `vmid`, `node`, `name`,
/// `type`, `status`, `tags`, `mac`, …) with the address flattened — `ip` (string or `()`), `ip_all`,
/// `ip_source`, `ip_seen_at` — and `macs` as `[#{index, mac}]` ordered by `netN`; plus `ostype` when known.
pub fn script_vm(g: &store::GuestRecord, ostype: Option<&str>) -> serde_json::Value {
    use serde_json::{Value, json};
    let mut v = serde_json::to_value(g).unwrap_or_else(|_| json!({}));
    if let Value::Object(m) = &mut v {
        m.insert("cluster".into(), json!(g.cluster));
        m.insert("vmid".into(), json!(g.vmid));
        match &g.ip {
            Some(ip) => {
                m.insert("ip".into(), json!(ip.address));
                m.insert("ip_all".into(), json!(ip.all));
                m.insert("ip_source".into(), json!(ip.source));
                m.insert("ip_seen_at".into(), json!(ip.seen_at));
            }
            None => {
                m.insert("ip".into(), Value::Null);
                m.insert("ip_all".into(), json!([]));
            }
        }
        let mut macs = g.macs.clone();
        macs.sort_by_key(|(i, _)| *i);
        let macs: Vec<Value> = macs
            .iter()
            .map(|(i, mac)| json!({"index": i, "mac": mac}))
            .collect();
        m.insert("macs".into(), Value::Array(macs));
        if let Some(os) = ostype {
            m.insert("ostype".into(), json!(os));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_slots_are_limited_per_user_and_given_back() {
        let st = ConnectState::new(
            ConnectConfig {
                max_sessions_per_user: 2,
                ..Default::default()
            },
            None,
            FactsBook::new(),
        );
        let a = st.reserve("stud").unwrap();
        let _b = st.reserve("stud").unwrap();
        assert!(st.reserve("stud").is_none(), "third session refused");
        assert!(st.reserve("other").is_some(), "other users are not affected");
        drop(a);
        assert!(st.reserve("stud").is_some(), "a closed session frees its slot");
    }

    #[test]
    fn ports_come_from_tags_only_when_valid() {
        let tags = vec!["lab".to_string(), "ssh-port-2222".to_string()];
        assert_eq!(tag_port(&tags, "ssh-port-"), Some(2222));
        assert_eq!(tag_port(&["ssh-port-0".to_string()], "ssh-port-"), None);
        assert_eq!(tag_port(&["ssh-port-x".to_string()], "ssh-port-"), None);
    }
}
