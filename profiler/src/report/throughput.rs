//! Throughput attribution: the nginx QPS a pod mode loses, predicted from what its datapath
//! costs per request, next to the QPS ab measured (without agents when the run has that twin).
//!
//! Model (stated in every output): during ab, the machine's `cpus` cores are busy, so
//! `QPS ≈ cpus / cpu_time_per_request`. The baseline's cpu time per request is implied by its
//! measured QPS (`cpus / QPS_base`). A pod mode adds, per request, the datapath time its extra
//! stages take: for each node's segments, mean time less netprof's probe × passes per request
//! (segment count / completed requests), minus the baseline's, stage by stage. So
//! `predicted QPS = cpus / (cpus / QPS_base + extra_time_per_request)`.
//! The receive backlog's wait is left out (a queue, not work). Segment time under load still
//! includes other waiting (a packet queued behind another is not CPU work),
//! and not all cores are always busy, so the prediction is a model: its error is shown, and
//! the extra is also set against the machine's measured CPU time per request.

use serde::Serialize;

use super::category::Category;
use super::merge::{MergedStep, SegmentKind};
use super::probe_cost::ProbeCosts;
use super::split::{Measure, SegmentTime, Split};
use super::stage_time::{by_category, Statistic, Times};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThroughputAttribution {
    pub mode: String,
    pub baseline: String,
    pub cpus: usize,
    /// Whether the measured QPS and CPU times are the run without agents (`DIR/clean/`).
    pub measured_without_agents: bool,
    pub requests: u64,
    pub baseline_requests: u64,
    pub baseline_qps: f64,
    pub measured_qps: f64,
    /// `cpus / baseline_qps`, µs.
    pub baseline_cpu_us_per_request: f64,
    /// Per-request stage time of the mode and the baseline (means less probes, per node) and
    /// their difference; the measured delta is the cpu time per request the two QPS imply.
    pub split: Split,
    /// `explained_ns` of the split: the extra datapath time per request, ns.
    pub extra_ns_per_request: i64,
    pub predicted_qps: f64,
    /// `(predicted - measured) / measured`, percent.
    pub prediction_error_pct: f64,
    /// Tracked packets per request (admissions on both nodes / 2 / requests).
    pub packets_per_request: f64,
    pub baseline_packets_per_request: f64,
    /// Segment passes per request left out as skb reuse (mode's ab step).
    pub reuse_passes_per_request: f64,
    /// The extra per request against the machine's measured CPU time per request (lab runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuPerRequest>,
}

/// Measured CPU time per request (busy time of the machine during ab / requests) of the
/// baseline and the mode, beside the predicted extra.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CpuPerRequest {
    pub baseline_ns: f64,
    pub mode_ns: f64,
    /// `mode_ns - baseline_ns`.
    pub measured_extra_ns: f64,
    /// `extra_ns_per_request / measured_extra_ns`, percent.
    pub explained_pct: Option<f64>,
    /// QPS if it scales with the inverse of the CPU time per request (the machine as busy as in
    /// the baseline, not necessarily fully): `baseline QPS × baseline_ns / (baseline_ns + extra)`.
    pub predicted_qps: f64,
    /// `(predicted_qps - measured) / measured`, percent.
    pub prediction_error_pct: Option<f64>,
}

/// What ab measured on one side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AbMeasured {
    pub qps: f64,
    /// Measured busy CPU time per request, ns (lab runs).
    pub cpu_ns_per_request: Option<f64>,
}

/// One side's profiled ab step and its measured figures.
pub struct AbSide<'a> {
    pub step: &'a MergedStep,
    /// Completed requests of the profiled step (what the counts are per).
    pub requests: u64,
    pub probes: &'a ProbeCosts,
    pub measured: AbMeasured,
}

fn packets_per_request(side: &AbSide) -> f64 {
    let covered = side
        .step
        .nodes
        .iter()
        .map(|&n| side.step.covered(n, side.requests))
        .fold(f64::INFINITY, f64::min);
    let covered = if covered.is_finite() {
        covered
    } else {
        side.requests.max(1) as f64
    };
    side.step.counters.admitted as f64 / 2.0 / covered
}

fn reuse_per_request(side: &AbSide) -> f64 {
    side.step
        .of_kind(SegmentKind::Reuse)
        .map(|s| s.hist.count as f64 / side.step.covered(s.node, side.requests))
        .sum()
}

fn cpu_check(pod: &AbSide, base: &AbSide, extra: f64) -> Option<CpuPerRequest> {
    let (mode_ns, baseline_ns) = (
        pod.measured.cpu_ns_per_request?,
        base.measured.cpu_ns_per_request?,
    );
    let measured_extra_ns = mode_ns - baseline_ns;
    let predicted_qps = if baseline_ns + extra > 0.0 {
        base.measured.qps * baseline_ns / (baseline_ns + extra)
    } else {
        0.0
    };
    Some(CpuPerRequest {
        baseline_ns,
        mode_ns,
        measured_extra_ns,
        explained_pct: (measured_extra_ns.abs() > 0.0).then(|| extra / measured_extra_ns * 100.0),
        predicted_qps,
        prediction_error_pct: (pod.measured.qps > 0.0)
            .then(|| (predicted_qps - pod.measured.qps) / pod.measured.qps * 100.0),
    })
}

/// The stages that are CPU work ([`Category::is_cpu_work`]).
fn cpu_work(mut times: Times<Category>) -> Times<Category> {
    times.retain(|(_, category), _| category.is_cpu_work());
    times
}

pub fn attribute(
    mode: &str,
    baseline: &str,
    cpus: usize,
    measured_without_agents: bool,
    pod: &AbSide,
    base: &AbSide,
) -> ThroughputAttribution {
    let cpus_f = cpus.max(1) as f64;
    let cpu_ns = |qps: f64| {
        if qps > 0.0 {
            (cpus_f / qps * 1e9).round() as i64
        } else {
            0
        }
    };
    let split = Split::new(
        Measure::CpuPerRequest,
        SegmentTime::MeanLessProbes,
        cpu_ns(pod.measured.qps),
        cpu_ns(base.measured.qps),
        &cpu_work(by_category(
            pod.step,
            pod.requests,
            Statistic::Mean,
            Some(pod.probes),
        )),
        &cpu_work(by_category(
            base.step,
            base.requests,
            Statistic::Mean,
            Some(base.probes),
        )),
    );
    let extra = split.explained_ns;
    let base_cpu_ns = cpu_ns(base.measured.qps) as f64;
    let predicted_qps = if base_cpu_ns + extra as f64 > 0.0 {
        cpus_f / ((base_cpu_ns + extra as f64) / 1e9)
    } else {
        0.0
    };
    ThroughputAttribution {
        mode: mode.to_owned(),
        baseline: baseline.to_owned(),
        cpus,
        measured_without_agents,
        requests: pod.requests,
        baseline_requests: base.requests,
        baseline_qps: base.measured.qps,
        measured_qps: pod.measured.qps,
        baseline_cpu_us_per_request: base_cpu_ns / 1e3,
        split,
        extra_ns_per_request: extra,
        predicted_qps,
        prediction_error_pct: if pod.measured.qps > 0.0 {
            (predicted_qps - pod.measured.qps) / pod.measured.qps * 100.0
        } else {
            0.0
        },
        packets_per_request: packets_per_request(pod),
        baseline_packets_per_request: packets_per_request(base),
        reuse_passes_per_request: reuse_per_request(pod),
        cpu: cpu_check(pod, base, extra as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::Node;

    #[test]
    fn the_backlog_wait_is_not_cpu_work() {
        let times: Times<Category> = [
            ((Node::One, Category::Veth), 900.0),
            ((Node::One, Category::Backlog), 13_000_000.0),
            ((Node::Two, Category::Backlog), 2_000.0),
            ((Node::Two, Category::Conntrack), 8_000.0),
        ]
        .into_iter()
        .collect();
        let work = cpu_work(times);
        assert_eq!(
            work.keys().copied().collect::<Vec<_>>(),
            [
                (Node::One, Category::Veth),
                (Node::Two, Category::Conntrack)
            ]
        );
    }
}
