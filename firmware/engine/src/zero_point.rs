//! The weight zero point's term, the one part of a quantized convolution's sums that
//! depends on the output position.
//!
//! With `x` the patches and `w` the weights, both shifted to i8, tract lowers a
//! QLinearConv's sums to `Σ_k x·w − zw·Σ_k x − zx·Σ_k w + k·zx·zw`. Every term but
//! `zw·Σ_k x` is one constant per output channel, which the engine's operators fold into
//! the sums' starting values. That one is not: `Σ_k x` is a sum per output position (a
//! column sum of the patch matrix), which tract computes every inference (QSumB on an
//! im2col's packed patches, or Cast and Reduce<Sum> over a 1x1 convolution's input
//! channels) and subtracts `zw` times, in a node of its own or fused in its matmul.
//!
//! The term is zero, and rewrite.rs removes it, for symmetric weights. It is not for
//! onnxruntime's asymmetric u8 weights (`weight_type=QUInt8`, the format of many int8
//! models people download), where `zw` is the u8 zero point less 128. This module
//! recognizes the term, so that the engine's operators take it over instead of leaving the
//! layer to tract: the direct depthwise convolution folds it into its taps (`w − zw`, in
//! 16 bits: depthwise.rs), and a banded convolution on the engine's tiles folds it into its
//! weights too ([`Folded`]), or else subtracts `zw` times the column sums of the patches it
//! packs (banded.rs).
//!
//! The tiles multiply i8 weights, and `w − zw` spans `[−zp, 255 − zp]` with the u8 zero
//! point `zp`. onnxruntime sets `zp` from the tensor's (or the channel's) own range, so with
//! one zero point per tensor `w − zw` leaves `[−127, 127]` only at the range's far end: one
//! to three weights of each layer of EfficientNet-Lite0 and of MobileNetV2 quantized so
//! (`weight_type=QUInt8`, per tensor). The tiles take every folded weight clamped to
//! `[−127, 127]`, and the few products the clamp takes off are added back per patch row
//! ([`Residuals`], residuals.rs): a handful of multiply-adds per output position where
//! the column sums cost a sum over the patch and a multiply-subtract per channel (5.3 M
//! of the 137 M instructions of EfficientNet-Lite0's `int8-u8w` inference under qemu,
//! cortex-a72, and 3 M more in packing the 1x1 layers' patches to sum them).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cast::Cast;
use tract_onnx::tract_core::ops::change_axes::IntoShape;
use tract_onnx::tract_core::ops::math::{Add, Mul, ShiftLeft, Sub};
use tract_onnx::tract_core::ops::matmul::optimized::OptMatMul;
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer};

use crate::residuals::{Residuals, Term};

/// Where the column sums of a convolution's patches come from in tract's plan.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Sums {
    /// QSumB over the packed patches this outlet makes (an `Im2col`, or the engine's
    /// `PackPatches` in its place).
    Patches(OutletId),
    /// A Reduce<Sum> of `Cast<i32>(x)` over the channel axis `axis` of `x`: a 1x1
    /// convolution's input.
    Channels { x: OutletId, axis: usize },
}

/// `zw` when `term` is tract's `zw · Σ_k x` for the column sums `sums`: a Mul of them (or of
/// an IntoShape of them) by a constant i32 tensor, returned as it is (one value, or one
/// per output channel: the caller checks its shape), a ShiftLeft of them by a constant
/// (tract's Mul by a power of two), or the sums alone (its Mul by 1). `None` for anything
/// else.
pub(crate) fn weight_zero_point(
    model: &TypedModel,
    term: OutletId,
    sums: Sums,
) -> TractResult<Option<Arc<Tensor>>> {
    let mul = model.node(term.node);
    let bin = mul.op_as::<TypedBinOp>().filter(|_| mul.inputs.len() == 2);
    let konst = |o: OutletId| model.outlet_fact(o).map(|f| f.konst.clone());
    let (zw, other) = match bin {
        Some(op) if op.0.is::<Mul>() => match (konst(mul.inputs[0])?, konst(mul.inputs[1])?) {
            (Some(k), None) => (k, mul.inputs[1]),
            (None, Some(k)) => (k, mul.inputs[0]),
            _ => return Ok(None),
        },
        // tract's Mul by a power of two, `sums << s`.
        Some(op) if op.0.is::<ShiftLeft>() => {
            let Some(shift) = konst(mul.inputs[1])? else {
                return Ok(None);
            };
            let Some(zw) = shift
                .cast_to_scalar::<i32>()
                .ok()
                .filter(|s| (0..31).contains(s))
                .map(|s| 1i32 << s)
            else {
                return Ok(None);
            };
            (rctensor0(zw), mul.inputs[0])
        }
        _ => (rctensor0(1i32), term),
    };
    if zw.datum_type() != DatumType::I32 {
        return Ok(None);
    }
    let mut source = model.node(other.node);
    if source.op_is::<IntoShape>() {
        source = model.node(source.inputs[0].node);
    }
    let found = match sums {
        Sums::Patches(patches) => {
            source.op.name() == "QSumB" && source.inputs.first() == Some(&patches)
        }
        Sums::Channels { x, axis } => {
            let reduces_channels = source
                .op_as::<Reduce>()
                .is_some_and(|r| r.axes[..] == [axis] && matches!(r.reducer, Reducer::Sum));
            reduces_channels && {
                let cast = model.node(source.inputs[0].node);
                cast.op_as::<Cast>().is_some_and(|c| c.to == DatumType::I32)
                    && cast.inputs.first() == Some(&x)
            }
        }
    };
    Ok(found.then_some(zw))
}

/// `k`'s values, one per channel, when `k` broadcasts along `channel_axis` of a tensor of
/// rank `rank`: a single value (any shape), or `channels` values along that axis and 1
/// along every other.
pub(crate) fn per_channel(
    k: &Tensor,
    rank: usize,
    channel_axis: usize,
    channels: usize,
) -> Option<Vec<i32>> {
    let k32 = k.cast_to::<i32>().ok()?;
    let values = k32
        .try_as_plain_ram()
        .ok()?
        .as_slice::<i32>()
        .ok()?
        .to_vec();
    if values.len() == 1 {
        return Some(vec![values[0]; channels]);
    }
    let along = k.rank() == rank
        && k.shape()
            .iter()
            .enumerate()
            .all(|(i, &d)| d == if i == channel_axis { channels } else { 1 });
    along.then_some(values)
}

/// The one matmul that reads the patches `node` makes, when its other reader, if any, is
/// the column sums of the zero point's term (QSumB), and the patches are no model output.
pub(crate) fn patches_matmul<'m>(
    model: &'m TypedModel,
    node: &TypedNode,
) -> TractResult<Option<&'m TypedNode>> {
    let successors = &node.outputs[0].successors;
    let matmuls: Vec<&TypedNode> = successors
        .iter()
        .map(|s| model.node(s.node))
        .filter(|n| n.op_is::<OptMatMul>())
        .collect();
    let patches = OutletId::new(node.id, 0);
    match matmuls[..] {
        [matmul] if successors.len() <= 2 && !model.output_outlets()?.contains(&patches) => {
            Ok(Some(matmul))
        }
        _ => Ok(None),
    }
}

/// `zw` of the term `term` from the first of `sources` it is made from (see
/// [`weight_zero_point`]).
pub(crate) fn weight_zero_point_from(
    model: &TypedModel,
    term: OutletId,
    sources: &[Sums],
) -> TractResult<Option<Arc<Tensor>>> {
    for &sums in sources {
        if let Some(zw) = weight_zero_point(model, term, sums)? {
            return Ok(Some(zw));
        }
    }
    Ok(None)
}

/// What tract's plan does to a convolution's sums between its matmul and what follows them
/// (a reshape, a requantization), per output channel.
pub(crate) struct Tail<'m> {
    /// The constants it adds (wrapping in i32), when it adds any.
    pub(crate) offsets: Option<Vec<i32>>,
    /// `zw` of the zero point's term it subtracts, when it does.
    pub(crate) zero_point: Option<Vec<i32>>,
    /// The first node after them.
    pub(crate) next: &'m TypedNode,
}

/// The single-consumer chain of Adds and Subs after the matmul node `matmul` (its output of
/// shape `c_shape`, channels along `channel_axis`): constants of one value or one per
/// channel, added or subtracted, and at most one zero point's term (`acc − zw · Σ x`) from
/// `sources`, none when `has_term` (the matmul subtracts it already). `None` for anything
/// else, or when a value of the chain is a model output.
pub(crate) fn tail<'m>(
    model: &'m TypedModel,
    matmul: &'m TypedNode,
    (c_shape, channel_axis): (&[usize], usize),
    sources: &[Sums],
    has_term: bool,
) -> TractResult<Option<Tail<'m>>> {
    let channels = c_shape[channel_axis];
    let outputs = model.output_outlets()?;
    let (mut offsets, mut zero_point): (Option<Vec<i32>>, _) = (None, None);
    let mut at = matmul;
    loop {
        if outputs.contains(&OutletId::new(at.id, 0)) {
            return Ok(None);
        }
        let Some(next) = model.single_succ(at.id)? else {
            return Ok(None);
        };
        let Some(bin) = next.op_as::<TypedBinOp>() else {
            return Ok(Some(Tail {
                offsets,
                zero_point,
                next,
            }));
        };
        let subtracts = bin.0.is::<Sub>();
        let out_fact = &next.outputs[0].fact;
        if !(subtracts || bin.0.is::<Add>())
            || out_fact.datum_type != DatumType::I32
            || out_fact.shape.as_concrete() != Some(c_shape)
        {
            return Ok(None);
        }
        // `acc - t` or `acc + t` (or `t + acc`).
        let other = match next.inputs.iter().position(|o| o.node == at.id) {
            Some(0) => next.inputs[1],
            Some(1) if !subtracts => next.inputs[0],
            _ => return Ok(None),
        };
        let along = |k: &Tensor| per_channel(k, c_shape.len(), channel_axis, channels);
        if let Some(k) = &model.outlet_fact(other)?.konst {
            let Some(values) = along(k) else {
                return Ok(None);
            };
            let sums = offsets.get_or_insert_with(|| vec![0; channels]);
            for (o, v) in sums.iter_mut().zip(values) {
                *o = if subtracts {
                    o.wrapping_sub(v)
                } else {
                    o.wrapping_add(v)
                };
            }
        } else {
            let zw = match weight_zero_point_from(model, other, sources)? {
                Some(zw) if subtracts && !has_term && zero_point.is_none() => zw,
                _ => return Ok(None),
            };
            let Some(zw) = along(&zw) else {
                return Ok(None);
            };
            zero_point = Some(zw);
        }
        at = next;
    }
}

/// A layer's weights with the zero point's term folded in: `clamp(w − zw, −127, 127)` per
/// weight (`rows`, `channels × k` like the weights), for the tiles, and what the clamp took
/// off (`residuals`).
#[derive(Debug)]
pub(crate) struct Folded {
    pub(crate) rows: Vec<i8>,
    pub(crate) residuals: Residuals,
}

impl Folded {
    /// `rows` (`channels × k` i8 weights, as the tiles take them) with each channel's `zw`
    /// folded in, when few enough weights leave `[−127, 127]` that their residual products
    /// cost less than the column sums: at most one per channel plus one per patch row
    /// (the column sums' work per position: a sum over the `k` rows, a multiply-subtract
    /// per channel). `None` otherwise, and for operands of the wrong sizes.
    pub(crate) fn new(rows: &[i8], channels: usize, k: usize, zw: &[i32]) -> Option<Folded> {
        if zw.len() != channels || rows.len() != channels * k {
            return None;
        }
        let folded = rows
            .chunks_exact(k.max(1))
            .zip(zw)
            .flat_map(|(row, &z)| row.iter().map(move |&w| i32::from(w) - z));
        Folded::clamped(folded, channels, k, channels + k)
    }

    /// Weights with the zero point already folded in (`channels × k`, channel-major),
    /// clamped to `[−127, 127]`, when at most `limit` of them leave it.
    pub(crate) fn clamped(
        folded: impl IntoIterator<Item = i32>,
        channels: usize,
        k: usize,
        limit: usize,
    ) -> Option<Folded> {
        if channels == 0 || k == 0 {
            return None;
        }
        let mut rows = Vec::with_capacity(channels * k);
        let mut taken: Vec<Term> = vec![];
        for (i, w) in folded.into_iter().enumerate() {
            let kept = w.clamp(-127, 127);
            rows.push(kept as i8);
            if kept != w {
                taken.push((i % k, i / k, w - kept));
                if taken.len() > limit {
                    return None;
                }
            }
        }
        if rows.len() != channels * k {
            return None;
        }
        Some(Folded {
            rows,
            residuals: Residuals::from_terms(taken),
        })
    }
}
