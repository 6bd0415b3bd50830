//! The job journal: a [`store::JobRecord`] per job in sled, written before and after every step, and
//! the [`JobEvent`] stream the web layer turns into Server-Sent Events.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use store::{JobRecord, JobState, JobStep, Store};
use tokio::sync::broadcast;

use crate::error::Result;

/// One change of a job, in the order it happened (`seq` counts per job from 1).
#[derive(Clone, Debug, Serialize)]
pub struct JobEvent {
    /// Job id.
    pub job_id: String,
    /// Job kind (`deploy`, `add-vms`, `publish`, `move`, `delete-class`).
    pub job_kind: String,
    /// Class the job works on.
    pub class_id: Option<String>,
    /// Sequence number within the job (1, 2, ...).
    pub seq: u64,
    /// When (Unix s).
    pub at: u64,
    /// What changed.
    #[serde(flatten)]
    pub kind: JobEventKind,
}

/// What a [`JobEvent`] reports. Serialised with a `type` tag: `job`, `step`, `progress`, `script`.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobEventKind {
    /// The job's state changed (`running`, `done`, `failed`, `cancelled`).
    Job {
        /// New state.
        state: JobState,
        /// Summary of failures, if any.
        error: Option<String>,
    },
    /// A step changed (`pending` with detail `queued` or `retrying in 1.2 s: …`, `running`, `done`,
    /// `failed`).
    Step {
        /// Index into the job's steps.
        index: usize,
        /// Step name (VM name, `plan`).
        name: String,
        /// VMID, if the step is about one VM.
        vmid: Option<u32>,
        /// `plan`, `base`, `teacher`, `student`, `delete`, ...
        role: String,
        /// New state.
        state: JobState,
        /// Human-readable status.
        detail: String,
        /// Attempts so far.
        attempts: u32,
        /// The error of a failed step.
        error: Option<String>,
    },
    /// Overall progress: finished steps of all steps.
    Progress {
        /// Steps done or failed.
        done: u64,
        /// All steps.
        total: u64,
        /// Steps failed so far.
        failed: u64,
    },
    /// What the workflow script reported (`job::progress` / `job::step`).
    Script {
        /// Step key as the script named it (or `progress`).
        key: String,
        /// Script status (`running`, `ok`, ...), or `done/total` for progress.
        status: String,
        /// Free text.
        detail: String,
    },
}

/// One job's record, kept in memory while the job runs and written through to sled on every change.
pub(crate) struct Journal {
    store: Store,
    rec: Mutex<JobRecord>,
    events: broadcast::Sender<JobEvent>,
    seq: AtomicU64,
    now: Arc<dyn Fn() -> u64 + Send + Sync>,
}

impl Journal {
    /// Stores a new job record and returns its journal.
    pub(crate) fn create(
        store: &Store,
        rec: JobRecord,
        events: broadcast::Sender<JobEvent>,
        now: Arc<dyn Fn() -> u64 + Send + Sync>,
    ) -> Result<Arc<Journal>> {
        store.jobs.insert_new(&rec.id, &rec)?;
        Ok(Arc::new(Journal {
            store: store.clone(),
            rec: Mutex::new(rec),
            events,
            seq: AtomicU64::new(0),
            now,
        }))
    }

    /// The journal of a stored job (to resume it).
    pub(crate) fn load(
        store: &Store,
        rec: JobRecord,
        events: broadcast::Sender<JobEvent>,
        now: Arc<dyn Fn() -> u64 + Send + Sync>,
    ) -> Arc<Journal> {
        Arc::new(Journal {
            store: store.clone(),
            rec: Mutex::new(rec),
            events,
            seq: AtomicU64::new(0),
            now,
        })
    }

    pub(crate) fn snapshot(&self) -> JobRecord {
        self.with(|r| r.clone())
    }

    fn with<T>(&self, f: impl FnOnce(&JobRecord) -> T) -> T {
        let g = self.rec.lock().unwrap_or_else(|p| p.into_inner());
        f(&g)
    }

    /// Changes the record and writes it to sled (under the lock, so writes keep their order).
    fn change<T>(&self, f: impl FnOnce(&mut JobRecord) -> T) -> (T, JobRecord) {
        let mut g = self.rec.lock().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut g);
        g.updated_at = (self.now)();
        if let Err(e) = self.store.jobs.insert(&g.id, &g) {
            tracing::error!(job = %g.id, error = %e, "cannot write the job journal");
        }
        (out, g.clone())
    }

    fn emit(&self, rec: &JobRecord, kind: JobEventKind) {
        let ev = JobEvent {
            job_id: rec.id.clone(),
            job_kind: rec.kind.clone(),
            class_id: rec.class_id.clone(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            at: (self.now)(),
            kind,
        };
        let _ = self.events.send(ev);
    }

    /// Sets the job's state (and its error summary); terminal states set `finished_at`.
    pub(crate) fn set_state(&self, state: JobState, error: Option<String>) {
        let now = (self.now)();
        let (_, rec) = self.change(|r| {
            r.state = state;
            r.error = error.clone();
            if matches!(state, JobState::Done | JobState::Failed | JobState::Cancelled) {
                r.finished_at = Some(now);
            } else {
                r.finished_at = None;
            }
        });
        self.emit(&rec, JobEventKind::Job { state, error });
    }

    /// Changes the job's resume parameters.
    pub(crate) fn set_params(&self, f: impl FnOnce(&mut serde_json::Value)) {
        self.change(|r| f(&mut r.params));
    }

    pub(crate) fn params(&self) -> serde_json::Value {
        self.with(|r| r.params.clone())
    }

    /// Appends steps; returns the index of the first.
    pub(crate) fn add_steps(&self, steps: Vec<JobStep>) -> usize {
        let (first, rec) = self.change(|r| {
            let first = r.steps.len();
            r.steps.extend(steps);
            first
        });
        for i in first..rec.steps.len() {
            self.emit_step(&rec, i);
        }
        self.emit_progress(&rec);
        first
    }

    pub(crate) fn step(&self, index: usize) -> Option<JobStep> {
        self.with(|r| r.steps.get(index).cloned())
    }

    /// Changes step `index`, writes the record and reports the change (and progress when the step
    /// finished).
    pub(crate) fn update_step(&self, index: usize, f: impl FnOnce(&mut JobStep)) {
        let now = (self.now)();
        let (finished, rec) = self.change(|r| {
            let Some(s) = r.steps.get_mut(index) else {
                return false;
            };
            let before = s.state;
            f(s);
            if s.state == JobState::Running && s.started_at.is_none() {
                s.started_at = Some(now);
            }
            let terminal = matches!(s.state, JobState::Done | JobState::Failed | JobState::Cancelled);
            if terminal {
                s.finished_at = Some(now);
            }
            terminal && before != s.state
        });
        self.emit_step(&rec, index);
        if finished {
            self.emit_progress(&rec);
        }
    }

    fn emit_step(&self, rec: &JobRecord, index: usize) {
        if let Some(s) = rec.steps.get(index) {
            self.emit(
                rec,
                JobEventKind::Step {
                    index,
                    name: s.name.clone(),
                    vmid: s.vmid,
                    role: s.role.clone(),
                    state: s.state,
                    detail: s.detail.clone(),
                    attempts: s.attempts,
                    error: s.error.clone(),
                },
            );
        }
    }

    fn emit_progress(&self, rec: &JobRecord) {
        let total = rec.steps.len() as u64;
        let done = rec
            .steps
            .iter()
            .filter(|s| matches!(s.state, JobState::Done | JobState::Failed | JobState::Cancelled))
            .count() as u64;
        let failed = rec.steps.iter().filter(|s| s.state == JobState::Failed).count() as u64;
        self.emit(rec, JobEventKind::Progress { done, total, failed });
    }

    /// Reports what a script said (not journaled: the core's own step records are authoritative).
    pub(crate) fn script_event(&self, key: &str, status: &str, detail: &str) {
        let rec = self.snapshot();
        self.emit(
            &rec,
            JobEventKind::Script {
                key: key.to_string(),
                status: status.to_string(),
                detail: detail.to_string(),
            },
        );
    }
}

/// Where a workflow script's `job::progress` / `job::step` go: the job's event stream.
pub(crate) struct ScriptSink(pub(crate) Arc<Journal>);

impl script::JobSink for ScriptSink {
    fn progress(&self, done: u64, total: u64, message: &str) {
        self.0
            .script_event("progress", &format!("{done}/{total}"), message);
    }

    fn step(&self, key: &str, status: &str, detail: &str) {
        self.0.script_event(key, status, detail);
    }
}
