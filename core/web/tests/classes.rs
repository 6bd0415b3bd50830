//! Class, invite, template and job routes against a real deployer: the fake cluster, a loopback sshd
//! playing the nodes (real qemu-img on the fake's labnfs folder), sessions of the matrix users.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cloner::{HostKeyPolicy, NodeAccess, SshExecutor};
use serde_json::{Value, json};
use support::{Fixture, fixture, json_of};
use testkit::NodeSshd;
use web::auth::AuthConfig;

struct Web {
    fx: Fixture,
    app: axum::Router,
    _sshd: NodeSshd,
}

async fn web() -> Web {
    web_in(3600, 3649).await
}

/// A fixture whose deployer uses VMIDs `lo..=hi` (tests in this binary run in parallel on one fake
/// cluster, so each gets its own range).
async fn web_in(lo: u32, hi: u32) -> Web {
    let fx = fixture(AuthConfig::default()).await;
    let sshd = tokio::task::spawn_blocking(|| NodeSshd::start().unwrap())
        .await
        .unwrap();
    let mut access = NodeAccess::new(
        &sshd.host,
        &sshd.user,
        &sshd.private_key,
        HostKeyPolicy::Fingerprint(sshd.host_key_sha256.clone()),
    );
    access.port = sshd.port;
    let exec: Arc<dyn cloner::Executor> = Arc::new(SshExecutor::new(access).unwrap());
    let d = support::deployer(&fx, exec, lo, hi).await;
    let app = web::app(fx.state.clone().with_deployer(d));
    Web { fx, app, _sshd: sshd }
}

impl Web {
    async fn call(
        &self,
        who: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, String, Value) {
        use tower::ServiceExt;
        let (cookie, csrf) = self.fx.session(who);
        let req = Request::builder()
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
        let mut req = req;
        req.extensions_mut().insert(axum::extract::ConnectInfo(
            "127.0.0.1:40000".parse::<std::net::SocketAddr>().unwrap(),
        ));
        let resp = tokio::time::timeout(Duration::from_secs(120), self.app.clone().oneshot(req))
            .await
            .unwrap()
            .unwrap();
        let status = resp.status();
        let location = resp
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let bytes = tokio::time::timeout(
            Duration::from_secs(120),
            axum::body::to_bytes(resp.into_body(), 64 << 20),
        )
        .await
        .unwrap()
        .unwrap();
        if ctype.starts_with("text/event-stream") {
            return (status, String::from_utf8_lossy(&bytes).into_owned(), Value::Null);
        }
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            json_of(&bytes)
        };
        (status, location, v)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teacher_creates_a_class_follows_its_job_students_join_by_link_and_only_the_owner_deletes_it() {
    let w = web().await;
    // Students may not create classes; teachers may.
    let body = json!({"name": "Web class", "template_vmid": 9000, "pool_size": 2, "node": "pve3"});
    assert_eq!(
        w.call("stud", "POST", "/api/classes", Some(body.clone())).await.0,
        StatusCode::FORBIDDEN
    );
    let (st, _, v) = w.call("teach", "POST", "/api/classes", Some(body)).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    let id = v["class"]["id"].as_str().unwrap().to_string();
    let job = v["job"]["id"].as_str().unwrap().to_string();
    assert!(v["class"].get("invite_hash").is_none());

    // The job's SSE stream: a snapshot, then steps and progress, and it ends when the job ends.
    let (st, text, _) = w
        .call("teach", "GET", &format!("/api/jobs/{job}/events"), None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert!(text.starts_with("event: snapshot"), "{text}");
    assert!(text.contains("event: job"), "{text}");
    let (_, _, j) = w.call("teach", "GET", &format!("/api/jobs/{job}"), None).await;
    assert_eq!(j["state"], "done", "{j}");
    assert_eq!(j["progress"]["total"], 4);
    assert!(j.get("params").is_none());
    // Others do not see the job.
    assert_eq!(
        w.call("teach2", "GET", &format!("/api/jobs/{job}"), None).await.0,
        StatusCode::NOT_FOUND
    );

    // An invite link; a student joins with it and then sees the class with only their own VM.
    let (st, _, inv) = w
        .call(
            "teach",
            "POST",
            &format!("/api/classes/{id}/invite"),
            Some(json!({})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{inv}");
    let token = inv["token"].as_str().unwrap();
    assert!(token.len() >= 43, "256-bit token");
    let (st, loc, _) = w.call("stud", "GET", &format!("/join/{token}"), None).await;
    assert_eq!(
        (st, loc.as_str()),
        (StatusCode::SEE_OTHER, format!("/portal?joined={id}").as_str())
    );
    let (st, _, c) = w.call("stud", "GET", &format!("/api/classes/{id}"), None).await;
    assert_eq!(st, StatusCode::OK, "{c}");
    assert_eq!(c["vms"].as_array().unwrap().len(), 1, "{c}");
    assert_eq!(c["vms"][0]["user"], "stud");
    assert!(c["class"].get("plan").is_none());
    assert_eq!(
        w.call("stud2", "GET", &format!("/api/classes/{id}"), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let (_, _, c) = w.call("teach", "GET", &format!("/api/classes/{id}"), None).await;
    assert_eq!(
        c["vms"].as_array().unwrap().len(),
        4,
        "base, teacher, two students"
    );
    // The class base is never started, by its teacher or an admin: every overlay reads its disk.
    let base = c["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["role"] == "base")
        .unwrap()["vmid"]
        .as_u64()
        .unwrap();
    for who in ["teach", "root"] {
        let (st, _, v) = w
            .call(who, "POST", &format!("/api/vm/{base}/start?cluster=lab"), None)
            .await;
        assert_eq!(st, StatusCode::CONFLICT, "{who}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("base image"),
            "{v}"
        );
    }
    assert_eq!(c["invites"].as_array().unwrap().len(), 1);
    let (st, loc, _) = w.call("stud2", "GET", "/join/not-a-real-token", None).await;
    assert_eq!(
        (st, loc.as_str()),
        (StatusCode::SEE_OTHER, "/portal?join=invalid")
    );

    // The teacher assigns the last VM; the class is then full.
    let (st, _, a) = w
        .call(
            "teach",
            "POST",
            &format!("/api/class/{id}/assign"),
            Some(json!({"user": "stud2"})),
        )
        .await;
    assert_eq!(
        (st, a["outcome"].as_str()),
        (StatusCode::OK, Some("assigned")),
        "{a}"
    );
    let (st, _, full) = w
        .call(
            "teach",
            "POST",
            &format!("/api/class/{id}/assign"),
            Some(json!({"user": "teach2"})),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert_eq!(full["error"]["code"], "class_full");
    assert_eq!(full["error"]["waiting_position"], 1);

    // Templates for teachers; publishing "now" needs the confirmation.
    let (st, _, t) = w.call("teach", "GET", "/api/templates", None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        t["templates"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["vmid"] == 9000)
    );
    let (st, _, e) = w
        .call(
            "teach",
            "POST",
            &format!("/api/classes/{id}/publish-template"),
            Some(json!({"mode": "now"})),
        )
        .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::PRECONDITION_REQUIRED, Some("confirmation_required"))
    );

    // Co-owners manage; only the owner deletes, with the confirmation.
    let (st, _, co) = w
        .call(
            "teach",
            "POST",
            &format!("/api/classes/{id}/co-owners"),
            Some(json!({"user": "co"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{co}");
    let (st, _, e) = w
        .call("co", "DELETE", &format!("/api/classes/{id}?confirm={id}"), None)
        .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("not_owner"))
    );
    let (st, _, e) = w
        .call("teach", "DELETE", &format!("/api/classes/{id}"), None)
        .await;
    assert_eq!(
        (st, e["error"]["code"].as_str()),
        (StatusCode::PRECONDITION_REQUIRED, Some("confirmation_required"))
    );
    let (st, _, d) = w
        .call(
            "teach",
            "DELETE",
            &format!("/api/classes/{id}?confirm={id}"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{d}");
    let del = d["job"]["id"].as_str().unwrap();
    let (_, text, _) = w
        .call("teach", "GET", &format!("/api/jobs/{del}/events"), None)
        .await;
    assert!(text.contains("\"state\":\"done\""), "{text}");
    let (st, _, _) = w.call("teach", "GET", &format!("/api/classes/{id}"), None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

/// An anonymous request through the real router; returns (status, location, set-cookie, body).
async fn anonymous(
    w: &Web,
    method: &str,
    path: &str,
    body: Option<Value>,
    cookie: Option<&str>,
) -> (StatusCode, String, String, Value) {
    use tower::ServiceExt;
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(c) = cookie {
        b = b.header("cookie", c);
    }
    let mut req = b
        .body(
            body.map(|b| Body::from(b.to_string()))
                .unwrap_or_else(Body::empty),
        )
        .unwrap();
    req.extensions_mut().insert(axum::extract::ConnectInfo(
        "127.0.0.1:40001".parse::<std::net::SocketAddr>().unwrap(),
    ));
    let resp = w.app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let (loc, set_cookie) = (header("location"), header("set-cookie"));
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        json_of(&bytes)
    };
    (status, loc, set_cookie, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_student_registers_from_an_invite_only_when_the_class_allows_it_and_gets_a_vm() {
    let w = web_in(3650, 3699).await;
    let mut ids = Vec::new();
    for (name, open) in [("Open class", true), ("Closed class", false)] {
        let body = json!({"name": name, "template_vmid": 9000, "pool_size": 1, "node": "pve3", "self_registration": open});
        let (st, _, v) = w.call("teach", "POST", "/api/classes", Some(body)).await;
        assert_eq!(st, StatusCode::ACCEPTED, "{v}");
        let id = v["class"]["id"].as_str().unwrap().to_string();
        let job = v["job"]["id"].as_str().unwrap().to_string();
        w.call("teach", "GET", &format!("/api/jobs/{job}/events"), None)
            .await;
        let (st, _, inv) = w
            .call(
                "teach",
                "POST",
                &format!("/api/classes/{id}/invite"),
                Some(json!({})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{inv}");
        ids.push((id, inv["token"].as_str().unwrap().to_string()));
    }
    let (open_id, open_token) = &ids[0];
    let (_, closed_token) = &ids[1];

    // The closed class's link creates no account.
    let (st, _, _, v) = anonymous(
        &w,
        "POST",
        "/register",
        Some(json!({"username": "walkin", "password": "walkin-pass-1", "invite": closed_token})),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["error"]["code"], "registration_closed");
    assert!(w.fx.store.user("walkin").unwrap().is_none());

    // Bad input is refused before anything is stored.
    let (st, _, _, _) = anonymous(
        &w,
        "POST",
        "/register",
        Some(json!({"username": "walk@in", "password": "walkin-pass-1", "invite": open_token})),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // The open class's link: an account (a student), signed in, sent on to join.
    let (st, _, cookie, v) = anonymous(
        &w,
        "POST",
        "/register",
        Some(json!({"username": "WalkIn", "password": "walkin-pass-1", "display_name": "Wälk In", "invite": open_token})),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["user"], "walkin");
    assert_eq!(v["next"], format!("/join/{open_token}"));
    let user = w.fx.store.user("walkin").unwrap().unwrap();
    assert_eq!(user.role, store::Role::Student);
    assert_eq!(user.display_name, "Wälk In");
    let cookie = cookie.split(';').next().unwrap().to_string();
    let (st, loc, _, _) = anonymous(&w, "GET", &format!("/join/{open_token}"), None, Some(&cookie)).await;
    assert_eq!(
        (st, loc),
        (StatusCode::SEE_OTHER, format!("/portal?joined={open_id}"))
    );
    // The name is now taken.
    let (st, _, _, _) = anonymous(
        &w,
        "POST",
        "/register",
        Some(json!({"username": "walkin", "password": "walkin-pass-2", "invite": open_token})),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_removing_a_class_vms_assignment_unassigns_the_student_and_the_vm_is_reset_before_anyone_gets_it()
 {
    let w = web_in(3900, 3919).await;
    let body = json!({"name": "Admin leave", "template_vmid": 9000, "pool_size": 1, "node": "pve2"});
    let (st, _, v) = w.call("teach", "POST", "/api/classes", Some(body)).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    let id = v["class"]["id"].as_str().unwrap().to_string();
    let job = v["job"]["id"].as_str().unwrap().to_string();
    w.call("teach", "GET", &format!("/api/jobs/{job}/events"), None)
        .await;
    let (st, _, a) = w
        .call(
            "teach",
            "POST",
            &format!("/api/class/{id}/assign"),
            Some(json!({"user": "stud"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{a}");
    let aid = a["assignment"]["id"].as_str().unwrap().to_string();

    // The admin removes it in the assignments list: the student is unassigned, the VM reset.
    let (st, _, d) = w
        .call("root", "DELETE", &format!("/api/user-vm-assignments/{aid}"), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{d}");
    let reset = d["reset_job"].as_str().expect("a reset job").to_string();
    let (st, _, full) = w
        .call(
            "teach",
            "POST",
            &format!("/api/class/{id}/assign"),
            Some(json!({"user": "stud2"})),
        )
        .await;
    assert_eq!(
        (st, full["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("class_full")),
        "nobody gets the VM while it is reset: {full}"
    );
    w.call("teach", "GET", &format!("/api/jobs/{reset}/events"), None)
        .await;
    let (_, _, j) = w.call("teach", "GET", &format!("/api/jobs/{reset}"), None).await;
    assert_eq!(
        (j["kind"].as_str(), j["state"].as_str()),
        (Some("reset"), Some("done")),
        "{j}"
    );
    let (_, _, c) = w.call("teach", "GET", &format!("/api/classes/{id}"), None).await;
    let student = c["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["role"] == "student")
        .unwrap()
        .clone();
    assert_eq!(
        student["user"], "stud2",
        "the waiting student got the reset VM: {c}"
    );
}
