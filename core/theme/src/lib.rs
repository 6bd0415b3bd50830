//! Themes: the MiniJinja environment that renders every HTML page, built from the embedded
//! `themes/default` and an optional site theme that overrides it file by file, hot-reloaded through
//! the one reload mechanism of Proxlab ([`script::Reloader`]).
//!
//! # Lookup
//! A theme is a directory with `theme.toml` (`name`, optional `extends`, optional `description`),
//! `templates/**` and `static/**`. The site theme is looked at first; its `extends` names its parent:
//! `"default"` (also when omitted) is the built-in theme embedded in the binary, any other name is a
//! sibling directory of the site theme (`<site>/../<name>`, which may extend further). Every chain
//! ends at the embedded default, so a site theme only carries the files it changes. The embedded
//! default's files also stay reachable under `default/`: its static files as `default/<path>`, so an
//! override can `@import url("default/style.css")` and add to it instead of copying it, and its
//! templates as `default/<name>`, so an override can `{% extends "default/base.html" %}` and
//! replace only the blocks it changes (the shipped dark theme does exactly that).
//!
//! # Safety of admin-edited templates
//! Auto-escaping (HTML for every template except `*.txt`; JSON for `*.json`), strict undefined
//! variables, a fuel budget per render ([`ThemeConfig::fuel`]) and a recursion limit. Rendering runs
//! on a small pool of dedicated threads with a large stack ([`ThemeConfig::render_stack_bytes`]),
//! never on a Tokio worker (a list built with `+` in a loop, deep lazy sequence chains and self-calling
//! macros end in a template error, not a crashed process).
//!
//! # Reload
//! [`Themes::start`] builds a [`ThemeSet`] (every template compiled eagerly, so a syntax error is
//! found at load with file, line and column) and hands the builder to a [`script::Reloader`] that
//! watches every on-disk theme directory of the chain. A change rebuilds the whole set and swaps it
//! atomically; a set that fails to build keeps the last good one serving and records the errors
//! (shown on `/admin/reload` and in `GET /api/reload/status`). A request renders with the set it
//! started with.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior};
use script::{LoadError, ReloadConfig, ReloadEvent, ReloadStatus, Reloader, ScriptError, WatchMode};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, oneshot};

/// Name of the built-in theme (the one embedded in the binary).
pub const DEFAULT_THEME: &str = "default";

/// Largest template file accepted, bytes.
pub const MAX_TEMPLATE_BYTES: u64 = 1024 * 1024;

/// Largest static file accepted, bytes.
pub const MAX_STATIC_BYTES: u64 = 32 * 1024 * 1024;

/// Render errors kept for `/admin/reload` (the most recent ones).
const RENDER_ERRORS_KEPT: usize = 50;

/// Deepest `extends` chain of on-disk themes.
const MAX_CHAIN: usize = 8;

macro_rules! embedded_theme {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../themes/default/", $path)) as &[u8])),*]
    };
}

/// Every file of `themes/default`, embedded at compile time: `(path relative to the theme
/// directory, contents)`. A test checks that this list and the directory agree.
pub static EMBEDDED_DEFAULT: &[(&str, &[u8])] = embedded_theme![
    "theme.toml",
    "templates/base.html",
    "templates/index.html",
    "templates/vms.html",
    "templates/error.html",
    "templates/admin/reload.html",
    "static/style.css",
    "static/app.js",
    "templates/ssh.html",
    "templates/console.html",
    "static/terminal.js",
    "static/console.js",
    "templates/login.html",
    "templates/portal.html",
    "templates/admin/users.html",
    "templates/admin/clusters.html",
    "templates/admin/assignments.html",
    "templates/admin/audit.html",
    "static/portal.js",
    "static/admin.js",
    "templates/classes.html",
    "templates/class.html",
    "static/classes.js",
    "templates/join.html",
    "static/hours.js",
];

/// Settings of the theme layer.
#[derive(Clone, Debug)]
pub struct ThemeConfig {
    /// Site theme directory (`theme.toml`, `templates/`, `static/`); `None` serves the embedded
    /// default alone (nothing is watched then).
    pub site_dir: Option<PathBuf>,
    /// How changes are noticed: native notifications (inotify) or polling (NFS/CIFS).
    pub watch: WatchMode,
    /// Quiet time after the last change before rebuilding.
    pub debounce: Duration,
    /// MiniJinja fuel per render (roughly one unit per template instruction). The default
    /// 5,000-guest admin list needs about 0.35 M (70 per row); the default budget is 10 M.
    pub fuel: u64,
    /// MiniJinja recursion limit (nested includes, macro calls, blocks); at most 500.
    pub recursion_limit: usize,
    /// Render threads (pages render in parallel on these).
    pub render_threads: usize,
    /// Stack size of each render thread, bytes (reserved address space; pages are touched on use).
    pub render_stack_bytes: usize,
    /// Tell the browser to reload pages after a theme rebuild (`data-live-reload` on `<body>`;
    /// for theme authors, off in production).
    pub live_reload: bool,
}

impl Default for ThemeConfig {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        ThemeConfig {
            site_dir: None,
            watch: WatchMode::Native,
            debounce: Duration::from_millis(150),
            fuel: 10_000_000,
            recursion_limit: 200,
            render_threads: cpus.clamp(2, 8),
            render_stack_bytes: 64 * 1024 * 1024,
            live_reload: false,
        }
    }
}

impl ThemeConfig {
    /// Defaults with a site theme directory.
    pub fn with_site_dir(dir: impl Into<PathBuf>) -> Self {
        ThemeConfig {
            site_dir: Some(dir.into()),
            ..Default::default()
        }
    }
}

/// `theme.toml` of a theme directory.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ThemeManifest {
    /// Theme name (shown in the footer and on `/admin/reload`).
    pub name: String,
    /// Parent theme: `"default"` (the embedded one; also when omitted) or a sibling directory name.
    #[serde(default)]
    pub extends: Option<String>,
    /// Free text for admins.
    #[serde(default)]
    pub description: Option<String>,
}

/// Where a template or static file of a [`ThemeSet`] comes from.
#[derive(Clone, Debug, Serialize)]
pub struct FileOrigin {
    /// Theme name (`default` for the embedded one).
    pub theme: String,
    /// The file on disk, or `embedded:themes/default/<path>` for the built-in theme.
    pub file: PathBuf,
}

/// A static file ready to serve.
#[derive(Clone, Debug)]
pub struct StaticFile {
    /// The contents.
    pub bytes: Arc<[u8]>,
    /// `Content-Type` header value, from the extension.
    pub content_type: &'static str,
    /// Strong ETag (quoted hash of the contents).
    pub etag: String,
    /// Where it comes from.
    pub origin: FileOrigin,
}

#[derive(Clone, Debug)]
enum Layer {
    Dir { name: String, dir: PathBuf },
    Embedded,
}

/// One immutable generation of the theme: the compiled environment plus the merged static files.
/// Swapped as a whole on reload; requests keep the `Arc` they started with.
pub struct ThemeSet {
    env: Environment<'static>,
    name: String,
    chain: Vec<String>,
    templates: BTreeMap<String, FileOrigin>,
    statics: BTreeMap<String, StaticFile>,
    parent_statics: BTreeMap<String, StaticFile>,
    parent_templates: BTreeMap<String, FileOrigin>,
    version: String,
    dirs: Vec<PathBuf>,
}

impl std::fmt::Debug for ThemeSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThemeSet")
            .field("name", &self.name)
            .field("chain", &self.chain)
            .field("version", &self.version)
            .field("templates", &self.templates.keys().collect::<Vec<_>>())
            .field("statics", &self.statics.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Options of one build that do not come from files.
#[derive(Clone, Copy, Debug)]
struct BuildOptions {
    fuel: u64,
    recursion_limit: usize,
    live_reload: bool,
}

impl ThemeSet {
    /// Builds the set for `site_dir` (or the embedded default alone): resolves the `extends`
    /// chain, reads every file, compiles every template.
    ///
    /// Errors: every problem found, each with its file (and line/column for template syntax
    /// errors): unreadable or oversized files, a bad `theme.toml`, an unknown or cyclic `extends`,
    /// template syntax errors.
    pub fn build(site_dir: Option<&Path>, config: &ThemeConfig) -> Result<ThemeSet, Vec<LoadError>> {
        let opts = BuildOptions {
            fuel: config.fuel,
            recursion_limit: config.recursion_limit,
            live_reload: config.live_reload,
        };
        build_set(site_dir, opts)
    }

    /// The compiled environment (templates by name, filters, globals).
    pub fn env(&self) -> &Environment<'static> {
        &self.env
    }

    /// Name of the most specific theme (the site theme's, or `default`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Theme names in lookup order, most specific first, ending with `default (embedded)`.
    pub fn chain(&self) -> &[String] {
        &self.chain
    }

    /// Version of the static files: 16 hex digits of a hash over every static path and content.
    /// Part of every static URL (`/static/{version}/...`), so browsers can cache them forever.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// On-disk directories of the chain (what the reloader watches).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Every template name with the file it comes from.
    pub fn templates(&self) -> &BTreeMap<String, FileOrigin> {
        &self.templates
    }

    /// Every static path (relative to `static/`) with its file.
    pub fn statics(&self) -> &BTreeMap<String, StaticFile> {
        &self.statics
    }

    /// The static file at `path` (relative to `static/`); `default/<path>` names the embedded
    /// default's own file even when the site theme overrides it.
    pub fn static_file(&self, path: &str) -> Option<&StaticFile> {
        self.statics.get(path).or_else(|| {
            path.strip_prefix("default/")
                .and_then(|p| self.parent_statics.get(p))
        })
    }

    /// The file a template comes from; `default/<name>` names the embedded default's own template.
    pub fn template_file(&self, name: &str) -> Option<&Path> {
        self.templates
            .get(name)
            .or_else(|| self.parent_templates.get(name))
            .map(|o| o.file.as_path())
    }

    /// Renders `template` with `ctx` on the calling thread. Prefer [`Themes::render`], which runs
    /// on a large-stack render thread and records failures.
    pub fn render(&self, template: &str, ctx: Value) -> Result<String, Error> {
        self.env.get_template(template)?.render(ctx)
    }
}

fn embedded_origin(path: &str) -> FileOrigin {
    FileOrigin {
        theme: DEFAULT_THEME.to_string(),
        file: PathBuf::from(format!("embedded:themes/default/{path}")),
    }
}

fn read_manifest(dir: &Path, errors: &mut Vec<LoadError>) -> Option<ThemeManifest> {
    let path = dir.join("theme.toml");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            errors.push(LoadError::file(
                &path,
                format!("cannot read the theme manifest: {e}"),
            ));
            return None;
        }
    };
    match toml::from_str::<ThemeManifest>(&text) {
        Ok(m) if m.name.trim().is_empty() => {
            errors.push(LoadError::file(&path, "`name` must not be empty"));
            None
        }
        Ok(m) => Some(m),
        Err(e) => {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            errors.push(LoadError {
                file: path,
                line,
                column: None,
                message: e.message().to_string(),
            });
            None
        }
    }
}

/// Resolves the chain of on-disk themes, most specific first. The embedded default is implied last.
fn resolve_chain(site_dir: Option<&Path>, errors: &mut Vec<LoadError>) -> Vec<Layer> {
    let mut layers = Vec::new();
    let Some(mut dir) = site_dir.map(Path::to_path_buf) else {
        return vec![Layer::Embedded];
    };
    let mut seen: Vec<PathBuf> = Vec::new();
    while let Some(manifest) = read_manifest(&dir, errors) {
        let canon = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
        if seen.contains(&canon) {
            errors.push(LoadError::file(
                dir.join("theme.toml"),
                format!("`extends` makes a cycle through `{}`", manifest.name),
            ));
            break;
        }
        seen.push(canon);
        layers.push(Layer::Dir {
            name: manifest.name.clone(),
            dir: dir.clone(),
        });
        let parent = manifest
            .extends
            .as_deref()
            .map(str::trim)
            .unwrap_or(DEFAULT_THEME);
        if parent == DEFAULT_THEME {
            break;
        }
        if layers.len() >= MAX_CHAIN {
            errors.push(LoadError::file(
                dir.join("theme.toml"),
                format!("`extends` chain deeper than {MAX_CHAIN} themes"),
            ));
            break;
        }
        if parent.is_empty() || parent.contains(['/', '\\']) || parent.starts_with('.') {
            errors.push(LoadError::file(
                dir.join("theme.toml"),
                format!("`extends = \"{parent}\"` is not a theme name"),
            ));
            break;
        }
        let next = dir
            .parent()
            .map(|p| p.join(parent))
            .unwrap_or_else(|| PathBuf::from(parent));
        if !next.join("theme.toml").is_file() {
            errors.push(LoadError::file(
                dir.join("theme.toml"),
                format!(
                    "`extends = \"{parent}\"`: no theme at {} (only \"default\" is built in)",
                    next.display()
                ),
            ));
            break;
        }
        dir = next;
    }
    layers.push(Layer::Embedded);
    layers
}

/// Reads every file under `root` recursively (skipping editor temp/backup names), as
/// `(relative path with '/', absolute path, bytes)`.
fn read_tree(root: &Path, max: u64, errors: &mut Vec<LoadError>) -> Vec<(String, PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    if !root.is_dir() {
        return out;
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                errors.push(LoadError::file(&dir, format!("cannot read directory: {e}")));
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                errors.push(LoadError::file(&path, "file name is not UTF-8"));
                continue;
            };
            if script::is_ignored_name(name) {
                continue;
            }
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    // A dangling symlink or a file removed while we read: report it.
                    errors.push(LoadError::file(&path, format!("cannot read: {e}")));
                    continue;
                }
            };
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            if meta.len() > max {
                errors.push(LoadError::file(
                    &path,
                    format!("file is {} bytes, more than the limit of {max}", meta.len()),
                ));
                continue;
            }
            match std::fs::read(&path) {
                Ok(bytes) => {
                    let rel = path
                        .strip_prefix(root)
                        .map(|p| {
                            p.components()
                                .map(|c| c.as_os_str().to_string_lossy())
                                .collect::<Vec<_>>()
                                .join("/")
                        })
                        .unwrap_or_else(|_| name.to_string());
                    out.push((rel, path, bytes));
                }
                Err(e) => errors.push(LoadError::file(&path, format!("cannot read: {e}"))),
            }
        }
    }
    out
}

/// Content type by extension.
pub fn content_type_for(path: &str) -> &'static str {
    let ext = path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "txt" => "text/plain; charset=utf-8",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

/// 64-bit FNV-1a: a stable, dependency-free content hash for ETags and the static version.
fn fnv1a(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h ^= u64::from(*b);
        *h = h.wrapping_mul(0x0100_0000_01b3);
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn static_file(bytes: Vec<u8>, path: &str, origin: FileOrigin) -> StaticFile {
    let mut h = FNV_OFFSET;
    fnv1a(&mut h, &bytes);
    StaticFile {
        bytes: bytes.into(),
        content_type: content_type_for(path),
        etag: format!("\"{h:016x}\""),
        origin,
    }
}

fn auto_escape(name: &str) -> AutoEscape {
    if name.ends_with(".txt") {
        AutoEscape::None
    } else if name.ends_with(".json") {
        AutoEscape::Json
    } else {
        AutoEscape::Html
    }
}

/// `path` with every byte outside `A-Z a-z 0-9 - . _ ~ /` percent-encoded, so a URL built from a
/// file name is safe in an HTML attribute without escaping.
fn url_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Column (1-based, in characters) of byte offset `at` in `source`.
fn column_of(source: &str, at: usize) -> Option<usize> {
    let at = at.min(source.len());
    let line_start = source[..at].rfind('\n').map(|i| i + 1).unwrap_or(0);
    source.get(line_start..at).map(|s| s.chars().count() + 1)
}

/// A message for an admin: kind and detail of a MiniJinja error, without the `(in file:line)`
/// suffix (file and line are separate fields), plus its causes.
pub fn error_message(err: &Error) -> String {
    let mut msg = match err.detail() {
        Some(d) => format!("{}: {d}", err.kind()),
        None => err.kind().to_string(),
    };
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        msg.push_str(&format!("; caused by: {s}"));
        source = s.source();
    }
    msg
}

fn build_set(site_dir: Option<&Path>, opts: BuildOptions) -> Result<ThemeSet, Vec<LoadError>> {
    let mut errors = Vec::new();
    let layers = resolve_chain(site_dir, &mut errors);

    // Merge from the least specific layer (embedded default) to the most specific (site).
    let mut templates: BTreeMap<String, (String, FileOrigin)> = BTreeMap::new();
    let mut statics: BTreeMap<String, StaticFile> = BTreeMap::new();
    let mut parent_statics: BTreeMap<String, StaticFile> = BTreeMap::new();
    // The embedded default's templates again under `default/<name>`, for `{% extends %}` by overrides.
    let mut parent_templates: BTreeMap<String, (String, FileOrigin)> = BTreeMap::new();
    let mut chain = Vec::new();
    let mut dirs = Vec::new();
    for layer in layers.iter().rev() {
        match layer {
            Layer::Embedded => {
                for (path, bytes) in EMBEDDED_DEFAULT {
                    if let Some(name) = path.strip_prefix("templates/") {
                        let text = String::from_utf8_lossy(bytes).into_owned();
                        parent_templates.insert(
                            format!("{DEFAULT_THEME}/{name}"),
                            (text.clone(), embedded_origin(path)),
                        );
                        templates.insert(name.to_string(), (text, embedded_origin(path)));
                    } else if let Some(rel) = path.strip_prefix("static/") {
                        let f = static_file(bytes.to_vec(), rel, embedded_origin(path));
                        parent_statics.insert(rel.to_string(), f.clone());
                        statics.insert(rel.to_string(), f);
                    }
                }
            }
            Layer::Dir { name, dir } => {
                dirs.push(dir.clone());
                for (rel, file, bytes) in read_tree(&dir.join("templates"), MAX_TEMPLATE_BYTES, &mut errors) {
                    match String::from_utf8(bytes) {
                        Ok(text) => {
                            templates.insert(
                                rel,
                                (
                                    text,
                                    FileOrigin {
                                        theme: name.clone(),
                                        file,
                                    },
                                ),
                            );
                        }
                        Err(_) => errors.push(LoadError::file(&file, "template is not valid UTF-8")),
                    }
                }
                for (rel, file, bytes) in read_tree(&dir.join("static"), MAX_STATIC_BYTES, &mut errors) {
                    let f = static_file(
                        bytes,
                        &rel,
                        FileOrigin {
                            theme: name.clone(),
                            file,
                        },
                    );
                    statics.insert(rel, f);
                }
            }
        }
    }
    for layer in &layers {
        chain.push(match layer {
            Layer::Dir { name, .. } => name.clone(),
            Layer::Embedded => format!("{DEFAULT_THEME} (embedded)"),
        });
    }
    dirs.reverse();
    let name = match layers.first() {
        Some(Layer::Dir { name, .. }) => name.clone(),
        _ => DEFAULT_THEME.to_string(),
    };

    let mut h = FNV_OFFSET;
    for (path, f) in &statics {
        fnv1a(&mut h, path.as_bytes());
        fnv1a(&mut h, &[0]);
        fnv1a(&mut h, &f.bytes);
    }
    let version = format!("{h:016x}");

    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(opts.fuel));
    env.set_recursion_limit(opts.recursion_limit);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_auto_escape_callback(auto_escape);
    env.add_filter("datetime", datetime_filter);
    env.add_filter("bytes", bytes_filter);
    let known: Arc<BTreeMap<String, ()>> = Arc::new(
        statics
            .keys()
            .map(|k| (k.clone(), ()))
            .chain(parent_statics.keys().map(|k| (format!("default/{k}"), ())))
            .collect(),
    );
    let v = version.clone();
    env.add_function("static_url", move |path: &str| -> Result<Value, Error> {
        let path = path.trim_start_matches('/');
        if known.contains_key(path) {
            Ok(Value::from_safe_string(format!("/static/{v}/{}", url_path(path))))
        } else {
            Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("static_url: no static file `{path}` in this theme"),
            ))
        }
    });
    env.add_global(
        "app",
        Value::from_serialize(serde_json::json!({"name": "Proxlab", "version": env!("CARGO_PKG_VERSION")})),
    );
    env.add_global(
        "theme",
        Value::from_serialize(serde_json::json!({"name": name, "version": version, "chain": chain})),
    );
    env.add_global("live_reload", opts.live_reload);

    let mut origins = BTreeMap::new();
    for (tname, (source, origin)) in templates {
        let file = origin.file.clone();
        let column = |e: &Error| e.range().and_then(|r| column_of(&source, r.start));
        match env.add_template_owned(tname.clone(), source.clone()) {
            Ok(()) => {}
            Err(e) => errors.push(LoadError {
                file,
                line: e.line(),
                column: column(&e),
                message: error_message(&e),
            }),
        }
        origins.insert(tname, origin);
    }
    let mut parent_origins = BTreeMap::new();
    for (tname, (source, origin)) in parent_templates {
        // A theme's own `templates/default/...` file of the same name wins over the alias.
        if origins.contains_key(&tname) {
            continue;
        }
        if let Err(e) = env.add_template_owned(tname.clone(), source) {
            errors.push(LoadError {
                file: origin.file.clone(),
                line: e.line(),
                column: None,
                message: error_message(&e),
            });
        }
        parent_origins.insert(tname, origin);
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(ThemeSet {
        env,
        name,
        chain,
        templates: origins,
        statics,
        parent_statics,
        parent_templates: parent_origins,
        version,
        dirs,
    })
}

// ---- filters -------------------------------------------------------------------------------------

/// `{{ secs|datetime }}`: Unix seconds → `YYYY-MM-DD HH:MM:SS UTC`; none/undefined → empty.
fn datetime_filter(value: Value) -> Result<String, Error> {
    if value.is_none() || value.is_undefined() {
        return Ok(String::new());
    }
    let secs = i64::try_from(value.clone()).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("datetime expects Unix seconds, got {value}"),
        )
    })?;
    Ok(format_unix(secs))
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC` (proleptic Gregorian, Howard Hinnant's civil_from_days).
pub fn format_unix(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `{{ n|bytes }}`: a byte count in IEC units (`512 B`, `1.5 KiB`, `8.0 GiB`); none → empty.
fn bytes_filter(value: Value) -> Result<String, Error> {
    if value.is_none() || value.is_undefined() {
        return Ok(String::new());
    }
    let n = f64::try_from(value.clone()).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("bytes expects a number, got {value}"),
        )
    })?;
    Ok(format_bytes(n))
}

/// A byte count in IEC units with one decimal (`1.5 KiB`); plain bytes below 1 KiB.
pub fn format_bytes(n: f64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n.abs() < 1024.0 {
        return format!("{n} B");
    }
    let mut v = n / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v.abs() < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

// ---- render pool ---------------------------------------------------------------------------------

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed set of large-stack threads that render templates (never a Tokio worker, never a
/// 2 MiB blocking-pool thread). Threads end when the pool is dropped.
struct RenderPool {
    tx: Mutex<mpsc::Sender<Job>>,
}

impl RenderPool {
    fn new(threads: usize, stack: usize) -> std::io::Result<RenderPool> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("proxlab-render-{i}"))
                .stack_size(stack)
                .spawn(move || {
                    loop {
                        let job = {
                            let guard = rx.lock().unwrap_or_else(|p| p.into_inner());
                            match guard.recv() {
                                Ok(job) => job,
                                Err(_) => return,
                            }
                        };
                        // A panicking render must not take the thread with it.
                        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                            tracing::error!("a template render panicked");
                        }
                    }
                })?;
        }
        Ok(RenderPool { tx: Mutex::new(tx) })
    }

    fn submit(&self, job: Job) -> bool {
        self.tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .is_ok()
    }
}

// ---- Themes --------------------------------------------------------------------------------------

/// A template render that failed, kept for admins (`/admin/reload`, `GET /api/reload/status`).
#[derive(Clone, Debug, Serialize)]
pub struct RenderErrorRecord {
    /// When (Unix s).
    pub at: u64,
    /// The template that was asked for (e.g. `index.html`).
    pub template: String,
    /// The template where the error happened (may be a parent or an include).
    pub failed_in: Option<String>,
    /// Its file (on disk, or `embedded:themes/default/...`).
    pub file: Option<PathBuf>,
    /// 1-based line in that file.
    pub line: Option<usize>,
    /// Kind and detail, e.g. `undefined value`, `invalid operation: fuel exhausted`.
    pub message: String,
    /// The text of that line (trimmed), so an admin sees which expression failed.
    pub source_line: Option<String>,
}

/// The theme layer: the current [`ThemeSet`] behind a [`Reloader`], the render threads and the
/// recent render errors. Cheap to share as `Arc<Themes>`.
pub struct Themes {
    reloader: Reloader<ThemeSet>,
    pool: RenderPool,
    render_errors: Mutex<VecDeque<RenderErrorRecord>>,
    config: ThemeConfig,
}

impl std::fmt::Debug for Themes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Themes")
            .field("config", &self.config)
            .field("current", &self.current())
            .finish()
    }
}

impl Themes {
    /// Builds the theme set from `config` and starts watching the on-disk theme directories.
    ///
    /// Errors: [`ScriptError::Load`] with every problem (file, line, column) if the first build
    /// fails — the server should refuse to start rather than serve a half theme;
    /// [`ScriptError::Watch`] if the watcher cannot start (e.g. inotify limits: use poll mode);
    /// [`ScriptError::Task`] if the render threads cannot be spawned.
    pub fn start(config: ThemeConfig) -> Result<Themes, ScriptError> {
        let first = ThemeSet::build(config.site_dir.as_deref(), &config).map_err(ScriptError::Load)?;
        let dirs = first.dirs().to_vec();
        let reload_config = ReloadConfig {
            dirs,
            debounce: config.debounce,
            mode: config.watch,
        };
        let site = config.site_dir.clone();
        let build_config = config.clone();
        let reloader = Reloader::start_with(reload_config, first, move || {
            ThemeSet::build(site.as_deref(), &build_config)
        })?;
        let pool = RenderPool::new(config.render_threads, config.render_stack_bytes)
            .map_err(|e| ScriptError::Task(format!("cannot start render threads: {e}")))?;
        Ok(Themes {
            reloader,
            pool,
            render_errors: Mutex::new(VecDeque::new()),
            config,
        })
    }

    /// The embedded default theme alone, nothing watched.
    pub fn embedded() -> Result<Themes, ScriptError> {
        Themes::start(ThemeConfig::default())
    }

    /// Checks a theme directory as the server would load it (for `proxlab script check`): every
    /// problem with file, line and column; empty when it loads.
    pub fn check(site_dir: &Path) -> Vec<LoadError> {
        match ThemeSet::build(Some(site_dir), &ThemeConfig::default()) {
            Ok(_) => Vec::new(),
            Err(e) => e,
        }
    }

    /// The set serving now. Hold it for the whole request.
    pub fn current(&self) -> Arc<ThemeSet> {
        self.reloader.current()
    }

    /// Reload state: generation, last success, last errors, watch mode and directories.
    pub fn status(&self) -> ReloadStatus {
        self.reloader.status()
    }

    /// One [`ReloadEvent`] per rebuild attempt (tests and browser live-reload wait on these).
    pub fn subscribe(&self) -> broadcast::Receiver<ReloadEvent> {
        self.reloader.subscribe()
    }

    /// Rebuilds now (blocking; call from a blocking context). See [`Reloader::reload_now`].
    pub fn reload_now(&self) -> Result<u64, Vec<LoadError>> {
        self.reloader.reload_now()
    }

    /// The configuration this was started with.
    pub fn config(&self) -> &ThemeConfig {
        &self.config
    }

    /// Recent render errors, the most recent first.
    pub fn render_errors(&self) -> Vec<RenderErrorRecord> {
        self.render_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Renders `template` of the current set on a render thread; `ctx` builds the context there
    /// too (so turning thousands of inventory rows into template values never runs on a Tokio
    /// worker). A failure is logged and recorded ([`Themes::render_errors`]) with the file and
    /// line where it happened.
    ///
    /// Errors: the MiniJinja error (unknown template, undefined variable, fuel exhausted,
    /// recursion limit, ...), or an `InvalidOperation` error if the render threads are gone.
    pub async fn render<F>(&self, template: &str, ctx: F) -> Result<String, Error>
    where
        F: FnOnce() -> Value + Send + 'static,
    {
        let set = self.current();
        self.render_with(set, template, ctx).await
    }

    /// Like [`Themes::render`] with a given set (e.g. one a request already holds).
    pub async fn render_with<F>(&self, set: Arc<ThemeSet>, template: &str, ctx: F) -> Result<String, Error>
    where
        F: FnOnce() -> Value + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let name = template.to_string();
        let job_set = set.clone();
        let submitted = self.pool.submit(Box::new(move || {
            let result = job_set.render(&name, ctx());
            let _ = tx.send(result);
        }));
        let result = if submitted {
            rx.await.unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "the render thread failed",
                ))
            })
        } else {
            Err(Error::new(
                ErrorKind::InvalidOperation,
                "the render threads are gone",
            ))
        };
        if let Err(e) = &result {
            self.record_error(&set, template, e);
        }
        result
    }

    fn record_error(&self, set: &ThemeSet, template: &str, err: &Error) {
        let failed_in = err.name().map(str::to_string);
        let file = failed_in
            .as_deref()
            .and_then(|n| set.template_file(n))
            .map(Path::to_path_buf);
        let source_line = match (failed_in.as_deref(), err.line()) {
            (Some(name), Some(line)) => set.env().get_template(name).ok().and_then(|t| {
                t.source()
                    .lines()
                    .nth(line.saturating_sub(1))
                    .map(|l| l.trim().to_string())
            }),
            _ => None,
        };
        let record = RenderErrorRecord {
            at: sync::now_secs(),
            template: template.to_string(),
            failed_in,
            file,
            line: err.line(),
            message: error_message(err),
            source_line,
        };
        tracing::warn!(
            template,
            file = ?record.file,
            line = record.line.unwrap_or(0),
            "template render failed: {}",
            record.message
        );
        let mut q = self.render_errors.lock().unwrap_or_else(|p| p.into_inner());
        q.push_front(record);
        q.truncate(RENDER_ERRORS_KEPT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_unix_gives_utc_calendar_time() {
        assert_eq!(format_unix(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_unix(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_unix(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn format_bytes_uses_iec_units() {
        assert_eq!(format_bytes(512.0), "512 B");
        assert_eq!(format_bytes(1536.0), "1.5 KiB");
        assert_eq!(format_bytes(8.0 * 1024.0 * 1024.0 * 1024.0), "8.0 GiB");
    }

    #[test]
    fn url_path_percent_encodes_everything_but_plain_path_characters() {
        assert_eq!(url_path("img/logo-2.svg"), "img/logo-2.svg");
        assert_eq!(url_path("a b\"<.css"), "a%20b%22%3C.css");
        assert_eq!(url_path("é.css"), "%C3%A9.css");
    }

    #[test]
    fn column_counts_characters_from_line_start() {
        assert_eq!(column_of("ab\ncdé{%", 7), Some(4));
        assert_eq!(column_of("x", 0), Some(1));
    }
}
