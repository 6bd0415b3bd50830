//! Login throttling per account, per client address, per network and across everyone (issue 4 item 2).
//!
//! - **Per account** (the submitted name, whether or not it exists): once `account_free` failures are
//!   counted, each further attempt is *delayed* by `account_base_delay · 2^k` (k = failures beyond the
//!   free ones), capped at `account_max_delay`. A
//!   delay, never a refusal: an attacker can slow an account down but cannot lock its owner out, and the
//!   owner's correct password from another address still works (only slower while the attack lasts).
//! - **Per address**: once `address_free` failures are counted, the address is refused (429 +
//!   `Retry-After`) for `address_base_lockout · 2^k` after its last failure, capped at
//!   `address_max_lockout`.
//! - **Per network**: the same refusal for the address's network — its /24 for IPv4, its /64 for IPv6
//!   (IPv4-mapped IPv6 addresses count as IPv4) — once `network_free` failures from anywhere inside it
//!   are counted, so rotating source addresses inside one network (one IPv6 host owns a whole /64) does
//!   not escape the address refusal.
//! - **Across everyone**: once `global_failures_per_minute` failures were counted in the last minute, every
//!   sign-in is refused (429) until the oldest of them is a minute old. This bounds guessing from many
//!   networks at once (and the per-account delay, which parallel attempts would otherwise sidestep).
//!
//! The answer never depends on whether the user exists: unknown names count and wait like known ones.
//! Failures are forgotten `forget_after` after the last one; a success clears the account's count.

use std::collections::{HashMap, VecDeque};
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
    /// Failures from one network (/24 for IPv4, /64 for IPv6) before it is refused for a while (with the
    /// address windows).
    pub network_free: u32,
    /// Failed sign-ins per minute across everyone after which every sign-in is refused until the minute
    /// has passed; 0 turns the ceiling off.
    pub global_failures_per_minute: u32,
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
            network_free: 60,
            global_failures_per_minute: 300,
            forget_after: Duration::from_secs(900),
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    failures: u32,
    last_ms: u64,
}

const MINUTE_MS: u64 = 60_000;

/// At most this many tracked keys per map; beyond it, entries past `forget_after` are pruned first.
const MAX_ENTRIES: usize = 100_000;

/// Why a sign-in is refused for now (the 429's message names it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Too many failures from this exact address.
    Address,
    /// Too many failures from this address's network (/24, /64).
    Network,
    /// Too many failures across everyone in the last minute.
    Everyone,
}

impl Scope {
    /// The sentence of the 429 answer.
    pub fn message(self) -> &'static str {
        match self {
            Scope::Address => "too many failed sign-ins from this address; wait a moment",
            Scope::Network => "too many failed sign-ins from this network; wait a moment",
            Scope::Everyone => {
                "too many failed sign-ins on this portal in the last minute; try again in a minute"
            }
        }
    }
}

/// The network an address is counted in: its /24 (IPv4, also IPv4-mapped IPv6) or its /64 (IPv6).
pub fn network_of(addr: IpAddr) -> ipnet::IpNet {
    match addr.to_canonical() {
        IpAddr::V4(a) => ipnet::IpNet::V4(ipnet::Ipv4Net::new_assert(a, 24).trunc()),
        IpAddr::V6(a) => ipnet::IpNet::V6(ipnet::Ipv6Net::new_assert(a, 64).trunc()),
    }
}

/// The throttle state (in memory; a restart forgets it, which only ever makes login easier).
#[derive(Debug, Clone)]
pub struct Throttle {
    cfg: ThrottleConfig,
    clock: Arc<dyn WallClock>,
    accounts: Arc<Mutex<HashMap<String, Entry>>>,
    addresses: Arc<Mutex<HashMap<IpAddr, Entry>>>,
    networks: Arc<Mutex<HashMap<ipnet::IpNet, Entry>>>,
    /// Times (Unix ms) of the failures of the last minute, oldest first; at most the ceiling long.
    recent: Arc<Mutex<VecDeque<u64>>>,
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
            networks: Arc::default(),
            recent: Arc::default(),
        }
    }

    fn refusal_window<K: std::hash::Hash + Eq>(
        &self,
        map: &Mutex<HashMap<K, Entry>>,
        key: &K,
        free: u32,
        now: u64,
    ) -> Option<Duration> {
        let map = map.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.get(key)?;
        let n = self.live(Some(e), now);
        let over = (n + 1).saturating_sub(free);
        let window = backoff(self.cfg.address_base_lockout, self.cfg.address_max_lockout, over);
        let until = e.last_ms + window.as_millis() as u64;
        (until > now).then(|| Duration::from_millis(until - now))
    }

    /// Whether a sign-in from `addr` is refused now, for how long and why: the address, its network
    /// ([`network_of`]) or the ceiling across everyone, whichever holds longest. `None`: it may try.
    pub fn refused(&self, addr: IpAddr) -> Option<(Duration, Scope)> {
        let now = self.clock.now_millis();
        let addr = addr.to_canonical();
        let mut out: Option<(Duration, Scope)> = None;
        let mut take = |w: Option<Duration>, scope: Scope| {
            if let Some(w) = w
                && out.is_none_or(|(o, _)| w > o)
            {
                out = Some((w, scope));
            }
        };
        take(
            self.refusal_window(&self.addresses, &addr, self.cfg.address_free, now),
            Scope::Address,
        );
        take(
            self.refusal_window(&self.networks, &network_of(addr), self.cfg.network_free, now),
            Scope::Network,
        );
        let ceiling = self.cfg.global_failures_per_minute as usize;
        if ceiling > 0 {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            while recent
                .front()
                .is_some_and(|t| now.saturating_sub(*t) >= MINUTE_MS)
            {
                recent.pop_front();
            }
            if recent.len() >= ceiling
                && let Some(oldest) = recent.front()
            {
                take(
                    Some(Duration::from_millis(oldest + MINUTE_MS - now)),
                    Scope::Everyone,
                );
            }
        }
        out
    }

    fn live(&self, e: Option<&Entry>, now: u64) -> u32 {
        match e {
            Some(e) if now.saturating_sub(e.last_ms) < self.cfg.forget_after.as_millis() as u64 => e.failures,
            _ => 0,
        }
    }

    /// How long the exact address `addr` is still refused (`None`: it may try now); [`Throttle::refused`]
    /// also checks its network and the ceiling across everyone.
    pub fn address_refused_for(&self, addr: IpAddr) -> Option<Duration> {
        let now = self.clock.now_millis();
        self.refusal_window(&self.addresses, &addr.to_canonical(), self.cfg.address_free, now)
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
        self.count(&self.accounts, account.to_string(), now);
        let addr = addr.to_canonical();
        self.count(&self.addresses, addr, now);
        self.count(&self.networks, network_of(addr), now);
        let ceiling = self.cfg.global_failures_per_minute as usize;
        if ceiling > 0 {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            recent.push_back(now);
            while recent.len() > ceiling
                || recent
                    .front()
                    .is_some_and(|t| now.saturating_sub(*t) >= MINUTE_MS)
            {
                recent.pop_front();
            }
        }
    }

    fn count<K: std::hash::Hash + Eq>(&self, map: &Mutex<HashMap<K, Entry>>, key: K, now: u64) {
        let forget = self.cfg.forget_after.as_millis() as u64;
        let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, e| now.saturating_sub(e.last_ms) < forget);
        }
        let n = self.live(map.get(&key), now);
        map.insert(
            key,
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

    /// A throttle with the default limits on a clock the test moves.
    fn default_throttle() -> (Arc<ManualWallClock>, Throttle) {
        let clock = Arc::new(ManualWallClock::new());
        let t = Throttle::new(ThrottleConfig::default(), clock.clone());
        (clock, t)
    }

    #[test]
    fn account_delay_grows_exponentially_and_is_capped() {
        let (clock, t) = default_throttle();
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
        let (clock, t) = default_throttle();
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

    #[test]
    fn networks_are_the_v4_24_and_the_v6_64_and_mapped_addresses_count_as_v4() {
        let n = |a: &str| network_of(a.parse().unwrap()).to_string();
        assert_eq!(n("198.51.100.77"), "198.51.100.0/24");
        assert_eq!(n("::ffff:198.51.100.77"), "198.51.100.0/24");
        assert_eq!(n("2001:db8:5:7:abcd::1"), "2001:db8:5:7::/64");
    }

    #[test]
    fn the_ceiling_across_everyone_refuses_until_its_oldest_failure_is_a_minute_old() {
        let clock = Arc::new(ManualWallClock::new());
        let cfg = ThrottleConfig {
            global_failures_per_minute: 3,
            ..ThrottleConfig::default()
        };
        let t = Throttle::new(cfg, clock.clone());
        for i in 0..3u8 {
            t.record_failure("x", IpAddr::from([10, i, 0, 1]));
            clock.advance(Duration::from_secs(10));
        }
        let fresh: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(t.refused(fresh), Some((Duration::from_secs(30), Scope::Everyone)));
        clock.advance(Duration::from_secs(30));
        assert!(t.refused(fresh).is_none());
    }
}
