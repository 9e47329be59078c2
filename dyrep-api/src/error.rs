//! Error type of `dyrep-api` (and of the op/scorer crates built on it).
//!
//! Structured variants so callers can match on what went wrong; every message names the op, the
//! geometry or the path involved and, where there is one, the rule that was broken.

use crate::geom::ConvGeom;

fn gib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1e9)
}

/// Result alias used throughout dyrep's library crates.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the core API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A conv geometry that no conv can have, or an input too small for one.
    #[error(transparent)]
    Geom(#[from] crate::geom::GeomError),

    /// An op that cannot stand in for a conv of this geometry.
    #[error("op `{op}` cannot apply to a conv with {geom}: {rule}")]
    NotApplicable {
        op: String,
        geom: ConvGeom,
        rule: String,
    },

    /// A name that is not in a registry (op, scorer, ...).
    #[error("unknown {kind} `{name}`{}; known {kind}s: {}", suggestion_text(.suggestion), .known.join(", "))]
    UnknownName {
        kind: &'static str,
        name: String,
        known: Vec<String>,
        suggestion: Option<String>,
    },

    /// Two registry entries share a name.
    #[error("duplicate {kind} name `{name}` in the registry")]
    DuplicateName { kind: &'static str, name: String },

    /// A tensor of the wrong shape.
    #[error("shape mismatch in {context}: expected {expected:?}, got {got:?}")]
    ShapeMismatch {
        context: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },

    /// A train-mode batch norm that has a single value per channel (no variance to estimate).
    #[error("batch norm `{context}` got one value per channel in train mode; use a batch with more than one value per channel")]
    SingleValueBatch { context: String },

    /// A tensor larger than this machine's memory (or than any size can count): refused before
    /// it is allocated.
    #[error("a tensor of shape {shape:?} would take {} GB, more than the {} GB of memory available; lower the setting that sizes it (channels, kernel, features, width, image or batch size)", gib(*.bytes), gib(*.available))]
    TooLarge {
        shape: Vec<usize>,
        bytes: u64,
        available: u64,
    },

    /// A slot that cannot grow into a block.
    #[error("cannot grow `{path}`: {reason}")]
    CannotGrow { path: String, reason: String },

    /// A branch operation that this op does not support.
    #[error("op `{op}` does not support {what}")]
    Unsupported { op: String, what: String },

    /// A path that names no slot or branch.
    #[error("no {kind} at `{path}`")]
    NoSuchPath { kind: &'static str, path: String },

    /// A block that was asked to hold the same op twice.
    #[error("block already has a `{op}` branch")]
    DuplicateBranch { op: String },

    /// Architecture description that does not fit the geometry or the registry.
    #[error("invalid architecture at `{path}`: {reason}")]
    InvalidArch { path: String, reason: String },

    /// A scorer observation that makes no sense (shape mismatch between weight and grad, NaN, ...).
    #[error("scorer `{scorer}`: {reason}")]
    Scorer { scorer: String, reason: String },

    /// Errors from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A CPU kernel refused its arguments.
    #[error(transparent)]
    Kernel(#[from] dyrep_kernels::KernelError),
}

fn suggestion_text(s: &Option<String>) -> String {
    match s {
        Some(s) => format!(" (did you mean `{s}`?)"),
        None => String::new(),
    }
}
