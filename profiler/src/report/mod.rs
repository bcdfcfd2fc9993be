//! `netprof report`: one attributed report from a run directory. First the study's table as
//! the tools measure it with no agent attached (`DIR/clean/`), and the extra ping RTT of each
//! pod mode split into datapath stages per node, net of netprof's own in-path cost (what is not
//! explained shown as such); then the nginx QPS drop predicted from per-request stage cost,
//! the repeats' spread, the ground-truth checks; then what was measured with the agents
//! attached (their table, the splits as profiled, drops, the agents' own cost).
//!
//! `input` reads and checks the files (`sanity` refuses impossible values, `calibration` reads
//! netprof's measured in-path cost), `merge` gathers the nodes' reports per step,
//! `stage_time`, `split`, `latency` and `throughput` attribute, `repeats` combines repeated
//! runs, `render` writes the formats. [`Report`] is also the JSON document
//! (`netprof.report/v2`, docs/report-schema.md).

mod build;
pub mod calibration;
pub mod category;
pub mod clean_interval;
pub mod drops;
pub mod gauge;
pub mod in_pass_cost;
pub mod input;
pub mod latency;
pub mod mechanisms;
pub mod merge;
pub mod overhead;
pub mod probe_cost;
pub mod render;
pub mod repeats;
pub mod sanity;
pub mod split;
pub mod stage_time;
pub mod throughput;
pub mod validation;

use std::path::Path;

use serde::Serialize;

use crate::bench::config::BenchConfig;
use crate::bench::table::{Line, Row};
use crate::rundir::{NetPath, RunDir};

pub use build::build;
pub use input::{Input, InputError};
use latency::LatencyAttribution;
use throughput::ThroughputAttribution;

pub const SCHEMA: &str = "netprof.report/v2";

/// One row of the study's table with its comparison to the baseline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableRow {
    pub mode: String,
    pub path: NetPath,
    #[serde(flatten)]
    pub values: Row,
    /// Ratios (latency) and changes in percent (bandwidth, QPS) against the baseline; absent
    /// for the baseline itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_baseline: Option<Comparison>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Comparison {
    pub ping_avg_ratio: Option<f64>,
    pub ping_p50_ratio: Option<f64>,
    pub ping_p99_ratio: Option<f64>,
    pub bandwidth_change_pct: Option<f64>,
    pub qps_change_pct: Option<f64>,
    pub ab_mean_ratio: Option<f64>,
}

fn ratio(value: Option<f64>, base: Option<f64>) -> Option<f64> {
    match (value, base) {
        (Some(v), Some(b)) if b > 0.0 => Some(v / b),
        _ => None,
    }
}

fn change(value: f64, base: f64) -> Option<f64> {
    (base > 0.0).then(|| (value / base - 1.0) * 100.0)
}

impl TableRow {
    pub fn of(line: &Line) -> TableRow {
        let (row, base) = (line.values, line.baseline);
        TableRow {
            mode: line.mode.to_string(),
            path: line.path,
            values: row,
            vs_baseline: (line.mode != crate::lab::Mode::Host).then(|| Comparison {
                ping_avg_ratio: ratio(row.ping_avg_ms, base.ping_avg_ms),
                ping_p50_ratio: ratio(row.ping_p50_ms, base.ping_p50_ms),
                ping_p99_ratio: ratio(row.ping_p99_ms, base.ping_p99_ms),
                bandwidth_change_pct: change(row.bandwidth_gbit_s, base.bandwidth_gbit_s),
                qps_change_pct: change(row.qps, base.qps),
                ab_mean_ratio: ratio(Some(row.ab_mean_ms), Some(base.ab_mean_ms)),
            }),
        }
    }
}

/// Every RTT of one ping run, for CDFs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RttSamples {
    pub mode: String,
    pub path: NetPath,
    /// Whether these are the run without agents.
    pub without_agents: bool,
    pub rtts_us: Vec<f64>,
}

/// Facts of the run the numbers depend on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunFacts {
    pub kernel: String,
    pub cpus: usize,
    pub iptables: String,
    pub config: BenchConfig,
    pub modes: Vec<String>,
    pub profiled: Vec<String>,
    /// `cargo xtask demo --repeat K`: K (1 for a single run).
    pub repeats: usize,
}

/// The calibration the probe costs came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CalibrationFacts {
    pub file: String,
    /// The calibration's ping interval (the ping split's own, or the nearest calibrated).
    pub ping_interval_ms: Option<f64>,
    /// bpf_stats' share of the time while netprof ran, percent, when recorded.
    pub stats_share: Option<u32>,
    pub mode: Option<String>,
    pub kernel: Option<String>,
    pub rounds: Option<u32>,
    /// Checkpoint kind -> ns per run on a followed packet.
    pub followed_ns: std::collections::BTreeMap<String, calibration::Interval>,
    pub rtt_shift_ns: calibration::Interval,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratios: Option<calibration::CalibrationRatios>,
}

/// The report (also the `--format json` document).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub source: String,
    pub run: RunFacts,
    /// Each node's kernel and the mechanism that measured each stage there (empty when the
    /// agents' documents do not name them).
    pub measured_by: Vec<mechanisms::NodeMechanisms>,
    /// What the tables' ratios compare against.
    pub table_baseline: String,
    /// The study's table with no agent attached (`DIR/clean/`; medians over repeats), the
    /// first numbers of every format. `None` when the run has no such twin.
    pub clean_table: Option<Vec<TableRow>>,
    /// How the run without agents took its pings when its modes ran side by side.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clean_pings_side_by_side: Option<SideBySidePings>,
    /// The run without agents was the profiled run's clean twins: labs no agent ever attached
    /// to, measured in the same turns as the profiled labs (every repeat's, with repeats).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub clean_twins: bool,
    /// How the profiled run took its pings when its modes ran side by side (each lab's agents
    /// attached in its own blocks only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profiled_pings_side_by_side: Option<SideBySidePings>,
    pub latency: Vec<LatencyAttribution>,
    pub throughput: Vec<ThroughputAttribution>,
    /// Spread over `cargo xtask demo --repeat K`'s repeats.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeats: Option<repeats::Repeats>,
    /// `bench --validate`: the ground-truth checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<validation::Validation>,
    /// The study's table as measured with the agents attached.
    pub profiled_table: Vec<TableRow>,
    /// Where the probes' per-run cost came from, when a calibration was used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationFacts>,
    pub drops: Vec<drops::StepDrops>,
    pub overhead: Vec<overhead::NodeOverhead>,
    pub rtt_samples: Vec<RttSamples>,
    /// Methods, and everything the report could not do and why.
    pub notes: Vec<String>,
    /// The tables' lines the text formats render (in JSON as the tables above).
    #[serde(skip)]
    pub clean_lines: Vec<Line>,
    #[serde(skip)]
    pub profiled_lines: Vec<Line>,
    #[serde(skip)]
    pub host_mode_baseline: bool,
}

/// A run whose modes' labs were all up at once, every path pinged in turns.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SideBySidePings {
    pub modes: usize,
    pub paths: usize,
    /// Blocks of each path's pings.
    pub blocks: u32,
}

pub const LATENCY_METHOD: &str = "Latency: the extra ping RTT of each pod mode over the baseline, split by stage and node: a stage's time is the sum over both nodes (kept apart) of each segment's median × its passes per RTT, minus the baseline's. The headline split takes netprof's probe out of every segment (half a probe run at each end, per kind: calibrated when DIR holds a calibration, the one measured at the split's ping interval, else the bpf_stats estimate) and is set against the p50s measured with no agent attached (DIR/clean/). Unexplained = that delta − the stages' sum, never hidden; negative when the stages add up to more.";
pub const THROUGHPUT_METHOD: &str = "Throughput: QPS ≈ cpus / cpu time per request; the baseline's cpu time per request is cpus / its QPS; a pod mode adds its extra stage time per request (per node, segment mean less netprof's probe × passes per request, minus the baseline's); predicted QPS = cpus / (cpus / QPS_base + extra). Measured QPS are the run without agents when there is one.";
pub const SEGMENT_NOTE: &str = "Segments ending at `consumed` (after delivery, or after transmission to the other node) run alongside the path and are not attributed; segments joining two packets that shared an skb address (reuse) are counted but not attributed.";

/// Loads the run directory `dir` (a single run, or `repeat-<k>/` directories) and builds its
/// report, with `clean/` and the calibrations where present.
pub fn from_dir(dir: &Path) -> Result<Report, InputError> {
    let run = RunDir::new(dir);
    let calibrations = load_calibrations(&run)?;
    let repeats = run.repeats().map_err(|source| InputError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let single = repeats.is_empty();
    let runs: Vec<RunDir> = if single {
        vec![run]
    } else {
        repeats.into_iter().map(|(_, r)| r).collect()
    };
    let mut loaded = Vec::new();
    for run in &runs {
        let input = input::load(run.root())?;
        let clean_dir = run.clean();
        let clean = if exists(clean_dir.root()) {
            Some(input::load(clean_dir.root())?)
        } else {
            None
        };
        loaded.push((input, clean));
    }
    // Every delta and every repeat's median set one mode file's pings against another's.
    let all: Vec<&input::Input> = loaded
        .iter()
        .flat_map(|(input, clean)| std::iter::once(input).chain(clean))
        .collect();
    input::one_cpu_idle(&all)?;
    let mut reports: Vec<Report> = loaded
        .iter()
        .map(|(input, clean)| build(input, clean.as_ref(), &calibrations))
        .collect();
    if single {
        return Ok(reports.remove(0));
    }
    Ok(repeats::combine(dir, reports))
}

/// Whether anything is at `path`, a dangling link included (which then fails to read, named).
fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

/// Every calibration at the top of `run` (one per ping interval it was measured at).
fn load_calibrations(run: &RunDir) -> Result<Vec<calibration::CalibrationFile>, InputError> {
    let paths = run.calibration_files().map_err(|source| InputError::Read {
        path: run.root().to_path_buf(),
        source,
    })?;
    paths.iter().map(|p| calibration::load(p)).collect()
}
