//! The stored entities (DESIGN §2). Every field has a serde default so that records written by an
//! older schema still decode; new fields are added with defaults, renamed ones need a migration.
//!
//! Times are Unix seconds (`*_at`) unless the name says micros; sizes are bytes unless it says MiB.

use serde::{Deserialize, Serialize};

/// A connected Proxmox VE cluster as configured by an admin (secrets are kept in the config file or
/// the secret store, never in this record).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ClusterRecord {
    /// Short id used in keys and URLs (`?cluster=ID`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// API base, e.g. `https://pve1.example.org:8006`.
    pub url: String,
    /// Whether the sync runs for it.
    pub enabled: bool,
}

/// SSH access to a node and its storage paths (used by the cloner).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct NodeRecord {
    pub cluster: String,
    pub node: String,
    pub ssh_host: String,
    pub ssh_port: u16,
    pub ssh_user: String,
    /// Pinned host key fingerprint (`SHA256:...`), if any.
    pub host_key_sha256: Option<String>,
}

/// An IP address found for a guest, with where it came from.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct IpRecord {
    /// The primary address (no prefix length).
    pub address: String,
    /// All usable addresses, ordered by NIC index (netN), primary first.
    pub all: Vec<String>,
    /// The discovery tier that answered (`inventory`, `guest-agent`, `lxc`, `arp`, `config`).
    pub source: String,
    /// When it was seen (Unix s).
    pub seen_at: u64,
}

/// One guest (VM or container) of the inventory, key `cluster/vmid`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct GuestRecord {
    pub cluster: String,
    pub vmid: u32,
    pub node: String,
    pub name: String,
    /// `qemu` or `lxc`.
    #[serde(rename = "type")]
    pub kind: String,
    /// PVE's raw status (`running`, `stopped`, `unknown`, ...).
    pub status: String,
    /// PVE's QMP status when known (`paused`, `running`, ...).
    pub qmpstatus: Option<String>,
    /// Display state: `running`, `stopped`, `paused`, `hibernated`, `unknown`.
    pub state: String,
    /// PVE lock (`backup`, `clone`, `snapshot`, `suspended`, ...).
    pub lock: Option<String>,
    pub template: bool,
    /// Tags, sorted, lower-case.
    pub tags: Vec<String>,
    pub pool: Option<String>,
    /// Number of vCPUs (PVE `maxcpu`).
    pub cpus: f64,
    /// CPU usage as a fraction of `cpus` (0..1).
    pub cpu: f64,
    /// Memory in use, bytes.
    pub mem: u64,
    /// Memory size, bytes.
    pub maxmem: u64,
    /// Disk size, bytes.
    pub maxdisk: u64,
    /// Uptime, seconds.
    pub uptime: u64,
    /// MAC of net0 (lower case), once the config was read.
    pub mac: Option<String>,
    /// MACs of all NICs as `(netN index, mac lower case)`, once the config was read.
    pub macs: Vec<(u32, String)>,
    /// Whether the guest agent is enabled in the config (`None`: config not read yet).
    pub agent: Option<bool>,
    pub ip: Option<IpRecord>,
    /// When this record was last confirmed by PVE (Unix s).
    pub synced_at: u64,
    /// Set when the guest's node is unreachable: the record is the last known state.
    pub stale: Option<String>,
}

/// Account roles.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Teacher,
    #[default]
    Student,
}

/// A user account.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct UserRecord {
    /// Login name; contains `@realm` for Proxmox-realm users, never for local ones.
    pub name: String,
    pub display_name: String,
    pub role: Role,
    /// `local` or `pve`.
    pub realm: String,
    /// argon2id PHC string (local users only).
    pub password_hash: Option<String>,
    pub disabled: bool,
    /// Active cluster id for bare-VMID paths.
    pub active_cluster: Option<String>,
    pub created_at: u64,
    /// Bumped on password change / disable: sessions of an older generation are dead.
    pub session_generation: u64,
    /// Realm users: the PVE groups seen at the last login (admin by group is decided from these).
    pub realm_groups: Vec<String>,
}

/// A server-side browser session (key: SHA-256 hex of the cookie value).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SessionRecord {
    pub user: String,
    pub csrf_token: String,
    pub created_at: u64,
    pub last_seen_at: u64,
    pub session_generation: u64,
    pub remote_addr: String,
}

/// A bearer API token (key: SHA-256 hex of the secret).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ApiTokenRecord {
    /// Public id shown in listings (`tok_...`).
    pub id: String,
    pub user: String,
    pub created_at: u64,
    pub expires_at: Option<u64>,
    pub revoked: bool,
    pub description: String,
}

/// A class (course) with its VM pool.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ClassRecord {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub co_owners: Vec<String>,
    pub cluster: String,
    /// Template key `cluster/vmid`.
    pub template: String,
    /// Workflow script name (`qcow2-overlay`, `linked-clone`).
    pub workflow: String,
    pub pool_size: u32,
    /// SHA-256 hex of the current invite token.
    pub invite_hash: Option<String>,
    pub invite_expires_at: Option<u64>,
    pub self_registration: bool,
    pub created_at: u64,
    /// Free-form settings per class (plugins read theirs here).
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// Node the class's VMs are placed on (`None`: the template's node).
    pub node: Option<String>,
    /// Spread the VMs over the cluster's nodes (needs shared storage), instead of one node.
    pub spread: bool,
    /// Target storage ID of the VMs' disks (`None`: the template disk's storage).
    pub storage: Option<String>,
    /// Overrides of the template's specs for every VM of the class.
    pub specs: ClassSpecs,
    /// Lifecycle: `deploying`, `ready`, `partial` (some VMs failed), `failed`, `deleting`.
    pub state: String,
    /// Base versions of the class, oldest first; the last one is current (see [`ClassBase`]).
    pub bases: Vec<ClassBase>,
    /// The workflow's last `plan(ctx)` result (JSON), reused for retries, moves and resumes.
    pub plan: Option<serde_json::Value>,
    /// The `ctx` the class's VMs are made with (template config, storage, options), for later
    /// `create_vm` calls (added VMs, retries, VMs re-made on a new base).
    pub deploy_ctx: Option<serde_json::Value>,
    /// Users who tried to join a full class, oldest first.
    pub waiting: Vec<WaitingEntry>,
    /// Id of the last job that changed the class (deploy, publish, delete).
    pub last_job: Option<String>,
    /// Description shown on the class page.
    pub description: String,
}

/// Spec overrides of a class (`None`: keep the template's value).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ClassSpecs {
    pub cores: Option<u32>,
    pub sockets: Option<u32>,
    pub memory_mib: Option<u64>,
}

/// One base version of a class: the image (qcow2-overlay) or template VM (linked-clone) that the
/// class's VMs are made from.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ClassBase {
    /// 1, 2, ... (publish makes a new one).
    pub version: u32,
    /// VMID of the base VM (a PVE template holding the base image).
    pub vmid: u32,
    pub node: String,
    /// Whether Proxlab created this base VM (false: the registered template itself, never touched).
    pub owned: bool,
    /// The workflow's description of the base (`path`, `format`, `volid`, ...), as `plan` returned it.
    pub detail: serde_json::Value,
    pub created_at: u64,
    /// Set once the base was deleted (no VM used it any more).
    pub deleted_at: Option<u64>,
}

/// A user waiting for a VM of a full class.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct WaitingEntry {
    pub user: String,
    pub since: u64,
}

/// A disk of a template's cached specs.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TemplateDisk {
    pub key: String,
    pub volume: String,
    pub storage: String,
    pub format: Option<String>,
    pub size_bytes: Option<u64>,
    /// The disk is the EFI vars disk (`efidisk0`).
    pub efi: bool,
    /// The disk is the TPM state (`tpmstate0`).
    pub tpm: bool,
}

/// A registered PVE template with cached specs.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TemplateRecord {
    pub cluster: String,
    pub node: String,
    pub vmid: u32,
    pub name: String,
    pub cores: u32,
    pub sockets: u32,
    pub memory_mib: u64,
    pub disks: Vec<TemplateDisk>,
    pub bridges: Vec<String>,
    pub ostype: Option<String>,
    pub agent: bool,
    pub synced_at: u64,
    /// PVE's `template` flag at the last sync.
    pub is_template: bool,
    /// Firmware: `seabios` (default) or `ovmf` (UEFI).
    pub bios: Option<String>,
    /// Whether the template has an EFI vars disk / a TPM state volume.
    pub efi: bool,
    pub tpm: bool,
    /// Set when the last sync could not read the template (it was deleted, the cluster is down, ...).
    pub sync_error: Option<String>,
    /// Who may create classes from it (admins always may). A record stored before visibility existed
    /// reads as admins only: the catalogue fails closed until an admin opens it again.
    pub visibility: TemplateVisibility,
}

/// Which teachers see a catalogue template and may create classes from it; admins always may.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TemplateVisibility {
    /// Every teacher.
    AllTeachers,
    /// Only these teachers (account names).
    Teachers {
        /// Account names.
        names: Vec<String>,
    },
    /// Admins only.
    #[default]
    AdminsOnly,
}

impl TemplateVisibility {
    /// Whether `user` (an admin when `is_admin`) may use a template with this visibility.
    pub fn allows(&self, user: &str, is_admin: bool) -> bool {
        is_admin
            || match self {
                TemplateVisibility::AllTeachers => true,
                TemplateVisibility::Teachers { names } => names.iter().any(|n| n == user),
                TemplateVisibility::AdminsOnly => false,
            }
    }
}

/// Why a user has a VM.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AssignmentRole {
    Teacher,
    Base,
    Student,
    #[default]
    Direct,
}

/// A VM assigned to a user (or to a class as its base).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct AssignmentRecord {
    pub id: String,
    pub cluster: String,
    pub vmid: u32,
    /// User name; empty for a class VM not yet given to anyone.
    pub user: String,
    pub class_id: Option<String>,
    pub role: AssignmentRole,
    /// Snapshot that "revert" rolls back to.
    pub baseline_snapshot: Option<String>,
    pub created_at: u64,
}

/// State of a job or of one step.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    #[default]
    Pending,
    Running,
    Done,
    Failed,
    Cancelled,
}

/// One journaled step of a job (typically one VM).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct JobStep {
    pub name: String,
    pub cluster: String,
    pub vmid: Option<u32>,
    pub state: JobState,
    pub error: Option<String>,
    pub attempts: u32,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    /// What the step makes: `plan`, `base`, `teacher`, `student`, `delete`, ...
    pub role: String,
    /// Node the step works on.
    pub node: Option<String>,
    /// Latest human-readable status (`queued`, `retrying in 2 s: lock timeout`, ...).
    pub detail: String,
    /// The step's result (JSON), e.g. what `create_vm` returned.
    pub result: Option<serde_json::Value>,
}

/// A long operation with its journal.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct JobRecord {
    pub id: String,
    /// `deploy`, `publish`, `delete-class`, ...
    pub kind: String,
    pub state: JobState,
    pub owner: String,
    pub class_id: Option<String>,
    pub steps: Vec<JobStep>,
    pub error: Option<String>,
    pub created_at: u64,
    pub finished_at: Option<u64>,
    /// Cluster the job works in.
    pub cluster: String,
    /// What the job needs to resume after a restart (the deploy `ctx`, publish mode, ...), as JSON.
    pub params: serde_json::Value,
    /// Last change (Unix s).
    pub updated_at: u64,
}

/// One audit log entry: who did what, when, from where, with what result.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct AuditRecord {
    /// Unix time in microseconds.
    pub at_micros: u64,
    pub user: String,
    pub remote_addr: String,
    /// e.g. `vm.start`, `user.create`, `login.fail`.
    pub action: String,
    /// e.g. `lab/4001`.
    pub target: String,
    /// `ok` or the error text.
    pub result: String,
}

/// A class's hours settings (issue 14): its timetable, the usage-hour quota per student and the extra
/// minutes granted to single students. A class without this record has no class hours and no quota.
///
/// The timetable is kept in its wire form (`schedule::Timetable` as JSON): this crate depends on no
/// other Proxlab crate; the `hours` crate decodes and checks it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ClassHoursRecord {
    /// `schedule::Timetable`'s JSON form (`{zone, weekly, once, warmup_minutes, grace_minutes, outside}`).
    pub timetable: serde_json::Value,
    /// Hours per student outside class time; `None`: no quota.
    pub quota_hours: Option<u32>,
    /// Extra minutes granted, by user name.
    pub extra_minutes: std::collections::BTreeMap<String, u32>,
}

/// The last class-hours action performed for a class (`schedule::Mark`'s JSON form), so a restart
/// neither repeats nor misses one.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct HoursMarkRecord {
    /// The planned time of the action (Unix seconds).
    pub at: i64,
    /// The action (`warm_up`, `warn_ten`, `warn_two`, `shutdown`, `stop`); `None`: nothing done yet.
    pub action: Option<String>,
}

/// What one student's VM of a class has used of the usage-hour quota (`schedule::Usage`'s JSON form),
/// written at each power transition.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct UsageRecord {
    /// Seconds of running time outside class time, of the runs that ended.
    pub used_secs: u64,
    /// When the open run began (Unix seconds), while the VM runs.
    pub running_since: Option<i64>,
    /// When the VM last started (Unix seconds).
    pub last_start: Option<i64>,
}
