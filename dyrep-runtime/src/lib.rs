//! dyrep-runtime: everything that runs on top of the op and scorer registries (docs/ARCHITECTURE.md
//! "Numerics contract"): datasets and batches (`data`), the model zoo built from slots (`model`),
//! SGD and the LR schedule (`optim`), training runs with their run directory and exact resume
//! (`train`), DyRep's grow/cut dynamics (`dynamics`, paper §4, docs/REFERENCE.md "Growth schedule
//! (Rep)", "Dep (cut)", "Scores", "Optimizer state when parameters change"), atomic checkpoints
//! (`checkpoint`), fuse and eval of whole networks (`fuse`, docs/REFERENCE.md "Fusion checks"),
//! throughput benchmarks (`bench`), the fusion property check behind `dyrep verify` (`verify`),
//! export and import of the plain network with conventional names and as ONNX (`export`, `onnx`),
//! and run reports: curves, comparisons, the tree of grown blocks (`report`).

pub mod alloc;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod cpu_time;
pub mod data;
pub mod data_bench;
pub mod dist;
pub mod dynamics;
pub mod error;
pub mod export;
pub mod fs;
pub mod fuse;
pub mod groups;
pub mod hash;
pub mod metrics;
pub mod model;
pub mod optim;
mod palette;
pub mod report;
pub mod run_state;
pub mod train;
pub mod verify;

pub use dyrep_api as api;
pub use dyrep_ops as ops;
pub use dyrep_scorers as scorers;
pub use error::{Result, RuntimeError};

/// Forces every registry crate into the final binary (inventory's linker caveat): the CLI and
/// every test binary call this once.
pub fn ensure_linked() {
    dyrep_ops::ensure_linked();
    dyrep_scorers::ensure_linked();
}
