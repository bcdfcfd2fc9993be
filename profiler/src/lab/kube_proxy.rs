//! The iptables rules a node gets from kube-proxy (iptables mode) and from the CNI plugin, written
//! in the shape they have on a real cluster, as one `iptables-restore` ruleset per node.
//!
//! One ruleset loaded atomically keeps `lab up` fast even with thousands of extra Services
//! (the per-rule cost sweep), where one `iptables` call per rule would take minutes.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::addressing::{
    extra_endpoint_ip, extra_service_ip, pod_ip, pod_subnet, Node, NGINX_CLUSTER_IP, NODE_PORT,
    POD_NETWORK,
};
use super::Mode;

/// kube-proxy's masquerade mark.
const MASQ_MARK: &str = "0x4000";

/// A Service as kube-proxy sees it: cluster IP, port and its one endpoint.
struct Service {
    name: String,
    cluster_ip: Ipv4Addr,
    endpoint: Ipv4Addr,
    node_port: Option<u16>,
}

impl Service {
    /// kube-proxy names chains by a hash of the service port; any stable 16-char tag will do.
    fn tag(&self, kind: &str) -> String {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325; // FNV-1a
        for byte in kind.bytes().chain(self.name.bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        (0..16)
            .map(|i| ALPHABET[((hash >> ((i * 4) % 60)) as usize + i) % 32] as char)
            .collect()
    }

    fn svc_chain(&self) -> String {
        format!("KUBE-SVC-{}", self.tag("svc"))
    }
    fn sep_chain(&self) -> String {
        format!("KUBE-SEP-{}", self.tag("sep"))
    }
    fn ext_chain(&self) -> String {
        format!("KUBE-EXT-{}", self.tag("ext"))
    }
}

fn services(mode: Mode, extra: u32) -> Vec<Service> {
    let mut list = vec![Service {
        name: "default/nginx:http".to_owned(),
        cluster_ip: NGINX_CLUSTER_IP,
        endpoint: pod_ip(mode, Node::Two),
        node_port: Some(NODE_PORT),
    }];
    list.extend((0..extra).map(|k| Service {
        name: format!("netprof-extra/svc-{k}:http"),
        cluster_ip: extra_service_ip(k),
        endpoint: extra_endpoint_ip(k),
        node_port: None,
    }));
    list
}

/// The complete ruleset (nat + filter) for `node`, for `iptables-restore`.
pub fn ruleset(mode: Mode, node: Node, extra_services: u32) -> String {
    let services = services(mode, extra_services);
    let mut out = String::with_capacity(512 + services.len() * 600);
    nat_table(&mut out, mode, node, &services);
    filter_table(&mut out, mode);
    out
}

fn nat_table(out: &mut String, mode: Mode, node: Node, services: &[Service]) {
    out.push_str("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n");
    for chain in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for svc in services {
        let _ = writeln!(
            out,
            ":{} - [0:0]\n:{} - [0:0]",
            svc.svc_chain(),
            svc.sep_chain()
        );
        if svc.node_port.is_some() {
            let _ = writeln!(out, ":{} - [0:0]", svc.ext_chain());
        }
    }
    out.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    out.push_str(
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    out.push_str("-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n");
    cni_masquerade(out, mode, node);
    let _ = writeln!(out, "-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}");
    let _ = writeln!(
        out,
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"
    );
    let _ = writeln!(out, "-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}");
    out.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");
    for svc in services {
        let _ = writeln!(
            out,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{} cluster IP\" -m tcp --dport 80 -j {}",
            svc.cluster_ip,
            svc.name,
            svc.svc_chain()
        );
    }
    out.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    for svc in services {
        let (svc_chain, sep_chain) = (svc.svc_chain(), svc.sep_chain());
        if let Some(port) = svc.node_port {
            let ext = svc.ext_chain();
            let _ = writeln!(out, "-A KUBE-NODEPORTS -p tcp -m comment --comment \"{}\" -m tcp --dport {port} -j {ext}", svc.name);
            let _ = writeln!(out, "-A {ext} -m comment --comment \"masquerade traffic for {} external destinations\" -j KUBE-MARK-MASQ", svc.name);
            let _ = writeln!(out, "-A {ext} -j {svc_chain}");
        }
        let _ = writeln!(
            out,
            "-A {svc_chain} ! -s {POD_NETWORK} -d {}/32 -p tcp -m comment --comment \"{} cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ",
            svc.cluster_ip, svc.name
        );
        let _ = writeln!(
            out,
            "-A {svc_chain} -m comment --comment \"{} -> {}:80\" -j {sep_chain}",
            svc.name, svc.endpoint
        );
        let _ = writeln!(
            out,
            "-A {sep_chain} -s {}/32 -m comment --comment \"{}\" -j KUBE-MARK-MASQ",
            svc.endpoint, svc.name
        );
        let _ = writeln!(
            out,
            "-A {sep_chain} -p tcp -m comment --comment \"{}\" -m tcp -j DNAT --to-destination {}:80",
            svc.name, svc.endpoint
        );
    }
    out.push_str("COMMIT\n");
}

/// Outgoing masquerade that the CNI plugin adds (flannel's ip-masq, Calico's natOutgoing).
fn cni_masquerade(out: &mut String, mode: Mode, node: Node) {
    match mode {
        Mode::FlannelHostgw | Mode::FlannelVxlan => {
            let local = pod_subnet(node);
            let _ = writeln!(out, "-A POSTROUTING -s {POD_NETWORK} -d {POD_NETWORK} -m comment --comment \"flanneld masq\" -j RETURN");
            let _ = writeln!(out, "-A POSTROUTING -s {POD_NETWORK} ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully");
            let _ = writeln!(out, "-A POSTROUTING ! -s {POD_NETWORK} -d {local} -m comment --comment \"flanneld masq\" -j RETURN");
            let _ = writeln!(out, "-A POSTROUTING ! -s {POD_NETWORK} -d {POD_NETWORK} -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully");
        }
        Mode::Calico => {
            let _ = writeln!(out, "-A POSTROUTING -s {POD_NETWORK} ! -d {POD_NETWORK} -m comment --comment \"cali:nat-outgoing\" -j MASQUERADE --random-fully");
        }
        Mode::Host | Mode::L2 => {}
    }
}

fn filter_table(out: &mut String, mode: Mode) {
    out.push_str("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:KUBE-FORWARD - [0:0]\n");
    out.push_str(
        "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n",
    );
    out.push_str("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n");
    let _ = writeln!(out, "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT");
    out.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
    if matches!(mode, Mode::FlannelHostgw | Mode::FlannelVxlan) {
        // flanneld's FLANNEL-FWD accepts pod traffic on hosts whose FORWARD policy is DROP.
        let _ = writeln!(
            out,
            "-A FORWARD -s {POD_NETWORK} -m comment --comment \"flanneld forward\" -j ACCEPT"
        );
        let _ = writeln!(
            out,
            "-A FORWARD -d {POD_NETWORK} -m comment --comment \"flanneld forward\" -j ACCEPT"
        );
    }
    out.push_str("COMMIT\n");
}

/// How many rules a ruleset holds (for progress output and the report).
pub fn rule_count(ruleset: &str) -> usize {
    ruleset.lines().filter(|l| l.starts_with("-A ")).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodeport_dnats_to_the_server_pod() {
        let rules = ruleset(Mode::FlannelVxlan, Node::Two, 0);
        assert!(rules.contains("--dport 30001 -j KUBE-EXT-"));
        assert!(rules.contains("-j DNAT --to-destination 198.19.2.2:80"));
        assert!(rules.contains("-j MASQUERADE --random-fully"));
        // The NodePort jump must stay the last rule of KUBE-SERVICES, as kube-proxy keeps it.
        let last = rules
            .lines()
            .rfind(|l| l.starts_with("-A KUBE-SERVICES"))
            .unwrap();
        assert!(last.ends_with("-j KUBE-NODEPORTS"), "{last}");
    }

    #[test]
    fn extra_services_add_five_rules_each() {
        let base = rule_count(&ruleset(Mode::Calico, Node::One, 0));
        let more = rule_count(&ruleset(Mode::Calico, Node::One, 100));
        assert_eq!(more - base, 500);
    }

    #[test]
    fn chain_names_are_unique_and_fit_iptables() {
        let svcs = services(Mode::Calico, 2000);
        let mut names: Vec<String> = svcs
            .iter()
            .flat_map(|s| [s.svc_chain(), s.sep_chain()])
            .collect();
        assert!(
            names.iter().all(|n| n.len() <= 28),
            "iptables chain names are at most 28 chars"
        );
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 2 * 2001);
    }

    #[test]
    fn cni_masquerade_follows_the_mode() {
        assert!(ruleset(Mode::FlannelHostgw, Node::One, 0).contains("flanneld masq"));
        assert!(ruleset(Mode::Calico, Node::One, 0).contains("cali:nat-outgoing"));
        assert!(!ruleset(Mode::Calico, Node::One, 0).contains("flanneld"));
    }
}
