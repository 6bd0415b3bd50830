//! Removing what Proxlab made under a VMID (the VM, then any volume left on the storage), with the
//! "is this ours?" check that keeps Proxlab's hands off the template and other people's VMs.

use pve::{GuestConfig, GuestKind, PowerAction, PveClient, PveError, Upid};
use serde_json::Value;

use crate::Deployer;
use crate::error::{DeployError, Result};

/// The tag every VM Proxlab creates carries (workflow scripts set `tags: "proxlab;…"`).
pub(crate) const TAG: &str = "proxlab";

/// Percent-encodes one URL path segment (volume IDs contain `:` and `/`).
pub(crate) fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// True if a VM config shows that Proxlab created it: it carries the `proxlab` tag, or its name is the
/// one Proxlab planned for that (reserved) VMID. The registered template never passes (templates are
/// never tagged by Proxlab and their names are not planned names).
pub fn is_proxlab_vm(cfg: &GuestConfig, expected_name: Option<&str>) -> bool {
    cfg.tags().contains(TAG) || (expected_name.is_some() && cfg.name().as_deref() == expected_name)
}

impl Deployer {
    /// Waits for the task a write returned (a UPID string); `null` (a synchronous answer) is done.
    pub(crate) async fn wait_value(&self, client: &PveClient, v: Value) -> Result<()> {
        match v {
            Value::String(s) if s.starts_with("UPID:") => {
                let upid: Upid = s
                    .parse()
                    .map_err(|e: String| DeployError::Pve(PveError::MalformedResponse(e)))?;
                client
                    .wait_task(&upid, self.inner.cfg.limits.task_timeout)
                    .await?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The guest with `vmid` in `/cluster/resources`, if any.
    pub(crate) async fn find_guest(
        &self,
        client: &PveClient,
        vmid: u32,
    ) -> Result<Option<pve::ClusterResource>> {
        Ok(client
            .cluster_resources()
            .await?
            .into_iter()
            .find(|g| g.vmid == vmid))
    }

    /// Stops (if running, through the VM operations) and destroys QEMU VM `vmid` of `cluster` on `node`
    /// with its disks: `DELETE /nodes/{node}/qemu/{vmid}?purge=1&destroy-unreferenced-disks=1`. The
    /// caller checked it is Proxlab's.
    pub(crate) async fn destroy_vm(
        &self,
        client: &PveClient,
        cluster: &str,
        node: &str,
        vmid: u32,
    ) -> Result<()> {
        let st = client.guest_status(node, GuestKind::Qemu, vmid).await;
        match st {
            Ok(s) if s.status != "stopped" => {
                self.ops()?.power_fresh(cluster, vmid, PowerAction::Stop).await?;
            }
            Ok(_) => {}
            Err(PveError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let path = format!("/nodes/{}/qemu/{vmid}", seg(node));
        match client
            .delete_value(&path, &[("purge", "1"), ("destroy-unreferenced-disks", "1")])
            .await
        {
            Ok(v) => self.wait_value(client, v).await,
            Err(PveError::NotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes every volume of `vmid` left on `storage` (seen from `node`):
    /// `GET /nodes/{node}/storage/{storage}/content?vmid=N`, then
    /// `DELETE /nodes/{node}/storage/{storage}/content/{volid}` for each. Returns how many.
    pub(crate) async fn delete_volumes(
        &self,
        client: &PveClient,
        node: &str,
        storage: &str,
        vmid: u32,
    ) -> Result<usize> {
        let path = format!("/nodes/{}/storage/{}/content", seg(node), seg(storage));
        let id = vmid.to_string();
        let vols: Vec<pve::StorageVolume> = match client.get(&path, &[("vmid", &id)]).await {
            Ok(v) => v,
            Err(PveError::NotFound(_)) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        let mut n = 0;
        for v in vols
            .into_iter()
            .filter(|v| v.vmid == Some(vmid) && v.content == "images")
        {
            let del = format!("{path}/{}", seg(&v.volid));
            match client.delete_value(&del, &[]).await {
                Ok(answer) => self.wait_value(client, answer).await?,
                Err(PveError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            tracing::info!(volid = %v.volid, "deleted a leftover volume");
            n += 1;
        }
        Ok(n)
    }

    /// Removes whatever Proxlab made under the reserved `vmid`: the VM if one exists (only when
    /// [`is_proxlab_vm`] says it is ours — else [`DeployError::NotOurs`] and nothing is touched), then
    /// volumes of `vmid` left on `storages` (seen from `node`). Idempotent.
    pub(crate) async fn cleanup_vmid(
        &self,
        cluster: &str,
        vmid: u32,
        node: &str,
        storages: &[String],
        expected_name: Option<&str>,
    ) -> Result<()> {
        let client = self.pve(cluster)?;
        if let Some(g) = self.find_guest(&client, vmid).await? {
            if g.kind != GuestKind::Qemu {
                return Err(DeployError::NotOurs {
                    cluster: cluster.into(),
                    vmid,
                });
            }
            let cfg = match client.guest_config(&g.node, GuestKind::Qemu, vmid).await {
                Ok(c) => Some(c),
                Err(PveError::NotFound(_)) => None,
                Err(e) => return Err(e.into()),
            };
            if let Some(cfg) = cfg {
                if !is_proxlab_vm(&cfg, expected_name) {
                    tracing::warn!(
                        cluster,
                        vmid,
                        "VMID holds a VM Proxlab did not create; leaving it alone"
                    );
                    return Err(DeployError::NotOurs {
                        cluster: cluster.into(),
                        vmid,
                    });
                }
                if crate::protect::is_class_base(&cfg) && crate::protect::is_protected(&cfg) {
                    self.unprotect_base(&client, &g.node, vmid).await?;
                }
                tracing::info!(cluster, vmid, node = %g.node, "removing a VM Proxlab made");
                self.destroy_vm(&client, cluster, &g.node, vmid).await?;
            }
        }
        for s in storages {
            self.delete_volumes(&client, node, s, vmid).await?;
            self.sweep_files(&client, cluster, node, s, vmid).await;
        }
        Ok(())
    }

    /// Removes files PVE does not list as volumes but an interrupted attempt may have left in
    /// `<storage path>/images/<vmid>/`: flatten temp files (`.*.flatten-tmp`) and half-written images
    /// named like Proxlab's (`vm-<vmid>-disk-*`, `base-<vmid>-disk-*`); then the folder if empty. Only
    /// for a VMID Proxlab reserved (nothing else was there when it did). Best effort over `ssh::exec`
    /// (`find … -delete`); skipped when the node has no SSH access or the storage no path.
    async fn sweep_files(&self, client: &PveClient, cluster: &str, node: &str, storage: &str, vmid: u32) {
        let configured = self
            .inner
            .cfg
            .clusters
            .get(cluster)
            .and_then(|c| c.storage_paths.get(storage).cloned());
        let root = match configured {
            Some(p) => Some(p),
            None => client
                .storages()
                .await
                .ok()
                .and_then(|all| all.into_iter().find(|s| s.storage == storage))
                .filter(|s| s.is_file_based())
                .and_then(|s| s.path),
        };
        let Some(root) = root.filter(|r| r.starts_with('/') && r.len() > 1) else {
            return;
        };
        let dir = format!("{}/images/{vmid}", root.trim_end_matches('/'));
        let argv: Vec<String> = [
            "find",
            &dir,
            "-maxdepth",
            "1",
            "-type",
            "f",
            "(",
            "-name",
            ".*.flatten-tmp",
            "-o",
            "-name",
            &format!("vm-{vmid}-disk-*"),
            "-o",
            "-name",
            &format!("base-{vmid}-disk-*"),
            ")",
            "-delete",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let exists = vec!["test".to_string(), "-d".into(), dir.clone()];
        match self.inner.host.ssh_exec(cluster, node, &exists).await {
            Ok(o) if o.status == 0 => {}
            _ => return,
        }
        match self.inner.host.ssh_exec(cluster, node, &argv).await {
            Ok(o) if o.status != 0 => {
                tracing::warn!(dir, stderr = %o.stderr, "could not sweep leftover files")
            }
            Err(e) => tracing::debug!(dir, error = %e, "no sweep of leftover files"),
            Ok(_) => {}
        }
        let rmdir = vec!["rmdir".to_string(), "--ignore-fail-on-non-empty".into(), dir];
        let _ = self.inner.host.ssh_exec(cluster, node, &rmdir).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_ids_are_encoded_as_one_segment() {
        assert_eq!(
            seg("labnfs:201/vm-201-disk-0.qcow2"),
            "labnfs%3A201%2Fvm-201-disk-0.qcow2"
        );
        assert_eq!(seg("pve1"), "pve1");
    }

    #[test]
    fn only_tagged_or_planned_vms_are_ours() {
        let cfg = |v: Value| -> GuestConfig { serde_json::from_value(v).unwrap() };
        assert!(is_proxlab_vm(
            &cfg(serde_json::json!({"name": "x", "tags": "class-a;proxlab"})),
            None
        ));
        assert!(is_proxlab_vm(
            &cfg(serde_json::json!({"name": "lab-s01"})),
            Some("lab-s01")
        ));
        assert!(!is_proxlab_vm(
            &cfg(serde_json::json!({"name": "tpl-ubuntu", "tags": "template"})),
            Some("lab-s01")
        ));
        assert!(!is_proxlab_vm(&cfg(serde_json::json!({"name": "x"})), None));
    }
}
