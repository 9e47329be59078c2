//! Helpers shared by the integration tests that drive the `dyrep` binary.

use std::path::Path;

/// A run's `metrics.csv` lines without their last two columns, the wall-clock and processor
/// seconds: the only columns that differ between runs that must be equal.
pub fn metrics_without_times(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(|l| l.rsplitn(3, ',').last().unwrap().to_string())
        .collect()
}
