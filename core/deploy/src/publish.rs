//! Publish and revert: the teacher VM's disk becomes a NEW class base version (the workflow's
//! `plan(ctx)` in `publish` mode, with the teacher VM as the source); student VMs move to it on their
//! next revert (default) or at once. A VM "moves" by being re-made (same VMID, name, MACs and user) on
//! the current base — never by `qemu-img rebase -u` onto different content. Old bases are deleted only
//! when no VM uses them any more (checked in Proxlab's records and in the overlays' backing files).

use std::collections::HashSet;
use std::sync::Arc;

use pve::GuestKind;
use script::ScriptSet;
use serde::Serialize;
use serde_json::{Value, json};
use store::{ClassBase, JobRecord, JobState, JobStep, vm_key};

use crate::Deployer;
use crate::error::{DeployError, Result};
use crate::journal::Journal;
use crate::runner::{KIND_MOVE, KIND_PUBLISH, KIND_RESET, reason};
use crate::trees::{ClassVm, VmRole};

/// When student VMs move to a newly published base.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PublishMode {
    /// On each student's next revert; running work is kept until then (default).
    #[default]
    OnNextRevert,
    /// Right away: every student VM is re-made on the new base — students' changes are lost.
    Now,
}

/// What a revert did.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RevertOutcome {
    /// Rolled back to the `baseline` snapshot.
    RolledBack {
        /// The snapshot name.
        snapshot: String,
    },
    /// Re-made on the class's newer base (its disks now come from version `to`).
    Moved {
        /// Base version before.
        from: u32,
        /// Base version now.
        to: u32,
        /// The move job.
        job_id: String,
    },
}

pub(crate) fn vm_entry(v: &ClassVm, user: &str) -> Value {
    json!({
        "name": v.name, "vmid": v.vmid, "role": v.role.as_str(), "user": user, "slot": v.slot,
        "node": v.node, "macs": v.macs,
    })
}

impl Deployer {
    /// Publishes the teacher VM of class `id` as a new base version. The teacher VM must be stopped
    /// (its disk is read while flattening). With [`PublishMode::Now`], `confirm_data_loss` must be true:
    /// every student VM is re-made on the new base and the students' changes are lost.
    /// Returns the `publish` job. Errors: [`DeployError::ConfirmationRequired`], [`DeployError::Conflict`]
    /// (teacher VM running, another job running, class not deployed), [`DeployError::NotFound`].
    pub async fn publish(
        &self,
        id: &str,
        actor: &str,
        mode: PublishMode,
        confirm_data_loss: bool,
    ) -> Result<JobRecord> {
        let class = self.class(id)?;
        if mode == PublishMode::Now && !confirm_data_loss {
            return Err(DeployError::ConfirmationRequired(
                "publishing now re-makes every student VM on the new base: the students' changes are lost; \
                 confirm, or publish for their next revert"
                    .into(),
            ));
        }
        let (Some(plan), Some(mut ctx)) = (class.plan.clone(), class.deploy_ctx.clone()) else {
            return Err(DeployError::Conflict(format!(
                "class {id} has not been deployed yet"
            )));
        };
        self.refuse_while_a_job_runs(id)?;
        let teacher = self
            .class_vms(id)?
            .into_iter()
            .find(|v| v.role == VmRole::Teacher)
            .ok_or_else(|| DeployError::not_found(format!("teacher VM of class {id}")))?;
        let client = self.pve(&class.cluster)?;
        let status = client
            .guest_status(&teacher.node, GuestKind::Qemu, teacher.vmid)
            .await?;
        if status.status != "stopped" {
            return Err(DeployError::Conflict(format!(
                "the teacher VM {} is {}; shut it down before publishing (its disk is copied)",
                teacher.vmid, status.status
            )));
        }
        let cfg = client
            .guest_config(&teacher.node, GuestKind::Qemu, teacher.vmid)
            .await?;
        let tpl = crate::templates::template_from_config(
            &class.cluster,
            &teacher.node,
            teacher.vmid,
            &cfg,
            self.now(),
        );
        let storages = client.storages().await?;
        let tctx = self.template_ctx_pub(&class.cluster, &tpl, &cfg, &storages)?;
        let version = class.bases.last().map(|b| b.version).unwrap_or(1) + 1;
        ctx["template"] = tctx["template"].clone();
        ctx["options"]["mode"] = json!("publish");
        ctx["options"]["base_version"] = json!(version);

        let job_id = self.new_id("j")?;
        ctx["job"] = json!({"id": job_id});
        let now = self.now();
        let params = json!({"workflow": class.workflow, "ctx": ctx, "mode": mode, "base_version": version, "old_plan": plan});
        let journal = self.journal_new_job(crate::classes::class_job(
            &class,
            KIND_PUBLISH,
            &job_id,
            actor,
            now,
            params,
        ))?;
        let storage = class.storage.clone().unwrap_or_default();
        let vmids = self
            .reserve_vmids(
                &class.cluster,
                1,
                &job_id,
                Some(id),
                Some((&teacher.node, &storage)),
            )
            .await;
        let vmids = match vmids {
            Ok(v) => v,
            Err(e) => {
                journal.set_state(JobState::Failed, Some(e.to_string()));
                return Err(e);
            }
        };
        journal.set_params(|p| p["ctx"]["vmids"] = json!(vmids));
        journal.add_steps(vec![JobStep {
            name: format!("base v{version}"),
            cluster: class.cluster.clone(),
            vmid: vmids.first().copied(),
            role: "base".into(),
            detail: "queued".into(),
            ..JobStep::default()
        }]);
        self.update_class(id, |c| c.last_job = Some(job_id.clone()))?;
        // The job with its VMID and step is on disk before it is answered: a crash from here resumes it.
        self.flush().await?;
        let rec = journal.snapshot();
        self.spawn_job(journal, self.scripts());
        Ok(rec)
    }

    fn template_ctx_pub(
        &self,
        cluster: &str,
        tpl: &store::TemplateRecord,
        cfg: &pve::GuestConfig,
        storages: &[pve::StorageInfo],
    ) -> Result<Value> {
        // Same shape as a deploy's ctx.template, with the teacher VM as the source.
        let mut v = self.template_ctx_for(cluster, tpl, cfg, storages)?;
        v["template"]["is_template"] = json!(false);
        Ok(v)
    }

    /// `publish` jobs: make the new base (plan in publish mode), record it as the class's current base,
    /// then (mode `now`) re-make every student VM on it; finally delete bases nobody uses.
    pub(crate) async fn run_publish(&self, journal: &Arc<Journal>, set: &Arc<ScriptSet>) -> Result<()> {
        journal.set_state(JobState::Running, None);
        let params = journal.params();
        let rec = journal.snapshot();
        let class_id = rec.class_id.clone().unwrap_or_default();
        let version = params["base_version"]
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(2);
        let class = self.class(&class_id)?;
        let already = class.bases.iter().any(|b| b.version == version);
        if !already {
            let workflow = params["workflow"].as_str().unwrap_or("qcow2-overlay").to_string();
            journal.update_step(0, |s| {
                s.state = JobState::Running;
                s.attempts += 1;
                s.detail = format!("{workflow}: making base v{version} from the teacher VM");
            });
            if journal.step(0).is_some_and(|s| s.attempts > 1) || params["resumed"] == json!(true) {
                self.cleanup_job_vmids(journal, &params, true).await?;
            }
            let made = self
                .call_workflow(set, &workflow, "plan", vec![params["ctx"].clone()], journal)
                .await
                .and_then(|p| self.accept_base(journal, &params, p, version));
            if made.is_ok()
                && let Err(e) = self.protect_class_base(journal).await
            {
                // The new base is recorded as current already: keep it, say so.
                tracing::warn!(error = %e, "the new class base could not be protected on PVE");
            }
            if let Err(e) = made {
                let why = reason(&e);
                journal.update_step(0, |s| {
                    s.state = JobState::Failed;
                    s.error = Some(why.clone());
                    s.detail = "failed".into();
                });
                if let Err(ce) = self.cleanup_job_vmids(journal, &params, true).await {
                    tracing::error!(error = %ce, "cleanup after a failed publish failed; recovery will retry");
                }
                journal.set_state(JobState::Failed, Some(format!("publish failed: {why}")));
                return Ok(());
            }
            journal.update_step(0, |s| {
                s.state = JobState::Done;
                s.detail = format!("base v{version} is current");
            });
        }
        if params["mode"] == json!("now") {
            // A move job started before a restart is resumed by recovery on its own: wait for it rather
            // than start a second job over the same VMs (two jobs re-making one VM collide).
            for j in self.jobs_of_class(&class_id)? {
                if (j.kind == KIND_MOVE || j.kind == KIND_RESET) && !crate::is_terminal(j.state) {
                    self.wait_job(&j.id, self.inner.cfg.limits.task_timeout.saturating_mul(4))
                        .await?;
                }
            }
            let class = self.class(&class_id)?;
            let mut entries = Vec::new();
            for v in self.class_vms(&class_id)? {
                if v.role == VmRole::Student && v.base_version < version {
                    let user = self.assignment_user(&v)?;
                    entries.push(vm_entry(&v, &user));
                }
            }
            if !entries.is_empty() {
                let job_id = self.new_id("j")?;
                let (Some(plan), Some(ctx)) = (class.plan.clone(), class.deploy_ctx.clone()) else {
                    return Err(DeployError::Conflict("class has no plan".into()));
                };
                for e in &entries {
                    if let Some(v) = e["vmid"].as_u64().and_then(|v| u32::try_from(v).ok()) {
                        self.rebind_vmid(&class.cluster, v, &job_id)?;
                    }
                }
                let mv = self.start_vm_job(&class, &job_id, KIND_MOVE, &rec.owner, ctx, plan, entries)?;
                journal.set_params(|p| p["move_job"] = json!(mv.id));
                let done = self
                    .wait_job(&mv.id, self.inner.cfg.limits.task_timeout.saturating_mul(4))
                    .await?;
                if let Some(err) = done.error {
                    journal.set_state(
                        JobState::Done,
                        Some(format!("base v{version} published; moving students: {err}")),
                    );
                    return Ok(());
                }
            }
        }
        if let Err(e) = self.gc_bases(&class_id).await {
            tracing::warn!(class = %class_id, error = %e, "old bases not removed yet");
        }
        journal.set_state(JobState::Done, None);
        Ok(())
    }

    /// Records the base a publish-mode plan made as the class's newest version.
    fn accept_base(&self, journal: &Arc<Journal>, params: &Value, plan: Value, version: u32) -> Result<()> {
        let rec = journal.snapshot();
        let class_id = rec.class_id.clone().unwrap_or_default();
        let reserved: HashSet<u32> = params["ctx"]["vmids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_u64().and_then(|v| u32::try_from(v).ok()))
            .collect();
        let base = plan["base"].clone();
        let vmid = base["vmid"]
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .filter(|v| reserved.contains(v))
            .ok_or_else(|| {
                DeployError::Invalid(format!(
                    "plan(ctx) in publish mode returned base {base}, not a reserved VMID"
                ))
            })?;
        let node = base["node"].as_str().unwrap_or_default().to_string();
        let name = store::vm_name_from(base["name"].as_str().unwrap_or_default(), vmid);
        self.record_base_vm(&rec, &class_id, vmid, &node, &name, version)?;
        let now = self.now();
        self.update_class(&class_id, |c| {
            c.bases.push(ClassBase {
                version,
                vmid,
                node: node.clone(),
                owned: true,
                detail: base.clone(),
                created_at: now,
                deleted_at: None,
            });
            if let Some(p) = c.plan.as_mut() {
                p["base"] = base.clone();
                if plan["vm_config"].is_object() {
                    p["vm_config"] = plan["vm_config"].clone();
                }
            }
            if let Some(ctx) = c.deploy_ctx.as_mut() {
                ctx["options"]["base_version"] = json!(version);
            }
        })?;
        tracing::info!(class = %class_id, version, vmid, "new class base published");
        Ok(())
    }

    fn assignment_user(&self, v: &ClassVm) -> Result<String> {
        Ok(self
            .inner
            .store
            .assignments
            .get(&v.assignment_id)?
            .map(|a| a.user)
            .unwrap_or_default())
    }

    /// Reverts a class VM: rolls it back to its `baseline` snapshot, or — when the class has a newer
    /// base than the VM's disks — re-makes it on the current base (same VMID, name, MACs and user; the
    /// student's changes are lost either way). Waits for the work to end.
    /// Errors: [`DeployError::NotFound`] when Proxlab did not make the VM for a class (the caller then
    /// uses the assignment's baseline snapshot itself); [`DeployError::Pve`]; [`DeployError::Conflict`].
    pub async fn revert(&self, cluster: &str, vmid: u32, actor: &str) -> Result<RevertOutcome> {
        let vm = self
            .inner
            .vms
            .get(&vm_key(cluster, vmid))?
            .ok_or_else(|| DeployError::not_found(format!("class VM {cluster}/{vmid}")))?;
        if vm.role == VmRole::Base {
            return Err(DeployError::Invalid("a class base cannot be reverted".into()));
        }
        let class = self.class(&vm.class_id)?;
        let current = class.bases.last().map(|b| b.version).unwrap_or(1);
        if vm.base_version < current {
            let (Some(plan), Some(ctx)) = (class.plan.clone(), class.deploy_ctx.clone()) else {
                return Err(DeployError::Conflict("class has no plan".into()));
            };
            let job_id = self.new_id("j")?;
            self.rebind_vmid(cluster, vmid, &job_id)?;
            let user = self.assignment_user(&vm)?;
            let job = self.start_vm_job(
                &class,
                &job_id,
                KIND_MOVE,
                actor,
                ctx,
                plan,
                vec![vm_entry(&vm, &user)],
            )?;
            let done = self
                .wait_job(&job.id, self.inner.cfg.limits.task_timeout.saturating_mul(2))
                .await?;
            if let Some(s) = done.steps.first()
                && s.state == JobState::Failed
            {
                return Err(DeployError::Conflict(format!(
                    "re-making VM {vmid} on base v{current} failed: {}",
                    s.error.clone().unwrap_or_default()
                )));
            }
            if let Err(e) = self.gc_bases(&class.id).await {
                tracing::warn!(class = %class.id, error = %e, "old bases not removed yet");
            }
            return Ok(RevertOutcome::Moved {
                from: vm.base_version,
                to: current,
                job_id: job.id,
            });
        }
        let snapshot = vm.baseline.clone().unwrap_or_else(|| "baseline".into());
        let client = self.pve(cluster)?;
        let upid = client
            .snapshot_rollback(&vm.node, GuestKind::Qemu, vmid, &snapshot)
            .await?;
        client
            .wait_task(&upid, self.inner.cfg.limits.task_timeout)
            .await?;
        Ok(RevertOutcome::RolledBack { snapshot })
    }

    /// Deletes old bases of a class that no VM uses any more: no class VM record names their version,
    /// and no overlay of the class has one of their images as its backing file (`qemu-img info`).
    /// Returns the versions deleted.
    pub async fn gc_bases(&self, class_id: &str) -> Result<Vec<u32>> {
        let class = self.class(class_id)?;
        let Some(current) = class.bases.last().map(|b| b.version) else {
            return Ok(Vec::new());
        };
        let vms = self.class_vms(class_id)?;
        let mut deleted = Vec::new();
        for b in class
            .bases
            .iter()
            .filter(|b| b.version < current && b.owned && b.deleted_at.is_none())
        {
            if vms
                .iter()
                .any(|v| v.role != VmRole::Base && v.base_version == b.version)
            {
                continue;
            }
            let paths: HashSet<String> = b.detail["disks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["path"].as_str().map(String::from))
                .collect();
            if !paths.is_empty() && self.overlay_uses(&vms, &paths).await? {
                tracing::warn!(
                    class = class_id,
                    version = b.version,
                    "an overlay still backs onto the old base; keeping it"
                );
                continue;
            }
            let storages: Vec<String> = class.storage.iter().cloned().collect();
            let name = vms.iter().find(|v| v.vmid == b.vmid).map(|v| v.name.clone());
            self.cleanup_vmid(&class.cluster, b.vmid, &b.node, &storages, name.as_deref())
                .await?;
            self.forget_vm(&class.cluster, b.vmid)?;
            let now = self.now();
            let version = b.version;
            self.update_class(class_id, |c| {
                if let Some(x) = c.bases.iter_mut().find(|x| x.version == version) {
                    x.deleted_at = Some(now);
                }
            })?;
            tracing::info!(class = class_id, version, vmid = b.vmid, "old class base deleted");
            deleted.push(b.version);
        }
        Ok(deleted)
    }

    /// True if an overlay of `vms` has one of `paths` as its backing file (per `qemu-img info`).
    async fn overlay_uses(&self, vms: &[ClassVm], paths: &HashSet<String>) -> Result<bool> {
        let Some(ops) = self.inner.host.qcow2() else {
            return Ok(false);
        };
        for v in vms.iter().filter(|v| v.role != VmRole::Base) {
            for d in &v.disks {
                let Some(p) = &d.path else { continue };
                let info = match ops.info(&v.cluster, &v.node, p, "qcow2").await {
                    Ok(i) => i,
                    Err(e) if e.code == "qcow2.not_found" => continue,
                    Err(e) => return Err(e.into()),
                };
                let backing = info["full-backing-filename"]
                    .as_str()
                    .or(info["backing-filename"].as_str());
                if backing.is_some_and(|b| paths.contains(b)) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}
