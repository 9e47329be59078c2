//! dyrep-ops: the built-in branch types of a DyRep block, one file each, each registering itself
//! with `dyrep_api::register_op!` (docs/REFERENCE.md "Branch types" for their structure,
//! "Equivalent kernels" for their equivalent kernels). Adding a branch type is one new file here
//! plus one `mod` line below; the registry-driven property tests in `tests/` pick it up.

mod conv1x1;
mod conv1x1_avg;
mod conv1x1_kxk;
mod conv1xk;
mod convkx1;
mod convkxk;
mod identity;

pub use conv1x1::Conv1x1Spec;
pub use conv1x1_avg::Conv1x1AvgSpec;
pub use conv1x1_kxk::Conv1x1KxkSpec;
pub use conv1xk::Conv1xkSpec;
pub use convkx1::ConvKx1Spec;
pub use convkxk::ConvKxkSpec;
pub use identity::IdentitySpec;

/// Name of the main branch op that holds a block's k×k conv.
pub const MAIN_OP: &str = "convkxk";

/// Forces this crate (and with it every op registration) into the final binary. The CLI and
/// every test binary call it: inventory's registrations live in life-before-main constructors
/// that the linker drops from a crate nothing refers to.
#[inline(never)]
pub fn ensure_linked() {
    std::hint::black_box(MAIN_OP);
}

/// The main branch spec (`convkxk`).
pub fn main_spec() -> Box<dyn dyrep_api::OpSpec> {
    Box::new(ConvKxkSpec::default())
}
