//! `random` scorer: a fresh U(0, 1) draw per conv and step from the project's seeded RNG, averaged
//! over the interval (docs/REFERENCE.md "Scores") — the control that shows whether a metric beats
//! chance. The RNG state is part of the serialised scorer, so a resumed run draws the same.

use dyrep_api::{ConvObservation, MeanAccumulator, Result, Scorer, ScorerConfig, SeededRng};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// The `random` control metric.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomScore {
    rng: SeededRng,
    acc: MeanAccumulator,
}

impl RandomScore {
    pub fn new(cfg: &ScorerConfig) -> Self {
        Self {
            rng: SeededRng::for_purpose(cfg.seed, "scorer:random"),
            acc: MeanAccumulator::default(),
        }
    }
}

#[typetag::serde(name = "random")]
impl Scorer for RandomScore {
    fn name(&self) -> &'static str {
        "random"
    }

    fn observe(&mut self, obs: &ConvObservation<'_>) -> Result<()> {
        let v: f64 = self.rng.random();
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
    name = "random",
    summary = "seeded U(0,1) draw per conv and step, mean over the interval (control)",
    build = RandomScore::new,
    order = 4
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::t;

    #[test]
    fn seeded_and_resumable() {
        let w = t(&[1.0]);
        let obs = |p| ConvObservation {
            path: p,
            weight: &w,
            grad: &w,
        };
        let mut a = RandomScore::new(&ScorerConfig { seed: 7 });
        let mut b = RandomScore::new(&ScorerConfig { seed: 7 });
        a.observe(&obs("x")).unwrap();
        b.observe(&obs("x")).unwrap();
        // Serialise b mid-way and continue from the copy: same draws as a.
        let mut c: RandomScore = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        a.observe(&obs("x")).unwrap();
        c.observe(&obs("x")).unwrap();
        assert_eq!(a.scores(), c.scores());
        let v = a.scores()[0].1;
        assert!((0.0..1.0).contains(&v));
        let mut d = RandomScore::new(&ScorerConfig { seed: 8 });
        d.observe(&obs("x")).unwrap();
        d.observe(&obs("x")).unwrap();
        assert_ne!(a.scores(), d.scores());
    }
}
