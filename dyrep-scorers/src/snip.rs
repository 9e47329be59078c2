//! `snip` scorer: per step and conv, Σ_i |G_i·W_i| (SNIP's connection sensitivity,
//! docs/REFERENCE.md "Scores"). Score = the arithmetic mean of the per-step values since the last
//! reset (docs/REFERENCE.md "Scores").

use dyrep_api::{ConvObservation, MeanAccumulator, Result, Scorer, ScorerConfig};
use serde::{Deserialize, Serialize};

/// The `snip` saliency metric.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snip {
    acc: MeanAccumulator,
}

impl Snip {
    pub fn new(_cfg: &ScorerConfig) -> Self {
        Self::default()
    }
}

#[typetag::serde(name = "snip")]
impl Scorer for Snip {
    fn name(&self) -> &'static str {
        "snip"
    }

    fn observe(&mut self, obs: &ConvObservation<'_>) -> Result<()> {
        let v = crate::step_value(self.name(), obs, |w, g| (w * g)?.abs()?.sum_all())?;
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
    name = "snip",
    summary = "sum of |grad*weight| (SNIP connection sensitivity), mean over the interval",
    build = Snip::new,
    order = 1
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::t;

    #[test]
    fn absolute_sum() {
        let mut s = Snip::new(&ScorerConfig::default());
        let (w, g) = (t(&[1.0, -2.0]), t(&[3.0, 1.0]));
        s.observe(&ConvObservation {
            path: "a",
            weight: &w,
            grad: &g,
        })
        .unwrap();
        assert_eq!(s.scores(), vec![("a".into(), 5.0)]);
    }
}
