//! The own-loop example end to end: DyRep added to a hand-written loop grows, cuts and fuses
//! back to the plain network; the binary reports it and refuses bad flags.

use std::process::Command;

use dyrep_own_loop::{fusion_within_tolerance, run, Settings};

#[test]
fn dyrep_in_a_hand_written_loop_grows_cuts_and_fuses_to_the_plain_network() {
    let s = Settings::default();
    let mut lines = Vec::new();
    let out = run(&s, &mut |l| lines.push(l)).unwrap();
    let log = lines.join("\n");
    assert!(out.count("grow") >= 2, "{log}");
    assert!(out.count("cut") >= 1, "{log}");
    for e in &out.events {
        // dyrep's contract for a grow or cut: the eval output kept within relative 2e-5.
        assert!(e.preserve_rel_err <= 2e-5, "{e:?}");
        assert!(
            e.step.is_some(),
            "every adjustment of this loop is mid-epoch: {e:?}"
        );
    }
    assert!(out.params_grown > out.params_plain, "{log}");
    assert_eq!(
        out.params_fused, out.params_plain,
        "fusion gives the plain network"
    );
    assert!(
        fusion_within_tolerance(&out.fusion),
        "fused vs grown logits: {:?}",
        (out.fusion.max_abs, out.fusion.rel)
    );
    // Logits agree to ~1e-7 relative: at most a tie on one test image can flip.
    let one_image = 1.0 / s.test_images as f64;
    assert!((out.fused_test_acc - out.test_acc).abs() <= one_image + 1e-12);
    // Six orientations: the network learned them (chance is 1/6).
    assert!(out.test_acc > 0.5, "{log}");
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let s = Settings {
        epochs: 2,
        ..Settings::default()
    };
    let a = run(&s, &mut |_| {}).unwrap();
    let b = run(&s, &mut |_| {}).unwrap();
    assert_eq!(a.events, b.events);
    assert_eq!(a.test_acc, b.test_acc);
}

#[test]
fn the_binary_reports_the_fusion_and_refuses_bad_flags() {
    let bin = env!("CARGO_BIN_EXE_own-loop");
    let out = Command::new(bin).args(["--epochs", "2"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("grow conv"), "{stdout}");
    assert!(stdout.contains("fused: "), "{stdout}");
    for (args, says) in [
        (vec!["--epochs", "0"], "--epochs must be at least 1"),
        (vec!["--epochs", "x"], "--epochs takes a whole number"),
        (vec!["--lr", "1"], "unknown flag `--lr`"),
        (vec!["--seed"], "--seed needs a value"),
    ] {
        let out = Command::new(bin).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(stderr.lines().count() <= 2, "{args:?}: {stderr}");
    }
}
