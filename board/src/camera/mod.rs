//! Cameras: the [`Camera`] role, frames, and turning a frame into the bytes of an
//! ordinary image file (JPEG or PGM) that the inference ingest already decodes.

use std::fmt;

use crate::error::{BoardError, FrameProblem};

mod sim;
#[cfg(feature = "v4l2")]
mod v4l2;

pub use sim::{SimCamera, SimCameraHandle};
#[cfg(feature = "v4l2")]
pub use v4l2::V4l2Camera;

/// Largest width or height accepted in a frame. Far above any exam-room camera, and low
/// enough that width × height × 2 cannot overflow or ask for gigabytes.
pub const MAX_DIMENSION: u32 = 16_384;

/// Pixel layouts a camera can deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelFormat {
    /// Packed YUV 4:2:2, bytes Y0 U Y1 V per pixel pair (V4L2 `YUYV`).
    Yuyv,
    /// One JPEG image per frame (V4L2 `MJPG`).
    Mjpeg,
    /// 8-bit luma only (V4L2 `GREY`).
    Grey,
}

impl PixelFormat {
    /// The V4L2 four-character code.
    pub fn fourcc(self) -> [u8; 4] {
        match self {
            PixelFormat::Yuyv => *b"YUYV",
            PixelFormat::Mjpeg => *b"MJPG",
            PixelFormat::Grey => *b"GREY",
        }
    }

    /// Exact byte length of one frame, for uncompressed formats.
    pub fn frame_len(self, width: u32, height: u32) -> Option<usize> {
        let pixels = width as usize * height as usize;
        match self {
            PixelFormat::Yuyv => Some(pixels * 2),
            PixelFormat::Grey => Some(pixels),
            PixelFormat::Mjpeg => None,
        }
    }
}

impl fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PixelFormat::Yuyv => "YUYV",
            PixelFormat::Mjpeg => "MJPEG",
            PixelFormat::Grey => "GREY",
        })
    }
}

/// One captured frame. Uncompressed data is tightly packed (no row padding).
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
    /// Counts captures from this camera, starting at 0; gaps mean frames were dropped.
    pub sequence: u64,
}

impl fmt::Debug for Frame {
    // The pixel data would flood test output and logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("format", &self.format)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("data_len", &self.data.len())
            .field("sequence", &self.sequence)
            .finish()
    }
}

/// Container of the bytes returned by [`Frame::to_image_file`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Jpeg,
    /// Binary greymap (`P5`, maxval 255).
    Pgm,
}

impl ImageKind {
    pub fn extension(self) -> &'static str {
        match self {
            ImageKind::Jpeg => "jpg",
            ImageKind::Pgm => "pgm",
        }
    }
}

impl Frame {
    fn invalid(&self, problem: FrameProblem) -> BoardError {
        BoardError::InvalidFrame {
            format: self.format,
            width: self.width,
            height: self.height,
            problem,
        }
    }

    /// Checks that the data can be what the header says. It does not decode JPEG data:
    /// the ingest does that, under its own limits.
    pub fn validate(&self) -> Result<(), BoardError> {
        check_dimensions(self.format, self.width, self.height).map_err(|p| self.invalid(p))?;
        match self.format.frame_len(self.width, self.height) {
            Some(expected) if expected != self.data.len() => {
                Err(self.invalid(FrameProblem::WrongLength {
                    expected,
                    actual: self.data.len(),
                }))
            }
            Some(_) => Ok(()),
            None => {
                if self.data.len() < 4 {
                    Err(self.invalid(FrameProblem::JpegTooShort(self.data.len())))
                } else if self.data[..2] != [0xFF, 0xD8] {
                    Err(self.invalid(FrameProblem::MissingJpegSoi))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// The frame as the bytes of an image file: MJPEG frames are already JPEG files and
    /// are returned as they are; YUYV frames give their luma (Y) plane and GREY frames
    /// their pixels, as a binary PGM.
    ///
    /// YUYV chroma is dropped on purpose: the classifier reads greyscale MRI-like images,
    /// and the luma plane is exactly what a grey conversion would compute.
    pub fn to_image_file(&self) -> Result<(ImageKind, Vec<u8>), BoardError> {
        self.validate()?;
        match self.format {
            PixelFormat::Mjpeg => Ok((ImageKind::Jpeg, self.data.clone())),
            PixelFormat::Grey => Ok((ImageKind::Pgm, pgm(self.width, self.height, &self.data))),
            PixelFormat::Yuyv => {
                let luma: Vec<u8> = self.data.iter().step_by(2).copied().collect();
                Ok((ImageKind::Pgm, pgm(self.width, self.height, &luma)))
            }
        }
    }
}

pub(crate) fn check_dimensions(
    format: PixelFormat,
    width: u32,
    height: u32,
) -> Result<(), FrameProblem> {
    if width == 0 || height == 0 {
        return Err(FrameProblem::BadDimensions(
            "width and height must be non-zero".into(),
        ));
    }
    if width > MAX_DIMENSION || height > MAX_DIMENSION {
        return Err(FrameProblem::BadDimensions(format!(
            "larger than {MAX_DIMENSION} pixels on a side"
        )));
    }
    if format == PixelFormat::Yuyv && !width.is_multiple_of(2) {
        return Err(FrameProblem::BadDimensions(
            "YUYV packs pixel pairs, so the width must be even".into(),
        ));
    }
    Ok(())
}

fn pgm(width: u32, height: u32, luma: &[u8]) -> Vec<u8> {
    let header = format!("P5\n{width} {height}\n255\n");
    let mut out = Vec::with_capacity(header.len() + luma.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(luma);
    out
}

/// Luma of an sRGB pixel with BT.601 full-range weights (77 + 150 + 29 = 256, so grey
/// stays exactly grey).
fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((77 * r as u32 + 150 * g as u32 + 29 * b as u32 + 128) >> 8) as u8
}

/// Converts packed RGB8 to YUYV 4:2:2 with BT.601 full-range (JFIF) coefficients in
/// 8.8 fixed point; each pair's chroma is taken from the pair's mean colour.
///
/// Full range, not the 16–235 studio range most UVC cameras send, so that a grey image
/// played through the simulated camera comes back from [`Frame::to_image_file`] with
/// exactly its original values.
pub fn rgb_to_yuyv(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>, BoardError> {
    let bad = |problem| BoardError::InvalidFrame {
        format: PixelFormat::Yuyv,
        width,
        height,
        problem,
    };
    check_dimensions(PixelFormat::Yuyv, width, height).map_err(bad)?;
    let expected = width as usize * height as usize * 3;
    if rgb.len() != expected {
        return Err(bad(FrameProblem::WrongLength {
            expected,
            actual: rgb.len(),
        }));
    }
    let mut out = Vec::with_capacity(width as usize * height as usize * 2);
    for pair in rgb.chunks_exact(6) {
        let (r0, g0, b0) = (pair[0], pair[1], pair[2]);
        let (r1, g1, b1) = (pair[3], pair[4], pair[5]);
        let (r, g, b) = (
            r0 as i32 + r1 as i32,
            g0 as i32 + g1 as i32,
            b0 as i32 + b1 as i32,
        );
        // Sums of two pixels: shift by 9 instead of 8 to take the mean.
        let u = ((-43 * r - 85 * g + 128 * b + 256) >> 9) + 128;
        let v = ((128 * r - 107 * g - 21 * b + 256) >> 9) + 128;
        out.extend_from_slice(&[
            luma(r0, g0, b0),
            u.clamp(0, 255) as u8,
            luma(r1, g1, b1),
            v.clamp(0, 255) as u8,
        ]);
    }
    Ok(out)
}

/// Converts packed RGB8 to 8-bit luma with the same weights as [`rgb_to_yuyv`].
pub fn rgb_to_grey(rgb: &[u8]) -> Vec<u8> {
    rgb.chunks_exact(3)
        .map(|p| luma(p[0], p[1], p[2]))
        .collect()
}

/// A source of frames.
///
/// Contract:
/// - `capture` MUST return a frame whose exposure started after the call began (no frame
///   left over in a driver queue from earlier), or an error; it MAY block for up to a few
///   frame periods plus the implementation's documented timeout, never indefinitely.
/// - A returned frame MUST pass [`Frame::validate`] for its format, width and height;
///   implementations MUST NOT pass on a buffer the driver flagged as corrupt. (Simulated
///   cameras MAY break this on purpose when a test asks for a garbage frame.)
/// - `sequence` MUST increase by at least one between successive frames.
/// - After an error the camera MUST stay usable: the next `capture` tries again.
/// - `describe` MUST NOT touch the device; it names the device and the negotiated format
///   for logs.
pub trait Camera: Send {
    fn capture(&mut self) -> Result<Frame, BoardError>;
    fn describe(&self) -> String;
}

impl<C: Camera + ?Sized> Camera for Box<C> {
    fn capture(&mut self) -> Result<Frame, BoardError> {
        (**self).capture()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn frame(format: PixelFormat, width: u32, height: u32, data: Vec<u8>) -> Frame {
        Frame {
            format,
            width,
            height,
            data,
            sequence: 0,
        }
    }

    #[test]
    fn yuyv_matches_hand_computed_bt601_values() {
        // red | blue, white | black, green | green
        let rgb = [
            255, 0, 0, 0, 0, 255, //
            255, 255, 255, 0, 0, 0, //
            0, 255, 0, 0, 255, 0,
        ];
        let yuyv = rgb_to_yuyv(&rgb, 2, 3).unwrap();
        // Worked out with Y = 0.299R + 0.587G + 0.114B, Cb = 128 + 0.5B - 0.169R - 0.331G,
        // Cr = 128 + 0.5R - 0.419G - 0.081B on the pair's mean:
        // red 76.2, blue 29.1, mean (127.5, 0, 127.5) -> Cb 170.2, Cr 181.4;
        // white 255, black 0, neutral chroma; green 149.7, Cb 43.5, Cr 21.2.
        assert_eq!(
            yuyv,
            vec![77, 170, 29, 181, 255, 128, 0, 128, 149, 43, 149, 21]
        );
    }

    #[test]
    fn grey_input_survives_yuyv_and_comes_back_exactly() {
        let greys: Vec<u8> = (0..=255u8).collect();
        let rgb: Vec<u8> = greys.iter().flat_map(|&g| [g, g, g]).collect();
        let yuyv = rgb_to_yuyv(&rgb, 16, 16).unwrap();
        assert!(
            yuyv.iter().skip(1).step_by(2).all(|&c| c == 128),
            "grey has no chroma"
        );
        let f = frame(PixelFormat::Yuyv, 16, 16, yuyv);
        let (kind, bytes) = f.to_image_file().unwrap();
        assert_eq!(kind, ImageKind::Pgm);
        let header = b"P5\n16 16\n255\n";
        assert_eq!(&bytes[..header.len()], header);
        assert_eq!(&bytes[header.len()..], &greys[..]);
    }

    #[test]
    fn grey_frame_becomes_pgm_that_image_decodes() {
        let data: Vec<u8> = (0..12u8).map(|i| i * 20).collect();
        let (kind, bytes) = frame(PixelFormat::Grey, 4, 3, data.clone())
            .to_image_file()
            .unwrap();
        assert_eq!(kind, ImageKind::Pgm);
        assert!(bytes.starts_with(b"P5\n4 3\n255\n"));
        let img = image::load_from_memory(&bytes).unwrap().to_luma8();
        assert_eq!((img.width(), img.height()), (4, 3));
        assert_eq!(img.into_raw(), data);
    }

    #[test]
    fn mjpeg_passes_through_and_needs_soi() {
        let jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3, 0xFF, 0xD9];
        let (kind, bytes) = frame(PixelFormat::Mjpeg, 8, 8, jpeg.clone())
            .to_image_file()
            .unwrap();
        assert_eq!((kind, bytes), (ImageKind::Jpeg, jpeg));

        let err = frame(PixelFormat::Mjpeg, 8, 8, vec![0x00; 64])
            .to_image_file()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidFrame);
        assert!(err.to_string().contains("start-of-image"), "{err}");

        let err = frame(PixelFormat::Mjpeg, 8, 8, vec![0xFF])
            .to_image_file()
            .unwrap_err();
        assert!(matches!(
            err,
            BoardError::InvalidFrame {
                problem: FrameProblem::JpegTooShort(1),
                ..
            }
        ));
    }

    #[test]
    fn truncated_and_oversized_frames_name_the_lengths() {
        let err = frame(PixelFormat::Yuyv, 4, 2, vec![0; 15])
            .to_image_file()
            .unwrap_err();
        match &err {
            BoardError::InvalidFrame {
                problem: FrameProblem::WrongLength { expected, actual },
                ..
            } => assert_eq!((*expected, *actual), (16, 15)),
            other => panic!("wrong error {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "invalid YUYV frame 4x2: truncated data: 15 bytes, expected 16"
        );
        let err = frame(PixelFormat::Grey, 2, 2, vec![0; 5])
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("oversized"), "{err}");
    }

    #[test]
    fn bad_dimensions_are_rejected_without_allocating() {
        for (format, w, h) in [
            (PixelFormat::Grey, 0, 4),
            (PixelFormat::Yuyv, 3, 2),
            (PixelFormat::Grey, u32::MAX, u32::MAX),
            (PixelFormat::Mjpeg, 10, 0),
        ] {
            let err = frame(format, w, h, vec![0xFF, 0xD8, 0, 0])
                .to_image_file()
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    BoardError::InvalidFrame {
                        problem: FrameProblem::BadDimensions(_),
                        ..
                    }
                ),
                "{format} {w}x{h}: {err:?}"
            );
        }
    }
}
