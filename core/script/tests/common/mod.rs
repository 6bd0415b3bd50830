//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use script::{Limits, NullHost, ScriptRuntime, ScriptSet, SetSources};

/// Writes `files` (relative path, text) under `dir`.
pub fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (rel, text) in files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

/// The repo's `scripts/` folder.
pub fn repo_scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts")
}

/// The repo's `plugins/` folder.
pub fn repo_plugins() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins")
}

/// A runtime over a host with nothing behind it (engine-only tests).
pub fn null_runtime(limits: Limits) -> ScriptRuntime {
    ScriptRuntime::new(Arc::new(NullHost::new(tokio::runtime::Handle::current())), limits)
}

/// Loads the embedded defaults with `site` as the site folder.
pub fn load_site(rt: &ScriptRuntime, site: &Path) -> Arc<ScriptSet> {
    let sources = SetSources {
        site: Some(site.to_path_buf()),
        ..Default::default()
    };
    match rt.load_set(&sources) {
        Ok(s) => Arc::new(s),
        Err(e) => panic!("set did not load:\n{}", script::format_load_errors(&e)),
    }
}

/// A deploy script whose `plan(ctx)` runs `body`.
pub fn workflow(body: &str) -> String {
    format!("fn plan(ctx) {{\n{body}\n}}\nfn create_vm(ctx, vm) {{ () }}\n")
}

// ---------------------------------------------------------------------------------------------
// A host over real fake clusters, with an injectable clock and a CPU-sample history recorded
// from `/cluster/resources` on each `refresh` (what the inventory sync does in the server).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use script::{ExecOutput, Host, HostError};

/// CPU samples per `(cluster, vmid)`: `(unix s, cpu fraction)`.
pub type SampleMap = HashMap<(String, u32), Vec<(u64, f64)>>;

pub struct ClusterHost {
    pub handle: tokio::runtime::Handle,
    pub clients: HashMap<String, pve::PveClient>,
    pub now: AtomicU64,
    pub inventory: Mutex<HashMap<(String, u32), serde_json::Value>>,
    pub samples: Mutex<SampleMap>,
    pub ssh_calls: Mutex<Vec<Vec<String>>>,
    /// The VM operations `pve::power` goes through, over a syncer of the same clusters (ticked on
    /// each `refresh`, as the server's sync loop does).
    pub syncer: Arc<sync::Syncer>,
    pub ops: ops::Ops,
}

pub fn pve_client(fc: &testkit::FakeCluster) -> pve::PveClient {
    let url = url::Url::parse(&fc.url).unwrap();
    let auth = pve::Auth::Token {
        id: fc.token_id.clone(),
        secret: pve::Secret::new(fc.token_secret.clone()),
    };
    pve::PveClient::new(pve::PveConfig::new(
        url,
        auth,
        pve::Tls::CaFile(fc.ca_file.clone()),
    ))
    .unwrap()
}

impl ClusterHost {
    /// A host with one cluster id per fake cluster, clock at `now`.
    pub fn new(clusters: &[(&str, &testkit::FakeCluster)], now: u64) -> Arc<ClusterHost> {
        let clients: HashMap<String, pve::PveClient> = clusters
            .iter()
            .map(|(id, fc)| (id.to_string(), pve_client(fc)))
            .collect();
        let names: Vec<(String, String)> = clients.keys().map(|id| (id.clone(), id.clone())).collect();
        let handles = clients
            .iter()
            .map(|(id, client)| sync::ClusterHandle {
                id: id.clone(),
                name: id.clone(),
                client: client.clone(),
            })
            .collect();
        let syncer = sync::Syncer::new(
            sync::Inventory::load(None, &names).unwrap(),
            handles,
            sync::SyncConfig::default(),
            Arc::new(sync::AgentDiscovery),
        );
        let ops = ops::Ops::new(syncer.clone(), ops::OpsConfig::default());
        Arc::new(ClusterHost {
            handle: tokio::runtime::Handle::current(),
            clients,
            syncer,
            ops,
            now: AtomicU64::new(now),
            inventory: Mutex::new(HashMap::new()),
            samples: Mutex::new(HashMap::new()),
            ssh_calls: Mutex::new(Vec::new()),
        })
    }

    /// One inventory sync: `/cluster/resources` of every cluster into the inventory, and one CPU
    /// sample per guest at the current injected time.
    pub async fn refresh(&self) {
        let now = self.now.load(Ordering::SeqCst);
        for id in self.clients.keys() {
            self.syncer.tick_cluster(id, false).await.unwrap();
        }
        for (id, client) in &self.clients {
            let rows = client.cluster_resources().await.unwrap();
            let mut inv = self.inventory.lock().unwrap();
            let mut samples = self.samples.lock().unwrap();
            for r in rows {
                let mut v = serde_json::to_value(&r).unwrap();
                v["cluster"] = serde_json::json!(id);
                v["cpus"] = serde_json::json!(r.maxcpu);
                inv.insert((id.clone(), r.vmid), v);
                if r.status == "running" {
                    samples
                        .entry((id.clone(), r.vmid))
                        .or_default()
                        .push((now, r.cpu));
                } else {
                    samples.remove(&(id.clone(), r.vmid));
                }
            }
        }
    }

    pub fn advance(&self, secs: u64) {
        self.now.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Host for ClusterHost {
    fn runtime(&self) -> tokio::runtime::Handle {
        self.handle.clone()
    }
    fn pve(&self, cluster: &str) -> Option<pve::PveClient> {
        self.clients.get(cluster).cloned()
    }
    fn clusters(&self) -> Vec<String> {
        self.clients.keys().cloned().collect()
    }
    fn ops(&self) -> Option<ops::Ops> {
        Some(self.ops.clone())
    }
    fn inventory_guest(&self, cluster: &str, vmid: u32) -> Option<serde_json::Value> {
        self.inventory
            .lock()
            .unwrap()
            .get(&(cluster.to_string(), vmid))
            .cloned()
    }
    fn inventory_guests(&self, cluster: &str) -> Vec<serde_json::Value> {
        let inv = self.inventory.lock().unwrap();
        let mut v: Vec<_> = inv
            .iter()
            .filter(|((c, _), _)| c == cluster)
            .map(|(_, v)| v.clone())
            .collect();
        v.sort_by_key(|g| g["vmid"].as_u64());
        v
    }
    fn cpu_samples(&self, cluster: &str, vmid: u32) -> Vec<(u64, f64)> {
        self.samples
            .lock()
            .unwrap()
            .get(&(cluster.to_string(), vmid))
            .cloned()
            .unwrap_or_default()
    }
    fn ssh_exec(
        &self,
        _cluster: &str,
        _node: &str,
        argv: &[String],
    ) -> futures::future::BoxFuture<'static, Result<ExecOutput, HostError>> {
        // The SSH executor belongs to the cloner; here the command runs locally, which is what
        // the `local` executor does for a portal on the node.
        self.ssh_calls.lock().unwrap().push(argv.to_vec());
        let argv = argv.to_vec();
        Box::pin(async move {
            let out = tokio::process::Command::new(&argv[0])
                .args(&argv[1..])
                .output()
                .await
                .map_err(|e| HostError::new("ssh.failed", e.to_string()))?;
            Ok(ExecOutput {
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                status: out.status.code().unwrap_or(-1),
            })
        })
    }
    fn now(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}
