//! Shared helpers for the cloner integration tests: access settings for a testkit sshd, log polling, and
//! a second, custom-configured loopback sshd for the legacy-algorithm and RSA cases (testkit's sshd is
//! Ed25519 with OpenSSH's default algorithms).
// Helpers are test code outside `#[test]` functions, where clippy's allow-unwrap-in-tests does not reach.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cloner::{HostKeyPolicy, NodeAccess};
use testkit::NodeSshd;

/// Access to a testkit sshd with `policy` and short test timeouts.
pub fn access(sshd: &NodeSshd, policy: HostKeyPolicy) -> NodeAccess {
    NodeAccess {
        port: sshd.port,
        connect_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(10),
        keepalive_interval: Duration::from_secs(5),
        ..NodeAccess::new(&sshd.host, &sshd.user, &sshd.private_key, policy)
    }
}

/// Access pinned to the sshd's real host-key fingerprint.
pub fn pinned(sshd: &NodeSshd) -> NodeAccess {
    access(sshd, HostKeyPolicy::Fingerprint(sshd.host_key_sha256.clone()))
}

/// argv from string literals.
pub fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// How many lines of `log` contain `needle`.
pub fn count_lines(log: &Path, needle: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// Poll `cond` every 20 ms until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ssh-keygen -q -N "" -t <kind> [-b bits] -f <path>`; returns the public key line.
pub fn keygen(path: &Path, kind: &str) -> String {
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-N", "", "-C", "cloner-test", "-t", kind]);
    if kind == "rsa" {
        cmd.args(["-b", "2048"]);
    }
    let out = cmd.arg("-f").arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(path.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string()
}

/// `SHA256:…` of a public key file, as `ssh-keygen -lf` prints it.
pub fn fingerprint_of(pub_file: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(pub_file)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

/// A loopback sshd with an RSA host key and an RSA client key, and chosen key-exchange and host-key
/// algorithm lists (an old appliance that offers only legacy algorithms). Stopped (by its PID, our child) on
/// drop.
pub struct CustomSshd {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub client_key: PathBuf,
    pub host_fingerprint: String,
    pub log: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl CustomSshd {
    /// sshd offering only `kex` key exchanges and `host_key_algorithms` host-key signatures.
    /// `SetEnv SHLVL=1` keeps bash from sourcing the user's ~/.bashrc for every command (bash does that
    /// when it sees SSH_CLIENT at shell level 1), which on this machine costs ~150 ms per command.
    pub fn start(kex: &str, host_key_algorithms: &str) -> CustomSshd {
        let dir = tempfile::Builder::new().prefix("cloner-sshd-").tempdir().unwrap();
        let d = dir.path();
        let host_key = d.join("host_rsa");
        let client_key = d.join("client_rsa");
        keygen(&host_key, "rsa");
        keygen(&client_key, "rsa");
        let host_fingerprint = fingerprint_of(&host_key.with_extension("pub"));
        let host = testkit::unique_loopback();
        let port = testkit::free_port(&host);
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
        let _ = std::fs::create_dir_all("/run/sshd");
        let config = d.join("sshd_config");
        let log = d.join("sshd.log");
        std::fs::write(
            &config,
            format!(
                "ListenAddress {host}:{port}\nAddressFamily inet\nHostKey {hk}\nPidFile {pid}\n\
                 AuthorizedKeysFile {ak}\nAllowUsers {user}\nPubkeyAuthentication yes\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
                 UsePAM no\nStrictModes no\nUseDNS no\nSetEnv SHLVL=1\nLogLevel INFO\n\
                 KexAlgorithms {kex}\nHostKeyAlgorithms {host_key_algorithms}\n",
                hk = host_key.display(),
                pid = d.join("sshd.pid").display(),
                ak = client_key.with_extension("pub").display(),
            ),
        )
        .unwrap();
        let check = Command::new("/usr/sbin/sshd")
            .arg("-t")
            .arg("-f")
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "sshd -t: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-f")
            .arg(&config)
            .arg("-E")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let ready = format!("Server listening on {host} port {port}");
        assert!(
            wait_until(Duration::from_secs(10), || count_lines(&log, &ready) > 0),
            "custom sshd not ready: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        CustomSshd {
            host,
            port,
            user,
            client_key,
            host_fingerprint,
            log,
            child,
            _dir: dir,
        }
    }

    /// Access with the RSA client key, pinned to the RSA host key.
    pub fn access(&self, legacy: bool) -> NodeAccess {
        NodeAccess {
            port: self.port,
            legacy_algorithms: legacy,
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(10),
            ..NodeAccess::new(
                &self.host,
                &self.user,
                &self.client_key,
                HostKeyPolicy::Fingerprint(self.host_fingerprint.clone()),
            )
        }
    }
}

impl Drop for CustomSshd {
    fn drop(&mut self) {
        // Our own child, by PID (Child::kill signals exactly that process), then reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback TCP relay in front of a server that counts the bytes clients send and can be frozen
/// (stops forwarding in both directions, like a node that hangs or a path that drops packets).
pub struct Relay {
    pub host: String,
    pub port: u16,
    pub client_bytes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// How many client connections have been closed by the client.
    pub client_closed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Relay from a fresh loopback address to `target_host:target_port` (runs on the current runtime).
    pub async fn start(target_host: &str, target_port: u16) -> Relay {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let host = testkit::unique_loopback();
        let listener = tokio::net::TcpListener::bind((host.as_str(), 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let client_bytes = Arc::new(AtomicUsize::new(0));
        let frozen = Arc::new(AtomicBool::new(false));
        let client_closed = Arc::new(AtomicUsize::new(0));
        let closed = client_closed.clone();
        let target = format!("{target_host}:{target_port}");
        let (counter, freeze) = (client_bytes.clone(), frozen.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let (counter, freeze_up, freeze_down) = (counter.clone(), freeze.clone(), freeze.clone());
                let closed = closed.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16384];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 {
                            closed.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        counter.fetch_add(n, Ordering::SeqCst);
                        if freeze_up.load(Ordering::SeqCst) {
                            continue; // swallowed
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16384];
                    while let Ok(n) = sr.read(&mut buf).await {
                        if n == 0 || freeze_down.load(Ordering::SeqCst) {
                            if n == 0 {
                                break;
                            }
                            continue;
                        }
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Relay {
            host,
            port,
            client_bytes,
            frozen,
            client_closed,
            task,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
