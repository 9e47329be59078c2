//! `convkxk`: the main branch of a block — the k×k conv (a `Slot`, so it can grow into a nested
//! block; with bias) then BN (γ = 1). DyRep's `dbb_kxk` (docs/REFERENCE.md "Branch types" branch 3,
//! "Nesting"). Grow (eq. 6) and cut keep a block's output by adding a kernel to this branch:
//! `add_equivalent` divides it by the BN scale and adds it to the conv slot, recursing through a
//! nested block's own main branch, so nested branches are never re-initialised (the reference's
//! outer cut does re-initialise them) and no 1/sqrt(1+ε) residue is left (docs/REFERENCE.md "The
//! grown block").

use candle_core::Tensor;
use dyrep_api::{
    BatchNorm, ConvGeom, Error, InitCtx, Kernel, OpSpec, RepOp, Result, Slot, TensorVisitor,
};
use serde::{Deserialize, Serialize};

/// Spec of the main k×k branch (no settings).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvKxkSpec {}

#[typetag::serde(name = "convkxk")]
impl OpSpec for ConvKxkSpec {
    fn name(&self) -> &'static str {
        "convkxk"
    }

    fn check(&self, geom: &ConvGeom) -> Result<()> {
        Ok(geom.validate()?)
    }

    fn build(&self, geom: &ConvGeom, ctx: &mut InitCtx<'_>) -> Result<Box<dyn RepOp>> {
        self.check(geom)?;
        let conv = Slot::conv(*geom, true, ctx)?;
        let bn = BatchNorm::new(geom.out_ch, ctx.dtype, &ctx.device)?;
        Ok(Box::new(ConvKxk {
            geom: *geom,
            conv,
            bn,
        }))
    }

    fn clone_spec(&self) -> Box<dyn OpSpec> {
        Box::new(self.clone())
    }
}

dyrep_api::register_op!(
    ConvKxkSpec,
    name = "convkxk",
    summary = "main branch: the kxk conv (with bias, may grow again) + BN",
    order = 3
);

/// Below this |BN scale| the main branch cannot take a kernel through its BN.
const MIN_SCALE: f64 = 1e-12;

#[derive(Debug)]
struct ConvKxk {
    geom: ConvGeom,
    conv: Slot,
    bn: BatchNorm,
}

impl RepOp for ConvKxk {
    fn name(&self) -> &'static str {
        "convkxk"
    }

    fn geom(&self) -> &ConvGeom {
        &self.geom
    }

    fn spec(&self) -> Box<dyn OpSpec> {
        Box::new(ConvKxkSpec {})
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.conv.forward_bn_t(x, &self.bn, train, false)
    }

    fn conv_bn_parts(&self) -> Option<dyrep_api::BranchParts<'_>> {
        match &self.conv {
            Slot::Conv(c) => Some(dyrep_api::BranchParts::ConvBn {
                conv: c.layer(),
                bn: &self.bn,
            }),
            Slot::Block(_) => None,
        }
    }

    fn to_equivalent_kxk(&self) -> Result<Kernel> {
        self.conv.equivalent()?.fold_bn(&self.bn.eval_params()?)
    }

    fn init(&mut self, ctx: &mut InitCtx<'_>) -> Result<()> {
        self.conv = Slot::conv(self.geom, true, ctx)?;
        self.bn.reset(1.0)
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

    fn child_slots(&self) -> Vec<(&'static str, &Slot)> {
        vec![("conv", &self.conv)]
    }

    fn child_slots_mut(&mut self) -> Vec<(&'static str, &mut Slot)> {
        vec![("conv", &mut self.conv)]
    }

    fn macs(&self, h: usize, w: usize) -> Result<u64> {
        self.conv.macs(h, w)
    }

    fn main_slot_mut(&mut self) -> Option<&mut Slot> {
        Some(&mut self.conv)
    }

    fn add_equivalent(&mut self, delta: &Kernel) -> Result<()> {
        let bn = self.bn.eval_params()?;
        let scale = bn.scale()?;
        let min_abs = scale
            .abs()?
            .min(0)?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        if min_abs.is_finite() && min_abs > MIN_SCALE {
            // BN(y + d/s) = BN(y) + d: push the kernel through the BN into the conv slot.
            return self.conv.add_kernel(&delta.scale_out(&scale.recip()?)?);
        }
        if !min_abs.is_finite() {
            return Err(Error::Unsupported {
                op: self.name().to_string(),
                what: "absorbing a kernel while its BN scale is not finite".into(),
            });
        }
        // A zero γ makes the BN non-invertible: collapse the slot to its equivalent with the
        // BN reset to (γ=1, β=0, μ=0, σ²=1), which is still exact in eval mode.
        let target = self.to_equivalent_kxk()?.add(delta)?;
        self.bn.reset(1.0)?;
        let s = self.bn.eval_params()?.scale()?;
        self.conv = Slot::from_kernel(self.geom, &target.scale_out(&s.recip()?)?)?;
        Ok(())
    }
}
