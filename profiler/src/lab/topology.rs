//! The commands that build one mode's two-node lab: namespaces, the `eno1` link, bridges, veths,
//! vxlan, routes, sysctls and kube-proxy's iptables rules. Building is a plain list of commands so
//! it can be read, tested and printed (`--dry-run`) before it touches the kernel.

use super::addressing::{
    node_ip, pod_gateway, pod_ip, pod_subnet, vtep_ip, vtep_mac, Node, CALICO_GATEWAY,
    UNDERLAY_PREFIX, VXLAN_MTU, VXLAN_PORT,
};
use super::kube_proxy;
use super::names::LabNames;
use super::{Ablation, Mode};
use crate::cmd::Cmd;

/// Host-side veth of the pod on a node (inside the node namespace, so a fixed name is fine).
pub const POD_VETH: &str = "veth-pod";
/// Calico names its host-side veths `cali` + a hash.
pub const CALICO_VETH: &str = "cali0pod";
pub const BRIDGE: &str = "cni0";
pub const VXLAN_DEV: &str = "flannel.1";
pub const UPLINK: &str = "eno1";

fn ip(ns: &str) -> Cmd {
    Cmd::new("ip").args(["-n", ns])
}

fn sysctl(ns: &str, settings: &[&str]) -> Cmd {
    Cmd::new("sysctl")
        .arg("-qw")
        .args(settings.iter().copied())
        .in_netns(ns)
}

/// All commands, in order, that build `mode` with `extra_services` additional Service chains.
pub fn build_plan(names: &LabNames, mode: Mode, extra_services: u32) -> Vec<Cmd> {
    build_plan_with(names, mode, extra_services, Ablation::default())
}

/// [`build_plan`] with parts of the datapath removed (`bench --validate`).
pub fn build_plan_with(
    names: &LabNames,
    mode: Mode,
    extra_services: u32,
    ablation: Ablation,
) -> Vec<Cmd> {
    let mut plan = Vec::new();
    let mut namespaces = vec![names.node(Node::One), names.node(Node::Two)];
    if mode.has_pods() {
        namespaces.extend([names.pod(Node::One), names.pod(Node::Two)]);
    }
    for ns in &namespaces {
        plan.push(Cmd::new("ip").args(["netns", "add", ns]));
        // No IPv6: no router solicitations, MLD or NDP on the links, so packet counts are exact.
        // Few TIME_WAIT sockets: nginx closes every ab connection, and behind the NodePort's
        // MASQUERADE the next runs' random source ports would hit the pod's tens of thousands
        // of TIME_WAIT sockets and stall on SYN retries (measured: 11k -> 650 req/s by the
        // third run on one lab). Beyond 1024 the kernel closes them at once instead.
        plan.push(sysctl(
            ns,
            &[
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
                "net.ipv4.tcp_max_tw_buckets=1024",
            ],
        ));
        plan.push(ip(ns).args(["link", "set", "lo", "up"]));
    }
    // The physical link between the two nodes.
    let (n1, n2) = (names.node(Node::One), names.node(Node::Two));
    plan.push(Cmd::new("ip").args([
        "link", "add", UPLINK, "netns", &n1, "type", "veth", "peer", "name", UPLINK, "netns", &n2,
    ]));
    for node in Node::BOTH {
        node_plan(&mut plan, names, mode, node, extra_services, ablation);
    }
    plan
}

fn node_plan(
    plan: &mut Vec<Cmd>,
    names: &LabNames,
    mode: Mode,
    node: Node,
    extra_services: u32,
    ablation: Ablation,
) {
    let ns = names.node(node);
    let node_cidr = format!("{}/{UNDERLAY_PREFIX}", node_ip(node));
    if mode == Mode::L2 {
        // eno1 becomes a bridge port; the node address moves to the bridge.
        plan.push(ip(&ns).args(["link", "add", BRIDGE, "type", "bridge"]));
        plan.push(ip(&ns).args(["link", "set", UPLINK, "master", BRIDGE, "up"]));
        plan.push(ip(&ns).args(["addr", "add", &node_cidr, "dev", BRIDGE]));
        plan.push(ip(&ns).args(["link", "set", BRIDGE, "up"]));
        // Bridged frames must not detour through iptables: this mode has no netfilter on the path.
        plan.push(sysctl(&ns, &["net.bridge.bridge-nf-call-iptables=0"]));
    } else {
        plan.push(ip(&ns).args(["addr", "add", &node_cidr, "dev", UPLINK]));
        plan.push(ip(&ns).args(["link", "set", UPLINK, "up"]));
    }
    if !mode.has_pods() {
        return;
    }
    plan.push(sysctl(&ns, &["net.ipv4.ip_forward=1"]));
    match mode {
        Mode::FlannelHostgw | Mode::FlannelVxlan => flannel_node(plan, names, mode, node),
        Mode::Calico => calico_node(plan, names, node),
        Mode::L2 => l2_pod(plan, names, node),
        Mode::Host => {}
    }
    if mode.has_kube_proxy() && !ablation.no_kube_proxy {
        let rules = kube_proxy::ruleset(mode, node, extra_services);
        plan.push(Cmd::new("iptables-restore").in_netns(&ns).stdin(rules));
    }
    if ablation.notrack || ablation.empty_raw {
        // notrack: nothing is tracked, conntrack sees an untracked template, NAT has nothing
        // to do. empty_raw: the same table without the rules.
        let rules = if ablation.notrack {
            "-A PREROUTING -j CT --notrack\n-A OUTPUT -j CT --notrack\n"
        } else {
            ""
        };
        let raw = format!("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n{rules}COMMIT\n");
        plan.push(
            Cmd::new("iptables-restore")
                .arg("--noflush")
                .in_netns(&ns)
                .stdin(raw),
        );
    }
}

/// A veth from the node namespace into the pod namespace, where it is `eth0`.
fn pod_veth(plan: &mut Vec<Cmd>, names: &LabNames, node: Node, host_side: &str, mtu: u32) {
    let (ns, pod) = (names.node(node), names.pod(node));
    let mtu = mtu.to_string();
    plan.push(ip(&ns).args([
        "link", "add", host_side, "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "mtu", &mtu,
        "netns", &pod,
    ]));
    plan.push(ip(&ns).args(["link", "set", host_side, "up"]));
    plan.push(ip(&pod).args(["link", "set", "eth0", "up"]));
}

fn flannel_node(plan: &mut Vec<Cmd>, names: &LabNames, mode: Mode, node: Node) {
    let (ns, pod, peer) = (names.node(node), names.pod(node), node.peer());
    let mtu = if mode == Mode::FlannelVxlan {
        VXLAN_MTU
    } else {
        1500
    };
    plan.push(sysctl(&ns, &["net.bridge.bridge-nf-call-iptables=1"]));
    plan.push(ip(&ns).args([
        "link",
        "add",
        BRIDGE,
        "mtu",
        &mtu.to_string(),
        "type",
        "bridge",
    ]));
    plan.push(ip(&ns).args([
        "addr",
        "add",
        &format!("{}/24", pod_gateway(node)),
        "dev",
        BRIDGE,
    ]));
    plan.push(ip(&ns).args(["link", "set", BRIDGE, "up"]));
    pod_veth(plan, names, node, POD_VETH, mtu);
    plan.push(ip(&ns).args(["link", "set", POD_VETH, "master", BRIDGE]));
    plan.push(ip(&pod).args([
        "addr",
        "add",
        &format!("{}/24", pod_ip(mode, node)),
        "dev",
        "eth0",
    ]));
    plan.push(ip(&pod).args([
        "route",
        "add",
        "default",
        "via",
        &pod_gateway(node).to_string(),
    ]));
    let peer_subnet = pod_subnet(peer);
    if mode == Mode::FlannelHostgw {
        plan.push(ip(&ns).args([
            "route",
            "add",
            &peer_subnet,
            "via",
            &node_ip(peer).to_string(),
            "dev",
            UPLINK,
        ]));
        return;
    }
    // vxlan as flanneld sets it up: no learning, static neighbour + FDB entries per remote node.
    plan.push(ip(&ns).args([
        "link",
        "add",
        VXLAN_DEV,
        "address",
        &vtep_mac(node),
        "mtu",
        &VXLAN_MTU.to_string(),
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        &node_ip(node).to_string(),
        "dev",
        UPLINK,
        "dstport",
        &VXLAN_PORT.to_string(),
        "nolearning",
    ]));
    plan.push(ip(&ns).args([
        "addr",
        "add",
        &format!("{}/32", vtep_ip(node)),
        "dev",
        VXLAN_DEV,
    ]));
    plan.push(ip(&ns).args(["link", "set", VXLAN_DEV, "up"]));
    let peer_vtep = vtep_ip(peer).to_string();
    plan.push(ip(&ns).args([
        "neigh",
        "add",
        &peer_vtep,
        "lladdr",
        &vtep_mac(peer),
        "dev",
        VXLAN_DEV,
        "nud",
        "permanent",
    ]));
    plan.push(Cmd::new("bridge").args([
        "-n",
        &ns,
        "fdb",
        "append",
        &vtep_mac(peer),
        "dev",
        VXLAN_DEV,
        "dst",
        &node_ip(peer).to_string(),
    ]));
    plan.push(ip(&ns).args([
        "route",
        "add",
        &peer_subnet,
        "via",
        &peer_vtep,
        "dev",
        VXLAN_DEV,
        "onlink",
    ]));
}

fn calico_node(plan: &mut Vec<Cmd>, names: &LabNames, node: Node) {
    let (ns, pod, peer) = (names.node(node), names.pod(node), node.peer());
    pod_veth(plan, names, node, CALICO_VETH, 1500);
    // Proxy ARP answers the pod's 169.254.1.1 gateway; proxy_delay=0 as Calico sets it, or the
    // first ARP waits 0.8 s.
    let proxy_arp = format!("net.ipv4.conf.{CALICO_VETH}.proxy_arp=1");
    let delay = format!("net.ipv4.neigh.{CALICO_VETH}.proxy_delay=0");
    plan.push(sysctl(&ns, &[&proxy_arp, &delay]));
    // Proxy ARP needs a unicast route to the gateway through another device: the node's default.
    plan.push(ip(&ns).args([
        "route",
        "add",
        "default",
        "via",
        &node_ip(peer).to_string(),
        "dev",
        UPLINK,
    ]));
    let pod_addr = pod_ip(Mode::Calico, node).to_string();
    plan.push(ip(&ns).args([
        "route",
        "add",
        &format!("{pod_addr}/32"),
        "dev",
        CALICO_VETH,
        "scope",
        "link",
    ]));
    plan.push(ip(&ns).args([
        "route",
        "add",
        &pod_subnet(peer),
        "via",
        &node_ip(peer).to_string(),
        "dev",
        UPLINK,
    ]));
    plan.push(ip(&pod).args(["addr", "add", &format!("{pod_addr}/32"), "dev", "eth0"]));
    let gateway = CALICO_GATEWAY.to_string();
    plan.push(ip(&pod).args(["route", "add", &gateway, "dev", "eth0", "scope", "link"]));
    plan.push(ip(&pod).args(["route", "add", "default", "via", &gateway, "dev", "eth0"]));
}

fn l2_pod(plan: &mut Vec<Cmd>, names: &LabNames, node: Node) {
    let (ns, pod) = (names.node(node), names.pod(node));
    pod_veth(plan, names, node, POD_VETH, 1500);
    plan.push(ip(&ns).args(["link", "set", POD_VETH, "master", BRIDGE]));
    let cidr = format!("{}/{UNDERLAY_PREFIX}", pod_ip(Mode::L2, node));
    plan.push(ip(&pod).args(["addr", "add", &cidr, "dev", "eth0"]));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_text(mode: Mode) -> String {
        let names = LabNames::new("unit").unwrap();
        build_plan(&names, mode, 0)
            .iter()
            .map(Cmd::display)
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn l2_has_no_iptables_and_bridges_the_uplink() {
        let text = plan_text(Mode::L2);
        assert!(!text.contains("iptables-restore"));
        assert!(text.contains("link set eno1 master cni0"));
        assert!(text.contains("bridge-nf-call-iptables=0"));
    }

    #[test]
    fn only_vxlan_mode_has_a_vxlan_device() {
        for mode in Mode::ALL {
            assert_eq!(
                plan_text(mode).contains("type vxlan"),
                mode == Mode::FlannelVxlan,
                "{mode}"
            );
        }
        let vxlan = plan_text(Mode::FlannelVxlan);
        assert!(vxlan.contains("dstport 8472") && vxlan.contains("mtu 1450"));
    }

    #[test]
    fn host_mode_has_no_pods() {
        let text = plan_text(Mode::Host);
        assert!(!text.contains("netprof-unit-pod"));
        assert!(!text.contains("ip_forward"));
    }

    #[test]
    fn calico_has_proxy_arp_and_no_bridge() {
        let text = plan_text(Mode::Calico);
        assert!(text.contains("proxy_arp=1") && text.contains("proxy_delay=0"));
        assert!(!text.contains("type bridge"));
        assert!(text.contains("default via 169.254.1.1"));
    }

    #[test]
    fn every_mode_with_kube_proxy_loads_rules_on_both_nodes() {
        for mode in [Mode::FlannelHostgw, Mode::FlannelVxlan, Mode::Calico] {
            assert_eq!(
                plan_text(mode).matches("iptables-restore").count(),
                2,
                "{mode}"
            );
        }
    }

    #[test]
    fn ablations_remove_kube_proxy_or_add_notrack_on_both_nodes() {
        let names = LabNames::new("unit").unwrap();
        let count = |ablation: Ablation, needle: &str| {
            let plan = build_plan_with(&names, Mode::FlannelVxlan, 0, ablation);
            let lines: Vec<String> = plan.iter().map(|c| c.display()).collect();
            let stdin: Vec<&str> = plan.iter().filter_map(|c| c.stdin_text()).collect();
            lines.iter().filter(|l| l.contains(needle)).count()
                + stdin
                    .iter()
                    .map(|t| t.matches(needle).count())
                    .sum::<usize>()
        };
        assert_eq!(count(Ablation::default(), "iptables-restore"), 2);
        assert_eq!(
            count(
                Ablation {
                    no_kube_proxy: true,
                    ..Default::default()
                },
                "iptables-restore"
            ),
            0
        );
        // kube-proxy's ruleset plus the raw table, loaded without flushing the others.
        let notrack = Ablation {
            notrack: true,
            ..Default::default()
        };
        assert_eq!(count(notrack, "iptables-restore"), 4);
        assert_eq!(count(notrack, "iptables-restore --noflush"), 2);
        assert_eq!(
            count(notrack, "CT --notrack"),
            4,
            "PREROUTING and OUTPUT on both nodes"
        );
        let empty_raw = Ablation {
            empty_raw: true,
            ..Default::default()
        };
        assert_eq!(count(empty_raw, "iptables-restore --noflush"), 2);
        assert_eq!(count(empty_raw, "*raw"), 2);
        assert_eq!(count(empty_raw, "CT --notrack"), 0);
    }
}
