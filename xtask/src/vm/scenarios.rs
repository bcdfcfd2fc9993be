//! What the guest runs on every kernel: each lab mode profiled with the default hooks, one
//! with netfilter forced through fentry/fexit (the fallback kernels before 6.4 take on their
//! own, exercised on the newer kernel too), and a clsact qdisc of another tool present.

use std::process::Command;

use anyhow::{bail, Context, Result};

/// The lab's name in the guest: namespaces `netprof-vm-node1`, ...
pub const LAB: &str = "vm";
/// Pings per scenario; every checkpoint on the path must count exactly these.
pub const PINGS: u32 = 20;

/// One profiled lab run.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Directory name of its results.
    pub name: &'static str,
    /// `netprof lab up --mode`.
    pub mode: &'static str,
    /// `netprof agent --hooks` (`None`: the default families).
    pub hooks: Option<&'static str>,
    /// Node 2's uplink carries another tool's clsact qdisc and filter before the agents start.
    pub foreign_clsact: bool,
    /// Worth running only where the kernel has netfilter links (elsewhere the default hooks
    /// take the same path).
    pub needs_nf_links: bool,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "host",
        mode: "host",
        hooks: None,
        foreign_clsact: false,
        needs_nf_links: false,
    },
    Scenario {
        name: "flannel-hostgw",
        mode: "flannel-hostgw",
        hooks: None,
        foreign_clsact: true,
        needs_nf_links: false,
    },
    Scenario {
        name: "flannel-vxlan",
        mode: "flannel-vxlan",
        hooks: None,
        foreign_clsact: false,
        needs_nf_links: false,
    },
    Scenario {
        name: "calico",
        mode: "calico",
        hooks: None,
        foreign_clsact: false,
        needs_nf_links: false,
    },
    Scenario {
        name: "l2",
        mode: "l2",
        hooks: None,
        foreign_clsact: false,
        needs_nf_links: false,
    },
    Scenario {
        name: "flannel-vxlan-nf-fentry",
        mode: "flannel-vxlan",
        hooks: Some("tc,nf-fentry,trace"),
        foreign_clsact: false,
        needs_nf_links: true,
    },
];

/// The benchmark path of a scenario's lab, and how the agents are told to follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestPath {
    pub client_netns: String,
    pub server_ip: String,
    /// `netprof agent` arguments selecting the path's packets.
    pub follow: Vec<String>,
}

/// The kernel command line parameter by which the host tells the guest whether the kernel
/// has netfilter links (`y` or `n`, from its configuration).
pub const NF_LINKS_PARAM: &str = "netprof.nf_links";

impl Scenario {
    /// Whether to run it on a kernel with (or without) netfilter links.
    pub fn runs_with(&self, nf_links: bool) -> bool {
        nf_links || !self.needs_nf_links
    }

    pub fn has_pods(&self) -> bool {
        self.mode != "host"
    }

    pub fn node_netns(&self, node: u32) -> String {
        format!("netprof-{LAB}-node{node}")
    }

    pub fn pod_netns(&self, node: u32) -> String {
        format!("netprof-{LAB}-pod{node}")
    }

    /// The lab's namespaces.
    pub fn namespaces(&self) -> Vec<String> {
        let mut all = vec![self.node_netns(1), self.node_netns(2)];
        if self.has_pods() {
            all.extend([self.pod_netns(1), self.pod_netns(2)]);
        }
        all
    }

    /// Pod 1 to pod 2 (node 1 to node 2 in `host` mode), addresses read from the built lab.
    pub fn path(&self) -> Result<TestPath> {
        let (client_netns, client_dev, server_netns, server_dev) = if self.has_pods() {
            (self.pod_netns(1), "eth0", self.pod_netns(2), "eth0")
        } else {
            (self.node_netns(1), "eno1", self.node_netns(2), "eno1")
        };
        let client_ip = address(&client_netns, client_dev)?;
        let server_ip = address(&server_netns, server_dev)?;
        Ok(TestPath {
            client_netns,
            follow: follow_args(&client_ip, &server_ip),
            server_ip,
        })
    }
}

/// The agent's selection of the ping path's packets: the one place that knows the agent's
/// flag for it.
pub fn follow_args(client_ip: &str, server_ip: &str) -> Vec<String> {
    vec![
        "--endpoint".to_owned(),
        client_ip.to_owned(),
        "--endpoint".to_owned(),
        server_ip.to_owned(),
    ]
}

/// The IPv4 address of `dev` in `netns`.
fn address(netns: &str, dev: &str) -> Result<String> {
    let out = Command::new("ip")
        .args(["-n", netns, "-4", "-o", "addr", "show", "dev", dev])
        .output()
        .context("cannot run ip")?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_address(&text).with_context(|| format!("no IPv4 address on {dev} in {netns}: {text}"))
}

/// `2: eth0    inet 198.19.1.2/24 brd ... scope global eth0` -> `198.19.1.2`.
fn parse_address(text: &str) -> Result<String> {
    let mut words = text.split_whitespace();
    while let Some(word) = words.next() {
        if word == "inet" {
            if let Some(cidr) = words.next() {
                return Ok(cidr.split('/').next().unwrap_or(cidr).to_owned());
            }
        }
    }
    bail!("no inet address")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_from_ip_o() {
        let line = "2: eth0    inet 198.19.1.2/24 brd 198.19.1.255 scope global eth0\\       valid_lft forever preferred_lft forever\n";
        assert_eq!(parse_address(line).unwrap(), "198.19.1.2");
        assert!(parse_address("").is_err());
    }

    #[test]
    fn scenario_names_are_unique_and_every_mode_is_covered() {
        let mut names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), SCENARIOS.len());
        for mode in ["host", "flannel-hostgw", "flannel-vxlan", "calico", "l2"] {
            assert!(SCENARIOS
                .iter()
                .any(|s| s.mode == mode && s.hooks.is_none()));
        }
    }
}
