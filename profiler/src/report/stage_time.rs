//! A step's time per event (ping RTT or HTTP request) by node and stage: for each segment of
//! each node, its typical time × its passes per event (segment count / events the node's
//! counts cover), summed per (node, stage). Nodes are summed, never mixed: the median of two
//! nodes' pooled segment is neither node's time when one node's is thirty times the other's.
//!
//! Optionally net of netprof: each segment's typical time less the probe runs it holds, never
//! below zero, and less its share of what netprof cost beyond them (see `probe_cost`).

use std::collections::BTreeMap;

use super::calibration::Interval;
use super::category::Category;
use super::merge::{MergedSegment, MergedStep, SegmentKind};
use super::probe_cost::ProbeCosts;
use crate::agent::stages::Stage;
use crate::rundir::{Node, Tool};

/// Which per-segment statistic stands for a segment's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statistic {
    /// What a typical packet spends there: what an RTT's median is made of.
    Median,
    /// Pulled up by rare preemptions: what a p99 or a CPU budget is made of.
    Mean,
}

impl Statistic {
    /// What a tool's split takes: a ping RTT's median is made of its segments' medians, ab's
    /// CPU time per request (and iperf3's) of their means.
    pub fn of(tool: Tool) -> Statistic {
        match tool {
            Tool::Ping => Statistic::Median,
            Tool::Ab | Tool::Iperf3 => Statistic::Mean,
        }
    }
}

/// ns per event by node and key (category or the agent's stage).
pub type Times<K> = BTreeMap<(Node, K), f64>;

fn typical(seg: &MergedSegment, statistic: Statistic) -> f64 {
    match statistic {
        Statistic::Median => seg.hist.summary().p50_ns as f64,
        Statistic::Mean => seg.hist.mean_ns(),
    }
}

/// A segment's time per pass, less netprof's when `probes` is given.
pub fn segment_ns(seg: &MergedSegment, statistic: Statistic, probes: Option<&ProbeCosts>) -> f64 {
    let typical = typical(seg, statistic);
    probes.map_or(typical, |p| p.net_of(typical, &seg.from_kind, &seg.to_kind))
}

/// Passes of a segment per event (its count over the events its node's counts cover).
fn passes(step: &MergedStep, seg: &MergedSegment, events: u64) -> f64 {
    seg.hist.count as f64 / step.covered(seg.node, events)
}

/// Time per event of the step's path segments, by node and `key`.
pub fn per_event<K: Ord>(
    step: &MergedStep,
    events: u64,
    statistic: Statistic,
    probes: Option<&ProbeCosts>,
    key: impl Fn(&MergedSegment) -> K,
) -> Times<K> {
    let mut out = BTreeMap::new();
    for seg in step.of_kind(SegmentKind::Path) {
        *out.entry((seg.node, key(seg))).or_insert(0.0) +=
            segment_ns(seg, statistic, probes) * passes(step, seg, events);
    }
    out
}

/// [`per_event`] by the report's categories.
pub fn by_category(
    step: &MergedStep,
    events: u64,
    statistic: Statistic,
    probes: Option<&ProbeCosts>,
) -> Times<Category> {
    per_event(step, events, statistic, probes, |s| Category::of(s.stage))
}

/// [`per_event`] by the agent's own stages.
pub fn by_stage(
    step: &MergedStep,
    events: u64,
    statistic: Statistic,
    probes: Option<&ProbeCosts>,
) -> Times<Stage> {
    per_event(step, events, statistic, probes, |s| s.stage)
}

/// netprof inside one event: checkpoints passed per event × each kind's cost per run, both
/// nodes, and what the pass measured beyond those runs when it did. The `consumed` tracer
/// runs when a delivered skb is freed, alongside the path rather than on it, and is left out.
pub fn probes_per_event(step: &MergedStep, events: u64, probes: &ProbeCosts) -> Interval {
    let runs = step
        .hits_by_kind
        .iter()
        .filter(|((_, kind), _)| kind != "consumed")
        .fold(Interval::point(0.0), |total, ((node, kind), hits)| {
            let per_event = *hits as f64 / step.covered(*node, events);
            total.plus(probes.per_run(kind).scaled(per_event))
        });
    match probes.spread {
        Some(spread) => runs.plus(spread.per_event_ns),
        None => runs,
    }
}

/// Per checkpoint kind, the shortest typical time of a path segment between two checkpoints
/// of that kind, among segments passed at least once every other event (a rarely passed
/// segment's median is a handful of packets'). Such a segment holds at least the end of one
/// run and the start of the next: an upper bound of what a run of that kind leaves inside
/// segments, whatever it costs the whole event.
pub fn shortest_between_same_kind(
    step: &MergedStep,
    events: u64,
    statistic: Statistic,
) -> BTreeMap<String, f64> {
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for seg in step.of_kind(SegmentKind::Path) {
        if seg.from_kind != seg.to_kind || passes(step, seg, events) < 0.5 {
            continue;
        }
        let ns = typical(seg, statistic);
        out.entry(seg.from_kind.clone())
            .and_modify(|v| *v = v.min(ns))
            .or_insert(ns);
    }
    out
}

/// Segment passes per event left out as two packets that shared an skb, both nodes.
pub fn reuse_per_event(step: &MergedStep, events: u64) -> f64 {
    step.of_kind(SegmentKind::Reuse)
        .map(|s| passes(step, s, events))
        .sum()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::report::merge::Hist;

    /// A netfilter bracket's segment (FORWARD -99 -> 1) on `node`, all passes in one bucket.
    pub(crate) fn seg(
        node: Node,
        stage: Stage,
        bucket_low: u64,
        count: u64,
        mean_ns: f64,
    ) -> MergedSegment {
        MergedSegment {
            node,
            from: "nf FORWARD -99".into(),
            to: "nf FORWARD 1".into(),
            from_kind: "netfilter".into(),
            to_kind: "netfilter".into(),
            stage,
            kind: SegmentKind::Path,
            inbound: false,
            hist: Hist {
                buckets: BTreeMap::from([(bucket_low, count)]),
                count,
                sum_ns: mean_ns * count as f64,
            },
        }
    }

    /// One node's filter segment 30x the other's (40 ns against 1200 ns per pass, buckets
    /// [40, 41) and [1184, 1216)), 1000 RTTs, 2100 passes on node 1 and 1900 on node 2.
    /// Per node: 40 × 2.1 = 84 ns and 1200 × 1.9 = 2280 ns, 2364 ns per RTT in all. The two
    /// nodes' pooled histogram has its median at 40 ns (2100 of 4000 passes), which × 4
    /// passes gave 160 ns: 7% of the time.
    #[test]
    fn asymmetric_nodes_add_their_own_medians() {
        let step = MergedStep {
            segments: vec![
                seg(Node::One, Stage::Filter, 40, 2100, 40.0),
                seg(Node::Two, Stage::Filter, 1184, 1900, 1200.0),
            ],
            ..Default::default()
        };
        let t = by_category(&step, 1000, Statistic::Median, None);
        assert_eq!(t[&(Node::One, Category::Filter)], 84.0);
        assert_eq!(t[&(Node::Two, Category::Filter)], 2280.0);
        assert_eq!(t.values().sum::<f64>(), 2364.0);
    }

    /// The same segments less a calibrated 30 ns probe at each end (30 ns per segment):
    /// 10 × 2.1 = 21 ns and 1170 × 1.9 = 2223 ns.
    #[test]
    fn the_probe_each_segment_holds_is_taken_off_per_pass() {
        use crate::report::probe_cost::{KindCost, ProbeSource};
        let step = MergedStep {
            segments: vec![
                seg(Node::One, Stage::Filter, 40, 2100, 40.0),
                seg(Node::Two, Stage::Filter, 1184, 1900, 1200.0),
            ],
            hits_by_kind: BTreeMap::from([
                ((Node::One, "netfilter".to_owned()), 4200),
                ((Node::Two, "netfilter".to_owned()), 3800),
                ((Node::Two, "consumed".to_owned()), 1000),
            ]),
            ..Default::default()
        };
        let probes = ProbeCosts {
            by_kind: BTreeMap::from([(
                "netfilter".to_owned(),
                KindCost {
                    per_run_ns: Interval {
                        median: 30.0,
                        lo: 20.0,
                        hi: 45.0,
                    },
                    source: ProbeSource::Calibration,
                },
            )]),
            spread: None,
        };
        let t = by_category(&step, 1000, Statistic::Median, Some(&probes));
        assert_eq!(t[&(Node::One, Category::Filter)], 21.0);
        assert_eq!(t[&(Node::Two, Category::Filter)], 2223.0);
        // 8000 netfilter runs over 1000 RTTs, 30 (20..45) ns each; `consumed` left out.
        assert_eq!(
            probes_per_event(&step, 1000, &probes),
            Interval {
                median: 240.0,
                lo: 160.0,
                hi: 360.0
            }
        );
    }

    /// Node 1's agent attached a quarter of the time: its 500 passes stand for 2000.
    #[test]
    fn a_partly_covered_node_counts_for_the_whole_step() {
        let step = MergedStep {
            segments: vec![
                seg(Node::One, Stage::Veth, 992, 500, 1000.0),
                seg(Node::Two, Stage::Veth, 992, 2000, 1000.0),
            ],
            coverage: BTreeMap::from([(Node::One, 0.25)]),
            ..Default::default()
        };
        let t = by_category(&step, 1000, Statistic::Mean, None);
        assert_eq!(t[&(Node::One, Category::Veth)], 2000.0);
        assert_eq!(t[&(Node::Two, Category::Veth)], 2000.0);
    }
}
