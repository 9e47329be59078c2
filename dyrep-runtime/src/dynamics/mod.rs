//! DyRep as one component (paper §3-4; docs/LIBRARY.md): [`Dynamics`] owns the scorer, the
//! growth schedule and its own serialisable state, and a training loop — `dyrep train`'s or
//! anyone's — calls it at two points: [`Dynamics::observe`] after every backward and before the
//! optimizer step (the optimizer steps on the [`ObservedGrads`] it returns, so the other order
//! cannot be written), and, when [`Dynamics::due`] says so, [`Dynamics::adjust`], which grows
//! the best-scored convs (Rep), resets the scores and cuts faded branches (Dep). The caller
//! hands `adjust` the network (any [`RepNet`]), a source of calibration batches and its
//! optimizer's state; nothing here reads data or knows how the loop is driven.
//!
//! Where things are: `config.rs` the settings, `schedule.rs` when to grow, `observe.rs` the
//! scores, `grow.rs` Rep, `cut.rs` Dep, `preserve.rs` how a grow keeps the output and what it
//! does to the grown conv's step, `event.rs` the record of each change, `net.rs` what DyRep
//! needs of a network.

mod config;
mod cut;
mod event;
mod grow;
mod net;
mod observe;
pub mod preserve;
pub mod schedule;

use std::rc::Rc;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use dyrep_api::{Scorer, TensorRole};
use serde::{Deserialize, Serialize};

pub use config::{DyrepConfig, Preserve};
pub use cut::{cut_step, select_cuts};
pub use event::{Event, ScoredConv};
pub use net::{block_paths, growable_weights, RepNet};
pub use observe::ObservedGrads;
pub use schedule::{GrowSchedule, Period};

use crate::dist::{Comm, SingleProcess};
use crate::error::{Result, RuntimeError};

/// When an adjustment happens: after an epoch ended (and was evaluated), or in the middle of
/// one, after a step. It keys the seeded streams of the adjustment's new branches and
/// calibration, and is recorded with every event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdjustAt {
    /// The epoch (1-based) the adjustment followed or happened in.
    pub epoch: usize,
    /// The run's step (1-based) a mid-epoch adjustment followed.
    pub step: Option<u64>,
}

impl AdjustAt {
    /// After epoch `epoch` (1-based) ended.
    pub fn epoch_end(epoch: usize) -> Self {
        Self { epoch, step: None }
    }

    /// In epoch `epoch` (1-based), after the run's step `step` (1-based: the run's count of
    /// optimizer steps after it).
    pub fn mid_epoch(epoch: usize, step: u64) -> Self {
        Self {
            epoch,
            step: Some(step),
        }
    }
}

/// Where a grow's BN calibration batches come from (docs/REFERENCE.md "The grown block" step
/// 4): the caller's training inputs, in the network's input layout, augmented as in training.
pub trait CalibrationSource {
    /// Batches for one grow; `key` differs for every grow of a run, so a seeded source can draw
    /// a stream of its own from it and leave the training order untouched. `adjust` takes
    /// `calib_batches` of them and refuses a source that gives none.
    fn batches(&mut self, key: u64) -> Result<Box<dyn Iterator<Item = Result<Tensor>> + '_>>;
}

/// What an optimizer does after an adjustment changed the network's parameters
/// (docs/REFERENCE.md "Optimizer state when parameters change"): keep the state of parameters
/// that survive (by name, even when their value was rewritten), drop the state of those that are
/// gone; new ones start without state.
pub trait OptimizerState {
    /// `params`: every tensor of the network now, sorted by path ([`RepNet::tensors`]).
    fn parameters_changed(&mut self, params: &[(String, Var, TensorRole)]) -> Result<()>;
}

/// What [`Dynamics`] carries from one step to the next: the scorer with its accumulators. A
/// checkpoint saves it and a resume gives it back ([`Dynamics::with_state`]); the schedule and
/// the settings are rebuilt from the config.
#[derive(Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DynamicsState {
    scorer: Box<dyn Scorer>,
}

impl DynamicsState {
    pub fn scorer(&self) -> &dyn Scorer {
        self.scorer.as_ref()
    }
}

/// DyRep's dynamics for one run.
pub struct Dynamics {
    cfg: DyrepConfig,
    schedule: GrowSchedule,
    seed: u64,
    state: DynamicsState,
    /// The fixed held-out batch each grow's and cut's preservation is measured on.
    fixed: Tensor,
    /// The ranks the scorer's probe gradients are averaged over.
    comm: Rc<dyn Comm>,
    /// The growable convs' weights, listed at the first observe after an adjustment.
    growable: Option<Vec<(String, Var)>>,
}

impl Dynamics {
    /// DyRep for a run of `epochs` epochs of `steps_per_epoch` optimizer steps: the settings
    /// are checked, a fresh scorer is drawn from `seed` (which also seeds every grow's new
    /// branches), and `fixed` — a few held-out inputs — is where each grow's and cut's effect
    /// on the eval output is measured (`Event::preserve_rel_err`).
    pub fn new(
        cfg: DyrepConfig,
        steps_per_epoch: usize,
        epochs: usize,
        seed: u64,
        fixed: Tensor,
    ) -> Result<Dynamics> {
        cfg.validate()?;
        let schedule = cfg.schedule(steps_per_epoch, epochs)?;
        let scorer = cfg.build_scorer(seed)?;
        Ok(Dynamics {
            cfg,
            schedule,
            seed,
            state: DynamicsState { scorer },
            fixed,
            comm: Rc::new(SingleProcess),
            growable: None,
        })
    }

    /// A data-parallel run: the scorer's probe gradients are averaged over `comm`'s ranks, as
    /// the step's gradients are.
    pub fn with_comm(mut self, comm: Rc<dyn Comm>) -> Dynamics {
        self.comm = comm;
        self
    }

    /// Continues from a saved state (a resume): the scorer keeps its accumulators.
    pub fn with_state(mut self, state: DynamicsState) -> Result<Dynamics> {
        let (saved, configured) = (state.scorer.name(), self.cfg.scorer.as_str());
        if saved != configured {
            return Err(RuntimeError::Config(format!(
                "the saved DyRep state holds the scorer `{saved}` and the config names `{configured}`; resume with the config the run started with"
            )));
        }
        self.state = state;
        Ok(self)
    }

    /// The state to save with a checkpoint.
    pub fn state(&self) -> &DynamicsState {
        &self.state
    }

    pub fn config(&self) -> &DyrepConfig {
        &self.cfg
    }

    pub fn schedule(&self) -> &GrowSchedule {
        &self.schedule
    }

    /// Refuses settings whose ops apply to no growable conv of `net` (check it before the
    /// first step: a network grown to `max_depth` everywhere has none left, rightly).
    pub fn check_applies(&self, net: &dyn RepNet) -> Result<()> {
        let specs = self.cfg.branch_specs()?;
        let any = net.conv_slots().iter().any(|(_, slot)| {
            slot.growable(self.cfg.max_depth)
                .iter()
                .any(|info| specs.iter().any(|s| s.check(&info.geom).is_ok()))
        });
        if any {
            return Ok(());
        }
        let names: Vec<&str> = specs.iter().map(|s| s.name()).collect();
        Err(RuntimeError::Config(format!(
            "none of the ops [{}] applies to any growable conv of {}; add ops that fit (e.g. conv1x1_kxk, conv1x1_avg apply everywhere)",
            names.join(", "),
            net.label()
        )))
    }

    /// The observe hook, after the backward of step `steps_before` (the run's count of
    /// optimizer steps before this one) and before the optimizer step: the scorer sees every
    /// growable conv's weight and gradient (`batch` is the step's inputs and labels, for scorers
    /// that probe). Returns the gradients for the optimizer.
    pub fn observe(
        &mut self,
        net: &dyn RepNet,
        grads: GradStore,
        steps_before: usize,
        batch: (&Tensor, &Tensor),
    ) -> Result<ObservedGrads> {
        let max_depth = self.cfg.max_depth;
        let growable = self
            .growable
            .get_or_insert_with(|| growable_weights(net, max_depth));
        observe::observe_grads(
            self.state.scorer.as_mut(),
            grads,
            growable,
            steps_before,
            net,
            batch,
            &*self.comm,
        )
    }

    /// Whether the schedule adjusts after the step that brings the run's count of optimizer
    /// steps to `steps_taken`.
    pub fn due(&self, steps_taken: u64) -> bool {
        self.schedule.grows_after(steps_taken)
    }

    /// The adjust hook: grows the `grow_topk` best-scored convs (calibrating each new block on
    /// `calib`'s batches), resets the scores, cuts faded branches (with Dep on), and tells
    /// `optim` when the parameters changed. Returns what it did, one event per grow or cut.
    pub fn adjust(
        &mut self,
        net: &mut dyn RepNet,
        at: AdjustAt,
        calib: &mut dyn CalibrationSource,
        optim: &mut dyn OptimizerState,
    ) -> Result<Vec<Event>> {
        // Whatever happens below, the growable convs are listed afresh at the next observe.
        self.growable = None;
        let mut ctx = grow::GrowCtx {
            cfg: &self.cfg,
            seed: self.seed,
            fixed: &self.fixed,
            at,
            calib,
        };
        let mut events = grow::grow_step(net, self.state.scorer.as_ref(), &mut ctx)?;
        self.state.scorer.reset();
        if self.cfg.dep {
            events.extend(cut_step(net, at, &self.cfg, &self.fixed)?);
        }
        if !events.is_empty() {
            optim.parameters_changed(&net.tensors())?;
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::vgg_tiny_for_tests;
    use crate::model::Model;
    use candle_core::Device;
    use dyrep_api::SeededRng;

    fn model_and_batch() -> (Model, Tensor, Tensor) {
        let mut rng = SeededRng::new(3);
        let m = vgg_tiny_for_tests(12, &mut rng);
        let x = dyrep_api::init::normal_tensor(&mut rng, &[4, 1, 12, 12], 0.0, 1.0, &Device::Cpu)
            .unwrap();
        let y = Tensor::new(&[1u32, 4, 7, 9], &Device::Cpu).unwrap();
        (m, x, y)
    }

    fn observe_once(d: &mut Dynamics, m: &Model, x: &Tensor, y: &Tensor, step: usize) {
        let loss = crate::metrics::cross_entropy(&m.forward_t(x, true).unwrap(), y, 0.0).unwrap();
        d.observe(m, loss.backward().unwrap(), step, (x, y))
            .unwrap();
    }

    #[test]
    fn a_dynamics_restored_from_its_saved_state_scores_as_the_original() {
        let (m, x, y) = model_and_batch();
        let cfg = DyrepConfig::default();
        let fresh = || Dynamics::new(cfg.clone(), 10, 4, 0, x.clone()).unwrap();
        let mut a = fresh();
        observe_once(&mut a, &m, &x, &y, 0);
        let saved = serde_json::to_string(a.state()).unwrap();
        let mut b = fresh()
            .with_state(serde_json::from_str(&saved).unwrap())
            .unwrap();
        assert_eq!(a.state().scorer().scores(), b.state().scorer().scores());
        observe_once(&mut a, &m, &x, &y, 1);
        observe_once(&mut b, &m, &x, &y, 1);
        let scores = a.state().scorer().scores();
        assert!(!scores.is_empty());
        assert_eq!(scores, b.state().scorer().scores());
    }

    #[test]
    fn a_saved_state_of_another_scorer_is_refused() {
        let (_, x, _) = model_and_batch();
        let cfg = DyrepConfig::default();
        let snip = DyrepConfig {
            scorer: "snip".into(),
            ..cfg.clone()
        };
        let other = Dynamics::new(snip, 10, 4, 0, x.clone()).unwrap();
        let saved = serde_json::to_string(other.state()).unwrap();
        let err = Dynamics::new(cfg, 10, 4, 0, x)
            .unwrap()
            .with_state(serde_json::from_str(&saved).unwrap())
            .err()
            .unwrap();
        assert!(err.to_string().contains("`snip`"), "{err}");
    }

    #[test]
    fn the_schedule_says_when_adjustments_are_due() {
        let (_, x, _) = model_and_batch();
        let cfg = DyrepConfig {
            grow_interval: Period::Steps(3),
            max_grow_epochs: Period::Steps(7),
            ..DyrepConfig::default()
        };
        let d = Dynamics::new(cfg, 5, 2, 0, x).unwrap();
        let due: Vec<u64> = (1..=10).filter(|&s| d.due(s)).collect();
        assert_eq!(due, vec![3, 6]);
    }
}
