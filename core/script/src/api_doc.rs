//! Generates `scripts/API.md` from the engine's own metadata (`Engine::gen_fn_metadata_to_json`),
//! so the document is the API: a snapshot test fails when a host function changes and the file
//! was not regenerated (`UPDATE_API_MD=1 cargo test -p script --test api_md`).

use serde::Deserialize;

use crate::engine::{EngineFactory, Limits};

#[derive(Deserialize)]
struct Meta {
    #[serde(default)]
    modules: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct ModuleMeta {
    #[serde(default)]
    functions: Vec<FnMeta>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FnMeta {
    name: String,
    #[serde(default)]
    params: Vec<ParamMeta>,
    #[serde(default)]
    return_type: Option<String>,
    #[serde(default)]
    doc_comments: Vec<String>,
}

#[derive(Deserialize)]
struct ParamMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(rename = "type", default)]
    ty: Option<String>,
}

/// Rhai type names as a script author knows them.
fn nice_type(t: &str) -> String {
    let t = t.trim();
    let t = t.trim_start_matches('&').trim_start_matches("mut ").trim();
    match t {
        "i64" | "INT" => "int".into(),
        "f64" | "FLOAT" => "float".into(),
        "str" | "String" | "ImmutableString" => "String".into(),
        "Array" | "rhai::Array" | "Vec<Dynamic>" => "Array".into(),
        "Map" | "rhai::Map" => "Map".into(),
        "Dynamic" => "Dynamic".into(),
        "()" => "()".into(),
        other => other.rsplit("::").next().unwrap_or(other).to_string(),
    }
}

fn ret_type(t: &Option<String>) -> String {
    let t = t.as_deref().unwrap_or("()");
    let t = t
        .strip_prefix("Result<")
        .and_then(|r| r.split_once(','))
        .map(|(ok, _)| ok)
        .unwrap_or(t);
    nice_type(t)
}

/// The Markdown text of `scripts/API.md` for engines built with `limits`.
pub fn api_markdown(limits: &Limits) -> String {
    let factory = EngineFactory::new(limits.clone());
    let engine = factory.compile_engine();
    let json = engine.gen_fn_metadata_to_json(false).unwrap_or_default();
    let meta: Meta = serde_json::from_str(&json).unwrap_or(Meta {
        modules: Default::default(),
    });

    let mut out = String::new();
    out.push_str("# Proxlab script host API\n\n");
    out.push_str(
        "<!-- Generated from the engine's metadata by `core/script` (api_doc.rs). Do not edit by hand:\n     \
         run `UPDATE_API_MD=1 cargo test -p script --test api_md` after changing a host function. -->\n\n",
    );
    out.push_str(
        "Scripts reach the outside world only through these namespaced host modules. Failures are\n\
         thrown as `#{code, message}` maps; catch them with `try { .. } catch (e) { e.code }`.\n\
         Uncaught, they end the call with the code, message, script path and line.\n\n\
         Common error codes: `arg.*` (a bad argument), `host.unavailable` (no host behind the engine, e.g.\n\
         in `proxlab script check`), `pve.unknown_cluster`, `pve.api`, `pve.agent_unavailable`,\n\
         `pve.locked`, `pve.lock_timeout`, `pve.not_found`, `pve.no_quorum`, `pve.node_unreachable`,\n\
         `pve.permission_denied`, `pve.task_failed`, `pve.task_timeout`, `pve.timeout`, `pve.connect`,\n\
         `pve.tls`, `ssh.unavailable`, `ssh.unreachable`, `ssh.auth`, `ssh.host_key`, `ssh.failed`,\n\
         `ssh.exit_status`, `qcow2.unavailable`, `qcow2.exists`, `qcow2.not_found`, `qcow2.failed`,\n\
         `net.invalid_address`, `net.invalid_mac`, `net.invalid_cidr`.\n\n\
         Write functions (marked \"A write\") are recorded in the call's action list and do nothing in a\n\
         dry run (`proxlab script run --dry-run`).\n\n",
    );
    out.push_str("## Limits (defaults)\n\n");
    out.push_str("| limit | default |\n| --- | --- |\n");
    let l = limits;
    for (name, value) in [
        ("max_operations", l.max_operations.to_string()),
        ("max_call_levels", l.max_call_levels.to_string()),
        (
            "max_expr_depth / max_function_expr_depth",
            format!("{} / {}", l.max_expr_depth, l.max_function_expr_depth),
        ),
        (
            "max_string_size (bytes in one value)",
            l.max_string_size.to_string(),
        ),
        (
            "max_array_size (elements in one value)",
            l.max_array_size.to_string(),
        ),
        ("max_map_size (entries in one value)", l.max_map_size.to_string()),
        ("max_variables", l.max_variables.to_string()),
        ("max_functions", l.max_functions.to_string()),
        ("max_modules", l.max_modules.to_string()),
        (
            "script_time_ms (script's own time per call)",
            l.script_time_ms.to_string(),
        ),
        (
            "wall_time_s (whole call incl. host calls)",
            l.wall_time_s.to_string(),
        ),
        (
            "max_memory_growth_mib (process RSS growth per call)",
            l.max_memory_growth_mib.to_string(),
        ),
        ("max_concurrent (scripts at once)", l.max_concurrent.to_string()),
    ] {
        out.push_str(&format!("| {name} | {value} |\n"));
    }
    out.push('\n');

    let order = ["pve", "inventory", "ssh", "qcow2", "net", "log", "job"];
    let mut names: Vec<&String> = meta.modules.keys().collect();
    names.sort_by_key(|n| order.iter().position(|o| o == n).unwrap_or(order.len()));
    for name in names {
        let Ok(module) = serde_json::from_value::<ModuleMeta>(meta.modules[name.as_str()].clone()) else {
            continue;
        };
        out.push_str(&format!("## `{name}::`\n\n"));
        let mut fns = module.functions;
        fns.sort_by(|a, b| (&a.name, a.params.len()).cmp(&(&b.name, b.params.len())));
        for f in fns {
            let params: Vec<String> = f
                .params
                .iter()
                .map(|p| match (&p.name, &p.ty) {
                    (Some(n), Some(t)) => format!("{n}: {}", nice_type(t)),
                    (Some(n), None) => n.clone(),
                    (None, Some(t)) => nice_type(t),
                    (None, None) => "_".into(),
                })
                .collect();
            out.push_str(&format!(
                "### `{name}::{}({}) -> {}`\n\n",
                f.name,
                params.join(", "),
                ret_type(&f.return_type)
            ));
            let doc: Vec<String> = f
                .doc_comments
                .iter()
                .flat_map(|c| {
                    c.lines()
                        .map(|l| l.trim_start().trim_start_matches("///").trim().to_string())
                })
                .collect();
            out.push_str(&doc.join("\n"));
            out.push_str("\n\n");
        }
    }
    out
}
