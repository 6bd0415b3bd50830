//! `qcow2::` — QCOW2 images on a node's file storage (info, overlay, flatten), done by the
//! cloner's executor behind [`crate::Qcow2Ops`].

use std::sync::Arc;

use futures::future::BoxFuture;
use rhai::plugin::*;

use crate::engine::{CallState, throw};
use crate::host::{HostError, Qcow2Ops};

/// Refuses a `format` argument (named `arg` in the message) other than the two formats a volume's
/// config states for these images: `arg.format`.
fn check_format(arg: &str, format: &str) -> Result<(), Box<EvalAltResult>> {
    if ["qcow2", "raw"].contains(&format) {
        Ok(())
    } else {
        Err(throw("arg.format", format!("{arg} must be \"qcow2\" or \"raw\"")))
    }
}

/// Refuses a pair of paths (named `names` in the message) unless both are absolute: `arg.path`.
fn check_absolute(a: &str, b: &str, names: &str) -> Result<(), Box<EvalAltResult>> {
    if a.starts_with('/') && b.starts_with('/') {
        Ok(())
    } else {
        Err(throw("arg.path", format!("{names} must be absolute paths")))
    }
}

/// Runs `op` on the cloner's QCOW2 executor, booked as host time; `qcow2.unavailable` without one,
/// the executor's own error code otherwise.
fn on_executor<R>(
    state: &CallState,
    op: impl FnOnce(Arc<dyn Qcow2Ops>) -> BoxFuture<'static, Result<R, HostError>>,
) -> Result<R, Box<EvalAltResult>> {
    let ops = state
        .host
        .qcow2()
        .ok_or_else(|| throw("qcow2.unavailable", "no QCOW2 executor configured"))?;
    state
        .host_call(|| state.host.runtime().block_on(op(ops)))
        .map_err(|e| throw(&e.code, e.message))
}

/// QCOW2 operations.
#[export_module]
pub mod qcow2_mod {
    use super::{check_absolute, check_format, on_executor};
    use crate::engine::{call_state, throw};
    use crate::modules::to_dyn;

    /// `qemu-img info -f qcow2` of the qcow2 image at absolute `path` on `node` of `cluster` (the
    /// format is stated, never probed; for a raw image pass the format:
    /// `qcow2::info(cluster, node, path, "raw")`). Returns the parsed JSON as a map: `format`,
    /// `virtual-size` (bytes), `actual-size` (bytes), `backing-filename`, `backing-filename-format`,
    /// `cluster-size` (bytes), ... as qemu-img prints them. Runs in a dry run too (it only reads).
    /// Errors: `qcow2.unavailable`, `qcow2.not_found`, `qcow2.format` (not a qcow2 image),
    /// `qcow2.failed`, `ssh.*`.
    #[rhai_fn(return_raw)]
    pub fn info(
        ctx: NativeCallContext,
        cluster: &str,
        node: &str,
        path: &str,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        info_as(ctx, cluster, node, path, "qcow2")
    }

    /// `qemu-img info -f FORMAT` of the image at absolute `path` on `node` of `cluster`; `format` is
    /// "qcow2" or "raw", as the volume's config states (never probed). Returns the parsed JSON as a
    /// map, as `qcow2::info(cluster, node, path)`. Runs in a dry run too (it only reads).
    /// Errors: `arg.format`, `qcow2.unavailable`, `qcow2.not_found`, `qcow2.format` (not such an
    /// image), `qcow2.failed`, `ssh.*`.
    #[rhai_fn(name = "info", return_raw)]
    pub fn info_as(
        ctx: NativeCallContext,
        cluster: &str,
        node: &str,
        path: &str,
        format: &str,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            check_format("format", format)?;
            let state = call_state(&ctx)?;
            let v = on_executor(&state, |ops| ops.info(cluster, node, path, format))?;
            to_dyn(&v)
        })
    }

    /// Creates a QCOW2 overlay at absolute path `overlay` whose backing file is the absolute path
    /// `base` of format `base_format` ("qcow2" or "raw"):
    /// `qemu-img create -f qcow2 -b BASE -F BASE_FORMAT OVERLAY`. The base's chain is checked first,
    /// read as `base_format` (every backing file a qcow2 or raw file inside the node's storage).
    /// Returns `()`. In a dry run only records the action. Errors: `arg.path` (relative path),
    /// `arg.format`, `qcow2.unavailable`, `qcow2.unsafe_image`, `qcow2.format`, `qcow2.exists`,
    /// `qcow2.failed`, `ssh.*`.
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
            check_absolute(base, overlay, "base and overlay")?;
            check_format("base_format", base_format)?;
            let state = call_state(&ctx)?;
            state.record(format!(
                "qcow2 {cluster}/{node}: create overlay {overlay} backing {base} ({base_format})"
            ));
            if state.dry_run {
                return Ok(());
            }
            on_executor(&state, |ops| {
                ops.create_overlay(cluster, node, base, base_format, overlay)
            })
        })
    }

    /// The old form without the source format: always refused (`arg.format`), because reading the
    /// format from the file lets a disk that is raw in PVE's config pass for a qcow2 with a backing
    /// file anywhere on the node. Use `qcow2::flatten(cluster, node, src, src_format, dst)`.
    #[rhai_fn(name = "flatten", return_raw)]
    pub fn flatten_without_format(
        ctx: NativeCallContext,
        cluster: &str,
        node: &str,
        src: &str,
        dst: &str,
    ) -> Result<(), Box<EvalAltResult>> {
        let _ = (cluster, node, src, dst);
        crate::engine::located(&ctx, || {
            Err(throw(
                "arg.format",
                "qcow2::flatten needs the source format as the volume's config states it: \
                 qcow2::flatten(cluster, node, src, src_format, dst)",
            ))
        })
    }

    /// Writes a standalone QCOW2 copy of absolute path `src`, a `src_format` image ("qcow2" or
    /// "raw", as the volume's config states; never probed), with its backing chain merged, to the
    /// absolute path `dst`: `qemu-img convert -f SRC_FORMAT -O qcow2 SRC DST`. The chain is checked
    /// first: every backing file must be a qcow2 or raw file inside the node's storage with its
    /// format recorded (no `json:` or protocol names, no external data files). Returns `()`. Can
    /// take minutes (host time, not counted in the script's time budget). In a dry run only records
    /// the action. Errors: `arg.path`, `arg.format`, `qcow2.unavailable`, `qcow2.unsafe_image`,
    /// `qcow2.format`, `qcow2.exists`, `qcow2.failed`, `ssh.*`.
    #[rhai_fn(return_raw)]
    pub fn flatten(
        ctx: NativeCallContext,
        cluster: &str,
        node: &str,
        src: &str,
        src_format: &str,
        dst: &str,
    ) -> Result<(), Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            check_absolute(src, dst, "src and dst")?;
            check_format("src_format", src_format)?;
            let state = call_state(&ctx)?;
            state.record(format!(
                "qcow2 {cluster}/{node}: flatten {src} ({src_format}) -> {dst}"
            ));
            if state.dry_run {
                return Ok(());
            }
            on_executor(&state, |ops| ops.flatten(cluster, node, src, src_format, dst))
        })
    }
}
