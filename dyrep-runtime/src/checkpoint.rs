//! Checkpoints (README.md "The `dyrep` command", run directory): a directory with `arch.json`
//! (structure, form train|fused), `model.safetensors` (every tensor by path; metadata carries a
//! hash of arch.json so mismatched pairs are detected), `optim.safetensors` (momentum buffers by
//! path) and `state.json` (progress, history, config). Written to a temp directory and renamed into
//! place, so a crash leaves the previous checkpoint intact.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{de::DeserializeOwned, Serialize};

use dyrep_api::{InitCtx, SeededRng};

use crate::error::{Result, RuntimeError};
use crate::model::{Model, ModelArch};
use crate::run_state::RunState;

const ARCH_HASH_KEY: &str = "dyrep_arch_fnv64";

fn ck_err(path: &Path, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn fnv64(s: &str) -> String {
    format!("{:016x}", crate::hash::fnv64(s.bytes()))
}

/// What a checkpoint holds, in memory.
pub struct CheckpointData<'a, S: Serialize> {
    pub arch: &'a ModelArch,
    pub model: HashMap<String, Tensor>,
    pub optim: Option<HashMap<String, Tensor>>,
    pub state: &'a S,
}

fn write_safetensors(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    meta: Option<HashMap<String, String>>,
) -> Result<()> {
    let mut items: Vec<(&String, &Tensor)> = tensors.iter().collect();
    items.sort_by(|a, b| a.0.cmp(b.0));
    safetensors::tensor::serialize_to_file(
        items.into_iter().map(|(k, v)| (k.as_str(), v)),
        meta,
        path,
    )
    .map_err(|e| ck_err(path, format!("cannot write: {e}")))
}

/// Writes a checkpoint atomically to `dir` (replacing an existing one only once the new one is
/// complete).
pub fn save<S: Serialize>(dir: &Path, data: &CheckpointData<'_, S>) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    std::fs::create_dir_all(parent).map_err(|e| ck_err(parent, format!("cannot create: {e}")))?;
    let tmp = parent.join(format!(".tmp-{name}-{}", std::process::id()));
    // Half-written copies of killed runs (never complete, never read).
    if let Ok(rd) = std::fs::read_dir(parent) {
        let stale = format!(".tmp-{name}-");
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&stale) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    std::fs::create_dir_all(&tmp).map_err(|e| ck_err(&tmp, format!("cannot create: {e}")))?;
    let arch_json =
        serde_json::to_string_pretty(data.arch).map_err(|e| ck_err(&tmp, e.to_string()))?;
    let write = |p: PathBuf, bytes: &[u8]| {
        std::fs::write(&p, bytes).map_err(|e| ck_err(&p, format!("cannot write: {e}")))
    };
    write(tmp.join("arch.json"), arch_json.as_bytes())?;
    let meta = HashMap::from([(ARCH_HASH_KEY.to_string(), fnv64(&arch_json))]);
    write_safetensors(&tmp.join("model.safetensors"), &data.model, Some(meta))?;
    if let Some(o) = &data.optim {
        write_safetensors(&tmp.join("optim.safetensors"), o, None)?;
    }
    let state =
        serde_json::to_string_pretty(data.state).map_err(|e| ck_err(&tmp, e.to_string()))?;
    write(tmp.join("state.json"), state.as_bytes())?;
    // Swap into place: old → .old, tmp → dir, drop .old. At every moment one complete copy exists.
    let old = parent.join(format!(".old-{name}-{}", std::process::id()));
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| ck_err(dir, format!("cannot move aside: {e}")))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| ck_err(dir, format!("cannot move into place: {e}")))?;
    if old.exists() {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

/// A checkpoint directory read back.
pub struct Loaded<S> {
    pub dir: PathBuf,
    pub arch: ModelArch,
    pub model: HashMap<String, Tensor>,
    pub optim: Option<HashMap<String, Tensor>>,
    pub state: S,
}

/// The directory to read for `dir`: itself, or the complete copy a crash between the two
/// renames of `save` left aside.
pub fn resolve(dir: &Path) -> Result<PathBuf> {
    if dir.join("arch.json").is_file() {
        return Ok(dir.to_path_buf());
    }
    if let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) {
        let prefix = format!(".old-{}-", name.to_string_lossy());
        if let Ok(rd) = std::fs::read_dir(parent) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix)
                    && e.path().join("arch.json").is_file()
                {
                    return Ok(e.path());
                }
            }
        }
    }
    if !dir.exists() {
        return Err(ck_err(dir, "does not exist"));
    }
    Err(ck_err(dir, "not a checkpoint directory (no arch.json)"))
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ck_err(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| ck_err(path, format!("invalid: {e}")))
}

/// Tensors by name and the file's `__metadata__`.
type TensorsAndMeta = (HashMap<String, Tensor>, Option<HashMap<String, String>>);

fn read_safetensors(path: &Path, device: &Device) -> Result<TensorsAndMeta> {
    let bytes = std::fs::read(path).map_err(|e| ck_err(path, format!("cannot read: {e}")))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| ck_err(path, format!("corrupt or truncated safetensors file: {e}")))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| ck_err(path, format!("corrupt or truncated safetensors file: {e}")))?;
    Ok((tensors, meta.metadata().clone()))
}

/// Reads a checkpoint directory, checking that the weights were written with this arch.json.
pub fn load<S: DeserializeOwned>(dir: &Path, device: &Device) -> Result<Loaded<S>> {
    let dir = resolve(dir)?;
    let arch_path = dir.join("arch.json");
    let arch_text = std::fs::read_to_string(&arch_path)
        .map_err(|e| ck_err(&arch_path, format!("cannot read: {e}")))?;
    let arch: ModelArch = serde_json::from_str(&arch_text)
        .map_err(|e| ck_err(&arch_path, format!("invalid: {e}")))?;
    let mp = dir.join("model.safetensors");
    let (model, meta) = read_safetensors(&mp, device)?;
    if let Some(h) = meta.as_ref().and_then(|m| m.get(ARCH_HASH_KEY)) {
        if *h != fnv64(&arch_text) {
            return Err(ck_err(
                &mp,
                "was not written with this arch.json (hash differs): the pair is mismatched",
            ));
        }
    }
    let op = dir.join("optim.safetensors");
    let optim = if op.is_file() {
        Some(read_safetensors(&op, device)?.0)
    } else {
        None
    };
    let state = read_json(&dir.join("state.json"))?;
    Ok(Loaded {
        dir,
        arch,
        model,
        optim,
        state,
    })
}

/// A checkpoint's model rebuilt from its `arch.json` and loaded with its weights, with the rest
/// of what the checkpoint holds.
pub struct Restored<S> {
    pub dir: PathBuf,
    pub model: Model,
    pub optim: Option<HashMap<String, Tensor>>,
    pub state: S,
}

/// Reads a checkpoint and rebuilds its model (train or fused form): the one way a run is
/// resumed and a checkpoint is fused, evaluated, inspected or exported.
pub fn restore<S: DeserializeOwned>(dir: &Path, device: &Device) -> Result<Restored<S>> {
    let loaded = load::<S>(dir, device)?;
    // The initial values are overwritten: `load_tensors` requires every tensor of the model.
    let mut rng = SeededRng::new(0);
    let mut ctx = InitCtx::new(&mut rng, device);
    let model = Model::from_arch(&loaded.arch, &mut ctx)
        .map_err(|e| ck_err(&loaded.dir.join("arch.json"), e.to_string()))?;
    model
        .load_tensors(&loaded.model)
        .map_err(|e| ck_err(&loaded.dir.join("model.safetensors"), e.to_string()))?;
    Ok(Restored {
        dir: loaded.dir,
        model,
        optim: loaded.optim,
        state: loaded.state,
    })
}

/// A training run's checkpoint: its model and its progress (with the run's config).
pub fn load_checkpoint_model(dir: &Path, device: &Device) -> Result<(Model, RunState)> {
    let r = restore::<RunState>(dir, device)?;
    Ok((r.model, r.state))
}
