//! Timetables in a class's time zone: sessions keep their local time across daylight saving changes
//! (Europe/London and America/New_York), times that are skipped or happen twice, merging of slots
//! close together, and every kind of bad input named by its field.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use jiff::Timestamp;
use schedule::{Day, OneOffSlot, Timetable, WeeklySlot};

fn ts(s: &str) -> i64 {
    s.parse::<Timestamp>().unwrap().as_second()
}

fn weekly(days: &[Day], start: &str, end: &str) -> WeeklySlot {
    WeeklySlot {
        days: days.to_vec(),
        start: start.into(),
        end: end.into(),
    }
}

fn once(date: &str, start: &str, end: &str) -> OneOffSlot {
    OneOffSlot {
        date: date.into(),
        start: start.into(),
        end: end.into(),
    }
}

fn table(zone: &str, w: Vec<WeeklySlot>, o: Vec<OneOffSlot>) -> Timetable {
    Timetable {
        zone: zone.into(),
        weekly: w,
        once: o,
        ..Timetable::default()
    }
}

#[test]
fn a_monday_slot_keeps_its_local_time_when_london_moves_to_summer_time() {
    let tt = table(
        "Europe/London",
        vec![weekly(&[Day::Mon], "09:00", "10:00")],
        vec![],
    )
    .compile()
    .unwrap();
    // Clocks go forward on Sunday 2027-03-28: the Monday before is GMT, the Monday after BST.
    let s = tt.sessions(ts("2027-03-21T00:00:00Z"), ts("2027-04-05T00:00:00Z"));
    let starts: Vec<i64> = s.iter().map(|i| i.start).collect();
    assert_eq!(
        starts,
        vec![ts("2027-03-22T09:00:00Z"), ts("2027-03-29T08:00:00Z")]
    );
    assert!(s.iter().all(|i| i.end - i.start == 3600), "{s:?}");
    assert_eq!(tt.local_text(s[1].start), "2027-03-29 09:00 Europe/London");
}

#[test]
fn a_session_over_the_new_york_fall_back_lasts_its_real_length() {
    // 2027-11-07: 01:00–02:00 happens twice; 00:30 EDT to 03:00 EST is three and a half real hours.
    let tt = table(
        "America/New_York",
        vec![],
        vec![once("2027-11-07", "00:30", "03:00")],
    )
    .compile()
    .unwrap();
    let s = tt.sessions(ts("2027-11-06T00:00:00Z"), ts("2027-11-09T00:00:00Z"));
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0].start, ts("2027-11-07T04:30:00Z"));
    assert_eq!(s[0].end, ts("2027-11-07T08:00:00Z"));
}

#[test]
fn a_start_in_the_skipped_new_york_hour_moves_past_the_gap() {
    // 2027-03-14: 02:00–03:00 does not exist; 02:30 is read as 03:30 EDT.
    let tt = table(
        "America/New_York",
        vec![],
        vec![once("2027-03-14", "02:30", "04:00")],
    )
    .compile()
    .unwrap();
    let s = tt.sessions(ts("2027-03-13T00:00:00Z"), ts("2027-03-16T00:00:00Z"));
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0].start, ts("2027-03-14T07:30:00Z"));
    assert_eq!(s[0].end, ts("2027-03-14T08:00:00Z"));
}

#[test]
fn a_slot_starting_in_the_repeated_london_hour_starts_at_its_first_occurrence() {
    // 2027-10-31: 01:00–02:00 happens twice in London; 01:00 is the first (BST, 00:00 UTC).
    let tt = table(
        "Europe/London",
        vec![weekly(&[Day::Sun], "01:00", "03:00")],
        vec![],
    )
    .compile()
    .unwrap();
    let s = tt.sessions(ts("2027-10-30T00:00:00Z"), ts("2027-11-01T00:00:00Z"));
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(
        (s[0].start, s[0].end),
        (ts("2027-10-31T00:00:00Z"), ts("2027-10-31T03:00:00Z"))
    );
}

#[test]
fn slots_closer_than_warm_up_and_grace_are_one_session() {
    let tt = table(
        "UTC",
        vec![
            weekly(&[Day::Tue], "09:00", "10:00"),
            weekly(&[Day::Tue], "10:10", "11:00"),
            weekly(&[Day::Tue], "13:00", "14:00"),
        ],
        vec![],
    )
    .compile()
    .unwrap();
    let s = tt.sessions(ts("2027-01-18T00:00:00Z"), ts("2027-01-20T00:00:00Z"));
    let spans: Vec<(i64, i64)> = s.iter().map(|i| (i.start, i.end)).collect();
    assert_eq!(
        spans,
        vec![
            (ts("2027-01-19T09:00:00Z"), ts("2027-01-19T11:00:00Z")),
            (ts("2027-01-19T13:00:00Z"), ts("2027-01-19T14:00:00Z")),
        ]
    );
    assert_eq!(
        tt.session_at(ts("2027-01-19T10:05:00Z")).map(|i| i.start),
        Some(ts("2027-01-19T09:00:00Z"))
    );
    assert_eq!(
        tt.next_session(ts("2027-01-19T12:00:00Z")).map(|i| i.start),
        Some(ts("2027-01-19T13:00:00Z"))
    );
}

fn field_of(t: Timetable) -> (String, String) {
    let e = t.compile().unwrap_err();
    (e.field, e.message)
}

#[test]
fn bad_timetables_are_refused_naming_the_field() {
    let (f, m) = field_of(table("Europe/Atlantis", vec![], vec![]));
    assert_eq!(f, "zone");
    assert!(m.contains("Europe/Atlantis"), "{m}");

    let (f, m) = field_of(table("UTC", vec![weekly(&[Day::Mon], "10:00", "09:00")], vec![]));
    assert_eq!(f, "weekly[0].end");
    assert!(m.contains("ends at 09:00 but starts at 10:00"), "{m}");

    let (f, _) = field_of(table("UTC", vec![weekly(&[Day::Mon], "09:00", "09:00")], vec![]));
    assert_eq!(f, "weekly[0].end");

    let (f, m) = field_of(table(
        "UTC",
        vec![
            weekly(&[Day::Mon, Day::Wed], "09:00", "11:00"),
            weekly(&[Day::Wed], "10:00", "12:00"),
        ],
        vec![],
    ));
    assert_eq!(f, "weekly[1]");
    assert!(m.contains("overlaps weekly[0]"), "{m}");

    // 2027-01-20 is a Wednesday.
    let (f, m) = field_of(table(
        "UTC",
        vec![weekly(&[Day::Wed], "09:00", "11:00")],
        vec![once("2027-01-20", "10:30", "12:00")],
    ));
    assert_eq!(f, "once[0]");
    assert!(m.contains("weekly[0]") && m.contains("2027-01-20"), "{m}");

    for bad in ["9:00", "24:00", "09:60", "09-00", "", "09:00:00"] {
        let (f, m) = field_of(table("UTC", vec![weekly(&[Day::Mon], bad, "23:00")], vec![]));
        assert_eq!(f, "weekly[0].start", "{bad:?}");
        assert!(m.contains("HH:MM"), "{m}");
    }
    let (f, _) = field_of(table("UTC", vec![], vec![once("2027-02-30", "09:00", "10:00")]));
    assert_eq!(f, "once[0].date");
    let (f, _) = field_of(table("UTC", vec![weekly(&[], "09:00", "10:00")], vec![]));
    assert_eq!(f, "weekly[0].days");
    let (f, _) = field_of(table(
        "UTC",
        vec![weekly(&[Day::Mon], "09:00", "10:00"); 51],
        vec![],
    ));
    assert_eq!(f, "weekly");
    let (f, _) = field_of(Timetable {
        warmup_minutes: 121,
        ..Timetable::default()
    });
    assert_eq!(f, "warmup_minutes");
    let (f, _) = field_of(Timetable {
        grace_minutes: 61,
        ..Timetable::default()
    });
    assert_eq!(f, "grace_minutes");
}

#[test]
fn the_wire_form_round_trips_and_refuses_unknown_fields() {
    let t = table(
        "Europe/Berlin",
        vec![weekly(&[Day::Mon, Day::Thu], "08:15", "09:45")],
        vec![once("2027-02-01", "14:00", "16:00")],
    );
    let json = serde_json::to_string(&t).unwrap();
    assert!(json.contains(r#""days":["mon","thu"]"#), "{json}");
    assert!(json.contains(r#""outside":"students_may_start""#), "{json}");
    let back: Timetable = serde_json::from_str(&json).unwrap();
    assert_eq!(back, t);
    assert!(serde_json::from_str::<Timetable>(r#"{"zone":"UTC","slots":[]}"#).is_err());
    let d: Timetable = serde_json::from_str("{}").unwrap();
    assert_eq!(
        (d.warmup_minutes, d.grace_minutes, d.zone.as_str()),
        (10, 5, "UTC")
    );
}
