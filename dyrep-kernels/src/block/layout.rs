//! The layout of the block op's flat arguments, computed once and read by the op: per branch,
//! its conv geometry, where its weight (and bias) start in the flat weights, where its BN's
//! `[γ; β]` start in the flat γβ, and its second stage (two-stage branches). The wrapper
//! (`mod.rs`) builds the layout from the branches it is given and concatenates the tensors in
//! the same order; the op (`op.rs`) only reads it.

use candle_core::{DType, Tensor};

use super::{block_shape_error, BlockBranch, BlockStage, StageOp};
use crate::conv::ConvShape;
use crate::pool::{self, PoolKind, PoolShape};
use crate::{check_per_channel, Result};

/// The second stage of a two-stage branch, after its first BN and the constant padding.
#[derive(Clone, Debug)]
pub(crate) enum StageGeom {
    /// A conv (no padding of its own; no bias) whose weight starts at `weight_offset`.
    Conv {
        shape: ConvShape,
        weight_offset: usize,
    },
    /// A k×k average pool (no padding of its own).
    AvgPool(PoolShape),
}

/// Pad-then-second-stage of a two-stage branch.
#[derive(Clone, Debug)]
pub(crate) struct SecondGeom {
    /// Padding on every side, filled per channel with the first BN's constants
    /// (`super::pad_constants` from these running statistics and update factor).
    pub pad: usize,
    pub running_mean: Vec<f32>,
    pub running_var: Vec<f32>,
    pub factor: f64,
    pub stage: StageGeom,
    /// Offset of the second BN's `[γ; β]` in the flat γβ.
    pub gb_offset: usize,
}

/// One branch of the block: a conv (its geometry) or the identity, a BN, and optionally a
/// second stage with its own BN.
#[derive(Clone, Debug)]
pub(crate) struct BranchGeom {
    /// `None` for the identity branch.
    pub conv: Option<ConvShape>,
    /// Offset of this branch's (first) conv weight in the flat weights.
    pub weight_offset: usize,
    /// Offset of the conv's bias (its `out` values) in the flat weights, if it has one.
    pub bias_offset: Option<usize>,
    /// Offset of the (first) BN's `[γ; β]` in the flat γβ.
    pub gb_offset: usize,
    pub second: Option<SecondGeom>,
}

impl BranchGeom {
    /// Dims of the first stage's output (the first BN's input).
    pub(crate) fn first_dims(&self, x: &[usize]) -> Vec<usize> {
        match &self.conv {
            Some(s) => s.output_dims().to_vec(),
            None => x.to_vec(),
        }
    }

    /// Dims of the branch's output.
    pub(crate) fn output_dims(&self, x: &[usize]) -> Vec<usize> {
        match &self.second {
            None => self.first_dims(x),
            Some(sg) => match &sg.stage {
                StageGeom::Conv { shape, .. } => shape.output_dims().to_vec(),
                StageGeom::AvgPool(p) => {
                    let d = self.first_dims(x);
                    vec![d[0], d[1], p.ho, p.wo]
                }
            },
        }
    }
}

/// The block's output dims: every branch's, which must agree (and equal the input's when there
/// is an identity branch).
pub(crate) fn output_dims(branches: &[BranchGeom], x: &[usize]) -> candle_core::Result<Vec<usize>> {
    let mut dims: Option<Vec<usize>> = None;
    for b in branches {
        let d = b.output_dims(x);
        match &dims {
            None => dims = Some(d),
            Some(prev) if *prev != d => {
                return Err(candle_core::Error::Msg(format!(
                    "block branches disagree on the output shape: {prev:?} vs {d:?}"
                )))
            }
            Some(_) => {}
        }
    }
    dims.ok_or_else(|| candle_core::Error::Msg("a block op needs at least one branch".into()))
}

fn check_bn(o: usize, gamma: &Tensor, beta: &Tensor) -> Result<()> {
    if gamma.dims() != [o] || beta.dims() != [o] {
        return Err(block_shape_error(format!(
            "a BN after {o} channels needs gamma and beta of that size; got {:?}, {:?}",
            gamma.dims(),
            beta.dims()
        )));
    }
    Ok(())
}

/// Running offsets into the flat weights and the flat γβ while the layout is built.
struct Offsets {
    weights: usize,
    gb: usize,
}

/// The second stage of a two-stage branch whose first stage outputs `first_dims` with `o`
/// channels.
fn second_geom(
    st: &BlockStage<'_>,
    first_dims: &[usize],
    o: usize,
    at: &mut Offsets,
) -> Result<SecondGeom> {
    check_per_channel(
        "block stage",
        &[0, o],
        o,
        &[
            ("running_mean", st.pad_from.running_mean),
            ("running_var", st.pad_from.running_var),
        ],
    )?;
    let padded = [
        first_dims[0],
        o,
        first_dims[2] + 2 * st.pad,
        first_dims[3] + 2 * st.pad,
    ];
    let (stage, o2) = match st.op {
        StageOp::Conv(w, p) => {
            if p.padding != (0, 0) {
                return Err(block_shape_error(
                    "a second-stage conv must not pad (the stage pads)".into(),
                ));
            }
            let s = ConvShape::new(&padded, w.dims(), p.stride, (0, 0), p.groups)?;
            let weight_offset = at.weights;
            at.weights += w.elem_count();
            (
                StageGeom::Conv {
                    shape: s,
                    weight_offset,
                },
                s.out,
            )
        }
        StageOp::AvgPool { k, stride } => (
            StageGeom::AvgPool(pool::PoolShape::new(PoolKind::Avg, &padded, k, stride, 0)?),
            o,
        ),
    };
    check_bn(o2, st.gamma, st.beta)?;
    let gb_offset = at.gb;
    at.gb += 2 * o2;
    let host = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.detach().to_dtype(DType::F32)?.to_vec1()?) };
    Ok(SecondGeom {
        pad: st.pad,
        running_mean: host(st.pad_from.running_mean)?,
        running_var: host(st.pad_from.running_var)?,
        factor: st.pad_from.factor,
        stage,
        gb_offset,
    })
}

/// One branch's layout on input `x`.
fn branch_geom(x: &Tensor, b: &BlockBranch<'_>, at: &mut Offsets) -> Result<BranchGeom> {
    let (conv, o) = match b.conv {
        Some((w, p)) => {
            let s = ConvShape::new(x.dims(), w.dims(), p.stride, p.padding, p.groups)?;
            (Some(s), s.out)
        }
        None => (None, x.dims4()?.1),
    };
    check_bn(o, b.gamma, b.beta)?;
    let weight_offset = at.weights;
    if let Some((w, _)) = b.conv {
        at.weights += w.elem_count();
    }
    let bias_offset = match (b.conv, b.bias) {
        (Some(_), Some(bias)) if bias.dims() == [o] => {
            at.weights += o;
            Some(at.weights - o)
        }
        (_, None) => None,
        _ => {
            return Err(block_shape_error(format!(
                "a bias needs a conv with {o} outputs; got {:?}",
                b.bias.map(|t| t.dims().to_vec())
            )))
        }
    };
    let gb_offset = at.gb;
    at.gb += 2 * o;
    let second = match b.then {
        None => None,
        Some(st) => {
            let first_dims = match &conv {
                Some(s) => s.output_dims().to_vec(),
                None => x.dims().to_vec(),
            };
            Some(second_geom(&st, &first_dims, o, at)?)
        }
    };
    Ok(BranchGeom {
        conv,
        weight_offset,
        bias_offset,
        gb_offset,
        second,
    })
}

/// Validates the branches and lays out their flat weights and γβ.
pub(crate) fn block_geoms(x: &Tensor, branches: &[BlockBranch<'_>]) -> Result<Vec<BranchGeom>> {
    if branches.is_empty() {
        return Err(block_shape_error(
            "a block needs at least one branch".into(),
        ));
    }
    let mut at = Offsets { weights: 0, gb: 0 };
    let geoms = branches
        .iter()
        .map(|b| branch_geom(x, b, &mut at))
        .collect::<Result<Vec<_>>>()?;
    output_dims(&geoms, x.dims())?;
    Ok(geoms)
}
