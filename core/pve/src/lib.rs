//! # pve — the Proxmox VE API client of Proxlab
//!
//! This crate owns everything about talking to a Proxmox VE cluster over its HTTPS API
//! (`https://host:8006/api2/json`, PVE 8/9):
//!
//! - **Authentication**: API tokens (`Authorization: PVEAPIToken=user@realm!id=secret`, preferred)
//!   or user/password tickets (`POST /access/ticket`, `PVEAuthCookie`, `CSRFPreventionToken` on
//!   writes only), with renewal before the 2 h lifetime ends and one re-login after a 401 ([`Auth`]).
//! - **TLS trust** per cluster: a CA file, a pinned SHA-256 certificate fingerprint verified inside
//!   the real handshake with real signature checks, the system roots, or — loudly — none ([`Tls`]).
//! - **Calls**: a timeout on every request, retries with jittered backoff for reads only, and
//!   errors classified into [`PveError`] kinds that keep PVE's status and wording.
//! - **Tasks**: [`Upid`] parsing and [`PveClient::wait_task`]; an HTTP 200 with a UPID is not
//!   success until the task's `exitstatus` says so.
//! - **Models**: typed, tolerant views of PVE answers (numbers as strings, 0/1 booleans, missing keys).
//!
//! It must never: know about axum, Rhai, the store or any other Proxlab crate; log a secret (tokens,
//! passwords, tickets live in [`Secret`]); retry a write blindly; treat a pin and "skip verification"
//! as combinable; or cache cluster state (the `sync` crate owns the inventory).
//!
//! ```no_run
//! # async fn demo() -> Result<(), pve::PveError> {
//! use pve::{Auth, PveClient, PveConfig, Secret, Tls};
//! let cfg = PveConfig::new(
//!     "https://192.0.2.10:8006".parse().map_err(|e| pve::PveError::Config(format!("{e}")))?,
//!     Auth::Token { id: "portal@pve!lab".into(), secret: Secret::new("…") },
//!     Tls::Fingerprint("AA:BB:…".parse()?),
//! );
//! let pve = PveClient::new(cfg)?;
//! for vm in pve.cluster_resources().await? {
//!     println!("{} {} {}", vm.vmid, vm.node, vm.status);
//! }
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod auth;
mod check;
mod client;
pub mod console;
mod de;
mod error;
mod models;
mod secret;
mod tls;

pub use auth::{Auth, Clock, ManualClock, SystemClock};
pub use check::{ClusterCheck, ClusterProbe};
pub use client::{PveClient, PveConfig, WebSocketTarget, encode_sshkeys};
pub use error::{PveError, classify, classify_task_failure};
pub use models::*;
pub use secret::Secret;
pub use tls::{Fingerprint, Tls};
