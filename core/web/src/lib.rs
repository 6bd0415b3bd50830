//! Proxlab's HTTP layer: the axum router, JSON API, Server-Sent Events and (later) pages, sessions and
//! WebSockets.
//!
//! Handlers read only from the in-memory inventory ([`sync::Inventory`]); they never wait on Proxmox
//! for a read. Writes (power operations) go through the `pve` client and wait on the task. This is the
//! only crate that knows axum.

pub mod auth;
pub mod error;
pub mod gate;
pub mod relays;
pub mod render;
pub mod routes;
pub mod state;
pub mod views;

use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use tower_http::compression::CompressionLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

/// Theme loading lives in its own crate below `web`; here at its old path.
pub use ::theme;
pub use auth::RouteSpec;
pub use error::{AppError, AppResult};
pub use routes::routes;
pub use state::{AppState, WebConfig};
/// The connect view, also at its old path for the binary and tests.
pub use views::connect;
/// `.rdp` file writer, also at its old path.
pub use views::connect::rdp_file as rdp;
/// The portal pages, also at their old path.
pub use views::portal::pages;

/// The whole application router (no socket), so tests can drive it with `tower::ServiceExt::oneshot`.
///
/// Layer order (outermost first): trace → request counter → authenticate (principal, CSRF/Origin
/// check, security headers on every answer, 401/403 included) → compression (skips
/// `text/event-stream`, so SSE progress is not buffered) → timeout (non-streaming handlers only; SSE bodies
/// are not cut) → per-route access guard ([`auth::access`]) → handler.
pub fn app(state: AppState) -> Router {
    let timeout = Duration::from_secs(state.config.request_timeout_secs.max(1));
    // Every route comes from the one route table ([`routes`]), each behind its access guard; register
    // new routes there, never here, so the authorization matrix test sees them.
    let api = gate::register(Router::new(), routes::table());
    api.layer(TimeoutLayer::with_status_code(
        StatusCode::GATEWAY_TIMEOUT,
        timeout,
    ))
    .layer(CompressionLayer::new())
    .layer(middleware::from_fn_with_state(state.clone(), gate::authenticate))
    .layer(middleware::from_fn_with_state(state.clone(), count_requests))
    .layer(TraceLayer::new_for_http())
    .with_state(state)
}

async fn count_requests(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().as_str().to_string();
    let resp = next.run(req).await;
    st.http_requests
        .get_or_create(&state::HttpLabels {
            method,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}
