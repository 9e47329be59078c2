//! `convkx1`: a k×1 conv (stride s, groups g, no bias) then BN — ACNet-style vertical kernel;
//! DyRep's `dbb_kx1` (docs/REFERENCE.md "Branch types" branch 5). Equivalent kernel: BN-folded k×1
//! kernel zero-padded per axis to k×k (transI, transVI; rows are H, columns W — DBB's own helper
//! swaps them). Needs padding == k/2.

use dyrep_api::branch::ConvBnBranch;
use dyrep_api::{not_applicable, ConvGeom, InitCtx, OpSpec, RepOp, Result};
use serde::{Deserialize, Serialize};

/// Spec of the k×1 branch (no settings).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvKx1Spec {}

#[typetag::serde(name = "convkx1")]
impl OpSpec for ConvKx1Spec {
    fn name(&self) -> &'static str {
        "convkx1"
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
        Ok(Box::new(ConvBnBranch::new(self, geom, geom.k, 1, ctx)?))
    }

    fn clone_spec(&self) -> Box<dyn OpSpec> {
        Box::new(self.clone())
    }
}

dyrep_api::register_op!(
    ConvKx1Spec,
    name = "convkx1",
    summary = "kx1 conv (padding (k/2,0)) + BN, zero-padded to kxk",
    order = 5
);
