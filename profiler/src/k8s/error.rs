//! What can go wrong talking to a cluster, each with what to do about it.

use std::path::PathBuf;

use super::rbac::{CLUSTER_SCOPED, NAMESPACE};

#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error("cannot use kubeconfig {}", path.as_ref().map_or("(KUBECONFIG or ~/.kube/config)".to_owned(), |p| p.display().to_string()))]
    Kubeconfig {
        path: Option<PathBuf>,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no Kubernetes configuration found: give --kubeconfig, set KUBECONFIG, create ~/.kube/config, \
         or run inside a pod with a ServiceAccount"
    )]
    Infer(#[source] kube::config::InferConfigError),
    #[error("cannot build a Kubernetes client for {server}")]
    Client {
        server: String,
        #[source]
        source: kube::Error,
    },
    #[error("{}", api_message(verb, resource, name, source))]
    Api {
        verb: &'static str,
        resource: &'static str,
        name: String,
        #[source]
        source: ApiCause,
    },
    #[error(transparent)]
    Nodes(#[from] super::nodes::NodeError),
    #[error(
        "deploy/bench-pods.yaml's own hostNetwork pods ({pods}) run on the server node {node} and hold \
         the ports the run's twins need (80, 5201): delete them first (`kubectl -n {NAMESPACE} delete pod {pods}`; \
         the ConfigMap they come with stays)"
    )]
    TemplatePodsRunning { node: String, pods: String },
    #[error("benchmark pods not ready after {secs} s (--ready-timeout): {pods}")]
    NotReady { secs: u64, pods: String },
    #[error("pod {pod} stopped before the benchmarks were done: {status}")]
    PodFailed { pod: String, status: String },
    #[error("pod {pod} was deleted while netprof was using it (by someone else, or `netprof k8s clean`)")]
    PodVanished { pod: String },
    #[error("`{command}` in pod {NAMESPACE}/{pod}: {source}")]
    Exec {
        pod: String,
        command: String,
        #[source]
        source: super::exec::ExecError,
    },
    #[error("`{command}` in pod {NAMESPACE}/{pod} exited with {exit_code} and its output could not be read{}", stderr_note(stderr))]
    Output {
        pod: String,
        command: String,
        exit_code: i32,
        stderr: String,
        #[source]
        source: crate::parse::ParseError,
    },
    #[error(
        "no netprof agent pod on node {node} (agent pods found on: {found}): apply deploy/ \
         (`kubectl apply -k deploy/`: the netprof-agent DaemonSet runs on every node), or rerun with --no-profile"
    )]
    NoAgent { node: String, found: String },
    #[error(
        "the agent on node {node} (pod {NAMESPACE}/{pod}) did not answer: {source}; check it with \
         `kubectl -n {NAMESPACE} get pods -l app.kubernetes.io/name=netprof-agent -o wide`, or rerun with --no-profile"
    )]
    Agent {
        node: String,
        pod: String,
        #[source]
        source: super::agents::AgentCallError,
    },
    #[error(transparent)]
    Config(#[from] crate::bench::config::ConfigError),
    #[error("cannot write {path} (choose a writable --out directory)")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why an API call failed: the server's `Status` answer, or no answer at all.
#[derive(Debug, thiserror::Error)]
pub enum ApiCause {
    #[error("{message} (HTTP {code} {reason})")]
    Status {
        code: u16,
        reason: String,
        message: String,
    },
    #[error(transparent)]
    Transport(kube::Error),
}

impl From<kube::Error> for ApiCause {
    fn from(err: kube::Error) -> Self {
        match err {
            kube::Error::Api(status) => ApiCause::Status {
                code: status.code,
                reason: status.reason.clone(),
                message: status.message.clone(),
            },
            other => ApiCause::Transport(other),
        }
    }
}

impl ApiCause {
    pub fn code(&self) -> Option<u16> {
        match self {
            ApiCause::Status { code, .. } => Some(*code),
            ApiCause::Transport(_) => None,
        }
    }
}

/// `map_err` for an API call: which verb on which resource (and object) failed.
pub fn api(
    verb: &'static str,
    resource: &'static str,
    name: impl Into<String>,
) -> impl FnOnce(kube::Error) -> K8sError {
    let name = name.into();
    move |err| K8sError::Api {
        verb,
        resource,
        name,
        source: err.into(),
    }
}

fn stderr_note(stderr: &str) -> String {
    let stderr = stderr.trim();
    if stderr.is_empty() {
        String::new()
    } else {
        format!(" (stderr: {})", excerpt(stderr))
    }
}

/// The last lines of a tool's stderr, enough to say why it failed.
pub fn excerpt(text: &str) -> String {
    let lines: Vec<&str> = text.trim().lines().collect();
    let tail = &lines[lines.len().saturating_sub(5)..];
    tail.join(" / ")
}

fn api_message(verb: &str, resource: &str, name: &str, cause: &ApiCause) -> String {
    let object = if name.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource} {name}")
    };
    let scope = if CLUSTER_SCOPED.contains(&resource) {
        String::new()
    } else {
        format!(" in namespace {NAMESPACE}")
    };
    let hint = match cause.code() {
        Some(401) => "; the API server did not accept the credentials: check the kubeconfig's user (expired token?)".to_owned(),
        Some(403) => format!(
            "; netprof needs `{verb}` on `{resource}`: apply deploy/ (`kubectl apply -k deploy/`) and use the \
             netprof-orchestrator ServiceAccount, or bind your user to its Role and ClusterRole (deploy/rbac.yaml)"
        ),
        Some(404) if cause.to_string().contains("namespaces") => {
            format!("; the namespace {NAMESPACE} is missing: apply deploy/ first (`kubectl apply -k deploy/`)")
        }
        Some(_) => String::new(),
        None => "; is the API server reachable? check the server URL of the kubeconfig's context".to_owned(),
    };
    format!("cannot {verb} {object}{scope}: {cause}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, reason: &str, message: &str) -> ApiCause {
        ApiCause::Status {
            code,
            reason: reason.into(),
            message: message.into(),
        }
    }

    #[test]
    fn forbidden_names_the_verb_resource_and_the_fix() {
        let err = K8sError::Api {
            verb: "create",
            resource: "pods",
            name: "netprof-1-client".into(),
            source: status(
                403,
                "Forbidden",
                "pods is forbidden: User \"u\" cannot create resource \"pods\"",
            ),
        };
        let text = err.to_string();
        assert!(
            text.starts_with(
                "cannot create pods netprof-1-client in namespace netprof: pods is forbidden"
            ),
            "{text}"
        );
        assert!(
            text.contains("(HTTP 403 Forbidden)") && text.contains("needs `create` on `pods`"),
            "{text}"
        );
        assert!(text.contains("deploy/rbac.yaml"), "{text}");
    }

    #[test]
    fn nodes_are_cluster_scoped_and_a_missing_namespace_says_apply_deploy() {
        let err = K8sError::Api {
            verb: "list",
            resource: "nodes",
            name: String::new(),
            source: status(500, "InternalError", "boom"),
        };
        assert_eq!(
            err.to_string(),
            "cannot list nodes: boom (HTTP 500 InternalError)"
        );
        let err = K8sError::Api {
            verb: "create",
            resource: "pods",
            name: "p".into(),
            source: status(404, "NotFound", "namespaces \"netprof\" not found"),
        };
        assert!(err.to_string().contains("apply deploy/ first"), "{err}");
    }

    #[test]
    fn stderr_excerpt_keeps_the_last_lines() {
        let text = (1..=8)
            .map(|i| format!("line {i}"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(excerpt(&text), "line 4 / line 5 / line 6 / line 7 / line 8");
    }
}
