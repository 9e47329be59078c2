//! 2-D convolution on the CPU (candle's own conv backward is wrong for some strided shapes,
//! and its lowering is slower: BENCHMARKS.md):
//! per-axis zero padding (1×k, k×1), any stride, groups. Stride-1 convs that fill the direct
//! kernel's register blocks run it (`direct.rs`); otherwise the forward lowers each image with
//! im2col into a per-thread buffer (rows ordered by kernel tap, [`tap_order`], so a grown
//! block's convs can share one: `patches.rs`) and runs one gemm per group (a 1×1 stride-1 conv
//! reads the input in place). The weight gradient accumulates `dY · colsᵀ` over fixed image
//! ranges into one column-major buffer each, added in range order; the input gradient is, at
//! stride 1, the forward conv of `dY` with the flipped kernel, else `Wᵀ · dY` followed by col2im,
//! and is skipped when the input carries no gradient (the network's first layer). Images run in
//! parallel; where there are fewer images (or image ranges) than threads, the gemms take the
//! spare threads too. Which kernel runs and how sums are split depend on the shapes only, never
//! on the thread count, and the threaded gemm computes the same bits as the single-threaded
//! one, so a run's results do not depend on the number of cores (docs/ARCHITECTURE.md).
//! Depthwise convs (one input channel per output channel) skip the lowering: `depthwise.rs`.
//! Outputs that are written in full are allocated uninitialised (no zero-fill pass).

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::bn::{
    channel_stats, plane_sums, stats_from_plane_sums, ChannelStats, PlaneSums, Planes,
};
use crate::cpu::{
    assume_init_slice, assume_init_vec, sgemm, sgemm_strided, sgemm_uninit, slice_f32, split_range,
    sum_in_order, tensor_like, threads, uninit_vec, with_f32, with_scratch, Mat,
};
use crate::error::{KernelError, Result};
use crate::isa::Isa;
use crate::profile::{ConvKey, ConvPass, ConvTimer, Phase, Timer};
use crate::{arg, check_own, Backend, ConvParams};

/// Geometry of one conv call, validated at construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub ph: usize,
    pub pw: usize,
    pub groups: usize,
    pub ho: usize,
    pub wo: usize,
}

/// Zeroes a slice that is usually one or two floats long (a padded border of an im2col row):
/// a `fill` there compiles to a `memset` call per row, which costs more than the stores.
#[inline]
fn zero_short(s: &mut [f32]) {
    match s {
        [] => {}
        [a] => *a = 0.0,
        [a, b] => {
            *a = 0.0;
            *b = 0.0;
        }
        _ => s.fill(0.0),
    }
}

impl ConvShape {
    /// Validates an input `[n, c, h, w]` and weight `[out, c/groups, kh, kw]` pair.
    pub fn new(
        x: &[usize],
        weight: &[usize],
        stride: usize,
        padding: (usize, usize),
        groups: usize,
    ) -> Result<Self> {
        let bad = |why: String| {
            KernelError::Shape {
            op: "conv2d",
            detail: format!("input {x:?}, weight {weight:?}, stride {stride}, padding {padding:?}, groups {groups}: {why}"),
        }
        };
        let [n, c, h, w]: [usize; 4] = x
            .try_into()
            .map_err(|_| bad("input must be [N, C, H, W]".into()))?;
        let [out, cg, kh, kw]: [usize; 4] = weight
            .try_into()
            .map_err(|_| bad("weight must be [out, in/groups, kh, kw]".into()))?;
        if stride == 0 || groups == 0 || kh == 0 || kw == 0 {
            return Err(bad("stride, groups and kernel sizes must be >= 1".into()));
        }
        if c % groups != 0 || out % groups != 0 || cg != c / groups {
            return Err(bad(format!(
                "channels {c} -> {out} do not split into {groups} groups of {cg} inputs"
            )));
        }
        let (hp, wp) = (h + 2 * padding.0, w + 2 * padding.1);
        if hp < kh || wp < kw {
            return Err(bad("the padded input is smaller than the kernel".into()));
        }
        Ok(Self {
            n,
            c,
            h,
            w,
            out,
            kh,
            kw,
            stride,
            ph: padding.0,
            pw: padding.1,
            groups,
            ho: (hp - kh) / stride + 1,
            wo: (wp - kw) / stride + 1,
        })
    }

    fn cg(&self) -> usize {
        self.c / self.groups
    }

    fn og(&self) -> usize {
        self.out / self.groups
    }

    /// Rows of one group's patch matrix: `c/groups · kh · kw`.
    fn kg(&self) -> usize {
        self.cg() * self.kh * self.kw
    }

    pub(crate) fn ohw(&self) -> usize {
        self.ho * self.wo
    }

    pub(crate) fn hw(&self) -> usize {
        self.h * self.w
    }

    /// A 1×1, stride-1, unpadded conv reads its input as the patch matrix.
    pub(crate) fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.ph == 0 && self.pw == 0
    }

    /// Elements of the weight `[out, c/groups, kh, kw]`.
    pub fn weight_len(&self) -> usize {
        self.out * self.kg()
    }

    pub fn output_dims(&self) -> [usize; 4] {
        [self.n, self.out, self.ho, self.wo]
    }

    /// Multiply-accumulates of the forward pass.
    pub fn macs(&self) -> u64 {
        (self.n * self.out * self.kg() * self.ohw()) as u64
    }

    /// This conv in the per-conv profile.
    pub(crate) fn profile_key(&self) -> ConvKey {
        ConvKey {
            c: self.c,
            out: self.out,
            h: self.h,
            w: self.w,
            kh: self.kh,
            kw: self.kw,
            stride: self.stride,
            groups: self.groups,
            shared: 0,
        }
    }

    /// Times `pass` of this conv in the per-conv profile until the guard drops.
    fn pass_timer(&self, pass: ConvPass) -> ConvTimer {
        ConvTimer::start(self.profile_key(), pass, self.macs())
    }

    /// Whether images run in parallel, each by one kernel call: at least two of them. A choice
    /// by shape alone: the kernels that need it (direct, batched small planes, the forward with
    /// fused statistics) and with them a run's bits do not depend on the thread count.
    pub(crate) fn parallel_images(&self) -> bool {
        self.n >= 2
    }

    /// Whether each image's gemms take threads too: fewer images than threads. Scheduling
    /// only: the threaded gemm's bits equal the single-threaded one's (`cpu.rs` tests).
    fn threaded_image_gemms(&self) -> bool {
        self.n < threads()
    }

    /// The image ranges whose weight-gradient sums are taken separately (in parallel) and then
    /// added in this order: at most [`WEIGHT_GRAD_PARTIALS`], whole small-plane batches each,
    /// fixed by the batch and the plane, so the sum's rounding does not depend on the thread
    /// count.
    pub(crate) fn weight_grad_ranges(&self) -> Vec<std::ops::Range<usize>> {
        let unit = self.image_batch().unwrap_or(1);
        split_range(self.n.div_ceil(unit), WEIGHT_GRAD_PARTIALS)
            .into_iter()
            .map(|r| (r.start * unit).min(self.n)..(r.end * unit).min(self.n))
            .collect()
    }

    /// The valid output-column range `[lo, hi)` for kernel column `kx` at stride 1.
    fn valid_cols(&self, kx: usize) -> (usize, usize) {
        let lo = self.pw.saturating_sub(kx).min(self.wo);
        let hi = (self.w + self.pw).saturating_sub(kx).min(self.wo).max(lo);
        (lo, hi)
    }

    /// Input row for output row `oy` and kernel row `ky`, if inside the image.
    fn input_row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.stride + ky)
            .checked_sub(self.ph)
            .filter(|&iy| iy < self.h)
    }

    /// Input column for output column `ox` and kernel column `kx`, if inside the image.
    fn input_col(&self, ox: usize, kx: usize) -> Option<usize> {
        (ox * self.stride + kx)
            .checked_sub(self.pw)
            .filter(|&ix| ix < self.w)
    }

    /// One patch-matrix row (kernel tap `(ky, kx)` of one channel) of a stride-1 conv whose
    /// output is as wide as its input ("same" width): the valid output rows read one contiguous
    /// block of the plane shifted by `kx − pw`, so the block is copied at once and only the
    /// `|kx − pw|` values per row that wrapped around from the neighbouring row are zeroed.
    fn im2col_same_width_row(
        &self,
        plane: &[f32],
        row: &mut [f32],
        (ky, kx): (usize, usize),
        oys: std::ops::Range<usize>,
    ) {
        let w = self.w;
        // Output rows of `oys` whose input row exists, relative to `oys.start`.
        let valid_lo = self.ph.saturating_sub(ky).min(self.ho);
        let valid_hi = (self.h + self.ph)
            .saturating_sub(ky)
            .min(self.ho)
            .max(valid_lo);
        let oy_lo = valid_lo.clamp(oys.start, oys.end);
        let oy_hi = valid_hi.clamp(oy_lo, oys.end);
        let (lo, hi) = (oy_lo - oys.start, oy_hi - oys.start);
        row[..lo * w].fill(0.0);
        row[hi * w..].fill(0.0);
        if hi == lo {
            return;
        }
        let iy_lo = oy_lo + ky - self.ph;
        let len = (hi - lo) * w;
        let src = &plane[iy_lo * w..iy_lo * w + len];
        let dst = &mut row[lo * w..hi * w];
        if kx >= self.pw {
            // out[r][ox] = in[r][ox + s]: the last s values of each row wrapped.
            let s = kx - self.pw;
            dst[..len - s].copy_from_slice(&src[s..]);
            for r in dst.chunks_exact_mut(w) {
                zero_short(&mut r[w - s..]);
            }
        } else {
            // out[r][ox] = in[r][ox − s]: the first s values of each row wrapped.
            let s = self.pw - kx;
            dst[s..].copy_from_slice(&src[..len - s]);
            for r in dst.chunks_exact_mut(w) {
                zero_short(&mut r[..s]);
            }
        }
    }

    /// Lowers one image `[c, h, w]` to its patch matrix: per group, one row per kernel tap (in
    /// [`tap_order`]) and input channel, `[groups, taps, c/groups, ho·wo]`.
    pub(crate) fn im2col(&self, image: &[f32], cols: &mut [f32]) {
        self.im2col_rows(image, cols, 0..self.ho);
    }

    /// The patch matrix of output rows `oys` only: `[groups, taps, c/groups, rows·wo]`.
    pub(crate) fn im2col_rows(&self, image: &[f32], cols: &mut [f32], oys: std::ops::Range<usize>) {
        let (hw, cg) = (self.hw(), self.cg());
        let len = oys.len() * self.wo;
        for g in 0..self.groups {
            for (t, &(ky, kx)) in self.taps().iter().enumerate() {
                for c in 0..cg {
                    let row = (g * self.kg() + t * cg + c) * len;
                    let ch = g * cg + c;
                    self.im2col_row(
                        &image[ch * hw..(ch + 1) * hw],
                        &mut cols[row..row + len],
                        (ky, kx),
                        oys.clone(),
                    );
                }
            }
        }
    }

    /// The kernel taps in patch-matrix row order ([`tap_order`]).
    pub(crate) fn taps(&self) -> Vec<(usize, usize)> {
        tap_order(self.kh, self.kw)
    }

    /// A weight `[out, c/groups, kh, kw]` in patch-matrix order `[out, tap, c/groups]`.
    pub(crate) fn patch_weight(&self, weight: &[f32]) -> Vec<f32> {
        let (cg, kg, kw) = (self.cg(), self.kg(), self.kw);
        let kk = self.kh * kw;
        if kk == 1 {
            return weight[..self.weight_len()].to_vec();
        }
        let taps = self.taps();
        let mut out = vec![0.0f32; self.weight_len()];
        for (src, dst) in weight.chunks_exact(kg).zip(out.chunks_exact_mut(kg)) {
            for (t, &(ky, kx)) in taps.iter().enumerate() {
                for c in 0..cg {
                    dst[t * cg + c] = src[c * kk + ky * kw + kx];
                }
            }
        }
        out
    }

    /// A weight gradient accumulated column-major in patch-matrix order (group `g`'s element
    /// `(o, r)` at `g·og·kg + r·og + o`, `r = tap·cg + c`) as `[out, c/groups, kh, kw]`.
    pub(crate) fn weight_from_patch_cm(&self, cm: &[f32]) -> Vec<f32> {
        let (cg, kg, og, kw) = (self.cg(), self.kg(), self.og(), self.kw);
        let kk = self.kh * kw;
        let taps = self.taps();
        let mut dw = vec![0.0f32; self.weight_len()];
        for g in 0..self.groups {
            let src = &cm[g * og * kg..(g + 1) * og * kg];
            let dst = &mut dw[g * og * kg..(g + 1) * og * kg];
            for (r, col) in src.chunks_exact(og).enumerate() {
                let (ky, kx) = taps[r / cg];
                let at = (r % cg) * kk + ky * kw + kx;
                for (o, &v) in col.iter().enumerate() {
                    dst[o * kg + at] = v;
                }
            }
        }
        dw
    }

    /// One patch-matrix row `[rows·wo]` for output rows `oys`: kernel tap `(ky, kx)` of one
    /// input plane `[h, w]`.
    pub(crate) fn im2col_row(
        &self,
        plane: &[f32],
        row: &mut [f32],
        (ky, kx): (usize, usize),
        oys: std::ops::Range<usize>,
    ) {
        let wo = self.wo;
        if self.stride == 1 && self.w == self.wo && kx.abs_diff(self.pw) < self.w {
            self.im2col_same_width_row(plane, row, (ky, kx), oys);
            return;
        }
        let (lo, hi) = self.valid_cols(kx);
        let first = oys.start;
        for oy in oys {
            let out = &mut row[(oy - first) * wo..(oy - first + 1) * wo];
            let Some(iy) = self.input_row(oy, ky) else {
                out.fill(0.0);
                continue;
            };
            let src = &plane[iy * self.w..(iy + 1) * self.w];
            if self.stride == 1 {
                zero_short(&mut out[..lo]);
                zero_short(&mut out[hi..]);
                if hi > lo {
                    // A plain loop, not copy_from_slice: rows are short (7-56 floats) and a
                    // memmove call per row costs more than the copy.
                    let src = &src[lo + kx - self.pw..hi + kx - self.pw];
                    for (o, &v) in out[lo..hi].iter_mut().zip(src) {
                        *o = v;
                    }
                }
            } else {
                for (ox, o) in out.iter_mut().enumerate() {
                    *o = self.input_col(ox, kx).map_or(0.0, |ix| src[ix]);
                }
            }
        }
    }

    /// Adds a patch-matrix gradient (rows as in [`Self::im2col`]) back into an image gradient
    /// `[c, h, w]`.
    fn col2im(&self, cols: &[f32], image: &mut [f32]) {
        let (ohw, wo, cg) = (self.ohw(), self.wo, self.cg());
        for g in 0..self.groups {
            for (t, &(ky, kx)) in self.taps().iter().enumerate() {
                for c in 0..cg {
                    let row_idx = g * self.kg() + t * cg + c;
                    let row = &cols[row_idx * ohw..(row_idx + 1) * ohw];
                    let ch = g * cg + c;
                    let plane = &mut image[ch * self.hw()..(ch + 1) * self.hw()];
                    let (lo, hi) = self.valid_cols(kx);
                    for oy in 0..self.ho {
                        let Some(iy) = self.input_row(oy, ky) else {
                            continue;
                        };
                        let src = &row[oy * wo..(oy + 1) * wo];
                        let dst = &mut plane[iy * self.w..(iy + 1) * self.w];
                        if self.stride == 1 {
                            if hi <= lo {
                                continue;
                            }
                            let dst = &mut dst[lo + kx - self.pw..hi + kx - self.pw];
                            for (d, s) in dst.iter_mut().zip(&src[lo..hi]) {
                                *d += s;
                            }
                        } else {
                            for (ox, s) in src.iter().enumerate() {
                                if let Some(ix) = self.input_col(ox, kx) {
                                    dst[ix] += s;
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Runs `f` with the patch matrix of one image (the image itself for pointwise convs).
    fn with_cols<R>(&self, image: &[f32], f: impl FnOnce(&[f32]) -> R) -> R {
        if self.is_pointwise() {
            f(image)
        } else {
            with_scratch(self.c * self.kh * self.kw * self.ohw(), |cols| {
                self.im2col(image, cols);
                f(cols)
            })
        }
    }

    /// Forward: `y[n] = W · cols(x[n])` per group.
    pub fn forward(&self, x: &[f32], weight: &[f32]) -> Vec<f32> {
        let _t = Timer::start(Phase::ConvForward);
        let _c = self.pass_timer(ConvPass::Forward);
        if self.is_depthwise_direct() {
            return self.depthwise_forward(x, weight);
        }
        self.forward_untimed(x, weight)
    }

    fn forward_untimed(&self, x: &[f32], weight: &[f32]) -> Vec<f32> {
        match self.direct_path() {
            Some(tier) => self.forward_direct(tier, x, weight),
            None => self.forward_lowered(x, weight),
        }
    }

    /// The forward on `tier`'s direct kernel (`direct.rs`), images in parallel.
    pub(crate) fn forward_direct(&self, tier: Isa, x: &[f32], weight: &[f32]) -> Vec<f32> {
        self.forward_with(&ImageForward::new(self, weight, Some(tier)), x)
    }

    /// The forward through im2col + gemm.
    pub(crate) fn forward_lowered(&self, x: &[f32], weight: &[f32]) -> Vec<f32> {
        self.forward_with(&ImageForward::new(self, weight, None), x)
    }

    fn forward_with(&self, f: &ImageForward<'_>, x: &[f32]) -> Vec<f32> {
        if f.direct.is_none() {
            if let Some(g) = self.image_batch() {
                return self.forward_batched(g, x, &f.weight);
            }
        }
        let (per_in, per_out) = (self.c * self.hw(), self.out * self.ohw());
        let mut y = uninit_vec(self.n * per_out);
        self.for_each_image(&mut y, per_out, |(img, y_img)| {
            f.run(&x[img * per_in..(img + 1) * per_in], y_img)
        });
        // SAFETY: `ImageForward::run` writes every output of its image; the chunks cover `y`.
        unsafe { assume_init_vec(y) }
    }

    /// The forward and its output's batch statistics per channel — what
    /// [`crate::bn::channel_stats`] returns, bit for bit — taken from each image's output right
    /// after it is written, while it is in cache, instead of in another pass over the batch
    /// (the BN after a conv reads its input once less). All images in parallel: each plane's
    /// sums are relative to its own first value (`bn::PlaneSums`).
    pub(crate) fn forward_stats(&self, x: &[f32], weight: &[f32]) -> (Vec<f32>, Vec<ChannelStats>) {
        let planes = Planes {
            n: self.n,
            c: self.out,
            hw: self.ohw(),
        };
        if self.is_depthwise_direct()
            || !self.parallel_images()
            || self.ohw() == 0
            || (self.image_batch().is_some() && !self.is_direct())
        {
            let y = self.forward(x, weight);
            let stats = channel_stats(&y, planes);
            return (y, stats);
        }
        let _t = Timer::start(Phase::ConvForward);
        let _c = self.pass_timer(ConvPass::Forward);
        let f = ImageForward::new(self, weight, self.direct_path());
        let (ohw, per_in, per_out) = (self.ohw(), self.c * self.hw(), self.out * self.ohw());
        let mut y = uninit_vec(self.n * per_out);
        let image_sums: Vec<Vec<PlaneSums>> = y
            .par_chunks_mut(per_out)
            .enumerate()
            .map(|(img, chunk)| {
                f.run(&x[img * per_in..(img + 1) * per_in], chunk);
                // SAFETY: `run` wrote every output of this image.
                let out = unsafe { assume_init_slice(chunk) };
                out.chunks_exact(ohw).map(plane_sums).collect()
            })
            .collect();
        let stats = (0..self.out)
            .map(|c| stats_from_plane_sums(image_sums.iter().map(|s| s[c]), ohw))
            .collect();
        // SAFETY: every image was written in full above.
        (unsafe { assume_init_vec(y) }, stats)
    }

    /// Runs `f(image, chunk)` over the per-image chunks of `out`: in parallel when there are
    /// several images, else in order.
    fn for_each_image<T: Send>(
        &self,
        out: &mut [T],
        per_image: usize,
        f: impl Fn((usize, &mut [T])) + Sync + Send,
    ) {
        if self.parallel_images() {
            out.par_chunks_mut(per_image.max(1)).enumerate().for_each(f);
        } else {
            out.chunks_mut(per_image.max(1)).enumerate().for_each(f);
        }
    }

    /// Weight gradient: `Σₙ dy[n] · cols(x[n])ᵀ` per group. Each of the fixed image ranges
    /// ([`Self::weight_grad_ranges`]) accumulates its images into a column-major buffer (group
    /// `g`'s element `(o, r)` at `g·og·kg + r·og + o`), which lets the gemm read the patch
    /// matrix without transposing it; the buffers are added in range order and the sum is put
    /// back in `[out, c/groups, kh, kw]` order once at the end.
    pub fn weight_grad(&self, x: &[f32], dy: &[f32]) -> Vec<f32> {
        let _t = Timer::start(Phase::ConvWeightGrad);
        let _c = self.pass_timer(ConvPass::WeightGrad);
        let (ohw, kg, og) = (self.ohw(), self.kg(), self.og());
        let per_image_in = self.c * self.hw();
        let per_image_out = self.out * ohw;
        let wlen = self.out * kg;
        // The patch matrix is lowered a few output rows at a time, so that it is still in L2
        // when the gemm packs it (pointwise convs: the image is its own patch matrix).
        let rows = if self.is_pointwise() {
            self.ho
        } else {
            let chunks = (self.c * self.kh * self.kw * ohw).div_ceil(PATCH_CHUNK_FLOATS);
            self.ho.div_ceil(chunks.max(1)).max(1)
        };
        let batch = self.image_batch();
        let accumulate_images = |range: std::ops::Range<usize>, parallel_gemm: bool| {
            let mut dw_cm = vec![0.0f32; wlen];
            if let Some(g) = batch {
                self.weight_grad_batched(g, x, dy, range, parallel_gemm, &mut dw_cm);
                return dw_cm;
            }
            for (i, img) in range.enumerate() {
                let image = &x[img * per_image_in..(img + 1) * per_image_in];
                let dy_img = &dy[img * per_image_out..(img + 1) * per_image_out];
                for (chunk, start) in (0..self.ho).step_by(rows.max(1)).enumerate() {
                    let oys = start..(start + rows).min(self.ho);
                    let len = oys.len() * self.wo;
                    // `dy` of the chunk's output rows times the chunk's patch matrix, transposed.
                    let mut gemm_chunk = |cols: &[f32]| {
                        for g in 0..self.groups {
                            sgemm_strided(
                                &mut dw_cm[g * og * kg..(g + 1) * og * kg],
                                1,
                                og,
                                Mat {
                                    data: &dy_img
                                        [g * og * ohw + start * self.wo..(g + 1) * og * ohw],
                                    rows: og,
                                    cols: len,
                                    rs: ohw,
                                    cs: 1,
                                },
                                Mat {
                                    data: &cols[g * kg * len..(g + 1) * kg * len],
                                    rows: len,
                                    cols: kg,
                                    rs: 1,
                                    cs: len,
                                },
                                i > 0 || chunk > 0,
                                parallel_gemm,
                            );
                        }
                    };
                    if self.is_pointwise() {
                        gemm_chunk(image);
                    } else {
                        with_scratch(self.c * self.kh * self.kw * len, |cols| {
                            self.im2col_rows(image, cols, oys.clone());
                            gemm_chunk(cols);
                        });
                    }
                }
            }
            dw_cm
        };
        let ranges = self.weight_grad_ranges();
        let parallel_gemm = ranges.len() < threads();
        let partials: Vec<Vec<f32>> = ranges
            .into_par_iter()
            .map(|r| accumulate_images(r, parallel_gemm))
            .collect();
        self.weight_from_patch_cm(&sum_in_order(partials, wlen))
    }

    /// Input gradient. At stride 1 (with padding below the kernel size) it is the forward conv
    /// of `dy` with the flipped, in/out-swapped kernel and padding `k − 1 − p`: a gemm with the
    /// forward's shape (depth `out·kh·kw` instead of `out`), which runs much faster than the
    /// lowered `Wᵀ · dy` (measured as plain gemms of the same shapes). Otherwise
    /// col2im(`Wᵀ · dy[n]`) per image and group.
    pub fn input_grad(&self, weight: &[f32], dy: &[f32]) -> Vec<f32> {
        let _t = Timer::start(Phase::ConvInputGrad);
        let _c = self.pass_timer(ConvPass::InputGrad);
        if self.is_depthwise_direct() {
            return self.depthwise_input_grad(weight, dy);
        }
        match self.transposed() {
            Some(t) => t.forward_untimed(dy, &self.flipped_weight(weight)),
            None => self.input_grad_col2im(weight, dy),
        }
    }

    /// [`Self::input_grad`] added into `dx` (`[n, c, h, w]`) where it is made, instead of
    /// returned: a grown block's branches read the same input, and summing their gradients
    /// this way saves a fresh buffer and a pass over it per branch (the direct kernel adds while
    /// it crops its output rows, the gemms accumulate, col2im adds anyway).
    pub(crate) fn input_grad_add(&self, weight: &[f32], dy: &[f32], dx: &mut [f32]) {
        let _t = Timer::start(Phase::ConvInputGrad);
        let _c = self.pass_timer(ConvPass::InputGrad);
        if self.is_depthwise_direct() {
            let g = self.depthwise_input_grad(weight, dy);
            for (d, v) in dx.iter_mut().zip(g) {
                *d += v;
            }
            return;
        }
        match self.transposed() {
            Some(t) => {
                let f = ImageForward::new(&t, &self.flipped_weight(weight), t.direct_path());
                if let (None, Some(g)) = (f.direct, t.image_batch()) {
                    t.forward_batched_add(g, dy, &f.weight, dx);
                    return;
                }
                let (per_in, per_out) = (t.c * t.hw(), t.out * t.ohw());
                t.for_each_image(dx, per_out, |(img, dx_img)| {
                    f.run_add(&dy[img * per_in..(img + 1) * per_in], dx_img)
                });
            }
            None => self.input_grad_col2im_into(weight, dy, dx, true),
        }
    }

    /// The stride-1 conv whose forward is this conv's input gradient, if there is one.
    fn transposed(&self) -> Option<ConvShape> {
        if self.stride != 1 || self.ph >= self.kh || self.pw >= self.kw || self.is_pointwise() {
            return None;
        }
        ConvShape::new(
            &[self.n, self.out, self.ho, self.wo],
            &[self.c, self.og(), self.kh, self.kw],
            1,
            (self.kh - 1 - self.ph, self.kw - 1 - self.pw),
            self.groups,
        )
        .ok()
        .filter(|t| t.ho == self.h && t.wo == self.w)
    }

    /// `W'[g·cg + c, o, ky, kx] = W[g·og + o, c, kh−1−ky, kw−1−kx]`.
    fn flipped_weight(&self, weight: &[f32]) -> Vec<f32> {
        let (cg, og, kk) = (self.cg(), self.og(), self.kh * self.kw);
        let mut out = vec![0.0f32; weight.len()];
        for g in 0..self.groups {
            for o in 0..og {
                for c in 0..cg {
                    let src = &weight[((g * og + o) * cg + c) * kk..][..kk];
                    let dst = &mut out[((g * cg + c) * og + o) * kk..][..kk];
                    for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                        *d = *s;
                    }
                }
            }
        }
        out
    }

    /// Input gradient as col2im(`Wᵀ · dy[n]`) per image and group (any stride).
    fn input_grad_col2im(&self, weight: &[f32], dy: &[f32]) -> Vec<f32> {
        let mut dx = vec![0.0f32; self.n * self.c * self.hw()];
        self.input_grad_col2im_into(weight, dy, &mut dx, false);
        dx
    }

    /// [`Self::input_grad_col2im`] into `dx`: added to it when `accumulate`, else written (a
    /// pointwise conv's gemm overwrites; col2im always adds, so `dx` must then be zero).
    fn input_grad_col2im_into(&self, weight: &[f32], dy: &[f32], dx: &mut [f32], accumulate: bool) {
        if self.is_pointwise() && self.image_batch().is_some() {
            // The forward of the transposed 1×1 conv, several images per gemm.
            if let Ok(t) = ConvShape::new(
                &[self.n, self.out, self.h, self.w],
                &[self.c, self.out, 1, 1],
                1,
                (0, 0),
                1,
            ) {
                if let Some(g) = t.image_batch() {
                    let (c, out) = (self.c, self.out);
                    let wt: Vec<f32> = (0..c * out)
                        .map(|i| weight[(i % out) * c + i / out])
                        .collect();
                    if !accumulate {
                        dx.fill(0.0);
                    }
                    t.forward_batched_add(g, dy, &wt, dx);
                    return;
                }
            }
        }
        let (ohw, kg, og, cg) = (self.ohw(), self.kg(), self.og(), self.cg());
        let per_image_in = self.c * self.hw();
        let per_image_out = self.out * ohw;
        let parallel_gemm = self.threaded_image_gemms();
        let pointwise = self.is_pointwise();
        let weight = &self.patch_weight(weight)[..];
        let one = |(img, dx_img): (usize, &mut [f32])| {
            let dy_img = &dy[img * per_image_out..(img + 1) * per_image_out];
            let lowered = |dcols: &mut [f32], accumulate: bool| {
                for g in 0..self.groups {
                    sgemm(
                        &mut dcols[g * kg * ohw..(g + 1) * kg * ohw],
                        ohw,
                        // Wᵍᵀ: (kg × og), element (r, c) = w[(g·og + c)·kg + r].
                        Mat {
                            data: &weight[g * og * kg..(g + 1) * og * kg],
                            rows: kg,
                            cols: og,
                            rs: 1,
                            cs: kg,
                        },
                        Mat {
                            data: &dy_img[g * og * ohw..(g + 1) * og * ohw],
                            rows: og,
                            cols: ohw,
                            rs: ohw,
                            cs: 1,
                        },
                        accumulate,
                        parallel_gemm,
                    );
                }
            };
            if pointwise {
                // kg = c/groups and ohw = h·w: the lowered gradient is the image gradient.
                debug_assert_eq!(kg, cg);
                lowered(dx_img, accumulate);
            } else {
                with_scratch(self.c * self.kh * self.kw * ohw, |dcols| {
                    lowered(dcols, false);
                    self.col2im(dcols, dx_img);
                });
            }
        };
        self.for_each_image(dx, per_image_in, one);
    }
}

/// One image's forward with its weight prepared once per call: the direct kernel (packed
/// weight) or im2col + gemm (weight in patch-matrix order).
struct ImageForward<'a> {
    shape: &'a ConvShape,
    weight: Vec<f32>,
    /// The direct kernel's tier, `None` for im2col + gemm.
    direct: Option<Isa>,
    parallel_gemm: bool,
}

impl<'a> ImageForward<'a> {
    fn new(shape: &'a ConvShape, weight: &[f32], direct: Option<Isa>) -> Self {
        Self {
            shape,
            weight: match direct {
                Some(_) => shape.direct_weight(weight),
                None => shape.patch_weight(weight),
            },
            direct,
            parallel_gemm: shape.threaded_image_gemms(),
        }
    }

    /// Writes every output `[out, ho, wo]` of one image `[c, h, w]`.
    fn run(&self, image: &[f32], out: &mut [MaybeUninit<f32>]) {
        let s = self.shape;
        if let Some(tier) = self.direct {
            with_scratch(s.direct_scratch_len(), |scratch| {
                s.direct_image(tier, image, &self.weight, out, scratch)
            });
            return;
        }
        let per_group = s.og() * s.ohw();
        s.with_cols(image, |cols| {
            for g in 0..s.groups {
                let (w, c) = self.group_operands(cols, g);
                let dst = &mut out[g * per_group..(g + 1) * per_group];
                sgemm_uninit(dst, s.ohw(), w, c, self.parallel_gemm);
            }
        });
    }

    /// [`Self::run`], adding the outputs into `out` instead of writing them.
    fn run_add(&self, image: &[f32], out: &mut [f32]) {
        let s = self.shape;
        if let Some(tier) = self.direct {
            with_scratch(s.direct_scratch_len(), |scratch| {
                s.direct_image_add(tier, image, &self.weight, out, scratch)
            });
            return;
        }
        let per_group = s.og() * s.ohw();
        s.with_cols(image, |cols| {
            for g in 0..s.groups {
                let (w, c) = self.group_operands(cols, g);
                let dst = &mut out[g * per_group..(g + 1) * per_group];
                sgemm(dst, s.ohw(), w, c, true, self.parallel_gemm);
            }
        });
    }

    /// Group `g`'s gemm operands on the lowered path: its weight rows `(og × kg)` and its
    /// block of the patch matrix `cols` `(kg × ho·wo)`.
    fn group_operands<'b>(&'b self, cols: &'b [f32], g: usize) -> (Mat<'b>, Mat<'b>) {
        let s = self.shape;
        let (ohw, kg, og) = (s.ohw(), s.kg(), s.og());
        (
            Mat {
                data: &self.weight[g * og * kg..(g + 1) * og * kg],
                rows: og,
                cols: kg,
                rs: kg,
                cs: 1,
            },
            Mat {
                data: &cols[g * kg * ohw..(g + 1) * kg * ohw],
                rows: kg,
                cols: ohw,
                rs: ohw,
                cs: 1,
            },
        )
    }
}

/// The taps of a `kh × kw` kernel in patch-matrix row order: the middle row left and right
/// of the centre, the centre, the middle column above and below it, then the other taps
/// row-major. The taps of a centred 1×k, 1×1, k×1 and k×k kernel are then each one contiguous
/// block in the same order as their own kernel's (`patches.rs`), so a grown block's convs can
/// share one patch matrix and compute exactly what each computes on its own.
pub(crate) fn tap_order(kh: usize, kw: usize) -> Vec<(usize, usize)> {
    let (cy, cx) = (kh / 2, kw / 2);
    let mut order: Vec<(usize, usize)> = (0..kw).filter(|&x| x != cx).map(|x| (cy, x)).collect();
    order.push((cy, cx));
    order.extend((0..kh).filter(|&y| y != cy).map(|y| (y, cx)));
    for y in 0..kh {
        for x in 0..kw {
            if y != cy && x != cx {
                order.push((y, x));
            }
        }
    }
    order
}

/// The most image ranges a weight gradient is summed over separately before they are added
/// (in a fixed order). A constant, not the thread count, so that the result's rounding is the
/// same on every machine. Each range costs a weight-sized buffer, zeroed and added once per
/// step: with 8, vgg16 at width 0.25 (batch 128, 2 threads) spent 4-6 % more time in its
/// weight gradients than with the 2 ranges two threads used before; with 4 the difference was
/// below the measurement's noise (BENCHMARKS.md). With more threads than ranges, each range's
/// gemms are threaded.
const WEIGHT_GRAD_PARTIALS: usize = 4;

/// Floats of patch matrix the weight gradient lowers at once (1 MiB: half this machine's L2,
/// so im2col's output is still in L2 when the gemm packs it; 2-3 % off the weight gradient of
/// bench-cifar's 32×32 layers, whose whole patch matrix is 2.3 MB per image).
const PATCH_CHUNK_FLOATS: usize = 256 * 1024;

/// Input and weight gradients of a conv for the gradient `dz` of its output, each only for an
/// argument that carries a gradient (shared by the conv op and the fused conv ops).
pub(crate) fn conv_backward(
    shape: &ConvShape,
    x: &Tensor,
    weight: &Tensor,
    dz: &[f32],
    op: &'static str,
) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
    let dx = if x.track_op() {
        let dx = with_f32(weight, op, |w| shape.input_grad(w, dz))?;
        Some(tensor_like(dx, x.dims(), x)?)
    } else {
        None
    };
    let dw = if weight.track_op() {
        let dw = with_f32(x, op, |xs| shape.weight_grad(xs, dz))?;
        Some(tensor_like(dw, weight.dims(), weight)?)
    } else {
        None
    };
    Ok((dx, dw))
}

/// The candle custom op: arguments `(x, weight)`.
#[derive(Clone, Debug)]
pub(crate) struct Conv2dOp {
    pub conv: crate::ConvParams,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "dyrep-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let shape = self.conv.shape(l1.dims(), l2.dims())?;
        let x = slice_f32(s1, l1, self.name())?;
        let w = slice_f32(s2, l2, self.name())?;
        let y = shape.forward(x, w);
        Ok((
            CpuStorage::F32(y),
            Shape::from(shape.output_dims().to_vec()),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let shape = self.conv.shape(x.dims(), weight.dims())?;
        with_f32(dy, self.name(), |g| {
            conv_backward(&shape, x, weight, g, self.name())
        })?
    }
}

/// Reference conv through candle's own ops (any device): per-axis padding by hand.
pub(crate) fn conv2d_candle(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: (usize, usize),
    groups: usize,
) -> candle_core::Result<Tensor> {
    let (ph, pw) = padding;
    let (_, _, h, w) = x.dims4()?;
    let (_, _, kh, kw) = weight.dims4()?;
    // candle's conv backward takes the transposed conv's output padding from the rows alone and
    // uses it for the columns too, so the input gradient has the wrong width when the rows and
    // the columns leave different remainders under the stride. Rows and columns no window
    // reaches do not change the output: pad explicitly and drop them, leaving remainder 0 on
    // both axes (their gradient is zero either way).
    let rem = |n: usize, p: usize, k: usize| (n + 2 * p).checked_sub(k).map(|span| span % stride);
    let uneven = stride > 1 && rem(h, ph, kh) != rem(w, pw, kw);
    if ph == pw && !uneven {
        return x.conv2d(weight, ph, stride, 1, groups);
    }
    let mut xp = x.clone();
    if ph > 0 {
        xp = xp.pad_with_zeros(2, ph, ph)?;
    }
    if pw > 0 {
        xp = xp.pad_with_zeros(3, pw, pw)?;
    }
    if uneven {
        let used = |n: usize, p: usize, k: usize| n + 2 * p - rem(n, p, k).unwrap_or(0);
        xp = xp
            .narrow(2, 0, used(h, ph, kh))?
            .narrow(3, 0, used(w, pw, kw))?;
    }
    xp.conv2d(weight, 0, stride, 1, groups)
}

/// 2-D convolution of `x` (`[N, C, H, W]`) with `weight` (`[out, C/groups, kh, kw]`), zero
/// padding `(top/bottom, left/right)`, one stride for both axes, no bias.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: (usize, usize),
    groups: usize,
) -> Result<Tensor> {
    conv2d_on(Backend::for_tensor(x), x, weight, stride, padding, groups)
}

/// [`conv2d`] on a chosen backend.
pub fn conv2d_on(
    backend: Backend,
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: (usize, usize),
    groups: usize,
) -> Result<Tensor> {
    let x = &arg(x);
    let weight = &arg(weight);
    ConvShape::new(x.dims(), weight.dims(), stride, padding, groups)?;
    match backend {
        Backend::Own => {
            check_own(x, "conv2d")?;
            check_own(weight, "conv2d")?;
            let op = Conv2dOp {
                conv: ConvParams {
                    stride,
                    padding,
                    groups,
                },
            };
            Ok(x.contiguous()?.apply_op2(&weight.contiguous()?, op)?)
        }
        Backend::Candle => Ok(conv2d_candle(x, weight, stride, padding, groups)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{assert_same_bits, on_threads, test_values};

    /// candle's own conv backward gave an input gradient one column short when a stride-2
    /// conv's rows and columns leave different remainders (8×7, 11×9): the candle path now
    /// drops the rows and columns no window reaches, and its gradients equal the own kernels'.
    #[test]
    fn candle_conv_backward_on_inputs_whose_rows_and_columns_leave_different_remainders() {
        use candle_core::{Device, Var};
        for (h, w, k, pad) in [(8, 7, 3, 1), (11, 9, 1, 0), (7, 8, 3, 0), (9, 11, 5, 2)] {
            let x = Tensor::from_vec(test_values(2 * 3 * h * w, 1), (2, 3, h, w), &Device::Cpu)
                .unwrap();
            let wt = Tensor::from_vec(test_values(4 * 3 * k * k, 2), (4, 3, k, k), &Device::Cpu)
                .unwrap();
            let grads = |backend: Backend| {
                let (xv, wv) = (
                    Var::from_tensor(&x).unwrap(),
                    Var::from_tensor(&wt).unwrap(),
                );
                let y =
                    conv2d_on(backend, xv.as_tensor(), wv.as_tensor(), 2, (pad, pad), 1).unwrap();
                let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                (
                    flat(&y),
                    flat(g.get(xv.as_tensor()).unwrap()),
                    flat(g.get(wv.as_tensor()).unwrap()),
                )
            };
            let (own, candle) = (grads(Backend::Own), grads(Backend::Candle));
            for (what, a, b) in [
                ("y", &own.0, &candle.0),
                ("dx", &own.1, &candle.1),
                ("dw", &own.2, &candle.2),
            ] {
                assert_eq!(a.len(), b.len(), "{h}x{w} k{k}: {what}");
                let scale = a.iter().fold(1f32, |m, v| m.max(v.abs()));
                for (p, q) in a.iter().zip(b) {
                    assert!(
                        (p - q).abs() <= 1e-4 * scale,
                        "{h}x{w} k{k} {what}: {p} vs {q}"
                    );
                }
            }
        }
    }

    /// Every pass of a conv computes the same bits on 1 to 5 threads: the direct kernel
    /// (32×32 and 16×16 planes), batched small planes (4×4 and 2×2, a ragged last batch), a
    /// pointwise conv, stride 2 (col2im), grouped, depthwise; one image, fewer images than
    /// threads and many (more than the weight gradient's partial sums, not a multiple of them).
    #[test]
    fn conv_passes_do_not_depend_on_the_thread_count() {
        // Input (without the batch), weight, stride, padding, groups.
        type Case = ([usize; 3], [usize; 4], usize, (usize, usize), usize);
        let cases: [Case; 8] = [
            ([3, 32, 32], [16, 3, 3, 3], 1, (1, 1), 1),
            ([8, 16, 16], [32, 8, 3, 3], 1, (1, 1), 1),
            ([16, 4, 4], [16, 16, 3, 3], 1, (1, 1), 1),
            ([24, 2, 2], [8, 24, 3, 3], 1, (1, 1), 1),
            ([12, 6, 5], [7, 12, 1, 1], 1, (0, 0), 1),
            ([5, 9, 8], [6, 5, 3, 3], 2, (1, 1), 1),
            ([6, 7, 7], [4, 3, 3, 1], 1, (1, 0), 2),
            ([8, 6, 6], [8, 1, 3, 3], 1, (1, 1), 8),
        ];
        for (case, ([c, h, w], wshape, stride, pad, groups)) in cases.into_iter().enumerate() {
            for n in [1, 3, 37] {
                let s = ConvShape::new(&[n, c, h, w], &wshape, stride, pad, groups).unwrap();
                let seed = (case * 10 + n) as u64;
                let x = test_values(n * c * h * w, seed);
                let wt = test_values(wshape.iter().product(), seed ^ 1);
                let dy = test_values(n * s.out * s.ho * s.wo, seed ^ 2);
                let passes = || {
                    let stats = s.forward_stats(&x, &wt).1;
                    let stats: Vec<f32> = stats
                        .iter()
                        .flat_map(|st| [st.shift, st.mean_rel, st.var])
                        .collect();
                    [
                        s.forward(&x, &wt),
                        stats,
                        s.input_grad(&wt, &dy),
                        s.weight_grad(&x, &dy),
                    ]
                };
                let one = on_threads(1, passes);
                for t in 2..=5 {
                    let other = on_threads(t, passes);
                    for (p, name) in ["forward", "stats", "input grad", "weight grad"]
                        .iter()
                        .enumerate()
                    {
                        assert_same_bits(
                            &one[p],
                            &other[p],
                            &format!("case {case}, batch {n}, {name} on 1 and {t} threads"),
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn shape_rejects_bad_groups_and_small_inputs() {
        assert!(ConvShape::new(&[1, 6, 5, 5], &[4, 3, 3, 3], 1, (1, 1), 2).is_ok());
        assert!(ConvShape::new(&[1, 6, 5, 5], &[4, 2, 3, 3], 1, (1, 1), 2).is_err());
        assert!(ConvShape::new(&[1, 6, 5, 5], &[5, 3, 3, 3], 1, (1, 1), 2).is_err());
        assert!(ConvShape::new(&[1, 6, 2, 5], &[4, 6, 3, 3], 1, (0, 1), 1).is_err());
        assert!(ConvShape::new(&[1, 6, 5], &[4, 6, 3, 3], 1, (0, 1), 1).is_err());
    }

    /// `input_grad_add` adds exactly what `input_grad` returns, on every path: the direct
    /// kernel (32 channels out of the transposed conv, 16×16 plane), the lowered gemm (small
    /// plane), pointwise, col2im (stride 2), grouped, depthwise.
    #[test]
    fn input_grad_add_adds_the_input_gradient_on_every_path() {
        // Input, weight, stride, padding, groups.
        type Case = ([usize; 4], [usize; 4], usize, (usize, usize), usize);
        let cases: [Case; 7] = [
            ([4, 32, 16, 16], [24, 32, 3, 3], 1, (1, 1), 1),
            ([3, 5, 6, 7], [4, 5, 3, 3], 1, (1, 1), 1),
            ([4, 32, 16, 16], [16, 32, 1, 3], 1, (0, 1), 1),
            ([3, 6, 9, 8], [5, 6, 1, 1], 1, (0, 0), 1),
            ([2, 4, 9, 8], [6, 4, 3, 3], 2, (1, 1), 1),
            ([2, 4, 7, 7], [6, 2, 3, 3], 1, (1, 1), 2),
            ([2, 4, 7, 7], [4, 1, 3, 3], 1, (1, 1), 4),
        ];
        for (i, (x, w, stride, pad, groups)) in cases.into_iter().enumerate() {
            let s = ConvShape::new(&x, &w, stride, pad, groups).expect("test shape");
            let weight = test_values(s.weight_len(), 10 + i as u64);
            let dy = test_values(s.output_dims().iter().product(), 20 + i as u64);
            let start = test_values(x.iter().product(), 30 + i as u64);
            let mut dx = start.clone();
            s.input_grad_add(&weight, &dy, &mut dx);
            let g = s.input_grad(&weight, &dy);
            // col2im adds tap by tap onto what is there: the same sum in another order.
            let exact = s.transposed().is_some() || s.is_pointwise() || s.is_depthwise_direct();
            for (j, ((&got, &a), &b)) in dx.iter().zip(&start).zip(&g).enumerate() {
                let want = a + b;
                if exact {
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "case {i} [{j}]: {got} vs {a} + {b}"
                    );
                } else {
                    let tol = 1e-6 * (a.abs() + b.abs() + 1.0);
                    assert!(
                        (got - want).abs() <= tol,
                        "case {i} [{j}]: {got} vs {a} + {b}"
                    );
                }
            }
        }
        if crate::isa::active() >= Isa::Avx2 {
            let t = ConvShape::new(&[4, 24, 16, 16], &[32, 24, 3, 3], 1, (1, 1), 1).expect("shape");
            assert!(
                t.is_direct(),
                "case 0's transposed conv runs on the direct kernel"
            );
        }
    }

    /// Regression: the weight gradient lowers large patch matrices a few output rows at a time;
    /// the chunks (uneven ones included) must add up to the whole.
    #[test]
    fn weight_gradient_in_row_chunks_matches_the_definition() {
        // (x dims, weight dims, stride, padding): 2 chunks of 13 and 12 rows; 2 chunks at
        // stride 2 with per-axis padding.
        for (x_dims, w_dims, stride, padding) in [
            ([2, 64, 25, 25], [8, 64, 3, 3], 1, (1, 1)),
            ([3, 96, 49, 31], [4, 96, 3, 3], 2, (1, 0)),
        ] {
            let s = ConvShape::new(&x_dims, &w_dims, stride, padding, 1).unwrap();
            let chunks = (s.c * s.kh * s.kw * s.ohw()).div_ceil(PATCH_CHUNK_FLOATS);
            assert!(chunks >= 2, "{x_dims:?}: one chunk only");
            let x = crate::cpu::test_values(s.n * s.c * s.hw(), 1);
            let dy = crate::cpu::test_values(s.n * s.out * s.ohw(), 2);
            let dw = s.weight_grad(&x, &dy);
            for (o, c, ky, kx) in [(0, 0, 0, 0), (3, 17, 1, 2), (s.out - 1, s.c - 1, 2, 1)] {
                let mut want = 0.0f64;
                for n in 0..s.n {
                    for oy in 0..s.ho {
                        for ox in 0..s.wo {
                            let (iy, ix) = (oy * stride + ky, ox * stride + kx);
                            if iy < s.ph || ix < s.pw || iy - s.ph >= s.h || ix - s.pw >= s.w {
                                continue;
                            }
                            let xv = x[((n * s.c + c) * s.h + iy - s.ph) * s.w + ix - s.pw];
                            let g = dy[((n * s.out + o) * s.ho + oy) * s.wo + ox];
                            want += xv as f64 * g as f64;
                        }
                    }
                }
                let got = dw[((o * s.c + c) * s.kh + ky) * s.kw + kx] as f64;
                assert!(
                    (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "{x_dims:?} {o} {c} {ky} {kx}: {got} vs {want}"
                );
            }
        }
    }

    /// The conv epilogue's statistics are the separate pass's, bit for bit (images run in
    /// parallel, each plane summed relative to its own first value).
    #[test]
    fn forward_stats_equal_channel_stats_of_the_output() {
        for (x_dims, w_dims, padding) in [
            ([8, 16, 14, 14], [16, 16, 3, 3], (1, 1)),
            ([6, 3, 9, 11], [5, 3, 1, 3], (0, 1)),
        ] {
            let s = ConvShape::new(&x_dims, &w_dims, 1, padding, 1).unwrap();
            let x: Vec<f32> = crate::cpu::test_values(s.n * s.c * s.hw(), 3)
                .iter()
                .map(|v| v + 40.0)
                .collect();
            let w = crate::cpu::test_values(s.out * s.c * s.kh * s.kw, 4);
            let (y, stats) = s.forward_stats(&x, &w);
            assert_eq!(y, s.forward(&x, &w));
            let planes = Planes {
                n: s.n,
                c: s.out,
                hw: s.ohw(),
            };
            for (a, b) in stats.iter().zip(channel_stats(&y, planes)) {
                assert_eq!(
                    (a.shift.to_bits(), a.mean_rel.to_bits(), a.var.to_bits()),
                    (b.shift.to_bits(), b.mean_rel.to_bits(), b.var.to_bits())
                );
            }
        }
    }

    #[test]
    fn output_size_follows_per_axis_padding() {
        let s = ConvShape::new(&[2, 3, 7, 8], &[4, 3, 1, 3], 2, (0, 1), 1).unwrap();
        assert_eq!(s.output_dims(), [2, 4, 4, 4]);
    }
}
