//! Storages, their volumes, and guest snapshots.

use serde::{Deserialize, Serialize};

use crate::de;

/// One row of `GET /nodes/{node}/storage/{storage}/content`. Sizes in bytes; `ctime` Unix seconds.
/// A linked clone's volume carries `parent` (its base volume).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageVolume {
    /// Volume ID, `labnfs:1101/vm-1101-disk-0.qcow2`.
    pub volid: String,
    /// `qcow2`, `raw`, `vmdk`, `iso`, `tzst`, `subvol`, …
    #[serde(default, deserialize_with = "de::opt_string_lenient")]
    pub format: Option<String>,
    /// Virtual size, bytes.
    #[serde(default, deserialize_with = "de::u64_lenient")]
    pub size: u64,
    /// Bytes allocated on disk, if the storage reports it.
    #[serde(default, deserialize_with = "de::opt_u64_lenient")]
    pub used: Option<u64>,
    /// Owning VMID, for guest images.
    #[serde(default, deserialize_with = "de::opt_u32_lenient")]
    pub vmid: Option<u32>,
    /// `images`, `rootdir`, `iso`, `vztmpl`, `backup`, `snippets`, `import`.
    #[serde(default, deserialize_with = "de::string_lenient")]
    pub content: String,
    /// The base volume of a linked clone / overlay.
    #[serde(default, deserialize_with = "de::opt_string_lenient")]
    pub parent: Option<String>,
    /// Creation time, Unix seconds.
    #[serde(default, deserialize_with = "de::opt_u64_lenient")]
    pub ctime: Option<u64>,
}

/// One row of `GET /storage` (the cluster's storage configuration).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageInfo {
    /// Storage ID, e.g. `labnfs`.
    pub storage: String,
    /// Storage type: `dir`, `nfs`, `cifs`, `lvmthin`, `zfspool`, `rbd`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// Mount path of file-based storages (`/mnt/pve/labnfs`).
    #[serde(default, deserialize_with = "de::opt_string_lenient")]
    pub path: Option<String>,
    /// True if all nodes see the same storage (needed for linked clones across nodes).
    #[serde(default, deserialize_with = "de::bool_lenient")]
    pub shared: bool,
    /// Comma-separated content types allowed: `images,iso`.
    #[serde(default, deserialize_with = "de::string_lenient")]
    pub content: String,
    /// Nodes the storage is restricted to (comma-separated), if any.
    #[serde(default, deserialize_with = "de::opt_string_lenient")]
    pub nodes: Option<String>,
    /// True if the storage is disabled.
    #[serde(default, deserialize_with = "de::bool_lenient")]
    pub disable: bool,
}

impl StorageInfo {
    /// True if `content` lists `kind` (e.g. `images`).
    pub fn allows(&self, kind: &str) -> bool {
        self.content.split(',').any(|c| c.trim() == kind)
    }

    /// True for storages whose volumes are files (qcow2 overlays are possible).
    pub fn is_file_based(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "dir" | "nfs" | "cifs" | "glusterfs" | "cephfs" | "btrfs"
        )
    }
}

/// One row of `GET /nodes/{node}/{qemu|lxc}/{vmid}/snapshot`. PVE adds a pseudo-entry named
/// `current` ("You are here!") whose `parent` is the snapshot the guest runs on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Snapshot name, or `current`.
    pub name: String,
    /// Free-text description.
    #[serde(default, deserialize_with = "de::opt_string_lenient")]
    pub description: Option<String>,
    /// Creation time, Unix seconds (absent for `current`).
    #[serde(default, deserialize_with = "de::opt_u64_lenient")]
    pub snaptime: Option<u64>,
    /// The snapshot this one is based on.
    #[serde(default, deserialize_with = "de::opt_string_lenient")]
    pub parent: Option<String>,
    /// True if RAM state was saved with it (QEMU).
    #[serde(default, deserialize_with = "de::bool_lenient")]
    pub vmstate: bool,
}

impl SnapshotInfo {
    /// True for PVE's `current` pseudo-entry (not a real snapshot).
    pub fn is_current(&self) -> bool {
        self.name == "current"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_rows_tolerate_missing_path_and_shared() {
        let rows: Vec<StorageInfo> = serde_json::from_str(
            r#"[{"type":"nfs","path":"/mnt/pve/labnfs","content":"images,iso","shared":1,"storage":"labnfs"},
                {"type":"lvmthin","content":"images,rootdir","vgname":"pve","storage":"local-lvm"}]"#,
        )
        .unwrap();
        assert!(rows[0].shared && rows[0].allows("images") && rows[0].is_file_based());
        assert!(!rows[1].shared && rows[1].path.is_none() && !rows[1].is_file_based());
    }

    #[test]
    fn snapshot_list_marks_current() {
        let rows: Vec<SnapshotInfo> = serde_json::from_str(
            r#"[{"name":"baseline","snaptime":1795966228,"vmstate":0,"description":"hello"},
                {"name":"current","digest":"x","running":1,"description":"You are here!","parent":"baseline"}]"#,
        )
        .unwrap();
        assert!(!rows[0].is_current());
        assert_eq!(rows[0].snaptime, Some(1795966228));
        assert!(rows[1].is_current());
        assert_eq!(rows[1].parent.as_deref(), Some("baseline"));
    }

    #[test]
    fn volume_sizes_accept_numeric_strings() {
        let v: StorageVolume = serde_json::from_str(
            r#"{"volid":"labnfs:9000/base-9000-disk-0.qcow2/4001/vm-4001-disk-0.qcow2","content":"images","format":"qcow2","size":"2147483648","vmid":"4001","parent":"base-9000-disk-0.qcow2"}"#,
        )
        .unwrap();
        assert_eq!((v.size, v.vmid), (2147483648, Some(4001)));
        assert_eq!(v.used, None);
    }
}
