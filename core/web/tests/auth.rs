//! Sign-in, sessions, CSRF, tokens, throttling and revert, against the real router, a real store and the
//! fake PVE cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod support;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use support::{ADMIN_PW, Fixture, OWN_VM, STUDENT_PW, fixture, json_of};
use web::auth::{AuthConfig, ThrottleConfig};

fn login_json(user: &str, password: &str) -> Request<Body> {
    Request::post("/login")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"username": user, "password": password}).to_string(),
        ))
        .unwrap()
}

fn set_cookie(h: &axum::http::HeaderMap) -> Option<String> {
    h.get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").to_string())
}

async fn me(fx: &Fixture, cookie: &str) -> (StatusCode, Value) {
    let (s, _, b) = fx
        .send(
            Request::get("/api/me")
                .header("cookie", cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    (s, if b.is_empty() { Value::Null } else { json_of(&b) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_post_without_csrf_token_is_refused() {
    let fx = fixture(AuthConfig {
        public_origin: Some("https://portal.example.test".into()),
        ..Default::default()
    })
    .await;
    let (cookie, csrf) = fx.session("stud");
    let post = |extra: &[(&str, &str)]| {
        let mut r = Request::post("/api/clusters/switch")
            .header("cookie", &cookie)
            .header("content-type", "application/json");
        for (k, v) in extra {
            r = r.header(*k, *v);
        }
        r.body(Body::from(r#"{"cluster":"lab"}"#)).unwrap()
    };
    // A cross-site form post rides the cookie but cannot know the token.
    let (s, _, b) = fx.send(post(&[("origin", "https://evil.example.net")])).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{}", String::from_utf8_lossy(&b));
    assert_eq!(json_of(&b)["error"]["code"], "csrf");
    // Cookie without the token, even from our own origin: refused.
    let (s, _, _) = fx.send(post(&[("origin", "https://portal.example.test")])).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // A wrong token: refused; the token from a foreign origin: refused; a same-site sibling: refused.
    let (s, _, _) = fx.send(post(&[("x-csrf-token", "nope")])).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    for origin in [
        "https://evil.example.net",
        "https://vm210.lab.example.test",
        "null",
        "https://portal.example.test.evil.net",
    ] {
        let (s, _, _) = fx
            .send(post(&[("x-csrf-token", &csrf), ("origin", origin)]))
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "origin {origin}");
    }
    // Our own page: header or form field.
    let (s, _, _) = fx
        .send(post(&[
            ("x-csrf-token", &csrf),
            ("origin", "https://portal.example.test"),
        ]))
        .await;
    assert_eq!(s, StatusCode::OK);
    let form = Request::post("/api/clusters/switch")
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(format!("cluster=lab&_csrf={csrf}")))
        .unwrap();
    let (s, _, b) = fx.send(form).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    // Nothing was changed by the refused requests: the audit log shows only the two accepted switches.
    let switches = fx
        .store
        .audit_recent(100)
        .unwrap()
        .into_iter()
        .filter(|a| a.action == "cluster.switch")
        .count();
    assert_eq!(switches, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_fixation_is_refused() {
    let fx = fixture(AuthConfig::default()).await;
    // The attacker plants their own valid session cookie in the victim's browser...
    let (planted, _) = fx.session("stud2");
    let mut req = login_json("stud", STUDENT_PW);
    req.headers_mut().insert("cookie", planted.parse().unwrap());
    let (s, h, b) = fx.send(req).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let fresh = set_cookie(&h).expect("a new session cookie");
    assert_ne!(fresh, planted, "sign-in must issue a new session id");
    // ...which is dead after the victim signs in, while the new one is the victim's.
    assert_eq!(me(&fx, &planted).await.0, StatusCode::UNAUTHORIZED);
    let (s, v) = me(&fx, &fresh).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["user"], "stud");
    // A made-up id is never adopted.
    let made_up = format!("{}={}", fx.state.auth.cookie_name(), "A".repeat(43));
    let mut req = login_json("stud", STUDENT_PW);
    req.headers_mut().insert("cookie", made_up.parse().unwrap());
    let (_, h, _) = fx.send(req).await;
    assert_ne!(set_cookie(&h).unwrap(), made_up);
    assert_eq!(me(&fx, &made_up).await.0, StatusCode::UNAUTHORIZED);
    // The cookie has the right attributes.
    let raw = h.get("set-cookie").unwrap().to_str().unwrap();
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(raw.contains(attr), "{raw}");
    }
    assert!(
        !raw.contains("Secure"),
        "plain-HTTP test server: no Secure flag: {raw}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_only_goes_to_local_paths() {
    let fx = fixture(AuthConfig::default()).await;
    for (next, want) in [
        ("//evil.example", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("javascript:alert(1)", "/"),
        ("/portal?x=1", "/portal?x=1"),
    ] {
        let enc: String = url::form_urlencoded::byte_serialize(next.as_bytes()).collect();
        let req = Request::post("/login")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(format!(
                "username=stud&password={STUDENT_PW}&next={enc}"
            )))
            .unwrap();
        let (s, h, _) = fx.send(req).await;
        assert_eq!(s, StatusCode::SEE_OTHER, "{next}");
        assert_eq!(h.get("location").unwrap(), want, "next={next}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_wrong_passwords_slow_the_account_but_lock_nothing() {
    let throttle = ThrottleConfig {
        account_base_delay: Duration::from_millis(1),
        account_max_delay: Duration::from_millis(20),
        ..ThrottleConfig::default()
    };
    let fx = fixture(AuthConfig {
        throttle,
        ..Default::default()
    })
    .await;
    // Unknown user and wrong password get the same answer.
    let (s1, _, b1) = fx.send(login_json("nobody", "wrong password")).await;
    let (s2, _, b2) = fx.send(login_json("stud", "wrong password")).await;
    assert_eq!((s1, &b1), (s2, &b2));
    assert_eq!(s1, StatusCode::UNAUTHORIZED);
    // A spray of 100 wrong passwords from 100 addresses: every one is checked (401), none refused.
    for i in 0..99 {
        let (s, _, _) = fx
            .send_from(
                login_json("stud", "wrong password"),
                // Each from its own /24, so only the account is throttled.
                &format!("127.1.{i}.1"),
            )
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    assert_eq!(fx.state.auth.throttle.account_failures("stud"), 100);
    assert!(
        fx.state.auth.throttle.account_delay("stud") > Duration::ZERO,
        "the account is slowed down"
    );
    // The 101st attempt, the right password from another address, works.
    let (s, h, b) = fx.send_from(login_json("stud", STUDENT_PW), "127.9.9.9").await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert!(set_cookie(&h).is_some());
    assert_eq!(
        fx.state.auth.throttle.account_failures("stud"),
        0,
        "a success clears the account's count"
    );
    // One address trying many passwords is refused for a while (429 + Retry-After), whatever the name.
    let mut refused = None;
    for i in 0..30 {
        let (s, h, _) = fx.send_from(login_json(&format!("u{i}"), "x"), "127.7.7.7").await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            refused = Some((i, h.get("retry-after").cloned()));
            break;
        }
    }
    let (after, retry) = refused.expect("the address is throttled");
    assert_eq!(after, 20, "refused after the free failures");
    assert!(retry.is_some());
    // The audit log records sign-in failures and the success.
    let audit = fx.store.audit_recent(500).unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.action == "login" && a.result == "ok" && a.remote_addr == "127.9.9.9")
    );
    assert!(
        audit
            .iter()
            .filter(|a| a.action == "login" && a.result == "fail")
            .count()
            >= 100
    );
}

/// The attack: one IPv6 host owns a whole /64 (and an attacker with a cloud or NAT range a /24) and
/// takes a fresh source address for every guess, so the refusal of one address never triggers. Failures
/// from anywhere in the network now count together: after the network's free failures every address in
/// it is refused with a 429 that says why (even with the right password), and a neighbouring network is
/// not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_source_addresses_inside_one_network_are_refused_together() {
    let throttle = ThrottleConfig {
        account_base_delay: Duration::from_millis(1),
        account_max_delay: Duration::from_millis(2),
        // The network's free failures are the default (60).
        ..ThrottleConfig::default()
    };
    let fx = fixture(AuthConfig {
        throttle,
        ..Default::default()
    })
    .await;
    let inside_64 = |i: u32| format!("[2001:db8:5:7:{i:x}:{:x}::1]", i * 7 + 1);
    let inside_24 = |i: u32| format!("198.51.100.{}", i + 1);
    for (net, inside, neighbour) in [
        ("/64", &inside_64 as &dyn Fn(u32) -> String, "[2001:db8:5:8::1]"),
        ("/24", &inside_24, "198.51.101.1"),
    ] {
        let mut refused = None;
        for i in 0..70 {
            let (s, h, b) = fx
                .send_from(login_json(&format!("guess{i}"), "wrong"), &inside(i))
                .await;
            if s == StatusCode::TOO_MANY_REQUESTS {
                refused = Some((i, h.get("retry-after").cloned(), json_of(&b)));
                break;
            }
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{net} attempt {i}");
        }
        let (after, retry, body) = refused.unwrap_or_else(|| panic!("the {net} was never refused"));
        assert_eq!(after, 60, "{net}: refused after the network's free failures");
        assert!(retry.is_some(), "{net}: Retry-After");
        assert_eq!(body["error"]["code"], "too_many_requests");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("from this network"),
            "{body}"
        );
        // A fresh address inside the network is refused too, even with the right password...
        let (s, _, _) = fx.send_from(login_json("stud", STUDENT_PW), &inside(99)).await;
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{net}");
        // ...while the neighbouring network signs in.
        let (s, _, b) = fx.send_from(login_json("stud", STUDENT_PW), neighbour).await;
        assert_eq!(s, StatusCode::OK, "{net}: {}", String::from_utf8_lossy(&b));
    }
}

/// The attack: guesses spread over many networks and names (each below its own address, network and
/// account limits; sent in parallel, the per-account delays would not slow them either). A ceiling of failed sign-ins per minute across everyone
/// refuses every sign-in with a clear 429 once it is reached, until the minute has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sign_ins_from_many_networks_hit_a_ceiling_per_minute_across_everyone() {
    let throttle = ThrottleConfig {
        account_base_delay: Duration::from_millis(1),
        account_max_delay: Duration::from_millis(2),
        global_failures_per_minute: 12,
        ..ThrottleConfig::default()
    };
    let fx = fixture(AuthConfig {
        throttle,
        ..Default::default()
    })
    .await;
    let mut all = Vec::new();
    for i in 0..12u32 {
        let from = format!("203.0.{i}.9");
        all.push(
            fx.send_from(login_json(&format!("guess{i}"), "wrong"), &from)
                .await
                .0,
        );
    }
    assert!(all.iter().all(|s| *s == StatusCode::UNAUTHORIZED), "{all:?}");
    // The 13th attempt, from a network that never failed, with the right password: refused for now.
    let (s, h, b) = fx
        .send_from(login_json("stud", STUDENT_PW), "[2001:db8:77::1]")
        .await;
    assert_eq!(
        s,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        String::from_utf8_lossy(&b)
    );
    let message = json_of(&b)["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("in the last minute"), "{message}");
    let retry: u64 = h.get("retry-after").unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // A minute later sign-in works again.
    fx.clock.advance(Duration::from_secs(61));
    let (s, _, b) = fx
        .send_from(login_json("stud", STUDENT_PW), "[2001:db8:77::1]")
        .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
}

/// The attack on the log: people type their password into the name field, and attackers probe names.
/// A failed sign-in whose typed name matches no account is logged as "unknown account", never with the
/// typed text; a failure of a real account names the account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_never_records_a_typed_name_that_matches_no_account() {
    let fx = fixture(AuthConfig::default()).await;
    let typed = "Hunter2-my-real-password";
    let (s, _, _) = fx.send(login_json(typed, "whatever")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = fx.send(login_json("stud", "wrong password")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let fails: Vec<_> = fx
        .store
        .audit_recent(100)
        .unwrap()
        .into_iter()
        .filter(|a| a.action == "login" && a.result == "fail")
        .collect();
    let users: Vec<&str> = fails.iter().map(|a| a.user.as_str()).collect();
    assert!(users.contains(&"unknown account"), "{users:?}");
    assert!(users.contains(&"stud"), "{users:?}");
    for a in fx.store.audit_recent(100).unwrap() {
        let all = format!("{} {} {} {}", a.user, a.action, a.target, a.result);
        assert!(
            !all.to_lowercase().contains("hunter2"),
            "the typed name was logged: {all}"
        );
    }
}

/// Sessions nobody comes back with are deleted by a background task, not only at the next start (a
/// stolen but unused session id must not stay valid-looking in the database for weeks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sessions_are_swept_in_the_background_without_any_request() {
    let fx = fixture(AuthConfig {
        session_idle_secs: 3600,
        session_sweep_every: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    let key_of = |cookie: &str| web::auth::sha256_hex(cookie.split_once('=').unwrap().1);
    let (old, _) = fx.session("stud");
    fx.clock.advance(Duration::from_secs(3601));
    let (fresh, _) = fx.session("stud2");
    let deadline = Instant::now() + Duration::from_secs(5);
    while fx.store.session(&key_of(&old)).unwrap().is_some() {
        assert!(Instant::now() < deadline, "the idle session was never swept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        fx.store.session(&key_of(&fresh)).unwrap().is_some(),
        "a live session stays"
    );
}

/// A portal reached over https tells browsers never to use plain HTTP for it (a network attacker
/// cannot strip TLS on a later visit); a plain-HTTP portal sends no such header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_transport_security_is_sent_only_when_the_public_url_is_https() {
    for (origin, want) in [
        (Some("https://portal.example.test"), Some("max-age=31536000")),
        (Some("http://portal.example.test"), None),
        (None, None),
    ] {
        let fx = fixture(AuthConfig {
            public_origin: origin.map(str::to_string),
            ..Default::default()
        })
        .await;
        let (_, h, _) = fx.send(Request::get("/login").body(Body::empty()).unwrap()).await;
        let got = h
            .get("strict-transport-security")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(got.as_deref(), want, "{origin:?}");
        let (_, h, _) = fx.send(login_json("stud", "wrong password")).await;
        assert_eq!(
            h.get("strict-transport-security").is_some(),
            want.is_some(),
            "{origin:?}: error answers too"
        );
    }
}

/// Answers that carry a secret are never stored by a browser or proxy cache: the sign-in answer (the
/// session cookie and its CSRF token) although the request itself was anonymous, and the caller's own
/// JSON. (Invite links and the join page are checked in tests/classes.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_carry_a_session_or_csrf_token_are_never_cached() {
    let fx = fixture(AuthConfig::default()).await;
    let (s, h, b) = fx.send(login_json("stud", STUDENT_PW)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(json_of(&b)["csrf_token"].is_string());
    assert_eq!(
        h.get("cache-control").map(|v| v.to_str().unwrap()),
        Some("no-store")
    );
    let cookie = set_cookie(&h).unwrap();
    let (s, h, b) = fx
        .send(
            Request::get("/api/me")
                .header("cookie", &cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(json_of(&b)["csrf_token"].is_string());
    assert_eq!(
        h.get("cache-control").map(|v| v.to_str().unwrap()),
        Some("no-store")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_passwords_and_bodies_are_refused_before_hashing() {
    let fx = fixture(AuthConfig::default()).await;
    let started = Instant::now();
    let (s, _, b) = fx.send(login_json("stud", &"x".repeat(1025))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&b));
    let (s, _, _) = fx.send(login_json("stud", &"x".repeat(1 << 20))).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        fx.state.auth.throttle.account_failures("stud"),
        0,
        "nothing was checked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_works_without_csrf_and_revoked_or_expired_tokens_do_not() {
    let fx = fixture(AuthConfig::default()).await;
    let bearer = |t: &str, method: &str, path: &str| {
        Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {t}"))
            .body(Body::empty())
            .unwrap()
    };
    // A write with the token and no CSRF header: accepted (the VM is running already: no task).
    let (s, _, b) = fx
        .send(bearer(
            &fx.student_token,
            "POST",
            &format!("/api/vm/{OWN_VM}/start"),
        ))
        .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let (_, _, b) = fx.send(bearer(&fx.student_token, "GET", "/api/me")).await;
    let v = json_of(&b);
    assert_eq!(
        (v["user"].as_str(), v["via"].as_str(), &v["csrf_token"]),
        (Some("stud"), Some("token"), &Value::Null)
    );
    // Revoked.
    let (s, _, _) = fx.send(bearer(&fx.revoked_token, "GET", "/api/me")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Expired: valid for a minute, then the clock moves on.
    let now = fx.clock_now();
    let (t, _) = fx
        .state
        .auth
        .create_token("stud", Some(now + 60), "short")
        .unwrap();
    assert_eq!(
        fx.send(bearer(t.expose(), "GET", "/api/me")).await.0,
        StatusCode::OK
    );
    fx.clock.advance(Duration::from_secs(61));
    assert_eq!(
        fx.send(bearer(t.expose(), "GET", "/api/me")).await.0,
        StatusCode::UNAUTHORIZED
    );
    // A disabled user's tokens stop working.
    fx.store.set_user_disabled("stud", true).unwrap();
    assert_eq!(
        fx.send(bearer(&fx.student_token, "GET", "/api/me")).await.0,
        StatusCode::UNAUTHORIZED
    );
}

trait ClockNow {
    fn clock_now(&self) -> u64;
}
impl ClockNow for Fixture {
    fn clock_now(&self) -> u64 {
        use web::auth::WallClock;
        self.clock.now_secs()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_expire_survive_restart_and_end_on_logout_and_password_change() {
    let fx = fixture(AuthConfig {
        session_idle_secs: 600,
        session_absolute_secs: 3600,
        ..Default::default()
    })
    .await;
    // Logout ends the session.
    let (cookie, csrf) = fx.session("stud");
    let logout = Request::post("/logout")
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .body(Body::empty())
        .unwrap();
    let (s, h, _) = fx.send(logout).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        h.get("set-cookie")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(me(&fx, &cookie).await.0, StatusCode::UNAUTHORIZED);
    // A password change ends every session of the user.
    let (c1, _) = fx.session("stud");
    let (c2, _) = fx.session("stud");
    fx.store
        .set_password_hash("stud", "$argon2id$changed".into(), true)
        .unwrap();
    assert_eq!(me(&fx, &c1).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(me(&fx, &c2).await.0, StatusCode::UNAUTHORIZED);
    // Idle expiry, and activity keeps a session alive until the absolute limit.
    let (c, _) = fx.session("stud2");
    fx.clock.advance(Duration::from_secs(500));
    assert_eq!(me(&fx, &c).await.0, StatusCode::OK);
    fx.clock.advance(Duration::from_secs(500));
    assert_eq!(
        me(&fx, &c).await.0,
        StatusCode::OK,
        "touched 500 s ago: still within the idle limit"
    );
    fx.clock.advance(Duration::from_secs(601));
    assert_eq!(me(&fx, &c).await.0, StatusCode::UNAUTHORIZED, "idle too long");
    let (c, _) = fx.session("stud2");
    for _ in 0..7 {
        fx.clock.advance(Duration::from_secs(550));
        me(&fx, &c).await;
    }
    assert_eq!(
        me(&fx, &c).await.0,
        StatusCode::UNAUTHORIZED,
        "past the absolute limit"
    );
    // Sessions live in the store: a new server over the same database knows them.
    let (c, _) = fx.session("root");
    fx.store.flush().unwrap();
    let auth2 = web::auth::AuthState::with_clock(fx.store.clone(), AuthConfig::default(), fx.clock.clone());
    let state2 = fx.state.clone().with_auth(auth2);
    let app2 = web::app(state2);
    let resp = tower::ServiceExt::oneshot(
        app2,
        Request::get("/api/me")
            .header("cookie", &c)
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let raw_sessions: Vec<String> = fx.store.sessions.iter().map(|r| r.unwrap().0).collect();
    let raw_id = c.split_once('=').unwrap().1;
    assert!(
        !raw_sessions.iter().any(|k| k == raw_id),
        "session ids are stored hashed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argon2_never_blocks_the_runtime() {
    let fx = fixture(AuthConfig::default()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = fx.app.clone();
    let server = tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await;
    });
    let http = testkit::http_client();
    let base = format!("http://{addr}");
    let logins: Vec<_> = (0..20)
        .map(|i| {
            let http = http.clone();
            let url = format!("{base}/login");
            let user = if i % 2 == 0 {
                "stud".to_string()
            } else {
                format!("ghost{i}")
            };
            tokio::spawn(async move {
                http.post(url)
                    .json(&json!({"username": user, "password": "wrong password"}))
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    // While the 20 sign-ins hash, /health still answers.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let t = Instant::now();
    let health = tokio::time::timeout(Duration::from_secs(2), http.get(format!("{base}/health")).send())
        .await
        .expect("/health answered while argon2 ran")
        .unwrap();
    assert_eq!(health.status(), 200);
    let health_ms = t.elapsed().as_millis();
    for l in logins {
        let s = l.await.unwrap();
        assert!(s == 401 || s == 503, "sign-in answered {s}");
    }
    eprintln!("/health during 20 concurrent sign-ins: {health_ms} ms");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_rolls_back_to_the_baseline_snapshot_and_says_when_there_is_none() {
    let fx = fixture(AuthConfig::default()).await;
    let client = support::client(fx.fake);
    let upid = client
        .snapshot_create("pve3", pve::GuestKind::Qemu, 1208, "baseline", "proxlab test")
        .await
        .unwrap();
    client.wait_task(&upid, Duration::from_secs(30)).await.unwrap();
    support::assign(&fx.store, "stud", 1208, None, Some("baseline"));
    support::assign(&fx.store, "stud", 1209, None, None);
    fx.state.auth.rebuild_index();
    let (cookie, csrf) = fx.session("stud");
    let post = |path: String| {
        Request::post(path)
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
            .body(Body::empty())
            .unwrap()
    };
    let before = fx.fake.request_count().unwrap();
    let (s, _, b) = fx.send(post("/api/vm/1208/revert".into())).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let v = json_of(&b);
    assert_eq!(
        (
            v["action"].as_str(),
            v["exitstatus"].as_str(),
            v["snapshot"].as_str()
        ),
        (Some("revert"), Some("OK"), Some("baseline"))
    );
    let rollbacks = fx
        .fake
        .requests_since(before)
        .unwrap()
        .iter()
        .filter(|r| {
            r["method"] == "POST"
                && r["path"]
                    .as_str()
                    .unwrap_or("")
                    .ends_with("/qemu/1208/snapshot/baseline/rollback")
        })
        .count();
    assert_eq!(rollbacks, 1);
    let (s, _, b) = fx.send(post("/api/vm/1209/revert".into())).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(
        json_of(&b)["error"]["message"],
        "this VM has no baseline snapshot to revert to"
    );
    // Another student's VM: 404, as if it did not exist.
    let (s, _, _) = fx
        .send(post(format!("/api/vm/{}/revert", support::OTHER_VM)))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let audit = fx.store.audit_recent(50).unwrap();
    assert!(
        audit.iter().any(|a| a.action == "vm.revert"
            && a.target == "lab/1208"
            && a.result == "ok"
            && a.user == "stud")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realm_users_are_admins_only_when_the_config_says_so() {
    let fx = fixture(AuthConfig::default()).await;
    let (s, _, b) = fx.send(login_json("teacher1@pve", "teacher-pass")).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(
        json_of(&b)["role"],
        "student",
        "PVE accepting the password makes nobody an admin"
    );
    let (s, _, _) = fx.send(login_json("teacher1@pve", "wrong")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // A local name can never be a realm name.
    assert!(
        fx.store
            .create_local_user(store::UserRecord {
                name: "teacher1@pve".into(),
                ..Default::default()
            })
            .is_err()
    );
    // Listed in realm_admins: admin.
    let auth = web::auth::AuthState::with_clock(
        fx.store.clone(),
        AuthConfig {
            realm_admins: vec!["teacher1@pve".into()],
            ..Default::default()
        },
        fx.clock.clone(),
    );
    let app = web::app(fx.state.clone().with_auth(auth));
    let resp = tower::ServiceExt::oneshot(app, login_json("teacher1@pve", "teacher-pass"))
        .await
        .unwrap();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
    assert_eq!(json_of(&body)["role"], "admin");
    // The admin password of the local admin works as well (and is re-usable across the matrix).
    let (s, _, _) = fx.send(login_json("ROOT", ADMIN_PW)).await;
    assert_eq!(s, StatusCode::OK, "local names are matched lower-case");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_only_the_students_vms() {
    let fx = fixture(AuthConfig::default()).await;
    support::assign(&fx.store, "stud", 1110, None, None);
    fx.state.auth.rebuild_index();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = fx.app.clone();
    let server = tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await;
    });
    let http = testkit::http_client();
    let base = format!("http://{addr}");
    let (cookie, csrf) = fx.session("stud");
    let (admin_cookie, admin_csrf) = fx.session("root");
    let mut sse = http
        .get(format!("{base}/api/events"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    // The admin starts a VM that is not the student's; then the student starts theirs.
    let r = http
        .post(format!("{base}/api/vm/1105/start"))
        .header("cookie", &admin_cookie)
        .header("x-csrf-token", &admin_csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(format!("{base}/api/vm/1110/start"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let mut buf = String::new();
    let seen = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(chunk) = sse.chunk().await.unwrap() {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            if buf.contains("\"vmid\":1110") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(seen, Ok(true), "{buf}");
    assert!(!buf.contains("\"vmid\":1105"), "another VM's event leaked: {buf}");
    // Cluster events reach a student as the public part only (no request counts, no warnings).
    let mut state = fx.state.inventory.snapshot().clusters["lab"].clone();
    state.status = "stale".into();
    state.reason = Some("595 No route to host".into());
    state.warnings = vec!["token lacks VM.Audit on /vms".into()];
    fx.state.inventory.set_cluster_state(state).await;
    let seen = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(chunk) = sse.chunk().await.unwrap() {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            if buf.contains("event: cluster")
                && buf
                    .rsplit("event: cluster")
                    .next()
                    .is_some_and(|t| t.contains("\n\n"))
            {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(seen, Ok(true), "{buf}");
    let cluster = buf.rsplit("event: cluster").next().unwrap();
    assert!(cluster.contains("\"status\""), "{cluster}");
    for internal in ["requests_total", "warnings", "failures_total", "offline_nodes"] {
        assert!(
            !cluster.contains(internal),
            "{internal} reached a student: {cluster}"
        );
    }
    server.abort();
}

/// The attack: a student whose account is disabled (or a teacher who is demoted, or anyone whose session
/// is signed out) keeps an open `/api/events` stream and goes on reading live events. Each stream ends
/// within a second of the change, with a last `signed_out` event; a stream of another user stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_event_streams_end_within_a_second_of_disable_demotion_or_sign_out() {
    let fx = fixture(AuthConfig::default()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = fx.app.clone();
    let server = tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await;
    });
    let http = testkit::http_client();
    let base = format!("http://{addr}");
    let (admin_cookie, admin_csrf) = fx.session("root");
    let open = |cookie: String| {
        let http = http.clone();
        let url = format!("{base}/api/events");
        async move {
            let r = http.get(url).header("cookie", cookie).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r
        }
    };
    // Reads `sse` until it ends (Some(text)) or `limit` passes (None).
    async fn ends_within(sse: &mut reqwest::Response, limit: Duration) -> Option<String> {
        let mut buf = String::new();
        tokio::time::timeout(limit, async {
            while let Ok(Some(chunk)) = sse.chunk().await {
                buf.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await
        .ok()
        .map(|_| buf)
    }
    let admin_put = |name: &str, body: Value| {
        http.put(format!("{base}/api/users/{name}"))
            .header("cookie", &admin_cookie)
            .header("x-csrf-token", &admin_csrf)
            .json(&body)
            .send()
    };

    let (stud_cookie, _) = fx.session("stud");
    let (teach_cookie, _) = fx.session("teach");
    let (stud2_cookie, stud2_csrf) = fx.session("stud2");
    let (co_cookie, _) = fx.session("co");
    let mut stud = open(stud_cookie.clone()).await;
    let mut teach = open(teach_cookie).await;
    let mut stud2 = open(stud2_cookie.clone()).await;
    let mut bystander = open(co_cookie).await;

    // Disabled by an admin.
    let r = admin_put("stud", json!({"disabled": true})).await.unwrap();
    assert_eq!(r.status(), 200);
    let t = Instant::now();
    let tail = ends_within(&mut stud, Duration::from_millis(1500))
        .await
        .expect("the disabled student's stream must end");
    assert!(tail.contains("event: signed_out"), "{tail}");
    assert!(t.elapsed() < Duration::from_millis(1500));
    // Demoted by an admin.
    let r = admin_put("teach", json!({"role": "student"})).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        ends_within(&mut teach, Duration::from_millis(1500))
            .await
            .is_some(),
        "the demoted teacher's stream must end"
    );
    // Signed out from another tab (the session is revoked).
    let r = http
        .post(format!("{base}/logout"))
        .header("cookie", &stud2_cookie)
        .header("x-csrf-token", &stud2_csrf)
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success() || r.status().is_redirection(),
        "{}",
        r.status()
    );
    assert!(
        ends_within(&mut stud2, Duration::from_millis(1500))
            .await
            .is_some(),
        "the signed-out session's stream must end"
    );
    // The co-owner was not touched: their stream is still open.
    assert!(
        ends_within(&mut bystander, Duration::from_millis(300))
            .await
            .is_none(),
        "another user's stream must stay open"
    );
    // And the disabled student cannot open a new one.
    let r = http
        .get(format!("{base}/api/events"))
        .header("cookie", &stud_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_origin_must_be_exactly_ours_and_connect_tokens_are_one_time() {
    let fx = fixture(AuthConfig {
        public_origin: Some("https://portal.example.test".into()),
        ..Default::default()
    })
    .await;
    let auth = &fx.state.auth;
    let with_origin = |o: Option<&str>| {
        let mut h = axum::http::HeaderMap::new();
        if let Some(o) = o {
            h.insert("origin", o.parse().unwrap());
        }
        h
    };
    assert!(
        auth.check_ws_origin(&with_origin(Some("https://portal.example.test")))
            .is_ok()
    );
    for bad in [
        Some("https://evil.example.net"),
        Some("https://vm210.lab.example.test"),
        Some("null"),
        None,
        Some("https://portal.example.test:444"),
    ] {
        assert!(auth.check_ws_origin(&with_origin(bad)).is_err(), "{bad:?}");
    }
    // Connect tokens come from an authenticated same-origin call, work once, and expire in 30 s.
    let (cookie, csrf) = fx.session("stud");
    let req = Request::post(format!("/api/vm/{OWN_VM}/connect-token"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .header("content-type", "application/json")
        .body(Body::from(r#"{"purpose":"console"}"#))
        .unwrap();
    let (s, _, b) = fx.send(req).await;
    assert_eq!(s, StatusCode::OK);
    let token = json_of(&b)["token"].as_str().unwrap().to_string();
    let grant = auth.take_connect_token(&token).expect("valid once");
    assert_eq!(
        (grant.user.as_str(), grant.vmid, grant.purpose.as_str()),
        ("stud", OWN_VM, "console")
    );
    assert!(auth.take_connect_token(&token).is_none(), "one-time");
    let t2 = auth.issue_connect_token("stud", "lab", OWN_VM, "ssh");
    fx.clock.advance(Duration::from_secs(31));
    assert!(auth.take_connect_token(t2.expose()).is_none(), "expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignments_api_creates_lists_deletes_and_audits() {
    let fx = fixture(AuthConfig::default()).await;
    let (cookie, csrf) = fx.session("root");
    let send = |method: &str, path: &str, body: Value| {
        Request::builder()
            .method(method)
            .uri(path)
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let (s, _, b) = fx
        .send(send(
            "POST",
            "/api/user-vm-assignments",
            json!({"user": "stud2", "vmid": 1104, "baseline_snapshot": "baseline"}),
        ))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let id = json_of(&b)["id"].as_str().unwrap().to_string();
    // stud2 sees it at once; stud does not.
    let (c2, _) = fx.session("stud2");
    let (s, _, _) = fx
        .send(
            Request::get("/api/vm/1104/status")
                .header("cookie", &c2)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, b) = fx
        .send(
            Request::get("/api/user-vm-assignments")
                .header("cookie", &c2)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let listed: Vec<u64> = json_of(&b)["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["vmid"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, vec![u64::from(support::OTHER_VM), 1104]);
    for (body, want) in [
        (json!({"user": "ghost", "vmid": 1104}), StatusCode::NOT_FOUND),
        (json!({"user": "stud2", "vmid": 99999}), StatusCode::NOT_FOUND),
        (
            json!({"user": "stud2", "vmid": 1104, "baseline_snapshot": "bad name!"}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        assert_eq!(
            fx.send(send("POST", "/api/user-vm-assignments", body.clone()))
                .await
                .0,
            want,
            "{body}"
        );
    }
    let (s, _, _) = fx
        .send(send(
            "DELETE",
            &format!("/api/user-vm-assignments/{id}"),
            json!({}),
        ))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = fx
        .send(
            Request::get("/api/vm/1104/status")
                .header("cookie", &c2)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, b) = fx
        .send(send(
            "POST",
            "/api/vm-class-mappings",
            json!({"vmid": 1105, "class_id": "c1"}),
        ))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let (cteach, _) = fx.session("teach");
    let (s, _, _) = fx
        .send(
            Request::get("/api/vm/1105/status")
                .header("cookie", &cteach)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::OK,
        "the class owner sees a VM mapped into the class"
    );
    let audit = fx.store.audit_recent(50).unwrap();
    for action in ["assignment.create", "assignment.delete", "mapping.create"] {
        let a = audit
            .iter()
            .find(|a| a.action == action && a.result == "ok")
            .unwrap_or_else(|| panic!("no {action}"));
        assert_eq!((a.user.as_str(), a.remote_addr.as_str()), ("root", "127.0.0.1"));
        assert!(a.at_micros > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_headers_and_no_store_on_authenticated_json() {
    let fx = fixture(AuthConfig::default()).await;
    let (_, h, b) = fx
        .send(Request::get("/health").body(Body::empty()).unwrap())
        .await;
    let csp = h.get("content-security-policy").unwrap().to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'")
            && csp.contains("frame-ancestors 'none'")
            && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(h.get("referrer-policy").unwrap(), "same-origin");
    assert_eq!(h.get("x-content-type-options").unwrap(), "nosniff");
    assert!(
        json_of(&b).get("clusters").is_none(),
        "anonymous /health has no cluster details"
    );
    let (cookie, _) = fx.session("stud");
    let (_, h, b) = fx
        .send(
            Request::get("/health")
                .header("cookie", &cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(h.get("cache-control").unwrap(), "no-store");
    let v = json_of(&b);
    assert_eq!(v["clusters"][0]["id"], "lab");
    assert!(
        v["clusters"][0].get("warnings").is_none(),
        "students get the short cluster view"
    );
}
