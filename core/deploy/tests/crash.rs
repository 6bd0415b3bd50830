//! Crash recovery: a child process (`proxlab-deploy-job`) deploys a class and is killed with SIGKILL at a
//! random point of its job; a new deployer over the same database recovers; then no VM, disk or VMID
//! reservation may exist that Proxlab does not know about, and the class finishes deploying. Repeated
//! with five kill points spread over the job (random, seed printed; `CRASH_SEED=n` repeats a run).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use rand::{Rng, SeedableRng};
use serde_json::json;
use store::JobState;

const RANGE: (u32, u32) = (4000, 4049);
const WAIT: Duration = Duration::from_secs(180);

fn spec_file(dir: &std::path::Path) -> std::path::PathBuf {
    let lab = lab();
    let nodes: Vec<_> = ["pve1", "pve2", "pve3"]
        .iter()
        .map(|n| {
            json!({"node": n, "host": lab.sshd.host, "port": lab.sshd.port, "user": lab.sshd.user,
                   "key_file": lab.sshd.private_key, "host_key_sha256": lab.sshd.host_key_sha256,
                   "storage_roots": [lab.labnfs]})
        })
        .collect();
    let spec = json!({
        "db": dir.join("db"),
        "cluster": {"id": CLUSTER, "url": lab.fake.url, "token_id": lab.fake.token_id,
                    "token_secret": lab.fake.token_secret, "ca_file": lab.fake.ca_file},
        "vmid_range": [RANGE.0, RANGE.1],
        "nodes": nodes,
        "class": {"name": "Crash course", "template_vmid": 9000, "pool_size": 6},
        "owner": "teach",
    });
    let path = dir.join("spec.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    path
}

/// Runs the helper and SIGKILLs it after `kill_after` job events (or lets it finish). Returns the
/// number of events seen and whether it finished on its own.
fn run_and_kill(spec: &std::path::Path, kill_after: usize) -> (usize, bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_proxlab-deploy-job"))
        .arg(spec)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let mut events = 0;
    let mut finished = false;
    for line in out.lines() {
        let line = line.unwrap();
        if line.starts_with("EVENT ") {
            events += 1;
            if events >= kill_after {
                break;
            }
        }
        if line.starts_with("DONE ") {
            finished = true;
            break;
        }
    }
    // SIGKILL, by the PID of the child we spawned.
    let _ = child.kill();
    let status = child.wait().unwrap();
    assert!(finished || !status.success(), "killed");
    (events, finished)
}

/// The invariant: everything in the range is known to Proxlab, and everything Proxlab knows exists.
async fn assert_nothing_unknown(e: &Env) {
    let in_range = |v: &u32| (RANGE.0..=RANGE.1).contains(v);
    let guests: HashSet<u32> = guest_vmids(&e.client)
        .await
        .into_iter()
        .filter(in_range)
        .collect();
    let known: HashSet<u32> = e
        .deployer
        .classes()
        .unwrap()
        .iter()
        .flat_map(|c| e.deployer.class_vm_views(&c.id).unwrap())
        .map(|v| v.vmid)
        .collect();
    assert_eq!(guests, known, "VMs in PVE vs class VMs Proxlab knows");
    let dirs: HashSet<u32> = image_dirs_in(RANGE).into_iter().collect();
    assert!(
        dirs.is_subset(&known),
        "disk folders nobody knows: {:?}",
        dirs.difference(&known).collect::<Vec<_>>()
    );
    for r in e.deployer.reservations(Some(CLUSTER)).unwrap() {
        let failed_step = e.deployer.job(&r.job_id).map(|j| {
            j.steps
                .iter()
                .any(|s| s.vmid == Some(r.vmid) && s.state == JobState::Failed)
        });
        assert!(
            known.contains(&r.vmid) || failed_step.unwrap_or(false),
            "reservation {} (job {}) is explained by nothing",
            r.vmid,
            r.job_id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_a_random_step_then_recovery_leaves_nothing_unknown_and_finishes_the_class() {
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().r#gen());
    eprintln!("crash test seed {seed} (rerun with CRASH_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    lab();
    // Kill points over the whole job (~60 events for 8 VMs): around the plan, while VMs are made, late.
    let points = [
        rng.gen_range(1..4),
        rng.gen_range(4..12),
        rng.gen_range(12..30),
        rng.gen_range(30..45),
        rng.gen_range(45..60),
    ];
    for (round, kill_after) in points.into_iter().enumerate() {
        let dir = testkit::temp_dir("deploy-crash-");
        // The teacher account must exist in the database the child uses.
        {
            let store = store::Store::open(dir.path().join("db")).unwrap();
            add_user(&store, "teach", store::Role::Teacher);
            store.flush().unwrap();
        }
        let spec = spec_file(dir.path());
        let (seen, finished) = run_and_kill(&spec, kill_after);
        eprintln!(
            "round {round}: killed after {seen} events (asked {kill_after}); finished on its own: {finished}"
        );

        let e = env_in(dir, RANGE, fast_limits());
        let report = e.deployer.recover().await.unwrap();
        eprintln!("round {round}: recovery {report:?}");
        assert!(report.errors.is_empty(), "{report:?}");
        for id in &report.resumed {
            let job = e.deployer.wait_job(id, WAIT).await.unwrap();
            assert!(matches!(job.state, JobState::Done | JobState::Failed), "{job:#?}");
        }
        assert_nothing_unknown(&e).await;
        // A class that got as far as being created finishes: all 8 VMs, ready.
        for c in e.deployer.classes().unwrap() {
            if c.state == "failed" {
                // Only a class whose job died before it started may end failed, and then it has no VMs.
                assert!(e.deployer.class_vm_views(&c.id).unwrap().is_empty());
            } else {
                assert_eq!(c.state, "ready", "{c:#?}");
                assert_eq!(e.deployer.class_vm_views(&c.id).unwrap().len(), 8);
            }
            // Clean the range for the next round (also exercises delete after recovery).
            let job = e
                .deployer
                .delete_class(&c.id, "teach", false, &c.id)
                .await
                .unwrap();
            let job = e.deployer.wait_job(&job.id, WAIT).await.unwrap();
            assert_eq!(
                (job.state, job.error.as_deref()),
                (JobState::Done, None),
                "{:#?}",
                job.steps
            );
        }
        assert_nothing_unknown(&e).await;
        assert!(
            guest_vmids(&e.client)
                .await
                .iter()
                .all(|v| !(RANGE.0..=RANGE.1).contains(v))
        );
        assert!(image_dirs_in(RANGE).is_empty());
        assert!(e.deployer.reservations(None).unwrap().is_empty());
    }
}
