//! Building blocks the branch ops are made of: a conv with per-axis padding (1×k, k×1), DBB's
//! BN-then-pad (docs/REFERENCE.md "Branch types"), and differentiable average/max pooling with
//! padding and any stride (candle's pools have no padding, and no backward unless the kernel equals
//! the stride). The arithmetic runs in dyrep-kernels (own CPU kernels, candle's ops on other
//! devices).

use candle_core::{Tensor, Var};

use crate::bn::BatchNorm;
use crate::error::{Error, Result};
use crate::init::InitCtx;
use crate::kernel::Kernel;
use crate::tensor::{join_path, TensorRole, TensorVisitor};

/// A (kh × kw) conv with its own stride, per-axis zero padding, groups and optional bias.
#[derive(Debug)]
pub struct Conv2dLayer {
    weight: Var,
    bias: Option<Var>,
    stride: usize,
    padding: (usize, usize),
    groups: usize,
}

impl Conv2dLayer {
    /// A conv with weight `[out, in/groups, kh, kw]` initialised as the reference (fan-out normal).
    pub fn new(
        ctx: &mut InitCtx<'_>,
        shape: [usize; 4],
        stride: usize,
        padding: (usize, usize),
        groups: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = Var::from_tensor(&ctx.conv_weight(shape)?)?;
        let bias = if bias {
            Some(Var::from_tensor(&ctx.zeros(&[shape[0]])?)?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            stride,
            padding,
            groups,
        })
    }

    /// A conv holding the given tensors (copied into fresh variables).
    pub fn from_tensors(
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        padding: (usize, usize),
        groups: usize,
    ) -> Result<Self> {
        let weight = Var::from_tensor(&weight.detach().copy()?)?;
        let bias = bias
            .map(|b| Var::from_tensor(&b.detach().copy()?))
            .transpose()?;
        Ok(Self {
            weight,
            bias,
            stride,
            padding,
            groups,
        })
    }

    pub fn weight(&self) -> &Var {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Var> {
        self.bias.as_ref()
    }

    pub fn stride(&self) -> usize {
        self.stride
    }

    pub fn padding(&self) -> (usize, usize) {
        self.padding
    }

    pub fn groups(&self) -> usize {
        self.groups
    }

    /// `(out, in/groups, kh, kw)`.
    pub fn dims4(&self) -> Result<(usize, usize, usize, usize)> {
        Ok(self.weight.dims4()?)
    }

    /// Re-draws the weight (reference init) and zeroes the bias.
    pub fn reinit(&self, ctx: &mut InitCtx<'_>) -> Result<()> {
        let (o, i, kh, kw) = self.dims4()?;
        self.weight.set(&ctx.conv_weight([o, i, kh, kw])?)?;
        if let Some(b) = &self.bias {
            b.set(&b.zeros_like()?)?;
        }
        Ok(())
    }

    /// Conv forward with gradients to weight and bias (own CPU kernel, candle's ops elsewhere).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = dyrep_kernels::conv2d(
            x,
            self.weight.as_tensor(),
            self.stride,
            self.padding,
            self.groups,
        )?;
        match &self.bias {
            Some(b) => {
                let out = b.dim(0)?;
                Ok(y.broadcast_add(&b.as_tensor().reshape((1, out, 1, 1))?)?)
            }
            None => Ok(y),
        }
    }

    /// The conv as a kernel (detached copy; zero bias if it has none). Inside
    /// [`crate::form::live_kernels`] the parameters themselves (differentiable, no copy).
    pub fn kernel(&self) -> Result<Kernel> {
        if crate::form::live_on() {
            let w = self.weight.as_tensor().clone();
            return match &self.bias {
                Some(b) => Kernel::new(w, b.as_tensor().clone()),
                None => Kernel::from_weight(w),
            };
        }
        let w = self.weight.as_detached_tensor().copy()?;
        match &self.bias {
            Some(b) => Kernel::new(w, b.as_detached_tensor().copy()?),
            None => Kernel::from_weight(w),
        }
    }

    /// Output spatial size for an `h × w` input.
    pub fn output_hw(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        let (_, _, kh, kw) = self.dims4()?;
        let (ph, pw) = self.padding;
        let span = |n: usize, k: usize, p: usize| {
            (n + 2 * p >= k).then(|| (n + 2 * p - k) / self.stride + 1)
        };
        match (span(h, kh, ph), span(w, kw, pw)) {
            (Some(a), Some(b)) => Ok((a, b)),
            _ => Err(Error::ShapeMismatch {
                context: format!("conv input too small for a {kh}x{kw} kernel"),
                expected: vec![kh, kw],
                got: vec![h, w],
            }),
        }
    }

    /// Multiply-accumulates at batch 1 for an `h × w` input (docs/REFERENCE.md "MACs and params").
    pub fn macs(&self, h: usize, w: usize) -> Result<u64> {
        let (o, i, kh, kw) = self.dims4()?;
        let (ho, wo) = self.output_hw(h, w)?;
        Ok((o * i * kh * kw * ho * wo) as u64)
    }

    /// Visits `{prefix}.weight` and, if present, `{prefix}.bias`.
    pub fn visit(&self, prefix: &str, f: &mut TensorVisitor<'_>) {
        f(
            &join_path(prefix, "weight"),
            &self.weight,
            TensorRole::ConvWeight,
        );
        if let Some(b) = &self.bias {
            f(&join_path(prefix, "bias"), b, TensorRole::ConvBias);
        }
    }

    /// Adds `delta` to weight and bias (creating a zero bias first if there is none).
    pub fn add_kernel(&mut self, delta: &Kernel) -> Result<()> {
        let w = self.weight.as_detached_tensor();
        if w.dims() != delta.weight.dims() {
            return Err(Error::ShapeMismatch {
                context: "kernel added to a conv".into(),
                expected: w.dims().to_vec(),
                got: delta.weight.dims().to_vec(),
            });
        }
        self.weight.set(&(&w + &delta.weight)?)?;
        let bias = match self.bias.take() {
            Some(b) => b,
            None => Var::zeros(delta.bias.dims(), delta.bias.dtype(), delta.bias.device())?,
        };
        bias.set(&(bias.as_detached_tensor() + &delta.bias)?)?;
        self.bias = Some(bias);
        Ok(())
    }
}

/// DBB's `BNAndPad`: batch norm, then pad by `pad` on every side with the per-channel value
/// the BN outputs (in eval mode) for a zero input, `β − γ·μ/sqrt(σ²+ε)`. That makes the
/// following unpadded k×k conv (or pool) equal one k×k conv on the zero-padded input of the
/// preceding 1×1 conv, so the merge is exact at the borders. The pad value comes from the running
/// statistics even in train mode and carries no gradient, as in the reference.
#[derive(Debug)]
pub struct BnAndPad {
    bn: BatchNorm,
    pad: usize,
}

impl BnAndPad {
    pub fn new(bn: BatchNorm, pad: usize) -> Self {
        Self { bn, pad }
    }

    pub fn bn(&self) -> &BatchNorm {
        &self.bn
    }

    pub fn pad(&self) -> usize {
        self.pad
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.bn.forward_t(x, train)?;
        self.pad_output(&y)
    }

    /// `conv` → this BN → pad, with the conv and the BN fused ([`conv_bn`]).
    pub fn forward_after_conv(
        &self,
        conv: &Conv2dLayer,
        x: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let y = conv_bn(conv, &self.bn, x, train, false)?;
        self.pad_output(&y)
    }

    fn pad_output(&self, y: &Tensor) -> Result<Tensor> {
        if self.pad == 0 {
            return Ok(y.clone());
        }
        if self.bn.is_scale_form() {
            // The online form's scale gives β for a zero input; padding with β as
            // `pad0(y − β) + β` keeps β's gradient through the border, as the assembled kernel's
            // bias (transIII) has it.
            let c = self.bn.num_features();
            let beta = self.bn.beta().as_tensor().reshape((1, c, 1, 1))?;
            let zeros = Tensor::zeros(c, y.dtype(), y.device())?;
            let shifted = dyrep_kernels::pad_const(&y.broadcast_sub(&beta)?, self.pad, &zeros)?;
            return Ok(shifted.broadcast_add(&beta)?);
        }
        let value = self.bn.eval_params()?.zero_input_output()?;
        Ok(dyrep_kernels::pad_const(y, self.pad, &value)?)
    }
}

/// Average pooling with a k×k window, zero padding counted in the average (PyTorch's
/// `count_include_pad=True`) and any stride, differentiable (dyrep-kernels; candle's own pool
/// has neither padding nor a backward unless kernel == stride).
pub fn avg_pool2d(x: &Tensor, k: usize, stride: usize, padding: usize) -> Result<Tensor> {
    Ok(dyrep_kernels::avg_pool2d(x, k, stride, padding)?)
}

/// conv → `bn` → optional ReLU. For a conv without bias the three run as one fused op with its
/// own backward (dyrep-kernels: one graph node instead of three, the hot path of training and
/// inference), with batch statistics or, in eval mode, the running ones; otherwise (and with
/// synchronised batch norm, whose statistics are not the local batch's) as separate ops.
pub fn conv_bn(
    conv: &Conv2dLayer,
    bn: &BatchNorm,
    x: &Tensor,
    train: bool,
    relu: bool,
) -> Result<Tensor> {
    if let Some(params) = fusable(conv, bn)? {
        if !bn.uses_batch_stats(train) {
            let (scale, shift) = bn.eval_affine()?;
            let w = conv.weight().as_tensor();
            return Ok(dyrep_kernels::conv_affine(
                x, w, params, &scale, &shift, relu,
            )?);
        }
        if !crate::sync_bn::sync_bn_on() {
            return conv_bn_batch_stats(conv, bn, x, params, relu, None);
        }
    }
    let y = bn.forward_t(&conv.forward(x)?, train)?;
    if relu {
        self::relu(&y)
    } else {
        Ok(y)
    }
}

/// conv → `bn` with batch statistics → optional ReLU → max pool as one fused op
/// ([`dyrep_kernels::conv_bn_max_pool_train`]: the unpooled activation is never stored), for a
/// conv without bias whose BN normalises with batch statistics in this mode. `None` when the
/// unit does not fit that (or batch norm is synchronised); the caller then runs [`conv_bn`] and
/// [`max_pool2d`].
pub fn conv_bn_max_pool(
    conv: &Conv2dLayer,
    bn: &BatchNorm,
    x: &Tensor,
    train: bool,
    relu: bool,
    pool: dyrep_kernels::MaxPoolParams,
) -> Result<Option<Tensor>> {
    match fusable(conv, bn)? {
        Some(params) if bn.uses_batch_stats(train) && !crate::sync_bn::sync_bn_on() => {
            conv_bn_batch_stats(conv, bn, x, params, relu, Some(pool)).map(Some)
        }
        _ => Ok(None),
    }
}

/// The conv's geometry when it can be fused with `bn` (no bias, one BN channel per output).
fn fusable(conv: &Conv2dLayer, bn: &BatchNorm) -> Result<Option<dyrep_kernels::ConvParams>> {
    let (out_ch, _, _, _) = conv.weight().as_tensor().dims4()?;
    Ok(
        (conv.bias().is_none() && out_ch == bn.num_features()).then(|| dyrep_kernels::ConvParams {
            stride: conv.stride(),
            padding: conv.padding(),
            groups: conv.groups(),
        }),
    )
}

/// The fused train-mode conv → BN (→ ReLU) (→ max pool) op; records the batch statistics in
/// `bn`.
fn conv_bn_batch_stats(
    conv: &Conv2dLayer,
    bn: &BatchNorm,
    x: &Tensor,
    params: dyrep_kernels::ConvParams,
    relu: bool,
    pool: Option<dyrep_kernels::MaxPoolParams>,
) -> Result<Tensor> {
    weight_bn_batch_stats(conv.weight().as_tensor(), None, bn, x, params, relu, pool)
}

/// A kernel (any weight tensor, e.g. an online block's assembled one, and its bias) → `bn` with
/// batch statistics (→ ReLU) (→ max pool) as one fused op. The bias shifts the batch mean and
/// nothing else, so the op runs without it and `bn` records the mean plus the bias: the same
/// output and running statistics as `bn(conv(x) + bias)`. The bias gets no gradient (its exact
/// gradient through a batch-statistics BN is zero).
pub fn kernel_bn_train(
    kernel: &Kernel,
    bn: &BatchNorm,
    x: &Tensor,
    params: dyrep_kernels::ConvParams,
    relu: bool,
    pool: Option<dyrep_kernels::MaxPoolParams>,
) -> Result<Tensor> {
    weight_bn_batch_stats(
        &kernel.weight,
        Some(&kernel.bias),
        bn,
        x,
        params,
        relu,
        pool,
    )
}

fn weight_bn_batch_stats(
    w: &Tensor,
    bias: Option<&Tensor>,
    bn: &BatchNorm,
    x: &Tensor,
    params: dyrep_kernels::ConvParams,
    relu: bool,
    pool: Option<dyrep_kernels::MaxPoolParams>,
) -> Result<Tensor> {
    let shape = dyrep_kernels::ConvShape::new(
        x.dims(),
        w.dims(),
        params.stride,
        params.padding,
        params.groups,
    )?;
    let count = bn.batch_count(&shape.output_dims())?;
    let (gamma, beta) = (bn.gamma().as_tensor(), bn.beta().as_tensor());
    let out = match pool {
        None => dyrep_kernels::conv_bn_train(x, w, params, gamma, beta, bn.eps(), relu)?,
        Some(pool) => {
            dyrep_kernels::conv_bn_max_pool_train(x, w, params, gamma, beta, bn.eps(), relu, pool)?
        }
    };
    record_shifted(bn, &out.mean, bias, &out.var, count)?;
    Ok(out.y)
}

/// The conv of a [`conv_bn_stack`] unit: a weight (a plain conv's, or an online block's
/// assembled kernel, differentiable), its geometry, and a bias (the block's) that only shifts
/// the BN's recorded mean.
#[derive(Clone, Debug)]
pub struct StackConv {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub params: dyrep_kernels::ConvParams,
}

impl StackConv {
    /// A plain conv without bias whose `bn` normalises with the local batch's statistics (not
    /// synchronised ones) in this mode; `None` otherwise.
    pub fn plain(conv: &Conv2dLayer, bn: &BatchNorm, train: bool) -> Result<Option<StackConv>> {
        if !bn.uses_batch_stats(train) || crate::sync_bn::sync_bn_on() {
            return Ok(None);
        }
        Ok(fusable(conv, bn)?.map(|params| StackConv {
            weight: conv.weight().as_tensor().clone(),
            bias: None,
            params,
        }))
    }

    /// A kernel in a geometry (an online block's assembled one) before `bn`, when `bn`
    /// normalises with the local batch's statistics in this mode; `None` otherwise.
    pub fn kernel(
        kernel: &Kernel,
        params: dyrep_kernels::ConvParams,
        bn: &BatchNorm,
        train: bool,
    ) -> Option<StackConv> {
        (bn.uses_batch_stats(train) && !crate::sync_bn::sync_bn_on()).then(|| StackConv {
            weight: kernel.weight.clone(),
            bias: Some(kernel.bias.clone()),
            params,
        })
    }
}

/// Records in `bn` the statistics of `conv(x) + bias` from those of `conv(x)`: the bias shifts
/// the mean and nothing else.
fn record_shifted(
    bn: &BatchNorm,
    mean: &Tensor,
    bias: Option<&Tensor>,
    var: &Tensor,
    count: usize,
) -> Result<()> {
    match bias {
        Some(b) => {
            let shifted = (mean + b.detach().to_dtype(mean.dtype())?)?;
            bn.record_batch_stats(&shifted, var, count)
        }
        None => bn.record_batch_stats(mean, var, count),
    }
}

/// One unit of [`conv_bn_stack`]: the conv, its BN, whether a ReLU follows, and the max pool
/// after it, if any.
pub type StackUnit<'a> = (
    StackConv,
    &'a BatchNorm,
    bool,
    Option<dyrep_kernels::MaxPoolParams>,
);

/// A run of units (each built by [`StackConv::plain`] or [`StackConv::kernel`]) as one op
/// ([`dyrep_kernels::conv_bn_stack_train`]: the same arithmetic as [`conv_bn`] /
/// [`conv_bn_max_pool`] unit by unit, without candle's gradient bookkeeping between them);
/// records every BN's batch statistics (the mean plus the unit's bias, as
/// [`kernel_bn_train`]).
pub fn conv_bn_stack(units: &[StackUnit<'_>], x: &Tensor) -> Result<Tensor> {
    let mut args = Vec::with_capacity(units.len());
    let mut dims = x.dims().to_vec();
    let mut counts = Vec::with_capacity(units.len());
    for (conv, bn, relu, pool) in units {
        let w = &conv.weight;
        let (shape, next) = dyrep_kernels::conv_unit_dims(&dims, w.dims(), conv.params, *pool)?;
        if shape.out != bn.num_features() {
            return Err(Error::ShapeMismatch {
                context: "conv_bn_stack: a unit's BN".into(),
                expected: vec![shape.out],
                got: vec![bn.num_features()],
            });
        }
        counts.push(bn.batch_count(&shape.output_dims())?);
        dims = next;
        args.push(dyrep_kernels::StackUnitArgs {
            weight: w,
            conv: conv.params,
            gamma: bn.gamma().as_tensor(),
            beta: bn.beta().as_tensor(),
            eps: bn.eps(),
            relu: *relu,
            pool: *pool,
        });
    }
    let out = dyrep_kernels::conv_bn_stack_train(x, &args)?;
    for (((conv, bn, _, _), (mean, var)), count) in units.iter().zip(&out.stats).zip(counts) {
        record_shifted(bn, mean, conv.bias.as_ref(), var, count)?;
    }
    Ok(out.y)
}

/// `max(x, 0)` with a one-pass backward (dyrep-kernels on the CPU).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    Ok(dyrep_kernels::relu(x)?)
}

/// Max pooling with a k×k window, padding (ignored, as −∞) and any stride, differentiable
/// (dyrep-kernels; candle's own max-pool backward scales the gradient by 1/k²).
pub fn max_pool2d(x: &Tensor, k: usize, stride: usize, padding: usize) -> Result<Tensor> {
    Ok(dyrep_kernels::max_pool2d(x, k, stride, padding)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bn::BatchNorm;
    use crate::init::normal_tensor;
    use candle_core::{DType, Device};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn v(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Naive reference: average over the window of the zero-padded input.
    fn naive_avg(x: &Tensor, k: usize, s: usize, p: usize) -> Vec<f32> {
        let (n, c, h, w) = x.dims4().unwrap();
        let xv = v(x);
        let ho = (h + 2 * p - k) / s + 1;
        let wo = (w + 2 * p - k) / s + 1;
        let mut out = vec![];
        for b in 0..n {
            for ch in 0..c {
                for i in 0..ho {
                    for j in 0..wo {
                        let mut acc = 0f32;
                        for dy in 0..k {
                            for dx in 0..k {
                                let (y, xx) = (
                                    (i * s + dy) as isize - p as isize,
                                    (j * s + dx) as isize - p as isize,
                                );
                                if y >= 0 && xx >= 0 && (y as usize) < h && (xx as usize) < w {
                                    acc += xv[((b * c + ch) * h + y as usize) * w + xx as usize];
                                }
                            }
                        }
                        out.push(acc / (k * k) as f32);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn avg_pool_matches_naive_with_padding_and_stride() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for &(h, w, k, s, p) in &[
            (5, 6, 3, 1, 1),
            (7, 8, 3, 2, 1),
            (8, 7, 5, 2, 2),
            (6, 6, 3, 2, 0),
            (5, 5, 1, 2, 0),
        ] {
            let x = normal_tensor(&mut rng, &[2, 3, h, w], 0.0, 1.0, &Device::Cpu).unwrap();
            let y = avg_pool2d(&x, k, s, p).unwrap();
            let want = naive_avg(&x, k, s, p);
            let got = v(&y);
            assert_eq!(got.len(), want.len(), "{h}x{w} k{k} s{s} p{p}");
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn avg_pool_has_a_gradient_with_stride_ne_kernel() {
        let x = Var::from_tensor(&Tensor::ones((1, 1, 5, 5), DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        let y = avg_pool2d(x.as_tensor(), 3, 2, 1).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let gx = v(g.get(x.as_tensor()).unwrap());
        // The centre pixel (2,2) is in the windows of outputs (1,1) only -> 1/9; pixel (1,1) in 4
        // windows.
        assert!((gx[2 * 5 + 2] - 1.0 / 9.0).abs() < 1e-6);
        assert!((gx[5 + 1] - 4.0 / 9.0).abs() < 1e-6);
    }

    #[test]
    fn max_pool_with_padding_and_stride_matches_naive_and_has_gradients() {
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        let x = normal_tensor(&mut rng, &[1, 2, 7, 6], 0.0, 1.0, &Device::Cpu).unwrap();
        let y = max_pool2d(&x, 3, 2, 1).unwrap();
        assert_eq!(y.dims(), &[1, 2, 4, 3]);
        let xv = v(&x);
        let yv = v(&y);
        for ch in 0..2 {
            for i in 0..4 {
                for j in 0..3 {
                    let mut m = f32::NEG_INFINITY;
                    for dy in 0..3 {
                        for dx in 0..3 {
                            let (yy, xx) = ((i * 2 + dy) as isize - 1, (j * 2 + dx) as isize - 1);
                            if yy >= 0 && xx >= 0 && yy < 7 && xx < 6 {
                                m = m.max(xv[(ch * 7 + yy as usize) * 6 + xx as usize]);
                            }
                        }
                    }
                    assert_eq!(yv[(ch * 4 + i) * 3 + j], m);
                }
            }
        }
        let xv = Var::from_tensor(&x).unwrap();
        let y = max_pool2d(xv.as_tensor(), 2, 1, 0).unwrap();
        assert_eq!(y.dims(), &[1, 2, 6, 5]);
        let g = y.sum_all().unwrap().backward().unwrap();
        let total: f32 = v(g.get(xv.as_tensor()).unwrap()).iter().sum();
        assert!((total - 60.0).abs() < 1e-4, "{total}");
    }

    #[test]
    fn bn_and_pad_fills_border_with_zero_input_output() {
        let bn = BatchNorm::new(2, DType::F32, &Device::Cpu).unwrap();
        let dev = Device::Cpu;
        bn.set_running_stats(
            &Tensor::new(&[1.0f32, -2.0], &dev).unwrap(),
            &Tensor::new(&[4.0f32, 1.0], &dev).unwrap(),
        )
        .unwrap();
        bn.set_gamma(3.0).unwrap();
        let layer = BnAndPad::new(bn, 1);
        let x = Tensor::zeros((1, 2, 2, 3), DType::F32, &dev).unwrap();
        let y = layer.forward_t(&x, false).unwrap();
        assert_eq!(y.dims(), &[1, 2, 4, 5]);
        // Zero input: every position, border or not, equals the BN output for zero.
        let yv = v(&y);
        let c0 = -3.0 * 1.0 / (4.0f32 + 1e-5).sqrt();
        let c1 = 3.0 * 2.0 / (1.0f32 + 1e-5).sqrt();
        assert!(yv[..20].iter().all(|a| (a - c0).abs() < 1e-5));
        assert!(yv[20..].iter().all(|a| (a - c1).abs() < 1e-5));
    }

    #[test]
    fn per_axis_padding_conv_matches_embedded_kernel() {
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        let mut ctx = InitCtx::new(&mut rng, &Device::Cpu);
        let conv = Conv2dLayer::new(&mut ctx, [4, 2, 1, 3], 2, (0, 1), 2, false).unwrap();
        let x = normal_tensor(ctx.rng, &[2, 4, 7, 6], 0.0, 1.0, &Device::Cpu).unwrap();
        let y = conv.forward(&x).unwrap();
        let k = conv.kernel().unwrap().pad_to(3).unwrap();
        let y2 = k.conv(&x, 2, 1, 2).unwrap();
        assert_eq!(y.dims(), y2.dims());
        let d: f32 = v(&(y - y2).unwrap())
            .iter()
            .map(|a| a.abs())
            .fold(0., f32::max);
        assert!(d < 1e-5);
    }
}
