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
    support::open_template(&d, 9000).await;
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
    // The teacher starts the teacher VM (made moments ago, before any sync tick) and stops it again.
    for action in ["start", "stop"] {
        let (st, _, v) = w
            .call(
                "teach",
                "POST",
                &format!("/api/classes/{id}/teacher/{action}"),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{action}: {v}");
        assert_eq!(v["vm"]["role"], "teacher", "{v}");
        assert_eq!(v["action"], action);
    }
    assert_eq!(
        w.call(
            "teach2",
            "POST",
            &format!("/api/classes/{id}/teacher/start"),
            None
        )
        .await
        .0,
        StatusCode::NOT_FOUND,
        "another teacher cannot power this class's teacher VM"
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
    let (st, loc, _) = w.call("stud", "POST", &format!("/join/{token}"), None).await;
    assert_eq!(
        (st, loc.as_str()),
        (StatusCode::SEE_OTHER, format!("/portal?joined={id}").as_str())
    );
    let (st, _, c) = w.call("stud", "GET", &format!("/api/classes/{id}"), None).await;
    assert_eq!(st, StatusCode::OK, "{c}");
    assert_eq!(c["vms"].as_array().unwrap().len(), 1, "{c}");
    assert_eq!(c["vms"][0]["user"], "stud");
    assert!(c["class"].get("plan").is_none());
    // A student's list of classes carries the public view only, nothing of the deployment.
    let (st, _, list) = w.call("stud", "GET", "/api/classes", None).await;
    assert_eq!(st, StatusCode::OK, "{list}");
    let mine = &list["classes"][0];
    let mut keys: Vec<&str> = mine.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        ["cluster", "description", "id", "name", "owner", "state"],
        "{mine}"
    );
    let mut keys: Vec<&str> = c["class"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        ["cluster", "description", "id", "name", "owner", "state"],
        "{c}"
    );
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
    let (st, loc, _) = w.call("stud2", "POST", "/join/not-a-real-token", None).await;
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

/// A signed-in GET of a page; returns (status, headers, body text).
async fn get_page(w: &Web, path: &str, cookie: &str) -> (StatusCode, axum::http::HeaderMap, String) {
    use tower::ServiceExt;
    let mut req = Request::get(path)
        .header("cookie", cookie)
        .body(Body::empty())
        .unwrap();
    req.extensions_mut().insert(axum::extract::ConnectInfo(
        "127.0.0.1:40003".parse::<std::net::SocketAddr>().unwrap(),
    ));
    let resp = w.app.clone().oneshot(req).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let b = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, headers, String::from_utf8_lossy(&b).into_owned())
}

/// A form post (`application/x-www-form-urlencoded`, as the join page's form sends it) with `cookie`
/// and an optional `Origin`; returns (status, location, body).
async fn post_form(
    w: &Web,
    path: &str,
    cookie: &str,
    form: &str,
    origin: Option<&str>,
) -> (StatusCode, String, String) {
    use tower::ServiceExt;
    let mut b = Request::post(path)
        .header("cookie", cookie)
        .header("content-type", "application/x-www-form-urlencoded");
    if let Some(o) = origin {
        b = b.header("origin", o);
    }
    let mut req = b.body(Body::from(form.to_string())).unwrap();
    req.extensions_mut().insert(axum::extract::ConnectInfo(
        "127.0.0.1:40002".parse::<std::net::SocketAddr>().unwrap(),
    ));
    let resp = w.app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let location = resp
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, location, String::from_utf8_lossy(&bytes).into_owned())
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
    let csrf = v["csrf_token"].as_str().unwrap();
    let (st, _, html) = get_page(&w, &format!("/join/{open_token}"), &cookie).await;
    assert_eq!(st, StatusCode::OK, "the invite link opens the join page");
    assert!(html.contains("Join Open class"), "{html}");
    let (st, loc, _) = post_form(
        &w,
        &format!("/join/{open_token}"),
        &cookie,
        &format!("_csrf={csrf}"),
        None,
    )
    .await;
    assert_eq!(
        (st, loc),
        (StatusCode::SEE_OTHER, format!("/portal?joined={open_id}"))
    );
    // The audit log names the invite by its public id and holds no part of its token.
    let audit = w.fx.store.audit_recent(500).unwrap();
    let reg = audit.iter().find(|a| a.action == "user.register").unwrap();
    assert!(reg.target.starts_with("inv-"), "{reg:?}");
    let join = audit.iter().find(|a| a.action == "class.join").unwrap();
    assert!(join.target.contains(reg.target.as_str()), "{join:?}");
    for a in &audit {
        let all = format!("{} {} {}", a.user, a.target, a.result);
        for t in [open_token.as_str(), closed_token.as_str()] {
            for part in t.as_bytes().windows(8) {
                let part = std::str::from_utf8(part).unwrap();
                assert!(
                    !all.contains(part),
                    "part of an invite token in the audit log: {a:?}"
                );
            }
        }
    }
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

/// The attack: a hostile page makes a signed-in student's browser open an invite link (an `<img>`, a
/// link preview, a prefetch) or post to it without the page's CSRF token. Opening the link only shows
/// the class and a "Join" button; a post without the session's CSRF token (or from another origin) is
/// refused and joins no one; the page's own form post joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_an_invite_link_joins_no_one_and_joining_needs_the_pages_csrf_token() {
    let w = web_in(3800, 3849).await;
    let body = json!({"name": "Confirm class", "template_vmid": 9000, "pool_size": 1, "node": "pve3"});
    let (st, _, v) = w.call("teach", "POST", "/api/classes", Some(body)).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    let id = v["class"]["id"].as_str().unwrap().to_string();
    let job = v["job"]["id"].as_str().unwrap().to_string();
    w.call("teach", "GET", &format!("/api/jobs/{job}/events"), None)
        .await;
    // The invite link is a secret: its answer is never cached.
    let (teach_cookie, teach_csrf) = w.fx.session("teach");
    let inv = {
        use tower::ServiceExt;
        let mut req = Request::post(format!("/api/classes/{id}/invite"))
            .header("cookie", &teach_cookie)
            .header("x-csrf-token", &teach_csrf)
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap();
        req.extensions_mut().insert(axum::extract::ConnectInfo(
            "127.0.0.1:40004".parse::<std::net::SocketAddr>().unwrap(),
        ));
        let resp = w.app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(resp.headers().get("cache-control").unwrap(), "no-store");
        let b = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        json_of(&b)
    };
    let token = inv["token"].as_str().unwrap().to_string();
    let path = format!("/join/{token}");
    let joined = |w: &Web| {
        w.fx.store
            .assignments_all()
            .unwrap()
            .into_iter()
            .any(|a| a.user == "stud2" && a.class_id.as_deref() == Some(id.as_str()))
    };

    // GET (what an <img>, a preview bot or a prefetch does): the confirm page, nothing changed.
    let (cookie, csrf) = w.fx.session("stud2");
    let (st, headers, html) = get_page(&w, &path, &cookie).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(headers.get("cache-control").unwrap(), "no-store");
    assert!(html.contains("Join Confirm class"), "{html}");
    // (MiniJinja's HTML escaping writes `/` as `&#x2f;` in attributes.)
    let action = path.replace('/', "&#x2f;");
    assert!(html.contains(&format!(r#"action="{action}""#)), "{html}");
    assert!(
        html.contains(&format!(r#"name="_csrf" value="{csrf}""#)),
        "{html}"
    );
    assert!(!joined(&w), "opening the link must not join");
    let (_, _, c) = w.call("teach", "GET", &format!("/api/classes/{id}"), None).await;
    assert_eq!(c["invites"][0]["uses"], 0, "{c}");

    // POST without the CSRF token, with a wrong one, or from another site: refused, nothing changed.
    for (form, origin) in [
        (String::new(), None),
        ("_csrf=forged".to_string(), None),
        (format!("_csrf={csrf}"), Some("http://evil.example.net")),
    ] {
        let (st, loc, body) = post_form(&w, &path, &cookie, &form, origin).await;
        assert_eq!(st, StatusCode::FORBIDDEN, "{form} {origin:?}: {loc} {body}");
        assert!(body.contains("csrf"), "{body}");
        assert!(!joined(&w), "a refused post must not join");
    }

    // The join page's own form: joined.
    let (st, loc, body) = post_form(&w, &path, &cookie, &format!("_csrf={csrf}"), None).await;
    assert_eq!(
        (st, loc.as_str()),
        (StatusCode::SEE_OTHER, format!("/portal?joined={id}").as_str()),
        "{body}"
    );
    assert!(joined(&w));
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
