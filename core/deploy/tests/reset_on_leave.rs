#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A student VM that leaves its student is reset to the class base before anyone else gets it: the
//! first student writes into the VM's disk (as root in the guest could), is unassigned, and the next
//! student gets the VM with exactly the base's contents — never while the reset runs. A restart in the
//! middle of the reset (its runtime killed while PVE keeps refusing the re-create) finishes the reset
//! from the journal. Real deployer, fake PVE cluster, real qemu-img / qemu-io over loopback sshd.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use deploy::{ClassSpec, DeployError, DeployLimits, Deployer, JoinOutcome, StaticHost};
use serde_json::json;
use store::{JobState, Role};

const WAIT: Duration = Duration::from_secs(180);

/// Writes a pattern into the guest-visible data of a qcow2 image, as a student with root in the guest
/// could.
fn write_marker(path: &Path) {
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x5a 0 64k"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-io: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// True if two images show the guest the same data (`qemu-img compare`).
fn same_contents(overlay: &Path, base: &Path) -> bool {
    let out = Command::new("qemu-img")
        .args(["compare", "-U", "-f", "qcow2", "-F", "qcow2"])
        .arg(overlay)
        .arg(base)
        .output()
        .unwrap();
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!("qemu-img compare: {}", String::from_utf8_lossy(&out.stderr)),
    }
}

fn disk_of(e: &Env, vmid: u32) -> (std::path::PathBuf, std::path::PathBuf) {
    let vm = e.deployer.class_vm(CLUSTER, vmid).unwrap().unwrap();
    let d = vm
        .disks
        .iter()
        .find(|d| d.base.is_some())
        .expect("an overlay disk");
    (d.path.clone().unwrap().into(), d.base.clone().unwrap().into())
}

async fn deployed_class(e: &Env, name: &str, node: &str) -> String {
    add_user(&e.store, "teach", Role::Teacher);
    add_user(&e.store, "anna", Role::Student);
    add_user(&e.store, "ben", Role::Student);
    let spec = ClassSpec {
        name: name.into(),
        cluster: CLUSTER.into(),
        template_vmid: 9000,
        pool_size: 1,
        node: Some(node.into()),
        ..ClassSpec::default()
    };
    open_template(e, 9000).await;
    let (class, job) = e.deployer.create_class("teach", spec).await.unwrap();
    let id = job.id.clone();
    let job = e
        .deployer
        .wait_job(&job.id, WAIT)
        .await
        .unwrap_or_else(|err| panic!("{err}: {:#?}", e.deployer.job(&id).unwrap()));
    assert_eq!(job.state, JobState::Done, "{:#?}", job.steps);
    class.id
}

/// anna gets the class's only VM and writes into its disk; returns the VMID.
fn anna_writes_into_her_vm(e: &Env, class: &str) -> u32 {
    let JoinOutcome::Assigned { vm, .. } = e.deployer.assign(class, "anna").unwrap() else {
        panic!("no VM for anna")
    };
    let (overlay, base) = disk_of(e, vm.vmid);
    assert!(same_contents(&overlay, &base), "a fresh VM shows the base");
    write_marker(&overlay);
    assert!(!same_contents(&overlay, &base), "anna's data is in the overlay");
    vm.vmid
}

fn user_of(e: &Env, class: &str, vmid: u32) -> String {
    let views = e.deployer.class_vm_views(class).unwrap();
    views.iter().find(|v| v.vmid == vmid).unwrap().user.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unassigned_vm_is_reset_to_the_class_base_before_the_next_student_gets_it() {
    let e = env((3700, 3719));
    let class = deployed_class(&e, "Leave", "pve2").await;
    let vmid = anna_writes_into_her_vm(&e, &class);

    let left = e.deployer.unassign(&class, "anna").unwrap();
    let reset = left.reset_job.clone().expect("the VM is marked for a reset");
    // While it is reset nobody gets it: ben waits.
    match e.deployer.assign(&class, "ben") {
        Err(DeployError::ClassFull { position, .. }) => assert_eq!(position, 1),
        other => panic!("ben must wait while the VM is reset: {other:?}"),
    }
    assert_eq!(user_of(&e, &class, vmid), "", "anna has lost the VM at once");

    let job = e.deployer.wait_job(&reset, WAIT).await.unwrap();
    assert_eq!(
        (job.kind.as_str(), job.state),
        ("reset", JobState::Done),
        "{:#?}",
        job.steps
    );
    // The waiting student got the reset VM, and it shows exactly the class base.
    assert_eq!(user_of(&e, &class, vmid), "ben");
    assert!(e.deployer.waiting_list(&class).unwrap().is_empty());
    let vm = e.deployer.class_vm(CLUSTER, vmid).unwrap().unwrap();
    assert_eq!(vm.reset_job, None);
    let (overlay, base) = disk_of(&e, vmid);
    assert!(
        same_contents(&overlay, &base),
        "anna's data is gone from ben's VM"
    );
    assert!(guest_vmids(&e.client).await.contains(&vmid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_in_the_middle_of_a_reset_finishes_it_and_hands_out_only_the_clean_vm() {
    let lab = lab();
    let e = env((3720, 3739));
    let class = deployed_class(&e, "Leave crash", "pve3").await;
    let vmid = anna_writes_into_her_vm(&e, &class);

    // A second deployer over the same database, on a runtime of its own that is killed mid-reset.
    let doomed_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let store = e.store.clone();
    let doomed: Deployer = doomed_rt
        .spawn(async move {
            let lab = common::lab();
            let host = StaticHost::new(
                tokio::runtime::Handle::current(),
                BTreeMap::from([(CLUSTER.to_string(), client(&lab.fake))]),
                node_ops(lab),
            );
            let set = scripts();
            let limits = DeployLimits {
                max_attempts: 10_000,
                ..fast_limits()
            };
            Deployer::new(
                store,
                host,
                Arc::new(move || set.clone()),
                config((3720, 3739), limits),
            )
            .unwrap()
        })
        .await
        .unwrap();
    // PVE refuses the re-create with a lock timeout (retried) until the "restart".
    lab.fake
        .control(
            "POST",
            "/fail",
            json!({"method": "POST", "path": "/nodes/pve3/qemu", "status": 500,
                   "message": "can't lock file '/var/lock/qemu-server/lock-3721.conf' - got timeout",
                   "times": 100000}),
        )
        .unwrap();
    let d = doomed.clone();
    let c = class.clone();
    let left = doomed_rt
        .spawn(async move { d.unassign(&c, "anna") })
        .await
        .unwrap()
        .unwrap();
    let reset = left.reset_job.clone().unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let job = e.deployer.job(&reset).unwrap();
        if job
            .steps
            .first()
            .is_some_and(|s| s.detail.starts_with("retrying"))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reset never retried: {job:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The crash: every task of that deployer stops where it is.
    doomed_rt.shutdown_background();
    drop(doomed);
    lab.fake.control("DELETE", "/fail", json!({})).unwrap();
    assert!(
        !guest_vmids(&e.client).await.contains(&vmid),
        "the old VM is gone mid-reset"
    );
    assert!(
        matches!(
            e.deployer.assign(&class, "ben"),
            Err(DeployError::ClassFull { .. })
        ),
        "a VM whose reset was interrupted is handed out to nobody"
    );

    let report = e.deployer.recover().await.unwrap();
    assert!(report.resumed.contains(&reset), "{report:?}");
    let job = e.deployer.wait_job(&reset, WAIT).await.unwrap();
    assert_eq!(job.state, JobState::Done, "{:#?}", job.steps);
    assert_eq!(user_of(&e, &class, vmid), "ben", "the waiting student got the VM");
    let (overlay, base) = disk_of(&e, vmid);
    assert!(same_contents(&overlay, &base), "the VM ben got is the class base");
}
