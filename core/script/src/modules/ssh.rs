//! `ssh::` — run a command on a configured node (cluster id + node name) over SSH.

use rhai::plugin::*;

/// Converts a script array to argv strings; every element must be a string or a number.
pub(crate) fn argv_of(argv: &rhai::Array) -> Result<Vec<String>, Box<EvalAltResult>> {
    if argv.is_empty() {
        return Err(crate::engine::throw("arg.argv", "argv must not be empty"));
    }
    argv.iter()
        .map(|a| {
            if a.is_string() || a.is_int() || a.is_float() {
                Ok(a.to_string())
            } else {
                Err(crate::engine::throw(
                    "arg.argv",
                    format!("argv elements must be strings or numbers, got {}", a.type_name()),
                ))
            }
        })
        .collect()
}

/// SSH commands.
#[export_module]
pub mod ssh_mod {
    use super::argv_of;
    use crate::engine::{call_state, throw};
    use crate::host::ExecOutput;
    use crate::modules::to_dyn;
    use cloner::shell_join;

    /// Runs `argv` (array of strings; element 0 is the program) on `node` of `cluster` over SSH.
    /// Each element is quoted for the remote shell, so spaces, quotes and `;` stay literal
    /// (no pipes, redirections or globbing).
    /// Returns `#{stdout, stderr, status}` (status = exit code, -1 if killed). A non-zero status is
    /// not an error here; see `ssh::run`.
    /// In a dry run nothing runs: the command is recorded and `#{stdout: "", stderr: "",
    /// status: 0, dry_run: true}` is returned.
    /// Errors: `arg.argv`, `ssh.unavailable`, `ssh.unreachable`, `ssh.auth`, `ssh.host_key`, `ssh.failed`.
    #[rhai_fn(return_raw)]
    pub fn exec(
        ctx: NativeCallContext,
        cluster: &str,
        node: &str,
        argv: rhai::Array,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let argv = argv_of(&argv)?;
            let state = call_state(&ctx)?;
            state.record(format!("ssh {cluster}/{node}: {}", shell_join(&argv)));
            if state.dry_run {
                let mut m = rhai::Map::new();
                m.insert("stdout".into(), Dynamic::from(String::new()));
                m.insert("stderr".into(), Dynamic::from(String::new()));
                m.insert("status".into(), Dynamic::from(0_i64));
                m.insert("dry_run".into(), Dynamic::from(true));
                return Ok(Dynamic::from_map(m));
            }
            let out: ExecOutput = state
                .host_call(|| {
                    state
                        .host
                        .runtime()
                        .block_on(state.host.ssh_exec(cluster, node, &argv))
                })
                .map_err(|e| throw(&e.code, e.message))?;
            to_dyn(&out)
        })
    }

    /// Like `ssh::exec`, but returns only stdout and throws `ssh.exit_status` (message = status
    /// and the last line of stderr) when the command exits non-zero. In a dry run returns `""`.
    #[rhai_fn(return_raw)]
    pub fn run(
        ctx: NativeCallContext,
        cluster: &str,
        node: &str,
        argv: rhai::Array,
    ) -> Result<String, Box<EvalAltResult>> {
        let pos = ctx.call_position();
        let out = exec(ctx, cluster, node, argv)?;
        {
            let map = out.cast::<rhai::Map>();
            let status = map.get("status").and_then(|s| s.as_int().ok()).unwrap_or(-1);
            let stdout = map.get("stdout").map(|s| s.to_string()).unwrap_or_default();
            if status != 0 {
                let stderr = map.get("stderr").map(|s| s.to_string()).unwrap_or_default();
                let last = stderr.lines().last().unwrap_or("").to_string();
                let mut e = throw("ssh.exit_status", format!("exit status {status}: {last}"));
                e.set_position(pos);
                return Err(e);
            }
            Ok(stdout)
        }
    }

    /// Quotes one string for a POSIX shell (`'it'\''s'`), for building messages or for the rare
    /// `["sh", "-c", ...]` where the script composes a command line itself. The quoting is the one the
    /// SSH executor uses for argv.
    /// Errors: `arg.nul` for a string with a NUL byte (no shell argument can carry one).
    #[rhai_fn(return_raw)]
    pub fn quote(arg: &str) -> Result<String, Box<EvalAltResult>> {
        cloner::checked_shell_quote(arg).map_err(|e| throw("arg.nul", e.to_string()))
    }
}
