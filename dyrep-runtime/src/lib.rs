//! dyrep-runtime: everything that runs on top of the op and scorer registries
//! (docs/ARCHITECTURE.md "Layers"): models, training, DyRep as a component, checkpoints, fusion,
//! export, reports and the tools behind `dyrep bench` and `dyrep verify`. The data pipeline is
//! its own crate (`dyrep-data`, re-exported as `data`).
//!
//! Where things live: `model/` the model zoo built from slots and architecture files;
//! `dynamics/` DyRep (`Dynamics` and its observe/adjust hooks, paper §3-4; docs/LIBRARY.md);
//! `train/` `dyrep train`'s loop (the trainer state machine, the run directory, calibration
//! batches); `optim.rs` SGD and the LR schedule; `config.rs` a run's settings, `run_state.rs`
//! its progress; `checkpoint.rs` durable checkpoints and `restore`; `fs.rs` atomic writes and
//! the output-over-input rule; `fuse.rs` fuse and eval of whole networks (docs/REFERENCE.md
//! "Fusion checks"); `export/` the plain network with conventional names and as ONNX;
//! `report/` run reports, grouped comparisons and charts; `tools/` what
//! `dyrep bench`, `dyrep bench data` and `dyrep verify` run; `dist.rs` data-parallel communication; `plugin.rs` the model plugin
//! contract.

pub mod alloc;
pub mod checkpoint;
pub mod config;
pub mod cpu_time;
pub mod dist;
pub mod dynamics;
pub mod error;
pub mod export;
pub mod fs;
pub mod fuse;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod plugin;
pub mod report;
pub mod run_state;
pub mod tools;
pub mod train;

pub use dyrep_api as api;
pub use dyrep_api::hash;
pub use dyrep_data as data;
pub use dyrep_ops as ops;
pub use dyrep_scorers as scorers;
pub use error::{Result, RuntimeError};

/// Forces every registry crate into the final binary (inventory's linker caveat): the CLI and
/// every test binary call this once.
pub fn ensure_linked() {
    dyrep_ops::ensure_linked();
    dyrep_scorers::ensure_linked();
}
