//! The own CPU op of a grown block in training (paper §4, docs/REFERENCE.md "Branch types"): its
//! branches summed as one candle op — conv → BN branches (k×k main, 1×1, 1×k, k×1, with conv
//! biases), the BN-only identity, and DBB's two-stage branches — 1×1 conv → BN → pad with the BN's
//! constant (docs/REFERENCE.md "Branch types" `BNAndPad`; the constant carries no gradient) → k×k
//! conv or k×k average pool → BN. All branches read the same input; the input gradient is
//! accumulated inside the op and handed to candle once, and none of the per-branch intermediates
//! becomes a graph node (candle would add each one's gradient through a fresh zero tensor); the
//! branches add their input gradients into one buffer where they are made. A stride-1 average
//! branch never stores its padded input: each plane is normalised, padded and pooled in cache.
//! Optionally what follows the block in its conv unit runs in the same op on the sum: its BN (none
//! in the reference DBB/RepVGG forms), ReLU and max pool, as a plain unit runs them
//! (`crate::unit::tail_forward`: each plane normalised and pooled in cache). In the backward the
//! single-stage branches' BNs, which all receive the sum's gradient, take their reductions from
//! one shared pass over it. Arguments `(x, weights, γβ)`: every conv's weight (then its bias, if
//! it has one) flattened and concatenated in branch order (a two-stage branch's first conv, then
//! its second), and every BN's `[γ; β]` concatenated in the same order, the unit's BN last.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::layout::{output_dims, BranchGeom, StageGeom};
use crate::bn::{
    bn_backward, channel_stats, plane_sums, shared_grad_coefs, stats_from_plane_sums, ChannelStats,
    GradCoefs, PlaneSums, Planes, SharedBn,
};
use crate::conv::ConvShape;
use crate::cpu::{slice_f32, tensor_like, with_f32, with_scratch};
use crate::patches::PatchShare;
use crate::pool::{box_sums, pad_plane, PoolKind, PoolShape};
use crate::profile::{Phase, Timer};
use crate::relu::relu_grad;
use crate::side::SideChannel;
use crate::unit::{max_pool_activated, tail_backward, tail_forward, with_unpooled_grad, UnitTail};
use crate::MaxPoolParams;

/// Normalisation of one BN in the forward: statistics and `1/sqrt(σ² + ε)`.
#[derive(Debug, Default, Clone)]
pub(crate) struct BnSaved {
    pub stats: Vec<ChannelStats>,
    pub inv_std: Vec<f32>,
}

/// What the forward keeps of one branch.
#[derive(Debug, Default)]
pub(crate) struct BranchSaved {
    /// The first BN's input when it is a conv output (the identity's is the block input).
    pub z1: Option<Vec<f32>>,
    pub bn1: BnSaved,
    /// Two-stage: the padded first-BN output (the second stage's input), the second stage's
    /// output (the second BN's input) and the second BN's normalisation.
    pub padded: Option<Vec<f32>>,
    pub z2: Option<Vec<f32>>,
    pub bn2: Option<BnSaved>,
}

impl BranchSaved {
    /// The first BN's input: the kept conv output, or the block input `x` for the identity
    /// branch; `None` when a conv output was not kept.
    fn first_bn_input<'a>(&'a self, b: &BranchGeom, x: &'a [f32]) -> Option<&'a [f32]> {
        match (&b.conv, &self.z1) {
            (Some(_), Some(z)) => Some(z),
            (None, _) => Some(x),
            (Some(_), None) => None,
        }
    }
}

/// What the forward keeps, per branch in order, and for the unit's BN after the sum.
#[derive(Debug, Default)]
pub(crate) struct BlockSaved {
    pub branches: Vec<BranchSaved>,
    /// The branches' sum (the unit BN's input) and that BN's normalisation.
    pub sum: Option<Vec<f32>>,
    pub post: Option<BnSaved>,
}

impl BlockSaved {
    /// Every BN's statistics in argument order (a two-stage branch's first BN, then its second;
    /// the unit's BN last).
    pub fn bn_stats(&self) -> Vec<&[ChannelStats]> {
        let mut v = Vec::new();
        for b in &self.branches {
            v.push(b.bn1.stats.as_slice());
            if let Some(s) = &b.bn2 {
                v.push(s.stats.as_slice());
            }
        }
        if let Some(p) = &self.post {
            v.push(p.stats.as_slice());
        }
        v
    }
}

/// The unit's BN, ReLU and max pool (each optional) applied to the block's sum inside the op.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PostGeom {
    /// Offset of the BN's `[γ; β]` in the flat γβ; `None` without a BN.
    pub bn_offset: Option<usize>,
    pub relu: bool,
    pub pool: Option<MaxPoolParams>,
}

impl PostGeom {
    fn tail(&self, eps: f64) -> UnitTail {
        UnitTail {
            eps,
            relu: self.relu,
            pool: self.pool,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct BlockOp {
    pub branches: Vec<BranchGeom>,
    pub post: Option<PostGeom>,
    pub eps: f64,
    pub keep_for_backward: bool,
    pub saved: SideChannel<BlockSaved>,
}

impl BlockOp {
    /// The shared patch matrix of the branches' first convs, if two or more can share it,
    /// and per branch its member index.
    fn patch_share(&self) -> Option<(PatchShare, Vec<Option<usize>>)> {
        let convs: Vec<(usize, ConvShape)> = self
            .branches
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.conv.map(|s| (i, s)))
            .collect();
        let shapes: Vec<ConvShape> = convs.iter().map(|&(_, s)| s).collect();
        let (plan, index) = PatchShare::plan(&shapes)?;
        let mut of_branch = vec![None; self.branches.len()];
        for (&(i, _), m) in convs.iter().zip(index) {
            of_branch[i] = m;
        }
        Some((plan, of_branch))
    }

    /// Per branch, for the single-stage ones (whose BN's output enters the sum, so the gradient
    /// `g` reaching the sum reaches it), their BN's gradient coefficients from one shared pass
    /// over `g`; `None` for the two-stage branches.
    fn single_stage_coefs(
        &self,
        g: &[f32],
        x: &[f32],
        saved: &BlockSaved,
        gb: &[f32],
        planes: Planes,
    ) -> candle_core::Result<Vec<Option<GradCoefs>>> {
        let _t = Timer::start(Phase::BnBackward);
        let mut at = Vec::new();
        let mut bns = Vec::new();
        for (bi, (b, kept)) in self.branches.iter().zip(&saved.branches).enumerate() {
            if b.second.is_some() {
                continue;
            }
            let Some(z) = kept.first_bn_input(b, x) else {
                return Err(candle_core::Error::Msg(format!(
                    "{}: backward without a kept forward",
                    self.name()
                )));
            };
            at.push(bi);
            bns.push(SharedBn {
                z,
                stats: &kept.bn1.stats,
                inv_std: &kept.bn1.inv_std,
                gamma: &gb[b.gb_offset..b.gb_offset + planes.c],
            });
        }
        let mut out: Vec<Option<GradCoefs>> = (0..self.branches.len()).map(|_| None).collect();
        for (bi, coefs) in at.into_iter().zip(shared_grad_coefs(g, planes, &bns)) {
            out[bi] = Some(coefs);
        }
        Ok(out)
    }

    fn normalisation(&self, z: &[f32], planes: Planes) -> BnSaved {
        self.saved_from(channel_stats(z, planes))
    }

    fn saved_from(&self, stats: Vec<ChannelStats>) -> BnSaved {
        let inv_std = stats
            .iter()
            .map(|s| (1.0 / (s.var as f64 + self.eps).sqrt()) as f32)
            .collect();
        BnSaved { stats, inv_std }
    }
}

/// The BN's scale `a = γ·istd` per channel.
fn bn_scale(gamma: &[f32], inv_std: &[f32]) -> Vec<f32> {
    gamma.iter().zip(inv_std).map(|(g, i)| g * i).collect()
}

/// One branch's normalised output in the block's sum: `BN(z)` with batch statistics `stats`,
/// scale `a = γ·istd` and shift β.
struct Term<'a> {
    z: &'a [f32],
    stats: &'a [ChannelStats],
    a: Vec<f32>,
    beta: &'a [f32],
}

/// `Σ BN(z)` over every branch, in one pass over `[N, C, H, W]` planes of `hw` values: each
/// plane of the sum is written once instead of read and written again per branch. With
/// `stats`, also the sum's per-channel batch statistics, from each plane's sums taken while it
/// is in cache — the same values, bit for bit, as [`channel_stats`] of the sum afterwards.
fn sum_normalised(
    terms: &[Term<'_>],
    c: usize,
    hw: usize,
    len: usize,
    stats: bool,
) -> (Vec<f32>, Option<Vec<ChannelStats>>) {
    let mut y = vec![0.0f32; len];
    let sums: Vec<Option<PlaneSums>> = y
        .par_chunks_mut(hw.max(1))
        .enumerate()
        .map(|(i, yp)| {
            let ch = i % c;
            let at = i * hw;
            for (t, term) in terms.iter().enumerate() {
                let (s, ac, bc) = (term.stats[ch], term.a[ch], term.beta[ch]);
                let zp = &term.z[at..at + yp.len()];
                if t == 0 {
                    for (o, &v) in yp.iter_mut().zip(zp) {
                        *o = ((v - s.shift) - s.mean_rel) * ac + bc;
                    }
                } else {
                    for (o, &v) in yp.iter_mut().zip(zp) {
                        *o += ((v - s.shift) - s.mean_rel) * ac + bc;
                    }
                }
            }
            stats.then(|| plane_sums(yp))
        })
        .collect();
    let stats = stats.then(|| {
        (0..c)
            .map(|ch| {
                let planes = sums.iter().skip(ch).step_by(c).flatten().copied();
                stats_from_plane_sums(planes, hw)
            })
            .collect()
    });
    (y, stats)
}

/// `BN(z)` written into the interior of planes padded by `pad` on every side and filled with
/// the per-channel `pad_values` around it: `[N, C, H + 2p, W + 2p]`.
fn normalise_padded(
    z: &[f32],
    dims: &[usize],
    pad: usize,
    pad_values: &[f32],
    (st, a, beta): Norm<'_>,
) -> Vec<f32> {
    let (c, h, w) = (dims[1], dims[2], dims[3]);
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    let mut out = vec![0.0f32; dims[0] * c * hp * wp];
    out.par_chunks_mut((hp * wp).max(1))
        .zip(z.par_chunks((h * w).max(1)))
        .enumerate()
        .for_each(|(i, (op, zp))| {
            let ch = i % c;
            let (s, ac, bc) = (st[ch], a[ch], beta[ch]);
            op.fill(pad_values[ch]);
            for iy in 0..h {
                let dst = &mut op[(iy + pad) * wp + pad..(iy + pad) * wp + pad + w];
                for (o, &v) in dst.iter_mut().zip(&zp[iy * w..(iy + 1) * w]) {
                    *o = ((v - s.shift) - s.mean_rel) * ac + bc;
                }
            }
        });
    out
}

/// A BN's batch statistics, scale `γ·istd` and shift β per channel.
type Norm<'a> = (&'a [ChannelStats], &'a [f32], &'a [f32]);

/// The two-stage average branch's middle, per plane while it is in cache: `BN(z)` padded by
/// `pad` with the per-channel `pad_values` (in scratch: the average pool's backward does not
/// need its input), the stride-1 `pool` of it (no padding of its own), and the pooled plane's
/// sums for the second BN's statistics — the same values, bit for bit, as
/// [`normalise_padded`], [`PoolShape::forward`] and [`channel_stats`] in three passes.
fn normalise_pad_avg(
    z: &[f32],
    dims: &[usize],
    pad: usize,
    pad_values: &[f32],
    (st, a, beta): Norm<'_>,
    pool: &PoolShape,
) -> (Vec<f32>, Vec<ChannelStats>) {
    let _t = Timer::start(Phase::Pool);
    let (c, h, w) = (dims[1], dims[2], dims[3]);
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    let ohw = pool.ho * pool.wo;
    let inv = 1.0 / (pool.k * pool.k) as f32;
    let rows_len = hp * wp + 1 - pool.k;
    let mut out = vec![0.0f32; dims[0] * c * ohw];
    let sums: Vec<PlaneSums> = out
        .par_chunks_mut(ohw.max(1))
        .zip(z.par_chunks((h * w).max(1)))
        .enumerate()
        .map(|(i, (op, zp))| {
            let ch = i % c;
            let (s, ac, bc) = (st[ch], a[ch], beta[ch]);
            with_scratch(hp * wp + rows_len, |scratch| {
                let (padded, rows) = scratch.split_at_mut(hp * wp);
                pad_plane(zp, (h, w), pad, pad_values[ch], padded);
                for iy in 0..h {
                    for v in &mut padded[(iy + pad) * wp + pad..][..w] {
                        *v = ((*v - s.shift) - s.mean_rel) * ac + bc;
                    }
                }
                box_sums(padded, (hp, wp), pool.k, inv, rows, op);
            });
            plane_sums(op)
        })
        .collect();
    let stats = (0..c)
        .map(|ch| stats_from_plane_sums(sums.iter().skip(ch).step_by(c).copied(), ohw))
        .collect();
    (out, stats)
}

/// The interior `[N, C, H, W]` of planes padded by `pad`.
fn crop(padded: &[f32], dims: &[usize], pad: usize) -> Vec<f32> {
    let (c, h, w) = (dims[1], dims[2], dims[3]);
    let wp = w + 2 * pad;
    let plane_p = (h + 2 * pad) * wp;
    let mut out = vec![0.0f32; dims[0] * c * h * w];
    out.par_chunks_mut((h * w).max(1))
        .zip(padded.par_chunks(plane_p.max(1)))
        .for_each(|(op, pp)| {
            for iy in 0..h {
                op[iy * w..(iy + 1) * w]
                    .copy_from_slice(&pp[(iy + pad) * wp + pad..(iy + pad) * wp + pad + w]);
            }
        });
    out
}

impl CustomOp3 for BlockOp {
    fn name(&self) -> &'static str {
        "dyrep-block-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice_f32(s1, l1, self.name())?;
        let w = slice_f32(s2, l2, self.name())?;
        let gb = slice_f32(s3, l3, self.name())?;
        let dims = output_dims(&self.branches, l1.dims())?;
        let planes = Planes::of(&dims)?;
        let mut saved = BlockSaved::default();
        // The first convs that read one shared patch matrix run together.
        let share = self.patch_share();
        let mut shared_z: Vec<Option<Vec<f32>>> = vec![None; self.branches.len()];
        if let Some((plan, of_branch)) = share.as_ref().filter(|(p, _)| p.lowers_forward()) {
            let mut member_ws: Vec<&[f32]> = vec![&[]; plan.members.len()];
            for (b, m) in self.branches.iter().zip(of_branch) {
                if let Some(j) = m {
                    member_ws[*j] = &w[b.weight_offset..];
                }
            }
            let mut outs = plan
                .forward(x, &member_ws)
                .into_iter()
                .map(Some)
                .collect::<Vec<_>>();
            for (z, m) in shared_z.iter_mut().zip(of_branch) {
                if let Some(j) = m {
                    *z = outs[*j].take();
                }
            }
        }
        // Per branch, the scale `γ·istd` of the BN whose output enters the sum.
        let mut scales: Vec<Vec<f32>> = Vec::with_capacity(self.branches.len());
        for (bi, b) in self.branches.iter().enumerate() {
            let first_dims = b.first_dims(l1.dims());
            let p1 = Planes::of(&first_dims)?;
            // A conv without bias that does not read the shared patch matrix takes its BN's
            // statistics while it writes its output (`ConvShape::forward_stats`).
            let mut stats1 = None;
            let z1 = b.conv.as_ref().map(|s| {
                let w1 = &w[b.weight_offset..];
                let mut z = match (shared_z[bi].take(), b.bias_offset) {
                    (Some(z), _) => z,
                    (None, None) => {
                        let (z, st) = s.forward_stats(x, w1);
                        stats1 = Some(st);
                        z
                    }
                    (None, Some(_)) => s.forward(x, w1),
                };
                if let Some(off) = b.bias_offset {
                    add_channel_bias(&mut z, &w[off..off + p1.c], p1.c, p1.hw);
                }
                z
            });
            let bn_timer = Timer::start(Phase::BnForward);
            let z1s: &[f32] = z1.as_deref().unwrap_or(x);
            let bn1 = match stats1 {
                Some(st) => self.saved_from(st),
                None => self.normalisation(z1s, p1),
            };
            let g1 = &gb[b.gb_offset..b.gb_offset + 2 * p1.c];
            let a1 = bn_scale(&g1[..p1.c], &bn1.inv_std);
            let mut kept = BranchSaved::default();
            match &b.second {
                None => {
                    scales.push(a1);
                    drop(bn_timer);
                }
                Some(sg) => {
                    let mean: Vec<f32> = bn1.stats.iter().map(|s| s.mean()).collect();
                    let var: Vec<f32> = bn1.stats.iter().map(|s| s.var).collect();
                    let pad_values = super::pad_constants(
                        &g1[..p1.c],
                        &g1[p1.c..],
                        (&mean, &var, p1.n * p1.hw),
                        (&sg.running_mean, &sg.running_var),
                        sg.factor,
                        self.eps,
                    );
                    let norm = (bn1.stats.as_slice(), a1.as_slice(), &g1[p1.c..]);
                    let (padded, z2, stats2) = match &sg.stage {
                        StageGeom::AvgPool(p) if p.stride == 1 && p.padding == 0 => {
                            drop(bn_timer);
                            let (z, st) =
                                normalise_pad_avg(z1s, &first_dims, sg.pad, &pad_values, norm, p);
                            (None, z, Some(st))
                        }
                        stage => {
                            let padded =
                                normalise_padded(z1s, &first_dims, sg.pad, &pad_values, norm);
                            drop(bn_timer);
                            let (z, st) = match stage {
                                StageGeom::Conv {
                                    shape,
                                    weight_offset,
                                } => {
                                    let (z, st) =
                                        shape.forward_stats(&padded, &w[*weight_offset..]);
                                    (z, Some(st))
                                }
                                StageGeom::AvgPool(p) => (p.forward(PoolKind::Avg, &padded), None),
                            };
                            // Only the conv's weight gradient reads the padded input again.
                            let keep = matches!(stage, StageGeom::Conv { .. });
                            (keep.then_some(padded), z, st)
                        }
                    };
                    let _t = Timer::start(Phase::BnForward);
                    let bn2 = match stats2 {
                        Some(st) => self.saved_from(st),
                        None => self.normalisation(&z2, planes),
                    };
                    let g2 = &gb[sg.gb_offset..sg.gb_offset + 2 * planes.c];
                    scales.push(bn_scale(&g2[..planes.c], &bn2.inv_std));
                    if self.keep_for_backward {
                        kept.padded = padded;
                    }
                    kept.z2 = Some(z2);
                    kept.bn2 = Some(bn2);
                }
            }
            kept.bn1 = bn1;
            kept.z1 = z1;
            saved.branches.push(kept);
        }
        // Every branch's normalised output, summed in one pass.
        let bn_timer = Timer::start(Phase::BnForward);
        let terms: Vec<Term<'_>> = self
            .branches
            .iter()
            .zip(&saved.branches)
            .zip(scales)
            .map(|((b, kept), a)| match (&b.second, &kept.bn2, &kept.z2) {
                (Some(sg), Some(bn2), Some(z2)) => Ok(Term {
                    z: z2,
                    stats: &bn2.stats,
                    a,
                    beta: &gb[sg.gb_offset + planes.c..sg.gb_offset + 2 * planes.c],
                }),
                (None, _, _) => Ok(Term {
                    z: kept.z1.as_deref().unwrap_or(x),
                    stats: &kept.bn1.stats,
                    a,
                    beta: &gb[b.gb_offset + planes.c..b.gb_offset + 2 * planes.c],
                }),
                _ => Err(candle_core::Error::Msg(format!(
                    "{}: a two-stage branch lost its second stage",
                    self.name()
                ))),
            })
            .collect::<candle_core::Result<_>>()?;
        let len = dims.iter().product();
        let post_bn = self.post.and_then(|p| p.bn_offset);
        let (mut y, sum_stats) =
            sum_normalised(&terms, planes.c, planes.hw, len, post_bn.is_some());
        drop(terms);
        if !self.keep_for_backward {
            for kept in &mut saved.branches {
                kept.z1 = None;
                kept.z2 = None;
            }
        }
        drop(bn_timer);
        let (out, out_dims) = match (self.post, post_bn, sum_stats) {
            (Some(post), Some(off), Some(stats)) => {
                let g = &gb[off..off + 2 * planes.c];
                let (out, out_dims, inv_std) =
                    tail_forward(&y, &dims, &stats, post.tail(self.eps), g)?;
                if self.keep_for_backward {
                    saved.sum = Some(y);
                }
                saved.post = Some(BnSaved { stats, inv_std });
                (out, out_dims)
            }
            (Some(post), None, _) => match post.pool {
                // Without a BN: the ReLU in place (its backward reads the output), or the
                // ReLU and pool per plane (the backward recomputes them from the kept sum).
                None => {
                    if post.relu {
                        relu_in_place(&mut y);
                    }
                    (y, dims)
                }
                Some(pool) => {
                    let (out, out_dims) = relu_max_pool(&y, &dims, post.relu, pool)?;
                    if self.keep_for_backward {
                        saved.sum = Some(y);
                    }
                    (out, out_dims)
                }
            },
            _ => (y, dims),
        };
        *self.saved.lock() = saved;
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weights: &Tensor,
        gb: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = output_dims(&self.branches, x.dims())?;
        let planes = Planes::of(&dims)?;
        let gb_v = gb.flatten_all()?.to_vec1::<f32>()?;
        let saved = self.saved.lock();
        let missing =
            || candle_core::Error::Msg(format!("{}: backward without a kept forward", self.name()));
        if saved.branches.len() != self.branches.len() {
            return Err(missing());
        }
        // Every branch adds its input gradient into one buffer where it is made.
        let mut dx: Option<Vec<f32>> = x.track_op().then(|| vec![0.0f32; x.elem_count()]);
        let mut dw = vec![0.0f32; weights.elem_count()];
        let mut dgb = vec![0.0f32; gb_v.len()];
        // Through the unit's pool, ReLU and BN first: the gradient reaching the branches' sum.
        let dsum: Option<Vec<f32>> = match self.post {
            None => None,
            Some(post) if post.bn_offset.is_none() => {
                let _t = Timer::start(Phase::Relu);
                let dz = with_f32(dy, self.name(), |g| {
                    with_f32(y, self.name(), |out| match post.pool {
                        None => Ok(relu_grad(out, g)),
                        Some(pool) => {
                            let sum = saved.sum.as_deref().ok_or_else(missing)?;
                            relu_max_pool_backward(sum, &dims, post.relu, pool, g)
                        }
                    })
                })???;
                Some(dz)
            }
            Some(post) => {
                let (Some(sum), Some(bn), Some(off)) = (&saved.sum, &saved.post, post.bn_offset)
                else {
                    return Err(missing());
                };
                let (dz, dgb_post) = with_f32(dy, self.name(), |g| {
                    with_f32(y, self.name(), |out| {
                        tail_backward(
                            &dims,
                            post.tail(self.eps),
                            (&bn.stats, &bn.inv_std),
                            sum,
                            &gb_v[off..off + 2 * planes.c],
                            (out, g),
                            self.name(),
                        )
                    })
                })???;
                dgb[off..off + 2 * planes.c].copy_from_slice(&dgb_post);
                Some(dz)
            }
        };
        with_f32(x, self.name(), |xs| {
            with_f32(weights, self.name(), |ws| {
                with_f32(dy, self.name(), |g_out| -> candle_core::Result<()> {
                    let g: &[f32] = dsum.as_deref().unwrap_or(g_out);
                    // Members of the shared patch matrix get their weight gradients together
                    // after the loop, from their first BN's input gradients kept here.
                    let share = self.patch_share();
                    let mut member_dz: Vec<Option<Vec<f32>>> = match &share {
                        Some((plan, _)) => vec![None; plan.members.len()],
                        None => Vec::new(),
                    };
                    // The single-stage branches' BNs all receive `g`: their reductions in one
                    // pass over it.
                    let mut single = self.single_stage_coefs(g, xs, &saved, &gb_v, planes)?;
                    for (bi, (b, kept)) in self.branches.iter().zip(&saved.branches).enumerate() {
                        let first_dims = b.first_dims(x.dims());
                        let p1 = Planes::of(&first_dims)?;
                        // The gradient reaching the first BN's output.
                        let g1: std::borrow::Cow<'_, [f32]> = match &b.second {
                            None => std::borrow::Cow::Borrowed(g),
                            Some(sg) => {
                                let (Some(z2), Some(bn2)) = (&kept.z2, &kept.bn2) else {
                                    return Err(missing());
                                };
                                let bn_timer = Timer::start(Phase::BnBackward);
                                let gamma2 = &gb_v[sg.gb_offset..sg.gb_offset + planes.c];
                                let (dz2, dgamma2, dbeta2) = bn_backward(
                                    g,
                                    None,
                                    z2,
                                    planes,
                                    &bn2.stats,
                                    &bn2.inv_std,
                                    gamma2,
                                );
                                let o = sg.gb_offset;
                                dgb[o..o + planes.c].copy_from_slice(&dgamma2);
                                dgb[o + planes.c..o + 2 * planes.c].copy_from_slice(&dbeta2);
                                drop(bn_timer);
                                // The pad constants carry no gradient: only the interior
                                // of the padded input's gradient goes on.
                                let interior = match &sg.stage {
                                    StageGeom::Conv {
                                        shape,
                                        weight_offset,
                                    } => {
                                        let Some(padded) = &kept.padded else {
                                            return Err(missing());
                                        };
                                        let wlen = shape.weight_len();
                                        let gw = shape.weight_grad(padded, &dz2);
                                        dw[*weight_offset..*weight_offset + wlen]
                                            .copy_from_slice(&gw);
                                        let dpadded = shape.input_grad(
                                            &ws[*weight_offset..*weight_offset + wlen],
                                            &dz2,
                                        );
                                        crop(&dpadded, &first_dims, sg.pad)
                                    }
                                    // A stride-1 pool computes just the interior.
                                    StageGeom::AvgPool(p) => {
                                        p.avg_backward_interior(&dz2, sg.pad).unwrap_or_else(|| {
                                            crop(&p.avg_backward(&dz2), &first_dims, sg.pad)
                                        })
                                    }
                                };
                                std::borrow::Cow::Owned(interior)
                            }
                        };
                        let z1 = kept.first_bn_input(b, xs).ok_or_else(missing)?;
                        let bn_timer = Timer::start(Phase::BnBackward);
                        let (dz, dgamma, dbeta) = match single[bi].take() {
                            Some(grad) => {
                                let dz = grad.dz(&g1, z1, &kept.bn1.stats, p1);
                                let (dgamma, dbeta) = grad.affine_grads(&kept.bn1.inv_std);
                                (dz, dgamma, dbeta)
                            }
                            None => bn_backward(
                                &g1,
                                None,
                                z1,
                                p1,
                                &kept.bn1.stats,
                                &kept.bn1.inv_std,
                                &gb_v[b.gb_offset..b.gb_offset + p1.c],
                            ),
                        };
                        let o = b.gb_offset;
                        dgb[o..o + p1.c].copy_from_slice(&dgamma);
                        dgb[o + p1.c..o + 2 * p1.c].copy_from_slice(&dbeta);
                        let hw = p1.hw.max(1);
                        drop(bn_timer);
                        if let Some(off) = b.bias_offset {
                            // Σ dz per channel: zero up to rounding (the BN subtracts the bias
                            // again), kept so the bias is trained exactly as unfused.
                            let mut db = vec![0.0f64; p1.c];
                            for (pi, p) in dz.chunks(hw).enumerate() {
                                db[pi % p1.c] += p.iter().map(|&v| v as f64).sum::<f64>();
                            }
                            for ch in 0..p1.c {
                                dw[off + ch] = db[ch] as f32;
                            }
                        }
                        match &b.conv {
                            Some(s) => {
                                let wlen = s.weight_len();
                                let member = share.as_ref().and_then(|(_, of)| of[bi]);
                                if member.is_none() {
                                    let gw = s.weight_grad(xs, &dz);
                                    dw[b.weight_offset..b.weight_offset + wlen]
                                        .copy_from_slice(&gw);
                                }
                                if let Some(dx) = dx.as_mut() {
                                    s.input_grad_add(
                                        &ws[b.weight_offset..b.weight_offset + wlen],
                                        &dz,
                                        dx,
                                    );
                                }
                                if let Some(j) = member {
                                    member_dz[j] = Some(dz);
                                }
                            }
                            None => {
                                if let Some(dx) = dx.as_mut() {
                                    add_into(dx, &dz);
                                }
                            }
                        }
                    }
                    if let Some((plan, of_branch)) = &share {
                        let dzs: Vec<&[f32]> = member_dz
                            .iter()
                            .map(|d| d.as_deref().ok_or_else(missing))
                            .collect::<candle_core::Result<_>>()?;
                        let grads = plan.weight_grads(xs, &dzs);
                        for (b, m) in self.branches.iter().zip(of_branch) {
                            if let Some(j) = m {
                                let gw = &grads[*j];
                                dw[b.weight_offset..b.weight_offset + gw.len()].copy_from_slice(gw);
                            }
                        }
                    }
                    Ok(())
                })
            })
        })????;
        drop(saved);
        let dx = dx.map(|d| tensor_like(d, x.dims(), x)).transpose()?;
        let dw = weights
            .track_op()
            .then(|| tensor_like(dw, weights.dims(), weights))
            .transpose()?;
        let dgb = gb
            .track_op()
            .then(|| tensor_like(dgb, gb.dims(), gb))
            .transpose()?;
        Ok((dx, dw, dgb))
    }
}

/// `max(v, 0)` in place, in parallel.
fn relu_in_place(y: &mut [f32]) {
    y.par_chunks_mut(1 << 14).for_each(|c| {
        for v in c {
            *v = v.max(0.0);
        }
    });
}

/// The identity or a ReLU, as the activation [`max_pool_activated`] pools.
fn rectifier(relu: bool) -> impl Fn(f32) -> f32 + Copy {
    move |v| if relu { v.max(0.0) } else { v }
}

/// The max pool (after a ReLU when `relu`) of `[N, C, H, W]` data `z`, each plane rectified in
/// scratch and pooled from there (the rectified activation is never stored).
fn relu_max_pool(
    z: &[f32],
    dims: &[usize],
    relu: bool,
    pool: MaxPoolParams,
) -> candle_core::Result<(Vec<f32>, Vec<usize>)> {
    let _t = Timer::start(Phase::Pool);
    let ps = PoolShape::new(PoolKind::Max, dims, pool.k, pool.stride, pool.padding)
        .map_err(candle_core::Error::wrap)?;
    let y = max_pool_activated(z, dims[2] * dims[3], &ps, |_| rectifier(relu));
    Ok((y, vec![dims[0], dims[1], ps.ho, ps.wo]))
}

/// The backward of [`relu_max_pool`]: from the pooled gradient `dy` to the gradient of `z`,
/// the rectified planes recomputed.
fn relu_max_pool_backward(
    z: &[f32],
    dims: &[usize],
    relu: bool,
    pool: MaxPoolParams,
    dy: &[f32],
) -> candle_core::Result<Vec<f32>> {
    let ps = PoolShape::new(PoolKind::Max, dims, pool.k, pool.stride, pool.padding)
        .map_err(candle_core::Error::wrap)?;
    let (hw, ohw) = ((dims[2] * dims[3]).max(1), (ps.ho * ps.wo).max(1));
    if dy.len() != ps.planes * ps.ho * ps.wo || z.len() != ps.planes * hw {
        return Err(candle_core::Error::Msg(format!(
            "block pool backward: {} gradient values for {} planes of {}×{}",
            dy.len(),
            ps.planes,
            ps.ho,
            ps.wo
        )));
    }
    let mut dz = vec![0.0f32; z.len()];
    dz.par_chunks_mut(hw)
        .zip(z.par_chunks(hw).zip(dy.par_chunks(ohw)))
        .for_each(|(dzp, (zp, dyp))| {
            with_unpooled_grad(&ps, zp, rectifier(relu), dyp, |act, d| {
                for ((o, &dv), &a) in dzp.iter_mut().zip(d).zip(act) {
                    *o = if relu && a <= 0.0 { 0.0 } else { dv };
                }
            })
        });
    Ok(dz)
}

/// Adds a per-channel bias to `[N, C, H, W]` data.
fn add_channel_bias(z: &mut [f32], bias: &[f32], c: usize, hw: usize) {
    z.par_chunks_mut(hw.max(1)).enumerate().for_each(|(i, p)| {
        let b = bias[i % c];
        for v in p.iter_mut() {
            *v += b;
        }
    });
}

/// `acc += g`, in parallel.
fn add_into(acc: &mut [f32], g: &[f32]) {
    acc.par_chunks_mut(1 << 14)
        .zip(g.par_chunks(1 << 14))
        .for_each(|(a, g)| {
            for (a, b) in a.iter_mut().zip(g) {
                *a += b;
            }
        });
}
