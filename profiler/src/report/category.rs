//! The stages the report names: the agent's finer stages grouped as a network engineer reads
//! them.

use serde::Serialize;

use crate::agent::stages::Stage;

/// The stages the report names (the agent's finer stages grouped as a network engineer reads
/// them), in display order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    Veth,
    /// A veth's frame waiting for the receive softirq (on every path, the host path's too).
    Backlog,
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
    pub const ALL: [Category; 12] = [
        Category::Veth,
        Category::Backlog,
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
            Stage::Backlog => Category::Backlog,
            Stage::Bridge => Category::Bridge,
            Stage::Routing | Stage::Stack => Category::Routing,
            Stage::Conntrack => Category::Conntrack,
            Stage::NatDnat | Stage::NatSnat => Category::Nat,
            Stage::Filter => Category::Filter,
            Stage::VxlanEncap => Category::VxlanEncap,
            Stage::VxlanDecap => Category::VxlanDecap,
            Stage::Uplink => Category::Uplink,
            Stage::Device => Category::Device,
            // The gauge never reaches a split (its segments are not path segments).
            Stage::Raw
            | Stage::Mangle
            | Stage::Netfilter
            | Stage::TxDone
            | Stage::Other
            | Stage::Gauge => Category::Other,
        }
    }

    /// Whether the stage's time is work the CPU does for the packet. A frame waiting on a
    /// receive backlog is queued, not worked on: under load the wait is the queue behind
    /// other frames, many times the work itself, so CPU-per-request splits leave it out.
    pub fn is_cpu_work(self) -> bool {
        self != Category::Backlog
    }

    /// The label in tables.
    pub fn label(self) -> &'static str {
        match self {
            Category::Veth => "veth",
            Category::Backlog => "rx backlog",
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
            Category::Backlog => "backlog",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_agent_stage_has_a_category() {
        use Stage::*;
        for stage in [
            Raw, Conntrack, Mangle, NatDnat, Filter, NatSnat, Netfilter, Routing, VxlanEncap,
            VxlanDecap, Veth, Backlog, Bridge, Device, Uplink, Stack, TxDone, Other,
        ] {
            let c = Category::of(stage);
            assert_eq!(serde_json::to_value(c).unwrap(), c.key());
        }
        assert_eq!(Category::of(NatSnat), Category::Nat);
        assert_eq!(Category::of(Stack), Category::Routing);
    }
}
