//! The user's own optimizer: SGD with momentum and weight decay on conv and linear weights,
//! its state kept by parameter name — and what it does when DyRep changes the parameters.

use std::collections::{BTreeSet, HashMap};

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use dyrep_api::TensorRole;
use dyrep_runtime::dynamics::OptimizerState;
use dyrep_runtime::Result;

pub struct MomentumSgd {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    buffers: HashMap<String, Tensor>,
}

impl MomentumSgd {
    pub fn new(lr: f64, momentum: f64, weight_decay: f64) -> Self {
        Self {
            lr,
            momentum,
            weight_decay,
            buffers: HashMap::new(),
        }
    }

    /// One step over `params` with `grads`; parameters without a gradient and running
    /// statistics are left alone.
    pub fn step(&mut self, params: &[(String, Var, TensorRole)], grads: &GradStore) -> Result<()> {
        for (path, var, role) in params {
            let Some(g) = grads.get(var.as_tensor()).filter(|_| role.is_trainable()) else {
                continue;
            };
            let w = var.as_detached_tensor();
            let g = match role.is_bn_or_bias() {
                true => g.clone(),
                false => (g + (&w * self.weight_decay)?)?,
            };
            let buf = match self.buffers.get(path) {
                Some(b) => ((b * self.momentum)? + g)?,
                None => g,
            };
            var.set(&(&w - (&buf * self.lr)?)?)?;
            self.buffers.insert(path.clone(), buf);
        }
        Ok(())
    }
}

impl OptimizerState for MomentumSgd {
    /// Momentum of parameters that survive is kept (by name), of those gone dropped; new ones
    /// start without.
    fn parameters_changed(&mut self, params: &[(String, Var, TensorRole)]) -> Result<()> {
        let live: BTreeSet<&str> = params.iter().map(|(p, _, _)| p.as_str()).collect();
        self.buffers.retain(|k, _| live.contains(k.as_str()));
        Ok(())
    }
}
