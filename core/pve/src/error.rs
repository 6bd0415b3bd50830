//! [`PveError`]: every failure of a PVE call, classified by kind, with PVE's own status and text.

/// What went wrong talking to a Proxmox VE cluster.
///
/// Messages are PVE's own wording (the JSON `message` member of the error answer, or the task's
/// `exitstatus`), trimmed of the trailing newline PVE appends. Secrets never appear in them: a failed
/// login names the user (`user@realm` or token ID), never the password.
///
/// Classification ([`classify`]) goes by HTTP status first (401, 403, 404, 595/596) and then by the
/// message text PVE uses for the case, because PVE answers most failures with a plain 500.
#[derive(thiserror::Error, Debug)]
pub enum PveError {
    /// Any other error answer from PVE (400 parameter errors include the per-parameter messages).
    #[error("PVE API error {status}: {message}")]
    Api {
        /// HTTP status PVE answered with.
        status: u16,
        /// PVE's message, trimmed.
        message: String,
    },
    /// The QEMU guest agent cannot answer: `QEMU guest agent is not running`,
    /// `No QEMU guest agent configured`, or `VM n qmp command 'guest-…' failed - got timeout` (PVE answers
    /// HTTP 500).
    #[error("guest agent unavailable: {0}")]
    AgentUnavailable(String),
    /// The guest is locked by another operation: `VM is locked (backup)`; `lock` is the word in brackets.
    #[error("guest is locked ({lock}): {message}")]
    Locked {
        /// The lock name: backup, clone, snapshot, migrate, rollback, suspended, create, …
        lock: String,
        /// PVE's message.
        message: String,
    },
    /// `can't lock file '…' - got timeout` or a cfs-lock request timeout: another operation held the
    /// config or storage lock too long (e.g. parallel clones of one template). Retryable with backoff.
    #[error("lock timeout: {0}")]
    LockTimeout(String),
    /// The guest, node, storage or path does not exist: HTTP 404 or
    /// `Configuration file 'nodes/pve1/qemu-server/100.conf' does not exist`.
    #[error("not found: {0}")]
    NotFound(String),
    /// The cluster lost quorum: `cluster not ready - no quorum?`. Writes fail until it is back.
    #[error("cluster has no quorum: {0}")]
    NoQuorum(String),
    /// The node that serves the guest is unreachable from the node we talk to (HTTP 595 `No route to
    /// host`, 596 connection broken).
    #[error("node unreachable ({status}): {message}")]
    NodeUnreachable {
        /// 595 or 596.
        status: u16,
        /// PVE's message.
        message: String,
    },
    /// A login (or an API token) was refused: `POST /access/ticket` answered 401 (with `data: null`). Names
    /// the user or token ID, never the password or secret.
    #[error("invalid credentials for {userid}")]
    InvalidCredentials {
        /// `user@realm` or `user@realm!tokenid`.
        userid: String,
    },
    /// The ticket was refused again right after a fresh login (second 401 in a row).
    #[error("authentication expired: PVE refused a freshly renewed ticket")]
    AuthExpired,
    /// HTTP 403 `Permission check failed (/vms/100, VM.PowerMgmt)`.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The answer was not the JSON shape PVE documents (missing `data`, wrong types, no ticket, …).
    #[error("malformed PVE response: {0}")]
    MalformedResponse(String),
    /// A task ended with an error `exitstatus` (anything but `OK` / `WARNINGS: n`), even though the request
    /// that started it answered 200 with a UPID.
    #[error("task {upid} failed: {exitstatus}")]
    TaskFailed {
        /// The task's UPID.
        upid: String,
        /// The task's `exitstatus`, e.g. `start failed: QEMU exited with code 1`.
        exitstatus: String,
    },
    /// A task was still running when the caller's wait ran out. The task itself goes on in PVE.
    #[error("task {upid} still running after the wait timed out")]
    TaskTimeout {
        /// The task's UPID.
        upid: String,
    },
    /// The request got no answer within the per-request timeout.
    #[error("request timed out")]
    Timeout,
    /// The TCP connection failed (refused, reset, unreachable).
    #[error("connection failed: {0}")]
    Connect(String),
    /// The TLS handshake failed: untrusted certificate, pin mismatch (shows both fingerprints), bad
    /// handshake signature.
    #[error("TLS error: {0}")]
    Tls(String),
    /// The client configuration is unusable (unreadable CA file, bad URL, …).
    #[error("configuration error: {0}")]
    Config(String),
}

impl PveError {
    /// True if the same call may succeed when tried again later, with backoff: timeouts, connection
    /// failures, unreachable nodes, lock timeouts, lost quorum, and 502/503/504 answers.
    /// Locks held by a named operation ([`PveError::Locked`]) are not: they last as long as a backup.
    pub fn is_retryable(&self) -> bool {
        match self {
            PveError::Timeout
            | PveError::Connect(_)
            | PveError::NodeUnreachable { .. }
            | PveError::LockTimeout(_)
            | PveError::NoQuorum(_) => true,
            PveError::Api { status, .. } => matches!(status, 502..=504),
            _ => false,
        }
    }

    /// The HTTP status PVE answered with, where the error came from an HTTP answer and the status is
    /// known from the kind (401 for credential errors, 403, 404 for `NotFound` from a 404, 595/596).
    pub fn status(&self) -> Option<u16> {
        match self {
            PveError::Api { status, .. } | PveError::NodeUnreachable { status, .. } => Some(*status),
            PveError::InvalidCredentials { .. } | PveError::AuthExpired => Some(401),
            PveError::PermissionDenied(_) => Some(403),
            PveError::AgentUnavailable(_)
            | PveError::Locked { .. }
            | PveError::LockTimeout(_)
            | PveError::NoQuorum(_) => Some(500),
            _ => None,
        }
    }
}

/// Turns an error answer (HTTP status and PVE's message) into the matching [`PveError`].
///
/// A 401 here becomes [`PveError::AuthExpired`]; the client handles the first 401 itself (re-login)
/// and maps a refused login to [`PveError::InvalidCredentials`].
pub fn classify(status: u16, message: &str) -> PveError {
    let message = message.trim_end().to_owned();
    match status {
        401 => return PveError::AuthExpired,
        403 => return PveError::PermissionDenied(message),
        404 => return PveError::NotFound(message),
        595 | 596 => return PveError::NodeUnreachable { status, message },
        _ => {}
    }
    classify_text(&message).unwrap_or(PveError::Api { status, message })
}

/// Classifies a task's failed `exitstatus` the same way as an error answer: lock timeouts, locks,
/// lost quorum and agent failures keep their kind; anything else is [`PveError::TaskFailed`].
pub fn classify_task_failure(upid: &str, exitstatus: &str) -> PveError {
    let exitstatus = exitstatus.trim_end();
    classify_text(exitstatus).unwrap_or_else(|| PveError::TaskFailed {
        upid: upid.to_owned(),
        exitstatus: exitstatus.to_owned(),
    })
}

/// Kind from PVE's wording alone (for 500 answers and task exit statuses).
fn classify_text(message: &str) -> Option<PveError> {
    let lower = message.to_ascii_lowercase();
    let text = message.to_owned();
    // Agent first: an agent timeout also ends in "got timeout" and must not look like a lock timeout.
    if lower.contains("guest agent is not running")
        || lower.contains("no qemu guest agent configured")
        || (lower.contains("qmp command 'guest-") && lower.contains("timeout"))
    {
        return Some(PveError::AgentUnavailable(text));
    }
    if (lower.contains("can't lock file") && lower.contains("timeout"))
        || (lower.contains("cfs-lock") && lower.contains("timeout"))
        || lower.contains("got lock request timeout")
    {
        return Some(PveError::LockTimeout(text));
    }
    if let Some(lock) = locked_name(message) {
        return Some(PveError::Locked { lock, message: text });
    }
    if lower.contains("no quorum") {
        return Some(PveError::NoQuorum(text));
    }
    if lower.contains("configuration file") && lower.contains("does not exist") {
        return Some(PveError::NotFound(text));
    }
    if lower.starts_with("permission check failed") {
        return Some(PveError::PermissionDenied(text));
    }
    None
}

/// The lock name in `VM is locked (backup)` / `CT is locked (snapshot)`, anywhere in the text.
fn locked_name(message: &str) -> Option<String> {
    let at = message.find("is locked (")?;
    let rest = &message[at + "is locked (".len()..];
    let end = rest.find(')')?;
    let lock = rest[..end].trim();
    (!lock.is_empty()).then(|| lock.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_not_running_500_maps_to_agent_unavailable_trimmed() {
        // Agent not running: the exact body PVE sends.
        let e = classify(500, "QEMU guest agent is not running\n");
        match e {
            PveError::AgentUnavailable(m) => assert_eq!(m, "QEMU guest agent is not running"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(500, "No QEMU guest agent configured\n"),
            PveError::AgentUnavailable(_)
        ));
        assert!(matches!(
            classify(500, "VM 1103 qmp command 'guest-ping' failed - got timeout"),
            PveError::AgentUnavailable(_)
        ));
    }

    #[test]
    fn lock_file_timeout_is_lock_timeout_and_retryable() {
        // Lock timeouts, both the HTTP 500 and the task-log form.
        let e = classify(
            500,
            "can't lock file '/var/lock/qemu-server/lock-9000.conf' - got timeout\n",
        );
        assert!(
            matches!(e, PveError::LockTimeout(ref m) if m.ends_with("got timeout")),
            "{e:?}"
        );
        assert!(e.is_retryable());
        let t = classify_task_failure(
            "UPID:pve-a:0000ABCD:00112233:65F00000:qmclone:9000:portal@pve!lab:",
            "clone failed: can't lock file '/var/lock/pve-manager/pve-storage-local' - got timeout",
        );
        assert!(matches!(t, PveError::LockTimeout(_)), "{t:?}");
        assert!(t.is_retryable());
        assert!(matches!(
            classify(500, "cfs-lock 'storage-labnfs' error: got lock request timeout"),
            PveError::LockTimeout(_)
        ));
    }

    #[test]
    fn shutdown_timeout_task_is_a_plain_task_failure() {
        let t = classify_task_failure("UPID:x", "VM quit/powerdown failed - got timeout");
        assert!(matches!(t, PveError::TaskFailed { .. }), "{t:?}");
        assert!(!t.is_retryable());
    }

    #[test]
    fn locked_vm_names_the_lock() {
        match classify(500, "VM is locked (backup)\n") {
            PveError::Locked { lock, message } => {
                assert_eq!(lock, "backup");
                assert_eq!(message, "VM is locked (backup)");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(classify(500, "CT is locked (snapshot)"), PveError::Locked { ref lock, .. } if lock == "snapshot")
        );
        assert!(!classify(500, "VM is locked (backup)").is_retryable());
    }

    #[test]
    fn status_codes_map_to_kinds() {
        assert!(
            matches!(classify(403, "Permission check failed (/vms/100, VM.PowerMgmt)\n"), PveError::PermissionDenied(ref m) if m == "Permission check failed (/vms/100, VM.PowerMgmt)")
        );
        assert!(matches!(classify(404, "Not Found"), PveError::NotFound(_)));
        assert!(matches!(
            classify(401, "permission denied - invalid PVE ticket"),
            PveError::AuthExpired
        ));
        let n = classify(595, "No route to host\n");
        assert!(
            matches!(n, PveError::NodeUnreachable { status: 595, ref message } if message == "No route to host")
        );
        assert!(n.is_retryable());
        assert_eq!(n.status(), Some(595));
        assert!(matches!(
            classify(
                500,
                "Configuration file 'nodes/pve3/qemu-server/9999.conf' does not exist\n"
            ),
            PveError::NotFound(_)
        ));
        let q = classify(500, "cluster not ready - no quorum?\n");
        assert!(matches!(q, PveError::NoQuorum(ref m) if m == "cluster not ready - no quorum?"));
        let other = classify(500, "start failed: QEMU exited with code 1");
        assert!(matches!(other, PveError::Api { status: 500, .. }));
        assert!(!other.is_retryable());
        assert!(classify(503, "Service Unavailable").is_retryable());
    }

    #[test]
    fn task_failure_keeps_upid_and_exitstatus() {
        let t = classify_task_failure(
            "UPID:pve3:1:2:3:qmstart:1109:root@pam:",
            "start failed: QEMU exited with code 1\n",
        );
        match t {
            PveError::TaskFailed { upid, exitstatus } => {
                assert_eq!(upid, "UPID:pve3:1:2:3:qmstart:1109:root@pam:");
                assert_eq!(exitstatus, "start failed: QEMU exited with code 1");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invalid_credentials_message_names_the_user_only() {
        let e = PveError::InvalidCredentials {
            userid: "labuser@pve".into(),
        };
        assert_eq!(e.to_string(), "invalid credentials for labuser@pve");
        assert_eq!(e.status(), Some(401));
    }
}
