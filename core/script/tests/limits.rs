//! Limits that bound memory and CPU: scripts that try to exhaust memory or CPU end with a typed limit error
//! within the wall-clock budget, the process RSS stays bounded, and the async runtime keeps answering.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use script::{Limit, Limits, ScriptError};

/// Runs `body` as `plan(ctx)` under the default sandbox and returns the error, the elapsed
/// time, the peak RSS growth (MiB, sampled every 5 ms and at the end) and the largest gap seen
/// by a 5 ms async ticker meanwhile.
async fn run_hostile(body: &str) -> (ScriptError, Duration, f64, Duration) {
    // One hostile script at a time: RSS is per process, and tests run in parallel.
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), &[("deploy/hostile.rhai", &workflow(body))]);
    let rt = null_runtime(Limits::default());
    let set = load_site(&rt, dir.path());

    // A "healthz" stand-in: an async task that must keep ticking on the runtime.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let rss0 = script::rss_kib().unwrap_or(0);
    let ticker = tokio::spawn(async move {
        let mut worst = Duration::ZERO;
        let mut peak = rss0;
        let mut last = Instant::now();
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(5)).await;
            worst = worst.max(last.elapsed());
            last = Instant::now();
            peak = peak.max(script::rss_kib().unwrap_or(0));
        }
        (worst, peak)
    });

    let t = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        rt.run_entry(&set, "deploy/hostile.rhai", "plan", vec![serde_json::json!({})]),
    )
    .await
    .expect("script was not stopped within 10 s");
    let elapsed = t.elapsed();
    let end = script::rss_kib().unwrap_or(0);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (worst, peak) = ticker.await.unwrap();
    let grown = (peak.max(end).saturating_sub(rss0)) as f64 / 1024.0;
    (r.expect_err("hostile script must fail"), elapsed, grown, worst)
}

fn assert_limit(err: &ScriptError) -> Limit {
    match err {
        ScriptError::LimitExceeded { limit, path, .. } => {
            assert!(path.ends_with("deploy/hostile.rhai"), "path {path}");
            *limit
        }
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
}

fn check_bounds(name: &str, elapsed: Duration, grown_mib: f64, worst_gap: Duration) {
    eprintln!("{name}: {elapsed:?}, RSS +{grown_mib:.1} MiB, worst ticker gap {worst_gap:?}");
    // The async runtime kept running meanwhile (the /healthz stand-in): no gap over 250 ms.
    assert!(elapsed < Duration::from_secs(2), "{name}: took {elapsed:?}");
    // The configured ceiling is 64 MiB.
    assert!(grown_mib < 64.0, "{name}: RSS grew {grown_mib:.1} MiB");
    assert!(
        worst_gap < Duration::from_millis(250),
        "{name}: runtime stalled {worst_gap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_doubling_hits_string_size_limit() {
    let (err, t, mib, gap) = run_hostile(r#"let s = "xxxxxxxx"; loop { s += s; }"#).await;
    assert_eq!(assert_limit(&err), Limit::StringSize, "{err}");
    check_bounds("doubling", t, mib, gap);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_values_each_under_the_cap_hit_a_total_limit() {
    let (err, t, mib, gap) =
        run_hostile(r#"let a = []; for i in 0..100000 { a.push("y".pad(60000, "y")); }"#).await;
    // As written, `pad` pads a temporary and returns `()`, so this pushes 100,000 units; every
    // push re-measures the array (O(n²)), and the script-time budget ends it.
    let limit = assert_limit(&err);
    assert!(
        matches!(limit, Limit::StringSize | Limit::Memory | Limit::ScriptTime),
        "{err}"
    );
    check_bounds("many strings", t, mib, gap);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_real_60k_strings_hit_the_total_string_limit() {
    let (err, t, mib, gap) =
        run_hostile(r#"let a = []; for i in 0..100000 { let s = "y"; s.pad(60000, "y"); a.push(s); }"#).await;
    let limit = assert_limit(&err);
    assert!(matches!(limit, Limit::StringSize | Limit::Memory), "{err}");
    check_bounds("many 60k strings", t, mib, gap);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_variables_each_holding_a_big_string_hit_the_memory_ceiling() {
    // Each string is under the per-value cap (4 MiB); together they exceed the 64 MiB ceiling.
    let mut body = String::from("let base = \"\"; base.pad(3 * 1024 * 1024, \"q\");\n");
    for i in 0..40 {
        body.push_str(&format!("let v{i} = base + \"{i}\";\n"));
    }
    body.push_str("let x = 0; loop { x += 1; }");
    let (err, t, mib, gap) = run_hostile(&body).await;
    let limit = assert_limit(&err);
    assert!(matches!(limit, Limit::Memory | Limit::ScriptTime), "{err}");
    check_bounds("many big variables", t, mib, gap);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_index_assignment_is_bounded() {
    let (err, t, mib, gap) = run_hostile(r#"let m = #{}; for i in 0..1000000 { m["k" + i] = i; }"#).await;
    let limit = assert_limit(&err);
    assert!(
        matches!(
            limit,
            Limit::MapSize | Limit::Memory | Limit::Operations | Limit::ScriptTime
        ),
        "{err}"
    );
    check_bounds("map index", t, mib, gap);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closure_work_inside_native_map_is_bounded() {
    let (err, t, mib, gap) = run_hostile(r#"let a = []; a.pad(5000000, 0); let b = a.map(|x| x * 2);"#).await;
    assert_limit(&err);
    check_bounds("closure map", t, mib, gap);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_stops_at_the_script_time_budget() {
    let (err, t, _mib, gap) = run_hostile("let x = 0; loop { x += 1; x -= 1; }").await;
    let limit = assert_limit(&err);
    assert!(matches!(limit, Limit::ScriptTime | Limit::Operations), "{err}");
    assert!(t < Duration::from_secs(3), "took {t:?}");
    assert!(gap < Duration::from_millis(250), "runtime stalled {gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_recursion_stops_at_call_levels_without_overflowing_the_stack() {
    let dir = tempfile::tempdir().unwrap();
    let text = "fn down(n) { down(n + 1) }\nfn plan(ctx) { down(0) }\nfn create_vm(ctx, vm) { () }\n";
    write_files(dir.path(), &[("deploy/hostile.rhai", text)]);
    let rt = null_runtime(Limits::default());
    let set = load_site(&rt, dir.path());
    let err = rt
        .run_entry(&set, "deploy/hostile.rhai", "plan", vec![serde_json::json!({})])
        .await
        .unwrap_err();
    assert_eq!(assert_limit(&err), Limit::CallLevels, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabyte_string_is_refused() {
    let (err, _t, mib, _gap) = run_hostile(r#"let s = "".pad(100 * 1024 * 1024, "z"); s.len()"#).await;
    assert_eq!(assert_limit(&err), Limit::StringSize, "{err}");
    assert!(mib < 64.0, "RSS grew {mib:.1} MiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_variables_is_a_limit_error() {
    let mut body = String::new();
    for i in 0..300 {
        body.push_str(&format!("let v{i} = {i};\n"));
    }
    let (err, ..) = run_hostile(&body).await;
    assert_eq!(assert_limit(&err), Limit::Variables, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expression_nesting_is_refused_at_load_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let deep = format!("{}1{}", "(".repeat(200), ")".repeat(200));
    write_files(
        dir.path(),
        &[("deploy/deep.rhai", &workflow(&format!("let x = {deep};")))],
    );
    let rt = null_runtime(Limits::default());
    let sources = script::SetSources {
        site: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let errs = rt.load_set(&sources).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].file.ends_with("deploy/deep.rhai"));
    assert_eq!(errs[0].line, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_cannot_catch_limit_errors() {
    let (err, ..) =
        run_hostile(r#"try { let s = "xx"; loop { s += s; } } catch (e) { return "caught"; }"#).await;
    assert_eq!(assert_limit(&err), Limit::StringSize, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_scripts_are_capped_by_the_semaphore() {
    let dir = tempfile::tempdir().unwrap();
    write_files(
        dir.path(),
        &[("deploy/spin.rhai", &workflow("let x = 0; loop { x += 1; }"))],
    );
    let limits = Limits {
        max_concurrent: 1,
        script_time_ms: 300,
        ..Limits::default()
    };
    let rt = null_runtime(limits);
    let set = load_site(&rt, dir.path());
    let t = Instant::now();
    let a = rt.run_entry(&set, "deploy/spin", "plan", vec![serde_json::json!({})]);
    let b = rt.run_entry(&set, "deploy/spin", "plan", vec![serde_json::json!({})]);
    let (ra, rb) = tokio::join!(a, b);
    assert!(
        matches!(
            ra,
            Err(ScriptError::LimitExceeded {
                limit: Limit::ScriptTime,
                ..
            })
        ),
        "{ra:?}"
    );
    assert!(
        matches!(
            rb,
            Err(ScriptError::LimitExceeded {
                limit: Limit::ScriptTime,
                ..
            })
        ),
        "{rb:?}"
    );
    // With one permit the two 300 ms scripts ran one after the other.
    assert!(
        t.elapsed() >= Duration::from_millis(580),
        "ran in {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_caller_stops_its_script() {
    let dir = tempfile::tempdir().unwrap();
    write_files(
        dir.path(),
        &[("deploy/spin.rhai", &workflow("let x = 0; loop { x += 1; }"))],
    );
    let limits = Limits {
        max_concurrent: 1,
        script_time_ms: 60_000,
        ..Limits::default()
    };
    let rt = null_runtime(limits);
    let set = load_site(&rt, dir.path());
    // Give up after 100 ms; the script must release its permit soon after.
    let r = tokio::time::timeout(
        Duration::from_millis(100),
        rt.run_entry(&set, "deploy/spin", "plan", vec![serde_json::json!({})]),
    )
    .await;
    assert!(r.is_err());
    let t = Instant::now();
    write_files(dir.path(), &[]);
    let ok = tokio::time::timeout(
        Duration::from_secs(2),
        rt.run_entry(
            &set,
            "deploy/qcow2-overlay",
            "without_mac",
            vec![serde_json::json!("virtio=AA:BB:CC:DD:EE:FF,bridge=vmbr0")],
        ),
    )
    .await
    .expect("permit was not released")
    .unwrap();
    assert_eq!(ok, serde_json::json!("virtio,bridge=vmbr0"));
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closure_work_called_back_from_native_functions_counts_toward_the_budget() {
    // Within the array limit, so only the operations inside the closures can stop it.
    let (err, t, mib, gap) =
        run_hostile("let a = []; a.pad(90000, 0); loop { a = a.map(|x| x + 1).filter(|x| x >= 0); }").await;
    let limit = assert_limit(&err);
    assert!(matches!(limit, Limit::ScriptTime | Limit::Operations), "{err}");
    check_bounds("closure loop", t, mib, gap);
}
