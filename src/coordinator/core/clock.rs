//! Time, as the coordinator core reads it: through a [`Clock`], so tests
//! move it by hand (heartbeat timeouts, retry backoff, grace periods) and
//! run in milliseconds, as TigerBeetle's simulator does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, never going back.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

/// The machine's clock. Held monotonic: a wall-clock step backwards reads
/// as time standing still, never as time going back.
#[derive(Default)]
pub struct SystemClock {
    last: AtomicU64,
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.last.fetch_max(wall, Ordering::Relaxed).max(wall)
    }
}

/// A clock that moves only when told to; clones share one time.
#[derive(Clone, Default)]
pub struct FakeClock {
    now: Arc<AtomicU64>,
}

impl FakeClock {
    pub fn starting_at(ms: u64) -> FakeClock {
        FakeClock { now: Arc::new(AtomicU64::new(ms)) }
    }

    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Clock for FakeClock {
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::Relaxed)
    }
}
