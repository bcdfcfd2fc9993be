//! A measured delta split into stages, per node, and what is left over.
//!
//! Each (node, stage) time is rounded to whole nanoseconds once; a stage's time is the sum of
//! its nodes', the explained part the sum of the stages'. What the stages do not explain is
//! shown, never hidden, and may be negative when they add up to more than was measured.

use std::collections::BTreeMap;

use serde::Serialize;

use super::category::Category;
use super::stage_time::Times;
use crate::rundir::Node;

/// Which measured delta a split divides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Measure {
    /// The ping RTT's p50 of the benchmarks run with no agent attached.
    CleanP50,
    /// The profiled run's p50 less netprof's probes per RTT (no run without agents to use).
    ProfiledP50LessProbes,
    /// The profiled run's p50, netprof included.
    ProfiledP50,
    /// The profiled run's p99.
    ProfiledP99,
    /// The cpu time per request the measured QPS imply (`cpus / QPS`).
    CpuPerRequest,
}

impl Measure {
    pub fn label(self) -> &'static str {
        match self {
            Measure::CleanP50 => "p50 without agents",
            Measure::ProfiledP50LessProbes => "profiled p50 less netprof's probes",
            Measure::ProfiledP50 => "profiled p50",
            Measure::ProfiledP99 => "profiled p99",
            Measure::CpuPerRequest => "cpu time per request",
        }
    }
}

/// How each segment's time was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SegmentTime {
    Median,
    MedianLessProbes,
    Mean,
    MeanLessProbes,
}

impl SegmentTime {
    /// How a stage's time is made, in words.
    pub fn explain(self) -> &'static str {
        match self {
            SegmentTime::Median => "each segment's median × passes per event",
            SegmentTime::MedianLessProbes => {
                "each segment's median less the netprof probe it holds (half a probe run at each end) × passes per event"
            }
            SegmentTime::Mean => "each segment's mean × passes per event",
            SegmentTime::MeanLessProbes => {
                "each segment's mean less the netprof probe it holds × passes per event"
            }
        }
    }
}

/// One stage on one node.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NodeShare {
    pub node: Node,
    pub mode_ns: i64,
    pub baseline_ns: i64,
    /// `mode_ns - baseline_ns`.
    pub delta_ns: i64,
}

/// One stage, both nodes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageShare {
    pub stage: Category,
    pub mode_ns: i64,
    pub baseline_ns: i64,
    pub delta_ns: i64,
    /// Node 1, node 2 (their sums are the three fields above).
    pub by_node: Vec<NodeShare>,
}

impl StageShare {
    pub fn node(&self, node: Node) -> i64 {
        self.by_node
            .iter()
            .find(|n| n.node == node)
            .map_or(0, |n| n.delta_ns)
    }
}

/// A measured delta split into stages and the unexplained rest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Split {
    pub measure: Measure,
    pub segment_time: SegmentTime,
    pub mode_ns: i64,
    pub baseline_ns: i64,
    pub delta_ns: i64,
    /// Every category, in display order (zero where neither side has it).
    pub stages: Vec<StageShare>,
    pub explained_ns: i64,
    /// The explained part on each node.
    pub explained_by_node: Vec<NodeShare>,
    pub unexplained_ns: i64,
    /// Shares of the delta in percent; `None` when the delta is under [`MIN_SHARE_DELTA_NS`].
    pub explained_pct: Option<f64>,
    pub unexplained_pct: Option<f64>,
}

/// Below this measured delta the shares are not given: a ping p50 moves by a few µs from one
/// run to the next, so a share of such a delta says nothing.
pub const MIN_SHARE_DELTA_NS: i64 = 10_000;

fn node_share(node: Node, mode: i64, baseline: i64) -> NodeShare {
    NodeShare {
        node,
        mode_ns: mode,
        baseline_ns: baseline,
        delta_ns: mode - baseline,
    }
}

fn rounded(times: &Times<Category>, node: Node, stage: Category) -> i64 {
    times.get(&(node, stage)).copied().unwrap_or(0.0).round() as i64
}

impl Split {
    /// Splits `mode_ns - baseline_ns` by the stage times (ns per event, per node).
    pub fn new(
        measure: Measure,
        segment_time: SegmentTime,
        mode_ns: i64,
        baseline_ns: i64,
        mode: &Times<Category>,
        baseline: &Times<Category>,
    ) -> Split {
        let stages: Vec<StageShare> = Category::ALL
            .iter()
            .map(|&stage| {
                let by_node: Vec<NodeShare> = Node::BOTH
                    .iter()
                    .map(|&n| node_share(n, rounded(mode, n, stage), rounded(baseline, n, stage)))
                    .collect();
                let (m, b) = by_node
                    .iter()
                    .fold((0, 0), |(m, b), n| (m + n.mode_ns, b + n.baseline_ns));
                StageShare {
                    stage,
                    mode_ns: m,
                    baseline_ns: b,
                    delta_ns: m - b,
                    by_node,
                }
            })
            .collect();
        Split::of_stages(measure, segment_time, mode_ns, baseline_ns, stages)
    }

    fn of_stages(
        measure: Measure,
        segment_time: SegmentTime,
        mode_ns: i64,
        baseline_ns: i64,
        stages: Vec<StageShare>,
    ) -> Split {
        let delta_ns = mode_ns - baseline_ns;
        let explained_ns: i64 = stages.iter().map(|s| s.delta_ns).sum();
        let explained_by_node = Node::BOTH
            .iter()
            .map(|&n| {
                let (m, b) = stages
                    .iter()
                    .flat_map(|s| &s.by_node)
                    .filter(|x| x.node == n)
                    .fold((0, 0), |(m, b), x| (m + x.mode_ns, b + x.baseline_ns));
                node_share(n, m, b)
            })
            .collect();
        let unexplained_ns = delta_ns - explained_ns;
        let pct = |part: i64| {
            (delta_ns.abs() >= MIN_SHARE_DELTA_NS).then(|| part as f64 / delta_ns as f64 * 100.0)
        };
        Split {
            measure,
            segment_time,
            mode_ns,
            baseline_ns,
            delta_ns,
            explained_pct: pct(explained_ns),
            unexplained_pct: pct(unexplained_ns),
            stages,
            explained_ns,
            explained_by_node,
            unexplained_ns,
        }
    }

    /// A stage's delta, both nodes.
    pub fn stage(&self, stage: Category) -> i64 {
        self.stages
            .iter()
            .find(|s| s.stage == stage)
            .map_or(0, |s| s.delta_ns)
    }

    /// The median over several splits of the same measure (repeats of one run): each
    /// (node, stage) time and each measured value the median of its own values.
    pub fn median_of(splits: &[&Split]) -> Option<Split> {
        let first = splits.first()?;
        let med = |values: Vec<i64>| median_i64(values);
        let stages = first
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let by_node: Vec<NodeShare> = s
                    .by_node
                    .iter()
                    .enumerate()
                    .map(|(j, n)| {
                        let pick = |f: fn(&NodeShare) -> i64| {
                            med(splits.iter().map(|x| f(&x.stages[i].by_node[j])).collect())
                        };
                        node_share(n.node, pick(|x| x.mode_ns), pick(|x| x.baseline_ns))
                    })
                    .collect();
                let (m, b) = by_node
                    .iter()
                    .fold((0, 0), |(m, b), n| (m + n.mode_ns, b + n.baseline_ns));
                StageShare {
                    stage: s.stage,
                    mode_ns: m,
                    baseline_ns: b,
                    delta_ns: m - b,
                    by_node,
                }
            })
            .collect();
        Some(Split::of_stages(
            first.measure,
            first.segment_time,
            med(splits.iter().map(|s| s.mode_ns).collect()),
            med(splits.iter().map(|s| s.baseline_ns).collect()),
            stages,
        ))
    }
}

/// The median of whole nanoseconds (the mean of the middle two, rounded, for an even count).
pub fn median_i64(mut values: Vec<i64>) -> i64 {
    values.sort_unstable();
    match values.len() {
        0 => 0,
        n if n % 2 == 1 => values[n / 2],
        n => ((values[n / 2 - 1] + values[n / 2]) as f64 / 2.0).round() as i64,
    }
}

/// Times of one side as a map, for building splits by hand (tests, other measures).
pub fn times(entries: &[(Node, Category, f64)]) -> Times<Category> {
    let mut out = BTreeMap::new();
    for &(node, stage, ns) in entries {
        *out.entry((node, stage)).or_insert(0.0) += ns;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-made: node 2's filter costs 2280 ns per RTT more than the baseline's, node 1's
    /// 84 ns; veth 3000 ns on node 1 only; the measured delta is 6000 ns.
    #[test]
    fn a_split_keeps_each_nodes_part() {
        let mode = times(&[
            (Node::One, Category::Filter, 84.4),
            (Node::Two, Category::Filter, 2280.0),
            (Node::One, Category::Veth, 3000.0),
        ]);
        let split = Split::new(
            Measure::CleanP50,
            SegmentTime::MedianLessProbes,
            56_000,
            50_000,
            &mode,
            &BTreeMap::new(),
        );
        let filter = &split.stages[Category::ALL
            .iter()
            .position(|c| *c == Category::Filter)
            .unwrap()];
        assert_eq!((filter.node(Node::One), filter.node(Node::Two)), (84, 2280));
        assert_eq!(filter.delta_ns, 2364);
        assert_eq!(split.stage(Category::Veth), 3000);
        assert_eq!(split.explained_ns, 5364);
        assert_eq!(split.unexplained_ns, 636);
        assert_eq!(split.explained_by_node[0].delta_ns, 3084);
        assert_eq!(split.explained_by_node[1].delta_ns, 2280);
        // 6 µs is under the 10 µs below which shares say nothing.
        assert_eq!(split.explained_pct, None);
    }

    #[test]
    fn the_median_of_repeats_is_taken_per_node_and_stage() {
        let split = |veth: f64, mode_ns: i64| {
            Split::new(
                Measure::CleanP50,
                SegmentTime::MedianLessProbes,
                mode_ns,
                40_000,
                &times(&[(Node::One, Category::Veth, veth)]),
                &BTreeMap::new(),
            )
        };
        let (a, b, c) = (
            split(9_000.0, 60_000),
            split(12_000.0, 52_000),
            split(10_000.0, 70_000),
        );
        let m = Split::median_of(&[&a, &b, &c]).unwrap();
        assert_eq!(m.stage(Category::Veth), 10_000);
        assert_eq!((m.mode_ns, m.delta_ns), (60_000, 20_000));
        assert_eq!(m.unexplained_ns, 10_000);
        assert_eq!(m.unexplained_pct, Some(50.0));
        assert_eq!(median_i64(vec![4, 1, 2, 3]), 3);
    }
}
