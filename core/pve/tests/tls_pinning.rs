//! Certificate pinning that really pins, in real TLS handshakes. Small rustls servers on 127.0.0.1 present
//! certificates made here with rcgen (the right one, the right one with another key, a CA-valid
//! impostor, a name-less one, an impostor chain with the pinned certificate appended), over TLS 1.2 and
//! 1.3; and the fake PVE cluster is reached with its CA file, its pin and a wrong pin.

// Setup helpers outside #[test] fns panic on failure, as tests do.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use pve::{Auth, Fingerprint, PveClient, PveConfig, PveError, Secret, Tls};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const BODY: &str = r#"{"data":{"version":"9.0.10","release":"9.0","repoid":"pinning"}}"#;

/// A certificate and its key pair.
struct Issued {
    der: CertificateDer<'static>,
    pem: String,
    key: KeyPair,
}

fn issue(
    sans: &[&str],
    signer: Option<(&rcgen::Certificate, &KeyPair)>,
    ca: bool,
) -> (Issued, rcgen::Certificate) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, sans.first().copied().unwrap_or("pin"));
    if ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }
    let cert = match signer {
        None => params.self_signed(&key).unwrap(),
        Some((issuer, issuer_key)) => params.signed_by(&key, issuer, issuer_key).unwrap(),
    };
    (
        Issued {
            der: cert.der().clone(),
            pem: cert.pem(),
            key,
        },
        cert,
    )
}

fn pkcs8(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

/// Serves a fixed chain signed with a fixed key, whether or not they belong together (rustls's
/// `with_single_cert` would refuse a mismatched pair; an attacker's server would not).
#[derive(Debug)]
struct Fixed {
    key: Arc<CertifiedKey>,
    sni: Arc<Mutex<Vec<Option<String>>>>,
}

impl ResolvesServerCert for Fixed {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.sni
            .lock()
            .unwrap()
            .push(hello.server_name().map(str::to_owned));
        Some(self.key.clone())
    }
}

struct Server {
    addr: SocketAddr,
    sni: Arc<Mutex<Vec<Option<String>>>>,
}

async fn serve(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    versions: &[&'static SupportedProtocolVersion],
) -> Server {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let signer = provider.key_provider.load_private_key(key).unwrap();
    let sni = Arc::new(Mutex::new(Vec::new()));
    let resolver = Fixed {
        key: Arc::new(CertifiedKey::new(chain, signer)),
        sni: sni.clone(),
    };
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
                    BODY.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Server { addr, sni }
}

fn client(url: &str, tls: Tls) -> PveClient {
    let mut cfg = PveConfig::new(
        url.parse().unwrap(),
        Auth::Token {
            id: "portal@pve!lab".into(),
            secret: Secret::new("00000000-fake"),
        },
        tls,
    );
    cfg.read_retries = 0;
    PveClient::new(cfg).unwrap()
}

fn pin_of(cert: &CertificateDer<'_>) -> Fingerprint {
    Fingerprint::of_der(cert.as_ref())
}

const BOTH: [&[&SupportedProtocolVersion]; 2] = [&[&rustls::version::TLS12], &[&rustls::version::TLS13]];

#[tokio::test]
async fn pinned_fixture_cert_is_accepted_over_tls12_and_tls13() {
    // Case 1.
    let (fixture, _) = issue(&["pve-a", "127.0.0.1"], None, false);
    for versions in BOTH {
        let srv = serve(vec![fixture.der.clone()], pkcs8(&fixture.key), versions).await;
        let pve = client(
            &format!("https://127.0.0.1:{}", srv.addr.port()),
            Tls::Fingerprint(pin_of(&fixture.der)),
        );
        assert_eq!(pve.version().await.unwrap().repoid, "pinning");
    }
}

#[tokio::test]
async fn same_cert_with_another_key_fails_the_handshake_signature() {
    // Case 2: the public certificate replayed without its private key.
    let (fixture, _) = issue(&["pve-a", "127.0.0.1"], None, false);
    let other = KeyPair::generate().unwrap();
    for versions in BOTH {
        let srv = serve(vec![fixture.der.clone()], pkcs8(&other), versions).await;
        let pve = client(
            &format!("https://127.0.0.1:{}", srv.addr.port()),
            Tls::Fingerprint(pin_of(&fixture.der)),
        );
        let err = pve.version().await.unwrap_err();
        assert!(
            matches!(err, PveError::Tls(ref m) if m.to_lowercase().contains("signature")),
            "{versions:?}: {err:?}"
        );
    }
}

#[tokio::test]
async fn ca_valid_impostor_fails_the_pin_and_the_error_names_both_fingerprints() {
    // Case 3: valid under WebPKI via a test CA (shown with CaFile), still refused by the pin.
    let (fixture, _) = issue(&["pve-a", "127.0.0.1"], None, false);
    let (ca, ca_cert) = issue(&["pinning-test-ca"], None, true);
    let (impostor, _) = issue(&["127.0.0.1"], Some((&ca_cert, &ca.key)), false);
    let srv = serve(
        vec![impostor.der.clone(), ca.der.clone()],
        pkcs8(&impostor.key),
        &[&rustls::version::TLS13],
    )
    .await;
    let url = format!("https://127.0.0.1:{}", srv.addr.port());

    let dir = testkit::temp_dir("pve-pinning-");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    client(&url, Tls::CaFile(ca_file)).version().await.unwrap();

    let expected = pin_of(&fixture.der);
    let presented = pin_of(&impostor.der);
    match client(&url, Tls::Fingerprint(expected)).version().await {
        Err(PveError::Tls(msg)) => {
            assert!(msg.contains(&expected.to_string()), "{msg}");
            assert!(msg.contains(&presented.to_string()), "{msg}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn pin_replaces_name_checks_for_a_cert_without_ip_san() {
    // Case 4: only DNS:pve-a, reached by IP. The pin passes; CA-style verification would not.
    let (named, _) = issue(&["pve-a"], None, false);
    let srv = serve(
        vec![named.der.clone()],
        pkcs8(&named.key),
        &[&rustls::version::TLS13],
    )
    .await;
    let url = format!("https://127.0.0.1:{}", srv.addr.port());
    client(&url, Tls::Fingerprint(pin_of(&named.der)))
        .version()
        .await
        .unwrap();

    let dir = testkit::temp_dir("pve-pinning-");
    let ca_file = dir.path().join("named.pem");
    std::fs::write(&ca_file, &named.pem).unwrap();
    let err = client(&url, Tls::CaFile(ca_file)).version().await.unwrap_err();
    assert!(matches!(err, PveError::Tls(_)), "{err:?}");
}

#[tokio::test]
async fn pinned_cert_appended_to_an_impostor_chain_is_ignored() {
    // Case 5: only the end-entity certificate is compared.
    let (fixture, _) = issue(&["pve-a", "127.0.0.1"], None, false);
    let (attacker, _) = issue(&["127.0.0.1"], None, false);
    for versions in BOTH {
        let srv = serve(
            vec![attacker.der.clone(), fixture.der.clone()],
            pkcs8(&attacker.key),
            versions,
        )
        .await;
        let pve = client(
            &format!("https://127.0.0.1:{}", srv.addr.port()),
            Tls::Fingerprint(pin_of(&fixture.der)),
        );
        let err = pve.version().await.unwrap_err();
        assert!(
            matches!(err, PveError::Tls(ref m) if m.contains("mismatch")),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn ip_hosts_send_no_sni_and_names_do() {
    let (fixture, _) = issue(&["localhost", "127.0.0.1"], None, false);
    let srv = serve(
        vec![fixture.der.clone()],
        pkcs8(&fixture.key),
        &[&rustls::version::TLS13],
    )
    .await;
    let pin = pin_of(&fixture.der);
    client(
        &format!("https://127.0.0.1:{}", srv.addr.port()),
        Tls::Fingerprint(pin),
    )
    .version()
    .await
    .unwrap();
    assert_eq!(
        srv.sni.lock().unwrap().last().cloned(),
        Some(None),
        "no SNI for an IP literal"
    );
    client(
        &format!("https://localhost:{}", srv.addr.port()),
        Tls::Fingerprint(pin),
    )
    .version()
    .await
    .unwrap();
    assert_eq!(
        srv.sni.lock().unwrap().last().cloned(),
        Some(Some("localhost".to_owned()))
    );
}

#[tokio::test]
async fn insecure_mode_accepts_an_unknown_cert() {
    let (odd, _) = issue(&["somewhere-else"], None, false);
    let srv = serve(vec![odd.der.clone()], pkcs8(&odd.key), &[&rustls::version::TLS12]).await;
    let pve = client(
        &format!("https://127.0.0.1:{}", srv.addr.port()),
        Tls::InsecureSkipVerify,
    );
    pve.version().await.unwrap();
}

#[tokio::test]
async fn fake_cluster_is_reached_with_its_ca_file_and_its_pin() {
    let c = testkit::FakeCluster::shared();
    common::token_client(c).version().await.unwrap();
    let pin: Fingerprint = c.cert_sha256.parse().unwrap();
    let pinned = PveClient::new(PveConfig::new(
        c.url.parse().unwrap(),
        Auth::Token {
            id: c.token_id.clone(),
            secret: Secret::new(c.token_secret.clone()),
        },
        Tls::Fingerprint(pin),
    ))
    .unwrap();
    assert!(!pinned.cluster_resources().await.unwrap().is_empty());
}

#[tokio::test]
async fn fake_cluster_with_a_wrong_pin_is_refused_before_any_request() {
    let c = testkit::FakeCluster::shared();
    let wrong: Fingerprint =
        "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:10:21:32:43:54:65:76:87:98:A9:BA:CB:DC:ED:FE:0F"
            .parse()
            .unwrap();
    let pve = PveClient::new(PveConfig::new(
        c.url.parse().unwrap(),
        Auth::Token {
            id: c.token_id.clone(),
            secret: Secret::new(c.token_secret.clone()),
        },
        Tls::Fingerprint(wrong),
    ))
    .unwrap();
    let mark = c.request_count().unwrap();
    match pve.guest_status("pve3", pve::GuestKind::Lxc, 1310).await {
        Err(PveError::Tls(msg)) => {
            assert!(
                msg.contains(&wrong.to_string()) && msg.contains(&c.cert_sha256),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    let leaked = common::requests(c, mark, "GET", "/nodes/pve3/lxc/1310/status/current");
    assert!(leaked.is_empty(), "no request reached the server: {leaked:?}");
}
