//! `dyrep models`: lists the model zoo with params and MACs.

use anyhow::Result;
use dyrep_runtime::model::{build_model, models, ModelConfig};
use std::io::Write;

use super::Ctx;
use crate::args::ModelsArgs;

pub(crate) fn run(args: ModelsArgs, ctx: &mut Ctx<'_>) -> Result<u8> {
    let ModelsArgs { json } = args;
    let mut rows = Vec::new();
    for e in models() {
        let mut rng = dyrep_runtime::api::SeededRng::new(0);
        let mut ctx = dyrep_runtime::api::InitCtx::new(&mut rng, &candle_core::Device::Cpu);
        let cfg = ModelConfig {
            name: e.name.to_string(),
            input: e.default_input,
            num_classes: 10,
            width: 1.0,
            file: None,
        };
        let m = build_model(&cfg, &mut ctx)?;
        rows.push(serde_json::json!({
            "name": e.name,
            "summary": e.summary,
            "input": e.default_input,
            "params": m.param_count(),
            "macs": m.macs()?,
        }));
    }
    if json {
        crate::render::print_json(&mut ctx.out, &rows)?;
    } else {
        writeln!(
            ctx.out,
            "{:18}  {:>11}  {:>9}  {:>10}  SUMMARY",
            "NAME", "INPUT", "PARAMS", "MACS"
        )?;
        for r in &rows {
            let i = &r["input"];
            writeln!(
                ctx.out,
                "{:18}  {:>11}  {:>8.2}M  {:>9.1}M  {}",
                r["name"].as_str().unwrap_or(""),
                format!("{}x{}x{}", i[0], i[1], i[2]),
                r["params"].as_f64().unwrap_or(0.0) / 1e6,
                r["macs"].as_f64().unwrap_or(0.0) / 1e6,
                r["summary"].as_str().unwrap_or("")
            )?;
        }
    }
    Ok(0)
}
