//! Error type of dyrep-runtime: data, model, checkpoint, config and core errors, each naming
//! the file, path or setting involved.

use std::path::PathBuf;

/// Everything the runtime can fail with.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Api(#[from] dyrep_api::Error),
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A model that cannot be built or does not match its description.
    #[error("{0}")]
    Model(String),
    /// Bad settings (names the setting and the fix).
    #[error("{0}")]
    Config(String),
    /// A checkpoint that cannot be read or written.
    #[error("checkpoint {}: {reason}", path.display())]
    Checkpoint { path: PathBuf, reason: String },
    /// Any other file problem.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Training diverged (NaN loss) or similar.
    #[error("{0}")]
    Training(String),
    /// Stopped on request (Ctrl-C) between two steps; the message says how to continue.
    #[error("{0}")]
    Interrupted(String),
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

#[allow(dead_code)]
pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let path = path.into();
    move |source| RuntimeError::Io { path, source }
}

impl From<dyrep_api::GeomError> for RuntimeError {
    fn from(e: dyrep_api::GeomError) -> Self {
        RuntimeError::Api(e.into())
    }
}
