//! ReLU on the CPU with a one-pass backward (candle's ReLU backward is six full-tensor
//! passes). The backward reads the op's own output: the
//! gradient passes where `y > 0`.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::{slice_f32, tensor_like, with_f32};
use crate::error::Result;
use crate::profile::{Phase, Timer};
use crate::{arg, check_own, Backend};

/// Elements per parallel task: large enough that scheduling costs nothing next to the work.
const CHUNK: usize = 1 << 14;

#[derive(Clone, Copy, Debug)]
pub(crate) struct ReluOp;

impl CustomOp1 for ReluOp {
    fn name(&self) -> &'static str {
        "dyrep-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let _t = Timer::start(Phase::Relu);
        let x = slice_f32(s, l, self.name())?;
        let mut y = vec![0.0f32; x.len()];
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(o, i)| {
                for (o, &v) in o.iter_mut().zip(i) {
                    *o = v.max(0.0);
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let _t = Timer::start(Phase::Relu);
        let dx = with_f32(y, self.name(), |ys| {
            with_f32(dy, self.name(), |g| relu_grad(ys, g))
        })??;
        Ok(Some(tensor_like(dx, x.dims(), x)?))
    }
}

/// The ReLU's input gradient from its output `y`: `dy` where `y > 0`, else 0.
pub(crate) fn relu_grad(y: &[f32], dy: &[f32]) -> Vec<f32> {
    let mut dx = vec![0.0f32; y.len()];
    dx.par_chunks_mut(CHUNK)
        .zip(y.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
        .for_each(|(o, (ys, g))| {
            for ((o, &v), &d) in o.iter_mut().zip(ys).zip(g) {
                *o = if v > 0.0 { d } else { 0.0 };
            }
        });
    dx
}

/// `max(x, 0)`.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    relu_on(Backend::for_tensor(x), x)
}

/// [`relu`] on a chosen backend.
pub fn relu_on(backend: Backend, x: &Tensor) -> Result<Tensor> {
    let x = &arg(x);
    match backend {
        Backend::Own => {
            check_own(x, "relu")?;
            Ok(x.contiguous()?.apply_op1(ReluOp)?)
        }
        Backend::Candle => Ok(x.relu()?),
    }
}
