//! netprof's own RTT cost measured in the profiled pass itself: a profiled mode pings each
//! path also with every program detached, in blocks that take turns with the profiled ones
//! (`bench::ping_step`). The profiled p50 less that p50 is what netprof added to this pass's
//! RTTs, in these minutes, on this lab. The calibration, run minutes away on another lab,
//! can find netprof cheaper or dearer than the pass did (a machine's speed drifts), and what
//! the split takes out of the stages must be what netprof really cost there.
//!
//! The calibration (or bpf_stats) still says what each checkpoint kind's run costs; the pass
//! fixes the total. Measured far above the runs (several times, at pings far apart), the rest
//! is not in the runs: scaling every run by one factor took several times a probe's run out
//! of a bracket whose whole time was two runs and a hash lookup, and the clamp at zero then
//! left that excess in the bigger segments. So the rest is taken as a share of all of the
//! event's work (`placed`). Spreading it over the segments alone put all of ab's in-pass CPU
//! (the agent's own, the processes') into them and halved the ground-truth CPU predictions.

use super::calibration::Interval;
use super::merge::MergedStep;
use super::probe_cost::{ProbeCosts, Spread};
use super::stage_time::{probes_per_event, shortest_between_same_kind, Statistic};
use crate::bench::bootstrap::paired_blocks_interval;
use crate::bench::overhead::median;
use crate::bench::result::{AbAgentsOff, AgentsOffPings, PathResult};
use crate::parse::ping::PingReport;
use crate::rundir::Tool;

/// What a profiled pass measured netprof to cost one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InPass {
    /// Per event: the profiled step less the same step with the agents detached.
    pub cost: Interval,
    /// The step's events (replies, requests).
    pub events: u64,
    /// An event's whole time in the profiled step: the pings' p50, ab's CPU per request.
    pub event_ns: f64,
    /// What stands for a segment's time in this step's split.
    pub statistic: Statistic,
}

/// What the pass measured netprof to cost `tool`'s step on one path; `None` when the pass did
/// not run the step with the agents detached too.
pub fn measured(result: &PathResult, tool: Tool) -> Option<InPass> {
    of_step(
        tool,
        &result.ping,
        result.ping_agents_off.as_ref(),
        result
            .ab_cpu_ns_per_request
            .map(|cpu| (cpu, result.ab.complete_requests)),
        result.ab_agents_off.as_ref(),
    )
}

/// [`measured`] from a step's parts: the profiled pings and those detached beside them, the
/// profiled ab's CPU per request and requests and the ab runs detached around it.
pub fn of_step(
    tool: Tool,
    ping: &PingReport,
    ping_off: Option<&AgentsOffPings>,
    ab_cpu: Option<(f64, u64)>,
    ab_off: Option<&AbAgentsOff>,
) -> Option<InPass> {
    match tool {
        Tool::Ping => Some(InPass {
            cost: shift_ns(ping, ping_off?)?,
            events: ping.received,
            event_ns: ping.stats?.p50_ms * 1e6,
            statistic: Statistic::of(tool),
        }),
        Tool::Ab => {
            let (cpu, requests) = ab_cpu?;
            Some(InPass {
                cost: cpu_shift_ns(cpu, ab_off?)?,
                events: requests,
                event_ns: cpu,
                statistic: Statistic::of(tool),
            })
        }
        Tool::Iperf3 => None,
    }
}

/// `costs` fitted to what the pass measured netprof to cost the step. Each segment keeps
/// losing the runs at its ends, at their per-run cost but never more than the shortest
/// segment between two runs of the kind holds (never below zero): a calibrated run is what
/// it costs the whole event, which can be more than a whole small bracket holds, run ends and
/// table included; taking the whole run off every bracket left the small tables nothing. What
/// the measurement holds beyond the runs' share in segments slowed the event's own work, in
/// segments or not (the kernel code and the processes a probe's evictions leave cold, another
/// packet's runs a frame waits behind, the agent's own CPU under ab): every part of the
/// event's time net of the runs loses the same share, `beyond / (event − runs)`. A
/// measurement at or below the runs scales the runs down to it instead.
pub fn placed(costs: &ProbeCosts, step: &MergedStep, pass: InPass) -> ProbeCosts {
    let costs = &costs.capped(&shortest_between_same_kind(
        step,
        pass.events,
        pass.statistic,
    ));
    let runs = probes_per_event(step, pass.events, costs);
    let work = pass.event_ns - runs.median;
    if pass.cost.median <= runs.median || work <= 0.0 {
        return costs.scaled_to(runs.median, pass.cost);
    }
    let share = |m: f64| ((m - runs.median).max(0.0) / work).min(1.0);
    costs.with_spread(Spread {
        per_event_ns: Interval {
            median: pass.cost.median - runs.median,
            lo: pass.cost.lo - runs.lo,
            hi: pass.cost.hi - runs.hi,
        },
        share: Interval {
            median: share(pass.cost.median),
            lo: share(pass.cost.lo),
            hi: share(pass.cost.hi),
        },
    })
}

/// `rtts` cut into blocks of `sizes` (the sizes are checked to add up when the file is read).
fn blocks<'a>(rtts: &'a [f64], sizes: &[usize]) -> Vec<&'a [f64]> {
    let mut out = Vec::with_capacity(sizes.len());
    let mut start = 0;
    for &n in sizes {
        let end = (start + n).min(rtts.len());
        out.push(&rtts[start..end]);
        start = end;
    }
    out
}

/// The profiled p50 less the agents-detached p50 of one path, ns, with the 95% interval of
/// resampling the paired blocks (a point when there are fewer than 3 blocks); `None` when a
/// side has no replies.
pub fn shift_ns(profiled: &PingReport, off: &AgentsOffPings) -> Option<Interval> {
    if profiled.rtts_us.is_empty() || off.ping.rtts_us.is_empty() {
        return None;
    }
    let p50 = |rtts: &[f64]| median(&mut rtts.to_vec()) * 1e3;
    let median_ns = p50(&profiled.rtts_us) - p50(&off.ping.rtts_us);
    let on = blocks(&profiled.rtts_us, &off.profiled_block_rtts);
    let detached = blocks(&off.ping.rtts_us, &off.block_rtts);
    Some(match paired_blocks_interval(&on, &detached) {
        Some((lo, hi)) => Interval {
            median: median_ns,
            lo: (lo * 1e3).min(median_ns),
            hi: (hi * 1e3).max(median_ns),
        },
        None => Interval::point(median_ns),
    })
}

/// The profiled ab's CPU time per request less the mean of the detached runs around it, ns,
/// with their spread as its interval (the profiled run less the highest and the lowest);
/// `None` without a detached run that measured its CPU time.
pub fn cpu_shift_ns(profiled_ns: f64, off: &AbAgentsOff) -> Option<Interval> {
    let offs: Vec<f64> = off
        .runs
        .iter()
        .filter_map(|r| r.cpu_ns_per_request)
        .collect();
    if offs.is_empty() {
        return None;
    }
    let mean = offs.iter().sum::<f64>() / offs.len() as f64;
    let (lo, hi) = offs
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    Some(Interval {
        median: profiled_ns - mean,
        lo: profiled_ns - hi,
        hi: profiled_ns - lo,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::agent::stages::Stage;
    use crate::report::probe_cost::ProbeSource;
    use crate::report::stage_time::tests::seg;
    use crate::report::stage_time::{by_stage, Statistic};
    use crate::rundir::Node;

    fn ping(rtts_us: Vec<f64>) -> PingReport {
        PingReport {
            transmitted: rtts_us.len() as u64,
            received: rtts_us.len() as u64,
            summary_present: true,
            stats: crate::parse::ping::RttStats::from_samples_us(&rtts_us),
            rtts_us,
        }
    }

    #[test]
    fn the_shift_is_the_difference_of_the_pooled_p50s_with_a_paired_interval() {
        // Four blocks of three; the machine slows by 20 µs in blocks 2 and 3, on both sides;
        // netprof adds 60 µs.
        let slow = [0.0, 0.0, 20.0, 20.0];
        let rtts = |base: f64| -> Vec<f64> {
            slow.iter()
                .flat_map(|s| [base + s, base + s + 1.0, base + s + 2.0])
                .collect()
        };
        let off = AgentsOffPings {
            ping: ping(rtts(100.0)),
            block_rtts: vec![3; 4],
            profiled_block_rtts: vec![3; 4],
        };
        let shift = shift_ns(&ping(rtts(160.0)), &off).unwrap();
        assert!((shift.median - 60_000.0).abs() < 1e-6, "{shift:?}");
        assert!(shift.lo <= shift.median && shift.median <= shift.hi);
        assert!(
            shift.hi - shift.lo < 1.0,
            "the drift is paired out: {shift:?}"
        );
        let nothing = AgentsOffPings {
            ping: ping(vec![]),
            block_rtts: vec![],
            profiled_block_rtts: vec![],
        };
        assert_eq!(shift_ns(&ping(rtts(160.0)), &nothing), None);
    }

    #[test]
    fn the_cpu_shift_is_the_profiled_run_less_the_detached_runs_around_it() {
        let ab = crate::parse::ab::AbReport {
            server_software: None,
            document_length_bytes: 612,
            concurrency: 50,
            time_taken_s: 1.0,
            complete_requests: 20_000,
            failed_requests: 0,
            non_2xx_responses: 0,
            requests_per_second: 20_000.0,
            mean_time_per_request_ms: 2.5,
            mean_time_per_request_all_ms: 0.05,
            transfer_rate_kbytes_s: 1000.0,
            connection_times: None,
            percentiles_ms: vec![],
        };
        let run = |cpu: Option<f64>| crate::bench::result::AbRun {
            ab: ab.clone(),
            cpu_ns_per_request: cpu,
        };
        let off = AbAgentsOff {
            runs: vec![run(Some(100_000.0)), run(Some(110_000.0))],
        };
        let shift = cpu_shift_ns(130_000.0, &off).unwrap();
        assert_eq!(
            (shift.median, shift.lo, shift.hi),
            (25_000.0, 20_000.0, 30_000.0)
        );
        let unmeasured = AbAgentsOff {
            runs: vec![run(None)],
        };
        assert_eq!(cpu_shift_ns(130_000.0, &unmeasured), None);
    }

    /// 1000 RTTs over a 40 ns bracket and a 1200 ns segment, each between two netfilter
    /// runs calibrated at 60 ns, 3 runs per RTT; a 20 ns segment passed by one RTT in ten.
    fn step_and_costs() -> (MergedStep, ProbeCosts) {
        let step = MergedStep {
            segments: vec![
                seg(Node::One, Stage::Filter, 40, 1000, 40.0),
                seg(Node::One, Stage::Veth, 1184, 1000, 1200.0),
                seg(Node::Two, Stage::Mangle, 20, 100, 20.0),
            ],
            hits_by_kind: BTreeMap::from([((Node::One, "netfilter".to_owned()), 3000)]),
            ..Default::default()
        };
        let costs = ProbeCosts::from_bpf_stats(&BTreeMap::from([("netfilter".to_owned(), 60.0)]));
        (step, costs)
    }

    fn pass(cost_ns: f64, event_ns: f64) -> InPass {
        InPass {
            cost: Interval::point(cost_ns),
            events: 1000,
            event_ns,
            statistic: Statistic::Median,
        }
    }

    #[test]
    fn what_the_pass_measured_beyond_the_runs_slows_all_of_the_events_work_alike() {
        let (step, costs) = step_and_costs();
        // The 40 ns bracket holds a run's end and the next one's start, so a run leaves at
        // most 40 ns in segments (the 20 ns segment is too rarely passed to say so): 120 ns
        // of runs per RTT. An RTT of 2120 ns profiled, 720 of it netprof's: 600 beyond the
        // runs, 30% of the 2000 ns of work. The long segment keeps (1200 - 40) × 0.7 = 812;
        // the bracket keeps nothing. Scaling every 60 ns run by 720/180 instead would have
        // taken 240 ns from the 40 ns bracket and left the excess in the long segment.
        let placed = placed(&costs, &step, pass(720.0, 2120.0));
        assert_eq!(placed.per_run("netfilter").median, 40.0);
        let share = placed.spread.expect("measured above the runs").share.median;
        assert!((share - 0.3).abs() < 1e-9, "{share}");
        let t = by_stage(&step, 1000, Statistic::Median, Some(&placed));
        assert_eq!(t[&(Node::One, Stage::Filter)], 0.0);
        assert!((t[&(Node::One, Stage::Veth)] - 812.0).abs() < 1e-6, "{t:?}");
        // netprof per RTT is what the pass measured.
        assert!((probes_per_event(&step, 1000, &placed).median - 720.0).abs() < 1e-6);
        assert!(placed.sources().contains(&ProbeSource::InPass));
    }

    #[test]
    fn a_run_cheaper_than_the_shortest_bracket_keeps_its_cost() {
        let (step, _) = step_and_costs();
        let cheap = ProbeCosts::from_bpf_stats(&BTreeMap::from([("netfilter".to_owned(), 30.0)]));
        let placed = placed(&cheap, &step, pass(720.0, 2120.0));
        assert_eq!(placed.per_run("netfilter").median, 30.0);
    }

    #[test]
    fn measured_below_the_runs_scales_them_down() {
        let (step, costs) = step_and_costs();
        // 120 ns of (capped) runs, 90 measured: each run 40 × 0.75.
        let placed = placed(&costs, &step, pass(90.0, 2120.0));
        assert_eq!(placed.spread, None);
        assert!((placed.per_run("netfilter").median - 30.0).abs() < 1e-9);
    }
}
