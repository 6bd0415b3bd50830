//! Node access for deployments: `[[cluster.node]]` → the cloner's executors (one pooled SSH connection
//! per node, host keys pinned / from known_hosts / TOFU when enabled; or the local executor) wrapped in
//! [`deploy::NodeOps`], which implements [`script::Qcow2Ops`] and the host's `ssh::exec`; and the
//! deployer's settings from `[[cluster]]`.
// Used by `serve` once it builds the deployer (see the deploy crate's wiring notes).

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use cloner::{HostKeyPolicy, LocalExecutor, NodeAccess, SshPool};
use deploy::{ClusterDeploy, DeployConfig, NodeOps, NodeTarget};

use crate::config::{Config, NodeSection};

/// The host-key policy of a node (validated by the config already).
fn host_key(n: &NodeSection) -> anyhow::Result<HostKeyPolicy> {
    match (&n.host_key_sha256, &n.known_hosts, n.tofu) {
        (Some(fp), _, _) => Ok(HostKeyPolicy::Fingerprint(fp.clone())),
        (None, Some(kh), true) => Ok(HostKeyPolicy::TrustOnFirstUse(kh.clone())),
        (None, Some(kh), false) => Ok(HostKeyPolicy::KnownHosts(kh.clone())),
        _ => anyhow::bail!("node {}: no host key policy", n.name),
    }
}

/// Executors for every `[[cluster.node]]` of every enabled cluster. SSH executors come from `pool`
/// (one connection per node, re-used by all callers). No connection is made here.
pub fn node_ops(cfg: &Config, pool: &SshPool) -> anyhow::Result<NodeOps> {
    let mut targets = Vec::new();
    for c in cfg.clusters.iter().filter(|c| c.enabled) {
        for n in &c.nodes {
            let exec: Arc<dyn cloner::Executor> = if n.local {
                Arc::new(LocalExecutor::default())
            } else {
                let key = n
                    .key_file
                    .clone()
                    .with_context(|| format!("cluster {} node {}: key_file", c.id, n.name))?;
                let mut access = NodeAccess::new(
                    n.ssh_host.clone().unwrap_or_else(|| n.name.clone()),
                    n.ssh_user.clone(),
                    key,
                    host_key(n)?,
                );
                access.port = n.ssh_port;
                Arc::new(
                    pool.get(&format!("{}/{}", c.id, n.name), &access)
                        .with_context(|| format!("cluster {} node {}", c.id, n.name))?,
                )
            };
            targets.push(NodeTarget {
                cluster: c.id.clone(),
                node: n.name.clone(),
                exec,
                storage_roots: n.storage_roots.values().cloned().collect(),
            });
        }
    }
    Ok(NodeOps::new(targets)?)
}

/// The deployer's settings: VMID ranges and storage mount paths per cluster, the script limits.
pub fn deploy_config(cfg: &Config) -> DeployConfig {
    let mut clusters = BTreeMap::new();
    for c in cfg.clusters.iter().filter(|c| c.enabled) {
        let mut storage_paths = BTreeMap::new();
        for n in &c.nodes {
            for (sid, path) in &n.storage_roots {
                storage_paths
                    .entry(sid.clone())
                    .or_insert_with(|| path.display().to_string());
            }
        }
        clusters.insert(
            c.id.clone(),
            ClusterDeploy {
                vmid_range: c.vmid_range.map(|[lo, hi]| (lo, hi)),
                default_storage: None,
                storage_paths,
            },
        );
    }
    DeployConfig {
        clusters,
        script_limits: cfg.scripts.limits.clone(),
        limits: deploy::DeployLimits {
            per_node: cfg.limits.deploy_per_node,
            per_storage: cfg.limits.deploy_per_storage,
            total: cfg.limits.deploy_total,
            max_pool: cfg.limits.max_pool,
            classes_per_teacher: cfg.limits.classes_per_teacher,
            registrations_per_minute: cfg.limits.registrations_per_invite_per_minute,
            vms_per_teacher: cfg.limits.vms_per_teacher,
            ..deploy::DeployLimits::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::tests::{BASE, refusal};

    /// The cluster of [`BASE`] with a VMID range and two nodes: one over SSH, one local.
    const NODES: &str = r#"vmid_range = [5000, 5999]

[[cluster.node]]
name = "pve1"
ssh_host = "192.0.2.10"
key_file = "keys/node_ed25519"
host_key_sha256 = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"
storage_roots = { labnfs = "/mnt/pve/labnfs", local = "/var/lib/vz" }

[[cluster.node]]
name = "pve2"
local = true
storage_roots = { labnfs = "/mnt/pve/labnfs" }
"#;

    fn cfg_text() -> String {
        format!("{BASE}{NODES}")
    }

    #[test]
    fn nodes_become_executors_and_storage_paths() {
        let cfg = Config::parse(&cfg_text(), &[], Path::new("/etc/proxlab")).unwrap();
        let n = &cfg.clusters[0].nodes[0];
        assert_eq!(
            n.key_file.as_deref(),
            Some(Path::new("/etc/proxlab/keys/node_ed25519"))
        );
        assert_eq!((n.ssh_port, n.ssh_user.as_str()), (22, "root"));
        let ops = node_ops(&cfg, &SshPool::new()).unwrap();
        assert_eq!(ops.nodes_of("lab"), vec!["pve1", "pve2"]);
        let d = deploy_config(&cfg);
        assert_eq!(d.clusters["lab"].vmid_range, Some((5000, 5999)));
        assert_eq!(d.clusters["lab"].storage_paths["labnfs"], "/mnt/pve/labnfs");
        assert_eq!(d.clusters["lab"].storage_paths["local"], "/var/lib/vz");
    }

    #[test]
    fn a_node_without_host_key_verification_is_refused() {
        let text = cfg_text().replace(
            "host_key_sha256 = \"SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s\"\n",
            "",
        );
        let err = refusal(&text);
        assert!(err.contains("the host key must be verified"), "{err}");
        let text = cfg_text().replace(
            "storage_roots = { labnfs = \"/mnt/pve/labnfs\" }",
            "storage_roots = { labnfs = \"rel\" }",
        );
        let err = refusal(&text);
        assert!(err.contains("must be an absolute directory"), "{err}");
    }
}
