//! The layer rule of `core/web/src`: views (`views/<area>/`) import the spine (`state`, `auth`,
//! `render`, `error`, `theme`), never another view; the spine imports no view. Only the route table
//! (`routes.rs`) and `lib.rs` (which re-exports some views at their old paths) import views.
//!
//! Read from the source text: every `crate::…` and `super::…` path outside comments, grouped
//! `use crate::{a, b::c}` imports included, resolved to the module it names.

#![allow(clippy::expect_used)] // test helpers outside #[test] fns

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Where a file sits in the layers.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Layer {
    /// `lib.rs`, `routes.rs`, `views/mod.rs`: may import any view.
    Root,
    /// A file of the view `area`.
    View(String),
    /// Everything else.
    Spine,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Module path of a file below `src`: `views/connect/ssh.rs` → `views::connect::ssh`, `auth/mod.rs` →
/// `auth`, `lib.rs` → (the crate root).
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    let last = parts.pop().expect("file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && !(parts.is_empty() && stem == "lib") {
        parts.push(stem.to_string());
    }
    parts
}

fn layer_of(module: &[String]) -> Layer {
    match module {
        [] => Layer::Root,
        [only] if only == "routes" || only == "views" => Layer::Root,
        [views, area, ..] if views == "views" => Layer::View(area.clone()),
        _ => Layer::Spine,
    }
}

/// Crate-root names that `lib.rs` re-exports from a view (`pub use views::connect;`,
/// `pub use views::connect::rdp_file as rdp;`): a path through them names that view.
fn view_aliases(lib: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in lib.lines() {
        let Some(rest) = line.trim().strip_prefix("pub use views::") else {
            continue;
        };
        let rest = rest.trim_end_matches(';');
        let (path, alias) = match rest.split_once(" as ") {
            Some((p, a)) => (p, a.trim().to_string()),
            None => (rest, rest.rsplit("::").next().unwrap_or(rest).to_string()),
        };
        let area = path.split("::").next().unwrap_or(path).to_string();
        out.insert(alias, area);
    }
    out
}

/// The code of a file without comments (line comments, doc comments, block comments).
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_block = false;
    for line in text.lines() {
        let mut l = line;
        if in_block {
            match l.find("*/") {
                Some(i) => {
                    l = &l[i + 2..];
                    in_block = false;
                }
                None => continue,
            }
        }
        if let Some(i) = l.find("/*") {
            in_block = !l[i..].contains("*/");
            l = &l[..i];
        }
        if let Some(i) = l.find("//") {
            l = &l[..i];
        }
        out.push_str(l);
        out.push('\n');
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths that start at `start` (`a::b::{c, d::e}` gives `a::b::c` and `a::b::d::e`).
fn paths_after(code: &str, start: usize) -> Vec<Vec<String>> {
    let rest = &code[start..];
    let mut segs = Vec::new();
    let mut i = 0;
    let bytes: Vec<char> = rest.chars().collect();
    loop {
        if i < bytes.len() && bytes[i] == '{' {
            // A group: split its top level at commas and read each member.
            let mut depth = 0;
            let mut j = i + 1;
            let mut member_start = j;
            let mut members = Vec::new();
            while j < bytes.len() {
                match bytes[j] {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        members.push(bytes[member_start..j].iter().collect::<String>());
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        members.push(bytes[member_start..j].iter().collect::<String>());
                        member_start = j + 1;
                    }
                    _ => {}
                }
                j += 1;
            }
            let mut out = Vec::new();
            for m in members {
                let m = m.trim();
                if m.is_empty() {
                    continue;
                }
                if m == "self" {
                    out.push(segs.clone());
                    continue;
                }
                for inner in paths_after(m, 0) {
                    let mut f = segs.clone();
                    f.extend(inner);
                    out.push(f);
                }
            }
            return out;
        }
        let s = i;
        while i < bytes.len() && is_ident(bytes[i]) {
            i += 1;
        }
        if i > s {
            segs.push(bytes[s..i].iter().collect::<String>());
        }
        if i + 1 < bytes.len() && bytes[i] == ':' && bytes[i + 1] == ':' {
            i += 2;
            continue;
        }
        break;
    }
    vec![segs]
}

/// Every module path a file names, resolved from the crate root.
fn referenced(code: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        if i > 0
            && code[..i]
                .chars()
                .next_back()
                .is_some_and(|c| is_ident(c) || c == '$')
        {
            continue;
        }
        out.extend(paths_after(code, i + "crate::".len()));
    }
    for (i, _) in code.match_indices("super::") {
        if i > 0
            && code[..i]
                .chars()
                .next_back()
                .is_some_and(|c| is_ident(c) || c == ':')
        {
            continue;
        }
        let mut base = module.to_vec();
        let mut j = i;
        while code[j..].starts_with("super::") {
            base.pop();
            j += "super::".len();
        }
        for p in paths_after(code, j) {
            let mut full = base.clone();
            full.extend(p);
            out.push(full);
        }
    }
    out
}

/// The view a resolved path names, if any (`areas`: the views there are).
fn view_named(
    path: &[String],
    areas: &BTreeSet<String>,
    aliases: &BTreeMap<String, String>,
) -> Option<String> {
    match path {
        [views, area, ..] if views == "views" && areas.contains(area) => Some(area.clone()),
        [first, ..] => aliases.get(first).cloned(),
        [] => None,
    }
}

fn violations() -> (Vec<String>, usize, Vec<String>) {
    let src = src_dir();
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("read lib.rs");
    let aliases = view_aliases(&lib);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let areas: BTreeSet<String> = files
        .iter()
        .filter_map(|f| match layer_of(&module_of(f.strip_prefix(&src).ok()?)) {
            Layer::View(a) => Some(a),
            _ => None,
        })
        .collect();
    let mut found = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("below src");
        let module = module_of(rel);
        let layer = layer_of(&module);
        if layer == Layer::Root {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(file).expect("read source"));
        let mut named = BTreeSet::new();
        for path in referenced(&code, &module) {
            if let Some(view) = view_named(&path, &areas, &aliases) {
                match &layer {
                    Layer::View(own) if *own == view => {}
                    _ => {
                        named.insert(view);
                    }
                }
            }
        }
        for view in named {
            let what = match &layer {
                Layer::View(own) => format!("the view `{own}`"),
                _ => "a spine module".to_string(),
            };
            found.push(format!("{} ({what}) imports the view `{view}`", rel.display()));
        }
    }
    (found, files.len(), areas.into_iter().collect())
}

#[test]
fn the_reader_sees_every_view_and_resolves_paths() {
    let (_, files, areas) = violations();
    assert!(files > 20, "only {files} source files found");
    for area in ["account", "admin", "classes", "connect", "portal"] {
        assert!(areas.iter().any(|a| a == area), "no view `{area}` in {areas:?}");
    }
    let code = code_of("use crate::{auth::Principal, views::{portal::api, admin}};\n// crate::views::x\n");
    let paths = referenced(&code, &["state".to_string()]);
    assert!(
        paths.contains(&vec!["views".into(), "portal".into(), "api".into()]),
        "{paths:?}"
    );
    assert!(paths.contains(&vec!["views".into(), "admin".into()]), "{paths:?}");
    assert_eq!(paths.len(), 3, "comments are not code: {paths:?}");
    let up = referenced(
        "use super::super::portal::pages;",
        &["views".into(), "connect".into(), "ssh".into()],
    );
    assert_eq!(
        up,
        vec![vec!["views".to_string(), "portal".into(), "pages".into()]]
    );
}

#[test]
fn views_import_the_spine_never_each_other() {
    let (found, _, _) = violations();
    let between_views: Vec<_> = found.iter().filter(|v| v.contains("(the view")).collect();
    assert!(
        between_views.is_empty(),
        "views import each other:\n{}",
        between_views
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_spine_imports_no_view() {
    let (found, _, _) = violations();
    let from_spine: Vec<_> = found.iter().filter(|v| v.contains("(a spine module)")).collect();
    assert!(
        from_spine.is_empty(),
        "spine modules import views:\n{}",
        from_spine
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}
