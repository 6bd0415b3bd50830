//! IP discovery's tiers and verify step (DESIGN §7). [`discover_by_tiers`] asks the tiers in order
//! ([`DiscoveryTier`]; the binary supplies the script-backed ones, this crate never runs scripts),
//! verifies each answer and keeps what it learns beside the guest record in the inventory
//! ([`crate::Snapshot::facts`]); the syncer schedules lookups with bounded concurrency and per-VM
//! backoff. The verify step: is something answering at a guest address
//! (one ICMP echo with the system `ping`, else a TCP connect to the usual ports), and is it the VM — the
//! kernel's ARP entry for the address (`/proc/net/arp`, filled by the probe itself) must carry one of
//! the MACs of the VM's config. A different MAC means the address belongs to another machine now (a
//! stale agent report, a recycled DHCP lease): the address is not used. This is the one ping and the
//! one ARP reader: the scripted tiers, the portal's connect summary and the terminal relay all use it.
//!
//! Only the address being verified is contacted; nothing is scanned here. And only where it can mean
//! something ([`VerifyScope`], default [`VerifyScope::OnLink`]): loopback and addresses on a directly
//! connected IPv4 network (where the ARP comparison works); routed addresses are handed out unchecked
//! unless the site asks for [`VerifyScope::All`]. An address the relays' dial rule refuses without a
//! probe ([`crate::address::dial_static`]) is never probed at all ([`verify_dialable`]): it is reported
//! unverified with the rule's reason. Documentation ranges (RFC 5737 `192.0.2.0/24`,
//! `198.51.100.0/24`, `203.0.113.0/24`; RFC 3849 `2001:db8::/32`) are never probed: no guest has them,
//! and examples and test data use them.

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;

use crate::address::{DialRules, dial_static};
use crate::inventory::Inventory;
use crate::syncer::now_secs;
use futures::future::BoxFuture;
use store::{GuestRecord, IpRecord};

/// Which addresses are probed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VerifyScope {
    /// Loopback and addresses on directly connected IPv4 networks (the default).
    #[default]
    OnLink,
    /// Every address (routed ones get ping / TCP only; their ARP entry is the router's, so the MAC
    /// cannot be compared).
    All,
    /// Nothing is probed; every address is handed out unchecked.
    Off,
}

/// How a verification is done.
#[derive(Clone, Debug)]
pub struct VerifyConfig {
    /// Which addresses are probed at all.
    pub scope: VerifyScope,
    /// Wait for the ICMP echo reply (default 1 s; `ping` rounds up to whole seconds).
    pub ping_timeout: Duration,
    /// TCP ports tried when ping gets no answer, in order (default 22, 3389): a connection or a refusal
    /// both prove the host is up.
    pub tcp_ports: Vec<u16>,
    /// Timeout of each TCP connect (default 700 ms).
    pub tcp_timeout: Duration,
    /// A verification older than this is repeated before a terminal connects (default 60 s).
    pub max_age: Duration,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            scope: VerifyScope::OnLink,
            ping_timeout: Duration::from_secs(1),
            tcp_ports: vec![22, 3389],
            tcp_timeout: Duration::from_millis(700),
            max_age: Duration::from_secs(60),
        }
    }
}

/// Result of comparing the address's ARP entry with the VM's MACs.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MacCheck {
    /// The ARP entry's MAC is one of the VM's.
    Match,
    /// The ARP entry's MAC is another machine's: the address is not the VM's.
    Mismatch,
    /// No ARP entry (routed or loopback address, IPv6, or no answer): cannot tell.
    Unknown,
}

/// One verification of a guest address.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct IpCheck {
    /// The address verified.
    pub address: String,
    /// The address was probed (false: outside [`VerifyConfig::scope`], or a documentation address).
    pub probed: bool,
    /// Something answered (ping, or a TCP connect/refusal).
    pub reachable: bool,
    /// How it answered: `ping`, `tcp/22` (connected), `tcp/3389 refused`; `None` when nothing answered.
    pub method: Option<String>,
    /// ARP comparison.
    pub mac: MacCheck,
    /// The MAC the ARP entry holds, when there is one (lower case).
    pub seen_mac: Option<String>,
    /// When it was checked (Unix s).
    pub checked_at: u64,
    /// Milliseconds the check took.
    pub took_ms: u64,
    /// Why the address was not probed, when the dial rule refused it ([`verify_dialable`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What discovery learns about a guest beyond its inventory record, for connecting: the last
/// verification of its address and its OS type. Kept beside the guest record in the inventory
/// snapshot ([`crate::Snapshot::facts`]), in memory only (a restart verifies again), and never in the
/// guest list the API serves (the MAC another machine answers with is for admins only).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct GuestFacts {
    /// The last verification of the guest's address.
    pub check: Option<IpCheck>,
    /// PVE `ostype` from the config (`win11`, `l26`, …; LXC: `lxc`), once read.
    pub ostype: Option<String>,
}

impl IpCheck {
    /// False only when the address provably belongs to another machine ([`MacCheck::Mismatch`]).
    pub fn trusted(&self) -> bool {
        self.mac != MacCheck::Mismatch
    }

    /// `verified` (answered and MAC matches), `reachable` (answered, MAC not known), `unreachable`,
    /// `mismatch`, or `unchecked` (not probed) — the word the portal shows.
    pub fn state(&self) -> &'static str {
        if !self.probed {
            return "unchecked";
        }
        match (&self.mac, self.reachable) {
            (MacCheck::Mismatch, _) => "mismatch",
            (MacCheck::Match, _) => "verified",
            (MacCheck::Unknown, true) => "reachable",
            (MacCheck::Unknown, false) => "unreachable",
        }
    }
}

fn find_ping() -> Option<&'static str> {
    ["/usr/bin/ping", "/bin/ping", "/usr/sbin/ping", "/sbin/ping"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

/// One ICMP echo to `ip` with the system `ping` (`-n -c 1 -W secs`). `None` when `ping` is missing or
/// cannot run (no permission); `Some(answered)` otherwise.
pub async fn ping(ip: IpAddr, timeout: Duration) -> Option<bool> {
    let bin = find_ping()?;
    let secs = timeout.as_secs_f64().ceil().max(1.0) as u64;
    let mut cmd = tokio::process::Command::new(bin);
    if ip.is_ipv6() {
        cmd.arg("-6");
    }
    cmd.args(["-n", "-c", "1", "-W", &secs.to_string(), &ip.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let limit = timeout + Duration::from_secs(2);
    match tokio::time::timeout(limit, cmd.status()).await {
        Ok(Ok(st)) if st.success() => Some(true),
        Ok(Ok(st)) if st.code() == Some(1) => Some(false),
        Err(_) => Some(false),
        _ => None,
    }
}

/// TCP connect to `ip:port` within `timeout`: `Some(true)` connected, `Some(false)` refused (the host is
/// up), `None` no answer.
pub async fn tcp_probe(ip: IpAddr, port: u16, timeout: Duration) -> Option<bool> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(SocketAddr::new(ip, port))).await {
        Ok(Ok(_)) => Some(true),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(false),
        _ => None,
    }
}

/// One row of `/proc/net/arp`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ArpEntry {
    /// IPv4 address.
    pub ip: String,
    /// MAC address, lower case `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Interface name.
    pub device: String,
}

/// Parses the text of `/proc/net/arp` (header line, then `IP HWtype Flags HWaddress Mask Device`).
/// Incomplete entries (flags `0x0` or an all-zero MAC) are skipped.
pub fn parse_proc_net_arp(text: &str) -> Vec<ArpEntry> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 6 {
                return None;
            }
            let flags = u32::from_str_radix(f[2].trim_start_matches("0x"), 16).unwrap_or(0);
            let mac = f[3].to_ascii_lowercase();
            if flags & 0x2 == 0 || mac == "00:00:00:00:00:00" {
                return None;
            }
            Some(ArpEntry {
                ip: f[0].to_string(),
                mac,
                device: f[5].to_string(),
            })
        })
        .collect()
}

/// The MAC of `ip` in this machine's ARP table (`/proc/net/arp`, complete entries only), lower case.
pub async fn arp_mac(ip: IpAddr) -> Option<String> {
    if !ip.is_ipv4() {
        return None;
    }
    let text = tokio::fs::read_to_string("/proc/net/arp").await.ok()?;
    let want = ip.to_string();
    parse_proc_net_arp(&text)
        .into_iter()
        .find(|e| e.ip == want)
        .map(|e| e.mac)
}

/// True for documentation addresses (RFC 5737, RFC 3849), which are never probed.
pub fn is_documentation(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            matches!((o[0], o[1], o[2]), (192, 0, 2) | (198, 51, 100) | (203, 0, 113))
        }
        IpAddr::V6(v6) => v6.segments()[0] == 0x2001 && v6.segments()[1] == 0x0db8,
    }
}

/// Parses `/proc/net/route` (IPv4 main table; hex fields in host byte order, little-endian on every
/// platform Proxmox runs on) into the directly connected networks: `(network, mask)` of every route that
/// is up, has no gateway and is not the default route.
pub fn parse_on_link_routes(text: &str) -> Vec<([u8; 4], [u8; 4])> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let hex = |s: &str| u32::from_str_radix(s, 16).ok();
            let (dest, gw, flags, mask) = (hex(f[1])?, hex(f[2])?, hex(f[3])?, hex(f[7])?);
            (flags & 0x1 != 0 && gw == 0 && mask != 0).then(|| (dest.to_le_bytes(), mask.to_le_bytes()))
        })
        .collect()
}

/// True when `ip` may be probed under `scope`: never documentation addresses; with `OnLink` only
/// loopback and addresses inside a directly connected IPv4 network of this machine.
pub async fn in_scope(ip: IpAddr, scope: VerifyScope) -> bool {
    if is_documentation(ip) {
        return false;
    }
    match scope {
        VerifyScope::Off => false,
        VerifyScope::All => true,
        VerifyScope::OnLink => ip.is_loopback() || is_on_link(ip).await,
    }
}

/// True when `ip` is an IPv4 address inside a directly connected network of this machine (where its
/// ARP entry is the host's own, so the MAC comparison means something).
pub async fn is_on_link(ip: IpAddr) -> bool {
    let IpAddr::V4(v4) = ip else {
        return false;
    };
    let text = tokio::fs::read_to_string("/proc/net/route")
        .await
        .unwrap_or_default();
    let o = v4.octets();
    parse_on_link_routes(&text)
        .iter()
        .any(|(net, mask)| (0..4).all(|i| o[i] & mask[i] == net[i] & mask[i]))
}

/// Verifies `ip` for a VM whose config MACs are `macs` (any case): if the address is in scope
/// ([`in_scope`]), probe (ping, else TCP to [`VerifyConfig::tcp_ports`]), then compare the ARP entry.
/// Takes at most about ping timeout + one TCP timeout per port.
pub async fn verify(ip: IpAddr, macs: &[String], cfg: &VerifyConfig) -> IpCheck {
    let started = std::time::Instant::now();
    if !in_scope(ip, cfg.scope).await {
        return IpCheck {
            address: ip.to_string(),
            probed: false,
            reachable: false,
            method: None,
            mac: MacCheck::Unknown,
            seen_mac: None,
            checked_at: now_secs(),
            took_ms: 0,
            reason: None,
        };
    }
    let mut method = None;
    if ping(ip, cfg.ping_timeout).await == Some(true) {
        method = Some("ping".to_string());
    } else {
        for port in &cfg.tcp_ports {
            match tcp_probe(ip, *port, cfg.tcp_timeout).await {
                Some(true) => method = Some(format!("tcp/{port}")),
                Some(false) => method = Some(format!("tcp/{port} refused")),
                None => continue,
            }
            break;
        }
    }
    let seen = arp_mac(ip).await;
    let mac = match &seen {
        Some(m) if macs.iter().any(|v| v.eq_ignore_ascii_case(m)) => MacCheck::Match,
        Some(_) if !macs.is_empty() => MacCheck::Mismatch,
        _ => MacCheck::Unknown,
    };
    IpCheck {
        address: ip.to_string(),
        probed: true,
        reachable: method.is_some(),
        method,
        mac,
        seen_mac: seen,
        checked_at: now_secs(),
        took_ms: started.elapsed().as_millis() as u64,
        reason: None,
    }
}

/// [`verify`], but only when the relays' dial rule could ever use `ip` ([`dial_static`] with the
/// address's on-link state): an address outside the cluster's `guest_networks` that is not on-link (so
/// no MAC match could admit it), or one that is loopback, link-local, special, the portal's own, a
/// node's or the API host's, is not pinged or TCP-probed — the check says `probed: false` with the
/// rule's message in `reason`.
pub async fn verify_dialable(ip: IpAddr, macs: &[String], cfg: &VerifyConfig, rules: &DialRules) -> IpCheck {
    let on_link = is_on_link(ip).await;
    match dial_static(ip, rules, on_link) {
        Ok(_) => verify(ip, macs, cfg).await,
        Err(refusal) => IpCheck {
            address: ip.to_string(),
            probed: false,
            reachable: false,
            method: None,
            mac: MacCheck::Unknown,
            seen_mac: None,
            checked_at: now_secs(),
            took_ms: 0,
            reason: Some(refusal.message),
        },
    }
}

// ---- tiers ---------------------------------------------------------------------------------------

/// What one tier answered.
#[derive(Debug, PartialEq)]
pub struct TierAnswer {
    /// The address to hand out.
    pub address: IpAddr,
    /// Further addresses (secondary list).
    pub all: Vec<IpAddr>,
    /// Source name to record instead of the tier's name.
    pub source: Option<String>,
}

impl TierAnswer {
    /// Reads a tier's answer: `"192.0.2.1"`, `{address, all, source}`; anything else (or an address
    /// that does not parse) is `None`.
    pub fn parse(v: &serde_json::Value) -> Option<TierAnswer> {
        use serde_json::Value;
        let ip = |v: &Value| {
            v.as_str().and_then(|s| {
                s.trim()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .ok()
            })
        };
        match v {
            Value::String(_) => Some(TierAnswer {
                address: ip(v)?,
                all: vec![],
                source: None,
            }),
            Value::Object(m) => Some(TierAnswer {
                address: ip(m.get("address")?)?,
                all: m
                    .get("all")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(ip).collect())
                    .unwrap_or_default(),
                source: m
                    .get("source")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            }),
            _ => None,
        }
    }
}

/// One tier of IP discovery (the binary supplies the script-backed ones, `scripts/ip/NN-name.rhai`).
pub trait DiscoveryTier: Send + Sync {
    /// The name recorded as the address's source when the answer names none (`20-guest-agent`).
    fn name(&self) -> &str;
    /// The tier's answer for `guest` (`Ok(None)`: ask the next tier). An error is logged and the next
    /// tier runs.
    fn discover<'a>(&'a self, guest: &'a GuestRecord) -> BoxFuture<'a, Result<Option<TierAnswer>, String>>;
}

/// The VM's config MACs, lower case (every `netN`, and `mac` if it is not among them).
pub fn guest_macs(guest: &GuestRecord) -> Vec<String> {
    let mut macs: Vec<String> = guest.macs.iter().map(|(_, m)| m.to_ascii_lowercase()).collect();
    if let Some(m) = &guest.mac
        && !macs.contains(&m.to_ascii_lowercase())
    {
        macs.push(m.to_ascii_lowercase());
    }
    macs
}

/// Runs `tiers` in order for `guest` until one gives an address that is not provably another
/// machine's: each answer is verified ([`verify_dialable`] under `rules`) and the check is stored
/// beside the guest in `inventory` ([`crate::Snapshot::facts`]); an answer whose ARP entry shows another
/// MAC is dropped and the next tier runs. A plain answer that repeats the current address keeps its
/// list and the tier that found it. `None` when no tier answers (the syncer backs off).
pub async fn discover_by_tiers(
    tiers: &[Box<dyn DiscoveryTier + '_>],
    guest: &GuestRecord,
    verify_cfg: &VerifyConfig,
    rules: &DialRules,
    inventory: &Inventory,
) -> Option<IpRecord> {
    let macs = guest_macs(guest);
    for tier in tiers {
        let name = tier.name().to_string();
        let answer = match tier.discover(guest).await {
            Ok(Some(a)) => a,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(tier = %name, vmid = guest.vmid, error = %e, "IP tier failed");
                continue;
            }
        };
        let check = verify_dialable(answer.address, &macs, verify_cfg, rules).await;
        if let Some(reason) = &check.reason {
            tracing::debug!(tier = %name, vmid = guest.vmid, address = %answer.address, %reason, "address not probed");
        }
        let trusted = check.trusted();
        let seen_mac = check.seen_mac.clone();
        inventory
            .update_facts(&guest.cluster, guest.vmid, |f| f.check = Some(check))
            .await;
        if !trusted {
            tracing::warn!(
                tier = %name, vm = %format!("{}/{}", guest.cluster, guest.vmid), address = %answer.address,
                seen_mac = ?seen_mac, "address answers with another machine's MAC; not used"
            );
            continue;
        }
        let previous = guest
            .ip
            .as_ref()
            .filter(|p| p.address == answer.address.to_string());
        let (prev_all, prev_source) = match previous {
            Some(p) if answer.all.is_empty() && answer.source.is_none() => {
                (p.all.clone(), Some(p.source.clone()).filter(|s| !s.is_empty()))
            }
            _ => (Vec::new(), None),
        };
        let mut all: Vec<String> = vec![answer.address.to_string()];
        for a in answer.all.iter().map(|a| a.to_string()).chain(prev_all) {
            if !all.contains(&a) {
                all.push(a);
            }
        }
        return Some(IpRecord {
            address: answer.address.to_string(),
            all,
            source: answer.source.or(prev_source).unwrap_or(name),
            seen_at: now_secs(),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_listener_is_reachable_with_unknown_mac() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let cfg = VerifyConfig {
            tcp_ports: vec![port],
            ping_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        let c = verify("127.0.0.1".parse().unwrap(), &["bc:24:11:00:00:01".into()], &cfg).await;
        assert!(c.reachable, "{c:?}");
        assert_eq!(c.mac, MacCheck::Unknown, "loopback has no ARP entry");
        assert!(c.trusted());
        assert_eq!(c.state(), "reachable");
    }

    #[tokio::test]
    async fn documentation_and_routed_addresses_are_not_probed_by_default() {
        for doc in ["192.0.2.20", "198.51.100.7", "203.0.113.9", "2001:db8::7"] {
            let ip: IpAddr = doc.parse().unwrap();
            assert!(is_documentation(ip));
            assert!(!in_scope(ip, VerifyScope::All).await, "{doc}");
            let c = verify(ip, &[], &VerifyConfig::default()).await;
            assert_eq!((c.probed, c.state()), (false, "unchecked"));
        }
        assert!(in_scope("127.60.16.3".parse().unwrap(), VerifyScope::OnLink).await);
        assert!(!in_scope("127.60.16.3".parse().unwrap(), VerifyScope::Off).await);
        // A routed address (nothing is sent: only the routing table is read).
        let routes = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                      eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\n\
                      br0\t000712C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\n";
        assert_eq!(
            parse_on_link_routes(routes),
            vec![([198, 18, 7, 0], [255, 255, 255, 0])]
        );
    }

    #[tokio::test]
    async fn an_address_the_dial_rule_refuses_is_never_probed() {
        // Something listens on loopback: a probe would find it reachable.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let cfg = VerifyConfig {
            scope: VerifyScope::All,
            tcp_ports: vec![port],
            ..Default::default()
        };
        let rules = DialRules::default();
        let c = verify_dialable("127.0.0.1".parse().unwrap(), &[], &cfg, &rules).await;
        assert_eq!((c.probed, c.reachable, c.state()), (false, false, "unchecked"));
        assert!(
            c.reason.as_deref().is_some_and(|r| r.contains("loopback")),
            "{c:?}"
        );
        // A routed address outside the guest networks: refused by the rule, even with scope All.
        let c = verify_dialable("198.18.250.9".parse().unwrap(), &[], &cfg, &rules).await;
        assert!(!c.probed, "{c:?}");
        assert!(
            c.reason.as_deref().is_some_and(|r| r.contains("guest_networks")),
            "{c:?}"
        );
        // Inside a test range the same loopback listener is probed.
        let test = DialRules {
            test_ranges: vec!["127.0.0.0/8".parse().unwrap()],
            ..DialRules::default()
        };
        let c = verify_dialable("127.0.0.1".parse().unwrap(), &[], &cfg, &test).await;
        assert!(c.probed && c.reachable && c.reason.is_none(), "{c:?}");
    }

    struct Fixed(&'static str, Result<Option<&'static str>, &'static str>);

    impl DiscoveryTier for Fixed {
        fn name(&self) -> &str {
            self.0
        }
        fn discover<'a>(&'a self, _: &'a GuestRecord) -> BoxFuture<'a, Result<Option<TierAnswer>, String>> {
            let r = self
                .1
                .map(|a| a.map(|a| TierAnswer::parse(&serde_json::json!(a)).unwrap()));
            Box::pin(async move { r.map_err(str::to_string) })
        }
    }

    #[tokio::test]
    async fn tiers_run_in_order_past_failures_and_the_check_lands_beside_the_guest() {
        let inventory = Inventory::load(None, &[("lab".into(), "Lab".into())]).unwrap();
        let guest = GuestRecord {
            cluster: "lab".into(),
            vmid: 7,
            status: "running".into(),
            ..Default::default()
        };
        inventory
            .replace_cluster("lab", vec![guest.clone()], Default::default())
            .await;
        let version = inventory.snapshot().version;
        let tiers: Vec<Box<dyn DiscoveryTier>> = vec![
            Box::new(Fixed("10-broken", Err("boom"))),
            Box::new(Fixed("20-silent", Ok(None))),
            Box::new(Fixed("30-found", Ok(Some("198.51.100.7")))),
            Box::new(Fixed("40-never-asked", Ok(Some("198.51.100.8")))),
        ];
        let found = discover_by_tiers(
            &tiers,
            &guest,
            &VerifyConfig::default(),
            &DialRules::default(),
            &inventory,
        )
        .await
        .unwrap();
        assert_eq!(
            (found.address.as_str(), found.source.as_str()),
            ("198.51.100.7", "30-found")
        );
        let snap = inventory.snapshot();
        let check = snap.facts("lab", 7).check.unwrap();
        assert_eq!(
            (check.address.as_str(), check.state()),
            ("198.51.100.7", "unchecked")
        );
        assert_eq!(snap.version, version, "facts do not change the guest list");
    }

    #[test]
    fn states_name_what_the_portal_shows() {
        let mut c = IpCheck {
            address: "198.51.100.7".into(),
            probed: true,
            reachable: true,
            method: Some("ping".into()),
            mac: MacCheck::Match,
            seen_mac: Some("bc:24:11:00:00:01".into()),
            checked_at: 0,
            took_ms: 1,
            reason: None,
        };
        assert_eq!(c.state(), "verified");
        c.mac = MacCheck::Mismatch;
        assert_eq!(c.state(), "mismatch");
        assert!(!c.trusted());
        c.mac = MacCheck::Unknown;
        c.reachable = false;
        assert_eq!(c.state(), "unreachable");
    }
}
