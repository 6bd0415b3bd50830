//! `inventory::` — the portal's inventory (memory + sled), read only. No network.

use rhai::plugin::*;

/// Inventory reads.
#[export_module]
pub mod inventory_mod {
    use crate::engine::call_state;
    use crate::modules::{check_vmid, to_dyn};

    /// The inventory record of guest `vmid` in `cluster` (a configured cluster id), or `()` if
    /// the inventory does not know it. Shape: `#{cluster, vmid, node, name, type: "qemu"|"lxc",
    /// status: "running"|"stopped"|.., lock, template: bool, tags: [..], cpus, maxmem (bytes),
    /// maxdisk (bytes), uptime (s), mac, ip, ip_source, ip_seen_at (unix s), synced_at (unix s)}`.
    /// Fields the inventory has not seen are absent. Errors: `arg.vmid`.
    #[rhai_fn(return_raw)]
    pub fn guest(ctx: NativeCallContext, cluster: &str, vmid: i64) -> Result<Dynamic, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let id = check_vmid(vmid)?;
            let state = call_state(&ctx)?;
            match state.host.inventory_guest(cluster, id) {
                Some(v) => to_dyn(&v),
                None => Ok(Dynamic::UNIT),
            }
        })
    }

    /// Every inventory record of `cluster` (array of maps shaped as in `inventory::guest`);
    /// empty for an unknown cluster.
    #[rhai_fn(return_raw)]
    pub fn guests(ctx: NativeCallContext, cluster: &str) -> Result<rhai::Array, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let state = call_state(&ctx)?;
            state.host.inventory_guests(cluster).iter().map(to_dyn).collect()
        })
    }

    /// CPU samples the inventory recorded for a guest, oldest first: array of `#{t, cpu}` with
    /// `t` in unix seconds and `cpu` the fraction PVE reports (1.0 = one core busy).
    /// Empty if none. Errors: `arg.vmid`.
    #[rhai_fn(return_raw)]
    pub fn cpu_samples(
        ctx: NativeCallContext,
        cluster: &str,
        vmid: i64,
    ) -> Result<rhai::Array, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let id = check_vmid(vmid)?;
            let state = call_state(&ctx)?;
            Ok(state
                .host
                .cpu_samples(cluster, id)
                .into_iter()
                .map(|(t, cpu)| {
                    let mut m = rhai::Map::new();
                    m.insert("t".into(), Dynamic::from(i64::try_from(t).unwrap_or(i64::MAX)));
                    m.insert("cpu".into(), Dynamic::from(cpu));
                    Dynamic::from_map(m)
                })
                .collect())
        })
    }

    /// Ids of the configured clusters (array of strings).
    #[rhai_fn(return_raw)]
    pub fn clusters(ctx: NativeCallContext) -> Result<rhai::Array, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let state = call_state(&ctx)?;
            Ok(state.host.clusters().into_iter().map(Dynamic::from).collect())
        })
    }
}
