//! The sign-in page and the student portal through the real router: what each role sees in the first
//! response, the stale marker, the buttons, and a snapshot of a student's portal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod pages_common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use pages_common::{pages, unescape_slashes};

/// Snapshot with the volatile parts (static version, CSRF token, render time) replaced.
macro_rules! assert_page_snapshot {
    ($name:expr, $body:expr) => {
        insta::with_settings!({filters => vec![
            (r"/static/[0-9a-f]{16}/", "/static/[version]/"),
            (r#"name="csrf-token" content="[A-Za-z0-9_-]+""#, r#"name="csrf-token" content="[csrf]""#),
            (r#"name="_csrf" value="[A-Za-z0-9_-]+""#, r#"name="_csrf" value="[csrf]""#),
            (r"page rendered \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", "page rendered [now]"),
        ]}, {
            insta::assert_snapshot!($name, $body);
        });
    };
}

/// The `<article>` of VM `key` (`cluster/vmid`) in a portal page.
fn card<'a>(html: &'a str, key: &str) -> Option<&'a str> {
    let start = html.find(&format!("data-key=\"{key}\""))?;
    let end = html[start..].find("</article>")? + start;
    Some(&html[start..end])
}

fn keys(html: &str) -> Vec<String> {
    let html = unescape_slashes(html);
    html.match_indices("data-key=\"")
        .map(|(i, m)| {
            let rest = &html[i + m.len()..];
            rest[..rest.find('"').unwrap()].to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn student_portal_matches_snapshot() {
    let p = pages().await;
    let (status, headers, html) = p.get_as(Some("stud"), "/portal").await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    assert_page_snapshot!("student_portal", html);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_renders_only_the_callers_vms_in_the_first_response() {
    let p = pages().await;
    let (_, _, html) = p.get_as(Some("stud"), "/portal").await;
    assert_eq!(keys(&html), ["annex/201", "lab/101", "lab/102", "lab/103"]);
    assert!(!html.contains("stud2-linux") && !html.contains("admin-box"));
    assert!(
        !html.contains("Loading VMs"),
        "no spinner wall: the cards are in the page"
    );

    let (_, _, html) = p.get_as(Some("stud2"), "/portal").await;
    assert_eq!(keys(&html), ["lab/104"]);

    // The teacher sees the VMs of the class they own.
    let (_, _, html) = p.get_as(Some("teach"), "/portal").await;
    assert_eq!(keys(&html), ["lab/101", "lab/103"]);

    // Admins see their own VMs, and every guest on request.
    let (_, _, html) = p.get_as(Some("root"), "/portal").await;
    assert_eq!(keys(&html), ["lab/105"]);
    assert!(unescape_slashes(&html).contains("href=\"/portal?all=1\""));
    let (_, _, html) = p.get_as(Some("root"), "/portal?all=1").await;
    assert_eq!(keys(&html).len(), 6);
    // A student cannot ask for everything.
    let (_, _, html) = p.get_as(Some("stud"), "/portal?all=1").await;
    assert_eq!(keys(&html).len(), 4);

    // A new assignment shows on the next page load.
    p.state
        .auth
        .store
        .create_assignment(store::AssignmentRecord {
            cluster: "lab".into(),
            vmid: 105,
            user: "stud2".into(),
            ..Default::default()
        })
        .unwrap();
    p.state.auth.rebuild_index();
    let (_, _, html) = p.get_as(Some("stud2"), "/portal").await;
    assert_eq!(keys(&html), ["lab/104", "lab/105"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_cards_show_state_ip_class_stale_and_fitting_buttons() {
    let p = pages().await;
    let (_, _, html) = p.get_as(Some("stud"), "/portal").await;
    let html = unescape_slashes(&html);

    let running = card(&html, "lab/101").unwrap();
    assert!(running.contains("10.20.0.101") && running.contains("Networks 101"));
    assert!(running.contains("data-op=\"start\" disabled"), "{running}");
    assert!(running.contains("data-op=\"stop\">") && running.contains("data-op=\"shutdown\">"));
    assert!(
        running.contains("data-op=\"revert\">"),
        "has a baseline: revert enabled"
    );
    assert!(running.contains("data-connect=\"/api/vm/101/connect?cluster=lab\""));
    assert!(running.contains("data-baseline=\"baseline\""));

    let stopped = card(&html, "lab/102").unwrap();
    // A backup holds this VM: every button is disabled and says why.
    assert!(stopped.contains("Locked by Proxmox: backup"), "{stopped}");
    for op in ["start", "shutdown", "stop", "revert"] {
        assert!(
            stopped.contains(&format!(
                "data-op=\"{op}\" disabled title=\"Locked by Proxmox (backup): wait until it has finished\""
            )),
            "{op}: {stopped}"
        );
    }
    assert!(stopped.contains("stud-win &lt;2&gt;"), "names are escaped");
    assert!(stopped.contains("This VM has no baseline snapshot to revert to"));

    let pending = card(&html, "lab/103").unwrap();
    assert!(pending.contains("finding IP…"), "{pending}");

    let stale = card(&html, "annex/201").unwrap();
    assert!(
        stale.contains("stale since 2023-11-14 22:13:20 UTC: 595 No route to host"),
        "{stale}"
    );
    assert!(html.contains("class=\"vm-card is-stale\" data-key=\"annex/201\""));
    assert!(html.contains("Cluster Annex is stale since 2023-11-14 22:13:20 UTC: 595 No route to host."));
    // The page carries the CSRF token for the buttons and the sign-out form, and loads portal.js.
    assert!(html.contains("<meta name=\"csrf-token\" content=\""));
    assert!(html.contains("name=\"_csrf\""));
    assert!(html.contains("/portal.js\" defer></script>"));
    // Students get no admin navigation.
    assert!(!html.contains("href=\"/admin/users\"") && html.contains("href=\"/portal\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_needs_sign_in_and_keeps_the_way_back() {
    let p = pages().await;
    let (status, headers, _) = p.get_as(None, "/portal").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/login?next=%2Fportal");
    // `/` is home for everyone: students land on their portal, admins on the overview.
    let (status, headers, _) = p.get_as(Some("stud"), "/").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/portal");
    let (status, _, html) = p.get_as(Some("root"), "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("<h1>Overview</h1>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_page_shows_the_form_the_error_and_keeps_next() {
    let p = pages().await;
    let (status, _, html) = p.get_as(None, "/login?next=%2Fportal").await;
    assert_eq!(status, StatusCode::OK);
    let html = unescape_slashes(&html);
    assert!(html.contains("<form method=\"post\" action=\"/login\""), "{html}");
    assert!(html.contains("name=\"next\" value=\"/portal\""));
    assert!(html.contains("autocomplete=\"current-password\""));
    assert!(html.contains("alice@pve"), "realm hint");
    assert!(
        !html.contains("role=\"alert\""),
        "no error before a failed attempt"
    );
    assert!(
        !html.contains("href=\"/portal\""),
        "no navigation for anonymous visitors"
    );

    let (_, _, html) = p.get_as(None, "/login?error=invalid&next=%2Fportal").await;
    assert!(html.contains("Wrong user name or password."), "{html}");
    // A foreign `next` is dropped, not echoed.
    let (_, _, html) = p.get_as(None, "/login?next=%2F%2Fevil.example").await;
    assert!(html.contains("name=\"next\" value=\"\""), "{html}");
    assert!(!html.contains("evil.example"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_in_users_visiting_login_go_home() {
    let p = pages().await;
    for (user, home) in [("stud", "/portal"), ("teach", "/portal"), ("root", "/")] {
        let (status, headers, _) = p.get_as(Some(user), "/login").await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{user}");
        assert_eq!(headers[header::LOCATION], home, "{user}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_with_the_form_leads_to_the_portal() {
    let p = pages().await;
    let hash = web::auth::password::hash_blocking(&pve::Secret::new("stud-password-1")).unwrap();
    p.state.auth.store.set_password_hash("stud", hash, false).unwrap();
    let form = |pw: &str| {
        Request::post("/login")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(format!("username=stud&password={pw}&next=%2Fportal")))
            .unwrap()
    };
    let (status, headers, _) = p.send(form("wrong")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/login?error=invalid&next=%2Fportal");
    let (status, headers, _) = p.send(form("stud-password-1")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], "/portal");
    let cookie = headers[header::SET_COOKIE].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_string();
    let (status, _, html) = p
        .send(
            Request::get("/portal")
                .header("cookie", cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Stu Dent") && html.contains("stud-linux"));
    assert!(html.contains("Sign out"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_and_login_have_no_inline_script_or_style() {
    let p = pages().await;
    for (user, uri) in [(Some("stud"), "/portal"), (None, "/login")] {
        let (_, _, html) = p.get_as(user, uri).await;
        for (i, _) in html.match_indices("<script") {
            let tag = &html[i..i + html[i..].find('>').unwrap()];
            assert!(tag.contains(" src="), "{uri}: inline script {tag}");
        }
        for bad in [" style=", " onclick=", " onload=", "javascript:"] {
            assert!(!html.contains(bad), "{uri} contains {bad}");
        }
    }
}

#[test]
fn portal_script_and_server_agree_on_the_buttons() {
    // portal.js repeats VmButtons::for_state after every live update: keep both in step.
    use web::pages::VmButtons;
    let b = VmButtons::for_state("running", false, true);
    assert_eq!((b.start, b.shutdown, b.stop, b.revert), (false, true, true, true));
    let b = VmButtons::for_state("stopped", false, false);
    assert_eq!(
        (b.start, b.shutdown, b.stop, b.revert),
        (true, false, false, false)
    );
    let b = VmButtons::for_state("paused", false, true);
    assert_eq!((b.start, b.shutdown, b.stop), (true, false, true));
    let b = VmButtons::for_state("unknown", false, false);
    assert_eq!((b.start, b.shutdown, b.stop), (true, true, true));
    let b = VmButtons::for_state("running", true, true);
    assert_eq!(
        (b.start, b.shutdown, b.stop, b.revert),
        (false, false, false, false)
    );
    let js = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../themes/default/static/portal.js"),
    )
    .unwrap();
    for rule in [
        "start: unknown || state === \"stopped\" || state === \"paused\" || state === \"hibernated\"",
        "shutdown: unknown || state === \"running\"",
        "stop: unknown || state === \"running\" || state === \"paused\"",
    ] {
        assert!(js.contains(rule), "portal.js lacks {rule}");
    }
}

/// After an invite link (`/join/{token}` redirects here), the portal says what happened in plain words:
/// joined, on the waiting list (with the place), or an invalid link; nothing without such a query, and
/// the "live" pill only for signed-in users.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_tells_the_outcome_of_an_invite_link() {
    let p = pages().await;
    let notice = |html: &str| {
        html.split("id=\"notice\"")
            .nth(1)
            .and_then(|rest| rest.split("</p>").next())
            .map(|s| s.trim_start_matches(" role=\"status\">").to_string())
    };
    let (status, _, html) = p.get_as(Some("stud"), "/portal").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(notice(&html), None, "no notice without an invite outcome");
    assert!(html.contains("id=\"live\""), "signed in: the live pill");

    let (_, _, html) = p.get_as(Some("stud"), "/portal?joined=netsec").await;
    let n = notice(&html).expect("a notice");
    assert!(n.starts_with("You joined netsec"), "{n}");
    assert!(html.contains("class=\"banner ok\""), "{html}");

    let (_, _, html) = p
        .get_as(Some("stud"), "/portal?join=full&class=netsec&position=3")
        .await;
    let n = notice(&html).expect("a notice");
    assert!(
        n.contains("no free VM") && n.contains("number 3 on the waiting list"),
        "{n}"
    );

    let (_, _, html) = p.get_as(Some("stud"), "/portal?join=invalid").await;
    let n = notice(&html).expect("a notice");
    assert!(n.contains("not valid") && n.contains("Ask your teacher"), "{n}");
    assert!(html.contains("class=\"banner bad\""));

    // A class name in the query is shown escaped, never as markup.
    let (_, _, html) = p
        .get_as(Some("stud"), "/portal?joined=%3Cscript%3Ex%3C%2Fscript%3E")
        .await;
    assert!(!html.contains("<script>x</script>"), "{html}");

    let (_, _, html) = p.get_as(None, "/login").await;
    assert!(!html.contains("id=\"live\""), "signed out: no live pill");
}
