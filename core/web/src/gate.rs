//! The gate every request passes, the top of the spine (it imports the other spine modules; none of
//! them imports it): the outer middleware that resolves the principal and client address, checks
//! Origin and CSRF, flushes a write to disk before it is answered, cuts event streams when their
//! session ends and adds the security headers; and the per-route access guard of the route table.

use axum::Router;
use axum::extract::{Request, State};
use axum::handler::Handler;
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{MethodRouter, on};
use subtle::ConstantTimeEq;

use crate::auth::access::{Access, HttpMethod, RouteKind, RouteSpec};
use crate::auth::{
    AuthState, Authn, CSRF_FIELD, CSRF_HEADER, HSTS, Principal, SIGNED_OUT_EVENT, Via, security_headers,
};
use crate::error::AppError;
use crate::state::AppState;

/// The outer auth middleware: resolves the principal and client address into an [`Authn`] extension,
/// refuses cross-origin and CSRF-less state-changing cookie requests with 403, flushes the database
/// before answering a successful state-changing request (2xx or a form's 303 means stored), and adds the security
/// headers to every response.
pub async fn authenticate(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let auth = st.auth.clone();
    let addr = auth.client_addr(&req);
    let principal = auth.resolve(req.headers());
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe {
        let headers = req.headers();
        let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
        let cross_site = headers.get("sec-fetch-site").is_some_and(|v| v == "cross-site");
        let bearer = matches!(
            principal,
            Some(Principal {
                via: Via::Token { .. },
                ..
            })
        );
        if !bearer && (origin.is_some_and(|o| !auth.origin_allowed(o, headers)) || cross_site) {
            return finish(csrf_refused("cross-origin request refused"), false, &auth);
        }
        // Sign-in itself needs no session token (a planted or stale cookie must not block it); the
        // Origin check above covers login CSRF.
        let sign_in = matches!(req.uri().path(), "/login" | "/register");
        if let Some(Principal {
            via: Via::Session { csrf, .. },
            ..
        }) = &principal
            && !sign_in
        {
            let (ok, rebuilt) = csrf_ok(req, csrf.expose()).await;
            req = match (ok, rebuilt) {
                (true, Some(r)) => r,
                _ => return finish(csrf_refused("missing or wrong CSRF token"), false, &auth),
            };
        }
    }
    let authed = principal.is_some();
    let streamer = principal.clone();
    req.extensions_mut().insert(Authn { principal, addr });
    req.extensions_mut()
        .insert(PageThemes(crate::render::themes_of(&st)));
    let mut resp = next.run(req).await;
    // Every event stream of a signed-in caller ends when its session does (disabled, signed out,
    // demoted, password changed): nothing keeps flowing to a credential that no longer counts.
    if let Some(p) = streamer
        && is_event_stream(&resp)
    {
        resp = end_stream_when(resp, auth.until_revoked(&p));
    }
    // A successful write is on disk before it is answered: a crash right after a 2xx (kill -9, power
    // loss) must not lose an account, an assignment or a password change the caller was told about.
    if !safe
        && (resp.status().is_success() || resp.status().is_redirection())
        && let Err(e) = flush_durable(&auth.store).await
    {
        tracing::error!(error = %e, "flushing the database after a write failed");
        return finish(
            AppError::Internal("the change could not be written to disk".into()).into_response(),
            authed,
            &auth,
        );
    }
    finish(resp, authed, &auth)
}

fn is_event_stream(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// Ends the body of `resp` (an SSE stream) as soon as `until` completes, after a last
/// [`SIGNED_OUT_EVENT`].
fn end_stream_when(
    resp: Response,
    until: impl std::future::Future<Output = ()> + Send + 'static,
) -> Response {
    use futures::StreamExt as _;
    let (parts, body) = resp.into_parts();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let until = async move {
        until.await;
        let _ = tx.send(());
    };
    let cut = body.into_data_stream().take_until(until);
    let last = futures::stream::once(async move {
        match rx.await {
            Ok(()) => Some(Ok(axum::body::Bytes::from_static(SIGNED_OUT_EVENT.as_bytes()))),
            Err(_) => None,
        }
    })
    .filter_map(futures::future::ready);
    Response::from_parts(parts, axum::body::Body::from_stream(cut.chain(last)))
}

/// Flushes the database off the async workers; concurrent callers share flushes
/// ([`store::Store::flush_covering`]). sled's own `flush_async` can run the flush on the calling worker
/// when its pool is busy, which stalls every other request under a burst of writes.
async fn flush_durable(store: &store::Store) -> Result<(), String> {
    let store = store.clone();
    match tokio::task::spawn_blocking(move || store.flush_covering()).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

fn csrf_refused(message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": "csrf", "message": message}});
    (axum::http::StatusCode::FORBIDDEN, axum::Json(body)).into_response()
}

/// Checks the CSRF token of `req` (header, or `_csrf` in a urlencoded form body); gives the request
/// back (rebuilt when its body was read) when it may go on.
async fn csrf_ok(req: Request, expected: &str) -> (bool, Option<Request>) {
    let matches = |got: &str| !got.is_empty() && bool::from(got.as_bytes().ct_eq(expected.as_bytes()));
    if let Some(h) = req.headers().get(CSRF_HEADER) {
        let ok = h.to_str().is_ok_and(matches);
        return (ok, Some(req));
    }
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return (false, None);
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return (false, None);
    };
    let ok = url::form_urlencoded::parse(&bytes).any(|(k, v)| k == CSRF_FIELD && matches(&v));
    (
        ok,
        Some(Request::from_parts(parts, axum::body::Body::from(bytes))),
    )
}

fn finish(mut resp: Response, authenticated: bool, auth: &AuthState) -> Response {
    security_headers(&mut resp, authenticated);
    if auth
        .config
        .public_origin
        .as_deref()
        .is_some_and(|o| o.len() > 8 && o[..8].eq_ignore_ascii_case("https://"))
    {
        resp.headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static(HSTS));
    }
    resp
}

/// The themes pages render with, put in every request's extensions by [`authenticate`] so the
/// route guard can answer a page route's refusal with the themed error page.
#[derive(Clone)]
pub(crate) struct PageThemes(pub Option<std::sync::Arc<crate::theme::Themes>>);

/// The per-route access check of [`crate::routes`]: lets the request through or answers 401 / redirect / 403
/// (the themed error page for page routes, a JSON error for the API).
pub(crate) async fn guard(State(spec): State<RouteSpec>, req: Request, next: Next) -> Response {
    let principal = req.extensions().get::<Authn>().and_then(|a| a.principal.as_ref());
    match (spec.access, principal) {
        (Access::Public, _) => next.run(req).await,
        (_, None) => anonymous(spec.kind, &req),
        (Access::Authenticated, Some(_)) => next.run(req).await,
        (Access::Admin, Some(p)) if p.is_admin() => next.run(req).await,
        (Access::Admin, Some(_)) => {
            let themes = req.extensions().get::<PageThemes>().and_then(|t| t.0.clone());
            match (spec.kind, themes) {
                (RouteKind::Html, Some(themes)) => {
                    crate::render::error_page(
                        &themes,
                        axum::http::StatusCode::FORBIDDEN,
                        "This page is for administrators only.",
                    )
                    .await
                }
                _ => AppError::Forbidden("administrators only".into()).into_response(),
            }
        }
    }
}

/// The answer to an anonymous request for a protected route: pages redirect to `/login?next=<path>`,
/// everything else gets 401.
fn anonymous(kind: RouteKind, req: &Request) -> Response {
    if kind == RouteKind::Html {
        let next = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let enc: String = url::form_urlencoded::byte_serialize(next.as_bytes()).collect();
        return Redirect::to(&format!("/login?next={enc}")).into_response();
    }
    let mut resp = AppError::Unauthorized.into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"proxlab\""),
    );
    resp
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
        let mut handler = handler.route_layer(axum::middleware::from_fn_with_state(spec, guard));
        if let Some(limit) = spec.body_limit {
            handler = handler.layer(axum::extract::DefaultBodyLimit::max(limit));
        }
        router = router.route(spec.path, handler);
    }
    router
}
