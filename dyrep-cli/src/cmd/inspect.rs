//! `dyrep inspect`: prints the tree of grown blocks of a checkpoint.

use anyhow::Result;
use dyrep_runtime::report;
use std::io::Write;

use super::Ctx;
use crate::args::InspectArgs;
use crate::checkpoint_dir;

pub(crate) fn run(args: InspectArgs, ctx: &mut Ctx<'_>) -> Result<u8> {
    let InspectArgs {
        checkpoint,
        all,
        json,
    } = args;
    let checkpoint = checkpoint_dir(&checkpoint);
    let (model, state) = dyrep_runtime::train::load_checkpoint_model(&checkpoint, &ctx.device)?;
    let mut r = report::inspect(&model)?;
    r.step_factors = report::step_factors(&state.events);
    if json {
        crate::render::print_json(&mut ctx.out, &r)?;
    } else {
        write!(ctx.out, "{}", report::inspect_text(&r, all))?;
    }
    Ok(0)
}
