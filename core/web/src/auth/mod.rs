//! Accounts, sessions, CSRF, API tokens and authorization (issue 4 items 1–3 and 6).
//!
//! - **Who is calling** is resolved once per request by the [`authenticate`] middleware: a bearer token
//!   (`Authorization: Bearer plx_…`, no CSRF needed) or the session cookie (`proxlab_session`, or
//!   `__Host-proxlab_session` over HTTPS). The result, an [`Authn`], sits in the request extensions; handlers
//!   take [`Principal`] (401 when anonymous) or [`Authn`] (anonymous allowed) as extractors.
//! - **CSRF**: every state-changing request (not GET/HEAD/OPTIONS) that authenticates with the session
//!   cookie must carry the session's token as `X-CSRF-Token` or as the `_csrf` form field, and a present
//!   `Origin` must be the portal's own. Bearer-token requests need neither.
//! - **Route access** ([`Access`]) is declared per route in [`crate::routes`], the one list the router is built
//!   from; anonymous callers get 401 on API routes and a redirect to `/login?next=…` on pages.
//! - **Object access** (this VM, this class) is decided by [`authz::decide`], the one function every
//!   handler asks.
//! - Every response carries the security headers of [`security_headers`].
//!
//! Secrets never leave this module in clear: session ids and tokens are stored as SHA-256 hex; passwords
//! only as argon2id PHC strings, hashed off the async workers ([`password`]).

pub mod access;
pub mod authz;
pub mod clock;
pub mod index;
pub mod throttle;

pub use accounts::password;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pve::Secret;
use rand::RngCore;
use sha2::{Digest, Sha256};
use store::{ApiTokenRecord, AuditRecord, Role, SessionRecord, Store, UserRecord};

pub use access::{Access, HttpMethod, RouteKind, RouteSpec};
pub use authz::{Action, Decision, Target, decide};
pub use clock::{ManualWallClock, SystemWallClock, WallClock};
pub use index::{AccessIndex, VmRef};
pub use password::{HashError, Hasher};
pub use throttle::{Throttle, ThrottleConfig};

use crate::error::AppError;

/// Cookie name over plain HTTP.
pub const COOKIE: &str = "proxlab_session";
/// Cookie name over HTTPS (`__Host-` prefix: the browser insists on `Secure`, `Path=/`, no `Domain`).
pub const COOKIE_SECURE: &str = "__Host-proxlab_session";
/// Header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Form field carrying the CSRF token.
pub const CSRF_FIELD: &str = "_csrf";
pub use accounts::MAX_PASSWORD_BYTES;
/// Longest display name accepted at self-registration and on the admin's user forms (the form's
/// `maxlength`).
pub const MAX_DISPLAY_NAME_CHARS: usize = 128;
/// Body limit of the sign-in routes, bytes (bounds the work a login flood can cause).
pub const AUTH_BODY_LIMIT: usize = 4096;
/// Lifetime of a one-time connect token for a WebSocket upgrade (a cookie alone never opens one).
pub const CONNECT_TOKEN_TTL: Duration = Duration::from_secs(30);
/// Open streams re-check their principal at least this often (expiry by time; changes are noticed at
/// once through the tree watchers).
pub const STREAM_RECHECK: Duration = Duration::from_secs(10);
/// Sessions record `last_seen_at` at most this often (seconds), to keep writes off the read path.
const TOUCH_EVERY_SECS: u64 = 60;

/// Settings of accounts and sessions (`[auth]` in `proxlab.toml`).
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// A session idle longer than this ends (seconds; default 8 h).
    pub session_idle_secs: u64,
    /// A session ends this long after sign-in whatever happens (seconds; default 7 days).
    pub session_absolute_secs: u64,
    /// Set `Secure` on the cookie (and use the `__Host-` name). Default: true when the public URL is https.
    pub cookie_secure: bool,
    /// The portal's own origin `scheme://host[:port]` (from `public_url`); `Origin` headers must equal it.
    /// `None`: compared with the request's `Host` header instead.
    pub public_origin: Option<String>,
    /// Realm users that are admins (`alice@pam`), exact and case-sensitive.
    pub realm_admins: Vec<String>,
    /// PVE groups whose members are admins (read from `GET /access/users/{userid}` at sign-in).
    pub realm_admin_groups: Vec<String>,
    /// Role of a realm user that is not an admin and has no role set by an admin (default student).
    pub realm_default_role: Role,
    /// Cluster whose `/access/ticket` checks realm passwords (default: the default cluster).
    pub realm_cluster: Option<String>,
    /// Reverse proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Sign-in throttling.
    pub throttle: ThrottleConfig,
    /// Concurrent argon2 computations (default `num_cpus / 2`, at least 1).
    pub hash_permits: usize,
    /// Longest wait for a hashing permit before 503 (default 2 s).
    pub hash_wait: Duration,
    /// How often expired sessions (idle or absolute limit) are deleted from the store by a background
    /// task (default 5 min); a request with an expired session deletes it at once anyway.
    pub session_sweep_every: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        AuthConfig {
            session_idle_secs: 8 * 3600,
            session_absolute_secs: 7 * 24 * 3600,
            cookie_secure: false,
            public_origin: None,
            realm_admins: Vec::new(),
            realm_admin_groups: Vec::new(),
            realm_default_role: Role::Student,
            realm_cluster: None,
            trusted_proxies: Vec::new(),
            throttle: ThrottleConfig::default(),
            hash_permits: (cpus / 2).max(1),
            hash_wait: Duration::from_secs(2),
            session_sweep_every: Duration::from_secs(300),
        }
    }
}

/// How a principal authenticated.
#[derive(Clone, Debug)]
pub enum Via {
    /// A browser session: `key` is the SHA-256 hex of its id; `csrf` its CSRF token.
    Session {
        /// Store key of the session.
        key: String,
        /// The session's CSRF token (send it as `X-CSRF-Token` or `_csrf`).
        csrf: Secret,
    },
    /// A bearer API token with public id `id` (`tok_…`).
    Token {
        /// Public id of the token.
        id: String,
    },
}

/// The signed-in user of a request.
#[derive(Clone, Debug)]
pub struct Principal {
    /// User name (`alice`, or `alice@pve` for realm users).
    pub name: String,
    /// Name to show.
    pub display_name: String,
    /// Effective role (realm users are admin only when the config says so).
    pub role: Role,
    /// `local` or `pve`.
    pub realm: String,
    /// Cluster chosen with `POST /api/clusters/switch`, if any.
    pub active_cluster: Option<String>,
    /// Session or token.
    pub via: Via,
}

impl Principal {
    /// True for admins.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// The CSRF token of a session principal (`None` for tokens, which need none).
    pub fn csrf_token(&self) -> Option<&str> {
        match &self.via {
            Via::Session { csrf, .. } => Some(csrf.expose()),
            Via::Token { .. } => None,
        }
    }
}

/// What [`authenticate`] found out about a request: the principal (if any) and the client address.
#[derive(Clone, Debug)]
pub struct Authn {
    /// The signed-in user, `None` when anonymous.
    pub principal: Option<Principal>,
    /// The client's address (the peer, or the first untrusted `X-Forwarded-For` hop behind a trusted proxy).
    pub addr: IpAddr,
}

/// What the authenticate layer found out about the request, if that layer ran.
fn authn_of(parts: &Parts) -> Option<&Authn> {
    parts.extensions.get::<Authn>()
}

impl<S: Send + Sync> FromRequestParts<S> for Authn {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        authn_of(parts)
            .cloned()
            .ok_or_else(|| AppError::Internal("authenticate layer missing".into()))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        authn_of(parts)
            .and_then(|a| a.principal.clone())
            .ok_or(AppError::Unauthorized)
    }
}

/// A one-time permission to open a WebSocket to one VM (a cookie alone is not enough), made by
/// `POST /api/vm/{vmid}/connect-token`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectGrant {
    /// The user it was issued to.
    pub user: String,
    /// Cluster id.
    pub cluster: String,
    /// VMID.
    pub vmid: u32,
    /// `ssh` or `console`.
    pub purpose: String,
    /// Expiry, Unix ms.
    pub expires_ms: u64,
}

/// Accounts, sessions and authorization state shared by all requests.
pub struct AuthState {
    /// The database (users, sessions, tokens, assignments, audit).
    pub store: Store,
    /// Settings.
    pub config: AuthConfig,
    /// The bounded argon2 runner.
    pub hasher: Hasher,
    /// Sign-in throttle.
    pub throttle: Throttle,
    /// Wall clock (injectable).
    pub clock: Arc<dyn WallClock>,
    index: ArcSwap<AccessIndex>,
    /// Rebuilds started so far, and the number of the one the index holds: a rebuild that read the
    /// store before another one must not replace the newer index when it finishes later.
    index_started: AtomicU64,
    index_stored: Mutex<u64>,
    index_dirty: AtomicBool,
    connect: Mutex<HashMap<String, ConnectGrant>>,
    /// Bumped whenever a credential may have lost its power (a user changed, a session removed, a token
    /// changed); open streams re-check their principal on every bump ([`AuthState::until_revoked`]).
    revocations: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for AuthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthState")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// SHA-256 hex of a secret (session id, API token, connect token): the form secrets are stored in.
pub fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// 32 random bytes from the OS, base64url without padding (43 characters).
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

impl AuthState {
    /// Auth state over `store` with the real clock. Builds the access index now and, inside a Tokio
    /// runtime, watches the `assignments` and `classes` trees to rebuild it whenever anyone writes them.
    pub fn new(store: Store, config: AuthConfig) -> Arc<AuthState> {
        Self::with_clock(store, config, Arc::new(SystemWallClock))
    }

    /// Like [`AuthState::new`] with an injected clock (tests).
    pub fn with_clock(store: Store, config: AuthConfig, clock: Arc<dyn WallClock>) -> Arc<AuthState> {
        let hasher = Hasher::new(config.hash_permits, config.hash_wait);
        let throttle = Throttle::new(config.throttle.clone(), clock.clone());
        let index = ArcSwap::from_pointee(AccessIndex::build(&store));
        let st = Arc::new(AuthState {
            store,
            config,
            hasher,
            throttle,
            clock,
            index,
            index_dirty: AtomicBool::new(false),
            index_started: AtomicU64::new(0),
            index_stored: Mutex::new(0),
            connect: Mutex::default(),
            revocations: tokio::sync::watch::Sender::new(0),
        });
        st.watch_trees();
        st.watch_credentials();
        st.sweep_sessions();
        st
    }

    /// Inside a Tokio runtime, deletes expired sessions every [`AuthConfig::session_sweep_every`] (off the
    /// async workers), so sessions nobody comes back with do not pile up until the next restart.
    fn sweep_sessions(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak: Weak<AuthState> = Arc::downgrade(self);
        let every = self.config.session_sweep_every.max(Duration::from_millis(10));
        rt.spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(st) = weak.upgrade() else { return };
                let swept = tokio::task::spawn_blocking(move || st.purge_expired_sessions()).await;
                match swept {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => tracing::info!(sessions = n, "expired sessions removed"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "sweeping expired sessions failed"),
                    Err(e) => tracing::warn!(error = %e, "the session sweep stopped"),
                }
            }
        });
    }

    /// Deletes every session past its idle or absolute limit now; returns how many.
    pub fn purge_expired_sessions(&self) -> Result<usize, store::StoreError> {
        let now = self.clock.now_secs();
        self.store.purge_sessions(
            now.saturating_sub(self.config.session_idle_secs),
            now.saturating_sub(self.config.session_absolute_secs),
        )
    }

    /// Inside a Tokio runtime, watches the `users` and `api_tokens` trees (any write) and the `sessions`
    /// tree (removals: sign-out, expiry, revocation) and bumps [`AuthState::revocations`], whoever wrote.
    fn watch_credentials(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for (raw, removals_only) in [
            (self.store.users.raw().clone(), false),
            (self.store.api_tokens.raw().clone(), false),
            (self.store.sessions.raw().clone(), true),
        ] {
            let weak: Weak<AuthState> = Arc::downgrade(self);
            let mut sub = raw.watch_prefix(Vec::<u8>::new());
            rt.spawn(async move {
                while let Some(ev) = (&mut sub).await {
                    // A session written (sign-in, touch) revokes nothing; one gone does.
                    if removals_only && raw.contains_key(ev.key()).unwrap_or(false) {
                        continue;
                    }
                    let Some(st) = weak.upgrade() else { return };
                    st.revocations.send_modify(|n| *n = n.wrapping_add(1));
                }
            });
        }
    }

    /// True while `p` may still act: its session exists, is within its idle and absolute limits and
    /// belongs to an enabled user of the same session generation (or its token is neither revoked nor
    /// expired and its user enabled), and the user's role is still the one `p` has. A demoted user's
    /// principal is no longer valid (a promotion ends it too; the client reconnects with the new role).
    /// Reads only: nothing is touched or deleted.
    pub fn still_valid(&self, p: &Principal) -> bool {
        let now = self.clock.now_secs();
        let user = match &p.via {
            Via::Session { key, .. } => {
                let Some(s) = self.store.session(key).ok().flatten() else {
                    return false;
                };
                let expired = now.saturating_sub(s.last_seen_at) > self.config.session_idle_secs
                    || now.saturating_sub(s.created_at) > self.config.session_absolute_secs;
                let user = self.store.user(&s.user).ok().flatten();
                match user {
                    Some(u) if !expired && u.session_generation == s.session_generation => u,
                    _ => return false,
                }
            }
            Via::Token { id } => {
                let Some(t) = self
                    .store
                    .tokens_all()
                    .ok()
                    .and_then(|all| all.into_iter().find(|t| &t.id == id))
                else {
                    return false;
                };
                if t.revoked || t.expires_at.is_some_and(|e| e <= now) {
                    return false;
                }
                match self.store.user(&t.user).ok().flatten() {
                    Some(u) => u,
                    None => return false,
                }
            }
        };
        user.name == p.name && !user.disabled && self.effective_role(&user) == p.role
    }

    /// A future that completes as soon as `p` is no longer [`AuthState::still_valid`]: the user was
    /// disabled or changed role, the session was signed out, expired or revoked (password change), the
    /// token revoked. Streams (SSE, WebSockets) select on it and end; a change is noticed at once
    /// through the store's tree watchers, and in any case within [`STREAM_RECHECK`].
    pub fn until_revoked(
        self: &Arc<Self>,
        p: &Principal,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let weak = Arc::downgrade(self);
        let mut rx = self.revocations.subscribe();
        let p = p.clone();
        async move {
            loop {
                rx.borrow_and_update();
                match weak.upgrade() {
                    Some(st) if st.still_valid(&p) => {}
                    _ => return,
                }
                tokio::select! {
                    changed = rx.changed() => {
                        if changed.is_err() {
                            tokio::time::sleep(STREAM_RECHECK).await;
                        }
                    }
                    _ = tokio::time::sleep(STREAM_RECHECK) => {}
                }
            }
        }
    }

    fn watch_trees(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let notify = Arc::new(tokio::sync::Notify::new());
        for raw in [
            self.store.assignments.raw().clone(),
            self.store.classes.raw().clone(),
        ] {
            let weak: Weak<AuthState> = Arc::downgrade(self);
            let notify = notify.clone();
            let mut sub = raw.watch_prefix(Vec::<u8>::new());
            rt.spawn(async move {
                while (&mut sub).await.is_some() {
                    let Some(st) = weak.upgrade() else { return };
                    st.index_dirty.store(true, Ordering::SeqCst);
                    notify.notify_one();
                }
            });
        }
        let weak: Weak<AuthState> = Arc::downgrade(self);
        rt.spawn(async move {
            loop {
                notify.notified().await;
                // Let a burst of writes (a class deployment) settle into one rebuild.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let Some(st) = weak.upgrade() else { return };
                if st.index_dirty.swap(false, Ordering::SeqCst) {
                    st.rebuild_index();
                }
            }
        });
    }

    /// The current access index (cheap: an `Arc` clone).
    pub fn index(&self) -> Arc<AccessIndex> {
        self.index.load_full()
    }

    /// Rebuilds the access index from the store now (called after every assignment or class change made
    /// through this process; the tree watchers cover other writers).
    pub fn rebuild_index(&self) {
        let n = self.index_started.fetch_add(1, Ordering::SeqCst) + 1;
        let built = Arc::new(AccessIndex::build(&self.store));
        let mut stored = self.index_stored.lock().unwrap_or_else(|e| e.into_inner());
        if n > *stored {
            self.index.store(built);
            *stored = n;
        }
    }

    /// Name of the session cookie.
    pub fn cookie_name(&self) -> &'static str {
        if self.config.cookie_secure {
            COOKIE_SECURE
        } else {
            COOKIE
        }
    }

    /// `Set-Cookie` value carrying session id `raw`: `HttpOnly; SameSite=Lax; Path=/` (+ `Secure`).
    pub fn session_cookie(&self, raw: &str) -> HeaderValue {
        let secure = if self.config.cookie_secure { "; Secure" } else { "" };
        let v = format!(
            "{}={raw}; HttpOnly; SameSite=Lax; Path=/; Max-Age={}{secure}",
            self.cookie_name(),
            self.config.session_absolute_secs
        );
        HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// `Set-Cookie` value that deletes the session cookie.
    pub fn clear_cookie(&self) -> HeaderValue {
        let secure = if self.config.cookie_secure { "; Secure" } else { "" };
        let v = format!(
            "{}=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0{secure}",
            self.cookie_name()
        );
        HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The raw session id in the request's cookies, if any.
    pub fn session_id_from(&self, headers: &HeaderMap) -> Option<String> {
        let name = self.cookie_name();
        for h in headers.get_all(header::COOKIE) {
            let Ok(s) = h.to_str() else { continue };
            for pair in s.split(';') {
                if let Some((k, v)) = pair.trim().split_once('=')
                    && k == name
                    && v.len() == 43
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Some(v.to_string());
                }
            }
        }
        None
    }

    /// Starts a new session for `user` (a fresh random id: never one the client brought, so a planted id
    /// cannot be fixed), deleting the session `old_key` if given. Returns the raw id for the cookie and
    /// the stored record.
    pub fn start_session(
        &self,
        user: &UserRecord,
        remote: IpAddr,
        old_key: Option<&str>,
    ) -> Result<(String, SessionRecord), AppError> {
        if let Some(k) = old_key {
            self.store.remove_session(k)?;
        }
        let raw = random_token();
        let now = self.clock.now_secs();
        let rec = SessionRecord {
            user: user.name.clone(),
            csrf_token: random_token(),
            created_at: now,
            last_seen_at: now,
            session_generation: user.session_generation,
            remote_addr: remote.to_string(),
        };
        self.store.put_session(&sha256_hex(&raw), &rec)?;
        Ok((raw, rec))
    }

    /// The role a user has now: realm users are admin only if listed in `realm_admins` or a member of a
    /// `realm_admin_groups` group — never merely because PVE accepted their password.
    pub fn effective_role(&self, u: &UserRecord) -> Role {
        if u.realm == "local" {
            return u.role;
        }
        let listed = self.config.realm_admins.iter().any(|a| a == &u.name)
            || u.realm_groups
                .iter()
                .any(|g| self.config.realm_admin_groups.contains(g));
        match (listed, u.role) {
            (true, _) => Role::Admin,
            (false, Role::Admin) => self.config.realm_default_role,
            (false, r) => r,
        }
    }

    fn principal_of(&self, u: &UserRecord, via: Via) -> Principal {
        Principal {
            name: u.name.clone(),
            display_name: if u.display_name.is_empty() {
                u.name.clone()
            } else {
                u.display_name.clone()
            },
            role: self.effective_role(u),
            realm: u.realm.clone(),
            active_cluster: u.active_cluster.clone(),
            via,
        }
    }

    /// The principal of a request: a valid bearer token, else a valid session cookie, else `None`.
    /// Expired, revoked or disabled credentials count as none. A session idle or old past its limits, or
    /// of an older `session_generation` (password changed, user disabled), is deleted.
    pub fn resolve(&self, headers: &HeaderMap) -> Option<Principal> {
        if let Some(v) = headers.get(header::AUTHORIZATION) {
            let token = v.to_str().ok()?.strip_prefix("Bearer ")?.trim();
            return self.resolve_token(token);
        }
        let raw = self.session_id_from(headers)?;
        self.resolve_session(&raw)
    }

    fn resolve_token(&self, token: &str) -> Option<Principal> {
        if token.is_empty() || token.len() > 200 {
            return None;
        }
        let rec = self.store.token(&sha256_hex(token)).ok()??;
        let now = self.clock.now_secs();
        if rec.revoked || rec.expires_at.is_some_and(|e| e <= now) {
            return None;
        }
        let user = self.store.user(&rec.user).ok()??;
        if user.disabled {
            return None;
        }
        Some(self.principal_of(&user, Via::Token { id: rec.id }))
    }

    fn resolve_session(&self, raw: &str) -> Option<Principal> {
        let key = sha256_hex(raw);
        let s = self.store.session(&key).ok()??;
        let now = self.clock.now_secs();
        let expired = now.saturating_sub(s.last_seen_at) > self.config.session_idle_secs
            || now.saturating_sub(s.created_at) > self.config.session_absolute_secs;
        let user = self.store.user(&s.user).ok().flatten();
        let valid_user = user
            .as_ref()
            .filter(|u| !u.disabled && u.session_generation == s.session_generation);
        let Some(user) = valid_user.filter(|_| !expired) else {
            let _ = self.store.remove_session(&key);
            return None;
        };
        if now.saturating_sub(s.last_seen_at) >= TOUCH_EVERY_SECS {
            let touched = SessionRecord {
                last_seen_at: now,
                ..s.clone()
            };
            let _ = self.store.put_session(&key, &touched);
        }
        Some(self.principal_of(
            user,
            Via::Session {
                key,
                csrf: Secret::new(s.csrf_token),
            },
        ))
    }

    /// Makes an API token for `user`: returns the secret (shown once, never stored) and the record.
    ///
    /// Errors: the user does not exist (404).
    pub fn create_token(
        &self,
        user: &str,
        expires_at: Option<u64>,
        description: &str,
    ) -> Result<(Secret, ApiTokenRecord), AppError> {
        let secret = format!("plx_{}", random_token());
        let id = format!("tok_{}", &sha256_hex(&secret)[..12]);
        let rec = ApiTokenRecord {
            id,
            user: user.to_string(),
            created_at: self.clock.now_secs(),
            expires_at,
            revoked: false,
            description: description.to_string(),
        };
        self.store.create_token(&sha256_hex(&secret), &rec)?;
        Ok((Secret::new(secret), rec))
    }

    /// Appends an audit record: who, from where, what, on what, with what result. Failures to write the
    /// audit log are logged, never answered.
    pub fn audit(&self, who: &str, addr: IpAddr, action: &str, target: &str, result: &str) {
        let rec = AuditRecord {
            at_micros: self.clock.now_millis() * 1000,
            user: who.to_string(),
            remote_addr: addr.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            result: result.to_string(),
        };
        if let Err(e) = self.store.audit(rec) {
            tracing::error!(error = %e, action, "cannot write the audit log");
        }
    }

    /// [`AuthState::audit`] of an action's outcome, `ok` or the error's own words, handing the outcome
    /// back: `let r = st.auth.audited(&p.name, authn.addr, "class.retry", &id, r);`.
    pub fn audited<T, E: std::fmt::Display>(
        &self,
        who: &str,
        addr: IpAddr,
        action: &str,
        target: &str,
        r: Result<T, E>,
    ) -> Result<T, E> {
        let result = match &r {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        self.audit(who, addr, action, target, &result);
        r
    }

    /// Issues a one-time connect token for a WebSocket to `cluster`/`vmid` (valid [`CONNECT_TOKEN_TTL`]).
    pub fn issue_connect_token(&self, user: &str, cluster: &str, vmid: u32, purpose: &str) -> Secret {
        let token = random_token();
        let now = self.clock.now_millis();
        let grant = ConnectGrant {
            user: user.to_string(),
            cluster: cluster.to_string(),
            vmid,
            purpose: purpose.to_string(),
            expires_ms: now + CONNECT_TOKEN_TTL.as_millis() as u64,
        };
        let mut map = self.connect.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, g| g.expires_ms > now);
        map.insert(sha256_hex(&token), grant);
        Secret::new(token)
    }

    /// Takes (and so invalidates) a connect token; `None` if unknown, used or expired.
    pub fn take_connect_token(&self, token: &str) -> Option<ConnectGrant> {
        let now = self.clock.now_millis();
        let grant = self
            .connect
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&sha256_hex(token))?;
        (grant.expires_ms > now).then_some(grant)
    }

    /// Checks the `Origin` of a WebSocket upgrade. It must be present and equal the portal's origin
    /// exactly (scheme, host and port; no prefix or substring match); `null`, foreign and same-site
    /// sibling origins get 403, and so does a missing `Origin`.
    pub fn check_ws_origin(&self, headers: &HeaderMap) -> Result<(), AppError> {
        match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
            Some(o) if self.origin_allowed(o, headers) => Ok(()),
            _ => Err(AppError::Forbidden("WebSocket origin refused".into())),
        }
    }

    /// True if `origin` is the portal's own: equal to `public_origin` when configured, else its
    /// `host[:port]` equals the request's `Host` header.
    pub fn origin_allowed(&self, origin: &str, headers: &HeaderMap) -> bool {
        if let Some(own) = &self.config.public_origin {
            return origin.eq_ignore_ascii_case(own);
        }
        let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
            return false;
        };
        let rest = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        rest.is_some_and(|r| r.eq_ignore_ascii_case(host))
    }

    /// The client address of a request: the TCP peer, or — when the peer is a trusted proxy — the
    /// right-most `X-Forwarded-For` address that is not itself a trusted proxy.
    pub fn client_addr(&self, req: &Request) -> IpAddr {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let trusted = |ip: &IpAddr| self.config.trusted_proxies.iter().any(|n| n.contains(ip));
        if !trusted(&peer) {
            return peer;
        }
        let mut chain: Vec<IpAddr> = Vec::new();
        for h in req.headers().get_all("x-forwarded-for") {
            if let Ok(s) = h.to_str() {
                chain.extend(s.split(',').filter_map(|p| p.trim().parse::<IpAddr>().ok()));
            }
        }
        chain.into_iter().rev().find(|ip| !trusted(ip)).unwrap_or(peer)
    }
}

/// Last event of a stream cut by the gate (`crate::gate`): `event: signed_out` (the client should not
/// reconnect with the same session; doing so answers 401).
pub const SIGNED_OUT_EVENT: &str = "event: signed_out\ndata: {}\n\n";

/// Content-Security-Policy of every response: no inline script, no framing.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; \
                       form-action 'self'; frame-ancestors 'none'";

/// [`CSP`] with inline styles allowed, for the SSH terminal page only: xterm.js's DOM renderer sizes and
/// colours the terminal through `<style>` elements it creates (no nonce support), which `style-src 'self'`
/// blocks (grey text, collapsed spaces). Scripts stay `'self'`.
pub const CSP_TERMINAL: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                                img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; \
                                base-uri 'self'; form-action 'self'; frame-ancestors 'none'";

/// Adds the security headers: CSP ([`CSP`], unless the handler set its own, like [`CSP_TERMINAL`]),
/// `X-Content-Type-Options: nosniff`, `Referrer-Policy: same-origin`, `X-Frame-Options: DENY`; and
/// `Cache-Control: no-store` on JSON and HTML answered to a signed-in user and on every response that
/// sets a cookie (sign-in and registration answers carry the session and its CSRF token).
pub fn security_headers(resp: &mut Response, authenticated: bool) {
    let h = resp.headers_mut();
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    let personal = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json") || ct.starts_with("text/html"));
    if (authenticated && personal) || h.contains_key(header::SET_COOKIE) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// `Strict-Transport-Security` of a portal whose public URL is https: browsers then refuse plain HTTP to
/// it for a year (no `includeSubDomains`: other sites under the same domain are not ours to decide).
pub const HSTS: &str = "max-age=31536000";

/// `?next=` targets: only local absolute paths (`/x`), never `//host`, `/\host`, a scheme or control
/// characters. Anything else becomes `/`.
pub fn safe_next(next: Option<&str>) -> String {
    let Some(n) = next.map(str::trim) else {
        return "/".into();
    };
    let b = n.as_bytes();
    let ok = b.first() == Some(&b'/')
        && !matches!(b.get(1), Some(b'/') | Some(b'\\'))
        && !n.chars().any(|c| c.is_control() || c == '\\')
        && n.len() <= 2048;
    if ok { n.to_string() } else { "/".into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_accepts_only_local_paths() {
        for good in ["/", "/portal", "/vms?cluster=lab", "/a/b#c"] {
            assert_eq!(safe_next(Some(good)), good);
        }
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "http://evil",
            "https:evil",
            "evil",
            "",
            "/\tx",
            "\\\\evil",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/");
    }
}
