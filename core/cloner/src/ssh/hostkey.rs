//! Host-key checks: pinned `SHA256:` fingerprints and OpenSSH known_hosts files (`sshd(8)` "SSH_KNOWN_HOSTS
//! FILE FORMAT": plain and hashed `|1|salt|hmac` host patterns, `*`/`?` wildcards, `!` negation,
//! `[host]:port` for ports other than 22, `@revoked` and `@cert-authority` markers).

use std::path::Path;
use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use russh::keys::ssh_key::{Algorithm, HashAlg, PublicKey};
use sha1::Sha1;

use crate::ClonerError;

/// Serialises trust-on-first-use writes to known_hosts files within this process.
static LEARN_LOCK: LazyLock<tokio::sync::Mutex<()>> = LazyLock::new(|| tokio::sync::Mutex::new(()));

/// Parse a pinned fingerprint as `ssh-keygen -lf` prints it: `SHA256:` followed by the unpadded base64
/// of the 32-byte digest (trailing `=` padding is tolerated). Anything else (MD5 `aa:bb:…`, hex, a wrong
/// length) is [`ClonerError::Config`].
pub(crate) fn parse_fingerprint(pin: &str) -> Result<[u8; 32], ClonerError> {
    let bad = |why: &str| {
        ClonerError::Config(format!(
            "host key fingerprint {pin:?} {why}; expected `SHA256:<base64>` as `ssh-keygen -lf` prints it"
        ))
    };
    let b64 = pin
        .trim()
        .strip_prefix("SHA256:")
        .ok_or_else(|| bad("lacks the SHA256: prefix"))?;
    let bytes = STANDARD_NO_PAD
        .decode(b64.trim_end_matches('='))
        .map_err(|_| bad("is not valid base64"))?;
    bytes.try_into().map_err(|_| bad("is not 32 bytes long"))
}

/// `SHA256:<base64>` of a public key, as `ssh-keygen -lf` prints it.
pub(crate) fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The 32 SHA-256 bytes of a public key's wire encoding.
pub(crate) fn fingerprint_bytes(key: &PublicKey) -> [u8; 32] {
    let fp = key.fingerprint(HashAlg::Sha256);
    let mut out = [0u8; 32];
    let raw = fp.as_bytes();
    if raw.len() == 32 {
        out.copy_from_slice(raw);
    }
    out
}

/// The host string a known_hosts line is matched against: `host` on port 22, else `[host]:port`.
pub(crate) fn host_pattern_target(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// One key line of a known_hosts file that applies to the host.
#[derive(Debug)]
pub(crate) struct Entry {
    revoked: bool,
    key: PublicKey,
}

/// What a known_hosts file says about a presented key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A line for this host holds exactly this key.
    Match,
    /// Lines exist for this host, none with this key (or the key is `@revoked`): the fingerprints they
    /// hold, `algorithm SHA256:…`.
    Mismatch(Vec<String>),
    /// No line for this host.
    Unknown,
}

/// The keys known_hosts `text` records for `host`/`port` (revoked ones flagged; `@cert-authority` lines
/// and lines that do not parse are skipped).
pub(crate) fn entries_for(text: &str, host: &str, port: u16) -> Vec<Entry> {
    let target = host_pattern_target(host, port);
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let Some(mut first) = fields.next() else {
            continue;
        };
        let mut revoked = false;
        if first.starts_with('@') {
            match first {
                "@revoked" => revoked = true,
                // Host certificates are not accepted by this client: CA lines do not vouch for a key.
                _ => continue,
            }
            let Some(next) = fields.next() else {
                continue;
            };
            first = next;
        }
        if !hosts_match(first, &target) {
            continue;
        }
        let (Some(algo), Some(b64)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Ok(key) = PublicKey::from_openssh(&format!("{algo} {b64}")) else {
            continue;
        };
        out.push(Entry { revoked, key });
    }
    out
}

/// Judge `presented` against the known_hosts `text` for `host`/`port`.
pub(crate) fn check(text: &str, host: &str, port: u16, presented: &PublicKey) -> Verdict {
    let entries = entries_for(text, host, port);
    if entries
        .iter()
        .any(|e| e.revoked && e.key.key_data() == presented.key_data())
    {
        return Verdict::Mismatch(vec![format!("any key but the @revoked {}", describe(presented))]);
    }
    let good: Vec<&Entry> = entries.iter().filter(|e| !e.revoked).collect();
    if good.is_empty() {
        return Verdict::Unknown;
    }
    if good.iter().any(|e| e.key.key_data() == presented.key_data()) {
        return Verdict::Match;
    }
    Verdict::Mismatch(good.iter().map(|e| describe(&e.key)).collect())
}

/// Algorithms of the (non-revoked) keys recorded for the host, so negotiation can prefer them (as
/// OpenSSH does) and a node with an ed25519 and an RSA key is not judged by the wrong one.
pub(crate) fn recorded_algorithms(text: &str, host: &str, port: u16) -> Vec<Algorithm> {
    let mut algos: Vec<Algorithm> = Vec::new();
    for e in entries_for(text, host, port).into_iter().filter(|e| !e.revoked) {
        let a = e.key.algorithm();
        if !algos.contains(&a) {
            algos.push(a);
        }
    }
    algos
}

/// `ssh-ed25519 SHA256:…`.
pub(crate) fn describe(key: &PublicKey) -> String {
    format!("{} {}", key.algorithm(), fingerprint(key))
}

/// Does the comma-separated pattern list `patterns` match `target` (`host` or `[host]:port`)?
/// A matching negated pattern (`!pat`) makes the whole list fail, as in OpenSSH.
fn hosts_match(patterns: &str, target: &str) -> bool {
    if let Some(hashed) = patterns.strip_prefix("|1|") {
        return hashed_match(hashed, target);
    }
    let mut matched = false;
    for pat in patterns.split(',') {
        if let Some(neg) = pat.strip_prefix('!') {
            if wildcard_match(neg, target) {
                return false;
            }
        } else if wildcard_match(pat, target) {
            matched = true;
        }
    }
    matched
}

/// `|1|base64(salt)|base64(HMAC-SHA1(salt, target))` (the part after `|1|` is given).
fn hashed_match(rest: &str, target: &str) -> bool {
    let Some((salt, hash)) = rest.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (STANDARD.decode(salt), STANDARD.decode(hash)) else {
        return false;
    };
    let Ok(mut mac) = <Hmac<Sha1> as KeyInit>::new_from_slice(&salt) else {
        return false;
    };
    mac.update(target.as_bytes());
    mac.verify_slice(&hash).is_ok()
}

/// Glob match with `*` (any run) and `?` (one character), case-insensitive like OpenSSH host matching.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Read a known_hosts file; a missing file reads as empty.
pub(crate) async fn read(path: &Path) -> Result<String, ClonerError> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(ClonerError::Config(format!(
            "cannot read known_hosts file {}: {e}",
            path.display()
        ))),
    }
}

/// Trust on first use: record `key` for `host`/`port` in `path` unless a line for the host exists by now.
/// Returns the verdict found under the lock ([`Verdict::Unknown`] means the key was just recorded).
pub(crate) async fn learn(
    path: &Path,
    host: &str,
    port: u16,
    key: &PublicKey,
) -> Result<Verdict, ClonerError> {
    let _guard = LEARN_LOCK.lock().await;
    let text = read(path).await?;
    let verdict = check(&text, host, port, key);
    if verdict != Verdict::Unknown {
        return Ok(verdict);
    }
    let bare = PublicKey::new(key.key_data().clone(), "");
    let openssh = bare
        .to_openssh()
        .map_err(|e| ClonerError::Config(format!("cannot encode the host key: {e}")))?;
    let mut line = String::new();
    if !text.is_empty() && !text.ends_with('\n') {
        line.push('\n');
    }
    line.push_str(&format!(
        "{} {}\n",
        host_pattern_target(host, port),
        openssh.trim()
    ));
    let write_err = |e: std::io::Error| {
        ClonerError::Config(format!(
            "cannot record the host key in known_hosts file {}: {e}",
            path.display()
        ))
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent).await.map_err(write_err)?;
    }
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(write_err)?;
    file.write_all(line.as_bytes()).await.map_err(write_err)?;
    file.sync_all().await.map_err(write_err)?;
    Ok(Verdict::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const ED2: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILIG2T/B0l0gaqj3puu510tu9N1OkQ4znY3LYuEm5zCF";

    fn key(s: &str) -> PublicKey {
        PublicKey::from_openssh(s).unwrap()
    }

    #[test]
    fn fingerprint_round_trips_through_the_pin_parser() {
        let k = key(ED);
        let fp = fingerprint(&k);
        assert!(fp.starts_with("SHA256:"), "{fp}");
        assert_eq!(parse_fingerprint(&fp).unwrap(), fingerprint_bytes(&k));
        assert_eq!(
            parse_fingerprint(&format!("{fp}=")).unwrap(),
            fingerprint_bytes(&k)
        );
    }

    #[test]
    fn pins_in_other_formats_are_refused() {
        for bad in [
            "",
            "MD5:16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48",
            "16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48",
            "SHA256:not base64!",
            "SHA256:AAAA",
        ] {
            assert!(
                matches!(parse_fingerprint(bad), Err(ClonerError::Config(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn known_hosts_matches_bracketed_port_and_plain_port_22() {
        let text = format!("[10.0.0.5]:2222 {ED}\n10.0.0.6 {ED2}\n");
        assert_eq!(check(&text, "10.0.0.5", 2222, &key(ED)), Verdict::Match);
        assert_eq!(check(&text, "10.0.0.5", 22, &key(ED)), Verdict::Unknown);
        assert_eq!(check(&text, "10.0.0.6", 22, &key(ED2)), Verdict::Match);
        match check(&text, "10.0.0.6", 22, &key(ED)) {
            Verdict::Mismatch(expected) => assert_eq!(expected, vec![describe(&key(ED2))]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn known_hosts_handles_lists_wildcards_negation_comments_and_tabs() {
        let text = format!("# comment\n\npve-a,10.0.0.7\t{ED}\n10.0.1.* {ED2}\n!10.0.1.9,10.0.1.? {ED}\n");
        assert_eq!(check(&text, "10.0.0.7", 22, &key(ED)), Verdict::Match);
        assert_eq!(check(&text, "PVE-A", 22, &key(ED)), Verdict::Match);
        assert_eq!(check(&text, "10.0.1.200", 22, &key(ED2)), Verdict::Match);
        // 10.0.1.9 is negated on the third line, so only the wildcard line's key applies.
        assert!(matches!(
            check(&text, "10.0.1.9", 22, &key(ED)),
            Verdict::Mismatch(_)
        ));
        assert_eq!(check(&text, "10.0.1.8", 22, &key(ED)), Verdict::Match);
    }

    #[test]
    fn hashed_known_hosts_entries_match() {
        // From russh's own known_hosts test: this hashed entry is `example.com` on port 22.
        let text = "|1|O33ESRMWPVkMYIwJ1Uw+n877jTo=|nuuC5vEqXlEZ/8BXQR7m619W6Ak= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILIG2T/B0l0gaqj3puu510tu9N1OkQ4znY3LYuEm5zCF\n";
        assert_eq!(check(text, "example.com", 22, &key(ED2)), Verdict::Match);
        assert_eq!(check(text, "otherhost", 22, &key(ED2)), Verdict::Unknown);
    }

    #[test]
    fn revoked_keys_are_refused_and_cert_authorities_ignored() {
        let text = format!("@revoked * {ED}\n@cert-authority * {ED2}\n");
        assert!(matches!(check(&text, "h", 22, &key(ED)), Verdict::Mismatch(_)));
        assert_eq!(check(&text, "h", 22, &key(ED2)), Verdict::Unknown);
    }

    #[tokio::test]
    async fn learn_appends_once_and_keeps_existing_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/known_hosts");
        assert_eq!(
            learn(&path, "127.0.0.9", 2200, &key(ED)).await.unwrap(),
            Verdict::Unknown
        );
        assert_eq!(
            learn(&path, "127.0.0.9", 2200, &key(ED)).await.unwrap(),
            Verdict::Match
        );
        assert!(matches!(
            learn(&path, "127.0.0.9", 2200, &key(ED2)).await.unwrap(),
            Verdict::Mismatch(_)
        ));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("[127.0.0.9]:2200 {ED}\n"));
    }
}
