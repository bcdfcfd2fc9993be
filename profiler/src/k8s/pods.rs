//! The benchmark pods of one run, built in code from the templates of
//! deploy/manual/bench-pods.yaml (tests/k8s_run.rs checks they stay the same): nginx (one
//! worker, the 612-byte page from the ConfigMap) and an iperf3 server on the server node, a
//! client with ping, iperf3 and ab on the client node, and each as a hostNetwork twin for the
//! host path. Every pod is pinned with a nodeSelector and carries the run's label.
//!
//! The servers declare their ports, and the hostNetwork twins theirs as host ports, so the
//! scheduler sees a conflict with another pod holding 80 or 5201 on the node (the pod stays
//! Pending with the reason) instead of nginx failing to bind. Every pod has an
//! `activeDeadlineSeconds` a little past the run's longest possible duration: a run killed
//! with SIGKILL, or whose machine went away, leaves pods that stop by themselves (Failed,
//! `DeadlineExceeded`) and free the host ports; their objects stay for `k8s clean`.

use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use super::nodes::NodeInfo;
use super::{
    BENCH_APP, NAME_LABEL, NGINX_CONFIGMAP, PART_OF, PART_OF_LABEL, PATH_LABEL, ROLE_LABEL,
    RUN_LABEL,
};
use crate::bench::servers::IPERF3_PORT;

/// What a benchmark pod runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Nginx,
    Iperf3,
    Client,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Nginx, Role::Iperf3, Role::Client];

    /// The `netprof.io/role` label value, also the container's name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Nginx => "nginx",
            Role::Iperf3 => "iperf3",
            Role::Client => "client",
        }
    }

    /// Servers run on the server node, the client on the client node.
    pub fn on_server_node(self) -> bool {
        self != Role::Client
    }

    /// The TCP port a server listens on (`None`: the client).
    pub fn port(self) -> Option<(&'static str, u16)> {
        match self {
            Role::Nginx => Some(("http", HTTP_PORT)),
            Role::Iperf3 => Some(("iperf3", IPERF3_PORT)),
            Role::Client => None,
        }
    }
}

/// nginx's port, on the pod IP and (hostNetwork twin) on the server node.
pub const HTTP_PORT: u16 = 80;

/// Which network the pod uses: its own (the pod path) or the node's (hostNetwork, the host
/// path); one definition with the run directory's.
pub use crate::rundir::NetPath;

/// Image references: netprof's is the agents' unless `--image` says otherwise (one image for
/// the agent and the clients: deploy/Dockerfile); nginx's is `--nginx-image` (mirrors for
/// air-gapped clusters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    /// ping, iperf3, ab (and the agent): deploy/Dockerfile.
    pub netprof: String,
    pub nginx: String,
}

/// What every pod of a run shares besides its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSettings {
    pub run_id: String,
    pub namespace: String,
    pub images: Images,
    /// `activeDeadlineSeconds`: the pods stop by themselves this long after they start.
    pub deadline: Duration,
}

/// One benchmark pod of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchPod {
    pub role: Role,
    pub path: NetPath,
    pub name: String,
}

impl fmt::Display for BenchPod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl BenchPod {
    pub fn container(&self) -> &'static str {
        self.role.name()
    }
}

/// `netprof-<run>-<role>`, with `-host` for the hostNetwork twin.
pub fn pod_name(run_id: &str, role: Role, path: NetPath) -> String {
    let suffix = if path == NetPath::Host { "-host" } else { "" };
    format!("netprof-{run_id}-{}{suffix}", role.name())
}

/// The label selector of everything a run created.
pub fn run_selector(run_id: &str) -> String {
    format!("{RUN_LABEL}={run_id}")
}

/// The six pods of a run: servers first (the client waits for nothing, but servers take
/// longest to pull and start).
pub fn plan(run_id: &str) -> Vec<BenchPod> {
    let mut pods = Vec::new();
    for role in Role::ALL {
        for path in NetPath::ALL {
            pods.push(BenchPod {
                role,
                path,
                name: pod_name(run_id, role, path),
            });
        }
    }
    pods
}

/// The container: image and command per role, resources and ports as in the templates.
fn container(role: Role, path: NetPath, images: &Images) -> serde_json::Value {
    let resources =
        json!({"requests": {"cpu": "100m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}});
    let mut container = match role {
        Role::Nginx => json!({
            "name": role.name(),
            "image": images.nginx,
            "command": ["nginx", "-g", "daemon off;"],
            "resources": resources,
            "volumeMounts": [
                {"name": "page", "mountPath": "/etc/nginx/nginx.conf", "subPath": "nginx.conf", "readOnly": true},
                {"name": "page", "mountPath": "/usr/share/nginx/html/index.html", "subPath": "index.html", "readOnly": true},
            ],
        }),
        Role::Iperf3 => json!({
            "name": role.name(),
            "image": images.netprof,
            "command": ["iperf3", "-s", "-p", IPERF3_PORT.to_string()],
            "resources": resources,
        }),
        Role::Client => json!({
            "name": role.name(),
            "image": images.netprof,
            "command": ["sleep", "infinity"],
            "resources": resources,
        }),
    };
    // A container that exits (nginx failing to bind a host port taken by a program outside
    // Kubernetes, say) leaves its last log lines as its termination message, which the run's
    // error then quotes.
    container["terminationMessagePolicy"] = json!("FallbackToLogsOnError");
    if let Some((name, port)) = role.port() {
        let mut declared = json!({"name": name, "containerPort": port, "protocol": "TCP"});
        if path == NetPath::Host {
            // With hostNetwork the container's port is the node's: declared, the scheduler
            // keeps two pods wanting it apart.
            declared["hostPort"] = json!(port);
        }
        container["ports"] = json!([declared]);
    }
    container
}

/// The pod object to create.
pub fn spec(pod: &BenchPod, node: &NodeInfo, settings: &PodSettings) -> Pod {
    let (selector_key, selector_value) = node.selector();
    let mut spec = json!({
        "nodeSelector": {selector_key: selector_value},
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 5,
        "activeDeadlineSeconds": settings.deadline.as_secs().max(1),
        "automountServiceAccountToken": false,
        "containers": [container(pod.role, pod.path, &settings.images)],
    });
    if pod.path == NetPath::Host {
        spec["hostNetwork"] = json!(true);
        spec["dnsPolicy"] = json!("ClusterFirstWithHostNet");
    }
    if pod.role == Role::Nginx {
        spec["volumes"] = json!([{"name": "page", "configMap": {"name": NGINX_CONFIGMAP}}]);
    }
    let value = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name,
            "namespace": settings.namespace,
            "labels": {
                NAME_LABEL: BENCH_APP,
                PART_OF_LABEL: PART_OF,
                ROLE_LABEL: pod.role.name(),
                PATH_LABEL: pod.path.name(),
                RUN_LABEL: settings.run_id,
            },
        },
        "spec": spec,
    });
    serde_json::from_value(value).expect("the pod template is a valid Pod")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::nodes::HOSTNAME_LABEL;

    fn node() -> NodeInfo {
        NodeInfo {
            name: "worker-b".into(),
            labels: [(HOSTNAME_LABEL.to_owned(), "b.example".to_owned())].into(),
            internal_ip: Some("198.18.0.2".parse().unwrap()),
            addresses: vec![],
            not_ready: None,
            kernel: String::new(),
            kubelet: String::new(),
            os_image: String::new(),
            container_runtime: String::new(),
            cpus: 2,
            unschedulable: false,
            taints: Vec::new(),
            os: "linux".into(),
        }
    }

    #[test]
    fn six_pods_with_unique_names() {
        let pods = plan("1a2b3c4d");
        assert_eq!(pods.len(), 6);
        let mut names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 6);
        assert!(
            names.contains(&"netprof-1a2b3c4d-iperf3-host")
                && names.contains(&"netprof-1a2b3c4d-client")
        );
    }

    fn settings() -> PodSettings {
        PodSettings {
            run_id: "r1".into(),
            namespace: "bench".into(),
            images: Images {
                netprof: "registry.example/netprof:1".into(),
                nginx: "registry.example/nginx:1".into(),
            },
            deadline: Duration::from_secs(900),
        }
    }

    #[test]
    fn servers_declare_their_ports_and_twins_as_host_ports() {
        for bench in plan("r1") {
            let pod = spec(&bench, &node(), &settings());
            let spec = pod.spec.unwrap();
            assert_eq!(spec.active_deadline_seconds, Some(900));
            let ports = spec.containers[0].ports.clone().unwrap_or_default();
            match bench.role.port() {
                None => assert!(ports.is_empty()),
                Some((_, port)) => {
                    assert_eq!(ports.len(), 1);
                    assert_eq!(ports[0].container_port, i32::from(port));
                    let host = (bench.path == NetPath::Host).then_some(i32::from(port));
                    assert_eq!(ports[0].host_port, host, "{}", bench.name);
                }
            }
        }
    }

    #[test]
    fn pods_carry_the_run_label_and_are_pinned() {
        for bench in plan("r1") {
            let pod = spec(&bench, &node(), &settings());
            assert_eq!(pod.metadata.namespace.as_deref(), Some("bench"));
            let labels = pod.metadata.labels.as_ref().unwrap();
            assert_eq!(labels.get(RUN_LABEL).map(String::as_str), Some("r1"));
            assert_eq!(
                labels.get(PART_OF_LABEL).map(String::as_str),
                Some("netprof")
            );
            let spec = pod.spec.unwrap();
            assert_eq!(
                spec.node_selector
                    .unwrap()
                    .get(HOSTNAME_LABEL)
                    .map(String::as_str),
                Some("b.example")
            );
            assert_eq!(
                spec.host_network.unwrap_or(false),
                bench.path == NetPath::Host
            );
            let image = spec.containers[0].image.clone().unwrap();
            assert!(image.starts_with("registry.example/"), "{image}");
            assert_eq!(spec.volumes.is_some(), bench.role == Role::Nginx);
        }
    }
}
