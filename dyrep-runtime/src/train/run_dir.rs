//! The files of a run directory (README.md "The `dyrep` command"): `config.resolved.toml`,
//! `model.toml` (the architecture file of a run that has one),
//! `run.log` (every line of the run, time-stamped), `metrics.csv`, `events.jsonl` (dyrep mode),
//! `summary.json` and `curves.svg`. Checkpoints live in `checkpoints/{last,best}` and are written
//! by `checkpoint::save`. Every file but the appended log is replaced atomically.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::TrainProgress;
use crate::dynamics::Event;
use crate::error::{io, Result, RuntimeError};
use crate::run_state::{EpochRecord, Summary};

/// An open run directory. In a data-parallel run only rank 0 writes it: the other ranks hold a
/// `RunDir` that writes nothing ([`RunDir::silent`]).
pub(crate) struct RunDir {
    dir: PathBuf,
    /// `None` on ranks other than 0.
    log: Option<std::fs::File>,
}

impl RunDir {
    /// Creates the directory of a new run. An existing non-empty one is refused unless `force`
    /// (then it is replaced).
    pub(crate) fn create(dir: &Path, force: bool) -> Result<()> {
        let non_empty = dir.exists()
            && std::fs::read_dir(dir)
                .map(|mut d| d.next().is_some())
                .unwrap_or(true);
        if non_empty {
            if !force {
                return Err(RuntimeError::Config(format!(
                    "output directory {} already exists and is not empty; pass --force to replace it or --resume to continue it",
                    dir.display()
                )));
            }
            std::fs::remove_dir_all(dir).map_err(io(dir))?;
        }
        std::fs::create_dir_all(dir).map_err(io(dir))
    }

    /// Opens an existing run directory, appending to its `run.log`.
    pub(crate) fn open(dir: &Path) -> Result<RunDir> {
        let path = dir.join("run.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
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

    pub(crate) fn write_config(&self, toml: &str) -> Result<()> {
        self.write_atomic("config.resolved.toml", toml)
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
        let tmp = std::env::temp_dir().join(format!("dyrep-rundir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::write(tmp.join("keep.txt"), "x").unwrap();
        let e = RunDir::create(&tmp, false).unwrap_err().to_string();
        assert!(e.contains("--force") && e.contains("--resume"), "{e}");
        assert!(tmp.join("keep.txt").exists());
        RunDir::create(&tmp, true).unwrap();
        assert!(!tmp.join("keep.txt").exists() && tmp.is_dir());
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
