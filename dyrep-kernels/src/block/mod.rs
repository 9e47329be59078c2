//! A grown block's branches, summed, as one candle op in training (paper §4,
//! docs/REFERENCE.md "Branch types"): the public types that describe a block's branches, the
//! entry points, the own CPU op (`op.rs`) and candle's composition of the same maths
//! (`reference.rs`, which runs on other devices and dtypes and is what the op is checked against).

mod layout;
mod op;
mod reference;

pub(crate) use layout::*;
pub(crate) use op::*;

use candle_core::{DType, Tensor};

use crate::{
    arg, check_own, check_per_channel, Backend, ConvParams, KernelError, MaxPoolParams, Result,
};

/// One branch of a block for [`block_train`]: a conv (weight `[out, in/groups, kh, kw]` and its
/// geometry) or the identity (`None`), followed by a batch norm with `gamma`, `beta`, and
/// optionally a second stage (`then`) whose BN's output is the branch's.
#[derive(Clone, Copy, Debug)]
pub struct BlockBranch<'a> {
    pub conv: Option<(&'a Tensor, ConvParams)>,
    /// The conv's bias (`[out]`), if it has one.
    pub bias: Option<&'a Tensor>,
    pub gamma: &'a Tensor,
    pub beta: &'a Tensor,
    pub then: Option<BlockStage<'a>>,
}

/// The second stage of a two-stage branch (DBB's 1×1→k×k and 1×1→avg, docs/REFERENCE.md "Branch
/// types"): the first BN's output padded by `pad` on every side with per-channel constants
/// (`pad_from`; no gradient flows into them, as `BNAndPad`), then `op`, then a batch norm with
/// `gamma`, `beta`.
#[derive(Clone, Copy, Debug)]
pub struct BlockStage<'a> {
    pub pad: usize,
    pub pad_from: PadFrom<'a>,
    pub op: StageOp<'a>,
    pub gamma: &'a Tensor,
    pub beta: &'a Tensor,
}

/// The pad constants of a two-stage branch: what `BNAndPad` computes after its BN's train-mode
/// forward, the BN's eval output for a zero input with the running statistics already updated
/// by this batch: `β − γ·μ'/sqrt(σ'² + ε)` with `μ' = (1−f)·μ + f·μ_batch` and
/// `σ'² = (1−f)·σ² + f·σ²_batch·m/(m−1)` (`m` values per channel).
#[derive(Clone, Copy, Debug)]
pub struct PadFrom<'a> {
    pub running_mean: &'a Tensor,
    pub running_var: &'a Tensor,
    /// `f`: the BN's momentum, or `1/(batches + 1)` while calibrating.
    pub factor: f64,
}

/// Pad constants from the first BN's `γ`, `β`, its batch statistics `(mean, biased variance,
/// values per channel)`, its running `(mean, variance)` and the update factor (f64 arithmetic).
pub(crate) fn pad_constants(
    gamma: &[f32],
    beta: &[f32],
    (batch_mean, batch_var, count): (&[f32], &[f32], usize),
    (running_mean, running_var): (&[f32], &[f32]),
    factor: f64,
    eps: f64,
) -> Vec<f32> {
    let unbias = count as f64 / (count.max(2) - 1) as f64;
    (0..gamma.len())
        .map(|c| {
            let m = (1.0 - factor) * running_mean[c] as f64 + factor * batch_mean[c] as f64;
            let v = (1.0 - factor) * running_var[c] as f64 + factor * batch_var[c] as f64 * unbias;
            (beta[c] as f64 - gamma[c] as f64 * m / (v + eps).sqrt()) as f32
        })
        .collect()
}

/// What a second stage applies to the padded first-stage output.
#[derive(Clone, Copy, Debug)]
pub enum StageOp<'a> {
    /// A conv without bias (its own padding must be 0: the stage pads).
    Conv(&'a Tensor, ConvParams),
    /// A k×k average pool with this stride (no padding of its own).
    AvgPool { k: usize, stride: usize },
}

/// What follows a block in its conv unit, run on the branches' sum inside the block op:
/// `pool(relu(BN(Σ branches)))`, each of the three optional. With the pool, the unpooled
/// activation is never stored (the backward recomputes it per plane, as a plain conv unit's).
#[derive(Clone, Copy, Debug)]
pub struct BlockTail<'a> {
    /// The unit's train-mode BN `(γ, β)`; `None` where the unit has none (the reference DBB
    /// and RepVGG forms, whose block replaces the conv and its BN).
    pub bn: Option<(&'a Tensor, &'a Tensor)>,
    pub relu: bool,
    pub pool: Option<MaxPoolParams>,
}

/// One batch norm's batch statistics from [`block_train`]: mean, biased variance and the number
/// of values per channel they came from.
#[derive(Debug)]
pub struct BlockBnStats {
    pub mean: Tensor,
    pub var: Tensor,
    pub count: usize,
}

/// The summed output of a block's branches (through the [`BlockTail`] if one was given) and every
/// BN's batch statistics in argument order (a two-stage branch's first BN, then its second; the
/// post BN last).
#[derive(Debug)]
pub struct BlockTrain {
    pub y: Tensor,
    pub stats: Vec<BlockBnStats>,
}

pub(super) fn n_out_channels(gamma: &Tensor) -> Result<usize> {
    Ok(gamma.dim(0)?)
}

pub(crate) fn block_shape_error(detail: String) -> KernelError {
    KernelError::Shape {
        op: "block",
        detail,
    }
}

/// `Σ_b BN_b(conv_b(x))` in train mode (batch statistics, gradients through them), the identity
/// branch being `BN(x)` and a two-stage branch `BN₂(stage(pad(BN₁(conv(x)))))`: on the CPU one
/// op with one input gradient.
pub fn block_train(
    x: &Tensor,
    branches: &[BlockBranch<'_>],
    post: Option<BlockTail<'_>>,
    eps: f64,
) -> Result<BlockTrain> {
    block_train_on(Backend::for_tensor(x), x, branches, post, eps)
}

/// [`block_train`] on a chosen backend.
pub fn block_train_on(
    backend: Backend,
    x: &Tensor,
    branches: &[BlockBranch<'_>],
    post: Option<BlockTail<'_>>,
    eps: f64,
) -> Result<BlockTrain> {
    let x = &arg(x);
    let geoms = block_geoms(x, branches)?;
    let out_dims = output_dims(&geoms, x.dims())?;
    // A tail without BN, ReLU or pool is no tail.
    let post = post.filter(|pb| pb.bn.is_some() || pb.relu || pb.pool.is_some());
    if let Some(pb) = post {
        if let Some((gamma, beta)) = pb.bn {
            check_per_channel(
                "block post BN",
                &out_dims,
                out_dims[1],
                &[("gamma", gamma), ("beta", beta)],
            )?;
        }
        if let Some(p) = pb.pool {
            crate::pool::PoolShape::new(crate::PoolKind::Max, &out_dims, p.k, p.stride, p.padding)?;
        }
    }
    match backend {
        Backend::Own => {
            check_own(x, "block")?;
            let mut weights: Vec<Tensor> = Vec::new();
            let mut gbs: Vec<Tensor> = Vec::new();
            for b in branches {
                if let Some((w, _)) = b.conv {
                    weights.push(arg(w).flatten_all()?);
                    if let Some(bias) = b.bias {
                        weights.push(arg(bias));
                    }
                }
                gbs.push(arg(b.gamma));
                gbs.push(arg(b.beta));
                if let Some(st) = b.then {
                    if let StageOp::Conv(w, _) = st.op {
                        weights.push(arg(w).flatten_all()?);
                    }
                    gbs.push(arg(st.gamma));
                    gbs.push(arg(st.beta));
                }
            }
            let w_flat = if weights.is_empty() {
                Tensor::zeros(1, DType::F32, x.device())?
            } else {
                Tensor::cat(&weights, 0)?
            };
            for w in &weights {
                check_own(w, "block")?;
            }
            let post_geom = post.map(|pb| {
                let bn_offset = pb.bn.map(|(gamma, beta)| {
                    let at: usize = gbs.iter().map(|t| t.elem_count()).sum();
                    gbs.push(arg(gamma));
                    gbs.push(arg(beta));
                    at
                });
                PostGeom {
                    bn_offset,
                    relu: pb.relu,
                    pool: pb.pool,
                }
            });
            let gb_flat = Tensor::cat(&gbs, 0)?;
            let keep = x.track_op() || w_flat.track_op() || gb_flat.track_op();
            let saved = crate::side::SideChannel::new(BlockSaved::default());
            // The BN counts, in argument order: each BN's input dims.
            let mut counts = Vec::new();
            for g in &geoms {
                let d1 = match &g.conv {
                    Some(s) => s.output_dims().to_vec(),
                    None => x.dims().to_vec(),
                };
                counts.push(d1[0] * d1[2] * d1[3]);
            }
            let op = BlockOp {
                branches: geoms.clone(),
                post: post_geom,
                eps,
                keep_for_backward: keep,
                saved: saved.clone(),
            };
            let y = x.contiguous()?.apply_op3(&w_flat, &gb_flat, op)?;
            // Values per channel of the branches' sum (before the unit's pool, if any).
            let out_count = out_dims[0] * out_dims[2] * out_dims[3];
            let guard = saved.lock();
            let mut stats = Vec::new();
            for (g, count) in geoms.iter().zip(&counts) {
                stats.push(*count);
                if g.second.is_some() {
                    stats.push(out_count);
                }
            }
            if post.is_some_and(|pb| pb.bn.is_some()) {
                stats.push(out_count);
            }
            let stats = guard
                .bn_stats()
                .into_iter()
                .zip(stats)
                .map(|(st, count)| {
                    let (mean, var) = crate::side::stats_tensors(st, x.device())?;
                    Ok(BlockBnStats { mean, var, count })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(BlockTrain { y, stats })
        }
        Backend::Candle => reference::block_train_candle(x, branches, post, eps),
    }
}
