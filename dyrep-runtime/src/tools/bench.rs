//! `dyrep bench`: training-step and eval throughput of a model on random data (own RNG), with
//! the useful GFLOP/s (2 × conv+linear MACs per image forward, 3× that for a training step) and
//! the peak resident memory (docs/ARCHITECTURE.md "CLI contract").

use std::time::Instant;

use candle_core::{Device, Tensor};
use dyrep_api::{InitCtx, SeededRng};
use rand::Rng;
use serde::Serialize;

use crate::alloc::peak_rss_bytes;
use crate::error::{Result, RuntimeError};
use crate::metrics::cross_entropy;
use crate::model::{apply_mode, Baseline, BlockStart, Mode};
use crate::model::{build_model, find_model, ModelConfig};
use crate::optim::{Sgd, SgdConfig};

/// One benchmark result.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub mode: String,
    pub what: String,
    pub input: [usize; 3],
    /// Channel width multiplier.
    pub width: f64,
    pub batch: usize,
    pub iters: usize,
    pub seconds: f64,
    pub images_per_sec: f64,
    pub gflops: f64,
    pub macs_per_image: u64,
    pub peak_rss_bytes: u64,
    /// `own` (dyrep-kernels) or `candle` (its ops: another device, or `DYREP_KERNELS=candle`).
    pub kernels: String,
    /// The instruction-set tier of the own SIMD kernels (`avx512`, `avx2` or `scalar`: the
    /// CPU's best, capped by `DYREP_ISA`); meaningless with candle's kernels.
    pub isa: String,
    /// The tier the direct conv kernel runs on, `none` where every conv is lowered to im2col +
    /// gemm (`DYREP_CONV_DIRECT=0`, or a tier without a direct kernel).
    pub direct_conv: String,
    /// Threads of the compute pool.
    pub threads: usize,
    /// Milliseconds per iteration in the forward pass (with the loss), the backward pass and
    /// the optimizer step (0 for eval).
    pub forward_ms: f64,
    pub backward_ms: f64,
    pub optimizer_ms: f64,
    /// Milliseconds per iteration inside each own CPU kernel (empty with candle's ops).
    pub kernel_ms: std::collections::BTreeMap<String, f64>,
    /// Each conv geometry's time and GFLOP/s in the own CPU kernels (empty with candle's ops),
    /// largest input planes first, then by channels.
    pub convs: Vec<ConvTime>,
}

/// The time of one conv geometry in a benchmark iteration (all convs of that geometry in the
/// model together).
#[derive(Clone, Debug, Serialize)]
pub struct ConvTime {
    /// `c→out k×k s1 h×w` (`shared N` where N branch convs of a grown block share a patch
    /// matrix and are timed together).
    pub conv: String,
    /// Calls per iteration (forward passes).
    pub calls: f64,
    /// Milliseconds per iteration: forward, input gradient, weight gradient.
    pub forward_ms: f64,
    pub input_grad_ms: f64,
    pub weight_grad_ms: f64,
    /// Useful GFLOP/s over its passes (2 × MACs per pass).
    pub gflops: f64,
}

impl ConvTime {
    fn from_profile(
        key: &dyrep_api::kernels::profile::ConvKey,
        t: &dyrep_api::kernels::profile::ConvTimes,
        iters: usize,
    ) -> ConvTime {
        let per_iter = |x: f64| x / iters as f64;
        let seconds: f64 = t.seconds.iter().sum();
        let macs: u64 = t.macs.iter().sum();
        let mut conv = format!(
            "{}→{} {}×{} s{} {}×{}",
            key.c, key.out, key.kh, key.kw, key.stride, key.h, key.w
        );
        if key.groups > 1 {
            conv += &format!(" g{}", key.groups);
        }
        if key.shared > 0 {
            conv += &format!(" shared {}", key.shared);
        }
        ConvTime {
            conv,
            calls: per_iter(t.calls[0] as f64),
            forward_ms: per_iter(t.seconds[0] * 1e3),
            input_grad_ms: per_iter(t.seconds[1] * 1e3),
            weight_grad_ms: per_iter(t.seconds[2] * 1e3),
            gflops: if seconds > 0.0 {
                2.0 * macs as f64 / seconds / 1e9
            } else {
                0.0
            },
        }
    }
}

/// The default benchmark batch of a model: the peer benchmark's 128 for `bench-small`, 64 else.
pub fn default_batch(model: &str) -> usize {
    if model == "bench-small" {
        128
    } else {
        64
    }
}

/// What `dyrep bench` measures.
#[derive(Clone, Debug)]
pub struct BenchSpec {
    pub model: String,
    /// `origin`, `repvgg` or `dbb` (the latter two in their reference form).
    pub mode: Mode,
    /// Grow every k×k conv (k > 1) into a block with these ops first (`["all"]`: every
    /// registered op that applies), as DyRep's grown blocks: the cost of multi-branch training.
    pub grow_ops: Option<Vec<String>>,
    /// The blocks' form (`repvgg`, `dbb`, `grow_ops`): the paper's per-branch BNs or online.
    pub block_form: dyrep_api::BlockForm,
    /// Input `[C, H, W]` (default: the model's).
    pub input: Option<[usize; 3]>,
    /// Channel width multiplier.
    pub width: f64,
    pub batch: usize,
    pub iters: usize,
    /// Training steps (else eval forwards).
    pub train: bool,
}

impl BenchSpec {
    /// The plain model at its default input and width 1 with the model's default batch.
    pub fn new(model: &str, mode: Mode, train: bool) -> Self {
        BenchSpec {
            model: model.into(),
            mode,
            grow_ops: None,
            block_form: dyrep_api::BlockForm::Bn,
            input: None,
            width: 1.0,
            batch: default_batch(model),
            iters: 10,
            train,
        }
    }
}

/// Times `iters` training steps (`train`) or eval forwards after one warm-up iteration.
pub fn bench(spec: &BenchSpec, device: &Device) -> Result<BenchReport> {
    spec.validate()?;
    let (batch, iters, train) = (spec.batch, spec.iters, spec.train);
    let input = match spec.input {
        Some(i) => i,
        None => find_model(&spec.model)?.default_input,
    };
    let mut rng = SeededRng::for_purpose(0, "bench");
    let (m, mode_name) = bench_model(spec, input, &mut rng, device)?;
    m.check_batch_memory(batch, train, "--batch")?;
    let [c, h, w] = input;
    let x = dyrep_api::init::normal_tensor(&mut rng, &[batch, c, h, w], 0.0, 1.0, device)?;
    let labels: Vec<u32> = (0..batch).map(|_| rng.random_range(0..10u32)).collect();
    let y = Tensor::from_vec(labels, batch, device)?;
    let (seconds, split) = time_steps(&m, &x, &y, train, iters)?;
    let images = (batch * iters) as f64;
    let macs = m.macs()?;
    let flops_per_image = 2.0 * macs as f64 * if train { 3.0 } else { 1.0 };
    Ok(BenchReport {
        model: spec.model.clone(),
        mode: mode_name,
        width: spec.width,
        what: if train { "train" } else { "eval" }.into(),
        input,
        batch,
        iters,
        seconds,
        images_per_sec: images / seconds,
        gflops: flops_per_image * images / seconds / 1e9,
        macs_per_image: macs,
        peak_rss_bytes: peak_rss_bytes(),
        kernels: match dyrep_api::kernels::Backend::for_tensor(&x) {
            dyrep_api::kernels::Backend::Own => "own",
            dyrep_api::kernels::Backend::Candle => "candle",
        }
        .into(),
        isa: dyrep_api::kernels::isa::active().name().into(),
        direct_conv: dyrep_api::kernels::direct_conv_tier()
            .map_or("none", |t| t.name())
            .into(),
        threads: dyrep_api::kernels::compute_threads(),
        forward_ms: split[0] * 1e3 / iters as f64,
        backward_ms: split[1] * 1e3 / iters as f64,
        optimizer_ms: split[2] * 1e3 / iters as f64,
        kernel_ms: dyrep_api::kernels::profile::totals()
            .into_iter()
            .filter(|(_, s)| *s > 0.0)
            .map(|(p, s)| (p.name().to_string(), s * 1e3 / iters as f64))
            .collect(),
        convs: conv_times(iters),
    })
}

impl BenchSpec {
    fn validate(&self) -> Result<()> {
        let width = self.width;
        if !(width > 0.0 && width <= crate::config::MAX_WIDTH) {
            return Err(RuntimeError::Config(format!(
                "bench --width {width}: the width multiplier must be in (0, {}]",
                crate::config::MAX_WIDTH
            )));
        }
        if self.batch < 2 || self.iters == 0 {
            return Err(RuntimeError::Config(
                "bench needs --batch >= 2 and --iters >= 1".into(),
            ));
        }
        Ok(())
    }
}

/// The benchmarked model: built at `input`, in the spec's mode, with every k×k conv grown with
/// `grow_ops` when given; and the mode's name for the report (`origin+conv1x1,...`).
fn bench_model(
    spec: &BenchSpec,
    input: [usize; 3],
    rng: &mut SeededRng,
    device: &Device,
) -> Result<(crate::model::Model, String)> {
    let mut ctx = InitCtx::new(rng, device);
    ctx.block_form = spec.block_form;
    let cfg = ModelConfig::named(spec.model.as_str(), input, 10, spec.width);
    let mut m = build_model(&cfg, &mut ctx)?;
    m.block_form = spec.block_form;
    apply_mode(&mut m, spec.mode, Baseline::default(), &mut ctx)?;
    let mut mode_name = spec.mode.as_str().to_string();
    if let Some(names) = spec.grow_ops.as_deref() {
        let names: Vec<String> = if names.iter().any(|n| n == "all") {
            dyrep_api::ops()
                .iter()
                .map(|e| e.name.to_string())
                .filter(|n| n != dyrep_ops::MAIN_OP)
                .collect()
        } else {
            names.to_vec()
        };
        let specs = names
            .iter()
            .map(|n| dyrep_api::op_spec(n))
            .collect::<dyrep_api::Result<Vec<_>>>()?;
        m.grow_all(
            &*dyrep_ops::main_spec(),
            &specs,
            &|g| g.k > 1,
            BlockStart::EqualToConv,
            &mut ctx,
        )?;
        mode_name = format!("{mode_name}+{}", names.join(","));
    }
    if spec.block_form == dyrep_api::BlockForm::Online && m.block_count() > 0 {
        mode_name.push_str(" (online)");
    }
    Ok((m, mode_name))
}

/// The per-conv profile of the timed iterations, largest planes first, then by channels.
fn conv_times(iters: usize) -> Vec<ConvTime> {
    let mut by_conv = dyrep_api::kernels::profile::per_conv();
    by_conv.sort_by_key(|(k, _)| {
        (
            std::cmp::Reverse(k.h * k.w),
            k.c,
            k.out,
            std::cmp::Reverse(k.kh * k.kw),
            k.shared,
        )
    });
    by_conv
        .iter()
        .map(|(k, t)| ConvTime::from_profile(k, t, iters))
        .collect()
}

/// One warm-up step, then `iters` timed ones: the total seconds and the seconds spent in
/// forward (with the loss), backward and the optimizer step (`train`), or in the eval forward.
fn time_steps(
    m: &crate::model::Model,
    x: &Tensor,
    y: &Tensor,
    train: bool,
    iters: usize,
) -> Result<(f64, [f64; 3])> {
    let params = m.tensors();
    let mut opt = Sgd::new(SgdConfig::default());
    let mut split = [0.0f64; 3];
    let mut step = |split: &mut [f64; 3]| -> Result<()> {
        let t = Instant::now();
        if train {
            let loss = cross_entropy(&m.forward_t(x, true)?, y, 0.0)?;
            let t1 = Instant::now();
            let grads = crate::dynamics::ObservedGrads::unobserved(loss.backward()?);
            let t2 = Instant::now();
            opt.step(0.01, &params, &grads)?;
            split[0] += (t1 - t).as_secs_f64();
            split[1] += (t2 - t1).as_secs_f64();
            split[2] += t2.elapsed().as_secs_f64();
        } else {
            m.infer(x)?.to_vec2::<f32>()?;
            split[0] += t.elapsed().as_secs_f64();
        }
        Ok(())
    };
    step(&mut [0.0; 3])?;
    dyrep_api::kernels::profile::reset();
    dyrep_api::kernels::profile::set_per_conv(true);
    let t0 = Instant::now();
    let timed = (0..iters).try_for_each(|_| step(&mut split));
    let seconds = t0.elapsed().as_secs_f64();
    dyrep_api::kernels::profile::set_per_conv(false);
    timed?;
    Ok((seconds, split))
}
