//! Who may change a class's co-owners, through the whole router (`web::app` + `oneshot`) against a
//! real deployer over the fake cluster. Fixture: class `c1` owned by `teach` with co-owner `co`;
//! `teach2` is a teacher outside it, `stud` a student with a VM in it, `root` an admin.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use support::{Fixture, fixture, json_of};
use web::auth::AuthConfig;

struct Web {
    fx: Fixture,
    app: axum::Router,
}

async fn web() -> Web {
    let fx = fixture(AuthConfig::default()).await;
    let exec: Arc<dyn cloner::Executor> = Arc::new(cloner::LocalExecutor::default());
    let d = support::deployer(&fx, exec, 3720, 3729).await;
    let app = web::app(fx.state.clone().with_deployer(d));
    Web { fx, app }
}

impl Web {
    async fn call(&self, who: &str, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        use tower::ServiceExt;
        let (cookie, csrf) = self.fx.session(who);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("cookie", cookie)
            .header("x-csrf-token", csrf)
            .header("content-type", "application/json")
            .body(
                body.map(|b| Body::from(b.to_string()))
                    .unwrap_or_else(Body::empty),
            )
            .unwrap();
        req.extensions_mut().insert(axum::extract::ConnectInfo(
            "127.0.0.1:40000".parse::<std::net::SocketAddr>().unwrap(),
        ));
        let resp = tokio::time::timeout(Duration::from_secs(60), self.app.clone().oneshot(req))
            .await
            .unwrap()
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            json_of(&bytes)
        };
        (status, v)
    }

    async fn add(&self, who: &str, user: &str) -> (StatusCode, Value) {
        self.call(
            who,
            "POST",
            "/api/classes/c1/co-owners",
            Some(json!({"user": user})),
        )
        .await
    }

    async fn remove(&self, who: &str, user: &str) -> (StatusCode, Value) {
        self.call(who, "DELETE", &format!("/api/classes/c1/co-owners/{user}"), None)
            .await
    }

    /// The co-owners of `c1` as stored.
    fn co_owners(&self) -> Vec<String> {
        self.fx.store.classes.get("c1").unwrap().unwrap().co_owners
    }
}

fn message(v: &Value) -> String {
    v["error"]["message"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_or_an_admin_changes_co_owners_and_only_teacher_accounts_can_become_one() {
    let w = web().await;
    assert_eq!(w.co_owners(), ["co"]);

    // Outsiders do not even see the class; the student in it may not manage it.
    assert_eq!(w.add("teach2", "teach2").await.0, StatusCode::NOT_FOUND);
    let (st, v) = w.add("stud", "stud").await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(w.remove("stud", "co").await.0, StatusCode::FORBIDDEN);
    assert_eq!(w.co_owners(), ["co"]);

    // A co-owner may not add anyone.
    let (st, v) = w.add("co", "teach2").await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["error"]["code"], "not_owner", "{v}");
    assert!(
        message(&v).contains("only the class owner (teach) may add co-owners"),
        "{v}"
    );
    assert_eq!(w.co_owners(), ["co"]);

    // The owner may add only existing teacher or admin accounts.
    for (user, want) in [
        (
            "stud",
            "stud is a student; only teacher or admin accounts can be co-owners",
        ),
        (
            "nobody",
            "there is no user \"nobody\"; only teacher or admin accounts can be co-owners",
        ),
        ("teach", "teach owns the class"),
    ] {
        let (st, v) = w.add("teach", user).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{user}: {v}");
        assert!(message(&v).contains(want), "{user}: want {want:?} in {v}");
        assert_eq!(w.co_owners(), ["co"], "{user}");
    }
    let (st, v) = w.add("teach", "teach2").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["co_owners"], json!(["co", "teach2"]));

    // A co-owner may not remove another co-owner, nor the owner's choice of them.
    for (who, user) in [("co", "teach2"), ("teach2", "co")] {
        let (st, v) = w.remove(who, user).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{who} removes {user}: {v}");
        assert!(
            message(&v).contains("only the class owner (teach) may remove co-owners"),
            "{v}"
        );
        assert_eq!(w.co_owners(), ["co", "teach2"]);
    }
    // ...but may step down.
    let (st, v) = w.remove("co", "co").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(w.co_owners(), ["teach2"]);
    // Having stepped down, co no longer manages the class at all.
    assert_eq!(w.add("co", "co").await.0, StatusCode::NOT_FOUND);

    // An admin may add and remove; so may the owner.
    let (st, v) = w.add("root", "co").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(w.co_owners(), ["teach2", "co"]);
    let (st, v) = w.remove("root", "teach2").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v) = w.remove("teach", "co").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(w.co_owners(), Vec::<String>::new());
}
