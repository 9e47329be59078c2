//! `Slot` and `RepBlock`: "a conv that may have grown" (docs/ARCHITECTURE.md "Core model";
//! docs/REFERENCE.md "Nesting", "The grown block" for growth with output preservation (eq. 6),
//! "Dep (cut)" for cutting with absorption, "Fusion checks" for deploy fusion).
//!
//! A slot is either a plain k×k conv or a block: a main branch (an op whose k×k conv is itself a
//! slot, `convkxk` in dyrep-ops) plus any other branches, summed. Growth is recursive: a slot
//! inside a branch (the main conv, `conv1x1_kxk`'s second conv) can grow again. Grow and cut
//! keep the eval-mode output exactly: the difference is pushed into the main branch through
//! its batch norm (`RepOp::add_equivalent`), so no 1/sqrt(1+ε) residue is left (unlike the
//! reference) and nested blocks are never re-initialised by an outer cut.
//!
//! Where things are: this file the `Slot` (forward, growth, the tree's paths, fusion),
//! `plain.rs` the plain conv, `block.rs` the grown block, `exec.rs` how a block runs (fused
//! conv, block op, branch by branch), `arch.rs` the tree's serialisable structure and its
//! rebuild.

mod arch;
mod block;
pub mod exec;
mod plain;

use candle_core::Tensor;

pub use crate::tensor::join_path;
pub use arch::{BranchArch, SlotArch};
pub use block::RepBlock;
pub use plain::PlainConv;

use crate::bn::BatchNorm;
use crate::error::{Error, Result};
use crate::geom::ConvGeom;
use crate::init::InitCtx;
use crate::kernel::Kernel;
use crate::op::{OpSpec, TensorVisitor};
use block::apply_tail;

/// The reference's nesting limit: a conv grows only while fewer than two blocks enclose it, so
/// there are at most two levels of blocks (docs/REFERENCE.md "Nesting").
pub const DEFAULT_MAX_DEPTH: usize = 2;

/// A conv that may have grown.
#[derive(Debug)]
pub enum Slot {
    Conv(PlainConv),
    Block(RepBlock),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// Dotted path relative to the root slot ("" for the root itself).
    pub path: String,
    /// Number of blocks enclosing the slot.
    pub depth: usize,
    pub geom: ConvGeom,
    pub grown: bool,
}

impl Slot {
    /// A plain conv slot with fresh weights.
    pub fn conv(geom: ConvGeom, bias: bool, ctx: &mut InitCtx<'_>) -> Result<Slot> {
        Ok(Slot::Conv(PlainConv::new(geom, bias, ctx)?))
    }

    /// A plain conv slot holding the given kernel (weight and bias).
    pub fn from_kernel(geom: ConvGeom, kernel: &Kernel) -> Result<Slot> {
        Ok(Slot::Conv(PlainConv::from_tensors(
            geom,
            &kernel.weight,
            Some(&kernel.bias),
        )?))
    }

    pub fn geom(&self) -> &ConvGeom {
        match self {
            Slot::Conv(c) => &c.geom,
            Slot::Block(b) => &b.geom,
        }
    }

    pub fn is_block(&self) -> bool {
        matches!(self, Slot::Block(_))
    }

    pub fn as_block(&self) -> Option<&RepBlock> {
        match self {
            Slot::Block(b) => Some(b),
            Slot::Conv(_) => None,
        }
    }

    pub fn as_block_mut(&mut self) -> Option<&mut RepBlock> {
        match self {
            Slot::Block(b) => Some(b),
            Slot::Conv(_) => None,
        }
    }

    /// Forward pass (`train` selects batch statistics in every batch norm of the tree).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Slot::Conv(c) => c.conv.forward(x),
            Slot::Block(b) => b.forward_t(x, train),
        }
    }

    /// Forward pass followed by `bn` and an optional ReLU. A plain conv runs the three as one
    /// fused op while `bn` uses batch statistics (dyrep-kernels, CPU).
    pub fn forward_bn_t(
        &self,
        x: &Tensor,
        bn: &BatchNorm,
        train: bool,
        relu: bool,
    ) -> Result<Tensor> {
        match self {
            Slot::Conv(c) => crate::layers::conv_bn(&c.conv, bn, x, train, relu),
            Slot::Block(b) => {
                let tail = (Some(bn), relu, None);
                match b.forward_tail_t(x, train, tail)? {
                    Some(y) => Ok(y),
                    None => apply_tail(b.forward_t(x, train)?, tail, train),
                }
            }
        }
    }

    /// [`Self::forward_bn_t`] followed by a max pool, fused into one op when `bn` uses batch
    /// statistics and the slot is a plain conv ([`crate::layers::conv_bn_max_pool`]) or a block
    /// that trains as one block op (the pool runs inside it: the unpooled activation is never
    /// stored); `None` otherwise (the caller runs the two).
    pub fn forward_bn_max_pool_t(
        &self,
        x: &Tensor,
        bn: &BatchNorm,
        train: bool,
        relu: bool,
        pool: dyrep_kernels::MaxPoolParams,
    ) -> Result<Option<Tensor>> {
        match self {
            Slot::Conv(c) => crate::layers::conv_bn_max_pool(&c.conv, bn, x, train, relu, pool),
            Slot::Block(b) => b.forward_tail_t(x, train, (Some(bn), relu, Some(pool))),
        }
    }

    /// A unit without a BN after this slot (the reference DBB and RepVGG forms, where the block
    /// replaces conv and BN): the forward, then a ReLU (`relu`) and a max pool (`pool`), all in
    /// one block op while the slot is a block training as one; `None` otherwise (the caller
    /// runs them).
    pub fn forward_relu_pool_t(
        &self,
        x: &Tensor,
        train: bool,
        relu: bool,
        pool: Option<dyrep_kernels::MaxPoolParams>,
    ) -> Result<Option<Tensor>> {
        match self {
            Slot::Block(b) => b.forward_tail_t(x, train, (None, relu, pool)),
            Slot::Conv(_) => Ok(None),
        }
    }

    /// The exact eval-mode equivalent kernel of the whole tree (a detached copy).
    pub fn equivalent(&self) -> Result<Kernel> {
        match self {
            Slot::Conv(c) => c.conv.kernel(),
            Slot::Block(b) => b.equivalent(),
        }
    }

    /// Fuses the tree into one plain conv with bias. Returns whether anything changed (a plain
    /// conv is left exactly as it is, so fusing twice is a no-op).
    pub fn fuse(&mut self) -> Result<bool> {
        match self {
            Slot::Conv(_) => Ok(false),
            Slot::Block(b) => {
                let k = b.equivalent()?;
                *self = Slot::from_kernel(b.geom, &k)?;
                Ok(true)
            }
        }
    }

    /// After fusion: a plain conv's bias goes into the BN that follows it (running mean
    /// μ ← μ − b) and the conv becomes bias-free, as in the plain architecture. Exact in eval
    /// mode; a block or a conv without bias is left as it is.
    pub fn fold_bias_into(&mut self, bn: &BatchNorm) -> Result<()> {
        let Slot::Conv(conv) = &*self else {
            return Ok(());
        };
        let Some(bias) = conv.conv.bias() else {
            return Ok(());
        };
        let p = bn.eval_params()?;
        let mean = (&p.mean - bias.as_detached_tensor())?;
        bn.set_running_stats(&mean, &p.var)?;
        let weight = conv.conv.weight().as_detached_tensor();
        *self = Slot::Conv(PlainConv::from_tensors(conv.geom, &weight, None)?);
        Ok(())
    }

    /// Adds `delta` to the tree's equivalent kernel, exactly (eval mode): into the conv for a
    /// plain slot, through the main branch for a block.
    pub fn add_kernel(&mut self, delta: &Kernel) -> Result<()> {
        match self {
            Slot::Conv(c) => c.conv.add_kernel(delta),
            Slot::Block(b) => b.main.add_equivalent(delta),
        }
    }

    /// Rep (paper eq. 6): turns this plain conv into a block whose main branch is built from
    /// `main` and holds the old conv, plus one branch per spec in `branches` (initialised with
    /// last-BN γ = `ctx.gamma0`). The main branch is then set so the block's eval output equals
    /// the old conv's exactly. Nothing changes if any spec does not apply. The block is in
    /// `ctx.block_form`.
    pub fn grow(
        &mut self,
        main: &dyn OpSpec,
        branches: &[Box<dyn OpSpec>],
        ctx: &mut InitCtx<'_>,
    ) -> Result<()> {
        let target = self.equivalent()?;
        self.grow_independent(main, branches, true, ctx)?;
        match self {
            Slot::Block(b) => b.restore_equivalent(&target),
            Slot::Conv(_) => Ok(()),
        }
    }

    /// [`Slot::grow`] without the restore: every branch keeps its own fresh initialisation
    /// (the new branches as built, every BN as new), so the block computes something else than
    /// the old conv. The main branch holds the old conv when `keep_conv` (pretrained weights, or
    /// a draw of the same distribution), else its own fresh one, as the DBB and RepVGG authors
    /// build their training-time blocks (docs/REFERENCE.md, "Baselines"). The RNG is drawn the
    /// same either way.
    pub fn grow_independent(
        &mut self,
        main: &dyn OpSpec,
        branches: &[Box<dyn OpSpec>],
        keep_conv: bool,
        ctx: &mut InitCtx<'_>,
    ) -> Result<()> {
        let geom = match self {
            Slot::Conv(c) => c.geom,
            Slot::Block(_) => {
                return Err(Error::CannotGrow {
                    path: String::new(),
                    reason: "it is already a block (grow one of its inner slots instead)".into(),
                })
            }
        };
        main.check(&geom)?;
        let mut main_op = main.build(&geom, ctx)?;
        let mut ops = Vec::with_capacity(branches.len());
        for spec in branches {
            spec.check(&geom)?;
            ops.push(spec.build(&geom, ctx)?);
        }
        RepBlock::validate_parts(&geom, &mut main_op, &ops)?;
        let main_slot = main_op.main_slot_mut().ok_or_else(|| Error::Unsupported {
            op: main.name().to_string(),
            what: "being a block's main branch".into(),
        })?;
        if main_slot.geom() != &geom {
            return Err(Error::InvalidArch {
                path: main.name().to_string(),
                reason: format!(
                    "main slot geometry ({}) differs from {geom}",
                    main_slot.geom()
                ),
            });
        }
        if keep_conv {
            // The old conv moves into the main branch; the main's fresh conv is dropped.
            std::mem::swap(main_slot, self);
        }
        for op in std::iter::once(&main_op).chain(&ops) {
            ctx.block_form.apply_to_op(&**op);
        }
        *self = Slot::Block(RepBlock {
            geom,
            main: main_op,
            branches: ops,
        });
        Ok(())
    }

    /// Plain convs of the tree that may still grow (docs/REFERENCE.md "Growth schedule (Rep)"):
    /// k > 1 and fewer than `max_depth` blocks above them. Pre-order.
    pub fn growable(&self, max_depth: usize) -> Vec<SlotInfo> {
        self.slots()
            .into_iter()
            .filter(|s| !s.grown && s.geom.k > 1 && s.depth < max_depth)
            .collect()
    }

    /// Grows the plain conv at `path` (see [`Slot::grow`]) if the depth limit and the k > 1 rule
    /// allow it; errors name the path and the rule.
    pub fn grow_at(
        &mut self,
        path: &str,
        max_depth: usize,
        main: &dyn OpSpec,
        branches: &[Box<dyn OpSpec>],
        ctx: &mut InitCtx<'_>,
    ) -> Result<()> {
        let (slot, depth) = self.slot_mut(path)?;
        let cannot = |reason: String| Error::CannotGrow {
            path: path.to_string(),
            reason,
        };
        if depth >= max_depth {
            return Err(cannot(format!(
                "it is nested {depth} block(s) deep and the depth limit is {max_depth}"
            )));
        }
        if slot.geom().k <= 1 {
            return Err(cannot("1x1 convs never grow (k must be > 1)".into()));
        }
        slot.grow(main, branches, ctx).map_err(|e| match e {
            Error::CannotGrow { reason, .. } => cannot(reason),
            other => other,
        })
    }

    /// The slot at dotted `path` relative to this one (`""` is this slot) and its depth (the
    /// number of blocks above it). Paths go `<branch>.<child slot>`, e.g. `convkxk.conv` or
    /// `conv1x1_kxk.conv2.convkxk.conv`.
    pub fn slot_mut(&mut self, path: &str) -> Result<(&mut Slot, usize)> {
        self.slot_mut_inner(path, path, 0)
    }

    fn slot_mut_inner(
        &mut self,
        full: &str,
        rest: &str,
        depth: usize,
    ) -> Result<(&mut Slot, usize)> {
        if rest.is_empty() {
            return Ok((self, depth));
        }
        let missing = || Error::NoSuchPath {
            kind: "slot",
            path: full.to_string(),
        };
        let mut parts = rest.splitn(3, '.');
        let (Some(branch), Some(child)) = (parts.next(), parts.next()) else {
            return Err(missing());
        };
        let tail = parts.next().unwrap_or("");
        let Slot::Block(b) = self else {
            return Err(missing());
        };
        let op = b.branch_mut(branch).ok_or_else(missing)?;
        let slot = op
            .child_slots_mut()
            .into_iter()
            .find(|(n, _)| *n == child)
            .map(|(_, s)| s)
            .ok_or_else(missing)?;
        slot.slot_mut_inner(full, tail, depth + 1)
    }

    /// Every slot of the tree in pre-order (parents before children), paths relative to this one.
    pub fn slots(&self) -> Vec<SlotInfo> {
        let mut out = Vec::new();
        self.collect_slots("", 0, &mut out);
        out
    }

    fn collect_slots(&self, prefix: &str, depth: usize, out: &mut Vec<SlotInfo>) {
        out.push(SlotInfo {
            path: prefix.to_string(),
            depth,
            geom: *self.geom(),
            grown: self.is_block(),
        });
        if let Slot::Block(b) = self {
            for op in b.all_branches() {
                for (name, child) in op.child_slots() {
                    let p = join_path(&join_path(prefix, op.name()), name);
                    child.collect_slots(&p, depth + 1, out);
                }
            }
        }
    }

    /// Visits every tensor of the tree under `prefix` (plain conv: `weight`, `bias`; block:
    /// `<branch>.<own tensor>` and child slots under `<branch>.<child>`).
    pub fn visit_tensors(&self, prefix: &str, f: &mut TensorVisitor<'_>) {
        match self {
            Slot::Conv(c) => c.conv.visit(prefix, f),
            Slot::Block(b) => {
                for op in b.all_branches() {
                    let p = join_path(prefix, op.name());
                    op.visit_own_tensors(&p, f);
                    for (name, child) in op.child_slots() {
                        child.visit_tensors(&join_path(&p, name), f);
                    }
                }
            }
        }
    }

    /// Visits every batch norm of the tree with its path.
    pub fn visit_batch_norms(&self, prefix: &str, f: &mut dyn FnMut(&str, &BatchNorm)) {
        if let Slot::Block(b) = self {
            for op in b.all_branches() {
                let p = join_path(prefix, op.name());
                for (name, bn) in op.batch_norms() {
                    f(&join_path(&p, name), bn);
                }
                for (name, child) in op.child_slots() {
                    child.visit_batch_norms(&join_path(&p, name), f);
                }
            }
        }
    }

    /// Conv MACs at batch 1 for an `h × w` input (every branch conv counts, docs/REFERENCE.md "MACs
    /// and params").
    pub fn macs(&self, h: usize, w: usize) -> Result<u64> {
        match self {
            Slot::Conv(c) => Ok(c.geom.macs(h, w)?),
            Slot::Block(b) => b.all_branches().map(|op| op.macs(h, w)).sum(),
        }
    }

    /// Number of trainable parameters (BN γ/β and biases included, running stats excluded).
    pub fn param_count(&self) -> usize {
        let mut n = 0;
        self.visit_tensors("", &mut |_, v, role| {
            if role.is_trainable() {
                n += v.elem_count();
            }
        });
        n
    }

    /// Number of blocks in the tree (this one and nested ones).
    pub fn block_count(&self) -> usize {
        self.slots().iter().filter(|s| s.grown).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn plain_slot_fuse_is_a_no_op_and_paths_are_simple() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut ctx = InitCtx::new(&mut rng, &Device::Cpu);
        let geom = ConvGeom::same(3, 4, 3, 1, 1).unwrap();
        let mut s = Slot::conv(geom, false, &mut ctx).unwrap();
        let before = s.equivalent().unwrap();
        assert!(!s.fuse().unwrap());
        let after = s.equivalent().unwrap();
        let d = (before.weight - after.weight)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        let mut names = vec![];
        s.visit_tensors("features.0", &mut |p, _, _| names.push(p.to_string()));
        assert_eq!(names, vec!["features.0.weight"]);
        assert_eq!(s.param_count(), 4 * 3 * 9);
        assert_eq!(s.slots().len(), 1);
        assert!(s.slot_mut("convkxk.conv").is_err());
    }

    #[test]
    fn add_kernel_creates_bias_and_adds_exactly() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut ctx = InitCtx::new(&mut rng, &Device::Cpu);
        let geom = ConvGeom::same(2, 2, 3, 1, 1).unwrap();
        let mut s = Slot::conv(geom, false, &mut ctx).unwrap();
        let k0 = s.equivalent().unwrap();
        let delta = Kernel::new(
            crate::init::normal_tensor(ctx.rng, &[2, 2, 3, 3], 0.0, 1.0, &Device::Cpu).unwrap(),
            Tensor::new(&[1.0f32, -2.0], &Device::Cpu).unwrap(),
        )
        .unwrap();
        s.add_kernel(&delta).unwrap();
        let k1 = s.equivalent().unwrap();
        let want = k0.add(&delta).unwrap();
        let d = (k1.weight - want.weight)
            .unwrap()
            .abs()
            .unwrap()
            .max_keepdim(0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-6);
        assert_eq!(k1.bias.to_vec1::<f32>().unwrap(), vec![1.0, -2.0]);
        assert!(matches!(s.arch(), SlotArch::Conv { bias: true }));
    }
}
