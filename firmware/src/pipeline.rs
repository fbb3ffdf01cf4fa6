//! The one path from an input's bytes to a class: decode within the limits, preprocess to
//! the model's input, run one item. `classify`, the gate and the serving worker all go
//! through it, so an image gets the same tensor and the same scores whichever way it came.

use edgedx_bundle::InputSpec;
use edgedx_engine::{EngineError, Model, Scores};
use edgedx_ingest::{ImageInfo, IngestError, Limits};

/// What decoding learned about an input, without its pixels (freed once the tensor is
/// written).
#[derive(Debug, Clone)]
pub struct Prepared {
    pub width: u32,
    pub height: u32,
    pub channels: u8,
    pub info: ImageInfo,
}

/// Decodes `bytes` (format sniffed from the bytes) and preprocesses them into `tensor`,
/// which must hold one item of `model`'s input.
pub fn prepare(
    bytes: &[u8],
    name: &str,
    limits: &Limits,
    model: &Model,
    tensor: &mut [f32],
) -> Result<Prepared, IngestError> {
    prepare_for(bytes, name, limits, model.input_spec(), tensor)
}

/// [`prepare`] for an input spec without a loaded model (`edgedx preprocess`, which makes
/// calibration tensors exactly as the device will).
pub fn prepare_for(
    bytes: &[u8],
    name: &str,
    limits: &Limits,
    spec: &InputSpec,
    tensor: &mut [f32],
) -> Result<Prepared, IngestError> {
    let image = edgedx_ingest::load_bytes_for(bytes, name, limits, &spec.dicom)?;
    edgedx_ingest::preprocess(&image, spec, tensor)?;
    Ok(Prepared {
        width: image.width,
        height: image.height,
        channels: image.channels,
        info: image.info,
    })
}

/// Runs one prepared item and returns its scores.
pub fn score(model: &Model, tensor: &[f32]) -> Result<Scores, EngineError> {
    let mut rows = model.run(tensor)?;
    if rows.len() != 1 {
        return Err(EngineError::InvalidOutput(format!(
            "the model returned {} rows for one item",
            rows.len()
        )));
    }
    Ok(rows.remove(0))
}
