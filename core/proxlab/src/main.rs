//! `proxlab`: the command-line entry point — configuration loading, wiring of the crates, and the
//! admin commands (`serve`, `sync --once`, `check`, and `demo` with the `demo` feature).

mod admin;
mod cloning;
mod config;
#[cfg(feature = "demo")]
mod demo;
mod host;
mod ipscripts;
mod plugins;
mod scripting;
mod wiring;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

/// Proxlab: a self-service lab portal for Proxmox VE.
#[derive(Parser, Debug)]
#[command(name = "proxlab", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `--config FILE` (or `PROXLAB_CONFIG`) of every command that reads the configuration.
#[derive(clap::Args, Debug)]
struct ConfigPath {
    /// Configuration file.
    #[arg(
        long,
        short,
        env = "PROXLAB_CONFIG",
        default_value = "proxlab.toml",
        global = true
    )]
    config: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the portal.
    Serve {
        #[command(flatten)]
        config: ConfigPath,
    },
    /// Sync the inventory of every cluster.
    Sync {
        #[command(flatten)]
        config: ConfigPath,
        /// Run one sync (inventory + IP lookups), print a summary per cluster and exit; exits 1 when a
        /// cluster failed.
        #[arg(long)]
        once: bool,
    },
    /// Preflight: checks each cluster's connection and the API token's privileges.
    Check {
        #[command(flatten)]
        config: ConfigPath,
    },
    /// Manage accounts (run with the server stopped): add, passwd, list, disable, enable.
    User {
        #[command(flatten)]
        config: ConfigPath,
        #[command(subcommand)]
        cmd: admin::UserCmd,
    },
    /// Manage API tokens for scripts (run with the server stopped): create, list, revoke.
    Token {
        #[command(flatten)]
        config: ConfigPath,
        #[command(subcommand)]
        cmd: admin::TokenCmd,
    },
    /// Check and run site scripts, themes and plugins the way the server would.
    Script {
        #[command(subcommand)]
        cmd: scripting::ScriptCmd,
    },
    /// Start a fake Proxmox cluster with a school lab and serve the portal on it (no Proxmox needed).
    /// Only in builds with the `demo` feature (on by default).
    #[cfg(feature = "demo")]
    Demo {
        /// Address to serve on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Where the demo keeps its config and database.
        #[arg(long, default_value = "data/demo")]
        data_dir: PathBuf,
        /// Prepare and print the config, then exit without serving.
        #[arg(long)]
        prepare_only: bool,
    },
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PROXLAB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("proxlab: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("proxlab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            let cfg = Config::load(&config.config)?;
            wiring::serve(cfg).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync { config, once } => {
            let cfg = Config::load(&config.config)?;
            if !once {
                anyhow::bail!(
                    "`proxlab sync` runs inside `proxlab serve`; use `proxlab sync --once` for a one-off sync"
                );
            }
            wiring::sync_once(cfg).await
        }
        Command::Check { config } => {
            let cfg = Config::load(&config.config)?;
            wiring::check(cfg).await
        }
        Command::User { config, cmd } => {
            let cfg = Config::load(&config.config)?;
            admin::user(&cfg, cmd)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { config, cmd } => {
            let cfg = Config::load(&config.config)?;
            admin::token(&cfg, cmd)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Script { cmd } => scripting::run(cmd).await,
        #[cfg(feature = "demo")]
        Command::Demo {
            listen,
            data_dir,
            prepare_only,
        } => {
            use anyhow::Context as _;
            let data_dir = std::path::absolute(&data_dir).context("data dir")?;
            demo::run(listen, data_dir, prepare_only).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
