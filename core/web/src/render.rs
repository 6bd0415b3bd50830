//! Page rendering shared by every view: the themes serving a state ([`themes_of`]), the context every
//! page receives ([`UserView`], `page`, `title`, `csrf_token`), [`render_page`], the themed
//! [`error_page`] with its plain-text fallback, [`ClusterView`] (shown by the portal and admin pages),
//! the reload sources of `/admin/reload` and [`sse_response`]. Imports no view.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use minijinja::Value;
use minijinja::context;
use serde::Serialize;

use crate::auth::Principal;
use crate::state::AppState;
use crate::theme::{ThemeConfig, ThemeSet, Themes};

pub use crate::state::ReloadSource;

impl AppState {
    /// Serves pages with `themes` (otherwise the embedded default theme, built on first use).
    pub fn with_themes(mut self, themes: Arc<Themes>) -> AppState {
        self.themes = Some(themes);
        self
    }

    /// Shows `source` (e.g. the scripts' or plugins' [`Reloader`]) as `name` on `/admin/reload`
    /// and in `GET /api/reload/status`. The theme reloader is always shown as `themes`.
    pub fn with_reload_source(mut self, name: impl Into<String>, source: Arc<dyn ReloadSource>) -> AppState {
        Arc::make_mut(&mut self.reload_sources).push((name.into(), source));
        self
    }
}

fn fallback_themes() -> Option<Arc<Themes>> {
    static EMBEDDED: OnceLock<Option<Arc<Themes>>> = OnceLock::new();
    EMBEDDED
        .get_or_init(|| match Themes::embedded() {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                tracing::error!(error = %e, "the embedded default theme does not load");
                None
            }
        })
        .clone()
}

/// The embedded default set alone, used to show the error page when the site theme cannot render it.
fn embedded_set() -> Option<Arc<ThemeSet>> {
    static SET: OnceLock<Option<Arc<ThemeSet>>> = OnceLock::new();
    SET.get_or_init(|| ThemeSet::build(None, &ThemeConfig::default()).ok().map(Arc::new))
        .clone()
}

/// The themes serving `st`: its own, else the embedded default.
pub fn themes_of(st: &AppState) -> Option<Arc<Themes>> {
    st.themes.clone().or_else(fallback_themes)
}

/// A cluster as pages see it (`clusters[]` of `index.html` and `vms.html`).
#[derive(Clone, Debug, Serialize)]
pub struct ClusterView {
    /// Cluster id (used in `?cluster=`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// `ok`, `partial`, `stale` or `never`.
    pub status: String,
    /// True for `stale` and `never`: the guests shown are the last known state.
    pub stale: bool,
    /// Why it is stale or partial (PVE's words), or none.
    pub reason: Option<String>,
    /// Unix seconds since when it is stale, or none.
    pub stale_since: Option<u64>,
    /// Unix seconds of the last successful sync, or none.
    pub last_ok_at: Option<u64>,
    /// Nodes PVE reports offline.
    pub offline_nodes: Vec<String>,
    /// Quorum as last seen, or none before the first check.
    pub quorate: Option<bool>,
    /// Guests (VMs and containers, templates included).
    pub guests: usize,
    /// Running guests.
    pub running: usize,
    /// Running guests with a known IP.
    pub with_ip: usize,
    /// Templates.
    pub templates: usize,
}

impl From<&sync::ClusterState> for ClusterView {
    fn from(c: &sync::ClusterState) -> Self {
        ClusterView {
            id: c.id.clone(),
            name: c.name.clone(),
            status: c.status.clone(),
            stale: c.is_stale(),
            reason: c.reason.clone(),
            stale_since: c.stale_since,
            last_ok_at: c.last_ok_at,
            offline_nodes: c.offline_nodes.clone(),
            quorate: c.quorate,
            guests: c.guests,
            running: c.running,
            with_ip: c.with_ip,
            templates: c.templates,
        }
    }
}

// ---- rendering -----------------------------------------------------------------------------------

fn html_response(status: StatusCode, html: String) -> Response {
    let mut resp = (status, html).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The signed-in user as every page sees it (`user`; none on the sign-in page).
#[derive(Clone, Debug, Serialize)]
pub struct UserView {
    /// User name (`alice`, or `alice@pve` for realm users).
    pub name: String,
    /// Name to show.
    pub display_name: String,
    /// Effective role: `admin`, `teacher` or `student`.
    pub role: store::Role,
    /// True for admins (the admin navigation is shown).
    pub is_admin: bool,
}

impl From<&Principal> for UserView {
    fn from(p: &Principal) -> Self {
        UserView {
            name: p.name.clone(),
            display_name: p.display_name.clone(),
            role: p.role,
            is_admin: p.is_admin(),
        }
    }
}

/// The context every page receives besides the theme's globals: `page`, `title`, `now`, `user`
/// ([`UserView`] or none) and `csrf_token` (the session's token for forms and `X-CSRF-Token`, none
/// for bearer-token callers and anonymous ones).
fn page_context(
    page: &'static str,
    title: &str,
    who: Option<&UserView>,
    csrf: Option<&str>,
    extra: Value,
) -> Value {
    context! {
        page => page, title => title, now => sync::now_secs(),
        user => who.map(Value::from_serialize), csrf_token => csrf, ..extra
    }
}

/// Home page of a signed-in user: `/` (the overview) for admins, `/portal` for everyone else.
pub fn home_of(p: &Principal) -> &'static str {
    if p.is_admin() { "/" } else { "/portal" }
}

/// Renders `template` with the page context (for `who`) plus what `build` returns; on failure the
/// user sees the themed error page (500) and the admin finds the real error on `/admin/reload`.
pub(crate) async fn render_page<F>(
    st: &AppState,
    who: Option<&Principal>,
    page: &'static str,
    template: &'static str,
    title: String,
    build: F,
) -> Response
where
    F: FnOnce() -> Value + Send + 'static,
{
    let user = who.map(UserView::from);
    let csrf = who.and_then(|p| p.csrf_token()).map(str::to_string);
    let Some(themes) = themes_of(st) else {
        return plain_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "The portal's theme does not load.",
        );
    };
    match themes
        .render(template, move || {
            page_context(page, &title, user.as_ref(), csrf.as_deref(), build())
        })
        .await
    {
        Ok(html) => html_response(StatusCode::OK, html),
        Err(_) => {
            error_page(
                &themes,
                StatusCode::INTERNAL_SERVER_ERROR,
                "This page could not be shown. The administrators can see why on the reload status page.",
            )
            .await
        }
    }
}

/// The themed error page (`error.html`) with `status` and a message for users. If the site theme
/// cannot render it either, the embedded default's error page is used, then plain text.
pub async fn error_page(themes: &Themes, status: StatusCode, message: &str) -> Response {
    let ctx = move |message: String| {
        move || {
            page_context(
                "error",
                status.canonical_reason().unwrap_or("Error"),
                None,
                None,
                context! {
                    status => status.as_u16(),
                    reason => status.canonical_reason().unwrap_or("Error"),
                    message => message,
                },
            )
        }
    };
    if let Ok(html) = themes.render("error.html", ctx(message.to_string())).await {
        return html_response(status, html);
    }
    if let Some(set) = embedded_set()
        && let Ok(html) = themes
            .render_with(set, "error.html", ctx(message.to_string()))
            .await
    {
        return html_response(status, html);
    }
    plain_error(status, message)
}

pub(crate) fn plain_error(status: StatusCode, message: &str) -> Response {
    let mut resp = (
        status,
        format!(
            "{} {}\n\n{message}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        ),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// An SSE response with the headers proxies need (else progress arrives all at once):
/// `Cache-Control: no-cache`, `X-Accel-Buffering: no`.
pub fn sse_response(stream: impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static) -> Response {
    let mut resp = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}
