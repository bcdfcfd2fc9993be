//! `netprof report`: one attributed report from a `netprof bench --profile` directory: the
//! study's table, and next to it *why*: the extra ping RTT of each pod mode split into datapath
//! stages (with what is not explained shown as such), the nginx QPS drop predicted from
//! per-request stage cost, drops and retransmits, and the agent's own cost.
//!
//! `input` reads and checks the files, `merge` merges the nodes' histograms per step,
//! `latency` and `throughput` attribute, `drops` and `overhead` summarize, `render` writes the
//! formats. [`Report`] is also the JSON document (`netprof.report/v1`, docs/report-schema.md).

pub mod drops;
pub mod input;
pub mod latency;
pub mod merge;
pub mod overhead;
pub mod render;
pub mod throughput;
pub mod validation;

use std::path::Path;

use serde::Serialize;

use crate::bench::config::BenchConfig;
use crate::bench::result::ModeResult;
use crate::bench::table::{self, Row};
use crate::lab::Mode;
use crate::rundir::{NetPath, Node, Tool};

pub use input::{Input, InputError};
use latency::LatencyAttribution;
use merge::{merge_step, MergedStep};
use throughput::ThroughputAttribution;

pub const SCHEMA: &str = "netprof.report/v1";

/// One row of the study's table with its comparison to the baseline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableRow {
    pub mode: String,
    /// "pod" or "host".
    pub path: String,
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

/// Every RTT of one ping run, for CDFs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RttSamples {
    pub mode: String,
    pub path: NetPath,
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
}

/// The report (also the `--format json` document).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub source: String,
    pub run: RunFacts,
    /// What the table's ratios compare against.
    pub table_baseline: String,
    pub table: Vec<TableRow>,
    pub latency: Vec<LatencyAttribution>,
    pub throughput: Vec<ThroughputAttribution>,
    pub drops: Vec<drops::StepDrops>,
    pub overhead: Vec<overhead::NodeOverhead>,
    pub rtt_samples: Vec<RttSamples>,
    /// `bench --validate`: predicted against measured ablation gains, and the per-rule cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<validation::Validation>,
    /// Methods, and everything the report could not do and why.
    pub notes: Vec<String>,
    /// The mode results the study table is rendered from (not in JSON: `table` carries them).
    #[serde(skip)]
    pub results: Vec<ModeResult>,
    /// The same benchmarks without agents, from `DIR/clean/` (`cargo xtask demo` writes it),
    /// so the study's numbers are seen without netprof's own cost inside them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clean_table: Option<Vec<TableRow>>,
    #[serde(skip)]
    pub clean_results: Vec<ModeResult>,
}

/// Each attributed mode's p50 split without probes, set against the twin's p50s (the delta
/// the same benchmarks measured without agents, over the same baseline as the table's).
fn remeasure_without_agents(latency: &mut [LatencyAttribution], clean: &[ModeResult]) {
    let p50 = |path: &crate::bench::result::PathResult| {
        path.ping.stats.map(|s| (s.p50_ms * 1e6).round() as i64)
    };
    for l in latency.iter_mut() {
        let Some(twin) = clean.iter().find(|r| r.mode.to_string() == l.mode) else {
            continue;
        };
        if let (Some(mode_ns), Some(baseline_ns)) =
            (p50(twin.headline_path()), p50(table::baseline(clean, twin)))
        {
            l.p50_net = l
                .p50_net
                .remeasured("p50 without agents", mode_ns, baseline_ns);
        }
    }
}

/// Where a profiled run keeps its unprofiled twin.
pub const CLEAN_DIR: &str = "clean";

pub const LATENCY_METHOD: &str = "Latency: the extra ping RTT of each pod mode over the baseline, split by stage: per stage, the sum over both nodes and both directions of (segment median × passes per RTT), minus the baseline's; p99 uses segment means (percentiles do not add). Unexplained = measured delta − sum of stages, never hidden; negative when the stages add up to more than the delta.";
pub const THROUGHPUT_METHOD: &str = "Throughput: QPS ≈ cpus / cpu time per request; the baseline's cpu time per request is cpus / its QPS; a pod mode adds its extra stage time per request (segment mean × passes per request, both nodes, minus the baseline's); predicted QPS = cpus / (cpus / QPS_base + extra).";
pub const SEGMENT_NOTE: &str = "Segments ending at `consumed` (after delivery, or after transmission to the other node) run alongside the path and are not attributed; segments joining two packets that shared an skb address (reuse) are counted but not attributed.";

fn ratio(value: Option<f64>, base: Option<f64>) -> Option<f64> {
    match (value, base) {
        (Some(v), Some(b)) if b > 0.0 => Some(v / b),
        _ => None,
    }
}

fn change(value: f64, base: f64) -> Option<f64> {
    (base > 0.0).then(|| (value / base - 1.0) * 100.0)
}

fn table_rows(results: &[ModeResult]) -> Vec<TableRow> {
    results
        .iter()
        .map(|result| {
            let row = Row::of(result.headline_path());
            let base = Row::of(table::baseline(results, result));
            TableRow {
                mode: result.mode.to_string(),
                path: if result.pod_path.is_some() {
                    "pod"
                } else {
                    "host"
                }
                .to_owned(),
                values: row,
                vs_baseline: (result.mode != Mode::Host).then(|| Comparison {
                    ping_avg_ratio: ratio(row.ping_avg_ms, base.ping_avg_ms),
                    ping_p50_ratio: ratio(row.ping_p50_ms, base.ping_p50_ms),
                    ping_p99_ratio: ratio(row.ping_p99_ms, base.ping_p99_ms),
                    bandwidth_change_pct: change(row.bandwidth_gbit_s, base.bandwidth_gbit_s),
                    qps_change_pct: change(row.qps, base.qps),
                    ab_mean_ratio: ratio(Some(row.ab_mean_ms), Some(base.ab_mean_ms)),
                }),
            }
        })
        .collect()
}

/// Merges a mode's step over its nodes.
fn merged(mode: &input::ModeInput, path: NetPath, tool: Tool) -> MergedStep {
    merge_step(mode.step(path, tool).into_iter().map(|p| &p.report))
}

/// The attribution baseline of a pod mode: the profiled `host` mode, else the mode's own host
/// path (same lab), with its label.
fn baseline_of<'a>(input: &'a Input, mode: &'a input::ModeInput) -> (&'a input::ModeInput, String) {
    match input.mode(Mode::Host) {
        Some(host) if host.is_profiled() => (host, "host mode, host path".to_owned()),
        _ => (
            mode,
            format!("{}'s own host path (host mode not profiled)", mode.mode()),
        ),
    }
}

/// Builds the whole report from checked input.
pub fn build(input: &Input) -> Report {
    let results = input.results();
    let first = &input.modes[0].result;
    let cpus = first.environment.cpus;
    let mut notes = vec![
        LATENCY_METHOD.to_owned(),
        THROUGHPUT_METHOD.to_owned(),
        SEGMENT_NOTE.to_owned(),
    ];
    let mut latency = Vec::new();
    let mut throughput = Vec::new();
    let mut drops = Vec::new();
    let mut overhead = Vec::new();
    let mut rtt_samples = Vec::new();

    for mode in &input.modes {
        let name = mode.mode().to_string();
        let path_name = if mode.result.pod_path.is_some() {
            NetPath::Pod
        } else {
            NetPath::Host
        };
        rtt_samples.push(RttSamples {
            mode: name.clone(),
            path: path_name,
            rtts_us: mode.result.headline_path().ping.rtts_us.clone(),
        });
        if !mode.is_profiled() {
            notes.push(format!("{name}: not profiled (run `netprof bench --profile`): no attribution, drops or overhead"));
            continue;
        }
        for path in NetPath::ALL {
            let Some(result) = (if path == NetPath::Host {
                Some(&mode.result.host_path)
            } else {
                mode.result.pod_path.as_ref()
            }) else {
                continue;
            };
            for tool in Tool::ALL {
                if mode.step(path, tool).is_empty() {
                    continue;
                }
                let mut step = drops::step_drops(&name, path, tool, &merged(mode, path, tool));
                match tool {
                    Tool::Iperf3 => step.iperf3_retransmits = result.iperf3.retransmits,
                    Tool::Ping => {
                        step.ping_lost =
                            Some(result.ping.transmitted.saturating_sub(result.ping.received))
                    }
                    Tool::Ab => {}
                }
                drops.push(step);
            }
        }
        for node in Node::BOTH {
            if let Some(o) = overhead::node_overhead(mode, node, cpus) {
                overhead.push(o);
            }
        }
        let Some(pod) = mode.result.pod_path.as_ref() else {
            continue;
        };
        let (base_mode, base_label) = baseline_of(input, mode);
        let base = &base_mode.result.host_path;
        let (pod_ping, base_ping) = (
            merged(mode, NetPath::Pod, Tool::Ping),
            merged(base_mode, NetPath::Host, Tool::Ping),
        );
        match (pod.ping.stats, base.ping.stats) {
            (Some(pod_stats), Some(base_stats)) => {
                let (pod_probe, base_probe) = (
                    overhead::probe_ns_by_kind(mode, NetPath::Pod, Tool::Ping),
                    overhead::probe_ns_by_kind(base_mode, NetPath::Host, Tool::Ping),
                );
                latency.push(latency::attribute(
                    &name,
                    &base_label,
                    &latency::Side {
                        step: &pod_ping,
                        stats: pod_stats,
                        replies: pod.ping.received,
                        probe_ns: &pod_probe,
                    },
                    &latency::Side {
                        step: &base_ping,
                        stats: base_stats,
                        replies: base.ping.received,
                        probe_ns: &base_probe,
                    },
                ));
            }
            _ => notes.push(format!(
                "{name}: no ping replies on the pod path or the baseline: no latency attribution"
            )),
        }
        let (pod_ab, base_ab) = (
            merged(mode, NetPath::Pod, Tool::Ab),
            merged(base_mode, NetPath::Host, Tool::Ab),
        );
        throughput.push(throughput::attribute(
            &name,
            &base_label,
            cpus,
            &throughput::AbSide {
                step: &pod_ab,
                qps: pod.ab.requests_per_second,
                requests: pod.ab.complete_requests,
                cpu_ns_per_request: pod.ab_cpu_ns_per_request,
            },
            &throughput::AbSide {
                step: &base_ab,
                qps: base.ab.requests_per_second,
                requests: base.ab.complete_requests,
                cpu_ns_per_request: base.ab_cpu_ns_per_request,
            },
        ));
    }
    let profiled = input
        .modes
        .iter()
        .filter(|m| m.is_profiled())
        .map(|m| m.mode().to_string())
        .collect();
    let cells = table::cells(&results);
    Report {
        schema: SCHEMA,
        source: input.dir.display().to_string(),
        run: RunFacts {
            kernel: first.environment.kernel.clone(),
            cpus,
            iptables: first.environment.iptables.clone(),
            config: first.config.clone(),
            modes: input.modes.iter().map(|m| m.mode().to_string()).collect(),
            profiled,
        },
        table_baseline: cells.note,
        table: table_rows(&results),
        latency,
        throughput,
        drops,
        overhead,
        rtt_samples,
        validation: input
            .validation
            .as_ref()
            .map(|v| validation::validate(v, cpus)),
        notes,
        results,
        clean_table: None,
        clean_results: Vec::new(),
    }
}

/// Loads `dir` and builds its report, with `dir/clean/` beside it when present.
pub fn from_dir(dir: &Path) -> Result<Report, InputError> {
    let mut report = build(&input::load(dir)?);
    add_clean(&mut report, dir)?;
    Ok(report)
}

/// Adds the unprofiled twin of the run in `dir/clean/` (`cargo xtask demo` writes one), if any.
pub fn add_clean(report: &mut Report, dir: &Path) -> Result<(), InputError> {
    let clean = dir.join(CLEAN_DIR);
    if clean.is_dir() {
        let results = input::load(&clean)?.results();
        if !results.is_empty() {
            report.clean_table = Some(table_rows(&results));
            remeasure_without_agents(&mut report.latency, &results);
            report.clean_results = results;
        }
    }
    Ok(())
}
