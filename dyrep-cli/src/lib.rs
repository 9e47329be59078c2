//! dyrep-cli: argument parsing and output for the `dyrep` command (DESIGN.md "CLI contract").
//! No math here: listing comes from the registries, verification from `dyrep-runtime`.
//!
//! A plugin crate builds its own `dyrep` with its ops linked in:
//! `fn main() -> ExitCode { my_plugin::ensure_linked(); dyrep_cli::main() }`.
//!
//! Exit codes: 0 ok, 1 usage/config/data error, 2 verification failed.

use std::ffi::OsString;
use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use serde::Serialize;

use dyrep_runtime::api::equivalence::{FUSION_TOLERANCE, PRESERVE_TOLERANCE};
use dyrep_runtime::api::{ops, scorers};
use dyrep_runtime::verify::{verify, CheckReport, Selection};

/// Exit code for a failed verification.
pub const EXIT_VERIFY_FAILED: u8 = 2;
/// Exit code for usage, config and data errors.
pub const EXIT_USAGE: u8 = 1;

#[derive(Parser, Debug)]
#[command(
    name = "dyrep",
    version,
    about = "DyRep: dynamic re-parameterization of CNNs (CVPR 2022), in Rust on candle",
    long_about = "DyRep grows the most salient convs of a CNN into multi-branch blocks during \
training and prunes branches whose BN scale fades; every trained network fuses back into the \
plain network it started from.\n\nExit codes: 0 ok, 1 usage/config/data error, 2 verification failed."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the registered branch types (ops).
    #[command(after_help = "Examples:\n  dyrep ops\n  dyrep ops --json")]
    Ops {
        /// Print a JSON array of {name, summary}.
        #[arg(long)]
        json: bool,
    },
    /// List the registered saliency scorers.
    #[command(after_help = "Examples:\n  dyrep scorers\n  dyrep scorers --json")]
    Scorers {
        /// Print a JSON array of {name, summary}.
        #[arg(long)]
        json: bool,
    },
    /// Check on random cases that every op (and blocks of ops, nested or not) fuses into one
    /// conv with the same eval-mode output; random BN statistics, f32.
    #[command(
        after_help = "Examples:\n  dyrep verify --all --cases 200 --seed 1\n  dyrep verify --op conv1x1_kxk --cases 50\n\nExit status 2 if any case fails."
    )]
    Verify {
        /// Check only this op (a registered name; see `dyrep ops`).
        #[arg(long, value_name = "NAME", conflicts_with = "all")]
        op: Option<String>,
        /// Check every op and the block scenarios (the default).
        #[arg(long)]
        all: bool,
        /// Random cases per check.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        cases: u32,
        /// Seed of the random cases.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
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
    let cli = match Cli::try_parse_from(args) {
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
    match dispatch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

#[derive(Serialize)]
struct Listed {
    name: &'static str,
    summary: &'static str,
}

fn dispatch(cli: Cli) -> Result<u8> {
    let mut out = io::stdout().lock();
    match cli.command {
        Command::Ops { json } => {
            let rows: Vec<Listed> = ops()
                .iter()
                .map(|e| Listed {
                    name: e.name,
                    summary: e.summary,
                })
                .collect();
            print_listing(&mut out, &rows, json)?;
        }
        Command::Scorers { json } => {
            let rows: Vec<Listed> = scorers()
                .iter()
                .map(|e| Listed {
                    name: e.name,
                    summary: e.summary,
                })
                .collect();
            print_listing(&mut out, &rows, json)?;
        }
        Command::Verify {
            op,
            all: _,
            cases,
            seed,
            json,
        } => {
            let selection = match op {
                Some(name) => Selection::Op(name),
                None => Selection::All,
            };
            let reports = verify(&selection, cases as usize, seed, &candle_core::Device::Cpu)?;
            let passed = reports.iter().all(CheckReport::passed);
            if json {
                print_verify_json(&mut out, &reports, cases, seed, passed)?;
            } else {
                print_verify_table(&mut out, &reports, cases, seed)?;
            }
            if !passed {
                return Ok(EXIT_VERIFY_FAILED);
            }
        }
    }
    Ok(0)
}

fn print_listing(out: &mut impl Write, rows: &[Listed], json: bool) -> Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, rows)?;
        writeln!(out)?;
        return Ok(());
    }
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    writeln!(out, "{:width$}  SUMMARY", "NAME")?;
    for r in rows {
        writeln!(out, "{:width$}  {}", r.name, r.summary)?;
    }
    Ok(())
}

fn print_verify_table(
    out: &mut impl Write,
    reports: &[CheckReport],
    cases: u32,
    seed: u64,
) -> Result<()> {
    writeln!(
        out,
        "fusion equivalence, eval mode, f32, random weights and BN statistics: {cases} cases per check, seed {seed}"
    )?;
    writeln!(
        out,
        "limits: fused vs multi-branch max abs {:.0e} and rel {:.0e}; grow/cut rel {:.0e}\n",
        FUSION_TOLERANCE.max_abs, FUSION_TOLERANCE.rel, PRESERVE_TOLERANCE.rel
    )?;
    let width = reports
        .iter()
        .map(|r| r.check.len())
        .max()
        .unwrap_or(5)
        .max(5);
    writeln!(
        out,
        "{:width$}  {:>6}  {:>9}  {:>9}  {:>12}  RESULT",
        "CHECK", "CASES", "WORST ABS", "WORST REL", "GROW/CUT REL"
    )?;
    for r in reports {
        let preserve = r
            .worst_preserve_rel
            .map_or_else(|| "-".to_string(), |p| format!("{p:.2e}"));
        let result = if r.passed() {
            "ok".to_string()
        } else {
            format!("FAILED ({} of {})", r.failures, r.cases)
        };
        writeln!(
            out,
            "{:width$}  {:>6}  {:>9.2e}  {:>9.2e}  {:>12}  {result}",
            r.check, r.cases, r.worst_abs, r.worst_rel, preserve
        )?;
    }
    let failed: Vec<&CheckReport> = reports.iter().filter(|r| !r.passed()).collect();
    let total: usize = reports.iter().map(|r| r.cases).sum();
    writeln!(out)?;
    if failed.is_empty() {
        writeln!(out, "all {} checks passed ({total} cases)", reports.len())?;
    } else {
        for r in &failed {
            if let Some(f) = &r.first_failure {
                writeln!(out, "{}: first failure: {f}", r.check)?;
            }
        }
        writeln!(out, "{} of {} checks FAILED", failed.len(), reports.len())?;
    }
    Ok(())
}

fn print_verify_json(
    out: &mut impl Write,
    reports: &[CheckReport],
    cases: u32,
    seed: u64,
    passed: bool,
) -> Result<()> {
    let v = serde_json::json!({
        "cases": cases,
        "seed": seed,
        "passed": passed,
        "limits": {
            "fusion_max_abs": FUSION_TOLERANCE.max_abs,
            "fusion_rel": FUSION_TOLERANCE.rel,
            "preserve_rel": PRESERVE_TOLERANCE.rel,
        },
        "checks": reports,
    });
    serde_json::to_writer_pretty(&mut *out, &v)?;
    writeln!(out)?;
    Ok(())
}
