//! Usage-hour accounting: only running time outside class time counts, repeated or overlapping
//! transitions are never counted twice, a record reloaded after a crash continues where it was, the
//! time a quota runs out skips class time, and a quota below what was used is refused by field.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use jiff::Timestamp;
use proptest::prelude::*;
use schedule::{Day, Quota, Timetable, Usage, WeeklySlot, duration_text, runs_out_at};

fn ts(s: &str) -> i64 {
    s.parse::<Timestamp>().unwrap().as_second()
}

fn monday_nine() -> schedule::Compiled {
    Timetable {
        zone: "UTC".into(),
        weekly: vec![WeeklySlot {
            days: vec![Day::Mon],
            start: "09:00".into(),
            end: "10:00".into(),
        }],
        ..Timetable::default()
    }
    .compile()
    .unwrap()
}

#[test]
fn only_time_outside_class_time_counts() {
    let tt = monday_nine();
    let mut u = Usage::default();
    assert!(u.started(ts("2027-01-18T08:00:00Z")));
    // 08:00–12:00 is 240 minutes; 08:50–10:05 (warm-up, session, grace) is the class's.
    assert_eq!(u.used_at(ts("2027-01-18T12:00:00Z"), Some(&tt)), 165 * 60);
    assert_eq!(u.stopped(ts("2027-01-18T12:00:00Z"), Some(&tt)), 165 * 60);
    assert_eq!(u.used_secs, 165 * 60);
    assert_eq!(u.last_start, Some(ts("2027-01-18T08:00:00Z")));
    let q = Quota {
        hours: 3,
        extra_minutes: 5,
    };
    assert_eq!(q.remaining(&u, ts("2027-01-18T12:00:00Z"), Some(&tt)), 20 * 60);
    assert_eq!(duration_text(q.remaining(&u, 0, Some(&tt))), "20 min");
    assert_eq!(duration_text(3 * 3600 + 20 * 60), "3 h 20 min");
    assert_eq!(duration_text(7200), "2 h");
}

#[test]
fn repeated_transitions_are_not_counted_twice_and_a_reload_continues() {
    let mut u = Usage::default();
    assert!(u.started(100));
    assert!(!u.started(200), "a start seen while running keeps the run");
    // The record as persisted, read back after kill -9.
    let mut u: Usage = serde_json::from_str(&serde_json::to_string(&u).unwrap()).unwrap();
    assert_eq!(u.stopped(400, None), 300);
    assert_eq!(u.stopped(500, None), 0, "a stop seen while stopped adds nothing");
    assert!(u.started(1000));
    assert_eq!(
        u.stopped(900, None),
        0,
        "a stop earlier than its start adds nothing"
    );
    assert_eq!(u.used_secs, 300);
}

#[test]
fn a_quota_runs_out_later_when_class_time_comes_in_between() {
    let tt = monday_nine();
    let now = ts("2027-01-18T08:30:00Z");
    assert_eq!(runs_out_at(10 * 60, now, Some(&tt)), ts("2027-01-18T08:40:00Z"));
    // 20 min until class time at 08:50, the other 10 after it ends at 10:05.
    assert_eq!(runs_out_at(30 * 60, now, Some(&tt)), ts("2027-01-18T10:15:00Z"));
    assert_eq!(runs_out_at(30 * 60, now, None), now + 1800);
    // Inside class time, the count starts when it ends.
    assert_eq!(
        runs_out_at(60, ts("2027-01-18T09:30:00Z"), Some(&tt)),
        ts("2027-01-18T10:06:00Z")
    );
}

#[test]
fn a_quota_below_what_was_used_is_refused_naming_the_field() {
    let e = Quota {
        hours: 2,
        extra_minutes: 0,
    }
    .check("quota_hours", 3 * 3600)
    .unwrap_err();
    assert_eq!(e.field, "quota_hours");
    assert!(
        e.message
            .contains("2 h is less than a student has used already (3 h)"),
        "{}",
        e.message
    );
    assert!(
        Quota {
            hours: 3,
            extra_minutes: 0
        }
        .check("quota_hours", 3 * 3600)
        .is_ok()
    );
    assert_eq!(
        Quota {
            hours: 10_001,
            extra_minutes: 0
        }
        .check("quota_hours", 0)
        .unwrap_err()
        .field,
        "quota_hours"
    );
}

proptest! {
    /// Whatever order transitions arrive in, what is counted is the length of the runs the record
    /// opened and closed, never more than the time that passed.
    #[test]
    fn counted_time_is_the_sum_of_runs(events in proptest::collection::vec((any::<bool>(), 0i64..10_000), 0..60)) {
        let mut u = Usage::default();
        let mut t = 0i64;
        let mut expect = 0u64;
        let mut open: Option<i64> = None;
        for (start, dt) in events {
            t += dt;
            if start {
                u.started(t);
                if open.is_none() { open = Some(t); }
            } else {
                u.stopped(t, None);
                if let Some(s) = open.take() { expect += (t - s) as u64; }
            }
        }
        prop_assert_eq!(u.used_secs, expect);
        prop_assert!(u.used_at(t, None) <= t as u64);
    }
}
