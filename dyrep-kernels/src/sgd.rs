//! One step of SGD with momentum for one parameter (PyTorch's `torch.optim.SGD`, the optimizer of
//! the reference recipes, docs/REFERENCE.md "Training recipes"): `d = g + wd·θ`,
//! `buf = m·buf + d` (the first step: `buf = d`), `d = d + m·buf` with Nesterov else `buf`,
//! `θ ← θ − lr·d`. The own kernel does it in one pass over `θ`, `g` and `buf` (candle's
//! composition below takes seven, each through a fresh tensor: a tenth of a thin model's step);
//! it runs the composition's f32 operations in the composition's order — candle multiplies by
//! a scalar as `v·s + 0` — so both give the same bits.

use std::mem::MaybeUninit;

use candle_core::Tensor;
use rayon::prelude::*;

use crate::cpu::{assume_init_vec, uninit_vec, with_f32};
use crate::{arg, check_own, Backend, KernelError, Result};

/// The hyper-parameters of one step.
#[derive(Clone, Copy, Debug)]
pub struct SgdStep {
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    /// `None`: this parameter is not decayed.
    pub weight_decay: Option<f64>,
}

/// The parameter after the step and the new momentum buffer (`None` without momentum).
#[derive(Debug)]
pub struct SgdUpdate {
    pub theta: Tensor,
    pub buffer: Option<Tensor>,
}

/// One step for parameter `theta` with gradient `grad` and the momentum buffer of the previous
/// step (`None` on the first step, or when its shape no longer matches).
pub fn sgd_step(
    theta: &Tensor,
    grad: &Tensor,
    buffer: Option<&Tensor>,
    step: SgdStep,
) -> Result<SgdUpdate> {
    sgd_step_on(Backend::for_tensor(theta), theta, grad, buffer, step)
}

/// [`sgd_step`] on a chosen backend.
pub fn sgd_step_on(
    backend: Backend,
    theta: &Tensor,
    grad: &Tensor,
    buffer: Option<&Tensor>,
    step: SgdStep,
) -> Result<SgdUpdate> {
    let (theta, grad) = (&arg(theta), &arg(grad));
    let buffer = buffer.map(arg).filter(|b| b.dims() == theta.dims());
    if grad.dims() != theta.dims() {
        return Err(KernelError::Shape {
            op: "sgd_step",
            detail: format!(
                "a gradient of {:?} for a parameter of {:?}",
                grad.dims(),
                theta.dims()
            ),
        });
    }
    match backend {
        Backend::Own => {
            check_own(theta, "sgd_step")?;
            check_own(grad, "sgd_step")?;
            if let Some(b) = &buffer {
                check_own(b, "sgd_step")?;
            }
            sgd_step_own(theta, grad, buffer.as_ref(), step)
        }
        Backend::Candle => sgd_step_candle(theta, grad, buffer.as_ref(), step),
    }
}

/// The update of one value: `(θ', buf')` from `θ`, `g` and the previous buffer. Scalars are
/// the f32 values candle's `Tensor * f64` uses.
#[derive(Clone, Copy)]
struct Scalars {
    lr: f32,
    momentum: Option<f32>,
    nesterov: bool,
    weight_decay: Option<f32>,
}

impl Scalars {
    #[inline]
    fn update(&self, th: f32, g: f32, prev: Option<f32>) -> (f32, f32) {
        let d = match self.weight_decay {
            Some(wd) => g + (th * wd + 0.0),
            None => g,
        };
        let (d, buf) = match self.momentum {
            Some(m) => {
                let buf = match prev {
                    Some(b) => (b * m + 0.0) + d,
                    None => d,
                };
                let d = if self.nesterov {
                    d + (buf * m + 0.0)
                } else {
                    buf
                };
                (d, buf)
            }
            None => (d, 0.0),
        };
        (th - (d * self.lr + 0.0), buf)
    }

    /// [`Self::update`] over one chunk: every element of `out` (and of `buf_out`, given with
    /// momentum) is written.
    fn chunk(
        &self,
        th: &[f32],
        g: &[f32],
        prev: Option<&[f32]>,
        out: &mut [MaybeUninit<f32>],
        buf_out: Option<&mut [MaybeUninit<f32>]>,
    ) {
        match (buf_out, prev) {
            (Some(bo), Some(p)) => {
                for ((((o, b), &t), &gv), &pv) in out.iter_mut().zip(bo).zip(th).zip(g).zip(p) {
                    let (t2, b2) = self.update(t, gv, Some(pv));
                    o.write(t2);
                    b.write(b2);
                }
            }
            (Some(bo), None) => {
                for (((o, b), &t), &gv) in out.iter_mut().zip(bo).zip(th).zip(g) {
                    let (t2, b2) = self.update(t, gv, None);
                    o.write(t2);
                    b.write(b2);
                }
            }
            (None, _) => {
                for ((o, &t), &gv) in out.iter_mut().zip(th).zip(g) {
                    o.write(self.update(t, gv, None).0);
                }
            }
        }
    }
}

/// Values per parallel chunk: small parameters run in one.
const CHUNK: usize = 1 << 14;

fn sgd_step_own(
    theta: &Tensor,
    grad: &Tensor,
    buffer: Option<&Tensor>,
    step: SgdStep,
) -> Result<SgdUpdate> {
    let s = Scalars {
        lr: step.lr as f32,
        momentum: (step.momentum != 0.0).then_some(step.momentum as f32),
        nesterov: step.nesterov,
        weight_decay: step.weight_decay.filter(|&w| w != 0.0).map(|w| w as f32),
    };
    let n = theta.elem_count();
    let mut new_theta = uninit_vec(n);
    let mut new_buf = uninit_vec(if s.momentum.is_some() { n } else { 0 });
    with_f32(theta, "sgd_step", |th| {
        with_f32(grad, "sgd_step", |g| -> candle_core::Result<()> {
            let mut run = |prev: Option<&[f32]>| {
                let chunks = new_theta.par_chunks_mut(CHUNK).enumerate();
                if s.momentum.is_some() {
                    chunks
                        .zip(new_buf.par_chunks_mut(CHUNK))
                        .for_each(|((i, out), bout)| {
                            let r = i * CHUNK..i * CHUNK + out.len();
                            let prev = prev.map(|p| &p[r.clone()]);
                            s.chunk(&th[r.clone()], &g[r], prev, out, Some(bout));
                        });
                } else {
                    chunks.for_each(|(i, out)| {
                        let r = i * CHUNK..i * CHUNK + out.len();
                        s.chunk(&th[r.clone()], &g[r], None, out, None);
                    });
                }
            };
            match buffer {
                Some(b) => with_f32(b, "sgd_step", |prev| run(Some(prev))),
                None => {
                    run(None);
                    Ok(())
                }
            }
        })?
    })??;
    // SAFETY: the chunks cover both buffers (`new_buf` is empty without momentum) and
    // `Scalars::chunk` writes every element of the chunks it is given.
    let (new_theta, new_buf) = unsafe { (assume_init_vec(new_theta), assume_init_vec(new_buf)) };
    let dims = theta.dims();
    Ok(SgdUpdate {
        theta: Tensor::from_vec(new_theta, dims, theta.device())?,
        buffer: s
            .momentum
            .map(|_| Tensor::from_vec(new_buf, dims, theta.device()))
            .transpose()?,
    })
}

/// The same step as candle's ops (other devices and dtypes; the reference of the own kernel).
fn sgd_step_candle(
    theta: &Tensor,
    grad: &Tensor,
    buffer: Option<&Tensor>,
    step: SgdStep,
) -> Result<SgdUpdate> {
    let theta = theta.detach();
    let mut d = grad.detach();
    if let Some(wd) = step.weight_decay.filter(|&w| w != 0.0) {
        d = (d + (&theta * wd)?)?;
    }
    let mut new_buf = None;
    if step.momentum != 0.0 {
        let buf = match buffer {
            Some(b) => ((b * step.momentum)? + &d)?,
            None => d.copy()?,
        };
        d = if step.nesterov {
            (d + (&buf * step.momentum)?)?
        } else {
            buf.clone()
        };
        new_buf = Some(buf);
    }
    Ok(SgdUpdate {
        theta: (theta - (d * step.lr)?)?,
        buffer: new_buf,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_values;
    use candle_core::Device;

    /// The own kernel against candle's composition, bit for bit, over three steps (first step
    /// without a buffer), with and without momentum, Nesterov and weight decay, on a parameter
    /// longer than one parallel chunk and holding signed zeros.
    #[test]
    fn own_step_equals_candle_composition_bitwise() {
        let n = CHUNK + 37;
        let t = |v: Vec<f32>| Tensor::from_vec(v, (n,), &Device::Cpu).unwrap();
        let mut th0 = test_values(n, 3);
        th0[0] = -0.0;
        th0[1] = 0.0;
        for (momentum, nesterov, weight_decay) in [
            (0.9, false, Some(1e-4)),
            (0.9, true, Some(5e-4)),
            (0.0, false, Some(1e-4)),
            (0.9, false, None),
        ] {
            let step = SgdStep {
                lr: 0.1,
                momentum,
                nesterov,
                weight_decay,
            };
            let (mut own_th, mut cand_th) = (t(th0.clone()), t(th0.clone()));
            let (mut own_buf, mut cand_buf): (Option<Tensor>, Option<Tensor>) = (None, None);
            for k in 0..3u64 {
                let mut gv = test_values(n, 10 + k);
                gv[2] = -0.0;
                let g = t(gv);
                let a = sgd_step_on(Backend::Own, &own_th, &g, own_buf.as_ref(), step).unwrap();
                let b =
                    sgd_step_on(Backend::Candle, &cand_th, &g, cand_buf.as_ref(), step).unwrap();
                let bits = |x: &Tensor| -> Vec<u32> {
                    x.to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect()
                };
                let what = format!("m {momentum} nesterov {nesterov} wd {weight_decay:?} step {k}");
                assert_eq!(bits(&a.theta), bits(&b.theta), "{what}: θ");
                assert_eq!(a.buffer.is_some(), b.buffer.is_some(), "{what}");
                if let (Some(x), Some(y)) = (&a.buffer, &b.buffer) {
                    assert_eq!(bits(x), bits(y), "{what}: buffer");
                }
                (own_th, cand_th, own_buf, cand_buf) = (a.theta, b.theta, a.buffer, b.buffer);
            }
        }
    }

    #[test]
    fn mismatched_gradient_is_an_error() {
        let th = Tensor::zeros((3, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let g = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let step = SgdStep {
            lr: 0.1,
            momentum: 0.9,
            nesterov: false,
            weight_decay: None,
        };
        let e = sgd_step(&th, &g, None, step).unwrap_err().to_string();
        assert!(e.contains("[2, 3]") && e.contains("[3, 2]"), "{e}");
    }
}
