//! `conv1x1`: a 1×1 conv (stride s, groups g, no bias) then BN — DBB's `dbb_1x1` (docs/REFERENCE.md
//! "Branch types" branch 0). Equivalent kernel: BN-folded 1×1 zero-padded to k×k (transI, transVI).
//! Needs padding == k/2 so the 1×1 samples the centre of each k×k window.

use dyrep_api::branch::ConvBnBranch;
use dyrep_api::{not_applicable, ConvGeom, InitCtx, OpSpec, RepOp, Result};
use serde::{Deserialize, Serialize};

/// Spec of the 1×1 branch (no settings).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv1x1Spec {}

#[typetag::serde(name = "conv1x1")]
impl OpSpec for Conv1x1Spec {
    fn name(&self) -> &'static str {
        "conv1x1"
    }

    fn check(&self, geom: &ConvGeom) -> Result<()> {
        geom.validate()?;
        if !geom.is_same_padding() {
            return Err(not_applicable(self.name(), geom, "needs padding == k/2"));
        }
        Ok(())
    }

    fn build(&self, geom: &ConvGeom, ctx: &mut InitCtx<'_>) -> Result<Box<dyn RepOp>> {
        self.check(geom)?;
        Ok(Box::new(ConvBnBranch::new(self, geom, 1, 1, ctx)?))
    }

    fn clone_spec(&self) -> Box<dyn OpSpec> {
        Box::new(self.clone())
    }
}

dyrep_api::register_op!(
    Conv1x1Spec,
    name = "conv1x1",
    summary = "1x1 conv (same stride and groups) + BN, zero-padded to kxk",
    order = 0
);

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn refuses_off_centre_padding() {
        let g = ConvGeom::new(4, 4, 3, 1, 0, 1).unwrap();
        let e = Conv1x1Spec {}.check(&g).unwrap_err().to_string();
        assert!(
            e.contains("conv1x1") && e.contains("padding == k/2") && e.contains("padding=0"),
            "{e}"
        );
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert!(Conv1x1Spec {}
            .build(&g, &mut InitCtx::new(&mut rng, &Device::Cpu))
            .is_err());
    }

    #[test]
    fn last_bn_gamma_is_gamma0() {
        let g = ConvGeom::same(4, 6, 3, 2, 2).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let op = Conv1x1Spec {}
            .build(&g, &mut InitCtx::new(&mut rng, &Device::Cpu))
            .unwrap();
        assert_eq!(
            op.bn_gamma().unwrap().to_vec1::<f32>().unwrap(),
            vec![0.01f32; 6]
        );
    }
}
