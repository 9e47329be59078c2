//! Own SGD (docs/REFERENCE.md "Optimizer state when parameters change", "Training recipes";
//! candle's SGD has no momentum and its optimizers keep state by position). PyTorch semantics:
//! `d = g + wd·θ` (wd skipped for BN γ/β and biases unless `decay_bn_and_bias`), `b = μ·b + d`
//! (first step: `b = d`), `d = nesterov ? d + μ·b : b`, `θ ← θ − lr·d`. Momentum buffers are keyed by
//! parameter path, so they survive structure changes: new parameters start fresh, vanished ones are
//! dropped, survivors keep theirs.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use candle_core::{Tensor, Var};
use dyrep_api::TensorRole;
use serde::{Deserialize, Serialize};

use crate::dynamics::{ObservedGrads, OptimizerState};
use crate::error::Result;

/// SGD hyper-parameters (besides the learning rate, which the schedule gives per step).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SgdConfig {
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    /// Apply weight decay to BN γ/β and biases too (the reference's CIFAR recipe does).
    pub decay_bn_and_bias: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 1e-4,
            decay_bn_and_bias: true,
        }
    }
}

/// SGD with momentum buffers keyed by parameter path.
#[derive(Debug)]
pub struct Sgd {
    pub config: SgdConfig,
    buffers: BTreeMap<String, Tensor>,
}

impl Sgd {
    pub fn new(config: SgdConfig) -> Self {
        Self {
            config,
            buffers: BTreeMap::new(),
        }
    }

    /// One step over `params` (path, variable, role) with the gradients of one backward pass,
    /// after the scorer saw them (`Dynamics::observe` gives `ObservedGrads`; a step no scorer watches takes `ObservedGrads::unobserved`).
    /// Parameters without a gradient are left alone; running statistics are never touched.
    pub fn step(
        &mut self,
        lr: f64,
        params: &[(String, Var, TensorRole)],
        grads: &ObservedGrads,
    ) -> Result<()> {
        let grads = grads.grads();
        let c = &self.config;
        for (path, var, role) in params {
            if !role.is_trainable() {
                continue;
            }
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let decayed = c.decay_bn_and_bias || !role.is_bn_or_bias();
            let step = dyrep_api::kernels::SgdStep {
                lr,
                momentum: c.momentum,
                nesterov: c.nesterov,
                weight_decay: decayed.then_some(c.weight_decay),
            };
            let theta = var.as_detached_tensor();
            let up = dyrep_api::kernels::sgd_step(&theta, g, self.buffers.get(path), step)
                .map_err(dyrep_api::Error::from)?;
            if let Some(buf) = up.buffer {
                self.buffers.insert(path.clone(), buf);
            }
            var.set(&up.theta)?;
        }
        Ok(())
    }

    /// Drops the state of parameters that no longer exist.
    pub fn retain(&mut self, live: &BTreeSet<String>) {
        self.buffers.retain(|k, _| live.contains(k));
    }

    /// Forgets one parameter's state (its value was replaced).
    pub fn forget(&mut self, path: &str) {
        self.buffers.remove(path);
    }

    /// The momentum buffers by path (for checkpoints).
    pub fn state(&self) -> HashMap<String, Tensor> {
        self.buffers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Restores momentum buffers.
    pub fn load_state(&mut self, state: HashMap<String, Tensor>) {
        self.buffers = state.into_iter().collect();
    }

    pub fn buffer(&self, path: &str) -> Option<&Tensor> {
        self.buffers.get(path)
    }
}

impl OptimizerState for Sgd {
    /// Momentum is kept by path: buffers of parameters that are gone are dropped.
    fn parameters_changed(&mut self, params: &[(String, Var, TensorRole)]) -> Result<()> {
        let live: BTreeSet<String> = params.iter().map(|(p, _, _)| p.clone()).collect();
        self.retain(&live);
        Ok(())
    }
}

/// Cosine learning rate over steps after a linear warmup (docs/REFERENCE.md "Training
/// recipes"). Per epoch (the reference's): warmup epoch e (0-based) uses `warmup_lr + (lr −
/// warmup_lr)·e/warmup_epochs`. Per step (`warmup_per_step`): step s of the W = warmup_epochs ·
/// steps_per_epoch warm-up steps uses `warmup_lr + (lr − warmup_lr)·s/W`, which equals the
/// per-epoch value at the first step of every epoch and rises in between — for runs of few long
/// epochs. Afterwards `min_lr + (lr − min_lr)·(1 + cos(π·t/T))/2` with t the step since warmup
/// and T the rest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CosineSchedule {
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_epochs: usize,
    pub warmup_lr: f64,
    pub warmup_per_step: bool,
}

impl CosineSchedule {
    /// The learning rate of global step `step`, taken in epoch `epoch` (0-based).
    pub fn lr_at(&self, epoch: usize, step: usize, steps_per_epoch: usize, epochs: usize) -> f64 {
        let warm = self.warmup_epochs * steps_per_epoch;
        // How far into the warm-up this step is, if it is in it.
        let warmup_progress = match self.warmup_per_step {
            true => (step < warm).then(|| step as f64 / warm as f64),
            false => (epoch < self.warmup_epochs).then(|| epoch as f64 / self.warmup_epochs as f64),
        };
        if let Some(f) = warmup_progress {
            return self.warmup_lr + (self.lr - self.warmup_lr) * f;
        }
        let total = (epochs * steps_per_epoch).saturating_sub(warm).max(1);
        let t = step.saturating_sub(warm).min(total);
        let cos = (std::f64::consts::PI * t as f64 / total as f64).cos();
        self.min_lr + (self.lr - self.min_lr) * (1.0 + cos) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn unobserved(g: candle_core::backprop::GradStore) -> ObservedGrads {
        ObservedGrads::unobserved(g)
    }

    #[test]
    fn sgd_matches_pytorch_semantics() {
        let dev = Device::Cpu;
        let w = Var::new(&[1.0f32, -2.0], &dev).unwrap();
        let params = vec![("w".to_string(), w.clone(), TensorRole::ConvWeight)];
        let mut opt = Sgd::new(SgdConfig {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.1,
            decay_bn_and_bias: true,
        });
        // loss = sum(w) -> g = 1
        for _ in 0..2 {
            let grads = w.as_tensor().sum_all().unwrap().backward().unwrap();
            opt.step(0.5, &params, &unobserved(grads)).unwrap();
        }
        // step 1: d = 1 + 0.1·1 = 1.1; b = 1.1; w = 1 − 0.55 = 0.45
        // step 2: d = 1 + 0.045 = 1.045; b = 0.99 + 1.045 = 2.035; w = 0.45 − 1.0175 = −0.5675
        let v = w.as_tensor().to_vec1::<f32>().unwrap();
        assert!((v[0] - (-0.5675)).abs() < 1e-6, "{v:?}");
    }

    #[test]
    fn nesterov_and_no_decay_on_bn() {
        let dev = Device::Cpu;
        let g = Var::new(&[1.0f32], &dev).unwrap();
        let params = vec![("bn.weight".to_string(), g.clone(), TensorRole::BnWeight)];
        let mut opt = Sgd::new(SgdConfig {
            momentum: 0.5,
            nesterov: true,
            weight_decay: 1.0,
            decay_bn_and_bias: false,
        });
        let grads = g.as_tensor().sum_all().unwrap().backward().unwrap();
        opt.step(1.0, &params, &unobserved(grads)).unwrap();
        // d = 1 (no decay); b = 1; nesterov d = 1 + 0.5 = 1.5; θ = 1 − 1.5 = −0.5
        assert_eq!(g.as_tensor().to_vec1::<f32>().unwrap(), vec![-0.5]);
        opt.retain(&BTreeSet::new());
        assert!(opt.buffer("bn.weight").is_none());
    }

    #[test]
    fn cosine_with_warmup() {
        let s = CosineSchedule {
            lr: 0.1,
            min_lr: 0.0,
            warmup_epochs: 2,
            warmup_lr: 0.0,
            warmup_per_step: false,
        };
        assert_eq!(s.lr_at(0, 0, 10, 12), 0.0);
        assert_eq!(s.lr_at(0, 9, 10, 12), 0.0);
        assert!((s.lr_at(1, 10, 10, 12) - 0.05).abs() < 1e-12);
        assert!((s.lr_at(2, 20, 10, 12) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(7, 70, 10, 12) - 0.05).abs() < 1e-12);
        assert!(s.lr_at(11, 119, 10, 12) < 1e-3);
    }

    /// Per step, the warm-up rises every step, meets the per-epoch value at each epoch's first
    /// step, reaches lr where the cosine starts and leaves the cosine as it was.
    #[test]
    fn cosine_with_per_step_warmup() {
        let (per_epoch, epochs) = (10, 12);
        let by_epoch = CosineSchedule {
            lr: 0.1,
            min_lr: 1e-6,
            warmup_epochs: 3,
            warmup_lr: 1e-4,
            warmup_per_step: false,
        };
        let by_step = CosineSchedule {
            warmup_per_step: true,
            ..by_epoch.clone()
        };
        let lrs: Vec<f64> = (0..per_epoch * epochs)
            .map(|s| by_step.lr_at(s / per_epoch, s, per_epoch, epochs))
            .collect();
        let warm = 3 * per_epoch;
        assert!(lrs[..=warm].windows(2).all(|w| w[1] > w[0]), "{lrs:?}");
        assert_eq!(lrs[0], 1e-4);
        assert!((lrs[15] - (1e-4 + (0.1 - 1e-4) * 0.5)).abs() < 1e-12);
        for (s, lr) in lrs.iter().enumerate() {
            let reference = by_epoch.lr_at(s / per_epoch, s, per_epoch, epochs);
            if s % per_epoch == 0 || s >= warm {
                assert!((lr - reference).abs() < 1e-12, "step {s}");
            }
        }
    }
}
