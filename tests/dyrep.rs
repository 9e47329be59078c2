//! End-to-end tests of the `dyrep` mode (paper §4; docs/REFERENCE.md "Growth schedule (Rep)", "Dep
//! (cut)", "Scores", "Optimizer state when parameters change") on the bundled data with small
//! limits: blocks grow every epoch (nested ones too), every grow and cut keeps the eval output
//! (preserve_rel_err ≤ 2e-5 in events.jsonl), every grow lists the ranking it was chosen from,
//! every registered scorer selects a conv, a run resumed in the middle of a grow interval (scorer
//! accumulators in flight) ends bitwise equal to an uninterrupted one, and the trained network
//! fuses back to the plain one.

mod support;

use support::{dyrep, events, metrics_without_times, text};

use std::path::Path;
use std::process::{Command, Output};

const SMALL: [&str; 14] = [
    "--mode",
    "dyrep",
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
    "--calib-batches",
    "3",
];

fn train(out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["train", "--out", out.to_str().unwrap()];
    args.extend_from_slice(&SMALL);
    args.extend_from_slice(extra);
    dyrep(&args)
}

#[test]
fn blocks_grow_recursively_keep_the_output_and_fuse_back() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = train(
        &out,
        &["--epochs", "3", "--grow-interval", "1", "--grow-topk", "8"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let ev = events(&out);
    let grows: Vec<&serde_json::Value> = ev.iter().filter(|e| e["kind"] == "grow").collect();
    assert!(grows.len() >= 5, "{ev:?}");
    assert!(
        grows.iter().any(|e| {
            let p = e["path"].as_str().unwrap();
            p.contains(".convkxk.conv") || p.contains(".conv1x1_kxk.conv2")
        }),
        "no nested growth: {ev:?}"
    );
    for e in &ev {
        for k in [
            "epoch",
            "kind",
            "path",
            "preserve_rel_err",
            "params",
            "macs",
            "gamma",
            "ops",
        ] {
            assert!(e.get(k).is_some(), "event lacks {k}: {e}");
        }
        assert!(e["preserve_rel_err"].as_f64().unwrap() <= 2e-5, "{e}");
    }
    // Each grow lists the ranking it was chosen from, best first; one adjustment's grows are
    // its top entries.
    for e in &grows {
        let ranking = e["ranking"].as_array().unwrap();
        let scores: Vec<f64> = ranking
            .iter()
            .map(|r| r["score"].as_f64().unwrap())
            .collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "unsorted: {e}");
        let same: Vec<&str> = grows
            .iter()
            .filter(|g| g["epoch"] == e["epoch"])
            .map(|g| g["path"].as_str().unwrap())
            .collect();
        let top: Vec<&str> = ranking[..same.len()]
            .iter()
            .map(|r| r["path"].as_str().unwrap())
            .collect();
        assert_eq!(top, same, "{e}");
        let own = ranking.iter().find(|r| r["path"] == e["path"]).unwrap();
        assert_eq!(own["score"], e["score"], "{e}");
    }
    assert!(ev
        .iter()
        .all(|e| e["kind"] == "grow" || e.get("ranking").is_none()));
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["grows"].as_u64().unwrap() as usize, grows.len());
    assert!(
        s["avg_macs"].as_f64().unwrap() < s["final_macs"].as_f64().unwrap(),
        "{s}"
    );
    // Fuse gives the plain vgg-tiny with identical predictions.
    let fused = tmp.path().join("fused");
    let ck = out.join("checkpoints/last");
    let o = dyrep(&[
        "fuse",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--out",
        fused.to_str().unwrap(),
        "--limit",
        "96",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["top1_mismatches"], 0, "{r}");
    let arch: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fused.join("arch.json")).unwrap()).unwrap();
    for (_, slot) in arch["slots"].as_object().unwrap() {
        assert_eq!(slot, &serde_json::json!({"kind": "conv", "bias": false}));
    }
}

#[test]
fn every_registered_scorer_selects_a_conv() {
    let o = dyrep(&["scorers", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for s in v.as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        let out = tmp.path().join(name);
        let o = train(
            &out,
            &["--epochs", "2", "--grow-interval", "1", "--scorer", name],
        );
        assert!(o.status.success(), "{name}: {}", text(&o));
        let ev = events(&out);
        let grows: Vec<_> = ev.iter().filter(|e| e["kind"] == "grow").collect();
        assert_eq!(grows.len(), 1, "{name}: {ev:?}");
        assert!(
            grows[0]["score"].as_f64().unwrap().is_finite(),
            "{name}: {ev:?}"
        );
    }
}

#[test]
fn resume_in_the_middle_of_a_grow_interval_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let extra = ["--epochs", "3", "--grow-interval", "2", "--grow-topk", "2"];
    let o = train(&a, &extra);
    assert!(o.status.success(), "{}", text(&o));
    let mut stop = extra.to_vec();
    stop.extend(["--stop-after", "1"]);
    let o = train(&b, &stop);
    assert!(o.status.success(), "{}", text(&o));
    let o = dyrep(&["train", "--resume", b.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(metrics_without_times(&a), metrics_without_times(&b));
    assert_eq!(events(&a), events(&b));
    assert!(!events(&a).is_empty());
    assert!(
        std::fs::read(a.join("checkpoints/last/model.safetensors")).unwrap()
            == std::fs::read(b.join("checkpoints/last/model.safetensors")).unwrap()
    );
}

/// The affine preservation grows, cuts, keeps the eval output, records the factor on every
/// grown conv's step (≈ 1: the conv's scale kept), resumes bit-exact and fuses back.
#[test]
fn the_affine_form_grows_resumes_exactly_and_fuses() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let extra = ["--epochs", "3", "--preserve", "affine", "--grow-topk", "2"];
    let o = train(&a, &extra);
    assert!(o.status.success(), "{}", text(&o));
    let mut stop = extra.to_vec();
    stop.extend(["--stop-after", "1"]);
    assert!(train(&b, &stop).status.success());
    let o = dyrep(&["train", "--resume", b.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(metrics_without_times(&a), metrics_without_times(&b));
    assert_eq!(events(&a), events(&b));
    // How far each conv turned per epoch: a row per conv and epoch, equal after the resume,
    // grown convs flagged once they grew, every angle a finite, positive turn.
    let movement = std::fs::read_to_string(a.join("movement.csv")).unwrap();
    assert_eq!(
        movement,
        std::fs::read_to_string(b.join("movement.csv")).unwrap()
    );
    let rows: Vec<Vec<&str>> = movement
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 3 * 5, "{movement}");
    assert!(rows.iter().any(|r| r[2] == "true"), "{movement}");
    for r in &rows {
        let angle: f64 = r[3].parse().unwrap();
        assert!(
            angle.is_finite() && angle > 0.0 && angle < 90.0,
            "{movement}"
        );
    }
    let grows: Vec<_> = events(&a)
        .into_iter()
        .filter(|e| e["kind"] == "grow")
        .collect();
    assert!(!grows.is_empty());
    for e in &grows {
        assert!(e["preserve_rel_err"].as_f64().unwrap() <= 2e-5, "{e}");
        let f = e["main_scale"]["step_factor"].as_f64().unwrap();
        assert!((0.8..=1.25).contains(&f), "{e}");
    }
    let o = dyrep(&["inspect", a.to_str().unwrap()]);
    assert!(text(&o).contains("effective step"), "{}", text(&o));
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
}

/// A run's bits do not depend on the core count: the same seed on 1, 2 and 3 threads gives
/// the same metrics, the same grows and cuts and the same weights, byte for byte (the kernels
/// split their sums by shape, never by thread count; docs/ARCHITECTURE.md). 190 images in
/// batches of 32 end in a ragged batch of 30; grows every epoch exercise the grown blocks.
#[test]
fn runs_are_bit_identical_on_any_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    // SMALL with 190 training images instead of 192.
    let mut small = SMALL.to_vec();
    let limit = small.iter().position(|&a| a == "--train-limit").unwrap() + 1;
    small[limit] = "190";
    let extra = ["--epochs", "2", "--grow-interval", "1", "--grow-topk", "2"];
    let run = |threads: &str| {
        let dir = tmp.path().join(format!("t{threads}"));
        let mut args = vec!["train", "--out", dir.to_str().unwrap()];
        args.extend_from_slice(&small);
        args.extend_from_slice(&extra);
        let o = Command::new(env!("CARGO_BIN_EXE_dyrep"))
            .args(&args)
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .expect("run dyrep");
        assert!(o.status.success(), "{threads} threads: {}", text(&o));
        let metrics = metrics_without_times(&dir);
        let weights = std::fs::read(dir.join("checkpoints/last/model.safetensors")).unwrap();
        (metrics, events(&dir), weights)
    };
    let one = run("1");
    assert!(
        one.1.iter().any(|e| e["kind"] == "grow"),
        "the run grows: {:?}",
        one.1
    );
    for threads in ["2", "3"] {
        let other = run(threads);
        assert_eq!(one.0, other.0, "metrics on 1 and {threads} threads");
        assert_eq!(one.1, other.1, "events on 1 and {threads} threads");
        assert!(
            one.2 == other.2,
            "the trained weights differ between 1 and {threads} threads"
        );
    }
}

/// Growth in the middle of an epoch: every half epoch (`0.5`) and every N steps, with the
/// events naming the step; the run resumes exactly across them.
#[test]
fn fractional_and_step_intervals_grow_mid_epoch_and_resume_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    // 192 training images at batch 32: 6 steps per epoch, 12 in the run.
    let extra = [
        "--epochs",
        "2",
        "--grow-interval",
        "0.5",
        "--max-grow-epochs",
        "none",
    ];
    let o = train(&whole, &extra);
    assert!(o.status.success(), "{}", text(&o));
    let steps: Vec<Option<u64>> = events(&whole)
        .iter()
        .filter(|e| e["kind"] == "grow")
        .map(|e| e["step"].as_u64())
        .collect();
    // After steps 3 and 9 (mid-epoch, named) and 6 (the end of epoch 1, after its evaluation);
    // none after the run's last step.
    assert_eq!(steps, vec![Some(3), None, Some(9)], "{:?}", events(&whole));
    let split = tmp.path().join("split");
    let mut first = extra.to_vec();
    first.extend(["--stop-after", "1"]);
    assert!(train(&split, &first).status.success());
    let o = dyrep(&["train", "--resume", split.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(events(&split), events(&whole));
    assert_eq!(metrics_without_times(&split), metrics_without_times(&whole));
    // N steps: after steps 5 and 10 of 12.
    let stepped = tmp.path().join("stepped");
    let o = train(
        &stepped,
        &[
            "--epochs",
            "2",
            "--grow-interval",
            "5 steps",
            "--max-grow-epochs",
            "none",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let grows = events(&stepped)
        .iter()
        .filter(|e| e["kind"] == "grow")
        .count();
    assert_eq!(grows, 2, "{:?}", events(&stepped));
}

#[test]
fn bad_dyrep_settings_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x");
    let o = out.to_str().unwrap();
    for (args, want) in [
        (
            vec![
                "train",
                "--out",
                o,
                "--mode",
                "dyrep",
                "--grow-interval",
                "0",
            ],
            "invalid value '0' for '--grow-interval",
        ),
        (
            vec!["train", "--out", o, "--mode", "dyrep", "--gamma0", "0"],
            "gamma0",
        ),
        (
            vec!["train", "--out", o, "--mode", "dyrep", "--scorer", "synflw"],
            "did you mean `synflow`",
        ),
        (
            vec![
                "train",
                "--out",
                o,
                "--mode",
                "dyrep",
                "--ops",
                "conv1x1,idnetity",
            ],
            "did you mean `identity`",
        ),
        (
            vec!["train", "--out", o, "--mode", "dbb", "--scorer", "snip"],
            "--scorer only applies to --mode dyrep",
        ),
        (
            vec![
                "train", "--out", o, "--mode", "origin", "--scorer", "snip", "--no-dep",
            ],
            "only apply to --mode dyrep",
        ),
    ] {
        let r = dyrep(&args);
        assert_eq!(r.status.code(), Some(1), "{args:?}: {}", text(&r));
        assert!(text(&r).contains(want), "{args:?}: {}", text(&r));
    }
    assert!(!out.exists(), "nothing written on a refused run");
}
