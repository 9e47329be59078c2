//! `dyrep compare --group-by`: runs grouped by settings of their config (mode, scorer, ...),
//! each group summarised over its seeds — mean ± sample standard deviation of final and best
//! test accuracy, average params and MACs (epoch-weighted, as the paper's Table 2), train time,
//! grows and cuts — and compared with a baseline group by seed: the mean of the per-seed
//! differences with a 95 % Student-t confidence interval (paired, so the variation that seeds
//! share cancels) — and, optionally, with a cost group: average MACs and train time over its
//! (the paper's claim is DyRep's cost against DBB's). The chart draws each group's mean test-accuracy curve with a ±1 std band.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use super::palette::{draw_marks, Style};
use crate::config::TrainConfig;
use crate::error::{Result, RuntimeError};
use crate::report::RunRecord;

/// Mean, sample standard deviation (0 for one value) and count.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

impl Stat {
    pub fn of(values: &[f64]) -> Stat {
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n.max(1) as f64;
        let var = if n > 1 {
            values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64
        } else {
            0.0
        };
        Stat {
            mean,
            std: var.sqrt(),
            n,
        }
    }
}

/// The mean paired difference to the baseline over the seeds both groups ran, and its 95 %
/// confidence interval (`None` with a single pair: no spread to estimate).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Paired {
    pub n: usize,
    pub mean: f64,
    pub ci95: Option<(f64, f64)>,
}

impl Paired {
    pub fn of(diffs: &[f64]) -> Option<Paired> {
        if diffs.is_empty() {
            return None;
        }
        let s = Stat::of(diffs);
        let ci95 = (s.n > 1).then(|| {
            let half = t975(s.n - 1) * s.std / (s.n as f64).sqrt();
            (s.mean - half, s.mean + half)
        });
        Some(Paired {
            n: s.n,
            mean: s.mean,
            ci95,
        })
    }
}

/// The 97.5 % quantile of Student's t with `df` degrees of freedom (two-sided 95 %).
pub fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => T[df - 1],
        _ => 1.96,
    }
}

/// One group of `dyrep compare --group-by`.
#[derive(Clone, Debug, Serialize)]
pub struct GroupRow {
    pub group: String,
    pub runs: Vec<String>,
    pub seeds: Vec<u64>,
    pub final_test_acc: Stat,
    pub best_test_acc: Stat,
    pub avg_params: Stat,
    pub avg_macs: Stat,
    pub train_seconds: Stat,
    /// Processor seconds, when every run of the group recorded them.
    pub train_cpu_seconds: Option<Stat>,
    pub grows: Stat,
    pub cuts: Stat,
    /// Against the baseline group, by seed (absent for the baseline and without one).
    pub delta_final_acc: Option<Paired>,
    pub delta_best_acc: Option<Paired>,
    /// Mean train time over the baseline's.
    pub time_ratio: Option<f64>,
    /// Against the cost group (`--cost-vs`, e.g. DBB's): mean average MACs and mean train time
    /// over that group's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_vs: Option<CostRatio>,
}

/// A group's training cost relative to another group's (the paper's claim is DyRep's against
/// DBB's): average MACs are exact, train time is as noisy as the machine was shared, processor
/// time less so.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CostRatio {
    pub group: String,
    pub macs: Option<f64>,
    pub time: Option<f64>,
    /// Processor time over that group's (absent where a run lacks it): unlike train time, not
    /// inflated by pauses or by other jobs holding the cores.
    pub cpu: Option<f64>,
}

/// A `--group-by` key as a config path: `mode`, `width`, ... as they are; `scorer`, `dep`,
/// `gamma0` and the other `[dyrep]` settings also without their `dyrep.` prefix.
fn resolve_key(key: &str, known: &[String]) -> Result<String> {
    let key = key.trim();
    for candidate in [key.to_string(), format!("dyrep.{key}")] {
        if known.contains(&candidate) {
            return Ok(candidate);
        }
    }
    // Suggest among the names as they may be written: full paths and `[dyrep]` short forms.
    let names = known
        .iter()
        .map(String::as_str)
        .chain(known.iter().filter_map(|k| k.strip_prefix("dyrep.")));
    let hint = dyrep_api::registry::nearest(key, names)
        .map(|n| format!(" (did you mean `{n}`?)"))
        .unwrap_or_default();
    Err(RuntimeError::Config(format!(
        "--group-by {key}: no such config setting{hint}"
    )))
}

/// The value of a dotted config path, as text.
fn config_value(cfg: &toml::Table, path: &str) -> Option<String> {
    let mut parts = path.split('.');
    let mut v = cfg.get(parts.next()?)?;
    for p in parts {
        v = v.as_table()?.get(p)?;
    }
    Some(match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// A run's group label: the first key's value alone, the others as `key=value`; `[dyrep]`
/// settings only for dyrep-mode runs (an origin run has no scorer). Values come from the
/// settings the run recorded when given (`recorded`): one its config does not name, because the
/// run predates it, reads `-` rather than today's default.
fn label(cfg: &TrainConfig, recorded: Option<&toml::Table>, keys: &[String]) -> Result<String> {
    let table = match recorded {
        Some(t) => t.clone(),
        None => toml::Table::try_from(cfg)
            .map_err(|e| RuntimeError::Config(format!("cannot read a run's config: {e}")))?,
    };
    let mut parts = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        if key.starts_with("dyrep.") && cfg.mode != crate::config::Mode::Dyrep {
            continue;
        }
        let value = config_value(&table, key).unwrap_or_else(|| {
            // Runs from before the setting existed all trained their blocks in the BN form.
            if key == "block_form" { "bn" } else { "-" }.into()
        });
        let short = key.strip_prefix("dyrep.").unwrap_or(key);
        parts.push(if i == 0 {
            value
        } else {
            format!("{short}={value}")
        });
    }
    Ok(parts.join(" "))
}

/// Refuses unfinished runs: a group's mean over seeds would mix a run's early accuracy with the
/// others' final one.
fn check_finished(runs: &[RunRecord]) -> Result<()> {
    let unfinished: Vec<String> = runs
        .iter()
        .filter_map(|r| {
            let row = r.row();
            let planned = row.planned_epochs.filter(|_| row.is_unfinished())?;
            Some(format!(
                "{} ({} of {planned} epochs)",
                r.dir.display(),
                row.epochs
            ))
        })
        .collect();
    if unfinished.is_empty() {
        return Ok(());
    }
    let (these, it) = if unfinished.len() == 1 {
        ("this run is", "it")
    } else {
        ("these runs are", "them")
    };
    Err(RuntimeError::Config(format!(
        "--group-by compares finished runs, but {these} unfinished: {}; let {it} finish \
         (`dyrep train --resume DIR`) or leave {it} out",
        unfinished.join(", ")
    )))
}

/// The seed a run was trained with (0 without a readable config, as grouping needs one anyway).
fn seed_of(r: &RunRecord) -> u64 {
    r.config.as_ref().map_or(0, |c| c.seed)
}

/// Refuses a group with two runs of one seed when runs are paired by seed with a baseline: the
/// pairing would keep one of them and drop the other without a word.
fn check_one_run_per_seed(group: &str, rs: &[&RunRecord]) -> Result<()> {
    let mut by_seed: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for r in rs {
        by_seed.entry(seed_of(r)).or_default().push(&r.name);
    }
    match by_seed.iter().find(|(_, names)| names.len() > 1) {
        None => Ok(()),
        Some((seed, names)) => Err(RuntimeError::Config(format!(
            "--baseline pairs runs by seed, but group `{group}` has {} runs of seed {seed} ({}); \
             group by more settings (e.g. `--group-by mode,scorer,dep`) or leave runs out",
            names.len(),
            names.join(", ")
        ))),
    }
}

/// `runs` by their label for the comma-separated `group_by` keys; every run must have finished.
fn group_runs<'a>(
    runs: &'a [RunRecord],
    group_by: &str,
) -> Result<BTreeMap<String, Vec<&'a RunRecord>>> {
    check_finished(runs)?;
    let known = TrainConfig::known_keys();
    let keys = group_by
        .split(',')
        .map(|k| resolve_key(k, &known))
        .collect::<Result<Vec<_>>>()?;
    let mut groups: BTreeMap<String, Vec<&RunRecord>> = BTreeMap::new();
    for r in runs {
        let cfg = r.config.as_ref().ok_or_else(|| {
            RuntimeError::Config(format!(
                "{}: no readable config.resolved.toml, so it cannot be grouped",
                r.dir.display()
            ))
        })?;
        groups
            .entry(label(cfg, r.recorded.as_ref(), &keys)?)
            .or_default()
            .push(r);
    }
    Ok(groups)
}

/// Groups `runs` by the comma-separated `group_by` keys and summarises each group; with a
/// `baseline` label, pairs every other group with it by seed (one run per seed and group); with
/// a `cost_vs` label, states every group's average MACs and train time relative to that group's.
pub fn group_rows(
    runs: &[RunRecord],
    group_by: &str,
    baseline: Option<&str>,
    cost_vs: Option<&str>,
) -> Result<Vec<GroupRow>> {
    let groups = group_runs(runs, group_by)?;
    for (flag, name) in [("--baseline", baseline), ("--cost-vs", cost_vs)] {
        if let Some(b) = name {
            if !groups.contains_key(b) {
                return Err(RuntimeError::Config(format!(
                    "{flag} {b}: no such group (groups: {})",
                    groups.keys().cloned().collect::<Vec<_>>().join(", ")
                )));
            }
        }
    }
    if baseline.is_some() {
        for (group, rs) in &groups {
            check_one_run_per_seed(group, rs)?;
        }
    }
    let by_seed = |rs: &[&RunRecord], f: fn(&crate::report::RunRow) -> f64| {
        rs.iter()
            .map(|r| (seed_of(r), f(&r.row())))
            .collect::<BTreeMap<u64, f64>>()
    };
    let base = baseline.and_then(|b| groups.get(b));
    let base_time = base.map(|rs| Stat::of(&values(rs, |r| r.train_seconds)).mean);
    let ratio = |mine: f64, theirs: f64| (theirs > 0.0).then(|| mine / theirs);
    let cost_base = cost_vs.and_then(|c| groups.get(c).map(|rs| (c, rs)));
    let mut rows = Vec::new();
    for (group, rs) in &groups {
        let is_base = Some(group.as_str()) == baseline;
        let paired = |f: fn(&crate::report::RunRow) -> f64| {
            let b = by_seed(base?, f);
            let mine = by_seed(rs, f);
            let diffs: Vec<f64> = mine
                .iter()
                .filter_map(|(s, v)| b.get(s).map(|bv| v - bv))
                .collect();
            Paired::of(&diffs).filter(|_| !is_base)
        };
        let time = Stat::of(&values(rs, |r| r.train_seconds));
        let cpu = cpu_stat(rs);
        let macs = Stat::of(&values(rs, |r| r.avg_macs));
        let cost_vs = cost_base.map(|(c, theirs)| CostRatio {
            group: c.to_string(),
            macs: ratio(macs.mean, Stat::of(&values(theirs, |r| r.avg_macs)).mean),
            time: ratio(
                time.mean,
                Stat::of(&values(theirs, |r| r.train_seconds)).mean,
            ),
            cpu: cpu
                .zip(cpu_stat(theirs))
                .and_then(|(mine, theirs)| ratio(mine.mean, theirs.mean)),
        });
        rows.push(GroupRow {
            group: group.clone(),
            runs: rs.iter().map(|r| r.name.clone()).collect(),
            seeds: rs.iter().map(|r| seed_of(r)).collect(),
            final_test_acc: Stat::of(&values(rs, |r| r.final_test_acc)),
            best_test_acc: Stat::of(&values(rs, |r| r.best_test_acc)),
            avg_params: Stat::of(&values(rs, |r| r.avg_params)),
            avg_macs: macs,
            train_seconds: time,
            train_cpu_seconds: cpu,
            grows: Stat::of(&values(rs, |r| r.grows as f64)),
            cuts: Stat::of(&values(rs, |r| r.cuts as f64)),
            delta_final_acc: paired(|r| r.final_test_acc),
            delta_best_acc: paired(|r| r.best_test_acc),
            time_ratio: base_time.and_then(|t| ratio(time.mean, t)),
            cost_vs,
        });
    }
    Ok(rows)
}

fn values(rs: &[&RunRecord], f: fn(&crate::report::RunRow) -> f64) -> Vec<f64> {
    rs.iter().map(|r| f(&r.row())).collect()
}

/// The group's processor seconds, when every run recorded them.
fn cpu_stat(rs: &[&RunRecord]) -> Option<Stat> {
    let cpu: Option<Vec<f64>> = rs.iter().map(|r| r.row().train_cpu_seconds).collect();
    cpu.map(|v| Stat::of(&v))
}

/// `mean ± std`; a group of one run has no spread to show, so just its value.
fn pm(s: &Stat, scale: f64, digits: usize) -> String {
    if s.n < 2 {
        return format!("{:.digits$}", s.mean * scale, digits = digits);
    }
    format!(
        "{:.digits$} ± {:.digits$}",
        s.mean * scale,
        s.std * scale,
        digits = digits
    )
}

fn delta(p: &Option<Paired>) -> String {
    match p {
        None => "—".into(),
        Some(Paired {
            n,
            mean,
            ci95: Some((lo, hi)),
        }) => format!(
            "{:+.2} [{:+.2}, {:+.2}] (n={n})",
            mean * 100.0,
            lo * 100.0,
            hi * 100.0
        ),
        Some(Paired {
            n,
            mean,
            ci95: None,
        }) => format!("{:+.2} (n={n})", mean * 100.0),
    }
}

/// The markdown table of grouped runs: accuracies in %, Δ in percentage points with the 95 %
/// confidence interval of the paired mean; processor time where every run of a group recorded
/// it (— otherwise); with a cost group, three more columns (MACs, time and processor time over
/// that group's).
pub fn group_markdown(rows: &[GroupRow], baseline: Option<&str>) -> String {
    let vs = baseline.unwrap_or("baseline");
    let cost_group = rows
        .iter()
        .find_map(|r| r.cost_vs.as_ref().map(|c| c.group.clone()));
    let times = |v: Option<f64>| v.map_or("—".into(), |t| format!("{t:.2}×"));
    let mut s = format!(
        "| group | runs | final acc (%) | best acc (%) | Δ final vs {vs} (pp, 95 % CI) | Δ best vs {vs} (pp) | avg params (M) | avg MACs (M) | train time (s) | time / {vs} | CPU time (s) | grows | cuts |"
    );
    let mut rule =
        String::from("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    if let Some(c) = &cost_group {
        s.push_str(&format!(" MACs / {c} | time / {c} | CPU / {c} |"));
        rule.push_str("---:|---:|---:|");
    }
    s.push('\n');
    s.push_str(&rule);
    s.push('\n');
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.3} | {:.2} | {} | {} | {} | {:.1} | {:.1} |",
            r.group,
            r.runs.len(),
            pm(&r.final_test_acc, 100.0, 2),
            pm(&r.best_test_acc, 100.0, 2),
            delta(&r.delta_final_acc),
            delta(&r.delta_best_acc),
            r.avg_params.mean / 1e6,
            r.avg_macs.mean / 1e6,
            pm(&r.train_seconds, 1.0, 0),
            times(r.time_ratio),
            r.train_cpu_seconds
                .as_ref()
                .map_or("—".into(), |c| pm(c, 1.0, 0)),
            r.grows.mean,
            r.cuts.mean,
        ));
        if let Some(c) = &r.cost_vs {
            s.push_str(&format!(
                " {} | {} | {} |",
                times(c.macs),
                times(c.time),
                times(c.cpu)
            ));
        }
        s.push('\n');
    }
    s
}

/// A group's curve: (epoch, mean, std) of the runs that reached each epoch.
type MeanCurve = Vec<(f64, f64, f64)>;

/// Per epoch of a group: the mean and std of the runs that reached it.
fn mean_curve(runs: &[&RunRecord]) -> MeanCurve {
    let max = runs.iter().map(|r| r.epochs.len()).max().unwrap_or(0);
    (0..max)
        .filter_map(|i| {
            let v: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.epochs.get(i).map(|e| e.test_acc))
                .collect();
            (!v.is_empty()).then(|| {
                let s = Stat::of(&v);
                ((i + 1) as f64, s.mean, s.std)
            })
        })
        .collect()
}

/// Draws each group's mean test-accuracy curve with a ±1 std band to `out` (SVG).
pub fn plot_groups(runs: &[RunRecord], group_by: &str, out: &Path) -> Result<()> {
    let groups = group_runs(runs, group_by)?;
    let curves: Vec<(String, MeanCurve)> = groups
        .iter()
        .map(|(g, rs)| (format!("{g} (n={})", rs.len()), mean_curve(rs)))
        .collect();
    let max_epoch = curves
        .iter()
        .flat_map(|c| c.1.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for (_, c) in &curves {
        for &(_, m, s) in c {
            lo = lo.min(m - s);
            hi = hi.max(m + s);
        }
    }
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let err =
        |e: String| RuntimeError::Config(format!("{}: cannot draw the chart: {e}", out.display()));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "test accuracy: group mean, band ±1 std over seeds",
                ("sans-serif", 18),
            )
            .margin(14)
            .x_label_area_size(34)
            .y_label_area_size(58)
            .build_cartesian_2d(0.5f64..(max_epoch + 0.5), (lo - pad)..(hi + pad))
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("top-1")
            .draw()
            .map_err(|e| err(e.to_string()))?;
        for (i, (name, c)) in curves.iter().enumerate() {
            let style = Style::nth(i);
            let color = style.color;
            let band: Vec<(f64, f64)> = c
                .iter()
                .map(|p| (p.0, p.1 + p.2))
                .chain(c.iter().rev().map(|p| (p.0, p.1 - p.2)))
                .collect();
            chart
                .draw_series(std::iter::once(Polygon::new(
                    band,
                    color.mix(0.18).filled(),
                )))
                .map_err(|e| err(e.to_string()))?;
            chart
                .draw_series(LineSeries::new(
                    c.iter().map(|p| (p.0, p.1)),
                    color.stroke_width(2),
                ))
                .map_err(|e| err(e.to_string()))?
                .label(name.as_str())
                .legend(move |at| style.legend_mark(at));
            let means: Vec<(f64, f64)> = c.iter().map(|p| (p.0, p.1)).collect();
            draw_marks(&mut chart, &means, style).map_err(err)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    crate::fs::write_atomic(out, svg.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_run_shows_no_spread() {
        assert_eq!(pm(&Stat::of(&[0.6572]), 100.0, 2), "65.72");
        assert_eq!(pm(&Stat::of(&[0.5, 0.7]), 100.0, 2), "60.00 ± 14.14");
    }

    #[test]
    fn stats_and_paired_intervals_match_hand_computation() {
        let s = Stat::of(&[1.0, 2.0, 3.0, 6.0]);
        assert_eq!(s.n, 4);
        assert!((s.mean - 3.0).abs() < 1e-12);
        // Σ(v − 3)² = 4 + 1 + 0 + 9 = 14, / 3.
        assert!((s.std - (14.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(Stat::of(&[5.0]).std, 0.0);
        // Differences 0.01, 0.03: mean 0.02, sd √2·0.01, half width 12.706·0.01.
        let p = Paired::of(&[0.01, 0.03]).unwrap();
        let (lo, hi) = p.ci95.unwrap();
        assert!((p.mean - 0.02).abs() < 1e-12);
        assert!((hi - p.mean - 12.706 * 0.01).abs() < 1e-9, "{hi}");
        assert!((p.mean - lo - 12.706 * 0.01).abs() < 1e-9, "{lo}");
        assert_eq!(Paired::of(&[0.5]).unwrap().ci95, None);
        assert_eq!(Paired::of(&[]), None);
        assert_eq!(t975(2), 4.303);
        assert_eq!(t975(100), 1.96);
    }

    #[test]
    fn group_keys_resolve_with_or_without_the_dyrep_prefix() {
        let known = TrainConfig::known_keys();
        assert_eq!(resolve_key("mode", &known).unwrap(), "mode");
        assert_eq!(resolve_key("scorer", &known).unwrap(), "dyrep.scorer");
        assert_eq!(resolve_key("dyrep.dep", &known).unwrap(), "dyrep.dep");
        let e = resolve_key("scorr", &known).unwrap_err().to_string();
        assert!(e.contains("did you mean `scorer`"), "{e}");
    }

    #[test]
    fn labels_skip_dyrep_settings_of_other_modes() {
        let keys = vec!["mode".to_string(), "dyrep.scorer".to_string()];
        let origin = TrainConfig::default();
        assert_eq!(label(&origin, None, &keys).unwrap(), "origin");
        let dyrep = TrainConfig {
            mode: crate::config::Mode::Dyrep,
            ..TrainConfig::default()
        };
        assert_eq!(label(&dyrep, None, &keys).unwrap(), "dyrep scorer=synflow");
    }

    /// A run written before `baseline_init` existed drew its blocks `fan_out`; today's default
    /// is `pytorch`, so its label must say the setting was not recorded, not the default.
    #[test]
    fn labels_of_runs_that_predate_a_setting_do_not_read_its_default() {
        let keys = vec!["mode".to_string(), "baseline_init".to_string()];
        let old_text = "mode = \"dbb\"\nbaseline_form = \"reference\"\n";
        let cfg: TrainConfig = toml::from_str(old_text).unwrap();
        let recorded: toml::Table = old_text.parse().unwrap();
        assert_eq!(
            label(&cfg, Some(&recorded), &keys).unwrap(),
            "dbb baseline_init=-"
        );
        let new_text = format!("{old_text}baseline_init = \"pytorch\"\n");
        let recorded: toml::Table = new_text.parse().unwrap();
        assert_eq!(
            label(&cfg, Some(&recorded), &keys).unwrap(),
            "dbb baseline_init=pytorch"
        );
    }
}
