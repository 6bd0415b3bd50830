//! Host functions against a real fake PVE cluster (fakepve via testkit): reads, writes, dry runs,
//! typed errors, the shipped IP tiers and the linked-clone workflow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::*;
use script::{CallOptions, Limits, ScriptError, ScriptRuntime, ScriptSet, SetSources};
use serde_json::json;

fn fake() -> &'static testkit::FakeCluster {
    testkit::FakeCluster::shared()
}

/// A runtime over the shared fake cluster (id "lab"), the repo's default scripts, and `site`.
async fn setup(site: Option<&std::path::Path>) -> (ScriptRuntime, Arc<ScriptSet>, Arc<ClusterHost>) {
    let host = ClusterHost::new(&[("lab", fake())], 1_704_110_400);
    host.refresh().await;
    let rt = ScriptRuntime::new(host.clone(), Limits::default());
    let sources = SetSources {
        defaults: Some(repo_scripts()),
        site: site.map(|s| s.to_path_buf()),
        ..Default::default()
    };
    let set = Arc::new(rt.load_set(&sources).unwrap());
    (rt, set, host)
}

fn site_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), files);
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pve_reads_return_pve_shapes() {
    let site = site_with(&[(
        "rdp/probe.rhai",
        r#"
        fn rdp_settings(vm, user) { #{} }
        fn resources() { pve::resources("lab") }
        fn config(vmid) { pve::guest_config("lab", "pve1", "qemu", vmid) }
        fn nodes() { pve::get("lab", "/nodes") }
        fn status(vmid) { pve::guest_status("lab", "pve1", "qemu", vmid) }
        "#,
    )]);
    let (rt, set, _) = setup(Some(site.path())).await;
    let rows = rt
        .run_entry(&set, "rdp/probe", "resources", vec![])
        .await
        .unwrap();
    let tpl = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["vmid"] == 9000)
        .expect("template 9000 listed");
    assert_eq!(tpl["type"], "qemu");
    assert_eq!(tpl["template"], true);

    let cfg = rt
        .run_entry(&set, "rdp/probe", "config", vec![json!(9000)])
        .await
        .unwrap();
    assert_eq!(cfg["name"], "tpl-ubuntu-24.04");

    let nodes = rt.run_entry(&set, "rdp/probe", "nodes", vec![]).await.unwrap();
    assert_eq!(nodes.as_array().unwrap().len(), 3);

    let st = rt
        .run_entry(&set, "rdp/probe", "status", vec![json!(1101)])
        .await
        .unwrap();
    assert_eq!(st["status"], "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pve_errors_are_thrown_with_codes_and_caught_or_reported_with_path_and_line() {
    let site = site_with(&[(
        "rdp/probe.rhai",
        r#"fn rdp_settings(vm, user) { #{} }
fn missing() {
    pve::guest_status("lab", "pve1", "qemu", 99999)
}
fn caught() {
    try { pve::guest_status("lab", "pve1", "qemu", 99999); } catch (e) { return e.code; }
}
fn unknown_cluster() { pve::resources("nope") }
fn bad_path() { pve::get("lab", "nodes/../../etc") }
"#,
    )]);
    let (rt, set, _) = setup(Some(site.path())).await;
    match rt.run_entry(&set, "rdp/probe", "missing", vec![]).await {
        Err(ScriptError::Thrown {
            code,
            path,
            line,
            message,
            ..
        }) => {
            assert!(
                code == "pve.not_found" || code == "pve.api",
                "code {code}: {message}"
            );
            assert!(path.ends_with("rdp/probe.rhai"));
            assert_eq!(line, 3);
        }
        other => panic!("expected Thrown, got {other:?}"),
    }
    let caught = rt.run_entry(&set, "rdp/probe", "caught", vec![]).await.unwrap();
    assert!(caught.as_str().unwrap().starts_with("pve."));
    match rt.run_entry(&set, "rdp/probe", "unknown_cluster", vec![]).await {
        Err(ScriptError::Thrown { code, .. }) => assert_eq!(code, "pve.unknown_cluster"),
        other => panic!("{other:?}"),
    }
    match rt.run_entry(&set, "rdp/probe", "bad_path", vec![]).await {
        Err(ScriptError::Thrown { code, .. }) => assert_eq!(code, "arg.path"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_records_writes_and_sends_nothing() {
    let site = site_with(&[(
        "rdp/probe.rhai",
        r#"fn rdp_settings(vm, user) { #{} }
fn stop_it(vmid) {
    let upid = pve::power("lab", "pve1", "qemu", vmid, "stop");
    let r = pve::wait_task("lab", upid, 30);
    let out = ssh::exec("lab", "pve1", ["rm", "-rf", "/definitely not run"]);
    #{ upid: upid, wait: r, dry: job::dry_run(), ssh: out, actions: job::actions() }
}
"#,
    )]);
    let (rt, set, _) = setup(Some(site.path())).await;
    let before = fake().request_count().unwrap();
    let opts = CallOptions {
        dry_run: true,
        ..Default::default()
    };
    let r = rt
        .run_entry_with(&set, "rdp/probe", "stop_it", vec![json!(1104)], opts)
        .await
        .unwrap();
    assert_eq!(r.value["dry"], true);
    assert_eq!(r.value["upid"], serde_json::Value::Null);
    assert_eq!(r.value["wait"], "OK");
    assert_eq!(r.value["ssh"]["dry_run"], true);
    assert_eq!(
        r.actions,
        vec![
            "pve lab POST /nodes/pve1/qemu/1104/status/stop".to_string(),
            "ssh lab/pve1: rm -rf '/definitely not run'".to_string()
        ]
    );
    let reqs = fake().requests_since(before).unwrap();
    assert!(
        reqs.iter().all(|r| r["method"] == "GET"),
        "a dry run sent a write: {reqs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_write_waits_on_the_task() {
    let site = site_with(&[(
        "rdp/probe.rhai",
        r#"fn rdp_settings(vm, user) { #{} }
fn snap(vmid, name) {
    let upid = pve::snapshot("lab", "pve3", "qemu", vmid, name);
    let r = pve::wait_task("lab", upid, 60);
    let list = pve::get("lab", `/nodes/pve3/qemu/${vmid}/snapshot`);
    #{ result: r, names: list.map(|s| s.name) }
}
"#,
    )]);
    let (rt, set, _) = setup(Some(site.path())).await;
    let name = format!("t{}", std::process::id());
    let r = rt
        .run_entry(&set, "rdp/probe", "snap", vec![json!(1106), json!(name)])
        .await
        .unwrap();
    assert_eq!(r["result"], "OK");
    assert!(
        r["names"].as_array().unwrap().iter().any(|n| n == &json!(name)),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_agent_tier_prefers_the_net0_nic_and_skips_loopback_and_link_local() {
    let (rt, set, host) = setup(None).await;
    let mut vm = script::vm_arg(host.as_ref(), "lab", 1101);
    vm["mac"] = json!("BC:24:11:11:00:01");
    // Tier order: the inventory has no ip yet, so 10-inventory passes; the agent answers.
    let found = rt.discover_ip(&set, &vm).await;
    assert_eq!(
        found,
        Some(("10.41.0.10".to_string(), "20-guest-agent".to_string()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_inventory_address_wins_and_stale_one_is_ignored() {
    let (rt, set, host) = setup(None).await;
    let now = script::Host::now(host.as_ref());
    let mut vm = script::vm_arg(host.as_ref(), "lab", 1102);
    vm["ip"] = json!("10.41.9.9");
    vm["ip_seen_at"] = json!(now - 10);
    assert_eq!(
        rt.discover_ip(&set, &vm).await,
        Some(("10.41.9.9".into(), "10-inventory".into()))
    );
    vm["ip_seen_at"] = json!(now - 3600);
    let found = rt.discover_ip(&set, &vm).await.unwrap();
    assert_eq!(found.1, "20-guest-agent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_without_agent_yields_no_address() {
    let (rt, set, host) = setup(None).await;
    // VM 104 runs without a guest agent and this host's ARP table does not know it.
    let vm = script::vm_arg(host.as_ref(), "lab", 104);
    assert_eq!(rt.discover_ip(&set, &vm).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_agent_addresses_pass_only_inside_allow_ranges() {
    let site = site_with(&[(
        "rdp/probe.rhai",
        r#"import "lib/net" as n;
fn rdp_settings(vm, user) { #{} }
fn pick(ifaces, allow) { n::pick_address(ifaces, (), allow) }
"#,
    )]);
    let (rt, set, _) = setup(Some(site.path())).await;
    let ifaces = json!([
        {"name": "lo", "hardware-address": "00:00:00:00:00:00", "ip-addresses": [{"ip-address": "127.0.0.1"}]},
        {"name": "docker0", "ip-addresses": [{"ip-address": "172.17.0.1"}]},
        {"name": "ens18", "hardware-address": "bc:24:11:00:00:01",
         "ip-addresses": [{"ip-address": "fe80::1"}, {"ip-address": "127.60.16.3"}]}
    ]);
    let none = rt
        .run_entry(&set, "rdp/probe", "pick", vec![ifaces.clone(), json!([])])
        .await
        .unwrap();
    assert_eq!(none, serde_json::Value::Null);
    let allowed = rt
        .run_entry(&set, "rdp/probe", "pick", vec![ifaces, json!(["127.60.0.0/16"])])
        .await
        .unwrap();
    assert_eq!(allowed, json!("127.60.16.3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdp_default_script_returns_settings_map() {
    let (rt, set, host) = setup(None).await;
    let mut vm = script::vm_arg(host.as_ref(), "lab", 1201);
    vm["ip"] = json!("10.42.0.10");
    vm["tags"] = json!(["rdp-port-3390"]);
    let m = rt
        .rdp_settings(&set, "default", vm, json!({"name": "alice"}))
        .await
        .unwrap();
    assert_eq!(m["address"], "10.42.0.10");
    assert_eq!(m["port"], 3390);
    assert_eq!(m["username"], "alice");
    assert_eq!(m["title"], "winadm-s01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linked_clone_workflow_creates_vms_with_a_baseline_snapshot() {
    let (rt, set, host) = setup(None).await;
    let base = 4700 + (std::process::id() % 100) * 3;
    let ctx = json!({
        "cluster": "lab",
        "class": {"id": "wf", "name": "Workflow test", "teacher": "tina", "students": [{"name": "sam"}]},
        "template": script::vm_arg(host.as_ref(), "lab", 9000),
        "vmids": [base, base + 1],
        "storage": {"id": "local", "path": "/var/lib/vz", "type": "dir"},
        "options": {"task_timeout_s": 120},
    });
    let plan = rt
        .run_entry(&set, "deploy/linked-clone", "plan", vec![ctx.clone()])
        .await
        .unwrap();
    let vms = plan["vms"].as_array().unwrap().clone();
    assert_eq!(vms.len(), 2);
    assert_eq!(vms[0]["name"], "wf-teacher-tina");
    assert_eq!(vms[1]["name"], "wf-student-sam");
    let mut ctx = ctx;
    ctx["plan"] = plan;
    for vm in vms {
        let r = rt
            .run_entry(
                &set,
                "deploy/linked-clone",
                "create_vm",
                vec![ctx.clone(), vm.clone()],
            )
            .await
            .unwrap();
        assert_eq!(r["vmid"], vm["vmid"]);
    }
    let client = pve_client(fake());
    let snaps: serde_json::Value = client
        .get_value(&format!("/nodes/pve1/qemu/{}/snapshot", base + 1), &[])
        .await
        .unwrap();
    assert!(
        snaps.as_array().unwrap().iter().any(|s| s["name"] == "baseline"),
        "{snaps}"
    );
    let cfg: serde_json::Value = client
        .get_value(&format!("/nodes/pve1/qemu/{}/config", base + 1), &[])
        .await
        .unwrap();
    assert_eq!(cfg["name"], "wf-student-sam");
    assert!(cfg["tags"].as_str().unwrap_or("").contains("student"), "{cfg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qcow2_overlay_workflow_dry_run_plans_flatten_overlay_create_and_snapshot() {
    let (rt, set, host) = setup(None).await;
    let storage = fake().storage_dirs.get("labnfs").cloned().unwrap();
    let mut template = script::vm_arg(host.as_ref(), "lab", 9000);
    template["disk"] = json!({"key": "scsi0", "path": storage.join("images/9000/base-9000-disk-0.qcow2"), "format": "qcow2"});
    let ctx = json!({
        "cluster": "lab",
        "class": {"id": "ov", "students": ["sam"]},
        "template": template,
        "vmids": [4900, 4901],
        "storage": {"id": "labnfs", "path": storage, "type": "dir"},
        "options": {},
    });
    let dry = CallOptions {
        dry_run: true,
        ..Default::default()
    };
    let plan = rt
        .run_entry_with(
            &set,
            "deploy/qcow2-overlay",
            "plan",
            vec![ctx.clone()],
            dry.clone(),
        )
        .await
        .unwrap();
    assert_eq!(plan.value["vms"].as_array().unwrap().len(), 2);
    assert!(plan.actions[0].contains("flatten"), "{:?}", plan.actions);
    assert!(
        plan.value["vm_config"]["net0"]
            .as_str()
            .map(|n| !n.contains(':'))
            .unwrap_or(true)
    );
    let mut ctx = ctx;
    ctx["plan"] = plan.value.clone();
    let vm = plan.value["vms"][1].clone();
    let r = rt
        .run_entry_with(&set, "deploy/qcow2-overlay", "create_vm", vec![ctx, vm], dry)
        .await
        .unwrap();
    assert_eq!(r.actions.len(), 3, "{:?}", r.actions);
    assert!(r.actions[0].contains("create overlay"));
    assert!(r.actions[1].starts_with("pve lab POST /nodes/pve1/qemu "));
    assert!(r.actions[1].contains("scsi0=labnfs:4901/vm-4901-disk-0.qcow2"));
    assert!(r.actions[2].contains("/snapshot"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_exec_passes_argv_and_returns_streams_and_status() {
    let site = site_with(&[(
        "rdp/probe.rhai",
        r#"fn rdp_settings(vm, user) { #{} }
fn run(argv) { ssh::exec("lab", "pve1", argv) }
fn must(argv) { ssh::run("lab", "pve1", argv) }
"#,
    )]);
    let (rt, set, host) = setup(Some(site.path())).await;
    let r = rt
        .run_entry(
            &set,
            "rdp/probe",
            "run",
            vec![json!(["printf", "%s|", "a b", "it's"])],
        )
        .await
        .unwrap();
    assert_eq!(r["stdout"], "a b|it's|");
    assert_eq!(r["status"], 0);
    assert_eq!(
        host.ssh_calls.lock().unwrap().last().unwrap(),
        &vec!["printf", "%s|", "a b", "it's"]
    );
    match rt
        .run_entry(
            &set,
            "rdp/probe",
            "must",
            vec![json!(["sh", "-c", "echo oops >&2; exit 3"])],
        )
        .await
    {
        Err(ScriptError::Thrown { code, message, .. }) => {
            assert_eq!(code, "ssh.exit_status");
            assert_eq!(message, "exit status 3: oops");
        }
        other => panic!("{other:?}"),
    }
}
