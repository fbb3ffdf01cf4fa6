//! Depthwise products with the channels as the vector axis (channels last): the depthwise
//! family of the layers with short output rows (depthwise.rs `takes_channels_last` has the
//! measured rule: from rows of 28 positions down on every aarch64 core, of 13 on x86-64
//! with AVX-512 VNNI).
//!
//! The plane family (kernels/dw.rs) puts 16 output positions of one channel in a vector.
//! Late in a MobileNet or an EfficientNet the planes are 14 or 7 positions wide, so its
//! blocks of 16 are half empty there, and every channel pays for its own plane copy, its
//! stride phases and its call. Here a vector holds 16 channels of one position: those
//! networks' depthwise layers have 32 to 1152 channels, multiples of 16, so every lane
//! works at every image size, and a stride is only a longer step between positions.
//!
//! Layout ([`to_channels_last`]): the input as `[rows][cols][cp]` i8, padding included
//! (written by the caller with the zero point), `cp` the channels rounded up to [`LANES`].
//! For one output row of `cols` positions:
//!
//! `acc[ox · cp + c] = start[c] + Σ_t w[c][t] · src[ox · step + offsets[t] + c]`
//!
//! with `offsets[t]` the tap's place relative to the position's first read
//! (`(ky · dy · padded_cols + kx · dx) · cp`) and `step = stride · cp`.
//!
//! NEON (kernels/dwc_neon.rs): per run of taps, SMULL and SMLAL put the taps' products
//! of 8 channels into 16-bit lanes (twice per 16 channels), and SADDW adds them into the
//! four 32-bit sums; 3x3 weights stay in registers across a row. A lane holds a run's sum
//! when its channel's weight magnitudes in the run add up to at most 255 (128 · 255 fits
//! i16): [`Weights::new`] orders each group of 16 channels' taps so that runs are as long
//! as that allows in all 16 lanes (kernels/dw.rs `schedule_lanes`; two taps always do
//! unless both weigh -128). It refuses a weight outside i8 (an asymmetric u8 weight less
//! its zero point), which keeps the plane family.
//!
//! Cores with the dot product (Cortex-A55 and A76) take the family's [`Quads`] instead:
//! four taps of a kernel row per SDOT, 16 multiply-adds per instruction, on the image
//! expanded once per layer so that each position holds its four taps side by side; x86-64
//! hosts with AVX-512 VNNI take them too, 64 per VPDPBUSD (kernels/dwc_x86.rs).
//!
//! [`from_channels_last`] writes the requantized `[positions][cp]` bytes back as channel
//! rows. Both copies go through 16 x 16 byte transposes (NEON, SSE2).

/// Channels per vector.
pub(crate) const LANES: usize = 16;

/// A layer's tap offsets in each channel group's order (`[group][i]`, [`Weights::arrange`]),
/// with the largest: every group's are the same offsets in another order.
#[derive(Debug)]
pub(crate) struct Arranged {
    offsets: Vec<usize>,
    reach: usize,
    /// The layer's taps, which `offsets` repeats per group.
    taps: usize,
}

impl Arranged {
    /// The offsets, `[group][i]`.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub(crate) fn offsets(&self) -> &[usize] {
        &self.offsets
    }
}

/// One layer's weights packed for the channels-last kernels, with each channel's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Weights {
    taps: usize,
    /// Per group of [`LANES`] channels, its taps in the order its kernel sums them
    /// (`dw::schedule_lanes`: runs whose products share 16-bit lanes), `[group][i]` a tap.
    order: Vec<usize>,
    /// Per group of channels, the taps per run of its order.
    runs: Vec<usize>,
    /// `[channel group][i][LANES]`: the group's weights of tap `order[group][i]`; the last
    /// group's missing channels are zero.
    packed: Vec<i8>,
    /// Per channel, padded with zeros to whole groups.
    starts: Vec<i32>,
}

impl Weights {
    /// From `channels × taps` weights (tap-major within a channel) and each channel's start;
    /// `None` when a weight is outside i8 (see the module doc).
    pub(crate) fn new(
        weights: &[i16],
        channels: usize,
        taps: usize,
        starts: &[i32],
    ) -> Option<Weights> {
        if taps == 0
            || weights.len() != channels * taps
            || starts.len() != channels
            || weights.iter().any(|w| !(-128..=127).contains(w))
        {
            return None;
        }
        let cp = channels.next_multiple_of(LANES);
        let weight = |c: usize, t: usize| {
            if c < channels {
                weights[c * taps + t]
            } else {
                0
            }
        };
        let (mut order, mut runs) = (Vec::with_capacity(cp / LANES * taps), vec![]);
        let mut packed = vec![0i8; cp * taps];
        for group in 0..cp / LANES {
            let first = group * LANES;
            let (own, run) = super::dw::schedule_lanes(taps, LANES, |lane, t| {
                u32::from(weight(first + lane, t).unsigned_abs())
            });
            for (i, &t) in own.iter().enumerate() {
                for lane in 0..LANES {
                    packed[(group * taps + i) * LANES + lane] = weight(first + lane, t) as i8;
                }
            }
            order.extend(own);
            runs.push(run);
        }
        let mut padded = starts.to_vec();
        padded.resize(cp, 0);
        Some(Weights {
            taps,
            order,
            runs,
            packed,
            starts: padded,
        })
    }

    /// The layer's tap offsets (tap t at `offsets[t]`) in each channel group's order, as
    /// [`Weights::run`] takes them. Made once per layer and evaluation.
    pub(crate) fn arrange(&self, offsets: &[usize]) -> Arranged {
        Arranged {
            offsets: self.order.iter().map(|&t| offsets[t]).collect(),
            reach: offsets.iter().max().copied().unwrap_or(0),
            taps: offsets.len(),
        }
    }

    /// Per group of channels, the taps per run of its order.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub(crate) fn runs(&self) -> &[usize] {
        &self.runs
    }

    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub(crate) fn taps(&self) -> usize {
        self.taps
    }

    /// Channels rounded up to whole groups of [`LANES`]: the layout's innermost axis.
    pub(crate) fn padded_channels(&self) -> usize {
        self.starts.len()
    }

    /// The packed weights and the padded starts, for the ISA kernels.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub(crate) fn raw(&self) -> (&[i8], &[i32]) {
        (&self.packed, &self.starts)
    }

    /// Refuses operands the kernels would read or write out of bounds.
    fn check(
        &self,
        src: &[i8],
        offsets: &Arranged,
        step: usize,
        cols: usize,
        acc: &[i32],
    ) -> Result<(), String> {
        let cp = self.padded_channels();
        if offsets.taps != self.taps || offsets.offsets.len() != self.order.len() {
            return Err(format!(
                "{} offsets of {} taps arranged for a layer of {} taps in {} groups",
                offsets.offsets.len(),
                offsets.taps,
                self.taps,
                cp / LANES
            ));
        }
        // Every group's offsets are the layer's, whose largest `reach` is.
        check_row(
            src,
            acc,
            (&[offsets.reach], 1, "largest tap"),
            (step, cols),
            (cp, cp),
        )
    }

    /// One output row's sums (see the module doc), on this CPU's kernel; `offsets` are the
    /// taps' as [`Weights::arrange`] orders them.
    pub(crate) fn run(
        &self,
        src: &[i8],
        offsets: &Arranged,
        step: usize,
        cols: usize,
        acc: &mut [i32],
    ) -> Result<(), String> {
        self.check(src, offsets, step, cols, acc)?;
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is part of aarch64; `check` holds the lengths the kernel reads and
        // writes.
        unsafe {
            super::dwc_neon::run(self, src, offsets, step, cols, acc)
        };
        #[cfg(not(target_arch = "aarch64"))]
        self.run_scalar(src, offsets, step, cols, acc);
        Ok(())
    }

    /// The scalar reference: what every ISA's kernel must compute.
    #[cfg_attr(all(target_arch = "aarch64", not(test)), allow(dead_code))]
    pub(crate) fn run_scalar(
        &self,
        src: &[i8],
        offsets: &Arranged,
        step: usize,
        cols: usize,
        acc: &mut [i32],
    ) {
        let cp = self.padded_channels();
        for (ox, sums) in acc.chunks_exact_mut(cp).take(cols).enumerate() {
            for (c, sum) in sums.iter_mut().enumerate() {
                let (group, lane) = (c / LANES, c % LANES);
                let weights = &self.packed[group * self.taps * LANES..];
                let offsets = &offsets.offsets[group * self.taps..][..self.taps];
                *sum = offsets
                    .iter()
                    .enumerate()
                    .fold(self.starts[c], |s, (i, &at)| {
                        let w = i32::from(weights[i * LANES + lane]);
                        s.wrapping_add(w * i32::from(src[ox * step + at + c]))
                    });
            }
        }
    }

    /// The kernel [`Weights::run`] takes on this CPU.
    pub(crate) fn kernel_name() -> &'static str {
        if cfg!(target_arch = "aarch64") {
            "edgedx_dwc_neon_16"
        } else {
            "edgedx_dwc_scalar"
        }
    }
}

/// Which columns of a channels-last image [`Quads::expand`] keeps as positions, and how
/// far apart their taps are: position j holds, per channel, the image's bytes at columns
/// `j · step + i · dilation` for i in 0..4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spacing {
    dilation: usize,
    step: usize,
}

impl Spacing {
    /// For a layer of column stride `stride` and dilation `dilation`: a position every
    /// gcd(stride, 4 · dilation) columns. Every quad of every output position starts on
    /// one (output position ox's quad qx at column `ox · stride + 4 · qx · dilation`), so a
    /// stride-2 layer's expansion is half the image's columns, not all of them.
    pub(crate) fn of(stride: usize, dilation: usize) -> Spacing {
        Spacing {
            dilation,
            step: super::gcd(stride, 4 * dilation),
        }
    }

    /// Columns from one position to the next.
    pub(crate) fn step(&self) -> usize {
        self.step
    }
}

/// One layer's weights for the channels-last kernel of cores with the dot product
/// (Cortex-A55 and A76: the RK3588 and the Raspberry Pi 5; AVX-512 VNNI): taps in quads of
/// four, each along a kernel row (the last quad of a row padded with zero weights) or,
/// for a kernel of four rows or more with one column past its last whole four (5x5), down
/// that column ([`Quad::of`]).
///
/// SDOT adds to each 32-bit lane the products of four bytes with four bytes. For it a
/// channel's four taps must lie side by side, so the channels-last image is expanded once
/// per layer ([`Quads::expand`]): position j of an expanded row holds, per channel, the
/// bytes at x, x + dx, x + 2dx and x + 3dx of the image's row, x = j · s for the
/// expansion's column step s ([`Spacing`]: 1, or 2 for a stride-2 layer); when the layer
/// has quads down, the row goes on with the same positions' bytes at rows r, r + dy,
/// r + 2dy and r + 3dy of column x. Every quad of every output position is then 64 bytes,
/// 16 channels by 4 taps, read as they lie, against 64 bytes of weights laid out the same
/// way: 16 multiply-adds per instruction, against two for the SMULL form ([`Weights`]).
/// Any i8 weight works (the sums are 32-bit throughout).
///
/// On aarch64 ([`Quads::new`]) a 5x5 kernel takes 7 quads so (five across its first four
/// columns, one down the fifth column's first four rows, one across for its last tap)
/// where quads across alone take 10, the products of 40 taps for 25: on cortex-a76 the
/// qformats network's 5x5 layer was more than a tenth of its instructions.
///
/// `acc[ox · cp + c] = start[c] + Σ_q Σ_i w[c][q][i] · e[ox · step + offsets[q] + 4c + i]`
///
/// for the expanded image `e` from an output row's first read, with `offsets[q]` the
/// quad's place ([`Quads::offsets`]) and `step = stride / s · cp · 4`; channel c of group g
/// is byte `64g + 4 · (c % 16)` of a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Quads {
    quads: Vec<Quad>,
    /// `[channel group][quad][LANES][4]`; missing channels and taps are zero.
    packed: Vec<i8>,
    /// Per channel, padded with zeros to whole groups.
    starts: Vec<i32>,
    /// Per channel (padded), the sum of its weights: the x86 kernel's correction for
    /// reading the inputs as unsigned.
    weight_sums: Vec<i32>,
}

/// Four taps of a kernel from tap `(ky, kx)`: along its row, or down its column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Quad {
    down: bool,
    ky: usize,
    kx: usize,
}

impl Quad {
    /// Tap i of the quad (it may lie past the kernel: a zero weight).
    fn tap(&self, i: usize) -> (usize, usize) {
        if self.down {
            (self.ky + i, self.kx)
        } else {
            (self.ky, self.kx + i)
        }
    }

    /// The quads of a `kh x kw` kernel: across each row in fours; but when the kernel has
    /// four rows or more and one column past its last whole four (5x5, 9x9), that column
    /// goes down in fours, and the rows left below those go across. Every quad starts at a
    /// column that is a multiple of four, where the expansion has a position whatever the
    /// stride ([`Spacing`]). (Two or three columns past the fours would save fewer quads,
    /// and their quads down would start between positions at stride 2.)
    fn of([kh, kw]: [usize; 2], down: bool) -> Vec<Quad> {
        let across = |ky, kx| Quad {
            down: false,
            ky,
            kx,
        };
        let whole = kw / 4 * 4;
        if !down || kh < 4 || kw != whole + 1 {
            let per_row = kw.div_ceil(4);
            return (0..kh * per_row)
                .map(|q| across(q / per_row, q % per_row * 4))
                .collect();
        }
        let deep = kh / 4 * 4;
        let mut quads: Vec<Quad> = (0..kh)
            .flat_map(|ky| (0..whole).step_by(4).map(move |kx| across(ky, kx)))
            .collect();
        let down = |ky| Quad {
            down: true,
            ky,
            kx: whole,
        };
        quads.extend((0..deep).step_by(4).map(down));
        quads.extend((deep..kh).map(|ky| across(ky, whole)));
        quads
    }
}

impl Quads {
    /// Whether this CPU has the family's quad kernel: SDOT (Cortex-A55, A76) or AVX-512
    /// VNNI. Elsewhere [`Quads::run`] is the scalar reference.
    pub(crate) fn available() -> bool {
        #[cfg(target_arch = "aarch64")]
        return super::dot::available();
        #[cfg(target_arch = "x86_64")]
        return super::dwc_x86::available();
        #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
        false
    }

    /// From `channels × kh · kw` weights (row-major taps within a channel) and each
    /// channel's start; `None` for a weight outside i8. Quads go down a 5x5 kernel's fifth
    /// column on aarch64 only: there they take 7 quads for 10 (SDOT and loads a third
    /// fewer; the qformats network's 5x5 layer 92 K -> 71 K instructions on cortex-a76,
    /// the expansion 13 K -> 23 K), while the AVX-512 VNNI host's 5x5 layers, bound by the
    /// expansion's bytes, took 10-40 % longer with the rows' second halves (Lite0's nine,
    /// `edgedx-bench profile --nodes`).
    pub(crate) fn new(
        weights: &[i16],
        channels: usize,
        kernel: [usize; 2],
        starts: &[i32],
    ) -> Option<Quads> {
        Quads::with_layout(
            weights,
            channels,
            kernel,
            starts,
            cfg!(target_arch = "aarch64"),
        )
    }

    /// [`Quads::new`] with quads down a kernel column where [`Quad::of`] takes them
    /// (`down`), or across only.
    pub(crate) fn with_layout(
        weights: &[i16],
        channels: usize,
        [kh, kw]: [usize; 2],
        starts: &[i32],
        down: bool,
    ) -> Option<Quads> {
        let taps = kh * kw;
        if taps == 0 || weights.len() != channels * taps || starts.len() != channels {
            return None;
        }
        if weights.iter().any(|&w| i8::try_from(w).is_err()) {
            return None;
        }
        let layout = Quad::of([kh, kw], down);
        let quads = layout.len();
        let cp = channels.next_multiple_of(LANES);
        let mut packed = vec![0i8; cp * quads * 4];
        for (c, row) in weights.chunks_exact(taps).enumerate() {
            let (group, lane) = (c / LANES, c % LANES);
            for (q, quad) in layout.iter().enumerate() {
                for i in 0..4 {
                    let (ky, kx) = quad.tap(i);
                    if ky < kh && kx < kw {
                        packed[((group * quads + q) * LANES + lane) * 4 + i] =
                            row[ky * kw + kx] as i8;
                    }
                }
            }
        }
        let mut padded = starts.to_vec();
        padded.resize(cp, 0);
        let mut weight_sums = vec![0i32; cp];
        for (c, row) in weights.chunks_exact(taps).enumerate() {
            weight_sums[c] = row.iter().map(|&w| i32::from(w)).sum();
        }
        Some(Quads {
            quads: layout,
            packed,
            starts: padded,
            weight_sums,
        })
    }

    /// Channels rounded up to whole groups of [`LANES`].
    pub(crate) fn padded_channels(&self) -> usize {
        self.starts.len()
    }

    /// The columns a row's quads reach from an output position's first read, in steps of
    /// the dilation: the image needs `(out_cols - 1) · stride + reach · dx + 1` columns
    /// (the taps past the kernel's width have zero weights but are read, and a quad
    /// down's column must be a position of the expansion, which has its three taps across
    /// inside the row).
    pub(crate) fn reach(&self) -> usize {
        self.quads.iter().map(|q| q.kx + 3).max().unwrap_or(0)
    }

    /// Whether some quad goes down a kernel column: each expanded row then has a second
    /// half, the same positions' taps down.
    fn has_down(&self) -> bool {
        self.quads.iter().any(|q| q.down)
    }

    /// Bytes per row of an image expanded to `ecols` positions per row.
    pub(crate) fn row_bytes(&self, ecols: usize) -> usize {
        let halves = if self.has_down() { 2 } else { 1 };
        halves * ecols * self.padded_channels() * 4
    }

    /// Where each quad's bytes start from an output position's first read in an image
    /// expanded with `spacing` to `ecols` positions per row, `dy` the vertical dilation
    /// (see the type's doc): row `ky · dy`, position `kx · dx / s` (a whole one: `kx` is a
    /// multiple of four), in the row's second half for a quad down.
    pub(crate) fn offsets(&self, ecols: usize, dy: usize, spacing: Spacing) -> Vec<usize> {
        let cp = self.padded_channels();
        let row = self.row_bytes(ecols);
        self.quads
            .iter()
            .map(|q| {
                let half = if q.down { ecols * cp * 4 } else { 0 };
                q.ky * dy * row + half + q.kx * spacing.dilation / spacing.step * cp * 4
            })
            .collect()
    }

    /// The packed weights and the padded starts, for the ISA kernels.
    pub(crate) fn raw(&self) -> (&[i8], &[i32]) {
        (&self.packed, &self.starts)
    }

    /// Each padded channel's sum of weights.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn weight_sums(&self) -> &[i32] {
        &self.weight_sums
    }

    /// The positions per row of an image of `cols` expanded with `spacing`: the columns
    /// `j · step` that have their four taps inside the row (`⌈(cols - 3 · dilation) / step⌉`;
    /// 0 where there is none).
    pub(crate) fn expanded_cols(cols: usize, spacing: Spacing) -> usize {
        let Spacing { dilation, step } = spacing;
        cols.checked_sub(3 * dilation)
            .filter(|_| dilation > 0 && step > 0)
            .map_or(0, |span| span.div_ceil(step))
    }

    /// Expands a channels-last image (`[rows][cols][cp]`) with `spacing`, `dy` the vertical
    /// dilation: returns the expanded image (`[rows][ecols][cp][4]`, each row followed by
    /// its half down when the layer has quads down: see the type's doc) and `ecols`, the
    /// positions per row ([`Quads::expanded_cols`]). The halves down of the last `3 · dy`
    /// rows, whose taps would pass the image's end, are zeros (no quad reads them).
    /// `out` is replaced (its allocation reused: a 5x5 layer's expansion may be past the
    /// size from which the allocator maps fresh pages for each one).
    pub(crate) fn expand(
        &self,
        image: &[i8],
        (rows, cols, cp): (usize, usize, usize),
        spacing: Spacing,
        dy: usize,
        out: &mut Vec<i8>,
    ) -> Result<usize, String> {
        let ecols = Self::expanded_cols(cols, spacing);
        if image.len() != rows * cols * cp
            || cp != self.padded_channels()
            || ecols == 0
            || (self.has_down() && dy == 0)
        {
            return Err(format!(
                "an image of {} bytes as {rows} x {cols} x {cp}, dilation {} x {dy}, every {} \
                 columns",
                image.len(),
                spacing.dilation,
                spacing.step
            ));
        }
        let (half, pitch) = (ecols * cp * 4, self.row_bytes(ecols));
        let across = (spacing.step, spacing.dilation * cp);
        let down = (spacing.step, dy * cols * cp);
        // Rows whose four taps down are inside the image.
        let deep = if self.has_down() {
            rows.saturating_sub(3 * dy)
        } else {
            0
        };
        out.clear();
        #[cfg(any(target_arch = "aarch64", target_arch = "x86_64"))]
        {
            // Not zeroed first: the copies write every byte but the halves down of the last
            // rows, zeroed after them.
            out.reserve(rows * pitch);
            let dst = out.as_mut_ptr();
            // SAFETY: NEON and SSE2 are part of their architectures; the lengths are
            // checked above, `out` has room for `rows` rows of `pitch` bytes: the copies
            // write the first `half` of each and the second of the first `deep`, the rest
            // is zeroed, and every tap they read is inside the image (`expand_into`).
            unsafe {
                expand_into::<Vector>(image, (rows, cols, cp), across, ecols, (dst, pitch));
                if pitch > half {
                    let below = dst.add(half);
                    expand_into::<Vector>(image, (deep, cols, cp), down, ecols, (below, pitch));
                    for r in deep..rows {
                        below.add(r * pitch).write_bytes(0, half);
                    }
                }
                out.set_len(rows * pitch);
            }
        }
        #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
        {
            out.resize(rows * pitch, 0);
            let halves = [(0, rows, across), (half, deep, down)];
            for (from, rows, (step, tap)) in halves.into_iter().take(pitch / half) {
                for r in 0..rows {
                    for j in 0..ecols {
                        let at = (r * cols + j * step) * cp;
                        for c in 0..cp {
                            for i in 0..4 {
                                out[r * pitch + from + (j * cp + c) * 4 + i] =
                                    image[at + i * tap + c];
                            }
                        }
                    }
                }
            }
        }
        Ok(ecols)
    }

    /// Refuses operands the kernels would read or write out of bounds.
    fn check(
        &self,
        src: &[i8],
        offsets: &[usize],
        step: usize,
        cols: usize,
        acc: &[i32],
    ) -> Result<(), String> {
        let (cp, quads) = (self.padded_channels(), self.quads.len());
        check_row(
            src,
            acc,
            (offsets, quads, "quad"),
            (step, cols),
            (cp, 4 * cp),
        )
    }

    /// One output row's sums (see the type's doc), on this CPU's kernel: SDOT where the
    /// CPU has it, else the scalar reference.
    pub(crate) fn run(
        &self,
        src: &[i8],
        offsets: &[usize],
        step: usize,
        cols: usize,
        acc: &mut [i32],
    ) -> Result<(), String> {
        self.check(src, offsets, step, cols, acc)?;
        #[cfg(target_arch = "aarch64")]
        if super::dot::available() {
            // SAFETY: the CPU has the dot product; `check` holds the lengths the kernel
            // reads and writes.
            unsafe { super::dwc_dot::run(self, src, offsets, step, cols, acc) };
            return Ok(());
        }
        #[cfg(target_arch = "x86_64")]
        if super::dwc_x86::available() {
            // SAFETY: the CPU has AVX-512 F and VNNI; `check` holds the lengths the kernel
            // reads and writes.
            unsafe { super::dwc_x86::run(self, src, offsets, step, cols, acc) };
            return Ok(());
        }
        self.run_scalar(src, offsets, step, cols, acc);
        Ok(())
    }

    /// The scalar reference: what every ISA's kernel must compute.
    pub(crate) fn run_scalar(
        &self,
        src: &[i8],
        offsets: &[usize],
        step: usize,
        cols: usize,
        acc: &mut [i32],
    ) {
        let cp = self.padded_channels();
        let quads = self.quads.len();
        for (ox, sums) in acc.chunks_exact_mut(cp).take(cols).enumerate() {
            for (c, sum) in sums.iter_mut().enumerate() {
                let (group, lane) = (c / LANES, c % LANES);
                let mut s = self.starts[c];
                for (q, &at) in offsets.iter().enumerate() {
                    let w = &self.packed[((group * quads + q) * LANES + lane) * 4..][..4];
                    let x = &src[ox * step + at + 4 * c..][..4];
                    for (&w, &x) in w.iter().zip(x) {
                        s = s.wrapping_add(i32::from(w) * i32::from(x));
                    }
                }
                *sum = s;
            }
        }
    }

    /// The kernel [`Quads::run`] takes on this CPU.
    pub(crate) fn kernel_name() -> &'static str {
        match (Quads::available(), cfg!(target_arch = "x86_64")) {
            (true, true) => "edgedx_dwc_vnni_16",
            (true, false) => "edgedx_dwc_dot_16",
            (false, _) => "edgedx_dwc_quads_scalar",
        }
    }
}

/// What both kernels' `check` refuses: other than one offset per tap (or quad), other than
/// `cols` positions of `cp` sums in `acc`, or a position whose reads (`width` bytes from
/// each offset, positions `step` apart) pass the end of `src`.
fn check_row(
    src: &[i8],
    acc: &[i32],
    (offsets, expected, what): (&[usize], usize, &str),
    (step, cols): (usize, usize),
    (cp, width): (usize, usize),
) -> Result<(), String> {
    if offsets.len() != expected {
        return Err(format!(
            "{} {what} offsets for {expected} {what}s",
            offsets.len()
        ));
    }
    if acc.len() != cols * cp {
        return Err(format!(
            "{} sums for {cols} positions of {cp} channels",
            acc.len()
        ));
    }
    if cols == 0 {
        return Ok(());
    }
    let needed = (cols - 1) * step + offsets.iter().max().copied().unwrap_or(0) + width;
    if src.len() < needed {
        return Err(format!(
            "{} input bytes for {cols} positions needing {needed}",
            src.len()
        ));
    }
    Ok(())
}

/// Where the channels-last copy of an image puts it: `[rows][cols][cp]` with the image's
/// `height × width` positions from row `top` and column `left` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) cp: usize,
    pub(crate) cols: usize,
    pub(crate) top: usize,
    pub(crate) left: usize,
}

impl Frame {
    /// Where image position `(y, x)`'s channels start.
    fn at(&self, y: usize, x: usize) -> usize {
        ((self.top + y) * self.cols + self.left + x) * self.cp
    }

    /// Writes `pad` to every byte of `dst` (whole rows of the frame) outside the image's
    /// `height × width` positions: the bytes [`to_channels_last`] leaves as they are when
    /// the image has all `cp` channels.
    pub(crate) fn pad_outside(
        &self,
        dst: &mut [i8],
        (height, width): (usize, usize),
        pad: i8,
    ) -> Result<(), String> {
        let row = self.cols * self.cp;
        if row == 0
            || !dst.len().is_multiple_of(row)
            || self.top + height > dst.len() / row
            || self.left + width > self.cols
        {
            return Err(format!(
                "{height} x {width} positions in {} bytes as a frame {self:?}",
                dst.len()
            ));
        }
        let (above, rest) = dst.split_at_mut(self.top * row);
        above.fill(pad);
        let (image, below) = rest.split_at_mut(height * row);
        below.fill(pad);
        for line in image.chunks_exact_mut(row) {
            line[..self.left * self.cp].fill(pad);
            line[(self.left + width) * self.cp..].fill(pad);
        }
        Ok(())
    }
}

/// Copies `channels` planes of `height × width` values (`src`, channel after channel) into
/// the image positions of `dst` laid out as `frame`; the padding is left as it is.
pub(crate) fn to_channels_last(
    src: &[i8],
    (channels, height, width): (usize, usize, usize),
    frame: Frame,
    dst: &mut [i8],
) -> Result<(), String> {
    let n = height * width;
    if src.len() != channels * n || channels > frame.cp || frame.left + width > frame.cols {
        return Err(format!(
            "{channels} x {height} x {width} values from {} into a frame {frame:?}",
            src.len()
        ));
    }
    if n == 0 {
        return Ok(());
    }
    let last = frame.at(height - 1, width - 1) + frame.cp;
    if dst.len() < last {
        return Err(format!("a frame of {} bytes needing {last}", dst.len()));
    }
    // Each position's place, once per layer (every channel block uses it); a row at a
    // time, into a vector of its final length, which the compiler vectorises (a
    // `flat_map` collected took about 0.3 M of Lite0's instructions on qemu, and an
    // `extend` per row seven instructions per position on cortex-a76).
    let mut places = vec![0; n];
    for (y, row) in places.chunks_exact_mut(width).enumerate() {
        let (start, cp) = (frame.at(y, 0), frame.cp);
        for (x, place) in row.iter_mut().enumerate() {
            *place = start + x * cp;
        }
    }
    #[cfg(any(target_arch = "aarch64", target_arch = "x86_64"))]
    // SAFETY: NEON and SSE2 are part of their architectures; the lengths are checked
    // above: `src` holds `channels` rows of `n` and every place plus `cp` is inside `dst`.
    let done = unsafe {
        let (s, d) = (src.as_ptr() as *const u8, dst.as_mut_ptr() as *mut u8);
        transposed::<Vector>(
            (channels, n),
            |c, j| (s.add(c * n + j), n),
            |j, c, t| {
                // Sixteen positions of one image row are `cp` apart; a block across a row's
                // end takes each position's place.
                if places[j + 15] == places[j] + 15 * frame.cp {
                    store_rows(t, d.add(places[j] + c), frame.cp);
                } else {
                    for (k, v) in t.into_iter().enumerate() {
                        v.store(d.add(places[j + k] + c));
                    }
                }
            },
        )
    };
    #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
    let done = (0, 0);
    copy_rest(done, (channels, n), |c, j| {
        dst[places[j] + c] = src[c * n + j];
    });
    Ok(())
}

/// Copies the first `channels` of each of `positions` rows of `cp` bytes (`src`) into
/// `dst` as one row of `positions` bytes per channel.
pub(crate) fn from_channels_last(
    src: &[u8],
    cp: usize,
    (channels, positions): (usize, usize),
    dst: &mut [u8],
) -> Result<(), String> {
    if channels > cp || src.len() != positions * cp || dst.len() != channels * positions {
        return Err(format!(
            "{positions} positions of {channels} of {cp} channels from {} bytes into {}",
            src.len(),
            dst.len()
        ));
    }
    #[cfg(any(target_arch = "aarch64", target_arch = "x86_64"))]
    // SAFETY: NEON and SSE2 are part of their architectures; the lengths are checked
    // above: `src` holds `positions` rows of `cp`, `dst` `channels` rows of `positions`.
    let done = unsafe {
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        let (positions_done, channels_done) = transposed::<Vector>(
            (positions, channels),
            |j, c| (s.add(j * cp + c), cp),
            |c, j, t| store_rows(t, d.add(c * positions + j), positions),
        );
        (channels_done, positions_done)
    };
    #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
    let done = (0, 0);
    copy_rest(done, (channels, positions), |c, j| {
        dst[c * positions + j] = src[j * cp + c];
    });
    Ok(())
}

/// 16 bytes in a vector register, as the channel copies and the quads' expansion move
/// them; each ISA module implements it (kernels/dwc_neon.rs, kernels/dwc_x86.rs).
pub(super) trait Bytes16: Copy {
    /// # Safety
    /// 16 bytes at `p`.
    unsafe fn load(p: *const u8) -> Self;
    /// # Safety
    /// Room for 16 bytes at `p`.
    unsafe fn store(self, p: *mut u8);
    /// `out[k]` byte `j` is `rows[j]` byte `k`.
    fn transpose(rows: [Self; 16]) -> [Self; 16];
    /// Stores the four registers interleaved by bytes: byte `4i + t` is `taps[t]` byte `i`.
    ///
    /// # Safety
    /// Room for 64 bytes at `p`.
    unsafe fn store_interleaved(taps: [Self; 4], p: *mut u8);
}

/// This target's [`Bytes16`].
#[cfg(target_arch = "aarch64")]
type Vector = std::arch::aarch64::uint8x16_t;
#[cfg(target_arch = "x86_64")]
type Vector = std::arch::x86_64::__m128i;

/// A `rows × cols` byte matrix, transposed in 16 x 16 blocks: `rows_at(r, c)` gives the
/// place of row r's 16 bytes from column c and the distance to the next row's, and
/// `store(c, r, t)` takes the block's 16 transposed rows, `t[k]` column `c + k`'s 16 bytes
/// from row r. When a side is not a multiple of 16, its last block starts 16 before its
/// end and overlaps the one before it, rewriting some bytes with the same values (the
/// copies are out of place). Returns the rows and columns it covered: all of them, or none
/// when a side is shorter than a block.
///
/// # Safety
/// The 16 rows of 16 bytes `rows_at` gives for each block inside `rows × cols` are
/// readable.
#[cfg(any(target_arch = "aarch64", target_arch = "x86_64"))]
#[inline(always)]
unsafe fn transposed<V: Bytes16>(
    (rows, cols): (usize, usize),
    rows_at: impl Fn(usize, usize) -> (*const u8, usize),
    mut store: impl FnMut(usize, usize, [V; 16]),
) -> (usize, usize) {
    if rows < 16 || cols < 16 {
        return (0, 0);
    }
    let starts = |len: usize| {
        let last = (!len.is_multiple_of(16)).then_some(len - 16);
        (0..len / 16 * 16).step_by(16).chain(last)
    };
    for r0 in starts(rows) {
        for c0 in starts(cols) {
            let (mut p, pitch) = rows_at(r0, c0);
            let block = std::array::from_fn(|_| {
                // SAFETY: the caller's contract: the block's 16 rows are readable.
                let row = unsafe { V::load(p) };
                p = p.wrapping_add(pitch);
                row
            });
            store(c0, r0, V::transpose(block));
        }
    }
    (rows, cols)
}

/// Stores 16 rows of 16 bytes from `p` on, `pitch` bytes apart (a pointer stepped per
/// row: each place computed alone cost a multiply per store on cortex-a76).
///
/// # Safety
/// Room for each row's 16 bytes.
#[cfg(any(target_arch = "aarch64", target_arch = "x86_64"))]
#[inline(always)]
unsafe fn store_rows<V: Bytes16>(rows: [V; 16], mut p: *mut u8, pitch: usize) {
    for v in rows {
        // SAFETY: the caller's contract.
        unsafe { v.store(p) };
        p = p.wrapping_add(pitch);
    }
}

/// [`Quads::expand`]'s copy: per position and 16 channels, the four taps' loads stored
/// interleaved, for `rows` rows of the image into rows `pitch` bytes apart from `dst`.
/// Writes each row's first `ecols · cp · 4` bytes.
///
/// Position j's channel group g starts at byte `j · step · cp + g` of the image row and at
/// `4 · (j · cp + g)` of the expanded row, and its taps are `tap` bytes apart whatever j
/// and g are (`dilation · cp` along a row, `dy · cols · cp` down a column). With a step of
/// one, a row's first `ecols · cp` bytes are one run of 16-byte blocks, each expanded alone
/// (one loop per row, not one per position: qformats' 5x5 layer on cortex-a76 spent three
/// instructions on the loops for each one that copied); with a longer step, each
/// position's `cp` bytes are a run.
///
/// # Safety
/// `image` holds `rows × cols × cp` bytes, each position's three taps after it included
/// (`ecols` at most [`Quads::expanded_cols`] along a row; rows whose taps down are inside
/// the image), `dst` has room for `rows` rows of `pitch` bytes, `pitch` at least
/// `ecols × cp × 4`, and `cp` is a multiple of 16.
#[cfg(any(target_arch = "aarch64", target_arch = "x86_64"))]
unsafe fn expand_into<V: Bytes16>(
    image: &[i8],
    (rows, cols, cp): (usize, usize, usize),
    (step, tap): (usize, usize),
    ecols: usize,
    (dst, pitch): (*mut i8, usize),
) {
    let src = image.as_ptr() as *const u8;
    // Runs of whole blocks: their count, length and distance in the image row.
    let (runs, len, from_pitch) = match step {
        1 => (1, ecols * cp, 0),
        step => (ecols, cp, step * cp),
    };
    for r in 0..rows {
        for j in 0..runs {
            // SAFETY: the caller's contract: position j's `cp` bytes at column j · step
            // (with a step of one, the row's first `ecols · cp` bytes), and the three taps
            // `tap` bytes after each, are inside the image, and row r of the expanded image
            // inside `dst`.
            unsafe {
                let at = src.add(r * cols * cp + j * from_pitch);
                let to = dst.add(r * pitch + j * cp * 4) as *mut u8;
                for b in (0..len).step_by(LANES) {
                    let taps = std::array::from_fn(|t| V::load(at.add(t * tap + b)));
                    V::store_interleaved(taps, to.add(4 * b));
                }
            }
        }
    }
}

/// Runs `copy(channel, position)` for every pair outside the `done` corner (the first
/// `done.0` channels at the first `done.1` positions, which the NEON blocks copied).
fn copy_rest(
    (done_c, done_j): (usize, usize),
    (channels, positions): (usize, usize),
    mut copy: impl FnMut(usize, usize),
) {
    for c in 0..channels {
        let from = if c < done_c { done_j } else { 0 };
        for j in from..positions {
            copy(c, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u32) -> Vec<i8> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                s as i8
            })
            .collect()
    }

    /// The naive depthwise convolution of channel-major planes, for one output row.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        x: &[i8],
        (c, h, w): (usize, usize, usize),
        weights: &[i16],
        starts: &[i32],
        (k, stride, dilation, pad): (usize, usize, usize, i8),
        (top, left): (usize, usize),
        (oy, cols): (usize, usize),
    ) -> Vec<i32> {
        let mut out = vec![0i32; c * cols];
        for ch in 0..c {
            for ox in 0..cols {
                let mut s = starts[ch];
                for ky in 0..k {
                    for kx in 0..k {
                        let y = (oy * stride + ky * dilation) as isize - top as isize;
                        let xx = (ox * stride + kx * dilation) as isize - left as isize;
                        let v = if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
                            pad
                        } else {
                            x[ch * h * w + y as usize * w + xx as usize]
                        };
                        let wt = i32::from(weights[ch * k * k + ky * k + kx]);
                        s = s.wrapping_add(wt * i32::from(v));
                    }
                }
                out[ox * c + ch] = s;
            }
        }
        out
    }

    /// Both kernels (the pairs: NEON on aarch64; the quads: SDOT on cores with the dot
    /// product, CI's Cortex-A76 run; the scalar references elsewhere) against the naive
    /// convolution and their scalar references, over 1x1 to 7x7 kernels, strides 1-4,
    /// dilation 2, 5-80 channels and rows of 1-23, each on its own image: the pairs' padded
    /// one, the quads' wider one, expanded (every column, or every stride-th: checked byte
    /// by byte).
    #[test]
    fn matches_the_naive_convolution_over_odd_shapes() {
        let cases = [
            // (channels, h, w, k, stride, dilation, pad)
            (16, 7, 7, 3, 1, 1, 1),
            (32, 14, 14, 3, 2, 1, 1),
            (5, 9, 11, 3, 1, 1, 1),
            (40, 6, 23, 5, 1, 1, 2),
            (24, 12, 9, 5, 2, 1, 2),
            (17, 13, 13, 7, 1, 1, 3),
            (48, 10, 10, 3, 1, 2, 2),
            (33, 1, 4, 3, 3, 1, 1),
            (16, 8, 8, 2, 1, 1, 0),
            (16, 6, 9, 4, 1, 1, 1),
            (8, 5, 12, 1, 2, 1, 0),
            (32, 11, 13, 3, 2, 2, 2),
            (16, 9, 18, 5, 4, 1, 2),
            (20, 7, 16, 5, 2, 1, 1),
            (80, 6, 9, 3, 2, 1, 1),
            (24, 14, 12, 5, 1, 2, 4),
            (16, 11, 10, 6, 2, 1, 2),
            (16, 12, 22, 9, 2, 1, 4),
        ];
        // Each case with full-range weights (runs of one or two taps), and with smaller
        // ones beside one of 127 or -128 per channel (longer runs), as trained kernels have.
        let scaled = cases.iter().map(|&case| (case, true));
        for (i, &((c, h, w, k, stride, dilation, p), small)) in cases
            .iter()
            .map(|&case| (case, false))
            .chain(scaled)
            .collect::<Vec<_>>()
            .iter()
            .enumerate()
        {
            let x = values(c * h * w, i as u32);
            let weights: Vec<i16> = values(c * k * k, 100 + i as u32)
                .iter()
                .enumerate()
                .map(|(j, &v)| match (small, j % (k * k)) {
                    (false, _) => i16::from(v),
                    (true, 0) if j % 2 == 0 => 127,
                    (true, 0) => -128,
                    (true, _) => i16::from(v) / 9,
                })
                .collect();
            let starts: Vec<i32> = (0..c as i32).map(|v| v * 977 - 5000).collect();
            let pairs = Weights::new(&weights, c, k * k, &starts).unwrap();
            // Both layouts of the quads on every host: across only, and down a 5x5
            // kernel's fifth column (aarch64's).
            let layouts = [false, true]
                .map(|down| Quads::with_layout(&weights, c, [k, k], &starts, down).unwrap());
            let cp = pairs.padded_channels();
            for (down, quads) in [false, true].into_iter().zip(layouts) {
                assert_eq!(quads.padded_channels(), cp);
                let span = (k - 1) * dilation + 1;
                let rows = h + 2 * p;
                let (oh, ow) = ((rows - span) / stride + 1, (w + 2 * p - span) / stride + 1);
                let pad = -7i8;
                let image = |cols: usize| {
                    let frame = Frame {
                        cp,
                        cols,
                        top: p,
                        left: p,
                    };
                    let mut image = vec![pad; rows * cols * cp];
                    to_channels_last(&x, (c, h, w), frame, &mut image).unwrap();
                    image
                };
                // The pairs' image, taps and step.
                let cols = w + 2 * p;
                let plane = image(cols);
                let offsets: Vec<usize> = (0..k * k)
                    .map(|t| ((t / k) * dilation * cols + (t % k) * dilation) * cp)
                    .collect();
                let pairs_row = (plane, cols * cp, pairs.arrange(&offsets), stride * cp);
                // The quads': wider by their reach, expanded, a quad per four taps of a row.
                let cols = cols.max((ow - 1) * stride + quads.reach() * dilation + 1);
                let plane = image(cols);
                let spacing = Spacing::of(stride, dilation);
                let s = spacing.step();
                assert_eq!(s, if stride == 3 { 1 } else { stride });
                let mut expanded = Vec::new();
                let expansion =
                    quads.expand(&plane, (rows, cols, cp), spacing, dilation, &mut expanded);
                let ecols = expansion.unwrap();
                assert_eq!(ecols, (cols - 3 * dilation).div_ceil(s));
                // Each row's half across, then (kernels of 4 rows or more whose width is not a
                // multiple of 4) its half down, zeros where the taps down pass the image.
                let halves = if down && k >= 4 && k % 4 == 1 { 2 } else { 1 };
                let pitch = quads.row_bytes(ecols);
                assert_eq!(pitch, ecols * cp * 4 * halves);
                assert_eq!(expanded.len(), rows * pitch);
                for (j, &v) in expanded.iter().enumerate() {
                    let (r, in_row) = (j / pitch, j % pitch);
                    let (half, at) = (in_row / (ecols * cp * 4), in_row % (ecols * cp * 4));
                    let (pos, byte) = (at / (4 * cp), at % (4 * cp));
                    let (x, c, tap) = (pos * s, byte / 4, byte % 4);
                    let want = match half {
                        0 => plane[(r * cols + x + tap * dilation) * cp + c],
                        _ if r + 3 * dilation >= rows => 0,
                        _ => plane[((r + tap * dilation) * cols + x) * cp + c],
                    };
                    assert_eq!(v, want, "case {i}, row {r}, half {half}");
                }
                let offsets = quads.offsets(ecols, dilation, spacing);
                let quads_row = (expanded, pitch, offsets, stride / s * cp * 4);
                for oy in 0..oh {
                    let want = naive(
                        &x,
                        (c, h, w),
                        &weights,
                        &starts,
                        (k, stride, dilation, pad),
                        (p, p),
                        (oy, ow),
                    );
                    // The pairs once, with the first layout.
                    for kernel in ["pairs", "quads"].into_iter().skip(usize::from(down)) {
                        let (mut got, mut scalar) = (vec![0i32; ow * cp], vec![0i32; ow * cp]);
                        if kernel == "pairs" {
                            let (src, row, offsets, step) = &pairs_row;
                            let src = &src[oy * stride * row..];
                            pairs.run(src, offsets, *step, ow, &mut got).unwrap();
                            pairs.run_scalar(src, offsets, *step, ow, &mut scalar);
                        } else {
                            let (src, row, offsets, step) = &quads_row;
                            let src = &src[oy * stride * row..];
                            quads.run(src, offsets, *step, ow, &mut got).unwrap();
                            quads.run_scalar(src, offsets, *step, ow, &mut scalar);
                        }
                        assert_eq!(got, scalar, "{kernel}, case {i}, row {oy}");
                        let got: Vec<i32> =
                            got.chunks_exact(cp).flat_map(|s| s[..c].to_vec()).collect();
                        assert_eq!(got, want, "{kernel}, case {i}, row {oy}, down {down}");
                    }
                }
            }
        }
    }

    /// The quads' sums wrap in i32 as tract's do, with -128 by -128 products.
    #[test]
    fn quads_hold_at_the_extremes_and_wrap() {
        let c = 16;
        for (x, w, start) in [
            (-128i8, -128i16, i32::MAX - 5),
            (127, 127, 0i32),
            (-128, 127, i32::MIN + 3),
        ] {
            let quads = Quads::new(&vec![w; c * 9], c, [3, 3], &vec![start; c]).unwrap();
            // A 3 x 6 image, expanded: 3 x 3 positions; one output position.
            let image = vec![x; 3 * 6 * c];
            let spacing = Spacing::of(1, 1);
            let mut expanded = Vec::new();
            quads
                .expand(&image, (3, 6, c), spacing, 1, &mut expanded)
                .unwrap();
            let offsets = quads.offsets(3, 1, spacing);
            let mut got = vec![0i32; c];
            quads.run(&expanded, &offsets, c * 4, 1, &mut got).unwrap();
            let one = i32::from(x) * i32::from(w) * 9;
            assert_eq!(got, vec![start.wrapping_add(one); c]);
        }
        assert!(Quads::new(&[-129, 3], 1, [1, 2], &[0]).is_none());
        assert!(Quads::new(&[255, 3], 1, [1, 2], &[0]).is_none());
    }

    /// The sums wrap in i32 as tract's do, at the extreme weights and inputs.
    #[test]
    fn holds_at_the_extremes_and_wraps() {
        let (c, taps) = (16, 9);
        for (x, w, start) in [
            (-128i8, -127i16, 0i32),
            (127, 127, i32::MAX - 5),
            (-128, 127, i32::MIN + 3),
            (-128, -128, 0),
            (127, -128, i32::MAX - 5),
        ] {
            let weights = vec![w; c * taps];
            let layer = Weights::new(&weights, c, taps, &vec![start; c]).unwrap();
            let src = vec![x; 3 * c * taps];
            let offsets: Vec<usize> = (0..taps).map(|t| t * c).collect();
            let mut got = vec![0i32; 2 * c];
            layer
                .run(&src, &layer.arrange(&offsets), c, 2, &mut got)
                .unwrap();
            let one = i32::from(x) * i32::from(w) * taps as i32;
            assert_eq!(got, vec![start.wrapping_add(one); 2 * c]);
        }
    }

    #[test]
    fn refuses_weights_and_operands_it_cannot_take() {
        assert!(Weights::new(&[-129, 3], 1, 2, &[0]).is_none());
        assert!(Weights::new(&[200, 3], 1, 2, &[0]).is_none());
        let layer = Weights::new(&[1; 18], 2, 9, &[0, 0]).unwrap();
        let taps: Vec<usize> = (0..9).map(|t| t * 16).collect();
        let offsets = layer.arrange(&taps);
        let mut acc = vec![0i32; 2 * 16];
        // Two positions need 16 + 128 + 16 bytes.
        assert!(layer.run(&[0; 159], &offsets, 16, 2, &mut acc).is_err());
        assert!(layer.run(&[0; 160], &offsets, 16, 2, &mut acc).is_ok());
        let other = Weights::new(&[1; 16], 2, 8, &[0, 0]).unwrap();
        assert!(layer
            .run(&[0; 160], &other.arrange(&taps[..8]), 16, 2, &mut acc)
            .is_err());
        assert!(layer.run(&[0; 160], &offsets, 16, 3, &mut acc).is_err());
    }

    /// Both copies against their definitions, at sizes around the 16 x 16 blocks.
    #[test]
    fn channel_copies_put_every_value_in_its_place() {
        for (c, h, w) in [
            (16, 4, 4),
            (33, 7, 7),
            (5, 3, 11),
            (48, 1, 17),
            (64, 14, 14),
            (1, 1, 1),
        ] {
            let n = h * w;
            let x = values(c * n, (c * 31 + n) as u32);
            let cp = c.next_multiple_of(LANES) + 16;
            let frame = Frame {
                cp,
                cols: w + 3,
                top: 2,
                left: 1,
            };
            let mut plane = vec![99i8; (h + 4) * (w + 3) * cp];
            to_channels_last(&x, (c, h, w), frame, &mut plane).unwrap();
            for (i, &v) in plane.iter().enumerate() {
                let (pos, ch) = (i / cp, i % cp);
                let (y, xx) = (pos / (w + 3), pos % (w + 3));
                let inside = ch < c && (2..2 + h).contains(&y) && (1..1 + w).contains(&xx);
                let want = if inside {
                    x[ch * n + (y - 2) * w + xx - 1]
                } else {
                    99
                };
                assert_eq!(v, want, "{c} x {h} x {w}: byte {i}");
            }
            // With all `cp` channels, the padding written around the copy instead of
            // before it, over bytes left from another layer: the same frame.
            let full = Frame { cp: c, ..frame };
            let mut fresh = vec![99i8; (h + 4) * (w + 3) * c];
            to_channels_last(&x, (c, h, w), full, &mut fresh).unwrap();
            let mut reused = values(fresh.len(), 5);
            full.pad_outside(&mut reused, (h, w), 99).unwrap();
            to_channels_last(&x, (c, h, w), full, &mut reused).unwrap();
            assert_eq!(reused, fresh, "{c} x {h} x {w}");
            assert!(full.pad_outside(&mut reused[1..], (h, w), 99).is_err());
            assert!(full.pad_outside(&mut reused, (h + 3, w), 99).is_err());
            let rows: Vec<u8> = values(n * cp, 7).iter().map(|&v| v as u8).collect();
            let mut back = vec![0u8; c * n];
            from_channels_last(&rows, cp, (c, n), &mut back).unwrap();
            for ch in 0..c {
                for j in 0..n {
                    assert_eq!(back[ch * n + j], rows[j * cp + ch], "{c} x {n}");
                }
            }
        }
    }
}
