//! Int8 matrix-vector products on the engine's kernels (kernels/gemv.rs): a classifier's
//! head (QGemm, QLinearMatMul, or a QDQ Gemm or MatMul) after its global pool, one
//! position whose every class is a row of weights.
//!
//! tract packs the vector (`OptMatMulPack`) and runs its one-column kernel with its fused
//! ops (the zero point's term and the bias, per row). [`Gemv`] takes the vector as it is
//! and computes the same i32 sums: the weights unpacked from tract's packing once at load
//! and packed for the engine's kernel, the fused per-row constants folded into each row's
//! start (banded.rs `tile_operands`, as the convolution tiles do), the sums wrapping as
//! tract's do. Only where the engine has a vector kernel for it (aarch64, and x86-64 with
//! AVX-512 VNNI, where tract's one-column kernel is a 16 x 16 tile).
//!
//! With asymmetric u8 weights (onnxruntime's `weight_type=QUInt8`) tract's matmul also
//! subtracts the weight zero point's term `zw · Σ_k x` (zero_point.rs), fused with the sum
//! of the vector as its input. For one vector that sum is one value: [`Gemv`] adds up the
//! vector itself and subtracts the term from each row's sum.

use tract_linalg::BinOp;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::matmul::optimized::{OptMatMul, ProtoFusedSpec};
use tract_onnx::tract_core::ops::matmul::pack::OptMatMulPack;
use tract_onnx::tract_core::ops::matmul::ModePicker;

use crate::banded::Shared;
use crate::kernels::{dot, gemv};

/// `OptMatMulPack` of an i8 vector → `OptMatMul` of constant weights by it, as one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Gemv {
    weights: Shared<gemv::Weights>,
    /// The kernel with the dot product (chosen at load with the CPU); on x86-64 always
    /// set, which only says that no row was refused for the 16-bit lanes of the NEON
    /// kernel without it (the VNNI kernel sums in 32-bit lanes).
    dot: bool,
    /// The matmul's output shape: the rows along one axis, every other axis 1.
    output_shape: TVec<usize>,
    /// Per row, the weight zero point `zw` of the term `zw · Σ_k x` to subtract, when the
    /// weights have one.
    zero_point: Option<Vec<i32>>,
}

impl Op for Gemv {
    fn name(&self) -> StaticName {
        "Gemv".into()
    }

    tract_onnx::tract_core::op_as_typed_op!();
}

impl EvalOp for Gemv {
    tract_onnx::tract_core::op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = inputs[0].try_as_plain_ram()?;
        let x = x.as_slice::<i8>()?;
        // SAFETY: `run` writes every sum before the tensor is returned (an error drops it).
        let mut out = unsafe { Tensor::uninitialized::<i32>(&self.output_shape)? };
        {
            let mut view = out.try_as_plain_ram_mut()?;
            let sums = view.as_slice_mut::<i32>()?;
            self.weights
                .0
                .run(x, sums, self.dot)
                .map_err(|e| format_err!("Gemv: {e}"))?;
            if let Some(zero_point) = &self.zero_point {
                let sum = x.iter().fold(0i32, |s, &v| s.wrapping_add(i32::from(v)));
                for (s, zw) in sums.iter_mut().zip(zero_point) {
                    *s = s.wrapping_sub(zw.wrapping_mul(sum));
                }
            }
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for Gemv {
    tract_onnx::tract_core::as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == DatumType::I8);
        Ok(tvec!(DatumType::I32.fact(&*self.output_shape)))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let w = &self.weights.0;
        Ok(tvec!((
            Cost::FMA(DatumType::I32),
            (w.rows() * w.k()).to_dim()
        )))
    }
}

/// Replaces every i8 matrix-vector matmul that [`Gemv`] computes exactly, where the engine
/// has a vector kernel for it; returns how many.
pub(crate) fn gemv_products(model: &mut TypedModel) -> TractResult<usize> {
    if !wanted() {
        return Ok(0);
    }
    // The x86 kernel sums in 32-bit lanes as SDOT does: no row is refused for its 16-bit
    // lanes.
    let dot = dot::available() || cfg!(target_arch = "x86_64");
    crate::rewrite::replace_runs(model, "gemv", |model, id| run_at(model, id, dot))
}

/// On aarch64 and on x86-64 with AVX-512 VNNI, unless this thread's tests say otherwise
/// (the scalar reference runs where the target has no kernel).
fn wanted() -> bool {
    #[cfg(test)]
    if let Some(forced) = tests::FORCE.get() {
        return forced;
    }
    #[cfg(target_arch = "x86_64")]
    return crate::kernels::gemv_vnni::available();
    #[cfg(not(target_arch = "x86_64"))]
    cfg!(target_arch = "aarch64")
}

/// The vector, the matmul's outlet and the op, when node `id` is tract's packing of an i8
/// vector read by one matmul of constant weights whose fused ops add per-row or scalar
/// constants before a plain store.
fn run_at(
    model: &TypedModel,
    id: usize,
    dot: bool,
) -> TractResult<Option<(TVec<OutletId>, OutletId, Gemv)>> {
    let node = model.node(id);
    if !node.op_is::<OptMatMulPack>() || node.inputs.len() != 1 {
        return Ok(None);
    }
    let x = model.outlet_fact(node.inputs[0])?;
    let Some(shape) = x.shape.as_concrete() else {
        return Ok(None);
    };
    let k: usize = shape.iter().product();
    let long: Vec<usize> = (0..shape.len()).filter(|&a| shape[a] != 1).collect();
    // The vector: one axis (or none) longer than 1, packed with k along it.
    let k_axis = match long[..] {
        [a] => a,
        [] => shape.len().saturating_sub(1),
        _ => return Ok(None),
    };
    if x.datum_type != DatumType::I8 || k == 0 {
        return Ok(None);
    }
    // tract keeps the axes private; its own description of the op names them.
    let info = node.op.info()?;
    let names_k = |line: &String| {
        line.rsplit_once("k axis: ")
            .and_then(|(_, rest)| rest.split(',').next())
            .is_some_and(|axis| axis.trim() == k_axis.to_string())
    };
    if !info.iter().any(names_k) {
        return Ok(None);
    }
    let outputs = model.output_outlets()?;
    if outputs.contains(&OutletId::new(id, 0)) {
        return Ok(None);
    }
    let Some(mm_node) = model.single_succ(id)? else {
        return Ok(None);
    };
    let Some(matmul) = mm_node.op_as::<OptMatMul>() else {
        return Ok(None);
    };
    let slots: Vec<usize> = (0..mm_node.inputs.len())
        .filter(|&i| mm_node.inputs[i] == OutletId::new(id, 0))
        .collect();
    let [slot] = slots[..] else {
        return Ok(None);
    };
    if matmul.mmm.len() != 1 || !matches!(matmul.mode_picker, ModePicker::Single) {
        return Ok(None);
    }
    // One product, the vector on one side (the weights, constant, on the other: checked
    // with the fused ops by `tile_operands`).
    let Some(vector_is_a) = crate::banded::input_side(matmul, slot) else {
        return Ok(None);
    };
    // The sums: i32, one per row, laid out along the rows' axis (every other axis 1).
    let Some(c_shape) = matmul.c_fact.shape.as_concrete() else {
        return Ok(None);
    };
    let rows: usize = c_shape.iter().product();
    let rows_axis = if vector_is_a {
        matmul.c_n_axis
    } else {
        matmul.c_m_axis
    };
    let other_axis = if vector_is_a {
        matmul.c_m_axis
    } else {
        matmul.c_n_axis
    };
    let laid_out =
        rows_axis.is_some_and(|a| c_shape[a] == rows) && other_axis.is_none_or(|a| c_shape[a] == 1);
    if matmul.c_fact.datum_type != DatumType::I32 || !laid_out {
        return Ok(None);
    }
    // The weight zero point's term, one value or one per row subtracted: which fused op
    // it is, and zw per row.
    let sums = [crate::zero_point::Sums::Channels {
        x: node.inputs[0],
        axis: k_axis,
    }];
    let mut zero_point = None;
    for (ix, op) in matmul.micro_ops.iter().enumerate() {
        let slot = match op {
            ProtoFusedSpec::BinScalar(slot, BinOp::SubF)
            | ProtoFusedSpec::BinPerRow(slot, BinOp::SubF, _)
            | ProtoFusedSpec::BinPerCol(slot, BinOp::SubF, _) => *slot,
            _ => continue,
        };
        let term = mm_node.inputs[slot];
        if let Some(zw) = crate::zero_point::weight_zero_point_from(model, term, &sums)? {
            let zw = zw.cast_to::<i32>()?;
            let zw = zw.try_as_plain_ram()?;
            let zw = match zw.as_slice::<i32>()? {
                [one] => vec![*one; rows],
                all if all.len() == rows => all.to_vec(),
                _ => return Ok(None),
            };
            zero_point = Some((ix, zw));
            break;
        }
    }
    let skip = zero_point.as_ref().map(|(ix, _)| *ix);
    let Some((weights, starts)) =
        crate::banded::tile_operands(model, mm_node, matmul, (rows, vector_is_a), skip)?
    else {
        return Ok(None);
    };
    if weights.mn() != rows || weights.k() != k {
        return Ok(None);
    }
    let Some(unpacked) = crate::im2col::unpack_rows(&*weights) else {
        return Ok(None);
    };
    let weights = match gemv::Weights::new(&unpacked, rows, k, &starts, dot) {
        Ok(w) => w,
        Err(e) => {
            log::debug!("int8 matrix-vector product left to tract's kernel: {e}");
            return Ok(None);
        }
    };
    let op = Gemv {
        weights: Shared(std::sync::Arc::new(weights)),
        dot,
        output_shape: c_shape.into(),
        zero_point: zero_point.map(|(_, zw)| zw),
    };
    Ok(Some((
        tvec![node.inputs[0]],
        OutletId::new(mm_node.id, 0),
        op,
    )))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::Cell;

    use tract_onnx::pb::tensor_proto::DataType as D;

    use crate::banded::tests::{input_spec, outputs, test_inputs};
    use crate::load::{build_with, Target};
    use crate::onnx_build::{int, model_bytes, node, raw};

    thread_local! {
        /// Plans this thread loads put their matrix-vector products on [`super::Gemv`]
        /// (`Some(true)`) or leave them to tract (`Some(false)`) whatever the target.
        pub(crate) static FORCE: Cell<Option<bool>> = const { Cell::new(None) };
    }

    /// A head over `k` inputs and `n` classes: the input quantized to u8, then a
    /// QLinearMatMul (`k x n` weights, per tensor) or a QDQ Gemm (`n x k`, per class, with
    /// a bias), dequantized. Weights over [-127, 127], the last two at -127 and 127; with
    /// `u8_weights`, those plus 128 as u8 with a zero point of 137 (onnxruntime's
    /// `weight_type=QUInt8`, one zero point per tensor).
    fn head(k: usize, n: usize, gemm: bool, u8_weights: bool) -> Vec<u8> {
        let w: Vec<i8> = (0..k * n)
            .map(|i| match i {
                _ if i + 2 == k * n => -127,
                _ if i + 1 == k * n => 127,
                _ => ((i * 37 + i / 5) % 255) as i32 as i8,
            })
            .collect();
        let mut init = vec![
            raw("xs", D::Float, &[], &[0.021f32]),
            raw("xz", D::Uint8, &[], &[9u8]),
            raw("ys", D::Float, &[], &[0.07f32]),
            raw("yz", D::Uint8, &[], &[121u8]),
        ];
        let mut nodes = vec![
            node("Flatten", &["x"], "flat", vec![]),
            node("QuantizeLinear", &["flat", "xs", "xz"], "xq", vec![]),
        ];
        let weights = |shape: &[usize]| match u8_weights {
            false => raw("wq", D::Int8, shape, &w),
            true => {
                let w: Vec<u8> = w.iter().map(|&v| (v as u8) ^ 0x80).collect();
                raw("wq", D::Uint8, shape, &w)
            }
        };
        let zero_points = |count: usize, shape: &[usize]| match u8_weights {
            false => raw("wz", D::Int8, shape, &vec![0i8; count]),
            true => raw("wz", D::Uint8, shape, &vec![137u8; count]),
        };
        if gemm {
            let ws: Vec<f32> = (0..n).map(|c| 0.004 + 0.0007 * c as f32).collect();
            let bias: Vec<i32> = (0..n).map(|c| c as i32 * 91 - 400).collect();
            let bs: Vec<f32> = ws.iter().map(|w| 0.021 * w).collect();
            init.extend([
                weights(&[n, k]),
                raw("ws", D::Float, &[n], &ws),
                zero_points(n, &[n]),
                raw("bq", D::Int32, &[n], &bias),
                raw("bs", D::Float, &[n], &bs),
            ]);
            nodes.extend([
                node("DequantizeLinear", &["xq", "xs", "xz"], "xf", vec![]),
                node(
                    "DequantizeLinear",
                    &["wq", "ws", "wz"],
                    "wf",
                    vec![int("axis", 0)],
                ),
                node(
                    "DequantizeLinear",
                    &["bq", "bs"],
                    "bf",
                    vec![int("axis", 0)],
                ),
                node("Gemm", &["xf", "wf", "bf"], "g", vec![int("transB", 1)]),
                node("QuantizeLinear", &["g", "ys", "yz"], "yq", vec![]),
            ]);
        } else {
            init.extend([
                weights(&[k, n]),
                raw("ws", D::Float, &[], &[0.005f32]),
                zero_points(1, &[]),
            ]);
            nodes.push(node(
                "QLinearMatMul",
                &["xq", "xs", "xz", "wq", "ws", "wz", "ys", "yz"],
                "yq",
                vec![],
            ));
        }
        nodes.push(node("DequantizeLinear", &["yq", "ys", "yz"], "y", vec![]));
        model_bytes("head", nodes, init, ("x", &[1, k, 1, 1]), "y")
    }

    /// QLinearMatMul and QDQ Gemm heads of odd sizes: the plan with [`super::Gemv`] gives
    /// the bytes of the plan with tract's matmul, on inputs that drive the sums to both
    /// ends of the output's range.
    #[test]
    fn heads_on_the_engines_kernel_keep_tracts_bytes() {
        for (k, n, gemm, u8_weights) in [
            (24, 10, false, false),
            (77, 13, true, false),
            (1280, 33, true, false),
            (5, 1, false, false),
            (24, 10, false, true),
            (77, 13, true, true),
            (1280, 33, true, true),
        ] {
            let bytes = head(k, n, gemm, u8_weights);
            let spec = input_spec(k, 1, 1);
            let target = Target {
                input: &spec,
                output_tensor: "y",
                batch: 1,
            };
            let what = format!("{k} x {n}, gemm {gemm}, u8 weights {u8_weights}");
            FORCE.set(Some(false));
            let tracts = build_with(&bytes, &target, true).unwrap();
            FORCE.set(Some(true));
            let ours = build_with(&bytes, &target, true);
            FORCE.set(None);
            let ours = ours.unwrap();
            assert!(
                ours.patches
                    .iter()
                    .any(|p| p.contains("1 int8 matrix-vector product")),
                "{what}: {:?}",
                ours.patches
            );
            let gemvs: Vec<&super::Gemv> = ours
                .plan
                .model()
                .nodes()
                .iter()
                .filter_map(|n| n.op_as::<super::Gemv>())
                .collect();
            assert_eq!(gemvs.len(), 1, "{what}");
            assert_eq!(gemvs[0].zero_point.is_some(), u8_weights, "{what}");
            for data in test_inputs(k) {
                let data: Vec<f32> = data.iter().map(|v| v * 6.0 - 3.0).collect();
                assert_eq!(
                    outputs(&tracts.plan, &[1, k, 1, 1], &data),
                    outputs(&ours.plan, &[1, k, 1, 1], &data),
                    "{what}"
                );
            }
        }
    }
}
