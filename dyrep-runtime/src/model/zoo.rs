//! The model zoo (docs/REFERENCE.md "Models"): name → builder, default input, one-line summary.
//! Every conv is a `ConvUnit` with BN (bias-free conv) and the reference init (conv N(0,
//! sqrt(2/(k²·C_out))), BN γ=1 β=0, linear U(±1/sqrt(out)) with zero bias).

use dyrep_api::{ConvGeom, InitCtx};
use serde::{Deserialize, Serialize};

use super::layers::{BasicBlock, Bottleneck, ConvUnit, Layer, Linear};
use super::{Form, Model};
use crate::error::{Result, RuntimeError};

/// What to build: a zoo name, the input shape `[C, H, W]`, the number of classes and a width
/// multiplier for every channel count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub name: String,
    pub input: [usize; 3],
    pub num_classes: usize,
    pub width: f64,
}

/// A zoo entry.
pub struct ModelEntry {
    pub name: &'static str,
    pub summary: &'static str,
    pub default_input: [usize; 3],
    build: fn(&ModelConfig, &mut InitCtx<'_>) -> Result<Vec<Layer>>,
}

impl std::fmt::Debug for ModelEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelEntry")
            .field("name", &self.name)
            .finish()
    }
}

const ZOO: &[ModelEntry] = &[
    ModelEntry {
        name: "vgg-tiny",
        summary: "CPU-sized VGG: 16-16-M-32-32-M-64 conv3x3+BN+ReLU, GAP, linear",
        default_input: [1, 28, 28],
        build: vgg_tiny,
    },
    ModelEntry {
        name: "bench-small",
        summary: "Benchmark net: 32-32-M-64-64-M-128 conv3x3+BN+ReLU, GAP, linear; 1x28x28",
        default_input: [1, 28, 28],
        build: bench_small,
    },
    ModelEntry {
        name: "bench-cifar",
        summary: "Benchmark net: 64-64-M-128-128-M-256 conv3x3+BN+ReLU, GAP, linear; 3x32x32",
        default_input: [3, 32, 32],
        build: bench_cifar,
    },
    ModelEntry {
        name: "resnet-tiny",
        summary: "CPU-sized ResNet: CIFAR stem 16, basic blocks [1,1,1] at 16-32-64",
        default_input: [1, 28, 28],
        build: resnet_tiny,
    },
    ModelEntry {
        name: "vgg16",
        summary: "VGG-16, CIFAR form: 13 conv3x3+BN+ReLU, maxpool(2,s1), 512-512-classes",
        default_input: [3, 32, 32],
        build: vgg16,
    },
    ModelEntry {
        name: "resnet18",
        summary: "ResNet-18, CIFAR stem (conv3x3 s1, no maxpool)",
        default_input: [3, 32, 32],
        build: resnet18,
    },
    ModelEntry {
        name: "resnet34",
        summary: "ResNet-34, CIFAR stem",
        default_input: [3, 32, 32],
        build: resnet34,
    },
    ModelEntry {
        name: "resnet50",
        summary: "ResNet-50 (bottleneck), CIFAR stem",
        default_input: [3, 32, 32],
        build: resnet50,
    },
    ModelEntry {
        name: "resnet18-imagenet",
        summary: "ResNet-18, ImageNet stem (conv7x7 s2 + maxpool 3 s2)",
        default_input: [3, 224, 224],
        build: resnet18_in,
    },
    ModelEntry {
        name: "resnet34-imagenet",
        summary: "ResNet-34, ImageNet stem",
        default_input: [3, 224, 224],
        build: resnet34_in,
    },
    ModelEntry {
        name: "resnet50-imagenet",
        summary: "ResNet-50, ImageNet stem",
        default_input: [3, 224, 224],
        build: resnet50_in,
    },
    ModelEntry {
        name: "mobilenet-v1",
        summary: "MobileNetV1: conv3x3 s2 + 13 depthwise/pointwise pairs",
        default_input: [3, 224, 224],
        build: mobilenet_v1,
    },
    ModelEntry {
        name: "repvgg-a0",
        summary: "RepVGG-A0 (plain deploy form): blocks [1,2,4,14,1], width [.75,.75,.75,2.5]",
        default_input: [3, 224, 224],
        build: repvgg_a0,
    },
    ModelEntry {
        name: "repvgg-a1",
        summary: "RepVGG-A1 (plain): blocks [1,2,4,14,1], width [1,1,1,2.5]",
        default_input: [3, 224, 224],
        build: repvgg_a1,
    },
    ModelEntry {
        name: "repvgg-a2",
        summary: "RepVGG-A2 (plain): blocks [1,2,4,14,1], width [1.5,1.5,1.5,2.75]",
        default_input: [3, 224, 224],
        build: repvgg_a2,
    },
    ModelEntry {
        name: "repvgg-b0",
        summary: "RepVGG-B0 (plain): blocks [1,4,6,16,1], width [1,1,1,2.5]",
        default_input: [3, 224, 224],
        build: repvgg_b0,
    },
];

/// Every model of the zoo.
pub fn models() -> &'static [ModelEntry] {
    ZOO
}

/// The zoo entry `name`, or an error listing the known names and the nearest one.
pub fn find_model(name: &str) -> Result<&'static ModelEntry> {
    dyrep_api::registry::lookup("model", name, ZOO.iter().collect(), |e| e.name)
        .map_err(RuntimeError::from)
}

/// Builds a model (fresh parameters from `ctx`).
pub fn build_model(config: &ModelConfig, ctx: &mut InitCtx<'_>) -> Result<Model> {
    let entry = find_model(&config.name)?;
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
    let layers = (entry.build)(config, ctx).map_err(too_small)?;
    let model = Model {
        config: config.clone(),
        layers,
        form: Form::Train,
    };
    // Walk the shapes once so a too-small input fails here, with a clear message.
    model.macs().map_err(too_small)?;
    Ok(model)
}

fn ch(cfg: &ModelConfig, c: usize) -> usize {
    ((c as f64 * cfg.width).round() as usize).max(1)
}

fn geom(i: usize, o: usize, k: usize, s: usize, g: usize) -> Result<ConvGeom> {
    Ok(ConvGeom::new(i, o, k, s, k / 2, g)?)
}

fn shape_after(cfg: &ModelConfig, layers: &[Layer]) -> Result<(usize, usize, usize)> {
    let [c, h, w] = cfg.input;
    let mut s = (c, h, w);
    for l in layers {
        s = l.macs_and_shape(s)?.1;
    }
    Ok(s)
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
                    geom(c, o, 3, 1, 1)?,
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

fn unit(
    path: &str,
    bn_path: &str,
    g: ConvGeom,
    relu: bool,
    ctx: &mut InitCtx<'_>,
) -> Result<ConvUnit> {
    ConvUnit::new(path, bn_path, g, true, relu, ctx)
}

#[derive(Clone, Copy)]
enum Block {
    Basic,
    Bottleneck,
}

fn resnet(
    cfg: &ModelConfig,
    ctx: &mut InitCtx<'_>,
    block: Block,
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
            geom(cfg.input[0], stem, 3, 1, 1)?,
            true,
            ctx,
        )?));
    }
    let expansion = match block {
        Block::Basic => 1,
        Block::Bottleneck => 4,
    };
    let mut inp = stem;
    for (si, (&n, &w)) in blocks.iter().zip(widths).enumerate() {
        let planes = ch(cfg, w);
        for bi in 0..n {
            let stride = if si > 0 && bi == 0 { 2 } else { 1 };
            let p = format!("layer{}.{bi}", si + 1);
            let out = planes * expansion;
            let downsample = if stride != 1 || inp != out {
                Some(unit(
                    &format!("{p}.downsample.0"),
                    &format!("{p}.downsample.1"),
                    geom(inp, out, 1, stride, 1)?,
                    false,
                    ctx,
                )?)
            } else {
                None
            };
            match block {
                Block::Basic => {
                    let conv1 = unit(
                        &format!("{p}.conv1"),
                        &format!("{p}.bn1"),
                        geom(inp, planes, 3, stride, 1)?,
                        true,
                        ctx,
                    )?;
                    let conv2 = unit(
                        &format!("{p}.conv2"),
                        &format!("{p}.bn2"),
                        geom(planes, planes, 3, 1, 1)?,
                        false,
                        ctx,
                    )?;
                    l.push(Layer::Basic(Box::new(BasicBlock {
                        conv1,
                        conv2,
                        downsample,
                    })));
                }
                Block::Bottleneck => {
                    let conv1 = unit(
                        &format!("{p}.conv1"),
                        &format!("{p}.bn1"),
                        geom(inp, planes, 1, 1, 1)?,
                        true,
                        ctx,
                    )?;
                    let conv2 = unit(
                        &format!("{p}.conv2"),
                        &format!("{p}.bn2"),
                        geom(planes, planes, 3, stride, 1)?,
                        true,
                        ctx,
                    )?;
                    let conv3 = unit(
                        &format!("{p}.conv3"),
                        &format!("{p}.bn3"),
                        geom(planes, out, 1, 1, 1)?,
                        false,
                        ctx,
                    )?;
                    l.push(Layer::Bottleneck(Box::new(Bottleneck {
                        conv1,
                        conv2,
                        conv3,
                        downsample,
                    })));
                }
            }
            inp = out;
        }
    }
    l.push(Layer::GlobalAvgPool);
    l.push(Layer::Linear(Linear::new("fc", inp, cfg.num_classes, ctx)?));
    Ok(l)
}

fn resnet_tiny(cfg: &ModelConfig, ctx: &mut InitCtx<'_>) -> Result<Vec<Layer>> {
    resnet(cfg, ctx, Block::Basic, &[1, 1, 1], &[16, 32, 64], false)
}
fn resnet18(cfg: &ModelConfig, ctx: &mut InitCtx<'_>) -> Result<Vec<Layer>> {
    resnet(
        cfg,
        ctx,
        Block::Basic,
        &[2, 2, 2, 2],
        &[64, 128, 256, 512],
        false,
    )
}
fn resnet34(cfg: &ModelConfig, ctx: &mut InitCtx<'_>) -> Result<Vec<Layer>> {
    resnet(
        cfg,
        ctx,
        Block::Basic,
        &[3, 4, 6, 3],
        &[64, 128, 256, 512],
        false,
    )
}
fn resnet50(cfg: &ModelConfig, ctx: &mut InitCtx<'_>) -> Result<Vec<Layer>> {
    resnet(
        cfg,
        ctx,
        Block::Bottleneck,
        &[3, 4, 6, 3],
        &[64, 128, 256, 512],
        false,
    )
}
fn resnet18_in(cfg: &ModelConfig, ctx: &mut InitCtx<'_>) -> Result<Vec<Layer>> {
    resnet(
        cfg,
        ctx,
        Block::Basic,
        &[2, 2, 2, 2],
        &[64, 128, 256, 512],
        true,
    )
}
fn resnet34_in(cfg: &ModelConfig, ctx: &mut InitCtx<'_>) -> Result<Vec<Layer>> {
    resnet(
        cfg,
        ctx,
        Block::Basic,
        &[3, 4, 6, 3],
        &[64, 128, 256, 512],
        true,
    )
}
fn resnet50_in(cfg: &ModelConfig, ctx: &mut InitCtx<'_>) -> Result<Vec<Layer>> {
    resnet(
        cfg,
        ctx,
        Block::Bottleneck,
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
        geom(cfg.input[0], c, 3, 2, 1)?,
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
        l.push(Layer::Conv(unit(
            &format!("features.{i}.conv"),
            &format!("features.{i}.bn"),
            geom(c, c, 3, stride, c)?,
            true,
            ctx,
        )?));
        l.push(Layer::Conv(unit(
            &format!("features.{}.conv", i + 1),
            &format!("features.{}.bn", i + 1),
            geom(c, o, 1, 1, 1)?,
            true,
            ctx,
        )?));
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
        geom(cfg.input[0], stage0, 3, 2, 1)?,
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
                geom(c, o, 3, stride, 1)?,
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
