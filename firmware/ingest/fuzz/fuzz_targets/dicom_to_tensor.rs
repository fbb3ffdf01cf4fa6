//! Fuzz target: arbitrary bytes through what the worker does with an upload, decoding
//! (`load_bytes`) then preprocessing into the default model's grey tensor and into an RGB
//! one. It must never panic, even where the library would catch the panic: libfuzzer-sys
//! aborts on any panic, so a decoder panic that `catch_unwind` hides is still a finding.
//!
//! Bytes that are not DICOM go to the sniffer and the raster decoders; seed the corpus with
//! real files (../shared/data/dicom) so that mutations stay on the DICOM path.
#![no_main]

use edgedx_bundle::{Colour, InputSpec, Layout};
use edgedx_ingest::Limits;
use libfuzzer_sys::fuzz_target;

/// Far below the daemon's limits, so that executions stay fast: what the fuzzer should find
/// is whether a limit is enforced, not how long a legal decode at the limit takes. 512 x 512
/// keeps every shared file decodable (the largest are 512 x 512 and 1024 x 256).
const LIMITS: Limits = Limits {
    max_pixels: 512 * 512,
    max_file_bytes: 1 << 20,
};

/// The default bundle's input (128 x 128 grey, NCHW), and its RGB counterpart so that the
/// colour path of the preprocessing is driven too.
fn spec(channels: u32, colour: Colour) -> InputSpec {
    InputSpec::stretched(
        "input",
        Layout::Nchw,
        128,
        128,
        colour,
        vec![0.5; channels as usize],
        vec![0.25; channels as usize],
    )
}

fuzz_target!(|data: &[u8]| {
    let Ok(image) = edgedx_ingest::load_bytes(data, "fuzz.dcm", &LIMITS) else {
        return;
    };
    assert!(
        image.data.iter().all(|v| (0.0..=1.0).contains(v)),
        "intensity outside [0, 1]"
    );
    for spec in [spec(1, Colour::Grey), spec(3, Colour::Rgb)] {
        let mut tensor = vec![0.0; spec.item_len()];
        edgedx_ingest::preprocess(&image, &spec, &mut tensor).expect("preprocess");
        assert!(
            tensor.iter().all(|v| v.is_finite()),
            "non-finite tensor value"
        );
    }
});
