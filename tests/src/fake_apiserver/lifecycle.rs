//! A pod's life in the fake: admission (Pod Security `baseline` when configured), create (or
//! its dry run), start after a delay (Running, Ready or not; or an image that cannot be pulled),
//! graceful delete.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use super::routes::{failure, json_response, Body};
use super::{status, Ipv6Pods, PodInfo, Shared};

/// Admission as the fake's configuration has it: Pod Security `baseline` refuses host
/// networking and host ports, with the API server's wording.
fn admit(shared: &Shared, namespace: &str, pod: &Pod) -> Result<(), Response<Body>> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    if shared.config.pod_security_baseline && spec.host_network == Some(true) {
        let ports: Vec<String> = spec
            .containers
            .iter()
            .flat_map(|c| {
                c.ports
                    .iter()
                    .flatten()
                    .filter_map(|p| p.host_port)
                    .map(move |p| format!("container \"{}\" uses hostPort {p}", c.name))
            })
            .collect();
        let mut reasons = vec!["host namespaces (hostNetwork=true)".to_owned()];
        if !ports.is_empty() {
            reasons.push(format!("hostPort ({})", ports.join(", ")));
        }
        return Err(failure(status::failure(
            403,
            "Forbidden",
            &format!(
                "pods \"{name}\" is forbidden: violates PodSecurity \"baseline:latest\": {}",
                reasons.join(", ")
            ),
            json!({"name": name, "kind": "pods"}),
        )));
    }
    let _ = namespace;
    Ok(())
}

pub(super) async fn create_pod(
    shared: &Arc<Shared>,
    namespace: &str,
    dry_run: bool,
    req: Request<Incoming>,
) -> Response<Body> {
    let body = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(err) => return failure(status::bad_request(&format!("reading the body: {err}"))),
    };
    let mut pod: Pod = match serde_json::from_slice(&body) {
        Ok(pod) => pod,
        Err(err) => {
            return failure(status::bad_request(&format!(
                "the body is not a Pod: {err}"
            )))
        }
    };
    let Some(name) = pod.metadata.name.clone() else {
        return failure(status::failure(
            422,
            "Invalid",
            "Pod \"\" is invalid: metadata.name: Required value: name or generateName is required",
            json!({"kind": "Pod"}),
        ));
    };
    match pod.metadata.namespace.as_deref() {
        Some(ns) if ns != namespace => {
            return failure(status::bad_request(&format!(
                "the namespace of the provided object ({ns}) does not match the namespace sent on the request ({namespace})"
            )))
        }
        _ => pod.metadata.namespace = Some(namespace.to_owned()),
    }
    if let Err(refused) = admit(shared, namespace, &pod) {
        return refused;
    }
    if dry_run {
        return json_response(StatusCode::CREATED, serde_json::to_value(&pod).unwrap());
    }
    let created = {
        let mut state = shared.state.lock().unwrap();
        if state.pods.contains_key(&name) {
            return failure(status::already_exists("pods", &name));
        }
        let event = state.create(pod);
        let _ = shared.events.send(event.clone());
        event.pod
    };
    let scheduled = created
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_some();
    let never = shared
        .config
        .never_ready
        .iter()
        .any(|suffix| name.ends_with(suffix.as_str()));
    if scheduled && !never {
        tokio::spawn(start_pod(Arc::clone(shared), name));
    }
    json_response(StatusCode::CREATED, serde_json::to_value(created).unwrap())
}

/// After `ready_after`, the backend starts the pod's container; then it is Running and Ready.
async fn start_pod(shared: Arc<Shared>, name: String) {
    tokio::time::sleep(shared.config.ready_after).await;
    let info = {
        let state = shared.state.lock().unwrap();
        match state.pods.get(&name) {
            Some(pod)
                if pod.metadata.deletion_timestamp.is_none()
                    && pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_ref())
                        .is_some() =>
            {
                PodInfo::from_pod(pod)
            }
            _ => return,
        }
    };
    let image = {
        let state = shared.state.lock().unwrap();
        state
            .pods
            .get(&name)
            .and_then(|p| p.spec.as_ref()?.containers.first()?.image.clone())
            .unwrap_or_default()
    };
    if shared.config.unpullable_images.contains(&image) {
        for reason in ["ErrImagePull", "ImagePullBackOff"] {
            let event = shared
                .state
                .lock()
                .unwrap()
                .mark_pull_failing(&name, &image, reason);
            if let Some(event) = event {
                let _ = shared.events.send(event);
            }
            tokio::time::sleep(shared.config.ready_after).await;
        }
        return;
    }
    let started = shared.backend.start(&info).await;
    let mut state = shared.state.lock().unwrap();
    if state
        .pods
        .get(&name)
        .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
    {
        drop(state);
        shared.backend.stop(&info);
        return;
    }
    let ips: Vec<std::net::IpAddr> = match info.host_network {
        true => vec![state
            .node(&info.node)
            .map(|n| n.ip)
            .expect("scheduled on a known node")
            .into()],
        false => {
            let v4 = shared.backend.pod_ip(&info);
            // fd00:198:19::/48 mirrors the lab's 198.19.0.0/16 (unique local, never routed).
            let o = v4.octets();
            // Each octet's decimal digits read as hex: 198.19.2.30 -> fd00:198:19:2::30.
            let hex = |b: u8| u16::from_str_radix(&b.to_string(), 16).expect("decimal digits");
            let v6 = std::net::Ipv6Addr::new(0xfd00, 0x198, 0x19, hex(o[2]), 0, 0, 0, hex(o[3]));
            match shared.config.ipv6 {
                Ipv6Pods::None => vec![v4.into()],
                Ipv6Pods::DualStack => vec![v6.into(), v4.into()],
                Ipv6Pods::Only => vec![v6.into()],
            }
        }
    };
    let ready = !shared
        .config
        .running_not_ready
        .iter()
        .any(|suffix| name.ends_with(suffix.as_str()));
    let event = match started {
        Ok(()) => state.mark_started(&name, &ips, ready),
        Err(message) => state.mark_failed(&name, &message),
    };
    if let Some(event) = event {
        let _ = shared.events.send(event);
    }
}

/// Graceful deletion: Terminating now, gone after `terminate_after`.
pub(super) fn delete_pod(shared: &Arc<Shared>, name: &str) -> Response<Body> {
    let marked = {
        let mut state = shared.state.lock().unwrap();
        if !state.pods.contains_key(name) {
            return failure(status::not_found("pods", name));
        }
        let already = state.pods[name].metadata.deletion_timestamp.is_some();
        let event = if already {
            None
        } else {
            state.mark_deleting(name)
        };
        if let Some(event) = &event {
            let _ = shared.events.send(event.clone());
        }
        (state.pods[name].clone(), !already)
    };
    let (pod, first) = marked;
    if first {
        let shared = Arc::clone(shared);
        let name = name.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(shared.config.terminate_after).await;
            let info = {
                let mut state = shared.state.lock().unwrap();
                let info = state.pods.get(&name).map(PodInfo::from_pod);
                if let Some(event) = state.remove(&name) {
                    let _ = shared.events.send(event);
                }
                info
            };
            if let Some(info) = info {
                shared.backend.stop(&info);
            }
        });
    }
    json_response(StatusCode::OK, serde_json::to_value(pod).unwrap())
}
