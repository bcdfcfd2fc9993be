//! The agent's control API (`netprof agent --serve`): one [`Agent`] at a time, driven over
//! HTTP/1.1 with JSON bodies.
//!
//! It listens on loopback only. In Kubernetes the agent runs with hostNetwork, so loopback is
//! the node's, reachable by the kubelet's probes and by the Kubernetes port-forward API (which
//! RBAC governs: `pods/portforward` in the netprof namespace), and no port opens on the node
//! network.
//!
//! | route | answer |
//! |---|---|
//! | `POST /v1/start` | attach (body: [`request::StartRequest`]); 200 `{"attach_ms", ...}`, 400 bad request, 409 already attached, 422/500 attach failed |
//! | `POST /v1/stop` | detach; 200 final [`AgentReport`], 409 not started |
//! | `GET /v1/snapshot` | 200 [`AgentReport`] (live, or the final one after `duration_s`), 409 not started |
//! | `POST /v1/reset` | 204, 409 not attached |
//! | `GET /v1/status` | 200 `{"state": "idle" / "attached" / "stopped", ...}` |
//! | `GET /v1/features` | 200 what the kernel lets the agent attach ([`crate::ebpf::features`]) |
//! | `GET /healthz` | 200 `ok` while serving |
//! | `GET /readyz` | 200 `ready: <the ways tc and netfilter attach>`, or 503 with what is missing |
//! | `GET /metrics` | Prometheus text format ([`metrics`]) |
//!
//! Other paths get 404, other methods 405 (with `Allow`), bodies over 64 KiB 413. A bad request
//! only ever costs its own connection. With a token ([`auth`]), every route but `/healthz` and
//! `/readyz` answers 401 to a request without it.

pub mod auth;
pub mod http;
pub mod metrics;
pub mod netns_name;
mod pods;
pub mod request;
mod running;
mod server;

use running::{detach, read, Running, Slot};

pub use server::{bind, serve, ApiError};

use std::{sync::Arc, time::Instant};

use serde::Serialize;
use tokio::sync::Mutex;

use crate::agent::{Agent, AgentError};
use crate::ebpf::features::{Feature, KernelFeatures};
use http::{Request, Response};

/// The agent's default control address (the DaemonSet's too).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9476";

/// Routes and the methods they take.
const ROUTES: &[(&str, &str)] = &[
    ("/v1/start", "POST"),
    ("/v1/stop", "POST"),
    ("/v1/snapshot", "GET"),
    ("/v1/reset", "POST"),
    ("/v1/status", "GET"),
    ("/v1/features", "GET"),
    ("/v1/locate", "POST"),
    ("/healthz", "GET"),
    ("/readyz", "GET"),
    ("/metrics", "GET"),
];

/// The shared state. Every use of the agent happens with `slot` locked, so start, stop,
/// snapshot and reset never overlap, and a stop holds the only reference to the agent.
pub struct Control {
    slot: Mutex<Slot>,
    generation: std::sync::atomic::AtomicU64,
    /// Asked of every request but the probes' (`None`: no authentication).
    token: Option<auth::Token>,
    /// The kernel's features, probed once: they do not change while the kernel runs.
    features: KernelFeatures,
}

#[derive(Serialize)]
struct Started<'a> {
    attach_ms: f64,
    netns: &'a str,
    node: &'a str,
    flows: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_s: Option<f64>,
    /// Where the `pod_ips` were found.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pods: &'a [crate::agent::pod_netns::PodNetns],
}

#[derive(Serialize)]
struct Status<'a> {
    state: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    netns: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attach_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    running_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remaining_s: Option<f64>,
}

/// The error and its causes on one line, outermost first, without repeating a cause the
/// message before already quotes.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut cause = Some(err);
    while let Some(err) = cause {
        let text = err.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        cause = err.source();
    }
    line
}

/// 422 when the request named something that is not there (namespace, device), else 500.
fn attach_status(err: &AgentError) -> u16 {
    match err {
        AgentError::Netns(_) | AgentError::Devices(_) | AgentError::TooManyFlows(_) => 422,
        _ => 500,
    }
}

/// Why this node cannot run the agent (`None`: it can): root, kernel BTF, and a way to attach
/// tc and netfilter checkpoints, probed now ([`KernelFeatures::probe`]).
pub fn not_ready() -> Option<String> {
    KernelFeatures::probe().not_ready()
}

/// `GET /v1/features`: the probes, and what they mean for the agent.
#[derive(Serialize)]
struct FeaturesAnswer<'a> {
    ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_ready: Option<String>,
    summary: String,
    tc: Vec<Feature>,
    netfilter: Vec<Feature>,
    #[serde(flatten)]
    features: &'a KernelFeatures,
}

fn not_started() -> Response {
    Response::error(409, "no agent is attached: POST /v1/start first")
}

fn join_failed(err: tokio::task::JoinError) -> Response {
    Response::error(500, format!("the agent's worker thread failed: {err}"))
}

impl Control {
    /// `features`: this kernel's, probed by the caller (it blocks for a moment).
    pub fn new(token: Option<auth::Token>, features: KernelFeatures) -> Arc<Self> {
        Arc::new(Self {
            slot: Mutex::new(Slot::Idle),
            generation: Default::default(),
            token,
            features,
        })
    }

    /// Answers one request.
    pub async fn handle(self: &Arc<Self>, request: Request) -> Response {
        let Some((_, method)) = ROUTES.iter().find(|(path, _)| *path == request.path) else {
            return Response::error(
                404,
                format!("no route {}; routes: {}", request.path, route_list()),
            );
        };
        if request.method != *method {
            return Response::error(
                405,
                format!("{} takes {method}, not {}", request.path, request.method),
            )
            .with_header("Allow", *method);
        }
        if let Some(token) = &self.token {
            if !auth::OPEN_ROUTES.contains(&request.path.as_str())
                && !token.accepts(request.authorization.as_deref())
            {
                let reason = match request.authorization {
                    None => "this agent needs a token: send `Authorization: Bearer <token>` (the token is in the agent's Secret, netprof-agent-token)",
                    Some(_) => "wrong token: send the one in the agent's Secret (netprof-agent-token)",
                };
                return Response::error(401, reason).with_header("WWW-Authenticate", "Bearer");
            }
        }
        match request.path.as_str() {
            "/v1/start" => self.start(&request.body).await,
            "/v1/stop" => self.stop().await,
            "/v1/snapshot" => self.snapshot().await,
            "/v1/reset" => self.reset().await,
            "/v1/status" => self.status().await,
            "/v1/locate" => match request::parse_locate(&request.body) {
                Ok(ips) => pods::locate(ips).await,
                Err(reason) => Response::error(400, reason),
            },
            "/healthz" => Response::text(200, http::TEXT, "ok\n"),
            "/readyz" => match self.features.not_ready() {
                None => Response::text(
                    200,
                    http::TEXT,
                    format!("ready: {}\n", self.features.summary()),
                ),
                Some(reason) => Response::text(503, http::TEXT, format!("not ready: {reason}\n")),
            },
            "/v1/features" => Response::json(
                200,
                &FeaturesAnswer {
                    ready: self.features.not_ready().is_none(),
                    not_ready: self.features.not_ready(),
                    summary: self.features.summary(),
                    tc: self.features.tc_ways(),
                    netfilter: self.features.netfilter_ways(),
                    features: &self.features,
                },
            ),
            "/metrics" => self.metrics().await,
            _ => unreachable!("every route is handled"),
        }
    }

    async fn start(self: &Arc<Self>, body: &[u8]) -> Response {
        let plan = match request::parse_start(body) {
            Ok(plan) => plan,
            Err(reason) => return Response::error(400, reason),
        };
        let mut slot = self.slot.lock().await;
        if let Slot::Attached(running) = &*slot {
            return Response::error(
                409,
                format!("already attached to {}: POST /v1/stop first", running.netns),
            );
        }
        let mut plan = plan;
        let own_netns = if plan.own_netns {
            match tokio::task::spawn_blocking(netns_name::NetnsName::attach).await {
                Ok(Ok(own)) => {
                    plan.options.netns = own.name().to_owned();
                    plan.options.node.get_or_insert_with(hostname);
                    Some(own)
                }
                Ok(Err(err)) => return Response::error(500, error_chain(&err)),
                Err(err) => return join_failed(err),
            }
        } else {
            None
        };
        let pods = if plan.pod_ips.is_empty() {
            pods::FoundPods::default()
        } else {
            match pods::find(&plan.options.netns, plan.pod_ips.clone()).await {
                Ok(found) => found,
                Err(response) => return response,
            }
        };
        for name in &pods.netns {
            if !plan.options.pod_netns.contains(name) {
                plan.options.pod_netns.push(name.clone());
            }
        }
        let options = plan.options.clone();
        let agent = match tokio::task::spawn_blocking(move || Agent::start(&options)).await {
            Ok(Ok(agent)) => Arc::new(agent),
            Ok(Err(err)) => {
                let status = attach_status(&err);
                let reason = format!("cannot start the agent: {}", error_chain(&err));
                log::warn!("{reason}");
                return Response::error(status, reason);
            }
            Err(err) => return join_failed(err),
        };
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let timer = plan.duration.map(|d| {
            let control = Arc::clone(self);
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                control.finish(generation).await;
            })
        });
        let attach_ms = agent.attach_ms();
        eprintln!(
            "netprof agent: attached to {} in {attach_ms:.0} ms{}",
            plan.options.netns,
            plan.duration
                .map(|d| format!(", for {} s", d.as_secs_f64()))
                .unwrap_or_default()
        );
        let node = plan.options.node.as_deref().unwrap_or(&plan.options.netns);
        let response = Response::json(
            200,
            &Started {
                attach_ms,
                netns: &plan.options.netns,
                node,
                flows: plan.options.flows.len(),
                duration_s: plan.duration.map(|d| d.as_secs_f64()),
                pods: &pods.pods,
            },
        );
        *slot = Slot::Attached(Running {
            agent,
            generation,
            netns: plan.options.netns.clone(),
            started: Instant::now(),
            duration: plan.duration,
            timer,
            own_netns,
            pod_aliases: pods.aliases,
        });
        response
    }

    /// The duration timer: stops run `generation` if it is still the one attached.
    async fn finish(&self, generation: u64) {
        let mut slot = self.slot.lock().await;
        if !matches!(&*slot, Slot::Attached(r) if r.generation == generation) {
            return;
        }
        let Slot::Attached(running) = std::mem::replace(&mut *slot, Slot::Idle) else {
            unreachable!()
        };
        let netns = running.netns.clone();
        match detach(running).await {
            Ok(report) => {
                eprintln!("netprof agent: duration elapsed; detached from {netns}; report kept for /v1/stop");
                *slot = Slot::Finished(Box::new(report));
            }
            Err(response) => log::warn!(
                "detached from {netns}, but the final report was lost: {}",
                String::from_utf8_lossy(&response.body)
            ),
        }
    }

    async fn stop(&self) -> Response {
        let mut slot = self.slot.lock().await;
        match std::mem::replace(&mut *slot, Slot::Idle) {
            Slot::Idle => not_started(),
            Slot::Finished(report) => Response::json(200, &*report),
            Slot::Attached(mut running) => {
                if let Some(timer) = running.timer.take() {
                    timer.abort();
                }
                let netns = running.netns.clone();
                match detach(running).await {
                    Ok(report) => {
                        eprintln!("netprof agent: detached from {netns}");
                        Response::json(200, &report)
                    }
                    Err(response) => response,
                }
            }
        }
    }

    async fn snapshot(&self) -> Response {
        let slot = self.slot.lock().await;
        match &*slot {
            Slot::Idle => not_started(),
            Slot::Finished(report) => {
                Response::json(200, &**report).with_header("X-Netprof-State", "stopped")
            }
            Slot::Attached(running) => match read(running).await {
                Ok(report) => {
                    Response::json(200, &report).with_header("X-Netprof-State", "attached")
                }
                Err(response) => response,
            },
        }
    }

    async fn reset(&self) -> Response {
        let slot = self.slot.lock().await;
        let Slot::Attached(running) = &*slot else {
            return not_started();
        };
        let agent = Arc::clone(&running.agent);
        match tokio::task::spawn_blocking(move || agent.reset()).await {
            Ok(Ok(())) => Response::no_content(),
            Ok(Err(err)) => Response::error(500, format!("cannot reset: {}", error_chain(&err))),
            Err(err) => join_failed(err),
        }
    }

    async fn status(&self) -> Response {
        let slot = self.slot.lock().await;
        let status = match &*slot {
            Slot::Idle => Status {
                state: "idle",
                netns: None,
                attach_ms: None,
                running_s: None,
                remaining_s: None,
            },
            Slot::Finished(report) => Status {
                state: "stopped",
                netns: Some(&report.netns),
                attach_ms: Some(report.attach_ms),
                running_s: None,
                remaining_s: None,
            },
            Slot::Attached(r) => {
                let running = r.started.elapsed();
                Status {
                    state: "attached",
                    netns: Some(&r.netns),
                    attach_ms: Some(r.agent.attach_ms()),
                    running_s: Some(running.as_secs_f64()),
                    remaining_s: r.duration.map(|d| d.saturating_sub(running).as_secs_f64()),
                }
            }
        };
        Response::json(200, &status)
    }

    async fn metrics(&self) -> Response {
        let slot = self.slot.lock().await;
        let report = match &*slot {
            Slot::Attached(running) => match read(running).await {
                Ok(report) => Some(report),
                Err(response) => return response,
            },
            _ => None,
        };
        Response::text(200, http::PROMETHEUS, metrics::render(report.as_ref()))
    }

    /// Detaches whatever is attached (SIGINT/SIGTERM). Waits for a request in progress.
    pub async fn shutdown(&self) {
        let mut slot = self.slot.lock().await;
        if let Slot::Attached(mut running) = std::mem::replace(&mut *slot, Slot::Idle) {
            if let Some(timer) = running.timer.take() {
                timer.abort();
            }
            let netns = running.netns.clone();
            let _ = detach(running).await;
            eprintln!("netprof agent: detached from {netns}");
        }
    }
}

/// The host name (with hostNetwork, the node's): the report's node name when the agent
/// profiles its own namespace.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned())
}

fn route_list() -> String {
    ROUTES
        .iter()
        .map(|(path, method)| format!("{method} {path}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, path: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            authorization: None,
            body: body.as_bytes().to_vec(),
        }
    }

    /// A kernel that offers everything, without probing this one.
    fn capable() -> KernelFeatures {
        KernelFeatures {
            kernel: "test".into(),
            cannot_probe: None,
            probes: Feature::ALL
                .iter()
                .map(|f| crate::ebpf::features::Probe {
                    feature: *f,
                    available: *f != Feature::Fentry,
                    detail: String::new(),
                })
                .collect(),
        }
    }

    async fn call(control: &Arc<Control>, method: &str, path: &str, body: &str) -> (u16, String) {
        let r = control.handle(request(method, path, body)).await;
        (r.status, String::from_utf8(r.body).unwrap())
    }

    #[tokio::test]
    async fn routes_methods_and_states_without_an_agent() {
        let c = Control::new(None, capable());
        assert_eq!(call(&c, "GET", "/healthz", "").await, (200, "ok\n".into()));
        let (status, body) = call(&c, "GET", "/nope", "").await;
        assert_eq!(status, 404);
        assert!(body.contains("POST /v1/start"), "{body}");
        let r = c.handle(request("GET", "/v1/start", "")).await;
        assert_eq!(
            (r.status, r.headers.clone()),
            (405, vec![("Allow", "POST".to_owned())])
        );
        assert_eq!(call(&c, "POST", "/healthz", "").await.0, 405);
        for (method, path) in [
            ("POST", "/v1/stop"),
            ("GET", "/v1/snapshot"),
            ("POST", "/v1/reset"),
        ] {
            let (status, body) = call(&c, method, path, "").await;
            assert_eq!(status, 409, "{path}");
            assert!(body.contains("POST /v1/start first"), "{body}");
        }
        let (status, body) = call(&c, "POST", "/v1/start", "{\"netns\": 3}").await;
        assert_eq!(status, 400);
        assert!(body.contains("invalid type"), "{body}");
        let (status, body) = call(&c, "GET", "/v1/status", "").await;
        assert_eq!((status, body.contains("\"idle\"")), (200, true), "{body}");
        let (status, body) = call(&c, "GET", "/metrics", "").await;
        assert_eq!(status, 200);
        assert!(body.ends_with("netprof_agent_attached 0\n"), "{body}");
    }

    #[tokio::test]
    async fn with_a_token_only_the_probes_are_open() {
        let token = auth::Token::new("0123456789abcdef0123").unwrap();
        let c = Control::new(Some(token.clone()), capable());
        let (status, body) = call(&c, "GET", "/readyz", "").await;
        assert_eq!(status, 200);
        assert_eq!(
            body,
            "ready: tc via tcx, clsact; netfilter via netfilter-links; kernel BTF\n"
        );
        assert_eq!(call(&c, "GET", "/healthz", "").await.0, 200);
        for (method, path) in [
            ("GET", "/v1/status"),
            ("POST", "/v1/start"),
            ("POST", "/v1/stop"),
            ("GET", "/v1/features"),
            ("GET", "/metrics"),
        ] {
            let r = c.handle(request(method, path, "")).await;
            assert_eq!(r.status, 401, "{path}");
            assert!(String::from_utf8_lossy(&r.body).contains("needs a token"));
            assert_eq!(r.headers, vec![("WWW-Authenticate", "Bearer".to_owned())]);
            let mut wrong = request(method, path, "");
            wrong.authorization = Some("Bearer 0123456789abcdef0124".into());
            let r = c.handle(wrong).await;
            assert_eq!(r.status, 401, "{path}");
            assert!(String::from_utf8_lossy(&r.body).contains("wrong token"));
        }
        let mut right = request("GET", "/v1/features", "");
        right.authorization = Some(token.header_value());
        let r = c.handle(right).await;
        assert_eq!(r.status, 200);
        let features: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(features["ready"], true);
        assert_eq!(features["tc"], serde_json::json!(["tcx", "clsact"]));
        assert_eq!(
            features["netfilter"],
            serde_json::json!(["netfilter-links"])
        );
        assert_eq!(
            features["probes"].as_array().unwrap().len(),
            Feature::ALL.len()
        );
    }

    #[tokio::test]
    async fn readyz_names_what_the_kernel_lacks() {
        let mut features = capable();
        for p in &mut features.probes {
            if matches!(p.feature, Feature::NetfilterLinks | Feature::Fentry) {
                p.available = false;
                p.detail = format!("{} refused (EPERM)", p.feature);
            }
        }
        let c = Control::new(None, features);
        let (status, body) = call(&c, "GET", "/readyz", "").await;
        assert_eq!(status, 503);
        assert!(
            body.starts_with("not ready: no way to attach netfilter checkpoints (netfilter links: netfilter-links refused (EPERM); fentry: fentry refused (EPERM))"),
            "{body}"
        );
    }

    #[test]
    fn chains_name_every_cause_once() {
        let err = AgentError::Netns(crate::netns::NetnsError::InvalidName { name: "a/b".into() });
        let chain = error_chain(&err);
        assert!(chain.contains("a/b"), "{chain}");
        assert_eq!(attach_status(&err), 422);
    }
}
