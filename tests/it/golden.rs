//! Golden outputs: the engine reproduces onnxruntime's outputs for every variant of the
//! default bundle (tests/golden/brain-mri-4class.json, made by tests/golden/make_golden.py).

use edgedx_bundle::{Bundle, Layout, Precision};
use edgedx_engine::{EngineOptions, Model};
use edgedx_ingest::Limits;
use serde_json::Value;

use crate::util;

/// fp32 runs the same arithmetic in a different order: differences are rounding only.
const FP32_TOLERANCE: f32 = 1e-4;
/// int8 graphs requantize after every layer; a different but valid rounding of one
/// intermediate value moves the dequantized outputs by about one output quantization step.
/// Allow 3% of the output range (relative to the largest magnitude), and demand the same class.
const INT8_RELATIVE_TOLERANCE: f32 = 0.03;

fn golden() -> Value {
    let path = util::root().join("tests/golden/brain-mri-4class.json");
    let text = std::fs::read_to_string(&path).expect("golden file");
    serde_json::from_str(&text).expect("golden JSON")
}

/// The same pattern as make_golden.py.
fn pattern(h: usize, w: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(h * w);
    for y in 0..h {
        for x in 0..w {
            v.push(((y * 7 + x * 13) % 256) as f32 / 255.0);
        }
    }
    v
}

fn input_for(case: &Value, bundle: &Bundle) -> Vec<f32> {
    let spec = bundle.input();
    let mut out = vec![0f32; spec.item_len()];
    if let Some(png) = case["source"]["png"].as_str() {
        // Through the real ingest path: the sample is at the input size, so the resize is
        // the identity and the tensor must equal make_golden.py's exactly.
        let image =
            edgedx_ingest::load_path(&bundle.dir().join(png), &Limits::default()).expect("sample");
        edgedx_ingest::preprocess(&image, spec, &mut out).expect("preprocess");
        return out;
    }
    // The synthetic pattern, normalised and laid out as make_golden.py's to_tensor does.
    let (h, w, c) = (
        spec.height as usize,
        spec.width as usize,
        spec.channels as usize,
    );
    let plane = pattern(h, w);
    for ch in 0..c {
        for (i, x) in plane.iter().enumerate() {
            let v = (x - spec.mean[ch]) / spec.std[ch];
            match spec.layout {
                Layout::Nchw => out[ch * h * w + i] = v,
                Layout::Nhwc => out[i * c + ch] = v,
            }
        }
    }
    out
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

#[test]
fn engine_matches_onnxruntime_for_every_variant() {
    let golden = golden();
    let bundle = Bundle::open(util::default_bundle()).expect("default bundle");
    let cases = golden["cases"].as_array().expect("cases");
    assert!(cases.len() >= 3, "golden file has too few cases");
    let inputs: Vec<Vec<f32>> = cases.iter().map(|c| input_for(c, &bundle)).collect();
    let variants = golden["variants"].as_object().expect("variants");
    for required in ["int8", "fp32"] {
        assert!(
            variants.contains_key(required),
            "golden file lacks {required}"
        );
    }
    for (variant, expected) in variants {
        let model = Model::load(&bundle, variant, &EngineOptions::default())
            .unwrap_or_else(|e| panic!("{variant}: {e}"));
        assert_eq!(
            expected["sha256"].as_str(),
            Some(model.report().sha256.as_str()),
            "{variant}: golden outputs were made from another file; rerun make_golden.py"
        );
        let is_int8 = model.report().precision == Precision::Int8;
        let mut worst = 0f32;
        for (i, case) in cases.iter().enumerate() {
            let want: Vec<f32> = expected["outputs"][i]
                .as_array()
                .expect("outputs")
                .iter()
                .map(|v| v.as_f64().expect("number") as f32)
                .collect();
            let got = model.run(&inputs[i]).expect("run").remove(0).raw;
            assert_eq!(got.len(), want.len(), "{variant} {}", case["name"]);
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
            let diff = got
                .iter()
                .zip(&want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            let tolerance = if is_int8 {
                INT8_RELATIVE_TOLERANCE * scale
            } else {
                FP32_TOLERANCE * scale.max(1.0)
            };
            assert!(diff <= tolerance,
                "{variant} {}: max |edgedx - onnxruntime| = {diff} > {tolerance}\n edgedx {got:?}\n ort    {want:?}",
                case["name"]);
            assert_eq!(
                argmax(&got),
                argmax(&want),
                "{variant} {}: class differs",
                case["name"]
            );
            worst = worst.max(diff / scale);
        }
        eprintln!(
            "{variant}: {} cases, worst relative difference {worst:.2e}",
            cases.len()
        );
    }
}
