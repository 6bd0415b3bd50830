//! [`GuestConfig`]: `GET /nodes/{node}/{qemu|lxc}/{vmid}/config`, with parsers for PVE property strings.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Tags;
use crate::de::bool_of;

/// A guest's current configuration as PVE returns it: a flat JSON object whose values are strings,
/// numbers or property strings (`virtio=BC:24:11:00:01:31,bridge=vmbr0`). The typed accessors parse
/// the parts Proxlab needs and tolerate PVE's loose typing (numbers as strings, 0/1 booleans).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GuestConfig(pub Map<String, Value>);

/// A network device `netN` of a guest config.
///
/// QEMU: `virtio=BC:24:11:00:01:31,bridge=vmbr0,firewall=1` (model=MAC first) or
/// `model=virtio,macaddr=…`. LXC: `name=eth0,bridge=vmbr0,hwaddr=BC:…,ip=10.43.0.10/16,gw=…`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetDevice {
    /// N of `netN`.
    pub index: u32,
    /// QEMU NIC model (`virtio`, `e1000`, `rtl8139`, …); LXC `type` (`veth`) if given.
    pub model: Option<String>,
    /// MAC address, lowercase `bc:24:11:00:01:31`.
    pub mac: Option<String>,
    /// Bridge, e.g. `vmbr0`.
    pub bridge: Option<String>,
    /// LXC static IPv4 address without the prefix length (`ip=10.43.0.10/16` → `10.43.0.10`);
    /// `None` for `dhcp`, `manual` or QEMU NICs.
    pub ip: Option<String>,
    /// LXC interface name inside the container (`eth0`).
    pub name: Option<String>,
    /// VLAN tag.
    pub tag: Option<u32>,
}

/// A disk-like entry of a guest config: QEMU `scsiN`/`sataN`/`ideN`/`virtioN`/`efidisk0`/
/// `tpmstate0`/`unusedN`, LXC `rootfs`/`mpN`/`unusedN`. Empty drives (`none,media=cdrom`) are left out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskDevice {
    /// Config key, e.g. `scsi0`, `efidisk0`, `rootfs`.
    pub key: String,
    /// Volume ID, e.g. `labnfs:9000/base-9000-disk-0.qcow2`, `local:iso/x.iso`, or an absolute path.
    pub volume: String,
    /// Storage ID (the part before `:`), `None` for a path or a pass-through device.
    pub storage: Option<String>,
    /// `format=` if set, else from the file extension (`qcow2`, `raw`, `vmdk`), else `None`.
    pub format: Option<String>,
    /// `size=` in bytes (`2G` → 2147483648), if given.
    pub size_bytes: Option<u64>,
    /// True for `media=cdrom` drives (ISOs, cloud-init drives).
    pub is_cdrom: bool,
    /// True for the EFI vars disk (`efidisk0`).
    pub is_efi: bool,
    /// True for the TPM state volume (`tpmstate0`).
    pub is_tpm: bool,
    /// True for a cloud-init drive (volume name contains `cloudinit`).
    pub is_cloudinit: bool,
    /// True for `unusedN` entries (detached volumes that still belong to the guest).
    pub is_unused: bool,
}

/// Splits a PVE property string into `(key, value)` pairs; a piece without `=` gets key `None`.
pub(crate) fn property_pairs(s: &str) -> Vec<(Option<&str>, &str)> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (Some(k.trim()), v.trim()),
            None => (None, p),
        })
        .collect()
}

/// Parses a PVE size (`2G`, `528K`, `4M`, `1.5T`, `1024` = bytes) into bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1u64 << 10),
        'M' | 'm' => (&s[..s.len() - 1], 1 << 20),
        'G' | 'g' => (&s[..s.len() - 1], 1 << 30),
        'T' | 't' => (&s[..s.len() - 1], 1 << 40),
        'B' | 'b' => (&s[..s.len() - 1], 1),
        _ => (s, 1),
    };
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult);
    }
    let f: f64 = num.parse().ok()?;
    (f.is_finite() && f >= 0.0).then(|| (f * mult as f64).round() as u64)
}

fn looks_like_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn numbered(key: &str, prefix: &str) -> Option<u32> {
    let rest = key.strip_prefix(prefix)?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

const DISK_PREFIXES: [&str; 8] = [
    "scsi", "sata", "ide", "virtio", "efidisk", "tpmstate", "unused", "mp",
];

impl GuestConfig {
    /// The value of `key` as a string: strings as they are, numbers rendered, booleans as `1`/`0`.
    pub fn get_str(&self, key: &str) -> Option<String> {
        match self.0.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(if *b { "1".into() } else { "0".into() }),
            _ => None,
        }
    }

    fn get_u64(&self, key: &str) -> Option<u64> {
        match self.0.get(key)? {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// True if the QEMU guest agent is enabled (only then is the agent asked): the `agent` property's first
    /// positional value or its `enabled=` key is 1. Handles `1`, `1,fstrim_cloned_disks=1`,
    /// `enabled=1,type=virtio`, `0`, `enabled=0`; a missing key means disabled. Only guests that are running AND have this set
    /// should get `/agent/*` calls.
    pub fn agent_enabled(&self) -> bool {
        let Some(raw) = self.get_str("agent") else {
            return false;
        };
        for (i, (key, value)) in property_pairs(&raw).into_iter().enumerate() {
            match key {
                Some("enabled") => return bool_of(&Value::String(value.to_owned())).unwrap_or(false),
                None if i == 0 => return bool_of(&Value::String(value.to_owned())).unwrap_or(false),
                _ => {}
            }
        }
        false
    }

    /// The network devices `net0`…`netN`, ordered by index.
    pub fn nics(&self) -> Vec<NetDevice> {
        let mut out: Vec<NetDevice> = self
            .0
            .keys()
            .filter_map(|k| numbered(k, "net").map(|i| (i, k)))
            .filter_map(|(index, key)| self.get_str(key).map(|v| parse_nic(index, &v)))
            .collect();
        out.sort_by_key(|n| n.index);
        out
    }

    /// Disks, EFI/TPM volumes, CD-ROM drives and unused volumes (QEMU), or `rootfs`/`mpN` (LXC),
    /// ordered by key (bus, then number). Empty drives (`none`) are left out.
    pub fn disks(&self) -> Vec<DiskDevice> {
        let mut keyed: Vec<((u8, u32), DiskDevice)> = Vec::new();
        for (key, value) in &self.0 {
            let order = if key == "rootfs" {
                Some((0u8, 0u32))
            } else {
                DISK_PREFIXES
                    .iter()
                    .enumerate()
                    .find_map(|(i, p)| numbered(key, p).map(|n| (i as u8 + 1, n)))
            };
            let (Some(order), Value::String(v)) = (order, value) else {
                continue;
            };
            if let Some(d) = parse_disk(key, v) {
                keyed.push((order, d));
            }
        }
        keyed.sort_by_key(|k| k.0);
        keyed.into_iter().map(|(_, d)| d).collect()
    }

    /// The guest's tags (`tags`, `;`-separated).
    pub fn tags(&self) -> Tags {
        self.get_str("tags").map(|t| Tags::parse(&t)).unwrap_or_default()
    }

    /// True if `template` is 1.
    pub fn is_template(&self) -> bool {
        self.0.get("template").and_then(bool_of).unwrap_or(false)
    }

    /// The guest's name: `name` (QEMU) or `hostname` (LXC).
    pub fn name(&self) -> Option<String> {
        self.get_str("name").or_else(|| self.get_str("hostname"))
    }

    /// `ostype`: `l26`, `win11`, `wxp`, … (QEMU) or `debian`, `ubuntu`, … (LXC).
    pub fn ostype(&self) -> Option<String> {
        self.get_str("ostype")
    }

    /// The free-text notes (`description`).
    pub fn description(&self) -> Option<String> {
        self.get_str("description")
    }

    /// vCPU cores per socket (`cores`; PVE's default is 1 when unset).
    pub fn cores(&self) -> Option<u32> {
        self.get_u64("cores").and_then(|n| u32::try_from(n).ok())
    }

    /// CPU sockets (`sockets`, QEMU; PVE's default is 1 when unset).
    pub fn sockets(&self) -> Option<u32> {
        self.get_u64("sockets").and_then(|n| u32::try_from(n).ok())
    }

    /// Memory in MiB (`memory`; also the PVE 9 property form `current=2048`).
    pub fn memory_mib(&self) -> Option<u64> {
        if let Some(n) = self.get_u64("memory") {
            return Some(n);
        }
        let raw = self.get_str("memory")?;
        property_pairs(&raw).into_iter().find_map(|(k, v)| match k {
            None | Some("current") => v.parse().ok(),
            _ => None,
        })
    }

    /// True if the agent-independent `onboot` flag is set.
    pub fn onboot(&self) -> bool {
        self.0.get("onboot").and_then(bool_of).unwrap_or(false)
    }
}

fn parse_nic(index: u32, value: &str) -> NetDevice {
    let mut nic = NetDevice {
        index,
        ..NetDevice::default()
    };
    for (key, v) in property_pairs(value) {
        match key {
            Some("bridge") => nic.bridge = Some(v.to_owned()),
            Some("macaddr") | Some("hwaddr") => nic.mac = Some(v.to_ascii_lowercase()),
            Some("model") | Some("type") => nic.model = Some(v.to_owned()),
            Some("name") => nic.name = Some(v.to_owned()),
            Some("tag") => nic.tag = v.parse().ok(),
            Some("ip") => {
                let addr = v.split('/').next().unwrap_or(v);
                if !addr.is_empty() && addr != "dhcp" && addr != "manual" {
                    nic.ip = Some(addr.to_owned());
                }
            }
            Some(model) if nic.mac.is_none() && looks_like_mac(v) => {
                nic.model = Some(model.to_owned());
                nic.mac = Some(v.to_ascii_lowercase());
            }
            _ => {}
        }
    }
    nic
}

fn parse_disk(key: &str, value: &str) -> Option<DiskDevice> {
    let pairs = property_pairs(value);
    let volume = pairs.iter().find_map(|(k, v)| match k {
        None | Some("file") | Some("volume") => Some(*v),
        _ => None,
    })?;
    if volume == "none" || volume.is_empty() {
        return None;
    }
    let opt = |name: &str| pairs.iter().find(|(k, _)| *k == Some(name)).map(|(_, v)| *v);
    let storage = match volume.split_once(':') {
        Some((s, _)) if !volume.starts_with('/') && !s.is_empty() => Some(s.to_owned()),
        _ => None,
    };
    let format = opt("format").map(str::to_owned).or_else(|| {
        let ext = volume.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase())?;
        matches!(ext.as_str(), "qcow2" | "raw" | "vmdk").then_some(ext)
    });
    Some(DiskDevice {
        key: key.to_owned(),
        volume: volume.to_owned(),
        storage,
        format,
        size_bytes: opt("size").and_then(parse_size),
        is_cdrom: opt("media") == Some("cdrom") || volume == "cdrom",
        is_efi: key.starts_with("efidisk"),
        is_tpm: key.starts_with("tpmstate"),
        is_cloudinit: volume.contains("cloudinit"),
        is_unused: key.starts_with("unused"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> GuestConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn agent_flag_is_read_in_positional_and_enabled_forms() {
        assert!(!cfg(r#"{"name":"w11-lab","net0":"virtio=BC:24:11:00:01:31,bridge=vmbr0"}"#).agent_enabled());
        assert!(!cfg(r#"{"agent":"enabled=0"}"#).agent_enabled());
        assert!(!cfg(r#"{"agent":"0"}"#).agent_enabled());
        assert!(cfg(r#"{"agent":"1,fstrim_cloned_disks=1"}"#).agent_enabled());
        assert!(cfg(r#"{"agent":"enabled=1,type=virtio"}"#).agent_enabled());
        assert!(cfg(r#"{"agent":"type=isa,enabled=1"}"#).agent_enabled());
        assert!(cfg(r#"{"agent":"1"}"#).agent_enabled());
        assert!(cfg(r#"{"agent":1}"#).agent_enabled());
        assert!(!cfg(r#"{"agent":"fstrim_cloned_disks=1"}"#).agent_enabled());
    }

    #[test]
    fn qemu_nic_model_mac_bridge_are_parsed_lowercase() {
        let c = cfg(
            r#"{"net1":"virtio=BC:24:11:00:01:01,bridge=vmbr1,tag=42","net0":"rtl8139=BC:24:11:00:01:04,bridge=vmbr0,firewall=1","netx":"junk"}"#,
        );
        let nics = c.nics();
        assert_eq!(nics.len(), 2);
        assert_eq!(nics[0].index, 0);
        assert_eq!(nics[0].model.as_deref(), Some("rtl8139"));
        assert_eq!(nics[0].mac.as_deref(), Some("bc:24:11:00:01:04"));
        assert_eq!(nics[0].bridge.as_deref(), Some("vmbr0"));
        assert_eq!(nics[1].tag, Some(42));
        let explicit = cfg(r#"{"net0":"model=e1000,macaddr=AA:BB:CC:DD:EE:FF,bridge=vmbr0"}"#).nics();
        assert_eq!(explicit[0].model.as_deref(), Some("e1000"));
        assert_eq!(explicit[0].mac.as_deref(), Some("aa:bb:cc:dd:ee:ff"));
    }

    #[test]
    fn lxc_nic_ip_has_cidr_stripped_and_dhcp_is_none() {
        let c = cfg(
            r#"{"net0":"name=eth0,bridge=vmbr0,hwaddr=BC:24:11:13:00:01,ip=10.43.0.10/16,gw=10.43.0.1","net1":"name=eth1,bridge=vmbr1,hwaddr=BC:24:11:13:00:02,ip=dhcp"}"#,
        );
        let nics = c.nics();
        assert_eq!(nics[0].ip.as_deref(), Some("10.43.0.10"));
        assert_eq!(nics[0].name.as_deref(), Some("eth0"));
        assert_eq!(nics[0].mac.as_deref(), Some("bc:24:11:13:00:01"));
        assert_eq!(nics[1].ip, None);
    }

    #[test]
    fn disks_of_a_windows_template_are_classified() {
        let c = cfg(
            r#"{"efidisk0":"labnfs:9001/base-9001-disk-1.qcow2,efitype=4m,pre-enrolled-keys=1,size=528K",
                "tpmstate0":"labnfs:9001/base-9001-disk-2.raw,size=4M,version=v2.0",
                "scsi0":"labnfs:9000/base-9000-disk-0.qcow2,iothread=1,size=2G",
                "ide2":"labnfs:9000/vm-9000-cloudinit.qcow2,media=cdrom",
                "ide0":"none,media=cdrom",
                "sata1":"local-lvm:vm-100-disk-1,format=raw,size=10G",
                "unused0":"labnfs:9001/vm-9001-disk-9.qcow2",
                "scsihw":"virtio-scsi-single"}"#,
        );
        let disks = c.disks();
        let keys: Vec<&str> = disks.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(
            keys,
            ["scsi0", "sata1", "ide2", "efidisk0", "tpmstate0", "unused0"]
        );
        let scsi0 = &disks[0];
        assert_eq!(scsi0.volume, "labnfs:9000/base-9000-disk-0.qcow2");
        assert_eq!(scsi0.storage.as_deref(), Some("labnfs"));
        assert_eq!(scsi0.format.as_deref(), Some("qcow2"));
        assert_eq!(scsi0.size_bytes, Some(2 << 30));
        assert!(!scsi0.is_cdrom && !scsi0.is_efi && !scsi0.is_tpm);
        assert_eq!(disks[1].format.as_deref(), Some("raw"));
        assert!(disks[2].is_cdrom && disks[2].is_cloudinit);
        assert!(disks[3].is_efi);
        assert_eq!(disks[3].size_bytes, Some(528 * 1024));
        assert!(disks[4].is_tpm);
        assert_eq!(disks[4].format.as_deref(), Some("raw"));
        assert!(disks[5].is_unused);
    }

    #[test]
    fn lxc_rootfs_and_mountpoints_are_disks() {
        let c = cfg(
            r#"{"rootfs":"local-lvm:vm-110-disk-0,size=32G","mp0":"local-lvm:vm-110-disk-1,mp=/srv/share,size=200G"}"#,
        );
        let disks = c.disks();
        assert_eq!(disks.len(), 2);
        assert_eq!(disks[0].key, "rootfs");
        assert_eq!(disks[0].format, None);
        assert_eq!(disks[1].size_bytes, Some(200 << 30));
    }

    #[test]
    fn scalar_accessors_tolerate_strings_and_numbers() {
        let c = cfg(
            r#"{"memory":"2048","cores":2,"sockets":"1","template":1,"tags":"template;ubuntu","name":"tpl","ostype":"l26"}"#,
        );
        assert_eq!(c.memory_mib(), Some(2048));
        assert_eq!(c.cores(), Some(2));
        assert_eq!(c.sockets(), Some(1));
        assert!(c.is_template());
        assert!(c.tags().contains("ubuntu"));
        assert_eq!(c.name().as_deref(), Some("tpl"));
        assert_eq!(c.ostype().as_deref(), Some("l26"));
        assert_eq!(cfg(r#"{"memory":"current=4096"}"#).memory_mib(), Some(4096));
        assert_eq!(cfg(r#"{"hostname":"ct1"}"#).name().as_deref(), Some("ct1"));
        assert!(!cfg("{}").is_template());
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("2G"), Some(2147483648));
        assert_eq!(parse_size("528K"), Some(540672));
        assert_eq!(parse_size("4M"), Some(4194304));
        assert_eq!(parse_size("1T"), Some(1 << 40));
        assert_eq!(parse_size("1.5G"), Some(1610612736));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("big"), None);
    }
}
