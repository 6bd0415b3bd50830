//! `job::` — progress and step status of the job running this script; dry-run flag; clock.

use rhai::plugin::*;

/// Job reporting functions.
#[export_module]
pub mod job_mod {
    use crate::engine::call_state;

    /// Reports overall progress of the running job: `done` of `total` units (VMs for a
    /// deployment), with a short `message` shown to the teacher.
    /// Returns `()`. Does nothing when the script does not run inside a job.
    /// Errors: `arg.range` if `done` or `total` is negative.
    #[rhai_fn(return_raw)]
    pub fn progress(
        ctx: NativeCallContext,
        done: i64,
        total: i64,
        message: &str,
    ) -> Result<(), Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let state = call_state(&ctx)?;
            let (Ok(d), Ok(t)) = (u64::try_from(done), u64::try_from(total)) else {
                return Err(crate::engine::throw("arg.range", "done and total must be >= 0"));
            };
            tracing::debug!(script = %state.path, done = d, total = t, "{message}");
            if let Some(job) = &state.job {
                job.progress(d, t, message);
            }
            Ok(())
        })
    }

    /// Reports the status of one step of the job: `key` names it (a VM name, `base-image`),
    /// `status` is one of `pending`, `running`, `ok`, `failed`, `skipped`.
    /// Returns `()`. Errors: `arg.status` for any other status.
    #[rhai_fn(name = "step", return_raw)]
    pub fn step2(ctx: NativeCallContext, key: &str, status: &str) -> Result<(), Box<EvalAltResult>> {
        step3(ctx, key, status, "")
    }

    /// Like `step(key, status)` with a free-text `detail` (e.g. the error message of a failed
    /// step). Returns `()`. Errors: `arg.status` for an unknown status.
    #[rhai_fn(name = "step", return_raw)]
    pub fn step3(
        ctx: NativeCallContext,
        key: &str,
        status: &str,
        detail: &str,
    ) -> Result<(), Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let state = call_state(&ctx)?;
            if !["pending", "running", "ok", "failed", "skipped"].contains(&status) {
                return Err(crate::engine::throw(
                    "arg.status",
                    format!("unknown step status {status:?} (pending, running, ok, failed, skipped)"),
                ));
            }
            tracing::debug!(script = %state.path, key, status, "{detail}");
            if let Some(job) = &state.job {
                job.step(key, status, detail);
            }
            Ok(())
        })
    }

    /// `true` when this call is a dry run: write functions (`pve::post`, `pve::clone`,
    /// `ssh::exec`, `qcow2::create_overlay`, ...) only record what they would do.
    #[rhai_fn(return_raw)]
    pub fn dry_run(ctx: NativeCallContext) -> Result<bool, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || Ok(call_state(&ctx)?.dry_run))
    }

    /// `true` once the job was cancelled (the script should stop soon; it is stopped anyway at
    /// its next operation).
    #[rhai_fn(return_raw)]
    pub fn cancelled(ctx: NativeCallContext) -> Result<bool, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || Ok(call_state(&ctx)?.is_cancelled()))
    }

    /// The host's clock: current time in unix seconds (UTC). Tests inject it.
    #[rhai_fn(return_raw)]
    pub fn now(ctx: NativeCallContext) -> Result<i64, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let state = call_state(&ctx)?;
            Ok(i64::try_from(state.host.now()).unwrap_or(i64::MAX))
        })
    }

    /// The write actions recorded in this call so far (one string each, e.g.
    /// `pve POST /nodes/pve1/qemu/9000/clone newid=201`); in a dry run, what would have been done.
    #[rhai_fn(return_raw)]
    pub fn actions(ctx: NativeCallContext) -> Result<rhai::Array, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let state = call_state(&ctx)?;
            Ok(state.actions().into_iter().map(Dynamic::from).collect())
        })
    }
}
