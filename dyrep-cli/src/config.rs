//! `dyrep train`'s settings: a config file (`-c`), then the flags on top of it, then the
//! checks that span both (dyrep-only flags in another mode).

use anyhow::Result;

use dyrep_runtime::train::{Mode, TrainConfig};

use crate::args::TrainArgs;

/// Flags that only mean something in dyrep mode.
const DYREP_FLAGS: [&str; 10] = [
    "--ops",
    "--scorer",
    "--grow-interval",
    "--max-grow-epochs",
    "--grow-topk",
    "--gamma0",
    "--calib-batches",
    "--cut-threshold",
    "--max-depth",
    "--no-dep",
];

impl TrainArgs {
    pub(crate) fn config_flags(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let pairs: [(&'static str, bool); 24] = [
            ("--baseline-form", self.baseline_form.is_some()),
            ("--ops", self.ops.is_some()),
            ("--scorer", self.scorer.is_some()),
            ("--grow-interval", self.grow_interval.is_some()),
            ("--max-grow-epochs", self.max_grow_epochs.is_some()),
            ("--grow-topk", self.grow_topk.is_some()),
            ("--gamma0", self.gamma0.is_some()),
            ("--calib-batches", self.calib_batches.is_some()),
            ("--cut-threshold", self.cut_threshold.is_some()),
            ("--max-depth", self.max_depth.is_some()),
            ("--no-dep", self.no_dep),
            ("--config", self.config.is_some()),
            ("--model", self.model.is_some()),
            ("--data", self.data.is_some()),
            ("--mode", self.mode.is_some()),
            ("--epochs", self.epochs.is_some()),
            ("--batch-size", self.batch_size.is_some()),
            ("--lr", self.lr.is_some()),
            ("--seed", self.seed.is_some()),
            ("--width", self.width.is_some()),
            ("--train-limit", self.train_limit.is_some()),
            ("--test-limit", self.test_limit.is_some()),
            ("--force", self.force),
            ("--init-from", self.init_from.is_some()),
        ];
        for (name, set) in pairs {
            if set {
                v.push(name);
            }
        }
        v
    }

    pub(crate) fn resolve(&self) -> Result<TrainConfig> {
        let mut cfg = match &self.config {
            Some(p) => TrainConfig::from_toml_file(p)?,
            None => TrainConfig::default(),
        };
        if let Some(v) = &self.model {
            cfg.model = v.clone();
        }
        if let Some(v) = &self.data {
            cfg.data = v.clone();
        }
        if let Some(v) = &self.mode {
            cfg.mode = Mode::parse(v)?;
        }
        if let Some(v) = self.epochs {
            cfg.epochs = v;
        }
        if let Some(v) = self.batch_size {
            cfg.batch_size = v;
        }
        if let Some(v) = self.lr {
            cfg.lr = v;
        }
        if let Some(v) = self.seed {
            cfg.seed = v;
        }
        if let Some(v) = self.width {
            cfg.width = v;
        }
        if self.train_limit.is_some() {
            cfg.train_limit = self.train_limit;
        }
        if self.test_limit.is_some() {
            cfg.test_limit = self.test_limit;
        }
        if self.init_from.is_some() {
            cfg.init_from = self.init_from.clone();
        }
        if let Some(v) = self.baseline_form {
            cfg.baseline_form = v;
        }
        let d = &mut cfg.dyrep;
        if let Some(v) = &self.ops {
            d.ops = v
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(v) = &self.scorer {
            d.scorer = v.clone();
        }
        if let Some(v) = self.grow_interval {
            d.grow_interval = v;
        }
        if let Some(v) = self.max_grow_epochs {
            d.max_grow_epochs = v;
        }
        if let Some(v) = self.grow_topk {
            d.grow_topk = v;
        }
        if let Some(v) = self.gamma0 {
            d.gamma0 = v;
        }
        if let Some(v) = self.calib_batches {
            d.calib_batches = v;
        }
        if let Some(v) = self.cut_threshold {
            d.cut_threshold = v;
        }
        if let Some(v) = self.max_depth {
            d.max_depth = v;
        }
        if self.no_dep {
            d.dep = false;
        }
        let dyrep_flags: Vec<&str> = self
            .config_flags()
            .into_iter()
            .filter(|f| DYREP_FLAGS.contains(f))
            .collect();
        if cfg.mode != Mode::Dyrep && !dyrep_flags.is_empty() {
            anyhow::bail!(
                "{} only apply to --mode dyrep (the mode is `{}`)",
                dyrep_flags.join(", "),
                cfg.mode.as_str()
            );
        }
        if self.baseline_form.is_some() && !matches!(cfg.mode, Mode::Repvgg | Mode::Dbb) {
            anyhow::bail!(
                "--baseline-form only applies to --mode repvgg or dbb (the mode is `{}`)",
                cfg.mode.as_str()
            );
        }
        cfg.validate()?;
        Ok(cfg)
    }
}
