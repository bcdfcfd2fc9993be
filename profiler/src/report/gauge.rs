//! The gauge (`CP_NF_GAUGE`): a netfilter checkpoint one priority after another on FORWARD,
//! with no hook function between the two. Its segment holds netprof and nothing else: the end
//! of one netfilter run after its clock read, the hook walking to its next entry, the start of
//! the next run up to its clock read. That is what every segment between two netfilter points
//! holds of netprof, so a step's netfilter runs are taken out of its segments at the gauge's
//! time in that step: measured where those segments were, under the same load.
//!
//! The calibration, on a lab of its own minutes away, measures what a run costs the whole
//! event (its dispatch, body and the cache misses it causes after it); under ab that took
//! 140-180 ns off every netfilter bracket, and the ground-truth checks of CPU per request came
//! out 40-75% above their predictions. What a run costs beyond what it leaves in a segment
//! stays in the step's in-pass measurement, shared by every segment (`in_pass_cost`).

use super::merge::{Hist, MergedStep, SegmentKind};
use super::stage_time::Statistic;

/// Fewer gauge passes than this in a step give no gauge: too few for a median.
pub const MIN_PASSES: u64 = 100;

/// The gauge's typical time in `step` (both nodes' passes, both directions, pooled: the same
/// two programs in a row wherever they run), `None` when the step crossed it too rarely.
pub fn typical_ns(step: &MergedStep, statistic: Statistic) -> Option<f64> {
    let mut pooled = Hist::default();
    for seg in step.of_kind(SegmentKind::Gauge) {
        pooled.merge(&seg.hist);
    }
    (pooled.count >= MIN_PASSES).then(|| match statistic {
        Statistic::Median => pooled.summary().p50_ns as f64,
        Statistic::Mean => pooled.mean_ns(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::stages::Stage;
    use crate::report::merge::MergedSegment;
    use crate::rundir::Node;

    fn gauge(node: Node, ns: u64, count: u64) -> MergedSegment {
        MergedSegment {
            node,
            from: "nf FORWARD -99".into(),
            to: "nf FORWARD -98 gauge".into(),
            from_kind: "netfilter".into(),
            to_kind: "netfilter".into(),
            stage: Stage::Gauge,
            kind: SegmentKind::Gauge,
            inbound: false,
            hist: Hist {
                buckets: [(ns, count)].into_iter().collect(),
                count,
                sum_ns: (ns * count) as f64,
            },
        }
    }

    #[test]
    fn both_nodes_passes_are_pooled() {
        let step = MergedStep {
            segments: vec![gauge(Node::One, 60, 300), gauge(Node::Two, 100, 100)],
            ..Default::default()
        };
        assert_eq!(typical_ns(&step, Statistic::Median), Some(60.0));
        assert_eq!(typical_ns(&step, Statistic::Mean), Some(70.0));
    }

    #[test]
    fn a_step_that_rarely_crossed_it_has_no_gauge() {
        let step = MergedStep {
            segments: vec![gauge(Node::One, 60, MIN_PASSES - 1)],
            ..Default::default()
        };
        assert_eq!(typical_ns(&step, Statistic::Median), None);
        assert_eq!(typical_ns(&MergedStep::default(), Statistic::Mean), None);
    }
}
