//! Checkpoints (docs/USAGE.md, run directory): a directory with `arch.json`
//! (structure, form train|fused), `model.safetensors` (every tensor by path; metadata carries a
//! hash of arch.json so mismatched pairs are detected), `optim.safetensors` (momentum buffers by
//! path), `state.json` (progress, history, config) and `manifest.json` (each file's size and
//! checksum, verified on load). Written to a temp directory, flushed to disk and renamed into
//! place, so a crash, a kill or a power loss leaves the previous checkpoint intact; the run's
//! other files are derived from it (README.md "What dyrep guarantees").

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

/// A safetensors file's bytes (tensors in name order).
fn safetensors_bytes(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    meta: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut items: Vec<(&String, &Tensor)> = tensors.iter().collect();
    items.sort_by(|a, b| a.0.cmp(b.0));
    safetensors::tensor::serialize(items.into_iter().map(|(k, v)| (k.as_str(), v)), meta)
        .map_err(|e| ck_err(path, format!("cannot write: {e}")))
}

/// `manifest.json`: each file of the checkpoint with its size and FNV-1a 64 hash, written last
/// into the temporary directory and verified by [`load`], so a damaged, truncated, missing or
/// swapped file is named instead of loaded.
#[derive(Serialize, serde::Deserialize)]
struct Manifest {
    files: std::collections::BTreeMap<String, FileSum>,
}

#[derive(Serialize, serde::Deserialize, PartialEq)]
struct FileSum {
    bytes: u64,
    fnv64: String,
}

impl FileSum {
    fn of(bytes: &[u8]) -> FileSum {
        FileSum {
            bytes: bytes.len() as u64,
            fnv64: format!("{:016x}", crate::hash::fnv64(bytes.iter().copied())),
        }
    }
}

const MANIFEST: &str = "manifest.json";

/// Writes a checkpoint atomically and durably to `dir`: every file is written into a temporary
/// directory and flushed to disk, then the old checkpoint is moved aside, the new one renamed
/// into place and the old one removed, with the parent directory flushed after each rename. At
/// every instant one complete checkpoint exists under `dir` or, between the two renames, under
/// `.old-NAME-PID` beside it ([`resolve`] reads that one; [`recover`] puts it back).
pub fn save<S: Serialize>(dir: &Path, data: &CheckpointData<'_, S>) -> Result<()> {
    let parent = crate::fs::parent_dir(dir);
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".into());
    std::fs::create_dir_all(&parent).map_err(|e| ck_err(&parent, format!("cannot create: {e}")))?;
    recover(&parent);
    let tmp = parent.join(format!(".tmp-{name}-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| ck_err(&tmp, format!("cannot remove: {e}")))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| ck_err(&tmp, format!("cannot create: {e}")))?;
    let arch_json =
        serde_json::to_string_pretty(data.arch).map_err(|e| ck_err(&tmp, e.to_string()))?;
    let meta = HashMap::from([(ARCH_HASH_KEY.to_string(), fnv64(&arch_json))]);
    let state =
        serde_json::to_string_pretty(data.state).map_err(|e| ck_err(&tmp, e.to_string()))?;
    let mut files: Vec<(&str, Vec<u8>)> = vec![
        ("arch.json", arch_json.into_bytes()),
        (
            "model.safetensors",
            safetensors_bytes(&tmp.join("model.safetensors"), &data.model, Some(meta))?,
        ),
    ];
    if let Some(o) = &data.optim {
        let path = tmp.join("optim.safetensors");
        files.push(("optim.safetensors", safetensors_bytes(&path, o, None)?));
    }
    files.push(("state.json", state.into_bytes()));
    let manifest = Manifest {
        files: files
            .iter()
            .map(|(n, b)| (n.to_string(), FileSum::of(b)))
            .collect(),
    };
    let manifest =
        serde_json::to_string_pretty(&manifest).map_err(|e| ck_err(&tmp, e.to_string()))?;
    files.push((MANIFEST, manifest.into_bytes()));
    for (file, bytes) in &files {
        let p = tmp.join(file);
        crate::fs::write_synced(&p, bytes)?;
    }
    let synced = |p: &Path| {
        crate::fs::sync_dir(p).map_err(|e| ck_err(p, format!("cannot flush to disk: {e}")))
    };
    synced(&tmp)?;
    let old = parent.join(format!(".old-{name}-{}", std::process::id()));
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| ck_err(dir, format!("cannot move aside: {e}")))?;
        crate::fs::fault_point();
        synced(&parent)?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| ck_err(dir, format!("cannot move into place: {e}")))?;
    crate::fs::fault_point();
    synced(&parent)?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| ck_err(&old, format!("cannot remove: {e}")))?;
        crate::fs::fault_point();
        synced(&parent)?;
    }
    Ok(())
}

/// What [`recover`] did in a checkpoints directory, for the run's log.
#[derive(Debug, Default, PartialEq)]
pub struct Recovered {
    /// Checkpoints moved back into place from `.old-NAME-PID` (a kill between the two renames).
    pub restored: Vec<String>,
    /// Leftovers of killed writers that were removed (half-written `.tmp-…`, superseded `.old-…`).
    pub removed: Vec<String>,
}

/// Cleans what a killed [`save`] left in a checkpoints directory `parent`: a `.old-NAME-PID`
/// whose `NAME` is missing is moved back to `NAME` (it is the last complete checkpoint), one
/// whose `NAME` is complete is removed, and half-written `.tmp-NAME-PID` directories are removed.
/// Only leftovers of processes no longer running are touched.
pub fn recover(parent: &Path) -> Recovered {
    let mut done = Recovered::default();
    let Ok(rd) = std::fs::read_dir(parent) else {
        return done;
    };
    let mut entries: Vec<(String, PathBuf)> = rd
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    entries.sort();
    for (entry, path) in entries {
        let Some(pid) = crate::fs::writer_pid(&entry) else {
            continue;
        };
        if crate::fs::process_alive(pid) || !path.is_dir() {
            continue;
        }
        let pid_suffix = format!("-{pid}");
        if let Some(name) = entry
            .strip_prefix(".old-")
            .and_then(|n| n.strip_suffix(&pid_suffix))
        {
            let target = parent.join(name);
            if target.join("arch.json").is_file() {
                if std::fs::remove_dir_all(&path).is_ok() {
                    done.removed.push(entry);
                }
            } else if !target.exists()
                && path.join("arch.json").is_file()
                && std::fs::rename(&path, &target).is_ok()
            {
                let _ = crate::fs::sync_dir(parent);
                done.restored.push(name.to_string());
            }
        } else if entry.starts_with(".tmp-") && std::fs::remove_dir_all(&path).is_ok() {
            done.removed.push(entry);
        }
    }
    done
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

/// Checks every file `manifest.json` lists (checkpoints written before it existed have none and
/// are read as they are).
fn verify_manifest(dir: &Path) -> Result<()> {
    let path = dir.join(MANIFEST);
    if !path.exists() {
        return Ok(());
    }
    let manifest: Manifest = read_json(&path)?;
    for (name, sum) in &manifest.files {
        let p = dir.join(name);
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ck_err(
                    &p,
                    "is missing; the checkpoint is incomplete (restore the file from a copy, or use checkpoints/best)",
                ))
            }
            Err(e) => return Err(ck_err(&p, format!("cannot read: {e}"))),
        };
        let actual = FileSum::of(&bytes);
        if actual != *sum {
            return Err(ck_err(
                &p,
                format!(
                    "is damaged: {} bytes with checksum {} where the checkpoint wrote {} bytes with checksum {} (truncated, altered or replaced; use checkpoints/best or a copy)",
                    actual.bytes, actual.fnv64, sum.bytes, sum.fnv64
                ),
            ));
        }
    }
    Ok(())
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
    verify_manifest(&dir)?;
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

/// Refuses tensors with NaN or infinite values, naming the first.
pub fn check_finite(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        let t = &tensors[name];
        let finite = t
            .flatten_all()
            .and_then(|t| t.to_dtype(candle_core::DType::F32))
            .and_then(|t| t.to_vec1::<f32>())
            .map(|v| v.iter().all(|x| x.is_finite()))
            .map_err(|e| ck_err(path, format!("cannot read tensor `{name}`: {e}")))?;
        if !finite {
            return Err(ck_err(
                path,
                format!(
                    "tensor `{name}` holds NaN or infinite values (the file is damaged, or the run diverged before it was written); use checkpoints/best or an earlier copy"
                ),
            ));
        }
    }
    Ok(())
}

/// What a command that reads the checkpoint `dir` reads: the run directory that holds it
/// (`RUN/checkpoints/NAME`), or the checkpoint directory itself. Outputs go outside it.
pub fn read_scope(dir: &Path) -> PathBuf {
    let parent = crate::fs::parent_dir(dir);
    match parent.file_name() {
        Some(n) if n == "checkpoints" => crate::fs::parent_dir(&parent),
        _ => dir.to_path_buf(),
    }
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
    check_finite(&loaded.dir.join("model.safetensors"), &loaded.model)?;
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
