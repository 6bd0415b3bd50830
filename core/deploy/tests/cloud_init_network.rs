#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A template whose cloud-init settings give a fixed address (`ipconfig0: ip=10.0.0.5/24,gw=…`) does not
//! hand that address to every class VM: each VM gets `ip=dhcp` (other settings kept), and the class's
//! plan step says so in plain words. Real deployer, fake PVE cluster (this test binary's own, whose
//! template it changes), real qemu-img over loopback sshd.

mod common;

use std::time::Duration;

use common::*;
use deploy::ClassSpec;
use pve::GuestKind;
use store::{JobState, Role};

const WAIT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_templates_static_cloud_init_address_is_not_copied_and_the_plan_says_so() {
    let e = env((3800, 3819));
    add_user(&e.store, "teach", Role::Teacher);
    let tpl = e
        .client
        .cluster_resources()
        .await
        .unwrap()
        .into_iter()
        .find(|g| g.vmid == 9000)
        .unwrap();
    let answer = e
        .client
        .post_value(
            &format!("/nodes/{}/qemu/9000/config", tpl.node),
            &[
                ("ipconfig0", "ip=10.0.0.5/24,gw=10.0.0.1"),
                ("ipconfig1", "ip=dhcp,ip6=fd00::5/64,gw6=fd00::1"),
            ],
        )
        .await
        .unwrap();
    if let Some(upid) = answer.as_str().and_then(|u| u.parse().ok()) {
        e.client.wait_task(&upid, WAIT).await.unwrap();
    }
    let spec = ClassSpec {
        name: "Net".into(),
        cluster: CLUSTER.into(),
        template_vmid: 9000,
        pool_size: 2,
        node: Some(tpl.node.clone()),
        ..ClassSpec::default()
    };
    open_template(&e, 9000).await;
    let (class, job) = e.deployer.create_class("teach", spec).await.unwrap();
    let job = e.deployer.wait_job(&job.id, WAIT).await.unwrap();
    assert_eq!(job.state, JobState::Done, "{:#?}", job.steps);
    let plan = job.steps.iter().find(|s| s.role == "plan").unwrap();
    assert!(
        plan.detail
            .contains("ipconfig0 has a fixed address (ip=10.0.0.5/24,gw=10.0.0.1)")
            && plan.detail.contains("get ip=dhcp"),
        "{}",
        plan.detail
    );
    assert!(plan.detail.contains("ipconfig1"), "{}", plan.detail);
    let views = e.deployer.class_vm_views(&class.id).unwrap();
    let made: Vec<_> = views.iter().filter(|v| v.role != deploy::VmRole::Base).collect();
    assert_eq!(made.len(), 3, "teacher and two students: {views:?}");
    for v in made {
        let cfg = e
            .client
            .guest_config(&v.node, GuestKind::Qemu, v.vmid)
            .await
            .unwrap();
        assert_eq!(
            cfg.get_str("ipconfig0").as_deref(),
            Some("ip=dhcp"),
            "VM {}",
            v.vmid
        );
        assert_eq!(
            cfg.get_str("ipconfig1").as_deref(),
            Some("ip=dhcp,ip6=dhcp"),
            "VM {}",
            v.vmid
        );
    }
}
