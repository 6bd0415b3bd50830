//! Accounts below the HTTP layer: password hashing with argon2id on a few dedicated threads
//! ([`password`]), and the password length rule. Used by `web` (sign-in, the admin's user forms) and by
//! the CLI's `proxlab user` commands, which so do not need the HTTP layer for a password.

pub mod password;

pub use password::{HashError, Hasher, Verified, hash_blocking, verify_blocking};

/// Longest accepted password, bytes; longer ones answer 400 before any hashing (a login flood must not pin
/// the runtime in argon2).
pub const MAX_PASSWORD_BYTES: usize = 1024;
