//! Lane-parallel f32 reductions for the batch-norm passes (issue 5; reference §2, BN in train
//! mode). A plain `s += v` loop is one add chain: 4 cycles per value, since the compiler may
//! not reorder float adds — several times slower than reading the values from cache, and most
//! of the cost of the BN statistics taken in a conv's epilogue. Here value `i` goes into partial
//! sum `i mod LANES`, and the lanes are added in order at the end: one AVX-512 vector of
//! partial sums where the CPU has AVX-512F (detected at run time), the same sums lane by lane
//! otherwise. Both paths add the same values in the same order with separate multiplies and
//! adds (no FMA), so they return the same bits.

use std::mem::MaybeUninit;

/// Partial sums per reduction: one 512-bit vector of f32.
pub(crate) const LANES: usize = 16;

/// `(Σ (v − shift), Σ (v − shift)²)` over `x`.
pub(crate) fn shifted_sums(x: &[f32], shift: f32) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: AVX-512F is available; the pointer is valid for `x.len()` reads.
        return unsafe { shifted_sums_avx512(x.as_ptr(), x.len(), shift) };
    }
    shifted_sums_portable(x, shift)
}

/// [`shifted_sums`] without vector instructions (same sums, same order).
fn shifted_sums_portable(x: &[f32], shift: f32) -> (f32, f32) {
    let (mut s, mut ss) = ([0.0f32; LANES], [0.0f32; LANES]);
    for (i, &v) in x.iter().enumerate() {
        let d = v - shift;
        s[i % LANES] += d;
        ss[i % LANES] += d * d;
    }
    (total(&s), total(&ss))
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
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            let out = out.map(|o| o.as_mut_ptr().cast::<f32>());
            // SAFETY: AVX-512F is available; every slice holds `n` values (asserted).
            return unsafe { self.run_avx512(out) };
        }
        self.run_portable(out)
    }

    /// [`Self::run`] without vector instructions (same sums, same order).
    fn run_portable(&self, out: Option<&mut [MaybeUninit<f32>]>) -> (f32, f32) {
        let n = self.dy.len();
        let (mut a, mut b) = ([0.0f32; LANES], [0.0f32; LANES]);
        let mut out = out;
        for i in 0..n {
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
        (total(&a), total(&b))
    }

    /// # Safety
    /// AVX-512F must be available; `out`, when given, valid for `dy.len()` writes.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_avx512(&self, out: Option<*mut f32>) -> (f32, f32) {
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

/// # Safety
/// AVX-512F must be available and `x` valid for `n` reads.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn shifted_sums_avx512(x: *const f32, n: usize, shift: f32) -> (f32, f32) {
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

/// The lanes of `v` added in lane order, as [`total`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn total_vector(v: std::arch::x86_64::__m512) -> f32 {
    let mut lanes = [0.0f32; LANES];
    std::arch::x86_64::_mm512_storeu_ps(lanes.as_mut_ptr(), v);
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

/// Whether the CPU has AVX-512F (cached by std after the first call).
#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
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
            let (ps, pss) = shifted_sums_portable(&x, shift);
            assert_eq!(
                (s.to_bits(), ss.to_bits()),
                (ps.to_bits(), pss.to_bits()),
                "n={n}"
            );
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
                let mut out_portable = vec![MaybeUninit::new(0.0f32); n];
                let (pa, pb) = pass.run_portable(Some(&mut out_portable));
                assert_eq!((a.to_bits(), b.to_bits()), (pa.to_bits(), pb.to_bits()));
                assert_eq!(pass.run(None), (a, b), "no output: same sums");
            }
        }
    }
}
