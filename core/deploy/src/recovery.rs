//! Crash recovery: on start, unfinished jobs are resumed from their journal (each unfinished step first
//! removes whatever a previous attempt left under its VMID), and reservations nobody owns any more are
//! cleaned up and released — so no VM, disk or VMID reservation is left that Proxlab does not know about.
//!
//! Why this is enough: VMIDs are reserved and flushed to disk before anything is created under them,
//! so after any crash every VM or volume Proxlab made is under a reservation it finds here.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::json;
use store::{JobState, vm_key};

use crate::error::Result;
use crate::journal::Journal;
use crate::runner::{KIND_ADD, KIND_DELETE, KIND_DEPLOY, KIND_MOVE, KIND_PUBLISH, KIND_RESET, reason};
use crate::trees::VmRole;
use crate::{Deployer, is_terminal};

/// What [`Deployer::recover`] did.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Jobs resumed (they run in the background now).
    pub resumed: Vec<String>,
    /// Jobs that could not be resumed and were ended as failed (after cleaning up), and `class ID` for a
    /// class whose creation a restart interrupted before its job existed (removed).
    pub failed: Vec<String>,
    /// Reservations whose leftovers were removed and that were released, as `cluster/vmid`.
    pub released: Vec<String>,
    /// Problems met (the next start tries again).
    pub errors: Vec<String>,
}

impl Deployer {
    /// Resumes or cleans up after a crash. Call once at start, before serving.
    /// Errors: [`crate::DeployError::Store`] only; PVE problems are listed in the report and retried at the
    /// next start.
    pub async fn recover(&self) -> Result<RecoveryReport> {
        let mut report = RecoveryReport::default();
        let set = self.scripts();
        let jobs = self.inner.store.jobs.values()?;
        for job in jobs
            .iter()
            .filter(|j| !is_terminal(j.state) && !self.is_running(&j.id))
        {
            let journal = Journal::load(
                &self.inner.store,
                job.clone(),
                self.inner.events.clone(),
                self.clock(),
            );
            tracing::info!(job = %job.id, kind = %job.kind, "resuming a job interrupted by a restart");
            if matches!(job.kind.as_str(), KIND_DEPLOY | KIND_PUBLISH) && job.params["ctx"]["vmids"].is_null()
            {
                // Interrupted while reserving: nothing was created; end it (a publish leaves the class
                // on its current base).
                if let Err(e) = self.cleanup_job_vmids(&journal, &job.params, true).await {
                    report.errors.push(format!("job {}: {e}", job.id));
                    continue;
                }
                if let Some(c) = &job.class_id
                    && job.kind == KIND_DEPLOY
                {
                    self.set_class_state(c, "failed")?;
                }
                journal.set_state(
                    JobState::Failed,
                    Some("interrupted by a restart before it started".into()),
                );
                report.failed.push(job.id.clone());
                continue;
            }
            match job.kind.as_str() {
                KIND_DEPLOY | KIND_ADD | KIND_MOVE | KIND_RESET => {
                    // Steps that had not ended re-run; a step whose VM record is missing re-runs too.
                    for (i, s) in job.steps.iter().enumerate() {
                        let Some(vmid) = s.vmid else { continue };
                        let recorded = self.inner.vms.get(&vm_key(&job.cluster, vmid))?.is_some();
                        let redo = match s.state {
                            JobState::Pending | JobState::Running => true,
                            JobState::Done => !recorded && s.role != "plan",
                            _ => false,
                        };
                        if redo {
                            journal.update_step(i, |s| {
                                s.state = JobState::Running;
                                s.detail = "resuming after a restart".into();
                            });
                        }
                    }
                    journal.set_params(|p| p["resumed"] = json!(true));
                }
                KIND_PUBLISH | KIND_DELETE => {
                    journal.set_params(|p| p["resumed"] = json!(true));
                }
                other => {
                    journal.set_state(JobState::Failed, Some(format!("unknown job kind {other}")));
                    report.failed.push(job.id.clone());
                    continue;
                }
            }
            self.spawn_job(journal, set.clone());
            report.resumed.push(job.id.clone());
        }

        // A VM marked for a reset whose job was never written gets its reset now.
        match self.restart_lost_resets() {
            Ok(started) => report.resumed.extend(started),
            Err(e) => report.errors.push(format!("resets: {e}")),
        }

        // Reservations that no record and no running job explains: remove leftovers, release.
        let jobs: HashMap<String, store::JobRecord> = self
            .inner
            .store
            .jobs
            .values()?
            .into_iter()
            .map(|j| (j.id.clone(), j))
            .collect();
        for r in self.reservations(None)? {
            if self.inner.vms.get(&vm_key(&r.cluster, r.vmid))?.is_some() {
                continue;
            }
            let job = jobs.get(&r.job_id);
            let live = job.is_some_and(|j| !is_terminal(j.state) || self.is_running(&j.id));
            let retryable = job.is_some_and(|j| {
                j.steps
                    .iter()
                    .any(|s| s.vmid == Some(r.vmid) && s.state == JobState::Failed && s.role != "delete")
            });
            if live || retryable {
                continue;
            }
            let class = match &r.class_id {
                Some(c) => self.inner.store.classes.get(c)?,
                None => None,
            };
            let node = job
                .and_then(|j| j.params["ctx"]["node"].as_str().map(String::from))
                .or_else(|| class.as_ref().and_then(|c| c.node.clone()))
                .or_else(|| {
                    class
                        .as_ref()
                        .and_then(|c| c.bases.first().map(|b| b.node.clone()))
                });
            let storage = job
                .and_then(|j| j.params["ctx"]["storage"]["id"].as_str().map(String::from))
                .or_else(|| class.as_ref().and_then(|c| c.storage.clone()));
            let node = match node {
                Some(n) => n,
                None => match self.any_node(&r.cluster).await {
                    Ok(n) => n,
                    Err(e) => {
                        report.errors.push(format!("{}/{}: {e}", r.cluster, r.vmid));
                        continue;
                    }
                },
            };
            let storages: Vec<String> = storage.into_iter().collect();
            match self
                .cleanup_vmid(&r.cluster, r.vmid, &node, &storages, None)
                .await
            {
                Ok(()) | Err(crate::DeployError::NotOurs { .. }) => {
                    self.release_vmid(&r.cluster, r.vmid)?;
                    report.released.push(format!("{}/{}", r.cluster, r.vmid));
                }
                Err(e) => report
                    .errors
                    .push(format!("{}/{}: {}", r.cluster, r.vmid, reason(&e))),
            }
        }

        // Classes left "deploying" by a job that ended without saying so.
        for c in self.classes()? {
            if c.state != "deploying" {
                continue;
            }
            let busy = jobs.values().any(|j| {
                j.class_id.as_deref() == Some(c.id.as_str())
                    && (!is_terminal(j.state) || self.is_running(&j.id))
            });
            if busy {
                continue;
            }
            let has_job = jobs
                .values()
                .any(|j| j.class_id.as_deref() == Some(c.id.as_str()));
            let vms = self.class_vms(&c.id)?;
            if !has_job && vms.is_empty() {
                // Its creation was interrupted before its job was written: nothing was reserved or made
                // and the creation was never answered (it answers after the job is on disk). Remove it
                // rather than leave a "failed" class without a reason.
                self.inner.store.classes.remove(&c.id)?;
                tracing::warn!(class = %c.id, "removed a class whose creation a restart interrupted before it started");
                report.failed.push(format!("class {}", c.id));
                continue;
            }
            let any = vms.iter().any(|v| v.role != VmRole::Base);
            self.set_class_state(&c.id, if any { "partial" } else { "failed" })?;
        }
        self.flush().await?;
        tracing::info!(
            resumed = report.resumed.len(),
            failed = report.failed.len(),
            released = report.released.len(),
            errors = report.errors.len(),
            "recovery done"
        );
        Ok(report)
    }

    /// Some online node of a cluster (for storage listings when nothing better is known).
    async fn any_node(&self, cluster: &str) -> Result<String> {
        let client = self.pve(cluster)?;
        let nodes = client.nodes().await?;
        nodes
            .into_iter()
            .find(|n| n.is_online())
            .map(|n| n.node)
            .ok_or_else(|| crate::DeployError::not_found(format!("an online node of cluster {cluster}")))
    }
}
