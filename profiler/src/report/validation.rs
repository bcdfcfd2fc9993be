//! Ground truth (`bench --validate`, see `bench::validate`): what the attribution of a
//! profiled run predicts a change of the lab gains, beside what the change gained measured
//! with no agent attached.
//!
//! Prediction, per (node, stage), from each round's profiled runs' segments net of netprof's
//! probes (the same per-kind costs as the report's headline split), ping steps per RTT by
//! segment medians, ab steps per request by segment means, then the median over rounds:
//! - `notrack`: the tables stay registered, so conntrack's and NAT's brackets keep a floor,
//!   the cost of passing a hook with nothing to do, taken as the same node's empty brackets
//!   on the same hook; only the time above it goes;
//! - `no-kube-proxy`: every netfilter stage of `a` goes whole (no tables, no hooks);
//! - `one-node-rules`, `encapsulation`: `a`'s profile minus `b`'s, stage by stage and node by
//!   node (an outer packet passes the same hooks as the inner one, so no stage of `a` can be
//!   set aside as "the encapsulation's" without `b` beside it).
//!
//! Measured: each round's `a - b` (ping p50 of each sample; CPU time per request), their
//! median and its 95% bootstrap interval. Verdict: within ±30% of the prediction or ±2 µs,
//! whichever is wider.

use std::collections::BTreeMap;

use serde::Serialize;

use super::calibration::CalibrationFile;
use super::category::Category;
use super::input::{CheckInput, ProfiledInput, ValidationInput};
use super::merge::{merge_step, MergedStep, SegmentKind};
use super::overhead::probe_ns_by_kind;
use super::probe_cost::ProbeCosts;
use super::split::median_i64;
use super::stage_time::{by_stage, segment_ns, Statistic, Times};
use super::{gauge, in_pass_cost};
use crate::agent::stages::Stage;
use crate::bench::bootstrap::median_interval;
use crate::bench::overhead::median;
use crate::bench::validate::{CheckKind, Sample, Side};
use crate::lab::Mode;
use crate::rundir::{NetPath, Node, Tool};

pub const TOLERANCE_PCT: f64 = 30.0;
pub const TOLERANCE_FLOOR_NS: i64 = 2_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The measured median lies within the bound of the prediction.
    Within,
    Outside,
}

/// Predicted against measured, for one quantity (ping p50, or CPU per request).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub predicted_ns: i64,
    /// The median over rounds of each round's `a - b`.
    pub measured_ns: i64,
    /// 95% bootstrap interval of that median (three rounds or more).
    pub interval_ns: Option<(i64, i64)>,
    pub by_round_ns: Vec<i64>,
    /// ±30% of the prediction or ±2 µs, whichever is wider.
    pub bound_ns: i64,
    /// `(measured - predicted) / predicted`, percent.
    pub error_pct: Option<f64>,
    pub verdict: Verdict,
    /// The prediction by node and stage, largest first (zeros left out).
    pub predicted_by: Vec<NodeStage>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NodeStage {
    pub node: Node,
    pub stage: Category,
    pub ns: i64,
}

/// One check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub check: CheckKind,
    /// What `a` has that `b` lacks.
    pub what: &'static str,
    pub mode_a: Mode,
    pub mode_b: Mode,
    pub rounds: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules: Option<usize>,
    /// Ping RTT p50, ns per RTT.
    pub rtt: Comparison,
    /// The machine's CPU time per request under ab (lab runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Comparison>,
    /// `one-node-rules`: the share of the measured RTT gain the prediction puts in node 2's
    /// iptables filter stage, percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub right_place_pct: Option<f64>,
}

/// A check in `validate.json` that cannot be judged, and why (never dropped silently).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unjudged {
    pub check: CheckKind,
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Validation {
    pub mode: Mode,
    pub rounds: u32,
    pub one_node_rules: u32,
    pub tolerance_pct: f64,
    pub tolerance_floor_ns: i64,
    pub checks: Vec<Check>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unjudged: Vec<Unjudged>,
}

fn p50_ns(s: &Sample) -> Option<f64> {
    s.ping.stats.map(|st| (st.p50_ms * 1e6).round())
}

/// The hook of a netfilter checkpoint name (`nf PRE_ROUTING -201` -> `PRE_ROUTING`).
fn hook_of(name: &str) -> Option<&str> {
    name.strip_prefix("nf ")
        .and_then(|rest| rest.split_whitespace().next())
}

/// `notrack`: per node, each removed stage's time above its hook's floor, the mean net time
/// of that node's empty brackets on the same hook (all hooks' when the hook has none).
fn above_floor(
    step: &MergedStep,
    events: u64,
    statistic: Statistic,
    probes: &ProbeCosts,
    removes: &[Stage],
) -> Times<Stage> {
    let mut out = BTreeMap::new();
    for node in Node::BOTH {
        let mut floors: BTreeMap<&str, (f64, u64)> = BTreeMap::new();
        for seg in step
            .of_kind(SegmentKind::Path)
            .filter(|s| s.node == node && s.stage == Stage::Netfilter)
        {
            if let (Some(a), Some(b)) = (hook_of(&seg.from), hook_of(&seg.to)) {
                if a == b {
                    let f = floors.entry(a).or_default();
                    f.0 += segment_ns(seg, statistic, Some(probes)) * seg.hist.count as f64;
                    f.1 += seg.hist.count;
                }
            }
        }
        let all = floors
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
        for seg in step
            .of_kind(SegmentKind::Path)
            .filter(|s| s.node == node && removes.contains(&s.stage))
        {
            let above =
                (segment_ns(seg, statistic, Some(probes)) - floor(hook_of(&seg.from))).max(0.0);
            *out.entry((node, seg.stage)).or_insert(0.0) +=
                above * seg.hist.count as f64 / step.covered(node, events);
        }
    }
    out
}

const NETFILTER: [Stage; 7] = [
    Stage::Raw,
    Stage::Conntrack,
    Stage::Mangle,
    Stage::NatDnat,
    Stage::Filter,
    Stage::NatSnat,
    Stage::Netfilter,
];

/// One profiled run's step, with its events and probe costs.
struct Profiled {
    step: MergedStep,
    events: u64,
    probes: ProbeCosts,
}

/// A profiled run's step with its probe costs: the calibration's (bpf_stats' for kinds it
/// lacks), fitted to what the run measured netprof to cost the step when it also ran it with
/// the agents detached (`in_pass_cost::placed`).
fn profiled(run: &ProfiledInput, tool: Tool, calibration: Option<&ProbeCosts>) -> Profiled {
    let bpf = ProbeCosts::from_bpf_stats(&probe_ns_by_kind(&run.profiles, NetPath::Pod, tool));
    let step = merge_step(run.step(tool).into_iter().map(|p| p.doc()));
    let sample = &run.run.sample;
    let events = match tool {
        Tool::Ab => sample.ab.complete_requests,
        _ => sample.ping.received,
    };
    let gauge_ns = gauge::typical_ns(&step, Statistic::of(tool));
    let mut probes = calibration
        .map_or(bpf.clone(), |c| c.clone().or(&bpf))
        .gauged(gauge_ns);
    let pass = in_pass_cost::of_step(
        tool,
        &sample.ping,
        run.run.ping_agents_off.as_ref(),
        sample.ab_cpu_ns_per_request.map(|cpu| (cpu, events)),
        run.run.ab_agents_off.as_ref(),
    );
    if let Some(pass) = pass {
        probes = in_pass_cost::placed(&probes, &step, pass);
    }
    Profiled {
        step,
        events,
        probes,
    }
}

/// The predicted gain by node and stage: each round's prediction from that round's profiled
/// run(s) (`a` against the `b` profiled beside it), then per (node, stage) the median over
/// rounds, the statistic the measured side takes of its rounds. A side's rounds are not
/// merged into one histogram first: a machine's seconds-long slow stretches make a segment's
/// median swing several-fold between rounds, and the median of such a mixture follows
/// whichever stretches one side happened to get.
fn predict(
    check: &CheckInput,
    tool: Tool,
    calibration: Option<&ProbeCosts>,
) -> Result<Times<Stage>, String> {
    let side = |s: Side| -> Vec<&ProfiledInput> {
        check.profiled.iter().filter(|p| p.run.side == s).collect()
    };
    let (a, b) = (side(Side::A), side(Side::B));
    let kind = check.run.check;
    let rounds: Vec<Times<Stage>> = match kind {
        CheckKind::Notrack | CheckKind::NoKubeProxy => a
            .iter()
            .map(|run| predict_round(kind, tool, run, None, calibration))
            .collect(),
        CheckKind::OneNodeRules | CheckKind::Encapsulation => {
            if a.len() != b.len() {
                return Err(format!(
                    "{} profiled run(s) of a and {} of b: each a needs the b profiled beside it",
                    a.len(),
                    b.len()
                ));
            }
            a.iter()
                .zip(&b)
                .map(|(run, beside)| predict_round(kind, tool, run, Some(beside), calibration))
                .collect()
        }
    };
    if rounds.is_empty() {
        return Err("no profiled run of a: nothing to predict from".to_owned());
    }
    Ok(median_over_rounds(&rounds))
}

/// One round's predicted gain by node and stage, from its profiled `a` (and `b`).
fn predict_round(
    kind: CheckKind,
    tool: Tool,
    a: &ProfiledInput,
    b: Option<&ProfiledInput>,
    calibration: Option<&ProbeCosts>,
) -> Times<Stage> {
    let statistic = Statistic::of(tool);
    let a = profiled(a, tool, calibration);
    // Under ab the prediction is of CPU time: only stages that are CPU work.
    let times = |p: &Profiled| {
        let mut times = by_stage(&p.step, p.events, statistic, Some(&p.probes));
        if tool == Tool::Ab {
            times.retain(|(_, stage), _| Category::of(*stage).is_cpu_work());
        }
        times
    };
    match kind {
        CheckKind::Notrack => above_floor(
            &a.step,
            a.events,
            statistic,
            &a.probes,
            &[Stage::Conntrack, Stage::NatDnat, Stage::NatSnat],
        ),
        CheckKind::NoKubeProxy => times(&a)
            .into_iter()
            .filter(|((_, stage), _)| NETFILTER.contains(stage))
            .collect(),
        CheckKind::OneNodeRules | CheckKind::Encapsulation => {
            let mut out = times(&a);
            if let Some(b) = b {
                for (key, ns) in times(&profiled(b, tool, calibration)) {
                    *out.entry(key).or_insert(0.0) -= ns;
                }
            }
            out
        }
    }
}

/// Per (node, stage), the median over rounds (a stage a round lacks counts 0 there).
fn median_over_rounds(rounds: &[Times<Stage>]) -> Times<Stage> {
    let keys: std::collections::BTreeSet<(Node, Stage)> =
        rounds.iter().flat_map(|r| r.keys().copied()).collect();
    keys.into_iter()
        .map(|key| {
            let mut values: Vec<f64> = rounds
                .iter()
                .map(|r| r.get(&key).copied().unwrap_or(0.0))
                .collect();
            (key, median(&mut values))
        })
        .collect()
}

fn by_category(times: &Times<Stage>) -> Vec<NodeStage> {
    let mut grouped: BTreeMap<(Node, Category), f64> = BTreeMap::new();
    for ((node, stage), ns) in times {
        *grouped.entry((*node, Category::of(*stage))).or_insert(0.0) += ns;
    }
    let mut out: Vec<NodeStage> = grouped
        .into_iter()
        .map(|((node, stage), ns)| NodeStage {
            node,
            stage,
            ns: ns.round() as i64,
        })
        .filter(|n| n.ns != 0)
        .collect();
    out.sort_by_key(|n| -n.ns.abs());
    out
}

fn compare(predicted_by: Vec<NodeStage>, by_round: Vec<i64>) -> Comparison {
    let predicted_ns: i64 = predicted_by.iter().map(|n| n.ns).sum();
    let measured_ns = median_i64(by_round.clone());
    let values: Vec<f64> = by_round.iter().map(|&v| v as f64).collect();
    let bound_ns = ((predicted_ns.abs() as f64 * TOLERANCE_PCT / 100.0).round() as i64)
        .max(TOLERANCE_FLOOR_NS);
    Comparison {
        predicted_ns,
        measured_ns,
        interval_ns: median_interval(&values)
            .map(|(lo, hi)| (lo.round() as i64, hi.round() as i64)),
        by_round_ns: by_round,
        bound_ns,
        error_pct: (predicted_ns != 0)
            .then(|| (measured_ns - predicted_ns) as f64 / predicted_ns as f64 * 100.0),
        verdict: if (measured_ns - predicted_ns).abs() <= bound_ns {
            Verdict::Within
        } else {
            Verdict::Outside
        },
        predicted_by,
    }
}

/// Each round's `a - b` of `value`; the first round whose sample lacks it is an error.
fn by_round(
    check: &CheckInput,
    value: fn(&Sample) -> Option<f64>,
    what: &str,
) -> Result<Vec<i64>, String> {
    if check.run.rounds.is_empty() {
        return Err("no measured round".to_owned());
    }
    check
        .run
        .rounds
        .iter()
        .map(|r| {
            let of = |sample: &Sample, side: &str| {
                value(sample).ok_or_else(|| format!("round {}'s {side} has no {what}", r.round))
            };
            Ok((of(&r.a, "a")? - of(&r.b, "b")?).round() as i64)
        })
        .collect()
}

/// One check judged, or why it cannot be.
fn check(c: &CheckInput, calibration: Option<&ProbeCosts>) -> Result<Check, String> {
    let rtt_by = by_category(&predict(c, Tool::Ping, calibration)?);
    let rtt = compare(rtt_by, by_round(c, p50_ns, "ping p50 (no replies)")?);
    // CPU per request is measured on a lab only (clusters do not have one machine's CPU).
    let cpu = match (
        predict(c, Tool::Ab, calibration),
        by_round(c, |s| s.ab_cpu_ns_per_request, "CPU per request"),
    ) {
        (Ok(p), Ok(rounds)) => Some(compare(by_category(&p), rounds)),
        _ => None,
    };
    let right_place_pct =
        (c.run.check == CheckKind::OneNodeRules && rtt.measured_ns != 0).then(|| {
            let there: i64 = rtt
                .predicted_by
                .iter()
                .filter(|n| {
                    n.node == crate::bench::validate::switch::ONE_NODE
                        && n.stage == Category::Filter
                })
                .map(|n| n.ns)
                .sum();
            there as f64 / rtt.measured_ns as f64 * 100.0
        });
    Ok(Check {
        check: c.run.check,
        what: c.run.check.what(),
        mode_a: c.run.mode_a,
        mode_b: c.run.mode_b,
        rounds: c.run.rounds.len(),
        rules: c.run.rules,
        rtt,
        cpu,
        right_place_pct,
    })
}

pub fn validate(v: &ValidationInput, calibration: Option<&CalibrationFile>) -> Validation {
    let costs = calibration.map(ProbeCosts::from_calibration);
    let (mut checks, mut unjudged) = (Vec::new(), Vec::new());
    for c in &v.checks {
        match check(c, costs.as_ref()) {
            Ok(judged) => checks.push(judged),
            Err(why) => unjudged.push(Unjudged {
                check: c.run.check,
                why,
            }),
        }
    }
    Validation {
        mode: v.result.mode,
        rounds: v.result.rounds,
        one_node_rules: v.result.one_node_rules,
        tolerance_pct: TOLERANCE_PCT,
        tolerance_floor_ns: TOLERANCE_FLOOR_NS,
        checks,
        unjudged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by(ns: &[(Node, Category, i64)]) -> Vec<NodeStage> {
        ns.iter()
            .map(|&(node, stage, ns)| NodeStage { node, stage, ns })
            .collect()
    }

    /// Rounds' predictions: filter on node 2 of 40, 44, 90 (a slow stretch) µs gives 44; a stage
    /// one round lacks counts 0 there.
    #[test]
    fn the_prediction_is_each_stages_median_over_rounds() {
        let round = |filter: f64, veth: Option<f64>| {
            let mut t: Times<Stage> = BTreeMap::from([((Node::Two, Stage::Filter), filter)]);
            if let Some(v) = veth {
                t.insert((Node::One, Stage::Veth), v);
            }
            t
        };
        let m = median_over_rounds(&[
            round(40_000.0, Some(900.0)),
            round(90_000.0, None),
            round(44_000.0, Some(1_000.0)),
        ]);
        assert_eq!(m[&(Node::Two, Stage::Filter)], 44_000.0);
        assert_eq!(m[&(Node::One, Stage::Veth)], 900.0);
        assert_eq!(m.len(), 2);
    }

    /// Predicted 20 µs; rounds measured 18, 25, 21, 30, 19, 22 µs: median 21.5, within ±6 µs.
    /// Predicted 3 µs, measured 4.5: outside 30% (0.9 µs) but within the 2 µs floor.
    /// Predicted 10 µs, measured 14: outside both.
    #[test]
    fn verdicts_take_the_wider_of_thirty_percent_and_two_microseconds() {
        let c = compare(
            by(&[(Node::Two, Category::Filter, 20_000)]),
            vec![18_000, 25_000, 21_000, 30_000, 19_000, 22_000],
        );
        assert_eq!(
            (c.measured_ns, c.bound_ns, c.verdict),
            (21_500, 6_000, Verdict::Within)
        );
        let (lo, hi) = c.interval_ns.unwrap();
        assert!(lo <= 21_500 && 21_500 <= hi && lo >= 18_000 && hi <= 30_000);
        let c = compare(
            by(&[(Node::One, Category::Conntrack, 3_000)]),
            vec![4_500; 3],
        );
        assert_eq!((c.bound_ns, c.verdict), (2_000, Verdict::Within));
        let c = compare(by(&[(Node::One, Category::Nat, 10_000)]), vec![14_000; 3]);
        assert_eq!(c.verdict, Verdict::Outside);
        assert_eq!(c.error_pct, Some(40.0));
    }
}
