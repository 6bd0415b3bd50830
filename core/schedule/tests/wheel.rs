//! The timer wheel: every action of a session in order, at its local time across a daylight saving
//! change, a restart in the middle of a session or after one ended while Proxlab was down (nothing
//! missed, nothing repeated), replanning past the horizon, and 1,000 classes on one wheel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use jiff::Timestamp;
use schedule::{Action, Day, Due, Mark, Timetable, WeeklySlot, Wheel};

fn ts(s: &str) -> i64 {
    s.parse::<Timestamp>().unwrap().as_second()
}

fn monday_nine(zone: &str) -> schedule::Compiled {
    Timetable {
        zone: zone.into(),
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

/// Runs the wheel from `from` to `to` as the runner would: sleep to the next wake, do what is due,
/// persist the mark.
fn run(w: &mut Wheel, to: i64, marks: &mut std::collections::HashMap<String, Mark>) -> Vec<Due> {
    let mut out = Vec::new();
    while let Some(next) = w.next_wake() {
        if next > to {
            break;
        }
        for d in w.pop_due(next) {
            marks.insert(d.class.to_string(), d.mark());
            out.push(d);
        }
    }
    out
}

fn seen(d: &[Due]) -> Vec<(Action, i64)> {
    d.iter().map(|d| (d.action, d.run_at)).collect()
}

#[test]
fn a_session_gets_warm_up_warnings_shutdown_and_stop_in_order() {
    let mut w = Wheel::default();
    let mut marks = Default::default();
    assert!(
        w.set_class(
            "c1",
            monday_nine("UTC"),
            Mark::default(),
            ts("2027-01-17T12:00:00Z")
        )
        .is_empty()
    );
    let d = run(&mut w, ts("2027-01-18T23:00:00Z"), &mut marks);
    assert_eq!(
        seen(&d),
        vec![
            (Action::WarmUp, ts("2027-01-18T08:50:00Z")),
            (Action::WarnTen, ts("2027-01-18T09:50:00Z")),
            (Action::WarnTwo, ts("2027-01-18T09:58:00Z")),
            (Action::Shutdown, ts("2027-01-18T10:00:00Z")),
            (Action::Stop, ts("2027-01-18T10:05:00Z")),
        ]
    );
}

#[test]
fn the_warm_up_follows_local_time_over_the_london_change() {
    let mut w = Wheel::default();
    let mut marks = Default::default();
    w.set_class(
        "c1",
        monday_nine("Europe/London"),
        Mark::default(),
        ts("2027-03-20T00:00:00Z"),
    );
    let d = run(&mut w, ts("2027-04-01T00:00:00Z"), &mut marks);
    let warm: Vec<i64> = d
        .iter()
        .filter(|d| d.action == Action::WarmUp)
        .map(|d| d.run_at)
        .collect();
    assert_eq!(warm, vec![ts("2027-03-22T08:50:00Z"), ts("2027-03-29T07:50:00Z")]);
}

#[test]
fn a_restart_in_the_middle_of_a_session_neither_misses_nor_repeats() {
    let tt = || monday_nine("UTC");
    // Down before the warm-up, back at 09:30: the warm-up is done at once, once.
    let mark = Mark {
        at: ts("2027-01-11T10:05:00Z"),
        action: Some(Action::Stop),
    };
    let mut w = Wheel::default();
    let now = ts("2027-01-18T09:30:00Z");
    let caught = w.set_class("c1", tt(), mark, now);
    assert_eq!(seen(&caught), vec![(Action::WarmUp, now)]);
    let mark = caught[0].mark();
    // Killed right after it, back at 09:40 with that mark: nothing again.
    let mut w = Wheel::default();
    assert!(
        w.set_class("c1", tt(), mark, ts("2027-01-18T09:40:00Z"))
            .is_empty()
    );
    let mut marks = Default::default();
    let d = run(&mut w, ts("2027-01-18T12:00:00Z"), &mut marks);
    assert_eq!(
        d.iter().map(|d| d.action).collect::<Vec<_>>(),
        vec![Action::WarnTen, Action::WarnTwo, Action::Shutdown, Action::Stop]
    );
    // Down from 09:55 to 09:59: the 10-minute warning is not repeated, the 2-minute one is gone.
    let mark = Mark {
        at: ts("2027-01-18T09:50:00Z"),
        action: Some(Action::WarnTen),
    };
    let mut w = Wheel::default();
    assert!(
        w.set_class("c1", tt(), mark, ts("2027-01-18T09:59:00Z"))
            .is_empty()
    );
    let d = run(&mut w, ts("2027-01-18T12:00:00Z"), &mut marks);
    assert_eq!(
        d.iter().map(|d| d.action).collect::<Vec<_>>(),
        vec![Action::Shutdown, Action::Stop]
    );
}

#[test]
fn a_session_that_ended_while_down_is_shut_down_then_stopped_after_the_grace() {
    let mark = Mark {
        at: ts("2027-01-18T09:50:00Z"),
        action: Some(Action::WarnTen),
    };
    let mut w = Wheel::default();
    let now = ts("2027-01-18T11:00:00Z");
    let caught = w.set_class("c1", monday_nine("UTC"), mark, now);
    assert_eq!(seen(&caught), vec![(Action::Shutdown, now)]);
    let mut marks = Default::default();
    let d = run(&mut w, ts("2027-01-18T12:00:00Z"), &mut marks);
    assert_eq!(seen(&d), vec![(Action::Stop, now + 300)]);
    // Down again after the shutdown, before the stop: only the stop is left.
    let mut w = Wheel::default();
    let caught = w.set_class("c1", monday_nine("UTC"), caught[0].mark(), now + 60);
    assert_eq!(seen(&caught), vec![(Action::Stop, now + 60)]);
    // A new class made after a session ended does nothing for it.
    let mut w = Wheel::default();
    assert!(
        w.set_class("c2", monday_nine("UTC"), Mark::default(), now)
            .is_empty()
    );
}

#[test]
fn the_wheel_replans_past_its_horizon() {
    let mut w = Wheel::new(86_400);
    let mut marks = Default::default();
    w.set_class(
        "c1",
        monday_nine("UTC"),
        Mark::default(),
        ts("2027-01-01T00:00:00Z"),
    );
    let d = run(&mut w, ts("2027-01-29T00:00:00Z"), &mut marks);
    let warm = d.iter().filter(|d| d.action == Action::WarmUp).count();
    assert_eq!(
        warm, 4,
        "the Mondays of January 2027 after the 1st: 4, 11, 18, 25"
    );
    w.remove_class("c1");
    assert_eq!((w.classes(), w.queued(), w.next_wake()), (0, 0, None));
}

#[test]
fn a_thousand_classes_share_one_queue_and_wake_only_for_events() {
    let mut w = Wheel::default();
    let start = ts("2027-01-17T00:00:00Z");
    for i in 0..1000 {
        let days = [Day::Mon, Day::Tue, Day::Wed, Day::Thu, Day::Fri];
        let hour = 8 + (i % 8);
        let tt = Timetable {
            zone: ["Europe/London", "America/New_York", "Asia/Tokyo"][i % 3].into(),
            weekly: days
                .iter()
                .map(|d| WeeklySlot {
                    days: vec![*d],
                    start: format!("{hour:02}:00"),
                    end: format!("{hour:02}:45"),
                })
                .collect(),
            ..Timetable::default()
        }
        .compile()
        .unwrap();
        w.set_class(&format!("class-{i}"), tt, Mark::default(), start);
    }
    assert_eq!(w.classes(), 1000);
    let mut wakes = std::collections::BTreeSet::new();
    let mut n = 0;
    while let Some(next) = w.next_wake() {
        if next > start + 7 * 86_400 {
            break;
        }
        wakes.insert(next);
        n += w.pop_due(next).len();
    }
    // 1,000 classes × 5 sessions × 5 actions in the week, all on a few shared minutes.
    assert_eq!(n, 25_000);
    assert!(wakes.len() < 1000, "{} wake-ups in a week", wakes.len());
}
