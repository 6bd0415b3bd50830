//! Algorithm profiles: modern by default, and a legacy one for old guests that offer only SHA-1 key
//! exchange and `ssh-rsa` host keys.
//!
//! `modern` (the default): russh's safe defaults minus `ssh-rsa` (RSA with SHA-1) host-key signatures —
//! curve25519 / mlkem768x25519 / DH group14-18 with SHA-2 key exchange, Ed25519, ECDSA and RSA-SHA2 host
//! keys, chacha20-poly1305 / AES-GCM / AES-CTR, SHA-2 MACs. `legacy` (opt-in per target): the same, then
//! `diffie-hellman-group14-sha1` key exchange and `ssh-rsa` host-key signatures appended after them, so a
//! server that offers a modern algorithm still gets it. `diffie-hellman-group1-sha1` is never offered.

use std::borrow::Cow;

use russh::keys::ssh_key::{Algorithm, HashAlg};
use russh::{Preferred, kex};

/// Which algorithm lists a connection offers. See the module docs for the lists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AlgorithmProfile {
    /// Modern algorithms only (the default, and the only profile for Proxmox nodes in production).
    #[default]
    Modern,
    /// Modern, then `diffie-hellman-group14-sha1` and `ssh-rsa` appended (old appliances).
    Legacy,
}

impl AlgorithmProfile {
    /// `Legacy` when `legacy` is true, else `Modern`.
    pub fn from_flag(legacy: bool) -> Self {
        if legacy { Self::Legacy } else { Self::Modern }
    }

    /// `modern` or `legacy`, for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Modern => "modern",
            Self::Legacy => "legacy",
        }
    }

    /// The russh preference lists of this profile. `recorded` host-key algorithms (from a known_hosts
    /// file) are moved to the front of the host-key list, keeping their relative order otherwise, as
    /// OpenSSH does, so the server presents the key type we can verify.
    pub(crate) fn preferred(self, recorded: &[Algorithm]) -> Preferred {
        let base = Preferred::DEFAULT;
        let mut kex_list: Vec<kex::Name> = base.kex.iter().copied().collect();
        let mut keys: Vec<Algorithm> = base
            .key
            .iter()
            .filter(|a| **a != Algorithm::Rsa { hash: None })
            .cloned()
            .collect();
        if self == Self::Legacy {
            kex_list.push(kex::DH_G14_SHA1);
            keys.push(Algorithm::Rsa { hash: None });
        }
        keys.sort_by_key(|a| {
            !recorded.iter().any(|r| match (r, a) {
                // An RSA key can be used with any RSA signature hash.
                (Algorithm::Rsa { .. }, Algorithm::Rsa { .. }) => true,
                _ => r == a,
            })
        });
        Preferred {
            kex: Cow::Owned(kex_list),
            key: Cow::Owned(keys),
            ..base
        }
    }

    /// The hash for RSA user-key signatures when the server did not say (no `server-sig-algs`): SHA-256
    /// in `modern`, legacy SHA-1 (`ssh-rsa`) in `legacy`.
    pub(crate) fn rsa_fallback_hash(self) -> Option<HashAlg> {
        match self {
            Self::Modern => Some(HashAlg::Sha256),
            Self::Legacy => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kex_names(p: &Preferred) -> Vec<String> {
        p.kex.iter().map(|k| k.as_ref().to_string()).collect()
    }

    fn key_names(p: &Preferred) -> Vec<String> {
        p.key.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn modern_profile_offers_no_sha1_kex_or_ssh_rsa() {
        let p = AlgorithmProfile::Modern.preferred(&[]);
        let kex = kex_names(&p);
        assert!(kex.contains(&"curve25519-sha256".to_string()), "{kex:?}");
        assert!(!kex.iter().any(|k| k.contains("sha1")), "{kex:?}");
        let keys = key_names(&p);
        assert!(keys.contains(&"ssh-ed25519".to_string()));
        assert!(keys.contains(&"rsa-sha2-512".to_string()));
        assert!(!keys.contains(&"ssh-rsa".to_string()), "{keys:?}");
    }

    #[test]
    fn legacy_profile_appends_group14_sha1_and_ssh_rsa_after_modern_ones() {
        let modern = AlgorithmProfile::Modern.preferred(&[]);
        let p = AlgorithmProfile::Legacy.preferred(&[]);
        let kex = kex_names(&p);
        assert_eq!(
            kex.last().map(String::as_str),
            Some("diffie-hellman-group14-sha1")
        );
        assert_eq!(&kex[..kex.len() - 1], kex_names(&modern).as_slice());
        assert!(!kex.contains(&"diffie-hellman-group1-sha1".to_string()));
        let keys = key_names(&p);
        assert_eq!(keys.last().map(String::as_str), Some("ssh-rsa"));
    }

    #[test]
    fn recorded_key_types_are_preferred() {
        let p = AlgorithmProfile::Modern.preferred(&[Algorithm::Rsa { hash: None }]);
        let keys = key_names(&p);
        assert_eq!(&keys[..2], ["rsa-sha2-512", "rsa-sha2-256"]);
        assert!(keys.contains(&"ssh-ed25519".to_string()));
    }
}
