//! The Kubernetes client: from `--kubeconfig` / `--context`, else KUBECONFIG or ~/.kube/config,
//! else the pod's ServiceAccount (in-cluster), as kubectl finds its configuration.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use super::K8sError;

/// A connected client and the API server it talks to (for messages and the result file).
pub struct Cluster {
    pub client: Client,
    pub server: String,
}

/// Builds the client. Nothing is sent yet: the first API call shows whether the server answers.
pub async fn connect(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
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
    Ok(Cluster { client, server })
}
