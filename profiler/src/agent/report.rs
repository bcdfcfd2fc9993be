//! The agent's JSON document (`schema: "netprof.agent/v1"`): checkpoints with hit counts,
//! segments with their stage, percentiles and sparse buckets (so documents can be merged),
//! counters, drops, what could not be measured, and the programs' own cost.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::stages::Stage;

/// The schema tag of [`AgentReport`].
pub const SCHEMA: &str = "netprof.agent/v1";

fn one() -> u32 {
    1
}

/// One agent's measurements on one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentReport {
    pub schema: String,
    /// Node name (defaults to the node network namespace's name).
    pub node: String,
    /// The node's network namespace (`ip netns` name).
    pub netns: String,
    /// `uname -r` of the kernel measured.
    pub kernel: String,
    /// Time to load and attach everything, in ms.
    pub attach_ms: f64,
    /// Time covered by these numbers (since start or the last reset), in s.
    pub elapsed_s: f64,
    /// The flows followed (`PROTO:CLIENT-SERVER[:PORT]`).
    #[serde(default)]
    pub flows: Vec<String>,
    /// 1 in `sample` TCP/UDP flows was followed (pings always): counts of those flows' packets
    /// stand for `sample` times as many.
    #[serde(default = "one")]
    pub sample: u32,
    pub checkpoints: Vec<CheckpointReport>,
    pub segments: Vec<SegmentReport>,
    pub counters: Counters,
    pub drops: Vec<DropReport>,
    pub not_measured: Vec<NotMeasured>,
    pub programs: Vec<ProgramStats>,
    /// Time bpf_stats were on while attached during `elapsed_s`, s; absent without bpf_stats.
    /// `programs`' run counts and times cover only this (always-attached agents sample
    /// statistics, see `stats::DEFAULT_STATS_SHARE`); their run time per run stands for the
    /// whole attached time. Absent in documents from before sampling: on throughout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_s: Option<f64>,
    /// Duty-cycled profiling (`--duty`); absent when the programs were attached throughout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duty: Option<DutyReport>,
}

/// When a duty-cycled agent was attached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DutyReport {
    /// Attached share of each period, %.
    pub percent: f64,
    pub period_ms: u64,
    /// Windows opened during `elapsed_s`.
    pub windows: u64,
    /// Time attached during `elapsed_s`, s: hits, counts and segment counts cover only this.
    pub attached_s: f64,
    /// Window edges (opening or closing) run with expedited RCU grace periods, of `edges`:
    /// the others kept the paused programs in the datapath ~100 ms longer.
    #[serde(default)]
    pub expedited_edges: u64,
    #[serde(default)]
    pub edges: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointReport {
    pub id: u16,
    pub name: String,
    /// `dev-rx`, `tc-ingress`, `tc-egress`, `dev-tx`, `netfilter` or `consumed`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The device's role (`uplink`, `bridge`, `vxlan`, `host-veth`, `pod-eth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Netfilter hook (`PRE_ROUTING`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// How the checkpoint is attached on this kernel (absent in documents from before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Via>,
    /// Tracked packets seen here.
    pub hits: u64,
}

/// The kernel mechanism a checkpoint is attached with: the preferred one, or the fallback a
/// kernel without it gets (`docs/kernels.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Via {
    /// A TCX link (kernel 6.6+).
    Tcx,
    /// A direct-action cls_bpf filter on a clsact qdisc (before TCX).
    Clsact,
    /// A netfilter BPF link at the point's priority (kernel 6.4+).
    NetfilterLink,
    /// fentry/fexit on the function that runs the table or conntrack (before links).
    Fentry,
    /// A BTF-typed tracepoint.
    TpBtf,
    /// A classic tracepoint (fields from tracefs).
    Tracepoint,
}

impl Via {
    /// The name the report shows.
    pub fn name(self) -> &'static str {
        match self {
            Via::Tcx => "tc (TCX)",
            Via::Clsact => "tc (clsact)",
            Via::NetfilterLink => "netfilter links",
            Via::Fentry => "fentry/fexit",
            Via::TpBtf => "tp_btf",
            Via::Tracepoint => "tracepoints",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentReport {
    pub from: u16,
    pub to: u16,
    /// Passes of packets that entered the node on its uplink (from another node), kept apart
    /// from those that started on the node: a round trip crosses the same netfilter points
    /// twice, its first pass on cold caches and the other warm.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inbound: bool,
    pub from_name: String,
    pub to_name: String,
    pub stage: Stage,
    pub count: u64,
    /// Exact mean (sum / count).
    pub mean_ns: f64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    /// Non-empty buckets as `[low_ns, count]`, low bounds from `profiler_common`'s
    /// log-linear layout (`bucket_low`).
    pub buckets: Vec<[u64; 2]>,
}

/// `COUNTER_*` totals over all CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub admitted: u64,
    pub completed: u64,
    pub dropped: u64,
    pub abandoned: u64,
    /// Benchmark packets not admitted because their journey slot was taken by another.
    #[serde(alias = "journey_map_full")]
    pub slot_busy: u64,
    /// Checkpoints past a journey's capacity (not recorded).
    #[serde(default)]
    pub journey_long: u64,
    /// Ended journeys the kernel's journey log had no room for (their segments are lost).
    #[serde(alias = "segment_map_full")]
    pub journey_log_full: u64,
    pub read_errors: u64,
    pub retransmits: u64,
    pub repeats: u64,
    /// Benchmark packets of flows left out by sampling (`--sample`); 0 when every flow is
    /// followed.
    #[serde(default)]
    pub sampled_out: u64,
    /// Segments left out because their end was recorded before their start (a journey slot
    /// that changed hands while it was read).
    #[serde(default)]
    pub out_of_order: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropReport {
    /// The last checkpoint the packet passed.
    pub checkpoint: u16,
    pub checkpoint_name: String,
    /// `enum skb_drop_reason`.
    pub reason: u32,
    pub reason_name: String,
    pub count: u64,
}

/// A checkpoint or hook that could not be measured, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotMeasured {
    /// Checkpoint name, program or hook.
    pub what: String,
    pub reason: String,
}

/// A program's own cost from the kernel's bpf_stats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgramStats {
    pub name: String,
    pub id: u32,
    pub run_count: u64,
    pub run_time_ns: u64,
    pub ns_per_run: f64,
}

impl AgentReport {
    pub fn checkpoint(&self, name: &str) -> Option<&CheckpointReport> {
        self.checkpoints.iter().find(|c| c.name == name)
    }

    /// The share of `elapsed_s` the programs were attached (1 without duty cycling): what
    /// counts must be divided by to stand for the whole time.
    pub fn attached_fraction(&self) -> f64 {
        match &self.duty {
            Some(d) if self.elapsed_s > 0.0 => (d.attached_s / self.elapsed_s).clamp(1e-6, 1.0),
            _ => 1.0,
        }
    }

    /// Hits of the checkpoint called `name` (0 when absent).
    pub fn hits(&self, name: &str) -> u64 {
        self.checkpoint(name).map_or(0, |c| c.hits)
    }

    /// Segments of `stage`.
    pub fn stage_segments(&self, stage: Stage) -> impl Iterator<Item = &SegmentReport> {
        self.segments.iter().filter(move |s| s.stage == stage)
    }

    /// The stages present, each once, in order.
    pub fn stages(&self) -> Vec<Stage> {
        let mut stages: Vec<Stage> = self.segments.iter().map(|s| s.stage).collect();
        stages.sort();
        stages.dedup();
        stages
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("AgentReport serializes")
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_json() + "\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json() {
        let report = AgentReport {
            schema: SCHEMA.into(),
            node: "n1".into(),
            netns: "netprof-lab-node1".into(),
            kernel: "6.18".into(),
            attach_ms: 12.5,
            elapsed_s: 1.0,
            flows: vec!["icmp:198.19.1.2-198.19.2.2".into()],
            sample: 1,
            checkpoints: vec![CheckpointReport {
                id: 64,
                name: "eno1 tc-ingress".into(),
                kind: "tc-ingress".into(),
                device: Some("eno1".into()),
                role: Some("uplink".into()),
                hook: None,
                priority: None,
                via: Some(Via::Tcx),
                hits: 20,
            }],
            segments: vec![SegmentReport {
                inbound: false,
                from: 64,
                to: 65,
                from_name: "a".into(),
                to_name: "b".into(),
                stage: Stage::Uplink,
                count: 2,
                mean_ns: 100.0,
                p50_ns: 100,
                p90_ns: 100,
                p99_ns: 100,
                buckets: vec![[96, 2]],
            }],
            counters: Counters::default(),
            drops: vec![],
            not_measured: vec![NotMeasured {
                what: "netfilter".into(),
                reason: "no netfilter tables in x".into(),
            }],
            programs: vec![],
            stats_s: None,
            duty: None,
        };
        let json = report.to_json();
        assert!(json.contains("\"schema\": \"netprof.agent/v1\""));
        assert!(json.contains("\"stage\": \"uplink\""));
        assert!(!json.contains("\"hook\""), "None fields are left out");
        assert!(json.contains("\"via\": \"tcx\""), "{json}");
        let back: AgentReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
        assert_eq!(back.hits("eno1 tc-ingress"), 20);
        assert_eq!(back.stages(), vec![Stage::Uplink]);
    }
}
