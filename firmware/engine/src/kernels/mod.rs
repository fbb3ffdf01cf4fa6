//! Integer microkernels, kept apart from the operators that choose them (as XNNPACK keeps
//! its microkernels apart from its operators): each family states its packing, has a
//! scalar reference, and its per-ISA versions are tested against that reference over many
//! shapes. banded.rs picks a family per layer and per CPU at load; depthwise.rs picks
//! a depthwise family (planes, kernels/dw.rs, or channels last, kernels/dwc.rs) and
//! prepares its layout.

pub(crate) mod c16;
#[cfg(target_arch = "aarch64")]
mod c16_neon;
pub(crate) mod dot;
#[cfg(target_arch = "aarch64")]
mod dot_neon;
pub(crate) mod dw;
#[cfg(target_arch = "x86_64")]
mod dw_avx2;
#[cfg(target_arch = "aarch64")]
mod dw_dot;
#[cfg(target_arch = "aarch64")]
mod dw_neon;
#[cfg(target_arch = "x86_64")]
pub(crate) mod dw_vnni;
pub(crate) mod dwc;
#[cfg(target_arch = "aarch64")]
mod dwc_dot;
#[cfg(target_arch = "aarch64")]
mod dwc_neon;
#[cfg(target_arch = "x86_64")]
mod dwc_x86;
pub(crate) mod gemv;
#[cfg(target_arch = "aarch64")]
mod gemv_neon;
#[cfg(target_arch = "x86_64")]
pub(crate) mod gemv_vnni;
pub(crate) mod lut;
pub(crate) mod pairs;
#[cfg(target_arch = "aarch64")]
mod pairs_neon;
pub(crate) mod panels;
pub(crate) mod qbinary;
pub(crate) mod sum;

/// The greatest common divisor (a layer's strides and dilations against the kernels'
/// widths).
pub(crate) fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}
