//! Tasks: [`Upid`], [`TaskStatus`], [`TaskOutcome`] and the [`PowerAction`]s that start them.

use std::fmt;
use std::str::FromStr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::de;

/// A PVE task ID: `UPID:{node}:{pid}:{pstart}:{starttime}:{type}:{id}:{user}:`.
///
/// `pid`, `pstart` and `starttime` are hexadecimal in the string (starttime is a Unix time in
/// seconds). Parsing splits on `:` by position: `user` may hold `@` and `!`
/// (`portal@pve!lab`), and neither `id` nor `user` holds a `:`. The trailing `:` is required.
/// Status is polled on `node`, the node that *runs* the task (not a clone's target node).
/// `Display` and serde give back the original string unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Upid {
    /// The node running the task.
    pub node: String,
    /// Worker process ID.
    pub pid: u32,
    /// Worker process start time (clock ticks since boot).
    pub pstart: u64,
    /// Task start, Unix time in seconds.
    pub starttime: u64,
    /// Task type: `qmstart`, `qmclone`, `vzstart`, `qmsnapshot`, …
    pub kind: String,
    /// Task object ID, usually the VMID; may be empty.
    pub id: String,
    /// Who started it: `user@realm` or `user@realm!tokenid`.
    pub user: String,
    raw: String,
}

impl Upid {
    /// The UPID string exactly as PVE sent it.
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl FromStr for Upid {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| format!("invalid UPID '{s}': {why}");
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 9 || parts[0] != "UPID" || !parts[8].is_empty() {
            return Err(bad("want UPID:node:pid:pstart:starttime:type:id:user:"));
        }
        let hex = |field: &str, name: &str| -> Result<u64, String> {
            if field.is_empty() || !field.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(&format!("{name} is not hexadecimal")));
            }
            u64::from_str_radix(field, 16).map_err(|_| bad(&format!("{name} is too large")))
        };
        let node = parts[1];
        if node.is_empty() {
            return Err(bad("empty node"));
        }
        let pid = u32::try_from(hex(parts[2], "pid")?).map_err(|_| bad("pid is too large"))?;
        let pstart = hex(parts[3], "pstart")?;
        let starttime = hex(parts[4], "starttime")?;
        if parts[5].is_empty() || parts[7].is_empty() {
            return Err(bad("empty task type or user"));
        }
        Ok(Upid {
            node: node.to_owned(),
            pid,
            pstart,
            starttime,
            kind: parts[5].to_owned(),
            id: parts[6].to_owned(),
            user: parts[7].to_owned(),
            raw: s.to_owned(),
        })
    }
}

impl fmt::Display for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl Serialize for Upid {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for Upid {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(D::Error::custom)
    }
}

/// `GET /nodes/{node}/tasks/{upid}/status`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct TaskStatus {
    /// `running` or `stopped`.
    #[serde(default, deserialize_with = "de::string_lenient")]
    pub status: String,
    /// Set once stopped: `OK`, `WARNINGS: n`, or the error text.
    #[serde(default, deserialize_with = "de::opt_string_lenient")]
    pub exitstatus: Option<String>,
    /// The node running the task.
    #[serde(default, deserialize_with = "de::string_lenient")]
    pub node: String,
    /// The task's UPID.
    #[serde(default, deserialize_with = "de::string_lenient")]
    pub upid: String,
    /// Task type (`qmstart`, …).
    #[serde(rename = "type", default, deserialize_with = "de::string_lenient")]
    pub kind: String,
    /// Task start, Unix seconds.
    #[serde(default, deserialize_with = "de::opt_u64_lenient")]
    pub starttime: Option<u64>,
}

impl TaskStatus {
    /// True while PVE reports the task `running`.
    pub fn is_running(&self) -> bool {
        self.status == "running"
    }

    /// For a stopped task: `Ok(outcome)` for `OK` / `WARNINGS: n`, `Err(exitstatus)` for anything else
    /// (a missing exitstatus on a stopped task is `Err("unknown")`). `None` while it runs.
    pub fn outcome(&self) -> Option<Result<TaskOutcome, String>> {
        if self.is_running() {
            return None;
        }
        let exit = self.exitstatus.as_deref().unwrap_or("unknown");
        Some(TaskOutcome::from_exitstatus(exit).ok_or_else(|| exit.trim_end().to_owned()))
    }
}

/// How a task that did not fail ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskOutcome {
    /// `exitstatus: OK`.
    Ok,
    /// `exitstatus: WARNINGS: n` — the work was done, with n warnings in the task log.
    Warnings(u32),
}

impl TaskOutcome {
    /// Parses `OK` and `WARNINGS: n`; anything else (an error text) is `None`.
    pub fn from_exitstatus(exitstatus: &str) -> Option<TaskOutcome> {
        let s = exitstatus.trim();
        if s == "OK" {
            return Some(TaskOutcome::Ok);
        }
        let n = s.strip_prefix("WARNINGS:")?.trim();
        n.parse().ok().map(TaskOutcome::Warnings)
    }
}

/// Power actions: `POST /nodes/{node}/{qemu|lxc}/{vmid}/status/{action}`. Each returns a UPID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerAction {
    /// Power on (also resumes a hibernated VM).
    Start,
    /// Hard stop (pull the plug).
    Stop,
    /// ACPI shutdown (QEMU) / clean shutdown (LXC); may time out if the guest ignores it.
    Shutdown,
    /// ACPI reboot.
    Reboot,
    /// Pause (QEMU) / freeze (LXC).
    Suspend,
    /// Resume a paused guest.
    Resume,
}

impl PowerAction {
    /// The path segment: `start`, `stop`, `shutdown`, `reboot`, `suspend`, `resume`.
    pub fn as_str(self) -> &'static str {
        match self {
            PowerAction::Start => "start",
            PowerAction::Stop => "stop",
            PowerAction::Shutdown => "shutdown",
            PowerAction::Reboot => "reboot",
            PowerAction::Suspend => "suspend",
            PowerAction::Resume => "resume",
        }
    }
}

impl fmt::Display for PowerAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PowerAction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "start" => PowerAction::Start,
            "stop" => PowerAction::Stop,
            "shutdown" => PowerAction::Shutdown,
            "reboot" => PowerAction::Reboot,
            "suspend" => PowerAction::Suspend,
            "resume" => PowerAction::Resume,
            other => return Err(format!("unknown power action '{other}'")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upid_with_token_user_parses_by_position() {
        // A clone UPID with a token user, verbatim.
        let raw = "UPID:pve-a:0000ABCD:00112233:65F00000:qmclone:9000:portal@pve!lab:";
        let u: Upid = raw.parse().unwrap();
        assert_eq!(u.node, "pve-a");
        assert_eq!(u.pid, 0xABCD);
        assert_eq!(u.pstart, 0x0011_2233);
        assert_eq!(u.starttime, 0x65F0_0000);
        assert_eq!(u.kind, "qmclone");
        assert_eq!(u.id, "9000");
        assert_eq!(u.user, "portal@pve!lab");
        assert_eq!(u.to_string(), raw);
        assert_eq!(serde_json::to_string(&u).unwrap(), format!("\"{raw}\""));
        let back: Upid = serde_json::from_str(&format!("\"{raw}\"")).unwrap();
        assert_eq!(back, u);
    }

    #[test]
    fn upid_with_empty_id_and_nine_digit_pstart_parses() {
        let u: Upid = "UPID:pve1:00001234:1234ABCDE:65F00000:vzdump::root@pam:"
            .parse()
            .unwrap();
        assert_eq!(u.id, "");
        assert_eq!(u.pstart, 0x1_234A_BCDE);
    }

    #[test]
    fn malformed_upids_are_rejected() {
        for bad in [
            "",
            "UPID:pve-a:0000ABCD:00112233:65F00000:qmclone:9000:portal@pve!lab",
            "UPID:pve-a:0000ABCD:00112233:65F00000:qmclone:9000:portal@pve:lab:",
            "TASK:pve-a:0000ABCD:00112233:65F00000:qmclone:9000:root@pam:",
            "UPID:pve-a:XYZ:00112233:65F00000:qmclone:9000:root@pam:",
            "UPID::0000ABCD:00112233:65F00000:qmclone:9000:root@pam:",
        ] {
            assert!(bad.parse::<Upid>().is_err(), "{bad}");
        }
    }

    #[test]
    fn exit_statuses_map_to_outcomes() {
        assert_eq!(TaskOutcome::from_exitstatus("OK"), Some(TaskOutcome::Ok));
        assert_eq!(
            TaskOutcome::from_exitstatus("WARNINGS: 3"),
            Some(TaskOutcome::Warnings(3))
        );
        assert_eq!(
            TaskOutcome::from_exitstatus("start failed: QEMU exited with code 1"),
            None
        );
        let running = TaskStatus {
            status: "running".into(),
            ..Default::default()
        };
        assert_eq!(running.outcome(), None);
        let failed = TaskStatus {
            status: "stopped".into(),
            exitstatus: Some("clone failed: x\n".into()),
            ..Default::default()
        };
        assert_eq!(failed.outcome(), Some(Err("clone failed: x".into())));
    }

    #[test]
    fn power_actions_use_pve_path_names() {
        let all = [
            PowerAction::Start,
            PowerAction::Stop,
            PowerAction::Shutdown,
            PowerAction::Reboot,
            PowerAction::Suspend,
            PowerAction::Resume,
        ];
        let names: Vec<&str> = all.iter().map(|a| a.as_str()).collect();
        assert_eq!(
            names,
            ["start", "stop", "shutdown", "reboot", "suspend", "resume"]
        );
        for a in all {
            assert_eq!(a.as_str().parse::<PowerAction>().unwrap(), a);
        }
    }
}
