//! End-to-end workflow of the `dyrep` binary in a temp dir on the bundled data ("Done
//! when"): train (config file + flags) → inspect → fuse → export (safetensors and ONNX) → eval →
//! compare; the ONNX file run by an independent reader (tract-onnx) against dyrep's own logits;
//! `curves.svg` parsed as XML with its series checked; `--init-from` pretrained plain weights;
//! config precedence; and the bad-input list (each a one- or two-line error, exit 1, no panic),
//! Ctrl-C and SIGKILL during training leaving a loadable checkpoint.

mod support;

use support::{assert_short_error, metrics_without_times, ok, text};

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn dyrep_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dyrep"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run the dyrep binary")
}

const SMALL: [&str; 8] = [
    "--train-limit",
    "512",
    "--test-limit",
    "128",
    "--batch-size",
    "32",
    "--lr",
    "0.05",
];

fn train(dir: &Path, out: &str, extra: &[&str]) -> Output {
    let mut args = vec!["train", "--out", out];
    args.extend_from_slice(&SMALL);
    args.extend_from_slice(extra);
    dyrep_in(dir, &args)
}

/// A little-endian float32 .npy: (shape, data).
fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..6], b"\x93NUMPY", "{}", path.display());
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    let shape_s = &header[header.find("'shape': (").unwrap() + 10..];
    let shape: Vec<usize> = shape_s[..shape_s.find(')').unwrap()]
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let data: Vec<f32> = b[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(data.len(), shape.iter().product::<usize>());
    (shape, data)
}

/// Runs an ONNX file in tract on `input` [N, C, H, W]; the logits [N, classes].
fn run_onnx(path: &Path, shape: &[usize], input: Vec<f32>) -> (Vec<usize>, Vec<f32>) {
    use tract_onnx::prelude::*;
    let model = tract_onnx::onnx()
        .model_for_path(path)
        .expect("tract reads the ONNX file")
        .with_input_fact(0, f32::fact(shape).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let x: Tensor = tract_ndarray::ArrayD::from_shape_vec(shape.to_vec(), input)
        .unwrap()
        .into();
    let out = model.run(tvec!(x.into())).expect("tract runs the model");
    let view = out[0].to_plain_array_view::<f32>().unwrap();
    (view.shape().to_vec(), view.iter().copied().collect())
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

#[test]
fn train_inspect_fuse_export_eval_compare_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // Config file + flag precedence: the file says 5 epochs and seed 3; the flag says 2 epochs.
    std::fs::write(
        d.join("run.toml"),
        "mode = \"dyrep\"\nepochs = 5\nseed = 3\n[dyrep]\ngrow_interval = 1\ncut_threshold = 0.0\n",
    )
    .unwrap();
    ok(train(d, "dyrep", &["-c", "run.toml", "--epochs", "2"]));
    let resolved = std::fs::read_to_string(d.join("dyrep/config.resolved.toml")).unwrap();
    assert!(resolved.contains("epochs = 2"), "{resolved}");
    assert!(resolved.contains("seed = 3"), "{resolved}");
    assert!(resolved.contains("mode = \"dyrep\""), "{resolved}");
    ok(train(d, "origin", &["--epochs", "2", "--seed", "3"]));

    // curves.svg: valid XML with every series and the grow marked.
    let svg = std::fs::read_to_string(d.join("dyrep/curves.svg")).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("curves.svg is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let texts: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text().map(|t| t.trim().to_string()))
        .collect();
    for series in [
        "train loss",
        "test loss",
        "train acc",
        "test acc",
        "params (M)",
        "MACs (M)",
        "grow",
    ] {
        assert!(
            texts.iter().any(|t| t == series),
            "no `{series}` in {texts:?}"
        );
    }
    // Every line series has one point per epoch (2).
    let two_point_lines = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline"))
        .filter(|n| {
            n.attribute("points")
                .unwrap_or("")
                .split_whitespace()
                .count()
                == 2
        })
        .count();
    assert!(
        two_point_lines >= 6,
        "{two_point_lines} two-point polylines"
    );

    // inspect: the grown block with its branches and importances.
    let o = ok(dyrep_in(d, &["inspect", "dyrep"]));
    let t = text(&o);
    assert!(t.contains("block of"), "{t}");
    assert!(t.contains("(main)") && t.contains("importance"), "{t}");
    let o = ok(dyrep_in(
        d,
        &["inspect", "dyrep/checkpoints/last", "--json"],
    ));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["blocks"].as_u64().unwrap() >= 1, "{v}");

    // fuse, then export both formats from the fused checkpoint.
    ok(dyrep_in(
        d,
        &[
            "fuse",
            "--checkpoint",
            "dyrep",
            "--out",
            "fused",
            "--limit",
            "128",
        ],
    ));
    ok(dyrep_in(
        d,
        &[
            "export",
            "--checkpoint",
            "fused",
            "--format",
            "onnx",
            "--out",
            "net.onnx",
        ],
    ));
    let o = ok(dyrep_in(
        d,
        &[
            "export",
            "--checkpoint",
            "dyrep",
            "--format",
            "safetensors",
            "--out",
            "net.safetensors",
            "--json",
        ],
    ));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["naming"], "torchvision_vgg");
    let arch: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("net.json")).unwrap()).unwrap();
    assert_eq!(arch["model"], "vgg-tiny");
    assert_eq!(arch["layers"][0]["weight"], "features.0.weight");
    assert_eq!(arch["layers"][0]["batch_norm"], "features.1");

    // eval writes the inputs and logits; tract on the ONNX file matches within 1e-4 relative.
    ok(dyrep_in(
        d,
        &[
            "eval",
            "--checkpoint",
            "dyrep",
            "--limit",
            "64",
            "--logits-out",
            "logits.npy",
            "--inputs-out",
            "inputs.npy",
        ],
    ));
    let (xs, x) = read_npy(&d.join("inputs.npy"));
    let (ls, logits) = read_npy(&d.join("logits.npy"));
    assert_eq!(xs, vec![64, 1, 28, 28]);
    let (os, onnx) = run_onnx(&d.join("net.onnx"), &xs, x);
    assert_eq!(os, ls);
    let rel = rel_err(&onnx, &logits);
    assert!(rel <= 1e-4, "ONNX vs dyrep logits relative error {rel:e}");

    // compare: the table has both runs; without --svg no chart appears in the working
    // directory (it used to write compare.svg there unasked); with it, the chart is written.
    let o = ok(dyrep_in(d, &["compare", "origin", "dyrep"]));
    assert!(!text(&o).contains("chart:"), "{}", text(&o));
    assert!(
        !d.join("compare.svg").exists(),
        "compare wrote a chart nobody asked for"
    );
    let o = ok(dyrep_in(
        d,
        &["compare", "origin", "dyrep", "--svg", "cmp.svg"],
    ));
    let t = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(t.contains("| run | model | mode |"), "{t}");
    assert!(t.contains("| origin | vgg-tiny | origin | 2 |"), "{t}");
    assert!(t.contains("| dyrep | vgg-tiny | dyrep | 2 |"), "{t}");
    roxmltree::Document::parse(&std::fs::read_to_string(d.join("cmp.svg")).unwrap())
        .expect("compare chart is well-formed XML");
    let o = ok(dyrep_in(
        d,
        &["compare", "origin", "dyrep", "--svg", "cmp.svg", "--json"],
    ));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert!(rows[1]["grows"].as_u64().unwrap() >= 1, "{rows}");

    // plot re-draws the curves on demand.
    std::fs::remove_file(d.join("origin/curves.svg")).unwrap();
    ok(dyrep_in(d, &["plot", "origin"]));
    assert!(d.join("origin/curves.svg").is_file());

    // --init-from: DyRep starts from the exported plain weights (exact reloading is a unit test
    // of dyrep-runtime's export module); a file of another model is refused with the key lists.
    let o = ok(train(
        d,
        "init",
        &[
            "--mode",
            "dyrep",
            "--epochs",
            "1",
            "--init-from",
            "net.safetensors",
        ],
    ));
    assert!(text(&o).contains("from net.safetensors"), "{}", text(&o));
    let resolved = std::fs::read_to_string(d.join("init/config.resolved.toml")).unwrap();
    assert!(
        resolved.contains("init_from = \"net.safetensors\""),
        "{resolved}"
    );
    let o = train(
        d,
        "wrong",
        &[
            "--model",
            "resnet-tiny",
            "--epochs",
            "1",
            "--init-from",
            "net.safetensors",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("missing keys: ") && t.contains("unexpected keys: "),
        "{t}"
    );
}

/// Every bad input: exit 1, an `error:` line naming the culprit, at most two lines, no panic.
#[test]
fn bad_inputs_give_one_or_two_line_errors_and_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(train(d, "run", &["--epochs", "1"]));
    std::fs::write(d.join("syntax.toml"), "epochs = 2\nmodel = \n").unwrap();
    std::fs::write(d.join("unknown.toml"), "epoch = 2\n").unwrap();
    std::fs::write(d.join("nested.toml"), "[dyrep]\nscorre = \"snip\"\n").unwrap();
    std::fs::write(d.join("a_file"), "not a directory").unwrap();
    // A corrupt copy of the checkpoint.
    let bad = d.join("corrupt");
    std::fs::create_dir_all(&bad).unwrap();
    for f in ["arch.json", "state.json", "optim.safetensors"] {
        std::fs::copy(d.join("run/checkpoints/last").join(f), bad.join(f)).unwrap();
    }
    let st = std::fs::read(d.join("run/checkpoints/last/model.safetensors")).unwrap();
    std::fs::write(bad.join("model.safetensors"), &st[..st.len() / 2]).unwrap();

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["eval", "--checkpoint", "nope"], "nope"),
        (vec!["inspect", "nope"], "nope"),
        (
            vec![
                "export",
                "--checkpoint",
                "nope",
                "--format",
                "onnx",
                "--out",
                "x.onnx",
            ],
            "nope",
        ),
        (vec!["compare", "nope"], "nope"),
        (vec!["plot", "nope"], "nope"),
        (vec!["eval", "--checkpoint", "corrupt"], "model.safetensors"),
        (
            vec![
                "export",
                "--checkpoint",
                "corrupt",
                "--format",
                "onnx",
                "--out",
                "x.onnx",
            ],
            "model.safetensors",
        ),
        (vec!["train", "-c", "syntax.toml"], "syntax.toml:2"),
        (vec!["train", "-c", "unknown.toml"], "did you mean `epochs`"),
        (
            vec!["train", "-c", "nested.toml"],
            "did you mean `dyrep.scorer`",
        ),
        (vec!["train", "-c", "missing.toml"], "missing.toml"),
        (
            vec!["train", "--model", "vgg-tinny"],
            "did you mean `vgg-tiny`",
        ),
        (
            vec!["train", "--mode", "dyrep", "--scorer", "synflo"],
            "did you mean `synflow`",
        ),
        (
            vec!["train", "--mode", "dyrep", "--ops", "conv1x2"],
            "conv1x1",
        ),
        (
            vec!["train", "--data", "cifar10:/nonexistent"],
            "/nonexistent",
        ),
        (
            vec!["train", "--init-from", "none.safetensors"],
            "none.safetensors",
        ),
        (
            vec!["train", "--resume", "run", "--epochs", "3"],
            "--epochs",
        ),
        (
            vec!["train", "--mode", "origin", "--grow-interval", "2"],
            "--grow-interval",
        ),
        (
            vec![
                "train",
                "--out",
                "a_file/run",
                "--epochs",
                "1",
                "--train-limit",
                "64",
            ],
            "a_file",
        ),
        (
            vec![
                "export",
                "--checkpoint",
                "run",
                "--format",
                "onnx",
                "--out",
                "no/dir/x.onnx",
            ],
            "no/dir",
        ),
        (
            vec![
                "export",
                "--checkpoint",
                "run",
                "--format",
                "tflite",
                "--out",
                "x",
            ],
            "tflite",
        ),
        (vec!["train", "-q", "-v"], "--quiet"),
    ];
    for (args, needle) in cases {
        let o = dyrep_in(d, &args);
        assert_short_error(&o, needle, &format!("{args:?}"));
    }
    // Nothing was written in place of the failed outputs.
    assert!(!d.join("x.onnx").exists());
    assert!(d.join("run/checkpoints/last/arch.json").is_file());
}

fn spawn_train(dir: &Path, out: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_dyrep"))
        .current_dir(dir)
        .args([
            "train",
            "--out",
            out,
            "--epochs",
            "40",
            "--train-limit",
            "1024",
        ])
        .args(["--test-limit", "64", "--batch-size", "32"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dyrep train")
}

fn wait_for(path: &Path, limit: Duration) {
    let t0 = Instant::now();
    while !path.is_file() {
        assert!(t0.elapsed() < limit, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &std::process::Child, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn ctrl_c_stops_cleanly_and_the_run_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let child = spawn_train(d, "run");
    let state = d.join("run/checkpoints/last/state.json");
    wait_for(&state, Duration::from_secs(120));
    signal(&child, "-INT");
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(130), "{}", text(&o));
    assert!(err.contains("--resume"), "{err}");
    // The checkpoint is complete and continues.
    ok(dyrep_in(
        d,
        &["eval", "--checkpoint", "run", "--limit", "32"],
    ));
    let o = ok(dyrep_in(
        d,
        &["train", "--resume", "run", "--stop-after", "1"],
    ));
    assert!(text(&o).contains("resume"), "{}", text(&o));
}

/// Schedulers stop jobs with SIGTERM (and SIGHUP when a session ends): like Ctrl-C, training
/// stops at the next step with its checkpoint intact, and says so once.
#[test]
fn sigterm_and_sighup_stop_like_ctrl_c() {
    for sig in ["-TERM", "-HUP"] {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let child = spawn_train(d, "run");
        wait_for(
            &d.join("run/checkpoints/last/state.json"),
            Duration::from_secs(120),
        );
        signal(&child, sig);
        let o = child.wait_with_output().unwrap();
        let all = text(&o);
        assert_eq!(o.status.code(), Some(130), "{sig}: {all}");
        assert_eq!(
            all.matches("interrupted in epoch").count(),
            1,
            "{sig}: {all}"
        );
        ok(dyrep_in(
            d,
            &["train", "--resume", "run", "--stop-after", "1"],
        ));
    }
}

/// A run directory that a process trains in is locked: a second `--resume` of it, or a
/// `--force` start over it, is refused instead of writing beside the first or deleting it.
#[test]
fn a_run_in_progress_is_neither_resumed_twice_nor_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut child = spawn_train(d, "run");
    wait_for(
        &d.join("run/checkpoints/last/state.json"),
        Duration::from_secs(120),
    );
    let o = dyrep_in(d, &["train", "--resume", "run"]);
    assert_short_error(&o, "in use", "a second resume");
    let o = dyrep_in(
        d,
        &[
            "train",
            "--out",
            "run",
            "--force",
            "--epochs",
            "1",
            "--train-limit",
            "64",
        ],
    );
    assert_short_error(&o, "in use", "--force over a running run");
    assert!(d.join("run/checkpoints/last/arch.json").is_file());
    child.kill().unwrap();
    let _ = child.wait();
    // Killed, the lock is gone with the process.
    ok(dyrep_in(
        d,
        &["train", "--resume", "run", "--stop-after", "1"],
    ));
}

#[test]
fn sigkill_during_training_leaves_a_loadable_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut child = spawn_train(d, "run");
    let state = d.join("run/checkpoints/last/state.json");
    wait_for(&state, Duration::from_secs(120));
    // Kill the first run, then resumed runs at several points: some land in a checkpoint write.
    child.kill().unwrap();
    let _ = child.wait();
    ok(dyrep_in(
        d,
        &["eval", "--checkpoint", "run", "--limit", "32"],
    ));
    for delay_ms in [300u64, 650, 900, 1400] {
        let mut c = Command::new(env!("CARGO_BIN_EXE_dyrep"))
            .current_dir(d)
            .args(["-q", "train", "--resume", "run"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        c.kill().unwrap();
        let _ = c.wait();
        ok(dyrep_in(
            d,
            &["eval", "--checkpoint", "run", "--limit", "32"],
        ));
    }
}

/// ResNet (residual Add, strided 1×1 downsample, torchvision names), RepVGG (timm deploy names,
/// BN folded into the conv bias), MobileNet (depthwise) and the ImageNet ResNet stem (padded
/// max pool), trained with and without static branches, exported to ONNX and safetensors:
/// tract's logits match dyrep's, and the safetensors file reloads with --init-from.
#[test]
fn resnet_and_repvgg_export_to_onnx_that_matches_dyrep() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for (model, mode, key) in [
        ("resnet-tiny", "dbb", "layer2.0.downsample.0.weight"),
        ("repvgg-a0", "repvgg", "stages.0.0.reparam_conv.bias"),
        // Depthwise convs (ONNX `group`) and dyrep's own names.
        ("mobilenet-v1", "dbb", "features.1.conv.weight"),
        // ImageNet stem: 7×7 stride-2 conv and a padded 3×3 stride-2 max pool.
        ("resnet18-imagenet", "origin", "\"layer4.1.bn2\""),
    ] {
        ok(train(
            d,
            model,
            &[
                "--model", model, "--mode", mode, "--epochs", "1", "--width", "0.25",
            ],
        ));
        let onnx = format!("{model}.onnx");
        let st = format!("{model}.safetensors");
        ok(dyrep_in(
            d,
            &[
                "export",
                "--checkpoint",
                model,
                "--format",
                "onnx",
                "--out",
                &onnx,
            ],
        ));
        ok(dyrep_in(
            d,
            &[
                "export",
                "--checkpoint",
                model,
                "--format",
                "safetensors",
                "--out",
                &st,
            ],
        ));
        let arch = std::fs::read_to_string(d.join(format!("{model}.json"))).unwrap();
        assert!(arch.contains(key), "{model}: no {key} in {arch}");
        let (inputs, logits) = (format!("{model}-x.npy"), format!("{model}-y.npy"));
        ok(dyrep_in(
            d,
            &[
                "eval",
                "--checkpoint",
                model,
                "--limit",
                "40",
                "--logits-out",
                &logits,
                "--inputs-out",
                &inputs,
            ],
        ));
        let (xs, x) = read_npy(&d.join(&inputs));
        let (_, y) = read_npy(&d.join(&logits));
        let (_, out) = run_onnx(&d.join(&onnx), &xs, x);
        let rel = rel_err(&out, &y);
        assert!(rel <= 1e-4, "{model}: ONNX vs dyrep relative error {rel:e}");
        ok(train(
            d,
            &format!("{model}-init"),
            &[
                "--model",
                model,
                "--width",
                "0.25",
                "--epochs",
                "1",
                "--init-from",
                &st,
            ],
        ));
    }
}

/// The user's own network (`examples/models/my-cnn.toml`, with an average pool added): trained
/// in dyrep mode from an architecture file, then — with the file deleted — resumed, fused,
/// inspected, evaluated and exported (ONNX run by tract against dyrep's logits; safetensors
/// under dyrep's own names with the layer list in the JSON), and the export loads back with
/// `--init-from`.
#[test]
fn a_model_file_trains_resumes_fuses_and_exports_without_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models/my-cnn.toml");
    let net = std::fs::read_to_string(shipped).unwrap().replace(
        "[[layer]]\nkind = \"global_avg_pool\"",
        "[[layer]]\nkind = \"avg_pool\"\nkernel = 2\n\n[[layer]]\nkind = \"global_avg_pool\"",
    );
    std::fs::write(d.join("net.toml"), &net).unwrap();
    let dyrep_flags = [
        "--model-file",
        "net.toml",
        "--mode",
        "dyrep",
        "--epochs",
        "2",
        "--grow-interval",
        "0.5",
    ];
    let mut first = dyrep_flags.to_vec();
    first.extend(["--stop-after", "1"]);
    ok(train(d, "mine", &first));
    assert_eq!(
        std::fs::read_to_string(d.join("mine/model.toml")).unwrap(),
        net
    );
    std::fs::remove_file(d.join("net.toml")).unwrap();
    let resumed = ok(dyrep_in(d, &["train", "--resume", "mine"]));
    assert!(
        text(&resumed).contains("done: final test acc"),
        "{}",
        text(&resumed)
    );
    let summary = std::fs::read_to_string(d.join("mine/summary.json")).unwrap();
    assert!(summary.contains("\"model\": \"my-cnn\""), "{summary}");
    assert!(summary.contains("\"grows\": "), "{summary}");
    ok(dyrep_in(
        d,
        &["fuse", "--checkpoint", "mine", "--out", "mine-fused"],
    ));
    let tree = ok(dyrep_in(d, &["inspect", "mine"]));
    assert!(text(&tree).contains("features.0.conv"), "{}", text(&tree));
    ok(dyrep_in(
        d,
        &[
            "export",
            "--checkpoint",
            "mine",
            "--format",
            "onnx",
            "--out",
            "mine.onnx",
        ],
    ));
    ok(dyrep_in(
        d,
        &[
            "export",
            "--checkpoint",
            "mine",
            "--format",
            "safetensors",
            "--out",
            "mine.safetensors",
        ],
    ));
    let arch = std::fs::read_to_string(d.join("mine.json")).unwrap();
    for key in [
        "\"model\": \"my-cnn\"",
        "layer1.0.conv1",
        "avg_pool",
        "features.3.pw.conv",
    ] {
        assert!(arch.contains(key), "no {key} in {arch}");
    }
    ok(dyrep_in(
        d,
        &[
            "eval",
            "--checkpoint",
            "mine-fused",
            "--limit",
            "40",
            "--logits-out",
            "y.npy",
            "--inputs-out",
            "x.npy",
        ],
    ));
    let (xs, x) = read_npy(&d.join("x.npy"));
    let (_, y) = read_npy(&d.join("y.npy"));
    let (_, out) = run_onnx(&d.join("mine.onnx"), &xs, x);
    let rel = rel_err(&out, &y);
    assert!(rel <= 1e-4, "ONNX vs dyrep relative error {rel:e}");
    std::fs::write(d.join("net.toml"), &net).unwrap();
    ok(train(
        d,
        "mine-init",
        &[
            "--model-file",
            "net.toml",
            "--epochs",
            "1",
            "--init-from",
            "mine.safetensors",
        ],
    ));
}

/// Bad architecture files: one or two lines naming the file (and line), exit 1.
#[test]
fn bad_model_files_give_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let good = "[[layer]]\nkind = \"conv\"\nchannels = 8\n\n[[layer]]\nkind = \"global_avg_pool\"\n\n[[layer]]\nkind = \"linear\"\n";
    for (name, body, wanted) in [
        ("kind.toml", good.replace("\"conv\"", "\"cnv\""), "bad kind"),
        ("key.toml", good.replace("channels", "channel"), "bad key"),
        ("zero.toml", good.replace("= 8", "= 0"), "zero"),
        (
            "chain.toml",
            good.replace("kind = \"global_avg_pool\"", "kind = \"relu\""),
            "chain",
        ),
    ] {
        std::fs::write(d.join(name), body).unwrap();
        let o = train(d, "bad", &["--model-file", name]);
        let msg = text(&o);
        assert_eq!(o.status.code(), Some(1), "{wanted}: {msg}");
        assert!(msg.lines().count() <= 2, "{wanted}: {msg}");
        assert!(msg.contains(&format!("{name}:")), "{wanted}: {msg}");
        match wanted {
            "bad kind" => assert!(msg.contains("did you mean `conv`"), "{msg}"),
            "bad key" => assert!(msg.contains("did you mean `channels`"), "{msg}"),
            "zero" => assert!(
                msg.contains(":1: layer 0 (conv): `channels` must be at least 1"),
                "{msg}"
            ),
            _ => assert!(
                msg.contains("layer 2 (linear)") && msg.contains("8x28x28"),
                "{msg}"
            ),
        }
        assert!(
            !d.join("bad").exists(),
            "{wanted}: a run directory was created"
        );
    }
    let o = train(d, "bad", &["--model-file", "missing.toml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("missing.toml: cannot read"),
        "{}",
        text(&o)
    );
    let o = train(
        d,
        "bad",
        &["--model-file", "kind.toml", "--model", "vgg-tiny"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

/// An ImageNet-style folder of JPEGs of many sizes: streamed with the ImageNet transforms,
/// trained with an ImageNet model, evaluated and fused on the same eval transform; a corrupt
/// image fails the run naming it, or is skipped and counted with --skip-bad-images.
#[test]
fn an_imagenet_style_folder_of_many_sizes_trains_streamed() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for split in ["train", "test"] {
        for (ci, class) in ["n01", "n02"].iter().enumerate() {
            let cd = d.join("inet").join(split).join(class);
            std::fs::create_dir_all(&cd).unwrap();
            for i in 0..12u32 {
                let (w, h) = (40 + 9 * i, 33 + 6 * (i % 5));
                image::RgbImage::from_fn(w, h, |x, y| {
                    image::Rgb([(x * 3) as u8, (y * 5) as u8, (100 * ci) as u8])
                })
                .save(cd.join(format!("{i}.jpg")))
                .unwrap();
            }
        }
    }
    let flags = [
        "--model",
        "resnet18-imagenet",
        "--width",
        "0.125",
        "--data",
        "image-folder:inet",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--workers",
        "2",
    ];
    let o = ok(dyrep_in(
        d,
        &[&["train", "--out", "inet-run"][..], &flags[..]].concat(),
    ));
    assert!(text(&o).contains("3x32x32"), "{}", text(&o));
    ok(dyrep_in(
        d,
        &["fuse", "--checkpoint", "inet-run", "--out", "inet-fused"],
    ));
    ok(dyrep_in(d, &["eval", "--checkpoint", "inet-fused"]));
    // A truncated JPEG: the run stops naming it, before any checkpoint is written.
    let bad = d.join("inet/train/n02/3.jpg");
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let o = dyrep_in(
        d,
        &[&["train", "--out", "inet-bad"][..], &flags[..]].concat(),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("n02/3.jpg"), "{}", text(&o));
    assert!(!d.join("inet-bad/checkpoints").exists());
    let skip = [
        &["train", "--out", "inet-skip", "--skip-bad-images"][..],
        &flags[..],
    ]
    .concat();
    ok(dyrep_in(d, &skip));
    let summary = std::fs::read_to_string(d.join("inet-skip/summary.json")).unwrap();
    assert!(summary.contains("\"bad_images\": 1"), "{summary}");
}

/// `dyrep data pack` writes an image folder as tar shards; `--data shards:DIR` trains on them
/// (read in sequence, streamed with the ImageNet transforms) and resumes exactly.
#[test]
fn packed_shards_train_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for split in ["train", "test"] {
        for (ci, class) in ["a", "b", "c"].iter().enumerate() {
            let cd = d.join("imgs").join(split).join(class);
            std::fs::create_dir_all(&cd).unwrap();
            for i in 0..8u32 {
                image::RgbImage::from_fn(30 + 3 * i, 26 + i, |x, y| {
                    image::Rgb([(x * 7) as u8, (y * 3) as u8, (80 * ci) as u8])
                })
                .save(cd.join(format!("{i}.jpg")))
                .unwrap();
            }
        }
    }
    let o = ok(dyrep_in(
        d,
        &[
            "data",
            "pack",
            "image-folder:imgs",
            "--out",
            "shards",
            "--shard-size",
            "20KB",
        ],
    ));
    assert!(text(&o).contains("packed 48 samples"), "{}", text(&o));
    assert!(d.join("shards/train-000001.tar").is_file() && d.join("shards/classes.txt").is_file());
    let flags = [
        "--model",
        "resnet-tiny",
        "--data",
        "shards:shards",
        "--image-size",
        "16",
        "--epochs",
        "2",
        "--batch-size",
        "8",
    ];
    ok(dyrep_in(
        d,
        &[&["train", "--out", "whole"][..], &flags[..]].concat(),
    ));
    ok(dyrep_in(
        d,
        &[
            &["train", "--out", "part", "--stop-after", "1"][..],
            &flags[..],
        ]
        .concat(),
    ));
    ok(dyrep_in(d, &["train", "--resume", "part"]));
    assert_eq!(
        metrics_without_times(&d.join("whole")),
        metrics_without_times(&d.join("part")),
        "a resumed shard run differs"
    );
    let o = dyrep_in(
        d,
        &[
            &["train", "--out", "lim", "--train-limit", "12"][..],
            &flags[..],
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("--train-limit does not apply to tar shards"),
        "{}",
        text(&o)
    );
}
