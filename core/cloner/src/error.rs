//! [`ClonerError`]: the one error type of this crate.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while reaching a node or working on its disk images.
///
/// Variants carry what an admin needs to act: both fingerprints on a host-key mismatch, the algorithms
/// the server offered on a failed negotiation, the argv and stderr of a failed command. None carries a
/// secret (private keys never leave [`crate::ssh`]; passwords are not used).
#[derive(Debug, thiserror::Error)]
pub enum ClonerError {
    /// The node presented a host key other than the pinned fingerprint or the known_hosts entry.
    /// Raised during key exchange, before any authentication is attempted.
    #[error(
        "host key mismatch for {host}: expected {expected}, the server presented {presented} \
         (re-pin only if the node's key was changed on purpose)"
    )]
    HostKeyMismatch {
        /// `host:port` that was contacted.
        host: String,
        /// What was expected: the pinned `SHA256:…` fingerprint, or the fingerprints recorded in the
        /// known_hosts file (comma-separated).
        expected: String,
        /// `SHA256:…` fingerprint of the key the server presented.
        presented: String,
    },
    /// The node's host key is not in the known_hosts file and trust-on-first-use is off for this node.
    #[error(
        "unknown host key for {host}: the server presented {presented}; pin this fingerprint after \
         checking it on the node with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`"
    )]
    UnknownHostKey {
        /// `host:port` that was contacted.
        host: String,
        /// `SHA256:…` fingerprint of the key the server presented (with its algorithm, e.g.
        /// `ssh-ed25519 SHA256:…`).
        presented: String,
    },
    /// Public-key authentication was refused, or the key file could not be used.
    #[error("authentication as {user}@{host} failed: {message}")]
    Auth {
        /// `host:port`.
        host: String,
        /// The SSH user.
        user: String,
        /// Why (server refused the key, key file unreadable or encrypted, ...). Never key material.
        message: String,
    },
    /// No common key-exchange, host-key, cipher or MAC algorithm (an old guest offering only legacy
    /// algorithms). `offered` is what the server offered, so the admin can see whether the legacy profile
    /// would help.
    #[error("no common {kind} algorithm with {host}: the server offers only: {offered}; we offer: {ours}")]
    Negotiation {
        /// `host:port`.
        host: String,
        /// `kex`, `host key`, `cipher`, `mac` or `compression`.
        kind: String,
        /// The server's algorithm names, comma-separated, in its order.
        offered: String,
        /// Our algorithm names for that kind, comma-separated.
        ours: String,
    },
    /// TCP connect or the SSH transport failed (refused, reset, closed by the peer, protocol error).
    #[error("SSH connection to {host} failed: {message}")]
    Connect {
        /// `host:port`.
        host: String,
        /// What happened.
        message: String,
    },
    /// An operation did not finish in time.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What was waited on: `connect to root@host:22`, or the command line.
        what: String,
        /// The limit that was hit.
        after: Duration,
    },
    /// A command ran and exited non-zero (or was killed by a signal: `status` is 128 + the signal number
    /// where known, else 255).
    #[error("command `{}` failed with status {status}: {stderr}", crate::shell_join(.argv))]
    CommandFailed {
        /// The argv that was run.
        argv: Vec<String>,
        /// Exit status.
        status: u32,
        /// stderr (lossy UTF-8, trimmed, at most the last 4 KiB).
        stderr: String,
    },
    /// A path resolves (lexically, or after following symlinks on the node) outside the storage root.
    #[error("path {path} is outside the storage directory {root}")]
    PathOutsideStorage {
        /// The path as given (or as resolved on the node, when a symlink leads out).
        path: PathBuf,
        /// The storage root.
        root: PathBuf,
    },
    /// A path that is not usable at all: relative, empty, or with control characters.
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: PathBuf,
        /// Why it is refused.
        reason: String,
    },
    /// A disk image format this crate does not handle (only `qcow2`, `raw` and `vmdk` are accepted as
    /// backing formats; overlays, rebase and flatten targets are always `qcow2`).
    #[error("unsupported image format: {0}")]
    UnsupportedFormat(String),
    /// A disk image, or an image in its backing chain, would make qemu-img read something other than a
    /// qcow2 or raw file inside the storage directories: a backing file outside them, a `json:` or
    /// protocol (`nbd:`, `http:`, `file:`, …) name, a format other than the stated one, a backing file
    /// whose format is not recorded, an external data file, or a chain deeper than
    /// [`crate::qcow2::MAX_CHAIN_DEPTH`]. Nothing was written.
    #[error("refusing disk image {image}: {reason}")]
    UnsafeImage {
        /// The image whose header holds the offending reference.
        image: PathBuf,
        /// What is wrong, naming the backing file (or data file) in question.
        reason: String,
    },
    /// The target file already exists; this crate never overwrites an image.
    #[error("{0} already exists; refusing to overwrite an image")]
    AlreadyExists(PathBuf),
    /// The file does not exist.
    #[error("{0} does not exist")]
    NotFound(PathBuf),
    /// An unsafe rebase (`-u`) was asked for, but the new base is not byte-identical to the current one.
    #[error(
        "refusing `qemu-img rebase -u`: {new_base} is not byte-identical to the current base {current} ({detail})"
    )]
    NotIdentical {
        /// The overlay's current backing file.
        current: PathBuf,
        /// The requested new backing file.
        new_base: PathBuf,
        /// Which check differed (size or SHA-256).
        detail: String,
    },
    /// A command's output could not be understood (e.g. `qemu-img info` JSON).
    #[error("unexpected output from `{command}`: {message}")]
    BadOutput {
        /// The command line.
        command: String,
        /// What was wrong.
        message: String,
    },
    /// Invalid configuration: a fingerprint in the wrong format, an argument with a NUL byte, a storage
    /// root that is not absolute, a known_hosts file that cannot be written.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A local process could not be started (local executor).
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl ClonerError {
    /// True for errors where trying again later may succeed (connection problems and timeouts); false
    /// for verdicts (host key, auth, bad paths, failed commands).
    pub fn is_transient(&self) -> bool {
        matches!(self, ClonerError::Connect { .. } | ClonerError::Timeout { .. })
    }
}
