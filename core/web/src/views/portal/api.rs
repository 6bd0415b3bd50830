//! JSON API of DESIGN §7b (sync, inventory, power) and the operational routes (`/health`, `/metrics`,
//! `/api/events`).

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio_stream::wrappers::BroadcastStream;

use crate::auth::{Action, Authn, Principal};
use crate::error::{AppError, AppResult};
use crate::state::AppState;

pub use crate::error::op_error_response;
pub use crate::render::sse_response;
pub use crate::state::ClusterQuery;

/// `GET /health` (public): `{status: "ok"|"degraded", version, uptime_secs}` for anyone; signed-in users
/// also get `clusters: [{id, name, status, stale_since}]`, admins the full detail (`reason`, `last_ok_at`,
/// `guests`, `offline_nodes`, `quorate`, `warnings`). Always 200 while the server runs; `status` is
/// `degraded` when any cluster is stale.
pub async fn health(State(st): State<AppState>, authn: Authn) -> Json<Value> {
    let snap = st.inventory.snapshot();
    let degraded = snap.clusters.values().any(|c| c.status != "ok");
    let mut out = json!({
        "status": if degraded { "degraded" } else { "ok" },
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": st.started.elapsed().as_secs(),
    });
    if let Some(p) = &authn.principal {
        let admin = p.is_admin();
        let clusters: Vec<Value> = snap
            .clusters
            .values()
            .map(|c| {
                if admin {
                    json!({
                        "id": c.id, "name": c.name, "status": c.status, "reason": c.reason,
                        "stale_since": c.stale_since, "last_ok_at": c.last_ok_at, "guests": c.guests,
                        "offline_nodes": c.offline_nodes, "quorate": c.quorate, "warnings": c.warnings,
                    })
                } else {
                    json!({"id": c.id, "name": c.name, "status": c.status, "stale_since": c.stale_since})
                }
            })
            .collect();
        out["clusters"] = json!(clusters);
    }
    Json(out)
}

/// `GET /api/sync/status`: every cluster's full [`sync::ClusterState`].
pub async fn sync_status(State(st): State<AppState>) -> Json<Value> {
    let snap = st.inventory.snapshot();
    let clusters: Vec<&sync::ClusterState> = snap.clusters.values().collect();
    Json(json!({ "clusters": clusters, "inventory_version": snap.version }))
}

/// `POST /api/sync/trigger`: wakes every cluster's sync loop now; 202.
pub async fn sync_trigger(State(st): State<AppState>) -> impl IntoResponse {
    st.syncer.trigger();
    (
        StatusCode::ACCEPTED,
        Json(json!({"triggered": st.syncer.cluster_ids()})),
    )
}

/// `GET /api/sync/inventory/summary`: per cluster and in total: guests, running, with_ip, templates, stale.
pub async fn inventory_summary(State(st): State<AppState>) -> Json<Value> {
    let snap = st.inventory.snapshot();
    let mut total = json!({"guests": 0, "running": 0, "with_ip": 0, "templates": 0, "stale_clusters": 0});
    let mut per = Vec::new();
    for c in snap.clusters.values() {
        for (k, v) in [
            ("guests", c.guests),
            ("running", c.running),
            ("with_ip", c.with_ip),
            ("templates", c.templates),
        ] {
            total[k] = json!(total[k].as_u64().unwrap_or(0) + v as u64);
        }
        if c.is_stale() {
            total["stale_clusters"] = json!(total["stale_clusters"].as_u64().unwrap_or(0) + 1);
        }
        per.push(json!({
            "cluster": c.id, "name": c.name, "status": c.status, "guests": c.guests, "running": c.running,
            "with_ip": c.with_ip, "templates": c.templates, "last_ok_at": c.last_ok_at,
        }));
    }
    Json(json!({"total": total, "clusters": per}))
}

/// `GET /api/vms[?cluster=ID|all]`: the guests the caller may see, from memory, as a JSON array of
/// inventory records. Admins get every guest (of one cluster with `?cluster=`): a list pre-serialized
/// (and pre-gzipped) once per inventory change and shared by all requests, with an `ETag`. Students get
/// their assigned VMs, teachers theirs plus their classes' VMs: built per request from the snapshot and
/// the in-memory access index (hash lookups, no database read). An unknown `?cluster=` is 404.
pub async fn list_vms(
    State(st): State<AppState>,
    p: Principal,
    Query(q): Query<ClusterQuery>,
    headers: axum::http::HeaderMap,
) -> Response {
    let snap = st.inventory.snapshot();
    let scope = q.cluster.as_deref().filter(|c| *c != "all");
    if p.is_admin() {
        let Some(view) = snap.guests_view(scope) else {
            return AppError::NotFound(format!("unknown cluster {:?}", scope.unwrap_or_default()))
                .into_response();
        };
        return cached_json_response(&view, &headers);
    }
    if let Some(c) = scope
        && !snap.clusters.contains_key(c)
    {
        return AppError::NotFound(format!("unknown cluster {c:?}")).into_response();
    }
    let guests = visible_guests(&st, &p, scope);
    let list: Vec<&store::GuestRecord> = guests.iter().map(|g| g.as_ref()).collect();
    match serde_json::to_vec(&list) {
        Ok(bytes) => json_bytes(bytes.into()),
        Err(e) => AppError::Internal(e.to_string()).into_response(),
    }
}

/// The guests `p` may see, from the current snapshot, in `(cluster, VMID)` order: every guest for admins;
/// assigned VMs for students; assigned plus taught classes' VMs for teachers. `scope` limits the list to
/// one cluster. For pages (the portal) and [`list_vms`].
pub fn visible_guests(st: &AppState, p: &Principal, scope: Option<&str>) -> Vec<Arc<store::GuestRecord>> {
    let snap = st.inventory.snapshot();
    if p.is_admin() {
        return snap
            .guests
            .values()
            .filter(|g| scope.is_none_or(|s| s == g.cluster))
            .cloned()
            .collect();
    }
    let idx = st.auth.index();
    let teacher_list;
    let vms: &[crate::auth::VmRef] = if p.role == store::Role::Teacher {
        teacher_list = idx.teacher_vms(&p.name);
        &teacher_list
    } else {
        idx.by_user.get(&p.name).map(Vec::as_slice).unwrap_or(&[])
    };
    vms.iter()
        .filter(|(c, _)| scope.is_none_or(|s| s == c))
        .filter_map(|(c, id)| snap.guest(c, *id).cloned())
        .collect()
}

/// Serves a [`sync::CachedJson`]: `304` when `If-None-Match` matches its tag, the pre-compressed gzip
/// body when the client accepts gzip, else the plain JSON. No per-request serialization or compression.
pub fn cached_json_response(view: &sync::CachedJson, headers: &axum::http::HeaderMap) -> Response {
    let etag = HeaderValue::from_str(&view.etag).unwrap_or_else(|_| HeaderValue::from_static("\"0\""));
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == view.etag || t.trim() == "*"));
    if matches {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        resp.headers_mut().insert(header::ETAG, etag);
        return resp;
    }
    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().split(';').next() == Some("gzip")));
    let mut resp = json_bytes(if gzip {
        view.gzip.clone()
    } else {
        view.json.clone()
    });
    let h = resp.headers_mut();
    if gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    h.insert(header::ETAG, etag);
    resp
}

/// A 200 JSON response from pre-serialized bytes.
pub fn json_bytes(body: Arc<[u8]>) -> Response {
    let mut resp = Response::new(Body::from(bytes_from(body)));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn bytes_from(b: Arc<[u8]>) -> axum::body::Bytes {
    // Bytes::from_owner keeps the Arc alive without copying.
    axum::body::Bytes::from_owner(ArcBytes(b))
}

struct ArcBytes(Arc<[u8]>);
impl AsRef<[u8]> for ArcBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// `GET /api/clusters`: configured clusters with their sync state, which one is the default and which
/// one is the caller's active cluster (`active`).
pub async fn list_clusters(State(st): State<AppState>, p: Principal) -> Json<Value> {
    let snap = st.inventory.snapshot();
    let active = st.cluster_for(&p, None);
    let list: Vec<Value> = snap
        .clusters
        .values()
        .map(|c| {
            json!({"id": c.id, "name": c.name, "status": c.status, "default": c.id == st.config.default_cluster,
                   "active": c.id == active})
        })
        .collect();
    Json(json!({"clusters": list, "active_cluster": active}))
}

/// `GET /api/vm/{vmid}/status`: the inventory record of one guest.
pub async fn vm_status(
    State(st): State<AppState>,
    p: Principal,
    Path(vmid): Path<u32>,
    Query(q): Query<ClusterQuery>,
) -> AppResult<Json<Value>> {
    let cluster = st.authorize_vm(&p, vmid, q.cluster.as_deref(), Action::ViewVm)?;
    let g = st.guest(&cluster, vmid)?;
    Ok(Json(
        serde_json::to_value(g.as_ref()).map_err(|e| AppError::Internal(e.to_string()))?,
    ))
}

/// `GET /api/vm/{vmid}/ip`: `{vmid, cluster, ip, all, source, seen_at, age_secs, state}`; `ip` is null
/// while it is still being found (state `pending`) or when the guest is not running.
pub async fn vm_ip(
    State(st): State<AppState>,
    p: Principal,
    Path(vmid): Path<u32>,
    Query(q): Query<ClusterQuery>,
) -> AppResult<Json<Value>> {
    let cluster = st.authorize_vm(&p, vmid, q.cluster.as_deref(), Action::ViewVm)?;
    let g = st.guest(&cluster, vmid)?;
    let now = sync::now_secs();
    Ok(Json(match &g.ip {
        Some(ip) => json!({
            "cluster": cluster, "vmid": vmid, "ip": ip.address, "all": ip.all, "source": ip.source,
            "seen_at": ip.seen_at, "age_secs": now.saturating_sub(ip.seen_at), "state": "found",
        }),
        None => json!({
            "cluster": cluster, "vmid": vmid, "ip": null, "all": [], "source": null,
            "state": if g.status == "running" { "pending" } else { "not_running" },
        }),
    }))
}

/// `POST /api/vm/{vmid}/{action}` with action `start|stop|shutdown|reboot|resume|suspend|revert`.
///
/// Runs the operation through [`ops::Ops`] (one at a time per VM, in its own task following the PVE task
/// by UPID, the guest refreshed at once) and answers `{ok, action, upid, exitstatus, guest}`; a task
/// error answers with PVE's own message. Identical requests for the same VM while one is in flight
/// join it; Stop always runs. `revert` rolls back to the assignment's baseline snapshot, or a class VM
/// through the deployer. A guest Proxmox has locked is refused by name without asking PVE. A VM the
/// caller may not operate answers 404. Every call is audited.
pub async fn vm_power(
    State(st): State<AppState>,
    p: Principal,
    authn: Authn,
    Path((vmid, action)): Path<(u32, String)>,
    Query(q): Query<ClusterQuery>,
) -> Response {
    let cluster = match st.authorize_vm(&p, vmid, q.cluster.as_deref(), Action::OperateVm) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let target = format!("{cluster}/{vmid}");
    // A class base holds the disk every overlay of the class reads: it is never started, stopped or
    // reverted, whatever PVE's `template` flag says (a base made at create time may lack it).
    if let Some(d) = &st.deploy
        && let Ok(Some(vm)) = d.class_vm(&cluster, vmid)
        && vm.role == deploy::VmRole::Base
    {
        return AppError::Conflict(format!(
            "VM {vmid} is the base image of class {}; it is never started, because every student VM of the \
             class reads its disk",
            vm.class_id
        ))
        .into_response();
    }
    // A student's start outside class hours counts against their quota: refused, with the sentence
    // that names the quota and the teacher, when no hours are left (or the class allows no start
    // outside its hours). Teachers and admins are not counted.
    if action == "start"
        && p.role == store::Role::Student
        && let Some(h) = &st.hours
        && let Some(class) = st
            .auth
            .index()
            .by_vm
            .get(&(cluster.clone(), vmid))
            .and_then(|list| {
                list.iter()
                    .find(|a| {
                        a.user == p.name
                            && matches!(
                                a.role,
                                store::AssignmentRole::Student | store::AssignmentRole::Direct
                            )
                    })
                    .and_then(|a| a.class_id.clone())
            })
        && let Err(message) = h.may_start(&class, &p.name, h.now())
    {
        st.auth.audit(
            &p.name,
            authn.addr,
            "vm.start",
            &target,
            &format!("refused: {message}"),
        );
        return AppError::Domain {
            status: axum::http::StatusCode::CONFLICT,
            code: "no_hours_left".into(),
            message,
        }
        .into_response();
    }
    let class_vm = match &st.deploy {
        Some(d) if action == "revert" => d.class_vm(&cluster, vmid).ok().flatten().map(|_| d.clone()),
        _ => None,
    };
    let out = if let Err(e) = st.ops.check_unlocked(&cluster, vmid) {
        Err(e)
    } else if let Some(deployer) = class_vm {
        // A class VM: the deployer rolls back to `baseline`, or re-makes it on a newer published base.
        let (syncer, c, actor) = (st.syncer.clone(), cluster.clone(), p.name.clone());
        st.ops
            .exclusive(&cluster, vmid, "revert", async move {
                match deployer.revert(&c, vmid, &actor).await {
                    Ok(outcome) => {
                        let guest = syncer
                            .refresh_guest(&c, vmid)
                            .await
                            .ok()
                            .and_then(|g| serde_json::to_value(g.as_ref()).ok());
                        Ok(ops::OpOutcome {
                            ok: true,
                            action: "revert".into(),
                            outcome: serde_json::to_value(outcome).ok(),
                            guest,
                            ..Default::default()
                        })
                    }
                    Err(e) => Err(ops::OpError::Service {
                        status: crate::error::deploy_status(&e).as_u16(),
                        code: e.code().to_string(),
                        message: e.to_string(),
                    }),
                }
            })
            .await
    } else if action == "revert" {
        let snapshot = st.auth.index().baseline_snapshot(&p.name, &cluster, vmid);
        st.ops.revert_to_snapshot(&cluster, vmid, snapshot).await
    } else {
        let Ok(pa) = action.parse::<pve::PowerAction>() else {
            return AppError::NotFound(format!(
                "unknown action {action:?}; use start, stop, shutdown, reboot, resume, suspend or revert"
            ))
            .into_response();
        };
        st.ops.power(&cluster, vmid, pa).await
    };
    let result = match &out {
        Ok(_) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    st.auth
        .audit(&p.name, authn.addr, &format!("vm.{action}"), &target, &result);
    match out {
        Ok(v) => Json(v).into_response(),
        Err(e) => op_error_response(&e),
    }
}

/// `GET /api/events`: Server-Sent Events of inventory changes (`event: guest|guest_removed|cluster`,
/// `data:` the JSON of [`sync::Event`]), with keep-alive comments every 15 s. Never compressed.
/// Admins get every event; other users only events of VMs they may see (checked per event against the
/// current access index, so a new assignment shows without reconnecting) and cluster events.
pub async fn events(State(st): State<AppState>, p: Principal) -> Response {
    let rx = st.inventory.subscribe();
    if p.is_admin() {
        return sse_response(event_stream(rx, |_| true, true));
    }
    let auth = st.auth.clone();
    let keep = move |ev: &sync::Event| {
        let (cluster, vmid) = match ev {
            sync::Event::Guest { guest } => (guest.cluster.as_str(), guest.vmid),
            sync::Event::GuestRemoved { cluster, vmid } => (cluster.as_str(), *vmid),
            // Cluster events reach non-admins reduced to their public part (below).
            sync::Event::Cluster { .. } => return true,
        };
        crate::auth::decide(
            &p,
            Action::ViewVm,
            &crate::auth::Target::Vm { cluster, vmid },
            &auth.index(),
        ) == crate::auth::Decision::Allow
    };
    sse_response(event_stream(rx, keep, false))
}

/// The part of a cluster's sync state everyone may see: whether the portal's view of it is current.
/// Request counts, warnings about the token's privileges and the like are for admins.
fn public_cluster_event(state: &sync::ClusterState) -> Value {
    json!({"type": "cluster", "state": {
        "id": state.id, "name": state.name, "status": state.status, "stale_since": state.stale_since,
        "reason": state.reason,
    }})
}

/// Turns inventory events into SSE events, keeping those `keep` accepts; a lagging client gets a
/// `resync` event telling it to reload its view. `full_cluster_events` false (non-admins): cluster
/// events carry only [`public_cluster_event`].
pub fn event_stream(
    rx: tokio::sync::broadcast::Receiver<sync::Event>,
    keep: impl Fn(&sync::Event) -> bool + Send + 'static,
    full_cluster_events: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static {
    BroadcastStream::new(rx).filter_map(move |item| {
        let out = match item {
            Ok(ev) if keep(&ev) => {
                let name = match &ev {
                    sync::Event::Guest { .. } => "guest",
                    sync::Event::GuestRemoved { .. } => "guest_removed",
                    sync::Event::Cluster { .. } => "cluster",
                };
                match (&ev, full_cluster_events) {
                    (sync::Event::Cluster { state }, false) => SseEvent::default()
                        .event(name)
                        .json_data(public_cluster_event(state))
                        .ok()
                        .map(Ok),
                    _ => SseEvent::default().event(name).json_data(&ev).ok().map(Ok),
                }
            }
            Ok(_) => None,
            Err(_) => Some(Ok(SseEvent::default().event("resync").data("{}"))),
        };
        futures::future::ready(out)
    })
}

/// `GET /metrics`: Prometheus text format: per-cluster guest gauges, sync state and request counters.
pub async fn metrics(State(st): State<AppState>) -> Response {
    let mut reg = Registry::with_prefix("proxlab");
    #[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
    struct ClusterLabel {
        cluster: String,
    }
    let snap = st.inventory.snapshot();
    type GaugeSpec = (&'static str, &'static str, fn(&sync::ClusterState) -> i64);
    let gauges: [GaugeSpec; 6] = [
        ("guests", "Guests in the inventory", |c| c.guests as i64),
        ("guests_running", "Running guests", |c| c.running as i64),
        ("guests_with_ip", "Running guests with a known IP", |c| {
            c.with_ip as i64
        }),
        ("cluster_stale", "1 when the cluster's inventory is stale", |c| {
            i64::from(c.is_stale())
        }),
        (
            "sync_last_duration_milliseconds",
            "Duration of the last sync tick",
            |c| c.last_duration_ms as i64,
        ),
        (
            "sync_pve_requests",
            "PVE requests made by the sync since start",
            |c| c.requests_total as i64,
        ),
    ];
    for (name, help, f) in gauges {
        let fam = Family::<ClusterLabel, Gauge>::default();
        for c in snap.clusters.values() {
            fam.get_or_create(&ClusterLabel {
                cluster: c.id.clone(),
            })
            .set(f(c));
        }
        reg.register(name, help, fam);
    }
    reg.register(
        "http_requests",
        "HTTP requests answered",
        st.http_requests.clone(),
    );
    let mut out = String::new();
    if encode(&mut out, &reg).is_err() {
        return AppError::Internal("metrics encoding failed".into()).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
