//! One patch matrix per block (paper §4; docs/REFERENCE.md "Branch types"): the k×k, 1×k, k×1 (and
//! 1×1) convs of a grown block read the same input with the same stride, and each one's kernel taps
//! are a subset of the k×k conv's, centred the way the branches pad. With the patch matrix's rows
//! grouped by tap in the order
//!
//! ```text
//!   middle row left of centre | middle row right of centre | centre | middle column above |
//!   middle column below | the other taps (row-major)
//! ```
//!
//! every such branch reads one contiguous block of rows — 1×k the first k taps, 1×1 tap k−1,
//! k×1 taps k−1 .. 2k−1, k×k all of them — so the forward and the weight gradient lower each
//! image once for all of them instead of once per branch. Every conv lowers in this order
//! (`conv::tap_order`), and each block lists its taps in the order of the branch's own kernel,
//! so a branch computes here exactly (bit for bit) what it computes on its own.

use std::ops::Range;

use rayon::prelude::*;

use crate::conv::{tap_order, ConvShape};
use crate::cpu::{sgemm, sgemm_strided, sum_in_order, threads, with_scratch, Mat};
use crate::profile::{ConvKey, ConvPass, ConvTimer, Phase, Timer};

/// A conv reading the shared patch matrix: its geometry and its block of taps.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub shape: ConvShape,
    /// Its taps' positions in the shared tap order.
    pub taps: Range<usize>,
}

/// The shared patch matrix of a set of convs, planned once per op call.
#[derive(Clone, Debug)]
pub(crate) struct PatchShare {
    /// The geometry whose lowering is shared (the largest kernel).
    main: ConvShape,
    /// Main-kernel taps `(ky, kx)` in row-block order.
    order: Vec<(usize, usize)>,
    pub members: Vec<Member>,
}

impl PatchShare {
    /// Plans the sharing among `shapes`, or `None` when fewer than two of them can share (the
    /// others keep their own lowering). A conv shares when it is not pointwise (those read
    /// their input in place), has one group, the same input, stride and output size as the
    /// largest kernel, and its taps form one of the blocks above. Returns the plan and, per
    /// shape, its index in `members`.
    pub fn plan(shapes: &[ConvShape]) -> Option<(Self, Vec<Option<usize>>)> {
        let candidates: Vec<usize> = (0..shapes.len())
            .filter(|&i| !shapes[i].is_pointwise() && shapes[i].groups == 1)
            .collect();
        let &main_i = candidates
            .iter()
            .max_by_key(|&&i| (shapes[i].kh * shapes[i].kw, shapes[i].kh))?;
        let main = shapes[main_i];
        let order = tap_order(main.kh, main.kw);
        let mut members = Vec::new();
        let mut index = vec![None; shapes.len()];
        for &i in &candidates {
            let s = shapes[i];
            let same_input = (s.n, s.c, s.h, s.w) == (main.n, main.c, main.h, main.w);
            let same_output = (s.stride, s.ho, s.wo) == (main.stride, main.ho, main.wo);
            if !same_input || !same_output || s.ph > main.ph || s.pw > main.pw {
                continue;
            }
            let offset = (main.ph - s.ph, main.pw - s.pw);
            if offset.0 + s.kh > main.kh || offset.1 + s.kw > main.kw {
                continue;
            }
            let Some(taps) = block_of(&order, s.kh, s.kw, offset) else {
                continue;
            };
            index[i] = Some(members.len());
            members.push(Member { shape: s, taps });
        }
        (members.len() >= 2).then_some((
            Self {
                main,
                order,
                members,
            },
            index,
        ))
    }

    /// Whether the forward lowers at all: convs on the direct kernel (`direct.rs`) read the
    /// input in place, so then only the weight gradients share the patch matrix.
    pub fn lowers_forward(&self) -> bool {
        !self.main.is_direct()
    }

    /// Rows of the shared patch matrix: taps · channels.
    fn rows(&self) -> usize {
        self.order.len() * self.main.c
    }

    /// Lowers one image into the shared patch matrix: the main conv's own, `[tap, c, ho·wo]`.
    fn im2col(&self, image: &[f32], cols: &mut [f32]) {
        self.main.im2col(image, cols);
    }

    /// The main conv's weight-gradient image ranges ([`ConvShape::weight_grad_ranges`]: fixed
    /// by the shapes), and whether their gemms take threads too (fewer ranges than threads).
    fn image_ranges(&self) -> (Vec<Range<usize>>, bool) {
        let ranges = self.main.weight_grad_ranges();
        let parallel_gemm = ranges.len() < threads();
        (ranges, parallel_gemm)
    }

    /// Times `pass` of all members together in the per-conv profile until the guard drops.
    fn pass_timer(&self, pass: ConvPass) -> ConvTimer {
        let key = ConvKey {
            out: self.members.iter().map(|m| m.shape.out).sum(),
            shared: self.members.len(),
            ..self.main.profile_key()
        };
        ConvTimer::start(key, pass, self.members.iter().map(|m| m.shape.macs()).sum())
    }

    /// Every member's forward `[n, out, ho, wo]` (no bias), lowering each image once.
    pub fn forward(&self, x: &[f32], weights: &[&[f32]]) -> Vec<Vec<f32>> {
        let _t = Timer::start(Phase::ConvForward);
        let _c = self.pass_timer(ConvPass::Forward);
        let (c, ohw) = (self.main.c, self.main.ohw());
        let per_in = c * self.main.hw();
        let perm: Vec<Vec<f32>> = self
            .members
            .iter()
            .zip(weights)
            .map(|(m, w)| m.shape.patch_weight(w))
            .collect();
        let mut outs: Vec<Vec<f32>> = self
            .members
            .iter()
            .map(|m| vec![0.0f32; m.shape.n * m.shape.out * ohw])
            .collect();
        let batch = self.main.image_batch();
        let (ranges, parallel_gemm) = match batch {
            // The batches of `ConvShape::forward_batched`, so each member computes what it
            // computes alone.
            Some(g) => (
                (0..self.main.n)
                    .step_by(g)
                    .map(|s| s..(s + g).min(self.main.n))
                    .collect(),
                self.main.threaded_batch_gemms(g),
            ),
            None => self.image_ranges(),
        };
        // Per range, every member's slice of outputs for those images.
        let mut jobs: Vec<(Range<usize>, Vec<&mut [f32]>)> =
            ranges.iter().map(|r| (r.clone(), Vec::new())).collect();
        for (m, out) in self.members.iter().zip(outs.iter_mut()) {
            let per_out = m.shape.out * ohw;
            let mut rest: &mut [f32] = out;
            for (r, slices) in jobs.iter_mut() {
                let (head, tail) = rest.split_at_mut(r.len() * per_out);
                slices.push(head);
                rest = tail;
            }
        }
        let run = |(range, mut slices): (Range<usize>, Vec<&mut [f32]>)| {
            if batch.is_some() {
                return self.forward_batch(x, &perm, range, parallel_gemm, &mut slices);
            }
            with_scratch(self.rows() * ohw, |cols| {
                for (i, img) in range.enumerate() {
                    self.im2col(&x[img * per_in..(img + 1) * per_in], cols);
                    for ((m, w), out) in self.members.iter().zip(&perm).zip(slices.iter_mut()) {
                        let k = m.taps.len() * c;
                        let per_out = m.shape.out * ohw;
                        sgemm(
                            &mut out[i * per_out..(i + 1) * per_out],
                            ohw,
                            Mat {
                                data: w,
                                rows: m.shape.out,
                                cols: k,
                                rs: k,
                                cs: 1,
                            },
                            Mat {
                                data: &cols[m.taps.start * c * ohw..m.taps.end * c * ohw],
                                rows: k,
                                cols: ohw,
                                rs: ohw,
                                cs: 1,
                            },
                            false,
                            parallel_gemm,
                        );
                    }
                }
            })
        };
        jobs.into_par_iter().for_each(run);
        outs
    }

    /// Every member's weight gradient `[out, c, kh, kw]` for its output gradient `dz`,
    /// lowering each image once (accumulated column-major per image range and added in range
    /// order, as `ConvShape` does).
    pub fn weight_grads(&self, x: &[f32], dzs: &[&[f32]]) -> Vec<Vec<f32>> {
        let _t = Timer::start(Phase::ConvWeightGrad);
        let _c = self.pass_timer(ConvPass::WeightGrad);
        let (c, ohw) = (self.main.c, self.main.ohw());
        let per_in = c * self.main.hw();
        let (ranges, parallel_gemm) = self.image_ranges();
        let batch = self.main.image_batch();
        let accumulate = |range: Range<usize>| -> Vec<Vec<f32>> {
            let mut acc: Vec<Vec<f32>> = self
                .members
                .iter()
                .map(|m| vec![0.0f32; m.shape.out * m.taps.len() * c])
                .collect();
            if let Some(g) = batch {
                self.weight_grads_batched(g, x, dzs, range, parallel_gemm, &mut acc);
                return acc;
            }
            with_scratch(self.rows() * ohw, |cols| {
                for (i, img) in range.enumerate() {
                    self.im2col(&x[img * per_in..(img + 1) * per_in], cols);
                    for ((m, dz), a) in self.members.iter().zip(dzs).zip(acc.iter_mut()) {
                        let (out, k) = (m.shape.out, m.taps.len() * c);
                        sgemm_strided(
                            a,
                            1,
                            out,
                            Mat {
                                data: &dz[img * out * ohw..(img + 1) * out * ohw],
                                rows: out,
                                cols: ohw,
                                rs: ohw,
                                cs: 1,
                            },
                            Mat {
                                data: &cols[m.taps.start * c * ohw..m.taps.end * c * ohw],
                                rows: ohw,
                                cols: k,
                                rs: 1,
                                cs: ohw,
                            },
                            i > 0,
                            parallel_gemm,
                        );
                    }
                }
            });
            acc
        };
        let mut partials: Vec<Vec<Vec<f32>>> = ranges.into_par_iter().map(accumulate).collect();
        self.members
            .iter()
            .enumerate()
            .map(|(j, m)| {
                let parts = partials.iter_mut().map(|p| std::mem::take(&mut p[j]));
                let len = m.shape.out * m.taps.len() * c;
                m.shape
                    .weight_from_patch_cm(&sum_in_order(parts.collect(), len))
            })
            .collect()
    }
}

/// Small planes, several images per gemm (`small_planes.rs`), in the batches and with the gemm
/// shapes each member uses on its own.
impl PatchShare {
    /// Every member's forward of the images `imgs` (one batch) into its slice of outputs.
    fn forward_batch(
        &self,
        x: &[f32],
        perm: &[Vec<f32>],
        imgs: Range<usize>,
        parallel_gemm: bool,
        slices: &mut [&mut [f32]],
    ) {
        let (c, ohw) = (self.main.c, self.main.ohw());
        let width = imgs.len() * ohw;
        let widest = self.members.iter().map(|m| m.shape.out).max().unwrap_or(0);
        with_scratch(self.rows() * width + widest * width, |scratch| {
            let (cols, product) = scratch.split_at_mut(self.rows() * width);
            self.main.im2col_images(x, imgs.clone(), cols);
            for ((m, w), out) in self.members.iter().zip(perm).zip(slices.iter_mut()) {
                let (mo, k) = (m.shape.out, m.taps.len() * c);
                let product = &mut product[..mo * width];
                sgemm(
                    product,
                    width,
                    Mat {
                        data: w,
                        rows: mo,
                        cols: k,
                        rs: k,
                        cs: 1,
                    },
                    Mat {
                        data: &cols[m.taps.start * c * width..m.taps.end * c * width],
                        rows: k,
                        cols: width,
                        rs: width,
                        cs: 1,
                    },
                    false,
                    parallel_gemm,
                );
                for (i, y_img) in out.chunks_exact_mut(mo * ohw).enumerate() {
                    for (o, dst) in y_img.chunks_exact_mut(ohw).enumerate() {
                        dst.copy_from_slice(&product[o * width + i * ohw..][..ohw]);
                    }
                }
            }
        });
    }

    /// Every member's weight gradient summed over the images `range`, `g` per gemm, into its
    /// column-major accumulator (overwritten).
    fn weight_grads_batched(
        &self,
        g: usize,
        x: &[f32],
        dzs: &[&[f32]],
        range: Range<usize>,
        parallel_gemm: bool,
        acc: &mut [Vec<f32>],
    ) {
        let (c, ohw) = (self.main.c, self.main.ohw());
        let widest = self.members.iter().map(|m| m.shape.out).max().unwrap_or(0);
        for (batch, start) in range.clone().step_by(g).enumerate() {
            let imgs = start..(start + g).min(range.end);
            let width = imgs.len() * ohw;
            with_scratch(self.rows() * width + widest * width, |scratch| {
                let (cols, dz_batch) = scratch.split_at_mut(self.rows() * width);
                self.main.im2col_images(x, imgs.clone(), cols);
                for ((m, dz), a) in self.members.iter().zip(dzs).zip(acc.iter_mut()) {
                    let (mo, k) = (m.shape.out, m.taps.len() * c);
                    let dz_batch = &mut dz_batch[..mo * width];
                    for (i, img) in imgs.clone().enumerate() {
                        for o in 0..mo {
                            dz_batch[o * width + i * ohw..][..ohw]
                                .copy_from_slice(&dz[(img * mo + o) * ohw..][..ohw]);
                        }
                    }
                    sgemm_strided(
                        a,
                        1,
                        mo,
                        Mat {
                            data: dz_batch,
                            rows: mo,
                            cols: width,
                            rs: width,
                            cs: 1,
                        },
                        Mat {
                            data: &cols[m.taps.start * c * width..m.taps.end * c * width],
                            rows: width,
                            cols: k,
                            rs: 1,
                            cs: width,
                        },
                        batch > 0,
                        parallel_gemm,
                    );
                }
            });
        }
    }
}

/// Where the taps of a `kh × kw` kernel placed at `offset` sit in `order`, if they form one
/// contiguous block listed in the kernel's own tap order.
fn block_of(
    order: &[(usize, usize)],
    kh: usize,
    kw: usize,
    offset: (usize, usize),
) -> Option<Range<usize>> {
    let own: Vec<(usize, usize)> = tap_order(kh, kw)
        .into_iter()
        .map(|(y, x)| (y + offset.0, x + offset.1))
        .collect();
    let start = order.iter().position(|t| *t == own[0])?;
    let block = start..start + own.len();
    (block.end <= order.len() && order[block.clone()] == own[..]).then_some(block)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cpu::{assert_same_bits, on_threads, test_values as values};

    fn shape(x: [usize; 4], out: usize, k: (usize, usize), stride: usize) -> ConvShape {
        ConvShape::new(&x, &[out, x[1], k.0, k.1], stride, (k.0 / 2, k.1 / 2), 1)
            .expect("test shape")
    }

    /// Test weights for each of `shapes`, a seed per conv.
    fn weights_of(shapes: &[ConvShape]) -> Vec<Vec<f32>> {
        shapes
            .iter()
            .enumerate()
            .map(|(i, s)| values(s.weight_len(), 100 + i as u64))
            .collect()
    }

    #[test]
    fn tap_blocks_of_the_dyrep_branches_are_contiguous() {
        for k in [3, 5, 7] {
            let order = tap_order(k, k);
            assert_eq!(order.len(), k * k);
            let c = k / 2;
            assert_eq!(block_of(&order, 1, k, (c, 0)), Some(0..k));
            assert_eq!(block_of(&order, 1, 1, (c, c)), Some(k - 1..k));
            assert_eq!(block_of(&order, k, 1, (0, c)), Some(k - 1..2 * k - 1));
            assert_eq!(block_of(&order, k, k, (0, 0)), Some(0..k * k));
            // A 2×2 corner is not a block.
            assert_eq!(block_of(&order, 2, 2, (0, 0)), None);
        }
    }

    #[test]
    fn shared_lowering_matches_each_conv_on_its_own() {
        // Odd and even, non-square, stride 1 and 2, 3×3 and 5×5, batch above and below the
        // thread count.
        let cases = [
            ([3, 5, 7, 6], 4, 3, 1),
            ([1, 3, 8, 5], 6, 3, 2),
            ([4, 2, 9, 9], 3, 5, 1),
            ([2, 4, 6, 11], 5, 5, 2),
        ];
        for (seed, (x, out, k, stride)) in cases.into_iter().enumerate() {
            let shapes = [
                shape(x, out, (k, k), stride),
                shape(x, out, (1, k), stride),
                shape(x, out, (k, 1), stride),
                shape(x, out, (1, 1), stride),
            ];
            let (plan, index) = PatchShare::plan(&shapes).expect("the branches share");
            // Pointwise convs at stride 1 read in place and are left out.
            let want_members = if stride == 1 { 3 } else { 4 };
            assert_eq!(plan.members.len(), want_members, "case {seed}");
            let xs = values(x.iter().product(), seed as u64);
            let ws = weights_of(&shapes);
            let member_ws: Vec<&[f32]> = (0..shapes.len())
                .filter(|&i| index[i].is_some())
                .map(|i| ws[i].as_slice())
                .collect();
            let outs = plan.forward(&xs, &member_ws);
            let dzs: Vec<Vec<f32>> = plan
                .members
                .iter()
                .enumerate()
                .map(|(j, m)| values(m.shape.output_dims().iter().product(), 200 + j as u64))
                .collect();
            let dz_refs: Vec<&[f32]> = dzs.iter().map(|d| d.as_slice()).collect();
            let dws = plan.weight_grads(&xs, &dz_refs);
            for (i, s) in shapes.iter().enumerate() {
                let Some(j) = index[i] else { continue };
                assert_same_bits(
                    &outs[j],
                    &s.forward_lowered(&xs, &ws[i]),
                    &format!("case {seed} forward {i}"),
                );
                assert_same_bits(
                    &dws[j],
                    &s.weight_grad(&xs, &dzs[j]),
                    &format!("case {seed} weight grad {i}"),
                );
            }
        }
    }

    /// A block's shared lowering computes the same bits on 1 to 4 threads, small planes
    /// (batched) and large, with batches of one image, fewer than threads and many.
    #[test]
    fn shared_lowering_does_not_depend_on_the_thread_count() {
        for (seed, x) in [[1, 6, 9, 9], [3, 5, 4, 4], [37, 6, 2, 3], [19, 4, 12, 10]]
            .into_iter()
            .enumerate()
        {
            let shapes = [
                shape(x, 8, (3, 3), 1),
                shape(x, 5, (1, 3), 1),
                shape(x, 3, (3, 1), 1),
            ];
            let (plan, _) = PatchShare::plan(&shapes).expect("the branches share");
            let xs = values(x.iter().product(), seed as u64);
            let ws = weights_of(&shapes);
            let w_refs: Vec<&[f32]> = ws.iter().map(|w| w.as_slice()).collect();
            let dzs: Vec<Vec<f32>> = shapes
                .iter()
                .enumerate()
                .map(|(j, s)| values(s.output_dims().iter().product(), 200 + j as u64))
                .collect();
            let dz_refs: Vec<&[f32]> = dzs.iter().map(|d| d.as_slice()).collect();
            let passes = || {
                let mut all = plan.forward(&xs, &w_refs);
                all.extend(plan.weight_grads(&xs, &dz_refs));
                all
            };
            let one = on_threads(1, passes);
            for t in 2..=4 {
                for (i, (a, b)) in one.iter().zip(on_threads(t, passes)).enumerate() {
                    assert_same_bits(
                        a,
                        &b,
                        &format!("case {seed}, output {i}, 1 and {t} threads"),
                    );
                }
            }
        }
    }

    #[test]
    fn convs_that_do_not_line_up_do_not_share() {
        let x = [2, 3, 8, 8];
        let main = shape(x, 4, (3, 3), 1);
        // Other stride, other input, a 1×3 padded as if it were centred elsewhere, groups.
        let strided = shape(x, 4, (1, 3), 2);
        let other_input = shape([2, 3, 8, 9], 4, (1, 3), 1);
        let shifted = ConvShape::new(&x, &[4, 3, 1, 3], 1, (0, 2), 1).expect("shape");
        let grouped = ConvShape::new(&x, &[3, 1, 3, 1], 1, (1, 0), 3).expect("shape");
        assert!(PatchShare::plan(&[main, strided, other_input, grouped]).is_none());
        // The shifted 1×3 has a different output width: not a member either.
        assert!(PatchShare::plan(&[main, shifted]).is_none());
        let (plan, index) =
            PatchShare::plan(&[main, strided, shape(x, 4, (3, 1), 1)]).expect("main and 3×1 share");
        assert_eq!(index, vec![Some(0), None, Some(1)]);
        assert_eq!(plan.members.len(), 2);
    }
}
