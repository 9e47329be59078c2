//! The printers of `dyrep`'s tables and JSON: listings, kernel checks, fusion checks.

use std::io::Write;

use anyhow::Result;
use serde::Serialize;

use dyrep_runtime::api::equivalence::{FUSION_TOLERANCE, PRESERVE_TOLERANCE};
use dyrep_runtime::tools::verify::CheckReport;

#[derive(Serialize)]
pub(crate) struct Listed {
    pub(crate) name: &'static str,
    pub(crate) summary: &'static str,
}

pub(crate) fn print_listing(out: &mut impl Write, rows: &[Listed], json: bool) -> Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, rows)?;
        writeln!(out)?;
        return Ok(());
    }
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    writeln!(out, "{:width$}  SUMMARY", "NAME")?;
    for r in rows {
        writeln!(out, "{:width$}  {}", r.name, r.summary)?;
    }
    Ok(())
}

/// The kernel checks of each instruction-set tier that ran.
pub(crate) type TierReports = [(
    dyrep_runtime::api::kernels::isa::Isa,
    Vec<dyrep_runtime::api::kernels::check::KernelReport>,
)];

pub(crate) fn print_kernel_checks(
    out: &mut impl Write,
    reports: &TierReports,
    device: &str,
    cases: u32,
    seed: u64,
    json: bool,
    passed: bool,
) -> Result<()> {
    use dyrep_runtime::api::kernels::check::KERNEL_TOLERANCE;
    let tiers: Vec<&str> = reports.iter().map(|(t, _)| t.name()).collect();
    if json {
        let checks: Vec<serde_json::Value> = reports
            .iter()
            .flat_map(|(tier, rs)| rs.iter().map(move |r| (tier, r)))
            .map(|(tier, r)| {
                serde_json::json!({
                    "kernel": r.kernel, "isa": tier.name(), "cases": r.cases,
                    "failures": r.failures, "worst_rel": r.worst_rel,
                    "tolerance": r.tolerance, "first_failure": r.first_failure,
                })
            })
            .collect();
        let v = serde_json::json!({
            "device": device, "cases": cases, "seed": seed, "tolerance": KERNEL_TOLERANCE,
            "tiers": tiers, "passed": passed, "checks": checks,
        });
        serde_json::to_writer_pretty(&mut *out, &v)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "kernels on {device} (candle ops) vs own CPU kernels, forward and gradients, f32: {cases} random cases, seed {seed}, limit rel {KERNEL_TOLERANCE:.0e} unless the row says otherwise; own kernels at each instruction-set tier of this CPU: {}\n",
        tiers.join(", ")
    )?;
    writeln!(
        out,
        "{:7} {:26} {:>6} {:>10} {:>6}  RESULT",
        "TIER", "KERNEL", "CASES", "WORST REL", "LIMIT"
    )?;
    for (tier, rs) in reports {
        for r in rs {
            let result = if r.failures == 0 {
                "ok".to_string()
            } else {
                format!("FAILED ({} of {})", r.failures, r.cases)
            };
            writeln!(
                out,
                "{:7} {:26} {:>6} {:>10.2e} {:>6.0e}  {result}",
                tier.name(),
                r.kernel,
                r.cases,
                r.worst_rel,
                r.tolerance
            )?;
        }
    }
    for (tier, rs) in reports {
        for r in rs {
            if let Some(f) = &r.first_failure {
                writeln!(out, "\n{tier} {}: first failure: {f}", r.kernel)?;
            }
        }
    }
    Ok(())
}

pub(crate) fn print_verify_table(
    out: &mut impl Write,
    reports: &[CheckReport],
    cases: u32,
    seed: u64,
) -> Result<()> {
    writeln!(
        out,
        "fusion equivalence, eval mode, f32, random weights and BN statistics: {cases} cases per check, seed {seed}"
    )?;
    writeln!(
        out,
        "limits: fused vs multi-branch max abs {:.0e} and rel {:.0e}; grow/cut rel {:.0e}\n",
        FUSION_TOLERANCE.max_abs, FUSION_TOLERANCE.rel, PRESERVE_TOLERANCE.rel
    )?;
    let width = reports
        .iter()
        .map(|r| r.check.len())
        .max()
        .unwrap_or(5)
        .max(5);
    writeln!(
        out,
        "{:width$}  {:>6}  {:>9}  {:>9}  {:>12}  RESULT",
        "CHECK", "CASES", "WORST ABS", "WORST REL", "GROW/CUT REL"
    )?;
    for r in reports {
        let preserve = r
            .worst_preserve_rel
            .map_or_else(|| "-".to_string(), |p| format!("{p:.2e}"));
        let result = if r.passed() {
            "ok".to_string()
        } else {
            format!("FAILED ({} of {})", r.failures, r.cases)
        };
        writeln!(
            out,
            "{:width$}  {:>6}  {:>9.2e}  {:>9.2e}  {:>12}  {result}",
            r.check, r.cases, r.worst_abs, r.worst_rel, preserve
        )?;
    }
    let failed: Vec<&CheckReport> = reports.iter().filter(|r| !r.passed()).collect();
    let total: usize = reports.iter().map(|r| r.cases).sum();
    writeln!(out)?;
    if failed.is_empty() {
        writeln!(out, "all {} checks passed ({total} cases)", reports.len())?;
    } else {
        for r in &failed {
            if let Some(f) = &r.first_failure {
                writeln!(out, "{}: first failure: {f}", r.check)?;
            }
        }
        writeln!(out, "{} of {} checks FAILED", failed.len(), reports.len())?;
    }
    Ok(())
}

pub(crate) fn print_verify_json(
    out: &mut impl Write,
    reports: &[CheckReport],
    cases: u32,
    seed: u64,
    passed: bool,
) -> Result<()> {
    let v = serde_json::json!({
        "cases": cases,
        "seed": seed,
        "passed": passed,
        "limits": {
            "fusion_max_abs": FUSION_TOLERANCE.max_abs,
            "fusion_rel": FUSION_TOLERANCE.rel,
            "preserve_rel": PRESERVE_TOLERANCE.rel,
        },
        "checks": reports,
    });
    serde_json::to_writer_pretty(&mut *out, &v)?;
    writeln!(out)?;
    Ok(())
}

/// `value` as pretty JSON and a newline: what every `--json` prints.
pub(crate) fn print_json(out: &mut impl Write, value: &impl Serialize) -> Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}
