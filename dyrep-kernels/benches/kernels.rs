//! Criterion benches, one per kernel: conv forward, input gradient and
//! weight gradient at bench-cifar's 64→64 layer and bench-small's 32→32 layer, a 1×1 conv, a
//! depthwise conv, batch norm (train forward + backward), ReLU and the pools, plus the machine's
//! f32 gemm at the conv's lowered shape as the ceiling. Run: `cargo bench -p dyrep-kernels`.
//! Throughput is reported in FLOP (2 × MACs) where that is meaningful.

use candle_core::{Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dyrep_kernels::{avg_pool2d, batch_norm_train, max_pool2d, relu, ConvShape};

fn values(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

fn conv_layer(
    c: &mut Criterion,
    name: &str,
    x: [usize; 4],
    w: [usize; 4],
    pad: usize,
    groups: usize,
) {
    let s = ConvShape::new(&x, &w, 1, (pad, pad), groups).expect("bench shape");
    let xs = values(x.iter().product(), 1);
    let ws = values(w.iter().product(), 2);
    let dy = values(s.output_dims().iter().product(), 3);
    let mut g = c.benchmark_group(name);
    g.sample_size(10);
    g.throughput(Throughput::Elements(2 * s.macs()));
    g.bench_function("forward", |b| b.iter(|| s.forward(&xs, &ws)));
    g.bench_function("input_grad", |b| b.iter(|| s.input_grad(&ws, &dy)));
    g.bench_function("weight_grad", |b| b.iter(|| s.weight_grad(&xs, &dy)));
    g.finish();
}

fn convs(c: &mut Criterion) {
    conv_layer(
        c,
        "conv3x3_64to64_32x32_b64",
        [64, 64, 32, 32],
        [64, 64, 3, 3],
        1,
        1,
    );
    conv_layer(
        c,
        "conv3x3_32to32_28x28_b128",
        [128, 32, 28, 28],
        [32, 32, 3, 3],
        1,
        1,
    );
    // Small planes (bench-small's and bench-cifar's later layers): the direct kernel computes
    // the padded width too, so these show its waste.
    conv_layer(
        c,
        "conv3x3_64to64_14x14_b128",
        [128, 64, 14, 14],
        [64, 64, 3, 3],
        1,
        1,
    );
    conv_layer(
        c,
        "conv3x3_128to256_8x8_b64",
        [64, 128, 8, 8],
        [256, 128, 3, 3],
        1,
        1,
    );
    // bench-cifar's remaining layers, so a step's conv time can be read layer by layer.
    conv_layer(
        c,
        "conv3x3_3to64_32x32_b64",
        [64, 3, 32, 32],
        [64, 3, 3, 3],
        1,
        1,
    );
    conv_layer(
        c,
        "conv3x3_64to128_16x16_b64",
        [64, 64, 16, 16],
        [128, 64, 3, 3],
        1,
        1,
    );
    conv_layer(
        c,
        "conv3x3_128to128_16x16_b64",
        [64, 128, 16, 16],
        [128, 128, 3, 3],
        1,
        1,
    );
    // bench-small's remaining layers.
    conv_layer(
        c,
        "conv3x3_1to32_28x28_b128",
        [128, 1, 28, 28],
        [32, 1, 3, 3],
        1,
        1,
    );
    conv_layer(
        c,
        "conv3x3_32to64_14x14_b128",
        [128, 32, 14, 14],
        [64, 32, 3, 3],
        1,
        1,
    );
    conv_layer(
        c,
        "conv3x3_64to128_7x7_b128",
        [128, 64, 7, 7],
        [128, 64, 3, 3],
        1,
        1,
    );
    conv_layer(
        c,
        "conv1x1_64to64_32x32_b64",
        [64, 64, 32, 32],
        [64, 64, 1, 1],
        0,
        1,
    );
    conv_layer(
        c,
        "depthwise3x3_64_32x32_b64",
        [64, 64, 32, 32],
        [64, 1, 3, 3],
        1,
        64,
    );
}

/// The ceiling: one f32 gemm with the 64→64 conv's lowered forward shape for the whole batch
/// (m = 64 out channels, k = 576, n = 64 images · 1024 pixels), through candle's matmul.
fn gemm_ceiling(c: &mut Criterion) {
    let dev = Device::Cpu;
    let (m, k, n) = (64usize, 576usize, 65536usize);
    let a = Tensor::from_vec(values(m * k, 4), (m, k), &dev).expect("tensor");
    let b = Tensor::from_vec(values(k * n, 5), (k, n), &dev).expect("tensor");
    let mut g = c.benchmark_group("gemm_64x576x65536");
    g.sample_size(10);
    g.throughput(Throughput::Elements((2 * m * k * n) as u64));
    g.bench_function("matmul", |bch| bch.iter(|| a.matmul(&b).expect("matmul")));
    g.finish();
}

/// BN, ReLU and pools at bench-cifar's first-layer size, forward and backward through candle's
/// graph. The backward starts from the output itself (candle seeds it with a contiguous
/// ones-like gradient); through `sum_all` it would get a broadcast gradient, and candle's
/// strided copy of it to contiguous memory cost more than the kernels.
fn elementwise(c: &mut Criterion) {
    let dev = Device::Cpu;
    let dims = (64usize, 64usize, 32usize, 32usize);
    let len = dims.0 * dims.1 * dims.2 * dims.3;
    let x = Var::from_tensor(&Tensor::from_vec(values(len, 6), dims, &dev).expect("tensor"))
        .expect("var");
    let gamma = Var::ones(64, candle_core::DType::F32, &dev).expect("var");
    let beta = Var::zeros(64, candle_core::DType::F32, &dev).expect("var");
    let mut g = c.benchmark_group("elementwise_64x64x32x32");
    g.sample_size(10);
    g.throughput(Throughput::Elements(len as u64));
    g.bench_function("batch_norm_train_fwd_bwd", |b| {
        b.iter(|| {
            let y = batch_norm_train(&x, &gamma, &beta, 1e-5).expect("bn").y;
            y.backward().expect("backward")
        })
    });
    g.bench_function("relu_fwd_bwd", |b| {
        b.iter(|| relu(&x).expect("relu").backward().expect("bwd"))
    });
    g.bench_function("max_pool2_fwd_bwd", |b| {
        b.iter(|| {
            max_pool2d(&x, 2, 2, 0)
                .expect("pool")
                .backward()
                .expect("bwd")
        })
    });
    g.bench_function("avg_pool3_s1_p1_fwd_bwd", |b| {
        b.iter(|| {
            avg_pool2d(&x, 3, 1, 1)
                .expect("pool")
                .backward()
                .expect("bwd")
        })
    });
    g.finish();
}

/// The allocator policy `dyrep` trains with (`dyrep_runtime::alloc::keep_freed_memory`):
/// without it every activation-sized buffer is a fresh mmap whose pages fault in zeroed, which
/// costs more than the elementwise kernels themselves.
fn keep_freed_memory(_: &mut Criterion) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator tunables; criterion runs the benches on this thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

criterion_group!(benches, keep_freed_memory, gemm_ceiling, convs, elementwise);
criterion_main!(benches);
