//! The one place that answers "may this principal do X to Y" ([`decide`]). Every route, API, SSE
//! stream and WebSocket asks it, directly or through the extractors of [`crate::auth`].
//!
//! Rules (issue 4 item 3):
//! - **admin**: everything;
//! - **teacher**: VMs assigned to them, and every VM of a class they own or co-own; their classes;
//! - **student**: VMs assigned to them only; classes they are in (read only);
//! - a VM or class the principal may not see answers [`Decision::NotFound`] (404, so its existence is not
//!   revealed); a site-admin action by a non-admin answers [`Decision::Forbidden`] (403);
//! - anonymous requests never reach this function: they get 401 (API) or a redirect to `/login` (pages).

use store::Role;

use super::Principal;
use super::index::AccessIndex;

/// What the principal wants to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read a VM's status, IP, events.
    ViewVm,
    /// Start, stop, shut down, reboot, resume, revert.
    OperateVm,
    /// Open a console or SSH terminal, download an .rdp file.
    ConnectVm,
    /// Read a class.
    ViewClass,
    /// Change a class (settings, co-owners, deploy, publish).
    ManageClass,
    /// Site administration: users, clusters, assignments, sync, metrics, reload.
    Administer,
}

/// What the action is done to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// A VM `vmid` of cluster `cluster`.
    Vm {
        /// Cluster id.
        cluster: &'a str,
        /// VMID inside that cluster.
        vmid: u32,
    },
    /// A class by id.
    Class(&'a str),
    /// The site as a whole.
    Site,
}

/// The answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Answer 404: the thing does not exist for this principal.
    NotFound,
    /// Answer 403: the principal may not do this (used only where existence is no secret).
    Forbidden,
}

/// Decides whether `who` may do `action` to `target`, given assignments and class ownership in `idx`.
pub fn decide(who: &Principal, action: Action, target: &Target<'_>, idx: &AccessIndex) -> Decision {
    if who.role == Role::Admin {
        return Decision::Allow;
    }
    match (action, target) {
        (Action::Administer, _) | (_, Target::Site) => Decision::Forbidden,
        (Action::ViewClass | Action::ManageClass, Target::Vm { .. }) => Decision::Forbidden,
        (Action::ViewVm | Action::OperateVm | Action::ConnectVm, Target::Class(_)) => Decision::Forbidden,
        (Action::ViewVm | Action::OperateVm | Action::ConnectVm, Target::Vm { cluster, vmid }) => {
            let own = idx.assigned_to(&who.name, cluster, *vmid);
            let taught = who.role == Role::Teacher && idx.vm_in_taught_class(&who.name, cluster, *vmid);
            if own || taught {
                Decision::Allow
            } else {
                Decision::NotFound
            }
        }
        (Action::ViewClass, Target::Class(id)) => {
            if idx.teaches_class(&who.name, id) || idx.member_of_class(&who.name, id) {
                Decision::Allow
            } else {
                Decision::NotFound
            }
        }
        (Action::ManageClass, Target::Class(id)) => {
            if who.role == Role::Teacher && idx.teaches_class(&who.name, id) {
                Decision::Allow
            } else if idx.member_of_class(&who.name, id) {
                Decision::Forbidden
            } else {
                Decision::NotFound
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Principal, Via};
    use store::AssignmentRecord;

    /// The VM `vmid` on `cluster` as a decision's target.
    fn vm(cluster: &str, vmid: u32) -> Target<'_> {
        Target::Vm { cluster, vmid }
    }

    fn who(name: &str, role: Role) -> Principal {
        Principal {
            name: name.into(),
            display_name: name.into(),
            role,
            realm: "local".into(),
            active_cluster: None,
            via: Via::Token { id: "t".into() },
        }
    }

    fn idx() -> AccessIndex {
        let mut idx = AccessIndex::default();
        let a = |user: &str, vmid: u32, class: Option<&str>| AssignmentRecord {
            cluster: "lab".into(),
            vmid,
            user: user.into(),
            class_id: class.map(String::from),
            ..Default::default()
        };
        for rec in [
            a("stud", 4001, Some("c1")),
            a("other", 4002, Some("c2")),
            a("", 4003, Some("c1")),
        ] {
            let vm = (rec.cluster.clone(), rec.vmid);
            if !rec.user.is_empty() {
                idx.by_user.entry(rec.user.clone()).or_default().push(vm.clone());
            }
            if let Some(c) = &rec.class_id {
                idx.class_vms.entry(c.clone()).or_default().push(vm.clone());
            }
            idx.by_vm.entry(vm).or_default().push(rec);
        }
        idx.classes.insert(
            "c1".into(),
            crate::auth::index::ClassOwners {
                owner: "teach".into(),
                co_owners: vec!["co".into()],
            },
        );
        idx.teaches.insert("teach".into(), vec!["c1".into()]);
        idx.teaches.insert("co".into(), vec!["c1".into()]);
        idx
    }

    /// Checks each `(action, target, decision)` row for `p`.
    fn check(p: &Principal, i: &AccessIndex, rows: &[(Action, Target<'_>, Decision)]) {
        for (action, target, want) in rows {
            assert_eq!(
                decide(p, *action, target, i),
                *want,
                "{} {action:?} {target:?}",
                p.name
            );
        }
    }

    #[test]
    fn student_sees_own_vm_and_gets_not_found_for_others() {
        let i = idx();
        check(
            &who("stud", Role::Student),
            &i,
            &[
                (Action::OperateVm, vm("lab", 4001), Decision::Allow),
                (Action::ViewVm, vm("lab", 4002), Decision::NotFound),
                (Action::ViewVm, vm("other", 4001), Decision::NotFound),
                (Action::Administer, Target::Site, Decision::Forbidden),
                (Action::ViewClass, Target::Class("c1"), Decision::Allow),
                (Action::ManageClass, Target::Class("c1"), Decision::Forbidden),
            ],
        );
    }

    #[test]
    fn teacher_and_co_owner_see_class_vms_other_teacher_does_not() {
        let i = idx();
        for t in ["teach", "co"] {
            check(
                &who(t, Role::Teacher),
                &i,
                &[
                    (Action::OperateVm, vm("lab", 4003), Decision::Allow),
                    (Action::ManageClass, Target::Class("c1"), Decision::Allow),
                    (Action::ViewVm, vm("lab", 4002), Decision::NotFound),
                ],
            );
        }
        check(
            &who("stranger", Role::Teacher),
            &i,
            &[
                (Action::ViewVm, vm("lab", 4001), Decision::NotFound),
                (Action::ManageClass, Target::Class("c1"), Decision::NotFound),
            ],
        );
        // A student named as co-owner by mistake gets no teacher powers over VMs.
        check(
            &who("co", Role::Student),
            &i,
            &[(Action::ViewVm, vm("lab", 4003), Decision::NotFound)],
        );
    }

    #[test]
    fn admin_may_do_everything() {
        check(
            &who("root", Role::Admin),
            &idx(),
            &[
                (Action::Administer, Target::Site, Decision::Allow),
                (Action::OperateVm, vm("x", 1), Decision::Allow),
            ],
        );
    }
}
