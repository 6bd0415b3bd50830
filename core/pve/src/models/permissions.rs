//! [`Permissions`]: `GET /access/permissions` and the "what is missing" check (a privilege-separated token
//! silently sees nothing).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The privileges Proxlab needs on `/vms` (or on each class pool) to list, power, clone, snapshot
/// and revert lab VMs.
pub const REQUIRED_VM_PRIVILEGES: &[&str] = &[
    "VM.Audit",
    "VM.PowerMgmt",
    "VM.Clone",
    "VM.Snapshot",
    "VM.Snapshot.Rollback",
];

/// The effective privileges of the calling user or API token: ACL path → privilege → propagate flag.
///
/// PVE computes this per ACL path (`/`, `/vms`, `/vms/100`, `/pool/x`, `/storage/y`): the value is 1
/// if the privilege propagates to paths below, 0 if it holds on that path only. A privilege-separated
/// API token sees only what was granted to the token itself: an empty `/cluster/resources` list
/// then means "nothing visible to this token", which [`Permissions::missing`] makes explicit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Permissions(pub BTreeMap<String, BTreeMap<String, i64>>);

/// `/vms/100/` → `/vms/100`; `` → `/`.
fn normalize(path: &str) -> String {
    let trimmed = path.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_owned()
    } else if trimmed.starts_with('/') {
        trimmed.to_owned()
    } else {
        format!("/{trimmed}")
    }
}

/// `path` and its ancestors, most specific first: `/vms/100`, `/vms`, `/`.
fn ancestry(path: &str) -> Vec<String> {
    let mut out = vec![path.to_owned()];
    let mut cur = path.to_owned();
    while cur != "/" {
        cur = match cur.rfind('/') {
            Some(0) | None => "/".to_owned(),
            Some(i) => cur[..i].to_owned(),
        };
        out.push(cur.clone());
    }
    out
}

impl Permissions {
    /// True if the privilege holds on `path`: PVE's entry for the most specific listed path at or
    /// above `path` decides; an entry on `path` itself counts whatever its propagate flag, an entry
    /// on an ancestor only if it propagates (value ≠ 0).
    pub fn has(&self, path: &str, privilege: &str) -> bool {
        let path = normalize(path);
        for candidate in ancestry(&path) {
            if let Some(privs) = self.0.get(&candidate) {
                return match privs.get(privilege) {
                    Some(flag) => candidate == path || *flag != 0,
                    None => false,
                };
            }
        }
        false
    }

    /// The privileges of `privs` that do not hold on `path`, in the order given (empty = all held).
    /// Example: with `{"/":{"Sys.Audit":1}}`, `missing("/vms", REQUIRED_VM_PRIVILEGES)` lists all five.
    pub fn missing(&self, path: &str, privs: &[&str]) -> Vec<String> {
        privs
            .iter()
            .filter(|p| !self.has(path, p))
            .map(|p| (*p).to_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perms(json: &str) -> Permissions {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn privsep_token_with_only_sys_audit_misses_every_vm_privilege() {
        // A privilege-separated token with only Sys.Audit on /, verbatim.
        let p = perms(r#"{"/":{"Sys.Audit":1}}"#);
        assert_eq!(p.missing("/vms", REQUIRED_VM_PRIVILEGES), REQUIRED_VM_PRIVILEGES);
        assert!(p.missing("/", &["Sys.Audit"]).is_empty());
    }

    #[test]
    fn propagated_root_privileges_reach_vms_below() {
        let p = perms(r#"{"/":{"VM.Audit":1,"VM.PowerMgmt":1}}"#);
        assert!(p.missing("/vms/1101", &["VM.Audit", "VM.PowerMgmt"]).is_empty());
        assert_eq!(p.missing("/vms/1101/", &["VM.Clone"]), ["VM.Clone"]);
    }

    #[test]
    fn non_propagating_privilege_holds_only_on_its_own_path() {
        let p = perms(r#"{"/vms":{"VM.Audit":0,"VM.PowerMgmt":1}}"#);
        assert!(p.has("/vms", "VM.Audit"));
        assert!(!p.has("/vms/100", "VM.Audit"));
        assert!(p.has("/vms/100", "VM.PowerMgmt"));
        assert!(!p.has("/", "VM.PowerMgmt"));
    }

    #[test]
    fn most_specific_listed_path_decides() {
        // PVE lists effective privileges per path, so a narrower entry replaces the wider one.
        let p = perms(r#"{"/":{"VM.Audit":1,"VM.PowerMgmt":1},"/vms/100":{"VM.Audit":1}}"#);
        assert_eq!(
            p.missing("/vms/100", &["VM.Audit", "VM.PowerMgmt"]),
            ["VM.PowerMgmt"]
        );
        assert!(p.missing("/vms/101", &["VM.Audit", "VM.PowerMgmt"]).is_empty());
    }
}
