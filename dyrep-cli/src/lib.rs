//! dyrep-cli: argument parsing and output for the `dyrep` command (docs/ARCHITECTURE.md "CLI
//! contract"). No math here: listing comes from the registries, verification from `dyrep-runtime`.
//!
//! A plugin crate builds its own `dyrep` with its ops linked in:
//! `fn main() -> ExitCode { my_plugin::ensure_linked(); dyrep_cli::main() }`.
//!
//! Exit codes: 0 ok, 1 usage/config/data error, 2 verification failed, 130 interrupted (Ctrl-C).

mod args;
mod cmd;
mod config;
mod progress;
mod render;

pub use progress::{TrainReporter, Verbosity};

use std::ffi::OsString;
use std::io::{self};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};

use args::{Cli, Command};

/// Exit code for a failed verification.
pub const EXIT_VERIFY_FAILED: u8 = 2;
/// Exit code for usage, config and data errors.
pub const EXIT_USAGE: u8 = 1;
/// Exit code of a run stopped by Ctrl-C (its last checkpoint is intact).
pub const EXIT_INTERRUPTED: u8 = 130;
/// Parses `--device`: `cpu`, `cuda` or `cuda:N`. `cuda` is GPU 0, or under an MPI launcher the
/// GPU of this rank's index on its machine (one GPU per rank).
pub fn parse_device(spec: &str) -> Result<candle_core::Device> {
    let ordinal = match spec {
        "cpu" => return Ok(candle_core::Device::Cpu),
        "cuda" => dyrep_runtime::dist::local_rank(),
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => bail!("--device `{spec}`: expected cpu, cuda or cuda:N (e.g. cuda:1)"),
        },
    };
    if !candle_core::utils::cuda_is_available() {
        bail!(
            "--device {spec}: this dyrep was built without CUDA support; build it with \
             scripts/build-cuda.sh (cargo feature `cuda`) or use --device cpu"
        );
    }
    candle_core::Device::new_cuda(ordinal).map_err(|e| {
        // candle's CUDA errors carry a backtrace after their first line.
        let reason = e.to_string();
        let reason = reason.lines().next().unwrap_or_default();
        anyhow::anyhow!("--device {spec}: cannot open CUDA device {ordinal}: {reason}")
    })
}

/// Runs `dyrep` with the process arguments.
pub fn main() -> ExitCode {
    run(std::env::args_os())
}

/// Runs `dyrep` with the given arguments (the first is the program name).
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    dyrep_runtime::ensure_linked();
    dyrep_runtime::alloc::keep_freed_memory();
    let cli = match parse_cli(args) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let code = match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
                _ => EXIT_USAGE,
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let verbosity = match (cli.quiet, cli.verbose) {
        (true, _) => Verbosity::Quiet,
        (false, 0) => Verbosity::Normal,
        (false, n) => Verbosity::Verbose(n),
    };
    progress::init_tracing(verbosity);
    match dispatch(cli, verbosity) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {e:#}");
            let interrupted = matches!(
                e.downcast_ref::<dyrep_runtime::RuntimeError>(),
                Some(dyrep_runtime::RuntimeError::Interrupted(_))
            );
            ExitCode::from(if interrupted {
                EXIT_INTERRUPTED
            } else {
                EXIT_USAGE
            })
        }
    }
}

/// Parses the command line; `train`'s arguments also learn which flags were given.
fn parse_cli<I, T>(args: I) -> std::result::Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    use clap::{CommandFactory, FromArgMatches};
    let command = Cli::command();
    let matches = command.clone().try_get_matches_from(args)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    if let (Command::Train(train), Some(("train", m))) = (&mut cli.command, matches.subcommand()) {
        if let Some(sub) = command.find_subcommand("train") {
            train.given = args::given_flags(sub, m);
        }
    }
    Ok(cli)
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

/// A checkpoint directory given either directly or as a run directory (its checkpoints/last;
/// reading it also finds the copy a kill between a save's two renames left aside).
pub(crate) fn checkpoint_dir(path: &std::path::Path) -> PathBuf {
    let checkpoints = path.join("checkpoints");
    if !path.join("arch.json").is_file() && checkpoints.is_dir() {
        checkpoints.join("last")
    } else {
        path.to_path_buf()
    }
}

/// Ctrl-C: the first sets `flag` (training stops before its next step, keeping the last
/// checkpoint); a second one exits at once (checkpoint writes are atomic, so that is safe too).
pub(crate) fn install_interrupt_handler() -> Option<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let flag = std::sync::Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    ctrlc::set_handler(move || {
        if f.swap(true, Ordering::SeqCst) {
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
        eprintln!("\ninterrupt: stopping before the next step (Ctrl-C again to quit at once)");
    })
    .ok()?;
    Some(flag)
}

fn dispatch(cli: Cli, verbosity: Verbosity) -> Result<u8> {
    // A bad DYREP_ISA is refused before any kernel runs (the kernels would ignore it).
    dyrep_runtime::api::kernels::isa::requested()?;
    let mut ctx = cmd::Ctx {
        out: io::stdout().lock(),
        device_spec: &cli.device,
        device: parse_device(&cli.device)?,
        verbosity,
    };
    match cli.command {
        Command::Ops(args) => cmd::ops::run(args, &mut ctx),
        Command::Scorers(args) => cmd::scorers::run(args, &mut ctx),
        Command::Bench(args) => cmd::bench::run(args, &mut ctx),
        Command::Models(args) => cmd::models::run(args, &mut ctx),
        Command::Train(args) => cmd::train::run(args, &mut ctx),
        Command::Eval(args) => cmd::eval::run(args, &mut ctx),
        Command::Fuse(args) => cmd::fuse::run(args, &mut ctx),
        Command::Plot(args) => cmd::plot::run(args, &mut ctx),
        Command::Compare(args) => cmd::compare::run(args, &mut ctx),
        Command::Inspect(args) => cmd::inspect::run(args, &mut ctx),
        Command::Export(args) => cmd::export::run(args, &mut ctx),
        Command::Verify(args) => cmd::verify::run(args, &mut ctx),
        Command::Data(args) => cmd::data::run(args, &mut ctx),
    }
}
