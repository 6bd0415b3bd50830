//! The one error type of the HTTP layer. It renders as `{"error": {"code": "...", "message": "..."}}`
//! with a fitting status; internal details are logged, never sent to the client.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 400: the request is malformed; the message names what is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// 401: not signed in.
    #[error("sign in first")]
    Unauthorized,
    /// 403: signed in but not allowed (never used where the existence of the thing must stay hidden).
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such thing (or not visible to this user).
    #[error("{0}")]
    NotFound(String),
    /// 409: conflicts with the current state (e.g. the VM is locked).
    #[error("{0}")]
    Conflict(String),
    /// 429: slow down.
    #[error("{0}")]
    TooManyRequests(String),
    /// 502: Proxmox answered with an error; the message is PVE's own wording.
    #[error("{0}")]
    Upstream(String),
    /// 503: the cluster cannot be reached or the service is busy.
    #[error("{0}")]
    Unavailable(String),
    /// A site script refused with `throw #{status, code, message}`: that status, code and message.
    #[error("{message}")]
    Script {
        /// The status the script asked for (400–599).
        status: StatusCode,
        /// The script's code.
        code: String,
        /// The script's message for the user.
        message: String,
    },
    /// A domain error that names its own status and code (a refused VM operation: `busy`, `locked`,
    /// `no_baseline`, ...), answered with its own message.
    #[error("{message}")]
    Domain {
        /// The status that fits the error.
        status: StatusCode,
        /// The domain's code.
        code: String,
        /// The domain's message.
        message: String,
    },
    /// 500: a bug or an I/O failure; details are only logged.
    #[error("internal error")]
    Internal(String),
}

impl AppError {
    /// HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            AppError::Upstream(_) => StatusCode::BAD_GATEWAY,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            AppError::Script { status, .. } | AppError::Domain { status, .. } => *status,
        }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &str {
        match self {
            AppError::BadRequest(_) => "bad_request",
            AppError::Unauthorized => "unauthorized",
            AppError::Forbidden(_) => "forbidden",
            AppError::NotFound(_) => "not_found",
            AppError::Conflict(_) => "conflict",
            AppError::TooManyRequests(_) => "too_many_requests",
            AppError::Upstream(_) => "pve_error",
            AppError::Unavailable(_) => "unavailable",
            AppError::Internal(_) => "internal",
            AppError::Script { code, .. } | AppError::Domain { code, .. } => code,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if let AppError::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let body = json!({"error": {"code": self.code(), "message": self.to_string()}});
        (self.status(), Json(body)).into_response()
    }
}

impl From<script::ScriptError> for AppError {
    /// A thrown `#{status, code, message}` keeps its status and words; any other script failure is a
    /// fault of the site's script: 502 with the error (file and line) for the log and the admin.
    fn from(e: script::ScriptError) -> Self {
        match e.thrown_status() {
            Some((status, code, message)) => AppError::Script {
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                code: code.to_string(),
                message: message.to_string(),
            },
            None => AppError::Internal(format!("script: {e}")),
        }
    }
}

impl From<pve::PveError> for AppError {
    fn from(e: pve::PveError) -> Self {
        AppError::from(&e)
    }
}

impl From<&pve::PveError> for AppError {
    fn from(e: &pve::PveError) -> Self {
        use pve::PveError as P;
        match e {
            P::Locked { .. } | P::LockTimeout(_) => AppError::Conflict(e.to_string()),
            P::NotFound(_) => AppError::NotFound(e.to_string()),
            P::Timeout | P::Connect(_) | P::NodeUnreachable { .. } | P::NoQuorum(_) => {
                AppError::Unavailable(e.to_string())
            }
            _ => AppError::Upstream(e.to_string()),
        }
    }
}

impl From<store::StoreError> for AppError {
    fn from(e: store::StoreError) -> Self {
        match e {
            store::StoreError::NotFound { what } => AppError::NotFound(format!("{what} not found")),
            store::StoreError::Conflict { what } => AppError::Conflict(format!("{what} already exists")),
            store::StoreError::Rejected(m) => AppError::Conflict(m),
            other => AppError::Internal(other.to_string()),
        }
    }
}

impl From<&ops::OpError> for AppError {
    /// A failed VM operation: 404 for an unknown VM, 409 when it is busy, locked or the action does not
    /// apply, PVE's own errors as [`From<&pve::PveError>`] maps them, and a service's own status.
    fn from(e: &ops::OpError) -> Self {
        use ops::OpError;
        let code = match e {
            OpError::Pve(pe) => AppError::from(pe.as_ref()).code().to_string(),
            OpError::Service { code, .. } => code.clone(),
            _ => e.code(),
        };
        AppError::Domain {
            status: op_status(e),
            code,
            message: e.to_string(),
        }
    }
}

/// The HTTP answer for a failed operation: `{error: {code, message}}` with the status that fits.
pub fn op_error_response(e: &ops::OpError) -> Response {
    AppError::from(e).into_response()
}

/// Result alias of handlers.
pub type AppResult<T> = Result<T, AppError>;

/// The HTTP status of a failed VM operation: 404 (no such guest or cluster), 409 (busy, locked, a
/// template, no baseline), PVE's own mapping, a service's suggested status, 500.
pub fn op_status(e: &ops::OpError) -> StatusCode {
    use ops::OpError;
    match e {
        OpError::NotFound(_) => StatusCode::NOT_FOUND,
        OpError::Busy { .. } | OpError::Locked { .. } | OpError::NotApplicable(_) | OpError::NoBaseline => {
            StatusCode::CONFLICT
        }
        OpError::Pve(pe) => AppError::from(pe.as_ref()).status(),
        OpError::Service { status, .. } => StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY),
        OpError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The HTTP status of a failed class, template, invite, job or publish request: 404 (not found, an
/// invalid invite, an unknown cluster), 400, 409 (conflict, class full, limit reached), 403 (not the
/// owner, not Proxlab's, forbidden), 429, 503 (no VMIDs left), 422 (preflight), 428 (confirmation),
/// a site script's own `throw #{status}` or 502 (PVE, node, script), the VM operation's status, 500
/// (store).
pub fn deploy_status(e: &deploy::DeployError) -> StatusCode {
    use deploy::DeployError as D;
    match e {
        D::NotFound { .. } | D::InviteInvalid | D::UnknownCluster(_) => StatusCode::NOT_FOUND,
        D::Invalid(_) => StatusCode::BAD_REQUEST,
        D::Conflict(_) | D::ClassFull { .. } | D::LimitReached(_) => StatusCode::CONFLICT,
        D::NotOwner { .. } | D::NotOurs { .. } | D::Forbidden(_) => StatusCode::FORBIDDEN,
        D::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        D::VmidsExhausted { .. } => StatusCode::SERVICE_UNAVAILABLE,
        D::Preflight(_) => StatusCode::UNPROCESSABLE_ENTITY,
        D::ConfirmationRequired(_) => StatusCode::PRECONDITION_REQUIRED,
        // A site script may say which status its refusal is (`throw #{status: 409, ...}`).
        D::Script(e) => e
            .thrown_status()
            .and_then(|(s, _, _)| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::BAD_GATEWAY),
        D::Pve(_) | D::Host(_) => StatusCode::BAD_GATEWAY,
        D::Op(e) => op_status(e),
        D::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
