//! The SSH executor: one russh connection per node, shared by many channels, with host keys verified
//! before authentication.

mod algorithms;
pub mod guest;
mod hostkey;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use russh::keys::ssh_key::PublicKey;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, Sig, client};
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;

pub use algorithms::AlgorithmProfile;

use crate::exec::{ExecOutput, Executor, MAX_OUTPUT, validate_argv};
use crate::{ClonerError, shell_join};

/// How a node's SSH host key is trusted. The key is checked during key exchange, before the client
/// authenticates, so a wrong node never sees our key signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Pinned fingerprint as `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` prints it on the node:
    /// `SHA256:<base64 without padding>`. Any other key is [`ClonerError::HostKeyMismatch`].
    Fingerprint(String),
    /// An OpenSSH known_hosts file (`[host]:port` entries for ports other than 22; hashed entries work).
    /// A missing entry is [`ClonerError::UnknownHostKey`], a different key
    /// [`ClonerError::HostKeyMismatch`]. The file is only read.
    KnownHosts(PathBuf),
    /// Trust on first use, only when the admin enables it for this node: like `KnownHosts`, but when the
    /// file has no entry for the host, the presented key is appended to it (and logged at WARN) and
    /// trusted from then on. A changed key is still a mismatch.
    TrustOnFirstUse(PathBuf),
}

/// How to reach one node over SSH. Build with [`NodeAccess::new`] and adjust the public fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAccess {
    /// Address or DNS name of the node, e.g. `192.0.2.10`.
    pub host: String,
    /// TCP port (default 22).
    pub port: u16,
    /// SSH user, usually `root` on a Proxmox node.
    pub user: String,
    /// Private key file, OpenSSH format (`-----BEGIN OPENSSH PRIVATE KEY-----`, also PEM RSA), Ed25519 or
    /// RSA, without passphrase. Read when a connection is made; its content is never logged.
    pub key_file: PathBuf,
    /// How the node's host key is verified.
    pub host_key: HostKeyPolicy,
    /// Opt into the legacy algorithm profile ([`AlgorithmProfile::Legacy`]). Keep false
    /// for Proxmox nodes (legacy never applies to node connections); it exists for old guests
    /// reached with the same client. Default false.
    pub legacy_algorithms: bool,
    /// Limit for TCP connect + key exchange + authentication. Default 10 s.
    pub connect_timeout: Duration,
    /// Default limit per command ([`Executor::run`]). Default 60 s.
    pub command_timeout: Duration,
    /// Send an SSH keepalive when nothing was received for this long; after 3 unanswered keepalives the
    /// connection is dropped (and re-made by the next command). Default 15 s.
    pub keepalive_interval: Duration,
    /// Most channels (sessions) open at once on the connection; further commands wait for a free one.
    /// OpenSSH's `MaxSessions` defaults to 10, which is also our default. At least 1.
    pub max_sessions: usize,
}

impl NodeAccess {
    /// Access to `user@host:22` with `key_file`, verified by `host_key`, and the defaults listed on each
    /// field.
    pub fn new(
        host: impl Into<String>,
        user: impl Into<String>,
        key_file: impl Into<PathBuf>,
        host_key: HostKeyPolicy,
    ) -> NodeAccess {
        NodeAccess {
            host: host.into(),
            port: 22,
            user: user.into(),
            key_file: key_file.into(),
            host_key,
            legacy_algorithms: false,
            connect_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(15),
            max_sessions: 10,
        }
    }

    /// `host:port` (IPv6 literals in brackets), as used in messages.
    pub fn target(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Runs commands on one node over a single SSH connection, opening one channel per command.
///
/// Cheap to clone (an `Arc` inside); clones share the connection. The connection is made on first use
/// (or by [`SshExecutor::connect`]), reused by every later command, and re-made when it was lost; at most
/// [`NodeAccess::max_sessions`] channels are open at once. argv is sent as one command string built with
/// [`shell_join`], so each argument reaches the remote program unchanged.
#[derive(Clone)]
pub struct SshExecutor {
    inner: Arc<Inner>,
}

struct Inner {
    access: NodeAccess,
    pinned: Option<[u8; 32]>,
    profile: AlgorithmProfile,
    conn: Mutex<Option<Arc<client::Handle<Client>>>>,
    sessions: Semaphore,
    connects: AtomicU64,
}

impl fmt::Debug for SshExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshExecutor")
            .field("target", &self.describe())
            .field("profile", &self.inner.profile.name())
            .finish_non_exhaustive()
    }
}

impl SshExecutor {
    /// An executor for `access`. Does not connect yet.
    /// Errors: [`ClonerError::Config`] for a pinned fingerprint not in `SHA256:<base64>` form, or
    /// `max_sessions` of 0.
    pub fn new(access: NodeAccess) -> Result<SshExecutor, ClonerError> {
        let pinned = match &access.host_key {
            HostKeyPolicy::Fingerprint(fp) => Some(hostkey::parse_fingerprint(fp)?),
            _ => None,
        };
        if access.max_sessions == 0 {
            return Err(ClonerError::Config("max_sessions must be at least 1".into()));
        }
        let profile = AlgorithmProfile::from_flag(access.legacy_algorithms);
        Ok(SshExecutor {
            inner: Arc::new(Inner {
                pinned,
                profile,
                conn: Mutex::new(None),
                sessions: Semaphore::new(access.max_sessions),
                connects: AtomicU64::new(0),
                access,
            }),
        })
    }

    /// The access settings this executor was made with.
    pub fn access(&self) -> &NodeAccess {
        &self.inner.access
    }

    /// How many SSH connections this executor (and its clones) has established so far. One for a
    /// healthy node however many commands ran; more after reconnects.
    pub fn connections_made(&self) -> u64 {
        self.inner.connects.load(Ordering::Relaxed)
    }

    /// Make sure a live, authenticated connection exists (connect now if needed), e.g. for a preflight
    /// check. Errors: as for the first command: host key, auth, negotiation, connect, timeout.
    pub async fn connect(&self) -> Result<(), ClonerError> {
        self.handle().await.map(|_| ())
    }

    /// Close the connection (if any) politely; the next command connects again.
    pub async fn disconnect(&self) {
        let handle = self.inner.conn.lock().await.take();
        if let Some(h) = handle {
            let _ = h.disconnect(russh::Disconnect::ByApplication, "", "en").await;
        }
    }

    /// The live connection, making it if there is none (callers wait on one connect, not many).
    async fn handle(&self) -> Result<Arc<client::Handle<Client>>, ClonerError> {
        let mut slot = self.inner.conn.lock().await;
        if let Some(h) = slot.as_ref() {
            if !h.is_closed() {
                return Ok(h.clone());
            }
            tracing::info!(node = %self.inner.access.target(), "ssh connection was lost; reconnecting");
        }
        *slot = None;
        let what = format!(
            "connect to {}@{}",
            self.inner.access.user,
            self.inner.access.target()
        );
        let limit = self.inner.access.connect_timeout;
        let handle = tokio::time::timeout(limit, self.establish())
            .await
            .map_err(|_| ClonerError::Timeout { what, after: limit })??;
        let handle = Arc::new(handle);
        *slot = Some(handle.clone());
        self.inner.connects.fetch_add(1, Ordering::Relaxed);
        Ok(handle)
    }

    /// Forget `handle` if it is still the current connection.
    async fn invalidate(&self, handle: &Arc<client::Handle<Client>>) {
        let mut slot = self.inner.conn.lock().await;
        if slot.as_ref().is_some_and(|h| Arc::ptr_eq(h, handle)) {
            *slot = None;
        }
    }

    /// TCP connect, key exchange with the host-key check, public-key authentication.
    async fn establish(&self) -> Result<client::Handle<Client>, ClonerError> {
        let a = &self.inner.access;
        let target = a.target();
        let recorded = match &a.host_key {
            HostKeyPolicy::KnownHosts(p) | HostKeyPolicy::TrustOnFirstUse(p) => {
                hostkey::recorded_algorithms(&hostkey::read(p).await?, &a.host, a.port)
            }
            HostKeyPolicy::Fingerprint(_) => Vec::new(),
        };
        let config = client::Config {
            preferred: self.inner.profile.preferred(&recorded),
            keepalive_interval: Some(a.keepalive_interval),
            keepalive_max: 3,
            inactivity_timeout: None,
            nodelay: true,
            ..Default::default()
        };
        let handler = Client {
            host: a.host.clone(),
            port: a.port,
            target: target.clone(),
            policy: a.host_key.clone(),
            pinned: self.inner.pinned,
        };
        let mut handle = client::connect(Arc::new(config), (a.host.as_str(), a.port), handler)
            .await
            .map_err(|e| e.into_cloner(&target))?;

        // The key is read only once the host key was accepted.
        let key = load_key(a)?;
        let hash = if key.algorithm().is_rsa() {
            match handle.best_supported_rsa_hash().await {
                Ok(Some(Some(h))) => Some(h),
                _ => self.inner.profile.rsa_fallback_hash(),
            }
        } else {
            None
        };
        let auth_err = |message: String| ClonerError::Auth {
            host: target.clone(),
            user: a.user.clone(),
            message,
        };
        let result = handle
            .authenticate_publickey(a.user.clone(), PrivateKeyWithHashAlg::new(Arc::new(key), hash))
            .await
            .map_err(|e| auth_err(format!("during public-key authentication: {e}")))?;
        if !result.success() {
            return Err(auth_err(format!(
                "the server refused the key from {}",
                a.key_file.display()
            )));
        }
        tracing::info!(
            node = %target,
            user = %a.user,
            profile = self.inner.profile.name(),
            "ssh connected"
        );
        Ok(handle)
    }

    /// Run one command on a channel of the shared connection.
    async fn exec(&self, argv: &[String], limit: Duration) -> Result<ExecOutput, ClonerError> {
        validate_argv(argv)?;
        let command = shell_join(argv);
        let remote = shell_join(&remote_argv(argv, limit));
        let _permit = self
            .inner
            .sessions
            .acquire()
            .await
            .map_err(|_| ClonerError::Config("executor closed".into()))?;
        let deadline = Instant::now() + limit;
        let timeout = || ClonerError::Timeout {
            what: command.clone(),
            after: limit,
        };
        let mut reconnected = false;
        let mut refused_wait = Duration::from_millis(10);
        let mut channel = loop {
            let handle = tokio::time::timeout_at(deadline, self.handle())
                .await
                .map_err(|_| timeout())??;
            match tokio::time::timeout_at(deadline, handle.channel_open_session()).await {
                Err(_) => return Err(timeout()),
                Ok(Ok(ch)) => break ch,
                // The server answered, so the connection is alive: it refused the session because its
                // MaxSessions is reached (OpenSSH says "connect failed"), e.g. a session we just closed
                // is not freed on its side yet. Wait a little and try again.
                Ok(Err(russh::Error::ChannelOpenFailure(_))) => {
                    if Instant::now() + refused_wait >= deadline {
                        return Err(timeout());
                    }
                    tokio::time::sleep(refused_wait).await;
                    refused_wait = (refused_wait * 2).min(Duration::from_millis(200));
                }
                // The connection died under us: nothing was sent yet, so one retry on a new one is safe.
                Ok(Err(e)) if !reconnected => {
                    tracing::info!(node = %self.inner.access.target(), error = %e, "ssh channel open failed; reconnecting");
                    self.invalidate(&handle).await;
                    reconnected = true;
                }
                Ok(Err(e)) => {
                    self.invalidate(&handle).await;
                    return Err(ClonerError::Connect {
                        host: self.inner.access.target(),
                        message: format!("cannot open a channel: {e}"),
                    });
                }
            }
        };
        tracing::debug!(node = %self.inner.access.target(), command = %command, "ssh exec");
        let lost = |e: russh::Error| ClonerError::Connect {
            host: self.inner.access.target(),
            message: format!("while running `{command}`: {e}"),
        };
        channel.exec(true, remote.as_bytes()).await.map_err(lost)?;
        channel.eof().await.map_err(lost)?;

        let mut out = ExecOutput::default();
        let mut status: Option<u32> = None;
        let mut overflow = false;
        loop {
            let msg = match tokio::time::timeout_at(deadline, channel.wait()).await {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                Err(_) => {
                    // The remote `timeout` wrapper ends the command a second later (sshd refuses
                    // SSH "signal" requests for root sessions, so that cannot be relied on).
                    let _ = channel.close().await;
                    return Err(timeout());
                }
            };
            match msg {
                ChannelMsg::Data { data } => overflow |= append(&mut out.stdout, &data),
                ChannelMsg::ExtendedData { data, ext: 1 } => overflow |= append(&mut out.stderr, &data),
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                ChannelMsg::ExitSignal {
                    signal_name,
                    error_message,
                    ..
                } => {
                    status = Some(signal_status(&signal_name));
                    if !error_message.is_empty() {
                        out.stderr.extend_from_slice(error_message.as_bytes());
                    }
                }
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        if overflow {
            return Err(ClonerError::BadOutput {
                command,
                message: format!("output larger than {MAX_OUTPUT} bytes"),
            });
        }
        match status {
            Some(s) => {
                out.status = s;
                Ok(out)
            }
            None => Err(ClonerError::Connect {
                host: self.inner.access.target(),
                message: format!("the channel closed without an exit status while running `{command}`"),
            }),
        }
    }
}

impl Executor for SshExecutor {
    fn run_with_timeout<'a>(
        &'a self,
        argv: &'a [String],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ExecOutput, ClonerError>> {
        Box::pin(self.exec(argv, timeout))
    }

    fn command_timeout(&self) -> Duration {
        self.inner.access.command_timeout
    }

    fn describe(&self) -> String {
        format!("ssh {}@{}", self.inner.access.user, self.inner.access.target())
    }
}

/// One [`SshExecutor`] per node, keyed by a node id chosen by the caller (e.g. `cluster/node`).
///
/// [`SshPool::get`] returns the existing executor while the node's [`NodeAccess`] is unchanged, and a new
/// one (new connection) when the settings changed. Cheap to clone.
#[derive(Clone, Default, Debug)]
pub struct SshPool {
    nodes: Arc<std::sync::Mutex<HashMap<String, SshExecutor>>>,
}

impl SshPool {
    /// An empty pool.
    pub fn new() -> SshPool {
        SshPool::default()
    }

    /// The executor of node `id`, created from `access` on first use or when `access` differs from the
    /// one it was made with. Errors: as [`SshExecutor::new`].
    pub fn get(&self, id: &str, access: &NodeAccess) -> Result<SshExecutor, ClonerError> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(exec) = nodes.get(id)
            && exec.access() == access
        {
            return Ok(exec.clone());
        }
        let exec = SshExecutor::new(access.clone())?;
        nodes.insert(id.to_string(), exec.clone());
        Ok(exec)
    }

    /// Drop node `id`'s executor (its connection closes when the last clone is dropped).
    pub fn remove(&self, id: &str) {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

/// What is sent for `argv` with limit `limit`: `timeout --kill-after=5 <limit + 1 s> argv…` (GNU coreutils,
/// present on every Proxmox node), so a command that we stop waiting for also ends on the node — TERM to
/// its process group one second after our deadline, KILL 5 s later — even when the connection is gone.
fn remote_argv(argv: &[String], limit: Duration) -> Vec<String> {
    let secs = limit.as_secs_f64() + 1.0;
    let mut out = vec![
        "timeout".to_string(),
        "--kill-after=5".into(),
        format!("{secs:.3}"),
    ];
    out.extend(argv.iter().cloned());
    out
}

/// Append `data` unless that passes [`MAX_OUTPUT`]; true when it would have.
fn append(buf: &mut Vec<u8>, data: &[u8]) -> bool {
    if buf.len() + data.len() > MAX_OUTPUT {
        return true;
    }
    buf.extend_from_slice(data);
    false
}

/// 128 + the signal number for the signals SSH names (RFC 4254 §6.10), else 255.
fn signal_status(sig: &Sig) -> u32 {
    let n = match sig {
        Sig::HUP => 1,
        Sig::INT => 2,
        Sig::QUIT => 3,
        Sig::ILL => 4,
        Sig::ABRT => 6,
        Sig::FPE => 8,
        Sig::KILL => 9,
        Sig::USR1 => 10,
        Sig::SEGV => 11,
        Sig::PIPE => 13,
        Sig::ALRM => 14,
        Sig::TERM => 15,
        Sig::Custom(_) => return 255,
    };
    128 + n
}

/// Load the node's private key; failures are [`ClonerError::Auth`] (never with key material).
fn load_key(a: &NodeAccess) -> Result<PrivateKey, ClonerError> {
    russh::keys::load_secret_key(&a.key_file, None).map_err(|e| ClonerError::Auth {
        host: a.target(),
        user: a.user.clone(),
        message: match e {
            russh::keys::Error::KeyIsEncrypted => format!(
                "key file {} is encrypted; use a key without passphrase",
                a.key_file.display()
            ),
            e => format!("cannot use key file {}: {e}", a.key_file.display()),
        },
    })
}

/// The russh handler: checks the host key against the node's policy.
struct Client {
    host: String,
    port: u16,
    target: String,
    policy: HostKeyPolicy,
    pinned: Option<[u8; 32]>,
}

/// Errors out of the russh handler: russh's own, or our verdict on the host key.
#[derive(Debug)]
enum HandlerError {
    Russh(russh::Error),
    Refused(ClonerError),
}

impl From<russh::Error> for HandlerError {
    fn from(e: russh::Error) -> Self {
        HandlerError::Russh(e)
    }
}

impl HandlerError {
    fn into_cloner(self, target: &str) -> ClonerError {
        match self {
            HandlerError::Refused(e) => e,
            HandlerError::Russh(russh::Error::NoCommonAlgo { kind, ours, theirs }) => {
                ClonerError::Negotiation {
                    host: target.to_string(),
                    kind: match kind {
                        russh::AlgorithmKind::Kex => "kex",
                        russh::AlgorithmKind::Key => "host key",
                        russh::AlgorithmKind::Cipher => "cipher",
                        russh::AlgorithmKind::Compression => "compression",
                        russh::AlgorithmKind::Mac => "mac",
                    }
                    .to_string(),
                    offered: theirs.join(", "),
                    ours: ours.join(", "),
                }
            }
            HandlerError::Russh(e) => ClonerError::Connect {
                host: target.to_string(),
                message: e.to_string(),
            },
        }
    }
}

impl client::Handler for Client {
    type Error = HandlerError;

    async fn check_server_key(&mut self, server_key: &PublicKeyOrCertificate) -> Result<bool, HandlerError> {
        let key: PublicKey = server_key.public_key();
        let presented = hostkey::fingerprint(&key);
        let refuse = |e: ClonerError| {
            tracing::warn!(node = %self.target, error = %e, "ssh host key refused");
            Err(HandlerError::Refused(e))
        };
        match &self.policy {
            HostKeyPolicy::Fingerprint(pin) => {
                let ok = self.pinned.is_some_and(|p| p == hostkey::fingerprint_bytes(&key));
                if ok {
                    Ok(true)
                } else {
                    refuse(ClonerError::HostKeyMismatch {
                        host: self.target.clone(),
                        expected: pin.trim().to_string(),
                        presented,
                    })
                }
            }
            HostKeyPolicy::KnownHosts(path) => {
                let text = hostkey::read(path).await.map_err(HandlerError::Refused)?;
                match hostkey::check(&text, &self.host, self.port, &key) {
                    hostkey::Verdict::Match => Ok(true),
                    hostkey::Verdict::Mismatch(expected) => refuse(ClonerError::HostKeyMismatch {
                        host: self.target.clone(),
                        expected: expected.join(", "),
                        presented,
                    }),
                    hostkey::Verdict::Unknown => refuse(ClonerError::UnknownHostKey {
                        host: self.target.clone(),
                        presented: hostkey::describe(&key),
                    }),
                }
            }
            HostKeyPolicy::TrustOnFirstUse(path) => {
                match hostkey::learn(path, &self.host, self.port, &key)
                    .await
                    .map_err(HandlerError::Refused)?
                {
                    hostkey::Verdict::Match => Ok(true),
                    hostkey::Verdict::Unknown => {
                        tracing::warn!(
                            node = %self.target,
                            key = %hostkey::describe(&key),
                            file = %path.display(),
                            "trust on first use: recorded the node's host key"
                        );
                        Ok(true)
                    }
                    hostkey::Verdict::Mismatch(expected) => refuse(ClonerError::HostKeyMismatch {
                        host: self.target.clone(),
                        expected: expected.join(", "),
                        presented,
                    }),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `root@192.0.2.10` with key file `/k`, checking its host key by `policy`.
    fn node(policy: HostKeyPolicy) -> NodeAccess {
        NodeAccess::new("192.0.2.10", "root", "/k", policy)
    }

    #[test]
    fn access_defaults_and_target() {
        let a = node(HostKeyPolicy::KnownHosts("/kh".into()));
        assert_eq!(a.port, 22);
        assert!(!a.legacy_algorithms);
        assert_eq!(a.max_sessions, 10);
        assert_eq!(a.target(), "192.0.2.10:22");
        let b = NodeAccess {
            host: "2001:db8::1".into(),
            ..a
        };
        assert_eq!(b.target(), "[2001:db8::1]:22");
    }

    #[test]
    fn malformed_pin_is_refused_before_any_connection() {
        let a = node(HostKeyPolicy::Fingerprint("aa:bb".into()));
        assert!(matches!(SshExecutor::new(a), Err(ClonerError::Config(_))));
    }

    #[test]
    fn pool_reuses_the_executor_until_access_changes() {
        let a = node(HostKeyPolicy::KnownHosts("/kh".into()));
        let pool = SshPool::new();
        let x = pool.get("c1/pve-a", &a).unwrap();
        let y = pool.get("c1/pve-a", &a).unwrap();
        assert!(Arc::ptr_eq(&x.inner, &y.inner));
        let changed = NodeAccess { port: 2222, ..a };
        let z = pool.get("c1/pve-a", &changed).unwrap();
        assert!(!Arc::ptr_eq(&x.inner, &z.inner));
        assert_eq!(z.access().port, 2222);
    }

    #[test]
    fn remote_commands_carry_a_timeout_wrapper() {
        let argv = ["qemu-img".to_string(), "info".into(), "/s/a b".into()];
        assert_eq!(
            shell_join(&remote_argv(&argv, Duration::from_millis(1500))),
            "timeout --kill-after=5 2.500 qemu-img info '/s/a b'"
        );
    }

    #[test]
    fn signals_map_to_shell_style_statuses() {
        assert_eq!(signal_status(&Sig::KILL), 137);
        assert_eq!(signal_status(&Sig::TERM), 143);
        assert_eq!(signal_status(&Sig::Custom("XCPU".into())), 255);
    }
}
