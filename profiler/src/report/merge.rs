//! One benchmark step's agent reports (one per node) gathered into one profile: each node's
//! segments stay that node's (both directions of one segment on one node are one histogram;
//! several reports of one node, e.g. a validation's rounds, add bucket counts: percentiles are
//! recomputed from the merged buckets, never averaged), drops and counters over the nodes.
//!
//! Before merging, each segment is sorted into what it is:
//! - `Path`: one packet moving from one checkpoint to the next: the time attribution adds up;
//! - `Overlap`: ending at `consumed` (the skb freed after delivery, or after transmission on the
//!   other node): that time runs alongside later segments (the reply is sent before the request
//!   is freed; a transmitted skb lives on in the peer node), so adding it would count it twice;
//! - `Reuse`: two different packets that happened to share a `struct sk_buff` address (an skb
//!   freed without a tracepoint, e.g. recycled by TCP, and reused): a packet cannot go backwards
//!   on a device, come back after leaving the node, or leave a socket's delivery point and appear
//!   as a new local or incoming packet. These are counted and shown, never attributed.

use std::collections::BTreeMap;

use profiler_common::datapath::{bucket_of, Histogram};

use crate::agent::collect::summarize;
use crate::agent::report::{AgentReport, CheckpointReport, Counters, SegmentReport};
use crate::agent::stages::Stage;
use crate::rundir::Node;

/// A latency distribution in the agent's log-linear buckets, mergeable by adding counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hist {
    /// Bucket low bound (ns) -> count.
    pub buckets: BTreeMap<u64, u64>,
    pub count: u64,
    /// Exact sum of the recorded values (mean × count of each part), in ns.
    pub sum_ns: f64,
}

/// Percentiles of a [`Hist`], computed like the agent computes them.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct HistSummary {
    pub count: u64,
    pub mean_ns: f64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
}

impl Hist {
    pub fn add_segment(&mut self, segment: &SegmentReport) {
        for [low, count] in &segment.buckets {
            *self.buckets.entry(*low).or_default() += count;
        }
        self.count += segment.count;
        self.sum_ns += segment.mean_ns * segment.count as f64;
    }

    pub fn merge(&mut self, other: &Hist) {
        for (low, count) in &other.buckets {
            *self.buckets.entry(*low).or_default() += count;
        }
        self.count += other.count;
        self.sum_ns += other.sum_ns;
    }

    pub fn mean_ns(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_ns / self.count as f64
        }
    }

    /// Percentiles through the agent's own code path (`collect::summarize`), so a histogram
    /// made of one node's segment has exactly that segment's p50/p90/p99.
    pub fn summary(&self) -> HistSummary {
        let mut hist = Histogram::default();
        for (low, count) in &self.buckets {
            hist.buckets[bucket_of(*low)] += count;
        }
        hist.count = self.count;
        hist.sum_ns = self.sum_ns.round().max(0.0) as u64;
        let s = summarize(&hist);
        HistSummary {
            count: self.count,
            mean_ns: self.mean_ns(),
            p50_ns: s.p50_ns,
            p90_ns: s.p90_ns,
            p99_ns: s.p99_ns,
        }
    }
}

/// What a segment's time is (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SegmentKind {
    Path,
    Overlap,
    Reuse,
    /// A netfilter point to the gauge right after it: netprof's own time (`report::gauge`).
    Gauge,
}

/// A checkpoint as the validity rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Point<'a> {
    Device {
        label: &'a str,
        role: &'a str,
        kind: &'a str,
    },
    Netfilter {
        hook: &'a str,
        priority: i32,
    },
    Consumed,
    Unknown,
}

impl<'a> Point<'a> {
    fn of(cp: Option<&'a CheckpointReport>) -> Point<'a> {
        let Some(cp) = cp else { return Point::Unknown };
        match cp.kind.as_str() {
            "consumed" => Point::Consumed,
            "netfilter" => match (&cp.hook, cp.priority) {
                (Some(hook), Some(priority)) => Point::Netfilter { hook, priority },
                _ => Point::Unknown,
            },
            kind => Point::Device {
                label: cp.device.as_deref().unwrap_or(&cp.name),
                role: cp.role.as_deref().unwrap_or(""),
                kind,
            },
        }
    }

    fn is_rx(kind: &str) -> bool {
        matches!(kind, "backlog" | "dev-rx" | "tc-ingress")
    }

    fn device_rx(&self, want_role: &str) -> bool {
        matches!(self, Point::Device { role, kind, .. } if *role == want_role && Point::is_rx(kind))
    }

    fn device_tx(&self, want_role: &str) -> bool {
        matches!(self, Point::Device { role, kind, .. } if *role == want_role && !Point::is_rx(kind))
    }
}

/// Sorts the segment `from -> to` (checkpoints as the node's report lists them).
pub fn classify_segment(
    from: Option<&CheckpointReport>,
    to: Option<&CheckpointReport>,
) -> SegmentKind {
    let (a, b) = (Point::of(from), Point::of(to));
    if b == Point::Consumed {
        return SegmentKind::Overlap;
    }
    let ok = |valid: bool| {
        if valid {
            SegmentKind::Path
        } else {
            SegmentKind::Reuse
        }
    };
    match (a, b) {
        (Point::Consumed, _) => SegmentKind::Reuse,
        (Point::Unknown, _) | (_, Point::Unknown) => SegmentKind::Path,
        (
            Point::Device {
                label: la,
                kind: ka,
                ..
            },
            Point::Device {
                label: lb,
                kind: kb,
                ..
            },
        ) if la == lb => {
            // Only forward within one device: backlog -> dev-rx -> tc-ingress,
            // tc-egress -> dev-tx.
            ok(matches!(
                (ka, kb),
                ("backlog", "dev-rx" | "tc-ingress")
                    | ("dev-rx", "tc-ingress")
                    | ("tc-egress", "dev-tx")
            ))
        }
        // Past the uplink's transmit side the packet is on the other node.
        _ if a.device_tx("uplink") => SegmentKind::Reuse,
        // Delivered into a pod, whose stack is not watched: only `consumed` can follow.
        _ if a.device_rx("pod-eth") => SegmentKind::Reuse,
        // Out of a veth end, the next checkpoint is the other end.
        _ if a.device_tx("host-veth") => ok(b.device_rx("pod-eth")),
        _ if a.device_tx("pod-eth") => ok(b.device_rx("host-veth")),
        // Packets enter the node on the uplink and leave a pod through its eth0 only.
        _ if b.device_rx("uplink") || b.device_tx("pod-eth") => SegmentKind::Reuse,
        (
            Point::Netfilter {
                hook: "LOCAL_IN",
                priority: pa,
            },
            _,
        ) => ok(match b {
            Point::Netfilter {
                hook: "LOCAL_IN",
                priority: pb,
            } => pb > pa,
            // The outer packet of a VXLAN tunnel delivered to the vxlan socket: decapsulation.
            _ => b.device_rx("vxlan"),
        }),
        (
            _,
            Point::Netfilter {
                hook: "LOCAL_OUT",
                priority: pb,
            },
        ) => ok(match a {
            Point::Netfilter {
                hook: "LOCAL_OUT",
                priority: pa,
            } => pb > pa,
            // Encapsulation: the inner packet becomes the outer one at LOCAL_OUT.
            _ => a.device_tx("vxlan"),
        }),
        (
            Point::Netfilter {
                hook: ha,
                priority: pa,
            },
            Point::Netfilter {
                hook: hb,
                priority: pb,
            },
        ) if ha == hb => ok(pb > pa),
        _ => SegmentKind::Path,
    }
}

/// A checkpoint name without the node: pod devices (`NETNS:eth0`) become `pod:eth0`, so the
/// client pod's and the server pod's segments merge.
pub fn neutral_name(cp: Option<&CheckpointReport>, fallback: &str) -> String {
    match cp {
        Some(cp) => match cp.device.as_deref() {
            Some(device) if device.contains(':') => {
                let dev = device.rsplit(':').next().unwrap_or(device);
                format!("pod:{dev}{}", &cp.name[device.len().min(cp.name.len())..])
            }
            _ => cp.name.clone(),
        },
        None => fallback.to_owned(),
    }
}

/// One node's agent report of a step, with what it covers.
#[derive(Debug, Clone, Copy)]
pub struct NodeDoc<'a> {
    pub node: Node,
    pub report: &'a AgentReport,
    /// The agent followed 1 in `sample` benchmark flows (1: all).
    pub sample: u32,
}

/// One segment of the merged step, on one node (nodes are never mixed: one node's segment
/// may cost thirty times the other's, and the median of such a mixture is neither).
#[derive(Debug, Clone, PartialEq)]
pub struct MergedSegment {
    pub node: Node,
    pub from: String,
    pub to: String,
    /// The checkpoint kinds at its ends (`tc-ingress`, `netfilter`, ...; empty if unknown).
    pub from_kind: String,
    pub to_kind: String,
    pub stage: Stage,
    pub kind: SegmentKind,
    /// The passes of packets that entered the node on its uplink (`SegmentReport::inbound`):
    /// kept apart, so each direction's typical time counts once per pass.
    pub inbound: bool,
    pub hist: Hist,
}

/// Drops at one place for one reason, both nodes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MergedDrop {
    /// The last checkpoint the packet passed (node-neutral).
    pub after: String,
    pub reason: String,
    pub count: u64,
    pub nodes: Vec<Node>,
    /// The packet had left this node on the uplink: the kernel freed it on the other node,
    /// whose agent counts it too (the tracepoint is global), so this is the same drop again.
    pub on_other_node: bool,
}

/// One step (e.g. pod path, ping) of one mode: each node's segments, and what the nodes saw.
#[derive(Debug, Clone, Default)]
pub struct MergedStep {
    pub segments: Vec<MergedSegment>,
    pub counters: Counters,
    pub drops: Vec<MergedDrop>,
    /// Tracked packets seen per node and checkpoint kind (probe runs).
    pub hits_by_kind: BTreeMap<(Node, String), u64>,
    pub nodes: Vec<Node>,
    /// The share of the step's events each node's counts cover: below 1 when its agent was
    /// duty-cycled (attached part of the time) or sampled flows (1 in N). Absent: all.
    pub coverage: BTreeMap<Node, f64>,
}

impl MergedStep {
    /// `events` (pings, requests) of the whole step, as many as `node`'s counts cover:
    /// per-event figures divide that node's counts by this.
    pub fn covered(&self, node: Node, events: u64) -> f64 {
        events.max(1) as f64 * self.coverage.get(&node).copied().unwrap_or(1.0)
    }

    pub fn of_kind(&self, kind: SegmentKind) -> impl Iterator<Item = &MergedSegment> {
        self.segments.iter().filter(move |s| s.kind == kind)
    }

    /// Whether any node's counts stand for more events than they saw.
    pub fn is_partial(&self) -> bool {
        self.coverage.values().any(|c| *c < 1.0)
    }
}

fn add_counters(total: &mut Counters, c: &Counters) {
    total.admitted += c.admitted;
    total.completed += c.completed;
    total.dropped += c.dropped;
    total.abandoned += c.abandoned;
    total.slot_busy += c.slot_busy;
    total.journey_long += c.journey_long;
    total.journey_log_full += c.journey_log_full;
    total.read_errors += c.read_errors;
    total.retransmits += c.retransmits;
    total.repeats += c.repeats;
    total.sampled_out += c.sampled_out;
    total.out_of_order += c.out_of_order;
}

/// Merges the reports of one step: segments per node (several reports of one node, e.g. the
/// rounds of a validation, add up), drops and counters over the nodes.
pub fn merge_step<'a>(docs: impl IntoIterator<Item = NodeDoc<'a>>) -> MergedStep {
    let mut step = MergedStep::default();
    let mut segments: BTreeMap<(Node, String, String, Stage, SegmentKind, bool), MergedSegment> =
        BTreeMap::new();
    let mut drops: BTreeMap<(String, String), MergedDrop> = BTreeMap::new();
    let mut max_retransmits = 0;
    let mut coverage: BTreeMap<Node, Vec<f64>> = BTreeMap::new();
    for doc in docs {
        let (node, report) = (doc.node, doc.report);
        if !step.nodes.contains(&node) {
            step.nodes.push(node);
        }
        coverage
            .entry(node)
            .or_default()
            .push(report.attached_fraction() / f64::from(doc.sample.max(1)));
        let cps: BTreeMap<u16, &CheckpointReport> =
            report.checkpoints.iter().map(|c| (c.id, c)).collect();
        for cp in &report.checkpoints {
            *step
                .hits_by_kind
                .entry((node, cp.kind.clone()))
                .or_default() += cp.hits;
        }
        for seg in &report.segments {
            let (from_cp, to_cp) = (cps.get(&seg.from).copied(), cps.get(&seg.to).copied());
            let kind = if seg.stage == Stage::Gauge {
                SegmentKind::Gauge
            } else {
                classify_segment(from_cp, to_cp)
            };
            let from = neutral_name(from_cp, &seg.from_name);
            let to = neutral_name(to_cp, &seg.to_name);
            segments
                .entry((node, from.clone(), to.clone(), seg.stage, kind, seg.inbound))
                .or_insert_with(|| MergedSegment {
                    node,
                    from,
                    to,
                    from_kind: from_cp.map(|c| c.kind.clone()).unwrap_or_default(),
                    to_kind: to_cp.map(|c| c.kind.clone()).unwrap_or_default(),
                    stage: seg.stage,
                    kind,
                    inbound: seg.inbound,
                    hist: Hist::default(),
                })
                .hist
                .add_segment(seg);
        }
        add_counters(&mut step.counters, &report.counters);
        // `tcp:tcp_retransmit_skb` is global: every agent counts every retransmit between
        // benchmark endpoints, wherever it happened. Counted once.
        max_retransmits = max_retransmits.max(report.counters.retransmits);
        for drop in &report.drops {
            let cp = cps.get(&drop.checkpoint).copied();
            let after = neutral_name(cp, &drop.checkpoint_name);
            let on_other_node = Point::of(cp).device_tx("uplink");
            let entry = drops
                .entry((after.clone(), drop.reason_name.clone()))
                .or_insert_with(|| MergedDrop {
                    after,
                    reason: drop.reason_name.clone(),
                    count: 0,
                    nodes: Vec::new(),
                    on_other_node,
                });
            entry.count += drop.count;
            if !entry.nodes.contains(&node) {
                entry.nodes.push(node);
            }
        }
    }
    step.counters.retransmits = max_retransmits;
    step.coverage = coverage
        .into_iter()
        .filter_map(|(node, parts)| {
            let mean = parts.iter().sum::<f64>() / parts.len() as f64;
            (mean < 1.0).then_some((node, mean))
        })
        .collect();
    step.segments = segments.into_values().collect();
    step.drops = drops.into_values().collect();
    step
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::report::SCHEMA;

    fn cp(
        id: u16,
        name: &str,
        kind: &str,
        device: Option<&str>,
        role: Option<&str>,
        hook: Option<&str>,
        priority: Option<i32>,
    ) -> CheckpointReport {
        CheckpointReport {
            id,
            name: name.into(),
            kind: kind.into(),
            device: device.map(Into::into),
            role: role.map(Into::into),
            hook: hook.map(Into::into),
            priority,
            via: None,
            hits: 1,
        }
    }

    fn dev(id: u16, device: &str, role: &str, kind: &str) -> CheckpointReport {
        cp(
            id,
            &format!("{device} {kind}"),
            kind,
            Some(device),
            Some(role),
            None,
            None,
        )
    }

    fn nf(id: u16, hook: &str, priority: i32) -> CheckpointReport {
        cp(
            id,
            &format!("nf {hook} {priority}"),
            "netfilter",
            None,
            None,
            Some(hook),
            Some(priority),
        )
    }

    #[test]
    fn real_hops_are_path_and_impossible_ones_are_reuse() {
        let consumed = cp(62, "consumed", "consumed", None, None, None, None);
        let eno_rx = dev(64, "eno1", "uplink", "dev-rx");
        let eno_in = dev(65, "eno1", "uplink", "tc-ingress");
        let eno_out = dev(66, "eno1", "uplink", "tc-egress");
        let eno_tx = dev(67, "eno1", "uplink", "dev-tx");
        let vx_rx = dev(76, "flannel.1", "vxlan", "dev-rx");
        let vx_tx = dev(79, "flannel.1", "vxlan", "dev-tx");
        let veth_rx = dev(72, "veth-pod", "host-veth", "dev-rx");
        let veth_tx = dev(75, "veth-pod", "host-veth", "dev-tx");
        let pod_rx = dev(80, "lab-pod1:eth0", "pod-eth", "dev-rx");
        let pod_tx = dev(83, "lab-pod1:eth0", "pod-eth", "dev-tx");
        let eno_backlog = dev(68, "eno1", "uplink", "backlog");
        let veth_backlog = dev(78, "veth-pod", "host-veth", "backlog");
        let pod_backlog = dev(88, "lab-pod1:eth0", "pod-eth", "backlog");
        let pod_in = dev(85, "lab-pod1:eth0", "pod-eth", "tc-ingress");
        let in_101 = nf(14, "LOCAL_IN", 101);
        let in_m99 = nf(12, "LOCAL_IN", -99);
        let out_m201 = nf(23, "LOCAL_OUT", -201);
        let out_m199 = nf(24, "LOCAL_OUT", -199);
        let pre_m201 = nf(2, "PRE_ROUTING", -201);
        let pre_m199 = nf(3, "PRE_ROUTING", -199);
        let k = |a: &CheckpointReport, b: &CheckpointReport| classify_segment(Some(a), Some(b));
        use SegmentKind::*;
        for (a, b) in [
            (&eno_rx, &eno_in),
            (&eno_out, &eno_tx),
            (&eno_in, &pre_m201),
            (&pre_m201, &pre_m199),
            (&in_m99, &in_101),
            (&in_101, &vx_rx),
            (&vx_tx, &out_m201),
            (&out_m201, &out_m199),
            (&pod_tx, &veth_rx),
            (&veth_tx, &pod_rx),
            // A veth crossing ends at the peer's backlog; the wait follows on that device.
            (&pod_tx, &veth_backlog),
            (&veth_backlog, &veth_rx),
            (&veth_tx, &pod_backlog),
            (&pod_backlog, &pod_in),
            (&eno_backlog, &eno_in),
        ] {
            assert_eq!(k(a, b), Path, "{} -> {}", a.name, b.name);
        }
        assert_eq!(k(&eno_tx, &consumed), Overlap);
        assert_eq!(k(&pod_rx, &consumed), Overlap);
        for (a, b) in [
            (&eno_in, &eno_rx),
            (&eno_tx, &eno_rx),
            (&eno_in, &eno_out),
            (&eno_tx, &out_m201),
            (&in_101, &eno_rx),
            (&in_101, &out_m201),
            (&pre_m199, &pre_m201),
            (&pod_rx, &pod_tx),
            (&veth_tx, &eno_out),
            (&consumed, &eno_rx),
            (&eno_in, &eno_backlog),
            (&eno_out, &eno_backlog),
            (&pod_in, &pod_backlog),
        ] {
            assert_eq!(k(a, b), Reuse, "{} -> {}", a.name, b.name);
        }
        assert_eq!(neutral_name(Some(&pod_rx), "x"), "pod:eth0 dev-rx");
        assert_eq!(neutral_name(Some(&eno_rx), "x"), "eno1 dev-rx");
        assert_eq!(neutral_name(None, "checkpoint 9"), "checkpoint 9");
    }

    fn report(node: &str, segments: Vec<SegmentReport>) -> AgentReport {
        AgentReport {
            schema: SCHEMA.into(),
            node: node.into(),
            netns: node.into(),
            kernel: "6.18".into(),
            attach_ms: 1.0,
            elapsed_s: 1.0,
            flows: Vec::new(),
            sample: 1,
            checkpoints: vec![
                dev(64, "eno1", "uplink", "dev-rx"),
                dev(65, "eno1", "uplink", "tc-ingress"),
            ],
            segments,
            counters: Counters {
                admitted: 3,
                ..Default::default()
            },
            drops: vec![],
            not_measured: vec![],
            programs: vec![],
            stats_s: None,
            duty: None,
        }
    }

    fn doc(node: Node, report: &AgentReport) -> NodeDoc<'_> {
        NodeDoc {
            node,
            report,
            sample: 1,
        }
    }

    #[test]
    fn duty_cycled_and_sampled_nodes_cover_part_of_the_step() {
        let (a, b) = (report("node1", vec![]), report("node2", vec![]));
        let full = merge_step([doc(Node::One, &a), doc(Node::Two, &b)]);
        assert!(full.coverage.is_empty() && !full.is_partial());
        assert_eq!(full.covered(Node::One, 200), 200.0);
        let duty = |attached_s| crate::agent::report::DutyReport {
            percent: 10.0,
            period_ms: 1000,
            windows: 2,
            attached_s,
            expedited_edges: 4,
            edges: 4,
        };
        let (mut a, mut b) = (a, b);
        a.duty = Some(duty(0.1));
        b.duty = Some(duty(0.25));
        let step = merge_step([doc(Node::One, &a), doc(Node::Two, &b)]);
        // Each node's counts stand for its own share: 200 pings, 20 and 50 of them seen.
        assert_eq!(step.covered(Node::One, 200), 20.0);
        assert_eq!(step.covered(Node::Two, 200), 50.0);
        // 1 in 4 flows followed, attached throughout: a quarter of the events.
        let plain = report("node1", vec![]);
        let sampled = merge_step([NodeDoc {
            node: Node::One,
            report: &plain,
            sample: 4,
        }]);
        assert_eq!(sampled.covered(Node::One, 200), 50.0);
    }

    fn segment(buckets: Vec<[u64; 2]>, mean_ns: f64, p50_ns: u64, p99_ns: u64) -> SegmentReport {
        SegmentReport {
            inbound: false,
            from: 64,
            to: 65,
            from_name: "eno1 dev-rx".into(),
            to_name: "eno1 tc-ingress".into(),
            stage: Stage::Uplink,
            count: buckets.iter().map(|b| b[1]).sum(),
            mean_ns,
            p50_ns,
            p90_ns: p99_ns,
            p99_ns,
            buckets,
        }
    }

    #[test]
    fn nodes_are_kept_apart_and_one_nodes_reports_add_buckets() {
        // node1: 90 packets at 1000 ns; node2: 10 at 9000 ns. Mixed, the median would be
        // 1000 for both; kept apart, each node keeps its own.
        let one = report("node1", vec![segment(vec![[992, 90]], 1000.0, 1000, 1000)]);
        let two = report("node2", vec![segment(vec![[8960, 10]], 9000.0, 9000, 9000)]);
        let step = merge_step([doc(Node::One, &one), doc(Node::Two, &two)]);
        assert_eq!(step.segments.len(), 2);
        let (s1, s2) = (&step.segments[0], &step.segments[1]);
        assert_eq!((s1.node, s2.node), (Node::One, Node::Two));
        assert_eq!((s1.hist.count, s2.hist.count), (90, 10));
        assert_eq!(s1.hist.summary().p50_ns, 1000);
        assert!((9000..9100).contains(&s2.hist.summary().p50_ns));
        assert_eq!(step.counters.admitted, 6);
        assert_eq!(step.hits_by_kind[&(Node::Two, "tc-ingress".to_owned())], 1);
        // Two rounds of node1: one histogram, 90 at 1000 ns and 30 at 2000 ns.
        let again = report("node1", vec![segment(vec![[1984, 30]], 2000.0, 2000, 2000)]);
        let step = merge_step([doc(Node::One, &one), doc(Node::One, &again)]);
        assert_eq!(step.segments.len(), 1);
        let s = step.segments[0].hist.summary();
        assert_eq!((s.count, s.p50_ns), (120, 1000));
        // (90 x 1000 + 30 x 2000) / 120
        assert_eq!(s.mean_ns, 1250.0);
    }

    /// One node's round trips cross the same two checkpoints twice: the request on cold
    /// caches (100 passes at 6000 ns), the reply warm (100 at 400 ns). Kept apart by
    /// direction, the step's time per RTT is about 6000 + 400 ns (bucket middles); pooled into
    /// one histogram, its median (the lower mode's edge, about 400 ns) × 2 passes gave under
    /// 1000.
    #[test]
    fn a_request_and_its_reply_through_the_same_checkpoints_are_kept_apart() {
        use crate::report::stage_time::{by_category, Statistic};
        let cold = segment(vec![[5888, 100]], 6000.0, 6000, 6000);
        let warm = SegmentReport {
            inbound: true,
            ..segment(vec![[400, 100]], 400.0, 400, 400)
        };
        let node = report("node1", vec![cold.clone(), warm.clone()]);
        let step = merge_step([doc(Node::One, &node)]);
        assert_eq!(step.segments.len(), 2);
        assert_eq!(
            step.segments.iter().map(|s| s.inbound).collect::<Vec<_>>(),
            [false, true]
        );
        let per_rtt = by_category(&step, 100, Statistic::Median, None);
        let uplink = per_rtt[&(Node::One, crate::report::category::Category::Uplink)];
        assert!((6300.0..6500.0).contains(&uplink), "{uplink}");

        let pooled = report(
            "node1",
            vec![
                cold,
                SegmentReport {
                    inbound: false,
                    ..warm
                },
            ],
        );
        let step = merge_step([doc(Node::One, &pooled)]);
        assert_eq!(step.segments.len(), 1);
        let per_rtt = by_category(&step, 100, Statistic::Median, None);
        assert!(per_rtt[&(Node::One, crate::report::category::Category::Uplink)] < 1000.0);
    }

    #[test]
    fn one_node_keeps_the_agents_own_percentiles() {
        let seg = segment(vec![[992, 50], [1024, 30], [2048, 20]], 1300.0, 0, 0);
        let mut hist = Histogram::default();
        for [low, count] in &seg.buckets {
            hist.buckets[bucket_of(*low)] = *count;
        }
        hist.count = 100;
        hist.sum_ns = 130_000;
        let agent = summarize(&hist);
        let mut merged = Hist::default();
        merged.add_segment(&seg);
        let s = merged.summary();
        assert_eq!(
            (s.p50_ns, s.p90_ns, s.p99_ns),
            (agent.p50_ns, agent.p90_ns, agent.p99_ns)
        );
    }
}
