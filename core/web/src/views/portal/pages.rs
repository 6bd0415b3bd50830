//! Server-rendered pages (through the [`crate::theme`] layer), static theme files and the reload
//! status of scripts, themes and plugins.
//!
//! Handlers (registered with their access rule in [`crate::routes`]):
//! - `GET /login` — [`login_page`], `login.html`: the sign-in form (posts to `POST /login`); signed-in
//!   callers are sent to their home ([`home_of`]).
//! - `GET /portal[?all=1]` — [`portal`], `portal.html`: the caller's VMs with state, IP, class, power and
//!   revert buttons and the Connect menu, rendered from the inventory in the first response and kept
//!   current over SSE by `static/portal.js`.
//! - `GET /` — [`index`], `index.html`: the inventory summary per cluster (admins; others are sent to
//!   `/portal`).
//! - `GET /vms[?cluster=ID]` — [`vms`], `vms.html`: every guest of the inventory (admin list).
//! - `GET /admin/reload` — [`admin_reload`], `admin/reload.html`: every reloader's generation, last
//!   success, errors with file/line, watch mode; recent template render errors; the theme's files.
//! - `GET /api/reload/status` — [`reload_status`]: the same as JSON.
//! - `GET /api/reload/events` — [`reload_events`]: SSE `reload` events of the theme reloader
//!   (browser live-reload).
//! - `GET /static/{version}/{*path}` — [`static_file`]: a static file of the theme (site first,
//!   then embedded).
//!
//! The admin pages (users, clusters, assignments, audit log) live in [`crate::views::admin`].
//!
//! Pages render from the in-memory inventory ([`sync::Inventory::snapshot`]) and never wait on
//! Proxmox. The context each template receives is documented in `themes/README.md`; the structs
//! below ([`ClusterView`], [`VmRow`], ...) are its exact shapes. Security headers (CSP without
//! inline script or style, `nosniff`, ...) are added to every answer by [`crate::auth`].

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Redirect, Response};
use futures::StreamExt;
use minijinja::Value;
use minijinja::context;
use script::ReloadStatus;
use serde::{Deserialize, Serialize};
use tokio_stream::wrappers::BroadcastStream;

use crate::auth::{Authn, Principal, safe_next};
use crate::error::AppError;
use crate::render::{ClusterView, error_page, home_of, plain_error, render_page, themes_of};
use crate::state::AppState;
use crate::theme::{RenderErrorRecord, Themes};

/// `Cache-Control` of a static file requested with the current version in its URL.
pub const STATIC_CACHE_IMMUTABLE: &str = "public, max-age=31536000, immutable";

// ---- context shapes ------------------------------------------------------------------------------

/// Sums over every cluster (`totals` of `index.html`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    /// Guests of all clusters.
    pub guests: usize,
    /// Running guests.
    pub running: usize,
    /// Running guests with an IP.
    pub with_ip: usize,
    /// Templates.
    pub templates: usize,
    /// Clusters whose inventory is stale or never synced.
    pub stale_clusters: usize,
}

/// One guest row of `vms.html` (`vms[]`).
#[derive(Clone, Debug, Serialize)]
pub struct VmRow<'a> {
    /// Cluster id.
    pub cluster: &'a str,
    /// VMID (unique inside its cluster only).
    pub vmid: u32,
    /// Guest name.
    pub name: &'a str,
    /// Node the guest is on.
    pub node: &'a str,
    /// `qemu` or `lxc`.
    pub kind: &'a str,
    /// Display state: `running`, `stopped`, `paused`, `hibernated`, `unknown`.
    pub state: &'a str,
    /// PVE lock (`backup`, `clone`, ...), or none.
    pub lock: Option<&'a str>,
    /// True for templates.
    pub template: bool,
    /// Primary IP address, or none.
    pub ip: Option<&'a str>,
    /// Discovery tier that found the IP (`guest-agent`, `lxc`, `arp`, ...), or none.
    pub ip_source: Option<&'a str>,
    /// Tags, lower-case, sorted.
    pub tags: &'a [String],
    /// True when the row is the last known state (its node is unreachable or its cluster is stale).
    pub stale: bool,
    /// Why it is stale (the node's or cluster's problem), or none.
    pub stale_reason: Option<&'a str>,
}

/// One reloader on `/admin/reload` and in `GET /api/reload/status` (`reloaders[]`).
#[derive(Clone, Debug, Serialize)]
pub struct ReloaderView {
    /// `themes`, `scripts`, `plugins`, ...
    pub name: String,
    /// False when the last rebuild failed (the previous generation is still serving).
    pub ok: bool,
    /// Generation serving now (the first build is 1).
    pub generation: u64,
    /// Unix seconds of the build serving now.
    pub last_ok_at: u64,
    /// Unix seconds of the last rebuild attempt.
    pub last_attempt_at: u64,
    /// `inotify` or `poll`.
    pub mode: &'static str,
    /// Poll interval in milliseconds (poll mode), or none.
    pub poll_interval_ms: Option<u64>,
    /// Watched directories.
    pub dirs: Vec<String>,
    /// Errors of the last failed rebuild: `[{file, line, column, message}]` (empty when ok).
    pub errors: Vec<script::LoadError>,
}

impl ReloaderView {
    fn new(name: &str, s: ReloadStatus) -> Self {
        let errors = s.last_error.unwrap_or_default();
        ReloaderView {
            name: name.to_string(),
            ok: errors.is_empty(),
            generation: s.generation,
            last_ok_at: s.last_ok_at,
            last_attempt_at: s.last_attempt_at,
            mode: s.mode,
            poll_interval_ms: s.poll_interval_ms,
            dirs: s.dirs.iter().map(|d| d.display().to_string()).collect(),
            errors,
        }
    }
}

/// A template of the theme on `/admin/reload` (`templates[]`).
#[derive(Clone, Debug, Serialize)]
pub struct TemplateView {
    /// Template name (`vms.html`, `admin/reload.html`).
    pub name: String,
    /// Theme it comes from.
    pub theme: String,
    /// File it comes from.
    pub file: String,
}

/// A static file of the theme on `/admin/reload` (`statics[]`).
#[derive(Clone, Debug, Serialize)]
pub struct StaticView {
    /// Path below `static/`.
    pub path: String,
    /// Theme it comes from.
    pub theme: String,
    /// File it comes from.
    pub file: String,
    /// Size in bytes.
    pub size: usize,
}

fn reloader_views(st: &AppState, themes: Option<&Themes>) -> Vec<ReloaderView> {
    let mut out = Vec::new();
    for (name, src) in st.reload_sources.iter() {
        out.push(ReloaderView::new(name, src.reload_status()));
    }
    if let Some(t) = themes {
        out.push(ReloaderView::new("themes", t.status()));
    }
    out
}

// ---- handlers ------------------------------------------------------------------------------------

/// `GET /`: `index.html` with `clusters` ([`ClusterView`]s), `totals` ([`Totals`]) and
/// `inventory_version`, for admins. Other signed-in users are sent to their portal (303 `/portal`),
/// so `/` works as everyone's home address.
pub async fn index(State(st): State<AppState>, p: Principal) -> Response {
    if !p.is_admin() {
        return Redirect::to("/portal").into_response();
    }
    let snap = st.inventory.snapshot();
    render_page(
        &st,
        Some(&p),
        "index",
        "index.html",
        "Overview".into(),
        move || {
            let clusters: Vec<ClusterView> = snap.clusters.values().map(ClusterView::from).collect();
            let mut totals = Totals::default();
            for c in &clusters {
                totals.guests += c.guests;
                totals.running += c.running;
                totals.with_ip += c.with_ip;
                totals.templates += c.templates;
                totals.stale_clusters += usize::from(c.stale);
            }
            context! {
                clusters => Value::from_serialize(&clusters),
                totals => Value::from_serialize(&totals),
                inventory_version => snap.version,
            }
        },
    )
    .await
}

/// `?cluster=ID` of `/vms`.
#[derive(Debug, Default, Deserialize)]
pub struct VmsQuery {
    /// Show only this cluster's guests.
    pub cluster: Option<String>,
}

/// `GET /vms[?cluster=ID]`: `vms.html` with `vms` ([`VmRow`]s in cluster, VMID order), `count`,
/// `clusters` ([`ClusterView`]s) and `cluster_filter` (the id, or none).
pub async fn vms(State(st): State<AppState>, p: Principal, Query(q): Query<VmsQuery>) -> Response {
    let snap = st.inventory.snapshot();
    let filter = q.cluster.filter(|c| !c.is_empty());
    if let Some(c) = &filter
        && !snap.clusters.contains_key(c)
        && snap.cluster_guests(c).next().is_none()
    {
        let msg = format!("There is no cluster `{c}`.");
        return match themes_of(&st) {
            Some(t) => error_page(&t, StatusCode::NOT_FOUND, &msg).await,
            None => plain_error(StatusCode::NOT_FOUND, &msg),
        };
    }
    let title = match &filter {
        Some(c) => format!("Guests in {c}"),
        None => "Guests".to_string(),
    };
    render_page(&st, Some(&p), "vms", "vms.html", title, move || {
        let clusters: Vec<ClusterView> = snap.clusters.values().map(ClusterView::from).collect();
        let guests: Box<dyn Iterator<Item = &Arc<store::GuestRecord>>> = match &filter {
            Some(c) => Box::new(snap.cluster_guests(c)),
            None => Box::new(snap.guests.values()),
        };
        let rows: Vec<VmRow<'_>> = guests
            .map(|g| {
                let cluster = snap.clusters.get(&g.cluster);
                let cluster_stale = cluster.map(|c| c.is_stale()).unwrap_or(false);
                let stale_reason = g.stale.as_deref().or_else(|| {
                    if cluster_stale {
                        cluster
                            .and_then(|c| c.reason.as_deref())
                            .or(Some("cluster is stale"))
                    } else {
                        None
                    }
                });
                VmRow {
                    cluster: &g.cluster,
                    vmid: g.vmid,
                    name: &g.name,
                    node: &g.node,
                    kind: &g.kind,
                    state: &g.state,
                    lock: g.lock.as_deref(),
                    template: g.template,
                    ip: g
                        .ip
                        .as_ref()
                        .map(|i| i.address.as_str())
                        .filter(|a| !a.is_empty()),
                    ip_source: g.ip.as_ref().map(|i| i.source.as_str()).filter(|s| !s.is_empty()),
                    tags: &g.tags,
                    stale: g.stale.is_some() || cluster_stale,
                    stale_reason,
                }
            })
            .collect();
        context! {
            count => rows.len(),
            vms => Value::from_serialize(&rows),
            clusters => Value::from_serialize(&clusters),
            cluster_filter => filter,
        }
    })
    .await
}

/// `?next=` and `?error=` of `/login`.
#[derive(Debug, Default, Deserialize)]
pub struct LoginQuery {
    /// Where to go after signing in (local paths only; anything else is dropped).
    pub next: Option<String>,
    /// `invalid` after a failed sign-in (set by `POST /login`).
    pub error: Option<String>,
}

/// `GET /login[?next=PATH][&error=invalid]`: `login.html` with `next` (the safe local path, or an
/// empty string), `error` (`invalid`, `name_taken`, `bad_input`, `registration_closed`,
/// `invite_used_up`, `invite_busy` or none),
/// `error_message` (the sentence to show, or none), `register_invite` (the invite token when `next` is an
/// invite link whose class allows self-registration, else none: the page then offers "create an
/// account", posting to `POST /register`) and `realm_hint` (how Proxmox users spell their name). The form posts `username`, `password` and
/// `next` to `POST /login`, which answers the same for an unknown user and a wrong password.
///
/// A caller who is already signed in (session or bearer token) is sent home instead: `303` to
/// [`home_of`] (`/` for admins, `/portal` for everyone else).
pub async fn login_page(State(st): State<AppState>, authn: Authn, Query(q): Query<LoginQuery>) -> Response {
    if let Some(p) = &authn.principal {
        return Redirect::to(home_of(p)).into_response();
    }
    let next = match q.next.as_deref().map(str::trim) {
        Some(n) if !n.is_empty() && safe_next(Some(n)) == n => n.to_string(),
        _ => String::new(),
    };
    let error: Option<&'static str> = match q.error.as_deref() {
        Some("invalid") => Some("invalid"),
        Some("name_taken") => Some("name_taken"),
        Some("bad_input") => Some("bad_input"),
        Some("registration_closed") => Some("registration_closed"),
        Some("invite_used_up") => Some("invite_used_up"),
        Some("invite_busy") => Some("invite_busy"),
        Some(_) => Some("failed"),
        None => None,
    };
    let error_message = error.map(|e| match e {
        "invalid" => "Wrong user name or password.",
        "name_taken" => "That user name is taken; choose another.",
        "bad_input" => "User names may not contain @; passwords need at least 8 characters.",
        "registration_closed" => "This invite link does not allow creating an account; ask your teacher.",
        "invite_used_up" => {
            "This invite link has made all the accounts it allows; ask your teacher for a new link."
        }
        "invite_busy" => "Many accounts were just made with this invite link; wait a minute and try again.",
        _ => "Signing in did not work. Please try again.",
    });
    // An invite link whose class lets students create their own account (`/join/<token>`).
    let register_invite = next
        .strip_prefix("/join/")
        .filter(|t| {
            st.deploy
                .as_ref()
                .and_then(|d| d.invite_class(t).ok())
                .is_some_and(|c| c.self_registration)
        })
        .map(str::to_string);
    render_page(&st, None, "login", "login.html", "Sign in".into(), move || {
        context! {
            next => next,
            error => error,
            error_message => error_message,
            register_invite => register_invite,
            realm_hint => "Proxmox accounts sign in with their realm, e.g. alice@pve, root@pam or alice@school-ldap.",
        }
    })
    .await
}

/// `?all=1` of `/portal` (admins only: every guest instead of their own).
#[derive(Debug, Default, Deserialize)]
pub struct PortalQuery {
    /// `1`: admins see every guest of every cluster.
    pub all: Option<String>,
    /// Class id after a successful join through an invite link (`/join/{token}`).
    pub joined: Option<String>,
    /// Outcome of a join that did not give a VM: `full` (on the waiting list) or `invalid`.
    pub join: Option<String>,
    /// Class id of a `join=full` outcome.
    pub class: Option<String>,
    /// Place on the waiting list of a `join=full` outcome (1 = next).
    pub position: Option<u32>,
}

/// A message shown at the top of the portal after a redirect (`notice` of `portal.html`):
/// `kind` is `ok`, `warn` or `bad` (the banner's class).
#[derive(Clone, Debug, Serialize)]
pub struct Notice {
    /// `ok`, `warn` or `bad`.
    pub kind: &'static str,
    /// The message, in plain words.
    pub text: String,
}

/// The notice of a `/join/{token}` redirect (`?joined=`, `?join=full&class=&position=`, `?join=invalid`),
/// naming the class by its display name when it exists.
fn join_notice(st: &AppState, q: &PortalQuery) -> Option<Notice> {
    let class_name = |id: &str| match st.auth.store.classes.get(id) {
        Ok(Some(c)) if !c.name.is_empty() => c.name,
        _ => id.to_string(),
    };
    if let Some(id) = q.joined.as_deref().filter(|s| !s.is_empty()) {
        return Some(Notice {
            kind: "ok",
            text: format!("You joined {}. Your VM is below.", class_name(id)),
        });
    }
    match q.join.as_deref()? {
        "full" => {
            let class = q.class.as_deref().map(class_name).unwrap_or_else(|| "the class".into());
            let place = q
                .position
                .map(|n| format!(" You are number {n} on the waiting list."))
                .unwrap_or_default();
            Some(Notice {
                kind: "warn",
                text: format!(
                    "{class} has no free VM right now.{place} You get a VM as soon as your teacher adds one."
                ),
            })
        }
        "invalid" => Some(Notice {
            kind: "bad",
            text: "This invite link is not valid: it is unknown, expired or revoked. Ask your teacher for a new one."
                .into(),
        }),
        _ => None,
    }
}

/// Which buttons of a portal VM card are enabled (`vms[].can` of `portal.html`). The same rules run
/// in `static/portal.js` after every live update.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct VmButtons {
    /// Start (or resume): the VM is stopped, paused, hibernated or its state is unknown.
    pub start: bool,
    /// Shut down (ACPI): running or unknown.
    pub shutdown: bool,
    /// Stop (power off): running, paused or unknown.
    pub stop: bool,
    /// Revert to the baseline snapshot: the VM has one.
    pub revert: bool,
}

impl VmButtons {
    /// The buttons for display state `state` (`running`, `stopped`, `paused`, `hibernated`, `unknown`),
    /// for a template or not, with or without a baseline snapshot. A lock Proxmox holds (other than
    /// `suspended`) disables every button in the page, titled with the lock, and the API refuses the
    /// operation by name ([`ops::blocking_lock`]).
    pub fn for_state(state: &str, template: bool, has_baseline: bool) -> VmButtons {
        if template {
            return VmButtons {
                start: false,
                shutdown: false,
                stop: false,
                revert: false,
            };
        }
        let unknown = !matches!(state, "running" | "stopped" | "paused" | "hibernated");
        VmButtons {
            start: unknown || matches!(state, "stopped" | "paused" | "hibernated"),
            shutdown: unknown || state == "running",
            stop: unknown || matches!(state, "running" | "paused"),
            revert: has_baseline,
        }
    }
}

/// One VM card of `portal.html` (`vms[]`).
#[derive(Clone, Debug, Serialize)]
pub struct PortalVm {
    /// Cluster id.
    pub cluster: String,
    /// Cluster display name.
    pub cluster_name: String,
    /// VMID (unique inside its cluster only).
    pub vmid: u32,
    /// `{cluster}/{vmid}`: the card's `data-key`, as in the SSE events.
    pub key: String,
    /// Guest name.
    pub name: String,
    /// Node the guest is on.
    pub node: String,
    /// `qemu` or `lxc`.
    pub kind: String,
    /// Display state: `running`, `stopped`, `paused`, `hibernated`, `unknown`.
    pub state: String,
    /// PVE lock (`backup`, `clone`, ...), or none.
    pub lock: Option<String>,
    /// True for templates (no buttons).
    pub template: bool,
    /// Primary IP address, or none.
    pub ip: Option<String>,
    /// Discovery tier that found it, or none.
    pub ip_source: Option<String>,
    /// True while the VM runs and its address is still being found ("finding IP…").
    pub ip_pending: bool,
    /// True when the card shows the last known state (node unreachable or cluster stale).
    pub stale: bool,
    /// Why it is stale, or none.
    pub stale_reason: Option<String>,
    /// Unix seconds since when the cluster is stale, or none.
    pub stale_since: Option<u64>,
    /// Class id of the VM's assignment, or none.
    pub class_id: Option<String>,
    /// Class name (the id when the class record is gone), or none.
    pub class_name: Option<String>,
    /// Baseline snapshot a revert rolls back to, or none ("no baseline snapshot to revert to").
    pub baseline: Option<String>,
    /// Enabled buttons.
    pub can: VmButtons,
    /// `/api/vm/{vmid}` — append `/start`, `/stop`, `/shutdown`, `/revert`, `/connect`.
    pub api: String,
    /// `?cluster=<id>` (URL-encoded), appended to every VM URL so the cluster is explicit.
    pub query: String,
}

/// `GET /portal[?all=1]` (after an invite link also `?joined=ID`, `?join=full&class=ID&position=N` or
/// `?join=invalid`): `portal.html` with `notice` (a [`Notice`], or none), `vms` ([`PortalVm`]s in
/// cluster, VMID order), `count`, `clusters` (the [`ClusterView`]s of the clusters those VMs are in), `multi_cluster` (VMs from
/// more than one cluster: show the cluster per card), `show_all` and `can_show_all` (admins).
///
/// The list is the caller's VMs from the inventory — students: assigned VMs; teachers: assigned plus
/// their classes' VMs; admins: the VMs assigned to them, or every guest with `?all=1` — rendered in
/// the first response; `static/portal.js` keeps it current from `GET /api/events` and runs the
/// operations through the JSON API with the session's CSRF token.
pub async fn portal(State(st): State<AppState>, p: Principal, Query(q): Query<PortalQuery>) -> Response {
    let show_all = p.is_admin() && q.all.as_deref().is_some_and(|v| v == "1" || v == "true");
    let snap = st.inventory.snapshot();
    let idx = st.auth.index();
    let guests: Vec<Arc<store::GuestRecord>> = if p.is_admin() && !show_all {
        idx.by_user
            .get(&p.name)
            .into_iter()
            .flatten()
            .filter_map(|(c, id)| snap.guest(c, *id).cloned())
            .collect()
    } else {
        super::api::visible_guests(&st, &p, None)
    };
    // Class names of the VMs' assignments: the caller's own assignment first, else any naming a class.
    let mut class_names: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut vms = Vec::with_capacity(guests.len());
    for g in &guests {
        let assignments = idx.by_vm.get(&(g.cluster.clone(), g.vmid));
        let class_id = assignments.and_then(|list| {
            list.iter()
                .filter(|a| a.user == p.name)
                .chain(list.iter())
                .find_map(|a| a.class_id.clone())
        });
        // A class of Proxlab, else the guest's PVE pool (sites often group a class's VMs in a pool).
        let class_name = class_id
            .as_ref()
            .map(|id| {
                class_names
                    .entry(id.clone())
                    .or_insert_with(|| match st.auth.store.classes.get(id) {
                        Ok(Some(c)) if !c.name.is_empty() => c.name,
                        _ => id.clone(),
                    })
                    .clone()
            })
            .or_else(|| g.pool.clone().filter(|p| !p.is_empty()));
        let cluster = snap.clusters.get(&g.cluster);
        let cluster_stale = cluster.is_some_and(|c| c.is_stale());
        let stale_reason = g.stale.clone().or_else(|| {
            cluster_stale.then(|| {
                cluster
                    .and_then(|c| c.reason.clone())
                    .unwrap_or_else(|| "cluster is stale".into())
            })
        });
        let baseline = idx.baseline_snapshot(&p.name, &g.cluster, g.vmid);
        let ip = g.ip.as_ref().map(|i| i.address.clone()).filter(|a| !a.is_empty());
        let running = g.state == "running";
        let enc: String = url::form_urlencoded::byte_serialize(g.cluster.as_bytes()).collect();
        vms.push(PortalVm {
            cluster: g.cluster.clone(),
            cluster_name: cluster
                .map(|c| c.name.clone())
                .unwrap_or_else(|| g.cluster.clone()),
            vmid: g.vmid,
            key: format!("{}/{}", g.cluster, g.vmid),
            name: g.name.clone(),
            node: g.node.clone(),
            kind: g.kind.clone(),
            state: g.state.clone(),
            lock: g.lock.clone(),
            template: g.template,
            ip_pending: running && ip.is_none(),
            ip: ip.filter(|_| running),
            ip_source: g
                .ip
                .as_ref()
                .map(|i| i.source.clone())
                .filter(|s| !s.is_empty() && running),
            stale: stale_reason.is_some(),
            stale_reason,
            stale_since: cluster.filter(|c| c.is_stale()).and_then(|c| c.stale_since),
            class_id,
            class_name,
            can: VmButtons::for_state(&g.state, g.template, baseline.is_some()),
            baseline,
            api: format!("/api/vm/{}", g.vmid),
            query: format!("?cluster={enc}"),
        });
    }
    let mut ids: Vec<&str> = vms.iter().map(|v| v.cluster.as_str()).collect();
    ids.dedup();
    let multi_cluster = ids.len() > 1 || snap.clusters.len() > 1;
    let clusters: Vec<ClusterView> = snap
        .clusters
        .values()
        .filter(|c| vms.iter().any(|v| v.cluster == c.id))
        .map(ClusterView::from)
        .collect();
    let can_show_all = p.is_admin();
    let title = if show_all { "All guests" } else { "My VMs" };
    let notice = join_notice(&st, &q);
    render_page(&st, Some(&p), "portal", "portal.html", title.into(), move || {
        context! {
            notice => Value::from_serialize(&notice),
            count => vms.len(),
            vms => Value::from_serialize(&vms),
            clusters => Value::from_serialize(&clusters),
            multi_cluster => multi_cluster,
            show_all => show_all,
            can_show_all => can_show_all,
        }
    })
    .await
}

/// `GET /admin/reload`: `admin/reload.html` with `reloaders` ([`ReloaderView`]s),
/// `render_errors` ([`RenderErrorRecord`]s, most recent first), `templates` ([`TemplateView`]s) and
/// `statics` ([`StaticView`]s).
pub async fn admin_reload(State(st): State<AppState>, p: Principal) -> Response {
    let Some(themes) = themes_of(&st) else {
        return plain_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "The portal's theme does not load.",
        );
    };
    let reloaders = reloader_views(&st, Some(&themes));
    let render_errors = themes.render_errors();
    let set = themes.current();
    render_page(
        &st,
        Some(&p),
        "admin/reload",
        "admin/reload.html",
        "Reload status".into(),
        move || {
            let templates: Vec<TemplateView> = set
                .templates()
                .iter()
                .map(|(name, o)| TemplateView {
                    name: name.clone(),
                    theme: o.theme.clone(),
                    file: o.file.display().to_string(),
                })
                .collect();
            let statics: Vec<StaticView> = set
                .statics()
                .iter()
                .map(|(path, f)| StaticView {
                    path: path.clone(),
                    theme: f.origin.theme.clone(),
                    file: f.origin.file.display().to_string(),
                    size: f.bytes.len(),
                })
                .collect();
            context! {
                reloaders => Value::from_serialize(&reloaders),
                render_errors => Value::from_serialize(&render_errors),
                templates => Value::from_serialize(&templates),
                statics => Value::from_serialize(&statics),
            }
        },
    )
    .await
}

/// `GET /api/reload/status`:
/// `{"reloaders": [ReloaderView...], "render_errors": [RenderErrorRecord...], "theme": {"name", "version", "chain"}}`.
///
/// `reloaders[].errors[]` is `{file, line, column, message}` of the last failed rebuild (the
/// previous generation keeps serving); `render_errors[]` is `{at, template, failed_in, file, line, message}`.
pub async fn reload_status(State(st): State<AppState>) -> Json<serde_json::Value> {
    let themes = themes_of(&st);
    let reloaders = reloader_views(&st, themes.as_deref());
    let render_errors: Vec<RenderErrorRecord> =
        themes.as_ref().map(|t| t.render_errors()).unwrap_or_default();
    let theme = themes.as_ref().map(|t| {
        let set = t.current();
        serde_json::json!({"name": set.name(), "version": set.version(), "chain": set.chain()})
    });
    Json(serde_json::json!({"reloaders": reloaders, "render_errors": render_errors, "theme": theme}))
}

/// `GET /api/reload/events`: SSE; one `reload` event per theme rebuild attempt, data
/// `{"generation", "ok", "errors": [{file, line, column, message}], "changed": [paths]}`.
pub async fn reload_events(State(st): State<AppState>) -> Response {
    let Some(themes) = themes_of(&st) else {
        return AppError::Unavailable("no theme".into()).into_response();
    };
    let stream = BroadcastStream::new(themes.subscribe()).filter_map(|item| {
        let out = match item {
            Ok(ev) => SseEvent::default()
                .event("reload")
                .json_data(&ev)
                .ok()
                .map(Ok::<_, Infallible>),
            Err(_) => None,
        };
        futures::future::ready(out)
    });
    super::api::sse_response(stream)
}

/// `GET /static/{version}/{*path}`: a static file of the current theme (site first, then embedded;
/// `default/<path>` is always the embedded default's file). With the current version in the URL
/// it is cacheable forever (`immutable`); with an older version (a page rendered before a reload)
/// the current file is served with `no-cache`. Strong `ETag`; `If-None-Match` gives 304.
pub async fn static_file(
    State(st): State<AppState>,
    Path((version, path)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(themes) = themes_of(&st) else {
        return AppError::NotFound("no such file".into()).into_response();
    };
    let set = themes.current();
    let Some(file) = set.static_file(&path) else {
        return AppError::NotFound(format!("no static file `{path}` in this theme")).into_response();
    };
    let cache = if version == set.version() {
        STATIC_CACHE_IMMUTABLE
    } else {
        "no-cache"
    };
    let etag = HeaderValue::from_str(&file.etag).unwrap_or_else(|_| HeaderValue::from_static("\"0\""));
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .map(|t| t.trim().trim_start_matches("W/"))
                .any(|t| t == "*" || t == file.etag)
        })
        .unwrap_or(false);
    let mut resp = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = Response::new(Body::from(axum::body::Bytes::from_owner(ArcBytes(
            file.bytes.clone(),
        ))));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(file.content_type));
        r
    };
    let h = resp.headers_mut();
    h.insert(header::ETAG, etag);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    resp
}

struct ArcBytes(Arc<[u8]>);

impl AsRef<[u8]> for ArcBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}
