//! The HTTP side: routing `/api/v1/...` (and NetworkPolicies under `/apis`), recording each
//! request with the verbs RBAC would check, answering forbidden verbs with 403, and serving
//! list, watch, get, create (and its dry run, after admission) and delete.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

use super::selectors::Selector;
use super::state::{Event, RequestRecord, State};
use super::{exec, portforward, status, Ipv6Pods, PodInfo, Shared};

pub type Body = BoxBody<Bytes, Infallible>;

pub fn empty() -> Body {
    Full::new(Bytes::new()).boxed()
}

pub fn json_response(code: StatusCode, value: Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed())
        .expect("a valid response")
}

/// A `Status` answer with its own code.
fn failure(value: Value) -> Response<Body> {
    let code = value["code"]
        .as_u64()
        .and_then(|c| StatusCode::from_u16(c as u16).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, value)
}

/// Percent-decoding of a query value (`+` is a space, as form encoding writes it).
pub fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&text[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Query parameters, decoded, in order (exec repeats `command`).
fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn param<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Accepts connections until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = &mut shutdown => return,
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(handle(shared, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

/// What a request is, for RBAC and routing.
struct Route {
    resource: String,
    name: Option<String>,
    namespace: Option<String>,
    sub: Option<String>,
}

fn route(path: &str) -> Option<Route> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let owned = |s: &&str| (*s).to_owned();
    match parts.as_slice() {
        ["api", "v1", "namespaces", ns, "secrets", name] => Some(Route {
            resource: "secrets".into(),
            name: Some(owned(name)),
            namespace: Some(owned(ns)),
            sub: None,
        }),
        ["apis", "networking.k8s.io", "v1", "namespaces", ns, "networkpolicies"] => Some(Route {
            resource: "networkpolicies".into(),
            name: None,
            namespace: Some(owned(ns)),
            sub: None,
        }),
        ["api", "v1", "nodes"] => Some(Route {
            resource: "nodes".into(),
            name: None,
            namespace: None,
            sub: None,
        }),
        ["api", "v1", "nodes", name] => Some(Route {
            resource: "nodes".into(),
            name: Some(owned(name)),
            namespace: None,
            sub: None,
        }),
        ["api", "v1", "namespaces", ns, "pods"] => Some(Route {
            resource: "pods".into(),
            name: None,
            namespace: Some(owned(ns)),
            sub: None,
        }),
        ["api", "v1", "namespaces", ns, "pods", name] => Some(Route {
            resource: "pods".into(),
            name: Some(owned(name)),
            namespace: Some(owned(ns)),
            sub: None,
        }),
        ["api", "v1", "namespaces", ns, "pods", name, sub] => Some(Route {
            resource: format!("pods/{sub}"),
            name: Some(owned(name)),
            namespace: Some(owned(ns)),
            sub: Some(owned(sub)),
        }),
        _ => None,
    }
}

/// The verbs RBAC authorizes for a request (see `RequestRecord::verbs`).
fn verbs(method: &Method, route: &Route, watch: bool) -> Vec<&'static str> {
    match (method, route.sub.as_deref(), route.name.is_some()) {
        (&Method::GET, Some("exec" | "portforward"), _) => vec!["get", "create"],
        (&Method::POST, Some(_), _) => vec!["create"],
        (&Method::GET, None, _) if watch => vec!["watch"],
        (&Method::GET, None, false) => vec!["list"],
        (&Method::GET, _, true) => vec!["get"],
        (&Method::POST, None, false) => vec!["create"],
        (&Method::DELETE, None, true) => vec!["delete"],
        (&Method::DELETE, None, false) => vec!["deletecollection"],
        (&Method::PUT, _, _) => vec!["update"],
        (&Method::PATCH, _, _) => vec!["patch"],
        _ => vec![],
    }
}

async fn handle(shared: Arc<Shared>, mut req: Request<Incoming>) -> Response<Body> {
    let query = query(&req);
    let watch = matches!(param(&query, "watch"), Some("true" | "1"));
    let Some(route) = route(req.uri().path()) else {
        shared.state.lock().unwrap().requests.push(RequestRecord {
            method: req.method().to_string(),
            resource: req.uri().path().to_owned(),
            namespace: None,
            name: None,
            verbs: vec![],
            query: req.uri().query().unwrap_or_default().to_owned(),
        });
        return failure(status::no_route());
    };
    let verbs = verbs(req.method(), &route, watch);
    shared.state.lock().unwrap().requests.push(RequestRecord {
        method: req.method().to_string(),
        resource: route.resource.clone(),
        namespace: route.namespace.clone(),
        name: route.name.clone(),
        verbs: verbs.clone(),
        query: req.uri().query().unwrap_or_default().to_owned(),
    });
    if let Some(verb) = verbs.iter().find(|v| {
        shared
            .config
            .forbidden
            .iter()
            .any(|(fv, fr)| fv == *v && *fr == route.resource)
    }) {
        return failure(status::forbidden(
            verb,
            &route.resource,
            route.name.as_deref(),
            route.namespace.as_deref(),
        ));
    }
    if let Some(ns) = &route.namespace {
        if !shared.config.namespaces.contains(ns) {
            return failure(status::failure(
                404,
                "NotFound",
                &format!("namespaces \"{ns}\" not found"),
                json!({"name": ns, "kind": "namespaces"}),
            ));
        }
    }
    let labels = match Selector::parse(param(&query, "labelSelector").unwrap_or_default()) {
        Ok(s) => s,
        Err(message) => return failure(status::bad_request(&message)),
    };
    let fields = match Selector::parse(param(&query, "fieldSelector").unwrap_or_default()) {
        Ok(s) => s,
        Err(message) => return failure(status::bad_request(&message)),
    };
    let method = req.method().clone();
    match (route.resource.as_str(), route.name.as_deref(), method) {
        ("nodes", None, Method::GET) => list_nodes(&shared, &labels),
        ("nodes", Some(name), Method::GET) => {
            let state = shared.state.lock().unwrap();
            match state.node(name) {
                Some(node) => json_response(
                    StatusCode::OK,
                    serde_json::to_value(State::node_object(node)).unwrap(),
                ),
                None => failure(status::not_found("nodes", name)),
            }
        }
        ("secrets", Some(name), Method::GET) => {
            get_secret(&shared, route.namespace.as_deref(), name)
        }
        ("networkpolicies", None, Method::GET) => {
            let items = shared.config.network_policies.clone();
            json_response(
                StatusCode::OK,
                json!({"kind": "NetworkPolicyList", "apiVersion": "networking.k8s.io/v1", "metadata": {"resourceVersion": "1"}, "items": items}),
            )
        }
        ("pods", None, Method::GET) if watch => {
            let ns = route.namespace.clone().unwrap_or_default();
            watch_pods(&shared, &ns, &labels, &fields, &query)
        }
        ("pods", None, Method::GET) => list_pods(
            &shared,
            route.namespace.as_deref().unwrap_or_default(),
            &labels,
            &fields,
        ),
        ("pods", None, Method::POST) => {
            let dry_run = param(&query, "dryRun") == Some("All");
            let ns = route.namespace.clone().unwrap_or_default();
            create_pod(&shared, &ns, dry_run, req).await
        }
        ("pods", Some(name), Method::GET) => match shared.state.lock().unwrap().pods.get(name) {
            Some(pod) => json_response(StatusCode::OK, serde_json::to_value(pod).unwrap()),
            None => failure(status::not_found("pods", name)),
        },
        ("pods", Some(name), Method::DELETE) => delete_pod(&shared, name),
        ("pods/exec", Some(name), Method::GET) => {
            let container = param(&query, "container").map(str::to_owned);
            let command: Vec<String> = query
                .iter()
                .filter(|(k, _)| k == "command")
                .map(|(_, v)| v.clone())
                .collect();
            match running_pod(&shared, name, container.as_deref()) {
                Ok((info, container)) => exec::serve(
                    &mut req,
                    Arc::clone(&shared.backend),
                    info,
                    container,
                    command,
                ),
                Err(response) => response,
            }
        }
        ("pods/portforward", Some(name), Method::GET) => {
            let ports: Vec<u16> = param(&query, "ports")
                .unwrap_or_default()
                .split(',')
                .filter_map(|p| p.trim().parse().ok())
                .collect();
            match (running_pod(&shared, name, None), ports.as_slice()) {
                (Ok((info, _)), [port]) => {
                    portforward::serve(&mut req, Arc::clone(&shared.backend), info, *port)
                }
                (Ok(_), _) => failure(status::bad_request(
                    "the fake forwards exactly one port per request",
                )),
                (Err(response), _) => response,
            }
        }
        _ => failure(status::failure(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
            json!({}),
        )),
    }
}

/// The pod, Running, and the container to use (its first by default).
fn running_pod(
    shared: &Shared,
    name: &str,
    container: Option<&str>,
) -> Result<(PodInfo, String), Response<Body>> {
    let state = shared.state.lock().unwrap();
    let Some(pod) = state.pods.get(name) else {
        return Err(failure(status::not_found("pods", name)));
    };
    let names: Vec<String> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter().map(|c| c.name.clone()))
        .collect();
    let container = container
        .map(str::to_owned)
        .or_else(|| names.first().cloned())
        .unwrap_or_default();
    if !names.contains(&container) {
        return Err(failure(status::bad_request(&format!(
            "container {container} is not valid for pod {name}"
        ))));
    }
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    if phase != "Running" {
        return Err(failure(status::bad_request(&format!("pod {name} is not running (phase {phase}): unable to upgrade connection: container not found (\"{container}\")"))));
    }
    Ok((PodInfo::from_pod(pod), container))
}

fn list_nodes(shared: &Shared, labels: &Selector) -> Response<Body> {
    let state = shared.state.lock().unwrap();
    let items: Vec<Value> = state
        .nodes
        .iter()
        .filter(|n| labels.matches(&n.labels))
        .map(|n| serde_json::to_value(State::node_object(n)).unwrap())
        .collect();
    json_response(
        StatusCode::OK,
        json!({"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": state.version().to_string()}, "items": items}),
    )
}

fn selected(pod: &Pod, labels: &Selector, fields: &Selector) -> bool {
    labels.matches(&pod.metadata.labels.clone().unwrap_or_default()) && fields.matches_fields(pod)
}

/// The agents' token Secret, if the fake has one.
fn get_secret(shared: &Shared, namespace: Option<&str>, name: &str) -> Response<Body> {
    use base64_lite::encode;
    let ours = namespace == Some(shared.config.agent_namespace())
        && name == netprof::k8s::rbac::AGENT_TOKEN_SECRET;
    match (&shared.config.agent_token, ours) {
        (Some(token), true) => json_response(
            StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"},
                "data": {netprof::k8s::rbac::AGENT_TOKEN_KEY: encode(format!("{token}\n").as_bytes())}}),
        ),
        _ => failure(status::not_found("secrets", name)),
    }
}

/// Base64 for the Secret's data (the tests crate has no base64 dependency).
mod base64_lite {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

fn in_namespace(pod: &Pod, namespace: &str) -> bool {
    pod.metadata.namespace.as_deref() == Some(namespace)
}

fn list_pods(
    shared: &Shared,
    namespace: &str,
    labels: &Selector,
    fields: &Selector,
) -> Response<Body> {
    let state = shared.state.lock().unwrap();
    let items: Vec<Value> = state
        .pods
        .values()
        .filter(|p| in_namespace(p, namespace) && selected(p, labels, fields))
        .map(|p| serde_json::to_value(p).unwrap())
        .collect();
    json_response(
        StatusCode::OK,
        json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": state.version().to_string()}, "items": items}),
    )
}

fn event_line(event: &Event) -> Bytes {
    let line = json!({"type": event.kind, "object": serde_json::to_value(&event.pod).unwrap()});
    Bytes::from(format!("{line}\n"))
}

/// `watch=true`: the changes after `resourceVersion` (or every pod as ADDED when it is empty or
/// 0), then live ones, until `timeoutSeconds` or the client hangs up.
fn watch_pods(
    shared: &Arc<Shared>,
    namespace: &str,
    labels: &Selector,
    fields: &Selector,
    query: &[(String, String)],
) -> Response<Body> {
    let timeout = param(query, "timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(300)
        .min(300);
    let since = param(query, "resourceVersion")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(256);
    // Subscribing under the lock: a change is either in the history read here or broadcast later.
    let (backlog, mut live) = {
        let state = shared.state.lock().unwrap();
        let backlog: Vec<Event> = if since == 0 {
            state
                .pods
                .values()
                .map(|p| Event {
                    version: state.version(),
                    kind: "ADDED",
                    pod: p.clone(),
                })
                .collect()
        } else {
            state.events_since(since)
        };
        (backlog, shared.events.subscribe())
    };
    let (labels, fields, namespace) = (labels.clone(), fields.clone(), namespace.to_owned());
    let selected =
        move |pod: &Pod| in_namespace(pod, &namespace) && selected(pod, &labels, &fields);
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut last = since;
        for event in backlog {
            last = last.max(event.version);
            if selected(&event.pod) && tx.send(Ok(Frame::data(event_line(&event)))).await.is_err() {
                return;
            }
        }
        loop {
            tokio::select! {
                received = live.recv() => match received {
                    Ok(event) if event.version > last => {
                        last = event.version;
                        if selected(&event.pod) && tx.send(Ok(Frame::data(event_line(&event)))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let gone = json!({"type": "ERROR", "object": status::failure(410, "Expired", "too old resource version", json!({}))});
                        let _ = tx.send(Ok(Frame::data(Bytes::from(format!("{gone}\n"))))).await;
                        return;
                    }
                    Err(_) => return,
                },
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("a valid response")
}

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

async fn create_pod(
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
fn delete_pod(shared: &Arc<Shared>, name: &str) -> Response<Body> {
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
