//! `conv_kxk_1x1`: k×k conv (C_in → D, the block's stride, padding and groups) → BN → 1×1 conv
//! (D → C_out, groups g) → BN. Linear in eval mode, so it fuses exactly: BN-fold the k×k, merge
//! it with the BN-folded 1×1 (`Kernel::then`, k×k-then-1×1 case), BN-fold the result. The 1×1
//! after the k×k needs no padding trick: it acts pixel by pixel on the padded conv's output.

use candle_core::Tensor;
// The plugin contract, and nothing of dyrep's internals.
use dyrep_api::plugin::{
    join_path, not_applicable, BatchNorm, Conv2dLayer, ConvGeom, InitCtx, Kernel, OpSpec, RepOp,
    Result, TensorVisitor,
};
use serde::{Deserialize, Serialize};

/// Spec of the k×k → 1×1 branch.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvKxk1x1Spec {
    /// Width between the two convs (default: the block's output channels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_channels: Option<usize>,
}

impl ConvKxk1x1Spec {
    fn internal(&self, geom: &ConvGeom) -> usize {
        self.internal_channels.unwrap_or(geom.out_ch)
    }
}

#[typetag::serde(name = "conv_kxk_1x1")]
impl OpSpec for ConvKxk1x1Spec {
    fn name(&self) -> &'static str {
        "conv_kxk_1x1"
    }

    fn check(&self, geom: &ConvGeom) -> Result<()> {
        geom.validate()?;
        let d = self.internal(geom);
        if d == 0 || !d.is_multiple_of(geom.groups) {
            return Err(not_applicable(
                self.name(),
                geom,
                "internal_channels must be a positive multiple of groups",
            ));
        }
        Ok(())
    }

    fn build(&self, geom: &ConvGeom, ctx: &mut InitCtx<'_>) -> Result<Box<dyn RepOp>> {
        self.check(geom)?;
        let d = self.internal(geom);
        let conv1 = Conv2dLayer::new(
            ctx,
            [d, geom.in_per_group(), geom.k, geom.k],
            geom.stride,
            (geom.padding, geom.padding),
            geom.groups,
            false,
        )?;
        let bn1 = BatchNorm::new(d, ctx.dtype, &ctx.device)?;
        let conv2 = Conv2dLayer::new(
            ctx,
            [geom.out_ch, d / geom.groups, 1, 1],
            1,
            (0, 0),
            geom.groups,
            false,
        )?;
        let bn2 = BatchNorm::new(geom.out_ch, ctx.dtype, &ctx.device)?;
        bn2.reset(ctx.gamma0)?;
        Ok(Box::new(ConvKxk1x1 {
            spec: self.clone(),
            geom: *geom,
            conv1,
            bn1,
            conv2,
            bn2,
        }))
    }

    fn clone_spec(&self) -> Box<dyn OpSpec> {
        Box::new(self.clone())
    }
}

dyrep_api::register_op!(
    ConvKxk1x1Spec,
    name = "conv_kxk_1x1",
    summary = "(example plugin) kxk conv + BN + 1x1 conv + BN, merged kxk-then-1x1"
);

#[derive(Debug)]
struct ConvKxk1x1 {
    spec: ConvKxk1x1Spec,
    geom: ConvGeom,
    conv1: Conv2dLayer,
    bn1: BatchNorm,
    conv2: Conv2dLayer,
    bn2: BatchNorm,
}

impl RepOp for ConvKxk1x1 {
    fn name(&self) -> &'static str {
        "conv_kxk_1x1"
    }

    fn geom(&self) -> &ConvGeom {
        &self.geom
    }

    fn spec(&self) -> Box<dyn OpSpec> {
        Box::new(self.spec.clone())
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.bn1.forward_t(&self.conv1.forward(x)?, train)?;
        self.bn2.forward_t(&self.conv2.forward(&y)?, train)
    }

    fn to_equivalent_kxk(&self) -> Result<Kernel> {
        let first = self.conv1.kernel()?.fold_bn(&self.bn1.eval_params()?)?;
        first
            .then(&self.conv2.kernel()?, self.geom.groups)?
            .fold_bn(&self.bn2.eval_params()?)
    }

    fn init(&mut self, ctx: &mut InitCtx<'_>) -> Result<()> {
        self.conv1.reinit(ctx)?;
        self.bn1.reset(1.0)?;
        self.conv2.reinit(ctx)?;
        self.bn2.reset(ctx.gamma0)
    }

    fn bn_gamma(&self) -> Result<Tensor> {
        Ok(self.bn2.gamma().as_detached_tensor())
    }

    fn batch_norms(&self) -> Vec<(&'static str, &BatchNorm)> {
        vec![("bn1", &self.bn1), ("bn2", &self.bn2)]
    }

    fn visit_own_tensors(&self, prefix: &str, f: &mut TensorVisitor<'_>) {
        self.conv1.visit(&join_path(prefix, "conv1"), f);
        self.bn1.visit(&join_path(prefix, "bn1"), f);
        self.conv2.visit(&join_path(prefix, "conv2"), f);
        self.bn2.visit(&join_path(prefix, "bn2"), f);
    }

    fn macs(&self, h: usize, w: usize) -> Result<u64> {
        let (ho, wo) = self.conv1.output_hw(h, w)?;
        Ok(self.conv1.macs(h, w)? + self.conv2.macs(ho, wo)?)
    }
}
