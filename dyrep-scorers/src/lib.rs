//! dyrep-scorers: the built-in saliency metrics, one file each, each registering itself with
//! `dyrep_api::register_scorer!` (paper §4.1 eq. 3–4; docs/REFERENCE.md "Scores" for what the
//! original code computes). Scores are per-step values averaged per conv over the grow
//! interval; `grasp` adds a Hessian-gradient probe, `vote` combines the others.

mod grad_norm;
mod grasp;
mod random;
mod snip;
mod synflow;
mod vote;

pub use grad_norm::GradNorm;
pub use grasp::Grasp;
pub use random::RandomScore;
pub use snip::Snip;
pub use synflow::SynFlow;
pub use vote::Vote;

use candle_core::Tensor;
use dyrep_api::{ConvObservation, Error, Result};

/// Forces this crate's registrations into the final binary (see `dyrep_ops::ensure_linked`).
#[inline(never)]
pub fn ensure_linked() {
    std::hint::black_box("synflow");
}

/// Checks an observation (grad and weight of one shape) and converts a per-step statistic to
/// f64, refusing non-finite values with a message that names the conv.
pub(crate) fn step_value(
    scorer: &str,
    obs: &ConvObservation<'_>,
    f: impl FnOnce(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
) -> Result<f64> {
    if obs.weight.dims() != obs.grad.dims() {
        return Err(Error::Scorer {
            scorer: scorer.to_string(),
            reason: format!(
                "`{}`: weight {:?} and gradient {:?} differ in shape",
                obs.path,
                obs.weight.dims(),
                obs.grad.dims()
            ),
        });
    }
    let v = f(obs.weight, obs.grad)?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
    if !v.is_finite() {
        return Err(Error::Scorer {
            scorer: scorer.to_string(),
            reason: format!(
                "`{}`: non-finite value {v} (did the loss diverge?)",
                obs.path
            ),
        });
    }
    Ok(v)
}

#[cfg(test)]
pub(crate) mod test_util {
    use candle_core::{Device, Tensor};

    pub fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v, (v.len(), 1, 1, 1), &Device::Cpu).unwrap()
    }
}
