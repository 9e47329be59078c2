//! `dyrep compare`: compares runs, one by one or grouped over seeds; the overlay chart is
//! written only when `--svg` names a file.

use anyhow::Result;
use dyrep_runtime::fs::{check_output, Input};
use dyrep_runtime::report;
use std::io::Write;

use super::Ctx;
use crate::args::CompareArgs;
use crate::Verbosity;

pub(crate) fn run(args: CompareArgs, ctx: &mut Ctx<'_>) -> Result<u8> {
    if let Some(svg) = &args.svg {
        let inputs: Vec<Input<'_>> = args.runs.iter().map(|r| Input::Dir(r)).collect();
        check_output(svg, "--svg", &inputs)?;
    }
    let records = args
        .runs
        .iter()
        .map(|r| report::read_run(r))
        .collect::<dyrep_runtime::Result<Vec<_>>>()?;
    match &args.group_by {
        Some(keys) => {
            let rows = dyrep_runtime::report::groups::group_rows(
                &records,
                keys,
                args.baseline.as_deref(),
                args.cost_vs.as_deref(),
            )?;
            if let Some(svg) = &args.svg {
                dyrep_runtime::report::groups::plot_groups(&records, keys, svg)?;
            }
            if args.json {
                crate::render::print_json(&mut ctx.out, &rows)?;
            } else {
                let table =
                    dyrep_runtime::report::groups::group_markdown(&rows, args.baseline.as_deref());
                write!(ctx.out, "{table}")?;
            }
        }
        None => {
            let rows: Vec<report::RunRow> = records.iter().map(|r| r.row()).collect();
            if let Some(svg) = &args.svg {
                report::plot_compare(&records, svg)?;
            }
            if args.json {
                crate::render::print_json(&mut ctx.out, &rows)?;
            } else {
                write!(ctx.out, "{}", report::markdown_table(&rows))?;
            }
        }
    }
    if let (Some(svg), false, false) = (&args.svg, args.json, ctx.verbosity == Verbosity::Quiet) {
        writeln!(ctx.out, "\nchart: {}", svg.display())?;
    }
    Ok(0)
}
