//! dyrep-cli: argument parsing and output for the `dyrep` command (docs/ARCHITECTURE.md "CLI
//! contract"). No math here: listing comes from the registries, verification from `dyrep-runtime`.
//!
//! A plugin crate builds its own `dyrep` with its ops linked in:
//! `fn main() -> ExitCode { my_plugin::ensure_linked(); dyrep_cli::main() }`.
//!
//! Exit codes: 0 ok, 1 usage/config/data error, 2 verification failed, 130 interrupted (Ctrl-C).

mod args;
mod config;
mod progress;
mod render;

pub use progress::{TrainReporter, Verbosity};

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;

use args::{Cli, Command};
use render::{print_kernel_checks, print_listing, print_verify_json, print_verify_table, Listed};

use dyrep_runtime::api::{ops, scorers};
use dyrep_runtime::fuse::{eval_checkpoint, fuse_checkpoint, FUSE_LOGITS_REL};
use dyrep_runtime::model::{build_model, models, ModelConfig};
use dyrep_runtime::train::{train, Mode, RunOptions, TrainConfig};
use dyrep_runtime::verify::{verify, CheckReport, Selection};
use dyrep_runtime::{export, report};

/// Exit code for a failed verification.
pub const EXIT_VERIFY_FAILED: u8 = 2;
/// Exit code for usage, config and data errors.
pub const EXIT_USAGE: u8 = 1;
/// Exit code of a run stopped by Ctrl-C (its last checkpoint is intact).
pub const EXIT_INTERRUPTED: u8 = 130;
/// Parses `--device`: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
pub fn parse_device(spec: &str) -> Result<candle_core::Device> {
    let ordinal = match spec {
        "cpu" => return Ok(candle_core::Device::Cpu),
        "cuda" => 0,
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
    candle_core::Device::new_cuda(ordinal)
        .map_err(|e| anyhow::anyhow!("--device {spec}: cannot open CUDA device {ordinal}: {e}"))
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

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

/// A checkpoint directory given either directly or as a run directory (its checkpoints/last).
fn checkpoint_dir(path: &std::path::Path) -> PathBuf {
    let last = path.join("checkpoints").join("last");
    if !path.join("arch.json").is_file() && last.is_dir() {
        last
    } else {
        path.to_path_buf()
    }
}

/// Ctrl-C: the first sets `flag` (training stops before its next step, keeping the last
/// checkpoint); a second one exits at once (checkpoint writes are atomic, so that is safe too).
fn install_interrupt_handler() -> Option<std::sync::Arc<std::sync::atomic::AtomicBool>> {
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
    let mut out = io::stdout().lock();
    // A bad DYREP_ISA is refused before any kernel runs (the kernels would ignore it).
    dyrep_runtime::api::kernels::isa::requested()?;
    let device = parse_device(&cli.device)?;
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
        Command::Bench {
            what,
            model,
            mode,
            batch,
            grow_ops,
            width,
            iters,
            json,
        } => {
            let mode = Mode::parse(&mode)?;
            let spec = dyrep_runtime::bench::BenchSpec {
                grow_ops,
                width,
                batch: batch.unwrap_or_else(|| dyrep_runtime::bench::default_batch(&model)),
                iters,
                ..dyrep_runtime::bench::BenchSpec::new(&model, mode, what == "train")
            };
            let r = dyrep_runtime::bench::bench(&spec, &device)?;
            if json {
                serde_json::to_writer_pretty(&mut out, &r)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "{} {} {} batch {} x{} ({} kernels, {} tier): {:.1} images/s, {:.2} GFLOP/s, {:.2} M MACs/image, peak RSS {:.0} MB; per iteration: forward {:.1} ms, backward {:.1} ms, optimizer {:.1} ms",
                    r.what, r.model, r.mode, r.batch, r.iters, r.kernels, r.isa, r.images_per_sec, r.gflops,
                    r.macs_per_image as f64 / 1e6, r.peak_rss_bytes as f64 / 1e6,
                    r.forward_ms, r.backward_ms, r.optimizer_ms
                )?;
                if !r.kernel_ms.is_empty() {
                    let parts: Vec<String> = r
                        .kernel_ms
                        .iter()
                        .map(|(k, v)| format!("{k} {v:.1} ms"))
                        .collect();
                    writeln!(
                        out,
                        "  inside the kernels per iteration: {}",
                        parts.join(", ")
                    )?;
                }
            }
        }
        Command::Models { json } => {
            let mut rows = Vec::new();
            for e in models() {
                let mut rng = dyrep_runtime::api::SeededRng::new(0);
                let mut ctx = dyrep_runtime::api::InitCtx::new(&mut rng, &candle_core::Device::Cpu);
                let cfg = ModelConfig {
                    name: e.name.to_string(),
                    input: e.default_input,
                    num_classes: 10,
                    width: 1.0,
                };
                let m = build_model(&cfg, &mut ctx)?;
                rows.push(serde_json::json!({
                    "name": e.name,
                    "summary": e.summary,
                    "input": e.default_input,
                    "params": m.param_count(),
                    "macs": m.macs()?,
                }));
            }
            if json {
                serde_json::to_writer_pretty(&mut out, &rows)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "{:18}  {:>11}  {:>9}  {:>10}  SUMMARY",
                    "NAME", "INPUT", "PARAMS", "MACS"
                )?;
                for r in &rows {
                    let i = &r["input"];
                    writeln!(
                        out,
                        "{:18}  {:>11}  {:>8.2}M  {:>9.1}M  {}",
                        r["name"].as_str().unwrap_or(""),
                        format!("{}x{}x{}", i[0], i[1], i[2]),
                        r["params"].as_f64().unwrap_or(0.0) / 1e6,
                        r["macs"].as_f64().unwrap_or(0.0) / 1e6,
                        r["summary"].as_str().unwrap_or("")
                    )?;
                }
            }
        }
        Command::Train(args) => {
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
            let opts = RunOptions {
                out: out_dir,
                resume,
                force: args.force,
                stop_after: args.stop_after,
                device: device.clone(),
                interrupt: install_interrupt_handler(),
            };
            let mut reporter = TrainReporter::new(verbosity);
            train(cfg, &opts, &mut |p| reporter.report(p))?;
        }
        Command::Eval {
            checkpoint,
            data,
            limit,
            logits_out,
            inputs_out,
            json,
        } => {
            let checkpoint = checkpoint_dir(&checkpoint);
            let r = eval_checkpoint(
                &checkpoint,
                data.as_deref(),
                limit,
                logits_out.as_deref(),
                inputs_out.as_deref(),
                &device,
            )?;
            if json {
                serde_json::to_writer_pretty(&mut out, &r)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "{} ({} form) on {}: top-1 {:.4} over {} test images, loss {:.4}",
                    checkpoint.display(),
                    r.form,
                    r.dataset,
                    r.top1,
                    r.images,
                    r.loss
                )?;
            }
        }
        Command::Fuse {
            checkpoint,
            out: out_dir,
            limit,
            json,
        } => {
            let checkpoint = checkpoint_dir(&checkpoint);
            let r = fuse_checkpoint(&checkpoint, &out_dir, Some(limit), &device)?;
            if json {
                serde_json::to_writer_pretty(&mut out, &r)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "fused {} block(s) of {} into {}",
                    r.blocks.len(),
                    checkpoint.display(),
                    out_dir.display()
                )?;
                for b in &r.blocks {
                    writeln!(
                        out,
                        "  {:32} {} branches  max abs {:.2e}  rel {:.2e}",
                        b.path, b.branches, b.max_abs, b.rel
                    )?;
                }
                writeln!(
                    out,
                    "params {} -> {}   MACs {:.2}M -> {:.2}M",
                    r.params_before,
                    r.params_after,
                    r.macs_before as f64 / 1e6,
                    r.macs_after as f64 / 1e6
                )?;
                writeln!(
                    out,
                    "verified on {} test images: top-1 {:.4} -> {:.4}, {} prediction(s) changed, logits rel {:.2e} (limit {:.0e}), max abs {:.2e}",
                    r.images, r.acc_before, r.acc_after, r.top1_mismatches, r.logits_rel, FUSE_LOGITS_REL, r.logits_max_abs
                )?;
                writeln!(
                    out,
                    "{}",
                    if r.passed() {
                        "verification passed"
                    } else {
                        "verification FAILED"
                    }
                )?;
            }
            if !r.passed() {
                return Ok(EXIT_VERIFY_FAILED);
            }
        }
        Command::Plot { run, out: svg } => {
            let record = report::read_run(&run)?;
            let svg = svg.unwrap_or_else(|| run.join("curves.svg"));
            report::plot_run(&record, &svg)?;
            if verbosity != Verbosity::Quiet {
                writeln!(
                    out,
                    "wrote {} ({} epochs, {} events)",
                    svg.display(),
                    record.epochs.len(),
                    record.events.len()
                )?;
            }
        }
        Command::Compare {
            runs,
            svg,
            json,
            group_by: Some(keys),
            baseline,
        } => {
            let records = runs
                .iter()
                .map(|r| report::read_run(r))
                .collect::<dyrep_runtime::Result<Vec<_>>>()?;
            let rows = dyrep_runtime::groups::group_rows(&records, &keys, baseline.as_deref())?;
            dyrep_runtime::groups::plot_groups(&records, &keys, &svg)?;
            if json {
                serde_json::to_writer_pretty(&mut out, &rows)?;
                writeln!(out)?;
            } else {
                let table = dyrep_runtime::groups::group_markdown(&rows, baseline.as_deref());
                write!(out, "{table}")?;
                if verbosity != Verbosity::Quiet {
                    writeln!(out, "\nchart: {}", svg.display())?;
                }
            }
        }
        Command::Compare {
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
                serde_json::to_writer_pretty(&mut out, &rows)?;
                writeln!(out)?;
            } else {
                write!(out, "{}", report::markdown_table(&rows))?;
                if verbosity != Verbosity::Quiet {
                    writeln!(out, "\nchart: {}", svg.display())?;
                }
            }
        }
        Command::Inspect {
            checkpoint,
            all,
            json,
        } => {
            let checkpoint = checkpoint_dir(&checkpoint);
            let (model, _) = dyrep_runtime::train::load_checkpoint_model(&checkpoint, &device)?;
            let r = report::inspect(&model)?;
            if json {
                serde_json::to_writer_pretty(&mut out, &r)?;
                writeln!(out)?;
            } else {
                write!(out, "{}", report::inspect_text(&r, all))?;
            }
        }
        Command::Export {
            checkpoint,
            format,
            out: file,
            json,
        } => {
            let checkpoint = checkpoint_dir(&checkpoint);
            let format = export::ExportFormat::parse(&format)?;
            let r = export::export_checkpoint(&checkpoint, format, &file, &device)?;
            if json {
                serde_json::to_writer_pretty(&mut out, &r)?;
                writeln!(out)?;
            } else if verbosity != Verbosity::Quiet {
                writeln!(
                    out,
                    "exported {} ({:?} names, fused plain form: {} params, {:.2} M MACs) to {} ({} tensors, {} bytes){}",
                    r.model,
                    r.naming,
                    r.params,
                    r.macs as f64 / 1e6,
                    r.out.display(),
                    r.tensors,
                    r.bytes,
                    r.arch_json
                        .as_ref()
                        .map(|p| format!("; architecture in {}", p.display()))
                        .unwrap_or_default()
                )?;
            }
        }
        Command::Verify {
            kernels: true,
            cases,
            seed,
            json,
            ..
        } => {
            use dyrep_runtime::api::kernels::{check::check_kernels, isa};
            // Every tier this CPU has (at most the DYREP_ISA cap), highest first.
            let cap = isa::requested()?.unwrap_or(isa::Isa::Avx512);
            let mut reports = Vec::new();
            for tier in isa::Isa::supported_tiers()
                .into_iter()
                .filter(|&t| t <= cap)
            {
                let tier = isa::set_active(tier);
                reports.push((tier, check_kernels(&device, cases as usize, seed)?));
            }
            let passed = reports
                .iter()
                .all(|(_, rs)| rs.iter().all(|r| r.failures == 0));
            print_kernel_checks(&mut out, &reports, &cli.device, cases, seed, json, passed)?;
            if !passed {
                return Ok(EXIT_VERIFY_FAILED);
            }
        }
        Command::Verify {
            op,
            all: _,
            kernels: false,
            cases,
            seed,
            json,
        } => {
            let selection = match op {
                Some(name) => Selection::Op(name),
                None => Selection::All,
            };
            let reports = verify(&selection, cases as usize, seed, &device)?;
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
