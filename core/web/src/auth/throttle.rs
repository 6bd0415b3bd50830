//! Login throttling per account and per client address (field case C11, issue 4 item 2).
//!
//! - **Per account** (the submitted name, whether or not it exists): once `account_free` failures are
//!   counted, each further attempt is *delayed* by `account_base_delay · 2^k` (k = failures beyond the
//!   free ones), capped at `account_max_delay`. A
//!   delay, never a refusal: an attacker can slow an account down but cannot lock its owner out, and the
//!   owner's correct password from another address still works (only slower while the attack lasts).
//! - **Per address**: once `address_free` failures are counted, the address is refused (429 +
//!   `Retry-After`) for `address_base_lockout · 2^k` after its last failure, capped at
//!   `address_max_lockout`.
//!
//! The answer never depends on whether the user exists: unknown names count and wait like known ones.
//! Failures are forgotten `forget_after` after the last one; a success clears the account's count.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::clock::WallClock;

/// Throttle tuning (all durations are wall time).
#[derive(Clone, Debug)]
pub struct ThrottleConfig {
    /// Failures of one account before delays start.
    pub account_free: u32,
    /// First delay once they start.
    pub account_base_delay: Duration,
    /// Longest delay of one attempt.
    pub account_max_delay: Duration,
    /// Failures from one address before it is refused for a while.
    pub address_free: u32,
    /// First refusal window.
    pub address_base_lockout: Duration,
    /// Longest refusal window.
    pub address_max_lockout: Duration,
    /// Failures older than this (since the last one) are forgotten.
    pub forget_after: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            account_free: 5,
            account_base_delay: Duration::from_millis(250),
            account_max_delay: Duration::from_secs(5),
            address_free: 20,
            address_base_lockout: Duration::from_secs(1),
            address_max_lockout: Duration::from_secs(300),
            forget_after: Duration::from_secs(900),
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    failures: u32,
    last_ms: u64,
}

/// At most this many tracked keys per map; beyond it, entries past `forget_after` are pruned first.
const MAX_ENTRIES: usize = 100_000;

/// The throttle state (in memory; a restart forgets it, which only ever makes login easier).
#[derive(Debug, Clone)]
pub struct Throttle {
    cfg: ThrottleConfig,
    clock: Arc<dyn WallClock>,
    accounts: Arc<Mutex<HashMap<String, Entry>>>,
    addresses: Arc<Mutex<HashMap<IpAddr, Entry>>>,
}

fn backoff(base: Duration, max: Duration, over: u32) -> Duration {
    if over == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32
        .checked_shl(over.saturating_sub(1).min(30))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(max)
}

impl Throttle {
    /// A throttle with `cfg` on `clock`.
    pub fn new(cfg: ThrottleConfig, clock: Arc<dyn WallClock>) -> Throttle {
        Throttle {
            cfg,
            clock,
            accounts: Arc::default(),
            addresses: Arc::default(),
        }
    }

    fn live(&self, e: Option<&Entry>, now: u64) -> u32 {
        match e {
            Some(e) if now.saturating_sub(e.last_ms) < self.cfg.forget_after.as_millis() as u64 => e.failures,
            _ => 0,
        }
    }

    /// How long `addr` is still refused (`None`: it may try now).
    pub fn address_refused_for(&self, addr: IpAddr) -> Option<Duration> {
        let now = self.clock.now_millis();
        let map = self.addresses.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.get(&addr)?;
        let n = self.live(Some(e), now);
        let over = (n + 1).saturating_sub(self.cfg.address_free);
        let window = backoff(self.cfg.address_base_lockout, self.cfg.address_max_lockout, over);
        let until = e.last_ms + window.as_millis() as u64;
        (until > now).then(|| Duration::from_millis(until - now))
    }

    /// The delay to wait before checking a password for `account` (zero below the free failures).
    pub fn account_delay(&self, account: &str) -> Duration {
        let now = self.clock.now_millis();
        let map = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.live(map.get(account), now);
        backoff(
            self.cfg.account_base_delay,
            self.cfg.account_max_delay,
            (n + 1).saturating_sub(self.cfg.account_free),
        )
    }

    /// Failures currently counted for `account`.
    pub fn account_failures(&self, account: &str) -> u32 {
        let now = self.clock.now_millis();
        let map = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        self.live(map.get(account), now)
    }

    /// Records a failed login of `account` from `addr`.
    pub fn record_failure(&self, account: &str, addr: IpAddr) {
        let now = self.clock.now_millis();
        let forget = self.cfg.forget_after.as_millis() as u64;
        {
            let mut map = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() >= MAX_ENTRIES {
                map.retain(|_, e| now.saturating_sub(e.last_ms) < forget);
            }
            let n = self.live(map.get(account), now);
            map.insert(
                account.to_string(),
                Entry {
                    failures: n.saturating_add(1),
                    last_ms: now,
                },
            );
        }
        let mut map = self.addresses.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, e| now.saturating_sub(e.last_ms) < forget);
        }
        let n = self.live(map.get(&addr), now);
        map.insert(
            addr,
            Entry {
                failures: n.saturating_add(1),
                last_ms: now,
            },
        );
    }

    /// Records a successful login: the account's failures are cleared (the address keeps its count, so a
    /// sprayer with one valid account cannot reset its own address).
    pub fn record_success(&self, account: &str) {
        self.accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(account);
    }
}

#[cfg(test)]
mod tests {
    use super::super::clock::ManualWallClock;
    use super::*;

    #[test]
    fn account_delay_grows_exponentially_and_is_capped() {
        let clock = Arc::new(ManualWallClock::new());
        let t = Throttle::new(ThrottleConfig::default(), clock.clone());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..4 {
            t.record_failure("alice", a);
        }
        assert_eq!(t.account_delay("alice"), Duration::ZERO);
        t.record_failure("alice", a);
        assert_eq!(t.account_delay("alice"), Duration::from_millis(250));
        t.record_failure("alice", a);
        assert_eq!(t.account_delay("alice"), Duration::from_millis(500));
        for _ in 0..100 {
            t.record_failure("alice", a);
        }
        assert_eq!(t.account_delay("alice"), Duration::from_secs(5));
        clock.advance(Duration::from_secs(901));
        assert_eq!(
            t.account_delay("alice"),
            Duration::ZERO,
            "forgotten after the window"
        );
    }

    #[test]
    fn address_is_refused_for_a_growing_window_that_ends() {
        let clock = Arc::new(ManualWallClock::new());
        let t = Throttle::new(ThrottleConfig::default(), clock.clone());
        let a: IpAddr = "127.0.0.9".parse().unwrap();
        for i in 0..19 {
            t.record_failure(&format!("u{i}"), a);
        }
        assert!(t.address_refused_for(a).is_none());
        t.record_failure("u", a);
        assert_eq!(t.address_refused_for(a), Some(Duration::from_secs(1)));
        clock.advance(Duration::from_millis(1001));
        assert!(t.address_refused_for(a).is_none());
        assert!(t.address_refused_for("127.0.0.10".parse().unwrap()).is_none());
    }
}
