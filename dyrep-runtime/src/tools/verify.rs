//! `dyrep verify`: the fusion-equivalence property check on seeded random cases
//! (docs/ARCHITECTURE.md "Numerics contract"; docs/REFERENCE.md "Fusion checks" — the reference
//! itself only compares top-1 before and after). One check per registered op (op output vs its
//! equivalent kernel), plus blocks: every applicable op in one block, a grown main conv inside a
//! block, and a grown `conv1x1_kxk` second conv inside a block — each also checking that grow and
//! cut keep the eval output and that fusion is idempotent.

use candle_core::Device;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use dyrep_api::equivalence::{
    check_block, check_op, random_case, Comparison, FusionCase, NestPlan, FUSION_TOLERANCE,
    PRESERVE_TOLERANCE,
};
use dyrep_api::{find_op, ops, OpSpec, Result};

/// Draws per case before giving up on finding a geometry an op applies to.
const MAX_TRIES: usize = 10_000;

/// One line of the verify table.
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    /// `conv1x1`, `block`, `nested:convkxk.conv`, ...
    pub check: String,
    pub cases: usize,
    pub failures: usize,
    /// Worst fusion difference (multi-branch vs fused).
    pub worst_abs: f64,
    pub worst_rel: f64,
    /// Worst relative output change over grow and cut (blocks only).
    pub worst_preserve_rel: Option<f64>,
    /// First failing case, described.
    pub first_failure: Option<String>,
}

impl CheckReport {
    pub fn passed(&self) -> bool {
        self.failures == 0
    }
}

/// What to verify.
#[derive(Clone, Debug)]
pub enum Selection {
    /// One op by registry name.
    Op(String),
    /// Every registered op and the block scenarios.
    All,
}

/// Runs the checks; an unknown op name is an error (listing the known names).
pub fn verify(
    selection: &Selection,
    cases: usize,
    seed: u64,
    device: &Device,
) -> Result<Vec<CheckReport>> {
    let mut out = Vec::new();
    match selection {
        Selection::Op(name) => {
            let entry = find_op(name)?;
            out.push(verify_op(&*(entry.default_spec)(), cases, seed, device));
        }
        Selection::All => {
            for e in ops() {
                out.push(verify_op(&*(e.default_spec)(), cases, seed, device));
            }
            let main = dyrep_ops::main_spec();
            let branches: Vec<Box<dyn OpSpec>> = ops()
                .iter()
                .filter(|e| e.name != dyrep_ops::MAIN_OP)
                .map(|e| (e.default_spec)())
                .collect();
            let nested = |path: &str| {
                vec![NestPlan {
                    path: path.to_string(),
                    branches: branches.clone(),
                }]
            };
            for (name, nest) in [
                ("block", vec![]),
                ("nested:convkxk.conv", nested("convkxk.conv")),
                ("nested:conv1x1_kxk.conv2", nested("conv1x1_kxk.conv2")),
            ] {
                out.push(verify_block(
                    name, &*main, &branches, &nest, cases, seed, device,
                ));
            }
        }
    }
    Ok(out)
}

fn name_seed(seed: u64, name: &str) -> u64 {
    // FNV-1a of the check name, so each check's cases do not depend on which others run.
    name.bytes().fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn describe(case: &FusionCase) -> String {
    format!(
        "{} input {}x{}x{}x{} seed {}",
        case.geom, case.batch, case.geom.in_ch, case.h, case.w, case.seed
    )
}

fn verify_op(spec: &dyn OpSpec, cases: usize, seed: u64, device: &Device) -> CheckReport {
    let mut rng = ChaCha8Rng::seed_from_u64(name_seed(seed, spec.name()));
    let mut report = CheckReport {
        check: spec.name().to_string(),
        cases: 0,
        failures: 0,
        worst_abs: 0.0,
        worst_rel: 0.0,
        worst_preserve_rel: None,
        first_failure: None,
    };
    let mut worst = Comparison::default();
    for _ in 0..cases {
        let Some(case) = random_case(&mut rng, MAX_TRIES, &|c| spec.check(&c.geom).is_ok()) else {
            report.failures += 1;
            report.first_failure = Some(format!(
                "no geometry this op applies to in {MAX_TRIES} random draws"
            ));
            break;
        };
        report.cases += 1;
        match check_op(spec, &case, device) {
            Ok(c) => {
                worst = worst.worst(c);
                if !c.within(&FUSION_TOLERANCE) {
                    fail(
                        &mut report,
                        format!(
                            "{}: max abs {:.2e}, rel {:.2e}",
                            describe(&case),
                            c.max_abs,
                            c.rel
                        ),
                    );
                }
            }
            Err(e) => fail(&mut report, format!("{}: {e}", describe(&case))),
        }
    }
    report.worst_abs = worst.max_abs;
    report.worst_rel = worst.rel;
    report
}

fn verify_block(
    name: &str,
    main: &dyn OpSpec,
    branches: &[Box<dyn OpSpec>],
    nest: &[NestPlan],
    cases: usize,
    seed: u64,
    device: &Device,
) -> CheckReport {
    let mut rng = ChaCha8Rng::seed_from_u64(name_seed(seed, name));
    let mut report = CheckReport {
        check: name.to_string(),
        cases: 0,
        failures: 0,
        worst_abs: 0.0,
        worst_rel: 0.0,
        worst_preserve_rel: Some(0.0),
        first_failure: None,
    };
    let mut worst = Comparison::default();
    let mut preserve = 0f64;
    for _ in 0..cases {
        let Some(case) = random_case(&mut rng, MAX_TRIES, &|_| true) else {
            break;
        };
        report.cases += 1;
        match check_block(main, branches, nest, &case, device) {
            Ok(r) => {
                worst = worst.worst(r.fusion);
                let p = r.cut.map_or(r.grow.rel, |c| c.rel.max(r.grow.rel));
                preserve = preserve.max(p);
                if !r.passed() {
                    fail(
                        &mut report,
                        format!(
                            "{}: fusion abs {:.2e} rel {:.2e}, grow/cut rel {:.2e} (limit {:.0e}), idempotent {}",
                            describe(&case),
                            r.fusion.max_abs,
                            r.fusion.rel,
                            p,
                            PRESERVE_TOLERANCE.rel,
                            r.idempotent
                        ),
                    );
                }
            }
            Err(e) => fail(&mut report, format!("{}: {e}", describe(&case))),
        }
    }
    report.worst_abs = worst.max_abs;
    report.worst_rel = worst.rel;
    report.worst_preserve_rel = Some(preserve);
    report
}

fn fail(report: &mut CheckReport, why: String) {
    report.failures += 1;
    if report.first_failure.is_none() {
        report.first_failure = Some(why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_checks_pass_on_a_few_cases() {
        crate::ensure_linked();
        let r = verify(&Selection::All, 8, 3, &Device::Cpu).unwrap();
        assert_eq!(r.len(), 7 + 3);
        for c in &r {
            assert!(c.passed(), "{c:?}");
            assert_eq!(c.cases, 8);
        }
        // The same seed gives the same numbers.
        let again = verify(&Selection::Op("conv1x1".into()), 8, 3, &Device::Cpu).unwrap();
        assert_eq!(again[0].worst_rel, r[0].worst_rel);
    }

    #[test]
    fn unknown_op_is_an_error() {
        crate::ensure_linked();
        let e = verify(&Selection::Op("conv3x3".into()), 1, 0, &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("known ops"), "{e}");
    }
}
