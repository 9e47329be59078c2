//! The loss and the accuracy count every training and evaluation loop uses.

use candle_core::{DType, Tensor};

use crate::error::Result;

/// Cross-entropy with label smoothing ε (mean over the batch): `−Σ_k q_k log p_k` with
/// `q = (1−ε)·onehot + ε/K`.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, smoothing: f64) -> Result<Tensor> {
    let (_, k) = logits.dims2()?;
    let max = logits.max_keepdim(1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(1)?.log()?;
    let logp = shifted.broadcast_sub(&lse)?;
    let picked = logp.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?;
    let nll = picked.neg()?.mean_all()?;
    if smoothing == 0.0 {
        return Ok(nll);
    }
    let uniform = logp.mean(1)?.neg()?.mean_all()?;
    let _ = k;
    Ok(((nll * (1.0 - smoothing))? + (uniform * smoothing)?)?)
}

/// Number of rows whose argmax equals the label.
pub fn correct(logits: &Tensor, y: &Tensor) -> Result<usize> {
    let pred = logits.argmax(1)?;
    Ok(pred
        .eq(y)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()? as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cross_entropy_with_and_without_smoothing() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[2.0f32, 0.0, 0.0], [0.0, 0.0, 0.0]], &dev).unwrap();
        let labels = Tensor::new(&[0u32, 2], &dev).unwrap();
        let l = cross_entropy(&logits, &labels, 0.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let p0 = (2f32.exp() / (2f32.exp() + 2.0)).ln();
        let want = (-p0 + 3f32.ln()) / 2.0;
        assert!((l - want).abs() < 1e-5, "{l} {want}");
        let ls = cross_entropy(&logits, &labels, 0.1)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let lp1 = (1.0 / (2f32.exp() + 2.0)).ln();
        let u = (-(p0 + 2.0 * lp1) / 3.0 + 3f32.ln()) / 2.0;
        assert!((ls - (0.9 * want + 0.1 * u)).abs() < 1e-5);
        let _ = DType::F32;
    }
}
