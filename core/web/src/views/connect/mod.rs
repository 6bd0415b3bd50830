//! Connecting to a VM (DESIGN §7, issue 6): the `.rdp` download, the SSH terminal and the noVNC console
//! in the browser, the "Connect" summary the portal renders, the verification of guest addresses, and the
//! pinned npm assets (xterm.js, noVNC) served from disk.
//!
//! Routes (all registered in [`crate::routes`], all asking [`crate::auth::decide`] with
//! [`crate::auth::Action::ConnectVm`] for the VM):
//! - `GET /api/vm/{vmid}/connect` — what fits the VM (RDP for Windows, SSH for Linux, console always), the
//!   copyable address, its discovery tier and its verification with age ([`api::connect_info`]);
//! - `GET /rdp/{vmid}.rdp` — the `.rdp` file from `scripts/rdp/default.rhai` ([`rdp::rdp_file`]);
//! - `GET /ssh/{vmid}` + `GET /ws/terminal/{vmid}` — the terminal page and its WebSocket ([`ssh`]);
//! - `GET /console/{vmid}` + `GET /ws/console/{vmid}` — the noVNC page and the VNC relay ([`console`]);
//! - `GET /static/vendor/{*path}` — the vendored npm files ([`vendor`]).
//!
//! What this module must never do: connect anywhere but the VM's own verified address (SSH) or the VM's
//! cluster (console); take a target address or port from the request; store or log a guest password; let
//! a PVE ticket or API token reach the browser.

pub mod api;
pub mod console;
pub mod hostkeys;
pub mod net;
pub mod rdp;
pub mod rdp_file;
pub mod ssh;
pub mod vendor;

use axum::http::HeaderMap;

use crate::auth::{Principal, Via};
use crate::error::AppError;
use crate::state::AppState;

pub use net::{IpCheck, MacCheck, VerifyConfig, VerifyScope, verify};
pub use sync::GuestFacts;

/// WebSocket close codes of the terminal and console relays (4000–4999 is the application range of
/// RFC 6455 §7.4.2). The reason text of every close says what happened in words a student understands.
pub mod close {
    /// The user typed nothing for [`super::ConnectConfig::idle_timeout`].
    pub const IDLE: u16 = 4000;
    /// The guest refused the user name / password.
    pub const AUTH_FAILED: u16 = 4001;
    /// The guest's host key changed and the user did not accept the new one.
    pub const HOST_KEY: u16 = 4002;
    /// The user has too many terminals and consoles open.
    pub const TOO_MANY: u16 = 4003;
    /// The VM has no (verified) address, or its address now answers with another machine's MAC.
    pub const NO_ADDRESS: u16 = 4004;
    /// The SSH (or VNC) connection failed: refused, timed out, no common algorithm (an old guest offering
    /// only legacy ones).
    pub const CONNECT_FAILED: u16 = 4005;
    /// Nobody typed the credentials in time.
    pub const LOGIN_TIMEOUT: u16 = 4006;
    /// The VM stopped or was taken away from the user while connected.
    pub const VM_GONE: u16 = 4007;
    /// The first message was not a `hello` / the protocol was broken by the client.
    pub const PROTOCOL: u16 = 4008;
    /// The user's session ended while connected: signed out, disabled, role changed, password changed.
    pub const SIGNED_OUT: u16 = 4009;
}

/// Largest WebSocket message and frame a browser may send to a relay (64 KiB): keystrokes and RFB
/// messages are far smaller; a larger one closes the relay with 1009 ("message too big").
pub const MAX_WS_MESSAGE: usize = 64 * 1024;

/// Input a terminal keeps while nothing consumes it yet (before the login prompt, during the connect):
/// more closes it with 1009.
pub const MAX_PENDING_INPUT: usize = 64 * 1024;

/// `ws` with the relays' size limits ([`MAX_WS_MESSAGE`]) and a small write buffer.
pub fn limited(ws: axum::extract::ws::WebSocketUpgrade) -> axum::extract::ws::WebSocketUpgrade {
    ws.max_message_size(MAX_WS_MESSAGE)
        .max_frame_size(MAX_WS_MESSAGE)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * MAX_WS_MESSAGE)
}

/// True when a WebSocket read failed because the browser sent more than [`MAX_WS_MESSAGE`].
pub fn is_too_big(e: &axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error;
    matches!(
        std::error::Error::source(e).and_then(|s| s.downcast_ref::<Error>()),
        Some(Error::Capacity(_))
    )
}

/// Close reason of [`close::SIGNED_OUT`].
pub const SIGNED_OUT_REASON: &str = "your session ended (signed out, disabled or changed); sign in again";

pub use crate::relays::{
    ConnectConfig, ConnectState, ScriptSetSource, Scripts, SessionGuard, TerminalGuard, default_vendor_dir,
    shipped_dir, shipped_dir_from, shutdown_requested,
};

pub use sync::address::{ClusterDial, own_addresses};

/// `?cluster=` and `?token=` of the connect routes.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ConnectQuery {
    /// Cluster of the VMID (default: the caller's active cluster).
    pub cluster: Option<String>,
    /// The one-time connect token (WebSocket upgrades only).
    pub token: Option<String>,
}

/// The checks every WebSocket upgrade passes before anything is connected, in this order: the VM
/// is the caller's (404 otherwise, as for a VM that does not exist); a cookie session's `Origin` equals
/// the portal's own exactly (a bearer-token client may omit it); the one-time connect token was issued to
/// this user for this VM and `purpose` within the last 30 s. Returns the cluster id.
pub fn check_upgrade(
    st: &AppState,
    p: &Principal,
    vmid: u32,
    q: &ConnectQuery,
    headers: &HeaderMap,
    purpose: &str,
) -> Result<String, AppError> {
    let cluster = st.authorize_vm(p, vmid, q.cluster.as_deref(), crate::auth::Action::ConnectVm)?;
    match p.via {
        Via::Session { .. } => st.auth.check_ws_origin(headers)?,
        Via::Token { .. } => {
            if headers.contains_key(axum::http::header::ORIGIN) {
                st.auth.check_ws_origin(headers)?;
            }
        }
    }
    let token = q.token.as_deref().unwrap_or_default();
    let grant = if token.is_empty() {
        None
    } else {
        st.auth.take_connect_token(token)
    };
    match grant {
        Some(g) if g.user == p.name && g.cluster == cluster && g.vmid == vmid && g.purpose == purpose => {}
        _ => {
            return Err(AppError::Forbidden(
                "a fresh connect token is needed (POST /api/vm/{vmid}/connect-token)".into(),
            ));
        }
    }
    if st.connect.shutting_down() {
        return Err(AppError::Unavailable("the portal is restarting".into()));
    }
    Ok(cluster)
}

/// The VM tag value after `prefix` as a port (`ssh-port-2222` → 2222), if any.
pub fn tag_port(tags: &[String], prefix: &str) -> Option<u16> {
    tags.iter()
        .filter_map(|t| t.strip_prefix(prefix))
        .find_map(|p| p.parse::<u16>().ok().filter(|p| *p > 0))
}

/// The user map scripts receive: `{name, display_name, role}`.
pub fn user_json(p: &Principal) -> serde_json::Value {
    serde_json::json!({
        "name": p.name,
        "display_name": p.display_name,
        "role": serde_json::to_value(p.role).unwrap_or(serde_json::Value::Null),
    })
}

/// The `vm` map scripts receive (IP tiers, RDP): the inventory record (`cluster`, `vmid`, `node`, `name`,
/// `type`, `status`, `tags`, `mac`, …) with the address flattened — `ip` (string or `()`), `ip_all`,
/// `ip_source`, `ip_seen_at` — and `macs` as `[#{index, mac}]` ordered by `netN`; plus `ostype` when known.
pub fn script_vm(g: &store::GuestRecord, ostype: Option<&str>) -> serde_json::Value {
    use serde_json::{Value, json};
    let mut v = serde_json::to_value(g).unwrap_or_else(|_| json!({}));
    if let Value::Object(m) = &mut v {
        m.insert("cluster".into(), json!(g.cluster));
        m.insert("vmid".into(), json!(g.vmid));
        match &g.ip {
            Some(ip) => {
                m.insert("ip".into(), json!(ip.address));
                m.insert("ip_all".into(), json!(ip.all));
                m.insert("ip_source".into(), json!(ip.source));
                m.insert("ip_seen_at".into(), json!(ip.seen_at));
            }
            None => {
                m.insert("ip".into(), Value::Null);
                m.insert("ip_all".into(), json!([]));
            }
        }
        let mut macs = g.macs.clone();
        macs.sort_by_key(|(i, _)| *i);
        let macs: Vec<Value> = macs
            .iter()
            .map(|(i, mac)| json!({"index": i, "mac": mac}))
            .collect();
        m.insert("macs".into(), Value::Array(macs));
        if let Some(os) = ostype {
            m.insert("ostype".into(), json!(os));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_slots_are_limited_per_user_and_given_back() {
        let st = ConnectState::new(
            ConnectConfig {
                max_sessions_per_user: 2,
                ..Default::default()
            },
            None,
        );
        let a = st.reserve("stud").unwrap();
        let _b = st.reserve("stud").unwrap();
        assert!(st.reserve("stud").is_none(), "third session refused");
        assert!(st.reserve("other").is_some(), "other users are not affected");
        drop(a);
        assert!(st.reserve("stud").is_some(), "a closed session frees its slot");
    }

    #[test]
    fn a_release_binary_never_falls_back_to_the_build_checkout() {
        let build = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(build.path().join("assets/vendor")).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let exe = elsewhere.path().join("bin/proxlab");
        // Debug: the build checkout is used; release (no build checkout given): nothing.
        assert_eq!(
            shipped_dir_from("assets/vendor", Some(&exe), Some(build.path().to_path_buf())),
            Some(build.path().join("assets/vendor"))
        );
        assert_eq!(shipped_dir_from("assets/vendor", Some(&exe), None), None);
        // An installed package: <prefix>/share/proxlab/vendor next to <prefix>/bin/proxlab.
        std::fs::create_dir_all(elsewhere.path().join("share/proxlab/vendor")).unwrap();
        assert_eq!(
            shipped_dir_from("assets/vendor", Some(&exe), None),
            Some(elsewhere.path().join("share/proxlab/vendor"))
        );
        // A binary inside a checkout uses that checkout.
        let checkout = tempfile::tempdir().unwrap();
        std::fs::write(checkout.path().join("Cargo.toml"), "").unwrap();
        std::fs::create_dir_all(checkout.path().join("plugins")).unwrap();
        let exe = checkout.path().join("target/release/proxlab");
        assert_eq!(
            shipped_dir_from("plugins", Some(&exe), None),
            Some(checkout.path().join("plugins"))
        );
    }

    #[test]
    fn ports_come_from_tags_only_when_valid() {
        let tags = vec!["lab".to_string(), "ssh-port-2222".to_string()];
        assert_eq!(tag_port(&tags, "ssh-port-"), Some(2222));
        assert_eq!(tag_port(&["ssh-port-0".to_string()], "ssh-port-"), None);
        assert_eq!(tag_port(&["ssh-port-x".to_string()], "ssh-port-"), None);
    }
}
