//! A training run as a small state machine (docs/ARCHITECTURE.md "The life of a training
//! step"): `start` or `resume` opens it, each `epoch` runs its `step`s (with a mid-epoch
//! `adjust` where the growth schedule says so), evaluates, records, adjusts at the epoch's end
//! and writes the `checkpoint`; `finish` writes the summary. The seams later work plugs into:
//! where batches come from (`epoch`'s stream) and what one step does with one batch (`step`).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use dyrep_api::TensorRole;

use super::calibration::TrainCalibration;
use super::run_dir::{recover_replaced, Replaced, RunDir};
use super::{build_for, eval_sums, evaluate, loss_and_acc, RunOptions, TrainProgress};
use crate::checkpoint::{self, CheckpointData};
use crate::config::{BaselineForm, BlockForm, Mode, TrainConfig};
use crate::cpu_time::process_cpu_seconds;
use crate::data::loader::{
    eval_stream_of, make_batch, rank_shard, steps_per_epoch, train_stream_of_rank, Batch, Which,
};
use crate::data::{self, Dataset};
use crate::dist::{self, Comm, SingleProcess};
use crate::dynamics::preserve::{main_conv_weight, mean_angle_deg};
use crate::dynamics::{AdjustAt, Dynamics, DynamicsState, ObservedGrads};
use crate::error::{Result, RuntimeError};
use crate::metrics::{correct, cross_entropy};
use crate::model::Model;
use crate::optim::{CosineSchedule, Sgd};
use crate::run_state::{epoch_mean, total_cpu_seconds, EpochRecord, Movement, RunState, Summary};

/// The size of the fixed held-out batch grow and cut preservation is measured on.
const FIXED_BATCH: usize = 64;

/// A run in progress.
pub struct Trainer {
    cfg: TrainConfig,
    state: RunState,
    model: Model,
    opt: Sgd,
    data: Arc<Dataset>,
    device: Device,
    run: RunDir,
    /// Training steps per epoch.
    steps: usize,
    lr_schedule: CosineSchedule,
    /// DyRep's scorer, schedule and adjustments (dyrep mode only).
    dynamics: Option<Dynamics>,
    /// Where DyRep's grows draw their BN calibration batches.
    calibration: TrainCalibration,
    interrupt: Option<Arc<AtomicBool>>,
    /// How many of the dataset's skipped images `state.bad_images` already counts.
    bad_counted: usize,
    /// The processes of the run (one, or the ranks of a data-parallel run).
    comm: std::rc::Rc<dyn Comm>,
    /// What the optimizer updates; refreshed whenever the architecture changes.
    live: Vec<(String, Var, TensorRole)>,
    /// Batch norm over the global batch while the trainer lives (`sync_bn`; with one process
    /// the same code path, its all-reduce the identity).
    _sync_bn: Option<dyrep_api::SyncBnGuard>,
    /// The run `--force` replaced, kept aside until this run's first checkpoint is committed
    /// (moved back if the trainer is dropped before).
    replaced: Option<Replaced>,
    /// Lines about what was recovered from a killed process, logged once the log is open.
    recovered: Vec<String>,
}

/// Running sums of one epoch's training steps.
struct EpochTally {
    loss_sum: f64,
    right: usize,
    seen: usize,
    lr: f64,
    started: Instant,
    /// This process's processor seconds when the epoch started.
    cpu_started: Option<f64>,
    /// Data-parallel runs: steps taken, seconds in the gradient all-reduces, bytes sent.
    steps: usize,
    comm_seconds: f64,
    comm_bytes: usize,
}

impl EpochTally {
    fn loss(&self) -> f64 {
        self.loss_sum / self.seen.max(1) as f64
    }

    fn acc(&self) -> f64 {
        self.right as f64 / self.seen.max(1) as f64
    }
}

impl Trainer {
    /// A new run in `opts.out` (refused when that directory is not empty, unless `opts.force`).
    /// The data is loaded and the model built before the directory is created, so a config that
    /// cannot start leaves nothing behind.
    pub fn start(
        mut cfg: TrainConfig,
        opts: &RunOptions,
        echo: &mut dyn FnMut(TrainProgress<'_>),
    ) -> Result<Trainer> {
        cfg.validate()?;
        let comm = comm_of(opts);
        check_distributed(&cfg, &opts.device)?;
        let file = cfg.read_model_file()?;
        if let Some(f) = &file {
            cfg.model = f.name.clone();
        }
        let data = Arc::new(load_data(&cfg)?);
        check_augment_fits(&cfg, &data)?;
        let model = build_for(&cfg, file, &data, &opts.device)?;
        model.check_batch_memory(cfg.batch_size, true, "--batch-size")?;
        model.check_batch_memory(cfg.eval_batch_size, false, "eval_batch_size")?;
        dist::broadcast_model(&*comm, &model)?;
        let mut recovered = Vec::new();
        let mut replaced = None;
        if comm.rank() == 0 {
            recovered.extend(recover_replaced(&opts.out)?);
            // Dropped on any error below: the replaced run goes back in place.
            replaced = RunDir::create(&opts.out, opts.force)?;
            // The first file of a run: with it the directory is recognisably a run.
            crate::fs::write_atomic(
                &opts.out.join("config.resolved.toml"),
                cfg.to_toml()?.as_bytes(),
            )?;
            if let Some(path) = &cfg.model_file {
                RunDir::open(&opts.out)?.copy_model_file(path)?;
            }
        }
        let mut state = RunState::new(cfg.clone());
        state.world = comm.size();
        state.data_fingerprint = Some(data.fingerprint());
        let opt = Sgd::new(cfg.sgd.clone());
        let mut trainer = Trainer::open(cfg, state, None, data, model, opt, opts, false, echo)?;
        if replaced.is_some() {
            let line = format!(
                "--force: the previous run in {} is kept aside until this run's first checkpoint",
                opts.out.display()
            );
            trainer.run.log(&line, echo);
        }
        trainer.replaced = replaced;
        trainer.log_recovered(echo);
        Ok(trainer)
    }

    /// The run in `opts.out`, from its last checkpoint.
    pub fn resume(opts: &RunOptions, echo: &mut dyn FnMut(TrainProgress<'_>)) -> Result<Trainer> {
        let mut recovered = Vec::new();
        if comm_of(opts).rank() == 0 {
            recovered = recover_debris(&opts.out)?;
        }
        let ck_dir = opts.out.join("checkpoints");
        let last = ck_dir.join("last");
        if opts.out.is_dir() && checkpoint::resolve(&last).is_err() && !last.exists() {
            return Err(RuntimeError::Config(format!(
                "{} has no checkpoint yet (no epoch finished): nothing to resume; start it again with --force --out {}",
                opts.out.display(),
                opts.out.display()
            )));
        }
        let restored = checkpoint::restore::<SavedState>(&last, &opts.device)?;
        check_resumable(&opts.out, &restored)?;
        let cfg = restored.state.run.config.clone();
        cfg.validate()?;
        let world = comm_of(opts).size();
        if restored.state.run.world != world {
            return Err(RuntimeError::Config(format!(
                "{} was trained by {} process(es); resume it with as many (`mpirun -np {}` for more than one), not {world}",
                opts.out.display(),
                restored.state.run.world,
                restored.state.run.world
            )));
        }
        let data = Arc::new(load_data(&cfg)?);
        if let Some(saved) = &restored.state.run.data_fingerprint {
            let now = data.fingerprint();
            if *saved != now {
                return Err(RuntimeError::Config(format!(
                    "the data `{}` changed since {} started (fingerprint {saved}, now {now}: images replaced, added or removed); a resume on other data would not continue the run: restore the data, or start a new run",
                    cfg.data,
                    opts.out.display()
                )));
            }
        }
        let mut opt = Sgd::new(cfg.sgd.clone());
        if let Some(o) = restored.optim {
            opt.load_state(o);
        }
        let SavedState { run, dynamics } = restored.state;
        let model = restored.model;
        let mut trainer = Trainer::open(cfg, run, dynamics, data, model, opt, opts, true, echo)?;
        trainer.recovered = recovered;
        trainer.log_recovered(echo);
        // The run's other files are derived from the checkpoint: rewrite them, so a kill after a
        // commit and before they were written loses nothing (a finished run is repaired too).
        trainer.write_derived()?;
        Ok(trainer)
    }

    fn log_recovered(&mut self, echo: &mut dyn FnMut(TrainProgress<'_>)) {
        for line in std::mem::take(&mut self.recovered) {
            self.run.log(&line, echo);
        }
    }

    /// What `start` and `resume` share: checks, the fixed batch, the run directory's log and
    /// the schedules.
    #[allow(clippy::too_many_arguments)]
    fn open(
        cfg: TrainConfig,
        state: RunState,
        dynamics_state: Option<DynamicsState>,
        data: Arc<Dataset>,
        model: Model,
        opt: Sgd,
        opts: &RunOptions,
        resumed: bool,
        echo: &mut dyn FnMut(TrainProgress<'_>),
    ) -> Result<Trainer> {
        let device = opts.device.clone();
        let fixed = {
            let n = FIXED_BATCH.min(data.test.len());
            let indices: Vec<usize> = (0..n).collect();
            make_batch(&data, Which::Test, &indices, None)?
                .to_tensors(&data, &device)?
                .0
        };
        let comm = comm_of(opts);
        let run = match comm.rank() {
            0 => RunDir::open(&opts.out)?,
            _ => RunDir::silent(&opts.out),
        };
        let world = match cfg.dist_same_data {
            true => 1,
            false => comm.size(),
        };
        let steps = steps_per_epoch(&data, cfg.batch_size, cfg.train_limit, world);
        let dynamics = match cfg.mode {
            Mode::Dyrep => {
                let d = Dynamics::new(
                    cfg.dyrep.clone(),
                    steps,
                    cfg.epochs,
                    cfg.seed,
                    fixed.clone(),
                )?
                .with_comm(comm.clone());
                let d = match dynamics_state {
                    Some(saved) => d.with_state(saved)?,
                    None => d,
                };
                if state.epochs_done == 0 {
                    d.check_applies(&model)?;
                }
                Some(d)
            }
            _ => None,
        };
        let calibration = TrainCalibration {
            ds: data.clone(),
            batch_size: cfg.batch_size,
            seed: cfg.seed,
            augment: cfg.augment.clone(),
            train_limit: cfg.train_limit,
            device: device.clone(),
        };
        let lr_schedule = CosineSchedule {
            lr: cfg.lr,
            min_lr: cfg.min_lr,
            warmup_epochs: cfg.warmup_epochs,
            warmup_lr: cfg.warmup_lr,
            warmup_per_step: cfg.warmup_per_step,
        };
        let cfg_sync = cfg.sync_bn;
        let mut trainer = Trainer {
            cfg,
            state,
            model,
            opt,
            data,
            device,
            run,
            steps,
            lr_schedule,
            dynamics,
            calibration,
            interrupt: opts.interrupt.clone(),
            bad_counted: 0,
            _sync_bn: cfg_sync.then(|| dist::install_sync_bn(comm.clone())),
            comm,
            live: Vec::new(),
            replaced: None,
            recovered: Vec::new(),
        };
        let opening = trainer.opening_line(resumed)?;
        trainer.run.log(&opening, echo);
        Ok(trainer)
    }

    fn opening_line(&self, resumed: bool) -> Result<String> {
        let cfg = &self.cfg;
        let line = self.run_line(resumed)?;
        Ok(match cfg.block_form {
            BlockForm::Bn => line,
            BlockForm::Online => format!(
                "{line}\nblock form online: every block trains as one conv with the kernel \
                 assembled from its branches (a scale per branch, no batch statistics inside a \
                 block); grows and cuts keep the training output exactly, so no BN calibration"
            ),
        })
    }

    fn run_line(&self, resumed: bool) -> Result<String> {
        let (cfg, ds) = (&self.cfg, &self.data);
        Ok(format!(
            "{} model {} mode {}{} on {} ({} train / {} test, {}x{}x{}, {} classes): {} params, {:.2} M MACs, {} blocks; epochs {}..{}",
            if resumed { "resume" } else { "train" },
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
            self.model.param_count(),
            self.model.macs()? as f64 / 1e6,
            self.model.block_count(),
            self.state.epochs_done + 1,
            cfg.epochs
        ))
    }

    /// True once every epoch of the config has run.
    pub fn finished(&self) -> bool {
        self.state.epochs_done >= self.cfg.epochs
    }

    /// A line of the run's log.
    pub fn log(&mut self, line: &str, echo: &mut dyn FnMut(TrainProgress<'_>)) {
        self.run.log(line, echo);
    }

    /// One epoch: its training steps (with mid-epoch adjustments), the evaluation, the record,
    /// the end-of-epoch adjustment and the checkpoint.
    pub fn epoch(&mut self, echo: &mut dyn FnMut(TrainProgress<'_>)) -> Result<()> {
        let epoch = self.state.epochs_done;
        self.refresh_live();
        let mut tally = EpochTally {
            loss_sum: 0.0,
            right: 0,
            seen: 0,
            lr: self.lr_at(epoch),
            started: Instant::now(),
            cpu_started: process_cpu_seconds(),
            steps: 0,
            comm_seconds: 0.0,
            comm_bytes: 0,
        };
        echo(TrainProgress::EpochStart {
            epoch: epoch + 1,
            epochs: self.cfg.epochs,
            steps: self.steps,
        });
        let start_weights = self.main_conv_weights()?;
        let batches = train_stream_of_rank(
            self.data.clone(),
            self.cfg.batch_size,
            self.cfg.seed,
            epoch,
            &self.cfg.augment,
            self.cfg.train_limit,
            self.data_shard(),
        );
        for (step, batch) in batches.enumerate() {
            self.check_interrupt(epoch)?;
            let batch = batch?;
            if batch.is_empty() {
                // Every image of it was skipped as undecodable (`skip_bad_images`).
                continue;
            }
            self.step(epoch, &batch, &mut tally)?;
            // A grow in the middle of the epoch (one at its end follows the evaluation).
            if step + 1 < self.steps && self.grows_now() {
                let at = AdjustAt::mid_epoch(epoch + 1, self.state.global_step as u64);
                self.adjust(at, echo)?;
                self.refresh_live();
            }
            echo(TrainProgress::Step {
                step: step + 1,
                loss: tally.loss(),
                acc: tally.acc(),
                images_per_sec: tally.seen as f64 / tally.started.elapsed().as_secs_f64().max(1e-9),
            });
        }
        echo(TrainProgress::EpochTrained);
        self.record_movement(epoch + 1, &start_weights)?;
        self.reduce_tally(&mut tally)?;
        dist::average_running_stats(&*self.comm, &self.model)?;
        let record = self.evaluate_epoch(epoch, &tally)?;
        self.run
            .log(&epoch_line(&record, self.cfg.epochs, tally.seen), echo);
        let improved = self.state.record_epoch(record);
        let skipped = self.data.bad_images();
        self.state.bad_images += skipped - self.bad_counted;
        self.bad_counted = skipped;
        if self.grows_now() {
            self.adjust(AdjustAt::epoch_end(epoch + 1), echo)?;
        }
        if self.comm.size() > 1 {
            let sum = dist::check_same_weights(&*self.comm, &self.model)?;
            let steps = tally.steps.max(1) as f64;
            self.run.detail(&format!(
                "epoch {}: every rank's weights equal rank 0's (checksum {sum:016x}); per step {:.1} KB all-reduced in {:.2} ms",
                epoch + 1,
                tally.comm_bytes as f64 / steps / 1e3,
                tally.comm_seconds / steps * 1e3
            ));
        }
        self.checkpoint(improved)
    }

    /// One training step on one batch: forward, loss, backward (the scorer observes the
    /// gradients), optimizer update.
    fn step(&mut self, epoch: usize, batch: &Batch, tally: &mut EpochTally) -> Result<()> {
        tally.lr = self.lr_at(epoch);
        let (x, y) = batch.to_tensors(&self.data, &self.device)?;
        let logits = self.model.forward_t(&x, true)?;
        let loss = cross_entropy(&logits, &y, self.cfg.label_smoothing)?;
        let lv = loss.to_scalar::<f32>()? as f64;
        if !lv.is_finite() {
            return Err(self.non_finite_loss(lv, epoch, &x, tally.lr));
        }
        // Averaged over the ranks before the scorer sees them (as the reference's scores are
        // taken after DDP's averaging), so every rank scores, grows and cuts alike.
        let mut raw = loss.backward()?;
        let t = Instant::now();
        tally.comm_bytes += dist::average_grads(&*self.comm, &self.live, &mut raw)?;
        tally.comm_seconds += t.elapsed().as_secs_f64();
        tally.steps += 1;
        let grads = match self.dynamics.as_mut() {
            Some(d) => d.observe(&self.model, raw, self.state.global_step, (&x, &y))?,
            None => ObservedGrads::unobserved(raw),
        };
        self.opt.step(tally.lr, &self.live, &grads)?;
        tally.loss_sum += lv * batch.len() as f64;
        tally.right += correct(&logits.detach(), &y)?;
        tally.seen += batch.len();
        self.state.global_step += 1;
        Ok(())
    }

    /// One Rep + Dep adjustment (`Dynamics::adjust`): grow, reset the scores, cut; log and
    /// record every event, then make every rank's model rank 0's.
    fn adjust(&mut self, at: AdjustAt, echo: &mut dyn FnMut(TrainProgress<'_>)) -> Result<()> {
        let Some(dynamics) = self.dynamics.as_mut() else {
            return Ok(());
        };
        let events = dynamics.adjust(&mut self.model, at, &mut self.calibration, &mut self.opt)?;
        for e in &events {
            self.run.log(&super::event_line(e), echo);
        }
        self.state.events.extend(events);
        // Every rank took the same decisions from the same averaged scores, weights and
        // calibration batches; check it, then make the values rank 0's exactly.
        dist::check_same_arch(&*self.comm, &self.model)?;
        dist::broadcast_model(&*self.comm, &self.model)?;
        Ok(())
    }

    /// Why the loss is not finite: non-finite weights (damaged before this step, or not finite
    /// from the start), non-finite inputs, or — with both finite — a step too large.
    fn non_finite_loss(&self, lv: f64, epoch: usize, x: &Tensor, lr: f64) -> RuntimeError {
        let at = format!("epoch {} step {}", epoch + 1, self.state.global_step);
        let finite = |t: &Tensor| {
            t.flatten_all()
                .and_then(|t| t.to_dtype(candle_core::DType::F32))
                .and_then(|t| t.to_vec1::<f32>())
                .is_ok_and(|v| v.iter().all(|x| x.is_finite()))
        };
        if let Some((path, _, _)) = self.live.iter().find(|(_, v, _)| !finite(v.as_tensor())) {
            let when = match self.state.global_step {
                0 => "before the first step (the initial or loaded weights)",
                _ => "after the previous step (a step too large: lower --lr)",
            };
            return RuntimeError::Training(format!(
                "loss became {lv} at {at}: the weight `{path}` holds NaN or infinite values {when}"
            ));
        }
        if !finite(x) {
            return RuntimeError::Training(format!(
                "loss became {lv} at {at}: the input batch holds NaN or infinite values; check the data"
            ));
        }
        RuntimeError::Training(format!(
            "loss became {lv} at {at} with finite weights and inputs; lower --lr (now {lr:.3e})"
        ))
    }

    /// Writes `checkpoints/last` (and `best` when this epoch improved on it), `metrics.csv`
    /// and `events.jsonl`.
    fn checkpoint(&mut self, improved: bool) -> Result<()> {
        if !self.run.writes() {
            return Ok(());
        }
        let ck_dir = self.run.checkpoints();
        let arch = self.model.arch();
        let data = CheckpointData {
            arch: &arch,
            model: self.model.tensor_map()?,
            optim: Some(self.opt.state()),
            state: &SavedRef {
                run: &self.state,
                dynamics: self.dynamics.as_ref().map(Dynamics::state),
            },
        };
        checkpoint::save(&ck_dir.join("last"), &data)?;
        if improved {
            checkpoint::save(&ck_dir.join("best"), &data)?;
        }
        self.run.detail(&format!(
            "checkpoint written: {}{}",
            ck_dir.join("last").display(),
            if improved { " (and best)" } else { "" }
        ));
        if let Some(replaced) = self.replaced.take() {
            let aside = replaced.commit()?;
            self.run
                .detail(&format!("removed the replaced run ({})", aside.display()));
        }
        self.write_derived()
    }

    /// Each unit's conv weight (its block's main conv once grown), by the unit's conv path.
    fn main_conv_weights(&mut self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for u in self.model.units() {
            out.push((u.conv_path.clone(), main_conv_weight(&u.slot)?));
        }
        Ok(out)
    }

    /// How far each unit's conv turned since `start` (the epoch's first step).
    fn record_movement(&mut self, epoch: usize, start: &[(String, Tensor)]) -> Result<()> {
        let now = self.main_conv_weights()?;
        let grown: BTreeSet<String> = self
            .model
            .units()
            .iter()
            .filter(|u| u.slot.as_block().is_some())
            .map(|u| u.conv_path.clone())
            .collect();
        for ((path, a), (_, b)) in start.iter().zip(&now) {
            self.state.movement.push(Movement {
                epoch,
                path: path.clone(),
                grown: grown.contains(path),
                angle_deg: mean_angle_deg(a, b)?,
            });
        }
        Ok(())
    }

    /// `metrics.csv`, `movement.csv` and `events.jsonl`, from the state the last checkpoint
    /// committed.
    fn write_derived(&self) -> Result<()> {
        if !self.run.writes() {
            return Ok(());
        }
        self.run.write_metrics(&self.state.history)?;
        self.run.write_movement(&self.state.movement)?;
        if self.dynamics.is_some() {
            self.run.write_events(&self.state.events)?;
        }
        Ok(())
    }

    /// The run's summary; once every epoch has run, also `summary.json`, `curves.svg` and the
    /// closing line.
    pub fn finish(mut self, echo: &mut dyn FnMut(TrainProgress<'_>)) -> Result<Summary> {
        let (cfg, state) = (&self.cfg, &self.state);
        let summary = Summary {
            model: cfg.model.clone(),
            mode: cfg.mode.as_str().into(),
            baseline_form: matches!(cfg.mode, Mode::Repvgg | Mode::Dbb)
                .then(|| cfg.baseline_form.as_str().to_string()),
            baseline_init: (matches!(cfg.mode, Mode::Repvgg | Mode::Dbb)
                && cfg.baseline_form == BaselineForm::Reference)
                .then(|| cfg.baseline_init.as_str().to_string()),
            block_form: (cfg.mode != Mode::Origin).then(|| cfg.block_form.as_str().to_string()),
            dataset: self.data.spec.clone(),
            epochs: state.epochs_done,
            seed: cfg.seed,
            final_test_acc: state.history.last().map_or(0.0, |r| r.test_acc),
            best_test_acc: state.best_test_acc.max(0.0),
            avg_params: epoch_mean(&state.history, |r| r.params as f64),
            avg_macs: epoch_mean(&state.history, |r| r.macs as f64),
            final_params: self.model.param_count(),
            final_macs: self.model.macs()?,
            train_seconds: state.train_seconds,
            train_cpu_seconds: total_cpu_seconds(&state.history),
            peak_rss_bytes: crate::alloc::peak_rss_bytes(),
            grows: state.count_events("grow"),
            cuts: state.count_events("cut"),
            bad_images: state.bad_images,
        };
        if self.finished() {
            self.run.write_summary(&summary, echo)?;
            let cpu = summary
                .train_cpu_seconds
                .map_or(String::new(), |c| format!(" ({c:.1}s of processor time)"));
            let line = format!(
                "done: final test acc {:.4}, best {:.4} (epoch {}), {:.1}s{cpu}; run directory {}",
                summary.final_test_acc,
                summary.best_test_acc,
                self.state.best_epoch,
                summary.train_seconds,
                self.run.path().display()
            );
            self.run.log(&line, echo);
        }
        Ok(summary)
    }

    fn lr_at(&self, epoch: usize) -> f64 {
        self.lr_schedule
            .lr_at(epoch, self.state.global_step, self.steps, self.cfg.epochs)
    }

    /// Whether DyRep adjusts after the step just taken.
    fn grows_now(&self) -> bool {
        self.dynamics
            .as_ref()
            .is_some_and(|d| d.due(self.state.global_step as u64))
    }

    /// Re-reads the parameters after the architecture changed (the optimizer's state was
    /// updated by the adjustment itself).
    fn refresh_live(&mut self) {
        self.live = self.model.tensors();
    }

    /// Stops before the next step when the interrupt flag is set; the last checkpoint stays.
    fn check_interrupt(&mut self, epoch: usize) -> Result<()> {
        if !self
            .interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst))
        {
            return Ok(());
        }
        let msg = match self.state.epochs_done {
            0 => format!(
                "interrupted in epoch {} before the first checkpoint: nothing to resume; start again (--force --out {} replaces this run)",
                epoch + 1,
                self.run.path().display()
            ),
            done => format!(
                "interrupted in epoch {}; the checkpoint after epoch {done} is intact: continue with --resume {}",
                epoch + 1,
                self.run.path().display()
            ),
        };
        // The caller prints the error once; the run's log keeps it too.
        self.run.detail(&msg);
        Err(RuntimeError::Interrupted(msg))
    }

    /// This rank's share of the data: `(rank, world)`; `(0, 1)` for one process or when every
    /// rank reads everything (`dist_same_data`).
    fn data_shard(&self) -> (usize, usize) {
        match self.cfg.dist_same_data {
            true => (0, 1),
            false => (self.comm.rank(), self.comm.size()),
        }
    }

    /// A data-parallel epoch's training sums over every rank's shard.
    fn reduce_tally(&self, tally: &mut EpochTally) -> Result<()> {
        if self.data_shard().1 == 1 {
            return Ok(());
        }
        let mut sums = [tally.loss_sum, tally.right as f64, tally.seen as f64];
        dist::sum_over_ranks(&*self.comm, &mut sums)?;
        (tally.loss_sum, tally.right, tally.seen) = (sums[0], sums[1] as usize, sums[2] as usize);
        Ok(())
    }

    /// Test loss and accuracy: each rank evaluates its shard of the test examples and the sums
    /// are reduced (one process: [`evaluate`]).
    fn evaluate_test(&self) -> Result<(f64, f64)> {
        let (rank, world) = self.data_shard();
        if world == 1 {
            return evaluate(
                &self.model,
                &self.data,
                Which::Test,
                self.cfg.eval_batch_size,
                self.cfg.test_limit,
                &self.device,
            );
        }
        let n = self
            .cfg
            .test_limit
            .unwrap_or(usize::MAX)
            .min(self.data.test.len());
        let mine = rank_shard(&(0..n).collect::<Vec<_>>(), rank, world);
        let batches = eval_stream_of(
            self.data.clone(),
            Which::Test,
            self.cfg.eval_batch_size,
            mine,
        );
        let mut sums = eval_sums(&self.model, &self.data, batches, &self.device)?;
        dist::sum_over_ranks(&*self.comm, &mut sums)?;
        Ok(loss_and_acc(sums))
    }

    /// Evaluates on the test split and forms the epoch's record.
    fn evaluate_epoch(&self, epoch: usize, tally: &EpochTally) -> Result<EpochRecord> {
        let (test_loss, test_acc) = self.evaluate_test()?;
        Ok(EpochRecord {
            epoch: epoch + 1,
            train_loss: tally.loss(),
            train_acc: tally.acc(),
            test_loss,
            test_acc,
            lr: tally.lr,
            params: self.model.param_count(),
            macs: self.model.macs()?,
            branches: self.model.branch_count(),
            seconds: tally.started.elapsed().as_secs_f64(),
            cpu_seconds: tally
                .cpu_started
                .zip(process_cpu_seconds())
                .map(|(start, now)| now - start),
        })
    }
}

/// The communicator of a run (one process unless the options carry one).
/// Refuses augmentation settings the data ignores (the ImageNet transforms on data held in
/// memory) or that exceed the images (a crop padding or cutout larger than the image).
fn check_augment_fits(cfg: &TrainConfig, data: &Dataset) -> Result<()> {
    if cfg.augment.imagenet.is_some() && data.stream.is_none() {
        return Err(RuntimeError::Config(format!(
            "--image-size / [augment.imagenet] apply to image folders and shards, and `{}` is held in memory at {}x{}: the setting would be recorded but ignored; remove it",
            cfg.data, data.height, data.width
        )));
    }
    let side = data.height.max(data.width);
    for (key, v) in [
        ("crop_padding", cfg.augment.crop_padding),
        ("cutout", cfg.augment.cutout),
    ] {
        if v > side {
            return Err(RuntimeError::Config(format!(
                "augment.{key} = {v} is larger than the {}x{} images; use at most {side} (0 turns it off)",
                data.height, data.width
            )));
        }
    }
    Ok(())
}

/// Cleans what a killed process left in a run directory (half-written temporaries, a checkpoint
/// moved aside between two renames, a run a killed `--force` start replaced); returns lines for
/// the log.
fn recover_debris(out: &std::path::Path) -> Result<Vec<String>> {
    let mut lines: Vec<String> = recover_replaced(out)?.into_iter().collect();
    let ck = checkpoint::recover(&out.join("checkpoints"));
    for name in &ck.restored {
        lines.push(format!(
            "recovered checkpoints/{name} (a killed process had moved it aside mid-write)"
        ));
    }
    let mut removed = ck.removed;
    removed.extend(crate::fs::remove_stale_temps(out));
    if !removed.is_empty() {
        lines.push(format!(
            "removed what a killed process left: {}",
            removed.join(", ")
        ));
    }
    Ok(lines)
}

/// Refuses a resume that would not continue the run as it was: a checkpoint without its
/// optimizer state (momentum would restart from zero), one of another run (its config differs
/// from the run's `config.resolved.toml`), or a `config.resolved.toml` edited by hand (the
/// resume uses the checkpoint's copy and would silently ignore the edit).
fn check_resumable(
    out: &std::path::Path,
    restored: &checkpoint::Restored<SavedState>,
) -> Result<()> {
    if restored.optim.is_none() {
        return Err(RuntimeError::Checkpoint {
            path: restored.dir.join("optim.safetensors"),
            reason: "is missing: without it momentum restarts from zero and the resume is not exact; restore it from a copy, or start a new run with --init-from an export of this one".into(),
        });
    }
    let resolved = out.join("config.resolved.toml");
    if !resolved.is_file() {
        return Ok(());
    }
    // Compared as configs, so a file written before a setting existed still matches.
    let on_disk = TrainConfig::from_toml_file(&resolved)?.to_toml()?;
    if on_disk != restored.state.run.config.to_toml()? {
        return Err(RuntimeError::Config(format!(
            "{} differs from the config in {} (edited by hand, or a checkpoint of another run copied in); --resume continues the run exactly as it started: undo the edit, or start a new run with the changed config",
            resolved.display(),
            restored.dir.join("state.json").display()
        )));
    }
    Ok(())
}

fn comm_of(opts: &RunOptions) -> std::rc::Rc<dyn Comm> {
    opts.comm
        .clone()
        .unwrap_or_else(|| std::rc::Rc::new(SingleProcess))
}

/// What a data-parallel run does not do yet, refused before anything is written.
fn check_distributed(cfg: &TrainConfig, device: &Device) -> Result<()> {
    if cfg.sync_bn && !device.is_cpu() {
        return Err(RuntimeError::Config(
            "--sync-bn runs its collectives on the CPU over MPI and is not built for GPUs yet; train without it (per-rank batch statistics, the reference's default)".into(),
        ));
    }
    Ok(())
}

/// The run's data with its limits; refused when the training part lacks a class or holds less
/// than one batch.
fn load_data(cfg: &TrainConfig) -> Result<Dataset> {
    let ds = data::load_with(&cfg.data, &cfg.load_options())?;
    if cfg.train_limit.is_some() && ds.stream.as_ref().is_some_and(|s| s.shards.is_some()) {
        return Err(RuntimeError::Config(
            "--train-limit does not apply to tar shards (they are read whole, in sequence); pack a smaller image folder instead".into(),
        ));
    }
    let ds = ds.limited(cfg.train_limit, cfg.test_limit);
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
    if steps_per_epoch(&ds, cfg.batch_size, cfg.train_limit, 1) == 0 {
        return Err(RuntimeError::Config(format!(
            "batch_size {} is larger than the {} training examples",
            cfg.batch_size,
            cfg.train_limit.unwrap_or(usize::MAX).min(ds.train.len())
        )));
    }
    Ok(ds)
}

/// The log line of a finished epoch.
fn epoch_line(r: &EpochRecord, epochs: usize, seen: usize) -> String {
    format!(
        "epoch {}/{}  train loss {:.4} acc {:.4}  test loss {:.4} acc {:.4}  lr {:.2e}  {:.1}s ({:.0} img/s)",
        r.epoch,
        epochs,
        r.train_loss,
        r.train_acc,
        r.test_loss,
        r.test_acc,
        r.lr,
        r.seconds,
        seen as f64 / r.seconds.max(1e-9)
    )
}

/// What a checkpoint's `state.json` holds: the run's progress and, in dyrep mode, DyRep's state
/// (its scorer, under the key `scorer`, where runs saved before `Dynamics` existed keep it too).
#[derive(serde::Serialize)]
struct SavedRef<'a> {
    #[serde(flatten)]
    run: &'a RunState,
    #[serde(rename = "scorer", skip_serializing_if = "Option::is_none")]
    dynamics: Option<&'a DynamicsState>,
}

/// [`SavedRef`], read back for a resume.
#[derive(serde::Deserialize)]
struct SavedState {
    #[serde(flatten)]
    run: RunState,
    #[serde(rename = "scorer", default)]
    dynamics: Option<DynamicsState>,
}
