//! Branch building blocks that are branches themselves: `ConvBnBranch`, the "conv → BN" branch
//! of `conv1x1`, `conv1xk` and `convkx1`, for plugin authors too.

use candle_core::Tensor;

use crate::bn::BatchNorm;
use crate::error::Result;
use crate::geom::ConvGeom;
use crate::init::InitCtx;
use crate::kernel::Kernel;
use crate::layers::{conv_bn, Conv2dLayer};
use crate::op::{OpSpec, RepOp};
use crate::tensor::{join_path, TensorVisitor};

/// A generic "conv (kh × kw, the block's stride and groups, no bias) → BN" branch: the shape of
/// `conv1x1`, `conv1xk` and `convkx1` (docs/REFERENCE.md "Branch types" branches 0, 4, 5),
/// available to plugin authors too. The conv is centred in the k×k window (padding ⌊kh/2⌋ rows and
/// ⌊kw/2⌋ columns), so it needs a block with padding == k/2. Equivalent kernel: BN-folded conv
/// zero-padded to k×k per axis (transI, transVI).
#[derive(Debug)]
pub struct ConvBnBranch {
    name: &'static str,
    spec: Box<dyn OpSpec>,
    geom: ConvGeom,
    conv: Conv2dLayer,
    bn: BatchNorm,
}

impl ConvBnBranch {
    /// Builds the branch with a `kh × kw` conv; last BN γ = `ctx.gamma0`.
    pub fn new(
        spec: &dyn OpSpec,
        geom: &ConvGeom,
        kh: usize,
        kw: usize,
        ctx: &mut InitCtx<'_>,
    ) -> Result<Self> {
        if !geom.is_same_padding()
            || kh > geom.k
            || kw > geom.k
            || kh.is_multiple_of(2)
            || kw.is_multiple_of(2)
        {
            return Err(crate::op::not_applicable(
                spec.name(),
                geom,
                "a centred conv branch needs padding == k/2 and odd kernel sides no larger than k",
            ));
        }
        let p = geom.k / 2;
        let conv = Conv2dLayer::new(
            ctx,
            [geom.out_ch, geom.in_per_group(), kh, kw],
            geom.stride,
            (p - (geom.k - kh) / 2, p - (geom.k - kw) / 2),
            geom.groups,
            false,
        )?;
        let bn = BatchNorm::new(geom.out_ch, ctx.dtype, &ctx.device)?;
        bn.reset(ctx.gamma0)?;
        Ok(Self {
            name: spec.name(),
            spec: spec.clone_spec(),
            geom: *geom,
            conv,
            bn,
        })
    }
}

impl RepOp for ConvBnBranch {
    fn name(&self) -> &'static str {
        self.name
    }

    fn geom(&self) -> &ConvGeom {
        &self.geom
    }

    fn spec(&self) -> Box<dyn OpSpec> {
        self.spec.clone_spec()
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        conv_bn(&self.conv, &self.bn, x, train, false)
    }

    fn conv_bn_parts(&self) -> Option<crate::op::BranchParts<'_>> {
        Some(crate::op::BranchParts::ConvBn {
            conv: &self.conv,
            bn: &self.bn,
        })
    }

    fn to_equivalent_kxk(&self) -> Result<Kernel> {
        self.conv
            .kernel()?
            .fold_bn(&self.bn.eval_params()?)?
            .pad_to(self.geom.k)
    }

    fn init(&mut self, ctx: &mut InitCtx<'_>) -> Result<()> {
        self.conv.reinit(ctx)?;
        self.bn.reset(ctx.gamma0)
    }

    fn bn_gamma(&self) -> Result<Tensor> {
        Ok(self.bn.gamma().as_detached_tensor())
    }

    fn batch_norms(&self) -> Vec<(&'static str, &BatchNorm)> {
        vec![("bn", &self.bn)]
    }

    fn visit_own_tensors(&self, prefix: &str, f: &mut TensorVisitor<'_>) {
        self.conv.visit(&join_path(prefix, "conv"), f);
        self.bn.visit(&join_path(prefix, "bn"), f);
    }

    fn macs(&self, h: usize, w: usize) -> Result<u64> {
        self.conv.macs(h, w)
    }
}
