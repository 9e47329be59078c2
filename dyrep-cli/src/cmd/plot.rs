//! `dyrep plot`: draws a run's curves.svg.

use anyhow::Result;
use dyrep_runtime::report;
use std::io::Write;

use super::Ctx;
use crate::args::PlotArgs;
use crate::Verbosity;

pub(crate) fn run(args: PlotArgs, ctx: &mut Ctx<'_>) -> Result<u8> {
    let PlotArgs { run, out: svg } = args;
    let record = report::read_run(&run)?;
    let svg = svg.unwrap_or_else(|| run.join("curves.svg"));
    report::plot_run(&record, &svg)?;
    if ctx.verbosity != Verbosity::Quiet {
        writeln!(
            ctx.out,
            "wrote {} ({} epochs, {} events)",
            svg.display(),
            record.epochs.len(),
            record.events.len()
        )?;
    }
    Ok(0)
}
