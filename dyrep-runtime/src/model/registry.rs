//! The model registry: every model `dyrep` can build by name, registered with
//! [`register_model!`](crate::register_model) from any crate (the zoo registers itself the same
//! way, `zoo.rs`), listed by `dyrep models`, found with a did-you-mean.

use dyrep_api::InitCtx;

use super::{Layer, ModelConfig};
use crate::error::{Result, RuntimeError};

/// Builds a model's layers for a config (input shape, classes, width multiplier), drawing fresh
/// parameters from `ctx`.
pub type ModelBuilder = fn(&ModelConfig, &mut InitCtx<'_>) -> Result<Vec<Layer>>;

/// A registered model.
pub struct ModelEntry {
    pub name: &'static str,
    pub summary: &'static str,
    /// The input `[C, H, W]` the model is meant for (`dyrep models` and `dyrep bench` use it;
    /// training takes the data's shape).
    pub default_input: [usize; 3],
    /// Listing order (then by name): the zoo uses 0..100, other crates default to 1000.
    pub order: u32,
    pub build: ModelBuilder,
}

impl std::fmt::Debug for ModelEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelEntry")
            .field("name", &self.name)
            .field("default_input", &self.default_input)
            .finish()
    }
}

dyrep_api::inventory::collect!(ModelEntry);

/// Every registered model, in listing order (then by name).
pub fn models() -> Vec<&'static ModelEntry> {
    let mut v: Vec<&'static ModelEntry> = dyrep_api::inventory::iter::<ModelEntry>
        .into_iter()
        .collect();
    v.sort_by(|a, b| a.order.cmp(&b.order).then(a.name.cmp(b.name)));
    v
}

/// The model registered as `name`, or an error listing the known names and the nearest one.
pub fn find_model(name: &str) -> Result<&'static ModelEntry> {
    dyrep_api::registry::lookup("model", name, models(), |e| e.name).map_err(RuntimeError::from)
}

/// Registers a model builder under a name, from any crate:
///
/// ```ignore
/// dyrep_runtime::register_model!("my-cnn", "two convs, GAP, linear", [3, 32, 32], build_my_cnn);
/// ```
///
/// `build_my_cnn: fn(&ModelConfig, &mut InitCtx<'_>) -> dyrep_runtime::Result<Vec<Layer>>` puts
/// every conv in a `ConvUnit` so DyRep can grow it (`model::build` has the zoo's building
/// blocks). An optional fifth argument `order = N` sets the listing order.
#[macro_export]
macro_rules! register_model {
    ($name:expr, $summary:expr, $input:expr, $build:path, order = $order:expr $(,)?) => {
        $crate::api::inventory::submit! {
            $crate::model::ModelEntry {
                name: $name,
                summary: $summary,
                default_input: $input,
                order: $order,
                build: $build,
            }
        }
    };
    ($name:expr, $summary:expr, $input:expr, $build:path $(,)?) => {
        $crate::register_model!($name, $summary, $input, $build, order = 1000);
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_listed_in_order() {
        let all = models();
        dyrep_api::registry::check_unique("model", &all, |e| e.name).unwrap();
        assert!(all.len() >= 16, "{}", all.len());
        assert_eq!(all[0].name, "vgg-tiny");
        assert!(all.windows(2).all(|w| w[0].order <= w[1].order));
    }

    #[test]
    fn an_unknown_name_gets_the_nearest_one() {
        let e = find_model("resnet-18").unwrap_err().to_string();
        assert!(e.contains("did you mean `resnet18`"), "{e}");
    }
}
