//! netprof's own RTT cost measured in the profiled pass itself: a profiled mode pings each
//! path also with every program detached, in blocks that take turns with the profiled ones
//! (`bench::ping_step`). The profiled p50 less that p50 is what netprof added to this pass's
//! RTTs, in these minutes, on this lab. The calibration, run minutes away on another lab,
//! found netprof 15-25% cheaper than the passes did (the machine's speed drifts), and what
//! the split takes out of the stages must be what netprof really cost there.
//!
//! The calibration (or bpf_stats) still says how that total spreads over the checkpoint kinds;
//! the pass only fixes the total.

use super::calibration::Interval;
use super::merge::MergedStep;
use super::probe_cost::ProbeCosts;
use super::stage_time::probes_per_event;
use crate::bench::bootstrap::paired_blocks_interval;
use crate::bench::overhead::median;
use crate::bench::result::{AbAgentsOff, AgentsOffPings, PathResult};
use crate::parse::ping::PingReport;
use crate::rundir::Tool;

/// What the pass measured netprof to cost `tool`'s step on one path (the pings' p50 shift,
/// ab's CPU per request), with the step's events (replies, requests); `None` when the pass did
/// not run the step with the agents detached too.
pub fn measured(result: &PathResult, tool: Tool) -> Option<(Interval, u64)> {
    match tool {
        Tool::Ping => Some((
            shift_ns(&result.ping, result.ping_agents_off.as_ref()?)?,
            result.ping.received,
        )),
        Tool::Ab => Some((
            cpu_shift_ns(
                result.ab_cpu_ns_per_request?,
                result.ab_agents_off.as_ref()?,
            )?,
            result.ab.complete_requests,
        )),
        Tool::Iperf3 => None,
    }
}

/// `costs` scaled so that the step's checkpoints add up to `measured` per event.
pub fn scaled(
    costs: &ProbeCosts,
    step: &MergedStep,
    events: u64,
    measured: Interval,
) -> ProbeCosts {
    let predicted = probes_per_event(step, events, costs).median;
    costs.scaled_to(predicted, measured)
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
    use super::*;

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
}
