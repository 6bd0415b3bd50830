//! Cluster-wide views: guests in `/cluster/resources`, guest status, nodes, cluster status, version.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::Tags;
use super::task::PowerAction;
use crate::de;

/// The two kinds of PVE guests; the path segment of guest endpoints (`/nodes/{node}/qemu/{vmid}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestKind {
    /// A QEMU/KVM virtual machine (`qemu`).
    Qemu,
    /// An LXC container (`lxc`).
    Lxc,
}

impl GuestKind {
    /// `"qemu"` or `"lxc"`, as in PVE paths and the resource `type` field.
    pub fn as_str(self) -> &'static str {
        match self {
            GuestKind::Qemu => "qemu",
            GuestKind::Lxc => "lxc",
        }
    }
}

impl fmt::Display for GuestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for GuestKind {
    type Err = String;

    /// Parses `qemu` / `lxc` (ASCII case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "qemu" => Ok(GuestKind::Qemu),
            "lxc" => Ok(GuestKind::Lxc),
            other => Err(format!("unknown guest type '{other}' (want qemu or lxc)")),
        }
    }
}

/// One guest row of `GET /cluster/resources?type=vm`: every guest of the cluster in one request.
///
/// Units: `cpu` is the used fraction of `maxcpu` (0..1, may exceed 1 briefly), `maxcpu` in vCPUs,
/// memory and disk sizes in bytes, `uptime` in seconds, `netin`/`netout` in bytes since start.
/// `template` is undocumented and may be missing, 0/1 or a bool; `tags` is parsed into a set
/// (PVE separates them with ';'). Every numeric field defaults to 0 when missing (stopped guests and offline
/// nodes omit them).
/// `status` is `running`, `stopped`, `paused` (rare here) or `unknown` (the node is offline).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct ClusterResource {
    /// `qemu/100` or `lxc/101`.
    pub id: String,
    /// The VMID, unique within the cluster.
    #[serde(deserialize_with = "de::u32_lenient")]
    pub vmid: u32,
    /// qemu or lxc (PVE's `type`).
    #[serde(rename = "type")]
    pub kind: GuestKind,
    /// The node the guest is on.
    pub node: String,
    /// The guest's name (`name` for QEMU, the hostname for LXC); missing while a guest is created.
    #[serde(default, deserialize_with = "de::opt_string_lenient")]
    pub name: Option<String>,
    /// `running`, `stopped`, `paused` or `unknown`.
    #[serde(default, deserialize_with = "de::string_lenient")]
    pub status: String,
    /// True for templates (never startable).
    #[serde(default, deserialize_with = "de::bool_lenient")]
    pub template: bool,
    /// The config lock (`backup`, `clone`, `snapshot`, `suspended`, …), if any.
    #[serde(default, deserialize_with = "de::opt_string_lenient")]
    pub lock: Option<String>,
    /// The guest's tags.
    #[serde(default)]
    pub tags: Tags,
    /// The resource pool the guest is in.
    #[serde(default, deserialize_with = "de::opt_string_lenient")]
    pub pool: Option<String>,
    /// CPU use as a fraction of `maxcpu`.
    #[serde(default, deserialize_with = "de::f64_lenient")]
    pub cpu: f64,
    /// vCPUs.
    #[serde(default, deserialize_with = "de::f64_lenient")]
    pub maxcpu: f64,
    /// Memory in use, bytes.
    #[serde(default, deserialize_with = "de::u64_lenient")]
    pub mem: u64,
    /// Configured memory, bytes.
    #[serde(default, deserialize_with = "de::u64_lenient")]
    pub maxmem: u64,
    /// Disk in use, bytes (0 for most QEMU guests).
    #[serde(default, deserialize_with = "de::u64_lenient")]
    pub disk: u64,
    /// Size of the boot/root disk, bytes.
    #[serde(default, deserialize_with = "de::u64_lenient")]
    pub maxdisk: u64,
    /// Seconds since start; 0 when stopped.
    #[serde(default, deserialize_with = "de::u64_lenient")]
    pub uptime: u64,
    /// Bytes received since start.
    #[serde(default, deserialize_with = "de::u64_lenient")]
    pub netin: u64,
    /// Bytes sent since start.
    #[serde(default, deserialize_with = "de::u64_lenient")]
    pub netout: u64,
    /// HA state (`started`, `stopped`, …) when the guest is HA-managed.
    #[serde(default, deserialize_with = "de::opt_string_lenient")]
    pub hastate: Option<String>,
}

/// `GET /nodes/{node}/{qemu|lxc}/{vmid}/status/current`.
///
/// `qmpstatus` (QEMU only) tells a paused VM from a running one (PVE says `status: running` for it); `lock`
/// tells a hibernated VM (`suspended`) from a stopped one. Memory in bytes, uptime in seconds, `cpu` a
/// fraction of the vCPUs.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct GuestStatus {
    /// `running` or `stopped`.
    #[serde(default, deserialize_with = "de::string_lenient")]
    pub status: String,
    /// QEMU's own state: `running`, `paused`, `suspended`, `prelaunch`, … (QEMU only).
    #[serde(default, deserialize_with = "de::opt_string_lenient")]
    pub qmpstatus: Option<String>,
    /// The config lock, if any.
    #[serde(default, deserialize_with = "de::opt_string_lenient")]
    pub lock: Option<String>,
    /// The VMID.
    #[serde(default, deserialize_with = "de::u32_lenient")]
    pub vmid: u32,
    /// Seconds since start.
    #[serde(default, deserialize_with = "de::u64_lenient")]
    pub uptime: u64,
    /// CPU use as a fraction of the vCPUs.
    #[serde(default, deserialize_with = "de::f64_lenient")]
    pub cpu: f64,
    /// Memory in use, bytes.
    #[serde(default, deserialize_with = "de::u64_lenient")]
    pub mem: u64,
    /// Configured memory, bytes.
    #[serde(default, deserialize_with = "de::u64_lenient")]
    pub maxmem: u64,
    /// True if the QEMU guest agent is enabled in the config (QEMU only; not whether it runs).
    #[serde(default, deserialize_with = "de::bool_lenient")]
    pub agent: bool,
    /// The guest's name.
    #[serde(default, deserialize_with = "de::opt_string_lenient")]
    pub name: Option<String>,
}

impl GuestStatus {
    /// The state to show a user: paused and hibernated VMs are not "running" / "stopped".
    pub fn display_state(&self) -> DisplayState {
        DisplayState::from_parts(&self.status, self.qmpstatus.as_deref(), self.lock.as_deref())
    }
}

/// A guest's state as a user should see it (paused and hibernated told apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DisplayState {
    /// Running and executing.
    Running,
    /// Powered off.
    Stopped,
    /// QEMU process alive but paused or suspended to RAM (`status: running`, `qmpstatus: paused`).
    Paused,
    /// Suspended to disk (`status: stopped`, `lock: suspended`); starting it resumes it.
    Hibernated,
    /// The node is offline or PVE reported something else.
    Unknown,
}

impl DisplayState {
    /// Derives the state from PVE's `status`, QEMU's `qmpstatus` and the config `lock`.
    /// Without `qmpstatus` (as in `/cluster/resources`) it falls back to `status`.
    pub fn from_parts(status: &str, qmpstatus: Option<&str>, lock: Option<&str>) -> DisplayState {
        match status {
            "running" => match qmpstatus {
                Some("paused") | Some("suspended") => DisplayState::Paused,
                _ => DisplayState::Running,
            },
            "paused" | "suspended" => DisplayState::Paused,
            "stopped" if lock == Some("suspended") => DisplayState::Hibernated,
            "stopped" => DisplayState::Stopped,
            _ => DisplayState::Unknown,
        }
    }

    /// The power action that gets the guest running from this state: `start` for stopped and
    /// hibernated guests (PVE resumes a hibernated VM on start), `resume` for paused ones, none when
    /// it already runs or the state is unknown.
    pub fn start_action(self) -> Option<PowerAction> {
        match self {
            DisplayState::Stopped | DisplayState::Hibernated => Some(PowerAction::Start),
            DisplayState::Paused => Some(PowerAction::Resume),
            DisplayState::Running | DisplayState::Unknown => None,
        }
    }

    /// `running`, `stopped`, `paused`, `hibernated` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            DisplayState::Running => "running",
            DisplayState::Stopped => "stopped",
            DisplayState::Paused => "paused",
            DisplayState::Hibernated => "hibernated",
            DisplayState::Unknown => "unknown",
        }
    }
}

impl fmt::Display for DisplayState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of `GET /nodes`. Offline nodes carry only `node`, `status` and `ssl_fingerprint`; the
/// other fields are 0 then. Memory and disk in bytes, `cpu` a fraction of `maxcpu`, uptime in seconds.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct NodeInfo {
    /// Node name.
    pub node: String,
    /// `online`, `offline` or `unknown`.
    #[serde(default, deserialize_with = "de::string_lenient")]
    pub status: String,
    /// CPU use, fraction of `maxcpu`.
    #[serde(default, deserialize_with = "de::f64_lenient")]
    pub cpu: f64,
    /// CPU threads.
    #[serde(default, deserialize_with = "de::f64_lenient")]
    pub maxcpu: f64,
    /// Memory in use, bytes.
    #[serde(default, deserialize_with = "de::u64_lenient")]
    pub mem: u64,
    /// Memory, bytes.
    #[serde(default, deserialize_with = "de::u64_lenient")]
    pub maxmem: u64,
    /// Root disk in use, bytes.
    #[serde(default, deserialize_with = "de::u64_lenient")]
    pub disk: u64,
    /// Root disk size, bytes.
    #[serde(default, deserialize_with = "de::u64_lenient")]
    pub maxdisk: u64,
    /// Seconds since boot.
    #[serde(default, deserialize_with = "de::u64_lenient")]
    pub uptime: u64,
    /// SHA-256 fingerprint of the node's pveproxy certificate, `AA:BB:…` (a pin candidate).
    #[serde(default, deserialize_with = "de::opt_string_lenient")]
    pub ssl_fingerprint: Option<String>,
}

impl NodeInfo {
    /// True if PVE reports the node `online`.
    pub fn is_online(&self) -> bool {
        self.status == "online"
    }
}

/// One row of `GET /cluster/status`: the `cluster` entry (quorum, node count) or a `node` entry
/// (online flag). A stand-alone node has no cluster entry.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ClusterStatusEntry {
    /// `cluster` or `node`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Cluster or node name.
    #[serde(default, deserialize_with = "de::string_lenient")]
    pub name: String,
    /// Cluster entry: true while the cluster has quorum.
    #[serde(default, deserialize_with = "de::opt_bool_lenient")]
    pub quorate: Option<bool>,
    /// Node entry: true while the node is a member online.
    #[serde(default, deserialize_with = "de::opt_bool_lenient")]
    pub online: Option<bool>,
    /// Cluster entry: number of configured nodes.
    #[serde(default, deserialize_with = "de::opt_u32_lenient")]
    pub nodes: Option<u32>,
    /// Node entry: the node's cluster IP address.
    #[serde(default, deserialize_with = "de::opt_string_lenient")]
    pub ip: Option<String>,
    /// Node entry: true for the node that answered.
    #[serde(default, deserialize_with = "de::opt_bool_lenient")]
    pub local: Option<bool>,
}

/// `GET /version`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct VersionInfo {
    /// Full version, e.g. `9.0.10`.
    #[serde(default, deserialize_with = "de::string_lenient")]
    pub version: String,
    /// Release, e.g. `9.0`.
    #[serde(default, deserialize_with = "de::string_lenient")]
    pub release: String,
    /// Git commit of pve-manager.
    #[serde(default, deserialize_with = "de::string_lenient")]
    pub repoid: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_flag_tolerates_missing_int_and_bool() {
        // Templates as 1, missing and 0, verbatim.
        let body = r#"{"data":[
 {"id":"qemu/9000","vmid":9000,"name":"tpl-ubuntu","node":"pve-a","status":"stopped","template":1,"type":"qemu","uptime":0},
 {"id":"qemu/105","vmid":105,"name":"lab-db","node":"pve-a","status":"stopped","type":"qemu"},
 {"id":"lxc/9001","vmid":9001,"name":"tpl-alpine","node":"pve-a","status":"stopped","template":0,"type":"lxc"}]}"#;
        #[derive(Deserialize)]
        struct Answer {
            data: Vec<ClusterResource>,
        }
        let rows = serde_json::from_str::<Answer>(body).unwrap().data;
        let flags: Vec<(u32, bool)> = rows.iter().map(|r| (r.vmid, r.template)).collect();
        assert_eq!(flags, [(9000, true), (105, false), (9001, false)]);
        assert_eq!(rows[2].kind, GuestKind::Lxc);
        assert_eq!(rows[1].maxmem, 0, "missing numbers default to 0");
        let as_bool: ClusterResource = serde_json::from_str(
            r#"{"id":"qemu/1","vmid":"1","type":"qemu","node":"n","status":"stopped","template":true,"cpu":"0.5","maxmem":"2048"}"#,
        )
        .unwrap();
        assert!(as_bool.template);
        assert_eq!((as_bool.vmid, as_bool.cpu, as_bool.maxmem), (1, 0.5, 2048));
    }

    #[test]
    fn cluster_resource_round_trips_through_serde() {
        let r: ClusterResource = serde_json::from_str(
            r#"{"id":"qemu/1101","type":"qemu","node":"pve1","name":"netsec-s01","vmid":1101,"status":"running","template":0,"tags":"class-netsec;student","pool":"class-netsec","maxmem":2147483648}"#,
        )
        .unwrap();
        let back: ClusterResource = serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert!(r.tags.contains("student"));
    }

    #[test]
    fn paused_vm_displays_paused_with_resume() {
        // Paused: PVE says running, QMP says paused.
        let s: GuestStatus =
            serde_json::from_str(r#"{"status":"running","qmpstatus":"paused","vmid":160}"#).unwrap();
        assert_eq!(s.display_state(), DisplayState::Paused);
        assert_eq!(s.display_state().start_action(), Some(PowerAction::Resume));
    }

    #[test]
    fn hibernated_vm_displays_hibernated_and_start_resumes() {
        // Hibernated: PVE says stopped, locked `suspended`.
        let s: GuestStatus =
            serde_json::from_str(r#"{"status":"stopped","lock":"suspended","vmid":161}"#).unwrap();
        assert_eq!(s.display_state(), DisplayState::Hibernated);
        assert_eq!(s.display_state().start_action(), Some(PowerAction::Start));
    }

    #[test]
    fn missing_qmpstatus_falls_back_to_status() {
        assert_eq!(
            DisplayState::from_parts("running", None, None),
            DisplayState::Running
        );
        assert_eq!(
            DisplayState::from_parts("stopped", None, None),
            DisplayState::Stopped
        );
        assert_eq!(
            DisplayState::from_parts("stopped", None, Some("backup")),
            DisplayState::Stopped
        );
        assert_eq!(
            DisplayState::from_parts("unknown", None, None),
            DisplayState::Unknown
        );
        assert_eq!(
            DisplayState::from_parts("running", Some("running"), None).start_action(),
            None
        );
    }

    #[test]
    fn guest_kind_parses_and_prints_lowercase() {
        assert_eq!("QEMU".parse::<GuestKind>().unwrap(), GuestKind::Qemu);
        assert_eq!(GuestKind::Lxc.to_string(), "lxc");
        assert_eq!(serde_json::to_string(&GuestKind::Qemu).unwrap(), "\"qemu\"");
        assert!("vm".parse::<GuestKind>().is_err());
    }

    #[test]
    fn cluster_status_reads_quorate_and_online_as_integers() {
        let rows: Vec<ClusterStatusEntry> = serde_json::from_str(
            r#"[{"type":"cluster","id":"cluster","name":"lab","nodes":3,"quorate":0,"version":1},
                {"type":"node","id":"node/pve1","name":"pve1","nodeid":1,"ip":"192.0.2.11","online":1,"local":1}]"#,
        )
        .unwrap();
        assert_eq!(rows[0].quorate, Some(false));
        assert_eq!(rows[0].nodes, Some(3));
        assert_eq!(rows[1].online, Some(true));
        assert_eq!(rows[1].quorate, None);
    }
}
