//! Fused batch norm on the CPU (candle composes it from a dozen elementwise ops): train mode is one
//! statistics pass (per-channel shifted sums in f64, parallel over channels) and one
//! normalise-and-affine pass; its backward is one reduction pass (Σdy, Σdy·(x−μ)) and one pass
//! writing dx, dγ, dβ, with the gradient through the batch statistics included. Eval mode is a
//! per-channel affine op with its own backward. Replaces ~10 candle ops and their autograd.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::{assume_init_vec, slice_f32, tensor_like, uninit_vec, with_f32};
use crate::error::Result;
use crate::lanes::{shifted_sums, GradPass};
use crate::profile::{Phase, Timer};
use crate::{arg, check_own, check_per_channel, Backend};

/// `[N, C, H, W]` as (images, channels, plane size).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Planes {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
}

impl Planes {
    pub fn of(dims: &[usize]) -> candle_core::Result<Self> {
        match dims {
            [n, c, h, w] => Ok(Self {
                n: *n,
                c: *c,
                hw: h * w,
            }),
            _ => Err(candle_core::Error::Msg(format!(
                "batch norm expects [N, C, H, W], got {dims:?}"
            ))),
        }
    }

    fn count(&self) -> usize {
        self.n * self.hw
    }

    /// The `hw` values of channel `c` in image `n`.
    fn plane<'a>(&self, data: &'a [f32], n: usize, c: usize) -> &'a [f32] {
        let start = (n * self.c + c) * self.hw;
        &data[start..start + self.hw]
    }

    /// Per-channel reduction `f(channel, [planes of that channel])`, parallel over channels.
    fn per_channel<R: Send>(&self, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
        (0..self.c).into_par_iter().map(f).collect()
    }
}

/// Batch statistics of one channel. The mean is kept relative to a shift (the channel's first
/// value) so that `x − μ` is computed as `(x − shift) − mean_rel` without cancelling when the
/// spread of a channel is small next to its mean.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChannelStats {
    pub shift: f32,
    pub mean_rel: f32,
    pub var: f32,
}

impl ChannelStats {
    pub fn mean(&self) -> f32 {
        (self.shift as f64 + self.mean_rel as f64) as f32
    }
}

/// Per-channel mean and biased variance of `x` (`[N, C, H, W]`, contiguous f32).
pub(crate) fn channel_stats(x: &[f32], p: Planes) -> Vec<ChannelStats> {
    p.per_channel(|c| {
        let sums: Vec<PlaneSums> = (0..p.n).map(|n| plane_sums(p.plane(x, n, c))).collect();
        stats_from_plane_sums(sums.into_iter(), p.hw)
    })
}

/// One plane's sums relative to its own first value (`shift`), in f32 (lane-parallel:
/// `lanes.rs`). Each plane has its own shift so that planes can be summed in any order and in
/// parallel — no plane has to be seen before the others.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PlaneSums {
    pub shift: f32,
    /// `Σ (v − shift)`.
    pub s: f32,
    /// `Σ (v − shift)²`.
    pub ss: f32,
}

pub(crate) fn plane_sums(plane: &[f32]) -> PlaneSums {
    let shift = plane.first().copied().unwrap_or(0.0);
    let (s, ss) = shifted_sums(plane, shift);
    PlaneSums { shift, s, ss }
}

/// One channel's statistics from its planes' [`plane_sums`] (in image order, `hw` values each):
/// every plane's sums are moved to the first plane's shift and added in f64
/// (`Σ(v − s₀) = S + n·δ`, `Σ(v − s₀)² = Q + 2δ·S + n·δ²` with `δ = shift − s₀`).
pub(crate) fn stats_from_plane_sums(
    sums: impl Iterator<Item = PlaneSums>,
    hw: usize,
) -> ChannelStats {
    let mut sums = sums.peekable();
    let shift = sums.peek().map_or(0.0, |p| p.shift);
    let n = hw as f64;
    let (mut s, mut ss, mut count) = (0.0f64, 0.0f64, 0usize);
    for p in sums {
        let d = p.shift as f64 - shift as f64;
        s += p.s as f64 + n * d;
        ss += p.ss as f64 + 2.0 * d * p.s as f64 + n * d * d;
        count += hw;
    }
    let count = count.max(1) as f64;
    let mean_rel = s / count;
    ChannelStats {
        shift,
        mean_rel: mean_rel as f32,
        var: (ss / count - mean_rel * mean_rel).max(0.0) as f32,
    }
}

/// Train-mode batch-norm backward over `[N, C, H, W]` data `z` (the BN input) with the batch
/// statistics and `inv_std` it was normalised with: from the gradient reaching the BN output
/// (`dy`, masked to where `relu_out > 0` when the BN fed a ReLU) to `(dz, dγ, dβ)`, including
/// the gradient through the batch statistics. Two passes: per-plane sums while writing the
/// masked gradient, then `dz = a·g + e·(z−μ) + f` in place.
pub(crate) fn bn_backward(
    dy: &[f32],
    relu_out: Option<&[f32]>,
    z: &[f32],
    p: Planes,
    stats: &[ChannelStats],
    inv_std: &[f32],
    gamma: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    assert!(
        dy.len() == z.len() && relu_out.is_none_or(|y| y.len() == z.len()),
        "bn_backward: gradient, input and output lengths differ"
    );
    // SAFETY: `GradPass::run` writes all of `out` (its slices have `out`'s length: `dy` and
    // `relu_out` have `z`'s, asserted above).
    unsafe {
        bn_backward_with(z, p, stats, inv_std, gamma, |pi, range, out| {
            let st = stats[pi % p.c];
            GradPass {
                dy: &dy[range.clone()],
                z: &z[range.clone()],
                relu_out: relu_out.map(|y| &y[range]),
                shift: st.shift,
                mean_rel: st.mean_rel,
                out_scale: 1.0,
            }
            .run(Some(out))
        })
    }
}

/// [`bn_backward`] with its first pass given: `first_pass(plane, range, out)` writes plane
/// `plane`'s (masked) output gradient `d` — `range` is the plane's place in `z` — into `out`
/// in full and returns `(Σ d, Σ d·(z − μ))` for it (a [`GradPass`]); then the statistics'
/// gradient and the second pass as in [`bn_backward`]. For callers whose `d` comes from
/// somewhere else than a stored gradient (the fused max pool recomputes it per plane).
///
/// # Safety
/// `first_pass` must write every element of the `out` it is given.
pub(crate) unsafe fn bn_backward_with(
    z: &[f32],
    p: Planes,
    stats: &[ChannelStats],
    inv_std: &[f32],
    gamma: &[f32],
    first_pass: impl Fn(usize, std::ops::Range<usize>, &mut [MaybeUninit<f32>]) -> (f32, f32) + Sync,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (c, hw) = (p.c, p.hw.max(1));
    let mut dz = uninit_vec(z.len());
    let plane_sums: Vec<(f32, f32)> = dz
        .par_chunks_mut(hw)
        .enumerate()
        .map(|(pi, out)| first_pass(pi, pi * hw..pi * hw + out.len(), out))
        .collect();
    // SAFETY: `first_pass` writes every element of its plane (the caller's contract), and the
    // planes cover `dz`.
    let mut dz = unsafe { assume_init_vec(dz) };
    let grad = GradCoefs::new(plane_sums.into_iter(), p, inv_std, gamma);
    dz.par_chunks_mut(hw)
        .zip(z.par_chunks(hw))
        .enumerate()
        .for_each(|(pi, (out, zp))| {
            let (a, e, f) = grad.coef[pi % c];
            let st = stats[pi % c];
            for (o, &v) in out.iter_mut().zip(zp) {
                *o = a * *o + e * ((v - st.shift) - st.mean_rel) + f;
            }
        });
    let (dgamma, dbeta) = grad.affine_grads(inv_std);
    (dz, dgamma, dbeta)
}

/// The gradient through one train-mode BN from its per-plane sums `(Σ g, Σ g·(z − μ))` (in
/// plane order): per channel `dz = a·g + e·(z−μ) + f` with `a = γ·istd`,
/// `e = −a·istd²·Σg(z−μ)/M`, `f = −a·Σg/M`, the sums added per channel in f64.
pub(crate) struct GradCoefs {
    sums: Vec<(f64, f64)>,
    coef: Vec<(f32, f32, f32)>,
}

impl GradCoefs {
    fn new(
        plane_sums: impl Iterator<Item = (f32, f32)>,
        p: Planes,
        inv_std: &[f32],
        gamma: &[f32],
    ) -> Self {
        let c = p.c;
        let m = p.count().max(1) as f64;
        let mut sums = vec![(0.0f64, 0.0f64); c];
        for (pi, (a, b)) in plane_sums.enumerate() {
            sums[pi % c].0 += a as f64;
            sums[pi % c].1 += b as f64;
        }
        let coef = (0..c)
            .map(|ch| {
                let istd = inv_std[ch] as f64;
                let a = gamma[ch] as f64 * istd;
                let (s1, s2) = sums[ch];
                (
                    a as f32,
                    (-a * istd * istd * s2 / m) as f32,
                    (-a * s1 / m) as f32,
                )
            })
            .collect();
        Self { sums, coef }
    }

    /// `(dγ, dβ)`: `Σ g·(z−μ)·istd` and `Σ g` per channel.
    pub(crate) fn affine_grads(&self, inv_std: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let dgamma = self
            .sums
            .iter()
            .zip(inv_std)
            .map(|(s, &istd)| (s.1 * istd as f64) as f32)
            .collect();
        let dbeta = self.sums.iter().map(|s| s.0 as f32).collect();
        (dgamma, dbeta)
    }
}

/// One of several BNs whose outputs receive the same gradient (for [`shared_grad_coefs`]):
/// its input `z` and what it was normalised with.
pub(crate) struct SharedBn<'a> {
    pub z: &'a [f32],
    pub stats: &'a [ChannelStats],
    pub inv_std: &'a [f32],
    pub gamma: &'a [f32],
}

/// The first half of [`bn_backward`] (without a ReLU) for several BNs over inputs of one shape
/// whose outputs are summed, so that one gradient `dy` reaches them all (a grown block's
/// single-stage branches): every BN's per-plane sums in one parallel pass that reads each plane
/// of `dy` from memory once for all of them. [`GradCoefs::dz`] then writes each BN's input
/// gradient straight from `dy`. The same values, bit for bit, as [`bn_backward`] on each BN:
/// the same sums in the same lane order, and `a·g + e·(z−μ) + f` in the same order of operations.
pub(crate) fn shared_grad_coefs(dy: &[f32], p: Planes, bns: &[SharedBn<'_>]) -> Vec<GradCoefs> {
    assert!(
        bns.iter().all(|b| b.z.len() == dy.len()),
        "shared_grad_coefs: gradient and input lengths differ"
    );
    let (hw, k) = (p.hw.max(1), bns.len().max(1));
    // Plane `pi`'s sums for BN `bi` at `pi·k + bi`.
    let mut plane_sums = vec![(0.0f32, 0.0f32); dy.len() / hw * k];
    plane_sums
        .par_chunks_mut(k)
        .enumerate()
        .for_each(|(pi, sums)| {
            let range = pi * hw..(pi + 1) * hw;
            for (out, b) in sums.iter_mut().zip(bns) {
                let st = b.stats[pi % p.c];
                *out = GradPass {
                    dy: &dy[range.clone()],
                    z: &b.z[range.clone()],
                    relu_out: None,
                    shift: st.shift,
                    mean_rel: st.mean_rel,
                    out_scale: 1.0,
                }
                .run(None);
            }
        });
    bns.iter()
        .enumerate()
        .map(|(bi, b)| {
            let sums = plane_sums.iter().skip(bi).step_by(k).copied();
            GradCoefs::new(sums, p, b.inv_std, b.gamma)
        })
        .collect()
}

impl GradCoefs {
    /// The BN's input gradient `a·g + e·(z−μ) + f` from the gradient `dy` reaching its output
    /// and its input `z` (normalised with `stats`).
    pub(crate) fn dz(&self, dy: &[f32], z: &[f32], stats: &[ChannelStats], p: Planes) -> Vec<f32> {
        assert!(
            z.len() == dy.len(),
            "GradCoefs::dz: gradient and input lengths differ"
        );
        let hw = p.hw.max(1);
        let mut dz = uninit_vec(dy.len());
        dz.par_chunks_mut(hw)
            .zip(dy.par_chunks(hw).zip(z.par_chunks(hw)))
            .enumerate()
            .for_each(|(pi, (out, (gp, zp)))| {
                let (a, e, f) = self.coef[pi % p.c];
                let st = stats[pi % p.c];
                for ((o, &g), &v) in out.iter_mut().zip(gp).zip(zp) {
                    o.write(a * g + e * ((v - st.shift) - st.mean_rel) + f);
                }
            });
        // SAFETY: the planes cover `dz` (it has `dy`'s length, as `z`: asserted) and every
        // element of each was written just above.
        unsafe { assume_init_vec(dz) }
    }
}

/// `y = x·a_c + b_c`, parallel over (image, channel) planes.
fn affine_planes(x: &[f32], p: Planes, a: &[f32], b: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0f32; x.len()];
    y.par_chunks_mut(p.hw.max(1))
        .zip(x.par_chunks(p.hw.max(1)))
        .enumerate()
        .for_each(|(i, (yp, xp))| {
            let c = i % p.c;
            let (ac, bc) = (a[c], b[c]);
            for (o, &v) in yp.iter_mut().zip(xp) {
                *o = v * ac + bc;
            }
        });
    y
}

/// Train-mode batch norm with given batch statistics: arguments `(x, γ, β)`.
#[derive(Clone, Debug)]
pub(crate) struct BnTrainOp {
    pub stats: Vec<ChannelStats>,
    pub inv_std: Vec<f32>,
}

impl BnTrainOp {
    pub fn new(stats: Vec<ChannelStats>, eps: f64) -> Self {
        let inv_std = stats
            .iter()
            .map(|s| (1.0 / (s.var as f64 + eps).sqrt()) as f32)
            .collect();
        Self { stats, inv_std }
    }
}

impl CustomOp3 for BnTrainOp {
    fn name(&self) -> &'static str {
        "dyrep-batch-norm-train"
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
        let _t = Timer::start(Phase::BnForward);
        let p = Planes::of(l1.dims())?;
        let x = slice_f32(s1, l1, self.name())?;
        let gamma = slice_f32(s2, l2, self.name())?;
        let beta = slice_f32(s3, l3, self.name())?;
        let mut y = vec![0.0f32; x.len()];
        y.par_chunks_mut(p.hw.max(1))
            .zip(x.par_chunks(p.hw.max(1)))
            .enumerate()
            .for_each(|(i, (yp, xp))| {
                let c = i % p.c;
                let st = self.stats[c];
                let (a, b) = (gamma[c] * self.inv_std[c], beta[c]);
                for (o, &v) in yp.iter_mut().zip(xp) {
                    *o = ((v - st.shift) - st.mean_rel) * a + b;
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let _t = Timer::start(Phase::BnBackward);
        let p = Planes::of(x.dims())?;
        let gamma_v = gamma.to_vec1::<f32>()?;
        let (dx, dgamma, dbeta) = with_f32(x, self.name(), |xs| {
            with_f32(dy, self.name(), |g| {
                bn_backward(g, None, xs, p, &self.stats, &self.inv_std, &gamma_v)
            })
        })??;
        let dx = x
            .track_op()
            .then(|| tensor_like(dx, x.dims(), x))
            .transpose()?;
        Ok((
            dx,
            Some(tensor_like(dgamma, &[p.c], gamma)?),
            Some(tensor_like(dbeta, &[p.c], gamma)?),
        ))
    }
}

/// Per-channel affine `y = x·scale + shift` (eval-mode batch norm): arguments `(x, scale, shift)`.
#[derive(Clone, Debug)]
pub(crate) struct ChannelAffineOp;

impl CustomOp3 for ChannelAffineOp {
    fn name(&self) -> &'static str {
        "dyrep-channel-affine"
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
        let p = Planes::of(l1.dims())?;
        let x = slice_f32(s1, l1, self.name())?;
        let scale = slice_f32(s2, l2, self.name())?;
        let shift = slice_f32(s3, l3, self.name())?;
        Ok((
            CpuStorage::F32(affine_planes(x, p, scale, shift)),
            l1.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let p = Planes::of(x.dims())?;
        let scale_v = scale.to_vec1::<f32>()?;
        let (dx, dscale, dshift) = with_f32(x, self.name(), |xs| {
            with_f32(dy, self.name(), |g| {
                let sums = p.per_channel(|c| {
                    let (mut s1, mut s2) = (0.0f64, 0.0f64);
                    for n in 0..p.n {
                        let (a, b) = GradPass {
                            dy: p.plane(g, n, c),
                            z: p.plane(xs, n, c),
                            relu_out: None,
                            shift: 0.0,
                            mean_rel: 0.0,
                            out_scale: 1.0,
                        }
                        .run(None);
                        s1 += a as f64;
                        s2 += b as f64;
                    }
                    (s1 as f32, s2 as f32)
                });
                let dx = x.track_op().then(|| {
                    let zeros = vec![0.0f32; p.c];
                    affine_planes(g, p, &scale_v, &zeros)
                });
                let (dshift, dscale): (Vec<f32>, Vec<f32>) = sums.into_iter().unzip();
                (dx, dscale, dshift)
            })
        })??;
        Ok((
            dx.map(|d| tensor_like(d, x.dims(), x)).transpose()?,
            scale
                .track_op()
                .then(|| tensor_like(dscale, &[p.c], scale))
                .transpose()?,
            shift
                .track_op()
                .then(|| tensor_like(dshift, &[p.c], shift))
                .transpose()?,
        ))
    }
}

/// A train-mode batch norm's output and the batch statistics it normalised with (detached).
#[derive(Debug)]
pub struct BatchNormTrain {
    pub y: Tensor,
    /// Per-channel batch mean `[C]`.
    pub mean: Tensor,
    /// Per-channel biased batch variance `[C]`.
    pub var: Tensor,
}

/// Train-mode batch norm of `x` (`[N, C, H, W]`) with batch statistics (gradients flow through
/// them) and affine `gamma`, `beta` (`[C]`).
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<BatchNormTrain> {
    batch_norm_train_on(Backend::for_tensor(x), x, gamma, beta, eps)
}

/// [`batch_norm_train`] on a chosen backend.
pub fn batch_norm_train_on(
    backend: Backend,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<BatchNormTrain> {
    let x = &arg(x);
    let gamma = &arg(gamma);
    let beta = &arg(beta);
    let (_, c, _, _) = x.dims4()?;
    check_per_channel(
        "batch_norm",
        x.dims(),
        c,
        &[("gamma", gamma), ("beta", beta)],
    )?;
    match backend {
        Backend::Own => {
            check_own(x, "batch_norm")?;
            let x = x.contiguous()?;
            let planes = Planes::of(x.dims())?;
            let stats = crate::cpu::with_f32(&x, "batch_norm", |xs| channel_stats(xs, planes))?;
            let (mean_t, var_t) = crate::side::stats_tensors(&stats, x.device())?;
            let op = BnTrainOp::new(stats, eps);
            let y = x.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
            Ok(BatchNormTrain {
                y,
                mean: mean_t,
                var: var_t,
            })
        }
        Backend::Candle => {
            let shape = (1, c, 1, 1);
            let mean = x.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3)?;
            let centred = x.broadcast_sub(&mean)?;
            let var = centred
                .sqr()?
                .mean_keepdim(0)?
                .mean_keepdim(2)?
                .mean_keepdim(3)?;
            let inv_std = (var.clone() + eps)?.sqrt()?.recip()?;
            let y = centred
                .broadcast_mul(&inv_std)?
                .broadcast_mul(&gamma.reshape(shape)?)?
                .broadcast_add(&beta.reshape(shape)?)?;
            Ok(BatchNormTrain {
                y,
                mean: mean.detach().reshape(c)?,
                var: var.detach().reshape(c)?,
            })
        }
    }
}

/// Per-channel affine `x·scale + shift` of `x` (`[N, C, H, W]`; `scale`, `shift` `[C]`), with
/// gradients to all three: an eval-mode batch norm.
pub fn channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    channel_affine_on(Backend::for_tensor(x), x, scale, shift)
}

/// [`channel_affine`] on a chosen backend.
pub fn channel_affine_on(
    backend: Backend,
    x: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
) -> Result<Tensor> {
    let x = &arg(x);
    let scale = &arg(scale);
    let shift = &arg(shift);
    let (_, c, _, _) = x.dims4()?;
    check_per_channel(
        "channel_affine",
        x.dims(),
        c,
        &[("scale", scale), ("shift", shift)],
    )?;
    match backend {
        Backend::Own => {
            check_own(x, "channel_affine")?;
            Ok(x.contiguous()?.apply_op3(
                &scale.contiguous()?,
                &shift.contiguous()?,
                ChannelAffineOp,
            )?)
        }
        Backend::Candle => Ok(x
            .broadcast_mul(&scale.reshape((1, c, 1, 1))?)?
            .broadcast_add(&shift.reshape((1, c, 1, 1))?)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_values;

    /// Batch statistics of data far from zero with a small spread, and a different level per
    /// image (so every plane's own shift differs from the channel's): against f64.
    #[test]
    fn channel_stats_of_offset_data_match_f64() {
        let p = Planes { n: 5, c: 3, hw: 37 };
        let noise = test_values(p.n * p.c * p.hw, 9);
        let x: Vec<f32> = noise
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let (n, c) = (i / (p.c * p.hw), (i / p.hw) % p.c);
                1000.0 + 0.5 * n as f32 + 3.0 * c as f32 + 0.01 * v
            })
            .collect();
        for (c, st) in channel_stats(&x, p).iter().enumerate() {
            let vals: Vec<f64> = (0..p.n)
                .flat_map(|n| p.plane(&x, n, c).iter().map(|&v| v as f64))
                .collect();
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
            let got_mean = st.shift as f64 + st.mean_rel as f64;
            assert!(
                (got_mean - mean).abs() <= 1e-6 * mean.abs(),
                "{c}: mean {got_mean} vs {mean}"
            );
            assert!(
                (st.var as f64 - var).abs() <= 1e-4 * var,
                "{c}: var {} vs {var}",
                st.var
            );
        }
    }

    /// Several BNs fed one gradient: the shared pass and `GradCoefs::dz` give what
    /// `bn_backward` gives each of them, bit for bit (a plane of 37 values leaves a tail after
    /// the vectors of 16; each BN's inputs have their own offset, scale and statistics).
    #[test]
    fn shared_bn_backward_equals_bn_backward_bitwise() {
        let p = Planes { n: 3, c: 4, hw: 37 };
        let len = p.n * p.c * p.hw;
        let dy = test_values(len, 21);
        let inputs: Vec<Vec<f32>> = (0..3u64)
            .map(|k| {
                test_values(len, 30 + k)
                    .iter()
                    .map(|v| (k as f32 + 1.0) * 2.5 * v + 10.0 * k as f32)
                    .collect()
            })
            .collect();
        let gammas: Vec<Vec<f32>> = (0..3u64).map(|k| test_values(p.c, 40 + k)).collect();
        let norms: Vec<(Vec<ChannelStats>, Vec<f32>)> = inputs
            .iter()
            .map(|z| {
                let stats = channel_stats(z, p);
                let inv_std = stats.iter().map(|s| 1.0 / (s.var + 1e-5).sqrt()).collect();
                (stats, inv_std)
            })
            .collect();
        let bns: Vec<SharedBn<'_>> = inputs
            .iter()
            .zip(&norms)
            .zip(&gammas)
            .map(|((z, (stats, inv_std)), gamma)| SharedBn {
                z,
                stats,
                inv_std,
                gamma,
            })
            .collect();
        for (k, (bn, grad)) in bns.iter().zip(shared_grad_coefs(&dy, p, &bns)).enumerate() {
            let want = bn_backward(&dy, None, bn.z, p, bn.stats, bn.inv_std, bn.gamma);
            let got_dz = grad.dz(&dy, bn.z, bn.stats, p);
            let (got_dgamma, got_dbeta) = grad.affine_grads(bn.inv_std);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got_dz), bits(&want.0), "BN {k}: dz");
            assert_eq!(bits(&got_dgamma), bits(&want.1), "BN {k}: dgamma");
            assert_eq!(bits(&got_dbeta), bits(&want.2), "BN {k}: dbeta");
        }
    }
}
