//! The crate's error type: one enum, each variant carrying what a person needs to act on
//! it (which device or file, which field, which limit).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::camera::PixelFormat;

/// Everything that can go wrong talking to the board.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BoardError {
    /// The device node does not exist (or the driver says there is no device behind it).
    #[error("{what} {}: no such device ({source})", device.display())]
    NotFound {
        what: &'static str,
        device: PathBuf,
        source: io::Error,
    },
    /// The device exists but this user may not open it.
    #[error("{what} {}: permission denied; is the service user in the group that owns it (dialout, video, gpio)? ({source})", device.display())]
    PermissionDenied {
        what: &'static str,
        device: PathBuf,
        source: io::Error,
    },
    /// Another process holds the device.
    #[error("{what} {}: device busy{hint} ({source})", device.display())]
    Busy {
        what: &'static str,
        device: PathBuf,
        /// Who probably holds it, starting with "; " (empty when unknown).
        hint: &'static str,
        source: io::Error,
    },
    /// The node is not the expected kind of device, or the kernel (or qemu-user, which
    /// answers ENOSYS to V4L2, GPIO and watchdog ioctls) does not implement the request.
    #[error("{what} {}: {op} is not supported by this device or kernel ({source})", device.display())]
    Unsupported {
        what: &'static str,
        device: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    /// Any other I/O failure on a device or file.
    #[error("{what} {}: {op} failed: {source}", device.display())]
    Io {
        what: &'static str,
        device: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    /// Reading or driving a GPIO line failed after it was opened.
    #[error("{role}: GPIO line failed: {problem}")]
    Pin { role: &'static str, problem: String },
    /// The device did not deliver in time.
    #[error("{what} {}: nothing within {after:?}", device.display())]
    Timeout {
        what: &'static str,
        device: PathBuf,
        after: Duration,
    },
    /// The device or driver accepted the request but answered with something else.
    #[error("{what} {}: {problem}", device.display())]
    Negotiation {
        what: &'static str,
        device: PathBuf,
        problem: String,
    },
    /// A captured frame is not what its header says it is.
    #[error("invalid {format} frame {width}x{height}: {problem}")]
    InvalidFrame {
        format: PixelFormat,
        width: u32,
        height: u32,
        problem: FrameProblem,
    },
    /// A value the caller chose is out of range (baud rate, timeout, image size).
    #[error("invalid {what}: {problem}")]
    InvalidArgument { what: &'static str, problem: String },
    /// A board profile did not parse or validate.
    #[error("board profile {file}: {}{problem}", field.as_deref().map(|f| format!("field `{f}`: ")).unwrap_or_default())]
    Profile {
        file: String,
        field: Option<String>,
        problem: String,
    },
    /// The simulated camera's image directory is unusable.
    #[error("simulated camera {}: {problem}", dir.display())]
    SimSource { dir: PathBuf, problem: String },
    /// A fault a test asked a simulated device to produce.
    #[error("injected fault: {what}")]
    Injected { what: String },
}

/// Why a frame was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameProblem {
    /// Width or height is zero, too large, or odd where the format packs pixel pairs.
    BadDimensions(String),
    /// The buffer is shorter or longer than width × height × bytes per pixel.
    WrongLength { expected: usize, actual: usize },
    /// MJPEG data that does not start with the JPEG start-of-image marker.
    MissingJpegSoi,
    /// MJPEG data too short to hold even the markers (length given).
    JpegTooShort(usize),
}

impl fmt::Display for FrameProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameProblem::BadDimensions(why) => write!(f, "bad dimensions: {why}"),
            FrameProblem::WrongLength { expected, actual } => {
                let what = if actual < expected {
                    "truncated"
                } else {
                    "oversized"
                };
                write!(f, "{what} data: {actual} bytes, expected {expected}")
            }
            FrameProblem::JpegTooShort(len) => {
                write!(
                    f,
                    "truncated JPEG: {len} bytes cannot hold the start and end markers"
                )
            }
            FrameProblem::MissingJpegSoi => {
                f.write_str("not a JPEG: data does not start with the FF D8 start-of-image marker")
            }
        }
    }
}

/// Coarse classes of [`BoardError`], stable for logs and machine-readable output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    NotFound,
    PermissionDenied,
    Busy,
    Unsupported,
    Io,
    Pin,
    Timeout,
    Negotiation,
    InvalidFrame,
    InvalidArgument,
    Profile,
    SimSource,
    Injected,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::Busy => "busy",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Io => "io",
            ErrorKind::Pin => "pin",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Negotiation => "negotiation",
            ErrorKind::InvalidFrame => "invalid_frame",
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::Profile => "profile",
            ErrorKind::SimSource => "sim_source",
            ErrorKind::Injected => "injected",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl BoardError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            BoardError::NotFound { .. } => ErrorKind::NotFound,
            BoardError::PermissionDenied { .. } => ErrorKind::PermissionDenied,
            BoardError::Busy { .. } => ErrorKind::Busy,
            BoardError::Unsupported { .. } => ErrorKind::Unsupported,
            BoardError::Io { .. } => ErrorKind::Io,
            BoardError::Pin { .. } => ErrorKind::Pin,
            BoardError::Timeout { .. } => ErrorKind::Timeout,
            BoardError::Negotiation { .. } => ErrorKind::Negotiation,
            BoardError::InvalidFrame { .. } => ErrorKind::InvalidFrame,
            BoardError::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            BoardError::Profile { .. } => ErrorKind::Profile,
            BoardError::SimSource { .. } => ErrorKind::SimSource,
            BoardError::Injected { .. } => ErrorKind::Injected,
        }
    }

    /// Classifies an OS error from `op` on `device` so that the usual deployment mistakes
    /// (wrong path, missing group, device held by someone else, not that kind of device)
    /// each get their own variant instead of a bare errno.
    pub(crate) fn from_io(
        what: &'static str,
        device: &Path,
        op: &'static str,
        source: io::Error,
    ) -> Self {
        let device = device.to_path_buf();
        match source.raw_os_error() {
            Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => BoardError::NotFound {
                what,
                device,
                source,
            },
            Some(libc::EACCES | libc::EPERM) => BoardError::PermissionDenied {
                what,
                device,
                source,
            },
            Some(libc::EBUSY) => BoardError::Busy {
                what,
                device,
                hint: "",
                source,
            },
            Some(libc::ENOSYS | libc::ENOTTY | libc::EOPNOTSUPP) => BoardError::Unsupported {
                what,
                device,
                op,
                source,
            },
            _ => match source.kind() {
                io::ErrorKind::NotFound => BoardError::NotFound {
                    what,
                    device,
                    source,
                },
                io::ErrorKind::PermissionDenied => BoardError::PermissionDenied {
                    what,
                    device,
                    source,
                },
                _ => BoardError::Io {
                    what,
                    device,
                    op,
                    source,
                },
            },
        }
    }

    pub(crate) fn from_errno(
        what: &'static str,
        device: &Path,
        op: &'static str,
        errno: nix::errno::Errno,
    ) -> Self {
        Self::from_io(what, device, op, io::Error::from_raw_os_error(errno as i32))
    }

    pub(crate) fn invalid_argument(what: &'static str, problem: impl Into<String>) -> Self {
        BoardError::InvalidArgument {
            what,
            problem: problem.into(),
        }
    }
}
