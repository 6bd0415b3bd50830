//! [`PveClient`]: raw calls with auth, timeouts, read retries and error classification, plus the
//! typed endpoints Proxlab uses.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use rand::Rng;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tracing::Instrument;
use url::Url;

use crate::auth::{Auth, Clock, Credentials, SystemClock, Ticket, auth_headers, parse_login};
use crate::error::{classify, classify_task_failure};
use crate::models::{
    AgentInterface, AgentInterfacesAnswer, ClusterResource, ClusterStatusEntry, GuestConfig, GuestKind,
    GuestStatus, LxcInterface, NodeInfo, Permissions, PowerAction, SnapshotInfo, StorageInfo, StorageVolume,
    TaskOutcome, TaskStatus, Upid, VersionInfo,
};
use crate::tls::{Tls, client_config};
use crate::{PveError, Secret};

/// Characters kept as they are in a path segment or a strictly encoded value: RFC 3986 unreserved.
const STRICT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes one path segment (node, storage, snapshot name, UPID) so it cannot change the path.
fn seg(s: &str) -> String {
    utf8_percent_encode(s, STRICT).to_string()
}

/// Encodes SSH public keys for the cloud-init `sshkeys` option: keys joined with `\n`, then
/// strictly percent-encoded (only `A-Z a-z 0-9 - _ . ~` stay; space is `%20`, never `+`). The HTTP
/// layer form-encodes the result once more, as PVE expects.
pub fn encode_sshkeys<S: AsRef<str>>(keys: &[S]) -> String {
    let joined = keys
        .iter()
        .map(|k| k.as_ref().trim())
        .filter(|k| !k.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    utf8_percent_encode(&joined, STRICT).to_string()
}

/// Connection settings for one PVE cluster.
#[derive(Clone, Debug)]
pub struct PveConfig {
    /// `https://host:8006` (any path is ignored; calls go to `/api2/json`).
    pub base_url: Url,
    /// API token or user/password.
    pub auth: Auth,
    /// How the server certificate is trusted.
    pub tls: Tls,
    /// Whole-request timeout, connect to last body byte (default 15 s).
    pub timeout: Duration,
    /// TCP + TLS connect timeout (default 5 s).
    pub connect_timeout: Duration,
    /// Extra attempts for a GET that failed to connect, timed out, or got 502/503/595 (default 2).
    /// Writes are never retried, except once after a refused (401) ticket.
    pub read_retries: u32,
    /// First retry delay, doubled per attempt, ±50 % jitter (default 200 ms).
    pub retry_backoff: Duration,
    /// Age after which a login ticket is renewed before use (default 1 h; PVE tickets live 2 h).
    pub ticket_renew_after: Duration,
    /// Time source for the ticket age (tests pass a [`crate::ManualClock`]).
    pub clock: Arc<dyn Clock>,
}

impl PveConfig {
    /// Settings with the defaults above.
    pub fn new(base_url: Url, auth: Auth, tls: Tls) -> Self {
        PveConfig {
            base_url,
            auth,
            tls,
            timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            read_retries: 2,
            retry_backoff: Duration::from_millis(200),
            ticket_renew_after: Duration::from_secs(3600),
            clock: Arc::new(SystemClock),
        }
    }
}

struct Inner {
    cfg: PveConfig,
    http: reqwest::Client,
    /// `https://host:8006/api2/json`, no trailing slash.
    api_base: String,
    ticket: tokio::sync::Mutex<Option<Ticket>>,
    /// Held while logging in or renewing: one login at a time (single-flight).
    login_lock: tokio::sync::Mutex<()>,
    generation: AtomicU64,
}

/// A client for one PVE cluster. Cheap to clone (one shared connection pool, ticket and TLS trust);
/// build one per cluster so certificate pins never mix.
///
/// Every call has the configured timeout. GETs are retried on connection failures, timeouts and
/// 502/503/595 with jittered exponential backoff; writes are not. With password auth the ticket is
/// renewed once older than [`PveConfig::ticket_renew_after`], and a 401 leads to one re-login and one
/// retry; a second 401 is [`PveError::AuthExpired`].
#[derive(Clone)]
pub struct PveClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for PveClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PveClient")
            .field("base_url", &self.inner.cfg.base_url.as_str())
            .field("user", &self.inner.cfg.auth.userid())
            .finish()
    }
}

/// Parses a PVE answer body: the `data` member of a 2xx answer, or the classified error with PVE's
/// `message` (plus per-parameter `errors` of a 400) for anything else.
pub(crate) fn parse_answer(status: u16, body: &[u8]) -> Result<Value, PveError> {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    if (200..300).contains(&status) {
        return match json {
            Some(Value::Object(mut obj)) => Ok(obj.remove("data").unwrap_or(Value::Null)),
            _ => Err(PveError::MalformedResponse(format!(
                "HTTP {status} answer is not a JSON object: {}",
                snippet(body)
            ))),
        };
    }
    let mut message = json
        .as_ref()
        .and_then(|j| j.get("message"))
        .and_then(Value::as_str)
        .map(|m| m.trim_end().to_owned())
        .filter(|m| !m.is_empty())
        .or_else(|| {
            let text = snippet(body);
            (json.is_none() && !text.is_empty()).then_some(text)
        })
        .or_else(|| {
            reqwest::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| format!("HTTP {status}"));
    if let Some(Value::Object(errors)) = json.as_ref().and_then(|j| j.get("errors")) {
        let detail: Vec<String> = errors
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}: {}",
                    v.as_str()
                        .map(|s| s.trim_end().to_owned())
                        .unwrap_or(v.to_string())
                )
            })
            .collect();
        if !detail.is_empty() {
            message = format!("{message} ({})", detail.join("; "));
        }
    }
    Err(classify(status, &message))
}

/// The first 200 characters of a body, tags stripped, whitespace collapsed (for error texts).
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out = String::new();
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    let collapsed = out.split_whitespace().collect::<Vec<_>>().join(" ");
    collapsed.chars().take(200).collect()
}

/// Maps a transport error: timeouts, TLS failures (with the verifier's message, e.g. both
/// fingerprints of a pin mismatch) and connection failures.
fn transport_error(e: reqwest::Error) -> PveError {
    if e.is_timeout() {
        return PveError::Timeout;
    }
    let target = e
        .url()
        .map(|u| format!("{}://{}", u.scheme(), u.authority()))
        .unwrap_or_default();
    if let Some(tls) = find_rustls(&e) {
        return PveError::Tls(format!(
            "TLS handshake with {target} failed: {}",
            rustls_message(tls)
        ));
    }
    PveError::Connect(error_chain(&e))
}

/// The next error in a chain. `io::Error::source` skips the error it wraps, so look inside it.
fn next_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a (dyn std::error::Error + 'static)> {
    if let Some(inner) = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
        return Some(inner);
    }
    e.source()
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = next_cause(s);
    }
    parts.join(": ")
}

fn find_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(s) = cur {
        if let Some(r) = s.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        cur = next_cause(s);
    }
    None
}

/// rustls prints custom verifier errors with `Debug`; show ours (the pin mismatch) with `Display`.
fn rustls_message(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            format!("invalid peer certificate: {}", other.0)
        }
        other => other.to_string(),
    }
}

/// Errors after which a GET is tried again.
fn read_retryable(e: &PveError) -> bool {
    match e {
        PveError::Timeout | PveError::Connect(_) => true,
        PveError::NodeUnreachable { status, .. } => *status == 595,
        PveError::Api { status, .. } => matches!(status, 502 | 503),
        _ => false,
    }
}

impl PveClient {
    /// Builds the client (its own connection pool and TLS trust). No network I/O happens here.
    ///
    /// Errors: [`PveError::Config`] for a base URL that is not `https://` / `http://` with a host, or an
    /// unreadable CA file; [`PveError::Tls`] if the TLS stack cannot be set up.
    pub fn new(cfg: PveConfig) -> Result<PveClient, PveError> {
        let url = &cfg.base_url;
        if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
            return Err(PveError::Config(format!(
                "PVE URL must be https://host:8006, got {url}"
            )));
        }
        if let Auth::Token { id, .. } = &cfg.auth
            && (!id.contains('!') || !id.contains('@'))
        {
            return Err(PveError::Config(format!(
                "API token ID '{id}' must look like user@realm!tokenid"
            )));
        }
        let tls = client_config(&cfg.tls)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(cfg.timeout)
            .connect_timeout(cfg.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("proxlab-pve/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| PveError::Tls(error_chain(&e)))?;
        let mut origin = url.clone();
        origin.set_path("");
        origin.set_query(None);
        origin.set_fragment(None);
        let api_base = format!("{}/api2/json", origin.as_str().trim_end_matches('/'));
        Ok(PveClient {
            inner: Arc::new(Inner {
                cfg,
                http,
                api_base,
                ticket: tokio::sync::Mutex::new(None),
                login_lock: tokio::sync::Mutex::new(()),
                generation: AtomicU64::new(0),
            }),
        })
    }

    /// The cluster URL this client talks to.
    pub fn base_url(&self) -> &Url {
        &self.inner.cfg.base_url
    }

    // ------------------------------------------------------------------ raw calls

    /// `GET /api2/json{path}?{query}` → the `data` member as `T`. Retried per [`PveConfig::read_retries`].
    pub async fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, &str)]) -> Result<T, PveError> {
        let v = self.call(Method::GET, path, query).await?;
        typed(&Method::GET, path, v)
    }

    /// `POST` with a form body → `data` as `T` (for tasks, a UPID string). Not retried.
    pub async fn post<T: DeserializeOwned>(&self, path: &str, form: &[(&str, &str)]) -> Result<T, PveError> {
        let v = self.call(Method::POST, path, form).await?;
        typed(&Method::POST, path, v)
    }

    /// `PUT` with a form body → `data` as `T`. Not retried.
    pub async fn put<T: DeserializeOwned>(&self, path: &str, form: &[(&str, &str)]) -> Result<T, PveError> {
        let v = self.call(Method::PUT, path, form).await?;
        typed(&Method::PUT, path, v)
    }

    /// `DELETE` with query parameters → `data` as `T`. Not retried.
    pub async fn delete<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, PveError> {
        let v = self.call(Method::DELETE, path, query).await?;
        typed(&Method::DELETE, path, v)
    }

    /// [`PveClient::get`] returning the raw JSON `data`.
    pub async fn get_value(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, PveError> {
        self.call(Method::GET, path, query).await
    }

    /// [`PveClient::post`] returning the raw JSON `data`.
    pub async fn post_value(&self, path: &str, form: &[(&str, &str)]) -> Result<Value, PveError> {
        self.call(Method::POST, path, form).await
    }

    /// [`PveClient::put`] returning the raw JSON `data`.
    pub async fn put_value(&self, path: &str, form: &[(&str, &str)]) -> Result<Value, PveError> {
        self.call(Method::PUT, path, form).await
    }

    /// [`PveClient::delete`] returning the raw JSON `data`.
    pub async fn delete_value(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, PveError> {
        self.call(Method::DELETE, path, query).await
    }

    async fn call(&self, method: Method, path: &str, params: &[(&str, &str)]) -> Result<Value, PveError> {
        let span = tracing::debug_span!("pve", cluster = %self.inner.cfg.base_url, %method, path);
        async {
            let retries = if method == Method::GET {
                self.inner.cfg.read_retries
            } else {
                0
            };
            let mut attempt = 0u32;
            loop {
                match self.call_authed(&method, path, params).await {
                    Err(e) if attempt < retries && read_retryable(&e) => {
                        let delay = self.backoff(attempt);
                        tracing::debug!(error = %e, attempt, ?delay, "retrying read");
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
                    other => return other,
                }
            }
        }
        .instrument(span)
        .await
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .inner
            .cfg
            .retry_backoff
            .saturating_mul(2u32.saturating_pow(attempt));
        let jitter: f64 = rand::thread_rng().gen_range(0.5..1.5);
        base.mul_f64(jitter)
    }

    async fn call_authed(
        &self,
        method: &Method,
        path: &str,
        params: &[(&str, &str)],
    ) -> Result<Value, PveError> {
        let creds = self.credentials().await?;
        match self.send(method, path, params, &creds).await {
            Err(PveError::AuthExpired) => match (&self.inner.cfg.auth, creds) {
                (Auth::Token { id, .. }, _) => Err(PveError::InvalidCredentials { userid: id.clone() }),
                (Auth::Password { .. }, Credentials::Ticket(refused)) => {
                    tracing::info!("PVE refused the ticket; logging in again");
                    let fresh = self.relogin(refused.generation).await?;
                    self.send(method, path, params, &Credentials::Ticket(fresh)).await
                }
                (Auth::Password { .. }, _) => Err(PveError::AuthExpired),
            },
            other => other,
        }
    }

    /// One HTTP exchange, no retries. A 401 comes back as [`PveError::AuthExpired`].
    async fn send(
        &self,
        method: &Method,
        path: &str,
        params: &[(&str, &str)],
        creds: &Credentials,
    ) -> Result<Value, PveError> {
        let (status, body) = self.exchange(method, path, params, creds).await?;
        parse_answer(status, &body)
    }

    async fn exchange(
        &self,
        method: &Method,
        path: &str,
        params: &[(&str, &str)],
        creds: &Credentials,
    ) -> Result<(u16, Vec<u8>), PveError> {
        let slash = if path.starts_with('/') { "" } else { "/" };
        let url = format!("{}{slash}{path}", self.inner.api_base);
        let mut req = self.inner.http.request(method.clone(), &url);
        for (name, value) in auth_headers(creds, method)? {
            req = req.header(name, value);
        }
        req = if *method == Method::GET || *method == Method::DELETE || *method == Method::HEAD {
            if params.is_empty() { req } else { req.query(params) }
        } else {
            req.form(params)
        };
        let started = std::time::Instant::now();
        let resp = req.send().await.map_err(transport_error)?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(transport_error)?;
        tracing::debug!(
            status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "PVE answered"
        );
        Ok((status, body.to_vec()))
    }

    // ------------------------------------------------------------------ auth

    fn next_generation(&self) -> u64 {
        self.inner.generation.fetch_add(1, Ordering::SeqCst) + 1
    }

    async fn fresh_ticket(&self) -> Option<Ticket> {
        let now = self.inner.cfg.clock.now();
        let guard = self.inner.ticket.lock().await;
        guard
            .as_ref()
            .filter(|t| now.saturating_duration_since(t.obtained) < self.inner.cfg.ticket_renew_after)
            .cloned()
    }

    async fn store(&self, ticket: Ticket) {
        *self.inner.ticket.lock().await = Some(ticket);
    }

    /// The credentials for the next request: the token, or a ticket younger than the renewal age
    /// (renewing or logging in first, single-flight).
    async fn credentials(&self) -> Result<Credentials, PveError> {
        let (user, password) = match &self.inner.cfg.auth {
            Auth::Token { id, secret } => {
                return Ok(Credentials::Token {
                    id: id.clone(),
                    secret: secret.clone(),
                });
            }
            Auth::Password { user, password } => (user, password),
        };
        if let Some(t) = self.fresh_ticket().await {
            return Ok(Credentials::Ticket(t));
        }
        let _one_at_a_time = self.inner.login_lock.lock().await;
        if let Some(t) = self.fresh_ticket().await {
            return Ok(Credentials::Ticket(t));
        }
        let old = self.inner.ticket.lock().await.clone();
        let ticket = match old {
            Some(old) => self.renew(user, password, &old).await?,
            None => self.password_login(user, password).await?,
        };
        self.store(ticket.clone()).await;
        Ok(Credentials::Ticket(ticket))
    }

    /// Tickets expire after 2 hours: renew by posting the current ticket as the password; if PVE refuses that
    /// (the ticket already expired, or a server without renewal), log in with the password.
    async fn renew(&self, user: &str, password: &Secret, old: &Ticket) -> Result<Ticket, PveError> {
        tracing::debug!(user, "renewing PVE ticket");
        match self.ticket_request(user, &old.ticket).await {
            Ok(t) => Ok(t),
            Err(PveError::InvalidCredentials { .. }) => {
                tracing::debug!(user, "ticket renewal refused; logging in with the password");
                self.password_login(user, password).await
            }
            Err(e) => Err(e),
        }
    }

    async fn password_login(&self, user: &str, password: &Secret) -> Result<Ticket, PveError> {
        tracing::debug!(user, "logging in to PVE");
        self.ticket_request(user, password).await
    }

    async fn ticket_request(&self, user: &str, password: &Secret) -> Result<Ticket, PveError> {
        let form = [("username", user), ("password", password.expose())];
        let (status, body) = self
            .exchange(&Method::POST, "/access/ticket", &form, &Credentials::Anonymous)
            .await?;
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let answer = parse_login(status, &json, user)?;
        Ok(Ticket {
            ticket: answer.ticket,
            csrf: answer.csrf,
            obtained: self.inner.cfg.clock.now(),
            generation: self.next_generation(),
        })
    }

    /// After a 401 on ticket `refused_generation`: log in again, unless another task already did.
    async fn relogin(&self, refused_generation: u64) -> Result<Ticket, PveError> {
        let Auth::Password { user, password } = &self.inner.cfg.auth else {
            return Err(PveError::AuthExpired);
        };
        let _one_at_a_time = self.inner.login_lock.lock().await;
        if let Some(current) = self.inner.ticket.lock().await.clone()
            && current.generation != refused_generation
        {
            return Ok(current);
        }
        let ticket = self.password_login(user, password).await?;
        self.store(ticket.clone()).await;
        Ok(ticket)
    }

    /// Ticket auth: logs in now (`POST /access/ticket`), replacing any ticket held, so wrong
    /// credentials show at startup. No-op for API tokens.
    ///
    /// Errors: [`PveError::InvalidCredentials`] naming the user; transport errors.
    pub async fn login(&self) -> Result<(), PveError> {
        let Auth::Password { user, password } = &self.inner.cfg.auth else {
            return Ok(());
        };
        let _one_at_a_time = self.inner.login_lock.lock().await;
        let ticket = self.password_login(user, password).await?;
        self.store(ticket).await;
        Ok(())
    }

    /// Checks `username` (`user@realm`) and `password` against this cluster's `POST /access/ticket`
    /// (realm login to the portal). Returns the username as PVE spells it. Does not change this
    /// client's own authentication.
    ///
    /// Errors: [`PveError::InvalidCredentials`] (never containing the password), transport errors.
    pub async fn check_credentials(&self, username: &str, password: &Secret) -> Result<String, PveError> {
        let form = [("username", username), ("password", password.expose())];
        let (status, body) = self
            .exchange(&Method::POST, "/access/ticket", &form, &Credentials::Anonymous)
            .await?;
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok(parse_login(status, &json, username)?.username)
    }

    // ------------------------------------------------------------------ typed reads

    /// `GET /version`.
    pub async fn version(&self) -> Result<VersionInfo, PveError> {
        self.get("/version", &[]).await
    }

    /// `GET /cluster/resources?type=vm`: every guest of the cluster in one call (templates included,
    /// flagged by `template`). An empty list may mean the token sees nothing (a privilege-separated token
    /// without grants): check [`PveClient::permissions`].
    pub async fn cluster_resources(&self) -> Result<Vec<ClusterResource>, PveError> {
        self.get("/cluster/resources", &[("type", "vm")]).await
    }

    /// `GET /cluster/status`: the cluster entry (quorate, node count) and one entry per node.
    pub async fn cluster_status(&self) -> Result<Vec<ClusterStatusEntry>, PveError> {
        self.get("/cluster/status", &[]).await
    }

    /// `GET /nodes`: each node with `online`/`offline` status.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, PveError> {
        self.get("/nodes", &[]).await
    }

    fn guest_path(node: &str, kind: GuestKind, vmid: u32) -> String {
        format!("/nodes/{}/{}/{vmid}", seg(node), kind.as_str())
    }

    /// `GET /nodes/{node}/{qemu|lxc}/{vmid}/status/current`.
    /// Errors: [`PveError::NotFound`] if the guest is not on that node; [`PveError::NodeUnreachable`].
    pub async fn guest_status(
        &self,
        node: &str,
        kind: GuestKind,
        vmid: u32,
    ) -> Result<GuestStatus, PveError> {
        self.get(
            &format!("{}/status/current", Self::guest_path(node, kind, vmid)),
            &[],
        )
        .await
    }

    /// `GET /nodes/{node}/{qemu|lxc}/{vmid}/config` (the current config, pending changes not applied).
    pub async fn guest_config(
        &self,
        node: &str,
        kind: GuestKind,
        vmid: u32,
    ) -> Result<GuestConfig, PveError> {
        self.get(&format!("{}/config", Self::guest_path(node, kind, vmid)), &[])
            .await
    }

    /// `GET /nodes/{node}/{qemu|lxc}/{vmid}/snapshot`, including PVE's `current` pseudo-entry.
    pub async fn snapshots(
        &self,
        node: &str,
        kind: GuestKind,
        vmid: u32,
    ) -> Result<Vec<SnapshotInfo>, PveError> {
        self.get(&format!("{}/snapshot", Self::guest_path(node, kind, vmid)), &[])
            .await
    }

    /// `GET /nodes/{node}/qemu/{vmid}/agent/network-get-interfaces`. Accepts `{"result":[..]}` and a
    /// bare list. Errors: [`PveError::AgentUnavailable`] when the agent is not configured, not running
    /// or timed out (PVE answers 500 with a message) — callers should back off per VM and only ask running
    /// VMs whose config has the agent enabled ([`GuestConfig::agent_enabled`]), so no agent calls go to VMs
    /// without one.
    pub async fn agent_network_interfaces(
        &self,
        node: &str,
        vmid: u32,
    ) -> Result<Vec<AgentInterface>, PveError> {
        let path = format!(
            "{}/agent/network-get-interfaces",
            Self::guest_path(node, GuestKind::Qemu, vmid)
        );
        let v = self.get_value(&path, &[]).await?;
        if v.is_null() {
            return Ok(Vec::new());
        }
        let answer: AgentInterfacesAnswer = typed(&Method::GET, &path, v)?;
        Ok(answer.into_vec())
    }

    /// `GET /nodes/{node}/lxc/{vmid}/interfaces`; `data: null` (container stopped or no network yet)
    /// is an empty list.
    pub async fn lxc_interfaces(&self, node: &str, vmid: u32) -> Result<Vec<LxcInterface>, PveError> {
        let path = format!("{}/interfaces", Self::guest_path(node, GuestKind::Lxc, vmid));
        let v = self.get_value(&path, &[]).await?;
        if v.is_null() {
            return Ok(Vec::new());
        }
        typed(&Method::GET, &path, v)
    }

    /// `GET /nodes/{node}/storage/{storage}/content`: volumes with sizes in bytes.
    pub async fn storage_content(&self, node: &str, storage: &str) -> Result<Vec<StorageVolume>, PveError> {
        self.get(
            &format!("/nodes/{}/storage/{}/content", seg(node), seg(storage)),
            &[],
        )
        .await
    }

    /// `GET /storage`: the cluster's storage definitions.
    pub async fn storages(&self) -> Result<Vec<StorageInfo>, PveError> {
        self.get("/storage", &[]).await
    }

    /// `GET /access/permissions`: what the calling user or token may do (the preflight for a
    /// privilege-separated token that sees nothing).
    pub async fn permissions(&self) -> Result<Permissions, PveError> {
        self.get("/access/permissions", &[]).await
    }

    // ------------------------------------------------------------------ writes (tasks)

    fn upid_of(path: &str, v: Value) -> Result<Upid, PveError> {
        match v {
            Value::String(s) => s
                .parse()
                .map_err(|e| PveError::MalformedResponse(format!("POST {path}: {e}"))),
            other => Err(PveError::MalformedResponse(format!(
                "POST {path}: expected a UPID string, got {other}"
            ))),
        }
    }

    /// `POST /nodes/{node}/{qemu|lxc}/{vmid}/status/{action}` → the task's UPID. The action has not
    /// happened yet: wait with [`PveClient::wait_task`] (a 200 with a UPID does not mean the task succeeded).
    /// Errors: [`PveError::Locked`], [`PveError::NoQuorum`], [`PveError::NotFound`], …
    pub async fn power(
        &self,
        node: &str,
        kind: GuestKind,
        vmid: u32,
        action: PowerAction,
    ) -> Result<Upid, PveError> {
        let path = format!(
            "{}/status/{}",
            Self::guest_path(node, kind, vmid),
            action.as_str()
        );
        let v = self.post_value(&path, &[]).await?;
        Self::upid_of(&path, v)
    }

    /// `POST /nodes/{node}/{qemu|lxc}/{vmid}/status/stop` with `overrule-shutdown=1` (PVE 8.1+): stops
    /// the guest at once and aborts a shutdown task that is still waiting for it.
    pub async fn stop_overruling_shutdown(
        &self,
        node: &str,
        kind: GuestKind,
        vmid: u32,
    ) -> Result<Upid, PveError> {
        let path = format!("{}/status/stop", Self::guest_path(node, kind, vmid));
        let v = self.post_value(&path, &[("overrule-shutdown", "1")]).await?;
        Self::upid_of(&path, v)
    }

    /// `POST /nodes/{node}/{qemu|lxc}/{vmid}/snapshot` (`snapname`, `description`) → UPID.
    /// Snapshot names follow PVE's config-ID rule: a letter, then letters, digits, `-`, `_` (2–40).
    pub async fn snapshot_create(
        &self,
        node: &str,
        kind: GuestKind,
        vmid: u32,
        name: &str,
        description: &str,
    ) -> Result<Upid, PveError> {
        let path = format!("{}/snapshot", Self::guest_path(node, kind, vmid));
        let v = self
            .post_value(&path, &[("snapname", name), ("description", description)])
            .await?;
        Self::upid_of(&path, v)
    }

    /// `POST /nodes/{node}/{qemu|lxc}/{vmid}/snapshot/{name}/rollback` → UPID.
    pub async fn snapshot_rollback(
        &self,
        node: &str,
        kind: GuestKind,
        vmid: u32,
        name: &str,
    ) -> Result<Upid, PveError> {
        let path = format!(
            "{}/snapshot/{}/rollback",
            Self::guest_path(node, kind, vmid),
            seg(name)
        );
        let v = self.post_value(&path, &[]).await?;
        Self::upid_of(&path, v)
    }

    /// `PUT /nodes/{node}/qemu/{vmid}/config` with `sshkeys` encoded per [`encode_sshkeys`].
    pub async fn set_sshkeys<S: AsRef<str>>(
        &self,
        node: &str,
        vmid: u32,
        keys: &[S],
    ) -> Result<(), PveError> {
        let path = format!("{}/config", Self::guest_path(node, GuestKind::Qemu, vmid));
        let encoded = encode_sshkeys(keys);
        self.put_value(&path, &[("sshkeys", &encoded)]).await.map(|_| ())
    }

    /// `GET /nodes/{upid.node}/tasks/{upid}/status`, with the UPID percent-encoded and the node taken
    /// from the UPID (the node that runs the task).
    pub async fn task_status(&self, upid: &Upid) -> Result<TaskStatus, PveError> {
        self.get(
            &format!("/nodes/{}/tasks/{}/status", seg(&upid.node), seg(upid.as_str())),
            &[],
        )
        .await
    }

    /// `GET /nodes/{upid.node}/tasks/{upid}/log?limit=N`: the last task log lines (for error detail).
    pub async fn task_log(&self, upid: &Upid, limit: u32) -> Result<Vec<String>, PveError> {
        #[derive(serde::Deserialize)]
        struct Line {
            #[serde(default)]
            t: String,
        }
        let limit = limit.to_string();
        let lines: Vec<Line> = self
            .get(
                &format!("/nodes/{}/tasks/{}/log", seg(&upid.node), seg(upid.as_str())),
                &[("limit", &limit)],
            )
            .await?;
        Ok(lines.into_iter().map(|l| l.t).collect())
    }

    /// Polls [`PveClient::task_status`] (50 ms, doubling to 1 s) until the task stops or `timeout`
    /// passes. `OK` → [`TaskOutcome::Ok`], `WARNINGS: n` → [`TaskOutcome::Warnings`]. A failed task is
    /// classified like an error answer ([`PveError::LockTimeout`], [`PveError::Locked`], …) or else
    /// [`PveError::TaskFailed`] with the exit status. Transient poll errors are retried until the
    /// deadline; then [`PveError::TaskTimeout`] (the task itself goes on in PVE).
    pub async fn wait_task(&self, upid: &Upid, timeout: Duration) -> Result<TaskOutcome, PveError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut delay = Duration::from_millis(50);
        loop {
            match self.task_status(upid).await {
                Ok(st) => {
                    if let Some(outcome) = st.outcome() {
                        return outcome.map_err(|exit| classify_task_failure(upid.as_str(), &exit));
                    }
                }
                Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, %upid, "task status poll failed; polling on");
                }
                Err(e) => return Err(e),
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(PveError::TaskTimeout {
                    upid: upid.to_string(),
                });
            }
            tokio::time::sleep(delay.min(deadline - now)).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }
}

/// What a WebSocket connection to a PVE endpoint needs (the console relay's upstream leg to
/// `GET /nodes/{node}/qemu/{vmid}/vncwebsocket`): the `wss://` URL, this cluster's TLS trust (the same
/// CA file or pinned fingerprint as every API call, ALPN `http/1.1`) and the authentication headers.
/// The headers hold the API token or the login ticket: never log or forward them.
pub struct WebSocketTarget {
    /// `wss://host:port/api2/json{path}?{query}` (`ws://` for an `http://` cluster).
    pub url: Url,
    /// Host name or address of the cluster (for TLS server name and the TCP connection).
    pub host: String,
    /// TCP port of the cluster.
    pub port: u16,
    /// TLS client configuration; `None` for an `http://` cluster.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Authentication headers (`Authorization: PVEAPIToken=…` or `Cookie: PVEAuthCookie=…`), values secret.
    pub headers: Vec<(String, Secret)>,
}

impl fmt::Debug for WebSocketTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketTarget")
            .field("url", &self.url.as_str())
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl PveClient {
    /// Everything needed to open a WebSocket to `GET {path}?{query}` (relative to `/api2/json`) on this
    /// cluster, with the current credentials (a ticket is renewed first if due). No network I/O other
    /// than a possible login.
    ///
    /// Errors: [`PveError::Config`] for a URL without host or port, [`PveError::Tls`] if the TLS stack
    /// cannot be set up, and login errors for ticket auth.
    pub async fn websocket_target(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<WebSocketTarget, PveError> {
        let slash = if path.starts_with('/') { "" } else { "/" };
        let mut url = Url::parse(&format!("{}{slash}{path}", self.inner.api_base))
            .map_err(|e| PveError::Config(format!("websocket URL for {path}: {e}")))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query.iter().copied());
        }
        let secure = url.scheme() == "https";
        let host = url
            .host_str()
            .ok_or_else(|| PveError::Config("PVE URL has no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| PveError::Config("PVE URL has no port".into()))?;
        url.set_scheme(if secure { "wss" } else { "ws" })
            .map_err(|_| PveError::Config("cannot make a websocket URL".into()))?;
        let tls = if secure {
            Some(Arc::new(client_config(&self.inner.cfg.tls)?))
        } else {
            None
        };
        let creds = self.credentials().await?;
        let mut headers = Vec::new();
        for (name, value) in auth_headers(&creds, &Method::GET)? {
            let v = value
                .to_str()
                .map_err(|_| PveError::Config("authentication header is not text".into()))?;
            headers.push((name.as_str().to_string(), Secret::new(v.to_string())));
        }
        Ok(WebSocketTarget {
            url,
            host,
            port,
            tls,
            headers,
        })
    }
}

fn typed<T: DeserializeOwned>(method: &Method, path: &str, v: Value) -> Result<T, PveError> {
    serde_json::from_value(v).map_err(|e| PveError::MalformedResponse(format!("{method} {path}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use percent_encoding::percent_decode_str;

    #[test]
    fn sshkey_is_strictly_percent_encoded_without_plus() {
        // Golden value: strict percent-encoding, `%20` for space, never `+`.
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAKEFAKE+/FAKE= student@lab:1";
        let enc = encode_sshkeys(&[key]);
        assert_eq!(
            enc,
            "ssh-ed25519%20AAAAC3NzaC1lZDI1NTE5AAAAIFAKEFAKE%2B%2FFAKE%3D%20student%40lab%3A1"
        );
        assert_eq!(percent_decode_str(&enc).decode_utf8().unwrap(), key);
    }

    #[test]
    fn several_sshkeys_are_joined_with_newline_before_encoding() {
        let keys = ["ssh-ed25519 AAAA a@x", "ssh-rsa BBBB b@y"];
        let enc = encode_sshkeys(&keys);
        assert!(enc.contains("%0A") && !enc.contains('+') && !enc.contains(' '));
        assert_eq!(percent_decode_str(&enc).decode_utf8().unwrap(), keys.join("\n"));
    }

    #[test]
    fn upid_path_segment_is_fully_encoded() {
        let s = seg("UPID:pve-a:0000ABCD:00112233:65F00000:qmclone:9000:portal@pve!lab:");
        assert_eq!(
            s,
            "UPID%3Apve-a%3A0000ABCD%3A00112233%3A65F00000%3Aqmclone%3A9000%3Aportal%40pve%21lab%3A"
        );
        assert_eq!(seg("../x"), "..%2Fx");
    }

    #[test]
    fn answer_data_is_returned_and_errors_are_classified() {
        assert_eq!(
            parse_answer(200, br#"{"data":{"a":1}}"#).unwrap(),
            serde_json::json!({"a":1})
        );
        assert_eq!(parse_answer(200, br#"{"data":null}"#).unwrap(), Value::Null);
        assert!(matches!(
            parse_answer(200, b"<html>oops</html>"),
            Err(PveError::MalformedResponse(_))
        ));
        let agent = parse_answer(
            500,
            br#"{"data":null,"message":"QEMU guest agent is not running\n"}"#,
        );
        assert!(
            matches!(agent, Err(PveError::AgentUnavailable(ref m)) if m == "QEMU guest agent is not running")
        );
    }

    #[test]
    fn parameter_errors_are_kept_in_the_message() {
        let e = parse_answer(
            400,
            br#"{"data":null,"message":"Parameter verification failed.\n","errors":{"snapname":"invalid format - invalid configuration ID 'x'\n"}}"#,
        )
        .unwrap_err();
        match e {
            PveError::Api { status: 400, message } => assert_eq!(
                message,
                "Parameter verification failed. (snapname: invalid format - invalid configuration ID 'x')"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn proxy_html_error_page_keeps_its_text() {
        let e = parse_answer(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>").unwrap_err();
        assert!(
            matches!(e, PveError::Api { status: 502, ref message } if message == "502 Bad Gateway"),
            "{e:?}"
        );
        assert!(read_retryable(&e));
        let empty = parse_answer(503, b"").unwrap_err();
        assert!(
            matches!(empty, PveError::Api { status: 503, ref message } if message == "Service Unavailable")
        );
    }

    #[test]
    fn only_transient_failures_are_retried_for_reads() {
        assert!(read_retryable(&PveError::Timeout));
        assert!(read_retryable(&PveError::Connect("refused".into())));
        assert!(read_retryable(&PveError::NodeUnreachable {
            status: 595,
            message: "No route to host".into()
        }));
        assert!(!read_retryable(&PveError::AgentUnavailable("x".into())));
        assert!(!read_retryable(&PveError::Api {
            status: 500,
            message: "x".into()
        }));
        assert!(!read_retryable(&PveError::NotFound("x".into())));
    }

    #[test]
    fn config_defaults_match_the_contract() {
        let cfg = PveConfig::new(
            "https://127.0.0.1:8006".parse().unwrap(),
            Auth::Token {
                id: "root@pam!portal".into(),
                secret: Secret::new("s"),
            },
            Tls::SystemRoots,
        );
        assert_eq!(cfg.timeout, Duration::from_secs(15));
        assert_eq!(cfg.connect_timeout, Duration::from_secs(5));
        assert_eq!(cfg.read_retries, 2);
        assert_eq!(cfg.retry_backoff, Duration::from_millis(200));
        assert_eq!(cfg.ticket_renew_after, Duration::from_secs(3600));
        assert!(!format!("{cfg:?}").contains("\"s\""));
    }

    #[test]
    fn bad_url_or_token_id_is_a_config_error() {
        let auth = Auth::Token {
            id: "root@pam!portal".into(),
            secret: Secret::new("s"),
        };
        let ftp = PveConfig::new("ftp://x:21".parse().unwrap(), auth, Tls::InsecureSkipVerify);
        assert!(matches!(PveClient::new(ftp), Err(PveError::Config(_))));
        let bad_id = Auth::Token {
            id: "portal".into(),
            secret: Secret::new("s"),
        };
        let cfg = PveConfig::new(
            "https://127.0.0.1:8006".parse().unwrap(),
            bad_id,
            Tls::InsecureSkipVerify,
        );
        assert!(matches!(PveClient::new(cfg), Err(PveError::Config(_))));
    }

    #[test]
    fn backoff_doubles_with_jitter() {
        let cfg = PveConfig::new(
            "https://127.0.0.1:8006/".parse().unwrap(),
            Auth::Token {
                id: "root@pam!portal".into(),
                secret: Secret::new("s"),
            },
            Tls::InsecureSkipVerify,
        );
        let c = PveClient::new(cfg).unwrap();
        assert_eq!(c.inner.api_base, "https://127.0.0.1:8006/api2/json");
        for attempt in 0..3u32 {
            let d = c.backoff(attempt);
            let base = 200.0 * 2f64.powi(attempt as i32);
            let ms = d.as_secs_f64() * 1000.0;
            assert!(ms >= base * 0.5 && ms <= base * 1.5, "attempt {attempt}: {ms} ms");
        }
    }
}
