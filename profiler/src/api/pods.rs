//! Pods named by IP (`pod_ips` in `POST /v1/start`, and `POST /v1/locate`): their network
//! namespaces found on this node ([`crate::agent::pod_netns`]), named for the agent while it is
//! attached when only a process holds them.

use std::{net::IpAddr, path::PathBuf};

use serde::Serialize;

use super::http::Response;
use super::netns_name::NetnsName;
use super::{error_chain, join_failed};
use crate::agent::pod_netns::{self, Located, NetnsSource, PodNetns};

/// The namespace files of the pods a start named, and the names made for them.
#[derive(Debug, Default)]
pub struct FoundPods {
    pub pods: Vec<PodNetns>,
    /// `ip netns` names to give the agent as `pod_netns`.
    pub netns: Vec<String>,
    /// Names made for namespaces only a process held; removed when dropped (after the agent).
    pub aliases: Vec<NetnsName>,
}

/// Searches the node for `ips`, skipping the node's namespace at `node`.
async fn search(node: PathBuf, ips: Vec<IpAddr>) -> Result<Located, Response> {
    match tokio::task::spawn_blocking(move || pod_netns::locate(&ips, &node)).await {
        Ok(Ok(located)) => Ok(located),
        Ok(Err(err)) => Err(Response::error(500, error_chain(&err))),
        Err(err) => Err(join_failed(err)),
    }
}

/// For a start: every IP must be found (422 names the missing ones and what was searched),
/// since a pod whose `eth0` is not watched would change what the report's stages mean.
pub async fn find(node_netns: &str, ips: Vec<IpAddr>) -> Result<FoundPods, Response> {
    let node =
        crate::netns::named_path(node_netns).map_err(|e| Response::error(422, error_chain(&e)))?;
    let located = search(node, ips).await?;
    if !located.missing.is_empty() {
        return Err(Response::error(
            422,
            format!("pod_ips: {}", located.explain_missing()),
        ));
    }
    let mut found = FoundPods {
        pods: located.found.clone(),
        ..FoundPods::default()
    };
    for pod in &located.found {
        match &pod.netns {
            NetnsSource::Named(name) => {
                if !found.netns.contains(name) {
                    found.netns.push(name.clone());
                }
            }
            NetnsSource::Process(_) => {
                let (source, index) = (pod.netns.path(), found.aliases.len());
                let alias =
                    match tokio::task::spawn_blocking(move || NetnsName::alias(&source, index))
                        .await
                    {
                        Ok(Ok(alias)) => alias,
                        Ok(Err(err)) => return Err(Response::error(500, error_chain(&err))),
                        Err(err) => return Err(join_failed(err)),
                    };
                found.netns.push(alias.name().to_owned());
                found.aliases.push(alias);
            }
        }
    }
    Ok(found)
}

#[derive(Serialize)]
struct LocateAnswer<'a> {
    #[serde(flatten)]
    located: &'a Located,
    /// The same reason a start would give, when something is missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    explanation: Option<String>,
}

/// `POST /v1/locate`: where the pods are, from the agent's own namespace (the node's in the
/// DaemonSet); 200 also when some are missing (the answer says which).
pub async fn locate(ips: Vec<IpAddr>) -> Response {
    match search(PathBuf::from("/proc/self/ns/net"), ips).await {
        Ok(located) => Response::json(
            200,
            &LocateAnswer {
                explanation: (!located.missing.is_empty()).then(|| located.explain_missing()),
                located: &located,
            },
        ),
        Err(response) => response,
    }
}
