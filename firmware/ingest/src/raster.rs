//! PNG, JPEG and PGM decoding through the `image` crate, with the size checked from
//! the header before pixels are decoded.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, ImageReader};

use crate::{Image, ImageInfo, IngestError, Limits, SourceFormat};

/// Decodes a raster image whose format was sniffed from its signature.
pub(crate) fn load(
    bytes: &[u8],
    format: SourceFormat,
    name: &str,
    limits: &Limits,
) -> Result<Image, IngestError> {
    let image_format = match format {
        SourceFormat::Png => ImageFormat::Png,
        SourceFormat::Jpeg => ImageFormat::Jpeg,
        SourceFormat::Pgm => ImageFormat::Pnm,
        SourceFormat::Dicom => {
            return Err(IngestError::unsupported(
                name,
                "DICOM is not a raster format",
            ))
        }
    };
    let decode_err = |e: image::ImageError| match e {
        image::ImageError::Limits(l) => IngestError::too_large(name, l.to_string()),
        image::ImageError::Unsupported(u) => IngestError::unsupported(name, u.to_string()),
        image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            IngestError::truncated(name, format!("{format}: {io}"))
        }
        other => IngestError::malformed(name, format!("{format}: {other}")),
    };

    let (width, height) = ImageReader::with_format(Cursor::new(bytes), image_format)
        .into_dimensions()
        .map_err(decode_err)?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(IngestError::too_large(
            name,
            format!(
                "{width} x {height} = {pixels} pixels, limit max_pixels is {}",
                limits.max_pixels
            ),
        ));
    }
    if pixels == 0 {
        return Err(IngestError::malformed(
            name,
            format!("image is {width} x {height}"),
        ));
    }

    let mut reader = ImageReader::with_format(Cursor::new(bytes), image_format);
    let mut image_limits = image::Limits::default();
    image_limits.max_image_width = Some(width);
    image_limits.max_image_height = Some(height);
    // Room for the largest decoded form (16-bit RGBA) of the declared size, nothing more.
    image_limits.max_alloc = Some(pixels.saturating_mul(8).max(1 << 20));
    reader.limits(image_limits);
    let decoded = reader.decode().map_err(decode_err)?;

    let mut info = ImageInfo::new(format);
    let (channels, data, bits, note): (u8, Vec<f32>, u16, &str) = match decoded {
        DynamicImage::ImageLuma8(b) => (1, scale(b.as_raw(), 255.0), 8, "grey /255"),
        DynamicImage::ImageLumaA8(b) => (
            1,
            scale_dropping_alpha(b.as_raw(), 2, 1, 255.0),
            8,
            "grey /255, alpha dropped",
        ),
        DynamicImage::ImageRgb8(b) => (3, scale(b.as_raw(), 255.0), 8, "RGB /255"),
        DynamicImage::ImageRgba8(b) => (
            3,
            scale_dropping_alpha(b.as_raw(), 4, 3, 255.0),
            8,
            "RGB /255, alpha dropped",
        ),
        DynamicImage::ImageLuma16(b) => (1, scale(b.as_raw(), 65535.0), 16, "grey /65535"),
        DynamicImage::ImageLumaA16(b) => (
            1,
            scale_dropping_alpha(b.as_raw(), 2, 1, 65535.0),
            16,
            "grey /65535, alpha dropped",
        ),
        DynamicImage::ImageRgb16(b) => (3, scale(b.as_raw(), 65535.0), 16, "RGB /65535"),
        DynamicImage::ImageRgba16(b) => (
            3,
            scale_dropping_alpha(b.as_raw(), 4, 3, 65535.0),
            16,
            "RGB /65535, alpha dropped",
        ),
        other => {
            let rgb = other.to_rgb32f();
            (3, rgb.into_raw(), 32, "float RGB")
        }
    };
    info.bits_stored = Some(bits);
    info.note = Some(note.to_string());
    Ok(Image {
        width,
        height,
        channels,
        data,
        info,
    })
}

fn scale<T: Copy + Into<f32>>(raw: &[T], max: f32) -> Vec<f32> {
    raw.iter().map(|&v| v.into() / max).collect()
}

fn scale_dropping_alpha<T: Copy + Into<f32>>(
    raw: &[T],
    stride: usize,
    keep: usize,
    max: f32,
) -> Vec<f32> {
    raw.chunks_exact(stride)
        .flat_map(|px| px[..keep].iter().map(move |&v| v.into() / max))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{load_bytes, ErrorKind};

    fn encode(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn png_grey16_is_scaled_by_65535() {
        let img = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(3, 2, |x, _| {
            image::Luma([x as u16 * 32767])
        });
        let bytes = encode(DynamicImage::ImageLuma16(img), ImageFormat::Png);
        let out = load_bytes(&bytes, "g16.png", &Limits::default()).unwrap();
        assert_eq!((out.width, out.height, out.channels), (3, 2, 1));
        assert_eq!(out.info.format, SourceFormat::Png);
        assert!((out.data[2] - 65534.0 / 65535.0).abs() < 1e-6);
        assert_eq!(out.data[0], 0.0);
    }

    #[test]
    fn png_rgba_drops_alpha() {
        let img = image::RgbaImage::from_pixel(2, 2, image::Rgba([255, 0, 51, 7]));
        let bytes = encode(DynamicImage::ImageRgba8(img), ImageFormat::Png);
        let out = load_bytes(&bytes, "a.png", &Limits::default()).unwrap();
        assert_eq!(out.channels, 3);
        assert_eq!(out.data.len(), 12);
        assert_eq!(&out.data[..3], &[1.0, 0.0, 0.2]);
    }

    #[test]
    fn grey_alpha_drops_alpha() {
        let img = image::GrayAlphaImage::from_pixel(2, 1, image::LumaA([255, 0]));
        let bytes = encode(DynamicImage::ImageLumaA8(img), ImageFormat::Png);
        let out = load_bytes(&bytes, "la.png", &Limits::default()).unwrap();
        assert_eq!((out.channels, out.data.clone()), (1, vec![1.0, 1.0]));
    }

    #[test]
    fn jpeg_and_pgm_decode() {
        let img = image::GrayImage::from_pixel(8, 8, image::Luma([128]));
        let jpg = encode(DynamicImage::ImageLuma8(img.clone()), ImageFormat::Jpeg);
        let out = load_bytes(&jpg, "x.jpg", &Limits::default()).unwrap();
        assert_eq!(out.info.format, SourceFormat::Jpeg);
        assert!((out.data[0] - 128.0 / 255.0).abs() < 2.0 / 255.0);
        let pgm = b"P5\n2 1\n255\n\x00\xff";
        let out = load_bytes(pgm, "x.pgm", &Limits::default()).unwrap();
        assert_eq!(
            (out.info.format, out.data.clone()),
            (SourceFormat::Pgm, vec![0.0, 1.0])
        );
    }

    #[test]
    fn dimensions_are_checked_before_decoding() {
        let img = image::GrayImage::from_pixel(100, 100, image::Luma([1]));
        let bytes = encode(DynamicImage::ImageLuma8(img), ImageFormat::Png);
        let limits = Limits {
            max_pixels: 9999,
            ..Limits::default()
        };
        let err = load_bytes(&bytes, "big.png", &limits).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TooLarge);
        assert!(err.to_string().contains("max_pixels"), "{err}");
        // A PGM header that claims a huge image and carries no pixels.
        let err =
            load_bytes(b"P5\n100000 100000\n255\n", "huge.pgm", &Limits::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
    }

    #[test]
    fn truncated_and_garbage_files_fail_cleanly() {
        let img = image::RgbImage::from_pixel(64, 64, image::Rgb([1, 2, 3]));
        for format in [ImageFormat::Png, ImageFormat::Jpeg] {
            let bytes = encode(DynamicImage::ImageRgb8(img.clone()), format);
            for cut in [8, 20, bytes.len() / 2, bytes.len() - 3] {
                let r = load_bytes(&bytes[..cut], "cut", &Limits::default());
                if let Err(e) = r {
                    assert!(e.to_string().contains("cut"), "{e}");
                }
            }
        }
        let mut junk = b"\x89PNG\r\n\x1a\n".to_vec();
        junk.extend_from_slice(&[0xAB; 64]);
        let err = load_bytes(&junk, "junk.png", &Limits::default()).unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::Malformed | ErrorKind::Truncated),
            "{err}"
        );
    }
}
