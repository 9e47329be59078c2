//! Checks of the online block form (docs/REFERENCE.md "The online form"; `form.rs`): a block grown
//! in the online form, with random weights, scales and shifts (and random batch-norm statistics,
//! which the form must ignore), trained one step's worth in f32 — one conv with the kernel
//! assembled from the live branch tensors — against the same block computed branch by branch
//! (conv, scale, sum; the two-stage branches stage by stage) in f64. Used by the property tests
//! of every registered op and, through `testing`, by plugin authors.
//!
//! The gradient bound is derived, not tuned: an f32 sum-of-products evaluated in any order
//! errs by at most `γ_n·Σ|terms|` with `γ_n ≈ n·2⁻²⁴` (n the longest chain of roundings), and
//! `Σ|terms|` of every output and gradient element is what the same f64 reference computes when
//! every tensor, the input and the upstream gradient are replaced by their absolute values (each
//! product then counts with its magnitude; the composition has only sums and products — scales
//! fold with σ² = 1 and ε = 0). `n` is bounded by the block's parameter count (the assembly
//! sums over no more terms than there are parameters) plus the conv's reductions (`in/groups·k²`
//! forward, `batch·Ho·Wo` for the weight gradient) plus a constant for elementwise steps.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::equivalence::{
    compare, random_input, randomize_slot, Comparison, FusionCase, NestPlan, FUSION_TOLERANCE,
    PRESERVE_TOLERANCE,
};
use crate::error::Result;
use crate::form::BlockForm;
use crate::init::InitCtx;
use crate::op::OpSpec;
use crate::slot::{exec::branchwise, Slot};

/// What an online-form check measured.
#[derive(Clone, Debug, Default)]
pub struct OnlineReport {
    /// Train-mode output before vs after each grow (outer and nested), worst: the online form
    /// keeps the assembled kernel, so the training output too.
    pub grow: Comparison,
    /// Train-mode output before vs after cutting the first non-main branch.
    pub cut: Option<Comparison>,
    /// The fused plain conv (eval) vs the online block's train-mode output.
    pub fusion: Comparison,
    /// Largest |f32 online − f64 branch by branch| / bound over the output's elements.
    pub forward_ratio: f64,
    /// Largest |f32 online − f64 branch by branch| / bound over every gradient element of
    /// every trainable tensor; ≤ 1 passes.
    pub grad_ratio: f64,
    /// Where `grad_ratio` was reached (`path[index]: got vs want, bound`).
    pub worst_grad: String,
    /// Trainable tensors compared, and how many of them had a non-zero reference gradient.
    pub tensors: usize,
    pub tensors_with_grad: usize,
    /// Branch names of the outer block (main first) and the number of blocks in the tree.
    pub branches: Vec<String>,
    pub blocks: usize,
}

impl OnlineReport {
    /// Every measured quantity within its bound.
    pub fn passed(&self) -> bool {
        self.grow.within(&PRESERVE_TOLERANCE)
            && self.cut.is_none_or(|c| c.within(&PRESERVE_TOLERANCE))
            && self.fusion.within(&FUSION_TOLERANCE)
            && self.forward_ratio <= 1.0
            && self.grad_ratio <= 1.0
    }
}

/// One twin of the tree: the slot, its input and the upstream gradient, in `dtype`.
struct Twin {
    slot: Slot,
    x: Tensor,
    r: Tensor,
    grow: Comparison,
}

/// Builds the tree in the online form in `dtype` from the case's seed: a random plain conv,
/// grown into `main` + every applicable branch, inner slots grown per `nest`, then every tensor
/// randomised. The same seed gives the same values in f32 and f64 (drawn in f32, widened).
fn build_twin(
    main: &dyn OpSpec,
    branches: &[Box<dyn OpSpec>],
    nest: &[NestPlan],
    case: &FusionCase,
    dtype: DType,
    device: &Device,
) -> Result<Twin> {
    let mut rng = ChaCha8Rng::seed_from_u64(case.seed);
    let g = case.geom;
    let applicable = |specs: &[Box<dyn OpSpec>], geom: &crate::geom::ConvGeom| {
        specs
            .iter()
            .filter(|s| s.check(geom).is_ok())
            .cloned()
            .collect::<Vec<_>>()
    };
    let bias = rng.random_bool(0.5);
    let mut slot = {
        let mut ctx = InitCtx::new(&mut rng, device);
        ctx.dtype = dtype;
        Slot::conv(g, bias, &mut ctx)?
    };
    randomize_slot(&slot, &mut rng)?;
    let x = random_input(case, &mut rng, device)?.to_dtype(dtype)?;
    let before = slot.forward_t(&x, true)?;
    {
        let mut ctx = InitCtx::new(&mut rng, device);
        (ctx.dtype, ctx.block_form) = (dtype, BlockForm::Online);
        slot.grow(main, &applicable(branches, &g), &mut ctx)?;
    }
    let mut grow = compare(&before, &slot.forward_t(&x, true)?)?;
    for plan in nest {
        randomize_slot(&slot, &mut rng)?;
        let before = slot.forward_t(&x, true)?;
        let (inner, _) = slot.slot_mut(&plan.path)?;
        let specs = applicable(&plan.branches, inner.geom());
        {
            let mut ctx = InitCtx::new(&mut rng, device);
            (ctx.dtype, ctx.block_form) = (dtype, BlockForm::Online);
            inner.grow(main, &specs, &mut ctx)?;
        }
        grow = grow.worst(compare(&before, &slot.forward_t(&x, true)?)?);
    }
    randomize_slot(&slot, &mut rng)?;
    let y = slot.forward_t(&x, true)?;
    let r = crate::init::normal_tensor(&mut rng, y.dims(), 0.0, 1.0, device)?.to_dtype(dtype)?;
    Ok(Twin { slot, x, r, grow })
}

/// Replaces every tensor of the twin, its input and its upstream gradient by absolute values.
fn make_absolute(t: &mut Twin) -> Result<()> {
    let mut res: candle_core::Result<()> = Ok(());
    t.slot.visit_tensors("", &mut |_, v, _| {
        if res.is_ok() {
            res = v.as_tensor().abs().and_then(|a| v.set(&a));
        }
    });
    res?;
    t.x = t.x.abs()?;
    t.r = t.r.abs()?;
    Ok(())
}

/// Train-mode output and the gradients of `Σ y·r`, branch by branch when `reference`.
fn run(t: &Twin, reference: bool) -> Result<(Tensor, GradStore)> {
    let forward = || t.slot.forward_t(&t.x, true);
    let y = if reference {
        branchwise(forward)?
    } else {
        forward()?
    };
    let grads = (&y * &t.r)?.sum_all()?.backward()?;
    Ok((y, grads))
}

fn values(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

/// Largest |got − want| / (n·u·mag + tiny) over the elements, with where it happened.
fn worst_ratio(got: &[f64], want: &[f64], mag: &[f64], n: f64) -> (f64, usize, f64) {
    let u = f64::from(f32::EPSILON) / 2.0;
    let mut worst = (0.0, 0, 0.0);
    for (i, ((g, w), m)) in got.iter().zip(want).zip(mag).enumerate() {
        let bound = n * u * m + f64::from(f32::MIN_POSITIVE);
        let ratio = (g - w).abs() / bound;
        if ratio > worst.0 || ratio.is_nan() {
            worst = (if ratio.is_nan() { f64::INFINITY } else { ratio }, i, bound);
        }
    }
    worst
}

/// Grows a block in the online form (`main` + every applicable spec, nested per `nest`), with
/// random tensors, and checks: grow and cut keep the train-mode output; the fused conv equals
/// the online block; the online f32 forward and the gradient of every trainable tensor equal
/// the f64 branch-by-branch composition within the derived bound (module docs).
pub fn check_online_block(
    main: &dyn OpSpec,
    branches: &[Box<dyn OpSpec>],
    nest: &[NestPlan],
    case: &FusionCase,
    device: &Device,
) -> Result<OnlineReport> {
    let online = build_twin(main, branches, nest, case, DType::F32, device)?;
    let reference = build_twin(main, branches, nest, case, DType::F64, device)?;
    let mut magnitude = build_twin(main, branches, nest, case, DType::F64, device)?;
    make_absolute(&mut magnitude)?;
    let mut report = OnlineReport {
        grow: online.grow,
        blocks: online.slot.block_count(),
        ..Default::default()
    };
    if let Slot::Block(b) = &online.slot {
        report.branches = b.branch_names().iter().map(|s| s.to_string()).collect();
    }

    let (y, grads) = run(&online, false)?;
    let (y_ref, grads_ref) = run(&reference, true)?;
    let (y_mag, grads_mag) = run(&magnitude, true)?;
    let g = case.geom;
    let (ho, wo) = g.output_hw(case.h, case.w)?;
    let params = online.slot.param_count() as f64;
    let n = params + (g.in_per_group() * g.k * g.k + case.batch * ho * wo) as f64 + 16.0;
    report.forward_ratio = worst_ratio(&values(&y)?, &values(&y_ref)?, &values(&y_mag)?, n).0;

    let tensors = |s: &Slot| {
        let mut v = Vec::new();
        s.visit_tensors("", &mut |p, var, role| {
            if role.is_trainable() {
                v.push((p.to_string(), var.clone()));
            }
        });
        v
    };
    let (a, b, c) = (
        tensors(&online.slot),
        tensors(&reference.slot),
        tensors(&magnitude.slot),
    );
    for (((path, va), (_, vb)), (_, vc)) in a.iter().zip(&b).zip(&c) {
        let grad = |store: &GradStore, v: &candle_core::Var| -> Result<Vec<f64>> {
            match store.get(v.as_tensor()) {
                Some(t) => values(t),
                None => Ok(vec![0.0; v.elem_count()]),
            }
        };
        let (ga, gb, gc) = (
            grad(&grads, va)?,
            grad(&grads_ref, vb)?,
            grad(&grads_mag, vc)?,
        );
        report.tensors += 1;
        if gb.iter().any(|x| *x != 0.0) {
            report.tensors_with_grad += 1;
        }
        let (ratio, i, bound) = worst_ratio(&ga, &gb, &gc, n);
        if ratio > report.grad_ratio || report.worst_grad.is_empty() {
            report.grad_ratio = ratio;
            report.worst_grad = format!("{path}[{i}]: {:e} vs {:e}, bound {bound:e}", ga[i], gb[i]);
        }
    }

    let mut slot = online.slot;
    let y_train = slot.forward_t(&online.x, true)?;
    let cut_name = slot
        .as_block()
        .and_then(|b| b.branches().first().map(|op| op.name()));
    if let (Some(name), Slot::Block(b)) = (cut_name, &mut slot) {
        b.cut(name)?;
        report.cut = Some(compare(&y_train, &slot.forward_t(&online.x, true)?)?);
    }
    let y_cut = slot.forward_t(&online.x, true)?;
    slot.fuse()?;
    report.fusion = compare(&y_cut, &slot.forward_t(&online.x, false)?)?;
    Ok(report)
}
