//! `dyrep bench`: times training steps or eval forwards of a model, or the data pipeline alone.

use anyhow::Result;
use dyrep_runtime::train::Mode;
use std::io::Write;

use super::Ctx;
use crate::args::BenchArgs;

pub(crate) fn run(args: BenchArgs, ctx: &mut Ctx<'_>) -> Result<u8> {
    if args.what == "data" {
        return run_data(args, ctx);
    }
    let BenchArgs {
        what,
        model,
        mode,
        batch,
        grow_ops,
        block_form,
        width,
        iters,
        json,
        convs,
        ..
    } = args;
    let mode = Mode::parse(&mode)?;
    let spec = dyrep_runtime::tools::bench::BenchSpec {
        grow_ops,
        block_form: block_form.unwrap_or_default(),
        width,
        batch: batch.unwrap_or_else(|| dyrep_runtime::tools::bench::default_batch(&model)),
        iters,
        ..dyrep_runtime::tools::bench::BenchSpec::new(&model, mode, what == "train")
    };
    let r = dyrep_runtime::tools::bench::bench(&spec, &ctx.device)?;
    if json {
        crate::render::print_json(&mut ctx.out, &r)?;
    } else {
        writeln!(
                ctx.out,
                "{} {} {} batch {} x{} ({} kernels, {} tier): {:.1} images/s, {:.2} GFLOP/s, {:.2} M MACs/image, peak RSS {:.0} MB; per iteration: forward {:.1} ms, backward {:.1} ms, optimizer {:.1} ms",
                r.what, r.model, r.mode, r.batch, r.iters, r.kernels, r.isa, r.images_per_sec, r.gflops,
                r.macs_per_image as f64 / 1e6, r.peak_rss_bytes as f64 / 1e6,
                r.forward_ms, r.backward_ms, r.optimizer_ms
            )?;
        if !r.kernel_ms.is_empty() {
            let parts: Vec<String> = r
                .kernel_ms
                .iter()
                .map(|(k, v)| format!("{k} {v:.1} ms"))
                .collect();
            writeln!(
                ctx.out,
                "  inside the kernels per iteration: {}",
                parts.join(", ")
            )?;
        }
        if convs {
            print_convs(&mut ctx.out, &r.convs)?;
        }
    }
    Ok(0)
}

/// The per-conv table: each conv geometry's milliseconds per iteration and GFLOP/s.
fn print_convs(out: &mut dyn Write, convs: &[dyrep_runtime::tools::bench::ConvTime]) -> Result<()> {
    writeln!(
        out,
        "  {:<34} {:>6} {:>9} {:>11} {:>12} {:>8}",
        "conv (in→out k×k stride plane)", "calls", "fwd ms", "in-grad ms", "w-grad ms", "GFLOP/s"
    )?;
    for c in convs {
        writeln!(
            out,
            "  {:<34} {:>6.0} {:>9.2} {:>11.2} {:>12.2} {:>8.1}",
            c.conv, c.calls, c.forward_ms, c.input_grad_ms, c.weight_grad_ms, c.gflops
        )?;
    }
    Ok(())
}

/// `dyrep bench data`: images/s of the input pipeline alone.
fn run_data(args: BenchArgs, ctx: &mut Ctx<'_>) -> Result<u8> {
    let Some(data) = args.data else {
        anyhow::bail!("bench data needs --data image-folder:DIR");
    };
    let spec = dyrep_runtime::tools::data_bench::DataBenchSpec {
        data,
        size: args.size,
        workers: args.workers,
        batch: args.batch.unwrap_or(64),
        batches: args.iters,
    };
    let r = dyrep_runtime::tools::data_bench::bench_data(&spec)?;
    if args.json {
        crate::render::print_json(&mut ctx.out, &r)?;
    } else {
        writeln!(
            ctx.out,
            "data {} size {} batch {} x{} on {} threads: {:.1} images/s, peak RSS {:.0} MB",
            r.data,
            r.size,
            r.batch,
            r.images / r.batch.max(1),
            r.workers,
            r.images_per_sec,
            r.peak_rss_bytes as f64 / 1e6
        )?;
    }
    Ok(0)
}
