//! Own batch norm (docs/ARCHITECTURE.md "Core model"; docs/REFERENCE.md "Initialisation of a grown
//! branch", "The grown block" step 4). Every branch ends in one. Train mode normalises with the
//! batch statistics (gradients flow through them) and updates the running statistics with momentum
//! and the unbiased variance, as PyTorch does; eval mode uses the running statistics; calibration
//! mode (PyTorch's `momentum=None`) uses batch statistics and keeps a cumulative average of them;
//! `reset` restores μ = 0, σ² = 1. candle_nn's BN has neither calibration nor reset.
//! In the online block form (`form.rs`) a batch norm inside a block is a *scale*: `γ·x + β` in
//! every mode, no statistics, folded as μ = 0, σ² = 1, ε = 0.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor, Var};

use crate::error::{Error, Result};
use crate::tensor::{join_path, TensorRole, TensorVisitor};

/// PyTorch's default ε.
pub const BN_EPS: f64 = 1e-5;
/// PyTorch's default momentum.
pub const BN_MOMENTUM: f64 = 0.1;

/// The eval-mode parameters of a batch norm (detached copies): what a kernel folds.
#[derive(Clone, Debug)]
pub struct BnEval {
    pub gamma: Tensor,
    pub beta: Tensor,
    pub mean: Tensor,
    pub var: Tensor,
    pub eps: f64,
}

impl BnEval {
    /// Per-channel scale `s = γ / sqrt(σ² + ε)`.
    pub fn scale(&self) -> Result<Tensor> {
        Ok((&self.gamma / (&self.var + self.eps)?.sqrt()?)?)
    }

    /// The eval-mode output for a zero input: `β − s·μ` (DBB's BN-then-pad value, docs/REFERENCE.md
    /// "Branch types").
    pub fn zero_input_output(&self) -> Result<Tensor> {
        Ok((&self.beta - (self.scale()? * &self.mean)?)?)
    }
}

/// Batch normalisation over `[N, C, H, W]` with learnable γ, β.
#[derive(Debug)]
pub struct BatchNorm {
    num_features: usize,
    eps: f64,
    momentum: f64,
    weight: Var,
    bias: Var,
    running_mean: Var,
    running_var: Var,
    /// `Some(n)` while calibrating: `n` batches averaged so far.
    calibration: Mutex<Option<u64>>,
    /// The online form's scale: `γ·x + β`, no statistics (`form.rs`).
    scale_form: AtomicBool,
}

impl BatchNorm {
    /// γ = 1, β = 0, μ = 0, σ² = 1, ε = 1e-5, momentum 0.1.
    pub fn new(num_features: usize, dtype: DType, device: &Device) -> Result<Self> {
        crate::init::checked_elements(&[num_features, 4])?;
        Ok(Self {
            num_features,
            eps: BN_EPS,
            momentum: BN_MOMENTUM,
            weight: Var::ones(num_features, dtype, device)?,
            bias: Var::zeros(num_features, dtype, device)?,
            running_mean: Var::zeros(num_features, dtype, device)?,
            running_var: Var::ones(num_features, dtype, device)?,
            calibration: Mutex::new(None),
            scale_form: AtomicBool::new(false),
        })
    }

    pub fn num_features(&self) -> usize {
        self.num_features
    }

    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// γ (a live view of the parameter).
    pub fn gamma(&self) -> &Var {
        &self.weight
    }

    /// β (a live view of the parameter).
    pub fn beta(&self) -> &Var {
        &self.bias
    }

    /// Sets every γ to `value`.
    pub fn set_gamma(&self, value: f64) -> Result<()> {
        let t =
            (Tensor::ones(self.num_features, self.weight.dtype(), self.weight.device())? * value)?;
        Ok(self.weight.set(&t)?)
    }

    /// Sets γ and β per channel (`[C]` tensors).
    pub fn set_affine(&self, gamma: &Tensor, beta: &Tensor) -> Result<()> {
        self.weight.set(&gamma.to_dtype(self.weight.dtype())?)?;
        self.bias.set(&beta.to_dtype(self.bias.dtype())?)?;
        Ok(())
    }

    /// Resets parameters (γ = `gamma`, β = 0) and running statistics (μ = 0, σ² = 1).
    pub fn reset(&self, gamma: f64) -> Result<()> {
        self.set_gamma(gamma)?;
        self.bias.set(&self.bias.zeros_like()?)?;
        self.reset_running_stats()
    }

    /// μ = 0, σ² = 1.
    pub fn reset_running_stats(&self) -> Result<()> {
        self.running_mean.set(&self.running_mean.zeros_like()?)?;
        self.running_var.set(&self.running_var.ones_like()?)?;
        Ok(())
    }

    /// Turns this batch norm into the online form's scale: from now on every forward is
    /// `γ·x + β` (no statistics, no running averages), and it folds as μ = 0, σ² = 1, ε = 0.
    pub fn set_scale_form(&self) {
        self.scale_form.store(true, Ordering::Relaxed);
    }

    /// Whether this is an online-form scale.
    pub fn is_scale_form(&self) -> bool {
        self.scale_form.load(Ordering::Relaxed)
    }

    /// Enters calibration: statistics reset, then every forward (whatever its `train` flag)
    /// normalises with batch statistics and folds them into a cumulative average.
    /// A scale has nothing to calibrate: it stays as it is.
    pub fn begin_calibration(&self) -> Result<()> {
        if self.is_scale_form() {
            return Ok(());
        }
        self.reset_running_stats()?;
        *self.lock_calibration() = Some(0);
        Ok(())
    }

    /// Leaves calibration; returns how many batches were averaged.
    pub fn end_calibration(&self) -> u64 {
        self.lock_calibration().take().unwrap_or(0)
    }

    /// Whether calibration is on.
    pub fn is_calibrating(&self) -> bool {
        self.lock_calibration().is_some()
    }

    fn lock_calibration(&self) -> std::sync::MutexGuard<'_, Option<u64>> {
        // A poisoned lock only means another thread panicked mid-forward; the counter is
        // still a plain integer, so keep using it.
        self.calibration
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Detached copies of γ, β, μ, σ², ε: what fusion folds. Inside
    /// [`crate::form::live_kernels`], γ and β are the parameters themselves (differentiable).
    /// A scale (online form) folds as μ = 0, σ² = 1, ε = 0, i.e. exactly `γ·x + β`.
    pub fn eval_params(&self) -> Result<BnEval> {
        let (gamma, beta) = if crate::form::live_on() {
            (
                self.weight.as_tensor().clone(),
                self.bias.as_tensor().clone(),
            )
        } else {
            (
                self.weight.as_detached_tensor().copy()?,
                self.bias.as_detached_tensor().copy()?,
            )
        };
        if self.is_scale_form() {
            return Ok(BnEval {
                mean: gamma.zeros_like()?,
                var: gamma.ones_like()?,
                gamma,
                beta,
                eps: 0.0,
            });
        }
        Ok(BnEval {
            gamma,
            beta,
            mean: self.running_mean.as_detached_tensor().copy()?,
            var: self.running_var.as_detached_tensor().copy()?,
            eps: self.eps,
        })
    }

    /// Overwrites the running statistics (for tests, checkpoint loading and calibration tools).
    pub fn set_running_stats(&self, mean: &Tensor, var: &Tensor) -> Result<()> {
        self.running_mean.set(mean)?;
        self.running_var.set(var)?;
        Ok(())
    }

    /// Normalises `x` (`[N, C, H, W]`).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.check_channels(x.dims())?;
        if !self.uses_batch_stats(train) {
            return self.forward_eval(x);
        }
        if crate::sync_bn::sync_bn_on() {
            return self.forward_global_stats(x);
        }
        let count = self.batch_count(x.dims())?;
        let out = dyrep_kernels::batch_norm_train(
            x,
            self.weight.as_tensor(),
            self.bias.as_tensor(),
            self.eps,
        )?;
        self.record_batch_stats(&out.mean, &out.var, count)?;
        Ok(out.y)
    }

    /// Batch statistics of every process's batch (synchronised batch norm, `crate::sync_bn`),
    /// as a composition of candle ops around the two collectives.
    fn forward_global_stats(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.num_features;
        let (mean, var, count) = crate::sync_bn::global_batch_stats(x)?;
        let scale = (self.weight.as_tensor() / (&var + self.eps)?.sqrt()?)?;
        let y = x
            .broadcast_sub(&mean.reshape((1, c, 1, 1))?)?
            .broadcast_mul(&scale.reshape((1, c, 1, 1))?)?
            .broadcast_add(&self.bias.as_tensor().reshape((1, c, 1, 1))?)?;
        self.record_batch_stats(&mean, &var, count)?;
        Ok(y)
    }

    /// Whether a forward normalises with batch statistics: in train mode or while calibrating
    /// (never for a scale).
    pub fn uses_batch_stats(&self, train: bool) -> bool {
        !self.is_scale_form() && (train || self.is_calibrating())
    }

    pub(crate) fn check_channels(&self, dims: &[usize]) -> Result<()> {
        match dims {
            [_, c, _, _] if *c == self.num_features => Ok(()),
            _ => Err(Error::ShapeMismatch {
                context: "batch norm input [N, C, H, W]".into(),
                expected: vec![self.num_features],
                got: dims.to_vec(),
            }),
        }
    }

    /// Values per channel of a batch-statistics forward on `dims`; one is an error.
    pub(crate) fn batch_count(&self, dims: &[usize]) -> Result<usize> {
        let count = dims[0] * dims[2..].iter().product::<usize>();
        if count < 2 {
            return Err(Error::SingleValueBatch {
                context: format!("{} channels, input {:?}", self.num_features, dims),
            });
        }
        Ok(count)
    }

    /// The running mean (updated by training steps, not by the optimizer).
    pub fn running_mean(&self) -> &Var {
        &self.running_mean
    }

    /// The running (unbiased) variance.
    pub fn running_var(&self) -> &Var {
        &self.running_var
    }

    /// The weight the next [`Self::record_batch_stats`] gives the batch: the momentum in
    /// training, `1/(batches seen + 1)` while calibrating.
    pub(crate) fn next_update_factor(&self) -> f64 {
        match *self.lock_calibration() {
            Some(seen) => 1.0 / (seen + 1) as f64,
            None => self.momentum,
        }
    }

    /// Folds batch statistics (mean, biased variance over `count` values) into the running
    /// ones: momentum in training, a cumulative average while calibrating; unbiased variance,
    /// no graph.
    pub(crate) fn record_batch_stats(
        &self,
        mean: &Tensor,
        var: &Tensor,
        count: usize,
    ) -> Result<()> {
        let dtype = self.running_mean.dtype();
        let batch_mean = mean.detach().to_dtype(dtype)?;
        let batch_var = (var.detach().to_dtype(dtype)? * (count as f64 / (count - 1) as f64))?;
        let factor = {
            let mut cal = self.lock_calibration();
            match cal.as_mut() {
                Some(seen) => {
                    *seen += 1;
                    1.0 / *seen as f64
                }
                None => self.momentum,
            }
        };
        let rm = self.running_mean.as_detached_tensor();
        let rv = self.running_var.as_detached_tensor();
        let new_mean = ((&rm * (1.0 - factor))? + (batch_mean * factor)?)?;
        let new_var = ((&rv * (1.0 - factor))? + (batch_var * factor)?)?;
        self.running_mean.set(&new_mean)?;
        self.running_var.set(&new_var)?;
        Ok(())
    }

    fn forward_eval(&self, x: &Tensor) -> Result<Tensor> {
        let (scale, shift) = self.eval_affine()?;
        Ok(dyrep_kernels::channel_affine(x, &scale, &shift)?)
    }

    /// Eval mode as `x·scale + shift` with `scale = γ/sqrt(σ²+ε)`, `shift = β − scale·μ`
    /// (graph to γ and β, not to the running statistics).
    pub(crate) fn eval_affine(&self) -> Result<(Tensor, Tensor)> {
        if self.is_scale_form() {
            return Ok((
                self.weight.as_tensor().clone(),
                self.bias.as_tensor().clone(),
            ));
        }
        let rm = self.running_mean.as_detached_tensor();
        let rv = self.running_var.as_detached_tensor();
        let scale = self.weight.as_tensor().div(&(rv + self.eps)?.sqrt()?)?;
        let shift = (self.bias.as_tensor() - (&scale * rm)?)?;
        Ok((scale, shift))
    }

    /// Visits γ, β, μ, σ² as `{prefix}.weight`, `.bias`, `.running_mean`, `.running_var`.
    pub fn visit(&self, prefix: &str, f: &mut TensorVisitor<'_>) {
        f(
            &join_path(prefix, "weight"),
            &self.weight,
            TensorRole::BnWeight,
        );
        f(&join_path(prefix, "bias"), &self.bias, TensorRole::BnBias);
        f(
            &join_path(prefix, "running_mean"),
            &self.running_mean,
            TensorRole::BnRunningMean,
        );
        f(
            &join_path(prefix, "running_var"),
            &self.running_var,
            TensorRole::BnRunningVar,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::normal_tensor;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn v(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    fn x(seed: u64) -> Tensor {
        let t = normal_tensor(
            &mut ChaCha8Rng::seed_from_u64(seed),
            &[4, 3, 5, 6],
            0.0,
            2.0,
            &Device::Cpu,
        )
        .unwrap();
        (t + 1.5).unwrap()
    }

    #[test]
    fn train_mode_normalises_and_updates_with_unbiased_var() {
        let bn = BatchNorm::new(3, DType::F32, &Device::Cpu).unwrap();
        let x = x(1);
        let y = bn.forward_t(&x, true).unwrap();
        // Output per-channel mean ≈ 0 and biased variance ≈ 1.
        let m = v(&y
            .mean_keepdim(0)
            .unwrap()
            .mean_keepdim(2)
            .unwrap()
            .mean_keepdim(3)
            .unwrap());
        assert!(m.iter().all(|m| m.abs() < 1e-5), "{m:?}");
        // Running mean = 0.1·batch mean, running var = 0.9 + 0.1·unbiased var.
        let xs = x.transpose(0, 1).unwrap().flatten_from(1).unwrap();
        let bm = v(&xs.mean(1).unwrap());
        let n = 4.0 * 30.0;
        let bv: Vec<f32> = (0..3)
            .map(|c| {
                let row = v(&xs.get(c).unwrap());
                let mu = row.iter().sum::<f32>() / n;
                row.iter().map(|r| (r - mu).powi(2)).sum::<f32>() / (n - 1.0)
            })
            .collect();
        let p = bn.eval_params().unwrap();
        for c in 0..3 {
            assert!((v(&p.mean)[c] - 0.1 * bm[c]).abs() < 1e-5);
            assert!((v(&p.var)[c] - (0.9 + 0.1 * bv[c])).abs() < 1e-4);
        }
    }

    #[test]
    fn gradients_flow_through_batch_statistics() {
        // With batch statistics, Σ y is independent of x, so d(Σy)/dx must be ≈ 0 everywhere.
        let bn = BatchNorm::new(3, DType::F32, &Device::Cpu).unwrap();
        let xv = Var::from_tensor(&x(2)).unwrap();
        let y = bn.forward_t(xv.as_tensor(), true).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        let g = v(grads.get(xv.as_tensor()).unwrap());
        assert!(g.iter().all(|g| g.abs() < 1e-5), "{:?}", &g[..4]);
        // γ and β get gradients.
        assert!(grads.get(bn.gamma().as_tensor()).is_some());
        assert!(grads.get(bn.beta().as_tensor()).is_some());
    }

    #[test]
    fn eval_mode_uses_running_stats() {
        let bn = BatchNorm::new(3, DType::F32, &Device::Cpu).unwrap();
        let dev = Device::Cpu;
        let mean = Tensor::new(&[0.5f32, -1.0, 2.0], &dev).unwrap();
        let var = Tensor::new(&[4.0f32, 0.25, 1.0], &dev).unwrap();
        bn.set_running_stats(&mean, &var).unwrap();
        bn.set_gamma(2.0).unwrap();
        let x = x(3);
        let y = bn.forward_t(&x, false).unwrap();
        let xv = v(&x.get(0).unwrap().get(1).unwrap());
        let yv = v(&y.get(0).unwrap().get(1).unwrap());
        for (a, b) in xv.iter().zip(&yv) {
            let want = 2.0 * (a + 1.0) / (0.25f32 + 1e-5).sqrt();
            assert!((want - b).abs() < 1e-4);
        }
        // Eval mode leaves the statistics alone.
        assert_eq!(v(&bn.eval_params().unwrap().mean), vec![0.5, -1.0, 2.0]);
    }

    #[test]
    fn calibration_is_a_cumulative_average() {
        let bn = BatchNorm::new(3, DType::F32, &Device::Cpu).unwrap();
        bn.begin_calibration().unwrap();
        let (a, b, c) = (x(4), x(5), x(6));
        for t in [&a, &b, &c] {
            bn.forward_t(t, false).unwrap();
        }
        assert_eq!(bn.end_calibration(), 3);
        let mean_of = |t: &Tensor| {
            v(&t.mean_keepdim(0)
                .unwrap()
                .mean_keepdim(2)
                .unwrap()
                .mean_keepdim(3)
                .unwrap())
        };
        let (ma, mb, mc) = (mean_of(&a), mean_of(&b), mean_of(&c));
        let got = v(&bn.eval_params().unwrap().mean);
        for ch in 0..3 {
            let want = (ma[ch] + mb[ch] + mc[ch]) / 3.0;
            assert!((got[ch] - want).abs() < 1e-5, "{} vs {}", got[ch], want);
        }
        // Back to eval semantics afterwards.
        let before = bn.eval_params().unwrap().mean;
        bn.forward_t(&a, false).unwrap();
        assert_eq!(v(&before), v(&bn.eval_params().unwrap().mean));
    }

    #[test]
    fn reset_restores_defaults() {
        let bn = BatchNorm::new(3, DType::F32, &Device::Cpu).unwrap();
        bn.forward_t(&x(7), true).unwrap();
        bn.reset(0.01).unwrap();
        let p = bn.eval_params().unwrap();
        assert_eq!(v(&p.mean), vec![0.0; 3]);
        assert_eq!(v(&p.var), vec![1.0; 3]);
        assert_eq!(v(&p.gamma), vec![0.01; 3]);
    }

    #[test]
    fn single_value_per_channel_is_an_error_not_nan() {
        let bn = BatchNorm::new(2, DType::F32, &Device::Cpu).unwrap();
        let x = Tensor::ones((1, 2, 1, 1), DType::F32, &Device::Cpu).unwrap();
        let e = bn.forward_t(&x, true).unwrap_err();
        assert!(matches!(e, Error::SingleValueBatch { .. }));
        assert!(bn.forward_t(&x, false).is_ok());
    }
}
