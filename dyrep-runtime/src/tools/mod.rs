//! What the `dyrep` tools run beside training: `bench.rs` (`dyrep bench`: a model's training and
//! eval throughput, per-conv times), `data_bench.rs` (`dyrep bench data`: the data pipeline's
//! images per second), `verify.rs` (`dyrep verify`: the fusion property of every registered op,
//! nested blocks and the kernels' cross-checks).

pub mod bench;
pub mod data_bench;
pub mod verify;
