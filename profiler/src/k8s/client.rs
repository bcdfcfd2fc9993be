//! The Kubernetes client: from `--kubeconfig` / `--context`, else KUBECONFIG or ~/.kube/config,
//! else the pod's ServiceAccount (in-cluster), as kubectl finds its configuration. A
//! kubeconfig's `proxy-url` (HTTP or SOCKS5) is honoured, as kubectl does.

use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use super::rbac::Namespaces;
use super::K8sError;

/// A connected client, the API server it talks to (for messages and the result file), and
/// where netprof's pods are.
pub struct Cluster {
    pub client: Client,
    pub server: String,
    pub namespaces: Namespaces,
}

impl Cluster {
    /// Pods in the benchmark namespace.
    pub fn bench_pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespaces.bench)
    }

    /// Pods in the agents' namespace.
    pub fn agent_pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespaces.agents)
    }
}

/// Builds the client. Nothing is sent yet: the first API call shows whether the server answers.
pub async fn connect(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
    namespaces: Namespaces,
) -> Result<Cluster, K8sError> {
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..Default::default()
    };
    let config = match (kubeconfig, context) {
        (Some(path), _) => {
            let file = Kubeconfig::read_from(path).map_err(|source| K8sError::Kubeconfig {
                path: Some(path.to_path_buf()),
                source,
            })?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|source| K8sError::Kubeconfig {
                    path: Some(path.to_path_buf()),
                    source,
                })?
        }
        // A context only exists in a kubeconfig: in-cluster configuration has none.
        (None, Some(_)) => Config::from_kubeconfig(&options)
            .await
            .map_err(|source| K8sError::Kubeconfig { path: None, source })?,
        (None, None) => Config::infer().await.map_err(K8sError::Infer)?,
    };
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|source| K8sError::Client {
        server: server.clone(),
        source,
    })?;
    Ok(Cluster {
        client,
        server,
        namespaces,
    })
}
