//! Transport failures with real sockets on 127.0.0.1: refused connections, connections dropped
//! mid-request, and a server that never answers. GETs are retried, writes are not.

// Setup helpers outside #[test] fns panic on failure, as tests do.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pve::{Auth, PveClient, PveConfig, PveError, Secret, Tls};
use tokio::net::TcpListener;

fn client(port: u16, timeout: Duration) -> PveClient {
    let mut cfg = PveConfig::new(
        format!("https://127.0.0.1:{port}").parse().unwrap(),
        Auth::Token {
            id: "portal@pve!lab".into(),
            secret: Secret::new("00000000-fake"),
        },
        Tls::InsecureSkipVerify,
    );
    cfg.retry_backoff = Duration::from_millis(10);
    cfg.timeout = timeout;
    cfg.connect_timeout = timeout;
    PveClient::new(cfg).unwrap()
}

/// A listener that counts connections and either closes them at once or holds them open silently.
async fn listener(hold: bool) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = l.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            if hold {
                held.push(sock);
            } else {
                drop(sock);
            }
        }
    });
    (port, count)
}

#[tokio::test]
async fn refused_connection_is_a_connect_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = client(port, Duration::from_secs(2)).version().await.unwrap_err();
    assert!(matches!(err, PveError::Connect(_)), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn dropped_connections_are_retried_for_reads_only() {
    let (port, count) = listener(false).await;
    let pve = client(port, Duration::from_secs(2));
    let err = pve.version().await.unwrap_err();
    assert!(matches!(err, PveError::Connect(_)), "{err:?}");
    assert_eq!(count.load(Ordering::SeqCst), 3, "one try and two retries");

    count.store(0, Ordering::SeqCst);
    let err = pve
        .post_value("/nodes/pve1/qemu/100/status/start", &[])
        .await
        .unwrap_err();
    assert!(matches!(err, PveError::Connect(_)), "{err:?}");
    assert_eq!(count.load(Ordering::SeqCst), 1, "a write is tried once");
}

#[tokio::test]
async fn silent_server_times_out_per_request() {
    let (port, count) = listener(true).await;
    let mut cfg = PveConfig::new(
        format!("https://127.0.0.1:{port}").parse().unwrap(),
        Auth::Token {
            id: "portal@pve!lab".into(),
            secret: Secret::new("00000000-fake"),
        },
        Tls::InsecureSkipVerify,
    );
    cfg.timeout = Duration::from_millis(300);
    cfg.read_retries = 1;
    cfg.retry_backoff = Duration::from_millis(10);
    let pve = PveClient::new(cfg).unwrap();
    let started = std::time::Instant::now();
    let err = pve.version().await.unwrap_err();
    assert!(matches!(err, PveError::Timeout), "{err:?}");
    assert_eq!(count.load(Ordering::SeqCst), 2);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
