//! The deployer's own sled trees (in the store's database): VMID reservations, class VMs, invites and
//! teacher limits. They are declared in the store's schema (`store::schema::OWNED_TREES`: name, owner,
//! version) and opened through it; values are JSON like the store's trees; keys are strings.

use std::marker::PhantomData;

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use store::{Store, StoreError};

use crate::error::Result;

/// A typed view of one raw sled tree of the store's database.
#[derive(Clone)]
pub(crate) struct JsonTree<V> {
    name: &'static str,
    pub(crate) tree: sled::Tree,
    _v: PhantomData<fn() -> V>,
}

impl<V: Serialize + DeserializeOwned> JsonTree<V> {
    pub(crate) fn open(store: &Store, name: &'static str) -> Result<Self> {
        Ok(JsonTree {
            name,
            tree: store.owned_tree(name)?,
            _v: PhantomData,
        })
    }

    pub(crate) fn encode(&self, v: &V) -> Result<Vec<u8>> {
        serde_json::to_vec(v).map_err(|e| {
            StoreError::Encode {
                tree: self.name.into(),
                detail: e.to_string(),
            }
            .into()
        })
    }

    pub(crate) fn decode(&self, key: &[u8], bytes: &[u8]) -> Result<V> {
        serde_json::from_slice(bytes).map_err(|e| {
            StoreError::Decode {
                tree: self.name.into(),
                key: String::from_utf8_lossy(key).into_owned(),
                detail: e.to_string(),
            }
            .into()
        })
    }

    pub(crate) fn get(&self, key: &str) -> Result<Option<V>> {
        match self.tree.get(key.as_bytes())? {
            Some(b) => Ok(Some(self.decode(key.as_bytes(), &b)?)),
            None => Ok(None),
        }
    }

    pub(crate) fn insert(&self, key: &str, v: &V) -> Result<()> {
        self.tree.insert(key.as_bytes(), self.encode(v)?)?;
        Ok(())
    }

    /// Stores `v` only if `key` is free; `false` if it was taken.
    pub(crate) fn insert_new(&self, key: &str, v: &V) -> Result<bool> {
        let bytes = self.encode(v)?;
        Ok(self
            .tree
            .compare_and_swap(key.as_bytes(), None as Option<&[u8]>, Some(bytes))?
            .is_ok())
    }

    pub(crate) fn remove(&self, key: &str) -> Result<Option<V>> {
        match self.tree.remove(key.as_bytes())? {
            Some(b) => Ok(Some(self.decode(key.as_bytes(), &b)?)),
            None => Ok(None),
        }
    }

    /// Atomic read-modify-write of one key (compare-and-swap loop); `f` returns the new value or
    /// `None` to delete.
    pub(crate) fn update(
        &self,
        key: &str,
        mut f: impl FnMut(Option<V>) -> Result<Option<V>>,
    ) -> Result<Option<V>> {
        loop {
            let old = self.tree.get(key.as_bytes())?;
            let cur = match &old {
                Some(b) => Some(self.decode(key.as_bytes(), b)?),
                None => None,
            };
            let new = f(cur)?;
            let bytes = match &new {
                Some(v) => Some(self.encode(v)?),
                None => None,
            };
            if self.tree.compare_and_swap(key.as_bytes(), old, bytes)?.is_ok() {
                return Ok(new);
            }
        }
    }

    pub(crate) fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, V)>> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(prefix.as_bytes()) {
            let (k, v) = item?;
            out.push((String::from_utf8_lossy(&k).into_owned(), self.decode(&k, &v)?));
        }
        Ok(out)
    }

    pub(crate) fn values(&self) -> Result<Vec<V>> {
        Ok(self.scan_prefix("")?.into_iter().map(|(_, v)| v).collect())
    }
}

/// A VMID held by Proxlab in a cluster (tree `vmid_reservations`, key `cluster/vmid`): taken before
/// anything is created under that VMID and released only after Proxlab removed whatever it made there.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Reservation {
    /// Cluster id.
    pub cluster: String,
    /// The VMID.
    pub vmid: u32,
    /// Job that reserved it (the deploy, publish or add-VMs job).
    pub job_id: String,
    /// Class it is for.
    pub class_id: Option<String>,
    /// When it was taken (Unix s).
    pub at: u64,
}

/// Role of a VM in a class.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum VmRole {
    /// A class base (holds the base image; a PVE template).
    Base,
    /// The teacher's VM.
    Teacher,
    /// A student VM (free until someone joins).
    #[default]
    Student,
}

impl VmRole {
    /// `base`, `teacher`, `student`.
    pub fn as_str(self) -> &'static str {
        match self {
            VmRole::Base => "base",
            VmRole::Teacher => "teacher",
            VmRole::Student => "student",
        }
    }

    /// Parses `base` / `teacher` / `student`.
    pub fn parse(s: &str) -> Option<VmRole> {
        match s {
            "base" => Some(VmRole::Base),
            "teacher" => Some(VmRole::Teacher),
            "student" => Some(VmRole::Student),
            _ => None,
        }
    }
}

/// One disk of a class VM as `create_vm` made it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct VmDisk {
    /// Config key (`scsi0`, `efidisk0`).
    pub key: String,
    /// PVE volume ID (`labnfs:201/vm-201-disk-0.qcow2`).
    pub volid: String,
    /// Absolute path on the node (overlays), if file-based.
    pub path: Option<String>,
    /// Absolute path of the backing file (overlays).
    pub base: Option<String>,
}

/// A VM Proxlab created for a class (tree `class_vms`, key [`store::vm_key`]). Its user lives in the
/// matching [`store::AssignmentRecord`] (`assignment_id`), which is what authorization reads.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ClassVm {
    /// Cluster id.
    pub cluster: String,
    /// VMID.
    pub vmid: u32,
    /// Class id.
    pub class_id: String,
    /// Base, teacher or student.
    pub role: VmRole,
    /// PVE name (passes PVE's DNS-name check).
    pub name: String,
    /// Node it was created on.
    pub node: String,
    /// Slot number of a student VM (1-based), 0 otherwise.
    pub slot: u32,
    /// Base version its disks are overlays of (0 for a base).
    pub base_version: u32,
    /// Disks as created.
    pub disks: Vec<VmDisk>,
    /// Snapshot "revert" rolls back to.
    pub baseline: Option<String>,
    /// MACs by NIC key (`net0` → `BC:24:11:..`), kept when the VM is re-made on a new base.
    pub macs: std::collections::BTreeMap<String, String>,
    /// Id of the assignment record that gives the VM to a user (`""` for none).
    pub assignment_id: String,
    /// Job that created it.
    pub job_id: String,
    /// When it was created (Unix s).
    pub created_at: u64,
    /// Set when the VM left its student (unassigned) and is being reset to the class base: the id of
    /// the `reset` job that re-makes it. A VM with this set is given to nobody; the re-made record has
    /// it cleared.
    pub reset_job: Option<String>,
}

/// An invite link of a class (tree `invites`, key = SHA-256 hex of the token). The token itself is
/// never stored.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct InviteRecord {
    /// Short public id (`inv-…`), to list and revoke it.
    pub id: String,
    /// Class id.
    pub class_id: String,
    /// Who made it.
    pub created_by: String,
    /// When (Unix s).
    pub created_at: u64,
    /// Expiry (Unix s); `None`: never.
    pub expires_at: Option<u64>,
    /// Revoked invites answer like unknown ones.
    pub revoked: bool,
    /// How many users joined with it.
    pub uses: u64,
    /// Most accounts students may create with it (`None`: as many as the class has free seats then).
    pub max_registrations: Option<u64>,
    /// Accounts created with it so far.
    pub registrations: u64,
    /// When the recent registrations were made (Unix s, the last minute only), for the rate limit.
    pub recent_registrations: Vec<u64>,
}
