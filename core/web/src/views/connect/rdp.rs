//! `GET /rdp/{vmid}.rdp`: the `.rdp` file of a VM, from the site's `rdp_settings(vm, user)`
//! (`scripts/rdp/default.rhai`), written by [`super::rdp_file`] (UTF-16 LE with BOM, CRLF, values checked, IPv6
//! bracketed, never a password). Only for users allowed to connect to the VM; 409 while the VM has no
//! address.

use std::net::IpAddr;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::rdp_file::{RdpTarget, RdpValue};
use super::{ConnectQuery, script_vm, user_json};
use crate::auth::{Action, Authn, Principal};
use crate::error::{AppError, AppResult};
use crate::state::AppState;

/// Default RDP port.
pub const RDP_PORT: u16 = 3389;

/// The settings when no script runtime is configured: the VM's address, port 3389 and the user's name as
/// the user name hint.
pub fn builtin_settings(vm: &Value, user: &Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("address".into(), vm.get("ip").cloned().unwrap_or(Value::Null));
    m.insert("port".into(), Value::from(RDP_PORT));
    m.insert(
        "username".into(),
        user.get("name").cloned().unwrap_or(Value::Null),
    );
    m
}

/// Turns the script's map into the target and the typed settings: `address` (default: the VM's address)
/// and `port` (default 3389) are taken out; integers and booleans become `i:` values, strings `s:`
/// values; `()` / null entries are left out. Anything else (arrays, maps, floats, out-of-range ports, an
/// address that is not an IP literal) is an error naming the key.
pub fn settings_from_map(
    map: &Map<String, Value>,
    vm_ip: Option<IpAddr>,
) -> Result<(RdpTarget, Vec<(String, RdpValue)>), String> {
    let address = match map.get("address") {
        None | Some(Value::Null) => vm_ip.ok_or("the VM has no address yet")?,
        Some(Value::String(s)) => s
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .map_err(|_| format!("rdp setting \"address\": {s:?} is not an IP address"))?,
        Some(other) => return Err(format!("rdp setting \"address\": expected a string, got {other}")),
    };
    let port = match map.get("port") {
        None | Some(Value::Null) => RDP_PORT,
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("rdp setting \"port\": {n} is not a port (1..65535)"))?,
        Some(other) => return Err(format!("rdp setting \"port\": expected a number, got {other}")),
    };
    let mut settings = Vec::new();
    for (k, v) in map {
        if k == "address" || k == "port" {
            continue;
        }
        let value = match v {
            Value::Null => continue,
            Value::Bool(b) => RdpValue::Int(i64::from(*b)),
            Value::Number(n) => RdpValue::Int(
                n.as_i64()
                    .ok_or_else(|| format!("rdp setting {k:?}: {n} is not an integer"))?,
            ),
            Value::String(s) => RdpValue::Str(s.clone()),
            other => {
                return Err(format!(
                    "rdp setting {k:?}: expected a string or an integer, got {other}"
                ));
            }
        };
        settings.push((k.clone(), value));
    }
    Ok((RdpTarget { address, port }, settings))
}

/// The handler (see the module docs). Answers `application/x-rdp` with
/// `Content-Disposition: attachment; filename="<safe name>.rdp"`.
pub async fn rdp_file(
    State(st): State<AppState>,
    p: Principal,
    authn: Authn,
    Path(file): Path<String>,
    Query(q): Query<ConnectQuery>,
) -> AppResult<Response> {
    let vmid: u32 = file
        .strip_suffix(".rdp")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| AppError::NotFound(format!("no such file {file:?}; use /rdp/<vmid>.rdp")))?;
    let cluster = st.authorize_vm(&p, vmid, q.cluster.as_deref(), Action::ConnectVm)?;
    let g = st.guest(&cluster, vmid)?;
    let snap = st.inventory.snapshot();
    let vm_ip = g.ip.as_ref().and_then(|ip| ip.address.parse::<IpAddr>().ok());
    if g.status != "running" || vm_ip.is_none() {
        return Err(AppError::Conflict(if g.status == "running" {
            "the VM's address is not known yet; try again in a moment".into()
        } else {
            "the VM is not running; start it first".into()
        }));
    }
    let facts = st.inventory.snapshot().facts(&cluster, vmid);
    let vm = script_vm(&g, facts.ostype.as_deref());
    let user = user_json(&p);
    let map = match &st.connect.scripts {
        Some(s) => s
            .runtime
            .rdp_settings(
                &s.set.current_set(),
                &st.connect.config.rdp_script,
                vm.clone(),
                user.clone(),
            )
            .await
            .map_err(AppError::from)?,
        None => builtin_settings(&vm, &user),
    };
    let (target, settings) = settings_from_map(&map, vm_ip).map_err(AppError::Internal)?;
    // The address in the file, from the inventory or the site's script, follows the relay rules for
    // what can never be a guest: loopback, link-local (unless in guest_networks), special addresses and
    // the portal's own. Routed and public addresses stay allowed: the student's own client dials them.
    let rules = st.connect.dial_rules(&cluster, &snap);
    if let Err(r) = sync::dial_static(target.address, &rules, true)
        && matches!(r.code, "special" | "loopback" | "link_local" | "own_address")
    {
        st.auth.audit(
            &p.name,
            authn.addr,
            "vm.rdp",
            &format!("{cluster}/{vmid} {}", target.address),
            &format!("refused: {}", r.code),
        );
        return Err(AppError::Conflict(format!(
            "no RDP file: {r}; the RDP script or the VM's address must give a guest address"
        )));
    }
    let bytes = super::rdp_file::render(&target, &settings).map_err(|e| AppError::Internal(e.to_string()))?;
    let name = super::rdp_file::file_name(&g.name, vmid);
    let mut resp = (StatusCode::OK, Body::from(bytes)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-rdp"),
    );
    // `file_name` keeps only [A-Za-z0-9._-]: safe inside the quotes.
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    st.auth
        .audit(&p.name, authn.addr, "vm.rdp", &format!("{cluster}/{vmid}"), "ok");
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn address_and_port_are_taken_out_and_values_typed() {
        let (t, s) = settings_from_map(
            &map(json!({"address": "2001:db8::7", "port": 3390, "username": "jörg", "redirectclipboard": true, "title": null})),
            None,
        )
        .unwrap();
        assert_eq!(t.address.to_string(), "2001:db8::7");
        assert_eq!(t.port, 3390);
        assert!(s.contains(&("username".into(), RdpValue::Str("jörg".into()))));
        assert!(s.contains(&("redirectclipboard".into(), RdpValue::Int(1))));
        assert!(!s.iter().any(|(k, _)| k == "title"));
    }

    #[test]
    fn bad_values_name_the_key() {
        let ip = Some("198.51.100.7".parse().unwrap());
        for (v, key) in [
            (json!({"port": 70000}), "port"),
            (json!({"address": "vm.example.org"}), "address"),
            (json!({"desktopwidth": 1.5}), "desktopwidth"),
            (json!({"x": [1]}), "x"),
        ] {
            let e = settings_from_map(&map(v), ip).unwrap_err();
            assert!(e.contains(key), "{e}");
        }
        assert_eq!(settings_from_map(&map(json!({})), ip).unwrap().0.port, 3389);
    }
}
