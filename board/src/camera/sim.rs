//! A camera that plays the image files of a directory, for tests and the host-sim board.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use image::{DynamicImage, ImageReader};

use super::{rgb_to_grey, rgb_to_yuyv, Camera, Frame, PixelFormat};
use crate::error::BoardError;

/// Plays the PNG, JPEG and PGM files of a directory in name order, round robin, as frames
/// of the requested format. Files are read and decoded at each capture, so a test can
/// change the directory while the camera runs and a large directory costs no memory.
///
/// Images keep their own size, except that an odd width loses its last column in YUYV
/// (which packs pixel pairs). MJPEG passes `.jpg` / `.jpeg` files through untouched and
/// re-encodes the others as JPEG (quality 90).
pub struct SimCamera {
    dir: PathBuf,
    files: Vec<PathBuf>,
    next: usize,
    format: PixelFormat,
    sequence: u64,
    faults: Arc<Mutex<Faults>>,
}

#[derive(Debug, Default)]
struct Faults {
    fail: u32,
    garbage: u32,
    captures: u64,
}

/// Shared control of a [`SimCamera`] that stays with the test after the camera has been
/// handed to the code under test.
#[derive(Debug, Clone)]
pub struct SimCameraHandle {
    faults: Arc<Mutex<Faults>>,
}

impl SimCameraHandle {
    fn with<T>(&self, f: impl FnOnce(&mut Faults) -> T) -> T {
        f(&mut self.faults.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The next `n` captures fail with [`BoardError::Injected`].
    pub fn fail_next(&self, n: u32) {
        self.with(|s| s.fail = n);
    }

    /// The next `n` captures return a frame whose data does not match its header
    /// (truncated YUYV / GREY data, MJPEG data without a JPEG marker).
    pub fn garbage_next(&self, n: u32) {
        self.with(|s| s.garbage = n);
    }

    /// Captures attempted so far, failed ones included.
    pub fn captures(&self) -> u64 {
        self.with(|s| s.captures)
    }
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .is_some_and(|e| matches!(e.as_str(), "png" | "jpg" | "jpeg" | "pgm"))
}

fn is_jpeg(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg"))
}

impl SimCamera {
    /// Lists the images of `dir`. Fails if the directory cannot be read or holds none.
    pub fn from_dir(dir: impl AsRef<Path>, format: PixelFormat) -> Result<Self, BoardError> {
        let dir = dir.as_ref().to_path_buf();
        let problem = |problem: String| BoardError::SimSource {
            dir: dir.clone(),
            problem,
        };
        let entries = std::fs::read_dir(&dir).map_err(|e| problem(format!("cannot list: {e}")))?;
        let mut files = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|e| problem(format!("cannot list: {e}")))?
                .path();
            if path.is_file() && is_image(&path) {
                files.push(path);
            }
        }
        if files.is_empty() {
            return Err(problem("holds no .png, .jpg, .jpeg or .pgm file".into()));
        }
        files.sort();
        Ok(SimCamera {
            dir,
            files,
            next: 0,
            format,
            sequence: 0,
            faults: Arc::default(),
        })
    }

    pub fn handle(&self) -> SimCameraHandle {
        SimCameraHandle {
            faults: self.faults.clone(),
        }
    }

    /// Same as [`SimCameraHandle::fail_next`].
    pub fn fail_next(&self, n: u32) {
        self.handle().fail_next(n);
    }

    /// Same as [`SimCameraHandle::garbage_next`].
    pub fn garbage_next(&self, n: u32) {
        self.handle().garbage_next(n);
    }

    /// The files played, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    fn source_error(&self, path: &Path, what: impl std::fmt::Display) -> BoardError {
        BoardError::SimSource {
            dir: self.dir.clone(),
            problem: format!("{}: {what}", path.display()),
        }
    }

    fn decode(&self, path: &Path, bytes: &[u8]) -> Result<DynamicImage, BoardError> {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| self.source_error(path, e))?
            .decode()
            .map_err(|e| self.source_error(path, e))
    }

    fn render(&self, path: &Path) -> Result<(u32, u32, Vec<u8>), BoardError> {
        let bytes = std::fs::read(path).map_err(|e| self.source_error(path, e))?;
        match self.format {
            PixelFormat::Mjpeg if is_jpeg(path) => {
                let (w, h) = ImageReader::new(Cursor::new(&bytes))
                    .with_guessed_format()
                    .map_err(|e| self.source_error(path, e))?
                    .into_dimensions()
                    .map_err(|e| self.source_error(path, e))?;
                Ok((w, h, bytes))
            }
            PixelFormat::Mjpeg => {
                let img = self.decode(path, &bytes)?;
                let (w, h) = (img.width(), img.height());
                // The JPEG encoder takes L8 and RGB8; anything else (16-bit, alpha) is
                // narrowed first.
                let img = if img.color().has_color() {
                    DynamicImage::ImageRgb8(img.to_rgb8())
                } else {
                    DynamicImage::ImageLuma8(img.to_luma8())
                };
                let mut out = Vec::new();
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
                    .encode_image(&img)
                    .map_err(|e| self.source_error(path, e))?;
                Ok((w, h, out))
            }
            PixelFormat::Grey => {
                let img = self.decode(path, &bytes)?;
                let (w, h) = (img.width(), img.height());
                let grey = if img.color().has_color() {
                    rgb_to_grey(img.to_rgb8().as_raw())
                } else {
                    img.to_luma8().into_raw()
                };
                Ok((w, h, grey))
            }
            PixelFormat::Yuyv => {
                let img = self.decode(path, &bytes)?;
                let even = img.width() & !1;
                if even == 0 {
                    return Err(self.source_error(path, "one pixel wide: YUYV needs pixel pairs"));
                }
                let img = img.crop_imm(0, 0, even, img.height());
                let (w, h) = (img.width(), img.height());
                let yuyv = rgb_to_yuyv(img.to_rgb8().as_raw(), w, h)?;
                Ok((w, h, yuyv))
            }
        }
    }
}

impl Camera for SimCamera {
    fn capture(&mut self) -> Result<Frame, BoardError> {
        let (fail, garbage) = self.handle().with(|s| {
            s.captures += 1;
            let fail = s.fail > 0;
            if fail {
                s.fail -= 1;
            }
            let garbage = !fail && s.garbage > 0;
            if garbage {
                s.garbage -= 1;
            }
            (fail, garbage)
        });
        if fail {
            return Err(BoardError::Injected {
                what: format!("simulated camera {}: capture failed", self.dir.display()),
            });
        }
        let path = self.files[self.next % self.files.len()].clone();
        self.next = (self.next + 1) % self.files.len();
        let (width, height, mut data) = self.render(&path)?;
        if garbage {
            match self.format {
                PixelFormat::Mjpeg => data.iter_mut().take(2).for_each(|b| *b = 0),
                PixelFormat::Yuyv | PixelFormat::Grey => data.truncate(data.len() / 2),
            }
        }
        let frame = Frame {
            format: self.format,
            width,
            height,
            data,
            sequence: self.sequence,
        };
        self.sequence += 1;
        Ok(frame)
    }

    fn describe(&self) -> String {
        format!(
            "simulated camera {} ({} images, {})",
            self.dir.display(),
            self.files.len(),
            self.format
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ErrorKind, FrameProblem};
    use crate::ImageKind;
    use image::{GrayImage, RgbImage};

    /// a.png: 4x2 RGB, b.pgm: 3x2 grey ramp, c.jpg: 8x8 grey JPEG, plus a text file.
    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut a = RgbImage::new(4, 2);
        for (x, _, p) in a.enumerate_pixels_mut() {
            *p = image::Rgb(if x % 2 == 0 { [255, 0, 0] } else { [0, 0, 255] });
        }
        a.save(dir.path().join("a.png")).unwrap();
        GrayImage::from_raw(3, 2, vec![0, 50, 100, 150, 200, 250])
            .unwrap()
            .save(dir.path().join("b.pgm"))
            .unwrap();
        GrayImage::from_pixel(8, 8, image::Luma([128]))
            .save(dir.path().join("c.jpg"))
            .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
        dir
    }

    #[test]
    fn plays_files_in_name_order_round_robin() {
        let dir = fixture();
        let mut cam = SimCamera::from_dir(dir.path(), PixelFormat::Grey).unwrap();
        assert_eq!(cam.files().len(), 3);
        let sizes: Vec<(u32, u32, u64)> = (0..4)
            .map(|_| cam.capture().unwrap())
            .map(|f| (f.width, f.height, f.sequence))
            .collect();
        assert_eq!(sizes, vec![(4, 2, 0), (3, 2, 1), (8, 8, 2), (4, 2, 3)]);
    }

    #[test]
    fn grey_and_yuyv_frames_carry_the_image() {
        let dir = fixture();
        let mut grey = SimCamera::from_dir(dir.path(), PixelFormat::Grey).unwrap();
        let a = grey.capture().unwrap();
        assert_eq!(a.data, vec![77, 29, 77, 29, 77, 29, 77, 29]);
        let b = grey.capture().unwrap();
        assert_eq!(b.data, vec![0, 50, 100, 150, 200, 250]);

        let mut yuyv = SimCamera::from_dir(dir.path(), PixelFormat::Yuyv).unwrap();
        let a = yuyv.capture().unwrap();
        assert_eq!(a.data, [77, 170, 29, 181].repeat(4));
        // 3 pixels wide: the last column goes, the rest keeps its values.
        let b = yuyv.capture().unwrap();
        assert_eq!((b.width, b.height), (2, 2));
        let (kind, pgm) = b.to_image_file().unwrap();
        assert_eq!(kind, ImageKind::Pgm);
        assert_eq!(pgm, b"P5\n2 2\n255\n\x00\x32\x96\xc8".to_vec());
    }

    #[test]
    fn mjpeg_passes_jpeg_through_and_encodes_the_rest() {
        let dir = fixture();
        let original = std::fs::read(dir.path().join("c.jpg")).unwrap();
        let mut cam = SimCamera::from_dir(dir.path(), PixelFormat::Mjpeg).unwrap();
        let a = cam.capture().unwrap();
        let (kind, bytes) = a.to_image_file().unwrap();
        assert_eq!(kind, ImageKind::Jpeg);
        let decoded = image::load_from_memory(&bytes).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (4, 2));
        cam.capture().unwrap();
        let c = cam.capture().unwrap();
        assert_eq!(c.data, original);
        assert_eq!((c.width, c.height), (8, 8));
    }

    #[test]
    fn injected_failures_and_garbage_then_recovery() {
        let dir = fixture();
        for format in [PixelFormat::Yuyv, PixelFormat::Grey, PixelFormat::Mjpeg] {
            let mut cam = SimCamera::from_dir(dir.path(), format).unwrap();
            let handle = cam.handle();
            handle.fail_next(2);
            assert_eq!(cam.capture().unwrap_err().kind(), ErrorKind::Injected);
            assert_eq!(cam.capture().unwrap_err().kind(), ErrorKind::Injected);
            cam.garbage_next(1);
            let bad = cam.capture().unwrap();
            let err = bad.to_image_file().unwrap_err();
            let expected = match format {
                PixelFormat::Mjpeg => FrameProblem::MissingJpegSoi,
                _ => FrameProblem::WrongLength {
                    expected: format.frame_len(4, 2).unwrap(),
                    actual: format.frame_len(4, 2).unwrap() / 2,
                },
            };
            match err {
                BoardError::InvalidFrame { problem, .. } => assert_eq!(problem, expected),
                other => panic!("{format}: {other:?}"),
            }
            let good = cam.capture().unwrap();
            good.to_image_file().unwrap();
            assert_eq!(good.sequence, 1, "failed captures take no sequence number");
            assert_eq!(handle.captures(), 4);
        }
    }

    #[test]
    fn unusable_directories_are_clear_errors() {
        let empty = tempfile::tempdir().unwrap();
        let err = SimCamera::from_dir(empty.path(), PixelFormat::Grey)
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::SimSource);
        assert!(err.to_string().contains("no .png"), "{err}");
        let err = SimCamera::from_dir("/nonexistent/edgedx", PixelFormat::Grey)
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/edgedx"), "{err}");

        std::fs::write(empty.path().join("broken.png"), b"\x89PNG\r\n\x1a\nnope").unwrap();
        let mut cam = SimCamera::from_dir(empty.path(), PixelFormat::Yuyv).unwrap();
        let err = cam.capture().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::SimSource);
        assert!(err.to_string().contains("broken.png"), "{err}");
    }
}
