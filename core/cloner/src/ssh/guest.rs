//! The guest profile of the SSH client: one interactive shell on a VM's own sshd, for the browser
//! terminal.
//!
//! A guest is hostile (its root user is a student), so this profile differs from the node profile on
//! purpose:
//! - **No key of ours is ever offered.** The user types the guest's credentials (password or the
//!   server's keyboard-interactive prompts); they are passed through once and never kept.
//! - **The host key is not judged during the key exchange** — there is no pin or known_hosts entry for a
//!   VM that was just deployed. It is handed back ([`GuestConnection::host_key`]) and the caller compares
//!   it with the per-VM record ([`GuestHostKeys`]: first key recorded, a changed key only after the
//!   user's explicit yes) **before any credential is sent**.
//! - The caller decides the address: this module dials exactly the [`SocketAddr`] it is given (the relay
//!   applies the dial rule first) and resolves no names.
//!
//! The algorithm lists are the node profile's ([`AlgorithmProfile`]): modern, or legacy when the VM is
//! tagged for it. TCP connect plus key exchange is bounded by [`GuestProfile::connect_timeout`]; SSH
//! keepalives every [`GuestProfile::keepalive_interval`], 3 unanswered ones drop the connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::ssh_key::{HashAlg, PublicKey};
use russh::{ChannelMsg, MethodKind, client};
use serde::{Deserialize, Serialize};

use super::AlgorithmProfile;
use crate::ClonerError;

/// How a guest connection is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestProfile {
    /// Offer the legacy algorithms too ([`AlgorithmProfile::Legacy`]), for old guests.
    pub legacy_algorithms: bool,
    /// Limit for TCP connect + key exchange.
    pub connect_timeout: Duration,
    /// SSH keepalive interval; after 3 unanswered keepalives the connection is dropped.
    pub keepalive_interval: Duration,
}

/// A guest's host key as recorded per VM.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostKeyRecord {
    /// Key algorithm (`ssh-ed25519`, `rsa-sha2-512`, …).
    pub algorithm: String,
    /// `SHA256:<base64>` as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
    /// The public key in OpenSSH form (`ssh-ed25519 AAAA…`).
    pub openssh: String,
    /// When it was first seen (Unix s).
    pub first_seen: u64,
    /// When it was last seen (Unix s).
    pub last_seen: u64,
}

impl HostKeyRecord {
    /// The record of `key`, seen at `now` (Unix s).
    fn of(key: &PublicKey, now: u64) -> HostKeyRecord {
        HostKeyRecord {
            algorithm: key.algorithm().to_string(),
            fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
            openssh: key.to_openssh().unwrap_or_default(),
            first_seen: now,
            last_seen: now,
        }
    }
}

/// How a presented key compares with the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostKeyStatus {
    /// No key recorded for this guest yet.
    New,
    /// The recorded key.
    Known,
    /// Another key than the recorded one (the old record inside).
    Changed(HostKeyRecord),
}

/// Where guest host keys are kept, one record per guest (the caller names the guest, e.g.
/// `cluster/vmid`). The rules — first key recorded, the same key known, another key a change, and
/// `first_seen` kept across sightings of the same key — are the provided methods; an implementation
/// only stores and loads.
pub trait GuestHostKeys {
    /// The record of `guest`, if any. Errors are the storage's message.
    fn load(&self, guest: &str) -> Result<Option<HostKeyRecord>, String>;
    /// Stores `record` as `guest`'s key.
    fn save(&self, guest: &str, record: &HostKeyRecord) -> Result<(), String>;

    /// Compares `presented` with the record of `guest`.
    fn compare(&self, guest: &str, presented: &HostKeyRecord) -> Result<HostKeyStatus, String> {
        Ok(match self.load(guest)? {
            None => HostKeyStatus::New,
            Some(r) if r.openssh == presented.openssh => HostKeyStatus::Known,
            Some(r) => HostKeyStatus::Changed(r),
        })
    }

    /// Records `key` as `guest`'s key (first use, or the user accepted a change), keeping `first_seen`
    /// of an identical record.
    fn record(&self, guest: &str, key: &HostKeyRecord) -> Result<(), String> {
        let mut rec = key.clone();
        if let Some(old) = self.load(guest)?
            && old.openssh == key.openssh
        {
            rec.first_seen = old.first_seen;
        }
        self.save(guest, &rec)
    }
}

/// What the server accepts after the `none` method failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthMethods {
    /// `password` is offered.
    pub password: bool,
    /// `keyboard-interactive` is offered.
    pub keyboard_interactive: bool,
}

/// One prompt of a keyboard-interactive request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prompt {
    /// The text to show.
    pub text: String,
    /// Whether the answer may be echoed (false for secrets).
    pub echo: bool,
}

/// The server's answer in a keyboard-interactive exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interactive {
    /// Authenticated.
    Success,
    /// Refused.
    Failure,
    /// The server asks: show `name` and `instructions` (when not blank), then each prompt.
    Prompts {
        /// Request name.
        name: String,
        /// Instructions.
        instructions: String,
        /// The prompts, in order.
        prompts: Vec<Prompt>,
    },
}

/// What the guest's shell sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShellEvent {
    /// Output (stdout and stderr alike, as a terminal shows them).
    Output(Vec<u8>),
    /// The shell's exit status.
    Exit(u32),
    /// The channel (or the connection) is closed.
    Closed,
}

/// The russh handler: remembers the key the guest presented; the caller judges it.
struct Handler {
    presented: Arc<std::sync::Mutex<Option<PublicKey>>>,
}

impl client::Handler for Handler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key: PublicKey = server_key.public_key().clone();
        *self.presented.lock().unwrap_or_else(|e| e.into_inner()) = Some(key);
        Ok(true)
    }
}

/// A connection to a guest's sshd after the key exchange, before authentication.
pub struct GuestConnection {
    handle: client::Handle<Handler>,
    target: String,
    host_key: HostKeyRecord,
}

impl std::fmt::Debug for GuestConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestConnection")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl GuestConnection {
    /// TCP connect to `addr` and key exchange, within [`GuestProfile::connect_timeout`]. `now` (Unix s)
    /// stamps the presented host key. Errors: [`ClonerError::Timeout`], [`ClonerError::Negotiation`]
    /// (no common algorithm: the server's list inside), [`ClonerError::Connect`] (refused, reset,
    /// protocol error, or no host key presented).
    pub async fn connect(
        addr: SocketAddr,
        profile: &GuestProfile,
        now: u64,
    ) -> Result<GuestConnection, ClonerError> {
        let target = addr.to_string();
        let algorithms = AlgorithmProfile::from_flag(profile.legacy_algorithms);
        let config = client::Config {
            preferred: algorithms.preferred(&[]),
            keepalive_interval: Some(profile.keepalive_interval),
            keepalive_max: 3,
            inactivity_timeout: None,
            nodelay: true,
            ..Default::default()
        };
        let presented = Arc::new(std::sync::Mutex::new(None));
        let handler = Handler {
            presented: presented.clone(),
        };
        let connect = client::connect(Arc::new(config), addr, handler);
        let handle = match tokio::time::timeout(profile.connect_timeout, connect).await {
            Err(_) => {
                return Err(ClonerError::Timeout {
                    what: format!("connect to {target}"),
                    after: profile.connect_timeout,
                });
            }
            Ok(Err(e)) => return Err(connect_error(e, &target)),
            Ok(Ok(h)) => h,
        };
        let key = presented.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(key) = key else {
            return Err(ClonerError::Connect {
                host: target,
                message: "the server presented no host key".into(),
            });
        };
        Ok(GuestConnection {
            handle,
            host_key: HostKeyRecord::of(&key, now),
            target,
        })
    }

    /// The host key the guest presented (judge it before sending any credential).
    pub fn host_key(&self) -> &HostKeyRecord {
        &self.host_key
    }

    fn lost(&self, e: russh::Error) -> ClonerError {
        ClonerError::Connect {
            host: self.target.clone(),
            message: e.to_string(),
        }
    }

    /// Tries the `none` method: `None` when that logged in, else the methods the server offers.
    pub async fn auth_none(&mut self, user: &str) -> Result<Option<AuthMethods>, ClonerError> {
        match self.handle.authenticate_none(user).await {
            Err(e) => Err(self.lost(e)),
            Ok(client::AuthResult::Success) => Ok(None),
            Ok(client::AuthResult::Failure {
                remaining_methods, ..
            }) => Ok(Some(AuthMethods {
                password: remaining_methods.contains(&MethodKind::Password),
                keyboard_interactive: remaining_methods.contains(&MethodKind::KeyboardInteractive),
            })),
        }
    }

    /// Password authentication; true when accepted. The password is not kept.
    pub async fn auth_password(&mut self, user: &str, password: &str) -> Result<bool, ClonerError> {
        match self.handle.authenticate_password(user, password).await {
            Ok(r) => Ok(r.success()),
            Err(e) => Err(self.lost(e)),
        }
    }

    /// Starts keyboard-interactive authentication.
    pub async fn auth_interactive_start(&mut self, user: &str) -> Result<Interactive, ClonerError> {
        match self
            .handle
            .authenticate_keyboard_interactive_start(user, None)
            .await
        {
            Ok(r) => Ok(interactive(r)),
            Err(e) => Err(self.lost(e)),
        }
    }

    /// Answers the last [`Interactive::Prompts`], in order. The answers are not kept.
    pub async fn auth_interactive_respond(
        &mut self,
        answers: Vec<String>,
    ) -> Result<Interactive, ClonerError> {
        match self
            .handle
            .authenticate_keyboard_interactive_respond(answers)
            .await
        {
            Ok(r) => Ok(interactive(r)),
            Err(e) => Err(self.lost(e)),
        }
    }

    /// Opens a session with a PTY of `cols` × `rows` (`term` as `TERM`), then the login shell.
    /// Errors: [`ClonerError::Connect`] naming the step that failed.
    pub async fn open_shell(
        &self,
        term: &str,
        cols: u32,
        rows: u32,
    ) -> Result<(ShellReader, ShellWriter), ClonerError> {
        let step = |what: &str, e: russh::Error| ClonerError::Connect {
            host: self.target.clone(),
            message: format!("{what}: {e}"),
        };
        let channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| step("cannot open a session", e))?;
        channel
            .request_pty(true, term, cols, rows, 0, 0, &[])
            .await
            .map_err(|e| step("cannot get a terminal", e))?;
        channel
            .request_shell(true)
            .await
            .map_err(|e| step("cannot start a shell", e))?;
        let (rd, wr) = channel.split();
        Ok((
            ShellReader { rd },
            ShellWriter {
                wr,
                target: self.target.clone(),
            },
        ))
    }

    /// Closes the connection politely.
    pub async fn disconnect(&self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

fn interactive(r: client::KeyboardInteractiveAuthResponse) -> Interactive {
    match r {
        client::KeyboardInteractiveAuthResponse::Success => Interactive::Success,
        client::KeyboardInteractiveAuthResponse::Failure { .. } => Interactive::Failure,
        client::KeyboardInteractiveAuthResponse::InfoRequest {
            name,
            instructions,
            prompts,
        } => Interactive::Prompts {
            name,
            instructions,
            prompts: prompts
                .into_iter()
                .map(|p| Prompt {
                    text: p.prompt,
                    echo: p.echo,
                })
                .collect(),
        },
    }
}

fn connect_error(e: russh::Error, target: &str) -> ClonerError {
    match e {
        russh::Error::NoCommonAlgo { kind, ours, theirs } => ClonerError::Negotiation {
            host: target.to_string(),
            kind: match kind {
                russh::AlgorithmKind::Kex => "key exchange",
                russh::AlgorithmKind::Key => "host key",
                russh::AlgorithmKind::Cipher => "cipher",
                russh::AlgorithmKind::Compression => "compression",
                russh::AlgorithmKind::Mac => "MAC",
            }
            .to_string(),
            offered: theirs.join(", "),
            ours: ours.join(", "),
        },
        e => ClonerError::Connect {
            host: target.to_string(),
            message: e.to_string(),
        },
    }
}

/// The reading half of a guest shell.
pub struct ShellReader {
    rd: russh::ChannelReadHalf,
}

impl ShellReader {
    /// The next output, exit status or the close (end of file and other messages are skipped).
    /// Cancel-safe.
    pub async fn next(&mut self) -> ShellEvent {
        loop {
            match self.rd.wait().await {
                Some(ChannelMsg::Data { data }) | Some(ChannelMsg::ExtendedData { data, .. }) => {
                    return ShellEvent::Output(data.to_vec());
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => return ShellEvent::Exit(exit_status),
                Some(ChannelMsg::Close) | None => return ShellEvent::Closed,
                Some(_) => {}
            }
        }
    }
}

/// The writing half of a guest shell.
pub struct ShellWriter {
    wr: russh::ChannelWriteHalf<client::Msg>,
    target: String,
}

impl ShellWriter {
    /// Sends keystrokes. Errors when the connection is lost.
    pub async fn send(&self, data: Vec<u8>) -> Result<(), ClonerError> {
        self.wr.data_bytes(data).await.map_err(|e| ClonerError::Connect {
            host: self.target.clone(),
            message: e.to_string(),
        })
    }

    /// Tells the shell the terminal's new size (SSH `window-change`); errors are ignored.
    pub async fn resize(&self, cols: u32, rows: u32) {
        let _ = self.wr.window_change(cols, rows, 0, 0).await;
    }

    /// Closes the channel; errors are ignored.
    pub async fn close(&self) {
        let _ = self.wr.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Memory(std::sync::Mutex<std::collections::HashMap<String, HostKeyRecord>>);

    impl GuestHostKeys for Memory {
        fn load(&self, guest: &str) -> Result<Option<HostKeyRecord>, String> {
            Ok(self.0.lock().unwrap().get(guest).cloned())
        }
        fn save(&self, guest: &str, record: &HostKeyRecord) -> Result<(), String> {
            self.0.lock().unwrap().insert(guest.into(), record.clone());
            Ok(())
        }
    }

    fn key(openssh: &str, at: u64) -> HostKeyRecord {
        HostKeyRecord {
            algorithm: "ssh-ed25519".into(),
            fingerprint: format!("SHA256:{openssh}"),
            openssh: openssh.into(),
            first_seen: at,
            last_seen: at,
        }
    }

    #[test]
    fn first_key_is_new_then_known_and_another_is_a_change() {
        let book = Memory::default();
        assert_eq!(
            book.compare("lab/4001", &key("A", 1)).unwrap(),
            HostKeyStatus::New
        );
        book.record("lab/4001", &key("A", 1)).unwrap();
        assert_eq!(
            book.compare("lab/4001", &key("A", 2)).unwrap(),
            HostKeyStatus::Known
        );
        book.record("lab/4001", &key("A", 2)).unwrap();
        let rec = book.load("lab/4001").unwrap().unwrap();
        assert_eq!((rec.first_seen, rec.last_seen), (1, 2));
        match book.compare("lab/4001", &key("B", 3)).unwrap() {
            HostKeyStatus::Changed(old) => assert_eq!(old.openssh, "A"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            book.compare("other/4001", &key("B", 3)).unwrap(),
            HostKeyStatus::New
        );
    }
}
