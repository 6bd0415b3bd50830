//! Class hours and usage-hour quotas running in the server, over the pure logic of `schedule`.
//!
//! - One task ([`Hours::start`]) owns the one [`schedule::Wheel`] of every class: it sleeps until the
//!   wheel's next wake, a quota timer, a class's settings change or an inventory event (no polling),
//!   performs the due actions through [`ops::Ops`] (bounded per cluster by its permits) and persists the
//!   class's mark after each action, so a restart neither repeats nor misses one.
//! - The same task keeps the usage-hour accounts: a student VM's power transitions from the
//!   inventory's events are written as [`store::UsageRecord`]s at each transition (and flushed), and a
//!   VM whose quota runs out is warned and then shut down gracefully.
//! - Notices for students and teachers ([`HoursEvent`]) go out on a broadcast channel the web layer
//!   forwards ([`Hours::subscribe`]).
//!
//! Time is an injected [`Clock`] (Unix seconds), so tests move it; [`Hours::nudge`] tells the task that
//! the clock moved.

mod runner;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use schedule::Timetable;
use schedule::{Compiled, FieldError, Outside, Quota, Usage, duration_text};
use serde::{Deserialize, Serialize};
use store::{AssignmentRecord, AssignmentRole, ClassHoursRecord, Store, StoreError, UsageRecord, usage_key};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Unix seconds now. Production: [`system_clock`]; tests hand in a clock they move.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system's real-time clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    })
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum HoursError {
    /// A field of the settings is wrong.
    #[error("{0}")]
    Field(#[from] FieldError),
    /// The store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// A stored record does not decode.
    #[error("the hours settings of class {class} cannot be read: {detail}")]
    Decode {
        /// The class.
        class: String,
        /// Why.
        detail: String,
    },
}

/// A class's hours settings, decoded from its [`ClassHoursRecord`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassHours {
    /// The timetable.
    pub timetable: Timetable,
    /// Hours per student outside class time; `None`: no quota.
    pub quota_hours: Option<u32>,
    /// Extra minutes granted, by user name.
    pub extra_minutes: BTreeMap<String, u32>,
}

impl ClassHours {
    /// Decodes the stored record of `class`.
    pub fn from_record(class: &str, r: &ClassHoursRecord) -> Result<ClassHours, HoursError> {
        let timetable = serde_json::from_value(r.timetable.clone()).map_err(|e| HoursError::Decode {
            class: class.to_string(),
            detail: e.to_string(),
        })?;
        Ok(ClassHours {
            timetable,
            quota_hours: r.quota_hours,
            extra_minutes: r.extra_minutes.clone(),
        })
    }

    /// The stored form.
    pub fn to_record(&self) -> ClassHoursRecord {
        ClassHoursRecord {
            timetable: serde_json::to_value(&self.timetable).unwrap_or_default(),
            quota_hours: self.quota_hours,
            extra_minutes: self.extra_minutes.clone(),
        }
    }

    /// `user`'s quota, when the class has one.
    pub fn quota(&self, user: &str) -> Option<Quota> {
        self.quota_hours.map(|hours| Quota {
            hours,
            extra_minutes: self.extra_minutes.get(user).copied().unwrap_or(0),
        })
    }
}

/// Why a notice was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeReason {
    /// The class's session ends (every student of the class).
    SessionEnds,
    /// One student's usage-hour quota runs out.
    QuotaRunsOut,
}

/// A notice for the web layer to forward: the session or a student's quota ends in `minutes_left`
/// minutes (0: it ended and the VM is being shut down).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoursEvent {
    /// The class.
    pub class: String,
    /// The student it is for; `None`: every student of the class.
    pub user: Option<String>,
    /// Why.
    pub reason: NoticeReason,
    /// Minutes left (10, 2 or 0).
    pub minutes_left: u32,
    /// The sentence to show.
    pub message: String,
}

/// What one student has used and has left.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageView {
    /// The student.
    pub user: String,
    /// Seconds used outside class time (the open run included).
    pub used_secs: u64,
    /// `3 h 20 min`.
    pub used_text: String,
    /// The quota in seconds; `None`: no quota.
    pub quota_secs: Option<u64>,
    /// Seconds left; `None`: no quota.
    pub remaining_secs: Option<u64>,
    /// `1 h 40 min`, or `no quota`.
    pub remaining_text: String,
    /// True while the VM runs.
    pub running: bool,
}

pub(crate) enum Cmd {
    Class(String),
    Nudge,
    Settle(oneshot::Sender<()>),
    Stop,
}

/// The class-hours service: a handle to the runner task and the reads the web layer needs. Cheap to
/// clone; the task ends when the last handle is dropped or at [`Hours::shutdown`].
#[derive(Clone)]
pub struct Hours {
    store: Store,
    clock: Clock,
    events: broadcast::Sender<HoursEvent>,
    cmd: mpsc::UnboundedSender<Cmd>,
    task: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Hours {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hours").finish_non_exhaustive()
    }
}

/// The assignments of `class` (teacher, base and student VMs).
pub(crate) fn class_assignments(store: &Store, class: &str) -> Result<Vec<AssignmentRecord>, StoreError> {
    let mut out = Vec::new();
    for item in store.assignments.iter() {
        let (_, a) = item?;
        if a.class_id.as_deref() == Some(class) {
            out.push(a);
        }
    }
    Ok(out)
}

/// The VMs the class hours start and stop: the teacher VM and the student VMs given to a student.
pub(crate) fn is_hours_vm(a: &AssignmentRecord) -> bool {
    match a.role {
        AssignmentRole::Teacher => true,
        AssignmentRole::Student => !a.user.is_empty(),
        AssignmentRole::Base | AssignmentRole::Direct => false,
    }
}

pub(crate) fn usage_of(r: UsageRecord) -> Usage {
    Usage {
        used_secs: r.used_secs,
        running_since: r.running_since,
        last_start: r.last_start,
    }
}

pub(crate) fn record_of(u: &Usage) -> UsageRecord {
    UsageRecord {
        used_secs: u.used_secs,
        running_since: u.running_since,
        last_start: u.last_start,
    }
}

impl Hours {
    /// Starts the runner task: it loads every class's settings and mark, catches up what a restart
    /// missed (`Wheel::set_class`), reconciles the usage of running student VMs with the inventory,
    /// and from then on follows the wheel, the quota timers and the inventory's events.
    pub fn start(store: Store, ops: ops::Ops, inventory: Arc<sync::Inventory>, clock: Clock) -> Hours {
        let (events, _) = broadcast::channel(1024);
        let (cmd, rx) = mpsc::unbounded_channel();
        let inv_events = inventory.subscribe();
        let task = tokio::spawn(runner::run(runner::Runner::new(
            store.clone(),
            ops,
            inventory,
            clock.clone(),
            events.clone(),
            rx,
            inv_events,
        )));
        Hours {
            store,
            clock,
            events,
            cmd,
            task: Arc::new(std::sync::Mutex::new(Some(task))),
        }
    }

    /// The store the service keeps its records in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Unix seconds now, by the service's clock (the one its runner and quotas go by).
    pub fn now(&self) -> i64 {
        (self.clock)()
    }

    /// Notices for students and teachers (warnings before a session or a quota ends).
    pub fn subscribe(&self) -> broadcast::Receiver<HoursEvent> {
        self.events.subscribe()
    }

    /// Tells the runner the clock moved (tests; a wall clock that jumped): it re-reads the clock and
    /// performs what became due.
    pub fn nudge(&self) {
        let _ = self.cmd.send(Cmd::Nudge);
    }

    /// Waits until the runner has performed everything due now, its actions' PVE tasks included, and
    /// handled the inventory events published before this call.
    pub async fn settle(&self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Cmd::Settle(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Ends the runner task after what is in flight and waits for it, so its store handles are gone;
    /// other handles then only read.
    pub async fn shutdown(self) {
        self.settle().await;
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        // Other handles (the web state's) may live on: the task is told to end, not left to notice.
        let _ = self.cmd.send(Cmd::Stop);
        if let Some(t) = task {
            let _ = t.await;
        }
    }

    /// The settings of `class`; `None`: the class has no class hours.
    pub fn settings(&self, class: &str) -> Result<Option<ClassHours>, HoursError> {
        match self.store.class_hours.get(class)? {
            Some(r) => Ok(Some(ClassHours::from_record(class, &r)?)),
            None => Ok(None),
        }
    }

    /// Checks `settings` for `class` without storing them: the timetable compiles, and the quota of
    /// every student is not below what they used already. The error names the field
    /// (`timetable.weekly[1].end`, `quota_hours`, `extra_minutes.bob`).
    pub fn check(&self, class: &str, settings: &ClassHours) -> Result<Compiled, FieldError> {
        let tt = settings.timetable.compile().map_err(|e| FieldError {
            field: format!("timetable.{}", e.field),
            message: e.message,
        })?;
        if settings.quota_hours.is_some() {
            let now = (self.clock)();
            let prefix = format!("{class}/");
            for item in self.store.usage.scan_prefix(&prefix) {
                let (key, r) = item.map_err(|e| FieldError::new("quota_hours", e.to_string()))?;
                let user = key.strip_prefix(&prefix).unwrap_or_default().to_string();
                let used = usage_of(r).used_at(now, Some(&tt));
                if let Some(q) = settings.quota(&user) {
                    let field = if settings.extra_minutes.contains_key(&user) {
                        format!("extra_minutes.{user}")
                    } else {
                        "quota_hours".to_string()
                    };
                    q.check(&field, used)?;
                }
            }
        }
        Ok(tt)
    }

    /// Stores `settings` for `class` (`None` removes the class hours) after [`Hours::check`], makes
    /// them durable and hands them to the runner. Nothing is stored on bad input.
    pub async fn set_settings(&self, class: &str, settings: Option<&ClassHours>) -> Result<(), HoursError> {
        match settings {
            Some(s) => {
                self.check(class, s)?;
                self.store.class_hours.insert(class, &s.to_record())?;
            }
            None => {
                self.store.class_hours.remove(class)?;
            }
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.flush_covering())
            .await
            .map_err(|e| StoreError::Io(e.to_string()))??;
        let _ = self.cmd.send(Cmd::Class(class.to_string()));
        Ok(())
    }

    /// What `user` has used in `class` and has left at `now`; `None`: the class has no class hours.
    pub fn usage(&self, class: &str, user: &str, now: i64) -> Result<Option<UsageView>, HoursError> {
        let Some(settings) = self.settings(class)? else {
            return Ok(None);
        };
        let tt = settings.timetable.compile().ok();
        let usage = self
            .store
            .usage
            .get(&usage_key(class, user))?
            .map(usage_of)
            .unwrap_or_default();
        Ok(Some(view(user, &usage, settings.quota(user), now, tt.as_ref())))
    }

    /// Every student of `class` with a VM and what they used, in user order.
    pub fn class_usage(&self, class: &str, now: i64) -> Result<Vec<UsageView>, HoursError> {
        let Some(settings) = self.settings(class)? else {
            return Ok(Vec::new());
        };
        let tt = settings.timetable.compile().ok();
        let mut users: Vec<String> = class_assignments(&self.store, class)?
            .into_iter()
            .filter(|a| a.role == AssignmentRole::Student && !a.user.is_empty())
            .map(|a| a.user)
            .collect();
        users.sort();
        users.dedup();
        let mut out = Vec::new();
        for user in users {
            let usage = self
                .store
                .usage
                .get(&usage_key(class, &user))?
                .map(usage_of)
                .unwrap_or_default();
            out.push(view(&user, &usage, settings.quota(&user), now, tt.as_ref()));
        }
        Ok(out)
    }

    /// May `user` start their VM of `class` at `now`? Refused, with the sentence to show, when the
    /// class is closed outside its slots and `now` is outside them (naming the next slot in the class's
    /// time zone), or when the quota is used up outside class time (naming the quota and the teacher).
    /// A class without class hours, or a record that does not decode, refuses nothing.
    pub fn may_start(&self, class: &str, user: &str, now: i64) -> Result<(), String> {
        let Ok(Some(settings)) = self.settings(class) else {
            return Ok(());
        };
        let Ok(tt) = settings.timetable.compile() else {
            return Ok(());
        };
        if tt.class_secs(now, now + 1) > 0 {
            return Ok(()); // class time: it never counts against the quota
        }
        let record = self.store.classes.get(class).ok().flatten();
        let name = record.as_ref().map_or(class.to_string(), |c| c.name.clone());
        if tt.outside() == Outside::Closed {
            let next = tt.sessions(now, now + schedule::timetable::MAX_SPAN_DAYS * 86_400);
            return Err(match next.iter().find(|s| s.start - tt.warmup_secs() > now) {
                Some(s) => format!(
                    "{name} is open only in class hours; the next slot starts at {}",
                    tt.local_text(s.start)
                ),
                None => format!("{name} is open only in class hours, and no slot is planned"),
            });
        }
        if let Some(q) = settings.quota(user) {
            let usage = self
                .store
                .usage
                .get(&usage_key(class, user))
                .ok()
                .flatten()
                .map(usage_of)
                .unwrap_or_default();
            if q.remaining(&usage, now, Some(&tt)) == 0 {
                let teacher = record.as_ref().map_or("your teacher", |c| c.owner.as_str());
                return Err(format!(
                    "You have used your {} for {name}; ask {teacher} for more",
                    duration_text(q.secs())
                ));
            }
        }
        Ok(())
    }
}

fn view(user: &str, usage: &Usage, quota: Option<Quota>, now: i64, tt: Option<&Compiled>) -> UsageView {
    let used = usage.used_at(now, tt);
    let remaining = quota.map(|q| q.remaining(usage, now, tt));
    UsageView {
        user: user.to_string(),
        used_secs: used,
        used_text: duration_text(used),
        quota_secs: quota.map(|q| q.secs()),
        remaining_secs: remaining,
        remaining_text: remaining.map_or_else(|| "no quota".to_string(), duration_text),
        running: usage.running_since.is_some(),
    }
}
