//! The settings of a training run: the TOML config file, the flags that override it, and
//! `config.resolved.toml` in the run directory (docs/USAGE.md; the recipes
//! and their constants: docs/REFERENCE.md "Training recipes"). Every key has one default, in
//! `TrainConfig::default`; a file names only what it changes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::loader::Augment;
use crate::dynamics::DyrepConfig;
use crate::error::{io, Result, RuntimeError};
pub use crate::model::{BaselineForm, BaselineInit, Mode};
use crate::optim::SgdConfig;
pub use dyrep_api::BlockForm;

/// The largest `width` multiplier: wider networks than 64× a registered model's channels do not
/// fit any machine's memory.
pub const MAX_WIDTH: f64 = 64.0;

/// Every setting of a run (the TOML config file; `config.resolved.toml` in the run directory).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// A registered model (`dyrep models`); ignored when `model_file` is set.
    pub model: String,
    /// A network described by an architecture file (docs/MODEL-FILES.md) instead of `model`;
    /// the run copies it (`model.toml` in the run directory, and inside every checkpoint's
    /// `arch.json`), so a resume does not read it again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_file: Option<PathBuf>,
    /// Data spec (`default`, `fashion-mnist:DIR`, `cifar10:DIR`, ...).
    pub data: String,
    pub mode: Mode,
    pub epochs: usize,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    pub lr: f64,
    pub min_lr: f64,
    /// Epochs of linear warm-up before the cosine decay (0 = none; `optim::CosineSchedule`).
    pub warmup_epochs: usize,
    /// The learning rate of the first warm-up epoch; 1e-4 as in the reference's trainer (with
    /// 0 the first warm-up epoch would not move the weights).
    pub warmup_lr: f64,
    /// Raise the warm-up's learning rate every step instead of every epoch (for runs of few long
    /// epochs; the reference steps per epoch). The lr still reaches `lr` after `warmup_epochs`.
    pub warmup_per_step: bool,
    pub sgd: SgdConfig,
    pub label_smoothing: f64,
    pub width: f64,
    pub seed: u64,
    pub augment: Augment,
    /// Train / test on a class-balanced subset of N examples (`Split::balanced_subset`).
    pub train_limit: Option<usize>,
    pub test_limit: Option<usize>,
    /// How `repvgg` and `dbb` build their blocks (the reference's form by default).
    pub baseline_form: BaselineForm,
    /// How the reference form draws its blocks' convs (the reference's, PyTorch's default init,
    /// by default).
    pub baseline_init: BaselineInit,
    /// How grown blocks train (`repvgg`, `dbb`, `dyrep`): `bn`, the paper's per-branch batch
    /// norms (the default), or `online`, every branch's batch norm a learnable scale and the
    /// block collapsed into one conv in every step (docs/REFERENCE.md "The online form").
    pub block_form: BlockForm,
    /// Start from plain pretrained weights with conventional names (a `.safetensors` file as
    /// `dyrep export` writes it), in any mode (paper §5.4 "D").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
    /// Image-decoding threads (image folders); 0: one per core. Speed only, never results.
    pub workers: usize,
    /// Data-parallel runs: every rank reads the whole epoch (the same batches) instead of its
    /// shard, so the run must equal a single-process one bit for bit — a check of the
    /// plumbing, not a way to train.
    pub dist_same_data: bool,
    /// Data-parallel runs: batch norm normalises with the statistics of the global batch (every
    /// rank's batch), all-reduced in the forward pass and their gradients in the backward
    /// (PyTorch's `SyncBatchNorm`); off, each rank uses its own batch's statistics, as the
    /// reference does. CPU only. One process computes the same statistics either way, but with
    /// `sync_bn` it runs the distributed run's code path (batch norm as candle composition
    /// instead of the fused kernels), which is how that path is checked against one process.
    pub sync_bn: bool,
    /// Streamed image folders: skip (log and count in `summary.json`) images that cannot be
    /// decoded instead of failing the run.
    pub skip_bad_images: bool,
    /// The most pixels (width × height) one image may decode to; a larger one is a bad image
    /// (refused, or skipped with `skip_bad_images`) before its pixels are allocated.
    pub max_image_pixels: u64,
    /// Keep decoded image folders in a cache, so the next run on an unchanged folder skips the
    /// decoding (docs/USAGE.md "Data").
    pub cache: bool,
    /// The cache's directory (default `$DYREP_CACHE_DIR`, else `$XDG_CACHE_HOME/dyrep`, else
    /// `~/.cache/dyrep`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    /// Settings of the `dyrep` mode.
    pub dyrep: DyrepConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: "vgg-tiny".into(),
            model_file: None,
            data: "default".into(),
            mode: Mode::Origin,
            epochs: 3,
            batch_size: 64,
            eval_batch_size: 256,
            lr: 0.1,
            min_lr: 1e-5,
            warmup_epochs: 0,
            warmup_lr: 1e-4,
            warmup_per_step: false,
            sgd: SgdConfig::default(),
            label_smoothing: 0.0,
            width: 1.0,
            seed: 0,
            augment: Augment::default(),
            train_limit: None,
            test_limit: None,
            baseline_form: BaselineForm::Reference,
            baseline_init: BaselineInit::Pytorch,
            block_form: BlockForm::Bn,
            init_from: None,
            workers: 0,
            dist_same_data: false,
            sync_bn: false,
            skip_bad_images: false,
            max_image_pixels: crate::data::MAX_IMAGE_PIXELS,
            cache: true,
            cache_dir: None,
            dyrep: DyrepConfig::default(),
        }
    }
}

impl TrainConfig {
    /// Checks every setting; the error names the setting and the fix.
    pub fn validate(&self) -> Result<()> {
        let bad = |s: String| Err(RuntimeError::Config(s));
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if self.batch_size < 2 {
            return bad(
                "batch_size must be at least 2 (batch norm needs more than one value)".into(),
            );
        }
        if self.eval_batch_size == 0 {
            return bad("eval_batch_size must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite() && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return bad(format!(
                "need 0 <= min_lr <= lr and lr > 0 (lr {}, min_lr {})",
                self.lr, self.min_lr
            ));
        }
        if self.baseline_form == BaselineForm::Dyrep && self.baseline_init != BaselineInit::Pytorch
        {
            return bad(format!(
                "baseline_init = \"{}\" only applies to baseline_form = \"reference\" (DyRep's \
                 form starts each block equal to the conv); remove it",
                self.baseline_init.as_str()
            ));
        }
        if self.block_form == BlockForm::Online && self.mode == Mode::Origin {
            return bad(
                "block_form = \"online\" applies to grown blocks (mode repvgg, dbb or dyrep); \
                 mode origin has none: remove it"
                    .into(),
            );
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return bad(format!(
                "label_smoothing {} must be in [0, 1)",
                self.label_smoothing
            ));
        }
        if !(self.warmup_lr >= 0.0 && self.warmup_lr.is_finite()) {
            return bad(format!(
                "warmup_lr {} must be a finite number >= 0",
                self.warmup_lr
            ));
        }
        if self.warmup_epochs >= self.epochs && self.warmup_epochs > 0 {
            return bad(format!(
                "warmup_epochs ({}) must be smaller than epochs ({})",
                self.warmup_epochs, self.epochs
            ));
        }
        let sgd_ok = (0.0..1.0).contains(&self.sgd.momentum)
            && self.sgd.weight_decay >= 0.0
            && self.sgd.weight_decay.is_finite();
        if !sgd_ok {
            return bad(
                "sgd.momentum must be in [0, 1) and sgd.weight_decay a finite number >= 0".into(),
            );
        }
        if self.max_image_pixels == 0 {
            return bad("max_image_pixels must be at least 1".into());
        }
        if !(self.width > 0.0 && self.width <= MAX_WIDTH) {
            return bad(format!(
                "width {} must be a number in (0, {MAX_WIDTH}] (a multiplier of every layer's channels; --width)",
                self.width
            ));
        }
        for (key, limit) in [
            ("train_limit", self.train_limit),
            ("test_limit", self.test_limit),
        ] {
            if limit == Some(0) {
                return bad(format!(
                    "{key} = 0 would train or test on no images; give at least 1, or leave it out for the whole split (--{})",
                    key.replace('_', "-")
                ));
            }
        }
        if self.model_file.is_none() {
            crate::model::find_model(&self.model)?;
        }
        if let Some(p) = &self.init_from {
            if !p.is_file() {
                return bad(format!(
                    "init_from {}: no such file; give the .safetensors file `dyrep export --format safetensors` wrote",
                    p.display()
                ));
            }
        }
        if let Some(t) = &self.augment.imagenet {
            t.validate().map_err(RuntimeError::Config)?;
        }
        if self.mode == Mode::Dyrep {
            self.dyrep.validate()?;
        }
        Ok(())
    }

    /// The architecture file of the run, read and checked (`None` for a registered model).
    pub fn read_model_file(&self) -> Result<Option<crate::model::ArchFile>> {
        self.model_file
            .as_deref()
            .map(crate::model::ArchFile::read)
            .transpose()
    }

    /// How to load the run's data (threads, cache).
    pub fn load_options(&self) -> crate::data::LoadOptions {
        crate::data::LoadOptions {
            imagenet: self.augment.imagenet.clone(),
            skip_bad_images: self.skip_bad_images,
            max_image_pixels: self.max_image_pixels,
            memory_budget: 0,
            workers: self.workers,
            cache_dir: match (self.cache, &self.cache_dir) {
                (false, _) => None,
                (true, Some(dir)) => Some(dir.clone()),
                (true, None) => crate::data::cache::default_dir(),
            },
        }
    }

    /// The config as TOML.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self)
            .map_err(|e| RuntimeError::Config(format!("cannot write config: {e}")))
    }

    /// Reads a TOML config file. Syntax errors name the line; unknown keys are errors naming
    /// the key and the nearest valid one.
    pub fn from_toml_file(path: &Path) -> Result<TrainConfig> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let at = |e: &toml::de::Error| match e.span() {
            Some(span) => format!(
                "{}:{}",
                path.display(),
                text[..span.start.min(text.len())].matches('\n').count() + 1
            ),
            None => path.display().to_string(),
        };
        let table: toml::Table = toml::from_str(&text).map_err(|e| {
            RuntimeError::Config(format!("{}: invalid TOML: {}", at(&e), e.message().trim()))
        })?;
        check_config_keys(&table, "", &Self::known_keys(), path)?;
        toml::from_str(&text)
            .map_err(|e| RuntimeError::Config(format!("{}: {}", at(&e), e.message().trim())))
    }

    /// Every key a config file may hold, dotted for sections (`dyrep.scorer`).
    pub fn known_keys() -> Vec<String> {
        // Every optional setting filled in, so that the serialised config names every key
        // (nested tables such as `[augment.imagenet]` included).
        let defaults = TrainConfig::default();
        let full = TrainConfig {
            train_limit: Some(0),
            test_limit: Some(0),
            init_from: Some(PathBuf::new()),
            model_file: Some(PathBuf::new()),
            cache_dir: Some(PathBuf::new()),
            augment: crate::data::loader::Augment {
                imagenet: Some(Default::default()),
                ..defaults.augment.clone()
            },
            ..defaults
        };
        let mut keys = Vec::new();
        if let Ok(t) = toml::Table::try_from(full) {
            collect_keys(&t, "", &mut keys);
        }
        keys
    }
}

fn collect_keys(t: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in t {
        let full = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if let toml::Value::Table(sub) = v {
            out.push(full.clone());
            collect_keys(sub, &full, out);
        } else {
            out.push(full);
        }
    }
}

/// Fails on the first key of `t` not in `known`, suggesting the closest known key.
fn check_config_keys(t: &toml::Table, prefix: &str, known: &[String], path: &Path) -> Result<()> {
    for (k, v) in t {
        let full = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if !known.contains(&full) {
            let nearest = dyrep_api::registry::nearest(&full, known.iter().map(String::as_str))
                .map(|c| format!(" (did you mean `{c}`?)"))
                .unwrap_or_default();
            return Err(RuntimeError::Config(format!(
                "{}: unknown key `{full}`{nearest}; `dyrep train --help` lists the settings (config keys are the flag names with _)",
                path.display()
            )));
        }
        if let toml::Value::Table(sub) = v {
            check_config_keys(sub, &full, known, path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_settings_and_nested_tables_are_known_keys() {
        let keys = TrainConfig::known_keys();
        for k in [
            "epochs",
            "train_limit",
            "test_limit",
            "init_from",
            "model_file",
            "cache_dir",
            "augment.imagenet",
            "augment.imagenet.size",
            "augment.imagenet.crop_fraction",
            "dyrep.max_grow_epochs",
            "dyrep.scorer",
            "baseline_init",
        ] {
            assert!(
                keys.iter().any(|x| x == k),
                "`{k}` is not a known key: {keys:?}"
            );
        }
    }

    /// A config file that leaves `baseline_init` out gets the reference's init; `fan_out` with
    /// DyRep's form (which has no use for it) is refused, naming the setting.
    #[test]
    fn baseline_init_defaults_to_pytorch_and_needs_the_reference_form() {
        let cfg: TrainConfig = toml::from_str("mode = \"dbb\"").unwrap();
        assert_eq!(cfg.baseline_init, BaselineInit::Pytorch);
        let cfg: TrainConfig =
            toml::from_str("mode = \"dbb\"\nbaseline_init = \"fan_out\"").unwrap();
        cfg.validate().unwrap();
        let cfg: TrainConfig = toml::from_str(
            "mode = \"dbb\"\nbaseline_form = \"dyrep\"\nbaseline_init = \"fan_out\"",
        )
        .unwrap();
        let e = cfg.validate().unwrap_err().to_string();
        assert!(
            e.contains("baseline_init = \"fan_out\" only applies"),
            "{e}"
        );
    }

    #[test]
    fn a_negative_or_non_finite_warmup_lr_is_refused() {
        for bad_lr in ["-0.1", "nan", "inf"] {
            let cfg: TrainConfig =
                toml::from_str(&format!("warmup_epochs = 1\nwarmup_lr = {bad_lr}")).unwrap();
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains("warmup_lr"), "{bad_lr}: {e}");
        }
        let cfg: TrainConfig = toml::from_str("warmup_epochs = 1\nwarmup_lr = 0.01").unwrap();
        cfg.validate().unwrap();
    }
}
