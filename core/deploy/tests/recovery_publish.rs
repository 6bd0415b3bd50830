#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Recovery of work a restart interrupted before it started (found by the proxlab crash-and-restart
//! suite). A publish interrupted before its VMID reached the journal (found by the proxlab
//! crash-and-restart suite): `kill -9` right after `publish` reserved the new base's VMID but before
//! the job's parameters naming it were flushed leaves a `pending` publish job without `ctx.vmids`.
//! Recovery must end it as failed with a plain reason — not resume it into the workflow script, which
//! then fails with a Rhai runtime error — and leave the class on its current base. A class whose
//! creation was interrupted before its job was written (never answered) is removed, not left `failed`
//! without a reason. Real sled store, real deployer; no cluster is needed (nothing was made).

use std::collections::BTreeMap;
use std::sync::Arc;

use deploy::{DeployConfig, Deployer, NodeOps, StaticHost};
use serde_json::json;
use store::{ClassBase, ClassRecord, JobRecord, JobState, Store};

/// A deployer over `store` with no cluster and the shipped scripts.
fn deployer(store: &Store) -> Deployer {
    let handle = tokio::runtime::Handle::current();
    let host = StaticHost::new(handle.clone(), BTreeMap::new(), NodeOps::new(vec![]).unwrap());
    let set = Arc::new(
        script::ScriptRuntime::new(Arc::new(script::NullHost::new(handle)), script::Limits::default())
            .load_set(&script::SetSources::default())
            .unwrap(),
    );
    Deployer::new(
        store.clone(),
        host,
        Arc::new(move || set.clone()),
        DeployConfig::default(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_whose_creation_was_killed_before_its_job_existed_is_removed_and_others_stay() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("db")).unwrap();
    let class = |id: &str, state: &str| ClassRecord {
        id: id.into(),
        name: id.into(),
        owner: "teach".into(),
        cluster: "lab".into(),
        state: state.into(),
        ..ClassRecord::default()
    };
    // As `create_class` leaves it when killed between writing the class and writing its job.
    store
        .classes
        .insert("orphan", &class("orphan", "deploying"))
        .unwrap();
    store.classes.insert("kept", &class("kept", "ready")).unwrap();
    let report = deployer(&store).recover().await.unwrap();
    assert_eq!(report.failed, vec!["class orphan".to_string()], "{report:?}");
    assert!(store.classes.get("orphan").unwrap().is_none());
    assert_eq!(store.classes.get("kept").unwrap().unwrap().state, "ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_killed_before_its_vmid_was_journaled_ends_failed_and_the_class_keeps_its_base() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("db")).unwrap();
    let base = ClassBase {
        version: 1,
        vmid: 4000,
        node: "pve1".into(),
        owned: true,
        detail: json!({"vmid": 4000}),
        created_at: 1,
        deleted_at: None,
    };
    store
        .classes
        .insert(
            "c1",
            &ClassRecord {
                id: "c1".into(),
                name: "c1".into(),
                owner: "teach".into(),
                cluster: "lab".into(),
                state: "ready".into(),
                bases: vec![base.clone()],
                ..ClassRecord::default()
            },
        )
        .unwrap();
    // As `publish` leaves it on disk when killed between the VMID reservation and the next flush.
    store
        .jobs
        .insert(
            "j1",
            &JobRecord {
                id: "j1".into(),
                kind: "publish".into(),
                state: JobState::Pending,
                owner: "teach".into(),
                class_id: Some("c1".into()),
                cluster: "lab".into(),
                params: json!({"workflow": "qcow2-overlay", "ctx": {"options": {"mode": "publish"}},
                               "mode": "now", "base_version": 2}),
                ..JobRecord::default()
            },
        )
        .unwrap();
    let deployer = deployer(&store);

    let report = deployer.recover().await.unwrap();
    assert_eq!(report.failed, vec!["j1".to_string()], "{report:?}");
    assert!(report.resumed.is_empty(), "{report:?}");
    let job = deployer.job("j1").unwrap();
    assert_eq!(job.state, JobState::Failed);
    let err = job.error.unwrap_or_default();
    assert!(err.contains("interrupted by a restart"), "{err}");
    assert!(!err.contains(".rhai"), "a script error leaked: {err}");
    let class = deployer.class("c1").unwrap();
    assert_eq!(class.state, "ready");
    assert_eq!(class.bases, vec![base]);
}
