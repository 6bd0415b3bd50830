#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Class bases are protected on PVE: after a deploy (and a publish) the base VM has `protection: 1`
//! and Proxlab's note in its description, so removing it through the PVE API (as an admin in PVE's UI
//! would) is refused; Proxlab itself removes every base when the class is deleted, cleanly. Real deployer, fake PVE cluster (which enforces protection), real qemu-img.

mod common;

use std::time::Duration;

use common::*;
use deploy::{ClassSpec, PublishMode};
use pve::{GuestKind, PowerAction, PveClient};
use store::{JobState, Role};

const WAIT: Duration = Duration::from_secs(180);
const RANGE: (u32, u32) = (3780, 3799);

async fn assert_protected(client: &PveClient, node: &str, vmid: u32) {
    let cfg = client.guest_config(node, GuestKind::Qemu, vmid).await.unwrap();
    assert_eq!(cfg.get_str("protection").as_deref(), Some("1"), "{cfg:?}");
    let description = cfg.get_str("description").unwrap_or_default();
    assert!(
        description.contains("owned by Proxlab") && description.contains("backed by"),
        "{description}"
    );
    let refused = client
        .delete_value(&format!("/nodes/{node}/qemu/{vmid}"), &[("purge", "1")])
        .await;
    let err = refused.expect_err("PVE must refuse to remove a protected base");
    assert!(err.to_string().contains("protection"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_bases_are_protected_on_pve_and_only_proxlab_removes_them() {
    let e = env(RANGE);
    add_user(&e.store, "teach", Role::Teacher);
    let spec = ClassSpec {
        name: "Guarded".into(),
        cluster: CLUSTER.into(),
        template_vmid: 9000,
        pool_size: 1,
        node: Some("pve1".into()),
        ..ClassSpec::default()
    };
    open_template(&e, 9000).await;
    let (class, job) = e.deployer.create_class("teach", spec).await.unwrap();
    let job = e.deployer.wait_job(&job.id, WAIT).await.unwrap();
    assert_eq!(job.state, JobState::Done, "{:#?}", job.steps);
    let v1 = e.deployer.class(&class.id).unwrap().bases[0].clone();
    assert!(v1.owned);
    assert_protected(&e.client, &v1.node, v1.vmid).await;
    assert!(guest_vmids(&e.client).await.contains(&v1.vmid), "still there");

    // A publish protects the new base.
    e.deployer
        .teacher_power(&class.id, PowerAction::Stop)
        .await
        .unwrap();
    let job = e
        .deployer
        .publish(&class.id, "teach", PublishMode::Now, true)
        .await
        .unwrap();
    let job = e.deployer.wait_job(&job.id, WAIT).await.unwrap();
    assert_eq!(job.state, JobState::Done, "{job:#?}");
    let bases = e.deployer.class(&class.id).unwrap().bases;
    let v2 = bases.last().unwrap().clone();
    assert_eq!(v2.version, 2);
    assert_protected(&e.client, &v2.node, v2.vmid).await;
    // The old base still backs the teacher VM: it stays, protected.
    assert_protected(&e.client, &v1.node, v1.vmid).await;

    // Deleting the class removes both protected bases cleanly.
    let del = e
        .deployer
        .delete_class(&class.id, "teach", false, &class.id)
        .await
        .unwrap();
    let del = e.deployer.wait_job(&del.id, WAIT).await.unwrap();
    assert_eq!(del.state, JobState::Done, "{:#?}", del.steps);
    let left: Vec<u32> = guest_vmids(&e.client)
        .await
        .into_iter()
        .filter(|v| (RANGE.0..=RANGE.1).contains(v))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(image_dirs_in(RANGE).is_empty(), "{:?}", image_dirs_in(RANGE));
}
