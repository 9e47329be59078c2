//! Batches: seeded shuffling (our own RNG; a fresh stream per epoch, so a resumed run sees the same
//! order), augmentation (random crop with zero padding, horizontal flip, cutout applied after
//! normalisation — docs/REFERENCE.md "Training recipes"), normalisation with the dataset's channel
//! statistics, and a producer thread that prepares the next batches while the current one trains
//! (at most two waiting). A streamed image folder's batch decodes its files on the dataset's
//! worker threads and applies the ImageNet transforms (`transforms.rs`), each image with its own
//! random stream drawn from the batch's, so the result does not depend on the thread count.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use dyrep_api::SeededRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{format_err, transforms, Dataset, ImageSource, Result, Split, StreamSpec};

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
    /// Stream the image folder with the ImageNet transforms (`[augment.imagenet]`; the three
    /// settings above then do not apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imagenet: Option<super::transforms::ImageNetTransform>,
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

/// Rank `rank`'s share of an epoch's order in a data-parallel run of `world` ranks: every
/// `world`-th index from position `rank`, so the shares are disjoint, together hold every index,
/// and differ in size by at most one; with `world` = 1 it is the order itself.
pub fn rank_shard(order: &[usize], rank: usize, world: usize) -> Vec<usize> {
    let world = world.max(1);
    order.iter().skip(rank).step_by(world).copied().collect()
}

fn split_of(ds: &Dataset, which: Which) -> &Split {
    match which {
        Which::Train => &ds.train,
        Which::Test => &ds.test,
    }
}

/// Builds one batch from the examples `indices` of a split (an image that cannot be decoded is
/// an error naming it, or — with `skip_bad_images` — left out of the batch and counted).
pub fn make_batch(
    ds: &Dataset,
    which: Which,
    indices: &[usize],
    augment: Option<(&Augment, &mut SeededRng)>,
) -> Result<Batch> {
    match &ds.stream {
        Some(st) => streamed_batch(ds, st, which, indices, augment.map(|(_, rng)| rng)),
        None => Ok(memory_batch(ds, which, indices, augment)),
    }
}

/// A streamed example's encoded image: where to read it, or its bytes already read (a shard
/// read sequentially).
enum Encoded<'a> {
    Source(&'a ImageSource),
    Bytes { name: &'a str, bytes: &'a [u8] },
}

/// One streamed example: the image read, decoded and transformed (`rng`: training's random
/// stream).
fn streamed_example(enc: &Encoded<'_>, st: &StreamSpec, rng: Option<u64>) -> Result<Vec<f32>> {
    let (read, name);
    let bytes: &[u8] = match enc {
        Encoded::Source(src) => {
            read = src.read()?;
            name = src.describe();
            &read
        }
        Encoded::Bytes { name: n, bytes } => {
            name = std::path::PathBuf::from(n);
            bytes
        }
    };
    let img = super::decode_rgb(bytes, &name, st.max_image_pixels)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw = img.into_raw();
    Ok(match rng {
        Some(seed) => transforms::train_view(&raw, w, h, &st.transform, &mut SeededRng::new(seed)),
        None => transforms::eval_view(&raw, w, h, &st.transform),
    })
}

fn streamed_batch(
    ds: &Dataset,
    st: &StreamSpec,
    which: Which,
    indices: &[usize],
    rng: Option<&mut SeededRng>,
) -> Result<Batch> {
    let split = split_of(ds, which);
    let items: Vec<(Encoded<'_>, u32)> = indices
        .iter()
        .map(|&i| (Encoded::Source(&split.files[i]), split.labels[i]))
        .collect();
    decode_batch(ds, st, &items, rng)
}

/// Decodes and transforms a batch of encoded images on the stream's worker threads (each image
/// with its own random stream drawn from `rng` when training).
fn decode_batch(
    ds: &Dataset,
    st: &StreamSpec,
    items: &[(Encoded<'_>, u32)],
    rng: Option<&mut SeededRng>,
) -> Result<Batch> {
    let seeds: Vec<Option<u64>> = match rng {
        Some(r) => items.iter().map(|_| Some(r.random::<u64>())).collect(),
        None => vec![None; items.len()],
    };
    let per = items
        .len()
        .div_ceil(st.workers.clamp(1, items.len().max(1)))
        .max(1);
    let views: Vec<Result<Vec<f32>>> = std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(per)
            .zip(seeds.chunks(per))
            .map(|(run, sd)| {
                s.spawn(move || {
                    run.iter()
                        .zip(sd)
                        .map(|((enc, _), &seed)| streamed_example(enc, st, seed))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join().unwrap_or_else(|_| {
                    vec![Err(format_err(
                        std::path::Path::new("image decoder"),
                        "a decoding thread panicked",
                    ))]
                })
            })
            .collect()
    });
    let size = ds.image_size();
    let mut batch = Batch {
        images: Vec::with_capacity(items.len() * size),
        labels: Vec::with_capacity(items.len()),
    };
    for ((_, label), view) in items.iter().zip(views) {
        match view {
            Ok(v) => {
                batch.images.extend_from_slice(&v);
                batch.labels.push(*label);
            }
            Err(e) if st.skip_bad_images => {
                tracing::warn!(target: "dyrep::data", "skipped: {e}");
                st.bad_images
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(batch)
}

/// A batch of an in-memory split.
fn memory_batch(
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

/// Batches prepared on a background thread (at most two waiting); the stream ends after the
/// first error it yields.
pub struct BatchStream {
    rx: Receiver<Result<Batch>>,
    handle: Option<JoinHandle<()>>,
}

impl Iterator for BatchStream {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
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
            let batch = make_batch(&ds, which, &idx, a);
            let failed = batch.is_err();
            if tx.send(batch).is_err() || failed {
                break;
            }
        }
    });
    BatchStream {
        rx,
        handle: Some(handle),
    }
}

/// Samples a shard stream holds back to shuffle (WebDataset's shuffle buffer).
pub const SHUFFLE_BUFFER: usize = 1000;

/// Training batches of a sharded dataset for `epoch`: the shards read one after the other in a
/// seeded order, each sequentially, the samples passed through a seeded shuffle buffer of
/// [`SHUFFLE_BUFFER`], full batches only, at most `max_batches`. Rank `rank` of `world` keeps
/// every `world`-th sample of that sequence (from its `rank`-th), with its own shuffle buffer
/// and augmentation: the ranks' shares are disjoint and complete, every rank reads every shard
/// (the bytes read grow with the ranks; decoding does not), and all of them stop after the same
/// number of batches. A read or decoding error is the stream's last item.
fn shard_stream(
    ds: Arc<Dataset>,
    batch_size: usize,
    seed: u64,
    epoch: usize,
    (rank, world): (usize, usize),
    max_batches: usize,
) -> BatchStream {
    let (tx, rx) = sync_channel(2);
    let handle = std::thread::spawn(move || {
        let Some(st) = ds.stream.as_ref() else {
            return;
        };
        let Some([set, _]) = st.shards.as_ref() else {
            return;
        };
        let mut order: Vec<usize> = (0..set.shards.len()).collect();
        let mut shard_rng = SeededRng::for_purpose(seed, &format!("shards:{epoch}"));
        for i in (1..order.len()).rev() {
            order.swap(i, shard_rng.random_range(0..=i));
        }
        let of_rank = match world {
            1 => String::new(),
            _ => format!(":rank{rank}"),
        };
        let mut shuffle = ShuffleBuffer {
            held: Vec::with_capacity(SHUFFLE_BUFFER),
            pick: SeededRng::for_purpose(seed, &format!("shuffle-buffer:{epoch}{of_rank}")),
            pending: Vec::with_capacity(batch_size),
            aug: SeededRng::for_purpose(seed, &format!("augment:{epoch}{of_rank}")),
            batch_size,
        };
        let mut sent = 0;
        let mut send = |batch: Result<Batch>| -> std::result::Result<(), Stop> {
            let failed = batch.is_err();
            tx.send(batch).map_err(|_| Stop)?;
            sent += 1;
            if failed || sent == max_batches {
                return Err(Stop);
            }
            Ok(())
        };
        let mut seen = 0usize;
        let mut read = || -> std::result::Result<(), Stop> {
            if max_batches == 0 {
                return Err(Stop);
            }
            for &s in &order {
                let mut stopped = false;
                let walked = super::shards::for_each_sample(&set.shards[s], &mut |sample| {
                    seen += 1;
                    if (seen - 1) % world != rank {
                        return Ok(());
                    }
                    shuffle.held.push(sample);
                    if shuffle.held.len() >= SHUFFLE_BUFFER {
                        if let Some(batch) = shuffle.release(&ds, st) {
                            if send(batch).is_err() {
                                stopped = true;
                                return Err(super::format_err(&set.shards[s], "stopped"));
                            }
                        }
                    }
                    Ok(())
                });
                if stopped {
                    return Err(Stop);
                }
                if let Err(e) = walked {
                    send(Err(e))?;
                }
            }
            while !shuffle.held.is_empty() {
                if let Some(batch) = shuffle.release(&ds, st) {
                    send(batch)?;
                }
            }
            Ok(())
        };
        let _ = read();
    });
    BatchStream {
        rx,
        handle: Some(handle),
    }
}

/// The shard stream ends (its receiver is gone or it sent an error).
struct Stop;

/// WebDataset's shuffle buffer: samples held back, one released at random per sample read.
struct ShuffleBuffer {
    held: Vec<super::shards::ShardSample>,
    pick: SeededRng,
    pending: Vec<super::shards::ShardSample>,
    aug: SeededRng,
    batch_size: usize,
}

impl ShuffleBuffer {
    /// Moves one held sample, chosen at random, to the batch being filled; returns the batch
    /// once it is full.
    fn release(&mut self, ds: &Dataset, st: &StreamSpec) -> Option<Result<Batch>> {
        let i = self.pick.random_range(0..self.held.len());
        self.pending.push(self.held.swap_remove(i));
        if self.pending.len() < self.batch_size {
            return None;
        }
        let items: Vec<(Encoded<'_>, u32)> = self
            .pending
            .iter()
            .map(|s| {
                let enc = Encoded::Bytes {
                    name: &s.name,
                    bytes: &s.bytes,
                };
                (enc, s.label)
            })
            .collect();
        let batch = decode_batch(ds, st, &items, Some(&mut self.aug));
        self.pending.clear();
        Some(batch)
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
    train_stream_of_rank(ds, batch_size, seed, epoch, augment, limit, (0, 1))
}

/// Training batches per epoch of each of `world` ranks (the same for all of them: the shards
/// differ in size by at most one, the extra examples are dropped with the last partial batch).
pub fn steps_per_epoch(
    ds: &Dataset,
    batch_size: usize,
    limit: Option<usize>,
    world: usize,
) -> usize {
    limit.unwrap_or(usize::MAX).min(ds.train.len()) / (batch_size.max(1) * world.max(1))
}

/// [`train_stream`] for rank `rank` of `world` in a data-parallel run: its share of the epoch's
/// order ([`rank_shard`]), [`steps_per_epoch`] batches, its own augmentation stream. Rank 0 of 1
/// is [`train_stream`].
pub fn train_stream_of_rank(
    ds: Arc<Dataset>,
    batch_size: usize,
    seed: u64,
    epoch: usize,
    augment: &Augment,
    limit: Option<usize>,
    (rank, world): (usize, usize),
) -> BatchStream {
    if ds.stream.as_ref().is_some_and(|s| s.shards.is_some()) {
        let steps = steps_per_epoch(&ds, batch_size, limit, world);
        return shard_stream(ds, batch_size, seed, epoch, (rank, world), steps);
    }
    let n = limit.unwrap_or(usize::MAX).min(ds.train.len());
    let order = rank_shard(&epoch_order(n, seed, epoch), rank, world);
    let steps = steps_per_epoch(&ds, batch_size, limit, world);
    let chunks: Vec<Vec<usize>> = order
        .chunks(batch_size.max(1))
        .take(steps)
        .map(|c| c.to_vec())
        .collect();
    let purpose = match world {
        1 => format!("augment:{epoch}"),
        _ => format!("augment:{epoch}:rank{rank}"),
    };
    // A streamed folder always draws its random crops; an in-memory one only when augmenting.
    let aug = (*augment != Augment::default() || ds.stream.is_some())
        .then(|| (augment.clone(), SeededRng::for_purpose(seed, &purpose)));
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
    eval_stream_of(ds, which, batch_size, (0..n).collect())
}

/// Evaluation batches of the examples `indices`, in that order, no augmentation.
pub fn eval_stream_of(
    ds: Arc<Dataset>,
    which: Which,
    batch_size: usize,
    indices: Vec<usize>,
) -> BatchStream {
    let chunks: Vec<Vec<usize>> = indices
        .chunks(batch_size.max(1))
        .map(|c| c.to_vec())
        .collect();
    spawn(ds, which, chunks, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundled_default;

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
    fn rank_shards_are_disjoint_complete_and_balanced() {
        let order = epoch_order(103, 5, 2);
        assert_eq!(rank_shard(&order, 0, 1), order);
        for world in [2, 3, 8] {
            let shards: Vec<Vec<usize>> =
                (0..world).map(|r| rank_shard(&order, r, world)).collect();
            let mut all: Vec<usize> = shards.concat();
            all.sort();
            assert_eq!(all, (0..103).collect::<Vec<_>>(), "world {world}");
            let (min, max) = (
                shards.iter().map(Vec::len).min().unwrap(),
                shards.iter().map(Vec::len).max().unwrap(),
            );
            assert!(max - min <= 1, "world {world}: {min}..{max}");
            // Rank r takes positions r, r + world, ...
            assert_eq!(shards[1][1], order[1 + world]);
        }
    }

    #[test]
    fn normalisation_and_augmentation() {
        let ds = Arc::new(bundled_default().unwrap());
        let plain = make_batch(&ds, Which::Train, &[0, 1], None).unwrap();
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
            let b = make_batch(&ds, Which::Train, &[0], Some((&a, &mut rng))).unwrap();
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
        let b = make_batch(&ds, Which::Train, &[0], Some((&a, &mut rng))).unwrap();
        assert!(b.images.iter().filter(|v| **v == 0.0).count() >= 16);
        // Crop padding brings in zero pixels (normalised), never garbage.
        let a = Augment {
            crop_padding: 4,
            ..Default::default()
        };
        for _ in 0..4 {
            let b = make_batch(&ds, Which::Train, &[0], Some((&a, &mut rng))).unwrap();
            assert!(b.images.iter().all(|v| v.is_finite() && *v >= z - 1e-5));
        }
    }

    #[test]
    fn streams_drop_last_and_keep_order() {
        let ds = Arc::new(bundled_default().unwrap());
        let n: Vec<usize> = train_stream(ds.clone(), 64, 3, 0, &Augment::default(), Some(200))
            .map(|b| b.unwrap().len())
            .collect();
        assert_eq!(n, vec![64, 64, 64]);
        let eval: Vec<Batch> = eval_stream(ds.clone(), Which::Test, 64, Some(150))
            .map(Result::unwrap)
            .collect();
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
