//! The one engine builder: Rhai with every sandbox limit set, strict variables, `print`/`debug` to
//! tracing, the host modules registered, and a per-call watchdog (`on_progress`) that enforces a
//! wall-clock budget, a memory ceiling and cancellation.
//!
//! A fresh [`rhai::Engine`] is built for every call (cheap: the standard library and the host
//! modules are shared, prebuilt [`rhai::Module`]s), so each call carries its own deadline and state.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rhai::packages::{Package, StandardPackage};
use rhai::{Dynamic, Engine, EvalAltResult, Module, Position, Shared};
use serde::{Deserialize, Serialize};

use crate::error::{TOKEN_CANCELLED, TOKEN_MEMORY, TOKEN_SCRIPT_TIME, TOKEN_WALL_TIME};
use crate::host::{Host, JobSink};
use crate::modules;

/// Sandbox limits applied to every script call. All fields have safe defaults
/// ([`Limits::default`]); `proxlab.toml` may override them under `[scripts.limits]`.
///
/// Data sizes are checked by Rhai on the *whole* value: a string limit of 4 MiB bounds the sum of
/// all strings inside one array or map, not each string alone. Map index assignment
/// (`m[k] = v`) is not size-checked by Rhai 1.27, so [`Limits::max_memory_growth_mib`] and
/// [`Limits::max_operations`] bound it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Rhai operations per call (statements, expressions, function calls; a host call counts as
    /// one). Default 10,000,000.
    pub max_operations: u64,
    /// Function-call depth (recursion). Default 32.
    pub max_call_levels: usize,
    /// Expression nesting at top level, checked at compile time. Default 64.
    pub max_expr_depth: usize,
    /// Expression nesting inside functions, checked at compile time. Default 32.
    pub max_function_expr_depth: usize,
    /// Bytes of string data inside one value (a string, or all strings in an array/map). Default 4 MiB.
    pub max_string_size: usize,
    /// Array/BLOB elements inside one value (nested arrays count too). Default 100,000.
    pub max_array_size: usize,
    /// Object-map entries inside one value (nested maps count too). Default 200,000.
    pub max_map_size: usize,
    /// Variables alive at once in a call. Default 256.
    pub max_variables: usize,
    /// Script-defined functions. Default 256.
    pub max_functions: usize,
    /// Modules imported at once. Default 16.
    pub max_modules: usize,
    /// Wall-clock budget of the script's own work per call, in milliseconds; time spent inside
    /// host functions (waiting on PVE, SSH, qemu-img) does not count. Default 1,000 ms.
    pub script_time_ms: u64,
    /// Wall-clock budget of the whole call including host functions, in seconds. Default 3,600 s
    /// (a deployment of a big class waits on many PVE tasks).
    pub wall_time_s: u64,
    /// How far the process's resident memory (RSS, `/proc/self/status` `VmRSS`) may grow during
    /// one call, in MiB. Read at most once a millisecond; the call is stopped once growth passes
    /// 3/4 of this, so what it allocates until the next check stays under the ceiling.
    /// Process-wide: other work in the process counts too, so keep it well above normal
    /// request churn. Default 64 MiB. `0` turns the check off.
    pub max_memory_growth_mib: u64,
    /// Scripts running at once (each on a blocking thread). Default 2.
    pub max_concurrent: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_operations: 10_000_000,
            max_call_levels: 32,
            max_expr_depth: 64,
            max_function_expr_depth: 32,
            max_string_size: 4 * 1024 * 1024,
            max_array_size: 100_000,
            max_map_size: 200_000,
            max_variables: 256,
            max_functions: 256,
            max_modules: 16,
            script_time_ms: 1_000,
            wall_time_s: 3_600,
            max_memory_growth_mib: 64,
            max_concurrent: 2,
        }
    }
}

impl Limits {
    /// Applies every Rhai-side limit to `engine` (not the watchdog; see [`CallState`]).
    pub fn apply(&self, engine: &mut Engine) {
        engine.set_max_operations(self.max_operations.max(1));
        engine.set_max_call_levels(self.max_call_levels);
        engine.set_max_expr_depths(self.max_expr_depth, self.max_function_expr_depth);
        engine.set_max_string_size(self.max_string_size.max(1));
        engine.set_max_array_size(self.max_array_size.max(1));
        engine.set_max_map_size(self.max_map_size.max(1));
        engine.set_max_variables(self.max_variables.max(1));
        engine.set_max_functions(self.max_functions.max(1));
        engine.set_max_modules(self.max_modules);
    }
}

/// Per-call state shared by the watchdog and the host functions (reached through the engine's
/// tag, see [`CallHandle`]).
pub struct CallState {
    pub(crate) host: Arc<dyn Host>,
    /// Script path, for logs and errors.
    pub(crate) path: String,
    pub(crate) dry_run: bool,
    pub(crate) job: Option<Arc<dyn JobSink>>,
    cancel: Arc<AtomicBool>,
    job_cancel: Option<Arc<AtomicBool>>,
    start: Instant,
    host_nanos: AtomicU64,
    rss_start_kib: u64,
    /// Nanoseconds after `start` of the last RSS read.
    rss_checked_at: AtomicU64,
    /// Writes done (or, in dry-run, not done) by host functions, in order, one line each.
    pub(crate) actions: Mutex<Vec<String>>,
}

impl CallState {
    pub(crate) fn new(
        host: Arc<dyn Host>,
        path: String,
        dry_run: bool,
        job: Option<Arc<dyn JobSink>>,
        cancel: Arc<AtomicBool>,
        job_cancel: Option<Arc<AtomicBool>>,
    ) -> Self {
        CallState {
            host,
            path,
            dry_run,
            job,
            cancel,
            job_cancel,
            start: Instant::now(),
            host_nanos: AtomicU64::new(0),
            rss_start_kib: rss_kib().unwrap_or(0),
            rss_checked_at: AtomicU64::new(0),
            actions: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` (a host operation) and books its duration as host time, so that waiting on PVE or
    /// SSH does not eat the script's own time budget.
    pub(crate) fn host_call<R>(&self, f: impl FnOnce() -> R) -> R {
        let t = Instant::now();
        let r = f();
        let nanos = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.host_nanos.fetch_add(nanos, Ordering::Relaxed);
        r
    }

    /// Records one write action (`pve POST /nodes/pve1/qemu/100/clone newid=201`).
    pub(crate) fn record(&self, action: String) {
        tracing::debug!(script = %self.path, dry_run = self.dry_run, "{action}");
        if let Ok(mut a) = self.actions.lock() {
            a.push(action);
        }
    }

    /// The actions recorded so far.
    pub fn actions(&self) -> Vec<String> {
        self.actions.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// `true` once the call was cancelled (caller gone or job cancelled).
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
            || self
                .job_cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::Relaxed))
    }

    fn script_elapsed(&self, elapsed: Duration) -> Duration {
        let host = Duration::from_nanos(self.host_nanos.load(Ordering::Relaxed));
        elapsed.saturating_sub(host)
    }
}

/// The engine tag: a cheap clonable handle to the current [`CallState`].
#[derive(Clone)]
pub struct CallHandle(pub(crate) Arc<CallState>);

/// Reads the resident set size of this process in KiB (`VmRSS` of `/proc/self/status`).
/// `None` where `/proc` is not available.
pub fn rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// How often (in operations) the watchdog looks at the clock and the cancel flag. One operation
/// can allocate up to `max_string_size`, so this stays small; a clock read costs ~25 ns.
const CLOCK_EVERY: u64 = 16;
/// Minimum time between two RSS reads (`/proc/self/status`, a few µs each). Allocation speed
/// bounds how far a script can overshoot the ceiling in this time (a few MiB).
const RSS_PERIOD: Duration = Duration::from_millis(1);

/// Builds engines. Holds the prebuilt standard library and host modules so that building a
/// per-call engine costs microseconds.
#[derive(Clone)]
pub struct EngineFactory {
    limits: Limits,
    std_lib: Shared<Module>,
    host_modules: Vec<(&'static str, Shared<Module>)>,
}

impl EngineFactory {
    /// A factory applying `limits` to every engine it builds.
    pub fn new(limits: Limits) -> Self {
        EngineFactory {
            limits,
            std_lib: StandardPackage::new().as_shared_module(),
            host_modules: modules::all(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// An engine with limits, strict variables and host modules but no per-call state:
    /// for compiling (`check`, loading sets) and for generating `scripts/API.md`.
    /// Host functions called on it throw `host.unavailable`.
    pub fn compile_engine(&self) -> Engine {
        let mut engine = self.base_engine();
        engine.on_print(|s| tracing::info!(target: "script", "{s}"));
        engine.on_debug(|s, src, pos| {
            tracing::debug!(target: "script", script = src.unwrap_or(""), line = pos.line().unwrap_or(0), "{s}")
        });
        engine
    }

    /// An engine for one call: the compile engine plus the watchdog (time budget, memory
    /// ceiling, cancellation) and `state` as its tag, so host functions find the host.
    pub fn call_engine(&self, state: Arc<CallState>) -> Engine {
        let mut engine = self.base_engine();
        let path = state.path.clone();
        engine.on_print(move |s| tracing::info!(target: "script", script = %path, "{s}"));
        let path = state.path.clone();
        engine.on_debug(move |s, src, pos| {
            tracing::debug!(
                target: "script",
                script = %src.unwrap_or(&path),
                line = pos.line().unwrap_or(0),
                "{s}"
            )
        });
        let script_budget = Duration::from_millis(self.limits.script_time_ms.max(1));
        let wall_budget = Duration::from_secs(self.limits.wall_time_s.max(1));
        // Stop at 3/4 of the ceiling: what a script allocates between two checks stays under it.
        let mem_budget_kib = self.limits.max_memory_growth_mib.saturating_mul(1024) / 4 * 3;
        let watch = state.clone();
        let rss_period = u64::try_from(RSS_PERIOD.as_nanos()).unwrap_or(u64::MAX);
        engine.on_progress(move |ops| {
            if ops % CLOCK_EVERY != 0 {
                return None;
            }
            if watch.is_cancelled() {
                return Some(Dynamic::from(TOKEN_CANCELLED));
            }
            let elapsed = watch.start.elapsed();
            if watch.script_elapsed(elapsed) > script_budget {
                return Some(Dynamic::from(TOKEN_SCRIPT_TIME));
            }
            if elapsed > wall_budget {
                return Some(Dynamic::from(TOKEN_WALL_TIME));
            }
            if mem_budget_kib > 0 {
                let now_ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
                let last = watch.rss_checked_at.load(Ordering::Relaxed);
                if now_ns.saturating_sub(last) >= rss_period {
                    watch.rss_checked_at.store(now_ns, Ordering::Relaxed);
                    if let Some(rss) = rss_kib()
                        && rss.saturating_sub(watch.rss_start_kib) > mem_budget_kib
                    {
                        return Some(Dynamic::from(TOKEN_MEMORY));
                    }
                }
            }
            None
        });
        engine.set_default_tag(Dynamic::from(CallHandle(state)));
        engine
    }

    fn base_engine(&self) -> Engine {
        let mut engine = Engine::new_raw();
        engine.register_global_module(self.std_lib.clone());
        for (name, module) in &self.host_modules {
            engine.register_static_module(*name, module.clone());
        }
        self.limits.apply(&mut engine);
        engine.set_strict_variables(true);
        engine.set_fail_on_invalid_map_property(false);
        // `eval` would compile text at run time, out of reach of `check` and of reviews.
        engine.disable_symbol("eval");
        engine
    }
}

/// Finds the current call's state from a native call context; errors when called on an engine
/// without one (a compile-only engine).
pub(crate) fn call_state(ctx: &rhai::NativeCallContext) -> Result<Arc<CallState>, Box<EvalAltResult>> {
    ctx.tag()
        .and_then(|t| t.read_lock::<CallHandle>().map(|h| h.0.clone()))
        .ok_or_else(|| throw("host.unavailable", "host functions are not available here"))
}

/// A thrown `#{code, message}` map, as host functions report failures.
pub(crate) fn throw(code: &str, message: impl Into<String>) -> Box<EvalAltResult> {
    let mut map = rhai::Map::new();
    map.insert("code".into(), Dynamic::from(code.to_string()));
    map.insert("message".into(), Dynamic::from(message.into()));
    Box::new(EvalAltResult::ErrorRuntime(
        Dynamic::from_map(map),
        Position::NONE,
    ))
}

/// Gives a host function's error the position of the call in the script (Rhai leaves errors of
/// namespaced native calls without one), so `ScriptError`s carry the script line.
pub(crate) fn located<T>(
    ctx: &rhai::NativeCallContext,
    body: impl FnOnce() -> Result<T, Box<EvalAltResult>>,
) -> Result<T, Box<EvalAltResult>> {
    body().map_err(|mut e| {
        if e.position().is_none() {
            e.set_position(ctx.call_position());
        }
        e
    })
}
