//! End-to-end tests of the `dyrep` binary (owned by the dyrep-cli package): listing ops and
//! scorers (text and JSON), `verify` on all checks and on one op, exit codes for unknown names
//! and bad flags (docs/ARCHITECTURE.md "CLI contract").

use std::process::{Command, Output};

fn dyrep(args: &[&str]) -> Output {
    let dir = std::env::temp_dir();
    Command::new(env!("CARGO_BIN_EXE_dyrep"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run the dyrep binary")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn ops_json_lists_the_seven_built_in_ops_with_summaries() {
    let o = dyrep(&["ops", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "conv1x1",
            "conv1x1_kxk",
            "conv1x1_avg",
            "convkxk",
            "conv1xk",
            "convkx1",
            "identity"
        ]
    );
    for e in v.as_array().unwrap() {
        let s = e["summary"].as_str().unwrap();
        assert!(!s.is_empty() && !s.contains('\n'));
    }
}

#[test]
fn ops_and_scorers_print_tables() {
    let o = dyrep(&["ops"]);
    assert!(o.status.success());
    let s = stdout(&o);
    assert!(s.starts_with("NAME"), "{s}");
    assert!(s.contains("conv1x1_avg"));
    let o = dyrep(&["scorers", "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["synflow", "snip", "grad_norm", "grasp", "random", "vote"]
    );
}

#[test]
fn verify_all_passes_for_every_op_and_nested_blocks() {
    let o = dyrep(&["verify", "--all", "--cases", "20", "--seed", "1", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["passed"], true);
    let checks = v["checks"].as_array().unwrap();
    let names: Vec<&str> = checks
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    for want in [
        "conv1x1",
        "identity",
        "block",
        "nested:convkxk.conv",
        "nested:conv1x1_kxk.conv2",
    ] {
        assert!(names.contains(&want), "{names:?}");
    }
    for c in checks {
        assert_eq!(c["cases"], 20);
        assert!(c["worst_rel"].as_f64().unwrap() <= 1e-5, "{c}");
    }
}

#[test]
fn verify_one_op_prints_a_table() {
    let o = dyrep(&["verify", "--op", "conv1x1_kxk", "--cases", "10"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(
        s.contains("conv1x1_kxk") && s.contains("all 1 checks passed (10 cases)"),
        "{s}"
    );
}

#[test]
fn unknown_op_exits_1_with_known_names_and_suggestion() {
    let o = dyrep(&["verify", "--op", "conv1x1_kx"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("unknown op `conv1x1_kx`"), "{e}");
    assert!(e.contains("did you mean `conv1x1_kxk`"), "{e}");
    assert!(e.contains("identity"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn bad_flags_exit_1_and_help_exits_0() {
    assert_eq!(dyrep(&["verify", "--cases", "0"]).status.code(), Some(1));
    assert_eq!(
        dyrep(&["verify", "--op", "conv1x1", "--all"]).status.code(),
        Some(1)
    );
    assert_eq!(dyrep(&["frobnicate"]).status.code(), Some(1));
    assert_eq!(dyrep(&[]).status.code(), Some(1));
    let h = dyrep(&["verify", "--help"]);
    assert_eq!(h.status.code(), Some(0));
    assert!(stdout(&h).contains("dyrep verify --all --cases 200 --seed 1"));
}

#[test]
fn models_json_lists_the_zoo_with_params_and_macs() {
    let o = dyrep(&["models", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = v.as_array().unwrap();
    for name in [
        "vgg-tiny",
        "resnet-tiny",
        "vgg16",
        "resnet18",
        "resnet50-imagenet",
        "mobilenet-v1",
        "repvgg-a0",
        "repvgg-b0",
    ] {
        assert!(rows.iter().any(|r| r["name"] == name), "{name} missing");
    }
    let vgg16 = rows.iter().find(|r| r["name"] == "vgg16").unwrap();
    let params = vgg16["params"].as_f64().unwrap() / 1e6;
    let macs = vgg16["macs"].as_f64().unwrap() / 1e6;
    assert!(
        (params - 14.99).abs() < 0.02 && (macs - 313.5).abs() < 0.5,
        "{vgg16}"
    );
}

#[test]
fn bench_prints_the_json_keys() {
    let o = dyrep(&[
        "bench", "eval", "--model", "vgg-tiny", "--batch", "4", "--iters", "1", "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for k in ["images_per_sec", "gflops", "peak_rss_bytes"] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}: {v}");
    }
    assert_eq!(dyrep(&["bench", "fly"]).status.code(), Some(1));
}

#[test]
fn bench_reports_the_capped_instruction_set_tier() {
    let o = Command::new(env!("CARGO_BIN_EXE_dyrep"))
        .args(["bench", "eval", "--model", "bench-small", "--batch", "4"])
        .args(["--iters", "1", "--json"])
        .env("DYREP_ISA", "scalar")
        .output()
        .expect("run the dyrep binary");
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["isa"], "scalar", "{v}");
    assert_eq!(v["direct_conv"], "none", "{v}");
}

#[test]
fn bench_takes_a_width_multiplier() {
    let o = dyrep(&[
        "bench", "eval", "--model", "vgg16", "--width", "0.25", "--batch", "2", "--iters", "1",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["width"], 0.25, "{v}");
    // VGG-16 at width 0.25 on 3x32x32: 19.92 M MACs (313.5 M at width 1).
    assert_eq!(v["macs_per_image"].as_u64().unwrap(), 19_924_224, "{v}");
    let o = dyrep(&["bench", "eval", "--model", "vgg16", "--width", "0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--width 0"), "{}", stderr(&o));
}

#[test]
fn bench_train_reports_the_step_split_and_the_kernels() {
    let o = dyrep(&[
        "bench",
        "train",
        "--model",
        "bench-small",
        "--batch",
        "4",
        "--iters",
        "1",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["kernels"], "own", "{v}");
    assert!(
        ["avx512", "avx2", "scalar"].contains(&v["isa"].as_str().unwrap()),
        "{v}"
    );
    // A tier names its direct conv kernel or `none`; the portable tier has none.
    let direct = v["direct_conv"].as_str().unwrap();
    assert!(direct == "none" || direct == v["isa"], "{v}");
    assert_eq!(v["macs_per_image"].as_u64().unwrap(), 21_903_104, "{v}");
    for k in ["forward_ms", "backward_ms", "optimizer_ms"] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}: {v}");
    }
    assert!(
        v["kernel_ms"]["conv forward"].as_f64().unwrap() > 0.0,
        "{v}"
    );
}

#[test]
fn bench_grow_ops_grows_every_conv_and_refuses_unknown_ops() {
    let o = dyrep(&[
        "bench",
        "train",
        "--model",
        "vgg-tiny",
        "--batch",
        "4",
        "--iters",
        "1",
        "--grow-ops",
        "all",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // Every 3x3 conv of vgg-tiny grown with all seven ops: 16.48 M MACs (3x the plain 5.53 M).
    assert!(v["macs_per_image"].as_u64().unwrap() > 16_000_000, "{v}");
    assert!(v["mode"].as_str().unwrap().contains("identity"), "{v}");
    let bad = dyrep(&["bench", "train", "--grow-ops", "conv9x9", "--iters", "1"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("unknown op"), "{}", stderr(&bad));
}

#[test]
fn an_unknown_dyrep_isa_is_refused_with_the_values_it_takes() {
    let o = Command::new(env!("CARGO_BIN_EXE_dyrep"))
        .args(["bench", "eval", "--model", "bench-small", "--iters", "1"])
        .env("DYREP_ISA", "sse9")
        .output()
        .expect("run the dyrep binary");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("DYREP_ISA=sse9") && e.contains("avx2"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
}

#[test]
fn verify_kernels_checks_every_kernel_against_the_cpu_reference() {
    let o = dyrep(&[
        "verify",
        "--kernels",
        "--cases",
        "6",
        "--seed",
        "3",
        "--json",
    ]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["passed"], true, "{v}");
    // Every instruction-set tier of this CPU (at most DYREP_ISA's), highest first, down to
    // the portable one; the direct conv kernel wherever the tier has one.
    let tiers: Vec<&str> = v["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tiers.last(), Some(&"scalar"), "{v}");
    let direct_off = std::env::var("DYREP_CONV_DIRECT").is_ok_and(|v| v == "0");
    for tier in &tiers {
        let kernels: Vec<&str> = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["isa"] == *tier)
            .map(|c| c["kernel"].as_str().unwrap())
            .collect();
        let direct = *tier != "scalar" && !direct_off;
        assert_eq!(kernels.len(), if direct { 10 } else { 9 }, "{tier}: {v}");
        assert!(kernels.contains(&"grown block (fused)"), "{v}");
        assert_eq!(kernels.contains(&"conv2d (direct kernel)"), direct, "{v}");
        assert!(kernels.contains(&"conv+bn+relu (train)"), "{v}");
        assert!(kernels.contains(&"conv+bn+relu+pool (fused)"), "{v}");
        assert!(kernels.contains(&"conv unit stack (fused)"), "{v}");
    }
    // --kernels and --op are exclusive.
    assert_eq!(
        dyrep(&["verify", "--kernels", "--op", "conv1x1"])
            .status
            .code(),
        Some(1)
    );
}

#[test]
fn device_flag_rejects_bad_specs_and_cuda_without_the_feature() {
    let o = dyrep(&["--device", "gpu0", "ops"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("expected cpu, cuda or cuda:N"),
        "{}",
        stderr(&o)
    );
    if !cfg!(feature = "cuda") {
        let o = dyrep(&["bench", "eval", "--device", "cuda:0", "--iters", "1"]);
        assert_eq!(o.status.code(), Some(1));
        assert!(
            stderr(&o).contains("scripts/build-cuda.sh"),
            "{}",
            stderr(&o)
        );
    }
    assert!(dyrep(&["ops", "--device", "cpu"]).status.success());
}

/// A finished run directory as `dyrep train` leaves it, for the files `compare` reads: its
/// config and one test accuracy per epoch.
fn fake_run(dir: &std::path::Path, mode: &str, seed: u64, test_acc: &[f64]) {
    fake_run_costing(dir, mode, seed, test_acc, 2_000_000, (10.0, None));
}

/// [`fake_run`] with the MACs of its network and the wall-clock and processor seconds each
/// epoch took (without processor seconds: a `metrics.csv` as written before they were
/// recorded, which has no such column).
fn fake_run_costing(
    dir: &std::path::Path,
    mode: &str,
    seed: u64,
    test_acc: &[f64],
    macs: u64,
    (seconds, cpu): (f64, Option<f64>),
) {
    std::fs::create_dir_all(dir).unwrap();
    let scorer = if mode == "dyrep" {
        "\n[dyrep]\nscorer = \"snip\"\n"
    } else {
        ""
    };
    std::fs::write(
        dir.join("config.resolved.toml"),
        format!(
            "mode = \"{mode}\"\nseed = {seed}\nepochs = {}\n{scorer}",
            test_acc.len()
        ),
    )
    .unwrap();
    let mut csv = String::from("epoch,split,loss,acc,lr,params,macs,branches,seconds");
    csv.push_str(if cpu.is_some() {
        ",cpu_seconds\n"
    } else {
        "\n"
    });
    let cpu = cpu.map_or(String::new(), |c| format!(",{c}"));
    for (i, a) in test_acc.iter().enumerate() {
        let e = i + 1;
        csv.push_str(&format!(
            "{e},train,1.0,0.5,0.1,1000,{macs},0,{seconds}{cpu}\n"
        ));
        csv.push_str(&format!(
            "{e},test,1.0,{a},0.1,1000,{macs},0,{seconds}{cpu}\n"
        ));
    }
    std::fs::write(dir.join("metrics.csv"), csv).unwrap();
}

#[test]
fn compare_groups_runs_by_mode_and_pairs_seeds_with_the_baseline() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // origin 0.50 / 0.60, dyrep (scorer snip) 0.53 / 0.61: paired differences +3 and +1 pp.
    fake_run(&d.join("o0"), "origin", 0, &[0.4, 0.5]);
    fake_run(&d.join("o1"), "origin", 1, &[0.4, 0.6]);
    fake_run(&d.join("d0"), "dyrep", 0, &[0.4, 0.53]);
    fake_run(&d.join("d1"), "dyrep", 1, &[0.4, 0.61]);
    let args = |extra: &[&str]| {
        let mut a = vec!["compare"];
        let dirs: Vec<String> = ["o0", "o1", "d0", "d1"]
            .iter()
            .map(|r| d.join(r).display().to_string())
            .collect();
        a.extend(dirs.iter().map(String::as_str).collect::<Vec<_>>());
        let svg = d.join("groups.svg").display().to_string();
        a.extend(["--group-by", "mode,scorer", "--baseline", "origin", "--svg"]);
        let mut owned: Vec<String> = a.iter().map(|s| s.to_string()).collect();
        owned.push(svg);
        owned.extend(extra.iter().map(|s| s.to_string()));
        owned
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        dyrep(&refs)
    };
    let o = run(&["--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let groups = v.as_array().unwrap();
    assert_eq!(groups.len(), 2, "{v}");
    let dy = groups
        .iter()
        .find(|g| g["group"] == "dyrep scorer=snip")
        .unwrap();
    let delta = &dy["delta_final_acc"];
    assert!((delta["mean"].as_f64().unwrap() - 0.02).abs() < 1e-9, "{v}");
    // sd of (0.03, 0.01) = √2·0.01; t(1) = 12.706.
    let hi = delta["ci95"][1].as_f64().unwrap();
    assert!((hi - 0.02 - 12.706 * 0.01).abs() < 1e-6, "{v}");
    assert!((dy["final_test_acc"]["mean"].as_f64().unwrap() - 0.57).abs() < 1e-9);
    let origin = groups.iter().find(|g| g["group"] == "origin").unwrap();
    assert!(origin["delta_final_acc"].is_null(), "{v}");
    // The markdown table and a well-formed chart.
    let o = run(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let t = stdout(&o);
    assert!(
        t.contains("| dyrep scorer=snip | 2 | 57.00 ± 5.66 |"),
        "{t}"
    );
    assert!(t.contains("+2.00 [-10.71, +14.71] (n=2)"), "{t}");
    // Runs written before processor time was recorded: train time, no processor time.
    assert!(t.contains("| 20 ± 0 | 1.00× | — |"), "{t}");
    roxmltree::Document::parse(&std::fs::read_to_string(d.join("groups.svg")).unwrap())
        .expect("group chart is well-formed XML");
    // An unknown key or baseline is one clear line.
    let o = dyrep(&[
        "compare",
        d.join("o0").to_str().unwrap(),
        "--group-by",
        "mdoe",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("did you mean `mode`"), "{}", stderr(&o));
    let o = dyrep(&[
        "compare",
        d.join("o0").to_str().unwrap(),
        "--group-by",
        "mode",
        "--baseline",
        "dbb",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("--baseline dbb: no such group (groups: origin)"),
        "{}",
        stderr(&o)
    );
}

/// A run still in progress (or stopped) was averaged into its group as if its last epoch were
/// its final one, and a group holding two runs of one seed was paired with the baseline through
/// one of them only; both are refused now, and the per-run table marks the unfinished run.
#[test]
fn compare_refuses_unfinished_runs_and_two_runs_of_a_seed_in_a_paired_group() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    fake_run(&d.join("o0"), "origin", 0, &[0.4, 0.5]);
    fake_run(&d.join("d0"), "dyrep", 0, &[0.4, 0.53]);
    // d1 asks for 3 epochs and has run 2 of them.
    fake_run(&d.join("d1"), "dyrep", 1, &[0.4, 0.5, 0.6]);
    let csv = std::fs::read_to_string(d.join("d1/metrics.csv")).unwrap();
    let two_epochs: Vec<&str> = csv.lines().take(5).collect();
    std::fs::write(d.join("d1/metrics.csv"), two_epochs.join("\n") + "\n").unwrap();
    let path = |r: &str| d.join(r).display().to_string();
    let (o0, d0, d1) = (path("o0"), path("d0"), path("d1"));

    let o = dyrep(&["compare", &o0, &d0, &d1, "--group-by", "mode"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let e = stderr(&o);
    assert!(
        e.contains("this run is unfinished:") && e.contains(&format!("{d1} (2 of 3 epochs)")),
        "{e}"
    );
    assert!(e.contains("dyrep train --resume DIR"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    // Without --group-by the run is listed, its epochs marked as unfinished.
    let o = dyrep(&["compare", &o0, &d1]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("| dyrep | 2 of 3 | 0.5000 |"),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).contains("| origin | 2 | 0.5000 |"),
        "{}",
        stdout(&o)
    );
    let o = dyrep(&["compare", &o0, &d1, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[1]["epochs"], 2, "{v}");
    assert_eq!(v[1]["planned_epochs"], 3, "{v}");

    // Two dyrep runs of seed 0 (scorers snip and random) grouped by mode alone.
    fake_run(&d.join("r0"), "dyrep", 0, &[0.4, 0.45]);
    let cfg = std::fs::read_to_string(d.join("r0/config.resolved.toml")).unwrap();
    std::fs::write(
        d.join("r0/config.resolved.toml"),
        cfg.replace("\"snip\"", "\"random\""),
    )
    .unwrap();
    let r0 = path("r0");
    let base = ["compare", &o0, &d0, &r0, "--group-by"];
    let o = dyrep(&[&base[..], &["mode", "--baseline", "origin"]].concat());
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let e = stderr(&o);
    assert!(
        e.contains("group `dyrep` has 2 runs of seed 0 (d0, r0)") && e.contains("mode,scorer"),
        "{e}"
    );
    // Grouped without a baseline there is no pairing to spoil; by scorer each group has one run
    // per seed.
    assert!(dyrep(&[&base[..], &["mode"]].concat()).status.success());
    let o = dyrep(&[&base[..], &["mode,scorer", "--baseline", "origin"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("| dyrep scorer=random | 1 | 45.00 |"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn compare_states_each_groups_cost_against_the_cost_group() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // MACs 2 M / 5 M / 4 M, 10 / 40 / 30 s and 16 / 64 / 32 processor seconds per epoch:
    // dyrep costs 0.80× DBB's MACs, 0.75× its time and 0.50× its processor time; origin
    // 0.40×, 0.25× and 0.25×.
    for (run, mode, macs, seconds, cpu) in [
        ("o0", "origin", 2_000_000, 10.0, 16.0),
        ("b0", "dbb", 5_000_000, 40.0, 64.0),
        ("d0", "dyrep", 4_000_000, 30.0, 32.0),
    ] {
        fake_run_costing(&d.join(run), mode, 0, &[0.5], macs, (seconds, Some(cpu)));
    }
    let dirs: Vec<String> = ["o0", "b0", "d0"]
        .iter()
        .map(|r| d.join(r).display().to_string())
        .collect();
    let svg = d.join("g.svg").display().to_string();
    let mut a: Vec<&str> = vec!["compare"];
    a.extend(dirs.iter().map(String::as_str));
    a.extend([
        "--group-by",
        "mode",
        "--baseline",
        "origin",
        "--cost-vs",
        "dbb",
    ]);
    a.extend(["--svg", svg.as_str()]);
    let o = dyrep(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    let t = stdout(&o);
    assert!(t.contains("| MACs / dbb | time / dbb | CPU / dbb |"), "{t}");
    let row = |g: &str| {
        t.lines()
            .find(|l| l.starts_with(&format!("| {g} |")))
            .unwrap()
            .to_string()
    };
    assert!(row("dyrep").ends_with("| 0.80× | 0.75× | 0.50× |"), "{t}");
    assert!(row("origin").ends_with("| 0.40× | 0.25× | 0.25× |"), "{t}");
    assert!(row("dbb").ends_with("| 1.00× | 1.00× | 1.00× |"), "{t}");
    assert!(
        row("dyrep").contains("| 32 | 0.0 | 0.0 |"),
        "processor seconds, grows, cuts: {t}"
    );
    a.push("--json");
    let o = dyrep(&a);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let dy = v
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == "dyrep")
        .unwrap();
    assert_eq!(dy["cost_vs"]["group"], "dbb", "{v}");
    assert!(
        (dy["cost_vs"]["macs"].as_f64().unwrap() - 0.8).abs() < 1e-12,
        "{v}"
    );
    // Without --cost-vs the table keeps its columns; an unknown cost group is one clear line.
    let plain: Vec<&str> = a
        .iter()
        .copied()
        .filter(|x| !["--cost-vs", "dbb", "--json"].contains(x))
        .collect();
    let o = dyrep(&plain);
    assert!(!stdout(&o).contains("MACs / dbb"), "{}", stdout(&o));
    let o = dyrep(&[
        "compare",
        dirs[0].as_str(),
        "--group-by",
        "mode",
        "--cost-vs",
        "dbb",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("--cost-vs dbb: no such group (groups: origin)"),
        "{}",
        stderr(&o)
    );
}

/// How many marks filled in `fill` a chart has: circles (`corners` None) or polygons of
/// `corners` corners.
fn marks(svg: &roxmltree::Document, fill: &str, corners: Option<usize>) -> usize {
    svg.descendants()
        .filter(|n| {
            n.attribute("fill")
                .is_some_and(|f| f.eq_ignore_ascii_case(fill))
        })
        .filter(|n| match corners {
            None => n.has_tag_name("circle"),
            Some(k) => {
                n.has_tag_name("polygon")
                    && n.attribute("points")
                        .is_some_and(|p| p.split_whitespace().count() == k)
            }
        })
        .count()
}

#[test]
fn compare_charts_past_eight_runs_tell_repeated_colours_apart_by_marker() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let dirs: Vec<String> = (0..9)
        .map(|seed| {
            let run = d.join(format!("o{seed}"));
            fake_run(&run, "origin", seed, &[0.3, 0.4, 0.5]);
            run.display().to_string()
        })
        .collect();
    let chart = |n: usize| {
        let svg = d.join(format!("runs{n}.svg"));
        let mut a: Vec<&str> = vec!["compare"];
        a.extend(dirs[..n].iter().map(String::as_str));
        let svg_arg = svg.display().to_string();
        a.extend(["--svg", svg_arg.as_str()]);
        let o = dyrep(&a);
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read_to_string(svg).unwrap()
    };
    // The first palette colour: o0's points are circles, and with a ninth run, that run's
    // points are triangles in the same colour (3 epochs × 3 panels), each legend showing its
    // marker (an 8-corner outline for a circle, a 3-corner one for a triangle).
    let first = "#1F77B4";
    let eight = chart(8);
    let eight = roxmltree::Document::parse(&eight).expect("well-formed chart");
    assert_eq!(marks(&eight, first, None), 9);
    assert_eq!(marks(&eight, first, Some(3)), 0);
    assert_eq!(marks(&eight, first, Some(8)), 3);
    let nine = chart(9);
    let nine = roxmltree::Document::parse(&nine).expect("well-formed chart");
    assert_eq!(marks(&nine, first, None), 9);
    assert_eq!(marks(&nine, first, Some(3)), 9 + 3);
}
