//! The JSON document `netprof bench` writes per mode (`<out>/<mode>.json`); `netprof report`
//! reads it back, so the schema is versioned.

use crate::lab::{Mode, PathEndpoints};
use crate::parse::{ab::AbReport, iperf3::Iperf3Report, ping::PingReport};

use super::config::BenchConfig;

pub const SCHEMA: &str = "netprof.bench.mode/v1";

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModeResult {
    pub schema: String,
    pub mode: Mode,
    pub environment: Environment,
    pub config: BenchConfig,
    /// Wall-clock seconds since the Unix epoch when the mode's run began.
    pub started_unix_s: u64,
    pub duration_s: f64,
    /// Node to node (hostNetwork), measured in every mode's lab.
    pub host_path: PathResult,
    /// Pod to pod (HTTP through the NodePort); absent in `host` mode.
    pub pod_path: Option<PathResult>,
    /// With `--profile`: the agents' reports for every step, one file per node.
    #[serde(default)]
    pub profiles: Vec<crate::rundir::ProfileFile>,
    /// The other modes whose paths were pinged in turns with this mode's, all their labs up at
    /// once (`bench` without agents, see `bench::side_by_side`); empty when the mode's pings ran
    /// on its lab alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pinged_with: Vec<Mode>,
    /// Measured on a clean twin lab, which no agent ever attached to, in the same run as the
    /// profiled labs (see `bench::side_by_side`); false for a run of its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clean_twin: bool,
    /// `netprof k8s run`: the cluster measured (absent for lab runs; older files lack it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterRecord>,
}

/// Where a `netprof k8s run` measured. The profiles' `node1` is the client node, `node2` the
/// server node, as in the lab.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClusterRecord {
    /// The API server's URL.
    pub api_server: String,
    /// The `netprof.io/run` label value of every object the run created.
    pub run_id: String,
    pub node1: ClusterNode,
    pub node2: ClusterNode,
    /// The netprof image (client, iperf3) and the nginx image.
    pub images: Vec<String>,
    /// Profiles that could not be taken, and why; the benchmarks ran regardless.
    #[serde(default)]
    pub not_measured: Vec<String>,
}

/// A node as its status describes it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClusterNode {
    pub name: String,
    pub internal_ip: std::net::Ipv4Addr,
    pub kernel: String,
    pub kubelet: String,
    pub os_image: String,
    pub container_runtime: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PathResult {
    pub endpoints: PathEndpoints,
    pub ping: PingReport,
    pub iperf3: Iperf3Report,
    pub ab: AbReport,
    /// The machine's busy CPU time during ab per request, ns: in the lab both nodes share one
    /// kernel, so this is the whole request's cost (absent on clusters, where it would be one
    /// node's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ab_cpu_ns_per_request: Option<f64>,
    /// `bench --profile`: the same pass's pings with the agents detached (see
    /// [`AgentsOffPings`]); absent without agents and in older files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping_agents_off: Option<AgentsOffPings>,
    /// `bench --profile`: ab with the agents detached around the profiled ab (see
    /// [`AbAgentsOff`]); absent without agents and in older files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ab_agents_off: Option<AbAgentsOff>,
}

/// ab runs of a profiled pass with every agent program detached, one just before and one just
/// after the profiled ab on the same path: the profiled run's CPU per request less theirs is
/// netprof's own CPU cost per request under that load.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AbAgentsOff {
    pub runs: Vec<AbRun>,
}

/// One ab run and the machine's busy CPU time per request during it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AbRun {
    pub ab: AbReport,
    /// ns; absent when `/proc/stat` could not be read.
    pub cpu_ns_per_request: Option<f64>,
}

/// Pings of a profiled pass taken with every netprof program detached, in blocks that take
/// turns with the profiled blocks: netprof's own RTT cost is then measured in the very minutes
/// it is taken out of (a calibration minutes away found it 15-25% cheaper than the passes
/// showed, as the machine's speed drifts).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AgentsOffPings {
    pub ping: PingReport,
    /// RTTs per block of these pings and of the profiled ones (`PathResult::ping`), in block
    /// order: block k of each ran within seconds of the other's.
    pub block_rtts: Vec<usize>,
    pub profiled_block_rtts: Vec<usize>,
}

impl AgentsOffPings {
    /// From the blocks of the profiled pings and of the detached ones, in block order.
    pub fn from_blocks(profiled: &[PingReport], off: &[PingReport]) -> Self {
        let rtts = |pings: &[PingReport]| pings.iter().map(|p| p.rtts_us.len()).collect();
        Self {
            ping: PingReport::concatenated(off),
            block_rtts: rtts(off),
            profiled_block_rtts: rtts(profiled),
        }
    }
}

/// Facts about the machine that change what the numbers mean.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Environment {
    pub kernel: String,
    pub iptables: String,
    pub cpus: usize,
    pub extra_services: u32,
    pub iptables_rules_per_node: usize,
}

impl ModeResult {
    /// The path that represents this mode in the study's table.
    pub fn headline_path(&self) -> &PathResult {
        self.pod_path.as_ref().unwrap_or(&self.host_path)
    }

    /// One path's results (`None`: the pod path of `host` mode).
    pub fn path(&self, path: crate::rundir::NetPath) -> Option<&PathResult> {
        match path {
            crate::rundir::NetPath::Host => Some(&self.host_path),
            crate::rundir::NetPath::Pod => self.pod_path.as_ref(),
        }
    }
}
