//! onnxruntime's quantized contrib operators, lowered to standard ONNX before tract parses.
//!
//! onnxruntime's QOperator export writes `com.microsoft` operators for everything but
//! convolutions and matrix products: `QLinearAdd`, `QLinearMul`, `QLinearSigmoid`,
//! `QLinearLeakyRelu`, `QLinearGlobalAveragePool`, `QLinearAveragePool`, `QLinearConcat`,
//! `QLinearSoftmax` and `QGemm`. tract 0.23.9 refuses them (sonos/tract#1570), so the int8 models people
//! download did not load. Each is defined as "dequantize the inputs, apply the float
//! operator, quantize the result", which is what this module writes in its place:
//! `DequantizeLinear` → the standard operator → `QuantizeLinear`. `QLinearAdd` and
//! `QLinearMul` then run from the int8 values to the int8 result in one pass (qbinary.rs,
//! the same float steps per element), the pools sum in integers (avgpool.rs), `QLinearConcat`
//! joins the int8 values and the element-wise ones become 256-entry tables (qtable.rs);
//! what stays in float (`QLinearSoftmax`, a channels-last pool) `edgedx info` lists. A `QGemm` (a classifier's
//! head) becomes `MatMulInteger` on its int8 weights, the int32 bias, and one f32
//! multiplier per column, as onnxruntime computes it; where that cannot be written (a
//! transposed A, zero points that differ between columns) its constant weights are
//! dequantized here once, per column where they are quantized per column (tract's
//! DequantizeLinear takes a scalar scale), and it runs in float.
//!
//! onnxruntime computes these operators in float too, and rounds the same way
//! (`QuantizeLinear`: round half to even, then saturate); its fused kernels may differ from
//! the float definition by one quantization step on rare values, which the tests'
//! tolerance states.
//!
//! A `com.microsoft` operator not listed here is refused by tract with its name; anything
//! malformed (missing inputs, non-constant per-column weights) is left as it is, so that
//! the load error names the node.

use std::collections::HashMap;

use tract_onnx::data_resolver::ModelDataResolver;
use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::prelude::*;
use tract_onnx::tensor::load_tensor;

/// Where initializers' bytes are read from: the resolver and directory tract parses with
/// (weights.rs leaves large ones in the verified map).
pub(crate) type Source<'a> = (&'a dyn ModelDataResolver, Option<&'a str>);

/// Lowers every contrib operator listed in the module doc, in place; returns how many of
/// each (`op_type`, count) now have a float step, in the order first met.
pub(crate) fn lower_contrib_ops(
    model: &mut pb::ModelProto,
    source: Source,
) -> Vec<(String, usize)> {
    let Some(graph) = model.graph.as_mut() else {
        return vec![];
    };
    let mut counts: Vec<(String, usize)> = vec![];
    let mut new_initializers = vec![];
    let nodes = std::mem::take(&mut graph.node);
    let initializers = Constants {
        protos: graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect(),
        source,
    };
    let mut out = Vec::with_capacity(nodes.len());
    for node in nodes {
        let lowered = if node.domain == "com.microsoft" {
            lower(&node, &initializers, &mut new_initializers)
        } else {
            None
        };
        match lowered {
            Some(replacement) => {
                // A QGemm lowered to integer products (`integer_gemm`) runs no float step.
                if !replacement.iter().any(|n| n.op_type == "MatMulInteger") {
                    crate::qdq::tally(&mut counts, &node.op_type);
                }
                out.extend(replacement);
            }
            None => out.push(node),
        }
    }
    graph.node = out;
    graph.initializer.extend(new_initializers);
    counts
}

/// The names of the nodes of types `ops` the lowering wrote.
pub(crate) fn lowered_nodes(model: &pb::ModelProto, ops: &[&str]) -> Vec<String> {
    let Some(graph) = model.graph.as_ref() else {
        return vec![];
    };
    graph
        .node
        .iter()
        .filter(|n| ops.contains(&n.op_type.as_str()))
        .filter(|n| n.output.iter().any(|o| o.contains(LOWERED)))
        .map(|n| n.name.clone())
        .collect()
}

/// The standard nodes for `node`, or `None` to leave it as it is.
/// The graph's initializers, decoded on demand.
struct Constants<'a> {
    protos: HashMap<&'a str, &'a pb::TensorProto>,
    source: Source<'a>,
}

impl Constants<'_> {
    fn get(&self, name: &str) -> Option<Tensor> {
        let proto = self.protos.get(name)?;
        load_tensor(self.source.0, proto, self.source.1).ok()
    }

    fn dims(&self, name: &str) -> Option<Vec<usize>> {
        Some(
            self.protos
                .get(name)?
                .dims
                .iter()
                .map(|&d| d as usize)
                .collect(),
        )
    }
}

fn lower(
    node: &pb::NodeProto,
    initializers: &Constants,
    new_initializers: &mut Vec<pb::TensorProto>,
) -> Option<Vec<pb::NodeProto>> {
    let input = |i: usize| input_name(node, i);
    let output = node.output.first()?.as_str();
    if output.is_empty() {
        return None;
    }
    let mut b = Builder::new(node);
    let nodes = match node.op_type.as_str() {
        // (A, A_scale, A_zp, B, B_scale, B_zp, C_scale, C_zp)
        op @ ("QLinearAdd" | "QLinearMul") => {
            let (a, bb) = (
                b.dequantize(input(0), input(1), input(2))?,
                b.dequantize(input(3), input(4), input(5))?,
            );
            let float_op = if op == "QLinearAdd" { "Add" } else { "Mul" };
            let y = b.op(float_op, &[&a, &bb], vec![]);
            b.quantize(&y, input(6), input(7), output)?
        }
        // (X, X_scale, X_zp, Y_scale, Y_zp)
        "QLinearSigmoid"
        | "QLinearLeakyRelu"
        | "QLinearGlobalAveragePool"
        | "QLinearAveragePool" => {
            let x = b.dequantize(input(0), input(1), input(2))?;
            let channels_last = attr(node, "channels_last").is_some_and(|a| a.i != 0);
            let pooled = |b: &mut Builder, op: &str, attrs: Vec<pb::AttributeProto>| {
                if channels_last {
                    // NHWC ↔ NCHW around the standard (channels-first) pool.
                    let to_first = b.op("Transpose", &[&x], vec![perm(&[0, 3, 1, 2])]);
                    let y = b.op(op, &[&to_first], attrs);
                    b.op("Transpose", &[&y], vec![perm(&[0, 2, 3, 1])])
                } else {
                    b.op(op, &[&x], attrs)
                }
            };
            let y = match node.op_type.as_str() {
                "QLinearSigmoid" => b.op("Sigmoid", &[&x], vec![]),
                "QLinearLeakyRelu" => b.op("LeakyRelu", &[&x], keep(node, &["alpha"])),
                "QLinearGlobalAveragePool" => pooled(&mut b, "GlobalAveragePool", vec![]),
                _ => {
                    let attrs = keep(
                        node,
                        &[
                            "auto_pad",
                            "ceil_mode",
                            "count_include_pad",
                            "kernel_shape",
                            "pads",
                            "strides",
                        ],
                    );
                    pooled(&mut b, "AveragePool", attrs)
                }
            };
            b.quantize(&y, input(3), input(4), output)?
        }
        // (X, X_scale, X_zp, Y_scale, Y_zp); `opset` is the opset of the Softmax it
        // replaced, whose meaning of `axis` changed at 13: before, the input is taken as a
        // matrix whose rows start at `axis`; from 13, softmax runs along `axis` alone. On the
        // last axis (onnxruntime's default, and every classifier's head) both are the same.
        "QLinearSoftmax" => {
            let x = b.dequantize(input(0), input(1), input(2))?;
            let axis = attr(node, "axis").map_or(-1, |a| a.i);
            let opset = attr(node, "opset")?.i;
            let y = if axis == -1 {
                b.op("Softmax", &[&x], vec![int_attr("axis", -1)])
            } else if opset < 13 {
                // Rows from `axis` on, as the old Softmax took them, in any opset.
                let rows = b.op("Flatten", &[&x], vec![int_attr("axis", axis)]);
                let shape = b.op("Shape", &[&x], vec![]);
                let y = b.op("Softmax", &[&rows], vec![int_attr("axis", 1)]);
                b.op("Reshape", &[&y, &shape], vec![])
            } else {
                // One axis other than the last: needs the rank, which is not known here.
                return None;
            };
            b.quantize(&y, input(3), input(4), output)?
        }
        // (Y_scale, Y_zp, X0, X0_scale, X0_zp, X1, ...)
        "QLinearConcat" => {
            if node.input.len() < 5 || !(node.input.len() - 2).is_multiple_of(3) {
                return None;
            }
            let parts: Vec<String> = node.input[2..]
                .chunks_exact(3)
                .map(|c| b.dequantize(&c[0], &c[1], &c[2]))
                .collect::<Option<_>>()?;
            let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
            let y = b.op("Concat", &refs, keep(node, &["axis"]));
            b.quantize(&y, input(0), input(1), output)?
        }
        // (A, a_scale, a_zp, B, b_scale, b_zp, [C], [y_scale], [y_zp])
        "QGemm" => {
            if let Some(nodes) = integer_gemm(node, output, initializers, new_initializers) {
                return Some(nodes);
            }
            let a = b.dequantize(input(0), input(1), input(2))?;
            let trans_b = attr(node, "transB").is_some_and(|t| t.i != 0);
            let (weights, bias_scales) =
                dequantized_weights(initializers, input(3), input(4), input(5), trans_b)?;
            let a_scale = scalar_f32(&initializers.get(input(1))?)?;
            let w_name = b.fresh("weights");
            new_initializers.push(f32_tensor(&w_name, &weights.0, &weights.1));
            let mut inputs = vec![a, w_name];
            if !input(6).is_empty() {
                // The int32 bias has scale a_scale * b_scale (per column) and zero point 0.
                let values = ints32(&initializers.get(input(6))?)?;
                let dims = initializers.dims(input(6))?;
                let columns = *dims.last()?;
                let scale = |i: usize| {
                    a_scale
                        * bias_scales[if bias_scales.len() == 1 {
                            0
                        } else {
                            i % columns
                        }]
                };
                let floats: Vec<f32> = values
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| v as f32 * scale(i))
                    .collect();
                let c_name = b.fresh("bias");
                new_initializers.push(f32_tensor(&c_name, &dims, &floats));
                inputs.push(c_name);
            }
            let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
            let mut attrs = keep(node, &["alpha", "transA"]);
            attrs.push(int_attr("transB", trans_b as i64));
            if input(7).is_empty() {
                b.op_to("Gemm", &refs, attrs, output);
                b.nodes
            } else {
                let y = b.op("Gemm", &refs, attrs);
                b.quantize(&y, input(7), input(8), output)?
            }
        }
        _ => return None,
    };
    Some(nodes)
}

/// Marks the values of the nodes that lowering writes (`<output>__edgedx_<op><n>`), so the
/// float census (qdq.rs) does not count a lowered operator a second time.
pub(crate) const LOWERED: &str = "__edgedx";

/// Writes the replacement nodes, with value names derived from the lowered node's output.
struct Builder {
    stem: String,
    name: String,
    count: usize,
    nodes: Vec<pb::NodeProto>,
}

impl Builder {
    fn new(node: &pb::NodeProto) -> Builder {
        Builder {
            stem: format!("{}{LOWERED}", node.output[0]),
            // onnxruntime leaves contrib nodes unnamed at times: the output names them.
            name: if node.name.is_empty() {
                node.output[0].clone()
            } else {
                node.name.clone()
            },
            count: 0,
            nodes: vec![],
        }
    }

    fn fresh(&mut self, what: &str) -> String {
        self.count += 1;
        format!("{}_{what}{}", self.stem, self.count)
    }

    fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<pb::AttributeProto>) -> String {
        let out = self.fresh(&op.to_ascii_lowercase());
        self.op_to(op, inputs, attrs, &out);
        out
    }

    fn op_to(&mut self, op: &str, inputs: &[&str], attrs: Vec<pb::AttributeProto>, out: &str) {
        self.nodes.push(pb::NodeProto {
            op_type: op.into(),
            name: format!("{}/{op}{}", self.name, self.nodes.len()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.into()],
            attribute: attrs,
            ..Default::default()
        });
    }

    /// `DequantizeLinear(x, scale[, zero_point])`; `None` when `x` or the scale is missing.
    fn dequantize(&mut self, x: &str, scale: &str, zero_point: &str) -> Option<String> {
        if x.is_empty() || scale.is_empty() {
            return None;
        }
        let mut inputs = vec![x, scale];
        if !zero_point.is_empty() {
            inputs.push(zero_point);
        }
        Some(self.op("DequantizeLinear", &inputs, vec![]))
    }

    /// `QuantizeLinear(y, scale[, zero_point])` into `out`, then the nodes written.
    fn quantize(
        mut self,
        y: &str,
        scale: &str,
        zero_point: &str,
        out: &str,
    ) -> Option<Vec<pb::NodeProto>> {
        if scale.is_empty() {
            return None;
        }
        let mut inputs = vec![y, scale];
        if !zero_point.is_empty() {
            inputs.push(zero_point);
        }
        self.op_to("QuantizeLinear", &inputs, vec![], out);
        Some(self.nodes)
    }
}

/// A `QGemm`'s constant weights as floats (`(dims, values)`) and the per-column scales
/// the bias uses; `None` unless the weights, scales and zero points are constants.
#[allow(clippy::type_complexity)]
fn dequantized_weights(
    initializers: &Constants,
    w: &str,
    scale: &str,
    zero_point: &str,
    trans_b: bool,
) -> Option<((Vec<usize>, Vec<f32>), Vec<f32>)> {
    let tensor = |name: &str| initializers.get(name);
    let w = tensor(w)?;
    let dims: Vec<usize> = w.shape().to_vec();
    let [rows, cols] = dims[..] else {
        return None;
    };
    let w: Vec<f32> = values::<i32>(&w)?.iter().map(|&v| v as f32).collect();
    let scales: Vec<f32> = values::<f32>(&tensor(scale)?)?;
    let zero_points: Vec<f32> = if zero_point.is_empty() {
        vec![0.0]
    } else {
        values::<i32>(&tensor(zero_point)?)?
            .iter()
            .map(|&v| v as f32)
            .collect()
    };
    // Output columns: the rows of B when it is transposed, its columns otherwise.
    let columns = if trans_b { rows } else { cols };
    let per = |v: &[f32]| v.len() == 1 || v.len() == columns;
    if !per(&scales) || !per(&zero_points) {
        return None;
    }
    let pick = |v: &[f32], column: usize| v[if v.len() == 1 { 0 } else { column }];
    let values = w
        .iter()
        .enumerate()
        .map(|(i, &q)| {
            let column = if trans_b { i / cols } else { i % cols };
            (q - pick(&zero_points, column)) * pick(&scales, column)
        })
        .collect();
    Some(((dims, values), scales))
}

/// A QGemm as integer products: `MatMulInteger(A, B)` (B transposed at load when `transB`)
/// plus the int32 bias C, then one f32 multiplier per column (`alpha · a_scale · b_scale`)
/// and the output's quantization, as onnxruntime computes it. The weights stay int8 (a
/// classifier's head: EfficientNet-Lite0's 1280 x 1000 is 1.2 MiB, not 4.9 MiB of f32),
/// and tract runs the products on its integer kernels. `None`, for the float lowering,
/// when A is transposed, B is not a 2-D constant, or B's zero point differs between
/// columns (tract's MatMulInteger takes one).
fn integer_gemm(
    node: &pb::NodeProto,
    output: &str,
    initializers: &Constants,
    new_initializers: &mut Vec<pb::TensorProto>,
) -> Option<Vec<pb::NodeProto>> {
    let input = |i: usize| input_name(node, i);
    if attr(node, "transA").is_some_and(|t| t.i != 0) || input(2).is_empty() {
        return None;
    }
    let trans_b = attr(node, "transB").is_some_and(|t| t.i != 0);
    let alpha = attr(node, "alpha").map_or(1.0, |a| a.f);
    let w = initializers.get(input(3))?;
    let [rows, cols] = w.shape()[..] else {
        return None;
    };
    let data_type = match w.datum_type() {
        DatumType::I8 => DataType::Int8,
        DatumType::U8 => DataType::Uint8,
        _ => return None,
    };
    let (k, columns) = if trans_b { (cols, rows) } else { (rows, cols) };
    let a_scale = scalar_f32(&initializers.get(input(1))?)?;
    let b_scales = values::<f32>(&initializers.get(input(4))?)?;
    let zero_points = match input(5) {
        "" => vec![0],
        zp => values::<i32>(&initializers.get(zp)?)?,
    };
    let per_column = |n: usize| n == 1 || n == columns;
    if !per_column(b_scales.len()) || !zero_points.iter().all(|&z| z == zero_points[0]) {
        return None;
    }
    // B as K x columns bytes.
    let bytes = w.as_bytes();
    let kn: Vec<u8> = if trans_b {
        (0..k * columns)
            .map(|i| bytes[(i % columns) * k + i / columns])
            .collect()
    } else {
        bytes.to_vec()
    };
    let mut b = Builder::new(node);
    let w_name = b.fresh("weights");
    new_initializers.push(pb::TensorProto {
        name: w_name.clone(),
        data_type: data_type as i32,
        dims: vec![k as i64, columns as i64],
        raw_data: kn,
        ..Default::default()
    });
    let mut inputs = vec![input(0), &w_name, input(2)];
    let zp_name = b.fresh("weights_zero_point");
    if zero_points[0] != 0 {
        // One zero point for every column, of B's type (MatMulInteger's rule).
        new_initializers.push(pb::TensorProto {
            name: zp_name.clone(),
            data_type: data_type as i32,
            dims: vec![],
            raw_data: vec![zero_points[0] as u8],
            ..Default::default()
        });
        inputs.push(&zp_name);
    }
    let mut acc = b.op("MatMulInteger", &inputs, vec![]);
    if !input(6).is_empty() {
        acc = b.op("Add", &[&acc, input(6)], vec![]);
    }
    let floats = b.op(
        "Cast",
        &[&acc],
        vec![int_attr("to", DataType::Float as i64)],
    );
    let multipliers: Vec<f32> = (0..columns)
        .map(|c| alpha * a_scale * b_scales[if b_scales.len() == 1 { 0 } else { c }])
        .collect();
    let m_name = b.fresh("multipliers");
    new_initializers.push(f32_tensor(&m_name, &[columns], &multipliers));
    if input(7).is_empty() {
        b.op_to("Mul", &[&floats, &m_name], vec![], output);
        Some(b.nodes)
    } else {
        let y = b.op("Mul", &[&floats, &m_name], vec![]);
        b.quantize(&y, input(7), input(8), output)
    }
}

/// Input `i` of `node`, or "" when it is omitted.
fn input_name(node: &pb::NodeProto, i: usize) -> &str {
    node.input.get(i).map(String::as_str).unwrap_or("")
}

fn scalar_f32(v: &Tensor) -> Option<f32> {
    match values::<f32>(v)?[..] {
        [x] => Some(x),
        _ => None,
    }
}

fn ints32(v: &Tensor) -> Option<Vec<i32>> {
    values::<i32>(v)
}

/// A tensor's elements as `T`, converted as tract casts.
fn values<T: Datum + Copy>(v: &Tensor) -> Option<Vec<T>> {
    Some(
        v.cast_to::<T>()
            .ok()?
            .to_plain_array_view::<T>()
            .ok()?
            .iter()
            .copied()
            .collect(),
    )
}

fn f32_tensor(name: &str, dims: &[usize], values: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        data_type: DataType::Float as i32,
        dims: dims.iter().map(|&d| d as i64).collect(),
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn attr<'n>(node: &'n pb::NodeProto, name: &str) -> Option<&'n pb::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

/// The attributes of `node` named in `names`.
fn keep(node: &pb::NodeProto, names: &[&str]) -> Vec<pb::AttributeProto> {
    node.attribute
        .iter()
        .filter(|a| names.contains(&a.name.as_str()))
        .cloned()
        .collect()
}

fn int_attr(name: &str, value: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

fn perm(values: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: "perm".into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..Default::default()
    }
}
