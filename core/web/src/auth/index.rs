//! [`AccessIndex`]: who may see which VM, held in memory and rebuilt whenever the `assignments` or
//! `classes` trees change, so a request's authorization is a hash lookup (the read path of `/api/vms`
//! must stay within half the trivial route's requests/s).

use std::collections::{BTreeSet, HashMap};

use store::{AssignmentRecord, Store};

/// A VM as `(cluster id, VMID)`: VMIDs are unique only inside a cluster.
pub type VmRef = (String, u32);

/// Ownership facts of one class.
#[derive(Clone, Debug, Default)]
pub struct ClassOwners {
    /// The owner's user name.
    pub owner: String,
    /// Co-owners' user names.
    pub co_owners: Vec<String>,
}

/// One immutable snapshot of assignments and class ownership.
#[derive(Clone, Debug, Default)]
pub struct AccessIndex {
    /// VMs assigned to a user (any assignment role), sorted.
    pub by_user: HashMap<String, Vec<VmRef>>,
    /// VMs of a class (assignments with that `class_id`), sorted.
    pub class_vms: HashMap<String, Vec<VmRef>>,
    /// Assignments of a VM.
    pub by_vm: HashMap<VmRef, Vec<AssignmentRecord>>,
    /// Classes by id.
    pub classes: HashMap<String, ClassOwners>,
    /// Classes a user owns or co-owns.
    pub teaches: HashMap<String, Vec<String>>,
}

/// The records of a tree that could be read; each unreadable one is skipped with a warning naming
/// `what` (it grants nothing).
fn readable<K, T, E: std::fmt::Display>(
    items: impl Iterator<Item = Result<(K, T), E>>,
    what: &'static str,
) -> impl Iterator<Item = T> {
    items.filter_map(move |item| match item {
        Ok((_, t)) => Some(t),
        Err(e) => {
            tracing::warn!(error = %e, "skipping an unreadable {what}");
            None
        }
    })
}

/// Each set of VMs as its sorted list.
fn sorted_lists(sets: HashMap<String, BTreeSet<VmRef>>) -> HashMap<String, Vec<VmRef>> {
    sets.into_iter()
        .map(|(k, v)| (k, v.into_iter().collect()))
        .collect()
}

impl AccessIndex {
    /// Builds the index from the store. Undecodable records are skipped with a warning (they grant
    /// nothing).
    pub fn build(store: &Store) -> AccessIndex {
        let mut idx = AccessIndex::default();
        let mut by_user: HashMap<String, BTreeSet<VmRef>> = HashMap::new();
        let mut class_vms: HashMap<String, BTreeSet<VmRef>> = HashMap::new();
        for a in readable(store.assignments.iter(), "assignment") {
            let vm = (a.cluster.clone(), a.vmid);
            if !a.user.is_empty() {
                by_user.entry(a.user.clone()).or_default().insert(vm.clone());
            }
            if let Some(c) = &a.class_id {
                class_vms.entry(c.clone()).or_default().insert(vm.clone());
            }
            idx.by_vm.entry(vm).or_default().push(a);
        }
        for c in readable(store.classes.iter(), "class") {
            for t in std::iter::once(&c.owner).chain(c.co_owners.iter()) {
                if !t.is_empty() {
                    idx.teaches.entry(t.clone()).or_default().push(c.id.clone());
                }
            }
            idx.classes.insert(
                c.id.clone(),
                ClassOwners {
                    owner: c.owner.clone(),
                    co_owners: c.co_owners.clone(),
                },
            );
        }
        idx.by_user = sorted_lists(by_user);
        idx.class_vms = sorted_lists(class_vms);
        idx
    }

    /// True if `user` has `vm` assigned directly.
    pub fn assigned_to(&self, user: &str, cluster: &str, vmid: u32) -> bool {
        self.by_user
            .get(user)
            .is_some_and(|v| v.iter().any(|(c, id)| *id == vmid && c == cluster))
    }

    /// True if `user` owns or co-owns class `class_id`.
    pub fn teaches_class(&self, user: &str, class_id: &str) -> bool {
        self.classes
            .get(class_id)
            .is_some_and(|c| c.owner == user || c.co_owners.iter().any(|u| u == user))
    }

    /// True if `vm` belongs to a class `user` owns or co-owns.
    pub fn vm_in_taught_class(&self, user: &str, cluster: &str, vmid: u32) -> bool {
        let Some(classes) = self.teaches.get(user) else {
            return false;
        };
        self.by_vm
            .get(&(cluster.to_string(), vmid))
            .is_some_and(|assignments| {
                assignments
                    .iter()
                    .any(|a| a.class_id.as_ref().is_some_and(|c| classes.contains(c)))
            })
    }

    /// True if `user` is in class `class_id` (has a VM of it).
    pub fn member_of_class(&self, user: &str, class_id: &str) -> bool {
        self.by_vm
            .values()
            .flatten()
            .any(|a| a.user == user && a.class_id.as_deref() == Some(class_id))
    }

    /// The VMs a teacher sees: assigned ones plus those of every class taught, sorted, no duplicates.
    pub fn teacher_vms(&self, user: &str) -> Vec<VmRef> {
        let mut all: BTreeSet<VmRef> = self.by_user.get(user).into_iter().flatten().cloned().collect();
        for class in self.teaches.get(user).into_iter().flatten() {
            all.extend(self.class_vms.get(class).into_iter().flatten().cloned());
        }
        all.into_iter().collect()
    }

    /// The baseline snapshot of `vm` for a revert: the assignment of `user` first, else any assignment
    /// of the VM that names one.
    pub fn baseline_snapshot(&self, user: &str, cluster: &str, vmid: u32) -> Option<String> {
        let list = self.by_vm.get(&(cluster.to_string(), vmid))?;
        list.iter()
            .filter(|a| a.user == user)
            .chain(list.iter())
            .find_map(|a| a.baseline_snapshot.clone().filter(|s| !s.is_empty()))
    }
}
