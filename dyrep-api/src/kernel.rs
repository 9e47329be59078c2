//! `Kernel`: the eval-mode equivalent of anything linear, and the kernel transforms of
//! docs/REFERENCE.md "Equivalent kernels" (DBB's transI–transIX): BN fold, parallel sum, per-axis
//! zero-pad to k×k, sequential merge of a 1×1 with a k×k conv (either order, grouped), average
//! pooling and identity as grouped kernels.

use candle_core::{DType, Device, Tensor};

use crate::bn::BnEval;
use crate::error::{Error, Result};

/// A conv weight `[out, in/groups, kh, kw]` and bias `[out]`: the exact eval-mode equivalent of a
/// branch, a block or a whole slot tree. Kernels from branches are square k×k in the block's
/// geometry; intermediate kernels (1×1, 1×k, k×1) are padded with [`Kernel::pad_to`].
#[derive(Clone, Debug)]
pub struct Kernel {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Kernel {
    /// Validated constructor: weight of rank 4, bias of rank 1 with one entry per output channel.
    pub fn new(weight: Tensor, bias: Tensor) -> Result<Self> {
        let wd = weight.dims().to_vec();
        if wd.len() != 4 {
            return Err(Error::ShapeMismatch {
                context: "kernel weight (expected [out, in/groups, kh, kw])".into(),
                expected: vec![],
                got: wd,
            });
        }
        if bias.dims() != [wd[0]] {
            return Err(Error::ShapeMismatch {
                context: "kernel bias".into(),
                expected: vec![wd[0]],
                got: bias.dims().to_vec(),
            });
        }
        Ok(Self { weight, bias })
    }

    /// A zero kernel of the given weight shape.
    pub fn zeros(shape: [usize; 4], dtype: DType, device: &Device) -> Result<Self> {
        Ok(Self {
            weight: Tensor::zeros(&shape, dtype, device)?,
            bias: Tensor::zeros(shape[0], dtype, device)?,
        })
    }

    /// Weight without bias (bias zero).
    pub fn from_weight(weight: Tensor) -> Result<Self> {
        let out = weight.dims().first().copied().unwrap_or(0);
        let bias = Tensor::zeros(out, weight.dtype(), weight.device())?;
        Self::new(weight, bias)
    }

    /// `(out, in/groups, kh, kw)`.
    pub fn dims4(&self) -> Result<(usize, usize, usize, usize)> {
        Ok(self.weight.dims4()?)
    }

    /// transII: parallel branches add.
    pub fn add(&self, other: &Kernel) -> Result<Kernel> {
        self.same_shape(other, "kernel add")?;
        Ok(Kernel {
            weight: (&self.weight + &other.weight)?,
            bias: (&self.bias + &other.bias)?,
        })
    }

    /// Difference of two kernels of the same shape.
    pub fn sub(&self, other: &Kernel) -> Result<Kernel> {
        self.same_shape(other, "kernel sub")?;
        Ok(Kernel {
            weight: (&self.weight - &other.weight)?,
            bias: (&self.bias - &other.bias)?,
        })
    }

    /// Sum of several kernels of one shape; `None` for an empty list.
    pub fn sum<'a>(kernels: impl IntoIterator<Item = &'a Kernel>) -> Result<Option<Kernel>> {
        let mut acc: Option<Kernel> = None;
        for k in kernels {
            acc = Some(match acc {
                None => k.clone(),
                Some(a) => a.add(k)?,
            });
        }
        Ok(acc)
    }

    /// Scales output channel `o` (weight rows and bias) by `scale[o]`.
    pub fn scale_out(&self, scale: &Tensor) -> Result<Kernel> {
        let out = self.weight.dim(0)?;
        Ok(Kernel {
            weight: self.weight.broadcast_mul(&scale.reshape((out, 1, 1, 1))?)?,
            bias: (&self.bias * scale)?,
        })
    }

    /// transI: fold a batch norm that follows this kernel (eval-mode statistics):
    /// `W' = s·W`, `b' = β + s·(b − μ)` with `s = γ / sqrt(σ² + ε)`.
    pub fn fold_bn(&self, bn: &BnEval) -> Result<Kernel> {
        let out = self.weight.dim(0)?;
        if bn.gamma.dims() != [out] {
            return Err(Error::ShapeMismatch {
                context: "batch norm folded into a kernel".into(),
                expected: vec![out],
                got: bn.gamma.dims().to_vec(),
            });
        }
        let s = bn.scale()?;
        Ok(Kernel {
            weight: self.weight.broadcast_mul(&s.reshape((out, 1, 1, 1))?)?,
            bias: (&bn.beta + (&s * (&self.bias - &bn.mean)?)?)?,
        })
    }

    /// transVI: zero-pads a (kh, kw) kernel to (k, k), centred, each axis on its own
    /// (rows are the H axis, dim 2; columns the W axis, dim 3 — DBB's own copy swaps them).
    pub fn pad_to(&self, k: usize) -> Result<Kernel> {
        let (_, _, kh, kw) = self.dims4()?;
        if kh > k || kw > k || !(k - kh).is_multiple_of(2) || !(k - kw).is_multiple_of(2) {
            return Err(Error::ShapeMismatch {
                context: format!(
                    "zero-padding a {kh}x{kw} kernel to {k}x{k} (sizes must be odd and not larger)"
                ),
                expected: vec![k, k],
                got: vec![kh, kw],
            });
        }
        let (ph, pw) = ((k - kh) / 2, (k - kw) / 2);
        let mut w = self.weight.clone();
        if ph > 0 {
            w = w.pad_with_zeros(2, ph, ph)?;
        }
        if pw > 0 {
            w = w.pad_with_zeros(3, pw, pw)?;
        }
        Ok(Kernel {
            weight: w,
            bias: self.bias.clone(),
        })
    }

    /// Sequential merge of two convs applied one after the other, `second ∘ self`, with the same
    /// `groups`. One of the two must be 1×1 and `self` must have stride 1:
    ///
    /// - transIII (self 1×1 `[D, I/g, 1, 1]`, second `[O, D/g, k, k]`):
    ///   `K[o,c] = Σ_{d∈group} W2[o,d]·W1[d,c]`, `B[o] = b2[o] + Σ_{d,h,w} W2[o,d,h,w]·b1[d]`.
    ///   Exact at the borders only when the padding between the two convs is filled with `b1`
    ///   (BN-then-pad, docs/REFERENCE.md "Branch types").
    /// - k×k then 1×1 (self `[D, I/g, k, k]`, second `[O, D/g, 1, 1]`):
    ///   `K[o,c] = Σ_d W2[o,d]·W1[d,c]`, `B = W2·b1 + b2`.
    pub fn then(&self, second: &Kernel, groups: usize) -> Result<Kernel> {
        let (d, ipg, kh1, kw1) = self.dims4()?;
        let (o, dpg, kh2, kw2) = second.dims4()?;
        let shape_err = |why: &str| Error::ShapeMismatch {
            context: format!("sequential kernel merge ({why})"),
            expected: vec![d, groups],
            got: vec![dpg * groups, o],
        };
        if groups == 0 || d % groups != 0 || o % groups != 0 || dpg * groups != d {
            return Err(shape_err("middle channels of the two kernels disagree"));
        }
        let g = groups;
        let (opg, dg) = (o / g, d / g);
        let (w1, w2) = (&self.weight, &second.weight);
        if kh1 == 1 && kw1 == 1 {
            // [O, D/g, kh, kw] -> [g, O/g, D/g, kk] -> [g, O/g*kk, D/g]
            let kk = kh2 * kw2;
            let w2g = w2
                .reshape((g, opg, dg, kk))?
                .transpose(2, 3)?
                .contiguous()?
                .reshape((g, opg * kk, dg))?;
            let w1g = w1.reshape((g, dg, ipg))?;
            let k = w2g
                .matmul(&w1g)? // [g, O/g*kk, I/g]
                .reshape((g, opg, kk, ipg))?
                .transpose(2, 3)?
                .contiguous()?
                .reshape((o, ipg, kh2, kw2))?;
            let w2sum = w2.reshape((g, opg, dg, kk))?.sum(3)?; // [g, O/g, D/g]
            let b1 = self.bias.reshape((g, dg, 1))?;
            let b = (w2sum.matmul(&b1)?.reshape(o)? + &second.bias)?;
            Kernel::new(k, b)
        } else if kh2 == 1 && kw2 == 1 {
            let kk = kh1 * kw1;
            let w2g = w2.reshape((g, opg, dg))?;
            let w1g = w1.reshape((g, dg, ipg * kk))?;
            let k = w2g.matmul(&w1g)?.reshape((o, ipg, kh1, kw1))?;
            let b1 = self.bias.reshape((g, dg, 1))?;
            let b = (w2g.matmul(&b1)?.reshape(o)? + &second.bias)?;
            Kernel::new(k, b)
        } else {
            Err(shape_err("one of the two kernels must be 1x1"))
        }
    }

    /// transIX: the identity map on `channels` channels as a grouped k×k kernel
    /// (`K[i, i mod (C/g), k/2, k/2] = 1`), for any odd k.
    pub fn identity(
        channels: usize,
        k: usize,
        groups: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Kernel> {
        Self::per_channel_pattern(channels, k, groups, dtype, device, |h, w| {
            if h == k / 2 && w == k / 2 {
                1.0
            } else {
                0.0
            }
        })
    }

    /// transV: k×k average pooling (zero padding counted) on `channels` channels as a grouped
    /// kernel (`K[c, c mod (C/g), :, :] = 1/k²`).
    pub fn avg_pool(
        channels: usize,
        k: usize,
        groups: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Kernel> {
        let v = 1.0 / (k * k) as f64;
        Self::per_channel_pattern(channels, k, groups, dtype, device, |_, _| v)
    }

    /// A 1×1 kernel followed by a k×k average pool of its own output channels (transIII with
    /// the pool's kernel, transV): the 1×1 weight spread uniformly over k×k and divided by k²,
    /// the bias unchanged — what `then(&avg_pool(..), groups)` gives, as a broadcast instead of
    /// a product with the pool's mostly-zero kernel (and its bias exact: no k² partial sums).
    pub fn avg_pooled(&self, k: usize) -> Result<Kernel> {
        let (o, i, kh, kw) = self.dims4()?;
        if kh != 1 || kw != 1 || k.is_multiple_of(2) {
            return Err(Error::ShapeMismatch {
                context: format!(
                    "average-pooling a {kh}x{kw} kernel over {k}x{k} (needs 1x1 and odd k)"
                ),
                expected: vec![1, 1],
                got: vec![kh, kw],
            });
        }
        Ok(Kernel {
            weight: (self.weight.broadcast_as((o, i, k, k))? * (1.0 / (k * k) as f64))?,
            bias: self.bias.clone(),
        })
    }

    fn per_channel_pattern(
        channels: usize,
        k: usize,
        groups: usize,
        dtype: DType,
        device: &Device,
        value: impl Fn(usize, usize) -> f64,
    ) -> Result<Kernel> {
        if groups == 0 || !channels.is_multiple_of(groups) || k.is_multiple_of(2) {
            return Err(crate::geom::GeomError::Invalid {
                geom: format!("channels={channels} k={k} groups={groups}"),
                rule: "groups must divide the channels and k must be odd".into(),
            }
            .into());
        }
        let cpg = channels / groups;
        let mut data = vec![0f32; channels * cpg * k * k];
        for c in 0..channels {
            let j = c % cpg;
            for h in 0..k {
                for w in 0..k {
                    data[((c * cpg + j) * k + h) * k + w] = value(h, w) as f32;
                }
            }
        }
        let weight = Tensor::from_vec(data, (channels, cpg, k, k), device)?.to_dtype(dtype)?;
        Kernel::from_weight(weight)
    }

    /// Applies the kernel as a conv (symmetric padding) plus bias: the fused forward.
    pub fn conv(&self, x: &Tensor, stride: usize, padding: usize, groups: usize) -> Result<Tensor> {
        let out = self.weight.dim(0)?;
        let y = x.conv2d(&self.weight, padding, stride, 1, groups)?;
        Ok(y.broadcast_add(&self.bias.reshape((1, out, 1, 1))?)?)
    }

    /// Detached deep copy (own storage), so later in-place updates of a parameter this kernel was
    /// read from cannot change it.
    pub fn detached_copy(&self) -> Result<Kernel> {
        Ok(Kernel {
            weight: self.weight.detach().copy()?,
            bias: self.bias.detach().copy()?,
        })
    }

    fn same_shape(&self, other: &Kernel, context: &str) -> Result<()> {
        if self.weight.dims() != other.weight.dims() {
            return Err(Error::ShapeMismatch {
                context: context.into(),
                expected: self.weight.dims().to_vec(),
                got: other.weight.dims().to_vec(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::normal_tensor;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn pad_to_keeps_axes_apart() {
        // A 1x3 kernel must land in the middle row of the 3x3, a 3x1 in the middle column.
        let dev = Device::Cpu;
        let w = Tensor::from_vec(vec![1f32, 2., 3.], (1, 1, 1, 3), &dev).unwrap();
        let k = Kernel::from_weight(w).unwrap().pad_to(5).unwrap();
        let v = k.weight.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut want = vec![0f32; 25];
        want[2 * 5 + 1] = 1.;
        want[2 * 5 + 2] = 2.;
        want[2 * 5 + 3] = 3.;
        assert_eq!(v, want);
        let w = Tensor::from_vec(vec![1f32, 2., 3.], (1, 1, 3, 1), &dev).unwrap();
        let k = Kernel::from_weight(w).unwrap().pad_to(3).unwrap();
        let v = k.weight.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v, vec![0., 1., 0., 0., 2., 0., 0., 3., 0.]);
        assert!(k.pad_to(2).is_err());
    }

    #[test]
    fn one_by_one_then_kxk_matches_two_convs_inside() {
        // Without padding between the convs the merge is exact everywhere (valid region).
        let dev = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for &(i, d, o, g) in &[(4usize, 6usize, 8usize, 2usize), (3, 3, 3, 1), (6, 6, 6, 6)] {
            let w1 = normal_tensor(&mut rng, &[d, i / g, 1, 1], 0.0, 1.0, &dev).unwrap();
            let b1 = normal_tensor(&mut rng, &[d], 0.0, 1.0, &dev).unwrap();
            let w2 = normal_tensor(&mut rng, &[o, d / g, 3, 3], 0.0, 1.0, &dev).unwrap();
            let b2 = normal_tensor(&mut rng, &[o], 0.0, 1.0, &dev).unwrap();
            let x = normal_tensor(&mut rng, &[2, i, 7, 6], 0.0, 1.0, &dev).unwrap();
            let k1 = Kernel::new(w1, b1).unwrap();
            let k2 = Kernel::new(w2, b2).unwrap();
            let seq = k2.conv(&k1.conv(&x, 1, 0, g).unwrap(), 2, 0, g).unwrap();
            let merged = k1.then(&k2, g).unwrap().conv(&x, 2, 0, g).unwrap();
            assert!(max_diff(&seq, &merged) < 1e-4);
        }
    }

    #[test]
    fn kxk_then_one_by_one_matches_two_convs() {
        let dev = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        for &(i, d, o, g) in &[(4usize, 6usize, 8usize, 2usize), (5, 5, 5, 5)] {
            let w1 = normal_tensor(&mut rng, &[d, i / g, 3, 3], 0.0, 1.0, &dev).unwrap();
            let b1 = normal_tensor(&mut rng, &[d], 0.0, 1.0, &dev).unwrap();
            let w2 = normal_tensor(&mut rng, &[o, d / g, 1, 1], 0.0, 1.0, &dev).unwrap();
            let b2 = normal_tensor(&mut rng, &[o], 0.0, 1.0, &dev).unwrap();
            let x = normal_tensor(&mut rng, &[2, i, 6, 7], 0.0, 1.0, &dev).unwrap();
            let k1 = Kernel::new(w1, b1).unwrap();
            let k2 = Kernel::new(w2, b2).unwrap();
            let seq = k2.conv(&k1.conv(&x, 2, 1, g).unwrap(), 1, 0, g).unwrap();
            let merged = k1.then(&k2, g).unwrap().conv(&x, 2, 1, g).unwrap();
            assert!(max_diff(&seq, &merged) < 1e-4);
        }
    }

    #[test]
    fn identity_and_avg_kernels_are_grouped() {
        let dev = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let x = normal_tensor(&mut rng, &[1, 4, 5, 6], 0.0, 1.0, &dev).unwrap();
        for &g in &[1usize, 2, 4] {
            let id = Kernel::identity(4, 5, g, DType::F32, &dev).unwrap();
            assert!(max_diff(&id.conv(&x, 1, 2, g).unwrap(), &x) < 1e-6);
        }
        let avg = Kernel::avg_pool(4, 3, 4, DType::F32, &dev).unwrap();
        let y = avg.conv(&x, 1, 0, 4).unwrap();
        let direct = x.avg_pool2d_with_stride(3, 1).unwrap();
        assert!(max_diff(&y, &direct) < 1e-6);
        assert!(Kernel::identity(4, 3, 3, DType::F32, &dev).is_err());
    }

    /// The broadcast form of "1×1 then average pool" equals the product with the pool's
    /// grouped kernel (transIII), for every grouping the branch uses.
    #[test]
    fn avg_pooled_equals_the_merge_with_the_pool_kernel() {
        let dev = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(10);
        for &(o, i, g, k) in &[(6usize, 4usize, 1usize, 3usize), (6, 4, 2, 5), (4, 4, 4, 3)] {
            let w = normal_tensor(&mut rng, &[o, i / g, 1, 1], 0.0, 1.0, &dev).unwrap();
            let b = normal_tensor(&mut rng, &[o], 0.0, 1.0, &dev).unwrap();
            let k1 = Kernel::new(w, b).unwrap();
            let pool = Kernel::avg_pool(o, k, g, DType::F32, &dev).unwrap();
            let merged = k1.then(&pool, g).unwrap();
            let spread = k1.avg_pooled(k).unwrap();
            assert!(
                max_diff(&merged.weight, &spread.weight) < 1e-7,
                "{o} {i} {g} {k}"
            );
            assert!(
                max_diff(&merged.bias, &spread.bias) < 1e-6,
                "{o} {i} {g} {k}"
            );
        }
        let k3 = Kernel::from_weight(Tensor::zeros((2, 2, 3, 3), DType::F32, &dev).unwrap());
        assert!(k3.unwrap().avg_pooled(3).is_err());
    }
}
