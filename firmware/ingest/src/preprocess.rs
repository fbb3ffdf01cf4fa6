//! Preprocessing into the model's input tensor: colour conversion, antialiased resize,
//! normalisation and layout. The hot loops have a scalar reference and a NEON path.
//!
//! The resize is PIL's `BILINEAR` resampling: a triangle filter whose support grows with
//! the downscale factor (so a downscale averages every source pixel instead of sampling
//! a few), plain bilinear interpolation when upscaling. Weights are computed once per
//! output row / column. Work runs on planar channels so that both filter passes and the
//! normalisation read contiguous memory.

use edgedx_bundle::{InputSpec, Layout};

use crate::{Image, IngestError};

/// Which implementation of the hot loops to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Portable reference.
    Scalar,
    /// aarch64 Advanced SIMD; falls back to `Scalar` where NEON is not available.
    Neon,
}

fn neon_available() -> bool {
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("neon")
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        false
    }
}

/// The kernel [`preprocess`] uses on this machine.
pub fn best_kernel() -> Kernel {
    if neon_available() {
        Kernel::Neon
    } else {
        Kernel::Scalar
    }
}

/// Name of the kernel in use ("neon" or "scalar"), for `edgedx info`.
pub fn kernel_name() -> &'static str {
    match best_kernel() {
        Kernel::Neon => "neon",
        Kernel::Scalar => "scalar",
    }
}

/// Writes exactly `spec.item_len()` values into `out`, in `spec.layout`, with the best
/// kernel for this machine.
pub fn preprocess(img: &Image, spec: &InputSpec, out: &mut [f32]) -> Result<(), IngestError> {
    preprocess_with(img, spec, out, best_kernel())
}

/// [`preprocess`] with the scalar reference kernel.
pub fn preprocess_scalar(
    img: &Image,
    spec: &InputSpec,
    out: &mut [f32],
) -> Result<(), IngestError> {
    preprocess_with(img, spec, out, Kernel::Scalar)
}

/// [`preprocess`] with a chosen kernel.
pub fn preprocess_with(
    img: &Image,
    spec: &InputSpec,
    out: &mut [f32],
    kernel: Kernel,
) -> Result<(), IngestError> {
    let spec_err = |reason: String| Err(IngestError::Spec { reason });
    let kernel = if kernel == Kernel::Neon && !neon_available() {
        Kernel::Scalar
    } else {
        kernel
    };
    let oc = spec.channels as usize;
    if !matches!(oc, 1 | 3) || spec.mean.len() != oc || spec.std.len() != oc {
        return spec_err(format!(
            "input spec has {oc} channel(s), {} mean(s), {} std(s); need 1 or 3 with one \
             mean and std each",
            spec.mean.len(),
            spec.std.len()
        ));
    }
    if spec.std.iter().any(|s| !s.is_finite() || *s <= 0.0) || spec.width == 0 || spec.height == 0 {
        return spec_err("input spec needs std > 0 and a non-zero size".into());
    }
    if out.len() != spec.item_len() {
        return spec_err(format!(
            "output buffer holds {} values, spec {}x{}x{} needs {}",
            out.len(),
            spec.height,
            spec.width,
            oc,
            spec.item_len()
        ));
    }
    let ic = usize::from(img.channels);
    let (w, h) = (img.width as usize, img.height as usize);
    if !matches!(ic, 1 | 3) || w == 0 || h == 0 || img.data.len() != w * h * ic {
        return spec_err(format!(
            "image is {}x{}x{} with {} values",
            img.height,
            img.width,
            ic,
            img.data.len()
        ));
    }

    // Converting to grey before resizing (rather than after) resizes one plane instead
    // of three; both steps are linear, so the result is the same.
    let wc = if oc == 1 { 1 } else { ic };
    let src = to_planes(&img.data, ic, wc);
    let (ow, oh) = (spec.width as usize, spec.height as usize);
    let resized = if (ow, oh) == (w, h) {
        // Exact copy: golden outputs compare bit-for-bit at the model's own size.
        src
    } else {
        let tx = Taps::new(w, ow);
        let ty = Taps::new(h, oh);
        let mut tmp = vec![0.0f32; wc * h * ow];
        let mut dst = vec![0.0f32; wc * oh * ow];
        for c in 0..wc {
            let plane = &src[c * w * h..(c + 1) * w * h];
            let tplane = &mut tmp[c * h * ow..(c + 1) * h * ow];
            for y in 0..h {
                let row = &plane[y * w..(y + 1) * w];
                let orow = &mut tplane[y * ow..(y + 1) * ow];
                horizontal(kernel, row, orow, &tx);
            }
            let tplane = &tmp[c * h * ow..(c + 1) * h * ow];
            let dplane = &mut dst[c * oh * ow..(c + 1) * oh * ow];
            for (yo, orow) in dplane.chunks_exact_mut(ow).enumerate() {
                vertical(kernel, tplane, ow, orow, &ty, yo);
            }
        }
        dst
    };

    let n = ow * oh;
    let plane = |c: usize| {
        let c = c.min(wc - 1);
        &resized[c * n..(c + 1) * n]
    };
    match (spec.layout, oc) {
        (Layout::Nchw, _) | (Layout::Nhwc, 1) => {
            for c in 0..oc {
                normalise(
                    kernel,
                    plane(c),
                    &mut out[c * n..(c + 1) * n],
                    spec.mean[c],
                    spec.std[c],
                );
            }
        }
        (Layout::Nhwc, _) => normalise_interleave3(
            kernel,
            [plane(0), plane(1), plane(2)],
            out,
            [spec.mean[0], spec.mean[1], spec.mean[2]],
            [spec.std[0], spec.std[1], spec.std[2]],
        ),
    }
    Ok(())
}

/// BT.601 luma weights, as PIL's `convert("L")` uses.
const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

/// Interleaved HWC to planes; `wc == 1` from 3 channels means luma.
fn to_planes(data: &[f32], ic: usize, wc: usize) -> Vec<f32> {
    if ic == 1 {
        return data.to_vec();
    }
    let n = data.len() / 3;
    if wc == 1 {
        return data
            .chunks_exact(3)
            .map(|p| LUMA[0] * p[0] + LUMA[1] * p[1] + LUMA[2] * p[2])
            .collect();
    }
    let mut out = vec![0.0f32; data.len()];
    let (r, rest) = out.split_at_mut(n);
    let (g, b) = rest.split_at_mut(n);
    for (i, p) in data.chunks_exact(3).enumerate() {
        r[i] = p[0];
        g[i] = p[1];
        b[i] = p[2];
    }
    out
}

/// Filter taps for one axis: output `i` reads `n` source samples from `start[i]`.
///
/// Every output has the same tap count `n` (zero weights pad the short ones) and
/// windows are shifted to stay inside the source, so the inner loops need no bounds
/// logic.
#[derive(Debug)]
struct Taps {
    start: Vec<usize>,
    n: usize,
    weights: Vec<f32>,
}

impl Taps {
    fn new(in_len: usize, out_len: usize) -> Taps {
        let scale = in_len as f64 / out_len as f64;
        let filterscale = scale.max(1.0);
        // Triangle filter: support 1 source pixel, widened by the downscale factor.
        let support = filterscale;
        let mut spans = Vec::with_capacity(out_len);
        let mut n = 1;
        for i in 0..out_len {
            let center = (i as f64 + 0.5) * scale;
            let lo = ((center - support + 0.5).floor().max(0.0) as usize).min(in_len - 1);
            let hi = ((center + support + 0.5).floor() as usize).clamp(lo + 1, in_len);
            let mut ws: Vec<f64> = (lo..hi)
                .map(|x| (1.0 - ((x as f64 - center + 0.5) / filterscale).abs()).max(0.0))
                .collect();
            let total: f64 = ws.iter().sum();
            if total > 0.0 {
                ws.iter_mut().for_each(|w| *w /= total);
            }
            n = n.max(ws.len());
            spans.push((lo, ws));
        }
        let mut start = Vec::with_capacity(out_len);
        let mut weights = vec![0.0f32; out_len * n];
        for (i, (lo, ws)) in spans.into_iter().enumerate() {
            let s = lo.min(in_len - n);
            let off = lo - s;
            for (k, w) in ws.into_iter().enumerate() {
                weights[i * n + off + k] = w as f32;
            }
            start.push(s);
        }
        Taps { start, n, weights }
    }

    fn of(&self, i: usize) -> &[f32] {
        &self.weights[i * self.n..(i + 1) * self.n]
    }
}

fn horizontal(kernel: Kernel, row: &[f32], out: &mut [f32], t: &Taps) {
    #[cfg(target_arch = "aarch64")]
    if kernel == Kernel::Neon {
        // SAFETY: Kernel::Neon is only passed on when NEON was detected at runtime.
        unsafe { neon::horizontal(row, out, t) };
        return;
    }
    let _ = kernel;
    for (i, o) in out.iter_mut().enumerate() {
        let src = &row[t.start[i]..t.start[i] + t.n];
        *o = src.iter().zip(t.of(i)).map(|(s, w)| s * w).sum();
    }
}

fn vertical(kernel: Kernel, plane: &[f32], width: usize, out: &mut [f32], t: &Taps, yo: usize) {
    #[cfg(target_arch = "aarch64")]
    if kernel == Kernel::Neon {
        // SAFETY: as in `horizontal`.
        unsafe { neon::vertical(plane, width, out, t, yo) };
        return;
    }
    let _ = kernel;
    out.fill(0.0);
    for (k, &w) in t.of(yo).iter().enumerate() {
        let row = &plane[(t.start[yo] + k) * width..(t.start[yo] + k + 1) * width];
        for (o, s) in out.iter_mut().zip(row) {
            *o += w * s;
        }
    }
}

fn normalise(kernel: Kernel, src: &[f32], out: &mut [f32], mean: f32, std: f32) {
    #[cfg(target_arch = "aarch64")]
    if kernel == Kernel::Neon {
        // SAFETY: as in `horizontal`.
        unsafe { neon::normalise(src, out, mean, std) };
        return;
    }
    let _ = kernel;
    // Division, not multiplication by 1/std: matches the reference pipelines bit for bit.
    for (o, s) in out.iter_mut().zip(src) {
        *o = (s - mean) / std;
    }
}

fn normalise_interleave3(
    kernel: Kernel,
    planes: [&[f32]; 3],
    out: &mut [f32],
    mean: [f32; 3],
    std: [f32; 3],
) {
    #[cfg(target_arch = "aarch64")]
    if kernel == Kernel::Neon {
        // SAFETY: as in `horizontal`.
        unsafe { neon::normalise_interleave3(planes, out, mean, std) };
        return;
    }
    let _ = kernel;
    for (i, px) in out.chunks_exact_mut(3).enumerate() {
        for c in 0..3 {
            px[c] = (planes[c][i] - mean[c]) / std[c];
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    //! NEON versions of the hot loops; same arithmetic as the scalar ones up to
    //! summation order and fused multiply-add rounding.
    use super::Taps;
    use std::arch::aarch64::*;

    #[target_feature(enable = "neon")]
    pub(super) unsafe fn horizontal(row: &[f32], out: &mut [f32], t: &Taps) {
        let n = t.n;
        let n4 = n & !3;
        for (i, o) in out.iter_mut().enumerate() {
            let src = &row[t.start[i]..t.start[i] + n];
            let w = t.of(i);
            let mut acc = vdupq_n_f32(0.0);
            let mut k = 0;
            while k < n4 {
                acc = vfmaq_f32(
                    acc,
                    vld1q_f32(w.as_ptr().add(k)),
                    vld1q_f32(src.as_ptr().add(k)),
                );
                k += 4;
            }
            let mut sum = vaddvq_f32(acc);
            while k < n {
                sum += w[k] * src[k];
                k += 1;
            }
            *o = sum;
        }
    }

    #[target_feature(enable = "neon")]
    pub(super) unsafe fn vertical(
        plane: &[f32],
        width: usize,
        out: &mut [f32],
        t: &Taps,
        yo: usize,
    ) {
        let w4 = width & !3;
        let taps = t.of(yo);
        let base = t.start[yo];
        let mut x = 0;
        while x < w4 {
            let mut acc = vdupq_n_f32(0.0);
            for (k, &w) in taps.iter().enumerate() {
                let row = plane.as_ptr().add((base + k) * width + x);
                acc = vfmaq_n_f32(acc, vld1q_f32(row), w);
            }
            vst1q_f32(out.as_mut_ptr().add(x), acc);
            x += 4;
        }
        while x < width {
            let mut sum = 0.0f32;
            for (k, &w) in taps.iter().enumerate() {
                sum = w.mul_add(plane[(base + k) * width + x], sum);
            }
            out[x] = sum;
            x += 1;
        }
    }

    #[target_feature(enable = "neon")]
    pub(super) unsafe fn normalise(src: &[f32], out: &mut [f32], mean: f32, std: f32) {
        let len = src.len().min(out.len());
        let l4 = len & !3;
        let (m, s) = (vdupq_n_f32(mean), vdupq_n_f32(std));
        let mut i = 0;
        while i < l4 {
            let v = vld1q_f32(src.as_ptr().add(i));
            vst1q_f32(out.as_mut_ptr().add(i), vdivq_f32(vsubq_f32(v, m), s));
            i += 4;
        }
        while i < len {
            out[i] = (src[i] - mean) / std;
            i += 1;
        }
    }

    #[target_feature(enable = "neon")]
    pub(super) unsafe fn normalise_interleave3(
        planes: [&[f32]; 3],
        out: &mut [f32],
        mean: [f32; 3],
        std: [f32; 3],
    ) {
        let len = planes[0].len().min(out.len() / 3);
        let l4 = len & !3;
        let m = [
            vdupq_n_f32(mean[0]),
            vdupq_n_f32(mean[1]),
            vdupq_n_f32(mean[2]),
        ];
        let s = [
            vdupq_n_f32(std[0]),
            vdupq_n_f32(std[1]),
            vdupq_n_f32(std[2]),
        ];
        let mut i = 0;
        while i < l4 {
            let v = float32x4x3_t(
                vdivq_f32(vsubq_f32(vld1q_f32(planes[0].as_ptr().add(i)), m[0]), s[0]),
                vdivq_f32(vsubq_f32(vld1q_f32(planes[1].as_ptr().add(i)), m[1]), s[1]),
                vdivq_f32(vsubq_f32(vld1q_f32(planes[2].as_ptr().add(i)), m[2]), s[2]),
            );
            vst3q_f32(out.as_mut_ptr().add(3 * i), v);
            i += 4;
        }
        while i < len {
            for c in 0..3 {
                out[3 * i + c] = (planes[c][i] - mean[c]) / std[c];
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ImageInfo, SourceFormat};
    use edgedx_bundle::Colour;

    fn image(w: u32, h: u32, c: u8, data: Vec<f32>) -> Image {
        Image {
            width: w,
            height: h,
            channels: c,
            data,
            info: ImageInfo::new(SourceFormat::Png),
        }
    }

    fn spec(w: u32, h: u32, c: u32, layout: Layout) -> InputSpec {
        InputSpec {
            tensor: "input".into(),
            layout,
            height: h,
            width: w,
            channels: c,
            colour: if c == 1 { Colour::Grey } else { Colour::Rgb },
            mean: vec![0.0; c as usize],
            std: vec![1.0; c as usize],
        }
    }

    /// Deterministic xorshift: tests need varied data, not a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 24) as f32
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn run(img: &Image, s: &InputSpec, k: Kernel) -> Vec<f32> {
        let mut out = vec![f32::NAN; s.item_len()];
        preprocess_with(img, s, &mut out, k).unwrap();
        out
    }

    #[test]
    fn identity_size_copies_exactly() {
        let mut rng = Rng(7);
        let data: Vec<f32> = (0..5 * 3 * 3).map(|_| rng.unit()).collect();
        let img = image(5, 3, 3, data.clone());
        for k in [Kernel::Scalar, best_kernel()] {
            assert_eq!(run(&img, &spec(5, 3, 3, Layout::Nhwc), k), data);
        }
        let mut s = spec(5, 3, 3, Layout::Nchw);
        s.mean = vec![0.485, 0.456, 0.406];
        s.std = vec![0.229, 0.224, 0.225];
        let out = run(&img, &s, best_kernel());
        for c in 0..3 {
            for i in 0..15 {
                assert_eq!(out[c * 15 + i], (data[i * 3 + c] - s.mean[c]) / s.std[c]);
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        for (w, h, ow, oh) in [(17, 9, 5, 4), (3, 2, 40, 31), (1, 1, 7, 7), (100, 1, 3, 3)] {
            let img = image(w, h, 1, vec![0.375; (w * h) as usize]);
            for k in [Kernel::Scalar, best_kernel()] {
                let out = run(&img, &spec(ow, oh, 1, Layout::Nchw), k);
                assert!(
                    out.iter().all(|v| (v - 0.375).abs() < 1e-6),
                    "{w}x{h}->{ow}x{oh}"
                );
            }
        }
    }

    #[test]
    fn halving_a_checkerboard_averages_it() {
        let (w, h) = (12u32, 8u32);
        let data = (0..h)
            .flat_map(|y| (0..w).map(move |x| ((x + y) % 2) as f32))
            .collect();
        let img = image(w, h, 1, data);
        for k in [Kernel::Scalar, best_kernel()] {
            let out = run(&img, &spec(6, 4, 1, Layout::Nchw), k);
            // Border outputs see a clipped, asymmetric window; the interior is exact.
            for y in 1..3 {
                for x in 1..5 {
                    assert!((out[y * 6 + x] - 0.5).abs() < 1e-6, "{out:?}");
                }
            }
        }
    }

    #[test]
    fn two_to_one_matches_pil_weights() {
        // PIL BILINEAR 4 -> 2: each output weighs 1/8, 3/8, 3/8, 1/8 around its centre.
        let img = image(4, 1, 1, vec![0.0, 1.0, 0.0, 0.0]);
        let out = run(&img, &spec(2, 1, 1, Layout::Nchw), Kernel::Scalar);
        assert!((out[0] - 3.0 / 7.0).abs() < 1e-6, "{out:?}");
        assert!((out[1] - 1.0 / 7.0).abs() < 1e-6, "{out:?}");
    }

    #[test]
    fn grey_and_rgb_conversions() {
        let rgb = image(1, 1, 3, vec![1.0, 0.5, 0.0]);
        let out = run(&rgb, &spec(1, 1, 1, Layout::Nchw), Kernel::Scalar);
        assert!((out[0] - (0.299 + 0.587 * 0.5)).abs() < 1e-6);
        let grey = image(2, 1, 1, vec![0.25, 0.75]);
        let mut s = spec(2, 1, 3, Layout::Nhwc);
        s.mean = vec![0.0, 0.25, 0.5];
        let out = run(&grey, &s, Kernel::Scalar);
        assert_eq!(out, vec![0.25, 0.0, -0.25, 0.75, 0.5, 0.25]);
    }

    #[test]
    fn bad_buffers_are_spec_errors() {
        let img = image(2, 2, 1, vec![0.0; 4]);
        let mut out = vec![0.0; 3];
        let err = preprocess(&img, &spec(2, 2, 1, Layout::Nchw), &mut out).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Spec);
        let lying = image(3, 3, 1, vec![0.0; 4]);
        let mut out = vec![0.0; 4];
        assert!(preprocess(&lying, &spec(2, 2, 1, Layout::Nchw), &mut out).is_err());
    }

    #[test]
    fn best_kernel_matches_scalar_on_random_images() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let cases = if cfg!(target_arch = "aarch64") {
            120
        } else {
            200
        };
        let mut worst = 0.0f32;
        for case in 0..cases {
            let (w, h) = (1 + rng.below(97) as u32, 1 + rng.below(61) as u32);
            let (ow, oh) = (1 + rng.below(80) as u32, 1 + rng.below(80) as u32);
            let ic = if rng.below(2) == 0 { 1 } else { 3 };
            let oc = if rng.below(2) == 0 { 1 } else { 3 };
            let layout = if case % 2 == 0 {
                Layout::Nchw
            } else {
                Layout::Nhwc
            };
            let data = (0..w * h * u32::from(ic)).map(|_| rng.unit()).collect();
            let img = image(w, h, ic, data);
            let mut s = spec(ow, oh, oc, layout);
            s.mean = (0..oc).map(|c| 0.4 + 0.05 * c as f32).collect();
            s.std = (0..oc).map(|c| 0.22 + 0.01 * c as f32).collect();
            let a = run(&img, &s, Kernel::Scalar);
            let b = run(&img, &s, Kernel::Neon);
            for (x, y) in a.iter().zip(&b) {
                assert!(x.is_finite());
                worst = worst.max((x - y).abs());
            }
            assert!(
                worst <= 1e-5,
                "case {case}: {w}x{h}x{ic} -> {ow}x{oh}x{oc}: {worst}"
            );
        }
        log::info!("kernel {} vs scalar: max abs diff {worst}", kernel_name());
    }

    #[test]
    fn kernel_name_is_known() {
        assert!(matches!(kernel_name(), "neon" | "scalar"));
        #[cfg(target_arch = "aarch64")]
        assert_eq!(kernel_name(), "neon");
    }
}
