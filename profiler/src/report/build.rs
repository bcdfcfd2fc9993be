//! Builds the [`Report`] of one run directory from its checked input: per profiled pod mode,
//! the latency and throughput attribution against the baseline, drops and the agents' cost.

use super::calibration::{self, CalibrationFile};
use super::input::{Input, ModeInput};
use super::latency::{self, P50s};
use super::merge::{merge_step, MergedStep};
use super::probe_cost::ProbeCosts;
use super::stage_time::Statistic;
use super::throughput::{self, AbMeasured, AbSide};
use super::{
    clean_interval, drops, gauge, in_pass_cost, overhead, CalibrationFacts, Report, RttSamples,
    RunFacts, SideBySidePings, TableRow, LATENCY_METHOD, SCHEMA, SEGMENT_NOTE, THROUGHPUT_METHOD,
};
use crate::bench::result::{ModeResult, PathResult};
use crate::bench::table;
use crate::bench::BenchConfig;
use crate::lab::Mode;
use crate::parse::ping::PingReport;
use crate::rundir::{NetPath, Node, Tool};

/// One step of a mode, its nodes' reports gathered.
fn merged(mode: &ModeInput, path: NetPath, tool: Tool) -> MergedStep {
    merge_step(mode.step(path, tool).into_iter().map(|p| p.doc()))
}

/// The attribution baseline of a pod mode: the profiled `host` mode, else the mode's own host
/// path (same lab), with its label.
fn baseline_of<'a>(input: &'a Input, mode: &'a ModeInput) -> (&'a ModeInput, String) {
    match input.mode(Mode::Host) {
        Some(host) if host.is_profiled() => (host, "host mode, host path".to_owned()),
        _ => (
            mode,
            format!("{}'s own host path (host mode not profiled)", mode.mode()),
        ),
    }
}

/// The per-run probe costs of a step: the calibration's, with bpf_stats of the step itself
/// for any kind the calibration lacks (or all, without one); netfilter runs at the gauge's
/// time when the step (or its pass) measured one.
fn probe_costs(
    mode: &ModeInput,
    path: NetPath,
    tool: Tool,
    calibration: Option<&ProbeCosts>,
    gauge_ns: Option<f64>,
) -> ProbeCosts {
    let bpf = ProbeCosts::from_bpf_stats(&overhead::probe_ns_by_kind(&mode.profiles, path, tool));
    match calibration {
        Some(c) => c.clone().or(&bpf),
        None => bpf,
    }
    .gauged(gauge_ns)
}

/// The gauges of a pod step and of its baseline's step: the baseline's own, else (a host path
/// crosses no FORWARD) the pod step's when both are of one pass.
fn gauges(
    (mode, pod): (&ModeInput, &MergedStep),
    (base_mode, base): (&ModeInput, &MergedStep),
    statistic: Statistic,
) -> (Option<f64>, Option<f64>) {
    let pod_gauge = gauge::typical_ns(pod, statistic);
    let same_pass = std::ptr::eq(mode, base_mode);
    let base_gauge = gauge::typical_ns(base, statistic).or(pod_gauge.filter(|_| same_pass));
    (pod_gauge, base_gauge)
}

/// A step's probe costs fitted to what its pass measured netprof to cost there with the agents
/// detached (`in_pass_cost::placed`), when it did; `None` otherwise.
fn in_pass_costs(
    mode: &ModeInput,
    path: NetPath,
    tool: Tool,
    step: &MergedStep,
    costs: &ProbeCosts,
) -> Option<ProbeCosts> {
    let pass = in_pass_cost::measured(mode.result.path(path)?, tool)?;
    Some(in_pass_cost::placed(costs, step, pass))
}

/// How `results` took their pings, when every mode's were taken in turns with the others'.
fn side_by_side_pings(results: &[ModeResult]) -> Option<SideBySidePings> {
    let side_by_side = results.len() > 1 && results.iter().all(|r| !r.pinged_with.is_empty());
    side_by_side.then(|| SideBySidePings {
        modes: results.len(),
        paths: results
            .iter()
            .map(|r| 1 + usize::from(r.pod_path.is_some()))
            .sum(),
        blocks: results[0].config.ping_blocks,
    })
}

/// The unprofiled twin's path results for a mode and its baseline, matching the profiled
/// baseline's choice (host mode, or the mode's own host path), and how it pinged.
fn twin(
    clean: &[ModeResult],
    mode: Mode,
    host_baseline: bool,
) -> Option<(&PathResult, &PathResult, &BenchConfig)> {
    let m = clean.iter().find(|r| r.mode == mode)?;
    let base = if host_baseline {
        &clean.iter().find(|r| r.mode == Mode::Host)?.host_path
    } else {
        &m.host_path
    };
    Some((m.pod_path.as_ref()?, base, &m.config))
}

fn p50_ns(ping: &PingReport) -> Option<i64> {
    ping.stats.map(|s| (s.p50_ms * 1e6).round() as i64)
}

/// The p50 of the pings the profiled pass took with every agent detached.
fn detached_p50_ns(path: &PathResult) -> Option<i64> {
    p50_ns(&path.ping_agents_off.as_ref()?.ping)
}

/// Everything built per mode.
#[derive(Default)]
struct Parts {
    latency: Vec<latency::LatencyAttribution>,
    throughput: Vec<throughput::ThroughputAttribution>,
    drops: Vec<drops::StepDrops>,
    overhead: Vec<overhead::NodeOverhead>,
    notes: Vec<String>,
}

fn step_drops(parts: &mut Parts, mode: &ModeInput) {
    let name = mode.mode().to_string();
    for path in NetPath::ALL {
        let Some(result) = mode.result.path(path) else {
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
            parts.drops.push(step);
        }
    }
}

/// Latency and throughput of one profiled pod mode.
/// The calibrated probe costs a run's steps take: pings at the bench's interval, load steps
/// at the shortest interval calibrated (busy CPUs keep their caches warm, as under ab).
#[derive(Default)]
struct Calibrated {
    ping: Option<ProbeCosts>,
    load: Option<ProbeCosts>,
}

fn attribute(
    parts: &mut Parts,
    input: &Input,
    mode: &ModeInput,
    clean: Option<&[ModeResult]>,
    calibrated: &Calibrated,
    cpus: usize,
) {
    let name = mode.mode().to_string();
    let Some(pod) = mode.result.pod_path.as_ref() else {
        return;
    };
    let (base_mode, base_label) = baseline_of(input, mode);
    let base = &base_mode.result.host_path;
    let host_baseline = base_mode.mode() == Mode::Host;
    let twin = clean.and_then(|c| twin(c, mode.mode(), host_baseline));
    if clean.is_some() && twin.is_none() {
        parts.notes.push(format!(
            "{name}: the run without agents lacks this mode or its baseline: its split is set against the profiled p50s less the probes, and its QPS against the profiled ones"
        ));
    }
    let (pod_ping, base_ping) = (
        merged(mode, NetPath::Pod, Tool::Ping),
        merged(base_mode, NetPath::Host, Tool::Ping),
    );
    let (pod_gauge, base_gauge) = gauges(
        (mode, &pod_ping),
        (base_mode, &base_ping),
        Statistic::Median,
    );
    let (pod_costs, base_costs) = (
        probe_costs(
            mode,
            NetPath::Pod,
            Tool::Ping,
            calibrated.ping.as_ref(),
            pod_gauge,
        ),
        probe_costs(
            base_mode,
            NetPath::Host,
            Tool::Ping,
            calibrated.ping.as_ref(),
            base_gauge,
        ),
    );
    let (pod_in_pass, base_in_pass) = (
        in_pass_costs(mode, NetPath::Pod, Tool::Ping, &pod_ping, &pod_costs),
        in_pass_costs(
            base_mode,
            NetPath::Host,
            Tool::Ping,
            &base_ping,
            &base_costs,
        ),
    );
    match (pod.ping.stats, base.ping.stats) {
        (Some(pod_stats), Some(base_stats)) => {
            let clean_p50 = twin.and_then(|(m, b, _)| {
                Some(P50s {
                    mode_ns: p50_ns(&m.ping)?,
                    baseline_ns: p50_ns(&b.ping)?,
                })
            });
            let detached =
                detached_p50_ns(pod)
                    .zip(detached_p50_ns(base))
                    .map(|(mode_ns, baseline_ns)| P50s {
                        mode_ns,
                        baseline_ns,
                    });
            let side = |step, stats, replies, costs, in_pass: &Option<ProbeCosts>| latency::Side {
                step,
                stats,
                replies,
                probes: in_pass.clone().unwrap_or_else(|| ProbeCosts::clone(costs)),
                before_in_pass: in_pass.is_some().then(|| ProbeCosts::clone(costs)),
            };
            let mut attribution = latency::attribute(
                &name,
                &base_label,
                &side(
                    &pod_ping,
                    pod_stats,
                    pod.ping.received,
                    &pod_costs,
                    &pod_in_pass,
                ),
                &side(
                    &base_ping,
                    base_stats,
                    base.ping.received,
                    &base_costs,
                    &base_in_pass,
                ),
                clean_p50,
                detached,
            );
            attribution.clean_blocks =
                twin.and_then(|(m, b, cfg)| clean_interval::CleanBlocks::of(&m.ping, &b.ping, cfg));
            attribution.clean_delta_interval_ns = attribution
                .clean_blocks
                .as_ref()
                .and_then(|blocks| clean_interval::CleanBlocks::delta_interval_ns(&[blocks]));
            parts.latency.push(attribution);
        }
        _ => parts.notes.push(format!(
            "{name}: no ping replies on the pod path or the baseline: no latency attribution"
        )),
    }
    let (pod_ab, base_ab) = (
        merged(mode, NetPath::Pod, Tool::Ab),
        merged(base_mode, NetPath::Host, Tool::Ab),
    );
    let (pod_ab_gauge, base_ab_gauge) =
        gauges((mode, &pod_ab), (base_mode, &base_ab), Statistic::Mean);
    let load_costs = |m: &ModeInput, path: NetPath, step: &MergedStep, gauge_ns| {
        let costs = probe_costs(m, path, Tool::Ab, calibrated.load.as_ref(), gauge_ns);
        in_pass_costs(m, path, Tool::Ab, step, &costs).unwrap_or(costs)
    };
    let (pod_ab_costs, base_ab_costs) = (
        load_costs(mode, NetPath::Pod, &pod_ab, pod_ab_gauge),
        load_costs(base_mode, NetPath::Host, &base_ab, base_ab_gauge),
    );
    let measured = |p: &PathResult| AbMeasured {
        qps: p.ab.requests_per_second,
        cpu_ns_per_request: p.ab_cpu_ns_per_request,
    };
    let (pod_measured, base_measured) = match twin {
        Some((m, b, _)) => (measured(m), measured(b)),
        None => (measured(pod), measured(base)),
    };
    parts.throughput.push(throughput::attribute(
        &name,
        &base_label,
        cpus,
        twin.is_some(),
        &AbSide {
            step: &pod_ab,
            requests: pod.ab.complete_requests,
            probes: &pod_ab_costs,
            measured: pod_measured,
        },
        &AbSide {
            step: &base_ab,
            requests: base.ab.complete_requests,
            probes: &base_ab_costs,
            measured: base_measured,
        },
    ));
}

fn calibration_facts(file: &CalibrationFile, run_dir: &std::path::Path) -> CalibrationFacts {
    let c = &file.calibration;
    // Relative to the run directory where it lies there (a repeated run's is one level up).
    let shown = file
        .path
        .strip_prefix(run_dir)
        .or_else(|_| file.path.strip_prefix(run_dir.parent().unwrap_or(run_dir)))
        .unwrap_or(&file.path);
    CalibrationFacts {
        file: shown.display().to_string(),
        ping_interval_ms: file.ping_interval_ms(),
        stats_share: c.stats_share,
        mode: c.mode.clone(),
        kernel: c.kernel.clone(),
        rounds: c.rounds,
        followed_ns: c
            .per_run
            .iter()
            .map(|(k, v)| (k.clone(), v.followed_ns))
            .collect(),
        rtt_shift_ns: c.rtt_shift_ns,
        ratios: c.ratios,
    }
}

fn rtt_samples(input: &Input, clean: Option<&[ModeResult]>) -> Vec<RttSamples> {
    let (results, without_agents) = match clean {
        Some(c) if !c.is_empty() => (c.to_vec(), true),
        _ => (input.results(), false),
    };
    results
        .iter()
        .map(|r| RttSamples {
            mode: r.mode.to_string(),
            path: if r.pod_path.is_some() {
                NetPath::Pod
            } else {
                NetPath::Host
            },
            without_agents,
            rtts_us: r.headline_path().ping.rtts_us.clone(),
        })
        .collect()
}

/// Builds the report of one run from checked input, with its unprofiled twin and the
/// calibrations when present.
pub fn build(input: &Input, clean: Option<&Input>, calibrations: &[CalibrationFile]) -> Report {
    let results = input.results();
    let clean_results = clean.map(Input::results);
    let first = &input.modes[0].result;
    let cpus = first.environment.cpus;
    let ping_interval_s = first.config.ping_interval_s;
    let cpu_idle = first.config.cpu_idle;
    let chosen = calibration::for_pings(calibrations, ping_interval_s, cpu_idle);
    let warmest = calibration::warmest(calibrations);
    let calibration = chosen.map(|c| c.file);
    let calibrated = Calibrated {
        ping: calibration.map(ProbeCosts::from_calibration),
        load: warmest.map(ProbeCosts::from_calibration),
    };
    let validation_calibration = input.validation.as_ref().and_then(|v| {
        calibration::for_pings(calibrations, v.result.config.ping_interval_s, cpu_idle)
    });
    let mut parts = Parts {
        notes: vec![
            LATENCY_METHOD.to_owned(),
            THROUGHPUT_METHOD.to_owned(),
            SEGMENT_NOTE.to_owned(),
        ],
        ..Default::default()
    };
    if clean.is_none() {
        parts.notes.push("No run without agents (DIR/clean/, which `cargo xtask demo` writes): every measured number includes netprof's own cost, and the splits are set against the profiled p50s less the probes' time.".to_owned());
    }
    if calibration.is_none() {
        parts.notes.push("No calibration (DIR/calibration-<ms>ms.json, from `netprof overhead --calibrate DIR`): netprof's in-path cost per probe run is the bpf_stats estimate of each step (the programs' own run time, without the hook's dispatch or the cache misses they cause).".to_owned());
    }
    parts.notes.extend(
        chosen.and_then(|c| {
            calibration::mismatch_note("The ping split", &c, ping_interval_s, cpu_idle)
        }),
    );
    if let (Some(w), Some(c)) = (warmest, calibration) {
        if w.path != c.path {
            parts.notes.push(format!("Load steps (ab, iperf3) take their probe costs from {}, the shortest ping interval calibrated: busy CPUs keep their caches warm, as pings close together do.", w.path.display()));
        }
    }
    if let (Some(v), Some(c)) = (&input.validation, validation_calibration) {
        parts.notes.extend(calibration::mismatch_note(
            "The ground-truth checks",
            &c,
            v.result.config.ping_interval_s,
            cpu_idle,
        ));
    }
    for mode in &input.modes {
        if !mode.is_profiled() {
            parts.notes.push(format!("{}: not profiled (run `netprof bench --profile`): no attribution, drops or overhead", mode.mode()));
            continue;
        }
        step_drops(&mut parts, mode);
        for node in Node::BOTH {
            if let Some(o) = overhead::node_overhead(mode, node, cpus) {
                parts.overhead.push(o);
            }
        }
        let lost: u64 = mode
            .profiles
            .iter()
            .map(|p| p.report.counters.journey_log_full)
            .sum();
        if lost > 0 {
            parts.notes.push(format!("{}: {lost} ended journeys found the agents' journey log full (`journey_log_full` in their reports: the agent fell behind draining it), so their segments are missing from the split.", mode.mode()));
        }
        if mode.profiles.iter().any(|p| p.sample > 1) {
            parts.notes.push(format!("{}: the agents followed 1 in N flows (`sample` in their reports): counts are multiplied by N to stand for every event.", mode.mode()));
        }
        attribute(
            &mut parts,
            input,
            mode,
            clean_results.as_deref(),
            &calibrated,
            cpus,
        );
    }
    let host_mode_baseline = table::host_mode_ran(&results);
    let profiled_lines = table::lines(&results);
    let clean_lines = clean_results
        .as_deref()
        .map(table::lines)
        .unwrap_or_default();
    let cells = table::cells(&profiled_lines, host_mode_baseline);
    let clean_pings_side_by_side = clean_results.as_deref().and_then(side_by_side_pings);
    let clean_twins = clean_results
        .as_deref()
        .is_some_and(|r| !r.is_empty() && r.iter().all(|m| m.clean_twin));
    let profiled_pings_side_by_side = side_by_side_pings(&results);
    Report {
        schema: SCHEMA,
        source: input.dir.display().to_string(),
        run: RunFacts {
            kernel: first.environment.kernel.clone(),
            cpus,
            iptables: first.environment.iptables.clone(),
            config: first.config.clone(),
            modes: input.modes.iter().map(|m| m.mode().to_string()).collect(),
            profiled: input
                .modes
                .iter()
                .filter(|m| m.is_profiled())
                .map(|m| m.mode().to_string())
                .collect(),
            repeats: 1,
        },
        table_baseline: cells.note,
        clean_table: clean
            .is_some()
            .then(|| clean_lines.iter().map(TableRow::of).collect()),
        clean_pings_side_by_side,
        clean_twins,
        profiled_pings_side_by_side,
        latency: parts.latency,
        throughput: parts.throughput,
        repeats: None,
        validation: input
            .validation
            .as_ref()
            .map(|v| super::validation::validate(v, validation_calibration.map(|c| c.file))),
        profiled_table: profiled_lines.iter().map(TableRow::of).collect(),
        calibration: calibration.map(|c| calibration_facts(c, &input.dir)),
        drops: parts.drops,
        overhead: parts.overhead,
        rtt_samples: rtt_samples(input, clean_results.as_deref()),
        measured_by: super::mechanisms::collect(
            input
                .modes
                .iter()
                .flat_map(|m| m.profiles.iter().map(|p| &p.report)),
        ),
        notes: parts.notes,
        clean_lines,
        profiled_lines,
        host_mode_baseline,
    }
}
