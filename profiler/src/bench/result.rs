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
    pub profiles: Vec<super::profile::ProfileFile>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PathResult {
    pub endpoints: PathEndpoints,
    pub ping: PingReport,
    pub iperf3: Iperf3Report,
    pub ab: AbReport,
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
}
