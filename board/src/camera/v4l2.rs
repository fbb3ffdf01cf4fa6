//! Linux camera through V4L2 (USB UVC cameras and CSI bridges that offer YUYV, MJPEG or
//! GREY), memory-mapped streaming, one fresh frame per request.

use std::path::{Path, PathBuf};
use std::time::Duration;

use log::{debug, warn};
use v4l::buffer::{Flags, Type};
use v4l::capability::Flags as CapFlags;
use v4l::io::mmap::Stream;
use v4l::io::traits::{CaptureStream, Stream as _};
use v4l::video::Capture;
use v4l::{Device, Format, FourCC};

use super::{check_dimensions, Camera, Frame, PixelFormat};
use crate::error::BoardError;

const WHAT: &str = "camera";

/// Buffers in the driver queue. Few on purpose: every queued buffer can hold a stale frame
/// that has to be skipped on the next request, and each costs a full frame of RAM.
const BUFFERS: u32 = 3;

/// A V4L2 capture device streaming into memory-mapped buffers.
///
/// The stream runs from the first capture on, so a request costs about one frame
/// period instead of a stream start (which on UVC cameras also restarts auto exposure).
/// Frames that were already waiting in the queue when a capture starts are skipped.
pub struct V4l2Camera {
    path: PathBuf,
    // Declared before `device` so it is dropped first; `None` after an error, rebuilt on
    // the next capture.
    stream: Option<Stream<'static>>,
    device: Device,
    format: PixelFormat,
    width: u32,
    height: u32,
    /// Bytes per line as the driver lays them out (may include padding).
    stride: u32,
    card: String,
    timeout: Duration,
    sequence: u64,
}

impl V4l2Camera {
    /// Opens `path`, checks it is a streaming capture device and negotiates `format` at
    /// `width` × `height`. A driver that picks another size is accepted (frames report the
    /// real size, a warning is logged); one that refuses the pixel format is an error that
    /// lists what it offers.
    pub fn open(
        path: impl AsRef<Path>,
        format: PixelFormat,
        width: u32,
        height: u32,
    ) -> Result<Self, BoardError> {
        let path = path.as_ref().to_path_buf();
        check_dimensions(format, width, height).map_err(|p| {
            BoardError::invalid_argument("camera size", format!("{format} {width}x{height}: {p}"))
        })?;
        let device =
            Device::with_path(&path).map_err(|e| BoardError::from_io(WHAT, &path, "open", e))?;
        let caps = device
            .query_caps()
            .map_err(|e| BoardError::from_io(WHAT, &path, "VIDIOC_QUERYCAP", e))?;
        if !caps.capabilities.contains(CapFlags::VIDEO_CAPTURE)
            || !caps.capabilities.contains(CapFlags::STREAMING)
        {
            return Err(BoardError::Negotiation {
                what: WHAT,
                device: path,
                problem: format!(
                    "{} ({}) is not a single-planar streaming capture device (capabilities: {})",
                    caps.card, caps.driver, caps.capabilities
                ),
            });
        }
        let wanted = Format::new(width, height, FourCC::new(&format.fourcc()));
        let got = device
            .set_format(&wanted)
            .map_err(|e| BoardError::from_io(WHAT, &path, "VIDIOC_S_FMT", e))?;
        if got.fourcc != wanted.fourcc {
            let offered = device
                .enum_formats()
                .map(|fs| {
                    fs.iter()
                        .map(|f| f.fourcc.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(|e| format!("unknown ({e})"));
            return Err(BoardError::Negotiation {
                what: WHAT,
                device: path,
                problem: format!("asked for {format}, the driver offers: {offered}"),
            });
        }
        check_dimensions(format, got.width, got.height).map_err(|p| BoardError::Negotiation {
            what: WHAT,
            device: path.clone(),
            problem: format!("driver chose {}x{}: {p}", got.width, got.height),
        })?;
        let row = format.frame_len(got.width, 1).unwrap_or(0) as u32;
        if got.stride < row {
            return Err(BoardError::Negotiation {
                what: WHAT,
                device: path,
                problem: format!(
                    "driver reports {} bytes per line, {format} needs {row}",
                    got.stride
                ),
            });
        }
        if (got.width, got.height) != (width, height) {
            warn!(
                "camera {}: asked for {width}x{height}, driver chose {}x{}",
                path.display(),
                got.width,
                got.height
            );
        }
        debug!(
            "camera {}: {} ({}) {got}",
            path.display(),
            caps.card,
            caps.driver
        );
        Ok(V4l2Camera {
            path,
            stream: None,
            device,
            format,
            width: got.width,
            height: got.height,
            stride: got.stride,
            card: caps.card,
            timeout: Duration::from_secs(2),
            sequence: 0,
        })
    }

    /// Longest wait for one frame (default 2 s) before [`BoardError::Timeout`].
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout.max(Duration::from_millis(1));
    }

    fn stream(&mut self) -> Result<&mut Stream<'static>, BoardError> {
        if self.stream.is_none() {
            let mut stream = Stream::with_buffers(&self.device, Type::VideoCapture, BUFFERS)
                .map_err(|e| BoardError::from_io(WHAT, &self.path, "VIDIOC_REQBUFS / mmap", e))?;
            stream.set_timeout(self.timeout);
            self.stream = Some(stream);
        }
        // Just filled above when it was empty.
        self.stream.as_mut().ok_or_else(|| BoardError::Negotiation {
            what: WHAT,
            device: self.path.clone(),
            problem: "stream vanished".into(),
        })
    }

    /// Stops and releases the stream so the next capture starts a clean one. `v4l`'s
    /// `Stream::next` re-queues the buffer it handed out last *before* dequeuing, so
    /// after a failed dequeue it would queue that buffer twice (EINVAL forever).
    fn reset_stream(&mut self) {
        if let Some(stream) = self.stream.take() {
            retire(stream, &self.path);
        }
    }

    fn try_capture(&mut self) -> Result<Frame, BoardError> {
        let requested = monotonic_micros();
        let timeout = self.timeout;
        let path = self.path.clone();
        let layout = Layout {
            format: self.format,
            width: self.width,
            height: self.height,
            stride: self.stride as usize,
        };
        let mut short = None;
        // At most BUFFERS frames can have been completed before this call; after skipping
        // that many, the next one was necessarily exposed after it. Timestamps let us stop
        // skipping early when the driver uses the monotonic clock (uvcvideo does).
        for skipped in 0..=BUFFERS {
            let stream = self.stream()?;
            let (bytes, meta) = stream.next().map_err(|e| match e.kind() {
                std::io::ErrorKind::TimedOut => BoardError::Timeout {
                    what: WHAT,
                    device: path.clone(),
                    after: timeout,
                },
                _ => BoardError::from_io(WHAT, &path, "VIDIOC_DQBUF", e),
            })?;
            let monotonic = meta.flags & Flags::TIMESTAMP_MASK == Flags::TIMESTAMP_MONOTONIC;
            let taken = meta.timestamp.sec * 1_000_000 + meta.timestamp.usec;
            let stale = if monotonic {
                taken < requested
            } else {
                skipped < BUFFERS
            };
            if meta.flags.contains(Flags::ERROR) {
                debug!(
                    "camera {}: driver flagged frame {} as corrupt",
                    path.display(),
                    meta.sequence
                );
                continue;
            }
            if stale && skipped < BUFFERS {
                continue;
            }
            let used = (meta.bytesused as usize).min(bytes.len());
            let data = match layout.pack(&bytes[..used], &path) {
                Ok(data) => data,
                Err(e) => {
                    // A short buffer is one lost frame, not a broken stream: skip it.
                    debug!("{e}");
                    short = Some(e);
                    continue;
                }
            };
            let frame = Frame {
                format: self.format,
                width: self.width,
                height: self.height,
                data,
                sequence: self.sequence,
            };
            frame.validate()?;
            self.sequence += 1;
            return Ok(frame);
        }
        Err(short.unwrap_or_else(|| BoardError::Negotiation {
            what: WHAT,
            device: path,
            problem: format!(
                "{} frames in a row were flagged corrupt by the driver",
                BUFFERS + 1
            ),
        }))
    }
}

/// How the driver lays a frame out in its buffer.
struct Layout {
    format: PixelFormat,
    width: u32,
    height: u32,
    stride: usize,
}

impl Layout {
    /// Copies a frame out of a driver buffer, dropping row padding, after checking the
    /// driver really filled it (a short `bytesused` happens when a USB transfer drops).
    fn pack(&self, data: &[u8], path: &Path) -> Result<Vec<u8>, BoardError> {
        let Some(row) = self.format.frame_len(self.width, 1) else {
            return Ok(data.to_vec());
        };
        let rows = self.height as usize;
        let needed = self.stride * (rows - 1) + row;
        if data.len() < needed {
            return Err(BoardError::Negotiation {
                what: WHAT,
                device: path.to_path_buf(),
                problem: format!(
                    "driver delivered {} bytes, a {}x{} {} frame needs {needed}",
                    data.len(),
                    self.width,
                    self.height,
                    self.format
                ),
            });
        }
        let mut out = Vec::with_capacity(row * rows);
        for y in 0..rows {
            out.extend_from_slice(&data[y * self.stride..y * self.stride + row]);
        }
        Ok(out)
    }
}

/// Stops a stream, and leaks it if stopping fails: `v4l`'s `Drop for Stream` panics when
/// VIDIOC_STREAMOFF fails with anything but ENODEV, and a panic in a destructor can abort
/// the daemon. A leaked stream costs a few frame buffers and one descriptor.
fn retire(mut stream: Stream<'static>, path: &Path) {
    match stream.stop() {
        Ok(()) => drop(stream),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => drop(stream),
        Err(e) => {
            warn!(
                "camera {}: VIDIOC_STREAMOFF failed ({e}); leaking its buffers",
                path.display()
            );
            std::mem::forget(stream);
        }
    }
}

fn monotonic_micros() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000 + ts.tv_nsec / 1_000
}

impl Drop for V4l2Camera {
    fn drop(&mut self) {
        self.reset_stream();
    }
}

impl Camera for V4l2Camera {
    fn capture(&mut self) -> Result<Frame, BoardError> {
        let result = self.try_capture();
        if result.is_err() {
            self.reset_stream();
        }
        result
    }

    fn describe(&self) -> String {
        format!(
            "V4L2 camera {} ({}) {} {}x{}",
            self.path.display(),
            self.card,
            self.format,
            self.width,
            self.height
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn missing_device_is_not_found() {
        let err = V4l2Camera::open("/dev/video99", PixelFormat::Yuyv, 640, 480)
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains("/dev/video99"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_a_camera_is_unsupported() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = V4l2Camera::open(file.path(), PixelFormat::Mjpeg, 640, 480)
            .err()
            .unwrap();
        // ENOTTY natively, ENOSYS under qemu-user: both mean "no V4L2 here".
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        assert!(err.to_string().contains("VIDIOC_QUERYCAP"), "{err}");
    }

    #[test]
    fn bad_size_is_rejected_before_opening() {
        let err = V4l2Camera::open("/dev/video99", PixelFormat::Yuyv, 641, 480)
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    }
}
