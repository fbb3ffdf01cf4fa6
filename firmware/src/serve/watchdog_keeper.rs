//! Feeds the hardware watchdog while the daemon starts.
//!
//! A watchdog that was armed by a previous run (killed with SIGKILL, or crashed) keeps
//! counting while systemd restarts us. Start-up (bundle verification, outbox recovery,
//! loading the model in a worker) can take longer than the watchdog's timeout on a loaded
//! board, so the daemon opens the watchdog first and a keeper thread feeds it until the
//! supervisor loop takes it over. The keeper feeds it only for a bounded start-up time: a
//! start-up that hangs still ends in a reset, as a hang in the loop does.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use edgedx_board::clock::Clock;
use edgedx_board::watchdog::Watchdog;

/// The feeding decision, apart from the thread and its sleeps so tests drive it with a
/// simulated clock.
pub struct StartupFeed {
    dog: Box<dyn Watchdog>,
    clock: Arc<dyn Clock>,
    started: Instant,
    limit: Duration,
    gave_up: bool,
}

impl StartupFeed {
    pub fn new(dog: Box<dyn Watchdog>, clock: Arc<dyn Clock>, limit: Duration) -> Self {
        let started = clock.now();
        StartupFeed {
            dog,
            clock,
            started,
            limit,
            gave_up: false,
        }
    }

    /// How often to call [`StartupFeed::poll`]: a quarter of the timeout in force, so a
    /// late wake-up on a loaded board still pets in time.
    pub fn period(&self) -> Duration {
        (self.dog.timeout() / 4).max(Duration::from_millis(100))
    }

    /// Pets the watchdog if start-up is still within its limit. Returns false once the
    /// limit has passed (the watchdog is left to fire).
    pub fn poll(&mut self) -> bool {
        if self.gave_up {
            return false;
        }
        let elapsed = self.clock.now().saturating_duration_since(self.started);
        if elapsed > self.limit {
            self.gave_up = true;
            log::error!(
                "start-up has taken {} s, over its {} s limit: the watchdog is no longer fed",
                elapsed.as_secs(),
                self.limit.as_secs()
            );
            return false;
        }
        if let Err(e) = self.dog.pet() {
            log::warn!("watchdog: {e}");
        }
        true
    }

    pub fn into_watchdog(self) -> Box<dyn Watchdog> {
        self.dog
    }
}

/// The thread that runs a [`StartupFeed`] until [`WatchdogKeeper::hand_over`].
///
/// Dropping the keeper without handing over (start-up returned an error) disarms the
/// watchdog: the failure is diagnosed and logged, and a board that resets into the same
/// error would only loop. A hang never reaches the drop, so it still ends in a reset.
pub struct WatchdogKeeper {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<Box<dyn Watchdog>>>,
}

impl WatchdogKeeper {
    pub fn start(feed: StartupFeed) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("watchdog-startup".into())
            .spawn(move || {
                let mut feed = feed;
                feed.poll();
                loop {
                    match stopped.recv_timeout(feed.period()) {
                        Err(RecvTimeoutError::Timeout) => {
                            feed.poll();
                        }
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                            return feed.into_watchdog()
                        }
                    }
                }
            })?;
        Ok(WatchdogKeeper {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops the keeper and returns the watchdog, freshly petted, for the supervisor loop.
    pub fn hand_over(mut self) -> Option<Box<dyn Watchdog>> {
        let mut dog = self.stop_thread()?;
        if let Err(e) = dog.pet() {
            log::warn!("watchdog: {e}");
        }
        Some(dog)
    }

    fn stop_thread(&mut self) -> Option<Box<dyn Watchdog>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // A panic in the keeper thread would have dropped the watchdog without disarming
        // it; nothing is left to hand over then.
        self.thread.take()?.join().ok()
    }
}

impl Drop for WatchdogKeeper {
    fn drop(&mut self) {
        if let Some(dog) = self.stop_thread() {
            match dog.disarm() {
                Ok(()) => log::info!("watchdog disarmed: start-up did not complete"),
                Err(e) => log::warn!("watchdog: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgedx_board::clock::SimClock;
    use edgedx_board::watchdog::SimWatchdog;

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// A start-up feed on a simulated watchdog, and a handle that moves their clock.
    fn feed(limit: Duration) -> (StartupFeed, Handle) {
        let clock = SimClock::new();
        let (dog, watchdog) = SimWatchdog::new(Arc::new(clock.clone()), TIMEOUT);
        (
            StartupFeed::new(Box::new(dog), Arc::new(clock.clone()), limit),
            Handle { clock, watchdog },
        )
    }

    struct Handle {
        clock: SimClock,
        watchdog: edgedx_board::watchdog::SimWatchdogHandle,
    }

    impl std::ops::Deref for Handle {
        type Target = edgedx_board::watchdog::SimWatchdogHandle;
        fn deref(&self) -> &Self::Target {
            &self.watchdog
        }
    }

    impl Handle {
        /// Moves the clock on by `by`; tells whether the watchdog has fired by then.
        fn advance(&self, by: Duration) -> bool {
            self.clock.advance(by);
            self.watchdog.fired()
        }
    }

    #[test]
    fn a_slow_start_within_its_limit_never_lets_the_watchdog_fire() {
        let (mut feed, handle) = feed(Duration::from_secs(120));
        assert_eq!(feed.period(), Duration::from_millis(2500));
        // Polls a little late every time, as a loaded board would, for the whole limit.
        let mut t = Duration::ZERO;
        while t < Duration::from_secs(120) {
            assert!(!handle.advance(Duration::from_secs(4)), "fired at {t:?}");
            t += Duration::from_secs(4);
            assert!(feed.poll());
        }
        assert!(handle.pet_count() >= 29, "{}", handle.pet_count());
        assert!(!handle.fired());
    }

    #[test]
    fn a_start_up_that_hangs_past_its_limit_ends_in_an_expiry() {
        let (mut feed, handle) = feed(Duration::from_secs(30));
        for _ in 0..10 {
            handle.advance(Duration::from_secs(3));
            assert!(feed.poll());
        }
        handle.advance(Duration::from_secs(3));
        assert!(!feed.poll(), "33 s is past the 30 s limit");
        let pets = handle.pet_count();
        for _ in 0..5 {
            handle.advance(Duration::from_secs(3));
            assert!(!feed.poll());
        }
        assert_eq!(handle.pet_count(), pets, "no pet after giving up");
        assert!(handle.fired(), "the board must reset after a hung start-up");
        // It fired one timeout after the last pet, at 30 s.
        let last = handle.last_pet().unwrap();
        assert_eq!(handle.fired_at(), Some(last + TIMEOUT));
    }

    #[test]
    fn hand_over_returns_the_watchdog_armed_and_a_failed_start_disarms_it() {
        let (f, handle) = feed(Duration::from_secs(60));
        let keeper = WatchdogKeeper::start(f).unwrap();
        let dog = keeper.hand_over().expect("the watchdog comes back");
        assert!(handle.pet_count() >= 2, "petted at start and at hand-over");
        assert!(!handle.is_disarmed());
        drop(dog);
        assert!(!handle.is_disarmed(), "dropping a watchdog never stops it");

        let (f, handle) = feed(Duration::from_secs(60));
        let keeper = WatchdogKeeper::start(f).unwrap();
        drop(keeper);
        assert!(handle.is_disarmed(), "a start-up error disarms");
        assert!(!handle.advance(Duration::from_secs(3600)));
    }
}
