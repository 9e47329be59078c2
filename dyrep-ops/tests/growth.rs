//! Recursive growth with the depth limit (docs/REFERENCE.md "Nesting", "Growth schedule (Rep)"): a
//! top-level conv grows, the inner slots of a block grow once more, and nothing grows three levels
//! deep; 1×1 convs never grow; every grow keeps the eval output; Dep's importance ratios are the
//! last-BN γ over the main BN γ (docs/REFERENCE.md "Dep (cut)"), 0.01 right after growth.

use candle_core::Device;
use dyrep_api::equivalence::{
    compare, random_input, randomize_slot, FusionCase, PRESERVE_TOLERANCE,
};
use dyrep_api::{ops, ConvGeom, InitCtx, OpSpec, Slot, DEFAULT_MAX_DEPTH};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn branches() -> Vec<Box<dyn OpSpec>> {
    dyrep_ops::ensure_linked();
    ops()
        .iter()
        .filter(|e| e.name != dyrep_ops::MAIN_OP)
        .map(|e| (e.default_spec)())
        .collect()
}

fn applicable(specs: &[Box<dyn OpSpec>], g: &ConvGeom) -> Vec<Box<dyn OpSpec>> {
    specs
        .iter()
        .filter(|s| s.check(g).is_ok())
        .cloned()
        .collect()
}

#[test]
fn growth_recurses_down_to_the_depth_limit_and_keeps_the_output() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let dev = Device::Cpu;
    let geom = ConvGeom::same(6, 6, 3, 1, 1).unwrap();
    let case = FusionCase {
        geom,
        batch: 2,
        h: 7,
        w: 6,
        seed: 0,
    };
    let mut ctx = InitCtx::new(&mut rng, &dev);
    let mut slot = Slot::conv(geom, false, &mut ctx).unwrap();
    randomize_slot(&slot, ctx.rng).unwrap();
    let x = random_input(&case, ctx.rng, &dev).unwrap();
    let y0 = slot.forward_t(&x, false).unwrap();
    let main = dyrep_ops::main_spec();
    let all = branches();

    assert_eq!(DEFAULT_MAX_DEPTH, 2);
    assert_eq!(slot.growable(DEFAULT_MAX_DEPTH).len(), 1);
    slot.grow_at(
        "",
        DEFAULT_MAX_DEPTH,
        &*main,
        &applicable(&all, &geom),
        &mut ctx,
    )
    .unwrap();
    // Depth 1: the main conv and conv1x1_kxk's second conv.
    let growable: Vec<String> = slot
        .growable(DEFAULT_MAX_DEPTH)
        .into_iter()
        .map(|s| s.path)
        .collect();
    assert_eq!(growable, ["convkxk.conv", "conv1x1_kxk.conv2"]);
    for p in &growable {
        let g = *slot.slot_mut(p).unwrap().0.geom();
        slot.grow_at(
            p,
            DEFAULT_MAX_DEPTH,
            &*main,
            &applicable(&all, &g),
            &mut ctx,
        )
        .unwrap();
    }
    // Depth 2 convs exist but may not grow.
    assert!(slot.growable(DEFAULT_MAX_DEPTH).is_empty());
    let deep = "convkxk.conv.convkxk.conv";
    let g = *slot.slot_mut(deep).unwrap().0.geom();
    let e = slot
        .grow_at(
            deep,
            DEFAULT_MAX_DEPTH,
            &*main,
            &applicable(&all, &g),
            &mut ctx,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains(deep) && e.contains("depth limit is 2"), "{e}");
    // A larger limit allows it.
    slot.grow_at(deep, 3, &*main, &applicable(&all, &g), &mut ctx)
        .unwrap();
    assert_eq!(slot.block_count(), 4);
    let y1 = slot.forward_t(&x, false).unwrap();
    let c = compare(&y0, &y1).unwrap();
    assert!(c.within(&PRESERVE_TOLERANCE), "{c:?}");
}

#[test]
fn one_by_one_convs_never_grow() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let mut ctx = InitCtx::new(&mut rng, &Device::Cpu);
    let geom = ConvGeom::same(4, 8, 1, 2, 1).unwrap();
    let mut slot = Slot::conv(geom, false, &mut ctx).unwrap();
    assert!(slot.growable(DEFAULT_MAX_DEPTH).is_empty());
    let e = slot
        .grow_at(
            "",
            DEFAULT_MAX_DEPTH,
            &*dyrep_ops::main_spec(),
            &[],
            &mut ctx,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("1x1 convs never grow"), "{e}");
}

#[test]
fn new_branches_start_at_gamma0_and_importance_is_the_gamma_ratio() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let mut ctx = InitCtx::new(&mut rng, &Device::Cpu);
    ctx.gamma0 = 0.05;
    let geom = ConvGeom::same(4, 4, 3, 1, 1).unwrap();
    let mut slot = Slot::conv(geom, false, &mut ctx).unwrap();
    slot.grow(&*dyrep_ops::main_spec(), &branches(), &mut ctx)
        .unwrap();
    let imp = slot.as_block().unwrap().branch_importance().unwrap();
    assert_eq!(imp.len(), 6);
    for (name, w) in imp {
        assert!((w - 0.05).abs() < 1e-6, "{name}: {w}");
    }
}

#[test]
fn train_mode_forward_runs_through_grown_blocks_with_gradients() {
    // Train mode is not output-preserving (batch statistics), but it must run and give every
    // trainable tensor of the tree a gradient.
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    let dev = Device::Cpu;
    let geom = ConvGeom::same(4, 4, 3, 2, 2).unwrap();
    let mut ctx = InitCtx::new(&mut rng, &dev);
    let mut slot = Slot::conv(geom, false, &mut ctx).unwrap();
    let all = branches();
    slot.grow(&*dyrep_ops::main_spec(), &applicable(&all, &geom), &mut ctx)
        .unwrap();
    let g2 = *slot.slot_mut("conv1x1_kxk.conv2").unwrap().0.geom();
    slot.grow_at(
        "conv1x1_kxk.conv2",
        2,
        &*dyrep_ops::main_spec(),
        &applicable(&all, &g2),
        &mut ctx,
    )
    .unwrap();
    let case = FusionCase {
        geom,
        batch: 3,
        h: 8,
        w: 8,
        seed: 0,
    };
    let x = random_input(&case, ctx.rng, &dev).unwrap();
    let y = slot.forward_t(&x, true).unwrap();
    let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let mut missing = vec![];
    slot.visit_tensors("", &mut |p, v, role| {
        if role.is_trainable() && grads.get(v.as_tensor()).is_none() {
            missing.push(p.to_string());
        }
    });
    assert!(missing.is_empty(), "no gradient for {missing:?}");
}

#[test]
fn fused_block_training_step_matches_branch_by_branch() {
    // The block op (conv->BN branches and the identity BN in one op) must give the same
    // train-mode output and leave the same running statistics as running each branch alone.
    // Regression: a conv bias was counted twice in the recorded mean, which wrecked eval
    // accuracy after the first grow with a biased main conv (test acc 0.65 instead of 0.83).
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let dev = Device::Cpu;
    let geom = ConvGeom::same(6, 6, 3, 1, 1).unwrap();
    let mut ctx = InitCtx::new(&mut rng, &dev);
    let mut slot = Slot::conv(geom, false, &mut ctx).unwrap();
    slot.grow(
        &*dyrep_ops::main_spec(),
        &applicable(&branches(), &geom),
        &mut ctx,
    )
    .unwrap();
    randomize_slot(&slot, ctx.rng).unwrap();
    let case = FusionCase {
        geom,
        batch: 3,
        h: 7,
        w: 6,
        seed: 0,
    };
    let x = random_input(&case, ctx.rng, &dev).unwrap();
    let stats = |slot: &Slot| {
        let mut v = Vec::new();
        slot.visit_batch_norms("", &mut |p, bn| {
            let e = bn.eval_params().unwrap();
            v.push((
                p.to_string(),
                e.mean.to_vec1::<f32>().unwrap(),
                e.var.to_vec1::<f32>().unwrap(),
            ));
        });
        v
    };
    let before = stats(&slot);
    let fused = slot.forward_t(&x, true).unwrap();
    let after_fused = stats(&slot);
    // Restore the statistics, then run every branch on its own.
    let mut restore = before.iter();
    slot.visit_batch_norms("", &mut |_, bn| {
        let (_, m, v) = restore.next().unwrap();
        bn.set_running_stats(
            &candle_core::Tensor::new(m.as_slice(), &dev).unwrap(),
            &candle_core::Tensor::new(v.as_slice(), &dev).unwrap(),
        )
        .unwrap();
    });
    let block = slot.as_block().unwrap();
    let mut separate: Option<candle_core::Tensor> = None;
    for op in block.all_branches() {
        let y = op.forward_t(&x, true).unwrap();
        separate = Some(match separate {
            None => y,
            Some(s) => (s + y).unwrap(),
        });
    }
    let after_separate = stats(&slot);
    let c = compare(&separate.unwrap(), &fused).unwrap();
    assert!(c.rel <= 1e-5, "train-mode output: {c:?}");
    for ((p, m1, v1), (_, m2, v2)) in after_fused.iter().zip(&after_separate) {
        for (a, b) in m1.iter().zip(m2).chain(v1.iter().zip(v2)) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{p}: {a} vs {b}");
        }
    }
}

#[test]
fn fused_block_gradients_match_branch_by_branch() {
    // The block op runs every branch (two-stage 1×1→k×k and 1×1→avg included) with its own
    // backward: its train-mode output and every gradient (input, weights, biases, γ, β) must
    // equal running each branch as separate candle ops. Odd/even sizes, stride 2, groups, a
    // biased main conv.
    let dev = Device::Cpu;
    // Odd cases run through `forward_bn_t` with the unit's BN and ReLU.
    let cases = [
        (ConvGeom::same(6, 6, 3, 1, 1).unwrap(), false, 7, 6),
        (ConvGeom::same(4, 8, 3, 2, 1).unwrap(), true, 9, 8),
        (ConvGeom::same(6, 6, 5, 1, 2).unwrap(), false, 8, 7),
        (ConvGeom::same(5, 5, 3, 1, 1).unwrap(), true, 6, 9),
    ];
    for (ci, (geom, bias, h, w)) in cases.into_iter().enumerate() {
        let mut rng = ChaCha8Rng::seed_from_u64(40 + ci as u64);
        let mut ctx = InitCtx::new(&mut rng, &dev);
        let mut slot = Slot::conv(geom, bias, &mut ctx).unwrap();
        slot.grow(
            &*dyrep_ops::main_spec(),
            &applicable(&branches(), &geom),
            &mut ctx,
        )
        .unwrap();
        randomize_slot(&slot, ctx.rng).unwrap();
        let case = FusionCase {
            geom,
            batch: 3,
            h,
            w,
            seed: 0,
        };
        let x =
            candle_core::Var::from_tensor(&random_input(&case, ctx.rng, &dev).unwrap()).unwrap();
        let y0 = slot.forward_t(x.as_tensor(), true).unwrap();
        let r = random_input(
            &FusionCase {
                geom: ConvGeom::same(y0.dim(1).unwrap(), y0.dim(1).unwrap(), 1, 1, 1).unwrap(),
                batch: y0.dim(0).unwrap(),
                h: y0.dim(2).unwrap(),
                w: y0.dim(3).unwrap(),
                seed: 1,
            },
            ctx.rng,
            &dev,
        )
        .unwrap();
        // Two-stage branches pad with constants from running statistics that every train
        // step updates: both runs start from the same statistics.
        let mut snapshot = Vec::new();
        slot.visit_batch_norms("", &mut |_, bn| {
            let e = bn.eval_params().unwrap();
            snapshot.push((e.mean, e.var));
        });
        let restore = || {
            let mut it = snapshot.iter();
            slot.visit_batch_norms("", &mut |_, bn| {
                let (m, v) = it.next().unwrap();
                bn.set_running_stats(m, v).unwrap();
            });
        };
        // The conv unit's BN (random γ, β) and ReLU after the block: the block op takes them in
        // through `forward_bn_t`.
        let unit_bn =
            dyrep_api::BatchNorm::new(geom.out_ch, candle_core::DType::F32, &dev).unwrap();
        let oc = geom.out_ch;
        let gamma: Vec<f32> = (0..oc).map(|i| 0.5 + 0.1 * i as f32).collect();
        let beta: Vec<f32> = (0..oc).map(|i| 0.2 - 0.07 * i as f32).collect();
        unit_bn
            .gamma()
            .set(&candle_core::Tensor::new(gamma, &dev).unwrap())
            .unwrap();
        unit_bn
            .beta()
            .set(&candle_core::Tensor::new(beta, &dev).unwrap())
            .unwrap();
        let unit = ci % 2 == 1;
        let run = |path: Path| {
            restore();
            let forward = || {
                if unit {
                    slot.forward_bn_t(x.as_tensor(), &unit_bn, true, true)
                } else {
                    slot.forward_t(x.as_tensor(), true)
                }
            };
            // The synchronised path needs its all-reduce for the backward pass too.
            let _guard = matches!(path, Path::SyncedOneProcess)
                .then(|| dyrep_api::sync_bn::install(std::rc::Rc::new(OneProcess)));
            let y = match path {
                Path::Branchwise => dyrep_api::branchwise(forward).unwrap(),
                Path::BlockOp | Path::SyncedOneProcess => forward().unwrap(),
            };
            let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let mut g = vec![(
                "input".to_string(),
                grads.get(x.as_tensor()).unwrap().clone(),
            )];
            slot.visit_tensors("", &mut |p, v, _| {
                if let Some(t) = grads.get(v.as_tensor()) {
                    g.push((p.to_string(), t.clone()));
                }
            });
            unit_bn.visit("unit_bn", &mut |p, v, _| {
                if let Some(t) = grads.get(v.as_tensor()) {
                    g.push((p.to_string(), t.clone()));
                }
            });
            (y, g)
        };
        let (yf, gf) = run(Path::BlockOp);
        for other in [Path::Branchwise, Path::SyncedOneProcess] {
            let (yb, gb) = run(other);
            check_same_step(ci, other, &yf, &gf, &yb, &gb);
        }
    }
}

/// How a block's training step runs in [`fused_block_gradients_match_branch_by_branch`].
#[derive(Clone, Copy, Debug)]
enum Path {
    BlockOp,
    Branchwise,
    /// Synchronised batch norm with one process: every BN composed of candle ops around an
    /// all-reduce that is the identity.
    SyncedOneProcess,
}

struct OneProcess;

impl dyrep_api::BatchSync for OneProcess {
    fn all_reduce_sum(&self, _: &mut [f32]) -> Result<(), String> {
        Ok(())
    }
}

type Grads = Vec<(String, candle_core::Tensor)>;

/// The same train-mode output and the same gradients (block op `yf`/`gf` against `yb`/`gb`).
fn check_same_step(
    ci: usize,
    path: Path,
    yf: &candle_core::Tensor,
    gf: &Grads,
    yb: &candle_core::Tensor,
    gb: &Grads,
) {
    {
        let c = compare(yb, yf).unwrap();
        assert!(c.rel <= 1e-5, "case {ci} {path:?}: train-mode output {c:?}");
        assert_eq!(
            gf.iter().map(|g| &g.0).collect::<Vec<_>>(),
            gb.iter().map(|g| &g.0).collect::<Vec<_>>(),
            "case {ci} {path:?}: the same tensors get gradients"
        );
        assert!(gf.len() > 20, "case {ci}: only {} gradients", gf.len());
        let max_abs = |t: &candle_core::Tensor| -> f64 {
            t.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let scale = gb.iter().map(|g| max_abs(&g.1)).fold(0.0, f64::max);
        for ((p, a), (_, b)) in gf.iter().zip(gb) {
            let c = compare(b, a).unwrap();
            // A conv bias before a train-mode BN gets Σ dz ≈ 0: compare it absolutely.
            let ok = if max_abs(b) < 1e-3 * scale {
                c.max_abs <= 1e-5 * scale
            } else {
                c.rel <= 1e-4
            };
            assert!(
                ok,
                "case {ci} {path:?}: gradient of {p}: {c:?} (scale {scale:e})"
            );
        }
    }
}
