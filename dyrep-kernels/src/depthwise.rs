//! Direct depthwise convolution on the CPU (issue 5: "a grouped/depthwise path that does not
//! loop over groups with separate convs"): one input channel per output channel (groups = C =
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

    /// `dst[k] += wv · src[k + shift]` over the tap's range, less the wrapped columns.
    fn dw_axpy_plane(&self, dst: &mut [f32], src: &[f32], wv: f32, ky: usize, kx: usize) {
        let (shift, lo, hi, wrapped) = self.dw_tap(ky, kx);
        if hi == lo {
            // The tap lies wholly outside the plane (kernel taller or wider than the input).
            return;
        }
        let s0 = (lo as isize + shift) as usize;
        let src_block = &src[s0..s0 + (hi - lo)];
        for (d, &v) in dst[lo..hi].iter_mut().zip(src_block) {
            *d += wv * v;
        }
        // The columns whose input column left the row read the neighbouring row: take them out.
        for oy in 0..self.h {
            for ox in wrapped.clone() {
                let k = oy * self.w + ox;
                if (lo..hi).contains(&k) {
                    dst[k] -= wv * src[(k as isize + shift) as usize];
                }
            }
        }
    }

    /// The transpose of [`Self::dw_axpy_plane`]: `dst[k + shift] += wv · src[k]`.
    fn dw_axpy_plane_transposed(
        &self,
        dst: &mut [f32],
        src: &[f32],
        wv: f32,
        ky: usize,
        kx: usize,
    ) {
        let (shift, lo, hi, wrapped) = self.dw_tap(ky, kx);
        if hi == lo {
            // The tap lies wholly outside the plane (kernel taller or wider than the input).
            return;
        }
        let s0 = (lo as isize + shift) as usize;
        for (d, &v) in dst[s0..s0 + (hi - lo)].iter_mut().zip(&src[lo..hi]) {
            *d += wv * v;
        }
        for oy in 0..self.h {
            for ox in wrapped.clone() {
                let k = oy * self.w + ox;
                if (lo..hi).contains(&k) {
                    dst[(k as isize + shift) as usize] -= wv * src[k];
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
                let wc = &weight[(plane % self.c) * kk..][..kk];
                for ky in 0..self.kh {
                    for kx in 0..self.kw {
                        let wv = wc[ky * self.kw + kx];
                        if self.dw_same_size() {
                            self.dw_axpy_plane(yp, xp, wv, ky, kx);
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
                            let out = &mut yp[oy * self.wo + lo..oy * self.wo + hi];
                            let src = &xp[iy * self.w..(iy + 1) * self.w];
                            if self.stride == 1 {
                                let src = &src[lo + kx - self.pw..hi + kx - self.pw];
                                for (o, &v) in out.iter_mut().zip(src) {
                                    *o += wv * v;
                                }
                            } else {
                                for (i, o) in out.iter_mut().enumerate() {
                                    *o += wv * src[(lo + i) * self.stride + kx - self.pw];
                                }
                            }
                        }
                    }
                }
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
                let wc = &weight[(plane % self.c) * kk..][..kk];
                for ky in 0..self.kh {
                    for kx in 0..self.kw {
                        let wv = wc[ky * self.kw + kx];
                        if self.dw_same_size() {
                            self.dw_axpy_plane_transposed(dxp, gp, wv, ky, kx);
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
                            let g = &gp[oy * self.wo + lo..oy * self.wo + hi];
                            let dst = &mut dxp[iy * self.w..(iy + 1) * self.w];
                            if self.stride == 1 {
                                let dst = &mut dst[lo + kx - self.pw..hi + kx - self.pw];
                                for (d, &v) in dst.iter_mut().zip(g) {
                                    *d += wv * v;
                                }
                            } else {
                                for (i, &v) in g.iter().enumerate() {
                                    dst[(lo + i) * self.stride + kx - self.pw] += wv * v;
                                }
                            }
                        }
                    }
                }
            });
        dx
    }
}
