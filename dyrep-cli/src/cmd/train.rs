//! `dyrep train`: trains a run (or resumes one).

use anyhow::Result;
use dyrep_runtime::train::{train, RunOptions, TrainConfig, TrainProgress};
use std::path::PathBuf;

use super::Ctx;
use crate::args::TrainArgs;
use crate::{install_interrupt_handler, TrainReporter};

pub(crate) fn run(args: Box<TrainArgs>, ctx: &mut Ctx<'_>) -> Result<u8> {
    let args = *args;
    let (cfg, out_dir, resume) = match &args.resume {
        Some(dir) => {
            let flags = args.config_flags();
            if !flags.is_empty() {
                anyhow::bail!(
                    "--resume continues the run with its saved config.resolved.toml; drop {}",
                    flags.join(", ")
                );
            }
            (TrainConfig::default(), dir.clone(), true)
        }
        None => {
            let cfg = args.resolve()?;
            let out_dir = args.out.clone().unwrap_or_else(|| {
                PathBuf::from(format!(
                    "runs/{}-{}-seed{}",
                    cfg.model,
                    cfg.mode.as_str(),
                    cfg.seed
                ))
            });
            (cfg, out_dir, false)
        }
    };
    let comm = dyrep_runtime::dist::init(args.distributed, &ctx.device)?;
    // In a data-parallel run rank 0 reports; the other ranks print only errors.
    let verbosity = match comm.rank() {
        0 => ctx.verbosity,
        _ => crate::Verbosity::Quiet,
    };
    let opts = RunOptions {
        out: out_dir,
        resume,
        force: args.force,
        stop_after: args.stop_after,
        device: ctx.device.clone(),
        interrupt: install_interrupt_handler(),
        comm: Some(comm.clone()),
    };
    let mut reporter = TrainReporter::new(verbosity);
    if args.distributed || comm.size() > 1 {
        reporter.report(TrainProgress::Line(&format!(
            "data-parallel: {} rank(s), gradients averaged by {}",
            comm.size(),
            comm.backend()
        )));
    }
    if let Err(e) = train(cfg, &opts, &mut |p| reporter.report(p)) {
        let interrupted = matches!(e, dyrep_runtime::RuntimeError::Interrupted(_));
        if comm.size() > 1 && !interrupted {
            // A rank that fails alone would leave the others waiting in a collective (an
            // interrupt reaches every rank from the launcher, and each stops on its own).
            eprintln!("error (rank {} of {}): {e:#}", comm.rank(), comm.size());
            comm.abort_all(i32::from(crate::EXIT_USAGE));
        }
        return Err(e.into());
    }
    Ok(0)
}
