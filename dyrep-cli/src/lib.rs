//! dyrep-cli: argument parsing and output for the `dyrep` command (docs/ARCHITECTURE.md "CLI
//! contract"). No math here: listing comes from the registries, verification from `dyrep-runtime`.
//!
//! A plugin crate builds its own `dyrep` with its ops linked in:
//! `fn main() -> ExitCode { my_plugin::ensure_linked(); dyrep_cli::main() }`.
//!
//! Exit codes: 0 ok, 1 usage/config/data error, 2 verification failed, 130 interrupted (Ctrl-C).

mod progress;

pub use progress::{TrainReporter, Verbosity};

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;

use dyrep_runtime::api::equivalence::{FUSION_TOLERANCE, PRESERVE_TOLERANCE};
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

#[derive(Parser, Debug)]
#[command(
    name = "dyrep",
    version,
    about = "DyRep: dynamic re-parameterization of CNNs (CVPR 2022), in Rust on candle",
    long_about = "DyRep grows the most salient convs of a CNN into multi-branch blocks during \
training and prunes branches whose BN scale fades; every trained network fuses back into the \
plain network it started from.\n\nExit codes: 0 ok, 1 usage/config/data error, 2 verification failed, 130 interrupted."
)]
struct Cli {
    /// More output: -v shows the runtime's log events on stderr, -vv its debug details too.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Print only errors (no progress, no log lines; files are written as usual).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Where to compute: `cpu` (own kernels) or `cuda` / `cuda:N` (a build with the `cuda`
    /// feature, see scripts/build-cuda.sh).
    #[arg(long, global = true, default_value = "cpu", value_name = "DEVICE")]
    device: String,
    #[command(subcommand)]
    command: Command,
}

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
    /// List the model zoo with parameters and MACs at each model's default input (10 classes).
    #[command(after_help = "Examples:\n  dyrep models\n  dyrep models --json")]
    Models {
        /// Print a JSON array of {name, summary, input, params, macs}.
        #[arg(long)]
        json: bool,
    },
    /// Train a model (origin, repvgg, dbb or dyrep mode) and write a run directory.
    #[command(
        after_help = "Examples:\n  dyrep train                                   # vgg-tiny, bundled Fashion-MNIST subset, 3 epochs\n  dyrep train --model vgg-tiny --mode dbb --epochs 3 --out runs/dbb\n  dyrep train --mode dyrep --epochs 4 --grow-interval 1 --scorer synflow --out runs/dyrep\n  dyrep train -c run.toml --seed 2\n  dyrep train --resume runs/dbb                 # continue a stopped run exactly\n  dyrep train --mode dyrep --init-from resnet18.safetensors --model resnet18 --data cifar10:DIR\n\nThe run directory holds config.resolved.toml, run.log, metrics.csv, events.jsonl,\nsummary.json, curves.svg and checkpoints/{last,best}. Config file keys are the flag names\nwith _ (epochs, batch_size, init_from, [dyrep] scorer, ...). Ctrl-C stops before the next\nstep; the last epoch's checkpoint stays and --resume continues (exit status 130)."
    )]
    Train(Box<TrainArgs>),
    /// Evaluate a checkpoint (trained or fused) on the test split.
    #[command(
        after_help = "Examples:\n  dyrep eval --checkpoint runs/dbb/checkpoints/best\n  dyrep eval --checkpoint fused --limit 500 --logits-out logits.npy --inputs-out inputs.npy"
    )]
    Eval {
        /// Checkpoint directory.
        #[arg(long, value_name = "DIR")]
        checkpoint: PathBuf,
        /// Data spec (default: the checkpoint's dataset).
        #[arg(long, value_name = "SPEC")]
        data: Option<String>,
        /// Evaluate only the first N test images.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Write the logits [N, classes] as little-endian float32 .npy.
        #[arg(long, value_name = "FILE")]
        logits_out: Option<PathBuf>,
        /// Write the normalised inputs [N, C, H, W] as little-endian float32 .npy.
        #[arg(long, value_name = "FILE")]
        inputs_out: Option<PathBuf>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Fuse a trained checkpoint into the plain network and verify it on real test batches.
    #[command(
        after_help = "Examples:\n  dyrep fuse --checkpoint runs/dbb/checkpoints/best --out runs/dbb/fused\n\nExit status 2 if the fused model's top-1 or logits (relative 1e-4) differ."
    )]
    Fuse {
        /// Checkpoint directory to fuse.
        #[arg(long, value_name = "DIR")]
        checkpoint: PathBuf,
        /// Directory for the fused checkpoint (must not exist or be empty).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Verify on the first N test images (default 1000).
        #[arg(long, value_name = "N", default_value_t = 1000)]
        limit: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Throughput of training steps or eval forwards on random data.
    #[command(
        after_help = "Examples:\n  dyrep bench train --model vgg-tiny --mode dbb --batch 64 --iters 20\n  dyrep bench eval --model bench-cifar --json"
    )]
    Bench {
        /// `train` (forward + backward + SGD step) or `eval` (forward).
        #[arg(value_parser = ["train", "eval"])]
        what: String,
        #[arg(long, default_value = "vgg-tiny")]
        model: String,
        /// origin, repvgg or dbb.
        #[arg(long, default_value = "origin")]
        mode: String,
        /// Batch size (default: 128 for bench-small, 64 otherwise).
        #[arg(long)]
        batch: Option<usize>,
        /// Grow every k×k conv into a block with these ops first (comma-separated, or `all`):
        /// the training cost of DyRep's grown blocks.
        #[arg(long, value_delimiter = ',', value_name = "OPS")]
        grow_ops: Option<Vec<String>>,
        /// Channel width multiplier (as `train --width`).
        #[arg(long, default_value_t = 1.0)]
        width: f64,
        #[arg(long, default_value_t = 10)]
        iters: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Draw curves.svg of a run: loss, accuracy, params and MACs per epoch, grows and cuts marked.
    #[command(
        after_help = "Examples:\n  dyrep plot runs/dyrep                 # writes runs/dyrep/curves.svg\n  dyrep plot runs/dyrep --out dyrep.svg"
    )]
    Plot {
        /// Run directory (written by `dyrep train`).
        #[arg(value_name = "RUN_DIR")]
        run: PathBuf,
        /// SVG file to write (default RUN_DIR/curves.svg).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Compare runs: one chart with every run overlaid and a markdown table (final and best
    /// accuracy, average params and MACs, train time, grows, cuts: the paper's Table 2).
    #[command(
        after_help = "Examples:\n  dyrep compare runs/origin runs/dbb runs/dyrep\n  dyrep compare runs/* --svg table2.svg --json\n  dyrep compare grid/* --group-by mode,scorer --baseline origin --svg groups.svg\n\nWith --group-by, runs that share the named settings (config keys; `scorer`, `dep`, ... stand\nfor `dyrep.scorer`, `dyrep.dep`, and apply to dyrep-mode runs only) form one row: mean ± std\nover the runs, and with --baseline the mean per-seed difference to that group with its 95 %\nconfidence interval; the chart shows each group's mean test-accuracy curve with a ±1 std band."
    )]
    Compare {
        /// Run directories.
        #[arg(value_name = "RUN_DIR", required = true, num_args = 1..)]
        runs: Vec<PathBuf>,
        /// SVG file for the chart.
        #[arg(long, value_name = "FILE", default_value = "compare.svg")]
        svg: PathBuf,
        /// Print the rows as JSON instead of the markdown table.
        #[arg(long)]
        json: bool,
        /// Group runs by these comma-separated config settings (e.g. `mode,scorer`).
        #[arg(long, value_name = "KEYS")]
        group_by: Option<String>,
        /// The group the others are compared with, by seed (e.g. `origin`); needs --group-by.
        #[arg(long, value_name = "GROUP", requires = "group_by")]
        baseline: Option<String>,
    },
    /// Print the tree of grown blocks of a checkpoint: each branch's op, weight shapes and γ
    /// importance, nested blocks indented (the paper's Fig. 6).
    #[command(
        after_help = "Examples:\n  dyrep inspect runs/dyrep                       # its checkpoints/last\n  dyrep inspect runs/dyrep/checkpoints/best --json"
    )]
    Inspect {
        /// Checkpoint directory, or a run directory (its checkpoints/last).
        #[arg(value_name = "CHECKPOINT")]
        checkpoint: PathBuf,
        /// List plain convs too.
        #[arg(long)]
        all: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Export the fused plain network: safetensors with conventional names (torchvision for
    /// ResNet and VGG, timm for RepVGG) plus an architecture .json beside it, or ONNX.
    #[command(
        after_help = "Examples:\n  dyrep export --checkpoint runs/dyrep --format safetensors --out vgg.safetensors\n  dyrep export --checkpoint runs/dyrep/checkpoints/best --format onnx --out vgg.onnx\n\nThe ONNX model (opset 13, BN folded, input `input` [N,C,H,W], output `logits`) takes the\nnormalised inputs `dyrep eval --inputs-out` writes."
    )]
    Export {
        /// Checkpoint directory, or a run directory (its checkpoints/last).
        #[arg(long, value_name = "DIR")]
        checkpoint: PathBuf,
        /// safetensors or onnx.
        #[arg(long, value_parser = ["safetensors", "onnx"])]
        format: String,
        /// File to write (replaced atomically).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Print one JSON object.
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
        #[arg(long, value_name = "NAME", conflicts_with_all = ["all", "kernels"])]
        op: Option<String>,
        /// Instead of fusion: check the compute kernels (conv, fused conv+BN+ReLU, BN, pools,
        /// ReLU; forward and gradients) of --device against the own CPU kernels, and the fused
        /// conv+BN+ReLU+max pool against the unfused ones.
        #[arg(long, conflicts_with = "all")]
        kernels: bool,
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

#[derive(clap::Args, Debug)]
struct TrainArgs {
    /// TOML config file (keys as in config.resolved.toml); flags override it.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Model name (see `dyrep models`).
    #[arg(long)]
    model: Option<String>,
    /// Data spec: default, fashion-mnist:DIR, mnist:DIR, cifar10:DIR, cifar100:DIR,
    /// image-folder:DIR.
    #[arg(long, value_name = "SPEC")]
    data: Option<String>,
    /// origin, repvgg, dbb or dyrep.
    #[arg(long)]
    mode: Option<String>,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    seed: Option<u64>,
    /// Width multiplier of every channel count.
    #[arg(long)]
    width: Option<f64>,
    /// Use only the first N training images.
    #[arg(long, value_name = "N")]
    train_limit: Option<usize>,
    /// Use only the first N test images.
    #[arg(long, value_name = "N")]
    test_limit: Option<usize>,
    /// Run directory (default runs/<model>-<mode>-seed<seed>).
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in DIR from its last checkpoint, with its saved config.
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// Start from plain pretrained weights with conventional names (a .safetensors file as
    /// `dyrep export` writes it; torchvision/timm key names), in any mode.
    #[arg(long, value_name = "FILE")]
    init_from: Option<PathBuf>,
    /// Replace an existing, non-empty run directory.
    #[arg(long, conflicts_with = "resume")]
    force: bool,
    /// Stop after this many epochs in this invocation (continue later with --resume).
    #[arg(long, value_name = "N")]
    stop_after: Option<usize>,
    /// repvgg / dbb modes: build the blocks as their authors train them (`reference`: the BN
    /// after each conv dropped, branches initialised independently; the default) or as DyRep
    /// grows one (`dyrep`: the BN kept, the block equal to the fresh conv).
    #[arg(long, value_name = "FORM", value_parser = dyrep_runtime::train::BaselineForm::parse)]
    baseline_form: Option<dyrep_runtime::train::BaselineForm>,
    /// dyrep mode: branch ops for new blocks, comma-separated (default: every registered op).
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    ops: Option<Vec<String>>,
    /// dyrep mode: saliency scorer (see `dyrep scorers`).
    #[arg(long)]
    scorer: Option<String>,
    /// dyrep mode: grow after every this much training: epochs (`2`, `0.5`), `N steps`, or
    /// `auto` (1/40 of the run, the reference's proportion; the default).
    #[arg(long, value_name = "PERIOD", value_parser = dyrep_runtime::schedule::Period::parse)]
    grow_interval: Option<dyrep_runtime::schedule::Period>,
    /// dyrep mode: no growth after this much training: epochs, `N steps`, `auto` (5/6 of the
    /// run, the default) or `none`.
    #[arg(long, value_name = "PERIOD", value_parser = dyrep_runtime::schedule::Period::parse)]
    max_grow_epochs: Option<dyrep_runtime::schedule::Period>,
    /// dyrep mode: convs grown per grow step.
    #[arg(long, value_name = "K")]
    grow_topk: Option<usize>,
    /// dyrep mode: γ of the last BN of new branches.
    #[arg(long)]
    gamma0: Option<f64>,
    /// dyrep mode: training batches to calibrate a new block's BN statistics.
    #[arg(long, value_name = "N")]
    calib_batches: Option<usize>,
    /// dyrep mode: λ, the importance below which (and below the mean) a branch is cut.
    #[arg(long)]
    cut_threshold: Option<f64>,
    /// dyrep mode: how deep blocks may nest.
    #[arg(long, value_name = "N")]
    max_depth: Option<usize>,
    /// dyrep mode: never cut branches (Rep only).
    #[arg(long)]
    no_dep: bool,
}

/// Flags that only mean something in dyrep mode.
const DYREP_FLAGS: [&str; 10] = [
    "--ops",
    "--scorer",
    "--grow-interval",
    "--max-grow-epochs",
    "--grow-topk",
    "--gamma0",
    "--calib-batches",
    "--cut-threshold",
    "--max-depth",
    "--no-dep",
];

impl TrainArgs {
    fn config_flags(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let pairs: [(&'static str, bool); 24] = [
            ("--baseline-form", self.baseline_form.is_some()),
            ("--ops", self.ops.is_some()),
            ("--scorer", self.scorer.is_some()),
            ("--grow-interval", self.grow_interval.is_some()),
            ("--max-grow-epochs", self.max_grow_epochs.is_some()),
            ("--grow-topk", self.grow_topk.is_some()),
            ("--gamma0", self.gamma0.is_some()),
            ("--calib-batches", self.calib_batches.is_some()),
            ("--cut-threshold", self.cut_threshold.is_some()),
            ("--max-depth", self.max_depth.is_some()),
            ("--no-dep", self.no_dep),
            ("--config", self.config.is_some()),
            ("--model", self.model.is_some()),
            ("--data", self.data.is_some()),
            ("--mode", self.mode.is_some()),
            ("--epochs", self.epochs.is_some()),
            ("--batch-size", self.batch_size.is_some()),
            ("--lr", self.lr.is_some()),
            ("--seed", self.seed.is_some()),
            ("--width", self.width.is_some()),
            ("--train-limit", self.train_limit.is_some()),
            ("--test-limit", self.test_limit.is_some()),
            ("--force", self.force),
            ("--init-from", self.init_from.is_some()),
        ];
        for (name, set) in pairs {
            if set {
                v.push(name);
            }
        }
        v
    }

    fn resolve(&self) -> Result<TrainConfig> {
        let mut cfg = match &self.config {
            Some(p) => TrainConfig::from_toml_file(p)?,
            None => TrainConfig::default(),
        };
        if let Some(v) = &self.model {
            cfg.model = v.clone();
        }
        if let Some(v) = &self.data {
            cfg.data = v.clone();
        }
        if let Some(v) = &self.mode {
            cfg.mode = Mode::parse(v)?;
        }
        if let Some(v) = self.epochs {
            cfg.epochs = v;
        }
        if let Some(v) = self.batch_size {
            cfg.batch_size = v;
        }
        if let Some(v) = self.lr {
            cfg.lr = v;
        }
        if let Some(v) = self.seed {
            cfg.seed = v;
        }
        if let Some(v) = self.width {
            cfg.width = v;
        }
        if self.train_limit.is_some() {
            cfg.train_limit = self.train_limit;
        }
        if self.test_limit.is_some() {
            cfg.test_limit = self.test_limit;
        }
        if self.init_from.is_some() {
            cfg.init_from = self.init_from.clone();
        }
        if let Some(v) = self.baseline_form {
            cfg.baseline_form = v;
        }
        let d = &mut cfg.dyrep;
        if let Some(v) = &self.ops {
            d.ops = v
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(v) = &self.scorer {
            d.scorer = v.clone();
        }
        if let Some(v) = self.grow_interval {
            d.grow_interval = v;
        }
        if let Some(v) = self.max_grow_epochs {
            d.max_grow_epochs = v;
        }
        if let Some(v) = self.grow_topk {
            d.grow_topk = v;
        }
        if let Some(v) = self.gamma0 {
            d.gamma0 = v;
        }
        if let Some(v) = self.calib_batches {
            d.calib_batches = v;
        }
        if let Some(v) = self.cut_threshold {
            d.cut_threshold = v;
        }
        if let Some(v) = self.max_depth {
            d.max_depth = v;
        }
        if self.no_dep {
            d.dep = false;
        }
        let dyrep_flags: Vec<&str> = self
            .config_flags()
            .into_iter()
            .filter(|f| DYREP_FLAGS.contains(f))
            .collect();
        if cfg.mode != Mode::Dyrep && !dyrep_flags.is_empty() {
            anyhow::bail!(
                "{} only apply to --mode dyrep (the mode is `{}`)",
                dyrep_flags.join(", "),
                cfg.mode.as_str()
            );
        }
        if self.baseline_form.is_some() && !matches!(cfg.mode, Mode::Repvgg | Mode::Dbb) {
            anyhow::bail!(
                "--baseline-form only applies to --mode repvgg or dbb (the mode is `{}`)",
                cfg.mode.as_str()
            );
        }
        cfg.validate()?;
        Ok(cfg)
    }
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

#[derive(Serialize)]
struct Listed {
    name: &'static str,
    summary: &'static str,
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

/// The kernel checks of each instruction-set tier that ran.
type TierReports = [(
    dyrep_runtime::api::kernels::isa::Isa,
    Vec<dyrep_runtime::api::kernels::check::KernelReport>,
)];

fn print_kernel_checks(
    out: &mut impl Write,
    reports: &TierReports,
    device: &str,
    cases: u32,
    seed: u64,
    json: bool,
    passed: bool,
) -> Result<()> {
    use dyrep_runtime::api::kernels::check::KERNEL_TOLERANCE;
    let tiers: Vec<&str> = reports.iter().map(|(t, _)| t.name()).collect();
    if json {
        let checks: Vec<serde_json::Value> = reports
            .iter()
            .flat_map(|(tier, rs)| rs.iter().map(move |r| (tier, r)))
            .map(|(tier, r)| {
                serde_json::json!({
                    "kernel": r.kernel, "isa": tier.name(), "cases": r.cases,
                    "failures": r.failures, "worst_rel": r.worst_rel,
                    "tolerance": r.tolerance, "first_failure": r.first_failure,
                })
            })
            .collect();
        let v = serde_json::json!({
            "device": device, "cases": cases, "seed": seed, "tolerance": KERNEL_TOLERANCE,
            "tiers": tiers, "passed": passed, "checks": checks,
        });
        serde_json::to_writer_pretty(&mut *out, &v)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "kernels on {device} (candle ops) vs own CPU kernels, forward and gradients, f32: {cases} random cases, seed {seed}, limit rel {KERNEL_TOLERANCE:.0e} unless the row says otherwise; own kernels at each instruction-set tier of this CPU: {}\n",
        tiers.join(", ")
    )?;
    writeln!(
        out,
        "{:7} {:26} {:>6} {:>10} {:>6}  RESULT",
        "TIER", "KERNEL", "CASES", "WORST REL", "LIMIT"
    )?;
    for (tier, rs) in reports {
        for r in rs {
            let result = if r.failures == 0 {
                "ok".to_string()
            } else {
                format!("FAILED ({} of {})", r.failures, r.cases)
            };
            writeln!(
                out,
                "{:7} {:26} {:>6} {:>10.2e} {:>6.0e}  {result}",
                tier.name(),
                r.kernel,
                r.cases,
                r.worst_rel,
                r.tolerance
            )?;
        }
    }
    for (tier, rs) in reports {
        for r in rs {
            if let Some(f) = &r.first_failure {
                writeln!(out, "\n{tier} {}: first failure: {f}", r.kernel)?;
            }
        }
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
