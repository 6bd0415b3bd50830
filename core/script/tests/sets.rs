//! Script sets: defaults, site overrides file by file, imports, entry-point checks, typed errors,
//! immutable snapshots under hot reload, and `check`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use script::{Limits, Origin, ReloadConfig, Reloader, ScriptError, ScriptKind, SetSources};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_defaults_load_from_the_repo_and_from_the_binary() {
    let rt = null_runtime(Limits::default());
    let from_dir = rt
        .load_set(&SetSources {
            defaults: Some(repo_scripts()),
            ..Default::default()
        })
        .unwrap();
    let embedded = rt.load_set(&SetSources::default()).unwrap();
    for set in [&from_dir, &embedded] {
        assert!(set.deploy("qcow2-overlay").is_some());
        assert!(set.deploy("linked-clone").is_some());
        assert!(set.rdp("default").is_some());
        let tiers: Vec<_> = set
            .ip_tiers()
            .iter()
            .map(|s| s.short_name().to_string())
            .collect();
        assert_eq!(tiers, ["10-inventory", "20-guest-agent", "30-lxc", "40-arp"]);
        assert_eq!(set.of_kind(ScriptKind::Lib).len(), 2);
    }
}

#[test]
fn embedded_defaults_match_the_repo_scripts_folder() {
    let mut on_disk = Vec::new();
    let root = repo_scripts();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rhai") {
                let rel = p.strip_prefix(&root).unwrap().to_string_lossy().to_string();
                on_disk.push((rel, std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    on_disk.sort();
    let embedded: Vec<(String, String)> = script::embedded_defaults()
        .iter()
        .map(|(r, t)| (r.to_string(), t.to_string()))
        .collect();
    assert_eq!(
        on_disk.iter().map(|(r, _)| r).collect::<Vec<_>>(),
        embedded.iter().map(|(r, _)| r).collect::<Vec<_>>(),
        "add new scripts to embedded_defaults() in set.rs"
    );
    assert_eq!(on_disk, embedded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_file_overrides_one_default_and_site_lib_wins_for_imports() {
    let site = tempfile::tempdir().unwrap();
    write_files(
        site.path(),
        &[
            (
                "rdp/default.rhai",
                "fn rdp_settings(vm, user) { #{ address: \"site\", username: user.name } }",
            ),
            // The site's lib/net replaces the default one for every importer.
            (
                "lib/net.rhai",
                "fn allow_ranges(vm) { [] }\nfn vm_mac(vm) { () }\nfn strip_prefix(c) { c }\nfn usable(ip, allow) { false }\nfn pick_address(i, m, a) { \"from-site-lib\" }\n",
            ),
            (
                "ip/25-custom.rhai",
                "import \"lib/net\" as n;\nfn discover(vm) { n::pick_address([], (), []) }",
            ),
        ],
    );
    let rt = null_runtime(Limits::default());
    let set = load_site(&rt, site.path());
    assert_eq!(set.rdp("default").unwrap().origin, Origin::Site);
    assert_eq!(set.deploy("linked-clone").unwrap().origin, Origin::Default);
    assert_eq!(set.get("ip/25-custom").unwrap().origin, Origin::Site);
    let m = rt
        .rdp_settings(&set, "default", json!({}), json!({"name": "bob"}))
        .await
        .unwrap();
    assert_eq!(m["address"], "site");
    let r = rt
        .run_entry(&set, "ip/25-custom.rhai", "discover", vec![json!({})])
        .await
        .unwrap();
    assert_eq!(r, "from-site-lib");
    let names: Vec<_> = set
        .ip_tiers()
        .iter()
        .map(|s| s.short_name().to_string())
        .collect();
    assert_eq!(
        names,
        ["10-inventory", "20-guest-agent", "25-custom", "30-lxc", "40-arp"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_entry_point_is_refused_at_load_naming_file_and_function() {
    let site = tempfile::tempdir().unwrap();
    write_files(
        site.path(),
        &[
            ("deploy/half.rhai", "fn plan(ctx) { [] }\n"),
            ("ip/50-bad.rhai", "fn discover() { () }\n"),
            ("rdp/x.rhai", "fn rdp_settings(vm) { #{} }\n"),
        ],
    );
    let rt = null_runtime(Limits::default());
    let errs = rt
        .load_set(&SetSources {
            site: Some(site.path().into()),
            ..Default::default()
        })
        .unwrap_err();
    let text = script::format_load_errors(&errs);
    assert_eq!(errs.len(), 3, "{text}");
    assert!(
        text.contains("deploy/half.rhai: missing entry point `fn create_vm(ctx, vm)`"),
        "{text}"
    );
    assert!(
        text.contains("ip/50-bad.rhai: missing entry point `fn discover(vm)`"),
        "{text}"
    );
    assert!(
        text.contains("rdp/x.rhai: missing entry point `fn rdp_settings(vm, user)`"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syntax_errors_bad_imports_and_stray_files_are_load_errors_with_positions() {
    let site = tempfile::tempdir().unwrap();
    write_files(
        site.path(),
        &[
            (
                "rdp/broken.rhai",
                "fn rdp_settings(vm, user) {\n    let x = ;\n}\n",
            ),
            (
                "ip/60-imp.rhai",
                "// tier\nimport \"lib/nope\" as n;\nfn discover(vm) { () }\n",
            ),
            ("misc/stray.rhai", "let a = 1;"),
            ("ip/70-undef.rhai", "fn discover(vm) { undefined_var }\n"),
        ],
    );
    let rt = null_runtime(Limits::default());
    let errs = rt
        .load_set(&SetSources {
            site: Some(site.path().into()),
            ..Default::default()
        })
        .unwrap_err();
    let find = |needle: &str| {
        errs.iter()
            .find(|e| e.file.to_string_lossy().contains(needle))
            .cloned()
    };
    let syntax = find("rdp/broken.rhai").expect("syntax error reported");
    assert_eq!((syntax.line, syntax.column.is_some()), (Some(2), true));
    let imp = find("ip/60-imp.rhai").expect("bad import reported");
    assert_eq!(imp.line, Some(2));
    assert!(imp.message.contains("lib/nope"));
    assert!(find("misc/stray.rhai").is_some());
    // Strict variables: an undefined variable is a compile error, not a run-time surprise.
    let undef = find("ip/70-undef.rhai").expect("undefined variable reported");
    assert_eq!(undef.line, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throw_map_becomes_typed_error_with_code_path_and_line() {
    let site = tempfile::tempdir().unwrap();
    write_files(
        site.path(),
        &[
            (
                "deploy/t.rhai",
                "fn plan(ctx) {\n    if ctx.fail {\n        throw #{ code: \"quota\", message: \"class is full\" };\n    }\n    []\n}\nfn create_vm(ctx, vm) {\n    throw \"plain text\";\n}\n",
            ),
            (
                "lib/boom.rhai",
                "fn explode() {\n    throw #{ code: \"lib.boom\", message: \"from lib\" };\n}\n",
            ),
            (
                "rdp/uses.rhai",
                "import \"lib/boom\" as b;\nfn rdp_settings(vm, user) {\n    b::explode()\n}\n",
            ),
        ],
    );
    let rt = null_runtime(Limits::default());
    let set = load_site(&rt, site.path());
    match rt
        .run_entry(&set, "deploy/t", "plan", vec![json!({"fail": true})])
        .await
    {
        Err(ScriptError::Thrown {
            code,
            message,
            path,
            line,
            ..
        }) => {
            assert_eq!(
                (code.as_str(), message.as_str(), line),
                ("quota", "class is full", 3)
            );
            assert!(path.ends_with("deploy/t.rhai"));
        }
        other => panic!("{other:?}"),
    }
    match rt
        .run_entry(&set, "deploy/t", "create_vm", vec![json!({}), json!({})])
        .await
    {
        Err(ScriptError::Thrown {
            code, message, line, ..
        }) => {
            assert_eq!(
                (code.as_str(), message.as_str(), line),
                ("script_error", "plain text", 8)
            );
        }
        other => panic!("{other:?}"),
    }
    match rt.rdp_settings(&set, "uses", json!({}), json!({})).await {
        Err(ScriptError::Thrown { code, path, line, .. }) => {
            assert_eq!(code, "lib.boom");
            assert!(
                path.ends_with("lib/boom.rhai"),
                "error names the library file: {path}"
            );
            assert_eq!(line, 2);
        }
        other => panic!("{other:?}"),
    }
    // Asking for an entry the script does not have.
    match rt.run_entry(&set, "deploy/t", "nope", vec![]).await {
        Err(ScriptError::MissingEntryPoint { entry, arity, .. }) => {
            assert_eq!((entry.as_str(), arity), ("nope", 0))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        rt.run_entry(&set, "deploy/none", "plan", vec![]).await,
        Err(ScriptError::NoSuchScript { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdp_settings_must_return_a_map() {
    let site = tempfile::tempdir().unwrap();
    write_files(
        site.path(),
        &[("rdp/bad.rhai", "fn rdp_settings(vm, user) { 42 }")],
    );
    let rt = null_runtime(Limits::default());
    let set = load_site(&rt, site.path());
    assert!(matches!(
        rt.rdp_settings(&set, "bad", json!({}), json!({})).await,
        Err(ScriptError::BadReturn { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_jobs_keep_their_snapshot_across_a_reload_and_broken_edits_keep_the_last_good_set() {
    let site = tempfile::tempdir().unwrap();
    write_files(
        site.path(),
        &[("rdp/v.rhai", "fn rdp_settings(vm, user) { #{ version: 1 } }")],
    );
    let rt = null_runtime(Limits::default());
    let sources = SetSources {
        site: Some(site.path().into()),
        ..Default::default()
    };
    let builder_rt = rt.clone();
    let builder_sources = sources.clone();
    let reloader = Reloader::start(ReloadConfig::new(sources.watch_dirs()), move || {
        builder_rt.load_set(&builder_sources)
    })
    .unwrap();
    let mut events = reloader.subscribe();
    let job_set = reloader.current(); // a job starts with generation 1

    std::fs::write(
        site.path().join("rdp/v.rhai"),
        "fn rdp_settings(vm, user) { #{ version: 2 } }",
    )
    .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(3), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(ev.ok);
    let v_new = rt
        .rdp_settings(&reloader.current(), "v", json!({}), json!({}))
        .await
        .unwrap();
    let v_job = rt
        .rdp_settings(&job_set, "v", json!({}), json!({}))
        .await
        .unwrap();
    assert_eq!(
        (v_new["version"].clone(), v_job["version"].clone()),
        (json!(2), json!(1))
    );

    std::fs::write(
        site.path().join("rdp/v.rhai"),
        "fn rdp_settings(vm, user) {\n  #{ version: 3 \n",
    )
    .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(3), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(!ev.ok);
    assert!(ev.errors[0].file.ends_with("rdp/v.rhai"));
    assert!(ev.errors[0].line.is_some());
    let still = rt
        .rdp_settings(&reloader.current(), "v", json!({}), json!({}))
        .await
        .unwrap();
    assert_eq!(still["version"], 2, "last good set keeps serving");
    assert_eq!(reloader.status().generation, 2);
    assert!(reloader.status().last_error.is_some());
    let _keep: Arc<script::ScriptSet> = job_set;
}

#[test]
fn check_reports_each_problem_with_file_and_line_and_passes_the_shipped_files() {
    let limits = Limits::default();
    assert_eq!(script::check(&[repo_scripts()], &limits), vec![]);
    assert_eq!(script::check(&[repo_plugins()], &limits), vec![]);
    assert_eq!(
        script::check(&[repo_plugins().join("idle-shutdown")], &limits),
        vec![]
    );
    assert_eq!(
        script::check(&[repo_scripts().join("ip/20-guest-agent.rhai")], &limits),
        vec![]
    );

    let dir = tempfile::tempdir().unwrap();
    write_files(
        dir.path(),
        &[
            ("ip/90-x.rhai", "fn discover(vm) {\n  let = 1;\n}\n"),
            (
                "plug/plugin.toml",
                "name = \"plug\"\nversion = \"1\"\n[[hooks]]\nname = \"on_tock\"\n",
            ),
            ("plug/main.rhai", "fn on_tick(ctx) { () }\n"),
        ],
    );
    let d = script::check(&[dir.path().join("ip/90-x.rhai")], &limits);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].line, Some(2));
    assert!(
        d[0].to_string()
            .starts_with(&format!("{}:2:", dir.path().join("ip/90-x.rhai").display()))
    );
    let d = script::check(&[dir.path().join("plug")], &limits);
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].message.contains("unknown hook \"on_tock\""));
    let d = script::check(&[dir.path().join("nothing-here")], &limits);
    assert_eq!(d.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_entry_file_runs_one_entry_with_set_libraries_and_dry_run() {
    let rt = null_runtime(Limits::default());
    let sources = SetSources {
        defaults: Some(repo_scripts()),
        ..Default::default()
    };
    let (cluster, vmid) = script::parse_vm_ref("lab/1101").unwrap();
    let mut vm = script::vm_arg(rt.host().as_ref(), &cluster, vmid);
    vm["ip"] = json!("10.41.0.10");
    vm["ip_seen_at"] = json!(script::Host::now(rt.host().as_ref()));
    let file = repo_scripts().join("ip/10-inventory.rhai");
    let args = script::sample_args("discover", &vm);
    let r = script::run_entry_file(&rt, &sources, &file, "discover", args, Default::default())
        .await
        .unwrap();
    assert_eq!(r.value, json!("10.41.0.10"));
    assert!(script::parse_vm_ref("lab").is_err());
    assert!(script::parse_vm_ref("lab/12").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_functions_without_a_host_report_unavailable() {
    let site = tempfile::tempdir().unwrap();
    write_files(
        site.path(),
        &[(
            "rdp/q.rhai",
            "fn rdp_settings(vm, user) {\n  qcow2::info(\"lab\", \"pve1\", \"/x.qcow2\")\n}\n",
        )],
    );
    let rt = null_runtime(Limits::default());
    let set = load_site(&rt, site.path());
    match rt.rdp_settings(&set, "q", json!({}), json!({})).await {
        Err(ScriptError::Thrown { code, line, .. }) => {
            assert_eq!((code.as_str(), line), ("qcow2.unavailable", 2))
        }
        other => panic!("{other:?}"),
    }
}
