//! The benchmark pods of one run, built in code from the templates of deploy/bench-pods.yaml
//! (tests/k8s_run.rs checks they stay the same): nginx (one worker, the 612-byte page from the
//! ConfigMap) and an iperf3 server on the server node, a client with ping, iperf3 and ab on the
//! client node, and each as a hostNetwork twin for the host path. Every pod is pinned with a
//! nodeSelector and carries the run's label.

use std::fmt;

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
}

/// Which network the pod uses: its own (the pod path) or the node's (hostNetwork, the host
/// path); one definition with the run directory's.
pub use crate::rundir::NetPath;

/// Image references (flags, so air-gapped clusters can point at a mirror).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    /// ping, iperf3, ab (and the agent): deploy/Dockerfile.
    pub netprof: String,
    pub nginx: String,
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

/// The container: image and command per role, resources as in the templates.
fn container(role: Role, images: &Images) -> serde_json::Value {
    let resources =
        json!({"requests": {"cpu": "100m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}});
    match role {
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
    }
}

/// The pod object to create.
pub fn spec(pod: &BenchPod, run_id: &str, node: &NodeInfo, images: &Images) -> Pod {
    let (selector_key, selector_value) = node.selector();
    let mut spec = json!({
        "nodeSelector": {selector_key: selector_value},
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 5,
        "automountServiceAccountToken": false,
        "containers": [container(pod.role, images)],
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
            "namespace": super::rbac::NAMESPACE,
            "labels": {
                NAME_LABEL: BENCH_APP,
                PART_OF_LABEL: PART_OF,
                ROLE_LABEL: pod.role.name(),
                PATH_LABEL: pod.path.name(),
                RUN_LABEL: run_id,
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

    #[test]
    fn pods_carry_the_run_label_and_are_pinned() {
        let images = Images {
            netprof: "registry.example/netprof:1".into(),
            nginx: "registry.example/nginx:1".into(),
        };
        for bench in plan("r1") {
            let pod = spec(&bench, "r1", &node(), &images);
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
