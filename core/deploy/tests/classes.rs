//! Classes against the fake lab cluster, a real loopback sshd and real qemu-img: deploy, overlays,
//! PVE configs, start/revert, joins, publish, delete, lock-timeout retries, the linked-clone preflight.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use deploy::{ClassSpec, DeployError, JobEventKind, JoinOutcome, PublishMode, RevertOutcome, VmRole};
use pve::{GuestKind, PowerAction};
use serde_json::json;
use store::{JobState, Role};

const WAIT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_of_25_deploys_27_vms_on_overlays_of_the_class_base_that_students_can_start_and_revert() {
    let lab = lab();
    let e = env((3000, 3099));
    add_user(&e.store, "teach", Role::Teacher);
    open_template(&e, 9000).await;
    let before: HashSet<u32> = guest_vmids(&e.client).await.into_iter().collect();
    let (class, job) = e
        .deployer
        .create_class(
            "teach",
            ClassSpec {
                name: "Linux 101 – Gruppe A".into(),
                cluster: CLUSTER.into(),
                template_vmid: 9000,
                pool_size: 25,
                node: Some("pve1".into()),
                ..ClassSpec::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(class.id, "linux-101-gruppe-a");
    let job = e.deployer.wait_job(&job.id, WAIT).await.unwrap();
    assert_eq!(job.state, JobState::Done, "{job:#?}");
    assert_eq!(job.error, None, "{:#?}", job.steps);
    assert_eq!(job.steps.len(), 27, "plan + teacher + 25 students");
    let class = e.deployer.class(&class.id).unwrap();
    assert_eq!(class.state, "ready");
    let views = e.deployer.class_vm_views(&class.id).unwrap();
    assert_eq!(views.len(), 27, "base + teacher + 25 students");
    assert_eq!(views.iter().filter(|v| v.role == VmRole::Student).count(), 25);
    assert_eq!(views[0].role, VmRole::Teacher);
    assert_eq!(views[0].user, "teach");

    // Every VMID is new to the cluster and inside the configured range.
    for v in &views {
        assert!((3000..=3099).contains(&v.vmid), "{}", v.vmid);
        assert!(!before.contains(&v.vmid));
    }
    let base = views.iter().find(|v| v.role == VmRole::Base).unwrap();
    let base_path = lab
        .labnfs
        .join(format!("images/{0}/base-{0}-disk-0.qcow2", base.vmid));
    let base_cfg = e
        .client
        .guest_config("pve1", GuestKind::Qemu, base.vmid)
        .await
        .unwrap();
    assert!(base_cfg.is_template());
    assert!(
        base_cfg
            .get_str("scsi0")
            .unwrap()
            .starts_with(&format!("labnfs:{0}/base-{0}-disk-0.qcow2", base.vmid)),
        "{base_cfg:?}"
    );
    let template_mac = "bc:24:11:90:00:00";
    let mut macs = HashSet::new();
    for v in views.iter().filter(|v| v.role != VmRole::Base) {
        // The overlay: backed by the class base with an ABSOLUTE path and the base's real format.
        let overlay = lab.labnfs.join(format!("images/{0}/vm-{0}-disk-0.qcow2", v.vmid));
        let chain = backing_chain(&overlay);
        assert_eq!(chain.len(), 2, "{chain:#?}");
        assert_eq!(chain[0]["format"], "qcow2");
        let backing = chain[0]["backing-filename"].as_str().unwrap();
        assert!(
            backing.starts_with('/'),
            "backing path {backing} must be absolute"
        );
        assert_eq!(std::path::Path::new(backing), base_path.as_path());
        assert_eq!(chain[0]["backing-filename-format"], "qcow2");
        assert_eq!(chain[1]["format"], "qcow2");
        // The PVE config references it; fresh MAC; tagged; a baseline snapshot.
        let cfg = e
            .client
            .guest_config(&v.node, GuestKind::Qemu, v.vmid)
            .await
            .unwrap();
        assert!(
            cfg.get_str("scsi0")
                .unwrap()
                .starts_with(&format!("labnfs:{0}/vm-{0}-disk-0.qcow2", v.vmid)),
            "{cfg:?}"
        );
        assert_eq!(cfg.memory_mib(), Some(2048));
        let mac = cfg.nics()[0].mac.clone().unwrap();
        assert_ne!(mac, template_mac);
        assert!(macs.insert(mac), "MACs must differ");
        assert!(cfg.tags().contains("proxlab"));
        let snaps = e
            .client
            .snapshots(&v.node, GuestKind::Qemu, v.vmid)
            .await
            .unwrap();
        assert!(snaps.iter().any(|s| s.name == "baseline"), "{snaps:?}");
    }

    // Students join with an invite, start their VM and revert it.
    let invite = e
        .deployer
        .create_invite(&class.id, "teach", deploy::InviteTtl::Default, None)
        .unwrap();
    let mut students = Vec::new();
    for i in 1..=25 {
        let name = format!("stud{i:02}");
        add_user(&e.store, &name, Role::Student);
        match e.deployer.join(invite.token.expose(), &name).unwrap() {
            JoinOutcome::Assigned { vm, .. } => students.push((name, vm)),
            other => panic!("{other:?}"),
        }
    }
    let futs = students.iter().map(|(_, vm)| {
        let (d, c) = (e.deployer.clone(), e.client.clone());
        let vm = vm.clone();
        async move {
            let upid = c
                .power(&vm.node, GuestKind::Qemu, vm.vmid, PowerAction::Start)
                .await
                .unwrap();
            c.wait_task(&upid, Duration::from_secs(30)).await.unwrap();
            let st = c.guest_status(&vm.node, GuestKind::Qemu, vm.vmid).await.unwrap();
            assert_eq!(st.status, "running");
            let out = d.revert(CLUSTER, vm.vmid, "stud").await.unwrap();
            assert_eq!(
                out,
                RevertOutcome::RolledBack {
                    snapshot: "baseline".into()
                }
            );
        }
    });
    futures::future::join_all(futs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_joins_get_fifty_different_vms_and_the_51st_is_told_the_class_is_full() {
    let e = env((3100, 3199));
    add_user(&e.store, "teach", Role::Teacher);
    open_template(&e, 9000).await;
    let (class, job) = e
        .deployer
        .create_class(
            "teach",
            ClassSpec {
                name: "Join race".into(),
                cluster: CLUSTER.into(),
                template_vmid: 9000,
                pool_size: 50,
                node: Some("pve2".into()),
                ..ClassSpec::default()
            },
        )
        .await
        .unwrap();
    let job = e.deployer.wait_job(&job.id, WAIT).await.unwrap();
    assert_eq!(
        (job.state, job.error.as_deref()),
        (JobState::Done, None),
        "{:#?}",
        job.steps
    );
    let invite = e
        .deployer
        .create_invite(&class.id, "teach", deploy::InviteTtl::Default, None)
        .unwrap();
    for i in 0..51 {
        add_user(&e.store, &format!("s{i}"), Role::Student);
    }
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(51));
    let handles: Vec<_> = (0..51)
        .map(|i| {
            let (d, b, t) = (
                e.deployer.clone(),
                barrier.clone(),
                invite.token.expose().to_string(),
            );
            std::thread::spawn(move || {
                b.wait();
                (format!("s{i}"), d.join(&t, &format!("s{i}")))
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut vmids = HashSet::new();
    let mut full = Vec::new();
    let mut joined = Vec::new();
    for (who, r) in results {
        match r {
            Ok(JoinOutcome::Assigned { vm, assignment }) => {
                assert!(vmids.insert(vm.vmid), "VM {} given twice", vm.vmid);
                assert_eq!(
                    (assignment.vmid, assignment.user.as_str()),
                    (vm.vmid, who.as_str())
                );
                joined.push(who);
            }
            Err(DeployError::ClassFull {
                user, position, size, ..
            }) => {
                assert_eq!((position, size), (1, 50));
                full.push(user);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(vmids.len(), 50);
    assert_eq!(full.len(), 1);
    let waiting = e.deployer.waiting_list(&class.id).unwrap();
    assert_eq!(waiting.iter().map(|w| w.user.clone()).collect::<Vec<_>>(), full);
    // Joining again is harmless; the teacher adds a VM for the waiting student.
    let again = e.deployer.join(invite.token.expose(), &joined[0]).unwrap();
    assert!(matches!(again, JoinOutcome::AlreadyMember { .. }));
    let add = e.deployer.add_vms(&class.id, "teach", 1).await.unwrap();
    let add = e.deployer.wait_job(&add.id, WAIT).await.unwrap();
    assert_eq!(
        (add.state, add.error.as_deref()),
        (JobState::Done, None),
        "{:#?}",
        add.steps
    );
    // VMs added later are named like the first ones: `<class>-student-s<slot>`.
    let names: Vec<String> = e
        .deployer
        .class_vms(&class.id)
        .unwrap()
        .into_iter()
        .filter(|v| v.role == deploy::VmRole::Student)
        .map(|v| v.name)
        .collect();
    assert_eq!(names.len(), 51, "{names:?}");
    let prefix = format!("{}-student-s", class.id);
    assert!(names.iter().all(|n| n.starts_with(&prefix)), "{names:?}");
    let got = e.deployer.assign(&class.id, &full[0]).unwrap();
    assert!(matches!(got, JoinOutcome::Assigned { .. }), "{got:?}");
    assert!(e.deployer.waiting_list(&class.id).unwrap().is_empty());
    // Revoked and expired links stop working.
    e.deployer.revoke_invite(&class.id, &invite.record.id).unwrap();
    assert!(matches!(
        e.deployer.join(invite.token.expose(), &joined[1]),
        Err(DeployError::InviteInvalid)
    ));
    let short = e
        .deployer
        .create_invite(
            &class.id,
            "teach",
            deploy::InviteTtl::For(Duration::from_secs(3600)),
            None,
        )
        .unwrap();
    assert_eq!(
        e.deployer.invite_class(short.token.expose()).unwrap().id,
        class.id
    );
    e.clock.advance(3601);
    assert!(matches!(
        e.deployer.invite_class(short.token.expose()),
        Err(DeployError::InviteInvalid)
    ));
    let never = e
        .deployer
        .create_invite(&class.id, "teach", deploy::InviteTtl::Never, None)
        .unwrap();
    assert_eq!(never.record.expires_at, None);
    assert!(!format!("{never:?}").contains(never.token.expose()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_timeouts_are_retried_with_backoff_and_a_failed_vm_is_retryable_without_failing_the_class() {
    let lab = lab();
    let e = env((3200, 3299));
    add_user(&e.store, "teach", Role::Teacher);
    open_template(&e, 9000).await;
    // Every VM create on pve3 answers "can't lock file … got timeout" three times.
    lab.fake
        .control(
            "POST",
            "/fail",
            json!({"method": "POST", "path": "/nodes/pve3/qemu", "status": 500,
                   "message": "can't lock file '/var/lock/qemu-server/lock-9000.conf' - got timeout", "times": 3}),
        )
        .unwrap();
    let mut events = e.deployer.events();
    let (class, job) = e
        .deployer
        .create_class(
            "teach",
            ClassSpec {
                name: "Retry".into(),
                cluster: CLUSTER.into(),
                template_vmid: 9000,
                pool_size: 3,
                node: Some("pve3".into()),
                ..ClassSpec::default()
            },
        )
        .await
        .unwrap();
    let job = e.deployer.wait_job(&job.id, WAIT).await.unwrap();
    assert_eq!(
        (job.state, job.error.as_deref()),
        (JobState::Done, None),
        "{:#?}",
        job.steps
    );
    let retried: u32 = job
        .steps
        .iter()
        .filter(|s| s.role != "plan")
        .map(|s| s.attempts - 1)
        .sum();
    assert_eq!(retried, 3, "{:#?}", job.steps);
    let mut saw_retrying = false;
    while let Ok(ev) = events.try_recv() {
        if let JobEventKind::Step { state, detail, .. } = &ev.kind
            && *state == JobState::Pending
            && detail.starts_with("retrying in ")
        {
            assert!(detail.contains("lock"), "{detail}");
            saw_retrying = true;
        }
    }
    assert!(saw_retrying, "the teacher sees \"retrying\", not \"failed\"");
    assert_eq!(e.deployer.class(&class.id).unwrap().state, "ready");

    // A non-retryable failure fails one VM, not the class; the VM can be retried.
    lab.fake
        .control(
            "POST",
            "/fail",
            json!({"method": "POST", "path": "/nodes/pve3/qemu", "status": 500, "message": "unexpected error", "times": 1}),
        )
        .unwrap();
    let add = e.deployer.add_vms(&class.id, "teach", 2).await.unwrap();
    let add = e.deployer.wait_job(&add.id, WAIT).await.unwrap();
    assert_eq!(add.state, JobState::Done);
    assert_eq!(
        add.steps.iter().filter(|s| s.state == JobState::Failed).count(),
        1,
        "{:#?}",
        add.steps
    );
    assert!(
        add.error.as_deref().unwrap().starts_with("1 of 2 VMs failed"),
        "{:?}",
        add.error
    );
    assert_eq!(e.deployer.class(&class.id).unwrap().state, "partial");
    let failed_vmid = add
        .steps
        .iter()
        .find(|s| s.state == JobState::Failed)
        .unwrap()
        .vmid
        .unwrap();
    assert!(
        image_dirs_in((failed_vmid, failed_vmid)).is_empty(),
        "a failed VM leaves no disk"
    );
    let retry = e
        .deployer
        .retry_failed(&class.id, "teach")
        .await
        .unwrap()
        .unwrap();
    let retry = e.deployer.wait_job(&retry.id, WAIT).await.unwrap();
    assert_eq!(
        (retry.state, retry.error.as_deref()),
        (JobState::Done, None),
        "{:#?}",
        retry.steps
    );
    assert_eq!(retry.steps[0].vmid, Some(failed_vmid));
    assert_eq!(e.deployer.class(&class.id).unwrap().state, "ready");
    assert_eq!(e.deployer.class_vm_views(&class.id).unwrap().len(), 1 + 1 + 3 + 2);
}

/// Creates a class and waits for its deploy job to end well.
async fn deployed(e: &Env, owner: &str, spec: ClassSpec) -> store::ClassRecord {
    open_template(e, spec.template_vmid).await;
    let (class, job) = e.deployer.create_class(owner, spec).await.unwrap();
    let job = e.deployer.wait_job(&job.id, WAIT).await.unwrap();
    assert_eq!(
        (job.state, job.error.as_deref()),
        (JobState::Done, None),
        "{:#?}",
        job.steps
    );
    e.deployer.class(&class.id).unwrap()
}

fn spec(name: &str, template: u32, pool: u32, node: &str) -> ClassSpec {
    ClassSpec {
        name: name.into(),
        cluster: CLUSTER.into(),
        template_vmid: template,
        pool_size: pool,
        node: Some(node.into()),
        ..ClassSpec::default()
    }
}

fn overlay_backing(vmid: u32, disk: u32) -> String {
    let chain = backing_chain(
        &lab()
            .labnfs
            .join(format!("images/{vmid}/vm-{vmid}-disk-{disk}.qcow2")),
    );
    chain[0]["backing-filename"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_makes_a_new_base_students_move_on_revert_and_old_bases_go_when_unused_then_delete_cleans_up()
{
    let lab = lab();
    let range = (3300, 3399);
    let e = env(range);
    add_user(&e.store, "teach", Role::Teacher);
    add_user(&e.store, "co", Role::Teacher);
    add_user(&e.store, "anna", Role::Student);
    add_user(&e.store, "ben", Role::Student);
    let class = deployed(&e, "teach", spec("Publish", 9000, 2, "pve2")).await;
    let JoinOutcome::Assigned { vm: anna, .. } = e.deployer.assign(&class.id, "anna").unwrap() else {
        panic!()
    };
    let JoinOutcome::Assigned { vm: ben, .. } = e.deployer.assign(&class.id, "ben").unwrap() else {
        panic!()
    };
    let v1 = class.bases[0].clone();
    let v1_path = lab
        .labnfs
        .join(format!("images/{0}/base-{0}-disk-0.qcow2", v1.vmid));
    assert_eq!(overlay_backing(anna.vmid, 0), v1_path.display().to_string());

    // The teacher VM must be off while its disk is copied.
    e.deployer
        .teacher_power(&class.id, PowerAction::Start)
        .await
        .unwrap();
    let err = e
        .deployer
        .publish(&class.id, "teach", PublishMode::OnNextRevert, false)
        .await
        .unwrap_err();
    assert!(matches!(err, DeployError::Conflict(_)), "{err}");
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
    assert_eq!(
        (job.state, job.error.as_deref()),
        (JobState::Done, None),
        "{:#?}",
        job.steps
    );
    let class = e.deployer.class(&class.id).unwrap();
    assert_eq!(class.bases.len(), 2);
    let v2 = class.bases[1].clone();
    assert_ne!(v2.vmid, v1.vmid);
    let v2_path = lab
        .labnfs
        .join(format!("images/{0}/base-{0}-disk-0.qcow2", v2.vmid));
    assert_eq!(
        backing_chain(&v2_path).len(),
        1,
        "a new base is standalone (flattened)"
    );
    let views = e.deployer.class_vm_views(&class.id).unwrap();
    assert!(
        views
            .iter()
            .filter(|v| v.role != VmRole::Base)
            .all(|v| v.outdated)
    );
    // Students keep their work until they revert; then they are re-made on the new base.
    assert_eq!(overlay_backing(anna.vmid, 0), v1_path.display().to_string());
    let before = e
        .client
        .guest_config(&anna.node, GuestKind::Qemu, anna.vmid)
        .await
        .unwrap();
    let out = e.deployer.revert(CLUSTER, anna.vmid, "anna").await.unwrap();
    assert!(
        matches!(out, RevertOutcome::Moved { from: 1, to: 2, .. }),
        "{out:?}"
    );
    assert_eq!(overlay_backing(anna.vmid, 0), v2_path.display().to_string());
    let after = e
        .client
        .guest_config(&anna.node, GuestKind::Qemu, anna.vmid)
        .await
        .unwrap();
    assert_eq!(before.nics()[0].mac, after.nics()[0].mac, "the MAC stays");
    let still = e.store.assignments.get(&anna.assignment_id).unwrap().unwrap();
    assert_eq!(still.user, "anna");
    assert!(
        e.client
            .snapshots(&anna.node, GuestKind::Qemu, anna.vmid)
            .await
            .unwrap()
            .iter()
            .any(|s| s.name == "baseline")
    );
    // v1 is still used (teacher, ben): kept.
    assert!(v1_path.exists());

    // Publishing "now" needs the confirmation that students' changes are lost.
    let err = e
        .deployer
        .publish(&class.id, "teach", PublishMode::Now, false)
        .await
        .unwrap_err();
    assert!(matches!(err, DeployError::ConfirmationRequired(_)), "{err}");
    let out = e
        .deployer
        .revert(CLUSTER, class_teacher(&e, &class.id), "teach")
        .await
        .unwrap();
    assert!(matches!(out, RevertOutcome::Moved { to: 2, .. }));
    let job = e
        .deployer
        .publish(&class.id, "teach", PublishMode::Now, true)
        .await
        .unwrap();
    let job = e.deployer.wait_job(&job.id, WAIT).await.unwrap();
    assert_eq!(
        (job.state, job.error.as_deref()),
        (JobState::Done, None),
        "{:#?}",
        job.steps
    );
    let class = e.deployer.class(&class.id).unwrap();
    let v3 = class.bases[2].clone();
    let v3_path = lab
        .labnfs
        .join(format!("images/{0}/base-{0}-disk-0.qcow2", v3.vmid));
    for s in [&anna, &ben] {
        assert_eq!(overlay_backing(s.vmid, 0), v3_path.display().to_string());
    }
    // Nobody uses v1 any more: deleted. The teacher still works on v2: kept.
    assert!(!v1_path.exists(), "old base v1 removed");
    assert!(class.bases[0].deleted_at.is_some());
    assert!(v2_path.exists());
    assert!(
        e.client
            .guest_config(&v2.node, GuestKind::Qemu, v2.vmid)
            .await
            .is_ok()
    );

    // A VM that someone else put under one of the class's VMIDs is never touched.
    let client = e.client.clone();
    let upid: String = client
        .delete(
            &format!("/nodes/{}/qemu/{}", ben.node, ben.vmid),
            &[("purge", "1")],
        )
        .await
        .unwrap();
    client
        .wait_task(&upid.parse().unwrap(), Duration::from_secs(30))
        .await
        .unwrap();
    let upid: String = client
        .post(
            &format!("/nodes/{}/qemu", ben.node),
            &[("vmid", &ben.vmid.to_string()), ("name", "someone-else")],
        )
        .await
        .unwrap();
    client
        .wait_task(&upid.parse().unwrap(), Duration::from_secs(30))
        .await
        .unwrap();

    // Co-owners manage but only the owner deletes, and only with the confirmation.
    e.deployer.add_co_owner(&class.id, "teach", false, "co").unwrap();
    let err = e
        .deployer
        .delete_class(&class.id, "co", false, &class.id)
        .await
        .unwrap_err();
    assert!(matches!(err, DeployError::NotOwner { .. }), "{err}");
    let err = e
        .deployer
        .delete_class(&class.id, "teach", false, "yes")
        .await
        .unwrap_err();
    assert!(matches!(err, DeployError::ConfirmationRequired(_)), "{err}");
    let job = e
        .deployer
        .delete_class(&class.id, "teach", false, &class.id)
        .await
        .unwrap();
    let job = e.deployer.wait_job(&job.id, WAIT).await.unwrap();
    assert_eq!(
        (job.state, job.error.as_deref()),
        (JobState::Done, None),
        "{:#?}",
        job.steps
    );
    assert!(matches!(
        e.deployer.class(&class.id),
        Err(DeployError::NotFound { .. })
    ));
    let left: Vec<u32> = guest_vmids(&e.client)
        .await
        .into_iter()
        .filter(|v| (range.0..=range.1).contains(v))
        .collect();
    assert_eq!(left, vec![ben.vmid], "only the foreign VM remains");
    assert!(
        e.client
            .guest_config(&ben.node, GuestKind::Qemu, ben.vmid)
            .await
            .unwrap()
            .name()
            .as_deref()
            == Some("someone-else")
    );
    assert!(
        e.client
            .guest_config("pve1", GuestKind::Qemu, 9000)
            .await
            .unwrap()
            .is_template(),
        "template untouched"
    );
    assert_eq!(image_dirs_in(range), Vec::<u32>::new());
    assert!(e.deployer.reservations(Some(CLUSTER)).unwrap().is_empty());
    assert!(
        e.store
            .assignments
            .values()
            .unwrap()
            .iter()
            .all(|a| a.class_id.as_deref() != Some(class.id.as_str()))
    );
    let upid: String = client
        .delete(
            &format!("/nodes/{}/qemu/{}", ben.node, ben.vmid),
            &[("purge", "1")],
        )
        .await
        .unwrap();
    client
        .wait_task(&upid.parse().unwrap(), Duration::from_secs(30))
        .await
        .unwrap();
}

fn class_teacher(e: &Env, class: &str) -> u32 {
    e.deployer
        .class_vm_views(class)
        .unwrap()
        .into_iter()
        .find(|v| v.role == VmRole::Teacher)
        .unwrap()
        .vmid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uefi_template_gets_an_efi_overlay_and_a_fresh_tpm_state_and_keeps_its_cdroms() {
    let lab = lab();
    let e = env((3400, 3449));
    add_user(&e.store, "teach", Role::Teacher);
    let class = deployed(&e, "teach", spec("Windows", 9001, 1, "pve1")).await;
    let base = class.bases[0].vmid;
    let student = e
        .deployer
        .class_vm_views(&class.id)
        .unwrap()
        .into_iter()
        .find(|v| v.role == VmRole::Student)
        .unwrap();
    let cfg = e
        .client
        .guest_config("pve1", GuestKind::Qemu, student.vmid)
        .await
        .unwrap();
    let v = student.vmid;
    assert_eq!(cfg.get_str("bios").as_deref(), Some("ovmf"));
    let efi = cfg.get_str("efidisk0").unwrap();
    assert!(
        efi.starts_with(&format!("labnfs:{v}/vm-{v}-disk-1.qcow2")),
        "{efi}"
    );
    assert!(
        efi.contains("efitype=4m") && efi.contains("pre-enrolled-keys=1"),
        "{efi}"
    );
    let efi_base = lab.labnfs.join(format!("images/{base}/base-{base}-disk-1.qcow2"));
    assert_eq!(overlay_backing(v, 1), efi_base.display().to_string());
    let tpm = cfg.get_str("tpmstate0").unwrap();
    assert!(
        tpm.starts_with(&format!("labnfs:{v}/")) && tpm.contains("version=v2.0"),
        "{tpm}"
    );
    assert!(
        !tpm.contains("base-9001"),
        "a fresh TPM state, not the template's"
    );
    assert!(
        e.client
            .snapshots("pve1", GuestKind::Qemu, v)
            .await
            .unwrap()
            .iter()
            .any(|s| s.name == "baseline")
    );
    let job = e
        .deployer
        .delete_class(&class.id, "teach", false, &class.id)
        .await
        .unwrap();
    assert_eq!(
        e.deployer.wait_job(&job.id, WAIT).await.unwrap().state,
        JobState::Done
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linked_clone_preflight_refuses_before_any_write_and_a_good_template_deploys() {
    let lab = lab();
    let range = (3450, 3499);
    let e = env(range);
    add_user(&e.store, "teach", Role::Teacher);
    lab.fake
        .control(
            "POST",
            "/guests",
            json!({"guests": [
                {"vmid": 9103, "name": "tpl-unconverted", "node": "pve1", "template": true,
                 "config": {"memory": 1024, "scsi0": "labnfs:9103/vm-9103-disk-0.qcow2,size=1G", "template": 1}},
                {"vmid": 9104, "name": "tpl-on-local", "node": "pve1", "template": true,
                 "config": {"memory": 1024, "scsi0": "local:9104/base-9104-disk-0.qcow2,size=1G", "template": 1}}
            ]}),
        )
        .unwrap();
    let linked = |template: u32, node: &str| ClassSpec {
        workflow: Some("linked-clone".into()),
        ..spec("Linked", template, 2, node)
    };
    // An ordinary VM never enters the catalogue, so no class is made from it.
    let err = e
        .deployer
        .register_template(
            CLUSTER,
            deploy::TemplateRef::Vmid(100),
            store::TemplateVisibility::AllTeachers,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is not a PVE template"), "{err}");
    let err = e
        .deployer
        .create_class("teach", linked(100, "pve1"))
        .await
        .unwrap_err();
    assert!(matches!(err, DeployError::Forbidden(_)), "{err}");
    open_template(&e, 9103).await;
    open_template(&e, 9104).await;
    let cases = [
        (
            linked(9103, "pve1"),
            "template disks not converted (no base- volume)",
        ),
        (
            linked(9104, "pve2"),
            "linked clones must stay on the template's node pve1 unless the storage is shared",
        ),
    ];
    for (s, want) in cases {
        let mark = lab.fake.request_count().unwrap();
        let err = e.deployer.create_class("teach", s).await.unwrap_err();
        assert!(
            matches!(err, DeployError::Preflight(_)) && err.to_string().contains(want),
            "{err}"
        );
        // Other tests of this binary share the fake cluster: only writes naming this test's
        // templates or VMIDs are this class's.
        let ours = |r: &serde_json::Value| {
            let path = r["path"].as_str().unwrap_or_default();
            [9103, 9104]
                .into_iter()
                .chain(range.0..=range.1)
                .any(|v| path.contains(&format!("/{v}/")) || path.ends_with(&format!("/{v}")))
        };
        let writes: Vec<_> = lab
            .fake
            .requests_since(mark)
            .unwrap()
            .into_iter()
            .filter(|r| r["method"] != "GET" && ours(r))
            .collect();
        assert!(writes.is_empty(), "no write before the preflight: {writes:?}");
    }
    assert!(e.deployer.classes().unwrap().is_empty());
    assert!(e.deployer.reservations(None).unwrap().is_empty());

    // The lab template on shared NFS clones fine, here onto another node.
    let class = deployed(&e, "teach", linked(9000, "pve2")).await;
    assert_eq!(class.bases[0].vmid, 9000);
    assert!(!class.bases[0].owned);
    let views = e.deployer.class_vm_views(&class.id).unwrap();
    assert_eq!(views.len(), 3, "teacher + 2 students; the template is the base");
    for v in &views {
        let cfg = e
            .client
            .guest_config(&v.node, GuestKind::Qemu, v.vmid)
            .await
            .unwrap();
        assert!(cfg.tags().contains("proxlab"));
        assert!(
            cfg.get_str("scsi0")
                .unwrap()
                .contains(&format!("/{}/vm-{}-disk-0", v.vmid, v.vmid)),
            "{cfg:?}"
        );
    }
    let job = e
        .deployer
        .delete_class(&class.id, "teach", false, &class.id)
        .await
        .unwrap();
    let job = e.deployer.wait_job(&job.id, WAIT).await.unwrap();
    assert_eq!(
        (job.state, job.error.as_deref()),
        (JobState::Done, None),
        "{:#?}",
        job.steps
    );
    assert!(
        e.client
            .guest_config("pve1", GuestKind::Qemu, 9000)
            .await
            .unwrap()
            .is_template(),
        "template untouched"
    );
    assert!(lab.labnfs.join("images/9000/base-9000-disk-0.qcow2").exists());
    let left: Vec<u32> = guest_vmids(&e.client)
        .await
        .into_iter()
        .filter(|v| (range.0..=range.1).contains(v))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vmids_are_reserved_inside_the_range_around_existing_guests_and_leftover_disks() {
    let lab = lab();
    let e = env((1100, 1120));
    // 1101..=1112 are lab guests; 1114 has a leftover disk on labnfs.
    lab.fake
        .control(
            "POST",
            "/volume",
            json!({"storage": "labnfs", "volume": "labnfs:1114/vm-1114-disk-0.qcow2", "size": 1048576}),
        )
        .unwrap();
    let a = e
        .deployer
        .reserve_vmids(CLUSTER, 2, "ja", None, Some(("pve1", "labnfs")));
    let b = e
        .deployer
        .reserve_vmids(CLUSTER, 2, "jb", None, Some(("pve1", "labnfs")));
    let (a, b) = tokio::join!(a, b);
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut all: Vec<u32> = a.iter().chain(b.iter()).copied().collect();
    all.sort();
    assert_eq!(all, vec![1100, 1113, 1115, 1116]);
    let err = e
        .deployer
        .reserve_vmids(CLUSTER, 10, "jc", None, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, DeployError::VmidsExhausted { needed: 10, .. }),
        "{err}"
    );
    assert_eq!(
        e.deployer.reservations(Some(CLUSTER)).unwrap().len(),
        4,
        "a failed reservation keeps nothing"
    );
    lab.fake
        .control(
            "POST",
            "/volume",
            json!({"storage": "labnfs", "volume": "labnfs:1114/vm-1114-disk-0.qcow2", "delete": true}),
        )
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_register_by_name_or_vmid_cache_specs_and_sync_flags_vanished_ones() {
    let lab = lab();
    let e = env((3500, 3509));
    let t = e
        .deployer
        .register_template(
            CLUSTER,
            deploy::TemplateRef::Name("tpl-ubuntu-24.04".into()),
            store::TemplateVisibility::AllTeachers,
        )
        .await
        .unwrap();
    assert_eq!(
        (t.vmid, t.node.as_str(), t.cores, t.sockets, t.memory_mib),
        (9000, "pve1", 2, 1, 2048)
    );
    assert_eq!(
        t.disks.len(),
        1,
        "the cloud-init CD-ROM is not a disk: {:?}",
        t.disks
    );
    assert_eq!(t.disks[0].storage, "labnfs");
    assert_eq!(t.disks[0].format.as_deref(), Some("qcow2"));
    assert_eq!(t.disks[0].size_bytes, Some(2 << 30));
    assert_eq!(t.bridges, vec!["vmbr0"]);
    assert!(t.agent && t.is_template && !t.efi);
    let w = e
        .deployer
        .register_template(
            CLUSTER,
            deploy::TemplateRef::Vmid(9001),
            store::TemplateVisibility::AllTeachers,
        )
        .await
        .unwrap();
    assert!(w.efi && w.tpm && w.bios.as_deref() == Some("ovmf"));
    lab.fake
        .control(
            "POST",
            "/guests",
            json!({"guests": [{"vmid": 9105, "name": "tpl-gone", "node": "pve3", "template": true,
                               "config": {"memory": 512, "scsi0": "labnfs:9105/base-9105-disk-0.qcow2,size=1M", "template": 1}}]}),
        )
        .unwrap();
    e.deployer
        .register_template(
            CLUSTER,
            deploy::TemplateRef::Vmid(9105),
            store::TemplateVisibility::AllTeachers,
        )
        .await
        .unwrap();
    let upid: String = e
        .client
        .delete("/nodes/pve3/qemu/9105", &[("purge", "1")])
        .await
        .unwrap();
    e.client
        .wait_task(&upid.parse().unwrap(), Duration::from_secs(30))
        .await
        .unwrap();
    let synced = e.deployer.sync_templates(Some(CLUSTER)).await.unwrap();
    assert_eq!(synced.len(), 3);
    let gone = synced.iter().find(|t| t.vmid == 9105).unwrap();
    assert!(
        gone.sync_error.as_deref().unwrap().contains("no longer exists"),
        "{gone:?}"
    );
    assert!(
        synced
            .iter()
            .filter(|t| t.vmid != 9105)
            .all(|t| t.sync_error.is_none())
    );
    assert_eq!(
        e.deployer.templates_by_name("tpl-windows-11").unwrap()[0].vmid,
        9001
    );
    assert!(
        synced
            .iter()
            .all(|t| t.visibility == store::TemplateVisibility::AllTeachers),
        "a sync keeps who may use each template"
    );
    let stats = e.deployer.template_stats("root", true).unwrap();
    assert_eq!((stats.total, stats.with_errors), (3, 1));
    assert_eq!(stats.by_cluster[CLUSTER], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlays_take_the_base_format_from_qemu_img_info_and_survive_spaces_in_paths() {
    use script::Qcow2Ops;
    let lab = lab();
    let root = lab.labnfs.join("images/3999");
    std::fs::create_dir_all(&root).unwrap();
    let base = root.join("raw base.raw");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(&base)
        .arg("1M")
        .status()
        .unwrap();
    assert!(st.success());
    let ops = node_ops(lab);
    let (b, o) = (
        base.display().to_string(),
        root.join("over lay.qcow2").display().to_string(),
    );
    // A raw base: the caller says qcow2, qemu-img says raw: refused before anything is written.
    let err = ops
        .create_overlay(CLUSTER, "pve1", &b, "qcow2", &o)
        .await
        .unwrap_err();
    assert_eq!(err.code, "qcow2.format", "{err}");
    assert!(!std::path::Path::new(&o).exists());
    // The right format: -F raw, absolute backing path, spaces intact, never `-b` without `-F`.
    ops.create_overlay(CLUSTER, "pve1", &b, "raw", &o).await.unwrap();
    let chain = backing_chain(std::path::Path::new(&o));
    assert_eq!(chain[0]["backing-filename"], b.as_str());
    assert_eq!(chain[0]["backing-filename-format"], "raw");
    assert_eq!(chain[1]["format"], "raw");
    let info = ops.info(CLUSTER, "pve1", &o, "qcow2").await.unwrap();
    assert_eq!(info["format"], "qcow2");
    // Never overwritten; never outside the storage.
    let err = ops
        .create_overlay(CLUSTER, "pve1", &b, "raw", &o)
        .await
        .unwrap_err();
    assert_eq!(err.code, "qcow2.exists", "{err}");
    let err = ops
        .create_overlay(CLUSTER, "pve1", &b, "raw", "/tmp/escape.qcow2")
        .await
        .unwrap_err();
    assert_eq!(err.code, "qcow2.path", "{err}");
    let err = ops
        .create_overlay(CLUSTER, "pve9", &b, "raw", &o)
        .await
        .unwrap_err();
    assert_eq!(err.code, "ssh.unavailable", "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}
