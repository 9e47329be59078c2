//! Average and max pooling on the CPU with padding and any stride, forward and backward (candle's
//! pools have no padding, are single-threaded and have no backward unless the kernel equals the
//! stride). Average pooling counts the zero padding (`count_include_pad`, as DBB's 1×1→avg branch,
//! docs/REFERENCE.md "Branch types"); max pooling ignores it and sends each output's gradient to
//! the first maximum of its window, as PyTorch does. Parallel over (image, channel) planes;
//! stride-1 averages (and their backward, itself a stride-1 average) as flat box sums over the
//! whole plane ([`box_sums`]).

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::{slice_f32, tensor_like, with_f32, with_scratch};
use crate::error::{KernelError, Result};
use crate::profile::{Phase, Timer};
use crate::{arg, check_own, Backend};

/// Which pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Avg,
    Max,
}

/// Geometry of one pooling call, validated at construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolShape {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
    pub padding: usize,
    pub ho: usize,
    pub wo: usize,
}

impl PoolShape {
    /// Max pooling needs `padding <= k/2` (else a window can lie wholly in the padding);
    /// average pooling counts padding as zeros and takes any padding.
    pub fn new(
        kind: PoolKind,
        x: &[usize],
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let bad = |why: &str| KernelError::Shape {
            op: "pool2d",
            detail: format!("input {x:?}, kernel {k}, stride {stride}, padding {padding}: {why}"),
        };
        let [n, c, h, w]: [usize; 4] = x
            .try_into()
            .map_err(|_| bad("input must be [N, C, H, W]"))?;
        if k == 0 || stride == 0 {
            return Err(bad("kernel and stride must be >= 1"));
        }
        if kind == PoolKind::Max && 2 * padding > k {
            return Err(bad("max pooling padding must be at most half the kernel"));
        }
        let (hp, wp) = (h + 2 * padding, w + 2 * padding);
        if hp < k || wp < k {
            return Err(bad("the padded input is smaller than the window"));
        }
        Ok(Self {
            planes: n * c,
            h,
            w,
            k,
            stride,
            padding,
            ho: (hp - k) / stride + 1,
            wo: (wp - k) / stride + 1,
        })
    }

    /// The common 2×2 window, stride 2, no padding (`maxpool2.rs` has vector kernels for it).
    fn is_2x2(&self) -> bool {
        self.k == 2 && self.stride == 2 && self.padding == 0
    }

    /// The input index range covered along one axis by output position `o`.
    fn window(&self, o: usize, size: usize) -> std::ops::Range<usize> {
        let start = o * self.stride;
        let lo = start.saturating_sub(self.padding).min(size);
        let hi = (start + self.k).saturating_sub(self.padding).min(size);
        lo..hi.max(lo)
    }

    pub(crate) fn forward(&self, kind: PoolKind, x: &[f32]) -> Vec<f32> {
        let _t = Timer::start(Phase::Pool);
        let (hw, ohw) = (self.h * self.w, self.ho * self.wo);
        let mut y = vec![0.0f32; self.planes * ohw];
        y.par_chunks_mut(ohw.max(1))
            .zip(x.par_chunks(hw.max(1)))
            .for_each(|(yp, xp)| match kind {
                PoolKind::Avg => self.avg_plane(xp, yp),
                PoolKind::Max => self.max_plane(xp, yp),
            });
        y
    }

    /// Stride 1 with a padding the transpose can mirror (`p < k`): the backward is itself a
    /// stride-1 average pool (see [`Self::avg_plane_backward`]), and both run [`box_sums`].
    fn box_path(&self) -> bool {
        self.stride == 1 && self.padding < self.k
    }

    /// Average pool of one plane. Stride 1: the zero-padded plane (or the plane itself) through
    /// [`box_sums`]. Other strides: window sums along each input row first (`h × wo`), then
    /// along columns, so an output costs about 2k adds instead of k².
    pub(crate) fn avg_plane(&self, xp: &[f32], yp: &mut [f32]) {
        let inv = 1.0 / (self.k * self.k) as f32;
        if self.stride == 1 {
            let p = self.padding;
            let (hp, wp) = (self.h + 2 * p, self.w + 2 * p);
            let rows_len = hp * wp + 1 - self.k;
            if p == 0 {
                with_scratch(rows_len, |rows| {
                    box_sums(xp, (hp, wp), self.k, inv, rows, yp)
                });
                return;
            }
            with_scratch(hp * wp + rows_len, |scratch| {
                let (padded, rows) = scratch.split_at_mut(hp * wp);
                pad_plane(xp, (self.h, self.w), p, 0.0, padded);
                box_sums(padded, (hp, wp), self.k, inv, rows, yp);
            });
            return;
        }
        let wo = self.wo;
        with_scratch(self.h * wo, |row_sums| {
            for iy in 0..self.h {
                let row = &xp[iy * self.w..(iy + 1) * self.w];
                for (ox, r) in row_sums[iy * wo..(iy + 1) * wo].iter_mut().enumerate() {
                    *r = row[self.window(ox, self.w)].iter().sum::<f32>();
                }
            }
            for oy in 0..self.ho {
                let out = &mut yp[oy * wo..(oy + 1) * wo];
                out.fill(0.0);
                for iy in self.window(oy, self.h) {
                    for (o, &r) in out.iter_mut().zip(&row_sums[iy * wo..(iy + 1) * wo]) {
                        *o += r;
                    }
                }
                for o in out.iter_mut() {
                    *o *= inv;
                }
            }
        });
    }

    /// The transpose of [`Self::avg_plane`]. On the box path it is the same pool again: input
    /// pixel `i` collects the outputs `i + p − (k−1) ..= i + p`, i.e. a stride-1 k×k average of
    /// the output gradient zero-padded by `k − 1 − p`. Otherwise column spreads into `h × wo`,
    /// then row spreads.
    fn avg_plane_backward(&self, dyp: &[f32], dxp: &mut [f32]) {
        let inv = 1.0 / (self.k * self.k) as f32;
        if self.box_path() {
            let q = self.k - 1 - self.padding;
            let (hq, wq) = (self.ho + 2 * q, self.wo + 2 * q);
            let rows_len = hq * wq + 1 - self.k;
            with_scratch(hq * wq + rows_len, |scratch| {
                let (padded, rows) = scratch.split_at_mut(hq * wq);
                pad_plane(dyp, (self.ho, self.wo), q, 0.0, padded);
                box_sums(padded, (hq, wq), self.k, inv, rows, dxp);
            });
            return;
        }
        let wo = self.wo;
        with_scratch(self.h * wo, |spread| {
            spread.fill(0.0);
            for oy in 0..self.ho {
                let g = &dyp[oy * wo..(oy + 1) * wo];
                for iy in self.window(oy, self.h) {
                    for (t, &d) in spread[iy * wo..(iy + 1) * wo].iter_mut().zip(g) {
                        *t += d;
                    }
                }
            }
            for iy in 0..self.h {
                let row = &mut dxp[iy * self.w..(iy + 1) * self.w];
                let spread_row = &spread[iy * wo..(iy + 1) * wo];
                if self.stride == 1 {
                    for kx in 0..self.k {
                        let (lo, hi) = self.tap_range(kx);
                        let dst = &mut row[lo + kx - self.padding..hi + kx - self.padding];
                        for (d, &t) in dst.iter_mut().zip(&spread_row[lo..hi]) {
                            *d += t * inv;
                        }
                    }
                } else {
                    for (ox, &t) in spread_row.iter().enumerate() {
                        let t = t * inv;
                        for d in &mut row[self.window(ox, self.w)] {
                            *d += t;
                        }
                    }
                }
            }
        });
    }

    /// At stride 1: the output columns `[lo, hi)` whose window's kernel column `kx` lies inside
    /// the row (input column `ox + kx − padding`).
    fn tap_range(&self, kx: usize) -> (usize, usize) {
        let lo = self.padding.saturating_sub(kx).min(self.wo);
        let hi = (self.w + self.padding)
            .saturating_sub(kx)
            .min(self.wo)
            .max(lo);
        (lo, hi)
    }

    /// The common 2×2/2 max pool's backward: each output's gradient to the first maximum of
    /// its window (row-major order, as [`Self::argmax`]). NaN-free planes only.
    fn max2x2_backward(&self, xp: &[f32], dyp: &[f32], dxp: &mut [f32]) {
        for oy in 0..self.ho {
            let (r0, r1) = (2 * oy * self.w, (2 * oy + 1) * self.w);
            for ox in 0..self.wo {
                let idx = [r0 + 2 * ox, r0 + 2 * ox + 1, r1 + 2 * ox, r1 + 2 * ox + 1];
                let mut best = idx[0];
                for &i in &idx[1..] {
                    if xp[i] > xp[best] {
                        best = i;
                    }
                }
                dxp[best] += dyp[oy * self.wo + ox];
            }
        }
    }

    /// Index (in the plane) of the first maximum of output `(oy, ox)`'s window; NaN wins.
    #[inline]
    fn argmax(&self, xp: &[f32], oy: usize, ox: usize) -> usize {
        let (rows, cols) = (self.window(oy, self.h), self.window(ox, self.w));
        let mut best = rows.start * self.w + cols.start;
        let mut best_v = xp[best];
        for iy in rows {
            let row = iy * self.w;
            let start = row + cols.start;
            for (i, &v) in xp[start..row + cols.end].iter().enumerate() {
                if v > best_v || (v.is_nan() && !best_v.is_nan()) {
                    best = start + i;
                    best_v = v;
                }
            }
        }
        best
    }

    /// Max pool of one plane `xp` (`h·w`) into `yp` (`ho·wo`).
    pub(crate) fn max_plane(&self, xp: &[f32], yp: &mut [f32]) {
        if self.is_2x2() && crate::maxpool2::forward(xp, (self.h, self.w), yp) {
            return;
        }
        if self.is_2x2() {
            // The common 2×2/2 pool: two rows at a time, no window arithmetic.
            for oy in 0..self.ho {
                let r0 = &xp[2 * oy * self.w..][..self.w];
                let r1 = &xp[(2 * oy + 1) * self.w..][..self.w];
                for (ox, o) in yp[oy * self.wo..(oy + 1) * self.wo].iter_mut().enumerate() {
                    let (a, b) = (
                        r0[2 * ox].max(r0[2 * ox + 1]),
                        r1[2 * ox].max(r1[2 * ox + 1]),
                    );
                    *o = a.max(b);
                }
            }
            // f32::max drops NaN; keep PyTorch's NaN propagation.
            if xp.iter().any(|v| v.is_nan()) {
                for oy in 0..self.ho {
                    for ox in 0..self.wo {
                        yp[oy * self.wo + ox] = xp[self.argmax(xp, oy, ox)];
                    }
                }
            }
            return;
        }
        for oy in 0..self.ho {
            for ox in 0..self.wo {
                yp[oy * self.wo + ox] = xp[self.argmax(xp, oy, ox)];
            }
        }
    }

    pub(crate) fn backward(&self, kind: PoolKind, x: &[f32], dy: &[f32]) -> Vec<f32> {
        if kind == PoolKind::Avg {
            return self.avg_backward(dy);
        }
        let _t = Timer::start(Phase::Pool);
        let (hw, ohw) = (self.h * self.w, self.ho * self.wo);
        let mut dx = vec![0.0f32; self.planes * hw];
        dx.par_chunks_mut(hw.max(1))
            .zip(x.par_chunks(hw.max(1)))
            .zip(dy.par_chunks(ohw.max(1)))
            .for_each(|((dxp, xp), dyp)| self.max_plane_backward(xp, dyp, dxp));
        dx
    }

    /// The average pool's input gradient (which does not depend on the input).
    pub(crate) fn avg_backward(&self, dy: &[f32]) -> Vec<f32> {
        let _t = Timer::start(Phase::Pool);
        let (hw, ohw) = (self.h * self.w, self.ho * self.wo);
        let mut dx = vec![0.0f32; self.planes * hw];
        dx.par_chunks_mut(hw.max(1))
            .zip(dy.par_chunks(ohw.max(1)))
            .for_each(|(dxp, dyp)| self.avg_plane_backward(dyp, dxp));
        dx
    }

    /// The interior `[p, h − p) × [p, w − p)` of [`Self::avg_backward`] for a stride-1 pool without
    /// padding of its own, read as a plane of `(h − 2p) × (w − 2p)`: the input gradient of data
    /// that was padded by `p` before this pool (DBB's BN-and-pad, docs/REFERENCE.md "Branch
    /// types"), without the border that is thrown away. `None` where that is not a stride-1 average
    /// pool of the zero-padded output gradient (`p ≥ k`, another stride, own padding).
    pub(crate) fn avg_backward_interior(&self, dy: &[f32], p: usize) -> Option<Vec<f32>> {
        if self.stride != 1 || self.padding != 0 || p >= self.k || 2 * p >= self.h.min(self.w) {
            return None;
        }
        let inner = PoolShape::new(
            PoolKind::Avg,
            &[self.planes, 1, self.ho, self.wo],
            self.k,
            1,
            self.k - 1 - p,
        )
        .ok()?;
        Some(inner.forward(PoolKind::Avg, dy))
    }

    /// Max pool backward of one plane: adds each output's gradient (`dyp`) to the first
    /// maximum of its window in the input plane `xp`, into `dxp` (`h·w`, zeroed by the caller).
    pub(crate) fn max_plane_backward(&self, xp: &[f32], dyp: &[f32], dxp: &mut [f32]) {
        if self.is_2x2() {
            if crate::maxpool2::backward(xp, (self.h, self.w), dyp, dxp) {
                return;
            }
            // A NaN, or no AVX-512: the scalar rules below, on a zeroed gradient again.
            dxp.fill(0.0);
        }
        if self.is_2x2() && !xp.iter().any(|v| v.is_nan()) {
            self.max2x2_backward(xp, dyp, dxp);
            return;
        }
        for oy in 0..self.ho {
            for ox in 0..self.wo {
                dxp[self.argmax(xp, oy, ox)] += dyp[oy * self.wo + ox];
            }
        }
    }
}

/// `src` (`h × w`) into the middle of `dst` (`(h + 2p) × (w + 2p)`), the border set to `fill`.
pub(crate) fn pad_plane(src: &[f32], (h, w): (usize, usize), p: usize, fill: f32, dst: &mut [f32]) {
    let wp = w + 2 * p;
    dst[..p * wp + p].fill(fill);
    for iy in 0..h {
        let row = (iy + p) * wp;
        dst[row + p..row + p + w].copy_from_slice(&src[iy * w..(iy + 1) * w]);
        let next = if iy + 1 < h { row + wp + p } else { dst.len() };
        dst[row + p + w..next].fill(fill);
    }
    if h == 0 {
        dst.fill(fill);
    }
}

/// `scale ·` the sum of every k×k window (stride 1) of the plane `src` (`hp × wp`) into `out`
/// (`(hp − k + 1) × (wp − k + 1)`). Both passes run over the flat plane so the loops are long
/// even when rows are short: `rows[j] = Σ_t src[j + t]` (values straddling a row end are never
/// read), then each output row `Σ_t rows[(oy + t)·wp ..]`. `rows` holds `hp·wp − k + 1` values.
pub(crate) fn box_sums(
    src: &[f32],
    (hp, wp): (usize, usize),
    k: usize,
    scale: f32,
    rows: &mut [f32],
    out: &mut [f32],
) {
    let (ho, wo) = (hp + 1 - k, wp + 1 - k);
    let m = hp * wp + 1 - k;
    let rows = &mut rows[..m];
    if k == 3 {
        let (s0, s1, s2) = (&src[..m], &src[1..m + 1], &src[2..m + 2]);
        for (r, (&a, (&b, &c))) in rows.iter_mut().zip(s0.iter().zip(s1.iter().zip(s2))) {
            *r = a + b + c;
        }
    } else {
        rows.copy_from_slice(&src[..m]);
        for t in 1..k {
            for (r, &v) in rows.iter_mut().zip(&src[t..t + m]) {
                *r += v;
            }
        }
    }
    for (oy, o) in out[..ho * wo].chunks_exact_mut(wo.max(1)).enumerate() {
        let at = |t: usize| &rows[(oy + t) * wp..(oy + t) * wp + wo];
        if k == 3 {
            for ((o, &a), (&b, &c)) in o.iter_mut().zip(at(0)).zip(at(1).iter().zip(at(2))) {
                *o = (a + b + c) * scale;
            }
        } else {
            o.copy_from_slice(at(0));
            for t in 1..k {
                for (o, &v) in o.iter_mut().zip(at(t)) {
                    *o += v;
                }
            }
            for o in o.iter_mut() {
                *o *= scale;
            }
        }
    }
}

/// The candle custom op for both pools.
#[derive(Clone, Debug)]
pub(crate) struct Pool2dOp {
    pub kind: PoolKind,
    pub k: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Pool2dOp {
    fn shape(&self, dims: &[usize]) -> candle_core::Result<PoolShape> {
        PoolShape::new(self.kind, dims, self.k, self.stride, self.padding)
            .map_err(candle_core::Error::wrap)
    }
}

impl CustomOp1 for Pool2dOp {
    fn name(&self) -> &'static str {
        match self.kind {
            PoolKind::Avg => "dyrep-avg-pool2d",
            PoolKind::Max => "dyrep-max-pool2d",
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let shape = self.shape(l.dims())?;
        let x = slice_f32(s, l, self.name())?;
        let dims = l.dims();
        Ok((
            CpuStorage::F32(shape.forward(self.kind, x)),
            Shape::from((dims[0], dims[1], shape.ho, shape.wo)),
        ))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let shape = self.shape(x.dims())?;
        let dx = with_f32(x, self.name(), |xs| {
            with_f32(dy, self.name(), |g| shape.backward(self.kind, xs, g))
        })??;
        Ok(Some(tensor_like(dx, x.dims(), x)?))
    }
}

/// Average pool through candle's ops (any device): k² shifted adds of the zero-padded input,
/// then a strided subsample. Differentiable for every stride.
pub(crate) fn avg_pool2d_candle(x: &Tensor, s: &PoolShape) -> candle_core::Result<Tensor> {
    let p = s.padding;
    let xp = if p > 0 {
        x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?
    } else {
        x.clone()
    };
    let (h1, w1) = (s.h + 2 * p - s.k + 1, s.w + 2 * p - s.k + 1);
    let mut sum = xp.narrow(2, 0, h1)?.narrow(3, 0, w1)?;
    for dy in 0..s.k {
        for dx in 0..s.k {
            if dy + dx > 0 {
                sum = (sum + xp.narrow(2, dy, h1)?.narrow(3, dx, w1)?)?;
            }
        }
    }
    subsample(&(sum / (s.k * s.k) as f64)?, s.stride)
}

/// Max pool through candle's ops (any device): −∞ padding, k² shifted maxima, subsample.
/// candle's own `max_pool2d` is not used even where it has a backward (kernel == stride): that
/// backward multiplies the gradient by the window's max-count/k² instead of dividing by the
/// count, so a unique maximum gets 1/k² of its gradient (candle 0.11.1 `backprop.rs`).
pub(crate) fn max_pool2d_candle(x: &Tensor, s: &PoolShape) -> candle_core::Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let p = s.padding;
    let xp = if p > 0 {
        let rows =
            Tensor::full(f32::NEG_INFINITY, (n, c, p, w), x.device())?.to_dtype(x.dtype())?;
        let t = Tensor::cat(&[&rows, x, &rows], 2)?;
        let cols = Tensor::full(f32::NEG_INFINITY, (n, c, h + 2 * p, p), x.device())?
            .to_dtype(x.dtype())?;
        Tensor::cat(&[&cols, &t, &cols], 3)?
    } else {
        x.clone()
    };
    let (h1, w1) = (h + 2 * p - s.k + 1, w + 2 * p - s.k + 1);
    let mut acc = xp.narrow(2, 0, h1)?.narrow(3, 0, w1)?;
    for dy in 0..s.k {
        for dx in 0..s.k {
            if dy + dx > 0 {
                acc = acc.maximum(&xp.narrow(2, dy, h1)?.narrow(3, dx, w1)?)?;
            }
        }
    }
    subsample(&acc, s.stride)
}

/// Keeps every `stride`-th row and column of a stride-1 window result, starting at 0:
/// pad to a multiple of the stride, reshape, take offset 0 (all differentiable).
fn subsample(y: &Tensor, stride: usize) -> candle_core::Result<Tensor> {
    if stride <= 1 {
        return Ok(y.clone());
    }
    let (n, c, h1, w1) = y.dims4()?;
    let (ho, wo) = ((h1 - 1) / stride + 1, (w1 - 1) / stride + 1);
    y.pad_with_zeros(2, 0, ho * stride - h1)?
        .pad_with_zeros(3, 0, wo * stride - w1)?
        .reshape((n, c, ho, stride, wo, stride))?
        .narrow(3, 0, 1)?
        .narrow(5, 0, 1)?
        .reshape((n, c, ho, wo))
}

/// Average pooling, k×k window, zero padding (any amount) counted in the average, any stride.
pub fn avg_pool2d(x: &Tensor, k: usize, stride: usize, padding: usize) -> Result<Tensor> {
    pool2d_on(Backend::for_tensor(x), PoolKind::Avg, x, k, stride, padding)
}

/// Max pooling, k×k window, padding (at most k/2) ignored as −∞, any stride.
pub fn max_pool2d(x: &Tensor, k: usize, stride: usize, padding: usize) -> Result<Tensor> {
    pool2d_on(Backend::for_tensor(x), PoolKind::Max, x, k, stride, padding)
}

/// Either pool on a chosen backend.
pub fn pool2d_on(
    backend: Backend,
    kind: PoolKind,
    x: &Tensor,
    k: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let x = &arg(x);
    let shape = PoolShape::new(kind, x.dims(), k, stride, padding)?;
    match backend {
        Backend::Own => {
            check_own(x, "pool2d")?;
            let op = Pool2dOp {
                kind,
                k,
                stride,
                padding,
            };
            Ok(x.contiguous()?.apply_op1(op)?)
        }
        Backend::Candle => Ok(match kind {
            PoolKind::Avg => avg_pool2d_candle(x, &shape)?,
            PoolKind::Max => max_pool2d_candle(x, &shape)?,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_shape_checks() {
        use PoolKind::{Avg, Max};
        let s = PoolShape::new(Max, &[2, 3, 7, 6], 3, 2, 1).unwrap();
        assert_eq!((s.ho, s.wo), (4, 3));
        assert!(PoolShape::new(Max, &[2, 3, 7, 6], 3, 2, 2).is_err());
        assert!(PoolShape::new(Avg, &[2, 3, 7, 6], 3, 2, 2).is_ok());
        assert!(PoolShape::new(Avg, &[2, 3, 1, 6], 3, 1, 0).is_err());
        assert!(PoolShape::new(Avg, &[2, 3, 6], 3, 1, 0).is_err());
    }
}

/// Pads every side of each `[H, W]` plane by `pad` with a per-channel constant (DBB's BN-then-pad,
/// docs/REFERENCE.md "Branch types"): one op instead of candle's pads, masks and broadcasts. The
/// values carry no gradient; the input's gradient is the interior of the output's.
#[derive(Clone, Debug)]
pub(crate) struct PadConstOp {
    pub pad: usize,
    pub values: Vec<f32>,
}

impl CustomOp1 for PadConstOp {
    fn name(&self) -> &'static str {
        "dyrep-pad-const"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice_f32(s, l, self.name())?;
        let [n, c, h, w]: [usize; 4] = l
            .dims()
            .try_into()
            .map_err(|_| candle_core::Error::Msg("pad_const expects [N, C, H, W]".into()))?;
        let (p, hw) = (self.pad, h * w);
        let (hp, wp) = (h + 2 * p, w + 2 * p);
        let mut y = vec![0.0f32; n * c * hp * wp];
        y.par_chunks_mut((hp * wp).max(1))
            .enumerate()
            .for_each(|(i, yp)| {
                yp.fill(self.values[i % c]);
                let xp = &x[i * hw..(i + 1) * hw];
                for iy in 0..h {
                    yp[(iy + p) * wp + p..(iy + p) * wp + p + w]
                        .copy_from_slice(&xp[iy * w..(iy + 1) * w]);
                }
            });
        Ok((CpuStorage::F32(y), Shape::from((n, c, hp, wp))))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let p = self.pad;
        Ok(Some(
            dy.narrow(2, p, x.dim(2)?)?
                .narrow(3, p, x.dim(3)?)?
                .contiguous()?,
        ))
    }
}
