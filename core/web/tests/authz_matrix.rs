//! The authorization matrix (issue 4): every route of the real router × every kind of caller → the
//! expected status. The matrix is data: a route without rows, or rows for a route the router does not
//! have, fails `matrix_covers_every_route`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod support;

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::json;
use support::{Fixture, OWN_VM, fixture};
use web::auth::{Access, AuthConfig, HttpMethod, RouteKind};

/// The callers, in the column order of [`MATRIX`].
const WHO: [&str; 9] = [
    "anonymous",
    "student",
    "other student",
    "teacher",
    "co-owner",
    "other teacher",
    "admin",
    "bearer token",
    "revoked token",
];

/// One row: method, path template, kind, expected status per caller (in [`WHO`] order).
///
/// VM paths use the student's own VM ([`OWN_VM`], in class c1 of `teach`, co-owned by `co`): the other
/// student and the other teacher must get 404 (not 403), so a VM's existence is not revealed. The bearer
/// token belongs to the student. `/login` answers 401 for everyone because the row posts a wrong password.
/// Admin-only rows give 403 to signed-in non-admins. Pages redirect anonymous callers to `/login` (303).
#[rustfmt::skip]
const MATRIX: &[(&str, &str, RouteKind, [u16; 9])] = {
    use RouteKind::*;
    //                                                     anon stud stud2 teach co   teach2 admin bearer revoked
    &[
        ("GET",    "/health",                        Json, [200, 200, 200, 200, 200, 200, 200, 200, 200]),
        ("GET",    "/metrics",                       Text, [401, 403, 403, 403, 403, 403, 200, 403, 401]),
        ("GET",    "/api/events",                    Sse,  [401, 200, 200, 200, 200, 200, 200, 200, 401]),
        ("POST",   "/login",                         Json, [401, 401, 401, 401, 401, 401, 401, 401, 401]),
        ("POST",   "/register",                      Json, [403, 403, 403, 403, 403, 403, 403, 403, 403]),
        ("POST",   "/logout",                        Json, [401, 200, 200, 200, 200, 200, 200, 200, 401]),
        ("GET",    "/api/me",                        Json, [401, 200, 200, 200, 200, 200, 200, 200, 401]),
        ("GET",    "/api/sync/status",               Json, [401, 403, 403, 403, 403, 403, 200, 403, 401]),
        ("POST",   "/api/sync/trigger",              Json, [401, 403, 403, 403, 403, 403, 202, 403, 401]),
        ("GET",    "/api/sync/inventory/summary",    Json, [401, 403, 403, 403, 403, 403, 200, 403, 401]),
        ("GET",    "/api/vms",                       Json, [401, 200, 200, 200, 200, 200, 200, 200, 401]),
        ("GET",    "/api/clusters",                  Json, [401, 200, 200, 200, 200, 200, 200, 200, 401]),
        ("POST",   "/api/clusters/switch",           Json, [401, 200, 200, 200, 200, 200, 200, 200, 401]),
        ("GET",    "/api/vm/{vmid}/status",          Json, [401, 200, 404, 200, 200, 404, 200, 200, 401]),
        ("GET",    "/api/vm/{vmid}/ip",              Json, [401, 200, 404, 200, 200, 404, 200, 200, 401]),
        ("GET",    "/api/vm/{vmid}/connect",         Json, [401, 200, 404, 200, 200, 404, 200, 200, 401]),
        ("POST",   "/api/vm/{vmid}/connect-token",   Json, [401, 200, 404, 200, 200, 404, 200, 200, 401]),
        ("POST",   "/api/vm/{vmid}/{action}",        Json, [401, 200, 404, 200, 200, 404, 200, 200, 401]),
        ("GET",    "/api/user-vm-assignments",       Json, [401, 200, 200, 200, 200, 200, 200, 200, 401]),
        ("POST",   "/api/user-vm-assignments",       Json, [401, 403, 403, 403, 403, 403, 409, 403, 401]),
        ("DELETE", "/api/user-vm-assignments/{id}",  Json, [401, 403, 403, 403, 403, 403, 404, 403, 401]),
        ("GET",    "/api/vm-class-mappings",         Json, [401, 403, 403, 403, 403, 403, 200, 403, 401]),
        ("POST",   "/api/vm-class-mappings",         Json, [401, 403, 403, 403, 403, 403, 201, 403, 401]),
        // `/` is everyone's home address: admins get the overview, other signed-in callers go to /portal.
        ("GET",    "/",                              Html, [303, 303, 303, 303, 303, 303, 200, 303, 303]),
        ("GET",    "/vms",                           Html, [303, 403, 403, 403, 403, 403, 200, 403, 303]),
        ("GET",    "/admin/reload",                  Html, [303, 403, 403, 403, 403, 403, 200, 403, 303]),
        ("GET",    "/api/reload/status",             Json, [401, 403, 403, 403, 403, 403, 200, 403, 401]),
        ("GET",    "/api/reload/events",             Sse,  [401, 403, 403, 403, 403, 403, 200, 403, 401]),
        ("GET",    "/static/{version}/{*path}",      Static, [200, 200, 200, 200, 200, 200, 200, 200, 200]),
        // Sign-in page (signed-in callers are sent home) and the portal (issue 4).
        ("GET",    "/login",                         Html, [200, 303, 303, 303, 303, 303, 303, 303, 200]),
        ("GET",    "/portal",                        Html, [303, 200, 200, 200, 200, 200, 200, 200, 303]),
        // Admin pages and their JSON. `/api/clusters/test` gets an empty body: 400 for the admin.
        ("GET",    "/admin/users",                   Html, [303, 403, 403, 403, 403, 403, 200, 403, 303]),
        ("GET",    "/admin/clusters",                Html, [303, 403, 403, 403, 403, 403, 200, 403, 303]),
        ("GET",    "/admin/assignments",             Html, [303, 403, 403, 403, 403, 403, 200, 403, 303]),
        ("GET",    "/admin/audit",                   Html, [303, 403, 403, 403, 403, 403, 200, 403, 303]),
        ("GET",    "/api/users",                     Json, [401, 403, 403, 403, 403, 403, 200, 403, 401]),
        ("POST",   "/api/users",                     Json, [401, 403, 403, 403, 403, 403, 201, 403, 401]),
        ("PUT",    "/api/users/{name}",              Json, [401, 403, 403, 403, 403, 403, 200, 403, 401]),
        ("POST",   "/api/users/{name}/password",     Json, [401, 403, 403, 403, 403, 403, 200, 403, 401]),
        ("POST",   "/api/clusters/test",             Json, [401, 403, 403, 403, 403, 403, 400, 403, 401]),
        // Connecting (issue 6). The WebSocket rows carry no Origin and no connect token: refused with 403
        // before any connection (a cookie alone never opens one), 404 for callers who may not see the VM. The
        // vendor row asks for a file that is not vendored (the theme's first static file): 404 for everyone,
        // never 401/403.
        ("GET",    "/rdp/{file}",                    Text, [401, 200, 404, 200, 200, 404, 200, 200, 401]),
        ("GET",    "/ssh/{vmid}",                    Html, [303, 200, 404, 200, 200, 404, 200, 200, 303]),
        ("GET",    "/console/{vmid}",                Html, [303, 200, 404, 200, 200, 404, 200, 200, 303]),
        ("GET",    "/ws/terminal/{vmid}",            Ws,   [401, 403, 404, 403, 403, 404, 403, 403, 401]),
        ("GET",    "/ws/console/{vmid}",             Ws,   [401, 403, 404, 403, 403, 404, 403, 403, 401]),
        ("GET",    "/static/vendor/{*path}",         Static, [404, 404, 404, 404, 404, 404, 404, 404, 404]),
        // Classes, templates, jobs (issue 5). This fixture has no deployer: callers who pass the access
        // checks get 503; `{id}` is an unknown class, so non-admins get 404 (its existence is not revealed).
        // core/web/tests/classes.rs runs these routes against a real deployer.
        ("GET",    "/api/classes",                   Json, [401, 503, 503, 503, 503, 503, 503, 503, 401]),
        ("POST",   "/api/classes",                   Json, [401, 403, 403, 503, 503, 503, 503, 403, 401]),
        ("GET",    "/api/classes/{id}",              Json, [401, 404, 404, 404, 404, 404, 503, 404, 401]),
        // Class hours (issue 14): no hours service in this fixture, so those who pass get 503.
        ("GET",    "/api/classes/{id}/hours",        Json, [401, 404, 404, 404, 404, 404, 503, 404, 401]),
        ("PUT",    "/api/classes/{id}/hours",        Json, [401, 404, 404, 404, 404, 404, 503, 404, 401]),
        ("GET",    "/api/classes/{id}/usage",        Json, [401, 404, 404, 404, 404, 404, 503, 404, 401]),
        ("GET",    "/api/me/usage",                  Json, [401, 200, 200, 200, 200, 200, 200, 200, 401]),
        ("PUT",    "/api/classes/{id}",              Json, [401, 404, 404, 404, 404, 404, 503, 404, 401]),
        ("DELETE", "/api/classes/{id}",              Json, [401, 404, 404, 404, 404, 404, 503, 404, 401]),
        ("GET",    "/api/classes/{id}/events",       Sse,  [401, 404, 404, 404, 404, 404, 503, 404, 401]),
        ("POST",   "/api/classes/{id}/invite",       Json, [401, 404, 404, 404, 404, 404, 503, 404, 401]),
        ("GET",    "/api/classes/{id}/invites",      Json, [401, 404, 404, 404, 404, 404, 503, 404, 401]),
        ("DELETE", "/api/classes/{id}/invites/{invite}", Json, [401, 404, 404, 404, 404, 404, 503, 404, 401]),
        ("GET",    "/join/{token}",                  Html, [303, 503, 503, 503, 503, 503, 503, 503, 303]),
        ("POST",   "/join/{token}",                  Html, [303, 503, 503, 503, 503, 503, 503, 503, 303]),
        ("POST",   "/api/class/{id}/assign",         Json, [401, 404, 404, 404, 404, 404, 503, 404, 401]),
        ("DELETE", "/api/class/{id}/assign/{user}",  Json, [401, 404, 404, 404, 404, 404, 503, 404, 401]),
        ("GET",    "/api/classes/{id}/co-owners",    Json, [401, 404, 404, 404, 404, 404, 503, 404, 401]),
        ("POST",   "/api/classes/{id}/co-owners",    Json, [401, 404, 404, 404, 404, 404, 503, 404, 401]),
        ("DELETE", "/api/classes/{id}/co-owners/{user}", Json, [401, 404, 404, 404, 404, 404, 503, 404, 401]),
        ("POST",   "/api/classes/{id}/teacher/{action}", Json, [401, 404, 404, 404, 404, 404, 503, 404, 401]),
        ("POST",   "/api/classes/{id}/vms",          Json, [401, 404, 404, 404, 404, 404, 503, 404, 401]),
        ("POST",   "/api/classes/{id}/retry",        Json, [401, 404, 404, 404, 404, 404, 503, 404, 401]),
        ("POST",   "/api/classes/{id}/publish-template", Json, [401, 404, 404, 404, 404, 404, 503, 404, 401]),
        ("GET",    "/api/templates",                 Json, [401, 403, 403, 503, 503, 503, 503, 403, 401]),
        ("POST",   "/api/templates",                 Json, [401, 403, 403, 403, 403, 403, 503, 403, 401]),
        ("GET",    "/api/templates/by-name/{name}",  Json, [401, 403, 403, 503, 503, 503, 503, 403, 401]),
        ("GET",    "/api/templates/stats",           Json, [401, 403, 403, 503, 503, 503, 503, 403, 401]),
        ("POST",   "/api/templates/sync",            Json, [401, 403, 403, 403, 403, 403, 503, 403, 401]),
        ("PUT",    "/api/teachers/{name}/limits",     Json, [401, 403, 403, 403, 403, 403, 503, 403, 401]),
        ("PUT",    "/api/templates/{cluster}/{vmid}", Json, [401, 403, 403, 403, 403, 403, 503, 403, 401]),
        ("DELETE", "/api/templates/{cluster}/{vmid}", Json, [401, 403, 403, 403, 403, 403, 503, 403, 401]),
        ("GET",    "/api/jobs/{id}",                 Json, [401, 503, 503, 503, 503, 503, 503, 503, 401]),
        ("GET",    "/api/jobs/{id}/events",          Sse,  [401, 503, 503, 503, 503, 503, 503, 503, 401]),
        // The teacher's class pages: students are refused the list; `{id}` is unknown (404 but for the
        // admin, who passes the checks and gets 503 without a deployer). tests/pages_classes.rs renders them.
        ("GET",    "/classes",                       Html, [303, 403, 403, 503, 503, 503, 503, 403, 303]),
        ("GET",    "/classes/{id}",                  Html, [303, 404, 404, 404, 404, 404, 503, 404, 303]),
    ]
};

#[test]
fn matrix_covers_every_route() {
    let registered: BTreeSet<(String, String)> = web::routes()
        .iter()
        .map(|r| (r.method.as_str().to_string(), r.path.to_string()))
        .collect();
    let in_matrix: BTreeSet<(String, String)> = MATRIX
        .iter()
        .map(|(m, p, _, _)| (m.to_string(), p.to_string()))
        .collect();
    let missing: Vec<_> = registered.difference(&in_matrix).collect();
    let extra: Vec<_> = in_matrix.difference(&registered).collect();
    assert!(
        missing.is_empty(),
        "routes without rows in the authorization matrix: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "matrix rows for routes the router does not have: {extra:?}"
    );
    // Kinds agree with the route table, and the access rule matches what the rows expect.
    for spec in web::routes() {
        let (_, _, kind, want) = MATRIX
            .iter()
            .find(|(m, p, _, _)| *m == spec.method.as_str() && *p == spec.path)
            .unwrap();
        assert_eq!(*kind, spec.kind, "{} {}", spec.method.as_str(), spec.path);
        match spec.access {
            // A public route answers all alike, except that a page may send signed-in callers home.
            Access::Public => {
                assert!(
                    want.iter().enumerate().all(|(col, s)| *s == want[0]
                        || (spec.kind == RouteKind::Html && *s == 303 && signed_in(col))),
                    "{}: a public route answers all alike",
                    spec.path
                )
            }
            Access::Authenticated | Access::Admin => {
                assert!(
                    matches!(want[0], 401 | 303),
                    "{}: protected route must refuse anonymous callers",
                    spec.path
                )
            }
        }
        if spec.access == Access::Admin {
            assert!(
                want[1..6].iter().all(|s| *s == 403),
                "{}: admin route open to non-admins",
                spec.path
            );
        }
    }
}

/// True for the columns of [`WHO`] that are signed in (session or valid bearer token).
fn signed_in(col: usize) -> bool {
    !matches!(WHO[col], "anonymous" | "revoked token")
}

fn concrete(fx: &Fixture, template: &str) -> String {
    let themes = web::render::themes_of(&fx.state).expect("themes");
    let set = themes.current();
    let file = set
        .statics()
        .keys()
        .next()
        .expect("the default theme has static files")
        .clone();
    template
        .replace("{vmid}", &OWN_VM.to_string())
        .replace("{cluster}", "lab")
        .replace("{action}", "start")
        .replace("{id}", "a999999")
        .replace("{name}", "stud2")
        .replace("{token}", "no-such-invite")
        .replace("{invite}", "inv-000000000000")
        .replace("{user}", "stud2")
        .replace("{file}", &format!("{OWN_VM}.rdp"))
        .replace("{version}", set.version())
        .replace("{*path}", &file)
}

fn body_for(method: &str, path: &str) -> serde_json::Value {
    match (method, path) {
        ("POST", "/login") => json!({"username": "stud", "password": "wrong password"}),
        ("POST", "/register") => {
            json!({"username": "newcomer", "password": "long-enough-1", "invite": "no-such-invite"})
        }
        ("POST", "/api/clusters/switch") => json!({"cluster": "lab"}),
        ("POST", "/api/user-vm-assignments") => json!({"user": "stud", "vmid": OWN_VM, "class_id": "c1"}),
        ("POST", "/api/vm-class-mappings") => json!({"vmid": OWN_VM, "class_id": "c1"}),
        ("POST", "/api/vm/{vmid}/connect-token") => json!({"purpose": "ssh"}),
        ("POST", "/api/users") => {
            json!({"name": "newbie", "role": "student", "password": "newbie-password-1"})
        }
        ("PUT", "/api/users/{name}") => json!({"display_name": "Student Two"}),
        ("POST", "/api/users/{name}/password") => json!({"password": "another-password-1"}),
        _ => json!({}),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_every_caller_as_the_matrix_says() {
    let fx = fixture(AuthConfig::default()).await;
    let mut failures = Vec::new();
    for (method, template, kind, want) in MATRIX {
        let path = concrete(&fx, template);
        for (col, who) in WHO.iter().enumerate() {
            let mut req = Request::builder().method(*method).uri(&path);
            // A fresh session per request: a `/logout` row must not end the session other rows use.
            let user = match *who {
                "student" => Some("stud"),
                "other student" => Some("stud2"),
                "teacher" => Some("teach"),
                "co-owner" => Some("co"),
                "other teacher" => Some("teach2"),
                "admin" => Some("root"),
                _ => None,
            };
            if let Some(u) = user {
                let (cookie, csrf) = fx.session(u);
                req = req.header("cookie", cookie).header("x-csrf-token", csrf);
            }
            match *who {
                "bearer token" => req = req.header("authorization", format!("Bearer {}", fx.student_token)),
                "revoked token" => req = req.header("authorization", format!("Bearer {}", fx.revoked_token)),
                _ => {}
            }
            let body = if *method == "GET" {
                Body::empty()
            } else {
                Body::from(body_for(method, template).to_string())
            };
            let req = req.header("content-type", "application/json").body(body).unwrap();
            let (status, headers, _) = fx.send(req).await;
            if status.as_u16() != want[col] {
                failures.push(format!(
                    "{method} {path} as {who}: got {status}, want {}",
                    want[col]
                ));
            }
            // A page refused to a signed-in caller is a page (the themed error page), not JSON.
            if status == StatusCode::FORBIDDEN && *kind == RouteKind::Html && *method == "GET" {
                let ct = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !ct.starts_with("text/html") {
                    failures.push(format!(
                        "{method} {path} as {who}: 403 as {ct}, want the error page"
                    ));
                }
            }
            if status == StatusCode::SEE_OTHER && *kind == RouteKind::Html {
                let loc = headers
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                // Anonymous callers go to the sign-in page; signed-in ones only ever to their home.
                if signed_in(col) {
                    assert!(
                        loc == "/portal" || loc == "/",
                        "{method} {path} as {who}: redirect to {loc}"
                    );
                } else {
                    assert!(
                        loc.starts_with("/login?next="),
                        "{method} {path} as {who}: redirect to {loc}"
                    );
                }
            }
            // Every answer carries the security headers.
            assert!(
                headers.get("content-security-policy").is_some(),
                "{method} {path} as {who}: no CSP"
            );
            assert_eq!(
                headers.get("x-content-type-options").map(|v| v.as_bytes()),
                Some(&b"nosniff"[..])
            );
        }
    }
    assert!(
        failures.is_empty(),
        "authorization matrix mismatches:\n{}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_vms_lists_exactly_what_each_caller_may_see() {
    let fx = fixture(AuthConfig::default()).await;
    let ids = |body: &axum::body::Bytes| -> Vec<u64> {
        support::json_of(body)
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["vmid"].as_u64().unwrap())
            .collect()
    };
    let get = |user: &'static str| {
        let (cookie, _) = fx.session(user);
        Request::get("/api/vms")
            .header("cookie", cookie)
            .body(Body::empty())
            .unwrap()
    };
    let (_, h, body) = fx.send(get("stud")).await;
    assert_eq!(ids(&body), vec![u64::from(OWN_VM)]);
    assert_eq!(
        h.get("cache-control").map(|v| v.as_bytes()),
        Some(&b"no-store"[..])
    );
    let (_, _, body) = fx.send(get("stud2")).await;
    assert_eq!(ids(&body), vec![u64::from(support::OTHER_VM)]);
    for teacher in ["teach", "co"] {
        let (_, _, body) = fx.send(get(teacher)).await;
        assert_eq!(ids(&body), vec![u64::from(OWN_VM)], "{teacher}");
    }
    let (_, _, body) = fx.send(get("teach2")).await;
    assert_eq!(ids(&body), vec![u64::from(support::OTHER_VM)]);
    let (_, _, body) = fx.send(get("root")).await;
    assert!(ids(&body).len() > 40, "admin sees the whole inventory");
    // A new assignment shows at once (the access index is rebuilt on change).
    support::assign(&fx.store, "stud", 1103, None, None);
    fx.state.auth.rebuild_index();
    let (_, _, body) = fx.send(get("stud")).await;
    assert_eq!(ids(&body), vec![u64::from(OWN_VM), 1103]);
}

#[test]
fn route_kinds_and_methods_are_well_formed() {
    for r in web::routes() {
        assert!(r.path.starts_with('/'), "{}", r.path);
        if r.kind == RouteKind::Sse {
            assert_eq!(r.method, HttpMethod::Get, "{}", r.path);
        }
        // Pages are GETs; the one page route that posts is a form that answers with a redirect.
        if r.kind == RouteKind::Html && r.method != HttpMethod::Get {
            assert_eq!((r.method, r.path), (HttpMethod::Post, "/join/{token}"));
        }
    }
}
