//! The shared state of the connect relays, held by the spine's [`crate::state::AppState`] so no spine
//! module needs the connect view: the `[connect]` settings, the RDP scripts, the per-user session and
//! terminal counts and the shutdown signal every relay listens to (graceful shutdown). The relays
//! themselves are the connect view (`crate::views::connect`).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sync::address::ClusterDial;
use sync::discovery::VerifyConfig;
use tokio::sync::{Notify, watch};

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
