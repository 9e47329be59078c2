//! Property tests of every own CPU kernel: forward, input gradient and
//! weight/parameter gradients against an f64 naive reference (convs: every shape, including
//! stride 2 on non-square inputs of mixed parity, where candle's own backward fails) and
//! against candle's ops (everything else, and convs where candle's backward works). Random
//! shapes, random data, random upstream gradients; relative error ≤ 1e-5 in f32.
//!
//! The cases come from a fixed seed (`dyrep_kernels::testing`: `PROPTEST_RNG_SEED` draws
//! others, and every test prints the seed it used). The kernels run at the tier `DYREP_ISA`
//! allows (CI runs this file at every tier the machine has); the direct conv's test says it
//! skipped where the tier has no direct kernel.

use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use dyrep_kernels::{
    batch_norm_train_on, block_train_on, channel_affine_on, conv2d_on, conv_bn_max_pool_train_on,
    conv_bn_stack_train_on, conv_bn_train_on, pad_const_on, pool2d_on, relu_on, Backend,
    BlockBranch, BlockStage, BlockTail, ConvParams, ConvShape, MaxPoolParams, PadFrom, PoolKind,
    StackUnitArgs, StageOp,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const TOL: f64 = 1e-5;

/// A block branch in the block test: the conv (weight argument, kh, kw) or the identity
/// (`None`), and the index of its γ argument (β follows).
type BranchArgs = (Option<(usize, usize, usize)>, usize);

/// Deterministic pseudo-random floats in [-1, 1) from a seed (proptest picks the seed).
fn data(seed: u64, len: usize, offset: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0 + offset
        })
        .collect()
}

/// Conv weights in ±[0.25, 1]: a near-zero weight feeding a BN through few inputs makes the
/// BN's gradients ill-conditioned in f32 for every implementation (σ² ≈ ε).
fn weights(seed: u64, len: usize) -> Vec<f32> {
    data(seed, len, 0.0)
        .into_iter()
        .map(|v| v.signum() * (0.25 + 0.75 * v.abs()))
        .collect()
}

fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-3);
    let diff = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (a, b)| m.max((*a as f64 - b).abs()));
    diff / scale
}

fn check(what: &str, got: &Tensor, want: &[f64]) -> Result<(), TestCaseError> {
    let got = got
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(got.len(), want.len(), "{} length", what);
    let e = rel_err(&got, want);
    prop_assert!(e <= TOL, "{what}: relative error {e:e}");
    Ok(())
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// Naive f64 conv: forward, input gradient and weight gradient for upstream `g`.
/// Each output also comes with the largest sum of its terms' magnitudes: what f32 rounding is
/// relative to when the terms cancel.
#[allow(clippy::type_complexity)]
fn naive_conv(
    s: &ConvShape,
    x: &[f32],
    w: &[f32],
    g: &[f32],
) -> ((Vec<f64>, f64), (Vec<f64>, f64), (Vec<f64>, f64)) {
    let (cg, og) = (s.c / s.groups, s.out / s.groups);
    let mut y = vec![0.0f64; s.n * s.out * s.ho * s.wo];
    let mut dx = vec![0.0f64; x.len()];
    let mut dw = vec![0.0f64; w.len()];
    let (mut ya, mut dxa, mut dwa) = (y.clone(), dx.clone(), dw.clone());
    for n in 0..s.n {
        for o in 0..s.out {
            let grp = o / og;
            for oy in 0..s.ho {
                for ox in 0..s.wo {
                    let yi = ((n * s.out + o) * s.ho + oy) * s.wo + ox;
                    for ci in 0..cg {
                        let c = grp * cg + ci;
                        for ky in 0..s.kh {
                            for kx in 0..s.kw {
                                let iy = (oy * s.stride + ky) as isize - s.ph as isize;
                                let ix = (ox * s.stride + kx) as isize - s.pw as isize;
                                if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                                    continue;
                                }
                                let xi = ((n * s.c + c) * s.h + iy as usize) * s.w + ix as usize;
                                let wi = ((o * cg + ci) * s.kh + ky) * s.kw + kx;
                                let (xv, wv, gv) = (x[xi] as f64, w[wi] as f64, g[yi] as f64);
                                y[yi] += xv * wv;
                                dx[xi] += gv * wv;
                                dw[wi] += gv * xv;
                                ya[yi] += (xv * wv).abs();
                                dxa[xi] += (gv * wv).abs();
                                dwa[wi] += (gv * xv).abs();
                            }
                        }
                    }
                }
            }
        }
    }
    let top = |v: &[f64]| v.iter().fold(0.0f64, |m, a| m.max(*a));
    ((y, top(&ya)), (dx, top(&dxa)), (dw, top(&dwa)))
}

/// Like [`check`], relative to a given scale (the terms' magnitudes) instead of the result's.
fn check_scaled(
    what: &str,
    got: &Tensor,
    (want, scale): &(Vec<f64>, f64),
) -> Result<(), TestCaseError> {
    let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    prop_assert_eq!(got.len(), want.len(), "{} length", what);
    let diff = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (a, b)| m.max((*a as f64 - b).abs()));
    let e = diff / scale.max(1e-3);
    prop_assert!(
        e <= TOL,
        "{what}: error {e:e} relative to the terms' magnitudes"
    );
    Ok(())
}

/// The unit roundoff of f32.
const F32_U: f64 = f32::EPSILON as f64 / 2.0;

/// A bound on `max |a − b|` between two f32 evaluations of the same chain of conv → BN (batch
/// statistics) → ReLU? → max pool? units that sum each conv in a different order.
///
/// Per unit `l` with `K` = c·kh·kw terms per output: each evaluation's conv rounding is at most
/// `K·u·S` (S = the largest `Σ|w·x|` of an output, u = 2⁻²⁴), and the error `e` carried in from
/// the unit before adds at most `W·e` (W = the largest `Σ|w|` of a filter): `δz ≤ 2·K·u·S + W·e`.
/// The BN maps `z` to `γ(z − μ)/σ + β`; with `δμ ≤ δz` and `δσ/σ ≤ δz·r/σ` (r = the largest
/// `|z − μ|/σ` in the channel, measured), `δy ≤ |γ|/σ · δz · (2 + r²)`. ReLU and max pool do not
/// grow an error. Second-order terms are covered by the factor 2 on the result. Everything
/// is measured on the reference evaluation (`inputs`: each unit's input; `stats`: mean, var).
fn stack_error_bound(
    inputs: &[Tensor],
    units: &[(&Tensor, ConvParams, &Tensor)],
    stats: &[(Tensor, Tensor)],
) -> f64 {
    let mut e = 0.0f64;
    for ((x, (w, conv, gamma)), (mean, var)) in inputs.iter().zip(units).zip(stats) {
        let (out, cg, kh, kw) = w.dims4().unwrap();
        let k_terms = (cg * kh * kw) as f64;
        let conv_of = |x: &Tensor, w: &Tensor| {
            conv2d_on(Backend::Own, x, w, conv.stride, conv.padding, conv.groups).unwrap()
        };
        let s = conv_of(&x.abs().unwrap(), &w.abs().unwrap());
        let z = conv_of(x, w);
        let wv = w
            .abs()
            .unwrap()
            .flatten_from(1)
            .unwrap()
            .sum(1)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let (mean, var) = (
            mean.to_vec1::<f32>().unwrap(),
            var.to_vec1::<f32>().unwrap(),
        );
        let gamma = gamma.to_vec1::<f32>().unwrap();
        // Per output channel c: the conv error, then the BN's gain.
        let z = z
            .transpose(0, 1)
            .unwrap()
            .flatten_from(1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let s = s
            .transpose(0, 1)
            .unwrap()
            .flatten_from(1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let mut next = 0.0f64;
        for c in 0..out {
            let s_max = s[c].iter().fold(0.0f64, |m, &v| m.max(v as f64));
            let dz = 2.0 * k_terms * F32_U * s_max + wv[c] as f64 * e;
            let sigma = (var[c] as f64 + 1e-5).sqrt();
            let r = z[c]
                .iter()
                .fold(0.0f64, |m, &v| m.max((v as f64 - mean[c] as f64).abs()))
                / sigma;
            next = next.max((gamma[c] as f64).abs() / sigma * dz * (2.0 + r * r));
        }
        e = next;
    }
    2.0 * e
}

/// Forward and gradients (w.r.t. every argument) of `sum(f(args) * g)`.
fn run_with_grads(
    args: &[Tensor],
    upstream_seed: u64,
    f: impl Fn(&[Tensor]) -> Tensor,
) -> (Tensor, Vec<Tensor>, Vec<f32>) {
    let vars: Vec<Var> = args.iter().map(|a| Var::from_tensor(a).unwrap()).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts);
    let g = data(upstream_seed, y.elem_count(), 0.0);
    let gt = Tensor::from_vec(g.clone(), y.dims(), &Device::Cpu).unwrap();
    let grads = (&y * &gt).unwrap().sum_all().unwrap().backward().unwrap();
    let gs = vars
        .iter()
        .map(|v| grads.get(v).expect("gradient").clone())
        .collect();
    (y, gs, g)
}

fn conv_case() -> impl Strategy<Value = (ConvShape, u64)> {
    (
        1usize..4,                                   // n
        prop_oneof![Just(0usize), Just(1), Just(2)], // groups: 1, 2, depthwise
        1usize..4,                                   // in per group
        1usize..4,                                   // out per group
        prop_oneof![Just(1usize), Just(2), Just(3), Just(5)],
        prop_oneof![Just(1usize), Just(2), Just(3), Just(5)],
        1usize..4, // stride
        (0usize..3, 0usize..3),
        (1usize..12, 1usize..12),
        any::<u64>(),
    )
        .prop_filter_map(
            "shape must fit",
            |(n, gsel, cg, og, kh, kw, stride, (ph, pw), (h, w), seed)| {
                let (groups, cg) = match gsel {
                    0 => (1, cg),
                    1 => (2, cg),
                    _ => (cg + 1, 1), // depthwise: one input per group
                };
                let (ph, pw) = (ph.min(kh / 2 + 1), pw.min(kw / 2 + 1));
                ConvShape::new(
                    &[n, cg * groups, h, w],
                    &[og * groups, cg, kh, kw],
                    stride,
                    (ph, pw),
                    groups,
                )
                .ok()
                .map(|s| (s, seed))
            },
        )
}

/// Convs the direct kernels take (stride 1, one group, 8 or 16 outputs, planes of
/// 12-30): its forward, and its input gradient when the input has 8 or 16 channels.
fn direct_conv_case() -> impl Strategy<Value = (ConvShape, u64)> {
    (
        2usize..4,
        prop_oneof![Just(1usize), Just(3), Just(8), Just(16)],
        prop_oneof![Just(8usize), Just(16)],
        prop_oneof![
            Just((3usize, 3usize)),
            Just((1, 3)),
            Just((3, 1)),
            Just((5, 5)),
            Just((1, 5))
        ],
        (0usize..3, 0usize..3),
        (12usize..31, 12usize..31),
        any::<u64>(),
    )
        .prop_filter_map(
            "shape must fit",
            |(n, c, out, (kh, kw), (ph, pw), (h, w), seed)| {
                let (ph, pw) = (ph.min(kh - 1), pw.min(kw - 1));
                ConvShape::new(&[n, c, h, w], &[out, c, kh, kw], 1, (ph, pw), 1)
                    .ok()
                    .map(|s| (s, seed))
            },
        )
}

/// 96 cases from the fixed seed (`PROPTEST_CASES`, `PROPTEST_RNG_SEED`).
fn config() -> Config {
    Config {
        // Shape filters reject about a third of the draws.
        max_global_rejects: 1 << 16,
        ..dyrep_kernels::testing::proptest_config(96)
    }
}

/// The direct conv on the active tier: its forward and both gradients against the naive
/// reference. Runs only where the tier has a direct kernel (AVX2 or AVX-512) and says that it
/// skipped elsewhere.
#[test]
fn direct_conv_matches_naive_reference() {
    let Some(tier) = dyrep_kernels::direct_conv_tier() else {
        eprintln!(
            "skipped: no direct conv kernel at tier {} (DYREP_ISA / DYREP_CONV_DIRECT)",
            dyrep_kernels::isa::active()
        );
        return;
    };
    eprintln!("direct conv kernel: {tier}");
    let mut runner = TestRunner::new(config());
    let result = runner.run(&direct_conv_case(), |(s, seed)| {
        // Small planes stay lowered (the padded grid wastes more than 30 %).
        prop_assume!(s.runs_direct());
        let dev = Device::Cpu;
        let x = data(seed, s.n * s.c * s.h * s.w, 0.0);
        let w = data(seed ^ 1, s.out * s.c * s.kh * s.kw, 0.0);
        let xt = Tensor::from_vec(x.clone(), (s.n, s.c, s.h, s.w), &dev).unwrap();
        let wt = Tensor::from_vec(w.clone(), (s.out, s.c, s.kh, s.kw), &dev).unwrap();
        let (y, grads, g) = run_with_grads(&[xt, wt], seed ^ 2, |a| {
            conv2d_on(Backend::Own, &a[0], &a[1], 1, (s.ph, s.pw), 1).unwrap()
        });
        let (ny, ndx, ndw) = naive_conv(&s, &x, &w, &g);
        check_scaled("forward", &y, &ny)?;
        check_scaled("input gradient", &grads[0], &ndx)?;
        check_scaled("weight gradient", &grads[1], &ndw)?;
        Ok(())
    });
    if let Err(e) = result {
        panic!(
            "{e}\n(replay: PROPTEST_RNG_SEED={})",
            dyrep_kernels::testing::rng_seed()
        );
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn conv2d_forward_and_gradients_match_naive_reference((s, seed) in conv_case()) {
        let dev = Device::Cpu;
        let x = data(seed, s.n * s.c * s.h * s.w, 0.0);
        let w = data(seed ^ 1, s.out * (s.c / s.groups) * s.kh * s.kw, 0.0);
        let xt = Tensor::from_vec(x.clone(), (s.n, s.c, s.h, s.w), &dev).unwrap();
        let wt = Tensor::from_vec(w.clone(), (s.out, s.c / s.groups, s.kh, s.kw), &dev).unwrap();
        let (y, grads, g) = run_with_grads(&[xt, wt], seed ^ 2, |a| {
            conv2d_on(Backend::Own, &a[0], &a[1], s.stride, (s.ph, s.pw), s.groups).unwrap()
        });
        let (ny, ndx, ndw) = naive_conv(&s, &x, &w, &g);
        prop_assert_eq!(y.dims(), &s.output_dims()[..]);
        check_scaled("forward", &y, &ny)?;
        check_scaled("input gradient", &grads[0], &ndx)?;
        check_scaled("weight gradient", &grads[1], &ndw)?;
    }

    #[test]
    fn conv2d_matches_candle_where_candle_backward_works((s, seed) in conv_case()) {
        // candle's conv backward takes the output padding of its transposed conv from H alone, so
        // it breaks for stride > 1 when H and W leave different remainders; its forward is compared
        // everywhere.
        let remainders_agree = s.stride == 1
            || (s.h + 2 * s.ph - s.kh) % s.stride == (s.w + 2 * s.pw - s.kw) % s.stride;
        // ... and it underflows (a debug-build panic) when its own padding exceeds what the
        // transposed conv's output covers.
        let no_underflow = s.ph != s.pw || (s.ho - 1) * s.stride + s.kh >= 2 * s.ph;
        let candle_bwd_ok = remainders_agree && no_underflow;
        let dev = Device::Cpu;
        let xt = Tensor::from_vec(data(seed, s.n * s.c * s.h * s.w, 0.0), (s.n, s.c, s.h, s.w), &dev).unwrap();
        let wt = Tensor::from_vec(
            data(seed ^ 1, s.out * (s.c / s.groups) * s.kh * s.kw, 0.0),
            (s.out, s.c / s.groups, s.kh, s.kw),
            &dev,
        ).unwrap();
        let run = |b: Backend| run_with_grads(&[xt.clone(), wt.clone()], seed ^ 2, |a| {
            conv2d_on(b, &a[0], &a[1], s.stride, (s.ph, s.pw), s.groups).unwrap()
        });
        if candle_bwd_ok {
            let (y, grads, g) = run(Backend::Own);
            let (cy, cgrads, _) = run(Backend::Candle);
            check("forward", &y, &to_f64(&cy))?;
            // Gradients are sums that can cancel (a 1×1 weight gradient is one sum over every
            // pixel): both f32 results are compared relative to the magnitude of their terms.
            let xs = xt.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let ws = wt.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (_, (_, dx_scale), (_, dw_scale)) = naive_conv(&s, &xs, &ws, &g);
            check_scaled("input gradient", &grads[0], &(to_f64(&cgrads[0]), dx_scale))?;
            check_scaled("weight gradient", &grads[1], &(to_f64(&cgrads[1]), dw_scale))?;
        } else {
            let y = conv2d_on(Backend::Own, &xt, &wt, s.stride, (s.ph, s.pw), s.groups).unwrap();
            let cy = conv2d_on(Backend::Candle, &xt, &wt, s.stride, (s.ph, s.pw), s.groups).unwrap();
            check("forward", &y, &to_f64(&cy))?;
        }
    }

    #[test]
    fn fused_conv_bn_relu_matches_the_separate_kernels((s, seed) in conv_case(), relu in any::<bool>()) {
        prop_assume!(s.n * s.ho * s.wo >= 2);
        let dev = Device::Cpu;
        let xt = Tensor::from_vec(data(seed, s.n * s.c * s.h * s.w, 0.0), (s.n, s.c, s.h, s.w), &dev).unwrap();
        let wt = Tensor::from_vec(
            data(seed ^ 1, s.out * (s.c / s.groups) * s.kh * s.kw, 0.0),
            (s.out, s.c / s.groups, s.kh, s.kw),
            &dev,
        ).unwrap();
        let gamma = Tensor::from_vec(data(seed ^ 3, s.out, 0.0), s.out, &dev).unwrap();
        let beta = Tensor::from_vec(data(seed ^ 4, s.out, 0.0), s.out, &dev).unwrap();
        let params = ConvParams { stride: s.stride, padding: (s.ph, s.pw), groups: s.groups };
        let args = [xt, wt, gamma, beta];
        let (fused, fg, _) = run_with_grads(&args, seed ^ 5, |a| {
            conv_bn_train_on(Backend::Own, &a[0], &a[1], params, &a[2], &a[3], 1e-5, relu).unwrap().y
        });
        let (sep, sg, _) = run_with_grads(&args, seed ^ 5, |a| {
            let z = conv2d_on(Backend::Own, &a[0], &a[1], s.stride, (s.ph, s.pw), s.groups).unwrap();
            let y = batch_norm_train_on(Backend::Own, &z, &a[2], &a[3], 1e-5).unwrap().y;
            if relu { relu_on(Backend::Own, &y).unwrap() } else { y }
        });
        check("forward", &fused, &to_f64(&sep))?;
        for (i, what) in ["input", "weight", "gamma", "beta"].iter().enumerate() {
            check(what, &fg[i], &to_f64(&sg[i]))?;
        }
    }

    #[test]
    fn fused_conv_bn_max_pool_matches_the_separate_kernels(
        (s, seed) in conv_case(), relu in any::<bool>(),
        k in 1usize..4, pool_stride in 1usize..4, pool_padding in 0usize..2,
    ) {
        prop_assume!(s.n * s.ho * s.wo >= 2);
        prop_assume!(2 * pool_padding <= k && s.ho + 2 * pool_padding >= k && s.wo + 2 * pool_padding >= k);
        let dev = Device::Cpu;
        let xt = Tensor::from_vec(data(seed, s.n * s.c * s.h * s.w, 0.0), (s.n, s.c, s.h, s.w), &dev).unwrap();
        let wt = Tensor::from_vec(
            data(seed ^ 1, s.out * (s.c / s.groups) * s.kh * s.kw, 0.0),
            (s.out, s.c / s.groups, s.kh, s.kw),
            &dev,
        ).unwrap();
        let gamma = Tensor::from_vec(data(seed ^ 3, s.out, 0.0), s.out, &dev).unwrap();
        let beta = Tensor::from_vec(data(seed ^ 4, s.out, 0.0), s.out, &dev).unwrap();
        let params = ConvParams { stride: s.stride, padding: (s.ph, s.pw), groups: s.groups };
        let pool = MaxPoolParams { k, stride: pool_stride, padding: pool_padding };
        let args = [xt, wt, gamma, beta];
        let (y, g, _) = run_with_grads(&args, seed ^ 5, |a| {
            conv_bn_max_pool_train_on(Backend::Own, &a[0], &a[1], params, &a[2], &a[3], 1e-5, relu, pool)
                .unwrap()
                .y
        });
        let (sep, sg, _) = run_with_grads(&args, seed ^ 5, |a| {
            let y = conv_bn_train_on(Backend::Own, &a[0], &a[1], params, &a[2], &a[3], 1e-5, relu).unwrap().y;
            pool2d_on(Backend::Own, PoolKind::Max, &y, k, pool_stride, pool_padding).unwrap()
        });
        check("forward", &y, &to_f64(&sep))?;
        for (i, what) in ["input", "weight", "gamma", "beta"].iter().enumerate() {
            check(what, &g[i], &to_f64(&sg[i]))?;
        }
        // candle's composition (the CUDA path) gives the same forward.
        let a = &args;
        let cy = conv_bn_max_pool_train_on(Backend::Candle, &a[0], &a[1], params, &a[2], &a[3], 1e-5, relu, pool)
            .unwrap()
            .y;
        check("candle forward", &cy, &to_f64(&sep))?;
    }

    #[test]
    fn conv_unit_stack_matches_its_units_run_one_by_one(
        n in 1usize..4, c0 in 1usize..4, h in 4usize..10, w in 4usize..10, seed in any::<u64>(),
        units in prop::collection::vec(
            (1usize..6, prop_oneof![Just(1usize), Just(3)], 1usize..3, any::<bool>(), any::<bool>(), any::<bool>()),
            1..4,
        ),
    ) {
        // Each unit: out channels, kernel, stride, padding k/2 or 0, ReLU, a 2×2 max pool.
        let dev = Device::Cpu;
        let mut args = vec![Tensor::from_vec(data(seed, n * c0 * h * w, 0.2), (n, c0, h, w), &dev).unwrap()];
        let mut geo = Vec::new();
        let (mut c, mut hh, mut ww) = (c0, h, w);
        for (i, &(out, k, stride, pad, relu, pool)) in units.iter().enumerate() {
            let p = if pad { k / 2 } else { 0 };
            let params = ConvParams { stride, padding: (p, p), groups: 1 };
            let Ok(shape) = ConvShape::new(&[n, c, hh, ww], &[out, c, k, k], stride, (p, p), 1) else {
                break;
            };
            let pool = (pool && shape.ho >= 2 && shape.wo >= 2)
                .then_some(MaxPoolParams { k: 2, stride: 2, padding: 0 });
            let s = seed ^ (16 * (i as u64 + 1));
            args.push(Tensor::from_vec(data(s, out * c * k * k, 0.0), (out, c, k, k), &dev).unwrap());
            args.push(Tensor::from_vec(data(s ^ 1, out, 0.5), out, &dev).unwrap());
            args.push(Tensor::from_vec(data(s ^ 2, out, 0.0), out, &dev).unwrap());
            geo.push((params, relu, pool));
            (c, hh, ww) = match pool {
                Some(_) => (out, shape.ho / 2, shape.wo / 2),
                None => (out, shape.ho, shape.wo),
            };
        }
        prop_assume!(!geo.is_empty() && n * hh * ww >= 2);
        // Per unit: the index of its weight argument (γ, β follow), conv, ReLU, pool.
        let unit_args: Vec<(usize, ConvParams, bool, Option<MaxPoolParams>)> = geo
            .iter()
            .enumerate()
            .map(|(i, &(params, relu, pool))| (1 + 3 * i, params, relu, pool))
            .collect();
        let stack = |a: &[Tensor]| {
            let units: Vec<StackUnitArgs<'_>> = unit_args
                .iter()
                .copied()
                .map(|(j, conv, relu, pool)| StackUnitArgs {
                    weight: &a[j], conv, gamma: &a[j + 1], beta: &a[j + 2], eps: 1e-5, relu, pool,
                })
                .collect();
            conv_bn_stack_train_on(Backend::Own, &a[0], &units).unwrap()
        };
        let one_by_one = |a: &[Tensor]| {
            let mut h = a[0].clone();
            let mut stats = Vec::new();
            let mut inputs = Vec::new();
            for &(j, conv, relu, pool) in &unit_args {
                inputs.push(h.clone());
                let out = match pool {
                    None => conv_bn_train_on(Backend::Own, &h, &a[j], conv, &a[j + 1], &a[j + 2], 1e-5, relu),
                    Some(p) => conv_bn_max_pool_train_on(Backend::Own, &h, &a[j], conv, &a[j + 1], &a[j + 2], 1e-5, relu, p),
                }
                .unwrap();
                stats.push((out.mean, out.var));
                h = out.y;
            }
            (h, stats, inputs)
        };
        let (y, g, _) = run_with_grads(&args, seed ^ 5, |a| stack(a).y);
        let (sep, sg, _) = run_with_grads(&args, seed ^ 5, |a| one_by_one(a).0);
        check("forward", &y, &to_f64(&sep))?;
        for (i, (got, want)) in g.iter().zip(&sg).enumerate() {
            check(&format!("gradient of argument {i}"), got, &to_f64(want))?;
        }
        let (_, want_stats, inputs) = one_by_one(&args);
        let got_stats = stack(&args).stats;
        for (i, ((m, v), (wm, wv))) in got_stats.iter().zip(&want_stats).enumerate() {
            check(&format!("mean {i}"), m, &to_f64(wm))?;
            check(&format!("var {i}"), v, &to_f64(wv))?;
        }
        // candle's path (the units one after the other through candle's ops) agrees.
        let candle_units: Vec<StackUnitArgs<'_>> = unit_args
            .iter()
            .copied()
            .map(|(j, conv, relu, pool)| StackUnitArgs {
                weight: &args[j], conv, gamma: &args[j + 1], beta: &args[j + 2], eps: 1e-5, relu, pool,
            })
            .collect();
        // Its convs sum in another order, and each BN divides that rounding by the batch's
        // spread: the bound is derived from the data (`stack_error_bound`).
        let cy = conv_bn_stack_train_on(Backend::Candle, &args[0], &candle_units).unwrap().y;
        let cy = cy.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = to_f64(&sep);
        let err = cy.iter().zip(&want).fold(0.0f64, |m, (a, b)| m.max((*a as f64 - b).abs()));
        let units: Vec<_> = unit_args.iter().map(|&(j, conv, _, _)| (&args[j], conv, &args[j + 1])).collect();
        let bound = stack_error_bound(&inputs, &units, &want_stats);
        prop_assert!(err <= bound, "candle forward: error {err:e} over the derived bound {bound:e}");
    }

    #[test]
    fn block_op_two_stage_branches_match_their_kernels_run_separately(
        n in 1usize..3, c in 1usize..4, c1 in 1usize..4, h in 3usize..8, w in 3usize..8,
        k in prop_oneof![Just(3usize), Just(5)], stride in 1usize..3, groups2 in any::<bool>(),
        factor in prop_oneof![Just(0.1f64), Just(1.0), Just(0.25)], seed in any::<u64>(),
        post in prop_oneof![
            Just(None), Just(Some((false, false))), Just(Some((true, false))),
            Just(Some((false, true))), Just(Some((true, true))),
        ],
        post_bn in any::<bool>(),
    ) {
        // DBB's two-stage branches beside a k×k main conv: 1×1 → BN → pad k/2 with the BN's
        // constant → k×k conv (stride) → BN, and 1×1 → BN → pad → k×k average pool → BN. The
        // block op against the same chain of separately tested kernels (forward, every
        // gradient, every BN's statistics), and candle's fallback of the block op against it.
        let groups = if groups2 { 2 } else { 1 };
        let (cin, cmid, cout) = (c * groups, c1 * groups, (c + 1) * groups);
        let dev = Device::Cpu;
        let p = k / 2;
        let t = |v: Vec<f32>, shape: &[usize]| Tensor::from_vec(v, shape, &dev).unwrap();
        // Arguments: x; main w; kxk-branch w1, w2; avg-branch w1; then γ, β for the five BNs.
        let mut args = vec![
            t(data(seed, n * cin * h * w, 0.3), &[n, cin, h, w]),
            t(weights(seed ^ 11, cout * (cin / groups) * k * k), &[cout, cin / groups, k, k]),
            t(weights(seed ^ 12, cmid * (cin / groups)), &[cmid, cin / groups, 1, 1]),
            t(weights(seed ^ 13, cout * (cmid / groups) * k * k), &[cout, cmid / groups, k, k]),
            t(weights(seed ^ 14, cout * (cin / groups)), &[cout, cin / groups, 1, 1]),
        ];
        // The fifth BN pair is the unit's BN after the block (used when `post` is set).
        let bn_sizes = [cout, cmid, cout, cout, cout, cout];
        for (i, size) in bn_sizes.iter().enumerate() {
            args.push(t(data(seed ^ (20 + i as u64), *size, 0.0), &[*size]));
            args.push(t(data(seed ^ (30 + i as u64), *size, 0.0), &[*size]));
        }
        let with_post_bn = post.is_some() && post_bn;
        if !with_post_bn {
            args.truncate(15);
        }
        // Running statistics the pad constants start from (no gradient).
        let rm = [t(data(seed ^ 50, cmid, 0.0), &[cmid]), t(data(seed ^ 51, cout, 0.0), &[cout])];
        let rv = [t(data(seed ^ 52, cmid, 1.5), &[cmid]), t(data(seed ^ 53, cout, 1.5), &[cout])];
        let (ho, wo) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
        prop_assume!(n * ho * wo >= 6);
        prop_assume!(stride == 1 || (h - 1) % 2 == (w - 1) % 2);
        prop_assume!(!matches!(post, Some((_, true))) || (ho >= 2 && wo >= 2));
        let conv = |s: usize, pad: usize| ConvParams { stride: s, padding: (pad, pad), groups };
        let block = |b: Backend, a: &[Tensor]| {
            let bs = [
                BlockBranch { conv: Some((&a[1], conv(stride, p))), bias: None, gamma: &a[5], beta: &a[6], then: None },
                BlockBranch {
                    conv: Some((&a[2], conv(1, 0))), bias: None, gamma: &a[7], beta: &a[8],
                    then: Some(BlockStage {
                        pad: p,
                        pad_from: PadFrom { running_mean: &rm[0], running_var: &rv[0], factor },
                        op: StageOp::Conv(&a[3], conv(stride, 0)),
                        gamma: &a[9],
                        beta: &a[10],
                    }),
                },
                BlockBranch {
                    conv: Some((&a[4], conv(1, 0))), bias: None, gamma: &a[11], beta: &a[12],
                    then: Some(BlockStage {
                        pad: p,
                        pad_from: PadFrom { running_mean: &rm[1], running_var: &rv[1], factor },
                        op: StageOp::AvgPool { k, stride },
                        gamma: &a[13],
                        beta: &a[14],
                    }),
                },
            ];
            // (relu, pool): the unit's ReLU and a 2×2 max pool after its BN.
            let pool2 = MaxPoolParams { k: 2, stride: 2, padding: 0 };
            // Without `post_bn` the tail has no BN (the reference DBB and RepVGG forms).
            let pb = post.map(|(relu, pool)| BlockTail {
                bn: post_bn.then(|| (&a[15], &a[16])), relu, pool: pool.then_some(pool2),
            });
            block_train_on(b, &a[0], &bs, pb, 1e-5).unwrap()
        };
        // The pad constants BNAndPad uses: the BN's eval output for a zero input with the
        // running statistics updated by this batch (f64 here).
        let pad_values = |gamma: &Tensor, beta: &Tensor, mean: &Tensor, var: &Tensor, count: usize, i: usize| {
            let v = |t: &Tensor| to_f64(t);
            let (g, be, m, va, r_m, r_v) = (v(gamma), v(beta), v(mean), v(var), v(&rm[i]), v(&rv[i]));
            let vals: Vec<f32> = (0..g.len()).map(|ch| {
                let mu = (1.0 - factor) * r_m[ch] + factor * m[ch];
                let s2 = (1.0 - factor) * r_v[ch] + factor * va[ch] * count as f64 / (count - 1) as f64;
                (be[ch] - g[ch] * mu / (s2 + 1e-5).sqrt()) as f32
            }).collect();
            Tensor::from_vec(vals, g.len(), &Device::Cpu).unwrap()
        };
        let separate = |a: &[Tensor]| -> (Tensor, Vec<(Tensor, Tensor)>) {
            let own = Backend::Own;
            let main = conv_bn_train_on(own, &a[0], &a[1], conv(stride, p), &a[5], &a[6], 1e-5, false).unwrap();
            let first = conv_bn_train_on(own, &a[0], &a[2], conv(1, 0), &a[7], &a[8], 1e-5, false).unwrap();
            let pv = pad_values(&a[7], &a[8], &first.mean, &first.var, n * h * w, 0);
            let padded = pad_const_on(own, &first.y, p, &pv).unwrap();
            let second = conv_bn_train_on(own, &padded, &a[3], conv(stride, 0), &a[9], &a[10], 1e-5, false).unwrap();
            let first_avg = conv_bn_train_on(own, &a[0], &a[4], conv(1, 0), &a[11], &a[12], 1e-5, false).unwrap();
            let pv = pad_values(&a[11], &a[12], &first_avg.mean, &first_avg.var, n * h * w, 1);
            let padded = pad_const_on(own, &first_avg.y, p, &pv).unwrap();
            let pooled = pool2d_on(own, PoolKind::Avg, &padded, k, stride, 0).unwrap();
            let avg = batch_norm_train_on(own, &pooled, &a[13], &a[14], 1e-5).unwrap();
            let y = ((main.y + second.y).unwrap() + avg.y).unwrap();
            let mut stats = vec![
                (main.mean, main.var), (first.mean, first.var), (second.mean, second.var),
                (first_avg.mean, first_avg.var), (avg.mean, avg.var),
            ];
            let y = match post {
                None => y,
                Some((relu, pool)) => {
                    let y = if post_bn {
                        let o = batch_norm_train_on(own, &y, &a[15], &a[16], 1e-5).unwrap();
                        stats.push((o.mean, o.var));
                        o.y
                    } else {
                        y
                    };
                    let y = if relu { relu_on(own, &y).unwrap() } else { y };
                    if pool { pool2d_on(own, PoolKind::Max, &y, 2, 2, 0).unwrap() } else { y }
                }
            };
            (y, stats)
        };
        let (y, g, _) = run_with_grads(&args, seed ^ 5, |a| block(Backend::Own, a).y);
        let (sy, sg, _) = run_with_grads(&args, seed ^ 5, |a| separate(a).0);
        check("forward", &y, &to_f64(&sy))?;
        for (i, (a, b)) in g.iter().zip(&sg).enumerate() {
            check(&format!("gradient of argument {i}"), a, &to_f64(b))?;
        }
        let own = block(Backend::Own, &args);
        let (_, sep_stats) = separate(&args);
        prop_assert_eq!(own.stats.len(), 5 + usize::from(with_post_bn));
        for (i, (st, (m, v))) in own.stats.iter().zip(&sep_stats).enumerate() {
            check(&format!("mean of BN {i}"), &st.mean, &to_f64(m))?;
            check(&format!("variance of BN {i}"), &st.var, &to_f64(v))?;
        }
        let counts: Vec<usize> = own.stats.iter().map(|s| s.count).collect();
        let mut want = vec![n * ho * wo, n * h * w, n * ho * wo, n * h * w, n * ho * wo];
        if with_post_bn {
            want.push(n * ho * wo);
        }
        prop_assert_eq!(counts, want);
        // candle's fallback of the same block (what runs on CUDA), loosely: its f32 BN loses
        // digits on small channels.
        let cy = block(Backend::Candle, &args);
        let e = rel_err(&own.y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), &to_f64(&cy.y));
        prop_assert!(e <= 1e-3, "forward vs candle: {e:e}");
        for (i, (a, b)) in own.stats.iter().zip(&cy.stats).enumerate() {
            prop_assert_eq!(a.count, b.count);
            let e = rel_err(&a.mean.to_vec1::<f32>().unwrap(), &to_f64(&b.mean));
            prop_assert!(e <= 1e-3, "mean of BN {} vs candle: {:e}", i, e);
        }
    }

    #[test]
    fn block_op_matches_its_branches_run_separately(
        n in 1usize..3, c in 1usize..4, h in 2usize..8, w in 2usize..8, k in prop_oneof![Just(3usize), Just(5)],
        stride in 1usize..3, with_identity in any::<bool>(), groups2 in any::<bool>(),
        main_bias in any::<bool>(), seed in any::<u64>(),
    ) {
        // A DyRep block: k×k main, 1×1, 1×k, k×1 (all centred, same stride and groups) and,
        // at stride 1, the identity; every branch followed by its own BN; summed.
        let groups = if groups2 { 2 } else { 1 };
        let (cin, cout) = (c * groups, (c + 1) * groups);
        let cout = if with_identity && stride == 1 { cin } else { cout };
        let dev = Device::Cpu;
        let x = Tensor::from_vec(data(seed, n * cin * h * w, 0.3), (n, cin, h, w), &dev).unwrap();
        let shapes = [(k, k), (1, 1), (1, k), (k, 1)];
        let mut args = vec![x];
        for (i, (kh, kw)) in shapes.iter().enumerate() {
            let len = cout * (cin / groups) * kh * kw;
            args.push(Tensor::from_vec(weights(seed ^ (10 + i as u64), len), (cout, cin / groups, *kh, *kw), &dev).unwrap());
        }
        let n_bn = shapes.len() + usize::from(with_identity && stride == 1);
        for i in 0..n_bn {
            args.push(Tensor::from_vec(data(seed ^ (20 + i as u64), cout, 0.0), cout, &dev).unwrap());
            args.push(Tensor::from_vec(data(seed ^ (30 + i as u64), cout, 0.0), cout, &dev).unwrap());
        }
        // With very few values per channel a BN's output barely depends on its input and every
        // upstream gradient is rounding noise (two values: exactly ±1); the BN tests above cover
        // those with an f64 reference.
        prop_assume!(n * ((h - 1) / stride + 1) * ((w - 1) / stride + 1) >= 6);
        // candle's conv backward (the reference here) needs equal H/W remainders at stride 2.
        prop_assume!(stride == 1 || (h - 1) % 2 == (w - 1) % 2);
        // Per branch: the conv (weight argument, kh, kw) or the identity, and its γ argument.
        let mut branch_args: Vec<BranchArgs> = shapes
            .iter()
            .enumerate()
            .map(|(i, (kh, kw))| (Some((1 + i, *kh, *kw)), 5 + 2 * i))
            .collect();
        if n_bn > shapes.len() {
            branch_args.push((None, 13));
        }
        // The main conv's bias (what absorbing a grow leaves), as the last argument.
        let bias_arg = args.len();
        if main_bias {
            args.push(Tensor::from_vec(data(seed ^ 40, cout, 0.5), cout, &dev).unwrap());
        }
        let bias_of = |a: &[Tensor], wi: usize| (main_bias && wi == 1).then(|| a[bias_arg].clone());
        let fused = run_with_grads(&args, seed ^ 5, |a| {
            let branches: Vec<BlockBranch<'_>> = branch_args
                .iter()
                .copied()
                .map(|(conv, gi)| BlockBranch {
                    conv: conv.map(|(wi, kh, kw)| (&a[wi], ConvParams { stride, padding: (kh / 2, kw / 2), groups })),
                    bias: conv.and_then(|(wi, _, _)| (main_bias && wi == 1).then(|| &a[bias_arg])),
                    gamma: &a[gi],
                    beta: &a[gi + 1],
                    then: None,
                })
                .collect();
            block_train_on(Backend::Own, &a[0], &branches, None, 1e-5).unwrap().y
        });
        // Reference: the same branches through the separately tested kernels, summed by candle.
        let separate = |b: Backend| run_with_grads(&args, seed ^ 5, |a| {
            let mut y: Option<Tensor> = None;
            for &(conv, gi) in &branch_args {
                let o = match conv {
                    Some((wi, kh, kw)) => {
                        let mut z = conv2d_on(b, &a[0], &a[wi], stride, (kh / 2, kw / 2), groups).unwrap();
                        if let Some(bias) = bias_of(a, wi) {
                            z = z.broadcast_add(&bias.reshape((1, cout, 1, 1)).unwrap()).unwrap();
                        }
                        batch_norm_train_on(b, &z, &a[gi], &a[gi + 1], 1e-5).unwrap().y
                    }
                    None => batch_norm_train_on(b, &a[0], &a[gi], &a[gi + 1], 1e-5).unwrap().y,
                };
                y = Some(match y { None => o, Some(acc) => (acc + o).unwrap() });
            }
            y.unwrap()
        });
        let (y, g, _) = fused;
        let (sy, sg, _) = separate(Backend::Own);
        check("forward", &y, &to_f64(&sy))?;
        for (i, (a, b)) in g.iter().zip(&sg).enumerate() {
            if main_bias && i == bias_arg {
                // A bias before a train-mode BN: zero gradient up to rounding, on both sides.
                let worst = to_f64(a).iter().fold(0.0f64, |m, v| m.max(v.abs()));
                prop_assert!(worst <= 1e-4, "bias gradient {worst:e}");
                continue;
            }
            check(&format!("gradient of argument {i}"), a, &to_f64(b))?;
        }
        // And loosely against candle's ops (whose f32 BN loses digits on small channels).
        let (cy, _, _) = separate(Backend::Candle);
        let e = rel_err(&y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), &to_f64(&cy));
        prop_assert!(e <= 1e-3, "forward vs candle: {e:e}");
    }

    #[test]
    fn batch_norm_train_matches_candle_ops(
        n in 1usize..5, c in 1usize..6, h in 1usize..7, w in 1usize..7,
        offset in -4.0f32..4.0, seed in any::<u64>(),
    ) {
        prop_assume!(n * h * w >= 2);
        let dev = Device::Cpu;
        let x = Tensor::from_vec(data(seed, n * c * h * w, offset), (n, c, h, w), &dev).unwrap();
        let gamma = Tensor::from_vec(data(seed ^ 3, c, 0.0), c, &dev).unwrap();
        let beta = Tensor::from_vec(data(seed ^ 4, c, 0.0), c, &dev).unwrap();
        let run = |b: Backend| {
            let stats = std::cell::RefCell::new(None);
            let (y, g, _) = run_with_grads(&[x.clone(), gamma.clone(), beta.clone()], seed ^ 5, |a| {
                let out = batch_norm_train_on(b, &a[0], &a[1], &a[2], 1e-5).unwrap();
                *stats.borrow_mut() = Some((out.mean.clone(), out.var.clone()));
                out.y
            });
            (y, g, stats.into_inner().unwrap())
        };
        let (y, g, (m, v)) = run(Backend::Own);
        let (cy, _, (cm, cv)) = run(Backend::Candle);
        // candle's f32 forward loses digits when a channel's spread is tiny next to its mean:
        // the forward is checked against f64 below, here only loosely against candle.
        let (yv, cyv) = (to_f64(&y), to_f64(&cy));
        prop_assert!(yv.iter().zip(&cyv).all(|(p, q)| (p - q).abs() <= 1e-3 * (1.0 + q.abs())), "forward vs candle");
        // candle's f32 statistics are themselves off by ~1e-5 when a mean nearly cancels:
        // the statistics are checked against f64 below; here only loosely against candle.
        let loose = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(p, q)| (p - q).abs() <= 1e-4 * (1.0 + q.abs()));
        prop_assert!(loose(&to_f64(&m), &to_f64(&cm)), "mean vs candle");
        prop_assert!(loose(&to_f64(&v), &to_f64(&cv)), "variance vs candle");
        let (mean_got, var_got) = (to_f64(&m), to_f64(&v));
        // The input gradient is a difference of terms of size γ·|dy|/σ that nearly cancel
        // (exactly, for two values per channel): compare it with an f64 reference relative
        // to that size, which is what f32 rounding is relative to.
        let xs = to_f64(&x);
        let up = data(seed ^ 5, n * c * h * w, 0.0);
        let gam = to_f64(&gamma);
        let bet = to_f64(&beta);
        let m_count = (n * h * w) as f64;
        let mut want = vec![0.0f64; xs.len()];
        let mut term_scale = 0.0f64;
        let (dgamma, dbeta) = (to_f64(&g[1]), to_f64(&g[2]));
        for ch in 0..c {
            let idx: Vec<usize> = (0..n)
                .flat_map(|i| ((i * c + ch) * h * w)..((i * c + ch) * h * w + h * w))
                .collect();
            let mu = idx.iter().map(|&i| xs[i]).sum::<f64>() / m_count;
            let var = idx.iter().map(|&i| (xs[i] - mu).powi(2)).sum::<f64>() / m_count;
            let mean_abs = idx.iter().map(|&i| xs[i].abs()).sum::<f64>() / m_count;
            prop_assert!((mean_got[ch] - mu).abs() <= TOL * mean_abs.max(1e-3), "mean {} vs {}", mean_got[ch], mu);
            prop_assert!((var_got[ch] - var).abs() <= TOL * var.max(1e-3), "variance {} vs {}", var_got[ch], var);
            let istd = 1.0 / (var + 1e-5).sqrt();
            let s1: f64 = idx.iter().map(|&i| up[i] as f64).sum();
            let s2: f64 = idx.iter().map(|&i| up[i] as f64 * (xs[i] - mu) * istd).sum();
            // dβ = Σdy and dγ = Σdy·x̂, relative to the sums of their terms' magnitudes.
            let abs1: f64 = idx.iter().map(|&i| (up[i] as f64).abs()).sum();
            let abs2: f64 = idx.iter().map(|&i| (up[i] as f64 * (xs[i] - mu) * istd).abs()).sum();
            prop_assert!((dbeta[ch] - s1).abs() <= TOL * abs1.max(1e-3), "beta gradient {} vs {}", dbeta[ch], s1);
            prop_assert!((dgamma[ch] - s2).abs() <= TOL * abs2.max(1e-3), "gamma gradient {} vs {}", dgamma[ch], s2);
            for &i in &idx {
                let xhat = (xs[i] - mu) * istd;
                let want_y = gam[ch] * xhat + bet[ch];
                let y_scale = gam[ch].abs() * xhat.abs().max(1.0) + bet[ch].abs();
                prop_assert!((yv[i] - want_y).abs() <= TOL * y_scale, "forward {} vs {}", yv[i], want_y);
                want[i] = gam[ch] * istd * (up[i] as f64 - s1 / m_count - xhat * s2 / m_count);
                term_scale = term_scale.max((gam[ch] * istd * up[i] as f64).abs());
            }
        }
        let got = to_f64(&g[0]);
        let diff = got.iter().zip(&want).fold(0.0f64, |a, (p, q)| a.max((p - q).abs()));
        prop_assert!(diff / term_scale.max(1e-3) <= TOL, "input gradient: {:e}", diff / term_scale);
    }

    #[test]
    fn channel_affine_matches_candle_ops(
        n in 1usize..4, c in 1usize..6, h in 1usize..6, w in 1usize..6, seed in any::<u64>(),
    ) {
        let dev = Device::Cpu;
        let x = Tensor::from_vec(data(seed, n * c * h * w, 0.5), (n, c, h, w), &dev).unwrap();
        let scale = Tensor::from_vec(data(seed ^ 1, c, 0.0), c, &dev).unwrap();
        let shift = Tensor::from_vec(data(seed ^ 2, c, 0.0), c, &dev).unwrap();
        let run = |b: Backend| run_with_grads(&[x.clone(), scale.clone(), shift.clone()], seed ^ 3, |a| {
            channel_affine_on(b, &a[0], &a[1], &a[2]).unwrap()
        });
        let (y, g, _) = run(Backend::Own);
        let (cy, cg, _) = run(Backend::Candle);
        check("forward", &y, &to_f64(&cy))?;
        check("input gradient", &g[0], &to_f64(&cg[0]))?;
        // Per-channel sums: against f64, relative to the sum of the terms' magnitudes.
        let (xs, up) = (to_f64(&x), data(seed ^ 3, n * c * h * w, 0.0));
        let (dscale, dshift) = (to_f64(&g[1]), to_f64(&g[2]));
        for ch in 0..c {
            let idx = (0..n).flat_map(|i| ((i * c + ch) * h * w)..((i * c + ch + 1) * h * w));
            let (mut s1, mut s2, mut a1, mut a2) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
            for i in idx {
                let (d, v) = (up[i] as f64, xs[i]);
                s1 += d;
                s2 += d * v;
                a1 += d.abs();
                a2 += (d * v).abs();
            }
            prop_assert!((dshift[ch] - s1).abs() <= TOL * a1.max(1e-3), "shift gradient");
            prop_assert!((dscale[ch] - s2).abs() <= TOL * a2.max(1e-3), "scale gradient");
        }
    }

    #[test]
    fn pad_const_matches_candle_ops(
        n in 1usize..3, c in 1usize..5, h in 1usize..7, w in 1usize..7, pad in 0usize..3, seed in any::<u64>(),
    ) {
        let dev = Device::Cpu;
        let x = Tensor::from_vec(data(seed, n * c * h * w, 0.0), (n, c, h, w), &dev).unwrap();
        let values = Tensor::from_vec(data(seed ^ 1, c, 0.0), c, &dev).unwrap();
        let run = |b: Backend| run_with_grads(std::slice::from_ref(&x), seed ^ 2, |a| {
            pad_const_on(b, &a[0], pad, &values).unwrap()
        });
        let (y, g, _) = run(Backend::Own);
        let (cy, cg, _) = run(Backend::Candle);
        check("forward", &y, &to_f64(&cy))?;
        check("gradient", &g[0], &to_f64(&cg[0]))?;
    }

    #[test]
    fn relu_matches_candle(len in 1usize..5000, seed in any::<u64>()) {
        // At exactly 0 the gradient is 0 here (PyTorch's threshold_backward) and 1 in candle:
        // keep the data off 0.
        let xs: Vec<f32> = data(seed, len, 0.0).into_iter().map(|v| if v == 0.0 { 0.5 } else { v }).collect();
        let x = Tensor::from_vec(xs, len, &Device::Cpu).unwrap();
        let (y, g, _) = run_with_grads(std::slice::from_ref(&x), seed ^ 1, |a| relu_on(Backend::Own, &a[0]).unwrap());
        let (cy, cg, _) = run_with_grads(&[x], seed ^ 1, |a| relu_on(Backend::Candle, &a[0]).unwrap());
        check("forward", &y, &to_f64(&cy))?;
        check("gradient", &g[0], &to_f64(&cg[0]))?;
    }

    #[test]
    fn pools_match_naive_reference_and_candle_forward(
        max in any::<bool>(), n in 1usize..3, c in 1usize..4, h in 1usize..11, w in 1usize..11,
        k in 1usize..5, stride in 1usize..4, padding in 0usize..4, seed in any::<u64>(),
    ) {
        prop_assume!(h + 2 * padding >= k && w + 2 * padding >= k);
        prop_assume!(!max || 2 * padding <= k);
        let kind = if max { PoolKind::Max } else { PoolKind::Avg };
        let xs = data(seed, n * c * h * w, 0.0);
        let x = Tensor::from_vec(xs.clone(), (n, c, h, w), &Device::Cpu).unwrap();
        let run = |b: Backend| run_with_grads(std::slice::from_ref(&x), seed ^ 1, |a| {
            pool2d_on(b, kind, &a[0], k, stride, padding).unwrap()
        });
        let (y, g, up) = run(Backend::Own);
        let (ny, ndx) = naive_pool(max, [n * c, h, w], k, stride, padding, &xs, &up);
        check("forward", &y, &ny)?;
        check("gradient", &g[0], &ndx)?;
        let (cy, cg, _) = run(Backend::Candle);
        check("candle forward", &cy, &ny)?;
        check("candle gradient", &cg[0], &ndx)?;
    }
}

/// Naive f64 pooling over `planes × h × w`: forward and input gradient for upstream `g`.
fn naive_pool(
    max: bool,
    [planes, h, w]: [usize; 3],
    k: usize,
    s: usize,
    p: usize,
    x: &[f32],
    g: &[f32],
) -> (Vec<f64>, Vec<f64>) {
    let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    let mut y = vec![0.0f64; planes * ho * wo];
    let mut dx = vec![0.0f64; x.len()];
    for pl in 0..planes {
        for oy in 0..ho {
            for ox in 0..wo {
                let yi = (pl * ho + oy) * wo + ox;
                let mut best: Option<(usize, f64)> = None;
                let mut sum = 0.0;
                for ky in 0..k {
                    for kx in 0..k {
                        let (iy, ix) = (
                            (oy * s + ky) as isize - p as isize,
                            (ox * s + kx) as isize - p as isize,
                        );
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            continue;
                        }
                        let xi = (pl * h + iy as usize) * w + ix as usize;
                        let v = x[xi] as f64;
                        sum += v;
                        if best.is_none_or(|(_, b)| v > b) {
                            best = Some((xi, v));
                        }
                        if !max {
                            dx[xi] += g[yi] as f64 / (k * k) as f64;
                        }
                    }
                }
                if max {
                    let (bi, bv) = best.expect("window inside the image");
                    y[yi] = bv;
                    dx[bi] += g[yi] as f64;
                } else {
                    y[yi] = sum / (k * k) as f64;
                }
            }
        }
    }
    (y, dx)
}

#[test]
fn first_layer_input_gets_no_gradient() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::from_vec(data(1, 2 * 3 * 6 * 6, 0.0), (2, 3, 6, 6), &dev)?;
    let w = Var::from_tensor(&Tensor::from_vec(
        data(2, 4 * 3 * 9, 0.0),
        (4, 3, 3, 3),
        &dev,
    )?)?;
    let y = conv2d_on(Backend::Own, &x, w.as_tensor(), 1, (1, 1), 1)?;
    let grads = y.sum_all()?.backward()?;
    assert!(grads.get(&x).is_none());
    assert!(grads.get(&w).is_some());
    Ok(())
}

#[test]
fn own_backend_refuses_f64_with_a_clear_error() {
    let x = Tensor::zeros((1, 1, 4, 4), candle_core::DType::F64, &Device::Cpu).unwrap();
    let w = Tensor::zeros((1, 1, 3, 3), candle_core::DType::F64, &Device::Cpu).unwrap();
    let e = conv2d_on(Backend::Own, &x, &w, 1, (1, 1), 1).unwrap_err();
    assert!(e.to_string().contains("f32 CPU"), "{e}");
    // The automatic choice falls back to candle for f64.
    assert!(dyrep_kernels::conv2d(&x, &w, 1, (1, 1), 1).is_ok());
}

#[test]
fn batched_and_single_image_paths_agree() -> Result<()> {
    // n >= threads runs images in parallel; n = 1 runs threaded gemms: same numbers.
    let dev = Device::Cpu;
    let x = Tensor::from_vec(data(7, 8 * 6 * 9 * 7, 0.0), (8, 6, 9, 7), &dev)?;
    let w = Tensor::from_vec(data(8, 10 * 6 * 9, 0.0), (10, 6, 3, 3), &dev)?;
    let all = conv2d_on(Backend::Own, &x, &w, 2, (1, 1), 1)?;
    for i in 0..8 {
        let one = conv2d_on(Backend::Own, &x.narrow(0, i, 1)?, &w, 2, (1, 1), 1)?;
        let diff = (one - all.narrow(0, i, 1)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "image {i}: {diff}");
    }
    Ok(())
}
