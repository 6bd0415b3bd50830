//! `ssh::quote` is the SSH executor's quoter: hostile strings a script quotes reach a real `sh -c`
//! unchanged, and a NUL byte is refused with `arg.nul`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use script::Limits;

#[tokio::test]
async fn quoted_hostile_strings_round_trip_through_sh_and_nul_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let body = r#"
        let odd = ["'; rm -rf / #", "\"double\" 'single'", "$(id)", "`id`", "${IFS}$0",
                   "line one\nline two", "-rf", "--all", "*", "a=b", ""];
        let line = "printf '%s\\0'";
        for s in odd { line += " " + ssh::quote(s); }
        #{ line: line, odd: odd }
    "#;
    write_files(dir.path(), &[("deploy/quote.rhai", &workflow(body))]);
    let rt = null_runtime(Limits::default());
    let set = load_site(&rt, dir.path());
    let out = rt
        .run_entry(&set, "deploy/quote.rhai", "plan", vec![serde_json::json!({})])
        .await
        .unwrap();
    let line = out["line"].as_str().unwrap();
    let odd: Vec<String> = serde_json::from_value(out["odd"].clone()).unwrap();
    let sh = std::process::Command::new("sh")
        .arg("-c")
        .arg(line)
        .output()
        .unwrap();
    assert!(sh.status.success(), "{line}: {sh:?}");
    let got: Vec<String> = sh
        .stdout
        .split(|b| *b == 0)
        .map(|p| String::from_utf8(p.to_vec()).unwrap())
        .collect();
    let mut want = odd.clone();
    want.push(String::new());
    assert_eq!(got, want, "{line}");
    // The same quoting the SSH executor applies to argv.
    for s in &odd {
        assert!(line.contains(&cloner::shell_quote(s)));
    }

    write_files(
        dir.path(),
        &[("deploy/nul.rhai", &workflow(r#"ssh::quote("a\x00b")"#))],
    );
    let set = load_site(&rt, dir.path());
    let err = rt
        .run_entry(&set, "deploy/nul.rhai", "plan", vec![serde_json::json!({})])
        .await
        .expect_err("a NUL byte must be refused");
    assert!(
        err.to_string().contains("arg.nul") || format!("{err:?}").contains("arg.nul"),
        "{err:?}"
    );
}
