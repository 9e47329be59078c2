//! `dyrep scorers`: lists the registered saliency scorers.

use crate::render::{print_listing, Listed};
use anyhow::Result;
use dyrep_runtime::api::scorers;

use super::Ctx;
use crate::args::ScorersArgs;

pub(crate) fn run(args: ScorersArgs, ctx: &mut Ctx<'_>) -> Result<u8> {
    let ScorersArgs { json } = args;
    let rows: Vec<Listed> = scorers()
        .iter()
        .map(|e| Listed {
            name: e.name,
            summary: e.summary,
        })
        .collect();
    print_listing(&mut ctx.out, &rows, json)?;
    Ok(0)
}
