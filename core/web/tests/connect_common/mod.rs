//! Shared fixture of the connect tests: a fake PVE cluster whose guest agents report loopback addresses
//! (`agent_prefix = 127.60`: VM 4001 → 127.60.16.3), synced with `allow_ranges = ["127.60.0.0/16"]`, the
//! real router served on a loopback port (so WebSockets upgrade for real), users `stud` (owns 4001),
//! `stud2` (owns 4002) and `root` (admin), and a WebSocket client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pve::{Auth, PveClient, PveConfig, Secret, Tls};
use serde_json::{Value, json};
use store::{AssignmentRecord, Role, Store, UserRecord};
use sync::{AddressPolicy, AgentDiscovery, ClusterHandle, Inventory, SyncConfig, Syncer};
use testkit::{ClusterSpec, FakeCluster};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use web::AppState;
use web::auth::{AuthConfig, AuthState};
use web::connect::{ConnectConfig, ConnectState, Scripts};

/// The student's VM (127.60.16.3).
pub const VM: u32 = 4001;
/// Another student's VM.
pub const OTHER_VM: u32 = 4002;
/// The loopback address the fake's agent reports for [`VM`].
pub const VM_IP: &str = "127.60.16.3";

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Portal {
    pub fake: FakeCluster,
    pub state: AppState,
    pub store: Store,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// The portal's own origin (equal to `base`).
    pub origin: String,
    pub addr: SocketAddr,
    /// The auth clock (sessions, connect-token expiry): advance it to expire tokens.
    pub clock: Arc<web::auth::ManualWallClock>,
    _dir: tempfile::TempDir,
}

/// A running-qemu guest of the pve-sim format with the agent on (so it reports a 127.60 address).
pub fn guest(vmid: u32, name: &str, ostype: &str, tags: &str) -> Value {
    json!({"vmid": vmid, "name": name, "node": "pve1", "status": "running",
           "config": {"memory": 1024, "cores": 1, "agent": "1", "ostype": ostype, "tags": tags,
                      "scsi0": format!("local-lvm:vm-{vmid}-disk-0,size=8G"),
                      "net0": format!("virtio=BC:24:11:40:{:02X}:{:02X},bridge=vmbr0", vmid / 256 % 256, vmid % 256)}})
}

/// Starts the portal over a fake cluster with `extra` guests (default: [`VM`] and [`OTHER_VM`], Linux).
/// The relays may dial the fake guests' loopback range (`test_ranges = 127.60.0.0/16` unless set).
pub async fn portal(extra: Vec<Value>, connect: ConnectConfig, scripts: Option<Scripts>) -> Portal {
    portal_with(extra, connect, scripts, vec!["127.60.0.0/16".parse().unwrap()]).await
}

/// [`portal`] whose sync hands out addresses inside `sync_allow` even when loopback (as a site's IP
/// script could): the relays' own rules then have to hold the line.
pub async fn portal_with(
    extra: Vec<Value>,
    mut connect: ConnectConfig,
    scripts: Option<Scripts>,
    sync_allow: Vec<ipnet::IpNet>,
) -> Portal {
    if connect.test_ranges.is_empty() {
        connect.test_ranges = vec!["127.60.0.0/16".parse().unwrap()];
    }
    let extra = if extra.is_empty() {
        vec![
            guest(VM, "lab-vm-4001", "l26", ""),
            guest(OTHER_VM, "lab-vm-4002", "l26", ""),
        ]
    } else {
        extra
    };
    let spec = ClusterSpec {
        agent_prefix: Some("127.60".into()),
        extra_guests: extra,
        ..ClusterSpec::lab()
    };
    let fake = tokio::task::spawn_blocking(move || FakeCluster::start(spec))
        .await
        .unwrap()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("db")).unwrap();
    let inventory = Inventory::load(Some(store.clone()), &[("lab".into(), "Lab".into())]).unwrap();
    let client = PveClient::new(PveConfig::new(
        fake.url.parse().unwrap(),
        Auth::Token {
            id: fake.token_id.clone(),
            secret: Secret::new(fake.token_secret.clone()),
        },
        Tls::CaFile(fake.ca_file.clone()),
    ))
    .unwrap();
    let config = SyncConfig {
        address_policy: AddressPolicy {
            allow_ranges: sync_allow,
            prefer_ipv6: false,
        },
        ..SyncConfig::default()
    };
    let handles = vec![ClusterHandle {
        id: "lab".into(),
        name: "Lab".into(),
        client,
    }];
    let syncer = Syncer::new(inventory.clone(), handles, config, Arc::new(AgentDiscovery));
    for r in syncer.sync_once().await {
        r.unwrap();
    }
    for (name, role) in [
        ("stud", Role::Student),
        ("stud2", Role::Student),
        ("root", Role::Admin),
    ] {
        store
            .create_local_user(UserRecord {
                name: name.into(),
                display_name: name.into(),
                role,
                ..Default::default()
            })
            .unwrap();
    }
    for (user, vmid) in [("stud", VM), ("stud2", OTHER_VM)] {
        store.create_assignment(assignment(user, vmid)).unwrap();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let origin = format!("http://{addr}");
    let clock = Arc::new(web::auth::ManualWallClock::new());
    let auth = AuthState::with_clock(
        store.clone(),
        AuthConfig {
            public_origin: Some(origin.clone()),
            ..AuthConfig::default()
        },
        clock.clone(),
    );
    let state = AppState::new(
        inventory,
        syncer,
        web::WebConfig {
            default_cluster: "lab".into(),
            ..Default::default()
        },
    )
    .with_auth(auth)
    .with_connect(ConnectState::new(connect, scripts));
    let app = web::app(state.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await;
    });
    Portal {
        fake,
        state,
        store,
        base: origin.clone(),
        origin,
        addr,
        clock,
        _dir: dir,
    }
}

impl Portal {
    /// `(cookie header, csrf token)` of a fresh session of `user`.
    pub fn session(&self, user: &str) -> (String, String) {
        let u = self.store.user(user).unwrap().unwrap();
        let (raw, rec) = self
            .state
            .auth
            .start_session(&u, "127.0.0.1".parse().unwrap(), None)
            .unwrap();
        (format!("{}={raw}", self.state.auth.cookie_name()), rec.csrf_token)
    }

    /// `POST /api/vm/{vmid}/connect-token` as `user`: `Ok(token)` or `Err(status)`.
    pub async fn token(&self, user: &str, vmid: u32, purpose: &str) -> Result<String, u16> {
        let (cookie, csrf) = self.session(user);
        let resp = testkit::http_client()
            .post(format!("{}/api/vm/{vmid}/connect-token", self.base))
            .header("cookie", cookie)
            .header("x-csrf-token", csrf)
            .header("origin", &self.origin)
            .json(&json!({"purpose": purpose}))
            .send()
            .await
            .unwrap();
        if !resp.status().is_success() {
            return Err(resp.status().as_u16());
        }
        let v: Value = resp.json().await.unwrap();
        Ok(v["token"].as_str().unwrap().to_string())
    }

    /// `GET path` as `user` (cookie), returning status, headers and body bytes (redirects not followed).
    pub async fn get(&self, user: Option<&str>, path: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
        let mut req = no_redirects().get(format!("{}{path}", self.base));
        if let Some(u) = user {
            req = req.header("cookie", self.session(u).0);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, headers, resp.bytes().await.unwrap().to_vec())
    }

    /// Opens a WebSocket to `path` (e.g. `/ws/terminal/4001?token=…`) as `user` with `origin` and the
    /// offered `protocols`; `Err(http status)` when the upgrade is refused. `via` connects through another
    /// address (a proxy) instead of the portal.
    pub async fn ws(
        &self,
        user: &str,
        path: &str,
        origin: Option<&str>,
        protocols: Option<&str>,
        via: Option<SocketAddr>,
    ) -> Result<(Ws, tungstenite::http::Response<Option<Vec<u8>>>), u16> {
        let addr = via.unwrap_or(self.addr);
        let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
        let h = req.headers_mut();
        h.insert("cookie", HeaderValue::from_str(&self.session(user).0).unwrap());
        if let Some(o) = origin {
            h.insert("origin", HeaderValue::from_str(o).unwrap());
        }
        if let Some(p) = protocols {
            h.insert("sec-websocket-protocol", HeaderValue::from_str(p).unwrap());
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok(x) => Ok(x),
            Err(tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("websocket to {path}: {e}"),
        }
    }
}

/// `user`'s assignment of VM `vmid` of cluster `lab`.
fn assignment(user: &str, vmid: u32) -> AssignmentRecord {
    AssignmentRecord {
        cluster: "lab".into(),
        vmid,
        user: user.into(),
        ..Default::default()
    }
}

/// Gives `user` the VM `vmid` of cluster `lab` too.
pub fn assign_to(p: &Portal, user: &str, vmid: u32) {
    p.store.create_assignment(assignment(user, vmid)).unwrap();
    p.state.auth.rebuild_index();
}

impl Portal {
    /// Opens the terminal WebSocket of `vmid` as `user` with a fresh connect token and the portal's
    /// origin; `Err(http status)` when the upgrade is refused.
    pub async fn terminal(&self, user: &str, vmid: u32) -> Result<Ws, u16> {
        let token = self.token(user, vmid, "ssh").await?;
        self.ws(
            user,
            &format!("/ws/terminal/{vmid}?token={token}"),
            Some(&self.origin),
            None,
            None,
        )
        .await
        .map(|(ws, _)| ws)
    }

    /// Opens a WebSocket that the portal is expected to refuse: `(status, body)` of its answer.
    pub async fn ws_refused(&self, user: &str, path: &str) -> (u16, String) {
        let mut req = format!("ws://{}{path}", self.addr).into_client_request().unwrap();
        let h = req.headers_mut();
        h.insert("cookie", HeaderValue::from_str(&self.session(user).0).unwrap());
        h.insert("origin", HeaderValue::from_str(&self.origin).unwrap());
        match tokio_tungstenite::connect_async(req).await {
            Ok(_) => panic!("the portal accepted the WebSocket {path}"),
            Err(tungstenite::Error::Http(resp)) => (
                resp.status().as_u16(),
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
            ),
            Err(e) => panic!("websocket to {path}: {e}"),
        }
    }
}

/// A plain HTTP client that does not follow redirects (ring as the TLS provider, as testkit's).
fn no_redirects() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// What a terminal client saw.
#[derive(Default, Debug)]
pub struct Screen {
    /// Every binary frame, in order.
    pub frames: Vec<Vec<u8>>,
    /// Status JSON messages.
    pub status: Vec<Value>,
    /// The close frame, when the server closed.
    pub closed: Option<(u16, String)>,
}

impl Screen {
    /// All output as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.frames.concat()).into_owned()
    }
}

/// A terminal WebSocket client.
pub struct Term {
    pub ws: Ws,
    pub screen: Screen,
    /// Output length already searched by [`Term::expect`].
    seen: usize,
}

impl Term {
    pub fn new(ws: Ws) -> Term {
        Term {
            ws,
            screen: Screen::default(),
            seen: 0,
        }
    }

    pub async fn control(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    pub async fn type_text(&mut self, s: &str) {
        self.ws
            .send(Message::binary(s.as_bytes().to_vec()))
            .await
            .unwrap();
    }

    /// Reads one message (`false` when the socket ended).
    async fn pump(&mut self) -> bool {
        match self.ws.next().await {
            Some(Ok(Message::Binary(b))) => self.screen.frames.push(b.to_vec()),
            Some(Ok(Message::Text(t))) => self.screen.status.push(serde_json::from_str(t.as_str()).unwrap()),
            Some(Ok(Message::Close(f))) => {
                let f: Option<CloseFrame> = f;
                self.screen.closed = Some(
                    f.map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new())),
                );
                return false;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                if self.screen.closed.is_none() {
                    self.screen.closed = Some((1006, "connection lost".into()));
                }
                return false;
            }
        }
        true
    }

    /// Waits until the output after the last match contains `needle` (within `limit`); returns the text
    /// from the last match to the end of `needle`.
    pub async fn expect(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let text = self.screen.text();
            if let Some(pos) = text[self.seen.min(text.len())..].find(needle) {
                let start = self.seen.min(text.len());
                let end = start + pos + needle.len();
                self.seen = end;
                return text[start..end].to_string();
            }
            match tokio::time::timeout_at(deadline, self.pump()).await {
                Ok(true) => {}
                Ok(false) => panic!(
                    "socket closed ({:?}) before {needle:?}; output: {text:?}",
                    self.screen.closed
                ),
                Err(_) => panic!(
                    "no {needle:?} within {limit:?}; output: {text:?}; status: {:?}",
                    self.screen.status
                ),
            }
        }
    }

    /// Waits for the server's close frame (within `limit`).
    pub async fn closed(&mut self, limit: Duration) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.screen.closed.is_none() {
            match tokio::time::timeout_at(deadline, self.pump()).await {
                Ok(_) => {}
                Err(_) => panic!("not closed within {limit:?}; output: {:?}", self.screen.text()),
            }
        }
        self.screen.closed.clone().unwrap()
    }

    /// Logs in through the terminal prompts.
    pub async fn login(&mut self, user: &str, password: &str) {
        self.expect("login as: ", Duration::from_secs(15)).await;
        self.type_text(&format!("{user}\r")).await;
        self.expect("password: ", Duration::from_secs(10)).await;
        self.type_text(&format!("{password}\r")).await;
    }

    /// Runs `cmd` in the shell and returns what the terminal showed up to a unique end marker (the
    /// marker is typed as `"EN""D…"`, so only the output, not the echoed command line, contains it).
    pub async fn run(&mut self, cmd: &str) -> String {
        let marker = format!("END{}", rand_marker());
        self.type_text(&format!("{cmd}; echo \"{}\"\"{}\"\r", &marker[..2], &marker[2..]))
            .await;
        self.expect(&marker, Duration::from_secs(20)).await
    }
}

fn rand_marker() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    format!("{}{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// A TCP proxy on 127.0.0.1 that closes a connection after `idle` without bytes in either direction
/// (what nginx's `proxy_read_timeout` does to a silent WebSocket after about 60 s). Returns its address.
pub async fn idle_cutting_proxy(target: SocketAddr, idle: Duration) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let (mut ri, mut wi) = inbound.split();
                let (mut ro, mut wo) = outbound.split();
                let mut a = [0u8; 16384];
                let mut b = [0u8; 16384];
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                loop {
                    tokio::select! {
                        r = ri.read(&mut a) => match r { Ok(0) | Err(_) => break, Ok(n) => if wo.write_all(&a[..n]).await.is_err() { break } },
                        r = ro.read(&mut b) => match r { Ok(0) | Err(_) => break, Ok(n) => if wi.write_all(&b[..n]).await.is_err() { break } },
                        _ = tokio::time::sleep(idle) => break,
                    }
                }
            });
        }
    });
    addr
}
