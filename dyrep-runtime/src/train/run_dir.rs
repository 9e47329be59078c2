//! The files of a run directory (docs/USAGE.md): `config.resolved.toml`,
//! `model.toml` (the architecture file of a run that has one),
//! `run.log` (every line of the run, time-stamped), `metrics.csv`, `movement.csv` (how far each
//! conv turned per epoch), `events.jsonl` (dyrep mode),
//! `summary.json` and `curves.svg`. Checkpoints live in `checkpoints/{last,best}` and are written
//! by `checkpoint::save`. Every file but the appended log is replaced atomically.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::TrainProgress;
use crate::dynamics::Event;
use crate::error::{io, Result, RuntimeError};
use crate::run_state::{EpochRecord, Movement, Summary};

/// An open run directory. In a data-parallel run only rank 0 writes it: the other ranks hold a
/// `RunDir` that writes nothing ([`RunDir::silent`]).
pub(crate) struct RunDir {
    dir: PathBuf,
    /// `None` on ranks other than 0.
    log: Option<std::fs::File>,
}

/// The names `dyrep train` writes at the top of a run directory.
const RUN_FILES: [&str; 9] = [
    "config.resolved.toml",
    "model.toml",
    "run.log",
    "metrics.csv",
    "movement.csv",
    "events.jsonl",
    "summary.json",
    "curves.svg",
    "checkpoints",
];

/// The names inside a checkpoint directory.
const CHECKPOINT_FILES: [&str; 5] = [
    "arch.json",
    "model.safetensors",
    "optim.safetensors",
    "state.json",
    "manifest.json",
];

/// A temporary of an atomic write (`.NAME.tmp-PID`) or of a checkpoint save (`.tmp-…`,
/// `.old-…`).
fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && (name.contains(".tmp-") || name.starts_with(".old-"))
}

fn entries(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    v.sort();
    Ok(v)
}

/// The first entry of `dir` that `dyrep train` does not write, if any: a directory holding one
/// is not a run, and `--force` never deletes it.
fn foreign_entry(dir: &Path) -> Result<Option<PathBuf>> {
    for (name, path) in entries(dir)? {
        if is_temporary(&name) {
            continue;
        }
        if !RUN_FILES.contains(&name.as_str()) {
            return Ok(Some(path));
        }
        if name == "checkpoints" {
            if !path.is_dir() {
                return Ok(Some(path));
            }
            for (ck, ck_path) in entries(&path)? {
                if is_temporary(&ck) {
                    continue;
                }
                if !matches!(ck.as_str(), "last" | "best") || !ck_path.is_dir() {
                    return Ok(Some(ck_path));
                }
                for (f, f_path) in entries(&ck_path)? {
                    if !CHECKPOINT_FILES.contains(&f.as_str()) {
                        return Ok(Some(f_path));
                    }
                }
            }
        }
    }
    Ok(None)
}

/// Takes an exclusive advisory lock on an open file without waiting; false when another
/// process holds it.
fn try_lock(file: &std::fs::File) -> std::io::Result<bool> {
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a file descriptor this `File` owns and keeps open for the call.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(false);
        }
        Err(e)
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        Ok(true)
    }
}

/// Whether a process trains in `dir` now (holds the lock on its `run.log`).
fn in_use_by_a_run(dir: &Path) -> Result<bool> {
    let path = dir.join("run.log");
    let Ok(file) = std::fs::File::open(&path) else {
        return Ok(false);
    };
    Ok(!try_lock(&file).map_err(io(&path))?)
}

fn in_use(dir: &Path) -> RuntimeError {
    RuntimeError::Config(format!(
        "{} is in use: another dyrep process is training in it (it holds run.log's lock); wait for it to end or stop it first",
        dir.display()
    ))
}

/// Where a run replaced by `--force` waits until the new run's first checkpoint is committed.
fn aside_path(dir: &Path, pid: u32) -> Option<PathBuf> {
    let name = dir.file_name()?.to_string_lossy().into_owned();
    Some(crate::fs::parent_dir(dir).join(format!(".{name}.replaced-{pid}")))
}

/// A run that `--force` moved aside: deleted once the new run has committed its first
/// checkpoint ([`Replaced::commit`]), moved back if the new run ends before that (dropped).
pub(crate) struct Replaced {
    dir: PathBuf,
    aside: Option<PathBuf>,
}

impl Replaced {
    /// The new run has a checkpoint: the old run is removed for good.
    pub(crate) fn commit(mut self) -> Result<PathBuf> {
        let aside = self.aside.take().unwrap_or_default();
        std::fs::remove_dir_all(&aside).map_err(io(&aside))?;
        crate::fs::sync_dir(&crate::fs::parent_dir(&aside))?;
        Ok(aside)
    }
}

impl Drop for Replaced {
    fn drop(&mut self) {
        if let Some(aside) = self.aside.take() {
            // The new directory holds only what this process wrote: no checkpoint yet.
            let _ = std::fs::remove_dir_all(&self.dir);
            if std::fs::rename(&aside, &self.dir).is_ok() {
                let _ = crate::fs::sync_dir(&crate::fs::parent_dir(&self.dir));
            }
        }
    }
}

/// Whether `dir` is the working directory or holds it (moving it would pull the process's
/// relative paths along).
fn holds_working_dir(dir: &Path) -> bool {
    match (
        dir.canonicalize(),
        std::env::current_dir().and_then(|c| c.canonicalize()),
    ) {
        (Ok(d), Ok(cwd)) => cwd.starts_with(d),
        _ => false,
    }
}

/// Undoes what a `--force` start killed before its first checkpoint left: the replaced run,
/// moved aside as `.NAME.replaced-PID`, goes back in place of the new run when that one has no
/// checkpoint yet, and is removed when it has. Returns a line for the log when it did anything.
pub(crate) fn recover_replaced(dir: &Path) -> Result<Option<String>> {
    let (Some(name), parent) = (dir.file_name(), crate::fs::parent_dir(dir)) else {
        return Ok(None);
    };
    let prefix = format!(".{}.replaced-", name.to_string_lossy());
    let Ok(rd) = std::fs::read_dir(&parent) else {
        return Ok(None);
    };
    for e in rd.flatten() {
        let entry = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = entry
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if crate::fs::process_alive(pid) {
            continue;
        }
        let aside = e.path();
        let committed = crate::checkpoint::resolve(&dir.join("checkpoints").join("last")).is_ok();
        if committed {
            std::fs::remove_dir_all(&aside).map_err(io(&aside))?;
            crate::fs::sync_dir(&parent)?;
            return Ok(Some(format!(
                "removed {}: the run a killed `--force` start replaced (the new run had committed a checkpoint)",
                aside.display()
            )));
        }
        if dir.exists() {
            if foreign_entry(dir)?.is_some() {
                return Ok(None);
            }
            std::fs::remove_dir_all(dir).map_err(io(dir))?;
        }
        std::fs::rename(&aside, dir).map_err(io(&aside))?;
        crate::fs::sync_dir(&parent)?;
        return Ok(Some(format!(
            "restored the run in {} that a `--force` start killed before its first checkpoint had moved aside",
            dir.display()
        )));
    }
    Ok(None)
}

impl RunDir {
    /// Creates the directory of a new run. An existing non-empty one is refused unless `force`
    /// and it is a dyrep run directory (nothing in it that `dyrep train` does not write): then it
    /// is moved aside, and the returned [`Replaced`] removes it once the new run has committed
    /// its first checkpoint, or moves it back if the new run ends before.
    pub(crate) fn create(dir: &Path, force: bool) -> Result<Option<Replaced>> {
        if dir.exists() && !dir.is_dir() {
            return Err(RuntimeError::Config(format!(
                "--out {}: is a file, not a directory; choose another --out",
                dir.display()
            )));
        }
        // What a start killed before writing its config left: only its own temporaries.
        if dir.is_dir() && foreign_entry(dir)?.is_none() {
            crate::fs::remove_stale_temps(dir);
        }
        let non_empty = dir.is_dir() && !entries(dir)?.is_empty();
        let mut replaced = None;
        if non_empty {
            if !force {
                return Err(RuntimeError::Config(format!(
                    "output directory {} already exists and is not empty; continue it with --resume {}, or choose another --out (--force replaces it only if it is a dyrep run)",
                    dir.display(),
                    dir.display()
                )));
            }
            if let Some(path) = foreign_entry(dir)? {
                return Err(RuntimeError::Config(format!(
                    "--force replaces only a dyrep run directory, and {} holds {}, which dyrep did not write; nothing was deleted: choose another --out",
                    dir.display(),
                    path.display()
                )));
            }
            if !dir.join("config.resolved.toml").is_file() {
                return Err(RuntimeError::Config(format!(
                    "--force replaces only a dyrep run directory, and {} has no config.resolved.toml; nothing was deleted: choose another --out",
                    dir.display()
                )));
            }
            if in_use_by_a_run(dir)? {
                return Err(in_use(dir));
            }
            if holds_working_dir(dir) {
                return Err(RuntimeError::Config(format!(
                    "--force cannot replace {}: it is (or holds) the working directory; run from outside it",
                    dir.display()
                )));
            }
            let aside = aside_path(dir, std::process::id()).ok_or_else(|| {
                RuntimeError::Config(format!("--out {}: not a directory name", dir.display()))
            })?;
            std::fs::rename(dir, &aside).map_err(io(dir))?;
            crate::fs::sync_dir(&crate::fs::parent_dir(dir))?;
            replaced = Some(Replaced {
                dir: dir.to_path_buf(),
                aside: Some(aside),
            });
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        crate::fs::sync_dir(&crate::fs::parent_dir(dir))?;
        Ok(replaced)
    }

    /// Opens an existing run directory, appending to its `run.log`.
    /// The process holds an exclusive lock on `run.log` while the `RunDir` lives (released by
    /// the kernel however the process ends), so a second `train` on the same directory — a
    /// resume, or a `--force` start — is refused while one runs.
    pub(crate) fn open(dir: &Path) -> Result<RunDir> {
        let path = dir.join("run.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        if !try_lock(&log).map_err(io(&path))? {
            return Err(in_use(dir));
        }
        Ok(RunDir {
            dir: dir.to_path_buf(),
            log: Some(log),
        })
    }

    /// The run directory as a rank other than 0 sees it: every write is skipped.
    pub(crate) fn silent(dir: &Path) -> RunDir {
        RunDir {
            dir: dir.to_path_buf(),
            log: None,
        }
    }

    /// Whether this process writes the run's files (rank 0).
    pub(crate) fn writes(&self) -> bool {
        self.log.is_some()
    }

    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn checkpoints(&self) -> PathBuf {
        self.dir.join("checkpoints")
    }

    /// A line of the run: `run.log`, the tracing log and the caller's progress display.
    pub(crate) fn log(&mut self, line: &str, echo: &mut dyn FnMut(TrainProgress<'_>)) {
        let Some(log) = self.log.as_mut() else {
            return;
        };
        tracing::info!(target: "dyrep::train", "{line}");
        echo(TrainProgress::Line(line));
        let _ = writeln!(log, "{} {line}", unix_time_stamp());
    }

    /// A detail for `run.log` and `-v` (not echoed as a line of the run).
    pub(crate) fn detail(&mut self, line: &str) {
        let Some(log) = self.log.as_mut() else {
            return;
        };
        tracing::debug!(target: "dyrep::train", "{line}");
        let _ = writeln!(log, "{} {line}", unix_time_stamp());
    }

    fn write_atomic(&self, name: &str, text: &str) -> Result<()> {
        if !self.writes() {
            return Ok(());
        }
        crate::fs::write_atomic(&self.dir.join(name), text.as_bytes())
    }

    /// `model.toml`: the architecture file the run was started with, as it was.
    pub(crate) fn copy_model_file(&self, path: &Path) -> Result<()> {
        if !self.writes() {
            return Ok(());
        }
        let bytes = std::fs::read(path).map_err(io(path))?;
        crate::fs::write_atomic(&self.dir.join("model.toml"), &bytes)
    }

    pub(crate) fn write_metrics(&self, history: &[EpochRecord]) -> Result<()> {
        self.write_atomic("metrics.csv", &metrics_csv(history))
    }

    /// `movement.csv`: how far each conv turned in each epoch (`Movement`).
    pub(crate) fn write_movement(&self, movement: &[Movement]) -> Result<()> {
        let mut s = String::from("epoch,path,grown,angle_deg\n");
        for m in movement {
            s.push_str(&format!(
                "{},{},{},{:.6}\n",
                m.epoch, m.path, m.grown, m.angle_deg
            ));
        }
        self.write_atomic("movement.csv", &s)
    }

    /// `events.jsonl`: one JSON object per grow or cut.
    pub(crate) fn write_events(&self, events: &[Event]) -> Result<()> {
        let mut lines = String::new();
        for e in events {
            lines.push_str(
                &serde_json::to_string(e).map_err(|e| RuntimeError::Config(e.to_string()))?,
            );
            lines.push('\n');
        }
        self.write_atomic("events.jsonl", &lines)
    }

    /// `summary.json`, then `curves.svg` (a convenience: failing to draw it is logged, not
    /// fatal to the run).
    pub(crate) fn write_summary(
        &mut self,
        summary: &Summary,
        echo: &mut dyn FnMut(TrainProgress<'_>),
    ) -> Result<()> {
        if !self.writes() {
            return Ok(());
        }
        let text = serde_json::to_string_pretty(summary)
            .map_err(|e| RuntimeError::Config(e.to_string()))?;
        self.write_atomic("summary.json", &text)?;
        let curves = self.dir.join("curves.svg");
        if let Err(e) = crate::report::read_run(&self.dir)
            .and_then(|record| crate::report::plot_run(&record, &curves))
        {
            self.log(&format!("warning: no curves.svg: {e}"), echo);
        }
        Ok(())
    }
}

/// `metrics.csv`: a train and a test row per epoch; `seconds` is the epoch's wall-clock time,
/// `cpu_seconds` its processor time (empty where unknown).
fn metrics_csv(history: &[EpochRecord]) -> String {
    let mut s = String::from("epoch,split,loss,acc,lr,params,macs,branches,seconds,cpu_seconds\n");
    for r in history {
        for (split, loss, acc) in [
            ("train", r.train_loss, r.train_acc),
            ("test", r.test_loss, r.test_acc),
        ] {
            let cpu = r.cpu_seconds.map_or(String::new(), |c| format!("{c:.3}"));
            s.push_str(&format!(
                "{},{split},{loss:.6},{acc:.6},{:.6e},{},{},{},{:.3},{cpu}\n",
                r.epoch, r.lr, r.params, r.macs, r.branches, r.seconds
            ));
        }
    }
    s
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC) for log lines.
fn unix_time_stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_stamps_are_utc_iso_8601() {
        let s = unix_time_stamp();
        assert_eq!(s.len(), 20, "{s}");
        assert!(
            s.starts_with("20") && s.ends_with('Z') && s.as_bytes()[10] == b'T',
            "{s}"
        );
    }

    #[test]
    fn a_non_empty_directory_is_refused_without_force() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.resolved.toml"), "x").unwrap();
        let e = RunDir::create(&dir, false).err().unwrap().to_string();
        assert!(e.contains("--resume"), "{e}");
        assert!(dir.join("config.resolved.toml").exists());
    }

    #[test]
    fn force_never_deletes_a_directory_that_is_not_a_run() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::create_dir_all(&victim).unwrap();
        std::fs::write(victim.join("thesis.tex"), "years of work").unwrap();
        // Even beside a run's own files.
        std::fs::write(victim.join("config.resolved.toml"), "x").unwrap();
        let e = RunDir::create(&victim, true).err().unwrap().to_string();
        assert!(
            e.contains("thesis.tex") && e.contains("nothing was deleted"),
            "{e}"
        );
        assert_eq!(
            std::fs::read_to_string(victim.join("thesis.tex")).unwrap(),
            "years of work"
        );
        // A file in a checkpoint directory that dyrep does not write also keeps it.
        let run = tmp.path().join("run");
        std::fs::create_dir_all(run.join("checkpoints/last")).unwrap();
        std::fs::write(run.join("config.resolved.toml"), "x").unwrap();
        std::fs::write(run.join("checkpoints/last/notes.md"), "mine").unwrap();
        assert!(RunDir::create(&run, true).is_err());
        assert!(run.join("checkpoints/last/notes.md").exists());
    }

    #[test]
    fn force_moves_a_run_aside_and_brings_it_back_when_the_new_run_fails_to_start() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        std::fs::create_dir_all(run.join("checkpoints/last")).unwrap();
        std::fs::write(run.join("config.resolved.toml"), "old").unwrap();
        std::fs::write(run.join("checkpoints/last/state.json"), "old").unwrap();
        let replaced = RunDir::create(&run, true).unwrap().unwrap();
        assert!(!run.join("config.resolved.toml").exists());
        std::fs::write(run.join("run.log"), "new").unwrap();
        drop(replaced);
        assert_eq!(
            std::fs::read_to_string(run.join("config.resolved.toml")).unwrap(),
            "old"
        );
        assert!(!run.join("run.log").exists());
        // Committed: the old run is gone, the new one stays.
        let replaced = RunDir::create(&run, true).unwrap().unwrap();
        std::fs::write(run.join("run.log"), "new").unwrap();
        replaced.commit().unwrap();
        assert!(run.join("run.log").exists() && !run.join("config.resolved.toml").exists());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_run_moved_aside_by_a_killed_force_start_is_restored() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        // Process ids above the kernel's limit (2^22) never run.
        let aside = tmp.path().join(".run.replaced-4194305");
        std::fs::create_dir_all(&aside).unwrap();
        std::fs::write(aside.join("config.resolved.toml"), "old").unwrap();
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("run.log"), "new, no checkpoint").unwrap();
        let line = recover_replaced(&run).unwrap().unwrap();
        assert!(line.contains("restored"), "{line}");
        assert_eq!(
            std::fs::read_to_string(run.join("config.resolved.toml")).unwrap(),
            "old"
        );
        assert!(!aside.exists());
    }
}
