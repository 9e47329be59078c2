//! `ConvGeom`: the geometry of the k×k convolution a slot or block stands in for
//! (docs/ARCHITECTURE.md "Core model"; docs/REFERENCE.md "Branch types" for what each branch
//! requires of it).

use serde::{Deserialize, Serialize};
use std::fmt;

/// What is wrong with a geometry, or with an input for it (`dyrep_api::Error::Geom` wraps it).
#[derive(Debug, thiserror::Error)]
pub enum GeomError {
    /// A conv geometry that no conv can have (zero channels, groups not dividing channels, ...).
    #[error("invalid conv geometry ({geom}): {rule}")]
    Invalid { geom: String, rule: String },
    /// An input whose spatial size cannot go through a conv of this geometry.
    #[error("input of {h}x{w} is too small for a conv with {geom}")]
    InputTooSmall { h: usize, w: usize, geom: ConvGeom },
}

type Result<T, E = GeomError> = std::result::Result<T, E>;

/// Geometry of a square, odd k×k convolution: `in_ch → out_ch`, stride, symmetric zero padding
/// and groups. Dilation is always 1 (the reference never grows dilated convs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvGeom {
    pub in_ch: usize,
    pub out_ch: usize,
    pub k: usize,
    pub stride: usize,
    pub padding: usize,
    pub groups: usize,
}

impl ConvGeom {
    /// Validated constructor: channels and groups positive, groups dividing both channel counts,
    /// k odd, stride positive, padding smaller than k.
    pub fn new(
        in_ch: usize,
        out_ch: usize,
        k: usize,
        stride: usize,
        padding: usize,
        groups: usize,
    ) -> Result<Self> {
        let g = Self {
            in_ch,
            out_ch,
            k,
            stride,
            padding,
            groups,
        };
        g.validate()?;
        Ok(g)
    }

    /// The usual "same" geometry: padding k/2.
    pub fn same(
        in_ch: usize,
        out_ch: usize,
        k: usize,
        stride: usize,
        groups: usize,
    ) -> Result<Self> {
        Self::new(in_ch, out_ch, k, stride, k / 2, groups)
    }

    /// Checks the invariants `new` enforces (useful after deserialisation).
    pub fn validate(&self) -> Result<()> {
        let bad = |rule: &str| {
            Err(GeomError::Invalid {
                geom: self.to_string(),
                rule: rule.to_string(),
            })
        };
        if self.in_ch == 0 || self.out_ch == 0 {
            return bad("channel counts must be positive");
        }
        if self.groups == 0 {
            return bad("groups must be positive");
        }
        if !self.in_ch.is_multiple_of(self.groups) || !self.out_ch.is_multiple_of(self.groups) {
            return bad("groups must divide both in_ch and out_ch");
        }
        if self.k == 0 || self.k.is_multiple_of(2) {
            return bad("kernels are square with an odd size k (1, 3, 5, ...)");
        }
        if self.stride == 0 {
            return bad("stride must be positive");
        }
        if self.padding >= self.k {
            return bad("padding must be smaller than k");
        }
        Ok(())
    }

    /// Input channels per group.
    pub fn in_per_group(&self) -> usize {
        self.in_ch / self.groups
    }

    /// Output channels per group.
    pub fn out_per_group(&self) -> usize {
        self.out_ch / self.groups
    }

    /// Whether the padding centres a 1×1 (and 1×k, k×1) kernel in the k×k window.
    pub fn is_same_padding(&self) -> bool {
        self.padding == self.k / 2
    }

    /// Whether this is a depthwise conv with channel multiplier 1 (groups == in == out).
    pub fn is_depthwise(&self) -> bool {
        self.groups == self.in_ch && self.groups == self.out_ch
    }

    /// Spatial output size for an input of `h × w`, or an error if the input is too small.
    pub fn output_hw(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        let span = |n: usize| -> Option<usize> {
            let padded = n + 2 * self.padding;
            (padded >= self.k).then(|| (padded - self.k) / self.stride + 1)
        };
        match (span(h), span(w)) {
            (Some(ho), Some(wo)) => Ok((ho, wo)),
            _ => Err(GeomError::InputTooSmall { h, w, geom: *self }),
        }
    }

    /// Weight shape `[out, in/groups, k, k]`.
    pub fn weight_shape(&self) -> [usize; 4] {
        [self.out_ch, self.in_per_group(), self.k, self.k]
    }

    /// The same geometry with other channel counts (groups kept).
    pub fn with_channels(&self, in_ch: usize, out_ch: usize) -> Result<Self> {
        Self::new(
            in_ch,
            out_ch,
            self.k,
            self.stride,
            self.padding,
            self.groups,
        )
    }

    /// Multiply-accumulates of this conv at batch 1 for an input of `h × w` (docs/REFERENCE.md
    /// "MACs and params").
    pub fn macs(&self, h: usize, w: usize) -> Result<u64> {
        let (ho, wo) = self.output_hw(h, w)?;
        Ok((self.k * self.k * self.in_per_group() * self.out_ch * ho * wo) as u64)
    }
}

impl fmt::Display for ConvGeom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "in={} out={} k={} stride={} padding={} groups={}",
            self.in_ch, self.out_ch, self.k, self.stride, self.padding, self.groups
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_even_kernel_and_bad_groups() {
        assert!(ConvGeom::new(4, 4, 2, 1, 1, 1).is_err());
        assert!(ConvGeom::new(4, 6, 3, 1, 1, 4).is_err());
        assert!(ConvGeom::new(0, 6, 3, 1, 1, 1).is_err());
        assert!(ConvGeom::new(4, 4, 3, 0, 1, 1).is_err());
        assert!(ConvGeom::new(4, 4, 3, 1, 3, 1).is_err());
        let e = ConvGeom::new(4, 6, 3, 1, 1, 4).unwrap_err().to_string();
        assert!(e.contains("groups must divide"), "{e}");
    }

    #[test]
    fn output_size_matches_conv_formula() {
        let g = ConvGeom::new(3, 8, 3, 2, 1, 1).unwrap();
        assert_eq!(g.output_hw(7, 8).unwrap(), (4, 4));
        let g = ConvGeom::new(3, 8, 5, 1, 0, 1).unwrap();
        assert_eq!(g.output_hw(5, 9).unwrap(), (1, 5));
        assert!(g.output_hw(4, 9).is_err());
    }

    #[test]
    fn macs_count_grouped_conv() {
        let g = ConvGeom::new(8, 8, 3, 1, 1, 8).unwrap();
        assert_eq!(g.macs(4, 4).unwrap(), 9 * 8 * 16);
    }
}
