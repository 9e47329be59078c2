//! End-to-end training tests of the `dyrep` binary on the bundled data (small limits so they
//! run in seconds): the run directory's files, exact resume (a run stopped after epoch 1 and
//! resumed ends bitwise equal to an uninterrupted one), fuse verification of repvgg and dbb
//! checkpoints, eval of both forms with .npy outputs, and bad input (existing output
//! directory, corrupt checkpoints, unknown names) with exit 1 and nothing lost.

mod support;

use support::{copy_dir, metrics_without_times};

use std::path::Path;
use std::process::{Command, Output};

fn dyrep(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dyrep"))
        .args(args)
        .output()
        .expect("run the dyrep binary")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const SMALL: [&str; 10] = [
    "--train-limit",
    "256",
    "--test-limit",
    "128",
    "--width",
    "0.5",
    "--batch-size",
    "32",
    "--lr",
    "0.05",
];

fn train(out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["train", "--out", out.to_str().unwrap()];
    args.extend_from_slice(&SMALL);
    args.extend_from_slice(extra);
    dyrep(&args)
}

#[test]
fn run_directory_has_every_file_and_summary_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = train(&out, &["--epochs", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    for f in [
        "config.resolved.toml",
        "run.log",
        "metrics.csv",
        "summary.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    for ck in ["last", "best"] {
        for f in [
            "arch.json",
            "model.safetensors",
            "optim.safetensors",
            "state.json",
        ] {
            assert!(
                out.join("checkpoints").join(ck).join(f).is_file(),
                "{ck}/{f} missing"
            );
        }
    }
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    for k in [
        "model",
        "mode",
        "dataset",
        "epochs",
        "seed",
        "final_test_acc",
        "best_test_acc",
        "avg_params",
        "avg_macs",
        "final_params",
        "final_macs",
        "train_seconds",
        "train_cpu_seconds",
        "peak_rss_bytes",
        "grows",
        "cuts",
    ] {
        assert!(s.get(k).is_some(), "summary.json lacks {k}");
    }
    let acc = s["final_test_acc"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    let header = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert!(
        header.starts_with("epoch,split,loss,acc,lr,params,macs,branches,seconds,cpu_seconds\n")
    );
    // The epoch's processor seconds: positive, and what the summary adds up.
    let cpu: f64 = header
        .lines()
        .nth(1)
        .unwrap()
        .rsplit(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(cpu > 0.0, "{header}");
    let total = s["train_cpu_seconds"].as_f64().unwrap();
    assert!(
        (total - cpu).abs() <= 1e-3,
        "summary {total} against metrics.csv {cpu}"
    );
    // The resolved config is a valid config file for another run.
    let again = tmp.path().join("again");
    let cfg = out.join("config.resolved.toml");
    let o = dyrep(&[
        "train",
        "-c",
        cfg.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        metrics_without_times(&out),
        metrics_without_times(&again),
        "same config, same seed: same numbers"
    );
}

#[test]
fn resumed_run_ends_bitwise_equal_to_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let extra = ["--epochs", "2", "--mode", "dbb"];
    let o = train(&a, &extra);
    assert!(o.status.success(), "{}", text(&o));
    let mut stop = extra.to_vec();
    stop.extend(["--stop-after", "1"]);
    let o = train(&b, &stop);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        !b.join("summary.json").exists(),
        "a stopped run has no summary yet"
    );
    let o = dyrep(&["train", "--resume", b.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(metrics_without_times(&a), metrics_without_times(&b));
    let wa = std::fs::read(a.join("checkpoints/last/model.safetensors")).unwrap();
    let wb = std::fs::read(b.join("checkpoints/last/model.safetensors")).unwrap();
    assert!(wa == wb, "final weights differ after resume");
    // Config flags with --resume are refused (the run keeps its saved config).
    let o = dyrep(&[
        "train",
        "--resume",
        b.to_str().unwrap(),
        "--model",
        "resnet-tiny",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("drop --model"), "{}", text(&o));
}

#[test]
fn fuse_verifies_repvgg_and_dbb_and_gives_the_plain_model() {
    let tmp = tempfile::tempdir().unwrap();
    for mode in ["repvgg", "dbb"] {
        let run = tmp.path().join(mode);
        let o = train(&run, &["--epochs", "1", "--mode", mode]);
        assert!(o.status.success(), "{}", text(&o));
        // The reference's form by default, and the summary says so.
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap())
                .unwrap();
        assert_eq!(summary["baseline_form"], "reference", "{summary}");
        assert_eq!(summary["baseline_init"], "pytorch", "{summary}");
        let fused = tmp.path().join(format!("{mode}-fused"));
        let ck = run.join("checkpoints/last");
        let o = dyrep(&[
            "fuse",
            "--checkpoint",
            ck.to_str().unwrap(),
            "--out",
            fused.to_str().unwrap(),
            "--limit",
            "128",
            "--json",
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(r["top1_mismatches"], 0);
        assert!(r["logits_rel"].as_f64().unwrap() <= 1e-4, "{r}");
        assert!(r["params_after"].as_u64().unwrap() < r["params_before"].as_u64().unwrap());
        assert_eq!(
            r["blocks"].as_array().unwrap().len(),
            5,
            "vgg-tiny has five 3x3 convs"
        );
        let arch: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fused.join("arch.json")).unwrap())
                .unwrap();
        assert_eq!(arch["form"], "fused");
        for (_, slot) in arch["slots"].as_object().unwrap() {
            assert_eq!(
                slot,
                &serde_json::json!({"kind": "conv", "bias": false}),
                "no branch or bias left"
            );
        }
        // Both forms evaluate to the same top-1 and the logits can be exported.
        let logits = tmp.path().join(format!("{mode}.npy"));
        let inputs = tmp.path().join(format!("{mode}-in.npy"));
        let a = dyrep(&[
            "eval",
            "--checkpoint",
            ck.to_str().unwrap(),
            "--limit",
            "128",
            "--json",
        ]);
        let b = dyrep(&[
            "eval",
            "--checkpoint",
            fused.to_str().unwrap(),
            "--limit",
            "128",
            "--json",
            "--logits-out",
            logits.to_str().unwrap(),
            "--inputs-out",
            inputs.to_str().unwrap(),
        ]);
        assert!(
            a.status.success() && b.status.success(),
            "{}{}",
            text(&a),
            text(&b)
        );
        let (ra, rb): (serde_json::Value, serde_json::Value) = (
            serde_json::from_slice(&a.stdout).unwrap(),
            serde_json::from_slice(&b.stdout).unwrap(),
        );
        assert_eq!(ra["top1"], rb["top1"]);
        assert_eq!(rb["form"], "fused");
        assert_eq!(
            std::fs::metadata(&logits).unwrap().len() as usize,
            128 + 128 * 10 * 4
        );
        assert_eq!(
            std::fs::metadata(&inputs).unwrap().len() as usize,
            128 + 128 * 28 * 28 * 4
        );
        // Fusing a fused checkpoint changes nothing.
        let twice = tmp.path().join(format!("{mode}-twice"));
        let o = dyrep(&[
            "fuse",
            "--checkpoint",
            fused.to_str().unwrap(),
            "--out",
            twice.to_str().unwrap(),
            "--limit",
            "64",
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert_eq!(
            std::fs::read(fused.join("model.safetensors")).unwrap(),
            std::fs::read(twice.join("model.safetensors")).unwrap()
        );
    }
}

#[test]
fn existing_output_directory_is_refused_and_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("precious.txt"), "keep me").unwrap();
    let o = train(&out, &["--epochs", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("--force"), "{}", text(&o));
    assert_eq!(
        std::fs::read_to_string(out.join("precious.txt")).unwrap(),
        "keep me"
    );
}

#[test]
fn bad_names_and_files_exit_1_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["train".into(), "--model".into(), "vgg-tny".into()],
            "did you mean `vgg-tiny`",
        ),
        (
            vec!["train".into(), "--mode".into(), "dbbb".into()],
            "did you mean `dbb`",
        ),
        (
            vec![
                "train".into(),
                "--data".into(),
                "cifar10:/no/such/dir".into(),
            ],
            "not a directory",
        ),
        (
            vec!["train".into(), "--epochs".into(), "0".into()],
            "epochs must be at least 1",
        ),
        (
            vec!["train".into(), "--baseline-form".into(), "dyrep".into()],
            "--baseline-form only applies to --mode repvgg or dbb",
        ),
        (
            vec![
                "train".into(),
                "--mode".into(),
                "dbb".into(),
                "--baseline-form".into(),
                "official".into(),
            ],
            "expected `reference` or `dyrep`",
        ),
        (
            vec!["train".into(), "--baseline-init".into(), "fan_out".into()],
            "--baseline-init only applies to --mode repvgg or dbb",
        ),
        (
            vec![
                "train".into(),
                "--mode".into(),
                "dbb".into(),
                "--baseline-form".into(),
                "dyrep".into(),
                "--baseline-init".into(),
                "fan_out".into(),
            ],
            "--baseline-init only applies to --baseline-form reference",
        ),
        (
            vec![
                "train".into(),
                "--mode".into(),
                "repvgg".into(),
                "--baseline-init".into(),
                "kaiming".into(),
            ],
            "expected `pytorch` or `fan_out`",
        ),
        (
            vec![
                "eval".into(),
                "--checkpoint".into(),
                tmp.path().join("nope").display().to_string(),
            ],
            "does not exist",
        ),
    ];
    for (args, want) in cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = dyrep(&a);
        assert_eq!(o.status.code(), Some(1), "{a:?}: {}", text(&o));
        assert!(text(&o).contains(want), "{a:?}: {}", text(&o));
        assert!(!text(&o).contains("panicked"), "{}", text(&o));
    }
    // A TOML config with an unknown key names it.
    let cfg = tmp.path().join("run.toml");
    std::fs::write(&cfg, "modle = \"vgg-tiny\"\n").unwrap();
    let o = dyrep(&["train", "-c", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("modle"), "{}", text(&o));
}

/// Regression: `--train-limit` took the first N examples, so a class-sorted folder trained on
/// one class without a word. Now a limit too small to hold every class is refused, naming the
/// classes it would miss.
#[test]
fn a_train_limit_that_misses_classes_is_refused_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = dyrep(&[
        "train",
        "--out",
        out.to_str().unwrap(),
        "--train-limit",
        "7",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("--train-limit 7") && t.contains("3 of the model's 10 classes"),
        "{t}"
    );
    assert!(!t.contains("panicked"), "{t}");
}

/// The learning rate logged for each training epoch of a run.
fn train_lrs(dir: &Path) -> Vec<f64> {
    let metrics = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let mut lines = metrics.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (split_col, lr_col) = (col("split"), col("lr"));
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f[split_col] == "train")
        .map(|f| f[lr_col].parse().unwrap())
        .collect()
}

/// `--warmup-epochs` / `--warmup-lr` reach the schedule: each warm-up epoch runs at
/// warmup_lr + (lr − warmup_lr)·e/N, and the run's resolved config records both;
/// `--warmup-per-step` raises it every step instead. Without
/// `--warmup-lr` the first epoch runs at the reference's 1e-4 (the default was 0, which left
/// the weights where they were for a whole epoch).
#[test]
fn warmup_flags_set_the_first_epochs_learning_rates() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let flags = [
        "--epochs",
        "3",
        "--warmup-epochs",
        "2",
        "--warmup-lr",
        "0.01",
    ];
    let o = train(&out, &flags);
    assert!(o.status.success(), "{}", text(&o));
    // SMALL trains at --lr 0.05: epoch 0 at 0.01, epoch 1 halfway, epoch 2 on the cosine.
    let lrs = train_lrs(&out);
    assert_eq!(lrs.len(), 3, "{lrs:?}");
    assert!((lrs[0] - 0.01).abs() < 1e-12, "{lrs:?}");
    assert!((lrs[1] - 0.03).abs() < 1e-12, "{lrs:?}");
    assert!(lrs[2] <= 0.05 && lrs[2] > 0.0, "{lrs:?}");
    let resolved = std::fs::read_to_string(out.join("config.resolved.toml")).unwrap();
    assert!(resolved.contains("warmup_epochs = 2"), "{resolved}");
    assert!(resolved.contains("warmup_lr = 0.01"), "{resolved}");

    let default_lr = tmp.path().join("default-warmup-lr");
    let o = train(&default_lr, &["--epochs", "2", "--warmup-epochs", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(train_lrs(&default_lr)[0], 1e-4);

    // Per step: SMALL has 8 steps an epoch, so 16 warm-up steps; an epoch's logged lr is its
    // last step's, warmup_lr + (lr − warmup_lr)·s/16 at s = 7 and 15.
    let per_step = tmp.path().join("per-step");
    let o = train(&per_step, &[&flags[..], &["--warmup-per-step"]].concat());
    assert!(o.status.success(), "{}", text(&o));
    let lrs = train_lrs(&per_step);
    assert!(
        (lrs[0] - (0.01 + 0.04 * 7.0 / 16.0)).abs() < 1e-12,
        "{lrs:?}"
    );
    assert!(
        (lrs[1] - (0.01 + 0.04 * 15.0 / 16.0)).abs() < 1e-12,
        "{lrs:?}"
    );
    let resolved = std::fs::read_to_string(per_step.join("config.resolved.toml")).unwrap();
    assert!(resolved.contains("warmup_per_step = true"), "{resolved}");

    let o = train(
        &tmp.path().join("too-long"),
        &["--epochs", "2", "--warmup-epochs", "2"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("warmup_epochs (2) must be smaller than epochs (2)"),
        "{}",
        text(&o)
    );
}

#[test]
fn corrupt_or_mismatched_checkpoints_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let o = train(&run, &["--epochs", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let ck = run.join("checkpoints/last");
    // Truncated weights.
    let bad = tmp.path().join("truncated");
    copy_dir(&ck, &bad);
    let w = std::fs::read(bad.join("model.safetensors")).unwrap();
    std::fs::write(bad.join("model.safetensors"), &w[..w.len() / 2]).unwrap();
    let o = dyrep(&[
        "eval",
        "--checkpoint",
        bad.to_str().unwrap(),
        "--limit",
        "8",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("model.safetensors") && text(&o).contains("truncated"),
        "{}",
        text(&o)
    );
    // arch.json from another model: the pair is mismatched.
    let other = tmp.path().join("other");
    copy_dir(&ck, &other);
    let arch = std::fs::read_to_string(other.join("arch.json"))
        .unwrap()
        .replace("\"width\": 0.5", "\"width\": 1.0");
    std::fs::write(other.join("arch.json"), arch).unwrap();
    let eval_other = || {
        dyrep(&[
            "eval",
            "--checkpoint",
            other.to_str().unwrap(),
            "--limit",
            "8",
        ])
    };
    // The manifest's checksum names the altered file first.
    let o = eval_other();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("arch.json") && text(&o).contains("damaged"),
        "{}",
        text(&o)
    );
    // Without one (a checkpoint written before manifests), the weights' arch hash does.
    std::fs::remove_file(other.join("manifest.json")).unwrap();
    let o = eval_other();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("mismatched"), "{}", text(&o));
    // Garbage arch.json.
    std::fs::write(other.join("arch.json"), "{").unwrap();
    let o = dyrep(&["eval", "--checkpoint", other.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("arch.json"), "{}", text(&o));
}
