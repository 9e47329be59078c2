//! End-to-end tests of the online block form (docs/REFERENCE.md "The online form") on the
//! bundled data with small limits: DyRep grows (nested too) and cuts in the online form with the
//! training output kept, says in its log that nothing is calibrated, resumes bitwise equal to an
//! uninterrupted run, records the form in `summary.json`, `arch.json` and `compare` groups,
//! fuses (verification passes), exports and inspects; RepVGG and DBB train online and fuse to
//! the plain network with the BN after each conv kept; bad settings get a short error.

mod support;

use support::{assert_short_error, dyrep, events, metrics_without_times, text};

use std::path::Path;
use std::process::Output;

const SMALL: [&str; 12] = [
    "--train-limit",
    "192",
    "--test-limit",
    "96",
    "--width",
    "0.5",
    "--batch-size",
    "32",
    "--lr",
    "0.05",
    "--epochs",
    "3",
];

/// A dyrep run in the online form from a config file (the TOML key), cuts allowed as soon as
/// importances differ at all, growing every half epoch, two convs at a time.
fn train_online(dir: &Path, config: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--config",
        config.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(&SMALL);
    args.extend_from_slice(&["--grow-interval", "0.5", "--grow-topk", "2"]);
    args.extend_from_slice(extra);
    dyrep(&args)
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn dyrep_online_grows_cuts_resumes_exactly_fuses_and_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("online.toml");
    std::fs::write(
        &config,
        "mode = \"dyrep\"\nblock_form = \"online\"\n[dyrep]\ncut_min_std = 0.0\n",
    )
    .unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let o = train_online(&a, &config, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let log = std::fs::read_to_string(a.join("run.log")).unwrap();
    assert!(log.contains("block form online") && log.contains("no BN calibration"));

    // Grows (nested ones too) and cuts, each keeping the output as exactly as the BN form does.
    let ev = events(&a);
    let grows: Vec<_> = ev.iter().filter(|e| e["kind"] == "grow").collect();
    let cuts: Vec<_> = ev.iter().filter(|e| e["kind"] == "cut").collect();
    assert!(grows.len() >= 4, "{ev:?}");
    assert!(!cuts.is_empty(), "{ev:?}");
    assert!(
        grows
            .iter()
            .any(|e| e["path"].as_str().unwrap().contains(".convkxk.conv")
                || e["path"].as_str().unwrap().contains(".conv2")),
        "a nested grow: {grows:?}"
    );
    for e in &ev {
        assert!(e["preserve_rel_err"].as_f64().unwrap() <= 2e-5, "{e}");
    }

    // Resumed from the end of epoch 1 (mid-way through the grow schedule): bitwise the same.
    assert!(train_online(&b, &config, &["--stop-after", "1"])
        .status
        .success());
    let o = dyrep(&["train", "--resume", b.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(metrics_without_times(&a), metrics_without_times(&b));
    assert_eq!(events(&a), events(&b));
    let weights = |d: &Path| std::fs::read(d.join("checkpoints/last/model.safetensors")).unwrap();
    assert!(weights(&a) == weights(&b), "weights differ after a resume");

    // The form is recorded where a later reader needs it.
    assert_eq!(json(&a.join("summary.json"))["block_form"], "online");
    assert_eq!(
        json(&a.join("checkpoints/last/arch.json"))["block_form"],
        "online"
    );
    let o = dyrep(&[
        "compare",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--group-by",
        "mode,block_form",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("dyrep block_form=online"), "{}", text(&o));

    // Fuses to the plain network (verification on real test batches passes), exports, inspects.
    let fused = tmp.path().join("fused");
    let o = dyrep(&[
        "fuse",
        "--checkpoint",
        a.to_str().unwrap(),
        "--out",
        fused.to_str().unwrap(),
        "--limit",
        "64",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("verification passed"), "{}", text(&o));
    let onnx = tmp.path().join("plain.onnx");
    let o = dyrep(&[
        "export",
        "--checkpoint",
        a.to_str().unwrap(),
        "--format",
        "onnx",
        "--out",
        onnx.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = dyrep(&["inspect", a.to_str().unwrap()]);
    let t = text(&o);
    assert!(o.status.success() && t.contains("convkxk"), "{t}");
    assert!(t.contains("online blocks") && t.contains(" scale "), "{t}");
}

/// RepVGG and DBB in the online form keep the BN after each conv (the branches have none with
/// statistics), so the fused network is the plain one: the same parameter count as `origin`.
#[test]
fn repvgg_and_dbb_train_online_and_fuse_to_the_plain_network() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("origin");
    let mut args = vec![
        "train",
        "--out",
        plain.to_str().unwrap(),
        "--mode",
        "origin",
    ];
    args.extend_from_slice(&SMALL[..10]);
    args.extend_from_slice(&["--epochs", "1"]);
    let o = dyrep(&args);
    assert!(o.status.success(), "{}", text(&o));
    let plain_params = json(&plain.join("summary.json"))["final_params"].clone();
    for mode in ["repvgg", "dbb"] {
        let dir = tmp.path().join(mode);
        let mut args = vec!["train", "--out", dir.to_str().unwrap(), "--mode", mode];
        args.extend_from_slice(&SMALL[..10]);
        args.extend_from_slice(&["--epochs", "1", "--block-form", "online"]);
        let o = dyrep(&args);
        assert!(o.status.success(), "{mode}: {}", text(&o));
        let s = json(&dir.join("summary.json"));
        assert_eq!(s["block_form"], "online", "{mode}");
        assert!(s["final_test_acc"].as_f64().unwrap() > 0.1, "{mode}: {s}");
        let fused = tmp.path().join(format!("{mode}-fused"));
        let o = dyrep(&[
            "fuse",
            "--checkpoint",
            dir.to_str().unwrap(),
            "--out",
            fused.to_str().unwrap(),
            "--limit",
            "64",
        ]);
        assert!(o.status.success(), "{mode}: {}", text(&o));
        let o = dyrep(&["inspect", fused.to_str().unwrap(), "--json"]);
        assert!(o.status.success(), "{mode}: {}", text(&o));
        let inspected: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(inspected["params"], plain_params, "{mode}: {inspected}");
    }
}

#[test]
fn bad_block_form_settings_get_a_short_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x");
    let o = dyrep(&[
        "train",
        "--out",
        out.to_str().unwrap(),
        "--block-form",
        "orepa",
        "--mode",
        "dyrep",
    ]);
    assert_short_error(&o, "expected `bn` or `online`", "unknown form");
    let o = dyrep(&[
        "train",
        "--out",
        out.to_str().unwrap(),
        "--block-form",
        "online",
    ]);
    assert_short_error(&o, "mode origin has none", "origin online");
    assert!(!out.exists(), "a refused run leaves nothing behind");
}
