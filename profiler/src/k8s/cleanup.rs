//! Deleting what a run created: every pod with its `netprof.io/run` label (RBAC: `list` and
//! `delete` pods), then waiting until they are gone so the host ports of the hostNetwork twins
//! are free for the next run. Used at the end of every run (success, failure, Ctrl-C) and by
//! `netprof k8s clean` for the leftovers of a killed one.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use tokio::time::Instant;

use super::agents::NodeAgent;
use super::error::api;
use super::{progress, K8sError, RUN_LABEL};

/// How long deleted pods may take to go (their grace period is 5 s).
pub const GONE_WAIT: Duration = Duration::from_secs(60);

/// What was deleted, and what was still terminating when the wait ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deleted {
    /// `(pod, run id)` in deletion order.
    pub pods: Vec<(String, String)>,
    pub still_terminating: Vec<String>,
}

/// The selector of one run's objects, or of every run's.
pub fn selector(run_id: Option<&str>) -> String {
    match run_id {
        Some(id) => format!("{RUN_LABEL}={id}"),
        None => RUN_LABEL.to_owned(),
    }
}

/// Deletes every pod matching `selector` and waits up to `wait` until none is left. A pod that
/// appears meanwhile (a create still in flight when the run was interrupted) is deleted too.
pub async fn delete_selected(
    pods: &Api<Pod>,
    selector: &str,
    wait: Duration,
    mut on_delete: impl FnMut(&str, &str),
) -> Result<Deleted, K8sError> {
    let deadline = Instant::now() + wait;
    let mut deleted = Deleted::default();
    let mut asked: BTreeSet<String> = BTreeSet::new();
    loop {
        let listed = pods
            .list(&ListParams::default().labels(selector))
            .await
            .map_err(api(pods, "list", "pods", ""))?;
        if listed.items.is_empty() {
            return Ok(deleted);
        }
        for pod in &listed.items {
            let name = pod.metadata.name.clone().unwrap_or_default();
            if pod.metadata.deletion_timestamp.is_some() || asked.contains(&name) {
                continue;
            }
            match pods.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                // Gone between the list and the delete: what we wanted.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(err) => return Err(api(pods, "delete", "pods", name)(err)),
            }
            let run = pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(RUN_LABEL))
                .cloned()
                .unwrap_or_default();
            on_delete(&name, &run);
            deleted.pods.push((name.clone(), run));
            asked.insert(name);
        }
        if Instant::now() >= deadline {
            deleted.still_terminating = listed
                .items
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            return Ok(deleted);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Detaches agents a run left attached (it was interrupted or failed mid-step).
pub async fn stop_agents(pods: &Api<Pod>, attached: Vec<NodeAgent>) {
    for agent in attached {
        match agent.stop(pods).await {
            Ok(_) => progress::note(&format!(
                "stopped the agent on {} (the step did not finish)",
                agent.node
            )),
            Err(err) => progress::warn(&format!(
                "cannot stop the agent on {}: {err}; it detaches by itself when its duration ends",
                agent.node
            )),
        }
    }
}
