//! `proxlab-deploy-job SPEC.json`: runs the deployer outside the server — recovery first (as `proxlab
//! serve` does at start), then optionally creates one class and follows its deploy job, printing every
//! job event as one JSON line on stdout. Used by the crash-recovery test (which kills it with SIGKILL at
//! a random event) and handy for debugging a workflow against a real cluster.
//!
//! SPEC (JSON): `{"db": DIR, "cluster": {"id", "url", "token_id", "token_secret", "ca_file"},
//! "vmid_range": [LOW, HIGH], "nodes": [{"node", "host", "port", "user", "key_file", "host_key_sha256",
//! "storage_roots": [DIR..]}], "class": {"name", "template_vmid", "pool_size", "workflow"} | null,
//! "owner": USER}`. Exit status 0 when the job ended (even with failed VMs), 1 on errors.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cloner::{HostKeyPolicy, NodeAccess, SshExecutor};
use deploy::{ClassSpec, ClusterDeploy, DeployConfig, Deployer, NodeOps, NodeTarget, StaticHost};
use pve::{Auth, PveClient, PveConfig, Secret, Tls};
use script::{Limits, NullHost, ScriptRuntime, SetSources};
use serde_json::Value;

fn s(v: &Value, k: &str) -> Result<String, String> {
    v[k].as_str()
        .map(String::from)
        .ok_or_else(|| format!("spec: missing string {k}"))
}

async fn run(spec: Value) -> Result<(), String> {
    let store = store::Store::open(s(&spec, "db")?).map_err(|e| e.to_string())?;
    let c = &spec["cluster"];
    let cluster = s(c, "id")?;
    let client = PveClient::new(PveConfig::new(
        s(c, "url")?.parse().map_err(|e| format!("url: {e}"))?,
        Auth::Token {
            id: s(c, "token_id")?,
            secret: Secret::new(s(c, "token_secret")?),
        },
        Tls::CaFile(PathBuf::from(s(c, "ca_file")?)),
    ))
    .map_err(|e| e.to_string())?;
    let mut targets = Vec::new();
    for n in spec["nodes"].as_array().into_iter().flatten() {
        let mut access = NodeAccess::new(
            s(n, "host")?,
            s(n, "user")?,
            s(n, "key_file")?,
            HostKeyPolicy::Fingerprint(s(n, "host_key_sha256")?),
        );
        access.port = n["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(22);
        let exec = SshExecutor::new(access).map_err(|e| e.to_string())?;
        targets.push(NodeTarget {
            cluster: cluster.clone(),
            node: s(n, "node")?,
            exec: Arc::new(exec),
            storage_roots: n["storage_roots"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str().map(PathBuf::from))
                .collect(),
        });
    }
    let nodes = NodeOps::new(targets).map_err(|e| e.to_string())?;
    let handle = tokio::runtime::Handle::current();
    let host = StaticHost::new(handle.clone(), BTreeMap::from([(cluster.clone(), client)]), nodes);
    let loader = ScriptRuntime::new(Arc::new(NullHost::new(handle)), Limits::default());
    let set = Arc::new(
        loader
            .load_set(&SetSources::default())
            .map_err(|e| script::format_load_errors(&e))?,
    );
    let range = spec["vmid_range"].as_array().cloned().unwrap_or_default();
    let low = range
        .first()
        .and_then(Value::as_u64)
        .and_then(|v| u32::try_from(v).ok());
    let high = range
        .get(1)
        .and_then(Value::as_u64)
        .and_then(|v| u32::try_from(v).ok());
    let cfg = DeployConfig {
        clusters: BTreeMap::from([(
            cluster.clone(),
            ClusterDeploy {
                vmid_range: low.zip(high),
                ..ClusterDeploy::default()
            },
        )]),
        ..DeployConfig::default()
    };
    let deployer =
        Deployer::new(store, host, Arc::new(move || set.clone()), cfg).map_err(|e| e.to_string())?;
    let mut events = deployer.events();
    let report = deployer.recover().await.map_err(|e| e.to_string())?;
    println!("RECOVERED {}", serde_json::to_string(&report).unwrap_or_default());
    let class = &spec["class"];
    if class.is_null() {
        return Ok(());
    }
    let template_vmid = class["template_vmid"]
        .as_u64()
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(9000);
    // As an admin would: the template enters the catalogue, open to every teacher.
    deployer
        .register_template(
            &cluster,
            deploy::TemplateRef::Vmid(template_vmid),
            store::TemplateVisibility::AllTeachers,
        )
        .await
        .map_err(|e| e.to_string())?;
    let (_, job) = deployer
        .create_class(
            &s(&spec, "owner")?,
            ClassSpec {
                name: s(class, "name")?,
                cluster,
                template_vmid,
                workflow: class["workflow"].as_str().map(String::from),
                pool_size: class["pool_size"]
                    .as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .unwrap_or(3),
                ..ClassSpec::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut out = std::io::stdout();
    loop {
        match tokio::time::timeout(Duration::from_secs(120), events.recv()).await {
            Ok(Ok(ev)) => {
                let line = serde_json::to_string(&ev).unwrap_or_default();
                let _ = writeln!(out, "EVENT {line}");
                let _ = out.flush();
                if ev.job_id == job.id
                    && let deploy::JobEventKind::Job { state, .. } = ev.kind
                    && matches!(state, store::JobState::Done | store::JobState::Failed)
                {
                    println!("DONE {state:?}");
                    return Ok(());
                }
            }
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(_)) | Err(_) => return Err("no job events for 120 s".into()),
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: proxlab-deploy-job SPEC.json");
        return std::process::ExitCode::FAILURE;
    };
    let spec: Value = match std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{path}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match run(spec).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("proxlab-deploy-job: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
