//! An example dyrep plugin, written as if it lived in its own repository: one extra branch type
//! (`conv_kxk_1x1`, a k×k conv → BN → 1×1 conv → BN, which is linear and fuses exactly), one
//! extra scorer (`weight_magnitude`) and one extra model (`pyramid-net`). Nothing in dyrep-ops,
//! dyrep-scorers or dyrep-runtime is edited: all three register themselves through inventory
//! (and typetag), and a binary that links this crate (see `src/main.rs`) lists, verifies and
//! trains them. docs/PLUGINS.md walks through it.

mod conv_kxk_1x1;
mod pyramid_net;
mod weight_magnitude;

pub use conv_kxk_1x1::ConvKxk1x1Spec;
pub use weight_magnitude::WeightMagnitude;

/// Keeps this crate's registrations in any binary that calls it (inventory's linker caveat).
#[inline(never)]
pub fn ensure_linked() {
    std::hint::black_box("conv_kxk_1x1");
}
