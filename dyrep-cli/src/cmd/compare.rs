//! `dyrep compare`: compares runs, one by one or grouped over seeds.

use anyhow::Result;
use dyrep_runtime::report;
use std::io::Write;

use super::Ctx;
use crate::args::CompareArgs;
use crate::Verbosity;

pub(crate) fn run(args: CompareArgs, ctx: &mut Ctx<'_>) -> Result<u8> {
    match args {
        CompareArgs {
            runs,
            svg,
            json,
            group_by: Some(keys),
            baseline,
            cost_vs,
        } => {
            let records = runs
                .iter()
                .map(|r| report::read_run(r))
                .collect::<dyrep_runtime::Result<Vec<_>>>()?;
            let rows = dyrep_runtime::groups::group_rows(
                &records,
                &keys,
                baseline.as_deref(),
                cost_vs.as_deref(),
            )?;
            dyrep_runtime::groups::plot_groups(&records, &keys, &svg)?;
            if json {
                crate::render::print_json(&mut ctx.out, &rows)?;
            } else {
                let table = dyrep_runtime::groups::group_markdown(&rows, baseline.as_deref());
                write!(ctx.out, "{table}")?;
                if ctx.verbosity != Verbosity::Quiet {
                    writeln!(ctx.out, "\nchart: {}", svg.display())?;
                }
            }
        }
        CompareArgs {
            runs,
            svg,
            json,
            group_by: None,
            ..
        } => {
            let records = runs
                .iter()
                .map(|r| report::read_run(r))
                .collect::<dyrep_runtime::Result<Vec<_>>>()?;
            let rows: Vec<report::RunRow> = records.iter().map(|r| r.row()).collect();
            report::plot_compare(&records, &svg)?;
            if json {
                crate::render::print_json(&mut ctx.out, &rows)?;
            } else {
                write!(ctx.out, "{}", report::markdown_table(&rows))?;
                if ctx.verbosity != Verbosity::Quiet {
                    writeln!(ctx.out, "\nchart: {}", svg.display())?;
                }
            }
        }
    }
    Ok(0)
}
