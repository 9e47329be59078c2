//! Every zoo model written as an architecture file (`examples/models/zoo/<name>.toml`) builds
//! the same parameter shapes (in the same order), the same MACs and bit-identical logits for the
//! same seed as the registered builder — so the file format can describe everything the zoo
//! has, and the two stay in step.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use dyrep_runtime::api::{InitCtx, SeededRng};
use dyrep_runtime::model::{build_model, models, ArchFile, Model, ModelConfig};
use rand::Rng;

fn zoo_file(name: &str) -> ArchFile {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/models/zoo")
        .join(format!("{name}.toml"));
    ArchFile::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn built(cfg: &ModelConfig, seed: u64) -> Model {
    let mut rng = SeededRng::new(seed);
    let mut ctx = InitCtx::new(&mut rng, &Device::Cpu);
    build_model(cfg, &mut ctx).unwrap_or_else(|e| panic!("{}: {e}", cfg.name))
}

#[test]
fn every_zoo_model_round_trips_through_an_architecture_file() {
    dyrep_runtime::ensure_linked();
    let zoo = models();
    assert!(zoo.len() >= 16);
    for entry in zoo {
        let file = zoo_file(entry.name);
        assert_eq!(file.name, entry.name);
        assert_eq!(file.input, Some(entry.default_input), "{}", entry.name);
        // ImageNet-sized models at a small input keep the test quick; width 0.5 checks that the
        // file scales its channels as the builder does.
        let input = match entry.default_input {
            [c, h, _] if h > 64 => [c, 64, 64],
            other => other,
        };
        for width in [1.0, 0.5] {
            let named = ModelConfig::named(entry.name, input, 10, width);
            let from_file = ModelConfig {
                file: Some(file.clone()),
                ..named.clone()
            };
            let (a, b) = (built(&named, 7), built(&from_file, 7));
            // In build order (names may differ: a file names its stem conv `conv1.conv`).
            let shapes = |m: &Model| -> Vec<Vec<usize>> {
                let mut v = Vec::new();
                m.visit_tensors(&mut |_, t, _| v.push(t.as_tensor().dims().to_vec()));
                v
            };
            assert_eq!(shapes(&a), shapes(&b), "{} at width {width}", entry.name);
            assert_eq!(a.macs().unwrap(), b.macs().unwrap(), "{}", entry.name);
            assert_eq!(a.param_count(), b.param_count(), "{}", entry.name);
            let mut rng = SeededRng::new(3);
            let n = 2 * input[0] * input[1] * input[2];
            let data: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let x = Tensor::from_vec(data, (2, input[0], input[1], input[2]), &Device::Cpu)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            for train in [false, true] {
                let (ya, yb) = (
                    a.forward_t(&x, train).unwrap(),
                    b.forward_t(&x, train).unwrap(),
                );
                let diff = (ya - yb)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert_eq!(diff, 0.0, "{} (train {train}): logits differ", entry.name);
            }
        }
    }
}

#[test]
fn a_file_model_survives_its_arch_json() {
    dyrep_runtime::ensure_linked();
    let file = zoo_file("resnet-tiny");
    let cfg = ModelConfig {
        file: Some(file),
        ..ModelConfig::named("resnet-tiny", [1, 28, 28], 10, 1.0)
    };
    let m = built(&cfg, 1);
    let json = serde_json::to_string(&m.arch()).unwrap();
    let arch = serde_json::from_str(&json).unwrap();
    let mut rng = SeededRng::new(99);
    let mut ctx = InitCtx::new(&mut rng, &Device::Cpu);
    let back = Model::from_arch(&arch, &mut ctx).unwrap();
    assert_eq!(back.config, m.config);
    assert_eq!(back.param_count(), m.param_count());
}
