//! dyrep-kernels: the CPU kernels dyrep trains with, as candle custom ops with their
//! own backward passes: conv2d (direct AVX-512 / AVX2 kernels for stride-1 convs that fill their
//! register blocks, im2col + `gemm` otherwise; per-axis padding, any stride, groups), a grown
//! block's branches as one op with one shared patch matrix, fused conv → batch norm → ReLU
//! (train and eval; in training optionally → max pool, the unpooled activation never stored),
//! batch norm with lane-parallel reductions, ReLU, average/max pooling with padding and any
//! stride (2×2/2 max pools vectorised), the SGD step in one pass, and the online block form's
//! kernel assembly (`assemble.rs`: own CPU kernels only — elsewhere dyrep-api composes the same
//! kernel from tensor ops, which is also the reference it is tested against).
//!
//! Every public function picks the backend from its input: f32 tensors on the CPU use the own
//! kernels, anything else (CUDA, other dtypes) uses candle's ops composed to the same maths, so
//! callers stay device-generic. `DYREP_KERNELS=candle` in the environment forces candle's ops on
//! the CPU too (for A/B benchmarks); the `*_on` functions choose explicitly (for tests). Each
//! op's file holds its public entry points, its own kernel and its candle composition side by
//! side (`conv.rs`, `bn.rs`, `unit.rs` (one conv unit), `stack.rs`, `block/`, `pool.rs`, `pad.rs`, `relu.rs`,
//! `sgd.rs`);
//! this file keeps the backend choice, `no_grad` and the checks the entry points share.

// Every unsafe operation sits in an `unsafe` block with a `// SAFETY:` comment, also inside
// `unsafe fn`s (which state their contract under `# Safety`).
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

mod assemble;
mod block;
mod bn;
pub mod check;
mod conv;
mod cpu;
mod depthwise;
mod direct;
mod error;
pub mod isa;
mod lanes;
mod maxpool2;
mod pad;
mod patches;
mod pool;
pub mod profile;
mod relu;
mod sgd;
mod side;
mod small_planes;
mod stack;
#[cfg(feature = "testing")]
pub mod testing;
mod unit;

use std::sync::OnceLock;

use candle_core::{DType, Tensor};

pub use assemble::{assemble_kernel, KernelPiece, PieceWeight};
pub use block::{
    block_train, block_train_on, BlockBnStats, BlockBranch, BlockStage, BlockTail, BlockTrain,
    PadFrom, StageOp,
};
pub use bn::{
    batch_norm_train, batch_norm_train_on, channel_affine, channel_affine_on, BatchNormTrain,
};
pub use conv::{conv2d, conv2d_on, ConvShape};
pub use error::{KernelError, Result};
pub use pad::{pad_const, pad_const_on};
pub use pool::{avg_pool2d, max_pool2d, pool2d_on};
pub use pool::{PoolKind, PoolShape};
pub use relu::{relu, relu_on};
pub use sgd::{sgd_step, sgd_step_on, SgdStep, SgdUpdate};
pub use stack::{
    conv_bn_stack_train, conv_bn_stack_train_on, conv_unit_dims, StackTrain, StackUnitArgs,
};
pub use unit::{
    conv_affine, conv_affine_on, conv_bn_max_pool_train, conv_bn_max_pool_train_on, conv_bn_train,
    conv_bn_train_on, MaxPoolParams,
};

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
