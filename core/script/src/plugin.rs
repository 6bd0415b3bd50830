//! Plugins: `plugins/<name>/plugin.toml` + `*.rhai` (+ optional `templates/`), loaded as part of
//! the reloadable [`crate::ScriptSet`] when enabled for the site.
//!
//! ```toml
//! name = "idle-shutdown"
//! version = "1.0.0"
//! description = "Shuts down idle student VMs and VMs outside class hours"
//!
//! [[hooks]]
//! name = "on_tick"          # on_tick | on_vm_started | on_vm_stopped | on_class_deployed
//! interval = "1m"           # on_tick only: 30s, 5m, 1h (default 60s)
//! script = "main.rhai"      # default main.rhai; must define fn on_tick(ctx)
//!
//! [settings.idle_minutes]
//! type = "integer"          # string | integer | float | bool | list | map
//! default = 30
//! description = "Minutes below the CPU threshold before a VM is shut down"
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rhai::Engine;
use serde::{Deserialize, Serialize};

use crate::error::LoadError;
use crate::set::{CompiledScript, Origin, ScriptKind, compile_one, is_ignored_name};

/// A plugin hook; every hook function takes one argument, `ctx` (see [`crate::ScriptRuntime::dispatch`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    /// Runs every `interval` (default 60 s) from the scheduler.
    OnTick,
    /// A guest went from not running to running (seen by inventory sync or after a start task).
    OnVmStarted,
    /// A guest went from running to stopped.
    OnVmStopped,
    /// A class deployment job finished (successfully or with some failed VMs).
    OnClassDeployed,
}

impl Hook {
    /// Every hook.
    pub const ALL: [Hook; 4] = [
        Hook::OnTick,
        Hook::OnVmStarted,
        Hook::OnVmStopped,
        Hook::OnClassDeployed,
    ];

    /// The function name a plugin script defines for the hook (`on_tick`, ...).
    pub fn fn_name(self) -> &'static str {
        match self {
            Hook::OnTick => "on_tick",
            Hook::OnVmStarted => "on_vm_started",
            Hook::OnVmStopped => "on_vm_stopped",
            Hook::OnClassDeployed => "on_class_deployed",
        }
    }

    /// Parses a hook name.
    pub fn parse(name: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.fn_name() == name)
    }
}

/// Type of a plugin setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SettingType {
    /// A string.
    String,
    /// A whole number.
    Integer,
    /// A number (integers accepted).
    Float,
    /// `true`/`false`.
    Bool,
    /// An array (any element type).
    List,
    /// A table/object.
    Map,
}

impl SettingType {
    fn accepts(self, v: &serde_json::Value) -> bool {
        use serde_json::Value as V;
        match self {
            SettingType::String => v.is_string(),
            SettingType::Integer => v.is_i64() || v.is_u64(),
            SettingType::Float => v.is_number(),
            SettingType::Bool => v.is_boolean(),
            SettingType::List => v.is_array(),
            SettingType::Map => matches!(v, V::Object(_)),
        }
    }
}

/// One declared setting of a plugin.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingDecl {
    /// Its type.
    #[serde(rename = "type")]
    pub ty: SettingType,
    /// Default value (must match the type); a setting without default is required.
    #[serde(default)]
    pub default: Option<toml::Value>,
    /// What it does, for admins.
    #[serde(default)]
    pub description: String,
}

/// One `[[hooks]]` entry of a manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookDecl {
    /// Hook name (`on_tick`, `on_vm_started`, `on_vm_stopped`, `on_class_deployed`).
    pub name: String,
    /// For `on_tick`: how often, `"30s"`, `"5m"`, `"1h"` or a number of seconds. Default 60 s.
    #[serde(default)]
    pub interval: Option<toml::Value>,
    /// Script file in the plugin folder defining the hook function. Default `main.rhai`.
    #[serde(default)]
    pub script: Option<String>,
}

/// `plugin.toml`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginManifest {
    /// Plugin name; must equal its folder name.
    pub name: String,
    /// Version (free form, semver recommended).
    pub version: String,
    /// One-line description.
    #[serde(default)]
    pub description: String,
    /// Hooks it implements.
    #[serde(default)]
    pub hooks: Vec<HookDecl>,
    /// Settings schema, by setting name.
    #[serde(default)]
    pub settings: BTreeMap<String, SettingDecl>,
}

/// A hook bound to its compiled script.
#[derive(Clone, Debug)]
pub struct BoundHook {
    /// Which hook.
    pub hook: Hook,
    /// The script defining the function.
    pub script: Arc<CompiledScript>,
    /// For `on_tick`: the interval.
    pub interval: Option<Duration>,
}

/// Resolved settings of a plugin: defaults ⊕ site ⊕ (at dispatch) class overrides.
pub type PluginSettings = serde_json::Map<String, serde_json::Value>;

/// A loaded plugin.
#[derive(Debug)]
pub struct Plugin {
    /// The manifest as written.
    pub manifest: PluginManifest,
    /// The plugin folder.
    pub dir: PathBuf,
    /// Its scripts by set name (`plugins/<name>/<file>.rhai`).
    pub scripts: BTreeMap<String, Arc<CompiledScript>>,
    /// Hooks bound to scripts.
    pub hooks: Vec<BoundHook>,
    /// `templates/` folder, if the plugin has one (for the themes engine).
    pub templates_dir: Option<PathBuf>,
    /// Defaults merged with the site's settings, already type-checked.
    pub site_settings: PluginSettings,
    pub(crate) sources: Vec<(PathBuf, String)>,
}

impl Plugin {
    /// The hooks of one kind this plugin implements.
    pub fn hook(&self, hook: Hook) -> Option<&BoundHook> {
        self.hooks.iter().find(|h| h.hook == hook)
    }

    /// Settings for one class: the site settings with the class's overrides for this plugin
    /// applied. Unknown keys or wrong types are errors (`"key: expected integer"`).
    pub fn settings_for(
        &self,
        class_overrides: Option<&serde_json::Value>,
    ) -> Result<PluginSettings, Vec<String>> {
        merge_settings(&self.manifest.settings, &self.site_settings, class_overrides)
    }
}

/// Parses `"30s"`, `"5m"`, `"1h"`, `"90"` or an integer (seconds).
pub fn parse_interval(v: &toml::Value) -> Option<Duration> {
    match v {
        toml::Value::Integer(n) => u64::try_from(*n).ok().filter(|n| *n > 0).map(Duration::from_secs),
        toml::Value::String(s) => {
            let s = s.trim();
            let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
                return n
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .map(Duration::from_millis);
            } else if let Some(n) = s.strip_suffix('s') {
                (n, 1)
            } else if let Some(n) = s.strip_suffix('m') {
                (n, 60)
            } else if let Some(n) = s.strip_suffix('h') {
                (n, 3600)
            } else {
                (s, 1)
            };
            num.trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .map(|n| Duration::from_secs(n * mult))
        }
        _ => None,
    }
}

fn toml_to_json(v: &toml::Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// Applies `overrides` (an object) on top of `base`, checking keys and types against `schema`.
pub(crate) fn merge_settings(
    schema: &BTreeMap<String, SettingDecl>,
    base: &PluginSettings,
    overrides: Option<&serde_json::Value>,
) -> Result<PluginSettings, Vec<String>> {
    let mut out = base.clone();
    let mut errs = Vec::new();
    match overrides {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::Object(map)) => {
            for (k, v) in map {
                match schema.get(k) {
                    None => errs.push(format!("{k}: unknown setting")),
                    Some(decl) if !decl.ty.accepts(v) => {
                        errs.push(format!("{k}: expected {:?}, got {v}", decl.ty).to_lowercase())
                    }
                    Some(_) => {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        Some(other) => errs.push(format!("settings must be a table, got {other}")),
    }
    if errs.is_empty() { Ok(out) } else { Err(errs) }
}

/// Finds plugin `name` in `dirs` (the last directory holding it wins), parses its manifest,
/// compiles its scripts, binds its hooks and checks its settings.
pub(crate) fn load_plugin(
    engine: &Engine,
    dirs: &[PathBuf],
    name: &str,
    site_settings: Option<&serde_json::Value>,
) -> Result<Plugin, Vec<LoadError>> {
    let Some(dir) = dirs
        .iter()
        .rev()
        .map(|d| d.join(name))
        .find(|d| d.join("plugin.toml").is_file())
    else {
        let searched = dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(vec![LoadError::file(
            PathBuf::from(format!("plugins/{name}")),
            format!("enabled plugin {name:?} not found (searched: {searched})"),
        )]);
    };
    let manifest_path = dir.join("plugin.toml");
    let text = std::fs::read_to_string(&manifest_path)
        .map_err(|e| vec![LoadError::file(&manifest_path, format!("cannot read: {e}"))])?;
    let manifest: PluginManifest = toml::from_str(&text).map_err(|e| {
        let (line, column) = e
            .span()
            .map(|s| line_col(&text, s.start))
            .map(|(l, c)| (Some(l), Some(c)))
            .unwrap_or((None, None));
        vec![LoadError {
            file: manifest_path.clone(),
            line,
            column,
            message: e.message().to_string(),
        }]
    })?;

    let mut errors = Vec::new();
    if manifest.name != name {
        errors.push(LoadError::file(
            &manifest_path,
            format!("name {:?} does not match the folder name {name:?}", manifest.name),
        ));
    }

    // Settings: defaults must match their type; then apply the site's values.
    let mut defaults = PluginSettings::new();
    for (key, decl) in &manifest.settings {
        match &decl.default {
            Some(d) => {
                let v = toml_to_json(d);
                if decl.ty.accepts(&v) {
                    defaults.insert(key.clone(), v);
                } else {
                    errors.push(LoadError::file(
                        &manifest_path,
                        format!("settings.{key}: default does not match type {:?}", decl.ty).to_lowercase(),
                    ));
                }
            }
            None => {
                let given = site_settings.and_then(|s| s.get(key)).is_some();
                if !given {
                    errors.push(LoadError::file(
                        &manifest_path,
                        format!("settings.{key} has no default and the site config does not set it"),
                    ));
                }
            }
        }
    }
    let site_settings = match merge_settings(&manifest.settings, &defaults, site_settings) {
        Ok(s) => s,
        Err(errs) => {
            for e in errs {
                errors.push(LoadError::file(
                    PathBuf::from("proxlab.toml"),
                    format!("[plugins.settings.{name}] {e}"),
                ));
            }
            defaults
        }
    };

    // Scripts: every *.rhai in the plugin folder (not in templates/).
    let mut scripts = BTreeMap::new();
    let mut sources = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    for path in entries {
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_default();
        if is_ignored_name(&file) || !file.ends_with(".rhai") || !path.is_file() {
            continue;
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(LoadError::file(&path, format!("cannot read: {e}")));
                continue;
            }
        };
        let set_name = format!("plugins/{name}/{file}");
        if let Some(s) = compile_one(
            engine,
            &set_name,
            &path,
            &text,
            ScriptKind::Plugin,
            Origin::Plugin(name.into()),
            &mut errors,
        ) {
            scripts.insert(file.clone(), s);
        }
        sources.push((path, text));
    }

    // Hooks.
    let mut hooks = Vec::new();
    for decl in &manifest.hooks {
        let Some(hook) = Hook::parse(&decl.name) else {
            errors.push(LoadError::file(
                &manifest_path,
                format!(
                    "unknown hook {:?} (on_tick, on_vm_started, on_vm_stopped, on_class_deployed)",
                    decl.name
                ),
            ));
            continue;
        };
        let interval = match (&decl.interval, hook) {
            (None, Hook::OnTick) => Some(Duration::from_secs(60)),
            (None, _) => None,
            (Some(v), Hook::OnTick) => match parse_interval(v) {
                Some(d) => Some(d),
                None => {
                    errors.push(LoadError::file(
                        &manifest_path,
                        format!("hook on_tick: bad interval {v} (use \"30s\", \"5m\", \"1h\")"),
                    ));
                    None
                }
            },
            (Some(_), _) => {
                errors.push(LoadError::file(
                    &manifest_path,
                    format!("hook {}: only on_tick takes an interval", decl.name),
                ));
                None
            }
        };
        let file = decl.script.clone().unwrap_or_else(|| "main.rhai".to_string());
        let Some(script) = scripts.get(&file) else {
            if !dir.join(&file).is_file() {
                errors.push(LoadError::file(
                    &manifest_path,
                    format!(
                        "hook {}: script {file:?} not found in {}",
                        decl.name,
                        dir.display()
                    ),
                ));
            }
            continue;
        };
        if !script.has_fn(hook.fn_name(), 1) {
            errors.push(LoadError::file(
                &script.path,
                format!(
                    "missing entry point `fn {}(ctx)` declared as a hook in plugin.toml",
                    hook.fn_name()
                ),
            ));
            continue;
        }
        hooks.push(BoundHook {
            hook,
            script: script.clone(),
            interval,
        });
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    let templates = dir.join("templates");
    let scripts = scripts.into_values().map(|s| (s.name.clone(), s)).collect();
    Ok(Plugin {
        manifest,
        templates_dir: templates.is_dir().then_some(templates),
        dir,
        scripts,
        hooks,
        site_settings,
        sources,
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse_with_units() {
        assert_eq!(
            parse_interval(&toml::Value::String("30s".into())),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_interval(&toml::Value::String("5m".into())),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            parse_interval(&toml::Value::String("1h".into())),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            parse_interval(&toml::Value::Integer(90)),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_interval(&toml::Value::String("250ms".into())),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_interval(&toml::Value::String("soon".into())), None);
        assert_eq!(parse_interval(&toml::Value::Integer(0)), None);
    }

    #[test]
    fn class_settings_override_site_settings_with_type_checks() {
        let mut schema = BTreeMap::new();
        schema.insert(
            "idle_minutes".to_string(),
            SettingDecl {
                ty: SettingType::Integer,
                default: Some(toml::Value::Integer(30)),
                description: String::new(),
            },
        );
        let mut base = PluginSettings::new();
        base.insert("idle_minutes".into(), serde_json::json!(30));
        let merged = merge_settings(&schema, &base, Some(&serde_json::json!({"idle_minutes": 10}))).unwrap();
        assert_eq!(merged["idle_minutes"], serde_json::json!(10));
        let errs = merge_settings(
            &schema,
            &base,
            Some(&serde_json::json!({"idle_minutes": "ten", "x": 1})),
        )
        .unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
    }
}
