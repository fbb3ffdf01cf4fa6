//! `edgedx preprocess`: images to the exact input tensors the device would feed a bundle's
//! model, written as one NumPy `.npy` array. Quantization calibrates on these (models/
//! quantize), and training-side checks can compare them with their own pipeline.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use edgedx_bundle::Bundle;
use edgedx_ingest::Limits;

/// Refuse to build arrays larger than this in memory (a calibration set is hundreds of
/// images, not a dataset).
const MAX_ARRAY_BYTES: usize = 2 << 30;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model bundle directory (its [input] says how images become tensors).
    #[arg(long)]
    bundle: PathBuf,
    /// The .npy file to write: float32, shape (images, ...input shape without batch).
    #[arg(long)]
    out: PathBuf,
    /// A file listing one image path per line (in addition to the arguments).
    #[arg(long)]
    list: Option<PathBuf>,
    /// Images (DICOM, PNG, JPEG, PGM).
    images: Vec<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let bundle = Bundle::open(&args.bundle)?;
    let spec = bundle.input().clone();
    let mut images = args.images.clone();
    if let Some(list) = &args.list {
        let text = std::fs::read_to_string(list)
            .with_context(|| format!("cannot read {}", list.display()))?;
        images.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(PathBuf::from),
        );
    }
    if images.is_empty() {
        bail!("no images given");
    }
    let item = spec.item_len();
    if images.len().saturating_mul(item).saturating_mul(4) > MAX_ARRAY_BYTES {
        bail!(
            "{} images of {item} values exceed the {MAX_ARRAY_BYTES}-byte limit; split the list",
            images.len()
        );
    }
    let limits = Limits::default();
    let mut values = vec![0f32; images.len() * item];
    let mut failed = 0;
    for (path, tensor) in images.iter().zip(values.chunks_exact_mut(item)) {
        let name = path.display().to_string();
        let outcome = edgedx_ingest::read_capped(path, &limits)
            .and_then(|bytes| crate::pipeline::prepare_for(&bytes, &name, &limits, &spec, tensor));
        if let Err(e) = outcome {
            eprintln!("edgedx: {e}");
            failed += 1;
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {} images could not be read; nothing written",
            images.len()
        );
    }
    write_npy(&args.out, &spec.shape(images.len()), &values)?;
    println!(
        "wrote {} tensors of shape {:?} to {}",
        images.len(),
        &spec.shape(1)[1..],
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// NumPy format version 1.0: magic, header length, a Python dict literal padded with
/// spaces to a multiple of 64 bytes and ended by a newline, then little-endian float32.
fn write_npy(path: &Path, shape: &[usize], values: &[f32]) -> anyhow::Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}",
        dims.join(", ")
    );
    let unpadded = 6 + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + values.len() * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    let len = u16::try_from(header.len()).context("npy header too long")?;
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    edgedx_bundle::write_file_atomically(path, &bytes)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_describes_the_array() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npy");
        write_npy(&path, &[2, 1, 2, 3], &[0.5; 12]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
        assert!(header.contains("'shape': (2, 1, 2, 3,)"), "{header}");
        assert!(header.ends_with('\n'));
        assert_eq!(bytes.len(), 10 + len + 48);
        assert_eq!(&bytes[10 + len..10 + len + 4], &0.5f32.to_le_bytes());
    }
}
