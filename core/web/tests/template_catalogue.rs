//! The template catalogue through the whole router (`web::app` + `oneshot`) against a real deployer
//! over the fake cluster: teachers create classes only from catalogue templates opened to them; only
//! admins register, only real PVE templates (never an ordinary VM, never a class base); visibility per
//! template; unregistering stops new classes while classes made from it keep working; every change is
//! in the audit log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};
use support::{Fixture, call_json, fixture, message_of};
use web::auth::AuthConfig;

struct Web {
    fx: Fixture,
    app: axum::Router,
    deployer: deploy::Deployer,
}

/// Tests of this binary run in parallel on one fake cluster: each gets its own VMID range.
async fn web(lo: u32, hi: u32) -> Web {
    let fx = fixture(AuthConfig::default()).await;
    let exec: Arc<dyn cloner::Executor> = Arc::new(cloner::LocalExecutor::new(Duration::from_secs(60)));
    let deployer = support::deployer(&fx, exec, lo, hi).await;
    let app = web::app(fx.state.clone().with_deployer(deployer.clone()));
    Web { fx, app, deployer }
}

impl Web {
    async fn call(&self, who: &str, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        call_json(&self.fx, &self.app, who, method, path, body).await
    }

    fn catalogue(&self) -> Vec<String> {
        self.fx
            .store
            .templates
            .values()
            .unwrap()
            .iter()
            .map(|t| format!("{}/{}", t.cluster, t.vmid))
            .collect()
    }

    fn audited(&self, action: &str) -> Vec<store::AuditRecord> {
        self.fx
            .store
            .audit_recent(1000)
            .unwrap()
            .into_iter()
            .filter(|a| a.action == action)
            .collect()
    }

    async fn visible_vmids(&self, who: &str) -> Vec<u64> {
        let (st, v) = self.call(who, "GET", "/api/templates", None).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        v["templates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["vmid"].as_u64().unwrap())
            .collect()
    }
}

fn class_body(name: &str, vmid: u32) -> Value {
    json!({"name": name, "template_vmid": vmid, "pool_size": 0, "node": "pve1"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teachers_cannot_create_classes_from_templates_outside_the_catalogue_or_register_any() {
    let w = web(5700, 5719).await;
    // A real PVE template nobody registered: refused, and nothing enters the catalogue.
    let (st, v) = w
        .call("teach", "POST", "/api/classes", Some(class_body("Sneaky", 9000)))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    assert!(
        message_of(&v).contains("not in the template catalogue open to you"),
        "{v}"
    );
    // An ordinary VM: refused the same way, and it is NOT registered for anyone (no catalogue entry).
    let (st, v) = w
        .call("teach", "POST", "/api/classes", Some(class_body("Plain VM", 100)))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(w.catalogue(), Vec::<String>::new());
    assert_eq!(w.visible_vmids("teach2").await, Vec::<u64>::new());
    // By name: looked up only in the catalogue, never in the cluster.
    let (st, v) = w
        .call(
            "teach",
            "POST",
            "/api/classes",
            Some(json!({"name": "By name", "template": "tpl-ubuntu-24.04", "pool_size": 0})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(w.catalogue(), Vec::<String>::new());
    // Teachers may not register at all.
    let (st, _) = w
        .call(
            "teach",
            "POST",
            "/api/templates",
            Some(json!({"vmid": 9000, "visibility": "all"})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert!(
        w.fx.store
            .classes
            .values()
            .unwrap()
            .iter()
            .all(|c| c.id == "c1" || c.id == "c2")
    );
    // Every refused creation is in the audit log with its reason.
    let refused = w.audited("class.create");
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert!(refused.iter().all(|a| a.user == "teach" && a.result != "ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_register_only_real_pve_templates_and_never_a_class_base_or_class_vm() {
    let w = web(5720, 5739).await;
    // An ordinary VM (template: 0) is refused with the fix named.
    let (st, v) = w
        .call(
            "root",
            "POST",
            "/api/templates",
            Some(json!({"vmid": 100, "visibility": "all"})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        message_of(&v).contains("is not a PVE template (template: 1)"),
        "{v}"
    );
    // A real template, open to one teacher only.
    let (st, v) = w
        .call(
            "root",
            "POST",
            "/api/templates",
            Some(json!({"vmid": 9000, "visibility": "teachers", "teachers": ["teach2"]})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    // teach2 deploys a class; its class base and teacher VM are PVE VMs Proxlab made.
    let (st, v) = w
        .call(
            "teach2",
            "POST",
            "/api/classes",
            Some(class_body("Base owner", 9000)),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    let job = v["job"]["id"].as_str().unwrap().to_string();
    let class_id = v["class"]["id"].as_str().unwrap().to_string();
    let j = w.deployer.wait_job(&job, Duration::from_secs(180)).await.unwrap();
    assert_eq!(j.state, store::JobState::Done, "{j:?}");
    let views = w.deployer.class_vm_views(&class_id).unwrap();
    let base = views
        .iter()
        .find(|v| v.role == deploy::VmRole::Base)
        .unwrap()
        .vmid;
    let teacher_vm = views
        .iter()
        .find(|v| v.role == deploy::VmRole::Teacher)
        .unwrap()
        .vmid;
    // Neither the class base (a PVE template) nor the class's teacher VM can enter the catalogue.
    for vmid in [base, teacher_vm] {
        let (st, v) = w
            .call(
                "root",
                "POST",
                "/api/templates",
                Some(json!({"vmid": vmid, "visibility": "all"})),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{vmid}: {v}");
        assert!(message_of(&v).contains(&format!("of class {class_id}")), "{v}");
    }
    // Another teacher cannot build on teach2's class base either.
    let (st, v) = w
        .call(
            "teach",
            "POST",
            "/api/classes",
            Some(class_body("Steal base", base)),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(w.catalogue(), vec!["lab/9000".to_string()]);
    let results: Vec<String> = w
        .audited("template.register")
        .iter()
        .map(|a| a.result.clone())
        .collect();
    assert_eq!(results.len(), 4, "{results:?}");
    assert_eq!(results.iter().filter(|r| *r == "ok").count(), 1, "{results:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visibility_limits_which_teachers_see_and_use_a_template_and_unregistering_keeps_classes_working() {
    let w = web(5740, 5759).await;
    // Named teachers must be teacher accounts.
    for (teachers, want) in [
        (json!(["stud"]), "stud is a student"),
        (json!(["nobody"]), "there is no user \"nobody\""),
        (json!([]), "name at least one teacher"),
    ] {
        let (st, v) = w
            .call(
                "root",
                "POST",
                "/api/templates",
                Some(json!({"vmid": 9000, "visibility": "teachers", "teachers": teachers})),
            )
            .await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
        assert!(message_of(&v).contains(want), "{v}");
    }
    let (st, v) = w
        .call(
            "root",
            "POST",
            "/api/templates",
            Some(json!({"vmid": 9000, "visibility": "everyone"})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(w.catalogue(), Vec::<String>::new());

    // Registered without a visibility: admins only.
    let (st, v) = w
        .call("root", "POST", "/api/templates", Some(json!({"vmid": 9000})))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["visibility"]["kind"], "admins_only");
    assert_eq!(w.visible_vmids("teach").await, Vec::<u64>::new());
    assert_eq!(w.visible_vmids("root").await, vec![9000]);
    let (st, _) = w
        .call("teach", "POST", "/api/classes", Some(class_body("Early", 9000)))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // Opened to teach only: teach sees and uses it, teach2 neither.
    let (st, v) = w
        .call(
            "root",
            "PUT",
            "/api/templates/lab/9000",
            Some(json!({"visibility": "teachers", "teachers": ["teach"]})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(w.visible_vmids("teach").await, vec![9000]);
    assert_eq!(w.visible_vmids("teach2").await, Vec::<u64>::new());
    let (st, _) = w
        .call("teach2", "GET", "/api/templates/by-name/tpl-ubuntu-24.04", None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, v) = w
        .call(
            "teach2",
            "POST",
            "/api/classes",
            Some(class_body("Not yours", 9000)),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    // Teachers may not change visibility or unregister.
    let (st, _) = w
        .call(
            "teach",
            "PUT",
            "/api/templates/lab/9000",
            Some(json!({"visibility": "all"})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = w.call("teach", "DELETE", "/api/templates/lab/9000", None).await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // teach makes a class; then the admin unregisters the template.
    let (st, v) = w
        .call("teach", "POST", "/api/classes", Some(class_body("Kept", 9000)))
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    let id = v["class"]["id"].as_str().unwrap().to_string();
    let j = w
        .deployer
        .wait_job(v["job"]["id"].as_str().unwrap(), Duration::from_secs(180))
        .await
        .unwrap();
    assert_eq!(j.state, store::JobState::Done, "{j:?}");
    let (st, v) = w.call("root", "DELETE", "/api/templates/lab/9000", None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(w.catalogue(), Vec::<String>::new());
    let (st, _) = w.call("root", "DELETE", "/api/templates/lab/9000", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // No new class from it, while the class made from it keeps working: it grows by one VM.
    let (st, v) = w
        .call("teach", "POST", "/api/classes", Some(class_body("After", 9000)))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    let (st, v) = w
        .call(
            "teach",
            "POST",
            &format!("/api/classes/{id}/vms"),
            Some(json!({"count": 1})),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    let j = w
        .deployer
        .wait_job(v["job"]["id"].as_str().unwrap(), Duration::from_secs(180))
        .await
        .unwrap();
    assert_eq!(j.state, store::JobState::Done, "{j:?}");

    // Every change is audited with who and which template.
    for action in ["template.register", "template.visibility", "template.unregister"] {
        let entries = w.audited(action);
        assert!(
            entries
                .iter()
                .any(|a| a.user == "root" && a.target == "lab/9000" && a.result.starts_with("ok")),
            "{action}: {entries:?}"
        );
    }
    // Cleanup of the class's VMs on the shared fake cluster.
    let (st, _) = w
        .call(
            "teach",
            "DELETE",
            &format!("/api/classes/{id}?confirm={id}"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED);
}
