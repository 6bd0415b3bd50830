//! A class's timetable: recurring weekly slots and one-off sessions in the class's time zone (an IANA
//! name; daylight saving time is the time zone database's business, through `jiff`), the warm-up
//! before a slot, the grace between the graceful shutdown at its end and the stop, and what students
//! may do outside slots.
//!
//! [`Timetable`] is the stored and wire form (times as `HH:MM`, dates as `YYYY-MM-DD`, days as
//! `mon`…`sun`); [`Timetable::compile`] checks it, naming the field that is wrong, and gives a
//! [`Compiled`] timetable that answers in Unix seconds.

use jiff::Timestamp;
use jiff::civil::{Date, DateTime, Time, Weekday};
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::error::FieldError;

/// Most weekly slots a class may have.
pub const MAX_WEEKLY: usize = 50;
/// Most one-off sessions a class may have.
pub const MAX_ONCE: usize = 200;
/// Longest warm-up before a slot, in minutes.
pub const MAX_WARMUP_MINUTES: u32 = 120;
/// Longest grace between the graceful shutdown and the stop, in minutes.
pub const MAX_GRACE_MINUTES: u32 = 60;
/// The furthest [`Compiled::sessions`] looks, in days.
pub const MAX_SPAN_DAYS: i64 = 400;

const DAY: i64 = 86_400;

/// A day of the week as timetables spell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Day {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Day {
    fn weekday(self) -> Weekday {
        match self {
            Day::Mon => Weekday::Monday,
            Day::Tue => Weekday::Tuesday,
            Day::Wed => Weekday::Wednesday,
            Day::Thu => Weekday::Thursday,
            Day::Fri => Weekday::Friday,
            Day::Sat => Weekday::Saturday,
            Day::Sun => Weekday::Sunday,
        }
    }
}

/// What students may do outside scheduled slots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outside {
    /// They may start their VM; the time counts against their usage-hour quota.
    #[default]
    StudentsMayStart,
    /// Their VM starts only in class hours; the Start button says when the next slot is.
    Closed,
}

/// A slot that recurs every week on the given days, from `start` to `end` (`HH:MM`, local time).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeeklySlot {
    /// Days it falls on.
    pub days: Vec<Day>,
    /// Local start, `HH:MM`.
    pub start: String,
    /// Local end, `HH:MM`, after the start on the same day.
    pub end: String,
}

/// A session on one date (`YYYY-MM-DD`), from `start` to `end` (`HH:MM`, local time).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OneOffSlot {
    /// Local date, `YYYY-MM-DD`.
    pub date: String,
    /// Local start, `HH:MM`.
    pub start: String,
    /// Local end, `HH:MM`, after the start.
    pub end: String,
}

/// A class's timetable as it is stored and sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timetable {
    /// IANA time zone name (`Europe/London`); the slots are in its local time.
    pub zone: String,
    /// Weekly slots.
    pub weekly: Vec<WeeklySlot>,
    /// One-off sessions.
    pub once: Vec<OneOffSlot>,
    /// VMs start this many minutes before a slot.
    pub warmup_minutes: u32,
    /// Minutes between the graceful shutdown at a slot's end and the stop of VMs still running.
    pub grace_minutes: u32,
    /// What students may do outside slots.
    pub outside: Outside,
}

impl Default for Timetable {
    fn default() -> Self {
        Timetable {
            zone: "UTC".into(),
            weekly: Vec::new(),
            once: Vec::new(),
            warmup_minutes: 10,
            grace_minutes: 5,
            outside: Outside::StudentsMayStart,
        }
    }
}

/// A session in Unix seconds: `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Interval {
    /// First second.
    pub start: i64,
    /// First second after it.
    pub end: i64,
}

impl Interval {
    /// Seconds of `[a, b)` inside this interval.
    pub fn overlap(&self, a: i64, b: i64) -> u64 {
        let lo = self.start.max(a);
        let hi = self.end.min(b);
        u64::try_from(hi - lo).unwrap_or(0)
    }
}

/// A checked timetable that answers in Unix seconds.
#[derive(Clone, Debug)]
pub struct Compiled {
    tz: TimeZone,
    zone: String,
    weekly: Vec<(Weekday, Time, Time)>,
    once: Vec<(Date, Time, Time)>,
    warmup: i64,
    grace: i64,
    outside: Outside,
}

fn parse_time(field: &str, s: &str) -> Result<Time, FieldError> {
    let bad = || {
        FieldError::new(
            field,
            format!("{s:?} is not a time of day: write HH:MM, e.g. 09:30"),
        )
    };
    let b = s.as_bytes();
    if b.len() != 5 || b[2] != b':' || !b.iter().enumerate().all(|(i, c)| i == 2 || c.is_ascii_digit()) {
        return Err(bad());
    }
    let h = i8::try_from(u32::from(b[0] - b'0') * 10 + u32::from(b[1] - b'0')).map_err(|_| bad())?;
    let m = i8::try_from(u32::from(b[3] - b'0') * 10 + u32::from(b[4] - b'0')).map_err(|_| bad())?;
    Time::new(h, m, 0, 0).map_err(|_| bad())
}

fn parse_date(field: &str, s: &str) -> Result<Date, FieldError> {
    let bad = || {
        FieldError::new(
            field,
            format!("{s:?} is not a date: write YYYY-MM-DD, e.g. 2027-01-18"),
        )
    };
    if s.len() != 10 {
        return Err(bad());
    }
    s.parse::<Date>().map_err(|_| bad())
}

fn hhmm(t: Time) -> String {
    format!("{:02}:{:02}", t.hour(), t.minute())
}

fn slot_times(field: &str, start: &str, end: &str) -> Result<(Time, Time), FieldError> {
    let s = parse_time(&format!("{field}.start"), start)?;
    let e = parse_time(&format!("{field}.end"), end)?;
    if e <= s {
        return Err(FieldError::new(
            &format!("{field}.end"),
            format!(
                "the slot ends at {} but starts at {}: the end must come after the start",
                hhmm(e),
                hhmm(s)
            ),
        ));
    }
    Ok((s, e))
}

/// `(start, end, field)` slots of one day: the first pair that overlaps.
fn overlapping(mut day: Vec<(Time, Time, &str)>) -> Option<(&str, &str)> {
    day.sort();
    day.windows(2).find(|w| w[1].0 < w[0].1).map(|w| (w[0].2, w[1].2))
}

impl Timetable {
    /// Checks the timetable: a known time zone, every time and date well formed, every slot ending
    /// after it starts, no two slots overlapping on a day, counts and minutes in bounds. The error
    /// names the field (`weekly[1].end`).
    pub fn compile(&self) -> Result<Compiled, FieldError> {
        let tz = TimeZone::get(&self.zone).map_err(|_| {
            FieldError::new(
                "zone",
                format!(
                    "{:?} is not a time zone name the time zone database knows (e.g. Europe/London)",
                    self.zone
                ),
            )
        })?;
        if self.weekly.len() > MAX_WEEKLY {
            return Err(FieldError::new(
                "weekly",
                format!("{} weekly slots; at most {MAX_WEEKLY}", self.weekly.len()),
            ));
        }
        if self.once.len() > MAX_ONCE {
            return Err(FieldError::new(
                "once",
                format!("{} one-off sessions; at most {MAX_ONCE}", self.once.len()),
            ));
        }
        if self.warmup_minutes > MAX_WARMUP_MINUTES {
            return Err(FieldError::new(
                "warmup_minutes",
                format!("{} minutes; at most {MAX_WARMUP_MINUTES}", self.warmup_minutes),
            ));
        }
        if self.grace_minutes > MAX_GRACE_MINUTES {
            return Err(FieldError::new(
                "grace_minutes",
                format!("{} minutes; at most {MAX_GRACE_MINUTES}", self.grace_minutes),
            ));
        }
        let mut weekly = Vec::new();
        let mut weekly_fields = Vec::new();
        for (i, w) in self.weekly.iter().enumerate() {
            let field = format!("weekly[{i}]");
            if w.days.is_empty() {
                return Err(FieldError::new(&format!("{field}.days"), "name at least one day"));
            }
            let (s, e) = slot_times(&field, &w.start, &w.end)?;
            let mut days = w.days.clone();
            days.sort();
            days.dedup();
            for d in days {
                weekly.push((d.weekday(), s, e));
                weekly_fields.push(field.clone());
            }
        }
        let mut once = Vec::new();
        let mut once_fields = Vec::new();
        for (i, o) in self.once.iter().enumerate() {
            let field = format!("once[{i}]");
            let date = parse_date(&format!("{field}.date"), &o.date)?;
            let (s, e) = slot_times(&field, &o.start, &o.end)?;
            once.push((date, s, e));
            once_fields.push(field);
        }
        for wd in [
            Weekday::Monday,
            Weekday::Tuesday,
            Weekday::Wednesday,
            Weekday::Thursday,
            Weekday::Friday,
            Weekday::Saturday,
            Weekday::Sunday,
        ] {
            let day: Vec<_> = weekly
                .iter()
                .zip(&weekly_fields)
                .filter(|((d, _, _), _)| *d == wd)
                .map(|((_, s, e), f)| (*s, *e, f.as_str()))
                .collect();
            if let Some((a, b)) = overlapping(day) {
                return Err(FieldError::new(b, format!("overlaps {a} on the same day")));
            }
        }
        for date in once.iter().map(|o| o.0) {
            let mut day: Vec<_> = weekly
                .iter()
                .zip(&weekly_fields)
                .filter(|((d, _, _), _)| *d == date.weekday())
                .map(|((_, s, e), f)| (*s, *e, f.as_str()))
                .collect();
            day.extend(
                once.iter()
                    .zip(&once_fields)
                    .filter(|((d, _, _), _)| *d == date)
                    .map(|((_, s, e), f)| (*s, *e, f.as_str())),
            );
            if let Some((a, b)) = overlapping(day) {
                return Err(FieldError::new(b, format!("overlaps {a} on {date}")));
            }
        }
        Ok(Compiled {
            tz,
            zone: self.zone.clone(),
            weekly,
            once,
            warmup: i64::from(self.warmup_minutes) * 60,
            grace: i64::from(self.grace_minutes) * 60,
            outside: self.outside,
        })
    }
}

impl Compiled {
    /// The time zone's IANA name.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// Seconds of warm-up before a session.
    pub fn warmup_secs(&self) -> i64 {
        self.warmup
    }

    /// Seconds between the graceful shutdown and the stop.
    pub fn grace_secs(&self) -> i64 {
        self.grace
    }

    /// What students may do outside slots.
    pub fn outside(&self) -> Outside {
        self.outside
    }

    /// True when the timetable has no slot at all.
    pub fn is_empty(&self) -> bool {
        self.weekly.is_empty() && self.once.is_empty()
    }

    fn local_date(&self, at: i64) -> Option<Date> {
        Some(Timestamp::from_second(at).ok()?.to_zoned(self.tz.clone()).date())
    }

    /// The instant of a local date and time. A time that does not exist (the hour skipped when clocks
    /// go forward) is taken as the same distance past the gap; a time that happens twice (clocks go
    /// back) as its first occurrence.
    fn instant(&self, date: Date, time: Time) -> Option<i64> {
        let dt: DateTime = date.to_datetime(time);
        Some(self.tz.to_ambiguous_timestamp(dt).compatible().ok()?.as_second())
    }

    /// The class's sessions that overlap `[from, to)` (at most [`MAX_SPAN_DAYS`] from `from`), in
    /// order. Slots that follow each other with less than the warm-up plus the grace between them are
    /// one session: the VMs would not get a rest between them.
    pub fn sessions(&self, from: i64, to: i64) -> Vec<Interval> {
        let to = to.min(from.saturating_add(MAX_SPAN_DAYS * DAY));
        let (Some(first), Some(last)) = (
            self.local_date(from.saturating_sub(DAY)),
            self.local_date(to.saturating_add(DAY)),
        ) else {
            return Vec::new();
        };
        let mut raw = Vec::new();
        let mut date = first;
        while date <= last {
            let wd = date.weekday();
            let slots = self
                .weekly
                .iter()
                .filter(|(d, _, _)| *d == wd)
                .map(|(_, s, e)| (*s, *e))
                .chain(
                    self.once
                        .iter()
                        .filter(|(d, _, _)| *d == date)
                        .map(|(_, s, e)| (*s, *e)),
                );
            for (s, e) in slots {
                if let (Some(a), Some(b)) = (self.instant(date, s), self.instant(date, e))
                    && b > a
                {
                    raw.push(Interval { start: a, end: b });
                }
            }
            match date.tomorrow() {
                Ok(d) => date = d,
                Err(_) => break,
            }
        }
        raw.sort();
        let mut merged: Vec<Interval> = Vec::with_capacity(raw.len());
        for i in raw {
            match merged.last_mut() {
                Some(m) if i.start - self.warmup <= m.end + self.grace => m.end = m.end.max(i.end),
                _ => merged.push(i),
            }
        }
        merged.retain(|i| i.end > from && i.start < to);
        merged
    }

    /// The session `at` falls in, if any.
    pub fn session_at(&self, at: i64) -> Option<Interval> {
        self.sessions(at, at + 1)
            .into_iter()
            .find(|i| i.start <= at && at < i.end)
    }

    /// The first session that starts after `at` (within [`MAX_SPAN_DAYS`]).
    pub fn next_session(&self, at: i64) -> Option<Interval> {
        self.sessions(at, at + MAX_SPAN_DAYS * DAY)
            .into_iter()
            .find(|i| i.start > at)
    }

    /// The class's own time around each session, `[start - warm-up, end + grace)`: running time in
    /// it does not count against a student's usage-hour quota.
    pub fn class_time(&self, from: i64, to: i64) -> Vec<Interval> {
        let mut out: Vec<Interval> = Vec::new();
        for s in self.sessions(from.saturating_sub(self.warmup), to.saturating_add(self.grace)) {
            let i = Interval {
                start: s.start - self.warmup,
                end: s.end + self.grace,
            };
            match out.last_mut() {
                Some(m) if i.start <= m.end => m.end = m.end.max(i.end),
                _ => out.push(i),
            }
        }
        out
    }

    /// Seconds of `[a, b)` in the class's own time ([`Compiled::class_time`]).
    pub fn class_secs(&self, a: i64, b: i64) -> u64 {
        if b <= a {
            return 0;
        }
        self.class_time(a, b).iter().map(|i| i.overlap(a, b)).sum()
    }

    /// A local date and time for people: `2027-01-18 09:30 Europe/London`.
    pub fn local_text(&self, at: i64) -> String {
        match Timestamp::from_second(at) {
            Ok(ts) => format!(
                "{} {}",
                ts.to_zoned(self.tz.clone()).strftime("%Y-%m-%d %H:%M"),
                self.zone
            ),
            Err(_) => format!("{at}"),
        }
    }
}
