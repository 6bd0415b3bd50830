//! Guest network interfaces: QEMU guest agent `network-get-interfaces` and LXC `/interfaces`.

use serde::{Deserialize, Deserializer, Serialize};

use crate::de;

fn vec_or_null<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// One address of a guest interface. The agent says `ipv4`/`ipv6`, LXC says `inet`/`inet6`;
/// LXC sends `prefix` as a string (`"16"`), both are accepted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentIp {
    /// The address, e.g. `10.41.0.10` or `fe80::be24:11ff:fe00:1`.
    #[serde(rename = "ip-address")]
    pub ip_address: String,
    /// `ipv4`, `ipv6`, `inet` or `inet6`.
    #[serde(rename = "ip-address-type", default, deserialize_with = "de::string_lenient")]
    pub ip_address_type: String,
    /// Prefix length in bits.
    #[serde(default, deserialize_with = "de::u8_lenient")]
    pub prefix: u8,
}

impl AgentIp {
    /// True for an IPv6 address (`ipv6` / `inet6`, or a `:` in the address).
    pub fn is_ipv6(&self) -> bool {
        self.ip_address_type.ends_with('6') || self.ip_address.contains(':')
    }
}

/// One interface from `GET /nodes/{node}/qemu/{vmid}/agent/network-get-interfaces`.
/// `ip-addresses` may be missing or null while DHCP is pending (→ empty).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInterface {
    /// Interface name in the guest (`lo`, `ens18`, `Ethernet 2`).
    pub name: String,
    /// MAC address as the guest reports it (case varies by OS).
    #[serde(rename = "hardware-address", default)]
    pub hardware_address: Option<String>,
    /// The interface's addresses.
    #[serde(rename = "ip-addresses", default, deserialize_with = "vec_or_null")]
    pub ip_addresses: Vec<AgentIp>,
}

/// One interface from `GET /nodes/{node}/lxc/{vmid}/interfaces`: `inet`/`inet6` are CIDR strings
/// (`10.43.0.10/16`); `ip-addresses` may be missing, null or empty (DHCP containers).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LxcInterface {
    /// Interface name (`lo`, `eth0`).
    pub name: String,
    /// MAC address (`hwaddr`; newer releases send `hardware-address` too, often both — see
    /// [`LxcInterface::mac`]).
    #[serde(default)]
    pub hwaddr: Option<String>,
    /// MAC address under its agent-style name, when sent.
    #[serde(rename = "hardware-address", default)]
    pub hardware_address: Option<String>,
    /// IPv4 address with prefix, `10.43.0.10/16`.
    #[serde(default)]
    pub inet: Option<String>,
    /// IPv6 address with prefix.
    #[serde(default)]
    pub inet6: Option<String>,
    /// The addresses as a list.
    #[serde(rename = "ip-addresses", default, deserialize_with = "vec_or_null")]
    pub ip_addresses: Vec<AgentIp>,
}

impl LxcInterface {
    /// The MAC address from whichever key the node sent.
    pub fn mac(&self) -> Option<&str> {
        self.hwaddr.as_deref().or(self.hardware_address.as_deref())
    }
}

/// The agent answer is `{"result": [..]}` on PVE, and a bare list on some proxies and old releases.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum AgentInterfacesAnswer {
    Wrapped {
        #[serde(default, deserialize_with = "vec_or_null")]
        result: Vec<AgentInterface>,
    },
    Bare(Vec<AgentInterface>),
}

impl AgentInterfacesAnswer {
    pub(crate) fn into_vec(self) -> Vec<AgentInterface> {
        match self {
            AgentInterfacesAnswer::Wrapped { result } | AgentInterfacesAnswer::Bare(result) => result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_answer_accepts_wrapped_and_bare_lists() {
        let wrapped: AgentInterfacesAnswer = serde_json::from_str(
            r#"{"result":[{"name":"lo","hardware-address":"00:00:00:00:00:00","ip-addresses":[{"ip-address":"127.0.0.1","ip-address-type":"ipv4","prefix":8}]}]}"#,
        )
        .unwrap();
        let bare: AgentInterfacesAnswer = serde_json::from_str(
            r#"[{"name":"lo","hardware-address":"00:00:00:00:00:00","ip-addresses":[{"ip-address":"127.0.0.1","ip-address-type":"ipv4","prefix":8}]}]"#,
        )
        .unwrap();
        assert_eq!(wrapped.into_vec(), bare.into_vec());
    }

    #[test]
    fn interface_without_addresses_yields_empty_list() {
        let v: Vec<AgentInterface> = serde_json::from_str(
            r#"[{"name":"ens18","hardware-address":"bc:24:11:00:00:01"},{"name":"x","ip-addresses":null}]"#,
        )
        .unwrap();
        assert!(v[0].ip_addresses.is_empty());
        assert!(v[1].ip_addresses.is_empty());
    }

    #[test]
    fn lxc_interfaces_take_string_prefixes_and_inet_types() {
        let v: Vec<LxcInterface> = serde_json::from_str(
            r#"[{"name":"eth0","hwaddr":"BC:24:11:13:00:01","inet":"10.43.0.10/16","ip-addresses":[{"ip-address-type":"inet","ip-address":"10.43.0.10","prefix":"16"},{"ip-address-type":"inet6","ip-address":"fe80::1","prefix":"64"}]},
                {"name":"eth1","hardware-address":"BC:24:11:13:00:02","ip-addresses":[]},
                {"name":"eth2","hwaddr":"BC:24:11:13:00:03","hardware-address":"BC:24:11:13:00:03"}]"#,
        )
        .unwrap();
        assert_eq!(v[0].ip_addresses[0].prefix, 16);
        assert!(!v[0].ip_addresses[0].is_ipv6());
        assert!(v[0].ip_addresses[1].is_ipv6());
        assert_eq!(v[1].mac(), Some("BC:24:11:13:00:02"));
        // PVE 8.x/9 send both keys at once (seen on the fake): both parse, no duplicate-field error.
        assert_eq!(v[2].mac(), Some("BC:24:11:13:00:03"));
    }
}
