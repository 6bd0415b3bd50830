//! The class-hours runner against a fake PVE cluster (one per test binary), a real sled database
//! that is reopened between runners, and a clock the test moves: the warm-up starts the class's VMs
//! and the end shuts them down; a restart in the middle of a session neither repeats nor misses an
//! action; usage is on disk at each power transition; a start with no hours left is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};

use hours::{ClassHours, Clock, Hours, NoticeReason};
use ops::{Ops, OpsConfig};
use pve::{Auth, PowerAction, PveClient, PveConfig, Secret, Tls};
use schedule::{Day, Outside, Timetable, WeeklySlot};
use serde_json::{Value, json};
use store::{AssignmentRecord, AssignmentRole, ClassRecord, Store, usage_key};
use sync::{AgentDiscovery, ClusterHandle, Inventory, SyncConfig, Syncer};
use testkit::{ClusterSpec, FakeCluster};

/// Monday 2027-01-18 08:00 UTC.
const MONDAY_8: i64 = 1_800_259_200;
const MIN: i64 = 60;

fn guest(vmid: u32) -> Value {
    json!({"vmid": vmid, "name": format!("hours-{vmid}"), "node": "pve1", "status": "stopped",
        "config": {"memory": 512, "cores": 1, "scsi0": format!("local-lvm:vm-{vmid}-disk-0,size=4G")}})
}

/// The fake cluster of this test binary, with the VMs of every test.
async fn cluster() -> &'static FakeCluster {
    static FAKE: OnceLock<FakeCluster> = OnceLock::new();
    tokio::task::spawn_blocking(|| {
        FAKE.get_or_init(|| {
            let spec = ClusterSpec {
                extra_guests: [6101, 6102, 6103, 6201].into_iter().map(guest).collect(),
                ..ClusterSpec::lab()
            };
            FakeCluster::start(spec).unwrap()
        })
    })
    .await
    .unwrap()
}

async fn syncer(fake: &FakeCluster) -> (Arc<Syncer>, Ops) {
    let client = PveClient::new(PveConfig::new(
        fake.url.parse().unwrap(),
        Auth::Token {
            id: fake.token_id.clone(),
            secret: Secret::new(fake.token_secret.clone()),
        },
        Tls::CaFile(fake.ca_file.clone()),
    ))
    .unwrap();
    let inventory = Inventory::load(None, &[("lab".into(), "Lab".into())]).unwrap();
    let handles = vec![ClusterHandle {
        id: "lab".into(),
        name: "Lab".into(),
        client,
    }];
    let syncer = Syncer::new(
        inventory,
        handles,
        SyncConfig::default(),
        Arc::new(AgentDiscovery),
    );
    for r in syncer.sync_once().await {
        r.unwrap();
    }
    let ops = Ops::new(syncer.clone(), OpsConfig::default());
    (syncer, ops)
}

fn class(store: &Store, id: &str, name: &str, vms: &[(u32, &str, AssignmentRole)]) {
    store
        .classes
        .insert(
            id,
            &ClassRecord {
                id: id.into(),
                name: name.into(),
                owner: "alice".into(),
                cluster: "lab".into(),
                ..ClassRecord::default()
            },
        )
        .unwrap();
    for (vmid, user, role) in vms {
        let aid = format!("{id}-{vmid}");
        store
            .assignments
            .insert(
                &aid,
                &AssignmentRecord {
                    id: aid.clone(),
                    cluster: "lab".into(),
                    vmid: *vmid,
                    user: (*user).into(),
                    class_id: Some(id.into()),
                    role: *role,
                    ..AssignmentRecord::default()
                },
            )
            .unwrap();
    }
}

fn clock(t: &Arc<AtomicI64>) -> Clock {
    let t = t.clone();
    Arc::new(move || t.load(Ordering::SeqCst))
}

fn status(fake: &FakeCluster, vmid: u32) -> String {
    fake.state().unwrap()["guests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["vmid"] == vmid)
        .map(|g| g["status"].as_str().unwrap_or_default().to_string())
        .unwrap()
}

fn posts(fake: &FakeCluster, since: usize, vmids: &[u32], action: &str) -> usize {
    fake.requests_since(since)
        .unwrap()
        .iter()
        .filter(|r| {
            r["method"] == "POST"
                && vmids.iter().any(|v| {
                    r["path"]
                        .as_str()
                        .is_some_and(|p| p.ends_with(&format!("/{v}/status/{action}")))
                })
        })
        .count()
}

async fn move_to(hours: &Hours, t: &AtomicI64, at: i64) {
    t.store(at, Ordering::SeqCst);
    hours.nudge();
    hours.settle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_up_starts_the_class_end_shuts_it_down_and_a_restart_neither_repeats_nor_misses() {
    let fake = cluster().await;
    let (syncer, ops) = syncer(fake).await;
    let dir = tempfile::tempdir().unwrap();
    let vms = [6101, 6102, 6103];
    let store = Store::open(dir.path()).unwrap();
    class(
        &store,
        "net101",
        "Networking 101",
        &[
            (6101, "alice", AssignmentRole::Teacher),
            (6102, "bob", AssignmentRole::Student),
            (6103, "carol", AssignmentRole::Student),
        ],
    );
    let t = Arc::new(AtomicI64::new(MONDAY_8));
    let hours = Hours::start(store.clone(), ops.clone(), syncer.inventory().clone(), clock(&t));
    let settings = ClassHours {
        timetable: Timetable {
            zone: "UTC".into(),
            weekly: vec![WeeklySlot {
                days: vec![Day::Mon],
                start: "09:00".into(),
                end: "10:00".into(),
            }],
            warmup_minutes: 10,
            grace_minutes: 5,
            ..Timetable::default()
        },
        ..ClassHours::default()
    };
    hours.set_settings("net101", Some(&settings)).await.unwrap();
    hours.settle().await;
    assert!(vms.iter().all(|v| status(fake, *v) == "stopped"));

    // 08:50: the warm-up starts the teacher's and the students' VMs, once each.
    let before = fake.request_count().unwrap();
    move_to(&hours, &t, MONDAY_8 + 50 * MIN).await;
    for v in vms {
        assert_eq!(status(fake, v), "running", "VM {v} after the warm-up");
    }
    assert_eq!(posts(fake, before, &vms, "start"), 3);

    // 09:20: Proxlab goes down and comes back with the store reopened; nothing is started again.
    move_to(&hours, &t, MONDAY_8 + 80 * MIN).await;
    hours.shutdown().await;
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    let before = fake.request_count().unwrap();
    let hours = Hours::start(store.clone(), ops.clone(), syncer.inventory().clone(), clock(&t));
    hours.settle().await;
    assert_eq!(
        posts(fake, before, &vms, "start"),
        0,
        "the warm-up is not repeated"
    );

    // 09:50: the ten-minute warning goes out to the class.
    let mut notices = hours.subscribe();
    move_to(&hours, &t, MONDAY_8 + 110 * MIN).await;
    let n = notices.try_recv().unwrap();
    assert_eq!((n.reason, n.minutes_left), (NoticeReason::SessionEnds, 10));
    assert!(n.message.contains("Networking 101"), "{}", n.message);

    // Down again at 09:55 and back at 10:02, after the end: the missed shutdown is done now.
    move_to(&hours, &t, MONDAY_8 + 115 * MIN).await;
    hours.shutdown().await;
    drop(store);
    t.store(MONDAY_8 + 122 * MIN, Ordering::SeqCst);
    let store = Store::open(dir.path()).unwrap();
    let before = fake.request_count().unwrap();
    let hours = Hours::start(store.clone(), ops.clone(), syncer.inventory().clone(), clock(&t));
    hours.settle().await;
    for v in vms {
        assert_eq!(status(fake, v), "stopped", "VM {v} after the missed shutdown");
    }
    assert_eq!(posts(fake, before, &vms, "shutdown"), 3);

    // 10:06: the stop finds nothing running and sends nothing; a restart after it repeats nothing.
    let before = fake.request_count().unwrap();
    move_to(&hours, &t, MONDAY_8 + 126 * MIN).await;
    hours.shutdown().await;
    let hours = Hours::start(store.clone(), ops.clone(), syncer.inventory().clone(), clock(&t));
    hours.settle().await;
    assert_eq!(
        posts(fake, before, &vms, "stop") + posts(fake, before, &vms, "shutdown"),
        0
    );
    let mark = store.hours_marks.get("net101").unwrap().unwrap();
    assert_eq!(mark.action.as_deref(), Some("stop"));
    hours.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_on_disk_at_each_transition_and_a_start_with_no_hours_left_is_refused() {
    let fake = cluster().await;
    let (syncer, ops) = syncer(fake).await;
    let dir = tempfile::tempdir().unwrap();
    let vm = 6201;
    let store = Store::open(dir.path()).unwrap();
    class(
        &store,
        "q101",
        "Networking 101",
        &[(vm, "bob", AssignmentRole::Student)],
    );
    let t = Arc::new(AtomicI64::new(MONDAY_8));
    let hours = Hours::start(store.clone(), ops.clone(), syncer.inventory().clone(), clock(&t));
    let mut settings = ClassHours {
        quota_hours: Some(1),
        ..ClassHours::default()
    };
    hours.set_settings("q101", Some(&settings)).await.unwrap();
    assert_eq!(hours.may_start("q101", "bob", MONDAY_8), Ok(()));

    // bob starts his VM at 08:00; Proxlab goes down at 08:10 while it runs, the store is reopened.
    ops.power("lab", vm, PowerAction::Start).await.unwrap();
    hours.settle().await;
    t.store(MONDAY_8 + 10 * MIN, Ordering::SeqCst);
    hours.shutdown().await;
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    let usage = store.usage.get(&usage_key("q101", "bob")).unwrap().unwrap();
    assert_eq!(usage.running_since, Some(MONDAY_8), "the open run is on disk");

    // Back at 08:20; he stops it at 08:30: 30 minutes used.
    t.store(MONDAY_8 + 20 * MIN, Ordering::SeqCst);
    let hours = Hours::start(store.clone(), ops.clone(), syncer.inventory().clone(), clock(&t));
    hours.settle().await;
    t.store(MONDAY_8 + 30 * MIN, Ordering::SeqCst);
    ops.power("lab", vm, PowerAction::Stop).await.unwrap();
    hours.settle().await;
    let usage = store.usage.get(&usage_key("q101", "bob")).unwrap().unwrap();
    assert_eq!((usage.used_secs, usage.running_since), (1800, None));
    let view = hours.usage("q101", "bob", MONDAY_8 + 30 * MIN).unwrap().unwrap();
    assert_eq!(view.remaining_text, "30 min");

    // A quota below what he used is refused by field, and nothing changes.
    settings.quota_hours = Some(0);
    let err = hours.set_settings("q101", Some(&settings)).await.unwrap_err();
    assert!(err.to_string().starts_with("quota_hours: "), "{err}");
    assert_eq!(hours.settings("q101").unwrap().unwrap().quota_hours, Some(1));

    // Started again at 08:30: warned at 08:50 and 08:58, shut down at 09:00 when the hour is used.
    let mut notices = hours.subscribe();
    ops.power("lab", vm, PowerAction::Start).await.unwrap();
    hours.settle().await;
    move_to(&hours, &t, MONDAY_8 + 50 * MIN).await;
    move_to(&hours, &t, MONDAY_8 + 58 * MIN).await;
    let before = fake.request_count().unwrap();
    move_to(&hours, &t, MONDAY_8 + 60 * MIN).await;
    let minutes: Vec<u32> = std::iter::from_fn(|| notices.try_recv().ok())
        .filter(|n| n.user.as_deref() == Some("bob"))
        .map(|n| n.minutes_left)
        .collect();
    assert_eq!(minutes, [10, 2, 0]);
    assert_eq!(posts(fake, before, &[vm], "shutdown"), 1);
    assert_eq!(status(fake, vm), "stopped");
    let usage = store.usage.get(&usage_key("q101", "bob")).unwrap().unwrap();
    assert_eq!((usage.used_secs, usage.running_since), (3600, None));

    // No hours left: a start is refused, naming the quota and the teacher.
    assert_eq!(
        hours.may_start("q101", "bob", MONDAY_8 + 70 * MIN),
        Err("You have used your 1 h for Networking 101; ask alice for more".to_string())
    );
    // Closed outside class hours: the refusal names the next slot in the class's time zone.
    settings.quota_hours = Some(1);
    settings.timetable = Timetable {
        zone: "Europe/Berlin".into(),
        weekly: vec![WeeklySlot {
            days: vec![Day::Tue],
            start: "09:00".into(),
            end: "10:00".into(),
        }],
        outside: Outside::Closed,
        ..Timetable::default()
    };
    settings.extra_minutes.insert("bob".into(), 60);
    hours.set_settings("q101", Some(&settings)).await.unwrap();
    assert_eq!(
        hours.may_start("q101", "bob", MONDAY_8 + 70 * MIN),
        Err("Networking 101 is open only in class hours; the next slot starts at 2027-01-19 09:00 Europe/Berlin".to_string())
    );
    hours.shutdown().await;
}
