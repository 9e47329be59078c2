//! The block form (docs/REFERENCE.md "The online form"): how a grown block trains. `Bn` is the
//! paper's: every branch ends in a batch norm that normalises with batch statistics, so the
//! branches run one by one. `Online` (OREPA's online re-parameterisation, Hu et al., CVPR 2022)
//! turns every batch norm inside a block into a per-channel affine map `γ·x + β` without
//! statistics (a *scale*), which is linear: the block's equivalent kernel — the same
//! composition fusion uses, `RepOp::to_equivalent_kxk` — is assembled from the branches' live
//! tensors in every step ([`live_kernels`]) and one conv runs over the feature map; gradients
//! reach every branch tensor through the assembly.
//!
//! The form lives in the batch norms themselves ([`crate::BatchNorm::set_scale_form`]), so a
//! branch type written as "kernel transforms over `Conv2dLayer::kernel` and
//! `BatchNorm::eval_params`" gets the online form with no code of its own.

use serde::{Deserialize, Serialize};

use crate::slot::Slot;

/// How grown blocks train: the paper's per-branch batch norms, or collapsed into one kernel in
/// every step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockForm {
    /// Every branch ends in a batch norm with batch statistics (the paper, DBB, RepVGG).
    #[default]
    Bn,
    /// Every batch norm inside a block is a learnable per-channel scale and shift; the block
    /// trains as one conv with its assembled kernel.
    Online,
}

impl BlockForm {
    pub const NAMES: [&'static str; 2] = ["bn", "online"];

    pub fn as_str(self) -> &'static str {
        match self {
            BlockForm::Bn => "bn",
            BlockForm::Online => "online",
        }
    }

    /// Parses `bn` or `online`; the error names both.
    pub fn parse(s: &str) -> std::result::Result<BlockForm, String> {
        match s {
            "bn" => Ok(BlockForm::Bn),
            "online" => Ok(BlockForm::Online),
            other => Err(format!("`{other}`: expected `bn` or `online`")),
        }
    }

    /// Puts every batch norm of `slot`'s tree (blocks at any depth) in this form. Batch norms
    /// in the online form are never switched back: the switch is made when a block is built.
    pub fn apply_to(self, slot: &Slot) {
        if self == BlockForm::Online {
            slot.visit_batch_norms("", &mut |_, bn| bn.set_scale_form());
        }
    }

    /// Puts every batch norm of a branch (its own and its child slots') in this form.
    pub fn apply_to_op(self, op: &dyn crate::op::RepOp) {
        if self != BlockForm::Online {
            return;
        }
        for (_, bn) in op.batch_norms() {
            bn.set_scale_form();
        }
        for (_, child) in op.child_slots() {
            self.apply_to(child);
        }
    }
}

impl std::fmt::Display for BlockForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

thread_local! {
    static LIVE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with kernels read live: inside it `Conv2dLayer::kernel` and
/// `BatchNorm::eval_params` return the parameters themselves (attached to the autograd graph,
/// no copy) instead of detached copies, so an equivalent kernel computed inside is a
/// differentiable function of the branch tensors. The online form's forward runs its assembly
/// in here; nothing else should (an in-place parameter update would show through a live kernel).
pub fn live_kernels<R>(f: impl FnOnce() -> R) -> R {
    crate::switch::with_flag(&LIVE, f)
}

/// Whether kernels are read live on this thread (inside [`live_kernels`]).
pub fn live_on() -> bool {
    crate::switch::flag_on(&LIVE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms_and_names_them_on_error() {
        for name in BlockForm::NAMES {
            assert_eq!(BlockForm::parse(name).unwrap().as_str(), name);
        }
        let e = BlockForm::parse("orepa").unwrap_err();
        assert!(e.contains("`bn`") && e.contains("`online`"), "{e}");
        assert_eq!(BlockForm::default(), BlockForm::Bn);
    }

    #[test]
    fn live_switch_is_scoped_and_restored_after_a_panic() {
        assert!(!live_on());
        live_kernels(|| assert!(live_on()));
        assert!(!live_on());
        let r = std::panic::catch_unwind(|| live_kernels(|| panic!("inside")));
        assert!(r.is_err());
        assert!(!live_on());
    }
}
