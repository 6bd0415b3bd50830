//! The admin pages and their JSON through the real router: users (create, role, disable, reset
//! password), clusters (sync status, connection test against a real fake PVE cluster), assignments and
//! the audit log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod pages_common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use pages_common::{pages, unescape_slashes};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_pages_render_for_admins_only() {
    let p = pages().await;
    for uri in [
        "/admin/users",
        "/admin/clusters",
        "/admin/assignments",
        "/admin/audit",
    ] {
        let (status, _, html) = p.get_as(Some("root"), uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {html}");
        let html = unescape_slashes(&html);
        assert!(html.contains("href=\"/admin/users\""), "{uri}: admin navigation");
        assert!(
            html.contains("aria-current=\"page\""),
            "{uri}: current page marked"
        );
        for user in ["stud", "teach"] {
            let (status, _, _) = p.get_as(Some(user), uri).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{uri} as {user}");
        }
        let (status, _, _) = p.get_as(None, uri).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{uri} anonymous");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_page_lists_accounts_without_secrets() {
    let p = pages().await;
    let (s, _) = p
        .json_as(
            "root",
            "POST",
            "/api/users",
            json!({"name": "Newbie", "display_name": "New Bie", "role": "student", "password": "newbie-password"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, _, html) = p.get_as(Some("root"), "/admin/users").await;
    for name in ["stud", "stud2", "teach", "root", "newbie", "New Bie"] {
        assert!(html.contains(name), "{name} missing");
    }
    assert!(!html.contains("$argon2"), "no password hashes in the page");
    assert!(!html.contains("newbie-password"));
    // The admin's own row cannot be disabled or demoted from the page.
    let own = &html[html.find("data-user=\"root\"").unwrap()..];
    let own = &own[..own.find("</tr>").unwrap()];
    assert!(own.contains(">you<") && own.contains("disabled title=\"You cannot change your own role\""));
    assert!(!own.contains("data-user-toggle"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_created_changed_disabled_and_reset_through_the_api() {
    let p = pages().await;
    // Create: names are lower-cased, '@' and short passwords are refused, duplicates conflict.
    let (s, v) = p
        .json_as(
            "root",
            "POST",
            "/api/users",
            json!({"name": "Alice", "role": "teacher", "password": "alice-password"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["name"], "alice");
    assert_eq!(v["role"], "teacher");
    let (s, v) = p
        .json_as(
            "root",
            "POST",
            "/api/users",
            json!({"name": "eve@pve", "role": "admin", "password": "eve-password"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"]["message"].as_str().unwrap().contains("'@'"), "{v}");
    let (s, v) = p
        .json_as(
            "root",
            "POST",
            "/api/users",
            json!({"name": "bob", "role": "student", "password": "short"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("at least 8"),
        "{v}"
    );
    let (s, _) = p
        .json_as(
            "root",
            "POST",
            "/api/users",
            json!({"name": "ALICE", "role": "student", "password": "alice-password"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = p
        .json_as(
            "root",
            "POST",
            "/api/users",
            json!({"name": "carl", "role": "superuser", "password": "carl-password"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // The new account signs in with its password.
    let login = |pw: &str| {
        Request::post("/login")
            .header("content-type", "application/json")
            .body(Body::from(
                json!({"username": "alice", "password": pw}).to_string(),
            ))
            .unwrap()
    };
    let (s, _, _) = p.send(login("alice-password")).await;
    assert_eq!(s, StatusCode::OK);

    // Role change shows on the user's next request.
    let (alice_cookie, _) = p.session("alice");
    let me = |cookie: String| {
        Request::get("/api/me")
            .header("cookie", cookie)
            .body(Body::empty())
            .unwrap()
    };
    let (s, v) = p
        .json_as("root", "PUT", "/api/users/alice", json!({"role": "student"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, _, body) = p.send(me(alice_cookie.clone())).await;
    assert!(body.contains("\"role\":\"student\""), "{body}");

    // Disabling ends the sessions at once; enabling lets the user sign in again.
    let (s, v) = p
        .json_as("root", "PUT", "/api/users/alice", json!({"disabled": true}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["disabled"], true);
    let (s, _, _) = p.send(me(alice_cookie)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a disabled user's session is dead");
    let (s, _, _) = p.send(login("alice-password")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = p
        .json_as("root", "PUT", "/api/users/alice", json!({"disabled": false}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = p.send(login("alice-password")).await;
    assert_eq!(s, StatusCode::OK);

    // A password reset ends the old sessions; the new password works, the old one does not.
    let (old_cookie, _) = p.session("alice");
    let (s, v) = p
        .json_as(
            "root",
            "POST",
            "/api/users/alice/password",
            json!({"password": "brand-new-pass"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["sessions_revoked"], true);
    let (s, _, _) = p.send(me(old_cookie)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = p.send(login("alice-password")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = p.send(login("brand-new-pass")).await;
    assert_eq!(s, StatusCode::OK);

    // The admin cannot lock themselves out; unknown users are 404; realm users keep Proxmox passwords.
    let (s, v) = p
        .json_as("root", "PUT", "/api/users/root", json!({"disabled": true}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, _) = p
        .json_as("root", "PUT", "/api/users/root", json!({"role": "student"}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = p
        .json_as("root", "PUT", "/api/users/nobody", json!({"disabled": true}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    p.state
        .auth
        .store
        .upsert_realm_user("ann@pve", store::Role::Student, store::Role::Student, vec![], 0)
        .unwrap();
    let (s, v) = p
        .json_as(
            "root",
            "POST",
            "/api/users/ann@pve/password",
            json!({"password": "whatever-pass"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(v["error"]["message"].as_str().unwrap().contains("Proxmox"), "{v}");

    // Students and teachers cannot use any of it.
    for user in ["stud", "teach"] {
        let (s, _) = p
            .json_as(
                user,
                "POST",
                "/api/users",
                json!({"name": "x1", "role": "admin", "password": "x1-password"}),
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, _) = p
            .json_as(user, "PUT", "/api/users/stud2", json!({"role": "admin"}))
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN);
    }

    // Every change is in the audit log, with who, from where and the result; never a password.
    let (_, _, html) = p.get_as(Some("root"), "/admin/audit?q=user.").await;
    for what in [
        "user.create",
        "user.update",
        "user.password",
        "127.0.0.1",
        "alice (disabled)",
    ] {
        assert!(html.contains(what), "audit lacks {what}");
    }
    assert!(html.contains("you cannot disable your own account"));
    assert!(!html.contains("brand-new-pass") && !html.contains("alice-password"));
    let (_, _, html) = p.get_as(Some("root"), "/admin/audit?q=login").await;
    assert!(html.contains("<td class=\"mono\">login</td>"), "{html}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_page_shows_sync_state_staleness_and_the_active_cluster() {
    let p = pages().await;
    let (_, _, html) = p.get_as(Some("root"), "/admin/clusters").await;
    assert!(html.contains("595 No route to host"), "{html}");
    assert!(html.contains("stale since 2023-11-14 22:13:20 UTC"));
    let annex = &html[html.find("data-cluster=\"annex\"").unwrap()..];
    assert!(annex[..annex.find("</tr>").unwrap()].contains("data-switch=\"annex\""));
    let lab = &html[html.find("data-cluster=\"lab\"").unwrap()..];
    let lab = &lab[..lab.find("</tr>").unwrap()];
    assert!(lab.contains(">default<") && lab.contains(">active<"), "{lab}");
    assert!(html.contains("data-post=\"/api/sync/trigger\""));
    assert!(
        unescape_slashes(&html).contains("href=\"/admin/reload\""),
        "links the reload status"
    );
    // Switching the active cluster shows on the page.
    let (s, _) = p
        .json_as(
            "root",
            "POST",
            "/api/clusters/switch",
            json!({"cluster": "annex"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, _, html) = p.get_as(Some("root"), "/admin/clusters").await;
    assert!(html.contains("active cluster (<strong>annex</strong>)"), "{html}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_test_connects_to_a_real_fake_cluster_and_reports_pve_errors() {
    let fake = tokio::task::spawn_blocking(testkit::FakeCluster::shared)
        .await
        .unwrap();
    let p = pages().await;
    let good = json!({
        "url": fake.url, "token_id": fake.token_id, "token_secret": fake.token_secret,
        "fingerprint": fake.cert_sha256,
    });
    let (s, v) = p
        .json_as("root", "POST", "/api/clusters/test", good.clone())
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["nodes"].as_array().unwrap().len(), 3, "{v}");
    assert!(v["guests"].as_u64().unwrap() > 40, "{v}");
    assert!(!v["version"].as_str().unwrap().is_empty());

    // A wrong pin: refused at the TLS handshake, said so.
    let mut bad_pin = good.clone();
    bad_pin["fingerprint"] = json!(format!("{}:00", &fake.cert_sha256[..fake.cert_sha256.len() - 3]));
    let (s, v) = p.json_as("root", "POST", "/api/clusters/test", bad_pin).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["ok"], false, "{v}");
    assert!(!v["error"]["message"].as_str().unwrap().is_empty(), "{v}");

    // A wrong secret: PVE's own refusal.
    let mut bad_secret = good.clone();
    bad_secret["token_secret"] = json!("00000000-0000-4000-8000-000000000000");
    let (s, v) = p.json_as("root", "POST", "/api/clusters/test", bad_secret).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["ok"], false, "{v}");

    // Malformed input is a 400 naming the field; nothing is contacted.
    for (field, value) in [
        ("url", json!("ftp://x")),
        ("token_id", json!("no-bang")),
        ("fingerprint", json!("AA:BB")),
        ("token_secret", json!("")),
    ] {
        let mut body = good.clone();
        body[field] = value;
        let (s, v) = p.json_as("root", "POST", "/api/clusters/test", body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{field}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(field),
            "{field}: {v}"
        );
    }
    // The secret never reaches the audit log.
    let (_, _, html) = p.get_as(Some("root"), "/admin/audit?q=cluster.test").await;
    assert!(html.contains("cluster.test") && !html.contains(&fake.token_secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignments_page_lists_direct_assignments_and_class_mappings() {
    let p = pages().await;
    let (_, _, html) = p.get_as(Some("root"), "/admin/assignments").await;
    let direct = &html[html.find("id=\"direct\"").unwrap()..];
    let direct = &direct[..direct.find("</table>").unwrap()];
    assert!(
        direct.contains("stud2-linux") && direct.contains("lab/104"),
        "{direct}"
    );
    let mappings = &html[html.find("id=\"mappings\"").unwrap()..];
    let mappings = &mappings[..mappings.find("</table>").unwrap()];
    assert!(mappings.contains("Networks 101") && mappings.contains("stud-router"));
    assert!(
        !mappings.contains("stud2-linux"),
        "VMs without a class are not mappings"
    );
    assert!(
        html.contains("<option value=\"net1\">Networks 101 (net1)</option>"),
        "class picker"
    );
    assert!(html.contains("<option value=\"stud2\">"), "user picker");
    // What the page's forms post: a new direct assignment and a mapping, then both are listed.
    let (s, v) = p
        .json_as(
            "root",
            "POST",
            "/api/user-vm-assignments",
            json!({"user": "stud2", "cluster": "lab", "vmid": 105, "baseline_snapshot": "baseline"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = p
        .json_as(
            "root",
            "POST",
            "/api/vm-class-mappings",
            json!({"class_id": "net1", "cluster": "lab", "vmid": 104, "role": "student"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (_, _, html) = p.get_as(Some("root"), "/admin/assignments").await;
    let mappings = &html[html.find("id=\"mappings\"").unwrap()..];
    assert!(mappings[..mappings.find("</table>").unwrap()].contains("stud2-linux"));
    assert!(html.contains("admin-box") && html.contains(">baseline<"));
}
