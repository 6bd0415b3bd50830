//! Connecting to a VM (DESIGN §7, issue 6): the `.rdp` download, the SSH terminal and the noVNC console
//! in the browser, the "Connect" summary the portal renders, the verification of guest addresses, and the
//! pinned npm assets (xterm.js, noVNC) served from disk.
//!
//! Routes (all registered in [`crate::routes`], all asking [`crate::auth::decide`] with
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
pub mod rdp_file;
pub mod ssh;
pub mod vendor;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use tokio::sync::{Notify, watch};

use crate::auth::{Principal, Via};
use crate::error::AppError;
use crate::state::AppState;

pub use net::{IpCheck, MacCheck, VerifyConfig, VerifyScope, verify};
pub use sync::GuestFacts;

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
    /// The SSH (or VNC) connection failed: refused, timed out, no common algorithm (an old guest offering
    /// only legacy ones).
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

/// Largest WebSocket message and frame a browser may send to a relay (64 KiB): keystrokes and RFB
/// messages are far smaller; a larger one closes the relay with 1009 ("message too big").
pub const MAX_WS_MESSAGE: usize = 64 * 1024;

/// Input a terminal keeps while nothing consumes it yet (before the login prompt, during the connect):
/// more closes it with 1009.
pub const MAX_PENDING_INPUT: usize = 64 * 1024;

/// `ws` with the relays' size limits ([`MAX_WS_MESSAGE`]) and a small write buffer.
pub fn limited(ws: axum::extract::ws::WebSocketUpgrade) -> axum::extract::ws::WebSocketUpgrade {
    ws.max_message_size(MAX_WS_MESSAGE)
        .max_frame_size(MAX_WS_MESSAGE)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * MAX_WS_MESSAGE)
}

/// True when a WebSocket read failed because the browser sent more than [`MAX_WS_MESSAGE`].
pub fn is_too_big(e: &axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error;
    matches!(
        std::error::Error::source(e).and_then(|s| s.downcast_ref::<Error>()),
        Some(Error::Capacity(_))
    )
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
    /// WebSocket ping interval towards the browser (default 25 s), so proxies that cut idle connections after
    /// about 60 s keep the socket.
    pub ws_ping_interval: Duration,
    /// A terminal without user input for this long is closed with code 4000 (default 30 min).
    pub idle_timeout: Duration,
    /// Time to type the guest user name and password (default 120 s).
    pub login_timeout: Duration,
    /// How long the terminal waits for the browser's `hello` (its size) before using 80×24 (default 5 s).
    pub hello_timeout: Duration,
    /// Terminals plus consoles one user may have open at once (default 4).
    pub max_sessions_per_user: usize,
    /// SSH terminals one user may have open at once (default 3).
    pub max_terminals_per_user: usize,
    /// New terminal connections one user may open per minute (default 10).
    pub terminal_connects_per_minute: usize,
    /// Per cluster: where the terminal may connect ([`ClusterDial`]). A cluster missing here has no
    /// guest networks: only MAC-verified on-link addresses are dialled.
    pub clusters: HashMap<String, ClusterDial>,
    /// Loopback ranges of fake guests (`[ip] allow_ranges`: tests and the demo only).
    pub test_ranges: Vec<ipnet::IpNet>,
    /// VM tag that turns on the legacy SSH algorithm profile for old guests (default `ssh-legacy`).
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
            max_terminals_per_user: 3,
            terminal_connects_per_minute: 10,
            clusters: HashMap::new(),
            test_ranges: Vec::new(),
            legacy_tag: "ssh-legacy".into(),
            rdp_script: "default".into(),
            vendor_dir: default_vendor_dir(),
            verify: VerifyConfig::default(),
        }
    }
}

pub use sync::address::{ClusterDial, own_addresses};

/// Where a shipped folder (`assets/vendor`, `plugins`) is when no setting names one: in the checkout
/// the running executable sits in (`target/<profile>/...`); a debug build also looks in the checkout it
/// was compiled in. A release binary never uses a path from the build: outside a checkout it looks next
/// to the installation, `<exe>/../share/proxlab/<name>` (the package layout), and `None` otherwise, so
/// a stray folder of the build machine can never be served.
pub fn shipped_dir(relative: &str) -> Option<PathBuf> {
    shipped_dir_from(
        relative,
        std::env::current_exe().ok().as_deref(),
        cfg!(debug_assertions).then(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")),
    )
}

/// [`shipped_dir`] for an executable path and the build checkout a debug build may fall back to.
pub fn shipped_dir_from(
    relative: &str,
    exe: Option<&std::path::Path>,
    build_checkout: Option<PathBuf>,
) -> Option<PathBuf> {
    let in_checkout = |p: &std::path::Path| p.join("Cargo.toml").is_file() && p.join(relative).is_dir();
    if let Some(exe) = exe {
        if let Some(root) = exe.ancestors().find(|p| in_checkout(p)) {
            return Some(root.join(relative));
        }
        let name = std::path::Path::new(relative)
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(relative));
        if let Some(prefix) = exe.parent().and_then(|bin| bin.parent()) {
            let installed = prefix.join("share/proxlab").join(name);
            if installed.is_dir() {
                return Some(installed);
            }
        }
    }
    build_checkout.map(|c| c.join(relative)).filter(|p| p.is_dir())
}

/// The vendored npm files (`assets/vendor`, filled by `dev/build-assets`): [`shipped_dir`], else the
/// package location `/usr/share/proxlab/vendor` (where a missing file is then reported by name).
pub fn default_vendor_dir() -> PathBuf {
    shipped_dir("assets/vendor").unwrap_or_else(|| PathBuf::from("/usr/share/proxlab/vendor"))
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

/// Shared state of the connect features: settings, scripts, the per-user session count and the
/// shutdown signal every relay listens to (graceful shutdown).
pub struct ConnectState {
    /// Settings.
    pub config: ConnectConfig,
    /// Scripts for the RDP file (`None`: the built-in default settings).
    pub scripts: Option<Scripts>,
    sessions: Mutex<HashMap<String, usize>>,
    terminals: Mutex<HashMap<String, usize>>,
    recent_connects: Mutex<HashMap<String, VecDeque<std::time::Instant>>>,
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
        ConnectState::build(ConnectConfig::default(), None)
    }
}

impl ConnectState {
    /// State with `config` and the RDP `scripts` (if any). What discovery learned about a guest (its
    /// address verification, its OS type) is read from the inventory snapshot ([`sync::Snapshot::facts`]).
    pub fn new(config: ConnectConfig, scripts: Option<Scripts>) -> Arc<ConnectState> {
        Arc::new(Self::build(config, scripts))
    }

    fn build(config: ConnectConfig, scripts: Option<Scripts>) -> ConnectState {
        let (shutdown, _) = watch::channel(false);
        ConnectState {
            config,
            scripts,
            sessions: Mutex::default(),
            terminals: Mutex::default(),
            recent_connects: Mutex::default(),
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

    /// Reserves one of `user`'s terminal slots: counted against [`ConnectConfig::max_terminals_per_user`],
    /// [`ConnectConfig::terminal_connects_per_minute`] and the shared terminal/console limit. The error
    /// says which limit was hit.
    pub fn reserve_terminal(self: &Arc<Self>, user: &str) -> Result<TerminalGuard, String> {
        let cfg = &self.config;
        let now = std::time::Instant::now();
        {
            let mut recent = self.recent_connects.lock().unwrap_or_else(|e| e.into_inner());
            recent.retain(|_, q| {
                while q
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
                {
                    q.pop_front();
                }
                !q.is_empty()
            });
            let q = recent.entry(user.to_string()).or_default();
            if q.len() >= cfg.terminal_connects_per_minute.max(1) {
                return Err(format!(
                    "you opened {} terminals in the last minute; wait a minute and try again",
                    q.len()
                ));
            }
            q.push_back(now);
        }
        let mut terms = self.terminals.lock().unwrap_or_else(|e| e.into_inner());
        let n = terms.entry(user.to_string()).or_default();
        if *n >= cfg.max_terminals_per_user.max(1) {
            let open = *n;
            if open == 0 {
                terms.remove(user);
            }
            return Err(format!("you already have {open} terminals open; close one first"));
        }
        let Some(slot) = self.reserve(user) else {
            if *n == 0 {
                terms.remove(user);
            }
            return Err(format!(
                "you already have {} terminals and consoles open; close one first",
                cfg.max_sessions_per_user
            ));
        };
        *n += 1;
        Ok(TerminalGuard {
            state: self.clone(),
            user: user.to_string(),
            _slot: slot,
        })
    }

    /// The address rules of `cluster` right now: its guest networks, the test ranges, and as never
    /// dialled the portal host's own addresses, the cluster's configured hosts and its nodes' addresses
    /// from `/cluster/status`.
    pub fn dial_rules(&self, cluster: &str, snapshot: &sync::Snapshot) -> sync::DialRules {
        let dial = self.config.clusters.get(cluster).cloned().unwrap_or_default();
        let nodes = snapshot
            .clusters
            .get(cluster)
            .map(|state| state.node_addresses.as_slice())
            .unwrap_or_default();
        sync::DialRules::for_cluster(&dial, &self.config.test_ranges, nodes)
    }

    /// Open terminal and console relays.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Tells every relay to close (code 1001, "server restarting") and refuses new ones (graceful shutdown).
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

/// Gives back one of `user`'s slots counted in `counts`.
fn release(counts: &Mutex<HashMap<String, usize>>, user: &str) {
    let mut map = counts.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = map.get_mut(user) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(user);
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        release(&self.state.sessions, &self.user);
        self.state.active.fetch_sub(1, Ordering::SeqCst);
        self.state.drained.notify_waiters();
    }
}

/// One reserved terminal slot (see [`ConnectState::reserve_terminal`]); also holds a shared session slot.
pub struct TerminalGuard {
    state: Arc<ConnectState>,
    user: String,
    _slot: SessionGuard,
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        release(&self.state.terminals, &self.user);
    }
}

/// `?cluster=` and `?token=` of the connect routes.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ConnectQuery {
    /// Cluster of the VMID (default: the caller's active cluster).
    pub cluster: Option<String>,
    /// The one-time connect token (WebSocket upgrades only).
    pub token: Option<String>,
}

/// The checks every WebSocket upgrade passes before anything is connected, in this order: the VM
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
        );
        let a = st.reserve("stud").unwrap();
        let _b = st.reserve("stud").unwrap();
        assert!(st.reserve("stud").is_none(), "third session refused");
        assert!(st.reserve("other").is_some(), "other users are not affected");
        drop(a);
        assert!(st.reserve("stud").is_some(), "a closed session frees its slot");
    }

    #[test]
    fn a_release_binary_never_falls_back_to_the_build_checkout() {
        let build = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(build.path().join("assets/vendor")).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let exe = elsewhere.path().join("bin/proxlab");
        // Debug: the build checkout is used; release (no build checkout given): nothing.
        assert_eq!(
            shipped_dir_from("assets/vendor", Some(&exe), Some(build.path().to_path_buf())),
            Some(build.path().join("assets/vendor"))
        );
        assert_eq!(shipped_dir_from("assets/vendor", Some(&exe), None), None);
        // An installed package: <prefix>/share/proxlab/vendor next to <prefix>/bin/proxlab.
        std::fs::create_dir_all(elsewhere.path().join("share/proxlab/vendor")).unwrap();
        assert_eq!(
            shipped_dir_from("assets/vendor", Some(&exe), None),
            Some(elsewhere.path().join("share/proxlab/vendor"))
        );
        // A binary inside a checkout uses that checkout.
        let checkout = tempfile::tempdir().unwrap();
        std::fs::write(checkout.path().join("Cargo.toml"), "").unwrap();
        std::fs::create_dir_all(checkout.path().join("plugins")).unwrap();
        let exe = checkout.path().join("target/release/proxlab");
        assert_eq!(
            shipped_dir_from("plugins", Some(&exe), None),
            Some(checkout.path().join("plugins"))
        );
    }

    #[test]
    fn ports_come_from_tags_only_when_valid() {
        let tags = vec!["lab".to_string(), "ssh-port-2222".to_string()];
        assert_eq!(tag_port(&tags, "ssh-port-"), Some(2222));
        assert_eq!(tag_port(&["ssh-port-0".to_string()], "ssh-port-"), None);
        assert_eq!(tag_port(&["ssh-port-x".to_string()], "ssh-port-"), None);
    }
}
