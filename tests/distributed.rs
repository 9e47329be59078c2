//! Data-parallel training under `mpirun` (a build with the `mpi` feature; `.ci/run` installs
//! Open MPI and runs this with `cargo test -p dyrep-cli --features mpi --test distributed`).
//! One thread per rank, and the single-process runs compared against also use one thread
//! (results are deterministic for a given thread count):
//! - plumbing, bitwise: 2 ranks reading the same batches ≡ 1 process (metrics and weights), in
//!   dbb mode and in dyrep mode with grows and cuts (events identical too);
//! - 2 ranks on disjoint shards train (dyrep mode stays in lockstep: every grow and cut is
//!   checked against rank 0's architecture), and a run stopped and resumed with 2 ranks equals
//!   the uninterrupted one; a resume with another world size and a probing scorer are refused.

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

/// metrics.csv without the wall-clock seconds.
fn metrics(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("metrics.csv"))
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(',').unwrap().0.to_string())
        .collect()
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
    assert_eq!(metrics(&d.join("one")), metrics(&d.join("two")));
    let weights =
        |r: &str| std::fs::read(d.join(r).join("checkpoints/last/model.safetensors")).unwrap();
    assert!(weights("one") == weights("two"), "the final weights differ");
    // Only rank 0 wrote the run directory, and the run records its world size.
    let state = std::fs::read_to_string(d.join("two/checkpoints/last/state.json")).unwrap();
    assert!(state.contains("\"world\": 2"), "{state}");
}

#[test]
fn dyrep_on_two_ranks_with_the_same_batches_equals_one_process_with_grows_and_cuts() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let run = |out: &'static str| {
        [
            &[
                "-q",
                "train",
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
    assert_eq!(metrics(&d.join("one")), metrics(&d.join("two")));
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
    assert_eq!(metrics(&d.join("whole")), metrics(&d.join("part")));
    // Each rank trained on half of every epoch: 640 / (2 × 32) = 10 steps; the test numbers
    // cover the 200 test images (reduced over the ranks).
    let summary = std::fs::read_to_string(d.join("whole/summary.json")).unwrap();
    assert!(summary.contains("\"epochs\": 2"), "{summary}");
}

#[test]
fn what_is_not_built_yet_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let args = [
        "-q",
        "train",
        "--mode",
        "dyrep",
        "--scorer",
        "grasp",
        "--distributed",
        "--epochs",
        "1",
        "--out",
        "x",
    ];
    let o = mpirun(d, 2, &args);
    assert!(!o.status.success());
    assert!(text(&o).contains("probes the model"), "{}", text(&o));
    assert!(!d.join("x").exists());
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
