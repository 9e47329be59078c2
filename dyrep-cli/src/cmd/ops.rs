//! `dyrep ops`: lists the registered branch types.

use crate::render::{print_listing, Listed};
use anyhow::Result;
use dyrep_runtime::api::ops;

use super::Ctx;
use crate::args::OpsArgs;

pub(crate) fn run(args: OpsArgs, ctx: &mut Ctx<'_>) -> Result<u8> {
    let OpsArgs { json } = args;
    let rows: Vec<Listed> = ops()
        .iter()
        .map(|e| Listed {
            name: e.name,
            summary: e.summary,
        })
        .collect();
    print_listing(&mut ctx.out, &rows, json)?;
    Ok(0)
}
