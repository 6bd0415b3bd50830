//! `print` and `debug` in scripts, and `log::*`, go to tracing tagged with the script path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use script::Limits;
use serde_json::json;

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn print_debug_and_log_reach_tracing_with_the_script_path() {
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let site = tempfile::tempdir().unwrap();
    write_files(
        site.path(),
        &[(
            "rdp/talk.rhai",
            "fn rdp_settings(vm, user) {\n  print(\"hello from print\");\n  debug(\"hello from debug\");\n  log::warn(\"hello from log\");\n  #{}\n}\n",
        )],
    );
    let rt = null_runtime(Limits::default());
    let set = load_site(&rt, site.path());
    rt.rdp_settings(&set, "talk", json!({}), json!({})).await.unwrap();
    let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let path = site.path().join("rdp/talk.rhai").display().to_string();
    for needle in ["hello from print", "hello from debug", "hello from log"] {
        let line = out
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} not logged:\n{out}"));
        assert!(line.contains(&path), "no script path in {line:?}");
    }
    assert!(
        out.lines()
            .any(|l| l.contains("WARN") && l.contains("hello from log"))
    );
}
