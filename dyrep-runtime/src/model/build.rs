//! The building blocks models are written with — by the zoo, by architecture files and by model
//! plugins — so the same description builds the same parameters in the same order: conv units
//! with BN and the reference init, residual stages of basic or bottleneck blocks, depthwise /
//! pointwise pairs, the width multiplier.

use dyrep_api::{ConvGeom, InitCtx};
use serde::{Deserialize, Serialize};

use super::layers::{BasicBlock, Bottleneck, ConvUnit, Layer};
use super::ModelConfig;
use crate::error::Result;

/// A channel count scaled by the config's width multiplier (rounded, at least 1).
pub fn channels(cfg: &ModelConfig, c: usize) -> usize {
    ((c as f64 * cfg.width).round() as usize).max(1)
}

/// A k×k conv's geometry with "same" padding (k / 2).
pub fn same_conv(
    in_ch: usize,
    out_ch: usize,
    k: usize,
    stride: usize,
    groups: usize,
) -> Result<ConvGeom> {
    Ok(ConvGeom::new(in_ch, out_ch, k, stride, k / 2, groups)?)
}

/// A conv unit with BN (a bias-free conv) and optional ReLU, its tensors at `conv_path` and
/// `bn_path`.
pub fn conv_bn(
    conv_path: &str,
    bn_path: &str,
    geom: ConvGeom,
    relu: bool,
    ctx: &mut InitCtx<'_>,
) -> Result<ConvUnit> {
    ConvUnit::new(conv_path, bn_path, geom, true, relu, ctx)
}

/// The shape `[C, H, W]` (`(features, 0, 0)` once flattened) after `layers` for the config's
/// input.
pub fn shape_after(cfg: &ModelConfig, layers: &[Layer]) -> Result<(usize, usize, usize)> {
    let [c, h, w] = cfg.input;
    let mut s = (c, h, w);
    for l in layers {
        s = l.macs_and_shape(s)?.1;
    }
    Ok(s)
}

/// ResNet's two residual block types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResidualBlock {
    /// Two 3×3 convs (ResNet-18/34).
    Basic,
    /// 1×1 → 3×3 → 1×1 with 4× expansion (ResNet-50).
    Bottleneck,
}

impl ResidualBlock {
    /// Output channels per `planes`.
    pub fn expansion(self) -> usize {
        match self {
            ResidualBlock::Basic => 1,
            ResidualBlock::Bottleneck => 4,
        }
    }
}

/// A residual stage of `blocks` blocks with `planes` inner channels (torchvision's layout and
/// names: `{prefix}.{b}.conv1`, `{prefix}.{b}.downsample.0`, ...); the first block has
/// `stride` and a projection shortcut where the shape changes. Returns the layers and the
/// stage's output channels.
pub fn residual_stage(
    prefix: &str,
    block: ResidualBlock,
    blocks: usize,
    planes: usize,
    stride: usize,
    in_ch: usize,
    ctx: &mut InitCtx<'_>,
) -> Result<(Vec<Layer>, usize)> {
    let mut layers = Vec::with_capacity(blocks);
    let out = planes * block.expansion();
    let mut inp = in_ch;
    for b in 0..blocks {
        let s = if b == 0 { stride } else { 1 };
        let p = format!("{prefix}.{b}");
        let downsample = if s != 1 || inp != out {
            Some(conv_bn(
                &format!("{p}.downsample.0"),
                &format!("{p}.downsample.1"),
                same_conv(inp, out, 1, s, 1)?,
                false,
                ctx,
            )?)
        } else {
            None
        };
        let unit = |i: usize, geom: ConvGeom, relu: bool, ctx: &mut InitCtx<'_>| {
            conv_bn(
                &format!("{p}.conv{i}"),
                &format!("{p}.bn{i}"),
                geom,
                relu,
                ctx,
            )
        };
        let layer = match block {
            ResidualBlock::Basic => {
                let conv1 = unit(1, same_conv(inp, planes, 3, s, 1)?, true, ctx)?;
                let conv2 = unit(2, same_conv(planes, planes, 3, 1, 1)?, false, ctx)?;
                Layer::Basic(Box::new(BasicBlock {
                    conv1,
                    conv2,
                    downsample,
                }))
            }
            ResidualBlock::Bottleneck => {
                let conv1 = unit(1, same_conv(inp, planes, 1, 1, 1)?, true, ctx)?;
                let conv2 = unit(2, same_conv(planes, planes, 3, s, 1)?, true, ctx)?;
                let conv3 = unit(3, same_conv(planes, out, 1, 1, 1)?, false, ctx)?;
                Layer::Bottleneck(Box::new(Bottleneck {
                    conv1,
                    conv2,
                    conv3,
                    downsample,
                }))
            }
        };
        layers.push(layer);
        inp = out;
    }
    Ok((layers, out))
}

/// MobileNet's depthwise k×k (stride `stride`) + pointwise 1×1 pair, each with BN and ReLU, at
/// `dw_path`/`pw_path` (+ `.conv`, `.bn`).
pub fn depthwise_separable(
    dw_path: &str,
    pw_path: &str,
    in_ch: usize,
    out_ch: usize,
    k: usize,
    stride: usize,
    ctx: &mut InitCtx<'_>,
) -> Result<[Layer; 2]> {
    let dw = conv_bn(
        &format!("{dw_path}.conv"),
        &format!("{dw_path}.bn"),
        same_conv(in_ch, in_ch, k, stride, in_ch)?,
        true,
        ctx,
    )?;
    let pw = conv_bn(
        &format!("{pw_path}.conv"),
        &format!("{pw_path}.bn"),
        same_conv(in_ch, out_ch, 1, 1, 1)?,
        true,
        ctx,
    )?;
    Ok([Layer::Conv(dw), Layer::Conv(pw)])
}
