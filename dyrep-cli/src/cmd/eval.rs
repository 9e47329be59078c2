//! `dyrep eval`: evaluates a checkpoint.

use anyhow::Result;
use dyrep_runtime::fuse::eval_checkpoint;
use std::io::Write;

use super::Ctx;
use crate::args::EvalArgs;
use crate::checkpoint_dir;

pub(crate) fn run(args: EvalArgs, ctx: &mut Ctx<'_>) -> Result<u8> {
    let EvalArgs {
        checkpoint,
        data,
        limit,
        logits_out,
        inputs_out,
        json,
    } = args;
    let checkpoint = checkpoint_dir(&checkpoint);
    let r = eval_checkpoint(
        &checkpoint,
        data.as_deref(),
        limit,
        logits_out.as_deref(),
        inputs_out.as_deref(),
        &ctx.device,
    )?;
    if json {
        crate::render::print_json(&mut ctx.out, &r)?;
    } else {
        writeln!(
            ctx.out,
            "{} ({} form) on {}: top-1 {:.4} over {} test images, loss {:.4}",
            checkpoint.display(),
            r.form,
            r.dataset,
            r.top1,
            r.images,
            r.loss
        )?;
    }
    Ok(0)
}
