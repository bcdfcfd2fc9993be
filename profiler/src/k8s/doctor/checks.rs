//! The doctor's checks, one function per subject; each adds its rows to the [`Findings`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams, PostParams};

use super::Findings;
use crate::bench::servers::IPERF3_PORT;
use crate::k8s::agents::{self, NodeAgent};
use crate::k8s::client::Cluster;
use crate::k8s::error::api;
use crate::k8s::nodes::{ChosenNodes, NodeInfo};
use crate::k8s::pods::{self, Images, NetPath, PodSettings, Role};
use crate::k8s::reach::{self, Reach};
use crate::k8s::run::{Endpoints, Prepared, RunPlan};
use crate::k8s::{K8sError, AGENT_PORT, BENCH_APP, NAME_LABEL, PART_OF, PART_OF_LABEL};

pub(super) fn check_node(node: &NodeInfo, findings: &mut Findings) {
    let check = format!("node {}", node.name);
    if node.os != "linux" {
        findings.fail(
            check,
            format!("runs {:?}", node.os),
            "netprof's agent and tools run on Linux nodes: choose two with --nodes CLIENT,SERVER",
        );
        return;
    }
    if node.unschedulable {
        findings.fail(
            check,
            "cordoned (unschedulable): the run's pods would stay Pending",
            format!(
                "`kubectl uncordon {}`, or choose another with --nodes",
                node.name
            ),
        );
        return;
    }
    let repelling: Vec<String> = node
        .taints
        .iter()
        .filter(|t| t.repels())
        .map(ToString::to_string)
        .collect();
    if repelling.is_empty() {
        findings.ok(check, "Linux, schedulable, no taint keeps the pods off");
    } else {
        findings.fail(
            check,
            format!(
                "tainted {}: the run's pods tolerate no taint",
                repelling.join(", ")
            ),
            format!(
                "remove the taint (`kubectl taint node {} {}-`) or choose other nodes with --nodes",
                node.name,
                repelling[0]
                    .rsplit_once(':')
                    .map_or("", |(k, _)| k)
                    .split('=')
                    .next()
                    .unwrap_or_default()
            ),
        );
    }
}

/// Token, pods, kernel features, and that the API refuses anonymous requests.
pub(super) async fn check_agents(
    cluster: &Cluster,
    listed: &[Pod],
    nodes: &ChosenNodes,
    findings: &mut Findings,
) -> Option<Vec<NodeAgent>> {
    let authorization = match agents::authorization(cluster).await {
        Ok(auth) => {
            findings.ok(
                "agent token",
                format!(
                    "Secret {}/{} read",
                    cluster.namespaces.agents,
                    crate::k8s::rbac::AGENT_TOKEN_SECRET
                ),
            );
            auth
        }
        Err(err) => {
            findings.fail("agent token", err.to_string(), "");
            return None;
        }
    };
    let agents = match agents::find(
        listed,
        nodes,
        &cluster.namespaces.agents,
        Some(authorization),
    ) {
        Ok(agents) => agents,
        Err(err) => {
            findings.fail("agents", err.to_string(), "");
            return None;
        }
    };
    let pods = cluster.agent_pods();
    let mut all_ok = true;
    for agent in &agents {
        let check = format!("agent on {}", agent.node);
        let outcome = match agent.check(&pods).await {
            Ok(()) => agent.features(&pods).await,
            Err(err) => Err(err),
        };
        match outcome {
            Ok(features) => match features.not_ready() {
                None => findings.ok(
                    check,
                    format!(
                        "{}: kernel {}: {}",
                        agent.pod,
                        features.kernel,
                        features.summary()
                    ),
                ),
                Some(reason) => {
                    all_ok = false;
                    findings.fail(
                        check,
                        format!("{}: {reason}", agent.pod),
                        "run the benchmark on nodes whose kernel has them",
                    );
                }
            },
            Err(err) => {
                all_ok = false;
                findings.fail(
                    check,
                    format!("{} did not answer: {err}", agent.pod),
                    format!("`kubectl -n {} logs {}`", agent.namespace, agent.pod),
                );
                // One row per fault: an agent that does not answer cannot be asked anything.
                continue;
            }
        }
        check_anonymous_refused(&pods, agent, findings).await;
    }
    all_ok.then_some(agents)
}

/// An agent that answers without the token lets any hostNetwork pod attach programs.
pub(super) async fn check_anonymous_refused(
    pods: &Api<Pod>,
    agent: &NodeAgent,
    findings: &mut Findings,
) {
    let anonymous = NodeAgent {
        authorization: None,
        ..agent.clone()
    };
    let request = crate::k8s::forward::HttpRequest {
        method: "GET",
        path: "/v1/status",
        body: "",
        authorization: anonymous.authorization.as_deref(),
    };
    let check = format!("agent on {} refuses anonymous calls", agent.node);
    match crate::k8s::forward::request(pods, &agent.pod, AGENT_PORT, request, agents::QUICK).await {
        Ok(reply) if reply.status == 401 => findings.ok(check, "401 without the token"),
        Ok(reply) => findings.fail(
            check,
            format!("answered {} without a token: any hostNetwork pod on the node could attach programs", reply.status),
            "apply deploy/ (the DaemonSet runs `netprof agent --serve --token-file ...`)",
        ),
        Err(err) => findings.fail(check, format!("no answer: {err}"), ""),
    }
}

/// One image for the agents and the clients: `--image`, else the agents'.
pub(super) fn images(
    plan: &RunPlan,
    agent_pods: &[Pod],
    nodes: &ChosenNodes,
    findings: &mut Findings,
) -> Images {
    let (netprof, how) = match (
        &plan.netprof_image,
        agents::image(agent_pods, &nodes.client.name),
    ) {
        (Some(image), _) => (image.clone(), "--image"),
        (None, Some(image)) => (image, "the agents'"),
        (None, None) => (
            crate::k8s::DEFAULT_IMAGE.to_owned(),
            "no agent pod to take it from: the default",
        ),
    };
    findings.ok("images", format!("{netprof} ({how}), {}", plan.nginx_image));
    Images {
        netprof,
        nginx: plan.nginx_image.clone(),
    }
}

/// NetworkPolicies that select the benchmark pods: noted, since the reachability checks show
/// whether they let the traffic through.
pub(super) async fn check_policies(cluster: &Cluster, findings: &mut Findings) {
    let policies: Api<NetworkPolicy> =
        Api::namespaced(cluster.client.clone(), &cluster.namespaces.bench);
    let listed = match policies.list(&ListParams::default()).await {
        Ok(listed) => listed,
        Err(err) => {
            findings.fail(
                "NetworkPolicies",
                api(&policies, "list", "networkpolicies", "")(err).to_string(),
                "",
            );
            return;
        }
    };
    let selecting: Vec<String> = listed
        .items
        .iter()
        .filter(|p| {
            p.spec
                .as_ref()
                .is_some_and(|s| may_select_bench_pods(&s.pod_selector.clone().unwrap_or_default()))
        })
        .map(|p| {
            let types = p
                .spec
                .as_ref()
                .and_then(|s| s.policy_types.clone())
                .unwrap_or_else(|| vec!["Ingress".to_owned()]);
            format!(
                "{} ({})",
                p.metadata.name.as_deref().unwrap_or_default(),
                types.join("+")
            )
        })
        .collect();
    if selecting.is_empty() {
        findings.ok(
            "NetworkPolicies",
            format!(
                "none selects the benchmark pods in {}",
                cluster.namespaces.bench
            ),
        );
    } else {
        findings.note(
            "NetworkPolicies",
            format!(
                "{} may select the benchmark pods: the reachability checks show whether they let ICMP and TCP 80/{IPERF3_PORT} through",
                selecting.join(", ")
            ),
        );
    }
}

/// Whether a policy's pod selector may pick a benchmark pod: its labels match one of them
/// (the run label aside, whose value is new each run), or it uses expressions (not evaluated).
pub(super) fn may_select_bench_pods(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> bool {
    if selector
        .match_expressions
        .as_ref()
        .is_some_and(|e| !e.is_empty())
    {
        return true;
    }
    let wanted = selector.match_labels.clone().unwrap_or_default();
    pods::plan("run").iter().any(|bench| {
        let labels = BTreeMap::from([
            (NAME_LABEL, BENCH_APP),
            (PART_OF_LABEL, PART_OF),
            (crate::k8s::ROLE_LABEL, bench.role.name()),
            (crate::k8s::PATH_LABEL, bench.path.name()),
        ]);
        wanted
            .iter()
            .all(|(k, v)| k == crate::k8s::RUN_LABEL || labels.get(k.as_str()) == Some(&v.as_str()))
    })
}

/// The six pods as a server-side dry run: admission answers without anything being created.
pub(super) async fn check_admission(
    cluster: &Cluster,
    plan: &RunPlan,
    run_id: &str,
    prepared: &Prepared,
    findings: &mut Findings,
) {
    let pods = cluster.bench_pods();
    let settings = PodSettings {
        run_id: run_id.to_owned(),
        namespace: cluster.namespaces.bench.clone(),
        images: prepared.images.clone(),
        deadline: plan.pod_deadline(),
    };
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let mut refused = Vec::new();
    for bench in pods::plan(run_id) {
        let node = if bench.role.on_server_node() {
            &prepared.nodes.server
        } else {
            &prepared.nodes.client
        };
        if let Err(err) = pods
            .create(&dry_run, &pods::spec(&bench, node, &settings))
            .await
        {
            refused.push(api(&pods, "create", "pods", &bench.name)(err).to_string());
        }
    }
    match refused.first() {
        None => findings.ok(
            "admission",
            format!("the six pods pass a server-side dry run in {} (Pod Security, policies, webhooks, quotas)", cluster.namespaces.bench),
        ),
        Some(first) => findings.fail(
            "admission",
            format!("{} of 6 pods refused; first: {first}", refused.len()),
            "",
        ),
    }
}

/// Each agent finds the namespaces of its node's pods from their IPs.
pub(super) async fn check_pod_netns(
    cluster: &Cluster,
    agents: &[NodeAgent],
    endpoints: &Endpoints,
    findings: &mut Findings,
) {
    let pods = cluster.agent_pods();
    for agent in agents {
        let check = format!("pod namespaces on {}", agent.node);
        let Some(ips) = endpoints.pod_ips().get(&agent.node) else {
            continue;
        };
        match agent.locate(&pods, ips).await {
            Ok(None) => findings.ok(
                check,
                format!("{} pod address(es) found by the agent", ips.len()),
            ),
            Ok(Some(explanation)) => findings.fail(
                check,
                explanation,
                "the DaemonSet needs hostPID and the host's /run/netns (deploy/daemonset.yaml)",
            ),
            Err(err) => findings.fail(check, format!("{} did not answer: {err}", agent.pod), ""),
        }
    }
}

/// ICMP and TCP 80/5201 from each path's client to its servers.
pub(super) async fn check_reach(
    pods: &Api<Pod>,
    endpoints: &Endpoints,
    findings: &mut Findings,
) -> Result<(), K8sError> {
    for path in NetPath::ALL {
        let (client, _) = endpoints.get(Role::Client, path);
        let (_, iperf3_ip) = endpoints.get(Role::Iperf3, path);
        let (_, nginx_ip) = endpoints.get(Role::Nginx, path);
        let label = path.label();
        let checks = [
            (
                format!("{label} ICMP"),
                reach::ping_command(*iperf3_ip),
                None,
            ),
            (
                format!("{label} TCP 80"),
                reach::connect_command(*nginx_ip, pods::HTTP_PORT),
                Some((*nginx_ip, pods::HTTP_PORT)),
            ),
            (
                format!("{label} TCP {IPERF3_PORT}"),
                reach::connect_command(*iperf3_ip, IPERF3_PORT),
                Some((*iperf3_ip, IPERF3_PORT)),
            ),
        ];
        for (check, command, tcp) in checks {
            let target = *iperf3_ip;
            let reach = reach::check(pods, client, command, |out| match tcp {
                Some((ip, port)) => reach::judge_connect(out, ip, port),
                None => reach::judge_ping(out, target),
            })
            .await?;
            match reach {
                Reach::Ok(detail) => findings.ok(check, detail),
                Reach::Blocked { finding, fix } => findings.fail(check, finding, fix),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_selecting_benchmark_pods_are_told_from_others() {
        let selector = |json: serde_json::Value| serde_json::from_value(json).unwrap();
        assert!(
            may_select_bench_pods(&selector(serde_json::json!({}))),
            "everything"
        );
        assert!(may_select_bench_pods(&selector(
            serde_json::json!({"matchLabels": {"netprof.io/role": "nginx"}})
        )));
        assert!(!may_select_bench_pods(&selector(
            serde_json::json!({"matchLabels": {"app": "db"}})
        )));
        assert!(may_select_bench_pods(&selector(
            serde_json::json!({"matchExpressions": [{"key": "app", "operator": "Exists"}]})
        )));
    }
}
