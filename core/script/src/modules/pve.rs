//! `pve::` — the Proxmox VE API of a configured cluster, through the `pve` crate's client
//! (token auth, verified TLS, timeouts, typed errors). Reads run always; writes are recorded and,
//! in a dry run, not sent.

use std::time::Duration;

use pve::PveError;
use rhai::plugin::*;

use crate::engine::{CallState, throw};

/// The dotted error code a script sees for a [`PveError`] (`pve.locked`, `pve.not_found`, ...).
pub fn error_code(e: &PveError) -> &'static str {
    match e {
        PveError::Api { .. } => "pve.api",
        PveError::AgentUnavailable(_) => "pve.agent_unavailable",
        PveError::Locked { .. } => "pve.locked",
        PveError::LockTimeout(_) => "pve.lock_timeout",
        PveError::NotFound(_) => "pve.not_found",
        PveError::NoQuorum(_) => "pve.no_quorum",
        PveError::NodeUnreachable { .. } => "pve.node_unreachable",
        PveError::InvalidCredentials { .. } => "pve.invalid_credentials",
        PveError::AuthExpired => "pve.auth_expired",
        PveError::PermissionDenied(_) => "pve.permission_denied",
        PveError::MalformedResponse(_) => "pve.malformed_response",
        PveError::TaskFailed { .. } => "pve.task_failed",
        PveError::TaskTimeout { .. } => "pve.task_timeout",
        PveError::Timeout => "pve.timeout",
        PveError::Connect(_) => "pve.connect",
        PveError::Tls(_) => "pve.tls",
        PveError::Config(_) => "pve.config",
    }
}

pub(crate) fn pve_err(e: PveError) -> Box<EvalAltResult> {
    throw(error_code(&e), e.to_string())
}

/// The error a script sees for a failed VM operation: PVE's own codes where PVE's words fit
/// (`pve.not_found`, `pve.locked`, `pve.*`), `ops.busy` / `ops.not_applicable` / `ops.*` otherwise.
pub(crate) fn op_err(e: ops::OpError) -> Box<EvalAltResult> {
    use ops::OpError;
    match e {
        OpError::Pve(pe) => throw(error_code(&pe), pe.to_string()),
        OpError::NotFound(m) => throw("pve.not_found", m),
        e @ OpError::Locked { .. } => throw("pve.locked", e.to_string()),
        e @ OpError::Busy { .. } => throw("ops.busy", e.to_string()),
        e @ OpError::NotApplicable(_) => throw("ops.not_applicable", e.to_string()),
        e => throw(&format!("ops.{}", e.code()), e.to_string()),
    }
}

pub(crate) fn client(state: &CallState, cluster: &str) -> Result<pve::PveClient, Box<EvalAltResult>> {
    state.host.pve(cluster).ok_or_else(|| {
        throw(
            "pve.unknown_cluster",
            format!("no cluster {cluster:?} is configured"),
        )
    })
}

/// A PVE API path must be relative to `/api2/json`, start with `/` and hold no `..` or query.
pub(crate) fn check_path(path: &str) -> Result<(), Box<EvalAltResult>> {
    if !path.starts_with('/') || path.contains("..") || path.contains('?') || path.contains('#') {
        return Err(throw(
            "arg.path",
            format!("{path:?} is not an API path like \"/nodes/pve1/qemu/100/config\""),
        ));
    }
    Ok(())
}

/// Flattens a script map into form parameters: strings as they are, ints/floats in decimal,
/// bools as `1`/`0`; `()` values are dropped; arrays and maps are refused.
pub(crate) fn params_of(params: &rhai::Map) -> Result<Vec<(String, String)>, Box<EvalAltResult>> {
    let mut out = Vec::with_capacity(params.len());
    for (k, v) in params {
        let s = if v.is_unit() {
            continue;
        } else if let Ok(b) = v.as_bool() {
            if b { "1".to_string() } else { "0".to_string() }
        } else if v.is_string() || v.is_int() || v.is_float() || v.is_char() {
            v.to_string()
        } else {
            return Err(throw(
                "arg.params",
                format!(
                    "parameter {k} must be a string, number or bool, not {}",
                    v.type_name()
                ),
            ));
        };
        out.push((k.to_string(), s));
    }
    Ok(out)
}

fn describe(params: &[(String, String)]) -> String {
    params
        .iter()
        .map(|(k, v)| {
            // Never echo anything that looks like a secret into logs or the action record.
            let lk = k.to_ascii_lowercase();
            if lk.contains("password") || lk.contains("secret") || lk.contains("token") || lk == "sshkeys" {
                format!("{k}=***")
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The kind path segment, `qemu` or `lxc`.
pub(crate) fn kind_of(kind: &str) -> Result<pve::GuestKind, Box<EvalAltResult>> {
    kind.parse::<pve::GuestKind>().map_err(|e| throw("arg.kind", e))
}

#[derive(Clone, Copy)]
pub(crate) enum Method {
    Get,
    Post,
    Put,
    Delete,
}

/// Sends one request; writes are recorded and skipped in a dry run (returning `()`).
pub(crate) fn request(
    state: &CallState,
    cluster: &str,
    method: Method,
    path: &str,
    params: &[(String, String)],
) -> Result<Dynamic, Box<EvalAltResult>> {
    check_path(path)?;
    let name = match method {
        Method::Get => "GET",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
    };
    if !matches!(method, Method::Get) {
        state.record(
            format!("pve {cluster} {name} {path} {}", describe(params))
                .trim_end()
                .to_string(),
        );
        if state.dry_run {
            return Ok(Dynamic::UNIT);
        }
    }
    let c = client(state, cluster)?;
    let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let value: serde_json::Value = state
        .host_call(|| {
            state.host.runtime().block_on(async {
                match method {
                    Method::Get => c.get_value(path, &pairs).await,
                    Method::Post => c.post::<serde_json::Value>(path, &pairs).await,
                    Method::Put => c.put::<serde_json::Value>(path, &pairs).await,
                    Method::Delete => c.delete::<serde_json::Value>(path, &pairs).await,
                }
            })
        })
        .map_err(pve_err)?;
    crate::modules::to_dyn(&value)
}

/// Waits for a task; returns `"OK"` or `"WARNINGS: n"`.
pub(crate) fn wait(
    state: &CallState,
    cluster: &str,
    upid: &str,
    timeout: Duration,
) -> Result<String, Box<EvalAltResult>> {
    let upid: pve::Upid = upid.parse().map_err(|e: String| throw("arg.upid", e))?;
    let c = client(state, cluster)?;
    let outcome = state
        .host_call(|| state.host.runtime().block_on(c.wait_task(&upid, timeout)))
        .map_err(pve_err)?;
    Ok(match outcome {
        pve::TaskOutcome::Ok => "OK".to_string(),
        pve::TaskOutcome::Warnings(n) => format!("WARNINGS: {n}"),
    })
}

/// PVE API functions.
#[export_module]
pub mod pve_mod {
    use super::*;
    use crate::engine::call_state;
    use crate::modules::{check_vmid, to_dyn};

    /// `GET /cluster/resources?type=vm` of `cluster`: every guest in one request, as an array of
    /// `#{id: "qemu/100", vmid, type: "qemu"|"lxc", node, name, status, template: bool, tags: [..],
    /// cpu (fraction), maxcpu, mem, maxmem, disk, maxdisk (bytes), uptime (s), lock, pool}`.
    /// Errors: `pve.unknown_cluster`, `pve.*` (see `pve::` error codes in API.md).
    #[rhai_fn(return_raw)]
    pub fn resources(ctx: NativeCallContext, cluster: &str) -> Result<rhai::Array, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let state = call_state(&ctx)?;
            let c = client(&state, cluster)?;
            let rows = state
                .host_call(|| state.host.runtime().block_on(c.cluster_resources()))
                .map_err(pve_err)?;
            rows.iter().map(to_dyn).collect()
        })
    }

    /// `GET {path}` (relative to `/api2/json`, e.g. `"/nodes/pve1/qemu/100/config"`) on `cluster`.
    /// Returns PVE's `data` member converted to Rhai (map, array, string, number or `()`).
    /// Errors: `arg.path`, `pve.unknown_cluster`, `pve.*`.
    #[rhai_fn(name = "get", return_raw)]
    pub fn get2(ctx: NativeCallContext, cluster: &str, path: &str) -> Result<Dynamic, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let state = call_state(&ctx)?;
            request(&state, cluster, Method::Get, path, &[])
        })
    }

    /// `GET {path}` with query parameters from the map `params` (strings, numbers, bools as 1/0).
    /// Returns PVE's `data`. Errors: `arg.path`, `arg.params`, `pve.unknown_cluster`, `pve.*`.
    #[rhai_fn(name = "get", return_raw)]
    pub fn get3(
        ctx: NativeCallContext,
        cluster: &str,
        path: &str,
        params: rhai::Map,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let state = call_state(&ctx)?;
            request(&state, cluster, Method::Get, path, &params_of(&params)?)
        })
    }

    /// `POST {path}` with form parameters from `params`. Returns PVE's `data` (for a task: the
    /// UPID string; wait on it with `pve::wait_task`). A write: recorded, and in a dry run not
    /// sent (returns `()`). Errors: `arg.path`, `arg.params`, `pve.unknown_cluster`, `pve.*`.
    #[rhai_fn(return_raw)]
    pub fn post(
        ctx: NativeCallContext,
        cluster: &str,
        path: &str,
        params: rhai::Map,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let state = call_state(&ctx)?;
            request(&state, cluster, Method::Post, path, &params_of(&params)?)
        })
    }

    /// `PUT {path}` with form parameters from `params`. Returns PVE's `data`. A write (recorded;
    /// not sent in a dry run). Errors: `arg.path`, `arg.params`, `pve.unknown_cluster`, `pve.*`.
    #[rhai_fn(return_raw)]
    pub fn put(
        ctx: NativeCallContext,
        cluster: &str,
        path: &str,
        params: rhai::Map,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let state = call_state(&ctx)?;
            request(&state, cluster, Method::Put, path, &params_of(&params)?)
        })
    }

    /// `DELETE {path}` with parameters from `params` (e.g. `#{purge: true}`). Returns PVE's `data`
    /// (a UPID for guest deletion). A write (recorded; not sent in a dry run).
    /// Errors: `arg.path`, `arg.params`, `pve.unknown_cluster`, `pve.*`.
    #[rhai_fn(return_raw)]
    pub fn delete(
        ctx: NativeCallContext,
        cluster: &str,
        path: &str,
        params: rhai::Map,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let state = call_state(&ctx)?;
            request(&state, cluster, Method::Delete, path, &params_of(&params)?)
        })
    }

    /// Current status of a guest: `GET /nodes/{node}/{kind}/{vmid}/status/current`, `kind` is
    /// `"qemu"` or `"lxc"`. Returns `#{status: "running"|"stopped"|.., qmpstatus, lock, cpu,
    /// cpus, mem, maxmem (bytes), uptime (s), agent, name, ...}` as PVE answers.
    /// Errors: `arg.kind`, `arg.vmid`, `pve.not_found`, `pve.*`.
    #[rhai_fn(return_raw)]
    pub fn guest_status(
        ctx: NativeCallContext,
        cluster: &str,
        node: &str,
        kind: &str,
        vmid: i64,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let k = kind_of(kind)?;
            let id = check_vmid(vmid)?;
            let state = call_state(&ctx)?;
            request(
                &state,
                cluster,
                Method::Get,
                &format!("/nodes/{node}/{}/{id}/status/current", k.as_str()),
                &[],
            )
        })
    }

    /// Configuration of a guest: `GET /nodes/{node}/{kind}/{vmid}/config`. Returns the config map
    /// as PVE answers (`name`, `cores`, `memory` (MiB), `net0` = `"virtio=AA:BB:..,bridge=vmbr0"`,
    /// `scsi0` = `"local:100/vm-100-disk-0.qcow2,size=32G"`, `agent`, `tags`, `template`, ...).
    /// Errors: `arg.kind`, `arg.vmid`, `pve.not_found`, `pve.*`.
    #[rhai_fn(return_raw)]
    pub fn guest_config(
        ctx: NativeCallContext,
        cluster: &str,
        node: &str,
        kind: &str,
        vmid: i64,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let k = kind_of(kind)?;
            let id = check_vmid(vmid)?;
            let state = call_state(&ctx)?;
            request(
                &state,
                cluster,
                Method::Get,
                &format!("/nodes/{node}/{}/{id}/config", k.as_str()),
                &[],
            )
        })
    }

    /// Network interfaces reported by the QEMU guest agent:
    /// `GET /nodes/{node}/qemu/{vmid}/agent/network-get-interfaces`. Returns an array of
    /// `#{name, "hardware-address": "aa:bb:..", "ip-addresses": [#{"ip-address", "ip-address-type":
    /// "ipv4"|"ipv6", prefix}]}` (PVE's field names). Errors: `pve.agent_unavailable` (agent not
    /// running/configured; catch it and try the next tier), `pve.*`.
    #[rhai_fn(return_raw)]
    pub fn agent_interfaces(
        ctx: NativeCallContext,
        cluster: &str,
        node: &str,
        vmid: i64,
    ) -> Result<rhai::Array, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let id = check_vmid(vmid)?;
            let state = call_state(&ctx)?;
            let c = client(&state, cluster)?;
            let rows = state
                .host_call(|| {
                    state
                        .host
                        .runtime()
                        .block_on(c.agent_network_interfaces(node, id))
                })
                .map_err(pve_err)?;
            rows.iter().map(to_dyn).collect()
        })
    }

    /// Interfaces of a running container: `GET /nodes/{node}/lxc/{vmid}/interfaces`. Returns an
    /// array of `#{name, hwaddr, inet: "10.0.0.5/24", inet6, ...}`. Errors: `arg.vmid`, `pve.*`.
    #[rhai_fn(return_raw)]
    pub fn lxc_interfaces(
        ctx: NativeCallContext,
        cluster: &str,
        node: &str,
        vmid: i64,
    ) -> Result<rhai::Array, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let id = check_vmid(vmid)?;
            let state = call_state(&ctx)?;
            let c = client(&state, cluster)?;
            let rows = state
                .host_call(|| state.host.runtime().block_on(c.lxc_interfaces(node, id)))
                .map_err(pve_err)?;
            rows.iter().map(to_dyn).collect()
        })
    }

    /// Power action on a guest, through Proxlab's VM operations (the same path as the portal's
    /// buttons: one operation at a time per VM, bounded per cluster, locked guests and templates
    /// refused, Stop always allowed): `POST /nodes/{node}/{kind}/{vmid}/status/{action}` with `action`
    /// one of `start`, `stop`, `shutdown`, `reboot`, `suspend`, `resume`. Returns the task's UPID
    /// (string) as soon as PVE accepted it — wait on it with `pve::wait_task` — or `()` in a dry run or
    /// when the guest already is in that state. A write. Errors: `arg.kind`, `arg.action`, `arg.vmid`,
    /// `pve.unknown_cluster`, `pve.not_found`, `pve.locked`, `ops.busy`, `ops.not_applicable`, `pve.*`.
    #[rhai_fn(return_raw)]
    pub fn power(
        ctx: NativeCallContext,
        cluster: &str,
        node: &str,
        kind: &str,
        vmid: i64,
        action: &str,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let k = kind_of(kind)?;
            let id = check_vmid(vmid)?;
            let Ok(pa) = action.parse::<pve::PowerAction>() else {
                return Err(throw("arg.action", format!("unknown power action {action:?}")));
            };
            let state = call_state(&ctx)?;
            check_path(&format!("/nodes/{node}/{}/{id}/status/{action}", k.as_str()))?;
            state.record(format!(
                "pve {cluster} POST /nodes/{node}/{}/{id}/status/{action}",
                k.as_str()
            ));
            if state.dry_run {
                return Ok(Dynamic::UNIT);
            }
            client(&state, cluster)?;
            let ops = state
                .host
                .ops()
                .ok_or_else(|| throw("pve.power_unavailable", "this host performs no VM operations"))?;
            let upid = state
                .host_call(|| state.host.runtime().block_on(ops.power_started(cluster, id, pa)))
                .map_err(op_err)?;
            Ok(upid.map(Dynamic::from).unwrap_or(Dynamic::UNIT))
        })
    }

    /// Waits until the task `upid` (as returned by a write) ends, polling
    /// `/nodes/{node}/tasks/{upid}/status`, for at most `timeout_s` seconds (1..=86400).
    /// Returns `"OK"` or `"WARNINGS: n"`. In a dry run (or for `()`) returns `"OK"` at once.
    /// Errors: `arg.upid`, `arg.timeout`, `pve.task_failed` (message has PVE's exitstatus),
    /// `pve.task_timeout`, `pve.*`.
    #[rhai_fn(return_raw)]
    pub fn wait_task(
        ctx: NativeCallContext,
        cluster: &str,
        upid: Dynamic,
        timeout_s: i64,
    ) -> Result<String, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let state = call_state(&ctx)?;
            if upid.is_unit() && state.dry_run {
                return Ok("OK".to_string());
            }
            let secs = u64::try_from(timeout_s)
                .ok()
                .filter(|s| (1..=86_400).contains(s))
                .ok_or_else(|| throw("arg.timeout", "timeout_s must be 1..=86400"))?;
            let upid = upid
                .into_string()
                .map_err(|t| throw("arg.upid", format!("UPID must be a string, not {t}")))?;
            wait(&state, cluster, &upid, Duration::from_secs(secs))
        })
    }

    /// Clones guest `vmid` (usually a template) on `node` to `newid`:
    /// `POST /nodes/{node}/qemu/{vmid}/clone` with `newid` plus `params` (`name`, `full`: false for
    /// a linked clone, `target` node, `storage`, `pool`, `description`). Returns the UPID (`()` in
    /// a dry run). A write. Errors: `arg.vmid`, `arg.params`, `pve.locked`, `pve.lock_timeout`, `pve.*`.
    #[rhai_fn(name = "clone", return_raw)]
    pub fn clone_guest(
        ctx: NativeCallContext,
        cluster: &str,
        node: &str,
        vmid: i64,
        newid: i64,
        params: rhai::Map,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let id = check_vmid(vmid)?;
            let new = check_vmid(newid)?;
            let mut p = vec![("newid".to_string(), new.to_string())];
            p.extend(params_of(&params)?.into_iter().filter(|(k, _)| k != "newid"));
            let state = call_state(&ctx)?;
            request(
                &state,
                cluster,
                Method::Post,
                &format!("/nodes/{node}/qemu/{id}/clone"),
                &p,
            )
        })
    }

    /// Creates a QEMU VM: `POST /nodes/{node}/qemu` with `params` (must hold `vmid`; e.g. `name`,
    /// `cores`, `memory` (MiB), `scsi0` = `"local:201/vm-201-disk-0.qcow2"`, `net0`, `boot`,
    /// `ostype`, `agent`, `tags`, `pool`). Returns the UPID (`()` in a dry run). A write.
    /// Errors: `arg.params` (no vmid), `pve.*` (e.g. `pve.api` "VM 201 already exists").
    #[rhai_fn(return_raw)]
    pub fn create_vm(
        ctx: NativeCallContext,
        cluster: &str,
        node: &str,
        params: rhai::Map,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let p = params_of(&params)?;
            if !p.iter().any(|(k, _)| k == "vmid") {
                return Err(throw("arg.params", "create_vm needs a vmid parameter"));
            }
            let state = call_state(&ctx)?;
            request(&state, cluster, Method::Post, &format!("/nodes/{node}/qemu"), &p)
        })
    }

    /// Changes a guest's configuration: `POST /nodes/{node}/qemu/{vmid}/config` (async, returns a
    /// UPID) for `"qemu"`, `PUT /nodes/{node}/lxc/{vmid}/config` (returns `()`) for `"lxc"`.
    /// `params` holds the keys to set (and `delete: "key1,key2"` to remove). A write.
    /// Errors: `arg.kind`, `arg.vmid`, `arg.params`, `pve.locked`, `pve.*`.
    #[rhai_fn(return_raw)]
    pub fn set_config(
        ctx: NativeCallContext,
        cluster: &str,
        node: &str,
        kind: &str,
        vmid: i64,
        params: rhai::Map,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let k = kind_of(kind)?;
            let id = check_vmid(vmid)?;
            let p = params_of(&params)?;
            let state = call_state(&ctx)?;
            let path = format!("/nodes/{node}/{}/{id}/config", k.as_str());
            let method = if k == pve::GuestKind::Qemu {
                Method::Post
            } else {
                Method::Put
            };
            request(&state, cluster, method, &path, &p)
        })
    }

    /// Takes a snapshot `name` of a guest: `POST /nodes/{node}/{kind}/{vmid}/snapshot` with
    /// `snapname`. Returns the UPID (`()` in a dry run). A write.
    /// Errors: `arg.kind`, `arg.vmid`, `pve.locked`, `pve.*`.
    #[rhai_fn(return_raw)]
    pub fn snapshot(
        ctx: NativeCallContext,
        cluster: &str,
        node: &str,
        kind: &str,
        vmid: i64,
        name: &str,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let k = kind_of(kind)?;
            let id = check_vmid(vmid)?;
            let state = call_state(&ctx)?;
            let p = vec![("snapname".to_string(), name.to_string())];
            request(
                &state,
                cluster,
                Method::Post,
                &format!("/nodes/{node}/{}/{id}/snapshot", k.as_str()),
                &p,
            )
        })
    }

    /// Rolls a guest back to snapshot `name`:
    /// `POST /nodes/{node}/{kind}/{vmid}/snapshot/{name}/rollback`. Returns the UPID (`()` in a
    /// dry run). A write. Errors: `arg.kind`, `arg.vmid`, `pve.not_found`, `pve.locked`, `pve.*`.
    #[rhai_fn(return_raw)]
    pub fn rollback(
        ctx: NativeCallContext,
        cluster: &str,
        node: &str,
        kind: &str,
        vmid: i64,
        name: &str,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        crate::engine::located(&ctx, || {
            let k = kind_of(kind)?;
            let id = check_vmid(vmid)?;
            let state = call_state(&ctx)?;
            request(
                &state,
                cluster,
                Method::Post,
                &format!("/nodes/{node}/{}/{id}/snapshot/{name}/rollback", k.as_str()),
                &[],
            )
        })
    }
}
