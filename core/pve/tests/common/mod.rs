//! Helpers shared by the integration tests: clients for a fake cluster and request counting.
// Test helpers: a failed setup step should panic with its error.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use pve::{Auth, Clock, PveClient, PveConfig, Secret, Tls};
use serde_json::Value;
use testkit::FakeCluster;

/// A token-authenticated client that trusts the cluster's CA file.
pub fn token_client(c: &FakeCluster) -> PveClient {
    let cfg = PveConfig::new(
        c.url.parse().unwrap(),
        Auth::Token {
            id: c.token_id.clone(),
            secret: Secret::new(c.token_secret.clone()),
        },
        Tls::CaFile(c.ca_file.clone()),
    );
    PveClient::new(fast(cfg)).unwrap()
}

/// A ticket (user/password) client, optionally with a test clock.
pub fn ticket_client(c: &FakeCluster, clock: Option<Arc<dyn Clock>>) -> PveClient {
    let mut cfg = PveConfig::new(
        c.url.parse().unwrap(),
        Auth::Password {
            user: c.user.clone(),
            password: Secret::new(c.password.clone()),
        },
        Tls::CaFile(c.ca_file.clone()),
    );
    if let Some(clock) = clock {
        cfg.clock = clock;
    }
    PveClient::new(fast(cfg)).unwrap()
}

/// Short backoff so retry tests stay quick.
pub fn fast(mut cfg: PveConfig) -> PveConfig {
    cfg.retry_backoff = Duration::from_millis(20);
    cfg
}

/// The API requests from number `since` on whose method is `method` and whose path ends with `suffix`.
pub fn requests(c: &FakeCluster, since: usize, method: &str, suffix: &str) -> Vec<Value> {
    c.requests_since(since)
        .unwrap()
        .into_iter()
        .filter(|r| r["method"] == method && r["path"].as_str().is_some_and(|p| p.ends_with(suffix)))
        .collect()
}

/// The (method, path) of every API request from number `since` on.
pub fn request_lines(c: &FakeCluster, since: usize) -> Vec<(String, String)> {
    c.requests_since(since)
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap_or("").to_owned(),
                r["path"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}
