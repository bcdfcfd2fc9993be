//! The gauge (`CP_NF_GAUGE`): a netfilter checkpoint one priority after another on FORWARD,
//! with no hook function between the two. Its segment holds netprof and nothing else: the end
//! of one netfilter run after its clock read, the hook walking to its next entry, the start of
//! the next run up to its clock read. That is what every segment between two netfilter points
//! holds of netprof, so a step's netfilter runs are taken out of its segments at the gauge's
//! time in that step: measured where those segments were, under the same load.
//!
//! The calibration, on a lab of its own minutes away, measures what a run costs the whole
//! event (its dispatch, body and the cache misses it causes after it), which is more than a
//! run leaves in the two segments it separates: taken off every bracket, it took more than
//! netprof was there, and the ground-truth checks of CPU per request came out far above their
//! predictions (docs/report.md). What a run costs beyond what it leaves in a segment stays in
//! the step's in-pass measurement, shared by every segment (`in_pass_cost`).

use super::merge::{Hist, MergedStep, SegmentKind};
use super::stage_time::Statistic;

/// Fewer gauge passes than this in a step give no gauge: too few for a median.
pub const MIN_PASSES: u64 = 100;

/// The gauge's typical time in `step`, `None` when the step crossed it too rarely. Both
/// nodes' passes are pooled per direction (the same two programs in a row wherever they run),
/// and the directions' typical times are averaged by their passes: at pings far apart a
/// request's pass meets cold programs and its reply's, microseconds later, warm ones several
/// times cheaper, and the median of both pooled would land on whichever mode has one pass
/// more. The average is what a pass leaves on the RTT, as a calibrated run is.
pub fn typical_ns(step: &MergedStep, statistic: Statistic) -> Option<f64> {
    let mut by_direction: [Hist; 2] = Default::default();
    for seg in step.of_kind(SegmentKind::Gauge) {
        by_direction[usize::from(seg.inbound)].merge(&seg.hist);
    }
    let passes: u64 = by_direction.iter().map(|h| h.count).sum();
    if passes < MIN_PASSES {
        return None;
    }
    let weighted: f64 = by_direction
        .iter()
        .filter(|h| h.count > 0)
        .map(|h| {
            let typical = match statistic {
                Statistic::Median => h.summary().p50_ns as f64,
                Statistic::Mean => h.mean_ns(),
            };
            typical * h.count as f64
        })
        .sum();
    Some(weighted / passes as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::stages::Stage;
    use crate::report::merge::MergedSegment;
    use crate::rundir::Node;

    fn gauge(node: Node, ns: u64, count: u64) -> MergedSegment {
        directed(node, false, ns, count)
    }

    fn directed(node: Node, inbound: bool, ns: u64, count: u64) -> MergedSegment {
        MergedSegment {
            node,
            from: "nf FORWARD -99".into(),
            to: "nf FORWARD -98 gauge".into(),
            from_kind: "netfilter".into(),
            to_kind: "netfilter".into(),
            stage: Stage::Gauge,
            kind: SegmentKind::Gauge,
            inbound,
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
    fn cold_and_warm_directions_are_averaged_not_mixed() {
        // 10 ms pings: 100 request passes at 700 ns, 100 reply passes at 100 ns (and one more
        // request pass): the pooled median would be 700; each pass leaves 400 on average.
        let (cold, warm) = (
            directed(Node::One, false, 700, 101),
            directed(Node::One, true, 100, 100),
        );
        // Each direction's median as the agent's buckets give it (about 700 and 100).
        let p50 = |s: &MergedSegment| s.hist.summary().p50_ns as f64;
        let want = (p50(&cold) * 101.0 + p50(&warm) * 100.0) / 201.0;
        assert!((390.0..410.0).contains(&want), "{want}");
        let step = MergedStep {
            segments: vec![cold, warm],
            ..Default::default()
        };
        let ns = typical_ns(&step, Statistic::Median).unwrap();
        assert!((ns - want).abs() < 1e-9, "{ns} against {want}");
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
