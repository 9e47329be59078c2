//! `conv1x1_avg`: 1×1 conv (C_in → C_out, stride 1, groups g) → BN-then-pad → k×k average pool
//! (stride s, padding 0) → BN; for a depthwise block (groups == C_in == C_out) the pool alone
//! (padding p, zeros counted) → BN. DBB's `dbb_1x1_avg` (docs/REFERENCE.md "Branch types" branch
//! 2). The reference tests `groups >= out_channels` for the pool-only form, which breaks when C_in
//! != C_out (DBB#38); here the pool-only form needs a true depthwise geometry. Equivalent kernel:
//! the BN-folded 1×1 spread over k×k and divided by k² (transIII with the pool's grouped kernel,
//! transV, as a broadcast: `Kernel::avg_pooled`), or the pool's kernel alone; then BN fold.
//! Applies to any padding.

use candle_core::Tensor;
use dyrep_api::layers::{avg_pool2d, BnAndPad, Conv2dLayer};
use dyrep_api::{
    join_path, BatchNorm, ConvGeom, InitCtx, Kernel, OpSpec, RepOp, Result, TensorVisitor,
};
use serde::{Deserialize, Serialize};

/// Spec of the 1×1 → average-pool branch (no settings).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv1x1AvgSpec {}

#[typetag::serde(name = "conv1x1_avg")]
impl OpSpec for Conv1x1AvgSpec {
    fn name(&self) -> &'static str {
        "conv1x1_avg"
    }

    fn check(&self, geom: &ConvGeom) -> Result<()> {
        Ok(geom.validate()?)
    }

    fn build(&self, geom: &ConvGeom, ctx: &mut InitCtx<'_>) -> Result<Box<dyn RepOp>> {
        self.check(geom)?;
        let pre = if geom.is_depthwise() {
            None
        } else {
            let conv = Conv2dLayer::new(
                ctx,
                [geom.out_ch, geom.in_per_group(), 1, 1],
                1,
                (0, 0),
                geom.groups,
                false,
            )?;
            let bn = BnAndPad::new(
                BatchNorm::new(geom.out_ch, ctx.dtype, &ctx.device)?,
                geom.padding,
            );
            Some((conv, bn))
        };
        let avgbn = BatchNorm::new(geom.out_ch, ctx.dtype, &ctx.device)?;
        avgbn.reset(ctx.gamma0)?;
        Ok(Box::new(Conv1x1Avg {
            geom: *geom,
            pre,
            avgbn,
        }))
    }

    fn clone_spec(&self) -> Box<dyn OpSpec> {
        Box::new(self.clone())
    }
}

dyrep_api::register_op!(
    Conv1x1AvgSpec,
    name = "conv1x1_avg",
    summary = "1x1 conv + BN-then-pad + kxk average pool + BN (pool only when depthwise)",
    order = 2
);

#[derive(Debug)]
struct Conv1x1Avg {
    geom: ConvGeom,
    /// The 1×1 conv and its BN-then-pad; `None` in the depthwise pool-only form.
    pre: Option<(Conv2dLayer, BnAndPad)>,
    avgbn: BatchNorm,
}

impl RepOp for Conv1x1Avg {
    fn name(&self) -> &'static str {
        "conv1x1_avg"
    }

    fn geom(&self) -> &ConvGeom {
        &self.geom
    }

    fn spec(&self) -> Box<dyn OpSpec> {
        Box::new(Conv1x1AvgSpec {})
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let g = &self.geom;
        let pooled = match &self.pre {
            Some((conv, bn)) => {
                avg_pool2d(&bn.forward_after_conv(conv, x, train)?, g.k, g.stride, 0)?
            }
            None => avg_pool2d(x, g.k, g.stride, g.padding)?,
        };
        self.avgbn.forward_t(&pooled, train)
    }

    fn conv_bn_parts(&self) -> Option<dyrep_api::BranchParts<'_>> {
        let (conv, bn) = self.pre.as_ref()?;
        Some(dyrep_api::BranchParts::TwoStage {
            conv,
            bn1: bn.bn(),
            pad: bn.pad(),
            second: dyrep_api::SecondStage::AvgPool {
                k: self.geom.k,
                stride: self.geom.stride,
            },
            bn2: &self.avgbn,
        })
    }

    fn to_equivalent_kxk(&self) -> Result<Kernel> {
        let g = &self.geom;
        let k = match &self.pre {
            Some((conv, bn)) => conv
                .kernel()?
                .fold_bn(&bn.bn().eval_params()?)?
                .avg_pooled(g.k)?,
            None => {
                let gamma = self.avgbn.gamma();
                Kernel::avg_pool(g.out_ch, g.k, g.groups, gamma.dtype(), gamma.device())?
            }
        };
        k.fold_bn(&self.avgbn.eval_params()?)
    }

    fn init(&mut self, ctx: &mut InitCtx<'_>) -> Result<()> {
        if let Some((conv, bn)) = &self.pre {
            conv.reinit(ctx)?;
            bn.bn().reset(1.0)?;
        }
        self.avgbn.reset(ctx.gamma0)
    }

    fn bn_gamma(&self) -> Result<Tensor> {
        Ok(self.avgbn.gamma().as_detached_tensor())
    }

    fn batch_norms(&self) -> Vec<(&'static str, &BatchNorm)> {
        let mut v = Vec::new();
        if let Some((_, bn)) = &self.pre {
            v.push(("bn", bn.bn()));
        }
        v.push(("avgbn", &self.avgbn));
        v
    }

    fn visit_own_tensors(&self, prefix: &str, f: &mut TensorVisitor<'_>) {
        if let Some((conv, bn)) = &self.pre {
            conv.visit(&join_path(prefix, "conv"), f);
            bn.bn().visit(&join_path(prefix, "bn"), f);
        }
        self.avgbn.visit(&join_path(prefix, "avgbn"), f);
    }

    fn macs(&self, h: usize, w: usize) -> Result<u64> {
        match &self.pre {
            Some((conv, _)) => conv.macs(h, w),
            None => Ok(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn pool_only_form_needs_true_depthwise() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut ctx = InitCtx::new(&mut rng, &Device::Cpu);
        let dw = Conv1x1AvgSpec {}
            .build(&ConvGeom::same(8, 8, 3, 1, 8).unwrap(), &mut ctx)
            .unwrap();
        assert_eq!(dw.batch_norms().len(), 1);
        // groups == out_ch but in_ch != out_ch: the reference's test would pick the pool-only
        // form and produce the wrong channel count; here the 1x1 form is used.
        let g = ConvGeom::same(16, 8, 3, 1, 8).unwrap();
        let op = Conv1x1AvgSpec {}.build(&g, &mut ctx).unwrap();
        assert_eq!(op.batch_norms().len(), 2);
        let x = candle_core::Tensor::ones((1, 16, 5, 5), candle_core::DType::F32, &Device::Cpu)
            .unwrap();
        assert_eq!(op.forward_t(&x, false).unwrap().dims(), &[1, 8, 5, 5]);
    }
}
