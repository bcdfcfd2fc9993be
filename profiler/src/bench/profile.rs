//! `bench --profile`: one agent per lab node for the whole mode, reset before every benchmark
//! step and read after it, so each step's stage profile stands alone next to its result.

use std::fs;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::agent::{Agent, AgentError, AgentOptions};
use crate::lab::{addressing, Lab, Mode, Node};
use crate::rundir::{NetPath, ProfileFile, RunDir, Tool};

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("starting the agent on {node}")]
    Start {
        node: String,
        #[source]
        source: AgentError,
    },
    #[error("reading the agent on {node}")]
    Read {
        node: String,
        #[source]
        source: AgentError,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Every address the benchmarks use in this lab: the nodes and the pods.
pub fn lab_endpoints(lab: &Lab) -> Vec<Ipv4Addr> {
    let mut endpoints: Vec<Ipv4Addr> = Node::BOTH.iter().map(|&n| addressing::node_ip(n)).collect();
    if lab.mode().has_pods() {
        endpoints.extend(
            Node::BOTH
                .iter()
                .map(|&n| addressing::pod_ip(lab.mode(), n)),
        );
    }
    endpoints
}

/// How the agents are run: which checkpoint families, bpf_stats, sampling, duty cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentTuning {
    pub hooks: crate::agent::HookFamilies,
    pub stats: bool,
    /// bpf_stats' share of each second when attached throughout (see `AgentOptions`).
    pub stats_share: u32,
    pub sample: u32,
    pub duty: Option<crate::agent::duty::Duty>,
}

impl Default for AgentTuning {
    fn default() -> Self {
        Self {
            hooks: crate::agent::HookFamilies::default(),
            stats: true,
            stats_share: crate::agent::stats::DEFAULT_STATS_SHARE,
            sample: 1,
            duty: None,
        }
    }
}

/// Starts an agent on each node of the lab (with that node's pod namespace), tuned.
pub fn start_agents_with(
    lab: &Lab,
    tuning: &AgentTuning,
) -> Result<Vec<(Node, Agent)>, ProfileError> {
    let endpoints = lab_endpoints(lab);
    Node::BOTH
        .iter()
        .map(|&node| {
            let mut options = AgentOptions::new(lab.names.node(node), endpoints.clone());
            options.node = Some(node.name().to_owned());
            options.hooks = tuning.hooks;
            options.stats = tuning.stats;
            options.stats_share = tuning.stats_share;
            options.sample = tuning.sample;
            options.duty = tuning.duty;
            if lab.mode().has_pods() {
                options.pod_netns = vec![lab.names.pod(node)];
            }
            Agent::start(&options)
                .map(|agent| (node, agent))
                .map_err(|source| ProfileError::Start {
                    node: node.name().to_owned(),
                    source,
                })
        })
        .collect()
}

/// The agents of one mode, with where their reports go.
pub struct Profiler {
    agents: Vec<(Node, Agent)>,
    out: RunDir,
    mode: Mode,
}

impl Profiler {
    /// Starts the agents; reports go to the run directory's `profile/<mode>/`.
    pub fn start(lab: &Lab, out: &RunDir) -> Result<Self, ProfileError> {
        Self::start_with(lab, out, &AgentTuning::default())
    }

    /// [`start`](Self::start) with the agents tuned (duty cycle, sampling, ...).
    pub fn start_with(lab: &Lab, out: &RunDir, tuning: &AgentTuning) -> Result<Self, ProfileError> {
        let dir = out.resolve(RunDir::profile_dir_relative(lab.mode()));
        fs::create_dir_all(&dir).map_err(|source| ProfileError::Write {
            path: dir.clone(),
            source,
        })?;
        Ok(Self {
            agents: start_agents_with(lab, tuning)?,
            out: out.clone(),
            mode: lab.mode(),
        })
    }

    /// Clears the agents' histograms and counters before a step of `tool`. Pings keep
    /// bpf_stats on throughout (light traffic; their per-run probe cost feeds the report's
    /// "of which netprof probes"), the loads have them in slices.
    pub fn before_step(&self, tool: Tool) -> Result<(), ProfileError> {
        for (node, agent) in &self.agents {
            let read_err = |source| ProfileError::Read {
                node: node.name().to_owned(),
                source,
            };
            agent.full_stats(tool == Tool::Ping).map_err(read_err)?;
            agent.reset().map_err(read_err)?;
        }
        Ok(())
    }

    /// Writes each agent's report of the step just run.
    pub fn after_step(&self, path: NetPath, tool: Tool) -> Result<Vec<ProfileFile>, ProfileError> {
        // The last packets' frees are traced just after the tool exits.
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut files = Vec::new();
        for (node, agent) in &self.agents {
            let report = agent.snapshot().map_err(|source| ProfileError::Read {
                node: node.name().to_owned(),
                source,
            })?;
            let entry = ProfileFile::of(self.mode, path, tool, *node);
            let file = self.out.resolve(&entry.file);
            report.write(&file).map_err(|source| ProfileError::Write {
                path: file.clone(),
                source,
            })?;
            files.push(entry);
        }
        Ok(files)
    }
}
