//! dyrep-kernels: the CPU kernels dyrep trains with, as candle custom ops with their
//! own backward passes: conv2d (a direct AVX-512 kernel for stride-1 convs that fill its
//! register blocks, im2col + `gemm` otherwise; per-axis padding, any stride, groups), a grown
//! block's branches as one op with one shared patch matrix, fused conv → batch norm → ReLU
//! (train and eval; in training optionally → max pool, the unpooled activation never stored),
//! batch norm with lane-parallel reductions, ReLU, and average/max pooling with padding and any
//! stride (2×2/2 max pools vectorised).
//!
//! Every public function picks the backend from its input: f32 tensors on the CPU use the own
//! kernels, anything else (CUDA, other dtypes) uses candle's ops composed to the same maths, so
//! callers stay device-generic. `DYREP_KERNELS=candle` in the environment forces candle's ops on
//! the CPU too (for A/B benchmarks); the `*_on` functions choose explicitly (for tests).

#![warn(
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]

mod block;
mod bn;
pub mod check;
mod conv;
mod cpu;
mod depthwise;
mod direct;
mod error;
mod fused;
pub mod isa;
mod lanes;
mod maxpool2;
mod patches;
mod pool;
pub mod profile;
mod relu;
mod stack;
#[cfg(feature = "testing")]
pub mod testing;

use std::sync::OnceLock;

use candle_core::{DType, Tensor};

pub use block::{
    block_train, block_train_on, BlockBnStats, BlockBranch, BlockStage, BlockTrain, PadFrom,
    PostBn, StageOp,
};
pub use conv::ConvShape;
pub use error::{KernelError, Result};
pub use pool::{PoolKind, PoolShape};

/// Which implementation runs an op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The own CPU kernels (f32 on the CPU only).
    Own,
    /// candle's ops (any device and dtype).
    Candle,
}

impl Backend {
    /// The backend for `t`: own kernels for f32 CPU tensors unless `DYREP_KERNELS=candle`.
    pub fn for_tensor(t: &Tensor) -> Self {
        if t.device().is_cpu() && t.dtype() == DType::F32 && !candle_forced() {
            Backend::Own
        } else {
            Backend::Candle
        }
    }
}

/// The tier the direct conv kernel runs on in this process (AVX-512 or AVX2, after
/// `DYREP_ISA`), `None` where convs all run through im2col + gemm (a CPU without AVX2,
/// `DYREP_ISA=scalar` or `DYREP_CONV_DIRECT=0`).
pub fn direct_conv_tier() -> Option<isa::Isa> {
    direct::direct_tier()
}

/// Threads the kernels (and candle's CPU ops) compute with: rayon's global pool, sized by
/// `RAYON_NUM_THREADS` or the core count.
pub fn compute_threads() -> usize {
    cpu::threads()
}

thread_local! {
    static NO_GRAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with gradients off on this thread: every kernel called inside detaches its inputs,
/// so no graph is recorded and no activation is kept alive for a backward (candle has no
/// no-grad mode). For inference loops.
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            NO_GRAD.with(|g| g.set(self.0));
        }
    }
    let _restore = Restore(NO_GRAD.with(|g| g.replace(true)));
    f()
}

/// Whether kernels on this thread record gradients (false inside [`no_grad`]).
pub fn grad_enabled() -> bool {
    !NO_GRAD.with(|g| g.get())
}

/// The argument as the kernels see it: detached inside [`no_grad`].
pub(crate) fn arg(t: &Tensor) -> Tensor {
    if grad_enabled() {
        t.clone()
    } else {
        t.detach()
    }
}

pub(crate) fn candle_forced() -> bool {
    static FORCED: OnceLock<bool> = OnceLock::new();
    *FORCED.get_or_init(|| std::env::var("DYREP_KERNELS").is_ok_and(|v| v == "candle"))
}

pub(crate) fn check_own(t: &Tensor, op: &'static str) -> Result<()> {
    if t.device().is_cpu() && t.dtype() == DType::F32 {
        Ok(())
    } else {
        Err(KernelError::Shape {
            op,
            detail: format!(
                "the own kernels take f32 CPU tensors, got {:?} on {:?}",
                t.dtype(),
                t.device().location()
            ),
        })
    }
}

/// 2-D convolution of `x` (`[N, C, H, W]`) with `weight` (`[out, C/groups, kh, kw]`), zero
/// padding `(top/bottom, left/right)`, one stride for both axes, no bias.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: (usize, usize),
    groups: usize,
) -> Result<Tensor> {
    conv2d_on(Backend::for_tensor(x), x, weight, stride, padding, groups)
}

/// [`conv2d`] on a chosen backend.
pub fn conv2d_on(
    backend: Backend,
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: (usize, usize),
    groups: usize,
) -> Result<Tensor> {
    let x = &arg(x);
    let weight = &arg(weight);
    ConvShape::new(x.dims(), weight.dims(), stride, padding, groups)?;
    match backend {
        Backend::Own => {
            check_own(x, "conv2d")?;
            check_own(weight, "conv2d")?;
            let op = conv::Conv2dOp {
                conv: ConvParams {
                    stride,
                    padding,
                    groups,
                },
            };
            Ok(x.contiguous()?.apply_op2(&weight.contiguous()?, op)?)
        }
        Backend::Candle => Ok(conv::conv2d_candle(x, weight, stride, padding, groups)?),
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
            let planes = bn::Planes::of(x.dims())?;
            let stats = cpu::with_f32(&x, "batch_norm", |xs| bn::channel_stats(xs, planes))?;
            let mean: Vec<f32> = stats.iter().map(|s| s.mean()).collect();
            let var: Vec<f32> = stats.iter().map(|s| s.var).collect();
            let mean_t = Tensor::from_vec(mean, c, x.device())?;
            let var_t = Tensor::from_vec(var, c, x.device())?;
            let op = bn::BnTrainOp::new(stats, eps);
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

/// Geometry of a conv: stride (both axes), zero padding `(rows, cols)`, groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvParams {
    pub stride: usize,
    pub padding: (usize, usize),
    pub groups: usize,
}

impl ConvParams {
    /// The validated geometry of this conv on input dims `x` with weight dims `w`, as a candle
    /// error (what the custom ops need).
    pub(crate) fn shape(&self, x: &[usize], w: &[usize]) -> candle_core::Result<ConvShape> {
        ConvShape::new(x, w, self.stride, self.padding, self.groups)
            .map_err(candle_core::Error::wrap)
    }
}

/// Checks that every per-channel argument (`γ`, `β`, scale, shift, ...) has `[c]` elements.
pub(crate) fn check_per_channel(
    op: &'static str,
    input: &[usize],
    c: usize,
    args: &[(&str, &Tensor)],
) -> Result<()> {
    match args.iter().find(|(_, t)| t.dims() != [c]) {
        None => Ok(()),
        Some((name, t)) => Err(KernelError::Shape {
            op,
            detail: format!("input {input:?} needs {name} of [{c}], got {:?}", t.dims()),
        }),
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
fn conv_bn_train_with(
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
            let saved = std::sync::Arc::new(std::sync::Mutex::new(fused::Saved::default()));
            let op = fused::ConvBnReluOp {
                conv,
                eps,
                relu,
                pool,
                keep_for_backward: keep,
                saved: saved.clone(),
            };
            let gb = Tensor::stack(&[gamma, beta], 0)?;
            let y = x.contiguous()?.apply_op3(&weight.contiguous()?, &gb, op)?;
            let guard = saved.lock().unwrap_or_else(|p| p.into_inner());
            let mean: Vec<f32> = guard.stats.iter().map(|s| s.mean()).collect();
            let var: Vec<f32> = guard.stats.iter().map(|s| s.var).collect();
            drop(guard);
            Ok(BatchNormTrain {
                y,
                mean: Tensor::from_vec(mean, shape.out, x.device())?,
                var: Tensor::from_vec(var, shape.out, x.device())?,
            })
        }
        Backend::Candle => {
            let z = conv::conv2d_candle(x, weight, conv.stride, conv.padding, conv.groups)?;
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

/// A conv unit's geometry on input dims `x` with weight dims `w`, and its output dims after
/// the max pool that follows it, if any (validating both).
pub fn conv_unit_dims(
    x: &[usize],
    w: &[usize],
    conv: ConvParams,
    pool: Option<MaxPoolParams>,
) -> Result<(ConvShape, Vec<usize>)> {
    let shape = ConvShape::new(x, w, conv.stride, conv.padding, conv.groups)?;
    let out = shape.output_dims();
    let dims = match pool {
        None => out.to_vec(),
        Some(p) => {
            let ps = PoolShape::new(PoolKind::Max, &out, p.k, p.stride, p.padding)?;
            vec![out[0], out[1], ps.ho, ps.wo]
        }
    };
    Ok((shape, dims))
}

/// One unit of [`conv_bn_stack_train`]: a conv without bias, its train-mode BN (affine `gamma`,
/// `beta`, `eps`), an optional ReLU and an optional max pool.
#[derive(Clone, Copy, Debug)]
pub struct StackUnitArgs<'a> {
    pub weight: &'a Tensor,
    pub conv: ConvParams,
    pub gamma: &'a Tensor,
    pub beta: &'a Tensor,
    pub eps: f64,
    pub relu: bool,
    pub pool: Option<MaxPoolParams>,
}

/// The output of [`conv_bn_stack_train`] and every unit's batch statistics `(mean, var)`.
#[derive(Clone, Debug)]
pub struct StackTrain {
    pub y: Tensor,
    pub stats: Vec<(Tensor, Tensor)>,
}

/// A run of conv → BN (batch statistics) → ReLU (→ max pool) units, each as
/// [`conv_bn_train`] / [`conv_bn_max_pool_train`] computes it, as one op on the CPU: the
/// activations between the units never become graph nodes, so candle does not add their
/// gradients into fresh zero tensors (`stack.rs`).
pub fn conv_bn_stack_train(x: &Tensor, units: &[StackUnitArgs<'_>]) -> Result<StackTrain> {
    conv_bn_stack_train_on(Backend::for_tensor(x), x, units)
}

/// [`conv_bn_stack_train`] on a chosen backend (candle's: the units one after the other).
pub fn conv_bn_stack_train_on(
    backend: Backend,
    x: &Tensor,
    units: &[StackUnitArgs<'_>],
) -> Result<StackTrain> {
    if units.is_empty() {
        return Err(KernelError::Shape {
            op: "conv_bn_stack",
            detail: "a stack needs at least one unit".into(),
        });
    }
    if backend == Backend::Candle {
        let mut h = x.clone();
        let mut stats = Vec::with_capacity(units.len());
        for u in units {
            let out = conv_bn_train_with(
                Backend::Candle,
                &h,
                u.weight,
                u.conv,
                u.gamma,
                u.beta,
                u.eps,
                u.relu,
                u.pool,
            )?;
            stats.push((out.mean, out.var));
            h = out.y;
        }
        return Ok(StackTrain { y: h, stats });
    }
    let x = &arg(x);
    check_own(x, "conv_bn_stack")?;
    let mut geoms = Vec::with_capacity(units.len());
    let (mut weights, mut gbs) = (Vec::new(), Vec::new());
    let (mut weight_offset, mut gb_offset) = (0, 0);
    let mut dims = x.dims().to_vec();
    let mut keep = x.track_op();
    for u in units {
        let (w, gamma, beta) = (arg(u.weight), arg(u.gamma), arg(u.beta));
        check_own(&w, "conv_bn_stack")?;
        let (shape, next) = conv_unit_dims(&dims, w.dims(), u.conv, u.pool)?;
        check_per_channel(
            "conv_bn_stack",
            &dims,
            shape.out,
            &[("gamma", &gamma), ("beta", &beta)],
        )?;
        dims = next;
        let weight_dims: [usize; 4] = [shape.out, w.dims()[1], shape.kh, shape.kw];
        geoms.push(stack::StackUnit {
            conv: u.conv,
            weight_dims,
            weight_offset,
            gb_offset,
            tail: fused::UnitTail {
                eps: u.eps,
                relu: u.relu,
                pool: u.pool,
            },
        });
        weight_offset += shape.weight_len();
        gb_offset += 2 * shape.out;
        keep |= w.track_op() || gamma.track_op() || beta.track_op();
        weights.push(w.flatten_all()?);
        gbs.push(gamma);
        gbs.push(beta);
    }
    let saved = std::sync::Arc::new(std::sync::Mutex::new(stack::StackSaved::default()));
    let op = stack::StackOp {
        units: geoms,
        keep_for_backward: keep,
        saved: saved.clone(),
    };
    let w_flat = Tensor::cat(&weights, 0)?;
    let gb_flat = Tensor::cat(&gbs, 0)?;
    let y = x.contiguous()?.apply_op3(&w_flat, &gb_flat, op)?;
    let guard = saved.lock().unwrap_or_else(|p| p.into_inner());
    let stats = guard
        .units
        .iter()
        .map(|u| {
            let mean: Vec<f32> = u.stats.iter().map(|s| s.mean()).collect();
            let var: Vec<f32> = u.stats.iter().map(|s| s.var).collect();
            let c = mean.len();
            Ok((
                Tensor::from_vec(mean, c, x.device())?,
                Tensor::from_vec(var, c, x.device())?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    drop(guard);
    Ok(StackTrain { y, stats })
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
            let op = fused::ConvAffineReluOp {
                conv,
                relu,
                keep_for_backward: keep,
                conv_out: std::sync::Arc::new(std::sync::Mutex::new(None)),
            };
            let ss = Tensor::stack(&[scale, shift], 0)?;
            Ok(x.contiguous()?.apply_op3(&weight.contiguous()?, &ss, op)?)
        }
        Backend::Candle => {
            let z = conv::conv2d_candle(x, weight, conv.stride, conv.padding, conv.groups)?;
            let y = channel_affine_on(Backend::Candle, &z, scale, shift)?;
            Ok(if relu { y.relu()? } else { y })
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
                bn::ChannelAffineOp,
            )?)
        }
        Backend::Candle => Ok(x
            .broadcast_mul(&scale.reshape((1, c, 1, 1))?)?
            .broadcast_add(&shift.reshape((1, c, 1, 1))?)?),
    }
}

/// `max(x, 0)`.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    relu_on(Backend::for_tensor(x), x)
}

/// [`relu`] on a chosen backend.
pub fn relu_on(backend: Backend, x: &Tensor) -> Result<Tensor> {
    let x = &arg(x);
    match backend {
        Backend::Own => {
            check_own(x, "relu")?;
            Ok(x.contiguous()?.apply_op1(relu::ReluOp)?)
        }
        Backend::Candle => Ok(x.relu()?),
    }
}

/// Pads each `[H, W]` plane of `x` (`[N, C, H, W]`) by `pad` on every side with the
/// per-channel constant `values` (`[C]`, no gradient); the input gets the interior gradient.
pub fn pad_const(x: &Tensor, pad: usize, values: &Tensor) -> Result<Tensor> {
    pad_const_on(Backend::for_tensor(x), x, pad, values)
}

/// [`pad_const`] on a chosen backend.
pub fn pad_const_on(backend: Backend, x: &Tensor, pad: usize, values: &Tensor) -> Result<Tensor> {
    let x = &arg(x);
    let (_, c, h, w) = x.dims4()?;
    check_per_channel("pad_const", x.dims(), c, &[("values", values)])?;
    if pad == 0 {
        return Ok(x.clone());
    }
    match backend {
        Backend::Own => {
            check_own(x, "pad_const")?;
            let values = values.detach().to_dtype(DType::F32)?.to_vec1::<f32>()?;
            Ok(x.contiguous()?
                .apply_op1(pool::PadConstOp { pad, values })?)
        }
        Backend::Candle => {
            let p = pad;
            let interior = Tensor::ones((1, 1, h, w), x.dtype(), x.device())?
                .pad_with_zeros(2, p, p)?
                .pad_with_zeros(3, p, p)?;
            let border = interior.affine(-1.0, 1.0)?;
            let fill = border
                .broadcast_mul(&values.detach().to_dtype(x.dtype())?.reshape((1, c, 1, 1))?)?;
            let padded = x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
            Ok(padded.broadcast_add(&fill)?)
        }
    }
}

/// Average pooling, k×k window, zero padding (any amount) counted in the average, any stride.
pub fn avg_pool2d(x: &Tensor, k: usize, stride: usize, padding: usize) -> Result<Tensor> {
    pool2d_on(Backend::for_tensor(x), PoolKind::Avg, x, k, stride, padding)
}

/// Max pooling, k×k window, padding (at most k/2) ignored as −∞, any stride.
pub fn max_pool2d(x: &Tensor, k: usize, stride: usize, padding: usize) -> Result<Tensor> {
    pool2d_on(Backend::for_tensor(x), PoolKind::Max, x, k, stride, padding)
}

/// Either pool on a chosen backend.
pub fn pool2d_on(
    backend: Backend,
    kind: PoolKind,
    x: &Tensor,
    k: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let x = &arg(x);
    let shape = PoolShape::new(kind, x.dims(), k, stride, padding)?;
    match backend {
        Backend::Own => {
            check_own(x, "pool2d")?;
            let op = pool::Pool2dOp {
                kind,
                k,
                stride,
                padding,
            };
            Ok(x.contiguous()?.apply_op1(op)?)
        }
        Backend::Candle => Ok(match kind {
            PoolKind::Avg => pool::avg_pool2d_candle(x, &shape)?,
            PoolKind::Max => pool::max_pool2d_candle(x, &shape)?,
        }),
    }
}
