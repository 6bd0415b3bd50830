//! Wall-clock time, injectable so tests can move session expiry and throttle windows forward.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of Unix time. Production uses [`SystemWallClock`]; tests use [`ManualWallClock`].
pub trait WallClock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_millis(&self) -> u64;

    /// Seconds since the Unix epoch.
    fn now_secs(&self) -> u64 {
        self.now_millis() / 1000
    }
}

/// The system's real-time clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemWallClock;

impl WallClock for SystemWallClock {
    fn now_millis(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that starts at the real time and moves only when [`ManualWallClock::advance`] is called.
#[derive(Debug)]
pub struct ManualWallClock {
    millis: Mutex<u64>,
}

impl ManualWallClock {
    /// A clock standing at the current real time.
    pub fn new() -> Self {
        ManualWallClock {
            millis: Mutex::new(SystemWallClock.now_millis()),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut m = self.millis.lock().unwrap_or_else(|p| p.into_inner());
        *m += by.as_millis() as u64;
    }
}

impl Default for ManualWallClock {
    fn default() -> Self {
        ManualWallClock::new()
    }
}

impl WallClock for ManualWallClock {
    fn now_millis(&self) -> u64 {
        *self.millis.lock().unwrap_or_else(|p| p.into_inner())
    }
}
