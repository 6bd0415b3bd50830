//! Password hashing with argon2id (RFC 9106), off the async workers (a login flood must not pin the runtime).
//!
//! Parameters follow the OWASP Password Storage Cheat Sheet: m = 19,456 KiB (19 MiB), t = 2, p = 1.
//! They are stored in every PHC string (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`), so a hash made
//! with older parameters is recognised and re-hashed at the user's next successful login.
//!
//! Every hash and verify runs on one of a few dedicated hashing threads (as many as the semaphore has
//! permits, about `num_cpus / 2`) while holding a permit; the permit is moved into the job, so a request
//! future that is dropped (client gone) cannot release it while the CPU is still hashing. A caller that
//! cannot get a permit within the configured wait (default 2 s) gets [`HashError::Busy`] (503 +
//! `Retry-After`). Dedicated threads, not `spawn_blocking`'s pool of up to 512: each thread's allocator
//! arena keeps the 19 MiB argon2 buffer it freed, so the memory a login storm leaves behind is bounded by
//! the permits, not by how many blocking threads the storm happened to wake.

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use pve::Secret;
use rand::RngCore;
use tokio::sync::Semaphore;

/// Memory cost in KiB (OWASP: 19 MiB).
pub const M_COST_KIB: u32 = 19_456;
/// Iterations (OWASP: 2).
pub const T_COST: u32 = 2;
/// Parallelism (OWASP: 1).
pub const P_COST: u32 = 1;

/// A hash of a random password with the current parameters, verified against for unknown users so that
/// "no such user" and "wrong password" take the same time (no user enumeration).
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$cHJveGxhYmR1bW15c2FsdA$2T2N8QvQxYXh5v0m8Zr9lV8Gm0b2l6x1uB0t4Qm1Q2E";

/// Why hashing could not be done.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// No permit within the wait: too many logins at once. Answer 503 with `Retry-After`.
    #[error("too many sign-ins at once; try again in a moment")]
    Busy,
    /// The stored hash is not a PHC string argon2 understands, or hashing failed.
    #[error("password hashing failed: {0}")]
    Failed(String),
}

/// Result of a verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The password matches.
    pub ok: bool,
    /// The stored hash uses other parameters than the current ones: store a fresh hash.
    pub needs_rehash: bool,
}

fn argon2() -> Result<Argon2<'static>, HashError> {
    let params =
        Params::new(M_COST_KIB, T_COST, P_COST, None).map_err(|e| HashError::Failed(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

thread_local! {
    /// This thread's argon2 memory (19 MiB at the current parameters), allocated once and reused by
    /// every hash and verify on the thread: allocating it per hash left a freed 19 MiB chunk behind per
    /// hash in the thread's allocator arena (a sign-in storm grew the server by ~200 MiB).
    static BLOCKS: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `argon` over `pwd` and `salt` into `out` with this thread's reusable memory ([`BLOCKS`]).
fn hash_into(argon: &Argon2<'_>, pwd: &[u8], salt: &[u8], out: &mut [u8]) -> Result<(), HashError> {
    BLOCKS.with(|blocks| {
        let mut blocks = blocks.borrow_mut();
        let n = argon.params().block_count();
        if blocks.len() < n {
            blocks.resize(n, argon2::Block::default());
        }
        argon
            .hash_password_into_with_memory(pwd, salt, out, &mut blocks[..n])
            .map_err(|e| HashError::Failed(e.to_string()))
    })
}

/// Hashes `password` now, on this thread (blocking, ~20–100 ms): for the CLI and the hashing threads.
/// Returns the PHC string (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`, RFC 9106 / PHC format).
pub fn hash_blocking(password: &Secret) -> Result<String, HashError> {
    let fail = |e: argon2::password_hash::Error| HashError::Failed(e.to_string());
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let salt_string = SaltString::encode_b64(&salt).map_err(fail)?;
    let argon = argon2()?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    hash_into(&argon, password.expose().as_bytes(), &salt, &mut out)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: argon2::password_hash::ParamsString::try_from(argon.params()).map_err(fail)?,
        salt: Some(salt_string.as_salt()),
        hash: Some(argon2::password_hash::Output::new(&out).map_err(fail)?),
    };
    Ok(phc.to_string())
}

/// Recomputes the hash of `password` with the algorithm, version, parameters and salt of `parsed`, and
/// compares it with the stored hash in constant time.
fn matches(parsed: &PasswordHash<'_>, password: &Secret) -> bool {
    let Some(expected) = parsed.hash else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (Algorithm::try_from(parsed.algorithm), Params::try_from(parsed))
    else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Some(salt) = parsed.salt else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let Ok(params) = Params::new(
        params.m_cost(),
        params.t_cost(),
        params.p_cost(),
        Some(expected.len()),
    ) else {
        return false;
    };
    let argon = Argon2::new(algorithm, version, params);
    let mut out = vec![0u8; expected.len()];
    if hash_into(&argon, password.expose().as_bytes(), salt, &mut out).is_err() {
        return false;
    }
    // `Output`'s equality is constant-time.
    argon2::password_hash::Output::new(&out).is_ok_and(|o| o == expected)
}

/// Verifies `password` against `phc` (or against a dummy hash when `phc` is `None`, then `ok` is
/// false), on this thread (blocking).
pub fn verify_blocking(phc: Option<&str>, password: &Secret) -> Verified {
    let (phc, real) = match phc {
        Some(h) => (h, true),
        None => (DUMMY_HASH, false),
    };
    let Ok(parsed) = PasswordHash::new(phc) else {
        // An unreadable stored hash never matches; still spend the time of a verify.
        let _ = verify_blocking(None, password);
        return Verified {
            ok: false,
            needs_rehash: false,
        };
    };
    let ok = matches(&parsed, password);
    let current = parsed.algorithm.as_str() == "argon2id"
        && Params::try_from(&parsed)
            .map(|p| p.m_cost() == M_COST_KIB && p.t_cost() == T_COST && p.p_cost() == P_COST)
            .unwrap_or(false);
    Verified {
        ok: ok && real,
        needs_rehash: ok && real && !current,
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// The bounded, off-runtime hasher shared by the login routes.
#[derive(Clone, Debug)]
pub struct Hasher {
    permits: Arc<Semaphore>,
    wait: Duration,
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Hasher {
    /// A hasher with `permits` concurrent hashes (at least 1) on as many `proxlab-hash` threads, and
    /// `wait` for a permit. The threads end when the last clone of the hasher is dropped.
    pub fn new(permits: usize, wait: Duration) -> Hasher {
        let n = permits.max(1);
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..n {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("proxlab-hash-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return, // every sender is gone
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        Hasher {
            permits: Arc::new(Semaphore::new(n)),
            wait,
            jobs,
        }
    }

    /// `num_cpus / 2` (at least 1) permits and a 2 s wait.
    pub fn default_for_host() -> Hasher {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        Hasher::new((cpus / 2).max(1), Duration::from_secs(2))
    }

    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, HashError> {
        let permit = tokio::time::timeout(self.wait, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| HashError::Busy)?
            .map_err(|_| HashError::Busy)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // Held until the hash is done, even if the waiting request is dropped.
            let _permit = permit;
            let _ = tx.send(f());
        });
        self.jobs
            .send(job)
            .map_err(|_| HashError::Failed("the password hashing threads are gone".into()))?;
        rx.await
            .map_err(|_| HashError::Failed("the password hashing job ended without an answer".into()))
    }

    /// Hashes a new password (see [`hash_blocking`]) off the runtime.
    pub async fn hash(&self, password: Secret) -> Result<String, HashError> {
        self.run(move || hash_blocking(&password)).await?
    }

    /// Verifies a password (see [`verify_blocking`]) off the runtime; `phc = None` runs the dummy verify.
    pub async fn verify(&self, phc: Option<String>, password: Secret) -> Result<Verified, HashError> {
        self.run(move || verify_blocking(phc.as_deref(), &password)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};

    #[test]
    fn hash_uses_owasp_parameters_and_verifies() {
        let h = hash_blocking(&Secret::new("correct horse")).unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert_eq!(
            verify_blocking(Some(&h), &Secret::new("correct horse")),
            Verified {
                ok: true,
                needs_rehash: false
            }
        );
        assert!(!verify_blocking(Some(&h), &Secret::new("wrong")).ok);
    }

    #[test]
    fn dummy_hash_has_the_current_parameters_and_never_matches() {
        let parsed = PasswordHash::new(DUMMY_HASH).unwrap();
        let p = Params::try_from(&parsed).unwrap();
        assert_eq!((p.m_cost(), p.t_cost(), p.p_cost()), (M_COST_KIB, T_COST, P_COST));
        assert!(!verify_blocking(None, &Secret::new("")).ok);
    }

    #[test]
    fn hashes_agree_with_the_argon2_crates_own_phc_functions_both_ways() {
        // Ours verified by the crate's `verify_password` …
        let ours = hash_blocking(&Secret::new("pässwörd ✓")).unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            Argon2::default()
                .verify_password("pässwörd ✓".as_bytes(), &parsed)
                .is_ok()
        );
        assert!(Argon2::default().verify_password(b"other", &parsed).is_err());
        // … and the crate's hashes (any parameters) verified by ours, on the same reused memory.
        for (m, t) in [(M_COST_KIB, T_COST), (8192, 3), (M_COST_KIB * 2, 1)] {
            let a = Argon2::new(
                Algorithm::Argon2id,
                Version::V0x13,
                Params::new(m, t, 1, None).unwrap(),
            );
            let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
            let theirs = a.hash_password(b"correct horse", &salt).unwrap().to_string();
            assert!(
                verify_blocking(Some(&theirs), &Secret::new("correct horse")).ok,
                "m={m} t={t}"
            );
            assert!(
                !verify_blocking(Some(&theirs), &Secret::new("correct horsE")).ok,
                "m={m} t={t}"
            );
        }
        // Two hashes of one password differ (fresh salts) and both verify.
        let again = hash_blocking(&Secret::new("pässwörd ✓")).unwrap();
        assert_ne!(ours, again);
        assert!(verify_blocking(Some(&again), &Secret::new("pässwörd ✓")).ok);
    }

    #[test]
    fn old_parameters_ask_for_a_rehash() {
        let params = Params::new(4096, 1, 1, None).unwrap();
        let old = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let h = old.hash_password(b"pw", &salt).unwrap().to_string();
        assert_eq!(
            verify_blocking(Some(&h), &Secret::new("pw")),
            Verified {
                ok: true,
                needs_rehash: true
            }
        );
    }
}
