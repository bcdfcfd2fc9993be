//! `netprof k8s doctor`: everything a run needs from a cluster, checked for one node pair before
//! anything heavy, one row per check, each failure with its fix. `k8s run` runs the same checks
//! first and stops on a failure.
//!
//! Before any pod is created ([`before_pods`]): the nodes (Linux, not cordoned, no taint that
//! keeps the pods off), the agents (their token Secret, a running pod on each node, the kernel
//! features each reports, and that they refuse requests without the token), pods of other runs
//! or hostNetwork servers in the way, NetworkPolicies that select the benchmark pods, and
//! admission: the six pods are created as a server-side dry run, so Pod Security, policies,
//! webhooks and quotas answer now. With the run's pods ready ([`with_pods`]; their images pulled
//! and their host ports bound by then): each agent finds its node's pods' namespaces, and ICMP
//! and TCP 80/5201 get through node to node and pod to pod.
//!
//! The lab's NodePort (30001) is not checked: a cluster run reaches nginx at the pod's IP, so it
//! creates no Service.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams, PostParams};

use super::agents::{self, NodeAgent};
use super::client::Cluster;
use super::error::api;
use super::nodes::{self, ChosenNodes, NodeInfo};
use super::pods::{self, BenchPod, Images, NetPath, PodSettings, Role};
use super::reach::{self, Reach};
use super::ready::ReadyPod;
use super::run::{self, Endpoints, Prepared, RunPlan};
use super::{progress, K8sError, AGENT_PORT, BENCH_APP, NAME_LABEL, PART_OF, PART_OF_LABEL};
use crate::bench::servers::IPERF3_PORT;

/// Longest the checks with pods may take (pods' `activeDeadlineSeconds` allows for it).
pub const CHECKS_LIMIT: Duration = Duration::from_secs(120);

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Worth knowing; does not stop a run.
    Note,
    Fail {
        fix: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub check: String,
    pub verdict: Verdict,
    pub detail: String,
}

/// The rows so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    pub rows: Vec<Row>,
}

impl Findings {
    fn push(&mut self, check: impl Into<String>, verdict: Verdict, detail: impl Into<String>) {
        self.rows.push(Row {
            check: check.into(),
            verdict,
            detail: detail.into(),
        });
    }

    pub fn ok(&mut self, check: impl Into<String>, detail: impl Into<String>) {
        self.push(check, Verdict::Ok, detail);
    }

    pub fn note(&mut self, check: impl Into<String>, detail: impl Into<String>) {
        self.push(check, Verdict::Note, detail);
    }

    /// `fix` may be empty when `detail` (an error's message) already says what to do.
    pub fn fail(
        &mut self,
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(check, Verdict::Fail { fix: fix.into() }, detail);
    }

    pub fn failures(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| matches!(r.verdict, Verdict::Fail { .. }))
            .count()
    }

    /// One line per check (`ok`, `note`, `FAIL`), a `fix:` line under each failure.
    pub fn render(&self) -> String {
        let width = self.rows.iter().map(|r| r.check.len()).max().unwrap_or(0);
        let mut out = String::new();
        for row in &self.rows {
            let mark = match row.verdict {
                Verdict::Ok => "ok",
                Verdict::Note => "note",
                Verdict::Fail { .. } => "FAIL",
            };
            let _ = writeln!(out, "{mark:<4}  {:<width$}  {}", row.check, row.detail);
            if let Verdict::Fail { fix } = &row.verdict {
                if !fix.is_empty() {
                    let _ = writeln!(out, "{:<4}  {:<width$}  fix: {fix}", "", "");
                }
            }
        }
        out
    }

    /// `Err` with the table when a check failed.
    pub fn into_result(self) -> Result<Findings, K8sError> {
        match self.failures() {
            0 => Ok(self),
            failures => Err(K8sError::Doctor {
                failures,
                table: self.render(),
            }),
        }
    }
}

/// The checks before any pod is created; what they settled, and the rows.
pub async fn check_before_pods(
    cluster: &Cluster,
    plan: &RunPlan,
    run_id: &str,
    findings: &mut Findings,
) -> Result<Prepared, K8sError> {
    let nodes = nodes::pick(&cluster.client, plan.nodes.as_deref()).await?;
    findings.ok(
        "nodes",
        format!(
            "client {} ({}), server {} ({}), by {}",
            nodes.client.name,
            nodes.client.ip(),
            nodes.server.name,
            nodes.server.ip(),
            nodes.how
        ),
    );
    for node in [&nodes.client, &nodes.server] {
        check_node(node, findings);
    }
    let agent_pods = agents::list(&cluster.agent_pods()).await?;
    let agents = if plan.profile {
        check_agents(cluster, &agent_pods, &nodes, findings).await
    } else {
        findings.note("agents", "--no-profile: not used");
        None
    };
    let images = images(plan, &agent_pods, &nodes, findings);
    let pods = cluster.bench_pods();
    match run::refuse_others(&pods, &nodes, run_id).await {
        Ok(()) => findings.ok(
            "other pods in the way",
            format!("none on {} or {}", nodes.client.name, nodes.server.name),
        ),
        Err(err) => findings.fail("other pods in the way", err.to_string(), ""),
    }
    check_policies(cluster, findings).await;
    let prepared = Prepared {
        nodes,
        agents,
        images,
    };
    check_admission(cluster, plan, run_id, &prepared, findings).await;
    Ok(prepared)
}

/// For `k8s run`: the checks before pods, stopping on a failure.
pub async fn before_pods(
    cluster: &Cluster,
    plan: &RunPlan,
    run_id: &str,
) -> Result<Prepared, K8sError> {
    let step = progress::step("k8s doctor: nodes, agents, admission");
    let mut findings = Findings::default();
    let prepared = check_before_pods(cluster, plan, run_id, &mut findings)
        .await
        .map_err(|e| step.failed(e))?;
    let findings = findings.into_result().map_err(|e| step.failed(e))?;
    step.done(&summary(&findings, &prepared));
    Ok(prepared)
}

fn summary(findings: &Findings, prepared: &Prepared) -> String {
    let notes = findings
        .rows
        .iter()
        .filter(|r| r.verdict == Verdict::Note)
        .map(|r| format!("{}: {}", r.check, r.detail))
        .collect::<Vec<_>>();
    let agents = prepared.agents.as_ref().map_or(String::new(), |a| {
        format!(", agents {} and {}", a[0].pod, a[1].pod)
    });
    let mut text = format!(
        "{} checks passed{agents}",
        findings.rows.len() - notes.len()
    );
    if !notes.is_empty() {
        text.push_str(&format!(" (note: {})", notes.join("; ")));
    }
    text
}

/// For `k8s run`: the checks with the run's pods ready, stopping on a failure.
pub async fn with_pods(
    cluster: &Cluster,
    prepared: &Prepared,
    bench_pods: &[BenchPod],
    ready: &BTreeMap<String, ReadyPod>,
) -> Result<(), K8sError> {
    let step = progress::step("k8s doctor: pod namespaces, ICMP and TCP 80/5201 on both paths");
    let mut findings = Findings::default();
    check_with_pods(cluster, prepared, bench_pods, ready, &mut findings)
        .await
        .map_err(|e| step.failed(e))?;
    let findings = findings.into_result().map_err(|e| step.failed(e))?;
    step.done(&format!("{} checks passed", findings.rows.len()));
    Ok(())
}

/// The checks that need the run's pods.
pub async fn check_with_pods(
    cluster: &Cluster,
    prepared: &Prepared,
    bench_pods: &[BenchPod],
    ready: &BTreeMap<String, ReadyPod>,
    findings: &mut Findings,
) -> Result<(), K8sError> {
    let endpoints = Endpoints::new(bench_pods, ready);
    let server = &prepared.nodes.server.name;
    findings.ok(
        "host ports",
        format!("80 and {IPERF3_PORT} on {server} bound by the run's hostNetwork servers"),
    );
    if let Some(agents) = &prepared.agents {
        check_pod_netns(cluster, agents, &endpoints, findings).await;
    }
    check_reach(&cluster.bench_pods(), &endpoints, findings).await
}

fn check_node(node: &NodeInfo, findings: &mut Findings) {
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
async fn check_agents(
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
                    super::rbac::AGENT_TOKEN_SECRET
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
            }
        }
        check_anonymous_refused(&pods, agent, findings).await;
    }
    all_ok.then_some(agents)
}

/// An agent that answers without the token lets any hostNetwork pod attach programs.
async fn check_anonymous_refused(pods: &Api<Pod>, agent: &NodeAgent, findings: &mut Findings) {
    let anonymous = NodeAgent {
        authorization: None,
        ..agent.clone()
    };
    let request = super::forward::HttpRequest {
        method: "GET",
        path: "/v1/status",
        body: "",
        authorization: anonymous.authorization.as_deref(),
    };
    let check = format!("agent on {} refuses anonymous calls", agent.node);
    match super::forward::request(pods, &agent.pod, AGENT_PORT, request, agents::QUICK).await {
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
fn images(
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
async fn check_policies(cluster: &Cluster, findings: &mut Findings) {
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
fn may_select_bench_pods(
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
            (super::ROLE_LABEL, bench.role.name()),
            (super::PATH_LABEL, bench.path.name()),
        ]);
        wanted
            .iter()
            .all(|(k, v)| k == super::RUN_LABEL || labels.get(k.as_str()) == Some(&v.as_str()))
    })
}

/// The six pods as a server-side dry run: admission answers without anything being created.
async fn check_admission(
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
async fn check_pod_netns(
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
async fn check_reach(
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

    #[test]
    fn the_table_marks_failures_and_gives_their_fix() {
        let mut f = Findings::default();
        f.ok("nodes", "client a, server b");
        f.note("NetworkPolicies", "deny-all (Ingress)");
        f.fail(
            "pod path TCP 5201",
            "no answer within 3 s",
            "allow TCP 5201",
        );
        assert_eq!(f.failures(), 1);
        assert_eq!(
            f.render(),
            "ok    nodes              client a, server b\n\
             note  NetworkPolicies    deny-all (Ingress)\n\
             FAIL  pod path TCP 5201  no answer within 3 s\n\
             \x20                        fix: allow TCP 5201\n"
        );
        let err = f.into_result().unwrap_err().to_string();
        assert!(err.starts_with("k8s doctor found 1 problem(s)"), "{err}");
    }
}
