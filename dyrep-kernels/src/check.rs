//! Runtime cross-check of the kernels (`dyrep verify --kernels`): random shapes
//! and data, every op's forward and gradients computed by the own CPU kernels (the reference)
//! and by candle's ops on the chosen device (candle's CPU ops, or CUDA), compared by relative
//! error. The same comparison the property tests make, available in the shipped binary so a
//! GPU machine without a Rust toolchain can check CUDA against the CPU.

use candle_core::{Device, Tensor, Var};

use crate::{
    batch_norm_train_on, block_train_on, conv2d_on, conv_affine_on, conv_bn_max_pool_train_on,
    conv_bn_stack_train_on, conv_bn_train_on, pool2d_on, relu_on, Backend, BlockBranch, BlockStage,
    BlockTail, ConvParams, ConvShape, MaxPoolParams, PadFrom, PoolKind, Result, StackUnitArgs,
    StageOp,
};

/// The worst relative error a kernel check accepts (f32, different summation orders).
pub const KERNEL_TOLERANCE: f64 = 1e-4;

/// The outcome of one kernel's cases.
#[derive(Clone, Debug)]
pub struct KernelReport {
    pub kernel: &'static str,
    pub cases: usize,
    pub failures: usize,
    /// Worst relative error over every compared tensor.
    pub worst_rel: f64,
    /// The relative error a case may reach ([`KERNEL_TOLERANCE`] unless the check says why not).
    pub tolerance: f64,
    pub first_failure: Option<String>,
}

/// xorshift64*: deterministic case generation without another dependency.
struct XorShift64Star(u64);

impl XorShift64Star {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// Conv weights in ±[0.25, 1]: a near-zero weight feeding a BN through few inputs makes
    /// the BN's gradients ill-conditioned in f32 for every implementation (σ² ≈ ε).
    fn weights(&mut self, len: usize) -> Vec<f32> {
        self.values(len)
            .into_iter()
            .map(|v| v.signum() * (0.25 + 0.75 * v.abs()))
            .collect()
    }

    fn values(&mut self, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
            .map(|v| if v == 0.0 { 0.5 } else { v })
            .collect()
    }
}

/// `max |a − b| / max(max |b|, 0.01)` over two tensors of the same shape (any devices). The
/// floor matters for gradients that vanish in theory (a conv weight feeding a BN through one
/// input per channel): there both sides return rounding noise of O(1) data.
fn rel_err(a: &Tensor, b: &Tensor) -> Result<f64> {
    rel_err_floor(a, b, 1e-2)
}

/// [`rel_err`] with another floor under the scale.
fn rel_err_floor(a: &Tensor, b: &Tensor, floor: f64) -> Result<f64> {
    let a = a.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
    let b = b.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
    let scale = b
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs() as f64))
        .max(floor);
    let diff = a
        .iter()
        .zip(&b)
        .fold(0.0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()));
    Ok(if a.len() == b.len() {
        diff / scale
    } else {
        f64::INFINITY
    })
}

/// Output and gradients of `sum(f(args) · g)` for fixed upstream `g`.
fn with_grads(
    args: &[Tensor],
    upstream: &[f32],
    f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<Vec<Tensor>> {
    let vars = args
        .iter()
        .map(Var::from_tensor)
        .collect::<candle_core::Result<Vec<_>>>()?;
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts)?;
    let g = Tensor::from_slice(&upstream[..y.elem_count()], y.dims(), y.device())?
        .to_dtype(y.dtype())?;
    let grads = (&y * &g)?.sum_all()?.backward()?;
    let mut out = vec![y];
    for v in &vars {
        out.push(match grads.get(v) {
            Some(t) => t.clone(),
            None => v.zeros_like()?,
        });
    }
    Ok(out)
}

/// candle's side of a conv case: with gradients only where its backward is right.
fn run_other(
    grads_ok: bool,
    args: &[Tensor],
    upstream: &[f32],
    f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
) -> Result<Vec<Tensor>> {
    if grads_ok {
        with_grads(args, upstream, f)
    } else {
        Ok(vec![f(args)?])
    }
}

/// A random conv geometry: batch 1-3, groups 1/2/depthwise, kernels 1/3/5 and 1×3/3×1,
/// stride 1-2, odd/even, non-square inputs.
fn conv_case(r: &mut XorShift64Star) -> ConvShape {
    loop {
        let (kh, kw) = [(1, 1), (3, 3), (5, 5), (1, 3), (3, 1)][r.below(5)];
        let (groups, cg) = match r.below(3) {
            0 => (1, 1 + r.below(4)),
            1 => (2, 1 + r.below(3)),
            _ => (2 + r.below(3), 1),
        };
        let og = 1 + r.below(3);
        let (h, w) = (3 + r.below(9), 3 + r.below(9));
        let padding = (kh / 2, kw / 2);
        if let Ok(s) = ConvShape::new(
            &[1 + r.below(3), cg * groups, h, w],
            &[og * groups, cg, kh, kw],
            1 + r.below(2),
            padding,
            groups,
        ) {
            if s.n * s.ho * s.wo >= 2 {
                return s;
            }
        }
    }
}

/// A conv the direct kernel of the active tier takes (stride 1, one group, 8 or 16 outputs,
/// planes of 12-24, at least as many images as threads), or `None` where the tier has none.
fn direct_case(r: &mut XorShift64Star) -> Option<ConvShape> {
    crate::direct_conv_tier()?;
    // Most draws fit; the bound only guards against a geometry rule that rejects them all.
    for _ in 0..1000 {
        let (kh, kw) = [(3, 3), (1, 3), (3, 1), (5, 5)][r.below(4)];
        let (h, w) = (12 + r.below(13), 12 + r.below(13));
        let n = crate::compute_threads().max(2) + r.below(2);
        let c = 1 + r.below(16);
        if let Ok(s) = ConvShape::new(
            &[n, c, h, w],
            &[8 * (1 + r.below(2)), c, kh, kw],
            1,
            (kh / 2, kw / 2),
            1,
        ) {
            if s.runs_direct() {
                return Some(s);
            }
        }
    }
    None
}

/// Whether candle's conv backward is right for this geometry: it takes its transposed conv's
/// output padding from H alone, which is wrong when H and W leave different remainders.
fn candle_conv_backward_ok(s: &ConvShape) -> bool {
    s.stride == 1 || (s.h + 2 * s.ph - s.kh) % s.stride == (s.w + 2 * s.pw - s.kw) % s.stride
}

struct Tally {
    report: KernelReport,
}

impl Tally {
    fn new(kernel: &'static str) -> Self {
        Self::with_tolerance(kernel, KERNEL_TOLERANCE)
    }

    fn with_tolerance(kernel: &'static str, tolerance: f64) -> Self {
        Self {
            report: KernelReport {
                kernel,
                cases: 0,
                failures: 0,
                worst_rel: 0.0,
                tolerance,
                first_failure: None,
            },
        }
    }

    fn case(&mut self, what: String, errs: &[(&str, f64)]) {
        self.report.cases += 1;
        let mut bad = Vec::new();
        for (name, e) in errs {
            self.report.worst_rel = self.report.worst_rel.max(*e);
            if *e > self.report.tolerance || e.is_nan() {
                bad.push(format!("{name} rel {e:.2e}"));
            }
        }
        if !bad.is_empty() {
            self.report.failures += 1;
            if self.report.first_failure.is_none() {
                self.report.first_failure = Some(format!("{what}: {}", bad.join(", ")));
            }
        }
    }
}

/// A grown block as one op (`block_train_on`), own CPU kernels against candle's composition on
/// `device`: a k×k main conv (with a bias half of the time), 1×1, 1×k, k×1, the identity where
/// the geometry allows it, DBB's 1×1 → k×k and 1×1 → average two-stage branches, and half of the
/// time the unit's BN (and ReLU) after the block. Compared: the output, the gradient of every
/// argument and every BN's batch statistics.
/// One random grown block: its geometry, the block op's arguments (x, the four one-stage
/// weights, the two-stage weights, γ and β of every BN, the main bias), the two-stage
/// branches' running statistics and the upstream gradient.
struct BlockCheckCase {
    k: usize,
    stride: usize,
    groups: usize,
    identity: bool,
    bias: bool,
    post: bool,
    /// Without `post`: the unit's ReLU (and pool) after the block all the same, no BN between
    /// (the reference DBB and RepVGG forms).
    tail_only: bool,
    relu: bool,
    /// A 2×2 max pool after the unit's BN and ReLU (with `post` or `tail_only`).
    pool: bool,
    first_bn: usize,
    bias_arg: usize,
    args: Vec<Tensor>,
    running: Vec<Tensor>,
    up: Vec<f32>,
    what: String,
}

impl BlockCheckCase {
    /// A random case, or `None` when the drawn geometry is one the check skips.
    fn draw(r: &mut XorShift64Star) -> Result<Option<BlockCheckCase>> {
        let cpu = Device::Cpu;
        let k = [3, 5][r.below(2)];
        let stride = 1 + r.below(2);
        let groups = 1 + r.below(2);
        let (n, h, w) = (1 + r.below(3), 3 + r.below(8), 3 + r.below(8));
        let cin = groups * (1 + r.below(3));
        let identity = stride == 1 && r.below(2) == 0;
        let cout = if identity {
            cin
        } else {
            groups * (1 + r.below(3))
        };
        let cmid = groups * (1 + r.below(2));
        let (ho, wo) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
        // Enough values per channel for the BN gradients to be more than rounding noise, and
        // the geometries candle's conv backward (the other side) gets right.
        if n * ho * wo < 6 || (stride == 2 && (h - 1) % 2 != (w - 1) % 2) {
            return Ok(None);
        }
        let (bias, post, relu) = (r.below(2) == 0, r.below(2) == 0, r.below(2) == 0);
        let tail_only = !post && r.below(2) == 0;
        let pool = (post || tail_only) && ho >= 2 && wo >= 2 && r.below(2) == 0;
        let t = |v: Vec<f32>, shape: &[usize]| Tensor::from_vec(v, shape, &cpu);
        // Arguments: x, the four one-stage weights, the two-stage weights (1×1, k×k; 1×1),
        // then γ, β of every BN, then the main bias.
        let cg = cin / groups;
        let mut args = vec![
            t(r.values(n * cin * h * w), &[n, cin, h, w])?,
            t(r.weights(cout * cg * k * k), &[cout, cg, k, k])?,
            t(r.weights(cout * cg), &[cout, cg, 1, 1])?,
            t(r.weights(cout * cg * k), &[cout, cg, 1, k])?,
            t(r.weights(cout * cg * k), &[cout, cg, k, 1])?,
            t(r.weights(cmid * cg), &[cmid, cg, 1, 1])?,
            t(
                r.weights(cout * (cmid / groups) * k * k),
                &[cout, cmid / groups, k, k],
            )?,
            t(r.weights(cout * cg), &[cout, cg, 1, 1])?,
        ];
        // BNs: four one-stage, the identity, 1×1→k×k (cmid, cout), 1×1→avg (cout, cout), post.
        let mut bn_sizes = vec![cout; 4];
        if identity {
            bn_sizes.push(cout);
        }
        bn_sizes.extend([cmid, cout, cout, cout]);
        if post {
            bn_sizes.push(cout);
        }
        let first_bn = args.len();
        for &size in &bn_sizes {
            args.push(t(r.values(size), &[size])?);
            args.push(t(r.values(size), &[size])?);
        }
        let bias_arg = args.len();
        if bias {
            args.push(t(r.values(cout), &[cout])?);
        }
        let running = [
            t(r.values(cmid), &[cmid])?,
            t(
                r.values(cmid).iter().map(|v| 1.0 + v.abs()).collect(),
                &[cmid],
            )?,
            t(r.values(cout), &[cout])?,
            t(
                r.values(cout).iter().map(|v| 1.0 + v.abs()).collect(),
                &[cout],
            )?,
        ];
        let up = if pool {
            r.values(n * cout * (ho / 2) * (wo / 2))
        } else {
            r.values(n * cout * ho * wo)
        };

        let what = format!(
            "x {n}x{cin}x{h}x{w}, k {k}, stride {stride}, groups {groups}, out {cout}, identity {identity}, bias {bias}, post BN {post}, tail without BN {tail_only} (relu {relu}, 2×2 max pool {pool})"
        );
        Ok(Some(BlockCheckCase {
            k,
            stride,
            groups,
            identity,
            bias,
            post,
            tail_only,
            relu,
            pool,
            first_bn,
            bias_arg,
            args,
            running: running.to_vec(),
            up,
            what,
        }))
    }

    /// The block op on `a` (arguments in this case's order) with the given running statistics.
    fn run(&self, b: Backend, a: &[Tensor], running: &[Tensor]) -> Result<crate::BlockTrain> {
        let (k, stride, groups) = (self.k, self.stride, self.groups);
        let (first_bn, bias_arg, p) = (self.first_bn, self.bias_arg, self.k / 2);
        let (bias, identity, post, relu) = (self.bias, self.identity, self.post, self.relu);
        let conv = |s: usize, pad: (usize, usize)| ConvParams {
            stride: s,
            padding: pad,
            groups,
        };
        let bn = |i: usize| (&a[first_bn + 2 * i], &a[first_bn + 2 * i + 1]);
        let one = |wi: usize, pad: (usize, usize), bi: usize, with_bias: bool| BlockBranch {
            conv: Some((&a[wi], conv(stride, pad))),
            bias: with_bias.then(|| &a[bias_arg]),
            gamma: bn(bi).0,
            beta: bn(bi).1,
            then: None,
        };
        let mut branches = vec![
            one(1, (p, p), 0, bias),
            one(2, (0, 0), 1, false),
            one(3, (0, p), 2, false),
            one(4, (p, 0), 3, false),
        ];
        let mut next = 4;
        if identity {
            branches.push(BlockBranch {
                conv: None,
                bias: None,
                gamma: bn(4).0,
                beta: bn(4).1,
                then: None,
            });
            next = 5;
        }
        // The two-stage branches: (first weight, second stage, first BN, running stats).
        let second = [
            StageOp::Conv(&a[6], conv(stride, (0, 0))),
            StageOp::AvgPool { k, stride },
        ];
        for (j, (wi, op)) in [5usize, 7].into_iter().zip(second).enumerate() {
            let bi = next + 2 * j;
            branches.push(BlockBranch {
                conv: Some((&a[wi], conv(1, (0, 0)))),
                bias: None,
                gamma: bn(bi).0,
                beta: bn(bi).1,
                then: Some(BlockStage {
                    pad: p,
                    pad_from: PadFrom {
                        running_mean: &running[2 * j],
                        running_var: &running[2 * j + 1],
                        factor: 0.1,
                    },
                    op,
                    gamma: bn(bi + 1).0,
                    beta: bn(bi + 1).1,
                }),
            });
        }
        let post_bn = (post || self.tail_only).then(|| BlockTail {
            bn: post.then(|| bn(next + 4)),
            relu,
            pool: self.pool.then_some(MaxPoolParams {
                k: 2,
                stride: 2,
                padding: 0,
            }),
        });
        block_train_on(b, &a[0], &branches, post_bn, 1e-5)
    }

    /// The relative errors of the own op against candle's composition on `device`: the output,
    /// every gradient, every BN's batch mean and variance.
    fn errors(&self, device: &Device) -> Result<Vec<(String, f64)>> {
        let (args, running, up) = (&self.args, &self.running, &self.up);
        let own = with_grads(args, up, &|a| Ok(self.run(Backend::Own, a, running)?.y))?;
        let dev_args = on_device(args, device)?;
        let dev_running = on_device(running, device)?;
        let other = with_grads(&dev_args, up, &|a| {
            Ok(self.run(Backend::Candle, a, &dev_running)?.y)
        })?;
        let mut errs: Vec<(String, f64)> = Vec::new();
        for (i, (a, b)) in own.iter().zip(&other).enumerate() {
            let name = match i {
                0 => "output".to_string(),
                i => format!("gradient of argument {}", i - 1),
            };
            errs.push((name, rel_err_floor(b, a, 1.0)?));
        }
        let own_stats = self.run(Backend::Own, args, running)?.stats;
        let other_stats = self.run(Backend::Candle, &dev_args, &dev_running)?.stats;
        for (i, (a, b)) in own_stats.iter().zip(&other_stats).enumerate() {
            let f32_of = |t: &Tensor| t.to_dtype(candle_core::DType::F32);
            let (mean, var) = (f32_of(&b.mean)?, f32_of(&b.var)?);
            errs.push((format!("BN {i} mean"), rel_err_floor(&mean, &a.mean, 1.0)?));
            errs.push((format!("BN {i} var"), rel_err_floor(&var, &a.var, 1.0)?));
        }
        Ok(errs)
    }
}

fn block_op_tally(device: &Device, cases: usize, seed: u64) -> Result<KernelReport> {
    let mut r = XorShift64Star(seed.wrapping_mul(0xA24B_AED4_963E_E407) | 1);
    // candle's composition runs in f64, so the comparison measures the own f32 kernels alone.
    // Errors are relative to the data's scale (floor 1: inputs, upstream gradients and every BN
    // output are O(1)), not to each tensor's own maximum: in a block many gradients nearly
    // vanish in theory — a BN's β behind the unit's BN — and come out as sums of O(1) terms
    // cancelling to rounding noise. The limit is 1e-3, not 1e-4: a first-stage BN's γ gradient
    // is a sum over the channel's values (N = 70-1,600 here) whose terms, behind the second
    // BN, cancel to about 1/100 of their magnitude, so f32 rounding relative to the result
    // reaches N·2⁻²⁴·100 ≈ 5e-4 (measured worst 5.0e-4 over 640 cases); a wrong branch,
    // statistic or gradient is off by O(1).
    let mut tally = Tally::with_tolerance("grown block (fused)", 1e-3);
    let mut drawn = 0;
    while tally.report.cases < cases && drawn < 100 * cases.max(1) {
        drawn += 1;
        let Some(case) = BlockCheckCase::draw(&mut r)? else {
            continue;
        };
        let errs = case.errors(device)?;
        let errs: Vec<(&str, f64)> = errs.iter().map(|(n, e)| (n.as_str(), *e)).collect();
        tally.case(case.what.clone(), &errs);
    }
    Ok(tally.report)
}

/// One random conv case and the tensors every per-kernel check of it uses (on the CPU).
struct ConvCheckCase {
    s: ConvShape,
    params: ConvParams,
    what: String,
    x: Tensor,
    w: Tensor,
    gamma: Tensor,
    beta: Tensor,
    /// The upstream gradient's values (long enough for every output the checks make).
    up: Vec<f32>,
    /// Whether candle can differentiate this conv (else only outputs are compared).
    grads_ok: bool,
    relu: bool,
}

impl ConvCheckCase {
    fn draw(r: &mut XorShift64Star) -> Result<ConvCheckCase> {
        let cpu = Device::Cpu;
        let s = conv_case(r);
        let params = ConvParams {
            stride: s.stride,
            padding: (s.ph, s.pw),
            groups: s.groups,
        };
        let what = format!(
            "input {}x{}x{}x{}, weight {}x{}x{}x{}, stride {}, padding {:?}, groups {}",
            s.n,
            s.c,
            s.h,
            s.w,
            s.out,
            s.c / s.groups,
            s.kh,
            s.kw,
            s.stride,
            (s.ph, s.pw),
            s.groups
        );
        let x = Tensor::from_vec(r.values(s.n * s.c * s.h * s.w), (s.n, s.c, s.h, s.w), &cpu)?;
        let w = Tensor::from_vec(
            r.weights(s.out * (s.c / s.groups) * s.kh * s.kw),
            (s.out, s.c / s.groups, s.kh, s.kw),
            &cpu,
        )?;
        let gamma = Tensor::from_vec(r.values(s.out), s.out, &cpu)?;
        let beta = Tensor::from_vec(r.values(s.out), s.out, &cpu)?;
        let up = r.values(s.n * s.out * s.ho * s.wo + 4 * s.n * s.c * (s.h + 2) * (s.w + 2));
        let grads_ok = candle_conv_backward_ok(&s);
        let relu = r.below(2) == 0;
        Ok(ConvCheckCase {
            s,
            params,
            what,
            x,
            w,
            gamma,
            beta,
            up,
            grads_ok,
            relu,
        })
    }

    /// The conv's arguments: x, weight, γ, β.
    fn conv_bn_args(&self) -> [Tensor; 4] {
        [
            self.x.clone(),
            self.w.clone(),
            self.gamma.clone(),
            self.beta.clone(),
        ]
    }

    /// Relative errors of own vs other, named; only the output where candle has no gradient.
    fn compare<'n>(
        &self,
        own: Vec<Tensor>,
        other: Vec<Tensor>,
        names: &[&'n str],
    ) -> Result<Vec<(&'n str, f64)>> {
        own.iter()
            .zip(&other)
            .zip(names)
            .take(if self.grads_ok { names.len() } else { 1 })
            .map(|((a, b), n)| Ok((*n, rel_err(b, a)?)))
            .collect()
    }

    /// One input per output channel: the BN cancels the weight's scale, its gradient is zero in
    /// exact arithmetic and rounding noise in f32 on both sides.
    fn weight_grad_is_noise(&self) -> bool {
        (self.s.c / self.s.groups) * self.s.kh * self.s.kw == 1
    }
}

fn on_device(ts: &[Tensor], device: &Device) -> Result<Vec<Tensor>> {
    Ok(ts
        .iter()
        .map(|t| t.to_device(device))
        .collect::<candle_core::Result<Vec<_>>>()?)
}

const CONV_BN_GRADS: [&str; 5] = [
    "output",
    "input grad",
    "weight grad",
    "gamma grad",
    "beta grad",
];

fn check_conv(c: &ConvCheckCase, device: &Device, tally: &mut Tally) -> Result<()> {
    let s = &c.s;
    let conv = |b: Backend| {
        move |a: &[Tensor]| conv2d_on(b, &a[0], &a[1], s.stride, (s.ph, s.pw), s.groups)
    };
    let args = [c.x.clone(), c.w.clone()];
    let own = with_grads(&args, &c.up, &conv(Backend::Own))?;
    let other = run_other(
        c.grads_ok,
        &on_device(&args, device)?,
        &c.up,
        &conv(Backend::Candle),
    )?;
    tally.case(
        c.what.clone(),
        &c.compare(own, other, &["output", "input grad", "weight grad"])?,
    );
    Ok(())
}

fn check_conv_bn(c: &ConvCheckCase, device: &Device, tally: &mut Tally) -> Result<()> {
    let (params, relu) = (c.params, c.relu);
    let run = |b: Backend| {
        move |a: &[Tensor]| {
            Ok(conv_bn_train_on(b, &a[0], &a[1], params, &a[2], &a[3], 1e-5, relu)?.y)
        }
    };
    let args = c.conv_bn_args();
    let own = with_grads(&args, &c.up, &run(Backend::Own))?;
    let other = run_other(
        c.grads_ok,
        &on_device(&args, device)?,
        &c.up,
        &run(Backend::Candle),
    )?;
    let mut errs = c.compare(own, other, &CONV_BN_GRADS)?;
    if c.weight_grad_is_noise() {
        errs.retain(|(n, _)| *n != "weight grad");
    }
    tally.case(c.what.clone(), &errs);
    Ok(())
}

/// The fused max pool against the unfused own kernels (which the other tallies check against
/// candle; candle's max pool has no backward for most geometries).
fn check_conv_bn_pool(c: &ConvCheckCase, r: &mut XorShift64Star, tally: &mut Tally) -> Result<()> {
    let (pk, pool_stride) = (1 + r.below(3), 1 + r.below(2));
    let pool = MaxPoolParams {
        k: pk,
        stride: pool_stride,
        padding: r.below(pk / 2 + 1),
    };
    let s = &c.s;
    if s.ho + 2 * pool.padding < pk || s.wo + 2 * pool.padding < pk {
        return Ok(());
    }
    let (params, relu) = (c.params, c.relu);
    let args = c.conv_bn_args();
    let fused = with_grads(&args, &c.up, &|a| {
        Ok(conv_bn_max_pool_train_on(
            Backend::Own,
            &a[0],
            &a[1],
            params,
            &a[2],
            &a[3],
            1e-5,
            relu,
            pool,
        )?
        .y)
    })?;
    let unfused = with_grads(&args, &c.up, &|a| {
        let y = conv_bn_train_on(Backend::Own, &a[0], &a[1], params, &a[2], &a[3], 1e-5, relu)?.y;
        pool2d_on(
            Backend::Own,
            PoolKind::Max,
            &y,
            pool.k,
            pool.stride,
            pool.padding,
        )
    })?;
    let mut errs = CONV_BN_GRADS
        .iter()
        .zip(unfused.iter().zip(&fused))
        .map(|(n, (a, b))| Ok((*n, rel_err(a, b)?)))
        .collect::<Result<Vec<(&str, f64)>>>()?;
    if c.weight_grad_is_noise() {
        errs.retain(|(n, _)| *n != "weight grad");
    }
    tally.case(format!("{}, max pool {pool:?}", c.what), &errs);
    Ok(())
}

/// Two units as one stack op (the case's conv, then a 3×3 conv with its own BN) against the
/// same units run one by one by the own kernels.
fn check_conv_bn_stack(c: &ConvCheckCase, r: &mut XorShift64Star, tally: &mut Tally) -> Result<()> {
    let (s, cpu) = (&c.s, Device::Cpu);
    let out2 = 1 + r.below(4);
    let w2 = Tensor::from_vec(r.weights(out2 * s.out * 9), (out2, s.out, 3, 3), &cpu)?;
    let gamma2 = Tensor::from_vec(r.values(out2), out2, &cpu)?;
    let beta2 = Tensor::from_vec(r.values(out2), out2, &cpu)?;
    let first_pool = (s.ho >= 2 && s.wo >= 2 && r.below(2) == 0).then_some(MaxPoolParams {
        k: 2,
        stride: 2,
        padding: 0,
    });
    let second = ConvParams {
        stride: 1,
        padding: (1, 1),
        groups: 1,
    };
    let [x, w, gamma, beta] = c.conv_bn_args();
    let stack_args = [x, w, gamma, beta, w2, gamma2, beta2];
    // Per unit: its weight's argument index (γ, β follow), conv, pool.
    let units = [(1, c.params, first_pool), (4, second, None)];
    let relu = c.relu;
    let stacked = with_grads(&stack_args, &c.up, &|a| {
        let args: Vec<StackUnitArgs<'_>> = units
            .iter()
            .map(|&(j, conv, pool)| StackUnitArgs {
                weight: &a[j],
                conv,
                gamma: &a[j + 1],
                beta: &a[j + 2],
                eps: 1e-5,
                relu,
                pool,
            })
            .collect();
        Ok(conv_bn_stack_train_on(Backend::Own, &a[0], &args)?.y)
    })?;
    let one_by_one = with_grads(&stack_args, &c.up, &|a| {
        let mut h = a[0].clone();
        for &(j, conv, pool) in &units {
            let (w, g, b) = (&a[j], &a[j + 1], &a[j + 2]);
            h = match pool {
                None => conv_bn_train_on(Backend::Own, &h, w, conv, g, b, 1e-5, relu)?.y,
                Some(p) => {
                    conv_bn_max_pool_train_on(Backend::Own, &h, w, conv, g, b, 1e-5, relu, p)?.y
                }
            };
        }
        Ok(h)
    })?;
    let stack_names = [
        "output",
        "input grad",
        "weight grad",
        "gamma grad",
        "beta grad",
        "second weight grad",
        "second gamma grad",
        "second beta grad",
    ];
    let errs = stack_names
        .iter()
        .zip(one_by_one.iter().zip(&stacked))
        .map(|(n, (a, b))| Ok((*n, rel_err(a, b)?)))
        .collect::<Result<Vec<(&str, f64)>>>()?;
    tally.case(format!("{}, then 3x3 to {out2}", c.what), &errs);
    Ok(())
}

fn check_conv_affine(c: &ConvCheckCase, device: &Device, tally: &mut Tally) -> Result<()> {
    let (params, relu) = (c.params, c.relu);
    let run = |b: Backend| {
        move |a: &[Tensor]| conv_affine_on(b, &a[0], &a[1], params, &a[2], &a[3], relu)
    };
    let args = c.conv_bn_args();
    let own = with_grads(&args, &c.up, &run(Backend::Own))?;
    let other = run_other(
        c.grads_ok,
        &on_device(&args, device)?,
        &c.up,
        &run(Backend::Candle),
    )?;
    let names = [
        "output",
        "input grad",
        "weight grad",
        "scale grad",
        "shift grad",
    ];
    tally.case(c.what.clone(), &c.compare(own, other, &names)?);
    Ok(())
}

/// Batch norm on the case's input (always candle-differentiable).
fn check_batch_norm(
    c: &ConvCheckCase,
    r: &mut XorShift64Star,
    device: &Device,
    tally: &mut Tally,
) -> Result<()> {
    let (s, cpu) = (&c.s, Device::Cpu);
    let xg = Tensor::from_vec(r.values(s.c), s.c, &cpu)?;
    let xb = Tensor::from_vec(r.values(s.c), s.c, &cpu)?;
    let run =
        |b: Backend| move |a: &[Tensor]| Ok(batch_norm_train_on(b, &a[0], &a[1], &a[2], 1e-5)?.y);
    let args = [c.x.clone(), xg, xb];
    let own = with_grads(&args, &c.up, &run(Backend::Own))?;
    let other = with_grads(&on_device(&args, device)?, &c.up, &run(Backend::Candle))?;
    let errs: Vec<(&str, f64)> = ["output", "input grad", "gamma grad", "beta grad"]
        .iter()
        .zip(own.iter().zip(&other))
        .map(|(n, (a, b))| Ok((*n, rel_err(b, a)?)))
        .collect::<Result<_>>()?;
    if s.n * s.h * s.w >= 2 {
        tally.case(c.what.clone(), &errs);
    }
    Ok(())
}

fn check_relu(c: &ConvCheckCase, device: &Device, tally: &mut Tally) -> Result<()> {
    let own = with_grads(std::slice::from_ref(&c.x), &c.up, &|a| {
        relu_on(Backend::Own, &a[0])
    })?;
    let other = with_grads(
        &on_device(std::slice::from_ref(&c.x), device)?,
        &c.up,
        &|a| relu_on(Backend::Candle, &a[0]),
    )?;
    tally.case(
        c.what.clone(),
        &[
            ("output", rel_err(&other[0], &own[0])?),
            ("grad", rel_err(&other[1], &own[1])?),
        ],
    );
    Ok(())
}

fn check_pool(
    c: &ConvCheckCase,
    r: &mut XorShift64Star,
    device: &Device,
    tally: &mut Tally,
) -> Result<()> {
    let kind = if r.below(2) == 0 {
        PoolKind::Avg
    } else {
        PoolKind::Max
    };
    let (k, stride) = (1 + r.below(3), 1 + r.below(2));
    let padding = r.below(k / 2 + 1);
    let s = &c.s;
    if s.h + 2 * padding < k || s.w + 2 * padding < k {
        return Ok(());
    }
    let run = |b: Backend| move |a: &[Tensor]| pool2d_on(b, kind, &a[0], k, stride, padding);
    let x = std::slice::from_ref(&c.x);
    let own = with_grads(x, &c.up, &run(Backend::Own))?;
    let other = with_grads(&on_device(x, device)?, &c.up, &run(Backend::Candle))?;
    tally.case(
        format!(
            "{kind:?} pool {k}x{k} stride {stride} padding {padding} on {}",
            c.what
        ),
        &[
            ("output", rel_err(&other[0], &own[0])?),
            ("grad", rel_err(&other[1], &own[1])?),
        ],
    );
    Ok(())
}

/// The direct conv kernel (where the active tier has one) against candle's conv.
fn direct_conv_tally(device: &Device, cases: usize, seed: u64) -> Result<KernelReport> {
    let cpu = Device::Cpu;
    let mut direct = Tally::new("conv2d (direct kernel)");
    let mut rd = XorShift64Star(seed.wrapping_mul(0xD1B5_4A32_D192_ED03) | 1);
    for _ in 0..cases {
        let Some(s) = direct_case(&mut rd) else {
            break;
        };
        let what = format!(
            "input {}x{}x{}x{}, weight {}x{}x{}x{}, padding {:?}",
            s.n,
            s.c,
            s.h,
            s.w,
            s.out,
            s.c,
            s.kh,
            s.kw,
            (s.ph, s.pw)
        );
        let x = Tensor::from_vec(rd.values(s.n * s.c * s.h * s.w), (s.n, s.c, s.h, s.w), &cpu)?;
        let w = Tensor::from_vec(
            rd.weights(s.out * s.c * s.kh * s.kw),
            (s.out, s.c, s.kh, s.kw),
            &cpu,
        )?;
        let up = rd.values(s.n * s.out * s.ho * s.wo);
        let conv = |b: Backend| move |a: &[Tensor]| conv2d_on(b, &a[0], &a[1], 1, (s.ph, s.pw), 1);
        let args = [x, w];
        let own = with_grads(&args, &up, &conv(Backend::Own))?;
        let other = run_other(
            true,
            &on_device(&args, device)?,
            &up,
            &conv(Backend::Candle),
        )?;
        let errs = own
            .iter()
            .zip(&other)
            .zip(["output", "input grad", "weight grad"])
            .map(|((a, b), n)| Ok((n, rel_err(b, a)?)))
            .collect::<Result<Vec<(&str, f64)>>>()?;
        direct.case(what, &errs);
    }
    Ok(direct.report)
}

/// Runs `cases` random cases of every kernel: own CPU kernels against candle's ops on `device`.
pub fn check_kernels(device: &Device, cases: usize, seed: u64) -> Result<Vec<KernelReport>> {
    let mut r = XorShift64Star(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut conv = Tally::new("conv2d");
    let mut conv_bn = Tally::new("conv+bn+relu (train)");
    let mut conv_bn_pool = Tally::new("conv+bn+relu+pool (fused)");
    let mut conv_bn_stack = Tally::new("conv unit stack (fused)");
    let mut conv_aff = Tally::new("conv+affine+relu (eval)");
    let mut bn = Tally::new("batch_norm (train)");
    let mut pools = Tally::new("avg/max pool");
    let mut relu = Tally::new("relu");
    for _ in 0..cases {
        let c = ConvCheckCase::draw(&mut r)?;
        check_conv(&c, device, &mut conv)?;
        check_conv_bn(&c, device, &mut conv_bn)?;
        check_conv_bn_pool(&c, &mut r, &mut conv_bn_pool)?;
        check_conv_bn_stack(&c, &mut r, &mut conv_bn_stack)?;
        check_conv_affine(&c, device, &mut conv_aff)?;
        check_batch_norm(&c, &mut r, device, &mut bn)?;
        check_relu(&c, device, &mut relu)?;
        check_pool(&c, &mut r, device, &mut pools)?;
    }
    let direct = direct_conv_tally(device, cases, seed)?;
    let mut reports = vec![
        conv.report,
        conv_bn.report,
        conv_bn_pool.report,
        conv_bn_stack.report,
        conv_aff.report,
        bn.report,
        pools.report,
        relu.report,
    ];
    // Only where the active tier has a direct kernel (AVX2 or AVX-512).
    if direct.cases > 0 {
        reports.insert(1, direct);
    }
    reports.push(block_op_tally(device, cases, seed)?);
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_kernels_agree_with_candle_on_the_cpu() {
        let reports = check_kernels(&Device::Cpu, 40, 7).unwrap();
        // The direct conv's row where the active tier has the kernel.
        let direct = crate::direct_conv_tier().is_some();
        assert_eq!(reports.len(), if direct { 10 } else { 9 });
        assert!(reports.iter().any(|r| r.kernel == "grown block (fused)"));
        assert_eq!(
            reports.iter().any(|r| r.kernel == "conv2d (direct kernel)"),
            direct
        );
        for r in &reports {
            assert!(r.cases > 0, "{r:?}");
            assert_eq!(r.failures, 0, "{r:?}");
        }
    }
}
