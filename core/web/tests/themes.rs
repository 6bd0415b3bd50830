//! Themes and pages: rendered-page snapshots (default, shipped dark theme, a site theme overriding
//! only `base.html` + `style.css`), themes that extend the default's templates block by block, static
//! files, the render limits (lists built with `+` in a loop, self-calling macros, endless loops), hot
//! reload (every way editors save included) and the reload status the admin sees.
//!
//! Every test drives the real router (`web::app`) with `tower::ServiceExt::oneshot` over a real
//! in-memory inventory, and real theme directories on disk watched by the real reloader.

// Test code: helpers outside `#[test]` functions panic on a failed setup, like the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use minijinja::context;
use store::{GuestRecord, IpRecord, Role, UserRecord};
use sync::{AgentDiscovery, ClusterState, Inventory, Syncer};
use tower::ServiceExt;
use web::theme::{EMBEDDED_DEFAULT, ThemeConfig, ThemeSet, Themes};
use web::{AppState, WebConfig};

const T0: u64 = 1_700_000_000;

fn repo_themes() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../themes")
}

fn guest(cluster: &str, vmid: u32, name: &str, node: &str, state: &str, ip: Option<&str>) -> GuestRecord {
    GuestRecord {
        cluster: cluster.into(),
        vmid,
        node: node.into(),
        name: name.into(),
        kind: "qemu".into(),
        status: if state == "running" {
            "running".into()
        } else {
            "stopped".into()
        },
        state: state.into(),
        cpus: 2.0,
        maxmem: 4 << 30,
        ip: ip.map(|a| IpRecord {
            address: a.into(),
            all: vec![a.into()],
            source: "guest-agent".into(),
            seen_at: T0,
        }),
        synced_at: T0,
        ..Default::default()
    }
}

/// Two clusters: `lab` (ok, four guests incl. a template, a locked and an offline-node guest) and
/// `annex` (stale since T0 with PVE's error, one guest).
async fn small_state() -> AppState {
    let inv = Inventory::load(
        None,
        &[
            ("lab".into(), "Lab cluster".into()),
            ("annex".into(), "Annex".into()),
        ],
    )
    .unwrap();
    let mut locked = guest("lab", 102, "student-02 <b>", "pve2", "stopped", None);
    locked.lock = Some("clone".into());
    let mut tmpl = guest("lab", 9000, "tmpl-win11", "pve1", "stopped", None);
    tmpl.template = true;
    let mut off = guest("lab", 103, "student-03", "pve3", "unknown", None);
    off.stale = Some("node pve3 is offline".into());
    inv.replace_cluster(
        "lab",
        vec![
            guest("lab", 101, "student-01", "pve1", "running", Some("10.20.0.101")),
            locked,
            off,
            tmpl,
        ],
        ClusterState {
            id: "lab".into(),
            name: "Lab cluster".into(),
            status: "partial".into(),
            reason: Some("node pve3 is offline".into()),
            last_ok_at: Some(T0),
            last_tick_at: Some(T0),
            offline_nodes: vec!["pve3".into()],
            quorate: Some(true),
            ..Default::default()
        },
    )
    .await;
    inv.replace_cluster(
        "annex",
        vec![guest(
            "annex",
            101,
            "annex-web",
            "pve9",
            "running",
            Some("192.168.50.10"),
        )],
        ClusterState {
            id: "annex".into(),
            name: "Annex".into(),
            status: "stale".into(),
            reason: Some("595 No route to host".into()),
            stale_since: Some(T0),
            last_ok_at: Some(T0 - 600),
            ..Default::default()
        },
    )
    .await;
    state_over(inv)
}

fn state_over(inv: Arc<Inventory>) -> AppState {
    let syncer = Syncer::new(inv.clone(), vec![], Default::default(), Arc::new(AgentDiscovery));
    AppState::new(
        inv,
        syncer,
        WebConfig {
            default_cluster: "lab".into(),
            ..Default::default()
        },
    )
}

fn themes(config: ThemeConfig) -> Arc<Themes> {
    Arc::new(Themes::start(config).unwrap())
}

fn site_config(dir: &Path) -> ThemeConfig {
    ThemeConfig {
        debounce: Duration::from_millis(100),
        ..ThemeConfig::with_site_dir(dir)
    }
}

/// The real router with an admin signed in by API token (pages are admin-only).
#[derive(Clone)]
struct Portal {
    app: Router,
    token: String,
}

fn portal(st: AppState) -> Portal {
    let admin = UserRecord {
        name: "admin".into(),
        role: Role::Admin,
        ..Default::default()
    };
    st.auth.store.create_local_user(admin).unwrap();
    let (secret, _) = st.auth.create_token("admin", None, "theme tests").unwrap();
    Portal {
        token: secret.expose().to_string(),
        app: web::app(st),
    }
}

impl Portal {
    async fn get(&self, uri: &str) -> (StatusCode, HeaderMap, String) {
        self.send(Request::get(uri).body(Body::empty()).unwrap()).await
    }

    async fn send(&self, mut req: Request<Body>) -> (StatusCode, HeaderMap, String) {
        let bearer = format!("Bearer {}", self.token);
        req.headers_mut()
            .insert(header::AUTHORIZATION, bearer.parse().unwrap());
        send(&self.app, req).await
    }
}

/// Undoes MiniJinja's HTML escaping of `/` (`&#x2f;`), to look for paths in a page.
fn unescape_slashes(html: &str) -> String {
    html.replace("&#x2f;", "/")
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, String) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// Snapshot with the volatile parts (render time, static version) replaced.
macro_rules! assert_page_snapshot {
    ($name:expr, $body:expr) => {
        insta::with_settings!({filters => vec![
            (r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", "[time]"),
            (r"/static/[0-9a-f]{16}/", "/static/[version]/"),
        ]}, {
            insta::assert_snapshot!($name, $body);
        });
    };
}

fn write(path: &Path, text: &str) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, text).unwrap();
}

fn default_file(rel: &str) -> String {
    std::fs::read_to_string(repo_themes().join("default").join(rel)).unwrap()
}

/// A site theme that overrides only `templates/base.html` and `static/style.css`.
fn site_theme(dir: &Path, marker: &str) {
    write(
        &dir.join("theme.toml"),
        "name = \"school\"\nextends = \"default\"\n",
    );
    let base = default_file("templates/base.html").replace(
        "<main class=\"main\">",
        &format!("<div class=\"school-banner\">{marker}</div>\n<main class=\"main\">"),
    );
    write(&dir.join("templates/base.html"), &base);
    write(
        &dir.join("static/style.css"),
        "@import url(\"default/style.css\");\n.school-banner { color: teal; }\n",
    );
}

async fn next_event(rx: &mut tokio::sync::broadcast::Receiver<script::ReloadEvent>) -> script::ReloadEvent {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("no reload event within 5 s")
        .expect("reload channel closed")
}

// ---- embedding and snapshots ---------------------------------------------------------------------

#[test]
fn embedded_default_lists_every_file_of_themes_default() {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let root = repo_themes().join("default");
    let mut on_disk = Vec::new();
    walk(&root, &root, &mut on_disk);
    on_disk.sort();
    let mut embedded: Vec<String> = EMBEDDED_DEFAULT.iter().map(|(p, _)| p.to_string()).collect();
    embedded.sort();
    assert_eq!(
        embedded, on_disk,
        "EMBEDDED_DEFAULT in theme.rs must list every file of themes/default"
    );
    for (p, bytes) in EMBEDDED_DEFAULT {
        assert_eq!(
            *bytes,
            std::fs::read(root.join(p)).unwrap().as_slice(),
            "{p} embedded is stale"
        );
    }
}

#[tokio::test]
async fn default_theme_pages_match_snapshots() {
    let app = portal(small_state().await);
    let (status, headers, index) = app.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    assert_page_snapshot!("default_index", index);

    let (status, _, vms) = app.get("/vms").await;
    assert_eq!(status, StatusCode::OK);
    // Auto-escaping: a guest name with markup is shown as text.
    assert!(vms.contains("student-02 &lt;b&gt;"), "{vms}");
    assert_page_snapshot!("default_vms", vms);

    let (status, _, lab) = app.get("/vms?cluster=lab").await;
    assert_eq!(status, StatusCode::OK);
    assert!(lab.contains("4 guests in cluster"), "{lab}");
    assert!(!lab.contains("annex-web"));

    let (status, _, missing) = app.get("/vms?cluster=nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_page_snapshot!("default_error_404", missing);
}

#[tokio::test]
async fn pages_have_no_inline_script_or_style() {
    let app = portal(small_state().await);
    for uri in ["/", "/vms", "/admin/reload", "/vms?cluster=nope"] {
        let (_, _, html) = app.get(uri).await;
        for (i, _) in html.match_indices("<script") {
            let tag = &html[i..i + html[i..].find('>').unwrap()];
            assert!(tag.contains(" src="), "{uri}: inline script: {tag}");
        }
        assert!(!html.contains("<style"), "{uri}: inline <style>");
        assert!(!html.contains(" style="), "{uri}: style attribute");
        assert!(!html.contains(" onclick="), "{uri}: inline handler");
    }
}

#[tokio::test]
async fn shipped_dark_theme_renders_every_page_with_its_base_and_css_only() {
    let t = themes(ThemeConfig::with_site_dir(repo_themes().join("dark")));
    let set = t.current();
    assert_eq!(set.name(), "dark");
    let from_dark: Vec<&String> = set
        .templates()
        .iter()
        .filter(|(_, o)| o.theme == "dark")
        .map(|(n, _)| n)
        .collect();
    assert_eq!(from_dark, vec!["base.html"]);
    let css_from_dark: Vec<&String> = set
        .statics()
        .iter()
        .filter(|(_, f)| f.origin.theme == "dark")
        .map(|(n, _)| n)
        .collect();
    assert_eq!(css_from_dark, vec!["style.css"]);

    let app = portal(small_state().await.with_themes(t));
    let (status, _, index) = app.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(index.contains("data-theme=\"dark\""));
    assert_page_snapshot!("dark_index", index);
    let (status, _, vms) = app.get("/vms").await;
    assert_eq!(status, StatusCode::OK);
    assert_page_snapshot!("dark_vms", vms);
    let (status, _, admin) = app.get("/admin/reload").await;
    assert_eq!(status, StatusCode::OK);
    assert!(admin.contains("data-theme=\"dark\""));
}

#[test]
fn shipped_themes_extend_the_default_templates_instead_of_copying_them() {
    let mut checked = 0;
    for entry in std::fs::read_dir(repo_themes()).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.is_dir() || dir.ends_with("default") {
            continue;
        }
        let templates = dir.join("templates");
        let Ok(files) = std::fs::read_dir(&templates) else {
            continue;
        };
        for file in files {
            let path = file.unwrap().path();
            let name = path
                .strip_prefix(&templates)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&path).unwrap();
            // Skip a leading comment; the first tag must extend the default's template of that name.
            let code = match text.trim_start().strip_prefix("{#") {
                Some(rest) => &rest[rest.find("#}").unwrap() + 2..],
                None => &text,
            };
            let extends = format!("{{% extends \"default/{name}\" %}}");
            assert!(
                code.trim_start().starts_with(&extends),
                "{}: must start with {extends} and override blocks only",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "the dark theme has at least its base.html");
}

#[tokio::test]
async fn site_template_can_extend_the_default_template_of_the_same_name_and_override_one_block() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("theme.toml"), "name = \"school\"\n");
    write(
        &dir.path().join("templates/base.html"),
        "{% extends \"default/base.html\" %}{% block brand %}Springfield labs{% endblock %}",
    );
    let t = themes(site_config(dir.path()));
    let set = t.current();
    assert_eq!(set.templates()["base.html"].theme, "school");
    assert!(
        !set.templates().contains_key("default/base.html"),
        "the default's own templates are not listed as templates of the theme"
    );
    assert_eq!(
        set.template_file("default/base.html").unwrap(),
        Path::new("embedded:themes/default/templates/base.html")
    );
    let app = portal(small_state().await.with_themes(t));
    let (status, _, html) = app.get("/vms").await;
    assert_eq!(status, StatusCode::OK);
    let html = unescape_slashes(&html);
    assert!(
        html.contains("<a class=\"brand\" href=\"/\">Springfield labs</a>"),
        "{html}"
    );
    for link in ["/vms", "/portal", "/classes", "/admin/users", "/admin/reload"] {
        assert!(html.contains(&format!("<a href=\"{link}\"")), "{link}: {html}");
    }
    assert!(html.contains("theme <strong>school</strong>") && html.contains("id=\"vms\""));
}

#[tokio::test]
async fn site_theme_overriding_base_and_one_css_changes_the_look_and_keeps_default_pages() {
    let dir = tempfile::tempdir().unwrap();
    site_theme(dir.path(), "Springfield High labs");
    let t = themes(site_config(dir.path()));
    let set = t.current();
    assert_eq!(
        set.chain(),
        ["school".to_string(), "default (embedded)".to_string()]
    );
    for (name, origin) in set.templates() {
        let expected = if name == "base.html" { "school" } else { "default" };
        assert_eq!(origin.theme, expected, "{name}");
    }
    let version = set.version().to_string();
    let app = portal(small_state().await.with_themes(t));

    for (uri, snap) in [("/", "site_index"), ("/vms", "site_vms")] {
        let (status, _, html) = app.get(uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        assert!(
            html.contains("<div class=\"school-banner\">Springfield High labs</div>"),
            "{uri}"
        );
        assert_page_snapshot!(snap, html);
    }
    let (status, _, error) = app.get("/vms?cluster=nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(error.contains("Springfield High labs") && error.contains("There is no cluster `nope`."));

    // The site's CSS replaces the default's; app.js and the parent's CSS still come from default.
    let (status, _, css) = app.get(&format!("/static/{version}/style.css")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(css.contains(".school-banner"));
    let (_, _, parent_css) = app.get(&format!("/static/{version}/default/style.css")).await;
    assert_eq!(parent_css, default_file("static/style.css"));
    let (_, _, js) = app.get(&format!("/static/{version}/app.js")).await;
    assert_eq!(js, default_file("static/app.js"));
}

#[tokio::test]
async fn site_theme_can_extend_a_sibling_theme() {
    let root = tempfile::tempdir().unwrap();
    let dark = root.path().join("dark");
    for rel in ["theme.toml", "templates/base.html", "static/style.css"] {
        write(
            &dark.join(rel),
            &std::fs::read_to_string(repo_themes().join("dark").join(rel)).unwrap(),
        );
    }
    let site = root.path().join("site");
    write(&site.join("theme.toml"), "name = \"site\"\nextends = \"dark\"\n");
    write(
        &site.join("templates/error.html"),
        "{% extends \"base.html\" %}{% block content %}<p>Oops: {{ message }}</p>{% endblock %}",
    );
    let t = themes(site_config(&site));
    let set = t.current();
    assert_eq!(set.chain(), ["site", "dark", "default (embedded)"]);
    assert_eq!(set.templates()["base.html"].theme, "dark");
    assert_eq!(set.templates()["error.html"].theme, "site");
    assert_eq!(set.templates()["index.html"].theme, "default");
    assert_eq!(t.status().dirs.len(), 2, "both on-disk themes are watched");
    let app = portal(small_state().await.with_themes(t));
    let (status, _, html) = app.get("/vms?cluster=nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        html.contains("data-theme=\"dark\"") && html.contains("<p>Oops: There is no cluster `nope`.</p>")
    );
}

#[test]
fn bad_theme_manifests_and_syntax_errors_are_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("theme.toml"),
        "name = \"x\"\nextends = \"nowhere\"\n",
    );
    let errs = Themes::check(dir.path());
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].file.ends_with("theme.toml") && errs[0].message.contains("nowhere"),
        "{errs:?}"
    );

    write(&dir.path().join("theme.toml"), "name = \"x\"\ncolour = \"red\"\n");
    let errs = Themes::check(dir.path());
    assert_eq!(errs[0].line, Some(2), "{errs:?}");

    write(&dir.path().join("theme.toml"), "name = \"x\"\n");
    write(
        &dir.path().join("templates/vms.html"),
        "{% extends \"base.html\" %}\n{% block content %}\n  {% for v in vms %}\n{% endblock %}\n",
    );
    let errs = Themes::check(dir.path());
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].file.ends_with("templates/vms.html"), "{errs:?}");
    assert_eq!(errs[0].line, Some(4), "{errs:?}");
    assert!(
        errs[0].column.is_some() && errs[0].message.contains("syntax error"),
        "{errs:?}"
    );
    // The server refuses to start on it rather than serve a half theme.
    match Themes::start(site_config(dir.path())) {
        Err(script::ScriptError::Load(e)) => assert_eq!(e, errs),
        other => panic!("expected a load error, got {other:?}"),
    }
    // Editor temp files are not templates.
    std::fs::remove_file(dir.path().join("templates/vms.html")).unwrap();
    write(&dir.path().join("templates/.vms.html.swp"), "{% broken");
    write(&dir.path().join("templates/vms.html~"), "{% broken");
    assert_eq!(Themes::check(dir.path()), vec![]);
}

// ---- static files --------------------------------------------------------------------------------

#[tokio::test]
async fn static_files_are_versioned_with_etag_and_cache_headers() {
    let t = themes(ThemeConfig::default());
    let version = t.current().version().to_string();
    let app = portal(small_state().await.with_themes(t));

    let (_, _, index) = app.get("/").await;
    assert!(index.contains(&format!("href=\"/static/{version}/style.css\"")));
    assert!(index.contains(&format!("src=\"/static/{version}/app.js\"")));

    let (status, headers, body) = app.get(&format!("/static/{version}/app.js")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
    assert_eq!(
        headers[header::CACHE_CONTROL],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(body, default_file("static/app.js"));
    let etag = headers[header::ETAG].clone();

    let req = Request::get(format!("/static/{version}/app.js"))
        .header(header::IF_NONE_MATCH, etag.clone())
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = app.send(req).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert_eq!(headers[header::ETAG], etag);
    assert!(body.is_empty());

    // A page rendered before a reload asks with the old version: current file, not cached.
    let (status, headers, _) = app.get("/static/0123456789abcdef/style.css").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CACHE_CONTROL], "no-cache");

    for uri in [
        format!("/static/{version}/nope.css"),
        format!("/static/{version}/../theme.toml"),
    ] {
        let (status, _, _) = app.get(&uri).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
    }
}

// ---- render limits --------------------------------------------------------------------------------

const NAMESPACE_CONCAT: &str = "{% set ns = namespace(items=[]) %}{% for v in vms %}{% set ns.items = ns.items + [v.name] %}{% endfor %}{{ ns.items|length }}";

fn five_thousand_vms() -> minijinja::Value {
    let vms: Vec<serde_json::Value> = (1..=5000)
        .map(|i| serde_json::json!({"name": format!("lab-{i:04}")}))
        .collect();
    context! { vms => minijinja::Value::from_serialize(&vms) }
}

/// A site theme with extra templates for the render-limit checks.
fn render_limits_theme() -> (tempfile::TempDir, Arc<Themes>) {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("theme.toml"), "name = \"render-limits\"\n");
    write(&dir.path().join("templates/concat.html"), NAMESPACE_CONCAT);
    write(
        &dir.path().join("templates/macro.html"),
        "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
    );
    write(
        &dir.path().join("templates/range.html"),
        "{% for i in range(100000000) %}{{ i }}{% endfor %}",
    );
    write(
        &dir.path().join("templates/spin.html"),
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}done",
    );
    let t = themes(site_config(dir.path()));
    (dir, t)
}

#[tokio::test]
async fn namespace_concat_over_5000_items_renders_5000() {
    let (_dir, t) = render_limits_theme();
    let out = t.render("concat.html", five_thousand_vms).await.unwrap();
    assert_eq!(out, "5000");
}

#[test]
fn namespace_concat_renders_even_on_a_2_mib_stack_thread() {
    // The pinned minijinja materialises deep `seq + [x]` chains; this holds without our big stack.
    let set = ThemeSet::build(None, &ThemeConfig::default()).unwrap();
    let out = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || {
            let env = set.env();
            env.render_str(NAMESPACE_CONCAT, five_thousand_vms())
        })
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(out, "5000");
}

#[tokio::test]
async fn self_calling_macro_ends_with_a_recursion_error() {
    let (_dir, t) = render_limits_theme();
    let started = Instant::now();
    let err = t.render("macro.html", || context! {}).await.unwrap_err();
    assert!(err.to_string().contains("recursion"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn huge_range_and_endless_loops_end_with_a_template_error() {
    let (_dir, t) = render_limits_theme();
    let err = t.render("range.html", || context! {}).await.unwrap_err();
    assert!(err.to_string().contains("range has too many elements"), "{err}");

    // 10^10 iterations: stopped by fuel, well within the render budget.
    let started = Instant::now();
    let err = t.render("spin.html", || context! {}).await.unwrap_err();
    let took = started.elapsed();
    assert!(err.to_string().contains("fuel"), "{err}");
    println!("fuel ({} units) exhausted after {took:?}", t.config().fuel);
    assert!(took < Duration::from_secs(20), "{took:?}");

    let errors = t.render_errors();
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0].template, "spin.html");
    assert!(errors[0].file.as_ref().unwrap().ends_with("templates/spin.html"));
    assert_eq!(errors[0].line, Some(1));
}

#[tokio::test]
async fn render_error_shows_themed_page_to_users_and_file_line_to_admins() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("theme.toml"), "name = \"broken-at-runtime\"\n");
    // Parses fine; fails at render: a self-calling macro on line 3 and an undefined variable.
    write(
        &dir.path().join("templates/index.html"),
        "{% extends \"base.html\" %}\n{% macro m() %}{{ m() }}{% endmacro %}\n{% block content %}{{ m() }}{% endblock %}\n",
    );
    write(
        &dir.path().join("templates/vms.html"),
        "{% extends \"base.html\" %}\n{% block content %}\n<p>{{ no_such_thing.name }}</p>\n{% endblock %}\n",
    );
    let app = portal(small_state().await.with_themes(themes(site_config(dir.path()))));

    let (status, _, html) = app.get("/").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(html.contains("This page could not be shown"), "{html}");
    assert!(!html.contains("recursion"), "users do not see the internal error");
    assert!(
        html.contains("<footer class=\"footer\">"),
        "themed page, not a bare 500"
    );
    let (status, _, html) = app.get("/vms").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!html.contains("no_such_thing"));

    let (_, _, json) = app.get("/api/reload/status").await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let errs = v["render_errors"].as_array().unwrap();
    assert_eq!(errs.len(), 2, "{v}");
    assert_eq!(errs[0]["template"], "vms.html");
    assert!(errs[0]["file"].as_str().unwrap().ends_with("templates/vms.html"));
    assert_eq!(errs[0]["line"], 3);
    assert!(errs[0]["message"].as_str().unwrap().contains("undefined"), "{v}");
    assert_eq!(errs[0]["source_line"], "<p>{{ no_such_thing.name }}</p>");
    assert_eq!(errs[1]["template"], "index.html");
    assert!(errs[1]["message"].as_str().unwrap().contains("recursion"), "{v}");
    assert!(
        errs[1]["file"]
            .as_str()
            .unwrap()
            .ends_with("templates/index.html")
    );

    let (status, _, admin) = app.get("/admin/reload").await;
    assert_eq!(status, StatusCode::OK);
    let admin = unescape_slashes(&admin);
    assert!(
        admin.contains("templates/vms.html") && admin.contains("{{ no_such_thing.name }}"),
        "{admin}"
    );
}

// ---- the admin list at scale ---------------------------------------------------------------------

#[tokio::test]
async fn vms_page_renders_5000_guests_quickly() {
    let inv = Inventory::load(None, &[("lab".into(), "Lab".into())]).unwrap();
    let guests: Vec<GuestRecord> = (1..=5000u32)
        .map(|i| {
            let ip = format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256);
            guest(
                "lab",
                1000 + i,
                &format!("lab-{i:04}"),
                &format!("pve{}", i % 8),
                "running",
                Some(&ip),
            )
        })
        .collect();
    inv.replace_cluster(
        "lab",
        guests,
        ClusterState {
            id: "lab".into(),
            name: "Lab".into(),
            status: "ok".into(),
            ..Default::default()
        },
    )
    .await;
    let app = portal(state_over(inv));
    let _ = app.get("/vms?cluster=lab").await; // warm up (builds the embedded theme)
    let started = Instant::now();
    let (status, _, html) = app.get("/vms").await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(html.matches("<tr data-key=\"lab/").count(), 5000);
    assert!(html.contains("lab-5000") && html.contains("10.0.19.136"));
    println!(
        "GET /vms with 5,000 guests: {took:?}, {} KiB of HTML",
        html.len() / 1024
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
}

// ---- hot reload ----------------------------------------------------------------------------------

#[tokio::test]
async fn editing_a_template_changes_the_next_response_within_1s() {
    let dir = tempfile::tempdir().unwrap();
    site_theme(dir.path(), "version one");
    let t = themes(site_config(dir.path()));
    let mut events = t.subscribe();
    let app = portal(small_state().await.with_themes(t.clone()));
    let (_, _, html) = app.get("/").await;
    assert!(html.contains("version one"));

    let started = Instant::now();
    site_theme(dir.path(), "version two");
    let ev = next_event(&mut events).await;
    assert!(ev.ok, "{ev:?}");
    assert_eq!(ev.generation, 2);
    let (_, _, html) = app.get("/").await;
    let took = started.elapsed();
    assert!(html.contains("version two") && !html.contains("version one"));
    println!("template edit → changed response in {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[tokio::test]
async fn a_broken_template_keeps_the_last_good_version_and_reports_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    site_theme(dir.path(), "good one");
    let t = themes(site_config(dir.path()));
    let mut events = t.subscribe();
    let app = portal(small_state().await.with_themes(t.clone()));

    let broken = default_file("templates/base.html").replace(
        "{% block content %}{% endblock %}",
        "{% block content %}\n{% if %}\n{% endblock %}",
    );
    let line = broken.lines().position(|l| l == "{% if %}").unwrap() + 1;
    write(&dir.path().join("templates/base.html"), &broken);
    let ev = next_event(&mut events).await;
    assert!(!ev.ok, "{ev:?}");
    assert_eq!(ev.generation, 1);

    let (status, _, html) = app.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("good one"), "the last good theme keeps serving");

    let (_, _, json) = app.get("/api/reload/status").await;
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let themes_status = v["reloaders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "themes")
        .unwrap()
        .clone();
    assert_eq!(themes_status["ok"], false, "{v}");
    assert_eq!(themes_status["generation"], 1);
    assert_eq!(themes_status["mode"], "inotify");
    let err = &themes_status["errors"][0];
    assert!(
        err["file"].as_str().unwrap().ends_with("templates/base.html"),
        "{v}"
    );
    assert_eq!(err["line"], line, "{v}");
    assert!(err["message"].as_str().unwrap().contains("syntax error"), "{v}");

    let (_, _, admin) = app.get("/admin/reload").await;
    let admin = unescape_slashes(&admin);
    assert!(
        admin.contains("themes: last reload failed") && admin.contains("templates/base.html"),
        "{admin}"
    );

    site_theme(dir.path(), "fixed");
    let ev = next_event(&mut events).await;
    assert!(ev.ok && ev.generation == 2, "{ev:?}");
    let (_, _, html) = app.get("/").await;
    assert!(html.contains("fixed"));
    let (_, _, json) = app.get("/api/reload/status").await;
    assert!(json.contains("\"ok\":true"), "{json}");
}

#[tokio::test]
async fn editor_saves_keep_reloading_after_atomic_renames() {
    let dir = tempfile::tempdir().unwrap();
    site_theme(dir.path(), "save 0");
    let t = themes(site_config(dir.path()));
    let mut events = t.subscribe();
    let app = portal(small_state().await.with_themes(t.clone()));
    let base = dir.path().join("templates/base.html");
    let swp = dir.path().join("templates/.base.html.swp");
    let text = |n: u32| {
        default_file("templates/base.html").replace(
            "<main class=\"main\">",
            &format!("<div class=\"school-banner\">save {n}</div>\n<main class=\"main\">"),
        )
    };
    // vim-like: write the swap file, rename it over the original; twice, and a delete + create.
    for n in 1..=2 {
        std::fs::write(&swp, text(n)).unwrap();
        std::fs::rename(&swp, &base).unwrap();
        let ev = next_event(&mut events).await;
        assert!(ev.ok, "{ev:?}");
        let (_, _, html) = app.get("/").await;
        assert!(html.contains(&format!("save {n}</div>")), "save {n} not served");
    }
    std::fs::remove_file(&base).unwrap();
    std::fs::write(&base, text(3)).unwrap();
    // Usually one rebuild; if the delete and the create fall into two debounce windows, the first
    // rebuild serves the default base.html and the second the new file.
    let mut served = false;
    for _ in 0..2 {
        let ev = next_event(&mut events).await;
        assert!(ev.ok, "{ev:?}");
        let (_, _, html) = app.get("/").await;
        if html.contains("save 3</div>") {
            served = true;
            break;
        }
    }
    assert!(served, "save 3 not served");
    assert_eq!(t.status().last_error, None);
}

#[tokio::test]
async fn live_reload_events_announce_each_theme_rebuild() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    site_theme(dir.path(), "before");
    let t = themes(ThemeConfig {
        live_reload: true,
        ..site_config(dir.path())
    });
    let app = portal(small_state().await.with_themes(t));
    let (_, _, html) = app.get("/").await;
    assert!(html.contains("data-live-reload=\"/api/reload/events\""));

    let mut req = Request::get("/api/reload/events").body(Body::empty()).unwrap();
    req.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {}", app.token).parse().unwrap(),
    );
    let resp = app.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = resp.into_body().into_data_stream();
    site_theme(dir.path(), "after");
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !seen.contains("\n\n") {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("no reload event")
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.starts_with("event: reload\ndata: "), "{seen}");
    let data: serde_json::Value =
        serde_json::from_str(seen.trim_end().trim_start_matches("event: reload\ndata: ")).unwrap();
    assert_eq!(data["ok"], true);
    assert_eq!(data["generation"], 2);
}

// ---- admin pages ---------------------------------------------------------------------------------

#[tokio::test]
async fn reload_status_lists_every_reloader_with_mode_and_generation() {
    let scripts_dir = tempfile::tempdir().unwrap();
    let scripts = Arc::new(
        script::Reloader::start(
            script::ReloadConfig::poll(vec![scripts_dir.path().into()], Duration::from_secs(2)),
            || Ok::<_, Vec<script::LoadError>>(String::from("script set")),
        )
        .unwrap(),
    );
    let st = small_state()
        .await
        .with_themes(themes(ThemeConfig::default()))
        .with_reload_source("scripts", scripts);
    let app = portal(st);

    let (status, headers, json) = app.get("/api/reload/status").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let names: Vec<&str> = v["reloaders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["scripts", "themes"]);
    assert_eq!(v["reloaders"][0]["mode"], "poll");
    assert_eq!(v["reloaders"][0]["poll_interval_ms"], 2000);
    assert_eq!(v["reloaders"][0]["generation"], 1);
    assert_eq!(v["reloaders"][0]["ok"], true);
    assert_eq!(v["theme"]["name"], "default");
    assert_eq!(v["render_errors"], serde_json::json!([]));

    let (status, _, html) = app.get("/admin/reload").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("<strong>scripts</strong>") && html.contains("poll every 2000 ms"),
        "{html}"
    );
    assert!(unescape_slashes(&html).contains("embedded:themes/default/templates/vms.html"));
    assert!(html.contains("No render errors since the server started."));
}

#[tokio::test]
async fn pages_are_for_admins_and_static_files_for_everyone() {
    let st = small_state().await;
    let version = web::render::themes_of(&st)
        .unwrap()
        .current()
        .version()
        .to_string();
    let app = portal(st);
    for uri in ["/", "/vms", "/admin/reload", "/api/reload/status"] {
        let (status, _, _) = app.get(uri).await;
        assert_eq!(status, StatusCode::OK, "{uri} as admin");
    }
    let anonymous = |uri: &str| send(&app.app, Request::get(uri).body(Body::empty()).unwrap());
    let (status, headers, _) = anonymous("/vms").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/login?next=%2Fvms");
    let (status, _, _) = anonymous("/api/reload/status").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = anonymous(&format!("/static/{version}/style.css")).await;
    assert_eq!(status, StatusCode::OK, "the sign-in page needs the stylesheet");
}
