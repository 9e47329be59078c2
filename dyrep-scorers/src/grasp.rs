//! `grasp` scorer (GraSP, Wang et al. 2020): per conv, `−Σ (H·g) ⊙ W`, where `H·g` is the
//! Hessian-gradient product of the training loss, estimated by a finite difference of gradients:
//! `H·g ≈ (∇L(W + ε·ĝ) − ∇L(W)) / ε · ‖g‖` with `ĝ = g/‖g‖` over the observed convs and
//! `ε = 1e-3 · ‖W‖/‖g‖`-scaled step (so the shift is small relative to the weights). The extra
//! gradient pass runs every `probe_every` steps (default 10) on the same batch, in eval mode (BN
//! running statistics, so no statistics change) and only the growable convs are shifted — a
//! deviation from GraSP's all-parameter Hessian, documented here. Mean over probe steps.

use std::collections::BTreeMap;

use candle_core::Tensor;
use dyrep_api::{ConvObservation, Error, GradProbe, MeanAccumulator, Result, Scorer, ScorerConfig};
use serde::{Deserialize, Serialize};

/// The GraSP saliency metric.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grasp {
    acc: MeanAccumulator,
    probe_every: usize,
}

impl Grasp {
    pub fn new(_cfg: &ScorerConfig) -> Self {
        Self {
            acc: MeanAccumulator::default(),
            probe_every: 10,
        }
    }
}

fn norm2(t: &Tensor) -> Result<f64> {
    Ok(t.sqr()?
        .sum_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?)
}

#[typetag::serde(name = "grasp")]
impl Scorer for Grasp {
    fn name(&self) -> &'static str {
        "grasp"
    }

    fn observe(&mut self, _obs: &ConvObservation<'_>) -> Result<()> {
        Ok(())
    }

    fn probe_every(&self) -> Option<usize> {
        Some(self.probe_every.max(1))
    }

    fn observe_probe(
        &mut self,
        obs: &[ConvObservation<'_>],
        probe: &mut dyn GradProbe,
    ) -> Result<()> {
        if obs.is_empty() {
            return Ok(());
        }
        let mut gn = 0f64;
        let mut wn = 0f64;
        for o in obs {
            gn += norm2(o.grad)?;
            wn += norm2(o.weight)?;
        }
        let (gn, wn) = (gn.sqrt(), wn.sqrt());
        if gn == 0.0 || !gn.is_finite() {
            return Ok(());
        }
        // Shift every conv by eps along the unit gradient direction.
        let eps = 1e-3 * wn.max(1e-12);
        let mut shift = BTreeMap::new();
        for o in obs {
            shift.insert(o.path.to_string(), (o.grad * (eps / gn))?);
        }
        let shifted = probe.grads_with_shift(&shift)?;
        for o in obs {
            let g2 = shifted.get(o.path).ok_or_else(|| Error::Scorer {
                scorer: "grasp".into(),
                reason: format!("probe returned no gradient for `{}`", o.path),
            })?;
            // H·ĝ ≈ (g2 − g)/eps ; H·g = ‖g‖·H·ĝ
            let hg = ((g2 - o.grad)? * (gn / eps))?;
            let v = (hg * o.weight)?
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
            if !v.is_finite() {
                return Err(Error::Scorer {
                    scorer: "grasp".into(),
                    reason: format!("`{}`: non-finite Hessian-gradient product", o.path),
                });
            }
            self.acc.add(o.path, -v);
        }
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
    name = "grasp",
    summary =
        "GraSP: -sum((H g) * W), Hessian-gradient product by finite differences every 10 steps",
    build = Grasp::new,
    order = 3
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::t;

    /// Quadratic loss L = ½ Σ a_i w_i²: g = a⊙w, H·g = a⊙a⊙w.
    struct Quadratic {
        a: Tensor,
        w: Tensor,
    }

    impl GradProbe for Quadratic {
        fn grads_with_shift(
            &mut self,
            shift: &BTreeMap<String, Tensor>,
        ) -> Result<BTreeMap<String, Tensor>> {
            let w = (&self.w + &shift["c"])?;
            Ok(BTreeMap::from([("c".to_string(), (&self.a * w)?)]))
        }
    }

    #[test]
    fn matches_the_exact_hessian_gradient_product_of_a_quadratic() {
        let (a, w) = (t(&[1.0, 2.0, 3.0]), t(&[0.5, -1.0, 2.0]));
        let g = (&a * &w).unwrap();
        let mut s = Grasp::new(&ScorerConfig::default());
        let obs = [ConvObservation {
            path: "c",
            weight: &w,
            grad: &g,
        }];
        let mut probe = Quadratic {
            a: a.clone(),
            w: w.clone(),
        };
        s.observe_probe(&obs, &mut probe).unwrap();
        // −Σ a² w² = −(0.25 + 4 + 36) = −40.25
        let v = s.scores()[0].1;
        assert!((v + 40.25).abs() < 1e-2, "{v}");
        assert_eq!(s.probe_every(), Some(10));
    }
}
