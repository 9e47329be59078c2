//! Durable, atomic file writes and the rules that keep a command from destroying what it reads
//! (README.md "What dyrep guarantees").
//!
//! - [`write_atomic`]: a temporary file beside the target, flushed to disk, renamed over the
//!   target, and the directory flushed, so a crash, a kill or a power loss leaves either the old
//!   file or the new one, never a half-written one.
//! - [`remove_stale_temps`]: the temporaries a killed process left behind (their names carry the
//!   writer's process id; only those of dead processes are removed).
//! - [`check_output`]: an output path that is one of a command's inputs, or lies inside a run or
//!   checkpoint directory it reads, is refused before anything is written.
//! - [`fault_point`]: the fault-injection hook of the crash tests (`DYREP_FAULT_KILL_AT`).
//!
//! The durable write itself is `dyrep_api::durable` (the data layer writes through it too);
//! here it gets the runtime's errors, which name the file.

use std::path::{Path, PathBuf};

pub use dyrep_api::durable::{fault_point, parent_dir, FAULT_ENV};

use crate::error::{Result, RuntimeError};

/// Whether the process `pid` still runs (on other platforms than Unix: assumed to).
pub fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        // SAFETY: kill with signal 0 only checks that the process exists; no memory is passed.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        true
    }
}

/// The process id at the end of a temporary's name (`….tmp-1234`, `.old-last-1234`).
pub fn writer_pid(name: &str) -> Option<u32> {
    name.rsplit('-').next()?.parse().ok()
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let path = path.to_path_buf();
    move |source| RuntimeError::Io { path, source }
}

/// Writes `bytes` to a new file at `path` and flushes it to disk (no rename: for files inside a
/// temporary directory that is renamed as a whole).
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    dyrep_api::durable::write_synced(path, bytes).map_err(io_err(path))
}

/// Flushes a directory's entries (a rename or a new file in it) to disk.
pub fn sync_dir(dir: &Path) -> Result<()> {
    dyrep_api::durable::sync_dir(dir).map_err(io_err(dir))
}

/// Writes bytes to `path` atomically and durably (a temp file beside it, flushed, renamed over
/// it, the directory flushed): run-directory files, exports and charts.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    if !dir.is_dir() {
        return Err(RuntimeError::Config(format!(
            "cannot write {}: the directory {} does not exist",
            path.display(),
            dir.display()
        )));
    }
    dyrep_api::durable::write_atomic(path, bytes).map_err(io_err(path))
}

/// Removes the temporaries (`.NAME.tmp-PID` files of [`write_atomic`]) that processes no longer
/// running left in `dir`; returns their names. A live writer's temporaries are kept.
pub fn remove_stale_temps(dir: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return removed;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let is_temp = name.starts_with('.') && name.contains(".tmp-");
        if !is_temp || !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if writer_pid(&name).is_some_and(|pid| !process_alive(pid))
            && std::fs::remove_file(e.path()).is_ok()
        {
            removed.push(name);
        }
    }
    removed
}

/// What a command reads: one file, or a directory it reads files from (a run or a checkpoint).
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    File(&'a Path),
    Dir(&'a Path),
}

/// The absolute, symlink-free form of a path that may not exist yet (its parent must).
fn resolved(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = path.canonicalize() {
        return Some(p);
    }
    let parent = parent_dir(path).canonicalize().ok()?;
    Some(parent.join(path.file_name()?))
}

/// Refuses an output path (`flag` names it in the message) that is one of the inputs, or lies
/// inside an input directory: writing there would destroy what the command reads.
pub fn check_output(out: &Path, flag: &str, inputs: &[Input<'_>]) -> Result<()> {
    let Some(target) = resolved(out) else {
        return Ok(());
    };
    for input in inputs {
        let (path, clash) = match *input {
            Input::File(p) => (p, resolved(p).is_some_and(|p| p == target)),
            Input::Dir(p) => (p, resolved(p).is_some_and(|p| target.starts_with(p))),
        };
        if clash {
            return Err(RuntimeError::Config(format!(
                "{flag} {}: would write over {} that this command reads; choose a path outside it",
                out.display(),
                match input {
                    Input::File(_) => format!("the input file {}", path.display()),
                    Input::Dir(_) => format!("a file of {}", path.display()),
                }
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_over_an_input_file_or_inside_an_input_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        std::fs::create_dir_all(run.join("checkpoints/last")).unwrap();
        let model = run.join("checkpoints/last/model.safetensors");
        std::fs::write(&model, b"weights").unwrap();
        let e = check_output(&model, "--out", &[Input::File(&model)]).unwrap_err();
        assert!(e.to_string().contains("--out") && e.to_string().contains("reads"));
        // Through another spelling of the same path.
        let other = run.join("checkpoints/../checkpoints/last/model.safetensors");
        assert!(check_output(&other, "--out", &[Input::Dir(&run)]).is_err());
        // A new file inside the run is refused too; one beside it is fine.
        assert!(check_output(&run.join("x.onnx"), "--out", &[Input::Dir(&run)]).is_err());
        check_output(&tmp.path().join("x.onnx"), "--out", &[Input::Dir(&run)]).unwrap();
        assert_eq!(std::fs::read(&model).unwrap(), b"weights");
    }

    #[test]
    fn stale_temporaries_of_dead_writers_are_removed_and_live_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        // Process ids above the kernel's limit (2^22) never run.
        let dead = tmp.path().join(".metrics.csv.tmp-4194305");
        let mine = tmp
            .path()
            .join(format!(".metrics.csv.tmp-{}", std::process::id()));
        let user = tmp.path().join("notes.tmp-4194305");
        for p in [&dead, &mine, &user] {
            std::fs::write(p, b"x").unwrap();
        }
        assert_eq!(
            remove_stale_temps(tmp.path()),
            vec![".metrics.csv.tmp-4194305"]
        );
        assert!(!dead.exists() && mine.exists() && user.exists());
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let tmp = tempfile::tempdir().unwrap();
        // The rename cannot replace a non-empty directory: the write fails at its last step.
        let target = tmp.path().join("target");
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(target.join("kept"), b"old").unwrap();
        assert!(write_atomic(&target, b"new").is_err());
        assert_eq!(std::fs::read(target.join("kept")).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_temporary() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("a.txt");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }
}
