//! Strided slices of int8 tensors: tract's `Downsample` on u8 and i8.
//!
//! tract's codegen turns a 1x1 convolution of stride 2 (ResNet's downsampling shortcuts)
//! into a `Downsample` per spatial axis and a 1x1 convolution of stride 1. Its Downsample
//! copies the strided view element by element through ndarray: 2.6 M instructions per
//! inference of the ResNet-18-style network under qemu (cortex-a72), for three shortcuts.
//! [`Downsample8`] copies whole runs for an outer axis and takes every stride-th byte of
//! the last one on the vector unit (im2col.rs `strided_rows`). A copy is exact.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::Downsample;

use crate::im2col::strided_rows;

/// Every `stride`-th index from `modulo` along `axis` of a u8 or i8 tensor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Downsample8 {
    axis: usize,
    stride: usize,
    modulo: usize,
}

impl Downsample8 {
    fn run(&self, x: &Tensor) -> TractResult<Tensor> {
        let shape = x.shape();
        ensure!(
            self.axis < shape.len(),
            "Downsample8: axis {} of {shape:?}",
            self.axis
        );
        let len = shape[self.axis];
        let taken = if self.modulo > len {
            0
        } else {
            (len - self.modulo).div_ceil(self.stride)
        };
        let outer: usize = shape[..self.axis].iter().product();
        let inner: usize = shape[self.axis + 1..].iter().product();
        let mut out_shape: TVec<usize> = shape.into();
        out_shape[self.axis] = taken;
        // SAFETY: every byte is written below before the tensor is read.
        let mut out = unsafe { Tensor::uninitialized_dt(x.datum_type(), &out_shape)? };
        {
            let src = x.try_as_plain_ram()?;
            let src = as_i8(src.as_bytes());
            let mut view = out.try_as_plain_ram_mut()?;
            let dst = as_i8_mut(view.as_bytes_mut());
            ensure!(
                src.len() == outer * len * inner && dst.len() == outer * taken * inner,
                "Downsample8: {} and {} bytes for {shape:?}",
                src.len(),
                dst.len()
            );
            if taken > 0 && outer > 0 {
                let from = |o: usize| (o * len + self.modulo) * inner;
                if inner == 1 {
                    // Every outer item's strided row, in one call.
                    strided_rows(
                        &src[from(0)..],
                        len,
                        self.stride,
                        (dst, taken),
                        taken,
                        outer,
                    );
                } else {
                    for o in 0..outer {
                        let to = (&mut dst[o * taken * inner..], inner);
                        strided_rows(&src[from(o)..], self.stride * inner, 1, to, inner, taken);
                    }
                }
            }
        }
        Ok(out)
    }
}

fn as_i8(bytes: &[u8]) -> &[i8] {
    // SAFETY: u8 and i8 have one size and alignment; every bit pattern is valid.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast(), bytes.len()) }
}

fn as_i8_mut(bytes: &mut [u8]) -> &mut [i8] {
    // SAFETY: as in `as_i8`.
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast(), bytes.len()) }
}

impl Op for Downsample8 {
    fn name(&self) -> StaticName {
        "Downsample8".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "axis {}, stride {}, from {}",
            self.axis, self.stride, self.modulo
        )])
    }

    tract_onnx::tract_core::op_as_typed_op!();
}

impl EvalOp for Downsample8 {
    tract_onnx::tract_core::op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        ensure!(
            matches!(x.datum_type(), DatumType::U8 | DatumType::I8),
            "Downsample8: {:?} input",
            x.datum_type()
        );
        Ok(tvec!(self.run(x)?.into_tvalue()))
    }
}

impl TypedOp for Downsample8 {
    tract_onnx::tract_core::as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let input = inputs[0];
        let mut shape = input.shape.to_tvec();
        ensure!(self.axis < shape.len(), "Downsample8: axis {}", self.axis);
        let len = shape[self.axis].clone();
        shape[self.axis] = (len - self.modulo).div_ceil(self.stride as u64);
        Ok(tvec!(input.datum_type.fact(&*shape)))
    }
}

/// Replaces every tract `Downsample` of a u8 or i8 tensor with a positive stride; returns
/// how many.
pub(crate) fn speed_up_downsamples(model: &mut TypedModel) -> TractResult<usize> {
    crate::rewrite::replace_nodes(model, |model, node| {
        let Some(op) = node.op_as::<Downsample>() else {
            return Ok(None);
        };
        let input = model.outlet_fact(node.inputs[0])?;
        if op.stride < 1
            || !matches!(input.datum_type, DatumType::U8 | DatumType::I8)
            || input.shape.as_concrete().is_none()
        {
            return Ok(None);
        }
        let new = Downsample8 {
            axis: op.axis,
            stride: op.stride as usize,
            modulo: op.modulo,
        };
        let (ours, theirs) = (&new.output_facts(&[input])?[0], &node.outputs[0].fact);
        let same_output = ours.datum_type == theirs.datum_type && ours.shape == theirs.shape;
        Ok(same_output.then_some(new))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::tests::{byte_tensor, run_bytes};

    /// Every axis of a u8 and an i8 tensor, strides 1 to 3, from 0 to 2 (a last-axis
    /// length that the vector steps do not divide): tract's bytes and shapes.
    #[test]
    fn downsamples_exactly_like_tract() {
        let shape = [2usize, 3, 9, 37];
        let bytes: Vec<u8> = (0..shape.iter().product::<usize>())
            .map(|i| (i * 131 + 7) as u8)
            .collect();
        for dt in [DatumType::U8, DatumType::I8] {
            for axis in 0..4 {
                for stride in 1..=3 {
                    for modulo in 0..=2 {
                        let op = Downsample::new(axis, stride as isize, modulo);
                        let mut m = TypedModel::default();
                        let x = m.add_source("x", dt.fact(shape)).unwrap();
                        let y = m.wire_node("down", op, &[x]).unwrap()[0];
                        m.select_output_outlets(&[y]).unwrap();
                        let mut ours = m.clone();
                        let n = speed_up_downsamples(&mut ours).unwrap();
                        assert_eq!(n, 1);
                        let x = byte_tensor(&shape, dt, &bytes);
                        assert_eq!(
                            run_bytes(m, &x),
                            run_bytes(ours, &x),
                            "{dt:?} axis {axis} stride {stride} from {modulo}"
                        );
                    }
                }
            }
        }
    }
}
