//! `dyrep verify`: checks fusion equivalence, or the compute kernels.

use crate::render::{print_kernel_checks, print_verify_json, print_verify_table};
use anyhow::Result;
use dyrep_runtime::tools::verify::{verify, CheckReport, Selection};

use super::Ctx;
use crate::args::VerifyArgs;
use crate::EXIT_VERIFY_FAILED;

pub(crate) fn run(args: VerifyArgs, ctx: &mut Ctx<'_>) -> Result<u8> {
    match args {
        VerifyArgs {
            kernels: true,
            cases,
            seed,
            json,
            ..
        } => {
            use dyrep_runtime::api::kernels::{check::check_kernels, isa};
            // Every tier this CPU has (at most the DYREP_ISA cap), highest first.
            let cap = isa::requested()?.unwrap_or(isa::Isa::Avx512);
            let mut reports = Vec::new();
            for tier in isa::Isa::supported_tiers()
                .into_iter()
                .filter(|&t| t <= cap)
            {
                let tier = isa::set_active(tier);
                reports.push((tier, check_kernels(&ctx.device, cases as usize, seed)?));
            }
            let passed = reports
                .iter()
                .all(|(_, rs)| rs.iter().all(|r| r.failures == 0));
            print_kernel_checks(
                &mut ctx.out,
                &reports,
                ctx.device_spec,
                cases,
                seed,
                json,
                passed,
            )?;
            if !passed {
                return Ok(EXIT_VERIFY_FAILED);
            }
        }
        VerifyArgs {
            op,
            all: _,
            kernels: false,
            cases,
            seed,
            json,
        } => {
            let selection = match op {
                Some(name) => Selection::Op(name),
                None => Selection::All,
            };
            let reports = verify(&selection, cases as usize, seed, &ctx.device)?;
            let passed = reports.iter().all(CheckReport::passed);
            if json {
                print_verify_json(&mut ctx.out, &reports, cases, seed, passed)?;
            } else {
                print_verify_table(&mut ctx.out, &reports, cases, seed)?;
            }
            if !passed {
                return Ok(EXIT_VERIFY_FAILED);
            }
        }
    }
    Ok(0)
}
