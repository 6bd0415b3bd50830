//! Route access: what each route of the table ([`crate::routes`]) declares — method, path, answer kind
//! and access rule. The router is built from it by [`crate::gate::register`], each route behind its
//! access guard ([`crate::gate::guard`]) and body limit. Plain data: this module imports nothing of
//! the crate.

use axum::routing::MethodFilter;

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

    pub(crate) fn filter(self) -> MethodFilter {
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
