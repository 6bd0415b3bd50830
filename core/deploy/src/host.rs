//! [`StaticHost`]: a [`script::Host`] over a fixed set of PVE clients and [`NodeOps`] — for tools,
//! the deploy benchmark and tests that run real workflows without the whole server. The server uses
//! its own host (with the inventory) and returns the same [`NodeOps`] from `qcow2()` / `ssh_exec`.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use script::{ExecOutput, Host, HostError, Qcow2Ops};

use crate::nodes::NodeOps;

/// A clock giving Unix seconds.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// A script host with PVE clients by cluster id and node executors; its VM operations run over an
/// inventory of their own that is read from the clusters when an operation needs a guest.
pub struct StaticHost {
    handle: tokio::runtime::Handle,
    clients: BTreeMap<String, pve::PveClient>,
    nodes: NodeOps,
    clock: Option<Clock>,
    ops: ops::Ops,
}

/// VM operations over `clients`, with an inventory in memory (no sync loop: an operation reads the
/// cluster when it meets a guest it does not know).
fn ops_over(clients: &BTreeMap<String, pve::PveClient>) -> ops::Ops {
    let names: Vec<(String, String)> = clients.keys().map(|id| (id.clone(), id.clone())).collect();
    let handles = clients
        .iter()
        .map(|(id, client)| sync::ClusterHandle {
            id: id.clone(),
            name: id.clone(),
            client: client.clone(),
        })
        .collect();
    // Without a store the inventory starts empty and cannot fail to load.
    let inventory = match sync::Inventory::load(None, &names) {
        Ok(i) => i,
        Err(e) => unreachable!("an inventory without a store failed to load: {e}"),
    };
    let syncer = sync::Syncer::new(
        inventory,
        handles,
        sync::SyncConfig::default(),
        Arc::new(sync::AgentDiscovery),
    );
    ops::Ops::new(syncer, ops::OpsConfig::default())
}

impl StaticHost {
    /// A host driving futures on `handle`.
    pub fn new(
        handle: tokio::runtime::Handle,
        clients: BTreeMap<String, pve::PveClient>,
        nodes: NodeOps,
    ) -> Arc<StaticHost> {
        StaticHost::build(handle, clients, nodes, None)
    }

    /// Like [`StaticHost::new`] with an injected clock (Unix seconds), e.g. to test invite expiry.
    pub fn with_clock(
        handle: tokio::runtime::Handle,
        clients: BTreeMap<String, pve::PveClient>,
        nodes: NodeOps,
        clock: Clock,
    ) -> Arc<StaticHost> {
        StaticHost::build(handle, clients, nodes, Some(clock))
    }

    fn build(
        handle: tokio::runtime::Handle,
        clients: BTreeMap<String, pve::PveClient>,
        nodes: NodeOps,
        clock: Option<Clock>,
    ) -> Arc<StaticHost> {
        Arc::new(StaticHost {
            handle,
            ops: ops_over(&clients),
            clients,
            nodes,
            clock,
        })
    }
}

impl Host for StaticHost {
    fn runtime(&self) -> tokio::runtime::Handle {
        self.handle.clone()
    }

    fn pve(&self, cluster: &str) -> Option<pve::PveClient> {
        self.clients.get(cluster).cloned()
    }

    fn clusters(&self) -> Vec<String> {
        self.clients.keys().cloned().collect()
    }

    fn ops(&self) -> Option<ops::Ops> {
        Some(self.ops.clone())
    }

    fn ssh_exec(
        &self,
        cluster: &str,
        node: &str,
        argv: &[String],
    ) -> BoxFuture<'static, Result<ExecOutput, HostError>> {
        let nodes = self.nodes.clone();
        let (cluster, node, argv) = (cluster.to_string(), node.to_string(), argv.to_vec());
        Box::pin(async move { nodes.exec(&cluster, &node, &argv).await })
    }

    fn qcow2(&self) -> Option<Arc<dyn Qcow2Ops>> {
        Some(Arc::new(self.nodes.clone()))
    }

    fn now(&self) -> u64 {
        match &self.clock {
            Some(c) => c(),
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }
}
