//! Monotonic time behind a trait, so that debounce and watchdog logic run in tests on a
//! clock advanced by hand instead of on sleeps.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A monotonic clock.
///
/// Contract:
/// - `now()` MUST never go backwards: a later call MUST return an instant greater than or
///   equal to any earlier one from the same clock (clones included).
/// - `now()` MUST NOT block and MUST NOT fail.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// The process's monotonic clock (`CLOCK_MONOTONIC` through [`Instant`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when [`SimClock::advance`] is called; clones share the time.
///
/// It returns real [`Instant`]s (a fixed origin plus the advanced offset) so code under
/// test keeps using the standard type.
#[derive(Debug, Clone)]
pub struct SimClock {
    now: Arc<Mutex<Instant>>,
}

impl SimClock {
    pub fn new() -> Self {
        SimClock {
            now: Arc::new(Mutex::new(Instant::now())),
        }
    }

    /// Moves the shared time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now += by;
    }
}

impl Default for SimClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SimClock {
    fn now(&self) -> Instant {
        // A test thread that panicked while holding the lock cannot leave a torn Instant
        // behind (the update is a single assignment), so the poisoned value is still good.
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_clock_moves_only_when_advanced_and_clones_share_it() {
        let clock = SimClock::new();
        let other = clock.clone();
        let t0 = clock.now();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(clock.now(), t0, "a sim clock must not follow wall time");
        other.advance(Duration::from_millis(250));
        assert_eq!(clock.now() - t0, Duration::from_millis(250));
    }

    #[test]
    fn system_clock_is_monotonic() {
        let c = SystemClock;
        let a = c.now();
        let b = c.now();
        assert!(b >= a);
    }
}
