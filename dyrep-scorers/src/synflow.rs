//! `synflow` scorer: per step and conv, Σ_i G_i·W_i (signed; real mini-batches and the real
//! training loss — not the data-free SynFlow of Tanaka et al., docs/REFERENCE.md "Scores"). This is
//! the reference's default and only metric used (docs/REFERENCE.md "Scores"), paper eq. 3–4. Score
//! = the arithmetic mean of the per-step values since the last reset (docs/REFERENCE.md "Scores").

use dyrep_api::{ConvObservation, MeanAccumulator, Result, Scorer, ScorerConfig};
use serde::{Deserialize, Serialize};

/// The `synflow` saliency metric.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynFlow {
    acc: MeanAccumulator,
}

impl SynFlow {
    pub fn new(_cfg: &ScorerConfig) -> Self {
        Self::default()
    }
}

#[typetag::serde(name = "synflow")]
impl Scorer for SynFlow {
    fn name(&self) -> &'static str {
        "synflow"
    }

    fn observe(&mut self, obs: &ConvObservation<'_>) -> Result<()> {
        let v = crate::step_value(self.name(), obs, |w, g| (w * g)?.sum_all())?;
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
    name = "synflow",
    summary = "signed sum of grad*weight of the training loss (the reference's `synflow`), mean over the interval",
    build = SynFlow::new,
    order = 0
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::t;

    #[test]
    fn signed_sum_averaged_per_conv() {
        let mut s = SynFlow::new(&ScorerConfig::default());
        let (w, g1, g2) = (t(&[1.0, -2.0]), t(&[3.0, 1.0]), t(&[-1.0, 0.5]));
        s.observe(&ConvObservation {
            path: "a",
            weight: &w,
            grad: &g1,
        })
        .unwrap();
        s.observe(&ConvObservation {
            path: "a",
            weight: &w,
            grad: &g2,
        })
        .unwrap();
        s.observe(&ConvObservation {
            path: "b",
            weight: &w,
            grad: &g2,
        })
        .unwrap();
        // a: (3 - 2 + (-1 - 1)) / 2 = -0.5 ; b: -2
        assert_eq!(s.scores(), vec![("a".into(), -0.5), ("b".into(), -2.0)]);
        s.reset();
        assert!(s.scores().is_empty());
    }

    #[test]
    fn mismatched_shapes_and_nan_are_errors() {
        let mut s = SynFlow::new(&ScorerConfig::default());
        let (w, g) = (t(&[1.0, 2.0]), t(&[1.0]));
        let e = s
            .observe(&ConvObservation {
                path: "x.conv",
                weight: &w,
                grad: &g,
            })
            .unwrap_err();
        assert!(e.to_string().contains("x.conv"), "{e}");
        let nan = t(&[f32::NAN, 1.0]);
        assert!(s
            .observe(&ConvObservation {
                path: "x",
                weight: &w,
                grad: &nan
            })
            .is_err());
    }

    #[test]
    fn accumulators_survive_json() {
        let mut s: Box<dyn Scorer> = Box::new(SynFlow::default());
        let (w, g) = (t(&[1.0, 2.0]), t(&[0.5, 0.25]));
        s.observe(&ConvObservation {
            path: "a",
            weight: &w,
            grad: &g,
        })
        .unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"scorer\":\"synflow\""), "{json}");
        let back: Box<dyn Scorer> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.scores(), s.scores());
    }
}
