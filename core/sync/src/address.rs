//! Choosing a guest's primary address from what the guest agent, LXC `/interfaces` or the config report.
//!
//! Rules (DESIGN §7; for agents that list loopback first, only link-local while DHCP is pending,
//! multi-NIC guests whose order changes between polls, LXC CIDR strings, and LXC answers with an
//! empty `ip-addresses` or `data: null`): loopback, link-local, unspecified, multicast
//! and broadcast addresses are never chosen; interfaces of container/virtual bridges (`docker0`,
//! `virbr0`, `br-…`, `veth…`, …) are skipped, and so are container bridge ranges (`172.17.0.0/16`, …) on
//! an interface that is not one of the VM's own NICs; the NIC whose MAC is the VM's lowest `netN` wins; IPv4
//! before IPv6 unless configured; the previous choice is kept while it is still offered, so a
//! multi-NIC guest does not flap between polls. `allow_ranges` lets exactly the listed ranges through
//! even if they are loopback (test setups with `127.60.0.0/16`; empty in production).

use std::net::IpAddr;

use ipnet::IpNet;

/// Addresses reported for one interface of a guest.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NicAddresses {
    /// Interface name as the guest reports it (`ens18`, `eth0`, `Ethernet 2`, `lo`).
    pub name: String,
    /// Hardware address, lower case (`bc:24:11:00:00:20`), when reported.
    pub mac: Option<String>,
    /// Addresses without prefix length.
    pub addrs: Vec<IpAddr>,
}

/// How to choose.
#[derive(Clone, Debug, Default)]
pub struct AddressPolicy {
    /// Ranges always accepted, even loopback (tests only).
    pub allow_ranges: Vec<IpNet>,
    /// Prefer IPv6 over IPv4.
    pub prefer_ipv6: bool,
}

/// The chosen primary address and all usable ones (ordered by NIC rank, primary first).
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub primary: IpAddr,
    pub all: Vec<IpAddr>,
}

const BRIDGE_PREFIXES: &[&str] = &[
    "docker",
    "br-",
    "virbr",
    "veth",
    "cni",
    "flannel",
    "cali",
    "vxlan",
    "lxcbr",
    "lxdbr",
    "podman",
    "kube-",
    "tun",
    "tap",
    "zt",
    "vethernet",
    "isatap",
    "teredo",
    "wg",
];

/// Address ranges of container bridges inside a guest (Docker's docker0 and default networks, LXD/LXC's
/// lxcbr0, Podman, libvirt's virbr0). Only applied to interfaces that are not one of the VM's own NICs:
/// a lab network that happens to use such a range still works; `allow_ranges` override them too.
const BRIDGE_RANGES: &[&str] = &[
    "172.17.0.0/16",
    "172.18.0.0/16",
    "10.0.3.0/24",
    "10.88.0.0/16",
    "192.168.122.0/24",
];

/// True when `ip` lies in a container bridge range ([`BRIDGE_RANGES`]) and not in `allow_ranges`.
pub fn is_bridge_address(ip: &IpAddr, policy: &AddressPolicy) -> bool {
    !policy.allow_ranges.iter().any(|r| r.contains(ip))
        && BRIDGE_RANGES
            .iter()
            .filter_map(|r| r.parse::<IpNet>().ok())
            .any(|r| r.contains(ip))
}

/// True when an interface name belongs to a container/virtual bridge or tunnel, not a real NIC.
pub fn is_virtual_interface(name: &str) -> bool {
    let n = name.trim().to_ascii_lowercase();
    n == "lo" || n.starts_with("loopback") || BRIDGE_PREFIXES.iter().any(|p| n.starts_with(p))
}

/// True when `ip` may be handed to a user as the guest's address.
pub fn is_usable(ip: &IpAddr, policy: &AddressPolicy) -> bool {
    if policy.allow_ranges.iter().any(|r| r.contains(ip)) {
        return true;
    }
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.octets()[0] == 0)
        }
        IpAddr::V6(v6) => {
            let seg0 = v6.segments()[0];
            !(v6.is_loopback() || v6.is_unspecified() || v6.is_multicast() || (seg0 & 0xffc0) == 0xfe80)
        }
    }
}

/// Parses an address that may carry a prefix (`192.0.2.95/22`) or a zone (`fe80::1%eth0`).
pub fn parse_addr(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    let s = s.split('/').next().unwrap_or(s);
    let s = s.split('%').next().unwrap_or(s);
    s.parse().ok()
}

/// Chooses the primary address.
///
/// `config_macs` are the VM's NICs from its config as `(netN index, mac lower case)`. `previous` is the
/// address chosen at the last poll. Returns `None` when no usable address exists (e.g. only APIPA or
/// link-local while DHCP is pending — not an error: discovery moves on to the next tier).
pub fn choose(
    nics: &[NicAddresses],
    config_macs: &[(u32, String)],
    previous: Option<IpAddr>,
    policy: &AddressPolicy,
) -> Option<Choice> {
    // Rank: NICs matching a config MAC by netN index, then the others in the order reported.
    let mut ranked: Vec<(u64, &NicAddresses)> = nics
        .iter()
        .enumerate()
        .filter(|(_, nic)| {
            // A virtual interface is still taken when its MAC is one of the VM's own NICs.
            let own = nic
                .mac
                .as_deref()
                .is_some_and(|m| config_macs.iter().any(|(_, cm)| cm.eq_ignore_ascii_case(m)));
            own || !is_virtual_interface(&nic.name)
        })
        .map(|(pos, nic)| {
            let idx = nic.mac.as_deref().and_then(|m| {
                config_macs
                    .iter()
                    .find(|(_, cm)| cm.eq_ignore_ascii_case(m))
                    .map(|(i, _)| *i)
            });
            let rank = match idx {
                Some(i) => u64::from(i),
                None => 1_000 + pos as u64,
            };
            (rank, nic)
        })
        .collect();
    ranked.sort_by_key(|(rank, _)| *rank);

    // A NIC that is not one of the VM's own (rank 1000 and up) offers no container bridge address.
    let offered =
        |rank: u64, ip: &IpAddr| is_usable(ip, policy) && (rank < 1_000 || !is_bridge_address(ip, policy));
    let mut all: Vec<IpAddr> = Vec::new();
    for (rank, nic) in &ranked {
        for ip in &nic.addrs {
            if offered(*rank, ip) && !all.contains(ip) {
                all.push(*ip);
            }
        }
    }
    if all.is_empty() {
        return None;
    }
    // Primary: from the best-ranked NIC that has a usable address of the preferred family, else any.
    let prefer = |ip: &IpAddr| ip.is_ipv6() == policy.prefer_ipv6;
    let best_nic_addrs: Vec<IpAddr> = ranked
        .iter()
        .map(|(rank, nic)| {
            nic.addrs
                .iter()
                .copied()
                .filter(|ip| offered(*rank, ip))
                .collect::<Vec<_>>()
        })
        .find(|v| !v.is_empty())
        .unwrap_or_default();
    let primary = match previous {
        // Stable: keep the previous choice while the best NIC still offers it.
        Some(prev) if best_nic_addrs.contains(&prev) && prefer(&prev) => prev,
        _ => best_nic_addrs
            .iter()
            .copied()
            .find(|ip| prefer(ip))
            .or_else(|| all.iter().copied().find(|ip| prefer(ip)))
            .or_else(|| best_nic_addrs.first().copied())
            .unwrap_or(all[0]),
    };
    all.retain(|ip| *ip != primary);
    all.insert(0, primary);
    Some(Choice { primary, all })
}

// ---- where a relay may connect -------------------------------------------------------------------

/// What the portal must know to decide whether a relay (the SSH terminal, an RDP file it writes) may use
/// a guest address. Everything a guest reports is attacker input: a student is root in their guest and
/// sets whatever address the agent, DHCP or ARP then report.
#[derive(Clone, Debug, Default)]
pub struct DialRules {
    /// The cluster's `guest_networks` (admin-configured CIDRs where guests live).
    pub guest_networks: Vec<IpNet>,
    /// Loopback ranges a test or the demo runs its fake guests in (`[ip] allow_ranges`; refused by the
    /// config outside test mode).
    pub test_ranges: Vec<IpNet>,
    /// Addresses never dialled: the portal host's own (every interface), the cluster's nodes, the PVE
    /// API host.
    pub forbidden: Vec<(IpAddr, &'static str)>,
}

/// Where the relays of one cluster may connect, besides MAC-verified on-link addresses.
#[derive(Clone, Debug, Default)]
pub struct ClusterDial {
    /// `guest_networks` of the cluster: CIDRs where its guests live.
    pub guest_networks: Vec<IpNet>,
    /// The addresses of the cluster's API host and its nodes' SSH hosts as configured (resolved at
    /// start): never dialled for a guest.
    pub host_addresses: Vec<IpAddr>,
}

/// Every address of this machine's interfaces, read now (so a changed address counts at once).
pub fn own_addresses() -> Vec<IpAddr> {
    match if_addrs::get_if_addrs() {
        Ok(list) => list.into_iter().map(|i| i.ip()).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read this machine's interface addresses");
            Vec::new()
        }
    }
}

impl DialRules {
    /// The rules of one cluster: its `guest_networks`, the test ranges, and as forbidden this machine's
    /// own addresses (read now), the configured API and SSH hosts and the nodes' cluster addresses
    /// (`node_addresses`, from the last `/cluster/status`). The relays and the discovery's verify step
    /// build them here, so both apply the same rule.
    pub fn for_cluster(dial: &ClusterDial, test_ranges: &[IpNet], node_addresses: &[String]) -> DialRules {
        let mut forbidden: Vec<(IpAddr, &'static str)> =
            own_addresses().into_iter().map(|a| (a, "own")).collect();
        forbidden.extend(dial.host_addresses.iter().map(|a| (*a, "api")));
        forbidden.extend(
            node_addresses
                .iter()
                .filter_map(|a| a.parse::<IpAddr>().ok())
                .map(|a| (a, "node")),
        );
        DialRules {
            guest_networks: dial.guest_networks.clone(),
            test_ranges: test_ranges.to_vec(),
            forbidden,
        }
    }
}

/// Why an address may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialBasis {
    /// Inside the cluster's `guest_networks`.
    GuestNetwork,
    /// The ARP entry of the address carries one of the VM's configured MACs.
    Verified,
    /// Inside a test range (tests and the demo only).
    TestRange,
    /// Not decided by the static rules: on a directly connected IPv4 network, so an ARP comparison
    /// with the VM's MACs decides ([`dial_verdict`] with the check's result).
    NeedsMacMatch,
}

/// Why an address is refused, in words for the user and the setting an admin changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DialRefusal {
    /// Short machine word for the audit log (`loopback`, `link_local`, `special`, `own_address`,
    /// `node_address`, `api_host`, `mac_mismatch`, `not_guest_network`).
    pub code: &'static str,
    /// The sentence shown to the user.
    pub message: String,
}

impl std::fmt::Display for DialRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn refuse(code: &'static str, message: String) -> DialRefusal {
    DialRefusal { code, message }
}

/// The address rules that need no probe, in this order: a test range passes; unspecified, multicast,
/// broadcast and `0.0.0.0/8` never; loopback never; link-local only when listed in `guest_networks`;
/// the portal's own, the nodes' and the API host's addresses never; inside `guest_networks` passes;
/// an on-link IPv4 address may pass by a MAC match ([`DialBasis::NeedsMacMatch`]); anything else (routed,
/// IPv6 outside the guest networks) is refused without being contacted.
pub fn dial_static(ip: IpAddr, rules: &DialRules, on_link: bool) -> Result<DialBasis, DialRefusal> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    if rules.test_ranges.iter().any(|r| r.contains(&ip)) {
        return Ok(DialBasis::TestRange);
    }
    let listed = rules.guest_networks.iter().any(|r| r.contains(&ip));
    let (special, loopback, link_local) = match ip {
        IpAddr::V4(v4) => (
            v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() || v4.octets()[0] == 0,
            v4.is_loopback(),
            v4.is_link_local(),
        ),
        IpAddr::V6(v6) => (
            v6.is_unspecified() || v6.is_multicast(),
            v6.is_loopback(),
            (v6.segments()[0] & 0xffc0) == 0xfe80,
        ),
    };
    if special {
        return Err(refuse(
            "special",
            format!("address {ip} is not a host address (unspecified, multicast or broadcast)"),
        ));
    }
    if loopback {
        return Err(refuse(
            "loopback",
            format!("address {ip} is a loopback address of the portal itself"),
        ));
    }
    if link_local && !listed {
        return Err(refuse(
            "link_local",
            format!(
                "address {ip} is link-local; an admin lists it in the cluster's guest_networks to allow it"
            ),
        ));
    }
    if let Some((_, what)) = rules.forbidden.iter().find(|(a, _)| *a == ip) {
        let code = match *what {
            "node" => "node_address",
            "api" => "api_host",
            _ => "own_address",
        };
        let whose = match *what {
            "node" => "a Proxmox node of the cluster",
            "api" => "the cluster's API host",
            _ => "the portal host itself",
        };
        return Err(refuse(code, format!("address {ip} belongs to {whose}")));
    }
    if listed {
        return Ok(DialBasis::GuestNetwork);
    }
    if on_link && ip.is_ipv4() {
        return Ok(DialBasis::NeedsMacMatch);
    }
    Err(refuse(
        "not_guest_network",
        format!(
            "address {ip} is not on this cluster's guest networks (an admin adds it to guest_networks \
             of the cluster)"
        ),
    ))
}

/// The whole rule: [`dial_static`], then for an on-link address the ARP comparison — `mac_match` is
/// `Some(true)` when the address's ARP entry carries one of the VM's MACs, `Some(false)` when it carries
/// another machine's, `None` when nothing could be compared. Inside `guest_networks` a known mismatch
/// still refuses.
pub fn dial_verdict(
    ip: IpAddr,
    rules: &DialRules,
    on_link: bool,
    mac_match: Option<bool>,
) -> Result<DialBasis, DialRefusal> {
    let mismatch = || {
        refuse(
            "mac_mismatch",
            format!("address {ip} answers with another machine's hardware address"),
        )
    };
    match dial_static(ip, rules, on_link)? {
        DialBasis::TestRange => Ok(DialBasis::TestRange),
        DialBasis::GuestNetwork if mac_match == Some(false) => Err(mismatch()),
        DialBasis::GuestNetwork => Ok(DialBasis::GuestNetwork),
        DialBasis::NeedsMacMatch | DialBasis::Verified => match mac_match {
            Some(true) => Ok(DialBasis::Verified),
            Some(false) => Err(mismatch()),
            None => Err(refuse(
                "not_guest_network",
                format!(
                    "address {ip} is not on this cluster's guest networks and could not be verified as \
                     the VM's (an admin adds it to guest_networks of the cluster)"
                ),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(name: &str, mac: &str, addrs: &[&str]) -> NicAddresses {
        NicAddresses {
            name: name.into(),
            mac: Some(mac.into()),
            addrs: addrs.iter().map(|a| parse_addr(a).unwrap()).collect(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_listed_first_is_skipped() {
        let nics = [
            nic("lo", "00:00:00:00:00:00", &["127.0.0.1", "::1"]),
            nic(
                "ens18",
                "bc:24:11:00:00:20",
                &["192.0.2.20", "fe80::be24:11ff:fe00:20"],
            ),
        ];
        let c = choose(
            &nics,
            &[(0, "bc:24:11:00:00:20".into())],
            None,
            &AddressPolicy::default(),
        )
        .unwrap();
        assert_eq!(c.primary, ip("192.0.2.20"));
        assert_eq!(
            c.all,
            vec![ip("192.0.2.20")],
            "no loopback or link-local in the list"
        );
    }

    #[test]
    fn only_apipa_and_link_local_gives_no_address() {
        let nics = [nic(
            "Ethernet",
            "bc:24:11:00:00:21",
            &["169.254.17.5", "fe80::1:2:3:4"],
        )];
        assert_eq!(
            choose(
                &nics,
                &[(0, "bc:24:11:00:00:21".into())],
                None,
                &AddressPolicy::default()
            ),
            None
        );
        for bad in ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255"] {
            assert!(!is_usable(&ip(bad), &AddressPolicy::default()), "{bad}");
        }
    }

    #[test]
    fn multi_nic_prefers_lowest_net_index_and_never_flaps() {
        let nics = [
            nic("ens19", "bc:24:11:00:00:41", &["203.0.113.41"]),
            nic("ens18", "bc:24:11:00:00:40", &["198.51.100.40"]),
        ];
        let macs = [
            (0, "bc:24:11:00:00:40".to_string()),
            (1, "bc:24:11:00:00:41".to_string()),
        ];
        let mut prev = None;
        for _ in 0..5 {
            let c = choose(&nics, &macs, prev, &AddressPolicy::default()).unwrap();
            assert_eq!(c.primary, ip("198.51.100.40"));
            assert_eq!(
                c.all,
                vec![ip("198.51.100.40"), ip("203.0.113.41")],
                "secondary list ordered by netN"
            );
            prev = Some(c.primary);
        }
        // The agent's order flips: same answer.
        let flipped = [nics[1].clone(), nics[0].clone()];
        assert_eq!(
            choose(&flipped, &macs, prev, &AddressPolicy::default())
                .unwrap()
                .primary,
            ip("198.51.100.40")
        );
    }

    #[test]
    fn lxc_cidr_strings_are_stripped() {
        assert_eq!(parse_addr("192.0.2.95/22"), Some(ip("192.0.2.95")));
        assert_eq!(
            parse_addr("fe80::be24:11ff:fe00:700/64"),
            Some(ip("fe80::be24:11ff:fe00:700"))
        );
        assert_eq!(parse_addr("fe80::1%eth0"), Some(ip("fe80::1")));
    }

    #[test]
    fn docker_bridge_address_is_skipped() {
        let nics = [
            nic("docker0", "02:42:ac:11:00:01", &["172.17.0.1"]),
            nic("br-5a1b", "02:42:aa:bb:cc:dd", &["172.18.0.1"]),
            nic("eth0", "bc:24:11:00:00:50", &["198.51.100.50"]),
        ];
        let c = choose(
            &nics,
            &[(0, "bc:24:11:00:00:50".into())],
            None,
            &AddressPolicy::default(),
        )
        .unwrap();
        assert_eq!(c.primary, ip("198.51.100.50"));
        assert_eq!(c.all.len(), 1);
    }

    #[test]
    fn container_bridge_ranges_are_skipped_only_on_foreign_interfaces() {
        // A bridge named like a real NIC, in Docker's range; then the VM's own NIC in that range.
        let nics = [
            nic("eth1", "02:42:ac:11:00:01", &["172.17.0.1"]),
            nic("wg0", "02:00:00:00:00:02", &["10.66.0.1"]),
            nic("eth0", "bc:24:11:00:00:51", &["198.51.100.51"]),
        ];
        let c = choose(
            &nics,
            &[(0, "bc:24:11:00:00:51".into())],
            None,
            &AddressPolicy::default(),
        )
        .unwrap();
        assert_eq!(c.all, vec![ip("198.51.100.51")]);
        let own = [nic("eth0", "bc:24:11:00:00:52", &["172.17.5.9"])];
        let c = choose(
            &own,
            &[(0, "bc:24:11:00:00:52".into())],
            None,
            &AddressPolicy::default(),
        )
        .unwrap();
        assert_eq!(
            c.primary,
            ip("172.17.5.9"),
            "a lab network in Docker's range still works"
        );
    }

    #[test]
    fn windows_loopback_pseudo_interface_is_skipped() {
        let nics = [
            nic("Loopback Pseudo-Interface 1", "", &["127.0.0.1", "::1"]),
            nic(
                "Ethernet 2",
                "bc:24:11:00:00:60",
                &["fe80::55:1", "198.51.100.60"],
            ),
        ];
        let c = choose(
            &nics,
            &[(0, "bc:24:11:00:00:60".into())],
            None,
            &AddressPolicy::default(),
        )
        .unwrap();
        assert_eq!(c.primary, ip("198.51.100.60"));
    }

    #[test]
    fn ipv6_only_guest_gets_its_global_address_and_preference_is_configurable() {
        let nics = [nic("eth0", "bc:24:11:00:00:70", &["fe80::1", "2001:db8::70"])];
        let c = choose(&nics, &[], None, &AddressPolicy::default()).unwrap();
        assert_eq!(c.primary, ip("2001:db8::70"));
        let dual = [nic(
            "eth0",
            "bc:24:11:00:00:70",
            &["2001:db8::70", "198.51.100.70"],
        )];
        assert_eq!(
            choose(&dual, &[], None, &AddressPolicy::default())
                .unwrap()
                .primary,
            ip("198.51.100.70")
        );
        let v6 = AddressPolicy {
            prefer_ipv6: true,
            ..Default::default()
        };
        assert_eq!(choose(&dual, &[], None, &v6).unwrap().primary, ip("2001:db8::70"));
    }

    #[test]
    fn allow_ranges_let_exactly_those_loopback_addresses_through() {
        let policy = AddressPolicy {
            allow_ranges: vec!["127.60.0.0/16".parse().unwrap()],
            ..Default::default()
        };
        let nics = [
            nic("lo", "00:00:00:00:00:00", &["127.0.0.1"]),
            nic("eth0", "bc:24:11:00:0f:a1", &["127.60.16.3"]),
        ];
        let c = choose(&nics, &[], None, &policy).unwrap();
        assert_eq!(c.primary, ip("127.60.16.3"));
        assert!(!is_usable(&ip("127.0.0.1"), &policy));
        assert!(!is_usable(&ip("127.61.0.1"), &policy));
    }

    fn rules() -> DialRules {
        DialRules {
            guest_networks: vec!["10.20.0.0/16".parse().unwrap(), "fe80::/64".parse().unwrap()],
            test_ranges: vec![],
            forbidden: vec![
                (ip("10.20.0.1"), "own"),
                (ip("10.1.0.11"), "node"),
                (ip("10.1.0.10"), "api"),
            ],
        }
    }

    #[test]
    fn relays_dial_only_guest_networks_or_mac_verified_on_link_addresses() {
        let r = rules();
        let code = |s: &str, on_link: bool, mac: Option<bool>| {
            dial_verdict(ip(s), &r, on_link, mac).map_err(|e| e.code)
        };
        assert_eq!(code("10.20.3.4", false, None), Ok(DialBasis::GuestNetwork));
        assert_eq!(code("10.20.3.4", true, Some(false)), Err("mac_mismatch"));
        assert_eq!(code("172.16.0.9", true, Some(true)), Ok(DialBasis::Verified));
        assert_eq!(code("172.16.0.9", true, None), Err("not_guest_network"));
        assert_eq!(code("172.16.0.9", true, Some(false)), Err("mac_mismatch"));
        // Routed and IPv6 addresses outside the guest networks are refused whatever a probe says.
        assert_eq!(code("198.18.7.7", false, Some(true)), Err("not_guest_network"));
        assert_eq!(code("2a01:4f8::7", false, Some(true)), Err("not_guest_network"));
        for (a, want) in [
            ("127.0.0.1", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("169.254.1.1", "link_local"),
            ("fe80:0:0:1::5", "link_local"),
            ("0.0.0.0", "special"),
            ("255.255.255.255", "special"),
            ("224.0.0.1", "special"),
            ("10.20.0.1", "own_address"),
            ("10.1.0.11", "node_address"),
            ("10.1.0.10", "api_host"),
        ] {
            assert_eq!(code(a, true, Some(true)), Err(want), "{a}");
        }
        // Link-local passes only when an admin listed it.
        assert_eq!(code("fe80::5", false, None), Ok(DialBasis::GuestNetwork));
        let msg = dial_verdict(ip("172.16.0.9"), &r, false, None)
            .unwrap_err()
            .message;
        assert!(
            msg.contains("172.16.0.9") && msg.contains("guest_networks"),
            "{msg}"
        );
    }

    #[test]
    fn test_ranges_admit_loopback_guests_only_inside_the_range() {
        let r = DialRules {
            test_ranges: vec!["127.60.0.0/16".parse().unwrap()],
            ..DialRules::default()
        };
        assert_eq!(
            dial_verdict(ip("127.60.16.3"), &r, true, None),
            Ok(DialBasis::TestRange)
        );
        assert_eq!(
            dial_verdict(ip("127.0.0.1"), &r, true, None).map_err(|e| e.code),
            Err("loopback")
        );
    }
}
