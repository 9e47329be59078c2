//! Run reports: `curves.svg` of one run (train/test loss and accuracy, params and MACs per epoch,
//! every grow and cut marked), `dyrep compare` (runs overlaid in one chart and the paper's Table 2
//! columns — final/best accuracy, average params and MACs (docs/REFERENCE.md "MACs and params"),
//! train time, grows, cuts — as a markdown table) and `dyrep inspect` (the tree of grown blocks
//! with each branch's op, shape and γ importance, like the paper's Fig. 6). Everything is read from
//! the run directory's files (`metrics.csv`, `events.jsonl`, `config.resolved.toml`, and the last
//! checkpoint's history where a kill left those behind it), so unfinished and resumed runs report
//! too. `groups.rs` groups runs by their settings (`compare --group-by`, paired differences with
//! confidence intervals); `palette.rs` the charts' colours and marks.

pub mod groups;
mod palette;

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::Serialize;

use dyrep_api::{Slot, TensorRole};

use crate::config::TrainConfig;
use crate::dynamics::Event;
use crate::error::{Result, RuntimeError};
use crate::model::Model;
use crate::run_state::EpochRecord;
use palette::{draw_marks, Style, COLORS};

/// One epoch of `metrics.csv` (train and test rows joined).
#[derive(Clone, Debug, Default, Serialize)]
pub struct EpochRow {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub test_loss: f64,
    pub test_acc: f64,
    pub params: f64,
    pub macs: f64,
    pub seconds: f64,
    /// Processor seconds; absent in files written before they were recorded.
    pub cpu_seconds: Option<f64>,
}

/// What a run directory holds, read back.
#[derive(Clone, Debug)]
pub struct RunRecord {
    pub dir: PathBuf,
    pub name: String,
    pub model: String,
    pub mode: String,
    pub epochs: Vec<EpochRow>,
    pub events: Vec<Event>,
    /// The run's `config.resolved.toml`, when it is readable.
    pub config: Option<TrainConfig>,
    /// The same file as written: the settings the run recorded. A setting added to dyrep after
    /// the run is absent here, where `config` holds today's default for it.
    pub recorded: Option<toml::Table>,
}

fn bad(path: &Path, reason: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Config(format!("{}: {reason}", path.display()))
}

fn parse_metrics(path: &Path) -> Result<Vec<EpochRow>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        bad(
            path,
            format!("cannot read ({e}); is this a run directory written by `dyrep train`?"),
        )
    })?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| bad(path, format!("no `{name}` column")))
    };
    let (ce, cs, cl, ca, cp, cm, csec) = (
        col("epoch")?,
        col("split")?,
        col("loss")?,
        col("acc")?,
        col("params")?,
        col("macs")?,
        col("seconds")?,
    );
    // Optional: runs written before processor time was recorded lack the column.
    let ccpu = header.iter().position(|h| *h == "cpu_seconds");
    let mut rows: Vec<EpochRow> = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let num = |c: usize| -> Result<f64> {
            f.get(c)
                .and_then(|v| v.parse::<f64>().ok())
                .ok_or_else(|| bad(path, format!("line {}: not a number in column {c}", i + 2)))
        };
        let epoch = num(ce)? as usize;
        if rows.last().is_none_or(|r| r.epoch != epoch) {
            rows.push(EpochRow {
                epoch,
                params: num(cp)?,
                macs: num(cm)?,
                seconds: num(csec)?,
                cpu_seconds: match ccpu {
                    Some(c) if f.get(c).is_some_and(|v| !v.is_empty()) => Some(num(c)?),
                    _ => None,
                },
                ..EpochRow::default()
            });
        }
        let r = rows.last_mut().ok_or_else(|| bad(path, "empty"))?;
        match f.get(cs).copied() {
            Some("train") => (r.train_loss, r.train_acc) = (num(cl)?, num(ca)?),
            Some("test") => (r.test_loss, r.test_acc) = (num(cl)?, num(ca)?),
            other => {
                return Err(bad(
                    path,
                    format!("line {}: unknown split {other:?}", i + 2),
                ))
            }
        }
    }
    Ok(rows)
}

impl From<&EpochRecord> for EpochRow {
    fn from(r: &EpochRecord) -> EpochRow {
        EpochRow {
            epoch: r.epoch,
            train_loss: r.train_loss,
            train_acc: r.train_acc,
            test_loss: r.test_loss,
            test_acc: r.test_acc,
            params: r.params as f64,
            macs: r.macs as f64,
            seconds: r.seconds,
            cpu_seconds: r.cpu_seconds,
        }
    }
}

/// The epochs and events the last checkpoint's `state.json` committed (only these fields are
/// read); `None` without a readable checkpoint.
#[derive(serde::Deserialize)]
struct Committed {
    history: Vec<EpochRecord>,
    #[serde(default)]
    events: Vec<Event>,
}

fn committed_progress(dir: &Path) -> Option<Committed> {
    let ck = crate::checkpoint::resolve(&dir.join("checkpoints").join("last")).ok()?;
    let text = std::fs::read_to_string(ck.join("state.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Reads a run directory.
pub fn read_run(dir: &Path) -> Result<RunRecord> {
    if !dir.is_dir() {
        return Err(bad(dir, "no such run directory"));
    }
    let committed = committed_progress(dir);
    let metrics = dir.join("metrics.csv");
    let mut epochs = match (metrics.exists(), &committed) {
        (false, Some(_)) => Vec::new(),
        _ => parse_metrics(&metrics)?,
    };
    let ev_path = dir.join("events.jsonl");
    let mut events = Vec::new();
    if ev_path.is_file() {
        let text = std::fs::read_to_string(&ev_path).map_err(|e| bad(&ev_path, e))?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            events.push(
                serde_json::from_str::<Event>(line)
                    .map_err(|e| bad(&ev_path, format!("line {}: {e}", i + 1)))?,
            );
        }
    }
    // The checkpoint is the run's commit point and metrics.csv / events.jsonl are derived from
    // it: where a kill came between the two, the checkpoint's copy is the whole run.
    if let Some(c) = committed {
        if c.history.len() > epochs.len() {
            epochs = c.history.iter().map(EpochRow::from).collect();
        }
        if c.events.len() > events.len() {
            events = c.events;
        }
    }
    let cfg_path = dir.join("config.resolved.toml");
    let config = TrainConfig::from_toml_file(&cfg_path).ok();
    let recorded = config.as_ref().and_then(|_| {
        std::fs::read_to_string(&cfg_path)
            .ok()
            .and_then(|text| text.parse::<toml::Table>().ok())
    });
    let (model, mode) = match &config {
        Some(c) => (c.model.clone(), c.mode.as_str().to_string()),
        None => ("?".into(), "?".into()),
    };
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| dir.display().to_string());
    Ok(RunRecord {
        dir: dir.to_path_buf(),
        name,
        model,
        mode,
        epochs,
        events,
        config,
        recorded,
    })
}

/// The paper's Table 2 columns for one run.
#[derive(Clone, Debug, Serialize)]
pub struct RunRow {
    pub run: String,
    pub model: String,
    pub mode: String,
    /// The epochs the run has finished.
    pub epochs: usize,
    /// The epochs its config asks for (absent without a readable config): more than `epochs`
    /// while the run is unfinished — still running, stopped, or cut off.
    pub planned_epochs: Option<usize>,
    pub final_test_acc: f64,
    pub best_test_acc: f64,
    pub avg_params: f64,
    pub avg_macs: f64,
    pub train_seconds: f64,
    /// Processor seconds over the epochs; absent when an epoch lacks them.
    pub train_cpu_seconds: Option<f64>,
    pub grows: usize,
    pub cuts: usize,
}

impl RunRecord {
    pub fn row(&self) -> RunRow {
        let n = self.epochs.len().max(1) as f64;
        RunRow {
            run: self.name.clone(),
            model: self.model.clone(),
            mode: self.mode.clone(),
            epochs: self.epochs.len(),
            planned_epochs: self.config.as_ref().map(|c| c.epochs),
            final_test_acc: self.epochs.last().map_or(0.0, |r| r.test_acc),
            best_test_acc: self.epochs.iter().map(|r| r.test_acc).fold(0.0, f64::max),
            avg_params: self.epochs.iter().map(|r| r.params).sum::<f64>() / n,
            avg_macs: self.epochs.iter().map(|r| r.macs).sum::<f64>() / n,
            train_seconds: self.epochs.iter().map(|r| r.seconds).sum(),
            train_cpu_seconds: self.epochs.iter().map(|r| r.cpu_seconds).sum(),
            grows: self.events.iter().filter(|e| e.kind == "grow").count(),
            cuts: self.events.iter().filter(|e| e.kind == "cut").count(),
        }
    }
}

impl RunRow {
    /// Whether the run has fewer epochs than its config asks for.
    pub fn is_unfinished(&self) -> bool {
        self.planned_epochs.is_some_and(|p| self.epochs < p)
    }

    /// The epochs cell: `40`, or `16 of 40` for an unfinished run.
    fn epochs_cell(&self) -> String {
        match self.planned_epochs {
            Some(p) if self.is_unfinished() => format!("{} of {p}", self.epochs),
            _ => self.epochs.to_string(),
        }
    }
}

/// The markdown table of `dyrep compare`; an unfinished run's epochs read `done of planned`.
pub fn markdown_table(rows: &[RunRow]) -> String {
    let mut s = String::from(
        "| run | model | mode | epochs | final acc | best acc | avg params (M) | avg MACs (M) | train time (s) | CPU time (s) | grows | cuts |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let cpu = r
            .train_cpu_seconds
            .map_or_else(|| "—".to_string(), |c| format!("{c:.1}"));
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.4} | {:.4} | {:.3} | {:.2} | {:.1} | {cpu} | {} | {} |\n",
            r.run,
            r.model,
            r.mode,
            r.epochs_cell(),
            r.final_test_acc,
            r.best_test_acc,
            r.avg_params / 1e6,
            r.avg_macs / 1e6,
            r.train_seconds,
            r.grows,
            r.cuts
        ));
    }
    s
}

fn draw_err(path: &Path) -> impl Fn(String) -> RuntimeError + '_ {
    move |e| bad(path, format!("cannot draw the chart: {e}"))
}

/// Axis range with a margin; a flat series gets a visible band.
fn range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let pad = ((hi - lo) * 0.08).max(hi.abs() * 0.02).max(1e-9);
    (lo - pad)..(hi + pad)
}

const GROW: RGBColor = RGBColor(44, 160, 44);
const CUT: RGBColor = RGBColor(214, 39, 40);

type Panel<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// A named line of (epoch, value) points in a colour and marker.
type Series = (String, Vec<(f64, f64)>, Style);

/// One panel: named series over epochs, plus grow/cut markers at their epochs.
fn panel(
    area: &Panel<'_>,
    title: &str,
    y_desc: &str,
    series: &[Series],
    events: &[(f64, bool)],
    max_epoch: f64,
) -> std::result::Result<(), String> {
    let y = range(series.iter().flat_map(|s| s.1.iter().map(|p| p.1)));
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(34)
        .y_label_area_size(58)
        .build_cartesian_2d(0.5f64..(max_epoch + 0.5), y.clone())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_desc)
        .draw()
        .map_err(|e| e.to_string())?;
    for (name, pts, style) in series {
        let style = *style;
        chart
            .draw_series(LineSeries::new(
                pts.iter().copied(),
                style.color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label(name.as_str())
            .legend(move |at| style.legend_mark(at));
        draw_marks(&mut chart, pts, style)?;
    }
    // Grows and cuts happen at the end of an epoch: a dashed-looking thin line there.
    for (kind_grow, label) in [(true, "grow"), (false, "cut")] {
        let color = if kind_grow { GROW } else { CUT };
        let xs: Vec<f64> = events
            .iter()
            .filter(|e| e.1 == kind_grow)
            .map(|e| e.0)
            .collect();
        if xs.is_empty() {
            continue;
        }
        chart
            .draw_series(xs.iter().map(|x| {
                PathElement::new(
                    vec![(*x + 0.5, y.start), (*x + 0.5, y.end)],
                    color.mix(0.5).stroke_width(1),
                )
            }))
            .map_err(|e| e.to_string())?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x + 9, y - 6), (x + 9, y + 6)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Draws `curves.svg` for one run: loss, accuracy, params and MACs per epoch; grows and cuts
/// as vertical lines after the epoch they followed.
pub fn plot_run(run: &RunRecord, out: &Path) -> Result<()> {
    if run.epochs.is_empty() {
        return Err(bad(
            &run.dir,
            "no finished epoch in metrics.csv yet: nothing to plot",
        ));
    }
    let ep = |f: fn(&EpochRow) -> f64| -> Vec<(f64, f64)> {
        run.epochs.iter().map(|r| (r.epoch as f64, f(r))).collect()
    };
    let events: Vec<(f64, bool)> = run
        .events
        .iter()
        .map(|e| (e.epoch as f64, e.kind == "grow"))
        .collect();
    let max_epoch = run.epochs.iter().map(|r| r.epoch).max().unwrap_or(1) as f64;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1200, 860)).into_drawing_area();
        let err = draw_err(out);
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let root = root
            .titled(
                &format!("{} — {} {}", run.name, run.model, run.mode),
                ("sans-serif", 22),
            )
            .map_err(|e| err(e.to_string()))?;
        let areas = root.split_evenly((2, 2));
        let b = Style::circles(COLORS[0]);
        let o = Style::circles(COLORS[1]);
        panel(
            &areas[0],
            "loss",
            "cross-entropy",
            &[
                ("train loss".into(), ep(|r| r.train_loss), b),
                ("test loss".into(), ep(|r| r.test_loss), o),
            ],
            &events,
            max_epoch,
        )
        .map_err(&err)?;
        panel(
            &areas[1],
            "accuracy",
            "top-1",
            &[
                ("train acc".into(), ep(|r| r.train_acc), b),
                ("test acc".into(), ep(|r| r.test_acc), o),
            ],
            &events,
            max_epoch,
        )
        .map_err(&err)?;
        panel(
            &areas[2],
            "parameters",
            "params (M)",
            &[(
                "params (M)".into(),
                ep(|r| r.params / 1e6),
                Style::circles(COLORS[2]),
            )],
            &events,
            max_epoch,
        )
        .map_err(&err)?;
        panel(
            &areas[3],
            "multiply-accumulates per image",
            "MACs (M)",
            &[(
                "MACs (M)".into(),
                ep(|r| r.macs / 1e6),
                Style::circles(COLORS[4]),
            )],
            &events,
            max_epoch,
        )
        .map_err(&err)?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    crate::fs::write_atomic(out, svg.as_bytes())
}

/// Draws several runs in one chart (test accuracy, test loss, MACs per epoch) to `out`.
pub fn plot_compare(runs: &[RunRecord], out: &Path) -> Result<()> {
    let max_epoch = runs
        .iter()
        .flat_map(|r| r.epochs.iter().map(|e| e.epoch))
        .max()
        .unwrap_or(1) as f64;
    let series = |f: fn(&EpochRow) -> f64| -> Vec<Series> {
        runs.iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    format!("{} ({})", r.name, r.mode),
                    r.epochs.iter().map(|e| (e.epoch as f64, f(e))).collect(),
                    Style::nth(i),
                )
            })
            .collect()
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1500, 480)).into_drawing_area();
        let err = draw_err(out);
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let areas = root.split_evenly((1, 3));
        panel(
            &areas[0],
            "test accuracy",
            "top-1",
            &series(|e| e.test_acc),
            &[],
            max_epoch,
        )
        .map_err(&err)?;
        panel(
            &areas[1],
            "test loss",
            "cross-entropy",
            &series(|e| e.test_loss),
            &[],
            max_epoch,
        )
        .map_err(&err)?;
        panel(
            &areas[2],
            "MACs per image",
            "MACs (M)",
            &series(|e| e.macs / 1e6),
            &[],
            max_epoch,
        )
        .map_err(&err)?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    crate::fs::write_atomic(out, svg.as_bytes())
}

/// One branch of a grown block in `dyrep inspect`.
#[derive(Clone, Debug, Serialize)]
pub struct BranchInfo {
    pub op: String,
    /// Shapes of the branch's own conv weights (`[out, in/groups, kh, kw]`).
    pub shapes: Vec<Vec<usize>>,
    /// Mean |γ| of the branch's last BN.
    pub gamma: f64,
    /// Dep's importance: mean |γ| over the main branch's (1 for the main branch).
    pub importance: f64,
    pub main: bool,
    /// Blocks grown inside this branch, by child slot name.
    pub children: Vec<InspectedConv>,
}

/// A conv slot in `dyrep inspect`: plain or a block of branches.
#[derive(Clone, Debug, Serialize)]
pub struct InspectedConv {
    pub path: String,
    pub geometry: String,
    pub params: usize,
    pub branches: Vec<BranchInfo>,
}

/// The tree `dyrep inspect` prints.
#[derive(Clone, Debug, Serialize)]
pub struct InspectReport {
    pub model: String,
    pub form: String,
    /// How the blocks trained: `bn` (a branch's last BN γ) or `online` (a branch's scale).
    pub block_form: String,
    pub params: usize,
    pub macs: u64,
    pub blocks: usize,
    pub branches: usize,
    pub convs: Vec<InspectedConv>,
    /// Per grown conv, the factor its grows and cuts put on its main conv's effective step
    /// ([`step_factors`]); empty when the run's events are not at hand.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub step_factors: Vec<ConvStepFactor>,
}

/// The accumulated factor on one grown conv's effective step (`preserve.rs`): the product of the
/// `step_factor`s of the grows and cuts at its path.
#[derive(Clone, Debug, Serialize)]
pub struct ConvStepFactor {
    pub path: String,
    pub events: usize,
    pub factor: f64,
}

/// [`ConvStepFactor`]s from a run's events, in path order (events without the record are
/// skipped).
pub fn step_factors(events: &[Event]) -> Vec<ConvStepFactor> {
    let mut by_path: std::collections::BTreeMap<&str, (usize, f64)> = Default::default();
    for e in events {
        if let Some(m) = &e.main_scale {
            let entry = by_path.entry(e.path.as_str()).or_insert((0, 1.0));
            entry.0 += 1;
            entry.1 *= m.step_factor;
        }
    }
    by_path
        .into_iter()
        .map(|(path, (events, factor))| ConvStepFactor {
            path: path.to_string(),
            events,
            factor,
        })
        .collect()
}

fn mean_abs(t: &candle_core::Tensor) -> Result<f64> {
    Ok(t.abs()?
        .mean_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?)
}

fn inspected_conv(path: &str, slot: &Slot) -> Result<InspectedConv> {
    let mut branches = Vec::new();
    if let Some(block) = slot.as_block() {
        let main_gamma = mean_abs(&block.main().bn_gamma()?)?;
        for (i, op) in block.all_branches().enumerate() {
            let bp = format!("{path}.{}", op.name());
            let mut shapes = Vec::new();
            op.visit_own_tensors(&bp, &mut |_, v, role| {
                if role == TensorRole::ConvWeight {
                    shapes.push(v.dims().to_vec());
                }
            });
            let gamma = mean_abs(&op.bn_gamma()?)?;
            let mut children = Vec::new();
            for (name, child) in op.child_slots() {
                let cp = format!("{bp}.{name}");
                let info = inspected_conv(&cp, child)?;
                if !info.branches.is_empty() {
                    children.push(info);
                } else {
                    let mut s = Vec::new();
                    child.visit_tensors(&cp, &mut |_, v, role| {
                        if role == TensorRole::ConvWeight {
                            s.push(v.dims().to_vec());
                        }
                    });
                    shapes.extend(s);
                }
            }
            branches.push(BranchInfo {
                op: op.name().to_string(),
                shapes,
                gamma,
                importance: if main_gamma > 0.0 {
                    gamma / main_gamma
                } else {
                    0.0
                },
                main: i == 0,
                children,
            });
        }
    }
    Ok(InspectedConv {
        path: path.to_string(),
        geometry: slot.geom().to_string(),
        params: slot.param_count(),
        branches,
    })
}

/// The tree of grown blocks of a model.
pub fn inspect(model: &Model) -> Result<InspectReport> {
    let mut convs = Vec::new();
    for u in model.units() {
        convs.push(inspected_conv(&u.conv_path, &u.slot)?);
    }
    Ok(InspectReport {
        model: model.name().to_string(),
        form: format!("{:?}", model.form).to_lowercase(),
        block_form: model.block_form.as_str().to_string(),
        params: model.param_count(),
        macs: model.macs()?,
        blocks: model.block_count(),
        branches: model.branch_count(),
        convs,
        step_factors: Vec::new(),
    })
}

/// What `inspect` calls a branch's last per-channel factor: its BN's γ, or its scale in the
/// online form.
fn factor_name(block_form: &str) -> &'static str {
    if block_form == "online" {
        "scale"
    } else {
        "gamma"
    }
}

fn write_slot(out: &mut String, s: &InspectedConv, indent: usize, factor: &str) {
    let pad = "  ".repeat(indent);
    if s.branches.is_empty() {
        out.push_str(&format!("{pad}{}  {}  plain\n", s.path, s.geometry));
        return;
    }
    out.push_str(&format!(
        "{pad}{}  {}  block of {} branches, {} params\n",
        s.path,
        s.geometry,
        s.branches.len(),
        s.params
    ));
    for b in &s.branches {
        let shapes: Vec<String> = b
            .shapes
            .iter()
            .map(|d| {
                d.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join("x")
            })
            .collect();
        out.push_str(&format!(
            "{pad}  {:<12} {:<28} {factor} {:.4}  importance {}\n",
            b.op,
            if shapes.is_empty() {
                "-".to_string()
            } else {
                shapes.join(" -> ")
            },
            b.gamma,
            if b.main {
                "(main)".to_string()
            } else {
                format!("{:.3}", b.importance)
            }
        ));
        for c in &b.children {
            write_slot(out, c, indent + 2, factor);
        }
    }
}

/// The tree as text: grown blocks with their branches (nested blocks indented); plain convs
/// are listed only with `all`.
pub fn inspect_text(r: &InspectReport, all: bool) -> String {
    let online = if r.block_form == "online" {
        ", online blocks"
    } else {
        ""
    };
    let mut out = format!(
        "{} ({} form{online}): {} params, {:.2} M MACs, {} block(s), {} branch(es)\n",
        r.model,
        r.form,
        r.params,
        r.macs as f64 / 1e6,
        r.blocks,
        r.branches
    );
    for s in &r.convs {
        if all || !s.branches.is_empty() {
            write_slot(&mut out, s, 1, factor_name(&r.block_form));
        }
    }
    if r.blocks == 0 && !all {
        out.push_str("  no grown blocks (every conv is plain); --all lists the convs\n");
    }
    if !r.step_factors.is_empty() {
        out.push_str(
            "effective step of each grown conv's main conv (× the step before its first grow):\n",
        );
        for f in &r.step_factors {
            out.push_str(&format!(
                "  {:<40} ×{:.3}  over {} grow/cut event(s)\n",
                f.path, f.factor, f.events
            ));
        }
    }
    out
}
