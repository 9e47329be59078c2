//! Architecture files (`--model-file net.toml`): a CNN described as a list of layers — conv
//! units (BN and ReLU implied, as in the zoo), max and average pools, residual stages of basic
//! or bottleneck blocks, depthwise/pointwise pairs, global pooling, flatten, linear layers —
//! built with the zoo's own building blocks (`build.rs`), so every zoo model can be written as
//! a file and builds the same parameters (`examples/models/zoo/`). The parsed file travels in
//! `arch.json`, so checkpoints of such a model need no file to be evaluated, fused, exported or
//! resumed. The format is documented in docs/MODEL-FILES.md.

use std::path::{Path, PathBuf};

use dyrep_api::{ConvGeom, InitCtx};
use serde::{Deserialize, Serialize};

use super::build::{channels, conv_bn, depthwise_separable, residual_stage, ResidualBlock};
use super::layers::{Layer, Linear};
use super::ModelConfig;
use crate::error::{Result, RuntimeError};

/// A network described by a file (equal when the descriptions are; where it was read from does
/// not count).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchFile {
    /// The model's name (the file's stem unless the file sets `name`).
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
    /// The input `[C, H, W]` the network is meant for (training takes the data's shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<[usize; 3]>,
    #[serde(rename = "layer")]
    pub layers: Vec<LayerSpec>,
    /// Where the file was read from and the line of each layer (for error messages).
    #[serde(skip)]
    source: Option<Source>,
}

impl PartialEq for ArchFile {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.summary == other.summary
            && self.input == other.input
            && self.layers == other.layers
    }
}

#[derive(Clone, Debug)]
struct Source {
    path: PathBuf,
    lines: Vec<usize>,
}

fn three() -> usize {
    3
}
fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}

/// One `[[layer]]` entry; `kind` says which.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerSpec {
    /// A k×k conv + BN (+ ReLU), `repeat` times (the first with `stride`, the rest stride 1).
    /// Tensors at `{name}.conv` / `{name}.bn`, or `{name}.{r}.conv` when `repeat` is given;
    /// `name` defaults to `features.{index}`.
    Conv {
        channels: usize,
        #[serde(default = "three")]
        kernel: usize,
        #[serde(default = "one")]
        stride: usize,
        /// Default: kernel / 2 ("same" for odd kernels).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        padding: Option<usize>,
        #[serde(default = "one")]
        groups: usize,
        #[serde(default = "yes")]
        relu: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        repeat: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// A k×k max pool (stride defaults to the kernel).
    MaxPool {
        kernel: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<usize>,
        #[serde(default)]
        padding: usize,
    },
    /// A k×k average pool without padding (stride defaults to the kernel).
    AvgPool {
        kernel: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stride: Option<usize>,
    },
    /// A residual stage (torchvision's ResNet layout): `blocks` blocks of `block` type with
    /// `channels` inner channels (× 4 out for bottlenecks), the first with `stride`. Tensors at
    /// `{name}.{b}.conv1`, ...; `name` defaults to `layer{n}` for the n-th stage.
    Stage {
        block: ResidualBlock,
        channels: usize,
        blocks: usize,
        #[serde(default = "one")]
        stride: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// MobileNet's depthwise k×k (with `stride`) + pointwise 1×1 to `channels`, each with BN
    /// and ReLU, at `{name}.dw` / `{name}.pw`; `name` defaults to `features.{index}`.
    DepthwiseSeparable {
        channels: usize,
        #[serde(default = "three")]
        kernel: usize,
        #[serde(default = "one")]
        stride: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// Mean over the spatial dimensions (the features become flat).
    GlobalAvgPool {},
    /// Flattens `[C, H, W]` to `C·H·W` features.
    Flatten {},
    Relu {},
    /// A linear layer to `features` outputs (scaled by the width multiplier), or to the number
    /// of classes when `features` is left out (the classifier). Tensors at `{name}`; `name`
    /// defaults to `classifier` (one linear) or `classifier.{j}` (the j-th of several).
    Linear {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        features: Option<usize>,
        #[serde(default)]
        relu: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
}

impl LayerSpec {
    /// The `kind` key of this layer.
    pub fn kind(&self) -> &'static str {
        match self {
            LayerSpec::Conv { .. } => "conv",
            LayerSpec::MaxPool { .. } => "max_pool",
            LayerSpec::AvgPool { .. } => "avg_pool",
            LayerSpec::Stage { .. } => "stage",
            LayerSpec::DepthwiseSeparable { .. } => "depthwise_separable",
            LayerSpec::GlobalAvgPool {} => "global_avg_pool",
            LayerSpec::Flatten {} => "flatten",
            LayerSpec::Relu {} => "relu",
            LayerSpec::Linear { .. } => "linear",
        }
    }

    /// The sizes that must be at least 1, by key.
    fn sizes(&self) -> Vec<(&'static str, usize)> {
        match self {
            LayerSpec::Conv {
                channels,
                kernel,
                stride,
                groups,
                repeat,
                ..
            } => vec![
                ("channels", *channels),
                ("kernel", *kernel),
                ("stride", *stride),
                ("groups", *groups),
                ("repeat", repeat.unwrap_or(1)),
            ],
            LayerSpec::MaxPool { kernel, stride, .. } | LayerSpec::AvgPool { kernel, stride } => {
                vec![("kernel", *kernel), ("stride", stride.unwrap_or(*kernel))]
            }
            LayerSpec::Stage {
                channels,
                blocks,
                stride,
                ..
            } => vec![
                ("channels", *channels),
                ("blocks", *blocks),
                ("stride", *stride),
            ],
            LayerSpec::DepthwiseSeparable {
                channels,
                kernel,
                stride,
                ..
            } => vec![
                ("channels", *channels),
                ("kernel", *kernel),
                ("stride", *stride),
            ],
            LayerSpec::Linear { features, .. } => vec![("features", features.unwrap_or(1))],
            LayerSpec::GlobalAvgPool {} | LayerSpec::Flatten {} | LayerSpec::Relu {} => vec![],
        }
    }
}

/// The file as TOML gives it, with each layer's position.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    name: Option<String>,
    #[serde(default)]
    summary: String,
    input: Option<[usize; 3]>,
    #[serde(default)]
    layer: Vec<toml::Spanned<LayerSpec>>,
}

impl ArchFile {
    /// Reads and checks an architecture file.
    pub fn read(path: &Path) -> Result<ArchFile> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            RuntimeError::Config(format!(
                "--model-file {}: cannot read: {e}; give a TOML architecture file (docs/MODEL-FILES.md)",
                path.display()
            ))
        })?;
        ArchFile::parse(&text, path)
    }

    /// Parses and checks the text of an architecture file read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<ArchFile> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let at = match e.span() {
                Some(span) => format!("{}:{}", path.display(), line_of(span.start)),
                None => path.display().to_string(),
            };
            RuntimeError::Config(format!("{at}: {}", with_suggestion(e.message().trim())))
        })?;
        let name = match raw.name {
            Some(n) => n,
            None => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into()),
        };
        let lines = raw.layer.iter().map(|l| line_of(l.span().start)).collect();
        let file = ArchFile {
            name,
            summary: raw.summary,
            input: raw.input,
            layers: raw
                .layer
                .into_iter()
                .map(toml::Spanned::into_inner)
                .collect(),
            source: Some(Source {
                path: path.to_path_buf(),
                lines,
            }),
        };
        file.check()?;
        Ok(file)
    }

    /// Checks what does not need an input shape: a name, at least one layer, no zero sizes.
    fn check(&self) -> Result<()> {
        let file = self.file_name();
        if self.name.trim().is_empty() {
            return Err(RuntimeError::Config(format!("{file}: `name` is empty")));
        }
        if self.layers.is_empty() {
            return Err(RuntimeError::Config(format!(
                "{file}: no layers; add [[layer]] tables (docs/MODEL-FILES.md)"
            )));
        }
        if let Some(input) = self.input {
            if input.contains(&0) {
                return Err(RuntimeError::Config(format!(
                    "{file}: input {input:?} has a zero dimension"
                )));
            }
        }
        for (i, l) in self.layers.iter().enumerate() {
            for (key, v) in l.sizes() {
                if v == 0 {
                    return Err(RuntimeError::Config(format!(
                        "{}: `{key}` must be at least 1",
                        self.at(i)
                    )));
                }
                if matches!(key, "repeat" | "blocks") && v > MAX_REPEAT {
                    return Err(RuntimeError::Config(format!(
                        "{}: `{key}` = {v} is more than {MAX_REPEAT} layers; no network this deep trains",
                        self.at(i)
                    )));
                }
            }
        }
        Ok(())
    }

    fn file_name(&self) -> String {
        match &self.source {
            Some(s) => s.path.display().to_string(),
            None => format!("model `{}`", self.name),
        }
    }

    /// Refuses, before anything is allocated, a network whose weights cannot fit in the memory
    /// available: a lower bound of its weights from the specs alone (conv and linear weights as
    /// the channels chain; a flattened map counted as its channels), naming the largest layer.
    fn check_weight_memory(&self, cfg: &ModelConfig) -> Result<()> {
        let mut ch = cfg.input[0] as u128;
        let (mut total, mut largest) = (0u128, (0usize, 0u128));
        for (i, l) in self.layers.iter().enumerate() {
            let weights = match l {
                LayerSpec::Conv {
                    channels: c,
                    kernel,
                    groups,
                    repeat,
                    ..
                } => {
                    let (out, k2, g) = (
                        channels(cfg, *c) as u128,
                        (*kernel as u128).pow(2),
                        (*groups as u128).max(1),
                    );
                    let r = repeat.unwrap_or(1) as u128;
                    let w = ch * out * k2 / g + (r - 1) * out * out * k2 / g;
                    ch = out;
                    w
                }
                LayerSpec::Stage {
                    block,
                    channels: c,
                    blocks,
                    ..
                } => {
                    let planes = channels(cfg, *c) as u128;
                    ch = match block {
                        ResidualBlock::Basic => planes,
                        ResidualBlock::Bottleneck => 4 * planes,
                    };
                    *blocks as u128 * planes * planes * 9
                }
                LayerSpec::DepthwiseSeparable {
                    channels: c,
                    kernel,
                    ..
                } => {
                    let out = channels(cfg, *c) as u128;
                    let w = ch * (*kernel as u128).pow(2) + ch * out;
                    ch = out;
                    w
                }
                LayerSpec::Linear { features, .. } => {
                    let out = features.map_or(cfg.num_classes, |f| channels(cfg, f)) as u128;
                    let w = ch * out;
                    ch = out;
                    w
                }
                _ => 0,
            };
            total = total.saturating_add(weights);
            if weights > largest.1 {
                largest = (i, weights);
            }
        }
        let bytes = total.saturating_mul(4);
        let available = dyrep_api::init::available_memory();
        if bytes > u128::from(available) {
            return Err(RuntimeError::Config(format!(
                "{}: the network's weights would take at least {:.1} GB ({} the largest layer), more than the {:.1} GB of memory available; lower `channels`, `kernel`, `features`, `repeat` or `blocks` (or --width)",
                self.at(largest.0),
                bytes as f64 / 1e9,
                format_args!("{:.1} GB in", largest.1 as f64 * 4.0 / 1e9),
                available as f64 / 1e9
            )));
        }
        Ok(())
    }

    /// `file:line: layer i (kind)` for messages about layer `i`.
    fn at(&self, i: usize) -> String {
        let kind = self.layers.get(i).map_or("?", LayerSpec::kind);
        match &self.source {
            Some(s) => format!(
                "{}:{}: layer {i} ({kind})",
                s.path.display(),
                s.lines.get(i).copied().unwrap_or(0)
            ),
            None => format!("model `{}`, layer {i} ({kind})", self.name),
        }
    }

    /// Builds the network for a config's input, classes and width, checking that the shapes
    /// chain; errors name the layer (file:line) and the shapes.
    pub fn build(&self, cfg: &ModelConfig, ctx: &mut InitCtx<'_>) -> Result<Vec<Layer>> {
        self.check()?;
        self.check_weight_memory(cfg)?;
        let [c, h, w] = cfg.input;
        let mut shape = (c, h, w);
        let mut layers = Vec::new();
        let linears = self
            .layers
            .iter()
            .filter(|l| matches!(l, LayerSpec::Linear { .. }))
            .count();
        let (mut stage, mut linear) = (0usize, 0usize);
        // Which layer owns each tensor path: two layers of one name would write the same
        // checkpoint entries, and no checkpoint of the run could be loaded.
        let mut owners: std::collections::HashMap<String, usize> = Default::default();
        for (i, spec) in self.layers.iter().enumerate() {
            let fail = |e: String| RuntimeError::Config(format!("{}: {e}", self.at(i)));
            let flat = shape.1 == 0 && shape.2 == 0;
            let spatial = !matches!(
                spec,
                LayerSpec::Linear { .. } | LayerSpec::Relu {} | LayerSpec::Flatten {}
            );
            if flat && spatial {
                return Err(fail(format!(
                    "needs a [C, H, W] feature map but the features are already flat ({} values)",
                    shape.0
                )));
            }
            let built = match spec {
                LayerSpec::Linear {
                    features,
                    relu,
                    name,
                } => {
                    if !flat {
                        return Err(fail(format!(
                            "needs flat features but gets a {}x{}x{} feature map; put a global_avg_pool or flatten layer before it",
                            shape.0, shape.1, shape.2
                        )));
                    }
                    let out = match features {
                        Some(f) => channels(cfg, *f),
                        None => cfg.num_classes,
                    };
                    let path = name.clone().unwrap_or_else(|| match linears {
                        1 => "classifier".to_string(),
                        _ => format!("classifier.{linear}"),
                    });
                    linear += 1;
                    let mut v = vec![Layer::Linear(Linear::new(path, shape.0, out, ctx)?)];
                    if *relu {
                        v.push(Layer::Relu);
                    }
                    v
                }
                LayerSpec::Stage { .. } => {
                    stage += 1;
                    self.build_spatial(i, spec, stage, shape.0, cfg, ctx)
                        .map_err(|e| fail(e.to_string()))?
                }
                _ => self
                    .build_spatial(i, spec, stage, shape.0, cfg, ctx)
                    .map_err(|e| fail(e.to_string()))?,
            };
            for l in &built {
                let mut clash = None;
                l.visit_tensors(&mut |path, _, _| {
                    if let Some(&j) = owners.get(path) {
                        if j != i && clash.is_none() {
                            clash = Some((path.to_string(), j));
                        }
                    }
                    owners.insert(path.to_string(), i);
                });
                if let Some((path, j)) = clash {
                    let line = match self.source.as_ref().and_then(|s| s.lines.get(j)) {
                        Some(l) => format!(" (line {l})"),
                        None => String::new(),
                    };
                    return Err(fail(format!(
                        "its tensor `{path}` is also layer {j}'s{line}: every checkpoint would be unloadable; give each layer its own `name`"
                    )));
                }
                let before = shape;
                shape = l
                    .macs_and_shape(shape)
                    .map_err(|e| {
                        fail(format!(
                            "{e} (input {}x{}x{})",
                            before.0, before.1, before.2
                        ))
                    })?
                    .1;
            }
            layers.extend(built);
        }
        if shape != (cfg.num_classes, 0, 0) {
            return Err(RuntimeError::Config(format!(
                "{}: the network ends with {} but the data has {} classes; end with a `linear` layer without `features`",
                self.file_name(),
                if shape.1 == 0 && shape.2 == 0 {
                    format!("{} features", shape.0)
                } else {
                    format!("a {}x{}x{} feature map", shape.0, shape.1, shape.2)
                },
                cfg.num_classes
            )));
        }
        Ok(layers)
    }

    /// The layers of one spatial entry (`stage`: this stage's 1-based number) on `in_ch`
    /// input channels.
    fn build_spatial(
        &self,
        i: usize,
        spec: &LayerSpec,
        stage: usize,
        in_ch: usize,
        cfg: &ModelConfig,
        ctx: &mut InitCtx<'_>,
    ) -> Result<Vec<Layer>> {
        let default_name = || format!("features.{i}");
        Ok(match spec {
            LayerSpec::Conv {
                channels: c,
                kernel,
                stride,
                padding,
                groups,
                relu,
                repeat,
                name,
            } => {
                let name = name.clone().unwrap_or_else(default_name);
                let out = channels(cfg, *c);
                let mut v = Vec::new();
                let mut inp = in_ch;
                for r in 0..repeat.unwrap_or(1) {
                    let prefix = match repeat {
                        Some(_) => format!("{name}.{r}"),
                        None => name.clone(),
                    };
                    let s = if r == 0 { *stride } else { 1 };
                    let geom = ConvGeom::new(
                        inp,
                        out,
                        *kernel,
                        s,
                        padding.unwrap_or(kernel / 2),
                        *groups,
                    )?;
                    let unit = conv_bn(
                        &format!("{prefix}.conv"),
                        &format!("{prefix}.bn"),
                        geom,
                        *relu,
                        ctx,
                    )?;
                    v.push(Layer::Conv(unit));
                    inp = out;
                }
                v
            }
            LayerSpec::MaxPool {
                kernel,
                stride,
                padding,
            } => vec![Layer::MaxPool {
                k: *kernel,
                stride: stride.unwrap_or(*kernel),
                padding: *padding,
            }],
            LayerSpec::AvgPool { kernel, stride } => vec![Layer::AvgPool {
                k: *kernel,
                stride: stride.unwrap_or(*kernel),
            }],
            LayerSpec::Stage {
                block,
                channels: c,
                blocks,
                stride,
                name,
            } => {
                let prefix = name.clone().unwrap_or_else(|| format!("layer{stage}"));
                let planes = channels(cfg, *c);
                residual_stage(&prefix, *block, *blocks, planes, *stride, in_ch, ctx)?.0
            }
            LayerSpec::DepthwiseSeparable {
                channels: c,
                kernel,
                stride,
                name,
            } => {
                let name = name.clone().unwrap_or_else(default_name);
                let out = channels(cfg, *c);
                let pair = depthwise_separable(
                    &format!("{name}.dw"),
                    &format!("{name}.pw"),
                    in_ch,
                    out,
                    *kernel,
                    *stride,
                    ctx,
                )?;
                pair.into()
            }
            LayerSpec::GlobalAvgPool {} => vec![Layer::GlobalAvgPool],
            LayerSpec::Flatten {} => vec![Layer::Flatten],
            LayerSpec::Relu {} => vec![Layer::Relu],
            LayerSpec::Linear { .. } => Vec::new(),
        })
    }
}

/// The most layers one `repeat` or `blocks` may build.
const MAX_REPEAT: usize = 1024;

/// serde's "unknown field `x`, expected one of `a`, `b`" (or "unknown variant") with the nearest
/// valid name added.
fn with_suggestion(message: &str) -> String {
    if !(message.starts_with("unknown field") || message.starts_with("unknown variant")) {
        return message.to_string();
    }
    let quoted: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    let Some((wrong, valid)) = quoted.split_first() else {
        return message.to_string();
    };
    match dyrep_api::registry::nearest(wrong, valid.iter().copied()) {
        Some(near) => format!("{message} (did you mean `{near}`?)"),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use dyrep_api::SeededRng;

    fn parse(text: &str) -> Result<ArchFile> {
        ArchFile::parse(text, Path::new("net.toml"))
    }

    fn build(file: &ArchFile, input: [usize; 3]) -> Result<Vec<Layer>> {
        let mut rng = SeededRng::new(0);
        let mut ctx = InitCtx::new(&mut rng, &Device::Cpu);
        let cfg = ModelConfig {
            name: file.name.clone(),
            input,
            num_classes: 10,
            width: 1.0,
            file: Some(file.clone()),
        };
        file.build(&cfg, &mut ctx)
    }

    const SMALL: &str = "[[layer]]\nkind = \"conv\"\nchannels = 8\n\n[[layer]]\nkind = \"max_pool\"\nkernel = 2\n\n[[layer]]\nkind = \"global_avg_pool\"\n\n[[layer]]\nkind = \"linear\"\n";

    #[test]
    fn a_small_file_builds_with_default_names() {
        let f = parse(SMALL).unwrap();
        assert_eq!(f.name, "net");
        let layers = build(&f, [3, 8, 8]).unwrap();
        assert_eq!(layers.len(), 4);
        let Layer::Conv(u) = &layers[0] else {
            panic!("not a conv")
        };
        assert_eq!(
            (u.conv_path.as_str(), u.bn_path.as_str()),
            ("features.0.conv", "features.0.bn")
        );
        let Layer::Linear(l) = &layers[3] else {
            panic!("not a linear")
        };
        assert_eq!(l.path, "classifier");
    }

    #[test]
    fn an_unknown_key_names_the_line_and_the_nearest_key() {
        let text = SMALL.replace("channels = 8", "chanels = 8");
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.starts_with("net.toml:1:")
                || e.starts_with("net.toml:2:")
                || e.starts_with("net.toml:3:"),
            "{e}"
        );
        assert!(e.contains("did you mean `channels`"), "{e}");
    }

    #[test]
    fn an_unknown_kind_gets_the_nearest_kind() {
        let text = SMALL.replace("\"max_pool\"", "\"maxpool\"");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains("did you mean `max_pool`"), "{e}");
        assert!(e.starts_with("net.toml:"), "{e}");
    }

    #[test]
    fn zero_and_negative_sizes_are_refused() {
        let e = parse(&SMALL.replace("channels = 8", "channels = 0"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("net.toml:1: layer 0 (conv): `channels` must be at least 1"),
            "{e}"
        );
        let e = parse(&SMALL.replace("kernel = 2", "kernel = -2"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("net.toml:"), "{e}");
    }

    #[test]
    fn shapes_that_do_not_chain_name_the_layer_and_the_shapes() {
        // A linear layer on a feature map.
        let text = SMALL.replace("kind = \"global_avg_pool\"", "kind = \"relu\"");
        let e = build(&parse(&text).unwrap(), [3, 8, 8])
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer 3 (linear)") && e.contains("8x4x4"), "{e}");
        // A pool bigger than the map.
        let text = SMALL.replace("kernel = 2", "kernel = 9");
        let e = build(&parse(&text).unwrap(), [3, 8, 8])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("net.toml:5: layer 1 (max_pool)") && e.contains("8x8"),
            "{e}"
        );
        // No classifier at the end.
        let text = SMALL.replace("kind = \"linear\"", "kind = \"relu\"");
        let e = build(&parse(&text).unwrap(), [3, 8, 8])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ends with 8 features") && e.contains("10 classes"),
            "{e}"
        );
        // Groups that do not divide the channels.
        let text = SMALL.replace("channels = 8", "channels = 8\ngroups = 3");
        let e = build(&parse(&text).unwrap(), [3, 8, 8])
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer 0 (conv)"), "{e}");
    }

    /// Regression: two layers of one name trained, and every checkpoint of the run was
    /// unloadable (both wrote `a.conv.weight`).
    #[test]
    fn two_layers_of_one_name_are_refused_with_both_lines() {
        let text = "[[layer]]\nkind = \"conv\"\nchannels = 8\nname = \"a\"\n\n[[layer]]\nkind = \"conv\"\nchannels = 8\nname = \"a\"\n\n[[layer]]\nkind = \"global_avg_pool\"\n\n[[layer]]\nkind = \"linear\"\n";
        let e = build(&parse(text).unwrap(), [3, 8, 8])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("net.toml:6: layer 1 (conv)")
                && e.contains("`a.conv.weight`")
                && e.contains("layer 0's (line 1)"),
            "{e}"
        );
        // `repeat` with a name another layer uses: `a.0` against a layer named `a.0`.
        let text = text.replacen("name = \"a\"", "name = \"a.0\"", 1).replacen(
            "channels = 8\nname = \"a\"",
            "channels = 8\nrepeat = 2\nname = \"a\"",
            1,
        );
        assert!(build(&parse(&text).unwrap(), [3, 8, 8]).is_err());
    }

    #[test]
    fn an_empty_file_is_refused() {
        let e = parse("name = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("no layers"), "{e}");
    }

    #[test]
    fn the_parsed_file_round_trips_through_json() {
        let f = parse(SMALL).unwrap();
        let json = serde_json::to_string(&f).unwrap();
        let back: ArchFile = serde_json::from_str(&json).unwrap();
        assert_eq!(back.layers, f.layers);
        assert_eq!(back.name, f.name);
    }
}
