//! The serial link to the exam-room UI host: a UART or USB CDC-ACM gadget tty, opened and
//! configured here (raw 8N1) and driven through linux-embedded-hal's [`Serial`], with a
//! reader half and a writer half that can live on two threads.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, FromRawFd, IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use embedded_hal_nb::serial::Read as _;
use linux_embedded_hal::serialport::{SerialPort as _, TTYPort};
use linux_embedded_hal::Serial;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::sys::termios::{self, BaudRate, ControlFlags, FlushArg, SetArg, SpecialCharacterIndices};

use crate::error::BoardError;

const WHAT: &str = "serial port";

/// Baud rates accepted by [`open_serial`]: the standard termios speeds that UARTs on the
/// supported boards (PL011, i.MX UART) can generate. CDC-ACM gadgets ignore the value.
pub const SUPPORTED_BAUD: &[u32] = &[
    1_200, 2_400, 4_800, 9_600, 19_200, 38_400, 57_600, 115_200, 230_400, 460_800, 500_000,
    576_000, 921_600, 1_000_000, 1_152_000, 1_500_000, 2_000_000, 2_500_000, 3_000_000, 3_500_000,
    4_000_000,
];

/// The termios constant for `baud`, or `None` when it is not one of [`SUPPORTED_BAUD`].
pub fn baud_rate(baud: u32) -> Option<BaudRate> {
    Some(match baud {
        1_200 => BaudRate::B1200,
        2_400 => BaudRate::B2400,
        4_800 => BaudRate::B4800,
        9_600 => BaudRate::B9600,
        19_200 => BaudRate::B19200,
        38_400 => BaudRate::B38400,
        57_600 => BaudRate::B57600,
        115_200 => BaudRate::B115200,
        230_400 => BaudRate::B230400,
        460_800 => BaudRate::B460800,
        500_000 => BaudRate::B500000,
        576_000 => BaudRate::B576000,
        921_600 => BaudRate::B921600,
        1_000_000 => BaudRate::B1000000,
        1_152_000 => BaudRate::B1152000,
        1_500_000 => BaudRate::B1500000,
        2_000_000 => BaudRate::B2000000,
        2_500_000 => BaudRate::B2500000,
        3_000_000 => BaudRate::B3000000,
        3_500_000 => BaudRate::B3500000,
        4_000_000 => BaudRate::B4000000,
        _ => return None,
    })
}

fn unsupported_baud(baud: u32) -> BoardError {
    BoardError::invalid_argument(
        "baud rate",
        format!(
            "{baud} is not a standard termios speed; use one of {}",
            SUPPORTED_BAUD
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
}

/// Raw 8N1, no flow control, modem lines ignored, at `speed` when given.
fn make_raw(fd: impl AsFd, path: &Path, speed: Option<BaudRate>) -> Result<(), BoardError> {
    let fd = fd.as_fd();
    let err = |op, e| BoardError::from_errno(WHAT, path, op, e);
    let mut t = termios::tcgetattr(fd).map_err(|e| err("tcgetattr", e))?;
    termios::cfmakeraw(&mut t);
    t.control_flags &= !(ControlFlags::PARENB | ControlFlags::CSTOPB | ControlFlags::CRTSCTS);
    t.control_flags |= ControlFlags::CS8 | ControlFlags::CLOCAL | ControlFlags::CREAD;
    // Reads are preceded by poll(2), so a read(2) only runs when data is there.
    t.control_chars[SpecialCharacterIndices::VMIN as usize] = 0;
    t.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
    if let Some(speed) = speed {
        termios::cfsetspeed(&mut t, speed).map_err(|e| err("cfsetspeed", e))?;
    }
    // Plain TCSETS through glibc's tcsetattr: qemu-user 7.2 lacks TCGETS2, which is what
    // serialport's own open path uses, so configuring here keeps the code testable there.
    termios::tcsetattr(fd, SetArg::TCSANOW, &t).map_err(|e| err("tcsetattr", e))?;
    Ok(())
}

/// Opens and configures the tty at `path` (raw 8N1 at `baud`), dropping any bytes that
/// arrived before it was configured.
pub fn open_serial(path: &Path, baud: u32) -> Result<SerialPort, BoardError> {
    let speed = baud_rate(baud).ok_or_else(|| unsupported_baud(baud))?;
    // O_NONBLOCK: a UART without CLOCAL yet would block the open until carrier detect.
    // O_NOCTTY: the daemon must never get the link as its controlling terminal (a hangup
    // would then send it SIGHUP).
    let fd: OwnedFd = nix::fcntl::open(
        path,
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| BoardError::from_errno(WHAT, path, "open", e))?;
    make_raw(&fd, path, Some(speed))?;
    termios::tcflush(&fd, FlushArg::TCIFLUSH)
        .map_err(|e| BoardError::from_errno(WHAT, path, "tcflush", e))?;
    SerialPort::from_fd(fd, path.to_path_buf(), baud)
}

/// A pseudo-terminal pair for tests: the master end as a [`SerialPort`], the slave's path
/// for the program under test to [`open_serial`]. The slave is held open (and raw) until
/// the pair is dropped, so the master does not see a hangup before the program opens it.
pub struct PtyPair {
    pub master: SerialPort,
    pub slave_path: PathBuf,
    _slave: OwnedFd,
}

/// Opens a pseudo-terminal pair (see [`PtyPair`]).
pub fn open_pty() -> Result<PtyPair, BoardError> {
    let ptmx = Path::new("/dev/ptmx");
    let pty = nix::pty::openpty(None, None)
        .map_err(|e| BoardError::from_errno("pseudo-terminal", ptmx, "openpty", e))?;
    let slave_path = nix::unistd::ttyname(&pty.slave)
        .map_err(|e| BoardError::from_errno("pseudo-terminal", ptmx, "ttyname", e))?;
    make_raw(&pty.slave, &slave_path, None)?;
    make_raw(&pty.master, ptmx, None)?;
    let master = SerialPort::from_fd(pty.master, PathBuf::from("/dev/ptmx"), 0)?;
    Ok(PtyPair {
        master,
        slave_path,
        _slave: pty.slave,
    })
}

/// An open serial link; [`SerialPort::split`] gives halves for a reader thread and a
/// writer thread.
pub struct SerialPort {
    reader: SerialReader,
    writer: SerialWriter,
}

impl SerialPort {
    fn from_fd(fd: OwnedFd, path: PathBuf, baud: u32) -> Result<Self, BoardError> {
        // SAFETY: `fd` is an open tty descriptor we own; ownership moves into the TTYPort,
        // which closes it on drop.
        let tty = unsafe { TTYPort::from_raw_fd(fd.into_raw_fd()) };
        let writer_tty = tty
            .try_clone_native()
            .map_err(|e| BoardError::from_io(WHAT, &path, "dup", io::Error::from(e)))?;
        Ok(SerialPort {
            reader: SerialReader {
                serial: Serial(tty),
                path: path.clone(),
                baud,
            },
            writer: SerialWriter {
                serial: Serial(writer_tty),
                path,
                timeout: Duration::from_secs(5),
            },
        })
    }

    /// See [`SerialReader::read`].
    pub fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, BoardError> {
        self.reader.read(buf, timeout)
    }

    /// See [`SerialWriter::write_all`].
    pub fn write_all(&mut self, data: &[u8]) -> Result<(), BoardError> {
        self.writer.write_all(data)
    }

    /// A second handle on the same open tty.
    pub fn try_clone(&self) -> Result<SerialPort, BoardError> {
        Ok(SerialPort {
            reader: self.reader.try_clone()?,
            writer: self.writer.try_clone()?,
        })
    }

    pub fn split(self) -> (SerialReader, SerialWriter) {
        (self.reader, self.writer)
    }

    pub fn path(&self) -> &Path {
        &self.reader.path
    }

    /// The configured baud rate (0 for a pseudo-terminal master).
    pub fn baud(&self) -> u32 {
        self.reader.baud
    }
}

/// The receiving half of a [`SerialPort`].
pub struct SerialReader {
    serial: Serial,
    path: PathBuf,
    baud: u32,
}

impl SerialReader {
    /// Waits up to `timeout` for data, then returns what is available, at most
    /// `buf.len()` bytes; `Ok(0)` means nothing arrived in time. A hangup (USB cable
    /// pulled, other end of a pseudo-terminal closed) is an error.
    pub fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, BoardError> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.set_timeout(timeout)?;
        // The wait for the first byte goes through the HAL's non-blocking read, whose
        // WouldBlock is exactly "nothing within the timeout".
        match self.serial.read() {
            Ok(byte) => buf[0] = byte,
            Err(linux_embedded_hal::nb::Error::WouldBlock) => return Ok(0),
            Err(linux_embedded_hal::nb::Error::Other(e)) => {
                return Err(BoardError::from_io(
                    WHAT,
                    &self.path,
                    "read",
                    io::Error::from(*e.inner()),
                ))
            }
        }
        // The rest is taken in one read(2) of the inner TTYPort: the HAL reads one byte per
        // poll + read pair, two system calls a byte, too slow for image uploads over USB
        // CDC-ACM (and very slow under qemu-user).
        self.set_timeout(Duration::ZERO)?;
        match self.serial.0.read(&mut buf[1..]) {
            Ok(n) => Ok(1 + n),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(1)
            }
            // The byte already taken must not be lost: report it, the error returns on the
            // next call.
            Err(_) => Ok(1),
        }
    }

    fn set_timeout(&mut self, timeout: Duration) -> Result<(), BoardError> {
        self.serial
            .0
            .set_timeout(timeout)
            .map_err(|e| BoardError::from_io(WHAT, &self.path, "set timeout", io::Error::from(e)))
    }

    pub fn try_clone(&self) -> Result<SerialReader, BoardError> {
        Ok(SerialReader {
            serial: clone_serial(&self.serial, &self.path)?,
            path: self.path.clone(),
            baud: self.baud,
        })
    }

    /// The HAL serial, for code written against the embedded-hal-nb traits.
    pub fn hal(&mut self) -> &mut Serial {
        &mut self.serial
    }
}

/// The sending half of a [`SerialPort`].
pub struct SerialWriter {
    serial: Serial,
    path: PathBuf,
    timeout: Duration,
}

impl SerialWriter {
    /// Writes all of `data`, or fails with [`BoardError::Timeout`] if the line accepts
    /// nothing for the write timeout (default 5 s; the other end stopped reading).
    ///
    /// Goes through the inner TTYPort's `io::Write` rather than the HAL's byte-at-a-time
    /// `write`: on a USB CDC-ACM gadget each write(2) becomes its own USB transfer, so one
    /// byte per call would cut throughput by orders of magnitude.
    pub fn write_all(&mut self, data: &[u8]) -> Result<(), BoardError> {
        self.serial.0.set_timeout(self.timeout).map_err(|e| {
            BoardError::from_io(WHAT, &self.path, "set timeout", io::Error::from(e))
        })?;
        let mut rest = data;
        let mut last_progress = Instant::now();
        while !rest.is_empty() {
            match self.serial.0.write(rest) {
                Ok(0) => {
                    return Err(BoardError::from_io(
                        WHAT,
                        &self.path,
                        "write",
                        io::Error::from(io::ErrorKind::WriteZero),
                    ))
                }
                Ok(n) => {
                    rest = &rest[n..];
                    last_progress = Instant::now();
                }
                // The descriptor is non-blocking (shared with the reader half): poll said
                // writable but the buffer filled in between. Try again within the timeout.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) && last_progress.elapsed() < self.timeout =>
                {
                    std::thread::yield_now();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                    ) =>
                {
                    return Err(BoardError::Timeout {
                        what: WHAT,
                        device: self.path.clone(),
                        after: self.timeout,
                    })
                }
                Err(e) => return Err(BoardError::from_io(WHAT, &self.path, "write", e)),
            }
        }
        Ok(())
    }

    /// Waits until the kernel has sent everything written (tcdrain, through the HAL).
    pub fn flush(&mut self) -> Result<(), BoardError> {
        linux_embedded_hal::nb::block!(embedded_hal_nb::serial::Write::flush(&mut self.serial))
            .map_err(|e| {
                BoardError::from_io(WHAT, &self.path, "tcdrain", io::Error::from(*e.inner()))
            })
    }

    /// How long [`SerialWriter::write_all`] waits for the line to accept more bytes.
    pub fn set_write_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub fn try_clone(&self) -> Result<SerialWriter, BoardError> {
        Ok(SerialWriter {
            serial: clone_serial(&self.serial, &self.path)?,
            path: self.path.clone(),
            timeout: self.timeout,
        })
    }

    /// The HAL serial, for code written against the embedded-hal-nb traits.
    pub fn hal(&mut self) -> &mut Serial {
        &mut self.serial
    }
}

fn clone_serial(serial: &Serial, path: &Path) -> Result<Serial, BoardError> {
    serial
        .0
        .try_clone_native()
        .map(Serial)
        .map_err(|e| BoardError::from_io(WHAT, path, "dup", io::Error::from(e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use std::thread;

    fn read_exactly(r: &mut SerialReader, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n);
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(60);
        while out.len() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} bytes arrived",
                out.len()
            );
            let want = (n - out.len()).min(buf.len());
            let got = r
                .read(&mut buf[..want], Duration::from_millis(500))
                .unwrap();
            out.extend_from_slice(&buf[..got]);
        }
        out
    }

    fn pattern(len: usize, seed: u32) -> Vec<u8> {
        // Every byte value, in an order that is not a plain ramp, so a dropped or
        // repeated chunk shows up.
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
            .collect()
    }

    #[test]
    fn bytes_go_both_ways_unmodified() {
        let pty = open_pty().unwrap();
        let port = open_serial(&pty.slave_path, 115_200).unwrap();
        assert_eq!(port.baud(), 115_200);
        let (mut dev_r, mut dev_w) = port.split();
        let (mut host_r, mut host_w) = pty.master.split();
        // Bytes a cooked tty would eat or rewrite: CR, LF, ^C, ^D, XON/XOFF, DEL, NUL.
        let tricky = b"\r\n\x03\x04\x11\x13\x7f\x00\xff hello";
        dev_w.write_all(tricky).unwrap();
        assert_eq!(read_exactly(&mut host_r, tricky.len()), tricky);
        host_w.write_all(tricky).unwrap();
        assert_eq!(read_exactly(&mut dev_r, tricky.len()), tricky);
    }

    #[test]
    fn sixty_four_kib_full_duplex_from_four_threads() {
        const N: usize = 64 * 1024;
        let pty = open_pty().unwrap();
        let port = open_serial(&pty.slave_path, 921_600).unwrap();
        let (mut dev_r, mut dev_w) = port.split();
        let (mut host_r, mut host_w) = pty.master.split();
        let up = pattern(N, 1);
        let down = pattern(N, 2);
        let (up2, down2) = (up.clone(), down.clone());
        // Writers hand their half back so no end closes while the other side still
        // reads: after a hangup, serialport's poll reports POLLHUP before the data that
        // is still buffered.
        let t1 = thread::spawn(move || {
            dev_w.write_all(&up2).unwrap();
            dev_w
        });
        let t2 = thread::spawn(move || {
            host_w.write_all(&down2).unwrap();
            host_w
        });
        let t3 = thread::spawn(move || read_exactly(&mut host_r, N));
        let t4 = thread::spawn(move || read_exactly(&mut dev_r, N));
        let _dev_w = t1.join().unwrap();
        let _host_w = t2.join().unwrap();
        assert!(t3.join().unwrap() == up, "device -> host data differs");
        assert!(t4.join().unwrap() == down, "host -> device data differs");
    }

    #[test]
    fn read_times_out_with_zero() {
        let pty = open_pty().unwrap();
        let mut port = open_serial(&pty.slave_path, 9_600).unwrap();
        let mut buf = [0u8; 16];
        let start = Instant::now();
        assert_eq!(port.read(&mut buf, Duration::from_millis(100)).unwrap(), 0);
        assert!(
            start.elapsed() >= Duration::from_millis(90),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(port.read(&mut buf, Duration::ZERO).unwrap(), 0);
        // Still usable after timeouts, and a clone shares the line.
        let mut clone = port.try_clone().unwrap();
        let mut master = pty.master;
        master.write_all(b"ok").unwrap();
        let mut got = Vec::new();
        while got.len() < 2 {
            let n = clone.read(&mut buf, Duration::from_secs(5)).unwrap();
            assert!(n > 0, "timed out");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"ok");
    }

    #[test]
    fn write_times_out_when_nobody_reads() {
        let pty = open_pty().unwrap();
        let (_r, mut w) = open_serial(&pty.slave_path, 115_200).unwrap().split();
        w.set_write_timeout(Duration::from_millis(200));
        let err = w.write_all(&vec![0x55; 4 * 1024 * 1024]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    }

    #[test]
    fn hangup_is_an_error_not_a_timeout() {
        let pty = open_pty().unwrap();
        let slave_path = pty.slave_path.clone();
        let mut port = open_serial(&slave_path, 115_200).unwrap();
        drop(pty);
        let mut buf = [0u8; 8];
        let err = port.read(&mut buf, Duration::from_secs(5)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    }

    #[test]
    fn unsupported_baud_is_rejected_by_name() {
        let pty = open_pty().unwrap();
        let err = open_serial(&pty.slave_path, 12_345).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        let msg = err.to_string();
        assert!(msg.contains("12345") && msg.contains("115200"), "{msg}");
        assert!(baud_rate(115_200).is_some() && baud_rate(0).is_none());
    }

    #[test]
    fn missing_device_is_not_found() {
        let err = open_serial(Path::new("/dev/ttyEDGEDX99"), 115_200)
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains("/dev/ttyEDGEDX99"), "{err}");
    }

    #[test]
    fn a_plain_file_is_not_a_tty() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = open_serial(file.path(), 115_200).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    }
}
