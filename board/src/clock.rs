//! Monotonic time behind a trait, so that debounce and watchdog logic run in tests on a
//! clock advanced by hand instead of on sleeps.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// The process's monotonic clock moved forward by an offset that another process writes
/// to a file: for a simulated board run as a separate process (the daemon under its
/// integration tests), where a [`SimClock`] cannot be shared.
///
/// Time keeps flowing (deadlines on real worker processes still pass), and a test jumps
/// it over a cool-down or an idle timeout instead of sleeping through it. The file holds
/// the total offset in milliseconds as decimal text; it is read at every `now()`, and an
/// offset that is missing, unreadable or smaller than one already seen is ignored, so the
/// clock never goes backwards.
#[derive(Debug)]
pub struct OffsetFileClock {
    path: PathBuf,
    offset_ms: AtomicU64,
}

impl OffsetFileClock {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        OffsetFileClock {
            path: path.into(),
            offset_ms: AtomicU64::new(0),
        }
    }

    /// Writes `offset` as the file's new total (replacing the file whole, so a reader
    /// never sees half a number). For the process that drives the clock.
    pub fn write(path: &std::path::Path, offset: Duration) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, offset.as_millis().to_string())?;
        std::fs::rename(tmp, path)
    }
}

impl Clock for OffsetFileClock {
    fn now(&self) -> Instant {
        let read = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok());
        let offset = match read {
            Some(ms) => self.offset_ms.fetch_max(ms, Ordering::Relaxed).max(ms),
            None => self.offset_ms.load(Ordering::Relaxed),
        };
        Instant::now() + Duration::from_millis(offset)
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
    fn offset_file_clock_jumps_forward_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offset");
        let clock = OffsetFileClock::new(&path);
        let t0 = clock.now();
        OffsetFileClock::write(&path, Duration::from_secs(3600)).unwrap();
        let t1 = clock.now();
        assert!(t1 - t0 >= Duration::from_secs(3600), "{:?}", t1 - t0);
        // A smaller offset, garbage or no file at all never move it back.
        OffsetFileClock::write(&path, Duration::from_secs(5)).unwrap();
        assert!(clock.now() >= t1);
        std::fs::write(&path, "soon").unwrap();
        assert!(clock.now() >= t1);
        std::fs::remove_file(&path).unwrap();
        assert!(clock.now() >= t1);
    }

    #[test]
    fn system_clock_is_monotonic() {
        let c = SystemClock;
        let a = c.now();
        let b = c.now();
        assert!(b >= a);
    }
}
