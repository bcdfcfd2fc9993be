//! Throughput attribution: the nginx QPS a pod mode loses, predicted from what its datapath
//! costs per request, next to the QPS ab measured.
//!
//! Model (stated in every output): during ab, the node's `cpus` cores are busy, so
//! `QPS ≈ cpus / cpu_time_per_request`. The baseline's cpu time per request is implied by its
//! measured QPS (`cpus / QPS_base`). A pod mode adds, per request, the datapath time its extra
//! stages take: for each segment, mean time × passes per request (segment count / completed
//! requests), both nodes, minus the baseline's, stage by stage. So
//! `predicted QPS = cpus / (cpus / QPS_base + extra_time_per_request)`.
//! Segment time under load includes waiting (a packet queued behind another is not CPU work),
//! and not all cores are always busy, so the prediction is a model: its error is shown.

use serde::Serialize;

use super::latency::{per_event, Split, Statistic};
use super::merge::{MergedStep, SegmentKind};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThroughputAttribution {
    pub mode: String,
    pub baseline: String,
    pub cpus: usize,
    pub requests: u64,
    pub baseline_requests: u64,
    pub baseline_qps: f64,
    pub measured_qps: f64,
    /// `cpus / baseline_qps`, µs.
    pub baseline_cpu_us_per_request: f64,
    /// Per-request stage time of the mode and the baseline (means), and their difference; the
    /// "measured" delta here is the cpu time per request implied by the two measured QPS.
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

/// One side's ab step.
pub struct AbSide<'a> {
    pub step: &'a MergedStep,
    pub qps: f64,
    pub requests: u64,
    /// Measured busy CPU time per request, ns (lab runs).
    pub cpu_ns_per_request: Option<f64>,
}

fn packets_per_request(side: &AbSide) -> f64 {
    side.step.counters.admitted as f64 / 2.0 / side.step.covered(side.requests)
}

pub fn attribute(
    mode: &str,
    baseline: &str,
    cpus: usize,
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
        "cpu time per request",
        "mean",
        cpu_ns(pod.qps),
        cpu_ns(base.qps),
        &per_event(pod.step, pod.requests, Statistic::Mean),
        &per_event(base.step, base.requests, Statistic::Mean),
    );
    let extra = split.explained_ns;
    let base_cpu_ns = cpu_ns(base.qps) as f64;
    let predicted_qps = if base_cpu_ns + extra as f64 > 0.0 {
        cpus_f / ((base_cpu_ns + extra as f64) / 1e9)
    } else {
        0.0
    };
    let reuse: u64 = pod
        .step
        .of_kind(SegmentKind::Reuse)
        .map(|s| s.hist.count)
        .sum();
    ThroughputAttribution {
        mode: mode.to_owned(),
        baseline: baseline.to_owned(),
        cpus,
        requests: pod.requests,
        baseline_requests: base.requests,
        baseline_qps: base.qps,
        measured_qps: pod.qps,
        baseline_cpu_us_per_request: base_cpu_ns / 1e3,
        split,
        extra_ns_per_request: extra,
        predicted_qps,
        prediction_error_pct: if pod.qps > 0.0 {
            (predicted_qps - pod.qps) / pod.qps * 100.0
        } else {
            0.0
        },
        packets_per_request: packets_per_request(pod),
        baseline_packets_per_request: packets_per_request(base),
        reuse_passes_per_request: reuse as f64 / pod.step.covered(pod.requests),
        cpu: pod
            .cpu_ns_per_request
            .zip(base.cpu_ns_per_request)
            .map(|(mode_ns, baseline_ns)| {
                let measured_extra_ns = mode_ns - baseline_ns;
                let predicted_qps = if baseline_ns + extra as f64 > 0.0 {
                    base.qps * baseline_ns / (baseline_ns + extra as f64)
                } else {
                    0.0
                };
                CpuPerRequest {
                    baseline_ns,
                    mode_ns,
                    measured_extra_ns,
                    explained_pct: (measured_extra_ns.abs() > 0.0)
                        .then(|| extra as f64 / measured_extra_ns * 100.0),
                    predicted_qps,
                    prediction_error_pct: (pod.qps > 0.0)
                        .then(|| (predicted_qps - pod.qps) / pod.qps * 100.0),
                }
            }),
    }
}
