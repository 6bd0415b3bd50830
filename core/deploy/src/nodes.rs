//! [`NodeOps`]: commands and QCOW2 work on the cluster nodes, over the cloner's executors — the
//! implementation of [`script::Qcow2Ops`] and of the host's `ssh::exec`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloner::{ClonerError, Executor, ImageFormat, Qcow2};
use futures::future::BoxFuture;
use script::{ExecOutput, HostError, Qcow2Ops};

use crate::error::{DeployError, Result};

/// How Proxlab reaches one node: an executor (SSH or local) and the storage directories it may
/// touch there.
#[derive(Clone, Debug)]
pub struct NodeTarget {
    /// Cluster id.
    pub cluster: String,
    /// Node name as PVE knows it (`pve1`).
    pub node: String,
    /// Runs commands on the node ([`cloner::SshExecutor`] or [`cloner::LocalExecutor`]).
    pub exec: Arc<dyn Executor>,
    /// Absolute storage directories on the node (`/mnt/pve/labnfs`); QCOW2 work is refused outside.
    pub storage_roots: Vec<PathBuf>,
}

struct Node {
    exec: Arc<dyn Executor>,
    qcow2: Option<Qcow2>,
}

/// Bases whose whole chain [`Qcow2::info_chain`] accepted as the stated format, by `(cluster, node,
/// path, format)`, with when they were checked.
type FormatCache = HashMap<(String, String, String, ImageFormat), Instant>;

/// Checked bases are kept this long (bases are never overwritten in place).
const FORMAT_TTL: Duration = Duration::from_secs(300);

/// Executors and QCOW2 handles per `(cluster, node)`. Cheap to clone.
///
/// As [`Qcow2Ops`]: `create_overlay` checks once per base (cached 5 min) the base's whole backing chain
/// read as the stated format ([`Qcow2::info_chain`]: `qemu-img info -f <format>`, never probed; every
/// backing file inside the storage), then runs the guarded `qemu-img create -f qcow2 -F <format> -b
/// <absolute base> <overlay>`; `flatten` is [`Qcow2::flatten`] with the stated source format. Paths
/// outside the node's storage roots are refused.
#[derive(Clone, Default)]
pub struct NodeOps {
    nodes: Arc<HashMap<(String, String), Node>>,
    formats: Arc<Mutex<FormatCache>>,
}

impl std::fmt::Debug for NodeOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut keys: Vec<String> = self.nodes.keys().map(|(c, n)| format!("{c}/{n}")).collect();
        keys.sort();
        f.debug_struct("NodeOps").field("nodes", &keys).finish()
    }
}

impl NodeOps {
    /// Node operations over `targets`. Errors: [`DeployError::Invalid`] for a relative or `/` storage
    /// root, or a node listed twice.
    pub fn new(targets: Vec<NodeTarget>) -> Result<NodeOps> {
        let mut nodes = HashMap::new();
        for t in targets {
            let mut q: Option<Qcow2> = None;
            for root in &t.storage_roots {
                q = Some(
                    match q {
                        None => Qcow2::new(t.exec.clone(), root.clone()),
                        Some(q) => q.allow_root(root.clone()),
                    }
                    .map_err(|e| {
                        DeployError::Invalid(format!(
                            "node {}/{}: storage root {}: {e}",
                            t.cluster,
                            t.node,
                            root.display()
                        ))
                    })?,
                );
            }
            let key = (t.cluster.clone(), t.node.clone());
            if nodes.contains_key(&key) {
                return Err(DeployError::Invalid(format!(
                    "node {}/{} is configured twice",
                    t.cluster, t.node
                )));
            }
            nodes.insert(
                key,
                Node {
                    exec: t.exec,
                    qcow2: q,
                },
            );
        }
        Ok(NodeOps {
            nodes: Arc::new(nodes),
            formats: Arc::default(),
        })
    }

    /// Whether `(cluster, node)` is configured.
    pub fn has_node(&self, cluster: &str, node: &str) -> bool {
        self.nodes.contains_key(&(cluster.to_string(), node.to_string()))
    }

    /// The nodes configured for `cluster`, sorted.
    pub fn nodes_of(&self, cluster: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .nodes
            .keys()
            .filter(|(c, _)| c == cluster)
            .map(|(_, n)| n.clone())
            .collect();
        v.sort();
        v
    }

    /// The QCOW2 handle of a node (only when it has storage roots).
    pub fn qcow2(&self, cluster: &str, node: &str) -> std::result::Result<Qcow2, HostError> {
        let n = self.node(cluster, node)?;
        n.qcow2.clone().ok_or_else(|| {
            HostError::new(
                "qcow2.unavailable",
                format!("node {cluster}/{node} has no storage_roots configured"),
            )
        })
    }

    fn node(&self, cluster: &str, node: &str) -> std::result::Result<&Node, HostError> {
        self.nodes
            .get(&(cluster.to_string(), node.to_string()))
            .ok_or_else(|| {
                HostError::new(
                    "ssh.unavailable",
                    format!(
                        "no SSH access configured for node {node} of cluster {cluster} ([[cluster.node]])"
                    ),
                )
            })
    }

    /// Runs `argv` on the node (quoted per element by the executor). A non-zero status is not an
    /// error. Errors: `ssh.unavailable`, `ssh.host_key`, `ssh.auth`, `ssh.unreachable`, `ssh.timeout`,
    /// `ssh.failed`.
    pub async fn exec(
        &self,
        cluster: &str,
        node: &str,
        argv: &[String],
    ) -> std::result::Result<ExecOutput, HostError> {
        let exec = self.node(cluster, node)?.exec.clone();
        let out = exec.run(argv).await.map_err(|e| host_error(&e))?;
        Ok(ExecOutput {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            status: i32::try_from(out.status).unwrap_or(-1),
        })
    }

    /// Checks `base`'s whole chain read as `format` (cached for a few minutes).
    async fn check_base(
        &self,
        cluster: &str,
        node: &str,
        q: &Qcow2,
        base: &str,
        format: ImageFormat,
    ) -> std::result::Result<(), HostError> {
        let key = (cluster.to_string(), node.to_string(), base.to_string(), format);
        if let Ok(cache) = self.formats.lock()
            && let Some(at) = cache.get(&key)
            && at.elapsed() < FORMAT_TTL
        {
            return Ok(());
        }
        q.info_chain(Path::new(base), format)
            .await
            .map_err(|e| host_error(&e))?;
        if let Ok(mut cache) = self.formats.lock() {
            cache.insert(key, Instant::now());
        }
        Ok(())
    }
}

/// A format a script or a volume config states: `qcow2` or `raw`, else `qcow2.format`.
fn stated_format(what: &str, path: &str, format: &str) -> std::result::Result<ImageFormat, HostError> {
    match format {
        "qcow2" => Ok(ImageFormat::Qcow2),
        "raw" => Ok(ImageFormat::Raw),
        other => Err(HostError::new(
            "qcow2.format",
            format!("{what} {path} is stated to be {other:?}; only qcow2 and raw images are read"),
        )),
    }
}

/// Maps a cloner error to the host error codes scripts see (`ssh.*`, `qcow2.*`).
pub fn host_error(e: &ClonerError) -> HostError {
    let code = match e {
        ClonerError::HostKeyMismatch { .. } | ClonerError::UnknownHostKey { .. } => "ssh.host_key",
        ClonerError::Auth { .. } => "ssh.auth",
        ClonerError::Negotiation { .. } | ClonerError::Connect { .. } | ClonerError::Spawn { .. } => {
            "ssh.unreachable"
        }
        ClonerError::Timeout { .. } => "ssh.timeout",
        ClonerError::AlreadyExists(_) => "qcow2.exists",
        ClonerError::NotFound(_) => "qcow2.not_found",
        ClonerError::CommandFailed { stderr, .. }
            if stderr.contains("No such file") || stderr.contains("Could not open") =>
        {
            "qcow2.not_found"
        }
        ClonerError::PathOutsideStorage { .. } | ClonerError::InvalidPath { .. } => "qcow2.path",
        ClonerError::UnsupportedFormat(_) => "qcow2.format",
        ClonerError::UnsafeImage { .. } => "qcow2.unsafe_image",
        ClonerError::NotIdentical { .. } => "qcow2.not_identical",
        ClonerError::Config(_) => "ssh.failed",
        _ => "qcow2.failed",
    };
    HostError::new(code, e.to_string())
}

impl Qcow2Ops for NodeOps {
    fn info(
        &self,
        cluster: &str,
        node: &str,
        path: &str,
        format: &str,
    ) -> BoxFuture<'static, std::result::Result<serde_json::Value, HostError>> {
        let q = self.qcow2(cluster, node);
        let path = path.to_string();
        let format = stated_format("image", &path, format);
        Box::pin(async move {
            let q = q?;
            let format = format?;
            let argv =
                cloner::qcow2::cmd::info(Path::new(&path), format, false).map_err(|e| host_error(&e))?;
            // Through Qcow2::info for the path checks, then the raw JSON for the script (qemu-img's keys).
            q.info(Path::new(&path), format)
                .await
                .map_err(|e| host_error(&e))?;
            let out = q.executor().run(&argv).await.map_err(|e| host_error(&e))?;
            let out = out.check(&argv).map_err(|e| host_error(&e))?;
            serde_json::from_slice(&out.stdout)
                .map_err(|e| HostError::new("qcow2.failed", format!("qemu-img info: {e}")))
        })
    }

    fn create_overlay(
        &self,
        cluster: &str,
        node: &str,
        base: &str,
        base_format: &str,
        overlay: &str,
    ) -> BoxFuture<'static, std::result::Result<(), HostError>> {
        let this = self.clone();
        let (cluster, node, base, base_format, overlay) = (
            cluster.to_string(),
            node.to_string(),
            base.to_string(),
            base_format.to_string(),
            overlay.to_string(),
        );
        Box::pin(async move {
            let q = this.qcow2(&cluster, &node)?;
            let format = stated_format("base", &base, &base_format)?;
            this.check_base(&cluster, &node, &q, &base, format).await?;
            q.create_overlay_with_format(Path::new(&base), format, Path::new(&overlay))
                .await
                .map_err(|e| host_error(&e))
        })
    }

    fn flatten(
        &self,
        cluster: &str,
        node: &str,
        src: &str,
        src_format: &str,
        dst: &str,
    ) -> BoxFuture<'static, std::result::Result<(), HostError>> {
        let q = self.qcow2(cluster, node);
        let format = stated_format("disk", src, src_format);
        let (src, dst) = (src.to_string(), dst.to_string());
        Box::pin(async move {
            q?.flatten(Path::new(&src), format?, Path::new(&dst))
                .await
                .map(|_| ())
                .map_err(|e| host_error(&e))
        })
    }
}
