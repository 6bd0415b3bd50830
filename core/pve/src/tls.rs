//! TLS trust for one cluster: a CA file, a pinned certificate fingerprint (that really pins), the system
//! roots, or — loudly — no verification.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::PveError;

/// How the client decides to trust the cluster's TLS certificate. One variant per client, so a pin
/// can never be combined with "skip verification".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tls {
    /// Trust the PEM certificates in this file as roots (e.g. PVE's `/etc/pve/pve-root-ca.pem`);
    /// the usual name/IP and validity checks apply.
    CaFile(PathBuf),
    /// Trust exactly the server certificate with this SHA-256 fingerprint (of the end-entity DER, as
    /// `pvenode cert info` and `/nodes` `ssl_fingerprint` show it). Names, chain and dates are not
    /// checked; the handshake signature is, so the certificate alone (public in every handshake)
    /// cannot impersonate the node.
    Fingerprint(Fingerprint),
    /// Trust the system's CA bundle (`SSL_CERT_FILE`, else the usual Debian/RHEL/Alpine paths).
    SystemRoots,
    /// Accept any certificate. For throw-away tests only: logged as a warning on every client built,
    /// never the default.
    InsecureSkipVerify,
}

/// A SHA-256 certificate fingerprint (32 bytes).
///
/// Parses `AA:BB:…` or plain hex, either case, with an optional `SHA256:` prefix (also
/// `sha256 Fingerprint=` as `openssl x509 -fingerprint -sha256` prints it); anything that is not
/// 32 bytes is refused. Displays as uppercase `AA:BB:…`, and serializes that way.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }

    /// The 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Constant-time comparison with the digest of a presented certificate.
    pub fn matches_der(&self, der: &[u8]) -> bool {
        let presented: [u8; 32] = Sha256::digest(der).into();
        bool::from(self.0.ct_eq(&presented))
    }
}

impl From<[u8; 32]> for Fingerprint {
    fn from(bytes: [u8; 32]) -> Self {
        Fingerprint(bytes)
    }
}

impl FromStr for Fingerprint {
    type Err = PveError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut t = s.trim();
        for prefix in ["sha256 fingerprint=", "sha256:", "sha-256:", "sha256="] {
            if t.get(..prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
            {
                t = t[prefix.len()..].trim();
                break;
            }
        }
        let hexdigits: String = t.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(&hexdigits)
            .map_err(|e| PveError::Config(format!("certificate fingerprint '{s}' is not hex: {e}")))?;
        let arr: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            PveError::Config(format!(
                "certificate fingerprint '{s}' has {} bytes; a SHA-256 fingerprint has 32",
                b.len()
            ))
        })?;
        Ok(Fingerprint(arr))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(D::Error::custom)
    }
}

/// The pinned certificate did not match: names both fingerprints so an admin can re-pin after a
/// planned certificate renewal.
#[derive(Debug)]
pub(crate) struct PinMismatch {
    expected: Fingerprint,
    presented: Fingerprint,
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "certificate fingerprint mismatch: expected {}, server presented {}",
            self.expected, self.presented
        )
    }
}

impl std::error::Error for PinMismatch {}

/// Verifies a server by the SHA-256 of its end-entity certificate alone (`pin`), or accepts any
/// certificate (`pin: None`, InsecureSkipVerify); either way with real handshake signature checks.
///
/// Only the end-entity certificate is compared (extra chain certificates are ignored, so appending
/// the pinned certificate to an attacker's chain does not help). The TLS 1.2/1.3 handshake signatures
/// are checked with rustls's own helpers against that certificate's key, so replaying the public
/// certificate without its private key fails (also with no pin: the handshake must still be signed
/// by the key of the certificate presented). The check runs inside the handshake that carries the
/// API traffic; there is no probe connection.
#[derive(Debug)]
struct PinVerifier {
    pin: Option<Fingerprint>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.pin {
            None => Ok(ServerCertVerified::assertion()),
            Some(pin) if pin.matches_der(end_entity.as_ref()) => Ok(ServerCertVerified::assertion()),
            Some(pin) => {
                let mismatch = PinMismatch {
                    expected: pin,
                    presented: Fingerprint::of_der(end_entity.as_ref()),
                };
                tracing::warn!(%mismatch, "refusing TLS server");
                Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    rustls::OtherError(Arc::new(mismatch)),
                )))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Candidate CA bundles when `SSL_CERT_FILE` is not set.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

fn read_pem_roots(path: &Path) -> Result<RootCertStore, PveError> {
    let data = std::fs::read(path)
        .map_err(|e| PveError::Config(format!("cannot read CA file {}: {e}", path.display())))?;
    let mut roots = RootCertStore::empty();
    let mut found = 0usize;
    for cert in rustls_pemfile::certs(&mut data.as_slice()) {
        let cert = cert.map_err(|e| PveError::Config(format!("bad PEM in {}: {e}", path.display())))?;
        roots
            .add(cert)
            .map_err(|e| PveError::Config(format!("unusable certificate in {}: {e}", path.display())))?;
        found += 1;
    }
    if found == 0 {
        return Err(PveError::Config(format!(
            "no PEM certificate in {}",
            path.display()
        )));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, PveError> {
    if let Some(path) = std::env::var_os("SSL_CERT_FILE") {
        return read_pem_roots(Path::new(&path));
    }
    for candidate in SYSTEM_BUNDLES {
        let p = Path::new(candidate);
        if p.is_file() {
            return read_pem_roots(p);
        }
    }
    Err(PveError::Config(format!(
        "no system CA bundle found (set SSL_CERT_FILE, or install ca-certificates: {})",
        SYSTEM_BUNDLES.join(", ")
    )))
}

/// The rustls client configuration for one cluster (ring provider, TLS 1.2 and 1.3, HTTP/1.1 ALPN).
pub(crate) fn client_config(tls: &Tls) -> Result<ClientConfig, PveError> {
    let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
    let algs = provider.signature_verification_algorithms;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PveError::Tls(format!("TLS setup: {e}")))?;
    let mut config = match tls {
        Tls::CaFile(path) => builder
            .with_root_certificates(read_pem_roots(path)?)
            .with_no_client_auth(),
        Tls::SystemRoots => builder
            .with_root_certificates(system_roots()?)
            .with_no_client_auth(),
        Tls::Fingerprint(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier {
                pin: Some(*pin),
                algs,
            }))
            .with_no_client_auth(),
        Tls::InsecureSkipVerify => {
            tracing::warn!(
                "TLS certificate verification is OFF for this PVE cluster: anyone on the path can read \
                 and change the traffic, including the credentials. Use a CA file or a fingerprint pin."
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinVerifier { pin: None, algs }))
                .with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "00112233445566778899AABBCCDDEEFF102132435465768798A9BACBDCEDFE0F";

    #[test]
    fn fingerprint_accepts_colons_plain_hex_either_case_and_prefix() {
        let colon =
            "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:10:21:32:43:54:65:76:87:98:A9:BA:CB:DC:ED:FE:0F";
        let a: Fingerprint = colon.parse().unwrap();
        let b: Fingerprint = HEX.parse().unwrap();
        let c: Fingerprint = HEX.to_lowercase().parse().unwrap();
        let d: Fingerprint = format!("SHA256:{}", colon.to_lowercase()).parse().unwrap();
        let e: Fingerprint = format!("sha256 Fingerprint={colon}").parse().unwrap();
        assert!(a == b && b == c && c == d && d == e);
        assert_eq!(a.to_string(), colon);
        assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{colon}\""));
    }

    #[test]
    fn fingerprint_of_wrong_length_or_non_hex_is_refused() {
        assert!("00:11:22".parse::<Fingerprint>().is_err());
        assert!(format!("{HEX}00").parse::<Fingerprint>().is_err());
        assert!(HEX.replace('A', "G").parse::<Fingerprint>().is_err());
        assert!("".parse::<Fingerprint>().is_err());
        // SHA-1 (20 bytes) is not a SHA-256 pin.
        assert!(
            "AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD"
                .parse::<Fingerprint>()
                .is_err()
        );
    }

    #[test]
    fn fingerprint_matches_only_the_exact_der() {
        let der = b"not really a certificate";
        let fp = Fingerprint::of_der(der);
        assert!(fp.matches_der(der));
        assert!(!fp.matches_der(b"not really a certificatf"));
    }

    #[test]
    fn mismatch_message_names_both_fingerprints() {
        let m = PinMismatch {
            expected: Fingerprint([0xAA; 32]),
            presented: Fingerprint([0x0B; 32]),
        };
        let text = m.to_string();
        assert!(text.contains(&Fingerprint([0xAA; 32]).to_string()), "{text}");
        assert!(text.contains("0B:0B:0B"), "{text}");
    }

    #[test]
    fn missing_ca_file_is_a_config_error() {
        let e = client_config(&Tls::CaFile("/nonexistent/pve-root-ca.pem".into())).unwrap_err();
        assert!(
            matches!(e, PveError::Config(ref m) if m.contains("/nonexistent/pve-root-ca.pem")),
            "{e:?}"
        );
    }
}
