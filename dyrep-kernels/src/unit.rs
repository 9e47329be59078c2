//! A conv unit: conv → train-mode batch norm → optional ReLU as one candle op. candle's backward
//! adds every op's gradient into a fresh zero tensor (`or_insert(zeros_like) + add`: three passes
//! over each activation), so one node instead of three per conv unit removes most of the non-conv
//! cost of a training step, and the BN and ReLU outputs are never materialised twice. The conv
//! output is kept by the op for its backward. With a max pool after it (`pool`), the BN/ReLU output
//! is not stored at all: each plane is normalised and pooled in a scratch buffer, and the backward
//! recomputes it per plane. Arguments `(x, weight, γβ)` with `γβ = [γ; β]` of shape `[2, C]`.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::bn::{bn_backward, bn_backward_with, ChannelStats, Planes};
use crate::conv::conv_backward;
use crate::conv::ConvShape;
use crate::cpu::{assume_init_vec, slice_f32, tensor_like, uninit_vec, with_f32, with_scratch};
use crate::error::Result;
use crate::lanes::GradPass;
use crate::pool::{PoolKind, PoolShape};
use crate::profile::{Phase, Timer};
use crate::side::{stats_tensors, SideChannel};
use crate::{
    arg, batch_norm_train_on, channel_affine_on, check_own, check_per_channel, pool2d_on, Backend,
    BatchNormTrain, ConvParams,
};

/// What the forward leaves for the caller (batch statistics) and for the backward.
#[derive(Debug, Default)]
pub(crate) struct Saved {
    pub stats: Vec<ChannelStats>,
    pub inv_std: Vec<f32>,
    /// The conv output, kept only when a gradient will be asked for.
    pub conv_out: Option<Vec<f32>>,
}

#[derive(Clone, Debug)]
pub(crate) struct ConvBnReluOp {
    pub conv: ConvParams,
    pub eps: f64,
    pub relu: bool,
    /// A max pool after the ReLU, fused in: the unpooled activation is never stored.
    pub pool: Option<MaxPoolParams>,
    pub keep_for_backward: bool,
    pub saved: SideChannel<Saved>,
}

/// The fused pool's geometry on the conv output `dims`.
fn pool_shape(pool: MaxPoolParams, dims: &[usize]) -> candle_core::Result<PoolShape> {
    PoolShape::new(PoolKind::Max, dims, pool.k, pool.stride, pool.padding)
        .map_err(candle_core::Error::wrap)
}

/// The BN (+ReLU) output of one conv output value: `((v − shift) − mean_rel)·a + b`, then
/// `max(·, 0)` with the ReLU. One definition for the forward and for the backward that
/// recomputes it (fused pool), so both see the same bits.
#[inline]
fn normalised(v: f32, st: ChannelStats, a: f32, b: f32, relu: bool) -> f32 {
    let t = ((v - st.shift) - st.mean_rel) * a + b;
    if relu {
        t.max(0.0)
    } else {
        t
    }
}

/// What one conv → BN → ReLU (→ max pool) unit does after its conv: BN `eps`, ReLU, pool.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UnitTail {
    pub eps: f64,
    pub relu: bool,
    pub pool: Option<MaxPoolParams>,
}

/// One unit's forward on slices: the conv (taking the BN's batch statistics as it writes its
/// output), the BN, ReLU and pool. Returns the output and its dims, and what the backward
/// needs (the conv output only when `keep`).
pub(crate) fn unit_forward(
    shape: &ConvShape,
    tail: UnitTail,
    keep: bool,
    x: &[f32],
    w: &[f32],
    gb: &[f32],
) -> candle_core::Result<(Vec<f32>, Vec<usize>, Saved)> {
    let (z, stats) = shape.forward_stats(x, w);
    let (y, dims, inv_std) = tail_forward(&z, &shape.output_dims(), &stats, tail, gb)?;
    let saved = Saved {
        stats,
        inv_std,
        conv_out: keep.then_some(z),
    };
    Ok((y, dims, saved))
}

/// What follows the conv in a unit (or the branches' sum in a grown block), on its output `z`
/// (`dims`) with batch statistics `stats` and `gb = [γ; β]`: the BN, ReLU and max pool. Returns
/// the output, its dims and the BN's `1/sqrt(σ² + ε)` per channel.
pub(crate) fn tail_forward(
    z: &[f32],
    dims: &[usize],
    stats: &[ChannelStats],
    tail: UnitTail,
    gb: &[f32],
) -> candle_core::Result<(Vec<f32>, Vec<usize>, Vec<f32>)> {
    let _t = Timer::start(Phase::BnForward);
    let planes = Planes::of(dims)?;
    let c = planes.c;
    let inv_std: Vec<f32> = stats
        .iter()
        .map(|s| (1.0 / (s.var as f64 + tail.eps).sqrt()) as f32)
        .collect();
    let hw = planes.hw.max(1);
    let coef = |ch: usize| (stats[ch], gb[ch] * inv_std[ch], gb[c + ch]);
    let (y, dims) = match tail.pool {
        None => {
            let mut y = uninit_vec(z.len());
            y.par_chunks_mut(hw)
                .zip(z.par_chunks(hw))
                .enumerate()
                .for_each(|(i, (yp, zp))| {
                    let (st, a, b) = coef(i % c);
                    for (o, &v) in yp.iter_mut().zip(zp) {
                        o.write(normalised(v, st, a, b, tail.relu));
                    }
                });
            // SAFETY: `y` and `z` have the same length and are split into the same planes;
            // every plane of `y` is written element by element from its plane of `z`.
            (unsafe { assume_init_vec(y) }, dims.to_vec())
        }
        Some(pool) => {
            let ps = pool_shape(pool, dims)?;
            let y = max_pool_activated(z, hw, &ps, |i| {
                let (st, a, b) = coef(i % c);
                move |v| normalised(v, st, a, b, tail.relu)
            });
            (y, vec![planes.n, c, ps.ho, ps.wo])
        }
    };
    Ok((y, dims, inv_std))
}

/// The max pool `ps` of an activation of `[N, C, H, W]` data `z` (planes of `hw` values):
/// `act(plane)` gives plane `plane`'s activation of one value; each plane is activated into a
/// scratch buffer and pooled from there, so the activation is never stored.
pub(crate) fn max_pool_activated<A: Fn(f32) -> f32>(
    z: &[f32],
    hw: usize,
    ps: &PoolShape,
    act: impl Fn(usize) -> A + Sync,
) -> Vec<f32> {
    let ohw = (ps.ho * ps.wo).max(1);
    let mut y = vec![0.0f32; ps.planes * ps.ho * ps.wo];
    y.par_chunks_mut(ohw)
        .zip(z.par_chunks(hw.max(1)))
        .enumerate()
        .for_each(|(i, (yp, zp))| {
            let act = act(i);
            with_scratch(zp.len(), |unpooled| {
                for (o, &v) in unpooled.iter_mut().zip(zp) {
                    *o = act(v);
                }
                ps.max_plane(unpooled, yp);
            });
        });
    y
}

/// The backward of one plane of [`max_pool_activated`]: the plane's activation `act` of `zp`
/// again, in scratch, and the pooled gradient `dyp` spread back over it; returns
/// `f(unpooled, d_unpooled)`.
pub(crate) fn with_unpooled_grad<R>(
    ps: &PoolShape,
    zp: &[f32],
    act: impl Fn(f32) -> f32,
    dyp: &[f32],
    f: impl FnOnce(&[f32], &[f32]) -> R,
) -> R {
    with_scratch(2 * zp.len(), |buf| {
        let (unpooled, d_unpooled) = buf.split_at_mut(zp.len());
        for (o, &v) in unpooled.iter_mut().zip(zp) {
            *o = act(v);
        }
        d_unpooled.fill(0.0);
        ps.max_plane_backward(unpooled, dyp, d_unpooled);
        f(unpooled, d_unpooled)
    })
}

/// The BN (+ReLU, +pool) part of one unit's backward on slices: from the gradient `dy` of the
/// unit's output `y` to the conv output's gradient, and `[dγ; dβ]`.
pub(crate) fn unit_bn_backward(
    shape: &ConvShape,
    tail: UnitTail,
    saved: &Saved,
    gb: &[f32],
    y: &[f32],
    dy: &[f32],
    op: &'static str,
) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
    let Some(z) = saved.conv_out.as_ref() else {
        return Err(candle_core::Error::Msg(format!(
            "{op}: backward without a kept forward (the op was built for inference)"
        )));
    };
    let norm = (saved.stats.as_slice(), saved.inv_std.as_slice());
    tail_backward(&shape.output_dims(), tail, norm, z, gb, (y, dy), op)
}

/// The backward of [`tail_forward`]: from the gradient `dy` of its output `y` to the gradient
/// of its input `z` (`dims`, normalised with `(stats, inv_std)`), and `[dγ; dβ]`. With a max
/// pool the unpooled activation is recomputed per plane.
pub(crate) fn tail_backward(
    dims: &[usize],
    tail: UnitTail,
    (stats, inv_std): (&[ChannelStats], &[f32]),
    z: &[f32],
    gb: &[f32],
    (y, dy): (&[f32], &[f32]),
    op: &'static str,
) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
    let planes = Planes::of(dims)?;
    let c = planes.c;
    let _t = Timer::start(Phase::BnBackward);
    let (dz, dgamma, dbeta) = match tail.pool {
        None => {
            if dy.len() != z.len() || (tail.relu && y.len() != z.len()) {
                return Err(candle_core::Error::Msg(format!(
                    "{op}: gradient of {} values for a conv output of {}",
                    dy.len(),
                    z.len()
                )));
            }
            bn_backward(
                dy,
                tail.relu.then_some(y),
                z,
                planes,
                stats,
                inv_std,
                &gb[..c],
            )
        }
        Some(pool) => {
            let ps = pool_shape(pool, dims)?;
            let ohw = ps.ho * ps.wo;
            if dy.len() != ps.planes * ohw {
                return Err(candle_core::Error::Msg(format!(
                    "{op}: pooled gradient of {} values for {} planes of {}×{}",
                    dy.len(),
                    ps.planes,
                    ps.ho,
                    ps.wo
                )));
            }
            let first_pass = |pi: usize, range: std::ops::Range<usize>, out: &mut _| {
                let ch = pi % c;
                let (st, a, b) = (stats[ch], gb[ch] * inv_std[ch], gb[c + ch]);
                let zp = &z[range];
                let act = |v| normalised(v, st, a, b, tail.relu);
                let dyp = &dy[pi * ohw..(pi + 1) * ohw];
                with_unpooled_grad(&ps, zp, act, dyp, |unpooled, d_unpooled| {
                    GradPass {
                        dy: d_unpooled,
                        z: zp,
                        relu_out: tail.relu.then_some(unpooled),
                        shift: st.shift,
                        mean_rel: st.mean_rel,
                        out_scale: 1.0,
                    }
                    .run(Some(out))
                })
            };
            // SAFETY: `GradPass::run` writes all of `out`: its slices are the plane's
            // (`range`'s) length, as `out`.
            unsafe { bn_backward_with(z, planes, stats, inv_std, &gb[..c], first_pass) }
        }
    };
    Ok((dz, dgamma.into_iter().chain(dbeta).collect()))
}

impl ConvBnReluOp {
    fn tail(&self) -> UnitTail {
        UnitTail {
            eps: self.eps,
            relu: self.relu,
            pool: self.pool,
        }
    }
}

impl CustomOp3 for ConvBnReluOp {
    fn name(&self) -> &'static str {
        "dyrep-conv-bn-relu"
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
        let shape = self.conv.shape(l1.dims(), l2.dims())?;
        let x = slice_f32(s1, l1, self.name())?;
        let w = slice_f32(s2, l2, self.name())?;
        let gb = slice_f32(s3, l3, self.name())?;
        let (y, dims, saved) = unit_forward(&shape, self.tail(), self.keep_for_backward, x, w, gb)?;
        *self.saved.lock() = saved;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        gb: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let shape = self.conv.shape(x.dims(), weight.dims())?;
        let gb_v = gb.flatten_all()?.to_vec1::<f32>()?;
        let saved = self.saved.lock();
        let (dz, dgb) = with_f32(dy, self.name(), |g| {
            with_f32(y, self.name(), |ys| {
                unit_bn_backward(&shape, self.tail(), &saved, &gb_v, ys, g, self.name())
            })
        })???;
        drop(saved);
        let (dx, dw) = conv_backward(&shape, x, weight, &dz, self.name())?;
        let dgb = gb
            .track_op()
            .then(|| tensor_like(dgb, gb.dims(), gb))
            .transpose()?;
        Ok((dx, dw, dgb))
    }
}

/// conv → per-channel affine (an eval-mode batch norm) → optional ReLU as one op. Arguments
/// `(x, weight, [scale; shift])`; the backward sends gradients to all three. Without a
/// backward the affine and ReLU run in place on the conv output (no second buffer).
#[derive(Clone, Debug)]
pub(crate) struct ConvAffineReluOp {
    pub conv: ConvParams,
    pub relu: bool,
    pub keep_for_backward: bool,
    pub conv_out: SideChannel<Option<Vec<f32>>>,
}

impl CustomOp3 for ConvAffineReluOp {
    fn name(&self) -> &'static str {
        "dyrep-conv-affine-relu"
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
        let shape = self.conv.shape(l1.dims(), l2.dims())?;
        let x = slice_f32(s1, l1, self.name())?;
        let w = slice_f32(s2, l2, self.name())?;
        let ss = slice_f32(s3, l3, self.name())?;
        let c = shape.out;
        let z = shape.forward(x, w);
        let _t = Timer::start(Phase::BnForward);
        let hw = (shape.ho * shape.wo).max(1);
        let apply = |i: usize, out: &mut [f32], src: &[f32]| {
            let ch = i % c;
            let (a, b) = (ss[ch], ss[c + ch]);
            for (o, &v) in out.iter_mut().zip(src) {
                let t = v * a + b;
                *o = if self.relu { t.max(0.0) } else { t };
            }
        };
        let y = if self.keep_for_backward {
            let mut y = vec![0.0f32; z.len()];
            y.par_chunks_mut(hw)
                .zip(z.par_chunks(hw))
                .enumerate()
                .for_each(|(i, (o, src))| apply(i, o, src));
            *self.conv_out.lock() = Some(z);
            y
        } else {
            let mut y = z;
            y.par_chunks_mut(hw).enumerate().for_each(|(i, o)| {
                let ch = i % c;
                let (a, b) = (ss[ch], ss[c + ch]);
                for v in o.iter_mut() {
                    let t = *v * a + b;
                    *v = if self.relu { t.max(0.0) } else { t };
                }
            });
            y
        };
        Ok((
            CpuStorage::F32(y),
            Shape::from(shape.output_dims().to_vec()),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        ss: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let shape = self.conv.shape(x.dims(), weight.dims())?;
        let c = shape.out;
        let hw = (shape.ho * shape.wo).max(1);
        let ss_v = ss.flatten_all()?.to_vec1::<f32>()?;
        let guard = self.conv_out.lock();
        let Some(z) = guard.as_ref() else {
            return Err(candle_core::Error::Msg(format!(
                "{}: backward without a kept forward (the op was built for inference)",
                self.name()
            )));
        };
        let bn_timer = Timer::start(Phase::BnBackward);
        // dz = dy·mask·scale, with per-plane Σ dy·mask (→ shift) and Σ dy·mask·z (→ scale).
        let mut dz = uninit_vec(z.len());
        let plane_sums: Vec<(f32, f32)> = with_f32(dy, self.name(), |g| {
            with_f32(y, self.name(), |ys| {
                dz.par_chunks_mut(hw)
                    .enumerate()
                    .map(|(pi, out)| {
                        let at = pi * hw;
                        let end = at + out.len();
                        GradPass {
                            dy: &g[at..end],
                            z: &z[at..end],
                            relu_out: self.relu.then(|| &ys[at..end]),
                            shift: 0.0,
                            mean_rel: 0.0,
                            out_scale: ss_v[pi % c],
                        }
                        .run(Some(out))
                    })
                    .collect()
            })
        })??;
        // SAFETY: the chunks cover `dz` and `GradPass::run` wrote each in full.
        let dz = unsafe { assume_init_vec(dz) };
        let mut dss = vec![0.0f32; 2 * c];
        for (pi, (a, b)) in plane_sums.into_iter().enumerate() {
            dss[pi % c] += b;
            dss[c + pi % c] += a;
        }
        drop(guard);
        drop(bn_timer);
        let (dx, dw) = conv_backward(&shape, x, weight, &dz, self.name())?;
        let dss = ss
            .track_op()
            .then(|| tensor_like(dss, ss.dims(), ss))
            .transpose()?;
        Ok((dx, dw, dss))
    }
}

/// conv (no bias) → train-mode batch norm (batch statistics, gradients through them) →
/// optional ReLU, as one op on the CPU: the hot path of every conv unit and branch in training.
/// Returns the output and the batch statistics, like [`batch_norm_train`].
pub fn conv_bn_train(
    x: &Tensor,
    weight: &Tensor,
    conv: ConvParams,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<BatchNormTrain> {
    conv_bn_train_on(
        Backend::for_tensor(x),
        x,
        weight,
        conv,
        gamma,
        beta,
        eps,
        relu,
    )
}

/// [`conv_bn_train`] on a chosen backend.
#[allow(clippy::too_many_arguments)]
pub fn conv_bn_train_on(
    backend: Backend,
    x: &Tensor,
    weight: &Tensor,
    conv: ConvParams,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<BatchNormTrain> {
    conv_bn_train_with(backend, x, weight, conv, gamma, beta, eps, relu, None)
}

/// A max pool's window, stride and padding (as [`max_pool2d`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPoolParams {
    pub k: usize,
    pub stride: usize,
    pub padding: usize,
}

/// [`conv_bn_train`] followed by a max pool, as one op on the CPU: the unit's unpooled
/// activation is never stored — each plane is normalised and pooled while in cache, and the
/// backward recomputes it per plane instead of reading a stored one, so neither the activation
/// nor its gradient passes through memory (or through candle's gradient store). Same values as
/// [`conv_bn_train`] then [`max_pool2d`]; `y` is the pooled output.
#[allow(clippy::too_many_arguments)]
pub fn conv_bn_max_pool_train(
    x: &Tensor,
    weight: &Tensor,
    conv: ConvParams,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
    pool: MaxPoolParams,
) -> Result<BatchNormTrain> {
    conv_bn_max_pool_train_on(
        Backend::for_tensor(x),
        x,
        weight,
        conv,
        gamma,
        beta,
        eps,
        relu,
        pool,
    )
}

/// [`conv_bn_max_pool_train`] on a chosen backend.
#[allow(clippy::too_many_arguments)]
pub fn conv_bn_max_pool_train_on(
    backend: Backend,
    x: &Tensor,
    weight: &Tensor,
    conv: ConvParams,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
    pool: MaxPoolParams,
) -> Result<BatchNormTrain> {
    conv_bn_train_with(backend, x, weight, conv, gamma, beta, eps, relu, Some(pool))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_bn_train_with(
    backend: Backend,
    x: &Tensor,
    weight: &Tensor,
    conv: ConvParams,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
    pool: Option<MaxPoolParams>,
) -> Result<BatchNormTrain> {
    let x = &arg(x);
    let weight = &arg(weight);
    let gamma = &arg(gamma);
    let beta = &arg(beta);
    let shape = ConvShape::new(
        x.dims(),
        weight.dims(),
        conv.stride,
        conv.padding,
        conv.groups,
    )?;
    check_per_channel(
        "conv_bn",
        x.dims(),
        shape.out,
        &[("gamma", gamma), ("beta", beta)],
    )?;
    if let Some(p) = pool {
        // Validates the pool on the conv's output before anything runs.
        PoolShape::new(
            PoolKind::Max,
            &shape.output_dims(),
            p.k,
            p.stride,
            p.padding,
        )?;
    }
    match backend {
        Backend::Own => {
            check_own(x, "conv_bn")?;
            check_own(weight, "conv_bn")?;
            let keep = x.track_op() || weight.track_op() || gamma.track_op() || beta.track_op();
            let saved = SideChannel::new(Saved::default());
            let op = ConvBnReluOp {
                conv,
                eps,
                relu,
                pool,
                keep_for_backward: keep,
                saved: saved.clone(),
            };
            let gb = Tensor::stack(&[gamma, beta], 0)?;
            let y = x.contiguous()?.apply_op3(&weight.contiguous()?, &gb, op)?;
            let (mean, var) = stats_tensors(&saved.lock().stats, x.device())?;
            Ok(BatchNormTrain { y, mean, var })
        }
        Backend::Candle => {
            let z = crate::conv::conv2d_candle(x, weight, conv.stride, conv.padding, conv.groups)?;
            let mut out = batch_norm_train_on(Backend::Candle, &z, gamma, beta, eps)?;
            if relu {
                out.y = out.y.relu()?;
            }
            if let Some(p) = pool {
                out.y = pool2d_on(
                    Backend::Candle,
                    PoolKind::Max,
                    &out.y,
                    p.k,
                    p.stride,
                    p.padding,
                )?;
            }
            Ok(out)
        }
    }
}

/// conv (no bias) → per-channel affine `·scale + shift` (an eval-mode batch norm) → optional
/// ReLU, as one op on the CPU, with gradients to `x`, `weight`, `scale` and `shift`.
pub fn conv_affine(
    x: &Tensor,
    weight: &Tensor,
    conv: ConvParams,
    scale: &Tensor,
    shift: &Tensor,
    relu: bool,
) -> Result<Tensor> {
    conv_affine_on(Backend::for_tensor(x), x, weight, conv, scale, shift, relu)
}

/// [`conv_affine`] on a chosen backend.
pub fn conv_affine_on(
    backend: Backend,
    x: &Tensor,
    weight: &Tensor,
    conv: ConvParams,
    scale: &Tensor,
    shift: &Tensor,
    relu: bool,
) -> Result<Tensor> {
    let x = &arg(x);
    let weight = &arg(weight);
    let scale = &arg(scale);
    let shift = &arg(shift);
    let shape = ConvShape::new(
        x.dims(),
        weight.dims(),
        conv.stride,
        conv.padding,
        conv.groups,
    )?;
    check_per_channel(
        "conv_affine",
        x.dims(),
        shape.out,
        &[("scale", scale), ("shift", shift)],
    )?;
    match backend {
        Backend::Own => {
            check_own(x, "conv_affine")?;
            check_own(weight, "conv_affine")?;
            let keep = x.track_op() || weight.track_op() || scale.track_op() || shift.track_op();
            let op = ConvAffineReluOp {
                conv,
                relu,
                keep_for_backward: keep,
                conv_out: SideChannel::new(None),
            };
            let ss = Tensor::stack(&[scale, shift], 0)?;
            Ok(x.contiguous()?.apply_op3(&weight.contiguous()?, &ss, op)?)
        }
        Backend::Candle => {
            let z = crate::conv::conv2d_candle(x, weight, conv.stride, conv.padding, conv.groups)?;
            let y = channel_affine_on(Backend::Candle, &z, scale, shift)?;
            Ok(if relu { y.relu()? } else { y })
        }
    }
}
