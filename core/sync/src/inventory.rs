//! The in-memory inventory: an immutable snapshot swapped atomically on every change, backed by the
//! store's `inventory` tree, with change events fanned out on a broadcast channel.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use serde::Serialize;
use store::{GuestRecord, Store, vm_key};
use tokio::sync::{Mutex, broadcast};

use crate::discovery::GuestFacts;

/// Identifies a guest across clusters: `(cluster id, VMID)`.
pub type GuestKey = (String, u32);

/// Sync health of one cluster, as shown by `/health` and `/api/sync/status`.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ClusterState {
    /// Cluster id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// `ok`, `partial` (some nodes offline), `stale` (last sync failed or no quorum) or `never` (no sync yet).
    pub status: String,
    /// Why the cluster is stale or partial, in plain words (PVE's own message where there is one).
    pub reason: Option<String>,
    /// Since when the inventory of this cluster is stale (Unix s).
    pub stale_since: Option<u64>,
    /// Last successful inventory fetch (Unix s).
    pub last_ok_at: Option<u64>,
    /// Last tick, successful or not (Unix s).
    pub last_tick_at: Option<u64>,
    /// Duration of the last tick, milliseconds.
    pub last_duration_ms: u64,
    /// Nodes that PVE reports offline (their guests show `unknown`; their last known state is kept).
    pub offline_nodes: Vec<String>,
    /// Quorum as last seen by `/cluster/status` (`None` before the first check).
    pub quorate: Option<bool>,
    /// The nodes' cluster addresses as `/cluster/status` reports them (terminals never dial them).
    /// Kept out of every JSON answer: `/health` is public.
    #[serde(skip)]
    pub node_addresses: Vec<String>,
    /// Guests (VMs and containers, templates included).
    pub guests: usize,
    /// Running guests.
    pub running: usize,
    /// Running guests with a known IP.
    pub with_ip: usize,
    /// Templates.
    pub templates: usize,
    /// PVE requests made by the sync for this cluster since start.
    pub requests_total: u64,
    /// PVE requests made by the last inventory tick.
    pub requests_last_tick: u64,
    /// Failed ticks since start.
    pub failures_total: u64,
    /// Problems an admin must fix that do not stop the sync, e.g. `token lacks VM.Audit on /vms` (a
    /// privilege-separated token), or `no VMs visible to this token` for an empty inventory.
    pub warnings: Vec<String>,
}

impl ClusterState {
    /// True when the cluster's inventory is not current.
    pub fn is_stale(&self) -> bool {
        self.status == "stale" || self.status == "never"
    }
}

/// A change of the inventory, as sent to SSE clients (`GET /api/events`).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A guest was added or changed; carries the new record.
    Guest { guest: Arc<GuestRecord> },
    /// A guest disappeared from its cluster.
    GuestRemoved { cluster: String, vmid: u32 },
    /// A cluster's sync state changed.
    Cluster { state: Box<ClusterState> },
}

/// One immutable view of the whole inventory.
#[derive(Default)]
pub struct Snapshot {
    /// Every guest of every cluster, by `(cluster, vmid)`.
    pub guests: BTreeMap<GuestKey, Arc<GuestRecord>>,
    /// Sync state per cluster id.
    pub clusters: BTreeMap<String, ClusterState>,
    /// Monotonic version, bumped on every swap that changes a guest or a cluster.
    pub version: u64,
    /// What discovery learned per guest (address verification, OS type), beside its record; not part
    /// of the guest list JSON.
    pub facts: BTreeMap<GuestKey, GuestFacts>,
    views: OnceLock<BTreeMap<Option<String>, CachedJson>>,
}

/// A guest list pre-serialized once per snapshot: the JSON array and its gzip encoding.
#[derive(Clone)]
pub struct CachedJson {
    /// `[GuestRecord, ...]` as JSON.
    pub json: Arc<[u8]>,
    /// The same bytes gzip-compressed (fast level), for clients that accept gzip.
    pub gzip: Arc<[u8]>,
    /// Strong entity tag: `"<snapshot version>-<scope>"`; changes whenever the inventory changes.
    pub etag: String,
}

impl Snapshot {
    /// The guest `vmid` of `cluster`.
    pub fn guest(&self, cluster: &str, vmid: u32) -> Option<&Arc<GuestRecord>> {
        self.guests.get(&(cluster.to_string(), vmid))
    }

    /// What discovery learned about guest `vmid` of `cluster` (default when nothing yet).
    pub fn facts(&self, cluster: &str, vmid: u32) -> GuestFacts {
        self.facts
            .get(&(cluster.to_string(), vmid))
            .cloned()
            .unwrap_or_default()
    }

    /// Guests of one cluster, in VMID order.
    pub fn cluster_guests<'a>(&'a self, cluster: &'a str) -> impl Iterator<Item = &'a Arc<GuestRecord>> + 'a {
        self.guests
            .range((cluster.to_string(), 0)..=(cluster.to_string(), u32::MAX))
            .map(|(_, g)| g)
    }

    /// The JSON array of every guest (`[GuestRecord, ...]`), built once per snapshot and shared by all
    /// readers, so the admin view of thousands of guests costs one serialization per change, not per request.
    pub fn all_guests_json(&self) -> Arc<[u8]> {
        self.guests_view(None)
            .map(|v| v.json)
            .unwrap_or_else(|| Arc::from(&b"[]"[..]))
    }

    /// The cached guest list of one cluster (`Some(id)`) or of all clusters (`None`), with its gzip
    /// form and entity tag; `None` for an unknown cluster. All views are built together on first use
    /// after a change (one serialization and one compression per view per inventory change).
    pub fn guests_view(&self, cluster: Option<&str>) -> Option<CachedJson> {
        let views = self.views.get_or_init(|| {
            let mut out = BTreeMap::new();
            let all: Vec<&GuestRecord> = self.guests.values().map(|g| g.as_ref()).collect();
            out.insert(None, cache_json(&all, self.version, "all"));
            for id in self.clusters.keys() {
                let list: Vec<&GuestRecord> = self.cluster_guests(id).map(|g| g.as_ref()).collect();
                out.insert(Some(id.clone()), cache_json(&list, self.version, id));
            }
            out
        });
        views.get(&cluster.map(str::to_string)).cloned()
    }
}

/// The inventory: readers take [`Inventory::snapshot`] (lock-free); writers go through the methods
/// below, which persist to the store, swap the snapshot and publish [`Event`]s.
pub struct Inventory {
    current: ArcSwap<Snapshot>,
    events: broadcast::Sender<Event>,
    write: Mutex<()>,
    store: Option<Store>,
}

impl Inventory {
    /// An inventory loaded from the store's `inventory` tree (the last known state, served at once
    /// after a restart), or empty without a store. `clusters` gives id → display name of the
    /// configured clusters; their state starts as `never`.
    pub fn load(
        store: Option<Store>,
        clusters: &[(String, String)],
    ) -> Result<Arc<Inventory>, store::StoreError> {
        let mut snap = Snapshot::default();
        if let Some(s) = &store {
            for item in s.inventory.iter() {
                let (_, g) = item?;
                snap.guests.insert((g.cluster.clone(), g.vmid), Arc::new(g));
            }
        }
        for (id, name) in clusters {
            let mut st = ClusterState {
                id: id.clone(),
                name: name.clone(),
                status: "never".into(),
                reason: Some("no sync yet since start".into()),
                ..Default::default()
            };
            recount(&mut st, snap.cluster_guests(id));
            snap.clusters.insert(id.clone(), st);
        }
        let (events, _) = broadcast::channel(4096);
        Ok(Arc::new(Inventory {
            current: ArcSwap::from_pointee(snap),
            events,
            write: Mutex::new(()),
            store,
        }))
    }

    /// The current snapshot (cheap: an `Arc` clone).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Subscribes to change events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The store behind the inventory, if any.
    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// Replaces the guests of `cluster` with `guests` and sets its state; persists the difference and
    /// publishes one event per changed or removed guest plus the cluster state. Returns the number of
    /// changed guests.
    pub async fn replace_cluster(
        &self,
        cluster: &str,
        guests: Vec<GuestRecord>,
        mut state: ClusterState,
    ) -> usize {
        let _w = self.write.lock().await;
        let old = self.current.load_full();
        let mut next = clone_without_cache(&old);
        let mut seen = std::collections::BTreeSet::new();
        let mut changed: Vec<Arc<GuestRecord>> = Vec::new();
        for g in guests {
            seen.insert(g.vmid);
            let key = (cluster.to_string(), g.vmid);
            let differs = match old.guests.get(&key) {
                Some(prev) => !same_ignoring_sync_time(prev, &g),
                None => true,
            };
            let g = Arc::new(g);
            if differs {
                changed.push(g.clone());
            }
            next.guests.insert(key, g);
        }
        let removed: Vec<u32> = old
            .cluster_guests(cluster)
            .map(|g| g.vmid)
            .filter(|vmid| !seen.contains(vmid))
            .collect();
        for vmid in &removed {
            next.guests.remove(&(cluster.to_string(), *vmid));
            next.facts.remove(&(cluster.to_string(), *vmid));
        }
        recount(&mut state, next.cluster_guests(cluster));
        let state_changed = old
            .clusters
            .get(cluster)
            .map(|s| !same_state(s, &state))
            .unwrap_or(true);
        next.clusters.insert(cluster.to_string(), state.clone());
        self.persist(&changed, cluster, &removed);
        next.version = old.version + 1;
        self.current.store(Arc::new(next));
        for g in &changed {
            let _ = self.events.send(Event::Guest { guest: g.clone() });
        }
        for vmid in removed {
            let _ = self.events.send(Event::GuestRemoved {
                cluster: cluster.to_string(),
                vmid,
            });
        }
        if state_changed {
            let _ = self.events.send(Event::Cluster {
                state: Box::new(state),
            });
        }
        changed.len()
    }

    /// Sets a cluster's state only (e.g. stale after a failed tick), keeping its guests.
    pub async fn set_cluster_state(&self, mut state: ClusterState) {
        let _w = self.write.lock().await;
        let old = self.current.load_full();
        let mut next = clone_without_cache(&old);
        let id = state.id.clone();
        recount(&mut state, next.cluster_guests(&id));
        let changed = old
            .clusters
            .get(&state.id)
            .map(|s| !same_state(s, &state))
            .unwrap_or(true);
        next.clusters.insert(state.id.clone(), state.clone());
        next.version = old.version + 1;
        self.current.store(Arc::new(next));
        if changed {
            let _ = self.events.send(Event::Cluster {
                state: Box::new(state),
            });
        }
    }

    /// Applies `f` to what discovery knows of one guest ([`Snapshot::facts`]). The guest list, its
    /// cached JSON and the version stay as they are (facts are not part of the list); no event.
    pub async fn update_facts(&self, cluster: &str, vmid: u32, f: impl FnOnce(&mut GuestFacts)) {
        let _w = self.write.lock().await;
        let old = self.current.load_full();
        let key = (cluster.to_string(), vmid);
        let mut facts = old.facts.get(&key).cloned().unwrap_or_default();
        f(&mut facts);
        if old.facts.get(&key) == Some(&facts) {
            return;
        }
        let mut next = Snapshot {
            guests: old.guests.clone(),
            clusters: old.clusters.clone(),
            version: old.version,
            facts: old.facts.clone(),
            views: old.views.clone(),
        };
        next.facts.insert(key, facts);
        self.current.store(Arc::new(next));
    }

    /// Applies `f` to one guest (if present) and publishes the change. Returns the new record.
    pub async fn update_guest(
        &self,
        cluster: &str,
        vmid: u32,
        f: impl FnOnce(&mut GuestRecord),
    ) -> Option<Arc<GuestRecord>> {
        let _w = self.write.lock().await;
        let old = self.current.load_full();
        let prev = old.guest(cluster, vmid)?;
        let mut g = GuestRecord::clone(prev);
        f(&mut g);
        if same_ignoring_sync_time(prev, &g) && prev.synced_at == g.synced_at {
            return Some(prev.clone());
        }
        let notify = !same_ignoring_sync_time(prev, &g);
        let g = Arc::new(g);
        let mut next = clone_without_cache(&old);
        next.guests.insert((cluster.to_string(), vmid), g.clone());
        if let Some(mut st) = next.clusters.get(cluster).cloned() {
            recount(&mut st, next.cluster_guests(cluster));
            next.clusters.insert(cluster.to_string(), st);
        }
        next.version = old.version + 1;
        self.persist(std::slice::from_ref(&g), cluster, &[]);
        self.current.store(Arc::new(next));
        if notify {
            let _ = self.events.send(Event::Guest { guest: g.clone() });
        }
        Some(g)
    }

    fn persist(&self, changed: &[Arc<GuestRecord>], cluster: &str, removed: &[u32]) {
        let Some(store) = &self.store else { return };
        let mut changes: Vec<(String, Option<&GuestRecord>)> = changed
            .iter()
            .map(|g| (vm_key(&g.cluster, g.vmid), Some(g.as_ref())))
            .collect();
        changes.extend(removed.iter().map(|vmid| (vm_key(cluster, *vmid), None)));
        if let Err(e) = store.inventory.apply(&changes) {
            tracing::error!(error = %e, cluster, "cannot persist inventory changes");
        }
    }
}

fn cache_json(list: &[&GuestRecord], version: u64, scope: &str) -> CachedJson {
    use std::io::Write;
    let json = serde_json::to_vec(list).unwrap_or_else(|_| b"[]".to_vec());
    let mut enc =
        flate2::write::GzEncoder::new(Vec::with_capacity(json.len() / 8), flate2::Compression::fast());
    let gzip = enc
        .write_all(&json)
        .and_then(|_| enc.finish())
        .unwrap_or_default();
    let scope: String = scope
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    // The boot time makes tags from an earlier process never match this one's.
    static BOOT: OnceLock<u128> = OnceLock::new();
    let boot = BOOT.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    });
    CachedJson {
        json: json.into(),
        gzip: gzip.into(),
        etag: format!("\"{boot:x}-{version}-{scope}\""),
    }
}

fn clone_without_cache(s: &Snapshot) -> Snapshot {
    Snapshot {
        guests: s.guests.clone(),
        clusters: s.clusters.clone(),
        version: s.version,
        facts: s.facts.clone(),
        views: OnceLock::new(),
    }
}

fn recount<'a>(st: &mut ClusterState, guests: impl Iterator<Item = &'a Arc<GuestRecord>>) {
    let (mut n, mut running, mut with_ip, mut templates) = (0, 0, 0, 0);
    for g in guests {
        n += 1;
        if g.template {
            templates += 1;
        }
        if g.status == "running" {
            running += 1;
            if g.ip.is_some() {
                with_ip += 1;
            }
        }
    }
    st.guests = n;
    st.running = running;
    st.with_ip = with_ip;
    st.templates = templates;
}

/// True when two records differ only in `synced_at` (so a tick that confirms a guest writes nothing).
fn same_ignoring_sync_time(a: &GuestRecord, b: &GuestRecord) -> bool {
    let mut b2 = b.clone();
    b2.synced_at = a.synced_at;
    if let (Some(ai), Some(bi)) = (&a.ip, &mut b2.ip) {
        // A re-confirmed address is not a change.
        if ai.address == bi.address && ai.all == bi.all && ai.source == bi.source {
            bi.seen_at = ai.seen_at;
        }
    }
    // CPU and memory samples move every tick; they are data, not a change worth an event, unless
    // the change is large enough to matter for a live view (>= 5 points of CPU).
    b2.mem = a.mem;
    b2.uptime = a.uptime;
    if (a.cpu - b2.cpu).abs() < 0.05 {
        b2.cpu = a.cpu;
    }
    *a == b2
}

fn same_state(a: &ClusterState, b: &ClusterState) -> bool {
    a.status == b.status
        && a.reason == b.reason
        && a.offline_nodes == b.offline_nodes
        && a.warnings == b.warnings
        && a.quorate == b.quorate
        && a.guests == b.guests
        && a.running == b.running
        && a.with_ip == b.with_ip
}
