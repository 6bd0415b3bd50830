//! The teacher's class pages (issue 5 item 4), rendered through the themes; every change they offer
//! goes through the JSON routes of [`super`] from `static/classes.js` (with `X-CSRF-Token`).
//!
//! - `GET /classes` — [`classes_page`], `classes.html`: the classes the caller owns or co-owns (admins:
//!   every class) and a "new class" form that posts to `POST /api/classes`.
//! - `GET /classes/{id}` — [`class_page`], `class.html`: every VM of the class (teacher VM, base,
//!   students: name, VMID, user, state, IP), deploy job progress, invites, teacher VM power, publish,
//!   delete. Kept current by `classes.js` over `GET /api/events` (inventory) and
//!   `GET /api/classes/{id}/events` (job progress).
//!
//! - `GET /join/{token}` — [`join_page`], `join.html`: what an invite link opens, the class's name and a
//!   "Join" button whose form posts (with the CSRF token) to `POST /join/{token}`
//!   ([`super::join`]); every signed-in user may open it.
//!
//! Access: teachers of the class (owner, co-owners) and admins; everyone else gets the themed 404 page,
//! so a class's existence is not revealed. Students get 403 on `/classes`. Without a deployer
//! (`AppState::with_deployer`) both pages answer 503. The context is documented in `themes/README.md`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use deploy::Deployer;
use minijinja::{Value, context};
use serde::Serialize;
use store::{ClassRecord, JobState, Role};

use crate::auth::{Action, Decision, Principal, Target, decide};
use crate::render::{error_page, plain_error, render_page, themes_of};
use crate::state::AppState;

/// A class row of `classes.html` (`classes[]`).
#[derive(Clone, Debug, Serialize)]
pub struct ClassRow {
    /// Class id (`/classes/{id}`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Owning teacher.
    pub owner: String,
    /// Co-owning teachers.
    pub co_owners: Vec<String>,
    /// Cluster id.
    pub cluster: String,
    /// Template key `cluster/vmid`.
    pub template: String,
    /// Workflow (`qcow2-overlay`, `linked-clone`).
    pub workflow: String,
    /// Student VMs.
    pub pool_size: u32,
    /// `deploying`, `ready`, `partial`, `failed`, `deleting`.
    pub state: String,
    /// Unix seconds.
    pub created_at: u64,
    /// The caller owns it (only the owner and admins delete).
    pub is_owner: bool,
}

impl ClassRow {
    fn new(c: &ClassRecord, p: &Principal) -> ClassRow {
        ClassRow {
            id: c.id.clone(),
            name: c.name.clone(),
            description: c.description.clone(),
            owner: c.owner.clone(),
            co_owners: c.co_owners.clone(),
            cluster: c.cluster.clone(),
            template: c.template.clone(),
            workflow: c.workflow.clone(),
            pool_size: c.pool_size,
            state: c.state.clone(),
            created_at: c.created_at,
            is_owner: c.owner == p.name,
        }
    }
}

/// A registered template offered by the "new class" form (`templates[]`).
#[derive(Clone, Debug, Serialize)]
pub struct TemplateOption {
    /// Cluster id.
    pub cluster: String,
    /// Template VMID.
    pub vmid: u32,
    /// Template name.
    pub name: String,
    /// Node the template is on.
    pub node: String,
    /// Storages of its disks, comma-separated.
    pub storage: String,
    /// Unix seconds of the last read of its config.
    pub synced_at: u64,
    /// Why the last read failed (the template is gone or changed), or none.
    pub sync_error: Option<String>,
    /// Who may use it: `all` (every teacher), `teachers` (those in `teachers`), `admins`.
    pub visibility: String,
    /// The teachers of `visibility == "teachers"`.
    pub teachers: Vec<String>,
}

/// One VM of `class.html` (`vms[]`).
#[derive(Clone, Debug, Serialize)]
pub struct ClassVmRow {
    /// `{cluster}/{vmid}`, the row's `data-key` (the key of `/api/events`).
    pub key: String,
    /// Cluster id.
    pub cluster: String,
    /// VMID.
    pub vmid: u32,
    /// PVE name.
    pub name: String,
    /// `teacher`, `base` or `student`.
    pub role: String,
    /// Student slot (1-based), 0 otherwise.
    pub slot: u32,
    /// Assigned user, or none (free).
    pub user: Option<String>,
    /// Node.
    pub node: String,
    /// `running`, `stopped`, ..., `unknown` before the first sync.
    pub state: String,
    /// IP address, or none.
    pub ip: Option<String>,
    /// A newer base was published; the VM moves on its next revert.
    pub outdated: bool,
}

/// An invite of `class.html` (`invites[]`; the token itself is shown only when it is made).
#[derive(Clone, Debug, Serialize)]
pub struct InviteRow {
    /// Public id (`inv-…`), for revoking.
    pub id: String,
    /// Who made it.
    pub created_by: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Expiry (Unix seconds), or none (never).
    pub expires_at: Option<u64>,
    /// Revoked or expired: no longer usable.
    pub active: bool,
    /// Revoked.
    pub revoked: bool,
    /// Users who joined with it.
    pub uses: u64,
    /// Accounts students created with it so far.
    pub registrations: u64,
    /// Most accounts students may create with it (`None`: records made before the cap existed).
    pub max_registrations: Option<u64>,
}

/// A recent job of `class.html` (`jobs[]`, newest first).
#[derive(Clone, Debug, Serialize)]
pub struct JobRow {
    /// Job id (`GET /api/jobs/{id}`).
    pub id: String,
    /// `deploy`, `publish`, `delete-class`, ...
    pub kind: String,
    /// `pending`, `running`, `done`, `failed`, `cancelled`.
    pub state: String,
    /// Steps finished (done, failed or cancelled).
    pub done: usize,
    /// Steps in all.
    pub total: usize,
    /// Failed steps.
    pub failed: usize,
    /// The job's error, or none.
    pub error: Option<String>,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds, or none while it runs.
    pub finished_at: Option<u64>,
}

fn state_str<T: Serialize>(s: &T) -> String {
    match serde_json::to_value(s) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "unknown".into(),
    }
}

async fn page_error(st: &AppState, status: StatusCode, message: &str) -> Response {
    match themes_of(st) {
        Some(t) => error_page(&t, status, message).await,
        None => plain_error(status, message),
    }
}

fn deployer_of(st: &AppState) -> Option<Deployer> {
    st.deploy.clone()
}

/// `GET /join/{token}` (signed in; anonymous callers are sent to sign in first): `join.html`, the
/// confirmation page of an invite link, with `class` (`id`, `name`, `description`) and `join_action`
/// (the path its "Join" form posts to, with the page's `csrf_token`). Showing it changes nothing: a
/// link opened by a preview bot, a prefetch or an `<img>` on another site joins no one. An unknown,
/// revoked or expired link is sent to `/portal?join=invalid`; no deployer: 503.
pub async fn join_page(State(st): State<AppState>, p: Principal, Path(token): Path<String>) -> Response {
    let Some(d) = deployer_of(&st) else {
        return page_error(
            &st,
            StatusCode::SERVICE_UNAVAILABLE,
            "Classes are not configured on this server.",
        )
        .await;
    };
    let Ok(class) = d.invite_class(&token) else {
        return Redirect::to("/portal?join=invalid").into_response();
    };
    let action = format!(
        "/join/{}",
        url::form_urlencoded::byte_serialize(token.as_bytes()).collect::<String>()
    );
    let title = format!("Join {}", class.name);
    render_page(&st, Some(&p), "join", "join.html", title, move || {
        context! {
            class => context! { id => class.id, name => class.name, description => class.description },
            join_action => action,
        }
    })
    .await
}

/// `GET /classes` (teachers, admins): `classes.html` with `classes` ([`ClassRow`]s by name: owned and
/// co-owned; admins every class), `templates` ([`TemplateOption`]s: the catalogue templates open to the
/// caller; admins the whole catalogue), `clusters` (ids),
/// `default_cluster`, `workflows` and `usage` (the caller's classes and VMs against their limits:
/// `{classes, classes_limit, vms, vms_limit, unlimited}`). Students get the 403 page; no deployer: 503.
pub async fn classes_page(State(st): State<AppState>, p: Principal) -> Response {
    if !matches!(p.role, Role::Teacher | Role::Admin) {
        return page_error(
            &st,
            StatusCode::FORBIDDEN,
            "Only teachers and admins manage classes.",
        )
        .await;
    }
    let Some(d) = deployer_of(&st) else {
        return page_error(
            &st,
            StatusCode::SERVICE_UNAVAILABLE,
            "Classes are not configured on this server.",
        )
        .await;
    };
    let list = if p.is_admin() {
        d.classes()
    } else {
        d.classes_of(&p.name)
    };
    let list = match list {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "listing classes");
            return page_error(
                &st,
                StatusCode::INTERNAL_SERVER_ERROR,
                "The classes could not be read.",
            )
            .await;
        }
    };
    let mut rows: Vec<ClassRow> = list
        .iter()
        .filter(|c| p.is_admin() || c.owner == p.name || c.co_owners.iter().any(|u| u == &p.name))
        .map(|c| ClassRow::new(c, &p))
        .collect();
    rows.sort_by(|a, b| {
        a.name
            .to_lowercase()
            .cmp(&b.name.to_lowercase())
            .then(a.id.cmp(&b.id))
    });
    // Teachers see only the catalogue templates open to them; admins see the whole catalogue.
    let templates: Vec<TemplateOption> = d
        .templates_visible_to(&p.name, p.is_admin())
        .unwrap_or_default()
        .into_iter()
        .map(|t| {
            let mut storages: Vec<&str> = t.disks.iter().map(|d| d.storage.as_str()).collect();
            storages.dedup();
            let (visibility, teachers) = match &t.visibility {
                store::TemplateVisibility::AllTeachers => ("all", Vec::new()),
                store::TemplateVisibility::Teachers { names } => ("teachers", names.clone()),
                store::TemplateVisibility::AdminsOnly => ("admins", Vec::new()),
            };
            TemplateOption {
                visibility: visibility.to_string(),
                teachers,
                storage: storages.join(", "),
                cluster: t.cluster,
                vmid: t.vmid,
                name: t.name,
                node: t.node,
                synced_at: t.synced_at,
                sync_error: t.sync_error,
            }
        })
        .collect();
    let clusters: Vec<String> = st.inventory.snapshot().clusters.keys().cloned().collect();
    let default_cluster = st.cluster_for(&p, None);
    let usage = d.teacher_usage(&p.name).ok();
    render_page(
        &st,
        Some(&p),
        "classes",
        "classes.html",
        "Classes".into(),
        move || {
            context! {
                classes => Value::from_serialize(&rows),
                templates => Value::from_serialize(&templates),
                clusters => clusters,
                default_cluster => default_cluster,
                workflows => vec!["qcow2-overlay", "linked-clone"],
                usage => Value::from_serialize(&usage),
            }
        },
    )
    .await
}

/// `GET /classes/{id}` (the class's teachers and admins): `class.html` with `class` ([`ClassRow`] plus
/// `self_registration`, `base_version`, `last_job`), `vms` ([`ClassVmRow`]s: teacher, base, students
/// by slot), `teacher_vm` (its row or none), `invites` ([`InviteRow`]s), `jobs` ([`JobRow`]s, the 10
/// newest), `active_job` (id of a running job or none), `waiting` (list of {`user`, `since`}),
/// `can_delete` (owner or admin), `api` (`/api/classes/{id}`) and `max_pool` (the most students a class
/// holds, the cap of an invite's new accounts). Others get the 404 page.
pub async fn class_page(State(st): State<AppState>, p: Principal, Path(id): Path<String>) -> Response {
    let not_found = format!("There is no class `{id}`.");
    if decide(&p, Action::ManageClass, &Target::Class(&id), &st.auth.index()) != Decision::Allow {
        return page_error(&st, StatusCode::NOT_FOUND, &not_found).await;
    }
    let Some(d) = deployer_of(&st) else {
        return page_error(
            &st,
            StatusCode::SERVICE_UNAVAILABLE,
            "Classes are not configured on this server.",
        )
        .await;
    };
    let class = match d.class(&id) {
        Ok(c) => c,
        Err(deploy::DeployError::NotFound { .. }) => {
            return page_error(&st, StatusCode::NOT_FOUND, &not_found).await;
        }
        Err(e) => {
            tracing::error!(error = %e, class = %id, "reading a class");
            return page_error(
                &st,
                StatusCode::INTERNAL_SERVER_ERROR,
                "The class could not be read.",
            )
            .await;
        }
    };
    let views = d.class_vm_views(&id).unwrap_or_default();
    let mut vms: Vec<ClassVmRow> = views
        .iter()
        .map(|v| ClassVmRow {
            key: format!("{}/{}", v.cluster, v.vmid),
            cluster: v.cluster.clone(),
            vmid: v.vmid,
            name: v.name.clone(),
            role: state_str(&v.role),
            slot: v.slot,
            user: Some(v.user.clone()).filter(|u| !u.is_empty()),
            node: v.node.clone(),
            state: v.state.clone(),
            ip: v.ip.clone().filter(|ip| !ip.is_empty()),
            outdated: v.outdated,
        })
        .collect();
    let rank = |r: &str| match r {
        "teacher" => 0,
        "base" => 1,
        _ => 2,
    };
    vms.sort_by(|a, b| {
        rank(&a.role)
            .cmp(&rank(&b.role))
            .then(a.slot.cmp(&b.slot))
            .then(a.vmid.cmp(&b.vmid))
    });
    let teacher_vm = vms.iter().find(|v| v.role == "teacher").cloned();
    let now = sync::now_secs();
    let invites: Vec<InviteRow> = d
        .invites(&id)
        .unwrap_or_default()
        .into_iter()
        .map(|i| InviteRow {
            active: !i.revoked && i.expires_at.is_none_or(|e| e > now),
            id: i.id,
            created_by: i.created_by,
            created_at: i.created_at,
            expires_at: i.expires_at,
            revoked: i.revoked,
            uses: i.uses,
            registrations: i.registrations,
            max_registrations: i.max_registrations,
        })
        .collect();
    let jobs: Vec<JobRow> = d
        .jobs_of_class(&id)
        .unwrap_or_default()
        .iter()
        .take(10)
        .map(|j| JobRow {
            id: j.id.clone(),
            kind: j.kind.clone(),
            state: state_str(&j.state),
            done: j
                .steps
                .iter()
                .filter(|s| matches!(s.state, JobState::Done | JobState::Failed | JobState::Cancelled))
                .count(),
            total: j.steps.len(),
            failed: j.steps.iter().filter(|s| s.state == JobState::Failed).count(),
            error: j.error.clone(),
            created_at: j.created_at,
            finished_at: j.finished_at,
        })
        .collect();
    let active_job = jobs
        .iter()
        .find(|j| j.state == "running" || j.state == "pending")
        .map(|j| j.id.clone());
    let base_version = class.bases.last().map(|b| b.version).unwrap_or(0);
    let row = ClassRow::new(&class, &p);
    let can_delete = row.is_owner || p.is_admin();
    let self_registration = class.self_registration;
    let last_job = class.last_job.clone();
    let waiting = class.waiting.clone();
    let api = format!("/api/classes/{id}");
    let title = format!("Class {}", class.name);
    render_page(&st, Some(&p), "class", "class.html", title, move || {
        let mut c = serde_json::json!(row);
        c["self_registration"] = serde_json::json!(self_registration);
        c["base_version"] = serde_json::json!(base_version);
        c["last_job"] = serde_json::json!(last_job);
        context! {
            class => Value::from_serialize(&c),
            vms => Value::from_serialize(&vms),
            teacher_vm => Value::from_serialize(&teacher_vm),
            invites => Value::from_serialize(&invites),
            jobs => Value::from_serialize(&jobs),
            active_job => active_job,
            waiting => Value::from_serialize(&waiting),
            can_delete => can_delete,
            api => api,
            max_pool => deploy::MAX_POOL,
        }
    })
    .await
}
