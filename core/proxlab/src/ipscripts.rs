//! IP discovery through the site's scripted tiers (`scripts/ip/NN-name.rhai`, DESIGN §7): an
//! [`sync::IpDiscovery`] that runs the tiers in file-name order until one answers, verifies each answer
//! before handing it out, and keeps the ARP table fresh for the ARP tier with bounded, rate-limited
//! probes of the configured subnets.
//!
//! - **Tiers**: `discover(vm)` returns `()` (next tier), an address string, or `#{address, all, source}`.
//!   `vm` is [`web::connect::script_vm`] of the inventory record plus `allow_ranges`, `arp_subnets` and
//!   `prefer_ipv6` from `[ip]`.
//! - **Verification** ([`sync::discovery::verify_dialable`]): one ping (else a TCP connect to 22/3389),
//!   then the address's ARP entry against the VM's config MACs — never for an address the relays' dial
//!   rule refuses without a probe (outside the cluster's `guest_networks` and not on-link, loopback, the
//!   portal's own, a node's, the API host's): that one is reported unverified with the rule's reason. An address whose ARP entry shows another MAC is
//!   dropped and the next tier runs; the result and its time are kept beside the guest record in the
//!   inventory ([`sync::Snapshot::facts`]) for the portal (`GET /api/vm/{vmid}/connect`).
//! - **ARP probes** ([`ArpSweeper`]): only inside `[ip] arp_subnets`, at most `max_hosts` addresses per
//!   subnet, one UDP datagram to the discard port each at most `rate_per_sec` per second from one task,
//!   at most once per `min_interval` per subnet — never a burst of threads. The kernel's own ARP
//!   resolution of those datagrams fills `/proc/net/arp`.
//!
//! This file only uses other crates (no `crate::` items), so `tests/ip_tiers.rs` includes it as is.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use ipnet::IpNet;
use pve::{GuestKind, PveClient, PveError};
use script::{CallOptions, ScriptRuntime};
use serde_json::{Value, json};
use store::{GuestRecord, IpRecord};
use sync::discovery::{DiscoveryTier, TierAnswer, discover_by_tiers, guest_macs};
use sync::{AddressPolicy, AgentDiscovery, ClusterDial, DialRules, Inventory, IpDiscovery};
use web::connect::{ScriptSetSource, VerifyConfig};

/// Bounds of the ARP probes.
#[derive(Clone, Debug)]
pub struct SweepConfig {
    /// Subnets the ARP tier may use and probe (`[ip] arp_subnets`); empty: ARP tier off, no probes.
    pub subnets: Vec<IpNet>,
    /// Most addresses probed per subnet and round (default 1024, a /22).
    pub max_hosts: usize,
    /// Probes per second, all subnets together (default 100).
    pub rate_per_sec: u32,
    /// A subnet is probed at most once per this interval (default 120 s).
    pub min_interval: Duration,
    /// UDP port the probes go to (default 9, discard).
    pub port: u16,
}

impl Default for SweepConfig {
    fn default() -> Self {
        SweepConfig {
            subnets: Vec::new(),
            max_hosts: 1024,
            rate_per_sec: 100,
            min_interval: Duration::from_secs(120),
            port: 9,
        }
    }
}

/// Rate-limited ARP probes of the configured subnets (see the module docs).
pub struct ArpSweeper {
    cfg: SweepConfig,
    last: Mutex<HashMap<IpNet, Instant>>,
    running: AtomicBool,
    probes: AtomicU64,
    rounds: AtomicU64,
}

impl ArpSweeper {
    /// A sweeper with `cfg` (IPv6 subnets are ignored: neighbour discovery has no equivalent probe).
    pub fn new(cfg: SweepConfig) -> Arc<ArpSweeper> {
        Arc::new(ArpSweeper {
            cfg,
            last: Mutex::default(),
            running: AtomicBool::new(false),
            probes: AtomicU64::new(0),
            rounds: AtomicU64::new(0),
        })
    }

    /// Datagrams sent so far.
    #[allow(dead_code)] // read by tests/ip_tiers.rs
    pub fn probes_sent(&self) -> u64 {
        self.probes.load(Ordering::Relaxed)
    }

    /// Subnet rounds done so far.
    #[allow(dead_code)] // read by tests/ip_tiers.rs
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    /// The subnets due for a round now (not probed within `min_interval`), marked as probed.
    fn due(&self) -> Vec<IpNet> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let mut out = Vec::new();
        for net in &self.cfg.subnets {
            if !matches!(net, IpNet::V4(_)) {
                continue;
            }
            if last
                .get(net)
                .is_some_and(|t| now.duration_since(*t) < self.cfg.min_interval)
            {
                continue;
            }
            last.insert(*net, now);
            out.push(*net);
        }
        out
    }

    /// Probes the due subnets once (one round at a time; a call while a round runs returns at once).
    /// Returns the number of datagrams sent by this call.
    pub async fn sweep_if_due(&self) -> u64 {
        if self.running.swap(true, Ordering::SeqCst) {
            return 0;
        }
        let mut sent = 0;
        let due = self.due();
        if !due.is_empty() {
            sent = self.probe(&due).await;
        }
        self.running.store(false, Ordering::SeqCst);
        sent
    }

    async fn probe(&self, nets: &[IpNet]) -> u64 {
        let sock = match tokio::net::UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "ARP probes: cannot open a UDP socket");
                return 0;
            }
        };
        let rate = self.cfg.rate_per_sec.max(1);
        let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sent = 0u64;
        for net in nets {
            self.rounds.fetch_add(1, Ordering::Relaxed);
            let hosts: Vec<IpAddr> = net.hosts().take(self.cfg.max_hosts).collect();
            tracing::debug!(subnet = %net, hosts = hosts.len(), "ARP probes");
            for ip in hosts {
                tick.tick().await;
                // A send error (no route, host unreachable from an earlier round) is expected.
                if sock
                    .send_to(&[], SocketAddr::new(ip, self.cfg.port))
                    .await
                    .is_ok()
                {
                    sent += 1;
                    self.probes.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        sent
    }
}

/// What the tiers receive besides the inventory record, and how answers are checked.
#[derive(Clone, Debug, Default)]
pub struct TierOptions {
    /// `[ip] allow_ranges` (tests only).
    pub allow_ranges: Vec<IpNet>,
    /// `[ip] prefer_ipv6`.
    pub prefer_ipv6: bool,
    /// Verification of every answer.
    pub verify: VerifyConfig,
    /// ARP tier subnets and probe bounds.
    pub sweep: SweepConfig,
    /// Per cluster: its `guest_networks` and configured hosts, for the dial rule the verify step
    /// applies before it probes (`[ip] allow_ranges` are the rule's test ranges).
    pub dial: HashMap<String, ClusterDial>,
}

/// The scripted discovery (see the module docs). Build it before the syncer, then [`attach`] the script
/// runtime once the syncer (which the runtime's host needs) exists; until then it answers like
/// [`AgentDiscovery`].
///
/// [`attach`]: ScriptedDiscovery::attach
pub struct ScriptedDiscovery {
    scripts: OnceLock<(ScriptRuntime, Arc<dyn ScriptSetSource>)>,
    inventory: Arc<Inventory>,
    options: TierOptions,
    sweeper: Arc<ArpSweeper>,
}

impl ScriptedDiscovery {
    /// A discovery writing verifications and OS types beside the guest records of `inventory`
    /// ([`sync::Snapshot::facts`]), whose cluster states also name the nodes' addresses.
    pub fn new(options: TierOptions, inventory: Arc<Inventory>) -> Arc<ScriptedDiscovery> {
        let sweeper = ArpSweeper::new(options.sweep.clone());
        Arc::new(ScriptedDiscovery {
            scripts: OnceLock::new(),
            inventory,
            options,
            sweeper,
        })
    }

    /// Sets the runtime and script set the tiers run from (once; later calls are ignored).
    pub fn attach(&self, runtime: ScriptRuntime, set: Arc<dyn ScriptSetSource>) {
        let _ = self.scripts.set((runtime, set));
    }

    /// The relays' dial rule for `cluster` ([`DialRules::for_cluster`]): the verify step never probes
    /// an address the rule refuses without a probe.
    pub fn dial_rules(&self, cluster: &str) -> DialRules {
        let dial = self.options.dial.get(cluster).cloned().unwrap_or_default();
        let nodes = self
            .inventory
            .snapshot()
            .clusters
            .get(cluster)
            .map(|c| c.node_addresses.clone())
            .unwrap_or_default();
        DialRules::for_cluster(&dial, &self.options.allow_ranges, &nodes)
    }

    /// The ARP sweeper (for tests and metrics).
    #[allow(dead_code)] // read by tests/ip_tiers.rs
    pub fn sweeper(&self) -> &Arc<ArpSweeper> {
        &self.sweeper
    }

    /// The `vm` argument of the tiers for `guest`.
    pub fn tier_vm(&self, guest: &GuestRecord, ostype: Option<&str>) -> Value {
        let mut vm = web::connect::script_vm(guest, ostype);
        if let Value::Object(m) = &mut vm {
            m.insert(
                "allow_ranges".into(),
                json!(
                    self.options
                        .allow_ranges
                        .iter()
                        .map(|r| r.to_string())
                        .collect::<Vec<_>>()
                ),
            );
            m.insert(
                "arp_subnets".into(),
                json!(
                    self.options
                        .sweep
                        .subnets
                        .iter()
                        .map(|r| r.to_string())
                        .collect::<Vec<_>>()
                ),
            );
            m.insert("prefer_ipv6".into(), json!(self.options.prefer_ipv6));
        }
        vm
    }

    async fn ostype(&self, client: &PveClient, guest: &GuestRecord) -> Option<String> {
        if let Some(os) = self.inventory.snapshot().facts(&guest.cluster, guest.vmid).ostype {
            return Some(os);
        }
        let os = if guest.kind == "lxc" {
            "lxc".to_string()
        } else {
            match client
                .guest_config(&guest.node, GuestKind::Qemu, guest.vmid)
                .await
            {
                Ok(c) => c.ostype().unwrap_or_else(|| "other".into()),
                Err(e) => {
                    tracing::debug!(vmid = guest.vmid, error = %e, "ostype: config read failed");
                    return None;
                }
            }
        };
        let learned = os.clone();
        self.inventory
            .update_facts(&guest.cluster, guest.vmid, |f| f.ostype = Some(learned))
            .await;
        Some(os)
    }

    /// Starts an ARP probe round in the background when ARP subnets are configured and none of the
    /// VM's MACs is in the ARP table yet (the round itself is rate-limited per subnet).
    async fn refresh_arp(&self, macs: &[String]) {
        if self.options.sweep.subnets.is_empty() || macs.is_empty() {
            return;
        }
        let table = tokio::fs::read_to_string("/proc/net/arp")
            .await
            .unwrap_or_default();
        let known = sync::discovery::parse_proc_net_arp(&table)
            .iter()
            .any(|e| macs.contains(&e.mac));
        if !known {
            let sweeper = self.sweeper.clone();
            tokio::spawn(async move {
                sweeper.sweep_if_due().await;
            });
        }
    }

    /// Runs the tiers for `guest` (see the module docs): the current set's `scripts/ip/*.rhai` in
    /// file-name order through [`sync::discovery::discover_by_tiers`].
    pub async fn run_tiers(
        &self,
        client: &PveClient,
        guest: &GuestRecord,
    ) -> Result<Option<IpRecord>, PveError> {
        let Some((rt, source)) = self.scripts.get() else {
            return AgentDiscovery.discover(client, guest, &self.policy()).await;
        };
        let ostype = self.ostype(client, guest).await;
        self.refresh_arp(&guest_macs(guest)).await;
        let vm = self.tier_vm(guest, ostype.as_deref());
        let rules = self.dial_rules(&guest.cluster);
        let set = source.current_set();
        let tiers: Vec<Box<dyn DiscoveryTier + '_>> = set
            .ip_tiers()
            .into_iter()
            .map(|script| {
                Box::new(ScriptTier {
                    name: script.short_name().to_string(),
                    runtime: rt,
                    set: &set,
                    script: script.clone(),
                    vm: &vm,
                }) as Box<dyn DiscoveryTier + '_>
            })
            .collect();
        Ok(discover_by_tiers(&tiers, guest, &self.options.verify, &rules, &self.inventory).await)
    }

    fn policy(&self) -> AddressPolicy {
        AddressPolicy {
            allow_ranges: self.options.allow_ranges.clone(),
            prefer_ipv6: self.options.prefer_ipv6,
        }
    }
}

/// One `scripts/ip/NN-name.rhai`: `discover(vm)` with the tier's `vm` map.
struct ScriptTier<'a> {
    name: String,
    runtime: &'a ScriptRuntime,
    set: &'a Arc<script::ScriptSet>,
    script: Arc<script::CompiledScript>,
    vm: &'a Value,
}

impl DiscoveryTier for ScriptTier<'_> {
    fn name(&self) -> &str {
        &self.name
    }

    fn discover<'a>(&'a self, _guest: &'a GuestRecord) -> BoxFuture<'a, Result<Option<TierAnswer>, String>> {
        Box::pin(async move {
            let value = self
                .runtime
                .call(
                    self.set,
                    self.script.clone(),
                    "discover",
                    vec![self.vm.clone()],
                    CallOptions::default(),
                )
                .await
                .map_err(|e| e.to_string())?
                .value;
            let answer = TierAnswer::parse(&value);
            if answer.is_none() && !value.is_null() {
                tracing::warn!(tier = %self.name, answer = %value, "IP tier returned neither an address nor ()");
            }
            Ok(answer)
        })
    }
}

impl IpDiscovery for ScriptedDiscovery {
    fn discover<'a>(
        &'a self,
        client: &'a PveClient,
        guest: &'a GuestRecord,
        _policy: &'a AddressPolicy,
    ) -> Pin<Box<dyn Future<Output = Result<Option<IpRecord>, PveError>> + Send + 'a>> {
        Box::pin(self.run_tiers(client, guest))
    }
}
