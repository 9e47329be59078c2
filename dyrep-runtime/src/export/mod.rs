//! Export and import of the plain network (docs/USAGE.md, export): a trained
//! checkpoint is fused (docs/REFERENCE.md "Fusion checks") and written with the tensor names other
//! frameworks use — torchvision's for ResNet and VGG (`layer1.0.conv1.weight`,
//! `features.3.running_mean`), timm's deploy form for RepVGG (`stages.0.0.reparam_conv.weight`, BN
//! folded into the conv bias) — plus a JSON description of the architecture; or as ONNX
//! (`onnx.rs`). `init_from` reads the same names back into a plain model (the paper's §5.4 "D"
//! setting: grow a pretrained plain network on a downstream task), strictly: missing and unexpected
//! keys are listed.

mod import;
mod names;
pub mod onnx;
mod plain;

pub use import::load_plain_weights;
pub use names::Naming;
use plain::EXPORT_FORMAT;
pub use plain::{plain_export, PlainArch, PlainExport, PlainLayer};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::Serialize;

use crate::error::{Result, RuntimeError};
use crate::fs::{check_output, write_atomic, Input};
use crate::model::Model;

/// The fused plain model of a checkpoint (a fused checkpoint is used as is).
pub fn plain_model(checkpoint: &Path, device: &Device) -> Result<Model> {
    let (mut model, _) = crate::checkpoint::load_checkpoint_model(checkpoint, device)?;
    model.fuse()?;
    Ok(model)
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
    let scope = crate::checkpoint::read_scope(checkpoint);
    let inputs = [Input::Dir(checkpoint), Input::Dir(&scope)];
    check_output(out, "--out", &inputs)?;
    if format == ExportFormat::Safetensors {
        check_output(&arch_json_path(out), "--out (its .json)", &inputs)?;
    }
    let model = plain_model(checkpoint, device)?;
    let exp = plain_export(&model)?;
    let all: HashMap<String, candle_core::Tensor> = exp
        .tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.clone()))
        .collect();
    crate::checkpoint::check_finite(checkpoint, &all)?;
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
            let (bytes, initializers) = onnx::encode(&exp)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{build_model, ModelConfig};
    use candle_core::{DType, Tensor};
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
            file: None,
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
