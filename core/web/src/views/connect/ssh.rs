//! The SSH terminal in the browser: `GET /ssh/{vmid}` (page with xterm.js) and
//! `GET /ws/terminal/{vmid}?token=…` (the WebSocket relay to the guest's sshd, over the cloner's SSH client with its guest profile,
//! [`cloner::guest`]).
//!
//! Before the upgrade ([`super::check_upgrade`]): the VM is the caller's, the `Origin` is the portal's,
//! the one-time connect token matches, and the user has a free terminal slot and has not opened too many
//! in the last minute. Then the dial rule ([`admit`], [`sync::dial_verdict`]): the VM's address from the
//! inventory is used only inside the cluster's `guest_networks` or when its ARP entry carries one of the
//! VM's MACs, never loopback, link-local, the portal's own, a node's or the API host's; every decision is
//! audited. The relay connects to that address and the configured SSH port only — nothing from the
//! request picks the target. Frames and messages from the browser are limited to [`MAX_WS_MESSAGE`].
//!
//! Wire protocol (browser ⇄ portal):
//! - browser → portal, **text** frames: JSON control, `{"type":"hello","cols":C,"rows":R}` first (the PTY
//!   is requested with this size before any input is forwarded, so typed-ahead input after a
//!   reconnect runs at the new size), `{"type":"resize","cols":C,"rows":R}` later (→ SSH `window-change`).
//!   Values are clamped to 1..=1000; zero, missing or non-numeric values are ignored.
//! - browser → portal, **binary** frames: keystrokes (UTF-8), forwarded to the PTY as they are.
//! - portal → browser, **binary** frames: terminal output, cut at UTF-8 character boundaries so a
//!   multi-byte character split across SSH reads arrives whole in one frame.
//! - portal → browser, **text** frames: status JSON `{"type":"status","state":…,"message":…}` and
//!   `{"type":"hostkey","status":"new"|"known"|"changed","fingerprint":…,"previous":…}`.
//! - WebSocket pings every [`super::ConnectConfig::ws_ping_interval`] (idle proxies keep the socket); SSH
//!   keepalives on the guest leg; close codes from [`super::close`] with a reason; 1001 "server restarting"
//!   at shutdown.
//!
//! The guest's credentials are asked in the terminal (user name, then password or the server's
//! keyboard-interactive prompts, without echo for secrets), used once, and never stored or logged. The
//! guest's host key is recorded per VM ([`super::hostkeys`]); a changed key stops the login with a loud
//! warning until the user types `yes`.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::extract::ws::{
    CloseFrame, Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cloner::guest::{GuestConnection, GuestProfile, Interactive, ShellEvent};
use futures::{SinkExt, StreamExt};
use minijinja::context;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::hostkeys::{self, HostKeyStatus};
use super::{ConnectQuery, TerminalGuard, close, tag_port};
use crate::auth::{Action, Authn, Decision, Principal, Target, decide};
use crate::error::AppError;
use crate::state::AppState;

/// Smallest and largest terminal dimension accepted (clamped; zero and NaN are ignored).
pub const DIM_MIN: u32 = 1;
/// See [`DIM_MIN`].
pub const DIM_MAX: u32 = 1000;

/// How often a relay re-checks that the VM still runs and is still the user's.
const RECHECK_EVERY: Duration = Duration::from_secs(5);

/// A terminal size (columns × rows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    /// Columns.
    pub cols: u32,
    /// Rows.
    pub rows: u32,
}

impl Default for Size {
    fn default() -> Self {
        Size { cols: 80, rows: 24 }
    }
}

/// A control message from the browser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// First message of a connection: the terminal's size.
    Hello(Size),
    /// The terminal was resized.
    Resize(Size),
}

fn dim(v: Option<&serde_json::Value>) -> Option<u32> {
    let n = v?.as_f64()?;
    if !n.is_finite() || n < 1.0 {
        return None;
    }
    Some((n.floor() as u64).clamp(u64::from(DIM_MIN), u64::from(DIM_MAX)) as u32)
}

/// Parses a text frame. Unknown types and sizes that are zero, missing, negative, NaN or not numbers
/// give `None` (ignored); large values are clamped to [`DIM_MAX`].
pub fn parse_control(text: &str) -> Option<Control> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let size = Size {
        cols: dim(v.get("cols"))?,
        rows: dim(v.get("rows"))?,
    };
    match v.get("type")?.as_str()? {
        "hello" => Some(Control::Hello(size)),
        "resize" => Some(Control::Resize(size)),
        _ => None,
    }
}

/// Cuts `data` (appended to the bytes `carry` kept from the last call) at the last complete UTF-8
/// character: returns what can be sent now and keeps an incomplete trailing sequence (1–3 bytes) in
/// `carry`. Bytes that are not UTF-8 at all are passed through (the terminal shows a replacement
/// character); they are never held back for more than 3 bytes.
pub fn take_whole_chars(carry: &mut Vec<u8>, data: &[u8]) -> Vec<u8> {
    let mut buf = std::mem::take(carry);
    buf.extend_from_slice(data);
    let n = buf.len();
    // Look back at most 3 bytes for the lead byte of an unfinished sequence.
    let mut cut = n;
    for back in 1..=3.min(n) {
        let b = buf[n - back];
        if b & 0xC0 == 0x80 {
            continue; // continuation byte: keep looking for the lead
        }
        let need = if b & 0xE0 == 0xC0 {
            2
        } else if b & 0xF0 == 0xE0 {
            3
        } else if b & 0xF8 == 0xF0 {
            4
        } else {
            1
        };
        if need > back {
            cut = n - back;
        }
        break;
    }
    *carry = buf.split_off(cut);
    buf
}

/// What the browser sent, as the relay sees it.
enum In {
    Data(Vec<u8>),
    Control(Control),
    Closed,
    /// The browser sent a message over [`super::MAX_WS_MESSAGE`].
    TooBig,
}

/// What goes to the browser.
enum Out {
    Bytes(Vec<u8>),
    Json(serde_json::Value),
    Close(u16, String),
}

/// Why a session ended.
struct End {
    code: u16,
    reason: String,
}

impl End {
    fn new(code: u16, reason: impl Into<String>) -> End {
        End {
            code,
            reason: reason.into(),
        }
    }
}

/// Close reasons are at most 123 bytes (RFC 6455 §5.5): cut at a character boundary.
fn short_reason(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if out.len() + c.len_utf8() > 120 {
            break;
        }
        out.push(c);
    }
    out
}

// ---- page ----------------------------------------------------------------------------------------

/// `GET /ssh/{vmid}`: `ssh.html` with `vm` (`cluster`, `vmid`, `name`, `state`, `ip`), `ws_path`,
/// `token_path`, `vendor` (base URL of the npm files), `csrf_token` and `user`. 404 (themed) for a VM
/// the caller may not connect to.
pub async fn terminal_page(
    State(st): State<AppState>,
    p: Principal,
    Path(vmid): Path<u32>,
    Query(q): Query<ConnectQuery>,
) -> Response {
    connect_page(&st, &p, vmid, q.cluster.as_deref(), "ssh", "ssh.html").await
}

/// Renders the terminal or console page (shared by [`terminal_page`] and
/// [`super::console::console_page`]).
pub(crate) async fn connect_page(
    st: &AppState,
    p: &Principal,
    vmid: u32,
    cluster: Option<&str>,
    kind: &'static str,
    template: &'static str,
) -> Response {
    let Some(themes) = crate::render::themes_of(st) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "The portal's theme does not load.",
        )
            .into_response();
    };
    let cluster = match st.authorize_vm(p, vmid, cluster, Action::ConnectVm) {
        Ok(c) => c,
        Err(e) => return crate::render::error_page(&themes, e.status(), &e.to_string()).await,
    };
    let snap = st.inventory.snapshot();
    let Some(g) = snap.guest(&cluster, vmid).cloned() else {
        let msg = format!("no VM {vmid} in cluster {cluster}");
        return crate::render::error_page(&themes, StatusCode::NOT_FOUND, &msg).await;
    };
    let q = format!(
        "?cluster={}",
        url::form_urlencoded::byte_serialize(cluster.as_bytes()).collect::<String>()
    );
    let ws_path = format!(
        "/ws/{}/{vmid}{q}",
        if kind == "ssh" { "terminal" } else { "console" }
    );
    let token_path = format!("/api/vm/{vmid}/connect-token{q}");
    let title = format!(
        "{} · {}",
        if kind == "ssh" { "Terminal" } else { "Console" },
        g.name
    );
    let csrf = p.csrf_token().unwrap_or_default().to_string();
    let user = json!({"name": p.name, "display_name": p.display_name, "role": p.role});
    let vm = json!({
        "cluster": cluster, "vmid": vmid, "name": g.name, "state": g.state,
        "ip": g.ip.as_ref().map(|i| i.address.clone()),
    });
    let page = kind;
    let result = themes
        .render(template, move || {
            context! {
                page => page, title => title, now => sync::now_secs(),
                vm => minijinja::Value::from_serialize(&vm),
                ws_path => ws_path, token_path => token_path, vendor => "/static/vendor",
                csrf_token => csrf, user => minijinja::Value::from_serialize(&user),
            }
        })
        .await;
    match result {
        Ok(html) => {
            let mut resp = (StatusCode::OK, html).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            if kind == "ssh" {
                resp.headers_mut().insert(
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(crate::auth::CSP_TERMINAL),
                );
            }
            resp
        }
        Err(_) => {
            crate::render::error_page(
                &themes,
                StatusCode::INTERNAL_SERVER_ERROR,
                "This page could not be shown. The administrators can see why on the reload status page.",
            )
            .await
        }
    }
}

// ---- upgrade -------------------------------------------------------------------------------------

/// Everything a terminal session needs, resolved before the upgrade.
struct Session {
    st: AppState,
    user: Principal,
    client_addr: IpAddr,
    cluster: String,
    vmid: u32,
    name: String,
    address: IpAddr,
    port: u16,
    macs: Vec<String>,
    legacy: bool,
    _slot: TerminalGuard,
}

/// `GET /ws/terminal/{vmid}?token=…[&cluster=…]`: see the module docs. Refusals before the upgrade:
/// 404 (not the caller's VM), 403 (Origin, token), 409 (VM not running / no address yet), 429 (too many
/// sessions), 400 (not a WebSocket upgrade).
pub async fn terminal_ws(
    State(st): State<AppState>,
    p: Principal,
    authn: Authn,
    Path(vmid): Path<u32>,
    Query(q): Query<ConnectQuery>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let session = match prepare(&st, &p, authn.addr, vmid, &q, &headers) {
        Ok(session) => session,
        Err(e) => return e.into_response(),
    };
    let Ok(ws) = ws else {
        return AppError::BadRequest("expected a WebSocket upgrade".into()).into_response();
    };
    if let Err(e) = admit(&session).await {
        return e.into_response();
    }
    super::limited(ws).on_upgrade(move |socket| run(socket, session))
}

/// The address rule of every relay ([`sync::dial_verdict`]): the VM's inventory address is dialled only
/// when it is inside the cluster's guest networks or its ARP entry carries one of the VM's MACs, and
/// never when it is loopback, link-local, special, the portal's own, a node's or the API host's. A guest
/// reports whatever its root user wants, so a refusal is expected and audited like a success.
async fn admit(s: &Session) -> Result<(), AppError> {
    let connect = &s.st.connect;
    let rules = connect.dial_rules(&s.cluster, &s.st.inventory.snapshot());
    let on_link = super::net::is_on_link(s.address).await;
    let verdict = match sync::dial_static(s.address, &rules, on_link) {
        Err(refusal) => Err(refusal),
        Ok(sync::DialBasis::TestRange) => Ok(sync::DialBasis::TestRange),
        Ok(_) => {
            // Guest network or on-link: compare the ARP entry with the VM's MACs (a fresh check is reused).
            let cfg = &connect.config;
            let now = sync::now_secs();
            let facts = s.st.inventory.snapshot().facts(&s.cluster, s.vmid);
            let fresh = facts.check.filter(|c| {
                c.address == s.address.to_string()
                    && now.saturating_sub(c.checked_at) <= cfg.verify.max_age.as_secs()
            });
            let check = match fresh {
                Some(c) => c,
                None => {
                    let c = super::verify(s.address, &s.macs, &cfg.verify).await;
                    let check = c.clone();
                    s.st.inventory
                        .update_facts(&s.cluster, s.vmid, |f| f.check = Some(check))
                        .await;
                    c
                }
            };
            let mac_match = match check.mac {
                super::MacCheck::Match => Some(true),
                super::MacCheck::Mismatch => Some(false),
                super::MacCheck::Unknown => None,
            };
            sync::dial_verdict(s.address, &rules, on_link, mac_match)
        }
    };
    let target = format!("{}/{} {}:{}", s.cluster, s.vmid, s.address, s.port);
    match verdict {
        Ok(basis) => {
            let why = match basis {
                sync::DialBasis::GuestNetwork => "allowed: guest network",
                sync::DialBasis::Verified => "allowed: MAC verified",
                sync::DialBasis::TestRange => "allowed: test range",
                sync::DialBasis::NeedsMacMatch => "allowed",
            };
            s.st.auth
                .audit(&s.user.name, s.client_addr, "terminal.connect", &target, why);
            Ok(())
        }
        Err(refusal) => {
            tracing::warn!(user = %s.user.name, vm = %format!("{}/{}", s.cluster, s.vmid), address = %s.address, reason = refusal.code, "terminal refused");
            s.st.auth.audit(
                &s.user.name,
                s.client_addr,
                "terminal.connect",
                &target,
                &format!("refused: {}", refusal.code),
            );
            Err(AppError::Forbidden(format!(
                "not connecting: {}",
                refusal.message
            )))
        }
    }
}

fn prepare(
    st: &AppState,
    p: &Principal,
    client_addr: IpAddr,
    vmid: u32,
    q: &ConnectQuery,
    headers: &HeaderMap,
) -> Result<Session, AppError> {
    let cluster = super::check_upgrade(st, p, vmid, q, headers, "ssh")?;
    let g = st.guest(&cluster, vmid)?;
    if g.status != "running" {
        return Err(AppError::Conflict("the VM is not running; start it first".into()));
    }
    let address =
        g.ip.as_ref()
            .and_then(|ip| ip.address.parse::<IpAddr>().ok())
            .ok_or_else(|| {
                AppError::Conflict("the VM's address is not known yet; try again in a moment".into())
            })?;
    let cfg = &st.connect.config;
    let port = tag_port(&g.tags, "ssh-port-").unwrap_or(cfg.ssh_port);
    let slot = st
        .connect
        .reserve_terminal(&p.name)
        .map_err(AppError::TooManyRequests)?;
    let mut macs: Vec<String> = g.macs.iter().map(|(_, m)| m.clone()).collect();
    macs.extend(g.mac.clone());
    Ok(Session {
        st: st.clone(),
        user: p.clone(),
        client_addr,
        cluster,
        vmid,
        name: g.name.clone(),
        address,
        port,
        macs,
        legacy: g.tags.iter().any(|t| t == &cfg.legacy_tag),
        _slot: slot,
    })
}

// ---- relay ---------------------------------------------------------------------------------------

async fn run(socket: WebSocket, s: Session) {
    let (sink, stream) = socket.split();
    let (out_tx, out_rx) = mpsc::channel::<Out>(64);
    // Bounded by messages of at most 64 KiB: a reader that outpaces the guest waits (TCP back-pressure).
    let (in_tx, in_rx) = mpsc::channel::<In>(8);
    let writer = tokio::spawn(write_loop(sink, out_rx, s.st.connect.config.ws_ping_interval));
    let reader = tokio::spawn(read_loop(stream, in_tx));
    let target = format!("{}/{}", s.cluster, s.vmid);
    let mut term = Term {
        out: out_tx,
        input: in_rx,
        pending: VecDeque::new(),
        size: Size::default(),
        last_input: Instant::now(),
        shutdown: s.st.connect.shutdown_signal(),
    };
    tracing::info!(user = %s.user.name, vm = %target, address = %s.address, port = s.port, "terminal opened");
    // The terminal ends within a second of the user's session ending (disabled, signed out, demoted).
    let revoked = s.st.auth.until_revoked(&s.user);
    let end = tokio::select! {
        r = session(&s, &mut term) => match r {
            Ok(end) | Err(end) => end,
        },
        _ = revoked => End::new(super::close::SIGNED_OUT, super::SIGNED_OUT_REASON),
    };
    tracing::info!(user = %s.user.name, vm = %target, code = end.code, reason = %end.reason, "terminal closed");
    let _ = term
        .out
        .send(Out::Close(end.code, short_reason(&end.reason)))
        .await;
    drop(term);
    let _ = writer.await;
    reader.abort();
}

async fn write_loop(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Out>,
    ping_every: Duration,
) {
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    loop {
        let sent = tokio::select! {
            m = rx.recv() => match m {
                Some(Out::Bytes(b)) => sink.send(Message::Binary(b.into())).await,
                Some(Out::Json(v)) => sink.send(Message::Text(v.to_string().into())).await,
                Some(Out::Close(code, reason)) => {
                    let _ = sink.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                    let _ = sink.flush().await;
                    return;
                }
                None => {
                    let _ = sink.close().await;
                    return;
                }
            },
            _ = ping.tick() => sink.send(Message::Ping(axum::body::Bytes::new())).await,
        };
        if sent.is_err() {
            return;
        }
    }
}

async fn read_loop(mut stream: futures::stream::SplitStream<WebSocket>, tx: mpsc::Sender<In>) {
    while let Some(msg) = stream.next().await {
        let msg = match msg {
            Ok(msg) => msg,
            Err(e) => {
                if super::is_too_big(&e) {
                    let _ = tx.send(In::TooBig).await;
                    return;
                }
                break;
            }
        };
        let ev = match msg {
            Message::Binary(b) => In::Data(b.to_vec()),
            Message::Text(t) => match parse_control(t.as_str()) {
                Some(c) => In::Control(c),
                None => continue,
            },
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if tx.send(ev).await.is_err() {
            return;
        }
    }
    let _ = tx.send(In::Closed).await;
}

/// The browser side of a session: output, input with a small line editor for the login prompts.
struct Term {
    out: mpsc::Sender<Out>,
    input: mpsc::Receiver<In>,
    /// Input received but not consumed by a prompt yet.
    pending: VecDeque<u8>,
    size: Size,
    last_input: Instant,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Term {
    async fn write(&self, text: &str) {
        let _ = self
            .out
            .send(Out::Bytes(text.replace('\n', "\r\n").into_bytes()))
            .await;
    }

    async fn status(&self, state: &str, message: &str) {
        let _ = self
            .out
            .send(Out::Json(
                json!({"type": "status", "state": state, "message": message}),
            ))
            .await;
    }

    /// Reads one line typed by the user (Enter ends it; Backspace, Ctrl-U work; Ctrl-C/Ctrl-D cancel;
    /// escape sequences such as arrow keys are dropped). `echo` false shows nothing (passwords).
    async fn read_line(&mut self, echo: bool, deadline: Instant) -> Result<String, End> {
        let mut line: Vec<u8> = Vec::new();
        loop {
            while let Some(b) = self.pending.pop_front() {
                match b {
                    b'\r' | b'\n' => {
                        if b == b'\r' && self.pending.front() == Some(&b'\n') {
                            self.pending.pop_front();
                        }
                        self.write("\n").await;
                        return Ok(String::from_utf8_lossy(&line).into_owned());
                    }
                    0x03 | 0x04 => {
                        self.write("^C\n").await;
                        return Err(End::new(close::AUTH_FAILED, "login cancelled"));
                    }
                    0x7f | 0x08 => {
                        // Remove one whole character.
                        let mut removed = false;
                        while let Some(last) = line.pop() {
                            removed = true;
                            if last & 0xC0 != 0x80 {
                                break;
                            }
                        }
                        if echo && removed {
                            self.write("\u{8} \u{8}").await;
                        }
                    }
                    0x15 => {
                        if echo {
                            let n = String::from_utf8_lossy(&line).chars().count();
                            self.write(&"\u{8} \u{8}".repeat(n)).await;
                        }
                        line.clear();
                    }
                    0x1b => {
                        // An escape sequence (arrow keys, function keys): drop it.
                        if self.pending.front() == Some(&b'[') || self.pending.front() == Some(&b'O') {
                            self.pending.pop_front();
                            while let Some(c) = self.pending.pop_front() {
                                if (0x40..=0x7e).contains(&c) {
                                    break;
                                }
                            }
                        }
                    }
                    c if c < 0x20 => {}
                    c => {
                        if line.len() < 1024 {
                            line.push(c);
                            if echo {
                                let _ = self.out.send(Out::Bytes(vec![c])).await;
                            }
                        }
                    }
                }
            }
            match self.next_event(deadline).await? {
                In::Data(d) => self.keep(d)?,
                In::Control(Control::Hello(sz) | Control::Resize(sz)) => self.size = sz,
                In::Closed => return Err(End::new(close::AUTH_FAILED, "the browser closed the terminal")),
                In::TooBig => return Err(too_big()),
            }
        }
    }

    /// The next browser event before `deadline` (login timeout) or shutdown.
    async fn next_event(&mut self, deadline: Instant) -> Result<In, End> {
        tokio::select! {
            ev = self.input.recv() => {
                let ev = ev.unwrap_or(In::Closed);
                if matches!(ev, In::Data(_)) {
                    self.last_input = Instant::now();
                }
                Ok(ev)
            }
            _ = tokio::time::sleep_until(deadline) => Err(End::new(close::LOGIN_TIMEOUT, "no login within the time allowed")),
            _ = super::shutdown_requested(self.shutdown.clone()) => Err(End::new(axum::extract::ws::close_code::AWAY, "server restarting")),
        }
    }

    /// Keeps typed-ahead input for later, at most [`super::MAX_PENDING_INPUT`] bytes.
    fn keep(&mut self, d: Vec<u8>) -> Result<(), End> {
        if self.pending.len().saturating_add(d.len()) > super::MAX_PENDING_INPUT {
            return Err(End::new(
                axum::extract::ws::close_code::SIZE,
                "too much input before the terminal was ready",
            ));
        }
        self.pending.extend(d);
        Ok(())
    }

    /// Waits for the browser's `hello` (its size) up to `limit`; input that comes first is kept.
    async fn await_hello(&mut self, limit: Duration) -> Result<(), End> {
        let deadline = Instant::now() + limit;
        loop {
            match self.next_event(deadline).await {
                Ok(In::Control(Control::Hello(sz))) => {
                    self.size = sz;
                    return Ok(());
                }
                Ok(In::Control(Control::Resize(sz))) => self.size = sz,
                Ok(In::Data(d)) => self.keep(d)?,
                Ok(In::Closed) => return Err(End::new(close::PROTOCOL, "the browser closed the terminal")),
                Ok(In::TooBig) => return Err(too_big()),
                Err(e) if e.code == close::LOGIN_TIMEOUT => return Ok(()), // no hello: keep 80x24
                Err(e) => return Err(e),
            }
        }
    }
}

/// What the terminal shows when the guest's sshd cannot be reached: the user's hint, and the detail for
/// the log.
fn describe_connect_error(e: &cloner::ClonerError, legacy: bool) -> (String, String) {
    match e {
        cloner::ClonerError::Negotiation { kind, offered, .. } => {
            let detail = format!("no common {kind} algorithm: the VM offers only {offered}");
            let hint = if legacy {
                "The VM's SSH server uses algorithms Proxlab does not support.".to_string()
            } else {
                "The VM's SSH server only offers old algorithms. Ask your teacher to tag the VM `ssh-legacy`."
                    .to_string()
            };
            (detail, hint)
        }
        cloner::ClonerError::Connect { message, .. } => (
            message.clone(),
            format!("Cannot connect to the VM's SSH server: {message}"),
        ),
        other => (
            other.to_string(),
            format!("Cannot connect to the VM's SSH server: {other}"),
        ),
    }
}

async fn session(s: &Session, term: &mut Term) -> Result<End, End> {
    let cfg = &s.st.connect.config;
    term.status("waiting", "waiting for the terminal size").await;
    term.await_hello(cfg.hello_timeout).await?;

    // The address passed the dial rules before the upgrade ([`admit`]).
    let now = sync::now_secs();
    // TCP + key exchange.
    term.status("connecting", &format!("connecting to {}:{}", s.address, s.port))
        .await;
    term.write(&format!("Connecting to {} ({}:{})…\n", s.name, s.address, s.port))
        .await;
    let profile = GuestProfile {
        legacy_algorithms: s.legacy,
        connect_timeout: cfg.ssh_connect_timeout,
        keepalive_interval: cfg.ssh_keepalive,
    };
    let addr = SocketAddr::new(s.address, s.port);
    let mut conn = tokio::select! {
        r = GuestConnection::connect(addr, &profile, now) => match r {
            Ok(c) => c,
            Err(cloner::ClonerError::Timeout { .. }) => {
                term.write("\x1b[1;31mThe VM's SSH server did not answer in time.\x1b[0m\n").await;
                return Err(End::new(close::CONNECT_FAILED, "the VM's SSH server did not answer"));
            }
            Err(e) => {
                let (detail, hint) = describe_connect_error(&e, s.legacy);
                tracing::warn!(vm = %format!("{}/{}", s.cluster, s.vmid), address = %addr, profile = if s.legacy { "legacy" } else { "modern" }, error = %detail, "guest ssh connect failed");
                term.write(&format!("\x1b[1;31m{hint}\x1b[0m\n")).await;
                return Err(End::new(close::CONNECT_FAILED, hint));
            }
        },
        _ = super::shutdown_requested(term.shutdown.clone()) => return Err(End::new(axum::extract::ws::close_code::AWAY, "server restarting")),
    };

    // Host key: recorded per VM; a change is loud and needs the user's "yes".
    let record = conn.host_key().clone();
    let store = &s.st.auth.store;
    let status = hostkeys::compare(store, &s.cluster, s.vmid, &record).unwrap_or(HostKeyStatus::New);
    match &status {
        HostKeyStatus::New => {
            term.write(&format!(
                "Host key of this VM recorded: {} {}\n",
                record.algorithm, record.fingerprint
            ))
            .await;
            let _ = term
                .out
                .send(Out::Json(
                    json!({"type": "hostkey", "status": "new", "fingerprint": record.fingerprint}),
                ))
                .await;
        }
        HostKeyStatus::Known => {
            let _ = term
                .out
                .send(Out::Json(
                    json!({"type": "hostkey", "status": "known", "fingerprint": record.fingerprint}),
                ))
                .await;
        }
        HostKeyStatus::Changed(old) => {
            tracing::warn!(vm = %format!("{}/{}", s.cluster, s.vmid), user = %s.user.name, old = %old.fingerprint, new = %record.fingerprint, "guest host key changed");
            s.st.auth.audit(
                &s.user.name,
                s.client_addr,
                "vm.ssh.hostkey_changed",
                &format!("{}/{}", s.cluster, s.vmid),
                &record.fingerprint,
            );
            let _ = term.out.send(Out::Json(json!({"type": "hostkey", "status": "changed", "fingerprint": record.fingerprint, "previous": old.fingerprint}))).await;
            term.write(&format!(
                "\x1b[1;41;97m WARNING: THE HOST KEY OF THIS VM HAS CHANGED! \x1b[0m\n\
                 \x1b[1;31mRecorded: {} {}\nNow:      {} {}\x1b[0m\n\
                 This is expected after the VM was reset or rebuilt. Otherwise someone may be\n\
                 intercepting the connection: do not type your password.\n\
                 Type \x1b[1myes\x1b[0m to trust the new key, anything else to stop: ",
                old.algorithm, old.fingerprint, record.algorithm, record.fingerprint
            ))
            .await;
            let answer = term.read_line(true, Instant::now() + cfg.login_timeout).await?;
            if answer.trim() != "yes" {
                conn.disconnect().await;
                return Err(End::new(
                    close::HOST_KEY,
                    "the VM's host key changed and was not accepted",
                ));
            }
        }
    }
    // Recorded (or its last_seen updated); a changed key only after the user's "yes" above.
    if let Err(e) = hostkeys::record(store, &s.cluster, s.vmid, &record) {
        tracing::warn!(error = %e, "cannot record the guest host key");
    }

    // Credentials, asked in the terminal, used once.
    term.status("login", "waiting for the user name and password")
        .await;
    let deadline = Instant::now() + cfg.login_timeout;
    let user = loop {
        term.write("login as: ").await;
        let u = term.read_line(true, deadline).await?;
        let u = u.trim().to_string();
        if !u.is_empty() && u.len() <= 64 && !u.chars().any(|c| c.is_control()) {
            break u;
        }
    };
    authenticate(&mut conn, term, &user, s, deadline).await?;
    s.st.auth.audit(
        &s.user.name,
        s.client_addr,
        "vm.ssh",
        &format!("{}/{}", s.cluster, s.vmid),
        "ok",
    );

    // PTY with the browser's size (before any input is forwarded), then the shell.
    let size = term.size;
    let (mut rd, wr) = conn
        .open_shell("xterm-256color", size.cols, size.rows)
        .await
        .map_err(|e| {
            let message = match e {
                cloner::ClonerError::Connect { message, .. } => message,
                other => other.to_string(),
            };
            End::new(close::CONNECT_FAILED, message)
        })?;
    term.status("connected", &format!("{user}@{}", s.address)).await;
    // Keystrokes typed ahead during the login (after the password line) go first, after the size.
    if !term.pending.is_empty() {
        let ahead: Vec<u8> = term.pending.drain(..).collect();
        let _ = wr.send(ahead).await;
    }
    let mut carry = Vec::new();
    let mut exit: Option<u32> = None;
    let mut recheck = tokio::time::interval_at(Instant::now() + RECHECK_EVERY, RECHECK_EVERY);
    term.last_input = Instant::now();
    let shutdown = super::shutdown_requested(term.shutdown.clone());
    tokio::pin!(shutdown);
    let end = loop {
        let idle_at = term.last_input + cfg.idle_timeout;
        tokio::select! {
            ev = rd.next() => match ev {
                ShellEvent::Output(data) => {
                    let whole = take_whole_chars(&mut carry, &data);
                    if !whole.is_empty() && term.out.send(Out::Bytes(whole)).await.is_err() {
                        break End::new(close::PROTOCOL, "browser gone");
                    }
                }
                ShellEvent::Exit(code) => exit = Some(code),
                ShellEvent::Closed => {
                    break End::new(axum::extract::ws::close_code::NORMAL, match exit {
                        Some(code) => format!("session ended (exit status {code})"),
                        None => "session ended".to_string(),
                    });
                }
            },
            ev = term.input.recv() => match ev {
                Some(In::Data(d)) => {
                    term.last_input = Instant::now();
                    if wr.send(d).await.is_err() {
                        break End::new(close::CONNECT_FAILED, "the SSH connection was lost");
                    }
                }
                Some(In::Control(Control::Hello(sz) | Control::Resize(sz))) => {
                    term.size = sz;
                    wr.resize(sz.cols, sz.rows).await;
                }
                Some(In::TooBig) => {
                    wr.close().await;
                    break too_big();
                }
                Some(In::Closed) | None => {
                    wr.close().await;
                    break End::new(axum::extract::ws::close_code::NORMAL, "closed by the browser");
                }
            },
            _ = tokio::time::sleep_until(idle_at) => {
                let mins = cfg.idle_timeout.as_secs().div_ceil(60);
                term.write(&format!("\n\x1b[1;33mClosed after {} without input.\x1b[0m\n", plural(mins, "minute"))).await;
                wr.close().await;
                break End::new(close::IDLE, format!("closed after {} without input", plural(mins, "minute")));
            }
            _ = recheck.tick() => {
                if let Some(why) = vm_gone(s) {
                    term.write(&format!("\n\x1b[1;33m{why}\x1b[0m\n")).await;
                    wr.close().await;
                    break End::new(close::VM_GONE, why);
                }
            }
            _ = &mut shutdown => {
                term.write("\n\x1b[1;33mThe portal is restarting; reconnect in a moment.\x1b[0m\n").await;
                wr.close().await;
                break End::new(axum::extract::ws::close_code::AWAY, "server restarting");
            }
        }
    };
    if !carry.is_empty() {
        let _ = term.out.send(Out::Bytes(std::mem::take(&mut carry))).await;
    }
    conn.disconnect().await;
    Ok(end)
}

fn too_big() -> End {
    End::new(
        axum::extract::ws::close_code::SIZE,
        "a message from the browser was larger than 64 KiB",
    )
}

fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// `Some(reason)` when the VM stopped or the user may no longer connect to it.
fn vm_gone(s: &Session) -> Option<String> {
    let target = Target::Vm {
        cluster: &s.cluster,
        vmid: s.vmid,
    };
    if decide(&s.user, Action::ConnectVm, &target, &s.st.auth.index()) != Decision::Allow {
        return Some("You may no longer use this VM.".into());
    }
    match s.st.inventory.snapshot().guest(&s.cluster, s.vmid) {
        Some(g) if g.status == "running" || g.stale.is_some() => None,
        _ => Some("The VM stopped.".into()),
    }
}

/// Password or keyboard-interactive authentication, prompted in the terminal, up to 3 attempts.
async fn authenticate(
    conn: &mut GuestConnection,
    term: &mut Term,
    user: &str,
    s: &Session,
    deadline: Instant,
) -> Result<(), End> {
    let methods = match conn.auth_none(user).await.map_err(lost)? {
        None => return Ok(()),
        Some(m) => m,
    };
    let ki = methods.keyboard_interactive;
    let pw = methods.password;
    if !ki && !pw {
        term.write("\x1b[1;31mThis VM accepts neither passwords nor keyboard-interactive logins.\x1b[0m\n")
            .await;
        return Err(End::new(close::AUTH_FAILED, "the VM accepts no password logins"));
    }
    for attempt in 0..3 {
        if attempt > 0 {
            term.write("Permission denied, please try again.\n").await;
        }
        let ok = if ki {
            keyboard_interactive(conn, term, user, deadline).await?
        } else {
            term.write(&format!("{user}@{}'s password: ", s.address)).await;
            let password = pve::Secret::new(term.read_line(false, deadline).await?);
            let r = conn.auth_password(user, password.expose()).await.map_err(lost)?;
            drop(password);
            r
        };
        if ok {
            return Ok(());
        }
    }
    term.write("\x1b[1;31mPermission denied.\x1b[0m\n").await;
    Err(End::new(close::AUTH_FAILED, "authentication failed"))
}

/// The guest connection broke during the login.
fn lost(e: cloner::ClonerError) -> End {
    let message = match e {
        cloner::ClonerError::Connect { message, .. } => message,
        other => other.to_string(),
    };
    End::new(
        close::CONNECT_FAILED,
        format!("the SSH connection was lost: {message}"),
    )
}

async fn keyboard_interactive(
    conn: &mut GuestConnection,
    term: &mut Term,
    user: &str,
    deadline: Instant,
) -> Result<bool, End> {
    let mut resp = conn.auth_interactive_start(user).await.map_err(lost)?;
    for _ in 0..10 {
        match resp {
            Interactive::Success => return Ok(true),
            Interactive::Failure => return Ok(false),
            Interactive::Prompts {
                name,
                instructions,
                prompts,
            } => {
                for text in [name, instructions] {
                    if !text.trim().is_empty() {
                        term.write(&format!("{}\n", text.trim_end())).await;
                    }
                }
                let mut answers = Vec::with_capacity(prompts.len());
                for p in prompts {
                    term.write(&p.text).await;
                    answers.push(term.read_line(p.echo, deadline).await?);
                }
                resp = conn.auth_interactive_respond(answers).await.map_err(lost)?;
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_clamped_and_bad_values_ignored() {
        assert_eq!(
            parse_control(r#"{"type":"resize","cols":132,"rows":40}"#),
            Some(Control::Resize(Size { cols: 132, rows: 40 }))
        );
        assert_eq!(
            parse_control(r#"{"type":"hello","cols":120,"rows":30}"#),
            Some(Control::Hello(Size { cols: 120, rows: 30 }))
        );
        assert_eq!(
            parse_control(r#"{"type":"resize","cols":5000,"rows":2}"#),
            Some(Control::Resize(Size { cols: 1000, rows: 2 }))
        );
        for bad in [
            r#"{"type":"resize","cols":0,"rows":40}"#,
            r#"{"type":"resize","cols":"NaN","rows":40}"#,
            r#"{"type":"resize","cols":-3,"rows":40}"#,
            r#"{"type":"resize","rows":40}"#,
            r#"{"type":"other","cols":10,"rows":10}"#,
            "not json",
        ] {
            assert_eq!(parse_control(bad), None, "{bad}");
        }
    }

    #[test]
    fn utf8_characters_split_across_reads_are_sent_whole() {
        let text = "grüße 日本語 ✓ 🚀".as_bytes();
        for cut in 0..=text.len() {
            let mut carry = Vec::new();
            let mut out = take_whole_chars(&mut carry, &text[..cut]);
            assert!(std::str::from_utf8(&out).is_ok(), "first part at {cut}");
            let second = take_whole_chars(&mut carry, &text[cut..]);
            assert!(std::str::from_utf8(&second).is_ok(), "second part at {cut}");
            assert!(carry.is_empty());
            out.extend(second);
            assert_eq!(out, text);
        }
        // Invalid bytes are not held back forever.
        let mut carry = Vec::new();
        assert_eq!(take_whole_chars(&mut carry, b"a\xff"), b"a\xff");
    }

    #[test]
    fn close_reasons_fit_a_close_frame() {
        let r = short_reason(&"ü".repeat(200));
        assert!(r.len() <= 123);
        assert!(r.chars().all(|c| c == 'ü'));
    }
}
