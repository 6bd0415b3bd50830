//! Guest SSH host keys, recorded per VM (sled tree `guest_host_keys`, key `cluster/vmid` as
//! [`store::vm_key`]). The first key a VM presents is recorded (trust on first use); a different key later
//! is a loud warning in the terminal, the log and the audit log, and the user decides before any
//! credential is sent.

use cloner::GuestHostKeys;
pub use cloner::guest::{HostKeyRecord, HostKeyStatus};
use store::Store;

/// Name of the sled tree.
pub const TREE: &str = "guest_host_keys";

/// Errors reading or writing the tree (the message only).
#[derive(Debug, thiserror::Error)]
#[error("host key store: {0}")]
pub struct HostKeyStoreError(String);

/// The sled tree as the cloner's guest host-key store; the rules (first use, known, changed) are the
/// cloner's ([`GuestHostKeys`]). Guests are named `cluster/vmid` ([`store::vm_key`]).
pub struct VmHostKeys<'a>(pub &'a Store);

impl GuestHostKeys for VmHostKeys<'_> {
    fn load(&self, guest: &str) -> Result<Option<HostKeyRecord>, String> {
        let tree = self.0.db().open_tree(TREE).map_err(|e| e.to_string())?;
        match tree.get(guest.as_bytes()).map_err(|e| e.to_string())? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(|e| e.to_string())?)),
            None => Ok(None),
        }
    }

    fn save(&self, guest: &str, record: &HostKeyRecord) -> Result<(), String> {
        let tree = self.0.db().open_tree(TREE).map_err(|e| e.to_string())?;
        let bytes = serde_json::to_vec(record).map_err(|e| e.to_string())?;
        tree.insert(guest.as_bytes(), bytes).map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// The record of `cluster`/`vmid`, if any.
pub fn get(store: &Store, cluster: &str, vmid: u32) -> Result<Option<HostKeyRecord>, HostKeyStoreError> {
    VmHostKeys(store)
        .load(&store::vm_key(cluster, vmid))
        .map_err(HostKeyStoreError)
}

/// Compares `presented` with the record.
pub fn compare(
    store: &Store,
    cluster: &str,
    vmid: u32,
    presented: &HostKeyRecord,
) -> Result<HostKeyStatus, HostKeyStoreError> {
    VmHostKeys(store)
        .compare(&store::vm_key(cluster, vmid), presented)
        .map_err(HostKeyStoreError)
}

/// Records `key` as the VM's key (first use, or the user accepted a change), keeping `first_seen` of an
/// identical record.
pub fn record(store: &Store, cluster: &str, vmid: u32, key: &HostKeyRecord) -> Result<(), HostKeyStoreError> {
    VmHostKeys(store)
        .record(&store::vm_key(cluster, vmid), key)
        .map_err(HostKeyStoreError)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(openssh: &str, at: u64) -> HostKeyRecord {
        HostKeyRecord {
            algorithm: "ssh-ed25519".into(),
            fingerprint: format!("SHA256:{openssh}"),
            openssh: openssh.into(),
            first_seen: at,
            last_seen: at,
        }
    }

    #[test]
    fn first_key_is_new_then_known_and_another_is_a_change() {
        let store = Store::open_temporary().unwrap();
        assert_eq!(
            compare(&store, "lab", 4001, &key("A", 1)).unwrap(),
            HostKeyStatus::New
        );
        record(&store, "lab", 4001, &key("A", 1)).unwrap();
        assert_eq!(
            compare(&store, "lab", 4001, &key("A", 2)).unwrap(),
            HostKeyStatus::Known
        );
        record(&store, "lab", 4001, &key("A", 2)).unwrap();
        assert_eq!(get(&store, "lab", 4001).unwrap().unwrap().first_seen, 1);
        match compare(&store, "lab", 4001, &key("B", 3)).unwrap() {
            HostKeyStatus::Changed(old) => assert_eq!(old.openssh, "A"),
            other => panic!("{other:?}"),
        }
        // VMIDs are per cluster.
        assert_eq!(
            compare(&store, "other", 4001, &key("B", 3)).unwrap(),
            HostKeyStatus::New
        );
    }
}
