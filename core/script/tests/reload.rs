//! Hot reload that keeps working after the first vim save: it survives every way editors save files, merges
//! bursts into one rebuild, ignores editor temp names, keeps the last good value on errors, and has a polling
//! mode.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use script::{LoadError, ReloadConfig, ReloadEvent, Reloader};
use tokio::sync::broadcast::Receiver;

/// Builder under test: the content of `a.html`; a file containing `{% broken` fails to "parse"
/// with its line number.
fn build(dir: PathBuf) -> impl Fn() -> Result<String, Vec<LoadError>> + Send + Sync + 'static {
    move || {
        let p = dir.join("a.html");
        let text = std::fs::read_to_string(&p).map_err(|e| vec![LoadError::file(&p, e.to_string())])?;
        if let Some(i) = text.lines().position(|l| l.contains("{% broken")) {
            return Err(vec![LoadError {
                file: p,
                line: Some(i + 1),
                column: Some(1),
                message: "unclosed tag".into(),
            }]);
        }
        Ok(text)
    }
}

/// Waits for the next reload event (at most 3 s).
async fn next_event(rx: &mut Receiver<ReloadEvent>) -> ReloadEvent {
    tokio::time::timeout(Duration::from_secs(3), rx.recv())
        .await
        .expect("no reload event within 3 s")
        .expect("reload channel closed")
}

/// Asserts that no further event arrives within `window` (the debounce plus a margin).
async fn assert_quiet(rx: &mut Receiver<ReloadEvent>, window: Duration) {
    if let Ok(ev) = tokio::time::timeout(window, rx.recv()).await {
        panic!("unexpected extra reload: {ev:?}");
    }
}

fn atomic_save(dir: &Path, text: &str) {
    let tmp = dir.join(".a.html.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("a.html")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_editor_save_style_gives_exactly_one_reload_with_the_final_content() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.html"), "v0").unwrap();
    let r = Reloader::start(
        ReloadConfig::new(vec![dir.path().to_path_buf()]),
        build(dir.path().to_path_buf()),
    )
    .unwrap();
    let mut rx = r.subscribe();
    assert_eq!(*r.current(), "v0");
    assert_eq!(r.status().generation, 1);
    assert_eq!(r.status().mode, "inotify");
    let quiet = Duration::from_millis(500);

    // (1) in-place write
    std::fs::write(dir.path().join("a.html"), "v1").unwrap();
    let ev = next_event(&mut rx).await;
    assert!(ev.ok);
    assert_eq!(*r.current(), "v1");
    assert_quiet(&mut rx, quiet).await;

    // (2) atomic save: temp file, then rename over the original
    atomic_save(dir.path(), "v2");
    let ev = next_event(&mut rx).await;
    assert!(ev.ok);
    assert_eq!(*r.current(), "v2");
    assert_quiet(&mut rx, quiet).await;

    // (3) delete and create again
    std::fs::remove_file(dir.path().join("a.html")).unwrap();
    std::fs::write(dir.path().join("a.html"), "v3").unwrap();
    let ev = next_event(&mut rx).await;
    assert!(ev.ok, "{ev:?}");
    assert_eq!(*r.current(), "v3");
    assert_quiet(&mut rx, quiet).await;

    // (4) five atomic saves within 50 ms: one reload
    for i in 0..5 {
        atomic_save(dir.path(), &format!("v4.{i}"));
        std::thread::sleep(Duration::from_millis(8));
    }
    let ev = next_event(&mut rx).await;
    assert!(ev.ok);
    assert_eq!(*r.current(), "v4.4");
    assert_quiet(&mut rx, quiet).await;

    // (5) a 200 KB file in two write() calls 30 ms apart: only the complete content is served
    let big: String = "x".repeat(200 * 1024);
    {
        let mut f = std::fs::File::create(dir.path().join("a.html")).unwrap();
        f.write_all(&big.as_bytes()[..100 * 1024]).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(30));
        f.write_all(&big.as_bytes()[100 * 1024..]).unwrap();
    }
    let ev = next_event(&mut rx).await;
    assert!(ev.ok);
    assert_eq!(r.current().len(), 200 * 1024, "half a file was served");
    assert_quiet(&mut rx, quiet).await;

    // Five successful reloads after the initial build.
    assert_eq!(r.status().generation, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editor_temp_and_backup_names_do_not_trigger_reloads() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.html"), "v0").unwrap();
    let r = Reloader::start(
        ReloadConfig::new(vec![dir.path().to_path_buf()]),
        build(dir.path().to_path_buf()),
    )
    .unwrap();
    let mut rx = r.subscribe();
    for name in [".a.html.swp", "a.html~", "4913", ".#a.html", "a.html.tmp"] {
        std::fs::write(dir.path().join(name), "junk").unwrap();
    }
    std::fs::remove_file(dir.path().join("4913")).unwrap();
    assert_quiet(&mut rx, Duration::from_millis(600)).await;
    assert_eq!(r.status().generation, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_file_keeps_the_last_good_value_and_records_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.html"), "good").unwrap();
    let r = Reloader::start(
        ReloadConfig::new(vec![dir.path().to_path_buf()]),
        build(dir.path().to_path_buf()),
    )
    .unwrap();
    let mut rx = r.subscribe();

    std::fs::write(dir.path().join("a.html"), "line one\n{% broken\n").unwrap();
    let ev = next_event(&mut rx).await;
    assert!(!ev.ok);
    assert_eq!(ev.errors[0].line, Some(2));
    assert_eq!(*r.current(), "good", "last good value must keep serving");
    let st = r.status();
    assert_eq!(st.generation, 1);
    let errs = st.last_error.expect("error recorded");
    assert!(errs[0].file.ends_with("a.html"));
    assert_eq!(
        errs[0].to_string(),
        format!("{}:2:1: unclosed tag", dir.path().join("a.html").display())
    );

    // A holder of the old Arc keeps it across the next successful swap.
    let held = r.current();
    std::fs::write(dir.path().join("a.html"), "fixed").unwrap();
    let ev = next_event(&mut rx).await;
    assert!(ev.ok);
    assert_eq!(*r.current(), "fixed");
    assert_eq!(*held, "good");
    let st = r.status();
    assert_eq!(st.generation, 2);
    assert!(st.last_error.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_in_subdirectories_and_new_subdirectories_are_seen() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.html"), "v0").unwrap();
    let r = Reloader::start(
        ReloadConfig::new(vec![dir.path().to_path_buf()]),
        build(dir.path().to_path_buf()),
    )
    .unwrap();
    let mut rx = r.subscribe();
    std::fs::create_dir_all(dir.path().join("static/css")).unwrap();
    // Let the new directory's watch be set before writing into it.
    let _ = tokio::time::timeout(Duration::from_millis(400), rx.recv()).await;
    std::fs::write(dir.path().join("static/css/site.css"), "body{}").unwrap();
    let ev = next_event(&mut rx).await;
    assert!(
        ev.changed.iter().any(|p| p.ends_with("static/css/site.css")),
        "{ev:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_mode_reloads_without_inotify_and_reports_its_mode() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.html"), "v0").unwrap();
    let cfg = ReloadConfig::poll(vec![dir.path().to_path_buf()], Duration::from_millis(200));
    let r = Reloader::start(cfg, build(dir.path().to_path_buf())).unwrap();
    let st = r.status();
    assert_eq!(st.mode, "poll");
    assert_eq!(st.poll_interval_ms, Some(200));
    let mut rx = r.subscribe();
    // mtime granularity: make sure the new content is written with a different size too.
    std::fs::write(dir.path().join("a.html"), "v1 polled").unwrap();
    let ev = next_event(&mut rx).await;
    assert!(ev.ok);
    assert_eq!(*r.current(), "v1 polled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_serializes_for_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.html"), "v0").unwrap();
    let r = Reloader::start(
        ReloadConfig::new(vec![dir.path().to_path_buf()]),
        build(dir.path().to_path_buf()),
    )
    .unwrap();
    let v = serde_json::to_value(r.status()).unwrap();
    assert_eq!(v["generation"], 1);
    assert_eq!(v["mode"], "inotify");
    assert!(v["last_error"].is_null());
    assert!(v["last_ok_at"].as_u64().unwrap() > 1_600_000_000);
    // reload_now rebuilds synchronously.
    assert_eq!(r.reload_now(), Ok(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_build_failure_is_returned_as_load_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.html"), "{% broken").unwrap();
    let r = Reloader::start(
        ReloadConfig::new(vec![dir.path().to_path_buf()]),
        build(dir.path().to_path_buf()),
    );
    match r {
        Err(script::ScriptError::Load(errs)) => assert_eq!(errs[0].line, Some(1)),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("first build must fail"),
    }
}
