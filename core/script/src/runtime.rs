//! [`ScriptRuntime`]: runs entry points of a [`ScriptSet`] snapshot on blocking threads behind a
//! semaphore, with the per-call watchdog, and maps every outcome to [`ScriptError`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rhai::{CallFnOptions, Dynamic, Scope};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::engine::{CallState, EngineFactory, Limits};
use crate::error::{LoadError, ScriptError};
use crate::host::{Host, JobSink};
use crate::plugin::Hook;
use crate::set::{CompiledScript, ScriptSet, SetSources};

/// Options of one call.
#[derive(Clone, Default)]
pub struct CallOptions {
    /// Dry run: write host functions record instead of acting (`job::dry_run()` is `true`).
    pub dry_run: bool,
    /// Where `job::progress` / `job::step` report.
    pub job: Option<Arc<dyn JobSink>>,
    /// Set to `true` to stop the script at its next operation (e.g. the job was cancelled).
    pub cancel: Option<Arc<AtomicBool>>,
}

/// The result of a call with its record of write actions (see `job::actions()`).
#[derive(Clone, Debug, Serialize)]
pub struct CallReport {
    /// The entry point's return value as JSON (`()` → `null`).
    pub value: serde_json::Value,
    /// Write actions done (or, in a dry run, that would have been done), in order.
    pub actions: Vec<String>,
}

/// Outcome of one plugin hook run (see [`ScriptRuntime::dispatch`]).
#[derive(Debug)]
pub struct HookRun {
    /// Plugin name.
    pub plugin: String,
    /// The hook.
    pub hook: Hook,
    /// What the hook function returned, or why it failed.
    pub result: Result<serde_json::Value, ScriptError>,
}

/// Runs scripts. Cheap to clone; share one per server.
#[derive(Clone)]
pub struct ScriptRuntime {
    factory: EngineFactory,
    host: Arc<dyn Host>,
    permits: Arc<Semaphore>,
    ticks: Arc<Mutex<HashMap<String, u64>>>,
}

impl ScriptRuntime {
    /// A runtime over `host` with `limits`; at most `limits.max_concurrent` scripts run at once.
    pub fn new(host: Arc<dyn Host>, limits: Limits) -> Self {
        let permits = Arc::new(Semaphore::new(limits.max_concurrent.max(1)));
        ScriptRuntime {
            factory: EngineFactory::new(limits),
            host,
            permits,
            ticks: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The engine factory (for compiling and API docs).
    pub fn factory(&self) -> &EngineFactory {
        &self.factory
    }

    /// The host.
    pub fn host(&self) -> &Arc<dyn Host> {
        &self.host
    }

    /// Loads a set with this runtime's limits (see [`ScriptSet::load`]). Suitable as the builder
    /// of a [`crate::Reloader`]: `move || rt.load_set(&sources)`.
    pub fn load_set(&self, sources: &SetSources) -> Result<ScriptSet, Vec<LoadError>> {
        ScriptSet::load(&self.factory, sources)
    }

    /// Calls `entry(args..)` of script `script` (a name accepted by [`ScriptSet::get`]) in the
    /// snapshot `set`. Arguments and result are JSON (objects become Rhai maps).
    ///
    /// Errors: [`ScriptError::NoSuchScript`], [`ScriptError::MissingEntryPoint`],
    /// [`ScriptError::LimitExceeded`], [`ScriptError::Thrown`], [`ScriptError::Runtime`],
    /// [`ScriptError::Cancelled`], [`ScriptError::Task`].
    pub async fn run_entry(
        &self,
        set: &Arc<ScriptSet>,
        script: &str,
        entry: &str,
        args: Vec<serde_json::Value>,
    ) -> Result<serde_json::Value, ScriptError> {
        self.run_entry_with(set, script, entry, args, CallOptions::default())
            .await
            .map(|r| r.value)
    }

    /// Like [`ScriptRuntime::run_entry`] with options (dry run, job sink, cancel flag); also
    /// returns the recorded write actions.
    pub async fn run_entry_with(
        &self,
        set: &Arc<ScriptSet>,
        script: &str,
        entry: &str,
        args: Vec<serde_json::Value>,
        opts: CallOptions,
    ) -> Result<CallReport, ScriptError> {
        let compiled = set
            .get(script)
            .cloned()
            .ok_or_else(|| ScriptError::NoSuchScript {
                name: script.to_string(),
            })?;
        self.call(set, compiled, entry, args, opts).await
    }

    /// Runs a compiled script's entry point (the script may come from any snapshot, e.g. one
    /// loaded with [`crate::compile_file`]).
    pub async fn call(
        &self,
        set: &Arc<ScriptSet>,
        script: Arc<CompiledScript>,
        entry: &str,
        args: Vec<serde_json::Value>,
        opts: CallOptions,
    ) -> Result<CallReport, ScriptError> {
        if !script.has_fn(entry, args.len()) {
            return Err(ScriptError::MissingEntryPoint {
                path: script.path_str(),
                entry: entry.to_string(),
                arity: args.len(),
            });
        }
        let dyn_args = args
            .iter()
            .map(rhai::serde::to_dynamic)
            .collect::<Result<Vec<Dynamic>, _>>()
            .map_err(|e| ScriptError::BadArgument(e.to_string()))?;

        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ScriptError::Task("script runtime closed".into()))?;
        // A per-call flag: set when this future is dropped (the caller gave up), so the script
        // stops at its next operation. The caller's own flag (a job's) is watched as well.
        let dropped = Arc::new(AtomicBool::new(false));
        let _stop_on_drop = CancelOnDrop(dropped.clone());
        let state = Arc::new(CallState::new(
            self.host.clone(),
            script.path_str(),
            opts.dry_run,
            opts.job.clone(),
            dropped,
            opts.cancel.clone(),
        ));
        let factory = self.factory.clone();
        let resolver = set.resolver();
        let entry = entry.to_string();
        let span =
            tracing::info_span!("script", path = %script.path_str(), entry = %entry, dry_run = opts.dry_run);
        let handle = tokio::task::spawn_blocking(move || {
            // The permit lives inside the blocking task: a dropped caller does not free the slot
            // while the script still runs.
            let _permit = permit;
            let _enter = span.enter();
            let mut engine = factory.call_engine(state.clone());
            engine.set_module_resolver(resolver);
            let mut scope = Scope::new();
            let options = CallFnOptions::new().eval_ast(true).rewind_scope(true);
            let result: Result<Dynamic, _> =
                engine.call_fn_with_options(options, &mut scope, &script.ast, &entry, dyn_args);
            let actions = state.actions();
            match result {
                Ok(value) => {
                    let value: serde_json::Value =
                        rhai::serde::from_dynamic(&value).map_err(|e| ScriptError::BadReturn {
                            path: script.path_str(),
                            entry: entry.clone(),
                            message: e.to_string(),
                        })?;
                    Ok(CallReport { value, actions })
                }
                Err(e) => {
                    let err = ScriptError::from_eval(&e, &script.path_str());
                    tracing::warn!(error = %err, "script failed");
                    Err(err)
                }
            }
        });
        handle.await.map_err(|e| ScriptError::Task(e.to_string()))?
    }

    /// Runs hook `hook` of every enabled plugin that implements it, one after another, and
    /// returns each outcome (a failing plugin does not stop the others).
    ///
    /// Each hook function gets one map `ctx` = `event` (an object) plus:
    /// `ctx.plugin` (name), `ctx.hook`, `ctx.now` (host clock, unix s), `ctx.settings` (site
    /// settings of the plugin), and — if `event` has `classes: [..]` or `class: #{..}` — each
    /// class gets `settings`: the plugin's settings with the class's overrides from
    /// `class.plugins[<plugin name>]` applied (bad overrides make that hook run fail with
    /// [`ScriptError::BadArgument`]).
    pub async fn dispatch(&self, set: &Arc<ScriptSet>, hook: Hook, event: serde_json::Value) -> Vec<HookRun> {
        self.dispatch_filtered(set, hook, event, |_| true, CallOptions::default())
            .await
    }

    /// Runs the `on_tick` hooks whose interval has elapsed at host time `now` (unix s) since
    /// their last run (the first call runs them all), with `event` as for
    /// [`ScriptRuntime::dispatch`]. Call it from the scheduler every few seconds.
    pub async fn tick(&self, set: &Arc<ScriptSet>, event: serde_json::Value) -> Vec<HookRun> {
        let now = self.host.now();
        let due: Vec<String> = {
            let Ok(mut last) = self.ticks.lock() else {
                return Vec::new();
            };
            set.plugins()
                .iter()
                .filter_map(|p| {
                    let h = p.hook(Hook::OnTick)?;
                    let every = h.interval.unwrap_or(Duration::from_secs(60)).as_secs().max(1);
                    let name = p.manifest.name.clone();
                    let due = last.get(&name).is_none_or(|t| now >= t.saturating_add(every));
                    if due {
                        last.insert(name.clone(), now);
                    }
                    due.then_some(name)
                })
                .collect()
        };
        if due.is_empty() {
            return Vec::new();
        }
        self.dispatch_filtered(
            set,
            Hook::OnTick,
            event,
            |p| due.iter().any(|d| d == p),
            CallOptions::default(),
        )
        .await
    }

    /// [`ScriptRuntime::dispatch`] for the plugins whose name passes `filter`, with options.
    pub async fn dispatch_filtered(
        &self,
        set: &Arc<ScriptSet>,
        hook: Hook,
        event: serde_json::Value,
        filter: impl Fn(&str) -> bool,
        opts: CallOptions,
    ) -> Vec<HookRun> {
        let mut runs = Vec::new();
        for plugin in set.plugins() {
            let name = plugin.manifest.name.clone();
            let Some(bound) = plugin.hook(hook) else { continue };
            if !filter(&name) {
                continue;
            }
            let result = match build_hook_ctx(plugin, hook, &event, self.host.now()) {
                Ok(ctx) => self
                    .call(set, bound.script.clone(), hook.fn_name(), vec![ctx], opts.clone())
                    .await
                    .map(|r| r.value),
                Err(e) => Err(e),
            };
            if let Err(e) = &result {
                tracing::warn!(plugin = %name, hook = hook.fn_name(), error = %e, "plugin hook failed");
            }
            runs.push(HookRun {
                plugin: name,
                hook,
                result,
            });
        }
        runs
    }

    /// Runs the IP-discovery tiers of `set` in order with `vm` (an inventory record) until one
    /// returns an address — a string, or a map `#{address, all, source}` (only `address` is used
    /// here; the server's discovery also keeps `all` and `source`). Returns `(address, tier name)`,
    /// or `None` when no tier found one. A tier that fails is logged and skipped.
    pub async fn discover_ip(
        &self,
        set: &Arc<ScriptSet>,
        vm: &serde_json::Value,
    ) -> Option<(String, String)> {
        for tier in set.ip_tiers() {
            let r = self
                .call(
                    set,
                    tier.clone(),
                    "discover",
                    vec![vm.clone()],
                    CallOptions::default(),
                )
                .await;
            let address = match &r {
                Ok(CallReport {
                    value: serde_json::Value::String(ip),
                    ..
                }) => Some(ip.clone()),
                Ok(CallReport {
                    value: serde_json::Value::Object(m),
                    ..
                }) => m.get("address").and_then(|a| a.as_str()).map(str::to_string),
                _ => None,
            };
            match r {
                Ok(_) if address.as_deref().is_some_and(|a| !a.is_empty()) => {
                    return address.map(|a| (a, tier.short_name().to_string()));
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(tier = %tier.name, error = %e, "IP tier failed"),
            }
        }
        None
    }

    /// Runs `rdp_settings(vm, user)` of `rdp/<name>.rhai`; the result must be a map (the caller
    /// escapes and renders it into an `.rdp` file).
    /// Errors: [`ScriptError::NoSuchScript`], [`ScriptError::BadReturn`] when not a map, and
    /// everything [`ScriptRuntime::run_entry`] returns.
    pub async fn rdp_settings(
        &self,
        set: &Arc<ScriptSet>,
        name: &str,
        vm: serde_json::Value,
        user: serde_json::Value,
    ) -> Result<serde_json::Map<String, serde_json::Value>, ScriptError> {
        let script = set.rdp(name).cloned().ok_or_else(|| ScriptError::NoSuchScript {
            name: format!("rdp/{name}.rhai"),
        })?;
        let path = script.path_str();
        match self
            .call(
                set,
                script,
                "rdp_settings",
                vec![vm, user],
                CallOptions::default(),
            )
            .await?
            .value
        {
            serde_json::Value::Object(m) => Ok(m),
            other => Err(ScriptError::BadReturn {
                path,
                entry: "rdp_settings".into(),
                message: format!("expected a map, got {other}"),
            }),
        }
    }
}

fn build_hook_ctx(
    plugin: &crate::plugin::Plugin,
    hook: Hook,
    event: &serde_json::Value,
    now: u64,
) -> Result<serde_json::Value, ScriptError> {
    use serde_json::Value as V;
    let name = &plugin.manifest.name;
    let mut ctx = match event {
        V::Object(m) => m.clone(),
        V::Null => serde_json::Map::new(),
        other => {
            let mut m = serde_json::Map::new();
            m.insert("event".into(), other.clone());
            m
        }
    };
    let class_settings = |class: &mut V| -> Result<(), ScriptError> {
        let overrides = class.get("plugins").and_then(|p| p.get(name)).cloned();
        let merged = plugin.settings_for(overrides.as_ref()).map_err(|e| {
            let id = class.get("id").map(|i| i.to_string()).unwrap_or_default();
            ScriptError::BadArgument(format!("class {id}: plugin {name}: {}", e.join("; ")))
        })?;
        if let V::Object(c) = class {
            c.insert("settings".into(), V::Object(merged));
        }
        Ok(())
    };
    if let Some(V::Array(classes)) = ctx.get_mut("classes") {
        for c in classes.iter_mut() {
            class_settings(c)?;
        }
    }
    if let Some(c @ V::Object(_)) = ctx.get_mut("class") {
        class_settings(c)?;
    }
    ctx.insert("plugin".into(), V::String(name.clone()));
    ctx.insert("hook".into(), V::String(hook.fn_name().into()));
    ctx.insert("now".into(), V::from(now));
    ctx.insert("settings".into(), V::Object(plugin.site_settings.clone()));
    Ok(V::Object(ctx))
}

struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        // Harmless after completion; stops a still-running script when the caller went away.
        self.0.store(true, Ordering::Relaxed);
    }
}
