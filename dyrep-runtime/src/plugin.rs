//! The plugin contract of models (docs/PLUGINS.md "A model"): `dyrep_api::plugin` (branch types
//! and scorers) and what a model registered from its own crate uses — `register_model!`, the
//! config it is built for, and the layers it is made of (every conv in a `ConvUnit`, so DyRep
//! can grow it; `build` holds the zoo's building blocks).

pub use crate::model::build;
pub use crate::model::{BasicBlock, Bottleneck, ConvUnit, Layer, Linear, ModelConfig};
pub use crate::register_model;
pub use dyrep_api::plugin::*;
