//! `dyrep plot`: draws a run's curves.svg.

use anyhow::Result;
use dyrep_runtime::fs::{check_output, Input};
use dyrep_runtime::report;
use std::io::Write;

use super::Ctx;
use crate::args::PlotArgs;
use crate::Verbosity;

pub(crate) fn run(args: PlotArgs, ctx: &mut Ctx<'_>) -> Result<u8> {
    let PlotArgs { run, out: svg } = args;
    // The run's own curves.svg is derived from it and may be redrawn; any other file of the
    // run is an input.
    if let Some(out) = &svg {
        let own = run.join("curves.svg");
        let same = |a: &std::path::Path, b: &std::path::Path| {
            a.canonicalize()
                .ok()
                .zip(b.canonicalize().ok())
                .is_some_and(|(a, b)| a == b)
        };
        if !same(out, &own) {
            check_output(out, "--out", &[Input::Dir(&run)])?;
        }
    }
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
