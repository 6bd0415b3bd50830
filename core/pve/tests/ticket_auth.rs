//! Ticket (user/password) auth against a real fake cluster: login, CSRF on writes, expiry, revocation,
//! proactive renewal with a test clock (tickets expire after 2 hours), single-flight, and failed logins
//! (401 with `data: null`).
//! Each test starts its own cluster, because ticket faults hit every ticket of a cluster.

// Setup helpers outside #[test] fns panic on failure, as tests do.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{request_lines, requests, ticket_client};
use pve::{Clock, GuestKind, ManualClock, PowerAction, PveError, Secret, TaskOutcome};
use serde_json::json;
use testkit::{ClusterSpec, FakeCluster};

fn own_cluster() -> FakeCluster {
    FakeCluster::start(ClusterSpec::lab()).unwrap()
}

fn logins(c: &FakeCluster, since: usize) -> usize {
    requests(c, since, "POST", "/access/ticket").len()
}

#[tokio::test]
async fn ticket_login_reads_and_writes_with_csrf() {
    // The CSRF header on writes only, against the real server: a write without the CSRF header would be
    // refused with 401.
    let c = own_cluster();
    let pve = ticket_client(&c, None);
    pve.login().await.unwrap();
    assert_eq!(pve.version().await.unwrap().release, "9.0");
    let upid = pve
        .power("pve1", GuestKind::Qemu, 1110, PowerAction::Start)
        .await
        .unwrap();
    assert_eq!(upid.user, "root@pam");
    assert_eq!(
        pve.wait_task(&upid, Duration::from_secs(10)).await.unwrap(),
        TaskOutcome::Ok
    );
}

#[tokio::test]
async fn first_call_logs_in_once_and_reuses_the_ticket() {
    let c = own_cluster();
    let pve = ticket_client(&c, None);
    let mark = c.request_count().unwrap();
    pve.version().await.unwrap();
    pve.nodes().await.unwrap();
    assert_eq!(logins(&c, mark), 1);
}

#[tokio::test]
async fn wrong_password_is_invalid_credentials_without_the_password() {
    // A failed login: 401 {"data":null} → InvalidCredentials naming user@realm, no panic.
    let c = own_cluster();
    let cfg = common::fast(pve::PveConfig::new(
        c.url.parse().unwrap(),
        pve::Auth::Password {
            user: "teacher1@pve".into(),
            password: Secret::new("not-the-pass"),
        },
        pve::Tls::CaFile(c.ca_file.clone()),
    ));
    let pve = pve::PveClient::new(cfg).unwrap();
    let err = pve.login().await.unwrap_err();
    assert!(
        matches!(err, PveError::InvalidCredentials { ref userid } if userid == "teacher1@pve"),
        "{err:?}"
    );
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("not-the-pass"), "{shown}");
    // A normal call fails the same way, without retry loops.
    assert!(matches!(
        pve.version().await,
        Err(PveError::InvalidCredentials { .. })
    ));
}

#[tokio::test]
async fn check_credentials_validates_realm_users_without_changing_auth() {
    let c = own_cluster();
    let pve = common::token_client(&c);
    let name = pve
        .check_credentials("teacher1@pve", &Secret::new("teacher-pass"))
        .await
        .unwrap();
    assert_eq!(name, "teacher1@pve");
    let bad = pve
        .check_credentials("teacher1@pve", &Secret::new("nope"))
        .await
        .unwrap_err();
    assert!(matches!(bad, PveError::InvalidCredentials { ref userid } if userid == "teacher1@pve"));
    // The client itself still uses its token.
    let mark = c.request_count().unwrap();
    pve.version().await.unwrap();
    assert_eq!(logins(&c, mark), 0);
}

#[tokio::test]
async fn expired_ticket_is_replaced_after_one_401() {
    let c = own_cluster();
    let pve = ticket_client(&c, None);
    pve.login().await.unwrap();
    // Expire every existing ticket now; new ones live 2 h again.
    c.control("POST", "/tickets/ttl", json!({"secs": 0, "existing": true}))
        .unwrap();
    c.control("POST", "/tickets/ttl", json!({"secs": 7200})).unwrap();
    let mark = c.request_count().unwrap();
    pve.version().await.unwrap();
    let lines = request_lines(&c, mark);
    let paths: Vec<&str> = lines.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/api2/json/version",
            "/api2/json/access/ticket",
            "/api2/json/version"
        ]
    );
}

#[tokio::test]
async fn revoked_tickets_recover_with_one_relogin_for_writes_too() {
    let c = own_cluster();
    let pve = ticket_client(&c, None);
    pve.login().await.unwrap();
    c.control("POST", "/tickets/revoke", json!({})).unwrap();
    let mark = c.request_count().unwrap();
    let upid = pve
        .power("pve2", GuestKind::Qemu, 1108, PowerAction::Start)
        .await
        .unwrap();
    assert_eq!(logins(&c, mark), 1);
    assert_eq!(
        requests(&c, mark, "POST", "/nodes/pve2/qemu/1108/status/start").len(),
        2
    );
    pve.wait_task(&upid, Duration::from_secs(10)).await.unwrap();
}

#[tokio::test]
async fn second_401_after_relogin_is_auth_expired() {
    let c = own_cluster();
    let pve = ticket_client(&c, None);
    pve.login().await.unwrap();
    c.control(
        "POST",
        "/fail",
        json!({"method": "GET", "path": "/version", "status": 401, "message": "permission denied - invalid PVE ticket", "times": 2}),
    )
    .unwrap();
    let mark = c.request_count().unwrap();
    assert!(matches!(pve.version().await, Err(PveError::AuthExpired)));
    assert_eq!(logins(&c, mark), 1, "exactly one re-login");
    assert_eq!(
        requests(&c, mark, "GET", "/version").len(),
        2,
        "exactly one retry"
    );
}

#[tokio::test]
async fn ticket_is_renewed_proactively_after_an_hour() {
    // Ticket expiry with a test clock: login at T0; at T0+1h55 the client renews before calling, so the call
    // succeeds without a 401 even though the server has expired the old ticket; at T0+2h01 the
    // renewed ticket (6 min old) is used as is.
    let c = own_cluster();
    let clock = Arc::new(ManualClock::new());
    let pve = ticket_client(&c, Some(clock.clone() as Arc<dyn Clock>));
    pve.login().await.unwrap();

    clock.advance(Duration::from_secs(30 * 60));
    let mark = c.request_count().unwrap();
    pve.version().await.unwrap();
    assert_eq!(logins(&c, mark), 0, "a 30 min old ticket is kept");

    clock.advance(Duration::from_secs(85 * 60)); // T0+1h55
    c.control("POST", "/tickets/ttl", json!({"secs": 0, "existing": true}))
        .unwrap();
    c.control("POST", "/tickets/ttl", json!({"secs": 7200})).unwrap();
    let mark = c.request_count().unwrap();
    pve.version().await.unwrap();
    assert!(logins(&c, mark) >= 1, "renewed before the call");
    assert_eq!(
        requests(&c, mark, "GET", "/version").len(),
        1,
        "no 401 and no retry"
    );

    clock.advance(Duration::from_secs(6 * 60)); // T0+2h01
    let mark = c.request_count().unwrap();
    pve.version().await.unwrap();
    assert_eq!(logins(&c, mark), 0);
}

#[tokio::test]
async fn renewal_is_single_flight_across_concurrent_calls() {
    let c = own_cluster();
    let clock = Arc::new(ManualClock::new());
    let pve = ticket_client(&c, Some(clock.clone() as Arc<dyn Clock>));
    pve.login().await.unwrap();
    clock.advance(Duration::from_secs(2 * 3600));
    let mark = c.request_count().unwrap();
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let pve = pve.clone();
            tokio::spawn(async move { pve.version().await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    // One renewal episode: the ticket-as-password renewal, plus (where the server refuses that) one
    // password login. Eight unsynchronised calls would log in eight times or more.
    assert!(logins(&c, mark) <= 2, "{} logins", logins(&c, mark));
    assert_eq!(requests(&c, mark, "GET", "/version").len(), 8);
}
