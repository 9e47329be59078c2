//! How dyrep names and classifies tensors: every parameter and buffer has a stable dotted path
//! (`features.1.conv.convkxk.bn.weight`) and a role, and is handed to a visitor with both — the
//! one way optimizers, checkpoints, exports and scorers reach a network's tensors.

use candle_core::Var;

/// What a tensor of an op is, so optimizers, weight decay and scorers can filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorRole {
    ConvWeight,
    ConvBias,
    BnWeight,
    BnBias,
    BnRunningMean,
    BnRunningVar,
    LinearWeight,
    LinearBias,
}

impl TensorRole {
    /// Trained by the optimizer (running statistics are not).
    pub fn is_trainable(self) -> bool {
        !matches!(self, TensorRole::BnRunningMean | TensorRole::BnRunningVar)
    }

    /// One-dimensional parameters that weight decay commonly skips (BN γ/β and biases).
    pub fn is_bn_or_bias(self) -> bool {
        matches!(
            self,
            TensorRole::ConvBias
                | TensorRole::BnWeight
                | TensorRole::BnBias
                | TensorRole::LinearBias
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TensorRole::ConvWeight => "conv_weight",
            TensorRole::ConvBias => "conv_bias",
            TensorRole::BnWeight => "bn_weight",
            TensorRole::BnBias => "bn_bias",
            TensorRole::BnRunningMean => "bn_running_mean",
            TensorRole::BnRunningVar => "bn_running_var",
            TensorRole::LinearWeight => "linear_weight",
            TensorRole::LinearBias => "linear_bias",
        }
    }
}

/// Callback receiving `(dotted path, variable, role)` for every tensor of an op or slot tree.
/// Variables have interior mutability (`Var::set`), so one visitor serves reading and loading.
pub type TensorVisitor<'a> = dyn FnMut(&str, &Var, TensorRole) + 'a;

/// Joins dotted path components (`""` + `a` = `a`).
pub fn join_path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else if name.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}
