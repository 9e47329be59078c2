//! The user's own data: synthetic single-channel images of stripes, one orientation per class,
//! with a random phase and frequency and strong uniform noise; its own shuffled batches; and the
//! `CalibrationSource` DyRep's grows draw BN calibration batches from.

use candle_core::{Device, Tensor};
use dyrep_api::SeededRng;
use dyrep_runtime::dynamics::CalibrationSource;
use dyrep_runtime::Result;
use rand::seq::SliceRandom;
use rand::Rng;

/// Images and labels in memory.
pub struct Stripes {
    pub side: usize,
    pub classes: usize,
    images: Vec<f32>,
    labels: Vec<u32>,
}

impl Stripes {
    /// `n` images of `side`×`side`, classes drawn uniformly, from `seed`.
    pub fn generate(n: usize, side: usize, classes: usize, seed: u64) -> Stripes {
        let mut rng = SeededRng::for_purpose(seed, "stripes");
        let mut images = Vec::with_capacity(n * side * side);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let class = rng.random_range(0..classes);
            let angle = std::f32::consts::PI * class as f32 / classes as f32;
            let (dx, dy) = (angle.cos(), angle.sin());
            let freq = rng.random_range(0.15f32..0.3);
            let phase = rng.random_range(0.0f32..std::f32::consts::TAU);
            for y in 0..side {
                for x in 0..side {
                    let t = std::f32::consts::TAU * freq * (x as f32 * dx + y as f32 * dy);
                    images.push((t + phase).sin() + rng.random_range(-2.0f32..2.0));
                }
            }
            labels.push(class as u32);
        }
        Stripes {
            side,
            classes,
            images,
            labels,
        }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The images and labels at `indices`, as `[N, 1, side, side]` and `[N]` tensors.
    pub fn batch(&self, indices: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
        let px = self.side * self.side;
        let mut x = Vec::with_capacity(indices.len() * px);
        for &i in indices {
            x.extend_from_slice(&self.images[i * px..(i + 1) * px]);
        }
        let y: Vec<u32> = indices.iter().map(|&i| self.labels[i]).collect();
        let x = Tensor::from_vec(x, (indices.len(), 1, self.side, self.side), device)?;
        let y = Tensor::from_vec(y, indices.len(), device)?;
        Ok((x, y))
    }

    /// The whole batches of one pass in an order drawn from `seed` (the last partial batch
    /// is dropped).
    pub fn shuffled(&self, batch: usize, seed: u64) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(&mut SeededRng::for_purpose(seed, "order"));
        order.chunks_exact(batch).map(|c| c.to_vec()).collect()
    }
}

/// Calibration batches for DyRep's grows: training images in an order of their own per grow,
/// so calibrating leaves the training order alone.
pub struct Calibration<'a> {
    pub data: &'a Stripes,
    pub batch: usize,
    pub seed: u64,
    pub device: Device,
}

impl CalibrationSource for Calibration<'_> {
    fn batches(&mut self, key: u64) -> Result<Box<dyn Iterator<Item = Result<Tensor>> + '_>> {
        let order = self
            .data
            .shuffled(self.batch, self.seed ^ key.rotate_left(17));
        Ok(Box::new(
            order
                .into_iter()
                .map(|idx| Ok(self.data.batch(&idx, &self.device)?.0)),
        ))
    }
}
