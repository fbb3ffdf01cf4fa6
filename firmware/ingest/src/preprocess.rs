//! Preprocessing into the model's input tensor: colour conversion, antialiased resize,
//! normalisation and layout. The hot loops have a scalar reference and a NEON path.
//!
//! The resize is PIL's `BILINEAR` resampling: a triangle filter whose support grows with
//! the downscale factor (so a downscale averages every source pixel instead of sampling
//! a few), plain bilinear interpolation when upscaling. Weights are computed once per
//! output row / column. Work runs on planar channels so that both filter passes and the
//! normalisation read contiguous memory.

use edgedx_bundle::{Colour, Filter, InputSpec, Layout, Resize};

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
    let (ax, ay) = (
        Axis::plan(spec, w, ow, h, oh),
        Axis::plan(spec, h, oh, w, ow),
    );
    let content = if ax.is_identity(w) && ay.is_identity(h) {
        // Exact copy: golden outputs compare bit-for-bit at the model's own size.
        src
    } else {
        let tx = Taps::new(spec.filter, w, &ax);
        let ty = Taps::new(spec.filter, h, &ay);
        let (cw, ch) = (ax.count, ay.count);
        let mut tmp = vec![0.0f32; wc * h * cw];
        let mut dst = vec![0.0f32; wc * ch * cw];
        for c in 0..wc {
            let plane = &src[c * w * h..(c + 1) * w * h];
            let tplane = &mut tmp[c * h * cw..(c + 1) * h * cw];
            for y in 0..h {
                let row = &plane[y * w..(y + 1) * w];
                let orow = &mut tplane[y * cw..(y + 1) * cw];
                horizontal(kernel, row, orow, &tx);
            }
            let tplane = &tmp[c * h * cw..(c + 1) * h * cw];
            let dplane = &mut dst[c * ch * cw..(c + 1) * ch * cw];
            for (yo, orow) in dplane.chunks_exact_mut(cw).enumerate() {
                vertical(kernel, tplane, cw, orow, &ty, yo);
            }
        }
        dst
    };
    let resized = place(content, wc, &ax, &ay, ow, oh, spec.pad.unwrap_or(0.0));

    let n = ow * oh;
    // Image planes are in RGB order; a BGR model reads them reversed.
    let bgr = spec.colour == Colour::Bgr && wc == 3;
    let plane = |c: usize| {
        let c = if bgr { 2 - c } else { c.min(wc - 1) };
        &resized[c * n..(c + 1) * n]
    };
    let gain = spec.range.gain();
    match (spec.layout, oc) {
        (Layout::Nchw, _) | (Layout::Nhwc, 1) => {
            for c in 0..oc {
                normalise(
                    kernel,
                    plane(c),
                    &mut out[c * n..(c + 1) * n],
                    gain,
                    spec.mean[c],
                    spec.std[c],
                );
            }
        }
        (Layout::Nhwc, _) => normalise_interleave3(
            kernel,
            [plane(0), plane(1), plane(2)],
            out,
            gain,
            [spec.mean[0], spec.mean[1], spec.mean[2]],
            [spec.std[0], spec.std[1], spec.std[2]],
        ),
    }
    Ok(())
}

/// Where the resized image lands along one axis of the model input: source samples are
/// resampled as if to `scaled` samples, of which outputs `skip..skip + count` are kept and
/// written from output index `first`. Stretch keeps all of `out_len`; centre-crop scales
/// past it and skips the margin; letterbox scales to fit and leaves a border.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Axis {
    scaled: usize,
    skip: usize,
    count: usize,
    first: usize,
}

impl Axis {
    /// `in_len` -> `out_len` along this axis; `other_in` / `other_out` are the other
    /// axis's lengths (aspect-preserving modes scale both by one factor).
    fn plan(
        spec: &InputSpec,
        in_len: usize,
        out_len: usize,
        other_in: usize,
        other_out: usize,
    ) -> Axis {
        let stretch = Axis {
            scaled: out_len,
            skip: 0,
            count: out_len,
            first: 0,
        };
        match spec.resize {
            Resize::Stretch => stretch,
            Resize::CentreCrop => {
                // The image is scaled until the input box divided by crop_fraction fits
                // inside it (for a square input: its short side becomes
                // floor(side / fraction), torchvision's Resize), then the centre is cut.
                let f = f64::from(spec.crop_fraction.unwrap_or(1.0));
                let target = |o: usize| ((o as f64 / f) + 1e-9).floor().max(o as f64);
                let (t, t_other) = (target(out_len), target(other_out));
                let scaled = if t / in_len as f64 >= t_other / other_in as f64 {
                    t as usize
                } else {
                    // The other axis decides the scale; this one follows it, truncated as
                    // torchvision truncates the long side.
                    (t_other * in_len as f64 / other_in as f64) as usize
                };
                let scaled = scaled.max(out_len);
                // Python's round (half to even) on the margin, as torchvision's CenterCrop.
                let skip = ((scaled - out_len) as f64 / 2.0).round_ties_even() as usize;
                Axis {
                    scaled,
                    skip,
                    count: out_len,
                    first: 0,
                }
            }
            Resize::Letterbox => {
                let scale =
                    (out_len as f64 / in_len as f64).min(other_out as f64 / other_in as f64);
                let scaled = ((in_len as f64 * scale).round() as usize).clamp(1, out_len);
                Axis {
                    scaled,
                    skip: 0,
                    count: scaled,
                    first: (out_len - scaled) / 2,
                }
            }
        }
    }

    /// Whether this axis is a plain copy of `in_len` samples (every filter's weights at
    /// scale 1 are a single 1 on the sample itself).
    fn is_identity(&self, in_len: usize) -> bool {
        self.scaled == in_len && self.skip == 0 && self.count == in_len && self.first == 0
    }
}

/// Puts the `count`-sized content planes at their offsets in `ow` x `oh` planes filled
/// with `pad`; content that already fills the input is returned as it is.
fn place(
    content: Vec<f32>,
    planes: usize,
    ax: &Axis,
    ay: &Axis,
    ow: usize,
    oh: usize,
    pad: f32,
) -> Vec<f32> {
    if (ax.count, ay.count) == (ow, oh) {
        return content;
    }
    let (cw, ch) = (ax.count, ay.count);
    let mut out = vec![pad; planes * ow * oh];
    for c in 0..planes {
        for y in 0..ch {
            let src = &content[(c * ch + y) * cw..][..cw];
            out[(c * oh + ay.first + y) * ow + ax.first..][..cw].copy_from_slice(src);
        }
    }
    out
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
    /// Taps of the outputs `axis.skip..axis.skip + axis.count` of a resize from `in_len`
    /// to `axis.scaled` samples, with PIL's coefficients: the filter is centred on each
    /// output's centre in source coordinates and widened by the downscale factor.
    fn new(filter: Filter, in_len: usize, axis: &Axis) -> Taps {
        let scale = in_len as f64 / axis.scaled as f64;
        let outputs = axis.skip..axis.skip + axis.count;
        let spans: Vec<(usize, Vec<f64>)> = if filter == Filter::Nearest {
            // PIL's nearest resize samples floor of the output centre.
            outputs
                .map(|i| {
                    let x = (((i as f64 + 0.5) * scale) as usize).min(in_len - 1);
                    (x, vec![1.0])
                })
                .collect()
        } else {
            let filterscale = scale.max(1.0);
            let support = support(filter) * filterscale;
            outputs
                .map(|i| {
                    let center = (i as f64 + 0.5) * scale;
                    let lo = ((center - support + 0.5).floor().max(0.0) as usize).min(in_len - 1);
                    let hi = ((center + support + 0.5).floor() as usize).clamp(lo + 1, in_len);
                    let mut ws: Vec<f64> = (lo..hi)
                        .map(|x| weight(filter, (x as f64 - center + 0.5) / filterscale))
                        .collect();
                    let total: f64 = ws.iter().sum();
                    if total != 0.0 {
                        ws.iter_mut().for_each(|w| *w /= total);
                    }
                    (lo, ws)
                })
                .collect()
        };
        let n = spans.iter().map(|(_, ws)| ws.len()).max().unwrap_or(1);
        let mut start = Vec::with_capacity(spans.len());
        let mut weights = vec![0.0f32; spans.len() * n];
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

/// Half-width of a filter's kernel, in source samples at scale 1.
fn support(filter: Filter) -> f64 {
    match filter {
        Filter::Nearest | Filter::Box => 0.5,
        Filter::Bilinear | Filter::Hamming => 1.0,
        Filter::Bicubic => 2.0,
        Filter::Lanczos => 3.0,
    }
}

/// A filter's kernel at distance `x` (PIL's definitions; bicubic with a = -0.5).
fn weight(filter: Filter, x: f64) -> f64 {
    let sinc = |x: f64| {
        if x == 0.0 {
            1.0
        } else {
            let p = std::f64::consts::PI * x;
            p.sin() / p
        }
    };
    let ax = x.abs();
    match filter {
        Filter::Nearest | Filter::Box => {
            if x > -0.5 && x <= 0.5 {
                1.0
            } else {
                0.0
            }
        }
        Filter::Bilinear => (1.0 - ax).max(0.0),
        Filter::Hamming => {
            if ax >= 1.0 {
                0.0
            } else {
                sinc(x) * (0.54 + 0.46 * (std::f64::consts::PI * x).cos())
            }
        }
        Filter::Bicubic => {
            const A: f64 = -0.5;
            if ax < 1.0 {
                ((A + 2.0) * ax - (A + 3.0)) * ax * ax + 1.0
            } else if ax < 2.0 {
                (((ax - 5.0) * ax + 8.0) * ax - 4.0) * A
            } else {
                0.0
            }
        }
        Filter::Lanczos => {
            if ax < 3.0 {
                sinc(x) * sinc(x / 3.0)
            } else {
                0.0
            }
        }
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

/// `(x * gain - mean) / std`: `gain` takes intensities in [0, 1] to the model's range
/// (multiplying by 1 is exact, so the 0-1 range keeps its bit-for-bit results).
fn normalise(kernel: Kernel, src: &[f32], out: &mut [f32], gain: f32, mean: f32, std: f32) {
    #[cfg(target_arch = "aarch64")]
    if kernel == Kernel::Neon {
        // SAFETY: as in `horizontal`.
        unsafe { neon::normalise(src, out, gain, mean, std) };
        return;
    }
    let _ = kernel;
    // Division, not multiplication by 1/std: matches the reference pipelines bit for bit.
    for (o, s) in out.iter_mut().zip(src) {
        *o = (s * gain - mean) / std;
    }
}

fn normalise_interleave3(
    kernel: Kernel,
    planes: [&[f32]; 3],
    out: &mut [f32],
    gain: f32,
    mean: [f32; 3],
    std: [f32; 3],
) {
    #[cfg(target_arch = "aarch64")]
    if kernel == Kernel::Neon {
        // SAFETY: as in `horizontal`.
        unsafe { neon::normalise_interleave3(planes, out, gain, mean, std) };
        return;
    }
    let _ = kernel;
    for (i, px) in out.chunks_exact_mut(3).enumerate() {
        for c in 0..3 {
            px[c] = (planes[c][i] * gain - mean[c]) / std[c];
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
    pub(super) unsafe fn normalise(src: &[f32], out: &mut [f32], gain: f32, mean: f32, std: f32) {
        let len = src.len().min(out.len());
        let l4 = len & !3;
        let (g, m, s) = (vdupq_n_f32(gain), vdupq_n_f32(mean), vdupq_n_f32(std));
        let mut i = 0;
        while i < l4 {
            let v = vmulq_f32(vld1q_f32(src.as_ptr().add(i)), g);
            vst1q_f32(out.as_mut_ptr().add(i), vdivq_f32(vsubq_f32(v, m), s));
            i += 4;
        }
        while i < len {
            out[i] = (src[i] * gain - mean) / std;
            i += 1;
        }
    }

    #[target_feature(enable = "neon")]
    pub(super) unsafe fn normalise_interleave3(
        planes: [&[f32]; 3],
        out: &mut [f32],
        gain: f32,
        mean: [f32; 3],
        std: [f32; 3],
    ) {
        let len = planes[0].len().min(out.len() / 3);
        let l4 = len & !3;
        let g = vdupq_n_f32(gain);
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
                vdivq_f32(
                    vsubq_f32(vmulq_f32(vld1q_f32(planes[0].as_ptr().add(i)), g), m[0]),
                    s[0],
                ),
                vdivq_f32(
                    vsubq_f32(vmulq_f32(vld1q_f32(planes[1].as_ptr().add(i)), g), m[1]),
                    s[1],
                ),
                vdivq_f32(
                    vsubq_f32(vmulq_f32(vld1q_f32(planes[2].as_ptr().add(i)), g), m[2]),
                    s[2],
                ),
            );
            vst3q_f32(out.as_mut_ptr().add(3 * i), v);
            i += 4;
        }
        while i < len {
            for c in 0..3 {
                out[3 * i + c] = (planes[c][i] * gain - mean[c]) / std[c];
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ImageInfo, SourceFormat};

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
        InputSpec::stretched(
            "input",
            layout,
            h,
            w,
            if c == 1 { Colour::Grey } else { Colour::Rgb },
            vec![0.0; c as usize],
            vec![1.0; c as usize],
        )
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

    /// Runs `s` with the filter, resize mode, range and colour order given.
    fn with(mut s: InputSpec, f: impl FnOnce(&mut InputSpec)) -> InputSpec {
        f(&mut s);
        s
    }

    #[test]
    fn every_filter_keeps_a_constant_and_copies_at_scale_one() {
        use edgedx_bundle::Filter::*;
        let mut rng = Rng(11);
        let data: Vec<f32> = (0..9 * 6).map(|_| rng.unit()).collect();
        let img = image(9, 6, 1, data.clone());
        let flat = image(9, 6, 1, vec![0.625; 54]);
        for filter in [Nearest, Box, Bilinear, Hamming, Bicubic, Lanczos] {
            let s = with(spec(9, 6, 1, Layout::Nchw), |s| s.filter = filter);
            assert_eq!(run(&img, &s, Kernel::Scalar), data, "{filter:?}");
            for (ow, oh) in [(4, 3), (20, 13), (9, 2), (1, 1)] {
                let s = with(spec(ow, oh, 1, Layout::Nchw), |s| s.filter = filter);
                for k in [Kernel::Scalar, best_kernel()] {
                    let out = run(&flat, &s, k);
                    assert!(
                        out.iter().all(|v| (v - 0.625).abs() < 1e-5),
                        "{filter:?} {ow}x{oh}: {out:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn nearest_picks_the_sample_under_each_output_centre() {
        let img = image(6, 1, 1, (0..6).map(|x| x as f32 / 8.0).collect());
        let s = with(spec(3, 1, 1, Layout::Nchw), |s| {
            s.filter = edgedx_bundle::Filter::Nearest
        });
        // Centres 1, 3, 5 in source samples: floor((i + 0.5) * 2).
        assert_eq!(
            run(&img, &s, Kernel::Scalar),
            [1.0 / 8.0, 3.0 / 8.0, 5.0 / 8.0]
        );
    }

    #[test]
    fn centre_crop_cuts_the_middle_of_the_resized_image() {
        // 12 x 8 to a 4 x 4 input with crop_fraction 0.5: the short side is scaled to 8
        // (no scaling), the long side stays 12, and the centre 4 x 4 is kept: columns
        // 4..8, rows 2..6, exactly.
        let data: Vec<f32> = (0..12 * 8).map(|i| i as f32 / 96.0).collect();
        let img = image(12, 8, 1, data.clone());
        let s = with(spec(4, 4, 1, Layout::Nchw), |s| {
            s.resize = Resize::CentreCrop;
            s.crop_fraction = Some(0.5);
        });
        let expected: Vec<f32> = (2..6)
            .flat_map(|y| (4..8).map(move |x| (y * 12 + x) as f32 / 96.0))
            .collect();
        for k in [Kernel::Scalar, best_kernel()] {
            let out = run(&img, &s, k);
            for (a, b) in out.iter().zip(&expected) {
                assert!((a - b).abs() < 1e-6, "{out:?}");
            }
        }
        // torchvision's arithmetic: Resize(256) of 640 x 480 makes 341 x 256, CenterCrop(224)
        // starts at round(58.5) = 58 (half to even) and round(16) = 16.
        let s = with(spec(224, 224, 1, Layout::Nchw), |s| {
            s.resize = Resize::CentreCrop;
            s.crop_fraction = Some(0.875);
        });
        assert_eq!(
            (
                Axis::plan(&s, 640, 224, 480, 224),
                Axis::plan(&s, 480, 224, 640, 224)
            ),
            (
                Axis {
                    scaled: 341,
                    skip: 58,
                    count: 224,
                    first: 0
                },
                Axis {
                    scaled: 256,
                    skip: 16,
                    count: 224,
                    first: 0
                }
            )
        );
    }

    #[test]
    fn letterbox_centres_the_image_and_pads_the_rest() {
        // 8 x 4 into 6 x 6: scaled to 6 x 3, placed on rows 1..4; rows 0, 4, 5 are padding.
        let img = image(8, 4, 1, (0..32).map(|i| (i % 8) as f32 / 8.0).collect());
        let s = with(spec(6, 6, 1, Layout::Nchw), |s| {
            s.resize = Resize::Letterbox;
            s.pad = Some(0.25);
            s.mean = vec![0.5];
            s.std = vec![0.5];
        });
        let stretched = run(
            &img,
            &with(spec(6, 3, 1, Layout::Nchw), |s| {
                s.mean = vec![0.5];
                s.std = vec![0.5];
            }),
            Kernel::Scalar,
        );
        for k in [Kernel::Scalar, best_kernel()] {
            let out = run(&img, &s, k);
            for (y, row) in out.chunks_exact(6).enumerate() {
                if (1..4).contains(&y) {
                    for (a, b) in row.iter().zip(&stretched[(y - 1) * 6..][..6]) {
                        assert!((a - b).abs() < 1e-6, "row {y}: {row:?}");
                    }
                } else {
                    assert_eq!(row, [-0.5; 6], "row {y} is padding, normalised");
                }
            }
        }
        assert_eq!(
            Axis::plan(&s, 4, 6, 8, 6),
            Axis {
                scaled: 3,
                skip: 0,
                count: 3,
                first: 1
            }
        );
    }

    #[test]
    fn byte_range_and_bgr_order() {
        let img = image(1, 1, 3, vec![1.0, 0.5, 0.25]);
        let s = with(spec(1, 1, 3, Layout::Nhwc), |s| {
            s.colour = Colour::Bgr;
            s.range = edgedx_bundle::Range::Byte;
            s.mean = vec![100.0, 0.0, 0.0];
            s.std = vec![1.0, 2.0, 5.0];
        });
        for k in [Kernel::Scalar, best_kernel()] {
            assert_eq!(run(&img, &s, k), [63.75 - 100.0, 63.75, 51.0]);
            let nchw = with(s.clone(), |s| s.layout = Layout::Nchw);
            assert_eq!(run(&img, &nchw, k), [63.75 - 100.0, 63.75, 51.0]);
        }
    }

    #[test]
    fn best_kernel_matches_scalar_in_every_mode() {
        use edgedx_bundle::{Filter, Range};
        let filters = [
            Filter::Nearest,
            Filter::Box,
            Filter::Bilinear,
            Filter::Hamming,
            Filter::Bicubic,
            Filter::Lanczos,
        ];
        let mut rng = Rng(0x5EED);
        let mut worst = 0.0f32;
        for case in 0..90 {
            let (w, h) = (1 + rng.below(70) as u32, 1 + rng.below(50) as u32);
            let (ow, oh) = (1 + rng.below(40) as u32, 1 + rng.below(40) as u32);
            let ic = if rng.below(2) == 0 { 1 } else { 3 };
            let img = image(
                w,
                h,
                ic,
                (0..w * h * u32::from(ic)).map(|_| rng.unit()).collect(),
            );
            let s = with(spec(ow, oh, 3, Layout::Nhwc), |s| {
                s.filter = filters[case % filters.len()];
                s.resize = [Resize::Stretch, Resize::CentreCrop, Resize::Letterbox][case % 3];
                s.crop_fraction = (s.resize == Resize::CentreCrop).then_some(0.875);
                s.pad = (s.resize == Resize::Letterbox).then_some(0.5);
                s.range = if case % 2 == 0 {
                    Range::Unit
                } else {
                    Range::Byte
                };
                s.colour = if case % 4 < 2 {
                    Colour::Rgb
                } else {
                    Colour::Bgr
                };
                s.layout = if case % 5 < 2 {
                    Layout::Nchw
                } else {
                    Layout::Nhwc
                };
                s.mean = vec![0.45, 0.5, 0.4];
                s.std = vec![0.22, 0.25, 0.2];
            });
            let a = run(&img, &s, Kernel::Scalar);
            let b = run(&img, &s, Kernel::Neon);
            let scale = s.range.gain();
            for (x, y) in a.iter().zip(&b) {
                assert!(x.is_finite(), "case {case}");
                worst = worst.max((x - y).abs() / scale);
            }
            assert!(worst <= 2e-5, "case {case}: {s:?} {w}x{h}: {worst}");
        }
    }

    #[test]
    fn kernel_name_is_known() {
        assert!(matches!(kernel_name(), "neon" | "scalar"));
        #[cfg(target_arch = "aarch64")]
        assert_eq!(kernel_name(), "neon");
    }
}
