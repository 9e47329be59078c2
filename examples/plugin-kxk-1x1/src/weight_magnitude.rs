//! `weight_magnitude` scorer: per step and conv, the mean |W| — a data-free magnitude criterion,
//! averaged over the interval. An example of a plugin scorer; it ignores the gradient.

use dyrep_api::plugin::{ConvObservation, MeanAccumulator, Result, Scorer, ScorerConfig};
use serde::{Deserialize, Serialize};

/// Mean absolute weight per conv.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightMagnitude {
    acc: MeanAccumulator,
}

impl WeightMagnitude {
    pub fn new(_cfg: &ScorerConfig) -> Self {
        Self::default()
    }
}

#[typetag::serde(name = "weight_magnitude")]
impl Scorer for WeightMagnitude {
    fn name(&self) -> &'static str {
        "weight_magnitude"
    }

    fn observe(&mut self, obs: &ConvObservation<'_>) -> Result<()> {
        let v = obs
            .weight
            .abs()?
            .mean_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        self.acc.add(obs.path, v);
        Ok(())
    }

    fn scores(&self) -> Vec<(String, f64)> {
        self.acc.means()
    }

    fn reset(&mut self) {
        self.acc.clear();
    }
}

dyrep_api::register_scorer!(
    name = "weight_magnitude",
    summary = "(example plugin) mean |W| per conv, mean over the interval",
    build = WeightMagnitude::new
);
