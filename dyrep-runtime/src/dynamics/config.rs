//! The settings of DyRep (`[dyrep]` in a config file; paper §4, docs/REFERENCE.md "Growth
//! schedule (Rep)", "Dep (cut)", "The grown block"): which branch ops and scorer, when to grow,
//! how to keep the output, when to cut. A `DyrepConfig` builds the [`super::Dynamics`] it
//! describes.

use dyrep_api::{
    find_op, find_scorer, OpSpec, Scorer, ScorerConfig, DEFAULT_GAMMA0, DEFAULT_MAX_DEPTH,
};
use serde::{Deserialize, Serialize};

use super::schedule::{GrowSchedule, Period};
use crate::error::{Result, RuntimeError};

fn d_scorer() -> String {
    "synflow".into()
}
fn d_topk() -> usize {
    1
}
fn d_gamma0() -> f64 {
    DEFAULT_GAMMA0
}
fn d_calib() -> usize {
    20
}
fn d_true() -> bool {
    true
}
fn d_lambda() -> f64 {
    0.1
}
fn d_min_std() -> f64 {
    0.02
}
fn d_depth() -> usize {
    DEFAULT_MAX_DEPTH
}

/// How a grow step keeps the network's output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preserve {
    /// Push the difference through the main branch's (calibrated) BN: exact in eval mode.
    #[default]
    Exact,
    /// The reference's eq. 6: main BN reset to (γ=1, β=0, μ=0, σ²=1) and main conv =
    /// W − ΣK_j, which leaves the 1/sqrt(1+ε) factor on the residual kernel (≈5e-6 relative;
    /// docs/REFERENCE.md "The grown block"). For parity runs against the original code.
    Reference,
    /// Main conv = W − ΣK_j at W's scale, the calibrated σ carried in the main BN's γ and β
    /// (and in the new branches' last γ, so they start at γ0 relative to the main branch):
    /// exact in eval mode without dividing the conv's effective step (`preserve.rs`).
    Affine,
}

impl Preserve {
    /// `--preserve`: `exact`, `reference` or `affine`.
    pub fn parse(s: &str) -> std::result::Result<Preserve, String> {
        match s {
            "exact" => Ok(Preserve::Exact),
            "reference" => Ok(Preserve::Reference),
            "affine" => Ok(Preserve::Affine),
            other => Err(format!(
                "`{other}`: expected `exact`, `reference` or `affine`"
            )),
        }
    }
}

/// Settings of the dynamic mode (`[dyrep]` in the config file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DyrepConfig {
    /// Branch ops new blocks get (those that apply to each conv); empty = every registered op.
    #[serde(default)]
    pub ops: Vec<String>,
    #[serde(default = "d_scorer")]
    pub scorer: String,
    /// Grow after every this much training: epochs (fractions allowed), `N steps`, or `auto`
    /// (1/40 of the run, the reference's proportion; `dynamics::schedule`).
    #[serde(default)]
    pub grow_interval: Period,
    /// No growth after this much training: epochs, `N steps`, `auto` (5/6 of the run, as the
    /// reference) or `none` (until the end).
    #[serde(default)]
    pub max_grow_epochs: Period,
    /// Convs grown per grow step.
    #[serde(default = "d_topk")]
    pub grow_topk: usize,
    /// γ of the last BN of each new branch.
    #[serde(default = "d_gamma0")]
    pub gamma0: f64,
    /// Training batches used to calibrate a new block's BN statistics.
    #[serde(default = "d_calib")]
    pub calib_batches: usize,
    /// Run Dep (cut faded branches).
    #[serde(default = "d_true")]
    pub dep: bool,
    /// λ: a branch is cut only below this importance (and below the mean).
    #[serde(default = "d_lambda")]
    pub cut_threshold: f64,
    /// Cuts happen only when the importances' sample std exceeds this.
    #[serde(default = "d_min_std")]
    pub cut_min_std: f64,
    /// Blocks nest at most this deep.
    #[serde(default = "d_depth")]
    pub max_depth: usize,
    /// How a grow keeps the output: `exact` (default), the reference's eq. 6 (`reference`) or
    /// `affine` (W's scale kept).
    #[serde(default)]
    pub preserve: Preserve,
}

impl Default for DyrepConfig {
    fn default() -> Self {
        Self {
            ops: Vec::new(),
            scorer: d_scorer(),
            grow_interval: Period::Auto,
            max_grow_epochs: Period::Auto,
            grow_topk: d_topk(),
            gamma0: d_gamma0(),
            calib_batches: d_calib(),
            dep: true,
            cut_threshold: d_lambda(),
            cut_min_std: d_min_std(),
            max_depth: d_depth(),
            preserve: Preserve::Exact,
        }
    }
}

impl DyrepConfig {
    /// Checks the settings against the registries; errors name the setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |s: String| Err(RuntimeError::Config(s));
        for op in &self.ops {
            find_op(op)?;
            if op == dyrep_ops::MAIN_OP {
                return bad(format!(
                    "dyrep.ops: `{op}` is every block's main branch; list only the other ops"
                ));
            }
        }
        find_scorer(&self.scorer)?;
        if self.grow_interval == Period::Unlimited {
            return bad(
                "dyrep.grow_interval cannot be `none`; give epochs, `N steps` or `auto`".into(),
            );
        }
        if self.grow_topk == 0 {
            return bad("dyrep.grow_topk must be at least 1".into());
        }
        if !(self.gamma0 > 0.0 && self.gamma0.is_finite()) {
            return bad(format!(
                "dyrep.gamma0 must be positive (got {})",
                self.gamma0
            ));
        }
        if self.calib_batches == 0 {
            return bad("dyrep.calib_batches must be at least 1".into());
        }
        if self.max_depth == 0 {
            return bad("dyrep.max_depth must be at least 1".into());
        }
        for (key, v) in [
            ("cut_threshold", self.cut_threshold),
            ("cut_min_std", self.cut_min_std),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return bad(format!(
                    "dyrep.{key} must be a finite number >= 0 (got {v})"
                ));
            }
        }
        Ok(())
    }

    /// The branch specs new blocks get.
    pub fn branch_specs(&self) -> Result<Vec<Box<dyn OpSpec>>> {
        if self.ops.is_empty() {
            return Ok(dyrep_api::ops()
                .iter()
                .filter(|e| e.name != dyrep_ops::MAIN_OP)
                .map(|e| (e.default_spec)())
                .collect());
        }
        Ok(self
            .ops
            .iter()
            .map(|n| dyrep_api::op_spec(n))
            .collect::<dyrep_api::Result<_>>()?)
    }

    /// A fresh scorer.
    pub fn build_scorer(&self, seed: u64) -> Result<Box<dyn Scorer>> {
        Ok((find_scorer(&self.scorer)?.build)(&ScorerConfig { seed }))
    }

    /// The growth schedule of a run of `epochs` epochs of `steps_per_epoch` steps.
    pub fn schedule(&self, steps_per_epoch: usize, epochs: usize) -> Result<GrowSchedule> {
        GrowSchedule::new(
            self.grow_interval,
            self.max_grow_epochs,
            steps_per_epoch as u64,
            epochs as u64,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grow_schedule() {
        let c = DyrepConfig {
            grow_interval: Period::Epochs(2.0),
            max_grow_epochs: Period::Epochs(6.0),
            ..Default::default()
        };
        let s = c.schedule(3, 10).unwrap();
        let grows: Vec<u64> = (1..=30).filter(|&k| s.grows_after(k)).collect();
        assert_eq!(grows, vec![6, 12, 18]);
        // The default: 1/40 of the run, until 5/6 of it, never after the last step.
        let s = DyrepConfig::default().schedule(10, 4).unwrap();
        assert_eq!((s.interval, s.last), (1, 33));
        assert!(!s.grows_after(40), "no growth after the last step");
    }
}
