//! GPIO roles built on embedded-hal 1.0 digital pins: status LED and alert buzzer
//! (outputs), capture button (debounced input). Pins are Linux GPIO character-device
//! lines ([`CdevPin`]) or simulated ones ([`SimPin`]), both wrapped in [`GpioPin`] so the
//! daemon holds one concrete type.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use embedded_hal::digital::{ErrorType, InputPin, OutputPin, PinState};
use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};
use linux_embedded_hal::CdevPin;

use crate::error::BoardError;

const CONSUMER: &str = "edgedx";

/// Error of a [`GpioPin`] operation (a failed GPIO ioctl or an injected fault).
pub struct PinError(String);

// Debug prints the bare message: the pin roles only see `embedded_hal::digital::Error`,
// whose one required formatting is Debug, and that text ends up in BoardError::Pin.
impl fmt::Debug for PinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for PinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PinError {}

impl embedded_hal::digital::Error for PinError {
    fn kind(&self) -> embedded_hal::digital::ErrorKind {
        embedded_hal::digital::ErrorKind::Other
    }
}

fn gpio_error(
    chip: &Path,
    line: u32,
    op: &'static str,
    e: linux_embedded_hal::gpio_cdev::Error,
) -> BoardError {
    // gpio-cdev wraps the errno in its own nix version's type, which we cannot downcast;
    // the usual causes (missing chip, no permission, not a GPIO chip, line out of range)
    // are caught with their own errors by `check_chip` before gpio-cdev runs, so what is
    // left (a line held by another process, EBUSY) keeps gpio-cdev's message.
    let io = match std::error::Error::source(&e).and_then(|s| s.downcast_ref::<std::io::Error>()) {
        Some(io) => std::io::Error::new(io.kind(), format!("line {line}: {io}")),
        None => std::io::Error::other(format!("line {line}: {e}")),
    };
    BoardError::from_io("GPIO chip", chip, op, io)
}

/// `struct gpiochip_info` from <linux/gpio.h>.
#[repr(C)]
struct GpioChipInfo {
    // `char[32]` in C; u8 has the same layout and avoids c_char's signedness differing
    // between x86_64 and aarch64.
    name: [u8; 32],
    label: [u8; 32],
    lines: u32,
}

nix::ioctl_read!(gpio_get_chipinfo, 0xB4, 0x01, GpioChipInfo);

/// Opens the chip ourselves first and checks the line exists, so each usual deployment
/// mistake gets a precise error naming the chip and the line.
fn check_chip(chip: &Path, line: u32) -> Result<Chip, BoardError> {
    let file =
        std::fs::File::open(chip).map_err(|e| BoardError::from_io("GPIO chip", chip, "open", e))?;
    let mut info = GpioChipInfo {
        name: [0; 32],
        label: [0; 32],
        lines: 0,
    };
    // SAFETY: the descriptor is open for the duration of the call and `info` has the
    // kernel's layout for this request.
    unsafe { gpio_get_chipinfo(std::os::fd::AsRawFd::as_raw_fd(&file), &mut info) }
        .map_err(|e| BoardError::from_errno("GPIO chip", chip, "GPIO_GET_CHIPINFO_IOCTL", e))?;
    if line >= info.lines {
        let end = info.label.iter().position(|&c| c == 0).unwrap_or(32);
        let label = String::from_utf8_lossy(&info.label[..end]);
        return Err(BoardError::invalid_argument(
            "GPIO line",
            format!(
                "{}: line {line} does not exist, chip \"{label}\" has lines 0..{}",
                chip.display(),
                info.lines
            ),
        ));
    }
    Chip::new(chip).map_err(|e| gpio_error(chip, line, "open", e))
}

/// Requests `line` of `chip` (e.g. `/dev/gpiochip0`) as an output at `initial` level.
pub fn open_output(chip: &Path, line: u32, initial: PinState) -> Result<GpioPin, BoardError> {
    let handle = check_chip(chip, line)?
        .get_line(line)
        .and_then(|l| {
            l.request(
                LineRequestFlags::OUTPUT,
                u8::from(initial == PinState::High),
                CONSUMER,
            )
        })
        .map_err(|e| gpio_error(chip, line, "GPIO_GET_LINEHANDLE_IOCTL (output)", e))?;
    CdevPin::new(handle)
        .map(GpioPin::Cdev)
        .map_err(|e| gpio_error(chip, line, "GPIO_GET_LINEINFO_IOCTL", e))
}

/// Requests `line` of `chip` as an input. The line is requested without the kernel's
/// ACTIVE_LOW flag, because `CdevPin` applies that flag a second time and would cancel
/// it; polarity is handled by [`CaptureButton`] instead.
pub fn open_input(chip: &Path, line: u32) -> Result<GpioPin, BoardError> {
    let handle = check_chip(chip, line)?
        .get_line(line)
        .and_then(|l| l.request(LineRequestFlags::INPUT, 0, CONSUMER))
        .map_err(|e| gpio_error(chip, line, "GPIO_GET_LINEHANDLE_IOCTL (input)", e))?;
    CdevPin::new(handle)
        .map(GpioPin::Cdev)
        .map_err(|e| gpio_error(chip, line, "GPIO_GET_LINEINFO_IOCTL", e))
}

/// A simulated GPIO line. Clones share the line: keep one in the test, hand the other to
/// the code under test. Works as input (the test sets the level) and output (the test
/// reads it).
#[derive(Debug, Clone, Default)]
pub struct SimPin {
    inner: Arc<SimLine>,
}

#[derive(Debug, Default)]
struct SimLine {
    high: AtomicBool,
    writes: AtomicU64,
    rising_edges: AtomicU64,
    fail: AtomicBool,
}

impl SimPin {
    pub fn new(high: bool) -> Self {
        let pin = SimPin::default();
        pin.inner.high.store(high, Ordering::SeqCst);
        pin
    }

    /// The line's level (what an LED or buzzer would show).
    pub fn is_set_high(&self) -> bool {
        self.inner.high.load(Ordering::SeqCst)
    }

    /// Drives the line from outside, as a button or another circuit would.
    pub fn set_level(&self, high: bool) {
        self.inner.high.store(high, Ordering::SeqCst);
    }

    /// Low → high transitions written through the OutputPin interface (beeps, blinks).
    pub fn rising_edges(&self) -> u64 {
        self.inner.rising_edges.load(Ordering::SeqCst)
    }

    /// Writes through the OutputPin interface.
    pub fn writes(&self) -> u64 {
        self.inner.writes.load(Ordering::SeqCst)
    }

    /// Makes every operation fail (a line taken away, a chip gone) until cleared.
    pub fn set_failing(&self, failing: bool) {
        self.inner.fail.store(failing, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), PinError> {
        if self.inner.fail.load(Ordering::SeqCst) {
            Err(PinError(
                "injected fault: simulated GPIO line failed".into(),
            ))
        } else {
            Ok(())
        }
    }

    fn write(&self, high: bool) -> Result<(), PinError> {
        self.check()?;
        self.inner.writes.fetch_add(1, Ordering::SeqCst);
        if !self.inner.high.swap(high, Ordering::SeqCst) && high {
            self.inner.rising_edges.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

impl ErrorType for SimPin {
    type Error = PinError;
}

impl OutputPin for SimPin {
    fn set_low(&mut self) -> Result<(), PinError> {
        self.write(false)
    }
    fn set_high(&mut self) -> Result<(), PinError> {
        self.write(true)
    }
}

impl InputPin for SimPin {
    fn is_high(&mut self) -> Result<bool, PinError> {
        self.check()?;
        Ok(self.is_set_high())
    }
    fn is_low(&mut self) -> Result<bool, PinError> {
        self.is_high().map(|h| !h)
    }
}

/// A GPIO line of either kind.
pub enum GpioPin {
    Cdev(CdevPin),
    Sim(SimPin),
}

impl fmt::Debug for GpioPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpioPin::Cdev(p) => write!(f, "GpioPin::Cdev(line {})", p.line().offset()),
            GpioPin::Sim(p) => f.debug_tuple("GpioPin::Sim").field(p).finish(),
        }
    }
}

impl From<CdevPin> for GpioPin {
    fn from(p: CdevPin) -> Self {
        GpioPin::Cdev(p)
    }
}

impl From<SimPin> for GpioPin {
    fn from(p: SimPin) -> Self {
        GpioPin::Sim(p)
    }
}

impl ErrorType for GpioPin {
    type Error = PinError;
}

fn cdev_err(e: linux_embedded_hal::CdevPinError) -> PinError {
    PinError(format!("GPIO line: {e}"))
}

impl OutputPin for GpioPin {
    fn set_low(&mut self) -> Result<(), PinError> {
        match self {
            GpioPin::Cdev(p) => p.set_low().map_err(cdev_err),
            GpioPin::Sim(p) => p.set_low(),
        }
    }
    fn set_high(&mut self) -> Result<(), PinError> {
        match self {
            GpioPin::Cdev(p) => p.set_high().map_err(cdev_err),
            GpioPin::Sim(p) => p.set_high(),
        }
    }
}

impl InputPin for GpioPin {
    fn is_high(&mut self) -> Result<bool, PinError> {
        match self {
            GpioPin::Cdev(p) => p.is_high().map_err(cdev_err),
            GpioPin::Sim(p) => p.is_high(),
        }
    }
    fn is_low(&mut self) -> Result<bool, PinError> {
        self.is_high().map(|h| !h)
    }
}

fn pin_failed(role: &'static str, e: impl fmt::Debug) -> BoardError {
    BoardError::Pin {
        role,
        problem: format!("{e:?}"),
    }
}

/// Green status LED: on while the device is ready to classify.
///
/// Contract (for every output role here): the level written MUST be the level the pin
/// drives afterwards, and a failed write MUST leave `is_on` unchanged.
#[derive(Debug)]
pub struct StatusLed<P: OutputPin = GpioPin> {
    pin: P,
    on: bool,
}

impl<P: OutputPin> StatusLed<P> {
    /// Takes the pin and switches the LED off.
    pub fn new(mut pin: P) -> Result<Self, BoardError> {
        pin.set_low().map_err(|e| pin_failed("status LED", e))?;
        Ok(StatusLed { pin, on: false })
    }

    pub fn set(&mut self, on: bool) -> Result<(), BoardError> {
        self.pin
            .set_state(PinState::from(on))
            .map_err(|e| pin_failed("status LED", e))?;
        self.on = on;
        Ok(())
    }

    pub fn is_on(&self) -> bool {
        self.on
    }
}

/// Alert buzzer: sounds when a result needs a person's attention or the device fails.
#[derive(Debug)]
pub struct AlertBuzzer<P: OutputPin = GpioPin> {
    pin: P,
    on: bool,
}

impl<P: OutputPin> AlertBuzzer<P> {
    /// Takes the pin and silences the buzzer.
    pub fn new(mut pin: P) -> Result<Self, BoardError> {
        pin.set_low().map_err(|e| pin_failed("alert buzzer", e))?;
        Ok(AlertBuzzer { pin, on: false })
    }

    pub fn set(&mut self, on: bool) -> Result<(), BoardError> {
        self.pin
            .set_state(PinState::from(on))
            .map_err(|e| pin_failed("alert buzzer", e))?;
        self.on = on;
        Ok(())
    }

    pub fn is_on(&self) -> bool {
        self.on
    }
}

/// The capture button, polled: [`CaptureButton::poll`] returns `true` once per press,
/// when the line has been in the pressed state for the debounce time. Contact bounce
/// shorter than that, in either direction, is ignored.
#[derive(Debug)]
pub struct CaptureButton<P: InputPin = GpioPin> {
    pin: P,
    active_low: bool,
    debounce: Duration,
    /// Debounced state.
    pressed: bool,
    /// Raw state seen last, and since when.
    raw: bool,
    raw_since: Option<Instant>,
}

impl<P: InputPin> CaptureButton<P> {
    /// `active_low`: pressed pulls the line low (button to ground with a pull-up, the
    /// usual wiring).
    pub fn new(pin: P, active_low: bool, debounce: Duration) -> Self {
        CaptureButton {
            pin,
            active_low,
            debounce,
            pressed: false,
            raw: false,
            raw_since: None,
        }
    }

    /// Samples the line at `now` (from a [`crate::Clock`]); true on the sample where a
    /// press becomes stable. Call it at least a few times per debounce period.
    pub fn poll(&mut self, now: Instant) -> Result<bool, BoardError> {
        let high = self
            .pin
            .is_high()
            .map_err(|e| pin_failed("capture button", e))?;
        let raw = high != self.active_low;
        if raw != self.raw || self.raw_since.is_none() {
            self.raw = raw;
            self.raw_since = Some(now);
        }
        let stable = self
            .raw_since
            .is_some_and(|since| now.saturating_duration_since(since) >= self.debounce);
        if stable && raw != self.pressed {
            self.pressed = raw;
            return Ok(raw);
        }
        Ok(false)
    }

    /// The debounced state.
    pub fn is_pressed(&self) -> bool {
        self.pressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, SimClock};
    use crate::error::ErrorKind;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn led_and_buzzer_drive_their_pins() {
        let led_line = SimPin::new(true);
        let buzzer_line = SimPin::new(false);
        let mut led = StatusLed::new(GpioPin::from(led_line.clone())).unwrap();
        assert!(!led_line.is_set_high(), "new() switches the LED off");
        led.set(true).unwrap();
        assert!(led_line.is_set_high() && led.is_on());

        let mut buzzer = AlertBuzzer::new(buzzer_line.clone()).unwrap();
        for _ in 0..3 {
            buzzer.set(true).unwrap();
            buzzer.set(false).unwrap();
        }
        assert_eq!(buzzer_line.rising_edges(), 3);
        assert!(!buzzer_line.is_set_high());

        led_line.set_failing(true);
        assert_eq!(led.set(false).unwrap_err().kind(), ErrorKind::Pin);
        assert!(led.is_on(), "a failed write leaves the state as it was");
    }

    #[test]
    fn button_reports_each_press_once_after_debounce() {
        let clock = SimClock::new();
        let line = SimPin::new(true); // active low, released
        let mut button = CaptureButton::new(GpioPin::from(line.clone()), true, 20 * MS);
        let mut presses = 0;
        let step = |button: &mut CaptureButton, ms: u64| {
            clock.advance(Duration::from_millis(ms));
            button.poll(clock.now()).unwrap()
        };
        assert!(!step(&mut button, 5));

        // Bounce: low/high flips every 3 ms, never stable for 20 ms.
        for i in 0..6 {
            line.set_level(i % 2 == 1);
            assert!(!step(&mut button, 3), "bounce must not count as a press");
        }
        // Settles pressed (low): reported once when 20 ms stable, not again while held.
        line.set_level(false);
        for _ in 0..10 {
            presses += u32::from(step(&mut button, 5));
        }
        assert_eq!(presses, 1);
        assert!(button.is_pressed());

        // Release with bounce, then a second clean press.
        line.set_level(true);
        step(&mut button, 2);
        line.set_level(false);
        step(&mut button, 2);
        line.set_level(true);
        for _ in 0..10 {
            presses += u32::from(step(&mut button, 5));
        }
        assert_eq!(presses, 1, "release is not a press");
        assert!(!button.is_pressed());
        line.set_level(false);
        for _ in 0..10 {
            presses += u32::from(step(&mut button, 5));
        }
        assert_eq!(presses, 2);
    }

    #[test]
    fn short_glitch_is_ignored_active_high() {
        let clock = SimClock::new();
        let line = SimPin::new(false);
        let mut button = CaptureButton::new(line.clone(), false, 30 * MS);
        button.poll(clock.now()).unwrap();
        line.set_level(true);
        clock.advance(10 * MS);
        assert!(!button.poll(clock.now()).unwrap());
        line.set_level(false);
        clock.advance(100 * MS);
        assert!(!button.poll(clock.now()).unwrap());
        assert!(!button.is_pressed());
    }

    #[test]
    fn missing_gpio_chip_is_not_found() {
        let err = open_output(Path::new("/dev/gpiochip99"), 17, PinState::Low).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains("/dev/gpiochip99"), "{err}");
        let err = open_input(Path::new("/dev/gpiochip99"), 27).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    }

    #[test]
    fn non_gpio_file_is_unsupported() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = open_input(file.path(), 3).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    }
}
