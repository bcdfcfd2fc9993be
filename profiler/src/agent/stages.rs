//! Names for checkpoints ("eno1 tc-ingress", "nf PRE_ROUTING -199", "consumed") and for the
//! segments between them: the datapath *stage* a segment's time belongs to (veth, bridge,
//! routing, conntrack, vxlan-encap, ...). Pure functions over a checkpoint catalog, so the
//! naming is unit-tested without a kernel.

use std::collections::BTreeMap;

use profiler_common::datapath::{
    nf_checkpoint, CP_CONSUMED, CP_NF_GAUGE, NF_CP_BASE, NF_CP_END, NF_GAUGE_AFTER, NF_GAUGE_HOOK,
    NF_GAUGE_PRIORITY, NF_HOOK_COUNT, NF_POINT_COUNT, NF_POINT_PRIORITIES,
};
use serde::{Deserialize, Serialize};

/// What role a watched device plays on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceRole {
    /// The node's link to the other nodes (`eno1`).
    Uplink,
    /// A Linux bridge (`cni0`).
    Bridge,
    /// A VXLAN device (`flannel.1`).
    Vxlan,
    /// The node-side end of a pod's veth pair (`veth-pod`, `cali0pod`).
    HostVeth,
    /// The pod-side end of a veth pair (`eth0` inside a pod namespace).
    PodEth,
}

/// Which of a device's four hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceHook {
    /// tp_btf `netif_receive_skb`.
    DevRx,
    /// TCX ingress.
    TcIngress,
    /// TCX egress.
    TcEgress,
    /// tp_btf `net_dev_start_xmit`.
    DevTx,
    /// tp_btf `netif_rx`: a veth's peer queued the frame on the receive backlog.
    Backlog,
}

impl DeviceHook {
    pub const ALL: [DeviceHook; 5] = [
        DeviceHook::DevRx,
        DeviceHook::TcIngress,
        DeviceHook::TcEgress,
        DeviceHook::DevTx,
        DeviceHook::Backlog,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DeviceHook::DevRx => "dev-rx",
            DeviceHook::TcIngress => "tc-ingress",
            DeviceHook::TcEgress => "tc-egress",
            DeviceHook::DevTx => "dev-tx",
            DeviceHook::Backlog => "backlog",
        }
    }

    /// Receive side (the packet enters the stack through this device).
    pub fn is_rx(self) -> bool {
        matches!(
            self,
            DeviceHook::DevRx | DeviceHook::TcIngress | DeviceHook::Backlog
        )
    }

    /// Offset of this hook's id from the device's first checkpoint id.
    pub fn slot(self) -> u16 {
        match self {
            DeviceHook::DevRx => 0,
            DeviceHook::TcIngress => 1,
            DeviceHook::TcEgress => 2,
            DeviceHook::DevTx => 3,
            DeviceHook::Backlog => 4,
        }
    }
}

/// A watched device, as the catalog knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceLabel {
    /// Interface name; pod devices are labelled `NETNS:eth0`.
    pub label: String,
    pub role: DeviceRole,
    /// The bridge this device is a port of, if any.
    pub master: Option<String>,
}

/// Where a checkpoint is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    Device {
        device: DeviceLabel,
        hook: DeviceHook,
    },
    Netfilter {
        hook: u32,
        point: u32,
    },
    /// The gauge right after a netfilter point (`CP_NF_GAUGE`): what lies between the two is
    /// netprof's own.
    Gauge,
    Consumed,
}

/// The kernel's names of the netfilter hooks, indexed by `NF_HOOK_*`.
pub const NF_HOOK_NAMES: [&str; NF_HOOK_COUNT as usize] = [
    "PRE_ROUTING",
    "LOCAL_IN",
    "FORWARD",
    "LOCAL_OUT",
    "POST_ROUTING",
];

/// The iptables table (or tables) between netfilter points `point` and `point + 1`.
pub const NF_BRACKETS: [&str; NF_POINT_COUNT as usize - 1] = [
    "raw",
    "conntrack",
    "mangle",
    "nat-dnat",
    "filter",
    "nat-snat",
];

impl Place {
    /// The place of a netfilter or pseudo checkpoint id (`None` for device ids).
    pub fn fixed(id: u16) -> Option<Place> {
        if id == CP_CONSUMED {
            return Some(Place::Consumed);
        }
        if id == CP_NF_GAUGE {
            return Some(Place::Gauge);
        }
        if (NF_CP_BASE..NF_CP_END).contains(&id) {
            let index = u32::from(id - NF_CP_BASE);
            return Some(Place::Netfilter {
                hook: index / NF_POINT_COUNT,
                point: index % NF_POINT_COUNT,
            });
        }
        None
    }

    pub fn name(&self) -> String {
        match self {
            Place::Device { device, hook } => format!("{} {}", device.label, hook.name()),
            Place::Netfilter { hook, point } => format!(
                "nf {} {}",
                NF_HOOK_NAMES[*hook as usize], NF_POINT_PRIORITIES[*point as usize]
            ),
            Place::Gauge => format!(
                "nf {} {} gauge",
                NF_HOOK_NAMES[NF_GAUGE_HOOK as usize], NF_GAUGE_PRIORITY
            ),
            Place::Consumed => "consumed".to_owned(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Place::Device { hook, .. } => hook.name(),
            Place::Netfilter { .. } | Place::Gauge => "netfilter",
            Place::Consumed => "consumed",
        }
    }
}

/// The stage a segment's time is attributed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// iptables raw table (points 0 -> 1 on a hook).
    Raw,
    /// Conntrack (points 1 -> 2).
    Conntrack,
    /// mangle (2 -> 3).
    Mangle,
    /// nat at -100 (DNAT on PRE_ROUTING / LOCAL_OUT).
    NatDnat,
    /// filter (4 -> 5).
    Filter,
    /// security + nat at 100 (SNAT/MASQUERADE on POST_ROUTING / LOCAL_IN).
    NatSnat,
    /// Several netfilter brackets at once (a point in between was not seen), or a bracket
    /// with no table in it: the hook's own glue.
    Netfilter,
    /// Between two netfilter hooks, or from a device's receive side to FORWARD/LOCAL_IN:
    /// the route lookup and ip_forward/ip_local_deliver.
    Routing,
    /// Into the VXLAN tunnel: from the vxlan device's transmit side to the outer packet.
    VxlanEncap,
    /// Out of the tunnel: from the outer packet to the vxlan device's receive side.
    VxlanDecap,
    /// Across a veth pair (or the wire between nodes): one end's transmit to the other's
    /// receive.
    Veth,
    /// Through a bridge: into or out of a bridge device, or a bridge port to the rest.
    Bridge,
    /// A veth's frame waiting on the receiving CPU's backlog: from `netif_rx` (queued by the
    /// peer's transmit) to the device's next hook, once the receive softirq took it. The first
    /// crossing of a round trip waits longest (the softirq starts cold), whichever device that
    /// is, so the wait is its own stage on every path, the host path's uplink included.
    Backlog,
    /// Hooks of one device (tc, qdisc, driver) other than the uplink.
    Device,
    /// Hooks of the uplink device (tc, qdisc, driver).
    Uplink,
    /// IP receive/output glue: device to PRE_ROUTING, POST_ROUTING/LOCAL_OUT to a device,
    /// and delivery to a socket (`consumed`).
    Stack,
    /// From a device's transmit side until the skb was freed after transmission (on a veth
    /// this includes the peer's processing; on a NIC, the TX completion).
    TxDone,
    /// Anything else.
    Other,
    /// From a netfilter point to the gauge right after it: netprof's own runs, nothing of the
    /// datapath. Never a stage of any split; the report takes it as what netprof leaves in
    /// every segment between two netfilter points.
    Gauge,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Raw => "raw",
            Stage::Conntrack => "conntrack",
            Stage::Mangle => "mangle",
            Stage::NatDnat => "nat-dnat",
            Stage::Filter => "filter",
            Stage::NatSnat => "nat-snat",
            Stage::Netfilter => "netfilter",
            Stage::Routing => "routing",
            Stage::VxlanEncap => "vxlan-encap",
            Stage::VxlanDecap => "vxlan-decap",
            Stage::Veth => "veth",
            Stage::Bridge => "bridge",
            Stage::Backlog => "backlog",
            Stage::Device => "device",
            Stage::Uplink => "uplink",
            Stage::Stack => "stack",
            Stage::TxDone => "tx-done",
            Stage::Other => "other",
            Stage::Gauge => "gauge",
        }
    }

    /// Whether the stage is a netfilter table bracket.
    pub fn is_netfilter(self) -> bool {
        matches!(
            self,
            Stage::Raw
                | Stage::Conntrack
                | Stage::Mangle
                | Stage::NatDnat
                | Stage::Filter
                | Stage::NatSnat
                | Stage::Netfilter
        )
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn bracket(point: u32) -> Stage {
    match point {
        0 => Stage::Raw,
        1 => Stage::Conntrack,
        2 => Stage::Mangle,
        3 => Stage::NatDnat,
        4 => Stage::Filter,
        _ => Stage::NatSnat,
    }
}

/// The gauge stands for the point it follows in every segment but the one from that point.
fn beside_gauge(place: &Place) -> &Place {
    const FOLLOWED: Place = Place::Netfilter {
        hook: NF_GAUGE_HOOK,
        point: NF_GAUGE_AFTER,
    };
    match place {
        Place::Gauge => &FOLLOWED,
        other => other,
    }
}

/// Whether `from -> to` is the gauge's own segment (from the point it follows).
fn is_gauge_segment(from: &Place, to: &Place) -> bool {
    matches!(
        (from, to),
        (
            Place::Netfilter {
                hook: NF_GAUGE_HOOK,
                point: NF_GAUGE_AFTER
            },
            Place::Gauge
        )
    )
}

/// The stage of the segment `from -> to`.
pub fn classify(from: &Place, to: &Place) -> Stage {
    use Place::*;
    if is_gauge_segment(from, to) {
        return Stage::Gauge;
    }
    let (from, to) = (beside_gauge(from), beside_gauge(to));
    if let Device {
        hook: DeviceHook::Backlog,
        ..
    } = from
    {
        return Stage::Backlog;
    }
    match (from, to) {
        (
            Netfilter {
                hook: h1,
                point: p1,
            },
            Netfilter {
                hook: h2,
                point: p2,
            },
        ) => {
            if h1 != h2 {
                Stage::Routing
            } else if p2 == &(p1 + 1) {
                bracket(*p1)
            } else if p2 > p1 {
                Stage::Netfilter
            } else {
                Stage::Other
            }
        }
        (
            Device {
                device: a,
                hook: ha,
            },
            Device {
                device: b,
                hook: hb,
            },
        ) => {
            if a.label == b.label {
                return if a.role == DeviceRole::Uplink {
                    Stage::Uplink
                } else {
                    Stage::Device
                };
            }
            if a.role == DeviceRole::Vxlan && !ha.is_rx() {
                return Stage::VxlanEncap;
            }
            if b.role == DeviceRole::Vxlan && hb.is_rx() {
                return Stage::VxlanDecap;
            }
            let veth_like = |d: &DeviceLabel| {
                matches!(
                    d.role,
                    DeviceRole::HostVeth | DeviceRole::PodEth | DeviceRole::Uplink
                )
            };
            if !ha.is_rx() && hb.is_rx() && veth_like(a) && veth_like(b) {
                return Stage::Veth;
            }
            if a.role == DeviceRole::Bridge
                || b.role == DeviceRole::Bridge
                || a.master.is_some()
                || b.master.is_some()
            {
                return Stage::Bridge;
            }
            Stage::Other
        }
        (Device { device, hook }, Netfilter { hook: nf, .. }) => {
            if device.role == DeviceRole::Vxlan && !hook.is_rx() {
                Stage::VxlanEncap
            } else if hook.is_rx() && device.master.is_some() {
                // A bridge port's frame handed to netfilter by br_netfilter.
                Stage::Bridge
            } else if hook.is_rx() && *nf == profiler_common::datapath::NF_HOOK_PRE_ROUTING {
                Stage::Stack
            } else if hook.is_rx() {
                Stage::Routing
            } else {
                Stage::Other
            }
        }
        (Netfilter { .. }, Device { device, hook }) => {
            if device.role == DeviceRole::Vxlan && hook.is_rx() {
                Stage::VxlanDecap
            } else if device.role == DeviceRole::Bridge && hook.is_rx() {
                // br_netfilter ran PRE_ROUTING on the port; the frame then reached the bridge.
                Stage::Bridge
            } else if !hook.is_rx() {
                Stage::Stack
            } else {
                Stage::Other
            }
        }
        (Device { hook, .. }, Consumed) => {
            if hook.is_rx() {
                Stage::Stack
            } else {
                Stage::TxDone
            }
        }
        (Netfilter { .. }, Consumed) => Stage::Stack,
        (Consumed, _) => Stage::Other,
        // Taken for the point it follows above.
        (Gauge, _) | (_, Gauge) => Stage::Other,
    }
}

/// Every checkpoint the agent knows, by id.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    places: BTreeMap<u16, Place>,
    /// Brackets `(hook, point)` (point -> point + 1) known to hold no hook function: their
    /// time is the hook's own glue (and netprof's programs), not a table's.
    empty_brackets: std::collections::BTreeSet<(u32, u32)>,
}

impl Catalog {
    /// The netfilter points and `consumed`; devices are added with [`Catalog::add_device`].
    pub fn new() -> Self {
        let mut places = BTreeMap::new();
        for hook in 0..NF_HOOK_COUNT {
            for point in 0..NF_POINT_COUNT {
                places.insert(nf_checkpoint(hook, point), Place::Netfilter { hook, point });
            }
        }
        places.insert(CP_CONSUMED, Place::Consumed);
        places.insert(CP_NF_GAUGE, Place::Gauge);
        Self {
            places,
            empty_brackets: Default::default(),
        }
    }

    /// Records which priorities have hook functions on `hook`, so an empty bracket between
    /// two attached points is not named after a table that is not there.
    pub fn set_registered(&mut self, hook: u32, registered: &[i32]) {
        for point in 0..NF_POINT_COUNT - 1 {
            let (lo, hi) = (
                NF_POINT_PRIORITIES[point as usize],
                NF_POINT_PRIORITIES[point as usize + 1],
            );
            if !registered.iter().any(|&p| p > lo && p < hi) {
                self.empty_brackets.insert((hook, point));
            }
        }
    }

    /// Registers a device whose four checkpoints start at `base`.
    pub fn add_device(&mut self, base: u16, device: DeviceLabel) {
        for hook in DeviceHook::ALL {
            self.places.insert(
                base + hook.slot(),
                Place::Device {
                    device: device.clone(),
                    hook,
                },
            );
        }
    }

    pub fn get(&self, id: u16) -> Option<&Place> {
        self.places.get(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u16, &Place)> {
        self.places.iter().map(|(id, p)| (*id, p))
    }

    /// A checkpoint's name; unknown ids are named by number.
    pub fn name(&self, id: u16) -> String {
        self.get(id)
            .map(Place::name)
            .unwrap_or_else(|| format!("checkpoint {id}"))
    }

    /// The stage of segment `from -> to` (`Other` when either id is unknown). Between two
    /// netfilter points of one hook, the stage is the one bracket in between that holds a hook
    /// function (points around empty brackets are left out, so a segment may span several),
    /// or `Netfilter` when none or more than one does.
    pub fn stage(&self, from: u16, to: u16) -> Stage {
        let (from_place, to_place) = (self.get(from), self.get(to));
        if let (Some(a), Some(b)) = (from_place, to_place) {
            if is_gauge_segment(a, b) {
                return Stage::Gauge;
            }
        }
        match (from_place.map(beside_gauge), to_place.map(beside_gauge)) {
            (
                Some(Place::Netfilter { hook, point: p1 }),
                Some(Place::Netfilter {
                    hook: h2,
                    point: p2,
                }),
            ) if hook == h2 && p2 > p1 => {
                let occupied: Vec<u32> = (*p1..*p2)
                    .filter(|point| !self.empty_brackets.contains(&(*hook, *point)))
                    .collect();
                match occupied[..] {
                    [point] => bracket(point),
                    _ => Stage::Netfilter,
                }
            }
            (Some(a), Some(b)) => classify(a, b),
            _ => Stage::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use profiler_common::datapath::{
        NF_HOOK_FORWARD, NF_HOOK_LOCAL_IN, NF_HOOK_LOCAL_OUT, NF_HOOK_POST_ROUTING,
        NF_HOOK_PRE_ROUTING,
    };

    use super::*;

    fn dev(label: &str, role: DeviceRole, master: Option<&str>) -> DeviceLabel {
        DeviceLabel {
            label: label.into(),
            role,
            master: master.map(Into::into),
        }
    }

    fn catalog() -> Catalog {
        let mut c = Catalog::new();
        c.add_device(64, dev("eno1", DeviceRole::Uplink, None));
        c.add_device(69, dev("cni0", DeviceRole::Bridge, None));
        c.add_device(74, dev("veth-pod", DeviceRole::HostVeth, Some("cni0")));
        c.add_device(79, dev("flannel.1", DeviceRole::Vxlan, None));
        c.add_device(84, dev("pod1:eth0", DeviceRole::PodEth, None));
        c.add_device(89, dev("cali0pod", DeviceRole::HostVeth, None));
        c
    }

    const ENO1_RX: u16 = 64;
    const ENO1_IN: u16 = 65;
    const ENO1_OUT: u16 = 66;
    const ENO1_TX: u16 = 67;
    const ENO1_BACKLOG: u16 = 68;
    const CNI0_RX: u16 = 69;
    const VETH_RX: u16 = 74;
    const VETH_IN: u16 = 75;
    const VETH_TX: u16 = 77;
    const VETH_BACKLOG: u16 = 78;
    const VX_RX: u16 = 79;
    const VX_TX: u16 = 82;
    const POD_RX: u16 = 84;
    const POD_TX: u16 = 87;
    const POD_BACKLOG: u16 = 88;
    const CALI_RX: u16 = 89;

    #[test]
    fn the_gauge_segment_is_netprofs_and_the_gauge_stands_for_its_point_elsewhere() {
        let c = catalog();
        let fwd = |p| nf_checkpoint(NF_GAUGE_HOOK, p);
        assert_eq!(c.name(CP_NF_GAUGE), "nf FORWARD -98 gauge");
        assert_eq!(c.get(CP_NF_GAUGE).map(Place::kind), Some("netfilter"));
        assert_eq!(c.stage(fwd(NF_GAUGE_AFTER), CP_NF_GAUGE), Stage::Gauge);
        // Past the gauge, the filter bracket is filter's, as from the point itself.
        assert_eq!(c.stage(CP_NF_GAUGE, fwd(5)), Stage::Filter);
        assert_eq!(c.stage(CP_NF_GAUGE, fwd(5)), c.stage(fwd(4), fwd(5)));
        // To POST_ROUTING: routing, as from FORWARD -99.
        let post = nf_checkpoint(profiler_common::datapath::NF_HOOK_POST_ROUTING, 5);
        assert_eq!(c.stage(CP_NF_GAUGE, post), Stage::Routing);
        // Reaching the gauge from anywhere but its point is that path to the point.
        assert_eq!(c.stage(fwd(3), CP_NF_GAUGE), Stage::NatDnat);
        assert_eq!(c.stage(CNI0_RX, CP_NF_GAUGE), c.stage(CNI0_RX, fwd(4)));
    }

    #[test]
    fn an_empty_filter_bracket_past_the_gauge_is_glue() {
        let mut c = catalog();
        c.set_registered(NF_GAUGE_HOOK, &[]);
        let fwd = |p| nf_checkpoint(NF_GAUGE_HOOK, p);
        assert_eq!(c.stage(CP_NF_GAUGE, fwd(5)), Stage::Netfilter);
    }

    #[test]
    fn checkpoints_have_readable_names() {
        let c = catalog();
        assert_eq!(c.name(ENO1_IN), "eno1 tc-ingress");
        assert_eq!(c.name(CNI0_RX), "cni0 dev-rx");
        assert_eq!(
            c.name(nf_checkpoint(NF_HOOK_PRE_ROUTING, 2)),
            "nf PRE_ROUTING -199"
        );
        assert_eq!(
            c.name(nf_checkpoint(NF_HOOK_POST_ROUTING, 6)),
            "nf POST_ROUTING 101"
        );
        assert_eq!(c.name(CP_CONSUMED), "consumed");
        assert_eq!(c.name(500), "checkpoint 500");
        assert_eq!(
            Place::fixed(nf_checkpoint(NF_HOOK_FORWARD, 3)),
            Some(Place::Netfilter {
                hook: NF_HOOK_FORWARD,
                point: 3
            })
        );
        assert_eq!(Place::fixed(ENO1_RX), None);
    }

    #[test]
    fn consecutive_netfilter_points_bracket_one_table() {
        let c = catalog();
        let nf = |h, p| nf_checkpoint(h, p);
        let expect = [
            "raw",
            "conntrack",
            "mangle",
            "nat-dnat",
            "filter",
            "nat-snat",
        ];
        for (p, name) in expect.iter().enumerate() {
            let p = p as u32;
            assert_eq!(
                c.stage(nf(NF_HOOK_PRE_ROUTING, p), nf(NF_HOOK_PRE_ROUTING, p + 1))
                    .name(),
                *name
            );
        }
        assert_eq!(
            c.stage(nf(NF_HOOK_LOCAL_OUT, 1), nf(NF_HOOK_LOCAL_OUT, 4)),
            Stage::Netfilter
        );
        assert_eq!(
            c.stage(nf(NF_HOOK_PRE_ROUTING, 6), nf(NF_HOOK_FORWARD, 0)),
            Stage::Routing
        );
        assert_eq!(
            c.stage(nf(NF_HOOK_PRE_ROUTING, 6), nf(NF_HOOK_LOCAL_IN, 0)),
            Stage::Routing
        );
        assert_eq!(
            c.stage(nf(NF_HOOK_FORWARD, 6), nf(NF_HOOK_POST_ROUTING, 0)),
            Stage::Routing
        );
        assert_eq!(c.stage(nf(NF_HOOK_LOCAL_IN, 6), CP_CONSUMED), Stage::Stack);
    }

    #[test]
    fn device_hops_are_named_by_what_joins_them() {
        let c = catalog();
        // Same device: tc -> qdisc -> driver.
        assert_eq!(c.stage(ENO1_OUT, ENO1_TX), Stage::Uplink);
        assert_eq!(c.stage(ENO1_RX, ENO1_IN), Stage::Uplink);
        assert_eq!(c.stage(VETH_RX, VETH_IN), Stage::Device);
        // veth pairs: pod eth0 <-> host veth, both ways; the wire between nodes.
        assert_eq!(c.stage(POD_TX, VETH_RX), Stage::Veth);
        assert_eq!(c.stage(VETH_TX, POD_RX), Stage::Veth);
        assert_eq!(c.stage(POD_TX, CALI_RX), Stage::Veth);
        assert_eq!(c.stage(ENO1_TX, ENO1_RX), Stage::Uplink);
        // The receive backlog: the crossing ends where the peer queues the frame; the wait
        // for the softirq after it is its own stage, on the uplink as on every veth.
        assert_eq!(c.name(VETH_BACKLOG), "veth-pod backlog");
        assert_eq!(c.stage(POD_TX, VETH_BACKLOG), Stage::Veth);
        assert_eq!(c.stage(VETH_BACKLOG, VETH_IN), Stage::Backlog);
        assert_eq!(c.stage(VETH_TX, POD_BACKLOG), Stage::Veth);
        assert_eq!(c.stage(POD_BACKLOG, POD_RX + 1), Stage::Backlog);
        assert_eq!(c.stage(ENO1_BACKLOG, ENO1_IN), Stage::Backlog);
        // Bridge: port -> bridge, bridge -> port, port -> netfilter (br_netfilter).
        assert_eq!(c.stage(VETH_IN, CNI0_RX), Stage::Bridge);
        assert_eq!(c.stage(CNI0_RX + 3, VETH_TX - 1), Stage::Bridge);
        assert_eq!(
            c.stage(VETH_IN, nf_checkpoint(NF_HOOK_PRE_ROUTING, 0)),
            Stage::Bridge
        );
        assert_eq!(
            c.stage(nf_checkpoint(NF_HOOK_PRE_ROUTING, 6), CNI0_RX),
            Stage::Bridge
        );
        // VXLAN: vxlan tx -> outer packet; outer packet -> vxlan rx.
        assert_eq!(
            c.stage(VX_TX, nf_checkpoint(NF_HOOK_LOCAL_OUT, 0)),
            Stage::VxlanEncap
        );
        assert_eq!(c.stage(VX_TX, ENO1_OUT), Stage::VxlanEncap);
        assert_eq!(
            c.stage(nf_checkpoint(NF_HOOK_LOCAL_IN, 6), VX_RX),
            Stage::VxlanDecap
        );
        assert_eq!(c.stage(ENO1_IN, VX_RX), Stage::VxlanDecap);
        // Stack glue.
        assert_eq!(
            c.stage(ENO1_IN, nf_checkpoint(NF_HOOK_PRE_ROUTING, 0)),
            Stage::Stack
        );
        assert_eq!(
            c.stage(CNI0_RX + 1, nf_checkpoint(NF_HOOK_FORWARD, 0)),
            Stage::Routing
        );
        assert_eq!(
            c.stage(nf_checkpoint(NF_HOOK_POST_ROUTING, 6), ENO1_OUT),
            Stage::Stack
        );
        assert_eq!(c.stage(ENO1_IN, CP_CONSUMED), Stage::Stack);
        assert_eq!(c.stage(ENO1_TX, CP_CONSUMED), Stage::TxDone);
        assert_eq!(c.stage(ENO1_TX, 999), Stage::Other);
    }

    #[test]
    fn stage_names_serialize_in_kebab_case() {
        assert_eq!(
            serde_json::to_value(Stage::VxlanEncap).unwrap(),
            "vxlan-encap"
        );
        assert_eq!(serde_json::to_value(Stage::NatDnat).unwrap(), "nat-dnat");
        assert_eq!(Stage::TxDone.to_string(), "tx-done");
        assert!(Stage::Conntrack.is_netfilter() && !Stage::Routing.is_netfilter());
        let _ = NF_HOOK_LOCAL_IN;
    }

    #[test]
    fn an_empty_bracket_is_not_named_after_a_table() {
        let mut c = Catalog::new();
        let (ct_in, ct_out) = (
            nf_checkpoint(NF_HOOK_PRE_ROUTING, 1),
            nf_checkpoint(NF_HOOK_PRE_ROUTING, 2),
        );
        let (mangle_in, mangle_out) = (ct_out, nf_checkpoint(NF_HOOK_PRE_ROUTING, 3));
        assert_eq!(c.stage(mangle_in, mangle_out), Stage::Mangle);
        // Conntrack and nat registered, no mangle table.
        c.set_registered(NF_HOOK_PRE_ROUTING, &[-200, -100]);
        assert_eq!(c.stage(ct_in, ct_out), Stage::Conntrack);
        assert_eq!(c.stage(mangle_in, mangle_out), Stage::Netfilter);
    }
}
