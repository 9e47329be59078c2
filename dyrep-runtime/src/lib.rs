//! dyrep-runtime: what runs on top of the op and scorer registries. For now: the fusion
//! verification behind `dyrep verify` (reference §8). Models, data, training with grow (Rep)
//! and cut (Dep), checkpoints and fusion of whole networks land here next (DESIGN.md).

pub mod verify;

pub use dyrep_api as api;
pub use dyrep_ops as ops;
pub use dyrep_scorers as scorers;

/// Forces every registry crate into the final binary (inventory's linker caveat): the CLI and
/// every test binary call this once.
pub fn ensure_linked() {
    dyrep_ops::ensure_linked();
    dyrep_scorers::ensure_linked();
}
pub mod data;
pub mod error;
pub mod model;

pub use error::{Result, RuntimeError};
pub mod bench;
pub mod checkpoint;
pub mod dynamics;
pub mod fuse;
pub mod optim;
pub mod train;
