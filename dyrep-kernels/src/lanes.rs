//! Lane-parallel f32 reductions for the batch-norm passes (BN in train mode,
//! docs/REFERENCE.md). A plain `s += v` loop is one add chain: 4 cycles per value, since the
//! compiler may not reorder float adds — several times slower than reading the values from
//! cache, and most of the cost of the BN statistics taken in a conv's epilogue. Here value `i`
//! goes into partial sum `i mod LANES`, and the lanes are added in order at the end. Three
//! tiers (`crate::isa`): one AVX-512 vector of partial sums, two AVX2 vectors (lanes 0-7 and
//! 8-15) with the tail finished lane by lane, and the same sums lane by lane in portable code.
//! Every tier adds the same values in the same order with separate multiplies and adds (no
//! FMA), so all return the same bits.

use std::mem::MaybeUninit;

use crate::isa::{self, Isa};

/// Partial sums per reduction: one 512-bit vector of f32.
pub(crate) const LANES: usize = 16;

/// `(Σ (v − shift), Σ (v − shift)²)` over `x`.
pub(crate) fn shifted_sums(x: &[f32], shift: f32) -> (f32, f32) {
    shifted_sums_on(isa::active(), x, shift)
}

/// [`shifted_sums`] on a given tier (one the CPU supports; lower tiers otherwise).
fn shifted_sums_on(tier: Isa, x: &[f32], shift: f32) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if tier >= Isa::Avx512 && Isa::Avx512.supported() {
            // SAFETY: AVX-512F is available; the pointer is valid for `x.len()` reads.
            return unsafe { shifted_sums_avx512(x.as_ptr(), x.len(), shift) };
        }
        if tier >= Isa::Avx2 && Isa::Avx2.supported() {
            // SAFETY: AVX2 is available (checked just above).
            return unsafe { shifted_sums_avx2(x, shift) };
        }
    }
    let (mut s, mut ss) = ([0.0f32; LANES], [0.0f32; LANES]);
    shifted_sums_lanes(x, 0, shift, &mut s, &mut ss);
    (total(&s), total(&ss))
}

/// The portable lane loop from value `start` on: value `i` into lane `i mod LANES`.
fn shifted_sums_lanes(
    x: &[f32],
    start: usize,
    shift: f32,
    s: &mut [f32; LANES],
    ss: &mut [f32; LANES],
) {
    for (i, &v) in x.iter().enumerate().skip(start) {
        let d = v - shift;
        s[i % LANES] += d;
        ss[i % LANES] += d * d;
    }
}

/// The gradient pass of a batch norm (optionally behind a ReLU) over one plane:
/// `d = dy` where `relu_out` is absent or not `≤ 0`, else 0; writes `d·out_scale` to `out` when
/// given and returns `(Σ d, Σ d·((z − shift) − mean_rel))`. All slices have `dy`'s length.
pub(crate) struct GradPass<'a> {
    pub dy: &'a [f32],
    pub z: &'a [f32],
    pub relu_out: Option<&'a [f32]>,
    pub shift: f32,
    pub mean_rel: f32,
    pub out_scale: f32,
}

impl GradPass<'_> {
    pub fn run(&self, out: Option<&mut [MaybeUninit<f32>]>) -> (f32, f32) {
        let n = self.dy.len();
        assert!(
            self.z.len() == n
                && self.relu_out.is_none_or(|y| y.len() == n)
                && out.as_ref().is_none_or(|o| o.len() == n),
            "gradient pass: plane lengths differ"
        );
        self.run_on(isa::active(), out)
    }

    /// [`Self::run`] on a given tier (one the CPU supports; lower tiers otherwise).
    fn run_on(&self, tier: Isa, out: Option<&mut [MaybeUninit<f32>]>) -> (f32, f32) {
        #[cfg(target_arch = "x86_64")]
        {
            if tier >= Isa::Avx512 && Isa::Avx512.supported() {
                let out = out.map(|o| o.as_mut_ptr().cast::<f32>());
                // SAFETY: AVX-512F is available; every slice holds `n` values (asserted).
                return unsafe { self.run_avx512(out) };
            }
            if tier >= Isa::Avx2 && Isa::Avx2.supported() {
                // SAFETY: AVX2 is available (checked just above).
                return unsafe { self.run_avx2(out) };
            }
        }
        let (mut a, mut b) = ([0.0f32; LANES], [0.0f32; LANES]);
        self.run_lanes(0, out, &mut a, &mut b);
        (total(&a), total(&b))
    }

    /// The portable lane loop from value `start` on (value `i` into lane `i mod LANES`).
    fn run_lanes(
        &self,
        start: usize,
        out: Option<&mut [MaybeUninit<f32>]>,
        a: &mut [f32; LANES],
        b: &mut [f32; LANES],
    ) {
        let n = self.dy.len();
        let mut out = out;
        for i in start..n {
            let d = match self.relu_out {
                Some(y) if y[i] <= 0.0 => 0.0,
                _ => self.dy[i],
            };
            if let Some(o) = out.as_deref_mut() {
                o[i].write(d * self.out_scale);
            }
            a[i % LANES] += d;
            b[i % LANES] += d * ((self.z[i] - self.shift) - self.mean_rel);
        }
    }

    /// The whole vectors of 16 values as two AVX2 vectors of partial sums (lanes 0-7 and
    /// 8-15), the tail by [`Self::run_lanes`]: the portable path's sums in its order.
    ///
    /// # Safety
    /// AVX2 must be available.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2(&self, out: Option<&mut [MaybeUninit<f32>]>) -> (f32, f32) {
        use std::arch::x86_64::*;
        let n = self.dy.len();
        let whole = n - n % LANES;
        let (shift, mean_rel) = (_mm256_set1_ps(self.shift), _mm256_set1_ps(self.mean_rel));
        let (scale, zero) = (_mm256_set1_ps(self.out_scale), _mm256_setzero_ps());
        let (mut a, mut b) = ([zero; 2], [zero; 2]);
        let mut out = out;
        let mut i = 0;
        while i < whole {
            for (half, (a, b)) in a.iter_mut().zip(b.iter_mut()).enumerate() {
                let at = i + 8 * half;
                // SAFETY: `at + 8 ≤ whole ≤ n`: every slice holds `n` values (asserted in run).
                let mut d = unsafe { _mm256_loadu_ps(self.dy.as_ptr().add(at)) };
                if let Some(y) = self.relu_out {
                    // Keep d where y is not ≤ 0 (NaN included), as the scalar path.
                    // SAFETY: as above.
                    let yv = unsafe { _mm256_loadu_ps(y.as_ptr().add(at)) };
                    d = _mm256_and_ps(d, _mm256_cmp_ps::<_CMP_NLE_UQ>(yv, zero));
                }
                if let Some(o) = out.as_deref_mut() {
                    // SAFETY: as above; `o` holds `n` values.
                    unsafe {
                        _mm256_storeu_ps(o.as_mut_ptr().add(at).cast(), _mm256_mul_ps(d, scale))
                    };
                }
                // SAFETY: as above.
                let zv = unsafe { _mm256_loadu_ps(self.z.as_ptr().add(at)) };
                let zc = _mm256_sub_ps(_mm256_sub_ps(zv, shift), mean_rel);
                *a = _mm256_add_ps(*a, d);
                *b = _mm256_add_ps(*b, _mm256_mul_ps(d, zc));
            }
            i += LANES;
        }
        let (mut la, mut lb) = (lanes_of(a), lanes_of(b));
        self.run_lanes(whole, out, &mut la, &mut lb);
        (total(&la), total(&lb))
    }

    /// # Safety
    /// AVX-512F must be available; `out`, when given, valid for `dy.len()` writes.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_avx512(&self, out: Option<*mut f32>) -> (f32, f32) {
        // SAFETY: the caller upholds this function's `# Safety` contract.
        unsafe {
            use std::arch::x86_64::*;
            let n = self.dy.len();
            let (dy, z) = (self.dy.as_ptr(), self.z.as_ptr());
            let relu_out = self.relu_out.map(<[f32]>::as_ptr);
            let (shift, mean_rel) = (_mm512_set1_ps(self.shift), _mm512_set1_ps(self.mean_rel));
            let (scale, zero) = (_mm512_set1_ps(self.out_scale), _mm512_setzero_ps());
            let (mut a, mut b) = (zero, zero);
            let mut i = 0;
            while i < n {
                let m = first_lanes(n - i);
                let mut d = _mm512_maskz_loadu_ps(m, dy.add(i));
                if let Some(y) = relu_out {
                    // Keep d where y is not ≤ 0 (NaN included), as the scalar path.
                    let keep =
                        _mm512_cmp_ps_mask::<_CMP_NLE_UQ>(_mm512_maskz_loadu_ps(m, y.add(i)), zero);
                    d = _mm512_maskz_mov_ps(keep, d);
                }
                if let Some(o) = out {
                    _mm512_mask_storeu_ps(o.add(i), m, _mm512_mul_ps(d, scale));
                }
                let zc = _mm512_sub_ps(
                    _mm512_sub_ps(_mm512_maskz_loadu_ps(m, z.add(i)), shift),
                    mean_rel,
                );
                a = _mm512_mask_add_ps(a, m, a, d);
                b = _mm512_mask_add_ps(b, m, b, _mm512_mul_ps(d, zc));
                i += LANES;
            }
            (total_vector(a), total_vector(b))
        }
    }
}

/// [`shifted_sums`] with two AVX2 vectors of partial sums for the whole vectors of 16 values
/// and the portable lane loop for the tail.
///
/// # Safety
/// AVX2 must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn shifted_sums_avx2(x: &[f32], shift: f32) -> (f32, f32) {
    use std::arch::x86_64::*;
    let whole = x.len() - x.len() % LANES;
    let sh = _mm256_set1_ps(shift);
    let (mut s, mut ss) = ([_mm256_setzero_ps(); 2], [_mm256_setzero_ps(); 2]);
    for chunk in x[..whole].chunks_exact(LANES) {
        for (half, (s, ss)) in s.iter_mut().zip(ss.iter_mut()).enumerate() {
            // SAFETY: `chunk` holds 16 values; this reads 8 of them.
            let d = _mm256_sub_ps(unsafe { _mm256_loadu_ps(chunk.as_ptr().add(8 * half)) }, sh);
            *s = _mm256_add_ps(*s, d);
            *ss = _mm256_add_ps(*ss, _mm256_mul_ps(d, d));
        }
    }
    let (mut ls, mut lss) = (lanes_of(s), lanes_of(ss));
    shifted_sums_lanes(x, whole, shift, &mut ls, &mut lss);
    (total(&ls), total(&lss))
}

/// Two AVX2 vectors of partial sums as the 16 lanes (first vector = lanes 0-7).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn lanes_of(v: [std::arch::x86_64::__m256; 2]) -> [f32; LANES] {
    let mut lanes = [0.0f32; LANES];
    for (dst, v) in lanes.chunks_exact_mut(8).zip(v) {
        // SAFETY: `dst` holds 8 floats.
        unsafe { std::arch::x86_64::_mm256_storeu_ps(dst.as_mut_ptr(), v) };
    }
    lanes
}

/// # Safety
/// AVX-512F must be available and `x` valid for `n` reads.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn shifted_sums_avx512(x: *const f32, n: usize, shift: f32) -> (f32, f32) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        use std::arch::x86_64::*;
        let sh = _mm512_set1_ps(shift);
        let (mut s, mut ss) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut i = 0;
        while i < n {
            let m = first_lanes(n - i);
            let d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, x.add(i)), sh);
            s = _mm512_mask_add_ps(s, m, s, d);
            ss = _mm512_mask_add_ps(ss, m, ss, _mm512_mul_ps(d, d));
            i += LANES;
        }
        (total_vector(s), total_vector(ss))
    }
}

/// The lanes of `v` added in lane order, as [`total`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn total_vector(v: std::arch::x86_64::__m512) -> f32 {
    let mut lanes = [0.0f32; LANES];
    // SAFETY: `lanes` holds the 16 floats the store writes.
    unsafe { std::arch::x86_64::_mm512_storeu_ps(lanes.as_mut_ptr(), v) };
    total(&lanes)
}

/// Partial sums added in lane order.
fn total(lanes: &[f32; LANES]) -> f32 {
    lanes.iter().fold(0.0, |acc, &v| acc + v)
}

/// The first `n` lanes of a vector (all of them for `n ≥ LANES`).
#[cfg(target_arch = "x86_64")]
pub(crate) fn first_lanes(n: usize) -> u16 {
    if n >= LANES {
        u16::MAX
    } else {
        ((1u32 << n) - 1) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_values;

    /// Lengths around the vector width and a plane size (49, 196, 784).
    const LENS: [usize; 9] = [0, 1, 15, 16, 17, 33, 49, 196, 784];

    fn close(got: f32, want: f64, scale: f64) -> bool {
        (got as f64 - want).abs() <= 1e-5 * scale.max(1.0)
    }

    #[test]
    fn shifted_sums_match_f64_sums_and_both_paths_agree_bitwise() {
        for (k, &n) in LENS.iter().enumerate() {
            let x: Vec<f32> = test_values(n, k as u64).iter().map(|v| 3.0 + v).collect();
            let shift = x.first().copied().unwrap_or(0.0);
            let (s, ss) = shifted_sums(&x, shift);
            let d: Vec<f64> = x.iter().map(|&v| (v - shift) as f64).collect();
            let (ws, wss) = (d.iter().sum::<f64>(), d.iter().map(|v| v * v).sum::<f64>());
            assert!(close(s, ws, n as f64), "n={n}: Σ {s} vs {ws}");
            assert!(close(ss, wss, n as f64), "n={n}: Σ² {ss} vs {wss}");
            for tier in Isa::supported_tiers() {
                let (ts, tss) = shifted_sums_on(tier, &x, shift);
                assert_eq!(
                    (s.to_bits(), ss.to_bits()),
                    (ts.to_bits(), tss.to_bits()),
                    "n={n}, {tier} against the active tier"
                );
            }
        }
    }

    #[test]
    fn grad_pass_masks_writes_and_sums_like_the_definition() {
        for (k, &n) in LENS.iter().enumerate() {
            let seed = 10 * k as u64;
            let dy = test_values(n, seed);
            let z = test_values(n, seed + 1);
            let mut relu: Vec<f32> = test_values(n, seed + 2);
            if n > 3 {
                // ≤ 0 masks (−0 included), NaN does not: as `if y <= 0 { 0 } else { dy }`.
                relu[0] = -0.0;
                relu[1] = 0.0;
                relu[2] = f32::NAN;
            }
            for relu_out in [None, Some(relu.as_slice())] {
                let pass = GradPass {
                    dy: &dy,
                    z: &z,
                    relu_out,
                    shift: 0.25,
                    mean_rel: -0.125,
                    out_scale: 1.5,
                };
                let mut out = vec![MaybeUninit::new(f32::NAN); n];
                let (a, b) = pass.run(Some(&mut out));
                let d: Vec<f64> = (0..n)
                    .map(|i| match relu_out {
                        Some(y) if y[i] <= 0.0 => 0.0,
                        _ => dy[i] as f64,
                    })
                    .collect();
                for (i, o) in out.iter().enumerate() {
                    // SAFETY: initialised above (and overwritten by the pass).
                    let got = unsafe { o.assume_init() };
                    assert_eq!(got, (d[i] * 1.5) as f32, "n={n} i={i}");
                }
                let wa: f64 = d.iter().sum();
                let wb: f64 = (0..n).map(|i| d[i] * ((z[i] as f64 - 0.25) + 0.125)).sum();
                assert!(close(a, wa, n as f64), "n={n}: Σd {a} vs {wa}");
                assert!(close(b, wb, n as f64), "n={n}: Σd·z {b} vs {wb}");
                for tier in Isa::supported_tiers() {
                    let mut out_tier = vec![MaybeUninit::new(0.0f32); n];
                    let (ta, tb) = pass.run_on(tier, Some(&mut out_tier));
                    assert_eq!(
                        (a.to_bits(), b.to_bits()),
                        (ta.to_bits(), tb.to_bits()),
                        "n={n}: {tier}"
                    );
                    for (i, (o, t)) in out.iter().zip(&out_tier).enumerate() {
                        // SAFETY: both initialised above.
                        let (o, t) = unsafe { (o.assume_init(), t.assume_init()) };
                        assert_eq!(o.to_bits(), t.to_bits(), "n={n} i={i}: {tier}");
                    }
                }
                assert_eq!(pass.run(None), (a, b), "no output: same sums");
            }
        }
    }
}
