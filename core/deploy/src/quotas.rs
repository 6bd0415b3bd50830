//! Per-teacher limits on classes and VMs: defaults from `[limits] classes_per_teacher` and
//! `vms_per_teacher`, overridden per teacher by an admin (tree `teacher_limits`). A class counts
//! against its owner; its VMs are the VMIDs it holds (teacher VM, class base, student VMs:
//! `pool_size + 2`). Admin accounts have no limits.

use serde::{Deserialize, Serialize};
use store::Role;

use crate::Deployer;
use crate::error::{DeployError, Result};

/// Limits an admin set for one teacher; `None` keeps the configured default.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct TeacherLimits {
    /// Classes the teacher may own.
    pub classes: Option<u32>,
    /// VMs the teacher's classes may hold.
    pub vms: Option<u32>,
}

/// What a teacher uses and may use (`you use 3 of 10 classes`).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct TeacherUsage {
    /// Classes they own.
    pub classes: u64,
    /// Their class limit.
    pub classes_limit: u32,
    /// VMs their classes hold.
    pub vms: u64,
    /// Their VM limit.
    pub vms_limit: u32,
    /// Admin accounts have no limits (the numbers are then informative only).
    pub unlimited: bool,
    /// The limits an admin set for this teacher (`None` in a field: the site's default applies).
    pub set: TeacherLimits,
}

/// VMIDs a class of `pool_size` students holds: teacher VM, class base and the students.
pub(crate) fn class_vms(pool_size: u32) -> u64 {
    u64::from(pool_size) + 2
}

impl Deployer {
    /// The classes and VMs `user` owns now, with their limits.
    pub fn teacher_usage(&self, user: &str) -> Result<TeacherUsage> {
        let owned: Vec<store::ClassRecord> =
            self.classes()?.into_iter().filter(|c| c.owner == user).collect();
        let role = self.inner.store.users.get(user)?.map(|u| u.role);
        let (classes, vms) = owned
            .iter()
            .fold((0, 0), |(n, v), c| (n + 1, v + class_vms(c.pool_size)));
        self.usage_of(user, role, classes, vms)
    }

    /// [`Deployer::teacher_usage`] of every teacher and admin account at once (one pass over the
    /// classes), by account name: what the admin's users page shows.
    pub fn teacher_usages(&self) -> Result<std::collections::BTreeMap<String, TeacherUsage>> {
        let mut owned: std::collections::HashMap<String, (u64, u64)> = std::collections::HashMap::new();
        for c in self.classes()? {
            let e = owned.entry(c.owner.clone()).or_default();
            e.0 += 1;
            e.1 += class_vms(c.pool_size);
        }
        let mut out = std::collections::BTreeMap::new();
        for u in self.inner.store.users.values()? {
            if !matches!(u.role, Role::Teacher | Role::Admin) {
                continue;
            }
            let (classes, vms) = owned.get(&u.name).copied().unwrap_or_default();
            let usage = self.usage_of(&u.name, Some(u.role), classes, vms)?;
            out.insert(u.name, usage);
        }
        Ok(out)
    }

    fn usage_of(&self, user: &str, role: Option<Role>, classes: u64, vms: u64) -> Result<TeacherUsage> {
        let set = self.inner.teacher_limits.get(user)?.unwrap_or_default();
        let l = &self.inner.cfg.limits;
        Ok(TeacherUsage {
            classes,
            classes_limit: set.classes.unwrap_or(l.classes_per_teacher),
            vms,
            vms_limit: set.vms.unwrap_or(l.vms_per_teacher),
            unlimited: role == Some(Role::Admin),
            set,
        })
    }

    /// Sets `user`'s limits (admins only, through the web layer). Errors: [`DeployError::Invalid`]
    /// when `user` is not a teacher or admin account.
    pub fn set_teacher_limits(&self, user: &str, limits: TeacherLimits) -> Result<TeacherUsage> {
        match self.inner.store.users.get(user)? {
            Some(u) if matches!(u.role, Role::Teacher | Role::Admin) => {}
            Some(_) => {
                return Err(DeployError::Invalid(format!(
                    "{user} is a student; limits are set for teacher accounts"
                )));
            }
            None => return Err(DeployError::Invalid(format!("there is no user {user:?}"))),
        }
        if limits == TeacherLimits::default() {
            self.inner.teacher_limits.remove(user)?;
        } else {
            self.inner.teacher_limits.insert(user, &limits)?;
        }
        self.teacher_usage(user)
    }

    /// Refuses `owner` one more class of `new_classes` classes and `new_vms` VMs past their limits.
    /// Errors: [`DeployError::LimitReached`] (409) saying what they use and may use.
    pub(crate) fn check_quota(&self, owner: &str, new_classes: u64, new_vms: u64) -> Result<()> {
        let u = self.teacher_usage(owner)?;
        if u.unlimited {
            return Ok(());
        }
        let ask = "ask an admin to raise your limit, or delete a class you no longer need";
        if new_classes > 0 && u.classes.saturating_add(new_classes) > u64::from(u.classes_limit) {
            return Err(DeployError::LimitReached(format!(
                "{owner} uses {} of {} classes; {ask}",
                u.classes, u.classes_limit
            )));
        }
        if u.vms.saturating_add(new_vms) > u64::from(u.vms_limit) {
            return Err(DeployError::LimitReached(format!(
                "this needs {new_vms} more VMs, and {owner} uses {} of {} VMs; {ask}",
                u.vms, u.vms_limit
            )));
        }
        Ok(())
    }

    /// Runs `f` (which stores the new class or VMs) only if `owner` stays within their limits; the
    /// count and `f` hold one lock, so concurrent requests cannot both pass the last free place.
    pub(crate) fn within_quota<T>(
        &self,
        owner: &str,
        new_classes: u64,
        new_vms: u64,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let _held = self.inner.quota_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.check_quota(owner, new_classes, new_vms)?;
        f()
    }
}
