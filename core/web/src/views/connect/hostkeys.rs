//! Guest SSH host keys, recorded per VM (sled tree `guest_host_keys`, key `cluster/vmid` as
//! [`store::vm_key`]). The first key a VM presents is recorded (trust on first use); a different key later
//! is a loud warning in the terminal, the log and the audit log, and the user decides before any
//! credential is sent.

use serde::{Deserialize, Serialize};
use store::Store;

/// Name of the sled tree.
pub const TREE: &str = "guest_host_keys";

/// The recorded key of one VM.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostKeyRecord {
    /// Key algorithm (`ssh-ed25519`, `rsa-sha2-512`, …).
    pub algorithm: String,
    /// `SHA256:<base64>` as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
    /// The public key in OpenSSH form (`ssh-ed25519 AAAA…`).
    pub openssh: String,
    /// When it was first seen (Unix s).
    pub first_seen: u64,
    /// When it was last seen (Unix s).
    pub last_seen: u64,
}

/// How a presented key compares with the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostKeyStatus {
    /// No key recorded for this VM yet.
    New,
    /// The recorded key.
    Known,
    /// Another key than the recorded one.
    Changed(HostKeyRecord),
}

/// Errors reading or writing the tree (the message only).
#[derive(Debug, thiserror::Error)]
#[error("host key store: {0}")]
pub struct HostKeyStoreError(String);

fn err(e: impl std::fmt::Display) -> HostKeyStoreError {
    HostKeyStoreError(e.to_string())
}

/// The record of `cluster`/`vmid`, if any.
pub fn get(store: &Store, cluster: &str, vmid: u32) -> Result<Option<HostKeyRecord>, HostKeyStoreError> {
    let tree = store.db().open_tree(TREE).map_err(err)?;
    match tree.get(store::vm_key(cluster, vmid).as_bytes()).map_err(err)? {
        Some(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(err)?)),
        None => Ok(None),
    }
}

/// Compares `presented` with the record.
pub fn compare(
    store: &Store,
    cluster: &str,
    vmid: u32,
    presented: &HostKeyRecord,
) -> Result<HostKeyStatus, HostKeyStoreError> {
    Ok(match get(store, cluster, vmid)? {
        None => HostKeyStatus::New,
        Some(r) if r.openssh == presented.openssh => HostKeyStatus::Known,
        Some(r) => HostKeyStatus::Changed(r),
    })
}

/// Records `key` as the VM's key (first use, or the user accepted a change), keeping `first_seen` of an
/// identical record.
pub fn record(store: &Store, cluster: &str, vmid: u32, key: &HostKeyRecord) -> Result<(), HostKeyStoreError> {
    let tree = store.db().open_tree(TREE).map_err(err)?;
    let mut rec = key.clone();
    if let Some(old) = get(store, cluster, vmid)?
        && old.openssh == key.openssh
    {
        rec.first_seen = old.first_seen;
    }
    let bytes = serde_json::to_vec(&rec).map_err(err)?;
    tree.insert(store::vm_key(cluster, vmid).as_bytes(), bytes)
        .map_err(err)?;
    Ok(())
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
