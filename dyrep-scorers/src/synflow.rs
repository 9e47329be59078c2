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

    /// For a conv feeding a batch-statistics BN, the loss does not change when W is scaled but
    /// through ε: Σ G ⊙ W = d/da L(aW) at a = 1 = Σ_c ε / (σ_c² + ε) · γ_c · ∂L/∂γ_c, with σ_c²
    /// the batch variance of the conv's output channel c (docs/REFERENCE.md "Scores"). So the
    /// score is BN's γ-saliency damped by ε/σ²: comparable to it when σ² ≈ ε, close to zero
    /// when σ² ≫ ε. Checked through the fused conv → BN → ReLU op that training runs.
    #[test]
    fn synflow_before_batch_norm_is_the_gamma_saliency_damped_by_eps_over_variance() {
        use candle_core::Device;
        use dyrep_api::init::normal_tensor;
        use dyrep_api::layers::{conv_bn, Conv2dLayer};
        use dyrep_api::{BatchNorm, SeededRng, BN_EPS};

        let dev = Device::Cpu;
        let (n, c_in, c_out, hw, k) = (4, 3, 5, 6, 3);
        let fan_in = (c_in * k * k) as f64;
        let f = |t: &candle_core::Tensor| -> Vec<f64> {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            v.into_iter().map(f64::from).collect()
        };
        // Weight std giving an output variance near ε, then near 1.
        for (seed, w_std, sigma2_near_eps) in [
            (5u64, (BN_EPS / fan_in).sqrt(), true),
            (6, (1.0 / fan_in).sqrt(), false),
        ] {
            let mut rng = SeededRng::new(seed);
            let x = normal_tensor(&mut rng, &[n, c_in, hw, hw], 0.0, 1.0, &dev).unwrap();
            let w = normal_tensor(&mut rng, &[c_out, c_in, k, k], 0.0, w_std, &dev).unwrap();
            let conv = Conv2dLayer::from_tensors(&w, None, 1, (1, 1), 1).unwrap();
            let bn = BatchNorm::new(c_out, candle_core::DType::F32, &dev).unwrap();
            let gamma = normal_tensor(&mut rng, &[c_out], 1.0, 0.5, &dev).unwrap();
            let beta = normal_tensor(&mut rng, &[c_out], 0.0, 0.5, &dev).unwrap();
            bn.gamma().set(&gamma).unwrap();
            bn.beta().set(&beta).unwrap();
            let target = normal_tensor(&mut rng, &[n, c_out, hw, hw], 0.0, 1.0, &dev).unwrap();
            let y = conv_bn(&conv, &bn, &x, true, true).unwrap();
            let grads = (y * &target)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g_w = f(grads.get(conv.weight().as_tensor()).unwrap());
            let g_gamma = f(grads.get(bn.gamma().as_tensor()).unwrap());
            let (w, gamma) = (f(&w), f(&gamma));
            let score: f64 = g_w.iter().zip(&w).map(|(g, w)| g * w).sum();
            let magnitude: f64 = g_w.iter().zip(&w).map(|(g, w)| (g * w).abs()).sum();
            // The conv output's per-channel batch variance (biased, as BN normalises with).
            let z = f(&conv.forward(&x).unwrap());
            let plane = hw * hw;
            let m = (n * plane) as f64;
            let predicted: f64 = (0..c_out)
                .map(|c| {
                    let vals: Vec<f64> = (0..n)
                        .flat_map(|b| z[(b * c_out + c) * plane..][..plane].to_vec())
                        .collect();
                    let mean = vals.iter().sum::<f64>() / m;
                    let var = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / m;
                    BN_EPS / (var + BN_EPS) * gamma[c] * g_gamma[c]
                })
                .sum();
            // The gradients come from f32 reductions of m = 144 terms, each off by at most m·u
            // (u = 2⁻²⁴) of the magnitudes it sums.
            let tol = m * f64::from(f32::EPSILON / 2.0) * magnitude;
            assert!(
                (score - predicted).abs() <= tol,
                "seed {seed}: Σ G⊙W = {score:e}, identity gives {predicted:e}, Σ|G⊙W| = {magnitude:e}"
            );
            if sigma2_near_eps {
                assert!(
                    score.abs() > 0.05 * magnitude,
                    "seed {seed}: {score:e} vs {magnitude:e}"
                );
            } else {
                assert!(
                    score.abs() <= tol,
                    "seed {seed}: {score:e} vs {magnitude:e}"
                );
            }
        }
    }
}
