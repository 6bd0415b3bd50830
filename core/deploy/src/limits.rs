//! Concurrency limits of VM work: per node, per storage and in all (so parallel clones do not hit PVE lock
//! timeouts), and the retry backoff with jitter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::DeployLimits;

/// Semaphores shared by every job of the deployer, so two classes deploying at once share the limits.
pub(crate) struct Limiter {
    per_node: usize,
    per_storage: usize,
    total: Arc<Semaphore>,
    keyed: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// Held while one VM is worked on. (A permit is `None` only if a semaphore were closed, which never
/// happens: they live as long as the limiter.)
pub(crate) struct Permits {
    _node: Option<OwnedSemaphorePermit>,
    _storage: Option<OwnedSemaphorePermit>,
    _total: Option<OwnedSemaphorePermit>,
}

impl Limiter {
    pub(crate) fn new(l: &DeployLimits) -> Limiter {
        // Semaphore::new panics above MAX_PERMITS: a huge configured limit is clamped.
        let size = |n: usize| n.clamp(1, Semaphore::MAX_PERMITS);
        Limiter {
            per_node: size(l.per_node),
            per_storage: size(l.per_storage),
            total: Arc::new(Semaphore::new(size(l.total))),
            keyed: Mutex::new(HashMap::new()),
        }
    }

    fn sem(&self, key: String, size: usize) -> Arc<Semaphore> {
        let mut m = self.keyed.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(key)
            .or_insert_with(|| Arc::new(Semaphore::new(size)))
            .clone()
    }

    /// Waits for a slot on `node`, on `storage` (if any) and in all, always in that order (no
    /// lock-order cycles between jobs).
    pub(crate) async fn acquire(&self, cluster: &str, node: &str, storage: Option<&str>) -> Permits {
        let node_sem = self.sem(format!("node:{cluster}/{node}"), self.per_node);
        let storage_sem = storage.map(|s| self.sem(format!("storage:{cluster}/{s}"), self.per_storage));
        let node_p = node_sem.acquire_owned().await.ok();
        let storage_p = match storage_sem {
            Some(s) => s.acquire_owned().await.ok(),
            None => None,
        };
        let total_p = self.total.clone().acquire_owned().await.ok();
        Permits {
            _node: node_p,
            _storage: storage_p,
            _total: total_p,
        }
    }
}

/// Delay before retry `attempt` (1 = first retry): `base * 2^(attempt-1)`, at most `max`, times a
/// random factor in [0.5, 1.5) so parallel retries do not collide again.
pub(crate) fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let capped = exp.min(max);
    let factor: f64 = rand::thread_rng().gen_range(0.5..1.5);
    // `mul_f64` panics when the product overflows; a configured maximum near Duration::MAX would.
    Duration::try_from_secs_f64(capped.as_secs_f64() * factor).unwrap_or(capped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for _ in 0..50 {
            let d1 = backoff(1, base, max);
            assert!(
                d1 >= Duration::from_millis(50) && d1 < Duration::from_millis(150),
                "{d1:?}"
            );
            let d3 = backoff(3, base, max);
            assert!(
                d3 >= Duration::from_millis(200) && d3 < Duration::from_millis(600),
                "{d3:?}"
            );
            let d9 = backoff(9, base, max);
            assert!(d9 < Duration::from_millis(1500), "{d9:?}");
        }
    }

    #[tokio::test]
    async fn node_limit_bounds_parallel_holders() {
        let l = Arc::new(Limiter::new(&DeployLimits {
            per_node: 2,
            per_storage: 10,
            total: 10,
            ..DeployLimits::default()
        }));
        let p1 = l.acquire("c", "n1", Some("s")).await;
        let _p2 = l.acquire("c", "n1", Some("s")).await;
        let l2 = l.clone();
        let third = tokio::spawn(async move { l2.acquire("c", "n1", Some("s")).await });
        // Another node is not blocked by n1's limit.
        let _other = tokio::time::timeout(Duration::from_secs(1), l.acquire("c", "n2", Some("s")))
            .await
            .unwrap();
        assert!(!third.is_finished());
        drop(p1);
        tokio::time::timeout(Duration::from_secs(1), third)
            .await
            .unwrap()
            .unwrap();
    }
}
