//! The scripted IP-discovery tiers (`scripts/ip/*.rhai`, `core/proxlab/src/ipscripts.rs`) against real
//! parts: a fake PVE cluster whose guest agents and containers answer the way real guests do (loopback
//! listed first, only link-local while DHCP is pending, two NICs in any order, LXC CIDR strings with `lo`
//! first, LXC answers with an empty `ip-addresses` or `data: null`, a Docker bridge, Windows' loopback
//! pseudo-interface), the real syncer, the real Rhai runtime with the shipped scripts, and — for the ARP
//! tier and the ping/MAC verification — real hosts: network namespaces this test creates, joined by veth
//! pairs that carry the VMs' MACs.
//!
//! Every test runs inside its own network namespace (the test binary re-runs itself there with
//! `ip netns exec`): verification pings every address a tier returns, and inside the namespace the
//! documentation addresses used here (192.0.2.x, 198.51.100.x, 203.0.113.x) are unreachable at
//! once, so nothing ever leaves this machine. Addresses of the namespaced hosts are in 198.18.7.0/24
//! (RFC 2544 test range) and exist only inside the namespaces. Needs root (CI runs as root).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../src/ipscripts.rs"]
#[allow(dead_code)]
mod ipscripts;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ipscripts::{ScriptedDiscovery, SweepConfig, TierOptions};
use serde_json::{Value, json};
use store::GuestRecord;
use sync::{ClusterHandle, Inventory, SyncConfig, Syncer};
use testkit::{ClusterSpec, FakeCluster};
use web::connect::{MacCheck, ScriptSetSource};

// ---- network namespaces ----------------------------------------------------------------------------

const INNER: &str = "PROXLAB_TEST_NETNS";

/// Deletes the namespaces it names when dropped (their veths go with them).
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (package iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A host in its own namespace on the portal's bridge: `(mac, address/prefix)`.
type GuestHost<'a> = (&'a str, &'a str);

/// Runs `body` in a fresh network namespace (the "portal", only `lo` up unless `guests` are given: then
/// a bridge `br0` with `198.18.7.1/24` joins one namespace per guest host, whose `eth0` has the host's
/// MAC and address). The test binary re-runs itself inside with `ip netns exec`; the namespaces are
/// deleted afterwards, also when the test fails.
fn in_netns(test: &str, guests: &[GuestHost<'_>], body: impl FnOnce()) {
    if std::env::var(INNER).as_deref() == Ok(test) {
        body();
        return;
    }
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    assert_eq!(
        uid.as_deref().ok(),
        Some("0"),
        "{test} creates network namespaces: run the tests as root (CI does)"
    );
    static N: AtomicUsize = AtomicUsize::new(0);
    let id = format!("{}x{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
    let portal = format!("plxp{id}");
    let mut names = Namespaces(vec![portal.clone()]);
    ip(&["netns", "add", &portal]);
    ip(&["-n", &portal, "link", "set", "lo", "up"]);
    if !guests.is_empty() {
        ip(&["-n", &portal, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &portal, "addr", "add", "198.18.7.1/24", "dev", "br0"]);
        ip(&["-n", &portal, "link", "set", "br0", "up"]);
    }
    for (i, (mac, addr)) in guests.iter().enumerate() {
        let g = format!("plxg{id}n{i}");
        ip(&["netns", "add", &g]);
        names.0.push(g.clone());
        let port = format!("p{i}");
        ip(&[
            "-n", &portal, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &g,
        ]);
        ip(&["-n", &portal, "link", "set", &port, "master", "br0"]);
        ip(&["-n", &portal, "link", "set", &port, "up"]);
        ip(&["-n", &g, "link", "set", "eth0", "address", mac]);
        ip(&["-n", &g, "addr", "add", addr, "dev", "eth0"]);
        ip(&["-n", &g, "link", "set", "eth0", "up"]);
        ip(&["-n", &g, "link", "set", "lo", "up"]);
    }
    let exe = std::env::current_exe().unwrap();
    let status = Command::new("ip")
        .args(["netns", "exec", &portal])
        .arg(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(INNER, test)
        .status()
        .unwrap();
    drop(names);
    assert!(
        status.success(),
        "{test} failed inside its network namespace (output above)"
    );
}

// ---- the system under test -------------------------------------------------------------------------

/// The lab cluster's settings (users, tokens, storages) without its automatic agent, plus `guests`.
fn cluster(guests: Vec<Value>) -> FakeCluster {
    let lab: Value =
        serde_json::from_str(&std::fs::read_to_string(testkit::sim_dir().join("lab-cluster.json")).unwrap())
            .unwrap();
    let mut section = lab["cluster"].clone();
    section.as_object_mut().unwrap().remove("auto_agent");
    let dir = tempfile::tempdir().unwrap().keep();
    let file = dir.join("tiers-cluster.json");
    std::fs::write(&file, json!({"cluster": section, "guests": guests}).to_string()).unwrap();
    FakeCluster::start(ClusterSpec {
        guests_file: file,
        ..ClusterSpec::default()
    })
    .unwrap()
}

fn qemu(vmid: u32, nets: &[&str], agent: Option<Value>) -> Value {
    let mut config = json!({"memory": 1024, "cores": 1, "agent": "1", "ostype": "l26",
                            "scsi0": format!("local-lvm:vm-{vmid}-disk-0,size=8G")});
    for (i, mac) in nets.iter().enumerate() {
        config[format!("net{i}")] = json!(format!("virtio={mac},bridge=vmbr{i}"));
    }
    let mut g = json!({"vmid": vmid, "name": format!("vm-{vmid}"), "node": "pve1", "status": "running", "config": config});
    if let Some(ifaces) = agent {
        g["agent"] = json!({"interfaces": ifaces});
    }
    g
}

fn lxc(vmid: u32, net0: &str) -> Value {
    json!({"type": "lxc", "vmid": vmid, "name": format!("ct-{vmid}"), "node": "pve2", "status": "running",
           "ostemplate": "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst",
           "config": {"memory": 512, "cores": 1, "rootfs": format!("local-lvm:vm-{vmid}-disk-0,size=8G"), "net0": net0}})
}

/// The script host over the syncer (the binary's `ProxlabHost` does the same).
struct Host {
    handle: tokio::runtime::Handle,
    syncer: std::sync::OnceLock<Arc<Syncer>>,
}

impl script::Host for Host {
    fn runtime(&self) -> tokio::runtime::Handle {
        self.handle.clone()
    }
    fn pve(&self, cluster: &str) -> Option<pve::PveClient> {
        self.syncer.get()?.client(cluster).cloned()
    }
    fn clusters(&self) -> Vec<String> {
        self.syncer.get().map(|s| s.cluster_ids()).unwrap_or_default()
    }
}

struct Rig {
    fake: FakeCluster,
    syncer: Arc<Syncer>,
    inventory: Arc<Inventory>,
    discovery: Arc<ScriptedDiscovery>,
    _dir: tempfile::TempDir,
}

fn rig(fake: FakeCluster, options: TierOptions) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let store = store::Store::open(dir.path().join("db")).unwrap();
    let inventory = Inventory::load(Some(store), &[("lab".into(), "Lab".into())]).unwrap();
    let client = pve::PveClient::new(pve::PveConfig::new(
        fake.url.parse().unwrap(),
        pve::Auth::Token {
            id: fake.token_id.clone(),
            secret: pve::Secret::new(fake.token_secret.clone()),
        },
        pve::Tls::CaFile(fake.ca_file.clone()),
    ))
    .unwrap();
    let discovery = ScriptedDiscovery::new(options, inventory.clone());
    let config = SyncConfig {
        ip_backoff: Duration::from_millis(1),
        ..SyncConfig::default()
    };
    let handles = vec![ClusterHandle {
        id: "lab".into(),
        name: "Lab".into(),
        client,
    }];
    let syncer = Syncer::new(inventory.clone(), handles, config, discovery.clone());
    let host = Arc::new(Host {
        handle: tokio::runtime::Handle::current(),
        syncer: Default::default(),
    });
    let _ = host.syncer.set(syncer.clone());
    let runtime = script::ScriptRuntime::new(host, script::Limits::default());
    let sources = script::SetSources {
        defaults: Some(testkit::workspace_root().join("scripts")),
        ..Default::default()
    };
    let set = runtime
        .load_set(&sources)
        .unwrap_or_else(|e| panic!("{}", script::format_load_errors(&e)));
    let source: Arc<dyn ScriptSetSource> = Arc::new(Arc::new(set));
    discovery.attach(runtime, source);
    Rig {
        fake,
        syncer,
        inventory,
        discovery,
        _dir: dir,
    }
}

impl Rig {
    async fn sync(&self) {
        for r in self.syncer.sync_once().await {
            r.unwrap();
        }
    }

    fn guest(&self, vmid: u32) -> GuestRecord {
        self.inventory
            .snapshot()
            .guest("lab", vmid)
            .map(|g| g.as_ref().clone())
            .unwrap()
    }

    /// What discovery learned about `vmid`, read beside its record in the inventory snapshot.
    fn facts(&self, vmid: u32) -> sync::GuestFacts {
        self.inventory.snapshot().facts("lab", vmid)
    }

    fn ip(&self, vmid: u32) -> Option<(String, Vec<String>, String)> {
        self.guest(vmid).ip.map(|i| (i.address, i.all, i.source))
    }

    async fn run_tiers(&self, guest: &GuestRecord) -> Option<store::IpRecord> {
        let client = self.syncer.client("lab").unwrap();
        self.discovery.run_tiers(client, guest).await.unwrap()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn nic(name: &str, mac: &str, addrs: &[&str]) -> Value {
    let a: Vec<Value> = addrs
        .iter()
        .map(|ip| json!({"ip-address": ip, "ip-address-type": if ip.contains(':') { "ipv6" } else { "ipv4" }, "prefix": 24}))
        .collect();
    json!({"name": name, "hardware-address": mac, "ip-addresses": a})
}

// ---- real-world agent answers through the fake cluster's agent --------------------------------------

#[test]
fn agent_tier_skips_loopback_link_local_docker_bridges_and_windows_loopback() {
    in_netns(
        "agent_tier_skips_loopback_link_local_docker_bridges_and_windows_loopback",
        &[],
        || {
            let fake = cluster(vec![
                // lo listed first.
                qemu(
                    4110,
                    &["BC:24:11:00:00:20"],
                    Some(json!([
                        nic("lo", "00:00:00:00:00:00", &["127.0.0.1", "::1"]),
                        nic(
                            "ens18",
                            "bc:24:11:00:00:20",
                            &["192.0.2.20", "fe80::be24:11ff:fe00:20"]
                        ),
                    ])),
                ),
                // Only APIPA and link-local while DHCP is pending.
                qemu(
                    4111,
                    &["BC:24:11:00:00:21"],
                    Some(json!([nic(
                        "Ethernet",
                        "bc:24:11:00:00:21",
                        &["169.254.17.5", "fe80::1:2:3:4"]
                    ),])),
                ),
                // Docker: bridges first, one of them outside Docker's default ranges.
                qemu(
                    4113,
                    &["BC:24:11:00:00:50"],
                    Some(json!([
                        nic("docker0", "02:42:ac:11:00:01", &["172.17.0.1"]),
                        nic("br-5a1b2c", "02:42:aa:bb:cc:dd", &["10.99.0.1"]),
                        nic("veth12ab", "6a:1f:00:00:00:01", &["fe80::681f:ff:fe00:1"]),
                        nic("eth0", "bc:24:11:00:00:50", &["198.51.100.50"]),
                    ])),
                ),
                // Windows: the loopback pseudo-interface, and link-local listed before the real address.
                qemu(
                    4114,
                    &["BC:24:11:00:00:60"],
                    Some(json!([
                        nic("Loopback Pseudo-Interface 1", "", &["127.0.0.1", "::1"]),
                        nic(
                            "Ethernet 2",
                            "bc:24:11:00:00:60",
                            &["fe80::55:1", "198.51.100.60"]
                        ),
                    ])),
                ),
            ]);
            let rt = runtime();
            rt.block_on(async {
                let r = rig(fake, TierOptions::default());
                r.sync().await;
                assert_eq!(
                    r.ip(4110),
                    Some((
                        "192.0.2.20".into(),
                        vec!["192.0.2.20".into()],
                        "20-guest-agent".into()
                    )),
                    "loopback listed first is skipped"
                );
                assert_eq!(
                    r.ip(4111),
                    None,
                    "only link-local while DHCP is pending: no usable address is 'pending', not an error"
                );
                assert_eq!(
                    r.ip(4113).map(|i| (i.0, i.1)),
                    Some(("198.51.100.50".into(), vec!["198.51.100.50".into()])),
                    "docker"
                );
                assert_eq!(
                    r.ip(4114).map(|i| i.0),
                    Some("198.51.100.60".into()),
                    "windows loopback"
                );
                // Each handed-out address went through verification; documentation addresses (the field
                // cases' data) are never probed: handed out unchecked.
                let check = r.facts(4110).check.expect("verified");
                assert_eq!(check.address, "192.0.2.20");
                assert_eq!(
                    (check.probed, check.reachable, check.mac.clone()),
                    (false, false, MacCheck::Unknown)
                );
                assert_eq!(check.state(), "unchecked");
                // The link-local answers (DHCP pending) never reached verification.
                assert_eq!(r.facts(4111).check, None);
                // Later, DHCP finished: the next poll finds it.
                r.fake
                    .control(
                        "POST",
                        "/guest",
                        json!({"vmid": 4111, "agent": {"interfaces": [
                    nic("Ethernet", "bc:24:11:00:00:21", &["fe80::1:2:3:4", "198.51.100.21"])]}}),
                    )
                    .unwrap();
                r.sync().await;
                assert_eq!(
                    r.ip(4111).map(|i| i.0),
                    Some("198.51.100.21".into()),
                    "the DHCP address once DHCP is done"
                );
            });
        },
    );
}

#[test]
fn multi_nic_guest_gets_its_net0_address_on_every_poll_in_any_agent_order() {
    in_netns(
        "multi_nic_guest_gets_its_net0_address_on_every_poll_in_any_agent_order",
        &[],
        || {
            let lab_nic = nic("ens19", "bc:24:11:00:00:41", &["203.0.113.41"]);
            let mgmt_nic = nic("ens18", "bc:24:11:00:00:40", &["198.51.100.40"]);
            let fake = cluster(vec![qemu(
                4112,
                &["BC:24:11:00:00:40", "BC:24:11:00:00:41"],
                Some(json!([lab_nic.clone(), mgmt_nic.clone()])),
            )]);
            let rt = runtime();
            rt.block_on(async {
                let r = rig(fake, TierOptions::default());
                r.sync().await;
                let want = (
                    "198.51.100.40".to_string(),
                    vec!["198.51.100.40".to_string(), "203.0.113.41".to_string()],
                );
                assert_eq!(
                    r.ip(4112).map(|i| (i.0, i.1)),
                    Some(want.clone()),
                    "two NICs: lowest netN wins, all kept by netN"
                );
                // Poll again and again (the previous address is passed in), also after the agent's order flips.
                let mut guest = r.guest(4112);
                for round in 0..4 {
                    if round == 2 {
                        r.fake
                            .control(
                                "POST",
                                "/guest",
                                json!({"vmid": 4112, "agent": {"interfaces": [mgmt_nic, lab_nic]}}),
                            )
                            .unwrap();
                    }
                    // The inventory tier would answer with the stored address; age it out to ask the agent.
                    if let Some(ip) = guest.ip.as_mut() {
                        ip.seen_at = 0;
                    }
                    let found = r.run_tiers(&guest).await.unwrap();
                    assert_eq!((found.address.clone(), found.all.clone()), want, "round {round}");
                    assert_eq!(found.source, "20-guest-agent");
                    guest.ip = Some(found);
                }
                // A fresh inventory address is trusted by tier 10, keeping the tier that found it.
                guest.ip.as_mut().unwrap().seen_at = sync::now_secs();
                let again = r.run_tiers(&guest).await.unwrap();
                assert_eq!(again.address, "198.51.100.40");
                assert_eq!(again.source, "20-guest-agent");
            });
        },
    );
}

#[test]
fn lxc_tier_strips_prefixes_skips_lo_and_falls_back_to_the_config_ip() {
    in_netns(
        "lxc_tier_strips_prefixes_skips_lo_and_falls_back_to_the_config_ip",
        &[],
        || {
            let fake = cluster(vec![
                // LXC CIDR strings: `inet: "192.0.2.95/22"`, lo first (the fake lists lo first like PVE).
                lxc(
                    4120,
                    "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:07:00,ip=192.0.2.95/22,ip6=fe80::be24:11ff:fe00:700/64",
                ),
                // /interfaces answers `data: null` (container not quite up): the static ip= of net0.
                lxc(
                    4121,
                    "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:07:02,ip=203.0.113.72/24,gw=203.0.113.1",
                ),
                // DHCP container without an address yet.
                lxc(4122, "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:07:03,ip=dhcp"),
            ]);
            let rt = runtime();
            rt.block_on(async {
                let r = rig(fake, TierOptions::default());
                r.sync().await;
                assert_eq!(
                    r.ip(4120),
                    Some(("192.0.2.95".into(), vec!["192.0.2.95".into()], "30-lxc".into())),
                    "LXC CIDR string stripped, lo skipped"
                );
                assert_eq!(r.ip(4122), None, "dhcp container without address");
                // `data: null`: the inventory says running; the container's /interfaces now answers null.
                let mut guest = r.guest(4121);
                guest.ip = None;
                r.fake
                    .control("POST", "/guest", json!({"vmid": 4121, "status": "stopped"}))
                    .unwrap();
                let found = r.run_tiers(&guest).await.expect("config fallback");
                assert_eq!(found.address, "203.0.113.72");
                assert_eq!(found.source, "30-lxc (config)");
            });
        },
    );
}

#[test]
fn lxc_shape_uses_inet_when_ip_addresses_is_empty() {
    // An empty `ip-addresses` next to `inet` cannot be produced by the fake (it always fills
    // `ip-addresses`), so the shipped library runs on a literal answer of that shape.
    let rt = runtime();
    rt.block_on(async {
        let host = Arc::new(script::NullHost::new(tokio::runtime::Handle::current()));
        let runtime = script::ScriptRuntime::new(host, script::Limits::default());
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("ip")).unwrap();
        std::fs::write(
            dir.path().join("ip/05-fixture.rhai"),
            "import \"lib/net\" as netlib;\nfn discover(vm) { netlib::choose(netlib::lxc_shape(vm.fixture), vm) }\n",
        )
        .unwrap();
        let sources = script::SetSources {
            defaults: Some(testkit::workspace_root().join("scripts")),
            site: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        let set = Arc::new(runtime.load_set(&sources).unwrap_or_else(|e| panic!("{}", script::format_load_errors(&e))));
        let empty_ip_addresses = json!([{"name": "eth0", "hwaddr": "bc:24:11:00:07:01", "inet": "198.51.100.71/24", "ip-addresses": []}]);
        let vm = json!({"vmid": 4199, "status": "running", "macs": [{"index": 0, "mac": "bc:24:11:00:07:01"}], "fixture": empty_ip_addresses});
        let v = runtime.run_entry(&set, "ip/05-fixture", "discover", vec![vm.clone()]).await.unwrap();
        assert_eq!(v["address"], "198.51.100.71");
        let mut null = vm;
        null["fixture"] = Value::Null;
        let v = runtime.run_entry(&set, "ip/05-fixture", "discover", vec![null]).await.unwrap();
        assert!(v.is_null(), "data null gives no address and no error: {v}");
    });
}

#[test]
fn a_stopped_vm_loses_its_address() {
    in_netns("a_stopped_vm_loses_its_address", &[], || {
        let fake = cluster(vec![qemu(
            4130,
            &["BC:24:11:00:01:30"],
            Some(json!([nic("ens18", "bc:24:11:00:01:30", &["198.51.100.130"])])),
        )]);
        let rt = runtime();
        rt.block_on(async {
            let r = rig(fake, TierOptions::default());
            r.sync().await;
            assert_eq!(r.ip(4130).map(|i| i.0), Some("198.51.100.130".into()));
            r.fake
                .control("POST", "/guest", json!({"vmid": 4130, "status": "stopped"}))
                .unwrap();
            r.sync().await;
            assert_eq!(r.guest(4130).status, "stopped");
            assert_eq!(r.ip(4130), None, "a stopped VM has no address");
        });
    });
}

// ---- ARP tier and verification against real hosts in namespaces -----------------------------------

/// VM 4201's NIC, present on the namespaced L2 segment at 198.18.7.10.
const MAC_A: &str = "bc:24:11:aa:00:01";
/// Another machine, at 198.18.7.20.
const MAC_OTHER: &str = "02:00:00:00:00:bb";

fn arp_options(subnets: &[&str]) -> TierOptions {
    TierOptions {
        sweep: SweepConfig {
            subnets: subnets.iter().map(|s| s.parse().unwrap()).collect(),
            max_hosts: 64,
            rate_per_sec: 200,
            min_interval: Duration::from_secs(300),
            ..SweepConfig::default()
        },
        ..TierOptions::default()
    }
}

async fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn arp_has(mac: &str) -> bool {
    let t = std::fs::read_to_string("/proc/net/arp").unwrap_or_default();
    script::parse_proc_net_arp(&t).iter().any(|e| e.mac == mac)
}

#[test]
fn arp_tier_finds_a_vm_by_its_config_mac_only_inside_configured_subnets_with_bounded_probes() {
    let test = "arp_tier_finds_a_vm_by_its_config_mac_only_inside_configured_subnets_with_bounded_probes";
    in_netns(
        test,
        &[(MAC_A, "198.18.7.10/24"), (MAC_OTHER, "198.18.7.20/24")],
        || {
            // VM 4201 has no agent answer: tier 20 passes, tier 40 looks for its MAC in the ARP table.
            let fake = cluster(vec![qemu(4201, &["BC:24:11:AA:00:01"], None)]);
            let rt = runtime();
            rt.block_on(async {
                // Without configured subnets the ARP tier is off and nothing is probed.
                let off = rig(fake, TierOptions::default());
                off.sync().await;
                assert_eq!(off.ip(4201), None);
                assert_eq!(off.discovery.sweeper().probes_sent(), 0, "no subnets, no probes");
                let fake = off.fake;

                let r = rig(fake, arp_options(&["198.18.7.0/24"]));
                let started = Instant::now();
                r.sync().await; // starts one bounded probe round in the background
                let sweeper = r.discovery.sweeper().clone();
                wait_until("the probe round", Duration::from_secs(10), || {
                    sweeper.rounds() == 1 && sweeper.probes_sent() == 64
                })
                .await;
                wait_until("VM 4201's MAC in the ARP table", Duration::from_secs(5), || {
                    arp_has(MAC_A)
                })
                .await;
                // 64 datagrams at 200/s take at least ~0.3 s: rate-limited, not a burst.
                assert!(
                    started.elapsed() >= Duration::from_millis(300),
                    "probes were not rate-limited: {:?}",
                    started.elapsed()
                );
                r.sync().await;
                let (addr, all, source) = r.ip(4201).expect("found by the ARP tier");
                assert_eq!((addr.as_str(), source.as_str()), ("198.18.7.10", "40-arp"));
                assert_eq!(all, vec!["198.18.7.10".to_string()]);
                let check = r.facts(4201).check.unwrap();
                assert!(check.reachable, "{check:?}");
                assert_eq!(check.method.as_deref(), Some("ping"));
                assert_eq!(check.mac, MacCheck::Match, "{check:?}");
                assert_eq!(check.state(), "verified");
                // Another round within the interval sends nothing.
                assert_eq!(sweeper.sweep_if_due().await, 0);
                assert_eq!(sweeper.probes_sent(), 64);

                // A subnet that does not hold the address: the ARP entry exists, but the tier refuses it.
                let mut guest = r.guest(4201);
                guest.ip = None;
                let elsewhere = rig(r.fake, arp_options(&["198.18.8.0/24"]));
                elsewhere.sync().await;
                assert!(arp_has(MAC_A));
                assert_eq!(elsewhere.run_tiers(&guest).await, None, "only configured subnets");
            });
        },
    );
}

#[test]
fn verification_refuses_an_address_that_answers_with_another_machines_mac() {
    let test = "verification_refuses_an_address_that_answers_with_another_machines_mac";
    in_netns(
        test,
        &[(MAC_A, "198.18.7.10/24"), (MAC_OTHER, "198.18.7.20/24")],
        || {
            let fake = cluster(vec![
                // The agent of 4202 reports an address that is really another machine's (stale lease).
                qemu(
                    4202,
                    &["BC:24:11:AA:00:02"],
                    Some(json!([nic("ens18", "bc:24:11:aa:00:02", &["198.18.7.20"])])),
                ),
                // The agent of 4201 reports its real address: verified by ping and MAC.
                qemu(
                    4201,
                    &["BC:24:11:AA:00:01"],
                    Some(json!([nic("ens18", "bc:24:11:aa:00:01", &["198.18.7.10"])])),
                ),
                // An address nobody holds: unreachable, MAC unknown, handed out as such.
                qemu(
                    4203,
                    &["BC:24:11:AA:00:03"],
                    Some(json!([nic("ens18", "bc:24:11:aa:00:03", &["198.18.7.99"])])),
                ),
            ]);
            let rt = runtime();
            rt.block_on(async {
                let r = rig(fake, arp_options(&["198.18.7.0/24"]));
                r.sync().await;
                assert_eq!(r.ip(4202), None, "another machine's address is never handed out");
                let bad = r.facts(4202).check.unwrap();
                assert_eq!(bad.address, "198.18.7.20");
                assert!(bad.reachable);
                assert_eq!(bad.mac, MacCheck::Mismatch);
                assert_eq!(bad.seen_mac.as_deref(), Some(MAC_OTHER));
                assert_eq!(bad.state(), "mismatch");

                assert_eq!(r.ip(4201).map(|i| i.0), Some("198.18.7.10".into()));
                assert_eq!(r.facts(4201).check.unwrap().state(), "verified");

                assert_eq!(r.ip(4203).map(|i| i.0), Some("198.18.7.99".into()));
                let lost = r.facts(4203).check.unwrap();
                assert_eq!(
                    (lost.probed, lost.reachable, lost.mac.clone()),
                    (true, false, MacCheck::Unknown)
                );
                assert_eq!(lost.state(), "unreachable");
                assert!(lost.checked_at > 0 && lost.took_ms < 10_000);
            });
        },
    );
}

#[test]
fn verification_never_probes_an_address_the_relays_dial_rule_refuses() {
    let test = "verification_never_probes_an_address_the_relays_dial_rule_refuses";
    in_netns(test, &[(MAC_A, "198.18.7.10/24")], || {
        let fake = cluster(vec![
            // The agent of 4204 reports the portal's own address on the shared segment.
            qemu(
                4204,
                &["BC:24:11:AA:00:04"],
                Some(json!([nic("ens18", "bc:24:11:aa:00:04", &["198.18.7.1"])])),
            ),
            // The agent of 4205 reports a routed address.
            qemu(
                4205,
                &["BC:24:11:AA:00:05"],
                Some(json!([nic("ens18", "bc:24:11:aa:00:05", &["10.77.0.5"])])),
            ),
            // 4201 is on-link and holds its address: probed and verified as before.
            qemu(
                4201,
                &["BC:24:11:AA:00:01"],
                Some(json!([nic("ens18", "bc:24:11:aa:00:01", &["198.18.7.10"])])),
            ),
        ]);
        let rt = runtime();
        rt.block_on(async {
            // A listener on the portal's own address: a TCP probe of 198.18.7.1 would reach it.
            let listener = tokio::net::TcpListener::bind("198.18.7.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let probed = Arc::new(AtomicUsize::new(0));
            let seen = probed.clone();
            tokio::spawn(async move {
                while listener.accept().await.is_ok() {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
            });
            let verify = web::connect::VerifyConfig {
                scope: web::connect::VerifyScope::All,
                tcp_ports: vec![port],
                ..Default::default()
            };
            let options = TierOptions {
                verify: verify.clone(),
                ..TierOptions::default()
            };
            let r = rig(fake, options);
            r.sync().await;
            let own = r.facts(4204).check.expect("a check of 4204");
            assert_eq!(own.address, "198.18.7.1");
            assert_eq!(
                (own.probed, own.method.clone(), own.state()),
                (false, None, "unchecked")
            );
            assert!(
                own.reason.as_deref().is_some_and(|m| m.contains("portal host")),
                "{own:?}"
            );
            let routed = r.facts(4205).check.expect("a check of 4205");
            assert!(!routed.probed, "{routed:?}");
            assert!(
                routed
                    .reason
                    .as_deref()
                    .is_some_and(|m| m.contains("guest_networks")),
                "{routed:?}"
            );
            assert_eq!(r.facts(4201).check.unwrap().state(), "verified");
            assert_eq!(
                probed.load(Ordering::SeqCst),
                0,
                "the portal's own address was contacted"
            );

            // Once an admin lists the routed network as the cluster's guest network, it is probed.
            let mut dial = std::collections::HashMap::new();
            dial.insert(
                "lab".to_string(),
                sync::ClusterDial {
                    guest_networks: vec!["10.77.0.0/16".parse().unwrap()],
                    host_addresses: vec![],
                },
            );
            let listed = rig(
                r.fake,
                TierOptions {
                    verify,
                    dial,
                    ..TierOptions::default()
                },
            );
            listed.sync().await;
            let check = listed.facts(4205).check.expect("a check of 4205");
            assert!(check.probed && check.reason.is_none(), "{check:?}");
            assert_eq!(check.state(), "unreachable");
        });
    });
}
