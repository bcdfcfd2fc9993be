//! Latency attribution: the extra ping RTT of a pod mode over the baseline (the `host` mode's
//! node-to-node path of the same run) split into datapath stages, plus what is left over.
//!
//! Per step, a stage's time per RTT is the sum over its segments (both nodes, both directions,
//! merged as histograms) of `typical segment time × passes per RTT`, where passes per RTT =
//! segment count / echo replies (a request and its reply, e.g. 3 PRE_ROUTING passes on a VXLAN
//! node: outer, inner, and the bridge's). The baseline's stage times are subtracted stage by
//! stage (the host path has uplink and stack time too), so what remains is what the pod mode
//! adds, and may be negative where the pod path is quicker.
//!
//! p50: the typical segment time is the segment's median. The RTT's median is the median of a
//! sum of many small, right-skewed parts; each part's median is what a typical packet spends
//! there, whereas a mean is pulled up by rare preemptions that the RTT's median ignores.
//! p99: percentiles do not add (the p99 of a sum is far below the sum of the p99s), so the p99
//! delta is split by each stage's *mean* time: the residual is then the tail that no stage's
//! average cost accounts for (queueing, scheduling).
//!
//! Everything is done in whole nanoseconds: each stage's share is rounded once, the explained
//! sum is the sum of the rounded shares, and `unexplained = delta - explained`, so the stages
//! plus the residual equal the measured delta exactly.
//!
//! Segments ending at `consumed` overlap the path (see `merge`) and segments between two
//! packets sharing an skb are not a packet's time; neither is attributed.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::agent::stages::Stage;
use crate::parse::ping::RttStats;

use super::merge::{MergedStep, SegmentKind};

/// The stages the report names (the agent's finer stages grouped as a network engineer reads
/// them), in display order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    Veth,
    Bridge,
    /// Route lookup, forwarding, and the IP receive/output glue between hooks.
    Routing,
    Conntrack,
    /// iptables nat (DNAT at -100, SNAT/MASQUERADE at 100).
    Nat,
    /// iptables filter.
    Filter,
    VxlanEncap,
    VxlanDecap,
    Uplink,
    /// tc/qdisc/driver hooks of the extra devices (veths, bridge, vxlan).
    Device,
    /// raw, mangle, empty netfilter brackets (hook glue), anything unnamed.
    Other,
}

impl Category {
    pub const ALL: [Category; 11] = [
        Category::Veth,
        Category::Bridge,
        Category::Routing,
        Category::Conntrack,
        Category::Nat,
        Category::Filter,
        Category::VxlanEncap,
        Category::VxlanDecap,
        Category::Uplink,
        Category::Device,
        Category::Other,
    ];

    pub fn of(stage: Stage) -> Category {
        match stage {
            Stage::Veth => Category::Veth,
            Stage::Bridge => Category::Bridge,
            Stage::Routing | Stage::Stack => Category::Routing,
            Stage::Conntrack => Category::Conntrack,
            Stage::NatDnat | Stage::NatSnat => Category::Nat,
            Stage::Filter => Category::Filter,
            Stage::VxlanEncap => Category::VxlanEncap,
            Stage::VxlanDecap => Category::VxlanDecap,
            Stage::Uplink => Category::Uplink,
            Stage::Device => Category::Device,
            Stage::Raw | Stage::Mangle | Stage::Netfilter | Stage::TxDone | Stage::Other => {
                Category::Other
            }
        }
    }

    /// The label in tables.
    pub fn label(self) -> &'static str {
        match self {
            Category::Veth => "veth",
            Category::Bridge => "bridge",
            Category::Routing => "routing/IP",
            Category::Conntrack => "conntrack",
            Category::Nat => "iptables nat",
            Category::Filter => "iptables filter",
            Category::VxlanEncap => "vxlan encap",
            Category::VxlanDecap => "vxlan decap",
            Category::Uplink => "uplink",
            Category::Device => "device hooks",
            Category::Other => "other",
        }
    }

    /// The key in JSON (same as the serde name).
    pub fn key(self) -> &'static str {
        match self {
            Category::Veth => "veth",
            Category::Bridge => "bridge",
            Category::Routing => "routing",
            Category::Conntrack => "conntrack",
            Category::Nat => "nat",
            Category::Filter => "filter",
            Category::VxlanEncap => "vxlan-encap",
            Category::VxlanDecap => "vxlan-decap",
            Category::Uplink => "uplink",
            Category::Device => "device",
            Category::Other => "other",
        }
    }
}

/// Which per-segment statistic stands for a segment's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statistic {
    Median,
    Mean,
}

/// A step's time per event (RTT or request) by the agent's stage, in ns (unrounded).
pub fn per_event_by_stage(
    step: &MergedStep,
    events: u64,
    statistic: Statistic,
) -> BTreeMap<Stage, f64> {
    let mut out = BTreeMap::new();
    let events = step.covered(events);
    for seg in step.of_kind(SegmentKind::Path) {
        let value = match statistic {
            Statistic::Median => seg.hist.summary().p50_ns as f64,
            Statistic::Mean => seg.hist.mean_ns(),
        };
        *out.entry(seg.stage).or_insert(0.0) += value * seg.hist.count as f64 / events;
    }
    out
}

/// A step's time per event (RTT or request) by category, in ns (unrounded).
pub fn per_event(step: &MergedStep, events: u64, statistic: Statistic) -> BTreeMap<Category, f64> {
    let mut out = BTreeMap::new();
    for (stage, ns) in per_event_by_stage(step, events, statistic) {
        *out.entry(Category::of(stage)).or_insert(0.0) += ns;
    }
    out
}

/// [`per_event`] at segment medians without netprof's own time: each segment holds the end of
/// the probe it starts at and the start of the one it ends at, together about one probe run,
/// taken off as half the mean run time of each end's kind (`probe_ns`, from the same step).
/// A segment never goes below zero.
pub fn per_event_net_of_probes(
    step: &MergedStep,
    events: u64,
    probe_ns: &BTreeMap<String, f64>,
) -> BTreeMap<Category, f64> {
    let mut out = BTreeMap::new();
    let events = step.covered(events);
    let probe = |kind: &str| probe_ns.get(kind).copied().unwrap_or(0.0);
    for seg in step.of_kind(SegmentKind::Path) {
        let net = (seg.hist.summary().p50_ns as f64
            - (probe(&seg.from_kind) + probe(&seg.to_kind)) / 2.0)
            .max(0.0);
        *out.entry(Category::of(seg.stage)).or_insert(0.0) += net * seg.hist.count as f64 / events;
    }
    out
}

/// One category's share of a delta.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StageShare {
    pub stage: Category,
    /// The mode's time in this stage per event, ns.
    pub mode_ns: i64,
    /// The baseline's, ns.
    pub baseline_ns: i64,
    /// `mode_ns - baseline_ns`.
    pub delta_ns: i64,
}

/// A measured delta split into stages and the unexplained rest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Split {
    /// What was measured and compared: "p50" or "p99" of the RTT.
    pub statistic: &'static str,
    /// How each segment's time was taken: "median" or "mean".
    pub segment_statistic: &'static str,
    pub mode_ns: i64,
    pub baseline_ns: i64,
    pub delta_ns: i64,
    /// Every category, in display order (zero where neither side has it).
    pub stages: Vec<StageShare>,
    pub explained_ns: i64,
    /// `delta_ns - explained_ns`: never hidden, negative when the stages add up to more.
    pub unexplained_ns: i64,
    /// `explained / delta` in percent; `None` when the delta is under [`MIN_SHARE_DELTA_NS`].
    pub explained_pct: Option<f64>,
    pub unexplained_pct: Option<f64>,
}

/// Below this measured delta the shares are not given: a ping p50 moves by a few µs from one
/// run to the next here (l2's clean p50 was 3 µs over the host's in one demo and its share
/// came out at -774%), so a share of such a delta says nothing.
pub const MIN_SHARE_DELTA_NS: i64 = 10_000;

impl Split {
    /// Splits `delta = mode_ns - baseline_ns` by the stage times (ns per event).
    pub fn new(
        statistic: &'static str,
        segment_statistic: &'static str,
        mode_ns: i64,
        baseline_ns: i64,
        mode_stages: &BTreeMap<Category, f64>,
        baseline_stages: &BTreeMap<Category, f64>,
    ) -> Split {
        let delta_ns = mode_ns - baseline_ns;
        let stages: Vec<StageShare> = Category::ALL
            .iter()
            .map(|&stage| {
                let m = mode_stages.get(&stage).copied().unwrap_or(0.0).round() as i64;
                let b = baseline_stages.get(&stage).copied().unwrap_or(0.0).round() as i64;
                StageShare {
                    stage,
                    mode_ns: m,
                    baseline_ns: b,
                    delta_ns: m - b,
                }
            })
            .collect();
        let explained_ns: i64 = stages.iter().map(|s| s.delta_ns).sum();
        let unexplained_ns = delta_ns - explained_ns;
        let pct = |part: i64| {
            (delta_ns.abs() >= MIN_SHARE_DELTA_NS).then(|| part as f64 / delta_ns as f64 * 100.0)
        };
        Split {
            statistic,
            segment_statistic,
            mode_ns,
            baseline_ns,
            delta_ns,
            stages,
            explained_ns,
            unexplained_ns,
            explained_pct: pct(explained_ns),
            unexplained_pct: pct(unexplained_ns),
        }
    }

    /// The same stage times against other measured values.
    pub fn remeasured(&self, statistic: &'static str, mode_ns: i64, baseline_ns: i64) -> Split {
        let (mode, base): (BTreeMap<Category, f64>, BTreeMap<Category, f64>) = (
            self.stages
                .iter()
                .map(|s| (s.stage, s.mode_ns as f64))
                .collect(),
            self.stages
                .iter()
                .map(|s| (s.stage, s.baseline_ns as f64))
                .collect(),
        );
        Split::new(
            statistic,
            self.segment_statistic,
            mode_ns,
            baseline_ns,
            &mode,
            &base,
        )
    }

    pub fn stage(&self, stage: Category) -> i64 {
        self.stages
            .iter()
            .find(|s| s.stage == stage)
            .map_or(0, |s| s.delta_ns)
    }
}

/// What one pod mode's ping adds over the baseline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyAttribution {
    pub mode: String,
    /// e.g. "host mode, host path".
    pub baseline: String,
    /// Echo replies of the mode's and the baseline's ping.
    pub rtts: u64,
    pub baseline_rtts: u64,
    pub p50: Split,
    pub p99: Split,
    /// The p50 split without netprof's probes in the segments (see
    /// [`per_event_net_of_probes`]), against the p50s the benchmarks measured without agents
    /// when the run has that twin (`DIR/clean/`), else against the profiled p50s less the
    /// probes (`probe_per_rtt` of each side).
    pub p50_net: Split,
    /// netprof's own probes inside the delta (checkpoints passed per RTT × their mean run
    /// time, mode minus baseline), ns; already part of the stage times above.
    pub probe_delta_ns: i64,
    /// Segment passes left out as two packets sharing an skb, per RTT (both sides).
    pub reuse_passes: f64,
}

fn ns(ms: f64) -> i64 {
    (ms * 1e6).round() as i64
}

/// The per-RTT inputs of one side (the mode's pod path or the baseline's host path).
pub struct Side<'a> {
    pub step: &'a MergedStep,
    pub stats: RttStats,
    pub replies: u64,
    /// Mean run time of each checkpoint kind's program (ns), for the probe estimate.
    pub probe_ns: &'a BTreeMap<String, f64>,
}

impl Side<'_> {
    fn probe_per_rtt(&self) -> f64 {
        self.step
            .hits_by_kind
            .iter()
            .filter(|(kind, _)| kind.as_str() != "consumed")
            .map(|(kind, hits)| {
                *hits as f64 / self.step.covered(self.replies)
                    * self.probe_ns.get(kind).copied().unwrap_or(0.0)
            })
            .sum()
    }

    fn reuse_per_rtt(&self) -> f64 {
        let passes: u64 = self
            .step
            .of_kind(SegmentKind::Reuse)
            .map(|s| s.hist.count)
            .sum();
        passes as f64 / self.step.covered(self.replies)
    }
}

pub fn attribute(mode: &str, baseline: &str, pod: &Side, base: &Side) -> LatencyAttribution {
    let p50 = Split::new(
        "p50",
        "median",
        ns(pod.stats.p50_ms),
        ns(base.stats.p50_ms),
        &per_event(pod.step, pod.replies, Statistic::Median),
        &per_event(base.step, base.replies, Statistic::Median),
    );
    let p99 = Split::new(
        "p99",
        "mean",
        ns(pod.stats.p99_ms),
        ns(base.stats.p99_ms),
        &per_event(pod.step, pod.replies, Statistic::Mean),
        &per_event(base.step, base.replies, Statistic::Mean),
    );
    let p50_net = Split::new(
        "p50 less probes",
        "median less probes",
        ns(pod.stats.p50_ms) - pod.probe_per_rtt().round() as i64,
        ns(base.stats.p50_ms) - base.probe_per_rtt().round() as i64,
        &per_event_net_of_probes(pod.step, pod.replies, pod.probe_ns),
        &per_event_net_of_probes(base.step, base.replies, base.probe_ns),
    );
    LatencyAttribution {
        mode: mode.to_owned(),
        baseline: baseline.to_owned(),
        rtts: pod.replies,
        baseline_rtts: base.replies,
        p50,
        p99,
        p50_net,
        probe_delta_ns: (pod.probe_per_rtt() - base.probe_per_rtt()).round() as i64,
        reuse_passes: pod.reuse_per_rtt() + base.reuse_per_rtt(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift64*), so the property test needs no crate and
    /// fails the same way every time.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn float(&mut self, max: f64) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64 * max
        }
    }

    fn random_stages(rng: &mut Rng) -> BTreeMap<Category, f64> {
        let mut stages = BTreeMap::new();
        for stage in Category::ALL {
            match rng.below(4) {
                0 => {}
                1 => {
                    stages.insert(stage, 0.0);
                }
                2 => {
                    stages.insert(stage, rng.float(1e3));
                }
                _ => {
                    stages.insert(stage, rng.float(5e7));
                }
            }
        }
        stages
    }

    #[test]
    fn stages_plus_residual_equal_the_measured_delta() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..20_000 {
            let mode_ns = rng.below(10_000_000_000) as i64;
            let baseline_ns = if rng.below(10) == 0 {
                mode_ns
            } else {
                rng.below(10_000_000_000) as i64
            };
            let (m, b) = (random_stages(&mut rng), random_stages(&mut rng));
            let split = Split::new("p50", "median", mode_ns, baseline_ns, &m, &b);
            let sum: i64 = split.stages.iter().map(|s| s.delta_ns).sum();
            assert_eq!(split.delta_ns, mode_ns - baseline_ns, "case {case}");
            assert_eq!(
                sum + split.unexplained_ns,
                split.delta_ns,
                "case {case}: {split:?}"
            );
            assert_eq!(sum, split.explained_ns, "case {case}");
            assert_eq!(split.stages.len(), Category::ALL.len());
            for s in &split.stages {
                assert_eq!(s.delta_ns, s.mode_ns - s.baseline_ns, "case {case}");
            }
            match (split.explained_pct, split.unexplained_pct) {
                (Some(e), Some(u)) => {
                    assert!((e + u - 100.0).abs() < 1e-6, "case {case}: {e} + {u}")
                }
                (None, None) => assert!(split.delta_ns.abs() < MIN_SHARE_DELTA_NS, "case {case}"),
                other => panic!("case {case}: {other:?}"),
            }
        }
    }

    #[test]
    fn every_agent_stage_has_a_category() {
        use Stage::*;
        for stage in [
            Raw, Conntrack, Mangle, NatDnat, Filter, NatSnat, Netfilter, Routing, VxlanEncap,
            VxlanDecap, Veth, Bridge, Device, Uplink, Stack, TxDone, Other,
        ] {
            let c = Category::of(stage);
            assert_eq!(serde_json::to_value(c).unwrap(), c.key());
        }
        assert_eq!(Category::of(NatSnat), Category::Nat);
        assert_eq!(Category::of(Stack), Category::Routing);
    }

    /// Random agent reports (random checkpoints, segments, stages, buckets) through the whole
    /// path: merge both nodes, attribute against a random baseline. The invariant holds for
    /// whatever the agents report.
    #[test]
    fn merged_random_reports_keep_the_invariant() {
        use crate::agent::report::{
            AgentReport, CheckpointReport, Counters, SegmentReport, SCHEMA,
        };
        use crate::report::merge::merge_step;
        const STAGES: [Stage; 17] = [
            Stage::Raw,
            Stage::Conntrack,
            Stage::Mangle,
            Stage::NatDnat,
            Stage::Filter,
            Stage::NatSnat,
            Stage::Netfilter,
            Stage::Routing,
            Stage::VxlanEncap,
            Stage::VxlanDecap,
            Stage::Veth,
            Stage::Bridge,
            Stage::Device,
            Stage::Uplink,
            Stage::Stack,
            Stage::TxDone,
            Stage::Other,
        ];
        const KINDS: [&str; 5] = ["dev-rx", "tc-ingress", "tc-egress", "dev-tx", "consumed"];
        const ROLES: [&str; 5] = ["uplink", "bridge", "vxlan", "host-veth", "pod-eth"];
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let report = |rng: &mut Rng, node: &str| {
            let checkpoints: Vec<CheckpointReport> = (0..8u16)
                .map(|id| {
                    let kind = KINDS[rng.below(5) as usize];
                    let device = format!("dev{}", rng.below(3));
                    CheckpointReport {
                        id: 64 + id,
                        name: format!("{device} {kind}"),
                        kind: kind.to_owned(),
                        device: (kind != "consumed").then(|| device.clone()),
                        role: Some(ROLES[rng.below(5) as usize].to_owned()),
                        hook: None,
                        priority: None,
                        hits: rng.below(1000),
                    }
                })
                .collect();
            let segments = (0..rng.below(12))
                .map(|_| {
                    let (from, to) = (64 + rng.below(8) as u16, 64 + rng.below(8) as u16);
                    let buckets: Vec<[u64; 2]> = (0..1 + rng.below(5))
                        .map(|_| {
                            [
                                profiler_common::datapath::bucket_low(rng.below(600) as usize),
                                1 + rng.below(500),
                            ]
                        })
                        .collect();
                    SegmentReport {
                        from,
                        to,
                        from_name: format!("checkpoint {from}"),
                        to_name: format!("checkpoint {to}"),
                        stage: STAGES[rng.below(17) as usize],
                        count: buckets.iter().map(|b| b[1]).sum(),
                        mean_ns: rng.float(1e6),
                        p50_ns: 0,
                        p90_ns: 0,
                        p99_ns: 0,
                        buckets,
                    }
                })
                .collect();
            AgentReport {
                schema: SCHEMA.into(),
                node: node.into(),
                netns: node.into(),
                kernel: "6.18".into(),
                attach_ms: 0.0,
                elapsed_s: 1.0,
                checkpoints,
                segments,
                counters: Counters::default(),
                drops: vec![],
                not_measured: vec![],
                programs: vec![],
                stats_s: None,
                duty: None,
            }
        };
        let probes: BTreeMap<String, f64> = [("dev-rx".to_owned(), 250.0)].into_iter().collect();
        for case in 0..300 {
            let (a1, a2, b1, b2) = (
                report(&mut rng, "node1"),
                report(&mut rng, "node2"),
                report(&mut rng, "node1"),
                report(&mut rng, "node2"),
            );
            let (pod, base) = (merge_step([&a1, &a2]), merge_step([&b1, &b2]));
            let stats = |rng: &mut Rng| {
                let p50 = rng.float(2.0);
                RttStats {
                    count: 1,
                    min_ms: 0.0,
                    avg_ms: p50,
                    p50_ms: p50,
                    p90_ms: p50,
                    p99_ms: p50 + rng.float(1.0),
                    max_ms: 5.0,
                }
            };
            let (ps, bs) = (stats(&mut rng), stats(&mut rng));
            let l = attribute(
                "m",
                "b",
                &Side {
                    step: &pod,
                    stats: ps,
                    replies: 1 + rng.below(500),
                    probe_ns: &probes,
                },
                &Side {
                    step: &base,
                    stats: bs,
                    replies: rng.below(500),
                    probe_ns: &probes,
                },
            );
            for split in [&l.p50, &l.p99] {
                let sum: i64 = split.stages.iter().map(|s| s.delta_ns).sum();
                assert_eq!(
                    sum + split.unexplained_ns,
                    split.delta_ns,
                    "case {case}: {split:?}"
                );
                assert_eq!(
                    split.delta_ns,
                    split.mode_ns - split.baseline_ns,
                    "case {case}"
                );
            }
        }
    }
}
