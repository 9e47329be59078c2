//! The fused plain network as named tensors plus a JSON description of its layers (what
//! `--format safetensors` writes and ONNX encodes): convs with their BN separate or folded,
//! pools, residual blocks, linears.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use dyrep_api::{BnEval, ConvGeom, Kernel, Slot};

use crate::error::{Result, RuntimeError};
use crate::model::{ConvUnit, Layer, Model};

use super::names::{keys_for, Naming};

/// One conv of the plain network, ready to write: its BN either separate or folded.
pub(crate) struct PlainConvOut {
    pub geom: ConvGeom,
    /// The conv weight (BN folded in when `bn` is `None` and the unit had one).
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub bn: Option<BnEval>,
}

pub(crate) fn plain_conv(u: &ConvUnit, fold: bool) -> Result<PlainConvOut> {
    let Slot::Conv(c) = &u.slot else {
        return Err(RuntimeError::Model(format!(
            "conv `{}` is still a block; fuse the model first",
            u.conv_path
        )));
    };
    let geom = *c.geom();
    let weight = c.layer().weight().as_detached_tensor();
    let bias = c.layer().bias().map(|b| b.as_detached_tensor());
    let bn = match &u.bn {
        Some(bn) => Some(bn.eval_params()?),
        None => None,
    };
    if fold {
        if let Some(bn) = &bn {
            let bias = match &bias {
                Some(b) => b.clone(),
                None => Tensor::zeros(geom.out_ch, weight.dtype(), weight.device())?,
            };
            let k = Kernel::new(weight, bias)?.fold_bn(bn)?;
            return Ok(PlainConvOut {
                geom,
                weight: k.weight,
                bias: Some(k.bias),
                bn: None,
            });
        }
    }
    Ok(PlainConvOut {
        geom,
        weight,
        bias,
        bn,
    })
}

/// One layer of the architecture description (`--format safetensors` writes it beside the file).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PlainLayer {
    Conv {
        weight: String,
        bias: Option<String>,
        batch_norm: Option<String>,
        in_channels: usize,
        out_channels: usize,
        kernel_size: usize,
        stride: usize,
        padding: usize,
        groups: usize,
        relu: bool,
    },
    MaxPool {
        kernel_size: usize,
        stride: usize,
        padding: usize,
    },
    AvgPool {
        kernel_size: usize,
        stride: usize,
    },
    GlobalAvgPool,
    Flatten,
    Relu,
    Linear {
        weight: String,
        bias: String,
        in_features: usize,
        out_features: usize,
    },
    /// `relu(body(x) + shortcut(x))`; an empty shortcut is the identity.
    Residual {
        body: Vec<PlainLayer>,
        shortcut: Vec<PlainLayer>,
    },
}

/// The JSON description of an exported plain network.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlainArch {
    pub format: String,
    pub model: String,
    pub naming: Naming,
    /// `[C, H, W]` the network was trained at.
    pub input: [usize; 3],
    pub num_classes: usize,
    pub width: f64,
    pub params: usize,
    pub macs: u64,
    /// BN eps of every batch norm.
    pub bn_eps: f64,
    pub layers: Vec<PlainLayer>,
}

/// The tensors and description of a plain model under its naming convention.
pub struct PlainExport {
    pub arch: PlainArch,
    pub tensors: BTreeMap<String, Tensor>,
}

pub(crate) const EXPORT_FORMAT: &str = "dyrep-plain/1";

/// The export of a fused model: conventional keys, tensors (BN separate unless the convention
/// folds it) and the layer list.
pub fn plain_export(model: &Model) -> Result<PlainExport> {
    let keys = keys_for(model)?;
    let mut tensors = BTreeMap::new();
    let mut eps = 1e-5;
    let mut conv = |u: &ConvUnit, tensors: &mut BTreeMap<String, Tensor>| -> Result<PlainLayer> {
        let k = keys
            .units
            .get(&u.conv_path)
            .ok_or_else(|| RuntimeError::Model(format!("no export key for `{}`", u.conv_path)))?;
        let p = plain_conv(u, keys.naming.folds_bn())?;
        let g = p.geom;
        tensors.insert(format!("{}.weight", k.conv), p.weight.clone());
        let mut bias_key = None;
        if let Some(b) = &p.bias {
            tensors.insert(format!("{}.bias", k.conv), b.clone());
            bias_key = Some(format!("{}.bias", k.conv));
        } else if k.conv_bias_beside_bn {
            let z = Tensor::zeros(g.out_ch, p.weight.dtype(), p.weight.device())?;
            tensors.insert(format!("{}.bias", k.conv), z);
            bias_key = Some(format!("{}.bias", k.conv));
        }
        let mut bn_key = None;
        if let (Some(bn), Some(key)) = (&p.bn, &k.bn) {
            eps = bn.eps;
            tensors.insert(format!("{key}.weight"), bn.gamma.clone());
            tensors.insert(format!("{key}.bias"), bn.beta.clone());
            tensors.insert(format!("{key}.running_mean"), bn.mean.clone());
            tensors.insert(format!("{key}.running_var"), bn.var.clone());
            tensors.insert(
                format!("{key}.num_batches_tracked"),
                Tensor::new(0i64, &Device::Cpu)?,
            );
            bn_key = Some(key.clone());
        }
        Ok(PlainLayer::Conv {
            weight: format!("{}.weight", k.conv),
            bias: bias_key,
            batch_norm: bn_key,
            in_channels: g.in_ch,
            out_channels: g.out_ch,
            kernel_size: g.k,
            stride: g.stride,
            padding: g.padding,
            groups: g.groups,
            relu: u.relu,
        })
    };
    let mut layers = Vec::new();
    for l in &model.layers {
        layers.push(match l {
            Layer::Conv(u) => conv(u, &mut tensors)?,
            Layer::MaxPool { k, stride, padding } => PlainLayer::MaxPool {
                kernel_size: *k,
                stride: *stride,
                padding: *padding,
            },
            Layer::AvgPool { k, stride } => PlainLayer::AvgPool {
                kernel_size: *k,
                stride: *stride,
            },
            Layer::GlobalAvgPool => PlainLayer::GlobalAvgPool,
            Layer::Flatten => PlainLayer::Flatten,
            Layer::Relu => PlainLayer::Relu,
            Layer::Linear(lin) => {
                let key = keys
                    .linears
                    .get(&lin.path)
                    .cloned()
                    .unwrap_or(lin.path.clone());
                let (out, inp) = lin.weight.dims2()?;
                tensors.insert(format!("{key}.weight"), lin.weight.as_detached_tensor());
                tensors.insert(format!("{key}.bias"), lin.bias.as_detached_tensor());
                PlainLayer::Linear {
                    weight: format!("{key}.weight"),
                    bias: format!("{key}.bias"),
                    in_features: inp,
                    out_features: out,
                }
            }
            Layer::Basic(b) => PlainLayer::Residual {
                body: vec![conv(&b.conv1, &mut tensors)?, conv(&b.conv2, &mut tensors)?],
                shortcut: match &b.downsample {
                    Some(d) => vec![conv(d, &mut tensors)?],
                    None => Vec::new(),
                },
            },
            Layer::Bottleneck(b) => PlainLayer::Residual {
                body: vec![
                    conv(&b.conv1, &mut tensors)?,
                    conv(&b.conv2, &mut tensors)?,
                    conv(&b.conv3, &mut tensors)?,
                ],
                shortcut: match &b.downsample {
                    Some(d) => vec![conv(d, &mut tensors)?],
                    None => Vec::new(),
                },
            },
        });
    }
    let arch = PlainArch {
        format: EXPORT_FORMAT.into(),
        model: model.name().to_string(),
        naming: keys.naming,
        input: model.config.input,
        num_classes: model.config.num_classes,
        width: model.config.width,
        params: model.param_count(),
        macs: model.macs()?,
        bn_eps: eps,
        layers,
    };
    Ok(PlainExport { arch, tensors })
}
