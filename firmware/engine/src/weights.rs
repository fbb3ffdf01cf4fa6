//! Decoding a mapped ONNX file while its weights stay in the map.
//!
//! Decoding the whole protobuf copies every initializer's `raw_data` onto the heap, and
//! tract then makes its own tensors from those copies: for a moment the weights are held
//! twice (VGG16 int8: 49 MiB resident after typing, 34 MiB once the protobuf was dropped).
//! Here the file is decoded from a copy of its bytes in which each large initializer's
//! `raw_data` field is replaced by an ONNX external-data reference (`location`, `offset`,
//! `length`) to where those bytes already are: in the verified model file itself. tract
//! reads external data through its `ModelDataResolver`; `MapResolver` serves those reads
//! from the verified map and lets the kernel drop each range's pages once copied, so each
//! weight is on the heap once, as tract's tensor.
//!
//! Only the graph's top-level initializers are moved. Tensors in node attributes (Constant
//! nodes, subgraphs) are small in classifiers and stay inline. A file that already uses
//! external data keeps its references; they are refused at parse time (`MapResolver` reads
//! only the verified file), since nothing else was checked against the manifest.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{Mmap, UncheckedAdvice};
use prost::Message;
use tract_onnx::data_resolver::ModelDataResolver;
use tract_onnx::pb;
use tract_onnx::prelude::*;

/// Initializers from this size up are left in the map.
pub(crate) const MIN_EXTERNAL_BYTES: usize = 16 * 1024;

// Field numbers of onnx.proto3 (wire types: 0 varint, 1 fixed64, 2 bytes, 5 fixed32).
const MODEL_GRAPH: u64 = 7;
const GRAPH_INITIALIZER: u64 = 5;
const TENSOR_RAW_DATA: u64 = 9;
const TENSOR_EXTERNAL_DATA: u64 = 13;
const TENSOR_DATA_LOCATION: u64 = 14;
const ENTRY_KEY: u64 = 1;
const ENTRY_VALUE: u64 = 2;
const WIRE_VARINT: u64 = 0;
const WIRE_BYTES: u64 = 2;
/// `TensorProto.DataLocation.EXTERNAL`.
const EXTERNAL: u64 = 1;

/// The model of `file` with its initializers from `MIN_EXTERNAL_BYTES` up referring to
/// their place in `file` under the name `location`, and how many bytes were left there.
pub(crate) fn decode_leaving_weights(
    file: &[u8],
    location: &str,
) -> Result<(pb::ModelProto, usize), String> {
    let mut out = Vec::new();
    let mut moved = 0;
    for field in Fields::new(file) {
        let field = field?;
        if field.number == MODEL_GRAPH && field.wire == WIRE_BYTES {
            let graph = rewrite_graph(file, field.payload, location, &mut moved)?;
            put_bytes(&mut out, MODEL_GRAPH, &graph);
        } else {
            out.extend_from_slice(field.whole);
        }
    }
    let proto = pb::ModelProto::decode(&out[..]).map_err(|e| e.to_string())?;
    Ok((proto, moved))
}

fn rewrite_graph(
    file: &[u8],
    graph: &[u8],
    location: &str,
    moved: &mut usize,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(graph.len().min(1 << 20));
    for field in Fields::new(graph) {
        let field = field?;
        if field.number == GRAPH_INITIALIZER && field.wire == WIRE_BYTES {
            match external_tensor(file, field.payload, location)? {
                Some((tensor, bytes)) => {
                    put_bytes(&mut out, GRAPH_INITIALIZER, &tensor);
                    *moved += bytes;
                }
                None => out.extend_from_slice(field.whole),
            }
        } else {
            out.extend_from_slice(field.whole);
        }
    }
    Ok(out)
}

/// The tensor with its `raw_data` replaced by a reference into `file`, or `None` when it
/// stays as it is (small, no `raw_data`, or already external).
fn external_tensor(
    file: &[u8],
    tensor: &[u8],
    location: &str,
) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut raw = None;
    for field in Fields::new(tensor) {
        let field = field?;
        match field.number {
            TENSOR_EXTERNAL_DATA | TENSOR_DATA_LOCATION => return Ok(None),
            TENSOR_RAW_DATA if field.wire == WIRE_BYTES => raw = Some(field),
            _ => {}
        }
    }
    let Some(raw) = raw.filter(|r| r.payload.len() >= MIN_EXTERNAL_BYTES) else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for field in Fields::new(tensor) {
        let field = field?;
        if field.number != TENSOR_RAW_DATA {
            out.extend_from_slice(field.whole);
        }
    }
    let offset = raw.payload.as_ptr() as usize - file.as_ptr() as usize;
    let length = raw.payload.len();
    for (key, value) in [
        ("location", location.to_string()),
        ("offset", offset.to_string()),
        ("length", length.to_string()),
    ] {
        let mut entry = Vec::new();
        put_bytes(&mut entry, ENTRY_KEY, key.as_bytes());
        put_bytes(&mut entry, ENTRY_VALUE, value.as_bytes());
        put_bytes(&mut out, TENSOR_EXTERNAL_DATA, &entry);
    }
    put_varint(&mut out, TENSOR_DATA_LOCATION << 3 | WIRE_VARINT);
    put_varint(&mut out, EXTERNAL);
    Ok(Some((out, length)))
}

/// One field of a protobuf message: its number, wire type, payload (the bytes of a
/// length-delimited field, the encoded value otherwise) and all its bytes, key included.
#[derive(Clone, Copy)]
struct Field<'a> {
    number: u64,
    wire: u64,
    payload: &'a [u8],
    whole: &'a [u8],
}

struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(message: &'a [u8]) -> Self {
        Fields { rest: message }
    }

    fn field(&mut self) -> Result<Field<'a>, String> {
        let start = self.rest;
        let key = self.varint()?;
        let (number, wire) = (key >> 3, key & 7);
        let payload = match wire {
            WIRE_VARINT => {
                let before = self.rest;
                self.varint()?;
                &before[..before.len() - self.rest.len()]
            }
            1 => self.take(8)?,
            WIRE_BYTES => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| "a field length does not fit in memory".to_string())?;
                self.take(len)?
            }
            5 => self.take(4)?,
            other => {
                return Err(format!(
                    "unsupported protobuf wire type {other} in field {number}"
                ))
            }
        };
        let whole = &start[..start.len() - self.rest.len()];
        Ok(Field {
            number,
            wire,
            payload,
            whole,
        })
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for (i, byte) in self.rest.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.rest = &self.rest[i + 1..];
                return Ok(value);
            }
        }
        Err("a protobuf varint is truncated or over 10 bytes".into())
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        if len > self.rest.len() {
            return Err(format!(
                "a protobuf field of {len} bytes runs past the end of its message ({} left)",
                self.rest.len()
            ));
        }
        let (head, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(head)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Field<'a>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let field = self.field();
        if field.is_err() {
            self.rest = &[];
        }
        Some(field)
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_bytes(out: &mut Vec<u8>, number: u64, payload: &[u8]) {
    put_varint(out, number << 3 | WIRE_BYTES);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// Serves tract's external-data reads from the verified map of the model file, and only
/// from it.
pub(crate) struct MapResolver {
    /// The model file, canonical: tract canonicalizes the paths it asks for.
    pub(crate) path: PathBuf,
    pub(crate) map: Arc<Mmap>,
}

impl ModelDataResolver for MapResolver {
    fn read_bytes_from_path(
        &self,
        buf: &mut Vec<u8>,
        p: &Path,
        offset: usize,
        length: Option<usize>,
    ) -> TractResult<()> {
        if p != self.path {
            return Err(TractError::msg(format!(
                "external data in {p:?} is not part of the verified model file {:?}",
                self.path
            )));
        }
        let end = match length {
            Some(len) => offset.checked_add(len),
            None => Some(self.map.len()),
        }
        .filter(|&end| offset <= end && end <= self.map.len())
        .ok_or_else(|| {
            TractError::msg(format!(
                "external data at offset {offset}, length {length:?} is outside the {}-byte model file",
                self.map.len()
            ))
        })?;
        buf.extend_from_slice(&self.map[offset..end]);
        drop_pages(&self.map, offset, end - offset);
        Ok(())
    }
}

/// Lets the kernel drop the map's resident pages in `offset..offset + len` (they are read
/// again from the file if touched again). Only a hint: an error changes nothing.
pub(crate) fn drop_pages(map: &Mmap, offset: usize, len: usize) {
    // SAFETY: the map is read-only and private and this process never writes to it, so
    // MADV_DONTNEED only drops clean page-cache pages: a later read of the range faults the
    // file's bytes back in, exactly as a first read of an untouched page of the map would.
    let _ = unsafe { map.unchecked_advise_range(UncheckedAdvice::DontNeed, offset, len) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn model_files() -> Vec<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/brain-mri-4class");
        ["int8.onnx", "fp32.onnx", "int8-qdq.onnx"]
            .iter()
            .map(|f| dir.join(f))
            .collect()
    }

    /// Putting each referenced range back as `raw_data` gives exactly the protobuf a full
    /// decode gives: nothing else was changed, and every reference points at the right bytes.
    #[test]
    fn references_point_at_the_weights_and_nothing_else_changes() {
        for path in model_files() {
            let bytes = std::fs::read(&path).unwrap();
            let full = pb::ModelProto::decode(&bytes[..]).unwrap();
            let (mut lean, moved) = decode_leaving_weights(&bytes, "model.onnx").unwrap();
            let mut restored = 0;
            for t in &mut lean.graph.as_mut().unwrap().initializer {
                if t.external_data.is_empty() {
                    assert!(t.raw_data.len() < MIN_EXTERNAL_BYTES, "{path:?} {}", t.name);
                    continue;
                }
                let value = |key: &str| {
                    let entry = t.external_data.iter().find(|e| e.key == key).unwrap();
                    entry.value.clone()
                };
                assert_eq!(value("location"), "model.onnx");
                let offset: usize = value("offset").parse().unwrap();
                let length: usize = value("length").parse().unwrap();
                t.raw_data = bytes[offset..offset + length].to_vec();
                t.external_data.clear();
                t.data_location = None;
                restored += length;
            }
            assert!(moved > 0, "{path:?}: no initializer left in the file");
            assert_eq!(restored, moved, "{path:?}");
            assert_eq!(lean, full, "{path:?}");
        }
    }

    /// A file cut anywhere decodes here exactly when it decodes in full, and never panics.
    #[test]
    fn truncated_files_fail_like_a_full_decode() {
        let bytes = std::fs::read(&model_files()[0]).unwrap();
        let mut failed = 0;
        for cut in (0..bytes.len()).step_by(997).chain([1, 2, bytes.len() - 1]) {
            let part = &bytes[..cut];
            let lean = decode_leaving_weights(part, "model.onnx");
            let full = pb::ModelProto::decode(part);
            assert_eq!(lean.is_ok(), full.is_ok(), "cut at {cut}: {:?}", lean.err());
            failed += lean.is_err() as usize;
        }
        assert!(failed > 0);
    }

    #[test]
    fn the_resolver_reads_only_the_verified_file_within_its_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.onnx");
        let content: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&content)
            .unwrap();
        let map = unsafe { Mmap::map(&std::fs::File::open(&path).unwrap()) }.unwrap();
        let resolver = MapResolver {
            path: path.canonicalize().unwrap(),
            map: Arc::new(map),
        };
        let mut buf = Vec::new();
        resolver
            .read_bytes_from_path(&mut buf, &resolver.path, 40_000, Some(5_000))
            .unwrap();
        assert_eq!(buf, content[40_000..45_000]);
        // Read twice: the pages dropped after the first read come back from the file.
        buf.clear();
        resolver
            .read_bytes_from_path(&mut buf, &resolver.path, 40_000, Some(5_000))
            .unwrap();
        assert_eq!(buf, content[40_000..45_000]);

        let other = dir.path().join("weights.bin");
        let e = resolver
            .read_bytes_from_path(&mut Vec::new(), &other, 0, Some(10))
            .unwrap_err();
        assert!(
            format!("{e}").contains("not part of the verified model file"),
            "{e}"
        );
        for (offset, length) in [(99_990, Some(11)), (100_001, None), (usize::MAX, Some(2))] {
            let e = resolver
                .read_bytes_from_path(&mut Vec::new(), &resolver.path, offset, length)
                .unwrap_err();
            assert!(
                format!("{e}").contains("outside the 100000-byte model file"),
                "{e}"
            );
        }
    }
}
