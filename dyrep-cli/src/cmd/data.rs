//! `dyrep data`: data tools (`pack`: an image folder as tar shards).

use anyhow::Result;
use std::io::Write;
use std::path::Path;

use super::Ctx;
use crate::args::{DataArgs, DataCommand};
use crate::Verbosity;

pub(crate) fn run(args: DataArgs, ctx: &mut Ctx<'_>) -> Result<u8> {
    let DataCommand::Pack(p) = args.command;
    let dir = match p.folder.split_once(':') {
        Some(("image-folder", dir)) => dir,
        Some((kind, _)) if !Path::new(&p.folder).exists() => anyhow::bail!(
            "data pack {}: packs an image folder (image-folder:DIR), not `{kind}` data",
            p.folder
        ),
        _ => p.folder.as_str(),
    };
    let r = dyrep_runtime::data::shards::pack(Path::new(dir), &p.out, p.shard_size)?;
    if p.json {
        crate::render::print_json(&mut ctx.out, &r)?;
    } else if ctx.verbosity != Verbosity::Quiet {
        writeln!(
            ctx.out,
            "packed {} samples into {} shards ({:.1} MB) in {}; train with --data shards:{}",
            r.samples,
            r.shards,
            r.bytes as f64 / 1e6,
            r.out.display(),
            r.out.display()
        )?;
    }
    Ok(0)
}
