//! What the control API holds between requests: nothing, an attached agent with what goes
//! with it (its duration timer, the names made for its namespaces), or a finished run's report;
//! and reading or detaching the agent on a blocking thread.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::task::JoinHandle;

use super::http::Response;
use super::{error_chain, join_failed, netns_name};
use crate::agent::{Agent, AgentReport};

/// What the control API holds.
pub(super) enum Slot {
    Idle,
    Attached(Running),
    /// Stopped by `duration_s`; the final report waits for `/v1/stop` or `/v1/snapshot`.
    Finished(Box<AgentReport>),
}

pub(super) struct Running {
    pub(super) agent: Arc<Agent>,
    /// Tells this run's duration timer from a later run's.
    pub(super) generation: u64,
    pub(super) netns: String,
    pub(super) started: Instant,
    pub(super) duration: Option<Duration>,
    pub(super) timer: Option<JoinHandle<()>>,
    /// The name of the agent's own namespace, when the start request gave none; removed after
    /// the agent is dropped.
    pub(super) own_netns: Option<netns_name::NetnsName>,
    /// Names made for pods' namespaces (`pod_ips`); removed after the agent is dropped too.
    pub(super) pod_aliases: Vec<netns_name::NetnsName>,
}

/// A live snapshot, read on a blocking thread.
pub(super) async fn read(running: &Running) -> Result<AgentReport, Response> {
    let agent = Arc::clone(&running.agent);
    match tokio::task::spawn_blocking(move || agent.snapshot()).await {
        Ok(Ok(report)) => Ok(report),
        Ok(Err(err)) => Err(Response::error(
            500,
            format!("cannot read the measurements: {}", error_chain(&err)),
        )),
        Err(err) => Err(join_failed(err)),
    }
}

/// The final snapshot, then the agent dropped (everything detached) on a blocking thread,
/// then the name of its own namespace, if it made one, removed.
pub(super) async fn detach(running: Running) -> Result<AgentReport, Response> {
    let agent = running.agent;
    let own_netns = running.own_netns;
    let pod_aliases = running.pod_aliases;
    let done = tokio::task::spawn_blocking(move || {
        let report = agent.snapshot();
        // Every other user of the agent holds the slot's lock, which the caller has, but a
        // blocking read whose request was cancelled may still hold a reference for a moment.
        let mut agent = agent;
        for _ in 0..500 {
            match Arc::try_unwrap(agent) {
                Ok(owned) => {
                    drop(owned);
                    break;
                }
                Err(shared) => {
                    agent = shared;
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        drop(own_netns);
        drop(pod_aliases);
        report
    });
    match done.await {
        Ok(Ok(report)) => Ok(report),
        Ok(Err(err)) => Err(Response::error(
            500,
            format!(
                "detached, but cannot read the final measurements: {}",
                error_chain(&err)
            ),
        )),
        Err(err) => Err(join_failed(err)),
    }
}
