//! Training runs (docs/USAGE.md; docs/REFERENCE.md "Training recipes"): the
//! static modes `origin`, `repvgg` and `dbb` and DyRep's growing and cutting (`dyrep`), SGD with
//! path-keyed momentum, cosine LR with warmup, label smoothing, eval every epoch, a run directory
//! (`run_dir`) and exact resume (bitwise on CPU). `trainer` holds the run's state machine;
//! `train` drives it.

pub(crate) mod calibration;
mod run_dir;
mod trainer;

pub use trainer::Trainer;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::Device;
use dyrep_api::{InitCtx, SeededRng};

pub use crate::checkpoint::load_checkpoint_model;
pub use crate::config::{BaselineForm, BaselineInit, BlockForm, Mode, TrainConfig};
use crate::data::loader::{eval_stream, BatchStream, Which};
use crate::data::Dataset;
use crate::dynamics::Event;
use crate::error::Result;
use crate::metrics::{correct, cross_entropy};
pub use crate::model::apply_mode;
use crate::model::{build_model, ArchFile, Baseline, Model, ModelConfig};
pub use crate::run_state::{EpochRecord, RunState, Summary};

/// Runs (or resumes) training; `echo` receives every log line.
pub fn train(
    cfg: TrainConfig,
    opts: &RunOptions,
    echo: &mut dyn FnMut(TrainProgress<'_>),
) -> Result<Summary> {
    let mut trainer = if opts.resume {
        Trainer::resume(opts, echo)?
    } else {
        Trainer::start(cfg, opts, echo)?
    };
    let mut ran = 0usize;
    while !trainer.finished() {
        if opts.stop_after.is_some_and(|s| ran >= s) {
            let line = format!(
                "stopping after {ran} epoch(s) as asked; continue with --resume {}",
                opts.out.display()
            );
            trainer.log(&line, echo);
            break;
        }
        trainer.epoch(echo)?;
        ran += 1;
    }
    trainer.finish(echo)
}

/// What `train` reports while it runs (the CLI draws a progress bar or plain lines from it).
#[derive(Clone, Copy, Debug)]
pub enum TrainProgress<'a> {
    /// A line of the run's log (also appended to `run.log` and emitted as a tracing event).
    Line(&'a str),
    /// Epoch `epoch` (1-based) of `epochs` starts with `steps` training batches.
    EpochStart {
        epoch: usize,
        epochs: usize,
        steps: usize,
    },
    /// A training step finished; loss and accuracy are running means over the epoch so far.
    Step {
        step: usize,
        loss: f64,
        acc: f64,
        images_per_sec: f64,
    },
    /// The epoch's training steps are done; evaluation (and growth) follow.
    EpochTrained,
}

/// How to run.
pub struct RunOptions {
    pub out: PathBuf,
    /// Continue the run in `out` from its last checkpoint.
    pub resume: bool,
    /// Replace an existing run directory.
    pub force: bool,
    /// Stop (resumably) after this many epochs in this invocation.
    pub stop_after: Option<usize>,
    pub device: Device,
    /// Set (e.g. by a Ctrl-C handler) to stop before the next step; the checkpoint of the last
    /// finished epoch stays, and `train` returns `RuntimeError::Interrupted`.
    pub interrupt: Option<Arc<AtomicBool>>,
    /// The processes of a data-parallel run (`dist::init`); `None`: this process alone.
    pub comm: Option<std::rc::Rc<dyn crate::dist::Comm>>,
}

/// Builds the model of a config for a dataset, with the mode's static branches.
/// `file`: the run's architecture file (`TrainConfig::read_model_file`), if it has one.
pub fn build_for(
    cfg: &TrainConfig,
    file: Option<ArchFile>,
    ds: &Dataset,
    device: &Device,
) -> Result<Model> {
    let mut rng = SeededRng::for_purpose(cfg.seed, "init");
    let mut ctx = InitCtx::new(&mut rng, device);
    ctx.block_form = cfg.block_form;
    let mcfg = ModelConfig {
        name: file
            .as_ref()
            .map_or_else(|| cfg.model.clone(), |f| f.name.clone()),
        input: [ds.channels, ds.height, ds.width],
        num_classes: ds.num_classes(),
        width: cfg.width,
        file,
    };
    let mut model = build_model(&mcfg, &mut ctx)?;
    model.block_form = cfg.block_form;
    if let Some(file) = &cfg.init_from {
        crate::export::load_plain_weights(&model, file)?;
    }
    let baseline = Baseline {
        form: cfg.baseline_form,
        init: cfg.baseline_init,
        pretrained: cfg.init_from.is_some(),
    };
    apply_mode(&mut model, cfg.mode, baseline, &mut ctx)?;
    Ok(model)
}

/// Eval-mode loss and accuracy on a split (first `limit` examples).
pub fn evaluate(
    model: &Model,
    ds: &Arc<Dataset>,
    which: Which,
    batch: usize,
    limit: Option<usize>,
    device: &Device,
) -> Result<(f64, f64)> {
    let sums = eval_sums(
        model,
        ds,
        eval_stream(ds.clone(), which, batch, limit),
        device,
    )?;
    Ok(loss_and_acc(sums))
}

/// The eval-mode sums over `batches`: `[Σ loss, correct, examples]`.
pub(crate) fn eval_sums(
    model: &Model,
    ds: &Arc<Dataset>,
    batches: BatchStream,
    device: &Device,
) -> Result<[f64; 3]> {
    let (mut loss, mut right, mut n) = (0f64, 0usize, 0usize);
    for b in batches {
        let b = b?;
        let (x, y) = b.to_tensors(ds, device)?;
        let logits = model.infer(&x)?;
        loss += cross_entropy(&logits, &y, 0.0)?.to_scalar::<f32>()? as f64 * b.len() as f64;
        right += correct(&logits, &y)?;
        n += b.len();
    }
    Ok([loss, right as f64, n as f64])
}

/// Mean loss and accuracy from [`eval_sums`].
pub(crate) fn loss_and_acc([loss, right, n]: [f64; 3]) -> (f64, f64) {
    let n = n.max(1.0);
    (loss / n, right / n)
}

/// The log line of a grow or cut.
fn event_line(e: &Event) -> String {
    format!(
        "{} {} [{}]{}  gamma {:.3}  params {}  MACs {:.2}M  preserve rel err {:.2e}{}",
        e.kind,
        e.path,
        e.ops.join(", "),
        e.score
            .map(|s| format!("  score {s:.4e}"))
            .unwrap_or_default(),
        e.gamma,
        e.params,
        e.macs as f64 / 1e6,
        e.preserve_rel_err,
        e.step
            .map(|s| format!("  (after step {s})"))
            .unwrap_or_default()
    )
}
