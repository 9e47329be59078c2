//! How a grown block runs — decided in one place (docs/ARCHITECTURE.md "How a block runs: the
//! ambient switches"): as its exact fused conv (inference: eval mode, no gradients, no batch norm
//! calibrating — same output by the fusion property, one conv instead of every branch); in the
//! online form, as one conv with the kernel assembled live (differentiable); as the
//! block op (training with batch statistics: the conv→BN, BN-only and two-stage branches in one
//! fused op, the others added after); or branch by branch (everything else, and inside
//! [`branchwise`], which checks use so that their reference shares no code with fusion or with
//! the block op). Beside the decision: the mapping of a branch's parts to the block op's
//! arguments. Runs of plain conv units are grouped into the unit-stack op by the model
//! (dyrep-runtime `model/mod.rs`), since that is a property of a sequence of layers.

use super::RepBlock;
use crate::bn::BatchNorm;
use crate::op::{BranchParts, RepOp, SecondStage};

thread_local! {
    static BRANCHWISE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with every block computing branch by branch: for inference instead of as its fused
/// conv, for training instead of the block op. For checks whose reference must not share code
/// with fusion (`dyrep fuse`) or with the block op (its gradient tests).
pub fn branchwise<R>(f: impl FnOnce() -> R) -> R {
    crate::switch::with_flag(&BRANCHWISE, f)
}

fn branchwise_on() -> bool {
    crate::switch::flag_on(&BRANCHWISE)
}

/// The way one forward pass of a block runs.
pub enum ExecPath<'a> {
    /// The block's exact fused conv (inference).
    FusedConv,
    /// The online form while training: one conv with the kernel assembled from the branches'
    /// live tensors (`form.rs`), differentiable through the assembly.
    Online,
    /// The block op over `fused` (their batch norms all use batch statistics and share `eps`);
    /// `others` run on their own and are added to its output.
    BlockOp {
        fused: Vec<BranchParts<'a>>,
        others: Vec<&'a dyn RepOp>,
        eps: f64,
    },
    /// Every branch on its own, summed.
    BranchByBranch,
}

impl<'a> ExecPath<'a> {
    /// How `block` runs a forward pass in mode `train`.
    pub fn choose(block: &'a RepBlock, train: bool) -> ExecPath<'a> {
        if branchwise_on() {
            return ExecPath::BranchByBranch;
        }
        if !train && !dyrep_kernels::grad_enabled() && !block.calibrating() {
            return ExecPath::FusedConv;
        }
        if block.is_online() {
            return ExecPath::Online;
        }
        let (mut fused, mut others) = (Vec::new(), Vec::new());
        for op in block.all_branches() {
            match op.conv_bn_parts() {
                Some(p)
                    if !crate::sync_bn::sync_bn_on()
                        && p.batch_norms().iter().all(|bn| bn.uses_batch_stats(train)) =>
                {
                    fused.push(p)
                }
                _ => others.push(op),
            }
        }
        if fused.len() < 2 {
            return ExecPath::BranchByBranch;
        }
        let eps = fused[0].batch_norms()[0].eps();
        let same_eps = fused
            .iter()
            .flat_map(|p| p.batch_norms())
            .all(|bn| bn.eps() == eps);
        if !same_eps {
            return ExecPath::BranchByBranch;
        }
        ExecPath::BlockOp { fused, others, eps }
    }
}

fn conv_params(c: &crate::layers::Conv2dLayer) -> dyrep_kernels::ConvParams {
    dyrep_kernels::ConvParams {
        stride: c.stride(),
        padding: c.padding(),
        groups: c.groups(),
    }
}

/// One branch's parts as the block op's argument.
pub fn block_branch<'b>(p: &BranchParts<'b>) -> dyrep_kernels::BlockBranch<'b> {
    match *p {
        BranchParts::ConvBn { conv, bn } => dyrep_kernels::BlockBranch {
            conv: Some((conv.weight().as_tensor(), conv_params(conv))),
            bias: conv.bias().map(|b| b.as_tensor()),
            gamma: bn.gamma().as_tensor(),
            beta: bn.beta().as_tensor(),
            then: None,
        },
        BranchParts::Bn { bn } => dyrep_kernels::BlockBranch {
            conv: None,
            bias: None,
            gamma: bn.gamma().as_tensor(),
            beta: bn.beta().as_tensor(),
            then: None,
        },
        BranchParts::TwoStage {
            conv,
            bn1,
            pad,
            second,
            bn2,
        } => dyrep_kernels::BlockBranch {
            conv: Some((conv.weight().as_tensor(), conv_params(conv))),
            bias: conv.bias().map(|b| b.as_tensor()),
            gamma: bn1.gamma().as_tensor(),
            beta: bn1.beta().as_tensor(),
            then: Some(dyrep_kernels::BlockStage {
                pad,
                pad_from: dyrep_kernels::PadFrom {
                    running_mean: bn1.running_mean().as_tensor(),
                    running_var: bn1.running_var().as_tensor(),
                    factor: bn1.next_update_factor(),
                },
                op: match second {
                    SecondStage::Conv(c) => {
                        dyrep_kernels::StageOp::Conv(c.weight().as_tensor(), conv_params(c))
                    }
                    SecondStage::AvgPool { k, stride } => {
                        dyrep_kernels::StageOp::AvgPool { k, stride }
                    }
                },
                gamma: bn2.gamma().as_tensor(),
                beta: bn2.beta().as_tensor(),
            }),
        },
    }
}

/// The batch norms of the fused branches, in the order the block op reports their statistics.
pub fn fused_batch_norms<'b>(fused: &[BranchParts<'b>]) -> Vec<&'b BatchNorm> {
    fused.iter().flat_map(|p| p.batch_norms()).collect()
}
