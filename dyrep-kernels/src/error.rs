//! Errors of the kernels: shapes that no kernel call can take, and candle failures.

/// Result alias of the kernels crate.
pub type Result<T, E = KernelError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// Arguments whose shapes do not fit the op.
    #[error("{op}: {detail}")]
    Shape { op: &'static str, detail: String },

    /// A candle operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
