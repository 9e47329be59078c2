//! Shared plumbing of the CPU kernels: reading f32 slices out of candle storage, building output
//! tensors, a bounds-checked wrapper around the `gemm` crate's sgemm, per-thread scratch
//! buffers (so im2col does not allocate per image), and the thread-count policy
//! (candle's CPU thread pool is rayon's global one, sized by `RAYON_NUM_THREADS`).

use std::cell::RefCell;
use std::mem::MaybeUninit;

use candle_core::{CpuStorage, Layout, Storage, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

/// The contiguous f32 data of a custom op's argument.
pub(crate) fn slice_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &'static str,
) -> candle_core::Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => Err(candle_core::Error::RequiresContiguous { op }),
    }
}

/// Runs `f` on the contiguous f32 data of a (CPU) tensor; used by backward passes, which get
/// tensors rather than storages.
pub(crate) fn with_f32<R>(
    t: &Tensor,
    op: &'static str,
    f: impl FnOnce(&[f32]) -> R,
) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => Ok(f(slice_f32(cpu, layout, op)?)),
        _ => Err(candle_core::Error::Msg(format!(
            "{op}: the CPU kernel got a tensor on another device"
        ))),
    }
}

/// A tensor holding `data` with `shape` on the device of `like` (always the CPU here).
pub(crate) fn tensor_like(
    data: Vec<f32>,
    shape: &[usize],
    like: &Tensor,
) -> candle_core::Result<Tensor> {
    Tensor::from_vec(data, shape, like.device())
}

/// Threads the kernels may use: rayon's pool (which candle shares).
pub(crate) fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// A matrix view: element `(r, c)` is `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl Mat<'_> {
    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `dst[m×n]` (row-major, row stride `dst_rs`) = (`accumulate` ? dst : 0) + a · b.
/// Panics (a bug, not an input error) if a view does not fit its slice; callers size
/// everything from validated shapes.
pub(crate) fn sgemm(
    dst: &mut [f32],
    dst_rs: usize,
    a: Mat<'_>,
    b: Mat<'_>,
    accumulate: bool,
    parallel: bool,
) {
    sgemm_strided(dst, dst_rs, 1, a, b, accumulate, parallel);
}

/// `sgemm` with any destination layout: element `(r, c)` of `dst` is `dst[r·dst_rs + c·dst_cs]`.
/// The gemm crate's microkernel runs down columns, so a column-major destination (`dst_rs = 1`)
/// lets it skip transposing its operands where a row-major one would make it pack the larger
/// operand element by element (the weight gradient: 1.2-2× faster, BENCHMARKS.md).
pub(crate) fn sgemm_strided(
    dst: &mut [f32],
    dst_rs: usize,
    dst_cs: usize,
    a: Mat<'_>,
    b: Mat<'_>,
    accumulate: bool,
    parallel: bool,
) {
    if !check_gemm(dst.len(), dst_rs, dst_cs, a, b) {
        return;
    }
    if a.cols == 0 {
        if !accumulate {
            for r in 0..a.rows {
                for c in 0..b.cols {
                    dst[r * dst_rs + c * dst_cs] = 0.0;
                }
            }
        }
        return;
    }
    // SAFETY: `check_gemm` checked every operand against its slice; `dst` is exclusively
    // borrowed.
    unsafe { run_gemm(dst.as_mut_ptr(), dst_rs, dst_cs, a, b, accumulate, parallel) }
}

/// Checks a gemm's views against their slices and a destination of `dst_len` floats (panics:
/// a bug, callers size everything from validated shapes); false when the product is empty.
fn check_gemm(dst_len: usize, dst_rs: usize, dst_cs: usize, a: Mat<'_>, b: Mat<'_>) -> bool {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "sgemm inner dimensions");
    assert!(a.fits() && b.fits(), "sgemm operand out of bounds");
    assert!(
        m == 0 || n == 0 || (m - 1) * dst_rs + (n - 1) * dst_cs < dst_len,
        "sgemm destination out of bounds"
    );
    m > 0 && n > 0
}

/// The gemm crate's call for `dst (m×n) = (accumulate ? dst : 0) + a · b`.
///
/// # Safety
/// [`check_gemm`] passed for these views and a destination of at least the checked length at
/// `dst`, writable and not aliased; `a.cols > 0`.
unsafe fn run_gemm(
    dst: *mut f32,
    dst_rs: usize,
    dst_cs: usize,
    a: Mat<'_>,
    b: Mat<'_>,
    accumulate: bool,
    parallel: bool,
) {
    let parallelism = if parallel && threads() > 1 {
        Parallelism::Rayon(threads())
    } else {
        Parallelism::None
    };
    // SAFETY: the caller's contract; with `accumulate` false the gemm only writes `dst`.
    unsafe {
        gemm::gemm(
            a.rows,
            b.cols,
            a.cols,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `len` floats to be written through `MaybeUninit` and then taken with [`assume_init_vec`]:
/// skips the zero fill of `vec![0.0; len]` (calloc of reused heap memory is a memset pass,
/// 5-7 % of a training step, over outputs that are written in full next).
pub(crate) fn uninit_vec(len: usize) -> Vec<MaybeUninit<f32>> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: `MaybeUninit` values need no initialisation; the capacity is `len`.
    unsafe { v.set_len(len) };
    v
}

/// The floats of a buffer from [`uninit_vec`].
///
/// # Safety
/// Every element of `v` has been written.
pub(crate) unsafe fn assume_init_vec(v: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: same allocation, length and capacity; `MaybeUninit<f32>` has `f32`'s layout and
    // the caller guarantees every element is initialised.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<f32>(), v.len(), v.capacity()) }
}

/// A written part of a buffer from [`uninit_vec`], as floats.
///
/// # Safety
/// Every element of `s` has been written.
pub(crate) unsafe fn assume_init_slice(s: &[MaybeUninit<f32>]) -> &[f32] {
    // SAFETY: `MaybeUninit<f32>` has `f32`'s layout; the caller guarantees initialisation.
    unsafe { &*(s as *const [MaybeUninit<f32>] as *const [f32]) }
}

/// [`sgemm`] without accumulation into a destination that may be uninitialised: the gemm
/// writes every element of the `m×n` block and reads none.
pub(crate) fn sgemm_uninit(
    dst: &mut [MaybeUninit<f32>],
    dst_rs: usize,
    a: Mat<'_>,
    b: Mat<'_>,
    parallel: bool,
) {
    if !check_gemm(dst.len(), dst_rs, 1, a, b) {
        return;
    }
    if a.cols == 0 {
        for r in 0..a.rows {
            for v in &mut dst[r * dst_rs..r * dst_rs + b.cols] {
                v.write(0.0);
            }
        }
        return;
    }
    // SAFETY: `check_gemm` checked every operand; without accumulation the gemm writes the
    // destination and reads none of it, so it may be uninitialised.
    unsafe {
        run_gemm(
            dst.as_mut_ptr().cast::<f32>(),
            dst_rs,
            1,
            a,
            b,
            false,
            parallel,
        )
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with a per-thread scratch buffer of `len` floats (contents unspecified). Falls back
/// to a fresh buffer if this thread's one is in use (a nested kernel on the same thread).
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut f = Some(f);
    let done = SCRATCH.with(|cell| {
        let Ok(mut buf) = cell.try_borrow_mut() else {
            return None;
        };
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        f.take().map(|f| f(&mut buf[..len]))
    });
    match (done, f) {
        (Some(r), _) => r,
        (None, Some(f)) => f(&mut vec![0.0; len]),
        (None, None) => unreachable!("scratch closure taken but not run"),
    }
}

/// The element-wise sum of `parts` (each `len` floats), added in their order,
/// `((p₀ + p₁) + p₂) + …`, on any thread count: threads split the elements, never the parts.
/// Zeros when there are none.
pub(crate) fn sum_in_order(parts: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    const CHUNK: usize = 1 << 14;
    let mut parts = parts.into_iter();
    let Some(mut sum) = parts.next() else {
        return vec![0.0; len];
    };
    let rest: Vec<Vec<f32>> = parts.collect();
    if !rest.is_empty() {
        sum.par_chunks_mut(CHUNK).enumerate().for_each(|(i, s)| {
            for p in &rest {
                for (a, b) in s.iter_mut().zip(&p[i * CHUNK..]) {
                    *a += b;
                }
            }
        });
    }
    sum
}

/// Splits `0..n` into at most `parts` contiguous ranges of near-equal size.
pub(crate) fn split_range(n: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.clamp(1, n.max(1));
    let base = n / parts;
    let extra = n % parts;
    let mut out = Vec::with_capacity(parts);
    let mut start = 0;
    for i in 0..parts {
        let len = base + usize::from(i < extra);
        out.push(start..start + len);
        start += len;
    }
    out
}

/// Deterministic pseudo-random floats in [-1, 1) for unit tests (xorshift).
#[cfg(test)]
pub(crate) fn test_values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Runs `f` on a rayon pool of `threads` threads (unit tests of thread-count independence).
#[cfg(test)]
pub(crate) fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a rayon pool")
        .install(f)
}

/// Bit-for-bit equality of two float slices (unit tests), naming the first difference.
#[cfg(test)]
pub(crate) fn assert_same_bits(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    if let Some(i) = (0..a.len()).find(|&i| a[i].to_bits() != b[i].to_bits()) {
        panic!("{what}[{i}]: {} vs {}", a[i], b[i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgemm_matches_naive_with_transposed_views() {
        let a: Vec<f32> = (0..6).map(|v| v as f32).collect(); // 2x3
        let b: Vec<f32> = (0..12).map(|v| (v as f32) * 0.5).collect(); // 3x4 stored as 4x3 (transposed)
        let mut dst = vec![1.0f32; 8];
        sgemm(
            &mut dst,
            4,
            Mat {
                data: &a,
                rows: 2,
                cols: 3,
                rs: 3,
                cs: 1,
            },
            Mat {
                data: &b,
                rows: 3,
                cols: 4,
                rs: 1,
                cs: 3,
            },
            true,
            false,
        );
        for r in 0..2 {
            for c in 0..4 {
                let want: f32 = 1.0 + (0..3).map(|k| a[r * 3 + k] * b[c * 3 + k]).sum::<f32>();
                assert!((dst[r * 4 + c] - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn sgemm_into_a_column_major_destination_matches_naive() {
        // 5x3 = (5x7)(7x3), dst column-major with a padded column stride of 6.
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|v| (v as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|v| (v as f32 * 0.91).cos()).collect();
        let mut dst = vec![0.5f32; 6 * n];
        for accumulate in [false, true] {
            let before = dst.clone();
            sgemm_strided(
                &mut dst,
                1,
                6,
                Mat {
                    data: &a,
                    rows: m,
                    cols: k,
                    rs: k,
                    cs: 1,
                },
                Mat {
                    data: &b,
                    rows: k,
                    cols: n,
                    rs: n,
                    cs: 1,
                },
                accumulate,
                false,
            );
            for r in 0..m {
                for c in 0..n {
                    let prod: f32 = (0..k).map(|i| a[r * k + i] * b[i * n + c]).sum();
                    let want = prod + if accumulate { before[r + 6 * c] } else { 0.0 };
                    assert!(
                        (dst[r + 6 * c] - want).abs() < 1e-5,
                        "({r},{c}) acc {accumulate}"
                    );
                }
            }
            // The padding rows between columns are left alone.
            assert_eq!(dst[5], before[5]);
        }
    }

    #[test]
    fn split_range_covers_everything_once() {
        for n in 0..10 {
            for p in 1..5 {
                let r = split_range(n, p);
                assert_eq!(r.iter().map(|r| r.len()).sum::<usize>(), n);
                assert!(r.windows(2).all(|w| w[0].end == w[1].start));
            }
        }
    }

    #[test]
    fn nested_scratch_does_not_panic() {
        let v = with_scratch(4, |a| {
            a.fill(1.0);
            with_scratch(3, |b| {
                b.fill(2.0);
                b.len()
            }) + a.len()
        });
        assert_eq!(v, 7);
    }
}

#[cfg(test)]
mod thread_count_tests {
    use super::*;

    /// The threaded gemm splits the product's rows and columns among threads, never the sum
    /// over the inner dimension: every output is the same dot product in the same order on any
    /// thread count, and equal to the single-threaded gemm's. The kernels rely on this to keep
    /// a run's bits independent of the core count.
    #[test]
    fn gemm_bits_do_not_depend_on_its_threads() {
        // (m, k, n, dst_rs = 1: column-major destination) — above the gemm's threading
        // threshold, with ragged edges against its register blocks.
        for (case, (m, k, n, col_major)) in [
            (64, 576, 1024, false),
            (37, 1153, 259, false),
            (128, 4000, 96, true),
            (9, 30, 1000, true),
        ]
        .into_iter()
        .enumerate()
        {
            let a = test_values(m * k, case as u64);
            let b = test_values(k * n, case as u64 ^ 7);
            let (rs, cs) = if col_major { (1, m) } else { (n, 1) };
            let run = |parallel: bool| {
                let mut dst = test_values(m * n, 99);
                let am = Mat {
                    data: &a,
                    rows: m,
                    cols: k,
                    rs: k,
                    cs: 1,
                };
                let bm = Mat {
                    data: &b,
                    rows: k,
                    cols: n,
                    rs: n,
                    cs: 1,
                };
                sgemm_strided(&mut dst, rs, cs, am, bm, true, parallel);
                dst
            };
            let single = run(false);
            for t in 1..=5 {
                let threaded = on_threads(t, || run(true));
                assert_same_bits(&single, &threaded, &format!("case {case}, {t} threads"));
            }
        }
    }
}
