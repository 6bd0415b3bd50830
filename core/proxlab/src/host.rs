//! The script host: how Rhai scripts reach Proxmox, the inventory and (later) the nodes' shells.
//! Every door a script has to the outside world is a method here (DESIGN §6).

use std::sync::Arc;

use script::{Host, SetSources};
use sync::Syncer;

use crate::config::Config;

/// [`script::Host`] over the running system.
pub struct ProxlabHost {
    handle: tokio::runtime::Handle,
    syncer: Arc<Syncer>,
    /// SSH / local executors per node (`[[cluster.node]]`): `ssh::exec` and `qcow2::`.
    nodes: deploy::NodeOps,
    /// The VM operations (`pve::power`, the deployer's power actions): the process's one service,
    /// shared with the web layer.
    ops: ops::Ops,
}

impl ProxlabHost {
    /// A host over `syncer`'s clients and inventory and the VM operations `ops`, driving async calls on
    /// `handle` (no node access).
    pub fn new(handle: tokio::runtime::Handle, syncer: Arc<Syncer>, ops: ops::Ops) -> Arc<ProxlabHost> {
        Self::with_nodes(handle, syncer, ops, deploy::NodeOps::default())
    }

    /// Like [`ProxlabHost::new`], with node access (see [`crate::cloning::node_ops`]).
    pub fn with_nodes(
        handle: tokio::runtime::Handle,
        syncer: Arc<Syncer>,
        ops: ops::Ops,
        nodes: deploy::NodeOps,
    ) -> Arc<ProxlabHost> {
        Arc::new(ProxlabHost {
            handle,
            syncer,
            nodes,
            ops,
        })
    }
}

fn guest_json(g: &store::GuestRecord) -> serde_json::Value {
    serde_json::to_value(g).unwrap_or(serde_json::Value::Null)
}

impl Host for ProxlabHost {
    fn runtime(&self) -> tokio::runtime::Handle {
        self.handle.clone()
    }

    fn pve(&self, cluster: &str) -> Option<pve::PveClient> {
        self.syncer.client(cluster).cloned()
    }

    fn clusters(&self) -> Vec<String> {
        self.syncer.cluster_ids()
    }

    fn ops(&self) -> Option<ops::Ops> {
        Some(self.ops.clone())
    }

    fn inventory_guest(&self, cluster: &str, vmid: u32) -> Option<serde_json::Value> {
        self.syncer
            .inventory()
            .snapshot()
            .guest(cluster, vmid)
            .map(|g| guest_json(g))
    }

    fn inventory_guests(&self, cluster: &str) -> Vec<serde_json::Value> {
        self.syncer
            .inventory()
            .snapshot()
            .cluster_guests(cluster)
            .map(|g| guest_json(g))
            .collect()
    }

    fn cpu_samples(&self, cluster: &str, vmid: u32) -> Vec<(u64, f64)> {
        self.syncer.cpu_samples(cluster, vmid)
    }

    fn ssh_exec(
        &self,
        cluster: &str,
        node: &str,
        argv: &[String],
    ) -> futures::future::BoxFuture<'static, Result<script::ExecOutput, script::HostError>> {
        let nodes = self.nodes.clone();
        let (cluster, node, argv) = (cluster.to_string(), node.to_string(), argv.to_vec());
        Box::pin(async move { nodes.exec(&cluster, &node, &argv).await })
    }

    fn qcow2(&self) -> Option<Arc<dyn script::Qcow2Ops>> {
        Some(Arc::new(self.nodes.clone()))
    }
}

/// The script set sources the config describes: embedded defaults, the site dir, plugin dirs
/// (the shipped `plugins/` when no dirs are configured — the checkout's, or the package's; never a
/// build path in a release binary: [`web::connect::shipped_dir`] — then the configured ones).
pub fn sources(cfg: &Config) -> SetSources {
    let mut plugin_dirs = Vec::new();
    if cfg.plugins.dirs.is_empty()
        && let Some(shipped) = web::connect::shipped_dir("plugins")
    {
        plugin_dirs.push(shipped);
    }
    plugin_dirs.extend(cfg.plugins.dirs.iter().cloned());
    SetSources {
        defaults: None,
        site: cfg.scripts.site_dir.clone(),
        plugin_dirs,
        enabled_plugins: cfg.plugins.enabled.clone(),
        plugin_settings: cfg.plugins.settings.clone(),
    }
}
