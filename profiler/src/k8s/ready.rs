//! Waiting for the run's pods: list once, then watch (RBAC: `list` and `watch` pods) until each
//! is Ready with an IP, one fails, or the timeout passes; the timeout names every pod that is
//! not ready with its last status, so the cause (image pull, scheduling, volume) is visible.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use tokio::time::{timeout_at, Instant};

use super::error::api;
use super::{K8sError, NGINX_CONFIGMAP};

/// A pod that is ready, with what the benchmarks need of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyPod {
    pub name: String,
    /// The address the benchmarks use: the agents follow IPv4 flows.
    pub ip: Ipv4Addr,
    /// Every address of the pod (`podIPs`: both families on a dual-stack cluster).
    pub ips: Vec<IpAddr>,
    pub node: String,
}

/// Longest a single watch request stays open before it is renewed (API servers end watches
/// after their own timeout anyway).
const WATCH_SECS: u32 = 60;

/// Waits until every pod in `expected` (selected by `selector`) is Ready.
pub async fn wait_ready(
    pods: &Api<Pod>,
    selector: &str,
    expected: &[String],
    limit: Duration,
) -> Result<BTreeMap<String, ReadyPod>, K8sError> {
    let deadline = Instant::now() + limit;
    let mut seen: BTreeMap<String, Pod> = BTreeMap::new();
    let not_ready = |seen: &BTreeMap<String, Pod>| K8sError::NotReady {
        secs: limit.as_secs(),
        pods: describe_waiting(seen, expected),
    };
    loop {
        let listed =
            match timeout_at(deadline, pods.list(&ListParams::default().labels(selector))).await {
                Ok(result) => result.map_err(api(pods, "list", "pods", ""))?,
                Err(_) => return Err(not_ready(&seen)),
            };
        seen = listed
            .items
            .into_iter()
            .map(|p| (p.metadata.name.clone().unwrap_or_default(), p))
            .collect();
        if let Some(ready) = check(&seen, expected)? {
            return Ok(ready);
        }
        let version = listed.metadata.resource_version.unwrap_or_default();
        let left = deadline.saturating_duration_since(Instant::now()).as_secs() as u32;
        let params = WatchParams::default()
            .labels(selector)
            .timeout(left.clamp(1, WATCH_SECS));
        let stream = match timeout_at(deadline, pods.watch(&params, &version)).await {
            Ok(result) => result.map_err(api(pods, "watch", "pods", ""))?,
            Err(_) => return Err(not_ready(&seen)),
        };
        let mut stream = stream.boxed();
        loop {
            let event = match timeout_at(deadline, stream.try_next()).await {
                Err(_) => return Err(not_ready(&seen)),
                Ok(Err(err)) => return Err(api(pods, "watch", "pods", "")(err)),
                // The server ended the watch: list again and renew it.
                Ok(Ok(None)) => break,
                Ok(Ok(Some(event))) => event,
            };
            match event {
                WatchEvent::Added(pod) | WatchEvent::Modified(pod) => {
                    seen.insert(pod.metadata.name.clone().unwrap_or_default(), pod);
                }
                WatchEvent::Deleted(pod) => {
                    let name = pod.metadata.name.unwrap_or_default();
                    if expected.contains(&name) {
                        return Err(K8sError::PodVanished { pod: name });
                    }
                }
                WatchEvent::Bookmark(_) => {}
                // 410 Gone: the resource version is too old; list again.
                WatchEvent::Error(status) if status.code == 410 => break,
                WatchEvent::Error(status) => {
                    return Err(api(pods, "watch", "pods", "")(kube::Error::Api(status)))
                }
            }
            if let Some(ready) = check(&seen, expected)? {
                return Ok(ready);
            }
        }
    }
}

/// `Some` when every expected pod is ready; an error when one has stopped.
fn check(
    seen: &BTreeMap<String, Pod>,
    expected: &[String],
) -> Result<Option<BTreeMap<String, ReadyPod>>, K8sError> {
    let mut ready = BTreeMap::new();
    for name in expected {
        let Some(pod) = seen.get(name) else { continue };
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("Pending");
        // restartPolicy Never: a pod whose container exited will not come back.
        if phase == "Failed" || phase == "Succeeded" {
            let mut status = describe(pod);
            let hints = hints_for(name, &status);
            if !hints.is_empty() {
                status.push_str(&format!(" ({})", hints.join("; ")));
            }
            return Err(K8sError::PodFailed {
                pod: name.clone(),
                status,
            });
        }
        if let Some(r) = as_ready(pod) {
            let ipv4 = r.ips.iter().find_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            });
            let Some(ip) = ipv4 else {
                return Err(K8sError::NoIpv4Pod {
                    pod: name.clone(),
                    ips: r
                        .ips
                        .iter()
                        .map(IpAddr::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            ready.insert(name.clone(), ReadyPod { ip, ..r });
        }
    }
    Ok((ready.len() == expected.len()).then_some(ready))
}

/// Ready with at least one address; `ip` is filled by [`check`] from `ips`.
fn as_ready(pod: &Pod) -> Option<ReadyPod> {
    let status = pod.status.as_ref()?;
    let ready = status
        .conditions
        .as_ref()?
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if let Some(ip) = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok()) {
        if !ips.contains(&ip) {
            ips.insert(0, ip);
        }
    }
    (ready && !ips.is_empty()).then(|| ReadyPod {
        name: pod.metadata.name.clone().unwrap_or_default(),
        ip: Ipv4Addr::UNSPECIFIED,
        ips,
        node: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
    })
}

/// One line about a pod's state: phase, scheduling, each container's state.
pub fn describe(pod: &Pod) -> String {
    let Some(status) = pod.status.as_ref() else {
        return "no status yet".to_owned();
    };
    let mut parts = vec![status.phase.clone().unwrap_or_else(|| "Pending".to_owned())];
    if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
        parts.push(format!("on {node}"));
    }
    for c in status.conditions.iter().flatten() {
        if c.type_ == "PodScheduled" && c.status == "False" {
            let reason = c.reason.as_deref().unwrap_or("not scheduled");
            parts.push(
                format!("{reason}: {}", c.message.as_deref().unwrap_or(""))
                    .trim_end_matches(": ")
                    .to_owned(),
            );
        }
    }
    for c in status.container_statuses.iter().flatten() {
        let state = c.state.as_ref();
        if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.as_deref().unwrap_or("waiting");
            let message = w
                .message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            parts.push(format!("{} {reason}{message}", c.name));
        } else if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
            let reason = t.reason.as_deref().unwrap_or("terminated");
            let message = t
                .message
                .as_deref()
                .map(|m| format!(": {}", m.trim()))
                .unwrap_or_default();
            parts.push(format!(
                "{} {reason} (exit {}){message}",
                c.name, t.exit_code
            ));
        } else if !c.ready {
            parts.push(format!("{} running, not ready", c.name));
        }
    }
    parts.join(", ")
}

/// What to do when a node cannot pull an image.
pub const IMAGE_HINT: &str = "the nodes cannot pull that image: build and push netprof's (`cargo xtask image \
    REGISTRY/netprof:TAG` sets it in deploy/kustomization.yaml; then `kubectl apply -k deploy/`), or give --image / \
    --nginx-image (a mirror the nodes reach)";

/// The not-ready pods with their last state, and a hint for the usual causes.
fn describe_waiting(seen: &BTreeMap<String, Pod>, expected: &[String]) -> String {
    let mut lines = Vec::new();
    let mut hints = Vec::new();
    for name in expected {
        let line = match seen.get(name) {
            Some(pod) if as_ready(pod).is_some() => continue,
            Some(pod) => describe(pod),
            None => "not seen by the watch".to_owned(),
        };
        for hint in hints_for(name, &line) {
            if !hints.contains(&hint) {
                hints.push(hint);
            }
        }
        lines.push(format!("{name}: {line}"));
    }
    let mut text = lines.join("; ");
    if !hints.is_empty() {
        text.push_str(&format!(" ({})", hints.join("; ")));
    }
    text
}

/// What usually causes the state `line` describes of pod `name`, and what to do.
fn hints_for(name: &str, line: &str) -> Vec<String> {
    let mut hints = Vec::new();
    if line.contains("ErrImagePull")
        || line.contains("ImagePullBackOff")
        || line.contains("InvalidImageName")
    {
        hints.push(IMAGE_HINT.to_owned());
    }
    if line.to_ascii_lowercase().contains("address already in use") {
        hints.push(
            "a program outside Kubernetes holds that port on the node (the scheduler knows only \
             pods' declared host ports): find it with `ss -ltnp` on the node"
                .to_owned(),
        );
    }
    if line.contains("free ports") {
        hints.push(format!(
            "another pod holds port {} or {} on that node (a hostPort, or a hostNetwork pod declaring it): \
             find it with `kubectl get pods -A -o wide --field-selector spec.nodeName=NODE`",
            super::pods::HTTP_PORT,
            crate::bench::servers::IPERF3_PORT
        ));
    } else if line.contains("Unschedulable") {
        hints.push(
            "the nodes cannot take the pods (taints, resources?): see `kubectl describe node`"
                .to_owned(),
        );
    }
    if line.contains("ContainerCreating") && name.contains("-nginx") {
        hints.push(format!(
            "the nginx pods mount the ConfigMap {NGINX_CONFIGMAP} of deploy/bench-nginx.yaml: is deploy/ applied (`kubectl apply -k deploy/`)?"
        ));
    }
    hints
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_ready_pod_has_the_condition_and_an_ip() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "a"}, "spec": {"nodeName": "n1", "containers": []},
            "status": {"phase": "Running", "podIP": "198.19.1.5", "conditions": [{"type": "Ready", "status": "True"}]}
        }));
        let seen = BTreeMap::from([("a".to_owned(), p)]);
        let ready = check(&seen, &["a".to_owned()]).unwrap().unwrap();
        assert_eq!(
            ready["a"],
            ReadyPod {
                name: "a".into(),
                ip: "198.19.1.5".parse().unwrap(),
                ips: vec!["198.19.1.5".parse().unwrap()],
                node: "n1".into()
            }
        );
        assert!(check(&seen, &["a".to_owned(), "b".to_owned()])
            .unwrap()
            .is_none());
    }

    #[test]
    fn dual_stack_pods_use_their_ipv4_and_single_stack_ipv6_is_named() {
        let dual = pod(serde_json::json!({
            "metadata": {"name": "a"}, "spec": {"nodeName": "n1", "containers": []},
            "status": {"phase": "Running", "podIP": "fd00:10:244::5",
                "podIPs": [{"ip": "fd00:10:244::5"}, {"ip": "198.19.1.5"}],
                "conditions": [{"type": "Ready", "status": "True"}]}
        }));
        let seen = BTreeMap::from([("a".to_owned(), dual)]);
        let ready = check(&seen, &["a".to_owned()]).unwrap().unwrap();
        assert_eq!(ready["a"].ip, Ipv4Addr::new(198, 19, 1, 5));
        assert_eq!(ready["a"].ips.len(), 2);
        let v6 = pod(serde_json::json!({
            "metadata": {"name": "b"}, "spec": {"nodeName": "n1", "containers": []},
            "status": {"phase": "Running", "podIP": "fd00:10:244::6", "podIPs": [{"ip": "fd00:10:244::6"}],
                "conditions": [{"type": "Ready", "status": "True"}]}
        }));
        let seen = BTreeMap::from([("b".to_owned(), v6)]);
        let err = check(&seen, &["b".to_owned()]).unwrap_err().to_string();
        assert!(
            err.starts_with("pod b has only IPv6 addresses (fd00:10:244::6)"),
            "{err}"
        );
    }

    #[test]
    fn waiting_pods_are_described_with_a_hint() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "netprof-r-nginx"}, "spec": {"nodeName": "n2", "containers": []},
            "status": {"phase": "Pending", "containerStatuses": [{"name": "nginx", "ready": false, "restartCount": 0,
                "image": "", "imageID": "", "state": {"waiting": {"reason": "ContainerCreating"}}}]}
        }));
        let seen = BTreeMap::from([("netprof-r-nginx".to_owned(), p)]);
        let text = describe_waiting(
            &seen,
            &["netprof-r-nginx".to_owned(), "netprof-r-client".to_owned()],
        );
        assert!(text.starts_with("netprof-r-nginx: Pending, on n2, nginx ContainerCreating; netprof-r-client: not seen"), "{text}");
        assert!(text.contains("ConfigMap netprof-bench-nginx"), "{text}");
    }

    #[test]
    fn a_server_that_cannot_bind_its_host_port_is_explained() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "netprof-r-nginx-host"}, "spec": {"containers": []},
            "status": {"phase": "Failed", "containerStatuses": [{"name": "nginx", "ready": false, "restartCount": 0,
                "image": "", "imageID": "", "state": {"terminated": {"exitCode": 1, "reason": "Error",
                "message": "nginx: [emerg] bind() to 0.0.0.0:80 failed (98: Address already in use)\n"}}}]}
        }));
        let seen = BTreeMap::from([("netprof-r-nginx-host".to_owned(), p)]);
        let err = check(&seen, &["netprof-r-nginx-host".to_owned()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("nginx Error (exit 1): nginx: [emerg] bind() to 0.0.0.0:80 failed (98: Address already in use)"), "{err}");
        assert!(
            err.contains("a program outside Kubernetes holds that port on the node"),
            "{err}"
        );
    }

    #[test]
    fn a_stopped_pod_fails_the_wait() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "c"}, "spec": {"containers": []},
            "status": {"phase": "Failed", "containerStatuses": [{"name": "client", "ready": false, "restartCount": 0,
                "image": "", "imageID": "", "state": {"terminated": {"exitCode": 127, "reason": "Error", "message": "sleep: not found\n"}}}]}
        }));
        let seen = BTreeMap::from([("c".to_owned(), p)]);
        let err = check(&seen, &["c".to_owned()]).unwrap_err().to_string();
        assert_eq!(err, "pod c stopped before the benchmarks were done: Failed, client Error (exit 127): sleep: not found");
    }
}
