//! How a grow keeps the network's output without slowing the grown conv (paper §3, eq. 6;
//! docs/REFERENCE.md "The grown block"): the `affine` form, the diagnostic every grow and cut
//! records — how the main conv's scale, and so its effective learning rate, changed — and the
//! per-epoch angle each conv turned (`movement.csv`), which shows whether grown convs learn.
//!
//! A conv followed by a batch norm that normalises with batch statistics is scale-invariant:
//! the loss does not change when an output channel's weights are multiplied by a > 0, and the
//! gradient shrinks by 1/a, so that channel's relative step shrinks by 1/a². A grow or cut that
//! rescales the main conv's rows by r therefore multiplies their effective step by 1/r².
//!
//! The `affine` form keeps W's scale and stays exact: after calibration the main conv becomes
//! W − ΣK (as in the reference) and the main branch's BN keeps its calibrated statistics
//! (μ, σ²) with γ = √(σ² + ε) and β = μ, so in eval mode it is the identity and in train mode
//! it gives back the conv's output at its own scale. Each new branch's last BN γ and β are
//! multiplied by the same √(σ² + ε), per channel, so the branches start at γ0 relative to the
//! main branch, as in the reference, and Dep's importance (mean|γ_branch| / mean|γ_main|)
//! compares branches as the reference's does.

use candle_core::{DType, Tensor};
use dyrep_api::{Kernel, RepBlock, Slot};
use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError};

/// How a grow or cut changed the main conv's output-channel norms (new / old), and the factor
/// that puts on its effective step (the median of (old / new)²).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MainScale {
    pub norm_ratio_median: f64,
    pub norm_ratio_min: f64,
    pub norm_ratio_max: f64,
    pub step_factor: f64,
}

impl MainScale {
    /// From the per-output-channel norms before and after.
    pub fn between(before: &[f64], after: &[f64]) -> Option<MainScale> {
        if before.len() != after.len() || before.is_empty() {
            return None;
        }
        let mut ratios: Vec<f64> = before
            .iter()
            .zip(after)
            .filter(|(b, _)| **b > 0.0)
            .map(|(b, a)| a / b)
            .collect();
        if ratios.is_empty() {
            return None;
        }
        ratios.sort_by(f64::total_cmp);
        let mut steps: Vec<f64> = ratios.iter().map(|r| 1.0 / (r * r)).collect();
        steps.sort_by(f64::total_cmp);
        Some(MainScale {
            norm_ratio_median: median(&ratios),
            norm_ratio_min: ratios[0],
            norm_ratio_max: ratios[ratios.len() - 1],
            step_factor: median(&steps),
        })
    }
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    match n % 2 {
        1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The per-output-channel L2 norms of the conv a grow or cut acts on: the slot itself while it
/// is a plain conv, its block's main conv once it has grown.
pub fn main_conv_norms(slot: &Slot) -> Result<Vec<f64>> {
    row_norms(&main_conv_weight(slot)?)
}

/// The weight of the conv a grow or cut acts on (the slot's own, or its block's main conv's
/// equivalent kernel), detached.
pub fn main_conv_weight(slot: &Slot) -> Result<Tensor> {
    let kernel = match slot.as_block() {
        Some(block) => {
            let children = block.main().child_slots();
            let (_, conv) = children.first().ok_or_else(|| {
                RuntimeError::Model("the block's main branch has no conv slot".into())
            })?;
            conv.equivalent()?
        }
        None => slot.equivalent()?,
    };
    Ok(kernel.weight.detach())
}

/// The mean over output channels of the angle (degrees) each channel's weights turned from `a`
/// to `b`: how far a conv moved, whatever the scale of its rows (a grow's rescale moves none).
pub fn mean_angle_deg(a: &Tensor, b: &Tensor) -> Result<f64> {
    let out = a.dim(0)?;
    let a = a.to_dtype(DType::F64)?.reshape((out, ()))?;
    let b = b.to_dtype(DType::F64)?.reshape((out, ()))?;
    let dot = (&a * &b)?.sum(1)?.to_vec1::<f64>()?;
    let (na, nb) = (row_norms(&a)?, row_norms(&b)?);
    let mut sum = 0.0;
    for c in 0..out {
        let cos = match na[c] * nb[c] {
            d if d > 0.0 => (dot[c] / d).clamp(-1.0, 1.0),
            _ => 1.0,
        };
        sum += cos.acos().to_degrees();
    }
    Ok(sum / out.max(1) as f64)
}

fn row_norms(w: &Tensor) -> Result<Vec<f64>> {
    let out = w.dim(0)?;
    Ok(w.to_dtype(DType::F64)?
        .reshape((out, ()))?
        .sqr()?
        .sum(1)?
        .sqrt()?
        .to_vec1::<f64>()?)
}

/// The `affine` form on a freshly grown, calibrated block (module docs): the block's eval-mode
/// equivalent becomes `target` and the main conv keeps the scale of `target`'s weights.
pub fn affine_preserve(block: &mut RepBlock, target: &Kernel) -> Result<()> {
    let sigma = {
        let main_bns = block.main().batch_norms();
        let (_, bn) = main_bns
            .first()
            .ok_or_else(|| RuntimeError::Model("the block's main branch has no BN".into()))?;
        let p = bn.eval_params()?;
        (p.var + p.eps)?.sqrt()?
    };
    for b in block.branches() {
        let last = last_bn(&**b)?;
        let p = last.eval_params()?;
        last.set_affine(&(p.gamma * &sigma)?, &(p.beta * &sigma)?)?;
    }
    let mut residual = target.clone();
    for b in block.branches() {
        residual = residual.sub(&b.to_equivalent_kxk()?)?;
    }
    let geom = *block.geom();
    {
        let main = block.main_mut();
        let bns = main.batch_norms();
        let (_, bn) = bns
            .first()
            .ok_or_else(|| RuntimeError::Model("the block's main branch has no BN".into()))?;
        let mean = bn.eval_params()?.mean;
        bn.set_affine(&sigma, &mean)?;
    }
    let slot = block
        .main_mut()
        .main_slot_mut()
        .ok_or_else(|| RuntimeError::Model("the block's main branch has no conv slot".into()))?;
    *slot = Slot::from_kernel(geom, &residual)?;
    // The BN's eval scale is 1 up to rounding; push what rounding left through it.
    block.restore_equivalent(target)?;
    Ok(())
}

/// The branch's last batch norm: the one whose γ is the branch's `bn_gamma` (the last such
/// in the op's list when several hold the same values).
fn last_bn(op: &dyn dyrep_api::RepOp) -> Result<&dyrep_api::BatchNorm> {
    let gamma = op.bn_gamma()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let mut found = None;
    for (_, bn) in op.batch_norms() {
        let g = bn
            .gamma()
            .as_tensor()
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        if g == gamma {
            found = Some(bn);
        }
    }
    found.ok_or_else(|| {
        RuntimeError::Model(format!(
            "op `{}`: none of its batch norms holds the γ it reports (bn_gamma)",
            op.name()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_angle_ignores_row_scales_and_measures_turns() {
        let dev = candle_core::Device::Cpu;
        let a = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &dev).unwrap();
        let scaled = Tensor::new(&[[5f32, 0.0], [0.0, 0.25]], &dev).unwrap();
        assert!(mean_angle_deg(&a, &scaled).unwrap().abs() < 1e-9);
        // One row turned by 90°, the other not at all: a mean of 45°.
        let turned = Tensor::new(&[[0f32, 1.0], [0.0, 1.0]], &dev).unwrap();
        assert!((mean_angle_deg(&a, &turned).unwrap() - 45.0).abs() < 1e-9);
    }

    #[test]
    fn a_uniform_rescale_of_every_row_gives_its_inverse_square_as_step_factor() {
        let before = [1.0, 2.0, 4.0];
        let s = MainScale::between(&before, &[2.0, 4.0, 8.0]).unwrap();
        assert_eq!(s.norm_ratio_median, 2.0);
        assert_eq!(s.step_factor, 0.25);
        let mixed = MainScale::between(&before, &[0.5, 2.0, 16.0]).unwrap();
        assert_eq!(
            (
                mixed.norm_ratio_min,
                mixed.norm_ratio_median,
                mixed.norm_ratio_max
            ),
            (0.5, 1.0, 4.0)
        );
        assert_eq!(mixed.step_factor, 1.0);
        assert!(MainScale::between(&before, &[1.0]).is_none());
    }
}
