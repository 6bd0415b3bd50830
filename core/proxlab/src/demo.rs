//! `proxlab demo`: a fake Proxmox VE cluster (the test harness's pve-sim, needing Python and fakepve,
//! installed into a venv on first use) with a school lab, and the portal serving on it.
//!
//! The fake's shared storage `labnfs` is a real folder; the demo config declares the nodes pve1–pve3
//! as `local = true` with that folder as `labnfs`'s root, so class deployments run real `qemu-img`
//! here without SSH. Once the server answers `/health`, [`setup_demo_class`] registers template 9000
//! and creates the class "Linux 101 (demo)" owned by `teacher` with 5 student VMs (only once per data
//! dir: found by name on later starts), gives the demo `student` a VM of it, and prints a fresh
//! invite link.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::config::Config;

/// Starts the fake cluster, writes `<data_dir>/proxlab.toml`, and serves until Ctrl-C.
pub async fn run(listen: SocketAddr, data_dir: PathBuf, prepare_only: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(&data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    println!("proxlab demo: starting a fake Proxmox VE cluster (first run installs fakepve into a venv)…");
    let spec = testkit::ClusterSpec {
        name: Some("school-lab".into()),
        ..testkit::ClusterSpec::lab()
    };
    let cluster = tokio::task::spawn_blocking(move || testkit::FakeCluster::start(spec))
        .await
        .context("demo cluster task")?
        .context("cannot start the fake cluster")?;
    let config_path = data_dir.join("proxlab.toml");
    let labnfs = cluster
        .storage_dirs
        .get("labnfs")
        .context("the fake cluster has no labnfs folder")?
        .canonicalize()
        .context("labnfs folder of the fake cluster")?;
    let node_sections = demo_node_sections(&labnfs);
    let text = format!(
        r#"# Written by `proxlab demo`: a fake cluster on loopback. Safe to delete.
listen = "{listen}"
data_dir = "{data}"

[sync]
interval_secs = 2

[[cluster]]
id = "lab"
name = "School lab (fake)"
url = "{url}"
token_id = "{token_id}"
token_secret = "{token_secret}"
ca_file = "{ca}"
vmid_range = [4000, 4999]
{node_sections}"#,
        data = data_dir.join("state").display(),
        url = cluster.url,
        token_id = cluster.token_id,
        token_secret = cluster.token_secret,
        ca = cluster.ca_file.display(),
    );
    std::fs::write(&config_path, text).with_context(|| format!("cannot write {}", config_path.display()))?;
    println!(
        "proxlab demo: fake cluster at {} (control API {})",
        cluster.url, cluster.control_url
    );
    println!("proxlab demo: config written to {}", config_path.display());
    for (name, role, password) in crate::admin::seed_demo_accounts(&Config::load(&config_path)?, "lab")? {
        println!("proxlab demo: sign in as {name} / {password} ({role})");
    }
    if prepare_only {
        return Ok(());
    }
    let cfg = Config::load(&config_path)?;
    // The tokens are made on a thread of their own, outside the runtime: an account state made inside
    // it starts watchers that keep the database open, and the server must open it next.
    let (token, teacher_token) = std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<(String, String)> {
            Ok((
                crate::admin::demo_admin_token(&cfg)?,
                demo_token(&cfg, "teacher")?,
            ))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("making the demo tokens failed"))?
    })?;
    println!("proxlab demo: admin API token for today (curl -H \"Authorization: Bearer $T\"): T={token}");
    println!("proxlab demo: open http://{listen}/ and sign in");
    // Plain HTTP to our own loopback listener; the TLS config (ring provider) is only needed because the
    // workspace's reqwest has no default crypto provider.
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(cluster.tls_config()?)
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()?;
    let setup = tokio::spawn(async move {
        match setup_demo_class(&http, listen, &token, &teacher_token).await {
            Ok(demo) => {
                let how = if demo.created {
                    "is ready"
                } else {
                    "is kept from an earlier start (the fake cluster starts empty: delete the data dir for fresh VMs)"
                };
                println!(
                    "proxlab demo: class \"{DEMO_CLASS}\" ({}) {how}: http://{listen}/classes/{} (sign in as teacher)",
                    demo.class_id, demo.class_id
                );
                println!("proxlab demo: invite link for students: {}", demo.invite_url);
            }
            Err(e) => eprintln!("proxlab demo: the demo class could not be set up: {e:#}"),
        }
    });
    let served = crate::wiring::serve(cfg).await;
    setup.abort();
    drop(cluster); // stops the fake cluster (by its PID)
    served
}

/// The `[[cluster.node]]` sections of the demo config: pve1–pve3 run on this machine (`local = true`,
/// no SSH) with `labnfs` mounted at `labnfs` (the fake cluster's storage folder, an absolute path).
fn demo_node_sections(labnfs: &std::path::Path) -> String {
    let mut out = String::new();
    for node in ["pve1", "pve2", "pve3"] {
        out.push_str(&format!(
            "\n[[cluster.node]]\nname = \"{node}\"\nlocal = true\nstorage_roots = {{ labnfs = \"{}\" }}\n",
            labnfs.display()
        ));
    }
    out
}

/// Name of the demo class (looked up by this name, so a restart does not make a second one).
pub const DEMO_CLASS: &str = "Linux 101 (demo)";

/// What [`setup_demo_class`] made or found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoClass {
    /// Class id (`/classes/{id}`).
    pub class_id: String,
    /// True when the class was created now (false: found from an earlier start).
    pub created: bool,
    /// `http://<listen>/join/<token>`: a fresh invite link (the token is shown only once).
    pub invite_url: String,
}

/// A one-day API token of the demo user `user`, made before the server opens the database.
fn demo_token(cfg: &Config, user: &str) -> anyhow::Result<String> {
    let store = store::Store::open(cfg.data_dir.join("db")).context("opening the demo database")?;
    let auth = web::auth::AuthState::new(store.clone(), web::auth::AuthConfig::default());
    let (secret, _) = auth
        .create_token(user, Some(sync::now_secs() + 86_400), "proxlab demo")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    store.flush()?;
    Ok(secret.expose().to_string())
}

/// One JSON call to the demo server; an answer outside 2xx is an error with the server's message.
async fn call(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let mut req = http
        .request(method.clone(), format!("{base}{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.with_context(|| format!("{method} {path}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{method} {path}: {status}: {text}");
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Waits for `/health` of the server on `listen` (60 s), then makes the demo class through the JSON
/// API: registers template 9000 (admin token), creates [`DEMO_CLASS`] with 5 student VMs on cluster
/// `lab` as `teacher` unless a class of that name exists, waits for its deploy job (3 minutes), gives
/// the demo `student` a VM of it and creates an invite. Errors: the server did not come up, an API
/// call failed, the job failed or timed out.
pub async fn setup_demo_class(
    http: &reqwest::Client,
    listen: SocketAddr,
    admin_token: &str,
    teacher_token: &str,
) -> anyhow::Result<DemoClass> {
    let base = format!("http://{listen}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = http.get(format!("{base}/health")).send().await;
        if matches!(&up, Ok(r) if r.status().is_success()) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the server on {listen} did not answer /health within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    use reqwest::Method;
    let classes = call(http, &base, teacher_token, Method::GET, "/api/classes", None).await?;
    let existing = classes["classes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == DEMO_CLASS)
        .and_then(|c| c["id"].as_str().map(str::to_string));
    let (class_id, created) = match existing {
        Some(id) => (id, false),
        None => {
            call(
                http,
                &base,
                admin_token,
                Method::POST,
                "/api/templates",
                Some(json!({"cluster": "lab", "vmid": 9000, "visibility": "all"})),
            )
            .await?;
            let made = call(
                http,
                &base,
                teacher_token,
                Method::POST,
                "/api/classes",
                Some(json!({
                    "name": DEMO_CLASS,
                    "cluster": "lab",
                    "template_vmid": 9000,
                    "pool_size": 5,
                    "self_registration": true,
                    "description": "A demo class: one teacher VM, a class base and five student VMs.",
                })),
            )
            .await?;
            let id = made["class"]["id"]
                .as_str()
                .context("no class id in the answer")?
                .to_string();
            let job = made["job"]["id"]
                .as_str()
                .context("no job id in the answer")?
                .to_string();
            let deadline = Instant::now() + Duration::from_secs(180);
            loop {
                let j = call(
                    http,
                    &base,
                    teacher_token,
                    Method::GET,
                    &format!("/api/jobs/{job}"),
                    None,
                )
                .await?;
                match j["state"].as_str() {
                    Some("done") => break,
                    Some("failed" | "cancelled") => {
                        bail!("the demo class's deploy job {job} failed: {}", j["error"])
                    }
                    _ if Instant::now() > deadline => {
                        bail!("the demo class's deploy job {job} is still running after 3 minutes")
                    }
                    _ => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
            call(
                http,
                &base,
                teacher_token,
                Method::POST,
                &format!("/api/class/{id}/assign"),
                Some(json!({"user": "student"})),
            )
            .await?;
            (id, true)
        }
    };
    let invite = call(
        http,
        &base,
        teacher_token,
        Method::POST,
        &format!("/api/classes/{class_id}/invite"),
        Some(json!({})),
    )
    .await?;
    let url = invite["url"].as_str().context("no url in the invite")?;
    let invite_url = if url.starts_with('/') {
        format!("{base}{url}")
    } else {
        url.to_string()
    };
    Ok(DemoClass {
        class_id,
        created,
        invite_url,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn demo_nodes_run_locally_with_labnfs_as_their_storage_root() {
        let dir = tempfile::tempdir().unwrap();
        let labnfs = dir.path().join("labnfs");
        std::fs::create_dir_all(&labnfs).unwrap();
        let text = format!(
            "listen = \"127.0.0.1:18081\"\ndata_dir = \"{}\"\n\n[[cluster]]\nid = \"lab\"\nurl = \"https://127.0.0.1:8006\"\n\
             token_id = \"root@pam!demo\"\ntoken_secret = \"s\"\nvmid_range = [4000, 4999]\n{}",
            dir.path().display(),
            demo_node_sections(&labnfs)
        );
        let cfg = Config::parse(&text, &[], dir.path()).unwrap();
        let lab = &cfg.clusters[0];
        assert_eq!(lab.vmid_range, Some([4000, 4999]));
        let names: Vec<&str> = lab.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["pve1", "pve2", "pve3"]);
        for n in &lab.nodes {
            assert!(n.local, "{}", n.name);
            assert_eq!(n.storage_roots.get("labnfs"), Some(&labnfs), "{}", n.name);
        }
        // The nodes become local executors (no SSH key needed) and the deployer knows labnfs's path.
        crate::cloning::node_ops(&cfg, &cloner::SshPool::new()).unwrap();
        let d = crate::cloning::deploy_config(&cfg);
        assert!(format!("{d:?}").contains(&labnfs.display().to_string()), "{d:?}");
    }
}
