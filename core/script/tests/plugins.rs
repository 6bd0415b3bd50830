//! Plugin manifests, hook binding, dispatch and per-class settings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::*;
use script::{Hook, Limits, SetSources};
use serde_json::json;

const MANIFEST: &str = r#"
name = "greeter"
version = "0.1.0"
description = "test plugin"

[[hooks]]
name = "on_vm_started"

[[hooks]]
name = "on_class_deployed"
script = "deployed.rhai"

[settings.greeting]
type = "string"
default = "hello"
"#;

fn sources(dirs: Vec<std::path::PathBuf>, settings: serde_json::Value) -> SetSources {
    SetSources {
        plugin_dirs: dirs,
        enabled_plugins: vec!["greeter".into()],
        plugin_settings: [("greeter".to_string(), settings)].into_iter().collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_get_event_settings_and_class_overrides() {
    let dir = tempfile::tempdir().unwrap();
    write_files(
        dir.path(),
        &[
            ("greeter/plugin.toml", MANIFEST),
            (
                "greeter/main.rhai",
                "fn on_vm_started(ctx) { `${ctx.settings.greeting} ${ctx.vm.name} / ${ctx.class.settings.greeting} (${ctx.hook})` }",
            ),
            (
                "greeter/deployed.rhai",
                "fn on_class_deployed(ctx) { ctx.job.failed.len() }",
            ),
            ("greeter/templates/panel.html", "<p>{{ greeting }}</p>"),
        ],
    );
    let rt = null_runtime(Limits::default());
    let set = Arc::new(
        rt.load_set(&sources(vec![dir.path().into()], json!({"greeting": "hi"})))
            .unwrap(),
    );
    let p = set.plugin("greeter").unwrap();
    assert_eq!(p.manifest.version, "0.1.0");
    assert!(p.templates_dir.as_ref().unwrap().ends_with("greeter/templates"));
    assert!(p.hook(Hook::OnTick).is_none());

    let ev =
        json!({"vm": {"name": "lab-1"}, "class": {"id": "c", "plugins": {"greeter": {"greeting": "yo"}}}});
    let runs = rt.dispatch(&set, Hook::OnVmStarted, ev).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].plugin, "greeter");
    assert_eq!(
        runs[0].result.as_ref().unwrap(),
        &json!("hi lab-1 / yo (on_vm_started)")
    );

    let runs = rt
        .dispatch(&set, Hook::OnClassDeployed, json!({"job": {"failed": [1, 2]}}))
        .await;
    assert_eq!(runs[0].result.as_ref().unwrap(), &json!(2));
    // No plugin implements on_vm_stopped: nothing runs.
    assert!(rt.dispatch(&set, Hook::OnVmStopped, json!({})).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_problems_are_load_errors_naming_file_and_function() {
    let dir = tempfile::tempdir().unwrap();
    write_files(
        dir.path(),
        &[
            ("greeter/plugin.toml", MANIFEST),
            ("greeter/main.rhai", "fn on_vm_started() { () }"),
        ],
    );
    let rt = null_runtime(Limits::default());
    let errs = rt
        .load_set(&sources(vec![dir.path().into()], json!({})))
        .unwrap_err();
    let text = script::format_load_errors(&errs);
    assert!(
        text.contains("main.rhai: missing entry point `fn on_vm_started(ctx)`"),
        "{text}"
    );
    assert!(text.contains("deployed.rhai\" not found"), "{text}");

    write_files(
        dir.path(),
        &[("greeter/plugin.toml", "name = \"other\"\nversion = 1\n")],
    );
    let errs = rt
        .load_set(&sources(vec![dir.path().into()], json!({})))
        .unwrap_err();
    assert!(errs[0].file.ends_with("greeter/plugin.toml"));
    assert!(errs[0].line.is_some(), "TOML errors carry a line: {errs:?}");

    let none = rt
        .load_set(&sources(vec![dir.path().join("missing")], json!({})))
        .unwrap_err();
    assert!(none[0].message.contains("enabled plugin \"greeter\" not found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_plugin_dir_overrides_an_earlier_one() {
    let shipped = tempfile::tempdir().unwrap();
    let site = tempfile::tempdir().unwrap();
    let manifest = "name = \"greeter\"\nversion = \"1\"\n[[hooks]]\nname = \"on_vm_started\"\n";
    write_files(
        shipped.path(),
        &[
            ("greeter/plugin.toml", manifest),
            ("greeter/main.rhai", "fn on_vm_started(ctx) { \"shipped\" }"),
        ],
    );
    write_files(
        site.path(),
        &[
            ("greeter/plugin.toml", manifest),
            ("greeter/main.rhai", "fn on_vm_started(ctx) { \"site\" }"),
        ],
    );
    let rt = null_runtime(Limits::default());
    let set = Arc::new(
        rt.load_set(&sources(
            vec![shipped.path().into(), site.path().into()],
            json!({}),
        ))
        .unwrap(),
    );
    let runs = rt.dispatch(&set, Hook::OnVmStarted, json!({})).await;
    assert_eq!(runs[0].result.as_ref().unwrap(), &json!("site"));
}
