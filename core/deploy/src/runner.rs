//! The job runner: runs a workflow's `plan(ctx)` once and `create_vm(ctx, vm)` for every VM in parallel
//! (bounded per node, per storage and in all), journaling each step before and after it runs, retrying
//! transient failures (lock timeouts of parallel clones) with jittered backoff, and recording what was made.
//!
//! Job kinds: `deploy` (a new class: plan + VMs), `add-vms` (more student VMs, or a retry of failed
//! ones), `move` (re-make VMs on the class's current base), `reset` (re-make a VM that left its
//! student, before anyone else gets it), `publish` (see [`crate::publish`]), `delete-class` (remove
//! VMs, and the class).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use futures::future::join_all;
use pve::GuestKind;
use script::{CallOptions, ScriptError, ScriptSet};
use serde_json::{Value, json};
use store::{AssignmentRecord, AssignmentRole, ClassBase, JobRecord, JobState, JobStep, vm_key};
use tracing::Instrument;

use crate::Deployer;
use crate::error::{DeployError, Result};
use crate::journal::{Journal, ScriptSink};
use crate::limits::{Permits, backoff};
use crate::trees::{ClassVm, VmDisk, VmRole};

pub(crate) const KIND_DEPLOY: &str = "deploy";
pub(crate) const KIND_ADD: &str = "add-vms";
pub(crate) const KIND_MOVE: &str = "move";
pub(crate) const KIND_PUBLISH: &str = "publish";
pub(crate) const KIND_DELETE: &str = "delete-class";
/// Re-makes a student VM that left its student on the class's current base (see [`crate::reset`]).
pub(crate) const KIND_RESET: &str = "reset";

/// Script error codes worth another attempt (after cleaning up the attempt's leftovers).
const RETRYABLE_CODES: &[&str] = &[
    "pve.lock_timeout",
    "pve.timeout",
    "pve.connect",
    "pve.node_unreachable",
    "pve.no_quorum",
    "ssh.unreachable",
    "ssh.timeout",
];

/// True if a failed step may succeed when tried again.
pub(crate) fn retryable(e: &DeployError) -> bool {
    match e {
        DeployError::Script(ScriptError::Thrown { code, .. }) => RETRYABLE_CODES.contains(&code.as_str()),
        DeployError::Pve(p) => p.is_retryable(),
        DeployError::Op(ops::OpError::Pve(p)) => p.is_retryable(),
        DeployError::Host(h) => RETRYABLE_CODES.contains(&h.code.as_str()),
        _ => false,
    }
}

/// A short, user-facing reason of an error (PVE's or the script's message).
pub(crate) fn reason(e: &DeployError) -> String {
    match e {
        DeployError::Script(ScriptError::Thrown { code, message, .. }) => format!("{code}: {message}"),
        other => other.to_string(),
    }
}

fn u32_of(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

fn str_of(v: &Value) -> Option<String> {
    v.as_str().map(String::from)
}

impl Deployer {
    /// Runs a job in the background with script set `set` (a job keeps the set it started with).
    pub(crate) fn spawn_job(&self, journal: Arc<Journal>, set: Arc<ScriptSet>) {
        let rec = journal.snapshot();
        {
            let mut running = self.inner.running.lock().unwrap_or_else(|p| p.into_inner());
            running.insert(rec.id.clone(), journal.clone());
        }
        let this = self.clone();
        let span = tracing::info_span!("job", id = %rec.id, kind = %rec.kind, class = rec.class_id.as_deref().unwrap_or(""), cluster = %rec.cluster);
        tokio::spawn(
            async move {
                let r = match rec.kind.as_str() {
                    KIND_DEPLOY | KIND_ADD | KIND_MOVE | KIND_RESET => {
                        this.run_create_job(&journal, &set).await
                    }
                    KIND_PUBLISH => this.run_publish(&journal, &set).await,
                    KIND_DELETE => this.run_delete(&journal).await,
                    other => Err(DeployError::Invalid(format!("unknown job kind {other}"))),
                };
                if let Err(e) = r {
                    tracing::error!(error = %e, "job failed");
                    journal.set_state(JobState::Failed, Some(reason(&e)));
                }
                let mut running = this.inner.running.lock().unwrap_or_else(|p| p.into_inner());
                running.remove(&rec.id);
            }
            .instrument(span),
        );
    }

    /// Whether job `id` runs in this process.
    pub(crate) fn is_running(&self, id: &str) -> bool {
        self.inner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
    }

    /// Calls `entry` of workflow `workflow` with the job's sink for `job::` reports.
    pub(crate) async fn call_workflow(
        &self,
        set: &Arc<ScriptSet>,
        workflow: &str,
        entry: &str,
        args: Vec<Value>,
        journal: &Arc<Journal>,
    ) -> Result<Value> {
        let script = set.deploy(workflow).cloned().ok_or_else(|| {
            DeployError::Script(ScriptError::NoSuchScript {
                name: format!("deploy/{workflow}.rhai"),
            })
        })?;
        let opts = CallOptions {
            dry_run: false,
            job: Some(Arc::new(ScriptSink(journal.clone()))),
            cancel: None,
        };
        Ok(self
            .inner
            .runtime
            .call(set, script, entry, args, opts)
            .await?
            .value)
    }

    /// `deploy`, `add-vms` and `move` jobs: the plan step (deploy only, when not done yet), then every
    /// VM step that has not ended.
    async fn run_create_job(&self, journal: &Arc<Journal>, set: &Arc<ScriptSet>) -> Result<()> {
        journal.set_state(JobState::Running, None);
        let params = journal.params();
        if params["plan"].is_null() && !self.run_plan_step(journal, set).await? {
            return Ok(());
        }
        self.run_vm_steps(journal, set).await;
        if journal.snapshot().kind == KIND_RESET {
            // Before the job ends: whoever waits for it sees the waiting list served.
            self.after_reset(journal).await;
        }
        self.finish_create_job(journal)
    }

    /// Runs `plan(ctx)`, checks and records its result, adds a step per VM. Returns false when the
    /// plan failed (everything it may have made is removed, the job and class are marked failed).
    async fn run_plan_step(&self, journal: &Arc<Journal>, set: &Arc<ScriptSet>) -> Result<bool> {
        let params = journal.params();
        let workflow = params["workflow"].as_str().unwrap_or("qcow2-overlay").to_string();
        let idx = match journal.snapshot().steps.iter().position(|s| s.role == "plan") {
            Some(i) => i,
            None => journal.add_steps(vec![JobStep {
                name: "plan".into(),
                cluster: journal.snapshot().cluster,
                role: "plan".into(),
                detail: "queued".into(),
                ..JobStep::default()
            }]),
        };
        let resumed = journal.step(idx).is_some_and(|s| s.attempts > 0) || params["resumed"] == json!(true);
        if resumed {
            // A plan interrupted by a crash may have made a base: remove what was made, start over.
            journal.update_step(idx, |s| s.detail = "cleaning up an interrupted plan".into());
            self.cleanup_job_vmids(journal, &params, true).await?;
        }
        journal.update_step(idx, |s| {
            s.state = JobState::Running;
            s.attempts += 1;
            s.detail = format!("{workflow}: plan(ctx)");
        });
        let params = match self.swap_taken_plan_vmids(journal).await {
            Ok(()) => journal.params(),
            Err(e) => {
                tracing::warn!(error = %e, "could not check the reserved VMIDs before the plan");
                params
            }
        };
        let result = self
            .call_workflow(set, &workflow, "plan", vec![params["ctx"].clone()], journal)
            .await;
        let mut notes: Vec<String> = Vec::new();
        let accepted = match result {
            Ok(plan) => {
                notes = plan["notes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n.as_str().map(String::from))
                    .collect();
                self.accept_plan(journal, &params, plan)
            }
            Err(e) => Err(e),
        };
        let accepted = match accepted {
            Ok(n) => self.protect_class_base(journal).await.map(|()| n),
            Err(e) => Err(e),
        };
        match accepted {
            Ok(n) => {
                journal.update_step(idx, |s| {
                    s.state = JobState::Done;
                    s.detail = std::iter::once(format!("{n} VMs planned"))
                        .chain(notes.iter().cloned())
                        .collect::<Vec<_>>()
                        .join("; ");
                });
                // The plan and the base are on disk before any VM is made: a crash from here resumes.
                self.flush().await?;
                Ok(true)
            }
            Err(e) => {
                let why = reason(&e);
                tracing::warn!(error = %why, "plan failed; removing what it made");
                journal.update_step(idx, |s| {
                    s.state = JobState::Failed;
                    s.error = Some(why.clone());
                    s.detail = "failed".into();
                });
                if let Err(ce) = self.cleanup_job_vmids(journal, &params, true).await {
                    tracing::error!(error = %ce, "cleanup after a failed plan failed; recovery will retry");
                }
                if let Some(c) = journal.snapshot().class_id {
                    self.set_class_state(&c, "failed")?;
                }
                journal.set_state(JobState::Failed, Some(format!("plan failed: {why}")));
                Ok(false)
            }
        }
    }

    /// Removes whatever the job made under its reserved VMIDs and releases them. VMIDs with a class VM
    /// record are kept unless `include_recorded` (an interrupted plan or publish: its records are undone).
    pub(crate) async fn cleanup_job_vmids(
        &self,
        journal: &Arc<Journal>,
        params: &Value,
        include_recorded: bool,
    ) -> Result<()> {
        let rec = journal.snapshot();
        let storage = params["ctx"]["storage"]["id"].as_str().map(String::from);
        let node = params["ctx"]["node"].as_str().unwrap_or_default().to_string();
        for r in self.reservations(Some(&rec.cluster))? {
            if r.job_id != rec.id {
                continue;
            }
            let recorded = self.inner.vms.get(&vm_key(&r.cluster, r.vmid))?;
            if recorded.is_some() && !include_recorded {
                continue;
            }
            let storages: Vec<String> = storage.iter().cloned().collect();
            let name = recorded.as_ref().map(|v| v.name.clone());
            match self
                .cleanup_vmid(&r.cluster, r.vmid, &node, &storages, name.as_deref())
                .await
            {
                Ok(()) | Err(DeployError::NotOurs { .. }) => self.forget_vm(&r.cluster, r.vmid)?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Checks `plan`'s result against the reservation, gives every VM a name that passes PVE's DNS-name
    /// check, records the class base and the plan, adds the VM steps. Returns the number of VMs.
    fn accept_plan(&self, journal: &Arc<Journal>, params: &Value, mut plan: Value) -> Result<usize> {
        let rec = journal.snapshot();
        let ctx = &params["ctx"];
        let reserved: HashSet<u32> = ctx["vmids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(u32_of)
            .collect();
        let bad = |m: String| DeployError::Invalid(format!("plan(ctx) returned {m}"));
        if !plan.is_object() {
            return Err(bad(format!("{plan} instead of a map")));
        }
        let default_node = plan["node"]
            .as_str()
            .or(ctx["node"].as_str())
            .unwrap_or_default()
            .to_string();
        let base = plan["base"].clone();
        let base_vmid = u32_of(&base["vmid"]).ok_or_else(|| bad("no base.vmid".into()))?;
        let mut seen = HashSet::new();
        let mut entries = Vec::new();
        for v in plan["vms"].as_array().cloned().unwrap_or_default() {
            let vmid = u32_of(&v["vmid"]).ok_or_else(|| bad(format!("a VM without a vmid: {v}")))?;
            if !reserved.contains(&vmid) || vmid == base_vmid || !seen.insert(vmid) {
                return Err(bad(format!(
                    "VMID {vmid}, which is not one of the VMIDs reserved for it (or used twice)"
                )));
            }
            let role = v["role"]
                .as_str()
                .and_then(VmRole::parse)
                .filter(|r| *r != VmRole::Base);
            let role =
                role.ok_or_else(|| bad(format!("VM {vmid} with role {} (teacher or student)", v["role"])))?;
            let raw_name = v["name"].as_str().unwrap_or_default();
            let name = store::vm_name_from(raw_name, vmid);
            let mut e = v.clone();
            e["name"] = json!(name);
            e["display_name"] = json!(raw_name);
            e["role"] = json!(role.as_str());
            if !e["node"].is_string() {
                e["node"] = json!(default_node);
            }
            if role == VmRole::Teacher {
                e["user"] = ctx["class"]["owner"].clone();
            }
            entries.push(e);
        }
        if entries.is_empty() {
            return Err(bad("no VMs".into()));
        }
        plan["vms"] = Value::Array(entries.clone());
        let owned = reserved.contains(&base_vmid);
        let class_id = rec.class_id.clone().unwrap_or_default();
        let base_node = base["node"].as_str().unwrap_or(&default_node).to_string();
        let base_name = store::vm_name_from(base["name"].as_str().unwrap_or_default(), base_vmid);
        if owned {
            self.record_base_vm(&rec, &class_id, base_vmid, &base_node, &base_name, 1)?;
        }
        let now = self.now();
        self.update_class(&class_id, |c| {
            c.bases = vec![ClassBase {
                version: 1,
                vmid: base_vmid,
                node: base_node.clone(),
                owned,
                detail: base.clone(),
                created_at: now,
                deleted_at: None,
            }];
            c.plan = Some(plan.clone());
        })?;
        // VMIDs the plan did not use go back.
        let used: HashSet<u32> = seen.iter().copied().chain(std::iter::once(base_vmid)).collect();
        for v in reserved.difference(&used) {
            self.release_vmid(&rec.cluster, *v)?;
        }
        let steps: Vec<JobStep> = entries.iter().map(|e| vm_step(&rec.cluster, e)).collect();
        let n = steps.len();
        journal.set_params(|p| {
            p["plan"] = plan.clone();
            p["vms"] = Value::Array(entries.clone());
        });
        journal.add_steps(steps);
        Ok(n)
    }

    /// Records a base VM Proxlab made (class VM record + an assignment with role base).
    pub(crate) fn record_base_vm(
        &self,
        rec: &JobRecord,
        class_id: &str,
        vmid: u32,
        node: &str,
        name: &str,
        version: u32,
    ) -> Result<()> {
        // The id follows from the job and the VMID, so a step resumed after a crash between storing
        // the assignment and the VM record writes the same assignment again instead of a second one.
        let assignment = AssignmentRecord {
            id: job_assignment_id(&rec.id, vmid),
            cluster: rec.cluster.clone(),
            vmid,
            user: String::new(),
            class_id: Some(class_id.to_string()),
            role: AssignmentRole::Base,
            baseline_snapshot: None,
            created_at: self.now(),
        };
        self.inner.store.assignments.insert(&assignment.id, &assignment)?;
        let assignment_id = assignment.id;
        let vm = ClassVm {
            cluster: rec.cluster.clone(),
            vmid,
            class_id: class_id.to_string(),
            role: VmRole::Base,
            name: name.to_string(),
            node: node.to_string(),
            slot: 0,
            base_version: version,
            disks: Vec::new(),
            baseline: None,
            macs: BTreeMap::new(),
            assignment_id,
            job_id: rec.id.clone(),
            created_at: self.now(),
            reset_job: None,
        };
        self.inner.vms.insert(&vm_key(&rec.cluster, vmid), &vm)?;
        Ok(())
    }

    /// Runs every VM step of the job that has not ended, in parallel within the limits.
    async fn run_vm_steps(&self, journal: &Arc<Journal>, set: &Arc<ScriptSet>) {
        let params = journal.params();
        let mut ctx = params["ctx"].clone();
        ctx["plan"] = params["plan"].clone();
        ctx["options"]["base_version"] = params["base_version"].clone();
        let ctx = Arc::new(ctx);
        let entries: BTreeMap<u32, Value> = params["vms"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| u32_of(&e["vmid"]).map(|v| (v, e.clone())))
            .collect();
        if journal.snapshot().kind == KIND_RESET {
            self.skip_resets_not_needed(journal);
        }
        let rec = journal.snapshot();
        let remake = rec.kind == KIND_MOVE || rec.kind == KIND_RESET;
        let todo: Vec<(usize, Value)> = rec
            .steps
            .iter()
            .enumerate()
            .filter(|(_, s)| s.role != "plan" && matches!(s.state, JobState::Pending | JobState::Running))
            .filter_map(|(i, s)| s.vmid.and_then(|v| entries.get(&v)).map(|e| (i, e.clone())))
            .collect();
        join_all(
            todo.into_iter()
                .map(|(i, e)| self.create_step(journal, set, ctx.clone(), e, i, remake)),
        )
        .await;
    }

    /// One VM: wait for a slot, (clean up a previous attempt,) `create_vm`, record; retry transient
    /// failures with backoff; a final failure is cleaned up and reported on the step.
    async fn create_step(
        &self,
        journal: &Arc<Journal>,
        set: &Arc<ScriptSet>,
        ctx: Arc<Value>,
        mut entry: Value,
        idx: usize,
        remake: bool,
    ) {
        let (cluster, reset) = {
            let rec = journal.snapshot();
            (rec.cluster, rec.kind == KIND_RESET)
        };
        let workflow = journal.params()["workflow"]
            .as_str()
            .unwrap_or("qcow2-overlay")
            .to_string();
        let mut vmid = u32_of(&entry["vmid"]).unwrap_or_default();
        let node = entry["node"].as_str().unwrap_or_default().to_string();
        let name = entry["name"].as_str().unwrap_or_default().to_string();
        let storage = ctx["storage"]["id"].as_str().map(String::from);
        let storages: Vec<String> = storage.iter().cloned().collect();
        let limits = self.inner.cfg.limits.clone();
        let step = journal.step(idx).unwrap_or_default();
        let resumed = journal.params()["resumed"] == json!(true);
        let retry = entry["retry"] == json!(true);
        let mut need_cleanup =
            remake || resumed || retry || step.attempts > 0 || step.state == JobState::Running;
        loop {
            journal.update_step(idx, |s| {
                s.state = JobState::Pending;
                if !s.detail.starts_with("retrying") {
                    s.detail = "queued".into();
                }
            });
            let detail = if reset {
                "resetting to the class base"
            } else if remake {
                "re-making on the current base"
            } else {
                "creating"
            };
            let permits = self
                .start_step(journal, idx, (&cluster, &node), storage.as_deref(), detail)
                .await;
            let attempt = journal.step(idx).map(|s| s.attempts).unwrap_or(1);
            let mut result = Ok(());
            if need_cleanup {
                result = self
                    .cleanup_vmid(&cluster, vmid, &node, &storages, Some(&name))
                    .await;
            } else if !remake && self.held_by_other(&cluster, vmid, &name).await.unwrap_or(false) {
                // Taken behind Proxlab's back since it was reserved (an admin in PVE's UI).
                result = Err(DeployError::NotOurs {
                    cluster: cluster.clone(),
                    vmid,
                });
            }
            need_cleanup = true;
            let mut result = match result {
                Ok(()) => match self
                    .call_workflow(
                        set,
                        &workflow,
                        "create_vm",
                        vec![(*ctx).clone(), entry.clone()],
                        journal,
                    )
                    .await
                {
                    Ok(v) => self.record_vm(journal, &ctx, &entry, &v).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            drop(permits);
            // A VM Proxlab did not create holds the VMID now (PVE answered "already exists", or the
            // check before the create saw it): a new VM takes a freshly reserved VMID instead; the
            // other VM is never touched and its VMID never tried again.
            if let Err(e) = &result
                && !remake
                && attempt < limits.max_attempts
                && (matches!(e, DeployError::NotOurs { .. }) || reason(e).contains("already exists"))
                && self.held_by_other(&cluster, vmid, &name).await.unwrap_or(false)
            {
                match self.move_to_new_vmid(journal, idx, vmid).await {
                    Ok(new) => {
                        vmid = new;
                        entry["vmid"] = json!(new);
                        need_cleanup = false;
                        continue;
                    }
                    Err(e) => result = Err(e),
                }
            }
            match result {
                Ok(vm) => {
                    journal.update_step(idx, |s| {
                        s.state = JobState::Done;
                        s.error = None;
                        s.detail = "ready".into();
                        s.result = serde_json::to_value(&vm).ok();
                    });
                    return;
                }
                Err(e) if retryable(&e) && attempt < limits.max_attempts => {
                    let delay = backoff(attempt, limits.backoff_base, limits.backoff_max);
                    let why = reason(&e);
                    tracing::info!(vmid, attempt, delay_ms = delay.as_millis() as u64, error = %why, "retrying");
                    journal.update_step(idx, |s| {
                        s.state = JobState::Pending;
                        s.error = Some(why.clone());
                        s.detail = format!("retrying in {:.1} s: {why}", delay.as_secs_f64());
                    });
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    let why = reason(&e);
                    tracing::warn!(vmid, error = %why, "VM failed");
                    if !matches!(e, DeployError::NotOurs { .. })
                        && let Err(ce) = self
                            .cleanup_vmid(&cluster, vmid, &node, &storages, Some(&name))
                            .await
                    {
                        tracing::warn!(vmid, error = %ce, "cleanup after a failed VM failed");
                    }
                    journal.update_step(idx, |s| {
                        s.state = JobState::Failed;
                        s.error = Some(why.clone());
                        s.detail = "failed; retry it from the class page".into();
                    });
                    return;
                }
            }
        }
    }

    /// Protects the newest base of the job's class when Proxlab made it (not a template's folder).
    pub(crate) async fn protect_class_base(&self, journal: &Arc<Journal>) -> Result<()> {
        let rec = journal.snapshot();
        let class_id = rec.class_id.clone().unwrap_or_default();
        let class = self.class(&class_id)?;
        match class.bases.last() {
            Some(b) if b.owned && b.deleted_at.is_none() => {
                self.protect_base(&class.cluster, &b.node, b.vmid, &class_id)
                    .await
            }
            _ => Ok(()),
        }
    }

    /// Before `plan(ctx)`: reserved VMIDs that a guest holds now (created behind Proxlab's back after
    /// the reservation; nothing of Proxlab's is there before the plan — an interrupted plan's VMs were
    /// removed) are replaced in `ctx.vmids` by freshly reserved ones, on disk before the plan runs.
    async fn swap_taken_plan_vmids(&self, journal: &Arc<Journal>) -> Result<()> {
        let rec = journal.snapshot();
        let client = self.pve(&rec.cluster)?;
        let busy: HashSet<u32> = client
            .cluster_resources()
            .await?
            .into_iter()
            .map(|g| g.vmid)
            .collect();
        let vmids: Vec<u32> = journal.params()["ctx"]["vmids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(u32_of)
            .collect();
        let taken: Vec<u32> = vmids.iter().copied().filter(|v| busy.contains(v)).collect();
        if taken.is_empty() {
            return Ok(());
        }
        let fresh = self
            .reserve_vmids(&rec.cluster, taken.len(), &rec.id, rec.class_id.as_deref(), None)
            .await?;
        let swap: BTreeMap<u32, u32> = taken.iter().copied().zip(fresh).collect();
        let now: Vec<u32> = vmids.iter().map(|v| swap.get(v).copied().unwrap_or(*v)).collect();
        journal.set_params(|p| p["ctx"]["vmids"] = json!(now));
        for (old, new) in &swap {
            self.release_vmid(&rec.cluster, *old)?;
            tracing::warn!(cluster = %rec.cluster, old, new, "VMID taken behind Proxlab's back before the plan; moved to a new one");
        }
        self.flush().await
    }

    /// True if a guest Proxlab did not create holds `vmid` (any container; a QEMU VM without the
    /// `proxlab` tag and not named `name`).
    pub(crate) async fn held_by_other(&self, cluster: &str, vmid: u32, name: &str) -> Result<bool> {
        let client = self.pve(cluster)?;
        let Some(g) = self.find_guest(&client, vmid).await? else {
            return Ok(false);
        };
        if g.kind != GuestKind::Qemu {
            return Ok(true);
        }
        match client.guest_config(&g.node, GuestKind::Qemu, vmid).await {
            Ok(cfg) => Ok(!crate::cleanup::is_proxlab_vm(&cfg, Some(name))),
            Err(pve::PveError::NotFound(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives step `idx` of the job a freshly reserved VMID instead of `old`, which a VM Proxlab did not
    /// create holds: the new reservation, the job's VM entry and the step are on disk before anything
    /// is made under it; the reservation of `old` is released (nothing of Proxlab's is there).
    async fn move_to_new_vmid(&self, journal: &Arc<Journal>, idx: usize, old: u32) -> Result<u32> {
        let rec = journal.snapshot();
        let got = self
            .reserve_vmids(&rec.cluster, 1, &rec.id, rec.class_id.as_deref(), None)
            .await?;
        let new = got
            .first()
            .copied()
            .ok_or_else(|| DeployError::Invalid("no VMID reserved".into()))?;
        let renumber = |vms: &mut Value| {
            for e in vms.as_array_mut().into_iter().flatten() {
                if e["vmid"] == json!(old) {
                    e["vmid"] = json!(new);
                }
            }
        };
        journal.set_params(|p| {
            renumber(&mut p["vms"]);
            renumber(&mut p["plan"]["vms"]);
        });
        journal.update_step(idx, |s| {
            s.vmid = Some(new);
            s.detail = format!("VMID {old} was taken by a VM Proxlab did not create; using {new}");
        });
        self.release_vmid(&rec.cluster, old)?;
        self.flush().await?;
        tracing::warn!(cluster = %rec.cluster, old, new, "VMID taken behind Proxlab's back; moved to a new one");
        Ok(new)
    }

    /// Records a VM `create_vm` made: reads its config (MACs; checks the Proxlab tag), stores the class
    /// VM record and its assignment (kept when the VM was re-made).
    async fn record_vm(
        &self,
        journal: &Arc<Journal>,
        ctx: &Value,
        entry: &Value,
        made: &Value,
    ) -> Result<ClassVm> {
        let rec = journal.snapshot();
        let cluster = rec.cluster.clone();
        let class_id = rec.class_id.clone().unwrap_or_default();
        let vmid = u32_of(&entry["vmid"]).unwrap_or_default();
        let node = made["node"]
            .as_str()
            .or(entry["node"].as_str())
            .unwrap_or_default()
            .to_string();
        let name = entry["name"].as_str().unwrap_or_default().to_string();
        let role = entry["role"].as_str().and_then(VmRole::parse).unwrap_or_default();
        let client = self.pve(&cluster)?;
        let cfg = client.guest_config(&node, GuestKind::Qemu, vmid).await?;
        if !cfg.tags().contains(crate::cleanup::TAG) {
            return Err(DeployError::Invalid(format!(
                "create_vm made VM {vmid} without the `proxlab` tag; workflows must tag their VMs"
            )));
        }
        let macs: BTreeMap<String, String> = cfg
            .nics()
            .into_iter()
            .filter_map(|n| n.mac.map(|m| (format!("net{}", n.index), m.to_ascii_uppercase())))
            .collect();
        let disks: Vec<VmDisk> = made["disks"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| VmDisk {
                key: d["key"].as_str().unwrap_or_default().to_string(),
                volid: d["volid"].as_str().unwrap_or_default().to_string(),
                path: str_of(&d["path"]),
                base: str_of(&d["base"]),
            })
            .collect();
        let baseline = str_of(&made["baseline"]).filter(|s| !s.is_empty());
        let base_version = u32_of(&ctx["options"]["base_version"]).unwrap_or(1);
        let key = vm_key(&cluster, vmid);
        let previous = self.inner.vms.get(&key)?;
        let existing = previous
            .as_ref()
            .map(|p| p.assignment_id.clone())
            .filter(|a| !a.is_empty());
        let assignment_id = match existing {
            Some(id) => {
                self.inner.store.assignments.update(&id, |a| {
                    Ok(a.map(|mut a| {
                        a.baseline_snapshot = baseline.clone();
                        a
                    }))
                })?;
                id
            }
            None => {
                // The id follows from the job and the VMID: a step resumed after a crash between
                // storing the assignment and the VM record writes the same one again, never a second.
                let a = AssignmentRecord {
                    id: job_assignment_id(&rec.id, vmid),
                    cluster: cluster.clone(),
                    vmid,
                    user: if role == VmRole::Teacher {
                        entry["user"].as_str().unwrap_or_default().to_string()
                    } else {
                        String::new()
                    },
                    class_id: Some(class_id.clone()),
                    role: if role == VmRole::Teacher {
                        AssignmentRole::Teacher
                    } else {
                        AssignmentRole::Student
                    },
                    baseline_snapshot: baseline.clone(),
                    created_at: self.now(),
                };
                self.inner.store.assignments.insert(&a.id, &a)?;
                a.id
            }
        };
        let vm = ClassVm {
            cluster: cluster.clone(),
            vmid,
            class_id,
            role,
            name,
            node,
            slot: u32_of(&entry["slot"]).unwrap_or(0),
            base_version,
            disks,
            baseline,
            macs,
            assignment_id,
            job_id: rec.id.clone(),
            created_at: previous.map(|p| p.created_at).unwrap_or_else(|| self.now()),
            reset_job: None,
        };
        self.inner.vms.insert(&key, &vm)?;
        Ok(vm)
    }

    /// Ends a create job: `done` (with a summary of failed VMs; `failed` when every VM failed) and the
    /// class state `ready`, `partial`
    /// or `failed`.
    fn finish_create_job(&self, journal: &Arc<Journal>) -> Result<()> {
        let rec = journal.snapshot();
        let vm_steps: Vec<&JobStep> = rec.steps.iter().filter(|s| s.role != "plan").collect();
        let failed = vm_steps.iter().filter(|s| s.state == JobState::Failed).count();
        if let Some(c) = &rec.class_id {
            let state = if failed == 0 {
                "ready"
            } else if rec.kind == KIND_DEPLOY && failed == vm_steps.len() {
                "failed"
            } else {
                "partial"
            };
            self.set_class_state(c, state)?;
        }
        let summary =
            (failed > 0).then(|| format!("{failed} of {} VMs failed; they can be retried", vm_steps.len()));
        // A job none of whose VMs was made is `failed` (readers of `state` alone must see it).
        let state = if failed > 0 && failed == vm_steps.len() {
            JobState::Failed
        } else {
            JobState::Done
        };
        journal.set_state(state, summary);
        Ok(())
    }

    /// The class's state field (missing classes are ignored: the class may be gone).
    pub(crate) fn set_class_state(&self, class_id: &str, state: &str) -> Result<()> {
        self.inner.store.classes.update(class_id, |c| {
            Ok(c.map(|mut c| {
                if c.state != "deleting" || state == "deleting" {
                    c.state = state.to_string();
                }
                c
            }))
        })?;
        Ok(())
    }

    /// Read-modify-write of a class. Errors: [`DeployError::NotFound`].
    pub(crate) fn update_class(
        &self,
        id: &str,
        f: impl Fn(&mut store::ClassRecord),
    ) -> Result<store::ClassRecord> {
        self.inner
            .store
            .classes
            .update(id, |c| {
                Ok(c.map(|mut c| {
                    f(&mut c);
                    c
                }))
            })?
            .ok_or_else(|| DeployError::not_found(format!("class {id}")))
    }

    /// `delete-class` jobs: remove the listed VMs (or every VM of the class), each only after checking it
    /// is Proxlab's; then, when asked, the class with its invites.
    async fn run_delete(&self, journal: &Arc<Journal>) -> Result<()> {
        journal.set_state(JobState::Running, None);
        let params = journal.params();
        let rec = journal.snapshot();
        let class_id = rec.class_id.clone().unwrap_or_default();
        let storage = params["storage"].as_str().map(String::from);
        if rec.steps.is_empty() {
            let wanted: Option<HashSet<u32>> = params["vmids"]
                .as_array()
                .map(|a| a.iter().filter_map(u32_of).collect());
            let mut vms = self.class_vms(&class_id)?;
            vms.retain(|v| wanted.as_ref().is_none_or(|w| w.contains(&v.vmid)));
            // Bases last: the others are overlays of them.
            vms.sort_by_key(|v| (v.role == VmRole::Base, v.vmid));
            let steps = vms
                .iter()
                .map(|v| JobStep {
                    name: v.name.clone(),
                    cluster: v.cluster.clone(),
                    vmid: Some(v.vmid),
                    role: "delete".into(),
                    node: Some(v.node.clone()),
                    detail: "queued".into(),
                    ..JobStep::default()
                })
                .collect();
            journal.add_steps(steps);
        }
        let rec = journal.snapshot();
        let is_base: HashSet<u32> = self
            .class_vms(&class_id)?
            .into_iter()
            .filter(|v| v.role == VmRole::Base)
            .map(|v| v.vmid)
            .collect();
        for wave in [false, true] {
            let todo: Vec<usize> = rec
                .steps
                .iter()
                .enumerate()
                .filter(|(_, s)| {
                    s.state != JobState::Done && s.vmid.is_some_and(|v| is_base.contains(&v)) == wave
                })
                .map(|(i, _)| i)
                .collect();
            join_all(
                todo.into_iter()
                    .map(|i| self.delete_step(journal, i, storage.clone())),
            )
            .await;
        }
        let rec = journal.snapshot();
        let failed = rec.steps.iter().filter(|s| s.state == JobState::Failed).count();
        if failed > 0 {
            journal.set_state(
                JobState::Failed,
                Some(format!(
                    "{failed} VMs could not be removed; delete the class again to retry"
                )),
            );
            return Ok(());
        }
        if params["remove_class"].as_bool().unwrap_or(false) {
            self.remove_class_records(&class_id)?;
        }
        journal.set_state(JobState::Done, None);
        Ok(())
    }

    /// Waits for the permits a step on `node` of `cluster` (and `storage`) needs, then marks the step
    /// running (one more attempt) with `detail`. The permits are held until dropped.
    async fn start_step(
        &self,
        journal: &Journal,
        idx: usize,
        (cluster, node): (&str, &str),
        storage: Option<&str>,
        detail: &str,
    ) -> Permits {
        let permits = self.inner.limiter.acquire(cluster, node, storage).await;
        journal.update_step(idx, |s| {
            s.state = JobState::Running;
            s.attempts += 1;
            s.detail = detail.into();
        });
        permits
    }

    async fn delete_step(&self, journal: &Arc<Journal>, idx: usize, storage: Option<String>) {
        let Some(step) = journal.step(idx) else { return };
        let (Some(vmid), cluster) = (step.vmid, step.cluster.clone()) else {
            return;
        };
        let node = step.node.clone().unwrap_or_default();
        let permits = self
            .start_step(journal, idx, (&cluster, &node), storage.as_deref(), "removing")
            .await;
        let storages: Vec<String> = storage.iter().cloned().collect();
        let r = self
            .cleanup_vmid(&cluster, vmid, &node, &storages, Some(&step.name))
            .await;
        drop(permits);
        let outcome = match r {
            Ok(()) => Ok("removed".to_string()),
            Err(DeployError::NotOurs { .. }) => {
                Ok("VMID now holds a VM Proxlab did not create: left untouched".to_string())
            }
            Err(e) => Err(e),
        };
        match outcome.and_then(|detail| self.forget_vm(&cluster, vmid).map(|_| detail)) {
            Ok(detail) => journal.update_step(idx, |s| {
                s.state = JobState::Done;
                s.detail = detail;
            }),
            Err(e) => journal.update_step(idx, |s| {
                s.state = JobState::Failed;
                s.error = Some(reason(&e));
                s.detail = "failed".into();
            }),
        }
    }

    /// Drops Proxlab's records of a VM it removed: class VM, assignment, reservation.
    pub(crate) fn forget_vm(&self, cluster: &str, vmid: u32) -> Result<()> {
        if let Some(vm) = self.inner.vms.remove(&vm_key(cluster, vmid))?
            && !vm.assignment_id.is_empty()
        {
            self.inner.store.assignments.remove(&vm.assignment_id)?;
        }
        self.release_vmid(cluster, vmid)
    }

    /// The class VM records of a class.
    pub fn class_vms(&self, class_id: &str) -> Result<Vec<ClassVm>> {
        Ok(self
            .inner
            .vms
            .values()?
            .into_iter()
            .filter(|v| v.class_id == class_id)
            .collect())
    }
}

/// A pending VM step for a plan entry.
pub(crate) fn vm_step(cluster: &str, e: &Value) -> JobStep {
    JobStep {
        name: e["name"].as_str().unwrap_or_default().to_string(),
        cluster: cluster.to_string(),
        vmid: u32_of(&e["vmid"]),
        role: e["role"].as_str().unwrap_or("student").to_string(),
        node: str_of(&e["node"]),
        detail: "queued".into(),
        ..JobStep::default()
    }
}

/// The id of the assignment a job makes for `vmid`: the same on every attempt of its step.
fn job_assignment_id(job_id: &str, vmid: u32) -> String {
    format!("a-{job_id}-{vmid}")
}
