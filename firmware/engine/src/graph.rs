//! What an ONNX file says about itself, read before any plan is built: its image input and
//! class output (names, shapes), the operator that makes the output, its operators and
//! their domains, and the quantization format. `edgedx bundle init` writes a manifest from
//! these facts and asks only for what a graph cannot say (normalisation, resize mode).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use edgedx_bundle::Quantization;
use memmap2::Mmap;
use tract_onnx::pb;

use crate::error::EngineError;
use crate::weights;

/// One dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    /// A named (symbolic) or unnamed dynamic dimension.
    Free(String),
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Free(name) if name.is_empty() => f.write_str("?"),
            Dim::Free(name) => f.write_str(name),
        }
    }
}

/// A graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueFacts {
    pub name: String,
    /// ONNX element type name ("FLOAT", "UINT8", ...).
    pub elem_type: String,
    /// `None` when the file declares no shape.
    pub dims: Option<Vec<Dim>>,
}

/// What [`describe`] read from a model file.
#[derive(Debug, Clone)]
pub struct GraphFacts {
    /// Real inputs (initializers that older exporters also list as inputs are left out).
    pub inputs: Vec<ValueFacts>,
    pub outputs: Vec<ValueFacts>,
    /// Operator type that computes the first output, looking through shape-only operators
    /// (Reshape, Flatten, Squeeze, Identity, ...): `Softmax` means probabilities.
    pub output_op: Option<String>,
    /// `(domain, operator) -> count`; the default domain is "".
    pub ops: BTreeMap<(String, String), usize>,
    /// `None` for a float model, else how it is quantized.
    pub quantization: Quantization,
}

/// Operators that change only shapes, so the operator behind them makes the values.
const SHAPE_ONLY: [&str; 6] = [
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Transpose",
];

/// Reads `path`'s graph (not its weights) and returns what it declares.
pub fn describe(path: &Path) -> Result<GraphFacts, EngineError> {
    let load = |message: String| EngineError::Load {
        path: path.to_path_buf(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: read-only private map of a file this tool was pointed at; the bytes are
    // parsed as untrusted protobuf.
    let map = unsafe { Mmap::map(&file) }.map_err(|source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if map.is_empty() {
        return Err(load("the file is empty".into()));
    }
    // The weights stay in the map: describing a 500 MB VGG16 needs a few kilobytes.
    let (proto, _) = weights::decode_leaving_weights(&map, "weights")
        .map_err(|e| load(format!("not an ONNX protobuf: {e}")))?;
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| load("the file has no graph".into()))?;
    let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs = graph
        .input
        .iter()
        .filter(|v| !initializers.contains(v.name.as_str()))
        .map(value_facts)
        .collect();
    let outputs: Vec<ValueFacts> = graph.output.iter().map(value_facts).collect();
    let mut ops = BTreeMap::new();
    for node in &graph.node {
        *ops.entry((node.domain.clone(), node.op_type.clone()))
            .or_insert(0) += 1;
    }
    let output_op = outputs.first().and_then(|o| producer_of(graph, &o.name));
    Ok(GraphFacts {
        inputs,
        outputs,
        output_op,
        quantization: quantization(&ops),
        ops,
    })
}

fn value_facts(v: &pb::ValueInfoProto) -> ValueFacts {
    use pb::type_proto::Value;
    let tensor = v.r#type.as_ref().and_then(|t| match &t.value {
        Some(Value::TensorType(tt)) => Some(tt),
        _ => None,
    });
    let elem_type = tensor
        .and_then(|t| pb::tensor_proto::DataType::try_from(t.elem_type).ok())
        .map(|d| d.as_str_name().to_string())
        .unwrap_or_else(|| "UNDEFINED".into());
    let dims = tensor.and_then(|t| t.shape.as_ref()).map(|shape| {
        use pb::tensor_shape_proto::dimension::Value as D;
        shape
            .dim
            .iter()
            .map(|d| match &d.value {
                Some(D::DimValue(n)) if *n > 0 => Dim::Fixed(*n),
                Some(D::DimParam(name)) => Dim::Free(name.clone()),
                _ => Dim::Free(String::new()),
            })
            .collect()
    });
    ValueFacts {
        name: v.name.clone(),
        elem_type,
        dims,
    }
}

/// The operator computing `value`, through shape-only operators (bounded: a cycle in a
/// malformed graph must not loop).
fn producer_of(graph: &pb::GraphProto, value: &str) -> Option<String> {
    let mut value = value.to_string();
    for _ in 0..graph.node.len().min(64) {
        let node = graph.node.iter().find(|n| n.output.contains(&value))?;
        if !SHAPE_ONLY.contains(&node.op_type.as_str()) {
            return Some(node.op_type.clone());
        }
        value = node.input.first()?.clone();
    }
    None
}

/// QOperator files carry QLinear* / com.microsoft quantized operators; QDQ files carry
/// Dequantize/QuantizeLinear pairs around float operators and no QLinear operator.
fn quantization(ops: &BTreeMap<(String, String), usize>) -> Quantization {
    let has = |pred: &dyn Fn(&str) -> bool| ops.keys().any(|(_, op)| pred(op));
    if has(&|op| {
        op.starts_with("QLinear")
            || matches!(
                op,
                "QGemm" | "ConvInteger" | "MatMulInteger" | "DynamicQuantizeLinear"
            )
    }) {
        Quantization::Qoperator
    } else if has(&|op| op == "DequantizeLinear") {
        Quantization::Qdq
    } else {
        Quantization::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_file(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../models/brain-mri-4class")
            .join(name)
    }

    #[test]
    fn the_default_bundles_files_describe_themselves() {
        let fp32 = describe(&bundle_file("fp32.onnx")).unwrap();
        assert_eq!(fp32.inputs.len(), 1);
        let input = &fp32.inputs[0];
        assert_eq!(
            (input.name.as_str(), input.elem_type.as_str()),
            ("input", "FLOAT")
        );
        let dims = input.dims.as_ref().unwrap();
        assert_eq!(dims[1..], [Dim::Fixed(1), Dim::Fixed(128), Dim::Fixed(128)]);
        assert_eq!(fp32.outputs[0].name, "logits");
        assert_ne!(fp32.output_op.as_deref(), Some("Softmax"));
        assert_eq!(fp32.quantization, Quantization::None);
        assert!(fp32.ops.contains_key(&(String::new(), "Conv".into())));
        assert_eq!(
            describe(&bundle_file("int8.onnx")).unwrap().quantization,
            Quantization::Qoperator
        );
        assert_eq!(
            describe(&bundle_file("int8-qdq.onnx"))
                .unwrap()
                .quantization,
            Quantization::Qdq
        );
    }

    #[test]
    fn a_file_that_is_not_onnx_is_a_load_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.onnx");
        std::fs::write(&path, b"\xff\xff\xff\xff not a protobuf").unwrap();
        let err = describe(&path).unwrap_err();
        assert!(matches!(err, EngineError::Load { .. }), "{err}");
        std::fs::write(&path, b"").unwrap();
        assert!(describe(&path).unwrap_err().to_string().contains("empty"));
        let full = std::fs::read(bundle_file("fp32.onnx")).unwrap();
        std::fs::write(&path, &full[..full.len() / 2]).unwrap();
        assert!(describe(&path).is_err());
    }
}
