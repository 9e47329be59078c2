//! What a run has done so far: each epoch's numbers, the progress saved in every checkpoint's
//! `state.json` (with every grow/cut event; the trainer adds DyRep's scorer beside it, so a
//! resume continues exactly) and the run's `summary.json` (average params and MACs are epoch-weighted, as the
//! paper reports them: docs/REFERENCE.md "MACs and params").

use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::dynamics::Event;

/// One epoch's numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub test_loss: f64,
    pub test_acc: f64,
    pub lr: f64,
    pub params: usize,
    pub macs: u64,
    pub branches: usize,
    /// Wall-clock seconds of the epoch's training and evaluation.
    pub seconds: f64,
    /// Processor seconds (user + system, all threads) of the same span; absent in states saved
    /// before it was recorded and where the platform does not report it.
    #[serde(default)]
    pub cpu_seconds: Option<f64>,
}

/// How far one conv (a unit's conv, or its block's main conv once grown) turned in one epoch:
/// the mean over output channels of the angle between its weights before and after
/// (`preserve::mean_angle_deg`). A row of `movement.csv`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Movement {
    pub epoch: usize,
    pub path: String,
    /// Whether the conv was a grown block at the epoch's end.
    pub grown: bool,
    pub angle_deg: f64,
}

/// Progress of a run, saved in every checkpoint's `state.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RunState {
    pub config: TrainConfig,
    /// Number of finished epochs.
    pub epochs_done: usize,
    pub global_step: usize,
    pub best_test_acc: f64,
    pub best_epoch: usize,
    pub train_seconds: f64,
    pub history: Vec<EpochRecord>,
    /// Every grow and cut so far.
    #[serde(default)]
    pub events: Vec<Event>,
    /// Images skipped as undecodable so far (`skip_bad_images`).
    #[serde(default)]
    pub bad_images: usize,
    /// Processes of the data-parallel run (1: a single process); a resume needs as many.
    #[serde(default = "one")]
    pub world: usize,
    /// [`crate::data::Dataset::fingerprint`] of the data the run started on; a resume on
    /// changed data is refused. Absent in states saved before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_fingerprint: Option<String>,
    /// Every conv's movement per epoch (absent in states saved before it was recorded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub movement: Vec<Movement>,
}

fn one() -> usize {
    1
}

/// `summary.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub model: String,
    pub mode: String,
    /// How the `repvgg` / `dbb` blocks were built (`reference` or `dyrep`); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_form: Option<String>,
    /// How the reference form drew its blocks' convs (`pytorch` or `fan_out`); absent otherwise
    /// and in summaries written before the setting existed (those drew `fan_out`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_init: Option<String>,
    /// How the blocks trained (`bn` or `online`, docs/REFERENCE.md "The online form"); absent
    /// for `origin` and in summaries written before the setting existed (those trained `bn`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_form: Option<String>,
    pub dataset: String,
    pub epochs: usize,
    pub seed: u64,
    pub final_test_acc: f64,
    pub best_test_acc: f64,
    pub avg_params: f64,
    pub avg_macs: f64,
    pub final_params: usize,
    pub final_macs: u64,
    pub train_seconds: f64,
    /// Processor seconds over the epochs (`cpu_time.rs`): the cost of the run that pauses and
    /// other jobs on the machine do not inflate as they do `train_seconds`. Absent when an
    /// epoch lacks it (resumed from a state saved before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_cpu_seconds: Option<f64>,
    pub peak_rss_bytes: u64,
    pub grows: usize,
    pub cuts: usize,
    /// Images skipped as undecodable (`skip_bad_images`; absent when none was).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bad_images: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl RunState {
    /// The state of a run that has not trained yet.
    pub fn new(config: TrainConfig) -> RunState {
        RunState {
            config,
            epochs_done: 0,
            global_step: 0,
            best_test_acc: -1.0,
            best_epoch: 0,
            train_seconds: 0.0,
            history: Vec::new(),
            events: Vec::new(),
            bad_images: 0,
            world: 1,
            data_fingerprint: None,
            movement: Vec::new(),
        }
    }

    /// Records a finished epoch; true when its test accuracy is the best so far.
    pub fn record_epoch(&mut self, rec: EpochRecord) -> bool {
        self.epochs_done += 1;
        self.train_seconds += rec.seconds;
        let improved = rec.test_acc > self.best_test_acc;
        if improved {
            self.best_test_acc = rec.test_acc;
            self.best_epoch = rec.epoch;
        }
        self.history.push(rec);
        improved
    }

    /// How many events of `kind` (`grow` or `cut`) the run has had.
    pub fn count_events(&self, kind: &str) -> usize {
        self.events.iter().filter(|e| e.kind == kind).count()
    }
}

/// The sum of the epochs' processor seconds; `None` when an epoch lacks them.
pub fn total_cpu_seconds(history: &[EpochRecord]) -> Option<f64> {
    history.iter().map(|r| r.cpu_seconds).sum()
}

/// Epoch-weighted mean of a per-epoch quantity (docs/REFERENCE.md "MACs and params").
pub fn epoch_mean(history: &[EpochRecord], f: impl Fn(&EpochRecord) -> f64) -> f64 {
    if history.is_empty() {
        return 0.0;
    }
    history.iter().map(&f).sum::<f64>() / history.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(epoch: usize, cpu_seconds: Option<f64>) -> EpochRecord {
        EpochRecord {
            epoch,
            train_loss: 1.0,
            train_acc: 0.5,
            test_loss: 1.0,
            test_acc: 0.5,
            lr: 0.1,
            params: 10,
            macs: 100,
            branches: 0,
            seconds: 2.0,
            cpu_seconds,
        }
    }

    #[test]
    fn a_state_saved_before_processor_time_was_recorded_still_loads() {
        let mut old = serde_json::to_value(record(1, Some(3.0))).unwrap();
        old.as_object_mut().unwrap().remove("cpu_seconds");
        let back: EpochRecord = serde_json::from_value(old).unwrap();
        assert_eq!(back, record(1, None));
    }

    #[test]
    fn processor_seconds_add_up_only_when_every_epoch_has_them() {
        let all = [record(1, Some(3.0)), record(2, Some(4.5))];
        assert_eq!(total_cpu_seconds(&all), Some(7.5));
        let resumed_from_old = [record(1, None), record(2, Some(4.5))];
        assert_eq!(total_cpu_seconds(&resumed_from_old), None);
    }
}
