//! The registered ops as the property tests use them (each test file compiles this module on its
//! own and uses part of it).
#![allow(dead_code)]

use dyrep_api::equivalence::FusionCase;
use dyrep_api::{ops, OpSpec};

/// Every registered op's default spec, in listing order.
pub fn registered() -> Vec<Box<dyn OpSpec>> {
    dyrep_ops::ensure_linked();
    ops().iter().map(|e| (e.default_spec)()).collect()
}

/// Every registered op except the main one, as a block's candidate branches.
pub fn branch_specs() -> Vec<Box<dyn OpSpec>> {
    registered()
        .into_iter()
        .filter(|s| s.name() != dyrep_ops::MAIN_OP)
        .collect()
}

/// Whether all seven built-in ops apply to the case's geometry.
pub fn all_seven_apply(c: &FusionCase) -> bool {
    c.geom.in_ch == c.geom.out_ch && c.geom.stride == 1 && c.geom.is_same_padding()
}
