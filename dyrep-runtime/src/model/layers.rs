//! The layers models are made of: `ConvUnit` (a conv slot, optional BN, optional ReLU), linear,
//! pools, and ResNet's basic and bottleneck blocks.

use candle_core::{Tensor, Var, D};
use dyrep_api::layers::max_pool2d;
use dyrep_api::{BatchNorm, ConvGeom, InitCtx, Slot, TensorRole};
use rand::Rng;

use crate::error::{Result, RuntimeError};

/// A conv slot followed by an optional BN and an optional ReLU.
#[derive(Debug)]
pub struct ConvUnit {
    /// Path of the conv's tensors (and the slot's path for growth).
    pub conv_path: String,
    /// Path of the BN's tensors.
    pub bn_path: String,
    pub slot: Slot,
    pub bn: Option<BatchNorm>,
    pub relu: bool,
    /// The unit's BN was dropped when its conv became a block whose branches each normalise
    /// (the reference form of the `dbb` and `repvgg` baselines): `fuse` brings it back as an
    /// identity carrying the block's bias, so the fused model has the plain architecture.
    pub bn_dropped: bool,
}

impl ConvUnit {
    pub fn new(
        conv_path: impl Into<String>,
        bn_path: impl Into<String>,
        geom: ConvGeom,
        bn: bool,
        relu: bool,
        ctx: &mut InitCtx<'_>,
    ) -> Result<Self> {
        Ok(Self {
            conv_path: conv_path.into(),
            bn_path: bn_path.into(),
            slot: Slot::conv(geom, !bn, ctx)?,
            bn: if bn {
                Some(BatchNorm::new(geom.out_ch, ctx.dtype, &ctx.device)?)
            } else {
                None
            },
            relu,
            bn_dropped: false,
        })
    }

    /// Drops the unit's BN after its grown block (see `bn_dropped`); a plain conv or a unit
    /// without a BN is left as it is.
    pub fn drop_bn_after_block(&mut self) {
        if self.slot.is_block() && self.bn.is_some() {
            self.bn = None;
            self.bn_dropped = true;
        }
    }

    /// After fusion of a unit whose BN was dropped: the BN comes back as an identity in eval
    /// mode (γ = 1, β = 0, σ² = 1 − ε, μ = −bias) and the conv loses its bias, so the unit has
    /// the plain architecture again and computes the same (to f32 rounding of √(σ² + ε)).
    pub fn restore_dropped_bn(&mut self) -> Result<()> {
        if !self.bn_dropped {
            return Ok(());
        }
        let Slot::Conv(conv) = &self.slot else {
            return Ok(());
        };
        let geom = *conv.geom();
        let weight = conv.layer().weight().as_detached_tensor();
        let dev = weight.device().clone();
        let bias = match conv.layer().bias() {
            Some(b) => b.as_detached_tensor(),
            None => Tensor::zeros(geom.out_ch, weight.dtype(), &dev)?,
        };
        let bn = BatchNorm::new(geom.out_ch, weight.dtype(), &dev)?;
        let var =
            Tensor::full(1.0 - bn.eps() as f32, geom.out_ch, &dev)?.to_dtype(weight.dtype())?;
        bn.set_running_stats(&bias.neg()?, &var)?;
        self.slot = Slot::Conv(dyrep_api::PlainConv::from_tensors(geom, &weight, None)?);
        self.bn = Some(bn);
        self.bn_dropped = false;
        Ok(())
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match &self.bn {
            Some(bn) => Ok(self.slot.forward_bn_t(x, bn, train, self.relu)?),
            None => {
                if let Some(y) = self.slot.forward_relu_pool_t(x, train, self.relu, None)? {
                    return Ok(y);
                }
                let y = self.slot.forward_t(x, train)?;
                if self.relu {
                    Ok(dyrep_api::layers::relu(&y)?)
                } else {
                    Ok(y)
                }
            }
        }
    }

    /// This unit followed by a max pool: one fused op where the unit is a plain conv with a BN
    /// that normalises with batch statistics (training), else the unit then the pool.
    pub fn forward_max_pool_t(
        &self,
        x: &Tensor,
        train: bool,
        pool: dyrep_api::kernels::MaxPoolParams,
    ) -> Result<Tensor> {
        let fused = match &self.bn {
            Some(bn) => self
                .slot
                .forward_bn_max_pool_t(x, bn, train, self.relu, pool)?,
            None => self
                .slot
                .forward_relu_pool_t(x, train, self.relu, Some(pool))?,
        };
        if let Some(y) = fused {
            return Ok(y);
        }
        let y = self.forward_t(x, train)?;
        Ok(max_pool2d(&y, pool.k, pool.stride, pool.padding)?)
    }

    pub fn visit_tensors(&self, f: &mut dyn FnMut(&str, &Var, TensorRole)) {
        self.slot.visit_tensors(&self.conv_path, f);
        if let Some(bn) = &self.bn {
            bn.visit(&self.bn_path, f);
        }
    }

    /// After fusion: a plain conv's bias goes into the following BN (μ ← μ − b), so the conv
    /// is bias-free as in the plain architecture. Exact in eval mode.
    pub fn fold_bias_into_bn(&mut self) -> Result<()> {
        if let Some(bn) = &self.bn {
            self.slot.fold_bias_into(bn)?;
        }
        Ok(())
    }

    /// Output spatial size for an `h × w` input.
    pub fn output_hw(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        Ok(self.slot.geom().output_hw(h, w)?)
    }
}

/// A fully connected layer `y = x Wᵀ + b`.
#[derive(Debug)]
pub struct Linear {
    pub path: String,
    pub weight: Var,
    pub bias: Var,
}

impl Linear {
    /// Reference ("goog") init: W ~ U(±1/sqrt(out)), b = 0 (docs/REFERENCE.md "Models").
    pub fn new(
        path: impl Into<String>,
        inp: usize,
        out: usize,
        ctx: &mut InitCtx<'_>,
    ) -> Result<Self> {
        let bound = 1.0 / (out as f64).sqrt();
        let n = dyrep_api::init::checked_elements(&[out, inp])?;
        let data: Vec<f32> = (0..n)
            .map(|_| ctx.rng.random_range(-bound..bound) as f32)
            .collect();
        let w = Tensor::from_vec(data, (out, inp), &ctx.device)?.to_dtype(ctx.dtype)?;
        Ok(Self {
            path: path.into(),
            weight: Var::from_tensor(&w)?,
            bias: Var::zeros(out, ctx.dtype, &ctx.device)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.weight.as_tensor().t()?)?
            .broadcast_add(self.bias.as_tensor())?)
    }
}

/// ResNet basic block: relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut).
#[derive(Debug)]
pub struct BasicBlock {
    pub conv1: ConvUnit,
    pub conv2: ConvUnit,
    pub downsample: Option<ConvUnit>,
}

/// ResNet bottleneck: 1×1 → 3×3 (stride) → 1×1 (×4), plus shortcut, then ReLU.
#[derive(Debug)]
pub struct Bottleneck {
    pub conv1: ConvUnit,
    pub conv2: ConvUnit,
    pub conv3: ConvUnit,
    pub downsample: Option<ConvUnit>,
}

/// One layer of a model.
#[derive(Debug)]
pub enum Layer {
    Conv(ConvUnit),
    MaxPool {
        k: usize,
        stride: usize,
        padding: usize,
    },
    /// A k×k average pool without padding.
    AvgPool {
        k: usize,
        stride: usize,
    },
    GlobalAvgPool,
    Flatten,
    Relu,
    Linear(Linear),
    Basic(Box<BasicBlock>),
    Bottleneck(Box<Bottleneck>),
}

fn shortcut(x: &Tensor, ds: &Option<ConvUnit>, train: bool) -> Result<Tensor> {
    match ds {
        Some(u) => u.forward_t(x, train),
        None => Ok(x.clone()),
    }
}

impl Layer {
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Layer::Conv(u) => u.forward_t(x, train),
            Layer::MaxPool { k, stride, padding } => Ok(max_pool2d(x, *k, *stride, *padding)?),
            Layer::AvgPool { k, stride } => {
                Ok(x.avg_pool2d_with_stride((*k, *k), (*stride, *stride))?)
            }
            Layer::GlobalAvgPool => Ok(x.mean(D::Minus1)?.mean(D::Minus1)?),
            Layer::Flatten => Ok(x.flatten_from(1)?),
            Layer::Relu => Ok(dyrep_api::layers::relu(x)?),
            Layer::Linear(l) => l.forward(x),
            Layer::Basic(b) => {
                let y = b.conv2.forward_t(&b.conv1.forward_t(x, train)?, train)?;
                Ok(dyrep_api::layers::relu(
                    &(y + shortcut(x, &b.downsample, train)?)?,
                )?)
            }
            Layer::Bottleneck(b) => {
                let y = b.conv1.forward_t(x, train)?;
                let y = b.conv3.forward_t(&b.conv2.forward_t(&y, train)?, train)?;
                Ok(dyrep_api::layers::relu(
                    &(y + shortcut(x, &b.downsample, train)?)?,
                )?)
            }
        }
    }

    pub fn units<'a>(&'a self, out: &mut Vec<&'a ConvUnit>) {
        match self {
            Layer::Conv(u) => out.push(u),
            Layer::Basic(b) => {
                out.extend([&b.conv1, &b.conv2]);
                out.extend(b.downsample.as_ref());
            }
            Layer::Bottleneck(b) => {
                out.extend([&b.conv1, &b.conv2, &b.conv3]);
                out.extend(b.downsample.as_ref());
            }
            _ => {}
        }
    }

    pub fn units_mut<'a>(&'a mut self, out: &mut Vec<&'a mut ConvUnit>) {
        match self {
            Layer::Conv(u) => out.push(u),
            Layer::Basic(b) => {
                out.push(&mut b.conv1);
                out.push(&mut b.conv2);
                out.extend(b.downsample.as_mut());
            }
            Layer::Bottleneck(b) => {
                out.push(&mut b.conv1);
                out.push(&mut b.conv2);
                out.push(&mut b.conv3);
                out.extend(b.downsample.as_mut());
            }
            _ => {}
        }
    }

    pub fn visit_tensors(&self, f: &mut dyn FnMut(&str, &Var, TensorRole)) {
        match self {
            Layer::Linear(l) => {
                f(
                    &format!("{}.weight", l.path),
                    &l.weight,
                    TensorRole::LinearWeight,
                );
                f(&format!("{}.bias", l.path), &l.bias, TensorRole::LinearBias);
            }
            _ => {
                let mut v = Vec::new();
                self.units(&mut v);
                for u in v {
                    u.visit_tensors(f);
                }
            }
        }
    }

    /// MACs at batch 1 and the output shape for an input of shape `(c, h, w)`; `(features, 0, 0)`
    /// once flattened.
    pub fn macs_and_shape(
        &self,
        (c, h, w): (usize, usize, usize),
    ) -> Result<(u64, (usize, usize, usize))> {
        let unit = |u: &ConvUnit, h: usize, w: usize| -> Result<(u64, usize, usize)> {
            let m = u.slot.macs(h, w)?;
            let (ho, wo) = u.output_hw(h, w)?;
            Ok((m, ho, wo))
        };
        match self {
            Layer::Conv(u) => {
                let (m, ho, wo) = unit(u, h, w)?;
                Ok((m, (u.slot.geom().out_ch, ho, wo)))
            }
            Layer::MaxPool { k, stride, padding } => {
                let (hp, wp) = (h + 2 * padding, w + 2 * padding);
                if hp < *k || wp < *k {
                    return Err(RuntimeError::Model(format!(
                        "input too small: a {k}x{k} max pool meets a {h}x{w} feature map"
                    )));
                }
                Ok((0, (c, (hp - k) / stride + 1, (wp - k) / stride + 1)))
            }
            Layer::AvgPool { k, stride } => {
                if h < *k || w < *k {
                    return Err(RuntimeError::Model(format!(
                        "input too small: a {k}x{k} average pool meets a {h}x{w} feature map"
                    )));
                }
                Ok((0, (c, (h - k) / stride + 1, (w - k) / stride + 1)))
            }
            Layer::GlobalAvgPool => Ok((0, (c, 0, 0))),
            Layer::Flatten => Ok((0, (c * h.max(1) * w.max(1), 0, 0))),
            Layer::Relu => Ok((0, (c, h, w))),
            Layer::Linear(l) => {
                let (out, inp) = l.weight.dims2()?;
                if inp != c {
                    return Err(RuntimeError::Model(format!(
                        "linear `{}` expects {inp} features but gets {c}",
                        l.path
                    )));
                }
                Ok(((inp * out) as u64, (out, 0, 0)))
            }
            Layer::Basic(b) => {
                let (m1, h1, w1) = unit(&b.conv1, h, w)?;
                let (m2, h2, w2) = unit(&b.conv2, h1, w1)?;
                let m3 = match &b.downsample {
                    Some(d) => unit(d, h, w)?.0,
                    None => 0,
                };
                Ok((m1 + m2 + m3, (b.conv2.slot.geom().out_ch, h2, w2)))
            }
            Layer::Bottleneck(b) => {
                let (m1, h1, w1) = unit(&b.conv1, h, w)?;
                let (m2, h2, w2) = unit(&b.conv2, h1, w1)?;
                let (m3, h3, w3) = unit(&b.conv3, h2, w2)?;
                let m4 = match &b.downsample {
                    Some(d) => unit(d, h, w)?.0,
                    None => 0,
                };
                Ok((m1 + m2 + m3 + m4, (b.conv3.slot.geom().out_ch, h3, w3)))
            }
        }
    }
}
