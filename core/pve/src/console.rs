//! A guest's VNC console, PVE's side: `POST /nodes/{node}/{qemu|lxc}/{vmid}/vncproxy` with
//! `websocket=1` for a one-time VNC ticket and port, then `GET …/vncwebsocket?port=…&vncticket=…`
//! opened with this cluster's credentials over its TLS trust (CA file or pinned certificate), with the
//! WebSocket subprotocol `binary` — PVE's answer must echo it. The ticket is the VNC password
//! ([`vnc_auth_response`]) and must never leave the portal.

use std::time::Duration;

use des::cipher::{BlockCipherEncrypt, KeyInit};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};

use crate::{PveClient, PveError, Secret};

/// The subprotocol of PVE's `vncwebsocket`.
pub const VNC_SUBPROTOCOL: &str = "binary";

/// How long the TCP connection to the cluster may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A byte stream (TCP or TLS over TCP) under the console WebSocket.
pub trait VncIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> VncIo for T {}

/// The connected `vncwebsocket` (binary frames carry RFB).
pub type VncSocket = WebSocketStream<Box<dyn VncIo>>;

/// A console opened on PVE: the socket, positioned before the RFB version, and the ticket for the VNC
/// authentication.
pub struct VncConsole {
    /// The WebSocket to PVE.
    pub socket: VncSocket,
    /// The one-time VNC ticket (the VNC password).
    pub ticket: Secret,
}

impl std::fmt::Debug for VncConsole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VncConsole")
            .field("ticket", &self.ticket)
            .finish_non_exhaustive()
    }
}

/// Which console a guest has: QEMU VMs and LXC containers have their own endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleKind {
    /// `/nodes/{node}/qemu/{vmid}/…`.
    Qemu,
    /// `/nodes/{node}/lxc/{vmid}/…`.
    Lxc,
}

impl ConsoleKind {
    /// `Lxc` for PVE's resource type `lxc`, else `Qemu`.
    pub fn of_type(kind: &str) -> ConsoleKind {
        if kind == "lxc" {
            ConsoleKind::Lxc
        } else {
            ConsoleKind::Qemu
        }
    }

    fn path(self) -> &'static str {
        match self {
            ConsoleKind::Qemu => "qemu",
            ConsoleKind::Lxc => "lxc",
        }
    }
}

/// Where a console is opened: a guest on a node of one cluster, with that cluster's client. Made
/// before a browser's WebSocket upgrade, opened after it.
#[derive(Clone)]
pub struct VncTarget {
    client: PveClient,
    node: String,
    kind: ConsoleKind,
    vmid: u32,
}

impl std::fmt::Debug for VncTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VncTarget")
            .field("node", &self.node)
            .field("kind", &self.kind)
            .field("vmid", &self.vmid)
            .finish_non_exhaustive()
    }
}

impl VncTarget {
    /// Guest `vmid` of `kind` on `node`, reached with `client` (the guest's own cluster).
    pub fn new(client: &PveClient, node: &str, kind: ConsoleKind, vmid: u32) -> VncTarget {
        VncTarget {
            client: client.clone(),
            node: node.to_string(),
            kind,
            vmid,
        }
    }

    /// Opens the console: see [`PveClient::open_vnc_console`].
    pub async fn open(&self) -> Result<VncConsole, PveError> {
        self.client
            .open_vnc_console(&self.node, self.kind, self.vmid)
            .await
    }
}

impl PveClient {
    /// Opens guest `vmid`'s VNC console on `node`: a ticket from `vncproxy`, then the `vncwebsocket`
    /// with subprotocol `binary` over this cluster's TLS trust (see the module docs).
    ///
    /// Errors: the API's own errors for `vncproxy`; [`PveError::MalformedResponse`] when it gives no
    /// ticket or port or the WebSocket answer does not echo `binary`; [`PveError::Timeout`] /
    /// [`PveError::Connect`] for the TCP connection and the WebSocket handshake; [`PveError::Tls`].
    pub async fn open_vnc_console(
        &self,
        node: &str,
        kind: ConsoleKind,
        vmid: u32,
    ) -> Result<VncConsole, PveError> {
        let base = format!("/nodes/{node}/{}/{vmid}", kind.path());
        let answer = self
            .post_value(&format!("{base}/vncproxy"), &[("websocket", "1")])
            .await?;
        let ticket = Secret::new(
            answer
                .get("ticket")
                .and_then(|t| t.as_str())
                .ok_or_else(|| PveError::MalformedResponse("vncproxy: no ticket".into()))?,
        );
        let port = match answer.get("port") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => return Err(PveError::MalformedResponse("vncproxy: no port".into())),
        };
        let target = self
            .websocket_target(
                &format!("{base}/vncwebsocket"),
                &[("port", port.as_str()), ("vncticket", ticket.expose())],
            )
            .await?;
        let mut req = target
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| PveError::Config(format!("vncwebsocket request: {e}")))?;
        let h = req.headers_mut();
        h.insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(VNC_SUBPROTOCOL),
        );
        for (name, value) in &target.headers {
            let mut v = HeaderValue::from_str(value.expose())
                .map_err(|_| PveError::Config("authentication header is not valid".into()))?;
            v.set_sensitive(true);
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| PveError::Config("authentication header name is not valid".into()))?;
            h.insert(name, v);
        }
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((target.host.as_str(), target.port)),
        )
        .await
        .map_err(|_| PveError::Timeout)?
        .map_err(|e| PveError::Connect(format!("console: {e}")))?;
        let io: Box<dyn VncIo> = match &target.tls {
            Some(cfg) => {
                let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                    .map_err(|e| PveError::Config(format!("server name {}: {e}", target.host)))?;
                let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| PveError::Tls(format!("console: {e}")))?;
                Box::new(tls)
            }
            None => Box::new(tcp),
        };
        let (socket, resp) = tokio_tungstenite::client_async(req, io)
            .await
            .map_err(|e| PveError::Connect(format!("vncwebsocket handshake: {e}")))?;
        let chosen = resp
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok());
        if chosen != Some(VNC_SUBPROTOCOL) {
            return Err(PveError::MalformedResponse(format!(
                "PVE answered the console with subprotocol {chosen:?}, not `{VNC_SUBPROTOCOL}`"
            )));
        }
        Ok(VncConsole { socket, ticket })
    }
}

/// The VNC authentication response (RFB 3.8 §7.2.2): the 16-byte challenge DES-encrypted (ECB) with
/// the password's first 8 bytes (zero-padded), each byte's bits reversed — as every VNC server,
/// PVE's included, expects.
pub fn vnc_auth_response(password: &[u8], challenge: &[u8; 16]) -> [u8; 16] {
    let mut key = [0u8; 8];
    for (k, b) in key.iter_mut().zip(password.iter()) {
        *k = b.reverse_bits();
    }
    let cipher = des::Des::new(&key.into());
    let mut out = [0u8; 16];
    for (i, half) in challenge.chunks_exact(8).enumerate() {
        let mut block = des::cipher::Block::<des::Des>::default();
        block.copy_from_slice(half);
        cipher.encrypt_block(&mut block);
        out[i * 8..i * 8 + 8].copy_from_slice(&block);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vnc_auth_matches_the_known_answer() {
        // Password "password": DES key 0e86ceceeef64e26 (bits reversed). Known answers computed with
        // Python `cryptography` (the same construction the fake PVE's VNC server checks).
        let hex = |b: [u8; 16]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(
            hex(vnc_auth_response(b"password", &[0u8; 16])),
            "ff97502e9422f089ff97502e9422f089"
        );
        let counting: [u8; 16] = std::array::from_fn(|i| i as u8);
        assert_eq!(
            hex(vnc_auth_response(b"password", &counting)),
            "b866924125c8eebb9debc1db61c538e2"
        );
        // Only the first 8 bytes of the password matter.
        assert_eq!(
            vnc_auth_response(b"passwordXYZ", &counting),
            vnc_auth_response(b"password", &counting)
        );
    }

    #[test]
    fn lxc_has_its_own_console_path() {
        assert_eq!(ConsoleKind::of_type("lxc"), ConsoleKind::Lxc);
        assert_eq!(ConsoleKind::of_type("qemu"), ConsoleKind::Qemu);
    }
}
