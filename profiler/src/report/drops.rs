//! Drops and retransmits per step: where (the last checkpoint passed) and why (the kernel's
//! `skb_drop_reason`), both nodes merged, with the reasons that are normal endings marked.
//! A packet that crossed to the other node and was freed there is seen by both agents (the
//! `kfree_skb` tracepoint is global); it is counted once, where it was freed.

use serde::Serialize;

use super::merge::MergedStep;
use crate::rundir::{NetPath, Node, Tool};

/// One place and reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drop {
    pub after: String,
    pub reason: String,
    pub count: u64,
    pub nodes: Vec<Node>,
    /// Why this is not a lost packet, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<&'static str>,
}

/// One benchmark step's drops and retransmits.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepDrops {
    pub mode: String,
    pub path: NetPath,
    pub tool: Tool,
    pub drops: Vec<Drop>,
    /// Tracked packets freed as drops that are not expected endings.
    pub lost: u64,
    /// `tcp:tcp_retransmit_skb` events on benchmark flows, both nodes.
    pub retransmits: u64,
    /// iperf3's own retransmit count (iperf3 steps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iperf3_retransmits: Option<u64>,
    /// Echo requests without a reply (ping steps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ping_lost: Option<u64>,
}

/// Why a drop reason on this step is a normal ending rather than a loss.
pub fn expected(tool: Tool, reason: &str) -> Option<&'static str> {
    match (tool, reason) {
        (Tool::Ping, "NO_SOCKET") => Some("ICMP echo handled (raw socket or reply sent), then freed as NO_SOCKET by the ping-socket lookup"),
        (_, "QUEUE_PURGE") => Some("queued skbs freed when a socket closes (TCP teardown)"),
        _ => None,
    }
}

pub fn step_drops(mode: &str, path: NetPath, tool: Tool, step: &MergedStep) -> StepDrops {
    let drops: Vec<Drop> = step
        .drops
        .iter()
        .filter(|d| !d.on_other_node)
        .map(|d| Drop {
            after: d.after.clone(),
            reason: d.reason.clone(),
            count: d.count,
            nodes: d.nodes.clone(),
            expected: expected(tool, &d.reason),
        })
        .collect();
    StepDrops {
        mode: mode.to_owned(),
        path,
        tool,
        lost: drops
            .iter()
            .filter(|d| d.expected.is_none())
            .map(|d| d.count)
            .sum(),
        drops,
        retransmits: step.counters.retransmits,
        iperf3_retransmits: None,
        ping_lost: None,
    }
}
