//! Exact rewrites of tract's optimised plan that tract 0.23.9 leaves undone.
//!
//! tract lowers a QLinearConv to an integer matmul followed by the zero-point compensation
//! `acc - k_zp * sum(x) - x_zp * sum(w)`. Our exporters quantize weights symmetrically, so
//! `k_zp` is a constant 0, yet the plan still computes the column sums (QSumB), multiplies
//! them by zero and subtracts the result. That full-size non-constant operand also keeps
//! tract from fusing the per-channel `x_zp * sum(w)` Sub into the matmul. Removing the
//! `x - 0 * y` term and optimising again lets tract do both itself
//! (firmware/bench/INT8-NOTES.md, section 2).
//!
//! Only integer tensors are touched: there `0 * y` is 0 for every `y` and `x - 0` is `x`, so
//! the plan computes the same bits. For floats neither holds (`0 * inf` is NaN, and
//! `-0.0 - -0.0` is `+0.0`), which is why a float `Sub(x, 0 * y)` is left alone.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::binary::{BinMiniOp, TypedBinOp};
use tract_onnx::tract_core::ops::math::{Mul, Sub};

/// Rewires the consumers of every integer `Sub(x, Mul(0, y))` to `x` and returns how many
/// were rewired. `apply` turns the then unused Sub, Mul and column sums into dummies; the
/// caller's next `into_optimized()` prunes them and fuses what remains.
pub(crate) fn drop_zero_products(model: &mut TypedModel) -> TractResult<usize> {
    let mut rewired = 0;
    // Node ids are stable under `apply` (it only adds nodes), and each candidate is
    // re-examined on the current graph: after `Sub1` is rewired, a `Sub2(Sub1, 0 * z)`
    // reads `x` directly and is matched with that input.
    for id in model.eval_order()? {
        let Some(x) = zero_product_sub(model, id)? else {
            continue;
        };
        let patch = TypedModelPatch::rewire(model, &[x], &[OutletId::new(id, 0)], &|_, taps| {
            Ok(taps.into())
        })?;
        patch.apply(model)?;
        rewired += 1;
    }
    Ok(rewired)
}

/// Replaces, in evaluation order, every node for which `replacement` gives an op, keeping
/// the node's inputs, and returns how many were replaced (the engine's drop-in ops of
/// im2col.rs and pool.rs).
pub(crate) fn replace_nodes<O: TypedOp>(
    model: &mut TypedModel,
    replacement: impl Fn(&TypedModel, &TypedNode) -> TractResult<Option<O>>,
) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(new) = replacement(model, node)? else {
            continue;
        };
        let inputs = node.inputs.clone();
        TypedModelPatch::replace_single_op(model, node, &inputs, new)?.apply(model)?;
        replaced += 1;
    }
    Ok(replaced)
}

/// `Some(x)` when node `id` is a plain tract `Sub(x, p)` whose value is exactly `x`: `p` is
/// `Mul(c, y)` or `Mul(y, c)` with `c` a constant all-zero integer tensor, the Sub is the
/// Mul's only consumer, and `x` has the Sub's output shape and datum type (so no consumer
/// can tell the difference). Anything else, including quantized types whose arithmetic
/// adds zero points, is `None`.
fn zero_product_sub(model: &TypedModel, id: usize) -> TractResult<Option<OutletId>> {
    let sub = model.node(id);
    if !is_bin_op::<Sub>(sub) || sub.inputs.len() != 2 || sub.outputs.len() != 1 {
        return Ok(None);
    }
    let out = OutletId::new(id, 0);
    let outputs = model.output_outlets()?;
    // A rewired Sub has no consumers left; a model output keeps its own node.
    if sub.outputs[0].successors.is_empty() || outputs.contains(&out) {
        return Ok(None);
    }
    let (x, product) = (sub.inputs[0], sub.inputs[1]);
    let mul = model.node(product.node);
    if !is_bin_op::<Mul>(mul)
        || mul.inputs.len() != 2
        || mul.outputs.len() != 1
        || mul.outputs[0].successors.len() != 1
        || outputs.contains(&product)
    {
        return Ok(None);
    }
    let out_fact = model.outlet_fact(out)?;
    let x_fact = model.outlet_fact(x)?;
    if !plain_integer(out_fact.datum_type)
        || x_fact.datum_type != out_fact.datum_type
        || x_fact.shape != out_fact.shape
        || !plain_integer(model.outlet_fact(product)?.datum_type)
    {
        return Ok(None);
    }
    let operands = [
        model.outlet_fact(mul.inputs[0])?,
        model.outlet_fact(mul.inputs[1])?,
    ];
    if !operands.iter().all(|f| plain_integer(f.datum_type)) {
        return Ok(None);
    }
    let zero = operands.iter().any(|f| {
        f.konst
            .as_ref()
            .is_some_and(|c| c.len() > 0 && c.is_all_zero().unwrap_or(false))
    });
    Ok(zero.then_some(x))
}

/// The plain tract binary op only: its codegen forms (`OptSubUnicast`, ...) are not matched,
/// so a tract upgrade that changes how the compensation is lowered turns this into a no-op
/// rather than into a rewrite of something else.
fn is_bin_op<M: BinMiniOp>(node: &TypedNode) -> bool {
    node.op_as::<TypedBinOp>().is_some_and(|op| op.0.is::<M>())
}

/// Integer types with no quantization parameters: `is_integer` alone also accepts QU8 etc.
fn plain_integer(dt: DatumType) -> bool {
    dt.is_integer() && !dt.is_quantized()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::math::{add, mul, sub};

    /// `Add(s, s)` with `s = Sub(x, Mul(c, y))`: the Add gives the Sub a consumer.
    fn graph(x: TypedFact, y: TypedFact, c: Tensor) -> (TypedModel, OutletId, usize) {
        let mut m = TypedModel::default();
        let x = m.add_source("x", x).unwrap();
        let y = m.add_source("y", y).unwrap();
        let c = m.add_const("c", c).unwrap();
        let p = m.wire_node("p", mul(), &[c, y]).unwrap()[0];
        let s = m.wire_node("s", sub(), &[x, p]).unwrap()[0];
        let out = m.wire_node("out", add(), &[s, s]).unwrap()[0];
        m.select_output_outlets(&[out]).unwrap();
        (m, x, out.node)
    }

    fn zeros_i32(shape: &[usize]) -> Tensor {
        Tensor::zero::<i32>(shape).unwrap()
    }

    #[test]
    fn integer_zero_product_is_removed() {
        let (mut m, x, out) = graph(i32::fact([2, 3]), i32::fact([2, 3]), zeros_i32(&[1, 3]));
        assert_eq!(drop_zero_products(&mut m).unwrap(), 1);
        assert_eq!(m.node(out).inputs, vec![x, x]);
        // Nothing is left to match on a second pass.
        assert_eq!(drop_zero_products(&mut m).unwrap(), 0);
    }

    #[test]
    fn zero_as_second_mul_operand_and_chains_are_removed() {
        let mut m = TypedModel::default();
        let x = m.add_source("x", i32::fact([2, 3])).unwrap();
        let y = m.add_source("y", i32::fact([2, 3])).unwrap();
        let c = m.add_const("c", zeros_i32(&[1, 1])).unwrap();
        let p1 = m.wire_node("p1", mul(), &[y, c]).unwrap()[0];
        let s1 = m.wire_node("s1", sub(), &[x, p1]).unwrap()[0];
        let p2 = m.wire_node("p2", mul(), &[c, y]).unwrap()[0];
        let s2 = m.wire_node("s2", sub(), &[s1, p2]).unwrap()[0];
        let out = m.wire_node("out", add(), &[s2, x]).unwrap()[0];
        m.select_output_outlets(&[out]).unwrap();
        assert_eq!(drop_zero_products(&mut m).unwrap(), 2);
        assert_eq!(m.node(out.node).inputs, vec![x, x]);
    }

    #[test]
    fn other_shapes_of_the_pattern_are_left_alone() {
        let unchanged = |mut m: TypedModel| {
            let before = format!("{m:?}");
            assert_eq!(drop_zero_products(&mut m).unwrap(), 0);
            assert_eq!(format!("{m:?}"), before);
        };
        // A constant that is not all zeros.
        let c = Tensor::from_shape(&[1, 3], &[0i32, 1, 0]).unwrap();
        unchanged(graph(i32::fact([2, 3]), i32::fact([2, 3]), c).0);
        // Floats: 0 * inf is NaN, and -0.0 - -0.0 is +0.0.
        let c = Tensor::zero::<f32>(&[1, 3]).unwrap();
        unchanged(graph(f32::fact([2, 3]), f32::fact([2, 3]), c).0);
        // x is broadcast by the Sub: its fact differs from the Sub's output.
        unchanged(graph(i32::fact([1, 3]), i32::fact([2, 3]), zeros_i32(&[1, 3])).0);

        // 0 * y - x is -x, not x.
        let mut m = TypedModel::default();
        let x = m.add_source("x", i32::fact([2, 3])).unwrap();
        let y = m.add_source("y", i32::fact([2, 3])).unwrap();
        let c = m.add_const("c", zeros_i32(&[1, 3])).unwrap();
        let p = m.wire_node("p", mul(), &[c, y]).unwrap()[0];
        let s = m.wire_node("s", sub(), &[p, x]).unwrap()[0];
        let out = m.wire_node("out", add(), &[s, s]).unwrap()[0];
        m.select_output_outlets(&[out]).unwrap();
        unchanged(m);

        // The product has a second consumer.
        let mut m = TypedModel::default();
        let x = m.add_source("x", i32::fact([2, 3])).unwrap();
        let y = m.add_source("y", i32::fact([2, 3])).unwrap();
        let c = m.add_const("c", zeros_i32(&[1, 3])).unwrap();
        let p = m.wire_node("p", mul(), &[c, y]).unwrap()[0];
        let s = m.wire_node("s", sub(), &[x, p]).unwrap()[0];
        let out = m.wire_node("out", add(), &[s, p]).unwrap()[0];
        m.select_output_outlets(&[out]).unwrap();
        unchanged(m);

        // The Sub is the model's output.
        let (mut m, _, out) = graph(i32::fact([2, 3]), i32::fact([2, 3]), zeros_i32(&[1, 3]));
        let s = m.node(out).inputs[0];
        m.select_output_outlets(&[s]).unwrap();
        unchanged(m);
    }

    #[test]
    fn quantized_integers_are_not_plain() {
        assert!(plain_integer(DatumType::I32) && plain_integer(DatumType::U8));
        assert!(!plain_integer(DatumType::U8.with_zp_scale(128, 0.1)));
        assert!(!plain_integer(DatumType::F32));
    }
}
