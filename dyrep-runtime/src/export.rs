//! Export and import of the plain network (README.md "The `dyrep` command", export): a trained
//! checkpoint is fused (docs/REFERENCE.md "Fusion checks") and written with the tensor names other
//! frameworks use — torchvision's for ResNet and VGG (`layer1.0.conv1.weight`,
//! `features.3.running_mean`), timm's deploy form for RepVGG (`stages.0.0.reparam_conv.weight`, BN
//! folded into the conv bias) — plus a JSON description of the architecture; or as ONNX
//! (`onnx.rs`). `init_from` reads the same names back into a plain model (the paper's §5.4 "D"
//! setting: grow a pretrained plain network on a downstream task), strictly: missing and unexpected
//! keys are listed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use dyrep_api::{BnEval, ConvGeom, Kernel, Slot};

use crate::error::{Result, RuntimeError};
use crate::fs::write_atomic;
use crate::model::{ConvUnit, Layer, Model};

/// Which naming convention a model family exports with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Naming {
    /// torchvision's ResNet: `conv1`, `bn1`, `layer1.0.conv1`, `layer1.0.downsample.0`, `fc`.
    TorchvisionResnet,
    /// torchvision's VGG (`vgg*_bn`): one `features` sequence numbered conv, BN, ReLU, pool,
    /// then `classifier` (one linear) or `classifier.N`.
    TorchvisionVgg,
    /// timm's RepVGG in deploy form: `stem.reparam_conv`, `stages.S.B.reparam_conv` with the BN
    /// folded into the conv's bias, `head.fc`.
    TimmRepvgg,
    /// dyrep's own parameter paths (models with no conventional counterpart).
    Native,
}

impl Naming {
    /// The convention of a zoo model.
    pub fn for_model(name: &str) -> Naming {
        if name.starts_with("resnet") {
            Naming::TorchvisionResnet
        } else if name.starts_with("vgg") || name.starts_with("bench-") {
            Naming::TorchvisionVgg
        } else if name.starts_with("repvgg") {
            Naming::TimmRepvgg
        } else {
            Naming::Native
        }
    }

    fn folds_bn(self) -> bool {
        self == Naming::TimmRepvgg
    }
}

/// Where a conv unit's tensors go under a naming convention.
#[derive(Clone, Debug)]
struct UnitKeys {
    conv: String,
    /// `None` when the BN is folded into the conv (timm deploy form) or there is none.
    bn: Option<String>,
    /// The convention has a conv bias even next to a BN (torchvision VGG): written as zeros,
    /// folded into the BN's mean on import.
    conv_bias_beside_bn: bool,
}

/// Conventional keys of every conv unit (by conv path) and linear (by path) of a model.
struct Keys {
    naming: Naming,
    units: HashMap<String, UnitKeys>,
    linears: HashMap<String, String>,
}

fn keys_for(model: &Model) -> Result<Keys> {
    let naming = Naming::for_model(model.name());
    let mut units = HashMap::new();
    let mut linears = HashMap::new();
    let mut add = |u: &ConvUnit, conv: String, bn: Option<String>, bias: bool| {
        let bn = if u.bn.is_some() { bn } else { None };
        units.insert(
            u.conv_path.clone(),
            UnitKeys {
                conv,
                bn,
                conv_bias_beside_bn: bias && u.bn.is_some(),
            },
        );
    };
    match naming {
        Naming::TorchvisionResnet | Naming::Native => {
            for u in model.units() {
                add(u, u.conv_path.clone(), Some(u.bn_path.clone()), false);
            }
            for l in &model.layers {
                if let Layer::Linear(lin) = l {
                    linears.insert(lin.path.clone(), lin.path.clone());
                }
            }
        }
        Naming::TorchvisionVgg => {
            let mut idx = 0usize;
            let mut classifier = Vec::new();
            let mut in_classifier = false;
            for l in &model.layers {
                match l {
                    Layer::Conv(u) if !in_classifier => {
                        let bn_at = idx + 1;
                        add(
                            u,
                            format!("features.{idx}"),
                            Some(format!("features.{bn_at}")),
                            true,
                        );
                        idx += 1 + usize::from(u.bn.is_some()) + usize::from(u.relu);
                    }
                    Layer::MaxPool { .. } if !in_classifier => idx += 1,
                    Layer::Linear(lin) => {
                        in_classifier = true;
                        classifier.push(Some(lin.path.clone()));
                    }
                    Layer::Relu if in_classifier => classifier.push(None),
                    _ => {}
                }
            }
            let n_linear = classifier.iter().flatten().count();
            for (j, p) in classifier.iter().enumerate() {
                if let Some(p) = p {
                    let key = if n_linear == 1 {
                        "classifier".to_string()
                    } else {
                        format!("classifier.{j}")
                    };
                    linears.insert(p.clone(), key);
                }
            }
        }
        Naming::TimmRepvgg => {
            for u in model.units() {
                let conv = match u.conv_path.strip_prefix("stage") {
                    Some(rest) => {
                        let mut it = rest.split('.');
                        let stage: usize = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                        let block = it.next().unwrap_or("0");
                        if stage == 0 {
                            "stem.reparam_conv".to_string()
                        } else {
                            format!("stages.{}.{block}.reparam_conv", stage - 1)
                        }
                    }
                    None => u.conv_path.clone(),
                };
                add(u, conv, None, false);
            }
            for l in &model.layers {
                if let Layer::Linear(lin) = l {
                    linears.insert(lin.path.clone(), "head.fc".to_string());
                }
            }
        }
    }
    Ok(Keys {
        naming,
        units,
        linears,
    })
}

/// One conv of the plain network, ready to write: its BN either separate or folded.
pub(crate) struct PlainConvOut {
    pub geom: ConvGeom,
    /// The conv weight (BN folded in when `bn` is `None` and the unit had one).
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub bn: Option<BnEval>,
}

fn plain_conv(u: &ConvUnit, fold: bool) -> Result<PlainConvOut> {
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

/// The fused plain model of a checkpoint (a fused checkpoint is used as is).
pub fn plain_model(checkpoint: &Path, device: &Device) -> Result<Model> {
    let (mut model, _) = crate::train::load_checkpoint_model(checkpoint, device)?;
    model.fuse()?;
    Ok(model)
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

const EXPORT_FORMAT: &str = "dyrep-plain/1";

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

/// Export formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Safetensors,
    Onnx,
}

impl ExportFormat {
    pub fn parse(s: &str) -> Result<ExportFormat> {
        match s {
            "safetensors" => Ok(ExportFormat::Safetensors),
            "onnx" => Ok(ExportFormat::Onnx),
            other => Err(RuntimeError::Config(format!(
                "--format `{other}` is not known: use safetensors or onnx"
            ))),
        }
    }
}

/// What `dyrep export` wrote.
#[derive(Clone, Debug, Serialize)]
pub struct ExportReport {
    pub format: String,
    pub out: PathBuf,
    /// The architecture description (safetensors only).
    pub arch_json: Option<PathBuf>,
    pub model: String,
    pub naming: Naming,
    /// Tensors written (safetensors) or initializers (ONNX, BN folded into the convs).
    pub tensors: usize,
    pub params: usize,
    pub macs: u64,
    pub bytes: u64,
}

/// The path of the architecture description beside an exported `FILE.safetensors`.
pub fn arch_json_path(out: &Path) -> PathBuf {
    out.with_extension("json")
}

/// Fuses a checkpoint and writes it in `format` to `out`.
pub fn export_checkpoint(
    checkpoint: &Path,
    format: ExportFormat,
    out: &Path,
    device: &Device,
) -> Result<ExportReport> {
    let model = plain_model(checkpoint, device)?;
    let exp = plain_export(&model)?;
    let (bytes, arch_json, tensors) = match format {
        ExportFormat::Safetensors => {
            let mut items = Vec::with_capacity(exp.tensors.len());
            for (k, t) in &exp.tensors {
                items.push((k.as_str(), t.to_device(&Device::Cpu)?));
            }
            let meta = HashMap::from([
                ("format".to_string(), EXPORT_FORMAT.to_string()),
                ("model".to_string(), exp.arch.model.clone()),
            ]);
            let bytes = safetensors::tensor::serialize(items, Some(meta)).map_err(|e| {
                RuntimeError::Config(format!("cannot encode {}: {e}", out.display()))
            })?;
            let json_path = arch_json_path(out);
            if json_path == out {
                return Err(RuntimeError::Config(format!(
                    "--out {}: give the file a .safetensors extension (the architecture goes to a .json beside it)",
                    out.display()
                )));
            }
            let json = serde_json::to_string_pretty(&exp.arch)
                .map_err(|e| RuntimeError::Config(e.to_string()))?;
            write_atomic(&json_path, json.as_bytes())?;
            (bytes, Some(json_path), exp.tensors.len())
        }
        ExportFormat::Onnx => {
            let (bytes, initializers) = crate::onnx::encode(&exp)?;
            (bytes, None, initializers)
        }
    };
    write_atomic(out, &bytes)?;
    Ok(ExportReport {
        format: match format {
            ExportFormat::Safetensors => "safetensors".into(),
            ExportFormat::Onnx => "onnx".into(),
        },
        out: out.to_path_buf(),
        arch_json,
        model: exp.arch.model.clone(),
        naming: exp.arch.naming,
        tensors,
        params: exp.arch.params,
        macs: exp.arch.macs,
        bytes: bytes.len() as u64,
    })
}

fn list(v: &[String]) -> String {
    let mut s = v.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
    if v.len() > 8 {
        s.push_str(&format!(", … ({} in all)", v.len()));
    }
    s
}

/// Loads plain pretrained weights with conventional names (as `export` writes them) into a
/// freshly built plain model. Strict: every expected key must be present with its shape and no
/// other key may be (`num_batches_tracked` and torchvision VGG's conv biases are optional).
pub fn load_plain_weights(model: &Model, file: &Path) -> Result<()> {
    let err = |reason: String| RuntimeError::Checkpoint {
        path: file.to_path_buf(),
        reason,
    };
    if model.block_count() > 0 {
        return Err(RuntimeError::Model(
            "pretrained plain weights load into a plain model (before any growth)".into(),
        ));
    }
    let bytes = std::fs::read(file).map_err(|e| err(format!("cannot read: {e}")))?;
    let device = model
        .tensors()
        .first()
        .map_or(Device::Cpu, |t| t.1.device().clone());
    let file_tensors = candle_core::safetensors::load_buffer(&bytes, &device)
        .map_err(|e| err(format!("not a readable safetensors file: {e}")))?;
    let keys = keys_for(model)?;
    let mut used: HashSet<String> = HashSet::new();
    let mut missing = Vec::new();
    let mut bad_shape = Vec::new();
    let mut take = |key: String, dims: &[usize], optional: bool| -> Option<Tensor> {
        match file_tensors.get(&key) {
            None => {
                if !optional {
                    missing.push(key);
                }
                None
            }
            Some(t) if t.dims() != dims => {
                bad_shape.push(format!("{key} (file {:?}, model {dims:?})", t.dims()));
                used.insert(key);
                None
            }
            Some(t) => {
                used.insert(key);
                Some(t.clone())
            }
        }
    };
    struct UnitLoad {
        weight: Option<Tensor>,
        bias: Option<Tensor>,
        bn: [Option<Tensor>; 4],
    }
    let mut loads: Vec<(String, UnitLoad)> = Vec::new();
    for u in model.units() {
        let k = &keys.units[&u.conv_path];
        let g = *u.slot.geom();
        let weight = take(format!("{}.weight", k.conv), &g.weight_shape(), false);
        let folded = keys.naming.folds_bn() && u.bn.is_some();
        let bias = take(
            format!("{}.bias", k.conv),
            &[g.out_ch],
            !folded || k.conv_bias_beside_bn,
        );
        let mut bn = [None, None, None, None];
        if let Some(key) = &k.bn {
            for (i, n) in ["weight", "bias", "running_mean", "running_var"]
                .iter()
                .enumerate()
            {
                bn[i] = take(format!("{key}.{n}"), &[g.out_ch], false);
            }
            // torchvision's BN counter: accepted, not needed.
            let _ = take(format!("{key}.num_batches_tracked"), &[], true);
        }
        loads.push((u.conv_path.clone(), UnitLoad { weight, bias, bn }));
    }
    let mut linear_loads = Vec::new();
    for l in &model.layers {
        if let Layer::Linear(lin) = l {
            let key = keys
                .linears
                .get(&lin.path)
                .cloned()
                .unwrap_or(lin.path.clone());
            let w = take(format!("{key}.weight"), lin.weight.dims(), false);
            let b = take(format!("{key}.bias"), lin.bias.dims(), false);
            linear_loads.push((lin.path.clone(), w, b));
        }
    }
    let mut unexpected: Vec<String> = file_tensors
        .keys()
        .filter(|k| !used.contains(*k))
        .cloned()
        .collect();
    unexpected.sort();
    missing.sort();
    if !missing.is_empty() || !unexpected.is_empty() || !bad_shape.is_empty() {
        let mut parts = Vec::new();
        if !missing.is_empty() {
            parts.push(format!("missing keys: {}", list(&missing)));
        }
        if !unexpected.is_empty() {
            parts.push(format!("unexpected keys: {}", list(&unexpected)));
        }
        if !bad_shape.is_empty() {
            parts.push(format!("wrong shapes: {}", list(&bad_shape)));
        }
        return Err(err(format!(
            "does not match model `{}` ({:?} names): {}",
            model.name(),
            keys.naming,
            parts.join("; ")
        )));
    }
    let set = |v: &candle_core::Var, t: &Tensor| -> Result<()> {
        Ok(v.set(&t.to_dtype(v.dtype())?.to_device(v.device())?)?)
    };
    for u in model.units() {
        let Some((_, load)) = loads.iter().find(|(p, _)| *p == u.conv_path) else {
            continue;
        };
        let Slot::Conv(c) = &u.slot else {
            continue;
        };
        if let Some(w) = &load.weight {
            set(c.layer().weight(), w)?;
        }
        match (&u.bn, keys.naming.folds_bn()) {
            (Some(bn), true) => {
                // Deploy form y = W*x + b: the BN becomes y = x + b exactly
                // (γ = 1, β = b, μ = 0, σ² = 1 − ε).
                let out = bn.num_features();
                let dt = bn.gamma().dtype();
                let dev = bn.gamma().device().clone();
                let b = match &load.bias {
                    Some(b) => b.to_dtype(dt)?.to_device(&dev)?,
                    None => Tensor::zeros(out, dt, &dev)?,
                };
                set(bn.gamma(), &Tensor::ones(out, dt, &dev)?)?;
                set(bn.beta(), &b)?;
                let var = Tensor::full((1.0 - bn.eps()) as f32, out, &dev)?.to_dtype(dt)?;
                bn.set_running_stats(&Tensor::zeros(out, dt, &dev)?, &var)?;
            }
            (Some(bn), false) => {
                let [g, b, m, v] = &load.bn;
                if let (Some(g), Some(b), Some(m), Some(v)) = (g, b, m, v) {
                    set(bn.gamma(), g)?;
                    set(bn.beta(), b)?;
                    // A conv bias before the BN folds into its mean: μ ← μ − b (exact).
                    let m = match &load.bias {
                        Some(cb) => (m - cb)?,
                        None => m.clone(),
                    };
                    let dt = bn.gamma().dtype();
                    let dev = bn.gamma().device().clone();
                    bn.set_running_stats(
                        &m.to_dtype(dt)?.to_device(&dev)?,
                        &v.to_dtype(dt)?.to_device(&dev)?,
                    )?;
                }
            }
            (None, _) => {
                if let (Some(b), Some(cb)) = (&load.bias, c.layer().bias()) {
                    set(cb, b)?;
                }
            }
        }
    }
    for l in &model.layers {
        if let Layer::Linear(lin) = l {
            if let Some((_, Some(w), Some(b))) = linear_loads.iter().find(|x| x.0 == lin.path) {
                set(&lin.weight, w)?;
                set(&lin.bias, b)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{build_model, ModelConfig};
    use candle_core::DType;
    use dyrep_api::{InitCtx, SeededRng};

    fn built(name: &str, seed: u64, input: [usize; 3]) -> Model {
        crate::ensure_linked();
        let mut rng = SeededRng::new(seed);
        let mut ctx = InitCtx::new(&mut rng, &Device::Cpu);
        let cfg = ModelConfig {
            name: name.into(),
            input,
            num_classes: 10,
            width: 0.25,
        };
        build_model(&cfg, &mut ctx).unwrap()
    }

    /// Random BN statistics and affine parameters, so folding is exercised.
    fn randomize_bns(m: &Model, seed: u64) {
        let mut rng = SeededRng::new(seed);
        for u in m.units() {
            if let Some(bn) = &u.bn {
                let n = bn.num_features();
                let r = |rng: &mut SeededRng, lo: f32, hi: f32| {
                    use rand::Rng;
                    let v: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
                    Tensor::from_vec(v, n, &Device::Cpu).unwrap()
                };
                bn.gamma().set(&r(&mut rng, 0.5, 1.5)).unwrap();
                bn.beta().set(&r(&mut rng, -0.5, 0.5)).unwrap();
                let mean = r(&mut rng, -0.3, 0.3);
                let var = r(&mut rng, 0.2, 2.0);
                bn.set_running_stats(&mean, &var).unwrap();
            }
        }
    }

    fn roundtrip(name: &str, input: [usize; 3], expect_key: &str) {
        let a = built(name, 1, input);
        randomize_bns(&a, 7);
        let exp = plain_export(&a).unwrap();
        assert!(
            exp.tensors.contains_key(expect_key),
            "{name}: no key {expect_key} in {:?}",
            exp.tensors.keys().take(12).collect::<Vec<_>>()
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.safetensors");
        let items: Vec<(&str, Tensor)> = exp
            .tensors
            .iter()
            .map(|(k, t)| (k.as_str(), t.clone()))
            .collect();
        safetensors::tensor::serialize_to_file(items, None, &file).unwrap();
        let b = built(name, 2, input);
        load_plain_weights(&b, &file).unwrap();
        let mut rng = SeededRng::new(3);
        use rand::Rng;
        let [c, h, w] = input;
        let x: Vec<f32> = (0..2 * c * h * w)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let x = Tensor::from_vec(x, (2, c, h, w), &Device::Cpu).unwrap();
        let ya = a.infer(&x).unwrap();
        let yb = b.infer(&x).unwrap();
        let diff = (&ya - &yb)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let scale = ya
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            diff <= 1e-5 * scale.max(1.0),
            "{name}: diff {diff} scale {scale}"
        );
    }

    #[test]
    fn vgg_exports_torchvision_sequential_keys_and_reimports_exactly() {
        // vgg-tiny: conv(0) bn(1) relu(2) conv(3) bn(4) relu(5) pool(6) conv(7) bn(8) ...
        roundtrip("vgg-tiny", [1, 16, 16], "features.8.running_var");
        roundtrip("vgg16", [3, 32, 32], "classifier.2.weight");
    }

    #[test]
    fn resnet_exports_torchvision_keys_and_reimports_exactly() {
        roundtrip(
            "resnet-tiny",
            [1, 16, 16],
            "layer2.0.downsample.1.running_mean",
        );
        roundtrip("resnet-tiny", [1, 16, 16], "fc.weight");
    }

    #[test]
    fn repvgg_exports_timm_deploy_keys_with_folded_bn_and_reimports_exactly() {
        roundtrip("repvgg-a0", [3, 32, 32], "stages.3.0.reparam_conv.bias");
        roundtrip("repvgg-a0", [3, 32, 32], "stem.reparam_conv.weight");
    }

    #[test]
    fn strict_import_lists_missing_and_unexpected_keys() {
        let a = built("vgg-tiny", 1, [1, 16, 16]);
        let exp = plain_export(&a).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.safetensors");
        let mut items: Vec<(String, Tensor)> = exp
            .tensors
            .iter()
            .filter(|(k, _)| k.as_str() != "features.0.weight")
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect();
        items.push((
            "extra.weight".into(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        ));
        safetensors::tensor::serialize_to_file(items, None, &file).unwrap();
        let b = built("vgg-tiny", 2, [1, 16, 16]);
        let e = load_plain_weights(&b, &file).unwrap_err().to_string();
        assert!(e.contains("missing keys: features.0.weight"), "{e}");
        assert!(e.contains("unexpected keys: extra.weight"), "{e}");
    }
}
