#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property tests of the address rules applied to untrusted guest-agent / LXC answers (issue 7, "bad
//! input"): whatever interfaces, names, MACs and addresses a guest reports, the chosen address is a
//! usable one from an eligible NIC, the primary heads a duplicate-free list, the choice is stable
//! when fed back as the previous one, and parsing of reported address text never panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use pve::AgentInterface;
use serde_json::json;
use sync::address::{self, AddressPolicy, NicAddresses, choose, is_usable, is_virtual_interface, parse_addr};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 384,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Addresses a guest may report: usable ones, and the loopback, link-local, unspecified, multicast and
/// broadcast ones the rules must skip.
fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<u128>().prop_map(|n| IpAddr::V6(Ipv6Addr::from(n))),
        any::<u8>().prop_map(|n| IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))),
        any::<u8>().prop_map(|n| IpAddr::V4(Ipv4Addr::new(169, 254, 1, n))),
        any::<u16>().prop_map(|n| IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, n))),
        Just(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        Just(IpAddr::V4(Ipv4Addr::BROADCAST)),
        Just(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        any::<u8>().prop_map(|n| IpAddr::V4(Ipv4Addr::new(224, 0, 0, n))),
        any::<u8>().prop_map(|n| IpAddr::V4(Ipv4Addr::new(192, 0, 2, n))),
        any::<u8>().prop_map(|n| IpAddr::V4(Ipv4Addr::new(10, 41, 0, n))),
    ]
}

fn any_mac() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u8..4).prop_map(|n| format!("bc:24:11:00:00:0{n}")),
        (0u8..4).prop_map(|n| format!("BC:24:11:00:00:0{n}")),
        ".{0,17}",
    ]
}

fn any_nic() -> impl Strategy<Value = NicAddresses> {
    (
        prop_oneof![
            "[a-zA-Z0-9 ]{0,12}",
            Just("lo".to_string()),
            Just("docker0".to_string()),
            Just("veth1a2b".to_string()),
            Just("ens18".to_string()),
            Just("Ethernet 2".to_string()),
            Just("br-1234".to_string()),
            ".{0,10}",
        ],
        proptest::option::of(any_mac()),
        prop::collection::vec(any_ip(), 0..5),
    )
        .prop_map(|(name, mac, addrs)| NicAddresses { name, mac, addrs })
}

fn eligible(nic: &NicAddresses, config_macs: &[(u32, String)]) -> bool {
    let own = nic
        .mac
        .as_deref()
        .is_some_and(|m| config_macs.iter().any(|(_, cm)| cm.eq_ignore_ascii_case(m)));
    own || !is_virtual_interface(&nic.name)
}

proptest! {
    #![proptest_config(config())]

    /// Whatever the guest reports, the choice holds only usable addresses of eligible NICs (the VM's
    /// own MACs, or names that are not container bridges/tunnels), without duplicates, primary first;
    /// `None` exactly when no eligible NIC has a usable address.
    #[test]
    fn the_choice_is_usable_unique_and_from_eligible_nics(
        nics in prop::collection::vec(any_nic(), 0..6),
        config_macs in prop::collection::vec((0u32..4, (0u8..4).prop_map(|n| format!("bc:24:11:00:00:0{n}"))), 0..3),
        prefer_ipv6 in any::<bool>(),
        previous in proptest::option::of(any_ip()),
    ) {
        let policy = AddressPolicy { allow_ranges: vec![], prefer_ipv6 };
        let offered: Vec<IpAddr> = nics
            .iter()
            .filter(|n| eligible(n, &config_macs))
            .flat_map(|n| n.addrs.iter().copied())
            .filter(|ip| is_usable(ip, &policy))
            .collect();
        match choose(&nics, &config_macs, previous, &policy) {
            None => prop_assert!(offered.is_empty(), "nothing chosen from {offered:?}"),
            Some(c) => {
                prop_assert_eq!(c.all.first(), Some(&c.primary));
                for (i, ip) in c.all.iter().enumerate() {
                    prop_assert!(is_usable(ip, &policy), "{ip} is not usable");
                    prop_assert!(offered.contains(ip), "{ip} was not offered by an eligible NIC");
                    prop_assert!(!c.all[..i].contains(ip), "{ip} twice");
                    prop_assert!(!ip.is_loopback() && !ip.is_multicast() && !ip.is_unspecified());
                }
                for ip in &offered {
                    prop_assert!(c.all.contains(ip), "{ip} offered but left out");
                }
                // Stable: feeding the primary back as the previous choice keeps it.
                let again = choose(&nics, &config_macs, Some(c.primary), &policy).unwrap();
                prop_assert_eq!(again.primary, c.primary);
            }
        }
    }

    /// The NIC whose MAC is the VM's lowest `netN` wins over earlier-listed NICs, whatever case the
    /// guest reports its MAC in and whatever junk interfaces come first.
    #[test]
    fn the_own_nic_wins(
        junk in prop::collection::vec(any_nic(), 0..4),
        host in 1u8..=254,
        upper in any::<bool>(),
    ) {
        let mine: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, host));
        let mac = "bc:24:11:aa:bb:01";
        let mut nics: Vec<NicAddresses> = junk
            .into_iter()
            .filter(|n| n.mac.as_deref().is_none_or(|m| !m.eq_ignore_ascii_case(mac)))
            .collect();
        nics.push(NicAddresses {
            name: "ens18".into(),
            mac: Some(if upper { mac.to_uppercase() } else { mac.to_string() }),
            addrs: vec!["fe80::1".parse().unwrap(), mine],
        });
        let c = choose(&nics, &[(0, mac.to_string())], None, &AddressPolicy::default()).unwrap();
        prop_assert_eq!(c.primary, mine);
    }

    /// Address text as agents and LXC send it (`10.43.0.10/16`, `fe80::1%eth0`, blanks) gives the
    /// address; any other text gives `None` or an address read from its first token — never a panic.
    #[test]
    fn reported_address_text_parses(
        ip in any_ip(),
        prefix in proptest::option::of(0u8..=128),
        zone in proptest::option::of("[a-z0-9]{1,6}"),
        junk in ".{0,40}",
    ) {
        let mut s = format!(" {ip}");
        if let (Some(z), IpAddr::V6(_)) = (&zone, ip) {
            s.push('%');
            s.push_str(z);
        }
        if let Some(p) = prefix {
            s.push_str(&format!("/{p}"));
        }
        prop_assert_eq!(parse_addr(&s), Some(ip));
        if let Some(got) = parse_addr(&junk) {
            let first = junk.trim().split('/').next().unwrap().split('%').next().unwrap();
            prop_assert_eq!(first.parse::<IpAddr>().unwrap(), got);
        }
    }

    /// The whole path from an agent answer: generated `network-get-interfaces` JSON goes through the
    /// typed model and the rules; the guest's real NIC address is chosen, loopback and link-local
    /// never, and allow-listed loopback ranges (test setups) are let through.
    #[test]
    fn agent_answers_to_a_choice(
        lan in 1u8..=254,
        lo_first in any::<bool>(),
        with_docker in any::<bool>(),
        test_range in any::<bool>(),
    ) {
        let lan_ip = if test_range { format!("127.60.0.{lan}") } else { format!("10.41.0.{lan}") };
        let mut ifaces = vec![json!({"name": "ens18", "hardware-address": "BC:24:11:00:00:20",
            "ip-addresses": [
                {"ip-address": "fe80::be24:11ff:fe00:20", "ip-address-type": "ipv6", "prefix": 64},
                {"ip-address": lan_ip, "ip-address-type": "ipv4", "prefix": "24"}]})];
        let lo = json!({"name": "lo", "hardware-address": "00:00:00:00:00:00",
            "ip-addresses": [{"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8}]});
        if lo_first { ifaces.insert(0, lo) } else { ifaces.push(lo) }
        if with_docker {
            ifaces.insert(0, json!({"name": "docker0", "hardware-address": "02:42:ac:11:00:01",
                "ip-addresses": [{"ip-address": "172.17.0.1", "ip-address-type": "ipv4", "prefix": 16}]}));
        }
        let parsed: Vec<AgentInterface> = serde_json::from_value(json!(ifaces)).unwrap();
        let nics: Vec<NicAddresses> = parsed
            .into_iter()
            .map(|i| NicAddresses {
                name: i.name,
                mac: i.hardware_address.map(|m| m.to_ascii_lowercase()),
                addrs: i.ip_addresses.iter().filter_map(|a| parse_addr(&a.ip_address)).collect(),
            })
            .collect();
        let policy = AddressPolicy {
            allow_ranges: if test_range { vec!["127.60.0.0/16".parse().unwrap()] } else { vec![] },
            prefer_ipv6: false,
        };
        let c = choose(&nics, &[(0, "bc:24:11:00:00:20".into())], None, &policy).unwrap();
        prop_assert_eq!(c.primary, lan_ip.parse::<IpAddr>().unwrap());
        prop_assert_eq!(c.all.len(), 1, "{:?}", c.all);
        prop_assert!(address::is_virtual_interface("docker0") && address::is_virtual_interface(" LO "));
    }
}
