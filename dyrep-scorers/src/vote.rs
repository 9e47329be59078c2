//! `vote` scorer: an ensemble of `synflow`, `snip` and `grad_norm`. Each ranks the convs by its
//! own score; a conv gets (n − rank) points from each (a Borda count, rank 0 = most salient, n
//! convs), and its score is the total — the conv most scorers put on top wins. Ties in an inner
//! ranking share the better rank.

use dyrep_api::{ConvObservation, Result, Scorer, ScorerConfig};
use serde::{Deserialize, Serialize};

use crate::{GradNorm, Snip, SynFlow};

/// Borda-count vote of synflow, snip and grad_norm.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vote {
    synflow: SynFlow,
    snip: Snip,
    grad_norm: GradNorm,
}

impl Vote {
    pub fn new(cfg: &ScorerConfig) -> Self {
        Self {
            synflow: SynFlow::new(cfg),
            snip: Snip::new(cfg),
            grad_norm: GradNorm::new(cfg),
        }
    }
}

/// Borda points of one ranking: (n − rank), equal scores sharing the better rank.
fn borda(scores: &[(String, f64)]) -> Vec<(String, f64)> {
    let n = scores.len();
    scores
        .iter()
        .map(|(p, v)| {
            let better = scores.iter().filter(|(_, o)| o > v).count();
            (p.clone(), (n - better) as f64)
        })
        .collect()
}

#[typetag::serde(name = "vote")]
impl Scorer for Vote {
    fn name(&self) -> &'static str {
        "vote"
    }

    fn observe(&mut self, obs: &ConvObservation<'_>) -> Result<()> {
        self.synflow.observe(obs)?;
        self.snip.observe(obs)?;
        self.grad_norm.observe(obs)
    }

    fn scores(&self) -> Vec<(String, f64)> {
        let mut total: std::collections::BTreeMap<String, f64> = Default::default();
        for ranking in [
            self.synflow.scores(),
            self.snip.scores(),
            self.grad_norm.scores(),
        ] {
            for (p, pts) in borda(&ranking) {
                *total.entry(p).or_default() += pts;
            }
        }
        total.into_iter().collect()
    }

    fn reset(&mut self) {
        self.synflow.reset();
        self.snip.reset();
        self.grad_norm.reset();
    }
}

dyrep_api::register_scorer!(
    name = "vote",
    summary = "Borda-count vote of synflow, snip and grad_norm rankings",
    build = Vote::new,
    order = 5
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::t;

    #[test]
    fn the_conv_most_scorers_rank_first_wins() {
        let mut v = Vote::new(&ScorerConfig::default());
        // a: large signed synflow but small grad; b: large |g⊙w| and grad.
        let (wa, ga) = (t(&[10.0]), t(&[1.0]));
        let (wb, gb) = (t(&[-1.0]), t(&[8.0]));
        v.observe(&ConvObservation {
            path: "a",
            weight: &wa,
            grad: &ga,
        })
        .unwrap();
        v.observe(&ConvObservation {
            path: "b",
            weight: &wb,
            grad: &gb,
        })
        .unwrap();
        // synflow: a=10, b=−8 → a; snip: a=10, b=8 → a; grad_norm: a=1, b=8 → b.
        let s = v.scores();
        assert_eq!(
            s,
            vec![("a".into(), 2.0 + 2.0 + 1.0), ("b".into(), 1.0 + 1.0 + 2.0)]
        );
    }
}
