//! The tensor names of an exported plain network: torchvision's for ResNet and VGG
//! (`layer1.0.conv1.weight`, `features.3.running_mean`), timm's deploy form for RepVGG
//! (`stages.0.0.reparam_conv.weight`), dyrep's own parameter paths for every other model.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::model::{ConvUnit, Layer, Model};

/// Which naming convention a model family exports with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Naming {
    /// torchvision's ResNet: `conv1`, `bn1`, `layer1.0.conv1`, `layer1.0.downsample.0`, `fc`.
    TorchvisionResnet,
    /// torchvision's VGG (`vgg*_bn`): one `features` sequence numbered conv, BN, ReLU, pool,
    /// then `classifier` (one linear) or `classifier.N`.
    TorchvisionVgg,
    /// timm's RepVGG in deploy form: `stem.reparam_conv`, `stages.S.B.reparam_conv` with the BN
    /// folded into the conv's bias, `head.fc`.
    TimmRepvgg,
    /// dyrep's own parameter paths (models with no conventional counterpart).
    Native,
}

impl Naming {
    /// The convention of a zoo model.
    pub fn for_model(name: &str) -> Naming {
        if name.starts_with("resnet") {
            Naming::TorchvisionResnet
        } else if name.starts_with("vgg") || name.starts_with("bench-") {
            Naming::TorchvisionVgg
        } else if name.starts_with("repvgg") {
            Naming::TimmRepvgg
        } else {
            Naming::Native
        }
    }

    pub(crate) fn folds_bn(self) -> bool {
        self == Naming::TimmRepvgg
    }
}

/// Where a conv unit's tensors go under a naming convention.
#[derive(Clone, Debug)]
pub(crate) struct UnitKeys {
    pub(crate) conv: String,
    /// `None` when the BN is folded into the conv (timm deploy form) or there is none.
    pub(crate) bn: Option<String>,
    /// The convention has a conv bias even next to a BN (torchvision VGG): written as zeros,
    /// folded into the BN's mean on import.
    pub(crate) conv_bias_beside_bn: bool,
}

/// Conventional keys of every conv unit (by conv path) and linear (by path) of a model.
pub(crate) struct Keys {
    pub(crate) naming: Naming,
    pub(crate) units: HashMap<String, UnitKeys>,
    pub(crate) linears: HashMap<String, String>,
}

pub(crate) fn keys_for(model: &Model) -> Result<Keys> {
    // A model described by an architecture file keeps dyrep's own names (its layer list is in
    // the exported JSON), whatever its name.
    let naming = match model.config.file {
        Some(_) => Naming::Native,
        None => Naming::for_model(model.name()),
    };
    let mut units = HashMap::new();
    let mut linears = HashMap::new();
    let mut add = |u: &ConvUnit, conv: String, bn: Option<String>, bias: bool| {
        let bn = if u.bn.is_some() { bn } else { None };
        units.insert(
            u.conv_path.clone(),
            UnitKeys {
                conv,
                bn,
                conv_bias_beside_bn: bias && u.bn.is_some(),
            },
        );
    };
    match naming {
        Naming::TorchvisionResnet | Naming::Native => {
            for u in model.units() {
                add(u, u.conv_path.clone(), Some(u.bn_path.clone()), false);
            }
            for l in &model.layers {
                if let Layer::Linear(lin) = l {
                    linears.insert(lin.path.clone(), lin.path.clone());
                }
            }
        }
        Naming::TorchvisionVgg => {
            let mut idx = 0usize;
            let mut classifier = Vec::new();
            let mut in_classifier = false;
            for l in &model.layers {
                match l {
                    Layer::Conv(u) if !in_classifier => {
                        let bn_at = idx + 1;
                        add(
                            u,
                            format!("features.{idx}"),
                            Some(format!("features.{bn_at}")),
                            true,
                        );
                        idx += 1 + usize::from(u.bn.is_some()) + usize::from(u.relu);
                    }
                    Layer::MaxPool { .. } | Layer::AvgPool { .. } if !in_classifier => idx += 1,
                    Layer::Linear(lin) => {
                        in_classifier = true;
                        classifier.push(Some(lin.path.clone()));
                    }
                    Layer::Relu if in_classifier => classifier.push(None),
                    _ => {}
                }
            }
            let n_linear = classifier.iter().flatten().count();
            for (j, p) in classifier.iter().enumerate() {
                if let Some(p) = p {
                    let key = if n_linear == 1 {
                        "classifier".to_string()
                    } else {
                        format!("classifier.{j}")
                    };
                    linears.insert(p.clone(), key);
                }
            }
        }
        Naming::TimmRepvgg => {
            for u in model.units() {
                let conv = match u.conv_path.strip_prefix("stage") {
                    Some(rest) => {
                        let mut it = rest.split('.');
                        let stage: usize = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                        let block = it.next().unwrap_or("0");
                        if stage == 0 {
                            "stem.reparam_conv".to_string()
                        } else {
                            format!("stages.{}.{block}.reparam_conv", stage - 1)
                        }
                    }
                    None => u.conv_path.clone(),
                };
                add(u, conv, None, false);
            }
            for l in &model.layers {
                if let Layer::Linear(lin) = l {
                    linears.insert(lin.path.clone(), "head.fc".to_string());
                }
            }
        }
    }
    Ok(Keys {
        naming,
        units,
        linears,
    })
}
