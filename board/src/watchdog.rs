//! The watchdog role: something that reboots the board unless it is petted in time.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use log::warn;

use crate::clock::Clock;
use crate::error::BoardError;

/// A hardware or simulated watchdog timer.
///
/// Contract:
/// - Once the value exists the timer MUST be running: if `pet` is not called for longer
///   than `timeout()`, the board (or the simulation) MUST consider the system hung.
/// - `pet` MUST restart the full timeout and MUST NOT block longer than a single system
///   call.
/// - `timeout` MUST report the timeout in force, which MAY be longer than the one asked
///   for (hardware has coarse steps); callers pet at a fraction of it.
/// - `disarm` MUST stop the timer for a clean shutdown. Dropping the value without
///   `disarm` MUST NOT stop it: a crash has to end in a reboot.
pub trait Watchdog: Send {
    fn pet(&mut self) -> Result<(), BoardError>;
    fn timeout(&self) -> Duration;
    fn disarm(self: Box<Self>) -> Result<(), BoardError>;
}

const WHAT: &str = "watchdog";

// <linux/watchdog.h>: WATCHDOG_IOCTL_BASE is 'W'.
nix::ioctl_read!(wdioc_keepalive, b'W', 5, libc::c_int);
nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, libc::c_int);
nix::ioctl_read!(wdioc_gettimeout, b'W', 7, libc::c_int);

/// The Linux watchdog device (`/dev/watchdog0`), driven through its ioctls.
///
/// Only one process can hold the device. If systemd's `RuntimeWatchdogSec=` is set in
/// `/etc/systemd/system.conf`, systemd holds it and opening fails with "busy": then let
/// systemd own the hardware and rely on the unit's `WatchdogSec=` instead.
#[derive(Debug)]
pub struct DevWatchdog {
    file: File,
    path: PathBuf,
    timeout: Duration,
}

impl DevWatchdog {
    /// Opens (and thereby arms) the watchdog and sets its timeout, rounded up to whole
    /// seconds. A driver that cannot change its timeout keeps its own, which is logged and
    /// reported by [`Watchdog::timeout`].
    pub fn open(path: impl AsRef<Path>, timeout: Duration) -> Result<Self, BoardError> {
        let path = path.as_ref().to_path_buf();
        let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
        let secs = libc::c_int::try_from(secs)
            .ok()
            .filter(|s| (1..=3600).contains(s))
            .ok_or_else(|| {
                BoardError::invalid_argument(
                    "watchdog timeout",
                    format!("{timeout:?}: must be between 1 s and 1 h"),
                )
            })?;
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| match BoardError::from_io(WHAT, &path, "open", e) {
                BoardError::Busy {
                    what,
                    device,
                    source,
                    ..
                } => BoardError::Busy {
                    what,
                    device,
                    hint: "; systemd holds it when RuntimeWatchdogSec= is set in system.conf",
                    source,
                },
                other => other,
            })?;
        let mut dog = DevWatchdog {
            file,
            path,
            timeout: Duration::from_secs(secs as u64),
        };
        // The open armed the timer: on any failure from here on, disarm before returning
        // so that a refused configuration does not also reboot the board.
        match dog.configure(secs) {
            Ok(()) => Ok(dog),
            Err(e) => {
                if let Err(stop) = dog.magic_close() {
                    warn!("{stop}");
                }
                Err(e)
            }
        }
    }

    fn configure(&mut self, secs: libc::c_int) -> Result<(), BoardError> {
        let fd = self.file.as_raw_fd();
        let mut set = secs;
        // SAFETY: fd is an open descriptor we own; `set` is a valid c_int for the call.
        match unsafe { wdioc_settimeout(fd, &mut set) } {
            Ok(_) => {}
            Err(nix::errno::Errno::EOPNOTSUPP) | Err(nix::errno::Errno::EINVAL) => {
                warn!(
                    "watchdog {}: driver refused a {secs} s timeout, keeping its own",
                    self.path.display()
                );
            }
            Err(e) => {
                return Err(BoardError::from_errno(
                    WHAT,
                    &self.path,
                    "WDIOC_SETTIMEOUT",
                    e,
                ))
            }
        }
        let mut got: libc::c_int = 0;
        // SAFETY: as above; the kernel writes one c_int into `got`.
        unsafe { wdioc_gettimeout(fd, &mut got) }
            .map_err(|e| BoardError::from_errno(WHAT, &self.path, "WDIOC_GETTIMEOUT", e))?;
        if got <= 0 {
            return Err(BoardError::Negotiation {
                what: WHAT,
                device: self.path.clone(),
                problem: format!("driver reports a timeout of {got} s"),
            });
        }
        if got != secs {
            warn!(
                "watchdog {}: asked for {secs} s, driver uses {got} s",
                self.path.display()
            );
        }
        self.timeout = Duration::from_secs(got as u64);
        self.pet()
    }

    /// Writes the magic 'V' that tells the driver the next close is deliberate. Drivers
    /// built with `nowayout` ignore it and the board reboots anyway; nothing to do then.
    fn magic_close(&mut self) -> Result<(), BoardError> {
        self.file
            .write_all(b"V")
            .map_err(|e| BoardError::from_io(WHAT, &self.path, "write magic close 'V'", e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Watchdog for DevWatchdog {
    fn pet(&mut self) -> Result<(), BoardError> {
        let mut dummy: libc::c_int = 0;
        // SAFETY: fd is an open descriptor we own; WDIOC_KEEPALIVE ignores its argument.
        unsafe { wdioc_keepalive(self.file.as_raw_fd(), &mut dummy) }
            .map(drop)
            .map_err(|e| BoardError::from_errno(WHAT, &self.path, "WDIOC_KEEPALIVE", e))
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }

    fn disarm(mut self: Box<Self>) -> Result<(), BoardError> {
        self.magic_close()
        // The file closes here; with the magic written, the driver stops the timer.
    }
}

/// A watchdog on a [`Clock`] (a [`crate::SimClock`] in unit tests, the daemon's clock on a
/// simulated board): it "fires" when the clock passes the last pet plus the timeout.
/// Tests keep a [`SimWatchdogHandle`] to look at it after handing the watchdog to the
/// code under test.
pub struct SimWatchdog {
    state: Arc<Mutex<SimState>>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for SimWatchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimWatchdog")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct SimState {
    timeout: Duration,
    armed_at: Instant,
    last_pet: Option<Instant>,
    pets: u64,
    fired_at: Option<Instant>,
    disarmed: bool,
}

impl SimState {
    fn deadline(&self) -> Instant {
        self.last_pet.unwrap_or(self.armed_at) + self.timeout
    }

    /// Latches the first expiry: once fired, a later pet cannot undo it (the board would
    /// already have rebooted).
    fn update(&mut self, now: Instant) {
        if self.fired_at.is_none() && !self.disarmed && now > self.deadline() {
            self.fired_at = Some(self.deadline());
        }
    }
}

/// Inspection of a [`SimWatchdog`] (time moves with its clock).
#[derive(Clone)]
pub struct SimWatchdogHandle {
    state: Arc<Mutex<SimState>>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for SimWatchdogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimWatchdogHandle")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl SimWatchdog {
    /// An armed watchdog whose time is `clock`.
    pub fn new(clock: Arc<dyn Clock>, timeout: Duration) -> (SimWatchdog, SimWatchdogHandle) {
        let state = Arc::new(Mutex::new(SimState {
            timeout,
            armed_at: clock.now(),
            last_pet: None,
            pets: 0,
            fired_at: None,
            disarmed: false,
        }));
        let handle = SimWatchdogHandle {
            state: state.clone(),
            clock: clock.clone(),
        };
        (SimWatchdog { state, clock }, handle)
    }
}

fn lock(state: &Mutex<SimState>) -> std::sync::MutexGuard<'_, SimState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Watchdog for SimWatchdog {
    fn pet(&mut self) -> Result<(), BoardError> {
        let now = self.clock.now();
        let mut s = lock(&self.state);
        s.update(now);
        s.pets += 1;
        s.last_pet = Some(now);
        Ok(())
    }

    fn timeout(&self) -> Duration {
        lock(&self.state).timeout
    }

    fn disarm(self: Box<Self>) -> Result<(), BoardError> {
        let now = self.clock.now();
        let mut s = lock(&self.state);
        s.update(now);
        s.disarmed = true;
        Ok(())
    }
}

impl SimWatchdogHandle {
    /// Whether the timer has expired without a pet (at the clock's current time).
    pub fn fired(&self) -> bool {
        self.fired_at().is_some()
    }

    /// When it expired, if it has.
    pub fn fired_at(&self) -> Option<Instant> {
        let now = self.clock.now();
        let mut s = lock(&self.state);
        s.update(now);
        s.fired_at
    }

    pub fn pet_count(&self) -> u64 {
        lock(&self.state).pets
    }

    pub fn last_pet(&self) -> Option<Instant> {
        lock(&self.state).last_pet
    }

    pub fn is_disarmed(&self) -> bool {
        lock(&self.state).disarmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SimClock;
    use crate::error::ErrorKind;

    /// Moves `clock` on by `by`; tells whether the watchdog has fired by then.
    fn advance(clock: &SimClock, handle: &SimWatchdogHandle, by: Duration) -> bool {
        clock.advance(by);
        handle.fired()
    }

    #[test]
    fn sim_fires_only_when_not_petted_in_time() {
        let clock = SimClock::new();
        let (dog, handle) = SimWatchdog::new(Arc::new(clock.clone()), Duration::from_secs(10));
        let mut dog: Box<dyn Watchdog> = Box::new(dog);
        assert_eq!(dog.timeout(), Duration::from_secs(10));
        for _ in 0..5 {
            assert!(!advance(&clock, &handle, Duration::from_secs(9)));
            dog.pet().unwrap();
        }
        assert_eq!(handle.pet_count(), 5);
        assert_eq!(handle.last_pet(), Some(clock.now()));
        // Exactly at the deadline is still in time; one tick after is not.
        assert!(!advance(&clock, &handle, Duration::from_secs(10)));
        assert!(advance(&clock, &handle, Duration::from_millis(1)));
        let fired_at = handle.fired_at().unwrap();
        assert_eq!(
            fired_at,
            handle.last_pet().unwrap() + Duration::from_secs(10)
        );
        // A late pet does not undo the expiry.
        dog.pet().unwrap();
        assert!(handle.fired());
    }

    #[test]
    fn sim_counts_a_missed_deadline_even_if_nobody_looked() {
        let clock = SimClock::new();
        let (mut dog, handle) = SimWatchdog::new(Arc::new(clock.clone()), Duration::from_secs(2));
        clock.advance(Duration::from_secs(3));
        dog.pet().unwrap();
        assert!(handle.fired(), "the pet came 1 s too late");
    }

    #[test]
    fn sim_disarm_stops_it() {
        let clock = SimClock::new();
        let (dog, handle) = SimWatchdog::new(Arc::new(clock.clone()), Duration::from_secs(1));
        Box::new(dog).disarm().unwrap();
        assert!(handle.is_disarmed());
        assert!(!advance(&clock, &handle, Duration::from_secs(3600)));
    }

    #[test]
    fn dev_watchdog_missing_device_is_not_found() {
        let err = DevWatchdog::open("/dev/watchdog99", Duration::from_secs(10)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains("/dev/watchdog99"), "{err}");
    }

    #[test]
    fn dev_watchdog_on_a_plain_file_is_unsupported_and_disarmed() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = DevWatchdog::open(file.path(), Duration::from_millis(1500)).unwrap_err();
        // ENOTTY natively, ENOSYS under qemu-user.
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        assert!(err.to_string().contains("WDIOC_SETTIMEOUT"), "{err}");
        assert_eq!(
            std::fs::read(file.path()).unwrap(),
            b"V",
            "magic close on failure"
        );
    }

    #[test]
    fn dev_watchdog_rejects_absurd_timeouts() {
        for t in [Duration::ZERO, Duration::from_secs(86_400)] {
            let err = DevWatchdog::open("/dev/null", t).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        }
    }
}
