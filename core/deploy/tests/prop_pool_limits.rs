#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property tests of the counts and lifetimes a teacher's request carries: adding VMs, resizing a
//! class and an invite's lifetime. Whatever the numbers (`u32::MAX`, sums that wrap, `u64::MAX`
//! seconds), nothing panics, the class never passes its limit, a refused request leaves the stored
//! class as it was, and an expiry is never more than a year away. Against a real deployer over a real
//! sled store (the limit checks come before any cluster work).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use deploy::{
    ClassUpdate, DeployConfig, DeployError, Deployer, InviteTtl, MAX_EXPIRY, MAX_POOL, NodeOps, PoolChange,
    StaticHost, expiry_after, pool_after_adding, pool_change,
};
use proptest::prelude::*;
use store::{ClassRecord, Store};

const NOW: u64 = 1_800_000_000;

struct Env {
    rt: tokio::runtime::Runtime,
    deployer: Deployer,
    store: Store,
    next: AtomicU64,
    _dir: tempfile::TempDir,
}

/// One deployer for the whole file (default limits: max_pool 500), no cluster client.
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
        let clock: deploy::Clock = Arc::new(|| NOW);
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
            rt,
            deployer,
            store,
            next: AtomicU64::new(0),
            _dir: dir,
        }
    })
}

/// A fresh class of `pool` student VMs that has no plan yet (so an accepted add stops at "not deployed
/// yet", after the limit check, without touching a cluster).
fn class_of(e: &Env, pool: u32) -> ClassRecord {
    let n = e.next.fetch_add(1, Ordering::SeqCst);
    let id = format!("pool-{n}");
    let rec = ClassRecord {
        id: id.clone(),
        name: id.clone(),
        owner: "teach".into(),
        cluster: "lab".into(),
        pool_size: pool,
        state: "ready".into(),
        ..Default::default()
    };
    e.store.classes.insert(&id, &rec).unwrap();
    rec
}

/// Counts near the edges as often as ordinary ones.
fn count() -> impl Strategy<Value = u32> {
    prop_oneof![
        0u32..=600,
        Just(u32::MAX),
        (u32::MAX - 600)..=u32::MAX,
        any::<u32>(),
    ]
}

fn limit() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..=MAX_POOL, Just(u32::MAX), any::<u32>()]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn adding_vms_never_overflows_and_never_passes_the_limit(pool in count(), n in count(), max in limit()) {
        match pool_after_adding(pool, n, max) {
            Ok(total) => {
                prop_assert!(n >= 1);
                prop_assert!(total <= max);
                prop_assert_eq!(u64::from(total), u64::from(pool) + u64::from(n));
            }
            Err(DeployError::Invalid(m)) => {
                prop_assert!(n == 0 || u64::from(pool) + u64::from(n) > u64::from(max), "{}", m);
                if n > max {
                    prop_assert_eq!(m, format!("count {n} is more than the class limit {max}"));
                }
            }
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    #[test]
    fn resizing_never_overflows_and_never_passes_the_limit(pool in count(), requested in count(), max in limit()) {
        match pool_change(pool, requested, max) {
            Ok(PoolChange::Add(n)) => {
                prop_assert!(requested <= max);
                prop_assert_eq!(u64::from(pool) + u64::from(n), u64::from(requested));
            }
            Ok(PoolChange::Remove(n)) => {
                prop_assert!(requested <= max);
                prop_assert_eq!(u64::from(pool), u64::from(requested) + u64::from(n));
            }
            Ok(PoolChange::Unchanged) => prop_assert_eq!(pool, requested),
            Err(DeployError::Invalid(m)) => {
                prop_assert!(requested > max);
                prop_assert_eq!(m, format!("pool size {requested} is more than the class limit {max}"));
            }
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    #[test]
    fn an_expiry_is_never_more_than_a_year_away_and_never_overflows(now in any::<u64>(), secs in prop_oneof![0u64..=40_000_000, Just(u64::MAX), any::<u64>()]) {
        match expiry_after(now, Duration::from_secs(secs), "expires_in_secs") {
            Ok(at) => {
                prop_assert!(at > now);
                prop_assert!(at - now <= MAX_EXPIRY.as_secs());
            }
            Err(DeployError::Invalid(_)) => {
                prop_assert!(secs > MAX_EXPIRY.as_secs() || now.checked_add(secs.max(1)).is_none());
            }
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    /// Through the deployer: add and resize with any numbers; a refused request changes nothing stored,
    /// and the stored pool never passes the limit.
    #[test]
    fn the_deployer_refuses_counts_past_the_limit_and_leaves_the_class_as_it_was(pool in 0u32..=500, n in count(), resize in count()) {
        let e = env();
        let before = class_of(e, pool);
        let max = e.deployer.max_pool();
        let add = e.rt.block_on(e.deployer.add_vms(&before.id, "teach", n));
        match add {
            Err(DeployError::Invalid(_)) => {
                prop_assert!(n == 0 || u64::from(pool) + u64::from(n) > u64::from(max));
            }
            // Within the limit: stops at the missing plan, before anything is stored.
            Err(DeployError::Conflict(m)) => {
                prop_assert!(u64::from(pool) + u64::from(n) <= u64::from(max), "{}", m);
            }
            other => prop_assert!(false, "unexpected {other:?}"),
        }
        prop_assert_eq!(&e.deployer.class(&before.id).unwrap(), &before);

        let update = ClassUpdate { name: Some("renamed".into()), pool_size: Some(resize), ..ClassUpdate::default() };
        let r = e.rt.block_on(e.deployer.modify_class(&before.id, "teach", update));
        let after = e.deployer.class(&before.id).unwrap();
        if resize > max {
            prop_assert!(matches!(r, Err(DeployError::Invalid(_))), "{r:?}");
            prop_assert_eq!(&after, &before, "a refused resize changes nothing stored, not even the name");
        }
        prop_assert!(after.pool_size <= max);
        prop_assert!(e.deployer.reservations(None).unwrap().is_empty());
    }

    #[test]
    fn an_invite_past_a_year_is_refused_and_stores_nothing(secs in prop_oneof![(MAX_EXPIRY.as_secs() + 1)..=u64::MAX, Just(u64::MAX)]) {
        let e = env();
        let before = class_of(e, 3);
        let r = e.deployer.create_invite(&before.id, "teach", InviteTtl::For(Duration::from_secs(secs)), None);
        prop_assert!(matches!(&r, Err(DeployError::Invalid(m)) if m.contains("more than one year")), "{r:?}");
        prop_assert_eq!(&e.deployer.class(&before.id).unwrap(), &before);
        prop_assert!(e.deployer.invites(&before.id).unwrap().is_empty());
    }
}
