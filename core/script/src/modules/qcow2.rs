//! `qcow2::` — QCOW2 images on a node's file storage (info, overlay, flatten), done by the
//! cloner's executor behind [`crate::Qcow2Ops`].

use rhai::plugin::*;

/// QCOW2 operations.
#[export_module]
pub mod qcow2_mod {
    use crate::engine::{call_state, throw};
    use crate::modules::to_dyn;

    /// `qemu-img info` of the image at absolute `path` on `node` of `cluster`. Returns the parsed
    /// JSON as a map: `format` ("qcow2", "raw"), `virtual-size` (bytes), `actual-size` (bytes),
    /// `backing-filename`, `backing-filename-format`, `cluster-size` (bytes), ... as qemu-img
    /// prints them. Runs in a dry run too (it only reads).
    /// Errors: `qcow2.unavailable`, `qcow2.not_found`, `qcow2.failed`, `ssh.*`.
    #[rhai_fn(return_raw)]
    pub fn info(
        ctx: NativeCallContext,
        cluster: &str,
        node: &str,
        path: &str,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let state = call_state(&ctx)?;
            let ops = state
                .host
                .qcow2()
                .ok_or_else(|| throw("qcow2.unavailable", "no QCOW2 executor configured"))?;
            let v = state
                .host_call(|| state.host.runtime().block_on(ops.info(cluster, node, path)))
                .map_err(|e| throw(&e.code, e.message))?;
            to_dyn(&v)
        })
    }

    /// Creates a QCOW2 overlay at absolute path `overlay` whose backing file is the absolute path
    /// `base` of format `base_format` ("qcow2" or "raw"):
    /// `qemu-img create -f qcow2 -b BASE -F BASE_FORMAT OVERLAY`. Returns `()`.
    /// In a dry run only records the action. Errors: `arg.path` (relative path),
    /// `qcow2.unavailable`, `qcow2.exists`, `qcow2.failed`, `ssh.*`.
    #[rhai_fn(return_raw)]
    pub fn create_overlay(
        ctx: NativeCallContext,
        cluster: &str,
        node: &str,
        base: &str,
        base_format: &str,
        overlay: &str,
    ) -> Result<(), Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            if !base.starts_with('/') || !overlay.starts_with('/') {
                return Err(throw("arg.path", "base and overlay must be absolute paths"));
            }
            if !["qcow2", "raw"].contains(&base_format) {
                return Err(throw("arg.format", "base_format must be \"qcow2\" or \"raw\""));
            }
            let state = call_state(&ctx)?;
            state.record(format!(
                "qcow2 {cluster}/{node}: create overlay {overlay} backing {base} ({base_format})"
            ));
            if state.dry_run {
                return Ok(());
            }
            let ops = state
                .host
                .qcow2()
                .ok_or_else(|| throw("qcow2.unavailable", "no QCOW2 executor configured"))?;
            state
                .host_call(|| {
                    state.host.runtime().block_on(ops.create_overlay(
                        cluster,
                        node,
                        base,
                        base_format,
                        overlay,
                    ))
                })
                .map_err(|e| throw(&e.code, e.message))
        })
    }

    /// Writes a standalone QCOW2 copy of absolute path `src` (its backing chain merged) to the
    /// absolute path `dst`: `qemu-img convert -O qcow2 SRC DST`. Returns `()`. Can take minutes
    /// (host time, not counted in the script's time budget). In a dry run only records the action.
    /// Errors: `arg.path`, `qcow2.unavailable`, `qcow2.exists`, `qcow2.failed`, `ssh.*`.
    #[rhai_fn(return_raw)]
    pub fn flatten(
        ctx: NativeCallContext,
        cluster: &str,
        node: &str,
        src: &str,
        dst: &str,
    ) -> Result<(), Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            if !src.starts_with('/') || !dst.starts_with('/') {
                return Err(throw("arg.path", "src and dst must be absolute paths"));
            }
            let state = call_state(&ctx)?;
            state.record(format!("qcow2 {cluster}/{node}: flatten {src} -> {dst}"));
            if state.dry_run {
                return Ok(());
            }
            let ops = state
                .host
                .qcow2()
                .ok_or_else(|| throw("qcow2.unavailable", "no QCOW2 executor configured"))?;
            state
                .host_call(|| {
                    state
                        .host
                        .runtime()
                        .block_on(ops.flatten(cluster, node, src, dst))
                })
                .map_err(|e| throw(&e.code, e.message))
        })
    }
}
