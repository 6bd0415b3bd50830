//! Schema version and forward migrations.
//!
//! The `meta` tree holds `schema_version` as a big-endian u32. A fresh database gets [`CURRENT`]; an
//! older one is migrated one step at a time; a newer one is refused ([`crate::StoreError::TooNew`]).

use crate::{Result, Store, StoreError};

/// The schema version this build writes.
///
/// - 1: the store's typed trees ([`crate::Store`]'s fields).
/// - 2: the trees other crates own in this database are declared here ([`OWNED_TREES`]); they
///   existed under the same names and with the same JSON records since version 1, so the step converts
///   nothing.
pub const CURRENT: u32 = 2;

/// A tree of this database whose records another crate defines and reads (the typed view lives in
/// that crate), declared here so that the schema names every tree of the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnedTree {
    /// The sled tree's name.
    pub name: &'static str,
    /// The crate whose records it holds.
    pub owner: &'static str,
    /// The schema version that first had it.
    pub since: u32,
    /// What it holds, key first.
    pub holds: &'static str,
}

/// Every tree another crate owns (opened through [`crate::Store::owned_tree`]).
pub const OWNED_TREES: &[OwnedTree] = &[
    OwnedTree {
        name: "vmid_reservations",
        owner: "deploy",
        since: 1,
        holds: "VMID reservations inside a cluster's range, key `cluster/vmid`",
    },
    OwnedTree {
        name: "class_vms",
        owner: "deploy",
        since: 1,
        holds: "the VMs of each class (teacher, students, bases), key `class/cluster/vmid`",
    },
    OwnedTree {
        name: "invites",
        owner: "deploy",
        since: 1,
        holds: "class invites, key = SHA-256 hex of the invite token",
    },
    OwnedTree {
        name: "teacher_limits",
        owner: "deploy",
        since: 1,
        holds: "per-teacher limits an admin set, key = account name",
    },
];

const KEY: &[u8] = b"schema_version";

/// Reads the stored version (0 when absent).
pub fn read_version(meta: &sled::Tree) -> Result<u32> {
    match meta.get(KEY)? {
        None => Ok(0),
        Some(v) => {
            let bytes: [u8; 4] = v.as_ref().try_into().map_err(|_| StoreError::Decode {
                tree: "meta".into(),
                key: "schema_version".into(),
                detail: format!("{} bytes, expected 4", v.len()),
            })?;
            Ok(u32::from_be_bytes(bytes))
        }
    }
}

/// Writes the version (used by migrations and tests).
pub fn write_version(meta: &sled::Tree, version: u32) -> Result<()> {
    meta.insert(KEY, &version.to_be_bytes())?;
    Ok(())
}

/// Brings the database to [`CURRENT`], or refuses it.
pub(crate) fn migrate(store: &Store) -> Result<()> {
    let found = read_version(store.meta())?;
    if found > CURRENT {
        return Err(StoreError::TooNew {
            path: store.path().to_path_buf(),
            found,
            supported: CURRENT,
        });
    }
    let mut version = found;
    while version < CURRENT {
        // Each step: transform records, then bump the version. Version 0 → 1: the empty database
        // gets its first version mark (there is nothing older to convert). 1 → 2: the owned trees are
        // declared ([`OWNED_TREES`]); their records are unchanged.
        version += 1;
        tracing::info!(from = version - 1, to = version, path = %store.path().display(), "migrating store schema");
        write_version(store.meta(), version)?;
    }
    Ok(())
}
