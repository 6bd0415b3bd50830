//! Schema version and forward migrations.
//!
//! The `meta` tree holds `schema_version` as a big-endian u32. A fresh database gets [`CURRENT`]; an
//! older one is migrated one step at a time; a newer one is refused ([`crate::StoreError::TooNew`]).

use crate::{Result, Store, StoreError};

/// The schema version this build writes.
pub const CURRENT: u32 = 1;

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
        // gets its first version mark (there is nothing older to convert).
        version += 1;
        tracing::info!(from = version - 1, to = version, path = %store.path().display(), "migrating store schema");
        write_version(store.meta(), version)?;
    }
    Ok(())
}
