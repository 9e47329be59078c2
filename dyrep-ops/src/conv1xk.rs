//! `conv1xk`: a 1×k conv (stride s, groups g, no bias) then BN — ACNet-style horizontal kernel;
//! DyRep's `dbb_1xk` (docs/REFERENCE.md "Branch types" branch 4). Equivalent kernel: BN-folded 1×k
//! kernel zero-padded per axis to k×k (transI, transVI; rows are H, columns W — DBB's own helper
//! swaps them). Needs padding == k/2.

use dyrep_api::branch::ConvBnBranch;
use dyrep_api::{not_applicable, ConvGeom, InitCtx, OpSpec, RepOp, Result};
use serde::{Deserialize, Serialize};

/// Spec of the 1×k branch (no settings).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv1xkSpec {}

#[typetag::serde(name = "conv1xk")]
impl OpSpec for Conv1xkSpec {
    fn name(&self) -> &'static str {
        "conv1xk"
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
        Ok(Box::new(ConvBnBranch::new(self, geom, 1, geom.k, ctx)?))
    }

    fn clone_spec(&self) -> Box<dyn OpSpec> {
        Box::new(self.clone())
    }
}

dyrep_api::register_op!(
    Conv1xkSpec,
    name = "conv1xk",
    summary = "1xk conv (padding (0,k/2)) + BN, zero-padded to kxk",
    order = 4
);
