//! The calibration batches of `dyrep train`'s grows (docs/REFERENCE.md "The grown block" step
//! 4): augmented training batches from a seeded stream of their own per grow, so calibrating
//! leaves the run's data order untouched.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::data::loader::{train_stream, Augment};
use crate::data::Dataset;
use crate::dynamics::CalibrationSource;
use crate::error::Result;

/// The seed offset of the calibration streams (beside the run's seed).
const CALIBRATION_SEED: u64 = 0xca11b;

/// Training batches for calibration, as the run's training steps see them.
pub(crate) struct TrainCalibration {
    pub ds: Arc<Dataset>,
    pub batch_size: usize,
    pub seed: u64,
    pub augment: Augment,
    pub train_limit: Option<usize>,
    pub device: Device,
}

impl CalibrationSource for TrainCalibration {
    fn batches(&mut self, key: u64) -> Result<Box<dyn Iterator<Item = Result<Tensor>> + '_>> {
        let stream = train_stream(
            self.ds.clone(),
            self.batch_size,
            self.seed ^ CALIBRATION_SEED,
            key as usize,
            &self.augment,
            self.train_limit,
        );
        Ok(Box::new(stream.map(|b| {
            let (x, _) = b?.to_tensors(&self.ds, &self.device)?;
            Ok(x)
        })))
    }
}
