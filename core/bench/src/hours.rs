//! `hours`: the class-hours timer wheel with 1,000 classes of 5 weekly slots each (three time zones):
//! the time to plan them all, the memory the plans hold, and one simulated week — how often the
//! scheduler wakes (it sleeps until the next action; nothing runs between events) and the CPU time
//! all of the week's actions cost to take off the wheel.

use std::collections::BTreeMap;
use std::time::Instant;

use schedule::{Day, Mark, Timetable, WeeklySlot, Wheel};

/// Resident memory of this process, MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn timetable(i: usize) -> anyhow::Result<schedule::Compiled> {
    let hour = 8 + (i % 9);
    let minute = (i % 4) * 15;
    let t = Timetable {
        zone: ["Europe/London", "America/New_York", "Europe/Berlin"][i % 3].into(),
        weekly: [Day::Mon, Day::Tue, Day::Wed, Day::Thu, Day::Fri]
            .iter()
            .map(|d| WeeklySlot {
                days: vec![*d],
                start: format!("{hour:02}:{minute:02}"),
                end: format!("{:02}:{minute:02}", hour + 1),
            })
            .collect(),
        ..Timetable::default()
    };
    Ok(t.compile()?)
}

/// Runs the benchmark with `classes` classes.
pub fn bench_hours(classes: usize) -> anyhow::Result<()> {
    println!("== class hours ({classes} classes x 5 weekly slots, one timer wheel, one simulated week)");
    // Monday 2027-01-18 00:00 UTC.
    let start = 1_800_230_400_i64;
    let tables: Vec<_> = (0..classes).map(timetable).collect::<anyhow::Result<_>>()?;
    let rss0 = rss_mib();
    let t = Instant::now();
    let mut wheel = Wheel::default();
    for (i, tt) in tables.into_iter().enumerate() {
        wheel.set_class(&format!("class-{i:04}"), tt, Mark::default(), start);
    }
    let plan_ms = t.elapsed().as_secs_f64() * 1000.0;
    let rss_planned = rss_mib();
    let queued = wheel.queued();
    let week = 7 * 86_400;
    let mut wakes_per_hour: BTreeMap<i64, u32> = BTreeMap::new();
    let mut actions = 0usize;
    let t = Instant::now();
    while let Some(next) = wheel.next_wake() {
        if next > start + week {
            break;
        }
        *wakes_per_hour.entry((next - start) / 3600).or_default() += 1;
        actions += wheel.pop_due(next).len();
    }
    let cpu_ms = t.elapsed().as_secs_f64() * 1000.0;
    let wakes: u32 = wakes_per_hour.values().sum();
    let busiest = wakes_per_hour.values().copied().max().unwrap_or(0);
    let idle_hours = 7 * 24 - wakes_per_hour.len();
    println!(
        "planning: {classes} classes in {plan_ms:.1} ms; {queued} entries queued for the week; memory +{:.1} MiB ({:.0} bytes per class)",
        rss_planned - rss0,
        (rss_planned - rss0) * 1024.0 * 1024.0 / classes.max(1) as f64
    );
    println!(
        "one week: {actions} actions ({} expected: warm-up, two warnings, shutdown, stop per session) in {cpu_ms:.1} ms of CPU",
        classes * 5 * 5
    );
    println!(
        "wake-ups: {wakes} in the week, {:.1} per hour on average, {busiest} in the busiest hour; {idle_hours} of 168 hours without one \
         (between wake-ups the scheduler sleeps: no loop per class)",
        f64::from(wakes) / 168.0
    );
    Ok(())
}
