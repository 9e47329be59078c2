//! Direct depthwise convolution on the CPU (a grouped path that does not loop over groups
//! with separate convs): one input channel per output channel (groups = C =
//! out), any kernel size, stride and per-axis padding. Through im2col + gemm such a conv is one
//! gemm of depth k² per channel; here every (image, channel) plane is a sum of k² shifted,
//! scaled copies of the input plane — for a stride-1 "same" conv one axpy over the whole
//! flattened plane per kernel tap (then the few values whose column wrapped into the next row
//! are taken out again), otherwise an axpy per tap and output row. Forward and input gradient,
//! parallel over planes; the weight gradient stays on im2col + gemm, which measured faster.

use rayon::prelude::*;

use crate::conv::ConvShape;

impl ConvShape {
    /// Whether the direct depthwise kernels apply: one input channel per output channel.
    pub(crate) fn is_depthwise_direct(&self) -> bool {
        self.groups == self.c && self.out == self.c && self.groups > 1
    }

    /// The output columns `[lo, hi)` whose input column `ox·stride + kx − pw` lies in the row.
    fn dw_cols(&self, kx: usize) -> (usize, usize) {
        let first = self.pw.saturating_sub(kx).div_ceil(self.stride);
        let lo = first.min(self.wo);
        // ox·s + kx − pw ≤ w − 1  ⇔  ox ≤ (w − 1 + pw − kx) / s
        let hi = match (self.w + self.pw).checked_sub(kx + 1) {
            Some(last) => (last / self.stride + 1).min(self.wo),
            None => 0,
        };
        (lo, hi.max(lo))
    }

    /// Input row for output row `oy` and kernel row `ky`, if inside the plane.
    fn dw_row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.stride + ky)
            .checked_sub(self.ph)
            .filter(|&iy| iy < self.h)
    }

    /// Stride 1 with "same" output size: every kernel tap is one shifted axpy over the whole
    /// flattened plane.
    fn dw_same_size(&self) -> bool {
        self.stride == 1 && self.ho == self.h && self.wo == self.w && self.w > 0
    }

    /// For tap `(ky, kx)` of a same-size plane: the flat offset from output to input index, the
    /// output range whose input index lies in the plane, and the columns whose input column
    /// wrapped into the neighbouring row (`[0, a)` or `[w − a, w)`).
    fn dw_tap(&self, ky: usize, kx: usize) -> (isize, usize, usize, std::ops::Range<usize>) {
        let (w, hw) = (self.w as isize, (self.h * self.w) as isize);
        let dx = kx as isize - self.pw as isize;
        let shift = (ky as isize - self.ph as isize) * w + dx;
        let lo = (-shift).clamp(0, hw) as usize;
        let hi = (hw - shift).clamp(0, hw) as usize;
        let wrapped = if dx < 0 {
            0..((-dx) as usize).min(self.w)
        } else {
            self.w.saturating_sub(dx as usize)..self.w
        };
        (shift, lo, hi.max(lo), wrapped)
    }

    /// Adds every kernel tap of one channel's weights `wc` between an output plane and an input
    /// plane: the forward (`dst` = output, `src` = input, `out[o] += w·in[i]`) or, `transposed`,
    /// the input gradient (`dst` = input gradient, `src` = output gradient, `in[i] += w·out[o]`).
    fn dw_plane(&self, dst: &mut [f32], src: &[f32], wc: &[f32], transposed: bool) {
        // (dst index, src index) of an (output, input) pair.
        let pick = |o: usize, i: usize| if transposed { (i, o) } else { (o, i) };
        let axpy = |dst: &mut [f32], src: &[f32], wv: f32| {
            for (d, &v) in dst.iter_mut().zip(src) {
                *d += wv * v;
            }
        };
        for ky in 0..self.kh {
            for kx in 0..self.kw {
                let wv = wc[ky * self.kw + kx];
                if self.dw_same_size() {
                    let (shift, lo, hi, wrapped) = self.dw_tap(ky, kx);
                    if hi == lo {
                        // The tap lies wholly outside the plane.
                        continue;
                    }
                    let (d0, s0) = pick(lo, (lo as isize + shift) as usize);
                    axpy(&mut dst[d0..d0 + (hi - lo)], &src[s0..s0 + (hi - lo)], wv);
                    // Columns whose input column left the row read the neighbouring row: take
                    // them out again.
                    for oy in 0..self.h {
                        for ox in wrapped.clone() {
                            let k = oy * self.w + ox;
                            if (lo..hi).contains(&k) {
                                let (d, s) = pick(k, (k as isize + shift) as usize);
                                dst[d] -= wv * src[s];
                            }
                        }
                    }
                    continue;
                }
                let (lo, hi) = self.dw_cols(kx);
                if hi == lo {
                    continue;
                }
                for oy in 0..self.ho {
                    let Some(iy) = self.dw_row(oy, ky) else {
                        continue;
                    };
                    let (o0, i0) = (
                        oy * self.wo + lo,
                        iy * self.w + lo * self.stride + kx - self.pw,
                    );
                    if self.stride == 1 {
                        let (d0, s0) = pick(o0, i0);
                        axpy(&mut dst[d0..d0 + (hi - lo)], &src[s0..s0 + (hi - lo)], wv);
                    } else {
                        for j in 0..hi - lo {
                            let (d, s) = pick(o0 + j, i0 + j * self.stride);
                            dst[d] += wv * src[s];
                        }
                    }
                }
            }
        }
    }

    /// Forward: `y[n, c] = Σ_{ky,kx} w[c, ky, kx] · x[n, c] shifted`.
    pub(crate) fn depthwise_forward(&self, x: &[f32], weight: &[f32]) -> Vec<f32> {
        let (hw, ohw, kk) = (self.h * self.w, self.ho * self.wo, self.kh * self.kw);
        let mut y = vec![0.0f32; self.n * self.c * ohw];
        y.par_chunks_mut(ohw.max(1))
            .zip(x.par_chunks(hw.max(1)))
            .enumerate()
            .for_each(|(plane, (yp, xp))| {
                self.dw_plane(yp, xp, &weight[(plane % self.c) * kk..][..kk], false)
            });
        y
    }

    /// Input gradient: the transpose of [`Self::depthwise_forward`].
    pub(crate) fn depthwise_input_grad(&self, weight: &[f32], dy: &[f32]) -> Vec<f32> {
        let (hw, ohw, kk) = (self.h * self.w, self.ho * self.wo, self.kh * self.kw);
        let mut dx = vec![0.0f32; self.n * self.c * hw];
        dx.par_chunks_mut(hw.max(1))
            .zip(dy.par_chunks(ohw.max(1)))
            .enumerate()
            .for_each(|(plane, (dxp, gp))| {
                self.dw_plane(dxp, gp, &weight[(plane % self.c) * kk..][..kk], true)
            });
        dx
    }
}
