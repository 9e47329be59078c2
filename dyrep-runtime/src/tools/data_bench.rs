//! `dyrep bench data`: the input pipeline alone — a streamed image folder's training batches
//! (decode, ImageNet transforms, normalisation on the worker threads), images per second and
//! the peak resident memory, no model (docs/USAGE.md "Data"; the torchvision peer is
//! `benches/peer/databench.py`).

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::alloc::peak_rss_bytes;
use crate::data::loader::{train_stream, Augment};
use crate::data::transforms::ImageNetTransform;
use crate::data::{self, LoadOptions};
use crate::error::{Result, RuntimeError};

/// What to measure.
#[derive(Clone, Debug)]
pub struct DataBenchSpec {
    /// An `image-folder:DIR` spec.
    pub data: String,
    /// Crop size of the training transform.
    pub size: usize,
    /// Decoding threads (0: one per core).
    pub workers: usize,
    pub batch: usize,
    /// Batches to time (after one warm-up batch); at most one epoch.
    pub batches: usize,
}

/// One measurement.
#[derive(Clone, Debug, Serialize)]
pub struct DataBenchReport {
    pub data: String,
    pub size: usize,
    pub workers: usize,
    pub batch: usize,
    pub images: usize,
    pub seconds: f64,
    pub images_per_sec: f64,
    pub peak_rss_bytes: u64,
}

/// Times `spec.batches` training batches of the folder, streamed with the ImageNet transforms.
pub fn bench_data(spec: &DataBenchSpec) -> Result<DataBenchReport> {
    if spec.batch == 0 || spec.batches == 0 {
        return Err(RuntimeError::Config(
            "--batch and --iters must be at least 1".into(),
        ));
    }
    if spec.size == 0
        || dyrep_api::init::checked_elements(&[spec.batch, 3, spec.size, spec.size]).is_err()
    {
        return Err(RuntimeError::Config(format!(
            "--size {} with --batch {}: the batch would not fit in memory (or is empty); lower them",
            spec.size, spec.batch
        )));
    }
    let opts = LoadOptions {
        workers: spec.workers,
        imagenet: Some(ImageNetTransform {
            size: spec.size,
            ..ImageNetTransform::default()
        }),
        ..LoadOptions::default()
    };
    let ds = Arc::new(data::load_with(&spec.data, &opts)?);
    if ds.stream.is_none() {
        return Err(RuntimeError::Config(format!(
            "bench data --data {}: measures streamed image decoding, and `{}` is held in memory ({}x{} images, nothing to decode); give an image-folder:DIR or shards:DIR",
            spec.data, spec.data, ds.height, ds.width
        )));
    }
    let workers = ds.stream.as_ref().map_or(1, |s| s.workers);
    let mut stream = train_stream(ds, spec.batch, 0, 0, &Augment::default(), None);
    // The warm-up batch: the first files are read cold, the threads start.
    stream.next().transpose()?;
    let t0 = Instant::now();
    let mut images = 0;
    for b in stream.take(spec.batches) {
        images += b?.len();
    }
    let seconds = t0.elapsed().as_secs_f64();
    Ok(DataBenchReport {
        data: spec.data.clone(),
        size: spec.size,
        workers,
        batch: spec.batch,
        images,
        seconds,
        images_per_sec: images as f64 / seconds.max(1e-9),
        peak_rss_bytes: peak_rss_bytes(),
    })
}
