//! Every address the lab uses. Only 198.18.0.0/15 (RFC 2544's benchmarking range) is used for
//! nodes, pods and services, so lab traffic can never reach a real network.

use std::net::Ipv4Addr;

use super::Mode;

/// The two lab nodes. Node 1 hosts the client pod, node 2 the server pod.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Node {
    #[serde(rename = "node1")]
    One,
    #[serde(rename = "node2")]
    Two,
}

impl Node {
    pub const BOTH: [Node; 2] = [Node::One, Node::Two];

    /// `node1`, `node2`: how results, agent reports and the report name the node.
    pub fn name(self) -> &'static str {
        match self {
            Node::One => "node1",
            Node::Two => "node2",
        }
    }

    /// The node a name stands for (`node1`, `node2`).
    pub fn from_name(name: &str) -> Option<Node> {
        Node::BOTH.into_iter().find(|n| n.name() == name)
    }

    pub fn index(self) -> u8 {
        match self {
            Node::One => 1,
            Node::Two => 2,
        }
    }

    pub fn peer(self) -> Node {
        match self {
            Node::One => Node::Two,
            Node::Two => Node::One,
        }
    }
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Underlay ("physical") subnet of `eno1`.
pub const UNDERLAY_PREFIX: u8 = 24;
/// All pod subnets (flannel's network / Calico's pool).
pub const POD_NETWORK: &str = "198.19.0.0/16";
/// Service cluster IPs (kube-proxy's service CIDR).
pub const SERVICE_NETWORK: &str = "198.18.128.0/17";
/// The nginx Service's cluster IP.
pub const NGINX_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 10);
/// Calico's fixed pod gateway, answered by proxy ARP on the host-side veth.
pub const CALICO_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The NodePort kube-proxy opens for nginx, as in the study.
pub const NODE_PORT: u16 = 30001;
/// flannel's vxlan UDP port and MTU.
pub const VXLAN_PORT: u16 = 8472;
pub const VXLAN_MTU: u32 = 1450;

/// The node's address on the underlay (`eno1`, or the bridge in `l2`).
pub fn node_ip(node: Node) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, node.index())
}

/// The node's pod subnet, `198.19.N.0/24` (flannel's per-node lease).
pub fn pod_subnet(node: Node) -> String {
    format!("198.19.{}.0/24", node.index())
}

/// The bridge gateway address in the node's pod subnet.
pub fn pod_gateway(node: Node) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, node.index(), 1)
}

/// flannel.1's address: the `.0` of the node's subnet, as flannel assigns it.
pub fn vtep_ip(node: Node) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, node.index(), 0)
}

/// flannel.1's MAC (locally administered, fixed so FDB/neighbour entries are static).
pub fn vtep_mac(node: Node) -> String {
    format!("0e:6e:70:00:00:0{}", node.index())
}

/// The pod on `node`: on the underlay subnet in `l2`, in the node's pod subnet otherwise.
pub fn pod_ip(mode: Mode, node: Node) -> Ipv4Addr {
    match mode {
        Mode::L2 => Ipv4Addr::new(198, 18, 0, 10 + node.index()),
        _ => Ipv4Addr::new(198, 19, node.index(), 2),
    }
}

/// Cluster IP of the `k`-th extra Service (kube-proxy per-rule cost).
pub fn extra_service_ip(k: u32) -> Ipv4Addr {
    let base = u32::from(Ipv4Addr::new(198, 18, 129, 0));
    Ipv4Addr::from(base + k)
}

/// Endpoint of the `k`-th extra Service: an address in the pod network no pod holds.
pub fn extra_endpoint_ip(k: u32) -> Ipv4Addr {
    let base = u32::from(Ipv4Addr::new(198, 19, 128, 0));
    Ipv4Addr::from(base + k)
}

/// Most extra Services the address plan has room for.
pub const MAX_EXTRA_SERVICES: u32 = 30_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn in_benchmark_range(ip: Ipv4Addr) -> bool {
        let [a, b, ..] = ip.octets();
        a == 198 && (b == 18 || b == 19)
    }

    #[test]
    fn every_lab_address_is_in_198_18_0_0_slash_15() {
        for node in Node::BOTH {
            for ip in [node_ip(node), pod_gateway(node), vtep_ip(node)] {
                assert!(in_benchmark_range(ip), "{ip}");
            }
            for mode in Mode::ALL {
                assert!(in_benchmark_range(pod_ip(mode, node)));
            }
        }
        for k in [0, 1, 4999, MAX_EXTRA_SERVICES - 1] {
            assert!(in_benchmark_range(extra_service_ip(k)));
            assert!(in_benchmark_range(extra_endpoint_ip(k)));
        }
        assert!(in_benchmark_range(NGINX_CLUSTER_IP));
    }

    #[test]
    fn extra_services_do_not_collide_with_pods_or_nginx() {
        let last = extra_service_ip(MAX_EXTRA_SERVICES - 1);
        assert!(last < Ipv4Addr::new(198, 19, 0, 0));
        assert!(extra_service_ip(0) > NGINX_CLUSTER_IP);
        assert!(extra_endpoint_ip(0) > pod_ip(Mode::Calico, Node::Two));
    }
}
