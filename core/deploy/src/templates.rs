//! Templates: the admin-curated catalogue of PVE templates with cached specs (tree `templates`, key
//! `cluster/vmid`), each with a visibility (all teachers, named teachers, admins only), and the
//! linked-clone preflight.
//!
//! Only real PVE templates (`template: 1`) enter the catalogue, never a VM Proxlab made for a class
//! (a class base is a PVE template too, but it belongs to its class). Classes are created only from
//! catalogue templates visible to their teacher; nothing registers a template on the fly.

use std::collections::BTreeMap;

use pve::{GuestConfig, GuestKind};
use serde::Serialize;
use store::{Role, TemplateDisk, TemplateRecord, TemplateVisibility, vm_key};

use crate::Deployer;
use crate::error::{DeployError, Result};

/// How a template is named when registering it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateRef {
    /// By VMID (the node is looked up in `/cluster/resources`).
    Vmid(u32),
    /// By guest name; templates win over ordinary VMs of the same name; still ambiguous is an error.
    Name(String),
}

/// `GET /api/templates/stats`.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct TemplateStats {
    /// Registered templates.
    pub total: usize,
    /// Per cluster id.
    pub by_cluster: BTreeMap<String, usize>,
    /// Classes using each template (`cluster/vmid` → count).
    pub classes_by_template: BTreeMap<String, usize>,
    /// Templates whose last sync failed.
    pub with_errors: usize,
    /// The oldest `synced_at` (Unix s), 0 when none.
    pub oldest_sync: u64,
}

/// Builds the cached specs of a template from its PVE config: cores (default 1), sockets (default 1),
/// memory MiB (default 512), every disk except CD-ROMs and unused volumes (with storage, format and
/// size in bytes, EFI/TPM flags), bridges of its NICs, ostype, agent flag, template flag, bios.
pub fn template_from_config(
    cluster: &str,
    node: &str,
    vmid: u32,
    cfg: &GuestConfig,
    now: u64,
) -> TemplateRecord {
    let disks: Vec<TemplateDisk> = cfg
        .disks()
        .into_iter()
        .filter(|d| !d.is_cdrom && !d.is_unused)
        .map(|d| TemplateDisk {
            key: d.key.clone(),
            volume: d.volume.clone(),
            storage: d.storage.clone().unwrap_or_default(),
            format: d.format.clone(),
            size_bytes: d.size_bytes,
            efi: d.is_efi,
            tpm: d.is_tpm,
        })
        .collect();
    let mut bridges: Vec<String> = cfg.nics().into_iter().filter_map(|n| n.bridge).collect();
    bridges.dedup();
    TemplateRecord {
        cluster: cluster.to_string(),
        node: node.to_string(),
        vmid,
        name: cfg.name().unwrap_or_else(|| format!("vm-{vmid}")),
        cores: cfg.cores().unwrap_or(1),
        sockets: cfg.sockets().unwrap_or(1),
        memory_mib: cfg.memory_mib().unwrap_or(512),
        efi: disks.iter().any(|d| d.efi),
        tpm: disks.iter().any(|d| d.tpm),
        disks,
        bridges,
        ostype: cfg.ostype(),
        agent: cfg.agent_enabled(),
        synced_at: now,
        is_template: cfg.is_template(),
        bios: cfg.get_str("bios"),
        sync_error: None,
        visibility: TemplateVisibility::AdminsOnly,
    }
}

/// The file name part of a volume ID: `local-lvm:base-9000-disk-0` → `base-9000-disk-0`,
/// `labnfs:9000/base-9000-disk-0.qcow2` → `base-9000-disk-0.qcow2`.
fn volume_file(volume: &str) -> &str {
    let name = volume.split_once(':').map(|(_, n)| n).unwrap_or(volume);
    name.rsplit('/').next().unwrap_or(name)
}

/// Linked-clone preflight, before any API call:
/// - the source must be a template (`template: 1`) — "linked clone needs a template";
/// - every disk must be a converted `base-` volume — "template disks not converted (no base- volume)";
/// - a clone onto another node than the template's needs every disk's storage to be shared.
///
/// `shared(storage)` tells whether a storage is shared (`None`: unknown, treated as not shared).
/// Errors: [`DeployError::Preflight`] with the reason and the fix.
pub fn linked_clone_preflight(
    tpl: &TemplateRecord,
    target_nodes: &[String],
    shared: &dyn Fn(&str) -> Option<bool>,
) -> Result<()> {
    if !tpl.is_template {
        return Err(DeployError::Preflight(format!(
            "linked clone needs a template: VM {} ({}) is not one; convert it first (qm template {})",
            tpl.vmid, tpl.name, tpl.vmid
        )));
    }
    let unconverted: Vec<String> = tpl
        .disks
        .iter()
        .filter(|d| !volume_file(&d.volume).starts_with("base-"))
        .map(|d| format!("{}: {}", d.key, d.volume))
        .collect();
    if !unconverted.is_empty() {
        return Err(DeployError::Preflight(format!(
            "template disks not converted (no base- volume): {}; use a full clone or re-convert the template \
             (a template made by setting the flag skips the conversion)",
            unconverted.join(", ")
        )));
    }
    let other_nodes: Vec<&String> = target_nodes.iter().filter(|n| **n != tpl.node).collect();
    if !other_nodes.is_empty() {
        let local: Vec<&str> = tpl
            .disks
            .iter()
            .map(|d| d.storage.as_str())
            .filter(|s| shared(s) != Some(true))
            .collect();
        if !local.is_empty() {
            return Err(DeployError::Preflight(format!(
                "linked clones must stay on the template's node {} unless the storage is shared: storage {} is not \
                 shared, and the class places VMs on {}; place the class on {} or use shared storage",
                tpl.node,
                local.join(", "),
                other_nodes
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                tpl.node
            )));
        }
    }
    Ok(())
}

impl Deployer {
    /// Puts a PVE template of `cluster` (by VMID or name) into the catalogue with `visibility` and caches
    /// its specs: finds it in `GET /cluster/resources`, reads `GET /nodes/{node}/qemu/{vmid}/config`.
    /// Registering a template again replaces its specs and visibility. Only admins may call this (the
    /// web layer's route is admin-only).
    ///
    /// Errors: [`DeployError::NotFound`]; [`DeployError::Invalid`] for a container, an ambiguous name,
    /// a VM that is not a PVE template (`template: 1`), a VM Proxlab made or reserved for a class (a
    /// class base, teacher or student VM), or named teachers that are not teacher accounts;
    /// [`DeployError::Pve`]. Nothing is stored on error.
    pub async fn register_template(
        &self,
        cluster: &str,
        r: TemplateRef,
        visibility: TemplateVisibility,
    ) -> Result<TemplateRecord> {
        self.check_visibility(&visibility)?;
        let client = self.pve(cluster)?;
        let resources = client.cluster_resources().await?;
        let found: Vec<&pve::ClusterResource> = match &r {
            TemplateRef::Vmid(v) => resources.iter().filter(|g| g.vmid == *v).collect(),
            TemplateRef::Name(n) => {
                let all: Vec<&pve::ClusterResource> = resources
                    .iter()
                    .filter(|g| g.name.as_deref() == Some(n))
                    .collect();
                let templates: Vec<&pve::ClusterResource> =
                    all.iter().copied().filter(|g| g.template).collect();
                if templates.is_empty() { all } else { templates }
            }
        };
        let g = match found.as_slice() {
            [] => {
                return Err(DeployError::not_found(format!(
                    "template {r:?} in cluster {cluster}"
                )));
            }
            [g] => *g,
            many => {
                return Err(DeployError::Invalid(format!(
                    "name {r:?} is used by VMs {}; register by VMID",
                    many.iter()
                        .map(|g| g.vmid.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        };
        if g.kind != GuestKind::Qemu {
            return Err(DeployError::Invalid(format!(
                "guest {} is a container; class templates must be QEMU VMs",
                g.vmid
            )));
        }
        self.refuse_class_vm(cluster, g.vmid)?;
        let name = g.name.clone().unwrap_or_else(|| format!("vm-{}", g.vmid));
        let not_template = || {
            DeployError::Invalid(format!(
                "VM {} ({name}) is not a PVE template (template: 1); convert it first (qm template {}) \
                 and register it again",
                g.vmid, g.vmid
            ))
        };
        if !g.template {
            return Err(not_template());
        }
        let cfg = client.guest_config(&g.node, GuestKind::Qemu, g.vmid).await?;
        if !cfg.is_template() {
            return Err(not_template());
        }
        let mut rec = template_from_config(cluster, &g.node, g.vmid, &cfg, self.now());
        rec.visibility = visibility;
        self.inner
            .store
            .templates
            .insert(&vm_key(cluster, g.vmid), &rec)?;
        tracing::info!(cluster, vmid = g.vmid, name = %rec.name, visibility = ?rec.visibility, "template registered");
        Ok(rec)
    }

    /// Refuses a VMID Proxlab made or reserved for a class: its bases are PVE templates, but they
    /// belong to their class and change with it. Errors: [`DeployError::Invalid`].
    fn refuse_class_vm(&self, cluster: &str, vmid: u32) -> Result<()> {
        let key = vm_key(cluster, vmid);
        if let Some(v) = self.inner.vms.get(&key)? {
            return Err(DeployError::Invalid(format!(
                "VM {vmid} is the {} VM of class {}, made by Proxlab; class VMs and class bases cannot be \
                 catalogue templates",
                v.role.as_str(),
                v.class_id
            )));
        }
        if let Some(r) = self.inner.reservations.get(&key)? {
            return Err(DeployError::Invalid(format!(
                "VMID {vmid} is reserved by Proxlab for class {}; class VMs and class bases cannot be \
                 catalogue templates",
                r.class_id.as_deref().unwrap_or("(none)")
            )));
        }
        Ok(())
    }

    /// Named teachers must be existing teacher (or admin) accounts.
    fn check_visibility(&self, v: &TemplateVisibility) -> Result<()> {
        if let TemplateVisibility::Teachers { names } = v {
            if names.is_empty() {
                return Err(DeployError::Invalid(
                    "name at least one teacher, or choose all teachers or admins only".into(),
                ));
            }
            for n in names {
                match self.inner.store.users.get(n)? {
                    Some(u) if matches!(u.role, Role::Teacher | Role::Admin) => {}
                    Some(_) => {
                        return Err(DeployError::Invalid(format!(
                            "{n} is a student; templates can be opened only to teacher accounts"
                        )));
                    }
                    None => {
                        return Err(DeployError::Invalid(format!(
                            "there is no user {n:?}; templates can be opened only to teacher accounts"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Changes who may use catalogue template `cluster/vmid`. Errors: [`DeployError::NotFound`],
    /// [`DeployError::Invalid`] for named teachers that are not teacher accounts.
    pub fn set_template_visibility(
        &self,
        cluster: &str,
        vmid: u32,
        visibility: TemplateVisibility,
    ) -> Result<TemplateRecord> {
        self.check_visibility(&visibility)?;
        let key = vm_key(cluster, vmid);
        let mut t = self.template(cluster, vmid)?;
        t.visibility = visibility;
        self.inner.store.templates.insert(&key, &t)?;
        Ok(t)
    }

    /// The catalogue templates `user` may use (admins: all).
    pub fn templates_visible_to(&self, user: &str, is_admin: bool) -> Result<Vec<TemplateRecord>> {
        Ok(self
            .templates()?
            .into_iter()
            .filter(|t| t.visibility.allows(user, is_admin))
            .collect())
    }

    /// The catalogue template `cluster/vmid` if account `user` may create classes from it: the
    /// template must be in the catalogue and visible to the user (admins see all), the account must be
    /// a teacher or admin. Errors: [`DeployError::Forbidden`] (403) otherwise, naming the template; a
    /// template hidden from the user answers like one not in the catalogue.
    pub fn template_for(&self, cluster: &str, vmid: u32, user: &str) -> Result<TemplateRecord> {
        let role = self.inner.store.users.get(user)?.map(|u| u.role);
        let is_admin = role == Some(Role::Admin);
        if !matches!(role, Some(Role::Teacher | Role::Admin)) {
            return Err(DeployError::Forbidden(format!(
                "only teachers and admins create classes; {user} is not one"
            )));
        }
        match self.inner.store.templates.get(&vm_key(cluster, vmid))? {
            Some(t) if t.visibility.allows(user, is_admin) => Ok(t),
            _ => Err(DeployError::Forbidden(format!(
                "template {vmid} of cluster {cluster} is not in the template catalogue open to you; \
                 ask an admin to register it and open it to you"
            ))),
        }
    }

    /// Refreshes the cached specs of every registered template (of `cluster`, or of all clusters). A
    /// template that vanished or cannot be read keeps its last specs with `sync_error` set.
    /// Returns the refreshed records. Errors: [`DeployError::Store`] only.
    pub async fn sync_templates(&self, cluster: Option<&str>) -> Result<Vec<TemplateRecord>> {
        let all = self.templates()?;
        let mut by_cluster: BTreeMap<String, Vec<TemplateRecord>> = BTreeMap::new();
        for t in all {
            if cluster.is_none_or(|c| c == t.cluster) {
                by_cluster.entry(t.cluster.clone()).or_default().push(t);
            }
        }
        let mut out = Vec::new();
        for (c, list) in by_cluster {
            let client = self.pve(&c);
            let resources = match &client {
                Ok(cl) => cl.cluster_resources().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            for mut t in list {
                let refreshed = match (&client, &resources) {
                    (Ok(cl), Ok(res)) => match res.iter().find(|g| g.vmid == t.vmid) {
                        None => Err(format!("VM {} no longer exists in cluster {c}", t.vmid)),
                        Some(g) => cl
                            .guest_config(&g.node, GuestKind::Qemu, t.vmid)
                            .await
                            .map(|cfg| {
                                let mut r = template_from_config(&c, &g.node, t.vmid, &cfg, self.now());
                                r.visibility = t.visibility.clone();
                                r
                            })
                            .map_err(|e| e.to_string()),
                    },
                    (Err(e), _) => Err(e.to_string()),
                    (_, Err(e)) => Err(e.clone()),
                };
                t = match refreshed {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(cluster = %c, vmid = t.vmid, error = %e, "template sync failed");
                        t.sync_error = Some(e);
                        t
                    }
                };
                self.inner.store.templates.insert(&vm_key(&c, t.vmid), &t)?;
                out.push(t);
            }
        }
        Ok(out)
    }

    /// Every registered template, by `cluster/vmid`.
    pub fn templates(&self) -> Result<Vec<TemplateRecord>> {
        Ok(self.inner.store.templates.values()?)
    }

    /// One registered template. Errors: [`DeployError::NotFound`].
    pub fn template(&self, cluster: &str, vmid: u32) -> Result<TemplateRecord> {
        self.inner
            .store
            .templates
            .get(&vm_key(cluster, vmid))?
            .ok_or_else(|| DeployError::not_found(format!("template {vmid} in cluster {cluster}")))
    }

    /// Registered templates named `name` (in any cluster).
    pub fn templates_by_name(&self, name: &str) -> Result<Vec<TemplateRecord>> {
        Ok(self.templates()?.into_iter().filter(|t| t.name == name).collect())
    }

    /// Counts for `GET /api/templates/stats`, over the templates `user` may use (admins: all).
    pub fn template_stats(&self, user: &str, is_admin: bool) -> Result<TemplateStats> {
        let all = self.templates_visible_to(user, is_admin)?;
        let mut s = TemplateStats {
            total: all.len(),
            oldest_sync: all.iter().map(|t| t.synced_at).min().unwrap_or(0),
            with_errors: all.iter().filter(|t| t.sync_error.is_some()).count(),
            ..TemplateStats::default()
        };
        for t in &all {
            *s.by_cluster.entry(t.cluster.clone()).or_default() += 1;
            s.classes_by_template
                .entry(format!("{}/{}", t.cluster, t.vmid))
                .or_default();
        }
        for c in self.inner.store.classes.values()? {
            if let Some(n) = s.classes_by_template.get_mut(&c.template) {
                *n += 1;
            }
        }
        Ok(s)
    }

    /// Takes a template out of the catalogue (PVE is not touched): no new class can be made from it.
    /// Classes already made from it keep working (they run on their own class bases). Returns the
    /// removed record. Errors: [`DeployError::NotFound`].
    pub fn unregister_template(&self, cluster: &str, vmid: u32) -> Result<TemplateRecord> {
        self.inner
            .store
            .templates
            .remove(&vm_key(cluster, vmid))?
            .ok_or_else(|| DeployError::not_found(format!("template {cluster}/{vmid}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tpl(node: &str, is_template: bool, volumes: &[(&str, &str)]) -> TemplateRecord {
        TemplateRecord {
            cluster: "lab".into(),
            node: node.into(),
            vmid: 9000,
            name: "tpl".into(),
            is_template,
            disks: volumes
                .iter()
                .map(|(key, v)| TemplateDisk {
                    key: key.to_string(),
                    volume: v.to_string(),
                    storage: v.split(':').next().unwrap().to_string(),
                    ..TemplateDisk::default()
                })
                .collect(),
            ..TemplateRecord::default()
        }
    }

    fn shared_none(s: &str) -> Option<bool> {
        match s {
            "local-lvm" | "local-zfs" => Some(false),
            "ceph" => Some(true),
            _ => None,
        }
    }

    #[test]
    fn cross_node_linked_clone_on_local_storage_is_refused() {
        let t = tpl("pve-a", true, &[("scsi0", "local-lvm:base-9000-disk-0")]);
        let err = linked_clone_preflight(&t, &["pve-b".to_string()], &shared_none).unwrap_err();
        assert!(matches!(err, DeployError::Preflight(_)));
        assert!(
            err.to_string().contains(
                "linked clones must stay on the template's node pve-a unless the storage is shared"
            ),
            "{err}"
        );
        // Same node is fine; shared storage is fine across nodes.
        linked_clone_preflight(&t, &["pve-a".to_string()], &shared_none).unwrap();
        let s = tpl("pve-a", true, &[("scsi0", "ceph:base-9000-disk-0")]);
        linked_clone_preflight(&s, &["pve-b".to_string()], &shared_none).unwrap();
    }

    #[test]
    fn unconverted_template_disk_is_refused() {
        let mut t = tpl("pve-a", true, &[("scsi0", "local-zfs:vm-9002-disk-0")]);
        t.vmid = 9002;
        let err = linked_clone_preflight(&t, &["pve-a".to_string()], &shared_none).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "template disks not converted (no base- volume): scsi0: local-zfs:vm-9002-disk-0"
            ),
            "{err}"
        );
    }

    #[test]
    fn linked_clone_of_a_plain_vm_is_refused() {
        let mut t = tpl("pve-a", false, &[("scsi0", "local-lvm:vm-105-disk-0")]);
        t.vmid = 105;
        let err = linked_clone_preflight(&t, &["pve-a".to_string()], &shared_none).unwrap_err();
        assert!(
            err.to_string().starts_with("linked clone needs a template"),
            "{err}"
        );
    }

    #[test]
    fn specs_come_from_the_config() {
        let cfg: GuestConfig = serde_json::from_value(serde_json::json!({
            "memory": "8192", "cores": 4, "sockets": 1, "agent": "1", "ostype": "win11", "bios": "ovmf",
            "efidisk0": "labnfs:9001/base-9001-disk-1.qcow2,efitype=4m,pre-enrolled-keys=1,size=528K",
            "tpmstate0": "labnfs:9001/base-9001-disk-2.raw,size=4M,version=v2.0",
            "scsi0": "labnfs:9001/base-9001-disk-0.qcow2,iothread=1,size=2G",
            "ide2": "labnfs:iso/x.iso,media=cdrom",
            "net0": "virtio=BC:24:11:90:01:00,bridge=vmbr0", "net1": "e1000=BC:24:11:90:01:01,bridge=vmbr1",
            "template": 1, "name": "tpl-windows-11"
        }))
        .unwrap();
        let t = template_from_config("lab", "pve1", 9001, &cfg, 7);
        assert_eq!((t.cores, t.sockets, t.memory_mib), (4, 1, 8192));
        assert_eq!(t.disks.len(), 3, "{:?}", t.disks);
        let scsi0 = t.disks.iter().find(|d| d.key == "scsi0").unwrap();
        assert_eq!(scsi0.storage, "labnfs");
        assert_eq!(scsi0.format.as_deref(), Some("qcow2"));
        assert_eq!(scsi0.size_bytes, Some(2 * 1024 * 1024 * 1024));
        assert!(t.efi && t.tpm && t.agent && t.is_template);
        assert_eq!(t.bridges, vec!["vmbr0", "vmbr1"]);
        assert_eq!(t.ostype.as_deref(), Some("win11"));
        assert_eq!(t.bios.as_deref(), Some("ovmf"));
    }
}
