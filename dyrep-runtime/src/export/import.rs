//! `init_from`: plain pretrained weights with conventional names (as `dyrep export` writes
//! them; torchvision/timm key names) read into a freshly built plain model (the paper's §5.4 "D"
//! setting: grow a pretrained plain network on a downstream task), strictly: missing and
//! unexpected keys are listed.

use std::collections::HashSet;
use std::path::Path;

use candle_core::{Device, Tensor};

use dyrep_api::Slot;

use crate::error::{Result, RuntimeError};
use crate::model::{ConvUnit, Layer, Model};

use super::list;
use super::names::{keys_for, Keys};

/// The file's tensors matched against the keys a model expects: what was taken, what is
/// missing, what has the wrong shape.
struct Matcher {
    file_tensors: std::collections::HashMap<String, Tensor>,
    used: HashSet<String>,
    missing: Vec<String>,
    bad_shape: Vec<String>,
}

impl Matcher {
    /// The tensor `key` if the file has it with shape `dims` (recording what is wrong if not).
    fn take(&mut self, key: String, dims: &[usize], optional: bool) -> Option<Tensor> {
        match self.file_tensors.get(&key) {
            None => {
                if !optional {
                    self.missing.push(key);
                }
                None
            }
            Some(t) if t.dims() != dims => {
                self.bad_shape
                    .push(format!("{key} (file {:?}, model {dims:?})", t.dims()));
                self.used.insert(key);
                None
            }
            Some(t) => {
                let t = t.clone();
                self.used.insert(key);
                Some(t)
            }
        }
    }

    /// One message listing every missing, unexpected and misshapen key; `None` when the file
    /// matches.
    fn mismatch(&self) -> Option<String> {
        let mut unexpected: Vec<String> = self
            .file_tensors
            .keys()
            .filter(|k| !self.used.contains(*k))
            .cloned()
            .collect();
        unexpected.sort();
        let mut missing = self.missing.clone();
        missing.sort();
        let mut parts = Vec::new();
        if !missing.is_empty() {
            parts.push(format!("missing keys: {}", list(&missing)));
        }
        if !unexpected.is_empty() {
            parts.push(format!("unexpected keys: {}", list(&unexpected)));
        }
        if !self.bad_shape.is_empty() {
            parts.push(format!("wrong shapes: {}", list(&self.bad_shape)));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// What the file holds for one conv unit.
struct UnitLoad {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    /// γ, β, running mean, running variance.
    bn: [Option<Tensor>; 4],
}

/// The file's tensors for a conv unit.
fn unit_load(u: &ConvUnit, keys: &Keys, m: &mut Matcher) -> UnitLoad {
    let k = &keys.units[&u.conv_path];
    let g = *u.slot.geom();
    let weight = m.take(format!("{}.weight", k.conv), &g.weight_shape(), false);
    let folded = keys.naming.folds_bn() && u.bn.is_some();
    let bias = m.take(
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
            bn[i] = m.take(format!("{key}.{n}"), &[g.out_ch], false);
        }
        // torchvision's BN counter: accepted, not needed.
        let _ = m.take(format!("{key}.num_batches_tracked"), &[], true);
    }
    UnitLoad { weight, bias, bn }
}

fn set(v: &candle_core::Var, t: &Tensor) -> Result<()> {
    Ok(v.set(&t.to_dtype(v.dtype())?.to_device(v.device())?)?)
}

/// Writes a unit's loaded tensors into it: the conv weight, and the BN — from the deploy
/// form's conv bias (`folds_bn`: y = W*x + b becomes the BN y = x + b exactly, γ = 1, β = b,
/// μ = 0, σ² = 1 − ε) or from its own tensors (a conv bias before it folds into its mean).
fn apply_unit(u: &ConvUnit, load: &UnitLoad, folds_bn: bool) -> Result<()> {
    let Slot::Conv(c) = &u.slot else {
        return Ok(());
    };
    if let Some(w) = &load.weight {
        set(c.layer().weight(), w)?;
    }
    match (&u.bn, folds_bn) {
        (Some(bn), true) => {
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
    Ok(())
}

/// Loads plain pretrained weights with conventional names (as `export` writes them) into a
/// freshly built plain model. Strict: every expected key must be present with its shape and no
/// other key may be (`num_batches_tracked` and torchvision VGG's conv biases are optional).
/// Nothing is written unless the whole file matches.
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
    crate::checkpoint::check_finite(file, &file_tensors)?;
    let keys = keys_for(model)?;
    let mut m = Matcher {
        file_tensors,
        used: HashSet::new(),
        missing: Vec::new(),
        bad_shape: Vec::new(),
    };
    let units: Vec<UnitLoad> = model
        .units()
        .into_iter()
        .map(|u| unit_load(u, &keys, &mut m))
        .collect();
    let mut linears = Vec::new();
    for l in &model.layers {
        if let Layer::Linear(lin) = l {
            let key = keys
                .linears
                .get(&lin.path)
                .cloned()
                .unwrap_or(lin.path.clone());
            let w = m.take(format!("{key}.weight"), lin.weight.dims(), false);
            let b = m.take(format!("{key}.bias"), lin.bias.dims(), false);
            linears.push((lin, w, b));
        }
    }
    if let Some(problems) = m.mismatch() {
        return Err(err(format!(
            "does not match model `{}` ({:?} names): {problems}",
            model.name(),
            keys.naming
        )));
    }
    for (u, load) in model.units().into_iter().zip(&units) {
        apply_unit(u, load, keys.naming.folds_bn())?;
    }
    for (lin, w, b) in linears {
        if let (Some(w), Some(b)) = (w, b) {
            set(&lin.weight, &w)?;
            set(&lin.bias, &b)?;
        }
    }
    Ok(())
}
