//! Route access: what each route of the table ([`crate::routes`]) declares — method, path, answer kind
//! and access rule — and how the router is built from it, each route behind its access guard
//! ([`super::guard`]) and body limit. The table itself is data in [`crate::routes`]; this module
//! imports no view.

use axum::Router;
use axum::handler::Handler;
use axum::routing::{MethodFilter, MethodRouter, on};

use crate::state::AppState;

/// Who may call a route at all (finer, per-object decisions are [`super::authz::decide`]'s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone, signed in or not.
    Public,
    /// Any signed-in user; the handler decides per object (404 for what is not theirs).
    Authenticated,
    /// Admins only (403 for other signed-in users).
    Admin,
}

/// What a route answers with; decides how an anonymous caller is answered (pages redirect to the
/// sign-in page, the rest get 401).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// A themed HTML page.
    Html,
    /// JSON.
    Json,
    /// Server-Sent Events.
    Sse,
    /// A WebSocket upgrade.
    Ws,
    /// A static file.
    Static,
    /// Plain text (e.g. Prometheus metrics).
    Text,
}

/// HTTP method of a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpMethod {
    /// GET (HEAD is answered by the same handler).
    Get,
    /// POST.
    Post,
    /// PUT.
    Put,
    /// DELETE.
    Delete,
}

impl HttpMethod {
    /// Upper-case name, e.g. `GET`.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Delete => "DELETE",
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            HttpMethod::Get => MethodFilter::GET,
            HttpMethod::Post => MethodFilter::POST,
            HttpMethod::Put => MethodFilter::PUT,
            HttpMethod::Delete => MethodFilter::DELETE,
        }
    }
}

/// One route: method, path template (axum syntax, `{vmid}`), kind and access rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    /// Method.
    pub method: HttpMethod,
    /// Path template.
    pub path: &'static str,
    /// Answer kind.
    pub kind: RouteKind,
    /// Access rule enforced before the handler runs.
    pub access: Access,
    /// Request body limit in bytes, when smaller than the default (sign-in routes: 4 KiB).
    pub body_limit: Option<usize>,
}

pub(crate) struct Route {
    pub spec: RouteSpec,
    pub handler: MethodRouter<AppState>,
}

/// One route of the table: `handler` answers `method path`, behind the `access` guard.
pub(crate) fn route<H, T>(
    method: HttpMethod,
    path: &'static str,
    kind: RouteKind,
    access: Access,
    handler: H,
) -> Route
where
    H: Handler<T, AppState>,
    T: 'static,
{
    Route {
        spec: RouteSpec {
            method,
            path,
            kind,
            access,
            body_limit: None,
        },
        handler: on(method.filter(), handler),
    }
}

/// Registers every route of `table` on `router`, each behind its access guard (and body limit).
pub(crate) fn register(mut router: Router<AppState>, table: Vec<Route>) -> Router<AppState> {
    for Route { spec, handler } in table {
        let mut handler = handler.route_layer(axum::middleware::from_fn_with_state(spec, super::guard));
        if let Some(limit) = spec.body_limit {
            handler = handler.layer(axum::extract::DefaultBodyLimit::max(limit));
        }
        router = router.route(spec.path, handler);
    }
    router
}
