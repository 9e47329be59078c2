//! An example dyrep plugin, written as if it lived in its own repository: one extra branch type
//! (`conv_kxk_1x1`, a k×k conv → BN → 1×1 conv → BN, which is linear and fuses exactly) and one
//! extra scorer (`weight_magnitude`). Nothing in dyrep-ops or dyrep-scorers is edited: both
//! register themselves through inventory/typetag, and a binary that links this crate (see
//! `src/main.rs`) lists and verifies them. README "Writing a branch type" walks through it.

mod conv_kxk_1x1;
mod weight_magnitude;

pub use conv_kxk_1x1::ConvKxk1x1Spec;
pub use weight_magnitude::WeightMagnitude;

/// Keeps this crate's registrations in any binary that calls it (inventory's linker caveat).
#[inline(never)]
pub fn ensure_linked() {
    std::hint::black_box("conv_kxk_1x1");
}
