//! The branch-type plugin interface (docs/ARCHITECTURE.md "Core model"): `RepOp` (a branch
//! instance), `OpSpec` (its data-only description, serialised by typetag under `"op"`), the tensor
//! visitor every op exposes its parameters and buffers through, and the inventory registry of ops.

use std::fmt;

use candle_core::Tensor;

use crate::bn::BatchNorm;
use crate::error::{Error, Result};
use crate::geom::ConvGeom;
use crate::init::InitCtx;
use crate::kernel::Kernel;
use crate::registry::lookup;
use crate::slot::Slot;
pub use crate::tensor::{TensorRole, TensorVisitor};

/// What [`RepOp::conv_bn_parts`] exposes.
#[derive(Clone, Copy, Debug)]
pub enum BranchParts<'a> {
    /// `bn(conv(x))`.
    ConvBn {
        conv: &'a crate::layers::Conv2dLayer,
        bn: &'a BatchNorm,
    },
    /// `bn(x)`.
    Bn { bn: &'a BatchNorm },
    /// `bn2(second(pad(bn1(conv(x)))))`: DBB's two-stage branches (docs/REFERENCE.md "Branch
    /// types"). The pad fills `pad` rows and columns on every side with `bn1`'s eval-mode output
    /// for a zero input (`BNAndPad`, no gradient through it); `second` runs without padding of its
    /// own.
    TwoStage {
        conv: &'a crate::layers::Conv2dLayer,
        bn1: &'a BatchNorm,
        pad: usize,
        second: SecondStage<'a>,
        bn2: &'a BatchNorm,
    },
}

/// The second stage of [`BranchParts::TwoStage`].
#[derive(Clone, Copy, Debug)]
pub enum SecondStage<'a> {
    /// A conv without bias and without padding.
    Conv(&'a crate::layers::Conv2dLayer),
    /// A k×k average pool with this stride.
    AvgPool { k: usize, stride: usize },
}

impl<'a> BranchParts<'a> {
    /// The batch norms, in the order their statistics come back from the block op.
    pub fn batch_norms(&self) -> Vec<&'a BatchNorm> {
        match *self {
            BranchParts::ConvBn { bn, .. } | BranchParts::Bn { bn } => vec![bn],
            BranchParts::TwoStage { bn1, bn2, .. } => vec![bn1, bn2],
        }
    }
}

/// A branch instance inside a `RepBlock`: object safe, `Send + Sync`.
///
/// Contract, checked for every registered op by the property tests in `dyrep-ops` and by
/// [`crate::testing::assert_fusion_equivalent`]:
/// - `forward_t(x, false)` equals `to_equivalent_kxk()` applied as a k×k conv in the block's
///   geometry (stride, padding, groups) plus bias, up to f32 rounding, for any BN statistics;
/// - `init` leaves the last BN with γ = `ctx.gamma0` (main branches: γ = 1);
/// - tensors are visited under stable dotted paths relative to the op (`conv.weight`,
///   `bn.running_var`, ...); child slots are visited by the framework, not by the op.
pub trait RepOp: Send + Sync + fmt::Debug {
    /// Registry name (lower_snake), the same string as the spec's typetag name.
    fn name(&self) -> &'static str;

    /// The block geometry this branch stands in.
    fn geom(&self) -> &ConvGeom;

    /// The data-only description this op was built from.
    fn spec(&self) -> Box<dyn OpSpec>;

    /// Forward pass; `train` selects batch statistics in every batch norm.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor>;

    /// The exact eval-mode equivalent `[out, in/g, k, k]` kernel and bias in the block's geometry.
    fn to_equivalent_kxk(&self) -> Result<Kernel>;

    /// Fresh weights: convs by the reference init, every BN reset, the last BN's γ = `ctx.gamma0`
    /// (γ = 1 for a main branch). Grown child slots are reset to plain convs.
    fn init(&mut self, ctx: &mut InitCtx<'_>) -> Result<()>;

    /// γ of the branch's last batch norm (per output channel), for Dep's importance.
    fn bn_gamma(&self) -> Result<Tensor>;

    /// The op's own batch norms (not those of child slots), with paths relative to the op.
    fn batch_norms(&self) -> Vec<(&'static str, &BatchNorm)>;

    /// Visits the op's own tensors (not those of child slots) under `prefix`.
    fn visit_own_tensors(&self, prefix: &str, f: &mut TensorVisitor<'_>);

    /// Convs inside the branch that may grow into blocks themselves, by name (e.g. `conv2`).
    fn child_slots(&self) -> Vec<(&'static str, &Slot)> {
        Vec::new()
    }

    /// Mutable access to the same child slots, in the same order.
    fn child_slots_mut(&mut self) -> Vec<(&'static str, &mut Slot)> {
        Vec::new()
    }

    /// Conv multiply-accumulates at batch 1 for an `h × w` block input, child slots included
    /// (docs/REFERENCE.md "MACs and params": pooling, BN and additions are not counted).
    fn macs(&self, h: usize, w: usize) -> Result<u64>;

    /// If this branch is one conv followed by a batch norm, a batch norm of the block input
    /// alone, or a two-stage conv → BN → pad → conv/avg-pool → BN, its parts: a block then runs
    /// such branches together in one fused op while training (dyrep-kernels `block_train`).
    /// `None` (the default) runs the branch's own `forward_t`; the result is the same either way.
    fn conv_bn_parts(&self) -> Option<BranchParts<'_>> {
        None
    }

    /// For a main branch: the slot holding its k×k conv, where growth places the old conv.
    fn main_slot_mut(&mut self) -> Option<&mut Slot> {
        None
    }

    /// For a main branch: change its parameters so its equivalent kernel becomes
    /// `current + delta`, exactly in eval mode. This is how grow (eq. 6) and cut keep a
    /// block's output unchanged.
    fn add_equivalent(&mut self, delta: &Kernel) -> Result<()> {
        let _ = delta;
        Err(Error::Unsupported {
            op: self.name().to_string(),
            what: "absorbing a kernel (only a main branch such as `convkxk` can)".into(),
        })
    }
}

/// Data-only description of a branch: what goes into the architecture JSON
/// (`{"op": "conv1x1_kxk", ...}`). Tensors never go through serde.
#[typetag::serde(tag = "op")]
pub trait OpSpec: Send + Sync + fmt::Debug {
    /// Registry name; must equal the typetag name.
    fn name(&self) -> &'static str;

    /// Whether the op can stand in for a conv of this geometry; the error names the rule.
    fn check(&self, geom: &ConvGeom) -> Result<()>;

    /// Builds and initialises the op (`check` first; an inapplicable geometry is an error).
    fn build(&self, geom: &ConvGeom, ctx: &mut InitCtx<'_>) -> Result<Box<dyn RepOp>>;

    /// A boxed copy.
    fn clone_spec(&self) -> Box<dyn OpSpec>;
}

impl Clone for Box<dyn OpSpec> {
    fn clone(&self) -> Self {
        self.clone_spec()
    }
}

/// Helper for `check` implementations: the `NotApplicable` error.
pub fn not_applicable(op: &str, geom: &ConvGeom, rule: &str) -> Error {
    Error::NotApplicable {
        op: op.to_string(),
        geom: *geom,
        rule: rule.to_string(),
    }
}

/// A registry entry, submitted with [`register_op!`](crate::register_op).
pub struct OpEntry {
    /// lower_snake name, the same string as the spec's typetag name.
    pub name: &'static str,
    /// One-line summary for `dyrep ops`.
    pub summary: &'static str,
    /// Listing order (built-ins use the reference order 0..7; plugins default to 1000).
    pub order: u32,
    /// The spec with default settings.
    pub default_spec: fn() -> Box<dyn OpSpec>,
}

impl fmt::Debug for OpEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpEntry")
            .field("name", &self.name)
            .field("summary", &self.summary)
            .field("order", &self.order)
            .finish()
    }
}

inventory::collect!(OpEntry);

/// Every registered op, in listing order (then by name).
pub fn ops() -> Vec<&'static OpEntry> {
    let mut v: Vec<&'static OpEntry> = inventory::iter::<OpEntry>.into_iter().collect();
    v.sort_by(|a, b| a.order.cmp(&b.order).then(a.name.cmp(b.name)));
    v
}

/// The op registered under `name`, or an error listing the known names and the nearest one.
pub fn find_op(name: &str) -> Result<&'static OpEntry> {
    lookup("op", name, ops(), |e| e.name)
}

/// Default spec of the op named `name`.
pub fn op_spec(name: &str) -> Result<Box<dyn OpSpec>> {
    Ok((find_op(name)?.default_spec)())
}

/// Registers an op spec type (which must implement `Default` and `OpSpec` with
/// `#[typetag::serde(name = "...")]` using the same name):
///
/// ```ignore
/// dyrep_api::register_op!(Conv1x1Spec, name = "conv1x1", summary = "1x1 conv + BN", order = 0);
/// ```
#[macro_export]
macro_rules! register_op {
    ($spec:ty, name = $name:literal, summary = $summary:literal, order = $order:expr $(,)?) => {
        $crate::inventory::submit! {
            $crate::OpEntry {
                name: $name,
                summary: $summary,
                order: $order,
                default_spec: || -> ::std::boxed::Box<dyn $crate::OpSpec> {
                    ::std::boxed::Box::new(<$spec as ::std::default::Default>::default())
                },
            }
        }
    };
    ($spec:ty, name = $name:literal, summary = $summary:literal $(,)?) => {
        $crate::register_op!($spec, name = $name, summary = $summary, order = 1000);
    };
}
