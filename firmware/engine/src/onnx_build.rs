//! ONNX protobuf pieces for the tests that build models (banded.rs, depthwise.rs, qdq.rs).

use tract_onnx::pb;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;

/// A constant of `dims` holding `values` as raw little-endian bytes.
pub(crate) fn raw<T: Copy>(
    name: &str,
    dt: DataType,
    dims: &[usize],
    values: &[T],
) -> pb::TensorProto {
    // SAFETY: plain numbers (i8, u8, i32, f32), read as their bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts(values.as_ptr() as *const u8, std::mem::size_of_val(values))
    };
    pb::TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: dt as i32,
        raw_data: bytes.to_vec(),
        ..Default::default()
    }
}

/// A scalar zero point: i8 when `z` is negative, else u8 (the tests' shorthand for the
/// two quantized types).
pub(crate) fn zero_point(name: &str, z: i32) -> pb::TensorProto {
    if z < 0 {
        raw(name, DataType::Int8, &[], &[z as i8])
    } else {
        raw(name, DataType::Uint8, &[], &[z as u8])
    }
}

pub(crate) fn ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

pub(crate) fn int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

/// An f32 tensor value of `dims` (a graph input).
pub(crate) fn value(name: &str, dims: &[usize]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension, Dimension};
    let dim = dims
        .iter()
        .map(|&d| Dimension {
            value: Some(dimension::Value::DimValue(d as i64)),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A node named after its one output.
pub(crate) fn node<S: AsRef<str>>(
    op: &str,
    inputs: &[S],
    output: &str,
    attribute: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        name: output.into(),
        op_type: op.into(),
        input: inputs.iter().map(|s| s.as_ref().to_string()).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    }
}

/// The encoded model of one graph: `nodes` over `initializer`, one f32 input `input` of
/// `dims`, one output `output`, ONNX opset 13.
pub(crate) fn model_bytes(
    name: &str,
    nodes: Vec<pb::NodeProto>,
    initializer: Vec<pb::TensorProto>,
    (input, dims): (&str, &[usize]),
    output: &str,
) -> Vec<u8> {
    use prost::Message;
    pb::ModelProto {
        ir_version: 7,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(pb::GraphProto {
            name: name.into(),
            node: nodes,
            initializer,
            input: vec![value(input, dims)],
            output: vec![pb::ValueInfoProto {
                name: output.into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}
