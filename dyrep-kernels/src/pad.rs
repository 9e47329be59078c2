//! Constant padding with one value per channel (DBB's `BNAndPad`: a two-stage branch pads its
//! first BN's output with that BN's value for a zero input), forward and backward.

use candle_core::{DType, Tensor};

use crate::error::Result;
use crate::{arg, check_own, check_per_channel, Backend};

/// Pads each `[H, W]` plane of `x` (`[N, C, H, W]`) by `pad` on every side with the
/// per-channel constant `values` (`[C]`, no gradient); the input gets the interior gradient.
pub fn pad_const(x: &Tensor, pad: usize, values: &Tensor) -> Result<Tensor> {
    pad_const_on(Backend::for_tensor(x), x, pad, values)
}

/// [`pad_const`] on a chosen backend.
pub fn pad_const_on(backend: Backend, x: &Tensor, pad: usize, values: &Tensor) -> Result<Tensor> {
    let x = &arg(x);
    let (_, c, h, w) = x.dims4()?;
    check_per_channel("pad_const", x.dims(), c, &[("values", values)])?;
    if pad == 0 {
        return Ok(x.clone());
    }
    match backend {
        Backend::Own => {
            check_own(x, "pad_const")?;
            let values = values.detach().to_dtype(DType::F32)?.to_vec1::<f32>()?;
            Ok(x.contiguous()?
                .apply_op1(crate::pool::PadConstOp { pad, values })?)
        }
        Backend::Candle => {
            let p = pad;
            let interior = Tensor::ones((1, 1, h, w), x.dtype(), x.device())?
                .pad_with_zeros(2, p, p)?
                .pad_with_zeros(3, p, p)?;
            let border = interior.affine(-1.0, 1.0)?;
            let fill = border
                .broadcast_mul(&values.detach().to_dtype(x.dtype())?.reshape((1, c, 1, 1))?)?;
            let padded = x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
            Ok(padded.broadcast_add(&fill)?)
        }
    }
}
