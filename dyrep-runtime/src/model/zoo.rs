//! The model zoo (docs/REFERENCE.md "Models"), registered with `register_model!` like any plugin
//! model: name, one-line summary, default input, builder.
//! Every conv is a `ConvUnit` with BN (bias-free conv) and the reference init (conv N(0,
//! sqrt(2/(k²·C_out))), BN γ=1 β=0, linear U(±1/sqrt(out)) with zero bias).

use dyrep_api::{ConvGeom, InitCtx};
use serde::{Deserialize, Serialize};

use super::build::{
    channels as ch, conv_bn as unit, depthwise_separable, residual_stage, same_conv, shape_after,
    ResidualBlock,
};
use super::file::ArchFile;
use super::layers::{ConvUnit, Layer, Linear};
use super::registry::find_model;
use super::{Form, Model};
use crate::error::{Result, RuntimeError};

/// What to build: a model name (or an architecture file), the input shape `[C, H, W]`, the
/// number of classes and a width multiplier for every channel count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub name: String,
    pub input: [usize; 3],
    pub num_classes: usize,
    pub width: f64,
    /// The architecture file the model is described by (instead of a registered builder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<ArchFile>,
}

impl ModelConfig {
    /// A registered model by name.
    pub fn named(
        name: impl Into<String>,
        input: [usize; 3],
        num_classes: usize,
        width: f64,
    ) -> Self {
        ModelConfig {
            name: name.into(),
            input,
            num_classes,
            width,
            file: None,
        }
    }
}

crate::register_model!(
    "vgg-tiny",
    "CPU-sized VGG: 16-16-M-32-32-M-64 conv3x3+BN+ReLU, GAP, linear",
    [1, 28, 28],
    vgg_tiny,
    order = 0
);
crate::register_model!(
    "bench-small",
    "Benchmark net: 32-32-M-64-64-M-128 conv3x3+BN+ReLU, GAP, linear; 1x28x28",
    [1, 28, 28],
    bench_small,
    order = 1
);
crate::register_model!(
    "bench-cifar",
    "Benchmark net: 64-64-M-128-128-M-256 conv3x3+BN+ReLU, GAP, linear; 3x32x32",
    [3, 32, 32],
    bench_cifar,
    order = 2
);
crate::register_model!(
    "resnet-tiny",
    "CPU-sized ResNet: CIFAR stem 16, basic blocks [1,1,1] at 16-32-64",
    [1, 28, 28],
    resnet_tiny,
    order = 3
);
crate::register_model!(
    "vgg16",
    "VGG-16, CIFAR form: 13 conv3x3+BN+ReLU, maxpool(2,s1), 512-512-classes",
    [3, 32, 32],
    vgg16,
    order = 4
);
crate::register_model!(
    "resnet18",
    "ResNet-18, CIFAR stem (conv3x3 s1, no maxpool)",
    [3, 32, 32],
    resnet18,
    order = 5
);
crate::register_model!(
    "resnet34",
    "ResNet-34, CIFAR stem",
    [3, 32, 32],
    resnet34,
    order = 6
);
crate::register_model!(
    "resnet50",
    "ResNet-50 (bottleneck), CIFAR stem",
    [3, 32, 32],
    resnet50,
    order = 7
);
crate::register_model!(
    "resnet18-imagenet",
    "ResNet-18, ImageNet stem (conv7x7 s2 + maxpool 3 s2)",
    [3, 224, 224],
    resnet18_in,
    order = 8
);
crate::register_model!(
    "resnet34-imagenet",
    "ResNet-34, ImageNet stem",
    [3, 224, 224],
    resnet34_in,
    order = 9
);
crate::register_model!(
    "resnet50-imagenet",
    "ResNet-50, ImageNet stem",
    [3, 224, 224],
    resnet50_in,
    order = 10
);
crate::register_model!(
    "mobilenet-v1",
    "MobileNetV1: conv3x3 s2 + 13 depthwise/pointwise pairs",
    [3, 224, 224],
    mobilenet_v1,
    order = 11
);
crate::register_model!(
    "repvgg-a0",
    "RepVGG-A0 (plain deploy form): blocks [1,2,4,14,1], width [.75,.75,.75,2.5]",
    [3, 224, 224],
    repvgg_a0,
    order = 12
);
crate::register_model!(
    "repvgg-a1",
    "RepVGG-A1 (plain): blocks [1,2,4,14,1], width [1,1,1,2.5]",
    [3, 224, 224],
    repvgg_a1,
    order = 13
);
crate::register_model!(
    "repvgg-a2",
    "RepVGG-A2 (plain): blocks [1,2,4,14,1], width [1.5,1.5,1.5,2.75]",
    [3, 224, 224],
    repvgg_a2,
    order = 14
);
crate::register_model!(
    "repvgg-b0",
    "RepVGG-B0 (plain): blocks [1,4,6,16,1], width [1,1,1,2.5]",
    [3, 224, 224],
    repvgg_b0,
    order = 15
);

/// Builds a model (fresh parameters from `ctx`).
pub fn build_model(config: &ModelConfig, ctx: &mut InitCtx<'_>) -> Result<Model> {
    if config.file.is_none() {
        find_model(&config.name)?;
    }
    if config.num_classes == 0 {
        return Err(RuntimeError::Config("num_classes must be positive".into()));
    }
    if !(config.width > 0.0 && config.width.is_finite()) {
        return Err(RuntimeError::Config(format!(
            "width multiplier {} must be positive",
            config.width
        )));
    }
    if config.input.contains(&0) {
        return Err(RuntimeError::Config(format!(
            "input shape {:?} has a zero dimension",
            config.input
        )));
    }
    let too_small = |e: RuntimeError| {
        RuntimeError::Model(format!(
            "model `{}` cannot take a {:?} input: {e}",
            config.name, config.input
        ))
    };
    let layers = match &config.file {
        Some(file) => file.build(config, ctx)?,
        None => (find_model(&config.name)?.build)(config, ctx).map_err(too_small)?,
    };
    let model = Model {
        config: config.clone(),
        layers,
        form: Form::Train,
        block_form: dyrep_api::BlockForm::Bn,
    };
    // Walk the shapes once so a too-small input fails here, with a clear message.
    model.macs().map_err(too_small)?;
    Ok(model)
}

enum V {
    C(usize),
    P,
}

fn vgg_features(cfg: &ModelConfig, spec: &[V], ctx: &mut InitCtx<'_>) -> Result<Vec<Layer>> {
    let mut layers = Vec::new();
    let mut c = cfg.input[0];
    for (i, v) in spec.iter().enumerate() {
        match v {
            V::C(n) => {
                let o = ch(cfg, *n);
                layers.push(Layer::Conv(ConvUnit::new(
                    format!("features.{i}.conv"),
                    format!("features.{i}.bn"),
                    same_conv(c, o, 3, 1, 1)?,
                    true,
                    true,
                    ctx,
                )?));
                c = o;
            }
            V::P => layers.push(Layer::MaxPool {
                k: 2,
                stride: 2,
                padding: 0,
            }),
        }
    }
    Ok(layers)
}

fn vgg_tiny(cfg: &ModelConfig, ctx: &mut InitCtx<'_>) -> Result<Vec<Layer>> {
    use V::*;
    let mut l = vgg_features(cfg, &[C(16), C(16), P, C(32), C(32), P, C(64)], ctx)?;
    l.push(Layer::GlobalAvgPool);
    l.push(Layer::Linear(Linear::new(
        "classifier",
        ch(cfg, 64),
        cfg.num_classes,
        ctx,
    )?));
    Ok(l)
}

/// The peer benchmark's convnet (`benches/peer/torchbench.py` trains the same in PyTorch): five
/// conv3x3 (padding 1, no bias) + BN + ReLU blocks with 2×2 max pools after the second and fourth,
/// GAP, linear.
fn bench_net(cfg: &ModelConfig, widths: [usize; 5], ctx: &mut InitCtx<'_>) -> Result<Vec<Layer>> {
    use V::*;
    let [a, b, c, d, e] = widths;
    let mut l = vgg_features(cfg, &[C(a), C(b), P, C(c), C(d), P, C(e)], ctx)?;
    l.push(Layer::GlobalAvgPool);
    l.push(Layer::Linear(Linear::new(
        "classifier",
        ch(cfg, e),
        cfg.num_classes,
        ctx,
    )?));
    Ok(l)
}

fn bench_small(cfg: &ModelConfig, ctx: &mut InitCtx<'_>) -> Result<Vec<Layer>> {
    bench_net(cfg, [32, 32, 64, 64, 128], ctx)
}

fn bench_cifar(cfg: &ModelConfig, ctx: &mut InitCtx<'_>) -> Result<Vec<Layer>> {
    bench_net(cfg, [64, 64, 128, 128, 256], ctx)
}

fn vgg16(cfg: &ModelConfig, ctx: &mut InitCtx<'_>) -> Result<Vec<Layer>> {
    use V::*;
    let spec = [
        C(64),
        C(64),
        P,
        C(128),
        C(128),
        P,
        C(256),
        C(256),
        C(256),
        P,
        C(512),
        C(512),
        C(512),
        P,
        C(512),
        C(512),
        C(512),
    ];
    let mut l = vgg_features(cfg, &spec, ctx)?;
    l.push(Layer::MaxPool {
        k: 2,
        stride: 1,
        padding: 0,
    });
    l.push(Layer::Flatten);
    let (feat, _, _) = shape_after(cfg, &l)?;
    let hidden = ch(cfg, 512);
    l.push(Layer::Linear(Linear::new(
        "classifier.0",
        feat,
        hidden,
        ctx,
    )?));
    l.push(Layer::Relu);
    l.push(Layer::Linear(Linear::new(
        "classifier.1",
        hidden,
        cfg.num_classes,
        ctx,
    )?));
    Ok(l)
}

fn resnet(
    cfg: &ModelConfig,
    ctx: &mut InitCtx<'_>,
    block: ResidualBlock,
    blocks: &[usize],
    widths: &[usize],
    imagenet_stem: bool,
) -> Result<Vec<Layer>> {
    let mut l = Vec::new();
    let stem = ch(cfg, widths[0]);
    if imagenet_stem {
        l.push(Layer::Conv(unit(
            "conv1",
            "bn1",
            ConvGeom::new(cfg.input[0], stem, 7, 2, 3, 1)?,
            true,
            ctx,
        )?));
        l.push(Layer::MaxPool {
            k: 3,
            stride: 2,
            padding: 1,
        });
    } else {
        l.push(Layer::Conv(unit(
            "conv1",
            "bn1",
            same_conv(cfg.input[0], stem, 3, 1, 1)?,
            true,
            ctx,
        )?));
    }
    let mut inp = stem;
    for (si, (&n, &w)) in blocks.iter().zip(widths).enumerate() {
        let stride = if si > 0 { 2 } else { 1 };
        let prefix = format!("layer{}", si + 1);
        let (stage, out) = residual_stage(&prefix, block, n, ch(cfg, w), stride, inp, ctx)?;
        l.extend(stage);
        inp = out;
    }
    l.push(Layer::GlobalAvgPool);
    l.push(Layer::Linear(Linear::new("fc", inp, cfg.num_classes, ctx)?));
    Ok(l)
}

fn resnet_tiny(cfg: &ModelConfig, ctx: &mut InitCtx<'_>) -> Result<Vec<Layer>> {
    resnet(
        cfg,
        ctx,
        ResidualBlock::Basic,
        &[1, 1, 1],
        &[16, 32, 64],
        false,
    )
}
fn resnet18(cfg: &ModelConfig, ctx: &mut InitCtx<'_>) -> Result<Vec<Layer>> {
    resnet(
        cfg,
        ctx,
        ResidualBlock::Basic,
        &[2, 2, 2, 2],
        &[64, 128, 256, 512],
        false,
    )
}
fn resnet34(cfg: &ModelConfig, ctx: &mut InitCtx<'_>) -> Result<Vec<Layer>> {
    resnet(
        cfg,
        ctx,
        ResidualBlock::Basic,
        &[3, 4, 6, 3],
        &[64, 128, 256, 512],
        false,
    )
}
fn resnet50(cfg: &ModelConfig, ctx: &mut InitCtx<'_>) -> Result<Vec<Layer>> {
    resnet(
        cfg,
        ctx,
        ResidualBlock::Bottleneck,
        &[3, 4, 6, 3],
        &[64, 128, 256, 512],
        false,
    )
}
fn resnet18_in(cfg: &ModelConfig, ctx: &mut InitCtx<'_>) -> Result<Vec<Layer>> {
    resnet(
        cfg,
        ctx,
        ResidualBlock::Basic,
        &[2, 2, 2, 2],
        &[64, 128, 256, 512],
        true,
    )
}
fn resnet34_in(cfg: &ModelConfig, ctx: &mut InitCtx<'_>) -> Result<Vec<Layer>> {
    resnet(
        cfg,
        ctx,
        ResidualBlock::Basic,
        &[3, 4, 6, 3],
        &[64, 128, 256, 512],
        true,
    )
}
fn resnet50_in(cfg: &ModelConfig, ctx: &mut InitCtx<'_>) -> Result<Vec<Layer>> {
    resnet(
        cfg,
        ctx,
        ResidualBlock::Bottleneck,
        &[3, 4, 6, 3],
        &[64, 128, 256, 512],
        true,
    )
}

fn mobilenet_v1(cfg: &ModelConfig, ctx: &mut InitCtx<'_>) -> Result<Vec<Layer>> {
    let mut l = Vec::new();
    let mut c = ch(cfg, 32);
    l.push(Layer::Conv(unit(
        "features.0.conv",
        "features.0.bn",
        same_conv(cfg.input[0], c, 3, 2, 1)?,
        true,
        ctx,
    )?));
    let plan: [(usize, usize); 13] = [
        (64, 1),
        (128, 2),
        (128, 1),
        (256, 2),
        (256, 1),
        (512, 2),
        (512, 1),
        (512, 1),
        (512, 1),
        (512, 1),
        (512, 1),
        (1024, 2),
        (1024, 1),
    ];
    let mut i = 1;
    for (out, stride) in plan {
        let o = ch(cfg, out);
        let pair = depthwise_separable(
            &format!("features.{i}"),
            &format!("features.{}", i + 1),
            c,
            o,
            3,
            stride,
            ctx,
        )?;
        l.extend(pair);
        c = o;
        i += 2;
    }
    l.push(Layer::GlobalAvgPool);
    l.push(Layer::Linear(Linear::new(
        "classifier",
        c,
        cfg.num_classes,
        ctx,
    )?));
    Ok(l)
}

fn repvgg(
    cfg: &ModelConfig,
    ctx: &mut InitCtx<'_>,
    blocks: [usize; 4],
    mult: [f64; 4],
) -> Result<Vec<Layer>> {
    let mut l = Vec::new();
    let base = [64usize, 128, 256, 512];
    let stage0 = ch(cfg, (64.0f64.min(64.0 * mult[0])) as usize);
    l.push(Layer::Conv(unit(
        "stage0.0.conv",
        "stage0.0.bn",
        same_conv(cfg.input[0], stage0, 3, 2, 1)?,
        true,
        ctx,
    )?));
    let mut c = stage0;
    for s in 0..4 {
        let o = ch(cfg, (base[s] as f64 * mult[s]) as usize);
        for b in 0..blocks[s] {
            let stride = if b == 0 { 2 } else { 1 };
            let p = format!("stage{}.{b}", s + 1);
            l.push(Layer::Conv(unit(
                &format!("{p}.conv"),
                &format!("{p}.bn"),
                same_conv(c, o, 3, stride, 1)?,
                true,
                ctx,
            )?));
            c = o;
        }
    }
    l.push(Layer::GlobalAvgPool);
    l.push(Layer::Linear(Linear::new(
        "linear",
        c,
        cfg.num_classes,
        ctx,
    )?));
    Ok(l)
}

fn repvgg_a0(cfg: &ModelConfig, ctx: &mut InitCtx<'_>) -> Result<Vec<Layer>> {
    repvgg(cfg, ctx, [2, 4, 14, 1], [0.75, 0.75, 0.75, 2.5])
}
fn repvgg_a1(cfg: &ModelConfig, ctx: &mut InitCtx<'_>) -> Result<Vec<Layer>> {
    repvgg(cfg, ctx, [2, 4, 14, 1], [1.0, 1.0, 1.0, 2.5])
}
fn repvgg_a2(cfg: &ModelConfig, ctx: &mut InitCtx<'_>) -> Result<Vec<Layer>> {
    repvgg(cfg, ctx, [2, 4, 14, 1], [1.5, 1.5, 1.5, 2.75])
}
fn repvgg_b0(cfg: &ModelConfig, ctx: &mut InitCtx<'_>) -> Result<Vec<Layer>> {
    repvgg(cfg, ctx, [4, 6, 16, 1], [1.0, 1.0, 1.0, 2.5])
}

/// A vgg-tiny at width 0.5 for `side`×`side` single-channel images and 10 classes, drawn from
/// `rng`: the small model of the runtime's unit tests.
#[cfg(test)]
pub(crate) fn vgg_tiny_for_tests(side: usize, rng: &mut dyrep_api::SeededRng) -> Model {
    crate::ensure_linked();
    let cfg = ModelConfig {
        name: "vgg-tiny".into(),
        input: [1, side, side],
        num_classes: 10,
        width: 0.5,
        file: None,
    };
    build_model(&cfg, &mut InitCtx::new(rng, &candle_core::Device::Cpu))
        .expect("vgg-tiny builds for the tests' sizes")
}
