//! The per-node agent (`netprof agent`): finds the running kernel's struct and tracepoint
//! offsets, discovers the node's devices, loads and attaches the datapath checkpoint programs
//! (tc, tp_btf, tracepoints, netfilter links), and turns the in-kernel histograms and counters
//! into an [`AgentReport`] whose segments are named into datapath stages.
//!
//! One job per module:
//! - [`btf`]: kernel struct member offsets from `/sys/kernel/btf/vmlinux`;
//! - [`tracefs`]: tracepoint field offsets and drop reason names;
//! - [`flows`]: the benchmark flows to follow;
//! - [`devices`]: which devices to watch, with their checkpoint ids;
//! - [`attach`]: the owner struct [`Agent`] (load, attach, rescan, detach on drop), one file
//!   per checkpoint family;
//! - [`collect`]: reading and clearing the maps, histogram percentiles;
//! - [`journey_log`]: the ended journeys the kernel logs, turned into hits and segments;
//! - [`stages`]: checkpoint and stage names;
//! - [`report`]: the JSON document.

pub mod attach;
pub mod btf;
pub mod collect;
pub mod devices;
pub mod duty;
mod expedited_rcu;
pub mod flows;
mod hook_families;
pub mod journey_log;
pub mod netlink_links;
pub mod nf_points;
pub mod pod_netns;
pub mod report;
pub mod stages;
pub mod stats;
pub mod tracefs;

use std::time::Duration;

pub use attach::Agent;
pub use flows::FlowSpec;
pub use hook_families::HookFamilies;
pub use report::{AgentReport, SCHEMA};
pub use stages::Stage;

use crate::{ebpf::EbpfError, netns::NetnsError};

/// Program names, from the contract (`profiler_common::datapath`).
pub use profiler_common::datapath::{
    PROG_BACKLOG, PROG_CONSUME_SKB, PROG_CONSUME_SKB_BTF, PROG_DELIVER_BTF, PROG_DEV_RX,
    PROG_DEV_TX, PROG_KFREE_SKB, PROG_KFREE_SKB_BTF, PROG_TCP_RETRANSMIT, PROG_TC_EGRESS,
    PROG_TC_INGRESS, PROG_TC_POD_EGRESS, PROG_TC_POD_INGRESS, PROG_TC_UPLINK_EGRESS,
    PROG_TC_UPLINK_INGRESS, TP_BACKLOG, TP_DELIVER, TP_DEV_RX, TP_DEV_TX,
};

/// flannel's VXLAN port: where paths start, the kernel programs judge UDP to this port by the
/// packet inside.
pub const VXLAN_PORT: u16 = 8472;
/// A journey idle longer than this is abandoned (its skb was freed unseen).
pub const STALE: Duration = Duration::from_millis(50);
/// How often the agent looks for new devices (pods created after start).
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(1);

/// What the agent watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentOptions {
    /// The node's network namespace (`ip netns` name).
    pub netns: String,
    /// Pod namespaces whose `eth0` gets checkpoints (and whose host-side veths are then the
    /// only ones watched).
    pub pod_netns: Vec<String>,
    /// The node's uplink; default: the default route's device, else `eno1`.
    pub uplink: Option<String>,
    /// The benchmark flows to follow; every other packet is left alone.
    pub flows: Vec<FlowSpec>,
    /// Node name for the report (default: the namespace's name).
    pub node: Option<String>,
    /// Look for new devices this often (`None`: never).
    pub rescan: Option<Duration>,
    /// Which checkpoint families to attach (all by default). Fewer families cost less and see
    /// less; `netprof overhead --hooks` uses this to tell which family costs what.
    pub hooks: HookFamilies,
    /// Switch on the kernel's bpf_stats (per-program run time) while attached. It costs two
    /// clock reads per program run; `netprof overhead --no-stats` measures without it.
    pub stats: bool,
    /// With `stats` and no duty cycle: bpf_stats are on for this percentage of every second
    /// only (100: throughout). See [`stats::DEFAULT_STATS_SHARE`].
    pub stats_share: u32,
    /// Follow 1 in `sample` TCP/UDP flows (a power of two; 1 = every flow, exact counts),
    /// chosen by a hash of the client's port so a request and its reply are followed together.
    /// Pings are always followed. The counts shrink by the factor (the report scales them).
    pub sample: u32,
    /// Attach only for part of every period (`None`: always). See [`duty`].
    pub duty: Option<duty::Duty>,
    /// With a duty cycle: switch the kernel-wide `/sys/kernel/rcu_expedited` on for the length
    /// of each window edge, which shortens an edge from ~100 ms to ~2 ms but is felt by every
    /// workload on the node. Off unless asked for.
    pub expedite_rcu: bool,
}

impl AgentOptions {
    pub fn new(netns: impl Into<String>, flows: Vec<FlowSpec>) -> Self {
        Self {
            netns: netns.into(),
            pod_netns: Vec::new(),
            uplink: None,
            flows,
            node: None,
            rescan: Some(RESCAN_INTERVAL),
            hooks: HookFamilies::default(),
            stats: true,
            stats_share: stats::DEFAULT_STATS_SHARE,
            sample: 1,
            duty: None,
            expedite_rcu: false,
        }
    }
}

/// Errors starting or reading the agent. What could not be attached is not an error: it is
/// listed in the report's `not_measured`.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Root, BTF, or another precondition of loading eBPF programs.
    #[error(transparent)]
    Preflight(#[from] EbpfError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
    #[error(transparent)]
    Devices(#[from] devices::DeviceError),
    #[error(transparent)]
    Collect(#[from] collect::CollectError),
    #[error("--sample {0} must be a power of two from 1 to 32768")]
    Sample(u32),
    #[error("--stats-share {0}: give a percentage from 1 to 100 (100: bpf_stats on throughout)")]
    StatsShare(u32),
    #[error(transparent)]
    TooManyFlows(#[from] flows::TooManyFlows),
    #[error(
        "--hooks without trace: segments are recorded when a followed packet's journey ends \
         (the skb free tracers), so tc and nf need trace; add it (e.g. --hooks tc,nf,trace)"
    )]
    NoJourneyEnd,
    #[error("cannot load netprof's eBPF object")]
    Load {
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("cannot write {what} into map {map}")]
    MapWrite {
        map: &'static str,
        what: String,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("the agent's state lock was poisoned by a panic in its rescan thread")]
    Poisoned,
    #[error("cannot start the agent's duty-cycle thread")]
    Thread(#[source] std::io::Error),
    #[error(
        "the agent runs a duty cycle, whose thread attaches and detaches it: it cannot also be \
         detached on demand"
    )]
    DutyCycleOwnsLinks,
}
