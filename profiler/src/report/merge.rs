//! One benchmark step's agent reports (one per node) merged into one profile: segments of both
//! nodes and both directions with the same node-neutral name are one histogram, made by adding
//! bucket counts (percentiles are recomputed from the merged buckets, never averaged).
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
        kind == "dev-rx" || kind == "tc-ingress"
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
            // Only forward within one device: dev-rx -> tc-ingress, tc-egress -> dev-tx.
            ok(matches!(
                (ka, kb),
                ("dev-rx", "tc-ingress") | ("tc-egress", "dev-tx")
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

/// One segment of the merged step.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedSegment {
    pub from: String,
    pub to: String,
    /// The checkpoint kinds at its ends (`tc-ingress`, `netfilter`, ...; empty if unknown).
    pub from_kind: String,
    pub to_kind: String,
    pub stage: Stage,
    pub kind: SegmentKind,
    pub hist: Hist,
    /// The nodes it was seen on.
    pub nodes: Vec<String>,
}

/// Drops at one place for one reason, both nodes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MergedDrop {
    /// The last checkpoint the packet passed (node-neutral).
    pub after: String,
    pub reason: String,
    pub count: u64,
    pub nodes: Vec<String>,
    /// The packet had left this node on the uplink: the kernel freed it on the other node,
    /// whose agent counts it too (the tracepoint is global), so this is the same drop again.
    pub on_other_node: bool,
}

/// One step (e.g. pod path, ping) of one mode, both nodes merged.
#[derive(Debug, Clone, Default)]
pub struct MergedStep {
    pub segments: Vec<MergedSegment>,
    pub counters: Counters,
    pub drops: Vec<MergedDrop>,
    /// Tracked packets seen per checkpoint kind, summed over nodes (probe runs).
    pub hits_by_kind: BTreeMap<String, u64>,
    pub nodes: Vec<String>,
    /// Duty-cycled agents: the mean share of the step they were attached (their counts cover
    /// only that share). `None`: attached throughout.
    pub coverage: Option<f64>,
}

impl MergedStep {
    /// `events` (pings, requests) of the whole step, as many as the counts cover: per-event
    /// figures divide counts by this.
    pub fn covered(&self, events: u64) -> f64 {
        events.max(1) as f64 * self.coverage.unwrap_or(1.0)
    }

    pub fn of_kind(&self, kind: SegmentKind) -> impl Iterator<Item = &MergedSegment> {
        self.segments.iter().filter(move |s| s.kind == kind)
    }
}

fn add_counters(total: &mut Counters, c: &Counters) {
    total.admitted += c.admitted;
    total.completed += c.completed;
    total.dropped += c.dropped;
    total.abandoned += c.abandoned;
    total.journey_map_full += c.journey_map_full;
    total.segment_map_full += c.segment_map_full;
    total.drop_map_full += c.drop_map_full;
    total.read_errors += c.read_errors;
    total.retransmits += c.retransmits;
    total.repeats += c.repeats;
    total.sampled_out += c.sampled_out;
}

/// Merges the reports of one step (normally node1 and node2).
pub fn merge_step<'a>(reports: impl IntoIterator<Item = &'a AgentReport>) -> MergedStep {
    let mut step = MergedStep::default();
    let mut segments: BTreeMap<(String, String, Stage, SegmentKind), MergedSegment> =
        BTreeMap::new();
    let mut drops: BTreeMap<(String, String), MergedDrop> = BTreeMap::new();
    let mut max_retransmits = 0;
    let mut fractions = Vec::new();
    for report in reports {
        step.nodes.push(report.node.clone());
        if report.duty.is_some() {
            fractions.push(report.attached_fraction());
        }
        let cps: BTreeMap<u16, &CheckpointReport> =
            report.checkpoints.iter().map(|c| (c.id, c)).collect();
        for cp in &report.checkpoints {
            *step.hits_by_kind.entry(cp.kind.clone()).or_default() += cp.hits;
        }
        for seg in &report.segments {
            let (from_cp, to_cp) = (cps.get(&seg.from).copied(), cps.get(&seg.to).copied());
            let kind = classify_segment(from_cp, to_cp);
            let from = neutral_name(from_cp, &seg.from_name);
            let to = neutral_name(to_cp, &seg.to_name);
            let entry = segments
                .entry((from.clone(), to.clone(), seg.stage, kind))
                .or_insert_with(|| MergedSegment {
                    from,
                    to,
                    from_kind: from_cp.map(|c| c.kind.clone()).unwrap_or_default(),
                    to_kind: to_cp.map(|c| c.kind.clone()).unwrap_or_default(),
                    stage: seg.stage,
                    kind,
                    hist: Hist::default(),
                    nodes: Vec::new(),
                });
            entry.hist.add_segment(seg);
            if !entry.nodes.contains(&report.node) {
                entry.nodes.push(report.node.clone());
            }
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
            if !entry.nodes.contains(&report.node) {
                entry.nodes.push(report.node.clone());
            }
        }
    }
    step.counters.retransmits = max_retransmits;
    if !fractions.is_empty() {
        // Nodes without duty cycling count everything (1.0).
        let all = step.nodes.len().max(fractions.len()) as f64;
        step.coverage =
            Some((fractions.iter().sum::<f64>() + (all - fractions.len() as f64)) / all);
    }
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

    #[test]
    fn duty_cycled_nodes_cover_part_of_the_step() {
        let full = merge_step([&report("n1", vec![]), &report("n2", vec![])]);
        assert_eq!(full.coverage, None);
        assert_eq!(full.covered(200), 200.0);
        let mut a = report("n1", vec![]);
        let mut b = report("n2", vec![]);
        let duty = |attached_s| crate::agent::report::DutyReport {
            percent: 10.0,
            period_ms: 1000,
            windows: 2,
            attached_s,
            expedited_edges: 4,
            edges: 4,
        };
        a.duty = Some(duty(0.1));
        b.duty = Some(duty(0.3));
        let step = merge_step([&a, &b]);
        assert!(
            (step.coverage.unwrap() - 0.2).abs() < 1e-9,
            "{:?}",
            step.coverage
        );
        assert!((step.covered(200) - 40.0).abs() < 1e-9);
        // One node attached throughout counts as 1.0.
        let step = merge_step([&a, &report("n2", vec![])]);
        assert!(
            (step.coverage.unwrap() - 0.55).abs() < 1e-9,
            "{:?}",
            step.coverage
        );
    }

    fn segment(buckets: Vec<[u64; 2]>, mean_ns: f64, p50_ns: u64, p99_ns: u64) -> SegmentReport {
        SegmentReport {
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
    fn nodes_merge_by_adding_buckets_not_by_averaging_percentiles() {
        // node1: 90 packets at ~1000 ns; node2: 10 at ~9000 ns. Averaged p50s would be ~5000;
        // the merged distribution's median is still ~1000, its p99 ~9000.
        let one = report("node1", vec![segment(vec![[992, 90]], 1000.0, 1000, 1000)]);
        let two = report("node2", vec![segment(vec![[8960, 10]], 9000.0, 9000, 9000)]);
        let step = merge_step([&one, &two]);
        assert_eq!(step.segments.len(), 1);
        let s = &step.segments[0];
        assert_eq!(s.nodes, vec!["node1", "node2"]);
        let sum = s.hist.summary();
        assert_eq!(sum.count, 100);
        assert!((sum.mean_ns - 1800.0).abs() < 1e-9);
        assert!((990..1010).contains(&sum.p50_ns), "{}", sum.p50_ns);
        assert!((8900..9200).contains(&sum.p99_ns), "{}", sum.p99_ns);
        assert_eq!(step.counters.admitted, 6);
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
