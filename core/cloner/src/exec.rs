//! The [`Executor`] abstraction (run an argv on a node) and [`LocalExecutor`] (the node is this machine).

use std::fmt;
use std::process::Stdio;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::AsyncReadExt;

use crate::{ClonerError, shell_join};

/// At most this many bytes of stdout (and of stderr) are kept per command; more is an error, so a runaway
/// command cannot exhaust memory. 32 MiB.
pub const MAX_OUTPUT: usize = 32 * 1024 * 1024;

/// How much of stderr a [`ClonerError::CommandFailed`] keeps: the last 4 KiB.
const STDERR_TAIL: usize = 4096;

/// What a finished command left behind.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit status. A command killed by a signal reports 128 + the signal number where known, else 255.
    pub status: u32,
    /// Everything it wrote to stdout (at most [`MAX_OUTPUT`] bytes).
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr (at most [`MAX_OUTPUT`] bytes).
    pub stderr: Vec<u8>,
}

impl fmt::Debug for ExecOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecOutput")
            .field("status", &self.status)
            .field("stdout", &String::from_utf8_lossy(&self.stdout))
            .field("stderr", &String::from_utf8_lossy(&self.stderr))
            .finish()
    }
}

impl ExecOutput {
    /// True when the status is 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }

    /// stdout as lossy UTF-8.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// `Ok(self)` on status 0, else [`ClonerError::CommandFailed`] with `argv`, the status and the tail of
    /// stderr.
    pub fn check(self, argv: &[String]) -> Result<ExecOutput, ClonerError> {
        if self.success() {
            return Ok(self);
        }
        let text = String::from_utf8_lossy(&self.stderr);
        let text = text.trim();
        let start = text.len().saturating_sub(STDERR_TAIL);
        let start = (start..=text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        Err(ClonerError::CommandFailed {
            argv: argv.to_vec(),
            status: self.status,
            stderr: text[start..].to_string(),
        })
    }
}

/// Runs one argv on a node and collects its output.
///
/// Implementations: [`crate::SshExecutor`] (over a pooled SSH connection; argv is joined with
/// [`crate::shell_join`] because SSH carries one command string) and [`LocalExecutor`] (spawns argv
/// directly, no shell). A non-zero exit is NOT an error here (it is in the returned status; use
/// [`ExecOutput::check`]); errors are transport problems, timeouts and refused arguments.
///
/// Futures are boxed (`futures::future::BoxFuture`) so the trait stays object-safe: callers hold
/// `Arc<dyn Executor>`.
pub trait Executor: Send + Sync + fmt::Debug {
    /// Run `argv` (program first) and wait for it, at most `timeout`. On timeout the command is
    /// signalled (`TERM` for SSH, `KILL` locally) and [`ClonerError::Timeout`] is returned.
    /// Errors: [`ClonerError::Config`] for an argv that is empty or has a NUL byte; connection and
    /// host-key errors of the executor.
    fn run_with_timeout<'a>(
        &'a self,
        argv: &'a [String],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ExecOutput, ClonerError>>;

    /// The default per-command limit of this executor (the node's `command_timeout`).
    fn command_timeout(&self) -> Duration;

    /// Where commands run, for logs and messages: `ssh root@192.0.2.10:22` or `local`.
    fn describe(&self) -> String;

    /// [`Executor::run_with_timeout`] with [`Executor::command_timeout`].
    fn run<'a>(&'a self, argv: &'a [String]) -> BoxFuture<'a, Result<ExecOutput, ClonerError>> {
        self.run_with_timeout(argv, self.command_timeout())
    }
}

/// Refuse an argv that cannot be passed faithfully: empty, or with a NUL byte.
pub(crate) fn validate_argv(argv: &[String]) -> Result<(), ClonerError> {
    if argv.is_empty() {
        return Err(ClonerError::Config("empty argv".into()));
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(ClonerError::Config(format!(
            "argument with a NUL byte in `{}`",
            shell_join(argv).replace('\0', "\\0")
        )));
    }
    Ok(())
}

/// Runs argv on this machine with `tokio::process::Command` — no shell, so no quoting is involved — for a
/// portal that runs on the Proxmox node itself. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LocalExecutor {
    command_timeout: Duration,
}

impl LocalExecutor {
    /// A local executor whose default per-command limit is `command_timeout`.
    pub fn new(command_timeout: Duration) -> LocalExecutor {
        LocalExecutor { command_timeout }
    }
}

impl Default for LocalExecutor {
    /// A local executor with a 60 s command timeout.
    fn default() -> Self {
        LocalExecutor::new(Duration::from_secs(60))
    }
}

impl Executor for LocalExecutor {
    fn run_with_timeout<'a>(
        &'a self,
        argv: &'a [String],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ExecOutput, ClonerError>> {
        Box::pin(async move {
            validate_argv(argv)?;
            let mut child = tokio::process::Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|source| ClonerError::Spawn {
                    program: argv[0].clone(),
                    source,
                })?;
            let mut out = child.stdout.take();
            let mut err = child.stderr.take();
            let work = async {
                let (o, e) = tokio::join!(read_capped(out.as_mut()), read_capped(err.as_mut()));
                let status = child.wait().await;
                (o, e, status)
            };
            let (o, e, status) = match tokio::time::timeout(timeout, work).await {
                Ok(r) => r,
                Err(_) => {
                    // kill_on_drop also does this; be explicit so the process is gone before we return.
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    return Err(ClonerError::Timeout {
                        what: shell_join(argv),
                        after: timeout,
                    });
                }
            };
            let status = status.map_err(|source| ClonerError::Spawn {
                program: argv[0].clone(),
                source,
            })?;
            let code = match status.code() {
                Some(c) => u32::try_from(c).unwrap_or(255),
                None => {
                    use std::os::unix::process::ExitStatusExt;
                    status.signal().map(|s| 128 + s.unsigned_abs()).unwrap_or(255)
                }
            };
            let too_big = |what: &str| ClonerError::BadOutput {
                command: shell_join(argv),
                message: format!("{what} larger than {MAX_OUTPUT} bytes"),
            };
            Ok(ExecOutput {
                status: code,
                stdout: o.ok_or_else(|| too_big("stdout"))?,
                stderr: e.ok_or_else(|| too_big("stderr"))?,
            })
        })
    }

    fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    fn describe(&self) -> String {
        "local".to_string()
    }
}

/// Read a pipe to its end; None if it held more than [`MAX_OUTPUT`] bytes (the rest is drained).
async fn read_capped<R: tokio::io::AsyncRead + Unpin>(pipe: Option<&mut R>) -> Option<Vec<u8>> {
    let Some(pipe) = pipe else {
        return Some(Vec::new());
    };
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut overflow = false;
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if buf.len() + n > MAX_OUTPUT {
                    overflow = true;
                } else {
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }
    (!overflow).then_some(buf)
}
