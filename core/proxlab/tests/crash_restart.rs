//! Crash-and-restart suite (issue 7 item 3): the real `proxlab serve` binary is killed with SIGKILL
//! during a sync, during a class deployment and during a publish, 10 times each at random points
//! (a seeded xorshift PRNG picks the delay after the triggering request; `CRASH_SEED=N` replays a
//! run). One fake PVE cluster, one data dir and one config are kept across all 30 restarts.
//!
//! After every kill it proves that:
//! - the restarted server serves within 1 s (from spawn until `/health` answers 200 and `/api/vms`
//!   lists the stored inventory: every guest it listed before the kill that the cluster still has);
//! - every job ends, and every class ends `ready` — a `partial`/`failed` class is made whole by
//!   `retry`; a class whose deployment never got past its plan reservation is deleted cleanly;
//! - nothing is lost: every class whose creation was answered 202, and every user created before the
//!   kill, is still there;
//! - nothing is duplicated or orphaned (see [`World::reconcile`]): Proxlab's class VMs, their
//!   assignments, the class bases, the fake cluster's guests in the class VMID range, and the qcow2
//!   files in the fake's `labnfs` folder all agree, and every overlay's backing file exists;
//! - a publish killed midway leaves the class on the old base or on the new one, never half.
//!
//! Deployments run real `qemu-img` locally: pve1–pve3 are `local = true` nodes with the fake's
//! `labnfs` folder as storage root (as in `faults.rs`). The fake runs at time scale 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use testkit::{ClusterSpec, FakeCluster};

/// VMIDs Proxlab may give class VMs (`vmid_range`); the lab cluster has none in it.
const RANGE: (u64, u64) = (4000, 4999);
/// Kills per phase.
const ITERATIONS: usize = 10;
/// Students per class (plus a teacher VM and a class base).
const POOL: u32 = 3;
/// The most a restart may take until it serves the stored inventory.
const READY_LIMIT: Duration = Duration::from_secs(1);

/// xorshift64* — small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// The delay before SIGKILL: half of the kills early (0–150 ms), half later (150–800 ms).
    fn kill_delay(&mut self) -> Duration {
        let ms = if self.next().is_multiple_of(2) {
            self.next() % 150
        } else {
            150 + self.next() % 650
        };
        Duration::from_millis(ms)
    }
}

/// One measured restart.
struct Restart {
    phase: &'static str,
    iter: usize,
    delay: Duration,
    ready: Duration,
    /// The kill interrupted a job: recovery resumed or ended one.
    interrupted: bool,
}

/// The shared world: one fake cluster, one config and data dir, the serving binary (restarted after
/// every kill), an admin token, and what must never be lost.
struct World {
    fake: FakeCluster,
    cfg: PathBuf,
    server: Option<Server>,
    token: String,
    http: reqwest::Client,
    pve: reqwest::Client,
    labnfs: PathBuf,
    all_log: PathBuf,
    restarts: Vec<Restart>,
    /// Users created (201) before a kill.
    users: Vec<String>,
    /// Classes whose creation was answered 202 (and that the test did not delete).
    classes: BTreeSet<String>,
    dir: tempfile::TempDir,
}

fn vmid_set(vms: &Value) -> BTreeSet<u64> {
    vms.as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["vmid"].as_u64())
        .collect()
}

/// Processes (pid, command line, fd flags) with a file under `dir` open.
fn holders(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && target.starts_with(dir)
            {
                let cmd = std::fs::read_to_string(p.path().join("cmdline"))
                    .unwrap_or_default()
                    .replace('\0', " ");
                let info =
                    std::fs::read_to_string(p.path().join("fdinfo").join(fd.file_name())).unwrap_or_default();
                out.push(format!(
                    "{pid} {cmd} {} {}",
                    target.display(),
                    info.replace('\n', " ")
                ));
            }
        }
    }
    out
}

/// A message for people: not empty, no JSON dump, no script file/line of a runtime error.
fn plain(e: &str) -> bool {
    !e.trim().is_empty() && !e.contains("{\"") && !e.contains(".rhai:")
}

fn in_range(v: u64) -> bool {
    (RANGE.0..=RANGE.1).contains(&v)
}

fn step_summary(job: &Value) -> String {
    job["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            format!(
                "  {} {} {} attempts={} {} {}",
                s["role"], s["vmid"], s["state"], s["attempts"], s["detail"], s["error"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl World {
    async fn start() -> World {
        let fake = tokio::task::spawn_blocking(|| FakeCluster::start(ClusterSpec::lab()))
            .await
            .unwrap()
            .unwrap();
        fake.control("POST", "/time-scale", json!({"value": 0.0}))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let labnfs = fake.storage_dirs["labnfs"].canonicalize().unwrap();
        let mut nodes = String::new();
        for node in ["pve1", "pve2", "pve3"] {
            nodes.push_str(&format!(
                "\n[[cluster.node]]\nname = \"{node}\"\nlocal = true\nstorage_roots = {{ labnfs = \"{}\" }}\n",
                labnfs.display()
            ));
        }
        let cfg = dir.path().join("proxlab.toml");
        std::fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n\n[sync]\ninterval_secs = 1\nquorum_interval_secs = 60\n\n\
                 [[cluster]]\nid = \"lab\"\nname = \"School lab\"\nurl = \"{}\"\ntoken_id = \"{}\"\n\
                 token_secret = \"{}\"\nca_file = \"{}\"\nvmid_range = [{}, {}]\n{nodes}",
                dir.path().join("data").display(),
                fake.url,
                fake.token_id,
                fake.token_secret,
                fake.ca_file.display(),
                RANGE.0,
                RANGE.1,
            ),
        )
        .unwrap();
        let token = admin_token(&cfg);
        let server = serve(&cfg);
        let world = World {
            pve: fake.https_client().unwrap(),
            fake,
            all_log: dir.path().join("all-servers.log"),
            cfg,
            server: Some(server),
            token,
            http: testkit::http_client(),
            labnfs,
            restarts: Vec::new(),
            users: Vec::new(),
            classes: BTreeSet::new(),
            dir,
        };
        world
            .wait("first sync", Duration::from_secs(15), async |w: &World| {
                w.get("/health").await.1["clusters"][0]["status"] == "ok"
            })
            .await;
        world
    }

    fn base(&self) -> String {
        self.server.as_ref().expect("server running").base.clone()
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        api_call(&self.http, &self.base(), &self.token, method, path, body).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// Sends a request in the background (the server may die under it): `None` when no answer came.
    fn trigger(&self, path: &str, body: Value) -> tokio::task::JoinHandle<Option<(u16, Value)>> {
        let req = self
            .http
            .post(format!("{}{path}", self.base()))
            .bearer_auth(&self.token)
            .json(&body)
            .timeout(Duration::from_secs(30));
        tokio::spawn(async move {
            let r = req.send().await.ok()?;
            let status = r.status().as_u16();
            let text = r.text().await.ok()?;
            Some((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
        })
    }

    fn logs(&self) -> String {
        let mut s = std::fs::read_to_string(&self.all_log).unwrap_or_default();
        if let Some(srv) = &self.server {
            s.push_str(&std::fs::read_to_string(&srv.log).unwrap_or_default());
        }
        let keep = s.len().saturating_sub(30_000);
        s[s.ceil_char_boundary(keep)..].to_string()
    }

    async fn wait(&self, what: &str, timeout: Duration, mut f: impl AsyncFnMut(&World) -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if f(self).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "timed out waiting for {what}; server logs (tail):\n{}",
            self.logs()
        );
    }

    /// SIGKILL of the running server (its log is kept in `all-servers.log`).
    fn kill(&mut self) {
        let server = self.server.take().expect("a server to kill");
        let log = server.log.clone();
        server.crash();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let mut all = std::fs::read_to_string(&self.all_log).unwrap_or_default();
        all.push_str("\n===== killed =====\n");
        all.push_str(&text);
        std::fs::write(&self.all_log, all).unwrap();
    }

    /// Guests (VMIDs) on the fake cluster.
    fn cluster_guests(&self) -> BTreeMap<u64, Value> {
        self.fake.state().unwrap()["guests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| (g["vmid"].as_u64().unwrap(), g.clone()))
            .collect()
    }

    /// Starts the server again and measures the time from spawn until `/health` answers 200 and
    /// `/api/vms` lists every guest of `before` that the cluster still has.
    async fn restart(&mut self, before: &BTreeSet<u64>) -> Duration {
        // sled's lock on the database goes only when the last copy of its descriptor closes; a process
        // the killed server was spawning holds copies until it execs. Should any process still hold a
        // file of the data dir, wait for it (and say so) rather than fail on a lock not free yet.
        let data = self.dir.path().join("data");
        let held = holders(&data);
        if !held.is_empty() {
            let since = Instant::now();
            while !holders(&data).is_empty() && since.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(5));
            }
            eprintln!(
                "  NOTE: after the kill, other processes still held files of the data dir for {:?}: {held:?}",
                since.elapsed()
            );
        }
        let t = Instant::now();
        self.server = Some(serve(&self.cfg));
        loop {
            let (hs, _) = self.get("/health").await;
            let (vs, vms) = self.get("/api/vms").await;
            if hs == 200 && vs == 200 {
                let have = vmid_set(&vms);
                let missing: Vec<u64> = before.difference(&have).copied().collect();
                let ready = have.len() > 30
                    && (missing.is_empty() || {
                        let now = self.cluster_guests();
                        missing.iter().all(|v| !now.contains_key(v))
                    });
                if ready {
                    return t.elapsed();
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "restart not serving the stored inventory after 20 s; logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn inventory(&self) -> BTreeSet<u64> {
        let (s, vms) = self.get("/api/vms").await;
        assert_eq!(s, 200, "{vms}");
        vmid_set(&vms)
    }

    async fn create_user(&mut self, name: &str) {
        let (s, v) = self
            .post(
                "/api/users",
                json!({"name": name, "role": "student", "password": "crash-test-password"}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        self.users.push(name.to_string());
    }

    async fn class_ids(&self) -> Vec<String> {
        let (s, v) = self.get("/api/classes").await;
        assert_eq!(s, 200, "{v}");
        v["classes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect()
    }

    async fn class(&self, id: &str) -> Value {
        let (s, c) = self.get(&format!("/api/classes/{id}")).await;
        assert_eq!(s, 200, "{c}");
        c
    }

    async fn job(&self, id: &str) -> Value {
        let (s, j) = self.get(&format!("/api/jobs/{id}")).await;
        assert_eq!(s, 200, "{j}");
        j
    }

    /// Waits (60 s) for job `id` to end; returns it.
    async fn job_end(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let j = self.job(id).await;
            if matches!(j["state"].as_str(), Some("done" | "failed" | "cancelled")) {
                return j;
            }
            assert!(
                Instant::now() < deadline,
                "job still running: {j}\nlogs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until no job of any class is pending or running.
    async fn all_jobs_end(&self) {
        self.wait("every job to end", Duration::from_secs(90), async |w: &World| {
            for id in w.class_ids().await {
                let c = w.class(&id).await;
                let busy = c["jobs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|j| matches!(j["state"].as_str(), Some("pending" | "running")));
                if busy {
                    return false;
                }
            }
            true
        })
        .await;
    }

    /// Every job ended; every class is made `ready` (retry for partial/failed classes with a plan;
    /// a class that failed before its plan was made is deleted, which must work too).
    async fn settle(&mut self) {
        self.all_jobs_end().await;
        for id in self.class_ids().await {
            let c = self.class(&id).await;
            let state = c["class"]["state"].as_str().unwrap_or_default().to_string();
            let has_plan = !c["class"]["plan"].is_null();
            for j in c["jobs"].as_array().into_iter().flatten() {
                if let Some(e) = j["error"].as_str() {
                    assert!(plain(e), "class {id}: job error is not plain: {j}");
                }
            }
            match state.as_str() {
                "ready" => {}
                "partial" | "failed" if has_plan => {
                    eprintln!("  class {id} is {state} after the restart; retrying. Its jobs:");
                    for j in c["jobs"].as_array().into_iter().flatten() {
                        eprintln!(
                            " job {} {} {} {}\n{}",
                            j["id"],
                            j["kind"],
                            j["state"],
                            j["error"],
                            step_summary(j)
                        );
                    }
                    let (s, v) = self.post(&format!("/api/classes/{id}/retry"), json!({})).await;
                    assert!((200..300).contains(&s), "retry of {id}: {s} {v}");
                    if let Some(job) = v["job"]["id"].as_str() {
                        let j = self.job_end(job).await;
                        assert_eq!(j["state"], "done", "retry job of {id}:\n{}", step_summary(&j));
                    }
                    let c = self.class(&id).await;
                    assert_eq!(
                        c["class"]["state"], "ready",
                        "class {id} after the retry: {}",
                        c["class"]
                    );
                }
                "failed" => {
                    // Interrupted before the plan reserved/made anything: a plain error, and the class
                    // can be deleted. (Its creation was never answered 202 — that class must be whole.)
                    assert!(
                        !self.classes.contains(&id),
                        "class {id} was accepted (202) but failed without a plan: {c}"
                    );
                    let err = c["jobs"][0]["error"].as_str().unwrap_or_default().to_string();
                    assert!(plain(&err), "plain error wanted: {c}");
                    eprintln!("  class {id} failed before its plan ({err}); deleting it");
                    self.delete_class(&id).await;
                }
                other => panic!("class {id} in state {other} after every job ended: {c}"),
            }
        }
    }

    async fn delete_class(&mut self, id: &str) {
        let (s, v) = self
            .call(
                reqwest::Method::DELETE,
                &format!("/api/classes/{id}?confirm={id}"),
                None,
            )
            .await;
        assert_eq!(s, 202, "{v}");
        let j = self.job_end(v["job"]["id"].as_str().unwrap()).await;
        assert_eq!(j["state"], "done", "delete of {id}:\n{}", step_summary(&j));
        let (s, _) = self.get(&format!("/api/classes/{id}")).await;
        assert_eq!(s, 404, "class {id} still there after its deletion");
        self.classes.remove(id);
    }

    /// A VM's config from the fake cluster's API (the real PVE call).
    async fn vm_config(&self, node: &str, vmid: u64) -> Value {
        let r = self
            .pve
            .get(format!("{}/nodes/{node}/qemu/{vmid}/config", self.fake.api_base))
            .header("Authorization", self.fake.token_header())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "config of {vmid}: {}", r.status());
        r.json::<Value>().await.unwrap()["data"].clone()
    }

    /// Proxlab's records, the cluster, the inventory and the storage folder agree:
    /// - no class or user lost; every job ended;
    /// - class VMs: unique VMIDs and names over all classes, each on the cluster under its name, each
    ///   with exactly one assignment of its class (no lost, no duplicated assignment);
    /// - no orphans: the cluster's guests in the class VMID range are exactly the class VMs;
    /// - bases: the class's live (not deleted) owned bases are exactly its base VMs; every other VM
    ///   is made from a live base version;
    /// - storage: every `images/<vmid>` folder in the range belongs to a class VM, every file in it is
    ///   a disk of that VM's config (no leftover overlay or half-made base), every disk file exists,
    ///   and every overlay's backing file (per `qemu-img info`) exists inside a live base of the class;
    /// - the inventory, after a sync, shows the same guests in the range as the cluster.
    async fn reconcile(&self) {
        let (s, u) = self.get("/api/users").await;
        assert_eq!(s, 200, "{u}");
        let names: BTreeSet<String> = u["users"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|x| x["name"].as_str().map(String::from))
            .collect();
        for user in &self.users {
            assert!(names.contains(user), "user {user} lost; users now: {names:?}");
        }
        let ids: BTreeSet<String> = self.class_ids().await.into_iter().collect();
        for c in &self.classes {
            assert!(ids.contains(c), "class {c} lost; classes now: {ids:?}");
        }
        let guests = self.cluster_guests();
        let on_cluster_range: BTreeSet<u64> = guests.keys().copied().filter(|v| in_range(*v)).collect();

        // Class VMs, over all classes.
        let mut vm_class: BTreeMap<u64, (String, Value)> = BTreeMap::new();
        let mut vm_names = BTreeSet::new();
        let mut live_bases: BTreeMap<String, BTreeMap<u64, u64>> = BTreeMap::new(); // class -> version -> vmid
        for id in &ids {
            let c = self.class(id).await;
            let mut bases = BTreeMap::new();
            for b in c["class"]["bases"].as_array().into_iter().flatten() {
                if b["deleted_at"].is_null() && b["owned"] == true {
                    bases.insert(b["version"].as_u64().unwrap(), b["vmid"].as_u64().unwrap());
                }
            }
            let mut base_vms = BTreeSet::new();
            for v in c["vms"].as_array().unwrap() {
                let vmid = v["vmid"].as_u64().unwrap();
                let name = v["name"].as_str().unwrap().to_string();
                assert!(
                    vm_class.insert(vmid, (id.clone(), v.clone())).is_none(),
                    "VMID {vmid} is a VM of two classes / twice in {id}"
                );
                assert!(vm_names.insert(name.clone()), "two class VMs are named {name}");
                let g = guests
                    .get(&vmid)
                    .unwrap_or_else(|| panic!("class {id} names VM {vmid} that the cluster does not have"));
                assert_eq!(g["name"], name, "VM {vmid} has another name on the cluster");
                if v["role"] == "base" {
                    base_vms.insert(vmid);
                } else {
                    let bv = v["base_version"].as_u64().unwrap();
                    assert!(
                        bases.contains_key(&bv),
                        "VM {vmid} of {id} is made from base v{bv}, which is not a live base: {}",
                        c["class"]["bases"]
                    );
                }
            }
            let base_set: BTreeSet<u64> = bases.values().copied().collect();
            assert_eq!(
                base_set, base_vms,
                "class {id}: live bases {bases:?} vs its base VMs {base_vms:?}"
            );
            live_bases.insert(id.clone(), bases);
        }
        let known: BTreeSet<u64> = vm_class.keys().copied().collect();
        assert_eq!(
            on_cluster_range, known,
            "guests in the class range on the cluster vs Proxlab's class VMs (orphans or lost VMs)"
        );

        // Assignments: exactly one per class VM, of its class.
        let (s, a) = self.get("/api/user-vm-assignments").await;
        assert_eq!(s, 200, "{a}");
        let list = a.as_array().or_else(|| a["assignments"].as_array()).unwrap();
        let mut per_vm: BTreeMap<u64, usize> = BTreeMap::new();
        for x in list.iter().filter(|x| !x["class_id"].is_null()) {
            let vmid = x["vmid"].as_u64().unwrap();
            *per_vm.entry(vmid).or_default() += 1;
            let owner = vm_class.get(&vmid).map(|(c, _)| c.as_str());
            assert_eq!(
                owner,
                x["class_id"].as_str(),
                "assignment {x} names a VM that is not a VM of its class"
            );
        }
        for vmid in &known {
            assert_eq!(
                per_vm.get(vmid),
                Some(&1),
                "class VM {vmid}: assignments {list:?}"
            );
        }

        // Storage folder: every image belongs to a VM's config; backing files exist in a live base.
        let images = self.labnfs.join("images");
        let mut folders = BTreeSet::new();
        for e in std::fs::read_dir(&images).unwrap().flatten() {
            if let Ok(v) = e.file_name().to_string_lossy().parse::<u64>()
                && in_range(v)
            {
                folders.insert(v);
            }
        }
        for v in &folders {
            assert!(
                known.contains(v),
                "leftover folder images/{v} for a VMID Proxlab does not know: {:?}",
                std::fs::read_dir(images.join(v.to_string()))
                    .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
                    .unwrap_or_default()
            );
        }
        for (vmid, (class_id, _)) in &vm_class {
            let node = guests[vmid]["node"].as_str().unwrap().to_string();
            let cfg = self.vm_config(&node, *vmid).await;
            let mut referenced = BTreeSet::new();
            for (_, val) in cfg.as_object().unwrap() {
                let Some(s) = val.as_str() else { continue };
                let vol = s.split(',').next().unwrap_or_default();
                if let Some(rest) = vol.strip_prefix("labnfs:") {
                    referenced.insert(rest.to_string());
                }
            }
            let dir = images.join(vmid.to_string());
            let files: BTreeSet<String> = std::fs::read_dir(&dir)
                .map(|d| {
                    d.flatten()
                        .map(|e| format!("{vmid}/{}", e.file_name().to_string_lossy()))
                        .collect()
                })
                .unwrap_or_default();
            for f in &files {
                assert!(
                    referenced.contains(f),
                    "leftover file {f} in labnfs: not a disk of VM {vmid} (config disks {referenced:?})"
                );
            }
            for r in &referenced {
                assert!(
                    files.contains(r),
                    "VM {vmid} references {r}, which is not on the storage"
                );
                let path = images.join(r);
                let out = Command::new("qemu-img")
                    .args(["info", "--output=json", "-U"])
                    .arg(&path)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "qemu-img info {}: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
                let info: Value = serde_json::from_slice(&out.stdout).unwrap();
                let backing = info["full-backing-filename"]
                    .as_str()
                    .or(info["backing-filename"].as_str());
                if let Some(b) = backing {
                    let bp = Path::new(b);
                    assert!(bp.exists(), "{} backs onto {b}, which is gone", path.display());
                    let base_vmid: u64 = bp
                        .parent()
                        .and_then(|p| p.file_name())
                        .and_then(|n| n.to_string_lossy().parse().ok())
                        .unwrap_or(0);
                    assert!(
                        live_bases[class_id].values().any(|b| *b == base_vmid),
                        "{} backs onto {b}, not a live base of class {class_id} ({:?})",
                        path.display(),
                        live_bases[class_id]
                    );
                }
            }
        }

        // The inventory agrees with the cluster after a sync.
        let (s, _) = self.post("/api/sync/trigger", json!({})).await;
        assert!(s < 300, "sync trigger: {s}");
        self.wait(
            "inventory to match the cluster",
            Duration::from_secs(10),
            async |w: &World| {
                let inv: BTreeSet<u64> = w.inventory().await.into_iter().filter(|v| in_range(*v)).collect();
                inv == on_cluster_range
            },
        )
        .await;
    }

    /// The class's current (newest live) base version.
    async fn current_base(&self, id: &str) -> (u64, u64) {
        let c = self.class(id).await;
        let b = c["class"]["bases"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|b| b["deleted_at"].is_null())
            .unwrap()
            .clone();
        (b["version"].as_u64().unwrap(), b["vmid"].as_u64().unwrap())
    }

    /// One kill: a user is created, `path` is requested, the server is killed `delay` later and
    /// restarted; returns the answer to the request if it came before the kill.
    async fn crash_once(
        &mut self,
        phase: &'static str,
        iter: usize,
        delay: Duration,
        path: &str,
        body: Value,
    ) -> Option<(u16, Value)> {
        let before = self.inventory().await;
        self.create_user(&format!("crash-{phase}-{iter}")).await;
        let req = self.trigger(path, body);
        tokio::time::sleep(delay).await;
        self.kill();
        let answer = req.await.unwrap();
        let ready = self.restart(&before).await;
        let log = std::fs::read_to_string(&self.server.as_ref().unwrap().log).unwrap_or_default();
        let recovery = log
            .lines()
            .find(|l| l.contains("deploy journal recovered"))
            .and_then(|l| l.split("RecoveryReport").nth(1))
            .unwrap_or(" (no report)")
            .to_string();
        let interrupted = !recovery.contains("resumed: [], failed: []");
        eprintln!(
            "[{phase} {iter}] killed {} ms after the request ({}); serving again after {:.1} ms; recovery{recovery}",
            delay.as_millis(),
            match &answer {
                Some((s, _)) => format!("answered {s}"),
                None => "no answer".to_string(),
            },
            ready.as_secs_f64() * 1000.0
        );
        self.restarts.push(Restart {
            phase,
            iter,
            delay,
            ready,
            interrupted,
        });
        answer
    }
}

/// 10 kills each during a sync, a class deployment and a publish (half of the publishes re-make the
/// students at once): every restart serves the stored inventory within 1 s, every job ends, every
/// class ends ready (after `retry` where needed), and [`World::reconcile`] finds nothing lost,
/// duplicated, orphaned or left behind after each kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_sync_deploy_and_publish_restarts_within_a_second_and_loses_or_duplicates_nothing() {
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("CRASH_SEED={seed} (set it to replay these kill points)");
    let mut rng = Rng(seed.max(1));
    let t0 = Instant::now();
    let mut w = World::start().await;

    // The class publishes work on: deployed before any kill.
    let (s, t) = w
        .post("/api/templates", json!({"cluster": "lab", "vmid": 9000}))
        .await;
    assert!(s == 201 || s == 200 || s == 409, "{s} {t}");
    let (s, made) = w
        .post(
            "/api/classes",
            json!({"name": "Crash publish", "cluster": "lab", "template_vmid": 9000, "pool_size": POOL}),
        )
        .await;
    assert_eq!(s, 202, "{made}");
    let pub_class = made["class"]["id"].as_str().unwrap().to_string();
    let j = w.job_end(made["job"]["id"].as_str().unwrap()).await;
    assert_eq!(j["state"], "done", "{}", step_summary(&j));
    w.classes.insert(pub_class.clone());
    w.settle().await;
    w.reconcile().await;
    eprintln!("setup done after {:.1} s", t0.elapsed().as_secs_f64());

    // Phase 1: kill during a sync.
    for i in 0..ITERATIONS {
        let delay = rng.kill_delay();
        w.crash_once("sync", i, delay, "/api/sync/trigger", json!({}))
            .await;
        w.settle().await;
        w.reconcile().await;
    }
    eprintln!("sync phase done after {:.1} s", t0.elapsed().as_secs_f64());

    // Phase 2: kill during a class deployment.
    for i in 0..ITERATIONS {
        let delay = rng.kill_delay();
        let name = format!("Crash deploy {i}");
        let answer = w
            .crash_once(
                "deploy",
                i,
                delay,
                "/api/classes",
                json!({"name": name, "cluster": "lab", "template_vmid": 9000, "pool_size": POOL}),
            )
            .await;
        if let Some((s, v)) = &answer {
            assert_eq!(*s, 202, "{v}");
            w.classes.insert(v["class"]["id"].as_str().unwrap().to_string());
        }
        w.settle().await;
        w.reconcile().await;
    }
    eprintln!("deploy phase done after {:.1} s", t0.elapsed().as_secs_f64());

    // Phase 3: kill during a publish (every other one re-makes the students at once).
    for i in 0..ITERATIONS {
        let delay = rng.kill_delay();
        let (v_before, _) = w.current_base(&pub_class).await;
        let body = if i % 2 == 0 {
            json!({"mode": "now", "confirm": true})
        } else {
            json!({})
        };
        let answer = w
            .crash_once(
                "publish",
                i,
                delay,
                &format!("/api/classes/{pub_class}/publish-template"),
                body,
            )
            .await;
        if let Some((s, v)) = &answer {
            assert_eq!(*s, 202, "{v}");
        }
        w.settle().await;
        let (v_after, _) = w.current_base(&pub_class).await;
        assert!(
            v_after == v_before || v_after == v_before + 1,
            "publish {i}: base v{v_before} became v{v_after}"
        );
        let c = w.class(&pub_class).await;
        let last = &c["jobs"][0];
        eprintln!(
            "  publish {i}: base v{v_before} -> v{v_after}; newest job {} {} {}",
            last["kind"], last["state"], last["error"]
        );
        w.reconcile().await;
    }
    eprintln!("publish phase done after {:.1} s", t0.elapsed().as_secs_f64());

    let mut max = Duration::ZERO;
    eprintln!("restart  phase    iter  kill-after  serving-after  job-interrupted");
    for (n, r) in w.restarts.iter().enumerate() {
        eprintln!(
            "{:>7}  {:<8} {:>4}  {:>7} ms  {:>9.1} ms  {}",
            n + 1,
            r.phase,
            r.iter,
            r.delay.as_millis(),
            r.ready.as_secs_f64() * 1000.0,
            r.interrupted
        );
        max = max.max(r.ready);
    }
    eprintln!(
        "{} restarts; slowest {:.1} ms (limit {} ms); whole run {:.1} s; CRASH_SEED={seed}",
        w.restarts.len(),
        max.as_secs_f64() * 1000.0,
        READY_LIMIT.as_millis(),
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(w.restarts.len(), 3 * ITERATIONS);
    // The kill points are spread enough to land inside jobs (not only after them).
    for phase in ["deploy", "publish"] {
        let n = w
            .restarts
            .iter()
            .filter(|r| r.phase == phase && r.interrupted)
            .count();
        eprintln!("{phase}: {n} of {ITERATIONS} kills interrupted a job");
        assert!(n > 0, "no kill of the {phase} phase landed inside a job");
    }
    for r in &w.restarts {
        assert!(
            r.ready < READY_LIMIT,
            "restart after the kill in {} {} took {:?}",
            r.phase,
            r.iter,
            r.ready
        );
    }
}
