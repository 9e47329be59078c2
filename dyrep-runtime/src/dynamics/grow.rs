//! Rep (paper §3.1, eq. 6; docs/REFERENCE.md "The grown block"): the best-scored growable convs
//! become blocks of the configured branch ops; each new block's BN statistics are calibrated on
//! training batches the caller's [`CalibrationSource`] gives, and the eval output is kept in the
//! configured form (`exact`, the reference's eq. 6, or `affine`: `preserve.rs`); the output is
//! measured on the fixed batch before and after each grow. In the online block form
//! (docs/REFERENCE.md "The online form") a new block's assembled kernel equals the old conv
//! exactly in training mode too, so there is nothing to calibrate or preserve.

use candle_core::Tensor;
use dyrep_api::equivalence::compare;
use dyrep_api::{BlockForm, InitCtx, OpSpec, Scorer, SeededRng};

use super::net::{growable_weights, probe_logits, RepNet};
use super::preserve::{affine_preserve, main_conv_norms, MainScale};
use super::{AdjustAt, CalibrationSource, DyrepConfig, Event, Preserve, ScoredConv};
use crate::error::{Result, RuntimeError};

/// What a grow step needs besides the network and the scorer.
pub(crate) struct GrowCtx<'a> {
    pub cfg: &'a DyrepConfig,
    /// The run's seed: new branches are drawn from a stream of their own per adjustment.
    pub seed: u64,
    /// The fixed held-out batch the preservation is measured on.
    pub fixed: &'a Tensor,
    pub at: AdjustAt,
    pub calib: &'a mut dyn CalibrationSource,
}

impl GrowCtx<'_> {
    /// The key of the calibration stream of the `k`-th grow of this adjustment: epoch-end grows
    /// keep the keys they had before mid-epoch growth existed.
    fn stream_key(&self, k: usize) -> u64 {
        let (epoch, k) = (self.at.epoch as u64, k as u64);
        match self.at.step {
            None => epoch * 1000 + k,
            Some(s) => (1 << 40) + s * 1000 + k,
        }
    }
}

/// Rep: grows the `grow_topk` best-scored growable convs (each with the ops that apply to it),
/// calibrates the new blocks' BN statistics on training batches and keeps the eval output
/// (`cfg.preserve`). Returns the grow events.
pub(crate) fn grow_step(
    net: &mut dyn RepNet,
    scorer: &dyn Scorer,
    ctx: &mut GrowCtx<'_>,
) -> Result<Vec<Event>> {
    let growable: Vec<String> = growable_weights(net, ctx.cfg.max_depth)
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
    let epoch = ctx.at.epoch;
    let purpose = match ctx.at.step {
        None => format!("grow:{epoch}"),
        Some(s) => format!("grow:{epoch}:step{s}"),
    };
    let device = ctx.fixed.device().clone();
    let mut rng = SeededRng::for_purpose(ctx.seed, &purpose);
    let form = net.block_form();
    let mut events = Vec::new();
    for (path, score) in ranked {
        if events.len() >= ctx.cfg.grow_topk {
            break;
        }
        let before = probe_logits(net, ctx.fixed)?;
        let slot = net.slot_at(&path)?;
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
            let mut ictx = InitCtx::new(&mut rng, &device);
            ictx.gamma0 = ctx.cfg.gamma0;
            ictx.block_form = form;
            slot.grow(&*main, &applicable, &mut ictx)?;
        }
        let key = ctx.stream_key(events.len());
        if form == BlockForm::Bn {
            calibrate(net, &path, key, ctx)?;
        }
        let slot = net.slot_at(&path)?;
        let block = slot
            .as_block_mut()
            .ok_or_else(|| RuntimeError::Model(format!("`{path}` did not become a block")))?;
        // The online form has no statistics to calibrate or preserve: `Slot::grow` already made
        // the assembled kernel equal to the old conv, in training and in eval mode.
        match (form, ctx.cfg.preserve) {
            (BlockForm::Online, _) => {}
            (BlockForm::Bn, Preserve::Exact) => block.restore_equivalent(&target)?,
            (BlockForm::Bn, Preserve::Reference) => reference_eq6(block, &target)?,
            (BlockForm::Bn, Preserve::Affine) => affine_preserve(block, &target)?,
        }
        let main_scale = MainScale::between(&norms_before, &main_conv_norms(slot)?);
        let after = probe_logits(net, ctx.fixed)?;
        events.push(Event {
            epoch,
            step: ctx.at.step,
            kind: "grow".into(),
            path: path.clone(),
            ops: applicable.iter().map(|s| s.name().to_string()).collect(),
            score: Some(score),
            gamma: ctx.cfg.gamma0,
            params: net.param_count(),
            macs: net.macs()?,
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
fn calibrate(net: &mut dyn RepNet, path: &str, key: u64, ctx: &mut GrowCtx<'_>) -> Result<()> {
    {
        let slot = net.slot_at(path)?;
        let mut res = Ok(());
        slot.visit_batch_norms("", &mut |_, bn| {
            if res.is_ok() {
                res = bn.begin_calibration();
            }
        });
        res?;
    }
    let n = ctx.cfg.calib_batches;
    let result = (|| -> Result<()> {
        let mut seen = 0;
        for x in ctx.calib.batches(key)?.take(n) {
            net.infer(&x?)?;
            seen += 1;
        }
        if seen == 0 {
            return Err(RuntimeError::Training(format!(
                "growing `{path}`: the calibration source gave no batch; it must give at least one (calib_batches = {n})"
            )));
        }
        Ok(())
    })();
    let slot = net.slot_at(path)?;
    slot.visit_batch_norms("", &mut |_, bn| {
        bn.end_calibration();
    });
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::data::loader::Augment;
    use crate::model::{build_model, ModelConfig};
    use candle_core::Device;
    use dyrep_api::{ConvObservation, DEFAULT_GAMMA0};

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
        let mut calib = crate::train::calibration::TrainCalibration {
            ds: ds.clone(),
            batch_size: 16,
            seed: 0,
            augment: Augment::default(),
            train_limit: Some(64),
            device: dev.clone(),
        };
        let mut gctx = GrowCtx {
            cfg: &dcfg,
            seed: 0,
            fixed: &fixed,
            at: AdjustAt::epoch_end(1),
            calib: &mut calib,
        };
        let x = dyrep_api::init::normal_tensor(&mut rng, &[2, 8, 14, 14], 0.0, 1.0, &dev).unwrap();
        let old = m
            .slot_mut("features.1.conv")
            .unwrap()
            .0
            .equivalent()
            .unwrap();
        let y_old = old.conv(&x, 1, 1, 1).unwrap();
        let ev = grow_step(&mut m, scorer.as_ref(), &mut gctx).unwrap();
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
