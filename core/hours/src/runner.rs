//! The one task that owns the wheel, the quota timers and the usage accounts.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use pve::PowerAction;
use schedule::{Action, Compiled, Due, Mark, Wheel, runs_out_at};
use store::{AssignmentRole, HoursMarkRecord, Store, StoreError, usage_key};
use sync::{Event, Inventory};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use crate::{
    ClassHours, Clock, Cmd, HoursEvent, NoticeReason, class_assignments, is_hours_vm, record_of, usage_of,
};

/// The longest the task sleeps without reading the clock again (a wall clock that jumped).
const MAX_SLEEP_SECS: i64 = 3600;

type VmKey = (String, u32);

/// A student VM whose quota timers are queued.
#[derive(Clone, Debug)]
struct QuotaTimer {
    class: String,
    user: String,
    vm: VmKey,
    minutes_left: u32,
    generation: u64,
}

pub(crate) struct Runner {
    store: Store,
    ops: ops::Ops,
    inventory: Arc<Inventory>,
    clock: Clock,
    events: broadcast::Sender<HoursEvent>,
    rx: mpsc::UnboundedReceiver<Cmd>,
    inv_events: broadcast::Receiver<Event>,
    wheel: Wheel,
    /// Compiled settings of every class with class hours.
    classes: HashMap<String, (ClassHours, Arc<Compiled>)>,
    /// The last action of each class still in flight (its next waits for it).
    in_flight: HashMap<String, JoinHandle<()>>,
    /// Quota shutdowns in flight.
    shutdowns: Vec<JoinHandle<()>>,
    /// Known power state (running or not) of guests seen.
    running: HashMap<VmKey, bool>,
    quota_queue: BTreeMap<(i64, u64), QuotaTimer>,
    quota_seq: u64,
    /// Current generation of each VM's quota timers; older ones are dropped when they come up.
    quota_gen: HashMap<VmKey, u64>,
}

pub(crate) async fn run(mut r: Runner) {
    r.load_all().await;
    loop {
        let now = (r.clock)();
        for due in r.wheel.pop_due(now) {
            r.perform(due);
        }
        r.quota_due(now).await;
        let wake = [r.wheel.next_wake(), r.quota_queue.keys().next().map(|k| k.0)]
            .into_iter()
            .flatten()
            .min();
        let secs = wake.map_or(MAX_SLEEP_SECS, |w| (w - now).clamp(0, MAX_SLEEP_SECS));
        if secs == 0 {
            continue;
        }
        let sleep = tokio::time::sleep(Duration::from_secs(u64::try_from(secs).unwrap_or(0)));
        tokio::select! {
            biased;
            ev = r.inv_events.recv() => r.inventory_event(ev).await,
            cmd = r.rx.recv() => match cmd {
                None | Some(Cmd::Stop) => break,
                Some(cmd) => r.command(cmd).await,
            },
            () = sleep => {}
        }
    }
    r.settle().await;
}

fn is_running(g: &store::GuestRecord) -> bool {
    g.status == "running"
}

impl Runner {
    pub(crate) fn new(
        store: Store,
        ops: ops::Ops,
        inventory: Arc<Inventory>,
        clock: Clock,
        events: broadcast::Sender<HoursEvent>,
        rx: mpsc::UnboundedReceiver<Cmd>,
        inv_events: broadcast::Receiver<Event>,
    ) -> Runner {
        Runner {
            store,
            ops,
            inventory,
            clock,
            events,
            rx,
            inv_events,
            wheel: Wheel::default(),
            classes: HashMap::new(),
            in_flight: HashMap::new(),
            shutdowns: Vec::new(),
            running: HashMap::new(),
            quota_queue: BTreeMap::new(),
            quota_seq: 0,
            quota_gen: HashMap::new(),
        }
    }

    async fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Class(class) => self.load_class(&class).await,
            Cmd::Nudge | Cmd::Stop => {}
            Cmd::Settle(tx) => {
                let now = (self.clock)();
                for due in self.wheel.pop_due(now) {
                    self.perform(due);
                }
                self.quota_due(now).await;
                self.settle().await;
                let _ = tx.send(());
            }
        }
    }

    /// Waits for every action in flight, then handles the inventory events they published.
    async fn settle(&mut self) {
        loop {
            let handles: Vec<_> = self
                .in_flight
                .drain()
                .map(|(_, h)| h)
                .chain(self.shutdowns.drain(..))
                .collect();
            if handles.is_empty() {
                break;
            }
            for h in handles {
                let _ = h.await;
            }
            self.drain_events().await;
        }
        self.drain_events().await;
    }

    async fn drain_events(&mut self) {
        loop {
            match self.inv_events.try_recv() {
                Ok(ev) => self.inventory_event(Ok(ev)).await,
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    self.inventory_event(Err(broadcast::error::RecvError::Lagged(n)))
                        .await;
                }
                Err(_) => break,
            }
        }
    }

    /// Every class's settings and mark onto the wheel, then the usage reconciled with the inventory.
    async fn load_all(&mut self) {
        let classes: Vec<String> = match self.store.class_hours.iter().map(|r| r.map(|(k, _)| k)).collect() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the class hours settings; class hours are off");
                return;
            }
        };
        for class in classes {
            self.load_class(&class).await;
        }
    }

    /// (Re)puts `class` on the wheel from the store, performs what it missed, and reconciles the
    /// usage of its student VMs.
    async fn load_class(&mut self, class: &str) {
        let settings = match self.store.class_hours.get(class) {
            Ok(Some(r)) => ClassHours::from_record(class, &r).map_err(|e| e.to_string()),
            Ok(None) => Err(String::new()),
            Err(e) => Err(e.to_string()),
        };
        let compiled = settings.and_then(|s| match s.timetable.compile() {
            Ok(tt) => Ok((s, tt)),
            Err(e) => Err(e.to_string()),
        });
        let (settings, tt) = match compiled {
            Ok(v) => v,
            Err(why) => {
                if !why.is_empty() {
                    tracing::error!(class, error = %why, "class hours settings unusable; the class has no class hours");
                }
                self.wheel.remove_class(class);
                self.classes.remove(class);
                return;
            }
        };
        let mark = match self.store.hours_marks.get(class) {
            Ok(Some(m)) => mark_of(&m),
            Ok(None) => Mark::default(),
            Err(e) => {
                tracing::error!(class, error = %e, "cannot read the class's mark; taking it as nothing done");
                Mark::default()
            }
        };
        let now = (self.clock)();
        let tt = Arc::new(tt);
        self.classes.insert(class.to_string(), (settings, tt.clone()));
        for due in self.wheel.set_class(class, Compiled::clone(&tt), mark, now) {
            self.perform(due);
        }
        self.reconcile_class(class, now).await;
    }

    /// The usage of `class`'s student VMs against what the inventory shows now, and their quota
    /// timers.
    async fn reconcile_class(&mut self, class: &str, now: i64) {
        let assignments = match class_assignments(&self.store, class) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(class, error = %e, "cannot list the class's VMs");
                return;
            }
        };
        let snap = self.inventory.snapshot();
        for a in assignments {
            if a.role != AssignmentRole::Student || a.user.is_empty() {
                continue;
            }
            let Some(g) = snap.guest(&a.cluster, a.vmid) else {
                continue;
            };
            let running = is_running(g);
            self.running.insert((a.cluster.clone(), a.vmid), running);
            self.transition(class, &a.user, (a.cluster.clone(), a.vmid), running, now)
                .await;
        }
    }

    async fn inventory_event(&mut self, ev: Result<Event, broadcast::error::RecvError>) {
        let guest = match ev {
            Ok(Event::Guest { guest }) => guest,
            Ok(_) | Err(broadcast::error::RecvError::Closed) => return,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "class hours missed inventory events; reconciling every class"
                );
                let now = (self.clock)();
                let classes: Vec<String> = self.classes.keys().cloned().collect();
                for c in classes {
                    self.reconcile_class(&c, now).await;
                }
                return;
            }
        };
        let key = (guest.cluster.clone(), guest.vmid);
        let running = is_running(&guest);
        if self.running.insert(key.clone(), running) == Some(running) {
            return;
        }
        // A transition (or a guest seen for the first time): is it a student VM of a class with hours?
        let found = self.store.assignments.iter().find_map(|item| match item {
            Ok((_, a))
                if a.cluster == key.0
                    && a.vmid == key.1
                    && a.role == AssignmentRole::Student
                    && !a.user.is_empty() =>
            {
                a.class_id.clone().map(|c| (c, a.user))
            }
            _ => None,
        });
        let Some((class, user)) = found else { return };
        if !self.classes.contains_key(&class) {
            return;
        }
        let now = (self.clock)();
        self.transition(&class, &user, key, running, now).await;
    }

    /// Records a start or stop of `user`'s VM at `now` (written and flushed at once) and (re)queues or
    /// cancels its quota timers.
    async fn transition(&mut self, class: &str, user: &str, vm: VmKey, running: bool, now: i64) {
        let Some((settings, tt)) = self.classes.get(class).cloned() else {
            return;
        };
        let key = usage_key(class, user);
        let tt2 = tt.clone();
        let updated = self.store.usage.update(&key, |old| {
            let mut u = old.map(usage_of).unwrap_or_default();
            if running {
                u.started(now);
            } else {
                u.stopped(now, Some(&tt2));
            }
            Ok(Some(record_of(&u)))
        });
        match updated {
            Ok(_) => {
                let store = self.store.clone();
                match tokio::task::spawn_blocking(move || store.flush_covering()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(class, user, error = %e, "cannot flush the usage"),
                    Err(e) => tracing::error!(class, user, error = %e, "cannot flush the usage"),
                }
            }
            Err(e) => tracing::error!(class, user, error = %e, "cannot record the usage"),
        }
        let generation = self.quota_gen.entry(vm.clone()).or_default();
        *generation += 1;
        let generation = *generation;
        if !running {
            return;
        }
        let Some(quota) = settings.quota(user) else {
            return;
        };
        let usage = match self.store.usage.get(&key) {
            Ok(u) => u.map(usage_of).unwrap_or_default(),
            Err(_) => return,
        };
        let remaining = quota.remaining(&usage, now, Some(&tt));
        let out = runs_out_at(remaining, now, Some(&tt));
        for (before, minutes_left) in [(600, 10), (120, 2), (0, 0)] {
            let at = out - before;
            if at > now || minutes_left == 0 {
                self.quota_seq += 1;
                self.quota_queue.insert(
                    (at.max(now), self.quota_seq),
                    QuotaTimer {
                        class: class.to_string(),
                        user: user.to_string(),
                        vm: vm.clone(),
                        minutes_left,
                        generation,
                    },
                );
            }
        }
    }

    /// The quota timers due at `now`: notices, and the graceful shutdown of a VM whose quota is used
    /// up (checked again against the settings of now).
    async fn quota_due(&mut self, now: i64) {
        while let Some(entry) = self.quota_queue.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let t = entry.remove();
            if self.quota_gen.get(&t.vm) != Some(&t.generation) {
                continue; // the VM stopped or was re-planned since
            }
            let Some((settings, tt)) = self.classes.get(&t.class).cloned() else {
                continue;
            };
            let Some(quota) = settings.quota(&t.user) else {
                continue;
            };
            let usage = self
                .store
                .usage
                .get(&usage_key(&t.class, &t.user))
                .ok()
                .flatten()
                .map(usage_of)
                .unwrap_or_default();
            let remaining = quota.remaining(&usage, now, Some(&tt));
            let name = self.class_name(&t.class);
            if t.minutes_left > 0 {
                let _ = self.events.send(HoursEvent {
                    class: t.class.clone(),
                    user: Some(t.user.clone()),
                    reason: NoticeReason::QuotaRunsOut,
                    minutes_left: t.minutes_left,
                    message: format!(
                        "Your hours for {name} run out in {} minutes; your VM will then be shut down",
                        t.minutes_left
                    ),
                });
                continue;
            }
            if remaining > 0 {
                // More time was granted meanwhile: plan again from now.
                let user = t.user.clone();
                let class = t.class.clone();
                self.transition(&class, &user, t.vm.clone(), true, now).await;
                continue;
            }
            let _ = self.events.send(HoursEvent {
                class: t.class.clone(),
                user: Some(t.user.clone()),
                reason: NoticeReason::QuotaRunsOut,
                minutes_left: 0,
                message: format!(
                    "You have used your {} for {name}; your VM is being shut down",
                    schedule::duration_text(quota.secs())
                ),
            });
            let ops = self.ops.clone();
            let (cluster, vmid) = t.vm.clone();
            tracing::info!(class = %t.class, user = %t.user, cluster = %cluster, vmid, "quota used up: shutting the VM down");
            self.shutdowns.push(tokio::spawn(async move {
                if let Err(e) = ops.power(&cluster, vmid, PowerAction::Shutdown).await {
                    tracing::warn!(cluster = %cluster, vmid, error = %e, "quota shutdown failed");
                }
            }));
        }
    }

    fn class_name(&self, class: &str) -> String {
        self.store
            .classes
            .get(class)
            .ok()
            .flatten()
            .map_or_else(|| class.to_string(), |c| c.name)
    }

    /// Starts `due` after the class's previous action; its mark is persisted when it is done.
    fn perform(&mut self, due: Due) {
        let class = due.class.to_string();
        let prev = if due.action == Action::Stop {
            None // Stop always runs, also while a shutdown is still going on
        } else {
            self.in_flight.remove(&class)
        };
        let store = self.store.clone();
        let ops = self.ops.clone();
        let inventory = self.inventory.clone();
        let events = self.events.clone();
        let name = self.class_name(&class);
        let handle = tokio::spawn(async move {
            if let Some(p) = prev {
                let _ = p.await;
            }
            act(&store, &ops, &inventory, &events, &name, &due).await;
            if let Err(e) = save_mark(&store, &due.class, due.mark()).await {
                tracing::error!(class = %due.class, error = %e, "cannot persist the class's mark");
            }
        });
        if let Some(old) = self.in_flight.insert(class, handle) {
            // A Stop that did not wait: keep the one it replaced awaited by settle.
            self.shutdowns.push(old);
        }
    }
}

fn mark_of(m: &HoursMarkRecord) -> Mark {
    serde_json::to_value(m)
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

fn mark_record(m: Mark) -> HoursMarkRecord {
    serde_json::to_value(m)
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

/// Persists `mark` unless the stored one is later (a Stop done while its shutdown still ran), and
/// flushes it.
async fn save_mark(store: &Store, class: &str, mark: Mark) -> Result<(), StoreError> {
    store.hours_marks.update(class, |old| {
        let keep = old
            .as_ref()
            .map(mark_of)
            .is_some_and(|o| o.action.is_some() && (o.at, o.action) > (mark.at, mark.action));
        Ok(Some(if keep {
            old.unwrap_or_default()
        } else {
            mark_record(mark)
        }))
    })?;
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.flush_covering())
        .await
        .map_err(|e| StoreError::Io(e.to_string()))?
}

/// Performs one action on the class's VMs.
async fn act(
    store: &Store,
    ops: &ops::Ops,
    inventory: &Inventory,
    events: &broadcast::Sender<HoursEvent>,
    name: &str,
    due: &Due,
) {
    let (power, want_running, minutes) = match due.action {
        Action::WarmUp => (PowerAction::Start, false, 0),
        Action::Shutdown => (PowerAction::Shutdown, true, 0),
        Action::Stop => (PowerAction::Stop, true, 0),
        Action::WarnTen => (PowerAction::Start, false, 10),
        Action::WarnTwo => (PowerAction::Start, false, 2),
    };
    if minutes > 0 {
        let _ = events.send(HoursEvent {
            class: due.class.to_string(),
            user: None,
            reason: NoticeReason::SessionEnds,
            minutes_left: minutes,
            message: format!(
                "The session of {name} ends in {minutes} minutes; save your work, the VMs will be shut down"
            ),
        });
        return;
    }
    let vms = match class_assignments(store, &due.class) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(class = %due.class, error = %e, "cannot list the class's VMs");
            return;
        }
    };
    let snap = inventory.snapshot();
    let todo: Vec<(String, u32)> = vms
        .into_iter()
        .filter(is_hours_vm)
        .filter(|a| {
            snap.guest(&a.cluster, a.vmid)
                .is_some_and(|g| is_running(g) == want_running && !g.template)
        })
        .map(|a| (a.cluster, a.vmid))
        .collect();
    tracing::info!(class = %due.class, action = due.action.label(), vms = todo.len(), "class hours");
    let results = futures::future::join_all(
        todo.iter()
            .map(|(cluster, vmid)| ops.power(cluster, *vmid, power)),
    )
    .await;
    for ((cluster, vmid), r) in todo.iter().zip(results) {
        if let Err(e) = r {
            tracing::warn!(class = %due.class, cluster = %cluster, vmid, action = due.action.label(), error = %e, "class hours action failed");
        }
    }
}
