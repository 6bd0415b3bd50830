//! One timer wheel for the class hours of every class: the next actions of all classes in one ordered
//! queue, so the runner sleeps until the earliest and nothing runs between events (no loop per
//! class). Each class is planned [`Wheel::horizon`] ahead; a replan marker per class extends it.
//!
//! Crash safety is a [`Mark`] per class — the last action performed, persisted by the runner after it
//! performed it. A restart hands the mark back to [`Wheel::set_class`], which returns what was missed
//! and still matters (the warm-up of the session going on now; the shutdown and stop of the last
//! session that ended while Proxlab was down) and never what the mark covers: nothing is missed,
//! nothing repeated.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::timetable::{Compiled, Interval};

/// What the scheduler does to a class's VMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Start the class's VMs, the warm-up before a session.
    WarmUp,
    /// Tell connected students that the session ends in 10 minutes.
    WarnTen,
    /// Tell connected students that the session ends in 2 minutes.
    WarnTwo,
    /// Shut the VMs down gracefully (ACPI) at the session's end.
    Shutdown,
    /// Stop the VMs still running after the grace.
    Stop,
}

impl Action {
    /// Plain words for logs and the class page.
    pub fn label(self) -> &'static str {
        match self {
            Action::WarmUp => "start the VMs before the session",
            Action::WarnTen => "warn: 10 minutes left",
            Action::WarnTwo => "warn: 2 minutes left",
            Action::Shutdown => "shut the VMs down at the end of the session",
            Action::Stop => "stop the VMs still running",
        }
    }
}

/// An action that is due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    /// The class.
    pub class: Arc<str>,
    /// What to do.
    pub action: Action,
    /// When the timetable planned it (Unix seconds): the [`Mark`] to persist once it is done.
    pub at: i64,
    /// When to do it: `at`, or later for an action caught up after a restart.
    pub run_at: i64,
    /// The session it belongs to.
    pub session: Interval,
}

impl Due {
    /// The mark to persist once this action is done.
    pub fn mark(&self) -> Mark {
        Mark {
            at: self.at,
            action: Some(self.action),
        }
    }
}

/// The last action performed for a class (persisted by the runner); the default is a class that has
/// done nothing yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// The planned time of the last action performed.
    pub at: i64,
    /// The action, `None` for a class that has done nothing yet.
    pub action: Option<Action>,
}

impl Mark {
    /// True when the action planned for `at` is done (at or before this mark).
    pub fn covers(&self, at: i64, action: Action) -> bool {
        self.action.is_some() && (at, Some(action)) <= (self.at, self.action)
    }
}

/// The actions of one session, in order.
fn actions_of(tt: &Compiled, s: Interval) -> Vec<(i64, Action)> {
    let mut out = vec![(s.start - tt.warmup_secs(), Action::WarmUp)];
    for (before, a) in [(600, Action::WarnTen), (120, Action::WarnTwo)] {
        if s.end - before > s.start {
            out.push((s.end - before, a));
        }
    }
    out.push((s.end, Action::Shutdown));
    out.push((s.end + tt.grace_secs(), Action::Stop));
    out
}

enum Entry {
    Act(Due),
    Replan(Arc<str>),
}

struct Class {
    tt: Arc<Compiled>,
    keys: BTreeSet<(i64, u64)>,
    planned_until: i64,
}

/// The queue of every class's next actions.
pub struct Wheel {
    queue: BTreeMap<(i64, u64), Entry>,
    seq: u64,
    classes: HashMap<Arc<str>, Class>,
    horizon: i64,
}

impl Default for Wheel {
    fn default() -> Self {
        Wheel::new(7 * 86_400)
    }
}

impl Wheel {
    /// A wheel that plans each class `horizon_secs` ahead (at least an hour).
    pub fn new(horizon_secs: i64) -> Self {
        Wheel {
            queue: BTreeMap::new(),
            seq: 0,
            classes: HashMap::new(),
            horizon: horizon_secs.max(3600),
        }
    }

    /// How far ahead each class is planned, in seconds.
    pub fn horizon(&self) -> i64 {
        self.horizon
    }

    /// Classes on the wheel.
    pub fn classes(&self) -> usize {
        self.classes.len()
    }

    /// Entries queued (actions and replan markers).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// When the earliest queued entry is due.
    pub fn next_wake(&self) -> Option<i64> {
        self.queue.keys().next().map(|k| k.0)
    }

    fn push(&mut self, at: i64, entry: Entry) {
        self.seq += 1;
        let key = (at, self.seq);
        let class = match &entry {
            Entry::Act(d) => d.class.clone(),
            Entry::Replan(c) => c.clone(),
        };
        if let Some(c) = self.classes.get_mut(&class) {
            c.keys.insert(key);
        }
        self.queue.insert(key, entry);
    }

    /// Queues `class`'s actions planned for `(from, to]` that `mark` does not cover, and a replan at
    /// `to`.
    fn plan(&mut self, class: &Arc<str>, from: i64, to: i64, mark: Mark) {
        let Some(tt) = self.classes.get(class).map(|c| c.tt.clone()) else {
            return;
        };
        let reach = tt.warmup_secs() + tt.grace_secs() + 1;
        for s in tt.sessions(from - reach, to + reach) {
            for (at, action) in actions_of(&tt, s) {
                if at > from && at <= to && !mark.covers(at, action) {
                    self.push(
                        at,
                        Entry::Act(Due {
                            class: class.clone(),
                            action,
                            at,
                            run_at: at,
                            session: s,
                        }),
                    );
                }
            }
        }
        if let Some(c) = self.classes.get_mut(class) {
            c.planned_until = to;
        }
        self.push(to, Entry::Replan(class.clone()));
    }

    /// Puts `class` on the wheel with its timetable (replacing what it had) and its persisted `mark`,
    /// at `now`. Returns the actions to do at once, in order: the warm-up of a session going on now
    /// that the mark does not cover, or — when no session is going on — the shutdown and stop of the
    /// last session that ended after the mark. Missed warnings are dropped (their moment has passed).
    pub fn set_class(&mut self, class: &str, tt: Compiled, mark: Mark, now: i64) -> Vec<Due> {
        self.remove_class(class);
        let class: Arc<str> = Arc::from(class);
        let tt = Arc::new(tt);
        self.classes.insert(
            class.clone(),
            Class {
                tt: tt.clone(),
                keys: BTreeSet::new(),
                planned_until: now,
            },
        );
        let mut now_due = Vec::new();
        let mut later = Vec::new();
        // Only the last session before now matters, and a month back is far enough to find it.
        let look_back = if mark.action.is_some() {
            mark.at.min(now).max(now - 31 * 86_400)
        } else {
            now
        };
        let reach = tt.warmup_secs() + tt.grace_secs() + 1;
        let sessions = tt.sessions(look_back - reach, now + reach);
        let current = sessions
            .iter()
            .copied()
            .find(|s| s.start - tt.warmup_secs() <= now && now < s.end);
        let due = |action, at, run_at, session| Due {
            class: class.clone(),
            action,
            at,
            run_at,
            session,
        };
        if let Some(s) = current {
            let at = s.start - tt.warmup_secs();
            if !mark.covers(at, Action::WarmUp) {
                now_due.push(due(Action::WarmUp, at, now, s));
            }
        } else if mark.action.is_some()
            && let Some(p) = sessions.iter().copied().rfind(|s| s.end <= now)
        {
            let stop_at = p.end + tt.grace_secs();
            let shut = !mark.covers(p.end, Action::Shutdown);
            if shut {
                now_due.push(due(Action::Shutdown, p.end, now, p));
            }
            // A stop still ahead is planned below like any other action.
            if stop_at <= now && !mark.covers(stop_at, Action::Stop) {
                if shut && tt.grace_secs() > 0 {
                    // A shutdown caught up now gets its grace before the stop.
                    later.push(due(Action::Stop, stop_at, now + tt.grace_secs(), p));
                } else {
                    now_due.push(due(Action::Stop, stop_at, now, p));
                }
            }
        }
        for d in later {
            self.push(d.run_at, Entry::Act(d));
        }
        self.plan(&class, now, now + self.horizon, mark);
        now_due
    }

    /// Takes `class` off the wheel.
    pub fn remove_class(&mut self, class: &str) {
        if let Some(c) = self.classes.remove(class) {
            for k in c.keys {
                self.queue.remove(&k);
            }
        }
    }

    /// Everything due at or before `now`, in order (replans are done on the way).
    pub fn pop_due(&mut self, now: i64) -> Vec<Due> {
        let mut out = Vec::new();
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = *entry.key();
            let e = entry.remove();
            match e {
                Entry::Act(d) => {
                    if let Some(c) = self.classes.get_mut(&d.class) {
                        c.keys.remove(&key);
                    }
                    out.push(d);
                }
                Entry::Replan(class) => {
                    let Some(from) = self.classes.get_mut(&class).map(|c| {
                        c.keys.remove(&key);
                        c.planned_until
                    }) else {
                        continue;
                    };
                    let to = from + self.horizon;
                    self.plan(&class, from, to, Mark::default());
                }
            }
        }
        out
    }

    /// The timetable `class` is on the wheel with.
    pub fn timetable(&self, class: &str) -> Option<Arc<Compiled>> {
        self.classes.get(class).map(|c| c.tt.clone())
    }
}
