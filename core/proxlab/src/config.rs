//! `proxlab.toml`: the site configuration, with `PROXLAB_*` environment overrides.
//!
//! Unknown keys are rejected by name (in the file and in the environment). Secrets may be given
//! inline or, better, as `*_file` paths; they are never logged.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the portal listens on (default `127.0.0.1:8080`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Runtime state directory: the sled database lives in `<data_dir>/db` (default `data`).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Public URL of the portal (scheme://host:port), used for Origin checks and invite links.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Inventory sync tuning.
    #[serde(default)]
    pub sync: SyncSection,
    /// IP discovery rules.
    #[serde(default)]
    pub ip: IpSection,
    /// Site scripts and sandbox limits.
    #[serde(default)]
    pub scripts: ScriptsSection,
    /// Site theme.
    #[serde(default)]
    pub themes: ThemesSection,
    /// Plugins.
    #[serde(default)]
    pub plugins: PluginsSection,
    /// Proxmox VE clusters (`[[cluster]]`).
    #[serde(default, rename = "cluster")]
    pub clusters: Vec<ClusterSection>,
    /// Accounts, sessions and sign-in throttling.
    #[serde(default)]
    pub auth: AuthSection,
    /// SSH terminal, console and RDP file.
    #[serde(default)]
    pub connect: ConnectSection,
    /// How much Proxlab asks of a cluster at once.
    #[serde(default)]
    pub limits: LimitsSection,
}

/// `[limits]`: how much work Proxlab puts on a cluster at once. More waits its turn in Proxlab, not on
/// the cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Power operations and reverts in flight towards one cluster (request + task + refresh; default 16).
    pub power_per_cluster: usize,
    /// VM creations at once on one node during a deployment (default 6).
    pub deploy_per_node: usize,
    /// VM creations at once on one storage (default 6).
    pub deploy_per_storage: usize,
    /// VM creations at once in all (default 12).
    pub deploy_total: usize,
    /// Largest class (students, default 500).
    pub max_pool: u32,
    /// Classes one teacher may own unless an admin set their own limit (default 10).
    pub classes_per_teacher: u32,
    /// Accounts students may create with one invite link per minute (default 10).
    pub registrations_per_invite_per_minute: u32,
    /// VMs (teacher VM, class base and students of each class) one teacher may have unless an admin
    /// set their own limit (default 1000).
    pub vms_per_teacher: u32,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            power_per_cluster: 16,
            deploy_per_node: 6,
            deploy_per_storage: 6,
            deploy_total: 12,
            max_pool: 500,
            classes_per_teacher: 10,
            registrations_per_invite_per_minute: 10,
            vms_per_teacher: 1000,
        }
    }
}

/// `[auth]`: sessions, realm admins, cookie and throttle settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// A session idle this long ends (seconds, default 28,800 = 8 h).
    pub session_idle_secs: u64,
    /// A session ends this long after sign-in (seconds, default 604,800 = 7 days).
    pub session_absolute_secs: u64,
    /// Expired sessions are deleted from the database this often (seconds, default 300).
    pub session_sweep_secs: u64,
    /// Realm users that are admins, e.g. `["root@pam", "alice@LDAP-School"]` (exact, case-sensitive).
    /// A realm user is never an admin just because Proxmox accepted the password.
    pub realm_admins: Vec<String>,
    /// PVE groups whose members are admins (read at sign-in with the cluster's token).
    pub realm_admin_groups: Vec<String>,
    /// Role of other realm users on first sign-in: `student` (default) or `teacher`.
    pub realm_default_role: String,
    /// Cluster id whose `/access/ticket` checks realm passwords (default: the first enabled cluster).
    pub realm_cluster: Option<String>,
    /// `Secure` session cookie; default: on when `public_url` is https.
    pub cookie_secure: Option<bool>,
    /// Reverse proxies whose `X-Forwarded-For` is trusted (CIDRs); empty: the TCP peer is the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Failed sign-ins of one account before each further attempt is delayed.
    pub throttle_account_free: u32,
    /// First delay (ms), doubling per failure.
    pub throttle_account_base_ms: u64,
    /// Longest delay of one attempt (ms). Accounts are slowed, never locked.
    pub throttle_account_max_ms: u64,
    /// Failed sign-ins from one address before it is refused for a while (429).
    pub throttle_address_free: u32,
    /// Longest refusal of one address or network (seconds).
    pub throttle_address_max_secs: u64,
    /// Failed sign-ins from one network (/24 for IPv4, /64 for IPv6) before it is refused for a while.
    pub throttle_network_free: u32,
    /// Failed sign-ins per minute across everyone after which every sign-in is refused (429) until the
    /// minute has passed; 0 turns the ceiling off.
    pub throttle_global_failures_per_minute: u32,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            session_idle_secs: 8 * 3600,
            session_absolute_secs: 7 * 24 * 3600,
            session_sweep_secs: 300,
            realm_admins: Vec::new(),
            realm_admin_groups: Vec::new(),
            realm_default_role: "student".into(),
            realm_cluster: None,
            cookie_secure: None,
            trusted_proxies: Vec::new(),
            throttle_account_free: 5,
            throttle_account_base_ms: 250,
            throttle_account_max_ms: 5000,
            throttle_address_free: 20,
            throttle_address_max_secs: 300,
            throttle_network_free: 60,
            throttle_global_failures_per_minute: 300,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}

/// `[sync]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncSection {
    /// Seconds between inventory ticks per cluster.
    pub interval_secs: f64,
    /// Seconds between quorum checks.
    pub quorum_interval_secs: f64,
    /// Seconds after which a running guest's IP is looked up again.
    pub ip_refresh_secs: u64,
    /// IP lookups in flight per cluster.
    pub ip_concurrency: usize,
}

impl Default for SyncSection {
    fn default() -> Self {
        SyncSection {
            interval_secs: 5.0,
            quorum_interval_secs: 15.0,
            ip_refresh_secs: 60,
            ip_concurrency: 8,
        }
    }
}

/// `[ip]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpSection {
    /// Loopback ranges where fake guests of the tests and the demo run (`127.60.0.0/16`): accepted as
    /// guest addresses. Refused unless `PROXLAB_TEST_MODE=1` is set (the test harness and
    /// `proxlab demo` set it), and only loopback ranges: real guests are never on loopback.
    pub allow_ranges: Vec<ipnet::IpNet>,
    /// Prefer IPv6 addresses.
    pub prefer_ipv6: bool,
    /// Who finds guest addresses: `scripts` (default: the tiers `scripts/ip/*.rhai`, each answer
    /// verified) or `builtin` (the guest agent / LXC interfaces in Rust, no verification).
    pub tiers: IpTiers,
    /// Which guest addresses are probed before they are handed out: `on-link` (default: loopback and
    /// directly connected IPv4 networks, where the ARP MAC comparison works), `all`, or `off`.
    pub verify: VerifyMode,
    /// Subnets the ARP tier may use and keep probed (IPv4 CIDRs the portal shares an L2 segment with);
    /// empty (default): the ARP tier is off and nothing is probed.
    pub arp_subnets: Vec<ipnet::IpNet>,
    /// Most addresses probed per subnet and round (default 1024).
    pub arp_max_hosts: usize,
    /// ARP probes per second, all subnets together (default 100).
    pub arp_rate_per_sec: u32,
    /// A subnet is probed at most once per this many seconds (default 120).
    pub arp_interval_secs: u64,
}

impl Default for IpSection {
    fn default() -> Self {
        IpSection {
            allow_ranges: Vec::new(),
            prefer_ipv6: false,
            tiers: IpTiers::Scripts,
            verify: VerifyMode::OnLink,
            arp_subnets: Vec::new(),
            arp_max_hosts: 1024,
            arp_rate_per_sec: 100,
            arp_interval_secs: 120,
        }
    }
}

/// `[ip] verify`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum VerifyMode {
    /// Loopback and directly connected IPv4 networks.
    #[default]
    OnLink,
    /// Every address.
    All,
    /// Nothing is probed.
    Off,
}

/// `[ip] tiers`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IpTiers {
    /// `scripts/ip/*.rhai` in order, answers verified.
    #[default]
    Scripts,
    /// The built-in agent/LXC lookup.
    Builtin,
}

/// `[connect]`: the SSH terminal, the console and the RDP file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectSection {
    /// SSH port of the guests (default 22; a VM tag `ssh-port-NNNN` overrides it per VM).
    pub ssh_port: u16,
    /// TCP connect + key exchange limit, seconds (default 10).
    pub ssh_connect_timeout_secs: u64,
    /// SSH keepalive towards the guest, seconds (default 15).
    pub ssh_keepalive_secs: u64,
    /// WebSocket ping interval towards browsers, seconds (default 25; keep it under your proxy's
    /// idle timeout, nginx: 60 s).
    pub ws_ping_secs: u64,
    /// A terminal without input for this long is closed, seconds (default 1800).
    pub idle_timeout_secs: u64,
    /// Time to type the guest login, seconds (default 120).
    pub login_timeout_secs: u64,
    /// Terminals plus consoles per user at once (default 4).
    pub max_sessions_per_user: usize,
    /// VM tag that enables legacy SSH algorithms for old guests (default `ssh-legacy`).
    pub legacy_tag: String,
    /// RDP script name under `scripts/rdp/` (default `default`).
    pub rdp_script: String,
    /// Folder of the vendored npm files (default: `assets/vendor` of the checkout, filled by
    /// `dev/build-assets`).
    pub vendor_dir: Option<PathBuf>,
    /// A verification older than this is repeated before a terminal connects, seconds (default 60).
    pub verify_max_age_secs: u64,
    /// At shutdown, wait this long for terminals and consoles to close, seconds (default 5).
    pub shutdown_drain_secs: u64,
    /// SSH terminals per user at once (default 3).
    pub max_terminals_per_user: usize,
    /// New terminal connections per user and minute (default 10).
    pub terminal_connects_per_minute: usize,
}

impl Default for ConnectSection {
    fn default() -> Self {
        ConnectSection {
            ssh_port: 22,
            ssh_connect_timeout_secs: 10,
            ssh_keepalive_secs: 15,
            ws_ping_secs: 25,
            idle_timeout_secs: 1800,
            login_timeout_secs: 120,
            max_sessions_per_user: 4,
            legacy_tag: "ssh-legacy".into(),
            rdp_script: "default".into(),
            vendor_dir: None,
            verify_max_age_secs: 60,
            shutdown_drain_secs: 5,
            max_terminals_per_user: 3,
            terminal_connects_per_minute: 10,
        }
    }
}

/// How a site directory is watched for hot reload.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WatchKind {
    /// Native notifications (inotify).
    #[default]
    Inotify,
    /// Stat the files every `poll_secs` (for NFS/CIFS, which send no events).
    Poll,
    /// No hot reload.
    Off,
}

/// `[scripts]`: site scripts (deployment workflows, IP tiers, RDP) and their sandbox limits.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScriptsSection {
    /// Site scripts overriding the shipped defaults file by file (same relative paths).
    pub site_dir: Option<PathBuf>,
    /// Hot reload mode.
    pub watch: WatchKind,
    /// Poll interval in seconds when `watch = "poll"` (default 2).
    pub poll_secs: Option<f64>,
    /// Sandbox limits (operations, sizes, time, memory); see scripts/README.md.
    pub limits: script::Limits,
}

/// `[themes]`: the site theme.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThemesSection {
    /// Site theme directory (`theme.toml` with `extends = "default"`), overriding files of the default.
    pub site_dir: Option<PathBuf>,
    /// Hot reload mode.
    pub watch: WatchKind,
    /// Poll interval in seconds when `watch = "poll"`.
    pub poll_secs: Option<f64>,
}

/// `[plugins]`: where plugins live and which are enabled.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsSection {
    /// Plugin directories, later ones win (default: the shipped `plugins/` of the checkout, if present).
    pub dirs: Vec<PathBuf>,
    /// Enabled plugins by name.
    pub enabled: Vec<String>,
    /// Site settings per plugin (`[plugins.settings.idle-shutdown]`), checked against its schema.
    pub settings: std::collections::BTreeMap<String, serde_json::Value>,
}

/// `[[cluster]]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Short id used in keys and `?cluster=`.
    pub id: String,
    /// Display name (default: the id).
    #[serde(default)]
    pub name: Option<String>,
    /// API base URL, e.g. `https://pve1.example.org:8006`.
    pub url: String,
    /// API token id `user@realm!tokenid` (preferred auth).
    #[serde(default)]
    pub token_id: Option<String>,
    /// API token secret (or `token_secret_file`).
    #[serde(default)]
    pub token_secret: Option<String>,
    #[serde(default)]
    pub token_secret_file: Option<PathBuf>,
    /// User `user@realm` for ticket auth (if no token).
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM CA file that signed the cluster's certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Pinned SHA-256 fingerprint of the API certificate (`AA:BB:...`).
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// Turn certificate checks off (loud warning; never combined with a pin).
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// VMIDs Proxlab may use for the VMs it creates, inclusive.
    #[serde(default)]
    pub vmid_range: Option<[u32; 2]>,
    /// Whether the sync runs for it (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Networks where this cluster's guests live (CIDRs, e.g. `["10.20.0.0/16"]`): the SSH terminal
    /// connects to a guest address inside them, or to one on a directly connected network whose ARP
    /// entry carries the VM's MAC — never elsewhere. Empty: only such MAC-verified addresses.
    #[serde(default)]
    pub guest_networks: Vec<ipnet::IpNet>,
    /// SSH access to the cluster's nodes and their storage paths (`[[cluster.node]]`), for QCOW2
    /// overlays and `ssh::exec`.
    #[serde(default, rename = "node")]
    pub nodes: Vec<NodeSection>,
}

/// `[[cluster.node]]`: how Proxlab reaches one Proxmox node over SSH (or runs there itself).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Node name as PVE knows it (`pve1`).
    pub name: String,
    /// Address to connect to (default: the node name).
    #[serde(default)]
    pub ssh_host: Option<String>,
    /// SSH port (default 22).
    #[serde(default = "ssh_port")]
    pub ssh_port: u16,
    /// SSH user (default `root`).
    #[serde(default = "ssh_user")]
    pub ssh_user: String,
    /// Private key file (OpenSSH format, Ed25519 or RSA, no passphrase).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Pinned host key fingerprint as `ssh-keygen -lf` prints it (`SHA256:...`).
    #[serde(default)]
    pub host_key_sha256: Option<String>,
    /// known_hosts file to verify the host key with.
    #[serde(default)]
    pub known_hosts: Option<PathBuf>,
    /// Trust the host key on first use and record it in `known_hosts` (off by default; a changed key is
    /// still refused).
    #[serde(default)]
    pub tofu: bool,
    /// Storage ID → its mount path on this node (`labnfs = "/mnt/pve/labnfs"`); QCOW2 work is refused
    /// outside these directories.
    #[serde(default)]
    pub storage_roots: std::collections::BTreeMap<String, PathBuf>,
    /// Proxlab runs on this node itself: commands run locally, no SSH.
    #[serde(default)]
    pub local: bool,
}

fn ssh_port() -> u16 {
    22
}

fn ssh_user() -> String {
    "root".into()
}

fn yes() -> bool {
    true
}

impl std::fmt::Debug for ClusterSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSection")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("token_id", &self.token_id)
            .field("token_secret", &self.token_secret.as_ref().map(|_| "***"))
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("ca_file", &self.ca_file)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Checks a PVE API token id (`user@realm!name`) without ever repeating a value that may hold the
/// secret: a whole `PVEAPIToken=user@realm!name=secret` header or an `id=secret` pair pasted into
/// `token_id` is refused without being shown.
pub fn check_token_id(id: &str) -> Result<(), String> {
    if id.contains('=') || id.chars().any(char::is_whitespace) {
        return Err(
            "the value looks like a whole token header or an id=secret pair (not shown); put only \
                    user@realm!name in token_id and the secret in token_secret or token_secret_file"
                .into(),
        );
    }
    let shape = || format!("{id:?} must have the form user@realm!name (e.g. proxlab@pve!portal)");
    let (user_realm, name) = match id.split_once('!') {
        Some((a, b)) if !b.contains('!') => (a, b),
        _ => return Err(shape()),
    };
    let Some((user, realm)) = user_realm.split_once('@') else {
        return Err(shape());
    };
    let ok_name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if user.is_empty() || !ok_name(realm) || !ok_name(name) {
        return Err(shape());
    }
    Ok(())
}

/// `PROXLAB_TEST_MODE=1` admits `[ip] allow_ranges` (loopback fake guests): set by the test harness and
/// `proxlab demo`, never needed by a real site.
pub const TEST_MODE_ENV: &str = "PROXLAB_TEST_MODE";

/// Environment variables starting with `PROXLAB_` that are not configuration keys.
const NON_CONFIG_ENV: &[&str] = &[
    "PROXLAB_LOG",
    "PROXLAB_CONFIG",
    "PROXLAB_VENV",
    "PROXLAB_PVE_SIM_DIR",
];

impl Config {
    /// Reads `path` (if it exists; a missing explicit file is an error) and applies `PROXLAB_*` overrides:
    /// `PROXLAB_LISTEN=0.0.0.0:8080`, `PROXLAB_SYNC__INTERVAL_SECS=2`, `PROXLAB_CLUSTER__0__TOKEN_SECRET=...`
    /// (`__` separates levels; a number indexes `[[cluster]]`). Values are parsed as TOML, else taken as strings.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::parse(&text, &env, path.parent().unwrap_or(Path::new(".")))
            .with_context(|| format!("invalid config {}", path.display()))
    }

    /// Parses config text with the given environment; relative paths are taken from `base`.
    pub fn parse(text: &str, env: &[(String, String)], base: &Path) -> anyhow::Result<Config> {
        let mut value: toml::Value = toml::from_str(text)?;
        for (key, val) in env {
            let Some(rest) = key.strip_prefix("PROXLAB_") else {
                continue;
            };
            if NON_CONFIG_ENV.contains(&key.as_str()) || key.starts_with("PROXLAB_TEST") {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            let parsed = toml::from_str::<toml::Table>(&format!("v = {val}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(val.clone()));
            set_path(&mut value, &path, parsed).with_context(|| format!("environment variable {key}"))?;
        }
        let mut cfg: Config = value.try_into()?;
        let test_mode = env.iter().any(|(k, v)| k == TEST_MODE_ENV && v == "1");
        if let Some(r) = cfg.ip.allow_ranges.iter().find(|r| !r.addr().is_loopback()) {
            bail!(
                "ip.allow_ranges: {r} is not a loopback range; guest networks are set per cluster \
                 with guest_networks = [\"{r}\"]"
            );
        }
        if !cfg.ip.allow_ranges.is_empty() && !test_mode {
            bail!(
                "ip.allow_ranges is for the tests and the demo only (they set {TEST_MODE_ENV}=1); \
                 remove it and list the networks of the guests in guest_networks of each cluster"
            );
        }
        cfg.resolve_paths(base);
        cfg.validate()?;
        Ok(cfg)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut self.data_dir);
        for c in &mut self.clusters {
            for p in [&mut c.ca_file, &mut c.token_secret_file, &mut c.password_file]
                .into_iter()
                .flatten()
            {
                abs(p);
            }
            for n in &mut c.nodes {
                for p in [&mut n.key_file, &mut n.known_hosts].into_iter().flatten() {
                    abs(p);
                }
            }
        }
        for p in [
            &mut self.scripts.site_dir,
            &mut self.themes.site_dir,
            &mut self.connect.vendor_dir,
        ]
        .into_iter()
        .flatten()
        {
            abs(p);
        }
        for p in &mut self.plugins.dirs {
            abs(p);
        }
    }

    /// Checks the rules that the types cannot express.
    pub fn validate(&self) -> anyhow::Result<()> {
        let l = &self.limits;
        for (key, v) in [
            ("limits.power_per_cluster", l.power_per_cluster),
            ("limits.deploy_per_node", l.deploy_per_node),
            ("limits.deploy_per_storage", l.deploy_per_storage),
            ("limits.deploy_total", l.deploy_total),
        ] {
            if !(1..=1000).contains(&v) {
                bail!("{key} = {v}: must be between 1 and 1000");
            }
        }
        if !(1..=5000).contains(&l.max_pool) {
            bail!("limits.max_pool = {}: must be between 1 and 5000", l.max_pool);
        }
        if !(1..=10_000).contains(&l.registrations_per_invite_per_minute) {
            bail!(
                "limits.registrations_per_invite_per_minute = {}: must be between 1 and 10000",
                l.registrations_per_invite_per_minute
            );
        }
        if !(1..=10_000).contains(&l.classes_per_teacher) {
            bail!(
                "limits.classes_per_teacher = {}: must be between 1 and 10000",
                l.classes_per_teacher
            );
        }
        if !(2..=1_000_000).contains(&l.vms_per_teacher) {
            bail!(
                "limits.vms_per_teacher = {}: must be between 2 and 1000000",
                l.vms_per_teacher
            );
        }
        let mut ids = std::collections::BTreeSet::new();
        for c in &self.clusters {
            if c.id.is_empty()
                || !c
                    .id
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
            {
                bail!(
                    "cluster id {:?} must be non-empty and use only letters, digits, '-' and '_'",
                    c.id
                );
            }
            if !ids.insert(c.id.clone()) {
                bail!("cluster id {:?} is used twice", c.id);
            }
            if let Some(id) = &c.token_id {
                check_token_id(id).map_err(|e| anyhow::anyhow!("cluster {}: token_id: {e}", c.id))?;
            }
            if let Some(user) = &c.user
                && user.contains('!')
            {
                bail!(
                    "cluster {}: user {:?} is an API token id; set it as token_id (with token_secret) \
                     instead of user",
                    c.id,
                    if user.contains('=') {
                        "(not shown)"
                    } else {
                        user.as_str()
                    }
                );
            }
            let has_token = c.token_id.is_some();
            let has_user = c.user.is_some();
            if has_token == has_user {
                bail!(
                    "cluster {}: set either token_id (+ token_secret or token_secret_file) or user (+ password)",
                    c.id
                );
            }
            if has_token && c.token_secret.is_none() && c.token_secret_file.is_none() {
                bail!(
                    "cluster {}: token_id needs token_secret or token_secret_file",
                    c.id
                );
            }
            if has_user && c.password.is_none() && c.password_file.is_none() {
                bail!("cluster {}: user needs password or password_file", c.id);
            }
            if c.insecure_skip_verify && c.fingerprint.is_some() {
                bail!(
                    "cluster {}: insecure_skip_verify cannot be combined with a pinned fingerprint",
                    c.id
                );
            }
            if c.ca_file.is_some() && c.fingerprint.is_some() {
                bail!("cluster {}: set ca_file or fingerprint, not both", c.id);
            }
            if let Some(fp) = &c.fingerprint {
                fp.parse::<pve::Fingerprint>()
                    .map_err(|e| anyhow::anyhow!("cluster {}: fingerprint: {e}", c.id))?;
            }
            if let Some([lo, hi]) = c.vmid_range
                && (lo < 100 || hi < lo)
            {
                bail!(
                    "cluster {}: vmid_range [{lo}, {hi}] must satisfy 100 <= low <= high",
                    c.id
                );
            }
            url::Url::parse(&c.url).with_context(|| format!("cluster {}: url {:?}", c.id, c.url))?;
            let mut names = std::collections::BTreeSet::new();
            for n in &c.nodes {
                if !names.insert(n.name.clone()) {
                    bail!("cluster {}: node {:?} is listed twice", c.id, n.name);
                }
                if let Some(p) = n
                    .storage_roots
                    .values()
                    .find(|p| !p.is_absolute() || p.as_path() == Path::new("/"))
                {
                    bail!(
                        "cluster {} node {}: storage root {} must be an absolute directory, not /",
                        c.id,
                        n.name,
                        p.display()
                    );
                }
                if n.local {
                    continue;
                }
                if n.key_file.is_none() {
                    bail!("cluster {} node {}: set key_file (or local = true)", c.id, n.name);
                }
                match (&n.host_key_sha256, &n.known_hosts, n.tofu) {
                    (Some(_), None, false) | (None, Some(_), _) => {}
                    (Some(_), Some(_), _) => {
                        bail!(
                            "cluster {} node {}: set host_key_sha256 or known_hosts, not both",
                            c.id,
                            n.name
                        )
                    }
                    _ => bail!(
                        "cluster {} node {}: the host key must be verified: set host_key_sha256 = \"SHA256:...\" \
                         (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on the node), or known_hosts (with tofu = true \
                         to record a first key)",
                        c.id,
                        n.name
                    ),
                }
            }
        }
        if !matches!(self.auth.realm_default_role.as_str(), "student" | "teacher") {
            bail!(
                "auth.realm_default_role must be \"student\" or \"teacher\" (admins are named in auth.realm_admins)"
            );
        }
        if let Some(rc) = &self.auth.realm_cluster
            && !self.clusters.iter().any(|c| &c.id == rc)
        {
            bail!("auth.realm_cluster {rc:?} is not a configured [[cluster]] id");
        }
        if self.auth.session_idle_secs == 0 || self.auth.session_absolute_secs < self.auth.session_idle_secs {
            bail!("auth: session_idle_secs must be > 0 and session_absolute_secs >= session_idle_secs");
        }
        if let Some(u) = &self.public_url {
            let parsed = url::Url::parse(u).with_context(|| format!("public_url {u:?}"))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                bail!("public_url {u:?} must be http(s)://host[:port]");
            }
        }
        if self.sync.interval_secs <= 0.0 {
            bail!("sync.interval_secs must be > 0");
        }
        // Durations are made with `Duration::from_secs_f64`, which panics on NaN, infinity and overflow.
        for (name, secs) in [
            ("sync.interval_secs", Some(self.sync.interval_secs)),
            ("sync.quorum_interval_secs", Some(self.sync.quorum_interval_secs)),
            ("scripts.poll_secs", self.scripts.poll_secs),
            ("themes.poll_secs", self.themes.poll_secs),
        ] {
            if let Some(s) = secs
                && !(s.is_finite() && s < 1e9)
            {
                bail!("{name} must be a finite number of seconds below 1e9, not {s}");
            }
        }
        if let Some(v6) = self
            .ip
            .arp_subnets
            .iter()
            .find(|n| matches!(n, ipnet::IpNet::V6(_)))
        {
            bail!("ip.arp_subnets: {v6} is IPv6; ARP probes only work on IPv4 subnets");
        }
        if self.ip.arp_rate_per_sec == 0 || self.ip.arp_max_hosts == 0 {
            bail!("ip.arp_rate_per_sec and ip.arp_max_hosts must be > 0");
        }
        if self.connect.ws_ping_secs == 0 || self.connect.idle_timeout_secs == 0 || self.connect.ssh_port == 0
        {
            bail!("connect.ws_ping_secs, connect.idle_timeout_secs and connect.ssh_port must be > 0");
        }
        Ok(())
    }
}

fn set_path(value: &mut toml::Value, path: &[String], new: toml::Value) -> anyhow::Result<()> {
    let Some((first, rest)) = path.split_first() else {
        bail!("empty key")
    };
    // `cluster` is the TOML name of the array of tables.
    match value {
        toml::Value::Table(t) => {
            if rest.is_empty() {
                t.insert(first.clone(), new);
                return Ok(());
            }
            let entry = t.entry(first.clone()).or_insert_with(|| {
                if rest.first().is_some_and(|r| r.parse::<usize>().is_ok()) {
                    toml::Value::Array(Vec::new())
                } else {
                    toml::Value::Table(Default::default())
                }
            });
            set_path(entry, rest, new)
        }
        toml::Value::Array(a) => {
            let idx: usize = first
                .parse()
                .with_context(|| format!("{first:?} is not an index"))?;
            if idx >= a.len() {
                bail!("index {idx} is past the {} configured entries", a.len());
            }
            if rest.is_empty() {
                a[idx] = new;
                Ok(())
            } else {
                set_path(&mut a[idx], rest, new)
            }
        }
        _ => bail!("{first:?} is inside a value that is not a table"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `text` parsed with no environment, relative paths below `/x`.
    pub(crate) fn parse(text: &str) -> Config {
        Config::parse(text, &[], Path::new("/x")).unwrap()
    }

    /// Why `text` is refused, with its causes (`{:#}`).
    pub(crate) fn refusal(text: &str) -> String {
        format!("{:#}", Config::parse(text, &[], Path::new("/x")).unwrap_err())
    }

    /// A config with one cluster `lab` (a CA file, no nodes), the start of most tests' texts.
    pub(crate) const BASE: &str = r#"
listen = "127.0.0.1:8080"
[[cluster]]
id = "lab"
url = "https://127.0.0.11:8006"
token_id = "root@pam!portal"
token_secret = "s3cret"
ca_file = "ca.crt"
"#;

    #[test]
    fn token_ids_are_checked_locally_and_a_pasted_secret_is_never_repeated() {
        let with = |id: &str| BASE.replace("root@pam!portal", id);
        parse(&with("proxlab@pve!portal-1"));
        for pasted in [
            "PVEAPIToken=root@pam!portal=9b1f0c6e-5a2d-4c3b-8e7f-aaaabbbbcccc",
            "root@pam!portal=9b1f0c6e-5a2d-4c3b-8e7f-aaaabbbbcccc",
        ] {
            let err = refusal(&with(pasted));
            assert!(err.contains("token_id") && err.contains("not shown"), "{err}");
            assert!(!err.contains("9b1f0c6e"), "the secret is printed: {err}");
        }
        for bad in ["root@pam", "root!portal", "root@pam!a!b", "@pam!x", "root@pam!"] {
            let err = refusal(&with(bad));
            assert!(err.contains("user@realm!name"), "{bad}: {err}");
        }
        let ticket = BASE
            .replace("token_id = \"root@pam!portal\"", "user = \"root@pam!portal\"")
            .replace("token_secret = \"s3cret\"", "password = \"pw\"");
        let err = refusal(&ticket);
        assert!(err.contains("set it as token_id"), "{err}");
    }

    #[test]
    fn loopback_test_ranges_need_test_mode_and_guest_networks_are_per_cluster() {
        let text =
            format!("{BASE}guest_networks = [\"10.20.0.0/16\"]\n[ip]\nallow_ranges = [\"127.60.0.0/16\"]\n");
        let err = refusal(&text);
        assert!(
            err.contains("PROXLAB_TEST_MODE") && err.contains("guest_networks"),
            "{err}"
        );
        let env = [(TEST_MODE_ENV.to_string(), "1".to_string())];
        let c = Config::parse(&text, &env, Path::new("/x")).unwrap();
        assert_eq!(
            c.clusters[0].guest_networks,
            vec!["10.20.0.0/16".parse::<ipnet::IpNet>().unwrap()]
        );
        let routed = format!("{BASE}[ip]\nallow_ranges = [\"10.0.0.0/8\"]\n");
        let err = format!("{:#}", Config::parse(&routed, &env, Path::new("/x")).unwrap_err());
        assert!(err.contains("not a loopback range"), "{err}");
    }

    #[test]
    fn unknown_key_is_rejected_by_name() {
        let err = refusal(&format!("{BASE}\nlisten_port = 1\n"));
        assert!(err.contains("listen_port"), "{err}");
        let err = refusal(&format!("{BASE}\ncolour = 1\n"));
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn limits_default_and_refuse_zero_by_name() {
        let c = parse(BASE);
        assert_eq!((c.limits.power_per_cluster, c.limits.deploy_per_node), (16, 6));
        let c = parse(&format!(
            "{BASE}\n[limits]\npower_per_cluster = 4\ndeploy_total = 3\n"
        ));
        assert_eq!((c.limits.power_per_cluster, c.limits.deploy_total), (4, 3));
        let err = refusal(&format!("{BASE}\n[limits]\npower_per_cluster = 0\n"));
        assert!(err.contains("limits.power_per_cluster"), "{err}");
    }

    #[test]
    fn env_overrides_nested_and_indexed_keys() {
        let env = vec![
            ("PROXLAB_SYNC__INTERVAL_SECS".to_string(), "2".to_string()),
            (
                "PROXLAB_CLUSTER__0__TOKEN_SECRET".to_string(),
                "from-env".to_string(),
            ),
            ("PROXLAB_LOG".to_string(), "debug".to_string()),
        ];
        let cfg = Config::parse(BASE, &env, Path::new("/etc/proxlab")).unwrap();
        assert_eq!(cfg.sync.interval_secs, 2.0);
        assert_eq!(cfg.clusters[0].token_secret.as_deref(), Some("from-env"));
        assert_eq!(
            cfg.clusters[0].ca_file.as_deref(),
            Some(Path::new("/etc/proxlab/ca.crt"))
        );
    }

    #[test]
    fn unknown_env_key_is_rejected_by_name() {
        let env = vec![("PROXLAB_SYNCC__INTERVAL".to_string(), "2".to_string())];
        let err = format!("{:#}", Config::parse(BASE, &env, Path::new("/x")).unwrap_err());
        assert!(err.contains("syncc"), "{err}");
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let cfg = parse(BASE);
        let dbg = format!("{:?}", cfg.clusters[0]);
        assert!(!dbg.contains("s3cret"), "{dbg}");
    }

    #[test]
    fn pin_and_insecure_together_are_refused() {
        let text = format!(
            "{}\nfingerprint = \"{}\"\ninsecure_skip_verify = true\n",
            BASE.replace("ca_file = \"ca.crt\"", ""),
            ["AB"; 32].join(":")
        );
        let err = refusal(&text);
        assert!(err.contains("insecure_skip_verify"), "{err}");
    }

    #[test]
    fn auth_section_is_checked() {
        let cfg = parse(&format!("{BASE}\n[auth]\nrealm_admins = [\"root@pam\"]\n"));
        assert_eq!(cfg.auth.realm_admins, ["root@pam"]);
        assert_eq!(cfg.auth.session_idle_secs, 8 * 3600);
        let err = refusal(&format!("{BASE}\n[auth]\nrealm_default_role = \"admin\"\n"));
        assert!(err.contains("realm_default_role"), "{err}");
        let err = refusal(&format!("{BASE}\n[auth]\nrealm_cluster = \"nope\"\n"));
        assert!(err.contains("nope"), "{err}");
        let err = refusal(&format!("{BASE}\n[auth]\nsesion_idle_secs = 1\n"));
        assert!(err.contains("sesion_idle_secs"), "{err}");
    }
}

/// Property tests of the config parser (issue 7, "bad input"): any text and any `PROXLAB_*`
/// environment give a config or an error naming what is wrong, never a panic; unknown keys are
/// refused by name in every section; odd strings round-trip; numbers that would panic later (NaN,
/// infinite or huge durations) are refused here.
#[cfg(test)]
mod prop_tests {
    use super::tests::{parse, refusal};
    use super::*;
    use proptest::prelude::*;

    const CLUSTER: &str = "[[cluster]]\nid = \"lab\"\nurl = \"https://127.0.0.11:8006\"\n\
                           token_id = \"root@pam!portal\"\ntoken_secret = \"s\"\n";

    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// A TOML string literal for any text.
    fn quoted(s: &str) -> String {
        toml::Value::String(s.to_string()).to_string()
    }

    fn known_keys() -> Vec<String> {
        let text = format!("{CLUSTER}[sync]\n[ip]\n[scripts]\n[themes]\n[plugins]\n[auth]\n[connect]\n");
        let v: toml::Table = toml::from_str(&text).unwrap_or_default();
        let mut keys: Vec<String> = v.keys().cloned().collect();
        keys.extend(["listen", "data_dir", "public_url"].map(String::from));
        keys
    }

    proptest! {
        #![proptest_config(config(256))]

        /// Any text (TOML-looking or not) gives a config or an error, never a panic.
        #[test]
        fn any_text_parses_or_is_refused(
            text in prop_oneof![
                ".{0,200}",
                "(\\[\\[?[a-z]{1,8}\\]\\]?\n)?([a-z_]{1,12} = (\"[^\"\\\\]{0,12}\"|-?[0-9.e]{1,8}|nan|inf|true|\\[\\]|\\{\\})\n){0,6}",
            ],
        ) {
            let _ = Config::parse(&text, &[], Path::new("/x"));
            let _ = Config::parse(&format!("{CLUSTER}{text}"), &[], Path::new("/x"));
        }

        /// An unknown key in any section is refused, and the error names it.
        #[test]
        fn unknown_keys_are_refused_by_name(
            key in "[a-z][a-z_]{2,14}x",
            section in prop::sample::select(vec!["", "[sync]\n", "[auth]\n", "[connect]\n", "[ip]\n", "[scripts]\n", "[themes]\n", "[plugins]\n"]),
        ) {
            prop_assume!(!known_keys().contains(&key));
            let text = format!("{CLUSTER}{key} = 1\n");
            let err = refusal(&text);
            prop_assert!(err.contains(&key), "{err}");
            let text = format!("listen = \"127.0.0.1:8080\"\n{section}{key} = 1\n");
            let err = refusal(&text);
            prop_assert!(err.contains(&key), "{err}");
        }

        /// Any display name (unicode, quotes, backslashes, control characters) round-trips; cluster
        /// ids are accepted exactly when they are `[A-Za-z0-9_-]+`, else refused quoting the id.
        #[test]
        fn odd_strings_round_trip_and_ids_are_checked(name in ".{0,60}", id in ".{0,12}") {
            let text = CLUSTER.replace("id = \"lab\"", &format!("id = \"lab\"\nname = {}", quoted(&name)));
            let cfg = parse(&text);
            prop_assert_eq!(cfg.clusters[0].name.as_deref(), Some(name.as_str()));
            let text = CLUSTER.replace("id = \"lab\"", &format!("id = {}", quoted(&id)));
            let valid = !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            match Config::parse(&text, &[], Path::new("/x")) {
                Ok(cfg) => {
                    prop_assert!(valid, "{id:?} accepted");
                    prop_assert_eq!(&cfg.clusters[0].id, &id);
                }
                Err(e) => {
                    prop_assert!(!valid, "{id:?} refused: {e:#}");
                    prop_assert!(format!("{e:#}").contains(&format!("{id:?}")), "{e:#}");
                }
            }
        }

        /// Any pinned fingerprint text gives a config or an error naming the cluster's fingerprint.
        #[test]
        fn fingerprints_never_panic(fp in prop_oneof![".{0,80}", "[A-F0-9:]{0,30}[\u{e9}\u{4e2d}][A-F0-9:]{0,60}"]) {
            let text = format!("{CLUSTER}fingerprint = {}\n", quoted(&fp));
            if let Err(e) = Config::parse(&text, &[], Path::new("/x")) {
                prop_assert!(format!("{e:#}").contains("fingerprint"), "{e:#}");
            }
        }

        /// Durations: any float for the sync interval, the quorum interval and the poll intervals is
        /// either usable by `Duration::from_secs_f64` (as wiring uses it) or refused naming the key.
        #[test]
        fn durations_are_usable_or_refused(
            key in prop::sample::select(vec![
                ("sync", "interval_secs"),
                ("sync", "quorum_interval_secs"),
                ("scripts", "poll_secs"),
                ("themes", "poll_secs"),
            ]),
            value in prop_oneof![
                Just("nan".to_string()),
                Just("inf".to_string()),
                Just("-inf".to_string()),
                Just("1e300".to_string()),
                any::<f64>().prop_map(|f| format!("{f:?}")),
                (0u32..100_000).prop_map(|n| format!("{n}.5")),
            ],
        ) {
            let text = format!("{CLUSTER}[{}]\n{} = {value}\n", key.0, key.1);
            match Config::parse(&text, &[], Path::new("/x")) {
                Ok(cfg) => {
                    let secs = [
                        cfg.sync.interval_secs,
                        cfg.sync.quorum_interval_secs.max(cfg.sync.interval_secs),
                        cfg.scripts.poll_secs.unwrap_or(2.0).max(0.1),
                        cfg.themes.poll_secs.unwrap_or(2.0).max(0.1),
                    ];
                    for s in secs {
                        prop_assert!(std::time::Duration::try_from_secs_f64(s).is_ok(), "{key:?} = {value} gave {s}");
                    }
                }
                Err(e) => prop_assert!(format!("{e:#}").contains(key.1), "{e:#}"),
            }
        }

        /// `PROXLAB_*` overrides with any key and value give a config or an error naming the variable
        /// or key; a string override of a display name arrives unchanged.
        #[test]
        fn environment_overrides_never_panic(
            suffix in prop_oneof!["[A-Z_0-9]{0,20}", "CLUSTER__[0-9]{1,3}__[A-Z_]{1,10}", "SYNC__[A-Z_]{0,16}", ".{0,12}"],
            value in ".{0,24}",
            name in "[a-zA-Z][a-zA-Z0-9 ]{0,15}[a-zA-Z]",
        ) {
            let env = vec![(format!("PROXLAB_{suffix}"), value)];
            let _ = Config::parse(CLUSTER, &env, Path::new("/x"));
            prop_assume!(!["true", "false", "inf", "nan"].contains(&name.as_str()));
            let env = vec![("PROXLAB_CLUSTER__0__NAME".to_string(), name.clone())];
            let cfg = Config::parse(CLUSTER, &env, Path::new("/x")).unwrap();
            prop_assert_eq!(cfg.clusters[0].name.as_deref(), Some(name.as_str()));
        }
    }
}
