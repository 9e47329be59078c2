//! Data-parallel training under `mpirun` (a build with the `mpi` feature; `.ci/run` installs
//! Open MPI and runs this with `cargo test -p dyrep-cli --features mpi --test distributed`).
//! One thread per rank, and the single-process runs compared against also use one thread
//! (results are deterministic for a given thread count):
//! - plumbing, bitwise: 2 ranks reading the same batches ≡ 1 process (metrics and weights), in
//!   dbb mode and in dyrep mode with grows and cuts (events identical too);
//! - 2 ranks on disjoint shards train (dyrep mode stays in lockstep: every grow and cut is
//!   checked against rank 0's architecture), and a run stopped and resumed with 2 ranks equals
//!   the uninterrupted one, over an image folder and over tar shards; a resume with another
//!   world size is refused;
//! - a probing scorer (GraSP) on 2 ranks with the same batches equals one process;
//! - `--sync-bn`: 2 ranks on the same batches equal one process bit for bit; 2 ranks × batch B
//!   on shards track 1 process × batch 2B up to float summation order.

mod support;

use support::metrics_without_times;

use std::path::Path;
use std::process::{Command, Output};

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn dyrep(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dyrep"))
        .current_dir(dir)
        .env("RAYON_NUM_THREADS", "1")
        .args(args)
        .output()
        .expect("run dyrep")
}

fn mpirun(dir: &Path, ranks: usize, args: &[&str]) -> Output {
    Command::new("mpirun")
        .current_dir(dir)
        .args(["--oversubscribe", "--allow-run-as-root", "-np"])
        .arg(ranks.to_string())
        .args(["-x", "RAYON_NUM_THREADS=1", env!("CARGO_BIN_EXE_dyrep")])
        .args(args)
        .output()
        .expect("run mpirun (Open MPI: apt install openmpi-bin)")
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "failed: {}", text(&o));
    o
}

const SMALL: [&str; 8] = [
    "--train-limit",
    "640",
    "--test-limit",
    "200",
    "--batch-size",
    "32",
    "--epochs",
    "2",
];

#[test]
fn two_ranks_on_the_same_batches_equal_one_process_bitwise() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let run = |out: &'static str| {
        [
            &["-q", "train", "--mode", "dbb", "--out", out][..],
            &SMALL[..],
        ]
        .concat()
    };
    ok(dyrep(d, &run("one")));
    let mut two = run("two");
    two.extend(["--distributed", "--dist-same-data"]);
    ok(mpirun(d, 2, &two));
    assert_eq!(
        metrics_without_times(&d.join("one")),
        metrics_without_times(&d.join("two"))
    );
    let weights =
        |r: &str| std::fs::read(d.join(r).join("checkpoints/last/model.safetensors")).unwrap();
    assert!(weights("one") == weights("two"), "the final weights differ");
    // Only rank 0 wrote the run directory, and the run records its world size.
    let state = std::fs::read_to_string(d.join("two/checkpoints/last/state.json")).unwrap();
    assert!(state.contains("\"world\": 2"), "{state}");
}

#[test]
fn dyrep_on_two_ranks_with_the_same_batches_equals_one_process_with_grows_and_cuts() {
    dyrep_ranks_in_lockstep("");
}

/// The online block form keeps the ranks in lockstep the same way. Its scales spread more
/// slowly than the BN form's γ in three short epochs, so cuts are allowed as soon as the
/// importances differ at all.
#[test]
fn dyrep_online_on_two_ranks_with_the_same_batches_equals_one_process_with_grows_and_cuts() {
    dyrep_ranks_in_lockstep("block_form = \"online\"\n[dyrep]\ncut_min_std = 0.0\n");
}

/// One process and two ranks on the same batches, with the settings of `config` (the run's
/// config file), grow and cut alike, bit for bit.
fn dyrep_ranks_in_lockstep(config: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("run.toml"), config).unwrap();
    let run = |out: &'static str| {
        [
            &[
                "-q",
                "train",
                "-c",
                "run.toml",
                "--mode",
                "dyrep",
                "--grow-interval",
                "0.5",
                "--gamma0",
                "0.5",
                "--cut-threshold",
                "0.9",
                "--out",
                out,
            ][..],
            &SMALL[..6],
            &["--epochs", "3"][..],
        ]
        .concat()
    };
    ok(dyrep(d, &run("one")));
    let mut two = run("two");
    two.extend(["--distributed", "--dist-same-data"]);
    ok(mpirun(d, 2, &two));
    assert_eq!(
        metrics_without_times(&d.join("one")),
        metrics_without_times(&d.join("two"))
    );
    let events = |r: &str| std::fs::read_to_string(d.join(r).join("events.jsonl")).unwrap();
    assert_eq!(events("one"), events("two"));
    let e = events("one");
    assert!(e.contains("\"grow\"") && e.contains("\"cut\""), "{e}");
    // On disjoint shards the ranks still grow and cut alike (the run would stop otherwise).
    let mut sharded = run("sharded");
    sharded.push("--distributed");
    ok(mpirun(d, 2, &sharded));
    assert!(events("sharded").contains("\"grow\""));
}

#[test]
fn sharded_ranks_train_and_resume_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let run = |out: &'static str| {
        [
            &[
                "-q",
                "train",
                "--mode",
                "origin",
                "--distributed",
                "--out",
                out,
            ][..],
            &SMALL[..],
        ]
        .concat()
    };
    ok(mpirun(d, 2, &run("whole")));
    let mut part = run("part");
    part.extend(["--stop-after", "1"]);
    ok(mpirun(d, 2, &part));
    // Another world size is refused, naming the one to use.
    let o = dyrep(d, &["train", "--resume", "part"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("mpirun -np 2"), "{}", text(&o));
    ok(mpirun(
        d,
        2,
        &["-q", "train", "--resume", "part", "--distributed"],
    ));
    assert_eq!(
        metrics_without_times(&d.join("whole")),
        metrics_without_times(&d.join("part"))
    );
    // Each rank trained on half of every epoch: 640 / (2 × 32) = 10 steps; the test numbers
    // cover the 200 test images (reduced over the ranks).
    let summary = std::fs::read_to_string(d.join("whole/summary.json")).unwrap();
    assert!(summary.contains("\"epochs\": 2"), "{summary}");
}

/// Every tensor of a run's final checkpoint (parameters and running statistics), by name.
fn final_tensors(run: &Path) -> Vec<(String, Vec<f32>)> {
    let path = run.join("checkpoints/last/model.safetensors");
    let tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = tensors
        .into_iter()
        .map(|(name, t)| (name, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The distance between two runs' final tensors: Σ|a − b| / Σ|b| over every value (robust to
/// the few values a float reordering moves far, which a maximum would report).
fn relative_l1_distance(a: &Path, b: &Path) -> f64 {
    let (ta, tb) = (final_tensors(a), final_tensors(b));
    assert_eq!(
        ta.iter().map(|t| &t.0).collect::<Vec<_>>(),
        tb.iter().map(|t| &t.0).collect::<Vec<_>>()
    );
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for ((_, x), (_, y)) in ta.iter().zip(&tb) {
        for (p, q) in x.iter().zip(y) {
            diff += (p - q).abs() as f64;
            norm += q.abs() as f64;
        }
    }
    diff / norm
}

/// `train` arguments for the synchronised-BN checks.
fn sync_run(mode: &str, out: &str, batch: &str, limit: &str, extra: &[&str]) -> Vec<String> {
    let args = [
        "-q",
        "train",
        "--mode",
        mode,
        "--train-limit",
        limit,
        "--test-limit",
        "100",
        "--epochs",
        "1",
        "--batch-size",
        batch,
        "--out",
        out,
        "--sync-bn",
    ];
    args.iter().chain(extra).map(|s| s.to_string()).collect()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `--sync-bn`, plumbing: 2 ranks that read the same batch of B examples normalise with the
/// statistics of the 2B values, which are exactly the one batch's (the sums double, the count
/// doubles: both exact in binary floating point), and the backward all-reduce doubles every
/// statistic's gradient exactly while the mean divides it by the doubled count — so every
/// parameter equals one process's with `--sync-bn` (the same code path) bit for bit, in a
/// plain network and one with grown blocks run branch by branch. The running variance is the
/// exception by design: its unbiased correction uses the global count, 2n/(2n−1) instead of
/// n/(n−1). (dbb mode is left out here: its two-stage branches pad with values computed from
/// that running variance, so the correction reaches the parameters.)
#[test]
fn sync_bn_on_two_ranks_with_the_same_batches_equals_one_process_bitwise() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for mode in ["origin", "repvgg"] {
        let (one, two) = (format!("{mode}-one"), format!("{mode}-two"));
        ok(dyrep(d, &refs(&sync_run(mode, &one, "32", "128", &[]))));
        let same = ["--distributed", "--dist-same-data"];
        ok(mpirun(
            d,
            2,
            &refs(&sync_run(mode, &two, "32", "128", &same)),
        ));
        let (a, b) = (final_tensors(&d.join(one)), final_tensors(&d.join(two)));
        assert_eq!(a.len(), b.len());
        for ((name, x), (_, y)) in a.iter().zip(&b) {
            if !name.ends_with("running_var") {
                assert!(x == y, "{mode}: {name} differs");
            }
        }
    }
}

/// `--sync-bn`, on disjoint shards: 2 ranks × batch 32 take the step 1 process × batch 64
/// takes (each rank's shard of the seeded order holds every other example, so the two ranks'
/// batches are the single process's batch), up to the order of float summation — per rank
/// then across ranks instead of over the whole batch. One step, compared by the relative L1
/// distance of all final tensors. Measured here: 2e-8 (origin) and 1.5e-6 (dbb: the first
/// layer's 1×1 → BN → avg-pool branch has a weight gradient that cancels heavily, so a
/// reordering moves it most). Per-rank statistics (no `--sync-bn`) are those of 32 instead of
/// 64 examples, a difference of order 1/√32 in every BN's output: 1.0e-3 and 1.1e-3. The test
/// requires the synchronised step to be at least 100× closer than the unsynchronised one. (Over
/// more steps both distances grow — the dynamics amplify any difference, a reordering too — so
/// one step is the sharp check; the bitwise test above covers the plumbing over several.)
#[test]
fn sync_bn_on_two_shards_takes_the_step_of_one_process_with_the_double_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for mode in ["origin", "dbb"] {
        let path = |name: &str| d.join(format!("{mode}-{name}"));
        let one = sync_run(mode, &format!("{mode}-one"), "64", "64", &[]);
        ok(dyrep(d, &refs(&one)));
        let synced = sync_run(
            mode,
            &format!("{mode}-synced"),
            "32",
            "64",
            &["--distributed"],
        );
        ok(mpirun(d, 2, &refs(&synced)));
        let mut local = sync_run(
            mode,
            &format!("{mode}-local"),
            "32",
            "64",
            &["--distributed"],
        );
        local.retain(|a| a != "--sync-bn");
        ok(mpirun(d, 2, &refs(&local)));
        let with_sync = relative_l1_distance(&path("synced"), &path("one"));
        let without = relative_l1_distance(&path("local"), &path("one"));
        eprintln!(
            "{mode}: relative L1 distance to one process after one step: {with_sync:e} with --sync-bn, {without:e} without"
        );
        assert!(
            100.0 * with_sync < without,
            "{mode}: {with_sync:e} with --sync-bn is not 100x closer than {without:e} without"
        );
    }
}

/// GraSP probes the model with extra gradient passes on the step's batch; their gradients are
/// averaged over the ranks like the step's, so 2 ranks reading the same batches score, grow
/// and cut exactly as one process does.
#[test]
fn a_probing_scorer_on_two_ranks_with_the_same_batches_equals_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let run = |out: &'static str| {
        [
            &[
                "-q",
                "train",
                "--mode",
                "dyrep",
                "--scorer",
                "grasp",
                "--grow-interval",
                "0.5",
                "--out",
                out,
            ][..],
            &SMALL[..6],
            &["--epochs", "2"][..],
        ]
        .concat()
    };
    ok(dyrep(d, &run("one")));
    let mut two = run("two");
    two.extend(["--distributed", "--dist-same-data"]);
    ok(mpirun(d, 2, &two));
    assert_eq!(
        metrics_without_times(&d.join("one")),
        metrics_without_times(&d.join("two"))
    );
    let events = |r: &str| std::fs::read_to_string(d.join(r).join("events.jsonl")).unwrap();
    assert_eq!(events("one"), events("two"));
    assert!(events("one").contains("\"grow\""), "{}", events("one"));
    // On disjoint shards each rank probes its own batch; averaged, the probes give every rank
    // the same scores (unaveraged, the ranks grow different convs and the run stops at the
    // architecture check).
    let mut sharded = run("sharded");
    sharded.push("--distributed");
    ok(mpirun(d, 2, &sharded));
    assert!(events("sharded").contains("\"grow\""));
}

/// Tar shards on 2 ranks: each rank keeps every other sample of the epoch's shard stream, both
/// take the same number of steps (24 samples / (2 ranks × batch 4) = 3), and a run stopped
/// after one epoch and resumed equals the uninterrupted one.
#[test]
fn tar_shards_train_on_two_ranks_and_resume_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    for split in ["train", "test"] {
        for (ci, class) in ["ant", "bee"].iter().enumerate() {
            let dir = d.join("src").join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..12u32 {
                let img = image::RgbImage::from_fn(10 + i, 12 + i, |x, y| {
                    image::Rgb([(x * 17 + 5 * i) as u8, (y * 29) as u8, 50 + 100 * ci as u8])
                });
                img.save(dir.join(format!("{i}.png"))).unwrap();
            }
        }
    }
    ok(dyrep(
        d,
        &[
            "-q",
            "data",
            "pack",
            "image-folder:src",
            "--out",
            "packed",
            "--shard-size",
            "2KB",
        ],
    ));
    let run = |out: &'static str| {
        [
            "-q",
            "train",
            "--data",
            "shards:packed",
            "--image-size",
            "16",
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--distributed",
            "--out",
            out,
        ]
    };
    ok(mpirun(d, 2, &run("whole")));
    let log = std::fs::read_to_string(d.join("whole/run.log")).unwrap();
    assert!(log.contains("every rank's weights equal rank 0's"), "{log}");
    let mut part = run("part").to_vec();
    part.extend(["--stop-after", "1"]);
    ok(mpirun(d, 2, &part));
    ok(mpirun(
        d,
        2,
        &["-q", "train", "--resume", "part", "--distributed"],
    ));
    assert_eq!(
        metrics_without_times(&d.join("whole")),
        metrics_without_times(&d.join("part"))
    );
}

/// A rank killed mid-run makes the whole job stop with an error (MPI's error handling) instead
/// of hanging, and rank 0's last checkpoint stays loadable.
#[test]
fn a_killed_rank_stops_the_run_and_the_checkpoint_survives() {
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    /// Ends the job whatever happens to the test (a failed assertion must not leave it running).
    struct Job(std::process::Child);
    impl Drop for Job {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut job = Job(Command::new("mpirun")
        .current_dir(d)
        .args(["--oversubscribe", "--allow-run-as-root", "-np", "2"])
        .args(["-x", "RAYON_NUM_THREADS=1", env!("CARGO_BIN_EXE_dyrep")])
        .args([
            "-q",
            "train",
            "--distributed",
            "--epochs",
            "200",
            "--out",
            "killed",
        ])
        .args([
            "--train-limit",
            "640",
            "--test-limit",
            "100",
            "--batch-size",
            "32",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run mpirun"));
    let state = d.join("killed/checkpoints/last/state.json");
    let start = Instant::now();
    while !state.is_file() {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Kill one rank (the newest dyrep process training into this directory).
    let out = Command::new("pgrep")
        .args(["-n", "-f", "epochs 200 --out killed"])
        .output()
        .unwrap();
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!pid.is_empty(), "no rank found");
    Command::new("kill").args(["-9", &pid]).status().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = job.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the job did not stop within 120 s of a rank's death"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        !status.success(),
        "the job ended successfully after a rank was killed"
    );
    ok(dyrep(d, &["-q", "eval", "--checkpoint", "killed"]));
}
