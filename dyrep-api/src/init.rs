//! Seeded initialisation: the `InitCtx` every op builds from, and tensors drawn from the
//! project's own RNG (candle cannot seed its CPU RNG). Conv init is the reference's
//! N(0, sqrt(2 / (kh·kw·C_out))) (docs/REFERENCE.md "Initialisation of a grown branch", "Models").

use candle_core::{DType, Device, Tensor};
use rand::{Rng, RngCore};
use rand_distr::{Distribution, StandardNormal};

use crate::error::Result;

/// The reference's γ for the last BN of a freshly grown branch (docs/REFERENCE.md "Initialisation
/// of a grown branch").
pub const DEFAULT_GAMMA0: f64 = 0.01;

/// What an op needs to create its parameters: the RNG, the initial γ of its last BN, and where
/// the tensors live.
pub struct InitCtx<'a> {
    pub rng: &'a mut dyn RngCore,
    /// γ of the last BN of a new (non-main) branch.
    pub gamma0: f64,
    pub device: Device,
    pub dtype: DType,
}

impl<'a> InitCtx<'a> {
    /// A context on `device` in f32 with the reference γ0 = 0.01.
    pub fn new(rng: &'a mut dyn RngCore, device: &Device) -> Self {
        Self {
            rng,
            gamma0: DEFAULT_GAMMA0,
            device: device.clone(),
            dtype: DType::F32,
        }
    }

    /// Conv weight `[out, in/g, kh, kw]` ~ N(0, sqrt(2 / (kh·kw·out))) (fan-out, groups ignored).
    pub fn conv_weight(&mut self, shape: [usize; 4]) -> Result<Tensor> {
        let fan_out = (shape[0] * shape[2] * shape[3]).max(1) as f64;
        let std = (2.0 / fan_out).sqrt();
        let t = normal_tensor(self.rng, &shape, 0.0, std, &self.device)?;
        Ok(t.to_dtype(self.dtype)?)
    }

    /// A tensor of zeros in this context's dtype and device.
    pub fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        Ok(Tensor::zeros(shape, self.dtype, &self.device)?)
    }
}

/// f32 tensor with entries ~ N(mean, std²) from `rng`.
pub fn normal_tensor(
    rng: &mut dyn RngCore,
    shape: &[usize],
    mean: f64,
    std: f64,
    device: &Device,
) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|_| {
            let z: f64 = StandardNormal.sample(rng);
            (mean + std * z) as f32
        })
        .collect();
    Ok(Tensor::from_vec(data, shape, device)?)
}

/// f32 tensor with entries ~ U(lo, hi) from `rng`.
pub fn uniform_tensor(
    rng: &mut dyn RngCore,
    shape: &[usize],
    lo: f64,
    hi: f64,
    device: &Device,
) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi) as f32).collect();
    Ok(Tensor::from_vec(data, shape, device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn same_seed_same_tensor() {
        let a = normal_tensor(
            &mut ChaCha8Rng::seed_from_u64(3),
            &[5, 4],
            0.0,
            1.0,
            &Device::Cpu,
        )
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
        let b = normal_tensor(
            &mut ChaCha8Rng::seed_from_u64(3),
            &[5, 4],
            0.0,
            1.0,
            &Device::Cpu,
        )
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
        assert_eq!(a, b);
        assert!(a.iter().any(|v| *v != a[0]));
    }

    #[test]
    fn conv_weight_has_fan_out_std() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut ctx = InitCtx::new(&mut rng, &Device::Cpu);
        let w = ctx.conv_weight([64, 16, 3, 3]).unwrap();
        let v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let var = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64;
        let want = 2.0 / (64.0 * 9.0);
        assert!((var / want - 1.0).abs() < 0.1, "var {var} want {want}");
    }
}
