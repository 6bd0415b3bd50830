//! Shared state of the page tests (`pages_*.rs`): a real in-memory inventory with two clusters (one of
//! them stale), a real temporary account store with a student, another student, a teacher and an admin,
//! their assignments and classes, and the real router. Sessions are started the way `POST /login` does.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode};
use store::{AssignmentRecord, ClassRecord, GuestRecord, IpRecord, Role, UserRecord};
use sync::{AgentDiscovery, ClusterState, Inventory, Syncer};
use tower::ServiceExt;
use web::{AppState, WebConfig};

/// Fixed time of the fake inventory (2023-11-14 22:13:20 UTC).
pub const T0: u64 = 1_700_000_000;

pub fn guest(cluster: &str, vmid: u32, name: &str, state: &str, ip: Option<&str>) -> GuestRecord {
    GuestRecord {
        cluster: cluster.into(),
        vmid,
        node: "pve1".into(),
        name: name.into(),
        kind: "qemu".into(),
        status: if matches!(state, "running" | "paused") {
            "running".into()
        } else {
            "stopped".into()
        },
        state: state.into(),
        cpus: 2.0,
        maxmem: 4 << 30,
        ip: ip.map(|a| IpRecord {
            address: a.into(),
            all: vec![a.into()],
            source: "guest-agent".into(),
            seen_at: T0,
        }),
        synced_at: T0,
        ..Default::default()
    }
}

pub struct Pages {
    pub state: AppState,
    pub app: Router,
}

/// Two clusters: `lab` (ok) and `annex` (stale since T0 with PVE's error).
///
/// `stud`: lab/101 (running, IP, class `net1` "Networks 101", baseline `baseline`), lab/102 (stopped,
/// locked by a backup, no baseline), lab/103 (running, IP still being found), annex/201 (stale).
/// `stud2`: lab/104. `teach` owns class `net1`. `root` is an admin with lab/105 assigned.
pub async fn pages() -> Pages {
    let inv = Inventory::load(
        None,
        &[
            ("lab".into(), "Lab cluster".into()),
            ("annex".into(), "Annex".into()),
        ],
    )
    .unwrap();
    let mut locked = guest("lab", 102, "stud-win <2>", "stopped", None);
    locked.lock = Some("backup".into());
    inv.replace_cluster(
        "lab",
        vec![
            guest("lab", 101, "stud-linux", "running", Some("10.20.0.101")),
            locked,
            guest("lab", 103, "stud-router", "running", None),
            guest("lab", 104, "stud2-linux", "running", Some("10.20.0.104")),
            guest("lab", 105, "admin-box", "stopped", None),
        ],
        ClusterState {
            id: "lab".into(),
            name: "Lab cluster".into(),
            status: "ok".into(),
            last_ok_at: Some(T0),
            last_tick_at: Some(T0),
            quorate: Some(true),
            ..Default::default()
        },
    )
    .await;
    inv.replace_cluster(
        "annex",
        vec![guest("annex", 201, "annex-lab", "running", Some("192.168.50.10"))],
        ClusterState {
            id: "annex".into(),
            name: "Annex".into(),
            status: "stale".into(),
            reason: Some("595 No route to host".into()),
            stale_since: Some(T0),
            last_ok_at: Some(T0 - 600),
            ..Default::default()
        },
    )
    .await;
    let syncer = Syncer::new(inv.clone(), vec![], Default::default(), Arc::new(AgentDiscovery));
    let state = AppState::new(
        inv,
        syncer,
        WebConfig {
            default_cluster: "lab".into(),
            ..Default::default()
        },
    );
    let store = &state.auth.store;
    for (name, display, role) in [
        ("stud", "Stu Dent", Role::Student),
        ("stud2", "Other Student", Role::Student),
        ("teach", "Tea Cher", Role::Teacher),
        ("root", "Site Admin", Role::Admin),
    ] {
        store
            .create_local_user(UserRecord {
                name: name.into(),
                display_name: display.into(),
                role,
                created_at: T0,
                ..Default::default()
            })
            .unwrap();
    }
    store
        .classes
        .insert(
            "net1",
            &ClassRecord {
                id: "net1".into(),
                name: "Networks 101".into(),
                owner: "teach".into(),
                cluster: "lab".into(),
                ..Default::default()
            },
        )
        .unwrap();
    let assign = |cluster: &str, vmid: u32, user: &str, class: Option<&str>, baseline: Option<&str>| {
        store
            .create_assignment(AssignmentRecord {
                cluster: cluster.into(),
                vmid,
                user: user.into(),
                class_id: class.map(String::from),
                baseline_snapshot: baseline.map(String::from),
                created_at: T0,
                ..Default::default()
            })
            .unwrap();
    };
    assign("lab", 101, "stud", Some("net1"), Some("baseline"));
    assign("lab", 102, "stud", None, None);
    assign("lab", 103, "stud", Some("net1"), None);
    assign("annex", 201, "stud", None, Some("clean"));
    assign("lab", 104, "stud2", None, None);
    assign("lab", 105, "root", None, None);
    state.auth.rebuild_index();
    let app = web::app(state.clone());
    Pages { state, app }
}

impl Pages {
    /// A fresh session of `user`: `(cookie header, csrf token)`.
    pub fn session(&self, user: &str) -> (String, String) {
        let u = self.state.auth.store.user(user).unwrap().unwrap();
        let (raw, rec) = self
            .state
            .auth
            .start_session(&u, "127.0.0.1".parse().unwrap(), None)
            .unwrap();
        (format!("{}={raw}", self.state.auth.cookie_name()), rec.csrf_token)
    }

    /// Sends `req` through the real router from 127.0.0.1.
    pub async fn send(&self, mut req: Request<Body>) -> (StatusCode, HeaderMap, String) {
        let addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        req.extensions_mut().insert(ConnectInfo(addr));
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), 64 << 20).await.unwrap();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    /// `GET uri` with `user`'s session (anonymous for `None`).
    pub async fn get_as(&self, user: Option<&str>, uri: &str) -> (StatusCode, HeaderMap, String) {
        let mut req = Request::get(uri);
        if let Some(u) = user {
            req = req.header("cookie", self.session(u).0);
        }
        self.send(req.body(Body::empty()).unwrap()).await
    }

    /// A JSON request with `user`'s session and CSRF token.
    pub async fn json_as(
        &self,
        user: &str,
        method: &str,
        uri: &str,
        body: serde_json::Value,
    ) -> (StatusCode, serde_json::Value) {
        let (cookie, csrf) = self.session(user);
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("cookie", cookie)
            .header("x-csrf-token", csrf)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let (status, _, text) = self.send(req).await;
        let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, v)
    }
}

/// Undoes MiniJinja's HTML escaping of `/` (`&#x2f;`), to look for paths in a page.
pub fn unescape_slashes(html: &str) -> String {
    html.replace("&#x2f;", "/")
}
