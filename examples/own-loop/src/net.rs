//! The user's own network: three convs — each a dyrep `Slot` followed by dyrep's batch norm and
//! a ReLU — a max pool, a global average pool and a linear classifier, all run with plain
//! candle ops. Implementing `RepNet` is all DyRep needs of it.

use candle_core::{DType, Device, Tensor, Var};
use dyrep_api::{BatchNorm, ConvGeom, InitCtx, Slot, TensorRole};
use dyrep_runtime::dynamics::RepNet;
use dyrep_runtime::Result;

/// One conv of the network: the slot DyRep grows, the BN after it.
pub struct ConvBn {
    pub path: String,
    pub bn_path: String,
    pub slot: Slot,
    pub bn: BatchNorm,
    /// A 2×2 max pool after the ReLU.
    pub pool: bool,
}

/// A small CNN for `side`×`side` single-channel images.
pub struct SmallCnn {
    pub convs: Vec<ConvBn>,
    pub fc_weight: Var,
    pub fc_bias: Var,
    pub side: usize,
}

impl SmallCnn {
    /// Convs of `width` channels (1 → w → 2w → 2w), `classes` outputs.
    pub fn new(side: usize, width: usize, classes: usize, ctx: &mut InitCtx<'_>) -> Result<Self> {
        let chans = [
            (1, width, false),
            (width, 2 * width, true),
            (2 * width, 2 * width, false),
        ];
        let mut convs = Vec::new();
        for (i, (cin, cout, pool)) in chans.into_iter().enumerate() {
            let geom = ConvGeom::same(cin, cout, 3, 1, 1)?;
            convs.push(ConvBn {
                path: format!("conv{i}"),
                bn_path: format!("bn{i}"),
                slot: Slot::conv(geom, false, ctx)?,
                bn: BatchNorm::new(cout, DType::F32, &ctx.device)?,
                pool,
            });
        }
        let fan_in = 2 * width;
        let bound = 1.0 / (fan_in as f64).sqrt();
        let device = ctx.device.clone();
        let w =
            dyrep_api::init::uniform_tensor(ctx.rng, &[classes, fan_in], -bound, bound, &device)?;
        Ok(SmallCnn {
            convs,
            fc_weight: Var::from_tensor(&w)?,
            fc_bias: Var::zeros(classes, DType::F32, &device)?,
            side,
        })
    }

    pub fn device(&self) -> &Device {
        self.fc_weight.device()
    }
}

impl RepNet for SmallCnn {
    fn conv_slots(&self) -> Vec<(&str, &Slot)> {
        self.convs
            .iter()
            .map(|c| (c.path.as_str(), &c.slot))
            .collect()
    }

    fn conv_slots_mut(&mut self) -> Vec<(&str, &mut Slot)> {
        self.convs
            .iter_mut()
            .map(|c| (c.path.as_str(), &mut c.slot))
            .collect()
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = x.clone();
        for c in &self.convs {
            h = c.slot.forward_bn_t(&h, &c.bn, train, true)?;
            if c.pool {
                h = dyrep_api::layers::max_pool2d(&h, 2, 2, 0)?;
            }
        }
        let pooled = h.mean((2, 3))?;
        Ok(pooled
            .matmul(&self.fc_weight.as_tensor().t()?)?
            .broadcast_add(self.fc_bias.as_tensor())?)
    }

    fn tensors(&self) -> Vec<(String, Var, TensorRole)> {
        let mut out = Vec::new();
        let mut push = |p: &str, v: &Var, r: TensorRole| out.push((p.to_string(), v.clone(), r));
        for c in &self.convs {
            c.slot.visit_tensors(&c.path, &mut push);
            c.bn.visit(&c.bn_path, &mut push);
        }
        push("fc.weight", &self.fc_weight, TensorRole::LinearWeight);
        push("fc.bias", &self.fc_bias, TensorRole::LinearBias);
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn macs(&self) -> Result<u64> {
        let mut side = self.side;
        let mut total = 0;
        for c in &self.convs {
            total += c.slot.macs(side, side)?;
            if c.pool {
                side /= 2;
            }
        }
        let [out, inp] = [self.fc_weight.dims()[0], self.fc_weight.dims()[1]];
        Ok(total + (out * inp) as u64)
    }
}
