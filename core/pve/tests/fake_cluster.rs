//! The client against a real fake PVE cluster (fakepve via testkit), token auth, shared lab cluster.
//! Each test that changes state uses its own VMIDs, so the tests can share one cluster.

// Setup helpers outside #[test] fns panic on failure, as tests do.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{requests, token_client};
use pve::{DisplayState, GuestKind, PowerAction, PveError, REQUIRED_VM_PRIVILEGES, TaskOutcome};
use serde_json::json;
use testkit::FakeCluster;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn token_auth_reads_version_nodes_and_cluster_status() {
    let c = FakeCluster::shared();
    let pve = token_client(c);
    let v = pve.version().await.unwrap();
    assert!(v.version.starts_with('9'), "{v:?}");
    let nodes = pve.nodes().await.unwrap();
    let mut names: Vec<&str> = nodes.iter().map(|n| n.node.as_str()).collect();
    names.sort();
    assert_eq!(names, ["pve1", "pve2", "pve3"]);
    assert!(nodes.iter().all(|n| n.is_online() && n.ssl_fingerprint.is_some()));
    let status = pve.cluster_status().await.unwrap();
    let cluster = status.iter().find(|e| e.kind == "cluster").unwrap();
    assert_eq!(cluster.quorate, Some(true));
    assert_eq!(cluster.nodes, Some(3));
    assert_eq!(
        status
            .iter()
            .filter(|e| e.kind == "node" && e.online == Some(true))
            .count(),
        3
    );
}

#[tokio::test]
async fn cluster_resources_recognise_templates_tags_and_kinds() {
    let pve = token_client(FakeCluster::shared());
    let rows = pve.cluster_resources().await.unwrap();
    assert!(rows.len() > 30, "{} guests", rows.len());
    let by_id = |vmid: u32| rows.iter().find(|r| r.vmid == vmid).unwrap();
    for tpl in [9000, 9001, 9002] {
        assert!(by_id(tpl).template, "{tpl} is a template");
    }
    assert_eq!(by_id(9002).kind, GuestKind::Lxc);
    let s01 = by_id(1101);
    assert!(!s01.template);
    assert_eq!(s01.kind, GuestKind::Qemu);
    assert_eq!(s01.node, "pve1");
    assert_eq!(s01.pool.as_deref(), Some("class-netsec"));
    assert!(s01.tags.contains("class-netsec") && s01.tags.contains("student"));
    assert_eq!(s01.maxmem, 2 << 30);
    assert_eq!(by_id(1112).lock.as_deref(), Some("backup"));
}

#[tokio::test]
async fn guest_config_exposes_agent_disks_and_nics() {
    let pve = token_client(FakeCluster::shared());
    let tpl = pve.guest_config("pve1", GuestKind::Qemu, 9000).await.unwrap();
    assert!(tpl.agent_enabled() && tpl.is_template());
    assert_eq!(tpl.memory_mib(), Some(2048));
    assert_eq!(tpl.cores(), Some(2));
    let disks = tpl.disks();
    let scsi0 = disks.iter().find(|d| d.key == "scsi0").unwrap();
    assert_eq!(scsi0.volume, "labnfs:9000/base-9000-disk-0.qcow2");
    assert_eq!(scsi0.storage.as_deref(), Some("labnfs"));
    assert_eq!(scsi0.format.as_deref(), Some("qcow2"));
    assert_eq!(scsi0.size_bytes, Some(2 << 30));
    assert!(
        disks
            .iter()
            .any(|d| d.key == "ide2" && d.is_cdrom && d.is_cloudinit)
    );
    let nic = &tpl.nics()[0];
    assert_eq!(
        (nic.model.as_deref(), nic.mac.as_deref()),
        (Some("virtio"), Some("bc:24:11:90:00:00"))
    );

    let win = pve.guest_config("pve1", GuestKind::Qemu, 9001).await.unwrap();
    assert!(win.disks().iter().any(|d| d.is_efi) && win.disks().iter().any(|d| d.is_tpm));

    let ct = pve.guest_config("pve3", GuestKind::Lxc, 1301).await.unwrap();
    assert_eq!(ct.nics()[0].ip.as_deref(), Some("10.43.0.10"));
    assert_eq!(ct.name().as_deref(), Some("linux101-s01"));
    assert!(!ct.agent_enabled());
}

#[tokio::test]
async fn power_start_waits_for_ok_and_the_guest_runs() {
    let pve = token_client(FakeCluster::shared());
    let upid = pve
        .power("pve2", GuestKind::Qemu, 1105, PowerAction::Start)
        .await
        .unwrap();
    assert_eq!(
        (upid.node.as_str(), upid.kind.as_str(), upid.id.as_str()),
        ("pve2", "qmstart", "1105")
    );
    assert_eq!(upid.user, "root@pam!portal");
    assert_eq!(pve.wait_task(&upid, WAIT).await.unwrap(), TaskOutcome::Ok);
    let st = pve.guest_status("pve2", GuestKind::Qemu, 1105).await.unwrap();
    assert_eq!(st.display_state(), DisplayState::Running);
    assert!(st.agent);

    let stop = pve
        .power("pve2", GuestKind::Qemu, 1105, PowerAction::Stop)
        .await
        .unwrap();
    assert_eq!(pve.wait_task(&stop, WAIT).await.unwrap(), TaskOutcome::Ok);
    let st = pve.guest_status("pve2", GuestKind::Qemu, 1105).await.unwrap();
    assert_eq!(st.display_state(), DisplayState::Stopped);
}

#[tokio::test]
async fn start_error_answers_200_with_upid_but_the_task_fails() {
    // A 200 with a UPID, yet the task fails: the POST succeeds; only the task tells the truth.
    let pve = token_client(FakeCluster::shared());
    let stop = pve
        .power("pve3", GuestKind::Qemu, 1109, PowerAction::Stop)
        .await
        .unwrap();
    pve.wait_task(&stop, WAIT).await.unwrap();
    let upid = pve
        .power("pve3", GuestKind::Qemu, 1109, PowerAction::Start)
        .await
        .unwrap();
    match pve.wait_task(&upid, WAIT).await {
        Err(PveError::TaskFailed {
            upid: failed,
            exitstatus,
        }) => {
            assert_eq!(failed, upid.to_string());
            assert_eq!(exitstatus, "start failed: QEMU exited with code 1");
        }
        other => panic!("{other:?}"),
    }
    let log = pve.task_log(&upid, 50).await.unwrap();
    assert!(log.iter().any(|l| l.contains("TASK ERROR")), "{log:?}");
}

#[tokio::test]
async fn locked_vm_refuses_power_with_locked_error() {
    let c = FakeCluster::shared();
    let pve = token_client(c);
    c.control("POST", "/lock", json!({"vmid": 1206, "lock": "backup"}))
        .unwrap();
    // PVE checks the lock for a start inside the worker: the POST gives a UPID, the task fails.
    let err = match pve.power("pve1", GuestKind::Qemu, 1206, PowerAction::Start).await {
        Ok(upid) => pve.wait_task(&upid, WAIT).await.unwrap_err(),
        Err(e) => e,
    };
    c.control("POST", "/lock", json!({"vmid": 1206, "lock": null}))
        .unwrap();
    match err {
        PveError::Locked { lock, message } => {
            assert_eq!(lock, "backup");
            assert_eq!(message, "VM is locked (backup)");
        }
        other => panic!("{other:?}"),
    }
    // A stop checks it before forking: the POST itself answers 500 "VM is locked (backup)".
    match pve.power("pve3", GuestKind::Qemu, 1112, PowerAction::Stop).await {
        Err(PveError::Locked { lock, .. }) => assert_eq!(lock, "backup"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn agent_interfaces_of_a_running_vm_are_listed() {
    let pve = token_client(FakeCluster::shared());
    let ifaces = pve.agent_network_interfaces("pve1", 1101).await.unwrap();
    assert_eq!(ifaces[0].name, "lo");
    let ens = ifaces.iter().find(|i| i.name == "ens18").unwrap();
    assert_eq!(ens.hardware_address.as_deref(), Some("bc:24:11:11:00:01"));
    let v4 = ens.ip_addresses.iter().find(|a| !a.is_ipv6()).unwrap();
    assert_eq!((v4.ip_address.as_str(), v4.prefix), ("10.41.0.10", 16));
}

#[tokio::test]
async fn agent_500_maps_to_agent_unavailable() {
    // A stopped VM's agent answers 500 "QEMU guest agent is not running\n".
    let c = FakeCluster::shared();
    let pve = token_client(c);
    match pve.agent_network_interfaces("pve3", 1103).await {
        Err(PveError::AgentUnavailable(m)) => assert_eq!(m, "QEMU guest agent is not running"),
        other => panic!("{other:?}"),
    }
    // An agent that hangs: PVE's qmp timeout is still "agent unavailable", not a lock timeout.
    c.control("POST", "/guest", json!({"vmid": 1107, "agent_hangs": true}))
        .unwrap();
    let hung = pve.agent_network_interfaces("pve1", 1107).await;
    c.control("POST", "/guest", json!({"vmid": 1107, "agent_hangs": false}))
        .unwrap();
    assert!(
        matches!(hung, Err(PveError::AgentUnavailable(ref m)) if m.contains("got timeout")),
        "{hung:?}"
    );
}

#[tokio::test]
async fn lxc_interfaces_of_running_and_stopped_containers() {
    let pve = token_client(FakeCluster::shared());
    let ifaces = pve.lxc_interfaces("pve3", 1301).await.unwrap();
    let eth0 = ifaces.iter().find(|i| i.name == "eth0").unwrap();
    assert_eq!(eth0.inet.as_deref(), Some("10.43.0.10/16"));
    assert_eq!(eth0.ip_addresses[0].prefix, 16);
    // A stopped container answers data: null.
    assert!(pve.lxc_interfaces("pve2", 1303).await.unwrap().is_empty());
}

#[tokio::test]
async fn snapshot_create_list_and_rollback() {
    let pve = token_client(FakeCluster::shared());
    let upid = pve
        .snapshot_create("pve1", GuestKind::Qemu, 1104, "proxlab_base", "baseline")
        .await
        .unwrap();
    assert_eq!(upid.kind, "qmsnapshot");
    assert_eq!(pve.wait_task(&upid, WAIT).await.unwrap(), TaskOutcome::Ok);
    let snaps = pve.snapshots("pve1", GuestKind::Qemu, 1104).await.unwrap();
    let base = snaps.iter().find(|s| s.name == "proxlab_base").unwrap();
    assert_eq!(base.description.as_deref(), Some("baseline"));
    assert!(base.snaptime.is_some());
    assert_eq!(
        snaps.iter().find(|s| s.is_current()).unwrap().parent.as_deref(),
        Some("proxlab_base")
    );
    let rb = pve
        .snapshot_rollback("pve1", GuestKind::Qemu, 1104, "proxlab_base")
        .await
        .unwrap();
    assert_eq!(pve.wait_task(&rb, WAIT).await.unwrap(), TaskOutcome::Ok);
}

#[tokio::test]
async fn root_token_permissions_cover_the_vm_privileges() {
    let pve = token_client(FakeCluster::shared());
    let perms = pve.permissions().await.unwrap();
    assert!(
        perms.missing("/vms", REQUIRED_VM_PRIVILEGES).is_empty(),
        "{perms:?}"
    );
    assert!(perms.missing("/vms/1101", REQUIRED_VM_PRIVILEGES).is_empty());
}

#[tokio::test]
async fn storages_and_volumes_are_typed() {
    let pve = token_client(FakeCluster::shared());
    let storages = pve.storages().await.unwrap();
    let labnfs = storages.iter().find(|s| s.storage == "labnfs").unwrap();
    assert_eq!(labnfs.kind, "nfs");
    assert!(labnfs.shared && labnfs.allows("images") && labnfs.path.is_some());
    let vols = pve.storage_content("pve1", "labnfs").await.unwrap();
    let base = vols
        .iter()
        .find(|v| v.volid == "labnfs:9000/base-9000-disk-0.qcow2")
        .unwrap();
    assert_eq!(base.format.as_deref(), Some("qcow2"));
    assert_eq!(base.size, 2 << 30);
    assert_eq!(base.vmid, Some(9000));
}

#[tokio::test]
async fn missing_guest_is_not_found() {
    let pve = token_client(FakeCluster::shared());
    match pve.guest_status("pve1", GuestKind::Qemu, 9999).await {
        Err(PveError::NotFound(m)) => assert!(m.contains("9999.conf' does not exist"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn config_lock_timeout_is_lock_timeout_and_retryable() {
    // A lock timeout, the HTTP 500 form, with PVE's own catalogue error.
    let c = FakeCluster::shared();
    let pve = token_client(c);
    c.control(
        "POST",
        "/fail",
        json!({"method": "POST", "path": "/nodes/pve1/qemu/9000/clone", "error": "config_lock_timeout", "times": 1}),
    )
    .unwrap();
    let err = pve
        .post_value(
            "/nodes/pve1/qemu/9000/clone",
            &[("newid", "4501"), ("full", "0"), ("name", "lab-4501")],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, PveError::LockTimeout(ref m) if m == "can't lock file '/var/lock/qemu-server/lock-9000.conf' - got timeout"),
        "{err:?}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn reads_are_retried_on_503_and_succeed() {
    let c = FakeCluster::shared();
    let pve = token_client(c);
    let path = "/nodes/pve2/qemu/1102/status/current";
    c.control(
        "POST",
        "/fail",
        json!({"method": "GET", "path": path, "status": 503, "message": "busy", "times": 2}),
    )
    .unwrap();
    let mark = c.request_count().unwrap();
    let st = pve.guest_status("pve2", GuestKind::Qemu, 1102).await.unwrap();
    assert_eq!(st.vmid, 1102);
    assert_eq!(requests(c, mark, "GET", path).len(), 3, "one try and two retries");
}

#[tokio::test]
async fn reads_give_up_after_the_configured_retries() {
    let c = FakeCluster::shared();
    let pve = token_client(c);
    let path = "/nodes/pve3/qemu/1106/status/current";
    c.control(
        "POST",
        "/fail",
        json!({"method": "GET", "path": path, "status": 502, "message": "Bad Gateway", "times": 10}),
    )
    .unwrap();
    let mark = c.request_count().unwrap();
    let err = pve.guest_status("pve3", GuestKind::Qemu, 1106).await.unwrap_err();
    c.control("DELETE", "/fail", json!({"method": "GET", "path": path}))
        .unwrap();
    assert!(matches!(err, PveError::Api { status: 502, .. }), "{err:?}");
    assert_eq!(requests(c, mark, "GET", path).len(), 3);
}

#[tokio::test]
async fn writes_are_never_retried() {
    let c = FakeCluster::shared();
    let pve = token_client(c);
    let path = "/nodes/pve2/qemu/1207/status/reboot";
    c.control(
        "POST",
        "/fail",
        json!({"method": "POST", "path": path, "status": 503, "message": "busy", "times": 1}),
    )
    .unwrap();
    let mark = c.request_count().unwrap();
    let err = pve
        .power("pve2", GuestKind::Qemu, 1207, PowerAction::Reboot)
        .await
        .unwrap_err();
    assert!(matches!(err, PveError::Api { status: 503, .. }), "{err:?}");
    assert_eq!(requests(c, mark, "POST", path).len(), 1);
}

#[tokio::test]
async fn sshkeys_are_sent_strictly_encoded_and_accepted() {
    // `sshkeys`: PVE's "urlencoded" format check refuses the raw key and accepts the strict encoding.
    let c = FakeCluster::shared();
    let pve = token_client(c);
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAKEFAKE+/FAKE= student@lab:1";
    let raw = pve
        .put_value("/nodes/pve2/qemu/1201/config", &[("sshkeys", key)])
        .await
        .unwrap_err();
    assert!(
        matches!(raw, PveError::Api { status: 400, ref message } if message.contains("urlencoded")),
        "{raw:?}"
    );
    let mark = c.request_count().unwrap();
    pve.set_sshkeys("pve2", 1201, &[key]).await.unwrap();
    let sent = requests(c, mark, "PUT", "/nodes/pve2/qemu/1201/config");
    let body = sent[0]["body"].as_str().unwrap();
    // Form-encoded once more by the HTTP layer: '%' itself becomes %25.
    assert_eq!(
        body,
        "sshkeys=ssh-ed25519%2520AAAAC3NzaC1lZDI1NTE5AAAAIFAKEFAKE%252B%252FFAKE%253D%2520student%2540lab%253A1"
    );
}

#[tokio::test]
async fn invalid_token_secret_is_invalid_credentials_naming_the_token() {
    let c = FakeCluster::shared();
    let cfg = pve::PveConfig::new(
        c.url.parse().unwrap(),
        pve::Auth::Token {
            id: c.token_id.clone(),
            secret: pve::Secret::new("wrong-secret"),
        },
        pve::Tls::CaFile(c.ca_file.clone()),
    );
    let pve = pve::PveClient::new(cfg).unwrap();
    match pve.version().await {
        Err(e @ PveError::InvalidCredentials { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("root@pam!portal") && !text.contains("wrong-secret"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
}
