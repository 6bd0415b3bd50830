//! Admin commands on the accounts database: `proxlab user add|passwd|list|disable|enable` and
//! `proxlab token create|list|revoke`.
//!
//! They open the sled database directly, so they run while `proxlab serve` is stopped (sled allows one
//! process at a time; a running server is named in the error). Passwords come from a no-echo prompt on a
//! terminal, or from the first line of stdin otherwise — never from the command line, where `ps` and shell
//! history would show them. Every change is written to the audit log as user `cli`.

use std::io::{BufRead, IsTerminal};
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, bail};
use clap::Subcommand;
use pve::Secret;
use store::{AuditRecord, Role, Store, UserRecord};

use crate::config::Config;

/// `proxlab user …`.
#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Create a local user; the password is read from stdin or a prompt.
    Add {
        /// Login name: letters, digits, '.', '_', '-' (no '@': that marks Proxmox realm users).
        name: String,
        /// admin, teacher or student.
        #[arg(long)]
        role: String,
        /// Name shown in the portal (default: the login name).
        #[arg(long)]
        display_name: Option<String>,
    },
    /// Set a new password (read from stdin or a prompt); signs the user out everywhere.
    Passwd {
        /// Login name.
        name: String,
    },
    /// List users.
    List,
    /// Disable a user: signs them out everywhere and stops their API tokens.
    Disable {
        /// Login name.
        name: String,
    },
    /// Enable a disabled user again.
    Enable {
        /// Login name.
        name: String,
    },
}

/// `proxlab token …`.
#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create an API token for a user and print its secret once (`Authorization: Bearer <secret>`).
    Create {
        /// The user the token acts as.
        #[arg(long)]
        user: String,
        /// Lifetime, e.g. `30d`, `12h` (default: no expiry).
        #[arg(long)]
        expires: Option<String>,
        /// What the token is for.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens (ids, users, expiry; never secrets).
    List,
    /// Revoke a token by id (`tok_…`).
    Revoke {
        /// Token id.
        id: String,
    },
}

fn open_store(cfg: &Config) -> anyhow::Result<Store> {
    let path = cfg.data_dir.join("db");
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create {}", cfg.data_dir.display()))?;
    Store::open(&path).map_err(|e| {
        let text = e.to_string();
        if text.contains("lock") || text.contains("WouldBlock") || text.contains("temporarily unavailable") {
            anyhow::anyhow!(
                "the database {} is in use — is `proxlab serve` running? Stop it first (or use the admin pages)",
                path.display()
            )
        } else {
            anyhow::Error::new(e)
        }
    })
}

fn parse_role(r: &str) -> anyhow::Result<Role> {
    Ok(match r {
        "admin" => Role::Admin,
        "teacher" => Role::Teacher,
        "student" => Role::Student,
        other => bail!("unknown role {other:?}: use admin, teacher or student"),
    })
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn audit(store: &Store, action: &str, target: &str) -> anyhow::Result<()> {
    store.audit(AuditRecord {
        at_micros: now_secs() * 1_000_000,
        user: "cli".into(),
        remote_addr: IpAddr::V4(Ipv4Addr::LOCALHOST).to_string(),
        action: action.into(),
        target: target.into(),
        result: "ok".into(),
    })?;
    Ok(())
}

/// Reads a new password: prompt twice (no echo) on a terminal, else the first line of stdin.
fn read_new_password() -> anyhow::Result<Secret> {
    let pw = if std::io::stdin().is_terminal() {
        let a = rpassword::prompt_password("New password: ").context("reading the password")?;
        let b = rpassword::prompt_password("Repeat it: ").context("reading the password")?;
        if a != b {
            bail!("the two passwords differ");
        }
        a
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if pw.len() < 8 {
        bail!("a password needs at least 8 characters");
    }
    if pw.len() > accounts::MAX_PASSWORD_BYTES {
        bail!("a password has at most {} bytes", accounts::MAX_PASSWORD_BYTES);
    }
    Ok(Secret::new(pw))
}

fn fmt_time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

/// Disables an account (its sessions end, its API tokens stop working) or enables it again; audited.
fn set_disabled(store: &Store, name: &str, disabled: bool) -> anyhow::Result<()> {
    store
        .set_user_disabled(name, disabled)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if disabled {
        audit(store, "user.disable", name)?;
        println!("{name} disabled; its sessions were ended and its API tokens stop working");
    } else {
        audit(store, "user.enable", name)?;
        println!("{name} enabled");
    }
    Ok(())
}

/// Runs a `proxlab user …` command.
pub fn user(cfg: &Config, cmd: UserCmd) -> anyhow::Result<()> {
    let store = open_store(cfg)?;
    match cmd {
        UserCmd::Add {
            name,
            role,
            display_name,
        } => {
            let role = parse_role(&role)?;
            store::validate_local_name(&name.to_ascii_lowercase()).map_err(|e| anyhow::anyhow!(e))?;
            if store.user(&name.to_ascii_lowercase())?.is_some() {
                bail!("user {name} already exists (use `proxlab user passwd {name}` to change the password)");
            }
            let password = read_new_password()?;
            let hash = accounts::password::hash_blocking(&password)?;
            let u = store.create_local_user(UserRecord {
                display_name: display_name.unwrap_or_else(|| name.clone()),
                name,
                role,
                password_hash: Some(hash),
                created_at: now_secs(),
                ..UserRecord::default()
            })?;
            audit(&store, "user.create", &u.name)?;
            println!("created {} user {}", role_name(u.role), u.name);
        }
        UserCmd::Passwd { name } => {
            let u = store.user(&name)?.with_context(|| format!("no user {name}"))?;
            if u.realm != "local" {
                bail!("{name} signs in with its Proxmox realm password; change it in Proxmox");
            }
            let password = read_new_password()?;
            let hash = accounts::password::hash_blocking(&password)?;
            store.set_password_hash(&name, hash, true)?;
            audit(&store, "user.passwd", &name)?;
            println!("password of {name} changed; its sessions were ended");
        }
        UserCmd::List => {
            println!(
                "{:<32} {:<8} {:<6} {:<9} {:<20} display name",
                "name", "role", "realm", "state", "created"
            );
            for u in store.users_all()? {
                println!(
                    "{:<32} {:<8} {:<6} {:<9} {:<20} {}",
                    u.name,
                    role_name(u.role),
                    u.realm,
                    if u.disabled { "disabled" } else { "active" },
                    fmt_time(u.created_at),
                    u.display_name
                );
            }
        }
        UserCmd::Disable { name } => set_disabled(&store, &name, true)?,
        UserCmd::Enable { name } => set_disabled(&store, &name, false)?,
    }
    store.flush()?;
    Ok(())
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Admin => "admin",
        Role::Teacher => "teacher",
        Role::Student => "student",
    }
}

/// Runs a `proxlab token …` command.
pub fn token(cfg: &Config, cmd: TokenCmd) -> anyhow::Result<()> {
    let store = open_store(cfg)?;
    match cmd {
        TokenCmd::Create {
            user,
            expires,
            description,
        } => {
            if store.user(&user)?.is_none() {
                bail!("no user {user}");
            }
            let expires_at = match expires {
                Some(e) => {
                    let d = humantime::parse_duration(&e)
                        .with_context(|| format!("--expires {e:?} (e.g. 30d, 12h)"))?;
                    Some(now_secs() + d.as_secs())
                }
                None => None,
            };
            // The web layer makes and stores tokens the same way for CLI and API.
            let auth = web::auth::AuthState::new(store.clone(), web::auth::AuthConfig::default());
            let (secret, rec) = auth
                .create_token(&user, expires_at, &description)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            audit(&store, "token.create", &format!("{} ({user})", rec.id))?;
            eprintln!(
                "token {} for {user}{}; the secret is shown only now:",
                rec.id,
                expires_at
                    .map(|e| format!(", expires {}", fmt_time(e)))
                    .unwrap_or_default()
            );
            println!("{}", secret.expose());
        }
        TokenCmd::List => {
            println!(
                "{:<18} {:<24} {:<8} {:<20} {:<20} description",
                "id", "user", "state", "created", "expires"
            );
            let now = now_secs();
            for t in store.tokens_all()? {
                let state = if t.revoked {
                    "revoked"
                } else if t.expires_at.is_some_and(|e| e <= now) {
                    "expired"
                } else {
                    "active"
                };
                println!(
                    "{:<18} {:<24} {:<8} {:<20} {:<20} {}",
                    t.id,
                    t.user,
                    state,
                    fmt_time(t.created_at),
                    t.expires_at.map(fmt_time).unwrap_or_else(|| "never".into()),
                    t.description
                );
            }
        }
        TokenCmd::Revoke { id } => {
            store.revoke_token(&id).map_err(|e| anyhow::anyhow!("{e}"))?;
            audit(&store, "token.revoke", &id)?;
            println!("token {id} revoked");
        }
    }
    store.flush()?;
    Ok(())
}

/// For `proxlab demo`: a fresh API token for the demo `admin`, valid for one day (shown once).
#[cfg(feature = "demo")]
pub fn demo_admin_token(cfg: &Config) -> anyhow::Result<String> {
    let store = open_store(cfg)?;
    let auth = web::auth::AuthState::new(store.clone(), web::auth::AuthConfig::default());
    let (secret, _) = auth
        .create_token("admin", Some(now_secs() + 86_400), "proxlab demo")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    store.flush()?;
    Ok(secret.expose().to_string())
}

/// For `proxlab demo`: creates (once) the demo accounts `admin`, `teacher` and `student` with the
/// password `demo-<name>`, and gives the student VMs 1103 and 1110 of cluster `cluster`. Returns
/// `(name, role, password)` for printing. Existing accounts are left as they are.
#[cfg(feature = "demo")]
pub fn seed_demo_accounts(
    cfg: &Config,
    cluster: &str,
) -> anyhow::Result<Vec<(String, &'static str, String)>> {
    let store = open_store(cfg)?;
    let mut out = Vec::new();
    for (name, role) in [
        ("admin", Role::Admin),
        ("teacher", Role::Teacher),
        ("student", Role::Student),
    ] {
        let password = format!("demo-{name}");
        if store.user(name)?.is_none() {
            let hash = accounts::password::hash_blocking(&Secret::new(password.clone()))?;
            store.create_local_user(UserRecord {
                name: name.into(),
                display_name: format!("Demo {name}"),
                role,
                password_hash: Some(hash),
                created_at: now_secs(),
                ..UserRecord::default()
            })?;
        }
        out.push((name.to_string(), role_name(role), password));
    }
    let have: Vec<u32> = store
        .assignments_all()?
        .into_iter()
        .filter(|a| a.user == "student")
        .map(|a| a.vmid)
        .collect();
    for vmid in [1103u32, 1110] {
        if !have.contains(&vmid) {
            store.create_assignment(store::AssignmentRecord {
                cluster: cluster.into(),
                vmid,
                user: "student".into(),
                created_at: now_secs(),
                ..Default::default()
            })?;
        }
    }
    store.flush()?;
    Ok(out)
}
