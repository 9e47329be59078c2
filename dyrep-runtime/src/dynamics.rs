//! DyRep's dynamics (paper §4; docs/REFERENCE.md "Growth schedule (Rep)", "Dep (cut)", "Scores",
//! "Optimizer state when parameters change"): scoring growable convs after every backward and
//! before the optimizer step (the type `ObservedGrads` makes the other order impossible), Rep —
//! growing the top-k convs into blocks with BN calibration and exact output preservation — and Dep
//! — cutting faded branches (importance = mean|γ_last| / mean|γ_main| below both the mean of the
//! others and λ, once their sample std exceeds 0.02) with absorption into the main conv. Every grow
//! and cut measures the eval output on a fixed held-out batch before and after.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use dyrep_api::equivalence::compare;
use dyrep_api::{
    find_op, find_scorer, join_path, ConvObservation, GradProbe, InitCtx, OpSpec, Scorer,
    ScorerConfig, SeededRng, DEFAULT_GAMMA0, DEFAULT_MAX_DEPTH,
};
use serde::{Deserialize, Serialize};

use crate::data::loader::{train_stream, Augment};
use crate::data::Dataset;
use crate::dist::Comm;
use crate::error::{Result, RuntimeError};
use crate::metrics::cross_entropy;
use crate::model::Model;
use crate::preserve::{affine_preserve, main_conv_norms, MainScale};
use crate::schedule::{GrowSchedule, Period};

fn d_scorer() -> String {
    "synflow".into()
}
fn d_topk() -> usize {
    1
}
fn d_gamma0() -> f64 {
    DEFAULT_GAMMA0
}
fn d_calib() -> usize {
    20
}
fn d_true() -> bool {
    true
}
fn d_lambda() -> f64 {
    0.1
}
fn d_min_std() -> f64 {
    0.02
}
fn d_depth() -> usize {
    DEFAULT_MAX_DEPTH
}

/// How a grow step keeps the network's output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preserve {
    /// Push the difference through the main branch's (calibrated) BN: exact in eval mode.
    #[default]
    Exact,
    /// The reference's eq. 6: main BN reset to (γ=1, β=0, μ=0, σ²=1) and main conv =
    /// W − ΣK_j, which leaves the 1/sqrt(1+ε) factor on the residual kernel (≈5e-6 relative;
    /// docs/REFERENCE.md "The grown block"). For parity runs against the original code.
    Reference,
    /// Main conv = W − ΣK_j at W's scale, the calibrated σ carried in the main BN's γ and β
    /// (and in the new branches' last γ, so they start at γ0 relative to the main branch):
    /// exact in eval mode without dividing the conv's effective step (`preserve.rs`).
    Affine,
}

impl Preserve {
    /// `--preserve`: `exact`, `reference` or `affine`.
    pub fn parse(s: &str) -> std::result::Result<Preserve, String> {
        match s {
            "exact" => Ok(Preserve::Exact),
            "reference" => Ok(Preserve::Reference),
            "affine" => Ok(Preserve::Affine),
            other => Err(format!(
                "`{other}`: expected `exact`, `reference` or `affine`"
            )),
        }
    }
}

/// Settings of the dynamic mode (`[dyrep]` in the config file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DyrepConfig {
    /// Branch ops new blocks get (those that apply to each conv); empty = every registered op.
    #[serde(default)]
    pub ops: Vec<String>,
    #[serde(default = "d_scorer")]
    pub scorer: String,
    /// Grow after every this much training: epochs (fractions allowed), `N steps`, or `auto`
    /// (1/40 of the run, the reference's proportion; `crate::schedule`).
    #[serde(default)]
    pub grow_interval: Period,
    /// No growth after this much training: epochs, `N steps`, `auto` (5/6 of the run, as the
    /// reference) or `none` (until the end).
    #[serde(default)]
    pub max_grow_epochs: Period,
    /// Convs grown per grow step.
    #[serde(default = "d_topk")]
    pub grow_topk: usize,
    /// γ of the last BN of each new branch.
    #[serde(default = "d_gamma0")]
    pub gamma0: f64,
    /// Training batches used to calibrate a new block's BN statistics.
    #[serde(default = "d_calib")]
    pub calib_batches: usize,
    /// Run Dep (cut faded branches).
    #[serde(default = "d_true")]
    pub dep: bool,
    /// λ: a branch is cut only below this importance (and below the mean).
    #[serde(default = "d_lambda")]
    pub cut_threshold: f64,
    /// Cuts happen only when the importances' sample std exceeds this.
    #[serde(default = "d_min_std")]
    pub cut_min_std: f64,
    /// Blocks nest at most this deep.
    #[serde(default = "d_depth")]
    pub max_depth: usize,
    /// How a grow keeps the output: `exact` (default), the reference's eq. 6 (`reference`) or
    /// `affine` (W's scale kept).
    #[serde(default)]
    pub preserve: Preserve,
}

impl Default for DyrepConfig {
    fn default() -> Self {
        Self {
            ops: Vec::new(),
            scorer: d_scorer(),
            grow_interval: Period::Auto,
            max_grow_epochs: Period::Auto,
            grow_topk: d_topk(),
            gamma0: d_gamma0(),
            calib_batches: d_calib(),
            dep: true,
            cut_threshold: d_lambda(),
            cut_min_std: d_min_std(),
            max_depth: d_depth(),
            preserve: Preserve::Exact,
        }
    }
}

impl DyrepConfig {
    /// Checks the settings against the registries; errors name the setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |s: String| Err(RuntimeError::Config(s));
        for op in &self.ops {
            find_op(op)?;
            if op == dyrep_ops::MAIN_OP {
                return bad(format!(
                    "dyrep.ops: `{op}` is every block's main branch; list only the other ops"
                ));
            }
        }
        find_scorer(&self.scorer)?;
        if self.grow_interval == Period::Unlimited {
            return bad(
                "dyrep.grow_interval cannot be `none`; give epochs, `N steps` or `auto`".into(),
            );
        }
        if self.grow_topk == 0 {
            return bad("dyrep.grow_topk must be at least 1".into());
        }
        if !(self.gamma0 > 0.0 && self.gamma0.is_finite()) {
            return bad(format!(
                "dyrep.gamma0 must be positive (got {})",
                self.gamma0
            ));
        }
        if self.calib_batches == 0 {
            return bad("dyrep.calib_batches must be at least 1".into());
        }
        if self.max_depth == 0 {
            return bad("dyrep.max_depth must be at least 1".into());
        }
        for (key, v) in [
            ("cut_threshold", self.cut_threshold),
            ("cut_min_std", self.cut_min_std),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return bad(format!(
                    "dyrep.{key} must be a finite number >= 0 (got {v})"
                ));
            }
        }
        Ok(())
    }

    /// The branch specs new blocks get.
    pub fn branch_specs(&self) -> Result<Vec<Box<dyn OpSpec>>> {
        if self.ops.is_empty() {
            return Ok(dyrep_api::ops()
                .iter()
                .filter(|e| e.name != dyrep_ops::MAIN_OP)
                .map(|e| (e.default_spec)())
                .collect());
        }
        Ok(self
            .ops
            .iter()
            .map(|n| dyrep_api::op_spec(n))
            .collect::<dyrep_api::Result<_>>()?)
    }

    /// A fresh scorer.
    pub fn build_scorer(&self, seed: u64) -> Result<Box<dyn Scorer>> {
        Ok((find_scorer(&self.scorer)?.build)(&ScorerConfig { seed }))
    }

    /// The growth schedule of a run of `epochs` epochs of `steps_per_epoch` steps.
    pub fn schedule(&self, steps_per_epoch: usize, epochs: usize) -> Result<GrowSchedule> {
        GrowSchedule::new(
            self.grow_interval,
            self.max_grow_epochs,
            steps_per_epoch as u64,
            epochs as u64,
        )
    }
}

/// One grow or cut, as written to `events.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The epoch (1-based) the event followed or, with `step`, happened in.
    pub epoch: usize,
    /// The run's step (1-based) a grow or cut in the middle of an epoch followed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub step: Option<u64>,
    pub kind: String,
    pub path: String,
    /// Ops added (grow) or removed (cut).
    pub ops: Vec<String>,
    /// The conv's score (grow).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub score: Option<f64>,
    /// γ of new branches (grow) or the importance of the cut branch (cut).
    pub gamma: f64,
    pub params: usize,
    pub macs: u64,
    pub preserve_rel_err: f64,
    /// Every growable conv the scorer ranked for this grow, best first (grow): what the grown
    /// conv was chosen over.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub ranking: Vec<ScoredConv>,
    /// How the grow or cut rescaled the main conv's output channels, and the factor on its
    /// effective step (absent in events written before it was recorded).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub main_scale: Option<MainScale>,
}

/// A growable conv and its score at a grow step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoredConv {
    pub path: String,
    pub score: f64,
}

/// Gradients that scorers have seen; the only thing the optimizer steps on.
pub struct ObservedGrads(GradStore);

impl ObservedGrads {
    pub fn grads(&self) -> &GradStore {
        &self.0
    }
}

/// The growable convs of a model: (slot path, weight variable), in model order.
pub fn growable_weights(model: &Model, max_depth: usize) -> Vec<(String, Var)> {
    let mut weights = BTreeMap::new();
    model.visit_tensors(&mut |p, v, _| {
        weights.insert(p.to_string(), v.clone());
    });
    let mut out = Vec::new();
    for u in model.units() {
        for info in u.slot.growable(max_depth) {
            let path = join_path(&u.conv_path, &info.path);
            if let Some(v) = weights.get(&format!("{path}.weight")) {
                out.push((path, v.clone()));
            }
        }
    }
    out
}

struct BatchProbe<'a> {
    model: &'a Model,
    x: &'a Tensor,
    y: &'a Tensor,
    weights: &'a [(String, Var)],
    /// The ranks whose batches the probe's gradients are averaged over, as the step's are.
    comm: &'a dyn Comm,
}

impl GradProbe for BatchProbe<'_> {
    fn grads_with_shift(
        &mut self,
        shift: &BTreeMap<String, Tensor>,
    ) -> dyrep_api::Result<BTreeMap<String, Tensor>> {
        let mut saved = Vec::new();
        for (p, v) in self.weights {
            if let Some(s) = shift.get(p) {
                let orig = v.as_detached_tensor().copy()?;
                v.set(&(&orig + s)?)?;
                saved.push((v, orig));
            }
        }
        let run = || -> candle_core::Result<BTreeMap<String, Tensor>> {
            let logits = self
                .model
                .forward_t(self.x, false)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            let loss = cross_entropy(&logits, self.y, 0.0)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            let grads = loss.backward()?;
            let mut out = BTreeMap::new();
            for (p, v) in self.weights {
                if let Some(g) = grads.get(v.as_tensor()) {
                    out.insert(p.clone(), g.detach());
                }
            }
            Ok(out)
        };
        let result = run();
        for (v, orig) in saved {
            v.set(&orig)?;
        }
        let mut grads = result?;
        crate::dist::average_tensors(self.comm, &mut grads).map_err(|e| {
            dyrep_api::Error::Scorer {
                scorer: "probe".into(),
                reason: format!("averaging the probe's gradients over the ranks: {e}"),
            }
        })?;
        Ok(grads)
    }
}

/// Hands a backward pass's gradients of the growable convs to the scorer (if any), then
/// releases them for the optimizer.
pub fn observe(
    scorer: Option<&mut Box<dyn Scorer>>,
    grads: GradStore,
    weights: &[(String, Var)],
    step: usize,
    model: &Model,
    batch: (&Tensor, &Tensor),
    comm: &dyn Comm,
) -> Result<ObservedGrads> {
    let Some(scorer) = scorer else {
        return Ok(ObservedGrads(grads));
    };
    let detached: Vec<(String, Tensor, Tensor)> = weights
        .iter()
        .filter_map(|(p, v)| {
            grads
                .get(v.as_tensor())
                .map(|g| (p.clone(), v.as_detached_tensor(), g.clone()))
        })
        .collect();
    let obs: Vec<ConvObservation<'_>> = detached
        .iter()
        .map(|(p, w, g)| ConvObservation {
            path: p,
            weight: w,
            grad: g,
        })
        .collect();
    for o in &obs {
        scorer.observe(o)?;
    }
    scorer.end_step()?;
    if scorer.probe_every().is_some_and(|n| step.is_multiple_of(n)) {
        let mut probe = BatchProbe {
            model,
            x: batch.0,
            y: batch.1,
            weights,
            comm,
        };
        scorer.observe_probe(&obs, &mut probe)?;
    }
    Ok(ObservedGrads(grads))
}

/// Eval logits on the fixed held-out batch, every block branch by branch (the blocks' fused
/// inference path would measure the fusion, not the grown network).
fn probe_logits(model: &Model, fixed: &Tensor) -> Result<Tensor> {
    dyrep_api::branchwise(|| model.infer(fixed))
}

/// Everything a grow or cut step needs besides the model.
pub struct AdjustCtx<'a> {
    pub cfg: &'a DyrepConfig,
    pub ds: &'a Arc<Dataset>,
    pub batch_size: usize,
    pub augment: &'a Augment,
    pub train_limit: Option<usize>,
    pub seed: u64,
    pub device: &'a Device,
    /// The fixed held-out batch the preservation is measured on.
    pub fixed: &'a Tensor,
    /// The run's step after which this adjustment happens, when it is not at an epoch's end.
    pub step: Option<u64>,
}

impl AdjustCtx<'_> {
    /// The key of the seeded streams of the `k`-th grow of this adjustment: epoch-end grows
    /// keep the keys they had before mid-epoch growth existed.
    fn stream_key(&self, epoch: usize, k: usize) -> usize {
        match self.step {
            None => epoch * 1000 + k,
            Some(s) => (1 << 40) + s as usize * 1000 + k,
        }
    }
}

/// Rep: grows the `grow_topk` best-scored growable convs (each with the ops that apply to it),
/// calibrates the new blocks' BN statistics on training batches and restores the eval output
/// exactly. Returns the grow events.
pub fn grow_step(
    model: &mut Model,
    scorer: &dyn Scorer,
    epoch: usize,
    ctx: &AdjustCtx<'_>,
) -> Result<Vec<Event>> {
    let growable: Vec<String> = growable_weights(model, ctx.cfg.max_depth)
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let mut ranked: Vec<(String, f64)> = scorer
        .scores()
        .into_iter()
        .filter(|(p, _)| growable.contains(p))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let ranking: Vec<ScoredConv> = ranked
        .iter()
        .map(|(path, score)| ScoredConv {
            path: path.clone(),
            score: *score,
        })
        .collect();
    let specs = ctx.cfg.branch_specs()?;
    let main = dyrep_ops::main_spec();
    let purpose = match ctx.step {
        None => format!("grow:{epoch}"),
        Some(s) => format!("grow:{epoch}:step{s}"),
    };
    let mut rng = SeededRng::for_purpose(ctx.seed, &purpose);
    let mut events = Vec::new();
    for (path, score) in ranked {
        if events.len() >= ctx.cfg.grow_topk {
            break;
        }
        let before = probe_logits(model, ctx.fixed)?;
        let (slot, _) = model.slot_mut(&path)?;
        let geom = *slot.geom();
        let applicable: Vec<Box<dyn OpSpec>> = specs
            .iter()
            .filter(|s| s.check(&geom).is_ok())
            .cloned()
            .collect();
        if applicable.is_empty() {
            continue;
        }
        let target = slot.equivalent()?;
        let norms_before = main_conv_norms(slot)?;
        {
            let mut ictx = InitCtx::new(&mut rng, ctx.device);
            ictx.gamma0 = ctx.cfg.gamma0;
            slot.grow(&*main, &applicable, &mut ictx)?;
        }
        calibrate(model, &path, epoch, events.len(), ctx)?;
        let (slot, _) = model.slot_mut(&path)?;
        let block = slot
            .as_block_mut()
            .ok_or_else(|| RuntimeError::Model(format!("`{path}` did not become a block")))?;
        match ctx.cfg.preserve {
            Preserve::Exact => block.restore_equivalent(&target)?,
            Preserve::Reference => reference_eq6(block, &target)?,
            Preserve::Affine => affine_preserve(block, &target)?,
        }
        let main_scale = MainScale::between(&norms_before, &main_conv_norms(slot)?);
        let after = probe_logits(model, ctx.fixed)?;
        events.push(Event {
            epoch,
            step: ctx.step,
            kind: "grow".into(),
            path: path.clone(),
            ops: applicable.iter().map(|s| s.name().to_string()).collect(),
            score: Some(score),
            gamma: ctx.cfg.gamma0,
            params: model.param_count(),
            macs: model.macs()?,
            preserve_rel_err: compare(&before, &after)?.rel,
            ranking: ranking.clone(),
            main_scale,
        });
    }
    Ok(events)
}

/// The reference's eq. 6 on a freshly grown block: main BN reset, main conv = target − Σ new.
fn reference_eq6(block: &mut dyrep_api::RepBlock, target: &dyrep_api::Kernel) -> Result<()> {
    let mut others: Option<dyrep_api::Kernel> = None;
    for b in block.branches() {
        let k = b.to_equivalent_kxk()?;
        others = Some(match others {
            None => k,
            Some(o) => o.add(&k)?,
        });
    }
    let residual = match others {
        Some(o) => target.sub(&o)?,
        None => target.clone(),
    };
    let geom = *block.geom();
    let main = block.main_mut();
    for (_, bn) in main.batch_norms() {
        bn.reset(1.0)?;
    }
    let slot = main
        .main_slot_mut()
        .ok_or_else(|| RuntimeError::Model("the main branch has no conv slot".into()))?;
    *slot = dyrep_api::Slot::from_kernel(geom, &residual)?;
    Ok(())
}

/// Calibrates the BN statistics of the block just grown at `path` with a cumulative average over
/// `calib_batches` augmented training batches; every other BN stays in eval mode and no gradients
/// are taken (docs/REFERENCE.md "The grown block" step 4). Unlike the reference, the main branch's
/// BN keeps its calibrated statistics instead of being reset to μ = 0, σ² = 1: the exact restore
/// that follows works for any statistics, and keeping them makes the running statistics match what
/// train mode sees from the first step (with the reset, eval accuracy collapses for a while after
/// each growth in short runs, until the running averages catch up).
fn calibrate(
    model: &mut Model,
    path: &str,
    epoch: usize,
    k: usize,
    ctx: &AdjustCtx<'_>,
) -> Result<()> {
    {
        let (slot, _) = model.slot_mut(path)?;
        let mut res = Ok(());
        slot.visit_batch_norms("", &mut |_, bn| {
            if res.is_ok() {
                res = bn.begin_calibration();
            }
        });
        res?;
    }
    let stream = train_stream(
        ctx.ds.clone(),
        ctx.batch_size,
        ctx.seed ^ 0xca11b,
        ctx.stream_key(epoch, k),
        ctx.augment,
        ctx.train_limit,
    );
    let ds = ctx.ds;
    let result = (|| -> Result<()> {
        for b in stream.take(ctx.cfg.calib_batches) {
            let (x, _) = b?.to_tensors(ds, ctx.device)?;
            model.infer(&x)?;
        }
        Ok(())
    })();
    let (slot, _) = model.slot_mut(path)?;
    slot.visit_batch_norms("", &mut |_, bn| {
        bn.end_calibration();
    });
    result
}

/// Dep: in every block (nested ones included), cuts the branches whose importance is below both
/// the mean importance and λ, when the importances' sample std exceeds `cut_min_std`
/// (docs/REFERENCE.md "Dep (cut)"), absorbing each into the main conv. Returns the cut events.
pub fn cut_step(
    model: &mut Model,
    epoch: usize,
    step: Option<u64>,
    cfg: &DyrepConfig,
    fixed: &Tensor,
) -> Result<Vec<Event>> {
    let mut blocks = Vec::new();
    for u in model.units() {
        for info in u.slot.slots() {
            if info.grown {
                blocks.push(join_path(&u.conv_path, &info.path));
            }
        }
    }
    let mut events = Vec::new();
    for path in blocks {
        // A nested block disappears with its branch when an enclosing block cuts that branch
        // (e.g. `conv1x1_kxk` holding a grown `conv2`): the paths were listed before the cuts.
        let Ok((slot, _)) = model.slot_mut(&path) else {
            continue;
        };
        let Some(block) = slot.as_block() else {
            continue;
        };
        let imp = block.branch_importance()?;
        let cuts = select_cuts(&imp, cfg.cut_threshold, cfg.cut_min_std);
        for (name, w) in cuts {
            let before = probe_logits(model, fixed)?;
            let (slot, _) = model.slot_mut(&path)?;
            let norms_before = main_conv_norms(slot)?;
            if let Some(b) = slot.as_block_mut() {
                b.cut(name)?;
            }
            let main_scale = MainScale::between(&norms_before, &main_conv_norms(slot)?);
            let after = probe_logits(model, fixed)?;
            events.push(Event {
                epoch,
                step,
                kind: "cut".into(),
                path: path.clone(),
                ops: vec![name.to_string()],
                score: None,
                gamma: w,
                params: model.param_count(),
                macs: model.macs()?,
                preserve_rel_err: compare(&before, &after)?.rel,
                ranking: Vec::new(),
                main_scale,
            });
        }
    }
    Ok(events)
}

/// The reference's cut rule on (branch, importance) pairs.
pub fn select_cuts(
    imp: &[(&'static str, f64)],
    lambda: f64,
    min_std: f64,
) -> Vec<(&'static str, f64)> {
    let n = imp.len();
    if n < 2 {
        return Vec::new();
    }
    let mean = imp.iter().map(|(_, w)| w).sum::<f64>() / n as f64;
    let var = imp.iter().map(|(_, w)| (w - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    if var.sqrt() <= min_std {
        return Vec::new();
    }
    imp.iter()
        .filter(|(_, w)| *w < mean && *w < lambda)
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_rule_matches_the_reference() {
        // All equal (right after growth): std 0, nothing cut.
        assert!(select_cuts(&[("a", 0.01), ("b", 0.01)], 0.1, 0.02).is_empty());
        // One value: std undefined, nothing cut.
        assert!(select_cuts(&[("a", 0.0)], 0.1, 0.02).is_empty());
        // Spread: below the mean and below λ.
        let c = select_cuts(
            &[("a", 0.02), ("b", 0.5), ("c", 0.3), ("d", 0.15)],
            0.1,
            0.02,
        );
        assert_eq!(c, vec![("a", 0.02)]);
        // Below the mean but above λ: kept.
        assert!(select_cuts(&[("a", 0.2), ("b", 0.9)], 0.1, 0.02).is_empty());
    }

    #[test]
    fn grow_schedule() {
        let c = DyrepConfig {
            grow_interval: Period::Epochs(2.0),
            max_grow_epochs: Period::Epochs(6.0),
            ..Default::default()
        };
        let s = c.schedule(3, 10).unwrap();
        let grows: Vec<u64> = (1..=30).filter(|&k| s.grows_after(k)).collect();
        assert_eq!(grows, vec![6, 12, 18]);
        // The default: 1/40 of the run, until 5/6 of it, never after the last step.
        let s = DyrepConfig::default().schedule(10, 4).unwrap();
        assert_eq!((s.interval, s.last), (1, 33));
        assert!(!s.grows_after(40), "no growth after the last step");
    }
}

#[cfg(test)]
mod scenario_tests {
    use super::*;
    use crate::model::{build_model, ModelConfig};
    use dyrep_api::equivalence::randomize_tensor;

    fn model() -> (Model, Tensor) {
        crate::ensure_linked();
        let mut rng = SeededRng::new(4);
        let mut ctx = InitCtx::new(&mut rng, &Device::Cpu);
        let cfg = ModelConfig {
            name: "vgg-tiny".into(),
            input: [1, 12, 12],
            num_classes: 10,
            width: 0.5,
            file: None,
        };
        let m = build_model(&cfg, &mut ctx).unwrap();
        for (_, v, r) in m.tensors() {
            randomize_tensor(&mut rng, &v, r).unwrap();
        }
        let x = dyrep_api::init::normal_tensor(&mut rng, &[8, 1, 12, 12], 0.0, 1.0, &Device::Cpu)
            .unwrap();
        (m, x)
    }

    fn set_gamma(m: &mut Model, block: &str, branch: &str, g: f64) {
        let (slot, _) = m.slot_mut(block).unwrap();
        let b = slot.as_block().unwrap();
        let op = b.branch(branch).unwrap();
        let (_, bn) = *op.batch_norms().last().unwrap();
        bn.set_gamma(g).unwrap();
    }

    #[test]
    fn cutting_a_branch_that_holds_a_grown_block_skips_the_vanished_nested_block() {
        // Regression: a 15-epoch run stopped with "no slot at `conv1x1_kxk.conv2`" when the
        // outer block cut the branch whose second conv had grown into a block.
        let (mut m, x) = model();
        let cfg = DyrepConfig::default();
        let specs = cfg.branch_specs().unwrap();
        let main = dyrep_ops::main_spec();
        let mut rng = SeededRng::new(6);
        let mut ctx = InitCtx::new(&mut rng, &Device::Cpu);
        let grow = |m: &mut Model, path: &str, ctx: &mut InitCtx<'_>| {
            let (slot, _) = m.slot_mut(path).unwrap();
            let g = *slot.geom();
            let ok: Vec<Box<dyn OpSpec>> = specs
                .iter()
                .filter(|s| s.check(&g).is_ok())
                .cloned()
                .collect();
            slot.grow(&*main, &ok, ctx).unwrap();
        };
        grow(&mut m, "features.1.conv", &mut ctx);
        grow(&mut m, "features.1.conv.conv1x1_kxk.conv2", &mut ctx);
        for (b, g) in [
            ("conv1x1", 0.5),
            ("conv1x1_kxk", 0.001),
            ("conv1x1_avg", 0.4),
            ("conv1xk", 0.3),
            ("convkx1", 0.5),
            ("identity", 0.45),
        ] {
            set_gamma(&mut m, "features.1.conv", b, g);
        }
        let events = cut_step(&mut m, 2, None, &cfg, &x).unwrap();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].ops, ["conv1x1_kxk"]);
        assert!(events[0].preserve_rel_err <= 2e-5, "{events:?}");
        assert!(m.slot_mut("features.1.conv.conv1x1_kxk.conv2").is_err());
    }

    #[test]
    fn dep_cuts_faded_branches_in_outer_and_nested_blocks_and_keeps_the_output() {
        let (mut m, x) = model();
        let cfg = DyrepConfig::default();
        let specs = cfg.branch_specs().unwrap();
        let main = dyrep_ops::main_spec();
        let mut rng = SeededRng::new(5);
        let mut ctx = InitCtx::new(&mut rng, &Device::Cpu);
        let (slot, _) = m.slot_mut("features.1.conv").unwrap();
        let g = *slot.geom();
        let ok: Vec<Box<dyn OpSpec>> = specs
            .iter()
            .filter(|s| s.check(&g).is_ok())
            .cloned()
            .collect();
        slot.grow(&*main, &ok, &mut ctx).unwrap();
        let (inner, _) = m.slot_mut("features.1.conv.convkxk.conv").unwrap();
        let g = *inner.geom();
        let ok: Vec<Box<dyn OpSpec>> = specs
            .iter()
            .filter(|s| s.check(&g).is_ok())
            .cloned()
            .collect();
        inner.grow(&*main, &ok, &mut ctx).unwrap();
        // Right after growth every importance is γ0: nothing is cut.
        assert!(cut_step(&mut m, 1, None, &cfg, &x).unwrap().is_empty());
        // Script a spread: identity and conv1x1 fade in the outer block, conv1xk in the nested one.
        for (b, g) in [
            ("conv1x1", 0.02),
            ("conv1x1_kxk", 0.6),
            ("conv1x1_avg", 0.4),
            ("conv1xk", 0.3),
            ("convkx1", 0.5),
            ("identity", 0.001),
        ] {
            set_gamma(&mut m, "features.1.conv", b, g);
        }
        for (b, g) in [
            ("conv1x1", 0.5),
            ("conv1x1_kxk", 0.4),
            ("conv1x1_avg", 0.3),
            ("conv1xk", 0.005),
            ("convkx1", 0.35),
            ("identity", 0.45),
        ] {
            set_gamma(&mut m, "features.1.conv.convkxk.conv", b, g);
        }
        let nested_before = m
            .slot_mut("features.1.conv.convkxk.conv")
            .unwrap()
            .0
            .as_block()
            .unwrap()
            .branch_names()
            .len();
        let events = cut_step(&mut m, 2, None, &cfg, &x).unwrap();
        let cut: Vec<(String, String)> = events
            .iter()
            .map(|e| (e.path.clone(), e.ops[0].clone()))
            .collect();
        assert_eq!(
            cut,
            vec![
                ("features.1.conv".to_string(), "conv1x1".to_string()),
                ("features.1.conv".to_string(), "identity".to_string()),
                (
                    "features.1.conv.convkxk.conv".to_string(),
                    "conv1xk".to_string()
                ),
            ]
        );
        for e in &events {
            assert!(e.preserve_rel_err <= 2e-5, "{e:?}");
        }
        // The nested block lost only its cut branch (no re-initialisation by the outer cut).
        let nested = m
            .slot_mut("features.1.conv.convkxk.conv")
            .unwrap()
            .0
            .as_block()
            .unwrap()
            .branch_names()
            .len();
        assert_eq!(nested, nested_before - 1);
    }
}

#[cfg(test)]
mod grow_tests {
    use super::*;
    use crate::model::{build_model, ModelConfig};

    /// What one grow did.
    struct Grown {
        event: Event,
        /// The block's own relative eval-output change on a random input.
        block_rel: f64,
        /// The new branches' Dep importances.
        importance: Vec<(&'static str, f64)>,
        /// The main BN's σ² + ε per channel.
        main_var: Vec<f32>,
    }

    /// Grows `features.1.conv` of a small vgg-tiny with calibration.
    fn grow_once(preserve: Preserve) -> Grown {
        crate::ensure_linked();
        let ds = Arc::new(crate::data::bundled_default().unwrap());
        let dev = Device::Cpu;
        let mut rng = SeededRng::new(8);
        let mut ctx = InitCtx::new(&mut rng, &dev);
        let cfg = ModelConfig {
            name: "vgg-tiny".into(),
            input: [1, 28, 28],
            num_classes: 10,
            width: 0.5,
            file: None,
        };
        let mut m = build_model(&cfg, &mut ctx).unwrap();
        for (_, v, r) in m.tensors() {
            dyrep_api::equivalence::randomize_tensor(&mut rng, &v, r).unwrap();
        }
        let b = crate::data::loader::make_batch(
            &ds,
            crate::data::loader::Which::Test,
            &(0..16).collect::<Vec<_>>(),
            None,
        )
        .unwrap();
        let fixed = Tensor::from_vec(b.images, (16, 1, 28, 28), &dev).unwrap();
        let dcfg = DyrepConfig {
            preserve,
            calib_batches: 2,
            ..Default::default()
        };
        let mut scorer = dcfg.build_scorer(0).unwrap();
        let w = Tensor::ones((8, 8, 3, 3), candle_core::DType::F32, &dev).unwrap();
        scorer
            .observe(&ConvObservation {
                path: "features.1.conv",
                weight: &w,
                grad: &w,
            })
            .unwrap();
        let actx = AdjustCtx {
            cfg: &dcfg,
            ds: &ds,
            batch_size: 16,
            augment: &Augment::default(),
            train_limit: Some(64),
            seed: 0,
            device: &dev,
            fixed: &fixed,
            step: None,
        };
        let x = dyrep_api::init::normal_tensor(&mut rng, &[2, 8, 14, 14], 0.0, 1.0, &dev).unwrap();
        let old = m
            .slot_mut("features.1.conv")
            .unwrap()
            .0
            .equivalent()
            .unwrap();
        let y_old = old.conv(&x, 1, 1, 1).unwrap();
        let ev = grow_step(&mut m, scorer.as_ref(), 1, &actx).unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].path, "features.1.conv");
        assert_eq!(m.block_count(), 1);
        let y_new = m
            .slot_mut("features.1.conv")
            .unwrap()
            .0
            .forward_t(&x, false)
            .unwrap();
        let importance = m
            .slot_mut("features.1.conv")
            .unwrap()
            .0
            .as_block()
            .unwrap()
            .branch_importance()
            .unwrap();
        let main_var = {
            let (slot, _) = m.slot_mut("features.1.conv").unwrap();
            let block = slot.as_block().unwrap();
            let bns = block.main().batch_norms();
            let p = bns[0].1.eval_params().unwrap();
            (p.var + p.eps).unwrap().to_vec1::<f32>().unwrap()
        };
        Grown {
            event: ev[0].clone(),
            block_rel: compare(&y_old, &y_new).unwrap().rel,
            importance,
            main_var,
        }
    }

    /// The exact form rescales the grown conv's rows by the calibrated σ of their output (its
    /// effective step by 1/σ²); the reference's and the affine form keep the step within 1.25×.
    #[test]
    fn each_form_s_factor_on_the_grown_conv_s_effective_step() {
        let g = grow_once(Preserve::Exact);
        let exact = g.event;
        let mut inv: Vec<f64> = g.main_var.iter().map(|v| 1.0 / *v as f64).collect();
        inv.sort_by(f64::total_cmp);
        let expected = inv[inv.len() / 2] * 0.5 + inv[(inv.len() - 1) / 2] * 0.5;
        let f = exact.main_scale.as_ref().unwrap().step_factor;
        // The new branches' kernels (γ0 = 0.01) move the rows by about 1 %.
        assert!((f / expected - 1.0).abs() < 0.05, "{f} vs 1/σ² {expected}");
        assert!(
            !(0.8..=1.25).contains(&f),
            "σ² ≈ 1 here: the test shows nothing ({f})"
        );
        for form in [Preserve::Reference, Preserve::Affine] {
            let e = grow_once(form).event;
            let f = e.main_scale.as_ref().unwrap().step_factor;
            eprintln!(
                "{form:?}: step factor {f} (exact: {})",
                exact.main_scale.as_ref().unwrap().step_factor
            );
            assert!((0.8..=1.25).contains(&f), "{form:?}: {f}");
        }
    }

    /// The affine form is exact like the exact form, and its new branches start at γ0 relative
    /// to the main branch, as the reference's do.
    #[test]
    fn the_affine_form_is_exact_and_starts_branches_at_gamma0_of_the_main_branch() {
        let g = grow_once(Preserve::Affine);
        assert!(g.event.preserve_rel_err <= 2e-5, "{:?}", g.event);
        assert!(g.block_rel < 1e-6, "{}", g.block_rel);
        assert!(!g.importance.is_empty());
        for (name, w) in g.importance {
            assert!((w / DEFAULT_GAMMA0 - 1.0).abs() < 1e-3, "{name}: {w}");
        }
    }

    #[test]
    fn exact_grow_leaves_no_residue_and_reference_mode_leaves_the_eps_factor() {
        let g = grow_once(Preserve::Exact);
        let (exact, exact_block) = (g.event, g.block_rel);
        assert!(exact.preserve_rel_err <= 2e-5, "{exact:?}");
        assert!(exact_block < 1e-6, "{exact_block}");
        let g = grow_once(Preserve::Reference);
        let (reference, reference_block) = (g.event, g.block_rel);
        assert!(reference.preserve_rel_err <= 2e-5, "{reference:?}");
        // The reference's 1/sqrt(1+eps) on the residual kernel: about 5e-6 relative at the block.
        assert!(
            reference_block > 3e-6 && reference_block < 8e-6,
            "{reference_block}"
        );
    }
}
