#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Odd names through every form (issue 7, "bad input"): unicode (emoji, RTL with an override mark,
//! combining marks, CJK), quotes `'` `"` `` ` ``, `<script>`, backslashes, NUL and control
//! characters, one character and 10,000 characters — as user names, display names, self-registration,
//! class names and descriptions (rename and create), co-owners, template names, sign-in names and
//! `next` targets, and invite tokens on the join path. Against the real router, a real store, the
//! fake PVE cluster and a real deployer (local executor, real qemu-img).
//!
//! Each input is either accepted — then returned intact by the JSON API and rendered escaped on the
//! HTML page that shows it — or refused with a 4xx whose message names the field; never a 5xx, and
//! the stored data is unchanged on refusal. Free text (display names, class names and descriptions)
//! takes any script, quotes and symbols but no control characters (NUL, ESC, line breaks).

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use cloner::LocalExecutor;
use deploy::Deployer;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};
use support::{Fixture, STUDENT_PW, fixture, json_of};
use web::auth::AuthConfig;

const SCRIPT: &str = "<script>alert(1)</script>";

/// The odd inputs, by label. None has leading or trailing whitespace (names are trimmed).
fn odd() -> Vec<(&'static str, String)> {
    vec![
        ("script", format!("{SCRIPT} & <b>bold</b>")),
        ("quotes", "O'Brien \"the\" `tick`".to_string()),
        ("emoji", "Lab 🎓👩‍💻 ok".to_string()),
        ("rtl", "שלום \u{202E}gpj.exe עולם".to_string()),
        ("combining", "Ze\u{301}\u{302}\u{303}lgo".to_string()),
        ("cjk", "数学课 第三组".to_string()),
        ("backslash", "C:\\Users\\x\\".to_string()),
        ("nul", "a\u{0}b".to_string()),
        ("control", "tab\there\nnew\rline\u{7}\u{1b}[31m".to_string()),
        ("one", "x".to_string()),
        ("long", "a".repeat(10_000)),
        ("long-unicode", "é<".repeat(5_000)),
    ]
}

/// Whether free text `value` is accepted where at most `max` characters are (store::accounts::validate_text):
/// any script, quotes and symbols, no control characters.
fn accepted(value: &str, max: usize) -> bool {
    value.trim().chars().count() <= max && !value.chars().any(char::is_control)
}

struct Web {
    fx: Fixture,
    deployer: Deployer,
}

async fn web() -> Web {
    let fx = fixture(AuthConfig::default()).await;
    let exec: Arc<dyn cloner::Executor> = Arc::new(LocalExecutor::new(Duration::from_secs(60)));
    // Many odd accounts are made through one invite here: its per-minute limit is raised.
    let d = support::deployer_with(&fx, exec, 5600, 5649, |l| l.registrations_per_minute = 1000).await;
    support::open_template(&d, 9000).await;
    let mut fx = fx;
    fx.app = web::app(fx.state.clone().with_deployer(d.clone()));
    Web { fx, deployer: d }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        json_of(&self.text.clone().into())
    }

    fn message(&self) -> String {
        serde_json::from_str::<Value>(&self.text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    fn location(&self) -> String {
        self.headers
            .get("location")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default()
    }
}

impl Web {
    /// A request as `who` (session cookie and CSRF token), JSON body.
    async fn call(&self, who: &str, method: &str, path: &str, body: Option<Value>) -> Answer {
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
        self.send(req, "127.0.0.1").await
    }

    async fn send(&self, req: Request<Body>, from: &str) -> Answer {
        let (status, headers, body) =
            tokio::time::timeout(Duration::from_secs(120), self.fx.send_from(req, from))
                .await
                .unwrap();
        let text = String::from_utf8_lossy(&body).into_owned();
        assert!(
            !status.is_server_error(),
            "5xx: {status} {}",
            text.chars().take(300).collect::<String>()
        );
        Answer {
            status,
            headers,
            text,
        }
    }

    /// A public POST (sign-in, registration) from address `from`.
    async fn post_public(&self, path: &str, json_mode: bool, fields: &[(&str, &str)], from: &str) -> Answer {
        let (ctype, body) = if json_mode {
            let m: serde_json::Map<String, Value> =
                fields.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
            ("application/json", Value::Object(m).to_string())
        } else {
            let mut s = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in fields {
                s.append_pair(k, v);
            }
            ("application/x-www-form-urlencoded", s.finish())
        };
        let req = Request::post(path)
            .header("content-type", ctype)
            .body(Body::from(body))
            .unwrap();
        self.send(req, from).await
    }
}

/// The page shows `value` escaped: no raw `<script>` of it, and its text in HTML-escaped form.
fn assert_escaped(html: &str, label: &str, value: &str) {
    if value.contains(SCRIPT) {
        assert!(!html.contains(SCRIPT), "{label}: raw <script> on the page");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
            "{label}: escaped form missing"
        );
        assert!(!html.contains("<b>bold</b>"), "{label}: raw markup on the page");
    }
    if label == "quotes" {
        assert!(
            html.contains("O&#x27;Brien &quot;the&quot; `tick`"),
            "{label}: {value:?} not escaped"
        );
    }
    if ["emoji", "cjk", "combining", "rtl", "one"].contains(&label) {
        assert!(html.contains(value), "{label}: {value:?} not shown as it is");
    }
}

/// The stored record of a class, to prove refusals change nothing.
fn class_record(w: &Web, id: &str) -> store::ClassRecord {
    w.fx.store.classes.get(id).unwrap().unwrap()
}

/// User names (refused unless `[a-z0-9._-]`, 1–64, naming the field) and display names (accepted,
/// returned intact, shown escaped in the page header of that user) through `POST /api/users` and
/// `PUT /api/users/{name}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_names_and_display_names() {
    let w = web().await;
    let before = w.fx.store.users.values().unwrap();
    for (label, name) in odd() {
        let body =
            json!({"name": name, "display_name": "D", "role": "student", "password": "long-enough-pw-1"});
        let a = w.call("root", "POST", "/api/users", Some(body)).await;
        if label == "one" {
            assert_eq!(a.status, StatusCode::CREATED, "{label}: {}", a.text);
            assert_eq!(a.json()["name"], "x");
            continue;
        }
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{label}: {}", a.text);
        assert!(a.message().contains("user name"), "{label}: {}", a.message());
    }
    let after = w.fx.store.users.values().unwrap();
    assert_eq!(after.len(), before.len() + 1, "only `x` was created");

    // Display names: one account, every odd display name in turn (create with the first).
    let body = json!({"name": "odd-user", "display_name": odd()[0].1, "role": "student", "password": "long-enough-pw-1"});
    let a = w.call("root", "POST", "/api/users", Some(body)).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.json()["display_name"], odd()[0].1);
    for (label, display) in odd() {
        let a = w
            .call(
                "root",
                "PUT",
                "/api/users/odd-user",
                Some(json!({"display_name": display})),
            )
            .await;
        if !accepted(&display, 128) {
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{label}: {}", a.text);
            assert!(a.message().contains("display name"), "{label}: {}", a.message());
            let kept = w.fx.store.user("odd-user").unwrap().unwrap().display_name;
            assert_ne!(kept, display, "{label}: a refused display name was stored");
            continue;
        }
        assert_eq!(a.status, StatusCode::OK, "{label}: {}", a.text);
        let list = w.call("root", "GET", "/api/users", None).await.json();
        let row = list["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == "odd-user")
            .unwrap()
            .clone();
        assert_eq!(row["display_name"], json!(display), "{label}: JSON round trip");
        let page = w.call("odd-user", "GET", "/portal", None).await;
        assert_eq!(page.status, StatusCode::OK, "{label}");
        assert_escaped(&page.text, label, &display);
        let me = w.call("odd-user", "GET", "/api/me", None).await.json();
        assert_eq!(me["display_name"], json!(display), "{label}: /api/me");
    }
    // An unknown user to update is a 404 naming it, whatever its name.
    for (label, name) in odd() {
        let enc: String = url::form_urlencoded::byte_serialize(name.as_bytes()).collect();
        let path = format!("/api/users/{}", enc.replace('+', "%20"));
        if path.len() > 8000 {
            continue;
        }
        let a = w
            .call("root", "PUT", &path, Some(json!({"display_name": "y"})))
            .await;
        if label != "one" {
            assert_eq!(a.status, StatusCode::NOT_FOUND, "{label}: {}", a.text);
        }
    }
}

/// Class names and descriptions through rename (`PUT /api/classes/{id}`) and create
/// (`POST /api/classes`), co-owner names and template names: accepted ones come back intact and are
/// escaped on `/classes` and `/classes/{id}`; refused ones name the field and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_names_descriptions_co_owners_and_templates() {
    let w = web().await;
    for (label, value) in odd() {
        let before = class_record(&w, "c1");
        let a = w
            .call("teach", "PUT", "/api/classes/c1", Some(json!({"name": value})))
            .await;
        if !accepted(&value, 100) {
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{label}: {}", a.text);
            assert!(a.message().contains("class name"), "{label}: {}", a.message());
            assert_eq!(
                class_record(&w, "c1"),
                before,
                "{label}: refused rename changed the class"
            );
        } else {
            assert_eq!(a.status, StatusCode::OK, "{label}: {}", a.text);
            let got = w.call("teach", "GET", "/api/classes/c1", None).await.json();
            assert_eq!(got["class"]["name"], json!(value), "{label}: name round trip");
            for page in ["/classes", "/classes/c1"] {
                let p = w.call("teach", "GET", page, None).await;
                assert_eq!(p.status, StatusCode::OK, "{label} {page}");
                assert_escaped(&p.text, label, &value);
            }
        }
        // Descriptions: up to 500 characters without control characters, kept as they are.
        let before = class_record(&w, "c1");
        let a = w
            .call(
                "teach",
                "PUT",
                "/api/classes/c1",
                Some(json!({"description": value})),
            )
            .await;
        if !accepted(&value, 500) {
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{label}: {}", a.text);
            assert!(
                a.message().contains("class description"),
                "{label}: {}",
                a.message()
            );
            assert_eq!(
                class_record(&w, "c1"),
                before,
                "{label}: refused description changed the class"
            );
            continue;
        }
        assert_eq!(a.status, StatusCode::OK, "{label}: {}", a.text);
        let got = w.call("teach", "GET", "/api/classes/c1", None).await.json();
        assert_eq!(
            got["class"]["description"],
            json!(value),
            "{label}: description round trip"
        );
        let p = w.call("teach", "GET", "/classes/c1", None).await;
        assert_escaped(&p.text, label, &value);
    }
    // Empty and blank names are refused by name too.
    for blank in ["", "   ", "\u{3000}"] {
        let before = class_record(&w, "c1");
        let a = w
            .call("teach", "PUT", "/api/classes/c1", Some(json!({"name": blank})))
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{blank:?}: {}", a.text);
        assert!(a.message().contains("class name"), "{}", a.message());
        assert_eq!(class_record(&w, "c1"), before);
    }

    // Create: refused names start nothing; an odd valid name deploys and is shown escaped.
    let classes_before = w.fx.store.classes.values().unwrap().len();
    for bad in [
        String::new(),
        "  ".to_string(),
        "a".repeat(10_000),
        "é<".repeat(5_000),
    ] {
        let body = json!({"name": bad, "template_vmid": 9000, "pool_size": 0, "node": "pve1"});
        let a = w.call("teach", "POST", "/api/classes", Some(body)).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
        assert!(a.message().contains("class name"), "{}", a.message());
    }
    assert_eq!(w.fx.store.classes.values().unwrap().len(), classes_before);
    let name = format!("{SCRIPT} 数学 🎓 \"q\" 'a' \\");
    let body = json!({"name": name, "description": odd()[1].1, "template_vmid": 9000, "pool_size": 0, "node": "pve1"});
    let a = w.call("teach", "POST", "/api/classes", Some(body)).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let v = a.json();
    let id = v["class"]["id"].as_str().unwrap().to_string();
    assert!(
        id.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
        "{id}"
    );
    assert_eq!(v["class"]["name"], json!(name));
    // The same teacher cannot make a second class of that name (nor rename one to it), whatever the
    // letter case; nothing is stored.
    let classes_now = w.fx.store.classes.values().unwrap().len();
    let again = json!({"name": format!(" {} ", name.to_uppercase()), "template_vmid": 9000, "pool_size": 0, "node": "pve1"});
    let a = w.call("teach", "POST", "/api/classes", Some(again)).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert!(
        a.message().contains("class name") && a.message().contains("taken"),
        "{}",
        a.message()
    );
    assert_eq!(w.fx.store.classes.values().unwrap().len(), classes_now);
    let before = class_record(&w, "c1");
    let a = w
        .call(
            "teach",
            "PUT",
            "/api/classes/c1",
            Some(json!({"name": name.clone()})),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert!(a.message().contains("taken"), "{}", a.message());
    assert_eq!(class_record(&w, "c1"), before);
    let job = v["job"]["id"].as_str().unwrap().to_string();
    let j = w.deployer.wait_job(&job, Duration::from_secs(180)).await.unwrap();
    assert_eq!(j.state, store::JobState::Done, "{j:?}");
    for page in ["/classes".to_string(), format!("/classes/{id}")] {
        let p = w.call("teach", "GET", &page, None).await;
        assert_eq!(p.status, StatusCode::OK, "{page}");
        assert_escaped(&p.text, "script", &name);
        assert!(p.text.contains("数学 🎓"), "{page}");
    }

    // Co-owners: odd names are unknown users (404) or refused (400); the list never changes.
    let co_before = class_record(&w, "c1").co_owners;
    for (label, value) in odd() {
        let a = w
            .call(
                "teach",
                "POST",
                "/api/classes/c1/co-owners",
                Some(json!({"user": value})),
            )
            .await;
        assert!(a.status.is_client_error(), "{label}: {} {}", a.status, a.text);
        assert!(!a.message().is_empty(), "{label}: no message");
        if label == "one" {
            assert!(a.message().contains('x'), "{label}: {}", a.message());
        }
    }
    assert_eq!(class_record(&w, "c1").co_owners, co_before);

    // Template registration by name: no such template (404 naming it, or 400); nothing registered.
    let templates_before = w.fx.store.templates.values().unwrap();
    for (label, value) in odd() {
        let a = w
            .call("root", "POST", "/api/templates", Some(json!({"name": value})))
            .await;
        assert!(a.status.is_client_error(), "{label}: {} {}", a.status, a.text);
        assert!(!a.message().is_empty(), "{label}");
    }
    assert_eq!(
        w.fx.store.templates.values().unwrap().len(),
        templates_before.len()
    );
}

/// Self-registration, sign-in names and `next` targets, and tampered invite tokens on the join path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_sign_in_and_join_with_odd_input() {
    let w = web().await;
    let a = w
        .call(
            "teach",
            "PUT",
            "/api/classes/c1",
            Some(json!({"self_registration": true})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let a = w
        .call(
            "teach",
            "POST",
            "/api/classes/c1/invite",
            // c1 has no free seat: the link is allowed more accounts than seats.
            Some(json!({"never": true, "max_registrations": 100})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let token = a.json()["token"].as_str().unwrap().to_string();

    // Registration: odd user names are refused naming the field (JSON) or sent back to the sign-in
    // page with `bad_input` (form); no account appears. Over-long bodies are 413.
    let users_before = w.fx.store.users.values().unwrap().len();
    for (i, (label, name)) in odd().into_iter().enumerate() {
        if label == "one" {
            continue;
        }
        let from = format!("127.0.2.{i}");
        let fields = [
            ("invite", token.as_str()),
            ("username", name.as_str()),
            ("password", "pw-long-enough"),
        ];
        let a = w.post_public("/register", true, &fields, &from).await;
        if a.status == StatusCode::PAYLOAD_TOO_LARGE {
            assert!(name.len() > 3000, "{label}: 413 for a short body");
        } else {
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{label}: {}", a.text);
            assert!(a.message().contains("user name"), "{label}: {}", a.message());
        }
        let a = w.post_public("/register", false, &fields, &from).await;
        if a.status != StatusCode::PAYLOAD_TOO_LARGE {
            assert_eq!(a.status, StatusCode::SEE_OTHER, "{label}: {}", a.text);
            assert!(
                a.location().starts_with("/login?error=bad_input&next="),
                "{label}: {}",
                a.location()
            );
        }
    }
    assert_eq!(w.fx.store.users.values().unwrap().len(), users_before);
    // Odd display names are accepted (up to 128 characters, no control characters) and kept; the
    // header shows them escaped.
    for (i, (label, display)) in odd().into_iter().enumerate() {
        if display.len() > 3000 {
            continue; // over the 4 KiB sign-in body limit
        }
        let user = format!("reg{i}");
        let fields = [
            ("invite", token.as_str()),
            ("username", user.as_str()),
            ("password", "pw-long-enough"),
            ("display_name", display.as_str()),
        ];
        let a = w
            .post_public("/register", true, &fields, &format!("127.0.3.{i}"))
            .await;
        if !accepted(&display, 128) {
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{label}: {}", a.text);
            assert!(a.message().contains("display name"), "{label}: {}", a.message());
            assert!(
                w.fx.store.user(&user).unwrap().is_none(),
                "{label}: an account was made"
            );
            continue;
        }
        assert_eq!(a.status, StatusCode::OK, "{label}: {}", a.text);
        assert_eq!(a.json()["next"], json!(format!("/join/{token}")));
        let rec = w.fx.store.user(&user).unwrap().unwrap();
        assert_eq!(rec.display_name, display, "{label}: stored display name");
        let page = w.call(&user, "GET", "/portal", None).await;
        assert_escaped(&page.text, label, &display);
    }
    // 128 characters are kept whole; longer display names are refused naming the field (they were
    // silently cut to 128 before), and no account is made.
    let at_limit = "é".repeat(128);
    let fields = [
        ("invite", token.as_str()),
        ("username", "reg-limit"),
        ("password", "pw-long-enough"),
        ("display_name", at_limit.as_str()),
    ];
    let a = w.post_public("/register", true, &fields, "127.0.3.200").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        w.fx.store.user("reg-limit").unwrap().unwrap().display_name,
        at_limit
    );
    for long in ["é".repeat(129), format!("{SCRIPT}{}", "x".repeat(500))] {
        let fields = [
            ("invite", token.as_str()),
            ("username", "reg-long"),
            ("password", "pw-long-enough"),
            ("display_name", long.as_str()),
        ];
        let a = w.post_public("/register", true, &fields, "127.0.3.201").await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
        assert!(a.message().contains("display name"), "{}", a.message());
        assert!(w.fx.store.user("reg-long").unwrap().is_none());
    }

    // Sign-in: odd names are a plain "invalid" (or 400/413), never a server error, and sign no one in.
    for (i, (label, name)) in odd().into_iter().enumerate() {
        let from = format!("127.0.4.{i}");
        let a = w
            .post_public(
                "/login",
                false,
                &[("username", &name), ("password", "whatever-pw")],
                &from,
            )
            .await;
        match a.status {
            StatusCode::SEE_OTHER => assert!(
                a.location().starts_with("/login?error="),
                "{label}: {}",
                a.location()
            ),
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => {}
            s => panic!("{label}: form sign-in gave {s}: {}", a.text),
        }
        assert!(
            a.headers.get("set-cookie").is_none(),
            "{label}: a session for a failed sign-in"
        );
        let a = w
            .post_public(
                "/login",
                true,
                &[("username", &name), ("password", "whatever-pw")],
                &from,
            )
            .await;
        assert!(
            [
                StatusCode::UNAUTHORIZED,
                StatusCode::BAD_REQUEST,
                StatusCode::PAYLOAD_TOO_LARGE
            ]
            .contains(&a.status),
            "{label}: JSON sign-in gave {}: {}",
            a.status,
            a.text
        );
    }
    // `next` with odd text: a good sign-in goes to a local path, never elsewhere, never a 5xx.
    for (i, (label, next)) in odd().into_iter().enumerate() {
        if next.len() > 3000 {
            continue;
        }
        for n in [next.clone(), format!("/{next}"), format!("//{next}")] {
            let a = w
                .post_public(
                    "/login",
                    false,
                    &[("username", "stud"), ("password", STUDENT_PW), ("next", &n)],
                    &format!("127.0.5.{i}"),
                )
                .await;
            assert_eq!(a.status, StatusCode::SEE_OTHER, "{label}: {}", a.text);
            let loc = a.location();
            assert!(
                loc.starts_with('/') && !loc.starts_with("//"),
                "{label}: next {n:?} → {loc:?}"
            );
        }
    }

    // Join: random and tampered tokens are "invalid" and assign nothing.
    let assignments = w.fx.store.assignments_all().unwrap();
    let mut runner = TestRunner::deterministic();
    let strategy = proptest::prop_oneof![
        ".{0,64}",
        "[A-Za-z0-9_-]{43}",
        (0..token.len(), proptest::char::any()).prop_map({
            let t = token.clone();
            move |(at, c)| {
                let mut s: Vec<char> = t.chars().collect();
                s[at] = c;
                s.into_iter().collect::<String>()
            }
        }),
    ];
    for _ in 0..64 {
        let t = strategy.new_tree(&mut runner).unwrap().current();
        if t == token || t.is_empty() {
            continue;
        }
        let enc: String = url::form_urlencoded::byte_serialize(t.as_bytes()).collect();
        let a = w
            .call(
                "stud",
                "POST",
                &format!("/join/{}", enc.replace('+', "%20")),
                None,
            )
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{t:?}: {}", a.text);
        assert_eq!(a.location(), "/portal?join=invalid", "{t:?}");
    }
    assert_eq!(w.fx.store.assignments_all().unwrap(), assignments);
}
