//! `dyrep fuse`: fuses a checkpoint into the plain network and verifies it.

use anyhow::Result;
use dyrep_runtime::fuse::{fuse_checkpoint, FUSE_LOGITS_REL};
use std::io::Write;

use super::Ctx;
use crate::args::FuseArgs;
use crate::{checkpoint_dir, EXIT_VERIFY_FAILED};

pub(crate) fn run(args: FuseArgs, ctx: &mut Ctx<'_>) -> Result<u8> {
    let FuseArgs {
        checkpoint,
        out: out_dir,
        limit,
        json,
    } = args;
    let checkpoint = checkpoint_dir(&checkpoint);
    let r = fuse_checkpoint(&checkpoint, &out_dir, Some(limit), &ctx.device)?;
    if json {
        crate::render::print_json(&mut ctx.out, &r)?;
    } else {
        writeln!(
            ctx.out,
            "fused {} block(s) of {} into {}",
            r.blocks.len(),
            checkpoint.display(),
            out_dir.display()
        )?;
        for b in &r.blocks {
            writeln!(
                ctx.out,
                "  {:32} {} branches  max abs {:.2e}  rel {:.2e}",
                b.path, b.branches, b.max_abs, b.rel
            )?;
        }
        writeln!(
            ctx.out,
            "params {} -> {}   MACs {:.2}M -> {:.2}M",
            r.params_before,
            r.params_after,
            r.macs_before as f64 / 1e6,
            r.macs_after as f64 / 1e6
        )?;
        writeln!(
                ctx.out,
                "verified on {} test images: top-1 {:.4} -> {:.4}, {} prediction(s) changed, logits rel {:.2e} (limit {:.0e}), max abs {:.2e}",
                r.images, r.acc_before, r.acc_after, r.top1_mismatches, r.logits_rel, FUSE_LOGITS_REL, r.logits_max_abs
            )?;
        writeln!(
            ctx.out,
            "{}",
            if r.passed() {
                "verification passed"
            } else {
                "verification FAILED"
            }
        )?;
    }
    if !r.passed() {
        return Ok(EXIT_VERIFY_FAILED);
    }
    Ok(0)
}
