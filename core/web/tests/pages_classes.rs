//! The teacher's class pages (`/classes`, `/classes/{id}`) against a real deployer: the fake cluster,
//! real qemu-img on the fake's labnfs folder through the local executor, sessions of the matrix users
//! (`teach` owns the class, `co` co-owns it, `teach2` is another teacher, `stud` a student).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cloner::LocalExecutor;
use deploy::Deployer;
use serde_json::{Value, json};
use support::{Fixture, fixture};
use tower::ServiceExt;
use web::auth::AuthConfig;

struct Web {
    fx: Fixture,
    app: axum::Router,
    deployer: Deployer,
}

async fn web() -> Web {
    let fx = fixture(AuthConfig::default()).await;
    let exec: Arc<dyn cloner::Executor> = Arc::new(LocalExecutor::new(Duration::from_secs(60)));
    let d = support::deployer(&fx, exec, 3700, 3799).await;
    support::open_template(&d, 9000).await;
    let app = web::app(fx.state.clone().with_deployer(d.clone()));
    Web { fx, app, deployer: d }
}

impl Web {
    async fn call(&self, who: &str, method: &str, path: &str, body: Option<Value>) -> (StatusCode, String) {
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
        let resp = tokio::time::timeout(Duration::from_secs(120), self.app.clone().oneshot(req))
            .await
            .unwrap()
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_pages_show_owner_and_co_owner_every_vm_and_hide_the_class_from_others() {
    let w = web().await;
    let body = json!({"name": "Pages class", "template_vmid": 9000, "pool_size": 2, "node": "pve2"});
    let (st, text) = w.call("teach", "POST", "/api/classes", Some(body)).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let id = v["class"]["id"].as_str().unwrap().to_string();
    let job = v["job"]["id"].as_str().unwrap().to_string();
    let j = w.deployer.wait_job(&job, Duration::from_secs(120)).await.unwrap();
    assert_eq!(j.state, store::JobState::Done, "{j:?}");
    let (st, text) = w
        .call(
            "teach",
            "POST",
            &format!("/api/classes/{id}/co-owners"),
            Some(json!({"user": "co"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{text}");
    let (st, _) = w
        .call(
            "teach",
            "POST",
            &format!("/api/classes/{id}/invite"),
            Some(json!({})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);

    let vms = w.deployer.class_vm_views(&id).unwrap();
    assert_eq!(vms.len(), 4, "teacher, base, two students");
    for who in ["teach", "co", "root"] {
        // The list names the class and links to its page; the nav offers Classes.
        let (st, html) = w.call(who, "GET", "/classes", None).await;
        assert_eq!(st, StatusCode::OK, "{who}: {html}");
        assert!(html.contains(&format!("href=\"/classes/{id}\"")), "{who}: {html}");
        assert!(html.contains("Pages class"), "{who}");
        assert!(html.contains("id=\"new-class\""), "{who}");
        assert!(html.contains(">Classes</a>"), "{who}: nav link");

        let (st, html) = w.call(who, "GET", &format!("/classes/{id}"), None).await;
        assert_eq!(st, StatusCode::OK, "{who}: {html}");
        assert!(html.contains(&format!("data-class=\"{id}\"")), "{who}: {html}");
        for vm in &vms {
            assert!(
                html.contains(&format!("data-key=\"lab&#x2f;{}\"", vm.vmid)),
                "{who}: row of {} ({:?})",
                vm.vmid,
                vm.role
            );
            assert!(html.contains(&vm.name), "{who}: name {}", vm.name);
        }
        assert!(html.contains("data-action=\"invite\""), "{who}");
        assert!(html.contains("data-action=\"publish\""), "{who}");
        assert!(
            html.contains("data-invite=\"inv-"),
            "{who}: the invite can be revoked"
        );
        assert!(
            html.contains(&job),
            "{who}: the deploy job {job} is listed: {html}"
        );
        assert!(!html.contains("<script>"), "{who}: no inline script");
        // Only the owner and admins may delete.
        assert_eq!(html.contains("data-action=\"delete\""), who != "co", "{who}");
    }
    // The other teacher does not see it in the list, and its page is a 404 for them and for students.
    let (_, html) = w.call("teach2", "GET", "/classes", None).await;
    assert!(!html.contains(&id), "{html}");
    for who in ["teach2", "stud", "stud2"] {
        let (st, html) = w.call(who, "GET", &format!("/classes/{id}"), None).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{who}");
        assert!(
            !html.contains("Pages class"),
            "{who}: nothing of the class is shown"
        );
    }
    let (st, _) = w.call("stud", "GET", "/classes", None).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = w.call("teach", "GET", "/classes/no-such-class", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}
