//! Class hours over HTTP against the real router, store and hours runner: a class's teachers read and
//! change its hours, students and other teachers cannot; bad settings answer 400 naming the field and
//! change nothing, also a quota below what a student used; the class's usage and a student's own
//! remaining time are listed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::http::StatusCode;
use serde_json::json;
use store::{AssignmentRecord, AssignmentRole, UsageRecord, usage_key};
use support::{call_json, fixture};
use web::auth::AuthConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teachers_set_hours_bad_input_names_the_field_and_usage_is_listed() {
    let fx = fixture(AuthConfig::default()).await;
    fx.store
        .assignments
        .insert(
            "hours-stud",
            &AssignmentRecord {
                id: "hours-stud".into(),
                cluster: "lab".into(),
                vmid: 1199,
                user: "stud".into(),
                class_id: Some("c1".into()),
                role: AssignmentRole::Student,
                ..AssignmentRecord::default()
            },
        )
        .unwrap();
    let hours = hours::Hours::start(
        fx.store.clone(),
        fx.state.ops.clone(),
        fx.state.inventory.clone(),
        hours::system_clock(),
    );
    let app = web::app(fx.state.clone().with_hours(hours.clone()));
    let call =
        |who: &'static str, method: &'static str, path: &'static str, body: Option<serde_json::Value>| {
            let app = app.clone();
            let fx = &fx;
            async move { call_json(fx, &app, who, method, path, body).await }
        };

    let (st, v) = call("teach", "GET", "/api/classes/c1/hours", None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(v["hours"].is_null(), "{v}");
    let (st, _) = call("stud", "GET", "/api/classes/c1/hours", None).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = call("teach2", "PUT", "/api/classes/c1/hours", Some(json!(null))).await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // A slot that ends before it starts: 400 naming the field; nothing is stored.
    let bad = json!({"timetable": {"zone": "Europe/London",
        "weekly": [{"days": ["mon"], "start": "10:00", "end": "09:00"}]}, "quota_hours": 10});
    let (st, v) = call("teach", "PUT", "/api/classes/c1/hours", Some(bad)).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["field"], "timetable.weekly[0].end", "{v}");
    assert!(hours.settings("c1").unwrap().is_none());
    let (st, v) = call(
        "co",
        "PUT",
        "/api/classes/c1/hours",
        Some(json!({"quota_hours": "ten"})),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("quota_hours"),
        "{v}"
    );

    let good = json!({"timetable": {"zone": "Europe/London",
        "weekly": [{"days": ["mon", "wed"], "start": "09:00", "end": "10:30"}]}, "quota_hours": 10,
        "extra_minutes": {"stud": 30}});
    let (st, v) = call("co", "PUT", "/api/classes/c1/hours", Some(good)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (_, v) = call("root", "GET", "/api/classes/c1/hours", None).await;
    assert_eq!(v["hours"]["quota_hours"], 10, "{v}");
    assert_eq!(v["hours"]["timetable"]["weekly"][0]["end"], "10:30", "{v}");

    let (st, v) = call("teach", "GET", "/api/classes/c1/usage", None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["usage"][0]["user"], "stud", "{v}");
    assert_eq!(v["usage"][0]["remaining_text"], "10 h 30 min", "{v}");
    let (st, v) = call("stud", "GET", "/api/me/usage", None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["usage"][0]["class"], "c1", "{v}");
    assert_eq!(v["usage"][0]["usage"]["remaining_secs"], 37_800, "{v}");
    assert!(v["usage"][0]["start_refused"].is_null(), "{v}");

    // A quota below what the student used already is refused by field; the old one stays.
    fx.store
        .usage
        .insert(
            &usage_key("c1", "stud"),
            &UsageRecord {
                used_secs: 5 * 3600,
                ..UsageRecord::default()
            },
        )
        .unwrap();
    let lower = json!({"quota_hours": 2});
    let (st, v) = call("teach", "PUT", "/api/classes/c1/hours", Some(lower)).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["field"], "quota_hours", "{v}");
    assert_eq!(hours.settings("c1").unwrap().unwrap().quota_hours, Some(10));

    // With every hour used, the student's Start of their class VM (`support::OWN_VM`, 1101, in c1) is
    // refused before PVE is asked, naming the quota.
    fx.store
        .usage
        .insert(
            &usage_key("c1", "stud"),
            &UsageRecord {
                used_secs: 11 * 3600,
                ..UsageRecord::default()
            },
        )
        .unwrap();
    let (st, v) = call("stud", "POST", "/api/vm/1101/start?cluster=lab", None).await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "no_hours_left", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("10 h") && msg.contains("teach"), "{msg}");
    hours.shutdown().await;
}
