//! Classes: create (starts the deploy job), list, show, update, delete, co-owners, teacher VM power,
//! the class page's VM list, more VMs and retries.

use std::collections::BTreeMap;
use std::sync::Arc;

pub use pve::PowerAction;
use pve::{GuestConfig, GuestKind};
use serde::Serialize;
use serde_json::{Value, json};
use store::{ClassRecord, ClassSpecs, JobRecord, JobState, JobStep, TemplateRecord, vm_key};

use crate::Deployer;
use crate::error::{DeployError, Result};
use crate::journal::Journal;
use crate::runner::{KIND_ADD, KIND_DELETE, KIND_DEPLOY, vm_step};

/// Longest class name, in characters.
pub const MAX_CLASS_NAME: usize = 100;
/// Most student VMs a class may have, whatever `limits.max_pool` says (the binary's config allows at
/// most this much too).
pub const MAX_POOL: u32 = 5000;
/// Most cores a class may give its VMs (`specs.cores`).
pub const MAX_CORES: u32 = 1024;
/// Most sockets a class may give its VMs (`specs.sockets`).
pub const MAX_SOCKETS: u32 = 16;
/// Least and most memory a class may give its VMs (`specs.memory_mib`), in MiB (PVE's minimum is 16).
pub const MEMORY_MIB_RANGE: std::ops::RangeInclusive<u64> = 16..=4 * 1024 * 1024;

/// The pool size after adding `count` student VMs to a class of `pool`, if it stays within
/// `max_pool`. Checked arithmetic: no overflow, whatever the inputs.
/// Errors: [`DeployError::Invalid`] (HTTP 400) for a count of 0, a count above the limit, or a sum above it.
pub fn pool_after_adding(pool: u32, count: u32, max_pool: u32) -> Result<u32> {
    if count == 0 {
        return Err(DeployError::Invalid("count must be at least 1".into()));
    }
    if count > max_pool {
        return Err(DeployError::Invalid(format!(
            "count {count} is more than the class limit {max_pool}"
        )));
    }
    match pool.checked_add(count) {
        Some(total) if total <= max_pool => Ok(total),
        _ => Err(DeployError::Invalid(format!(
            "count {count} would make {} student VMs, more than the class limit {max_pool}",
            u64::from(pool) + u64::from(count)
        ))),
    }
}

/// What a requested pool size means for a class of `pool` student VMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolChange {
    /// Already that size.
    Unchanged,
    /// Add this many student VMs.
    Add(u32),
    /// Remove this many free student VMs.
    Remove(u32),
}

/// The change from `pool` to `requested` student VMs, if `requested` is within `max_pool`. Checked
/// arithmetic: no overflow, whatever the inputs. Errors: [`DeployError::Invalid`] (HTTP 400).
pub fn pool_change(pool: u32, requested: u32, max_pool: u32) -> Result<PoolChange> {
    if requested > max_pool {
        return Err(DeployError::Invalid(format!(
            "pool size {requested} is more than the class limit {max_pool}"
        )));
    }
    // Each subtraction only on the side where it cannot underflow.
    Ok(match requested.cmp(&pool) {
        std::cmp::Ordering::Greater => PoolChange::Add(requested - pool),
        std::cmp::Ordering::Less => PoolChange::Remove(pool - requested),
        std::cmp::Ordering::Equal => PoolChange::Unchanged,
    })
}

/// Checks the spec overrides of a class: cores `1..=`[`MAX_CORES`], sockets `1..=`[`MAX_SOCKETS`],
/// memory in [`MEMORY_MIB_RANGE`]. Errors: [`DeployError::Invalid`] (HTTP 400) naming the value.
pub fn check_specs(s: &ClassSpecs) -> Result<()> {
    if let Some(c) = s.cores
        && !(1..=MAX_CORES).contains(&c)
    {
        return Err(DeployError::Invalid(format!(
            "cores {c} is outside 1..={MAX_CORES}"
        )));
    }
    if let Some(c) = s.sockets
        && !(1..=MAX_SOCKETS).contains(&c)
    {
        return Err(DeployError::Invalid(format!(
            "sockets {c} is outside 1..={MAX_SOCKETS}"
        )));
    }
    if let Some(m) = s.memory_mib
        && !MEMORY_MIB_RANGE.contains(&m)
    {
        return Err(DeployError::Invalid(format!(
            "memory_mib {m} is outside {}..={} MiB",
            MEMORY_MIB_RANGE.start(),
            MEMORY_MIB_RANGE.end()
        )));
    }
    Ok(())
}
/// Longest class description, in characters.
pub const MAX_DESCRIPTION: usize = 500;
use crate::templates::linked_clone_preflight;
use crate::trees::VmRole;

/// The record of a new job of `kind` on `class`, by `owner`, at `now`: pending, with `params` and no
/// steps yet.
pub(crate) fn class_job(
    class: &ClassRecord,
    kind: &str,
    id: &str,
    owner: &str,
    now: u64,
    params: Value,
) -> JobRecord {
    JobRecord {
        id: id.to_string(),
        kind: kind.into(),
        state: JobState::Pending,
        owner: owner.to_string(),
        class_id: Some(class.id.clone()),
        created_at: now,
        cluster: class.cluster.clone(),
        params,
        updated_at: now,
        ..JobRecord::default()
    }
}

/// What a teacher asks for when creating a class.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClassSpec {
    /// Display name (any UTF-8, 1–100 characters); the class id is derived from it.
    pub name: String,
    /// Cluster id.
    pub cluster: String,
    /// VMID of a catalogue template visible to the owner.
    pub template_vmid: u32,
    /// Workflow script name (`qcow2-overlay` when `None`, or `linked-clone`).
    pub workflow: Option<String>,
    /// Number of student VMs (0..=max_pool).
    pub pool_size: u32,
    /// Overrides of the template's cores, sockets, memory (MiB).
    pub specs: ClassSpecs,
    /// Node for the VMs (default: the template's node).
    pub node: Option<String>,
    /// Spread the VMs over the cluster's online nodes (needs shared storage).
    pub spread: bool,
    /// Storage for the disks (default: the cluster's default storage, else the template disk's).
    pub storage: Option<String>,
    /// Students may register themselves from the invite link.
    pub self_registration: bool,
    /// Shown on the class page.
    pub description: String,
    /// PVE resource pool for the VMs (`pool=`), if any.
    pub pve_pool: Option<String>,
}

/// Changes to a class (`PUT /api/classes/{id}`); `None` keeps the value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClassUpdate {
    /// New display name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New spec overrides (used for VMs made from now on).
    pub specs: Option<ClassSpecs>,
    /// Self-registration from the invite link.
    pub self_registration: Option<bool>,
    /// New pool size: larger starts an `add-vms` job; smaller removes free (unassigned) student VMs.
    pub pool_size: Option<u32>,
}

/// One VM on the class page: Proxlab's record joined with the live inventory.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ClassVmView {
    /// Cluster id.
    pub cluster: String,
    /// VMID.
    pub vmid: u32,
    /// PVE name.
    pub name: String,
    /// `base`, `teacher`, `student`.
    pub role: VmRole,
    /// Student slot (1-based), 0 otherwise.
    pub slot: u32,
    /// The user it is assigned to (`""`: free).
    pub user: String,
    /// Node.
    pub node: String,
    /// Display state from the inventory (`running`, `stopped`, ...; `unknown` before the first sync).
    pub state: String,
    /// IP address from the inventory, if known.
    pub ip: Option<String>,
    /// Base version its disks are made from.
    pub base_version: u32,
    /// True when a newer base was published: the VM moves to it on its next revert.
    pub outdated: bool,
}

/// Lower-case `[a-z0-9-]` id from a display name (PVE's DNS-name rule, at most 24 characters), `class` if
/// empty.
fn slug(name: &str) -> String {
    let s = store::vm_name_from(name, 0).replace('.', "-");
    let s: String = s.chars().take(24).collect();
    let s = s.trim_end_matches('-').to_string();
    if s.is_empty() || s == "vm-0" {
        "class".into()
    } else {
        s
    }
}

/// `opts` of a drive string: everything after the volume except `size=` (and `format=`), with a
/// leading comma: `labnfs:9000/base.qcow2,iothread=1,size=2G` → `,iothread=1`.
fn drive_opts(value: &str) -> String {
    value
        .split(',')
        .skip(1)
        .filter(|p| !p.starts_with("size=") && !p.starts_with("format="))
        .map(|p| format!(",{p}"))
        .collect()
}

/// Path of a file volume under its storage: `9000/base-9000-disk-0.qcow2` (also the linked form
/// `9000/base.qcow2/201/vm-201-disk-0.qcow2`) → `<root>/images/9000/base-9000-disk-0.qcow2`.
fn volume_path(root: &str, volume: &str) -> Option<String> {
    let name = volume.split_once(':')?.1;
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() < 2 || parts.iter().any(|p| p.is_empty() || *p == "..") {
        return None;
    }
    let tail = &parts[parts.len() - 2..];
    Some(format!(
        "{}/images/{}/{}",
        root.trim_end_matches('/'),
        tail[0],
        tail[1]
    ))
}

impl Deployer {
    /// Creates class `spec` owned by `owner` and starts its deploy job: checks the workflow, the template
    /// (it must be in the catalogue and visible to `owner`, see [`Deployer::template_for`]; preflight
    /// for linked clones), the storage and placement; reserves
    /// `pool_size + 2` VMIDs (base, teacher, students); returns the class and the job (follow it with
    /// [`Deployer::events`] or [`Deployer::wait_job`]).
    ///
    /// Errors: [`DeployError::Forbidden`] for a template outside the owner's catalogue,
    /// [`DeployError::LimitReached`] past the owner's class or VM limit,
    /// [`DeployError::Invalid`], [`DeployError::Preflight`], [`DeployError::VmidsExhausted`],
    /// [`DeployError::UnknownCluster`], [`DeployError::Pve`].
    pub async fn create_class(&self, owner: &str, spec: ClassSpec) -> Result<(ClassRecord, JobRecord)> {
        let name = store::accounts::validate_text("a class name", &spec.name, MAX_CLASS_NAME, false)
            .map_err(DeployError::Invalid)?;
        store::accounts::validate_text("a class description", &spec.description, MAX_DESCRIPTION, true)
            .map_err(DeployError::Invalid)?;
        self.check_name_free(owner, &name, None)?;
        let max_pool = self.max_pool();
        if spec.pool_size > max_pool {
            return Err(DeployError::Invalid(format!(
                "pool size {} is more than the class limit {max_pool}",
                spec.pool_size
            )));
        }
        check_specs(&spec.specs)?;
        // The owner's limits, before anything is asked of PVE (checked again when the class is stored).
        let new_vms = crate::quotas::class_vms(spec.pool_size);
        self.check_quota(owner, 1, new_vms)?;
        let workflow = spec.workflow.clone().unwrap_or_else(|| "qcow2-overlay".into());
        let set = self.scripts();
        if set.deploy(&workflow).is_none() {
            return Err(DeployError::Invalid(format!(
                "no workflow script deploy/{workflow}.rhai"
            )));
        }
        self.vmid_range(&spec.cluster)?;
        let client = self.pve(&spec.cluster)?;
        // Only a catalogue template the owner may use; nothing is registered on the fly.
        let listed = self.template_for(&spec.cluster, spec.template_vmid, owner)?;
        // Fresh config and specs: the template may have changed since it was registered.
        let tpl_cfg = client
            .guest_config(&listed.node, GuestKind::Qemu, listed.vmid)
            .await?;
        let mut tpl = crate::templates::template_from_config(
            &spec.cluster,
            &listed.node,
            listed.vmid,
            &tpl_cfg,
            self.now(),
        );
        tpl.visibility = listed.visibility;
        self.inner
            .store
            .templates
            .insert(&vm_key(&spec.cluster, tpl.vmid), &tpl)?;
        let storages = client.storages().await?;
        let node_list = client.nodes().await?;
        self.check_names(&client, &spec, &node_list, &storages).await?;
        let nodes: Vec<String> = if spec.spread {
            let mut n: Vec<String> = node_list
                .into_iter()
                .filter(|n| n.is_online())
                .map(|n| n.node)
                .collect();
            n.sort();
            n
        } else {
            vec![spec.node.clone().unwrap_or_else(|| tpl.node.clone())]
        };
        if workflow == "linked-clone" {
            let shared: BTreeMap<String, bool> =
                storages.iter().map(|s| (s.storage.clone(), s.shared)).collect();
            linked_clone_preflight(&tpl, &nodes, &|s: &str| shared.get(s).copied())?;
        }
        let storage_id = spec
            .storage
            .clone()
            .or_else(|| {
                self.inner
                    .cfg
                    .clusters
                    .get(&spec.cluster)
                    .and_then(|c| c.default_storage.clone())
            })
            .or_else(|| {
                tpl.disks
                    .iter()
                    .find(|d| !d.tpm && !d.efi)
                    .map(|d| d.storage.clone())
            })
            .ok_or_else(|| DeployError::Invalid(format!("template {} has no disk", tpl.vmid)))?;
        let found = storages.iter().find(|s| s.storage == storage_id);
        if found.is_none() && workflow != "linked-clone" {
            return Err(DeployError::not_found(format!("storage {storage_id}")));
        }
        let unknown = pve::StorageInfo {
            storage: storage_id.clone(),
            ..pve::StorageInfo::default()
        };
        let sinfo = found.unwrap_or(&unknown);
        if workflow != "linked-clone" && !tpl.is_template {
            return Err(DeployError::Preflight(format!(
                "VM {} ({}) is not a template; convert it first (qm template {}) so its disks cannot change under the class",
                tpl.vmid, tpl.name, tpl.vmid
            )));
        } else if spec.spread && !sinfo.shared {
            return Err(DeployError::Preflight(format!(
                "spreading VMs over nodes needs shared storage; {storage_id} is not shared"
            )));
        }
        let root = self
            .inner
            .cfg
            .clusters
            .get(&spec.cluster)
            .and_then(|c| c.storage_paths.get(&storage_id).cloned())
            .or_else(|| sinfo.path.clone());
        if workflow == "qcow2-overlay" && (!sinfo.is_file_based() || root.is_none()) {
            return Err(DeployError::Preflight(format!(
                "qcow2-overlay needs a file storage (dir, NFS, CIFS) with a path; {storage_id} is {}; use linked-clone",
                sinfo.kind
            )));
        }
        let ctx = self.template_ctx_for(&spec.cluster, &tpl, &tpl_cfg, &storages)?;

        // The class record, with a unique id derived from the name.
        let base_id = slug(&name);
        let now = self.now();
        let mut class = ClassRecord {
            id: String::new(),
            name: name.clone(),
            owner: owner.to_string(),
            co_owners: Vec::new(),
            cluster: spec.cluster.clone(),
            template: format!("{}/{}", spec.cluster, tpl.vmid),
            workflow: workflow.clone(),
            pool_size: spec.pool_size,
            self_registration: spec.self_registration,
            created_at: now,
            node: spec.node.clone(),
            spread: spec.spread,
            storage: Some(storage_id.clone()),
            specs: spec.specs.clone(),
            state: "deploying".into(),
            description: spec.description.trim().to_string(),
            ..ClassRecord::default()
        };
        self.within_quota(owner, 1, new_vms, || {
            for n in 1.. {
                class.id = if n == 1 {
                    base_id.clone()
                } else {
                    format!("{base_id}-{n}")
                };
                if self.inner.store.classes.insert_new(&class.id, &class).is_ok() {
                    break;
                }
            }
            Ok(())
        })?;
        let width = spec.pool_size.to_string().len().max(2);
        let students: Vec<Value> = (1..=spec.pool_size)
            .map(|i| json!({"name": format!("s{i:0width$}"), "slot": i}))
            .collect();
        let mut ctx = ctx;
        ctx["class"] = json!({
            "id": class.id, "name": class.name, "owner": owner, "teacher": owner,
            "pool_size": spec.pool_size, "students": students,
        });
        ctx["storage"] = json!({
            "id": storage_id, "path": root, "type": sinfo.kind, "shared": sinfo.shared,
        });
        ctx["nodes"] = json!(nodes);
        ctx["options"] = json!({
            "pool": spec.pve_pool,
            "task_timeout_s": self.inner.cfg.limits.task_timeout.as_secs(),
            "spread": spec.spread,
            "target_node": nodes.first().cloned().unwrap_or_else(|| tpl.node.clone()),
            "specs": spec.specs,
            "mode": "deploy",
            "base_version": 1,
        });

        let job_id = self.new_id("j")?;
        ctx["job"] = json!({"id": job_id});
        let journal = self.journal_new_job(class_job(
            &class,
            KIND_DEPLOY,
            &job_id,
            owner,
            now,
            json!({"workflow": workflow, "ctx": ctx, "plan": null, "base_version": 1}),
        ))?;
        let vmids = match self
            .reserve_vmids(
                &spec.cluster,
                spec.pool_size as usize + 2,
                &job_id,
                Some(&class.id),
                Some((&tpl.node, &storage_id)),
            )
            .await
        {
            Ok(v) => v,
            Err(e) => {
                self.inner.store.classes.remove(&class.id)?;
                journal.set_state(JobState::Failed, Some(e.to_string()));
                return Err(e);
            }
        };
        journal.set_params(|p| p["ctx"]["vmids"] = json!(vmids));
        let mut ctx_saved = journal.params()["ctx"].clone();
        if let Some(o) = ctx_saved.as_object_mut() {
            o.remove("vmids");
            o.remove("job");
        }
        let class = self.update_class(&class.id, |c| {
            c.deploy_ctx = Some(ctx_saved.clone());
            c.last_job = Some(job_id.clone());
        })?;
        journal.add_steps(vec![JobStep {
            name: "plan".into(),
            cluster: spec.cluster.clone(),
            role: "plan".into(),
            detail: "queued".into(),
            ..JobStep::default()
        }]);
        // The job with its VMIDs is on disk before the plan runs: a crash from here resumes it.
        self.flush().await?;
        tracing::info!(class = %class.id, job = %job_id, pool = spec.pool_size, workflow = %workflow, "class created; deploying");
        let rec = journal.snapshot();
        self.spawn_job(journal, set);
        Ok((class, rec))
    }

    /// Refuses a node, storage or PVE pool named in `spec` that the cluster does not have (or a node
    /// that is offline), naming it and what the cluster has, before anything is stored or created.
    /// Errors: [`DeployError::Invalid`] (400); [`DeployError::Pve`] when the pools cannot be read.
    async fn check_names(
        &self,
        client: &pve::PveClient,
        spec: &ClassSpec,
        nodes: &[pve::NodeInfo],
        storages: &[pve::StorageInfo],
    ) -> Result<()> {
        let cluster = &spec.cluster;
        let list = |v: Vec<&str>| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        if let Some(n) = &spec.node {
            match nodes.iter().find(|x| &x.node == n) {
                None => {
                    return Err(DeployError::Invalid(format!(
                        "unknown node {n:?} in cluster {cluster}; its nodes are {}",
                        list(nodes.iter().map(|x| x.node.as_str()).collect())
                    )));
                }
                Some(x) if !x.is_online() => {
                    return Err(DeployError::Invalid(format!(
                        "node {n:?} of cluster {cluster} is offline; choose another node"
                    )));
                }
                Some(_) => {}
            }
        }
        if let Some(st) = &spec.storage
            && !storages.iter().any(|x| &x.storage == st)
        {
            return Err(DeployError::Invalid(format!(
                "unknown storage {st:?} in cluster {cluster}; its storages are {}",
                list(storages.iter().map(|x| x.storage.as_str()).collect())
            )));
        }
        if let Some(p) = &spec.pve_pool {
            let pools = client.get_value("/pools", &[]).await?;
            let ids: Vec<&str> = pools
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x["poolid"].as_str())
                .collect();
            if !ids.contains(&p.as_str()) {
                return Err(DeployError::Invalid(format!(
                    "unknown pool {p:?} in cluster {cluster}; its pools are {}",
                    list(ids)
                )));
            }
        }
        Ok(())
    }

    /// The `template` and `node` parts of a deploy ctx: the template's record, fresh config and disks
    /// with their paths and drive options.
    pub(crate) fn template_ctx_for(
        &self,
        cluster: &str,
        tpl: &TemplateRecord,
        cfg: &GuestConfig,
        storages: &[pve::StorageInfo],
    ) -> Result<Value> {
        let paths: BTreeMap<String, String> = storages
            .iter()
            .filter_map(|s| {
                let configured = self
                    .inner
                    .cfg
                    .clusters
                    .get(cluster)
                    .and_then(|c| c.storage_paths.get(&s.storage).cloned());
                configured
                    .or_else(|| s.path.clone())
                    .map(|p| (s.storage.clone(), p))
            })
            .collect();
        let disks: Vec<Value> = tpl
            .disks
            .iter()
            .map(|d| {
                let raw = cfg.get_str(&d.key).unwrap_or_default();
                let path = paths
                    .get(&d.storage)
                    .and_then(|root| volume_path(root, &d.volume));
                json!({
                    "key": d.key, "volume": d.volume, "storage": d.storage, "format": d.format,
                    "size_bytes": d.size_bytes, "efi": d.efi, "tpm": d.tpm, "path": path,
                    "opts": drive_opts(&raw),
                })
            })
            .collect();
        let disk = disks
            .iter()
            .find(|d| d["efi"] == json!(false) && d["tpm"] == json!(false))
            .cloned();
        let mut t = serde_json::to_value(tpl).map_err(|e| DeployError::Invalid(e.to_string()))?;
        t["disks"] = Value::Array(disks);
        t["disk"] = disk.unwrap_or(Value::Null);
        t["config"] = Value::Object(cfg.0.clone());
        Ok(json!({"cluster": cluster, "node": tpl.node, "template": t}))
    }

    /// Every class.
    pub fn classes(&self) -> Result<Vec<ClassRecord>> {
        Ok(self.inner.store.classes.values()?)
    }

    /// Classes `user` owns, co-owns or has a VM in.
    pub fn classes_of(&self, user: &str) -> Result<Vec<ClassRecord>> {
        let member: std::collections::HashSet<String> = self
            .inner
            .store
            .assignments
            .values()?
            .into_iter()
            .filter(|a| a.user == user)
            .filter_map(|a| a.class_id)
            .collect();
        Ok(self
            .classes()?
            .into_iter()
            .filter(|c| c.owner == user || c.co_owners.iter().any(|u| u == user) || member.contains(&c.id))
            .collect())
    }

    /// One class. Errors: [`DeployError::NotFound`].
    pub fn class(&self, id: &str) -> Result<ClassRecord> {
        self.inner
            .store
            .classes
            .get(id)?
            .ok_or_else(|| DeployError::not_found(format!("class {id}")))
    }

    /// Refuses a class name `owner` already uses for another class (letter case and surrounding
    /// space do not make a name different): two classes a teacher cannot tell apart in their list.
    fn check_name_free(&self, owner: &str, name: &str, except: Option<&str>) -> Result<()> {
        let wanted = name.trim().to_lowercase();
        let taken = self.classes()?.into_iter().any(|c| {
            c.owner == owner && Some(c.id.as_str()) != except && c.name.trim().to_lowercase() == wanted
        });
        if taken {
            return Err(DeployError::Invalid(format!(
                "the class name {:?} is taken: {owner} has a class of that name already; choose another",
                name.trim()
            )));
        }
        Ok(())
    }

    /// Changes a class's settings. A larger `pool_size` starts an `add-vms` job (returned); a smaller one
    /// starts a `delete-class` job for free student VMs (never assigned ones: [`DeployError::Conflict`]
    /// when too few are free). Errors: [`DeployError::NotFound`], [`DeployError::Invalid`].
    pub async fn modify_class(
        &self,
        id: &str,
        actor: &str,
        u: ClassUpdate,
    ) -> Result<(ClassRecord, Option<JobRecord>)> {
        let class = self.class(id)?;
        // Everything is checked before anything is stored: a refused update changes nothing.
        let change = match u.pool_size {
            Some(n) => pool_change(class.pool_size, n, self.max_pool())?,
            None => PoolChange::Unchanged,
        };
        if let Some(s) = &u.specs {
            check_specs(s)?;
        }
        if let Some(n) = &u.name {
            let n = store::accounts::validate_text("a class name", n, MAX_CLASS_NAME, false)
                .map_err(DeployError::Invalid)?;
            self.check_name_free(&class.owner, &n, Some(id))?;
        }
        if let Some(d) = &u.description {
            store::accounts::validate_text("a class description", d, MAX_DESCRIPTION, true)
                .map_err(DeployError::Invalid)?;
        }
        let updated = self.update_class(id, |c| {
            if let Some(n) = &u.name {
                c.name = n.trim().to_string();
            }
            if let Some(d) = &u.description {
                c.description = d.trim().to_string();
            }
            if let Some(s) = &u.specs {
                c.specs = s.clone();
                if let Some(ctx) = c.deploy_ctx.as_mut() {
                    ctx["options"]["specs"] = json!(s);
                }
            }
            if let Some(s) = u.self_registration {
                c.self_registration = s;
            }
        })?;
        let job = match change {
            PoolChange::Add(n) => Some(self.add_vms(id, actor, n).await?),
            PoolChange::Remove(n) => Some(self.shrink_pool(id, actor, n).await?),
            PoolChange::Unchanged => None,
        };
        Ok((self.class(id).unwrap_or(updated), job))
    }

    /// The largest pool size a class may have: `limits.max_pool`, at most [`MAX_POOL`].
    pub fn max_pool(&self) -> u32 {
        self.inner.cfg.limits.max_pool.min(MAX_POOL)
    }

    /// Adds `n` student VMs to a class (e.g. for its waiting list): an `add-vms` job.
    /// Errors: [`DeployError::LimitReached`] when the class owner would pass their VM limit;
    /// [`DeployError::Invalid`] when `n` is 0 or the class would pass [`Deployer::max_pool`]
    /// (see [`pool_after_adding`]; nothing is stored); [`DeployError::Conflict`] while the class has no
    /// plan yet (first deploy still running).
    pub async fn add_vms(&self, id: &str, actor: &str, n: u32) -> Result<JobRecord> {
        let class = self.class(id)?;
        let new_pool = pool_after_adding(class.pool_size, n, self.max_pool())?;
        let (Some(plan), Some(ctx)) = (class.plan.clone(), class.deploy_ctx.clone()) else {
            return Err(DeployError::Conflict(format!(
                "class {id} has not been deployed yet"
            )));
        };
        // The VMs count against the class owner's limit, whoever of its teachers asks.
        self.check_quota(&class.owner, 0, u64::from(n))?;
        let job_id = self.new_id("j")?;
        let vmids = self
            .reserve_vmids(&class.cluster, n as usize, &job_id, Some(id), None)
            .await?;
        let last_slot = self.class_vms(id)?.iter().map(|v| v.slot).max().unwrap_or(0);
        let spread = ctx["options"]["spread"].as_bool().unwrap_or(false);
        let nodes: Vec<String> = ctx["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str().map(String::from))
            .collect();
        let default_node = ctx["options"]["target_node"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let width = new_pool.to_string().len().max(2);
        let entries: Vec<Value> = vmids
            .iter()
            .enumerate()
            .map(|(i, vmid)| {
                let slot = last_slot
                    .saturating_add(1)
                    .saturating_add(u32::try_from(i).unwrap_or(u32::MAX));
                let node = if spread && !nodes.is_empty() {
                    nodes[(slot as usize).wrapping_add(1) % nodes.len()].clone()
                } else {
                    default_node.clone()
                };
                // The same rule as the workflow scripts' first deployment: `<class>-student-s<slot>`.
                let name = store::vm_name_from(&format!("{id}-student-s{slot:0width$}"), *vmid);
                json!({"name": name, "vmid": vmid, "role": "student", "user": "", "slot": slot, "node": node})
            })
            .collect();
        let grown = self.within_quota(&class.owner, 0, u64::from(n), || {
            self.update_class(id, |c| {
                c.pool_size = c.pool_size.saturating_add(n);
                c.last_job = Some(job_id.clone());
            })
        });
        if let Err(e) = grown {
            for v in &vmids {
                self.release_vmid(&class.cluster, *v)?;
            }
            return Err(e);
        }
        self.start_vm_job(&class, &job_id, KIND_ADD, actor, ctx, plan, entries)
    }

    /// Starts an `add-vms` or `move` job over `entries` (plan entries of the class).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start_vm_job(
        &self,
        class: &ClassRecord,
        job_id: &str,
        kind: &str,
        actor: &str,
        ctx: Value,
        plan: Value,
        entries: Vec<Value>,
    ) -> Result<JobRecord> {
        let version = class.bases.last().map(|b| b.version).unwrap_or(1);
        let now = self.now();
        let steps: Vec<JobStep> = entries.iter().map(|e| vm_step(&class.cluster, e)).collect();
        let params = json!({"workflow": class.workflow, "ctx": ctx, "plan": plan, "vms": entries, "base_version": version});
        let journal = self.journal_new_job(JobRecord {
            steps,
            ..class_job(class, kind, job_id, actor, now, params)
        })?;
        // On disk before the job destroys or makes anything: a crash from here is resumed by recovery.
        self.inner.store.flush_covering()?;
        let rec = journal.snapshot();
        self.spawn_job(journal, self.scripts());
        Ok(rec)
    }

    async fn shrink_pool(&self, id: &str, actor: &str, n: u32) -> Result<JobRecord> {
        let free = self.free_student_vms(id)?;
        if free.len() < n as usize {
            return Err(DeployError::Conflict(format!(
                "only {} student VMs are free; unassign students before shrinking the class",
                free.len()
            )));
        }
        let mut free = free;
        free.sort_by_key(|v| std::cmp::Reverse(v.slot));
        let vmids: Vec<u32> = free.iter().take(n as usize).map(|v| v.vmid).collect();
        self.update_class(id, |c| c.pool_size = c.pool_size.saturating_sub(n))?;
        self.start_delete_job(id, actor, Some(vmids), false)
    }

    /// Refuses (409) while a job of class `id` has not ended: one job at a time changes a class.
    pub(crate) fn refuse_while_a_job_runs(&self, id: &str) -> Result<()> {
        match self
            .jobs_of_class(id)?
            .into_iter()
            .find(|j| !crate::is_terminal(j.state))
        {
            Some(j) => Err(DeployError::Conflict(format!(
                "job {} ({}) of class {id} is still running",
                j.id, j.kind
            ))),
            None => Ok(()),
        }
    }

    /// Stores `rec`, a new job, and returns its journal; nothing runs yet.
    pub(crate) fn journal_new_job(&self, rec: JobRecord) -> Result<Arc<Journal>> {
        Journal::create(&self.inner.store, rec, self.inner.events.clone(), self.clock())
    }

    /// The user an assignment gives its VM to ("" for none, or for an unknown assignment).
    fn assigned_user(&self, assignment_id: &str) -> Result<String> {
        Ok(self
            .inner
            .store
            .assignments
            .get(assignment_id)?
            .map(|a| a.user)
            .unwrap_or_default())
    }

    /// Student VMs of a class nobody has (and that are not being reset).
    pub(crate) fn free_student_vms(&self, id: &str) -> Result<Vec<crate::trees::ClassVm>> {
        let mut out = Vec::new();
        for v in self.class_vms(id)? {
            if v.role != VmRole::Student || v.reset_job.is_some() {
                continue;
            }
            let user = self.assigned_user(&v.assignment_id)?;
            if user.is_empty() {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Retries the failed VMs of a class's jobs (their VMIDs are still reserved): one `add-vms` job.
    /// Returns `None` when nothing failed.
    pub async fn retry_failed(&self, id: &str, actor: &str) -> Result<Option<JobRecord>> {
        let class = self.class(id)?;
        let (Some(plan), Some(ctx)) = (class.plan.clone(), class.deploy_ctx.clone()) else {
            return Err(DeployError::Conflict(format!(
                "class {id} has no plan; create it again"
            )));
        };
        let mut entries = Vec::new();
        let mut seen = std::collections::HashSet::new();
        // Jobs come newest first: a VM a newer job made (or re-made) is settled, whatever older jobs say.
        let mut settled = std::collections::HashSet::new();
        for job in self.jobs_of_class(id)? {
            if !crate::is_terminal(job.state) {
                return Err(DeployError::Conflict(format!(
                    "job {} of class {id} is still running",
                    job.id
                )));
            }
            let by_vmid: BTreeMap<u64, Value> = job.params["vms"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["vmid"].as_u64().map(|v| (v, e.clone())))
                .collect();
            for s in job
                .steps
                .iter()
                .filter(|s| s.state == JobState::Failed && s.role != "plan" && s.role != "delete")
            {
                let Some(vmid) = s.vmid else { continue };
                // A failed re-make (a move onto a newer base) keeps the VM's record and assignment while
                // its VM is gone: it is made again. Other failed steps left no record; a VM with one was
                // made since.
                let known = self.inner.vms.get(&vm_key(&class.cluster, vmid))?.is_some();
                let remade = matches!(
                    job.kind.as_str(),
                    crate::runner::KIND_MOVE | crate::runner::KIND_RESET
                );
                if (known && !remade) || settled.contains(&vmid) || !seen.insert(vmid) {
                    continue;
                }
                if let Some(e) = by_vmid.get(&u64::from(vmid)) {
                    // A failed attempt may have left a disk or a half-made VM (e.g. its node went
                    // away before the cleanup could run): the retry cleans up first.
                    let mut e = e.clone();
                    e["retry"] = serde_json::Value::Bool(true);
                    entries.push(e);
                }
            }
            settled.extend(
                job.steps
                    .iter()
                    .filter(|s| s.state == JobState::Done && s.role != "plan")
                    .filter_map(|s| s.vmid),
            );
        }
        if entries.is_empty() {
            return Ok(None);
        }
        let job_id = self.new_id("j")?;
        for e in &entries {
            if let Some(v) = e["vmid"].as_u64().and_then(|v| u32::try_from(v).ok()) {
                self.rebind_vmid(&class.cluster, v, &job_id)?;
            }
        }
        self.flush().await?;
        self.update_class(id, |c| c.last_job = Some(job_id.clone()))?;
        self.start_vm_job(&class, &job_id, KIND_ADD, actor, ctx, plan, entries)
            .map(Some)
    }

    /// Deletes a class: every VM Proxlab made for it (students and teacher, then its bases; never the
    /// template, never a VM it did not create), then the class, its assignments and invites. Only the
    /// owner (or an admin: `as_admin`) may, and `confirm` must equal the class id.
    /// Errors: [`DeployError::NotOwner`], [`DeployError::ConfirmationRequired`], [`DeployError::Conflict`]
    /// while another job of the class runs.
    pub async fn delete_class(
        &self,
        id: &str,
        actor: &str,
        as_admin: bool,
        confirm: &str,
    ) -> Result<JobRecord> {
        let class = self.class(id)?;
        if class.owner != actor && !as_admin {
            return Err(DeployError::NotOwner {
                owner: class.owner,
                action: "delete the class".into(),
            });
        }
        if confirm != id {
            return Err(DeployError::ConfirmationRequired(format!(
                "deleting class {id} removes its {} VMs and their disks; send confirm={id}",
                self.class_vms(id)?.len()
            )));
        }
        self.refuse_while_a_job_runs(id)?;
        self.set_class_state(id, "deleting")?;
        self.start_delete_job(id, actor, None, true)
    }

    fn start_delete_job(
        &self,
        id: &str,
        actor: &str,
        vmids: Option<Vec<u32>>,
        remove_class: bool,
    ) -> Result<JobRecord> {
        let class = self.class(id)?;
        let job_id = self.new_id("j")?;
        let now = self.now();
        let params = json!({"vmids": vmids, "remove_class": remove_class, "storage": class.storage});
        let journal = self.journal_new_job(class_job(&class, KIND_DELETE, &job_id, actor, now, params))?;
        self.update_class(id, |c| c.last_job = Some(job_id.clone()))?;
        let rec = journal.snapshot();
        self.spawn_job(journal, self.scripts());
        Ok(rec)
    }

    /// Removes a class's records (after its VMs are gone): class VMs, assignments, invites, the class.
    pub(crate) fn remove_class_records(&self, id: &str) -> Result<()> {
        let class = self.inner.store.classes.get(id)?;
        for v in self.class_vms(id)? {
            self.forget_vm(&v.cluster, v.vmid)?;
        }
        for a in self.inner.store.assignments.values()? {
            if a.class_id.as_deref() == Some(id) {
                self.inner.store.assignments.remove(&a.id)?;
            }
        }
        for (k, inv) in self.inner.invites.scan_prefix("")? {
            if inv.class_id == id {
                self.inner.invites.remove(&k)?;
            }
        }
        if let Some(c) = class {
            for r in self.reservations(Some(&c.cluster))? {
                if r.class_id.as_deref() == Some(id) {
                    self.release_vmid(&r.cluster, r.vmid)?;
                }
            }
        }
        self.inner.store.classes.remove(id)?;
        tracing::info!(class = id, "class removed");
        Ok(())
    }

    /// Adds `user` as a co-owner of class `id`. Only the class owner or an admin (`as_admin`) may add
    /// co-owners (a co-owner may not add anyone), and only an existing, enabled teacher or admin account
    /// can become one (never a student: co-owners manage the class and see every VM in it).
    /// Co-owners manage the class but cannot delete it. Adding a co-owner twice is harmless.
    /// Errors: [`DeployError::NotFound`] for an unknown class; [`DeployError::NotOwner`] (403) when
    /// `actor` is not the owner; [`DeployError::Invalid`] (400) for an unknown name, a student or
    /// disabled account, or the owner.
    pub fn add_co_owner(&self, id: &str, actor: &str, as_admin: bool, user: &str) -> Result<ClassRecord> {
        let class = self.class(id)?;
        if class.owner != actor && !as_admin {
            return Err(DeployError::NotOwner {
                owner: class.owner,
                action: "add co-owners".into(),
            });
        }
        let only = "only teacher or admin accounts can be co-owners";
        let Some(account) = self.inner.store.users.get(user)? else {
            return Err(DeployError::Invalid(format!("there is no user {user:?}; {only}")));
        };
        if !matches!(account.role, store::Role::Teacher | store::Role::Admin) {
            return Err(DeployError::Invalid(format!("{user} is a student; {only}")));
        }
        if account.disabled {
            return Err(DeployError::Invalid(format!(
                "{user}'s account is disabled; {only}"
            )));
        }
        if class.owner == user {
            return Err(DeployError::Invalid(format!("{user} owns the class")));
        }
        self.update_class(id, |c| {
            if !c.co_owners.iter().any(|u| u == user) {
                c.co_owners.push(user.to_string());
            }
        })
    }

    /// Removes co-owner `user` from class `id`. Only the class owner or an admin (`as_admin`) may remove
    /// a co-owner; a co-owner may only remove themselves (step down), never another.
    /// Errors: [`DeployError::NotFound`] for an unknown class or when `user` is not a co-owner;
    /// [`DeployError::NotOwner`] (403) when `actor` may not remove `user`.
    pub fn remove_co_owner(&self, id: &str, actor: &str, as_admin: bool, user: &str) -> Result<ClassRecord> {
        let class = self.class(id)?;
        if class.owner != actor && !as_admin && actor != user {
            return Err(DeployError::NotOwner {
                owner: class.owner,
                action: "remove co-owners".into(),
            });
        }
        if !class.co_owners.iter().any(|u| u == user) {
            return Err(DeployError::not_found(format!("co-owner {user} of class {id}")));
        }
        self.update_class(id, |c| c.co_owners.retain(|u| u != user))
    }

    /// Power action on the class's teacher VM through the VM operations (`ops`: one at a time per VM,
    /// follows the task to its end). Errors: [`DeployError::NotFound`] when the class has no teacher VM;
    /// [`DeployError::Op`].
    pub async fn teacher_power(&self, id: &str, action: PowerAction) -> Result<crate::trees::ClassVm> {
        let vm = self
            .class_vms(id)?
            .into_iter()
            .find(|v| v.role == VmRole::Teacher)
            .ok_or_else(|| DeployError::not_found(format!("teacher VM of class {id}")))?;
        self.ops()?.power(&vm.cluster, vm.vmid, action).await?;
        Ok(vm)
    }

    /// The class page: every VM of the class (teacher, students, bases) with its user, live state and IP
    /// from the host's inventory, ordered teacher, students by slot, bases.
    pub fn class_vm_views(&self, id: &str) -> Result<Vec<ClassVmView>> {
        let class = self.class(id)?;
        let current = class.bases.last().map(|b| b.version).unwrap_or(1);
        let mut out = Vec::new();
        for v in self.class_vms(id)? {
            let user = self.assigned_user(&v.assignment_id)?;
            let inv = self.inner.host.inventory_guest(&v.cluster, v.vmid);
            let state = inv
                .as_ref()
                .and_then(|g| g["state"].as_str().or(g["status"].as_str()).map(String::from))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "unknown".into());
            let ip = inv
                .as_ref()
                .and_then(|g| g["ip"]["address"].as_str().or(g["ip"].as_str()).map(String::from));
            out.push(ClassVmView {
                outdated: v.role != VmRole::Base && v.base_version < current,
                cluster: v.cluster,
                vmid: v.vmid,
                name: v.name,
                role: v.role,
                slot: v.slot,
                user,
                node: v.node,
                state,
                ip,
                base_version: v.base_version,
            });
        }
        out.sort_by_key(|v| {
            (
                match v.role {
                    VmRole::Teacher => 0,
                    VmRole::Student => 1,
                    VmRole::Base => 2,
                },
                v.slot,
                v.vmid,
            )
        });
        Ok(out)
    }

    /// The class VM record of a VM, if Proxlab made it for a class.
    pub fn class_vm(&self, cluster: &str, vmid: u32) -> Result<Option<crate::trees::ClassVm>> {
        self.inner.vms.get(&vm_key(cluster, vmid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_ids_are_dns_labels() {
        assert_eq!(slug("Netzwerke Jörg 2024"), "netzwerke-jorg-2024");
        assert_eq!(slug("___"), "class");
        assert_eq!(slug("lab.course-a"), "lab-course-a");
        assert!(slug(&"x".repeat(80)).len() <= 24);
    }

    #[test]
    fn drive_options_keep_everything_but_volume_size_and_format() {
        assert_eq!(
            drive_opts("labnfs:9000/base-9000-disk-0.qcow2,iothread=1,size=2G"),
            ",iothread=1"
        );
        assert_eq!(
            drive_opts("labnfs:9001/base-9001-disk-1.qcow2,efitype=4m,pre-enrolled-keys=1,size=528K"),
            ",efitype=4m,pre-enrolled-keys=1"
        );
        assert_eq!(drive_opts("local-lvm:vm-1-disk-0"), "");
    }

    #[test]
    fn volume_paths_follow_the_dir_layout() {
        assert_eq!(
            volume_path("/mnt/pve/labnfs/", "labnfs:9000/base-9000-disk-0.qcow2").as_deref(),
            Some("/mnt/pve/labnfs/images/9000/base-9000-disk-0.qcow2")
        );
        assert_eq!(
            volume_path("/x", "labnfs:9000/base-9000-disk-0.qcow2/201/vm-201-disk-0.qcow2").as_deref(),
            Some("/x/images/201/vm-201-disk-0.qcow2")
        );
        assert_eq!(volume_path("/x", "local-lvm:vm-1-disk-0"), None);
        assert_eq!(volume_path("/x", "s:../../etc/passwd"), None);
    }
}
