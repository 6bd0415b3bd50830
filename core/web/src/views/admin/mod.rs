//! The admin pages (issue 4 item 5) and the JSON endpoints only they need.
//!
//! Pages (all `Admin` in [`crate::routes`], themed, context documented in `themes/README.md`):
//! - `GET /admin/users` — [`users_page`], `admin/users.html`: create, role, disable, reset password.
//! - `GET /admin/clusters` — [`clusters_page`], `admin/clusters.html`: sync status per cluster with a
//!   trigger, the caller's active cluster, "add a cluster" with a connection test and the
//!   `proxlab.toml` snippet to paste (clusters live in the config file; the running server does not
//!   add or enable clusters by itself).
//! - `GET /admin/assignments` — [`assignments_page`], `admin/assignments.html`: direct user↔VM
//!   assignments and VM-to-class mappings (`/api/user-vm-assignments`, `/api/vm-class-mappings`).
//! - `GET /admin/audit[?q=TEXT][&limit=N]` — [`audit_page`], `admin/audit.html`: who did what, when,
//!   from where, with what result.
//!
//! JSON (admins; bodies are JSON; every change is audited):
//! - `GET /api/users` — [`list_users`]; `POST /api/users` — [`create_user`];
//!   `PUT /api/users/{name}` — [`update_user`]; `POST /api/users/{name}/password` — [`reset_password`];
//! - `POST /api/clusters/test` — [`test_cluster`]: tries a PVE API URL + token + fingerprint.
//!
//! The pages call these with `static/admin.js` (fetch with `X-CSRF-Token`). Passwords and token
//! secrets are never logged, audited or sent back.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use minijinja::{Value, context};
use pve::{Auth, ClusterProbe, PveConfig, Secret, Tls};
use serde::{Deserialize, Serialize};
use serde_json::json;
use store::{AssignmentRecord, Role, UserRecord};

use crate::auth::{Authn, HashError, MAX_PASSWORD_BYTES, Principal};
use crate::error::{AppError, AppResult};
use crate::render::{ClusterView, render_page};
use crate::state::AppState;

/// Shortest password accepted for a local account (characters), as `proxlab user add` demands.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// Audit entries shown by default on `/admin/audit`.
pub const AUDIT_DEFAULT: usize = 200;

/// Most audit entries one page shows.
pub const AUDIT_MAX: usize = 5000;

/// Whole-request timeout of a connection test, seconds.
const TEST_TIMEOUT_SECS: u64 = 10;

fn body_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> AppResult<T> {
    serde_json::from_slice(body).map_err(|e| AppError::BadRequest(format!("invalid JSON body: {e}")))
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Admin => "admin",
        Role::Teacher => "teacher",
        Role::Student => "student",
    }
}

fn parse_role(s: &str) -> AppResult<Role> {
    match s {
        "admin" => Ok(Role::Admin),
        "teacher" => Ok(Role::Teacher),
        "student" => Ok(Role::Student),
        other => Err(AppError::BadRequest(format!(
            "role {other:?}: use admin, teacher or student"
        ))),
    }
}

// ---- users ---------------------------------------------------------------------------------------

/// A user as the admin pages and `GET /api/users` show it (never the password hash).
#[derive(Clone, Debug, Serialize)]
pub struct UserRow {
    /// User name (local names lower-case; realm names as Proxmox spells them, `alice@pve`).
    pub name: String,
    /// Name to show.
    pub display_name: String,
    /// Stored role: `admin`, `teacher`, `student`.
    pub role: &'static str,
    /// Role in force: for realm users, admin only when `[auth] realm_admins` / `realm_admin_groups`
    /// say so, whatever is stored.
    pub effective_role: &'static str,
    /// `local` or `pve` (Proxmox realm: the password is checked by the cluster and cannot be reset here).
    pub realm: String,
    /// Disabled accounts cannot sign in; their sessions and tokens stop working.
    pub disabled: bool,
    /// Unix seconds of creation (0 if unknown).
    pub created_at: u64,
    /// API tokens that are neither revoked nor expired.
    pub active_tokens: usize,
    /// True for the caller's own account (it cannot be disabled or demoted from here).
    pub is_self: bool,
    /// For teacher and admin accounts when classes are configured: the classes and VMs they own
    /// against their limits, and the limits an admin set for them.
    pub limits: Option<deploy::TeacherUsage>,
}

fn user_rows(st: &AppState, me: &str) -> AppResult<Vec<UserRow>> {
    let now = st.auth.clock.now_secs();
    let mut usages = match &st.deploy {
        Some(d) => d
            .teacher_usages()
            .map_err(|e| AppError::Internal(e.to_string()))?,
        None => Default::default(),
    };
    let mut tokens: HashMap<String, usize> = HashMap::new();
    for t in st.auth.store.tokens_all()? {
        if !t.revoked && t.expires_at.is_none_or(|e| e > now) {
            *tokens.entry(t.user).or_default() += 1;
        }
    }
    Ok(st
        .auth
        .store
        .users_all()?
        .into_iter()
        .map(|u| {
            let mut row = row_of(st, &u, me, tokens.get(&u.name).copied().unwrap_or(0));
            row.limits = usages.remove(&u.name);
            row
        })
        .collect())
}

fn row_of(st: &AppState, u: &UserRecord, me: &str, active_tokens: usize) -> UserRow {
    UserRow {
        name: u.name.clone(),
        display_name: u.display_name.clone(),
        role: role_name(u.role),
        effective_role: role_name(st.auth.effective_role(u)),
        realm: u.realm.clone(),
        disabled: u.disabled,
        created_at: u.created_at,
        active_tokens,
        is_self: u.name == me,
        limits: None,
    }
}

/// `GET /admin/users`: `admin/users.html` with `users` ([`UserRow`]s by name), `roles`
/// (`["student", "teacher", "admin"]`) and `min_password` ([`MIN_PASSWORD_CHARS`]).
pub async fn users_page(State(st): State<AppState>, p: Principal) -> Response {
    let users = match user_rows(&st, &p.name) {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let default_limits = st.deploy.as_ref().map(|d| {
        let l = &d.config().limits;
        context! { classes => l.classes_per_teacher, vms => l.vms_per_teacher }
    });
    render_page(
        &st,
        Some(&p),
        "admin/users",
        "admin/users.html",
        "Users".into(),
        move || {
            context! {
                users => Value::from_serialize(&users),
                roles => vec!["student", "teacher", "admin"],
                min_password => MIN_PASSWORD_CHARS,
                default_limits => default_limits,
            }
        },
    )
    .await
}

/// `GET /api/users`: `{"users": [UserRow…]}` by name.
pub async fn list_users(State(st): State<AppState>, p: Principal) -> AppResult<Json<serde_json::Value>> {
    Ok(Json(json!({"users": user_rows(&st, &p.name)?})))
}

/// Body of `POST /api/users`.
#[derive(Debug, Deserialize)]
struct NewUser {
    #[serde(default)]
    name: String,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    password: Secret,
}

fn check_password(pw: &Secret) -> AppResult<()> {
    let p = pw.expose();
    if p.len() > MAX_PASSWORD_BYTES {
        return Err(AppError::BadRequest(format!(
            "passwords are at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    if p.chars().count() < MIN_PASSWORD_CHARS {
        return Err(AppError::BadRequest(format!(
            "a password needs at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    Ok(())
}

async fn hash_password(st: &AppState, pw: Secret) -> AppResult<String> {
    st.auth.hasher.hash(pw).await.map_err(|e| match e {
        HashError::Busy => AppError::Unavailable("the server is busy hashing passwords; try again".into()),
        HashError::Failed(m) => AppError::Internal(m),
    })
}

/// `POST /api/users` `{name, display_name?, role, password}`: creates a local account. The name is
/// stored lower-case: 1–64 letters, digits, `.`, `_`, `-`, never `@` (realm users are created by
/// their first sign-in). The password (at least [`MIN_PASSWORD_CHARS`] characters, at most 1,024
/// bytes) is hashed with argon2id off the async workers. 201 with the [`UserRow`]; 400 for a bad
/// name, role or password; 409 if the name is taken; 503 when hashing is saturated.
pub async fn create_user(State(st): State<AppState>, p: Principal, authn: Authn, body: Bytes) -> Response {
    let input: NewUser = match body_json(&body) {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let name = input.name.trim().to_ascii_lowercase();
    let r = async {
        store::accounts::validate_local_name(&name).map_err(AppError::BadRequest)?;
        let role = parse_role(input.role.trim())?;
        check_password(&input.password)?;
        if st.auth.store.user(&name)?.is_some() {
            return Err(AppError::Conflict(format!("a user named {name} already exists")));
        }
        let hash = hash_password(&st, input.password).await?;
        let display = store::accounts::validate_text(
            "a display name",
            &input.display_name,
            crate::auth::MAX_DISPLAY_NAME_CHARS,
            true,
        )
        .map_err(AppError::BadRequest)?;
        let rec = st.auth.store.create_local_user(UserRecord {
            name: name.clone(),
            display_name: if display.is_empty() { name.clone() } else { display },
            role,
            password_hash: Some(hash),
            created_at: st.auth.clock.now_secs(),
            ..Default::default()
        })?;
        Ok(row_of(&st, &rec, &p.name, 0))
    }
    .await;
    match st.auth.audited(&p.name, authn.addr, "user.create", &name, r) {
        Ok(row) => (StatusCode::CREATED, Json(json!(row))).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Body of `PUT /api/users/{name}`: any of the three fields.
#[derive(Debug, Default, Deserialize)]
struct UserChange {
    display_name: Option<String>,
    role: Option<String>,
    disabled: Option<bool>,
}

/// `PUT /api/users/{name}` `{display_name?, role?, disabled?}`: changes an account. Disabling ends
/// its sessions at once (and its tokens stop working); enabling lets it sign in again. A role change
/// takes effect on the user's next request. Either ends the user's open event streams, terminals and
/// consoles within a second ([`crate::auth::AuthState::until_revoked`]). The caller cannot disable or demote their own account
/// (409), so a site always keeps an admin who can sign in. 200 with the [`UserRow`]; 404 for an
/// unknown user; 400 for a bad role.
pub async fn update_user(
    State(st): State<AppState>,
    p: Principal,
    authn: Authn,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let r = async {
        let change: UserChange = body_json(&body)?;
        let Some(_) = st.auth.store.user(&name)? else {
            return Err(AppError::NotFound(format!("no user {name}")));
        };
        let role = change.role.as_deref().map(|r| parse_role(r.trim())).transpose()?;
        let display = change
            .display_name
            .as_deref()
            .map(|d| {
                store::accounts::validate_text(
                    "a display name",
                    d,
                    crate::auth::MAX_DISPLAY_NAME_CHARS,
                    false,
                )
            })
            .transpose()
            .map_err(AppError::BadRequest)?;
        if name == p.name {
            if change.disabled == Some(true) {
                return Err(AppError::Conflict("you cannot disable your own account".into()));
            }
            if role.is_some_and(|r| r != Role::Admin) {
                return Err(AppError::Conflict(
                    "you cannot take the admin role from your own account".into(),
                ));
            }
        }
        let mut rec = st.auth.store.update_user(&name, |u| {
            if let Some(d) = &display {
                u.display_name = d.clone();
            }
            if let Some(r) = role {
                u.role = r;
            }
        })?;
        if let Some(d) = change.disabled {
            rec = st.auth.store.set_user_disabled(&name, d)?;
        }
        let tokens = user_rows(&st, &p.name)?
            .into_iter()
            .find(|u| u.name == name)
            .map(|u| u.active_tokens)
            .unwrap_or(0);
        Ok(row_of(&st, &rec, &p.name, tokens))
    }
    .await;
    let what = {
        let c: UserChange = serde_json::from_slice(&body).unwrap_or_default();
        let mut parts = Vec::new();
        if let Some(r) = &c.role {
            parts.push(format!("role={r}"));
        }
        if let Some(d) = c.disabled {
            parts.push(if d {
                "disabled".into()
            } else {
                "enabled".to_string()
            });
        }
        if c.display_name.is_some() {
            parts.push("display_name".into());
        }
        format!("{name} ({})", parts.join(", "))
    };
    match st.auth.audited(&p.name, authn.addr, "user.update", &what, r) {
        Ok(row) => Json(json!(row)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Body of `POST /api/users/{name}/password`.
#[derive(Debug, Deserialize)]
struct NewPassword {
    #[serde(default)]
    password: Secret,
}

/// `POST /api/users/{name}/password` `{password}`: sets a local account's password (argon2id, off
/// the async workers) and ends every session of that account. `{ok: true, user, sessions_revoked:
/// true}`; 404 unknown user; 409 for a Proxmox-realm user (its password lives in Proxmox); 400 for a
/// password shorter than [`MIN_PASSWORD_CHARS`] or over 1,024 bytes.
pub async fn reset_password(
    State(st): State<AppState>,
    p: Principal,
    authn: Authn,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let r = async {
        let input: NewPassword = body_json(&body)?;
        let Some(user) = st.auth.store.user(&name)? else {
            return Err(AppError::NotFound(format!("no user {name}")));
        };
        if user.realm != "local" {
            return Err(AppError::Conflict(format!(
                "{name} signs in with Proxmox: change the password in Proxmox"
            )));
        }
        check_password(&input.password)?;
        let hash = hash_password(&st, input.password).await?;
        st.auth.store.set_password_hash(&name, hash, true)?;
        Ok(())
    }
    .await;
    match st.auth.audited(&p.name, authn.addr, "user.password", &name, r) {
        Ok(()) => Json(json!({"ok": true, "user": name, "sessions_revoked": true})).into_response(),
        Err(e) => e.into_response(),
    }
}

// ---- clusters ------------------------------------------------------------------------------------

/// A cluster on `/admin/clusters`: its [`ClusterView`] plus the sync details.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterAdminView {
    /// The overview fields (`id`, `name`, `status`, `reason`, `stale_since`, ...).
    #[serde(flatten)]
    pub view: ClusterView,
    /// Unix seconds of the last sync tick (successful or not), or none.
    pub last_tick_at: Option<u64>,
    /// Duration of the last tick, milliseconds.
    pub last_duration_ms: u64,
    /// PVE requests made by the sync since the server started.
    pub requests_total: u64,
    /// Failed ticks since the server started.
    pub failures_total: u64,
    /// Problems to fix that do not stop the sync (e.g. `token lacks VM.Audit on /vms`).
    pub warnings: Vec<String>,
    /// True for the default cluster (bare VMIDs of users without an active cluster).
    pub default: bool,
    /// True for the caller's active cluster.
    pub active: bool,
}

/// `GET /admin/clusters`: `admin/clusters.html` with `clusters` ([`ClusterAdminView`]s by id),
/// `active_cluster` (the caller's, str) and `default_cluster` (str). Clusters are configured in
/// `proxlab.toml` (`[[cluster]]`, `enabled = false` to pause one); the page tests a new cluster's
/// URL, token and fingerprint with `POST /api/clusters/test` and shows the section to paste.
pub async fn clusters_page(State(st): State<AppState>, p: Principal) -> Response {
    let snap = st.inventory.snapshot();
    let active = st.cluster_for(&p, None);
    let default = st.config.default_cluster.clone();
    let clusters: Vec<ClusterAdminView> = snap
        .clusters
        .values()
        .map(|c| ClusterAdminView {
            view: ClusterView::from(c),
            last_tick_at: c.last_tick_at,
            last_duration_ms: c.last_duration_ms,
            requests_total: c.requests_total,
            failures_total: c.failures_total,
            warnings: c.warnings.clone(),
            default: c.id == default,
            active: c.id == active,
        })
        .collect();
    render_page(
        &st,
        Some(&p),
        "admin/clusters",
        "admin/clusters.html",
        "Clusters".into(),
        move || {
            context! {
                clusters => Value::from_serialize(&clusters),
                active_cluster => active,
                default_cluster => default,
            }
        },
    )
    .await
}

/// Body of `POST /api/clusters/test`.
#[derive(Debug, Default, Deserialize)]
struct ClusterTest {
    #[serde(default)]
    url: String,
    #[serde(default)]
    token_id: String,
    #[serde(default)]
    token_secret: Secret,
    #[serde(default)]
    fingerprint: Option<String>,
}

/// `POST /api/clusters/test` `{url, token_id, token_secret, fingerprint?}`: connects to a Proxmox VE
/// API the way the sync would (API token `user@realm!tokenid`; the certificate pinned by its SHA-256
/// fingerprint, or the system's CAs when none is given) and reads `GET /version`, `GET /nodes` and
/// `GET /cluster/resources?type=vm`. Nothing is stored.
///
/// Answers 200 `{ok: true, version, release, nodes: [{node, status}], guests}` when all three
/// worked, 200 `{ok: false, error: {code, message}}` with PVE's (or the TLS/connection) error when
/// not — so the page shows the real reason — and 400 for a missing or malformed field.
pub async fn test_cluster(State(st): State<AppState>, p: Principal, authn: Authn, body: Bytes) -> Response {
    let input: ClusterTest = match body_json(&body) {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let url = input.url.trim().to_string();
    let client = match test_client(&input) {
        Ok(c) => c,
        Err(e) => {
            st.auth
                .audit(&p.name, authn.addr, "cluster.test", &url, &e.to_string());
            return e.into_response();
        }
    };
    let (result, body) = match client.run().await {
        Ok(pve::ClusterCheck {
            version: v,
            nodes,
            guests,
        }) => {
            let nodes: Vec<_> = nodes
                .iter()
                .map(|n| json!({"node": n.node, "status": n.status}))
                .collect();
            (
                "ok".to_string(),
                json!({"ok": true, "version": v.version, "release": v.release, "nodes": nodes, "guests": guests}),
            )
        }
        Err(e) => {
            let app = AppError::from(e);
            let msg = app.to_string();
            (
                msg.clone(),
                json!({"ok": false, "error": {"code": app.code(), "message": msg}}),
            )
        }
    };
    st.auth.audit(&p.name, authn.addr, "cluster.test", &url, &result);
    Json(body).into_response()
}

fn test_client(input: &ClusterTest) -> AppResult<ClusterProbe> {
    let url: url::Url = input
        .url
        .trim()
        .parse()
        .map_err(|e| AppError::BadRequest(format!("url: {e} (e.g. https://pve1.example.org:8006)")))?;
    if url.scheme() != "https" || url.host_str().is_none() {
        return Err(AppError::BadRequest(
            "url: the Proxmox VE API is https://HOST:8006".into(),
        ));
    }
    let id = input.token_id.trim();
    let valid_id = id
        .split_once('!')
        .is_some_and(|(user, tok)| user.contains('@') && !tok.is_empty());
    if !valid_id {
        return Err(AppError::BadRequest(
            "token_id: user@realm!tokenid, e.g. root@pam!proxlab".into(),
        ));
    }
    if input.token_secret.expose().trim().is_empty() {
        return Err(AppError::BadRequest("token_secret is required".into()));
    }
    let tls = match input
        .fingerprint
        .as_deref()
        .map(str::trim)
        .filter(|f| !f.is_empty())
    {
        Some(f) => Tls::Fingerprint(f.parse().map_err(|_| {
            AppError::BadRequest(
                "fingerprint: the SHA-256 of the certificate, 32 hex pairs AA:BB:… (`pvenode cert info`)"
                    .into(),
            )
        })?),
        None => Tls::SystemRoots,
    };
    let auth = Auth::Token {
        id: id.to_string(),
        secret: Secret::new(input.token_secret.expose().trim().to_string()),
    };
    let mut cfg = PveConfig::new(url, auth, tls);
    cfg.timeout = Duration::from_secs(TEST_TIMEOUT_SECS);
    ClusterProbe::new(cfg).map_err(|e| AppError::BadRequest(e.to_string()))
}

// ---- assignments ---------------------------------------------------------------------------------

/// An assignment as `/admin/assignments` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct AssignmentRow {
    /// Assignment id (for `DELETE /api/user-vm-assignments/{id}`).
    pub id: String,
    /// Cluster id.
    pub cluster: String,
    /// VMID.
    pub vmid: u32,
    /// The VM's name in the inventory, or none when the VM is gone.
    pub vm_name: Option<String>,
    /// User name, or an empty string for a class VM not given to anyone.
    pub user: String,
    /// Class id, or none.
    pub class_id: Option<String>,
    /// Class name, or none.
    pub class_name: Option<String>,
    /// `direct`, `student`, `teacher` or `base`.
    pub role: String,
    /// Snapshot a revert rolls back to, or none.
    pub baseline_snapshot: Option<String>,
    /// Unix seconds of creation.
    pub created_at: u64,
}

/// A class in the pickers of `/admin/assignments`.
#[derive(Clone, Debug, Serialize)]
pub struct ClassOption {
    /// Class id.
    pub id: String,
    /// Class name.
    pub name: String,
}

/// `GET /admin/assignments`: `admin/assignments.html` with `direct` (direct user↔VM assignments),
/// `mappings` (assignments that put a VM into a class), both [`AssignmentRow`]s by cluster and VMID;
/// `users` (names, for the pickers), `classes` ([`ClassOption`]s) and `clusters` (ids) and
/// `default_cluster`.
pub async fn assignments_page(State(st): State<AppState>, p: Principal) -> Response {
    let data = (|| -> AppResult<_> {
        let snap = st.inventory.snapshot();
        let classes: BTreeMap<String, String> = st
            .auth
            .store
            .classes
            .values()?
            .into_iter()
            .map(|c| {
                let name = if c.name.is_empty() { c.id.clone() } else { c.name };
                (c.id, name)
            })
            .collect();
        let mut all: Vec<AssignmentRecord> = st.auth.store.assignments_all()?;
        all.sort_by(|a, b| (&a.cluster, a.vmid, &a.user).cmp(&(&b.cluster, b.vmid, &b.user)));
        let row = |a: &AssignmentRecord| AssignmentRow {
            id: a.id.clone(),
            cluster: a.cluster.clone(),
            vmid: a.vmid,
            vm_name: snap.guest(&a.cluster, a.vmid).map(|g| g.name.clone()),
            user: a.user.clone(),
            class_id: a.class_id.clone(),
            class_name: a
                .class_id
                .as_ref()
                .map(|c| classes.get(c).cloned().unwrap_or_else(|| c.clone())),
            role: serde_json::to_value(a.role)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            baseline_snapshot: a.baseline_snapshot.clone(),
            created_at: a.created_at,
        };
        let direct: Vec<AssignmentRow> = all
            .iter()
            .filter(|a| a.role == store::AssignmentRole::Direct)
            .map(row)
            .collect();
        let mappings: Vec<AssignmentRow> = all.iter().filter(|a| a.class_id.is_some()).map(row).collect();
        let users: Vec<String> = st.auth.store.users_all()?.into_iter().map(|u| u.name).collect();
        let classes: Vec<ClassOption> = classes
            .into_iter()
            .map(|(id, name)| ClassOption { id, name })
            .collect();
        let clusters: Vec<String> = snap.clusters.keys().cloned().collect();
        Ok((direct, mappings, users, classes, clusters))
    })();
    let (direct, mappings, users, classes, clusters) = match data {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    let default = st.cluster_for(&p, None);
    render_page(
        &st,
        Some(&p),
        "admin/assignments",
        "admin/assignments.html",
        "Assignments".into(),
        move || {
            context! {
                direct => Value::from_serialize(&direct),
                mappings => Value::from_serialize(&mappings),
                users => users,
                classes => Value::from_serialize(&classes),
                clusters => clusters,
                default_cluster => default,
            }
        },
    )
    .await
}

// ---- audit ---------------------------------------------------------------------------------------

/// `?q=` and `?limit=` of `/admin/audit`.
#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    /// Show only entries whose user, address, action, target or result contains this text
    /// (case-insensitive).
    pub q: Option<String>,
    /// How many of the newest entries to look at (default [`AUDIT_DEFAULT`], at most [`AUDIT_MAX`]).
    pub limit: Option<usize>,
}

/// One audit entry on `/admin/audit`.
#[derive(Clone, Debug, Serialize)]
pub struct AuditRow {
    /// Unix seconds.
    pub at: u64,
    /// Who (user name; the attempted name for failed sign-ins).
    pub user: String,
    /// From where (client address).
    pub remote_addr: String,
    /// What (`login`, `vm.start`, `user.create`, ...).
    pub action: String,
    /// On what (`lab/4001`, a user name, ...).
    pub target: String,
    /// `ok` or the error text (`fail` for a refused sign-in).
    pub result: String,
    /// True when `result` is `ok`.
    pub ok: bool,
}

/// `GET /admin/audit[?q=TEXT][&limit=N]`: `admin/audit.html` with `entries` ([`AuditRow`]s, newest
/// first), `q` (the filter, str), `limit` (int) and `count`.
pub async fn audit_page(State(st): State<AppState>, p: Principal, Query(aq): Query<AuditQuery>) -> Response {
    let limit = aq.limit.unwrap_or(AUDIT_DEFAULT).clamp(1, AUDIT_MAX);
    let q = aq.q.unwrap_or_default().trim().to_string();
    let needle = q.to_lowercase();
    let records = match st.auth.store.audit_recent(limit) {
        Ok(r) => r,
        Err(e) => return AppError::from(e).into_response(),
    };
    let entries: Vec<AuditRow> = records
        .into_iter()
        .filter(|r| {
            needle.is_empty()
                || [&r.user, &r.remote_addr, &r.action, &r.target, &r.result]
                    .iter()
                    .any(|f| f.to_lowercase().contains(&needle))
        })
        .map(|r| AuditRow {
            at: r.at_micros / 1_000_000,
            ok: r.result == "ok",
            user: r.user,
            remote_addr: r.remote_addr,
            action: r.action,
            target: r.target,
            result: r.result,
        })
        .collect();
    render_page(
        &st,
        Some(&p),
        "admin/audit",
        "admin/audit.html",
        "Audit log".into(),
        move || {
            context! {
                count => entries.len(),
                entries => Value::from_serialize(&entries),
                q => q,
                limit => limit,
            }
        },
    )
    .await
}
