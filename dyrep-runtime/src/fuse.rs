//! Deploy: `fuse` a trained checkpoint into the plain architecture (every block to one conv, the
//! conv bias folded into the following BN; docs/REFERENCE.md "Fusion checks") and verify on real
//! eval batches (same top-1, logits within 1e-4 relative), with per-block errors and params/MACs
//! before and after. `eval` of either form, with the logits and inputs as `.npy` for cross-checking
//! other runtimes.

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use dyrep_api::equivalence::compare;
use dyrep_api::SeededRng;
use serde::Serialize;

use crate::checkpoint::load_checkpoint_model;
use crate::checkpoint::{self, CheckpointData};
use crate::data::{self, loader::eval_stream, loader::Which, Dataset};
use crate::error::{Result, RuntimeError};
use crate::model::Model;
use crate::run_state::RunState;

/// Relative logit difference allowed between a trained model and its fused form.
pub const FUSE_LOGITS_REL: f64 = 1e-4;

/// One block's fusion error on a random input.
#[derive(Clone, Debug, Serialize)]
pub struct BlockError {
    pub path: String,
    pub branches: usize,
    pub max_abs: f64,
    pub rel: f64,
}

/// What `fuse` measured.
#[derive(Clone, Debug, Serialize)]
pub struct FuseReport {
    pub blocks: Vec<BlockError>,
    pub params_before: usize,
    pub params_after: usize,
    pub macs_before: u64,
    pub macs_after: u64,
    pub images: usize,
    pub logits_rel: f64,
    pub logits_max_abs: f64,
    pub top1_mismatches: usize,
    pub acc_before: f64,
    pub acc_after: f64,
}

impl FuseReport {
    pub fn passed(&self) -> bool {
        self.top1_mismatches == 0 && self.logits_rel <= FUSE_LOGITS_REL
    }
}

/// Eval-mode logits and labels of the first `limit` test images, in dataset order; with
/// `keep_inputs`, also the normalised inputs fed to the network.
fn logits_on(
    model: &Model,
    ds: &Arc<Dataset>,
    limit: Option<usize>,
    keep_inputs: bool,
    device: &Device,
) -> Result<(Tensor, Tensor, Vec<f32>)> {
    let mut outs = Vec::new();
    let mut labels = Vec::new();
    let mut inputs = Vec::new();
    for b in eval_stream(ds.clone(), Which::Test, 256, limit) {
        let b = b?;
        let (x, y) = b.to_tensors(ds, device)?;
        outs.push(model.infer(&x)?);
        labels.push(y);
        if keep_inputs {
            inputs.extend_from_slice(&b.images);
        }
    }
    Ok((Tensor::cat(&outs, 0)?, Tensor::cat(&labels, 0)?, inputs))
}

fn accuracy(logits: &Tensor, labels: &Tensor) -> Result<f64> {
    Ok(crate::metrics::correct(logits, labels)? as f64 / labels.dim(0)?.max(1) as f64)
}

/// Fuses the checkpoint at `src` into `out` (which must not exist or be empty) and verifies it.
/// The fused checkpoint is written even when verification fails, so it can be inspected; the
/// report says whether it passed.
pub fn fuse_checkpoint(
    src: &Path,
    out: &Path,
    limit: Option<usize>,
    device: &Device,
) -> Result<FuseReport> {
    check_limit(limit)?;
    let scope = crate::checkpoint::read_scope(src);
    crate::fs::check_output(
        out,
        "--out",
        &[crate::fs::Input::Dir(src), crate::fs::Input::Dir(&scope)],
    )?;
    if out.exists()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(RuntimeError::Config(format!(
            "output directory {} already exists and is not empty; choose another --out",
            out.display()
        )));
    }
    let (mut model, state) = load_checkpoint_model(src, device)?;
    let ds = Arc::new(data::load_with(
        &state.config.data,
        &state.config.load_options(),
    )?);
    let (params_before, macs_before) = (model.param_count(), model.macs()?);
    // Per-block error on a random input through the block vs its fused kernel.
    let mut rng = SeededRng::for_purpose(0, "fuse-check");
    let mut blocks = Vec::new();
    for u in model.units() {
        for info in u.slot.slots() {
            if !info.grown || info.depth > 0 {
                continue;
            }
            let g = info.geom;
            let side = (g.k + 4).max(8);
            let x = dyrep_api::init::normal_tensor(
                &mut rng,
                &[2, g.in_ch, side, side],
                0.0,
                1.0,
                device,
            )?;
            let y = u.slot.forward_t(&x, false)?;
            let yk = u
                .slot
                .equivalent()?
                .conv(&x, g.stride, g.padding, g.groups)?;
            let c = compare(&y, &yk)?;
            let branches = u.slot.as_block().map_or(1, |b| b.all_branches().count());
            blocks.push(BlockError {
                path: u.conv_path.clone(),
                branches,
                max_abs: c.max_abs,
                rel: c.rel,
            });
        }
    }
    // The reference runs every branch (not the blocks' fused convs, which share code with
    // the fusion under test).
    let (before, labels, _) =
        dyrep_api::branchwise(|| logits_on(&model, &ds, limit, false, device))?;
    model.fuse()?;
    let (after, _, _) = logits_on(&model, &ds, limit, false, device)?;
    let c = compare(&before, &after)?;
    let mismatches = before
        .argmax(1)?
        .ne(&after.argmax(1)?)?
        .to_dtype(candle_core::DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()? as usize;
    let report = FuseReport {
        blocks,
        params_before,
        params_after: model.param_count(),
        macs_before,
        macs_after: model.macs()?,
        images: labels.dim(0)?,
        logits_rel: c.rel,
        logits_max_abs: c.max_abs,
        top1_mismatches: mismatches,
        acc_before: accuracy(&before, &labels)?,
        acc_after: accuracy(&after, &labels)?,
    };
    let arch = model.arch();
    checkpoint::save(
        out,
        &CheckpointData::<RunState> {
            arch: &arch,
            model: model.tensor_map()?,
            optim: None,
            state: &state,
        },
    )?;
    Ok(report)
}

/// What `eval` measured.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub dataset: String,
    pub images: usize,
    pub top1: f64,
    pub loss: f64,
    pub form: String,
}

/// Evaluates a checkpoint (either form) on the test split of its dataset or of `data`.
pub fn eval_checkpoint(
    dir: &Path,
    data_spec: Option<&str>,
    limit: Option<usize>,
    logits_out: Option<&Path>,
    inputs_out: Option<&Path>,
    device: &Device,
) -> Result<EvalReport> {
    check_limit(limit)?;
    let scope = crate::checkpoint::read_scope(dir);
    for (flag, p) in [("--logits-out", logits_out), ("--inputs-out", inputs_out)] {
        if let Some(p) = p {
            crate::fs::check_output(
                p,
                flag,
                &[crate::fs::Input::Dir(dir), crate::fs::Input::Dir(&scope)],
            )?;
        }
    }
    let (model, state) = load_checkpoint_model(dir, device)?;
    let spec = data_spec.unwrap_or(&state.config.data).to_string();
    for (flag, p) in [("--logits-out", logits_out), ("--inputs-out", inputs_out)] {
        if let (Some(p), Some(data_path)) = (p, crate::data::spec_path(&spec)) {
            let input = match data_path.is_dir() {
                true => crate::fs::Input::Dir(&data_path),
                false => crate::fs::Input::File(&data_path),
            };
            crate::fs::check_output(p, flag, &[input])?;
        }
    }
    if let (Some(a), Some(b)) = (logits_out, inputs_out) {
        crate::fs::check_output(a, "--logits-out", &[crate::fs::Input::File(b)])?;
    }
    let ds = Arc::new(data::load_with(&spec, &state.config.load_options())?);
    let [c, h, w] = model.config.input;
    if [ds.channels, ds.height, ds.width] != [c, h, w]
        || ds.num_classes() != model.config.num_classes
    {
        return Err(RuntimeError::Config(format!(
            "dataset `{spec}` has {}x{}x{} inputs and {} classes but the checkpoint's model takes {c}x{h}x{w} and {} classes",
            ds.channels, ds.height, ds.width, ds.num_classes(), model.config.num_classes
        )));
    }
    let (logits, y, inputs) = logits_on(&model, &ds, limit, inputs_out.is_some(), device)?;
    let n = y.dim(0)?;
    let loss = crate::metrics::cross_entropy(&logits, &y, 0.0)?.to_scalar::<f32>()? as f64;
    if let Some(p) = logits_out {
        let v = logits.flatten_all()?.to_vec1::<f32>()?;
        write_npy(p, &v, &[n, model.config.num_classes])?;
    }
    if let Some(p) = inputs_out {
        write_npy(p, &inputs, &[n, c, h, w])?;
    }
    Ok(EvalReport {
        dataset: spec,
        images: n,
        top1: accuracy(&logits, &y)?,
        loss,
        form: format!("{:?}", model.form).to_lowercase(),
    })
}

/// `--limit 0` would evaluate nothing.
fn check_limit(limit: Option<usize>) -> Result<()> {
    if limit == Some(0) {
        return Err(RuntimeError::Config(
            "--limit 0 would evaluate no image; give at least 1, or leave it out for the whole test split".into(),
        ));
    }
    Ok(())
}

/// Writes a little-endian float32 `.npy` (format 1.0), atomically.
pub fn write_npy(path: &Path, data: &[f32], shape: &[usize]) -> Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_txt}, }}");
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + data.len() * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    crate::fs::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_parsable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        write_npy(&p, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
        let b = std::fs::read(&p).unwrap();
        assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
        let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hl) % 64, 0);
        let h = std::str::from_utf8(&b[10..10 + hl]).unwrap();
        assert!(h.contains("'shape': (2, 3)") && h.ends_with('\n'), "{h}");
        assert_eq!(
            f32::from_le_bytes([b[10 + hl], b[11 + hl], b[12 + hl], b[13 + hl]]),
            1.0
        );
        assert_eq!(b.len(), 10 + hl + 24);
    }
}
