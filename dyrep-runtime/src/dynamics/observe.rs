//! The observe hook's work (paper §3.2; docs/REFERENCE.md "Scores"): after every backward and
//! before the optimizer step, the scorer sees each growable conv's weight and gradient. The
//! type `ObservedGrads` is the only thing the optimizer steps on, so the other order cannot be
//! written.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use dyrep_api::{ConvObservation, GradProbe, Scorer};

use super::net::RepNet;
use crate::dist::Comm;
use crate::error::Result;
use crate::metrics::cross_entropy;

/// Gradients that scorers have seen; the only thing the optimizer steps on.
pub struct ObservedGrads(GradStore);

impl ObservedGrads {
    /// The gradients of a step no scorer watches (a run without DyRep, a benchmark).
    pub fn unobserved(grads: GradStore) -> Self {
        Self(grads)
    }

    pub fn grads(&self) -> &GradStore {
        &self.0
    }
}

struct BatchProbe<'a> {
    model: &'a dyn RepNet,
    x: &'a Tensor,
    y: &'a Tensor,
    weights: &'a [(String, Var)],
    /// The ranks whose batches the probe's gradients are averaged over, as the step's are.
    comm: &'a dyn Comm,
}

impl GradProbe for BatchProbe<'_> {
    fn grads_with_shift(
        &mut self,
        shift: &BTreeMap<String, Tensor>,
    ) -> dyrep_api::Result<BTreeMap<String, Tensor>> {
        let mut saved = Vec::new();
        for (p, v) in self.weights {
            if let Some(s) = shift.get(p) {
                let orig = v.as_detached_tensor().copy()?;
                v.set(&(&orig + s)?)?;
                saved.push((v, orig));
            }
        }
        let run = || -> candle_core::Result<BTreeMap<String, Tensor>> {
            let logits = self
                .model
                .forward_t(self.x, false)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            let loss = cross_entropy(&logits, self.y, 0.0)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            let grads = loss.backward()?;
            let mut out = BTreeMap::new();
            for (p, v) in self.weights {
                if let Some(g) = grads.get(v.as_tensor()) {
                    out.insert(p.clone(), g.detach());
                }
            }
            Ok(out)
        };
        let result = run();
        for (v, orig) in saved {
            v.set(&orig)?;
        }
        let mut grads = result?;
        crate::dist::average_tensors(self.comm, &mut grads).map_err(|e| {
            dyrep_api::Error::Scorer {
                scorer: "probe".into(),
                reason: format!("averaging the probe's gradients over the ranks: {e}"),
            }
        })?;
        Ok(grads)
    }
}

/// Hands a backward pass's gradients of the growable convs `weights` to the scorer (and, at
/// its probe steps, a probe that recomputes the batch's gradients at shifted weights), then
/// releases them for the optimizer.
pub(crate) fn observe_grads(
    scorer: &mut dyn Scorer,
    grads: GradStore,
    weights: &[(String, Var)],
    step: usize,
    model: &dyn RepNet,
    batch: (&Tensor, &Tensor),
    comm: &dyn Comm,
) -> Result<ObservedGrads> {
    let detached: Vec<(String, Tensor, Tensor)> = weights
        .iter()
        .filter_map(|(p, v)| {
            grads
                .get(v.as_tensor())
                .map(|g| (p.clone(), v.as_detached_tensor(), g.clone()))
        })
        .collect();
    let obs: Vec<ConvObservation<'_>> = detached
        .iter()
        .map(|(p, w, g)| ConvObservation {
            path: p,
            weight: w,
            grad: g,
        })
        .collect();
    for o in &obs {
        scorer.observe(o)?;
    }
    scorer.end_step()?;
    if scorer.probe_every().is_some_and(|n| step.is_multiple_of(n)) {
        let mut probe = BatchProbe {
            model,
            x: batch.0,
            y: batch.1,
            weights,
            comm,
        };
        scorer.observe_probe(&obs, &mut probe)?;
    }
    Ok(ObservedGrads(grads))
}
