//! candle's composition of a grown block's training forward: each branch through the
//! separately tested ops (conv, batch norm, pad, pool), summed — the path on CUDA and for dtypes
//! other than f32, and the reference the own op is checked against (`dyrep verify --kernels`).

use candle_core::{DType, Tensor};

use super::{
    n_out_channels, pad_constants, BlockBnStats, BlockBranch, BlockTail, BlockTrain, StageOp,
};
use crate::{
    batch_norm_train_on, conv_bn_train_on, pad_const_on, pool2d_on, relu_on, Backend,
    BatchNormTrain, PoolKind, Result,
};

/// [`super::block_train_on`] with candle's ops.
pub(super) fn block_train_candle(
    x: &Tensor,
    branches: &[BlockBranch<'_>],
    post: Option<BlockTail<'_>>,
    eps: f64,
) -> Result<BlockTrain> {
    let mut y: Option<Tensor> = None;
    let mut stats = Vec::with_capacity(branches.len());
    let count = |t: &Tensor| -> Result<usize> {
        let (n, _, h, w) = t.dims4()?;
        Ok(n * h * w)
    };
    for b in branches {
        let (o, n1) = match b.conv {
            Some((w, p)) => {
                let o = conv_bn_train_on(Backend::Candle, x, w, p, b.gamma, b.beta, eps, false)?;
                // The BN saw the conv output with its bias (which it subtracts again).
                let o = match b.bias {
                    Some(bias) => BatchNormTrain {
                        mean: (&o.mean + bias)?,
                        ..o
                    },
                    None => o,
                };
                let (n, _, h, w2) = o.y.dims4()?;
                (o, n * h * w2)
            }
            None => (
                batch_norm_train_on(Backend::Candle, x, b.gamma, b.beta, eps)?,
                count(x)?,
            ),
        };
        stats.push(BlockBnStats {
            mean: o.mean.clone(),
            var: o.var.clone(),
            count: n1,
        });
        let out = match b.then {
            None => o.y,
            Some(st) => {
                let host = |t: &Tensor| -> Result<Vec<f32>> {
                    Ok(t.detach().to_dtype(DType::F32)?.to_vec1()?)
                };
                let values = pad_constants(
                    &host(b.gamma)?,
                    &host(b.beta)?,
                    (&host(&o.mean)?, &host(&o.var)?, n1),
                    (
                        &host(st.pad_from.running_mean)?,
                        &host(st.pad_from.running_var)?,
                    ),
                    st.pad_from.factor,
                    eps,
                );
                let values = Tensor::from_vec(values, n_out_channels(b.gamma)?, o.y.device())?;
                let padded = pad_const_on(Backend::Candle, &o.y, st.pad, &values)?;
                let o2 = match st.op {
                    StageOp::Conv(w, p) => conv_bn_train_on(
                        Backend::Candle,
                        &padded,
                        w,
                        p,
                        st.gamma,
                        st.beta,
                        eps,
                        false,
                    )?,
                    StageOp::AvgPool { k, stride } => {
                        let pooled =
                            pool2d_on(Backend::Candle, PoolKind::Avg, &padded, k, stride, 0)?;
                        batch_norm_train_on(Backend::Candle, &pooled, st.gamma, st.beta, eps)?
                    }
                };
                stats.push(BlockBnStats {
                    mean: o2.mean,
                    var: o2.var,
                    count: count(&o2.y)?,
                });
                o2.y
            }
        };
        y = Some(match y {
            None => out,
            Some(acc) => (acc + out)?,
        });
    }
    let mut y = y.unwrap_or_else(|| x.clone());
    if let Some(pb) = post {
        if let Some((gamma, beta)) = pb.bn {
            let o = batch_norm_train_on(Backend::Candle, &y, gamma, beta, eps)?;
            stats.push(BlockBnStats {
                mean: o.mean,
                var: o.var,
                count: count(&o.y)?,
            });
            y = o.y;
        }
        if pb.relu {
            y = relu_on(Backend::Candle, &y)?;
        }
        if let Some(p) = pb.pool {
            y = pool2d_on(Backend::Candle, PoolKind::Max, &y, p.k, p.stride, p.padding)?;
        }
    }
    Ok(BlockTrain { y, stats })
}
