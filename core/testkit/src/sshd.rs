//! A loopback OpenSSH server (`/usr/sbin/sshd -D`) playing a PVE node's shell, or a guest VM with a password.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::proc::{POLL, is_root, output_detail, run, stop_child, tail};
use crate::{TestkitError, free_port, is_loopback, unique_loopback};

const SSHD: &str = "/usr/sbin/sshd";
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Ends sshd when the test process ends without dropping the [`NodeSshd`] (killed, or held in a static):
/// `tail --pid` waits for the test process; then sshd is sent SIGTERM if its command line is still ours, and
/// the temp dir is removed. SIGTERM to this watchdog (from Drop) ends it and its `tail`.
/// Arguments: test PID, sshd PID, config path, temp dir.
const WATCHDOG_SH: &str = r#"tail --pid="$1" -s 0.5 -f /dev/null & t=$!
trap 'kill "$t" 2>/dev/null; exit 0' TERM INT
wait "$t"
if tr '\0' ' ' <"/proc/$2/cmdline" 2>/dev/null | grep -qF -- "$3"; then kill -TERM "$2"; fi
case "$4" in /*/node-sshd-*) rm -rf -- "$4" ;; esac"#;

/// A running loopback sshd with a fresh host key and a fresh ed25519 client key in a temp dir.
///
/// Key mode ([`NodeSshd::start`], [`NodeSshd::start_on`]): public-key login only, for `root` when the test
/// runs as root (else for the user running it); the shell runs on this machine, so it sees the fake
/// cluster's storage folders and real `qemu-img`. Password mode ([`NodeSshd::start_with_password`]): also
/// password login for one local user, as a stand-in guest VM. Dropping it stops sshd (by PID) and removes the
/// temp dir. Debug output hides the password.
pub struct NodeSshd {
    /// Listen address, `127.x.y.z`.
    pub host: String,
    /// Listen port.
    pub port: u16,
    /// The one user allowed to log in.
    pub user: String,
    /// Client private key (OpenSSH format, no passphrase), authorized for `user`.
    pub private_key: PathBuf,
    /// Client public key line, `ssh-ed25519 AAAA... comment`.
    pub public_key: String,
    /// Host public key, `ssh-ed25519 AAAA...` (type and base64, no comment).
    pub host_public_key: String,
    /// Host key fingerprint as `ssh-keygen -lf` prints it: `SHA256:<base64 without padding>`.
    pub host_key_sha256: String,
    /// A known_hosts file holding [`NodeSshd::known_hosts_line`].
    pub known_hosts_file: PathBuf,
    /// `[host]:port ssh-ed25519 AAAA...` (`host ssh-ed25519 ...` on port 22).
    pub known_hosts_line: String,
    /// The password of `user` in password mode; None in key mode.
    pub password: Option<String>,
    /// PID of the sshd listener.
    pub pid: u32,
    /// sshd's log (`-E`), LogLevel INFO.
    pub log: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    watchdog: Option<Child>,
    _dir: tempfile::TempDir,
}

impl fmt::Debug for NodeSshd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeSshd")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("private_key", &self.private_key)
            .field("host_key_sha256", &self.host_key_sha256)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl NodeSshd {
    /// Key-only sshd on a fresh [`crate::unique_loopback`] address and a free port.
    /// Errors: sshd/ssh-keygen missing (names `apt-get install openssh-server`), sshd not ready in 10 s
    /// (with its log tail).
    pub fn start() -> anyhow::Result<NodeSshd> {
        let host = unique_loopback();
        let port = free_port(&host);
        Self::start_on(&host, port)
    }

    /// Key-only sshd on `host:port` (`host` must be in 127.0.0.0/8).
    pub fn start_on(host: &str, port: u16) -> anyhow::Result<NodeSshd> {
        let user = if is_root() {
            "root".to_string()
        } else {
            current_user()?
        };
        Self::launch(host, port, &user, None)
    }

    /// sshd on `host:port` that also accepts password login for local user `user` with `password` (and the
    /// client key): a stand-in guest VM for the web terminal. As root it creates `user` with `useradd
    /// --create-home --shell /bin/bash` if missing, and sets the password with `chpasswd` (sshd runs with
    /// `UsePAM no`, so it checks /etc/shadow itself). Errors: not root, a user name outside `[a-z_][a-z0-9_-]*`,
    /// a password with `:` or a line break, `root` (no root password login), or any key-mode error.
    pub fn start_with_password(
        host: &str,
        port: u16,
        user: &str,
        password: &str,
    ) -> anyhow::Result<NodeSshd> {
        let valid_name = user
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && user
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
            && user.len() <= 32;
        if !valid_name || user == "root" {
            return Err(TestkitError::Invalid(format!("user name {user:?} for password login")).into());
        }
        if password.is_empty() || password.contains([':', '\n', '\r']) {
            return Err(TestkitError::Invalid(
                "password must be non-empty, without ':' or line breaks".into(),
            )
            .into());
        }
        if !is_root() {
            return Err(TestkitError::Invalid(format!(
                "password mode needs root (to create user {user} and set its password with chpasswd)"
            ))
            .into());
        }
        let exists = Command::new("getent")
            .args(["passwd", user])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !exists {
            run(
                Command::new("useradd").args(["--create-home", "--shell", "/bin/bash", user]),
                &format!("useradd {user}"),
            )?;
        }
        let mut chpasswd = Command::new("chpasswd")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running chpasswd")?;
        if let Some(mut stdin) = chpasswd.stdin.take() {
            stdin.write_all(format!("{user}:{password}\n").as_bytes())?;
        }
        let out = chpasswd.wait_with_output()?;
        if !out.status.success() {
            return Err(TestkitError::Command {
                what: format!("chpasswd for {user}"),
                detail: output_detail(&out),
            }
            .into());
        }
        Self::launch(host, port, user, Some(password))
    }

    /// `ssh` arguments that log in as `user` with the client key and verify the host key strictly:
    /// `-i KEY -o UserKnownHostsFile=KNOWN -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o BatchMode=yes
    /// -p PORT USER@HOST` (append the remote command).
    pub fn ssh_args(&self) -> Vec<String> {
        vec![
            "-i".into(),
            self.private_key.display().to_string(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts_file.display()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-p".into(),
            self.port.to_string(),
            format!("{}@{}", self.user, self.host),
        ]
    }

    fn launch(host: &str, port: u16, user: &str, password: Option<&str>) -> anyhow::Result<NodeSshd> {
        if !is_loopback(host) {
            return Err(TestkitError::Invalid(format!("sshd address {host:?} is not in 127.0.0.0/8")).into());
        }
        if !Path::new(SSHD).exists() {
            return Err(TestkitError::MissingTool {
                tool: SSHD.into(),
                hint: "apt-get install -y --no-install-recommends openssh-server".into(),
            }
            .into());
        }
        if Command::new("ssh-keygen").arg("-?").output().is_err() {
            return Err(TestkitError::MissingTool {
                tool: "ssh-keygen".into(),
                hint: "apt-get install -y --no-install-recommends openssh-client".into(),
            }
            .into());
        }
        if is_root() {
            // sshd's privilege separation folder (the openssh-server service creates it at boot).
            std::fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
        }
        let dir = tempfile::Builder::new()
            .prefix("node-sshd-")
            .tempdir()
            .context("creating the sshd dir")?;
        let d = dir.path();
        let host_key = d.join("host_ed25519_key");
        let client_key = d.join("client_ed25519_key");
        for (key, comment) in [(&host_key, "node-sshd-host"), (&client_key, "node-sshd-client")] {
            run(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
                    .arg(key),
                &format!("ssh-keygen {}", key.display()),
            )?;
        }
        let host_pub_text = std::fs::read_to_string(d.join("host_ed25519_key.pub"))?;
        let host_public_key = host_pub_text
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let public_key = std::fs::read_to_string(d.join("client_ed25519_key.pub"))?
            .trim()
            .to_string();
        let fingerprint = run(
            Command::new("ssh-keygen")
                .arg("-lf")
                .arg(d.join("host_ed25519_key.pub")),
            "ssh-keygen -lf (host key fingerprint)",
        )?;
        let host_key_sha256 = String::from_utf8_lossy(&fingerprint.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let known_hosts_line = if port == 22 {
            format!("{host} {host_public_key}")
        } else {
            format!("[{host}]:{port} {host_public_key}")
        };
        let known_hosts_file = d.join("known_hosts");
        std::fs::write(&known_hosts_file, format!("{known_hosts_line}\n"))?;

        let config = d.join("sshd_config");
        let log = d.join("sshd.log");
        let password_lines = match password {
            Some(_) => "PasswordAuthentication yes\nPermitRootLogin prohibit-password\n",
            None => "PasswordAuthentication no\nPermitRootLogin prohibit-password\n",
        };
        let text = format!(
            "# testkit NodeSshd: loopback only, for user {user}.\n\
             ListenAddress {host}:{port}\n\
             AddressFamily inet\n\
             HostKey {host_key}\n\
             PidFile {pidfile}\n\
             AuthorizedKeysFile {client_pub}\n\
             AllowUsers {user}\n\
             PubkeyAuthentication yes\n\
             {password_lines}\
             KbdInteractiveAuthentication no\n\
             PermitEmptyPasswords no\n\
             UsePAM no\n\
             StrictModes no\n\
             X11Forwarding no\n\
             AllowAgentForwarding no\n\
             PrintMotd no\n\
             UseDNS no\n\
             SetEnv SHLVL=1\n\
             LogLevel INFO\n\
             Subsystem sftp internal-sftp\n",
            host_key = host_key.display(),
            pidfile = d.join("sshd.pid").display(),
            client_pub = d.join("client_ed25519_key.pub").display(),
        );
        std::fs::write(&config, text)?;
        run(
            Command::new(SSHD).arg("-t").arg("-f").arg(&config),
            &format!("{SSHD} -t -f {}", config.display()),
        )?;

        let out = std::fs::File::create(d.join("sshd.out"))?;
        let err = out.try_clone()?;
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-f")
            .arg(&config)
            .arg("-E")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {SSHD}"))?;
        let pid = child.id();
        let marker = config.display().to_string();
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG_SH)
            .arg("node-sshd-watchdog")
            .arg(std::process::id().to_string())
            .arg(pid.to_string())
            .arg(&marker)
            .arg(d)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        let mut sshd = NodeSshd {
            host: host.to_string(),
            port,
            user: user.to_string(),
            private_key: client_key,
            public_key,
            host_public_key,
            host_key_sha256,
            known_hosts_file,
            known_hosts_line,
            password: password.map(String::from),
            pid,
            log,
            config,
            child: Some(child),
            watchdog,
            _dir: dir,
        };
        sshd.wait_ready()?;
        Ok(sshd)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let what = format!("sshd on {}:{}", self.host, self.port);
        let needle = format!("Server listening on {} port {}", self.host, self.port);
        let deadline = Instant::now() + READY_TIMEOUT;
        let log_tail = |s: &Self| {
            format!(
                "{}\n{}",
                tail(&s.log, 20),
                tail(&s.log.with_file_name("sshd.out"), 10)
            )
        };
        loop {
            if std::fs::read_to_string(&self.log)
                .unwrap_or_default()
                .contains(&needle)
            {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(TestkitError::Exited {
                    what,
                    status: status.to_string(),
                    log_tail: log_tail(self),
                }
                .into());
            }
            if Instant::now() >= deadline {
                return Err(TestkitError::NotReady {
                    what,
                    secs: READY_TIMEOUT.as_secs(),
                    log_tail: log_tail(self),
                }
                .into());
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for NodeSshd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, &self.config.display().to_string(), STOP_GRACE);
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            stop_child(&mut watchdog, "node-sshd-watchdog", STOP_GRACE);
        }
    }
}

/// The name of the user running the tests (`id -un`).
fn current_user() -> anyhow::Result<String> {
    let out = run(Command::new("id").arg("-un"), "id -un")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
