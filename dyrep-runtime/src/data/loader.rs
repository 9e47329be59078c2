//! Batches: seeded shuffling (our own RNG; a fresh stream per epoch, so a resumed run sees the same
//! order), augmentation (random crop with zero padding, horizontal flip, cutout applied after
//! normalisation — docs/REFERENCE.md "Training recipes"), normalisation with the dataset's channel
//! statistics, and a producer thread that prepares the next batches while the current one trains.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use dyrep_api::SeededRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{Dataset, Split};

/// Training-time augmentation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Augment {
    /// Random crop of the original size from the image zero-padded by this much (0 = off).
    #[serde(default)]
    pub crop_padding: usize,
    /// Random horizontal flip with probability 1/2.
    #[serde(default)]
    pub hflip: bool,
    /// Side of one square hole (centre uniform, clipped at the borders) set to zero after
    /// normalisation (0 = off).
    #[serde(default)]
    pub cutout: usize,
}

/// Which split to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Train,
    Test,
}

/// A prepared batch: normalised f32 pixels `[n, c, h, w]` and labels.
#[derive(Clone, Debug)]
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The batch as `([n, c, h, w]` f32 images, `[n]` u32 labels) tensors on `device`.
    pub fn to_tensors(
        &self,
        ds: &Dataset,
        device: &candle_core::Device,
    ) -> candle_core::Result<(candle_core::Tensor, candle_core::Tensor)> {
        let n = self.len();
        let x = candle_core::Tensor::from_vec(
            self.images.clone(),
            (n, ds.channels, ds.height, ds.width),
            device,
        )?;
        let y = candle_core::Tensor::from_vec(self.labels.clone(), n, device)?;
        Ok((x, y))
    }
}

/// The training order of `n` examples in `epoch` (Fisher–Yates with a per-epoch stream).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = SeededRng::for_purpose(seed, &format!("shuffle:{epoch}"));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.random_range(0..=i);
        order.swap(i, j);
    }
    order
}

fn split_of(ds: &Dataset, which: Which) -> &Split {
    match which {
        Which::Train => &ds.train,
        Which::Test => &ds.test,
    }
}

/// Builds one batch from the examples `indices` of a split.
pub fn make_batch(
    ds: &Dataset,
    which: Which,
    indices: &[usize],
    augment: Option<(&Augment, &mut SeededRng)>,
) -> Batch {
    let split = split_of(ds, which);
    let (c, h, w) = (ds.channels, ds.height, ds.width);
    let size = c * h * w;
    let mut images = vec![0f32; indices.len() * size];
    let mut labels = Vec::with_capacity(indices.len());
    let scale: Vec<f32> = ds.std.iter().map(|s| 1.0 / (255.0 * s)).collect();
    let shift: Vec<f32> = ds.mean.iter().zip(&ds.std).map(|(m, s)| m / s).collect();
    let mut aug = augment;
    for (b, &i) in indices.iter().enumerate() {
        let src = &split.images[i * size..(i + 1) * size];
        let dst = &mut images[b * size..(b + 1) * size];
        labels.push(split.labels[i]);
        let (dy, dx, flip, hole) = match aug.as_mut() {
            Some((a, rng)) => {
                let p = a.crop_padding as i64;
                let (dy, dx) = if p > 0 {
                    (
                        rng.random_range(-p..=p) as isize,
                        rng.random_range(-p..=p) as isize,
                    )
                } else {
                    (0, 0)
                };
                let flip = a.hflip && rng.random_bool(0.5);
                let hole = (a.cutout > 0).then(|| (rng.random_range(0..h), rng.random_range(0..w)));
                (dy, dx, flip, hole.map(|(y, x)| (y, x, a.cutout)))
            }
            None => (0, 0, false, None),
        };
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let sx = if flip { w - 1 - x } else { x } as isize + dx;
                    let sy = y as isize + dy;
                    let inside = sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < w;
                    // Zero padding is a zero *pixel*, normalised like the others.
                    let raw = if inside {
                        src[(ch * h + sy as usize) * w + sx as usize] as f32
                    } else {
                        0.0
                    };
                    dst[(ch * h + y) * w + x] = raw * scale[ch] - shift[ch];
                }
            }
        }
        if let Some((cy, cx, side)) = hole {
            let half = side / 2;
            let (y0, y1) = (cy.saturating_sub(half), (cy + side - half).min(h));
            let (x0, x1) = (cx.saturating_sub(half), (cx + side - half).min(w));
            for ch in 0..c {
                for y in y0..y1 {
                    for x in x0..x1 {
                        dst[(ch * h + y) * w + x] = 0.0;
                    }
                }
            }
        }
    }
    Batch { images, labels }
}

/// Batches prepared on a background thread (up to `ahead` in flight).
pub struct BatchStream {
    rx: Receiver<Batch>,
    handle: Option<JoinHandle<()>>,
}

impl Iterator for BatchStream {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        self.rx.recv().ok()
    }
}

impl Drop for BatchStream {
    fn drop(&mut self) {
        // Dropping the receiver makes the producer's next send fail, so it stops.
        let (_tx, rx) = sync_channel(0);
        let old = std::mem::replace(&mut self.rx, rx);
        drop(old);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn spawn(
    ds: Arc<Dataset>,
    which: Which,
    chunks: Vec<Vec<usize>>,
    mut aug: Option<(Augment, SeededRng)>,
) -> BatchStream {
    let (tx, rx) = sync_channel(2);
    let handle = std::thread::spawn(move || {
        for idx in chunks {
            let a = aug.as_mut().map(|(a, r)| (&*a, r));
            if tx.send(make_batch(&ds, which, &idx, a)).is_err() {
                break;
            }
        }
    });
    BatchStream {
        rx,
        handle: Some(handle),
    }
}

/// Number of full training batches per epoch (the last partial batch is dropped).
pub fn train_batches_per_epoch(ds: &Dataset, batch_size: usize, limit: Option<usize>) -> usize {
    limit.unwrap_or(usize::MAX).min(ds.train.len()) / batch_size.max(1)
}

/// Shuffled, augmented training batches of `epoch` (drop_last), from the first `limit` examples.
pub fn train_stream(
    ds: Arc<Dataset>,
    batch_size: usize,
    seed: u64,
    epoch: usize,
    augment: &Augment,
    limit: Option<usize>,
) -> BatchStream {
    let n = limit.unwrap_or(usize::MAX).min(ds.train.len());
    let order = epoch_order(n, seed, epoch);
    let chunks: Vec<Vec<usize>> = order
        .chunks(batch_size.max(1))
        .filter(|c| c.len() == batch_size)
        .map(|c| c.to_vec())
        .collect();
    let aug = (*augment != Augment::default()).then(|| {
        (
            augment.clone(),
            SeededRng::for_purpose(seed, &format!("augment:{epoch}")),
        )
    });
    spawn(ds, Which::Train, chunks, aug)
}

/// Evaluation batches in dataset order, no augmentation, from the first `limit` examples.
pub fn eval_stream(
    ds: Arc<Dataset>,
    which: Which,
    batch_size: usize,
    limit: Option<usize>,
) -> BatchStream {
    let n = limit.unwrap_or(usize::MAX).min(split_of(&ds, which).len());
    let chunks: Vec<Vec<usize>> = (0..n)
        .collect::<Vec<_>>()
        .chunks(batch_size.max(1))
        .map(|c| c.to_vec())
        .collect();
    spawn(ds, which, chunks, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::bundled_default;

    #[test]
    fn order_is_a_seeded_permutation_per_epoch() {
        let a = epoch_order(100, 1, 0);
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(100, 1, 0));
        assert_ne!(a, epoch_order(100, 1, 1));
        assert_ne!(a, epoch_order(100, 2, 0));
    }

    #[test]
    fn normalisation_and_augmentation() {
        let ds = Arc::new(bundled_default().unwrap());
        let plain = make_batch(&ds, Which::Train, &[0, 1], None);
        assert_eq!(plain.images.len(), 2 * 784);
        // A zero pixel maps to -mean/std.
        let z = -ds.mean[0] / ds.std[0];
        let src0 = ds.train.images[0];
        assert!((plain.images[0] - (src0 as f32 / 255.0 - ds.mean[0]) / ds.std[0]).abs() < 1e-5);
        // Flip only: each row reversed (row 14 is the middle of the garment).
        let row = 14 * 28..15 * 28;
        let a = Augment {
            hflip: true,
            ..Default::default()
        };
        let mut rng = SeededRng::new(0);
        let mut flipped_once = false;
        for _ in 0..8 {
            let b = make_batch(&ds, Which::Train, &[0], Some((&a, &mut rng)));
            if b.images[row.clone()] != plain.images[row.clone()] {
                let rev: Vec<f32> = plain.images[row.clone()].iter().rev().copied().collect();
                assert_eq!(&b.images[row.clone()], &rev[..]);
                flipped_once = true;
            }
        }
        assert!(flipped_once);
        // Cutout zeroes a hole after normalisation.
        let a = Augment {
            cutout: 8,
            ..Default::default()
        };
        let b = make_batch(&ds, Which::Train, &[0], Some((&a, &mut rng)));
        assert!(b.images.iter().filter(|v| **v == 0.0).count() >= 16);
        // Crop padding brings in zero pixels (normalised), never garbage.
        let a = Augment {
            crop_padding: 4,
            ..Default::default()
        };
        for _ in 0..4 {
            let b = make_batch(&ds, Which::Train, &[0], Some((&a, &mut rng)));
            assert!(b.images.iter().all(|v| v.is_finite() && *v >= z - 1e-5));
        }
    }

    #[test]
    fn streams_drop_last_and_keep_order() {
        let ds = Arc::new(bundled_default().unwrap());
        let n: Vec<usize> = train_stream(ds.clone(), 64, 3, 0, &Augment::default(), Some(200))
            .map(|b| b.len())
            .collect();
        assert_eq!(n, vec![64, 64, 64]);
        let eval: Vec<Batch> = eval_stream(ds.clone(), Which::Test, 64, Some(150)).collect();
        assert_eq!(
            eval.iter().map(|b| b.len()).collect::<Vec<_>>(),
            vec![64, 64, 22]
        );
        assert_eq!(eval[0].labels[..5], ds.test.labels[..5]);
        // Early drop of a stream does not hang.
        let mut s = train_stream(ds, 8, 3, 0, &Augment::default(), None);
        s.next();
        drop(s);
    }
}
