//! `grad_norm` scorer: per step and conv, ‖G‖₂ of the flattened gradient (docs/REFERENCE.md
//! "Scores"). Score = the arithmetic mean of the per-step values since the last reset
//! (docs/REFERENCE.md "Scores").

use dyrep_api::{ConvObservation, MeanAccumulator, Result, Scorer, ScorerConfig};
use serde::{Deserialize, Serialize};

/// The `grad_norm` saliency metric.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GradNorm {
    acc: MeanAccumulator,
}

impl GradNorm {
    pub fn new(_cfg: &ScorerConfig) -> Self {
        Self::default()
    }
}

#[typetag::serde(name = "grad_norm")]
impl Scorer for GradNorm {
    fn name(&self) -> &'static str {
        "grad_norm"
    }

    fn observe(&mut self, obs: &ConvObservation<'_>) -> Result<()> {
        let v = crate::step_value(self.name(), obs, |_w, g| g.sqr()?.sum_all()?.sqrt())?;
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
    name = "grad_norm",
    summary = "L2 norm of the weight gradient, mean over the interval",
    build = GradNorm::new,
    order = 2
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::t;

    #[test]
    fn l2_norm_of_the_gradient() {
        let mut s = GradNorm::new(&ScorerConfig::default());
        let (w, g) = (t(&[1.0, -2.0]), t(&[3.0, 4.0]));
        s.observe(&ConvObservation {
            path: "a",
            weight: &w,
            grad: &g,
        })
        .unwrap();
        assert_eq!(s.scores(), vec![("a".into(), 5.0)]);
    }
}
