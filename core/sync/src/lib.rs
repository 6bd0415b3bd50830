//! Inventory sync: keeps an in-memory, persisted picture of every guest of every configured Proxmox VE
//! cluster, and tells subscribers what changed.
//!
//! Per cluster, one `GET /cluster/resources?type=vm` per tick (default every 5 s) gives every guest's
//! state in one request; a slower `GET /cluster/status` checks quorum; running guests get their IP from
//! the guest agent / LXC interfaces with bounded concurrency and per-VM backoff. A cluster that is down,
//! without quorum or with an offline node keeps its last inventory, marked stale with the reason.
//!
//! IP discovery's verify step (ping / TCP, then the ARP MAC, never for an address the dial rule
//! refuses) is [`discovery`].
//!
//! This crate never serves HTTP and never runs scripts; readers take lock-free snapshots
//! ([`Inventory::snapshot`]) and never wait on Proxmox.

pub mod address;
pub mod discovery;
pub mod inventory;
pub mod syncer;

pub use address::{
    AddressPolicy, Choice, ClusterDial, DialBasis, DialRefusal, DialRules, NicAddresses, dial_static,
    dial_verdict,
};
pub use discovery::GuestFacts;
pub use inventory::{CachedJson, ClusterState, Event, GuestKey, Inventory, Snapshot};
pub use syncer::{
    AgentDiscovery, ClusterHandle, IpDiscovery, SyncConfig, SyncError, Syncer, TickReport, display_state,
    now_secs,
};
