//! A run of conv → BN → ReLU (→ max pool) units as one candle op in training (the
//! plain VGG-style stacks of `bench-small`, `bench-cifar`, `vgg-tiny` and every origin-mode
//! network between its grown blocks). Each unit runs exactly as [`crate::unit`] runs it alone;
//! what goes is candle's bookkeeping between them: candle adds every op's input gradient into a
//! fresh zero tensor (`GradStore::or_insert` + `add`, three passes over each activation, ~5-7 %
//! of a bench-small / bench-cifar step), and here the units hand their gradients to each other
//! directly. The activations between units are kept by the op for the backward, as candle kept
//! them before. Arguments `(x, weights, γβ)`: every unit's conv weight flattened and
//! concatenated in order, and every unit's `[γ; β]` concatenated in order.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use crate::conv::ConvShape;
use crate::cpu::{slice_f32, tensor_like, with_f32};
use crate::error::{KernelError, Result};
use crate::pool::{PoolKind, PoolShape};
use crate::side::SideChannel;
use crate::unit::{conv_bn_train_with, unit_bn_backward, unit_forward, Saved, UnitTail};
use crate::ConvParams;
use crate::{arg, check_own, check_per_channel, Backend, MaxPoolParams};

/// One unit of the stack: its conv, the weight's dims and where the weight and `[γ; β]` sit
/// in the flat arguments.
#[derive(Clone, Debug)]
pub(crate) struct StackUnit {
    pub conv: ConvParams,
    pub weight_dims: [usize; 4],
    pub weight_offset: usize,
    pub gb_offset: usize,
    pub tail: UnitTail,
}

impl StackUnit {
    fn weight_len(&self) -> usize {
        self.weight_dims.iter().product()
    }

    /// The unit's output channels (its BN's).
    fn channels(&self) -> usize {
        self.weight_dims[0]
    }
}

/// What the forward keeps: per unit its statistics (and conv output, for a backward), and the
/// input of every unit after the first (the output of the one before).
#[derive(Debug, Default)]
pub(crate) struct StackSaved {
    pub units: Vec<Saved>,
    pub inputs: Vec<Vec<f32>>,
}

#[derive(Clone, Debug)]
pub(crate) struct StackOp {
    pub units: Vec<StackUnit>,
    pub keep_for_backward: bool,
    pub saved: SideChannel<StackSaved>,
}

impl StackOp {
    /// Every unit's input dims, from the stack's input dims (validating the chain).
    fn input_dims(&self, x: &[usize]) -> candle_core::Result<Vec<Vec<usize>>> {
        let mut dims = Vec::with_capacity(self.units.len());
        let mut d = x.to_vec();
        for u in &self.units {
            let (_, next) = crate::conv_unit_dims(&d, &u.weight_dims, u.conv, u.tail.pool)
                .map_err(candle_core::Error::wrap)?;
            dims.push(std::mem::replace(&mut d, next));
        }
        Ok(dims)
    }
}

impl CustomOp3 for StackOp {
    fn name(&self) -> &'static str {
        "dyrep-conv-bn-relu-stack"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice_f32(s1, l1, self.name())?;
        let w = slice_f32(s2, l2, self.name())?;
        let gb = slice_f32(s3, l3, self.name())?;
        let in_dims = self.input_dims(l1.dims())?;
        let mut saved = StackSaved::default();
        let mut h: Option<Vec<f32>> = None;
        let mut dims = l1.dims().to_vec();
        for (u, d) in self.units.iter().zip(&in_dims) {
            let shape = u.conv.shape(d, &u.weight_dims)?;
            let wu = &w[u.weight_offset..u.weight_offset + u.weight_len()];
            let gbu = &gb[u.gb_offset..u.gb_offset + 2 * u.channels()];
            let input: &[f32] = h.as_deref().unwrap_or(x);
            let (y, y_dims, unit_saved) =
                unit_forward(&shape, u.tail, self.keep_for_backward, input, wu, gbu)?;
            saved.units.push(unit_saved);
            if let Some(prev) = h.replace(y) {
                if self.keep_for_backward {
                    saved.inputs.push(prev);
                }
            }
            dims = y_dims;
        }
        *self.saved.lock() = saved;
        let y = h.ok_or_else(|| candle_core::Error::Msg(format!("{}: no units", self.name())))?;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weights: &Tensor,
        gb: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let in_dims = self.input_dims(x.dims())?;
        let gb_v = gb.flatten_all()?.to_vec1::<f32>()?;
        let saved = self.saved.lock();
        let last = self.units.len().saturating_sub(1);
        if saved.units.len() != self.units.len() || saved.inputs.len() != last {
            return Err(candle_core::Error::Msg(format!(
                "{}: backward without a kept forward (the op was built for inference)",
                self.name()
            )));
        }
        let mut dw = vec![0.0f32; weights.elem_count()];
        let mut dgb = vec![0.0f32; gb_v.len()];
        let dx = with_f32(x, self.name(), |xs| {
            with_f32(weights, self.name(), |ws| {
                with_f32(y, self.name(), |out| {
                    with_f32(dy, self.name(), |g_out| {
                        // The gradient of the current unit's output, from the last unit down.
                        let mut g: Option<Vec<f32>> = None;
                        for (i, (u, d)) in self.units.iter().zip(&in_dims).enumerate().rev() {
                            let shape = u.conv.shape(d, &u.weight_dims)?;
                            let unit_out: &[f32] = if i == last { out } else { &saved.inputs[i] };
                            let unit_in: &[f32] = if i == 0 { xs } else { &saved.inputs[i - 1] };
                            let (wo, go, c) = (u.weight_offset, u.gb_offset, u.channels());
                            let (dz, dgbu) = unit_bn_backward(
                                &shape,
                                u.tail,
                                &saved.units[i],
                                &gb_v[go..go + 2 * c],
                                unit_out,
                                g.as_deref().unwrap_or(g_out),
                                self.name(),
                            )?;
                            dgb[go..go + 2 * c].copy_from_slice(&dgbu);
                            if weights.track_op() {
                                let gw = shape.weight_grad(unit_in, &dz);
                                dw[wo..wo + u.weight_len()].copy_from_slice(&gw);
                            }
                            g = (i > 0 || x.track_op())
                                .then(|| shape.input_grad(&ws[wo..wo + u.weight_len()], &dz));
                        }
                        Ok::<_, candle_core::Error>(g)
                    })
                })
            })
        })?????;
        drop(saved);
        let dx = match (x.track_op(), dx) {
            (true, Some(d)) => Some(tensor_like(d, x.dims(), x)?),
            _ => None,
        };
        let dw = weights
            .track_op()
            .then(|| tensor_like(dw, weights.dims(), weights))
            .transpose()?;
        let dgb = gb
            .track_op()
            .then(|| tensor_like(dgb, gb.dims(), gb))
            .transpose()?;
        Ok((dx, dw, dgb))
    }
}

/// A conv unit's geometry on input dims `x` with weight dims `w`, and its output dims after
/// the max pool that follows it, if any (validating both).
pub fn conv_unit_dims(
    x: &[usize],
    w: &[usize],
    conv: ConvParams,
    pool: Option<MaxPoolParams>,
) -> Result<(ConvShape, Vec<usize>)> {
    let shape = ConvShape::new(x, w, conv.stride, conv.padding, conv.groups)?;
    let out = shape.output_dims();
    let dims = match pool {
        None => out.to_vec(),
        Some(p) => {
            let ps = PoolShape::new(PoolKind::Max, &out, p.k, p.stride, p.padding)?;
            vec![out[0], out[1], ps.ho, ps.wo]
        }
    };
    Ok((shape, dims))
}

/// One unit of [`conv_bn_stack_train`]: a conv without bias, its train-mode BN (affine `gamma`,
/// `beta`, `eps`), an optional ReLU and an optional max pool.
#[derive(Clone, Copy, Debug)]
pub struct StackUnitArgs<'a> {
    pub weight: &'a Tensor,
    pub conv: ConvParams,
    pub gamma: &'a Tensor,
    pub beta: &'a Tensor,
    pub eps: f64,
    pub relu: bool,
    pub pool: Option<MaxPoolParams>,
}

/// The output of [`conv_bn_stack_train`] and every unit's batch statistics `(mean, var)`.
#[derive(Clone, Debug)]
pub struct StackTrain {
    pub y: Tensor,
    pub stats: Vec<(Tensor, Tensor)>,
}

/// A run of conv → BN (batch statistics) → ReLU (→ max pool) units, each as
/// [`conv_bn_train`] / [`conv_bn_max_pool_train`] computes it, as one op on the CPU: the
/// activations between the units never become graph nodes, so candle does not add their
/// gradients into fresh zero tensors (`stack.rs`).
pub fn conv_bn_stack_train(x: &Tensor, units: &[StackUnitArgs<'_>]) -> Result<StackTrain> {
    conv_bn_stack_train_on(Backend::for_tensor(x), x, units)
}

/// [`conv_bn_stack_train`] on a chosen backend (candle's: the units one after the other).
pub fn conv_bn_stack_train_on(
    backend: Backend,
    x: &Tensor,
    units: &[StackUnitArgs<'_>],
) -> Result<StackTrain> {
    if units.is_empty() {
        return Err(KernelError::Shape {
            op: "conv_bn_stack",
            detail: "a stack needs at least one unit".into(),
        });
    }
    if backend == Backend::Candle {
        let mut h = x.clone();
        let mut stats = Vec::with_capacity(units.len());
        for u in units {
            let out = conv_bn_train_with(
                Backend::Candle,
                &h,
                u.weight,
                u.conv,
                u.gamma,
                u.beta,
                u.eps,
                u.relu,
                u.pool,
            )?;
            stats.push((out.mean, out.var));
            h = out.y;
        }
        return Ok(StackTrain { y: h, stats });
    }
    let x = &arg(x);
    check_own(x, "conv_bn_stack")?;
    let mut geoms = Vec::with_capacity(units.len());
    let (mut weights, mut gbs) = (Vec::new(), Vec::new());
    let (mut weight_offset, mut gb_offset) = (0, 0);
    let mut dims = x.dims().to_vec();
    let mut keep = x.track_op();
    for u in units {
        let (w, gamma, beta) = (arg(u.weight), arg(u.gamma), arg(u.beta));
        check_own(&w, "conv_bn_stack")?;
        let (shape, next) = conv_unit_dims(&dims, w.dims(), u.conv, u.pool)?;
        check_per_channel(
            "conv_bn_stack",
            &dims,
            shape.out,
            &[("gamma", &gamma), ("beta", &beta)],
        )?;
        dims = next;
        let weight_dims: [usize; 4] = [shape.out, w.dims()[1], shape.kh, shape.kw];
        geoms.push(StackUnit {
            conv: u.conv,
            weight_dims,
            weight_offset,
            gb_offset,
            tail: crate::unit::UnitTail {
                eps: u.eps,
                relu: u.relu,
                pool: u.pool,
            },
        });
        weight_offset += shape.weight_len();
        gb_offset += 2 * shape.out;
        keep |= w.track_op() || gamma.track_op() || beta.track_op();
        weights.push(w.flatten_all()?);
        gbs.push(gamma);
        gbs.push(beta);
    }
    let saved = SideChannel::new(StackSaved::default());
    let op = StackOp {
        units: geoms,
        keep_for_backward: keep,
        saved: saved.clone(),
    };
    let w_flat = Tensor::cat(&weights, 0)?;
    let gb_flat = Tensor::cat(&gbs, 0)?;
    let y = x.contiguous()?.apply_op3(&w_flat, &gb_flat, op)?;
    let guard = saved.lock();
    let stats = guard
        .units
        .iter()
        .map(|u| crate::side::stats_tensors(&u.stats, x.device()))
        .collect::<Result<Vec<_>>>()?;
    drop(guard);
    Ok(StackTrain { y, stats })
}
