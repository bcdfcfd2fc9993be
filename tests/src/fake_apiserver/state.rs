//! The fake cluster's objects, their resource versions and change history, and the log of
//! every request.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;

use super::{FakeNode, NAMESPACE};

/// A pod's declared host ports.
fn host_ports(pod: &Pod) -> Vec<i32> {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| p.host_port)
        .collect()
}

/// One change, as a watch reports it.
#[derive(Debug, Clone)]
pub struct Event {
    pub version: u64,
    /// ADDED, MODIFIED or DELETED.
    pub kind: &'static str,
    pub pod: Pod,
}

/// One request as the API server's authorizer would see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    /// `pods`, `pods/exec`, `pods/portforward`, `nodes`, `secrets`, `networkpolicies`, or the
    /// unknown path.
    pub resource: String,
    /// The namespace of a namespaced request.
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// What RBAC checks for it: `list`, `watch`, `get`, `create`, `delete`; a WebSocket exec
    /// or port-forward (an HTTP GET) is checked as `get` and, from Kubernetes 1.35, `create`.
    pub verbs: Vec<&'static str>,
    pub query: String,
}

/// Everything the fake cluster holds.
#[derive(Debug)]
pub struct State {
    pub nodes: Vec<FakeNode>,
    pub pods: BTreeMap<String, Pod>,
    version: u64,
    history: Vec<Event>,
    pub requests: Vec<RequestRecord>,
    /// Pods created through the API (POST), in order.
    pub created: Vec<String>,
    /// Pods deleted through the API (DELETE), in order.
    pub deleted: Vec<String>,
    next_uid: u64,
}

impl State {
    pub fn new(nodes: &[FakeNode]) -> Self {
        Self {
            nodes: nodes.to_vec(),
            pods: BTreeMap::new(),
            version: 100,
            history: Vec::new(),
            requests: Vec::new(),
            created: Vec::new(),
            deleted: Vec::new(),
            next_uid: 1,
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// `(namespace, resource, verb)` of every request, e.g. `(Some("netprof"), "pods/exec",
    /// "create")`.
    pub fn verbs_used(&self) -> BTreeSet<(Option<String>, String, String)> {
        self.requests
            .iter()
            .flat_map(|r| {
                r.verbs
                    .iter()
                    .map(move |v| (r.namespace.clone(), r.resource.clone(), (*v).to_owned()))
            })
            .collect()
    }

    /// The exec commands run, as `pod: command line`.
    pub fn execs(&self) -> Vec<String> {
        self.requests
            .iter()
            .filter(|r| r.resource == "pods/exec")
            .map(|r| {
                let command: Vec<String> = r
                    .query
                    .split('&')
                    .filter_map(|kv| kv.strip_prefix("command="))
                    .map(super::routes::decode)
                    .collect();
                format!("{}: {}", r.name.as_deref().unwrap_or(""), command.join(" "))
            })
            .collect()
    }

    pub fn node(&self, name: &str) -> Option<&FakeNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    fn bump(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    fn push(&mut self, kind: &'static str, pod: Pod) -> Event {
        let event = Event {
            version: self.version,
            kind,
            pod,
        };
        self.history.push(event.clone());
        event
    }

    /// Changes since `version` (exclusive).
    pub fn events_since(&self, version: u64) -> Vec<Event> {
        self.history
            .iter()
            .filter(|e| e.version > version)
            .cloned()
            .collect()
    }

    /// Stores `pod` as it is, filling in what the server owns (uid, version, timestamps).
    pub fn insert(&mut self, mut pod: Pod) -> Event {
        let version = self.bump();
        let name = pod.metadata.name.clone().unwrap_or_default();
        pod.metadata
            .namespace
            .get_or_insert_with(|| NAMESPACE.to_owned());
        pod.metadata
            .uid
            .get_or_insert_with(|| format!("00000000-0000-4000-8000-{:012}", self.next_uid));
        self.next_uid += 1;
        pod.metadata.resource_version = Some(version.to_string());
        pod.metadata.creation_timestamp.get_or_insert_with(now);
        self.pods.insert(name, pod.clone());
        self.push("ADDED", pod)
    }

    /// The node a pod would go to, or why none: its nodeSelector (or nodeName), and no other
    /// pod there holding one of its host ports (what the scheduler's NodePorts filter checks).
    fn schedule(&self, pod: &Pod) -> Result<String, String> {
        let selector = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_selector.clone())
            .unwrap_or_default();
        let wanted = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let node = match wanted {
            Some(name) => self.node(&name).map(|n| n.name.clone()),
            None => self
                .nodes
                .iter()
                .find(|n| selector.iter().all(|(k, v)| n.labels.get(k) == Some(v)))
                .map(|n| n.name.clone()),
        };
        let total = self.nodes.len();
        let Some(node) = node else {
            return Err(format!("0/{total} nodes are available: {total} node(s) didn't match Pod's node affinity/selector. preemption: 0/{total} nodes are available: {total} Preemption is not helpful for scheduling."));
        };
        let wanted_ports = host_ports(pod);
        let taken = self.pods.values().any(|other| {
            other.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str())
                && !matches!(
                    other.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
                && host_ports(other).iter().any(|p| wanted_ports.contains(p))
        });
        if taken {
            return Err(format!("0/{total} nodes are available: 1 node(s) didn't have free ports for the requested pod ports, {} node(s) didn't match Pod's node affinity/selector. preemption: 0/{total} nodes are available: {total} No preemption victims found for incoming pod.", total - 1));
        }
        Ok(node)
    }

    /// A pod as the API server stores it on create: scheduled ([`State::schedule`]), Pending
    /// with its containers being created, or Pending and Unschedulable with the reason.
    pub fn create(&mut self, mut pod: Pod) -> Event {
        let scheduled = self.schedule(&pod);
        let node = scheduled.as_ref().ok().cloned();
        let spec = pod.spec.get_or_insert_with(Default::default);
        spec.node_name = node.clone();
        let containers: Vec<String> = spec.containers.iter().map(|c| c.name.clone()).collect();
        pod.status = Some(match node {
            Some(_) => status(json!({
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "True"}],
                "containerStatuses": containers.iter().map(|c| container(c, json!({"waiting": {"reason": "ContainerCreating"}}), false)).collect::<Vec<_>>(),
            })),
            None => status(json!({
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": scheduled.err().unwrap_or_default()}],
            })),
        });
        let name = pod.metadata.name.clone().unwrap_or_default();
        self.created.push(name);
        self.insert(pod)
    }

    /// Applies `change` to a pod, as a MODIFIED event.
    pub fn modify(&mut self, name: &str, change: impl FnOnce(&mut Pod)) -> Option<Event> {
        let mut pod = self.pods.get(name)?.clone();
        change(&mut pod);
        let version = self.bump();
        pod.metadata.resource_version = Some(version.to_string());
        self.pods.insert(name.to_owned(), pod.clone());
        Some(self.push("MODIFIED", pod))
    }

    /// Running and Ready at `ips` (the first is `podIP`).
    pub fn mark_running(&mut self, name: &str, ips: &[std::net::IpAddr]) -> Option<Event> {
        self.mark_started(name, ips, true)
    }

    /// Running at `ips`, Ready or (a failing readiness probe) not.
    pub fn mark_started(
        &mut self,
        name: &str,
        ips: &[std::net::IpAddr],
        ready: bool,
    ) -> Option<Event> {
        let host_ip = {
            let pod = self.pods.get(name)?;
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            self.node(&node).map(|n| n.ip)
        };
        self.modify(name, |pod| {
            let containers: Vec<String> = pod.spec.iter().flat_map(|s| s.containers.iter().map(|c| c.name.clone())).collect();
            let condition = if ready { "True" } else { "False" };
            pod.status = Some(status(json!({
                "phase": "Running",
                "hostIP": host_ip.map(|i| i.to_string()),
                "podIP": ips[0].to_string(),
                "podIPs": ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect::<Vec<_>>(),
                "startTime": now().0.to_string(),
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Initialized", "status": "True"},
                    {"type": "ContainersReady", "status": condition},
                    {"type": "Ready", "status": condition},
                ],
                "containerStatuses": containers.iter().map(|c| container(c, json!({"running": {"startedAt": now().0.to_string()}}), ready)).collect::<Vec<_>>(),
            })));
        })
    }

    /// Failed: its container exited with `message` (restartPolicy Never).
    pub fn mark_failed(&mut self, name: &str, message: &str) -> Option<Event> {
        self.modify(name, |pod| {
            let containers: Vec<String> = pod.spec.iter().flat_map(|s| s.containers.iter().map(|c| c.name.clone())).collect();
            pod.status = Some(status(json!({
                "phase": "Failed",
                "conditions": [{"type": "Ready", "status": "False", "reason": "PodFailed"}],
                "containerStatuses": containers.iter().map(|c| container(c, json!({"terminated": {"exitCode": 1, "reason": "Error", "message": message}}), false)).collect::<Vec<_>>(),
            })));
        })
    }

    /// Waiting to pull `image`, which fails: ErrImagePull, as the kubelet says it.
    pub fn mark_pull_failing(&mut self, name: &str, image: &str, reason: &str) -> Option<Event> {
        self.modify(name, |pod| {
            let containers: Vec<String> = pod.spec.iter().flat_map(|s| s.containers.iter().map(|c| c.name.clone())).collect();
            let message = format!("Back-off pulling image \"{image}\": ErrImagePull: failed to pull and unpack image \"{image}\": failed to resolve reference \"{image}\": not found");
            pod.status = Some(status(json!({
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
                "containerStatuses": containers.iter().map(|c| container(c, json!({"waiting": {"reason": reason, "message": message}}), false)).collect::<Vec<_>>(),
            })));
        })
    }

    /// Graceful deletion: marked with a deletionTimestamp now, gone later ([`State::remove`]).
    pub fn mark_deleting(&mut self, name: &str) -> Option<Event> {
        self.deleted.push(name.to_owned());
        self.modify(name, |pod| {
            pod.metadata.deletion_timestamp = Some(now());
            pod.metadata.deletion_grace_period_seconds = Some(5);
        })
    }

    pub fn remove(&mut self, name: &str) -> Option<Event> {
        let mut pod = self.pods.remove(name)?;
        let version = self.bump();
        pod.metadata.resource_version = Some(version.to_string());
        Some(self.push("DELETED", pod))
    }

    /// The node object of a fake node: Ready, with its InternalIP and node info.
    pub fn node_object(node: &FakeNode) -> Node {
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node.name, "labels": node.labels, "resourceVersion": "1", "uid": format!("node-{}", node.name)},
            "spec": {
                "unschedulable": node.unschedulable,
                "taints": node.taints.iter().map(|(key, effect)| json!({"key": key, "effect": effect})).collect::<Vec<_>>(),
            },
            "status": {
                "addresses": [{"type": "InternalIP", "address": node.ip.to_string()}, {"type": "Hostname", "address": node.name}],
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110"},
                "nodeInfo": {
                    "kernelVersion": crate::kernel_release(), "kubeletVersion": "v1.35.0 (fake)", "osImage": "netprof fake node",
                    "containerRuntimeVersion": "fake://1", "architecture": "amd64", "bootID": "", "kubeProxyVersion": "",
                    "machineID": "", "operatingSystem": "linux", "systemUUID": ""
                }
            }
        }))
        .expect("a valid Node")
    }
}

fn status(value: serde_json::Value) -> k8s_openapi::api::core::v1::PodStatus {
    serde_json::from_value(value).expect("a valid PodStatus")
}

fn container(name: &str, state: serde_json::Value, ready: bool) -> serde_json::Value {
    json!({"name": name, "ready": ready, "restartCount": 0, "image": "", "imageID": "", "state": state})
}

fn now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now())
}
