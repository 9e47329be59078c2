//! One module per subcommand, each with `run(args, ctx) -> Result<exit code>`.

use std::io::StdoutLock;

use crate::progress::Verbosity;

pub(crate) mod bench;
pub(crate) mod compare;
pub(crate) mod data;
pub(crate) mod eval;
pub(crate) mod export;
pub(crate) mod fuse;
pub(crate) mod inspect;
pub(crate) mod models;
pub(crate) mod ops;
pub(crate) mod plot;
pub(crate) mod scorers;
pub(crate) mod train;
pub(crate) mod verify;

/// What every subcommand gets besides its arguments.
pub(crate) struct Ctx<'a> {
    pub out: StdoutLock<'a>,
    /// The `--device` the user gave, as text (for reports).
    pub device_spec: &'a str,
    pub device: candle_core::Device,
    pub verbosity: Verbosity,
}
