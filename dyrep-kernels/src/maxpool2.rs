//! The 2×2 stride-2 max pool of one plane with AVX-512 or AVX2 (the pool after a conv unit;
//! bench-small and bench-cifar pool this way twice). The scalar loops compared one window at a
//! time and were 5 % of a bench-cifar step. Here 16 windows at once (AVX-512; 8 with AVX2, the
//! last `wo mod 8` windows of a row by the scalar rules): two input rows are split into their
//! even and odd columns (`a b` over `c d` per window), the max is two vector maxes, and the
//! backward finds each window's first maximum in the order a, b, c, d — the scalar rule (`>`
//! against the best so far) as masks — and writes the gradient back interleaved. Planes with a
//! NaN are left to the scalar path (NaN wins there), which the functions here report by
//! returning `false`; so does a CPU (or a `DYREP_ISA` cap) without AVX2.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use crate::isa::{self, Isa};
#[cfg(target_arch = "x86_64")]
use crate::lanes::first_lanes;

/// Forward of one `h × w` plane into `ho × wo = (h/2) × (w/2)` outputs (`yp`). Returns `false`
/// (and leaves `yp` partly written) when the active tier has no vector path or a pooled value
/// is NaN.
pub(crate) fn forward(xp: &[f32], hw: (usize, usize), yp: &mut [f32]) -> bool {
    forward_on(isa::active(), xp, hw, yp)
}

/// [`forward`] on a given tier (capped at what the CPU has).
fn forward_on(tier: Isa, xp: &[f32], (h, w): (usize, usize), yp: &mut [f32]) -> bool {
    let (ho, wo) = (h / 2, w / 2);
    assert!(
        xp.len() >= h * w && yp.len() >= ho * wo,
        "2×2 max pool buffers"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if tier >= Isa::Avx512 && Isa::Avx512.supported() {
            // SAFETY: AVX-512F is available; the buffers hold `h·w` and `ho·wo` floats
            // (asserted).
            return unsafe { forward_avx512(xp.as_ptr(), w, ho, wo, yp.as_mut_ptr()) };
        }
        if tier >= Isa::Avx2 && Isa::Avx2.supported() {
            // SAFETY: AVX2 is available; the buffers hold `h·w` and `ho·wo` floats (asserted).
            return unsafe { forward_avx2(xp.as_ptr(), w, ho, wo, yp.as_mut_ptr()) };
        }
    }
    let _ = tier;
    false
}

/// Backward of one plane: `dxp` (`h·w`) gets each output's gradient (`dyp`, `ho·wo`) at the
/// first maximum of its window and zero everywhere else. Returns `false` (and leaves `dxp`
/// partly written) when the active tier has no vector path or a window holds a NaN.
pub(crate) fn backward(xp: &[f32], hw: (usize, usize), dyp: &[f32], dxp: &mut [f32]) -> bool {
    backward_on(isa::active(), xp, hw, dyp, dxp)
}

/// [`backward`] on a given tier (capped at what the CPU has).
fn backward_on(
    tier: Isa,
    xp: &[f32],
    (h, w): (usize, usize),
    dyp: &[f32],
    dxp: &mut [f32],
) -> bool {
    let (ho, wo) = (h / 2, w / 2);
    assert!(
        xp.len() >= h * w && dxp.len() >= h * w && dyp.len() >= ho * wo,
        "2×2 max pool buffers"
    );
    #[cfg(target_arch = "x86_64")]
    if tier >= Isa::Avx2 && Isa::Avx2.supported() {
        // An odd last row or column is in no window.
        for row in dxp[..h * w].chunks_exact_mut(w) {
            row[2 * wo..].fill(0.0);
        }
        dxp[2 * ho * w..h * w].fill(0.0);
        let (x, dy, dx) = (xp.as_ptr(), dyp.as_ptr(), dxp.as_mut_ptr());
        if tier >= Isa::Avx512 && Isa::Avx512.supported() {
            // SAFETY: AVX-512F is available; the buffers hold `h·w`, `ho·wo` and `h·w` floats.
            return unsafe { backward_avx512(x, w, ho, wo, dy, dx) };
        }
        // SAFETY: AVX2 is available; the buffers hold `h·w`, `ho·wo` and `h·w` floats.
        return unsafe { backward_avx2(x, w, ho, wo, dy, dx) };
    }
    let _ = tier;
    false
}

/// Lane masks for a chunk of `n ≤ 16` windows: its outputs, and the two 16-column halves of
/// its `2n` input columns.
#[cfg(target_arch = "x86_64")]
fn chunk_masks(n: usize) -> (u16, u16, u16) {
    (
        first_lanes(n),
        first_lanes(2 * n),
        first_lanes((2 * n).saturating_sub(16)),
    )
}

/// The even and odd columns of 32 consecutive floats (`lo` = columns 0..16, `hi` = 16..32).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn split_columns(lo: __m512, hi: __m512) -> (__m512, __m512) {
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    (
        _mm512_permutex2var_ps(lo, even, hi),
        _mm512_permutex2var_ps(lo, odd, hi),
    )
}

/// Even columns `e` and odd columns `o` interleaved back into columns 0..16 and 16..32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn join_columns(e: __m512, o: __m512) -> (__m512, __m512) {
    let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    (
        _mm512_permutex2var_ps(e, lo, o),
        _mm512_permutex2var_ps(e, hi, o),
    )
}

/// The four corners of 16 windows starting at output column `ox`: (a, b) from row `r0`,
/// (c, d) from row `r1`, with the chunk's masks, and whether any of them is NaN.
///
/// # Safety
/// AVX-512F must be available; `r0` and `r1` valid for reads of the masked lanes of columns
/// `2·ox .. 2·ox + 32`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn corners(
    r0: *const f32,
    r1: *const f32,
    ox: usize,
    (m_lo, m_hi): (u16, u16),
) -> ([__m512; 4], bool) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        // The upper half's address may lie past the plane when its mask is empty: wrapping
        // arithmetic, and masked-off lanes are never read.
        let at = 2 * ox;
        let (a, b) = split_columns(
            _mm512_maskz_loadu_ps(m_lo, r0.wrapping_add(at)),
            _mm512_maskz_loadu_ps(m_hi, r0.wrapping_add(at + 16)),
        );
        let (c, d) = split_columns(
            _mm512_maskz_loadu_ps(m_lo, r1.wrapping_add(at)),
            _mm512_maskz_loadu_ps(m_hi, r1.wrapping_add(at + 16)),
        );
        let nan =
            _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a, b) | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(c, d);
        ([a, b, c, d], nan != 0)
    }
}

/// # Safety
/// AVX-512F must be available; `xp` valid for `2·ho` rows of `w ≥ 2·wo` floats, `yp` for
/// `ho·wo` writes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn forward_avx512(xp: *const f32, w: usize, ho: usize, wo: usize, yp: *mut f32) -> bool {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        for oy in 0..ho {
            let (r0, r1) = (xp.add(2 * oy * w), xp.add((2 * oy + 1) * w));
            let mut ox = 0;
            while ox < wo {
                let (m_out, m_lo, m_hi) = chunk_masks(wo - ox);
                let ([a, b, c, d], nan) = corners(r0, r1, ox, (m_lo, m_hi));
                if nan {
                    return false;
                }
                let m = _mm512_max_ps(_mm512_max_ps(a, b), _mm512_max_ps(c, d));
                _mm512_mask_storeu_ps(yp.add(oy * wo + ox), m_out, m);
                ox += 16;
            }
        }
        true
    }
}

/// # Safety
/// AVX-512F must be available; `xp` and `dxp` valid for `2·ho` rows of `w ≥ 2·wo` floats, `dyp`
/// for `ho·wo` reads.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn backward_avx512(
    xp: *const f32,
    w: usize,
    ho: usize,
    wo: usize,
    dyp: *const f32,
    dxp: *mut f32,
) -> bool {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        for oy in 0..ho {
            let (r0, r1) = (xp.add(2 * oy * w), xp.add((2 * oy + 1) * w));
            let (d0, d1) = (dxp.add(2 * oy * w), dxp.add((2 * oy + 1) * w));
            let mut ox = 0;
            while ox < wo {
                let (m_out, m_lo, m_hi) = chunk_masks(wo - ox);
                let ([a, b, c, d], nan) = corners(r0, r1, ox, (m_lo, m_hi));
                if nan {
                    return false;
                }
                // The scalar rule: best = a; b, c, d replace it when strictly greater.
                let take_b = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(b, a);
                let best = _mm512_mask_blend_ps(take_b, a, b);
                let take_c = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(c, best);
                let best = _mm512_mask_blend_ps(take_c, best, c);
                let take_d = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(d, best);
                let to_c = take_c & !take_d;
                let to_b = take_b & !take_c & !take_d;
                let to_a = !(take_b | take_c | take_d);
                let g = _mm512_maskz_loadu_ps(m_out, dyp.add(oy * wo + ox));
                let (top_lo, top_hi) =
                    join_columns(_mm512_maskz_mov_ps(to_a, g), _mm512_maskz_mov_ps(to_b, g));
                let (bottom_lo, bottom_hi) =
                    join_columns(_mm512_maskz_mov_ps(to_c, g), _mm512_maskz_mov_ps(take_d, g));
                let at = 2 * ox;
                _mm512_mask_storeu_ps(d0.wrapping_add(at), m_lo, top_lo);
                _mm512_mask_storeu_ps(d0.wrapping_add(at + 16), m_hi, top_hi);
                _mm512_mask_storeu_ps(d1.wrapping_add(at), m_lo, bottom_lo);
                _mm512_mask_storeu_ps(d1.wrapping_add(at + 16), m_hi, bottom_hi);
                ox += 16;
            }
        }
        true
    }
}

/// The even and odd columns of 16 consecutive floats (`lo` = columns 0..8, `hi` = 8..16).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn split_columns_avx2(lo: __m256, hi: __m256) -> (__m256, __m256) {
    // Per 128-bit half: [lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6]; the 64-bit pairs reordered
    // (0, 2, 1, 3) give [lo0 lo2 lo4 lo6 hi0 hi2 hi4 hi6].
    let even = _mm256_shuffle_ps::<0b10_00_10_00>(lo, hi);
    let odd = _mm256_shuffle_ps::<0b11_01_11_01>(lo, hi);
    (
        _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(
            even,
        ))),
        _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(
            odd,
        ))),
    )
}

/// Even columns `e` and odd columns `o` (8 each) interleaved back into columns 0..8 and 8..16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn join_columns_avx2(e: __m256, o: __m256) -> (__m256, __m256) {
    // unpack: [e0 o0 e1 o1 | e4 o4 e5 o5] and [e2 o2 e3 o3 | e6 o6 e7 o7].
    let (a, b) = (_mm256_unpacklo_ps(e, o), _mm256_unpackhi_ps(e, o));
    (
        _mm256_permute2f128_ps::<0x20>(a, b),
        _mm256_permute2f128_ps::<0x31>(a, b),
    )
}

/// The four corners of the 8 windows starting at output column `ox` (rows `r0`, `r1`), and
/// whether any of them is NaN.
///
/// # Safety
/// AVX2 must be available; `r0` and `r1` valid for reads of columns `2·ox .. 2·ox + 16`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn corners_avx2(r0: *const f32, r1: *const f32, ox: usize) -> ([__m256; 4], bool) {
    let at = 2 * ox;
    // SAFETY: the caller guarantees 16 readable floats from `at` in both rows.
    let (a, b, c, d) = unsafe {
        let (a, b) =
            split_columns_avx2(_mm256_loadu_ps(r0.add(at)), _mm256_loadu_ps(r0.add(at + 8)));
        let (c, d) =
            split_columns_avx2(_mm256_loadu_ps(r1.add(at)), _mm256_loadu_ps(r1.add(at + 8)));
        (a, b, c, d)
    };
    let nan = _mm256_or_ps(
        _mm256_cmp_ps::<_CMP_UNORD_Q>(a, b),
        _mm256_cmp_ps::<_CMP_UNORD_Q>(c, d),
    );
    ([a, b, c, d], _mm256_movemask_ps(nan) != 0)
}

/// The window `(oy, ox)`'s four input indices in the order a, b, c, d.
#[cfg(target_arch = "x86_64")]
fn window(w: usize, oy: usize, ox: usize) -> [usize; 4] {
    let top = 2 * oy * w + 2 * ox;
    [top, top + 1, top + w, top + w + 1]
}

/// The index of the window's first maximum (a later value only when strictly greater), or
/// `None` when it holds a NaN.
///
/// # Safety
/// `xp` valid for reads at the four indices.
#[cfg(target_arch = "x86_64")]
unsafe fn first_max(xp: *const f32, idx: [usize; 4]) -> Option<usize> {
    // SAFETY: the caller guarantees the indices are readable.
    let v = idx.map(|i| unsafe { *xp.add(i) });
    if v.iter().any(|x| x.is_nan()) {
        return None;
    }
    let mut best = 0;
    for k in 1..4 {
        if v[k] > v[best] {
            best = k;
        }
    }
    Some(idx[best])
}

/// # Safety
/// AVX2 must be available; `xp` valid for `2·ho` rows of `w ≥ 2·wo` floats, `yp` for `ho·wo`
/// writes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn forward_avx2(xp: *const f32, w: usize, ho: usize, wo: usize, yp: *mut f32) -> bool {
    let whole = wo - wo % 8;
    for oy in 0..ho {
        // SAFETY: rows `2·oy` and `2·oy + 1` lie in the plane; a chunk of 8
        // windows starting at `ox < whole` reads columns `2·ox .. 2·ox + 16 ≤ 2·wo ≤ w`.
        unsafe {
            let (r0, r1) = (xp.add(2 * oy * w), xp.add((2 * oy + 1) * w));
            for ox in (0..whole).step_by(8) {
                let ([a, b, c, d], nan) = corners_avx2(r0, r1, ox);
                if nan {
                    return false;
                }
                let m = _mm256_max_ps(_mm256_max_ps(a, b), _mm256_max_ps(c, d));
                _mm256_storeu_ps(yp.add(oy * wo + ox), m);
            }
            for ox in whole..wo {
                let Some(best) = first_max(xp, window(w, oy, ox)) else {
                    return false;
                };
                *yp.add(oy * wo + ox) = *xp.add(best);
            }
        }
    }
    true
}

/// # Safety
/// AVX2 must be available; `xp` and `dxp` valid for `2·ho` rows of `w ≥ 2·wo` floats, `dyp`
/// for `ho·wo` reads.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn backward_avx2(
    xp: *const f32,
    w: usize,
    ho: usize,
    wo: usize,
    dyp: *const f32,
    dxp: *mut f32,
) -> bool {
    let whole = wo - wo % 8;
    for oy in 0..ho {
        // SAFETY: as in `forward_avx2`, for reads of `xp` and writes of `dxp`;
        // `dyp` is read at `oy·wo + ox .. + 8 ≤ ho·wo`.
        unsafe {
            let (r0, r1) = (xp.add(2 * oy * w), xp.add((2 * oy + 1) * w));
            let (d0, d1) = (dxp.add(2 * oy * w), dxp.add((2 * oy + 1) * w));
            for ox in (0..whole).step_by(8) {
                let ([a, b, c, d], nan) = corners_avx2(r0, r1, ox);
                if nan {
                    return false;
                }
                // The scalar rule: best = a; b, c, d replace it when strictly greater.
                let take_b = _mm256_cmp_ps::<_CMP_GT_OQ>(b, a);
                let best = _mm256_blendv_ps(a, b, take_b);
                let take_c = _mm256_cmp_ps::<_CMP_GT_OQ>(c, best);
                let best = _mm256_blendv_ps(best, c, take_c);
                let take_d = _mm256_cmp_ps::<_CMP_GT_OQ>(d, best);
                let to_c = _mm256_andnot_ps(take_d, take_c);
                let to_b = _mm256_andnot_ps(_mm256_or_ps(take_c, take_d), take_b);
                let not_a = _mm256_or_ps(take_b, _mm256_or_ps(take_c, take_d));
                let g = _mm256_loadu_ps(dyp.add(oy * wo + ox));
                // `andnot(not_a, g)`: g where no later corner was taken (corner a).
                let (top_lo, top_hi) =
                    join_columns_avx2(_mm256_andnot_ps(not_a, g), _mm256_and_ps(to_b, g));
                let (bottom_lo, bottom_hi) =
                    join_columns_avx2(_mm256_and_ps(to_c, g), _mm256_and_ps(take_d, g));
                let at = 2 * ox;
                _mm256_storeu_ps(d0.add(at), top_lo);
                _mm256_storeu_ps(d0.add(at + 8), top_hi);
                _mm256_storeu_ps(d1.add(at), bottom_lo);
                _mm256_storeu_ps(d1.add(at + 8), bottom_hi);
            }
            for ox in whole..wo {
                let idx = window(w, oy, ox);
                let Some(best) = first_max(xp, idx) else {
                    return false;
                };
                for i in idx {
                    *dxp.add(i) = if i == best {
                        *dyp.add(oy * wo + ox)
                    } else {
                        0.0
                    };
                }
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_values;

    /// The scalar rules: max of each window; its gradient to the first maximum (row-major
    /// order, a later value only when strictly greater).
    fn reference(x: &[f32], (h, w): (usize, usize), dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let (ho, wo) = (h / 2, w / 2);
        let (mut y, mut dx) = (vec![0.0; ho * wo], vec![0.0; h * w]);
        for oy in 0..ho {
            for ox in 0..wo {
                let idx = [
                    2 * oy * w + 2 * ox,
                    2 * oy * w + 2 * ox + 1,
                    (2 * oy + 1) * w + 2 * ox,
                    (2 * oy + 1) * w + 2 * ox + 1,
                ];
                let mut best = idx[0];
                for &i in &idx[1..] {
                    if x[i] > x[best] {
                        best = i;
                    }
                }
                y[oy * wo + ox] = x[best];
                dx[best] += dy[oy * wo + ox];
            }
        }
        (y, dx)
    }

    /// The vector tiers this CPU has (the scalar tier has no path here: it returns `false`).
    fn vector_tiers() -> Vec<Isa> {
        let tiers: Vec<Isa> = Isa::supported_tiers()
            .into_iter()
            .filter(|&t| t > Isa::Scalar)
            .collect();
        if tiers.is_empty() {
            eprintln!("skipped: this CPU has neither AVX2 nor AVX-512F");
        }
        tiers
    }

    #[test]
    fn the_scalar_tier_leaves_every_plane_to_the_scalar_loops() {
        let x = test_values(16, 1);
        assert!(!forward_on(Isa::Scalar, &x, (4, 4), &mut [0.0; 4]));
        assert!(!backward_on(
            Isa::Scalar,
            &x,
            (4, 4),
            &[1.0; 4],
            &mut [0.0; 16]
        ));
    }

    #[test]
    fn matches_the_scalar_rules_on_odd_even_and_tied_planes() {
        for tier in vector_tiers() {
            matches_the_scalar_rules_on(tier);
        }
    }

    fn matches_the_scalar_rules_on(tier: Isa) {
        for (k, (h, w)) in [
            (2, 2),
            (3, 5),
            (4, 32),
            (7, 33),
            (14, 14),
            (28, 28),
            (32, 65),
            (9, 17),
            (6, 16),
            (5, 47),
            (4, 2),
        ]
        .into_iter()
        .enumerate()
        {
            let seed = 7 * k as u64;
            // Values on a coarse grid (many ties, zeros as after a ReLU) and a fine one.
            for coarse in [true, false] {
                let x: Vec<f32> = test_values(h * w, seed)
                    .into_iter()
                    .map(|v| {
                        if coarse {
                            (v * 2.0).round().max(0.0)
                        } else {
                            v
                        }
                    })
                    .collect();
                let dy = test_values((h / 2) * (w / 2), seed + 1);
                let (want_y, want_dx) = reference(&x, (h, w), &dy);
                let mut y = vec![f32::NAN; want_y.len()];
                assert!(forward_on(tier, &x, (h, w), &mut y));
                assert_eq!(y, want_y, "{tier} {h}×{w} forward");
                let mut dx = vec![f32::NAN; h * w];
                assert!(backward_on(tier, &x, (h, w), &dy, &mut dx));
                assert_eq!(dx, want_dx, "{tier} {h}×{w} coarse={coarse} backward");
            }
        }
    }

    #[test]
    fn planes_with_a_nan_are_left_to_the_scalar_path() {
        for tier in vector_tiers() {
            // A NaN in a vector chunk (column 5) and in the scalar tail of an AVX2 row (37).
            for col in [5, 37] {
                let (h, w) = (6, 40);
                let mut x = test_values(h * w, 3);
                x[5 * w + col] = f32::NAN;
                let dy = test_values(3 * 20, 4);
                assert!(!forward_on(tier, &x, (h, w), &mut [0.0; 60]), "{tier}");
                assert!(
                    !backward_on(tier, &x, (h, w), &dy, &mut vec![0.0; h * w]),
                    "{tier}"
                );
            }
            // A NaN in the odd last column is in no window.
            let (h, w) = (4, 5);
            let mut x = test_values(h * w, 5);
            x[w - 1] = f32::NAN;
            assert!(forward_on(tier, &x, (h, w), &mut [0.0; 4]), "{tier}");
        }
    }
}
