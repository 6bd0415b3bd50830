//! Runs plugin hooks: `on_tick` on a timer, `on_vm_started` / `on_vm_stopped` from inventory changes.
//! Each run uses the script set current at that moment (hot reload swaps it between runs).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use script::{Hook, Reloader, ScriptRuntime, ScriptSet};
use serde_json::{Value, json};
use store::Store;
use sync::{Event, Inventory};

/// How often `on_tick` hooks are offered a run (each hook runs when its own interval has passed).
pub const TICK_EVERY: Duration = Duration::from_secs(15);

/// The classes with their VMs, as hooks receive them:
/// `[{id, name, vms: [{cluster, vmid, role, user}], plugins: {<plugin>: overrides}}]`.
pub fn classes_event(store: &Store) -> Value {
    let mut by_class: HashMap<String, Vec<Value>> = HashMap::new();
    for item in store.assignments.iter() {
        let Ok((_, a)) = item else { continue };
        if let Some(class) = &a.class_id {
            by_class.entry(class.clone()).or_default().push(json!({
                "cluster": a.cluster, "vmid": a.vmid, "user": a.user,
                "role": serde_json::to_value(a.role).unwrap_or(Value::Null),
            }));
        }
    }
    let mut classes = Vec::new();
    for item in store.classes.iter() {
        let Ok((_, c)) = item else { continue };
        let plugins = c.settings.get("plugins").cloned().unwrap_or_else(|| json!({}));
        classes.push(json!({
            "id": c.id, "name": c.name, "vms": by_class.remove(&c.id).unwrap_or_default(), "plugins": plugins,
        }));
    }
    Value::Array(classes)
}

fn class_of(store: &Store, cluster: &str, vmid: u32) -> Option<Value> {
    let classes = classes_event(store);
    classes
        .as_array()?
        .iter()
        .find(|c| {
            c["vms"]
                .as_array()
                .is_some_and(|vms| vms.iter().any(|v| v["cluster"] == cluster && v["vmid"] == vmid))
        })
        .cloned()
}

fn log_runs(runs: &[script::HookRun]) {
    for r in runs {
        match &r.result {
            Ok(v) => {
                tracing::info!(plugin = %r.plugin, hook = r.hook.fn_name(), result = %v, "plugin hook ran")
            }
            Err(e) => {
                tracing::warn!(plugin = %r.plugin, hook = r.hook.fn_name(), error = %e, "plugin hook failed")
            }
        }
    }
}

/// Starts the plugin loops; they run until the runtime stops.
pub fn spawn(
    rt: ScriptRuntime,
    scripts: Arc<Reloader<ScriptSet>>,
    inventory: Arc<Inventory>,
    store: Store,
) -> Vec<tokio::task::JoinHandle<()>> {
    let tick = {
        let (rt, scripts, store) = (rt.clone(), scripts.clone(), store.clone());
        tokio::spawn(async move {
            let mut timer = tokio::time::interval(TICK_EVERY);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                timer.tick().await;
                let set = scripts.current();
                if set.plugins().is_empty() {
                    continue;
                }
                let event = json!({"classes": classes_event(&store)});
                log_runs(&rt.tick(&set, event).await);
            }
        })
    };
    let transitions = tokio::spawn(async move {
        let mut rx = inventory.subscribe();
        let mut last: HashMap<(String, u32), String> = inventory
            .snapshot()
            .guests
            .values()
            .map(|g| ((g.cluster.clone(), g.vmid), g.status.clone()))
            .collect();
        loop {
            let ev = match rx.recv().await {
                Ok(ev) => ev,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            };
            let Event::Guest { guest } = ev else { continue };
            let key = (guest.cluster.clone(), guest.vmid);
            let before = last.insert(key, guest.status.clone());
            let hook = match (before.as_deref(), guest.status.as_str()) {
                (Some(b), "running") if b != "running" => Hook::OnVmStarted,
                (Some("running"), "stopped") => Hook::OnVmStopped,
                _ => continue,
            };
            let set = scripts.current();
            if set.plugins().is_empty() {
                continue;
            }
            let mut event = json!({"vm": serde_json::to_value(guest.as_ref()).unwrap_or(Value::Null)});
            if let Some(c) = class_of(&store, &guest.cluster, guest.vmid) {
                event["class"] = c;
            }
            log_runs(&rt.dispatch(&set, hook, event).await);
        }
    });
    vec![tick, transitions]
}
