//! The online block form's kernel assembly (docs/REFERENCE.md "The online form"), for the branches
//! that are one conv (or the identity) times a per-output-channel scale: `K = Σ_p embed(s_p ⊙
//! W_p)`, each `W_p` (`[O, I/g, kh, kw]`, odd sides up to k) centred in the k×k kernel, or a
//! 1×1 `W_p` spread over the whole window and divided by k² (a 1×1 conv followed by a k×k average
//! pool of its own channels), the identity piece `s_p` on `K[o, o mod (I/g), k/2, k/2]`. One pass
//! forward and one backward
//! (`dW_p = s_p ⊙ crop(dK)`, `ds_p[o] = Σ W_p[o]·crop(dK)[o]`), keeping nothing but the inputs —
//! the same sum as folding, padding and adding each branch with tensor ops (dyrep-api's
//! `Kernel`, the reference it is tested against), without their kernel-sized intermediates.
//! Own CPU kernels only (f32); elsewhere the caller composes the tensor ops.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use crate::cpu::slice_f32;
use crate::error::{KernelError, Result};
use crate::{arg, check_own};

/// What a piece places in the kernel.
#[derive(Clone, Copy, Debug)]
pub enum PieceWeight<'a> {
    /// `[O, I/g, kh, kw]`, odd sides no larger than k, centred.
    Centred(&'a Tensor),
    /// `[O, I/g, 1, 1]` on every tap of the k×k window, divided by k².
    Spread(&'a Tensor),
    /// The identity (needs O/g == I/g).
    Identity,
}

/// One piece of an assembled kernel.
#[derive(Clone, Copy, Debug)]
pub struct KernelPiece<'a> {
    pub weight: PieceWeight<'a>,
    /// `[O]`, multiplies output channel `o` of the piece.
    pub scale: &'a Tensor,
}

/// `Σ_p embed(scale_p ⊙ weight_p)` as a `[out, in_per_group, k, k]` kernel, differentiable in
/// every weight and scale.
pub fn assemble_kernel(
    pieces: &[KernelPiece<'_>],
    out: usize,
    in_per_group: usize,
    k: usize,
) -> Result<Tensor> {
    let bad = |detail: String| KernelError::Shape {
        op: "assemble_kernel",
        detail,
    };
    let first = pieces
        .first()
        .ok_or_else(|| bad("no piece to assemble".into()))?;
    let mut kinds = Vec::with_capacity(pieces.len());
    let (mut weights, mut scales) = (Vec::new(), Vec::new());
    for p in pieces {
        check_own(p.scale, "assemble_kernel")?;
        if p.scale.dims() != [out] {
            return Err(bad(format!(
                "a scale of shape {:?}, not [{out}]",
                p.scale.dims()
            )));
        }
        scales.push(arg(p.scale));
        match p.weight {
            PieceWeight::Centred(w) | PieceWeight::Spread(w) => {
                check_own(w, "assemble_kernel")?;
                let (o, i, kh, kw) = w.dims4()?;
                let spread = matches!(p.weight, PieceWeight::Spread(_));
                let fits = |n: usize| !n.is_multiple_of(2) && n <= k && (n == 1 || !spread);
                if o != out || i != in_per_group || !fits(kh) || !fits(kw) || k.is_multiple_of(2) {
                    return Err(bad(format!(
                        "a piece of shape {:?} in a [{out}, {in_per_group}, {k}, {k}] kernel",
                        w.dims()
                    )));
                }
                kinds.push(if spread {
                    Kind::Spread
                } else {
                    Kind::Conv { kh, kw }
                });
                weights.push(arg(w).flatten_all()?);
            }
            PieceWeight::Identity => {
                if k.is_multiple_of(2) || !out.is_multiple_of(in_per_group) {
                    return Err(bad(format!(
                        "an identity piece in a [{out}, {in_per_group}, {k}, {k}] kernel"
                    )));
                }
                kinds.push(Kind::Identity);
            }
        }
    }
    let dtype = first.scale.dtype();
    let w = if weights.is_empty() {
        Tensor::zeros(1, dtype, first.scale.device())?
    } else {
        Tensor::cat(&weights, 0)?
    };
    let s = Tensor::cat(&scales, 0)?;
    let op = AssembleOp {
        kinds,
        out,
        ipg: in_per_group,
        k,
    };
    Ok(w.apply_op2(&s, op)?)
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Conv { kh: usize, kw: usize },
    Spread,
    Identity,
}

struct AssembleOp {
    kinds: Vec<Kind>,
    out: usize,
    ipg: usize,
    k: usize,
}

impl AssembleOp {
    /// Calls `f(kernel_index, weight_index, scale_index, factor)` for every kernel entry a
    /// weight element of a conv piece lands on (`weight_index` into the concatenated weights;
    /// `factor` 1, or 1/k² for a spread piece), and `f(kernel_index, usize::MAX, scale_index, 1)`
    /// for every entry of an identity piece.
    fn for_each(&self, mut f: impl FnMut(usize, usize, usize, f32)) {
        let (out, ipg, k) = (self.out, self.ipg, self.k);
        let (mut w_off, mut s_off) = (0, 0);
        for kind in &self.kinds {
            match *kind {
                Kind::Conv { kh, kw } => {
                    let (oh, ow) = ((k - kh) / 2, (k - kw) / 2);
                    for o in 0..out {
                        for i in 0..ipg {
                            for a in 0..kh {
                                let krow = ((o * ipg + i) * k + a + oh) * k + ow;
                                let wrow = w_off + ((o * ipg + i) * kh + a) * kw;
                                for b in 0..kw {
                                    f(krow + b, wrow + b, s_off + o, 1.0);
                                }
                            }
                        }
                    }
                    w_off += out * ipg * kh * kw;
                }
                Kind::Spread => {
                    let factor = 1.0 / (k * k) as f32;
                    for o in 0..out {
                        for i in 0..ipg {
                            let base = (o * ipg + i) * k * k;
                            for tap in 0..k * k {
                                f(base + tap, w_off + o * ipg + i, s_off + o, factor);
                            }
                        }
                    }
                    w_off += out * ipg;
                }
                Kind::Identity => {
                    let c = k / 2;
                    for o in 0..out {
                        f(
                            ((o * ipg + o % ipg) * k + c) * k + c,
                            usize::MAX,
                            s_off + o,
                            1.0,
                        );
                    }
                }
            }
            s_off += out;
        }
    }
}

impl CustomOp2 for AssembleOp {
    fn name(&self) -> &'static str {
        "dyrep-assemble-kernel"
    }

    fn cpu_fwd(
        &self,
        ws: &CpuStorage,
        wl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (w, s) = (
            slice_f32(ws, wl, self.name())?,
            slice_f32(ss, sl, self.name())?,
        );
        let mut kernel = vec![0f32; self.out * self.ipg * self.k * self.k];
        self.for_each(|ki, wi, si, f| {
            kernel[ki] += if wi == usize::MAX {
                s[si]
            } else {
                s[si] * (w[wi] * f)
            };
        });
        let shape = Shape::from((self.out, self.ipg, self.k, self.k));
        Ok((CpuStorage::F32(kernel), shape))
    }

    fn bwd(
        &self,
        w: &Tensor,
        s: &Tensor,
        _kernel: &Tensor,
        dk: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let values = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
        let (wv, sv, dkv) = (values(w)?, values(s)?, values(dk)?);
        let (mut dw, mut ds) = (vec![0f32; wv.len()], vec![0f32; sv.len()]);
        self.for_each(|ki, wi, si, f| {
            if wi == usize::MAX {
                ds[si] += dkv[ki];
            } else {
                dw[wi] += sv[si] * f * dkv[ki];
                ds[si] += wv[wi] * f * dkv[ki];
            }
        });
        Ok((
            Some(Tensor::from_vec(dw, w.dims(), w.device())?),
            Some(Tensor::from_vec(ds, s.dims(), s.device())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_values;
    use candle_core::{Device, Var};

    /// Each piece folded, zero-padded and summed with tensor ops, in f64.
    fn reference(w: &[Option<Tensor>], s: &[Tensor], out: usize, ipg: usize, k: usize) -> Tensor {
        let mut acc =
            Tensor::zeros((out, ipg, k, k), candle_core::DType::F64, &Device::Cpu).unwrap();
        for (w, s) in w.iter().zip(s) {
            let s = s
                .to_dtype(candle_core::DType::F64)
                .unwrap()
                .reshape((out, 1, 1, 1))
                .unwrap();
            let piece = match w {
                Some(w) => {
                    let (_, _, kh, kw) = w.dims4().unwrap();
                    let w = w.to_dtype(candle_core::DType::F64).unwrap();
                    w.pad_with_zeros(2, (k - kh) / 2, (k - kh) / 2)
                        .unwrap()
                        .pad_with_zeros(3, (k - kw) / 2, (k - kw) / 2)
                        .unwrap()
                }
                None => {
                    let mut v = vec![0f64; out * ipg * k * k];
                    for o in 0..out {
                        v[((o * ipg + o % ipg) * k + k / 2) * k + k / 2] = 1.0;
                    }
                    Tensor::from_vec(v, (out, ipg, k, k), &Device::Cpu).unwrap()
                }
            };
            acc = (acc + piece.broadcast_mul(&s).unwrap()).unwrap();
        }
        acc
    }

    /// Forward and both gradients against the padded, scaled sum in f64, for kernels of
    /// 1×1, 1×3, 3×1, 3×3 pieces and the identity, grouped (I/g = 2 of O = 4) and not.
    #[test]
    fn assembly_equals_the_scaled_padded_sum_forward_and_backward() {
        for (out, ipg, k, sides) in [
            (
                4usize,
                2usize,
                3usize,
                vec![(3, 3), (1, 1), (1, 3), (3, 1), (0, 0), (0, 1)],
            ),
            (5, 3, 5, vec![(5, 5), (3, 3), (1, 5), (0, 1)]),
        ] {
            let mut seed = 1;
            let mut next = |n: usize, dims: &[usize]| {
                seed += 1;
                Var::from_tensor(
                    &Tensor::from_vec(test_values(n, seed), dims, &Device::Cpu).unwrap(),
                )
                .unwrap()
            };
            let ws: Vec<Option<Var>> = sides
                .iter()
                .map(|&(kh, kw)| {
                    // (0, 1): a spread 1×1 piece; (0, 0): the identity.
                    let (kh, kw) = if kh == 0 { (kw, kw) } else { (kh, kw) };
                    (kh > 0).then(|| next(out * ipg * kh * kw, &[out, ipg, kh, kw]))
                })
                .collect();
            let ss: Vec<Var> = sides.iter().map(|_| next(out, &[out])).collect();
            let dk = Tensor::from_vec(
                test_values(out * ipg * k * k, 99),
                (out, ipg, k, k),
                &Device::Cpu,
            )
            .unwrap();
            let pieces: Vec<KernelPiece<'_>> = ws
                .iter()
                .zip(&ss)
                .zip(&sides)
                .map(|((w, s), side)| KernelPiece {
                    weight: match (w, side) {
                        (Some(w), (0, _)) => PieceWeight::Spread(w.as_tensor()),
                        (Some(w), _) => PieceWeight::Centred(w.as_tensor()),
                        (None, _) => PieceWeight::Identity,
                    },
                    scale: s.as_tensor(),
                })
                .collect();
            let got = assemble_kernel(&pieces, out, ipg, k).unwrap();
            let g = (&got * &dk).unwrap().sum_all().unwrap().backward().unwrap();
            let w64: Vec<Option<Var>> = ws
                .iter()
                .map(|w| {
                    w.as_ref().map(|w| {
                        Var::from_tensor(&w.to_dtype(candle_core::DType::F64).unwrap()).unwrap()
                    })
                })
                .collect();
            let s64: Vec<Var> = ss
                .iter()
                .map(|s| Var::from_tensor(&s.to_dtype(candle_core::DType::F64).unwrap()).unwrap())
                .collect();
            let want = reference(
                &w64.iter()
                    .zip(&sides)
                    .map(|(w, side)| {
                        w.as_ref().map(|w| match side {
                            // The spread piece as its reference: broadcast over k×k, ÷k².
                            (0, _) => (w.as_tensor().broadcast_as((out, ipg, k, k)).unwrap()
                                / (k * k) as f64)
                                .unwrap(),
                            _ => w.as_tensor().clone(),
                        })
                    })
                    .collect::<Vec<_>>(),
                &s64.iter()
                    .map(|s| s.as_tensor().clone())
                    .collect::<Vec<_>>(),
                out,
                ipg,
                k,
            );
            let g64 = (&want * &dk.to_dtype(candle_core::DType::F64).unwrap())
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let close = |a: &Tensor, b: &Tensor, what: &str| {
                let a = a
                    .to_dtype(candle_core::DType::F64)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f64>()
                    .unwrap();
                let b = b.flatten_all().unwrap().to_vec1::<f64>().unwrap();
                assert_eq!(a.len(), b.len(), "{what}");
                for (x, y) in a.iter().zip(&b) {
                    // Each entry sums at most one product per piece (and per kernel entry for
                    // a scale's gradient): a few f32 roundings of values below 1e3.
                    assert!(
                        (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                        "{what}: {x} vs {y}"
                    );
                }
            };
            close(&got, &want, "kernel");
            for (i, (w, w64)) in ws.iter().zip(&w64).enumerate() {
                if let (Some(w), Some(w64)) = (w, w64) {
                    close(
                        g.get(w.as_tensor()).unwrap(),
                        g64.get(w64.as_tensor()).unwrap(),
                        &format!("dW{i}"),
                    );
                }
            }
            for (i, (s, s64)) in ss.iter().zip(&s64).enumerate() {
                close(
                    g.get(s.as_tensor()).unwrap(),
                    g64.get(s64.as_tensor()).unwrap(),
                    &format!("ds{i}"),
                );
            }
        }
    }
}
