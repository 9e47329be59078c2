//! Durable, atomic file writes — the one way dyrep commits a file (README.md "What dyrep
//! guarantees"): a temporary beside the target, flushed to disk, renamed over the target, the
//! directory flushed, so a crash, a kill or a power loss leaves the old file or the new one,
//! never a half-written one. Every commit step is a [`fault_point`], the hook of the crash tests
//! (`DYREP_FAULT_KILL_AT`). Errors are the `std::io::Error` of the step that failed; callers
//! name the file. Used by the data layer (shard packing) and the runtime (run files,
//! checkpoints, exports), which adds its own rules on top (`dyrep-runtime/src/fs.rs`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The environment variable of the crash tests: `DYREP_FAULT_KILL_AT=N` kills the process with
/// SIGKILL at the N-th commit step (a file written, flushed or renamed; a directory flushed,
/// renamed or removed) of a run's files and checkpoints.
pub const FAULT_ENV: &str = "DYREP_FAULT_KILL_AT";

static FAULT_COUNT: AtomicU64 = AtomicU64::new(0);

/// A step at which a kill must lose nothing. With `DYREP_FAULT_KILL_AT=N` set, the N-th call
/// kills this process at once (SIGKILL: no destructor, no buffered write runs), as a power loss
/// or `kill -9` at that instant would.
pub fn fault_point() {
    static AT: OnceLock<Option<u64>> = OnceLock::new();
    let Some(at) = *AT.get_or_init(|| std::env::var(FAULT_ENV).ok()?.parse().ok()) else {
        return;
    };
    if FAULT_COUNT.fetch_add(1, Ordering::SeqCst) + 1 == at {
        kill_self();
    }
}

#[cfg(unix)]
fn kill_self() {
    // SAFETY: getpid and kill are async-signal-safe libc calls with no memory arguments.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
}

#[cfg(not(unix))]
fn kill_self() {
    std::process::abort();
}

/// Writes `bytes` to a new file at `path` and flushes it to disk (no rename: for files inside a
/// temporary directory that is renamed as a whole).
pub fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    fault_point();
    f.sync_all()?;
    fault_point();
    Ok(())
}

/// Flushes a directory's entries (a rename or a new file in it) to disk.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    fault_point();
    Ok(())
}

/// The directory a path's file lives in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The temporary [`write_atomic`] writes `path` through: `.NAME.tmp-PID` beside it (the
/// process id lets a later run tell a dead writer's leftovers from a live one's).
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    parent_dir(path).join(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes bytes to `path` atomically and durably: [`temp_path`] written and flushed, renamed
/// over `path`, the directory flushed. The temporary is removed when a step fails.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_path(path);
    let moved = write_synced(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = moved {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    fault_point();
    sync_dir(&parent_dir(path))
}
