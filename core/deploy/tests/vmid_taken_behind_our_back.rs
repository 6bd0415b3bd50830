#![allow(clippy::unwrap_used, clippy::expect_used)]
//! An admin creates a VM in PVE's own UI under a VMID Proxlab has reserved for a class, after the
//! reservation and before Proxlab creates its VM there. The class still gets every VM — the one whose
//! VMID was taken under a freshly reserved VMID — the other VM is left exactly as it was (also when
//! the class is deleted), and its VMID is neither reserved nor tried again. Real deployer, fake PVE
//! cluster (the foreign VM added through pve-sim's control API), real qemu-img over loopback sshd.

mod common;

use std::time::Duration;

use common::*;
use deploy::{ClassSpec, VmRole};
use pve::GuestKind;
use serde_json::json;
use store::{JobState, Role};

const WAIT: Duration = Duration::from_secs(180);
const RANGE: (u32, u32) = (3760, 3779);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmid_an_admin_takes_after_the_reservation_is_replaced_and_the_admins_vm_is_never_touched() {
    let lab = lab();
    let e = env(RANGE);
    add_user(&e.store, "teach", Role::Teacher);
    let spec = ClassSpec {
        name: "Taken".into(),
        cluster: CLUSTER.into(),
        template_vmid: 9000,
        pool_size: 2,
        node: Some("pve1".into()),
        ..ClassSpec::default()
    };
    open_template(&e, 9000).await;
    let (class, job) = e.deployer.create_class("teach", spec).await.unwrap();
    let reserved: Vec<u32> = job.params["ctx"]["vmids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(reserved.len(), 4, "base, teacher, two students: {reserved:?}");
    // The admin's VM, under the last student's VMID, while the class base is still being made.
    let taken = reserved[3];
    lab.fake
        .control(
            "POST",
            "/guests",
            json!({"guests": [{"vmid": taken, "name": "admin-own", "type": "qemu", "node": "pve1",
                               "status": "stopped", "config": {"name": "admin-own", "memory": 512,
                                                               "description": "the admin's"}}]}),
        )
        .unwrap();

    let job = e.deployer.wait_job(&job.id, WAIT).await.unwrap();
    assert_eq!(job.state, JobState::Done, "{:#?}", job.steps);
    assert!(
        job.steps.iter().all(|s| s.state == JobState::Done),
        "no VM failed: {:#?}",
        job.steps
    );
    let views = e.deployer.class_vm_views(&class.id).unwrap();
    let students: Vec<u32> = views
        .iter()
        .filter(|v| v.role == VmRole::Student)
        .map(|v| v.vmid)
        .collect();
    assert_eq!(students.len(), 2, "{views:?}");
    assert!(!students.contains(&taken), "{students:?}");
    assert!(students.iter().all(|v| (RANGE.0..=RANGE.1).contains(v)));
    assert!(
        e.deployer
            .reservations(Some(CLUSTER))
            .unwrap()
            .iter()
            .all(|r| r.vmid != taken),
        "the admin's VMID is not Proxlab's"
    );
    let admin_cfg = e
        .client
        .guest_config("pve1", GuestKind::Qemu, taken)
        .await
        .unwrap();
    assert_eq!(admin_cfg.name().as_deref(), Some("admin-own"));
    assert_eq!(admin_cfg.get_str("description").as_deref(), Some("the admin's"));
    assert!(!admin_cfg.tags().contains("proxlab"));
    // Nothing to retry, and deleting the class leaves the admin's VM alone.
    assert!(
        e.deployer
            .retry_failed(&class.id, "teach")
            .await
            .unwrap()
            .is_none()
    );
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
    assert_eq!(left, vec![taken], "only the admin's VM stays in the range");
    let admin_cfg = e
        .client
        .guest_config("pve1", GuestKind::Qemu, taken)
        .await
        .unwrap();
    assert_eq!(admin_cfg.name().as_deref(), Some("admin-own"));
}
