//! Node, storage and PVE pool names of a class request are checked against the cluster before
//! anything is stored or sent to PVE: an unknown one is refused with 400 naming it (and what the
//! cluster has); spec overrides other than cores, sockets and memory (a NIC bridge) are refused, not
//! ignored. Through the whole router against a real deployer over the fake cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};
use support::{call_json, fixture, message_of};
use web::auth::AuthConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_nodes_storages_pools_and_bridges_are_refused_by_name_before_anything_is_created() {
    let fx = fixture(AuthConfig::default()).await;
    let exec: Arc<dyn cloner::Executor> = Arc::new(cloner::LocalExecutor::new(Duration::from_secs(60)));
    let d = support::deployer(&fx, exec, 5860, 5879).await;
    support::open_template(&d, 9000).await;
    let app = web::app(fx.state.clone().with_deployer(d.clone()));
    let base = json!({"name": "Placed", "template_vmid": 9000, "pool_size": 1});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let classes_before = fx.store.classes.values().unwrap().len();
    let cases = [
        (
            with("node", json!("pve9")),
            "unknown node \"pve9\" in cluster lab; its nodes are pve1, pve2, pve3",
        ),
        (
            with("node", json!("pve1/../../cluster")),
            "unknown node \"pve1/../../cluster\"",
        ),
        (
            with("storage", json!("nosuch")),
            "unknown storage \"nosuch\" in cluster lab; its storages are",
        ),
        (
            with("pool", json!("class-evil")),
            "unknown pool \"class-evil\" in cluster lab; its pools are",
        ),
        (
            with("specs", json!({"bridge": "vmbr9"})),
            "unknown field `bridge`",
        ),
    ];
    for (body, want) in cases {
        let mark = fx.fake.request_count().unwrap();
        let (st, v) = call_json(&fx, &app, "teach", "POST", "/api/classes", Some(body.clone())).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(message_of(&v).contains(want), "{body}: {v}");
        let writes: Vec<_> = fx
            .fake
            .requests_since(mark)
            .unwrap()
            .into_iter()
            .filter(|r| r["method"] != "GET")
            .collect();
        assert!(
            writes.is_empty(),
            "{body}: nothing is sent to PVE but reads: {writes:?}"
        );
        assert_eq!(fx.store.classes.values().unwrap().len(), classes_before, "{body}");
        assert!(fx.store.jobs.values().unwrap().is_empty(), "{body}");
        assert!(d.reservations(None).unwrap().is_empty(), "{body}");
    }
    // The same request with names the cluster has is accepted.
    let ok = json!({"name": "Placed", "template_vmid": 9000, "pool_size": 0, "node": "pve2",
                    "storage": "labnfs", "pool": "class-netsec"});
    let (st, v) = call_json(&fx, &app, "teach", "POST", "/api/classes", Some(ok)).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    let job = d
        .wait_job(v["job"]["id"].as_str().unwrap(), Duration::from_secs(180))
        .await
        .unwrap();
    assert_eq!(job.state, store::JobState::Done, "{job:?}");
    let id = v["class"]["id"].as_str().unwrap().to_string();
    // A bridge in a later spec change is refused the same way.
    let (st, v) = call_json(
        &fx,
        &app,
        "teach",
        "PUT",
        &format!("/api/classes/{id}"),
        Some(json!({"specs": {"cores": 2, "bridge": "vmbr9"}})),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (st, v) = call_json(
        &fx,
        &app,
        "teach",
        "DELETE",
        &format!("/api/classes/{id}?confirm={id}"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    d.wait_job(v["job"]["id"].as_str().unwrap(), Duration::from_secs(180))
        .await
        .unwrap();
}
