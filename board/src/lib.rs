//! Board support for edgedx: camera, watchdog, serial link and GPIO roles (status LED,
//! alert buzzer, capture button), each behind a small trait or embedded-hal pin with a
//! Linux implementation and a simulated one, plus board profiles.
//!
//! The simulated implementations are not mocks of the Linux ones: they are small devices
//! of their own (an image directory that plays as a camera, a watchdog on a clock you
//! advance, pins whose level a test can set and read) so that the daemon's real logic runs
//! in tests, including under qemu-user where V4L2, GPIO and watchdog ioctls return ENOSYS.
//! The serial link needs no simulation: tests use a real pseudo-terminal.

pub mod camera;
pub mod clock;
mod error;
pub mod pins;
pub mod profile;
pub mod serial;
pub mod watchdog;

#[cfg(feature = "v4l2")]
pub use camera::V4l2Camera;
pub use camera::{Camera, Frame, ImageKind, PixelFormat, SimCamera, SimCameraHandle};
pub use clock::{Clock, OffsetFileClock, SimClock, SystemClock};
pub use error::{BoardError, ErrorKind, FrameProblem};
pub use pins::{AlertBuzzer, CaptureButton, GpioPin, PinError, SimPin, StatusLed};
pub use profile::Profile;
pub use serial::{open_pty, open_serial, PtyPair, SerialPort, SerialReader, SerialWriter};
pub use watchdog::{DevWatchdog, SimWatchdog, SimWatchdogHandle, Watchdog};
