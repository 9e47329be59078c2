//! `conv1x1_kxk`: 1×1 conv (C_in → D, stride 1, groups g) → BN-then-pad (pad p with the BN's eval
//! output for zero input) → k×k conv (D → C_out, stride s, padding 0, groups g; a `Slot` that can
//! grow into a nested block) → BN. DBB's `dbb_1x1_kxk` (docs/REFERENCE.md "Branch types" branch 1,
//! "Nesting"). Equivalent kernel: transIII of the BN-folded 1×1 and the second conv's (recursive)
//! equivalent, then BN fold; exact at the borders thanks to BN-then-pad (DBB#9). Applies to any
//! padding (it is in the reduced set used when padding != k/2). D defaults to C_in.

use candle_core::Tensor;
use dyrep_api::layers::{BnAndPad, Conv2dLayer};
use dyrep_api::{
    join_path, not_applicable, BatchNorm, ConvGeom, InitCtx, Kernel, OpSpec, RepOp, Result, Slot,
    TensorVisitor,
};
use serde::{Deserialize, Serialize};

/// Spec of the 1×1 → k×k branch.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv1x1KxkSpec {
    /// Width D between the two convs (default: the block's input channels, as the reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_channels: Option<usize>,
}

impl Conv1x1KxkSpec {
    fn internal(&self, geom: &ConvGeom) -> usize {
        self.internal_channels.unwrap_or(geom.in_ch)
    }

    fn second_geom(&self, geom: &ConvGeom) -> Result<ConvGeom> {
        Ok(ConvGeom::new(
            self.internal(geom),
            geom.out_ch,
            geom.k,
            geom.stride,
            0,
            geom.groups,
        )?)
    }
}

#[typetag::serde(name = "conv1x1_kxk")]
impl OpSpec for Conv1x1KxkSpec {
    fn name(&self) -> &'static str {
        "conv1x1_kxk"
    }

    fn check(&self, geom: &ConvGeom) -> Result<()> {
        geom.validate()?;
        let d = self.internal(geom);
        if d == 0 || !d.is_multiple_of(geom.groups) {
            return Err(not_applicable(
                self.name(),
                geom,
                &format!("internal_channels ({d}) must be a positive multiple of groups"),
            ));
        }
        Ok(())
    }

    fn build(&self, geom: &ConvGeom, ctx: &mut InitCtx<'_>) -> Result<Box<dyn RepOp>> {
        self.check(geom)?;
        let d = self.internal(geom);
        let conv1 = Conv2dLayer::new(
            ctx,
            [d, geom.in_per_group(), 1, 1],
            1,
            (0, 0),
            geom.groups,
            false,
        )?;
        let bn1 = BnAndPad::new(BatchNorm::new(d, ctx.dtype, &ctx.device)?, geom.padding);
        let conv2 = Slot::conv(self.second_geom(geom)?, false, ctx)?;
        let bn2 = BatchNorm::new(geom.out_ch, ctx.dtype, &ctx.device)?;
        bn2.reset(ctx.gamma0)?;
        Ok(Box::new(Conv1x1Kxk {
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
    Conv1x1KxkSpec,
    name = "conv1x1_kxk",
    summary = "1x1 conv + BN-then-pad + kxk conv (may grow again) + BN, merged by transIII",
    order = 1
);

#[derive(Debug)]
struct Conv1x1Kxk {
    spec: Conv1x1KxkSpec,
    geom: ConvGeom,
    conv1: Conv2dLayer,
    bn1: BnAndPad,
    conv2: Slot,
    bn2: BatchNorm,
}

impl RepOp for Conv1x1Kxk {
    fn name(&self) -> &'static str {
        "conv1x1_kxk"
    }

    fn geom(&self) -> &ConvGeom {
        &self.geom
    }

    fn spec(&self) -> Box<dyn OpSpec> {
        Box::new(self.spec.clone())
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.bn1.forward_after_conv(&self.conv1, x, train)?;
        self.conv2.forward_bn_t(&y, &self.bn2, train, false)
    }

    fn conv_bn_parts(&self) -> Option<dyrep_api::BranchParts<'_>> {
        // Only while the second conv is plain (a grown one runs as its own block).
        let Slot::Conv(c) = &self.conv2 else {
            return None;
        };
        let second = c.layer();
        if second.bias().is_some() || second.padding() != (0, 0) {
            return None;
        }
        Some(dyrep_api::BranchParts::TwoStage {
            conv: &self.conv1,
            bn1: self.bn1.bn(),
            pad: self.bn1.pad(),
            second: dyrep_api::SecondStage::Conv(second),
            bn2: &self.bn2,
        })
    }

    fn to_equivalent_kxk(&self) -> Result<Kernel> {
        let first = self
            .conv1
            .kernel()?
            .fold_bn(&self.bn1.bn().eval_params()?)?;
        first
            .then(&self.conv2.equivalent()?, self.geom.groups)?
            .fold_bn(&self.bn2.eval_params()?)
    }

    fn init(&mut self, ctx: &mut InitCtx<'_>) -> Result<()> {
        self.conv1.reinit(ctx)?;
        self.bn1.bn().reset(1.0)?;
        self.conv2 = Slot::conv(self.spec.second_geom(&self.geom)?, false, ctx)?;
        self.bn2.reset(ctx.gamma0)
    }

    fn bn_gamma(&self) -> Result<Tensor> {
        Ok(self.bn2.gamma().as_detached_tensor())
    }

    fn batch_norms(&self) -> Vec<(&'static str, &BatchNorm)> {
        vec![("bn1", self.bn1.bn()), ("bn2", &self.bn2)]
    }

    fn visit_own_tensors(&self, prefix: &str, f: &mut TensorVisitor<'_>) {
        self.conv1.visit(&join_path(prefix, "conv1"), f);
        self.bn1.bn().visit(&join_path(prefix, "bn1"), f);
        self.bn2.visit(&join_path(prefix, "bn2"), f);
    }

    fn child_slots(&self) -> Vec<(&'static str, &Slot)> {
        vec![("conv2", &self.conv2)]
    }

    fn child_slots_mut(&mut self) -> Vec<(&'static str, &mut Slot)> {
        vec![("conv2", &mut self.conv2)]
    }

    fn macs(&self, h: usize, w: usize) -> Result<u64> {
        let p = self.geom.padding;
        Ok(self.conv1.macs(h, w)? + self.conv2.macs(h + 2 * p, w + 2 * p)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_channels_must_fit_groups() {
        let g = ConvGeom::same(4, 4, 3, 1, 2).unwrap();
        let spec = Conv1x1KxkSpec {
            internal_channels: Some(3),
        };
        let e = spec.check(&g).unwrap_err().to_string();
        assert!(e.contains("internal_channels (3)"), "{e}");
        assert!(Conv1x1KxkSpec::default()
            .check(&ConvGeom::new(4, 4, 3, 2, 0, 2).unwrap())
            .is_ok());
    }
}
