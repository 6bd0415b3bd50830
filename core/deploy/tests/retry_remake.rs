#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A student VM whose re-make onto a newer class base fails after its old VM was destroyed (a revert
//! after a publish, PVE refusing the create) is made again by the class's `retry`, on the new base, for
//! the same student — and a later `retry` does not re-make it once more. Real deployer, fake PVE cluster
//! with an injected failure (pve-sim's `/fail`), real qemu-img over loopback sshd.

mod common;

use std::time::Duration;

use common::*;
use deploy::{ClassSpec, JoinOutcome, PublishMode};
use pve::PowerAction;
use serde_json::json;
use store::{JobState, Role};

const WAIT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_remake_is_made_again_by_retry_on_the_new_base_for_the_same_student() {
    let lab = lab();
    let e = env((3600, 3649));
    add_user(&e.store, "teach", Role::Teacher);
    add_user(&e.store, "anna", Role::Student);
    let spec = ClassSpec {
        name: "Remake".into(),
        cluster: CLUSTER.into(),
        template_vmid: 9000,
        pool_size: 1,
        node: Some("pve2".into()),
        ..ClassSpec::default()
    };
    open_template(&e, 9000).await;
    let (class, job) = e.deployer.create_class("teach", spec).await.unwrap();
    let job = e.deployer.wait_job(&job.id, WAIT).await.unwrap();
    assert_eq!(job.state, JobState::Done, "{:#?}", job.steps);
    let JoinOutcome::Assigned { vm: anna, .. } = e.deployer.assign(&class.id, "anna").unwrap() else {
        panic!("no VM for anna")
    };
    e.deployer
        .teacher_power(&class.id, PowerAction::Stop)
        .await
        .unwrap();
    let job = e
        .deployer
        .publish(&class.id, "teach", PublishMode::OnNextRevert, false)
        .await
        .unwrap();
    let job = e.deployer.wait_job(&job.id, WAIT).await.unwrap();
    assert_eq!(job.state, JobState::Done, "{:#?}", job.steps);

    // PVE refuses every VM creation on pve2 while anna reverts onto base version 2.
    lab.fake
        .control(
            "POST",
            "/fail",
            json!({"method": "POST", "path": "/nodes/pve2/qemu", "status": 500,
                   "message": "injected: storage labnfs is not online", "times": 50}),
        )
        .unwrap();
    let reverted = e.deployer.revert(CLUSTER, anna.vmid, "anna").await;
    lab.fake.control("DELETE", "/fail", json!({})).unwrap();
    assert!(reverted.is_err(), "the re-make must fail: {reverted:?}");
    assert!(
        !guest_vmids(&e.client).await.contains(&anna.vmid),
        "the failed re-make leaves no half-made VM"
    );

    // Retry makes it again, on the new base, still anna's.
    let job = e
        .deployer
        .retry_failed(&class.id, "teach")
        .await
        .unwrap()
        .expect("a retry job for the failed re-make");
    let job = e.deployer.wait_job(&job.id, WAIT).await.unwrap();
    assert_eq!(job.state, JobState::Done, "{:#?}", job.steps);
    assert!(guest_vmids(&e.client).await.contains(&anna.vmid));
    let views = e.deployer.class_vm_views(&class.id).unwrap();
    let v = views.iter().find(|v| v.vmid == anna.vmid).unwrap();
    assert_eq!((v.base_version, v.user.as_str()), (2, "anna"), "{v:?}");
    // Nothing is left to retry.
    assert!(
        e.deployer
            .retry_failed(&class.id, "teach")
            .await
            .unwrap()
            .is_none()
    );
}
