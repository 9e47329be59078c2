//! `dyrep export`: writes the fused plain network as safetensors or ONNX.

use anyhow::Result;
use dyrep_runtime::export;
use std::io::Write;

use super::Ctx;
use crate::args::ExportArgs;
use crate::{checkpoint_dir, Verbosity};

pub(crate) fn run(args: ExportArgs, ctx: &mut Ctx<'_>) -> Result<u8> {
    let ExportArgs {
        checkpoint,
        format,
        out: file,
        json,
    } = args;
    let checkpoint = checkpoint_dir(&checkpoint);
    let format = export::ExportFormat::parse(&format)?;
    let r = export::export_checkpoint(&checkpoint, format, &file, &ctx.device)?;
    if json {
        crate::render::print_json(&mut ctx.out, &r)?;
    } else if ctx.verbosity != Verbosity::Quiet {
        writeln!(
                ctx.out,
                "exported {} ({:?} names, fused plain form: {} params, {:.2} M MACs) to {} ({} tensors, {} bytes){}",
                r.model,
                r.naming,
                r.params,
                r.macs as f64 / 1e6,
                r.out.display(),
                r.tensors,
                r.bytes,
                r.arch_json
                    .as_ref()
                    .map(|p| format!("; architecture in {}", p.display()))
                    .unwrap_or_default()
            )?;
    }
    Ok(0)
}
