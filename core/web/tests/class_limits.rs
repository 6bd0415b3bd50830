//! Counts and lifetimes in class requests, through the whole router (`web::app` + `oneshot`) against a
//! real deployer over the fake cluster: `u32::MAX`-sized VM counts, pool sizes whose sum wraps, and
//! invite lifetimes of `u64::MAX` seconds are answered 400 with a message naming the number and the
//! limit, and nothing stored changes.
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
    let d = support::deployer(&fx, exec, 3700, 3719).await;
    let app = web::app(fx.state.clone().with_deployer(d));
    Web { fx, app }
}

impl Web {
    /// `who` sends `method path` with a raw JSON `body`; returns the status and the JSON answer.
    async fn call(&self, who: &str, method: &str, path: &str, body: &str) -> (StatusCode, Value) {
        use tower::ServiceExt;
        let (cookie, csrf) = self.fx.session(who);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("cookie", cookie)
            .header("x-csrf-token", csrf)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
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

    /// Everything a refused request must leave alone: classes, jobs, invites, templates, VMID
    /// reservations.
    fn stored(&self) -> Value {
        let s = &self.fx.store;
        let db = s.db();
        let tree = |name: &str| -> Vec<String> {
            db.open_tree(name)
                .unwrap()
                .iter()
                .map(|kv| {
                    let (k, v) = kv.unwrap();
                    format!("{}={}", String::from_utf8_lossy(&k), String::from_utf8_lossy(&v))
                })
                .collect()
        };
        json!({
            "classes": serde_json::to_value(s.classes.values().unwrap()).unwrap(),
            "jobs": s.jobs.values().unwrap().len(),
            "templates": s.templates.values().unwrap().len(),
            "invites": tree("invites"),
            "reservations": tree("vmid_reservations"),
        })
    }
}

fn message(v: &Value) -> String {
    v["error"]["message"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_vm_counts_and_invite_lifetimes_are_refused_with_400_and_nothing_stored_changes() {
    let w = web().await;
    // Class c1 (owned by teach) with some student VMs already.
    let mut c1 = w.fx.store.classes.get("c1").unwrap().unwrap();
    c1.pool_size = 3;
    w.fx.store.classes.insert("c1", &c1).unwrap();
    let before = w.stored();

    let cases: Vec<(&str, &str, String, &str)> = vec![
        // Adding VMs: the count alone past the limit, a sum that would wrap u32, zero.
        (
            "POST",
            "/api/classes/c1/vms",
            json!({"count": u32::MAX}).to_string(),
            "count 4294967295 is more than the class limit 500",
        ),
        (
            "POST",
            "/api/classes/c1/vms",
            json!({"count": u32::MAX - 2}).to_string(),
            "count 4294967293 is more than the class limit 500",
        ),
        (
            "POST",
            "/api/classes/c1/vms",
            json!({"count": 498}).to_string(),
            "count 498 would make 501 student VMs, more than the class limit 500",
        ),
        ("POST", "/api/classes/c1/vms", json!({"count": 0}).to_string(), "count must be at least 1"),
        // Beyond u32 altogether: the body does not parse.
        ("POST", "/api/classes/c1/vms", r#"{"count": 4294967296}"#.into(), "invalid JSON body"),
        // Resizing, together with a rename that must not be stored either.
        (
            "PUT",
            "/api/classes/c1",
            json!({"name": "renamed", "pool_size": u32::MAX}).to_string(),
            "pool size 4294967295 is more than the class limit 500",
        ),
        (
            "PUT",
            "/api/classes/c1",
            json!({"name": "renamed", "specs": {"memory_mib": u64::MAX}}).to_string(),
            "memory_mib 18446744073709551615 is outside",
        ),
        // Creating a class (by template name: registering it would write).
        (
            "POST",
            "/api/classes",
            json!({"name": "Huge", "template": "tpl-ubuntu-24.04", "pool_size": u32::MAX}).to_string(),
            "pool size 4294967295 is more than the class limit 500",
        ),
        (
            "POST",
            "/api/classes",
            json!({"name": "Huge", "template": "tpl-ubuntu-24.04", "pool_size": 2, "specs": {"cores": u32::MAX}})
                .to_string(),
            "cores 4294967295 is outside 1..=1024",
        ),
        // Invite lifetimes: u64::MAX seconds, and one second more than a year.
        (
            "POST",
            "/api/classes/c1/invite",
            json!({"expires_in_secs": u64::MAX}).to_string(),
            "expires_in_secs 18446744073709551615 is more than one year (31536000 s)",
        ),
        (
            "POST",
            "/api/classes/c1/invite",
            json!({"expires_in_secs": 365 * 24 * 3600 + 1}).to_string(),
            "expires_in_secs 31536001 is more than one year (31536000 s)",
        ),
    ];
    for (method, path, body, want) in &cases {
        let (st, v) = w.call("teach", method, path, body).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{method} {path} {body}: {v}");
        assert!(
            message(&v).contains(want),
            "{method} {path} {body}: want {want:?} in {v}"
        );
        assert_eq!(
            w.stored(),
            before,
            "{method} {path} {body}: nothing stored changes"
        );
    }

    // At the edges it works: exactly a year is a valid invite lifetime.
    let (st, v) = w
        .call(
            "teach",
            "POST",
            "/api/classes/c1/invite",
            &json!({"expires_in_secs": 365 * 24 * 3600}).to_string(),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let at = v["expires_at"].as_u64().unwrap();
    assert!(at.abs_diff(now + 365 * 24 * 3600) < 60, "{at} vs {now}");
}
