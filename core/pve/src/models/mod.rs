//! Typed PVE answers. Every model tolerates PVE's loose typing (numbers as strings, 0/1 booleans,
//! missing keys) through the helpers in `crate::de`.

mod agent;
mod config;
mod permissions;
mod resources;
mod storage;
mod tags;
mod task;

pub(crate) use agent::AgentInterfacesAnswer;
pub use agent::{AgentInterface, AgentIp, LxcInterface};
pub use config::{DiskDevice, GuestConfig, NetDevice, parse_size};
pub use permissions::{Permissions, REQUIRED_VM_PRIVILEGES};
pub use resources::{
    ClusterResource, ClusterStatusEntry, DisplayState, GuestKind, GuestStatus, NodeInfo, VersionInfo,
};
pub use storage::{SnapshotInfo, StorageInfo, StorageVolume};
pub use tags::Tags;
pub use task::{PowerAction, TaskOutcome, TaskStatus, Upid};
