//! What DyRep needs of a network (docs/LIBRARY.md): its convs as [`Slot`]s under the paths their
//! tensors are named by, a forward pass, its parameters and its cost. dyrep's own [`Model`]
//! is one; a network of anyone's, built from `Slot`s, is another (`examples/own-loop`).

use std::collections::BTreeMap;

use candle_core::{Tensor, Var};
use dyrep_api::{join_path, BlockForm, Slot, TensorRole};

use crate::error::{Result, RuntimeError};
use crate::model::Model;

/// A CNN whose growable convs are [`Slot`]s.
pub trait RepNet {
    /// Every top-level conv slot in forward order, with the path its tensors are named under
    /// (`features.1.conv`: the weight is `features.1.conv.weight` until it grows).
    fn conv_slots(&self) -> Vec<(&str, &Slot)>;

    /// The same slots, mutably, in the same order.
    fn conv_slots_mut(&mut self) -> Vec<(&str, &mut Slot)>;

    /// Logits; `train`: batch statistics in every BN (and a graph for the backward).
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor>;

    /// `(path, variable, role)` of every tensor of the network, slots' and others', sorted by
    /// path: what an optimizer updates.
    fn tensors(&self) -> Vec<(String, Var, TensorRole)>;

    /// Multiply-accumulates of one image (recorded with every grow and cut).
    fn macs(&self) -> Result<u64>;

    /// How errors name the network.
    fn label(&self) -> String {
        "the network".into()
    }

    /// The form blocks grown in this network train in (docs/REFERENCE.md "The online form").
    fn block_form(&self) -> BlockForm {
        BlockForm::Bn
    }

    /// Trainable parameters (running statistics excluded).
    fn param_count(&self) -> usize {
        self.tensors()
            .iter()
            .filter(|(_, _, r)| r.is_trainable())
            .map(|(_, v, _)| v.elem_count())
            .sum()
    }

    /// Eval-mode logits without a graph (BN calibration, the preservation measurement).
    fn infer(&self, x: &Tensor) -> Result<Tensor> {
        Ok(dyrep_api::kernels::no_grad(|| self.forward_t(x, false))?.detach())
    }

    /// The slot at a full dotted path: a top-level conv's path or a slot nested in its block.
    fn slot_at(&mut self, path: &str) -> Result<&mut Slot> {
        let (top, slot) = self
            .conv_slots_mut()
            .into_iter()
            .find(|(p, _)| path == *p || path.starts_with(&format!("{p}.")))
            .ok_or_else(|| RuntimeError::Model(format!("no conv slot at `{path}`")))?;
        let rest = path[top.len()..].trim_start_matches('.').to_string();
        Ok(slot.slot_mut(&rest)?.0)
    }
}

impl RepNet for Model {
    fn label(&self) -> String {
        format!("model `{}`", self.name())
    }

    fn block_form(&self) -> BlockForm {
        self.block_form
    }

    fn conv_slots(&self) -> Vec<(&str, &Slot)> {
        self.units()
            .into_iter()
            .map(|u| (u.conv_path.as_str(), &u.slot))
            .collect()
    }

    fn conv_slots_mut(&mut self) -> Vec<(&str, &mut Slot)> {
        self.units_mut()
            .into_iter()
            .map(|u| (u.conv_path.as_str(), &mut u.slot))
            .collect()
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Model::forward_t(self, x, train)
    }

    fn tensors(&self) -> Vec<(String, Var, TensorRole)> {
        Model::tensors(self)
    }

    fn macs(&self) -> Result<u64> {
        Model::macs(self)
    }

    fn param_count(&self) -> usize {
        Model::param_count(self)
    }

    fn infer(&self, x: &Tensor) -> Result<Tensor> {
        Model::infer(self, x)
    }
}

/// The growable convs of a network: (slot path, weight variable), in forward order.
pub fn growable_weights(net: &dyn RepNet, max_depth: usize) -> Vec<(String, Var)> {
    let mut out = Vec::new();
    for (top, slot) in net.conv_slots() {
        let mut weights = BTreeMap::new();
        slot.visit_tensors(top, &mut |p, v, _| {
            weights.insert(p.to_string(), v.clone());
        });
        for info in slot.growable(max_depth) {
            let path = join_path(top, &info.path);
            if let Some(v) = weights.get(&format!("{path}.weight")) {
                out.push((path, v.clone()));
            }
        }
    }
    out
}

/// The paths of every grown block (nested ones included), in forward order.
pub fn block_paths(net: &dyn RepNet) -> Vec<String> {
    let mut out = Vec::new();
    for (top, slot) in net.conv_slots() {
        for info in slot.slots() {
            if info.grown {
                out.push(join_path(top, &info.path));
            }
        }
    }
    out
}

/// Eval logits on the fixed held-out batch, every block branch by branch (the blocks' fused
/// inference path would measure the fusion, not the grown network).
pub(crate) fn probe_logits(net: &dyn RepNet, fixed: &Tensor) -> Result<Tensor> {
    dyrep_api::branchwise(|| net.infer(fixed))
}
