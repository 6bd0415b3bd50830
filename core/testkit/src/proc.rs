//! Process helpers: signal and reap our own children (by PID, after a `/proc/PID/cmdline` check), wait on
//! conditions with deadlines, read log tails, run helper commands with their output in the error.

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use crate::TestkitError;

/// Poll interval while waiting for a server's log line or a child's exit.
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// The command line of `pid` with NULs as spaces, or None once it is gone (a zombie's is empty too).
pub(crate) fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None;
    }
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

/// True while `pid` runs with a command line that contains `marker`.
pub(crate) fn is_ours(pid: u32, marker: &str) -> bool {
    cmdline(pid).is_some_and(|c| c.contains(marker))
}

/// Send `signal` (`TERM`, `KILL`) to `pid` with the `kill` command (no libc; `unsafe` is forbidden).
pub(crate) fn send_signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Stop a child we spawned: SIGTERM if its command line still contains `marker`, wait up to `grace`, then
/// SIGKILL, and reap it (no zombie left). A child that already exited is only reaped.
pub(crate) fn stop_child(child: &mut Child, marker: &str, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let pid = child.id();
    if is_ours(pid, marker) {
        send_signal(pid, "TERM");
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) => std::thread::sleep(POLL),
        }
    }
    // Still running after the grace time: the PID cannot be reused while we have not reaped it.
    let _ = child.kill();
    let _ = child.wait();
}

/// The last `lines` lines of a text file, or a note that it cannot be read.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => tail_of(&String::from_utf8_lossy(&bytes), lines),
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// The last `lines` lines of `text`.
pub(crate) fn tail_of(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Run a helper command to completion; a spawn failure or non-zero exit becomes [`TestkitError::Command`]
/// naming `what`, the exit status and the tail of stdout+stderr.
pub(crate) fn run(cmd: &mut Command, what: &str) -> anyhow::Result<Output> {
    let out = cmd.output().map_err(|e| TestkitError::Command {
        what: what.to_string(),
        detail: format!("cannot run {:?}: {e}", cmd.get_program()),
    })?;
    if !out.status.success() {
        return Err(TestkitError::Command {
            what: what.to_string(),
            detail: output_detail(&out),
        }
        .into());
    }
    Ok(out)
}

/// Exit status plus the tails of stdout and stderr, for error messages.
pub(crate) fn output_detail(out: &Output) -> String {
    format!(
        "{}; stdout: {}; stderr: {}",
        out.status,
        tail_of(&String::from_utf8_lossy(&out.stdout), 15),
        tail_of(&String::from_utf8_lossy(&out.stderr), 25)
    )
}

/// True if the effective user is root (read from `/proc/self/status`, no libc).
pub(crate) fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}
