//! Helpers shared by the integration tests that drive the `dyrep` binary. Each test file
//! compiles this module on its own and uses part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::Output;

/// A run's `metrics.csv` lines without their last two columns, the wall-clock and processor
/// seconds: the only columns that differ between runs that must be equal.
pub fn metrics_without_times(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(|l| l.rsplitn(3, ',').last().unwrap().to_string())
        .collect()
}

/// Asserts that a command failed as a user error should: exit status 1, a message on stderr of
/// at most two lines (clap's usage and help pointer aside) that contains `needle`, no panic.
pub fn assert_short_error(o: &Output, needle: &str, what: &str) {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{what}: {out}{err}");
    assert!(err.contains(needle), "{what}: `{needle}` not in {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{what}: {err}"
    );
    let lines = err
        .lines()
        .filter(|l| {
            let l = l.trim();
            !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
        })
        .count();
    assert!(lines <= 2, "{what}: {lines} lines: {err}");
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// A command's stdout and stderr together.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts that a command succeeded, showing its output when not.
pub fn ok(o: Output) -> Output {
    assert!(o.status.success(), "dyrep failed: {}", text(&o));
    o
}

/// Runs the `dyrep` binary under test with `args`.
pub fn dyrep(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_dyrep"))
        .args(args)
        .output()
        .expect("run dyrep")
}

/// A run directory's `events.jsonl`, one JSON value per line.
pub fn events(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
