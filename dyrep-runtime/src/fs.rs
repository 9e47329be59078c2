//! Files that matter are written atomically: to a temporary file beside the target, then renamed
//! over it, so a crash or a full disk never leaves a half-written run file, export or chart.

use std::path::{Path, PathBuf};

use crate::error::{Result, RuntimeError};

/// Writes bytes to `path` atomically (a temp file beside it, then a rename): run-directory
/// files, exports and charts.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(RuntimeError::Config(format!(
            "cannot write {}: the directory {} does not exist",
            path.display(),
            dir.display()
        )));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| RuntimeError::Io { path: p, source }
    };
    std::fs::write(&tmp, bytes).map_err(io(path))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        RuntimeError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    })
}
