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

mod checks;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use checks::{
    check_admission, check_agents, check_node, check_pod_netns, check_policies, check_reach, images,
};

use super::agents;
use super::client::Cluster;
use super::nodes;
use super::pods::BenchPod;
use super::ready::ReadyPod;
use super::run::{self, Endpoints, Prepared, RunPlan};
use super::{progress, K8sError};
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

#[cfg(test)]
mod tests {
    use super::*;

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
