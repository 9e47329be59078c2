//! A grown conv (paper §3.1): a main branch plus other branches in the same geometry, summed —
//! its forward (through `ExecPath::choose`), its exact equivalent kernel, growth of new branches,
//! cuts with absorption into the main branch (docs/REFERENCE.md "Dep (cut)") and the branches'
//! Dep importances.

use candle_core::Tensor;

use super::exec::ExecPath;
use crate::bn::BatchNorm;
use crate::error::{Error, Result};
use crate::geom::ConvGeom;
use crate::init::InitCtx;
use crate::kernel::Kernel;
use crate::op::{BranchParts, OpSpec, RepOp, SecondStage};
use dyrep_kernels::PieceWeight;

/// A grown conv: a main branch plus other branches, all in the same geometry, summed.
#[derive(Debug)]
pub struct RepBlock {
    pub(super) geom: ConvGeom,
    pub(super) main: Box<dyn RepOp>,
    pub(super) branches: Vec<Box<dyn RepOp>>,
}

/// The conv unit's BN after a block (none in the reference DBB and RepVGG forms), whether a
/// ReLU follows, and the max pool after that (if any): what the block op can run on the
/// branches' sum.
pub(super) type PostUnit<'a> = (
    Option<&'a BatchNorm>,
    bool,
    Option<dyrep_kernels::MaxPoolParams>,
);

/// A conv unit's tail on the block output `y`, op by op: BN, ReLU, max pool.
pub(super) fn apply_tail(y: Tensor, (bn, relu, pool): PostUnit<'_>, train: bool) -> Result<Tensor> {
    let y = match bn {
        Some(bn) => bn.forward_t(&y, train)?,
        None => y,
    };
    let y = if relu { crate::layers::relu(&y)? } else { y };
    match pool {
        Some(p) => crate::layers::max_pool2d(&y, p.k, p.stride, p.padding),
        None => Ok(y),
    }
}

impl RepBlock {
    /// Assembles a block, checking that every branch has the block's geometry, that names are
    /// unique and that `main` is a main branch (has a main slot).
    pub fn new(
        geom: ConvGeom,
        mut main: Box<dyn RepOp>,
        branches: Vec<Box<dyn RepOp>>,
    ) -> Result<Self> {
        Self::validate_parts(&geom, &mut main, &branches)?;
        Ok(Self {
            geom,
            main,
            branches,
        })
    }

    pub(super) fn validate_parts(
        geom: &ConvGeom,
        main: &mut Box<dyn RepOp>,
        branches: &[Box<dyn RepOp>],
    ) -> Result<()> {
        let main_name = main.name();
        if main.main_slot_mut().is_none() {
            return Err(Error::Unsupported {
                op: main_name.to_string(),
                what: "being a block's main branch (it has no main conv slot)".into(),
            });
        }
        let mut names = vec![main_name];
        for b in std::iter::once(&**main).chain(branches.iter().map(|b| &**b)) {
            if b.geom() != geom {
                return Err(Error::InvalidArch {
                    path: b.name().to_string(),
                    reason: format!(
                        "branch geometry ({}) differs from the block's ({geom})",
                        b.geom()
                    ),
                });
            }
        }
        for b in branches {
            if names.contains(&b.name()) {
                return Err(Error::DuplicateBranch {
                    op: b.name().to_string(),
                });
            }
            names.push(b.name());
        }
        Ok(())
    }

    pub fn geom(&self) -> &ConvGeom {
        &self.geom
    }

    /// The main branch.
    pub fn main(&self) -> &dyn RepOp {
        &*self.main
    }

    /// The main branch, mutably.
    pub fn main_mut(&mut self) -> &mut dyn RepOp {
        &mut *self.main
    }

    /// The other branches, in insertion order.
    pub fn branches(&self) -> &[Box<dyn RepOp>] {
        &self.branches
    }

    /// Main first, then the other branches.
    pub fn all_branches(&self) -> impl Iterator<Item = &dyn RepOp> {
        std::iter::once(&*self.main).chain(self.branches.iter().map(|b| &**b))
    }

    /// Names of all branches, main first.
    pub fn branch_names(&self) -> Vec<&'static str> {
        self.all_branches().map(|b| b.name()).collect()
    }

    /// The branch (main included) called `name`.
    pub fn branch(&self, name: &str) -> Option<&dyn RepOp> {
        self.all_branches().find(|b| b.name() == name)
    }

    pub(super) fn branch_mut(&mut self, name: &str) -> Option<&mut Box<dyn RepOp>> {
        if self.main.name() == name {
            return Some(&mut self.main);
        }
        self.branches.iter_mut().find(|b| b.name() == name)
    }

    /// Sum of all branch outputs, computed the way [`ExecPath::choose`] says: as the fused
    /// conv for inference (the same output, by the fusion property), through the block op when
    /// training with batch statistics, else branch by branch.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match ExecPath::choose(self, train) {
            ExecPath::FusedConv => self.conv_with(x, &self.equivalent()?),
            ExecPath::Online => {
                let k = crate::form::live_kernels(|| self.equivalent())?;
                self.conv_with(x, &k)
            }
            ExecPath::BlockOp { fused, others, eps } => {
                Ok(self.run_block_op(x, train, &fused, &others, eps, None)?.0)
            }
            ExecPath::BranchByBranch => {
                let mut y = self.main.forward_t(x, train)?;
                for b in &self.branches {
                    y = (y + b.forward_t(x, train)?)?;
                }
                Ok(y)
            }
        }
    }

    /// `k` applied as a conv in the block's geometry, plus its bias.
    fn conv_with(&self, x: &Tensor, k: &Kernel) -> Result<Tensor> {
        let g = &self.geom;
        let y = dyrep_kernels::conv2d(
            x,
            &k.weight.to_dtype(x.dtype())?,
            g.stride,
            (g.padding, g.padding),
            g.groups,
        )?;
        let bias = k.bias.to_dtype(x.dtype())?.reshape((1, g.out_ch, 1, 1))?;
        Ok(y.broadcast_add(&bias)?)
    }

    /// Whether the block is in the online form (its main branch's batch norms are scales).
    pub fn is_online(&self) -> bool {
        self.main
            .batch_norms()
            .first()
            .is_some_and(|(_, bn)| bn.is_scale_form())
    }

    /// The block's form.
    pub fn form(&self) -> crate::form::BlockForm {
        if self.is_online() {
            crate::form::BlockForm::Online
        } else {
            crate::form::BlockForm::Bn
        }
    }

    /// The block followed by its conv unit's `tail` (BN, ReLU, max pool, each optional) while the
    /// block trains through the block op: the tail inside the op when it can be, else after it;
    /// `None` where the block does not train as one op (or the BN does not use batch
    /// statistics), and the caller runs block and tail.
    pub(super) fn forward_tail_t(
        &self,
        x: &Tensor,
        train: bool,
        tail: PostUnit<'_>,
    ) -> Result<Option<Tensor>> {
        if tail.0.is_some_and(|bn| !bn.uses_batch_stats(train)) {
            return Ok(None);
        }
        let (fused, others, eps) = match ExecPath::choose(self, train) {
            ExecPath::BlockOp { fused, others, eps } => (fused, others, eps),
            ExecPath::Online => return self.online_tail_t(x, train, tail),
            _ => return Ok(None),
        };
        let (y, applied) = self.run_block_op(x, train, &fused, &others, eps, Some(tail))?;
        Ok(Some(if applied {
            y
        } else {
            apply_tail(y, tail, train)?
        }))
    }

    /// An online block and its unit's BN (batch statistics), ReLU and max pool as one fused op
    /// on the assembled kernel; `None` without such a BN (or with synchronised batch norm).
    fn online_tail_t(&self, x: &Tensor, train: bool, tail: PostUnit<'_>) -> Result<Option<Tensor>> {
        let (Some(bn), relu, pool) = tail else {
            return Ok(None);
        };
        if !bn.uses_batch_stats(train) || crate::sync_bn::sync_bn_on() {
            return Ok(None);
        }
        let k = crate::form::live_kernels(|| self.equivalent())?;
        crate::layers::kernel_bn_train(&k, bn, x, self.conv_params(), relu, pool).map(Some)
    }

    /// The block's conv geometry as the kernels take it.
    pub fn conv_params(&self) -> dyrep_kernels::ConvParams {
        let g = &self.geom;
        dyrep_kernels::ConvParams {
            stride: g.stride,
            padding: (g.padding, g.padding),
            groups: g.groups,
        }
    }

    /// When this forward pass runs the block in the online form: its kernel assembled from the
    /// branches' live tensors (differentiable), for a fused op around it.
    pub fn online_kernel(&self, train: bool) -> Result<Option<Kernel>> {
        match ExecPath::choose(self, train) {
            ExecPath::Online => Ok(Some(crate::form::live_kernels(|| self.equivalent())?)),
            _ => Ok(None),
        }
    }

    /// The block op over `fused` (then `others` added), recording each fused batch norm's
    /// statistics. With `post = (bn, relu, pool)` the conv unit's BN, ReLU and max pool after
    /// the block run in the same op when every branch is in it and the BN (if any) normalises
    /// with batch statistics; the flag says whether they did (else the caller applies them).
    fn run_block_op(
        &self,
        x: &Tensor,
        train: bool,
        fused: &[crate::op::BranchParts<'_>],
        others: &[&dyn RepOp],
        eps: f64,
        post: Option<PostUnit<'_>>,
    ) -> Result<(Tensor, bool)> {
        let branches: Vec<dyrep_kernels::BlockBranch<'_>> =
            fused.iter().map(super::exec::block_branch).collect();
        let post = post.filter(|(bn, _, _)| {
            others.is_empty() && bn.is_none_or(|bn| bn.uses_batch_stats(train) && bn.eps() == eps)
        });
        let tail = post.map(|(bn, relu, pool)| dyrep_kernels::BlockTail {
            bn: bn.map(|bn| (bn.gamma().as_tensor(), bn.beta().as_tensor())),
            relu,
            pool,
        });
        let out = dyrep_kernels::block_train(x, &branches, tail, eps)?;
        let mut bns = super::exec::fused_batch_norms(fused);
        if let Some((Some(bn), _, _)) = post {
            bns.push(bn);
        }
        // Each BN records the statistics of what it saw (a conv output with its bias).
        for (bn, st) in bns.iter().zip(&out.stats) {
            if st.count < 2 {
                return Err(crate::Error::SingleValueBatch {
                    context: format!("{} channels in a block of {}", bn.num_features(), self.geom),
                });
            }
            bn.record_batch_stats(&st.mean, &st.var, st.count)?;
        }
        let mut y = out.y;
        for op in others {
            y = (y + op.forward_t(x, train)?)?;
        }
        Ok((y, post.is_some()))
    }

    /// Whether any batch norm of the block (nested blocks included) is calibrating.
    pub(crate) fn calibrating(&self) -> bool {
        self.all_branches().any(|op| {
            op.batch_norms().iter().any(|(_, bn)| bn.is_calibrating())
                || op.child_slots().iter().any(|(_, child)| {
                    let mut any = false;
                    child.visit_batch_norms("", &mut |_, bn| any |= bn.is_calibrating());
                    any
                })
        })
    }

    /// The block's exact eval-mode equivalent kernel (transII over all branches). Read live in
    /// the online form (`form.rs`), the one-conv and identity branches go into one assembly op
    /// (`dyrep_kernels::assemble_kernel`: the same sum without the kernel-sized intermediates
    /// of folding, padding and adding each), the others through their own `to_equivalent_kxk`.
    pub fn equivalent(&self) -> Result<Kernel> {
        if crate::form::live_on() && self.is_online() {
            if let Some(k) = self.assembled_live()? {
                return Ok(k);
            }
        }
        let mut k = self.main.to_equivalent_kxk()?;
        for b in &self.branches {
            k = k.add(&b.to_equivalent_kxk()?)?;
        }
        Ok(k)
    }

    /// The online block's live kernel with its one-conv (`BranchParts::ConvBn`, centred in the
    /// k×k window) and identity (`BranchParts::Bn`) branches assembled in one op; `None` when
    /// no branch is of those kinds or the tensors are not the own kernels' (f32 on the CPU).
    fn assembled_live(&self) -> Result<Option<Kernel>> {
        let g = self.geom;
        let (ipg, k) = (g.in_per_group(), g.k);
        let centred = |conv: &crate::layers::Conv2dLayer| -> Result<bool> {
            let (o, i, kh, kw) = conv.dims4()?;
            let (ph, pw) = conv.padding();
            Ok(o == g.out_ch
                && i == ipg
                && kh % 2 == 1
                && kw % 2 == 1
                && kh <= k
                && kw <= k
                && conv.stride() == g.stride
                && conv.groups() == g.groups
                && ph + (k - kh) / 2 == g.padding
                && pw + (k - kw) / 2 == g.padding)
        };
        let identity_fits = g.in_ch == g.out_ch && g.stride == 1 && g.is_same_padding();
        let (mut pieces, mut rest): (Vec<(PieceWeight<'_>, Tensor)>, Vec<&dyn RepOp>) =
            (Vec::new(), Vec::new());
        let mut bias: Option<Tensor> = None;
        let mut add_bias = |b: Tensor| -> Result<()> {
            bias = Some(match bias.take() {
                Some(acc) => (acc + b)?,
                None => b,
            });
            Ok(())
        };
        for op in self.all_branches() {
            match op.conv_bn_parts() {
                Some(BranchParts::ConvBn { conv, bn }) if bn.is_scale_form() && centred(conv)? => {
                    let (gamma, beta) = (bn.gamma().as_tensor(), bn.beta().as_tensor());
                    match conv.bias() {
                        Some(b) => add_bias((beta + (gamma * b.as_tensor())?)?)?,
                        None => add_bias(beta.clone())?,
                    }
                    pieces.push((
                        PieceWeight::Centred(conv.weight().as_tensor()),
                        gamma.clone(),
                    ));
                }
                Some(BranchParts::Bn { bn }) if bn.is_scale_form() && identity_fits => {
                    add_bias(bn.beta().as_tensor().clone())?;
                    pieces.push((PieceWeight::Identity, bn.gamma().as_tensor().clone()));
                }
                Some(BranchParts::TwoStage {
                    conv,
                    bn1,
                    pad,
                    second: SecondStage::AvgPool { k: pk, stride },
                    bn2,
                }) if bn1.is_scale_form()
                    && bn2.is_scale_form()
                    && pk == k
                    && stride == g.stride
                    && pad == g.padding
                    && conv.dims4()? == (g.out_ch, ipg, 1, 1)
                    && conv.stride() == 1
                    && conv.padding() == (0, 0)
                    && conv.groups() == g.groups =>
                {
                    // s2·avg(s1·(W x + b) + β1) + β2: the 1×1 spread over k×k with scale s1·s2.
                    let (s1, b1) = (bn1.gamma().as_tensor(), bn1.beta().as_tensor());
                    let (s2, b2) = (bn2.gamma().as_tensor(), bn2.beta().as_tensor());
                    let inner = match conv.bias() {
                        Some(b) => (b1 + (s1 * b.as_tensor())?)?,
                        None => b1.clone(),
                    };
                    add_bias((b2 + (s2 * inner)?)?)?;
                    pieces.push((PieceWeight::Spread(conv.weight().as_tensor()), (s1 * s2)?));
                }
                _ => rest.push(op),
            }
        }
        let pieces: Vec<dyrep_kernels::KernelPiece<'_>> = pieces
            .iter()
            .map(|(weight, scale)| dyrep_kernels::KernelPiece {
                weight: *weight,
                scale,
            })
            .collect();
        let own = pieces.first().is_some_and(|p| {
            dyrep_kernels::Backend::for_tensor(p.scale) == dyrep_kernels::Backend::Own
        });
        let Some(bias) = bias.filter(|_| own) else {
            return Ok(None);
        };
        let weight = dyrep_kernels::assemble_kernel(&pieces, g.out_ch, ipg, k)?;
        let mut kernel = Kernel::new(weight, bias)?;
        for op in rest {
            kernel = kernel.add(&op.to_equivalent_kxk()?)?;
        }
        Ok(Some(kernel))
    }

    /// Adjusts the main branch so that the block's equivalent kernel becomes `target`.
    pub fn restore_equivalent(&mut self, target: &Kernel) -> Result<()> {
        let delta = target.sub(&self.equivalent()?)?;
        self.main.add_equivalent(&delta)
    }

    /// Adds a branch built from `spec` (in the block's form), keeping the block's eval output
    /// unchanged — in the online form its training output too.
    pub fn add_branch(&mut self, spec: &dyn OpSpec, ctx: &mut InitCtx<'_>) -> Result<()> {
        spec.check(&self.geom)?;
        if self.branch(spec.name()).is_some() {
            return Err(Error::DuplicateBranch {
                op: spec.name().to_string(),
            });
        }
        let before = self.equivalent()?;
        let op = spec.build(&self.geom, ctx)?;
        self.form().apply_to_op(&*op);
        if op.geom() != &self.geom {
            return Err(Error::InvalidArch {
                path: op.name().to_string(),
                reason: "op built with another geometry than asked for".into(),
            });
        }
        self.branches.push(op);
        self.restore_equivalent(&before)
    }

    /// Dep: removes the branch `name` and absorbs its equivalent kernel into the main branch, so
    /// the eval output is unchanged. Kept branches and nested blocks are untouched. Returns the
    /// absorbed kernel.
    pub fn cut(&mut self, name: &str) -> Result<Kernel> {
        if self.main.name() == name {
            return Err(Error::Unsupported {
                op: name.to_string(),
                what: "being cut: it is the block's main branch".into(),
            });
        }
        let idx = self
            .branches
            .iter()
            .position(|b| b.name() == name)
            .ok_or_else(|| Error::NoSuchPath {
                kind: "branch",
                path: name.to_string(),
            })?;
        let k = self.branches[idx].to_equivalent_kxk()?;
        self.main.add_equivalent(&k)?;
        self.branches.remove(idx);
        Ok(k)
    }

    /// Dep's importance of each non-main branch: mean|γ_last| / mean|γ_main| (docs/REFERENCE.md
    /// "Dep (cut)").
    pub fn branch_importance(&self) -> Result<Vec<(&'static str, f64)>> {
        let mean_abs = |t: &Tensor| -> Result<f64> {
            Ok(t.abs()?
                .mean_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?)
        };
        let main = mean_abs(&self.main.bn_gamma()?)?;
        self.branches
            .iter()
            .map(|b| Ok((b.name(), mean_abs(&b.bn_gamma()?)? / main)))
            .collect()
    }
}
