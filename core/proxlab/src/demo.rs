//! `proxlab demo`: a fake Proxmox VE cluster (the test harness's pve-sim, needing Python and fakepve,
//! installed into a venv on first use) with a school lab, and the portal serving on it.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

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
"#,
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
    let token = crate::admin::demo_admin_token(&Config::load(&config_path)?)?;
    println!("proxlab demo: admin API token for today (curl -H \"Authorization: Bearer $T\"): T={token}");
    println!("proxlab demo: open http://{listen}/ and sign in");
    let cfg = Config::load(&config_path)?;
    let served = crate::wiring::serve(cfg).await;
    drop(cluster); // stops the fake cluster (by its PID)
    served
}
