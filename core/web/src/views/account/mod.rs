//! Handlers of the auth routes: sign-in/out, the caller's account, cluster switch, connect tokens,
//! direct user↔VM assignments and VM-to-class mappings (DESIGN §7b).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use pve::Secret;
use serde::Deserialize;
use serde_json::{Value, json};
use store::{AssignmentRecord, AssignmentRole, Role, UserRecord};

use crate::auth::authz::{Action, Decision, Target, decide};
use crate::auth::{Authn, MAX_PASSWORD_BYTES, Principal, Via, safe_next, sha256_hex};
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::state::ClusterQuery;

/// Sign-in input, as a form (`application/x-www-form-urlencoded`) or JSON.
#[derive(Debug, Default, Deserialize)]
struct LoginInput {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: Secret,
    #[serde(default)]
    next: Option<String>,
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Reads a JSON or urlencoded body into `T` (form fields are strings).
fn parse_body<T: serde::de::DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> AppResult<T> {
    if is_json(headers) {
        return serde_json::from_slice(body)
            .map_err(|e| AppError::BadRequest(format!("invalid JSON body: {e}")));
    }
    let map: serde_json::Map<String, Value> = url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect();
    serde_json::from_value(Value::Object(map)).map_err(|e| AppError::BadRequest(format!("invalid form: {e}")))
}

fn busy() -> Response {
    let mut r =
        AppError::Unavailable("too many sign-ins at once; try again in a moment".into()).into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    r
}

/// What the audit log writes as the user of a failed sign-in whose typed name matches no account.
pub const UNKNOWN_ACCOUNT: &str = "unknown account";

/// The 429 of a throttled sign-in or registration: the reason in plain words and `Retry-After` (whole
/// seconds, at least 1).
fn throttled((wait, scope): (std::time::Duration, crate::auth::throttle::Scope)) -> Response {
    let mut r = AppError::TooManyRequests(scope.message().into()).into_response();
    let secs = wait.as_millis().div_ceil(1000).max(1).to_string();
    if let Ok(v) = HeaderValue::from_str(&secs) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// `POST /login`: form or JSON `{username, password, next}`.
///
/// Success: a new session (fresh id; any session the request carried is deleted — no fixation), the
/// cookie set, and `303 See Other` to `next` (local paths only, else `/`) for forms, or
/// `200 {user, role, csrf_token, next}` for JSON. Failure answers the same for an unknown user, a wrong
/// password and a disabled account: `401 invalid_credentials` (JSON) or `303 /login?error=invalid`
/// (form). 400 for a password over 1,024 bytes (before hashing), 413 over the 4 KiB body limit, 429 with
/// `Retry-After` while the client address, its network (/24, /64) or the whole portal is throttled
/// ([`crate::auth::throttle`]), 503 with `Retry-After` when hashing is saturated.
///
/// Local names are matched lower-case; names with `@` are Proxmox realm users checked against the realm
/// cluster's `POST /access/ticket`.
pub async fn login(State(st): State<AppState>, authn: Authn, headers: HeaderMap, body: Bytes) -> Response {
    let json_mode = is_json(&headers);
    let input: LoginInput = match parse_body(&headers, &body) {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    if input.password.expose().len() > MAX_PASSWORD_BYTES {
        return AppError::BadRequest(format!("passwords are at most {MAX_PASSWORD_BYTES} bytes"))
            .into_response();
    }
    let name = input.username.trim();
    if name.is_empty() || name.len() > store::accounts::MAX_USER_NAME {
        return AppError::BadRequest("user name missing or too long".into()).into_response();
    }
    let next = safe_next(input.next.as_deref());
    let auth = st.auth.clone();
    if let Some(refused) = auth.throttle.refused(authn.addr) {
        return throttled(refused);
    }
    let realm = name.contains('@');
    let account = if realm {
        name.to_string()
    } else {
        name.to_ascii_lowercase()
    };
    let delay = auth.throttle.account_delay(&account);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let user = if realm {
        realm_login(&st, &account, input.password).await
    } else {
        match local_login(&st, &account, input.password).await {
            Ok(u) => u,
            Err(HashErrorKind::Busy) => return busy(),
            Err(HashErrorKind::Failed(e)) => return AppError::Internal(e).into_response(),
        }
    };
    let Some(user) = user else {
        auth.throttle.record_failure(&account, authn.addr);
        // A typed name that matches no account is not written down: it is often a password typed
        // into the wrong field, or a name an attacker is probing.
        let known = auth.store.user(&account).ok().flatten().is_some();
        let who = if known { account.as_str() } else { UNKNOWN_ACCOUNT };
        auth.audit(who, authn.addr, "login", "", "fail");
        return if json_mode {
            let body =
                json!({"error": {"code": "invalid_credentials", "message": "wrong user name or password"}});
            (StatusCode::UNAUTHORIZED, Json(body)).into_response()
        } else {
            let enc: String = url::form_urlencoded::byte_serialize(next.as_bytes()).collect();
            Redirect::to(&format!("/login?error=invalid&next={enc}")).into_response()
        };
    };
    auth.throttle.record_success(&account);
    let old = auth.session_id_from(&headers).map(|raw| sha256_hex(&raw));
    let (raw, session) = match auth.start_session(&user, authn.addr, old.as_deref()) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    auth.audit(&user.name, authn.addr, "login", "", "ok");
    let cookie = auth.session_cookie(&raw);
    let mut resp = if json_mode {
        Json(json!({
            "user": user.name, "role": auth.effective_role(&user), "csrf_token": session.csrf_token, "next": next,
        }))
        .into_response()
    } else {
        Redirect::to(&next).into_response()
    };
    resp.headers_mut().append(header::SET_COOKIE, cookie);
    resp
}

enum HashErrorKind {
    Busy,
    Failed(String),
}

/// Checks a local password; `Ok(None)` for any failure (unknown, disabled, wrong), after the same work.
async fn local_login(
    st: &AppState,
    name: &str,
    password: Secret,
) -> Result<Option<UserRecord>, HashErrorKind> {
    let auth = &st.auth;
    let user = auth
        .store
        .user(name)
        .ok()
        .flatten()
        .filter(|u| u.realm == "local");
    let phc = user.as_ref().and_then(|u| u.password_hash.clone());
    let verified = auth
        .hasher
        .verify(phc, password.clone())
        .await
        .map_err(|e| match e {
            crate::auth::HashError::Busy => HashErrorKind::Busy,
            crate::auth::HashError::Failed(m) => HashErrorKind::Failed(m),
        })?;
    let Some(user) = user.filter(|u| verified.ok && !u.disabled) else {
        return Ok(None);
    };
    if verified.needs_rehash {
        match auth.hasher.hash(password).await {
            Ok(h) => {
                if let Err(e) = auth.store.set_password_hash(&user.name, h, false) {
                    tracing::warn!(error = %e, user = %user.name, "re-hash not stored");
                }
            }
            Err(e) => tracing::warn!(error = %e, user = %user.name, "re-hash failed"),
        }
    }
    Ok(Some(user))
}

/// Checks a realm user's password against the realm cluster; creates/refreshes the user on success.
async fn realm_login(st: &AppState, name: &str, password: Secret) -> Option<UserRecord> {
    let auth = &st.auth;
    let cluster = auth
        .config
        .realm_cluster
        .clone()
        .unwrap_or_else(|| st.config.default_cluster.clone());
    let Some(client) = st.syncer.client(&cluster).cloned() else {
        tracing::warn!(%cluster, "realm sign-in: no such cluster to check the password with");
        return None;
    };
    let pve_name = match client.check_credentials(name, &password).await {
        Ok(n) => n,
        Err(pve::PveError::InvalidCredentials { .. }) => return None,
        Err(e) => {
            tracing::warn!(error = %e, %cluster, "realm sign-in: the cluster could not check the password");
            return None;
        }
    };
    let existing = auth.store.user(&pve_name).ok().flatten();
    if existing.as_ref().is_some_and(|u| u.disabled) {
        return None;
    }
    let mut groups = Vec::new();
    if !auth.config.realm_admin_groups.is_empty() {
        let path = format!(
            "/access/users/{}",
            url::form_urlencoded::byte_serialize(pve_name.as_bytes()).collect::<String>()
        );
        match client.get_value(&path, &[]).await {
            Ok(v) => {
                groups = match v.get("groups") {
                    Some(Value::Array(a)) => a.iter().filter_map(|g| g.as_str().map(String::from)).collect(),
                    Some(Value::String(s)) => s
                        .split(',')
                        .map(|g| g.trim().to_string())
                        .filter(|g| !g.is_empty())
                        .collect(),
                    _ => Vec::new(),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, user = %pve_name, "cannot read the user's PVE groups; not an admin by group")
            }
        }
    }
    let listed = auth.config.realm_admins.iter().any(|a| a == &pve_name)
        || groups.iter().any(|g| auth.config.realm_admin_groups.contains(g));
    let role = if listed {
        Role::Admin
    } else {
        auth.config.realm_default_role
    };
    let now = auth.clock.now_secs();
    match auth
        .store
        .upsert_realm_user(&pve_name, role, auth.config.realm_default_role, groups, now)
    {
        Ok(u) => Some(u),
        Err(e) => {
            tracing::error!(error = %e, "cannot store the realm user");
            None
        }
    }
}

/// `POST /logout`: deletes the session and clears the cookie; forms get `303 /login`, JSON `{ok: true}`.
pub async fn logout(State(st): State<AppState>, p: Principal, authn: Authn, headers: HeaderMap) -> Response {
    if let Via::Session { key, .. } = &p.via
        && let Err(e) = st.auth.store.remove_session(key)
    {
        return AppError::from(e).into_response();
    }
    st.auth.audit(&p.name, authn.addr, "logout", "", "ok");
    let mut resp = if is_json(&headers) || headers.get(crate::auth::CSRF_HEADER).is_some() {
        Json(json!({"ok": true})).into_response()
    } else {
        Redirect::to("/login").into_response()
    };
    resp.headers_mut()
        .append(header::SET_COOKIE, st.auth.clear_cookie());
    resp
}

/// `GET /api/me`: `{user, display_name, role, realm, via: "session"|"token", csrf_token (sessions only),
/// active_cluster}`.
pub async fn me(State(st): State<AppState>, p: Principal) -> Json<Value> {
    let active = st.cluster_for(&p, None);
    Json(json!({
        "user": p.name, "display_name": p.display_name, "role": p.role, "realm": p.realm,
        "via": match p.via { Via::Session { .. } => "session", Via::Token { .. } => "token" },
        "csrf_token": p.csrf_token(), "active_cluster": active,
    }))
}

#[derive(Debug, Deserialize)]
struct SwitchInput {
    cluster: String,
}

/// `POST /api/clusters/switch` `{cluster}`: sets the caller's active cluster (bare-VMID paths resolve in
/// it). 404 for an unknown cluster.
pub async fn switch_cluster(
    State(st): State<AppState>,
    p: Principal,
    authn: Authn,
    headers: HeaderMap,
    body: Bytes,
) -> AppResult<Json<Value>> {
    let input: SwitchInput = parse_body(&headers, &body)?;
    if !st.inventory.snapshot().clusters.contains_key(&input.cluster) {
        return Err(AppError::NotFound(format!("no cluster {}", input.cluster)));
    }
    st.auth
        .store
        .update_user(&p.name, |u| u.active_cluster = Some(input.cluster.clone()))?;
    st.auth
        .audit(&p.name, authn.addr, "cluster.switch", &input.cluster, "ok");
    Ok(Json(json!({"active_cluster": input.cluster})))
}

#[derive(Debug, Default, Deserialize)]
struct ConnectInput {
    #[serde(default)]
    purpose: Option<String>,
}

/// `POST /api/vm/{vmid}/connect-token` `{purpose: "ssh"|"console"}`: a one-time token (valid 30 s) that
/// a WebSocket upgrade to this VM must present (a cookie alone is not enough); 404 for a VM the caller may
/// not use.
pub async fn connect_token(
    State(st): State<AppState>,
    p: Principal,
    Path(vmid): Path<u32>,
    Query(q): Query<ClusterQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> AppResult<Json<Value>> {
    let input: ConnectInput = if body.is_empty() {
        ConnectInput::default()
    } else {
        parse_body(&headers, &body)?
    };
    let purpose = input.purpose.unwrap_or_else(|| "ssh".into());
    if !matches!(purpose.as_str(), "ssh" | "console") {
        return Err(AppError::BadRequest("purpose is ssh or console".into()));
    }
    let cluster = st.authorize_vm(&p, vmid, q.cluster.as_deref(), Action::ConnectVm)?;
    let token = st.auth.issue_connect_token(&p.name, &cluster, vmid, &purpose);
    Ok(Json(json!({
        "token": token.expose(), "expires_in": crate::auth::CONNECT_TOKEN_TTL.as_secs(), "cluster": cluster, "vmid": vmid,
        "purpose": purpose,
    })))
}

/// `GET /api/user-vm-assignments[?user=NAME]`: admins see all; others see the assignments of VMs they may
/// see (their own, and for teachers those of their classes).
pub async fn list_assignments(
    State(st): State<AppState>,
    p: Principal,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> AppResult<Json<Value>> {
    let idx = st.auth.index();
    let all = st.auth.store.assignments_all()?;
    let list: Vec<&AssignmentRecord> = all
        .iter()
        .filter(|a| q.get("user").is_none_or(|u| &a.user == u))
        .filter(|a| {
            decide(
                &p,
                Action::ViewVm,
                &Target::Vm {
                    cluster: &a.cluster,
                    vmid: a.vmid,
                },
                &idx,
            ) == Decision::Allow
        })
        .collect();
    Ok(Json(json!({"assignments": list})))
}

#[derive(Debug, Deserialize)]
struct AssignmentInput {
    #[serde(default)]
    user: String,
    vmid: u32,
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    class_id: Option<String>,
    #[serde(default)]
    role: Option<AssignmentRole>,
    #[serde(default)]
    baseline_snapshot: Option<String>,
}

fn make_assignment(
    st: &AppState,
    p: &Principal,
    input: AssignmentInput,
    default_role: AssignmentRole,
) -> AppResult<AssignmentRecord> {
    let cluster = st.cluster_for(p, input.cluster.as_deref());
    if st.inventory.snapshot().guest(&cluster, input.vmid).is_none() {
        return Err(AppError::NotFound(format!(
            "no VM {} in cluster {cluster}",
            input.vmid
        )));
    }
    if let Some(c) = &input.class_id
        && st.auth.store.classes.get(c)?.is_none()
    {
        return Err(AppError::NotFound(format!("no class {c}")));
    }
    if let Some(s) = &input.baseline_snapshot
        && !valid_snapshot_name(s)
    {
        return Err(AppError::BadRequest(format!(
            "snapshot name {s:?}: a letter, then letters, digits, '-' or '_' (2 to 40 characters)"
        )));
    }
    let rec = AssignmentRecord {
        id: String::new(),
        cluster,
        vmid: input.vmid,
        user: input.user,
        class_id: input.class_id,
        role: input.role.unwrap_or(default_role),
        baseline_snapshot: input.baseline_snapshot.filter(|s| !s.is_empty()),
        created_at: st.auth.clock.now_secs(),
    };
    let made = st.auth.store.create_assignment(rec)?;
    st.auth.rebuild_index();
    Ok(made)
}

/// PVE's snapshot-name rule (`pve-configid`): a letter, then letters, digits, `-`, `_`; 2–40 characters.
fn valid_snapshot_name(s: &str) -> bool {
    (2..=40).contains(&s.len())
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// `POST /api/user-vm-assignments` `{user, vmid, cluster?, class_id?, role?, baseline_snapshot?}` (admin):
/// gives a VM to a user; 201 with the record; 404 for an unknown user, VM or class; 409 if it exists.
pub async fn create_assignment(
    State(st): State<AppState>,
    p: Principal,
    authn: Authn,
    headers: HeaderMap,
    body: Bytes,
) -> AppResult<Response> {
    let input: AssignmentInput = parse_body(&headers, &body)?;
    let what = format!(
        "{}/{} -> {}",
        input.cluster.clone().unwrap_or_default(),
        input.vmid,
        input.user
    );
    if input.user.is_empty() {
        return Err(AppError::BadRequest("user is required".into()));
    }
    // A success is audited under the assignment's own cluster (the input may leave it out).
    let r = make_assignment(&st, &p, input, AssignmentRole::Direct);
    let target = match &r {
        Ok(a) => format!("{}/{} -> {}", a.cluster, a.vmid, a.user),
        Err(_) => what,
    };
    let a = st
        .auth
        .audited(&p.name, authn.addr, "assignment.create", &target, r)?;
    Ok((StatusCode::CREATED, Json(json!(a))).into_response())
}

/// `DELETE /api/user-vm-assignments/{id}` (admin): removes an assignment; `{deleted: id}`; 404 if unknown.
/// The assignment that gives a class's student VM to a student is not removed but released: the
/// student is unassigned and the VM reset to the class base before anyone else gets it
/// ([`deploy::Deployer::unassign`]; `reset_job` in the answer); 409 when that VM has nobody.
pub async fn delete_assignment(
    State(st): State<AppState>,
    p: Principal,
    authn: Authn,
    Path(id): Path<String>,
) -> AppResult<Json<Value>> {
    if let Some(out) = release_class_vm(&st, &id)? {
        st.auth.rebuild_index();
        st.auth.audit(
            &p.name,
            authn.addr,
            "assignment.delete",
            &id,
            "ok: unassigned, VM reset",
        );
        return Ok(Json(out));
    }
    let res = st.auth.store.remove_assignment(&id);
    st.auth.rebuild_index();
    let a = st
        .auth
        .audited(&p.name, authn.addr, "assignment.delete", &id, res)?;
    Ok(Json(
        json!({"deleted": a.id, "cluster": a.cluster, "vmid": a.vmid, "user": a.user}),
    ))
}

/// If assignment `id` is the one that gives a class's student VM to its user, unassigns that user
/// through the deployer (the VM is reset before anyone else gets it) and returns the answer; `None`
/// for any other assignment.
fn release_class_vm(st: &AppState, id: &str) -> AppResult<Option<Value>> {
    let (Some(d), Some(a)) = (st.deploy.as_ref(), st.auth.store.assignments.get(id)?) else {
        return Ok(None);
    };
    let Some(class_id) = a.class_id.clone() else {
        return Ok(None);
    };
    let own = d
        .class_vm(&a.cluster, a.vmid)
        .map_err(|e| AppError::Internal(e.to_string()))?
        .is_some_and(|v| v.assignment_id == id && v.role == deploy::VmRole::Student);
    if !own {
        return Ok(None);
    }
    if a.user.is_empty() {
        return Err(AppError::Conflict(format!(
            "assignment {id} is class {class_id}'s own record of VM {}; nobody has the VM",
            a.vmid
        )));
    }
    let vm = d.unassign(&class_id, &a.user).map_err(|e| match e {
        deploy::DeployError::NotFound { .. } => AppError::NotFound(e.to_string()),
        deploy::DeployError::Conflict(m) => AppError::Conflict(m),
        other => AppError::Internal(other.to_string()),
    })?;
    Ok(Some(
        json!({"deleted": id, "cluster": a.cluster, "vmid": a.vmid, "user": a.user,
                    "reset_job": vm.reset_job}),
    ))
}

/// `GET /api/vm-class-mappings` (admin): assignments that put a VM into a class.
pub async fn list_mappings(State(st): State<AppState>) -> AppResult<Json<Value>> {
    let all = st.auth.store.assignments_all()?;
    let list: Vec<&AssignmentRecord> = all.iter().filter(|a| a.class_id.is_some()).collect();
    Ok(Json(json!({"mappings": list})))
}

/// `POST /api/vm-class-mappings` `{vmid, class_id, cluster?, user?, role?, baseline_snapshot?}` (admin):
/// puts an existing VM into a class (role `student` unless given); 201; 404 for an unknown VM or class.
pub async fn create_mapping(
    State(st): State<AppState>,
    p: Principal,
    authn: Authn,
    headers: HeaderMap,
    body: Bytes,
) -> AppResult<Response> {
    let input: AssignmentInput = parse_body(&headers, &body)?;
    if input.class_id.as_deref().is_none_or(str::is_empty) {
        return Err(AppError::BadRequest("class_id is required".into()));
    }
    let what = format!(
        "{}/{} -> class {}",
        input.cluster.clone().unwrap_or_default(),
        input.vmid,
        input.class_id.clone().unwrap_or_default()
    );
    let r = make_assignment(&st, &p, input, AssignmentRole::Student);
    let a = st.auth.audited(&p.name, authn.addr, "mapping.create", &what, r)?;
    Ok((StatusCode::CREATED, Json(json!(a))).into_response())
}

#[derive(Deserialize)]
struct RegisterInput {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: Secret,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    invite: String,
}

pub use crate::auth::MAX_DISPLAY_NAME_CHARS;

/// Shortest password accepted at self-registration.
pub const MIN_REGISTER_PASSWORD: usize = 8;

/// `POST /register` (public; form or JSON: `username`, `password`, `display_name`, `invite`): a student
/// creates a local account from an invite link whose class allows self-registration, is signed in, and
/// goes on to `/join/{invite}` (303 for forms; `200 {user, next, csrf_token}` for JSON).
///
/// Errors: 403 `registration_closed` when the invite is invalid, expired or its class does not allow
/// self-registration (no account is made); 400 for a bad name (`@`, too long) or a password shorter
/// than 8 or longer than 1,024 bytes; 409 when the name is taken; 409 `invite_used_up` when the invite's
/// registration cap (default: the class's free seats when it was made) is used up; 429 `invite_busy`
/// past the invite's registrations per minute (`Retry-After: 60`); 429 while the address is throttled;
/// 503 when hashing is saturated. The new account is a student; the request is audited.
pub async fn register(State(st): State<AppState>, authn: Authn, headers: HeaderMap, body: Bytes) -> Response {
    let json_mode = is_json(&headers);
    let input: RegisterInput = match parse_body(&headers, &body) {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let invite = input.invite.clone();
    let resp = register_inner(&st, &authn, &headers, input, json_mode).await;
    // Forms go back to the sign-in page with the reason; JSON callers get the error itself.
    let status = resp.status();
    if json_mode || status.is_redirection() || status.is_success() {
        return resp;
    }
    let refused = resp.extensions().get::<RegisterRefusal>().map(|r| r.0);
    let code = match (refused, status) {
        (Some(code), _) => code,
        (None, StatusCode::CONFLICT) => "name_taken",
        (None, StatusCode::BAD_REQUEST) => "bad_input",
        (None, StatusCode::FORBIDDEN) => "registration_closed",
        _ => return resp,
    };
    let next: String = url::form_urlencoded::byte_serialize(format!("/join/{invite}").as_bytes()).collect();
    Redirect::to(&format!("/login?error={code}&next={next}")).into_response()
}

/// The error code of a refused self-registration that its status alone does not tell (the sign-in
/// page's `error=`).
#[derive(Clone, Copy, Debug)]
struct RegisterRefusal(&'static str);

/// A refused invite slot as an answer: 409 `invite_used_up` or 429 `invite_busy` (with `Retry-After`).
fn claim_refused(e: deploy::DeployError) -> Response {
    let (status, code) = match &e {
        deploy::DeployError::LimitReached(_) => (StatusCode::CONFLICT, "invite_used_up"),
        deploy::DeployError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "invite_busy"),
        deploy::DeployError::Forbidden(_) | deploy::DeployError::InviteInvalid => {
            (StatusCode::FORBIDDEN, "registration_closed")
        }
        _ => return AppError::Internal(e.to_string()).into_response(),
    };
    let mut r = (
        status,
        Json(json!({"error": {"code": code, "message": e.to_string()}})),
    )
        .into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    }
    r.extensions_mut().insert(RegisterRefusal(code));
    r
}

async fn register_inner(
    st: &AppState,
    authn: &Authn,
    headers: &HeaderMap,
    input: RegisterInput,
    json_mode: bool,
) -> Response {
    let auth = st.auth.clone();
    if let Some(refused) = auth.throttle.refused(authn.addr) {
        return throttled(refused);
    }
    let allowed = st
        .deploy
        .as_ref()
        .and_then(|d| d.invite_class(&input.invite).ok())
        .is_some_and(|c| c.self_registration);
    if !allowed {
        auth.throttle.record_failure("register", authn.addr);
        let body = json!({"error": {"code": "registration_closed",
            "message": "this invite link does not allow creating an account; ask your teacher for an account"}});
        return (StatusCode::FORBIDDEN, Json(body)).into_response();
    }
    let pw_len = input.password.expose().len();
    if !(MIN_REGISTER_PASSWORD..=MAX_PASSWORD_BYTES).contains(&pw_len) {
        return AppError::BadRequest(format!(
            "passwords need {MIN_REGISTER_PASSWORD} to {MAX_PASSWORD_BYTES} bytes"
        ))
        .into_response();
    }
    let name = input.username.trim().to_ascii_lowercase();
    if name.is_empty() || name.len() > store::accounts::MAX_USER_NAME {
        return AppError::BadRequest("user name missing or too long".into()).into_response();
    }
    if let Err(msg) = store::validate_local_name(&name) {
        return AppError::BadRequest(msg).into_response();
    }
    // Refused, not cut: a stored name is never silently shortened.
    if let Err(msg) = store::accounts::validate_text(
        "a display name",
        &input.display_name,
        MAX_DISPLAY_NAME_CHARS,
        true,
    ) {
        return AppError::BadRequest(msg).into_response();
    }
    // One of the invite's registration slots, before the (costly) hash: at most its cap in all and a
    // few per minute, whatever arrives at once.
    let Some(d) = st.deploy.as_ref() else {
        return AppError::Unavailable("classes are not configured on this server".into()).into_response();
    };
    // The invite by its public id: no part of the token (a secret that opens the class) is logged.
    let invite_id = d
        .invite_record(&input.invite)
        .ok()
        .map(|i| i.id)
        .unwrap_or_else(|| "unknown invite".into());
    let claim = match d.claim_registration(&input.invite) {
        Ok(c) => c,
        Err(e) => {
            auth.audit(&name, authn.addr, "user.register", &invite_id, &e.to_string());
            return claim_refused(e);
        }
    };
    let give_back = |claim| {
        if let Err(e) = d.release_registration(claim) {
            tracing::error!(error = %e, "giving back an invite registration slot");
        }
    };
    let hash = match auth.hasher.hash(input.password).await {
        Ok(h) => h,
        Err(crate::auth::password::HashError::Busy) => {
            give_back(claim);
            return busy();
        }
        Err(e) => {
            give_back(claim);
            return AppError::Internal(e.to_string()).into_response();
        }
    };
    let display = input.display_name.trim();
    let user = match auth.store.create_local_user(UserRecord {
        name: name.clone(),
        display_name: if display.is_empty() {
            name.clone()
        } else {
            display.to_string()
        },
        role: store::Role::Student,
        password_hash: Some(hash),
        created_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        ..UserRecord::default()
    }) {
        Ok(u) => u,
        Err(store::StoreError::Conflict { .. }) => {
            give_back(claim);
            return AppError::Conflict(format!("the user name {name:?} is taken; choose another"))
                .into_response();
        }
        Err(e) => {
            give_back(claim);
            return AppError::from(e).into_response();
        }
    };
    auth.audit(&user.name, authn.addr, "user.register", &invite_id, "ok");
    let old = auth.session_id_from(headers).map(|raw| sha256_hex(&raw));
    let (raw, session) = match auth.start_session(&user, authn.addr, old.as_deref()) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let next = format!(
        "/join/{}",
        url::form_urlencoded::byte_serialize(input.invite.as_bytes()).collect::<String>()
    );
    let mut resp = if json_mode {
        Json(json!({"user": user.name, "next": next, "csrf_token": session.csrf_token})).into_response()
    } else {
        Redirect::to(&next).into_response()
    };
    resp.headers_mut()
        .append(header::SET_COOKIE, auth.session_cookie(&raw));
    resp
}
