//! The fault-injection suite (README.md "What dyrep guarantees"): the `dyrep` binary killed at
//! every commit step of a run (`DYREP_FAULT_KILL_AT=N`: SIGKILL at the N-th file write, flush,
//! rename or directory flush), then resumed and read by every command; a matrix of damaged
//! checkpoints against every command that reads one; outputs that would overwrite inputs;
//! `--force` on directories that are not runs; absurd sizes and non-finite settings, refused
//! before anything is allocated.

mod support;

use support::{assert_short_error, copy_dir, metrics_without_times, ok, text};

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};

fn dyrep(dir: &Path, args: &[&str], kill_at: Option<usize>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dyrep"));
    c.current_dir(dir)
        .args(args)
        .env_remove("DYREP_FAULT_KILL_AT");
    if let Some(n) = kill_at {
        c.env("DYREP_FAULT_KILL_AT", n.to_string());
    }
    c.output().expect("run the dyrep binary")
}

/// Exit 1 with a one- or two-line error that contains `needle`, no panic.
fn refused(o: &Output, needle: &str, what: &str) {
    assert_short_error(o, needle, what);
}

/// A tiny dyrep run: two epochs with a grow in each, so checkpoints, `best`, metrics and
/// events are all written, and the second epoch replaces a checkpoint that exists.
const TINY: [&str; 14] = [
    "--mode",
    "dyrep",
    "--train-limit",
    "64",
    "--test-limit",
    "32",
    "--batch-size",
    "16",
    "--grow-interval",
    "2 steps",
    "--lr",
    "0.05",
    "--calib-batches",
    "1",
];

fn train_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["-q", "train", "--out", out];
    v.extend_from_slice(&TINY);
    if !extra.contains(&"--epochs") {
        v.extend_from_slice(&["--epochs", "2"]);
    }
    v.extend_from_slice(extra);
    v
}

/// A finished one-epoch tiny run in `d/out`.
fn train_one_epoch(d: &Path, out: &str) {
    ok(dyrep(d, &train_args(out, &["--epochs", "1"]), None));
}

/// Every name in `dir` and `dir/checkpoints` that is debris of a killed process.
fn debris(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for d in [dir.to_path_buf(), dir.join("checkpoints")] {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with('.') {
                    found.push(n);
                }
            }
        }
    }
    found
}

fn epochs_in_compare(dir: &Path, run: &str) -> serde_json::Value {
    let o = ok(dyrep(dir, &["compare", run, "--json"], None));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    rows[0].clone()
}

/// Kill at every commit step of a run, from its first write to its last: afterwards the run
/// either has no checkpoint yet (and says so) or resumes to the same metrics as a run never
/// killed, every read command sees every committed epoch, and no debris is left.
#[test]
fn a_kill_at_every_commit_step_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(dyrep(d, &train_args("reference", &[]), None));
    let reference = metrics_without_times(&d.join("reference"));
    let ref_events = std::fs::read_to_string(d.join("reference/events.jsonl")).unwrap();
    assert_eq!(reference.len(), 5, "{reference:?}");
    let mut n = 1;
    loop {
        let out = format!("run{n}");
        let o = dyrep(d, &train_args(&out, &[]), Some(n));
        if o.status.success() {
            break;
        }
        assert_eq!(
            o.status.signal(),
            Some(9),
            "kill at {n}: not killed: {}",
            text(&o)
        );
        let run = d.join(&out);
        // What a reader sees right after the kill: every committed epoch.
        let committed = dyrep(d, &["eval", "--checkpoint", &out, "--limit", "8"], None);
        if committed.status.success() {
            let row = epochs_in_compare(d, &out);
            let epochs = row["epochs"].as_u64().unwrap();
            assert!(epochs >= 1, "kill at {n}: {row}");
            ok(dyrep(d, &["-q", "inspect", &out], None));
            let resumed = dyrep(d, &["-q", "train", "--resume", &out], None);
            assert!(
                resumed.status.success(),
                "kill at {n}: resume failed: {}",
                text(&resumed)
            );
        } else {
            // Killed before the first checkpoint: nothing to resume, and it says so.
            if run.exists() {
                let r = dyrep(d, &["train", "--resume", &out], None);
                refused(&r, "no checkpoint", &format!("kill at {n}: resume"));
            }
            ok(dyrep(d, &train_args(&out, &["--force"]), None));
        }
        assert_eq!(
            metrics_without_times(&run),
            reference,
            "kill at {n}: metrics differ from the run never killed"
        );
        assert_eq!(
            std::fs::read_to_string(run.join("events.jsonl")).unwrap(),
            ref_events,
            "kill at {n}"
        );
        assert!(run.join("summary.json").is_file(), "kill at {n}");
        assert_eq!(debris(&run), Vec::<String>::new(), "kill at {n}: debris");
        assert_eq!(epochs_in_compare(d, &out)["epochs"], 2, "kill at {n}");
        std::fs::remove_dir_all(&run).unwrap();
        n += 1;
        assert!(n < 400, "the run never finished without a kill");
    }
    // Every step of the checkpoint protocol was reached: two epochs of saves, each several.
    assert!(
        n > 40,
        "only {n} commit steps: the fault hook is not reached"
    );
}

/// A kill after the final checkpoint but before `metrics.csv` is rewritten: compare reads the
/// whole run from the checkpoint, and `--resume` on the finished run repairs its files.
#[test]
fn a_finished_run_missing_its_last_metrics_is_read_whole_and_repaired_by_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(dyrep(d, &train_args("run", &[]), None));
    let full = metrics_without_times(&d.join("run"));
    // metrics.csv as it was before the second epoch's rewrite.
    let first: Vec<String> = std::fs::read_to_string(d.join("run/metrics.csv"))
        .unwrap()
        .lines()
        .take(3)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(d.join("run/metrics.csv"), first.concat()).unwrap();
    std::fs::remove_file(d.join("run/events.jsonl")).unwrap();
    std::fs::remove_file(d.join("run/summary.json")).unwrap();
    let row = epochs_in_compare(d, "run");
    assert_eq!(row["epochs"], 2, "{row}");
    assert!(row["grows"].as_u64().unwrap() > 0, "{row}");
    let o = ok(dyrep(d, &["train", "--resume", "run"], None));
    assert!(text(&o).contains("done"), "{}", text(&o));
    assert_eq!(metrics_without_times(&d.join("run")), full);
    assert!(d.join("run/events.jsonl").is_file() && d.join("run/summary.json").is_file());
}

/// Leftovers of killed writers (a checkpoint moved aside between the two renames, half-written
/// temporaries) are found by every reader and cleaned by the next resume.
#[test]
fn a_checkpoint_moved_aside_by_a_kill_is_read_and_recovered() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    train_one_epoch(d, "run");
    let ck = d.join("run/checkpoints");
    // Process ids above the kernel's limit (2^22) never run.
    std::fs::rename(ck.join("last"), ck.join(".old-last-4194305")).unwrap();
    std::fs::create_dir_all(ck.join(".tmp-last-4194306")).unwrap();
    std::fs::write(d.join("run/.metrics.csv.tmp-4194307"), "half").unwrap();
    for args in [
        vec!["eval", "--checkpoint", "run", "--limit", "8"],
        vec!["inspect", "run"],
        vec![
            "export",
            "--checkpoint",
            "run",
            "--format",
            "onnx",
            "--out",
            "x.onnx",
        ],
        vec![
            "fuse",
            "--checkpoint",
            "run",
            "--out",
            "fused",
            "--limit",
            "8",
        ],
        vec!["compare", "run"],
    ] {
        ok(dyrep(d, &args, None));
    }
    ok(dyrep(d, &["-q", "train", "--resume", "run"], None));
    assert!(ck.join("last/arch.json").is_file());
    assert_eq!(debris(&d.join("run")), Vec::<String>::new());
}

/// Every way a checkpoint gets damaged, against every command that reads one: a one- or
/// two-line error naming the file, never a panic or a wrong answer.
#[test]
fn damaged_checkpoints_are_refused_by_every_reader_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    train_one_epoch(d, "run");
    ok(dyrep(
        d,
        &[
            "-q",
            "train",
            "--out",
            "other",
            "--model",
            "resnet-tiny",
            "--epochs",
            "1",
            "--train-limit",
            "64",
            "--test-limit",
            "32",
        ],
        None,
    ));
    let last = d.join("run/checkpoints/last");
    let files = [
        "arch.json",
        "model.safetensors",
        "optim.safetensors",
        "state.json",
    ];
    type Damage = Box<dyn Fn(&Path, &Path)>;
    let mut damages: Vec<(String, &str, Damage)> = Vec::new();
    for f in files {
        damages.push((
            format!("truncate {f}"),
            f,
            Box::new(move |ck: &Path, _| {
                let b = std::fs::read(ck.join(f)).unwrap();
                std::fs::write(ck.join(f), &b[..b.len() / 2]).unwrap();
            }),
        ));
        damages.push((
            format!("flip a byte of {f}"),
            f,
            Box::new(move |ck: &Path, _| {
                let mut b = std::fs::read(ck.join(f)).unwrap();
                let i = b.len() - 3;
                b[i] ^= 0x40;
                std::fs::write(ck.join(f), &b).unwrap();
            }),
        ));
        damages.push((
            format!("delete {f}"),
            f,
            Box::new(move |ck: &Path, _| std::fs::remove_file(ck.join(f)).unwrap()),
        ));
        damages.push((
            format!("swap in another model's {f}"),
            f,
            Box::new(move |ck: &Path, other: &Path| {
                std::fs::copy(other.join(f), ck.join(f)).unwrap();
            }),
        ));
    }
    let readers: [&[&str]; 5] = [
        &["eval", "--checkpoint", "ck", "--limit", "8"],
        &["inspect", "ck"],
        &[
            "export",
            "--checkpoint",
            "ck",
            "--format",
            "onnx",
            "--out",
            "x.onnx",
        ],
        &[
            "fuse",
            "--checkpoint",
            "ck",
            "--out",
            "fused",
            "--limit",
            "8",
        ],
        &["train", "--resume", "run2"],
    ];
    for (what, file, damage) in &damages {
        for reader in readers {
            let _ = std::fs::remove_dir_all(d.join("run2"));
            let _ = std::fs::remove_dir_all(d.join("ck"));
            copy_dir(&d.join("run"), &d.join("run2"));
            copy_dir(&last, &d.join("ck"));
            let target = match reader[0] {
                "train" => d.join("run2/checkpoints/last"),
                _ => d.join("ck"),
            };
            damage(&target, &d.join("other/checkpoints/last"));
            let o = dyrep(d, reader, None);
            refused(&o, file, &format!("{what} × {}", reader[0]));
        }
    }
    assert!(!d.join("x.onnx").exists() && !d.join("fused").exists());
}

/// A checkpoint without a manifest (written before checksums existed) with a NaN weight:
/// refused by every reader, naming the tensor, instead of evaluating to NaN or exporting it.
#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    train_one_epoch(d, "run");
    let ck = d.join("run/checkpoints/last");
    std::fs::remove_file(ck.join("manifest.json")).unwrap();
    nan_into_an_f32_tensor(&ck.join("model.safetensors"));
    for args in [
        vec!["eval", "--checkpoint", "run", "--limit", "8"],
        vec![
            "export",
            "--checkpoint",
            "run",
            "--format",
            "safetensors",
            "--out",
            "x.safetensors",
        ],
        vec![
            "fuse",
            "--checkpoint",
            "run",
            "--out",
            "fused",
            "--limit",
            "8",
        ],
        vec!["train", "--resume", "run"],
    ] {
        let o = dyrep(d, &args, None);
        refused(&o, "NaN", &format!("{args:?}"));
    }
    assert!(!d.join("x.safetensors").exists());
}

/// Regression: export, eval, plot and compare overwrote the checkpoint or run files they read.
#[test]
fn outputs_never_overwrite_what_a_command_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    train_one_epoch(d, "run");
    let before = snapshot(&d.join("run"));
    let cases: [(&[&str], &str); 7] = [
        (
            &[
                "export",
                "--checkpoint",
                "run",
                "--format",
                "onnx",
                "--out",
                "run/checkpoints/last/model.safetensors",
            ],
            "--out",
        ),
        (
            &[
                "export",
                "--checkpoint",
                "run/checkpoints/last",
                "--format",
                "safetensors",
                "--out",
                "run/state.safetensors",
            ],
            "--out",
        ),
        (
            &[
                "eval",
                "--checkpoint",
                "run",
                "--limit",
                "8",
                "--logits-out",
                "run/metrics.csv",
            ],
            "--logits-out",
        ),
        (
            &[
                "eval",
                "--checkpoint",
                "run",
                "--limit",
                "8",
                "--inputs-out",
                "run/checkpoints/last/state.json",
            ],
            "--inputs-out",
        ),
        (&["plot", "run", "--out", "run/metrics.csv"], "--out"),
        (&["compare", "run", "--svg", "run/summary.json"], "--svg"),
        (
            &[
                "fuse",
                "--checkpoint",
                "run",
                "--out",
                "run/checkpoints/fused",
                "--limit",
                "8",
            ],
            "--out",
        ),
    ];
    for (args, flag) in cases {
        let o = dyrep(d, args, None);
        refused(&o, flag, &format!("{args:?}"));
        assert_eq!(snapshot(&d.join("run")), before, "{args:?} changed the run");
    }
    // The run's own chart may be redrawn.
    ok(dyrep(d, &["plot", "run", "--out", "run/curves.svg"], None));
}

/// Regression: `train --force --out DIR` deleted any directory, the working directory included.
#[test]
fn force_replaces_only_a_dyrep_run() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::create_dir_all(d.join("victim")).unwrap();
    std::fs::write(d.join("victim/thesis.tex"), "years").unwrap();
    let o = dyrep(d, &train_args("victim", &["--force"]), None);
    refused(&o, "thesis.tex", "--force on a foreign directory");
    assert_eq!(
        std::fs::read_to_string(d.join("victim/thesis.tex")).unwrap(),
        "years"
    );
    // The working directory, even when it is a run.
    train_one_epoch(d, "run");
    let o = dyrep(&d.join("run"), &train_args(".", &["--force"]), None);
    refused(&o, "working directory", "--force on the working directory");
    assert!(d.join("run/checkpoints/last/arch.json").is_file());
    // A run is replaced; a start that fails leaves the old run in place.
    let o = dyrep(
        d,
        &train_args("run", &["--force", "--model", "vgg-tinny"]),
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(d.join("run/checkpoints/last/arch.json").is_file());
    ok(dyrep(
        d,
        &train_args("run", &["--force", "--epochs", "1", "--seed", "3"]),
        None,
    ));
    let cfg = std::fs::read_to_string(d.join("run/config.resolved.toml")).unwrap();
    assert!(cfg.contains("seed = 3"), "{cfg}");
    assert_eq!(
        std::fs::read_dir(d).unwrap().count(),
        2,
        "debris beside the run"
    );
}

/// Regression: a hand-edited config.resolved.toml was silently ignored on resume.
#[test]
fn a_resume_refuses_an_edited_config_and_a_missing_optimizer_state() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(dyrep(d, &train_args("run", &["--stop-after", "1"]), None));
    let cfg = d.join("run/config.resolved.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("epochs = 2", "epochs = 5")).unwrap();
    refused(
        &dyrep(d, &["train", "--resume", "run"], None),
        "config.resolved.toml",
        "edited config",
    );
    std::fs::write(&cfg, &text).unwrap();
    ok(dyrep(
        d,
        &["-q", "train", "--resume", "run", "--stop-after", "1"],
        None,
    ));
}

/// Absurd sizes and non-finite values for numeric settings: refused before any allocation
/// (exit 1, one or two lines), never an abort for lack of memory.
#[test]
fn absurd_sizes_and_non_finite_settings_are_refused_before_allocation() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let conv = |key: &str, v: &str| {
        format!("[[layer]]\nkind = \"conv\"\nchannels = 8\n{key} = {v}\n\n[[layer]]\nkind = \"global_avg_pool\"\n\n[[layer]]\nkind = \"linear\"\n")
            .replace("channels = 8\nchannels", "channels")
    };
    let files = [
        ("channels.toml", conv("channels", "1000000000000")),
        ("kernel.toml", conv("kernel", "100001")),
        ("repeat.toml", conv("repeat", "100000000")),
        // Each layer fits, all of them do not (1,000 × 4096² × 9 weights, 600 GB).
        (
            "deep.toml",
            conv("repeat", "1000").replace("channels = 8", "channels = 4096"),
        ),
        (
            "features.toml",
            "[[layer]]\nkind = \"flatten\"\n\n[[layer]]\nkind = \"linear\"\nfeatures = 100000000000\n\n[[layer]]\nkind = \"linear\"\n".to_string(),
        ),
        (
            "dup.toml",
            "[[layer]]\nkind = \"conv\"\nchannels = 8\nname = \"a\"\n\n[[layer]]\nkind = \"conv\"\nchannels = 8\nname = \"a\"\n\n[[layer]]\nkind = \"global_avg_pool\"\n\n[[layer]]\nkind = \"linear\"\n".to_string(),
        ),
    ];
    for (name, body) in &files {
        std::fs::write(d.join(name), body).unwrap();
    }
    std::fs::write(d.join("minlr.toml"), "min_lr = nan\n").unwrap();
    std::fs::write(d.join("cutstd.toml"), "[dyrep]\ncut_min_std = nan\n").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--model-file", "channels.toml"], "GB"),
        (vec!["--model-file", "kernel.toml"], "kernel"),
        (vec!["--model-file", "repeat.toml"], "repeat"),
        (vec!["--model-file", "deep.toml"], "at least"),
        (vec!["--model-file", "features.toml"], "GB"),
        (vec!["--model-file", "dup.toml"], "dup.toml:6"),
        (vec!["--width", "1e30"], "width"),
        (vec!["--width", "nan"], "width"),
        (
            vec!["--width", "64", "--batch-size", "4000"],
            "--batch-size",
        ),
        (vec!["--cut-threshold", "nan"], "cut_threshold"),
        (vec!["-c", "minlr.toml"], "min_lr"),
        (vec!["-c", "cutstd.toml"], "cut_min_std"),
        (vec!["--test-limit", "0"], "test"),
        (vec!["--stop-after", "0"], "--stop-after"),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["train", "--out", "bad", "--epochs", "1", "--mode", "dyrep"];
        args.extend_from_slice(&extra);
        let o = dyrep(d, &args, None);
        refused(&o, needle, &format!("{extra:?}"));
        assert!(
            !d.join("bad").exists(),
            "{extra:?}: a run directory was created"
        );
    }
    for (args, needle) in [
        (
            vec![
                "bench",
                "train",
                "--model",
                "vgg-tiny",
                "--batch",
                "100000000",
            ],
            "--batch",
        ),
        (
            vec!["bench", "data", "--data", "default", "--size", "1000000000"],
            "--size",
        ),
        (vec!["bench", "train", "--width", "1e30"], "--width"),
    ] {
        refused(&dyrep(d, &args, None), needle, &format!("{args:?}"));
    }
    train_one_epoch(d, "run");
    for args in [
        vec!["eval", "--checkpoint", "run", "--limit", "0"],
        vec!["fuse", "--checkpoint", "run", "--out", "f", "--limit", "0"],
    ] {
        refused(&dyrep(d, &args, None), "--limit", &format!("{args:?}"));
    }
}

/// Writes a NaN over the first value of the first f32 tensor of a safetensors file (an 8-byte
/// header length, the JSON header with each tensor's dtype and data offsets, then the data).
fn nan_into_an_f32_tensor(path: &Path) {
    let mut b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let start = header
        .as_object()
        .unwrap()
        .values()
        .filter(|v| v["dtype"] == "F32")
        .map(|v| v["data_offsets"][0].as_u64().unwrap() as usize)
        .min()
        .expect("an f32 tensor");
    let at = 8 + n + start;
    b[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(path, &b).unwrap();
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Regression: a resume on an image folder whose files were replaced since the run started
/// trained on the changed data without a word. Also: the configurable cap on decoded pixels.
#[test]
fn a_resume_refuses_data_changed_since_the_run_started() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let image = |path: &Path, shade: u8| {
        image::RgbImage::from_fn(16, 16, |x, y| image::Rgb([x as u8 * 9, y as u8 * 7, shade]))
            .save(path)
            .unwrap();
    };
    for split in ["train", "test"] {
        for (ci, class) in ["a", "b"].iter().enumerate() {
            let cd = d.join("imgs").join(split).join(class);
            std::fs::create_dir_all(&cd).unwrap();
            for i in 0..8u8 {
                image(&cd.join(format!("{i}.png")), 100 * ci as u8 + i);
            }
        }
    }
    let args = [
        "-q",
        "train",
        "--out",
        "run",
        "--model",
        "vgg-tiny",
        "--data",
        "image-folder:imgs",
        "--epochs",
        "2",
        "--stop-after",
        "1",
        "--batch-size",
        "4",
        "--no-cache",
    ];
    // Images larger than the configured cap are refused before they are decoded.
    std::fs::write(d.join("cap.toml"), "max_image_pixels = 100\n").unwrap();
    let mut capped = args.to_vec();
    capped.extend(["-c", "cap.toml"]);
    refused(&dyrep(d, &capped, None), "max_image_pixels", "pixel cap");
    assert!(!d.join("run").exists());
    ok(dyrep(d, &args, None));
    image(&d.join("imgs/train/a/3.png"), 250);
    refused(
        &dyrep(d, &["train", "--resume", "run"], None),
        "changed",
        "replaced image",
    );
    image(&d.join("imgs/train/a/3.png"), 3);
    // The same pixels again, but a new modification time: only the in-memory pixels count.
    ok(dyrep(d, &["-q", "train", "--resume", "run"], None));
}

/// Settings that were accepted and then ignored or misreported: each a clear error now.
#[test]
fn settings_the_data_ignores_or_exceeds_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("cutout.toml"), "[augment]\ncutout = 100\n").unwrap();
    std::fs::write(d.join("pad.toml"), "[augment]\ncrop_padding = 29\n").unwrap();
    std::fs::create_dir_all(d.join("cifar")).unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["train", "--out", "bad", "--image-size", "64"],
            "held in memory",
        ),
        (
            vec!["train", "--out", "bad", "-c", "cutout.toml"],
            "augment.cutout",
        ),
        (
            vec!["train", "--out", "bad", "-c", "pad.toml"],
            "augment.crop_padding",
        ),
        (vec!["bench", "data", "--data", "default"], "held in memory"),
        (
            vec!["data", "pack", "cifar10:cifar", "--out", "shards"],
            "image-folder",
        ),
    ];
    for (args, needle) in cases {
        refused(&dyrep(d, &args, None), needle, &format!("{args:?}"));
    }
    assert!(!d.join("bad").exists() && !d.join("shards").exists());
}

/// A partial `[sgd]` table keeps the defaults of the keys it leaves out, as `[augment]` and
/// `[dyrep]` do; and a checkpoint's weights are as readable as its other files.
#[test]
fn a_partial_sgd_table_trains_and_checkpoint_files_share_one_mode() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("sgd.toml"), "[sgd]\nmomentum = 0.8\n").unwrap();
    ok(dyrep(
        d,
        &train_args("run", &["--epochs", "1", "-c", "sgd.toml"]),
        None,
    ));
    let cfg = std::fs::read_to_string(d.join("run/config.resolved.toml")).unwrap();
    assert!(
        cfg.contains("momentum = 0.8") && cfg.contains("nesterov = false"),
        "{cfg}"
    );
    let mode = |f: &str| {
        std::fs::metadata(d.join("run/checkpoints/last").join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("model.safetensors"), mode("state.json"));
    assert_eq!(mode("optim.safetensors"), mode("arch.json"));
}

/// Regression: pretrained weights with a NaN trained into a NaN loss blamed on the learning
/// rate; they are refused when loaded, naming the tensor.
#[test]
fn pretrained_weights_with_a_nan_are_refused_when_loaded() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    train_one_epoch(d, "run");
    ok(dyrep(
        d,
        &[
            "export",
            "--checkpoint",
            "run",
            "--format",
            "safetensors",
            "--out",
            "plain.safetensors",
        ],
        None,
    ));
    nan_into_an_f32_tensor(&d.join("plain.safetensors"));
    let o = dyrep(
        d,
        &train_args(
            "again",
            &["--epochs", "1", "--init-from", "plain.safetensors"],
        ),
        None,
    );
    refused(&o, "NaN", "pretrained NaN");
    assert!(String::from_utf8_lossy(&o.stderr).contains("plain.safetensors"));
    assert!(!String::from_utf8_lossy(&o.stderr).contains("--lr"));
}
