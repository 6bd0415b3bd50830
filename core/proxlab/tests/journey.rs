//! The main journey as one browser test (issue 7): headless Debian chromium driven by playwright-core
//! (`tests/browser/journey.mjs`, one run per phase) against the real `proxlab serve` binary, a fake PVE
//! cluster, OpenSSH sshd on loopback (node pve1 is reached over SSH; the students' "VMs" are sshd on
//! the addresses the fake's guest agent reports) and real qemu-img on the fake's `labnfs` storage folder.
//!
//! 1. The server starts with no cluster. The admin fills the cluster form on `/admin/clusters` (URL, API
//!    token, certificate fingerprint), tests the connection and takes the `proxlab.toml` section; the
//!    test writes it (with the token secret in its file and the node sections) as an admin would and
//!    restarts the server (clusters come from the config file).
//! 2. The admin registers template 9000 on `/classes`; the teacher creates a class of 25 with
//!    self-registration, watches the deployment to the end, creates and copies an invite link.
//! 3. Three students register through the link, each gets a distinct VM, starts it, sees its IP appear
//!    live and downloads its `.rdp` file (checked here: UTF-16LE with BOM, CRLF, the VM's address).
//! 4. Each opens the SSH terminal, logs in to their VM, runs a command and reverts the VM.
//! 5. The teacher publishes the teacher VM as base version 2; a student's next revert moves their VM
//!    onto it (checked here: the class API and the overlay's backing file on the storage).
//! 6. The teacher deletes the class: nothing of it is left on the fake cluster or in the storage folder.
//!
//! Screenshots of every step are kept under `target/test-artifacts/journey/`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use testkit::{ClusterSpec, FakeCluster, NodeSshd};

/// VMIDs class VMs get.
const RANGE: (u64, u64) = (4000, 4999);
const POOL: usize = 25;
const CLASS_NAME: &str = "Netzwerke 101 — Gruppe B";
/// The login the students' "VMs" (sshd with password login) accept.
const GUEST_USER: &str = "journey";
const GUEST_PASSWORD: &str = "journey-pass-7";

/// Runs one phase of `tests/browser/journey.mjs`; returns what it printed (panics with its reason).
fn browser_phase(root: &Path, server: &Server, dir: &Path, plan: Value) -> Value {
    let base = server.base.as_str();
    let phase = plan["phase"].as_str().unwrap().to_string();
    let file = dir.join(format!("plan-{phase}.json"));
    std::fs::write(&file, plan.to_string()).unwrap();
    let mut cmd = Command::new("node");
    cmd.arg(root.join("tests/browser/journey.mjs"))
        .arg(base)
        .arg(&file)
        .current_dir(root);
    let (ok, stdout, stderr) = run_with_limit(cmd, dir, Duration::from_secs(240));
    if !ok {
        let log = std::fs::read_to_string(&server.log).unwrap_or_default();
        let _ = std::fs::copy(&server.log, root.join("target/test-artifacts/journey/server.log"));
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "journey phase {phase} failed:\n{stderr}\n{stdout}\nserver log (end):\n{}",
            tail.join("\n")
        );
    }
    let line = stdout.lines().last().unwrap_or_default();
    let seen: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{phase}: {e}: {stdout}"));
    eprintln!("phase {phase}: {seen}");
    seen
}

/// Every file under `dir`, relative, with its size (the storage folder's contents).
fn listing(dir: &Path) -> BTreeSet<String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.insert(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn get(&self, path: &str) -> (u16, Value) {
        api_call(
            &self.http,
            &self.base,
            &self.token,
            reqwest::Method::GET,
            path,
            None,
        )
        .await
    }

    async fn wait(&self, what: &str, secs: u64, mut f: impl AsyncFnMut(&Api) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if f(self).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("timed out waiting for {what}");
    }
}

fn guests_in_range(fake: &FakeCluster) -> BTreeMap<u64, Value> {
    fake.state().unwrap()["guests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| (RANGE.0..=RANGE.1).contains(&g["vmid"].as_u64().unwrap()))
        .map(|g| (g["vmid"].as_u64().unwrap(), g.clone()))
        .collect()
}

/// The qcow2 backing file of a VM's overlay on the storage folder (`qemu-img info` of its
/// `vm-<vmid>-disk-*.qcow2` files under `images/<vmid>/`).
fn backing_file(labnfs: &Path, vmid: u64) -> String {
    let dir = labnfs.join("images").join(vmid.to_string());
    let disks: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            n.starts_with(&format!("vm-{vmid}-disk-")) && n.ends_with(".qcow2")
        })
        .collect();
    // The overlay is the disk with a backing file (a cloud-init disk has none).
    let backings: Vec<String> = disks
        .iter()
        .map(|d| {
            let out = Command::new("qemu-img")
                .args(["info", "--output=json", "-U"])
                .arg(d)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let info: Value = serde_json::from_slice(&out.stdout).unwrap();
            info["full-backing-filename"]
                .as_str()
                .or(info["backing-filename"].as_str())
                .unwrap_or_default()
                .to_string()
        })
        .filter(|b| !b.is_empty())
        .collect();
    assert_eq!(backings.len(), 1, "{disks:?} {backings:?}");
    backings[0].clone()
}

/// Decodes a `.rdp` file: UTF-16LE with BOM and CRLF line ends → its `key:type:value` lines.
fn rdp_lines(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..2], &[0xFF, 0xFE], "no UTF-16LE BOM");
    let units: Vec<u16> = bytes[2..]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let text = String::from_utf16(&units).unwrap();
    assert!(
        text.ends_with("\r\n") && !text.replace("\r\n", "").contains('\n'),
        "{text:?}"
    );
    text.split("\r\n")
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_teacher_and_three_students_go_from_a_new_cluster_to_connected_vms_and_back_to_nothing() {
    let root = testkit::workspace_root();
    check_browser_prerequisites(&root);
    let artifacts = root.join("target/test-artifacts/journey");
    let _ = std::fs::remove_dir_all(&artifacts);

    let spec = ClusterSpec {
        agent_prefix: Some("127.60".into()),
        ..ClusterSpec::lab()
    };
    let fake = tokio::task::spawn_blocking(move || FakeCluster::start(spec))
        .await
        .unwrap()
        .unwrap();
    // Node pve1 (the template's node: flattening and overlays) over SSH to a real sshd on loopback.
    let node_sshd = tokio::task::spawn_blocking(NodeSshd::start)
        .await
        .unwrap()
        .unwrap();
    let labnfs = fake.storage_dirs["labnfs"].canonicalize().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    let listen = free_addr();
    let guest_ssh_port = testkit::free_port("127.0.0.1");
    let cfg = dir.path().join("proxlab.toml");
    let head = format!(
        "listen = \"{listen}\"\npublic_url = \"http://{listen}\"\ndata_dir = \"{}\"\n\n\
         [sync]\ninterval_secs = 5.0\n\n[ip]\nallow_ranges = [\"127.60.0.0/16\"]\n\n\
         [connect]\nssh_port = {guest_ssh_port}\nvendor_dir = \"{}\"\n",
        dir.path().join("data").display(),
        root.join("assets/vendor").display(),
    );
    std::fs::write(&cfg, &head).unwrap();
    run_cli(
        &cfg,
        &["user", "add", "admin", "--role", "admin"],
        "admin-pass-123\n",
    );
    run_cli(
        &cfg,
        &["user", "add", "teacher", "--role", "teacher"],
        "teacher-pass-123\n",
    );
    let token = run_cli(&cfg, &["token", "create", "--user", "admin"], "");

    // 1. The admin adds the cluster: connection test with token + fingerprint in the browser.
    let server = serve(&cfg);
    let seen = browser_phase(
        &root,
        &server,
        dir.path(),
        json!({
            "phase": "cluster", "artifacts": artifacts, "profiles": profiles,
            "admin": "admin", "admin_password": "admin-pass-123",
            "cluster": {"id": "lab", "name": "School lab", "url": fake.url, "token_id": fake.token_id,
                        "token_secret": fake.token_secret, "fingerprint": fake.cert_sha256},
        }),
    );
    assert!(
        seen["test_result"]
            .as_str()
            .unwrap()
            .starts_with("Connected: Proxmox VE"),
        "{seen}"
    );
    // The admin puts the section into proxlab.toml (secret in its own file) with the nodes, and restarts.
    let snippet = seen["snippet"].as_str().unwrap();
    assert!(
        snippet.contains(&format!("fingerprint = \"{}\"", fake.cert_sha256)),
        "{snippet}"
    );
    let secret_file = dir.path().join("lab.token");
    std::fs::write(&secret_file, &fake.token_secret).unwrap();
    let section = snippet.replace("/etc/proxlab/lab.token", &secret_file.display().to_string());
    let mut nodes = format!(
        "\n[[cluster.node]]\nname = \"pve1\"\nssh_host = \"{}\"\nssh_port = {}\nssh_user = \"{}\"\n\
         key_file = \"{}\"\nhost_key_sha256 = \"{}\"\nstorage_roots = {{ labnfs = \"{}\" }}\n",
        node_sshd.host,
        node_sshd.port,
        node_sshd.user,
        node_sshd.private_key.display(),
        node_sshd.host_key_sha256,
        labnfs.display()
    );
    for n in ["pve2", "pve3"] {
        nodes.push_str(&format!(
            "\n[[cluster.node]]\nname = \"{n}\"\nlocal = true\nstorage_roots = {{ labnfs = \"{}\" }}\n",
            labnfs.display()
        ));
    }
    std::fs::write(
        &cfg,
        format!(
            "{head}\n{section}\nvmid_range = [{}, {}]\n{nodes}",
            RANGE.0, RANGE.1
        ),
    )
    .unwrap();
    drop(server);
    let server = serve(&cfg);
    let api = Api {
        http: testkit::http_client(),
        base: server.base.clone(),
        token,
    };
    wait_first_sync(&api.base, &api.token, 20).await;
    let storage_before = listing(&labnfs);
    assert!(guests_in_range(&fake).is_empty());

    // 2. Template, class of 25, invite link.
    let seen = browser_phase(
        &root,
        &server,
        dir.path(),
        json!({
            "phase": "setup", "artifacts": artifacts, "profiles": profiles,
            "admin": "admin", "teacher": "teacher", "teacher_password": "teacher-pass-123",
            "template_vmid": 9000, "spare_template_vmid": 9001, "class_name": CLASS_NAME, "pool_size": POOL,
            "teacher_classes": 3, "teacher_vms": 40, "invite_max": 3, "quota_hours": 10,
        }),
    );
    assert_eq!(seen["spare_unregistered"], true, "{seen}");
    assert_eq!(seen["spare_visibility"], "teacher", "{seen}");
    // The limits the admin set in the page are the teacher's, and the class of POOL + 2 VMs fit them.
    let (s, users) = api.get("/api/users").await;
    assert_eq!(s, 200, "{users}");
    let usage = &users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "teacher")
        .unwrap()["limits"];
    assert_eq!(usage["classes_limit"], 3, "{usage}");
    assert_eq!(usage["vms_limit"], 40, "{usage}");
    assert_eq!(usage["vms"], POOL + 2, "{usage}");
    assert_eq!(seen["invite_accounts"], "0 of 3", "{seen}");
    // The class hours the teacher saved in the page: the refusal named the field, the calendar shows
    // the Wednesday slot and the one-off session, and the API has the same timetable.
    assert!(
        seen["hours_refusal"]
            .as_str()
            .unwrap()
            .contains("ends at 13:00 but starts at 14:00"),
        "{seen}"
    );
    assert_eq!(seen["calendar_blocks"], 1, "{seen}");
    let summary = seen["calendar"].as_str().unwrap();
    assert!(
        summary.contains("Wed 09:00–10:30") && summary.contains("2027-01-20 14:00–16:00"),
        "{summary}"
    );
    let class_id = seen["class_id"].as_str().unwrap().to_string();
    let (s, hours) = api.get(&format!("/api/classes/{class_id}/hours")).await;
    assert_eq!(s, 200, "{hours}");
    assert_eq!(hours["hours"]["timetable"]["zone"], "Europe/London", "{hours}");
    assert_eq!(
        hours["hours"]["timetable"]["weekly"][0]["days"],
        json!(["wed"]),
        "{hours}"
    );
    assert_eq!(hours["hours"]["quota_hours"], 10, "{hours}");
    let invite = seen["invite"].as_str().unwrap().to_string();
    let progress = seen["progress"].as_array().unwrap();
    assert!(
        progress.last().unwrap()["state"] == "ready",
        "the teacher saw the deployment end: {progress:?}"
    );
    let (s, class) = api.get(&format!("/api/classes/{class_id}")).await;
    assert_eq!(s, 200, "{class}");
    assert_eq!(class["class"]["name"], CLASS_NAME, "{class}");
    assert_eq!(class["vms"].as_array().unwrap().len(), POOL + 2, "{class}");
    assert_eq!(guests_in_range(&fake).len(), POOL + 2);
    // The catalogue holds the class's template only: the spare one was unregistered with its button.
    let (s, t) = api.get("/api/templates").await;
    assert_eq!(s, 200, "{t}");
    let listed: Vec<_> = t["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["vmid"].clone())
        .collect();
    assert_eq!(listed, vec![json!(9000)], "{t}");

    // 3. Three students register through the link, start their VM, see the IP, download the .rdp file.
    let students = [("ana", "Ana Müller"), ("bo", "Bo O'Brien"), ("chen", "陈 晨")];
    let seen = browser_phase(
        &root,
        &server,
        dir.path(),
        json!({
            "phase": "students", "artifacts": artifacts, "profiles": profiles, "invite": invite,
            "students": students.iter().map(|(u, d)| json!({"user": u, "display": d, "password": format!("{u}-pass-123")})).collect::<Vec<_>>(),
        }),
    );
    let got = seen["students"].as_array().unwrap();
    let vmids: BTreeSet<u64> = got.iter().map(|s| s["vmid"].as_u64().unwrap()).collect();
    assert_eq!(vmids.len(), 3, "each student has their own VM: {got:?}");
    let mut ips = Vec::new();
    for s in got {
        let vmid = s["vmid"].as_u64().unwrap();
        assert!((RANGE.0..=RANGE.1).contains(&vmid), "{s}");
        assert_eq!(
            s["join_title"],
            format!("Join {CLASS_NAME}"),
            "the link shows a join page: {s}"
        );
        assert!(s["notice"].as_str().unwrap().contains(CLASS_NAME), "{s}");
        assert_eq!(s["class_label"], CLASS_NAME, "{s}");
        let ip = s["ip"].as_str().unwrap().to_string();
        assert_eq!(ip, format!("127.60.{}.{}", vmid / 250, vmid % 250 + 2), "{s}");
        assert_eq!(guests_in_range(&fake)[&vmid]["status"], "running");
        let lines = rdp_lines(Path::new(s["rdp"].as_str().unwrap()));
        assert!(lines.contains(&format!("full address:s:{ip}:3389")), "{lines:?}");
        assert!(
            lines.contains(&format!("username:s:{}", s["user"].as_str().unwrap())),
            "{lines:?}"
        );
        assert!(!lines.iter().any(|l| l.starts_with("password")), "{lines:?}");
        assert!(s["rdp_name"].as_str().unwrap().ends_with(".rdp"), "{s}");
        ips.push(ip);
    }
    let (_, assignments) = api.get("/api/user-vm-assignments").await;
    let assignments = assignments
        .as_array()
        .or_else(|| assignments["assignments"].as_array())
        .cloned()
        .unwrap();
    for s in got {
        let mine: Vec<&Value> = assignments
            .iter()
            .filter(|a| a["user"] == s["user"] && a["class_id"] == class_id.as_str())
            .collect();
        assert_eq!(mine.len(), 1, "{s} {mine:?}");
        assert_eq!(mine[0]["vmid"], s["vmid"]);
    }

    // 4. The students' VMs answer SSH on their addresses; each logs in through the browser terminal.
    let mut guest_sshds = Vec::new();
    for ip in &ips {
        let ip = ip.clone();
        guest_sshds.push(
            tokio::task::spawn_blocking(move || {
                NodeSshd::start_with_password(&ip, guest_ssh_port, GUEST_USER, GUEST_PASSWORD)
            })
            .await
            .unwrap()
            .unwrap(),
        );
    }
    let seen = browser_phase(
        &root,
        &server,
        dir.path(),
        json!({
            "phase": "terminal", "artifacts": artifacts, "profiles": profiles,
            "guest_user": GUEST_USER, "guest_password": GUEST_PASSWORD,
            "students": got.iter().map(|s| json!({"user": s["user"], "vmid": s["vmid"]})).collect::<Vec<_>>(),
        }),
    );
    assert_eq!(seen["students"].as_array().unwrap().len(), 3, "{seen}");
    for vmid in &vmids {
        assert_eq!(
            guests_in_range(&fake)[vmid]["status"],
            "stopped",
            "reverted VM {vmid}"
        );
    }
    drop(guest_sshds);

    // 5. Publish; the first student's next revert moves their VM onto base version 2.
    let first = &got[0];
    let first_vmid = first["vmid"].as_u64().unwrap();
    let backing_before = backing_file(&labnfs, first_vmid);
    let seen = browser_phase(
        &root,
        &server,
        dir.path(),
        json!({
            "phase": "publish", "artifacts": artifacts, "profiles": profiles, "teacher": "teacher",
            "class_id": class_id, "student": {"user": first["user"], "vmid": first_vmid},
        }),
    );
    // The extra minutes granted in the page are stored beside the timetable and quota saved before.
    let (_, hours) = api.get(&format!("/api/classes/{class_id}/hours")).await;
    assert_eq!(
        hours["hours"]["extra_minutes"][first["user"].as_str().unwrap()],
        90,
        "{hours}"
    );
    assert_eq!(hours["hours"]["quota_hours"], 10, "{hours}");
    assert_eq!(hours["hours"]["timetable"]["zone"], "Europe/London", "{hours}");
    assert!(seen["left_after"].as_str().unwrap().starts_with("11 h"), "{seen}");
    let (_, class) = api.get(&format!("/api/classes/{class_id}")).await;
    let vm_of = |vmid: u64| {
        class["vms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["vmid"] == vmid)
            .cloned()
            .unwrap()
    };
    let bases = class["class"]["bases"].as_array().unwrap();
    assert_eq!(bases.last().unwrap()["version"], 2, "{class}");
    assert_eq!(vm_of(first_vmid)["base_version"], 2, "{class}");
    let other = got[1]["vmid"].as_u64().unwrap();
    assert_eq!(vm_of(other)["base_version"], 1, "not reverted yet: {class}");
    let backing_after = backing_file(&labnfs, first_vmid);
    assert_ne!(backing_after, backing_before, "the overlay moved to the new base");
    let base_v2 = bases.last().unwrap()["vmid"].as_u64().unwrap();
    assert!(
        backing_after.contains(&format!("/{base_v2}/base-{base_v2}-disk-")),
        "{backing_after} is not the disk of base VM {base_v2}"
    );

    // 6. Delete: nothing of the class is left on the cluster or the storage.
    let seen = browser_phase(
        &root,
        &server,
        dir.path(),
        json!({"phase": "delete", "artifacts": artifacts, "profiles": profiles, "teacher": "teacher",
               "class_id": class_id}),
    );
    assert!(
        seen["notice"].as_str().unwrap().starts_with(CLASS_NAME),
        "the class list names the class being deleted: {seen}"
    );
    api.wait("the class to be gone", 60, async |a: &Api| {
        a.get(&format!("/api/classes/{class_id}")).await.0 == 404
    })
    .await;
    assert!(
        guests_in_range(&fake).is_empty(),
        "VMs left: {:?}",
        guests_in_range(&fake).keys()
    );
    let storage_after = listing(&labnfs);
    assert_eq!(
        storage_after.difference(&storage_before).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "files left on the storage"
    );
    let (_, assignments) = api.get("/api/user-vm-assignments").await;
    assert!(
        !assignments.to_string().contains(&class_id),
        "assignments left: {assignments}"
    );
    let shots = std::fs::read_dir(&artifacts).unwrap().count();
    assert!(shots >= 15, "screenshots kept: {shots}");
}
