//! A slot's plain k×k conv, with an optional bias: what every slot is before it grows and after
//! it fuses.

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::geom::ConvGeom;
use crate::init::InitCtx;
use crate::layers::Conv2dLayer;

/// A plain k×k conv in a slot, with an optional bias.
#[derive(Debug)]
pub struct PlainConv {
    pub(super) geom: ConvGeom,
    pub(super) conv: Conv2dLayer,
}

impl PlainConv {
    /// A freshly initialised conv (reference init, zero bias if any).
    pub fn new(geom: ConvGeom, bias: bool, ctx: &mut InitCtx<'_>) -> Result<Self> {
        geom.validate()?;
        let conv = Conv2dLayer::new(
            ctx,
            geom.weight_shape(),
            geom.stride,
            (geom.padding, geom.padding),
            geom.groups,
            bias,
        )?;
        Ok(Self { geom, conv })
    }

    /// A conv holding copies of `weight` (`[out, in/g, k, k]`) and `bias`.
    pub fn from_tensors(geom: ConvGeom, weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        geom.validate()?;
        let want = geom.weight_shape().to_vec();
        if weight.dims() != want.as_slice() {
            return Err(Error::ShapeMismatch {
                context: format!("conv weight for {geom}"),
                expected: want,
                got: weight.dims().to_vec(),
            });
        }
        if let Some(b) = bias {
            if b.dims() != [geom.out_ch] {
                return Err(Error::ShapeMismatch {
                    context: format!("conv bias for {geom}"),
                    expected: vec![geom.out_ch],
                    got: b.dims().to_vec(),
                });
            }
        }
        let conv = Conv2dLayer::from_tensors(
            weight,
            bias,
            geom.stride,
            (geom.padding, geom.padding),
            geom.groups,
        )?;
        Ok(Self { geom, conv })
    }

    pub fn geom(&self) -> &ConvGeom {
        &self.geom
    }

    /// The underlying conv layer (weight and bias variables).
    pub fn layer(&self) -> &Conv2dLayer {
        &self.conv
    }
}
