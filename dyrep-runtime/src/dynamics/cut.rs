//! Dep (paper §3.3; docs/REFERENCE.md "Dep (cut)"): in every block, nested ones included, the
//! branches whose importance (mean|γ_last| / mean|γ_main|) is below both the mean of the others
//! and λ, once the importances' sample std exceeds `cut_min_std`, are absorbed into the main
//! conv; the eval output is measured on the fixed batch before and after each cut.

use candle_core::Tensor;
use dyrep_api::equivalence::compare;

use super::net::{block_paths, probe_logits, RepNet};
use super::preserve::{main_conv_norms, MainScale};
use super::{AdjustAt, DyrepConfig, Event};
use crate::error::Result;

/// Dep: in every block (nested ones included), cuts the branches whose importance is below both
/// the mean importance and λ, when the importances' sample std exceeds `cut_min_std`
/// (docs/REFERENCE.md "Dep (cut)"), absorbing each into the main conv. Returns the cut events.
pub fn cut_step(
    net: &mut dyn RepNet,
    at: AdjustAt,
    cfg: &DyrepConfig,
    fixed: &Tensor,
) -> Result<Vec<Event>> {
    let mut events = Vec::new();
    for path in block_paths(net) {
        // A nested block disappears with its branch when an enclosing block cuts that branch
        // (e.g. `conv1x1_kxk` holding a grown `conv2`): the paths were listed before the cuts.
        let Ok(slot) = net.slot_at(&path) else {
            continue;
        };
        let Some(block) = slot.as_block() else {
            continue;
        };
        let imp = block.branch_importance()?;
        let cuts = select_cuts(&imp, cfg.cut_threshold, cfg.cut_min_std);
        for (name, w) in cuts {
            let before = probe_logits(net, fixed)?;
            let slot = net.slot_at(&path)?;
            let norms_before = main_conv_norms(slot)?;
            if let Some(b) = slot.as_block_mut() {
                b.cut(name)?;
            }
            let main_scale = MainScale::between(&norms_before, &main_conv_norms(slot)?);
            let after = probe_logits(net, fixed)?;
            events.push(Event {
                epoch: at.epoch,
                step: at.step,
                kind: "cut".into(),
                path: path.clone(),
                ops: vec![name.to_string()],
                score: None,
                gamma: w,
                params: net.param_count(),
                macs: net.macs()?,
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
}

#[cfg(test)]
mod scenario_tests {
    use super::*;
    use crate::model::vgg_tiny_for_tests;
    use crate::model::Model;
    use candle_core::Device;
    use dyrep_api::equivalence::randomize_tensor;
    use dyrep_api::{InitCtx, OpSpec, SeededRng};

    fn model() -> (Model, Tensor) {
        let mut rng = SeededRng::new(4);
        let m = vgg_tiny_for_tests(12, &mut rng);
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
        let events = cut_step(&mut m, AdjustAt::epoch_end(2), &cfg, &x).unwrap();
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
        assert!(cut_step(&mut m, AdjustAt::epoch_end(1), &cfg, &x)
            .unwrap()
            .is_empty());
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
        let events = cut_step(&mut m, AdjustAt::epoch_end(2), &cfg, &x).unwrap();
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
