//! Host modules, one Rhai namespace each. Every function's `///` comment is its user documentation
//! and goes into `scripts/API.md` (see [`crate::api_doc`]): arguments, return shape, units, errors.
//!
//! Failures are thrown as `#{code, message}` maps with a dotted code; scripts can catch them.

use rhai::{Dynamic, EvalAltResult, Module, Shared};
use serde::Serialize;

pub(crate) mod inventory;
pub(crate) mod job;
pub(crate) mod log;
pub(crate) mod net;
pub(crate) mod pve;
pub(crate) mod qcow2;
pub(crate) mod ssh;

/// The host modules and their namespace names, in the order they are documented.
pub(crate) fn all() -> Vec<(&'static str, Shared<Module>)> {
    vec![
        ("pve", Shared::new(rhai::exported_module!(pve::pve_mod))),
        (
            "inventory",
            Shared::new(rhai::exported_module!(inventory::inventory_mod)),
        ),
        ("ssh", Shared::new(rhai::exported_module!(ssh::ssh_mod))),
        ("qcow2", Shared::new(rhai::exported_module!(qcow2::qcow2_mod))),
        ("net", Shared::new(rhai::exported_module!(net::net_mod))),
        ("log", Shared::new(rhai::exported_module!(log::log_mod))),
        ("job", Shared::new(rhai::exported_module!(job::job_mod))),
    ]
}

/// Serializes a value into a Rhai value (maps, arrays, strings, ints, floats, bools, `()`).
pub(crate) fn to_dyn<T: Serialize>(value: &T) -> Result<Dynamic, Box<EvalAltResult>> {
    rhai::serde::to_dynamic(value)
}

/// A VMID from a script integer: 100..=999_999_999 as PVE allows.
pub(crate) fn check_vmid(v: i64) -> Result<u32, Box<EvalAltResult>> {
    u32::try_from(v)
        .ok()
        .filter(|v| (100..=999_999_999).contains(v))
        .ok_or_else(|| crate::engine::throw("arg.vmid", format!("VMID {v} is out of range 100..=999999999")))
}
