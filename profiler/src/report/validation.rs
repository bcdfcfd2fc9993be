//! Counterfactual validation: what the attribution predicts an ablation gains, beside what the
//! ablation measured (`bench --validate`, see `bench::validate`).
//!
//! Predictions come from the `base` runs' ping profiles, merged over all rounds and both nodes
//! as histograms: the per-RTT time (segment median × passes per RTT) of the stages the ablation
//! removes. NOTRACK removes conntrack's and NAT's work (NAT only acts on tracked packets) but
//! leaves the tables registered and probed, so only each bracket's time above the hook's empty
//! bracket goes; the raw-table rule it adds cannot be predicted from the base runs and is shown
//! from the ablated runs' own profiles. No kube-proxy removes every netfilter stage whole (no
//! tables, no hooks, no probes there). The measured gain is the median over rounds of each
//! round's base p50 minus its ablated p50 (the runs of a round ran back to back, in an order
//! that rotates), or the difference of the pooled p50s where rounds do not pair up.
//! The Services sweep fits a line through (rules per node, ab mean latency) and (rules per
//! node, NAT time per request) for the per-rule cost.

use serde::Serialize;

use crate::agent::stages::Stage;
use crate::bench::validate::Variant;
use crate::parse::ping::RttStats;
use crate::rundir::Tool;

use super::category::Category;
use super::input::{RunInput, ValidationInput};
use super::merge::{merge_step, MergedStep};
use super::stage_time::{self, Statistic};

/// Per-event times summed over the nodes (this check compares totals).
fn per_event_by_stage(
    step: &MergedStep,
    events: u64,
    statistic: Statistic,
) -> std::collections::BTreeMap<Stage, f64> {
    let mut out = std::collections::BTreeMap::new();
    for ((_, stage), ns) in stage_time::by_stage(step, events, statistic, None) {
        *out.entry(stage).or_insert(0.0) += ns;
    }
    out
}

fn per_event(
    step: &MergedStep,
    events: u64,
    statistic: Statistic,
) -> std::collections::BTreeMap<Category, f64> {
    let mut out = std::collections::BTreeMap::new();
    for ((_, c), ns) in stage_time::by_category(step, events, statistic, None) {
        *out.entry(c).or_insert(0.0) += ns;
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CategoryChange {
    pub stage: Category,
    pub base_ns: i64,
    pub ablated_ns: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StageNs {
    pub stage: Stage,
    pub ns: i64,
}

/// One ablation: predicted against measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub ablation: &'static str,
    pub removes: Vec<Stage>,
    pub rounds: usize,
    /// Pooled p50 ping RTT of the base and the ablated runs, ns.
    pub base_p50_ns: i64,
    pub ablated_p50_ns: i64,
    /// The median over rounds of (base p50 − ablated p50) of the same round, whose runs ran
    /// back to back (pooled p50s' difference when rounds do not pair up).
    pub measured_gain_ns: i64,
    /// Each round's own difference, ns (empty when rounds do not pair up).
    pub measured_by_round_ns: Vec<i64>,
    pub predicted_gain_ns: i64,
    /// The prediction by removed stage, ns per RTT.
    pub predicted_by_stage: Vec<StageNs>,
    /// Part of the prediction when every netfilter hook goes (no kube-proxy): netprof's own
    /// probe time at each hook pass's edges, which no removed segment holds (see
    /// [`hook_edge_probe_ns`]), ns per RTT. 0 for NOTRACK (the hooks and probes stay).
    pub hook_edge_probes_ns: i64,
    /// `(measured - predicted) / predicted`, percent.
    pub error_pct: Option<f64>,
    /// The removed stages' time still seen in the ablated runs' own profiles, ns per RTT.
    pub remaining_ns: i64,
    /// Stages the ablation adds that the base runs did not have (NOTRACK on a lab without a
    /// raw table: that table), seen in the ablated runs' own profiles, ns per RTT; not part of
    /// the prediction, which uses the base runs only. 0 since the base has an empty raw table.
    pub added_ns: i64,
    /// `predicted_gain_ns - added_ns`.
    pub net_predicted_gain_ns: i64,
    /// Where the time actually went: every category's per-RTT time in the base runs' and the
    /// ablated runs' own profiles (segment medians), so a gain the prediction missed shows up
    /// in the stage that lost it.
    pub profiled_change: Vec<CategoryChange>,
    /// nginx through the same kind of target (only `no-kube-proxy`: straight to the pod).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qps: Option<QpsCheck>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QpsCheck {
    /// Median over rounds.
    pub base_qps: f64,
    pub ablated_qps: f64,
    pub predicted_qps: f64,
    /// Removed stage time per request (means, base ab profiles), ns.
    pub removed_ns_per_request: i64,
    pub measured_change_pct: f64,
    pub predicted_change_pct: f64,
    /// The same prediction against the machine's measured CPU time per request (both lab
    /// nodes share one kernel), which moves far less between runs than QPS or ping RTT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuCheck>,
}

/// CPU time per request: predicted saving (the removed stages' time per request, means) against
/// the measured one, the median over rounds of each round's base minus ablated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuCheck {
    /// Medians over the runs, ns per request.
    pub base_ns: f64,
    pub ablated_ns: f64,
    pub predicted_gain_ns: i64,
    pub measured_gain_ns: i64,
    pub measured_by_round_ns: Vec<i64>,
    /// `(measured - predicted) / predicted`, percent.
    pub error_pct: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SweepPoint {
    pub services: u32,
    pub rules_per_node: usize,
    pub ab_mean_ms: f64,
    pub qps: f64,
    /// iptables nat time per request (segment means × passes, both nodes), ns.
    pub nat_ns_per_request: f64,
    pub ping_p50_ms: Option<f64>,
}

/// A least-squares line `y = intercept + slope × rules`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Fit {
    pub slope: f64,
    pub intercept: f64,
    pub r2: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sweep {
    pub points: Vec<SweepPoint>,
    /// ab mean latency (µs) per rule per node.
    pub ab_mean_us_per_rule: Option<Fit>,
    /// NAT time per request (ns) per rule per node.
    pub nat_ns_per_rule: Option<Fit>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Validation {
    pub mode: String,
    pub rounds: u32,
    pub checks: Vec<Check>,
    pub sweep: Sweep,
    /// The target of issue 4: the conntrack ablation's measured gain within ±30% of the
    /// prediction.
    pub tolerance_pct: f64,
}

pub const TOLERANCE_PCT: f64 = 30.0;

pub fn fit(points: &[(f64, f64)]) -> Option<Fit> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let sxx: f64 = points.iter().map(|(x, _)| (x - mx).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let ss_tot: f64 = points.iter().map(|(_, y)| (y - my).powi(2)).sum();
    let ss_res: f64 = points
        .iter()
        .map(|(x, y)| (y - intercept - slope * x).powi(2))
        .sum();
    let r2 = if ss_tot > 0.0 {
        1.0 - ss_res / ss_tot
    } else {
        1.0
    };
    Some(Fit {
        slope,
        intercept,
        r2,
    })
}

fn runs(v: &ValidationInput, variant: Variant) -> Vec<&RunInput> {
    v.runs.iter().filter(|r| r.run.variant == variant).collect()
}

fn merged(runs: &[&RunInput], tool: Tool) -> MergedStep {
    merge_step(runs.iter().flat_map(|r| r.step(tool)).map(|p| p.doc()))
}

fn pooled_p50_ns(runs: &[&RunInput]) -> Option<i64> {
    let samples: Vec<f64> = runs
        .iter()
        .flat_map(|r| r.run.ping.rtts_us.iter().copied())
        .collect();
    RttStats::from_samples_us(&samples).map(|s| (s.p50_ms * 1e6).round() as i64)
}

/// Each round's `value` of its base run minus that of its ablated run, ns; `None` unless
/// every round has exactly one run of each and every run has the value.
fn paired_gains_ns(
    base: &[&RunInput],
    ablated: &[&RunInput],
    value: impl Fn(&RunInput) -> Option<f64>,
) -> Option<Vec<i64>> {
    if base.len() != ablated.len() {
        return None;
    }
    base.iter()
        .map(|b| {
            let mut same_round = ablated.iter().filter(|a| a.run.round == b.run.round);
            let a = same_round.next()?;
            if same_round.next().is_some() {
                return None;
            }
            Some((value(b)? - value(a)?).round() as i64)
        })
        .collect()
}

/// `(measured - predicted) / predicted`, percent; `None` for a zero prediction.
fn error_pct(measured_ns: i64, predicted_ns: i64) -> Option<f64> {
    (predicted_ns != 0).then(|| (measured_ns - predicted_ns) as f64 / predicted_ns as f64 * 100.0)
}

/// [`CpuCheck`] when every run measured its CPU time per request and the rounds pair up.
fn cpu_per_request(
    base: &[&RunInput],
    ablated: &[&RunInput],
    predicted_gain_ns: i64,
) -> Option<CpuCheck> {
    let cpu = |r: &RunInput| r.run.ab_cpu_ns_per_request;
    let all = |runs: &[&RunInput]| runs.iter().map(|r| cpu(r)).collect::<Option<Vec<f64>>>();
    let (base_all, ablated_all) = (all(base)?, all(ablated)?);
    let by_round = paired_gains_ns(base, ablated, cpu)?;
    let measured_gain_ns = median(by_round.iter().map(|&ns| ns as f64).collect()).round() as i64;
    Some(CpuCheck {
        base_ns: median(base_all),
        ablated_ns: median(ablated_all),
        predicted_gain_ns,
        measured_gain_ns,
        measured_by_round_ns: by_round,
        error_pct: error_pct(measured_gain_ns, predicted_gain_ns),
    })
}

fn replies(runs: &[&RunInput]) -> u64 {
    runs.iter().map(|r| r.run.ping.received).sum()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn removed_time(
    step: &MergedStep,
    events: u64,
    statistic: Statistic,
    removes: &[Stage],
) -> Vec<(Stage, i64)> {
    let by_stage = per_event_by_stage(step, events, statistic);
    removes
        .iter()
        .map(|s| (*s, by_stage.get(s).copied().unwrap_or(0.0).round() as i64))
        .collect()
}

/// The netfilter hook of a checkpoint name (`nf PRE_ROUTING -201` -> `PRE_ROUTING`).
fn hook_of(name: &str) -> Option<&str> {
    name.strip_prefix("nf ")
        .and_then(|rest| rest.split_whitespace().next())
}

/// What a table's work is worth per RTT when the table stays registered but has nothing to do
/// (NOTRACK): each bracket keeps a floor, the cost of passing the hook with no table in it
/// plus netprof's probe at its end, measured as the median of the same hook's empty brackets
/// (stage `netfilter`) in the same profile. Only the time above that floor can go away.
fn work_above_floor(
    step: &MergedStep,
    events: u64,
    statistic: Statistic,
    removes: &[Stage],
) -> Vec<(Stage, i64)> {
    let value = |seg: &super::merge::MergedSegment| match statistic {
        Statistic::Median => seg.hist.summary().p50_ns as f64,
        Statistic::Mean => seg.hist.mean_ns(),
    };
    use super::merge::SegmentKind;
    let mut floors: std::collections::BTreeMap<&str, (f64, u64)> = Default::default();
    for seg in step
        .of_kind(SegmentKind::Path)
        .filter(|s| s.stage == Stage::Netfilter)
    {
        if let (Some(a), Some(b)) = (hook_of(&seg.from), hook_of(&seg.to)) {
            if a == b {
                let f = floors.entry(a).or_default();
                f.0 += value(seg) * seg.hist.count as f64;
                f.1 += seg.hist.count;
            }
        }
    }
    let all: (f64, u64) = floors
        .values()
        .fold((0.0, 0), |(a, b), (c, d)| (a + c, b + d));
    let floor = |hook: Option<&str>| {
        let (sum, n) = hook.and_then(|h| floors.get(h)).copied().unwrap_or(all);
        if n > 0 {
            sum / n as f64
        } else {
            0.0
        }
    };
    removes
        .iter()
        .map(|stage| {
            let ns: f64 = step
                .of_kind(SegmentKind::Path)
                .filter(|s| s.stage == *stage)
                .map(|s| {
                    (value(s) - floor(hook_of(&s.from))).max(0.0) * s.hist.count as f64
                        / step.covered(s.node, events)
                })
                .sum();
            (*stage, ns.round() as i64)
        })
        .collect()
}

/// netprof's probe time that leaves with the netfilter hooks but sits in no removed segment.
/// Of the probes at one hook pass, the segments between them hold all but the first probe's
/// part before its clock read and the last one's part after it, together about one probe
/// run per pass (the kernel's entry into the hook sits there too). So: hook passes per RTT
/// (segments entering a hook from elsewhere) × the netfilter probes' mean run time
/// (bpf_stats of the same base runs).
fn hook_edge_probe_ns(base: &[&RunInput], tool: Tool, step: &MergedStep, events: u64) -> i64 {
    let (runs, time) = base
        .iter()
        .flat_map(|r| r.step(tool))
        .flat_map(|p| p.report.programs.iter())
        .filter(|p| p.name.starts_with("nf_"))
        .fold((0u64, 0u64), |(n, t), p| {
            (n + p.run_count, t + p.run_time_ns)
        });
    if runs == 0 {
        return 0;
    }
    let entries: u64 = step
        .segments
        .iter()
        .filter(|s| matches!(hook_of(&s.to), Some(to) if hook_of(&s.from) != Some(to)))
        .map(|s| s.hist.count)
        .sum();
    (entries as f64 / step.covered(crate::rundir::Node::One, events) * time as f64 / runs as f64)
        .round() as i64
}

fn check(
    v: &ValidationInput,
    variant: Variant,
    removes: Vec<Stage>,
    adds: &[Stage],
    cpus: usize,
) -> Option<Check> {
    let (base, ablated) = (runs(v, Variant::Base), runs(v, variant));
    if base.is_empty() || ablated.is_empty() {
        return None;
    }
    let (base_p50_ns, ablated_p50_ns) = (pooled_p50_ns(&base)?, pooled_p50_ns(&ablated)?);
    let base_ping = merged(&base, Tool::Ping);
    let predicted_by_stage = if variant == Variant::Notrack {
        // The tables stay registered (and probed): only their work above the floor goes.
        work_above_floor(&base_ping, replies(&base), Statistic::Median, &removes)
    } else {
        // No tables, no hooks, no probes: the whole bracket goes.
        removed_time(&base_ping, replies(&base), Statistic::Median, &removes)
    };
    let ablated_ping = merged(&ablated, Tool::Ping);
    // Only what the base runs did not have is added (older runs had no raw table in base).
    let in_base = per_event_by_stage(&base_ping, replies(&base), Statistic::Median);
    let adds: Vec<Stage> = adds
        .iter()
        .copied()
        .filter(|s| in_base.get(s).copied().unwrap_or(0.0) <= 0.0)
        .collect();
    let added_ns: i64 = removed_time(&ablated_ping, replies(&ablated), Statistic::Median, &adds)
        .iter()
        .map(|(_, ns)| ns)
        .sum();
    let (before, after) = (
        per_event(&base_ping, replies(&base), Statistic::Median),
        per_event(&ablated_ping, replies(&ablated), Statistic::Median),
    );
    let profiled_change = Category::ALL
        .iter()
        .map(|&stage| CategoryChange {
            stage,
            base_ns: before.get(&stage).copied().unwrap_or(0.0).round() as i64,
            ablated_ns: after.get(&stage).copied().unwrap_or(0.0).round() as i64,
        })
        .filter(|c| c.base_ns != 0 || c.ablated_ns != 0)
        .collect();
    let hook_edge_probes_ns = if variant == Variant::NoKubeProxy {
        hook_edge_probe_ns(&base, Tool::Ping, &base_ping, replies(&base))
    } else {
        0
    };
    let predicted_gain_ns: i64 =
        predicted_by_stage.iter().map(|(_, ns)| ns).sum::<i64>() + hook_edge_probes_ns;
    let remaining_ns = removed_time(
        &merged(&ablated, Tool::Ping),
        replies(&ablated),
        Statistic::Median,
        &removes,
    )
    .iter()
    .map(|(_, ns)| ns)
    .sum();
    let ping_p50 = |r: &RunInput| pooled_p50_ns(&[r]).map(|ns| ns as f64);
    let measured_by_round_ns = paired_gains_ns(&base, &ablated, ping_p50).unwrap_or_default();
    let measured_gain_ns = if measured_by_round_ns.is_empty() {
        base_p50_ns - ablated_p50_ns
    } else {
        median(measured_by_round_ns.iter().map(|&ns| ns as f64).collect()).round() as i64
    };
    let qps =
        if ablated.iter().all(|r| r.run.ab.is_some()) && base.iter().all(|r| r.run.ab.is_some()) {
            let qps_of = |runs: &[&RunInput]| {
                median(
                    runs.iter()
                        .filter_map(|r| r.run.ab.as_ref())
                        .map(|a| a.requests_per_second)
                        .collect(),
                )
            };
            let requests: u64 = base
                .iter()
                .filter_map(|r| r.run.ab.as_ref())
                .map(|a| a.complete_requests)
                .sum();
            let base_ab = merged(&base, Tool::Ab);
            let removed: i64 = if variant == Variant::Notrack {
                work_above_floor(&base_ab, requests, Statistic::Mean, &removes)
            } else {
                removed_time(&base_ab, requests, Statistic::Mean, &removes)
            }
            .iter()
            .map(|(_, ns)| ns)
            .sum::<i64>()
                + if variant == Variant::NoKubeProxy {
                    hook_edge_probe_ns(&base, Tool::Ab, &base_ab, requests)
                } else {
                    0
                };
            let (base_qps, ablated_qps) = (qps_of(&base), qps_of(&ablated));
            let cpus = cpus.max(1) as f64;
            let cpu_ns = if base_qps > 0.0 {
                cpus / base_qps * 1e9
            } else {
                0.0
            };
            let predicted_qps = if cpu_ns - removed as f64 > 0.0 {
                cpus / ((cpu_ns - removed as f64) / 1e9)
            } else {
                0.0
            };
            let change = |q: f64| {
                if base_qps > 0.0 {
                    (q / base_qps - 1.0) * 100.0
                } else {
                    0.0
                }
            };
            let cpu = cpu_per_request(&base, &ablated, removed);
            Some(QpsCheck {
                base_qps,
                ablated_qps,
                predicted_qps,
                removed_ns_per_request: removed,
                measured_change_pct: change(ablated_qps),
                predicted_change_pct: change(predicted_qps),
                cpu,
            })
        } else {
            None
        };
    Some(Check {
        ablation: variant.name(),
        removes,
        rounds: base.len().min(ablated.len()),
        base_p50_ns,
        ablated_p50_ns,
        measured_gain_ns,
        measured_by_round_ns,
        predicted_gain_ns,
        predicted_by_stage: predicted_by_stage
            .iter()
            .map(|&(stage, ns)| StageNs { stage, ns })
            .collect(),
        hook_edge_probes_ns,
        error_pct: error_pct(measured_gain_ns, predicted_gain_ns),
        remaining_ns,
        added_ns,
        net_predicted_gain_ns: predicted_gain_ns - added_ns,
        profiled_change,
        qps,
    })
}

fn sweep(v: &ValidationInput) -> Sweep {
    let mut points: Vec<SweepPoint> = runs(v, Variant::Services)
        .into_iter()
        .filter_map(|r| {
            let ab = r.run.ab.as_ref()?;
            let nat = per_event_by_stage(
                &merged(&[r], Tool::Ab),
                ab.complete_requests,
                Statistic::Mean,
            );
            Some(SweepPoint {
                services: r.run.services,
                rules_per_node: r.run.rules_per_node,
                ab_mean_ms: ab.mean_time_per_request_ms,
                qps: ab.requests_per_second,
                nat_ns_per_request: [Stage::NatDnat, Stage::NatSnat]
                    .iter()
                    .map(|s| nat.get(s).copied().unwrap_or(0.0))
                    .sum(),
                ping_p50_ms: r.run.ping.stats.map(|s| s.p50_ms),
            })
        })
        .collect();
    points.sort_by_key(|p| p.services);
    let xy = |f: fn(&SweepPoint) -> f64| {
        points
            .iter()
            .map(|p| (p.rules_per_node as f64, f(p)))
            .collect::<Vec<_>>()
    };
    Sweep {
        ab_mean_us_per_rule: fit(&xy(|p| p.ab_mean_ms * 1e3)),
        nat_ns_per_rule: fit(&xy(|p| p.nat_ns_per_request)),
        points,
    }
}

pub fn validate(v: &ValidationInput, cpus: usize) -> Validation {
    let netfilter = vec![
        Stage::Raw,
        Stage::Conntrack,
        Stage::Mangle,
        Stage::NatDnat,
        Stage::Filter,
        Stage::NatSnat,
        Stage::Netfilter,
    ];
    let checks = [
        check(
            v,
            Variant::Notrack,
            vec![Stage::Conntrack, Stage::NatDnat, Stage::NatSnat],
            &[Stage::Raw],
            cpus,
        ),
        check(v, Variant::NoKubeProxy, netfilter, &[], cpus),
    ]
    .into_iter()
    .flatten()
    .collect();
    Validation {
        mode: v.result.mode.to_string(),
        rounds: v.result.rounds,
        checks,
        sweep: sweep(v),
        tolerance_pct: TOLERANCE_PCT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_fitted_exactly_and_degenerate_input_has_none() {
        let f = fit(&[(0.0, 3.0), (1000.0, 5.0), (5000.0, 13.0)]).unwrap();
        assert!(
            (f.slope - 0.002).abs() < 1e-12
                && (f.intercept - 3.0).abs() < 1e-9
                && (f.r2 - 1.0).abs() < 1e-12,
            "{f:?}"
        );
        assert!(fit(&[(1.0, 2.0)]).is_none());
        assert!(fit(&[(1.0, 2.0), (1.0, 3.0)]).is_none());
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
