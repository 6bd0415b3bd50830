//! The sync scheduler: one inventory tick per cluster (`GET /cluster/resources?type=vm`), a slower quorum
//! check (`GET /cluster/status`), and IP discovery for running guests with bounded concurrency and
//! per-VM backoff.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pve::{ClusterResource, GuestKind, PveClient, PveError};
use store::{GuestRecord, IpRecord};
use tokio::sync::{Mutex, Notify, Semaphore};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::address::{AddressPolicy, NicAddresses, choose, parse_addr};
use crate::inventory::{ClusterState, Inventory};

/// Unix time in seconds.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Tuning of the sync.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// Time between inventory ticks per cluster (default 5 s).
    pub interval: Duration,
    /// Time between quorum checks (`/cluster/status`) per cluster (default 15 s).
    pub quorum_interval: Duration,
    /// Age after which a running guest's IP is looked up again (default 60 s).
    pub ip_refresh: Duration,
    /// IP lookups in flight per cluster (default 8).
    pub ip_concurrency: usize,
    /// First backoff after an IP lookup found nothing or failed (default 5 s); doubles up to `ip_backoff_max`.
    pub ip_backoff: Duration,
    /// Longest backoff (default 5 min).
    pub ip_backoff_max: Duration,
    /// Address choice rules.
    pub address_policy: AddressPolicy,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            interval: Duration::from_secs(5),
            quorum_interval: Duration::from_secs(15),
            ip_refresh: Duration::from_secs(60),
            ip_concurrency: 8,
            ip_backoff: Duration::from_secs(5),
            ip_backoff_max: Duration::from_secs(300),
            address_policy: AddressPolicy::default(),
        }
    }
}

/// One configured cluster as the sync sees it.
#[derive(Clone)]
pub struct ClusterHandle {
    /// Cluster id (keys, URLs).
    pub id: String,
    /// Display name.
    pub name: String,
    /// API client for this cluster.
    pub client: PveClient,
}

/// What one tick did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TickReport {
    pub cluster: String,
    pub guests: usize,
    pub running: usize,
    pub with_ip: usize,
    pub stale: usize,
    pub changed: usize,
    pub requests: u64,
    pub duration_ms: u64,
}

/// Errors of a tick.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("unknown cluster {0}")]
    UnknownCluster(String),
    #[error("unknown guest {cluster}/{vmid}")]
    UnknownGuest { cluster: String, vmid: u32 },
    #[error("cluster {cluster}: {source}")]
    Pve { cluster: String, source: PveError },
}

/// Pluggable IP discovery (the seam for the scripted IP tiers). Returns the chosen address or `None`
/// (no usable address yet — not an error).
pub trait IpDiscovery: Send + Sync + 'static {
    /// Looks up `guest`'s address through `client`.
    fn discover<'a>(
        &'a self,
        client: &'a PveClient,
        guest: &'a GuestRecord,
        policy: &'a AddressPolicy,
    ) -> futures::future::BoxFuture<'a, Result<Option<IpRecord>, PveError>>;

    /// True when this discovery can find addresses of QEMU guests without an enabled agent (e.g. an
    /// ARP tier); such guests are then offered to it too. The built-in agent lookup cannot.
    fn handles_agentless(&self) -> bool {
        false
    }
}

/// Built-in discovery: QEMU guest agent (`agent/network-get-interfaces`) for VMs whose config enables
/// the agent, LXC `/interfaces` for containers, then the static `ip=` of an LXC config.
pub struct AgentDiscovery;

impl IpDiscovery for AgentDiscovery {
    fn discover<'a>(
        &'a self,
        client: &'a PveClient,
        guest: &'a GuestRecord,
        policy: &'a AddressPolicy,
    ) -> futures::future::BoxFuture<'a, Result<Option<IpRecord>, PveError>> {
        Box::pin(async move {
            let kind = if guest.kind == "lxc" {
                GuestKind::Lxc
            } else {
                GuestKind::Qemu
            };
            let macs = guest.macs.clone();
            let previous = guest.ip.as_ref().and_then(|ip| ip.address.parse::<IpAddr>().ok());
            let (nics, source) = match kind {
                GuestKind::Qemu => {
                    if guest.agent != Some(true) {
                        return Ok(None);
                    }
                    let ifaces = client.agent_network_interfaces(&guest.node, guest.vmid).await?;
                    let nics = ifaces
                        .into_iter()
                        .map(|i| NicAddresses {
                            name: i.name,
                            mac: i.hardware_address.map(|m| m.to_ascii_lowercase()),
                            addrs: i
                                .ip_addresses
                                .iter()
                                .filter_map(|a| parse_addr(&a.ip_address))
                                .collect(),
                        })
                        .collect::<Vec<_>>();
                    (nics, "guest-agent")
                }
                GuestKind::Lxc => {
                    let ifaces = client.lxc_interfaces(&guest.node, guest.vmid).await?;
                    let mut nics: Vec<NicAddresses> = ifaces
                        .into_iter()
                        .map(|i| {
                            let mut addrs: Vec<IpAddr> = i
                                .ip_addresses
                                .iter()
                                .filter_map(|a| parse_addr(&a.ip_address))
                                .collect();
                            if addrs.is_empty() {
                                addrs.extend(i.inet.as_deref().and_then(parse_addr));
                                addrs.extend(i.inet6.as_deref().and_then(parse_addr));
                            }
                            NicAddresses {
                                mac: i.mac().map(|m| m.to_ascii_lowercase()),
                                name: i.name,
                                addrs,
                            }
                        })
                        .collect();
                    let mut source = "lxc";
                    if choose(&nics, &macs, previous, policy).is_none() {
                        // Static ip= of the config (`/interfaces` answered `data: null`).
                        let config = client.guest_config(&guest.node, kind, guest.vmid).await?;
                        nics = config
                            .nics()
                            .into_iter()
                            .map(|n| NicAddresses {
                                name: format!("net{}", n.index),
                                mac: n.mac.clone(),
                                addrs: n.ip.as_deref().and_then(parse_addr).into_iter().collect(),
                            })
                            .collect();
                        source = "config";
                    }
                    (nics, source)
                }
            };
            Ok(choose(&nics, &macs, previous, policy).map(|c| IpRecord {
                address: c.primary.to_string(),
                all: c.all.iter().map(|a| a.to_string()).collect(),
                source: source.to_string(),
                seen_at: now_secs(),
            }))
        })
    }
}

#[derive(Default, Clone, Copy)]
struct Backoff {
    next_at: Option<Instant>,
    failures: u32,
}

struct ClusterRuntime {
    handle: ClusterHandle,
    trigger: Notify,
    last_quorum_check: Mutex<Option<Instant>>,
    quorate: Mutex<Option<bool>>,
    /// The nodes' cluster addresses from the last `/cluster/status` (relays never dial them).
    node_addresses: Mutex<Vec<String>>,
    requests: AtomicU64,
    failures: AtomicU64,
    ip_semaphore: Arc<Semaphore>,
    backoff: Mutex<HashMap<u32, Backoff>>,
    in_flight: Mutex<std::collections::HashSet<u32>>,
    stale_since: Mutex<Option<u64>>,
    /// Privileges missing on /vms, from the first preflight (`None`: not checked yet).
    missing_privs: Mutex<Option<Vec<String>>>,
}

/// CPU samples kept per running guest: at most one per [`CPU_SAMPLE_EVERY_SECS`], for
/// [`CPU_HISTORY_SECS`]; the history restarts when the guest (re)starts and is dropped when it stops.
pub const CPU_SAMPLE_EVERY_SECS: u64 = 30;
/// How far back CPU samples go (seconds).
pub const CPU_HISTORY_SECS: u64 = 2 * 3600;

/// CPU samples per guest: `(cluster, vmid)` → `(unix s, fraction)` oldest first.
type CpuHistory = HashMap<(String, u32), std::collections::VecDeque<(u64, f64)>>;

/// The sync service for all clusters.
pub struct Syncer {
    cpu_history: std::sync::Mutex<CpuHistory>,
    inventory: Arc<Inventory>,
    clusters: Vec<Arc<ClusterRuntime>>,
    config: SyncConfig,
    discovery: Arc<dyn IpDiscovery>,
}

impl Syncer {
    /// A syncer over `clusters`, writing into `inventory`.
    pub fn new(
        inventory: Arc<Inventory>,
        clusters: Vec<ClusterHandle>,
        config: SyncConfig,
        discovery: Arc<dyn IpDiscovery>,
    ) -> Arc<Syncer> {
        let clusters = clusters
            .into_iter()
            .map(|handle| {
                Arc::new(ClusterRuntime {
                    handle,
                    trigger: Notify::new(),
                    last_quorum_check: Mutex::new(None),
                    quorate: Mutex::new(None),
                    node_addresses: Mutex::new(Vec::new()),
                    requests: AtomicU64::new(0),
                    failures: AtomicU64::new(0),
                    ip_semaphore: Arc::new(Semaphore::new(config.ip_concurrency.max(1))),
                    backoff: Mutex::new(HashMap::new()),
                    in_flight: Mutex::new(Default::default()),
                    stale_since: Mutex::new(None),
                    missing_privs: Mutex::new(None),
                })
            })
            .collect();
        Arc::new(Syncer {
            cpu_history: Default::default(),
            inventory,
            clusters,
            config,
            discovery,
        })
    }

    /// The inventory this syncer writes.
    pub fn inventory(&self) -> &Arc<Inventory> {
        &self.inventory
    }

    /// CPU samples `(unix s, fraction 0..1)` of a running guest since its last start, oldest first, at
    /// most one per [`CPU_SAMPLE_EVERY_SECS`]; empty for a stopped guest.
    pub fn cpu_samples(&self, cluster: &str, vmid: u32) -> Vec<(u64, f64)> {
        let history = self.cpu_history.lock().unwrap_or_else(|e| e.into_inner());
        history
            .get(&(cluster.to_string(), vmid))
            .map(|h| h.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The configuration in use.
    pub fn config(&self) -> &SyncConfig {
        &self.config
    }

    /// The API client of cluster `id`.
    pub fn client(&self, id: &str) -> Option<&PveClient> {
        self.cluster(id).map(|c| &c.handle.client)
    }

    /// Ids of all clusters, in configuration order.
    pub fn cluster_ids(&self) -> Vec<String> {
        self.clusters.iter().map(|c| c.handle.id.clone()).collect()
    }

    fn cluster(&self, id: &str) -> Option<&Arc<ClusterRuntime>> {
        self.clusters.iter().find(|c| c.handle.id == id)
    }

    /// Wakes every cluster's loop for an immediate tick.
    pub fn trigger(&self) {
        for c in &self.clusters {
            c.trigger.notify_one();
        }
    }

    /// Runs one tick for every cluster concurrently, then waits for the IP lookups it started
    /// (used by `proxlab sync --once`).
    pub async fn sync_once(self: &Arc<Self>) -> Vec<Result<TickReport, SyncError>> {
        let ticks = self.clusters.iter().map(|c| {
            let this = self.clone();
            let c = c.clone();
            async move {
                let r = this.tick(&c, true).await;
                this.discover_ips(&c, true).await;
                match r {
                    Ok(mut rep) => {
                        let snap = this.inventory.snapshot();
                        if let Some(st) = snap.clusters.get(&c.handle.id) {
                            rep.with_ip = st.with_ip;
                            rep.requests = c.requests.load(Ordering::Relaxed);
                        }
                        Ok(rep)
                    }
                    Err(e) => Err(e),
                }
            }
        });
        futures::future::join_all(ticks).await
    }

    /// Starts one background loop per cluster; they end when `shutdown` is notified... or the runtime stops.
    pub fn spawn(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        self.clusters
            .iter()
            .map(|c| {
                let this = self.clone();
                let c = c.clone();
                let span = info_span!("sync", cluster = %c.handle.id);
                tokio::spawn(
                    async move {
                        // A tick asked for by a user (trigger) also re-checks quorum at once.
                        let mut forced = true;
                        loop {
                            if let Err(e) = this.tick(&c, forced).await {
                                debug!(error = %e, "tick failed");
                            }
                            let bg = this.clone();
                            let cc = c.clone();
                            tokio::spawn(async move { bg.discover_ips(&cc, false).await });
                            forced = tokio::select! {
                                _ = tokio::time::sleep(this.config.interval) => false,
                                _ = c.trigger.notified() => true,
                            };
                        }
                    }
                    .instrument(span),
                )
            })
            .collect()
    }

    /// One inventory tick of cluster `id`; with `check_quorum` the quorum check runs too (else only
    /// when its interval is due — the plain tick is exactly one PVE request).
    pub async fn tick_cluster(
        self: &Arc<Self>,
        id: &str,
        check_quorum: bool,
    ) -> Result<TickReport, SyncError> {
        let c = self
            .cluster(id)
            .ok_or_else(|| SyncError::UnknownCluster(id.into()))?
            .clone();
        self.tick(&c, check_quorum).await
    }

    async fn tick(&self, c: &ClusterRuntime, force_quorum: bool) -> Result<TickReport, SyncError> {
        let started = Instant::now();
        let id = c.handle.id.clone();
        let mut requests = 0u64;
        // Quorum check on its own, slower cadence.
        let due = {
            let last = c.last_quorum_check.lock().await;
            force_quorum || last.is_none_or(|t| t.elapsed() >= self.config.quorum_interval)
        };
        if due {
            requests += 1;
            match c.handle.client.cluster_status().await {
                Ok(entries) => {
                    let q = entries
                        .iter()
                        .find(|e| e.kind == "cluster")
                        .and_then(|e| e.quorate);
                    // A single node without a cluster entry is quorate by definition.
                    *c.quorate.lock().await = Some(q.unwrap_or(true));
                    let mut ips: Vec<String> = entries
                        .iter()
                        .filter(|e| e.kind == "node")
                        .filter_map(|e| e.ip.clone())
                        .collect();
                    ips.sort();
                    ips.dedup();
                    *c.node_addresses.lock().await = ips;
                }
                Err(e) => debug!(error = %e, "quorum check failed"),
            }
            *c.last_quorum_check.lock().await = Some(Instant::now());
        }
        requests += 1;
        let result = c.handle.client.cluster_resources().await;
        c.requests.fetch_add(requests, Ordering::Relaxed);
        let now = now_secs();
        let prev_state = self
            .inventory
            .snapshot()
            .clusters
            .get(&id)
            .cloned()
            .unwrap_or_default();
        let mut state = ClusterState {
            id: id.clone(),
            name: c.handle.name.clone(),
            last_tick_at: Some(now),
            last_ok_at: prev_state.last_ok_at,
            requests_total: c.requests.load(Ordering::Relaxed),
            requests_last_tick: requests,
            failures_total: c.failures.load(Ordering::Relaxed),
            quorate: *c.quorate.lock().await,
            node_addresses: c.node_addresses.lock().await.clone(),
            ..Default::default()
        };
        let resources = match result {
            Ok(r) => r,
            Err(e) => {
                c.failures.fetch_add(1, Ordering::Relaxed);
                let since = {
                    let mut s = c.stale_since.lock().await;
                    *s.get_or_insert(now)
                };
                state.status = "stale".into();
                state.reason = Some(format!("cannot reach the cluster: {e}"));
                state.stale_since = Some(since);
                state.failures_total += 1;
                state.last_duration_ms = started.elapsed().as_millis() as u64;
                warn!(cluster = %id, error = %e, "inventory tick failed; keeping the last inventory");
                self.inventory.set_cluster_state(state).await;
                return Err(SyncError::Pve {
                    cluster: id,
                    source: e,
                });
            }
        };
        let snap = self.inventory.snapshot();
        let mut offline_nodes = std::collections::BTreeSet::new();
        let mut guests = Vec::with_capacity(resources.len());
        let mut stale_guests = 0;
        {
            let mut history = self.cpu_history.lock().unwrap_or_else(|e| e.into_inner());
            for r in resources {
                let old = snap.guest(&id, r.vmid).map(|g| g.as_ref());
                let g = merge(&id, r, old, now, &mut offline_nodes);
                if g.stale.is_some() {
                    stale_guests += 1;
                }
                record_cpu(&mut history, &g, old, now);
                guests.push(g);
            }
        }
        state.offline_nodes = offline_nodes.into_iter().collect();
        // Preflight (a privilege-separated token sees nothing): once per start, and again while the list is
        // empty, check the privileges; a privilege-separated token without VM.Audit sees an empty list, not
        // an error.
        let must_check = guests.is_empty() || c.missing_privs.lock().await.is_none();
        if must_check {
            requests += 1;
            c.requests.fetch_add(1, Ordering::Relaxed);
            match c.handle.client.permissions().await {
                Ok(p) => *c.missing_privs.lock().await = Some(p.missing("/vms", pve::REQUIRED_VM_PRIVILEGES)),
                Err(e) => debug!(error = %e, "permission preflight failed"),
            }
        }
        if let Some(missing) = c.missing_privs.lock().await.as_ref()
            && !missing.is_empty()
        {
            state
                .warnings
                .push(format!("token lacks {} on /vms", missing.join(", ")));
        }
        if guests.is_empty() {
            state.warnings.push("no VMs visible to this token".into());
        }
        let no_quorum = state.quorate == Some(false);
        if no_quorum {
            let since = {
                let mut s = c.stale_since.lock().await;
                *s.get_or_insert(now)
            };
            state.status = "stale".into();
            state.reason =
                Some("cluster has no quorum: configuration is read-only and may be out of date".into());
            state.stale_since = Some(since);
        } else {
            *c.stale_since.lock().await = None;
            state.last_ok_at = Some(now);
            if state.offline_nodes.is_empty() {
                state.status = "ok".into();
            } else {
                state.status = "partial".into();
                state.reason = Some(format!("node(s) offline: {}", state.offline_nodes.join(", ")));
            }
        }
        state.last_duration_ms = started.elapsed().as_millis() as u64;
        let changed = self.inventory.replace_cluster(&id, guests, state).await;
        let snap = self.inventory.snapshot();
        let st = snap.clusters.get(&id).cloned().unwrap_or_default();
        if st.status != prev_state.status {
            info!(cluster = %id, status = %st.status, reason = ?st.reason, "cluster sync state changed");
        }
        Ok(TickReport {
            cluster: id,
            guests: st.guests,
            running: st.running,
            with_ip: st.with_ip,
            stale: stale_guests,
            changed,
            requests,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Starts IP lookups for running guests that need one; with `wait`, waits for them.
    async fn discover_ips(self: &Arc<Self>, c: &Arc<ClusterRuntime>, wait: bool) {
        let snap = self.inventory.snapshot();
        let now = now_secs();
        let refresh = self.config.ip_refresh.as_secs();
        let mut tasks = Vec::new();
        for g in snap.cluster_guests(&c.handle.id) {
            let agentless_skip =
                g.agent == Some(false) && g.kind == "qemu" && !self.discovery.handles_agentless();
            if g.status != "running" || g.template || g.stale.is_some() || agentless_skip {
                continue;
            }
            if g.ip
                .as_ref()
                .is_some_and(|ip| now.saturating_sub(ip.seen_at) < refresh)
            {
                continue;
            }
            {
                let b = c.backoff.lock().await;
                if b.get(&g.vmid)
                    .and_then(|b| b.next_at)
                    .is_some_and(|t| t > Instant::now())
                {
                    continue;
                }
            }
            if !c.in_flight.lock().await.insert(g.vmid) {
                continue;
            }
            let this = self.clone();
            let c2 = c.clone();
            let vmid = g.vmid;
            tasks.push(tokio::spawn(async move {
                let _ = this.lookup_ip(&c2, vmid).await;
                c2.in_flight.lock().await.remove(&vmid);
            }));
        }
        if wait {
            futures::future::join_all(tasks).await;
        }
    }

    async fn lookup_ip(&self, c: &ClusterRuntime, vmid: u32) -> Option<IpRecord> {
        let _permit = c.ip_semaphore.clone().acquire_owned().await.ok()?;
        let mut guest = self.inventory.snapshot().guest(&c.handle.id, vmid)?.clone();
        if guest.status != "running" {
            return None;
        }
        // Agent flag and MACs first: one config read per start, cached in the inventory, so VMs
        // without an enabled agent never get agent calls.
        if guest.agent.is_none() {
            let kind = if guest.kind == "lxc" {
                GuestKind::Lxc
            } else {
                GuestKind::Qemu
            };
            c.requests.fetch_add(1, Ordering::Relaxed);
            match c.handle.client.guest_config(&guest.node, kind, vmid).await {
                Ok(config) => {
                    let agent = kind == GuestKind::Lxc || config.agent_enabled();
                    let macs: Vec<(u32, String)> = config
                        .nics()
                        .into_iter()
                        .filter_map(|n| n.mac.map(|m| (n.index, m.to_ascii_lowercase())))
                        .collect();
                    let mac = macs.iter().min_by_key(|(i, _)| *i).map(|(_, m)| m.clone());
                    guest = self
                        .inventory
                        .update_guest(&c.handle.id, vmid, move |g| {
                            g.agent = Some(agent);
                            g.mac = mac;
                            g.macs = macs;
                        })
                        .await?;
                }
                Err(e) => {
                    debug!(vmid, error = %e, "config read failed");
                    let mut b = c.backoff.lock().await;
                    let e = b.entry(vmid).or_default();
                    e.failures += 1;
                    e.next_at = Some(Instant::now() + self.config.ip_backoff);
                    return None;
                }
            }
            if guest.agent == Some(false) && !self.discovery.handles_agentless() {
                return None;
            }
        }
        c.requests.fetch_add(1, Ordering::Relaxed);
        let found = self
            .discovery
            .discover(&c.handle.client, &guest, &self.config.address_policy)
            .await;
        let mut b = c.backoff.lock().await;
        match found {
            Ok(Some(ip)) => {
                b.remove(&vmid);
                drop(b);
                let ip2 = ip.clone();
                self.inventory
                    .update_guest(&c.handle.id, vmid, move |g| {
                        if g.status == "running" {
                            g.ip = Some(ip2);
                        }
                    })
                    .await;
                Some(ip)
            }
            other => {
                let e = b.entry(vmid).or_default();
                e.failures += 1;
                let delay = self
                    .config
                    .ip_backoff
                    .saturating_mul(1 << e.failures.min(10).saturating_sub(1));
                e.next_at = Some(Instant::now() + delay.min(self.config.ip_backoff_max));
                if let Err(err) = other {
                    debug!(vmid, error = %err, "ip lookup failed; backing off");
                }
                None
            }
        }
    }

    /// Re-reads one guest right away (`GET …/status/current`), e.g. after its start task ended, and
    /// publishes the change; then chases its IP with short backoff in the background.
    pub async fn refresh_guest(
        self: &Arc<Self>,
        cluster: &str,
        vmid: u32,
    ) -> Result<Arc<GuestRecord>, SyncError> {
        let c = self
            .cluster(cluster)
            .ok_or_else(|| SyncError::UnknownCluster(cluster.into()))?
            .clone();
        let guest = self
            .inventory
            .snapshot()
            .guest(cluster, vmid)
            .cloned()
            .ok_or_else(|| SyncError::UnknownGuest {
                cluster: cluster.into(),
                vmid,
            })?;
        let kind = if guest.kind == "lxc" {
            GuestKind::Lxc
        } else {
            GuestKind::Qemu
        };
        c.requests.fetch_add(1, Ordering::Relaxed);
        let st = c
            .handle
            .client
            .guest_status(&guest.node, kind, vmid)
            .await
            .map_err(|e| SyncError::Pve {
                cluster: cluster.into(),
                source: e,
            })?;
        let now = now_secs();
        let updated = self
            .inventory
            .update_guest(cluster, vmid, |g| {
                g.status = st.status.clone();
                g.qmpstatus = st.qmpstatus.clone();
                g.lock = st.lock.clone();
                g.state = display_state(&g.status, g.qmpstatus.as_deref(), g.lock.as_deref()).into();
                g.uptime = st.uptime;
                g.cpu = st.cpu;
                g.mem = st.mem;
                g.synced_at = now;
                g.stale = None;
                if g.status != "running" {
                    g.ip = None;
                }
            })
            .await
            .ok_or_else(|| SyncError::UnknownGuest {
                cluster: cluster.into(),
                vmid,
            })?;
        if updated.status == "running" && updated.ip.is_none() {
            c.backoff.lock().await.remove(&vmid);
            let this = self.clone();
            tokio::spawn(async move { this.chase_ip(c, vmid).await });
        }
        Ok(updated)
    }

    /// Looks for a freshly started guest's IP with short backoff (0.5 s doubling to 8 s, ~2 min total).
    async fn chase_ip(&self, c: Arc<ClusterRuntime>, vmid: u32) {
        let mut delay = Duration::from_millis(250);
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            match self.inventory.snapshot().guest(&c.handle.id, vmid) {
                Some(g) if g.status == "running" && g.ip.is_none() => {}
                _ => return,
            }
            if self.lookup_ip(&c, vmid).await.is_some() {
                return;
            }
            c.backoff.lock().await.remove(&vmid);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(8));
        }
    }
}

fn record_cpu(history: &mut CpuHistory, g: &GuestRecord, old: Option<&GuestRecord>, now: u64) {
    let key = (g.cluster.clone(), g.vmid);
    if g.status != "running" || g.stale.is_some() {
        if g.stale.is_none() {
            history.remove(&key);
        }
        return;
    }
    let restarted = old.is_none_or(|o| o.status != "running" || g.uptime < o.uptime);
    let h = history.entry(key).or_default();
    if restarted {
        h.clear();
    }
    if h.back()
        .is_none_or(|(t, _)| now.saturating_sub(*t) >= CPU_SAMPLE_EVERY_SECS)
    {
        h.push_back((now, g.cpu));
    }
    while h
        .front()
        .is_some_and(|(t, _)| now.saturating_sub(*t) > CPU_HISTORY_SECS)
    {
        h.pop_front();
    }
}

/// Display state of a guest from PVE's fields: `paused` for a running VM whose QMP status is
/// paused, `hibernated` for a stopped VM locked `suspended`, else the status.
pub fn display_state(status: &str, qmpstatus: Option<&str>, lock: Option<&str>) -> &'static str {
    match (status, qmpstatus, lock) {
        ("running", Some("paused") | Some("suspended") | Some("prelaunch"), _) => "paused",
        ("stopped", _, Some("suspended")) => "hibernated",
        ("running", _, _) => "running",
        ("stopped", _, _) => "stopped",
        _ => "unknown",
    }
}

/// Builds the inventory record of one `/cluster/resources` row, keeping what only earlier lookups
/// know (MAC, agent flag, IP) and the last known state when the node is unreachable.
fn merge(
    cluster: &str,
    r: ClusterResource,
    old: Option<&GuestRecord>,
    now: u64,
    offline_nodes: &mut std::collections::BTreeSet<String>,
) -> GuestRecord {
    if r.status == "unknown" {
        // The node does not answer: keep the last known record, marked stale (one node down never fails the
        // whole sync).
        offline_nodes.insert(r.node.clone());
        let reason = format!("node {} is not reachable; last known state shown", r.node);
        return match old {
            Some(o) => GuestRecord {
                stale: Some(reason),
                node: r.node,
                ..o.clone()
            },
            None => GuestRecord {
                cluster: cluster.into(),
                vmid: r.vmid,
                node: r.node,
                name: r.name.unwrap_or_default(),
                kind: r.kind.as_str().into(),
                status: "unknown".into(),
                state: "unknown".into(),
                template: r.template,
                tags: r.tags.iter().map(|t| t.to_string()).collect(),
                stale: Some(reason),
                synced_at: now,
                ..Default::default()
            },
        };
    }
    let state = display_state(&r.status, None, r.lock.as_deref());
    let running = r.status == "running";
    let keep_ip = old
        .filter(|o| running && o.status == "running" && o.node == r.node)
        .and_then(|o| o.ip.clone());
    GuestRecord {
        cluster: cluster.into(),
        vmid: r.vmid,
        node: r.node.clone(),
        name: r.name.unwrap_or_default(),
        kind: r.kind.as_str().into(),
        status: r.status.clone(),
        qmpstatus: old
            .filter(|o| o.status == r.status)
            .and_then(|o| o.qmpstatus.clone()),
        state: state.into(),
        lock: r.lock,
        template: r.template,
        tags: r.tags.iter().map(|t| t.to_string()).collect(),
        pool: r.pool,
        cpus: r.maxcpu,
        cpu: r.cpu,
        mem: r.mem,
        maxmem: r.maxmem,
        maxdisk: r.maxdisk,
        uptime: r.uptime,
        mac: old.and_then(|o| o.mac.clone()),
        macs: old.map(|o| o.macs.clone()).unwrap_or_default(),
        // Re-read the config (agent flag, MACs) whenever the guest (re)starts.
        agent: old
            .filter(|o| !(running && o.status != "running"))
            .and_then(|o| o.agent),
        ip: keep_ip,
        synced_at: now,
        stale: None,
    }
}

#[cfg(test)]
mod tests {
    use super::display_state;

    #[test]
    fn paused_and_hibernated_are_told_apart_from_running_and_stopped() {
        assert_eq!(display_state("running", Some("paused"), None), "paused");
        assert_eq!(display_state("stopped", None, Some("suspended")), "hibernated");
        // The cluster listing has no qmpstatus: fall back to status.
        assert_eq!(display_state("running", None, None), "running");
        assert_eq!(display_state("stopped", None, Some("backup")), "stopped");
        assert_eq!(display_state("unknown", None, None), "unknown");
    }
}
