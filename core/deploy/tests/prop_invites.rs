#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property tests of invite tokens (issue 7, "bad input"), against a real deployer over a real sled
//! store (no cluster is needed: joining only reads and writes the store). A random, truncated,
//! extended or one-character-tampered token never opens a class, never joins, never panics and leaves
//! every assignment and waiting list as it was; a real token joins each user to exactly one free VM,
//! never two users to one VM, puts the rest on the waiting list, and stops working once revoked or
//! expired.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use deploy::{
    ClassVm, DeployConfig, DeployError, Deployer, InviteTtl, JoinOutcome, NodeOps, StaticHost, VmRole,
};
use proptest::prelude::*;
use store::{AssignmentRecord, ClassRecord, Role, Store, UserRecord, vm_key};

const USERS: usize = 6;
const SEATS: u32 = 3;

struct Env {
    _rt: tokio::runtime::Runtime,
    deployer: Deployer,
    store: Store,
    offset: Arc<AtomicU64>,
    next: AtomicU64,
    _dir: tempfile::TempDir,
}

/// One deployer for the whole file: a fresh store with users `s0`..`s5`, no cluster client.
fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db")).unwrap();
        for i in 0..USERS {
            store
                .create_local_user(UserRecord {
                    name: format!("s{i}"),
                    display_name: format!("s{i}"),
                    role: Role::Student,
                    ..Default::default()
                })
                .unwrap();
        }
        let offset = Arc::new(AtomicU64::new(0));
        let off = offset.clone();
        let clock: deploy::Clock = Arc::new(move || 1_800_000_000 + off.load(Ordering::SeqCst));
        let host = StaticHost::with_clock(
            rt.handle().clone(),
            BTreeMap::new(),
            NodeOps::new(vec![]).unwrap(),
            clock,
        );
        let handle = rt.handle().clone();
        let set = Arc::new(
            script::ScriptRuntime::new(Arc::new(script::NullHost::new(handle)), script::Limits::default())
                .load_set(&script::SetSources::default())
                .unwrap(),
        );
        let deployer = Deployer::new(
            store.clone(),
            host,
            Arc::new(move || set.clone()),
            DeployConfig::default(),
        )
        .unwrap();
        Env {
            _rt: rt,
            deployer,
            store,
            offset,
            next: AtomicU64::new(0),
            _dir: dir,
        }
    })
}

/// A fresh class with `SEATS` free student VMs (records as a deployment leaves them).
fn class_with_free_seats(e: &Env) -> String {
    let n = e.next.fetch_add(1, Ordering::SeqCst);
    let id = format!("prop-{n}");
    e.store
        .classes
        .insert(
            &id,
            &ClassRecord {
                id: id.clone(),
                name: id.clone(),
                owner: "teach".into(),
                cluster: "lab".into(),
                pool_size: SEATS,
                state: "ready".into(),
                ..Default::default()
            },
        )
        .unwrap();
    let vms = e.store.db().open_tree("class_vms").unwrap();
    for slot in 0..SEATS {
        let vmid = 100_000 + (n as u32) * 10 + slot;
        let a = e
            .store
            .create_assignment(AssignmentRecord {
                cluster: "lab".into(),
                vmid,
                class_id: Some(id.clone()),
                ..Default::default()
            })
            .unwrap();
        let vm = ClassVm {
            cluster: "lab".into(),
            vmid,
            class_id: id.clone(),
            role: VmRole::Student,
            name: format!("{id}-{slot}"),
            node: "pve1".into(),
            slot: slot + 1,
            assignment_id: a.id,
            ..Default::default()
        };
        vms.insert(vm_key("lab", vmid), serde_json::to_vec(&vm).unwrap())
            .unwrap();
    }
    id
}

/// What must never change on a refused join: the class's assignments and its waiting list (the
/// properties run in parallel on one store, each on its own class).
fn snapshot(e: &Env, class: &str) -> (Vec<AssignmentRecord>, Vec<store::WaitingEntry>) {
    (
        e.store
            .assignments_all()
            .unwrap()
            .into_iter()
            .filter(|a| a.class_id.as_deref() == Some(class))
            .collect(),
        e.deployer.waiting_list(class).unwrap(),
    )
}

/// Tokens that are not the real one: arbitrary text, base64-looking strings of the right length,
/// and the real token changed by one character, truncated, extended, re-cased or padded.
fn not_the_token(real: String) -> impl Strategy<Value = String> {
    let r1 = real.clone();
    let r2 = real.clone();
    let r3 = real.clone();
    prop_oneof![
        ".{0,200}",
        "[A-Za-z0-9_-]{43}",
        (0..real.len(), any::<char>()).prop_map(move |(at, c)| {
            let mut s: Vec<char> = r1.chars().collect();
            s[at] = c;
            s.into_iter().collect::<String>()
        }),
        (0..real.len()).prop_map(move |n| r2[..n].to_string()),
        ".{1,4}".prop_map(move |tail| format!("{r3}{tail}")),
        Just(real.to_uppercase()),
        Just(format!(" {real}")),
        Just(format!("{real}=")),
        Just(real.repeat(4)),
    ]
    .prop_filter("must differ from the real token", move |t| *t != real)
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// One real invite for the refusal properties.
fn real_invite() -> &'static (String, String) {
    static INV: OnceLock<(String, String)> = OnceLock::new();
    INV.get_or_init(|| {
        let e = env();
        let class = class_with_free_seats(e);
        let inv = e
            .deployer
            .create_invite(&class, "teach", InviteTtl::Never, None)
            .unwrap();
        (class, inv.token.expose().to_string())
    })
}

proptest! {
    #![proptest_config(config(256))]

    /// A token that is not the real one (random, tampered, truncated, extended) is refused with
    /// `InviteInvalid` for both the join page and the join itself, and changes nothing stored.
    #[test]
    fn wrong_tokens_never_join(token in not_the_token(real_invite().1.clone()), user in 0..USERS) {
        let e = env();
        let (class, real) = real_invite();
        let before = snapshot(e, class);
        let user = format!("s{user}");
        prop_assert!(matches!(e.deployer.invite_class(&token), Err(DeployError::InviteInvalid)));
        prop_assert!(matches!(e.deployer.join(&token, &user), Err(DeployError::InviteInvalid)));
        prop_assert_eq!(snapshot(e, class), before);
        // The real token still opens its class.
        prop_assert_eq!(&e.deployer.invite_class(real).unwrap().id, class);
    }

}

proptest! {
    // Each case builds a class of its own in the shared store: fewer cases keep the file fast.
    #![proptest_config(config(64))]

    /// Any sequence of joins with the real token: each user gets exactly one VM (joining again is
    /// `AlreadyMember` with the same VM), no VM is given twice, and users past the seats are told the
    /// class is full with their waiting-list position. After revocation the token is refused and the
    /// seats stay as they were.
    #[test]
    fn real_tokens_join_each_user_once(order in prop::collection::vec(0..USERS, 1..12)) {
        let e = env();
        let class = class_with_free_seats(e);
        // `Never`: the expiry property moves the shared clock forward meanwhile.
        let inv = e.deployer.create_invite(&class, "teach", InviteTtl::Never, None).unwrap();
        prop_assert!(!format!("{inv:?}").contains(inv.token.expose()), "Debug shows the token");
        let token = inv.token.expose().to_string();
        let mut holder: BTreeMap<u32, String> = BTreeMap::new();
        let mut seat_of: BTreeMap<String, u32> = BTreeMap::new();
        let mut waiting: Vec<String> = Vec::new();
        for u in order {
            let user = format!("s{u}");
            match e.deployer.join(&token, &user) {
                Ok(JoinOutcome::Assigned { vm, assignment }) => {
                    prop_assert!(!seat_of.contains_key(&user), "{user} got a second VM");
                    prop_assert!(holder.insert(vm.vmid, user.clone()).is_none(), "VM {} given twice", vm.vmid);
                    prop_assert_eq!(&assignment.user, &user);
                    prop_assert_eq!(&vm.class_id, &class);
                    seat_of.insert(user.clone(), vm.vmid);
                    waiting.retain(|w| *w != user);
                }
                Ok(JoinOutcome::AlreadyMember { vm, .. }) => {
                    prop_assert_eq!(seat_of.get(&user), Some(&vm.vmid));
                }
                Err(DeployError::ClassFull { position, size, .. }) => {
                    prop_assert_eq!(holder.len(), SEATS as usize);
                    prop_assert_eq!(size, SEATS as usize);
                    if !waiting.contains(&user) {
                        waiting.push(user.clone());
                    }
                    prop_assert_eq!(Some(position), waiting.iter().position(|w| *w == user).map(|p| p + 1));
                }
                Err(other) => prop_assert!(false, "unexpected {other:?}"),
            }
        }
        let listed: Vec<String> = e.deployer.waiting_list(&class).unwrap().into_iter().map(|w| w.user).collect();
        prop_assert_eq!(listed, waiting);
        let users: BTreeSet<String> = e
            .store
            .assignments_all()
            .unwrap()
            .into_iter()
            .filter(|a| a.class_id.as_deref() == Some(class.as_str()) && !a.user.is_empty())
            .map(|a| a.user)
            .collect();
        prop_assert_eq!(users, seat_of.keys().cloned().collect::<BTreeSet<_>>());
        // Revoked: refused, nothing changes.
        e.deployer.revoke_invite(&class, &inv.record.id).unwrap();
        let before = snapshot(e, &class);
        prop_assert!(matches!(e.deployer.join(&token, "s5"), Err(DeployError::InviteInvalid)));
        prop_assert_eq!(snapshot(e, &class), before);
    }

    /// An invite with a lifetime works until it ends and is refused from then on, like an unknown one.
    #[test]
    fn expired_tokens_are_refused(ttl in 1u64..1_000_000, late in 0u64..1_000) {
        let e = env();
        let class = class_with_free_seats(e);
        let inv = e
            .deployer
            .create_invite(&class, "teach", InviteTtl::For(std::time::Duration::from_secs(ttl)), None)
            .unwrap();
        let token = inv.token.expose().to_string();
        prop_assert_eq!(e.deployer.invite_class(&token).unwrap().id, class.clone());
        e.offset.fetch_add(ttl + late, Ordering::SeqCst);
        let before = snapshot(e, &class);
        prop_assert!(matches!(e.deployer.invite_class(&token), Err(DeployError::InviteInvalid)));
        prop_assert!(matches!(e.deployer.join(&token, "s0"), Err(DeployError::InviteInvalid)));
        prop_assert_eq!(snapshot(e, &class), before);
    }
}
