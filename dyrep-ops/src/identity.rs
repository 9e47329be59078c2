//! `identity`: BN applied to the block input — RepVGG's identity branch, DyRep's `dbb_id`
//! (docs/REFERENCE.md "Branch types" branch 6). Equivalent kernel: the grouped identity kernel
//! `K[i, i mod (C/g), k/2, k/2] = 1` for any odd k, BN-folded (transIX, transI). Needs
//! in_ch == out_ch, stride 1 and padding == k/2.

use candle_core::Tensor;
use dyrep_api::{
    not_applicable, BatchNorm, ConvGeom, InitCtx, Kernel, OpSpec, RepOp, Result, TensorVisitor,
};
use serde::{Deserialize, Serialize};

/// Spec of the identity branch (no settings).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySpec {}

#[typetag::serde(name = "identity")]
impl OpSpec for IdentitySpec {
    fn name(&self) -> &'static str {
        "identity"
    }

    fn check(&self, geom: &ConvGeom) -> Result<()> {
        geom.validate()?;
        if geom.in_ch != geom.out_ch {
            return Err(not_applicable(self.name(), geom, "needs in_ch == out_ch"));
        }
        if geom.stride != 1 {
            return Err(not_applicable(self.name(), geom, "needs stride 1"));
        }
        if !geom.is_same_padding() {
            return Err(not_applicable(self.name(), geom, "needs padding == k/2"));
        }
        Ok(())
    }

    fn build(&self, geom: &ConvGeom, ctx: &mut InitCtx<'_>) -> Result<Box<dyn RepOp>> {
        self.check(geom)?;
        let bn = BatchNorm::new(geom.out_ch, ctx.dtype, &ctx.device)?;
        bn.reset(ctx.gamma0)?;
        Ok(Box::new(Identity { geom: *geom, bn }))
    }

    fn clone_spec(&self) -> Box<dyn OpSpec> {
        Box::new(self.clone())
    }
}

dyrep_api::register_op!(
    IdentitySpec,
    name = "identity",
    summary = "BN of the input (needs in == out, stride 1), as a centred identity kernel",
    order = 6
);

#[derive(Debug)]
struct Identity {
    geom: ConvGeom,
    bn: BatchNorm,
}

impl RepOp for Identity {
    fn name(&self) -> &'static str {
        "identity"
    }

    fn geom(&self) -> &ConvGeom {
        &self.geom
    }

    fn spec(&self) -> Box<dyn OpSpec> {
        Box::new(IdentitySpec {})
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.bn.forward_t(x, train)
    }

    fn conv_bn_parts(&self) -> Option<dyrep_api::BranchParts<'_>> {
        Some(dyrep_api::BranchParts::Bn { bn: &self.bn })
    }

    fn to_equivalent_kxk(&self) -> Result<Kernel> {
        let g = self.bn.gamma();
        Kernel::identity(
            self.geom.out_ch,
            self.geom.k,
            self.geom.groups,
            g.dtype(),
            g.device(),
        )?
        .fold_bn(&self.bn.eval_params()?)
    }

    fn init(&mut self, ctx: &mut InitCtx<'_>) -> Result<()> {
        self.bn.reset(ctx.gamma0)
    }

    fn bn_gamma(&self) -> Result<Tensor> {
        Ok(self.bn.gamma().as_detached_tensor())
    }

    fn batch_norms(&self) -> Vec<(&'static str, &BatchNorm)> {
        vec![("bn", &self.bn)]
    }

    fn visit_own_tensors(&self, prefix: &str, f: &mut TensorVisitor<'_>) {
        self.bn.visit(&dyrep_api::join_path(prefix, "bn"), f);
    }

    fn macs(&self, _h: usize, _w: usize) -> Result<u64> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_stride_two_and_channel_change() {
        let e = IdentitySpec {}
            .check(&ConvGeom::same(4, 4, 3, 2, 1).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("identity") && e.contains("stride 1") && e.contains("stride=2"),
            "{e}"
        );
        let e = IdentitySpec {}
            .check(&ConvGeom::same(4, 8, 3, 1, 1).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("in_ch == out_ch"), "{e}");
        assert!(IdentitySpec {}
            .check(&ConvGeom::new(4, 4, 3, 1, 0, 1).unwrap())
            .is_err());
        assert!(IdentitySpec {}
            .check(&ConvGeom::same(4, 4, 5, 1, 4).unwrap())
            .is_ok());
    }
}
