//! The plugin contract (docs/PLUGINS.md): exactly what a branch type or a scorer written in its
//! own crate uses — `use dyrep_api::plugin::*;` — and nothing of dyrep's internals (execution
//! paths, kernels, synchronised BN, the equivalence harness). Models register from the runtime
//! (`dyrep_runtime::plugin`, which adds `register_model!` and the layers a model is built from).
//!
//! A branch type: an [`OpSpec`] (data only, serialised into `arch.json` with `typetag`) that
//! builds a [`RepOp`] for a [`ConvGeom`] from an [`InitCtx`]; the op's forward, its exact
//! equivalent [`Kernel`] in eval mode, its last [`BatchNorm`], its tensors by path
//! ([`TensorVisitor`], [`TensorRole`]) and any child [`Slot`]s that may grow. Its layers are
//! [`Conv2dLayer`], [`ConvBnBranch`] and [`BnAndPad`]; a branch the block op can run
//! describes itself as [`BranchParts`]. [`register_op!`](crate::register_op) adds it to the
//! registry.
//!
//! A scorer: a [`Scorer`] built from a [`ScorerConfig`], fed a [`ConvObservation`] per growable
//! conv after every backward (a [`GradProbe`] for scorers that need gradients at shifted
//! weights), usually averaging with a [`MeanAccumulator`];
//! [`register_scorer!`](crate::register_scorer) adds it.

pub use crate::bn::BatchNorm;
pub use crate::branch::ConvBnBranch;
pub use crate::error::{Error, Result};
pub use crate::geom::ConvGeom;
pub use crate::init::{InitCtx, DEFAULT_GAMMA0};
pub use crate::kernel::Kernel;
pub use crate::layers::{avg_pool2d, BnAndPad, Conv2dLayer};
pub use crate::op::{
    not_applicable, BranchParts, OpSpec, RepOp, SecondStage, TensorRole, TensorVisitor,
};
pub use crate::rng::SeededRng;
pub use crate::scorer::{ConvObservation, GradProbe, MeanAccumulator, Scorer, ScorerConfig};
pub use crate::slot::{join_path, Slot};
pub use crate::{register_op, register_scorer};
