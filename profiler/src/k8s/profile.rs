//! The agents around each benchmark step: started on both nodes before it, stopped after it,
//! their reports written as `bench --profile` writes them (`<out>/profile/<mode>/<path>-<tool>-
//! <node>.json`, listed in the mode's result), so `netprof report` reads a cluster run as a lab run.
//!
//! An agent that stops answering mid-run does not end the run: the benchmarks already measured
//! (minutes on a real cluster) are worth keeping, so profiling stops for the rest of the run,
//! the result lists no profiles (the report then treats the mode as not profiled rather than
//! attributing with one node missing), and `cluster.not_measured` records which agent failed
//! and why. An agent that does not answer *before* the run is an error instead (see `run`):
//! nothing has been measured yet, and `--no-profile` is the explicit way to run without.

use crate::agent::FlowSpec;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

use super::agents::NodeAgent;
use super::pods::NetPath;
use super::progress;
use super::K8sError;
use crate::agent::duty::Duty;
use crate::lab::Mode;
use crate::rundir::{ProfileFile, RunDir, Tool};

/// Agents attached right now; cleanup stops them if the run ends (or is interrupted) first.
pub type Attached = Arc<Mutex<Vec<NodeAgent>>>;

/// How long past a step's own timeout an agent stays attached if nobody stops it.
const SAFETY_MARGIN: Duration = Duration::from_secs(30);

/// What the agents follow: each step's benchmark flows, and per node the IPs of the pods
/// there whose `eth0` each agent watches (it finds their namespaces from the IPs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    pub flows: BTreeMap<(NetPath, Tool), Vec<FlowSpec>>,
    pub pod_ips: BTreeMap<String, Vec<IpAddr>>,
}

pub struct ClusterProfiler<'a> {
    pods: &'a Api<Pod>,
    agents: Vec<NodeAgent>,
    targets: Targets,
    out: RunDir,
    mode: Mode,
    attached: Attached,
    files: Vec<ProfileFile>,
    not_measured: Option<String>,
    duty: Option<Duty>,
}

impl<'a> ClusterProfiler<'a> {
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site, every argument a different thing"
    )]
    pub fn new(
        pods: &'a Api<Pod>,
        agents: Vec<NodeAgent>,
        targets: Targets,
        out_dir: &Path,
        mode: Mode,
        attached: Attached,
        duty: Option<Duty>,
    ) -> Result<Self, K8sError> {
        let out = RunDir::new(out_dir);
        let dir = out.resolve(RunDir::profile_dir_relative(mode));
        std::fs::create_dir_all(&dir).map_err(|source| K8sError::Write {
            path: dir.clone(),
            source,
        })?;
        Ok(Self {
            pods,
            agents,
            targets,
            out,
            mode,
            attached,
            files: Vec::new(),
            not_measured: None,
            duty,
        })
    }

    /// Starts both agents for a step that may take up to `step_limit`.
    pub async fn before_step(&mut self, path: NetPath, tool: Tool, step_limit: Duration) {
        if self.not_measured.is_some() {
            return;
        }
        let (pods, targets, duty) = (self.pods, &self.targets, self.duty);
        let flows = targets
            .flows
            .get(&(path, tool))
            .map_or(&[][..], Vec::as_slice);
        let starts = self.agents.iter().cloned().map(|agent| async move {
            let pod_ips = targets
                .pod_ips
                .get(&agent.node)
                .map_or(&[][..], Vec::as_slice);
            let result = agent
                .start(pods, flows, pod_ips, step_limit + SAFETY_MARGIN, duty)
                .await;
            (agent, result)
        });
        let results = futures::future::join_all(starts).await;
        for (agent, result) in results {
            match result {
                Ok(()) => self.attached.lock().expect("not poisoned").push(agent),
                Err(err) => self.give_up(&agent, path, tool, &err.to_string()).await,
            }
        }
    }

    /// Stops both agents and writes their reports of the step.
    pub async fn after_step(&mut self, path: NetPath, tool: Tool) {
        if self.not_measured.is_some() {
            return;
        }
        // The last packets' frees are traced just after the tool exits (as in the lab).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let pods = self.pods;
        let stops = self.agents.iter().cloned().map(|agent| async move {
            let result = agent.stop(pods).await;
            (agent, result)
        });
        let results = futures::future::join_all(stops).await;
        // Each was asked to stop; one that did not answer detaches at its duration's end.
        self.attached.lock().expect("not poisoned").clear();
        for (agent, result) in results {
            let outcome = match result {
                Ok(report) => self.write(&agent, path, tool, &report),
                Err(err) => Err(err.to_string()),
            };
            if let Err(reason) = outcome {
                self.give_up(&agent, path, tool, &reason).await;
            }
        }
    }

    fn write(
        &mut self,
        agent: &NodeAgent,
        path: NetPath,
        tool: Tool,
        report: &crate::agent::AgentReport,
    ) -> Result<(), String> {
        let entry = ProfileFile::of(self.mode, path, tool, agent.report_name);
        let file = self.out.resolve(&entry.file);
        report
            .write(&file)
            .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
        self.files.push(entry);
        Ok(())
    }

    /// Stops profiling for the rest of the run, detaching whatever is still attached.
    async fn give_up(&mut self, agent: &NodeAgent, path: NetPath, tool: Tool, reason: &str) {
        if self.not_measured.is_none() {
            let text = format!(
                "not measured: agent on {} ({}) did not answer at the {} {tool} step: {reason}; the run continued without profiles",
                agent.node, agent.report_name.name(), path.label()
            );
            progress::warn(&text);
            self.not_measured = Some(text);
        }
        let still: Vec<NodeAgent> =
            std::mem::take(&mut *self.attached.lock().expect("not poisoned"));
        for other in still {
            if let Err(err) = other.stop(self.pods).await {
                progress::warn(&format!("cannot stop the agent on {}: {err}", other.node));
            }
        }
    }

    /// The profiles to list in the result, and what could not be measured.
    pub fn finish(self) -> (Vec<ProfileFile>, Vec<String>) {
        match self.not_measured {
            Some(reason) => (Vec::new(), vec![reason]),
            None => (self.files, Vec::new()),
        }
    }
}
