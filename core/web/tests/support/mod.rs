//! Shared fixture of the auth tests: a real store in a temp dir, the shared fake PVE cluster synced into
//! the inventory, and the users, classes, assignments and tokens of the authorization matrix.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode};
use pve::{Auth, PveClient, PveConfig, Secret, Tls};
use store::{AssignmentRecord, ClassRecord, Role, Store, UserRecord};
use sync::{AgentDiscovery, ClusterHandle, Inventory, SyncConfig, Syncer};
use testkit::FakeCluster;
use tower::ServiceExt;
use web::auth::{AuthConfig, AuthState, ManualWallClock};
use web::{AppState, WebConfig};

/// Password of `root` (admin) and `stud` (student) in the fixture; others have none (sessions are made
/// directly, without argon2, to keep the matrix fast).
pub const ADMIN_PW: &str = "admin-password-1";
pub const STUDENT_PW: &str = "student-password-1";
/// The student's own VM (assigned to `stud`, in class `c1` owned by `teach`, co-owned by `co`).
pub const OWN_VM: u32 = 1101;
/// Another student's VM (assigned to `stud2`, in class `c2` owned by `teach2`).
pub const OTHER_VM: u32 = 1102;

pub struct Fixture {
    pub state: AppState,
    pub app: Router,
    pub store: Store,
    pub clock: Arc<ManualWallClock>,
    pub fake: &'static FakeCluster,
    /// Bearer token of `stud`.
    pub student_token: String,
    /// A revoked token of `root`.
    pub revoked_token: String,
    pub dir: tempfile::TempDir,
}

pub fn client(c: &FakeCluster) -> PveClient {
    let auth = Auth::Token {
        id: c.token_id.clone(),
        secret: Secret::new(c.token_secret.clone()),
    };
    PveClient::new(PveConfig::new(
        c.url.parse().unwrap(),
        auth,
        Tls::CaFile(c.ca_file.clone()),
    ))
    .unwrap()
}

pub fn add_user(store: &Store, name: &str, role: Role, password: Option<&str>) -> UserRecord {
    let hash = password.map(|p| web::auth::password::hash_blocking(&Secret::new(p)).unwrap());
    store
        .create_local_user(UserRecord {
            name: name.into(),
            display_name: name.into(),
            role,
            password_hash: hash,
            ..Default::default()
        })
        .unwrap()
}

pub fn assign(
    store: &Store,
    user: &str,
    vmid: u32,
    class: Option<&str>,
    baseline: Option<&str>,
) -> AssignmentRecord {
    store
        .create_assignment(AssignmentRecord {
            cluster: "lab".into(),
            vmid,
            user: user.into(),
            class_id: class.map(String::from),
            baseline_snapshot: baseline.map(String::from),
            ..Default::default()
        })
        .unwrap()
}

/// Builds the fixture with `cfg` (the public origin, throttle etc. as the test needs).
pub async fn fixture(cfg: AuthConfig) -> Fixture {
    let fake = tokio::task::spawn_blocking(FakeCluster::shared).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("db")).unwrap();
    let inventory = Inventory::load(Some(store.clone()), &[("lab".into(), "Lab".into())]).unwrap();
    let handles = vec![ClusterHandle {
        id: "lab".into(),
        name: "Lab".into(),
        client: client(fake),
    }];
    let syncer = Syncer::new(
        inventory.clone(),
        handles,
        SyncConfig::default(),
        Arc::new(AgentDiscovery),
    );
    for r in syncer.sync_once().await {
        r.unwrap();
    }
    let st2 = store.clone();
    tokio::task::spawn_blocking(move || {
        add_user(&st2, "root", Role::Admin, Some(ADMIN_PW));
        add_user(&st2, "stud", Role::Student, Some(STUDENT_PW));
    })
    .await
    .unwrap();
    for (n, r) in [
        ("stud2", Role::Student),
        ("teach", Role::Teacher),
        ("co", Role::Teacher),
        ("teach2", Role::Teacher),
    ] {
        add_user(&store, n, r, None);
    }
    for (id, owner, co) in [("c1", "teach", vec!["co".to_string()]), ("c2", "teach2", vec![])] {
        let c = ClassRecord {
            id: id.into(),
            name: id.into(),
            owner: owner.into(),
            co_owners: co,
            cluster: "lab".into(),
            ..Default::default()
        };
        store.classes.insert(id, &c).unwrap();
    }
    assign(&store, "stud", OWN_VM, Some("c1"), None);
    assign(&store, "stud2", OTHER_VM, Some("c2"), None);
    let clock = Arc::new(ManualWallClock::new());
    let auth = AuthState::with_clock(store.clone(), cfg, clock.clone());
    let (student_token, _) = auth.create_token("stud", None, "matrix").unwrap();
    let (revoked, rec) = auth.create_token("root", None, "revoked").unwrap();
    store.revoke_token(&rec.id).unwrap();
    let state = AppState::new(
        inventory,
        syncer,
        WebConfig {
            default_cluster: "lab".into(),
            ..Default::default()
        },
    )
    .with_auth(auth);
    let app = web::app(state.clone());
    Fixture {
        state,
        app,
        store,
        clock,
        fake,
        student_token: student_token.expose().to_string(),
        revoked_token: revoked.expose().to_string(),
        dir,
    }
}

impl Fixture {
    /// A fresh session of `user` (made directly, as a successful sign-in would): `(cookie header, csrf)`.
    pub fn session(&self, user: &str) -> (String, String) {
        let u = self.store.user(user).unwrap().unwrap();
        let (raw, rec) = self
            .state
            .auth
            .start_session(&u, "127.0.0.1".parse().unwrap(), None)
            .unwrap();
        (format!("{}={raw}", self.state.auth.cookie_name()), rec.csrf_token)
    }

    /// Sends `req` through the real router, from client address `from`.
    pub async fn send_from(&self, mut req: Request<Body>, from: &str) -> (StatusCode, HeaderMap, Bytes) {
        let addr: SocketAddr = format!("{from}:40000").parse().unwrap();
        req.extensions_mut().insert(ConnectInfo(addr));
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let is_stream = headers
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/event-stream"));
        let body = if is_stream {
            Bytes::new()
        } else {
            axum::body::to_bytes(resp.into_body(), 64 << 20).await.unwrap()
        };
        (status, headers, body)
    }

    pub async fn send(&self, req: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
        self.send_from(req, "127.0.0.1").await
    }
}

pub fn json_of(body: &Bytes) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// A real deployer over the fixture's fake cluster: nodes `pve1`..`pve3` of cluster `lab` run their
/// commands through `exec` (SSH to a loopback sshd, or the local executor), storage `labnfs` is the
/// fake's real folder, VMIDs come from `lo..=hi` (tests sharing the fake cluster use disjoint ranges),
/// and lock-timeout backoff is short. Interrupted jobs are recovered before it is returned.
pub async fn deployer(fx: &Fixture, exec: Arc<dyn cloner::Executor>, lo: u32, hi: u32) -> deploy::Deployer {
    deployer_with(fx, exec, lo, hi, |_| {}).await
}

/// [`deployer`] with its limits changed by `tune` (per-teacher defaults, ...).
pub async fn deployer_with(
    fx: &Fixture,
    exec: Arc<dyn cloner::Executor>,
    lo: u32,
    hi: u32,
    tune: impl FnOnce(&mut deploy::DeployLimits),
) -> deploy::Deployer {
    use std::collections::BTreeMap;
    use std::time::Duration;
    let labnfs = fx.fake.storage_dirs["labnfs"].canonicalize().unwrap();
    let targets = ["pve1", "pve2", "pve3"]
        .iter()
        .map(|n| deploy::NodeTarget {
            cluster: "lab".into(),
            node: n.to_string(),
            exec: exec.clone(),
            storage_roots: vec![labnfs.clone()],
        })
        .collect();
    let host = deploy::StaticHost::new(
        tokio::runtime::Handle::current(),
        BTreeMap::from([("lab".to_string(), client(fx.fake))]),
        deploy::NodeOps::new(targets).unwrap(),
    );
    let loader = script::ScriptRuntime::new(
        Arc::new(script::NullHost::new(tokio::runtime::Handle::current())),
        script::Limits::default(),
    );
    let set = Arc::new(loader.load_set(&script::SetSources::default()).unwrap());
    let mut limits = deploy::DeployLimits {
        backoff_base: Duration::from_millis(50),
        ..deploy::DeployLimits::default()
    };
    tune(&mut limits);
    let cfg = deploy::DeployConfig {
        clusters: BTreeMap::from([(
            "lab".to_string(),
            deploy::ClusterDeploy {
                vmid_range: Some((lo, hi)),
                ..deploy::ClusterDeploy::default()
            },
        )]),
        limits,
        ..deploy::DeployConfig::default()
    };
    let d = deploy::Deployer::new(fx.store.clone(), host, Arc::new(move || set.clone()), cfg).unwrap();
    d.recover().await.unwrap();
    d
}

/// Puts PVE template `vmid` of cluster `lab` into the catalogue, open to every teacher (as an admin
/// would on `/classes`).
pub async fn open_template(d: &deploy::Deployer, vmid: u32) {
    d.register_template(
        "lab",
        deploy::TemplateRef::Vmid(vmid),
        store::TemplateVisibility::AllTeachers,
    )
    .await
    .unwrap();
}

/// `who` (a fixture user) sends `method path` with JSON `body` through `app`; returns the status and
/// the JSON answer (`Null` when empty).
pub async fn call_json(
    fx: &Fixture,
    app: &Router,
    who: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value) {
    let (cookie, csrf) = fx.session(who);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("cookie", cookie)
        .header("x-csrf-token", csrf)
        .header("content-type", "application/json")
        .body(
            body.map(|b| Body::from(b.to_string()))
                .unwrap_or_else(Body::empty),
        )
        .unwrap();
    req.extensions_mut()
        .insert(ConnectInfo("127.0.0.1:40000".parse::<SocketAddr>().unwrap()));
    let resp = tokio::time::timeout(std::time::Duration::from_secs(120), app.clone().oneshot(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20).await.unwrap();
    let v = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        json_of(&bytes)
    };
    (status, v)
}

/// The message of a JSON error answer.
pub fn message_of(v: &serde_json::Value) -> String {
    v["error"]["message"].as_str().unwrap_or_default().to_string()
}
