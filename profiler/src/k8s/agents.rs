//! The agents of the chosen nodes: the netprof-agent DaemonSet's pods (deploy/daemonset.yaml),
//! found by label in the agents' namespace, driven over their control API (`crate::api`,
//! 127.0.0.1:9476 on the node) through the port-forward API, with the token of the Secret
//! the DaemonSet mounts.

use crate::agent::duty::Duty;
use crate::agent::FlowSpec;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams};

use super::client::Cluster;
use super::error::api;
use super::forward::{self, ForwardError, HttpReply, HttpRequest};
use super::nodes::ChosenNodes;
use super::rbac::{AGENT_TOKEN_KEY, AGENT_TOKEN_SECRET};
use super::ready::{describe, IMAGE_HINT};
use super::{K8sError, AGENT_APP, AGENT_PORT, NAME_LABEL};
use crate::agent::AgentReport;
use crate::ebpf::features::KernelFeatures;
use crate::lab::Node;

#[derive(Debug, thiserror::Error)]
pub enum AgentCallError {
    #[error("{route}: {source}")]
    Forward {
        route: &'static str,
        #[source]
        source: ForwardError,
    },
    #[error("{route} answered HTTP {status}: {body}")]
    Status {
        route: &'static str,
        status: u16,
        body: String,
    },
    #[error("{route} answered something that is not {what}")]
    Json {
        route: &'static str,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "it is attached already ({detail}): another run is using it, or a killed run's start, which \
         detaches by itself when its duration ends"
    )]
    Busy { detail: String },
}

/// Quick calls (health, status) and the ones that attach or detach (seconds on a busy node).
pub const QUICK: Duration = Duration::from_secs(15);
pub const ATTACH: Duration = Duration::from_secs(90);

/// The agent pod of one chosen node, and the name its reports carry (`node1` on the client
/// node, `node2` on the server node, as in the lab, so `netprof report` reads them alike).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAgent {
    pub node: String,
    pub pod: String,
    pub report_name: Node,
    /// The agents' namespace, for messages.
    pub namespace: String,
    /// `Authorization` for the control API (`Bearer <token>`).
    pub authorization: Option<String>,
}

/// The agent pods (DaemonSet label) in the agents' namespace (RBAC: `list` pods there).
pub async fn list(pods: &Api<Pod>) -> Result<Vec<Pod>, K8sError> {
    let selector = format!("{NAME_LABEL}={AGENT_APP}");
    Ok(pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(api(pods, "list", "pods", ""))?
        .items)
}

fn node_of(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default()
}

fn is_running(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// The image the agent pods run (their first container's): the benchmark clients run the same
/// one unless `--image` says otherwise. The pod on `prefer_node` first, else any running one.
pub fn image(agent_pods: &[Pod], prefer_node: &str) -> Option<String> {
    let image = |pod: &Pod| {
        pod.spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone())
    };
    agent_pods
        .iter()
        .find(|p| node_of(p) == prefer_node)
        .or_else(|| agent_pods.iter().find(|p| is_running(p)))
        .or_else(|| agent_pods.first())
        .and_then(image)
}

/// Finds the running agent pod on each chosen node among `listed`; a pod that is there but not
/// running is named with its state and what to do.
pub fn find(
    listed: &[Pod],
    nodes: &ChosenNodes,
    namespace: &str,
    authorization: Option<String>,
) -> Result<Vec<NodeAgent>, K8sError> {
    let mut agents = Vec::new();
    for (node, report_name) in [(&nodes.client, Node::One), (&nodes.server, Node::Two)] {
        let on_node: Vec<&Pod> = listed.iter().filter(|p| node_of(p) == node.name).collect();
        let Some(pod) = on_node.iter().find(|p| is_running(p)) else {
            if let Some(pod) = on_node.first() {
                let state = describe(pod);
                let hint = if state.contains("Image") {
                    IMAGE_HINT.to_owned()
                } else if state.contains("ContainerCreating") {
                    format!(
                        "is its token Secret there? (`kubectl -n {namespace} get secret {AGENT_TOKEN_SECRET}`; `kubectl -n {namespace} describe pod {}` shows the mount error)",
                        pod.metadata.name.as_deref().unwrap_or_default()
                    )
                } else {
                    String::new()
                };
                return Err(K8sError::AgentNotRunning {
                    node: node.name.clone(),
                    namespace: namespace.to_owned(),
                    pod: pod.metadata.name.clone().unwrap_or_default(),
                    state,
                    hint,
                });
            }
            let found: Vec<String> = listed
                .iter()
                .map(|p| {
                    let phase = p
                        .status
                        .as_ref()
                        .and_then(|s| s.phase.clone())
                        .unwrap_or_default();
                    format!("{} ({phase})", node_of(p))
                })
                .collect();
            return Err(K8sError::NoAgent {
                node: node.name.clone(),
                namespace: namespace.to_owned(),
                found: if found.is_empty() {
                    "none".to_owned()
                } else {
                    found.join(", ")
                },
            });
        };
        agents.push(NodeAgent {
            node: node.name.clone(),
            pod: pod.metadata.name.clone().unwrap_or_default(),
            report_name,
            namespace: namespace.to_owned(),
            authorization: authorization.clone(),
        });
    }
    Ok(agents)
}

/// The agents' API token from their Secret (RBAC: `get` on that one Secret), as an
/// `Authorization` value.
pub async fn authorization(cluster: &Cluster) -> Result<String, K8sError> {
    let namespace = &cluster.namespaces.agents;
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), namespace);
    let create = format!(
        "`kubectl -n {namespace} create secret generic {AGENT_TOKEN_SECRET} \
         --from-literal={AGENT_TOKEN_KEY}=$(head -c 32 /dev/urandom | base64)`, then restart the agents \
         (`kubectl -n {namespace} rollout restart daemonset netprof-agent`)"
    );
    let secret = match secrets.get(AGENT_TOKEN_SECRET).await {
        Ok(secret) => secret,
        Err(kube::Error::Api(status)) if status.code == 404 => {
            return Err(K8sError::AgentToken(format!(
                "the agents' token Secret {namespace}/{AGENT_TOKEN_SECRET} does not exist: create it with {create}"
            )))
        }
        Err(err) => return Err(api(&secrets, "get", "secrets", AGENT_TOKEN_SECRET)(err)),
    };
    let token = secret
        .data
        .as_ref()
        .and_then(|d| d.get(AGENT_TOKEN_KEY))
        .map(|b| String::from_utf8_lossy(&b.0).trim().to_owned())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(AGENT_TOKEN_KEY))
                .map(|t| t.trim().to_owned())
        })
        .unwrap_or_default();
    crate::api::auth::Token::new(&token)
        .map(|t| t.header_value())
        .map_err(|len| {
            K8sError::AgentToken(format!(
                "the agents' token Secret {namespace}/{AGENT_TOKEN_SECRET} has no usable `{AGENT_TOKEN_KEY}` \
                 ({len} characters; at least {} printable, no spaces): recreate it with {create}",
                crate::api::auth::MIN_TOKEN_LEN
            ))
        })
}

impl NodeAgent {
    async fn call(
        &self,
        pods: &Api<Pod>,
        method: &str,
        route: &'static str,
        body: &str,
        limit: Duration,
    ) -> Result<HttpReply, AgentCallError> {
        let request = HttpRequest {
            method,
            path: route,
            body,
            authorization: self.authorization.as_deref(),
        };
        forward::request(pods, &self.pod, AGENT_PORT, request, limit)
            .await
            .map_err(|source| AgentCallError::Forward { route, source })
    }

    fn expect(
        reply: HttpReply,
        route: &'static str,
        status: u16,
    ) -> Result<HttpReply, AgentCallError> {
        if reply.status == status {
            Ok(reply)
        } else {
            Err(AgentCallError::Status {
                route,
                status: reply.status,
                body: reply.text(),
            })
        }
    }

    /// What the node's kernel lets the agent attach (`GET /v1/features`).
    pub async fn features(&self, pods: &Api<Pod>) -> Result<KernelFeatures, AgentCallError> {
        let reply = Self::expect(
            self.call(pods, "GET", "/v1/features", "", QUICK).await?,
            "/v1/features",
            200,
        )?;
        serde_json::from_slice(&reply.body).map_err(|source| AgentCallError::Json {
            route: "/v1/features",
            what: "a feature list",
            source,
        })
    }

    /// Where the pods of `ips` are on the node (`POST /v1/locate`): the explanation of what is
    /// missing, `None` when every IP was found.
    pub async fn locate(
        &self,
        pods: &Api<Pod>,
        ips: &[IpAddr],
    ) -> Result<Option<String>, AgentCallError> {
        let body =
            serde_json::json!({"pod_ips": ips.iter().map(IpAddr::to_string).collect::<Vec<_>>()});
        let reply = Self::expect(
            self.call(pods, "POST", "/v1/locate", &body.to_string(), QUICK)
                .await?,
            "/v1/locate",
            200,
        )?;
        let answer: serde_json::Value =
            serde_json::from_slice(&reply.body).map_err(|source| AgentCallError::Json {
                route: "/v1/locate",
                what: "a locate answer",
                source,
            })?;
        Ok(answer["explanation"].as_str().map(str::to_owned))
    }

    /// Ready (root, BTF, a way to attach tc and netfilter) and not attached to anything.
    pub async fn check(&self, pods: &Api<Pod>) -> Result<(), AgentCallError> {
        Self::expect(
            self.call(pods, "GET", "/readyz", "", QUICK).await?,
            "/readyz",
            200,
        )?;
        let reply = Self::expect(
            self.call(pods, "GET", "/v1/status", "", QUICK).await?,
            "/v1/status",
            200,
        )?;
        let status: serde_json::Value =
            serde_json::from_slice(&reply.body).map_err(|source| AgentCallError::Json {
                route: "/v1/status",
                what: "a status object",
                source,
            })?;
        if status["state"] == "attached" {
            return Err(AgentCallError::Busy {
                detail: reply.text(),
            });
        }
        Ok(())
    }

    /// Attaches to the node's own namespace (the agent runs with hostNetwork), following
    /// `flows` (the step's benchmark traffic only), and to the `eth0` of the pods at `pod_ips` (the agent finds their
    /// namespaces). `duration` is a safety net: if this run dies, the agent detaches by itself.
    /// `duty`: attach only for part of every period (`--duty`).
    pub async fn start(
        &self,
        pods: &Api<Pod>,
        flows: &[FlowSpec],
        pod_ips: &[IpAddr],
        duration: Duration,
        duty: Option<Duty>,
    ) -> Result<(), AgentCallError> {
        let mut body = serde_json::json!({
            "flows": flows.iter().map(FlowSpec::to_string).collect::<Vec<_>>(),
            "node": self.report_name.name(),
            "duration_s": duration.as_secs_f64(),
        });
        if !pod_ips.is_empty() {
            body["pod_ips"] =
                serde_json::json!(pod_ips.iter().map(IpAddr::to_string).collect::<Vec<_>>());
        }
        if let Some(duty) = duty {
            body["duty_percent"] = serde_json::json!(duty.percent().round() as u32);
            body["duty_period_ms"] = serde_json::json!(duty.period.as_millis() as u64);
        }
        let reply = self
            .call(pods, "POST", "/v1/start", &body.to_string(), ATTACH)
            .await?;
        Self::expect(reply, "/v1/start", 200).map(drop)
    }

    /// Detaches and returns the report of everything since the start.
    pub async fn stop(&self, pods: &Api<Pod>) -> Result<AgentReport, AgentCallError> {
        let reply = Self::expect(
            self.call(pods, "POST", "/v1/stop", "", ATTACH).await?,
            "/v1/stop",
            200,
        )?;
        serde_json::from_slice(&reply.body).map_err(|source| AgentCallError::Json {
            route: "/v1/stop",
            what: "an agent report",
            source,
        })
    }
}
