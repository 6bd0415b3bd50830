//! VMID reservation inside the cluster's configured range (tree `vmid_reservations`).
//!
//! A VMID is free for Proxlab when no guest has it (`GET /cluster/resources`), no volume on the target
//! storage belongs to it, and no reservation holds it. Each VMID is taken with a compare-and-swap on its
//! key, so two jobs (or two processes sharing nothing but the database) never get the same one; the
//! reservations are flushed to disk before the caller creates anything under them.

use std::collections::HashSet;

use store::vm_key;

use crate::Deployer;
use crate::cleanup::seg;
use crate::error::{DeployError, Result};
use crate::trees::Reservation;

impl Deployer {
    /// The configured VMID range of `cluster`. Errors: [`DeployError::UnknownCluster`];
    /// [`DeployError::Invalid`] when none is configured.
    pub fn vmid_range(&self, cluster: &str) -> Result<(u32, u32)> {
        let c = self
            .inner
            .cfg
            .clusters
            .get(cluster)
            .ok_or_else(|| DeployError::UnknownCluster(cluster.to_string()))?;
        c.vmid_range.ok_or_else(|| {
            DeployError::Invalid(format!(
                "cluster {cluster} has no vmid_range; set [[cluster]] vmid_range = [low, high] for the VMs Proxlab may create"
            ))
        })
    }

    /// Reserves `n` VMIDs of `cluster` for job `job_id` (and class `class_id`), lowest free first, and
    /// flushes the reservations to disk. `storage`: `(node, storage id)` whose volumes also make a VMID
    /// busy (leftover disks of a deleted VM). Returns the VMIDs in ascending order.
    ///
    /// Errors: [`DeployError::VmidsExhausted`] (nothing stays reserved then); [`DeployError::Pve`] when
    /// the cluster cannot be asked; [`DeployError::Invalid`] without a range.
    pub async fn reserve_vmids(
        &self,
        cluster: &str,
        n: usize,
        job_id: &str,
        class_id: Option<&str>,
        storage: Option<(&str, &str)>,
    ) -> Result<Vec<u32>> {
        let (low, high) = self.vmid_range(cluster)?;
        let client = self.pve(cluster)?;
        let _guard = self.inner.reserve_lock.lock().await;
        let mut busy: HashSet<u32> = client
            .cluster_resources()
            .await?
            .into_iter()
            .map(|g| g.vmid)
            .collect();
        if let Some((node, sid)) = storage {
            let path = format!("/nodes/{}/storage/{}/content", seg(node), seg(sid));
            let vols: Vec<pve::StorageVolume> = client.get(&path, &[]).await?;
            busy.extend(vols.into_iter().filter_map(|v| v.vmid));
        }
        let prefix = format!("{cluster}/");
        for (_, r) in self.inner.reservations.scan_prefix(&prefix)? {
            busy.insert(r.vmid);
        }
        let now = self.now();
        let mut got = Vec::with_capacity(n);
        for vmid in low..=high {
            if got.len() == n {
                break;
            }
            if busy.contains(&vmid) {
                continue;
            }
            let rec = Reservation {
                cluster: cluster.to_string(),
                vmid,
                job_id: job_id.to_string(),
                class_id: class_id.map(String::from),
                at: now,
            };
            if self.inner.reservations.insert_new(&vm_key(cluster, vmid), &rec)? {
                got.push(vmid);
            }
        }
        if got.len() < n {
            for v in &got {
                self.inner.reservations.remove(&vm_key(cluster, *v))?;
            }
            return Err(DeployError::VmidsExhausted {
                cluster: cluster.to_string(),
                low,
                high,
                needed: n,
            });
        }
        self.flush().await?;
        tracing::info!(
            cluster,
            job = job_id,
            first = got.first(),
            last = got.last(),
            n,
            "VMIDs reserved"
        );
        Ok(got)
    }

    /// Releases the reservation of `vmid` (after Proxlab removed everything it made there).
    pub(crate) fn release_vmid(&self, cluster: &str, vmid: u32) -> Result<()> {
        self.inner.reservations.remove(&vm_key(cluster, vmid))?;
        Ok(())
    }

    /// Moves a reservation to another job (a retry or a move continues under a new job id).
    pub(crate) fn rebind_vmid(&self, cluster: &str, vmid: u32, job_id: &str) -> Result<()> {
        self.inner.reservations.update(&vm_key(cluster, vmid), |r| {
            Ok(Some(match r {
                Some(mut r) => {
                    r.job_id = job_id.to_string();
                    r
                }
                None => Reservation {
                    cluster: cluster.to_string(),
                    vmid,
                    job_id: job_id.to_string(),
                    class_id: None,
                    at: self.now(),
                },
            }))
        })?;
        Ok(())
    }

    /// Every reservation of `cluster` (all clusters when `None`), by VMID.
    pub fn reservations(&self, cluster: Option<&str>) -> Result<Vec<Reservation>> {
        let prefix = cluster.map(|c| format!("{c}/")).unwrap_or_default();
        Ok(self
            .inner
            .reservations
            .scan_prefix(&prefix)?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }
}
