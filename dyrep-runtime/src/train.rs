//! Training runs (README.md "The `dyrep` command"; docs/REFERENCE.md "Training recipes"): the
//! static modes `origin` (plain), `repvgg` (every 3×3 as conv + 1×1 + identity, all γ = 1) and
//! `dbb` (every k×k as DBB's k×k + 1×1 + 1×1→k×k + 1×1→avg, all γ = 1), SGD with path-keyed
//! momentum, cosine LR with warmup, label smoothing, eval every epoch, a run directory with
//! `config.resolved.toml`, `run.log`, `metrics.csv`, `summary.json` and atomic checkpoints
//! `checkpoints/{last,best}`, and exact resume (bitwise on CPU).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use dyrep_api::{op_spec, InitCtx, OpSpec, SeededRng};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, CheckpointData};
use crate::data::loader::{eval_stream, train_batches_per_epoch, train_stream, Augment, Which};
use crate::data::{self, Dataset};
use crate::dynamics::{
    cut_step, grow_step, growable_weights, observe, AdjustCtx, DyrepConfig, Event,
};
use crate::error::{io, Result, RuntimeError};
use crate::metrics::{correct, cross_entropy};
use crate::model::{build_model, Model, ModelConfig};
use crate::optim::{CosineSchedule, Sgd, SgdConfig};
use dyrep_api::Scorer;

/// Training mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The plain network.
    Origin,
    /// Every 3×3 conv as RepVGG's conv + 1×1 + identity (γ = 1).
    Repvgg,
    /// Every k×k conv as DBB's four branches (γ = 1).
    Dbb,
    /// Dynamic growth (Rep) and pruning (Dep) of branches, scored by a scorer.
    Dyrep,
}

/// How the `repvgg` and `dbb` modes build their blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BaselineForm {
    /// As the DBB and RepVGG authors train them: the BN after each conv is dropped (every
    /// branch has its own) and every branch starts from its own fresh initialisation, branch
    /// BNs at γ = 1. `fuse` brings the dropped BN back, so the fused model is the plain one.
    #[default]
    Reference,
    /// As DyRep grows a block: the BN after the conv stays, and the block starts equal to the
    /// fresh conv (eq. 6), new branches at γ = 1.
    Dyrep,
}

impl BaselineForm {
    pub fn as_str(self) -> &'static str {
        match self {
            BaselineForm::Reference => "reference",
            BaselineForm::Dyrep => "dyrep",
        }
    }

    pub fn parse(s: &str) -> std::result::Result<BaselineForm, String> {
        match s {
            "reference" => Ok(BaselineForm::Reference),
            "dyrep" => Ok(BaselineForm::Dyrep),
            other => Err(format!("`{other}`: expected `reference` or `dyrep`")),
        }
    }
}

impl Mode {
    pub const NAMES: [&'static str; 4] = ["origin", "repvgg", "dbb", "dyrep"];

    pub fn parse(s: &str) -> Result<Mode> {
        match s {
            "origin" => Ok(Mode::Origin),
            "repvgg" => Ok(Mode::Repvgg),
            "dbb" => Ok(Mode::Dbb),
            "dyrep" => Ok(Mode::Dyrep),
            other => {
                let hint = dyrep_api::registry::nearest(other, Self::NAMES)
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                Err(RuntimeError::Config(format!(
                    "unknown mode `{other}`{hint}; known modes: {}",
                    Self::NAMES.join(", ")
                )))
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Origin => "origin",
            Mode::Repvgg => "repvgg",
            Mode::Dbb => "dbb",
            Mode::Dyrep => "dyrep",
        }
    }
}

fn d_model() -> String {
    "vgg-tiny".into()
}
fn d_data() -> String {
    "default".into()
}
fn d_mode() -> Mode {
    Mode::Origin
}
fn d_epochs() -> usize {
    3
}
fn d_batch() -> usize {
    64
}
fn d_eval_batch() -> usize {
    256
}
fn d_lr() -> f64 {
    0.1
}
fn d_min_lr() -> f64 {
    1e-5
}
fn d_width() -> f64 {
    1.0
}

/// Every setting of a run (the TOML config file; `config.resolved.toml` in the run directory).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    #[serde(default = "d_model")]
    pub model: String,
    /// Data spec (`default`, `fashion-mnist:DIR`, `cifar10:DIR`, ...).
    #[serde(default = "d_data")]
    pub data: String,
    #[serde(default = "d_mode")]
    pub mode: Mode,
    #[serde(default = "d_epochs")]
    pub epochs: usize,
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    #[serde(default = "d_eval_batch")]
    pub eval_batch_size: usize,
    #[serde(default = "d_lr")]
    pub lr: f64,
    #[serde(default = "d_min_lr")]
    pub min_lr: f64,
    #[serde(default)]
    pub warmup_epochs: usize,
    #[serde(default)]
    pub warmup_lr: f64,
    #[serde(default)]
    pub sgd: SgdConfig,
    #[serde(default)]
    pub label_smoothing: f64,
    #[serde(default = "d_width")]
    pub width: f64,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub augment: Augment,
    /// Use only the first N training / test examples.
    #[serde(default)]
    pub train_limit: Option<usize>,
    #[serde(default)]
    pub test_limit: Option<usize>,
    /// How `repvgg` and `dbb` build their blocks (the reference's form by default).
    #[serde(default)]
    pub baseline_form: BaselineForm,
    /// Start from plain pretrained weights with conventional names (a `.safetensors` file as
    /// `dyrep export` writes it), in any mode (paper §5.4 "D").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
    /// Settings of the `dyrep` mode.
    #[serde(default)]
    pub dyrep: DyrepConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: d_model(),
            data: d_data(),
            mode: d_mode(),
            epochs: d_epochs(),
            batch_size: d_batch(),
            eval_batch_size: d_eval_batch(),
            lr: d_lr(),
            min_lr: d_min_lr(),
            warmup_epochs: 0,
            warmup_lr: 0.0,
            sgd: SgdConfig::default(),
            label_smoothing: 0.0,
            width: d_width(),
            seed: 0,
            augment: Augment::default(),
            train_limit: None,
            test_limit: None,
            baseline_form: BaselineForm::Reference,
            init_from: None,
            dyrep: DyrepConfig::default(),
        }
    }
}

impl TrainConfig {
    /// Checks every setting; the error names the setting and the fix.
    pub fn validate(&self) -> Result<()> {
        let bad = |s: String| Err(RuntimeError::Config(s));
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if self.batch_size < 2 {
            return bad(
                "batch_size must be at least 2 (batch norm needs more than one value)".into(),
            );
        }
        if self.eval_batch_size == 0 {
            return bad("eval_batch_size must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) || self.min_lr < 0.0 || self.min_lr > self.lr {
            return bad(format!(
                "need 0 <= min_lr <= lr and lr > 0 (lr {}, min_lr {})",
                self.lr, self.min_lr
            ));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad(format!(
                "label_smoothing {} must be in [0, 1)",
                self.label_smoothing
            ));
        }
        if self.warmup_epochs >= self.epochs && self.warmup_epochs > 0 {
            return bad(format!(
                "warmup_epochs ({}) must be smaller than epochs ({})",
                self.warmup_epochs, self.epochs
            ));
        }
        if !(0.0..1.0).contains(&self.sgd.momentum) || self.sgd.weight_decay < 0.0 {
            return bad("sgd.momentum must be in [0, 1) and sgd.weight_decay >= 0".into());
        }
        crate::model::find_model(&self.model)?;
        if let Some(p) = &self.init_from {
            if !p.is_file() {
                return bad(format!(
                    "init_from {}: no such file; give the .safetensors file `dyrep export --format safetensors` wrote",
                    p.display()
                ));
            }
        }
        if self.mode == Mode::Dyrep {
            self.dyrep.validate()?;
        }
        Ok(())
    }

    /// The config as TOML.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self)
            .map_err(|e| RuntimeError::Config(format!("cannot write config: {e}")))
    }

    /// Reads a TOML config file. Syntax errors name the line; unknown keys are errors naming
    /// the key and the nearest valid one.
    pub fn from_toml_file(path: &Path) -> Result<TrainConfig> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let at = |e: &toml::de::Error| match e.span() {
            Some(span) => format!(
                "{}:{}",
                path.display(),
                text[..span.start.min(text.len())].lines().count().max(1)
            ),
            None => path.display().to_string(),
        };
        let table: toml::Table = toml::from_str(&text).map_err(|e| {
            RuntimeError::Config(format!("{}: invalid TOML: {}", at(&e), e.message().trim()))
        })?;
        check_config_keys(&table, "", &Self::known_keys(), path)?;
        toml::from_str(&text)
            .map_err(|e| RuntimeError::Config(format!("{}: {}", at(&e), e.message().trim())))
    }

    /// Every key a config file may hold, dotted for sections (`dyrep.scorer`).
    pub fn known_keys() -> Vec<String> {
        let mut keys = Vec::new();
        if let Ok(t) = toml::Table::try_from(TrainConfig::default()) {
            collect_keys(&t, "", &mut keys);
        }
        // Optional settings that a default config leaves out.
        for k in [
            "train_limit",
            "test_limit",
            "init_from",
            "dyrep.max_grow_epochs",
        ] {
            if !keys.iter().any(|x| x == k) {
                keys.push(k.to_string());
            }
        }
        keys
    }
}

fn collect_keys(t: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in t {
        let full = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if let toml::Value::Table(sub) = v {
            out.push(full.clone());
            collect_keys(sub, &full, out);
        } else {
            out.push(full);
        }
    }
}

/// Fails on the first key of `t` not in `known`, suggesting the closest known key.
fn check_config_keys(t: &toml::Table, prefix: &str, known: &[String], path: &Path) -> Result<()> {
    for (k, v) in t {
        let full = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if !known.contains(&full) {
            let nearest = dyrep_api::registry::nearest(&full, known.iter().map(String::as_str))
                .map(|c| format!(" (did you mean `{c}`?)"))
                .unwrap_or_default();
            return Err(RuntimeError::Config(format!(
                "{}: unknown key `{full}`{nearest}; `dyrep train --help` lists the settings (config keys are the flag names with _)",
                path.display()
            )));
        }
        if let toml::Value::Table(sub) = v {
            check_config_keys(sub, &full, known, path)?;
        }
    }
    Ok(())
}

/// One epoch's numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub test_loss: f64,
    pub test_acc: f64,
    pub lr: f64,
    pub params: usize,
    pub macs: u64,
    pub branches: usize,
    pub seconds: f64,
}

/// Progress of a run, saved in every checkpoint's `state.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RunState {
    pub config: TrainConfig,
    /// Number of finished epochs.
    pub epochs_done: usize,
    pub global_step: usize,
    pub best_test_acc: f64,
    pub best_epoch: usize,
    pub train_seconds: f64,
    pub history: Vec<EpochRecord>,
    /// The scorer with its accumulators (dyrep mode), so a resume keeps them.
    #[serde(default)]
    pub scorer: Option<Box<dyn Scorer>>,
    /// Every grow and cut so far.
    #[serde(default)]
    pub events: Vec<Event>,
}

/// `summary.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub model: String,
    pub mode: String,
    /// How the `repvgg` / `dbb` blocks were built (`reference` or `dyrep`); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_form: Option<String>,
    pub dataset: String,
    pub epochs: usize,
    pub seed: u64,
    pub final_test_acc: f64,
    pub best_test_acc: f64,
    pub avg_params: f64,
    pub avg_macs: f64,
    pub final_params: usize,
    pub final_macs: u64,
    pub train_seconds: f64,
    pub peak_rss_bytes: u64,
    pub grows: usize,
    pub cuts: usize,
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
}

/// Builds the model of a config for a dataset, with the mode's static branches.
pub fn build_for(cfg: &TrainConfig, ds: &Dataset, device: &Device) -> Result<Model> {
    let mut rng = SeededRng::for_purpose(cfg.seed, "init");
    let mut ctx = InitCtx::new(&mut rng, device);
    let mcfg = ModelConfig {
        name: cfg.model.clone(),
        input: [ds.channels, ds.height, ds.width],
        num_classes: ds.num_classes(),
        width: cfg.width,
    };
    let mut model = build_model(&mcfg, &mut ctx)?;
    if let Some(file) = &cfg.init_from {
        crate::export::load_plain_weights(&model, file)?;
    }
    apply_mode(&mut model, cfg.mode, cfg.baseline_form, &mut ctx)?;
    Ok(model)
}

/// Turns the convs a static mode targets into blocks (γ = 1 on every branch), in `form`.
pub fn apply_mode(
    model: &mut Model,
    mode: Mode,
    form: BaselineForm,
    ctx: &mut InitCtx<'_>,
) -> Result<usize> {
    let main = dyrep_ops::main_spec();
    let names: &[&str] = match mode {
        Mode::Origin | Mode::Dyrep => return Ok(0),
        Mode::Repvgg => &["conv1x1", "identity"],
        Mode::Dbb => &["conv1x1", "conv1x1_kxk", "conv1x1_avg"],
    };
    let specs: Vec<Box<dyn OpSpec>> = names
        .iter()
        .map(|n| op_spec(n))
        .collect::<dyrep_api::Result<_>>()?;
    let gamma0 = ctx.gamma0;
    ctx.gamma0 = 1.0;
    let eligible: &dyn Fn(&dyrep_api::ConvGeom) -> bool = match mode {
        Mode::Repvgg => &|g| g.k == 3 && g.is_same_padding(),
        _ => &|g| g.k > 1,
    };
    let n = model.grow_all(
        &*main,
        &specs,
        eligible,
        form == BaselineForm::Reference,
        ctx,
    );
    ctx.gamma0 = gamma0;
    n
}

/// What a grow/cut step needs from the run (`step`: a mid-epoch adjustment's step).
fn adjust_ctx<'a>(
    cfg: &'a TrainConfig,
    ds: &'a Arc<Dataset>,
    device: &'a Device,
    fixed: &'a Tensor,
    step: Option<u64>,
) -> AdjustCtx<'a> {
    AdjustCtx {
        cfg: &cfg.dyrep,
        ds,
        batch_size: cfg.batch_size,
        augment: &cfg.augment,
        train_limit: cfg.train_limit,
        seed: cfg.seed,
        device,
        fixed,
        step,
    }
}

/// One Rep + Dep adjustment in epoch `epoch` (1-based): grow the best-scored convs, reset the
/// scorer, cut faded branches (with Dep on), log and record every event.
fn adjust(
    model: &mut Model,
    state: &mut RunState,
    epoch: usize,
    ctx: &AdjustCtx<'_>,
    run: &mut RunDir,
    echo: &mut dyn FnMut(TrainProgress<'_>),
) -> Result<()> {
    let mut events = match &state.scorer {
        Some(s) => grow_step(model, s.as_ref(), epoch, ctx)?,
        None => Vec::new(),
    };
    if let Some(s) = state.scorer.as_mut() {
        s.reset();
    }
    if ctx.cfg.dep {
        events.extend(cut_step(model, epoch, ctx.step, ctx.cfg, ctx.fixed)?);
    }
    for e in &events {
        run.log(
            &format!(
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
            ),
            echo,
        );
    }
    state.events.extend(events);
    Ok(())
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
    let (mut loss, mut right, mut n) = (0f64, 0usize, 0usize);
    for b in eval_stream(ds.clone(), which, batch, limit) {
        let (x, y) = b.to_tensors(ds, device)?;
        let logits = model.infer(&x)?;
        loss += cross_entropy(&logits, &y, 0.0)?.to_scalar::<f32>()? as f64 * b.len() as f64;
        right += correct(&logits, &y)?;
        n += b.len();
    }
    let n = n.max(1) as f64;
    Ok((loss / n, right as f64 / n))
}

struct RunDir {
    dir: PathBuf,
    log: std::fs::File,
}

impl RunDir {
    fn log(&mut self, line: &str, echo: &mut dyn FnMut(TrainProgress<'_>)) {
        tracing::info!(target: "dyrep::train", "{line}");
        echo(TrainProgress::Line(line));
        let _ = writeln!(self.log, "{} {line}", unix_time_stamp());
    }

    /// A detail for `run.log` and `-v` (not echoed as a line of the run).
    fn detail(&mut self, line: &str) {
        tracing::debug!(target: "dyrep::train", "{line}");
        let _ = writeln!(self.log, "{} {line}", unix_time_stamp());
    }

    fn write_atomic(&self, name: &str, text: &str) -> Result<()> {
        crate::fs::write_atomic(&self.dir.join(name), text.as_bytes())
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC) for log lines.
fn unix_time_stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn metrics_csv(history: &[EpochRecord]) -> String {
    let mut s = String::from("epoch,split,loss,acc,lr,params,macs,branches,seconds\n");
    for r in history {
        for (split, loss, acc) in [
            ("train", r.train_loss, r.train_acc),
            ("test", r.test_loss, r.test_acc),
        ] {
            s.push_str(&format!(
                "{},{split},{loss:.6},{acc:.6},{:.6e},{},{},{},{:.3}\n",
                r.epoch, r.lr, r.params, r.macs, r.branches, r.seconds
            ));
        }
    }
    s
}

/// Epoch-weighted mean of a per-epoch quantity (docs/REFERENCE.md "MACs and params").
fn epoch_mean(history: &[EpochRecord], f: impl Fn(&EpochRecord) -> f64) -> f64 {
    if history.is_empty() {
        return 0.0;
    }
    history.iter().map(&f).sum::<f64>() / history.len() as f64
}

/// Runs (or resumes) training; `echo` receives every log line.
pub fn train(
    cfg: TrainConfig,
    opts: &RunOptions,
    echo: &mut dyn FnMut(TrainProgress<'_>),
) -> Result<Summary> {
    let device = &opts.device;
    let ck_dir = opts.out.join("checkpoints");
    // Resume or start.
    let (cfg, mut state, model, mut opt) = if opts.resume {
        let last = ck_dir.join("last");
        let loaded = checkpoint::load::<RunState>(&last, device)?;
        let cfg = loaded.state.config.clone();
        cfg.validate()?;
        let mut rng = SeededRng::for_purpose(cfg.seed, "init");
        let mut ctx = InitCtx::new(&mut rng, device);
        let model = Model::from_arch(&loaded.arch, &mut ctx)?;
        model
            .load_tensors(&loaded.model)
            .map_err(|e| RuntimeError::Checkpoint {
                path: loaded.dir.join("model.safetensors"),
                reason: e.to_string(),
            })?;
        let mut opt = Sgd::new(cfg.sgd.clone());
        if let Some(o) = loaded.optim {
            opt.load_state(o);
        }
        (cfg, loaded.state, Some(model), opt)
    } else {
        cfg.validate()?;
        if opts.out.exists()
            && std::fs::read_dir(&opts.out)
                .map(|mut d| d.next().is_some())
                .unwrap_or(true)
        {
            if !opts.force {
                return Err(RuntimeError::Config(format!(
                    "output directory {} already exists and is not empty; pass --force to replace it or --resume to continue it",
                    opts.out.display()
                )));
            }
            std::fs::remove_dir_all(&opts.out).map_err(io(&opts.out))?;
        }
        std::fs::create_dir_all(&opts.out).map_err(io(&opts.out))?;
        let state = RunState {
            config: cfg.clone(),
            epochs_done: 0,
            global_step: 0,
            best_test_acc: -1.0,
            best_epoch: 0,
            train_seconds: 0.0,
            history: Vec::new(),
            scorer: match cfg.mode {
                Mode::Dyrep => Some(cfg.dyrep.build_scorer(cfg.seed)?),
                _ => None,
            },
            events: Vec::new(),
        };
        // The model is built once the data is loaded (its shape decides the input).
        (cfg.clone(), state, None, Sgd::new(cfg.sgd.clone()))
    };
    let ds = Arc::new(data::load(&cfg.data)?.limited(cfg.train_limit, cfg.test_limit));
    let missing = ds.classes_missing_from_training();
    if !missing.is_empty() {
        return Err(RuntimeError::Config(format!(
            "the training data{} has no examples of {} of the model's {} classes ({}); raise --train-limit or add images of those classes",
            cfg.train_limit
                .map(|n| format!(" (--train-limit {n})"))
                .unwrap_or_default(),
            missing.len(),
            ds.num_classes(),
            missing.join(", ")
        )));
    }
    let mut model = match model {
        Some(m) => m,
        None => build_for(&cfg, &ds, device)?,
    };
    if cfg.mode == Mode::Dyrep && state.epochs_done == 0 {
        check_ops_apply(&model, &cfg.dyrep)?;
    }
    // The fixed held-out batch grow and cut preservation is measured on.
    let fixed = {
        let n = 64.min(ds.test.len());
        let b =
            crate::data::loader::make_batch(&ds, Which::Test, &(0..n).collect::<Vec<_>>(), None);
        b.to_tensors(&ds, device)?.0
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(opts.out.join("run.log"))
        .map_err(io(opts.out.join("run.log")))?;
    let mut run = RunDir {
        dir: opts.out.clone(),
        log,
    };
    if !opts.resume {
        run.write_atomic("config.resolved.toml", &cfg.to_toml()?)?;
    }
    let steps = train_batches_per_epoch(&ds, cfg.batch_size, cfg.train_limit);
    if steps == 0 {
        return Err(RuntimeError::Config(format!(
            "batch_size {} is larger than the {} training examples",
            cfg.batch_size,
            cfg.train_limit.unwrap_or(usize::MAX).min(ds.train.len())
        )));
    }
    let grow_schedule = match cfg.mode {
        Mode::Dyrep => Some(cfg.dyrep.schedule(steps, cfg.epochs)?),
        _ => None,
    };
    let schedule = CosineSchedule {
        lr: cfg.lr,
        min_lr: cfg.min_lr,
        warmup_epochs: cfg.warmup_epochs,
        warmup_lr: cfg.warmup_lr,
    };
    run.log(
        &format!(
            "{} model {} mode {}{} on {} ({} train / {} test, {}x{}x{}, {} classes): {} params, {:.2} M MACs, {} blocks; epochs {}..{}",
            if opts.resume { "resume" } else { "train" },
            cfg.model,
            cfg.mode.as_str(),
            match &cfg.init_from {
                Some(p) => format!(" from {}", p.display()),
                None => String::new(),
            },
            ds.spec,
            cfg.train_limit.unwrap_or(usize::MAX).min(ds.train.len()),
            cfg.test_limit.unwrap_or(usize::MAX).min(ds.test.len()),
            ds.channels,
            ds.height,
            ds.width,
            ds.num_classes(),
            model.param_count(),
            model.macs()? as f64 / 1e6,
            model.block_count(),
            state.epochs_done + 1,
            cfg.epochs
        ),
        echo,
    );
    let mut ran = 0usize;
    while state.epochs_done < cfg.epochs {
        if opts.stop_after.is_some_and(|s| ran >= s) {
            run.log(
                &format!(
                    "stopping after {ran} epoch(s) as asked; continue with --resume {}",
                    opts.out.display()
                ),
                echo,
            );
            break;
        }
        let epoch = state.epochs_done;
        let t0 = Instant::now();
        let mut params = model.tensors();
        let live: BTreeSet<String> = params.iter().map(|p| p.0.clone()).collect();
        opt.retain(&live);
        let mut growable = match cfg.mode {
            Mode::Dyrep => growable_weights(&model, cfg.dyrep.max_depth),
            _ => Vec::new(),
        };
        let (mut loss_sum, mut right, mut seen) = (0f64, 0usize, 0usize);
        let mut lr = schedule.lr_at(epoch, state.global_step, steps, cfg.epochs);
        echo(TrainProgress::EpochStart {
            epoch: epoch + 1,
            epochs: cfg.epochs,
            steps,
        });
        for (step, b) in train_stream(
            ds.clone(),
            cfg.batch_size,
            cfg.seed,
            epoch,
            &cfg.augment,
            cfg.train_limit,
        )
        .enumerate()
        {
            if opts
                .interrupt
                .as_ref()
                .is_some_and(|f| f.load(Ordering::SeqCst))
            {
                let msg = format!(
                    "interrupted in epoch {}; the checkpoint after epoch {} is intact: continue with --resume {}",
                    epoch + 1,
                    state.epochs_done,
                    opts.out.display()
                );
                run.log(&msg, echo);
                return Err(RuntimeError::Interrupted(msg));
            }
            lr = schedule.lr_at(epoch, state.global_step, steps, cfg.epochs);
            let (x, y) = b.to_tensors(&ds, device)?;
            let logits = model.forward_t(&x, true)?;
            let loss = cross_entropy(&logits, &y, cfg.label_smoothing)?;
            let lv = loss.to_scalar::<f32>()? as f64;
            if !lv.is_finite() {
                return Err(RuntimeError::Training(format!(
                    "loss became {lv} at epoch {} step {}; lower --lr (now {lr:.3e})",
                    epoch + 1,
                    state.global_step
                )));
            }
            let grads = observe(
                state.scorer.as_mut(),
                loss.backward()?,
                &growable,
                state.global_step,
                &model,
                (&x, &y),
            )?;
            opt.step(lr, &params, &grads)?;
            loss_sum += lv * b.len() as f64;
            right += correct(&logits.detach(), &y)?;
            seen += b.len();
            state.global_step += 1;
            // A grow in the middle of the epoch (one at its end follows the evaluation).
            if step + 1 < steps
                && grow_schedule.is_some_and(|g| g.grows_after(state.global_step as u64))
            {
                let ctx = adjust_ctx(&cfg, &ds, device, &fixed, Some(state.global_step as u64));
                adjust(&mut model, &mut state, epoch + 1, &ctx, &mut run, echo)?;
                params = model.tensors();
                opt.retain(&params.iter().map(|p| p.0.clone()).collect());
                growable = growable_weights(&model, cfg.dyrep.max_depth);
            }
            echo(TrainProgress::Step {
                step: step + 1,
                loss: loss_sum / seen as f64,
                acc: right as f64 / seen as f64,
                images_per_sec: seen as f64 / t0.elapsed().as_secs_f64().max(1e-9),
            });
        }
        echo(TrainProgress::EpochTrained);
        let (test_loss, test_acc) = evaluate(
            &model,
            &ds,
            Which::Test,
            cfg.eval_batch_size,
            cfg.test_limit,
            device,
        )?;
        let secs = t0.elapsed().as_secs_f64();
        let rec = EpochRecord {
            epoch: epoch + 1,
            train_loss: loss_sum / seen.max(1) as f64,
            train_acc: right as f64 / seen.max(1) as f64,
            test_loss,
            test_acc,
            lr,
            params: model.param_count(),
            macs: model.macs()?,
            branches: model.branch_count(),
            seconds: secs,
        };
        run.log(
            &format!(
                "epoch {}/{}  train loss {:.4} acc {:.4}  test loss {:.4} acc {:.4}  lr {:.2e}  {:.1}s ({:.0} img/s)",
                rec.epoch,
                cfg.epochs,
                rec.train_loss,
                rec.train_acc,
                rec.test_loss,
                rec.test_acc,
                rec.lr,
                secs,
                seen as f64 / secs.max(1e-9)
            ),
            echo,
        );
        state.epochs_done += 1;
        state.train_seconds += secs;
        let improved = test_acc > state.best_test_acc;
        if improved {
            state.best_test_acc = test_acc;
            state.best_epoch = rec.epoch;
        }
        state.history.push(rec);
        if grow_schedule.is_some_and(|g| g.grows_after(state.global_step as u64)) {
            let ctx = adjust_ctx(&cfg, &ds, device, &fixed, None);
            adjust(&mut model, &mut state, epoch + 1, &ctx, &mut run, echo)?;
        }
        let arch = model.arch();
        let data = CheckpointData {
            arch: &arch,
            model: model.tensor_map()?,
            optim: Some(opt.state()),
            state: &state,
        };
        checkpoint::save(&ck_dir.join("last"), &data)?;
        if improved {
            checkpoint::save(&ck_dir.join("best"), &data)?;
        }
        run.detail(&format!(
            "checkpoint written: {}{}",
            ck_dir.join("last").display(),
            if improved { " (and best)" } else { "" }
        ));
        run.write_atomic("metrics.csv", &metrics_csv(&state.history))?;
        if cfg.mode == Mode::Dyrep {
            let mut lines = String::new();
            for e in &state.events {
                lines.push_str(
                    &serde_json::to_string(e).map_err(|e| RuntimeError::Config(e.to_string()))?,
                );
                lines.push('\n');
            }
            run.write_atomic("events.jsonl", &lines)?;
        }
        ran += 1;
    }
    let last = state.history.last();
    let summary = Summary {
        model: cfg.model.clone(),
        mode: cfg.mode.as_str().into(),
        baseline_form: matches!(cfg.mode, Mode::Repvgg | Mode::Dbb)
            .then(|| cfg.baseline_form.as_str().to_string()),
        dataset: ds.spec.clone(),
        epochs: state.epochs_done,
        seed: cfg.seed,
        final_test_acc: last.map_or(0.0, |r| r.test_acc),
        best_test_acc: state.best_test_acc.max(0.0),
        avg_params: epoch_mean(&state.history, |r| r.params as f64),
        avg_macs: epoch_mean(&state.history, |r| r.macs as f64),
        final_params: model.param_count(),
        final_macs: model.macs()?,
        train_seconds: state.train_seconds,
        peak_rss_bytes: crate::alloc::peak_rss_bytes(),
        grows: state.events.iter().filter(|e| e.kind == "grow").count(),
        cuts: state.events.iter().filter(|e| e.kind == "cut").count(),
    };
    if state.epochs_done >= cfg.epochs {
        let text = serde_json::to_string_pretty(&summary)
            .map_err(|e| RuntimeError::Config(e.to_string()))?;
        run.write_atomic("summary.json", &text)?;
        // The chart is a convenience: a failure to draw it is logged, not fatal to the run.
        let curves = opts.out.join("curves.svg");
        if let Err(e) = crate::report::read_run(&opts.out)
            .and_then(|record| crate::report::plot_run(&record, &curves))
        {
            run.log(&format!("warning: no curves.svg: {e}"), echo);
        }
        run.log(
            &format!(
                "done: final test acc {:.4}, best {:.4} (epoch {}), {:.1}s; run directory {}",
                summary.final_test_acc,
                summary.best_test_acc,
                state.best_epoch,
                summary.train_seconds,
                opts.out.display()
            ),
            echo,
        );
    }
    Ok(summary)
}

/// Fails when none of the configured ops applies to any conv of the model.
fn check_ops_apply(model: &Model, cfg: &DyrepConfig) -> Result<()> {
    let specs = cfg.branch_specs()?;
    let any = model.units().iter().any(|u| {
        u.slot
            .growable(cfg.max_depth)
            .iter()
            .any(|info| specs.iter().any(|s| s.check(&info.geom).is_ok()))
    });
    if any {
        return Ok(());
    }
    let names: Vec<&str> = specs.iter().map(|s| s.name()).collect();
    Err(RuntimeError::Config(format!(
        "none of the ops [{}] applies to any growable conv of model `{}`; add ops that fit (e.g. conv1x1_kxk, conv1x1_avg apply everywhere)",
        names.join(", "),
        model.name()
    )))
}

/// Loads a checkpoint's model (train or fused form) and its run config.
pub fn load_checkpoint_model(dir: &Path, device: &Device) -> Result<(Model, RunState)> {
    let loaded = checkpoint::load::<RunState>(dir, device)?;
    let mut rng = SeededRng::new(0);
    let mut ctx = InitCtx::new(&mut rng, device);
    let model = Model::from_arch(&loaded.arch, &mut ctx).map_err(|e| RuntimeError::Checkpoint {
        path: loaded.dir.join("arch.json"),
        reason: e.to_string(),
    })?;
    model
        .load_tensors(&loaded.model)
        .map_err(|e| RuntimeError::Checkpoint {
            path: loaded.dir.join("model.safetensors"),
            reason: e.to_string(),
        })?;
    Ok((model, loaded.state))
}
