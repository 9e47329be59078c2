//! dyrep-api: the traits and data types every other dyrep crate speaks (docs/ARCHITECTURE.md "Core
//! model"): conv geometry, kernels and their transforms (docs/REFERENCE.md "Equivalent kernels"),
//! the branch-op and scorer plugin interfaces with their inventory registries, our own batch norm,
//! the recursive `Slot`/`RepBlock` with grow, cut and fusion (docs/REFERENCE.md "Nesting", "Growth
//! schedule (Rep)", "Dep (cut)", "Fusion checks"), and fusion-equivalence checking (`equivalence`,
//! plus `testing` for plugin authors behind the `testing` feature), and batch statistics shared
//! across data-parallel processes (`sync_bn`).

pub mod bn;
pub mod equivalence;
pub mod error;
pub mod exec;
pub mod geom;
pub mod init;
pub mod kernel;
pub mod layers;
pub mod op;
pub mod registry;
pub mod rng;
pub mod scorer;
pub mod slot;
pub mod sync_bn;
#[cfg(feature = "testing")]
pub mod testing;

pub use bn::{BatchNorm, BnEval, BN_EPS, BN_MOMENTUM};
pub use error::{Error, Result};
pub use exec::{branchwise, ExecPath};
pub use geom::ConvGeom;
pub use init::{ConvInit, InitCtx, DEFAULT_GAMMA0};
pub use kernel::Kernel;
pub use op::{
    find_op, not_applicable, op_spec, ops, BranchParts, OpEntry, OpSpec, RepOp, SecondStage,
    TensorRole, TensorVisitor,
};
pub use rng::SeededRng;
pub use scorer::{
    find_scorer, scorers, ConvObservation, GradProbe, MeanAccumulator, Scorer, ScorerConfig,
    ScorerEntry,
};
pub use slot::{
    join_path, BranchArch, PlainConv, RepBlock, Slot, SlotArch, SlotInfo, DEFAULT_MAX_DEPTH,
};
pub use sync_bn::{sync_bn_on, BatchSync, SyncBnGuard};

// Re-exported for the registration macros and for plugin crates.
pub use candle_core;
pub use dyrep_kernels as kernels;
#[doc(hidden)]
pub use inventory;
