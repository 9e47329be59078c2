//! Models built from `Slot`s, so any k×k conv can grow (docs/ARCHITECTURE.md "Core model";
//! docs/REFERENCE.md "Models"): VGG-16 (CIFAR form), ResNet-18/34/50 (CIFAR and ImageNet stems),
//! MobileNetV1, RepVGG-A0/A1/A2/B0 (plain deploy form), CPU-sized `vgg-tiny` and `resnet-tiny`,
//! with a width multiplier. A model is a list of layers; every conv sits in a `ConvUnit` (slot,
//! optional BN, optional ReLU) whose slot path is the conv's parameter path (torchvision-style
//! names for ResNet). Static modes (`repvgg`, `dbb`) and DyRep only ever act on those slots.

pub mod build;
mod file;
mod layers;
mod mode;
mod registry;
mod zoo;

pub use file::{ArchFile, LayerSpec};
pub use layers::{BasicBlock, Bottleneck, ConvUnit, Layer, Linear};
pub use mode::{apply_mode, Baseline, BaselineForm, BaselineInit, Mode};
pub use registry::{find_model, models, ModelBuilder, ModelEntry};
#[cfg(test)]
pub(crate) use zoo::vgg_tiny_for_tests;
pub use zoo::{build_model, ModelConfig};

use std::collections::BTreeMap;

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use dyrep_api::layers::StackConv;
use dyrep_api::{BlockForm, ConvGeom, InitCtx, OpSpec, Slot, SlotArch, TensorRole};

use crate::error::{Result, RuntimeError};

/// How [`Model::grow_all`] starts each block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockStart {
    /// Equal to the conv it replaces (paper eq. 6); the BN after the conv stays.
    EqualToConv,
    /// Every branch from its own initialisation and the BN after the conv dropped; the main
    /// branch holds the old conv when `keep_conv`, else a fresh one.
    Independent { keep_conv: bool },
}

/// Version of the `arch.json` layout.
pub const ARCH_FORMAT_VERSION: u32 = 1;

/// Whether a model still has its training-time branches or was fused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Form {
    Train,
    Fused,
}

/// The architecture of a model without tensors: what `arch.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelArch {
    pub format_version: u32,
    pub model: String,
    pub input: [usize; 3],
    pub num_classes: usize,
    pub width: f64,
    pub form: Form,
    /// How the blocks train (absent: the paper's `bn` form).
    #[serde(default, skip_serializing_if = "is_bn_form")]
    pub block_form: BlockForm,
    /// Every conv slot by path (plain convs included).
    pub slots: BTreeMap<String, SlotArch>,
    /// Conv paths whose unit BN was dropped after their block (reference-form baselines).
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub bn_dropped: std::collections::BTreeSet<String>,
    /// The architecture file of a model described by one (absent for registered models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<ArchFile>,
}

fn is_bn_form(form: &BlockForm) -> bool {
    *form == BlockForm::Bn
}

/// A CNN whose convs are slots.
#[derive(Debug)]
pub struct Model {
    pub config: ModelConfig,
    pub layers: Vec<Layer>,
    pub form: Form,
    /// How its grown blocks train (docs/REFERENCE.md "The online form"); blocks grown later
    /// (DyRep) are built in this form.
    pub block_form: BlockForm,
}

impl Model {
    /// A model with no layers (for tests of code that needs one).
    pub fn empty() -> Model {
        Model {
            config: ModelConfig {
                name: String::new(),
                input: [1, 1, 1],
                num_classes: 1,
                width: 1.0,
                file: None,
            },
            layers: Vec::new(),
            form: Form::Train,
            block_form: BlockForm::Bn,
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Logits `[N, classes]`. In training, two or more plain conv units (or online blocks, on
    /// their assembled kernels) in a row, with the max pools right after them, run as one op
    /// ([`dyrep_api::layers::conv_bn_stack`]); otherwise
    /// a conv unit directly followed by a max pool runs as one op
    /// ([`ConvUnit::forward_max_pool_t`]).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = x.clone();
        let mut i = 0;
        while i < self.layers.len() {
            // Two or more conv units in a row (each with its max pool, if one follows) train as
            // one op: no gradient bookkeeping between them. A lone online block goes through the
            // same op too, so its kernel, assembled for the run, is not assembled again.
            let (run, next) = self.stack_run(i, train)?;
            let lone_online = run.len() == 1 && run[0].0.bias.is_some();
            if run.len() >= 2 || lone_online {
                h = dyrep_api::layers::conv_bn_stack(&run, &h)?;
                i = next;
                continue;
            }
            h = match (&self.layers[i], self.layers.get(i + 1)) {
                (Layer::Conv(unit), Some(&Layer::MaxPool { k, stride, padding })) => {
                    i += 1;
                    let pool = dyrep_api::kernels::MaxPoolParams { k, stride, padding };
                    unit.forward_max_pool_t(&h, train, pool)?
                }
                (l, _) => l.forward_t(&h, train)?,
            };
            i += 1;
        }
        Ok(h)
    }

    /// The conv units from layer `i` on that can train as one op
    /// ([`dyrep_api::layers::conv_bn_stack`]: a plain conv without bias or an online block, a BN
    /// with batch statistics;
    /// a max pool right after a unit goes with it), and the index of the layer after them.
    fn stack_run(
        &self,
        mut i: usize,
        train: bool,
    ) -> Result<(Vec<dyrep_api::layers::StackUnit<'_>>, usize)> {
        let mut run = Vec::new();
        while let Some(Layer::Conv(unit)) = self.layers.get(i) {
            let Some(bn) = &unit.bn else {
                break;
            };
            let stack_conv = match &unit.slot {
                Slot::Conv(conv) => StackConv::plain(conv.layer(), bn, train)?,
                Slot::Block(b) => match b.online_kernel(train)? {
                    Some(k) => StackConv::kernel(&k, b.conv_params(), bn, train),
                    None => None,
                },
            };
            let Some(stack_conv) = stack_conv else {
                break;
            };
            let pool = match self.layers.get(i + 1) {
                Some(&Layer::MaxPool { k, stride, padding }) => {
                    Some(dyrep_api::kernels::MaxPoolParams { k, stride, padding })
                }
                _ => None,
            };
            run.push((stack_conv, bn, unit.relu, pool));
            i += if pool.is_some() { 2 } else { 1 };
        }
        Ok((run, i))
    }

    /// Eval-mode logits without a graph: no activation is kept for a backward (inference,
    /// evaluation, BN calibration).
    pub fn infer(&self, x: &Tensor) -> Result<Tensor> {
        Ok(dyrep_api::kernels::no_grad(|| self.forward_t(x, false))?.detach())
    }

    /// Every conv unit, in forward order.
    pub fn units(&self) -> Vec<&ConvUnit> {
        let mut v = Vec::new();
        for l in &self.layers {
            l.units(&mut v);
        }
        v
    }

    /// Every conv unit, mutably, in forward order.
    pub fn units_mut(&mut self) -> Vec<&mut ConvUnit> {
        let mut v = Vec::new();
        for l in &mut self.layers {
            l.units_mut(&mut v);
        }
        v
    }

    /// The unit whose conv path is `path`.
    pub fn unit_mut(&mut self, path: &str) -> Option<&mut ConvUnit> {
        self.units_mut().into_iter().find(|u| u.conv_path == path)
    }

    /// The slot at a full dotted path: a unit's conv path, or a slot nested inside it.
    pub fn slot_mut(&mut self, path: &str) -> Result<(&mut Slot, usize)> {
        let unit = self
            .units_mut()
            .into_iter()
            .find(|u| path == u.conv_path || path.starts_with(&format!("{}.", u.conv_path)))
            .ok_or_else(|| RuntimeError::Model(format!("no conv slot at `{path}`")))?;
        let rest = path[unit.conv_path.len()..]
            .trim_start_matches('.')
            .to_string();
        Ok(unit.slot.slot_mut(&rest)?)
    }

    /// Visits every tensor with its full path and role.
    pub fn visit_tensors(&self, f: &mut dyn FnMut(&str, &Var, TensorRole)) {
        for l in &self.layers {
            l.visit_tensors(f);
        }
    }

    /// `(path, var, role)` of every tensor, sorted by path.
    pub fn tensors(&self) -> Vec<(String, Var, TensorRole)> {
        let mut v = Vec::new();
        self.visit_tensors(&mut |p, t, r| v.push((p.to_string(), t.clone(), r)));
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Trainable parameters (BN γ/β and biases included, running statistics excluded).
    pub fn param_count(&self) -> usize {
        let mut n = 0;
        self.visit_tensors(&mut |_, v, r| {
            if r.is_trainable() {
                n += v.elem_count();
            }
        });
        n
    }

    /// Conv + linear multiply-accumulates at batch 1 (docs/REFERENCE.md "MACs and params").
    /// The values each layer outputs for one input image, summed: what one image of a batch
    /// holds in activations (a training step keeps them and their gradients).
    pub fn activation_values(&self) -> Result<u64> {
        let [c, h, w] = self.config.input;
        let mut shape = (c, h, w);
        let mut total = 0u64;
        for l in &self.layers {
            shape = l.macs_and_shape(shape)?.1;
            let elems = (shape.0 as u64)
                .saturating_mul(shape.1.max(1) as u64)
                .saturating_mul(shape.2.max(1) as u64);
            total = total.saturating_add(elems);
        }
        Ok(total)
    }

    /// Refuses a batch whose activations would not fit in the memory available (`train`: the
    /// step keeps activations and their gradients), naming the settings that size it.
    pub fn check_batch_memory(&self, batch: usize, train: bool, setting: &str) -> Result<()> {
        let available = dyrep_api::init::available_memory();
        let per_image = self
            .activation_values()?
            .saturating_mul(if train { 8 } else { 4 });
        let need = per_image.saturating_mul(batch as u64);
        if need > available {
            let [c, h, w] = self.config.input;
            return Err(RuntimeError::Config(format!(
                "a batch of {batch} {c}x{h}x{w} images needs about {:.1} GB of activations{}, more than the {:.1} GB of memory available; lower the batch size ({setting}) or the image size",
                need as f64 / 1e9,
                if train { " and gradients" } else { "" },
                available as f64 / 1e9,
            )));
        }
        Ok(())
    }

    pub fn macs(&self) -> Result<u64> {
        let [c, h, w] = self.config.input;
        let mut shape = (c, h, w);
        let mut total = 0u64;
        for l in &self.layers {
            let (m, s) = l.macs_and_shape(shape)?;
            total += m;
            shape = s;
        }
        Ok(total)
    }

    /// Number of grown blocks (nested ones included).
    pub fn block_count(&self) -> usize {
        self.units().iter().map(|u| u.slot.block_count()).sum()
    }

    /// Number of branches over all blocks (main branches included).
    pub fn branch_count(&self) -> usize {
        self.units()
            .iter()
            .map(|u| {
                let mut n = 0;
                let mut stack = vec![&u.slot];
                while let Some(s) = stack.pop() {
                    if let Some(b) = s.as_block() {
                        n += b.all_branches().count();
                        for op in b.all_branches() {
                            for (_, c) in op.child_slots() {
                                stack.push(c);
                            }
                        }
                    }
                }
                n
            })
            .sum()
    }

    /// The model's architecture (`arch.json`).
    pub fn arch(&self) -> ModelArch {
        ModelArch {
            format_version: ARCH_FORMAT_VERSION,
            model: self.config.name.clone(),
            input: self.config.input,
            num_classes: self.config.num_classes,
            width: self.config.width,
            form: self.form,
            block_form: self.block_form,
            slots: self
                .units()
                .iter()
                .map(|u| (u.conv_path.clone(), u.slot.arch()))
                .collect(),
            bn_dropped: self
                .units()
                .iter()
                .filter(|u| u.bn_dropped)
                .map(|u| u.conv_path.clone())
                .collect(),
            file: self.config.file.clone(),
        }
    }

    /// Rebuilds a model of this architecture with fresh parameters (load tensors next).
    pub fn from_arch(arch: &ModelArch, ctx: &mut InitCtx<'_>) -> Result<Model> {
        if arch.format_version != ARCH_FORMAT_VERSION {
            return Err(RuntimeError::Model(format!(
                "arch format version {} is not supported (this dyrep reads version {ARCH_FORMAT_VERSION})",
                arch.format_version
            )));
        }
        let config = ModelConfig {
            name: arch.model.clone(),
            input: arch.input,
            num_classes: arch.num_classes,
            width: arch.width,
            file: arch.file.clone(),
        };
        let mut model = build_model(&config, ctx)?;
        model.form = arch.form;
        model.block_form = arch.block_form;
        let saved_form = std::mem::replace(&mut ctx.block_form, arch.block_form);
        let rebuilt = model.rebuild_slots(arch, ctx);
        ctx.block_form = saved_form;
        rebuilt?;
        Ok(model)
    }

    /// The slots of `arch` in place of this model's plain convs, in `ctx.block_form`.
    fn rebuild_slots(&mut self, arch: &ModelArch, ctx: &mut InitCtx<'_>) -> Result<()> {
        let model = self;
        let known: Vec<String> = model.units().iter().map(|u| u.conv_path.clone()).collect();
        for path in arch.slots.keys() {
            if !known.contains(path) {
                return Err(RuntimeError::Model(format!(
                    "arch.json names a conv `{path}` that model `{}` does not have",
                    arch.model
                )));
            }
        }
        for u in model.units_mut() {
            let Some(sa) = arch.slots.get(&u.conv_path) else {
                return Err(RuntimeError::Model(format!(
                    "arch.json lacks the conv `{}` of model `{}`",
                    u.conv_path, arch.model
                )));
            };
            let geom: ConvGeom = *u.slot.geom();
            u.slot = Slot::from_arch(geom, sa, ctx).map_err(|e| {
                RuntimeError::Model(format!("conv `{}` in arch.json: {e}", u.conv_path))
            })?;
            if arch.bn_dropped.contains(&u.conv_path) {
                u.drop_bn_after_block();
                if !u.bn_dropped {
                    return Err(RuntimeError::Model(format!(
                        "arch.json drops the BN after `{}`, which is no block with a BN",
                        u.conv_path
                    )));
                }
            }
        }
        Ok(())
    }

    /// Replaces every tensor's value from `tensors` (by path). Missing or extra names and shape
    /// mismatches are errors listing the offending names.
    pub fn load_tensors(&self, tensors: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        let mut missing = Vec::new();
        let mut bad_shape = Vec::new();
        let mut seen = 0usize;
        let mut result = Ok(());
        self.visit_tensors(&mut |p, v, _| match tensors.get(p) {
            None => missing.push(p.to_string()),
            Some(t) if t.dims() != v.dims() => {
                bad_shape.push(format!("{p} (file {:?}, model {:?})", t.dims(), v.dims()))
            }
            Some(t) => {
                seen += 1;
                if result.is_ok() {
                    result = t
                        .to_dtype(v.dtype())
                        .and_then(|t| t.to_device(v.device()))
                        .and_then(|t| v.set(&t));
                }
            }
        });
        result?;
        let unexpected: Vec<&String> = {
            let mut known = std::collections::HashSet::new();
            self.visit_tensors(&mut |p, _, _| {
                known.insert(p.to_string());
            });
            let mut u: Vec<&String> = tensors.keys().filter(|k| !known.contains(*k)).collect();
            u.sort();
            u
        };
        if !missing.is_empty() || !bad_shape.is_empty() || !unexpected.is_empty() {
            let show = |v: &[String]| {
                let mut s = v.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
                if v.len() > 5 {
                    s.push_str(&format!(", … ({} in all)", v.len()));
                }
                s
            };
            let unexpected: Vec<String> = unexpected.into_iter().cloned().collect();
            let mut parts = Vec::new();
            if !missing.is_empty() {
                parts.push(format!("missing: {}", show(&missing)));
            }
            if !unexpected.is_empty() {
                parts.push(format!("unexpected: {}", show(&unexpected)));
            }
            if !bad_shape.is_empty() {
                parts.push(format!("wrong shape: {}", show(&bad_shape)));
            }
            return Err(RuntimeError::Model(format!(
                "weights do not match the architecture ({})",
                parts.join("; ")
            )));
        }
        let _ = seen;
        Ok(())
    }

    /// Detached copies of every tensor by path (for saving).
    pub fn tensor_map(&self) -> Result<std::collections::HashMap<String, Tensor>> {
        let mut out = std::collections::HashMap::new();
        let mut res: candle_core::Result<()> = Ok(());
        self.visit_tensors(&mut |p, v, _| {
            if res.is_ok() {
                match v.as_detached_tensor().copy() {
                    Ok(t) => {
                        out.insert(p.to_string(), t);
                    }
                    Err(e) => res = Err(e),
                }
            }
        });
        res?;
        Ok(out)
    }

    /// Grows every eligible conv with the given branch specs (those that apply), as the static
    /// `repvgg` and `dbb` modes do. `eligible(geom)` picks the convs; `start` says how each
    /// block starts.
    pub fn grow_all(
        &mut self,
        main: &dyn OpSpec,
        branches: &[Box<dyn OpSpec>],
        eligible: &dyn Fn(&ConvGeom) -> bool,
        start: BlockStart,
        ctx: &mut InitCtx<'_>,
    ) -> Result<usize> {
        let mut grown = 0;
        for u in self.units_mut() {
            let g = *u.slot.geom();
            if u.slot.is_block() || !eligible(&g) {
                continue;
            }
            let specs: Vec<Box<dyn OpSpec>> = branches
                .iter()
                .filter(|s| s.check(&g).is_ok())
                .cloned()
                .collect();
            if specs.is_empty() {
                continue;
            }
            match start {
                BlockStart::Independent { keep_conv } => {
                    u.slot.grow_independent(main, &specs, keep_conv, ctx)?;
                    // The online form keeps the BN after the block: its branches have no
                    // batch statistics of their own.
                    if ctx.block_form == BlockForm::Bn {
                        u.drop_bn_after_block();
                    }
                }
                BlockStart::EqualToConv => u.slot.grow(main, &specs, ctx)?,
            }
            grown += 1;
        }
        Ok(grown)
    }

    /// Fuses every block into its plain conv and folds each conv's bias into the BN that
    /// follows it (μ ← μ − b), giving back the plain architecture. Returns the number of
    /// fused blocks. A fused model is left unchanged.
    pub fn fuse(&mut self) -> Result<usize> {
        let mut fused = 0;
        for u in self.units_mut() {
            if u.slot.fuse()? {
                fused += 1;
            }
            u.restore_dropped_bn()?;
            u.fold_bias_into_bn()?;
        }
        self.form = Form::Fused;
        Ok(fused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use dyrep_api::SeededRng;

    fn build(name: &str, input: [usize; 3]) -> Model {
        crate::ensure_linked();
        let mut rng = SeededRng::new(0);
        let mut ctx = InitCtx::new(&mut rng, &Device::Cpu);
        let cfg = ModelConfig {
            name: name.into(),
            input,
            num_classes: 10,
            width: 1.0,
            file: None,
        };
        build_model(&cfg, &mut ctx).unwrap()
    }

    #[test]
    fn vgg16_cifar_matches_the_reference_counts() {
        // docs/REFERENCE.md "Models", "MACs and params": 313.5 M MACs, 14.99 M params; all 13
        // convs as DBB: 727.7 M MACs.
        let mut m = build("vgg16", [3, 32, 32]);
        let macs = m.macs().unwrap() as f64 / 1e6;
        let params = m.param_count() as f64 / 1e6;
        assert!((macs - 313.5).abs() < 0.5, "{macs}");
        assert!((params - 14.99).abs() < 0.02, "{params}");
        let mut rng = SeededRng::new(1);
        let mut ctx = InitCtx::new(&mut rng, &Device::Cpu);
        let dbb: Vec<Box<dyn OpSpec>> = ["conv1x1", "conv1x1_kxk", "conv1x1_avg"]
            .iter()
            .map(|n| dyrep_api::op_spec(n).unwrap())
            .collect();
        let n = m
            .grow_all(
                &*dyrep_ops::main_spec(),
                &dbb,
                &|g| g.k > 1,
                BlockStart::EqualToConv,
                &mut ctx,
            )
            .unwrap();
        assert_eq!(n, 13);
        let macs = m.macs().unwrap() as f64 / 1e6;
        assert!((macs - 727.7).abs() < 0.5, "{macs}");
    }

    #[test]
    fn resnet18_cifar_counts_and_torchvision_paths() {
        let m = build("resnet18", [3, 32, 32]);
        let params = m.param_count() as f64 / 1e6;
        assert!((params - 11.17).abs() < 0.02, "{params}");
        let macs = m.macs().unwrap() as f64 / 1e6;
        assert!((macs - 556.0).abs() < 2.0, "{macs}");
        let paths: Vec<String> = m.tensors().into_iter().map(|t| t.0).collect();
        for p in [
            "conv1.weight",
            "bn1.running_var",
            "layer2.0.downsample.0.weight",
            "layer2.0.downsample.1.weight",
            "layer4.1.conv2.weight",
            "fc.bias",
        ] {
            assert!(paths.iter().any(|x| x == p), "{p} missing");
        }
    }

    #[test]
    fn every_zoo_model_builds_at_its_default_input() {
        for e in models() {
            if e.default_input[1] > 64 {
                // ImageNet-sized models: build at a small input to keep the test quick.
                let m = build(e.name, [3, 64, 64]);
                assert!(m.macs().unwrap() > 0);
            } else {
                let m = build(e.name, e.default_input);
                let x = Tensor::zeros(
                    (
                        2,
                        e.default_input[0],
                        e.default_input[1],
                        e.default_input[2],
                    ),
                    candle_core::DType::F32,
                    &Device::Cpu,
                )
                .unwrap();
                assert_eq!(
                    m.forward_t(&x, false).unwrap().dims(),
                    &[2, 10],
                    "{}",
                    e.name
                );
            }
        }
        let e = find_model("vgg-tny").unwrap_err().to_string();
        assert!(e.contains("did you mean `vgg-tiny`"), "{e}");
    }

    #[test]
    fn stacked_conv_units_train_as_the_separate_layers() {
        // bench-small's five conv units (two with their max pools) run as one stack op. With its
        // second unit grown the run breaks there: unit 0 alone (one fused op), the block with its
        // BN, ReLU and max pool in one block op, then units 2..4 as a stack of three (one conv →
        // max pool pair inside). In the reference DBB and RepVGG forms every unit is a block
        // without a BN after it: each block op runs the unit's ReLU and max pool too.
        let forms = [None, Some(Mode::Dbb), Some(Mode::Repvgg)];
        for (grow, form) in [(false, None), (true, None)]
            .into_iter()
            .chain(forms[1..].iter().map(|&f| (false, f)))
        {
            let build_one = || {
                let mut m = build("bench-small", [1, 28, 28]);
                if let Some(mode) = form {
                    let mut rng = SeededRng::new(9);
                    let mut ctx = InitCtx::new(&mut rng, &Device::Cpu);
                    apply_mode(&mut m, mode, Baseline::default(), &mut ctx).unwrap();
                }
                if grow {
                    let path = m.units()[1].conv_path.clone();
                    let (slot, _) = m.slot_mut(&path).unwrap();
                    let mut rng = SeededRng::new(9);
                    let mut ctx = InitCtx::new(&mut rng, &Device::Cpu);
                    let specs = crate::dynamics::DyrepConfig::default()
                        .branch_specs()
                        .unwrap();
                    let g = *slot.geom();
                    let ok: Vec<Box<dyn OpSpec>> =
                        specs.into_iter().filter(|s| s.check(&g).is_ok()).collect();
                    slot.grow(&*dyrep_ops::main_spec(), &ok, &mut ctx).unwrap();
                }
                m
            };
            let (stacked_model, separate_model) = (build_one(), build_one());
            let mut rng = SeededRng::new(5);
            let x =
                dyrep_api::init::normal_tensor(&mut rng, &[3, 1, 28, 28], 0.0, 1.0, &Device::Cpu)
                    .unwrap();
            let upstream =
                dyrep_api::init::normal_tensor(&mut rng, &[3, 10], 0.0, 1.0, &Device::Cpu).unwrap();
            let grads_of = |m: &Model, y: &Tensor| {
                let grads = (y * &upstream)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                m.tensors()
                    .into_iter()
                    .filter(|(_, _, r)| r.is_trainable())
                    .map(|(p, v, _)| (p, grads.get(&v).expect("gradient").clone()))
                    .collect::<Vec<_>>()
            };
            let stacked = stacked_model.forward_t(&x, true).unwrap();
            let mut separate = x.clone();
            for l in &separate_model.layers {
                separate = l.forward_t(&separate, true).unwrap();
            }
            let c = dyrep_api::equivalence::compare(&stacked, &separate).unwrap();
            assert!(c.rel < 1e-6, "grow {grow} {form:?}: logits: {c:?}");
            let gs = grads_of(&separate_model, &separate);
            for ((path, gf), (_, gs)) in grads_of(&stacked_model, &stacked).iter().zip(&gs) {
                let c = dyrep_api::equivalence::compare(gf, gs).unwrap();
                assert!(c.rel < 1e-5, "grow {grow} {form:?}: {path}: {c:?}");
            }
            // Every BN recorded its batch statistics into its running statistics.
            let running = |m: &Model| {
                m.tensors()
                    .into_iter()
                    .filter(|(_, _, r)| !r.is_trainable())
                    .map(|(p, v, _)| (p, v.as_tensor().clone()))
                    .collect::<Vec<_>>()
            };
            for ((path, a), (_, b)) in running(&stacked_model)
                .iter()
                .zip(&running(&separate_model))
            {
                let c = dyrep_api::equivalence::compare(a, b).unwrap();
                assert!(c.rel < 1e-6, "grow {grow} {form:?}: {path}: {c:?}");
            }
        }
    }

    #[test]
    fn too_small_input_is_a_clear_error() {
        crate::ensure_linked();
        let mut rng = SeededRng::new(0);
        let mut ctx = InitCtx::new(&mut rng, &Device::Cpu);
        let cfg = ModelConfig {
            name: "vgg16".into(),
            input: [1, 28, 28],
            num_classes: 10,
            width: 1.0,
            file: None,
        };
        let e = build_model(&cfg, &mut ctx).unwrap_err().to_string();
        assert!(e.contains("vgg16") && e.contains("28"), "{e}");
    }

    #[test]
    fn arch_round_trip_and_fuse_give_back_the_plain_model() {
        let mut m = build("resnet-tiny", [1, 12, 12]);
        let mut rng = SeededRng::new(2);
        let mut ctx = InitCtx::new(&mut rng, &Device::Cpu);
        let specs: Vec<Box<dyn OpSpec>> = dyrep_api::ops()
            .iter()
            .filter(|e| e.name != "convkxk")
            .map(|e| (e.default_spec)())
            .collect();
        m.grow_all(
            &*dyrep_ops::main_spec(),
            &specs,
            &|g| g.k > 1,
            BlockStart::EqualToConv,
            &mut ctx,
        )
        .unwrap();
        // Random BN statistics everywhere, so fusion is not trivially exact.
        for (_, v, r) in m.tensors() {
            dyrep_api::equivalence::randomize_tensor(&mut rng, &v, r).unwrap();
        }
        let arch = m.arch();
        let json = serde_json::to_string(&arch).unwrap();
        let back: ModelArch = serde_json::from_str(&json).unwrap();
        let mut ctx = InitCtx::new(&mut rng, &Device::Cpu);
        let m2 = Model::from_arch(&back, &mut ctx).unwrap();
        m2.load_tensors(&m.tensor_map().unwrap()).unwrap();
        let x = dyrep_api::init::normal_tensor(&mut rng, &[3, 1, 12, 12], 0.0, 1.0, &Device::Cpu)
            .unwrap();
        let y = m.forward_t(&x, false).unwrap();
        let y2 = m2.forward_t(&x, false).unwrap();
        assert_eq!(
            dyrep_api::equivalence::compare(&y, &y2).unwrap().max_abs,
            0.0
        );
        // Fuse: plain architecture, same logits.
        let plain = build("resnet-tiny", [1, 12, 12]).arch();
        let n = m.fuse().unwrap();
        assert!(n > 0);
        let yf = m.forward_t(&x, false).unwrap();
        let c = dyrep_api::equivalence::compare(&y, &yf).unwrap();
        assert!(c.rel < 1e-5, "{c:?}");
        assert_eq!(
            serde_json::to_value(&m.arch().slots).unwrap(),
            serde_json::to_value(&plain.slots).unwrap()
        );
        assert_eq!(m.fuse().unwrap(), 0);
        // Weights that do not fit are refused with the offending names.
        let mut t = m.tensor_map().unwrap();
        t.remove("fc.bias");
        let plain_model = build("resnet-tiny", [1, 12, 12]);
        plain_model.load_tensors(&m.tensor_map().unwrap()).unwrap();
        let e = plain_model.load_tensors(&t).unwrap_err().to_string();
        assert!(e.contains("missing: fc.bias"), "{e}");
        let e = m2
            .load_tensors(&m.tensor_map().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("unexpected: conv1.weight"), "{e}");
    }

    /// The reference form of the baselines: the BN after each grown conv is dropped, the
    /// branches start independently (the block no longer equals the conv), the architecture
    /// round-trips, and fusing brings the BN back so the fused model is the plain one with the
    /// same logits.
    #[test]
    fn reference_form_blocks_drop_the_unit_bn_and_fuse_back_to_the_plain_model() {
        let mut m = build("vgg-tiny", [1, 12, 12]);
        let mut rng = SeededRng::new(5);
        let x = dyrep_api::init::normal_tensor(&mut rng, &[4, 1, 12, 12], 0.0, 1.0, &Device::Cpu)
            .unwrap();
        let plain_y = m.forward_t(&x, false).unwrap();
        let mut ctx = InitCtx::new(&mut rng, &Device::Cpu);
        let n = apply_mode(&mut m, Mode::Dbb, Baseline::default(), &mut ctx).unwrap();
        assert!(n > 0);
        let grown: Vec<&ConvUnit> = m
            .units()
            .into_iter()
            .filter(|u| u.slot.is_block())
            .collect();
        assert_eq!(grown.len(), n);
        assert!(grown.iter().all(|u| u.bn.is_none() && u.bn_dropped));
        // Independent initialisation: the network computes something else than before.
        let y = m.forward_t(&x, false).unwrap();
        assert!(dyrep_api::equivalence::compare(&plain_y, &y).unwrap().rel > 1e-2);
        // Random statistics, so fusion is not trivially exact; one training step's worth of
        // state is what a checkpoint holds.
        for (_, v, r) in m.tensors() {
            dyrep_api::equivalence::randomize_tensor(&mut rng, &v, r).unwrap();
        }
        let y = m.forward_t(&x, false).unwrap();
        let arch: ModelArch =
            serde_json::from_str(&serde_json::to_string(&m.arch()).unwrap()).unwrap();
        assert_eq!(arch.bn_dropped.len(), n);
        let mut ctx = InitCtx::new(&mut rng, &Device::Cpu);
        let m2 = Model::from_arch(&arch, &mut ctx).unwrap();
        m2.load_tensors(&m.tensor_map().unwrap()).unwrap();
        assert_eq!(
            dyrep_api::equivalence::compare(&y, &m2.forward_t(&x, false).unwrap())
                .unwrap()
                .max_abs,
            0.0
        );
        m.fuse().unwrap();
        let c = dyrep_api::equivalence::compare(&y, &m.forward_t(&x, false).unwrap()).unwrap();
        assert!(c.rel < 1e-5, "{c:?}");
        let plain = build("vgg-tiny", [1, 12, 12]);
        assert_eq!(
            serde_json::to_value(m.arch()).unwrap()["slots"],
            serde_json::to_value(plain.arch()).unwrap()["slots"]
        );
        assert!(m.arch().bn_dropped.is_empty());
        plain.load_tensors(&m.tensor_map().unwrap()).unwrap();
    }

    /// The reference form's two initialisations. `pytorch`: every conv of every block, main
    /// included, is a fresh draw within PyTorch's bound ±1/√fan_in (a uniform draw never leaves
    /// it; the fan-out normal of the plain convs does, for one entry in ~3 on vgg-tiny's convs);
    /// `fan_out`: the model's own conv stays as the main branch, bit for bit, as dyrep built the
    /// baselines before the setting existed; pretrained convs stay under either.
    #[test]
    fn reference_form_draws_pytorch_default_convs_unless_fan_out_or_pretrained() {
        let conv_weights = |m: &Model| -> BTreeMap<String, Vec<f32>> {
            m.tensors()
                .into_iter()
                .filter(|(_, _, r)| *r == TensorRole::ConvWeight)
                .map(|(p, v, _)| {
                    let w = v
                        .as_tensor()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap();
                    (p, w)
                })
                .collect()
        };
        let fan_in = |m: &Model, path: &str| -> f64 {
            let (_, v, _) = m.tensors().into_iter().find(|(p, _, _)| p == path).unwrap();
            let d = v.as_tensor().dims().to_vec();
            (d[1] * d[2] * d[3]) as f64
        };
        let within_bound = |m: &Model, path: &str, w: &[f32]| {
            let bound = 1.0 / fan_in(m, path).sqrt();
            w.iter().all(|x| (*x as f64).abs() <= bound)
        };
        let plain = build("vgg-tiny", [1, 12, 12]);
        let plain_w = conv_weights(&plain);
        // The plain convs are fan-out normal and leave PyTorch's bound somewhere.
        assert!(plain_w.iter().any(|(p, w)| !within_bound(&plain, p, w)));
        let main_of = |u: &ConvUnit| format!("{}.{}.conv.weight", u.conv_path, dyrep_ops::MAIN_OP);
        for (init, pretrained) in [
            (BaselineInit::Pytorch, false),
            (BaselineInit::FanOut, false),
            (BaselineInit::Pytorch, true),
        ] {
            let mut m = build("vgg-tiny", [1, 12, 12]);
            let mut rng = SeededRng::new(11);
            let mut ctx = InitCtx::new(&mut rng, &Device::Cpu);
            let baseline = Baseline {
                init,
                pretrained,
                ..Baseline::default()
            };
            let n = apply_mode(&mut m, Mode::Dbb, baseline, &mut ctx).unwrap();
            assert!(n > 0);
            assert_eq!(
                ctx.conv_init,
                dyrep_api::ConvInit::FanOutNormal,
                "ctx restored"
            );
            let w = conv_weights(&m);
            let units = m.units();
            for u in units.iter().filter(|u| u.slot.is_block()) {
                let main = main_of(u);
                let old = &plain_w[&format!("{}.weight", u.conv_path)];
                let kept = &w[&main] == old;
                assert_eq!(kept, init == BaselineInit::FanOut || pretrained, "{main}");
                let branch_convs: Vec<_> = w
                    .iter()
                    .filter(|(p, _)| p.starts_with(&format!("{}.", u.conv_path)) && **p != main)
                    .collect();
                assert!(branch_convs.len() >= 2, "{}", u.conv_path);
                for (p, bw) in branch_convs {
                    if init == BaselineInit::Pytorch {
                        assert!(within_bound(&m, p, bw), "{p} outside ±1/√fan_in");
                    }
                }
                if init == BaselineInit::Pytorch && !pretrained {
                    assert!(within_bound(&m, &main, &w[&main]), "{main}");
                }
            }
        }
    }

    /// DyRep's form keeps the unit BN and starts the block equal to the conv.
    #[test]
    fn dyrep_form_blocks_keep_the_unit_bn_and_the_output() {
        let mut m = build("vgg-tiny", [1, 12, 12]);
        let mut rng = SeededRng::new(6);
        let x = dyrep_api::init::normal_tensor(&mut rng, &[4, 1, 12, 12], 0.0, 1.0, &Device::Cpu)
            .unwrap();
        let plain_y = m.forward_t(&x, false).unwrap();
        let mut ctx = InitCtx::new(&mut rng, &Device::Cpu);
        let dyrep_form = Baseline {
            form: BaselineForm::Dyrep,
            ..Baseline::default()
        };
        apply_mode(&mut m, Mode::Dbb, dyrep_form, &mut ctx).unwrap();
        assert!(m.units().iter().all(|u| u.bn.is_some() && !u.bn_dropped));
        let c =
            dyrep_api::equivalence::compare(&plain_y, &m.forward_t(&x, false).unwrap()).unwrap();
        assert!(c.rel < 1e-5, "{c:?}");
    }
}
