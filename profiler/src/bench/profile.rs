//! `bench --profile`: one agent per lab node for the whole mode, reset before every benchmark
//! step and read after it, so each step's stage profile stands alone next to its result.

use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use crate::agent::{Agent, AgentError, AgentOptions, FlowSpec};
use crate::cmd::Cmd;
use crate::lab::{addressing, Lab, Mode, Node, PathEndpoints};
use crate::rundir::{NetPath, ProfileFile, RunDir, Tool};

/// iperf3's server port.
pub const IPERF3_PORT: u16 = 5201;

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
    #[error("{action} the agent on {node}")]
    Attach {
        node: String,
        action: &'static str,
        #[source]
        source: AgentError,
    },
    #[error("cannot tell the source address of {netns}'s packets to {to}: {reason}")]
    Route {
        netns: String,
        to: Ipv4Addr,
        reason: String,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The address a packet sent from `netns` to `to` leaves with (`ip route get`'s `src`): the
/// client address a flow has on the wire, e.g. a VXLAN device's address for a node reaching a
/// pod, or the address a MASQUERADE rule gives it.
pub fn source_address(netns: &str, to: Ipv4Addr) -> Result<Ipv4Addr, ProfileError> {
    let failed = |reason: String| ProfileError::Route {
        netns: netns.to_owned(),
        to,
        reason,
    };
    let out = Cmd::new("ip")
        .args(["-j", "route", "get", &to.to_string()])
        .in_netns(netns)
        .run()
        .map_err(|e| failed(e.to_string()))?;
    let routes: serde_json::Value = serde_json::from_str(&out)
        .map_err(|e| failed(format!("unreadable `ip -j` output: {e}")))?;
    routes[0]["prefsrc"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| failed(format!("no source address in {out}")))
}

/// The flows of a ping or iperf3 step on `path`: ICMP, or TCP to iperf3's port, from the
/// client's address as the server sees it.
pub fn path_flows(path: &PathEndpoints, tool: Tool) -> Result<Vec<FlowSpec>, ProfileError> {
    let client = source_address(&path.client_netns, path.server_ip)?;
    Ok(match tool {
        Tool::Ping => vec![FlowSpec::icmp(Some(client), path.server_ip)],
        Tool::Iperf3 | Tool::Ab => vec![FlowSpec::tcp(Some(client), path.server_ip, IPERF3_PORT)],
    })
}

/// The flows of HTTP requests from `client_netns` to `target`. Through the NodePort (DNAT to
/// the nginx pod and MASQUERADE on the server node) the server pod sees its own flow: from
/// the server node's address towards the pod, to port 80.
pub fn http_flows(
    lab: &Lab,
    client_netns: &str,
    target: SocketAddrV4,
) -> Result<Vec<FlowSpec>, ProfileError> {
    let client = source_address(client_netns, *target.ip())?;
    let mut flows = vec![FlowSpec::tcp(Some(client), *target.ip(), target.port())];
    if target.port() == addressing::NODE_PORT && lab.mode().has_pods() {
        let pod = addressing::pod_ip(lab.mode(), Node::Two);
        let masquerade = source_address(&lab.names.node(Node::Two), pod)?;
        flows.push(FlowSpec::tcp(Some(masquerade), pod, 80));
    }
    Ok(flows)
}

/// The flows of `tool`'s step on `path`.
pub fn step_flows(
    lab: &Lab,
    path: &PathEndpoints,
    tool: Tool,
) -> Result<Vec<FlowSpec>, ProfileError> {
    match tool {
        Tool::Ab => http_flows(lab, &path.http_client_netns, path.http_target),
        Tool::Ping | Tool::Iperf3 => path_flows(path, tool),
    }
}

/// The flows of every step of one path (for agents that stay attached across steps).
pub fn all_path_flows(lab: &Lab, path: &PathEndpoints) -> Result<Vec<FlowSpec>, ProfileError> {
    let mut flows = Vec::new();
    for tool in Tool::ALL {
        flows.extend(step_flows(lab, path, tool)?);
    }
    Ok(flows)
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
    pub expedite_rcu: bool,
    /// With several modes side by side: measure every mode on a clean twin lab too, which no
    /// agent ever attaches to, in the same turns (see `side_by_side`).
    pub clean_twins: bool,
}

impl Default for AgentTuning {
    fn default() -> Self {
        Self {
            hooks: crate::agent::HookFamilies::default(),
            stats: true,
            stats_share: crate::agent::stats::DEFAULT_STATS_SHARE,
            sample: 1,
            duty: None,
            expedite_rcu: false,
            clean_twins: false,
        }
    }
}

/// Starts an agent on each node of the lab (with that node's pod namespace), tuned, following
/// `flows`.
pub fn start_agents_with(
    lab: &Lab,
    tuning: &AgentTuning,
    flows: &[FlowSpec],
) -> Result<Vec<(Node, Agent)>, ProfileError> {
    Node::BOTH
        .iter()
        .map(|&node| {
            let mut options = AgentOptions::new(lab.names.node(node), flows.to_vec());
            options.node = Some(node.name().to_owned());
            options.hooks = tuning.hooks;
            options.stats = tuning.stats;
            options.stats_share = tuning.stats_share;
            options.sample = tuning.sample;
            options.duty = tuning.duty;
            options.expedite_rcu = tuning.expedite_rcu;
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
        // Each step names its own flows (`before_step`); until then nothing is followed.
        Ok(Self {
            agents: start_agents_with(lab, tuning, &[])?,
            out: out.clone(),
            mode: lab.mode(),
        })
    }

    /// Points the agents at the step's `flows` and clears their histograms and counters
    /// before a step of `tool`. Every step has bpf_stats in slices, pings too: statistics on
    /// throughout read the clock twice more per program run, dozens of runs per RTT, time the
    /// segments would hold and the calibration (measured with statistics off) would not take
    /// out.
    pub fn before_step(&self, flows: &[FlowSpec]) -> Result<(), ProfileError> {
        for (node, agent) in &self.agents {
            let read_err = |source| ProfileError::Read {
                node: node.name().to_owned(),
                source,
            };
            agent.set_flows(flows).map_err(read_err)?;
            agent.reset().map_err(read_err)?;
        }
        Ok(())
    }

    /// Detaches every agent's programs (`false`) or attaches them again (`true`): blocks of a
    /// step taken with no netprof program in the path, to measure netprof's own cost in the
    /// same minutes as the profiled blocks (see `bench::ping_step`).
    pub fn set_attached(&self, attached: bool) -> Result<(), ProfileError> {
        for (node, agent) in &self.agents {
            agent
                .set_attached(attached)
                .map_err(|source| ProfileError::Attach {
                    node: node.name().to_owned(),
                    action: if attached {
                        "re-attaching"
                    } else {
                        "detaching"
                    },
                    source,
                })?;
        }
        Ok(())
    }

    /// The mode of the lab these agents profile.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Writes each agent's report of the step just run.
    pub fn after_step(&self, path: NetPath, tool: Tool) -> Result<Vec<ProfileFile>, ProfileError> {
        self.after_step_part(path, tool, None)
    }

    /// [`after_step`](Self::after_step), or with `block` one block's reports of a step
    /// profiled in blocks.
    pub fn after_step_part(
        &self,
        path: NetPath,
        tool: Tool,
        block: Option<usize>,
    ) -> Result<Vec<ProfileFile>, ProfileError> {
        self.after_step_into(&self.out, path, tool, block)
    }

    /// [`after_step`](Self::after_step) into `out`, which may be another run's directory (one
    /// lab's agents can profile two states), and with `block` one file per block of a step
    /// profiled in blocks.
    pub fn after_step_into(
        &self,
        out: &RunDir,
        path: NetPath,
        tool: Tool,
        block: Option<usize>,
    ) -> Result<Vec<ProfileFile>, ProfileError> {
        // The last packets' frees are traced just after the tool exits.
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut files = Vec::new();
        for (node, agent) in &self.agents {
            let report = agent.snapshot().map_err(|source| ProfileError::Read {
                node: node.name().to_owned(),
                source,
            })?;
            let entry = ProfileFile::of_part(self.mode, path, tool, *node, block);
            let file = out.resolve(&entry.file);
            let written = file
                .parent()
                .map_or(Ok(()), fs::create_dir_all)
                .and_then(|()| report.write(&file));
            written.map_err(|source| ProfileError::Write {
                path: file.clone(),
                source,
            })?;
            files.push(entry);
        }
        Ok(files)
    }
}

/// Leaves `profilers[only]`'s agents attached and every other's detached (all detached with
/// `None`): one lab measured at a time, since attached agents run their kernel-wide tracers on
/// every lab's packets. Agents already in the wanted state are left as they are.
pub(super) fn attach_only(
    profilers: &[&Profiler],
    only: Option<usize>,
) -> Result<(), super::BenchError> {
    for (k, p) in profilers.iter().enumerate() {
        p.set_attached(only == Some(k))
            .map_err(|source| super::BenchError::Profile {
                mode: p.mode(),
                source,
            })?;
    }
    Ok(())
}
