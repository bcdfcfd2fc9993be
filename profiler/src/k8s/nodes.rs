//! Choosing the two nodes: `--nodes CLIENT,SERVER`, else the study's labels `workern=1`
//! (client) and `workern=2` (server). Nothing is guessed: when neither works the error lists
//! the nodes found, with their labels and readiness.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};
use kube::Client;

use super::error::api;
use super::K8sError;
use crate::bench::result::ClusterNode;

/// The study's node label: `workern=1` runs the clients, `workern=2` the servers.
pub const WORKER_LABEL: &str = "workern";
/// The label nodeSelector pins pods with.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "--nodes {given:?}: give two different node names, client first: --nodes CLIENT,SERVER"
    )]
    BadFlag { given: String },
    #[error("node {name} (from --nodes) does not exist; nodes: {found}")]
    Missing { name: String, found: String },
    #[error(
        "no nodes chosen: give --nodes CLIENT,SERVER, or label two nodes as the study did \
         (`kubectl label node A workern=1; kubectl label node B workern=2`); {found}"
    )]
    NoLabels { found: String },
    #[error("{count} nodes are labelled workern={value} ({names}): keep the label on one, or give --nodes CLIENT,SERVER")]
    Ambiguous {
        value: &'static str,
        count: usize,
        names: String,
    },
    #[error("node {name} is not Ready ({why}): choose another with --nodes CLIENT,SERVER")]
    NotReady { name: String, why: String },
    #[error("node {name} has no IPv4 InternalIP (addresses: {addresses}): netprof follows IPv4 flows only")]
    NoIpv4 { name: String, addresses: String },
}

/// What netprof needs to know about a node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `None` when the node has no IPv4 InternalIP (then it cannot be chosen).
    pub internal_ip: Option<Ipv4Addr>,
    pub addresses: Vec<String>,
    /// `None` when Ready, else why not.
    pub not_ready: Option<String>,
    pub kernel: String,
    pub kubelet: String,
    pub os_image: String,
    pub container_runtime: String,
    /// CPU capacity (whole cores).
    pub cpus: usize,
    /// Cordoned (`kubectl cordon`): new pods are not scheduled there.
    pub unschedulable: bool,
    /// Taints as `key=value:Effect`.
    pub taints: Vec<Taint>,
    /// The `kubernetes.io/os` label, else the kubelet's operating system.
    pub os: String,
}

/// A node taint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: String,
}

impl Taint {
    /// NoSchedule and NoExecute keep pods without a toleration off the node.
    pub fn repels(&self) -> bool {
        self.effect == "NoSchedule" || self.effect == "NoExecute"
    }
}

impl std::fmt::Display for Taint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.value.is_empty() {
            write!(f, "{}:{}", self.key, self.effect)
        } else {
            write!(f, "{}={}:{}", self.key, self.value, self.effect)
        }
    }
}

/// The label every kubelet sets with its operating system.
pub const OS_LABEL: &str = "kubernetes.io/os";

impl NodeInfo {
    pub fn from_node(node: &Node) -> Self {
        let name = node.metadata.name.clone().unwrap_or_default();
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let status = node.status.clone().unwrap_or_default();
        let addresses = status.addresses.clone().unwrap_or_default();
        let internal_ip = addresses
            .iter()
            .filter(|a| a.type_ == "InternalIP")
            .find_map(|a| a.address.parse::<Ipv4Addr>().ok());
        let ready = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Ready");
        let not_ready = match ready {
            Some(c) if c.status == "True" => None,
            Some(c) => Some(format!(
                "Ready={}{}",
                c.status,
                c.reason.map(|r| format!(", {r}")).unwrap_or_default()
            )),
            None => Some("no Ready condition".to_owned()),
        };
        let info = status.node_info.unwrap_or_default();
        let spec = node.spec.clone().unwrap_or_default();
        let taints = spec
            .taints
            .unwrap_or_default()
            .into_iter()
            .map(|t| Taint {
                key: t.key,
                value: t.value.unwrap_or_default(),
                effect: t.effect,
            })
            .collect();
        let os = labels
            .get(OS_LABEL)
            .cloned()
            .unwrap_or_else(|| info.operating_system.clone());
        let cpus = status
            .capacity
            .and_then(|c| c.get("cpu").map(|q| q.0.clone()))
            .and_then(|q| parse_cpus(&q))
            .unwrap_or(1);
        Self {
            name,
            labels,
            internal_ip,
            addresses: addresses
                .iter()
                .map(|a| format!("{} {}", a.type_, a.address))
                .collect(),
            not_ready,
            kernel: info.kernel_version,
            kubelet: info.kubelet_version,
            os_image: info.os_image,
            container_runtime: info.container_runtime_version,
            cpus,
            unschedulable: spec.unschedulable.unwrap_or(false),
            taints,
            os,
        }
    }

    /// The nodeSelector that pins a pod here: the node's own hostname label, which is what
    /// the scheduler matches (it can differ from the node's name).
    pub fn selector(&self) -> (String, String) {
        let value = self
            .labels
            .get(HOSTNAME_LABEL)
            .cloned()
            .unwrap_or_else(|| self.name.clone());
        (HOSTNAME_LABEL.to_owned(), value)
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.internal_ip.expect("chosen nodes have an IPv4 address")
    }

    pub fn record(&self) -> ClusterNode {
        ClusterNode {
            name: self.name.clone(),
            internal_ip: self.ip(),
            kernel: self.kernel.clone(),
            kubelet: self.kubelet.clone(),
            os_image: self.os_image.clone(),
            container_runtime: self.container_runtime.clone(),
        }
    }

    fn describe(&self) -> String {
        let worker = self
            .labels
            .get(WORKER_LABEL)
            .map(|v| format!(", workern={v}"))
            .unwrap_or_default();
        let ip = self
            .internal_ip
            .map_or("no IPv4 InternalIP".to_owned(), |ip| ip.to_string());
        let ready = self.not_ready.as_deref().unwrap_or("Ready");
        format!("{} ({ready}, {ip}{worker})", self.name)
    }
}

/// `"4"`, `"3500m"` -> whole cores (at least 1).
fn parse_cpus(quantity: &str) -> Option<usize> {
    match quantity.strip_suffix('m') {
        Some(milli) => milli.parse::<usize>().ok().map(|m| (m / 1000).max(1)),
        None => quantity.parse::<f64>().ok().map(|c| (c as usize).max(1)),
    }
}

/// The client node (profiles' `node1`) and the server node (`node2`).
#[derive(Debug, Clone, PartialEq)]
pub struct ChosenNodes {
    pub client: NodeInfo,
    pub server: NodeInfo,
    /// How they were chosen, for the progress line.
    pub how: &'static str,
}

fn found(nodes: &[NodeInfo]) -> String {
    if nodes.is_empty() {
        return "the cluster lists no nodes".to_owned();
    }
    format!(
        "nodes found: {}",
        nodes
            .iter()
            .map(NodeInfo::describe)
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Splits `--nodes CLIENT,SERVER`.
pub fn parse_flag(text: &str) -> Result<(String, String), NodeError> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    match parts.as_slice() {
        [a, b] if !a.is_empty() && !b.is_empty() && a != b => {
            Ok(((*a).to_owned(), (*b).to_owned()))
        }
        _ => Err(NodeError::BadFlag {
            given: text.to_owned(),
        }),
    }
}

/// Picks the nodes among those listed.
pub fn choose(nodes: &[NodeInfo], flag: Option<&str>) -> Result<ChosenNodes, NodeError> {
    let (client, server, how) = match flag {
        Some(text) => {
            let (a, b) = parse_flag(text)?;
            let by_name = |name: &str| {
                nodes
                    .iter()
                    .find(|n| n.name == name)
                    .cloned()
                    .ok_or_else(|| NodeError::Missing {
                        name: name.to_owned(),
                        found: found(nodes).trim_start_matches("nodes found: ").to_owned(),
                    })
            };
            (by_name(&a)?, by_name(&b)?, "--nodes")
        }
        None => {
            let labelled = |value: &'static str| -> Result<Option<NodeInfo>, NodeError> {
                let matching: Vec<&NodeInfo> = nodes
                    .iter()
                    .filter(|n| n.labels.get(WORKER_LABEL).map(String::as_str) == Some(value))
                    .collect();
                match matching.as_slice() {
                    [] => Ok(None),
                    [one] => Ok(Some((*one).clone())),
                    many => Err(NodeError::Ambiguous {
                        value,
                        count: many.len(),
                        names: many
                            .iter()
                            .map(|n| n.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    }),
                }
            };
            match (labelled("1")?, labelled("2")?) {
                (Some(a), Some(b)) => (a, b, "labels workern=1/2"),
                _ => {
                    return Err(NodeError::NoLabels {
                        found: found(nodes),
                    })
                }
            }
        }
    };
    for node in [&client, &server] {
        if let Some(why) = &node.not_ready {
            return Err(NodeError::NotReady {
                name: node.name.clone(),
                why: why.clone(),
            });
        }
        if node.internal_ip.is_none() {
            return Err(NodeError::NoIpv4 {
                name: node.name.clone(),
                addresses: node.addresses.join(", "),
            });
        }
    }
    Ok(ChosenNodes {
        client,
        server,
        how,
    })
}

/// Lists the cluster's nodes (RBAC: `list nodes`) and picks two.
pub async fn pick(client: &Client, flag: Option<&str>) -> Result<ChosenNodes, K8sError> {
    if let Some(text) = flag {
        parse_flag(text)?;
    }
    let nodes: Api<Node> = Api::all(client.clone());
    let list = nodes
        .list(&ListParams::default())
        .await
        .map_err(api(&nodes, "list", "nodes", ""))?;
    let nodes: Vec<NodeInfo> = list.items.iter().map(NodeInfo::from_node).collect();
    Ok(choose(&nodes, flag)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, worker: Option<&str>, ip: Option<&str>) -> NodeInfo {
        let mut labels = BTreeMap::from([(HOSTNAME_LABEL.to_owned(), format!("{name}-host"))]);
        if let Some(w) = worker {
            labels.insert(WORKER_LABEL.to_owned(), w.to_owned());
        }
        NodeInfo {
            name: name.to_owned(),
            labels,
            internal_ip: ip.map(|i| i.parse().unwrap()),
            addresses: ip
                .map(|i| vec![format!("InternalIP {i}")])
                .unwrap_or_default(),
            not_ready: None,
            kernel: "6.18.0".into(),
            kubelet: "v1.35.0".into(),
            os_image: "Debian".into(),
            container_runtime: "containerd://2.1".into(),
            cpus: 2,
            unschedulable: false,
            taints: Vec::new(),
            os: "linux".into(),
        }
    }

    #[test]
    fn labels_pick_client_and_server() {
        let nodes = [
            node("cp", None, Some("198.18.0.9")),
            node("b", Some("2"), Some("198.18.0.2")),
            node("a", Some("1"), Some("198.18.0.1")),
        ];
        let chosen = choose(&nodes, None).unwrap();
        assert_eq!(
            (chosen.client.name.as_str(), chosen.server.name.as_str()),
            ("a", "b")
        );
        assert_eq!(
            chosen.server.selector(),
            (HOSTNAME_LABEL.to_owned(), "b-host".to_owned())
        );
    }

    #[test]
    fn the_flag_wins_over_labels() {
        let nodes = [
            node("a", Some("1"), Some("198.18.0.1")),
            node("b", Some("2"), Some("198.18.0.2")),
            node("c", None, Some("198.18.0.3")),
        ];
        let chosen = choose(&nodes, Some("c, a")).unwrap();
        assert_eq!(
            (
                chosen.client.name.as_str(),
                chosen.server.name.as_str(),
                chosen.how
            ),
            ("c", "a", "--nodes")
        );
    }

    #[test]
    fn failures_list_what_was_found() {
        let nodes = [
            node("a", Some("1"), Some("198.18.0.1")),
            node("c", None, None),
        ];
        let text = choose(&nodes, None).unwrap_err().to_string();
        assert!(
            text.contains("workern=1") && text.contains("a (Ready, 198.18.0.1, workern=1)"),
            "{text}"
        );
        assert!(text.contains("c (Ready, no IPv4 InternalIP)"), "{text}");
        let text = choose(&nodes, Some("a,x")).unwrap_err().to_string();
        assert!(
            text.contains("node x (from --nodes) does not exist") && text.contains("a (Ready"),
            "{text}"
        );
        let text = choose(&nodes, Some("a,c")).unwrap_err().to_string();
        assert!(text.contains("node c has no IPv4 InternalIP"), "{text}");
        assert!(matches!(parse_flag("a"), Err(NodeError::BadFlag { .. })));
        assert!(matches!(parse_flag("a,a"), Err(NodeError::BadFlag { .. })));
        assert!(matches!(
            parse_flag("a,b,c"),
            Err(NodeError::BadFlag { .. })
        ));
        assert!(choose(&[], None)
            .unwrap_err()
            .to_string()
            .contains("the cluster lists no nodes"));
    }

    #[test]
    fn two_nodes_with_one_label_or_a_not_ready_node_are_refused() {
        let nodes = [
            node("a", Some("1"), Some("198.18.0.1")),
            node("b", Some("1"), Some("198.18.0.2")),
            node("c", Some("2"), Some("198.18.0.3")),
        ];
        assert!(matches!(
            choose(&nodes, None),
            Err(NodeError::Ambiguous {
                value: "1",
                count: 2,
                ..
            })
        ));
        let mut down = node("d", None, Some("198.18.0.4"));
        down.not_ready = Some("Ready=False, KubeletNotReady".into());
        let text = choose(&[nodes[0].clone(), down], Some("a,d"))
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("node d is not Ready (Ready=False, KubeletNotReady)"),
            "{text}"
        );
    }

    #[test]
    fn cpu_quantities() {
        assert_eq!(parse_cpus("4"), Some(4));
        assert_eq!(parse_cpus("3500m"), Some(3));
        assert_eq!(parse_cpus("500m"), Some(1));
        assert_eq!(parse_cpus("x"), None);
    }
}
