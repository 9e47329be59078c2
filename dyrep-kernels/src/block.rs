//! A grown block's conv → BN branches and its BN-only identity branch, summed, as one candle op
//! in training (issue 5 item 2, "DyRep-aware execution"; paper §4, reference §1.1). All
//! branches read the same input; the input gradient is accumulated inside the op and handed to
//! candle once, and none of the per-branch intermediates becomes a graph node (candle would add
//! each one's gradient through a fresh zero tensor). Each conv branch still lowers the input
//! itself: sharing the k×k patch matrix with the 1×1/1×k/k×1 branches is the next step.
//! Arguments `(x, weights, γβ)`: every conv branch's weight (then its bias, if it has one)
//! flattened and concatenated, and every branch's `[γ; β]` concatenated, in branch order.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::bn::{bn_backward, channel_stats, ChannelStats, Planes};
use crate::conv::ConvShape;
use crate::cpu::{slice_f32, tensor_like, with_f32};
use crate::profile::{Phase, Timer};

/// One branch of the block: a conv (its geometry) or the identity, each followed by a BN.
#[derive(Clone, Debug)]
pub(crate) struct BranchGeom {
    /// `None` for the identity branch.
    pub conv: Option<ConvShape>,
    /// Offset of this branch's weight in the flat weights.
    pub weight_offset: usize,
    /// Offset of the conv's bias (`out` values) in the flat weights, if it has one.
    pub bias_offset: Option<usize>,
}

/// What the forward keeps: per branch, its BN input (None for identity: the block input)
/// and batch statistics.
#[derive(Debug, Default)]
pub(crate) struct BlockSaved {
    pub stats: Vec<Vec<ChannelStats>>,
    pub inv_std: Vec<Vec<f32>>,
    pub conv_out: Vec<Option<Vec<f32>>>,
}

#[derive(Clone, Debug)]
pub(crate) struct BlockOp {
    pub branches: Vec<BranchGeom>,
    pub out: usize,
    pub eps: f64,
    pub keep_for_backward: bool,
    pub saved: Arc<Mutex<BlockSaved>>,
}

impl BlockOp {
    fn lock(&self) -> std::sync::MutexGuard<'_, BlockSaved> {
        self.saved.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Adds `BN(z)` (batch statistics `st`, scale `a = γ·istd`, shift β) into `y`, parallel over
/// planes of `hw` values.
fn add_normalised(
    y: &mut [f32],
    z: &[f32],
    c: usize,
    hw: usize,
    st: &[ChannelStats],
    a: &[f32],
    beta: &[f32],
) {
    y.par_chunks_mut(hw.max(1))
        .zip(z.par_chunks(hw.max(1)))
        .enumerate()
        .for_each(|(i, (yp, zp))| {
            let ch = i % c;
            let (s, ac, bc) = (st[ch], a[ch], beta[ch]);
            for (o, &v) in yp.iter_mut().zip(zp) {
                *o += ((v - s.shift) - s.mean_rel) * ac + bc;
            }
        });
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
        let c = self.out;
        let mut y = vec![0.0f32; dims.iter().product()];
        let mut saved = BlockSaved::default();
        for (bi, b) in self.branches.iter().enumerate() {
            let z = b.conv.as_ref().map(|s| {
                let mut z = s.forward(x, &w[b.weight_offset..]);
                if let Some(off) = b.bias_offset {
                    add_channel_bias(&mut z, &w[off..off + c], c, planes.hw);
                }
                z
            });
            let _t = Timer::start(Phase::BnForward);
            let zs: &[f32] = z.as_deref().unwrap_or(x);
            let stats = channel_stats(zs, planes);
            let inv_std: Vec<f32> = stats
                .iter()
                .map(|s| (1.0 / (s.var as f64 + self.eps).sqrt()) as f32)
                .collect();
            let g = &gb[bi * 2 * c..(bi + 1) * 2 * c];
            let a: Vec<f32> = (0..c).map(|ch| g[ch] * inv_std[ch]).collect();
            add_normalised(&mut y, zs, c, planes.hw, &stats, &a, &g[c..]);
            saved.stats.push(stats);
            saved.inv_std.push(inv_std);
            saved
                .conv_out
                .push(if self.keep_for_backward { z } else { None });
        }
        *self.lock() = saved;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weights: &Tensor,
        gb: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = output_dims(&self.branches, x.dims())?;
        let planes = Planes::of(&dims)?;
        let c = self.out;
        let gb_v = gb.flatten_all()?.to_vec1::<f32>()?;
        let saved = self.lock();
        if saved.conv_out.len() != self.branches.len() {
            return Err(candle_core::Error::Msg(format!(
                "{}: backward without a kept forward",
                self.name()
            )));
        }
        let mut dx: Option<Vec<f32>> = None;
        let mut dw = vec![0.0f32; weights.elem_count()];
        let mut dgb = vec![0.0f32; gb_v.len()];
        with_f32(x, self.name(), |xs| {
            with_f32(weights, self.name(), |ws| {
                with_f32(dy, self.name(), |g| -> candle_core::Result<()> {
                    for (bi, b) in self.branches.iter().enumerate() {
                        let z: &[f32] = match (&b.conv, &saved.conv_out[bi]) {
                            (Some(_), Some(z)) => z,
                            (None, _) => xs,
                            (Some(_), None) => {
                                return Err(candle_core::Error::Msg(format!(
                                    "{}: backward without a kept forward",
                                    self.name()
                                )))
                            }
                        };
                        let bn_timer = Timer::start(Phase::BnBackward);
                        let gamma = &gb_v[bi * 2 * c..bi * 2 * c + c];
                        let (dz, dgamma, dbeta) = bn_backward(
                            g,
                            None,
                            z,
                            planes,
                            &saved.stats[bi],
                            &saved.inv_std[bi],
                            gamma,
                        );
                        dgb[bi * 2 * c..bi * 2 * c + c].copy_from_slice(&dgamma);
                        dgb[bi * 2 * c + c..(bi + 1) * 2 * c].copy_from_slice(&dbeta);
                        let hw = planes.hw.max(1);
                        drop(bn_timer);
                        if let Some(off) = b.bias_offset {
                            // Σ dz per channel: zero up to rounding (the BN subtracts the bias
                            // again), kept so the bias is trained exactly as unfused.
                            let mut db = vec![0.0f64; c];
                            for (pi, p) in dz.chunks(hw).enumerate() {
                                db[pi % c] += p.iter().map(|&v| v as f64).sum::<f64>();
                            }
                            for ch in 0..c {
                                dw[off + ch] = db[ch] as f32;
                            }
                        }
                        match &b.conv {
                            Some(s) => {
                                let wlen = s.out * (s.c / s.groups) * s.kh * s.kw;
                                let gw = s.weight_grad(xs, &dz);
                                dw[b.weight_offset..b.weight_offset + wlen].copy_from_slice(&gw);
                                if x.track_op() {
                                    let gx = s.input_grad(
                                        &ws[b.weight_offset..b.weight_offset + wlen],
                                        &dz,
                                    );
                                    accumulate(&mut dx, gx);
                                }
                            }
                            None => {
                                if x.track_op() {
                                    accumulate(&mut dx, dz);
                                }
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

/// Adds a per-channel bias to `[N, C, H, W]` data.
fn add_channel_bias(z: &mut [f32], bias: &[f32], c: usize, hw: usize) {
    z.par_chunks_mut(hw.max(1)).enumerate().for_each(|(i, p)| {
        let b = bias[i % c];
        for v in p.iter_mut() {
            *v += b;
        }
    });
}

/// Adds `g` into the running input gradient (taking it over if there is none yet).
fn accumulate(acc: &mut Option<Vec<f32>>, g: Vec<f32>) {
    match acc {
        None => *acc = Some(g),
        Some(a) => a
            .par_chunks_mut(1 << 14)
            .zip(g.par_chunks(1 << 14))
            .for_each(|(a, g)| {
                for (a, b) in a.iter_mut().zip(g) {
                    *a += b;
                }
            }),
    }
}

/// The block's output dims: every conv branch's, which must agree (and equal the input's when
/// there is an identity branch).
pub(crate) fn output_dims(branches: &[BranchGeom], x: &[usize]) -> candle_core::Result<Vec<usize>> {
    let mut dims: Option<Vec<usize>> = None;
    for b in branches {
        let d = match &b.conv {
            Some(s) => s.output_dims().to_vec(),
            None => x.to_vec(),
        };
        match &dims {
            None => dims = Some(d),
            Some(prev) if *prev != d => {
                return Err(candle_core::Error::Msg(format!(
                    "block branches disagree on the output shape: {prev:?} vs {d:?}"
                )))
            }
            Some(_) => {}
        }
    }
    dims.ok_or_else(|| candle_core::Error::Msg("a block op needs at least one branch".into()))
}
