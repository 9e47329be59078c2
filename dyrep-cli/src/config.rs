//! `dyrep train`'s settings: a config file (`-c`), then the flags on top of it, then the
//! checks that span both (dyrep-only flags in another mode).

use anyhow::Result;

use dyrep_runtime::train::{BaselineForm, Mode, TrainConfig};

use crate::args::{TrainArgs, DYREP_HEADING, RUN_HEADING};

impl TrainArgs {
    /// The given flags that set the run's config (what `--resume` refuses: the run keeps its
    /// saved config).
    pub(crate) fn config_flags(&self) -> Vec<&str> {
        self.given
            .iter()
            .filter(|f| f.heading.as_deref() != Some(RUN_HEADING))
            .map(|f| f.long.as_str())
            .collect()
    }

    /// The given flags that only mean something in dyrep mode.
    fn dyrep_flags(&self) -> Vec<&str> {
        self.given
            .iter()
            .filter(|f| f.heading.as_deref() == Some(DYREP_HEADING))
            .map(|f| f.long.as_str())
            .collect()
    }

    pub(crate) fn resolve(&self) -> Result<TrainConfig> {
        let mut cfg = match &self.config {
            Some(p) => TrainConfig::from_toml_file(p)?,
            None => TrainConfig::default(),
        };
        if let Some(v) = &self.model {
            cfg.model = v.clone();
            cfg.model_file = None;
        }
        if let Some(v) = &self.model_file {
            cfg.model_file = Some(v.clone());
        }
        // A file model is named by its file (the run directory's default name uses it).
        if let Some(file) = cfg.read_model_file()? {
            cfg.model = file.name;
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
        if let Some(v) = self.warmup_epochs {
            cfg.warmup_epochs = v;
        }
        if let Some(v) = self.warmup_lr {
            cfg.warmup_lr = v;
        }
        if self.warmup_per_step {
            cfg.warmup_per_step = true;
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
        self.apply_data_flags(&mut cfg);
        if let Some(v) = self.baseline_form {
            cfg.baseline_form = v;
        }
        if let Some(v) = self.baseline_init {
            cfg.baseline_init = v;
        }
        if let Some(v) = self.block_form {
            cfg.block_form = v;
        }
        self.apply_dyrep_flags(&mut cfg.dyrep);
        self.check_mode_flags(&cfg)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The flags of the data pipeline (`image_size`, workers, cache, bad images) and of
    /// data-parallel runs.
    fn apply_data_flags(&self, cfg: &mut TrainConfig) {
        if let Some(size) = self.image_size {
            let mut t = cfg.augment.imagenet.clone().unwrap_or_default();
            t.size = size;
            cfg.augment.imagenet = Some(t);
        }
        if self.skip_bad_images {
            cfg.skip_bad_images = true;
        }
        if self.dist_same_data {
            cfg.dist_same_data = true;
        }
        if self.sync_bn {
            cfg.sync_bn = true;
        }
        if let Some(v) = self.workers {
            cfg.workers = v;
        }
        if let Some(v) = &self.cache_dir {
            cfg.cache_dir = Some(v.clone());
        }
        if self.no_cache {
            cfg.cache = false;
        }
    }

    /// The flags of the `[dyrep]` table.
    fn apply_dyrep_flags(&self, d: &mut dyrep_runtime::dynamics::DyrepConfig) {
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
        if let Some(v) = self.preserve {
            d.preserve = v;
        }
        if self.no_dep {
            d.dep = false;
        }
    }

    /// Refuses flags that do not apply to the resolved mode.
    fn check_mode_flags(&self, cfg: &TrainConfig) -> Result<()> {
        let dyrep_flags = self.dyrep_flags();
        if cfg.mode != Mode::Dyrep && !dyrep_flags.is_empty() {
            let verb = if dyrep_flags.len() == 1 {
                "applies"
            } else {
                "apply"
            };
            anyhow::bail!(
                "{} only {verb} to --mode dyrep (the mode is `{}`)",
                dyrep_flags.join(", "),
                cfg.mode.as_str()
            );
        }
        for (flag, given) in [
            ("--baseline-form", self.baseline_form.is_some()),
            ("--baseline-init", self.baseline_init.is_some()),
        ] {
            if given && !matches!(cfg.mode, Mode::Repvgg | Mode::Dbb) {
                anyhow::bail!(
                    "{flag} only applies to --mode repvgg or dbb (the mode is `{}`)",
                    cfg.mode.as_str()
                );
            }
        }
        if self.baseline_init.is_some() && cfg.baseline_form != BaselineForm::Reference {
            anyhow::bail!(
                "--baseline-init only applies to --baseline-form reference (DyRep's form starts \
                 each block equal to the conv)"
            );
        }
        Ok(())
    }
}
