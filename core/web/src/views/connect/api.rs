//! `GET /api/vm/{vmid}/connect`: what the portal's "Connect" offers for one VM.
//!
//! Answers at once from the inventory (the guest record and what discovery learned about it); a missing OS type (one config read) or a
//! missing/old address verification is fetched in the background and shows on the next call (the portal
//! polls, or refreshes on the VM's SSE event). Shape (documented for page authors in `/tmp/connect_api.md`
//! and `themes/README.md`):
//!
//! ```json
//! {"cluster":"lab","vmid":1201,"name":"winadm-s01","state":"running","os":"windows","ostype":"win11",
//!  "address":{"state":"found","ip":"198.51.100.7","all":["198.51.100.7"],"source":"20-guest-agent",
//!             "seen_at":1700000000,"age_secs":12,
//!             "verification":{"state":"verified","method":"ping","mac":"match","checked_at":…,"age_secs":3}},
//!  "methods":[{"kind":"rdp","label":"Remote Desktop","url":"/rdp/1201.rdp","available":true,
//!              "recommended":true,"port":3389,"reason":null,"copy":"198.51.100.7"}, …]}
//! ```
//! `address.state`: `found`, `pending` (running, no address yet), `not_running`. `verification.state`:
//! `verified`, `reachable`, `unreachable`, `mismatch`, `unchecked` (not probed: routed or documentation
//! address), `checking`. Methods: `rdp` (Windows and unknown systems), `ssh` (Linux and containers),
//! `console` (always offered). Exactly one available method is `recommended`: RDP for Windows and SSH for Linux once the
//! address is known, else the console while the VM runs (none when it is stopped).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};

use axum::Json;
use axum::extract::{Path, Query, State};
use serde_json::{Value, json};

use super::{ConnectQuery, tag_port};
use crate::auth::{Action, Principal};
use crate::error::AppResult;
use crate::state::AppState;

/// OS family of a PVE `ostype`: `windows` (`win*`, `wxp`, `w2k*`, `wvista`), `linux` (`l24`, `l26`, and
/// every container), `other` (`solaris`, `other`), `unknown` (not read yet).
pub fn os_family(kind: &str, ostype: Option<&str>) -> &'static str {
    if kind == "lxc" {
        return "linux";
    }
    match ostype {
        Some(t) if t.starts_with("win") || (t.starts_with('w') && t.len() <= 6) => "windows",
        Some(t) if t.starts_with('l') => "linux",
        Some(_) => "other",
        None => "unknown",
    }
}

/// Background jobs running, by `(cluster, vmid, what)`.
type Jobs = Mutex<HashSet<(String, u32, &'static str)>>;

fn in_flight() -> &'static Jobs {
    static SET: OnceLock<Jobs> = OnceLock::new();
    SET.get_or_init(Mutex::default)
}

/// Runs `job` in the background unless the same `(cluster, vmid, what)` is already running.
fn once_in_background<F>(cluster: &str, vmid: u32, what: &'static str, job: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let key = (cluster.to_string(), vmid, what);
    if !in_flight()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key.clone())
    {
        return;
    }
    tokio::spawn(async move {
        job.await;
        in_flight().lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    });
}

/// The handler (see the module docs). 404 for a VM the caller may not connect to.
pub async fn connect_info(
    State(st): State<AppState>,
    p: Principal,
    Path(vmid): Path<u32>,
    Query(q): Query<ConnectQuery>,
) -> AppResult<Json<Value>> {
    let cluster = st.authorize_vm(&p, vmid, q.cluster.as_deref(), Action::ConnectVm)?;
    let g = st.guest(&cluster, vmid)?;
    let cfg = &st.connect.config;
    let facts = st.inventory.snapshot().facts(&cluster, vmid);
    let now = sync::now_secs();

    // OS type: one config read per VM, in the background.
    if facts.ostype.is_none()
        && g.kind != "lxc"
        && let Some(client) = st.syncer.client(&cluster).cloned()
    {
        let inventory = st.inventory.clone();
        let (c, node) = (cluster.clone(), g.node.clone());
        once_in_background(&cluster, vmid, "ostype", async move {
            match client.guest_config(&node, pve::GuestKind::Qemu, vmid).await {
                Ok(conf) => {
                    let os = conf.ostype().unwrap_or_else(|| "other".into());
                    inventory.update_facts(&c, vmid, |f| f.ostype = Some(os)).await;
                }
                Err(e) => tracing::debug!(vmid, error = %e, "ostype: config read failed"),
            }
        });
    }
    let os = os_family(&g.kind, facts.ostype.as_deref());

    let running = g.status == "running";
    let ip: Option<IpAddr> =
        g.ip.as_ref()
            .and_then(|i| i.address.parse().ok())
            .filter(|_| running);
    let verification = match (ip, &facts.check) {
        (Some(ip), Some(c)) if c.address == ip.to_string() => {
            let age = now.saturating_sub(c.checked_at);
            if age > cfg.verify.max_age.as_secs() {
                spawn_verify(&st, &cluster, vmid, ip, &g);
            }
            json!({
                "state": c.state(), "probed": c.probed, "method": c.method, "mac": c.mac,
                // The MAC another machine answers with is for admins only: it tells a student whose
                // address they chose.
                "seen_mac": if p.role == store::Role::Admin { json!(c.seen_mac) } else { Value::Null },
                "checked_at": c.checked_at, "age_secs": age,
            })
        }
        (Some(ip), _) => {
            spawn_verify(&st, &cluster, vmid, ip, &g);
            json!({"state": "checking"})
        }
        (None, _) => Value::Null,
    };
    let address = match (&g.ip, ip) {
        (Some(rec), Some(_)) => json!({
            "state": "found", "ip": rec.address, "all": rec.all, "source": rec.source, "seen_at": rec.seen_at,
            "age_secs": now.saturating_sub(rec.seen_at), "verification": verification,
        }),
        _ => json!({
            "state": if running { "pending" } else { "not_running" }, "ip": null, "all": [], "source": null,
            "verification": null,
        }),
    };
    let mismatch = verification.get("state").and_then(Value::as_str) == Some("mismatch");
    let q = if q.cluster.is_some() {
        format!(
            "?cluster={}",
            url::form_urlencoded::byte_serialize(cluster.as_bytes()).collect::<String>()
        )
    } else {
        String::new()
    };
    let why_not = if !running {
        Some("the VM is not running")
    } else if ip.is_none() {
        Some("waiting for the VM's address")
    } else if mismatch {
        Some("the address answers with another machine's MAC")
    } else {
        None
    };
    let rdp_port = tag_port(&g.tags, "rdp-port-").unwrap_or(super::rdp::RDP_PORT);
    let ssh_port = tag_port(&g.tags, "ssh-port-").unwrap_or(cfg.ssh_port);
    let host = ip.map(|ip| match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    });
    let windows = os == "windows";
    // One method is recommended: RDP for Windows, SSH for Linux when reachable, else the console.
    let rdp_recommended = windows && why_not.is_none();
    let ssh_recommended = os == "linux" && why_not.is_none();
    let console_recommended = running && !rdp_recommended && !ssh_recommended;
    let mut methods = Vec::new();
    if g.kind != "lxc" && os != "linux" {
        methods.push(json!({
            "kind": "rdp", "label": "Remote Desktop", "url": format!("/rdp/{vmid}.rdp{q}"),
            "available": why_not.is_none(), "recommended": rdp_recommended, "port": rdp_port, "reason": why_not,
            "copy": host.as_ref().map(|h| if rdp_port == 3389 { h.clone() } else { format!("{h}:{rdp_port}") }),
        }));
    }
    if !windows {
        methods.push(json!({
            "kind": "ssh", "label": "SSH terminal", "url": format!("/ssh/{vmid}{q}"),
            "available": why_not.is_none(), "recommended": ssh_recommended, "port": ssh_port, "reason": why_not,
            "copy": ip.map(|ip| if ssh_port == 22 { format!("ssh {ip}") } else { format!("ssh -p {ssh_port} {ip}") }),
        }));
    }
    methods.push(json!({
        "kind": "console", "label": "Console", "url": format!("/console/{vmid}{q}"),
        "available": running, "recommended": console_recommended, "port": null,
        "reason": if running { Value::Null } else { json!("the VM is not running") }, "copy": null,
    }));
    Ok(Json(json!({
        "cluster": cluster, "vmid": vmid, "name": g.name, "state": g.state, "type": g.kind,
        "os": os, "ostype": facts.ostype, "address": address, "methods": methods,
    })))
}

fn spawn_verify(st: &AppState, cluster: &str, vmid: u32, ip: IpAddr, g: &store::GuestRecord) {
    let inventory = st.inventory.clone();
    let cfg = st.connect.config.verify.clone();
    let mut macs: Vec<String> = g.macs.iter().map(|(_, m)| m.clone()).collect();
    macs.extend(g.mac.clone());
    let c = cluster.to_string();
    let rules = st.connect.dial_rules(cluster, &st.inventory.snapshot());
    once_in_background(cluster, vmid, "verify", async move {
        // An address no relay may dial is not probed either (a student chooses what their guest reports).
        let check = super::net::verify_dialable(ip, &macs, &cfg, &rules).await;
        inventory.update_facts(&c, vmid, |f| f.check = Some(check)).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_families_follow_pve_ostype() {
        assert_eq!(os_family("qemu", Some("win11")), "windows");
        assert_eq!(os_family("qemu", Some("wxp")), "windows");
        assert_eq!(os_family("qemu", Some("w2k8")), "windows");
        assert_eq!(os_family("qemu", Some("l26")), "linux");
        assert_eq!(os_family("qemu", Some("other")), "other");
        assert_eq!(os_family("qemu", Some("solaris")), "other");
        assert_eq!(os_family("qemu", None), "unknown");
        assert_eq!(os_family("lxc", None), "linux");
    }
}
