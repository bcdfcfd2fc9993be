//! Latency attribution: the extra ping RTT of a pod mode over the baseline (the `host` mode's
//! node-to-node path of the same run) split into datapath stages, per node, plus what is left.
//!
//! A stage's time per RTT is the sum over (node, segment) of the segment's typical time × its
//! passes per RTT (segment count / echo replies the node's counts cover), minus the baseline's
//! stage by stage (the host path has uplink and stack time too); see `stage_time`.
//!
//! Three splits of one profile:
//! - `clean`, the headline: stage times net of netprof's in-path cost (`probe_cost`: the
//!   calibration when the run has one), set against the p50s measured with no agent attached
//!   (`DIR/clean/`); without that twin, against the profiled p50s less the probes' time;
//! - `profiled`: segment medians as measured, against the profiled p50s (netprof included);
//! - `p99`: segment means against the profiled p99s (percentiles do not add; the residual is
//!   the tail no stage's average cost accounts for).
//!
//! p50 uses segment medians: the RTT's median is the median of a sum of many small,
//! right-skewed parts; each part's median is what a typical packet spends there, whereas a
//! mean is pulled up by rare preemptions the RTT's median ignores. Segments ending at
//! `consumed` overlap the path and segments between two packets sharing an skb are not a
//! packet's time; neither is attributed (see `merge`).

use serde::Serialize;

use super::calibration::Interval;
use super::merge::MergedStep;
use super::probe_cost::{ProbeCosts, ProbeSource};
use super::split::{Measure, SegmentTime, Split};
use super::stage_time::{by_category, probes_per_event, reuse_per_event, Statistic};
use crate::parse::ping::RttStats;

/// netprof's probes inside the profiled RTTs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeShare {
    /// Per RTT of the mode and of the baseline, ns, with the per-run costs' interval.
    pub mode_ns: Interval,
    pub baseline_ns: Interval,
    /// Mode minus baseline: what of the profiled delta is netprof's own.
    pub delta_ns: Interval,
    /// Where the per-run costs came from.
    pub sources: Vec<ProbeSource>,
    /// When the profiled pass measured netprof's cost on its own pings (`in_pass_cost`): what
    /// the calibration (or bpf_stats) alone gave for `delta_ns`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta_before_in_pass_ns: Option<Interval>,
}

/// What one pod mode's ping adds over the baseline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyAttribution {
    pub mode: String,
    /// e.g. "host mode, host path".
    pub baseline: String,
    /// Echo replies of the mode's and the baseline's profiled ping.
    pub rtts: u64,
    pub baseline_rtts: u64,
    /// The headline: stage times net of netprof against the delta without agents.
    pub clean: Split,
    pub profiled: Split,
    pub p99: Split,
    pub probes: ProbeShare,
    /// Segment passes left out as two packets sharing an skb, per RTT (both sides).
    pub reuse_passes: f64,
    /// The delta the profiled pass measured with every agent detached, when it pinged so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detached: Option<DetachedDelta>,
    /// The 95% interval of the headline's measured delta (`clean_interval`), when it was
    /// measured without agents in at least 3 blocks with every reply; ns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clean_delta_interval_ns: Option<[i64; 2]>,
    /// Those clean pings in their blocks, for the interval over repeats.
    #[serde(skip)]
    pub clean_blocks: Option<super::clean_interval::CleanBlocks>,
}

/// The delta measured in the profiled pass with every agent detached, in blocks that took turns
/// with the profiled ones. It ran in the same minutes as the profile with no netprof program
/// in the path, so the headline split's miss against it is the split's own, and what separates
/// it from the headline's delta (measured in another pass, minutes away) is how far the
/// machine moved between the passes. Neither is netprof's in-path cost.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DetachedDelta {
    pub mode_ns: i64,
    pub baseline_ns: i64,
    pub delta_ns: i64,
    /// This delta less the headline split's explained time.
    pub unexplained_ns: i64,
    /// The headline's measured delta less this one; `None` when the headline is not set
    /// against a run without agents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub between_passes_ns: Option<i64>,
}

impl DetachedDelta {
    /// `p50s` (the detached pings') against `clean`, the headline split.
    pub fn of(p50s: P50s, clean: &Split) -> DetachedDelta {
        let delta_ns = p50s.mode_ns - p50s.baseline_ns;
        DetachedDelta {
            mode_ns: p50s.mode_ns,
            baseline_ns: p50s.baseline_ns,
            delta_ns,
            unexplained_ns: delta_ns - clean.explained_ns,
            between_passes_ns: (clean.measure == Measure::CleanP50)
                .then(|| clean.delta_ns - delta_ns),
        }
    }
}

fn ns(ms: f64) -> i64 {
    (ms * 1e6).round() as i64
}

/// The per-RTT inputs of one side (the mode's pod path or the baseline's host path).
pub struct Side<'a> {
    pub step: &'a MergedStep,
    pub stats: RttStats,
    pub replies: u64,
    pub probes: ProbeCosts,
    /// The costs before the pass's own measurement scaled them, when it did.
    pub before_in_pass: Option<ProbeCosts>,
}

/// Two p50s measured with no netprof program in the path (without agents, or with them
/// detached): the mode's and the baseline's, ns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct P50s {
    pub mode_ns: i64,
    pub baseline_ns: i64,
}

pub fn attribute(
    mode: &str,
    baseline: &str,
    pod: &Side,
    base: &Side,
    clean: Option<P50s>,
    detached: Option<P50s>,
) -> LatencyAttribution {
    let (pod_probes, base_probes) = (
        probes_per_event(pod.step, pod.replies, &pod.probes),
        probes_per_event(base.step, base.replies, &base.probes),
    );
    let before_in_pass = |side: &Side| {
        let costs = side.before_in_pass.as_ref().unwrap_or(&side.probes);
        probes_per_event(side.step, side.replies, costs)
    };
    let delta_before_in_pass_ns = (pod.before_in_pass.is_some() || base.before_in_pass.is_some())
        .then(|| before_in_pass(pod).minus(before_in_pass(base)));
    let profiled = Split::new(
        Measure::ProfiledP50,
        SegmentTime::Median,
        ns(pod.stats.p50_ms),
        ns(base.stats.p50_ms),
        &by_category(pod.step, pod.replies, Statistic::Median, None),
        &by_category(base.step, base.replies, Statistic::Median, None),
    );
    let p99 = Split::new(
        Measure::ProfiledP99,
        SegmentTime::Mean,
        ns(pod.stats.p99_ms),
        ns(base.stats.p99_ms),
        &by_category(pod.step, pod.replies, Statistic::Mean, None),
        &by_category(base.step, base.replies, Statistic::Mean, None),
    );
    let (measure, mode_ns, baseline_ns) = match clean {
        Some(c) => (Measure::CleanP50, c.mode_ns, c.baseline_ns),
        None => (
            Measure::ProfiledP50LessProbes,
            ns(pod.stats.p50_ms) - pod_probes.median.round() as i64,
            ns(base.stats.p50_ms) - base_probes.median.round() as i64,
        ),
    };
    let clean = Split::new(
        measure,
        SegmentTime::MedianLessProbes,
        mode_ns,
        baseline_ns,
        &by_category(pod.step, pod.replies, Statistic::Median, Some(&pod.probes)),
        &by_category(
            base.step,
            base.replies,
            Statistic::Median,
            Some(&base.probes),
        ),
    );
    let detached = detached.map(|p50s| DetachedDelta::of(p50s, &clean));
    let mut sources = pod.probes.sources();
    sources.extend(base.probes.sources());
    sources.sort_by_key(|s| *s as u8);
    sources.dedup();
    LatencyAttribution {
        mode: mode.to_owned(),
        baseline: baseline.to_owned(),
        rtts: pod.replies,
        baseline_rtts: base.replies,
        clean,
        profiled,
        p99,
        probes: ProbeShare {
            mode_ns: pod_probes,
            baseline_ns: base_probes,
            delta_ns: pod_probes.minus(base_probes),
            sources,
            delta_before_in_pass_ns,
        },
        reuse_passes: reuse_per_event(pod.step, pod.replies)
            + reuse_per_event(base.step, base.replies),
        detached,
        clean_delta_interval_ns: None,
        clean_blocks: None,
    }
}
