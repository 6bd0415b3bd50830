//! # cloner — commands on Proxmox nodes: SSH executor and QCOW2 operations
//!
//! This crate owns how Proxlab runs programs on a Proxmox VE node and what it does to disk images there:
//!
//! - **[`SshExecutor`]** (russh): public-key login (Ed25519 or RSA key file, OpenSSH format); the node's
//!   host key checked during key exchange — before authentication — against a pinned `SHA256:`
//!   fingerprint or a known_hosts file, with trust-on-first-use only when enabled for that node
//!   ([`HostKeyPolicy`]); ONE connection per node shared by many channels (at most
//!   [`NodeAccess::max_sessions`] at once), re-made when lost; keepalive; connect and command timeouts;
//!   algorithm profiles ([`AlgorithmProfile`]: modern by default, an opt-in legacy one for old guests).
//!   [`SshPool`] keeps one executor per node.
//! - **[`guest`]**: the same client with the guest profile, for the browser terminal: one interactive
//!   shell on a VM's sshd, the user's own credentials passed through once, the presented host key
//!   handed back and judged against the per-VM record ([`GuestHostKeys`]) before any credential is
//!   sent, never any key of ours.
//! - **[`LocalExecutor`]**: the same [`Executor`] trait, running argv directly (no shell) for a portal that
//!   runs on the node itself.
//! - **[`Qcow2`]**: `qemu-img info -f <format>` with the format PVE's volume config states (never
//!   probed), a backing-chain check before anything reads an image's data ([`Qcow2::info_chain`]: every
//!   backing file a plain file inside the storage, its format recorded, no `json:`/protocol names, no
//!   external data files), overlays with an absolute backing path and `-F <real format>`, flatten (`convert` to a temp
//!   name, then `mv`), safe rebase and identical-content unsafe rebase, both with `-F`, remove/mkdir/exists.
//!   Command lines come from pure builders in [`qcow2::cmd`] with golden-string tests.
//! - **Quoting**: [`shell_quote`] / [`shell_join`] / [`checked_shell_quote`], POSIX single-quote style,
//!   for argv sent over SSH — the one shell quoter of Proxlab (the script host's `ssh::quote` uses it).
//!
//! It must never:
//! - depend on another Proxlab crate (it is used by `script` host modules and the deploy jobs, not the
//!   other way round), nor know about PVE's API, the store or Rhai;
//! - accept a host key it was not told to trust, or fall back to trust-on-first-use on its own;
//! - log or put into an error any private-key material;
//! - let qemu-img read a backing file outside the storage directories, a protocol or `json:` name, or
//!   an image whose format it had to guess;
//! - touch a path outside the configured storage directories (checked lexically and after symlinks),
//!   overwrite an existing image, write `-b` without `-F`, or run `qemu-img rebase -u` onto a base whose
//!   bytes differ;
//! - build a remote command line by string concatenation of unquoted input.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cloner::ClonerError> {
//! use std::{path::Path, sync::Arc};
//! use cloner::{HostKeyPolicy, NodeAccess, Qcow2, SshExecutor};
//! let node = NodeAccess::new("192.0.2.10", "root", "/etc/proxlab/node_ed25519",
//!     HostKeyPolicy::Fingerprint("SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s".into()));
//! let qcow2 = Qcow2::new(Arc::new(SshExecutor::new(node)?), "/mnt/pve/nfs-lab")?;
//! qcow2.create_overlay(Path::new("/mnt/pve/nfs-lab/images/9000/base-9000-disk-0.qcow2"),
//!                      cloner::ImageFormat::Qcow2,
//!                      Path::new("/mnt/pve/nfs-lab/images/210/vm-210-disk-0.qcow2")).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod error;
mod exec;
pub mod qcow2;
mod quote;
mod ssh;

pub use error::ClonerError;
pub use exec::{ExecOutput, Executor, LocalExecutor, MAX_OUTPUT};
pub use qcow2::{ImageFormat, ImageInfo, Qcow2, RebaseMode};
pub use quote::{checked_shell_quote, shell_join, shell_quote};
pub use ssh::guest::{self, GuestConnection, GuestHostKeys, GuestProfile};
pub use ssh::{AlgorithmProfile, HostKeyPolicy, NodeAccess, SshExecutor, SshPool};
