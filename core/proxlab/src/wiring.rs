//! Builds the running system from a [`Config`]: store, PVE clients, inventory, syncer, router.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use pve::{Auth, PveClient, PveConfig, Secret, Tls};
use sync::{AddressPolicy, AgentDiscovery, ClusterHandle, Inventory, IpDiscovery, SyncConfig, Syncer};

use crate::config::{ClusterSection, Config, IpTiers, WatchKind};
use crate::ipscripts::{ScriptedDiscovery, SweepConfig, TierOptions};

fn read_secret(
    inline: &Option<String>,
    file: &Option<std::path::PathBuf>,
    what: &str,
) -> anyhow::Result<Secret> {
    match (inline, file) {
        (Some(s), _) => Ok(Secret::new(s.clone())),
        (None, Some(f)) => {
            let s = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {what} file {}", f.display()))?;
            Ok(Secret::new(s.trim().to_string()))
        }
        (None, None) => bail!("{what} missing"),
    }
}

/// The PVE client of one `[[cluster]]`.
pub fn client_for(c: &ClusterSection) -> anyhow::Result<PveClient> {
    let url = url::Url::parse(&c.url).with_context(|| format!("cluster {}: url", c.id))?;
    let auth = match (&c.token_id, &c.user) {
        (Some(id), _) => Auth::Token {
            id: id.clone(),
            secret: read_secret(&c.token_secret, &c.token_secret_file, "token_secret")?,
        },
        (None, Some(user)) => Auth::Password {
            user: user.clone(),
            password: read_secret(&c.password, &c.password_file, "password")?,
        },
        (None, None) => bail!("cluster {}: no credentials", c.id),
    };
    let tls = if let Some(fp) = &c.fingerprint {
        Tls::Fingerprint(
            fp.parse()
                .map_err(|e| anyhow::anyhow!("cluster {}: fingerprint: {e}", c.id))?,
        )
    } else if let Some(ca) = &c.ca_file {
        Tls::CaFile(ca.clone())
    } else if c.insecure_skip_verify {
        Tls::InsecureSkipVerify
    } else {
        Tls::SystemRoots
    };
    PveClient::new(PveConfig::new(url, auth, tls)).map_err(|e| anyhow::anyhow!("cluster {}: {e}", c.id))
}

/// Sync settings from the config.
pub fn sync_config(cfg: &Config) -> SyncConfig {
    SyncConfig {
        interval: Duration::from_secs_f64(cfg.sync.interval_secs),
        quorum_interval: Duration::from_secs_f64(cfg.sync.quorum_interval_secs.max(cfg.sync.interval_secs)),
        ip_refresh: Duration::from_secs(cfg.sync.ip_refresh_secs),
        ip_concurrency: cfg.sync.ip_concurrency.max(1),
        address_policy: AddressPolicy {
            allow_ranges: cfg.ip.allow_ranges.clone(),
            prefer_ipv6: cfg.ip.prefer_ipv6,
        },
        ..SyncConfig::default()
    }
}

/// Everything `serve` runs, built from the config.
pub struct System {
    pub store: store::Store,
    pub inventory: Arc<Inventory>,
    pub syncer: Arc<Syncer>,
    /// The script runtime and the current set (IP tiers, RDP; plugins can share them).
    pub scripts: web::connect::Scripts,
    /// The hot reloader of the set (`None` with `[scripts] watch = "off"`).
    pub script_reloader: Option<Arc<script::Reloader<script::ScriptSet>>>,
    /// The script host (PVE clients, inventory, node shells, VM operations), shared by the deployer.
    pub host: Arc<dyn script::Host>,
    /// The VM operations: the one service every power action and revert goes through (web, deployer,
    /// scripts and plugins).
    pub ops: ops::Ops,
}

/// Options of the scripted IP tiers from `[ip]` and `[connect]`.
pub fn tier_options(cfg: &Config) -> TierOptions {
    TierOptions {
        allow_ranges: cfg.ip.allow_ranges.clone(),
        prefer_ipv6: cfg.ip.prefer_ipv6,
        verify: verify_config(cfg),
        sweep: SweepConfig {
            subnets: cfg.ip.arp_subnets.clone(),
            max_hosts: cfg.ip.arp_max_hosts,
            rate_per_sec: cfg.ip.arp_rate_per_sec,
            min_interval: Duration::from_secs(cfg.ip.arp_interval_secs),
            ..SweepConfig::default()
        },
        dial: connect_config(cfg).clusters,
    }
}

fn verify_config(cfg: &Config) -> web::connect::VerifyConfig {
    use crate::config::VerifyMode;
    web::connect::VerifyConfig {
        scope: match cfg.ip.verify {
            VerifyMode::OnLink => web::connect::VerifyScope::OnLink,
            VerifyMode::All => web::connect::VerifyScope::All,
            VerifyMode::Off => web::connect::VerifyScope::Off,
        },
        max_age: Duration::from_secs(cfg.connect.verify_max_age_secs),
        ..web::connect::VerifyConfig::default()
    }
}

/// The connect settings from `[connect]`.
pub fn connect_config(cfg: &Config) -> web::connect::ConnectConfig {
    let c = &cfg.connect;
    let d = web::connect::ConnectConfig::default();
    web::connect::ConnectConfig {
        ssh_port: c.ssh_port,
        ssh_connect_timeout: Duration::from_secs(c.ssh_connect_timeout_secs.max(1)),
        ssh_keepalive: Duration::from_secs(c.ssh_keepalive_secs.max(1)),
        ws_ping_interval: Duration::from_secs(c.ws_ping_secs.max(1)),
        idle_timeout: Duration::from_secs(c.idle_timeout_secs.max(1)),
        login_timeout: Duration::from_secs(c.login_timeout_secs.max(1)),
        max_sessions_per_user: c.max_sessions_per_user.max(1),
        legacy_tag: c.legacy_tag.clone(),
        rdp_script: c.rdp_script.clone(),
        vendor_dir: c.vendor_dir.clone().unwrap_or(d.vendor_dir),
        verify: verify_config(cfg),
        max_terminals_per_user: c.max_terminals_per_user.max(1),
        terminal_connects_per_minute: c.terminal_connects_per_minute.max(1),
        clusters: cfg
            .clusters
            .iter()
            .map(|k| {
                let dial = web::connect::ClusterDial {
                    guest_networks: k.guest_networks.clone(),
                    host_addresses: cluster_host_addresses(k),
                };
                (k.id.clone(), dial)
            })
            .collect(),
        test_ranges: cfg.ip.allow_ranges.clone(),
        ..d
    }
}

/// The addresses of a cluster's API host and its nodes' SSH hosts (names resolved once, here): a guest
/// address equal to one of them is never dialled.
fn cluster_host_addresses(c: &ClusterSection) -> Vec<std::net::IpAddr> {
    use std::net::ToSocketAddrs;
    let mut hosts: Vec<(String, u16)> = Vec::new();
    if let Ok(u) = url::Url::parse(&c.url)
        && let Some(h) = u.host_str()
    {
        hosts.push((
            h.trim_matches(['[', ']']).to_string(),
            u.port_or_known_default().unwrap_or(8006),
        ));
    }
    for n in &c.nodes {
        if !n.local {
            hosts.push((n.ssh_host.clone().unwrap_or_else(|| n.name.clone()), n.ssh_port));
        }
    }
    let mut out = Vec::new();
    for (h, port) in hosts {
        match h.parse::<std::net::IpAddr>() {
            Ok(ip) => out.push(ip),
            Err(_) => match (h.as_str(), port).to_socket_addrs() {
                Ok(addrs) => out.extend(addrs.map(|a| a.ip())),
                Err(e) => tracing::debug!(host = %h, error = %e, "cannot resolve a cluster host"),
            },
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Opens the store and builds the inventory and syncer.
pub fn build(cfg: &Config) -> anyhow::Result<System> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
    let store = store::Store::open(cfg.data_dir.join("db"))?;
    let enabled: Vec<&ClusterSection> = cfg.clusters.iter().filter(|c| c.enabled).collect();
    let names: Vec<(String, String)> = enabled
        .iter()
        .map(|c| (c.id.clone(), c.name.clone().unwrap_or_else(|| c.id.clone())))
        .collect();
    let inventory = Inventory::load(Some(store.clone()), &names)?;
    let mut handles = Vec::new();
    for c in enabled {
        handles.push(ClusterHandle {
            id: c.id.clone(),
            name: c.name.clone().unwrap_or_else(|| c.id.clone()),
            client: client_for(c)?,
        });
    }
    // IP discovery: the scripted tiers (default) or the built-in lookup. The tiers need the script
    // runtime, whose host needs the syncer: the runtime is attached right after.
    let scripted = (cfg.ip.tiers == IpTiers::Scripts)
        .then(|| ScriptedDiscovery::new(tier_options(cfg), inventory.clone()));
    let discovery: Arc<dyn IpDiscovery> = match &scripted {
        Some(s) => s.clone(),
        None => Arc::new(AgentDiscovery),
    };
    let syncer = Syncer::new(inventory.clone(), handles, sync_config(cfg), discovery);
    let handle = tokio::runtime::Handle::try_current().context("the script runtime needs a Tokio runtime")?;
    // Node shells (SSH or local) for the cloner: scripts' ssh:: and qcow2:: reach nodes only here.
    let nodes = crate::cloning::node_ops(cfg, &cloner::SshPool::new())?;
    let ops = ops::Ops::new(
        syncer.clone(),
        ops::OpsConfig {
            per_cluster: cfg.limits.power_per_cluster.max(1),
            ..ops::OpsConfig::default()
        },
    );
    let host = crate::host::ProxlabHost::with_nodes(handle, syncer.clone(), ops.clone(), nodes);
    let script_host: Arc<dyn script::Host> = host.clone();
    let runtime = script::ScriptRuntime::new(script_host.clone(), cfg.scripts.limits.clone());
    let sources = crate::host::sources(cfg);
    let (set, script_reloader): (Arc<dyn web::connect::ScriptSetSource>, _) = match cfg.scripts.watch {
        WatchKind::Off => {
            let set = runtime
                .load_set(&sources)
                .map_err(|e| anyhow::anyhow!("scripts do not load:\n{}", script::format_load_errors(&e)))?;
            (Arc::new(Arc::new(set)), None)
        }
        mode => {
            let dirs = sources.watch_dirs();
            let rc = if mode == WatchKind::Poll {
                script::ReloadConfig::poll(
                    dirs,
                    Duration::from_secs_f64(cfg.scripts.poll_secs.unwrap_or(2.0).max(0.1)),
                )
            } else {
                script::ReloadConfig::new(dirs)
            };
            let (rt2, src2) = (runtime.clone(), sources.clone());
            let reloader = Arc::new(
                script::Reloader::start(rc, move || rt2.load_set(&src2))
                    .map_err(|e| anyhow::anyhow!("scripts do not load: {e}"))?,
            );
            (reloader.clone(), Some(reloader))
        }
    };
    if let Some(s) = &scripted {
        s.attach(runtime.clone(), set.clone());
    }
    Ok(System {
        store,
        inventory,
        syncer,
        scripts: web::connect::Scripts { runtime, set },
        script_reloader,
        host: script_host,
        ops,
    })
}

/// The web layer's auth settings from `[auth]` and `public_url`.
pub fn auth_config(cfg: &Config) -> web::auth::AuthConfig {
    let a = &cfg.auth;
    let public = cfg.public_url.as_deref().and_then(|u| url::Url::parse(u).ok());
    let https = public.as_ref().is_some_and(|u| u.scheme() == "https");
    let throttle = web::auth::ThrottleConfig {
        account_free: a.throttle_account_free,
        account_base_delay: Duration::from_millis(a.throttle_account_base_ms),
        account_max_delay: Duration::from_millis(a.throttle_account_max_ms),
        address_free: a.throttle_address_free,
        address_max_lockout: Duration::from_secs(a.throttle_address_max_secs),
        network_free: a.throttle_network_free,
        global_failures_per_minute: a.throttle_global_failures_per_minute,
        ..web::auth::ThrottleConfig::default()
    };
    web::auth::AuthConfig {
        session_idle_secs: a.session_idle_secs,
        session_absolute_secs: a.session_absolute_secs,
        cookie_secure: a.cookie_secure.unwrap_or(https),
        public_origin: public.map(|u| u.origin().ascii_serialization()),
        realm_admins: a.realm_admins.clone(),
        realm_admin_groups: a.realm_admin_groups.clone(),
        realm_default_role: if a.realm_default_role == "teacher" {
            store::Role::Teacher
        } else {
            store::Role::Student
        },
        realm_cluster: a.realm_cluster.clone(),
        trusted_proxies: a.trusted_proxies.clone(),
        throttle,
        session_sweep_every: Duration::from_secs(a.session_sweep_secs.max(1)),
        ..web::auth::AuthConfig::default()
    }
}

/// `proxlab serve`.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    let sys = build(&cfg)?;
    // Sign-in is always on; without any admin account nobody could run the site, so a server that
    // would be reachable from other machines refuses to start until one exists.
    if !cfg.listen.ip().is_loopback() && !sys.store.admin_exists()? {
        bail!(
            "refusing to listen on {}: no admin account exists yet. Create one first (with the server \
             stopped): `proxlab user add NAME --role admin --config <this proxlab.toml>` — the password is read \
             from stdin or a prompt. A loopback address (127.0.0.0/8 or ::1) works without one.",
            cfg.listen
        );
    }
    let default_cluster = cfg
        .clusters
        .iter()
        .find(|c| c.enabled)
        .map(|c| c.id.clone())
        .unwrap_or_default();
    let auth = web::auth::AuthState::new(sys.store.clone(), auth_config(&cfg));
    // Expired sessions go now, then every `session_sweep_secs` (a background task of the auth state).
    let purged = auth.purge_expired_sessions()?;
    tracing::info!(purged, "expired sessions removed");
    let state = web::AppState::new(
        sys.inventory.clone(),
        sys.syncer.clone(),
        web::WebConfig {
            default_cluster,
            power_concurrency: cfg.limits.power_per_cluster,
            ..web::WebConfig::default()
        },
    )
    .with_ops(sys.ops.clone())
    .with_auth(auth)
    .with_connect(web::connect::ConnectState::new(
        connect_config(&cfg),
        Some(sys.scripts.clone()),
    ));
    let state = match &sys.script_reloader {
        Some(r) => state.with_reload_source("scripts", r.clone()),
        None => state,
    };
    // Themes: the embedded default, overridden file by file by the site theme, hot-reloaded.
    let theme_cfg = theme::ThemeConfig {
        site_dir: cfg.themes.site_dir.clone(),
        watch: match cfg.themes.watch {
            WatchKind::Poll => script::WatchMode::Poll(Duration::from_secs_f64(
                cfg.themes.poll_secs.unwrap_or(2.0).max(0.1),
            )),
            _ => script::WatchMode::Native,
        },
        ..theme::ThemeConfig::default()
    };
    let themes = Arc::new(
        theme::Themes::start(theme_cfg).map_err(|e| anyhow::anyhow!("the site theme does not load: {e}"))?,
    );
    let state = state.with_themes(themes);
    // Deployments: resume or clean up interrupted jobs from the journal BEFORE serving.
    let script_set = sys.scripts.set.clone();
    let deployer = deploy::Deployer::new(
        sys.store.clone(),
        sys.host.clone(),
        Arc::new(move || script_set.current_set()),
        crate::cloning::deploy_config(&cfg),
    )
    .map_err(|e| anyhow::anyhow!("deployments: {e}"))?;
    match deployer.recover().await {
        Ok(report) => tracing::info!(?report, "deploy journal recovered"),
        Err(e) => {
            tracing::error!(error = %e, "deploy journal recovery failed; interrupted jobs stay as they are")
        }
    }
    let state = state.with_deployer(deployer);
    // Class hours and quotas: one runner task, catching up what a restart missed before serving.
    let state = {
        let hours = hours::Hours::start(
            sys.store.clone(),
            state.ops.clone(),
            sys.inventory.clone(),
            hours::system_clock(),
        );
        state.with_hours(hours)
    };
    // Plugins: on_tick on a timer, on_vm_started/stopped from inventory changes.
    let plugin_loops = match &sys.script_reloader {
        Some(r) => crate::plugins::spawn(
            sys.scripts.runtime.clone(),
            r.clone(),
            sys.inventory.clone(),
            sys.store.clone(),
        ),
        None => Vec::new(),
    };
    let connect = state.connect.clone();
    let drain = Duration::from_secs(cfg.connect.shutdown_drain_secs);
    let app = web::app(state);
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let local = listener.local_addr().context("listener address")?;
    let loops = sys.syncer.spawn();
    tracing::info!(listen = %local, clusters = sys.syncer.cluster_ids().len(), "proxlab serving");
    // The first line on stdout names the address (tests and scripts read it; port 0 picks a free one).
    println!("proxlab serving on http://{local}");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown_signal().await;
        // Graceful shutdown: terminals and consoles are upgraded connections the server no longer tracks;
        // tell them to close (1001 "server restarting") and give them a bounded time to do so.
        connect.begin_shutdown();
        let open = connect.drain(drain).await;
        if open > 0 {
            tracing::warn!(open, "terminals/consoles still open after the drain time");
        }
    })
    .await
    .context("server failed")?;
    for l in loops.into_iter().chain(plugin_loops) {
        l.abort();
    }
    sys.store.flush()?;
    tracing::info!("stopped; database flushed");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown requested");
}

/// `proxlab sync --once`: one tick per cluster plus IP lookups; prints a line per cluster; exit 1 if any failed.
pub async fn sync_once(cfg: Config) -> anyhow::Result<ExitCode> {
    if cfg.clusters.is_empty() {
        bail!("no [[cluster]] configured");
    }
    let sys = build(&cfg)?;
    let results = sys.syncer.sync_once().await;
    let snap = sys.inventory.snapshot();
    let mut failed = false;
    println!(
        "{:<16} {:>7} {:>8} {:>8} {:>6}  status",
        "cluster", "guests", "running", "with-ip", "stale"
    );
    for (id, r) in sys.syncer.cluster_ids().iter().zip(results) {
        let st = snap.clusters.get(id).cloned().unwrap_or_default();
        match r {
            Ok(rep) => println!(
                "{:<16} {:>7} {:>8} {:>8} {:>6}  {}{}",
                id,
                rep.guests,
                rep.running,
                st.with_ip,
                rep.stale,
                st.status,
                st.reason.map(|r| format!(" ({r})")).unwrap_or_default()
            ),
            Err(e) => {
                failed = true;
                println!(
                    "{:<16} {:>7} {:>8} {:>8} {:>6}  FAILED: {e}",
                    id, st.guests, st.running, st.with_ip, "-"
                );
            }
        }
    }
    sys.store.flush()?;
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The privileges Proxlab needs on `/vms` (a privilege-separated token without them sees no VMs).
pub const NEEDED_PRIVS: &[&str] = &[
    "VM.Audit",
    "VM.PowerMgmt",
    "VM.Clone",
    "VM.Snapshot",
    "VM.Snapshot.Rollback",
    "VM.Allocate",
    "VM.Config.Disk",
];

/// `proxlab check`: connection, TLS and privileges per cluster, with the fix for each problem.
pub async fn check(cfg: Config) -> anyhow::Result<ExitCode> {
    let mut ok = true;
    for c in &cfg.clusters {
        let client = client_for(c)?;
        match client.version().await {
            Ok(v) => println!("[{}] connected: Proxmox VE {}", c.id, v.version),
            Err(e) => {
                ok = false;
                println!("[{}] cannot connect: {e}", c.id);
                println!(
                    "    fix: check url, ca_file/fingerprint and credentials in [[cluster]] id = {:?}",
                    c.id
                );
                continue;
            }
        }
        match client.permissions().await {
            Ok(p) => {
                let missing = p.missing("/vms", NEEDED_PRIVS);
                if missing.is_empty() {
                    println!("[{}] privileges on /vms: all present", c.id);
                } else {
                    ok = false;
                    let who = c.token_id.clone().or(c.user.clone()).unwrap_or_default();
                    println!("[{}] token lacks {} on /vms", c.id, missing.join(", "));
                    println!(
                        "    fix: pveum acl modify /vms --roles PVEVMAdmin --tokens '{who}'  (privilege-separated tokens \
                         do not inherit the user's rights)"
                    );
                }
            }
            Err(e) => {
                ok = false;
                println!("[{}] cannot read /access/permissions: {e}", c.id);
            }
        }
        if c.guest_networks.is_empty() {
            println!(
                "[{}] warning: guest_networks is empty: the SSH terminal connects only to guest addresses \
                 on this machine's own networks whose ARP entry carries the VM's MAC",
                c.id
            );
            println!(
                "    fix: list the networks of the cluster's guests, e.g. guest_networks = [\"10.20.0.0/16\"] \
                 in [[cluster]] id = {:?}",
                c.id
            );
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
