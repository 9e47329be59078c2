//! The saliency-metric plugin interface (docs/ARCHITECTURE.md "Core model"; paper §4.1 and
//! docs/REFERENCE.md "Scores"): a `Scorer` observes each growable conv's weight and gradient after
//! backward and before the optimizer step, accumulates per conv path over the grow interval, and
//! reports scores (higher = more salient). Scorers serialise with typetag (`"scorer"` tag),
//! accumulators included, so a run resumed mid-interval keeps them.

use std::fmt;

use candle_core::Tensor;

use crate::error::Result;
use crate::registry::lookup;

/// One growable conv at one training step: its path, its current weight and ∂L/∂W.
///
/// The runtime builds these from the gradients of a backward pass and hands them to the scorer
/// before the same gradients reach the optimizer, so `weight` is always the weight the gradient was
/// computed at (the reference once scored post-update weights, docs/REFERENCE.md "Pitfalls of the
/// original code").
#[derive(Clone, Copy, Debug)]
pub struct ConvObservation<'a> {
    pub path: &'a str,
    pub weight: &'a Tensor,
    pub grad: &'a Tensor,
}

/// Extra gradient passes on the current training batch, for scorers that need more than one
/// gradient per step (GraSP's Hessian-gradient product). The runtime implements it; the model's
/// weights are restored exactly after every call and no BN statistics change.
pub trait GradProbe {
    /// ∂L/∂W of the current batch's loss for the observed convs, with each conv weight shifted
    /// by `shift[path]` (paths not in `shift` unshifted) during the pass.
    fn grads_with_shift(
        &mut self,
        shift: &std::collections::BTreeMap<String, Tensor>,
    ) -> Result<std::collections::BTreeMap<String, Tensor>>;
}

/// A saliency metric over convs.
#[typetag::serde(tag = "scorer")]
pub trait Scorer: Send + Sync + fmt::Debug {
    /// Registry name; must equal the typetag name.
    fn name(&self) -> &'static str;

    /// Records one conv's weight and gradient at one step.
    fn observe(&mut self, obs: &ConvObservation<'_>) -> Result<()>;

    /// Marks the end of one training step (after every conv of the step was observed).
    fn end_step(&mut self) -> Result<()> {
        Ok(())
    }

    /// Every how many steps the scorer wants a [`GradProbe`] (None: never).
    fn probe_every(&self) -> Option<usize> {
        None
    }

    /// Called on probe steps, after `observe` of the same step, with all of the step's
    /// observations and a probe on the same batch.
    fn observe_probe(
        &mut self,
        obs: &[ConvObservation<'_>],
        probe: &mut dyn GradProbe,
    ) -> Result<()> {
        let _ = (obs, probe);
        Ok(())
    }

    /// Current score of every observed conv (higher = more salient), sorted by path.
    fn scores(&self) -> Vec<(String, f64)>;

    /// Clears the accumulators (after every grow step).
    fn reset(&mut self);
}

/// Settings a scorer is built with.
#[derive(Clone, Debug, Default)]
pub struct ScorerConfig {
    /// Seed for scorers that draw random numbers.
    pub seed: u64,
}

/// A registry entry, submitted with [`register_scorer!`](crate::register_scorer).
pub struct ScorerEntry {
    pub name: &'static str,
    pub summary: &'static str,
    pub order: u32,
    pub build: fn(&ScorerConfig) -> Box<dyn Scorer>,
}

impl fmt::Debug for ScorerEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScorerEntry")
            .field("name", &self.name)
            .field("summary", &self.summary)
            .field("order", &self.order)
            .finish()
    }
}

inventory::collect!(ScorerEntry);

/// Every registered scorer, in listing order (then by name).
pub fn scorers() -> Vec<&'static ScorerEntry> {
    let mut v: Vec<&'static ScorerEntry> = inventory::iter::<ScorerEntry>.into_iter().collect();
    v.sort_by(|a, b| a.order.cmp(&b.order).then(a.name.cmp(b.name)));
    v
}

/// The scorer registered under `name`, or an error listing the known names and the nearest one.
pub fn find_scorer(name: &str) -> Result<&'static ScorerEntry> {
    lookup("scorer", name, scorers(), |e| e.name)
}

/// Registers a scorer constructor:
///
/// ```ignore
/// dyrep_api::register_scorer!(name = "synflow", summary = "...", build = SynFlow::new, order = 0);
/// ```
#[macro_export]
macro_rules! register_scorer {
    (name = $name:literal, summary = $summary:literal, build = $build:path, order = $order:expr $(,)?) => {
        $crate::inventory::submit! {
            $crate::ScorerEntry {
                name: $name,
                summary: $summary,
                order: $order,
                build: |cfg: &$crate::ScorerConfig| -> ::std::boxed::Box<dyn $crate::Scorer> {
                    ::std::boxed::Box::new($build(cfg))
                },
            }
        }
    };
    (name = $name:literal, summary = $summary:literal, build = $build:path $(,)?) => {
        $crate::register_scorer!(
            name = $name,
            summary = $summary,
            build = $build,
            order = 1000
        );
    };
}

/// Per-path running mean, the accumulator most scorers need (docs/REFERENCE.md "Scores": arithmetic
/// mean of the per-step values since the last grow).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct MeanAccumulator {
    sums: std::collections::BTreeMap<String, (f64, u64)>,
}

impl MeanAccumulator {
    pub fn add(&mut self, path: &str, value: f64) {
        let e = self.sums.entry(path.to_string()).or_insert((0.0, 0));
        e.0 += value;
        e.1 += 1;
    }

    pub fn means(&self) -> Vec<(String, f64)> {
        self.sums
            .iter()
            .map(|(k, (s, n))| (k.clone(), s / (*n).max(1) as f64))
            .collect()
    }

    pub fn clear(&mut self) {
        self.sums.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_accumulator_averages_per_path() {
        let mut m = MeanAccumulator::default();
        m.add("b", 1.0);
        m.add("a", 2.0);
        m.add("b", 3.0);
        assert_eq!(
            m.means(),
            vec![("a".to_string(), 2.0), ("b".to_string(), 2.0)]
        );
        m.clear();
        assert!(m.means().is_empty());
    }

    /// Checkpoints keep the accumulators as JSON, and a resumed run must score exactly as an
    /// uninterrupted one: every f64 must parse back to the same bits (serde_json's default
    /// parser is off by one ulp for some values; the workspace turns on `float_roundtrip`).
    #[test]
    fn accumulators_survive_json_bit_for_bit() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20261202);
        let mut m = MeanAccumulator::default();
        for i in 0..2000 {
            let mantissa: f64 = rng.random_range(-1.0..1.0);
            let exponent: i32 = rng.random_range(-40..10);
            m.add(&format!("conv{}", i % 97), mantissa * 10f64.powi(exponent));
        }
        let back: MeanAccumulator =
            serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        for ((pa, a), (pb, b)) in m.sums.iter().zip(&back.sums) {
            assert_eq!(pa, pb);
            assert_eq!(
                a.0.to_bits(),
                b.0.to_bits(),
                "{pa}: {:e} came back as {:e}",
                a.0,
                b.0
            );
            assert_eq!(a.1, b.1);
        }
    }
}
