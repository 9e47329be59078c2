//! A model plugin: `pyramid-net`, a small CNN registered from outside dyrep-runtime with
//! `register_model!`. Its convs are `ConvUnit`s (conv + BN + ReLU), so DyRep grows them like the
//! zoo's; it is built from the same building blocks the zoo uses (`dyrep_runtime::model::build`).

// The model plugin contract, and nothing of dyrep's internals.
use dyrep_runtime::plugin::build::{channels, conv_bn, residual_stage, same_conv, ResidualBlock};
use dyrep_runtime::plugin::{InitCtx, Layer, Linear, ModelConfig};

dyrep_runtime::register_model!(
    "pyramid-net",
    "Plugin example: conv 5x5 16, conv 3x3 32 s2, basic stage 64 s2, GAP, linear",
    [1, 28, 28],
    pyramid_net
);

/// A 5×5 stem, a strided 3×3 conv, one residual stage, global average pool, classifier.
fn pyramid_net(cfg: &ModelConfig, ctx: &mut InitCtx<'_>) -> dyrep_runtime::Result<Vec<Layer>> {
    let (c1, c2) = (channels(cfg, 16), channels(cfg, 32));
    let stem = conv_bn(
        "stem.conv",
        "stem.bn",
        same_conv(cfg.input[0], c1, 5, 1, 1)?,
        true,
        ctx,
    )?;
    let down = conv_bn(
        "down.conv",
        "down.bn",
        same_conv(c1, c2, 3, 2, 1)?,
        true,
        ctx,
    )?;
    let mut layers = vec![Layer::Conv(stem), Layer::Conv(down)];
    let (stage, out) = residual_stage(
        "stage",
        ResidualBlock::Basic,
        1,
        channels(cfg, 64),
        2,
        c2,
        ctx,
    )?;
    layers.extend(stage);
    layers.push(Layer::GlobalAvgPool);
    layers.push(Layer::Linear(Linear::new(
        "head",
        out,
        cfg.num_classes,
        ctx,
    )?));
    Ok(layers)
}
