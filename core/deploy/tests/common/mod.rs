//! Shared set-up of the deploy integration tests: ONE fake lab cluster and ONE loopback sshd per test
//! binary (the sshd's shell runs on this machine and sees the fake's `labnfs` folder; real qemu-img),
//! and a fresh store + deployer per test with its own VMID range.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cloner::{HostKeyPolicy, NodeAccess, SshExecutor};
use deploy::{Clock, ClusterDeploy, DeployConfig, DeployLimits, Deployer, NodeOps, NodeTarget, StaticHost};
use pve::{Auth, PveClient, PveConfig, Secret, Tls};
use script::{Limits, NullHost, ScriptRuntime, ScriptSet, SetSources};
use serde_json::Value;
use store::{Role, Store, UserRecord};
use testkit::{ClusterSpec, FakeCluster, NodeSshd};

pub const CLUSTER: &str = "lab";

/// The shared fake cluster and sshd.
pub struct Lab {
    pub fake: FakeCluster,
    pub sshd: NodeSshd,
    /// The real folder behind storage `labnfs`.
    pub labnfs: PathBuf,
}

pub fn lab() -> &'static Lab {
    static LAB: OnceLock<Lab> = OnceLock::new();
    LAB.get_or_init(|| {
        let fake = FakeCluster::start(ClusterSpec::lab()).expect("fake cluster");
        let sshd = NodeSshd::start().expect("loopback sshd");
        let labnfs = fake.storage_dirs["labnfs"].canonicalize().unwrap();
        Lab { fake, sshd, labnfs }
    })
}

pub fn client(fake: &FakeCluster) -> PveClient {
    PveClient::new(PveConfig::new(
        fake.url.parse().unwrap(),
        Auth::Token {
            id: fake.token_id.clone(),
            secret: Secret::new(fake.token_secret.clone()),
        },
        Tls::CaFile(fake.ca_file.clone()),
    ))
    .unwrap()
}

/// Node operations: pve1..pve3 all reach the one loopback sshd, each over its own connection, with the
/// labnfs folder as the storage root.
pub fn node_ops(lab: &Lab) -> NodeOps {
    let targets = ["pve1", "pve2", "pve3"]
        .iter()
        .map(|n| {
            let mut access = NodeAccess::new(
                &lab.sshd.host,
                &lab.sshd.user,
                &lab.sshd.private_key,
                HostKeyPolicy::Fingerprint(lab.sshd.host_key_sha256.clone()),
            );
            access.port = lab.sshd.port;
            access.connect_timeout = Duration::from_secs(10);
            NodeTarget {
                cluster: CLUSTER.into(),
                node: n.to_string(),
                exec: Arc::new(SshExecutor::new(access).unwrap()),
                storage_roots: vec![lab.labnfs.clone()],
            }
        })
        .collect();
    NodeOps::new(targets).unwrap()
}

/// The shipped scripts (the embedded copy, as the binary ships them).
pub fn scripts() -> Arc<ScriptSet> {
    static SET: OnceLock<Arc<ScriptSet>> = OnceLock::new();
    SET.get_or_init(|| {
        // Loading only compiles; the null host's runtime handle is never used to run anything.
        let loader = ScriptRuntime::new(
            Arc::new(NullHost::new(tokio::runtime::Handle::current())),
            Limits::default(),
        );
        Arc::new(loader.load_set(&SetSources::default()).unwrap())
    })
    .clone()
}

/// A test clock: real time plus an offset the test can move forward.
pub struct TestClock(pub Arc<AtomicU64>);

impl TestClock {
    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

/// One test's deployer over a fresh store.
pub struct Env {
    pub deployer: Deployer,
    pub store: Store,
    pub client: PveClient,
    pub clock: TestClock,
    pub dir: tempfile::TempDir,
}

pub fn config(range: (u32, u32), limits: DeployLimits) -> DeployConfig {
    let lab = lab();
    DeployConfig {
        clusters: BTreeMap::from([(
            CLUSTER.to_string(),
            ClusterDeploy {
                vmid_range: Some(range),
                default_storage: None,
                storage_paths: BTreeMap::from([("labnfs".to_string(), lab.labnfs.display().to_string())]),
            },
        )]),
        limits,
        ..DeployConfig::default()
    }
}

pub fn env_in(dir: tempfile::TempDir, range: (u32, u32), limits: DeployLimits) -> Env {
    let lab = lab();
    let store = Store::open(dir.path().join("db")).unwrap();
    let offset = Arc::new(AtomicU64::new(0));
    let off2 = offset.clone();
    let clock: Clock = Arc::new(move || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + off2.load(Ordering::SeqCst)
    });
    let host = StaticHost::with_clock(
        tokio::runtime::Handle::current(),
        BTreeMap::from([(CLUSTER.to_string(), client(&lab.fake))]),
        node_ops(lab),
        clock,
    );
    let set = scripts();
    let deployer = Deployer::new(
        store.clone(),
        host,
        Arc::new(move || set.clone()),
        config(range, limits),
    )
    .unwrap();
    Env {
        deployer,
        store,
        client: client(&lab.fake),
        clock: TestClock(offset),
        dir,
    }
}

pub fn env(range: (u32, u32)) -> Env {
    env_in(testkit::temp_dir("deploy-test-"), range, fast_limits())
}

/// Default limits with short backoff (tests wait on jobs, not on long retries).
pub fn fast_limits() -> DeployLimits {
    DeployLimits {
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        task_timeout: Duration::from_secs(60),
        ..DeployLimits::default()
    }
}

/// Puts PVE template `vmid` into the catalogue, open to every teacher (as an admin would).
pub async fn open_template(e: &Env, vmid: u32) {
    e.deployer
        .register_template(
            CLUSTER,
            deploy::TemplateRef::Vmid(vmid),
            store::TemplateVisibility::AllTeachers,
        )
        .await
        .unwrap();
}

pub fn add_user(store: &Store, name: &str, role: Role) {
    store
        .create_local_user(UserRecord {
            name: name.into(),
            display_name: name.into(),
            role,
            ..UserRecord::default()
        })
        .unwrap();
}

/// `qemu-img info --backing-chain --output=json PATH` with the real qemu-img.
pub fn backing_chain(path: &std::path::Path) -> Vec<Value> {
    let out = Command::new("qemu-img")
        .args(["info", "--backing-chain", "--output=json", "-U"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img info {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// VMIDs of the fake cluster's guests.
pub async fn guest_vmids(client: &PveClient) -> Vec<u32> {
    client
        .cluster_resources()
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.vmid)
        .collect()
}

/// Folders `images/<vmid>` of labnfs with a VMID in `range`.
pub fn image_dirs_in(range: (u32, u32)) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir(lab().labnfs.join("images"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|v| (range.0..=range.1).contains(v))
        .filter(|v| {
            std::fs::read_dir(lab().labnfs.join("images").join(v.to_string()))
                .map(|mut d| d.next().is_some())
                .unwrap_or(false)
        })
        .collect();
    v.sort();
    v
}
