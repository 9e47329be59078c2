//! `own-loop [--epochs N] [--seed S]`: trains the example's small CNN on synthetic stripes in a
//! hand-written candle loop with DyRep added through its two hooks, fuses it and checks the
//! fusion (docs/LIBRARY.md).

use anyhow::{bail, Context};
use dyrep_own_loop::{fusion_within_tolerance, run, Settings};

fn main() {
    if let Err(e) = run_cli() {
        eprintln!("own-loop: error: {e:#}");
        std::process::exit(1);
    }
}

fn run_cli() -> anyhow::Result<()> {
    let mut s = Settings::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--epochs" => s.epochs = value.parse().context("--epochs takes a whole number")?,
            "--seed" => s.seed = value.parse().context("--seed takes a whole number")?,
            other => bail!("unknown flag `{other}`; own-loop takes --epochs N and --seed S"),
        }
    }
    if s.epochs == 0 {
        bail!("--epochs must be at least 1");
    }
    let out = run(&s, &mut |line| println!("{line}"))?;
    println!(
        "grown: {} grows, {} cuts, test acc {:.4}, {} params (plain {})",
        out.count("grow"),
        out.count("cut"),
        out.test_acc,
        out.params_grown,
        out.params_plain
    );
    println!(
        "fused: {} params, test acc {:.4}; fused vs grown logits max-abs {:.2e}, relative {:.2e}",
        out.params_fused, out.fused_test_acc, out.fusion.max_abs, out.fusion.rel
    );
    if !fusion_within_tolerance(&out.fusion) || out.params_fused != out.params_plain {
        bail!("the fused network does not match the grown one");
    }
    Ok(())
}
