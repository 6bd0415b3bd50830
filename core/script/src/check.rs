//! What `proxlab script check [PATH..]` and `proxlab script run FILE --entry NAME --vm CLUSTER/VMID`
//! call: validation exactly as the server loads, and a one-off run of one entry point.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::engine::{EngineFactory, Limits};
use crate::error::{Diagnostic, LoadError, ScriptError};
use crate::host::Host;
use crate::runtime::{CallOptions, CallReport, ScriptRuntime};
use crate::set::{CompiledScript, Origin, ScriptKind, ScriptSet, SetSources, compile_one};

/// Checks each path as the server would load it and returns every problem (empty = all good):
///
/// - a `*.rhai` file: compiled; if it sits in `deploy/`, `ip/`, `rdp/` its entry points are
///   checked; `import`s are checked against the `lib/` beside its folder (or the defaults);
/// - a plugin folder (holding `plugin.toml`): manifest, scripts, hooks and settings defaults;
/// - a folder of plugins (subfolders with `plugin.toml`): each plugin;
/// - a script folder (with `deploy/`, `ip/`, `rdp/` or `lib/`): loaded as the site directory over
///   the embedded defaults, as `serve` does.
///
/// A path that is none of these gives one diagnostic saying so.
pub fn check(paths: &[PathBuf], limits: &Limits) -> Vec<Diagnostic> {
    let factory = EngineFactory::new(limits.clone());
    let mut out = Vec::new();
    for path in paths {
        out.extend(check_one(&factory, path));
    }
    out
}

/// Checks a configured set (defaults, site dir, enabled plugins with the site's settings).
pub fn check_sources(sources: &SetSources, limits: &Limits) -> Vec<Diagnostic> {
    let factory = EngineFactory::new(limits.clone());
    ScriptSet::load(&factory, sources).err().unwrap_or_default()
}

fn is_set_dir(dir: &Path) -> bool {
    ["deploy", "ip", "rdp", "lib"]
        .iter()
        .any(|k| dir.join(k).is_dir())
}

fn check_one(factory: &EngineFactory, path: &Path) -> Vec<Diagnostic> {
    if path.is_file() {
        if path.file_name().is_some_and(|n| n == "plugin.toml") {
            return path
                .parent()
                .map(|p| check_plugin_dir(factory, p))
                .unwrap_or_default();
        }
        return match compile_file(factory, path) {
            Ok((script, root)) => {
                // Imports must resolve against the set around the file (or the defaults).
                let sources = SetSources {
                    defaults: None,
                    site: root,
                    ..Default::default()
                };
                let mut errs = Vec::new();
                match ScriptSet::load(factory, &sources) {
                    Ok(set) => {
                        let text = std::fs::read_to_string(path).unwrap_or_default();
                        for (line, target) in crate::set::static_imports(&text) {
                            if set
                                .get(&format!("{}.rhai", crate::set::lib_key(&target)))
                                .is_none()
                            {
                                errs.push(LoadError {
                                    file: script.path.clone(),
                                    line: Some(line),
                                    column: None,
                                    message: format!("import {target:?} not found"),
                                });
                            }
                        }
                    }
                    Err(mut e) => errs.append(&mut e),
                }
                errs
            }
            Err(e) => e,
        };
    }
    if path.is_dir() {
        if path.join("plugin.toml").is_file() {
            return check_plugin_dir(factory, path);
        }
        if is_set_dir(path) {
            let sources = SetSources {
                defaults: None,
                site: Some(path.to_path_buf()),
                ..Default::default()
            };
            return ScriptSet::load(factory, &sources).err().unwrap_or_default();
        }
        let plugins: Vec<String> = std::fs::read_dir(path)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().join("plugin.toml").is_file())
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default();
        if !plugins.is_empty() {
            let sources = SetSources {
                plugin_dirs: vec![path.to_path_buf()],
                enabled_plugins: plugins,
                ..Default::default()
            };
            return ScriptSet::load(factory, &sources).err().unwrap_or_default();
        }
    }
    vec![LoadError::file(
        path,
        "not a script (*.rhai), a script folder (deploy/ ip/ rdp/ lib/), a plugin folder or a folder of plugins",
    )]
}

fn check_plugin_dir(factory: &EngineFactory, dir: &Path) -> Vec<Diagnostic> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let parent = dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let sources = SetSources {
        plugin_dirs: vec![parent],
        enabled_plugins: vec![name],
        ..Default::default()
    };
    ScriptSet::load(factory, &sources).err().unwrap_or_default()
}

/// Compiles one file. Its kind comes from its folder name (`deploy`, `ip`, `rdp`, `lib`; any other
/// folder is checked as a plugin script without entry points). Returns the script and, when the
/// folder above it looks like a script folder, that root.
fn compile_file(
    factory: &EngineFactory,
    path: &Path,
) -> Result<(Arc<CompiledScript>, Option<PathBuf>), Vec<LoadError>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![LoadError::file(path, format!("cannot read: {e}"))])?;
    let folder = path
        .parent()
        .and_then(|p| p.file_name())
        .map(|f| f.to_string_lossy().to_string());
    let kind = match folder.as_deref() {
        Some("deploy") => ScriptKind::Deploy,
        Some("ip") => ScriptKind::Ip,
        Some("rdp") => ScriptKind::Rdp,
        Some("lib") => ScriptKind::Lib,
        _ => ScriptKind::Plugin,
    };
    let root = path
        .parent()
        .and_then(Path::parent)
        .filter(|r| is_set_dir(r))
        .map(Path::to_path_buf);
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_default();
    let name = format!("{}/{file}", folder.unwrap_or_default());
    let engine = factory.compile_engine();
    let mut errors = Vec::new();
    match compile_one(&engine, &name, path, &text, kind, Origin::Site, &mut errors) {
        Some(s) if errors.is_empty() => Ok((s, root)),
        _ => Err(errors),
    }
}

/// Parses `CLUSTER/VMID` (`lab/105`). Errors name the expected form.
pub fn parse_vm_ref(s: &str) -> Result<(String, u32), ScriptError> {
    let bad = || ScriptError::BadArgument(format!("{s:?}: expected CLUSTER/VMID, e.g. lab/105"));
    let (cluster, vmid) = s.split_once('/').ok_or_else(bad)?;
    let vmid: u32 = vmid.parse().map_err(|_| bad())?;
    if cluster.is_empty() || !(100..=999_999_999).contains(&vmid) {
        return Err(bad());
    }
    Ok((cluster.to_string(), vmid))
}

/// The `vm` argument scripts receive: the inventory record of `cluster/vmid` (see
/// `inventory::guest` in `scripts/API.md`), with `cluster` and `vmid` always set. A VM the
/// inventory does not know gives a minimal `#{cluster, vmid}`.
pub fn vm_arg(host: &dyn Host, cluster: &str, vmid: u32) -> serde_json::Value {
    let mut v = host
        .inventory_guest(cluster, vmid)
        .filter(|v| v.is_object())
        .unwrap_or_else(|| serde_json::json!({}));
    if let serde_json::Value::Object(m) = &mut v {
        m.insert("cluster".into(), cluster.into());
        m.insert("vmid".into(), vmid.into());
    }
    v
}

/// Sample arguments for running `entry` by hand against one VM (`proxlab script run`):
/// `discover(vm)`, `rdp_settings(vm, #{name: "admin", display_name: "Admin"})`,
/// `plan(ctx)` and `create_vm(ctx, vm)` with a one-student class using `vm` as its template,
/// hooks `on_*(ctx)` with `#{vm}`. Any other entry gets `[vm]`.
pub fn sample_args(entry: &str, vm: &serde_json::Value) -> Vec<serde_json::Value> {
    let user = serde_json::json!({"name": "admin", "display_name": "Admin", "role": "admin"});
    let vmid = vm.get("vmid").and_then(|v| v.as_u64()).unwrap_or(100);
    let ctx = serde_json::json!({
        "cluster": vm.get("cluster").cloned().unwrap_or_default(),
        "node": vm.get("node").cloned().unwrap_or_default(),
        "class": {"id": "sample", "name": "Sample class", "students": [{"name": "student1"}]},
        "template": vm,
        "vmids": [vmid + 10_000, vmid + 10_001],
        "storage": {"id": "local", "path": "/var/lib/vz", "type": "dir"},
        "options": {},
    });
    match entry {
        "rdp_settings" => vec![vm.clone(), user],
        "plan" => vec![ctx],
        "create_vm" => {
            let target = serde_json::json!({"name": "sample-student1", "vmid": vmid + 10_001, "role": "student", "user": "student1"});
            vec![ctx, target]
        }
        e if e.starts_with("on_") => vec![serde_json::json!({"vm": vm})],
        _ => vec![vm.clone()],
    }
}

/// Compiles `file` on its own (libraries resolve from the set `sources`, so `import "lib/net"`
/// works as on the server) and runs `entry(args..)` with `opts` (set `dry_run` for workflows).
///
/// Errors: [`ScriptError::Load`] (the file or the set does not load), and everything
/// [`ScriptRuntime::call`] returns.
pub async fn run_entry_file(
    runtime: &ScriptRuntime,
    sources: &SetSources,
    file: &Path,
    entry: &str,
    args: Vec<serde_json::Value>,
    opts: CallOptions,
) -> Result<CallReport, ScriptError> {
    let set = Arc::new(runtime.load_set(sources).map_err(ScriptError::Load)?);
    // Only the entry asked for must exist (a half-written workflow can be tried with `plan`).
    let script = compile_plain(runtime.factory(), file)?;
    runtime.call(&set, script, entry, args, opts).await
}

fn compile_plain(factory: &EngineFactory, path: &Path) -> Result<Arc<CompiledScript>, ScriptError> {
    let text = std::fs::read_to_string(path).map_err(|e| ScriptError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let engine = factory.compile_engine();
    let mut errors = Vec::new();
    let name = path.display().to_string();
    compile_one(
        &engine,
        &name,
        path,
        &text,
        ScriptKind::Plugin,
        Origin::Site,
        &mut errors,
    )
    .ok_or(ScriptError::Load(errors))
}
