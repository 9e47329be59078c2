//! dyrep-api: the traits and data types every other dyrep crate speaks (docs/ARCHITECTURE.md "Core
//! model"). Plugin authors need only [`plugin`], which re-exports the contract.
//!
//! Where things live: `geom.rs` conv geometry; `kernel.rs` kernels and their transforms
//! (docs/REFERENCE.md "Equivalent kernels"); `bn.rs` our own batch norm; `layers.rs` the conv
//! and pooling layers branches are made of; `op.rs` the branch-op interface (`RepOp`, `OpSpec`)
//! and its registry, `tensor.rs` tensor paths and roles, `branch.rs` `ConvBnBranch`, `scorer.rs` the scorer interface and its registry, `registry.rs` their
//! lookup; `slot/` the recursive `Slot`/`RepBlock` with grow, cut and fusion
//! (docs/REFERENCE.md "Nesting", "Growth schedule (Rep)", "Dep (cut)", "Fusion checks");
//! `slot/exec.rs` how a block runs (fused conv, online assembly, block op, branch by branch);
//! `form.rs` the block form (the paper's BN form or the online form); `switch.rs` the scoped
//! thread-local switches (branch by branch, live kernels); `init.rs` seeded
//! initialisation and memory checks; `rng.rs` the seeded generator; `sync_bn.rs` batch
//! statistics shared across data-parallel processes; `equivalence.rs` fusion-equivalence checks,
//! `online_check.rs` the online form's forward and gradient checks
//! (and `testing`, behind the `testing` feature, the harness for plugin authors); utilities every
//! crate above uses: `hash.rs` (FNV-1a content keys) and `durable.rs` (fsync'd atomic writes and
//! the crash tests' fault points).

pub mod bn;
pub mod branch;
pub mod durable;
pub mod equivalence;
pub mod error;
pub mod form;
pub mod geom;
pub mod hash;
pub mod init;
pub mod kernel;
pub mod layers;
pub mod online_check;
pub mod op;
pub mod plugin;
pub mod registry;
pub mod rng;
pub mod scorer;
pub mod slot;
mod switch;
pub mod sync_bn;
pub mod tensor;
#[cfg(feature = "testing")]
pub mod testing;

pub use bn::{BatchNorm, BnEval, BN_EPS, BN_MOMENTUM};
pub use error::{Error, Result};
pub use form::{live_kernels, BlockForm};
pub use geom::{ConvGeom, GeomError};
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
pub use slot::exec::{self, branchwise, ExecPath};
pub use slot::{
    join_path, BranchArch, PlainConv, RepBlock, Slot, SlotArch, SlotInfo, DEFAULT_MAX_DEPTH,
};
pub use sync_bn::{sync_bn_on, BatchSync, SyncBnGuard};

// Re-exported for the registration macros and for plugin crates.
pub use candle_core;
pub use dyrep_kernels as kernels;
#[doc(hidden)]
pub use inventory;
