//! [`DeployError`]: every failure of a deployment, class, invite or publish operation.

use pve::PveError;
use script::{HostError, ScriptError};
use store::StoreError;

/// What went wrong. Each variant has a stable [`DeployError::code`] for JSON error bodies
/// (`{"error": {"code", "message"}}`) and a message a teacher can act on.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// A class, template, job, VM or invite that must exist does not.
    #[error("{what} not found")]
    NotFound {
        /// What was looked up, e.g. `class netsec-a`.
        what: String,
    },
    /// The request itself is unusable (bad name, pool size out of range, unknown workflow, ...).
    #[error("{0}")]
    Invalid(String),
    /// The request clashes with the current state (a job already running, the user already joined, ...).
    #[error("{0}")]
    Conflict(String),
    /// Only the class owner may do this (delete the class, change its owner).
    #[error("only the class owner ({owner}) may {action}")]
    NotOwner {
        /// The owner's user name.
        owner: String,
        /// What was refused, e.g. `delete the class`.
        action: String,
    },
    /// Every student VM of the class is taken; the user was put on the waiting list.
    #[error(
        "class {class} is full ({size} student VMs); {user} is on the waiting list at position {position}"
    )]
    ClassFull {
        /// Class id.
        class: String,
        /// Number of student VMs.
        size: usize,
        /// Who tried to join.
        user: String,
        /// 1-based position on the waiting list.
        position: usize,
    },
    /// The invite token is unknown, revoked or expired (deliberately one answer for all three).
    #[error(
        "this invite link is not valid any more (unknown, revoked or expired); ask your teacher for a new one"
    )]
    InviteInvalid,
    /// No free VMID is left in the cluster's configured range.
    #[error(
        "no {needed} free VMIDs left in cluster {cluster}'s range {low}..={high}; widen [[cluster]] vmid_range"
    )]
    VmidsExhausted {
        /// Cluster id.
        cluster: String,
        /// Range start (inclusive).
        low: u32,
        /// Range end (inclusive).
        high: u32,
        /// How many were needed.
        needed: usize,
    },
    /// A preflight check refused the request before any API call (e.g. a linked clone that PVE would refuse).
    #[error("{0}")]
    Preflight(String),
    /// The VM is not one Proxlab created (the template, or a VM made by someone else): left untouched.
    #[error("VM {vmid} in cluster {cluster} was not created by Proxlab; it is left untouched")]
    NotOurs {
        /// Cluster id.
        cluster: String,
        /// VMID.
        vmid: u32,
    },
    /// The caller may not do this (a template not opened to them, registering as a teacher, ...).
    #[error("{0}")]
    Forbidden(String),
    /// A per-teacher limit (classes, VMs) or an invite's registration cap would be passed.
    #[error("{0}")]
    LimitReached(String),
    /// Too many requests of one kind in a short time (self-registrations per invite).
    #[error("{0}")]
    RateLimited(String),
    /// The cluster id is not configured.
    #[error("unknown cluster {0}")]
    UnknownCluster(String),
    /// A destructive request needs an explicit confirmation.
    #[error("confirmation required: {0}")]
    ConfirmationRequired(String),
    /// A Proxmox VE call failed (keeps PVE's kind and message).
    #[error(transparent)]
    Pve(#[from] PveError),
    /// A workflow script failed (its code, message, path and line).
    #[error(transparent)]
    Script(#[from] ScriptError),
    /// A node operation (SSH, qemu-img) failed.
    #[error("node operation failed: {0}")]
    Host(HostError),
    /// A VM operation (a power action through the `ops` service) was refused or failed.
    #[error(transparent)]
    Op(#[from] ops::OpError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<HostError> for DeployError {
    fn from(e: HostError) -> Self {
        DeployError::Host(e)
    }
}

impl From<sled::Error> for DeployError {
    fn from(e: sled::Error) -> Self {
        DeployError::Store(StoreError::from(e))
    }
}

impl DeployError {
    /// A stable snake_case code for JSON error bodies: `not_found`, `invalid`, `conflict`,
    /// `not_owner`, `class_full`, `invite_invalid`, `vmids_exhausted`, `preflight`, `not_ours`,
    /// `unknown_cluster`, `forbidden`, `limit_reached`, `rate_limited`, `confirmation_required`, `pve`,
    /// `script`, `node`, `operation`, `store`. Which HTTP status each is, is the web layer's business.
    pub fn code(&self) -> &'static str {
        match self {
            DeployError::NotFound { .. } => "not_found",
            DeployError::Invalid(_) => "invalid",
            DeployError::Conflict(_) => "conflict",
            DeployError::NotOwner { .. } => "not_owner",
            DeployError::ClassFull { .. } => "class_full",
            DeployError::InviteInvalid => "invite_invalid",
            DeployError::VmidsExhausted { .. } => "vmids_exhausted",
            DeployError::Preflight(_) => "preflight",
            DeployError::NotOurs { .. } => "not_ours",
            DeployError::UnknownCluster(_) => "unknown_cluster",
            DeployError::Forbidden(_) => "forbidden",
            DeployError::LimitReached(_) => "limit_reached",
            DeployError::RateLimited(_) => "rate_limited",
            DeployError::ConfirmationRequired(_) => "confirmation_required",
            DeployError::Pve(_) => "pve",
            DeployError::Script(_) => "script",
            DeployError::Host(_) => "node",
            DeployError::Op(_) => "operation",
            DeployError::Store(_) => "store",
        }
    }

    pub(crate) fn not_found(what: impl Into<String>) -> DeployError {
        DeployError::NotFound { what: what.into() }
    }
}

/// Result alias of this crate.
pub type Result<T, E = DeployError> = std::result::Result<T, E>;
