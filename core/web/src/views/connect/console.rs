//! The VM console in the browser: `GET /console/{vmid}` (noVNC page) and `GET /ws/console/{vmid}?token=…`,
//! a relay to PVE's `POST /nodes/{node}/{qemu|lxc}/{vmid}/vncproxy` (`websocket=1`) +
//! `GET …/vncwebsocket?port=…&vncticket=…`, opened per browser connection with Proxlab's own cluster
//! credentials after the same checks as the terminal ([`super::check_upgrade`]). The PVE leg is
//! [`pve::console`]; this module keeps the browser leg and the RFB handshake between the two.
//!
//! The PVE ticket never reaches the browser: the relay performs the RFB security handshake with PVE
//! itself (VNC authentication, RFB 3.8 §7.2.2, with the ticket as the password, as PVE expects) and offers
//! the browser only security type 1 "None". After the handshake it forwards binary frames both ways as
//! they are (split to at most [`MAX_FRAME`] bytes towards PVE), answers pings on each leg itself, pings
//! the browser every [`super::ConnectConfig::ws_ping_interval`], and closes with 1001 at shutdown.
//!
//! Subprotocols, negotiated separately on the two legs: towards PVE always exactly `binary`, and the
//! 101 must echo `binary` (else a relay error); towards the browser `binary` is echoed only when offered,
//! no header when none was offered, and an offer without `binary` (e.g. only `base64`) is refused with 400
//! — the relay never base64-encodes.

use std::net::IpAddr;
use std::time::Duration;

use axum::extract::ws::{
    CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
pub use pve::console::vnc_auth_response;
use pve::console::{ConsoleKind, VncConsole, VncSocket, VncTarget};
use tokio_tungstenite::tungstenite::Message as UpMessage;

use super::{ConnectQuery, SessionGuard, close};
use crate::auth::{Action, Authn, Decision, Principal, Target, decide};
use crate::error::AppError;
use crate::state::AppState;

/// Largest frame sent to PVE, bytes.
pub const MAX_FRAME: usize = 64 * 1024;

/// The subprotocol both legs use.
pub const SUBPROTOCOL: &str = pve::console::VNC_SUBPROTOCOL;

/// `GET /console/{vmid}`: `console.html` with the same context as the terminal page (`vm`, `ws_path`,
/// `token_path`, `vendor`, `csrf_token`, `user`).
pub async fn console_page(
    State(st): State<AppState>,
    p: Principal,
    Path(vmid): Path<u32>,
    Query(q): Query<ConnectQuery>,
) -> Response {
    super::ssh::connect_page(&st, &p, vmid, q.cluster.as_deref(), "console", "console.html").await
}

/// The subprotocols a request offers (`Sec-WebSocket-Protocol`, comma-separated, possibly repeated).
pub fn offered_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

struct Console {
    st: AppState,
    user: Principal,
    client_addr: IpAddr,
    cluster: String,
    vmid: u32,
    upstream: VncTarget,
    _slot: SessionGuard,
}

/// `GET /ws/console/{vmid}?token=…[&cluster=…]`: see the module docs. Refusals before the upgrade: 404,
/// 403 (Origin, token), 409 (VM not running), 429 (too many sessions), 400 (no upgrade, or a
/// subprotocol offer without `binary`), 503 (cluster unknown).
pub async fn console_ws(
    State(st): State<AppState>,
    p: Principal,
    authn: Authn,
    Path(vmid): Path<u32>,
    Query(q): Query<ConnectQuery>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let console = match prepare(&st, &p, authn.addr, vmid, &q, &headers) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let offered = offered_protocols(&headers);
    if !offered.is_empty() && !offered.iter().any(|p| p == SUBPROTOCOL) {
        return AppError::BadRequest(format!(
            "the console speaks only the `{SUBPROTOCOL}` WebSocket subprotocol (offered: {})",
            offered.join(", ")
        ))
        .into_response();
    }
    match ws {
        // `protocols` echoes `binary` only when the browser offered it (no header when it offered none).
        Ok(ws) => super::limited(ws)
            .protocols([SUBPROTOCOL])
            .on_upgrade(move |socket| run(socket, console)),
        Err(_) => AppError::BadRequest("expected a WebSocket upgrade".into()).into_response(),
    }
}

fn prepare(
    st: &AppState,
    p: &Principal,
    client_addr: IpAddr,
    vmid: u32,
    q: &ConnectQuery,
    headers: &HeaderMap,
) -> Result<Console, AppError> {
    let cluster = super::check_upgrade(st, p, vmid, q, headers, "console")?;
    let g = st.guest(&cluster, vmid)?;
    if g.status != "running" {
        return Err(AppError::Conflict("the VM is not running; start it first".into()));
    }
    let client = st
        .syncer
        .client(&cluster)
        .cloned()
        .ok_or_else(|| AppError::Unavailable(format!("cluster {cluster} is not configured")))?;
    let slot = st.connect.reserve(&p.name).ok_or_else(|| {
        AppError::TooManyRequests(format!(
            "you already have {} terminals and consoles open; close one first",
            st.connect.config.max_sessions_per_user
        ))
    })?;
    Ok(Console {
        st: st.clone(),
        user: p.clone(),
        client_addr,
        cluster,
        vmid,
        upstream: VncTarget::new(&client, &g.node, ConsoleKind::of_type(&g.kind), vmid),
        _slot: slot,
    })
}

/// Buffered reads of whole byte counts over WebSocket frames, for the handshake.
struct DownReader {
    rx: futures::stream::SplitStream<WebSocket>,
    buf: Vec<u8>,
}

impl DownReader {
    async fn read_exact(&mut self, n: usize) -> Result<Vec<u8>, String> {
        while self.buf.len() < n {
            match self.rx.next().await {
                Some(Ok(Message::Binary(b))) => self.buf.extend_from_slice(&b),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Text(_))) => return Err("the browser sent a text frame".into()),
                _ => return Err("the browser closed the console".into()),
            }
        }
        Ok(self.buf.drain(..n).collect())
    }
}

struct UpReader {
    ws: VncSocket,
    buf: Vec<u8>,
}

impl UpReader {
    async fn read_exact(&mut self, n: usize) -> Result<Vec<u8>, String> {
        while self.buf.len() < n {
            match self.ws.next().await {
                Some(Ok(UpMessage::Binary(b))) => self.buf.extend_from_slice(&b),
                Some(Ok(UpMessage::Ping(p))) => {
                    let _ = self.ws.send(UpMessage::Pong(p)).await;
                }
                Some(Ok(UpMessage::Pong(_) | UpMessage::Frame(_))) => {}
                Some(Ok(UpMessage::Text(_))) => return Err("PVE sent a text frame (base64 mode?)".into()),
                Some(Ok(UpMessage::Close(_))) | None => return Err("PVE closed the console".into()),
                Some(Err(e)) => return Err(format!("console connection to PVE: {e}")),
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    async fn send(&mut self, bytes: Vec<u8>) -> Result<(), String> {
        self.ws
            .send(UpMessage::Binary(bytes.into()))
            .await
            .map_err(|e| format!("console connection to PVE: {e}"))
    }
}

async fn send_down(
    tx: &mut futures::stream::SplitSink<WebSocket, Message>,
    bytes: Vec<u8>,
) -> Result<(), String> {
    tx.send(Message::Binary(bytes.into()))
        .await
        .map_err(|_| "the browser closed the console".to_string())
}

/// The RFB handshake between the browser (security "None") and PVE (VNC authentication with the ticket).
/// Leaves any bytes read past the handshake in the readers' buffers.
async fn handshake(
    down_tx: &mut futures::stream::SplitSink<WebSocket, Message>,
    down: &mut DownReader,
    up: &mut UpReader,
    ticket: &pve::Secret,
) -> Result<(), String> {
    let version = up.read_exact(12).await?;
    if !version.starts_with(b"RFB ") {
        return Err("PVE did not start an RFB session".into());
    }
    send_down(down_tx, version).await?;
    let client_version = down.read_exact(12).await?;
    if client_version != b"RFB 003.008\n" {
        return Err(format!(
            "the browser asked for {:?}; the relay speaks RFB 3.8",
            String::from_utf8_lossy(&client_version)
        ));
    }
    up.send(client_version).await?;
    let count = up.read_exact(1).await?[0] as usize;
    if count == 0 {
        let len = u32::from_be_bytes(up.read_exact(4).await?.try_into().unwrap_or([0; 4])) as usize;
        let reason = up.read_exact(len.min(4096)).await?;
        return Err(format!(
            "PVE refused the console: {}",
            String::from_utf8_lossy(&reason)
        ));
    }
    let types = up.read_exact(count).await?;
    let vnc_auth = if types.contains(&2) {
        true
    } else if types.contains(&1) {
        false
    } else {
        return Err(format!(
            "PVE offers no security type the relay supports: {types:?}"
        ));
    };
    // The browser only ever sees "None".
    send_down(down_tx, vec![1, 1]).await?;
    let chosen = down.read_exact(1).await?;
    if chosen != [1] {
        return Err("the browser did not choose security type None".into());
    }
    if vnc_auth {
        up.send(vec![2]).await?;
        let challenge: [u8; 16] = up
            .read_exact(16)
            .await?
            .try_into()
            .map_err(|_| "bad VNC challenge")?;
        up.send(vnc_auth_response(ticket.expose().as_bytes(), &challenge).to_vec())
            .await?;
    } else {
        up.send(vec![1]).await?;
    }
    let result = up.read_exact(4).await?;
    send_down(down_tx, result.clone()).await?;
    if result != [0, 0, 0, 0] {
        let len = u32::from_be_bytes(up.read_exact(4).await?.try_into().unwrap_or([0; 4])) as usize;
        let reason = up.read_exact(len.min(4096)).await?;
        return Err(format!(
            "PVE refused the console login: {}",
            String::from_utf8_lossy(&reason)
        ));
    }
    Ok(())
}

async fn close_down(tx: &mut futures::stream::SplitSink<WebSocket, Message>, code: u16, reason: &str) {
    let reason: String = reason.chars().take(100).collect();
    let _ = tx
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
    let _ = tx.flush().await;
}

async fn run(socket: WebSocket, c: Console) {
    let target = format!("{}/{}", c.cluster, c.vmid);
    let (mut down_tx, down_rx) = socket.split();
    let shutdown_rx = c.st.connect.shutdown_signal();
    let VncConsole { socket: ws, ticket } = tokio::select! {
        r = c.upstream.open() => match r {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(vm = %target, error = %e, "console relay could not reach PVE");
                close_down(&mut down_tx, close::CONNECT_FAILED, "the console of this VM cannot be opened").await;
                return;
            }
        },
        _ = super::shutdown_requested(shutdown_rx.clone()) => {
            close_down(&mut down_tx, close_code::AWAY, "server restarting").await;
            return;
        }
    };
    let mut down = DownReader {
        rx: down_rx,
        buf: Vec::new(),
    };
    let mut up = UpReader { ws, buf: Vec::new() };
    if let Err(e) = handshake(&mut down_tx, &mut down, &mut up, &ticket).await {
        tracing::warn!(vm = %target, error = %e, "console handshake failed");
        close_down(
            &mut down_tx,
            close::CONNECT_FAILED,
            "the console handshake failed",
        )
        .await;
        let _ = up.ws.close(None).await;
        return;
    }
    drop(ticket);
    tracing::info!(user = %c.user.name, vm = %target, "console opened");
    c.st.auth
        .audit(&c.user.name, c.client_addr, "vm.console", &target, "ok");
    // Bytes read past the handshake go first.
    if !down.buf.is_empty() {
        let b = std::mem::take(&mut down.buf);
        let _ = up.send(b).await;
    }
    if !up.buf.is_empty() {
        let b = std::mem::take(&mut up.buf);
        let _ = send_down(&mut down_tx, b).await;
    }
    let cfg = &c.st.connect.config;
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + cfg.ws_ping_interval,
        cfg.ws_ping_interval,
    );
    let mut recheck = tokio::time::interval(Duration::from_secs(5));
    let (mut up_tx, mut up_rx) = up.ws.split();
    let shutdown = super::shutdown_requested(shutdown_rx);
    tokio::pin!(shutdown);
    // The console ends within a second of the user's session ending (disabled, signed out, demoted).
    let revoked = c.st.auth.until_revoked(&c.user);
    tokio::pin!(revoked);
    let (code, reason) = loop {
        tokio::select! {
            m = down.rx.next() => match m {
                Some(Ok(Message::Binary(b))) => {
                    let mut failed = false;
                    for chunk in b.chunks(MAX_FRAME) {
                        if up_tx.send(UpMessage::Binary(axum::body::Bytes::copy_from_slice(chunk))).await.is_err() {
                            failed = true;
                            break;
                        }
                    }
                    if failed {
                        break (close::CONNECT_FAILED, "the console connection to PVE was lost".to_string());
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Text(_))) => break (close::PROTOCOL, "text frames are not part of RFB".to_string()),
                Some(Err(e)) if super::is_too_big(&e) => break (close_code::SIZE, "a message from the browser was larger than 64 KiB".to_string()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break (close_code::NORMAL, "closed by the browser".to_string()),
            },
            m = up_rx.next() => match m {
                Some(Ok(UpMessage::Binary(b))) => {
                    if down_tx.send(Message::Binary(b)).await.is_err() {
                        break (close_code::NORMAL, "browser gone".to_string());
                    }
                }
                Some(Ok(UpMessage::Ping(p))) => {
                    let _ = up_tx.send(UpMessage::Pong(p)).await;
                }
                Some(Ok(UpMessage::Pong(_) | UpMessage::Frame(_))) => {}
                Some(Ok(UpMessage::Text(_))) => break (close::PROTOCOL, "PVE sent a text frame".to_string()),
                Some(Ok(UpMessage::Close(_))) | None | Some(Err(_)) => break (close_code::NORMAL, "the console ended".to_string()),
            },
            _ = ping.tick() => {
                let _ = down_tx.send(Message::Ping(axum::body::Bytes::new())).await;
                let _ = up_tx.send(UpMessage::Ping(axum::body::Bytes::new())).await;
            }
            _ = recheck.tick() => {
                let allowed = decide(&c.user, Action::ConnectVm, &Target::Vm { cluster: &c.cluster, vmid: c.vmid }, &c.st.auth.index()) == Decision::Allow;
                let running = c.st.inventory.snapshot().guest(&c.cluster, c.vmid).is_some_and(|g| g.status == "running" || g.stale.is_some());
                if !allowed || !running {
                    break (close::VM_GONE, if allowed { "the VM stopped" } else { "you may no longer use this VM" }.to_string());
                }
            }
            _ = &mut shutdown => break (close_code::AWAY, "server restarting".to_string()),
            _ = &mut revoked => break (close::SIGNED_OUT, super::SIGNED_OUT_REASON.to_string()),
        }
    };
    tracing::info!(user = %c.user.name, vm = %target, code, reason = %reason, "console closed");
    close_down(&mut down_tx, code, &reason).await;
    let _ = up_tx.send(UpMessage::Close(None)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offered_protocols_are_split_and_trimmed() {
        let mut h = HeaderMap::new();
        h.append(header::SEC_WEBSOCKET_PROTOCOL, "base64, binary".parse().unwrap());
        h.append(header::SEC_WEBSOCKET_PROTOCOL, "x".parse().unwrap());
        assert_eq!(offered_protocols(&h), vec!["base64", "binary", "x"]);
    }
}
