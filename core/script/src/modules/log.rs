//! `log::` — messages to the server log, tagged with the script path: `log::detail` (DEBUG),
//! `log::info`, `log::warn`, `log::error`.

use rhai::plugin::*;

fn script_path(ctx: &NativeCallContext) -> String {
    crate::engine::call_state(ctx)
        .map(|s| s.path.clone())
        .unwrap_or_default()
}

/// `log::detail|info|warn|error(message)`.
#[export_module]
pub mod log_mod {
    use super::script_path;

    /// Writes `message` to the server log at DEBUG level, tagged with the script path.
    /// Returns `()`. Never fails. (Named `detail` because `debug` is a Rhai keyword; the
    /// built-in `debug(value)` also logs at DEBUG level.)
    pub fn detail(ctx: NativeCallContext, message: &str) {
        tracing::debug!(target: "script", script = %script_path(&ctx), "{message}");
    }

    /// Writes `message` to the server log at INFO level, tagged with the script path.
    /// Returns `()`. Never fails.
    pub fn info(ctx: NativeCallContext, message: &str) {
        tracing::info!(target: "script", script = %script_path(&ctx), "{message}");
    }

    /// Writes `message` to the server log at WARN level, tagged with the script path.
    /// Returns `()`. Never fails.
    pub fn warn(ctx: NativeCallContext, message: &str) {
        tracing::warn!(target: "script", script = %script_path(&ctx), "{message}");
    }

    /// Writes `message` to the server log at ERROR level, tagged with the script path.
    /// Returns `()`. Never fails. (To fail the call, `throw #{code, message}` instead.)
    pub fn error(ctx: NativeCallContext, message: &str) {
        tracing::error!(target: "script", script = %script_path(&ctx), "{message}");
    }
}
