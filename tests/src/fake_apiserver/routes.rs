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

use super::lifecycle::{create_pod, delete_pod};
use super::secrets::get_secret;
use super::selectors::Selector;
use super::state::{Event, RequestRecord, State};
use super::{exec, portforward, status, PodInfo, Shared};

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
pub(super) fn failure(value: Value) -> Response<Body> {
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

pub(super) fn in_namespace(pod: &Pod, namespace: &str) -> bool {
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
