//! Script sets: the shipped defaults, a site directory overriding them file by file, the
//! enabled plugins — compiled and checked into one immutable [`ScriptSet`] snapshot.
//!
//! Layout (relative paths are the script names):
//!
//! ```text
//! deploy/<name>.rhai   workflow: plan(ctx), create_vm(ctx, vm)
//! ip/<NN-name>.rhai    IP-discovery tier: discover(vm)      (run in file-name order)
//! rdp/<name>.rhai      RDP settings: rdp_settings(vm, user)
//! lib/<name>.rhai      library modules: `import "lib/<name>" as x;`
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rhai::{AST, Engine, EvalAltResult, Module, Position, Scope, Shared};
use serde::Serialize;

use crate::engine::EngineFactory;
use crate::error::LoadError;
use crate::plugin::{self, Plugin};

/// What a script is for; decides its fixed entry points (checked at load).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScriptKind {
    /// `deploy/*.rhai`: `plan(ctx)` and `create_vm(ctx, vm)`.
    Deploy,
    /// `ip/*.rhai`: `discover(vm)` returning an address string or `()`.
    Ip,
    /// `rdp/*.rhai`: `rdp_settings(vm, user)` returning a map.
    Rdp,
    /// `lib/*.rhai`: imported by others; no entry points.
    Lib,
    /// A plugin script: the functions named by its manifest's hooks.
    Plugin,
}

impl ScriptKind {
    /// The folder name of the kind (`deploy`, `ip`, `rdp`, `lib`, `plugins`).
    pub fn folder(self) -> &'static str {
        match self {
            ScriptKind::Deploy => "deploy",
            ScriptKind::Ip => "ip",
            ScriptKind::Rdp => "rdp",
            ScriptKind::Lib => "lib",
            ScriptKind::Plugin => "plugins",
        }
    }

    /// Fixed entry points as `(function name, number of parameters)`.
    pub fn entry_points(self) -> &'static [(&'static str, usize)] {
        match self {
            ScriptKind::Deploy => &[("plan", 1), ("create_vm", 2)],
            ScriptKind::Ip => &[("discover", 1)],
            ScriptKind::Rdp => &[("rdp_settings", 2)],
            ScriptKind::Lib | ScriptKind::Plugin => &[],
        }
    }

    fn from_folder(folder: &str) -> Option<ScriptKind> {
        match folder {
            "deploy" => Some(ScriptKind::Deploy),
            "ip" => Some(ScriptKind::Ip),
            "rdp" => Some(ScriptKind::Rdp),
            "lib" => Some(ScriptKind::Lib),
            _ => None,
        }
    }
}

/// Where a script came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "from", content = "name")]
pub enum Origin {
    /// The shipped defaults (`scripts/` of the install, or embedded).
    Default,
    /// The site directory (overrides a default of the same name, or adds a new one).
    Site,
    /// A plugin (its name).
    Plugin(String),
}

/// One compiled script: immutable, shared by every call that uses this snapshot.
#[derive(Debug)]
pub struct CompiledScript {
    /// Name in the set: the relative path (`deploy/qcow2-overlay.rhai`); for plugins
    /// `plugins/<plugin>/<file>.rhai`.
    pub name: String,
    /// The file on disk (or `<embedded>/…` for built-in defaults); errors and logs name it.
    pub path: PathBuf,
    /// What it is for.
    pub kind: ScriptKind,
    /// Defaults, site or plugin.
    pub origin: Origin,
    /// The compiled AST (source set to `path`).
    pub ast: Arc<AST>,
}

impl CompiledScript {
    /// The path as a string, for errors and logs.
    pub fn path_str(&self) -> String {
        self.path.display().to_string()
    }

    /// `true` if the script defines function `name` with `arity` parameters.
    pub fn has_fn(&self, name: &str, arity: usize) -> bool {
        self.ast
            .iter_functions()
            .any(|f| f.name == name && f.params.len() == arity)
    }

    /// The short name: file name without folder and `.rhai` (`qcow2-overlay`).
    pub fn short_name(&self) -> &str {
        let file = self.name.rsplit('/').next().unwrap_or(&self.name);
        file.strip_suffix(".rhai").unwrap_or(file)
    }
}

/// Where to load a set from.
#[derive(Clone, Debug, Default)]
pub struct SetSources {
    /// Shipped defaults: a directory laid out like the repo's `scripts/`; `None` uses the copy
    /// embedded in the binary ([`embedded_defaults`]).
    pub defaults: Option<PathBuf>,
    /// The site's script directory; a file here replaces the default of the same relative path.
    pub site: Option<PathBuf>,
    /// Directories holding plugins (`<dir>/<name>/plugin.toml`); a plugin found in a later
    /// directory replaces one of the same name in an earlier one (put the site's dir last).
    pub plugin_dirs: Vec<PathBuf>,
    /// Plugins enabled for the site (`[plugins] enabled = [..]` in `proxlab.toml`); only these load.
    pub enabled_plugins: Vec<String>,
    /// Site-level settings per plugin name (`[plugins.settings.<name>]`), checked against each
    /// plugin's schema at load.
    pub plugin_settings: BTreeMap<String, serde_json::Value>,
}

impl SetSources {
    /// The directories a [`crate::Reloader`] should watch for this set (existing ones only).
    pub fn watch_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        dirs.extend(self.defaults.iter().cloned());
        dirs.extend(self.site.iter().cloned());
        dirs.extend(self.plugin_dirs.iter().cloned());
        dirs.retain(|d| d.is_dir());
        dirs
    }
}

/// An immutable compiled snapshot of every script and enabled plugin. Cheap to share
/// (`Arc<ScriptSet>`); a job keeps the `Arc` it started with, so a reload never changes the
/// scripts under a running job.
#[derive(Debug, Default)]
pub struct ScriptSet {
    scripts: BTreeMap<String, Arc<CompiledScript>>,
    libs: Arc<HashMap<String, Arc<AST>>>,
    plugins: Vec<Arc<Plugin>>,
}

impl ScriptSet {
    /// Loads, compiles and checks a set. Every problem is collected (not just the first):
    /// syntax errors (file, line, column), missing entry points (file and function), imports of
    /// libraries that do not exist, scripts in unknown folders, bad plugin manifests or settings.
    pub fn load(factory: &EngineFactory, sources: &SetSources) -> Result<ScriptSet, Vec<LoadError>> {
        let engine = factory.compile_engine();
        let mut errors = Vec::new();

        // 1. Gather files: defaults, then site overrides by relative path.
        let mut files: BTreeMap<String, (PathBuf, String, Origin)> = BTreeMap::new();
        match &sources.defaults {
            Some(dir) => collect_dir(dir, Origin::Default, &mut files, &mut errors),
            None => {
                for (rel, text) in embedded_defaults() {
                    let path = PathBuf::from(format!("<embedded>/{rel}"));
                    files.insert(rel.to_string(), (path, text.to_string(), Origin::Default));
                }
            }
        }
        if let Some(site) = &sources.site {
            if site.is_dir() {
                collect_dir(site, Origin::Site, &mut files, &mut errors);
            } else {
                errors.push(LoadError::file(site, "site script directory does not exist"));
            }
        }

        // 2. Compile.
        let mut scripts = BTreeMap::new();
        let mut libs = HashMap::new();
        for (rel, (path, text, origin)) in &files {
            let folder = rel.split('/').next().unwrap_or("");
            let Some(kind) = ScriptKind::from_folder(folder).filter(|_| rel.contains('/')) else {
                errors.push(LoadError::file(
                    path,
                    "script is not in a known folder (deploy/, ip/, rdp/, lib/)",
                ));
                continue;
            };
            let Some(script) = compile_one(&engine, rel, path, text, kind, origin.clone(), &mut errors)
            else {
                continue;
            };
            if kind == ScriptKind::Lib {
                libs.insert(lib_key(rel), script.ast.clone());
            }
            scripts.insert(rel.clone(), script);
        }

        // 3. Plugins.
        let mut plugins = Vec::new();
        for name in &sources.enabled_plugins {
            let site_settings = sources.plugin_settings.get(name);
            match plugin::load_plugin(&engine, &sources.plugin_dirs, name, site_settings) {
                Ok(p) => plugins.push(Arc::new(p)),
                Err(mut e) => errors.append(&mut e),
            }
        }
        for unknown in sources
            .plugin_settings
            .keys()
            .filter(|k| !sources.enabled_plugins.contains(k))
        {
            tracing::warn!(plugin = %unknown, "settings given for a plugin that is not enabled");
        }

        // 4. Imports must resolve inside the set.
        let all_sources = files
            .iter()
            .map(|(_, (path, text, _))| (path.clone(), text.clone()))
            .chain(plugins.iter().flat_map(|p| p.sources.clone()));
        for (path, text) in all_sources {
            for (line, target) in static_imports(&text) {
                let key = lib_key(&target);
                if !libs.contains_key(&key) && files.contains_key(&format!("{key}.rhai")) {
                    // The library exists but did not compile; its own error is reported.
                    continue;
                }
                if !libs.contains_key(&key) {
                    errors.push(LoadError {
                        file: path.clone(),
                        line: Some(line),
                        column: None,
                        message: format!(
                            "import {target:?} not found (libraries live in lib/, e.g. \"lib/net\")"
                        ),
                    });
                }
            }
        }

        if errors.is_empty() {
            Ok(ScriptSet {
                scripts,
                libs: Arc::new(libs),
                plugins,
            })
        } else {
            errors.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
            errors.dedup();
            Err(errors)
        }
    }

    /// A script by name: the relative path (`deploy/qcow2-overlay.rhai`), the path without
    /// `.rhai`, or for plugins `plugins/<plugin>/<file>.rhai`.
    pub fn get(&self, name: &str) -> Option<&Arc<CompiledScript>> {
        let name = name.trim_start_matches("./");
        if let Some(s) = self.scripts.get(name) {
            return Some(s);
        }
        let with_ext = format!("{name}.rhai");
        if let Some(s) = self.scripts.get(&with_ext) {
            return Some(s);
        }
        self.plugins
            .iter()
            .flat_map(|p| p.scripts.values())
            .find(|s| s.name == name || s.name == with_ext)
    }

    /// The deployment workflow called `name` (`qcow2-overlay` → `deploy/qcow2-overlay.rhai`).
    pub fn deploy(&self, name: &str) -> Option<&Arc<CompiledScript>> {
        self.scripts.get(&format!("deploy/{name}.rhai"))
    }

    /// The RDP script called `name` (`default` → `rdp/default.rhai`).
    pub fn rdp(&self, name: &str) -> Option<&Arc<CompiledScript>> {
        self.scripts.get(&format!("rdp/{name}.rhai"))
    }

    /// The IP-discovery tiers in the order they run (file-name order: `10-inventory` first).
    pub fn ip_tiers(&self) -> Vec<&Arc<CompiledScript>> {
        self.scripts
            .values()
            .filter(|s| s.kind == ScriptKind::Ip)
            .collect()
    }

    /// Every script of one kind, in name order.
    pub fn of_kind(&self, kind: ScriptKind) -> Vec<&Arc<CompiledScript>> {
        self.scripts.values().filter(|s| s.kind == kind).collect()
    }

    /// Every script (defaults, site, plugins), in name order.
    pub fn scripts(&self) -> Vec<&Arc<CompiledScript>> {
        self.scripts
            .values()
            .chain(self.plugins.iter().flat_map(|p| p.scripts.values()))
            .collect()
    }

    /// The loaded (enabled) plugins.
    pub fn plugins(&self) -> &[Arc<Plugin>] {
        &self.plugins
    }

    /// A loaded plugin by name.
    pub fn plugin(&self, name: &str) -> Option<&Arc<Plugin>> {
        self.plugins.iter().find(|p| p.manifest.name == name)
    }

    /// The module resolver for `import "lib/<name>"` inside this snapshot.
    pub(crate) fn resolver(&self) -> SetResolver {
        SetResolver {
            libs: self.libs.clone(),
        }
    }

    /// A summary for admin pages: name, kind, origin and path of every script.
    pub fn summary(&self) -> Vec<ScriptSummary> {
        self.scripts()
            .into_iter()
            .map(|s| ScriptSummary {
                name: s.name.clone(),
                kind: s.kind,
                origin: s.origin.clone(),
                path: s.path_str(),
            })
            .collect()
    }
}

/// One line of [`ScriptSet::summary`].
#[derive(Clone, Debug, Serialize)]
pub struct ScriptSummary {
    /// Name in the set.
    pub name: String,
    /// Kind.
    pub kind: ScriptKind,
    /// Defaults, site or plugin.
    pub origin: Origin,
    /// File on disk.
    pub path: String,
}

/// Compiles one file and checks its entry points; errors go to `errors`.
pub(crate) fn compile_one(
    engine: &Engine,
    name: &str,
    path: &Path,
    text: &str,
    kind: ScriptKind,
    origin: Origin,
    errors: &mut Vec<LoadError>,
) -> Option<Arc<CompiledScript>> {
    let mut ast = match engine.compile(text) {
        Ok(ast) => ast,
        Err(e) => {
            errors.push(LoadError::from_parse(path, &e));
            return None;
        }
    };
    ast.set_source(path.display().to_string());
    let script = CompiledScript {
        name: name.to_string(),
        path: path.to_path_buf(),
        kind,
        origin,
        ast: Arc::new(ast),
    };
    let mut ok = true;
    for (entry, arity) in kind.entry_points() {
        if !script.has_fn(entry, *arity) {
            ok = false;
            let params = match *arity {
                1 if *entry == "discover" => "vm",
                1 => "ctx",
                _ if *entry == "rdp_settings" => "vm, user",
                _ => "ctx, vm",
            };
            errors.push(LoadError::file(
                path,
                format!(
                    "missing entry point `fn {entry}({params})` required for {} scripts",
                    kind.folder()
                ),
            ));
        }
    }
    ok.then(|| Arc::new(script))
}

/// Editor temp and backup names that loaders and the watcher ignore: `*.swp`, `*.swx`, `*~`,
/// `4913`, `.#*`, `*.tmp`, and other dot files.
pub fn is_ignored_name(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.ends_with(".tmp")
        || name == "4913"
}

fn collect_dir(
    root: &Path,
    origin: Origin,
    files: &mut BTreeMap<String, (PathBuf, String, Origin)>,
    errors: &mut Vec<LoadError>,
) {
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
            let name = entry.file_name().to_string_lossy().to_string();
            if is_ignored_name(&name) {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if !name.ends_with(".rhai") {
                continue;
            }
            let rel = path
                .strip_prefix(root)
                .map(|r| r.to_string_lossy().replace('\\', "/"))
                .unwrap_or_else(|_| name.clone());
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    files.insert(rel, (path, text, origin.clone()));
                }
                Err(e) => errors.push(LoadError::file(&path, format!("cannot read: {e}"))),
            }
        }
    }
}

/// `lib/net.rhai`, `lib/net`, `./lib/net` → `lib/net`.
pub(crate) fn lib_key(path: &str) -> String {
    let p = path.trim().trim_start_matches("./");
    p.strip_suffix(".rhai").unwrap_or(p).to_string()
}

/// `import "x"` statements with a literal path, as (1-based line, path). Comments are skipped.
pub(crate) fn static_imports(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(pos) = rest.find("import") {
            let before_ok = pos == 0 || !rest.as_bytes()[pos - 1].is_ascii_alphanumeric();
            let after = rest[pos + 6..].trim_start();
            if before_ok
                && let Some(q) = after.strip_prefix('"')
                && let Some(end) = q.find('"')
            {
                out.push((i + 1, q[..end].to_string()));
            }
            rest = &rest[pos + 6..];
        }
    }
    out
}

/// Resolves `import "lib/<name>"` from the snapshot's compiled libraries (never from disk at
/// run time, so a job keeps the libraries it started with).
#[derive(Clone)]
pub(crate) struct SetResolver {
    libs: Arc<HashMap<String, Arc<AST>>>,
}

impl rhai::ModuleResolver for SetResolver {
    fn resolve(
        &self,
        engine: &Engine,
        _source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Result<Shared<Module>, Box<EvalAltResult>> {
        let key = lib_key(path);
        let ast = self
            .libs
            .get(&key)
            .ok_or_else(|| Box::new(EvalAltResult::ErrorModuleNotFound(path.to_string(), pos)))?;
        let mut module = Module::eval_ast_as_new(Scope::new(), ast, engine).map_err(|e| {
            Box::new(EvalAltResult::ErrorInModule(
                ast.source().unwrap_or(path).to_string(),
                e,
                pos,
            ))
        })?;
        module.build_index();
        Ok(Shared::new(module))
    }
}

/// The shipped default scripts, embedded in the binary: `(relative path, text)`.
/// Kept in step with the repo's `scripts/` folder by a test.
pub fn embedded_defaults() -> &'static [(&'static str, &'static str)] {
    &[
        (
            "deploy/linked-clone.rhai",
            include_str!("../../../scripts/deploy/linked-clone.rhai"),
        ),
        (
            "deploy/qcow2-overlay.rhai",
            include_str!("../../../scripts/deploy/qcow2-overlay.rhai"),
        ),
        (
            "ip/10-inventory.rhai",
            include_str!("../../../scripts/ip/10-inventory.rhai"),
        ),
        (
            "ip/20-guest-agent.rhai",
            include_str!("../../../scripts/ip/20-guest-agent.rhai"),
        ),
        ("ip/30-lxc.rhai", include_str!("../../../scripts/ip/30-lxc.rhai")),
        ("ip/40-arp.rhai", include_str!("../../../scripts/ip/40-arp.rhai")),
        (
            "lib/deploy.rhai",
            include_str!("../../../scripts/lib/deploy.rhai"),
        ),
        ("lib/net.rhai", include_str!("../../../scripts/lib/net.rhai")),
        (
            "rdp/default.rhai",
            include_str!("../../../scripts/rdp/default.rhai"),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_imports_finds_literal_paths_and_lines() {
        let text = "// import \"lib/x\" in a comment\nimport \"lib/net\" as net;\nlet a = 1; import \"lib/util.rhai\" as u;\nlet important = 2;";
        assert_eq!(
            static_imports(text),
            vec![(2, "lib/net".to_string()), (3, "lib/util.rhai".to_string())]
        );
    }

    #[test]
    fn editor_temp_names_are_ignored() {
        for n in [
            ".a.html.swp",
            "a.html~",
            "4913",
            ".#a.html",
            "x.tmp",
            "a.rhai.swx",
        ] {
            assert!(is_ignored_name(n), "{n}");
        }
        for n in ["a.html", "10-inventory.rhai", "plugin.toml"] {
            assert!(!is_ignored_name(n), "{n}");
        }
    }
}
