//! The training modes and how the static ones build their blocks (docs/REFERENCE.md "Training
//! recipes", "Baselines"): `origin` (plain), `repvgg` (every 3×3 as conv + 1×1 + identity,
//! γ = 1), `dbb` (every k×k as DBB's k×k + 1×1 + 1×1→k×k + 1×1→avg, γ = 1) and `dyrep` (paper
//! §4: branches grown and cut while training, so the model starts plain).

use dyrep_api::{op_spec, ConvInit, InitCtx, OpSpec};
use serde::{Deserialize, Serialize};

use super::{BlockStart, Model};
use crate::error::{Result, RuntimeError};

/// Training mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The plain network.
    Origin,
    /// Every 3×3 conv as RepVGG's conv + 1×1 + identity (γ = 1).
    Repvgg,
    /// Every k×k conv as DBB's four branches (γ = 1).
    Dbb,
    /// Dynamic growth (Rep) and pruning (Dep) of branches, scored by a scorer.
    Dyrep,
}

impl Mode {
    pub const NAMES: [&'static str; 4] = ["origin", "repvgg", "dbb", "dyrep"];

    pub fn parse(s: &str) -> Result<Mode> {
        match s {
            "origin" => Ok(Mode::Origin),
            "repvgg" => Ok(Mode::Repvgg),
            "dbb" => Ok(Mode::Dbb),
            "dyrep" => Ok(Mode::Dyrep),
            other => {
                let hint = dyrep_api::registry::nearest(other, Self::NAMES)
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                Err(RuntimeError::Config(format!(
                    "unknown mode `{other}`{hint}; known modes: {}",
                    Self::NAMES.join(", ")
                )))
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Origin => "origin",
            Mode::Repvgg => "repvgg",
            Mode::Dbb => "dbb",
            Mode::Dyrep => "dyrep",
        }
    }
}

/// How the `repvgg` and `dbb` modes build their blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BaselineForm {
    /// As the DBB and RepVGG authors train them: the BN after each conv is dropped (every
    /// branch has its own) and every branch starts from its own fresh initialisation, branch
    /// BNs at γ = 1. `fuse` brings the dropped BN back, so the fused model is the plain one.
    #[default]
    Reference,
    /// As DyRep grows a block: the BN after the conv stays, and the block starts equal to the
    /// fresh conv (eq. 6), new branches at γ = 1.
    Dyrep,
}

impl BaselineForm {
    pub fn as_str(self) -> &'static str {
        match self {
            BaselineForm::Reference => "reference",
            BaselineForm::Dyrep => "dyrep",
        }
    }

    pub fn parse(s: &str) -> std::result::Result<BaselineForm, String> {
        match s {
            "reference" => Ok(BaselineForm::Reference),
            "dyrep" => Ok(BaselineForm::Dyrep),
            other => Err(format!("`{other}`: expected `reference` or `dyrep`")),
        }
    }
}

/// How the reference-form blocks of `repvgg` and `dbb` draw their conv weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BaselineInit {
    /// As the reference's `--dbb` and the official RepVGG and DBB: every conv of the block
    /// fresh, main included, with PyTorch's default init (kaiming-uniform, a = √5: variance
    /// 1/(3·fan_in)).
    #[default]
    Pytorch,
    /// dyrep before this setting existed: the model's conv (fan-out normal, 2/fan_out) stays
    /// as the main branch and the new branch convs are fan-out normal too, 6·C_in/C_out times
    /// the reference's variance (docs/REFERENCE.md "Baselines").
    FanOut,
}

impl BaselineInit {
    pub fn as_str(self) -> &'static str {
        match self {
            BaselineInit::Pytorch => "pytorch",
            BaselineInit::FanOut => "fan_out",
        }
    }

    pub fn parse(s: &str) -> std::result::Result<BaselineInit, String> {
        match s {
            "pytorch" => Ok(BaselineInit::Pytorch),
            "fan_out" => Ok(BaselineInit::FanOut),
            other => Err(format!("`{other}`: expected `pytorch` or `fan_out`")),
        }
    }
}

/// How the static modes build their blocks: the form, the initialisation of the reference
/// form, and whether the model holds pretrained convs (`init_from`), which then stay as the
/// main branches whatever `init` says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Baseline {
    pub form: BaselineForm,
    pub init: BaselineInit,
    pub pretrained: bool,
}

/// Turns the convs a static mode targets into blocks (γ = 1 on every branch), as `baseline`
/// says; returns how many convs it grew (0 for `origin` and `dyrep`).
pub fn apply_mode(
    model: &mut Model,
    mode: Mode,
    baseline: Baseline,
    ctx: &mut InitCtx<'_>,
) -> Result<usize> {
    let main = dyrep_ops::main_spec();
    let names: &[&str] = match mode {
        Mode::Origin | Mode::Dyrep => return Ok(0),
        Mode::Repvgg => &["conv1x1", "identity"],
        Mode::Dbb => &["conv1x1", "conv1x1_kxk", "conv1x1_avg"],
    };
    let specs: Vec<Box<dyn OpSpec>> = names
        .iter()
        .map(|n| op_spec(n))
        .collect::<dyrep_api::Result<_>>()?;
    let eligible: &dyn Fn(&dyrep_api::ConvGeom) -> bool = match mode {
        Mode::Repvgg => &|g| g.k == 3 && g.is_same_padding(),
        _ => &|g| g.k > 1,
    };
    let (start, conv_init) = match (baseline.form, baseline.init) {
        (BaselineForm::Dyrep, _) => (BlockStart::EqualToConv, ctx.conv_init),
        (BaselineForm::Reference, BaselineInit::Pytorch) => (
            BlockStart::Independent {
                keep_conv: baseline.pretrained,
            },
            ConvInit::PytorchDefault,
        ),
        (BaselineForm::Reference, BaselineInit::FanOut) => (
            BlockStart::Independent { keep_conv: true },
            ConvInit::FanOutNormal,
        ),
    };
    let saved = (ctx.gamma0, ctx.conv_init);
    (ctx.gamma0, ctx.conv_init) = (1.0, conv_init);
    let n = model.grow_all(&*main, &specs, eligible, start, ctx);
    (ctx.gamma0, ctx.conv_init) = saved;
    n
}
