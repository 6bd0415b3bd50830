//! `net::` — reachability checks and address helpers for IP discovery: ping, TCP open, the
//! kernel's ARP table (`/proc/net/arp`), address classes and CIDR membership.

use std::net::IpAddr;
use std::time::Duration;

use rhai::plugin::*;

pub use sync::discovery::{ArpEntry, parse_proc_net_arp};

fn arp_table() -> Vec<ArpEntry> {
    std::fs::read_to_string("/proc/net/arp")
        .map(|t| parse_proc_net_arp(&t))
        .unwrap_or_default()
}

/// Normalizes a MAC address to lower case with `:` separators; `None` if it is not 6 hex bytes.
pub fn normalize_mac(mac: &str) -> Option<String> {
    let hex: String = mac.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    let seps_ok = mac
        .chars()
        .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '-' || c == '.');
    if hex.len() != 12 || !seps_ok {
        return None;
    }
    let lower = hex.to_ascii_lowercase();
    let parts: Vec<&str> = (0..6).map(|i| &lower[i * 2..i * 2 + 2]).collect();
    Some(parts.join(":"))
}

/// Address class of an IP: `loopback`, `link_local`, `unspecified`, `multicast`, `private`
/// (RFC 1918, RFC 4193 ULA, 100.64/10 CGNAT), `documentation`, `public`.
pub fn classify(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                "loopback"
            } else if v4.is_link_local() {
                "link_local"
            } else if v4.is_unspecified() {
                "unspecified"
            } else if v4.is_multicast() || v4.is_broadcast() {
                "multicast"
            } else if v4.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
                "private"
            } else if v4.is_documentation() {
                "documentation"
            } else {
                "public"
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if let Some(v4) = v6.to_ipv4_mapped() {
                return classify(IpAddr::V4(v4));
            }
            if v6.is_loopback() {
                "loopback"
            } else if v6.is_unspecified() {
                "unspecified"
            } else if (s[0] & 0xffc0) == 0xfe80 {
                "link_local"
            } else if v6.is_multicast() {
                "multicast"
            } else if (s[0] & 0xfe00) == 0xfc00 {
                "private"
            } else if s[0] == 0x2001 && s[1] == 0x0db8 {
                "documentation"
            } else {
                "public"
            }
        }
    }
}

/// `true` if `ip` lies in `cidr` (`10.0.0.0/8`, `fd00::/8`; a bare address means /32 or /128).
pub fn in_cidr(ip: IpAddr, cidr: &str) -> Option<bool> {
    let (net, len) = match cidr.split_once('/') {
        Some((n, l)) => (
            n.trim().parse::<IpAddr>().ok()?,
            Some(l.trim().parse::<u32>().ok()?),
        ),
        None => (cidr.trim().parse::<IpAddr>().ok()?, None),
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let len = len.unwrap_or(32);
            if len > 32 {
                return None;
            }
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            Some(u32::from(a) & mask == u32::from(n) & mask)
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let len = len.unwrap_or(128);
            if len > 128 {
                return None;
            }
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
            Some(u128::from(a) & mask == u128::from(n) & mask)
        }
        _ => Some(false),
    }
}

fn parse_ip(addr: &str) -> Result<IpAddr, Box<EvalAltResult>> {
    let trimmed = addr.trim().trim_start_matches('[').trim_end_matches(']');
    trimmed
        .parse::<IpAddr>()
        .map_err(|_| crate::engine::throw("net.invalid_address", format!("{addr:?} is not an IP address")))
}

fn timeout_of(ms: i64) -> Result<Duration, Box<EvalAltResult>> {
    u64::try_from(ms)
        .ok()
        .filter(|ms| (1..=60_000).contains(ms))
        .map(Duration::from_millis)
        .ok_or_else(|| crate::engine::throw("arg.timeout", "timeout_ms must be 1..=60000"))
}

/// One ICMP echo through the discovery's ping ([`sync::discovery::ping`], the only one); if `ping` is
/// missing or cannot run, a TCP probe to port 7 stands in: an answer of any kind, even a refusal,
/// means the host is up.
pub async fn ping(ip: IpAddr, timeout: Duration) -> bool {
    match sync::discovery::ping(ip, timeout).await {
        Some(up) => up,
        None => sync::discovery::tcp_probe(ip, 7, timeout).await.is_some(),
    }
}

/// The address rules of [`sync::address`] for scripts: the policy a tier's `vm` map carries
/// (`allow_ranges`: CIDR strings, `prefer_ipv6`).
fn policy_of(vm: &serde_json::Value) -> sync::AddressPolicy {
    sync::AddressPolicy {
        allow_ranges: vm
            .get("allow_ranges")
            .and_then(serde_json::Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str()?.trim().parse::<ipnet::IpNet>().ok())
                    .collect()
            })
            .unwrap_or_default(),
        prefer_ipv6: vm.get("prefer_ipv6").and_then(serde_json::Value::as_bool) == Some(true),
    }
}

/// [`sync::address::choose`] over interfaces shaped like the guest agent's answer (`name`,
/// `hardware-address`, `ip-addresses: [#{"ip-address"}]`) for a tier's `vm` map (`macs: [#{index,
/// mac}]` or `mac`, `ip` the previous address, `allow_ranges`, `prefer_ipv6`): `#{address, all}` or
/// `None` when no usable address exists.
pub fn choose_for_vm(ifaces: &serde_json::Value, vm: &serde_json::Value) -> Option<serde_json::Value> {
    use serde_json::Value;
    let str_of = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let nics: Vec<sync::NicAddresses> = ifaces
        .as_array()?
        .iter()
        .filter(|i| i.is_object())
        .map(|i| sync::NicAddresses {
            name: str_of(i.get("name")).unwrap_or_default(),
            mac: str_of(i.get("hardware-address")).and_then(|m| normalize_mac(&m)),
            addrs: i
                .get("ip-addresses")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|a| sync::address::parse_addr(a.get("ip-address")?.as_str()?))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    let mut macs: Vec<(u32, String)> = vm
        .get("macs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .enumerate()
                .filter_map(|(pos, m)| {
                    let mac = normalize_mac(m.get("mac")?.as_str()?)?;
                    let index = m
                        .get("index")
                        .and_then(Value::as_u64)
                        .and_then(|i| u32::try_from(i).ok())
                        .unwrap_or(pos as u32);
                    Some((index, mac))
                })
                .collect()
        })
        .unwrap_or_default();
    if macs.is_empty()
        && let Some(mac) = str_of(vm.get("mac")).and_then(|m| normalize_mac(&m))
    {
        macs.push((0, mac));
    }
    let previous = str_of(vm.get("ip")).and_then(|p| sync::address::parse_addr(&p));
    let c = sync::address::choose(&nics, &macs, previous, &policy_of(vm))?;
    let all: Vec<String> = c.all.iter().map(|a| a.to_string()).collect();
    Some(serde_json::json!({"address": c.primary.to_string(), "all": all}))
}

/// Network helpers.
#[export_module]
pub mod net_mod {
    use super::*;
    use crate::engine::call_state;

    /// Sends one ICMP echo to `addr` (an IPv4/IPv6 literal, no host names) and waits up to
    /// `timeout_ms` milliseconds (1..=60000; ping rounds up to whole seconds).
    /// Returns `true` if it answered. Without a usable `ping` binary, a TCP probe to port 7 stands
    /// in (any answer, even a refusal, counts as up).
    /// Errors: `net.invalid_address`, `arg.timeout`.
    #[rhai_fn(return_raw)]
    pub fn ping(ctx: NativeCallContext, addr: &str, timeout_ms: i64) -> Result<bool, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let ip = parse_ip(addr)?;
            let timeout = timeout_of(timeout_ms)?;
            let state = call_state(&ctx)?;
            Ok(state.host_call(|| state.host.runtime().block_on(super::ping(ip, timeout))))
        })
    }

    /// Tries a TCP connection to `addr`:`port` (1..=65535) within `timeout_ms` milliseconds
    /// (1..=60000). Returns `true` if the connection was accepted (it is closed at once),
    /// `false` if refused or no answer.
    /// Errors: `net.invalid_address`, `arg.port`, `arg.timeout`.
    #[rhai_fn(return_raw)]
    pub fn tcp_open(
        ctx: NativeCallContext,
        addr: &str,
        port: i64,
        timeout_ms: i64,
    ) -> Result<bool, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let ip = parse_ip(addr)?;
            let port = u16::try_from(port)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| crate::engine::throw("arg.port", "port must be 1..=65535"))?;
            let timeout = timeout_of(timeout_ms)?;
            let state = call_state(&ctx)?;
            Ok(state.host_call(|| {
                state
                    .host
                    .runtime()
                    .block_on(sync::discovery::tcp_probe(ip, port, timeout))
                    == Some(true)
            }))
        })
    }

    /// Looks up `ip` (IPv4) in this machine's ARP table (`/proc/net/arp`).
    /// Returns the MAC as lower-case `aa:bb:cc:dd:ee:ff`, or `()` when there is no complete entry.
    /// Errors: `net.invalid_address`.
    #[rhai_fn(return_raw)]
    pub fn arp_lookup(ctx: NativeCallContext, ip: &str) -> Result<Dynamic, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let ip = parse_ip(ip)?.to_string();
            Ok(super::arp_table()
                .into_iter()
                .find(|e| e.ip == ip)
                .map(|e| Dynamic::from(e.mac))
                .unwrap_or(Dynamic::UNIT))
        })
    }

    /// Finds the IPv4 address this machine's ARP table (`/proc/net/arp`) holds for `mac`
    /// (any of `AA:BB:..`, `aa-bb-..`, `aabb.ccdd.eeff`). Returns the address as a string, or `()`.
    /// Errors: `net.invalid_mac`.
    #[rhai_fn(return_raw)]
    pub fn arp_ip_for_mac(ctx: NativeCallContext, mac: &str) -> Result<Dynamic, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let mac = super::normalize_mac(mac).ok_or_else(|| {
                crate::engine::throw("net.invalid_mac", format!("{mac:?} is not a MAC address"))
            })?;
            Ok(super::arp_table()
                .into_iter()
                .find(|e| e.mac == mac)
                .map(|e| Dynamic::from(e.ip))
                .unwrap_or(Dynamic::UNIT))
        })
    }

    /// The whole ARP table (`/proc/net/arp`) as an array of `#{ip, mac, device}` maps
    /// (complete entries only; empty when unreadable).
    #[rhai_fn(return_raw)]
    pub fn arp_table(ctx: NativeCallContext) -> Result<rhai::Array, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            super::arp_table().iter().map(crate::modules::to_dyn).collect()
        })
    }

    /// Class of an address: `"loopback"`, `"link_local"`, `"unspecified"`, `"multicast"`,
    /// `"private"` (RFC 1918, fc00::/7, 100.64.0.0/10), `"documentation"`, `"public"`; and
    /// `"invalid"` when `ip` is not an IP literal. Never throws.
    pub fn classify(ip: &str) -> String {
        parse_ip(ip)
            .map(|ip| super::classify(ip).to_string())
            .unwrap_or_else(|_| "invalid".into())
    }

    /// `true` if `ip` is inside `cidr` (`"10.0.0.0/8"`, `"fd00::/8"`, or a bare address).
    /// Addresses of different families are never inside.
    /// Errors: `net.invalid_address` (bad ip), `net.invalid_cidr`.
    #[rhai_fn(return_raw)]
    pub fn in_cidr(ctx: NativeCallContext, ip: &str, cidr: &str) -> Result<bool, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let ip = parse_ip(ip)?;
            super::in_cidr(ip, cidr).ok_or_else(|| {
                crate::engine::throw("net.invalid_cidr", format!("{cidr:?} is not a CIDR block"))
            })
        })
    }

    /// Chooses the VM's address with the core's rules (the same as the built-in discovery): never
    /// loopback, link-local, unspecified, multicast or broadcast; interfaces of container/virtual
    /// bridges and container bridge ranges skipped unless they are one of the VM's own NICs; the NIC
    /// of the VM's lowest `netN` wins; IPv4 first unless `vm.prefer_ipv6`; the previous `vm.ip` kept
    /// while that NIC still has it. `ifaces` is shaped like the guest agent's answer (`name`,
    /// `hardware-address`, `ip-addresses: [#{"ip-address"}]`); `vm` is the tier's map (`macs`, `mac`,
    /// `ip`, `allow_ranges`, `prefer_ipv6`). Returns `#{address, all}` (`all`: every usable address,
    /// the VM's NICs first in `netN` order) or `()` when there is none. Never throws.
    pub fn choose(ifaces: Dynamic, vm: Dynamic) -> Dynamic {
        let json = |d: &Dynamic| rhai::serde::from_dynamic::<serde_json::Value>(d).unwrap_or_default();
        super::choose_for_vm(&json(&ifaces), &json(&vm))
            .and_then(|v| crate::modules::to_dyn(&v).ok())
            .unwrap_or(Dynamic::UNIT)
    }

    /// `true` if `ip` is an address a user can connect to: an IP literal that is not loopback,
    /// link-local, unspecified, multicast or broadcast — unless it lies in one of `allow` (array of
    /// CIDR strings). The core's rule ([`sync::address::is_usable`]). Never throws.
    pub fn usable(ip: Dynamic, allow: Dynamic) -> bool {
        let Some(ip) = ip.into_string().ok().and_then(|s| parse_ip(&s).ok()) else {
            return false;
        };
        let allow = rhai::serde::from_dynamic::<serde_json::Value>(&allow).unwrap_or_default();
        let policy = super::policy_of(&serde_json::json!({ "allow_ranges": allow }));
        sync::address::is_usable(&ip, &policy)
    }

    /// `true` for an interface name of a container/virtual bridge, tunnel or loopback (`docker0`,
    /// `br-…`, `veth…`, `lo`, Windows' `Loopback Pseudo-Interface 1`, …). Never throws.
    pub fn virtual_iface(name: Dynamic) -> bool {
        name.into_string()
            .is_ok_and(|n| sync::address::is_virtual_interface(&n))
    }

    /// Strips a `/prefix` from `10.0.0.5/24` and a `%zone` from `fe80::1%eth0`: the address as a
    /// string, or `()` when it is not an IP literal. Never throws.
    pub fn strip_prefix(cidr: Dynamic) -> Dynamic {
        cidr.into_string()
            .ok()
            .and_then(|s| sync::address::parse_addr(&s))
            .map(|ip| Dynamic::from(ip.to_string()))
            .unwrap_or(Dynamic::UNIT)
    }

    /// Normalizes a MAC address to lower case `aa:bb:cc:dd:ee:ff`; `()` if it is not one.
    pub fn normalize_mac(mac: &str) -> Dynamic {
        super::normalize_mac(mac)
            .map(Dynamic::from)
            .unwrap_or(Dynamic::UNIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_arp_parse_skips_incomplete_entries() {
        let text = "IP address       HW type     Flags       HW address            Mask     Device\n\
                    192.0.2.10       0x1         0x2         52:54:00:AB:CD:EF     *        vmbr0\n\
                    192.0.2.11       0x1         0x0         00:00:00:00:00:00     *        vmbr0\n";
        let t = parse_proc_net_arp(text);
        assert_eq!(
            t,
            vec![ArpEntry {
                ip: "192.0.2.10".into(),
                mac: "52:54:00:ab:cd:ef".into(),
                device: "vmbr0".into()
            }]
        );
    }

    #[test]
    fn classify_names_the_address_kinds_discovery_skips() {
        let c = |s: &str| classify(s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])));
        assert_eq!(c("127.0.0.1"), "loopback");
        assert_eq!(c("169.254.1.2"), "link_local");
        assert_eq!(c("fe80::1"), "link_local");
        assert_eq!(c("10.1.2.3"), "private");
        assert_eq!(c("172.17.0.2"), "private");
        assert_eq!(c("100.64.0.1"), "private");
        assert_eq!(c("fd12::1"), "private");
        assert_eq!(c("198.51.100.7"), "documentation");
        assert_eq!(c("8.8.8.8"), "public");
    }

    #[test]
    fn in_cidr_matches_prefixes_of_both_families() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        assert_eq!(in_cidr(ip("172.17.0.2"), "172.17.0.0/16"), Some(true));
        assert_eq!(in_cidr(ip("172.18.0.2"), "172.17.0.0/16"), Some(false));
        assert_eq!(in_cidr(ip("127.60.0.5"), "127.60.0.0/16"), Some(true));
        assert_eq!(in_cidr(ip("fd00::5"), "fd00::/8"), Some(true));
        assert_eq!(in_cidr(ip("10.0.0.1"), "fd00::/8"), Some(false));
        assert_eq!(in_cidr(ip("10.0.0.1"), "0.0.0.0/0"), Some(true));
        assert_eq!(in_cidr(ip("10.0.0.1"), "10.0.0.0/33"), None);
        assert_eq!(in_cidr(ip("10.0.0.1"), "nonsense"), None);
    }

    #[test]
    fn normalize_mac_accepts_common_spellings() {
        assert_eq!(
            normalize_mac("52:54:00:AB:CD:EF").as_deref(),
            Some("52:54:00:ab:cd:ef")
        );
        assert_eq!(
            normalize_mac("52-54-00-ab-cd-ef").as_deref(),
            Some("52:54:00:ab:cd:ef")
        );
        assert_eq!(
            normalize_mac("5254.00ab.cdef").as_deref(),
            Some("52:54:00:ab:cd:ef")
        );
        assert_eq!(normalize_mac("52:54:00:ab:cd"), None);
        assert_eq!(normalize_mac("zz:54:00:ab:cd:ef"), None);
    }

    #[tokio::test]
    async fn ping_answers_on_loopback_through_the_discovery_ping() {
        assert!(ping(IpAddr::from([127, 0, 0, 1]), Duration::from_millis(1000)).await);
    }
}
