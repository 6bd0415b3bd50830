//! Self-registration through an invite link, through the whole router (`web::app` + `oneshot`) against
//! a real deployer over the fake cluster: 30 registrations at once make no more accounts than the
//! invite's cap (by default the class's free seats) nor more than the per-minute limit; the rest are
//! refused with 409 `invite_used_up` or 429 `invite_busy` and a message, and make no account.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use support::{Fixture, call_json, fixture, json_of, message_of};
use web::auth::AuthConfig;

struct Web {
    fx: Fixture,
    app: axum::Router,
    deployer: deploy::Deployer,
}

/// Tests of this binary run in parallel on one fake cluster: each gets its own VMID range.
async fn web(lo: u32, hi: u32) -> Web {
    let cfg = AuthConfig {
        hash_wait: Duration::from_secs(60),
        ..AuthConfig::default()
    };
    let fx = fixture(cfg).await;
    let exec: Arc<dyn cloner::Executor> = Arc::new(cloner::LocalExecutor::new(Duration::from_secs(60)));
    let deployer = support::deployer(&fx, exec, lo, hi).await;
    support::open_template(&deployer, 9000).await;
    let app = web::app(fx.state.clone().with_deployer(deployer.clone()));
    Web { fx, app, deployer }
}

impl Web {
    /// A deployed self-registration class of `pool` students and an invite (`invite` is its body):
    /// `(class id, token)`.
    async fn class_with_invite(&self, name: &str, pool: u32, invite: Value) -> (String, String) {
        let body = json!({"name": name, "template_vmid": 9000, "pool_size": pool, "node": "pve1",
                          "self_registration": true});
        let (st, v) = call_json(&self.fx, &self.app, "teach", "POST", "/api/classes", Some(body)).await;
        assert_eq!(st, StatusCode::ACCEPTED, "{v}");
        let id = v["class"]["id"].as_str().unwrap().to_string();
        let j = self
            .deployer
            .wait_job(v["job"]["id"].as_str().unwrap(), Duration::from_secs(180))
            .await
            .unwrap();
        assert_eq!(j.state, store::JobState::Done, "{j:?}");
        let (st, inv) = call_json(
            &self.fx,
            &self.app,
            "teach",
            "POST",
            &format!("/api/classes/{id}/invite"),
            Some(invite),
        )
        .await;
        assert_eq!(st, StatusCode::CREATED, "{inv}");
        (id, inv["token"].as_str().unwrap().to_string())
    }

    /// An anonymous `POST /register` (JSON) from its own address: (status, Retry-After, body).
    async fn register(&self, user: &str, token: &str, n: usize) -> (StatusCode, String, Value) {
        use tower::ServiceExt;
        let body = json!({"username": user, "password": "long-enough-pass", "invite": token});
        let mut req = Request::builder()
            .method("POST")
            .uri("/register")
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        // Each student from their own address: the per-address sign-in throttle is not what is tested.
        let addr = format!("10.1.{}.{}:40000", n / 200, n % 200 + 1);
        req.extensions_mut().insert(axum::extract::ConnectInfo(
            addr.parse::<std::net::SocketAddr>().unwrap(),
        ));
        let resp = tokio::time::timeout(Duration::from_secs(120), self.app.clone().oneshot(req))
            .await
            .unwrap()
            .unwrap();
        let status = resp.status();
        let retry = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, retry, json_of(&bytes))
    }

    /// 30 registrations at once through `token`: their answers.
    async fn burst(&self, prefix: &str, token: &str) -> Vec<(StatusCode, String, Value)> {
        let calls = (0..30).map(|i| {
            let user = format!("{prefix}{i:02}");
            async move { self.register(&user, token, i).await }
        });
        futures::future::join_all(calls).await
    }

    fn accounts(&self, prefix: &str) -> usize {
        self.fx
            .store
            .users
            .values()
            .unwrap()
            .iter()
            .filter(|u| u.name.starts_with(prefix))
            .count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_registrations_at_once_make_no_more_accounts_than_the_class_has_free_seats() {
    let w = web(5900, 5919).await;
    let (id, token) = w.class_with_invite("Seats", 4, json!({})).await;
    let answers = w.burst("seat", &token).await;
    let ok = answers.iter().filter(|a| a.0 == StatusCode::OK).count();
    assert_eq!(ok, 4, "one account per free seat: {answers:?}");
    for (st, _, v) in answers.iter().filter(|a| a.0 != StatusCode::OK) {
        assert_eq!(*st, StatusCode::CONFLICT, "{v}");
        assert_eq!(v["error"]["code"], "invite_used_up", "{v}");
        assert!(
            message_of(v).contains("this invite link allows 4 new accounts and all were made"),
            "{v}"
        );
    }
    assert_eq!(w.accounts("seat"), 4);
    let inv = &w.deployer.invites(&id).unwrap()[0];
    assert_eq!((inv.max_registrations, inv.registrations), (Some(4), 4));
    // The refusals are in the audit log.
    let refused =
        w.fx.store
            .audit_recent(1000)
            .unwrap()
            .into_iter()
            .filter(|a| a.action == "user.register" && a.result != "ok")
            .count();
    assert_eq!(refused, 26);
    // They name the invite by its id, never by a piece of its token.
    let audit = w.fx.store.audit_recent(1000).unwrap();
    for a in audit.iter().filter(|a| a.action == "user.register") {
        assert_eq!(a.target, inv.id, "{a:?}");
        assert!(!token.contains(&a.target), "{a:?}");
    }
    // A name already taken gives its slot back: the cap counts accounts made, not attempts.
    let (id2, token2) = w.class_with_invite("Two seats", 2, json!({})).await;
    let (st, _, v) = w.register("seat00", &token2, 100).await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert_ne!(v["error"]["code"], "invite_used_up", "{v}");
    let (st, _, v) = w.register("fresh1", &token2, 101).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(w.deployer.invites(&id2).unwrap()[0].registrations, 1);
    for c in [id, id2] {
        let (st, v) = call_json(
            &w.fx,
            &w.app,
            "teach",
            "DELETE",
            &format!("/api/classes/{c}?confirm={c}"),
            None,
        )
        .await;
        assert_eq!(st, StatusCode::ACCEPTED, "{v}");
        w.deployer
            .wait_job(v["job"]["id"].as_str().unwrap(), Duration::from_secs(180))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_registrations_at_once_are_held_to_ten_a_minute_per_invite() {
    let w = web(5920, 5939).await;
    // A teacher may allow more accounts than seats (students wait for VMs); the rate still holds.
    let (id, token) = w
        .class_with_invite("Busy", 1, json!({"max_registrations": 100}))
        .await;
    let answers = w.burst("busy", &token).await;
    let ok = answers.iter().filter(|a| a.0 == StatusCode::OK).count();
    assert_eq!(ok, 10, "{answers:?}");
    for (st, retry, v) in answers.iter().filter(|a| a.0 != StatusCode::OK) {
        assert_eq!(*st, StatusCode::TOO_MANY_REQUESTS, "{v}");
        assert_eq!(retry, "60");
        assert_eq!(v["error"]["code"], "invite_busy", "{v}");
        assert!(
            message_of(v).contains("already made 10 accounts in the last minute"),
            "{v}"
        );
    }
    assert_eq!(w.accounts("busy"), 10);
    // A cap above the class limit is refused when the invite is made.
    let (st, v) = call_json(
        &w.fx,
        &w.app,
        "teach",
        "POST",
        &format!("/api/classes/{id}/invite"),
        Some(json!({"max_registrations": 1_000_000})),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (st, v) = call_json(
        &w.fx,
        &w.app,
        "teach",
        "DELETE",
        &format!("/api/classes/{id}?confirm={id}"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    w.deployer
        .wait_job(v["job"]["id"].as_str().unwrap(), Duration::from_secs(180))
        .await
        .unwrap();
}
