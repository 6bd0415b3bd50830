//! Every page in every shipped theme, for every role: the shipped dark theme offers each link the
//! default offers (it extends the default instead of copying it), and a snapshot of every template as
//! each role sees it in each shipped theme.
//!
//! The pages come from the real router (`web::app`) over the page tests' fixture (`pages_common`: a
//! real in-memory inventory, a real account store with a student, a teacher and an admin), with a
//! real deployer over the same store (no cluster is reached: the class pages and invite links only
//! read and write the store) and the real theme directories of the repository.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod pages_common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::StatusCode;
use pages_common::{Pages, T0, pages, unescape_slashes};
use web::theme::{EMBEDDED_DEFAULT, ThemeConfig, Themes};

/// Who asks: the name in snapshot file names, and the fixture's user (none: not signed in).
const ROLES: [(&str, Option<&str>); 4] = [
    ("anonymous", None),
    ("student", Some("stud")),
    ("teacher", Some("teach")),
    ("admin", Some("root")),
];

/// Themes shipped in `themes/` besides the default (each is checked against the default).
const SHIPPED: [&str; 1] = ["dark"];

fn repo_themes() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../themes")
}

/// The fixture, served with `theme` (`default`: the embedded theme; else the shipped directory) and
/// a real deployer, plus the path of a fresh invite link to class `net1`.
async fn pages_in(theme: &str) -> (Pages, String) {
    let p = pages().await;
    let host = deploy::StaticHost::with_clock(
        tokio::runtime::Handle::current(),
        BTreeMap::new(),
        deploy::NodeOps::new(vec![]).unwrap(),
        Arc::new(|| T0),
    );
    let loader = script::ScriptRuntime::new(
        Arc::new(script::NullHost::new(tokio::runtime::Handle::current())),
        script::Limits::default(),
    );
    let set = Arc::new(loader.load_set(&script::SetSources::default()).unwrap());
    let d = deploy::Deployer::new(
        p.state.auth.store.clone(),
        host,
        Arc::new(move || set.clone()),
        deploy::DeployConfig::default(),
    )
    .unwrap();
    let invite = d
        .create_invite("net1", "teach", deploy::InviteTtl::Default, None)
        .unwrap();
    let mut state = p.state.clone().with_deployer(d);
    if theme != "default" {
        let themes = Themes::start(ThemeConfig::with_site_dir(repo_themes().join(theme))).unwrap();
        state = state.with_themes(Arc::new(themes));
    }
    let app = web::app(state.clone());
    (Pages { state, app }, invite.path)
}

/// One URL per template (besides `base.html`, which every page extends), `{join}` being the invite.
const PAGES: [(&str, &str); 16] = [
    ("login", "/login"),
    ("join", "{join}"),
    ("portal", "/portal"),
    ("index", "/"),
    ("vms", "/vms"),
    ("ssh", "/ssh/101?cluster=lab"),
    ("console", "/console/101?cluster=lab"),
    ("classes", "/classes"),
    ("class", "/classes/net1"),
    ("admin/users", "/admin/users"),
    ("admin/clusters", "/admin/clusters"),
    ("admin/assignments", "/admin/assignments"),
    ("admin/audit", "/admin/audit"),
    ("admin/reload", "/admin/reload"),
    ("error", "/ssh/999?cluster=lab"),
    ("error", "/vms?cluster=nope"),
];

/// A page as one role saw it.
struct Seen {
    status: StatusCode,
    /// `<body data-page="...">`: the template that rendered it (none for a redirect).
    page: Option<String>,
    html: String,
}

/// Every page of [`PAGES`] for `user` through the router of `p`, by URL.
async fn visit(p: &Pages, invite: &str, user: Option<&str>) -> Vec<(String, Seen)> {
    let mut out = Vec::new();
    for (_, uri) in PAGES {
        let uri = uri.replace("{join}", invite);
        let (status, _, html) = p.get_as(user, &uri).await;
        let page = attr(&html, "<body data-page=\"").map(|s| s.replace("&#x2f;", "/"));
        out.push((uri, Seen { status, page, html }));
    }
    out
}

/// The value of the attribute that `prefix` opens (e.g. `<body data-page="`), first occurrence.
fn attr(html: &str, prefix: &str) -> Option<String> {
    let at = html.find(prefix)? + prefix.len();
    let end = html[at..].find('"')? + at;
    Some(html[at..end].to_string())
}

/// Every link of a page: `href` of each `<a>` with its text, and the `action` of each `<form>`.
fn links(html: &str) -> BTreeSet<String> {
    let html = unescape_slashes(html);
    let mut out = BTreeSet::new();
    for (i, _) in html.match_indices("<a ") {
        let tag_end = html[i..].find('>').unwrap() + i;
        let Some(href) = attr(&html[i..=tag_end], "href=\"") else {
            continue;
        };
        let text_end = html[tag_end..].find("</a>").unwrap_or(0) + tag_end;
        let text = html[tag_end + 1..text_end].trim().to_string();
        out.insert(format!("<a href=\"{href}\"> {text}"));
    }
    for (i, _) in html.match_indices("<form ") {
        let tag_end = html[i..].find('>').unwrap() + i;
        if let Some(action) = attr(&html[i..=tag_end], "action=\"") {
            out.insert(format!("<form action=\"{action}\">"));
        }
    }
    out
}

/// `links` without the brand link (the one thing a theme may word differently), with the fixture's
/// random invite path written as `/join/[token]`.
fn without_brand(links: BTreeSet<String>, invite: &str) -> BTreeSet<String> {
    links
        .into_iter()
        .filter(|l| !l.starts_with("<a href=\"/\"> <span class=\"brand-mark\""))
        .map(|l| l.replace(invite, "/join/[token]"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_themes_show_every_link_the_default_shows_to_each_role() {
    let (default, default_invite) = pages_in("default").await;
    for theme in SHIPPED {
        let (shipped, invite) = pages_in(theme).await;
        for (role, user) in ROLES {
            let want = visit(&default, &default_invite, user).await;
            let got = visit(&shipped, &invite, user).await;
            for ((uri, w), (_, g)) in want.iter().zip(&got) {
                let uri = uri.replace(&default_invite, "/join/[token]");
                assert_eq!(w.status, g.status, "{theme}, {role}, {uri}");
                assert_eq!(w.page, g.page, "{theme}, {role}, {uri}");
                let wl = without_brand(links(&w.html), &default_invite);
                let gl = without_brand(links(&g.html), &invite);
                let missing: Vec<_> = wl.difference(&gl).collect();
                let extra: Vec<_> = gl.difference(&wl).collect();
                assert!(
                    missing.is_empty() && extra.is_empty(),
                    "{theme}, {role}, {uri}: links only in the default {missing:?}, only in {theme} {extra:?}"
                );
            }
        }
        // The link the old copy of the default had lost.
        for user in ["teach", "root"] {
            let (_, _, html) = shipped.get_as(Some(user), "/portal").await;
            assert!(
                links(&html).contains("<a href=\"/classes\"> Classes"),
                "{theme}, {user}"
            );
        }
    }
}

/// Snapshot with the volatile parts (static version, CSRF token, invite token, times of this run,
/// the checkout's path) replaced.
macro_rules! assert_page_snapshot {
    ($name:expr, $body:expr) => {
        insta::with_settings!({filters => vec![
            (r"/static/[0-9a-f]{16}/", "/static/[version]/"),
            (r#"name="csrf-token" content="[A-Za-z0-9_-]+""#, r#"name="csrf-token" content="[csrf]""#),
            (r#"name="_csrf" value="[A-Za-z0-9_-]+""#, r#"name="_csrf" value="[csrf]""#),
            (r#"data-csrf="[A-Za-z0-9_-]+""#, r#"data-csrf="[csrf]""#),
            (r"join&#x2f;[A-Za-z0-9_-]{43}", "join&#x2f;[token]"),
            (r"inv-[0-9a-f]{12}", "inv-[id]"),
            (r"page rendered \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", "page rendered [now]"),
            // Theme build times on /admin/reload (the fixture's own times are in 2023).
            (r"20(2[4-9]|[3-9]\d)-\d\d-\d\d \d\d:\d\d:\d\d UTC", "[now]"),
            // Where the repository is checked out.
            (r"(&#x2f;[^&<>]+)*&#x2f;core&#x2f;web&#x2f;\.\.&#x2f;\.\.&#x2f;themes", "[repo]&#x2f;themes"),
        ]}, {
            insta::assert_snapshot!($name, $body);
        });
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_template_as_each_role_sees_it_in_each_shipped_theme_matches_its_snapshot() {
    let templates: BTreeSet<String> = EMBEDDED_DEFAULT
        .iter()
        .filter_map(|(path, _)| path.strip_prefix("templates/"))
        .filter(|name| *name != "base.html")
        .map(|name| name.trim_end_matches(".html").to_string())
        .collect();
    for theme in std::iter::once("default").chain(SHIPPED) {
        let (p, invite) = pages_in(theme).await;
        let mut rendered = BTreeSet::new();
        for (role, user) in ROLES {
            // Each template once per role: the first URL that renders it.
            let mut done = BTreeSet::new();
            for (uri, seen) in visit(&p, &invite, user).await {
                let Some(page) = seen.page else {
                    assert!(
                        seen.status.is_redirection(),
                        "{theme}, {role}, {uri}: {}",
                        seen.status
                    );
                    continue;
                };
                if !done.insert(page.clone()) {
                    continue;
                }
                assert!(
                    seen.status == StatusCode::OK || page == "error",
                    "{theme}, {role}, {uri}: {}",
                    seen.status
                );
                let name = format!("{theme}__{role}__{}", page.replace('/', "_"));
                assert_page_snapshot!(name, seen.html);
                rendered.insert(page);
            }
        }
        assert_eq!(
            rendered, templates,
            "{theme}: every template is rendered for some role"
        );
    }
}
