//! A student VM that leaves its student is reset to the class base before anyone else can have it.
//!
//! [`Deployer::unassign`] takes the VM from the student and marks it as being reset
//! ([`ClassVm::reset_job`]) in one sled transaction over the assignments and the class VMs, then starts
//! a journaled `reset` job that re-makes the VM on the class's current base (fresh overlays or a fresh
//! linked clone, same VMID, name and MACs — the workflow's `create_vm`, as a re-make after a publish).
//! Joins and the waiting list skip a VM so marked; the re-made VM's record has the mark cleared, and
//! the waiting list's first users get the VMs a reset freed. A restart mid-reset resumes the job from
//! its journal; a mark whose job was never written starts a new reset at recovery.

use serde::de::DeserializeOwned;
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use store::{AssignmentRecord, JobRecord, JobState, StoreError, vm_key};

use crate::Deployer;
use crate::error::{DeployError, Result};
use crate::invites::JoinOutcome;
use crate::journal::Journal;
use crate::publish::vm_entry;
use crate::runner::KIND_RESET;
use crate::trees::{ClassVm, VmRole};

fn decode<T: DeserializeOwned>(
    what: &str,
    bytes: &[u8],
) -> std::result::Result<T, ConflictableTransactionError<String>> {
    serde_json::from_slice(bytes).map_err(|e| ConflictableTransactionError::Abort(format!("{what}: {e}")))
}

fn encode<T: serde::Serialize>(v: &T) -> std::result::Result<Vec<u8>, ConflictableTransactionError<String>> {
    serde_json::to_vec(v).map_err(|e| ConflictableTransactionError::Abort(e.to_string()))
}

fn tx_error(e: TransactionError<String>) -> DeployError {
    match e {
        TransactionError::Abort(m) => DeployError::Store(StoreError::Rejected(m)),
        TransactionError::Storage(e) => e.into(),
    }
}

impl Deployer {
    /// Takes class `id`'s VM away from `user` and starts its reset: the VM is re-made on the class's
    /// current base by a `reset` job before anyone else can get it (the student's disks, snapshots and
    /// settings are gone). The student loses access at once. Returns the freed VM (marked as being
    /// reset). Errors: [`DeployError::NotFound`] when `user` has no VM in the class;
    /// [`DeployError::Conflict`] while another job of the class works on that VM, or when the class has
    /// no plan to re-make it from.
    pub fn unassign(&self, id: &str, user: &str) -> Result<ClassVm> {
        let class = self.class(id)?;
        let mut found = None;
        for v in self.class_vms(id)? {
            if v.role != VmRole::Student || v.assignment_id.is_empty() {
                continue;
            }
            let a = self.inner.store.assignments.get(&v.assignment_id)?;
            if a.is_some_and(|a| a.user == user) {
                found = Some(v);
                break;
            }
        }
        let Some(vm) = found else {
            return Err(DeployError::not_found(format!("a VM of {user} in class {id}")));
        };
        if class.plan.is_none() || class.deploy_ctx.is_none() {
            return Err(DeployError::Conflict(format!(
                "class {id} has no plan to reset VM {} from",
                vm.vmid
            )));
        }
        if let Some(j) = self.jobs_of_class(id)?.into_iter().find(|j| {
            !crate::is_terminal(j.state)
                && j.steps
                    .iter()
                    .any(|s| s.vmid == Some(vm.vmid) && !crate::is_terminal(s.state))
        }) {
            return Err(DeployError::Conflict(format!(
                "job {} ({}) is working on VM {}; unassign when it has ended",
                j.id, j.kind, vm.vmid
            )));
        }
        let job_id = self.new_id("j")?;
        let aid = vm.assignment_id.clone();
        let vkey = vm_key(&vm.cluster, vm.vmid);
        let trees = (self.inner.store.assignments.raw(), &self.inner.vms.tree);
        let taken: std::result::Result<Option<ClassVm>, TransactionError<String>> =
            trees.transaction(|(at, vt)| {
                let Some(ab) = at.get(aid.as_bytes())? else {
                    return Ok(None);
                };
                let mut a: AssignmentRecord = decode("assignment", &ab)?;
                let Some(vb) = vt.get(vkey.as_bytes())? else {
                    return Ok(None);
                };
                let mut v: ClassVm = decode("class VM", &vb)?;
                if a.user != user {
                    return Ok(None);
                }
                a.user.clear();
                v.reset_job = Some(job_id.clone());
                at.insert(aid.as_bytes(), encode(&a)?)?;
                vt.insert(vkey.as_bytes(), encode(&v)?)?;
                Ok(Some(v))
            });
        let Some(vm) = taken.map_err(tx_error)? else {
            return Err(DeployError::not_found(format!("a VM of {user} in class {id}")));
        };
        tracing::info!(class = id, user, vmid = vm.vmid, job = %job_id, "VM unassigned; resetting it");
        self.start_reset_job(&class, &vm, &job_id)?;
        Ok(vm)
    }

    /// Starts the `reset` job `job_id` for `vm` (already marked with that job id): its reservation
    /// moves to the job, the job is on disk before it starts.
    fn start_reset_job(&self, class: &store::ClassRecord, vm: &ClassVm, job_id: &str) -> Result<JobRecord> {
        let (Some(plan), Some(ctx)) = (class.plan.clone(), class.deploy_ctx.clone()) else {
            return Err(DeployError::Conflict(format!("class {} has no plan", class.id)));
        };
        self.rebind_vmid(&vm.cluster, vm.vmid, job_id)?;
        self.start_vm_job(
            class,
            job_id,
            KIND_RESET,
            &class.owner,
            ctx,
            plan,
            vec![vm_entry(vm, "")],
        )
    }

    /// Ends the steps of a `reset` job whose VM is not (any more) marked for this job — re-made already
    /// before a restart, or never taken from its student (a restart between the job and the mark) — so
    /// the job never re-makes a VM somebody has.
    pub(crate) fn skip_resets_not_needed(&self, journal: &Journal) {
        let rec = journal.snapshot();
        for (i, s) in rec.steps.iter().enumerate() {
            let Some(vmid) = s.vmid else { continue };
            if crate::is_terminal(s.state) {
                continue;
            }
            let marked = self
                .inner
                .vms
                .get(&vm_key(&rec.cluster, vmid))
                .ok()
                .flatten()
                .is_some_and(|v| v.reset_job.as_deref() == Some(rec.id.as_str()));
            if !marked {
                journal.update_step(i, |s| {
                    s.state = JobState::Done;
                    s.detail = "nothing to reset: the VM is not waiting for this reset".into();
                });
            }
        }
    }

    /// After a `reset` job: the first users on the class's waiting list get the VMs that are free and
    /// clean now (through [`Deployer::assign`], which hands out no VM still marked).
    pub(crate) async fn after_reset(&self, journal: &Journal) {
        let Some(class_id) = journal.snapshot().class_id else {
            return;
        };
        loop {
            let Ok(class) = self.class(&class_id) else { return };
            let Some(first) = class.waiting.first().map(|w| w.user.clone()) else {
                break;
            };
            match self.assign(&class_id, &first) {
                Ok(JoinOutcome::Assigned { vm, .. }) => {
                    tracing::info!(class = %class_id, user = %first, vmid = vm.vmid, "waiting student got a reset VM");
                }
                Ok(JoinOutcome::AlreadyMember { .. }) | Err(DeployError::NotFound { .. }) => {
                    if self
                        .update_class(&class_id, |c| c.waiting.retain(|w| w.user != first))
                        .is_err()
                    {
                        return;
                    }
                }
                Err(DeployError::ClassFull { .. }) => break,
                Err(e) => {
                    tracing::warn!(class = %class_id, error = %e, "waiting list not served");
                    break;
                }
            }
        }
        if let Err(e) = self.flush().await {
            tracing::warn!(error = %e, "flush after serving the waiting list failed");
        }
    }

    /// Recovery: VMs marked for a reset whose job was never written (a restart between the mark and
    /// the job) get a new `reset` job. Returns the new job ids.
    pub(crate) fn restart_lost_resets(&self) -> Result<Vec<String>> {
        let mut started = Vec::new();
        for vm in self.inner.vms.values()? {
            let Some(job) = &vm.reset_job else { continue };
            if self.inner.store.jobs.get(job)?.is_some() {
                continue;
            }
            let Ok(class) = self.class(&vm.class_id) else {
                continue;
            };
            let job_id = self.new_id("j")?;
            self.inner.vms.update(&vm_key(&vm.cluster, vm.vmid), |v| {
                Ok(v.map(|mut v| {
                    v.reset_job = Some(job_id.clone());
                    v
                }))
            })?;
            let mut vm = vm.clone();
            vm.reset_job = Some(job_id.clone());
            self.start_reset_job(&class, &vm, &job_id)?;
            started.push(job_id);
        }
        Ok(started)
    }
}
