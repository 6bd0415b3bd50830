//! `proxlab script check|run`: the tools an admin uses while tuning site scripts.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use script::{CallOptions, ScriptRuntime};

use crate::config::Config;

/// `proxlab script ...`
#[derive(Subcommand, Debug)]
pub enum ScriptCmd {
    /// Validate scripts, plugins, themes (and the configured site set) as the server would; prints
    /// `file:line:col: message` per problem and exits 1 if there is any.
    Check {
        /// Files or folders to check (a `*.rhai`, a script folder, a plugin folder, a folder of
        /// plugins, or a theme folder with `theme.toml`). Without paths: the configured set
        /// (`--config`, including its site theme), or the shipped defaults.
        paths: Vec<PathBuf>,
        #[arg(long, short, env = "PROXLAB_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run one entry point of a script file against the configured clusters.
    Run {
        /// The script file.
        file: PathBuf,
        /// Entry point (`discover`, `rdp_settings`, `plan`, `create_vm`, `on_tick`, ...).
        #[arg(long)]
        entry: String,
        /// The VM to pass, as CLUSTER/VMID (read from a fresh sync of that cluster).
        #[arg(long)]
        vm: Option<String>,
        /// Record writes instead of doing them (workflows).
        #[arg(long)]
        dry_run: bool,
        #[arg(long, short, env = "PROXLAB_CONFIG", default_value = "proxlab.toml")]
        config: PathBuf,
    },
}

/// Runs a `script` subcommand.
pub async fn run(cmd: ScriptCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ScriptCmd::Check { paths, config } => {
            let (limits, sources) = match &config {
                Some(p) => {
                    let cfg = Config::load(p)?;
                    (cfg.scripts.limits.clone(), Some(crate::host::sources(&cfg)))
                }
                None => (script::Limits::default(), None),
            };
            // Theme folders (with a theme.toml) are checked as themes: every template compiled.
            let (themes, paths): (Vec<PathBuf>, Vec<PathBuf>) =
                paths.into_iter().partition(|p| p.join("theme.toml").is_file());
            let mut theme_diags: Vec<script::Diagnostic> =
                themes.iter().flat_map(|t| theme::Themes::check(t)).collect();
            if let Some(site) = config
                .as_ref()
                .and_then(|p| Config::load(p).ok())
                .and_then(|c| c.themes.site_dir)
            {
                theme_diags.extend(theme::Themes::check(&site));
            }
            let only_themes = paths.is_empty() && !themes.is_empty();
            let mut diags = if only_themes {
                Vec::new()
            } else if paths.is_empty() {
                let sources = sources.unwrap_or_else(|| script::SetSources {
                    defaults: None,
                    site: None,
                    plugin_dirs: vec![],
                    enabled_plugins: vec![],
                    plugin_settings: Default::default(),
                });
                script::check_sources(&sources, &limits)
            } else {
                script::check(&paths, &limits)
            };
            diags.append(&mut theme_diags);
            for d in &diags {
                println!("{d}");
            }
            if diags.is_empty() {
                println!("ok");
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::FAILURE)
            }
        }
        ScriptCmd::Run {
            file,
            entry,
            vm,
            dry_run,
            config,
        } => {
            let cfg = Config::load(&config)?;
            let sys = crate::wiring::build(&cfg)?;
            let vm_value = match &vm {
                Some(r) => {
                    let (cluster, vmid) = script::parse_vm_ref(r)?;
                    sys.syncer
                        .tick_cluster(&cluster, false)
                        .await
                        .with_context(|| format!("syncing {cluster}"))?;
                    Some(serde_json::json!({"cluster": cluster, "vmid": vmid}))
                }
                None => None,
            };
            let host = crate::host::ProxlabHost::new(
                tokio::runtime::Handle::current(),
                sys.syncer.clone(),
                sys.ops.clone(),
            );
            let rt = ScriptRuntime::new(host.clone(), cfg.scripts.limits.clone());
            let vm_arg = match &vm_value {
                Some(v) => script::vm_arg(
                    host.as_ref(),
                    v["cluster"].as_str().unwrap_or_default(),
                    v["vmid"].as_u64().unwrap_or(0) as u32,
                ),
                None => serde_json::Value::Null,
            };
            let args = script::sample_args(&entry, &vm_arg);
            let opts = CallOptions {
                dry_run,
                ..Default::default()
            };
            let report = script::run_entry_file(&rt, &crate::host::sources(&cfg), &file, &entry, args, opts)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{}", serde_json::to_string_pretty(&report.value)?);
            for a in &report.actions {
                println!("{} {a}", if dry_run { "would:" } else { "did:" });
            }
            let _ = Arc::strong_count(&host);
            Ok(ExitCode::SUCCESS)
        }
    }
}
