//! DyRep in a hand-written candle training loop (docs/LIBRARY.md walks through it). The
//! network (`net.rs`), the data (`data.rs`) and the optimizer (`sgd.rs`) are the user's own;
//! DyRep enters through two calls in `train`: `Dynamics::observe` between the backward and the
//! optimizer step, and `Dynamics::adjust` when `Dynamics::due` says so. At the end every grown
//! block fuses back into one conv and the fused network's logits are checked against the grown
//! one's.

pub mod data;
pub mod net;
pub mod sgd;

use candle_core::{Device, Tensor};
use dyrep_api::equivalence::{compare, Comparison, FUSION_TOLERANCE};
use dyrep_api::{InitCtx, SeededRng};
use dyrep_runtime::dynamics::{AdjustAt, Dynamics, DyrepConfig, Event, Period, RepNet};
use dyrep_runtime::{Result, RuntimeError};

use data::{Calibration, Stripes};
use net::SmallCnn;
use sgd::MomentumSgd;

/// What to train.
#[derive(Clone, Debug)]
pub struct Settings {
    pub epochs: usize,
    pub batch: usize,
    pub train_images: usize,
    pub test_images: usize,
    pub side: usize,
    pub classes: usize,
    pub width: usize,
    pub lr: f64,
    pub seed: u64,
    /// DyRep's settings; `grow_interval` etc. as in a `[dyrep]` table.
    pub dyrep: DyrepConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            epochs: 6,
            batch: 32,
            train_images: 768,
            test_images: 256,
            side: 16,
            classes: 6,
            width: 8,
            lr: 0.05,
            seed: 0,
            dyrep: DyrepConfig {
                // Grow every 32 steps: 5 times in this short run (none in its last sixth).
                grow_interval: Period::Steps(32),
                // Branch importances spread far less in 200 steps than in a real run: the
                // default spread needed before cutting (0.02) would never be reached here.
                cut_min_std: 0.002,
                ..DyrepConfig::default()
            },
        }
    }
}

/// What happened.
pub struct Outcome {
    pub events: Vec<Event>,
    /// Test accuracy of the grown network and of the fused one.
    pub test_acc: f64,
    pub fused_test_acc: f64,
    /// Fused vs grown logits on the test images.
    pub fusion: Comparison,
    pub params_grown: usize,
    pub params_fused: usize,
    pub params_plain: usize,
}

impl Outcome {
    pub fn count(&self, kind: &str) -> usize {
        self.events.iter().filter(|e| e.kind == kind).count()
    }
}

/// Trains, grows and cuts, fuses and checks the fusion; `log` gets a line per epoch and event.
pub fn run(s: &Settings, log: &mut dyn FnMut(String)) -> Result<Outcome> {
    // Links the branch ops and scorers into the binary, so their registries are filled.
    dyrep_runtime::ensure_linked();
    let device = Device::Cpu;
    let mut rng = SeededRng::new(s.seed);
    let mut net = SmallCnn::new(
        s.side,
        s.width,
        s.classes,
        &mut InitCtx::new(&mut rng, &device),
    )?;
    let params_plain = net.param_count();
    let train = Stripes::generate(s.train_images, s.side, s.classes, s.seed);
    let test = Stripes::generate(s.test_images, s.side, s.classes, s.seed + 1);
    let steps_per_epoch = train.len() / s.batch;
    if steps_per_epoch == 0 {
        return Err(RuntimeError::Config(format!(
            "batch {} is larger than the {} training images",
            s.batch,
            train.len()
        )));
    }
    // A few held-out images on which DyRep measures how exactly each change keeps the output.
    let fixed = test
        .batch(&(0..32.min(test.len())).collect::<Vec<_>>(), &device)?
        .0;
    let mut dynamics = Dynamics::new(s.dyrep.clone(), steps_per_epoch, s.epochs, s.seed, fixed)?;
    dynamics.check_applies(&net)?;
    let mut opt = MomentumSgd::new(s.lr, 0.9, 5e-4);
    let mut calib = Calibration {
        data: &train,
        batch: s.batch,
        seed: s.seed,
        device: device.clone(),
    };
    let mut events = Vec::new();
    let mut params = net.tensors();
    let mut step = 0u64;
    for epoch in 0..s.epochs {
        let (mut loss_sum, mut seen) = (0.0, 0);
        for idx in train.shuffled(s.batch, s.seed * 1000 + epoch as u64) {
            let (x, y) = train.batch(&idx, &device)?;
            let logits = net.forward_t(&x, true)?;
            let loss = cross_entropy(&logits, &y)?;
            // Hook 1: the scorer sees the gradients before the optimizer steps on them.
            let grads = dynamics.observe(&net, loss.backward()?, step as usize, (&x, &y))?;
            opt.step(&params, grads.grads())?;
            step += 1;
            loss_sum += loss.to_scalar::<f32>()? as f64 * idx.len() as f64;
            seen += idx.len();
            // Hook 2: grow, cut, and let the optimizer forget what is gone.
            if dynamics.due(step) {
                let at = AdjustAt::mid_epoch(epoch + 1, step);
                let new = dynamics.adjust(&mut net, at, &mut calib, &mut opt)?;
                params = net.tensors();
                for e in &new {
                    log(event_line(e));
                }
                events.extend(new);
            }
        }
        let acc = accuracy(&net, &test, s.batch, &device)?;
        log(format!(
            "epoch {}/{}: train loss {:.4}, test acc {:.4}, {} params, {:.3} M MACs",
            epoch + 1,
            s.epochs,
            loss_sum / seen.max(1) as f64,
            acc,
            net.param_count(),
            net.macs()? as f64 / 1e6
        ));
    }
    let test_acc = accuracy(&net, &test, s.batch, &device)?;
    let params_grown = net.param_count();
    // Fusion: every block becomes one conv with bias; the network is the plain one again.
    let all: Vec<usize> = (0..test.len()).collect();
    let (x, _) = test.batch(&all, &device)?;
    let before = dyrep_api::branchwise(|| net.infer(&x))?;
    for c in &mut net.convs {
        c.slot.fuse()?;
        // The block's bias goes into the BN after it: the plain, bias-free conv again.
        c.slot.fold_bias_into(&c.bn)?;
    }
    let after = net.infer(&x)?;
    let fusion = compare(&before, &after)?;
    Ok(Outcome {
        events,
        test_acc,
        fused_test_acc: accuracy(&net, &test, s.batch, &device)?,
        fusion,
        params_grown,
        params_fused: net.param_count(),
        params_plain,
    })
}

/// Whether the fused logits match the grown network's within dyrep's fusion tolerance.
pub fn fusion_within_tolerance(c: &Comparison) -> bool {
    c.within(&FUSION_TOLERANCE)
}

/// Mean cross-entropy of `logits` [N, K] against `labels` [N] (u32).
fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(1)?.log()?;
    let log_p = shifted.broadcast_sub(&log_sum)?;
    let picked = log_p.gather(&labels.unsqueeze(1)?, 1)?;
    Ok(picked.mean_all()?.neg()?)
}

/// Test accuracy in eval mode.
fn accuracy(net: &SmallCnn, data: &Stripes, batch: usize, device: &Device) -> Result<f64> {
    let mut right = 0;
    let all: Vec<usize> = (0..data.len()).collect();
    for idx in all.chunks(batch) {
        let (x, y) = data.batch(idx, device)?;
        let pred = net.infer(&x)?.argmax(1)?;
        right += pred
            .eq(&y)?
            .to_dtype(candle_core::DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()? as usize;
    }
    Ok(right as f64 / data.len().max(1) as f64)
}

/// A log line for a grow or cut.
pub fn event_line(e: &Event) -> String {
    format!(
        "step {}: {} {} ({}) -> {} params, {:.3} M MACs, output kept to {:.1e}",
        e.step.unwrap_or(0),
        e.kind,
        e.path,
        e.ops.join(", "),
        e.params,
        e.macs as f64 / 1e6,
        e.preserve_rel_err
    )
}
