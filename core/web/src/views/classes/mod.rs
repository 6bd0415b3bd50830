//! Classes, templates, invites and deployment jobs over HTTP (DESIGN §7b), on top of
//! [`deploy::Deployer`]. Every handler asks [`crate::auth::decide`] first (a class the caller may not see
//! is 404), then the deployer; without a deployer configured the routes answer 503.
//!
//! Errors are `{"error": {"code", "message"}}` with the deployer's codes (`class_full`,
//! `invite_invalid`, `preflight`, `confirmation_required`, `not_owner`, ...) and statuses.

pub mod hours;
pub mod pages;

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Redirect, Response};
use deploy::{ClassSpec, ClassUpdate, DeployError, Deployer, InviteTtl, JobEvent, JobEventKind, PublishMode};
use futures::Stream;
use serde::Deserialize;
use serde_json::{Value, json};
use store::{ClassRecord, ClassSpecs, JobRecord, JobState, Role};
use tokio::sync::broadcast::error::RecvError;

use crate::auth::{Action, Authn, Decision, Principal, Target, decide};
use crate::error::AppError;
use crate::state::AppState;

/// An error of these routes: the web layer's own, or the deployer's (with its code and status).
#[derive(Debug)]
pub enum ClassesError {
    /// An HTTP-layer error (bad body, not found, forbidden).
    App(AppError),
    /// A deployer error.
    Deploy(DeployError),
}

impl From<AppError> for ClassesError {
    fn from(e: AppError) -> Self {
        ClassesError::App(e)
    }
}

impl From<DeployError> for ClassesError {
    fn from(e: DeployError) -> Self {
        ClassesError::Deploy(e)
    }
}

impl IntoResponse for ClassesError {
    fn into_response(self) -> Response {
        match self {
            ClassesError::App(e) => e.into_response(),
            ClassesError::Deploy(DeployError::Script(e)) if e.thrown_status().is_some() => {
                // A site script's `throw #{status, code, message}`: the user gets exactly that.
                let (status, code, message) = e.thrown_status().unwrap_or((502, "script_error", ""));
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
            }
            ClassesError::Deploy(e) => {
                let status = crate::error::deploy_status(&e);
                let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
                    tracing::error!(error = %e, "deploy error");
                    "internal error".to_string()
                } else {
                    e.to_string()
                };
                let mut body = json!({"error": {"code": e.code(), "message": message}});
                if let DeployError::ClassFull { position, .. } = &e {
                    body["error"]["waiting_position"] = json!(position);
                }
                (status, Json(body)).into_response()
            }
        }
    }
}

type Res = Result<Response, ClassesError>;

fn deployer(st: &AppState) -> Result<&Deployer, ClassesError> {
    st.deploy.as_ref().ok_or_else(|| {
        AppError::Unavailable("classes and deployments are not configured on this server".into()).into()
    })
}

fn body<T: for<'de> Deserialize<'de>>(bytes: &Bytes) -> Result<T, ClassesError> {
    let bytes: &[u8] = if bytes.is_empty() { b"{}" } else { bytes };
    serde_json::from_slice(bytes).map_err(|e| AppError::BadRequest(format!("invalid JSON body: {e}")).into())
}

/// Allows `action` on class `id` for `p`, else 404 / 403 (via [`decide`]).
fn allow(st: &AppState, p: &Principal, action: Action, id: &str) -> Result<(), ClassesError> {
    match decide(p, action, &Target::Class(id), &st.auth.index()) {
        Decision::Allow => Ok(()),
        Decision::NotFound => Err(AppError::NotFound(format!("no class {id}")).into()),
        Decision::Forbidden => {
            Err(AppError::Forbidden("only the class's teachers may do this".into()).into())
        }
    }
}

fn teacher_or_admin(p: &Principal) -> Result<(), ClassesError> {
    if matches!(p.role, Role::Teacher | Role::Admin) {
        Ok(())
    } else {
        Err(AppError::Forbidden("teachers and admins only".into()).into())
    }
}

/// A class as JSON: never the invite hash; the large deploy context and plan only in `detail`.
fn class_json(c: &ClassRecord, detail: bool) -> Value {
    let mut v = json!(c);
    if let Some(o) = v.as_object_mut() {
        o.remove("invite_hash");
        o.remove("deploy_ctx");
        if !detail {
            o.remove("plan");
            o.remove("bases");
            o.remove("waiting");
        }
    }
    v
}

/// The view of a class for someone who is in it but does not manage it (a student): what the class
/// page shows them, nothing of its deployment.
fn public_class_json(c: &ClassRecord) -> Value {
    json!({"id": c.id, "name": c.name, "description": c.description, "owner": c.owner,
           "state": c.state, "cluster": c.cluster})
}

/// A job as JSON without its resume parameters (they hold the whole deploy context).
fn job_json(j: &JobRecord) -> Value {
    let mut v = json!(j);
    if let Some(o) = v.as_object_mut() {
        o.remove("params");
    }
    let total = j.steps.len();
    let done = j
        .steps
        .iter()
        .filter(|s| matches!(s.state, JobState::Done | JobState::Failed | JobState::Cancelled))
        .count();
    v["progress"] = json!({"done": done, "total": total,
        "failed": j.steps.iter().filter(|s| s.state == JobState::Failed).count()});
    v
}

fn accepted(v: Value) -> Response {
    (StatusCode::ACCEPTED, Json(v)).into_response()
}

// ---------------------------------------------------------------- classes

/// `GET /api/classes`: admins see every class; others the classes they own, co-own or are in.
pub async fn list_classes(State(st): State<AppState>, p: Principal) -> Res {
    let d = deployer(&st)?;
    let list = if p.is_admin() {
        d.classes()?
    } else {
        d.classes_of(&p.name)?
    };
    let idx = st.auth.index();
    let view = |c: &ClassRecord| {
        if decide(&p, Action::ManageClass, &Target::Class(&c.id), &idx) == Decision::Allow {
            class_json(c, false)
        } else {
            public_class_json(c)
        }
    };
    Ok(Json(json!({"classes": list.iter().map(view).collect::<Vec<_>>()})).into_response())
}

/// Body of `POST /api/classes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateClassBody {
    /// Display name.
    pub name: String,
    /// Cluster id (default: the caller's active cluster).
    #[serde(default)]
    pub cluster: Option<String>,
    /// Template VMID, or `template` by name.
    #[serde(default)]
    pub template_vmid: Option<u32>,
    /// Template name (of a catalogue template open to the caller).
    #[serde(default)]
    pub template: Option<String>,
    /// `qcow2-overlay` (default) or `linked-clone`.
    #[serde(default)]
    pub workflow: Option<String>,
    /// Student VMs.
    #[serde(default)]
    pub pool_size: u32,
    /// Spec overrides `{cores, sockets, memory_mib}` (nothing else: a NIC bridge or any other key is
    /// refused, not ignored).
    #[serde(default)]
    pub specs: SpecsBody,
    /// Node for the VMs.
    #[serde(default)]
    pub node: Option<String>,
    /// Spread VMs over the nodes.
    #[serde(default)]
    pub spread: bool,
    /// Storage for the disks.
    #[serde(default)]
    pub storage: Option<String>,
    /// Students may register from the invite link.
    #[serde(default)]
    pub self_registration: bool,
    /// Shown on the class page.
    #[serde(default)]
    pub description: String,
    /// PVE resource pool.
    #[serde(default)]
    pub pool: Option<String>,
}

/// Spec overrides of a request: only these keys (the VMs' bridges are the template's).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecsBody {
    /// Cores.
    #[serde(default)]
    pub cores: Option<u32>,
    /// Sockets.
    #[serde(default)]
    pub sockets: Option<u32>,
    /// Memory, MiB.
    #[serde(default)]
    pub memory_mib: Option<u64>,
}

impl From<SpecsBody> for ClassSpecs {
    fn from(s: SpecsBody) -> ClassSpecs {
        ClassSpecs {
            cores: s.cores,
            sockets: s.sockets,
            memory_mib: s.memory_mib,
        }
    }
}

/// `POST /api/classes` (teachers, admins): creates a class and starts deploying it → 202
/// `{class, job}`; follow the job with `GET /api/jobs/{id}/events`.
pub async fn create_class(State(st): State<AppState>, p: Principal, authn: Authn, bytes: Bytes) -> Res {
    teacher_or_admin(&p)?;
    let d = deployer(&st)?;
    let b: CreateClassBody = body(&bytes)?;
    let specs = ClassSpecs::from(b.specs);
    // Counts are checked before anything is stored (registering a template by name writes).
    deploy::pool_change(0, b.pool_size, d.max_pool())?;
    deploy::check_specs(&specs)?;
    let cluster = st.cluster_for(&p, b.cluster.as_deref());
    // Only catalogue templates open to the caller; a name is looked up there, never in the cluster.
    let template_vmid = match (b.template_vmid, &b.template) {
        (Some(v), _) => v,
        (None, Some(name)) => match d
            .templates_visible_to(&p.name, p.is_admin())?
            .into_iter()
            .find(|t| t.cluster == cluster && &t.name == name)
        {
            Some(t) => t.vmid,
            None => {
                let why = format!(
                    "no template named {name:?} of cluster {cluster} is in the template catalogue open to you"
                );
                st.auth.audit(&p.name, authn.addr, "class.create", "", &why);
                return Err(AppError::Forbidden(why).into());
            }
        },
        (None, None) => return Err(AppError::BadRequest("give template_vmid or template".into()).into()),
    };
    let spec = ClassSpec {
        name: b.name,
        cluster,
        template_vmid,
        workflow: b.workflow,
        pool_size: b.pool_size,
        specs,
        node: b.node,
        spread: b.spread,
        storage: b.storage,
        self_registration: b.self_registration,
        description: b.description,
        pve_pool: b.pool,
    };
    let result = d.create_class(&p.name, spec).await;
    let target = result.as_ref().map(|(c, _)| c.id.clone()).unwrap_or_default();
    let result = st
        .auth
        .audited(&p.name, authn.addr, "class.create", &target, result);
    let (class, job) = result?;
    st.auth.rebuild_index();
    Ok(accepted(
        json!({"class": class_json(&class, false), "job": job_json(&job)}),
    ))
}

/// `GET /api/classes/{id}`: the class, its VMs with live state and IP, and (for its teachers) the
/// waiting list, invites and recent jobs. Students see only their own VM.
pub async fn get_class(State(st): State<AppState>, p: Principal, Path(id): Path<String>) -> Res {
    allow(&st, &p, Action::ViewClass, &id)?;
    let d = deployer(&st)?;
    let class = d.class(&id)?;
    let manager = decide(&p, Action::ManageClass, &Target::Class(&id), &st.auth.index()) == Decision::Allow;
    let vms = d.class_vm_views(&id)?;
    if !manager {
        let own: Vec<_> = vms.into_iter().filter(|v| v.user == p.name).collect();
        return Ok(Json(json!({"class": public_class_json(&class), "vms": own})).into_response());
    }
    let jobs: Vec<Value> = d.jobs_of_class(&id)?.iter().take(10).map(job_json).collect();
    Ok(Json(json!({
        "class": class_json(&class, true),
        "vms": vms,
        "waiting": class.waiting,
        "invites": d.invites(&id)?,
        "jobs": jobs,
    }))
    .into_response())
}

/// Body of `PUT /api/classes/{id}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateClassBody {
    /// New name.
    #[serde(default)]
    pub name: Option<String>,
    /// New description.
    #[serde(default)]
    pub description: Option<String>,
    /// New spec overrides (for VMs made from now on).
    #[serde(default)]
    pub specs: Option<SpecsBody>,
    /// Self-registration.
    #[serde(default)]
    pub self_registration: Option<bool>,
    /// New pool size (more: VMs are added; fewer: free VMs are removed).
    #[serde(default)]
    pub pool_size: Option<u32>,
}

/// `PUT /api/classes/{id}` (the class's teachers): changes settings; a new pool size starts a job.
pub async fn update_class(
    State(st): State<AppState>,
    p: Principal,
    authn: Authn,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Res {
    allow(&st, &p, Action::ManageClass, &id)?;
    let d = deployer(&st)?;
    let b: UpdateClassBody = body(&bytes)?;
    let specs = b.specs.map(ClassSpecs::from);
    if let Some(n) = b.pool_size {
        deploy::pool_change(d.class(&id)?.pool_size, n, d.max_pool())?;
    }
    if let Some(s) = &specs {
        deploy::check_specs(s)?;
    }
    let r = d
        .modify_class(
            &id,
            &p.name,
            ClassUpdate {
                name: b.name,
                description: b.description,
                specs,
                self_registration: b.self_registration,
                pool_size: b.pool_size,
            },
        )
        .await;
    let r = st.auth.audited(&p.name, authn.addr, "class.update", &id, r);
    let (class, job) = r?;
    Ok(Json(json!({"class": class_json(&class, false), "job": job.as_ref().map(job_json)})).into_response())
}

/// Query of `DELETE /api/classes/{id}`.
#[derive(Debug, Default, Deserialize)]
pub struct ConfirmQuery {
    /// Must equal the class id.
    #[serde(default)]
    pub confirm: Option<String>,
}

/// `DELETE /api/classes/{id}?confirm={id}` (the owner, or an admin): removes the class's VMs (only those
/// Proxlab made; never the template) and the class → 202 `{job}`; 428 without the confirmation.
pub async fn delete_class(
    State(st): State<AppState>,
    p: Principal,
    authn: Authn,
    Path(id): Path<String>,
    Query(q): Query<ConfirmQuery>,
) -> Res {
    allow(&st, &p, Action::ManageClass, &id)?;
    let d = deployer(&st)?;
    let r = d
        .delete_class(
            &id,
            &p.name,
            p.is_admin(),
            q.confirm.as_deref().unwrap_or_default(),
        )
        .await;
    let r = st.auth.audited(&p.name, authn.addr, "class.delete", &id, r);
    Ok(accepted(json!({"job": job_json(&r?)})))
}

// ---------------------------------------------------------------- invites and joining

/// Body of `POST /api/classes/{id}/invite`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InviteBody {
    /// Lifetime in seconds (default 7 days).
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
    /// Never expires (until revoked).
    #[serde(default)]
    pub never: bool,
    /// Most accounts students may create with the link (default: the class's free seats now).
    #[serde(default)]
    pub max_registrations: Option<u64>,
}

/// `POST /api/classes/{id}/invite` (the class's teachers): a new invite link → 201
/// `{id, url, token, expires_at}`. The token is shown only here.
pub async fn create_invite(
    State(st): State<AppState>,
    p: Principal,
    authn: Authn,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Res {
    allow(&st, &p, Action::ManageClass, &id)?;
    let d = deployer(&st)?;
    let b: InviteBody = body(&bytes)?;
    if let Some(s) = b.expires_in_secs
        && s > deploy::MAX_EXPIRY.as_secs()
    {
        return Err(AppError::BadRequest(format!(
            "expires_in_secs {s} is more than one year ({} s)",
            deploy::MAX_EXPIRY.as_secs()
        ))
        .into());
    }
    let ttl = match (b.never, b.expires_in_secs) {
        (true, _) => InviteTtl::Never,
        (false, Some(s)) => InviteTtl::For(Duration::from_secs(s)),
        (false, None) => InviteTtl::Default,
    };
    let r = d.create_invite(&id, &p.name, ttl, b.max_registrations);
    let r = st.auth.audited(&p.name, authn.addr, "class.invite", &id, r);
    let inv = r?;
    let url = match &st.auth.config.public_origin {
        Some(origin) => format!("{}{}", origin.trim_end_matches('/'), inv.path),
        None => inv.path.clone(),
    };
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": inv.record.id, "url": url, "token": inv.token.expose(), "expires_at": inv.record.expires_at})),
    )
        .into_response())
}

/// `GET /api/classes/{id}/invites` (the class's teachers): the invite records (no tokens).
pub async fn list_invites(State(st): State<AppState>, p: Principal, Path(id): Path<String>) -> Res {
    allow(&st, &p, Action::ManageClass, &id)?;
    Ok(Json(json!({"invites": deployer(&st)?.invites(&id)?})).into_response())
}

/// `DELETE /api/classes/{id}/invites/{invite}` (the class's teachers): revokes an invite.
pub async fn revoke_invite(
    State(st): State<AppState>,
    p: Principal,
    authn: Authn,
    Path((id, invite)): Path<(String, String)>,
) -> Res {
    allow(&st, &p, Action::ManageClass, &id)?;
    let r = deployer(&st)?.revoke_invite(&id, &invite);
    let r = st
        .auth
        .audited(&p.name, authn.addr, "class.invite.revoke", &id, r);
    Ok(Json(json!({"invite": r?})).into_response())
}

/// `POST /join/{token}` (signed in; the form of the join page [`pages::join_page`], so the
/// CSRF token and Origin checks of every state-changing request apply): joins the class and redirects to
/// the portal: `/portal?joined=<class>`, `/portal?join=full&class=<class>&position=N` (on the waiting
/// list), or `/portal?join=invalid` (unknown, revoked or expired link). The audit log names the invite
/// by its public id, never by the token.
pub async fn join(State(st): State<AppState>, p: Principal, authn: Authn, Path(token): Path<String>) -> Res {
    let d = deployer(&st)?;
    let invite = d.invite_record(&token).ok();
    let r = d.join(&token, &p.name);
    let (class, target) = match &invite {
        Some(inv) => (inv.class_id.clone(), format!("{} via {}", inv.class_id, inv.id)),
        None => (String::new(), "unknown invite".to_string()),
    };
    let r = st.auth.audited(&p.name, authn.addr, "class.join", &target, r);
    let to = match r {
        Ok(_) => {
            st.auth.rebuild_index();
            format!("/portal?joined={class}")
        }
        Err(DeployError::ClassFull { class, position, .. }) => {
            format!("/portal?join=full&class={class}&position={position}")
        }
        Err(DeployError::InviteInvalid) => "/portal?join=invalid".to_string(),
        Err(e) => return Err(e.into()),
    };
    Ok(Redirect::to(&to).into_response())
}

/// Body of `POST /api/class/{id}/assign`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignBody {
    /// The user to give a VM.
    pub user: String,
}

/// `POST /api/class/{id}/assign` `{user}` (the class's teachers): gives `user` the first free VM →
/// `{outcome: assigned|already_member, vm, assignment}`; 409 `class_full` (user put on the waiting list).
pub async fn assign(
    State(st): State<AppState>,
    p: Principal,
    authn: Authn,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Res {
    allow(&st, &p, Action::ManageClass, &id)?;
    let d = deployer(&st)?;
    let b: AssignBody = body(&bytes)?;
    let r = d.assign(&id, &b.user);
    let r = st.auth.audited(
        &p.name,
        authn.addr,
        "class.assign",
        &format!("{id}:{}", b.user),
        r,
    );
    let out = r?;
    st.auth.rebuild_index();
    Ok(Json(json!(out)).into_response())
}

/// `DELETE /api/class/{id}/assign/{user}` (the class's teachers): takes the VM away from `user`; the VM
/// is reset to the class base (a `reset` job, `vm.reset_job`) before anyone else gets it.
pub async fn unassign(
    State(st): State<AppState>,
    p: Principal,
    authn: Authn,
    Path((id, user)): Path<(String, String)>,
) -> Res {
    allow(&st, &p, Action::ManageClass, &id)?;
    let r = deployer(&st)?.unassign(&id, &user);
    let r = st
        .auth
        .audited(&p.name, authn.addr, "class.unassign", &format!("{id}:{user}"), r);
    let vm = r?;
    st.auth.rebuild_index();
    Ok(Json(json!({"vm": vm})).into_response())
}

// ---------------------------------------------------------------- co-owners, teacher VM, more VMs

/// `GET /api/classes/{id}/co-owners`: `{owner, co_owners}`.
pub async fn list_co_owners(State(st): State<AppState>, p: Principal, Path(id): Path<String>) -> Res {
    allow(&st, &p, Action::ViewClass, &id)?;
    Ok(co_owners_json(&deployer(&st)?.class(&id)?))
}

/// `POST /api/classes/{id}/co-owners` `{user}` (the class owner or an admin; `user` must be a teacher
/// or admin account): 403 `not_owner` for a co-owner, 400 for a student or unknown name.
pub async fn add_co_owner(
    State(st): State<AppState>,
    p: Principal,
    authn: Authn,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Res {
    allow(&st, &p, Action::ManageClass, &id)?;
    let d = deployer(&st)?;
    let b: AssignBody = body(&bytes)?;
    let r = d.add_co_owner(&id, &p.name, p.is_admin(), &b.user);
    let r = st.auth.audited(
        &p.name,
        authn.addr,
        "class.co_owner.add",
        &format!("{id}:{}", b.user),
        r,
    );
    co_owners_changed(&st, r?)
}

/// `DELETE /api/classes/{id}/co-owners/{user}` (the class owner or an admin; a co-owner only
/// themselves): 403 `not_owner` otherwise.
pub async fn remove_co_owner(
    State(st): State<AppState>,
    p: Principal,
    authn: Authn,
    Path((id, user)): Path<(String, String)>,
) -> Res {
    allow(&st, &p, Action::ManageClass, &id)?;
    let r = deployer(&st)?.remove_co_owner(&id, &p.name, p.is_admin(), &user);
    let r = st.auth.audited(
        &p.name,
        authn.addr,
        "class.co_owner.remove",
        &format!("{id}:{user}"),
        r,
    );
    co_owners_changed(&st, r?)
}

/// The answer to a co-owner change: `{owner, co_owners}` of the class, after the access index learnt it.
fn co_owners_changed(st: &AppState, c: ClassRecord) -> Res {
    st.auth.rebuild_index();
    Ok(co_owners_json(&c))
}

fn co_owners_json(c: &ClassRecord) -> Response {
    Json(json!({"owner": c.owner, "co_owners": c.co_owners})).into_response()
}

/// `POST /api/classes/{id}/teacher/{action}` (the class's teachers): `start`, `stop`, `shutdown`,
/// `reboot` on the teacher VM, through [`ops::Ops`] like every power button (one at a time per VM, a
/// locked VM refused by name, Stop always works); waits for the task.
pub async fn teacher_power(
    State(st): State<AppState>,
    p: Principal,
    authn: Authn,
    Path((id, action)): Path<(String, String)>,
) -> Res {
    allow(&st, &p, Action::ManageClass, &id)?;
    let action = match action.as_str() {
        "start" => deploy::PowerAction::Start,
        "stop" => deploy::PowerAction::Stop,
        "shutdown" => deploy::PowerAction::Shutdown,
        "reboot" => deploy::PowerAction::Reboot,
        other => return Err(AppError::NotFound(format!("no action {other}")).into()),
    };
    let vm = deployer(&st)?
        .class_vms(&id)?
        .into_iter()
        .find(|v| v.role == deploy::VmRole::Teacher)
        .ok_or_else(|| AppError::NotFound(format!("class {id} has no teacher VM")))?;
    let r = st.ops.power(&vm.cluster, vm.vmid, action).await;
    match st.auth.audited(&p.name, authn.addr, "class.teacher_vm", &id, r) {
        Ok(_) => Ok(Json(json!({"vm": vm, "action": action.as_str()})).into_response()),
        Err(e) => Ok(crate::error::op_error_response(&e)),
    }
}

/// Body of `POST /api/classes/{id}/vms`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddVmsBody {
    /// How many student VMs to add.
    pub count: u32,
}

/// `POST /api/classes/{id}/vms` `{count}` (the class's teachers): more student VMs → 202 `{job}`.
pub async fn add_vms(
    State(st): State<AppState>,
    p: Principal,
    authn: Authn,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Res {
    allow(&st, &p, Action::ManageClass, &id)?;
    let d = deployer(&st)?;
    let b: AddVmsBody = body(&bytes)?;
    // "count 4294967295 is more than the class limit 500": checked, before anything is stored.
    deploy::pool_after_adding(d.class(&id)?.pool_size, b.count, d.max_pool())?;
    let r = d.add_vms(&id, &p.name, b.count).await;
    let r = st.auth.audited(&p.name, authn.addr, "class.add_vms", &id, r);
    Ok(accepted(json!({"job": job_json(&r?)})))
}

/// `POST /api/classes/{id}/retry` (the class's teachers): retries the class's failed VMs → 202 `{job}`,
/// or 200 `{job: null}` when none failed.
pub async fn retry(State(st): State<AppState>, p: Principal, authn: Authn, Path(id): Path<String>) -> Res {
    allow(&st, &p, Action::ManageClass, &id)?;
    let r = deployer(&st)?.retry_failed(&id, &p.name).await;
    let r = st.auth.audited(&p.name, authn.addr, "class.retry", &id, r);
    Ok(match r? {
        Some(j) => accepted(json!({"job": job_json(&j)})),
        None => Json(json!({"job": null})).into_response(),
    })
}

/// Body of `POST /api/classes/{id}/publish-template`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    /// `next-revert` (default) or `now`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Required with `now`: the students' changes are lost.
    #[serde(default)]
    pub confirm: bool,
}

/// `POST /api/classes/{id}/publish-template` (the class's teachers): the (stopped) teacher VM becomes a
/// new class base → 202 `{job}`. `mode: "now"` re-makes every student VM at once and needs
/// `confirm: true` (428 otherwise: students' changes are lost).
pub async fn publish(
    State(st): State<AppState>,
    p: Principal,
    authn: Authn,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Res {
    allow(&st, &p, Action::ManageClass, &id)?;
    let d = deployer(&st)?;
    let b: PublishBody = body(&bytes)?;
    let mode = match b.mode.as_deref() {
        None | Some("next-revert") => PublishMode::OnNextRevert,
        Some("now") => PublishMode::Now,
        Some(other) => {
            return Err(AppError::BadRequest(format!("mode {other:?}: next-revert or now")).into());
        }
    };
    let r = d.publish(&id, &p.name, mode, b.confirm).await;
    let r = st.auth.audited(&p.name, authn.addr, "class.publish", &id, r);
    Ok(accepted(json!({"job": job_json(&r?)})))
}

// ---------------------------------------------------------------- templates

/// `GET /api/templates` (teachers, admins): the catalogue templates open to the caller (admins: all)
/// with cached specs and visibility.
pub async fn list_templates(State(st): State<AppState>, p: Principal) -> Res {
    teacher_or_admin(&p)?;
    let list = deployer(&st)?.templates_visible_to(&p.name, p.is_admin())?;
    Ok(Json(json!({"templates": list})).into_response())
}

/// `GET /api/templates/by-name/{name}` (teachers, admins): catalogue templates open to the caller with
/// that name (any cluster); 404 when none.
pub async fn template_by_name(State(st): State<AppState>, p: Principal, Path(name): Path<String>) -> Res {
    teacher_or_admin(&p)?;
    let found: Vec<_> = deployer(&st)?
        .templates_by_name(&name)?
        .into_iter()
        .filter(|t| t.visibility.allows(&p.name, p.is_admin()))
        .collect();
    if found.is_empty() {
        return Err(AppError::NotFound(format!("no template named {name}")).into());
    }
    Ok(Json(json!({"templates": found})).into_response())
}

/// `GET /api/templates/stats` (teachers, admins): counts per cluster, classes per template, sync errors,
/// over the catalogue templates open to the caller.
pub async fn template_stats(State(st): State<AppState>, p: Principal) -> Res {
    teacher_or_admin(&p)?;
    Ok(Json(json!(deployer(&st)?.template_stats(&p.name, p.is_admin())?)).into_response())
}

/// `POST /api/templates/sync` (admins): refreshes every registered template's specs.
pub async fn sync_templates(State(st): State<AppState>, p: Principal, authn: Authn) -> Res {
    let r = deployer(&st)?.sync_templates(None).await;
    let r = st.auth.audited(&p.name, authn.addr, "templates.sync", "", r);
    Ok(Json(json!({"templates": r?})).into_response())
}

/// Body of `POST /api/templates`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    /// Cluster id (default: the caller's active cluster).
    #[serde(default)]
    pub cluster: Option<String>,
    /// VMID of the template.
    #[serde(default)]
    pub vmid: Option<u32>,
    /// Or its name.
    #[serde(default)]
    pub name: Option<String>,
    /// Who may use it: `all` (every teacher), `teachers` (those in `teachers`) or `admins`
    /// (default: `admins`).
    #[serde(default)]
    pub visibility: Option<String>,
    /// The teachers of `visibility: "teachers"`.
    #[serde(default)]
    pub teachers: Vec<String>,
}

/// Body of `PUT /api/templates/{cluster}/{vmid}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisibilityBody {
    /// `all`, `teachers` or `admins`.
    pub visibility: String,
    /// The teachers of `visibility: "teachers"`.
    #[serde(default)]
    pub teachers: Vec<String>,
}

/// The stored visibility of a request's `visibility` / `teachers`. Errors: 400 naming the value.
fn visibility_of(
    kind: Option<&str>,
    teachers: Vec<String>,
) -> Result<store::TemplateVisibility, ClassesError> {
    use store::TemplateVisibility as V;
    let v = match kind.unwrap_or("admins") {
        "all" => V::AllTeachers,
        "admins" => V::AdminsOnly,
        "teachers" => V::Teachers {
            names: teachers
                .iter()
                .flat_map(|t| t.split(','))
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect(),
        },
        other => {
            return Err(
                AppError::BadRequest(format!("visibility {other:?}: all, teachers or admins")).into(),
            );
        }
    };
    if !matches!(v, V::Teachers { .. }) && !teachers.is_empty() {
        return Err(
            AppError::BadRequest("teachers are named only with visibility \"teachers\"".into()).into(),
        );
    }
    Ok(v)
}

/// `POST /api/templates` `{cluster?, vmid | name, visibility?, teachers?}` (admins): puts a PVE template
/// into the catalogue → 201 with its specs. Refused with 400: a VM that is not a PVE template, a VM or
/// base Proxlab made for a class, named teachers that are not teacher accounts. Audited.
pub async fn register_template(State(st): State<AppState>, p: Principal, authn: Authn, bytes: Bytes) -> Res {
    let d = deployer(&st)?;
    let b: RegisterBody = body(&bytes)?;
    let cluster = st.cluster_for(&p, b.cluster.as_deref());
    let visibility = visibility_of(b.visibility.as_deref(), b.teachers)?;
    let (r, target) = match (b.vmid, b.name) {
        (Some(v), _) => (deploy::TemplateRef::Vmid(v), format!("{cluster}/{v}")),
        (None, Some(n)) => (deploy::TemplateRef::Name(n.clone()), format!("{cluster}/{n}")),
        (None, None) => return Err(AppError::BadRequest("give vmid or name".into()).into()),
    };
    let out = d.register_template(&cluster, r, visibility).await;
    let out = st
        .auth
        .audited(&p.name, authn.addr, "template.register", &target, out);
    Ok((StatusCode::CREATED, Json(json!(out?))).into_response())
}

/// `PUT /api/templates/{cluster}/{vmid}` `{visibility, teachers?}` (admins): changes who may use a
/// catalogue template → the record. Audited.
pub async fn update_template(
    State(st): State<AppState>,
    p: Principal,
    authn: Authn,
    Path((cluster, vmid)): Path<(String, u32)>,
    bytes: Bytes,
) -> Res {
    let d = deployer(&st)?;
    let b: VisibilityBody = body(&bytes)?;
    let visibility = visibility_of(Some(&b.visibility), b.teachers)?;
    let out = d.set_template_visibility(&cluster, vmid, visibility);
    let result = match &out {
        Ok(t) => format!("ok: {:?}", t.visibility),
        Err(e) => e.to_string(),
    };
    st.auth.audit(
        &p.name,
        authn.addr,
        "template.visibility",
        &format!("{cluster}/{vmid}"),
        &result,
    );
    Ok(Json(json!(out?)).into_response())
}

/// `DELETE /api/templates/{cluster}/{vmid}` (admins): takes a template out of the catalogue (PVE is
/// not touched; classes made from it keep working) → `{unregistered}`. Audited.
pub async fn unregister_template(
    State(st): State<AppState>,
    p: Principal,
    authn: Authn,
    Path((cluster, vmid)): Path<(String, u32)>,
) -> Res {
    let out = deployer(&st)?.unregister_template(&cluster, vmid);
    let out = st.auth.audited(
        &p.name,
        authn.addr,
        "template.unregister",
        &format!("{cluster}/{vmid}"),
        out,
    );
    Ok(Json(json!({"unregistered": out?})).into_response())
}

// ---------------------------------------------------------------- per-teacher limits

/// Body of `PUT /api/teachers/{name}/limits`: `null` (or absent) keeps the configured default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherLimitsBody {
    /// Classes the teacher may own.
    #[serde(default)]
    pub classes: Option<u32>,
    /// VMs the teacher's classes may hold.
    #[serde(default)]
    pub vms: Option<u32>,
}

/// `PUT /api/teachers/{name}/limits` `{classes?, vms?}` (admins): sets a teacher's own limits →
/// their usage `{classes, classes_limit, vms, vms_limit, unlimited}`. Audited.
pub async fn set_teacher_limits(
    State(st): State<AppState>,
    p: Principal,
    authn: Authn,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Res {
    let d = deployer(&st)?;
    let b: TeacherLimitsBody = body(&bytes)?;
    let out = d.set_teacher_limits(
        &name,
        deploy::TeacherLimits {
            classes: b.classes,
            vms: b.vms,
        },
    );
    let result = match &out {
        Ok(u) => format!("ok: {} classes, {} VMs", u.classes_limit, u.vms_limit),
        Err(e) => e.to_string(),
    };
    st.auth
        .audit(&p.name, authn.addr, "teacher.limits", &name, &result);
    Ok(Json(json!(out?)).into_response())
}

// ---------------------------------------------------------------- jobs

/// The job if `p` may see it: admins, the job's starter, the teachers of its class.
fn visible_job(st: &AppState, p: &Principal, id: &str) -> Result<JobRecord, ClassesError> {
    let d = deployer(st)?;
    let hidden = || ClassesError::App(AppError::NotFound(format!("no job {id}")));
    let job = d.job(id).map_err(|_| hidden())?;
    let ok = p.is_admin()
        || job.owner == p.name
        || job.class_id.as_deref().is_some_and(|c| {
            decide(p, Action::ManageClass, &Target::Class(c), &st.auth.index()) == Decision::Allow
        });
    if ok { Ok(job) } else { Err(hidden()) }
}

/// `GET /api/jobs/{id}`: the job with its per-VM steps (state, attempts, detail such as `queued` or
/// `retrying in 1.2 s: …`, error) and progress.
pub async fn get_job(State(st): State<AppState>, p: Principal, Path(id): Path<String>) -> Res {
    let job = visible_job(&st, &p, &id)?;
    Ok(Json(job_json(&job)).into_response())
}

fn sse_of(ev: &JobEvent) -> Option<SseEvent> {
    let name = match ev.kind {
        JobEventKind::Job { .. } => "job",
        JobEventKind::Step { .. } => "step",
        JobEventKind::Progress { .. } => "progress",
        JobEventKind::Script { .. } => "script",
    };
    SseEvent::default().event(name).json_data(ev).ok()
}

fn job_stream(
    d: &Deployer,
    first: SseEvent,
    keep: impl Fn(&JobEvent) -> bool + Send + Sync + 'static,
    ends: impl Fn(&JobEvent) -> bool + Send + Sync + 'static,
    already_over: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static {
    let rx = d.events();
    let rules = std::sync::Arc::new((keep, ends));
    futures::stream::unfold((rx, Some(first), already_over), move |(mut rx, first, over)| {
        let rules = rules.clone();
        async move {
            if let Some(ev) = first {
                return Some((Ok(ev), (rx, None, over)));
            }
            if over {
                return None;
            }
            loop {
                match rx.recv().await {
                    Ok(ev) if (rules.0)(&ev) => {
                        let end = (rules.1)(&ev);
                        if let Some(s) = sse_of(&ev) {
                            return Some((Ok(s), (rx, None, end)));
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => {
                        return Some((
                            Ok(SseEvent::default().event("resync").data("{}")),
                            (rx, None, false),
                        ));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    })
}

/// `GET /api/jobs/{id}/events` (SSE): first `snapshot` (the job as `GET /api/jobs/{id}`), then its
/// `job`, `step`, `progress` and `script` events as they happen; the stream ends after the job ends.
/// A lagging client gets `resync` (fetch the job again). No compression, `Cache-Control: no-cache`,
/// `X-Accel-Buffering: no`, keep-alive comments every 15 s, so proxies neither buffer nor cut the stream.
pub async fn job_events(State(st): State<AppState>, p: Principal, Path(id): Path<String>) -> Res {
    let job = visible_job(&st, &p, &id)?;
    let d = deployer(&st)?;
    let first = SseEvent::default()
        .event("snapshot")
        .json_data(job_json(&job))
        .map_err(|e| AppError::Internal(e.to_string()))?;
    let over = matches!(job.state, JobState::Done | JobState::Failed | JobState::Cancelled);
    let (a, b) = (id.clone(), id);
    let stream = job_stream(
        d,
        first,
        move |ev| ev.job_id == a,
        move |ev| {
            ev.job_id == b
                && matches!(
                    ev.kind,
                    JobEventKind::Job {
                        state: JobState::Done | JobState::Failed | JobState::Cancelled,
                        ..
                    }
                )
        },
        over,
    );
    Ok(crate::render::sse_response(stream))
}

/// `GET /api/classes/{id}/events` (SSE, the class's teachers): every job event of the class (deploys,
/// publishes, moves, deletes), starting with a `snapshot` `{vms, running_jobs}` (the class's VMs and the ids of
/// its jobs running now).
pub async fn class_events(State(st): State<AppState>, p: Principal, Path(id): Path<String>) -> Res {
    allow(&st, &p, Action::ManageClass, &id)?;
    let d = deployer(&st)?;
    // The jobs running now: a page rendered while a job ran learns here that it has ended (its events
    // went out before this stream opened).
    let running: Vec<String> = d
        .jobs_of_class(&id)?
        .iter()
        .filter(|j| matches!(j.state, store::JobState::Running | store::JobState::Pending))
        .map(|j| j.id.clone())
        .collect();
    let first = SseEvent::default()
        .event("snapshot")
        .json_data(json!({"vms": d.class_vm_views(&id)?, "running_jobs": running}))
        .map_err(|e| AppError::Internal(e.to_string()))?;
    let stream = job_stream(
        d,
        first,
        move |ev| ev.class_id.as_deref() == Some(id.as_str()),
        |_| false,
        false,
    );
    Ok(crate::render::sse_response(stream))
}
