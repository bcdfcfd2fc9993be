//! `cargo xtask demo --repeat K`: K runs of the same modes, each with its twin without
//! agents. A single run's split moves with the machine's noise; over repeats, each stage's
//! time (per node) and each measured p50 is taken as its median, the spread shown beside it,
//! and the unexplained share judged on the medians.
//!
//! The combined report is repeat 1's with the clean table, the clean splits and the
//! throughput predictions replaced by their medians over the repeats; the sections measured
//! with agents (profiled table, drops, the agents' cost) stay repeat 1's, and say so.

use serde::Serialize;

use super::category::Category;
use super::clean_interval::CleanBlocks;
use super::latency::{DetachedDelta, LatencyAttribution, P50s};
use super::split::{median_i64, Split};
use super::{Report, TableRow};
use crate::bench::table;

/// One stage over the repeats (its delta, both nodes), ns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageSpread {
    pub stage: Category,
    pub by_repeat: Vec<i64>,
    pub median: i64,
    pub min: i64,
    pub max: i64,
}

/// One mode's clean split over the repeats.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModeSpread {
    pub mode: String,
    pub delta_by_repeat: Vec<i64>,
    pub explained_by_repeat: Vec<i64>,
    pub unexplained_pct_by_repeat: Vec<Option<f64>>,
    /// Each repeat's delta with every agent detached, in its profiled pass (`None` where that
    /// pass did not ping so).
    pub detached_delta_by_repeat: Vec<Option<i64>>,
    pub stages: Vec<StageSpread>,
    /// The unexplained share of the median delta by the median split (the report's headline
    /// `clean` split); `None` for a median delta under the share threshold.
    pub unexplained_pct_of_medians: Option<f64>,
    pub predicted_qps_by_repeat: Vec<f64>,
    pub measured_qps_by_repeat: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Repeats {
    pub count: usize,
    pub modes: Vec<ModeSpread>,
}

fn spread(stage: Category, by_repeat: Vec<i64>) -> StageSpread {
    StageSpread {
        stage,
        median: median_i64(by_repeat.clone()),
        min: by_repeat.iter().copied().min().unwrap_or(0),
        max: by_repeat.iter().copied().max().unwrap_or(0),
        by_repeat,
    }
}

fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The detached delta over the repeats, as the clean one is taken: the median mode p50 less
/// the median baseline p50, against the median split; `None` unless every repeat has one.
fn median_detached(of_mode: &[&LatencyAttribution], clean: &Split) -> Option<DetachedDelta> {
    let all: Vec<DetachedDelta> = of_mode.iter().map(|a| a.detached).collect::<Option<_>>()?;
    let p50s = P50s {
        mode_ns: median_i64(all.iter().map(|d| d.mode_ns).collect()),
        baseline_ns: median_i64(all.iter().map(|d| d.baseline_ns).collect()),
    };
    (!all.is_empty()).then(|| DetachedDelta::of(p50s, clean))
}

/// The repeats' reports (in order) as one.
pub fn combine(dir: &std::path::Path, reports: Vec<Report>) -> Report {
    let count = reports.len();
    let mut combined = reports[0].clone();
    combined.source = dir.display().to_string();
    combined.run.repeats = count;
    combined.clean_twins = reports.iter().all(|r| r.clean_twins);
    let lines = |pick: fn(&Report) -> &Vec<table::Line>| {
        table::median_lines(&reports.iter().map(|r| pick(r).clone()).collect::<Vec<_>>())
    };
    if reports.iter().all(|r| r.clean_table.is_some()) {
        combined.clean_lines = lines(|r| &r.clean_lines);
        combined.clean_table = Some(combined.clean_lines.iter().map(TableRow::of).collect());
    } else {
        combined.notes.push("Not every repeat has its run without agents: the table without agents is repeat 1's alone.".to_owned());
    }
    let mut modes = Vec::new();
    for l in combined.latency.iter_mut() {
        let attributions: Vec<&LatencyAttribution> = reports
            .iter()
            .filter_map(|r| r.latency.iter().find(|x| x.mode == l.mode))
            .collect();
        let of_mode: Vec<&Split> = attributions.iter().map(|x| &x.clean).collect();
        if let Some(median) = Split::median_of(&of_mode) {
            l.clean = median;
        }
        l.detached = median_detached(&attributions, &l.clean);
        // The interval of the median delta: every repeat's blocks resampled on their own.
        l.clean_delta_interval_ns = attributions
            .iter()
            .map(|a| a.clean_blocks.as_ref())
            .collect::<Option<Vec<_>>>()
            .and_then(|runs| CleanBlocks::delta_interval_ns(&runs));
        let throughput: Vec<_> = reports
            .iter()
            .filter_map(|r| r.throughput.iter().find(|t| t.mode == l.mode))
            .collect();
        modes.push(ModeSpread {
            mode: l.mode.clone(),
            delta_by_repeat: of_mode.iter().map(|s| s.delta_ns).collect(),
            explained_by_repeat: of_mode.iter().map(|s| s.explained_ns).collect(),
            unexplained_pct_by_repeat: of_mode.iter().map(|s| s.unexplained_pct).collect(),
            detached_delta_by_repeat: attributions
                .iter()
                .map(|a| a.detached.map(|d| d.delta_ns))
                .collect(),
            stages: Category::ALL
                .iter()
                .map(|&c| spread(c, of_mode.iter().map(|s| s.stage(c)).collect()))
                .collect(),
            unexplained_pct_of_medians: l.clean.unexplained_pct,
            predicted_qps_by_repeat: throughput.iter().map(|t| t.predicted_qps).collect(),
            measured_qps_by_repeat: throughput.iter().map(|t| t.measured_qps).collect(),
        });
    }
    for t in combined.throughput.iter_mut() {
        if let Some(m) = modes.iter().find(|m| m.mode == t.mode) {
            t.predicted_qps = median_f64(m.predicted_qps_by_repeat.clone());
            t.measured_qps = median_f64(m.measured_qps_by_repeat.clone());
            t.prediction_error_pct = if t.measured_qps > 0.0 {
                (t.predicted_qps - t.measured_qps) / t.measured_qps * 100.0
            } else {
                0.0
            };
        }
    }
    if combined.validation.is_none() {
        combined.validation = reports.iter().find_map(|r| r.validation.clone());
    }
    combined.notes.push(format!(
        "{count} repeats (DIR/repeat-1 .. repeat-{count}): the table without agents, the latency split without netprof and the QPS predictions are medians over the repeats (each stage per node); the sections with agents attached are repeat 1's (`netprof report DIR/repeat-K` for another's)."
    ));
    combined.repeats = Some(Repeats { count, modes });
    combined
}
