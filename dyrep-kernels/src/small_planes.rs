//! Several images per gemm for lowered convs on small planes (docs/KERNELS.md): VGG-16's
//! last stages on 32×32 inputs run on 4×4 and 2×2 planes, where one image's patch matrix has
//! 4-16 columns — too few for the gemm's register blocks, which then spend their time packing
//! and in edge cases (11 GFLOP/s on 2×2 planes where the 16×16 layers of the same model reach
//! 60). Here the patch matrices of G images sit side by side as one `[c·kh·kw, G·ho·wo]`
//! matrix, so one gemm covers G images; its `[out, G·ho·wo]` product is scattered back to
//! `[n, out, ho, wo]`. The weight gradient gathers the G images' output gradients the same way
//! and makes one gemm of depth G·ho·wo instead of G gemms of depth ho·wo. Each output is still
//! the same dot product over the same patch values (forward and input gradient) and the
//! weight gradient the same sum over images and positions, in another order.
//! `DYREP_BATCH_SMALL_PLANES=0` turns it off (for A/B runs).

use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::OnceLock;

use rayon::prelude::*;

use crate::conv::ConvShape;
use crate::cpu::{assume_init_vec, sgemm, sgemm_strided, threads, uninit_vec, with_scratch, Mat};

/// Planes with fewer outputs than this (5×5 and smaller) are lowered several images at a time.
/// Measured: 4×4 and 2×2 planes gain 1.3-2.4× per conv; 7×7 planes (49 outputs) came out even,
/// some passes faster and some slower, and 8×8 planes already fill the gemm's blocks.
const SMALL_PLANE: usize = 32;
/// The gemm columns a batch of images aims for.
const BATCH_COLUMNS: usize = 128;

/// Whether small planes are batched (`DYREP_BATCH_SMALL_PLANES=0` turns it off).
fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("DYREP_BATCH_SMALL_PLANES").map_or(true, |v| v != "0"))
}

impl ConvShape {
    /// Images per gemm where this conv is lowered (the direct kernel, where it runs, goes
    /// first): `Some(G ≥ 2)` with one group on planes of fewer than 32 outputs, when images run
    /// in parallel (G is at most half the batch, so two threads share it); `None`: one image per
    /// gemm. It depends only on the batch, the plane and the groups — not on the thread count,
    /// since a gemm's width sets its blocking and so its rounding — and the convs of a grown
    /// block that share a patch matrix (`patches.rs`) all batch alike.
    pub(crate) fn image_batch(&self) -> Option<usize> {
        let ohw = self.ohw();
        if !enabled()
            || self.groups != 1
            || ohw == 0
            || ohw >= SMALL_PLANE
            || !self.parallel_images()
        {
            return None;
        }
        let g = BATCH_COLUMNS.div_ceil(ohw).min(self.n.div_ceil(2));
        (g >= 2).then_some(g)
    }

    /// Whether the gemms of `g`-image batches take threads too: fewer batches than threads
    /// (scheduling only: the threaded gemm's bits equal the single-threaded one's).
    pub(crate) fn threaded_batch_gemms(&self, g: usize) -> bool {
        self.n.div_ceil(g.max(1)) < threads()
    }

    /// The patch matrices of images `imgs`, side by side: row `r` of the `i`-th image at
    /// `cols[r·width + i·ho·wo ..]`, `width = imgs.len()·ho·wo`.
    pub(crate) fn im2col_images(&self, x: &[f32], imgs: Range<usize>, cols: &mut [f32]) {
        let (c, hw, ohw) = (self.c, self.hw(), self.ohw());
        let width = imgs.len() * ohw;
        let taps = self.taps();
        for (i, img) in imgs.enumerate() {
            let image = &x[img * c * hw..(img + 1) * c * hw];
            for (t, &tap) in taps.iter().enumerate() {
                for ch in 0..c {
                    let at = (t * c + ch) * width + i * ohw;
                    let plane = &image[ch * hw..(ch + 1) * hw];
                    self.im2col_row(plane, &mut cols[at..at + ohw], tap, 0..self.ho);
                }
            }
        }
    }

    /// The forward `[out, width]` of images `imgs` (`weight` in patch order,
    /// [`ConvShape::patch_weight`]), handed to `f` with its width.
    fn batch_forward<R>(
        &self,
        x: &[f32],
        weight: &[f32],
        imgs: Range<usize>,
        parallel_gemm: bool,
        f: impl FnOnce(&[f32], usize) -> R,
    ) -> R {
        let (kg, out) = (self.c * self.kh * self.kw, self.out);
        let width = imgs.len() * self.ohw();
        with_scratch(kg * width + out * width, |scratch| {
            let (cols, product) = scratch.split_at_mut(kg * width);
            self.im2col_images(x, imgs, cols);
            let w = Mat {
                data: weight,
                rows: out,
                cols: kg,
                rs: kg,
                cs: 1,
            };
            let p = Mat {
                data: cols,
                rows: kg,
                cols: width,
                rs: width,
                cs: 1,
            };
            sgemm(product, width, w, p, false, parallel_gemm);
            f(product, width)
        })
    }

    /// The forward `[n, out, ho, wo]` of every image, `g` images per gemm, batches in parallel.
    pub(crate) fn forward_batched(&self, g: usize, x: &[f32], weight: &[f32]) -> Vec<f32> {
        let mut y: Vec<MaybeUninit<f32>> = uninit_vec(self.n * self.out * self.ohw());
        self.forward_batched_into(g, x, weight, &mut y, |d, s| {
            d.write(s);
        });
        // SAFETY: the batches cover `y`, and each image's every output was written above.
        unsafe { assume_init_vec(y) }
    }

    /// [`Self::forward_batched`] added into `y` instead of returned.
    pub(crate) fn forward_batched_add(&self, g: usize, x: &[f32], weight: &[f32], y: &mut [f32]) {
        self.forward_batched_into(g, x, weight, y, |d, s| *d += s);
    }

    /// The batched forward, each output handed to `put` with its place in `y` `[n, out, ho, wo]`.
    fn forward_batched_into<T: Send>(
        &self,
        g: usize,
        x: &[f32],
        weight: &[f32],
        y: &mut [T],
        put: impl Fn(&mut T, f32) + Sync,
    ) {
        let (ohw, per_out) = (self.ohw(), self.out * self.ohw());
        let parallel_gemm = self.threaded_batch_gemms(g);
        y.par_chunks_mut(g * per_out)
            .enumerate()
            .for_each(|(b, chunk)| {
                let imgs = b * g..b * g + chunk.len() / per_out;
                self.batch_forward(x, weight, imgs, parallel_gemm, |product, width| {
                    for (i, y_img) in chunk.chunks_exact_mut(per_out).enumerate() {
                        for (o, dst) in y_img.chunks_exact_mut(ohw).enumerate() {
                            let src = &product[o * width + i * ohw..][..ohw];
                            for (d, &s) in dst.iter_mut().zip(src) {
                                put(d, s);
                            }
                        }
                    }
                });
            });
    }

    /// The weight gradient's sum over images `range`, `g` images per gemm, into `dw_cm`
    /// (column-major `[out, c·kh·kw]`: element `(o, r)` at `r·out + o`, overwritten).
    pub(crate) fn weight_grad_batched(
        &self,
        g: usize,
        x: &[f32],
        dy: &[f32],
        range: Range<usize>,
        parallel_gemm: bool,
        dw_cm: &mut [f32],
    ) {
        let (kg, out, ohw) = (self.c * self.kh * self.kw, self.out, self.ohw());
        let per_out = out * ohw;
        if range.is_empty() {
            dw_cm.fill(0.0);
            return;
        }
        for (batch, start) in range.clone().step_by(g).enumerate() {
            let imgs = start..(start + g).min(range.end);
            let width = imgs.len() * ohw;
            with_scratch(kg * width + out * width, |scratch| {
                let (cols, dy_batch) = scratch.split_at_mut(kg * width);
                self.im2col_images(x, imgs.clone(), cols);
                for (i, img) in imgs.enumerate() {
                    for o in 0..out {
                        dy_batch[o * width + i * ohw..][..ohw]
                            .copy_from_slice(&dy[img * per_out + o * ohw..][..ohw]);
                    }
                }
                let d = Mat {
                    data: dy_batch,
                    rows: out,
                    cols: width,
                    rs: width,
                    cs: 1,
                };
                let p = Mat {
                    data: cols,
                    rows: width,
                    cols: kg,
                    rs: 1,
                    cs: width,
                };
                sgemm_strided(dw_cm, 1, out, d, p, batch > 0, parallel_gemm);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::conv::ConvShape;
    use crate::cpu::{test_values, threads};

    /// A value per element and the sum of its terms' magnitudes (what f32 rounding scales with).
    type Sums = (Vec<f64>, Vec<f64>);

    /// The forward, input gradient and weight gradient `(y, dx, dw)` of a stride-1 conv in f64.
    fn naive(s: &ConvShape, x: &[f32], w: &[f32], dy: &[f32]) -> [Sums; 3] {
        let (n, c, h, wd, o, kh, kw) = (s.n, s.c, s.h, s.w, s.out, s.kh, s.kw);
        let (ho, wo) = (s.ho, s.wo);
        let mut y = (vec![0.0; n * o * ho * wo], vec![0.0; n * o * ho * wo]);
        let mut dx = (vec![0.0; x.len()], vec![0.0; x.len()]);
        let mut dw = (vec![0.0; w.len()], vec![0.0; w.len()]);
        for img in 0..n {
            for oc in 0..o {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let yi = ((img * o + oc) * ho + oy) * wo + ox;
                        for ic in 0..c {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let (iy, ix) = (oy + ky, ox + kx);
                                    if iy < s.ph || ix < s.pw || iy - s.ph >= h || ix - s.pw >= wd {
                                        continue;
                                    }
                                    let xi = ((img * c + ic) * h + iy - s.ph) * wd + ix - s.pw;
                                    let wi = ((oc * c + ic) * kh + ky) * kw + kx;
                                    let (xv, wv, g) = (x[xi] as f64, w[wi] as f64, dy[yi] as f64);
                                    y.0[yi] += xv * wv;
                                    y.1[yi] += (xv * wv).abs();
                                    dx.0[xi] += g * wv;
                                    dx.1[xi] += (g * wv).abs();
                                    dw.0[wi] += g * xv;
                                    dw.1[wi] += (g * xv).abs();
                                }
                            }
                        }
                    }
                }
            }
        }
        [y, dx, dw]
    }

    /// Within f32 summation error of `terms` terms: |got − want| ≤ (terms + 2)·2⁻²⁴·Σ|term|.
    fn check(what: &str, got: &[f32], (want, mag): &Sums, terms: usize) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let eps = f64::from(f32::EPSILON) / 2.0;
        for (i, (&g, (&w, &m))) in got.iter().zip(want.iter().zip(mag)).enumerate() {
            let bound = (terms as f64 + 2.0) * eps * m + f64::from(f32::MIN_POSITIVE);
            assert!(
                (f64::from(g) - w).abs() <= bound,
                "{what}[{i}]: {g} vs {w} (bound {bound:e})"
            );
        }
    }

    /// Convs on 1×1 to 5×3 planes, batches that do not divide evenly into threads or into G:
    /// the batched forward, input gradient (written and added) and weight gradient against the
    /// f64 reference.
    #[test]
    fn batched_small_planes_match_the_naive_conv() {
        // [c, h, w], [out, kh, kw], padding
        type Case = ([usize; 3], [usize; 3], (usize, usize));
        let cases: [Case; 5] = [
            ([16, 2, 2], [8, 3, 3], (1, 1)),
            ([5, 4, 3], [7, 3, 3], (1, 1)),
            ([6, 3, 3], [4, 1, 1], (0, 0)),
            ([3, 5, 5], [5, 3, 1], (1, 0)),
            ([4, 1, 1], [6, 3, 3], (1, 1)),
        ];
        for (case, ([c, h, w], [o, kh, kw], pad)) in cases.into_iter().enumerate() {
            let n = 3 * threads() + 1;
            let s = ConvShape::new(&[n, c, h, w], &[o, c, kh, kw], 1, pad, 1).unwrap();
            let g = s.image_batch().expect("a small plane batches");
            assert!(g >= 2 && !s.is_direct(), "case {case}: batch {g}");
            let seed = case as u64;
            let x = test_values(n * c * h * w, seed);
            let wt = test_values(o * c * kh * kw, seed ^ 1);
            let dy = test_values(n * o * s.ho * s.wo, seed ^ 2);
            let [ny, ndx, ndw] = naive(&s, &x, &wt, &dy);
            let what = |p: &str| format!("case {case} (G {g}) {p}");
            check(&what("forward"), &s.forward(&x, &wt), &ny, c * kh * kw);
            check(
                &what("input grad"),
                &s.input_grad(&wt, &dy),
                &ndx,
                o * kh * kw,
            );
            let mut added = vec![0.0f32; x.len()];
            s.input_grad_add(&wt, &dy, &mut added);
            check(&what("input grad added"), &added, &ndx, o * kh * kw);
            check(
                &what("weight grad"),
                &s.weight_grad(&x, &dy),
                &ndw,
                n * s.ho * s.wo,
            );
        }
    }
}
