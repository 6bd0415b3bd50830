//! Usage-hour quotas: the running time of a student's VM outside the class's own time (its sessions
//! with warm-up and grace), from the inventory's power transitions. The [`Usage`] record is what the
//! runner persists after each transition; a start seen while a run is open, or a stop seen while none
//! is, changes nothing, so overlapping or repeated transitions are never counted twice.

use serde::{Deserialize, Serialize};

use crate::error::FieldError;
use crate::timetable::Compiled;

/// Most hours a quota may give.
pub const MAX_QUOTA_HOURS: u32 = 10_000;

/// What one student's VM has used.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    /// Seconds of running time outside class time, of the runs that ended.
    pub used_secs: u64,
    /// When the open run began (Unix seconds), while the VM runs.
    pub running_since: Option<i64>,
    /// When the VM last started (Unix seconds).
    pub last_start: Option<i64>,
}

fn outside_class(tt: Option<&Compiled>, a: i64, b: i64) -> u64 {
    let all = u64::try_from(b - a).unwrap_or(0);
    all.saturating_sub(tt.map_or(0, |t| t.class_secs(a, b)))
}

impl Usage {
    /// The VM was seen running at `at`. True when this opens a run; a VM already running keeps its run.
    pub fn started(&mut self, at: i64) -> bool {
        if self.running_since.is_some() {
            return false;
        }
        self.running_since = Some(at);
        self.last_start = Some(at);
        true
    }

    /// The VM was seen stopped at `at`: closes the open run and adds its seconds outside class time
    /// (none for a stop earlier than the start). Returns the seconds added.
    pub fn stopped(&mut self, at: i64, tt: Option<&Compiled>) -> u64 {
        let Some(since) = self.running_since.take() else {
            return 0;
        };
        let add = outside_class(tt, since, at.max(since));
        self.used_secs = self.used_secs.saturating_add(add);
        add
    }

    /// Seconds used by `now`, the open run included.
    pub fn used_at(&self, now: i64, tt: Option<&Compiled>) -> u64 {
        let open = self.running_since.map_or(0, |s| outside_class(tt, s, now.max(s)));
        self.used_secs.saturating_add(open)
    }
}

/// A student's quota: the class's hours per student plus the extra minutes their teacher granted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Hours per student outside class time.
    pub hours: u32,
    /// Extra minutes granted to this student.
    pub extra_minutes: u32,
}

impl Quota {
    /// The quota in seconds.
    pub fn secs(&self) -> u64 {
        u64::from(self.hours) * 3600 + u64::from(self.extra_minutes) * 60
    }

    /// Seconds left at `now`.
    pub fn remaining(&self, usage: &Usage, now: i64, tt: Option<&Compiled>) -> u64 {
        self.secs().saturating_sub(usage.used_at(now, tt))
    }

    /// Checks a new quota against what students used already (`most_used_secs`, the highest): a
    /// quota below it would take hours back that were spent. The error names `field`.
    pub fn check(&self, field: &str, most_used_secs: u64) -> Result<(), FieldError> {
        if self.hours > MAX_QUOTA_HOURS {
            return Err(FieldError::new(
                field,
                format!("{} hours; at most {MAX_QUOTA_HOURS}", self.hours),
            ));
        }
        if self.secs() < most_used_secs {
            return Err(FieldError::new(
                field,
                format!(
                    "{} is less than a student has used already ({}); give at least that",
                    duration_text(self.secs()),
                    duration_text(most_used_secs)
                ),
            ));
        }
        Ok(())
    }
}

/// When a VM that runs from `now` on uses up `remaining` seconds, class time not counting (within
/// the timetable's reach; without a timetable, `now + remaining`).
pub fn runs_out_at(remaining: u64, now: i64, tt: Option<&Compiled>) -> i64 {
    let mut left = i64::try_from(remaining).unwrap_or(i64::MAX / 4);
    let mut t = now;
    if let Some(tt) = tt {
        for i in tt.class_time(
            now,
            now.saturating_add(left)
                .saturating_add(crate::timetable::MAX_SPAN_DAYS * 86_400),
        ) {
            if i.end <= t {
                continue;
            }
            if i.start > t {
                let gap = i.start - t;
                if gap >= left {
                    return t + left;
                }
                left -= gap;
            }
            t = i.end;
        }
    }
    t.saturating_add(left)
}

/// `3 h 20 min`, `45 min`, `0 min` for people.
pub fn duration_text(secs: u64) -> String {
    let mins = secs / 60;
    match (mins / 60, mins % 60) {
        (0, m) => format!("{m} min"),
        (h, 0) => format!("{h} h"),
        (h, m) => format!("{h} h {m} min"),
    }
}
