//! Every config file the repository ships (`configs/**/*.toml`) parses, has only known keys and
//! passes validation, so a recipe cannot rot when a setting is renamed.

use std::path::{Path, PathBuf};

use dyrep_runtime::dynamics::Period;
use dyrep_runtime::train::TrainConfig;

fn toml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            toml_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "toml") {
            out.push(p);
        }
    }
}

#[test]
fn every_shipped_config_parses_and_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut files = Vec::new();
    toml_files(&root, &mut files);
    assert!(!files.is_empty(), "no config under {}", root.display());
    for f in files {
        let cfg =
            TrainConfig::from_toml_file(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        cfg.validate()
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
}

#[test]
fn the_paper_cifar_recipe_has_the_reference_values() {
    let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/paper/cifar10-vgg16.toml");
    let c = TrainConfig::from_toml_file(&f).unwrap();
    assert_eq!(
        (c.model.as_str(), c.epochs, c.batch_size),
        ("vgg16", 600, 128)
    );
    assert_eq!((c.lr, c.min_lr), (0.1, 1e-6));
    assert!(!c.sgd.nesterov && c.sgd.decay_bn_and_bias && c.sgd.weight_decay == 1e-4);
    assert_eq!(
        (c.augment.crop_padding, c.augment.hflip, c.augment.cutout),
        (4, true, 16)
    );
    assert_eq!(
        (c.dyrep.grow_interval, c.dyrep.max_grow_epochs),
        (Period::Epochs(15.0), Period::Epochs(500.0))
    );
}

#[test]
fn the_paper_imagenet_recipes_have_the_reference_values() {
    // (file, model, epochs, weight decay, last growth epoch): the reference's resnet.yaml and
    // mbv1.yaml; everything else is shared.
    for (file, model, epochs, wd, max_grow) in [
        ("imagenet-resnet18", "resnet18-imagenet", 120, 1e-4, 100.0),
        ("imagenet-resnet50", "resnet50-imagenet", 120, 1e-4, 100.0),
        ("imagenet-mobilenet-v1", "mobilenet-v1", 90, 4e-5, 70.0),
    ] {
        let f = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../configs/paper/{file}.toml"));
        let c = TrainConfig::from_toml_file(&f).unwrap();
        assert_eq!(
            (c.model.as_str(), c.epochs, c.batch_size),
            (model, epochs, 32),
            "{file}"
        );
        assert_eq!((c.lr, c.min_lr, c.warmup_epochs), (0.1, 1e-7, 0), "{file}");
        assert!(c.sgd.nesterov && !c.sgd.decay_bn_and_bias, "{file}");
        assert_eq!((c.sgd.momentum, c.sgd.weight_decay), (0.9, wd), "{file}");
        assert_eq!(c.label_smoothing, 0.0, "{file}");
        let t = c
            .augment
            .imagenet
            .as_ref()
            .unwrap_or_else(|| panic!("{file}: no [augment.imagenet]"));
        assert_eq!(
            (t.size, t.scale, t.hflip),
            (224, (0.08, 1.0), true),
            "{file}"
        );
        assert_eq!((t.color_jitter, t.crop_fraction), (0.06, 0.875), "{file}");
        assert_eq!(
            (c.dyrep.grow_interval, c.dyrep.max_grow_epochs),
            (Period::Epochs(5.0), Period::Epochs(max_grow)),
            "{file}"
        );
    }
}
