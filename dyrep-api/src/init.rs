//! Seeded initialisation: the `InitCtx` every op builds from, and tensors drawn from the
//! project's own RNG (candle cannot seed its CPU RNG). Conv init is the reference's
//! N(0, sqrt(2 / (kh·kw·C_out))) (docs/REFERENCE.md "Initialisation of a grown branch", "Models"),
//! or PyTorch's default for the baselines' blocks (docs/REFERENCE.md "Baselines").

use candle_core::{DType, Device, Tensor};
use rand::{Rng, RngCore};
use rand_distr::{Distribution, StandardNormal};

use crate::error::{Error, Result};

/// The reference's γ for the last BN of a freshly grown branch (docs/REFERENCE.md "Initialisation
/// of a grown branch").
pub const DEFAULT_GAMMA0: f64 = 0.01;

/// How [`InitCtx::conv_weight`] draws a conv's weight `[out, in/g, kh, kw]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvInit {
    /// N(0, 2 / (kh·kw·out)), groups ignored: the reference's models and grown branches
    /// (kaiming-normal, fan-out, as its `_init_branch`).
    #[default]
    FanOutNormal,
    /// U(−1/√fan_in, 1/√fan_in) with fan_in = (in/g)·kh·kw, variance 1 / (3·fan_in): PyTorch's
    /// default for `nn.Conv2d` (kaiming-uniform with a = √5), which the DBB and RepVGG
    /// baselines' blocks keep.
    PytorchDefault,
}

/// What an op needs to create its parameters: the RNG, the initial γ of its last BN, how conv
/// weights are drawn, and where the tensors live.
pub struct InitCtx<'a> {
    pub rng: &'a mut dyn RngCore,
    /// γ of the last BN of a new (non-main) branch.
    pub gamma0: f64,
    /// The distribution of new conv weights.
    pub conv_init: ConvInit,
    pub device: Device,
    pub dtype: DType,
    /// The form of the blocks built with this context (`Slot::grow`, `Slot::from_arch`).
    pub block_form: crate::form::BlockForm,
}

impl<'a> InitCtx<'a> {
    /// A context on `device` in f32 with the reference γ0 = 0.01.
    pub fn new(rng: &'a mut dyn RngCore, device: &Device) -> Self {
        Self {
            rng,
            gamma0: DEFAULT_GAMMA0,
            conv_init: ConvInit::FanOutNormal,
            device: device.clone(),
            dtype: DType::F32,
            block_form: crate::form::BlockForm::Bn,
        }
    }

    /// Conv weight `[out, in/g, kh, kw]` drawn as `conv_init` says.
    pub fn conv_weight(&mut self, shape: [usize; 4]) -> Result<Tensor> {
        let t = match self.conv_init {
            ConvInit::FanOutNormal => {
                let fan_out = (shape[0] * shape[2] * shape[3]).max(1) as f64;
                normal_tensor(self.rng, &shape, 0.0, (2.0 / fan_out).sqrt(), &self.device)?
            }
            ConvInit::PytorchDefault => {
                let fan_in = (shape[1] * shape[2] * shape[3]).max(1) as f64;
                let bound = 1.0 / fan_in.sqrt();
                uniform_tensor(self.rng, &shape, -bound, bound, &self.device)?
            }
        };
        Ok(t.to_dtype(self.dtype)?)
    }

    /// A tensor of zeros in this context's dtype and device.
    pub fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        checked_elements(shape)?;
        Ok(Tensor::zeros(shape, self.dtype, &self.device)?)
    }
}

/// The bytes of memory this machine has available now (`MemAvailable` of /proc/meminfo, read
/// at each call, so what a model built so far took is no longer counted as free); `u64::MAX`
/// where the platform does not say.
pub fn available_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            kib.checked_mul(1024)
        })
        .unwrap_or(u64::MAX)
}

/// The element count of an f32 tensor of `shape`, refused (before anything is allocated) when it
/// overflows or would not fit in the memory available.
pub fn checked_elements(shape: &[usize]) -> Result<usize> {
    let too_large = |bytes: u64| Error::TooLarge {
        shape: shape.to_vec(),
        bytes,
        available: available_memory(),
    };
    let n = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| too_large(u64::MAX))?;
    let bytes = (n as u64).saturating_mul(4);
    // Below this no tensor matters on its own (and /proc/meminfo is not read for it).
    const SMALL: u64 = 64 << 20;
    if bytes > SMALL && bytes > available_memory() {
        return Err(too_large(bytes));
    }
    Ok(n)
}

/// f32 tensor with entries ~ N(mean, std²) from `rng`.
pub fn normal_tensor(
    rng: &mut dyn RngCore,
    shape: &[usize],
    mean: f64,
    std: f64,
    device: &Device,
) -> Result<Tensor> {
    let n = checked_elements(shape)?;
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
    let n = checked_elements(shape)?;
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

    /// PyTorch's default: uniform within ±1/√fan_in, fan_in counting the inputs of one group,
    /// so the variance is 1/(3·fan_in). The mean of w² over n draws has relative standard
    /// deviation √(Var(w²)/n)/E[w²] = √(0.8/n) (Var(w²) = 4b⁴/45, E[w²] = b²/3); 5 of those
    /// bound the test (n = 64·8·3·3 = 4,608: 0.066).
    #[test]
    fn pytorch_default_conv_init_is_uniform_over_one_over_sqrt_fan_in() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut ctx = InitCtx::new(&mut rng, &Device::Cpu);
        ctx.conv_init = ConvInit::PytorchDefault;
        // 16 inputs in 2 groups: fan_in = 8·3·3, not 16·3·3 or 64·3·3.
        let w = ctx.conv_weight([64, 8, 3, 3]).unwrap();
        let v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let bound = 1.0 / (72f64).sqrt();
        let max = v.iter().fold(0f64, |m, x| m.max((*x as f64).abs()));
        assert!(max <= bound, "max |w| {max} over the bound {bound}");
        // The largest of 4,608 uniform draws is within 0.2 % of the bound but for a 1e-4 chance
        // (0.998^4608).
        assert!(
            max > 0.998 * bound,
            "max |w| {max} far below the bound {bound}"
        );
        let n = v.len() as f64;
        let var = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / n;
        let want = 1.0 / (3.0 * 72.0);
        let tol = 5.0 * (0.8 / n).sqrt();
        assert!(
            (var / want - 1.0).abs() < tol,
            "var {var} want {want} ± {tol}"
        );
    }
}
