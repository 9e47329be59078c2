//! Fusion-equivalence checking (docs/ARCHITECTURE.md "Numerics contract"; docs/REFERENCE.md "Fusion
//! checks"): random geometries that break naive code (groups 1/2/depthwise, k ∈ {1,3,5}, stride
//! 1/2, odd, even and non-square inputs, non-centred padding), random weights and **random BN
//! statistics and affine parameters**, and the comparison of eval-mode multi-branch output against
//! the fused conv. Used by `dyrep verify`, by the property tests and (through `testing`) by plugin
//! authors.

use candle_core::{Device, Tensor};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::geom::ConvGeom;
use crate::init::{normal_tensor, uniform_tensor, InitCtx};
use crate::op::{OpSpec, RepOp, TensorRole, TensorVisitor};
use crate::slot::{join_path, Slot};

/// Acceptance bounds for an output comparison.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// Largest absolute difference allowed.
    pub max_abs: f64,
    /// Largest ‖Δ‖ / ‖y‖ allowed.
    pub rel: f64,
}

/// Fusion: eval-mode multi-branch output vs fused conv, f32 (docs/ARCHITECTURE.md "Numerics
/// contract").
pub const FUSION_TOLERANCE: Tolerance = Tolerance {
    max_abs: 1e-4,
    rel: 1e-5,
};

/// Grow and cut keep the eval-mode output (relative ≤ 2e-5, docs/ARCHITECTURE.md "Numerics
/// contract").
pub const PRESERVE_TOLERANCE: Tolerance = Tolerance {
    max_abs: f64::INFINITY,
    rel: 2e-5,
};

/// The difference between two outputs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Comparison {
    pub max_abs: f64,
    pub rel: f64,
}

impl Comparison {
    pub fn within(&self, tol: &Tolerance) -> bool {
        self.max_abs <= tol.max_abs && self.rel <= tol.rel
    }

    /// Element-wise worst of two comparisons.
    pub fn worst(self, other: Comparison) -> Comparison {
        Comparison {
            max_abs: self.max_abs.max(other.max_abs),
            rel: self.rel.max(other.rel),
        }
    }
}

/// Compares `got` against the reference `want` (same shape), in f64.
pub fn compare(want: &Tensor, got: &Tensor) -> Result<Comparison> {
    if want.dims() != got.dims() {
        return Err(Error::ShapeMismatch {
            context: "output comparison".into(),
            expected: want.dims().to_vec(),
            got: got.dims().to_vec(),
        });
    }
    let a = want
        .to_dtype(candle_core::DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let b = got
        .to_dtype(candle_core::DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let mut max_abs = 0f64;
    let mut diff2 = 0f64;
    let mut norm2 = 0f64;
    for (x, y) in a.iter().zip(&b) {
        let d = (x - y).abs();
        if d.is_nan() {
            return Ok(Comparison {
                max_abs: f64::INFINITY,
                rel: f64::INFINITY,
            });
        }
        max_abs = max_abs.max(d);
        diff2 += d * d;
        norm2 += x * x;
    }
    let rel = if diff2 == 0.0 {
        0.0
    } else if norm2 == 0.0 {
        f64::INFINITY
    } else {
        (diff2 / norm2).sqrt()
    };
    Ok(Comparison { max_abs, rel })
}

/// One random test case: a block geometry, an input size and a seed for every random number
/// (weights, BN statistics, input).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FusionCase {
    pub geom: ConvGeom,
    pub batch: usize,
    pub h: usize,
    pub w: usize,
    pub seed: u64,
}

/// Raw draws a case is made from (proptest shrinks these).
#[derive(Clone, Copy, Debug)]
pub struct RawCase {
    /// Index into {1, 3, 5}.
    pub k_index: usize,
    /// 1 or 2.
    pub stride: usize,
    /// 0: groups 1; 1: groups 2; 2: depthwise (groups = in = out).
    pub groups_kind: usize,
    /// 1..=16 each.
    pub in_ch: usize,
    pub out_ch: usize,
    /// Use padding k/2 (else `padding_raw % k`).
    pub same_padding: bool,
    pub padding_raw: usize,
    /// 5..=12 each; 1..=3.
    pub h: usize,
    pub w: usize,
    pub batch: usize,
    pub seed: u64,
}

impl RawCase {
    /// Draws raw values from `rng`.
    pub fn random(rng: &mut dyn RngCore) -> RawCase {
        RawCase {
            k_index: rng.random_range(0..3),
            stride: rng.random_range(1..=2),
            groups_kind: rng.random_range(0..3),
            in_ch: rng.random_range(1..=16),
            out_ch: rng.random_range(1..=16),
            same_padding: rng.random_bool(0.7),
            padding_raw: rng.random_range(0..5),
            h: rng.random_range(5..=12),
            w: rng.random_range(5..=12),
            batch: rng.random_range(1..=3),
            seed: rng.next_u64(),
        }
    }

    /// The case these draws describe (channels rounded up to a multiple of the groups).
    pub fn to_case(self) -> Result<FusionCase> {
        let k = [1, 3, 5][self.k_index % 3];
        let padding = if self.same_padding {
            k / 2
        } else {
            self.padding_raw % k
        };
        let (in_ch, out_ch, groups) = match self.groups_kind % 3 {
            0 => (self.in_ch, self.out_ch, 1),
            1 => (round_up(self.in_ch, 2), round_up(self.out_ch, 2), 2),
            _ => (self.in_ch, self.in_ch, self.in_ch),
        };
        let geom = ConvGeom::new(in_ch, out_ch, k, self.stride.clamp(1, 2), padding, groups)?;
        Ok(FusionCase {
            geom,
            batch: self.batch.max(1),
            h: self.h,
            w: self.w,
            seed: self.seed,
        })
    }
}

fn round_up(x: usize, m: usize) -> usize {
    x.div_ceil(m) * m
}

/// Draws cases until one satisfies `accept` (at most `tries` draws).
pub fn random_case(
    rng: &mut dyn RngCore,
    tries: usize,
    accept: &dyn Fn(&FusionCase) -> bool,
) -> Option<FusionCase> {
    (0..tries).find_map(|_| {
        let c = RawCase::random(rng).to_case().ok()?;
        (c.geom.output_hw(c.h, c.w).is_ok() && accept(&c)).then_some(c)
    })
}

/// Random values for every tensor by role — never the defaults: conv weights N(0, 1/fan_in),
/// biases U(−.5, .5), BN γ = ±U(.5, 1.5), β, μ ~ U(−.5, .5), σ² ~ U(.5, 2).
pub fn randomize_tensor(
    rng: &mut dyn RngCore,
    var: &candle_core::Var,
    role: TensorRole,
) -> Result<()> {
    let dims = var.dims().to_vec();
    let dev = var.device().clone();
    let t = match role {
        TensorRole::ConvWeight | TensorRole::LinearWeight => {
            let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
            normal_tensor(rng, &dims, 0.0, (1.0 / fan_in as f64).sqrt(), &dev)?
        }
        TensorRole::ConvBias
        | TensorRole::LinearBias
        | TensorRole::BnBias
        | TensorRole::BnRunningMean => uniform_tensor(rng, &dims, -0.5, 0.5, &dev)?,
        TensorRole::BnWeight => {
            let n: usize = dims.iter().product();
            let data: Vec<f32> = (0..n)
                .map(|_| {
                    let mag = rng.random_range(0.5..1.5f32);
                    if rng.random_bool(0.5) {
                        mag
                    } else {
                        -mag
                    }
                })
                .collect();
            Tensor::from_vec(data, dims.as_slice(), &dev)?
        }
        TensorRole::BnRunningVar => uniform_tensor(rng, &dims, 0.5, 2.0, &dev)?,
    };
    Ok(var.set(&t.to_dtype(var.dtype())?)?)
}

/// Randomises every tensor of a slot tree.
pub fn randomize_slot(slot: &Slot, rng: &mut dyn RngCore) -> Result<()> {
    let mut res = Ok(());
    slot.visit_tensors("", &mut |_, v, role| {
        if res.is_ok() {
            res = randomize_tensor(rng, v, role);
        }
    });
    res
}

/// Visits an op's own tensors and those of its child slots.
pub fn visit_op_tensors(op: &dyn RepOp, prefix: &str, f: &mut TensorVisitor<'_>) {
    op.visit_own_tensors(prefix, f);
    for (name, child) in op.child_slots() {
        child.visit_tensors(&join_path(prefix, name), f);
    }
}

/// Randomises every tensor of an op (child slots included).
pub fn randomize_op(op: &dyn RepOp, rng: &mut dyn RngCore) -> Result<()> {
    let mut res = Ok(());
    visit_op_tensors(op, "", &mut |_, v, role| {
        if res.is_ok() {
            res = randomize_tensor(rng, v, role);
        }
    });
    res
}

/// A random input `[batch, in, h, w]` ~ N(0, 1).
pub fn random_input(case: &FusionCase, rng: &mut dyn RngCore, device: &Device) -> Result<Tensor> {
    normal_tensor(
        rng,
        &[case.batch, case.geom.in_ch, case.h, case.w],
        0.0,
        1.0,
        device,
    )
}

/// Builds `spec` in the case's geometry with random parameters and compares the op's eval-mode
/// output with its `to_equivalent_kxk` kernel applied as a conv. Also checks the op's declared
/// name, geometry, kernel shape and γ shape.
pub fn check_op(spec: &dyn OpSpec, case: &FusionCase, device: &Device) -> Result<Comparison> {
    let mut rng = ChaCha8Rng::seed_from_u64(case.seed);
    let g = case.geom;
    let mut ctx = InitCtx::new(&mut rng, device);
    let op = spec.build(&g, &mut ctx)?;
    let contract = |what: String| Error::InvalidArch {
        path: spec.name().to_string(),
        reason: what,
    };
    if op.name() != spec.name() {
        return Err(contract(format!(
            "op name `{}` differs from its spec's",
            op.name()
        )));
    }
    if op.geom() != &g {
        return Err(contract(format!(
            "op geometry {} differs from {g}",
            op.geom()
        )));
    }
    randomize_op(&*op, &mut rng)?;
    let x = random_input(case, &mut rng, device)?;
    let y = op.forward_t(&x, false)?;
    let k = op.to_equivalent_kxk()?;
    if k.weight.dims() != g.weight_shape() {
        return Err(contract(format!(
            "equivalent kernel has shape {:?}, expected {:?}",
            k.weight.dims(),
            g.weight_shape()
        )));
    }
    if op.bn_gamma()?.dims() != [g.out_ch] {
        return Err(contract(
            "bn_gamma must have one entry per output channel".into(),
        ));
    }
    let yk = k.conv(&x, g.stride, g.padding, g.groups)?;
    compare(&y, &yk)
}

/// Which slots of a block to grow again, with which candidate ops (inapplicable ones skipped).
#[derive(Clone, Debug)]
pub struct NestPlan {
    /// Path of the inner slot, relative to the block (e.g. `convkxk.conv`).
    pub path: String,
    pub branches: Vec<Box<dyn OpSpec>>,
}

/// What a block check measured.
#[derive(Clone, Debug, Default)]
pub struct BlockReport {
    /// Eval output before vs after each grow (outer and nested), worst.
    pub grow: Comparison,
    /// Eval output before vs after cutting one branch, worst (absent: nothing to cut).
    pub cut: Option<Comparison>,
    /// Multi-branch output vs equivalent kernel, and vs the fused slot, worst.
    pub fusion: Comparison,
    /// Fusing a fused slot changed nothing (bitwise).
    pub idempotent: bool,
    /// Branch names of the outer block (main first) and the number of blocks in the tree.
    pub branches: Vec<String>,
    pub blocks: usize,
}

impl BlockReport {
    /// Every measured quantity within its tolerance.
    pub fn passed(&self) -> bool {
        self.fusion.within(&FUSION_TOLERANCE)
            && self.grow.within(&PRESERVE_TOLERANCE)
            && self.cut.is_none_or(|c| c.within(&PRESERVE_TOLERANCE))
            && self.idempotent
    }
}

/// Grows a random plain conv into a block (`main` + every applicable spec of `branches`), grows
/// the inner slots of `nest`, randomises every tensor (BN statistics included) and checks:
/// grow keeps the eval output, the block's output equals its fused conv, fusing is idempotent,
/// and cutting the first non-main branch keeps the output.
pub fn check_block(
    main: &dyn OpSpec,
    branches: &[Box<dyn OpSpec>],
    nest: &[NestPlan],
    case: &FusionCase,
    device: &Device,
) -> Result<BlockReport> {
    let mut rng = ChaCha8Rng::seed_from_u64(case.seed);
    let g = case.geom;
    let mut slot = {
        let mut ctx = InitCtx::new(&mut rng, device);
        Slot::conv(g, rng_bias(&mut ctx), &mut ctx)?
    };
    randomize_slot(&slot, &mut rng)?;
    let x = random_input(case, &mut rng, device)?;
    let mut report = BlockReport::default();

    let before = slot.forward_t(&x, false)?;
    let applicable = |specs: &[Box<dyn OpSpec>], geom: &ConvGeom| -> Vec<Box<dyn OpSpec>> {
        specs
            .iter()
            .filter(|s| s.check(geom).is_ok())
            .cloned()
            .collect()
    };
    {
        let mut ctx = InitCtx::new(&mut rng, device);
        slot.grow(main, &applicable(branches, &g), &mut ctx)?;
    }
    report.grow = compare(&before, &slot.forward_t(&x, false)?)?;

    for plan in nest {
        // Randomise first so the nested grow starts from a non-trivial state.
        randomize_slot(&slot, &mut rng)?;
        let before = slot.forward_t(&x, false)?;
        let (inner, _) = slot.slot_mut(&plan.path)?;
        let ig = *inner.geom();
        let specs = applicable(&plan.branches, &ig);
        {
            let mut ctx = InitCtx::new(&mut rng, device);
            inner.grow(main, &specs, &mut ctx)?;
        }
        let c = compare(&before, &slot.forward_t(&x, false)?)?;
        report.grow = report.grow.worst(c);
    }

    randomize_slot(&slot, &mut rng)?;
    if let Slot::Block(b) = &slot {
        report.branches = b.branch_names().iter().map(|s| s.to_string()).collect();
    }
    report.blocks = slot.block_count();

    // Fusion: multi-branch vs equivalent kernel vs fused slot.
    let y = slot.forward_t(&x, false)?;
    let k = slot.equivalent()?;
    let yk = k.conv(&x, g.stride, g.padding, g.groups)?;
    report.fusion = compare(&y, &yk)?;

    // Dep: cut the first non-main branch; its kernel goes into the main branch (and through a
    // nested main block down to its conv), so the output must not move.
    let cut_name = slot
        .as_block()
        .and_then(|b| b.branches().first().map(|op| op.name()));
    if let (Some(name), Slot::Block(b)) = (cut_name, &mut slot) {
        b.cut(name)?;
        report.cut = Some(compare(&y, &slot.forward_t(&x, false)?)?);
    }

    let y_cut = slot.forward_t(&x, false)?;
    slot.fuse()?;
    let y_fused = slot.forward_t(&x, false)?;
    report.fusion = report.fusion.worst(compare(&y_cut, &y_fused)?);
    let k1 = slot.equivalent()?;
    let changed = slot.fuse()?;
    let k2 = slot.equivalent()?;
    report.idempotent =
        !changed && bitwise_equal(&k1.weight, &k2.weight)? && bitwise_equal(&k1.bias, &k2.bias)?;
    Ok(report)
}

fn rng_bias(ctx: &mut InitCtx<'_>) -> bool {
    ctx.rng.random_bool(0.5)
}

fn bitwise_equal(a: &Tensor, b: &Tensor) -> Result<bool> {
    if a.dims() != b.dims() {
        return Ok(false);
    }
    let a = a.flatten_all()?.to_vec1::<f32>()?;
    let b = b.flatten_all()?.to_vec1::<f32>()?;
    Ok(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_reports_abs_and_rel() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[3.0f32, 4.0], &dev).unwrap();
        let b = Tensor::new(&[3.0f32, 4.5], &dev).unwrap();
        let c = compare(&a, &b).unwrap();
        assert!((c.max_abs - 0.5).abs() < 1e-9);
        assert!((c.rel - 0.1).abs() < 1e-9);
        assert_eq!(compare(&a, &a).unwrap(), Comparison::default());
        let nan = Tensor::new(&[f32::NAN, 4.0], &dev).unwrap();
        assert!(!compare(&a, &nan).unwrap().within(&FUSION_TOLERANCE));
    }

    #[test]
    fn raw_cases_cover_the_geometry_space() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let cases: Vec<FusionCase> = (0..400)
            .filter_map(|_| random_case(&mut rng, 10, &|_| true))
            .collect();
        assert!(cases
            .iter()
            .any(|c| c.geom.is_depthwise() && c.geom.in_ch > 1));
        assert!(cases.iter().any(|c| c.geom.groups == 2));
        assert!(cases.iter().any(|c| c.geom.stride == 2));
        assert!(cases.iter().any(|c| !c.geom.is_same_padding()));
        assert!(cases.iter().any(|c| c.h != c.w && (c.h % 2) != (c.w % 2)));
        for k in [1, 3, 5] {
            assert!(cases.iter().any(|c| c.geom.k == k));
        }
        assert!(cases.iter().all(|c| c.geom.validate().is_ok()));
    }

    #[test]
    fn randomized_bn_is_never_default() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let v = candle_core::Var::ones(64, candle_core::DType::F32, &Device::Cpu).unwrap();
        randomize_tensor(&mut rng, &v, TensorRole::BnWeight).unwrap();
        let g = v.as_tensor().to_vec1::<f32>().unwrap();
        assert!(g.iter().all(|x| x.abs() >= 0.5 && x.abs() <= 1.5));
        assert!(g.iter().any(|x| *x < 0.0) && g.iter().any(|x| *x > 0.0));
        randomize_tensor(&mut rng, &v, TensorRole::BnRunningVar).unwrap();
        let s = v.as_tensor().to_vec1::<f32>().unwrap();
        assert!(s.iter().all(|x| *x >= 0.5 && *x <= 2.0 && *x != 1.0));
    }
}
