//! Fake Proxmox VE clusters: `pve-sim/sim.py` (fakepve) on a loopback address, one process per cluster.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::proc::{POLL, run, stop_child, tail};
use crate::{
    TestkitError, control, ensure_venv, free_port, is_loopback, port_is_free, sim_dir, unique_loopback,
};

/// The API token every harness cluster has (lab-cluster.json's; added to guests files that have none).
pub const LAB_TOKEN_ID: &str = "root@pam!portal";

/// Secret of [`LAB_TOKEN_ID`] when the guests file defines no API token.
const DEFAULT_TOKEN_SECRET: &str = "00000000-fake-4000-8000-testkit00000";

/// The sim's `root@pam` password.
const PASSWORD: &str = "secret";

/// How long [`FakeCluster::start`] waits for `pve-sim ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Grace time between SIGTERM and SIGKILL when a cluster is dropped.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// What fake cluster to start. Build it with [`ClusterSpec::lab`], [`ClusterSpec::generated`] or
/// `ClusterSpec { time_scale: 0.01, ..ClusterSpec::lab() }`.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Guests file (`{"cluster": {...}, "guests": [...]}`, pve-sim format; see `pve-sim/README.md`).
    /// Default: `pve-sim/lab-cluster.json` (3 nodes, templates 9000/9001/9002, ~42 guests). Ignored when
    /// [`ClusterSpec::generated_guests`] is set.
    pub guests_file: PathBuf,
    /// Real seconds per PVE second for task durations and latency; 0 (default) = tasks finish before the reply.
    pub time_scale: f64,
    /// `PVE_SIM_AGENT_PREFIX`, e.g. `"127.60"`: running VMs with `agent: 1` and no scripted agent report
    /// `127.60.<vmid/250>.<vmid%250+2>`, a loopback address where a test can run a real service.
    pub agent_prefix: Option<String>,
    /// Cluster name (`/cluster/status`); default: the guests file's `cluster.name`.
    pub name: Option<String>,
    /// Guests (pve-sim guest objects) appended to the guests file's `guests` list.
    pub extra_guests: Vec<Value>,
    /// Loopback address to listen on; default: a fresh [`crate::unique_loopback`] address.
    pub host: Option<String>,
    /// `Some(n)`: instead of the guests file, generate the lab cluster section with `n` qemu guests (see
    /// [`ClusterSpec::generated`]).
    pub generated_guests: Option<usize>,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            guests_file: sim_dir().join("lab-cluster.json"),
            time_scale: 0.0,
            agent_prefix: None,
            name: None,
            extra_guests: Vec::new(),
            host: None,
            generated_guests: None,
        }
    }
}

impl ClusterSpec {
    /// The school lab of `pve-sim/lab-cluster.json`: nodes pve1..pve3, storages `labnfs` (dir-backed, real
    /// qcow2 files) and `local`, templates 9000 (Ubuntu), 9001 (Windows 11), 9002 (LXC), classes of guests.
    pub fn lab() -> Self {
        Self::default()
    }

    /// A generated cluster of `n` qemu guests spread over 3 nodes (pve1..pve3), for benchmarks (2,000–5,000).
    ///
    /// The cluster section is lab-cluster.json's (storages, users, token `root@pam!portal`, auto agent) plus an
    /// in-memory `local-lvm` (lvmthin). Guest `i` (0-based) is VMID `1000 + i`, named `lab-<vmid>`
    /// (`lab-1000`), on node `pve{i % 3 + 1}`, with a net0 MAC `BC:24:11:<vmid as 3 hex bytes>`. Every 500th
    /// (`i % 500 == 0`) is a template with a real 2 GiB qcow2 base on `labnfs`; of the rest, even `i` run with
    /// `agent: "1"` (so they report an address), odd `i` are stopped. Disks of non-templates are on
    /// `local-lvm` (32 GiB, no files).
    pub fn generated(n: usize) -> Self {
        ClusterSpec {
            generated_guests: Some(n),
            ..Self::default()
        }
    }
}

/// One running fake PVE cluster. Dropping it stops the sim (SIGTERM, SIGKILL after 3 s) and removes
/// `state_dir`. Debug output hides the password and token secret.
pub struct FakeCluster {
    /// Cluster name as `/cluster/status` reports it.
    pub name: String,
    /// The loopback address both servers listen on, e.g. `127.12.34.1`.
    pub host: String,
    /// HTTPS port of the PVE API (8006 when free on `host`).
    pub port: u16,
    /// `https://<host>:<port>`.
    pub url: String,
    /// `https://<host>:<port>/api2/json`.
    pub api_base: String,
    /// `http://<host>:<control port>`: the sim's JSON control API (see `pve-sim/README.md`).
    pub control_url: String,
    /// `root@pam`.
    pub user: String,
    /// Password of `user` (ticket login with `POST /access/ticket`).
    pub password: String,
    /// `root@pam!portal`.
    pub token_id: String,
    /// Secret of `token_id`; header `Authorization: PVEAPIToken=<token_id>=<token_secret>`.
    pub token_secret: String,
    /// PEM file of the self-signed certificate the API serves; trust it as the only root.
    pub ca_file: PathBuf,
    /// SHA-256 of the certificate's DER bytes, upper-case hex pairs joined by `:` (`"AA:BB:..."`), as PVE's
    /// `pveproxy` fingerprint is shown.
    pub cert_sha256: String,
    /// Dir-backed storages: storage ID → real folder (`labnfs` → `<state_dir>/data/storage/labnfs`).
    pub storage_dirs: BTreeMap<String, PathBuf>,
    /// PID of the sim process.
    pub pid: u32,
    /// The cluster's own temp folder (guests file, data, log); removed on drop.
    pub state_dir: PathBuf,
    /// The sim's stdout+stderr.
    pub log: PathBuf,
    /// The guests file the sim loaded (the spec's file + extra guests, or the generated one).
    pub guests_file: PathBuf,
    control_port: u16,
    child: Option<Child>,
    marker: String,
    _state: tempfile::TempDir,
    _ca: Arc<tempfile::TempDir>,
}

impl fmt::Debug for FakeCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeCluster")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("control_url", &self.control_url)
            .field("user", &self.user)
            .field("password", &"***")
            .field("token_id", &self.token_id)
            .field("token_secret", &"***")
            .field("ca_file", &self.ca_file)
            .field("cert_sha256", &self.cert_sha256)
            .field("pid", &self.pid)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

/// CA files shared by the clusters of one `start_many` call.
struct Ca {
    dir: Arc<tempfile::TempDir>,
    cert: PathBuf,
    key: PathBuf,
    sha256: String,
}

impl FakeCluster {
    /// Start one cluster and block until the sim prints `pve-sim ready` (30 s timeout; the error carries the
    /// log tail). First use creates the fakepve venv ([`crate::ensure_venv`]), which may take a minute.
    pub fn start(spec: ClusterSpec) -> anyhow::Result<FakeCluster> {
        let mut all = Self::start_many(vec![spec])?;
        all.pop()
            .ok_or_else(|| anyhow::anyhow!("start_many returned no cluster"))
    }

    /// Start several clusters (in parallel) whose certificates are one self-signed certificate naming every
    /// host, in one shared `ca_file`. Each gets its own loopback host (unless `spec.host` is set) and state dir.
    /// On any failure the clusters already started are stopped.
    pub fn start_many(specs: Vec<ClusterSpec>) -> anyhow::Result<Vec<FakeCluster>> {
        Self::start_many_with_parent(specs, std::process::id())
    }

    fn start_many_with_parent(specs: Vec<ClusterSpec>, parent: u32) -> anyhow::Result<Vec<FakeCluster>> {
        let python = ensure_venv()?;
        let mut hosts = Vec::new();
        for spec in &specs {
            let host = spec.host.clone().unwrap_or_else(unique_loopback);
            if !is_loopback(&host) {
                return Err(
                    TestkitError::Invalid(format!("cluster host {host:?} is not in 127.0.0.0/8")).into(),
                );
            }
            hosts.push(host);
        }
        let ca = make_ca(&python, &hosts)?;
        let mut clusters = Vec::new();
        for (spec, host) in specs.into_iter().zip(hosts) {
            clusters.push(Self::spawn(&python, spec, host, &ca, parent)?);
        }
        for cluster in &mut clusters {
            cluster.wait_ready()?;
        }
        Ok(clusters)
    }

    /// One lab cluster ([`ClusterSpec::lab`]) per test process, started on first use. The sim watches this
    /// process and exits (removing its temp dirs) within ~0.5 s after the process is gone, since statics are
    /// never dropped. Tests sharing it must not assume a pristine state.
    ///
    /// Panics with the start error (and log tail) if the cluster cannot be started.
    pub fn shared() -> &'static FakeCluster {
        static SHARED: OnceLock<FakeCluster> = OnceLock::new();
        SHARED.get_or_init(|| match FakeCluster::start(ClusterSpec::lab()) {
            Ok(cluster) => cluster,
            Err(e) => panic!("testkit: cannot start the shared fake cluster: {e:#}"),
        })
    }

    /// Call the control API: `method` (`GET`, `POST`, `DELETE`), `path` (`/quorum`, `/requests?since=3`), a JSON
    /// body (`Value::Null` for none). Returns the JSON answer; a non-2xx answer is [`TestkitError::Control`].
    /// Example: `control("POST", "/quorum", json!({"quorate": false}))`.
    pub fn control(&self, method: &str, path: &str, body: Value) -> anyhow::Result<Value> {
        control::call(&self.host, self.control_port, method, path, &body)
    }

    /// `GET /state`: cluster name, quorate, time_scale, nodes, network, failures, storages, storage_dirs,
    /// pools, guests (`vmid`, `type`, `name`, `node`, `status`, `lock`, `template`, `agent`).
    pub fn state(&self) -> anyhow::Result<Value> {
        self.control("GET", "/state", Value::Null)
    }

    /// The PVE API requests the sim received from number `n` on (0-based): `{n, method, path, body}` each.
    pub fn requests_since(&self, n: usize) -> anyhow::Result<Vec<Value>> {
        let answer = self.control("GET", &format!("/requests?since={n}"), Value::Null)?;
        match answer.get("requests") {
            Some(Value::Array(rows)) => Ok(rows.clone()),
            _ => anyhow::bail!("control API GET /requests: no `requests` list in {answer}"),
        }
    }

    /// How many PVE API requests the sim has received (since start or the last `DELETE /requests`).
    pub fn request_count(&self) -> anyhow::Result<usize> {
        let answer = self.control("GET", "/requests?since=0", Value::Null)?;
        answer
            .get("count")
            .and_then(Value::as_u64)
            .map(|c| c as usize)
            .ok_or_else(|| anyhow::anyhow!("control API GET /requests: no `count` in {answer}"))
    }

    /// `PVEAPIToken=<token_id>=<token_secret>`: the `Authorization` header value for API-token calls.
    pub fn token_header(&self) -> String {
        format!("PVEAPIToken={}={}", self.token_id, self.token_secret)
    }

    /// A rustls client config (ring provider, TLS 1.2/1.3) that trusts only `ca_file`.
    pub fn tls_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(&self.ca_file)? {
            roots
                .add(cert)
                .with_context(|| format!("adding {} as a root", self.ca_file.display()))?;
        }
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
        Ok(config)
    }

    /// An async reqwest client that verifies the API's certificate with `ca_file` (10 s timeout).
    pub fn https_client(&self) -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .use_preconfigured_tls(self.tls_config()?)
            .timeout(Duration::from_secs(10))
            .build()?)
    }

    fn spawn(
        python: &Path,
        spec: ClusterSpec,
        host: String,
        ca: &Ca,
        parent: u32,
    ) -> anyhow::Result<FakeCluster> {
        let state = tempfile::Builder::new()
            .prefix("pve-sim-")
            .tempdir()
            .context("creating the state dir")?;
        let state_dir = state.path().to_path_buf();
        let data_dir = state_dir.join("data");
        std::fs::create_dir_all(&data_dir)?;
        let guests = guests_json(&spec)?;
        let guests_file = state_dir.join("guests.json");
        std::fs::write(&guests_file, serde_json::to_vec(&guests)?)?;
        let cluster_section = guests.get("cluster").cloned().unwrap_or(Value::Null);
        let (token_id, token_secret) = token_of(&cluster_section);
        let name = spec
            .name
            .clone()
            .or_else(|| {
                cluster_section
                    .get("name")
                    .and_then(Value::as_str)
                    .map(String::from)
            })
            .unwrap_or_else(|| "pve-sim".to_string());

        let (port, control_port) = if port_is_free(&host, 8006) && port_is_free(&host, 8007) {
            (8006, 8007)
        } else {
            let api = free_port(&host);
            let mut ctl = free_port(&host);
            while ctl == api {
                ctl = free_port(&host);
            }
            (api, ctl)
        };
        let log = state_dir.join("sim.log");
        let out = File::create(&log)?;
        let err = out.try_clone()?;
        let sim = sim_dir().join("sim.py");
        let mut cmd = Command::new(python);
        cmd.arg(&sim)
            .arg("--guests")
            .arg(&guests_file)
            .args(["--host", &host, "--port", &port.to_string()])
            .args([
                "--control-port",
                &control_port.to_string(),
                "--password",
                PASSWORD,
            ])
            .args(["--time-scale", &spec.time_scale.to_string(), "--name", &name])
            .arg("--cert")
            .arg(&ca.cert)
            .arg("--key")
            .arg(&ca.key)
            .arg("--data-dir")
            .arg(&data_dir)
            .current_dir(&state_dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // Only what we set reaches the sim: a developer's PVE_SIM_* shell variables must not change tests.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PVE_SIM_") {
                cmd.env_remove(key);
            }
        }
        let cleanup = std::env::join_paths([state_dir.as_path(), ca.dir.path()])?;
        cmd.env("PVE_SIM_PARENT_PID", parent.to_string())
            .env("PVE_SIM_CLEANUP_DIR", cleanup);
        if let Some(prefix) = &spec.agent_prefix {
            cmd.env("PVE_SIM_AGENT_PREFIX", prefix);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} {}", python.display(), sim.display()))?;
        Ok(FakeCluster {
            name,
            url: format!("https://{host}:{port}"),
            api_base: format!("https://{host}:{port}/api2/json"),
            control_url: format!("http://{host}:{control_port}"),
            host,
            port,
            user: "root@pam".to_string(),
            password: PASSWORD.to_string(),
            token_id,
            token_secret,
            ca_file: ca.cert.clone(),
            cert_sha256: ca.sha256.clone(),
            storage_dirs: BTreeMap::new(),
            pid: child.id(),
            state_dir,
            log,
            marker: guests_file.to_string_lossy().into_owned(),
            guests_file,
            control_port,
            child: Some(child),
            _state: state,
            _ca: ca.dir.clone(),
        })
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let what = format!("fake PVE cluster {} on {}", self.name, self.url);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.lines().any(|l| l.starts_with("pve-sim ready")) {
                break;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(TestkitError::Exited {
                    what,
                    status: status.to_string(),
                    log_tail: tail(&self.log, 30),
                }
                .into());
            }
            if Instant::now() >= deadline {
                return Err(TestkitError::NotReady {
                    what,
                    secs: READY_TIMEOUT.as_secs(),
                    log_tail: tail(&self.log, 30),
                }
                .into());
            }
            std::thread::sleep(POLL);
        }
        let dirs_file = self.state_dir.join("data").join("storage-dirs.json");
        if dirs_file.exists() {
            let dirs: BTreeMap<String, PathBuf> = serde_json::from_slice(&std::fs::read(&dirs_file)?)
                .with_context(|| format!("reading {}", dirs_file.display()))?;
            self.storage_dirs = dirs;
        }
        Ok(())
    }
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, &self.marker, STOP_GRACE);
        }
    }
}

/// The guests JSON the sim loads: the spec's file (or a generated one) plus `extra_guests`, with the
/// `root@pam!portal` token added when the cluster section defines no token.
fn guests_json(spec: &ClusterSpec) -> anyhow::Result<Value> {
    let mut doc = match spec.generated_guests {
        Some(n) => generated_json(n)?,
        None => read_json(&spec.guests_file)?,
    };
    let Some(obj) = doc.as_object_mut() else {
        anyhow::bail!("guests file {} is not a JSON object", spec.guests_file.display());
    };
    if !spec.extra_guests.is_empty() {
        let list = obj.entry("guests").or_insert_with(|| Value::Array(Vec::new()));
        let Some(list) = list.as_array_mut() else {
            anyhow::bail!(
                "guests file {}: `guests` is not a list",
                spec.guests_file.display()
            );
        };
        list.extend(spec.extra_guests.iter().cloned());
    }
    let cluster = obj.entry("cluster").or_insert_with(|| json!({}));
    if let Some(cluster) = cluster.as_object_mut() {
        let tokens = cluster.entry("apitokens").or_insert_with(|| json!({}));
        if tokens.as_object().is_some_and(|t| t.is_empty()) {
            *tokens = json!({ LAB_TOKEN_ID: DEFAULT_TOKEN_SECRET });
        }
    }
    Ok(doc)
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("reading guests file {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing guests file {}", path.display()))
}

/// lab-cluster.json's cluster section + `local-lvm` + `n` generated qemu guests (see [`ClusterSpec::generated`]).
fn generated_json(n: usize) -> anyhow::Result<Value> {
    let lab = read_json(&sim_dir().join("lab-cluster.json"))?;
    let mut cluster = lab.get("cluster").cloned().unwrap_or_else(|| json!({}));
    if let Some(storages) = cluster.get_mut("storages").and_then(Value::as_object_mut) {
        storages.insert(
            "local-lvm".to_string(),
            json!({"type": "lvmthin", "vgname": "pve", "thinpool": "data", "content": "images,rootdir",
                   "total": 8_796_093_022_208_u64}),
        );
    }
    let guests: Vec<Value> = (0..n).map(generated_guest).collect();
    Ok(json!({"cluster": cluster, "guests": guests}))
}

fn generated_guest(i: usize) -> Value {
    let vmid = 1000 + i;
    let mac = format!(
        "BC:24:11:{:02X}:{:02X}:{:02X}",
        (vmid >> 16) & 0xff,
        (vmid >> 8) & 0xff,
        vmid & 0xff
    );
    let node = format!("pve{}", i % 3 + 1);
    let mut config = json!({
        "memory": 2048, "cores": 2, "sockets": 1, "ostype": "l26", "scsihw": "virtio-scsi-single",
        "net0": format!("virtio={mac},bridge=vmbr0,firewall=1"), "boot": "order=scsi0", "tags": "bench",
    });
    let mut guest = json!({"vmid": vmid, "name": format!("lab-{vmid:04}"), "node": node, "config": {}});
    if i.is_multiple_of(500) {
        config["scsi0"] = json!(format!(
            "labnfs:{vmid}/base-{vmid}-disk-0.qcow2,iothread=1,size=2G"
        ));
        config["agent"] = json!("1");
        config["template"] = json!(1);
        guest["template"] = json!(true);
    } else {
        config["scsi0"] = json!(format!("local-lvm:vm-{vmid}-disk-0,iothread=1,size=32G"));
        if i.is_multiple_of(2) {
            config["agent"] = json!("1");
            guest["status"] = json!("running");
        } else {
            guest["status"] = json!("stopped");
        }
    }
    guest["config"] = config;
    guest
}

/// (token id, secret): `root@pam!portal` if the cluster section has it, else its first token.
fn token_of(cluster: &Value) -> (String, String) {
    let tokens = cluster.get("apitokens").and_then(Value::as_object);
    let pick = tokens.and_then(|t| t.get_key_value(LAB_TOKEN_ID).or_else(|| t.iter().next()));
    match pick {
        Some((id, secret)) => (id.clone(), secret.as_str().unwrap_or_default().to_string()),
        None => (LAB_TOKEN_ID.to_string(), DEFAULT_TOKEN_SECRET.to_string()),
    }
}

/// Make the self-signed certificate (fakepve.certs.make_cert, as pve-sim's start script does) naming `hosts`.
fn make_ca(python: &Path, hosts: &[String]) -> anyhow::Result<Ca> {
    let dir = tempfile::Builder::new()
        .prefix("pve-sim-ca-")
        .tempdir()
        .context("creating the CA dir")?;
    run(
        Command::new(python)
            .arg("-c")
            .arg(
                "import sys\nfrom fakepve.certs import make_cert\n\
                 make_cert(sys.argv[1], name='pve-sim-ca', hosts=tuple(sys.argv[2:]))",
            )
            .arg(dir.path())
            .args(hosts),
        &format!("making the fake cluster certificate for {}", hosts.join(", ")),
    )?;
    let cert = dir.path().join("pve-sim-ca.crt");
    let key = dir.path().join("pve-sim-ca.key");
    let der = read_certs(&cert)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no certificate in {}", cert.display()))?;
    Ok(Ca {
        sha256: sha256_fingerprint(der.as_ref()),
        dir: Arc::new(dir),
        cert,
        key,
    })
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut BufReader::new(file)).collect();
    certs.with_context(|| format!("reading PEM certificates from {}", path.display()))
}

/// `AA:BB:...`: upper-case hex SHA-256 of `der`, pairs joined by colons.
fn sha256_fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_guests_follow_the_documented_pattern() {
        let doc = guests_json(&ClusterSpec::generated(1001)).unwrap();
        let guests = doc["guests"].as_array().unwrap();
        assert_eq!(guests.len(), 1001);
        assert_eq!(guests[0]["vmid"], 1000);
        assert_eq!(guests[0]["template"], true);
        assert_eq!(guests[2]["name"], "lab-1002");
        assert_eq!(guests[2]["status"], "running");
        assert_eq!(guests[2]["config"]["agent"], "1");
        assert_eq!(guests[2]["node"], "pve3");
        assert_eq!(guests[3]["status"], "stopped");
        assert!(
            guests[3]["config"]["net0"]
                .as_str()
                .unwrap()
                .starts_with("virtio=BC:24:11:00:03:EB,")
        );
        let templates = guests.iter().filter(|g| g["template"] == true).count();
        assert_eq!(templates, 3);
        assert!(doc["cluster"]["storages"]["local-lvm"].is_object());
        assert_eq!(token_of(&doc["cluster"]).0, LAB_TOKEN_ID);
    }

    #[test]
    fn a_guests_file_without_tokens_gets_the_portal_token() {
        let dir = crate::temp_dir("testkit-guests-");
        let file = dir.path().join("g.json");
        std::fs::write(&file, r#"{"guests": []}"#).unwrap();
        let spec = ClusterSpec {
            guests_file: file,
            extra_guests: vec![json!({"vmid": 100, "name": "x"})],
            ..ClusterSpec::lab()
        };
        let doc = guests_json(&spec).unwrap();
        assert_eq!(
            token_of(&doc["cluster"]),
            (LAB_TOKEN_ID.to_string(), DEFAULT_TOKEN_SECRET.to_string())
        );
        assert_eq!(doc["guests"][0]["vmid"], 100);
    }

    #[test]
    fn fingerprint_is_colon_separated_upper_hex() {
        let fp = sha256_fingerprint(b"abc");
        assert!(fp.starts_with("BA:78:16:BF:"), "{fp}");
        assert_eq!(fp.len(), 32 * 3 - 1);
    }

    /// The parent watchdog: a sim whose PVE_SIM_PARENT_PID process ends exits by itself and removes its
    /// state dir (what happens when a test process dies without dropping its clusters).
    #[test]
    fn sim_exits_and_cleans_up_when_its_parent_process_ends() {
        let mut stand_in = Command::new("sleep").arg("120").spawn().unwrap();
        let mut clusters =
            FakeCluster::start_many_with_parent(vec![ClusterSpec::lab()], stand_in.id()).unwrap();
        let mut cluster = clusters.pop().unwrap();
        let state_dir = cluster.state_dir.clone();
        assert!(state_dir.join("sim.log").exists());
        let mut child = cluster.child.take().unwrap();
        stand_in.kill().unwrap();
        stand_in.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "sim did not exit after its parent ended"
            );
            std::thread::sleep(POLL);
        };
        assert!(status.success(), "sim exited with {status}");
        assert!(
            !state_dir.exists(),
            "the orphaned sim left {}",
            state_dir.display()
        );
        assert!(
            !cluster.ca_file.exists(),
            "the orphaned sim left {}",
            cluster.ca_file.display()
        );
    }
}
