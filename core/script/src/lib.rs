//! `script`: Proxlab's scripting platform — the sandboxed Rhai engine, the host modules scripts
//! use to reach the world, script sets (shipped defaults + site overrides + plugins), plugin
//! hooks, and the generic hot-reload mechanism ([`Reloader`]) that the themes use too.
//!
//! # What this crate owns
//! - The **one engine builder** ([`EngineFactory`]): Rhai with `sync`, every limit set
//!   ([`Limits`]), strict variables, `eval` disabled, `print`/`debug` to `tracing` with the script
//!   path, and a per-call watchdog (script-time budget, wall-clock budget, memory ceiling,
//!   cancellation). `Engine::new()` with defaults is never used.
//! - **Host modules** `pve::`, `inventory::`, `ssh::`, `qcow2::`, `net::`, `log::`, `job::`
//!   (documented in `scripts/API.md`, generated from the engine by [`api_markdown`]). They reach
//!   the outside only through the [`Host`] trait object the server supplies.
//! - **Script sets** ([`ScriptSet`]): immutable compiled snapshots; fixed entry points per kind
//!   checked at load (deploy `plan(ctx)` + `create_vm(ctx, vm)`, IP tier `discover(vm)`, RDP
//!   `rdp_settings(vm, user)`, plugin hooks); `import "lib/x"` resolved inside the snapshot.
//! - **Running** ([`ScriptRuntime`]): each call on a blocking thread
//!   (`tokio::task::spawn_blocking`) behind a semaphore; errors typed as [`ScriptError`]
//!   (`throw #{code, message}` → [`ScriptError::Thrown`] with path and line).
//! - **Plugins** ([`Plugin`], [`Hook`]): `plugins/<name>/plugin.toml`, settings schema with
//!   per-class overrides, hook dispatch and `on_tick` scheduling.
//! - **Hot reload** ([`Reloader<T>`]): directory watch (inotify or polling), editor-temp filter,
//!   debounce, atomic swap, last-good-on-error, status and events.
//! - **Admin tooling**: [`check`] (`proxlab script check`) and [`run_entry_file`]
//!   (`proxlab script run`).
//!
//! # What it must never do
//! - Run a script on a Tokio worker thread, or let a host function block a worker: host
//!   functions `block_on` the runtime handle from the script's blocking thread only.
//! - Give scripts any door to the outside other than the host modules (no file, process or
//!   network access of their own; `eval` is disabled).
//! - Change a snapshot in place: a reload builds a new [`ScriptSet`]; jobs keep the `Arc` they
//!   started with.
//! - Know axum, sled or SSH details: those sit behind [`Host`], [`Qcow2Ops`] and [`JobSink`].
//! - Log secrets: parameters named like passwords/tokens/secrets are masked in action records.

mod api_doc;
mod check;
mod engine;
mod error;
mod host;
mod modules;
mod plugin;
mod reload;
mod runtime;
mod set;

pub use api_doc::api_markdown;
pub use check::{check, check_sources, parse_vm_ref, run_entry_file, sample_args, vm_arg};
pub use engine::{CallState, EngineFactory, Limits, rss_kib};
pub use error::{Diagnostic, Limit, LoadError, ScriptError, format_load_errors};
pub use host::{ExecOutput, Host, HostError, JobSink, NullHost, Qcow2Ops};
pub use modules::net::{ArpEntry, classify as classify_ip, in_cidr, normalize_mac, parse_proc_net_arp};
pub use modules::pve::error_code as pve_error_code;
pub use plugin::{
    BoundHook, Hook, HookDecl, Plugin, PluginManifest, PluginSettings, SettingDecl, SettingType,
    parse_interval,
};
pub use reload::{ReloadConfig, ReloadEvent, ReloadStatus, Reloader, WatchMode, is_relevant_path};
pub use runtime::{CallOptions, CallReport, HookRun, ScriptRuntime};
pub use set::{
    CompiledScript, Origin, ScriptKind, ScriptSet, ScriptSummary, SetSources, embedded_defaults,
    is_ignored_name,
};
