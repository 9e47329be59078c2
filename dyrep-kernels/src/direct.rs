//! Direct stride-1 convolution with AVX-512 or AVX2 + FMA (conv forward and input gradient at
//! the machine's f32 rate; oneDNN's direct convs are what PyTorch is fast with).
//! im2col writes nine copies of the input per 3×3 conv and the gemm then packs them again; on
//! this machine that lowering cost a third of the conv time. Here the input image is copied
//! once into a zero-padded buffer `[c, hp, wp]` (consecutive rows share their zero padding:
//! `padded_dims`), and outputs are computed on the padded-width grid `[out, ho, wp]` (each
//! output row has `wp − wo` extra columns, computed and dropped):
//! there, kernel tap `(ky, kx)` of every output is the input at the output's own flat index
//! plus `ky·wp + kx`, so a block of 48 consecutive outputs reads 48 consecutive inputs per tap
//! and channel — three vector loads, no lowering. The AVX-512 register block is 48 outputs × 8
//! output channels (24 of the 32 vector registers as accumulators; 3 loads and 8 broadcasts per
//! 24 FMAs, as a gemm microkernel). AVX2 has 16 registers: its block is 16 outputs (two
//! 8-float vectors) × 4 channels (8 accumulators, 2 loads and 4 broadcasts per 8 FMAs), run
//! twice per packed group of 8 channels, so both tiers share the weight packing (a 24 × 4
//! block needs all 16 registers, and the spills made it 2× slower: BENCHMARKS.md). Used for
//! stride-1 convs with one group and a multiple of 8 output channels on CPUs with AVX2 + FMA
//! (`crate::isa`), for the forward and (as the forward of the flipped kernel) the input
//! gradient; `DYREP_CONV_DIRECT=0` turns it off. The weight gradient stays on im2col + gemm.

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use crate::conv::ConvShape;
use crate::isa::{self, Isa};

/// Output channels per packed weight group (and per AVX-512 register block).
const NR: usize = 8;
/// Vectors of 16 outputs per AVX-512 register block.
const MRV: usize = 3;
/// Output channels per AVX2 register block (two per packed group).
const NR_AVX2: usize = 4;
/// Vectors of 8 outputs per AVX2 register block.
const MRV_AVX2: usize = 2;
/// Floats read past the last padded plane by the last block's taps (at most `kw − 1`, and
/// whole vectors are loaded): kept allocated and zero.
const TAIL: usize = 64;

/// The tier the direct kernel runs on: `None` when the active tier has no direct kernel or
/// `DYREP_CONV_DIRECT=0` turns it off.
pub(crate) fn direct_tier() -> Option<Isa> {
    static WANTED: OnceLock<bool> = OnceLock::new();
    let wanted =
        *WANTED.get_or_init(|| std::env::var("DYREP_CONV_DIRECT").map_or(true, |v| v != "0"));
    let tier = isa::active();
    (wanted && tier >= Isa::Avx2).then_some(tier)
}

/// Outputs per register block on a tier.
fn block_outputs(tier: Isa) -> usize {
    match tier {
        Isa::Avx512 => MRV * 16,
        _ => MRV_AVX2 * 8,
    }
}

impl ConvShape {
    /// Whether this conv runs on the direct kernel: stride 1, one group, whole packed groups
    /// of output channels, and a plane large enough that the padded-width grid, rounded up to
    /// whole register blocks (48 outputs with AVX-512, 24 with AVX2), computes at most 30 %
    /// more outputs than there are (AVX-512, 14×14 with padding 1: 22 %, measured 1.25× faster
    /// than im2col + gemm; 8×8: 50 %, measured 1.4× slower — BENCHMARKS.md).
    pub(crate) fn is_direct(&self) -> bool {
        self.direct_path().is_some()
    }

    /// The tier this conv's direct kernel runs on, `None` where it runs lowered
    /// ([`Self::is_direct`]).
    pub(crate) fn direct_path(&self) -> Option<Isa> {
        let tier = direct_tier()?;
        (self.fits_direct() && self.direct_grid_pays(tier)).then_some(tier)
    }

    /// Whether the direct kernels can compute this conv at all.
    pub(crate) fn fits_direct(&self) -> bool {
        self.stride == 1
            && self.groups == 1
            && self.out.is_multiple_of(NR)
            && !self.is_pointwise()
            && self.kw <= TAIL
            && self.parallel_images()
    }

    /// Whether the padded-width grid in whole register blocks of `tier` computes at most 30 %
    /// more outputs than there are.
    fn direct_grid_pays(&self, tier: Isa) -> bool {
        let (_, wp) = self.padded_dims();
        let block = block_outputs(tier);
        let computed = (self.ho * wp).div_ceil(block) * block;
        computed * 10 <= self.ohw() * 13
    }

    /// Whether the forward runs on a direct kernel (AVX-512 or AVX2) on this machine at the
    /// active tier (else im2col + gemm): for tests and diagnostics.
    pub fn runs_direct(&self) -> bool {
        self.is_direct()
    }

    /// The padded planes: `ph` zero rows above and below; rows `g = max(pw, kw − 1 − pw)`
    /// floats longer than the input's, laid out as `pw` zeros, the row, `g − pw` zeros. One run
    /// of `g` zeros then separates consecutive rows (and planes), which is all that the taps
    /// reaching past either side of a row need: the left padding of a row is the right padding
    /// of the row above. Each output row computes `g` extra columns (32 × 32, 3 × 3: one, not
    /// two, so 22 blocks of 48 instead of 23).
    fn padded_dims(&self) -> (usize, usize) {
        // (The last term keeps every output row inside a padded row, `wo ≤ wp`, for padding
        // as wide as the kernel.)
        let gap = self
            .pw
            .max((self.kw - 1).saturating_sub(self.pw))
            .max((2 * self.pw + 1).saturating_sub(self.kw));
        (self.h + 2 * self.ph, self.w + gap)
    }

    /// Scratch floats per image: the padded input (with its tail) and the padded-width output.
    pub(crate) fn direct_scratch_len(&self) -> usize {
        let (hp, wp) = self.padded_dims();
        self.c * hp * wp + TAIL + self.out * self.ho * wp
    }

    /// The weight `[out, c, kh, kw]` as register blocks `[out/8, c, kh·kw, 8]`.
    pub(crate) fn direct_weight(&self, weight: &[f32]) -> Vec<f32> {
        let (c, taps) = (self.c, self.kh * self.kw);
        let mut packed = vec![0.0f32; self.weight_len()];
        for o in 0..self.out {
            let (block, lane) = (o / NR, o % NR);
            for ch in 0..c {
                for t in 0..taps {
                    packed[((block * c + ch) * taps + t) * NR + lane] =
                        weight[(o * c + ch) * taps + t];
                }
            }
        }
        packed
    }

    /// One image `[c, h, w]` → `[out, ho, wp]` (each output row followed by `wp − wo` extra
    /// columns) with the packed weight on `tier`'s kernel, in `scratch` (`direct_scratch_len`
    /// floats); returns that output grid and `wp`.
    fn direct_grid<'s>(
        &self,
        tier: Isa,
        image: &[f32],
        packed: &[f32],
        scratch: &'s mut [f32],
    ) -> (&'s [f32], usize) {
        let (hp, wp) = self.padded_dims();
        let plane = hp * wp;
        let (xp, yp) = scratch.split_at_mut(self.c * plane + TAIL);
        // The padded input: zero borders, rows copied in.
        for (ch, dst) in xp[..self.c * plane].chunks_exact_mut(plane).enumerate() {
            let src = &image[ch * self.hw()..(ch + 1) * self.hw()];
            dst[..self.ph * wp].fill(0.0);
            dst[(self.ph + self.h) * wp..].fill(0.0);
            for iy in 0..self.h {
                let row = &mut dst[(self.ph + iy) * wp..(self.ph + iy + 1) * wp];
                row[..self.pw].fill(0.0);
                row[self.pw..self.pw + self.w]
                    .copy_from_slice(&src[iy * self.w..(iy + 1) * self.w]);
                row[self.pw + self.w..].fill(0.0);
            }
        }
        xp[self.c * plane..].fill(0.0);
        let grid = self.ho * wp;
        assert!(
            packed.len() >= self.weight_len() && yp.len() >= self.out * grid,
            "direct conv buffers"
        );
        let args = KernelArgs {
            x: xp.as_ptr(),
            c: self.c,
            plane,
            wp,
            kh: self.kh,
            kw: self.kw,
            w: packed.as_ptr(),
            out: self.out,
            grid,
            y: yp.as_mut_ptr(),
        };
        // The kernels read `xp` at most at `(c − 1)·plane + grid − 1 + (kh − 1)·wp + kw − 1 <
        // c·plane + kw ≤ xp.len()` (grid = (hp − kh + 1)·wp; whole vectors past `grid` stay
        // within the `TAIL`), `packed` within `weight_len`, and write `yp` within `out·grid`.
        match tier {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if Isa::Avx512.supported() => {
                // SAFETY: AVX-512F is available; the buffers as stated above.
                unsafe { direct_kernel_avx512(&args) }
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx2 if Isa::Avx2.supported() => {
                // SAFETY: AVX2 + FMA are available; the buffers as stated above.
                unsafe { direct_kernel_avx2(&args) }
            }
            _ => direct_kernel_portable(&args),
        }
        (&yp[..self.out * grid], wp)
    }

    /// One image `[c, h, w]` → `[out, ho, wo]` with the packed weight on `tier`'s kernel, in
    /// `scratch` (`direct_scratch_len` floats).
    pub(crate) fn direct_image(
        &self,
        tier: Isa,
        image: &[f32],
        packed: &[f32],
        out: &mut [MaybeUninit<f32>],
        scratch: &mut [f32],
    ) {
        self.direct_rows(tier, image, packed, out, scratch, |d, v| {
            d.write(v);
        });
    }

    /// [`Self::direct_image`], adding the outputs into `out` instead of writing them.
    pub(crate) fn direct_image_add(
        &self,
        tier: Isa,
        image: &[f32],
        packed: &[f32],
        out: &mut [f32],
        scratch: &mut [f32],
    ) {
        self.direct_rows(tier, image, packed, out, scratch, |d, v| *d += v);
    }

    /// The output grid's rows without their extra columns, each value handed to `put` with
    /// its place in `out` (`[out, ho, wo]`).
    fn direct_rows<T>(
        &self,
        tier: Isa,
        image: &[f32],
        packed: &[f32],
        out: &mut [T],
        scratch: &mut [f32],
        put: impl Fn(&mut T, f32),
    ) {
        let (grid, wp) = self.direct_grid(tier, image, packed, scratch);
        let (ho, wo) = (self.ho, self.wo);
        for (dst, src) in out
            .chunks_exact_mut(ho * wo)
            .zip(grid.chunks_exact(ho * wp))
        {
            for oy in 0..ho {
                let row = &mut dst[oy * wo..(oy + 1) * wo];
                for (d, &v) in row.iter_mut().zip(&src[oy * wp..oy * wp + wo]) {
                    put(d, v);
                }
            }
        }
    }
}

/// The operands of a direct kernel: the padded input `x` (`c` planes of `plane` floats, rows
/// of `wp`), the packed weight `w` (`[out/8, c, kh·kw, 8]`) and the output grid `y`
/// (`[out, grid]`).
struct KernelArgs {
    x: *const f32,
    c: usize,
    plane: usize,
    wp: usize,
    kh: usize,
    kw: usize,
    w: *const f32,
    out: usize,
    grid: usize,
    y: *mut f32,
}

/// `y[o, p] = Σ_{c, ky, kx} w[o, c, ky, kx] · x[c, p + ky·wp + kx]` for `p < grid`, one
/// output at a time, in the vector kernels' order of summation (channel, then tap). Only
/// reached when a tier cap changes between `is_direct` and the kernel call.
fn direct_kernel_portable(a: &KernelArgs) {
    let taps = a.kh * a.kw;
    for o in 0..a.out {
        let (block, lane) = (o / NR, o % NR);
        for p in 0..a.grid {
            let mut acc = 0.0f32;
            for ch in 0..a.c {
                for ky in 0..a.kh {
                    for kx in 0..a.kw {
                        let t = ky * a.kw + kx;
                        // SAFETY: the caller's buffer bounds (see `direct_grid`).
                        let (wv, xv) = unsafe {
                            (
                                *a.w.add(((block * a.c + ch) * taps + t) * NR + lane),
                                *a.x.add(ch * a.plane + p + ky * a.wp + kx),
                            )
                        };
                        acc += wv * xv;
                    }
                }
            }
            // SAFETY: `o·grid + p < out·grid`.
            unsafe { *a.y.add(o * a.grid + p) = acc };
        }
    }
}

/// [`direct_kernel_avx512`] in AVX2 + FMA: register blocks of 16 outputs (two 8-float
/// vectors) × 4 channels, each packed group of 8 channels in two halves; the grid's last
/// block uses masked loads and stores.
///
/// # Safety
/// AVX2 and FMA must be available; the buffers as in [`direct_kernel_avx512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn direct_kernel_avx2(a: &KernelArgs) {
    use std::arch::x86_64::*;
    const V: usize = 8;
    const MV: usize = MRV_AVX2;
    const NC: usize = NR_AVX2;
    let mut p0 = 0;
    while p0 < a.grid {
        let rem = a.grid - p0;
        for group in 0..a.out / NR {
            for half in 0..NR / NC {
                let block = (p0, group * NR + half * NC);
                if rem >= MV * V {
                    // SAFETY: as this function's contract; whole vectors inside the grid.
                    unsafe { avx2_block::<false>(a, block, [_mm256_setzero_si256(); MV]) };
                } else {
                    // Lane masks of the last block's vectors (sign bit set = lane used).
                    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                    let masks: [__m256i; MV] = std::array::from_fn(|i| {
                        let used = rem.saturating_sub(i * V).min(V) as i32;
                        _mm256_cmpgt_epi32(_mm256_set1_epi32(used), lanes)
                    });
                    // SAFETY: as this function's contract; masked lanes are neither read nor
                    // written.
                    unsafe { avx2_block::<true>(a, block, masks) };
                }
            }
        }
        p0 += MV * V;
    }
}

/// One AVX2 register block: outputs `p0 .. p0 + 16` of channels `o0 .. o0 + 4` (`o0` a
/// multiple of 4), through `masks` when `MASKED` (the grid's last block), with whole vectors
/// otherwise. A separate instantiation per case keeps the masks out of the registers the full
/// blocks use (8 accumulators, 2 inputs, 1 broadcast weight).
///
/// # Safety
/// AVX2 and FMA must be available; the buffers as in [`direct_kernel_avx512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn avx2_block<const MASKED: bool>(
    a: &KernelArgs,
    (p0, o0): (usize, usize),
    masks: [std::arch::x86_64::__m256i; MRV_AVX2],
) {
    const MRV: usize = MRV_AVX2;
    use std::arch::x86_64::*;
    const V: usize = 8;
    let taps = a.kh * a.kw;
    let (group, half) = (o0 / NR, o0 % NR);
    let mut acc = [[_mm256_setzero_ps(); NR_AVX2]; MRV];
    // SAFETY: every pointer stays inside the buffers of the caller's contract.
    unsafe {
        let mut wptr = a.w.add(group * a.c * taps * NR + half);
        for ch in 0..a.c {
            let base = a.x.add(ch * a.plane + p0);
            for ky in 0..a.kh {
                let row = base.add(ky * a.wp);
                for kx in 0..a.kw {
                    let src = row.add(kx);
                    let xv: [__m256; MRV] = std::array::from_fn(|i| {
                        if MASKED {
                            _mm256_maskload_ps(src.add(V * i), masks[i])
                        } else {
                            _mm256_loadu_ps(src.add(V * i))
                        }
                    });
                    for j in 0..NR_AVX2 {
                        let wv = _mm256_broadcast_ss(&*wptr.add(j));
                        for (row, &v) in acc.iter_mut().zip(&xv) {
                            row[j] = _mm256_fmadd_ps(v, wv, row[j]);
                        }
                    }
                    wptr = wptr.add(NR);
                }
            }
        }
        for j in 0..NR_AVX2 {
            let dst = a.y.add((o0 + j) * a.grid + p0);
            for (i, (row, &mask)) in acc.iter().zip(&masks).enumerate() {
                if MASKED {
                    _mm256_maskstore_ps(dst.add(V * i), mask, row[j]);
                } else {
                    _mm256_storeu_ps(dst.add(V * i), row[j]);
                }
            }
        }
    }
}

/// `y[o, p] = Σ_{c, ky, kx} w[o, c, ky, kx] · x[c, p + ky·wp + kx]` for `p < grid`, register
/// blocks of 48 outputs × 8 channels; the last block of each channel group uses masked loads
/// and stores.
///
/// # Safety
/// AVX-512F must be available; `x` must hold `(c − 1)·plane + grid + (kh − 1)·wp + kw` floats,
/// `w` `out·c·kh·kw` and `y` `out·grid`; `out` a multiple of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn direct_kernel_avx512(a: &KernelArgs) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        use std::arch::x86_64::*;
        let (x, c, plane, wp, kh, kw, w, out, grid, y) =
            (a.x, a.c, a.plane, a.wp, a.kh, a.kw, a.w, a.out, a.grid, a.y);
        let taps = kh * kw;
        let mut p0 = 0;
        while p0 < grid {
            let rem = grid - p0;
            let full = rem >= MRV * 16;
            let mut masks = [0u16; MRV];
            for (i, m) in masks.iter_mut().enumerate() {
                let start = i * 16;
                *m = if rem >= start + 16 {
                    0xffff
                } else if rem > start {
                    ((1u32 << (rem - start)) - 1) as u16
                } else {
                    0
                };
            }
            for block in 0..out / NR {
                let mut acc = [[_mm512_setzero_ps(); NR]; MRV];
                let mut wptr = w.add(block * c * taps * NR);
                for ch in 0..c {
                    let base = x.add(ch * plane + p0);
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let src = base.add(ky * wp + kx);
                            let mut xv = [_mm512_setzero_ps(); MRV];
                            for (i, v) in xv.iter_mut().enumerate() {
                                *v = if full {
                                    _mm512_loadu_ps(src.add(16 * i))
                                } else {
                                    _mm512_maskz_loadu_ps(masks[i], src.add(16 * i))
                                };
                            }
                            for j in 0..NR {
                                let wv = _mm512_set1_ps(*wptr.add(j));
                                for (row, &v) in acc.iter_mut().zip(&xv) {
                                    row[j] = _mm512_fmadd_ps(v, wv, row[j]);
                                }
                            }
                            wptr = wptr.add(NR);
                        }
                    }
                }
                for j in 0..NR {
                    let dst = y.add((block * NR + j) * grid + p0);
                    for (i, a) in acc.iter().enumerate() {
                        if full {
                            _mm512_storeu_ps(dst.add(16 * i), a[j]);
                        } else {
                            _mm512_mask_storeu_ps(dst.add(16 * i), masks[i], a[j]);
                        }
                    }
                }
            }
            p0 += MRV * 16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cpu::test_values as values;

    /// `max |got − want|` relative to the largest sum of the terms' magnitudes `Σ|w·x|` of any
    /// output (what f32 rounding of a different summation order is proportional to).
    fn check(s: &ConvShape, tier: Isa, x: &[f32], w: &[f32], what: &str) {
        let got = s.forward_direct(tier, x, w);
        let want = s.forward_lowered(x, w);
        let abs_x: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        let abs_w: Vec<f32> = w.iter().map(|v| v.abs()).collect();
        let scale = s
            .forward_lowered(&abs_x, &abs_w)
            .into_iter()
            .fold(1e-3f32, f32::max);
        let err = got
            .iter()
            .zip(&want)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            err <= 1e-5 * scale,
            "{tier} {what}: error {err:e}, scale {scale}"
        );
    }

    #[test]
    fn direct_conv_matches_the_lowered_conv_on_awkward_shapes() {
        // Every tier the CPU has, the portable fallback included (whatever `DYREP_ISA` says:
        // the tier is passed explicitly).
        // Odd/even, non-square, planes smaller than one block of 48, 1×k / k×1 / 5×5 kernels,
        // padding 0 to k−1 per axis (and as wide as the kernel), 8 and 16 output channels, a
        // single input channel.
        type Case = ([usize; 4], usize, (usize, usize), (usize, usize));
        let cases: [Case; 12] = [
            ([2, 3, 12, 11], 8, (1, 1), (1, 1)),
            ([2, 3, 9, 14], 8, (1, 3), (0, 3)),
            ([2, 2, 13, 10], 16, (3, 2), (1, 2)),
            ([3, 5, 7, 6], 8, (3, 3), (1, 1)),
            ([2, 1, 28, 28], 16, (3, 3), (1, 1)),
            ([4, 3, 9, 13], 8, (1, 3), (0, 1)),
            ([2, 4, 11, 5], 16, (3, 1), (1, 0)),
            ([3, 2, 10, 9], 8, (5, 5), (2, 2)),
            ([2, 3, 6, 4], 8, (3, 3), (0, 0)),
            ([2, 2, 5, 8], 8, (3, 3), (2, 2)),
            ([5, 3, 3, 3], 16, (3, 3), (1, 1)),
            ([2, 6, 17, 15], 24, (5, 3), (1, 2)),
        ];
        for tier in Isa::supported_tiers() {
            for (i, (x, out, k, pad)) in cases.into_iter().enumerate() {
                let s = ConvShape::new(&x, &[out, x[1], k.0, k.1], 1, pad, 1).expect("shape");
                let xs = values(x.iter().product(), 1 + i as u64);
                let ws = values(s.weight_len(), 100 + i as u64);
                let what = format!("case {i} {x:?} k {k:?} pad {pad:?}");
                check(&s, tier, &xs, &ws, &what);
            }
        }
    }

    #[test]
    fn small_planes_stay_on_the_lowered_path() {
        // 8×8 with padding 1: the padded-width grid rounds to 96 outputs per 64 in AVX-512
        // blocks of 48, to 80 in AVX2 blocks of 16.
        let s = ConvShape::new(&[4, 8, 8, 8], &[16, 8, 3, 3], 1, (1, 1), 1).expect("shape");
        assert!(!s.direct_grid_pays(Isa::Avx512) && s.direct_grid_pays(Isa::Avx2));
        assert_eq!(s.is_direct(), direct_tier() == Some(Isa::Avx2));
        let s = ConvShape::new(&[4, 8, 28, 28], &[16, 8, 3, 3], 1, (1, 1), 1).expect("shape");
        assert_eq!(s.is_direct(), direct_tier().is_some());
        // Stride 2, groups and a channel count off the register block never are.
        for (w, stride, groups) in [
            ([16, 8, 3, 3], 2, 1),
            ([16, 4, 3, 3], 1, 2),
            ([12, 8, 3, 3], 1, 1),
        ] {
            let s = ConvShape::new(&[4, 8, 28, 28], &w, stride, (1, 1), groups).expect("shape");
            assert!(!s.is_direct(), "{w:?} stride {stride} groups {groups}");
        }
    }
}
