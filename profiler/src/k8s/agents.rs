//! The agents of the chosen nodes: the netprof-agent DaemonSet's pods (deploy/daemonset.yaml),
//! found by label, driven over their control API (`crate::api`, 127.0.0.1:9476 on the node)
//! through the port-forward API.

use crate::agent::duty::Duty;
use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use super::error::api;
use super::forward::{self, ForwardError, HttpReply};
use super::nodes::ChosenNodes;
use super::{K8sError, AGENT_APP, AGENT_PORT, NAME_LABEL};
use crate::agent::AgentReport;
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
const QUICK: Duration = Duration::from_secs(15);
const ATTACH: Duration = Duration::from_secs(90);

/// The agent pod of one chosen node, and the name its reports carry (`node1` on the client
/// node, `node2` on the server node, as in the lab, so `netprof report` reads them alike).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAgent {
    pub node: String,
    pub pod: String,
    pub report_name: Node,
}

/// Finds the agent pod on each chosen node (RBAC: `list` pods).
pub async fn find(pods: &Api<Pod>, nodes: &ChosenNodes) -> Result<Vec<NodeAgent>, K8sError> {
    let selector = format!("{NAME_LABEL}={AGENT_APP}");
    let listed = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(api("list", "pods", ""))?;
    let on_node = |pod: &Pod| {
        pod.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default()
    };
    let running = |pod: &&Pod| {
        pod.metadata.deletion_timestamp.is_none()
            && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    };
    let mut agents = Vec::new();
    for (node, report_name) in [(&nodes.client, Node::One), (&nodes.server, Node::Two)] {
        let pod = listed
            .items
            .iter()
            .filter(|p| on_node(p) == node.name)
            .find(running)
            .ok_or_else(|| {
                let found: Vec<String> = listed
                    .items
                    .iter()
                    .map(|p| {
                        let phase = p
                            .status
                            .as_ref()
                            .and_then(|s| s.phase.clone())
                            .unwrap_or_default();
                        format!("{} ({phase})", on_node(p))
                    })
                    .collect();
                K8sError::NoAgent {
                    node: node.name.clone(),
                    found: if found.is_empty() {
                        "none".to_owned()
                    } else {
                        found.join(", ")
                    },
                }
            })?;
        agents.push(NodeAgent {
            node: node.name.clone(),
            pod: pod.metadata.name.clone().unwrap_or_default(),
            report_name,
        });
    }
    Ok(agents)
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
        forward::request(pods, &self.pod, AGENT_PORT, method, route, body, limit)
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

    /// Ready (root, BTF, bpffs on the node) and not attached to anything.
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
    /// `endpoints`. `duration` is a safety net: if this run dies, the agent detaches by itself.
    /// `duty`: attach only for part of every period (`--duty`).
    pub async fn start(
        &self,
        pods: &Api<Pod>,
        endpoints: &[Ipv4Addr],
        duration: Duration,
        duty: Option<Duty>,
    ) -> Result<(), AgentCallError> {
        let mut body = serde_json::json!({
            "endpoints": endpoints.iter().map(Ipv4Addr::to_string).collect::<Vec<_>>(),
            "node": self.report_name.name(),
            "duration_s": duration.as_secs_f64(),
        });
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
