//! The `dyrep` command line as clap types: the global flags, the subcommands and their
//! arguments (`train`'s many flags in [`TrainArgs`]). What they mean at run time lives in
//! `config.rs` (the flag/config-file merge) and `cmd/` (one module per subcommand).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The `--help` heading of `train`'s flags that only mean something in dyrep mode (also how
/// `config.rs` finds them).
pub(crate) const DYREP_HEADING: &str = "DyRep mode";
/// The `--help` heading of `train`'s flags that steer this invocation rather than set the run's
/// config (so `--resume` accepts them).
pub(crate) const RUN_HEADING: &str = "Run control";

#[derive(Parser, Debug)]
#[command(
    name = "dyrep",
    version,
    about = "DyRep: dynamic re-parameterization of CNNs (CVPR 2022), in Rust on candle",
    long_about = "DyRep grows the most salient convs of a CNN into multi-branch blocks during \
training and prunes branches whose BN scale fades; every trained network fuses back into the \
plain network it started from.\n\nExit codes: 0 ok, 1 usage/config/data error, 2 verification failed, 130 interrupted."
)]
pub(crate) struct Cli {
    /// More output: -v shows the runtime's log events on stderr, -vv its debug details too.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Print only errors (no progress, no log lines; files are written as usual).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
    /// Where to compute: `cpu` (own kernels) or `cuda` / `cuda:N` (a build with the `cuda`
    /// feature, see scripts/build-cuda.sh).
    #[arg(long, global = true, default_value = "cpu", value_name = "DEVICE")]
    pub(crate) device: String,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// List the registered branch types (ops).
    #[command(after_help = "Examples:\n  dyrep ops\n  dyrep ops --json")]
    Ops(OpsArgs),
    /// List the registered saliency scorers.
    #[command(after_help = "Examples:\n  dyrep scorers\n  dyrep scorers --json")]
    Scorers(ScorersArgs),
    /// List the model zoo with parameters and MACs at each model's default input (10 classes).
    #[command(after_help = "Examples:\n  dyrep models\n  dyrep models --json")]
    Models(ModelsArgs),
    /// Train a model (origin, repvgg, dbb or dyrep mode) and write a run directory.
    #[command(
        after_help = "Examples:\n  dyrep train                                   # vgg-tiny, bundled Fashion-MNIST subset, 3 epochs\n  dyrep train --model vgg-tiny --mode dbb --epochs 3 --out runs/dbb\n  dyrep train --mode dyrep --epochs 4 --grow-interval 1 --scorer synflow --out runs/dyrep\n  dyrep train -c run.toml --seed 2\n  dyrep train --resume runs/dbb                 # continue a stopped run exactly\n  dyrep train --model-file examples/models/my-cnn.toml --mode dyrep\n  dyrep train --mode dyrep --init-from resnet18.safetensors --model resnet18 --data cifar10:DIR\n\nThe run directory holds config.resolved.toml, run.log, metrics.csv, events.jsonl,\nsummary.json, curves.svg and checkpoints/{last,best}. Config file keys are the flag names\nwith _ (epochs, batch_size, init_from, [dyrep] scorer, ...). Ctrl-C stops before the next\nstep; the last epoch's checkpoint stays and --resume continues (exit status 130)."
    )]
    Train(Box<TrainArgs>),
    /// Evaluate a checkpoint (trained or fused) on the test split.
    #[command(
        after_help = "Examples:\n  dyrep eval --checkpoint runs/dbb/checkpoints/best\n  dyrep eval --checkpoint fused --limit 500 --logits-out logits.npy --inputs-out inputs.npy"
    )]
    Eval(EvalArgs),
    /// Fuse a trained checkpoint into the plain network and verify it on real test batches.
    #[command(
        after_help = "Examples:\n  dyrep fuse --checkpoint runs/dbb/checkpoints/best --out runs/dbb/fused\n\nExit status 2 if the fused model's top-1 or logits (relative 1e-4) differ."
    )]
    Fuse(FuseArgs),
    /// Throughput of training steps or eval forwards on random data.
    #[command(
        after_help = "Examples:\n  dyrep bench train --model vgg-tiny --mode dbb --batch 64 --iters 20\n  dyrep bench eval --model bench-cifar --json"
    )]
    Bench(BenchArgs),
    /// Draw curves.svg of a run: loss, accuracy, params and MACs per epoch, grows and cuts marked.
    #[command(
        after_help = "Examples:\n  dyrep plot runs/dyrep                 # writes runs/dyrep/curves.svg\n  dyrep plot runs/dyrep --out dyrep.svg"
    )]
    Plot(PlotArgs),
    /// Compare runs: one chart with every run overlaid and a markdown table (final and best
    /// accuracy, average params and MACs, train and CPU time, grows, cuts: the paper's Table 2).
    #[command(
        after_help = "Examples:\n  dyrep compare runs/origin runs/dbb runs/dyrep\n  dyrep compare runs/* --svg table2.svg --json\n  dyrep compare grid/* --group-by mode,scorer --baseline origin --cost-vs dbb --svg groups.svg\n\nWith --group-by, runs that share the named settings (config keys; `scorer`, `dep`, ... stand\nfor `dyrep.scorer`, `dyrep.dep`, and apply to dyrep-mode runs only) form one row: mean ± std\nover the runs, with --baseline the mean per-seed difference to that group with its 95 %\nconfidence interval, and with --cost-vs each group's average MACs, train time and CPU time\nover that group's; the chart shows each group's mean test-accuracy curve with a ±1 std band. Grouped\nruns must have finished (without --group-by an unfinished run's epochs read `16 of 40`), and\nwith --baseline every group holds one run per seed."
    )]
    Compare(CompareArgs),
    /// Print the tree of grown blocks of a checkpoint: each branch's op, weight shapes and γ
    /// importance, nested blocks indented (the paper's Fig. 6).
    #[command(
        after_help = "Examples:\n  dyrep inspect runs/dyrep                       # its checkpoints/last\n  dyrep inspect runs/dyrep/checkpoints/best --json"
    )]
    Inspect(InspectArgs),
    /// Export the fused plain network: safetensors with conventional names (torchvision for
    /// ResNet and VGG, timm for RepVGG) plus an architecture .json beside it, or ONNX.
    #[command(
        after_help = "Examples:\n  dyrep export --checkpoint runs/dyrep --format safetensors --out vgg.safetensors\n  dyrep export --checkpoint runs/dyrep/checkpoints/best --format onnx --out vgg.onnx\n\nThe ONNX model (opset 13, BN folded, input `input` [N,C,H,W], output `logits`) takes the\nnormalised inputs `dyrep eval --inputs-out` writes."
    )]
    Export(ExportArgs),
    /// Check on random cases that every op (and blocks of ops, nested or not) fuses into one
    /// conv with the same eval-mode output; random BN statistics, f32.
    #[command(
        after_help = "Examples:\n  dyrep verify --all --cases 200 --seed 1\n  dyrep verify --op conv1x1_kxk --cases 50\n\nExit status 2 if any case fails."
    )]
    Verify(VerifyArgs),
    /// Data tools: `pack` writes an image folder as tar shards (`shards:DIR`).
    #[command(
        after_help = "Examples:\n  dyrep data pack image-folder:/data/imagenet --out /data/imagenet-shards --shard-size 1GB\n\nShards are the WebDataset layout: train-NNNNNN.tar and test-NNNNNN.tar with <key>.jpg|png and\n<key>.cls members, plus classes.txt; train on them with --data shards:DIR."
    )]
    Data(DataArgs),
}

/// `dyrep data`'s arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct DataArgs {
    #[command(subcommand)]
    pub(crate) command: DataCommand,
}

/// `dyrep data`'s subcommands.
#[derive(Subcommand, Debug)]
pub(crate) enum DataCommand {
    /// Write an image folder as tar shards.
    Pack(PackArgs),
}

/// `dyrep data pack`'s arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct PackArgs {
    /// The image folder (`image-folder:DIR`, or just DIR).
    #[arg(value_name = "SPEC")]
    pub(crate) folder: String,
    /// Directory to write the shards to.
    #[arg(long, value_name = "DIR")]
    pub(crate) out: PathBuf,
    /// Close a shard once it holds this much (1GB, 500MB, 64MiB, bytes).
    #[arg(long, default_value = "1GB", value_parser = dyrep_runtime::data::shards::parse_size)]
    pub(crate) shard_size: u64,
    /// Print one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct TrainArgs {
    /// TOML config file (keys as in config.resolved.toml); flags override it.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Model name (see `dyrep models`).
    #[arg(long, conflicts_with = "model_file")]
    pub(crate) model: Option<String>,
    /// A network described by an architecture file (TOML list of layers, docs/MODEL-FILES.md)
    /// instead of --model; the run keeps a copy.
    #[arg(long, value_name = "FILE")]
    pub(crate) model_file: Option<PathBuf>,
    /// Data spec: default, fashion-mnist:DIR, mnist:DIR, cifar10:DIR, cifar100:DIR,
    /// image-folder:DIR.
    #[arg(long, value_name = "SPEC")]
    pub(crate) data: Option<String>,
    /// origin, repvgg, dbb or dyrep.
    #[arg(long)]
    pub(crate) mode: Option<String>,
    #[arg(long)]
    pub(crate) epochs: Option<usize>,
    #[arg(long)]
    pub(crate) batch_size: Option<usize>,
    #[arg(long)]
    pub(crate) lr: Option<f64>,
    /// Linear warm-up over the first N epochs, from --warmup-lr to --lr, before the cosine
    /// decay (config keys `warmup_epochs`, `warmup_lr`; 0 = none).
    #[arg(long, value_name = "N")]
    pub(crate) warmup_epochs: Option<usize>,
    /// The learning rate of the first warm-up epoch (default 1e-4, the reference trainer's).
    #[arg(long, value_name = "LR")]
    pub(crate) warmup_lr: Option<f64>,
    /// Raise the warm-up's learning rate every step, not every epoch (config key
    /// `warmup_per_step`; for runs of few long epochs).
    #[arg(long)]
    pub(crate) warmup_per_step: bool,
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Width multiplier of every channel count.
    #[arg(long)]
    pub(crate) width: Option<f64>,
    /// Train on a class-balanced subset of N images (the same images for every seed and mode).
    #[arg(long, value_name = "N")]
    pub(crate) train_limit: Option<usize>,
    /// Test on a class-balanced subset of N images.
    #[arg(long, value_name = "N")]
    pub(crate) test_limit: Option<usize>,
    /// Run directory (default runs/<model>-<mode>-seed<seed>).
    #[arg(help_heading = RUN_HEADING, long, value_name = "DIR", conflicts_with = "resume")]
    pub(crate) out: Option<PathBuf>,
    /// Continue the run in DIR from its last checkpoint, with its saved config.
    #[arg(help_heading = RUN_HEADING, long, value_name = "DIR")]
    pub(crate) resume: Option<PathBuf>,
    /// Start from plain pretrained weights with conventional names (a .safetensors file as
    /// `dyrep export` writes it; torchvision/timm key names), in any mode.
    #[arg(long, value_name = "FILE")]
    pub(crate) init_from: Option<PathBuf>,
    /// Stream the image folder with the ImageNet transforms at this crop size (train: random
    /// resized crop + flip; eval: resize to size/0.875 + centre crop); more in [augment.imagenet].
    #[arg(long, value_name = "PIXELS")]
    pub(crate) image_size: Option<usize>,
    /// Streamed image folders: skip (log and count) images that cannot be decoded.
    #[arg(long)]
    pub(crate) skip_bad_images: bool,
    /// Image-decoding threads for image folders (default: one per core).
    #[arg(long, value_name = "N")]
    pub(crate) workers: Option<usize>,
    /// Where decoded image folders are cached (default $DYREP_CACHE_DIR, $XDG_CACHE_HOME/dyrep
    /// or ~/.cache/dyrep).
    #[arg(long, value_name = "DIR", conflicts_with = "no_cache")]
    pub(crate) cache_dir: Option<PathBuf>,
    /// Decode image folders every time (no cache).
    #[arg(long)]
    pub(crate) no_cache: bool,
    /// Replace an existing, non-empty run directory.
    #[arg(long, conflicts_with = "resume")]
    pub(crate) force: bool,
    /// Data-parallel training over the MPI world (`mpirun -np N dyrep train ... --distributed`;
    /// a build with the `mpi` feature). Detected when an MPI launcher started the process.
    #[arg(help_heading = RUN_HEADING, long)]
    pub(crate) distributed: bool,
    /// Data-parallel runs: batch norm over every rank's batch (statistics all-reduced in the
    /// forward pass, their gradients in the backward; PyTorch's SyncBatchNorm). CPU only.
    #[arg(help_heading = RUN_HEADING, long)]
    pub(crate) sync_bn: bool,
    /// Data-parallel check: every rank reads the same batches, so the run equals a
    /// single-process one bit for bit.
    #[arg(long, hide = true)]
    pub(crate) dist_same_data: bool,
    /// Stop after this many epochs in this invocation (continue later with --resume).
    #[arg(help_heading = RUN_HEADING, long, value_name = "N", value_parser = at_least_one)]
    pub(crate) stop_after: Option<usize>,
    /// repvgg / dbb modes: build the blocks as their authors train them (`reference`: the BN
    /// after each conv dropped, branches initialised independently; the default) or as DyRep
    /// grows one (`dyrep`: the BN kept, the block equal to the fresh conv).
    #[arg(long, value_name = "FORM", value_parser = dyrep_runtime::train::BaselineForm::parse)]
    pub(crate) baseline_form: Option<dyrep_runtime::train::BaselineForm>,
    /// repvgg / dbb / dyrep modes: how blocks train — `bn` (every branch its own batch norm, as
    /// the paper; the default) or `online` (each branch's BN a learnable scale, the block one
    /// conv with its assembled kernel in every step: close to a plain network's cost).
    #[arg(long, value_name = "FORM", value_parser = dyrep_runtime::train::BlockForm::parse)]
    pub(crate) block_form: Option<dyrep_runtime::train::BlockForm>,
    /// repvgg / dbb modes, reference form: how the blocks' convs start (`pytorch`: every conv
    /// fresh with PyTorch's default init, as the reference; the default) or `fan_out` (the
    /// model's conv kept as the main branch, the new ones fan-out normal: dyrep's earlier form).
    #[arg(long, value_name = "INIT", value_parser = dyrep_runtime::train::BaselineInit::parse)]
    pub(crate) baseline_init: Option<dyrep_runtime::train::BaselineInit>,
    /// dyrep mode: branch ops for new blocks, comma-separated (default: every registered op).
    #[arg(help_heading = DYREP_HEADING, long, value_name = "A,B", value_delimiter = ',')]
    pub(crate) ops: Option<Vec<String>>,
    /// dyrep mode: saliency scorer (see `dyrep scorers`).
    #[arg(help_heading = DYREP_HEADING, long)]
    pub(crate) scorer: Option<String>,
    /// dyrep mode: grow after every this much training: epochs (`2`, `0.5`), `N steps`, or
    /// `auto` (1/40 of the run, the reference's proportion; the default).
    #[arg(help_heading = DYREP_HEADING, long, value_name = "PERIOD", value_parser = dyrep_runtime::dynamics::Period::parse)]
    pub(crate) grow_interval: Option<dyrep_runtime::dynamics::Period>,
    /// dyrep mode: no growth after this much training: epochs, `N steps`, `auto` (5/6 of the
    /// run, the default) or `none`.
    #[arg(help_heading = DYREP_HEADING, long, value_name = "PERIOD", value_parser = dyrep_runtime::dynamics::Period::parse)]
    pub(crate) max_grow_epochs: Option<dyrep_runtime::dynamics::Period>,
    /// dyrep mode: convs grown per grow step.
    #[arg(help_heading = DYREP_HEADING, long, value_name = "K")]
    pub(crate) grow_topk: Option<usize>,
    /// dyrep mode: γ of the last BN of new branches.
    #[arg(help_heading = DYREP_HEADING, long)]
    pub(crate) gamma0: Option<f64>,
    /// dyrep mode: training batches to calibrate a new block's BN statistics.
    #[arg(help_heading = DYREP_HEADING, long, value_name = "N")]
    pub(crate) calib_batches: Option<usize>,
    /// dyrep mode: λ, the importance below which (and below the mean) a branch is cut.
    #[arg(help_heading = DYREP_HEADING, long)]
    pub(crate) cut_threshold: Option<f64>,
    /// dyrep mode: how deep blocks may nest.
    #[arg(help_heading = DYREP_HEADING, long, value_name = "N")]
    pub(crate) max_depth: Option<usize>,
    /// dyrep mode: how a grow keeps the output: `exact` (default; rescales the grown conv by
    /// its output's σ), `reference` (the original code's eq. 6) or `affine` (exact, the conv's
    /// scale kept; docs/REFERENCE.md "The grown block").
    #[arg(help_heading = DYREP_HEADING, long, value_name = "FORM", value_parser = dyrep_runtime::dynamics::Preserve::parse)]
    pub(crate) preserve: Option<dyrep_runtime::dynamics::Preserve>,
    /// dyrep mode: never cut branches (Rep only).
    #[arg(help_heading = DYREP_HEADING, long)]
    pub(crate) no_dep: bool,
    /// The flags given on the command line, as `--long-name` with their help heading (filled
    /// from clap's value sources after parsing).
    #[arg(skip)]
    pub(crate) given: Vec<GivenFlag>,
}

/// A flag given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GivenFlag {
    pub(crate) long: String,
    pub(crate) heading: Option<String>,
}

/// The flags of `m` that came from the command line (not defaults), in `cmd`'s order.
pub(crate) fn given_flags(cmd: &clap::Command, m: &clap::ArgMatches) -> Vec<GivenFlag> {
    cmd.get_arguments()
        .filter(|a| {
            m.try_contains_id(a.get_id().as_str()).unwrap_or(false)
                && m.value_source(a.get_id().as_str())
                    == Some(clap::parser::ValueSource::CommandLine)
        })
        .filter_map(|a| {
            Some(GivenFlag {
                long: format!("--{}", a.get_long()?),
                heading: a.get_help_heading().map(str::to_string),
            })
        })
        .collect()
}

/// `dyrep ops`'s arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct OpsArgs {
    /// Print a JSON array of {name, summary}.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `dyrep scorers`'s arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct ScorersArgs {
    /// Print a JSON array of {name, summary}.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `dyrep models`'s arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct ModelsArgs {
    /// Print a JSON array of {name, summary, input, params, macs}.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `dyrep eval`'s arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct EvalArgs {
    /// Checkpoint directory.
    #[arg(long, value_name = "DIR")]
    pub(crate) checkpoint: PathBuf,
    /// Data spec (default: the checkpoint's dataset).
    #[arg(long, value_name = "SPEC")]
    pub(crate) data: Option<String>,
    /// Evaluate only the first N test images.
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub(crate) limit: Option<usize>,
    /// Write the logits [N, classes] as little-endian float32 .npy.
    #[arg(long, value_name = "FILE")]
    pub(crate) logits_out: Option<PathBuf>,
    /// Write the normalised inputs [N, C, H, W] as little-endian float32 .npy.
    #[arg(long, value_name = "FILE")]
    pub(crate) inputs_out: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `dyrep fuse`'s arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct FuseArgs {
    /// Checkpoint directory to fuse.
    #[arg(long, value_name = "DIR")]
    pub(crate) checkpoint: PathBuf,
    /// Directory for the fused checkpoint (must not exist or be empty).
    #[arg(long, value_name = "DIR")]
    pub(crate) out: PathBuf,
    /// Verify on the first N test images (default 1000).
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = at_least_one)]
    pub(crate) limit: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `dyrep bench`'s arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct BenchArgs {
    /// `train` (forward + backward + SGD step), `eval` (forward), or `data` (the input
    /// pipeline alone: a streamed image folder's training batches).
    #[arg(value_parser = ["train", "eval", "data"])]
    pub(crate) what: String,
    /// `data`: the image folder (`image-folder:DIR`).
    #[arg(long, value_name = "SPEC")]
    pub(crate) data: Option<String>,
    /// `data`: crop size of the training transform.
    #[arg(long, default_value_t = 224)]
    pub(crate) size: usize,
    /// `data`: decoding threads (default: one per core).
    #[arg(long, default_value_t = 0)]
    pub(crate) workers: usize,
    #[arg(long, default_value = "vgg-tiny")]
    pub(crate) model: String,
    /// origin, repvgg or dbb.
    #[arg(long, default_value = "origin")]
    pub(crate) mode: String,
    /// Batch size (default: 128 for bench-small, 64 otherwise).
    #[arg(long)]
    pub(crate) batch: Option<usize>,
    /// Grow every k×k conv into a block with these ops first (comma-separated, or `all`):
    /// the training cost of DyRep's grown blocks.
    #[arg(long, value_delimiter = ',', value_name = "OPS")]
    pub(crate) grow_ops: Option<Vec<String>>,
    /// The blocks' form (as `train --block-form`): `bn` or `online`.
    #[arg(long, value_name = "FORM", value_parser = dyrep_runtime::train::BlockForm::parse)]
    pub(crate) block_form: Option<dyrep_runtime::train::BlockForm>,
    /// Channel width multiplier (as `train --width`).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) width: f64,
    #[arg(long, default_value_t = 10)]
    pub(crate) iters: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
    /// Also print each conv geometry's time per pass and GFLOP/s (own CPU kernels; always in
    /// the JSON as `convs`).
    #[arg(long)]
    pub(crate) convs: bool,
}

/// `dyrep plot`'s arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct PlotArgs {
    /// Run directory (written by `dyrep train`).
    #[arg(value_name = "RUN_DIR")]
    pub(crate) run: PathBuf,
    /// SVG file to write (default RUN_DIR/curves.svg).
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
}

/// `dyrep compare`'s arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct CompareArgs {
    /// Run directories.
    #[arg(value_name = "RUN_DIR", required = true, num_args = 1..)]
    pub(crate) runs: Vec<PathBuf>,
    /// Also draw the runs' (or groups') test curves into this SVG file; no chart without it.
    #[arg(long, value_name = "FILE")]
    pub(crate) svg: Option<PathBuf>,
    /// Print the rows as JSON instead of the markdown table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Group runs by these comma-separated config settings (e.g. `mode,scorer`).
    #[arg(long, value_name = "KEYS")]
    pub(crate) group_by: Option<String>,
    /// The group the others are compared with, by seed (e.g. `origin`); needs --group-by.
    #[arg(long, value_name = "GROUP", requires = "group_by")]
    pub(crate) baseline: Option<String>,
    /// The group whose training cost the others are stated against (e.g. `dbb`): average MACs,
    /// train time and CPU time over its; needs --group-by.
    #[arg(long, value_name = "GROUP", requires = "group_by")]
    pub(crate) cost_vs: Option<String>,
}

/// `dyrep inspect`'s arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct InspectArgs {
    /// Checkpoint directory, or a run directory (its checkpoints/last).
    #[arg(value_name = "CHECKPOINT")]
    pub(crate) checkpoint: PathBuf,
    /// List plain convs too.
    #[arg(long)]
    pub(crate) all: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `dyrep export`'s arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct ExportArgs {
    /// Checkpoint directory, or a run directory (its checkpoints/last).
    #[arg(long, value_name = "DIR")]
    pub(crate) checkpoint: PathBuf,
    /// safetensors or onnx.
    #[arg(long, value_parser = ["safetensors", "onnx"])]
    pub(crate) format: String,
    /// File to write (replaced atomically).
    #[arg(long, value_name = "FILE")]
    pub(crate) out: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `dyrep verify`'s arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct VerifyArgs {
    /// Check only this op (a registered name; see `dyrep ops`).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["all", "kernels"])]
    pub(crate) op: Option<String>,
    /// Instead of fusion: check the compute kernels (conv, fused conv+BN+ReLU, BN, pools,
    /// ReLU; forward and gradients) of --device against the own CPU kernels, and the fused
    /// conv+BN+ReLU+max pool against the unfused ones.
    #[arg(long, conflicts_with = "all")]
    pub(crate) kernels: bool,
    /// Check every op and the block scenarios (the default).
    #[arg(long)]
    pub(crate) all: bool,
    /// Random cases per check.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) cases: u32,
    /// Seed of the random cases.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
}

/// A count that must be at least 1 (`--limit`, `--stop-after`).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e}")),
    }
}
