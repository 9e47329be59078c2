//! The architecture of a slot tree without its tensors (`arch.json`): each slot a plain conv or a
//! block of branch specs (`typetag`) with their child slots, and the rebuild of a tree of that
//! structure with fresh parameters (tensors are loaded afterwards).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{join_path, RepBlock, Slot};
use crate::error::{Error, Result};
use crate::geom::ConvGeom;
use crate::init::InitCtx;
use crate::op::{OpSpec, RepOp};

/// Serialisable structure of a slot tree (no tensors): the architecture JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SlotArch {
    Conv {
        bias: bool,
    },
    Block {
        main: BranchArch,
        branches: Vec<BranchArch>,
    },
}

/// One branch of a block in the architecture JSON: its spec and its child slots.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchArch {
    pub spec: Box<dyn OpSpec>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub children: BTreeMap<String, SlotArch>,
}

impl Slot {
    /// The tree's structure, without tensors.
    pub fn arch(&self) -> SlotArch {
        match self {
            Slot::Conv(c) => SlotArch::Conv {
                bias: c.conv.bias().is_some(),
            },
            Slot::Block(b) => b.arch(),
        }
    }

    /// Rebuilds a tree of this structure with fresh parameters (load tensors afterwards); its
    /// blocks are in `ctx.block_form`.
    pub fn from_arch(geom: ConvGeom, arch: &SlotArch, ctx: &mut InitCtx<'_>) -> Result<Slot> {
        Self::from_arch_at("", geom, arch, ctx)
    }

    fn from_arch_at(
        path: &str,
        geom: ConvGeom,
        arch: &SlotArch,
        ctx: &mut InitCtx<'_>,
    ) -> Result<Slot> {
        match arch {
            SlotArch::Conv { bias } => Slot::conv(geom, *bias, ctx),
            SlotArch::Block { main, branches } => {
                let main_op = build_branch(path, &geom, main, ctx)?;
                let ops = branches
                    .iter()
                    .map(|b| build_branch(path, &geom, b, ctx))
                    .collect::<Result<Vec<_>>>()?;
                for op in std::iter::once(&main_op).chain(&ops) {
                    ctx.block_form.apply_to_op(&**op);
                }
                Ok(Slot::Block(RepBlock::new(geom, main_op, ops)?))
            }
        }
    }
}

impl RepBlock {
    pub(super) fn arch(&self) -> SlotArch {
        SlotArch::Block {
            main: branch_arch(&*self.main),
            branches: self.branches.iter().map(|b| branch_arch(&**b)).collect(),
        }
    }
}

fn branch_arch(op: &dyn RepOp) -> BranchArch {
    BranchArch {
        spec: op.spec(),
        children: op
            .child_slots()
            .into_iter()
            .map(|(name, s)| (name.to_string(), s.arch()))
            .collect(),
    }
}

fn build_branch(
    path: &str,
    geom: &ConvGeom,
    arch: &BranchArch,
    ctx: &mut InitCtx<'_>,
) -> Result<Box<dyn RepOp>> {
    let bpath = join_path(path, arch.spec.name());
    arch.spec.check(geom).map_err(|e| Error::InvalidArch {
        path: bpath.clone(),
        reason: e.to_string(),
    })?;
    let mut op = arch.spec.build(geom, ctx)?;
    let mut seen = 0;
    for (name, slot) in op.child_slots_mut() {
        if let Some(child) = arch.children.get(name) {
            let cpath = join_path(&bpath, name);
            *slot = Slot::from_arch_at(&cpath, *slot.geom(), child, ctx)?;
            seen += 1;
        }
    }
    if seen != arch.children.len() {
        let known: Vec<&str> = op.child_slots().into_iter().map(|(n, _)| n).collect();
        let unknown: Vec<&String> = arch
            .children
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .collect();
        return Err(Error::InvalidArch {
            path: bpath,
            reason: format!("unknown child slots {unknown:?}; this op has {known:?}"),
        });
    }
    Ok(op)
}
