//! QDQ models onto tract's integer path.
//!
//! onnxruntime's default quantized export (QDQ) keeps float operators between
//! `DequantizeLinear` and `QuantizeLinear` nodes: `DQ(x) → Conv(DQ(w), DQ(b)) → Q`. tract
//! 0.23.9 runs such a Conv in f32 (1.3x the fp32 model's time on the default bundle), while
//! onnxruntime itself fuses the pattern into its integer `QLinearConv` kernel. This module
//! does the same fusion on the protobuf, before tract parses it, where the pattern is
//! exactly a `QLinearConv`:
//!
//! - `Q(Conv(DQ(x), DQ(w)[, DQ(b)]))` becomes `QLinearConv(x, w[, b])` with the DQ and Q
//!   nodes' scales and zero points, when every scale and zero point is a constant, the
//!   weights are constant with one scale per output channel (or one for all), the bias is
//!   int32 with scale `x_scale * w_scale` (bit for bit) and zero point 0, and the Conv's
//!   only consumer is the Q;
//! - `Q(MaxPool(DQ(x)))` with the same scale and zero point on both sides becomes
//!   `MaxPool(x)`: dequantization is increasing, so the maximum commutes with it, and
//!   `Q(DQ(v)) = v`; so do the shape operators (Flatten, Reshape, Transpose, Squeeze,
//!   Unsqueeze), which move values without changing them;
//! - `[Q](Gemm(DQ(x), DQ(w)[, DQ(b)]))` and `[Q](MatMul(DQ(x), DQ(w)))` (a classifier's
//!   head) become onnxruntime's `com.microsoft.QGemm` under the Conv's conditions, which
//!   contrib.rs lowers to integer products on the int8 weights (tract would keep 4 bytes
//!   per weight in f32).
//!
//! Anything else is left as it is; the DQ nodes the rewrites leave without consumers are
//! removed. The integer model then takes the engine's int8 rewrites like a QOperator export.

use std::collections::{HashMap, HashSet};

use tract_onnx::data_resolver::FopenDataResolver;
use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::prelude::*;
use tract_onnx::tensor::load_tensor;

/// How many of each pattern [`fuse_qdq`] rewrote.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Fused {
    pub(crate) convs: usize,
    /// Max pools and shape operators run on the quantized values.
    pub(crate) moves: usize,
    /// Gemms written as `com.microsoft.QGemm`, for contrib.rs to lower.
    pub(crate) gemms: usize,
}

/// Rewrites the QDQ patterns above in place and returns how many of each.
pub(crate) fn fuse_qdq(model: &mut pb::ModelProto) -> Fused {
    let mut fused = Fused::default();
    let Some(graph) = model.graph.as_mut() else {
        return fused;
    };
    // One rewrite at a time, on a fresh index of the graph: each changes what consumes what.
    loop {
        let index = Index::new(graph);
        let found = (0..graph.node.len()).find_map(|i| {
            let node = &graph.node[i];
            match node.op_type.as_str() {
                "Conv" => conv_rewrite(graph, &index, i).map(|r| (r, "Conv")),
                "Gemm" | "MatMul" => gemm_rewrite(graph, &index, i).map(|r| (r, "Gemm")),
                _ => moves_values_rewrite(graph, &index, i).map(|r| (r, "moves")),
            }
        });
        let Some((rewrite, op)) = found else {
            break;
        };
        rewrite.apply(graph);
        match op {
            "Conv" => fused.convs += 1,
            "moves" => fused.moves += 1,
            _ => fused.gemms += 1,
        }
    }
    if fused != Fused::default() {
        remove_unused_dequantizers(graph);
    }
    fused
}

/// The operators left in float between `DequantizeLinear` and `QuantizeLinear` after the
/// fusion (an operator that reads a dequantized value and whose output is quantized), by
/// type with their counts, in the order first met.
pub(crate) fn float_between_qdq(model: &pb::ModelProto) -> Vec<(String, usize)> {
    let Some(graph) = model.graph.as_ref() else {
        return vec![];
    };
    let index = Index::new(graph);
    let quantized: HashSet<&str> = graph
        .node
        .iter()
        .filter(|n| n.op_type == "QuantizeLinear")
        .filter_map(|n| n.input.first().map(String::as_str))
        .collect();
    let mut counts: Vec<(String, usize)> = vec![];
    for node in &graph.node {
        if matches!(node.op_type.as_str(), "DequantizeLinear" | "QuantizeLinear") {
            continue;
        }
        // Written by the contrib lowering, which reports its operators itself.
        if node
            .output
            .iter()
            .any(|o| o.contains(crate::contrib::LOWERED))
        {
            continue;
        }
        let reads_dq = node
            .input
            .iter()
            .any(|i| index.produced_by(graph, i, "DequantizeLinear").is_some());
        if reads_dq && node.output.iter().any(|o| quantized.contains(o.as_str())) {
            tally(&mut counts, &node.op_type);
        }
    }
    counts
}

/// Every node of the graph as (the name tract gives its node, its operator type): its
/// name, else its first output's name (tract-onnx 0.23.9's rule; the rest are unnamed
/// to tract and left out).
pub(crate) fn tract_names(model: &pb::ModelProto) -> Vec<(String, String)> {
    let Some(graph) = model.graph.as_ref() else {
        return vec![];
    };
    graph
        .node
        .iter()
        .filter_map(|n| {
            let name = if n.name.is_empty() {
                n.output.first().filter(|o| !o.is_empty())?
            } else {
                &n.name
            };
            Some((name.clone(), n.op_type.clone()))
        })
        .collect()
}

/// Whether tract's plan node `plan_name` came from the ONNX node `onnx_name`: tract names a
/// node after its ONNX node, or that name, a dot and a suffix.
pub(crate) fn named_after(plan_name: &str, onnx_name: &str) -> bool {
    plan_name
        .strip_prefix(onnx_name)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// The ONNX node (of [`tract_names`]) a plan node named `plan_name` came from
/// ([`named_after`]): the longest such name.
pub(crate) fn onnx_node_of<'a>(
    nodes: &'a [(String, String)],
    plan_name: &str,
) -> Option<&'a (String, String)> {
    nodes
        .iter()
        .filter(|(name, _)| named_after(plan_name, name))
        .max_by_key(|(name, _)| name.len())
}

/// Counts one more `op` in `counts` (operator types in the order first met).
pub(crate) fn tally(counts: &mut Vec<(String, usize)>, op: &str) {
    match counts.iter_mut().find(|(o, _)| o == op) {
        Some((_, n)) => *n += 1,
        None => counts.push((op.to_string(), 1)),
    }
}

/// Who produces and who consumes each value of a graph, and its constants.
struct Index<'g> {
    producer: HashMap<&'g str, usize>,
    consumers: HashMap<&'g str, usize>,
    initializers: HashMap<&'g str, &'g pb::TensorProto>,
    outputs: HashSet<&'g str>,
}

impl<'g> Index<'g> {
    fn new(graph: &'g pb::GraphProto) -> Index<'g> {
        let mut producer = HashMap::new();
        let mut consumers: HashMap<&str, usize> = HashMap::new();
        for (i, node) in graph.node.iter().enumerate() {
            for out in &node.output {
                producer.insert(out.as_str(), i);
            }
            for input in &node.input {
                *consumers.entry(input.as_str()).or_default() += 1;
            }
        }
        Index {
            producer,
            consumers,
            initializers: graph
                .initializer
                .iter()
                .map(|t| (t.name.as_str(), t))
                .collect(),
            outputs: graph.output.iter().map(|o| o.name.as_str()).collect(),
        }
    }

    /// The node producing `value` if it is a plain ONNX `op`.
    fn produced_by(&self, graph: &'g pb::GraphProto, value: &str, op: &str) -> Option<usize> {
        let i = *self.producer.get(value)?;
        let node = &graph.node[i];
        (node.op_type == op && (node.domain.is_empty() || node.domain == "ai.onnx")).then_some(i)
    }

    /// The one node consuming `value`, when it is a plain ONNX `op` and `value` is not a
    /// graph output.
    fn only_consumer(&self, graph: &'g pb::GraphProto, value: &str, op: &str) -> Option<usize> {
        if self.outputs.contains(value) || self.consumers.get(value) != Some(&1) {
            return None;
        }
        let i = graph
            .node
            .iter()
            .position(|n| n.input.iter().any(|x| x == value))?;
        let node = &graph.node[i];
        (node.op_type == op && (node.domain.is_empty() || node.domain == "ai.onnx")).then_some(i)
    }

    fn constant(&self, name: &str) -> Option<&'g pb::TensorProto> {
        self.initializers.get(name).copied()
    }

    /// A scale, zero point or bias constant, decoded by tract's own ONNX tensor loader
    /// (only the element types these hold).
    fn value(&self, name: &str) -> Option<Tensor> {
        let t = self.constant(name)?;
        let numeric = matches!(
            dtype(t),
            Some(DataType::Float | DataType::Uint8 | DataType::Int8 | DataType::Int32)
        );
        numeric
            .then(|| load_tensor(&FopenDataResolver, t, None).ok())
            .flatten()
    }
}

/// A node to insert in place of others.
struct Rewrite {
    remove: Vec<usize>,
    node: pb::NodeProto,
}

impl Rewrite {
    fn apply(self, graph: &mut pb::GraphProto) {
        let at = *self
            .remove
            .iter()
            .min()
            .expect("a rewrite removes its nodes");
        let mut remove = self.remove;
        remove.sort_unstable();
        for i in remove.into_iter().rev() {
            graph.node.remove(i);
        }
        // Where the first replaced node was: its inputs are produced before it, and the
        // nodes after it that consumed the Q's output still come after.
        graph.node.insert(at, self.node);
    }
}

/// `(scale, zero point)` inputs of a DequantizeLinear or QuantizeLinear node: both named
/// and constant.
fn scale_and_zero_point<'g>(
    index: &Index<'g>,
    node: &'g pb::NodeProto,
) -> Option<(&'g str, &'g str)> {
    let [_, scale, zero_point] = &node.input[..] else {
        return None;
    };
    index.constant(scale)?;
    index.constant(zero_point)?;
    Some((scale.as_str(), zero_point.as_str()))
}

/// A standard-domain node `op(DQ(x), DQ(w)[, b])` of one output: its DequantizeLinear nodes,
/// their constant scales and zero points, and the bias input if any.
struct Dequantized<'g> {
    dq_x: &'g pb::NodeProto,
    dq_w: &'g pb::NodeProto,
    x: (&'g str, &'g str),
    w: (&'g str, &'g str),
    bias: Option<&'g str>,
}

impl Dequantized<'_> {
    /// x, its scale and zero point, w, its scale and zero point: the first six inputs of a
    /// QLinearConv and of a QGemm.
    fn inputs(&self) -> Vec<String> {
        let (x, w) = (&self.dq_x.input[0], &self.dq_w.input[0]);
        [x.as_str(), self.x.0, self.x.1, w, self.w.0, self.w.1]
            .map(String::from)
            .to_vec()
    }

    /// The weights' scales and the output channels, when the weights are a constant
    /// int8 or uint8 tensor of `rank` dimensions quantized with one scale for all or one
    /// per output channel along `channel_axis`, and as many zero points.
    fn weight_scales(
        &self,
        index: &Index,
        rank: usize,
        channel_axis: usize,
    ) -> Option<(Vec<f32>, usize)> {
        let weights = index.constant(&self.dq_w.input[0])?;
        let channels = *weights.dims.get(channel_axis)? as usize;
        let scales = floats(&index.value(self.w.0)?)?;
        let per_channel = scales.len() == channels && channels > 1;
        let fits = weights.dims.len() == rank
            && matches!(dtype(weights), Some(DataType::Int8 | DataType::Uint8))
            && (scales.len() == 1 || per_channel)
            && index.value(self.w.1)?.len() == scales.len()
            && (!per_channel || axis(self.dq_w) == channel_axis as i64);
        fits.then_some((scales, channels))
    }
}

fn dequantized_operands<'g>(
    graph: &'g pb::GraphProto,
    index: &Index<'g>,
    node: &'g pb::NodeProto,
) -> Option<Dequantized<'g>> {
    if !(node.domain.is_empty() || node.domain == "ai.onnx") || node.output.len() != 1 {
        return None;
    }
    let (x, w, bias) = match &node.input[..] {
        [x, w] => (x, w, None),
        [x, w, b] if !b.is_empty() => (x, w, Some(b.as_str())),
        _ => return None,
    };
    let dq_x = &graph.node[index.produced_by(graph, x, "DequantizeLinear")?];
    let dq_w = &graph.node[index.produced_by(graph, w, "DequantizeLinear")?];
    Some(Dequantized {
        dq_x,
        dq_w,
        x: scale_and_zero_point(index, dq_x)?,
        w: scale_and_zero_point(index, dq_w)?,
        bias,
    })
}

fn conv_rewrite(graph: &pb::GraphProto, index: &Index, conv_at: usize) -> Option<Rewrite> {
    let conv = &graph.node[conv_at];
    let operands = dequantized_operands(graph, index, conv)?;
    let ((x_scale, x_zp), b) = (operands.x, operands.bias);
    let q_at = index.only_consumer(graph, &conv.output[0], "QuantizeLinear")?;
    let q = &graph.node[q_at];
    let (y_scale, y_zp) = scale_and_zero_point(index, q)?;
    // Activations: one scale and zero point each.
    for name in [x_scale, x_zp, y_scale, y_zp] {
        if index.value(name)?.len() != 1 {
            return None;
        }
    }
    // Weights: 4-D, one scale per output channel along axis 0, or one for all.
    let (w_scales, out_channels) = operands.weight_scales(index, 4, 0)?;
    let mut inputs = operands.inputs();
    inputs.extend([y_scale.into(), y_zp.into()]);
    if let Some(b) = b {
        inputs.push(int32_bias(
            graph,
            index,
            b,
            x_scale,
            &w_scales,
            out_channels,
        )?);
    }
    Some(Rewrite {
        remove: vec![conv_at, q_at],
        node: pb::NodeProto {
            name: conv.name.clone(),
            op_type: "QLinearConv".into(),
            domain: String::new(),
            input: inputs,
            output: vec![q.output.first()?.clone()],
            attribute: conv.attribute.clone(),
            doc_string: String::new(),
        },
    })
}

/// The int32 values behind the bias `b`, when it is their DequantizeLinear in units of
/// `x_scale * w_scale` (bit for bit, per output channel when the weights are) with zero
/// point 0: exactly what QLinearConv and QGemm add to their accumulators.
fn int32_bias(
    graph: &pb::GraphProto,
    index: &Index,
    b: &str,
    x_scale: &str,
    w_scales: &[f32],
    out_channels: usize,
) -> Option<String> {
    let per_channel = w_scales.len() > 1;
    let dq_b = &graph.node[index.produced_by(graph, b, "DequantizeLinear")?];
    let bias = index.value(dq_b.input.first()?)?;
    let b_scales = floats(&index.value(dq_b.input.get(1)?)?)?;
    let x_scale = *floats(&index.value(x_scale)?)?.first()?;
    let zero = match dq_b.input.get(2) {
        Some(name) if !name.is_empty() => index.value(name)?.is_all_zero().ok()?,
        _ => true,
    };
    let expected = |c: usize| x_scale * w_scales[if per_channel { c } else { 0 }];
    let scales_match = if b_scales.len() == 1 {
        !per_channel && b_scales[0].to_bits() == expected(0).to_bits()
    } else {
        b_scales.len() == out_channels
            && (0..out_channels).all(|c| b_scales[c].to_bits() == expected(c).to_bits())
    };
    let fits = bias.datum_type() == DatumType::I32
        && bias.len() == out_channels
        && zero
        && scales_match
        && (b_scales.len() == 1 || axis(dq_b) == 0);
    fits.then(|| dq_b.input[0].clone())
}

/// `[Q](Gemm(DQ(x), DQ(w)[, DQ(b)]))`, a classifier's head, as onnxruntime's
/// `com.microsoft.QGemm`, which contrib.rs then lowers to integer products on the int8
/// weights: the same conditions as a Conv's for the scales, zero points and bias, weights
/// quantized per tensor or per output column, A not transposed, `beta` 1. Without a
/// QuantizeLinear after it the QGemm's output is f32, as the Gemm's was.
///
/// A `MatMul` of a constant 2-D B (Keras heads exported by tf2onnx: MatMul, then the bias
/// Add) is the same product without bias, for any rank of A: the lowering's MatMulInteger
/// and its per-column multipliers broadcast over A's leading axes. Only with one weight
/// zero point for all columns, which the integer lowering takes (its float fallback is a
/// 2-D Gemm).
fn gemm_rewrite(graph: &pb::GraphProto, index: &Index, gemm_at: usize) -> Option<Rewrite> {
    let gemm = &graph.node[gemm_at];
    let int_attr = |name: &str| gemm.attribute.iter().find(|a| a.name == name).map(|a| a.i);
    let float_attr = |name: &str| gemm.attribute.iter().find(|a| a.name == name).map(|a| a.f);
    let trans_b = int_attr("transB").unwrap_or(0) != 0;
    if int_attr("transA").unwrap_or(0) != 0 || float_attr("beta").unwrap_or(1.0) != 1.0 {
        return None;
    }
    let operands = dequantized_operands(graph, index, gemm)?;
    let matmul = gemm.op_type == "MatMul";
    if matmul && (operands.bias.is_some() || !gemm.attribute.is_empty()) {
        return None;
    }
    let ((x_scale, x_zp), b) = (operands.x, operands.bias);
    let q_at = index.only_consumer(graph, &gemm.output[0], "QuantizeLinear");
    let quantized = match q_at {
        Some(q_at) => Some(scale_and_zero_point(index, &graph.node[q_at])?),
        None => None,
    };
    for name in [x_scale, x_zp]
        .into_iter()
        .chain(quantized.into_iter().flat_map(|(s, z)| [s, z]))
    {
        if index.value(name)?.len() != 1 {
            return None;
        }
    }
    // Weights: 2-D, one scale per output column (axis 0 of a transposed B, axis 1
    // otherwise), or one for all.
    let (w_scales, columns) = operands.weight_scales(index, 2, usize::from(!trans_b))?;
    if matmul {
        let zero_points = index
            .value(operands.w.1)?
            .cast_to::<f32>()
            .ok()?
            .into_owned();
        let zero_points = floats(&zero_points)?;
        if zero_points.iter().any(|&z| z != zero_points[0]) {
            return None;
        }
    }
    let mut inputs = operands.inputs();
    inputs.push(match b {
        Some(b) => int32_bias(graph, index, b, x_scale, &w_scales, columns)?,
        None => String::new(),
    });
    let mut remove = vec![gemm_at];
    let output = match (q_at, quantized) {
        (Some(q_at), Some((y_scale, y_zp))) => {
            inputs.extend([y_scale.into(), y_zp.into()]);
            remove.push(q_at);
            graph.node[q_at].output.first()?.clone()
        }
        _ => gemm.output[0].clone(),
    };
    Some(Rewrite {
        remove,
        node: pb::NodeProto {
            name: gemm.name.clone(),
            op_type: "QGemm".into(),
            domain: "com.microsoft".into(),
            input: inputs,
            output: vec![output],
            attribute: gemm
                .attribute
                .iter()
                .filter(|a| a.name == "alpha" || a.name == "transB")
                .cloned()
                .collect(),
            doc_string: String::new(),
        },
    })
}

/// Operators whose outputs are values of their first input, moved or selected: a max
/// pool's maxima and the shape operators. Between a DequantizeLinear and a QuantizeLinear
/// of one scale and zero point, they give the same codes on the quantized values.
const MOVES_VALUES: [&str; 6] = [
    "MaxPool",
    "Flatten",
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
];

/// `Q(op(DQ(x), rest...))` as `op(x, rest...)` for an operator of [`MOVES_VALUES`].
fn moves_values_rewrite(graph: &pb::GraphProto, index: &Index, op_at: usize) -> Option<Rewrite> {
    let op = &graph.node[op_at];
    // A max pool's padding and ceil mode hold too: its windows take the maxima of the
    // values inside the input (tract's integer pool skips the padding, as -inf does).
    // A pool with a second output (the indices) is not rewritten.
    if !(op.domain.is_empty() || op.domain == "ai.onnx")
        || !MOVES_VALUES.contains(&op.op_type.as_str())
        || op.input.is_empty()
        || op.output.len() != 1
    {
        return None;
    }
    let dq = &graph.node[index.produced_by(graph, &op.input[0], "DequantizeLinear")?];
    let q_at = index.only_consumer(graph, &op.output[0], "QuantizeLinear")?;
    let q = &graph.node[q_at];
    let (in_scale, in_zp) = scale_and_zero_point(index, dq)?;
    let (out_scale, out_zp) = scale_and_zero_point(index, q)?;
    let scale = index.value(in_scale)?;
    let zero_point = index.value(in_zp)?;
    let [s] = floats(&scale)?[..] else {
        return None;
    };
    // A positive finite scale: dequantization is then increasing.
    let increasing = s > 0.0 && s.is_finite();
    if !increasing
        || scale != index.value(out_scale)?
        || zero_point != index.value(out_zp)?
        || zero_point.len() != 1
    {
        return None;
    }
    let mut input = op.input.clone();
    input[0] = dq.input[0].clone();
    Some(Rewrite {
        remove: vec![op_at, q_at],
        node: pb::NodeProto {
            input,
            output: vec![q.output.first()?.clone()],
            ..op.clone()
        },
    })
}

/// Operators that combine the values of a row, which tract 0.23.9 nevertheless maps as
/// element-wise (their axes mapping is the identity). Between a `DequantizeLinear` and a
/// `QuantizeLinear`, tract's dequantization declutter then replaces `Q(op(DQ(x)))` with a
/// 256-entry lookup table that it computes by running the operator over one row holding
/// all 256 codes: a QDQ model ending in `Softmax` returned 1.0 for every class.
const ROW_OPERATORS: [&str; 3] = ["Softmax", "LogSoftmax", "Hardmax"];

/// Feeds every row operator of [`ROW_OPERATORS`] that reads a per-tensor
/// `DequantizeLinear` from the same arithmetic spelled `Mul(Sub(Cast(x), zero_point),
/// scale)` instead, which tract's declutter leaves alone; `(x - zp) * scale` in f32 is the
/// DequantizeLinear's value bit for bit (codes and zero points are exact in f32). Returns
/// how many operators it re-fed.
pub(crate) fn keep_row_operators_exact(model: &mut pb::ModelProto) -> usize {
    let Some(graph) = model.graph.as_mut() else {
        return 0;
    };
    let index = Index::new(graph);
    // (row operator, quantized input, scale name, zero point, dequantizer name)
    let mut found: Vec<(usize, String, String, f32, String)> = Vec::new();
    for (at, node) in graph.node.iter().enumerate() {
        let plain = node.domain.is_empty() || node.domain == "ai.onnx";
        if !plain || !ROW_OPERATORS.contains(&node.op_type.as_str()) {
            continue;
        }
        let Some(dq_at) = node
            .input
            .first()
            .and_then(|x| index.produced_by(graph, x, "DequantizeLinear"))
        else {
            continue;
        };
        let dq = &graph.node[dq_at];
        let (Some(x), Some(scale_name)) = (dq.input.first(), dq.input.get(1)) else {
            continue;
        };
        let one = |t: &Tensor| t.len() == 1;
        let Some(scale) = index.value(scale_name).filter(one) else {
            continue;
        };
        if scale.datum_type() != f32::datum_type() {
            continue;
        }
        let zero_point = match dq.input.get(2).filter(|z| !z.is_empty()) {
            None => 0.0,
            Some(z) => match index
                .value(z)
                .filter(one)
                .and_then(|t| t.cast_to::<f32>().ok().and_then(|t| floats(&t)))
            {
                Some(v) => v[0],
                None => continue,
            },
        };
        found.push((
            at,
            x.clone(),
            scale_name.clone(),
            zero_point,
            dq.name.clone(),
        ));
    }
    // From the last node back, so the positions found stay valid while nodes go in.
    for (n, (at, x, scale, zero_point, dq_name)) in found.iter().enumerate().rev() {
        let base = format!("{dq_name}/edgedx_exact_dequantize_{n}");
        let (cast, zp, centred, value) = (
            format!("{base}/cast"),
            format!("{base}/zero_point"),
            format!("{base}/centred"),
            format!("{base}/value"),
        );
        graph.initializer.push(pb::TensorProto {
            name: zp.clone(),
            data_type: DataType::Float as i32,
            raw_data: zero_point.to_le_bytes().to_vec(),
            ..Default::default()
        });
        let node = |op: &str, inputs: Vec<String>, output: &str| pb::NodeProto {
            op_type: op.into(),
            name: format!("{output}/node"),
            input: inputs,
            output: vec![output.to_string()],
            ..Default::default()
        };
        let mut to_float = node("Cast", vec![x.clone()], &cast);
        to_float.attribute.push(pb::AttributeProto {
            name: "to".into(),
            r#type: pb::attribute_proto::AttributeType::Int as i32,
            i: DataType::Float as i64,
            ..Default::default()
        });
        graph.node[*at].input[0] = value.clone();
        let new = [
            to_float,
            node("Sub", vec![cast.clone(), zp], &centred),
            node("Mul", vec![centred.clone(), scale.clone()], &value),
        ];
        for (k, n) in new.into_iter().enumerate() {
            graph.node.insert(at + k, n);
        }
    }
    if !found.is_empty() {
        remove_unused_dequantizers(graph);
    }
    found.len()
}

/// The scale of the per-tensor DequantizeLinear that makes graph output `output`, if one
/// does: the output then moves in steps of that size (a quantized Softmax's probabilities
/// are multiples of 1/255 and sum to 1 only within one half-step per class).
pub(crate) fn output_step(model: &pb::ModelProto, output: &str) -> Option<f32> {
    let graph = model.graph.as_ref()?;
    let index = Index::new(graph);
    let dq = &graph.node[index.produced_by(graph, output, "DequantizeLinear")?];
    let scale = index.value(dq.input.get(1)?)?;
    (scale.len() == 1)
        .then(|| floats(&scale).map(|v| v[0]))
        .flatten()
        .filter(|s| s.is_finite() && *s > 0.0)
}

/// Drops DequantizeLinear nodes whose outputs nothing reads any more.
fn remove_unused_dequantizers(graph: &mut pb::GraphProto) {
    loop {
        let used: HashSet<String> = graph
            .node
            .iter()
            .flat_map(|n| n.input.iter().cloned())
            .chain(graph.output.iter().map(|o| o.name.clone()))
            .collect();
        let before = graph.node.len();
        graph.node.retain(|n| {
            n.op_type != "DequantizeLinear" || n.output.iter().any(|o| used.contains(o))
        });
        if graph.node.len() == before {
            break;
        }
    }
}

fn dtype(t: &pb::TensorProto) -> Option<DataType> {
    DataType::try_from(t.data_type).ok()
}

fn axis(node: &pb::NodeProto) -> i64 {
    node.attribute
        .iter()
        .find(|a| a.name == "axis")
        .map_or(1, |a| a.i)
}

/// An f32 tensor's values.
fn floats(t: &Tensor) -> Option<Vec<f32>> {
    Some(
        t.to_plain_array_view::<f32>()
            .ok()?
            .iter()
            .copied()
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx_build::{int, ints, node, raw};

    fn axis0() -> pb::AttributeProto {
        int("axis", 0)
    }

    fn tensor(name: &str, dt: DataType, dims: &[usize], bytes: Vec<u8>) -> pb::TensorProto {
        raw(name, dt, dims, &bytes)
    }

    fn f32s(name: &str, dims: &[usize], v: &[f32]) -> pb::TensorProto {
        raw(name, DataType::Float, dims, v)
    }

    /// x → Q → DQ → Conv(DQ(w), DQ(b)) → Q → DQ → MaxPool → Q → DQ → y, two output channels
    /// with their own weight scales; `spoil` changes one detail.
    fn model(spoil: &str) -> pb::ModelProto {
        let (xs, ws) = (0.02f32, [0.5f32, 0.25]);
        let bias_scale: Vec<f32> = ws
            .iter()
            .map(|w| {
                if spoil == "bias scale" {
                    xs * w * 1.5
                } else {
                    xs * w
                }
            })
            .collect();
        let mut nodes = vec![
            node("QuantizeLinear", &["x", "xs", "xz"], "xq", vec![]),
            node("DequantizeLinear", &["xq", "xs", "xz"], "xf", vec![]),
            node("DequantizeLinear", &["wq", "ws", "wz"], "wf", vec![axis0()]),
            node("DequantizeLinear", &["bq", "bs", "bz"], "bf", vec![axis0()]),
            node(
                "Conv",
                &["xf", "wf", "bf"],
                "c",
                vec![ints("kernel_shape", &[3, 3])],
            ),
            node("QuantizeLinear", &["c", "ys", "yz"], "cq", vec![]),
            node("DequantizeLinear", &["cq", "ys", "yz"], "cf", vec![]),
            node(
                "MaxPool",
                &["cf"],
                "p",
                vec![
                    ints("kernel_shape", &[2, 2]),
                    ints(
                        "pads",
                        if spoil == "pool pads" {
                            &[1, 1, 1, 1]
                        } else {
                            &[0, 0, 0, 0]
                        },
                    ),
                ],
            ),
            node(
                "QuantizeLinear",
                &["p", if spoil == "pool scale" { "xs" } else { "ys" }, "yz"],
                "pq",
                vec![],
            ),
            node("DequantizeLinear", &["pq", "ys", "yz"], "y", vec![]),
        ];
        let mut outputs = vec![pb::ValueInfoProto {
            name: "y".into(),
            ..Default::default()
        }];
        if spoil == "conv output read twice" {
            nodes.push(node("Relu", &["c"], "r", vec![]));
            outputs.push(pb::ValueInfoProto {
                name: "r".into(),
                ..Default::default()
            });
        }
        let initializer = vec![
            f32s("xs", &[], &[xs]),
            tensor("xz", DataType::Uint8, &[], vec![3]),
            tensor(
                "wq",
                DataType::Int8,
                &[2, 1, 3, 3],
                (0..18u8).map(|i| i.wrapping_mul(37)).collect(),
            ),
            f32s("ws", &[2], &ws),
            tensor("wz", DataType::Int8, &[2], vec![0, 0]),
            tensor(
                "bq",
                DataType::Int32,
                &[2],
                [5i32, -7].iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            f32s("bs", &[2], &bias_scale),
            tensor("bz", DataType::Int32, &[2], vec![0; 8]),
            f32s("ys", &[], &[0.1]),
            tensor("yz", DataType::Uint8, &[], vec![0]),
        ];
        pb::ModelProto {
            graph: Some(pb::GraphProto {
                node: nodes,
                initializer,
                output: outputs,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ops(m: &pb::ModelProto) -> Vec<String> {
        m.graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .map(|n| n.op_type.clone())
            .collect()
    }

    #[test]
    fn convolutions_and_pools_become_integer_ops() {
        let mut m = model("");
        assert_eq!(
            fuse_qdq(&mut m),
            Fused {
                convs: 1,
                moves: 1,
                gemms: 0
            }
        );
        assert_eq!(
            ops(&m),
            [
                "QuantizeLinear",
                "QLinearConv",
                "MaxPool",
                "DequantizeLinear"
            ]
        );
        let graph = m.graph.as_ref().unwrap();
        let conv = &graph.node[1];
        assert_eq!(
            conv.input,
            ["xq", "xs", "xz", "wq", "ws", "wz", "ys", "yz", "bq"]
        );
        assert_eq!(conv.output, ["cq"]);
        assert_eq!(graph.node[2].input, ["cq"]);
        assert_eq!(graph.node[2].output, ["pq"]);
        // Nothing is left to match.
        assert_eq!(fuse_qdq(&mut m), Fused::default());
    }

    #[test]
    fn patterns_that_are_not_exactly_integer_ops_are_left_alone() {
        for (spoil, (convs, moves)) in [
            ("bias scale", (0, 1)),
            ("conv output read twice", (0, 1)),
            ("pool scale", (1, 0)),
            // Not a spoil: a padded max pool is exact on the quantized values too.
            ("pool pads", (1, 1)),
        ] {
            let mut m = model(spoil);
            let want = Fused {
                convs,
                moves,
                gemms: 0,
            };
            assert_eq!(fuse_qdq(&mut m), want, "{spoil}");
        }
    }

    /// `Q → DQ → Reshape(shape) → Q → DQ`, the Reshape's quantization `(scale, zero point)`:
    /// the Reshape runs on the quantized values, its shape input kept, only with the scale
    /// and zero point of its input.
    #[test]
    fn shape_operators_move_the_quantized_values() {
        for ((scale, zp), fused) in [((0.1f32, 3u8), 1), ((0.2, 3), 0), ((0.1, 4), 0)] {
            let u8s = |name: &str, v: u8| raw(name, DataType::Uint8, &[], &[v]);
            let f32s = |name: &str, v: f32| raw(name, DataType::Float, &[], &[v]);
            let mut m = pb::ModelProto {
                graph: Some(pb::GraphProto {
                    node: vec![
                        node("QuantizeLinear", &["x", "s", "z"], "xq", vec![]),
                        node("DequantizeLinear", &["xq", "s", "z"], "xf", vec![]),
                        node("Reshape", &["xf", "shape"], "r", vec![]),
                        node("QuantizeLinear", &["r", "rs", "rz"], "rq", vec![]),
                        node("DequantizeLinear", &["rq", "rs", "rz"], "y", vec![]),
                    ],
                    initializer: vec![
                        f32s("s", 0.1),
                        u8s("z", 3),
                        f32s("rs", scale),
                        u8s("rz", zp),
                        raw("shape", DataType::Int64, &[2], &[1i64, -1]),
                    ],
                    output: vec![pb::ValueInfoProto {
                        name: "y".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            };
            assert_eq!(fuse_qdq(&mut m).moves, fused, "{scale} {zp}");
            if fused == 1 {
                assert_eq!(ops(&m), ["QuantizeLinear", "Reshape", "DequantizeLinear"]);
                let reshape = &m.graph.as_ref().unwrap().node[1];
                assert_eq!(reshape.input, ["xq", "shape"]);
                assert_eq!(reshape.output, ["rq"]);
            }
        }
    }

    /// `x` (1 x 1 x 2 x 3 image) flattened, quantized (scale 0.1, zero point 89), then
    /// `DQ -> row operator -> Q (1/255, 0) -> DQ`: the tail of a QDQ classifier with a
    /// Softmax inside the graph.
    fn quantized_softmax(op: &str) -> Vec<u8> {
        let u8s = |name: &str, v: u8| raw(name, DataType::Uint8, &[], &[v]);
        let f32s = |name: &str, v: f32| raw(name, DataType::Float, &[], &[v]);
        crate::onnx_build::model_bytes(
            "softmax-tail",
            vec![
                node("Flatten", &["x"], "flat", vec![]),
                node("QuantizeLinear", &["flat", "s_in", "z_in"], "q_in", vec![]),
                node(
                    "DequantizeLinear",
                    &["q_in", "s_in", "z_in"],
                    "dq_in",
                    vec![],
                ),
                node(op, &["dq_in"], "p", vec![]),
                node("QuantizeLinear", &["p", "s_out", "z_out"], "q_out", vec![]),
                node(
                    "DequantizeLinear",
                    &["q_out", "s_out", "z_out"],
                    "y",
                    vec![],
                ),
            ],
            vec![
                f32s("s_in", 0.1),
                u8s("z_in", 89),
                f32s("s_out", 1.0 / 255.0),
                u8s("z_out", 0),
            ],
            ("x", &[1, 1, 2, 3]),
            "y",
        )
    }

    #[test]
    fn a_softmax_between_quantizers_computes_a_softmax() {
        use edgedx_bundle::{Colour, InputSpec, Layout};
        let spec =
            InputSpec::stretched("x", Layout::Nchw, 2, 3, Colour::Grey, vec![0.0], vec![1.0]);
        let target = crate::load::Target {
            input: &spec,
            output_tensor: "y",
            batch: 1,
        };
        let x = [-3.1f32, 0.4, 2.0, -0.05, 1.26, 0.0];
        // The reference: each step as ONNX defines it, in f32 (onnxruntime's arithmetic).
        let q = |v: f32, s: f32, z: f32| ((v / s).round_ties_even() + z).clamp(0.0, 255.0);
        let d: Vec<f32> = x
            .iter()
            .map(|&v| (q(v, 0.1, 89.0) - 89.0) * 0.1f32)
            .collect();
        let max = d.iter().cloned().fold(f32::MIN, f32::max);
        let e: Vec<f32> = d.iter().map(|v| (v - max).exp()).collect();
        let sum: f32 = e.iter().sum();
        let want: Vec<f32> = e
            .iter()
            .map(|v| q(v / sum, 1.0 / 255.0, 0.0) * (1.0f32 / 255.0))
            .collect();
        for rewrite in [true, false] {
            let built =
                crate::load::build_with(quantized_softmax("Softmax"), &target, rewrite).unwrap();
            let input = Tensor::from_shape(&[1, 1, 2, 3], &x).unwrap();
            let out = built.plan.run(tvec!(input.into_tvalue())).unwrap();
            let got: Vec<f32> = out[0]
                .to_plain_array_view::<f32>()
                .unwrap()
                .iter()
                .copied()
                .collect();
            for (g, w) in got.iter().zip(&want) {
                // One output step apart at most: exp and the division may round either way.
                assert!(
                    (g - w).abs() <= 1.0 / 255.0 + 1e-6,
                    "rewrite {rewrite}: {got:?} vs {want:?}"
                );
            }
            assert_eq!(built.output_step, 1.0 / 255.0);
            assert!(
                built.patches.iter().any(|p| p.contains("Softmax-like")),
                "{:?}",
                built.patches
            );
        }
    }

    #[test]
    fn only_row_operators_after_a_per_tensor_dequantizer_are_refed() {
        use prost::Message;
        for (op, want) in [("Softmax", 1), ("LogSoftmax", 1), ("Relu", 0)] {
            let mut m = pb::ModelProto::decode(&quantized_softmax(op)[..]).unwrap();
            assert_eq!(keep_row_operators_exact(&mut m), want, "{op}");
            let graph = m.graph.as_ref().unwrap();
            let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
            if want == 1 {
                assert_eq!(
                    ops,
                    [
                        "Flatten",
                        "QuantizeLinear",
                        "Cast",
                        "Sub",
                        "Mul",
                        op,
                        "QuantizeLinear",
                        "DequantizeLinear"
                    ]
                );
            }
        }
    }

    /// `x → Flatten → Q → DQ → Gemm(DQ(w), DQ(b)) → [Q → DQ] → y`, weights quantized per
    /// output column: B as written (transB 0, scales along axis 1) and transposed (transB 1,
    /// axis 0), with a quantized and a float output; and the same head as a MatMul without
    /// bias on a rank-3 A (`Reshape` to 1 x 1 x k, as tf2onnx writes a Keras head). The head
    /// runs as integer products and
    /// gives the float plan's outputs within one output step (a quantized output) or to
    /// f32 rounding (a float one: both sum the same exact products).
    #[test]
    fn qdq_gemm_heads_run_as_integer_products() {
        use crate::banded::tests::{input_spec, test_inputs};
        use crate::load::{build_with, Target};
        let (k, n) = (24usize, 10usize);
        let (xs, ys) = (0.02f32, 0.05f32);
        let ws: Vec<f32> = (0..n).map(|c| 0.01 + 0.003 * c as f32).collect();
        for (op, trans_b, quantized) in [
            ("Gemm", false, true),
            ("Gemm", true, true),
            ("Gemm", false, false),
            ("MatMul", false, true),
            ("MatMul", false, false),
        ] {
            let matmul = op == "MatMul";
            // w[kk][c] (or w[c][kk] transposed): pseudo-random codes in [-127, 127].
            let code = |kk: usize, c: usize| ((kk * 31 + c * 17) % 255) as i8 as i32 as i8;
            let w: Vec<i8> = if trans_b {
                (0..n * k).map(|i| code(i % k, i / k)).collect()
            } else {
                (0..k * n).map(|i| code(i / n, i % n)).collect()
            };
            let dims = if trans_b { [n, k] } else { [k, n] };
            let bias: Vec<i32> = (0..n).map(|c| c as i32 * 37 - 150).collect();
            let bs: Vec<f32> = ws.iter().map(|w| xs * w).collect();
            let axis = int("axis", i64::from(!trans_b));
            let mut nodes = vec![
                match matmul {
                    false => node("Flatten", &["x"], "flat", vec![]),
                    true => node("Reshape", &["x", "rank3"], "flat", vec![]),
                },
                node("QuantizeLinear", &["flat", "xs", "xz"], "xq", vec![]),
                node("DequantizeLinear", &["xq", "xs", "xz"], "xf", vec![]),
                node("DequantizeLinear", &["wq", "ws", "wz"], "wf", vec![axis]),
                node("DequantizeLinear", &["bq", "bs"], "bf", vec![axis0()]),
            ];
            let gemm_out = if quantized { "g" } else { "y" };
            nodes.push(match matmul {
                false => node(
                    "Gemm",
                    &["xf", "wf", "bf"],
                    gemm_out,
                    vec![int("transB", i64::from(trans_b))],
                ),
                true => node("MatMul", &["xf", "wf"], gemm_out, vec![]),
            });
            if quantized {
                nodes.push(node("QuantizeLinear", &["g", "ys", "yz"], "gq", vec![]));
                nodes.push(node("DequantizeLinear", &["gq", "ys", "yz"], "y", vec![]));
            }
            let init = vec![
                raw("xs", DataType::Float, &[], &[xs]),
                raw("xz", DataType::Uint8, &[], &[7u8]),
                raw("wq", DataType::Int8, &dims, &w),
                raw("ws", DataType::Float, &[n], &ws),
                raw("wz", DataType::Int8, &[n], &vec![0i8; n]),
                raw("bq", DataType::Int32, &[n], &bias),
                raw("bs", DataType::Float, &[n], &bs),
                raw("ys", DataType::Float, &[], &[ys]),
                raw("yz", DataType::Uint8, &[], &[128u8]),
                raw("rank3", DataType::Int64, &[3], &[1i64, 1, -1]),
            ];
            let bytes =
                crate::onnx_build::model_bytes("qdq-gemm", nodes, init, ("x", &[1, k, 1, 1]), "y");
            let spec = input_spec(k, 1, 1);
            let target = Target {
                input: &spec,
                output_tensor: "y",
                batch: 1,
            };
            let what = format!("{op}, transB {trans_b}, quantized output {quantized}");
            let plain = build_with(&bytes, &target, false).unwrap();
            let ours = build_with(&bytes, &target, true).unwrap();
            assert!(
                ours.patches
                    .iter()
                    .any(|p| p.contains("1 QDQ Gemm/MatMul head as integer products")),
                "{what}: {:?}",
                ours.patches
            );
            assert!(ours.in_float.is_empty(), "{what}: {:?}", ours.in_float);
            let run = |plan: &crate::Plan, data: &[f32]| -> Vec<f32> {
                let input = Tensor::from_shape(&[1, k, 1, 1], data).unwrap();
                let out = plan.run(tvec!(input.into_tvalue())).unwrap();
                out[0]
                    .to_plain_array_view::<f32>()
                    .unwrap()
                    .iter()
                    .copied()
                    .collect()
            };
            for data in test_inputs(k) {
                let data: Vec<f32> = data.iter().map(|v| v * 4.0 - 2.0).collect();
                let (want, got) = (run(&plain.plan, &data), run(&ours.plan, &data));
                let tolerance = if quantized { ys * 1.001 } else { 1e-4 };
                for (a, b) in want.iter().zip(&got) {
                    assert!(
                        (a - b).abs() <= tolerance,
                        "{what}: {want:?} against {got:?}"
                    );
                }
            }
        }
    }
}
