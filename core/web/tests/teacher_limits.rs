//! Per-teacher limits on classes and VMs through the whole router (`web::app` + `oneshot`) against a
//! real deployer over the fake cluster: the configured defaults apply until an admin sets a teacher's
//! own; creating a class or adding VMs past a limit is refused with 409 naming the usage, also when
//! requests race for the last place; the create page tells the teacher what they use.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use support::{Fixture, call_json, fixture, message_of};
use web::auth::AuthConfig;

struct Web {
    fx: Fixture,
    app: axum::Router,
    deployer: deploy::Deployer,
}

/// Tests of this binary run in parallel on one fake cluster: each gets its own VMID range.
async fn web(lo: u32, hi: u32, classes: u32, vms: u32) -> Web {
    let fx = fixture(AuthConfig::default()).await;
    let exec: Arc<dyn cloner::Executor> = Arc::new(cloner::LocalExecutor::new(Duration::from_secs(60)));
    let deployer = support::deployer_with(&fx, exec, lo, hi, |l| {
        l.classes_per_teacher = classes;
        l.vms_per_teacher = vms;
    })
    .await;
    support::open_template(&deployer, 9000).await;
    let app = web::app(fx.state.clone().with_deployer(deployer.clone()));
    Web { fx, app, deployer }
}

impl Web {
    async fn call(&self, who: &str, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        call_json(&self.fx, &self.app, who, method, path, body).await
    }

    /// Creates a class of `pool` students as `who` and waits for its deployment: its id.
    async fn deployed(&self, who: &str, name: &str, pool: u32) -> String {
        let (st, v) = self
            .call(who, "POST", "/api/classes", Some(body(name, pool)))
            .await;
        assert_eq!(st, StatusCode::ACCEPTED, "{v}");
        let j = self
            .deployer
            .wait_job(v["job"]["id"].as_str().unwrap(), Duration::from_secs(180))
            .await
            .unwrap();
        assert_eq!(j.state, store::JobState::Done, "{j:?}");
        v["class"]["id"].as_str().unwrap().to_string()
    }

    async fn page(&self, who: &str) -> String {
        use tower::ServiceExt;
        let (cookie, _) = self.fx.session(who);
        let mut req = Request::builder()
            .uri("/classes")
            .header("cookie", cookie)
            .body(Body::empty())
            .unwrap();
        req.extensions_mut().insert(axum::extract::ConnectInfo(
            "127.0.0.1:40000".parse::<std::net::SocketAddr>().unwrap(),
        ));
        let resp = self.app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 22).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn owned(&self, who: &str) -> usize {
        self.fx
            .store
            .classes
            .values()
            .unwrap()
            .iter()
            .filter(|c| c.owner == who)
            .count()
    }

    async fn delete_all(&self, who: &str) {
        for c in self.fx.store.classes.values().unwrap() {
            // The fixture's own classes (c1, c2) were never deployed.
            if c.owner == who && c.id != "c1" && c.id != "c2" {
                let id = c.id;
                let (st, v) = self
                    .call(who, "DELETE", &format!("/api/classes/{id}?confirm={id}"), None)
                    .await;
                assert_eq!(st, StatusCode::ACCEPTED, "{v}");
                let j = self
                    .deployer
                    .wait_job(v["job"]["id"].as_str().unwrap(), Duration::from_secs(180))
                    .await
                    .unwrap();
                assert_eq!(j.state, store::JobState::Done, "{j:?}");
            }
        }
    }
}

fn body(name: &str, pool: u32) -> Value {
    json!({"name": name, "template_vmid": 9000, "pool_size": pool, "node": "pve1"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_class_limit_refuses_one_class_too_many_and_the_page_shows_the_usage() {
    // Defaults from the config: 3 classes, 100 VMs per teacher. teach owns the fixture's class c1
    // (no students: its teacher VM and class base).
    let w = web(5800, 5819, 3, 100).await;
    assert!(
        w.page("teach")
            .await
            .contains("You use 1 of 3 classes and 2 of 100 VMs")
    );
    w.deployed("teach", "First", 0).await;
    w.deployed("teach", "Second", 1).await;
    assert!(
        w.page("teach")
            .await
            .contains("You use 3 of 3 classes and 7 of 100 VMs")
    );
    let (st, v) = w
        .call("teach", "POST", "/api/classes", Some(body("Third", 0)))
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "limit_reached");
    assert!(message_of(&v).contains("teach uses 3 of 3 classes"), "{v}");
    assert_eq!(w.owned("teach"), 3);
    // Another teacher has their own count; admins have no limits (and no usage line).
    w.deployed("teach2", "Other", 0).await;
    assert!(!w.page("root").await.contains("You use"));
    // Only admins raise a limit; then the third class fits.
    let (st, _) = w
        .call(
            "teach",
            "PUT",
            "/api/teachers/teach/limits",
            Some(json!({"classes": 4})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, v) = w
        .call(
            "root",
            "PUT",
            "/api/teachers/stud/limits",
            Some(json!({"classes": 3})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (st, v) = w
        .call(
            "root",
            "PUT",
            "/api/teachers/teach/limits",
            Some(json!({"classes": 4})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        (v["classes"].as_u64(), v["classes_limit"].as_u64()),
        (Some(3), Some(4))
    );
    w.deployed("teach", "Third", 0).await;
    let audited = w.fx.store.audit_recent(1000).unwrap();
    assert!(
        audited
            .iter()
            .any(|a| a.action == "teacher.limits" && a.target == "teach" && a.result.starts_with("ok"))
    );
    w.delete_all("teach").await;
    w.delete_all("teach2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vm_limit_refuses_a_class_or_more_vms_past_it_even_when_requests_race() {
    let w = web(5820, 5849, 10, 100).await;
    // The admin gives teach 8 VMs; c1 of the fixture holds 2. A class of 2 students holds 4 (its
    // teacher VM and class base too).
    let (st, v) = w
        .call(
            "root",
            "PUT",
            "/api/teachers/teach/limits",
            Some(json!({"vms": 8})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v) = w
        .call("teach", "POST", "/api/classes", Some(body("Too big", 5)))
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert!(
        message_of(&v).contains("this needs 7 more VMs, and teach uses 2 of 8 VMs"),
        "{v}"
    );
    let id = w.deployed("teach", "Fits", 2).await;
    // More VMs: 3 would make 9; 2 fit.
    let (st, v) = w
        .call(
            "teach",
            "POST",
            &format!("/api/classes/{id}/vms"),
            Some(json!({"count": 3})),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert!(message_of(&v).contains("teach uses 6 of 8 VMs"), "{v}");
    let (st, v) = w
        .call(
            "teach",
            "PUT",
            &format!("/api/classes/{id}"),
            Some(json!({"pool_size": 5})),
        )
        .await;
    assert_eq!(
        st,
        StatusCode::CONFLICT,
        "a larger pool size is more VMs too: {v}"
    );
    assert_eq!(w.fx.store.classes.get(&id).unwrap().unwrap().pool_size, 2);
    assert!(
        w.deployer.reservations(None).unwrap().len() <= 4,
        "refused VMs hold no VMID"
    );

    // Two requests race for the last 2 VMs: exactly one gets them.
    let path = format!("/api/classes/{id}/vms");
    let (a, b) = tokio::join!(
        w.call("teach", "POST", &path, Some(json!({"count": 2}))),
        w.call("teach", "POST", &path, Some(json!({"count": 2}))),
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::ACCEPTED, StatusCode::CONFLICT],
        "{a:?} {b:?}"
    );
    for (st, v) in [a, b] {
        if st == StatusCode::ACCEPTED {
            let j = w
                .deployer
                .wait_job(v["job"]["id"].as_str().unwrap(), Duration::from_secs(180))
                .await
                .unwrap();
            assert_eq!(j.state, store::JobState::Done, "{j:?}");
        }
    }
    assert_eq!(w.fx.store.classes.get(&id).unwrap().unwrap().pool_size, 4);
    // Two class creations race for the last class place.
    let (st, v) = w
        .call(
            "root",
            "PUT",
            "/api/teachers/teach/limits",
            Some(json!({"classes": 3, "vms": 100})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (a, b) = tokio::join!(
        w.call("teach", "POST", "/api/classes", Some(body("Race A", 0))),
        w.call("teach", "POST", "/api/classes", Some(body("Race B", 0))),
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::ACCEPTED, StatusCode::CONFLICT],
        "{a:?} {b:?}"
    );
    for (st, v) in [a, b] {
        if st == StatusCode::ACCEPTED {
            w.deployer
                .wait_job(v["job"]["id"].as_str().unwrap(), Duration::from_secs(180))
                .await
                .unwrap();
        }
    }
    assert_eq!(w.owned("teach"), 3);
    w.delete_all("teach").await;
}
