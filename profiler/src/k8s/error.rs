//! What can go wrong talking to a cluster, each with what to do about it.

use std::path::PathBuf;

use kube::api::Api;

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
    #[error("{}", api_message(verb, resource, namespace.as_deref(), name, source))]
    Api {
        verb: &'static str,
        resource: &'static str,
        namespace: Option<String>,
        name: String,
        #[source]
        source: ApiCause,
    },
    #[error(transparent)]
    Nodes(#[from] super::nodes::NodeError),
    #[error(
        "pods not of this run hold the host ports the run's hostNetwork servers need on the server node {node} \
         ({pods}): delete them first (`kubectl -n {namespace} delete pod {names}`)"
    )]
    HostPortsTaken {
        node: String,
        namespace: String,
        pods: String,
        names: String,
    },
    #[error(
        "{runs} on the chosen nodes: a killed run's pods (or another run still going) would share the nodes \
         and their host ports with this one; delete them with {commands}"
    )]
    LeftoverRun { runs: String, commands: String },
    #[error("benchmark pods not ready after {secs} s (--ready-timeout): {pods}")]
    NotReady { secs: u64, pods: String },
    #[error("pod {pod} stopped before the benchmarks were done: {status}")]
    PodFailed { pod: String, status: String },
    #[error(
        "pod {pod} has only IPv6 addresses ({ips}): netprof's agents follow IPv4 flows, so the cluster's pods \
         need an IPv4 address (an IPv4 or dual-stack cluster)"
    )]
    NoIpv4Pod { pod: String, ips: String },
    #[error("pod {pod} was deleted while netprof was using it (by someone else, or `netprof k8s clean`)")]
    PodVanished { pod: String },
    #[error("`{command}` in pod {namespace}/{pod}: {source}")]
    Exec {
        namespace: String,
        pod: String,
        command: String,
        #[source]
        source: super::exec::ExecError,
    },
    #[error("`{command}` in pod {namespace}/{pod} exited with {exit_code} and its output could not be read{}", stderr_note(stderr))]
    Output {
        namespace: String,
        pod: String,
        command: String,
        exit_code: i32,
        stderr: String,
        #[source]
        source: crate::parse::ParseError,
    },
    #[error("`{command}` in pod {namespace}/{pod}: {problem}")]
    BadResult {
        namespace: String,
        pod: String,
        command: String,
        problem: String,
    },
    #[error(
        "no netprof agent pod on node {node} (agent pods in namespace {namespace} found on: {found}): apply deploy/ \
         (`kubectl apply -k deploy/`: the netprof-agent DaemonSet runs on every Linux node), check \
         --agent-namespace, or rerun with --no-profile"
    )]
    NoAgent {
        node: String,
        namespace: String,
        found: String,
    },
    #[error(
        "the agent pod {namespace}/{pod} on node {node} is not running: {state}{}",
        hint_note(hint)
    )]
    AgentNotRunning {
        node: String,
        namespace: String,
        pod: String,
        state: String,
        hint: String,
    },
    #[error(
        "the agent on node {node} (pod {namespace}/{pod}) did not answer: {source}; check it with \
         `kubectl -n {namespace} get pods -l app.kubernetes.io/name=netprof-agent -o wide`, or rerun with --no-profile"
    )]
    Agent {
        node: String,
        namespace: String,
        pod: String,
        #[source]
        source: super::agents::AgentCallError,
    },
    #[error("{0}")]
    AgentToken(String),
    #[error(
        "k8s doctor found {failures} problem(s); each row marked FAIL says what to do:\n{table}"
    )]
    Doctor { failures: usize, table: String },
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

    pub fn message(&self) -> Option<&str> {
        match self {
            ApiCause::Status { message, .. } => Some(message),
            ApiCause::Transport(_) => None,
        }
    }
}

/// `map_err` for an API call through `on`: which verb on which resource (and object) failed.
pub fn api<K: kube::Resource>(
    on: &Api<K>,
    verb: &'static str,
    resource: &'static str,
    name: impl Into<String>,
) -> impl FnOnce(kube::Error) -> K8sError {
    let namespace = on.namespace().map(str::to_owned);
    let name = name.into();
    move |err| K8sError::Api {
        verb,
        resource,
        namespace,
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

fn hint_note(hint: &str) -> String {
    if hint.is_empty() {
        String::new()
    } else {
        format!("; {hint}")
    }
}

/// The last lines of a tool's stderr, enough to say why it failed.
pub fn excerpt(text: &str) -> String {
    let lines: Vec<&str> = text.trim().lines().collect();
    let tail = &lines[lines.len().saturating_sub(5)..];
    tail.join(" / ")
}

/// Who refused a request with 403: RBAC is one of several admission steps that answer so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    Rbac,
    PodSecurity,
    Webhook(String),
    Policy(String),
    Quota,
    Other,
}

/// Tells the 403s apart by the wording each part of the API server uses.
pub fn denial(message: &str) -> Denial {
    let quoted = |after: &str, quote: char| {
        message
            .split_once(after)
            .and_then(|(_, rest)| rest.strip_prefix(quote))
            .and_then(|rest| rest.split(quote).next())
            .unwrap_or_default()
            .to_owned()
    };
    if message.contains("violates PodSecurity") {
        Denial::PodSecurity
    } else if message.contains("admission webhook") {
        Denial::Webhook(quoted("admission webhook ", '"'))
    } else if message.contains("ValidatingAdmissionPolicy") {
        Denial::Policy(quoted("ValidatingAdmissionPolicy ", '\''))
    } else if message.contains("exceeded quota") {
        Denial::Quota
    } else if message.contains("cannot ") && message.contains(" resource \"") {
        Denial::Rbac
    } else {
        Denial::Other
    }
}

/// What to do about a 403, by who refused.
fn forbidden_hint(verb: &str, resource: &str, namespace: Option<&str>, message: &str) -> String {
    let ns = namespace.unwrap_or("the cluster");
    match denial(message) {
        Denial::Rbac => format!(
            "; RBAC: netprof needs `{verb}` on `{resource}` in {ns}: apply deploy/ (`kubectl apply -k deploy/`) and use the \
             netprof-orchestrator ServiceAccount, or bind your user to its Roles and ClusterRole (deploy/rbac.yaml)"
        ),
        Denial::PodSecurity => format!(
            "; Pod Security Admission refused it (not RBAC): the hostNetwork twins need the `privileged` level, which \
             namespace {ns} does not allow: `kubectl label namespace {ns} pod-security.kubernetes.io/enforce=privileged \
             --overwrite` (deploy/'s ValidatingAdmissionPolicy netprof-bench-pods still refuses privileged containers, \
             added capabilities and host paths there)"
        ),
        Denial::Webhook(name) => format!(
            "; the admission webhook {name:?} refused it (not RBAC): its message above says why; ask its owner to allow \
             netprof's pods in {ns} (hostNetwork twins on ports 80 and 5201)"
        ),
        Denial::Policy(name) if name == "netprof-bench-pods" => "; deploy/'s own ValidatingAdmissionPolicy refused it \
            (not RBAC): netprof's pods never ask for what it forbids, so the pod was changed by something else (a \
            mutating webhook?) or the policy was edited"
            .to_owned(),
        Denial::Policy(name) => format!(
            "; the ValidatingAdmissionPolicy {name:?} refused it (not RBAC): its message above says why \
             (`kubectl get validatingadmissionpolicybinding`)"
        ),
        Denial::Quota => format!(
            "; a ResourceQuota refused it (not RBAC): `kubectl -n {ns} describe resourcequota`; each benchmark pod \
             requests 100m CPU and 32Mi"
        ),
        Denial::Other => "; not an RBAC refusal: the message above says which admission step refused it".to_owned(),
    }
}

fn api_message(
    verb: &str,
    resource: &str,
    namespace: Option<&str>,
    name: &str,
    cause: &ApiCause,
) -> String {
    let object = if name.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource} {name}")
    };
    let scope = namespace.map_or(String::new(), |ns| format!(" in namespace {ns}"));
    let hint = match cause.code() {
        Some(401) => "; the API server did not accept the credentials: check the kubeconfig's user (expired token?)".to_owned(),
        Some(403) => forbidden_hint(verb, resource, namespace, cause.message().unwrap_or_default()),
        Some(404) if cause.to_string().contains("namespaces") => {
            let ns = namespace.unwrap_or_default();
            format!("; the namespace {ns} is missing: apply deploy/ first (`kubectl apply -k deploy/`), or check --namespace / --agent-namespace")
        }
        Some(_) => String::new(),
        None => "; is the API server reachable? check the server URL of the kubeconfig's context (and its proxy-url)".to_owned(),
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

    fn forbidden(message: &str) -> String {
        K8sError::Api {
            verb: "create",
            resource: "pods",
            namespace: Some("netprof".into()),
            name: "netprof-1-client".into(),
            source: status(403, "Forbidden", message),
        }
        .to_string()
    }

    #[test]
    fn forbidden_names_the_verb_resource_and_the_fix() {
        let text = forbidden("pods is forbidden: User \"u\" cannot create resource \"pods\" in API group \"\" in the namespace \"netprof\"");
        assert!(
            text.starts_with(
                "cannot create pods netprof-1-client in namespace netprof: pods is forbidden"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "(HTTP 403 Forbidden); RBAC: netprof needs `create` on `pods` in netprof"
            ),
            "{text}"
        );
        assert!(text.contains("deploy/rbac.yaml"), "{text}");
    }

    #[test]
    fn each_kind_of_403_gets_its_own_advice() {
        let psa = forbidden("pods \"netprof-1-nginx-host\" is forbidden: violates PodSecurity \"baseline:latest\": host namespaces (hostNetwork=true), hostPort (container \"nginx\" uses hostPort 80)");
        assert!(
            psa.contains("Pod Security Admission refused it (not RBAC)")
                && psa.contains(
                    "kubectl label namespace netprof pod-security.kubernetes.io/enforce=privileged"
                ),
            "{psa}"
        );
        assert!(!psa.contains("deploy/rbac.yaml"), "{psa}");
        let webhook = forbidden("admission webhook \"validate.kyverno.svc-fail\" denied the request: policy disallow-host-ports");
        assert!(
            webhook.contains(
                "the admission webhook \"validate.kyverno.svc-fail\" refused it (not RBAC)"
            ),
            "{webhook}"
        );
        let policy = forbidden("pods \"p\" is forbidden: ValidatingAdmissionPolicy 'no-host-network' with binding 'b' denied request: nope");
        assert!(
            policy.contains("ValidatingAdmissionPolicy \"no-host-network\" refused it"),
            "{policy}"
        );
        let quota = forbidden("pods \"p\" is forbidden: exceeded quota: compute, requested: cpu=100m, used: cpu=2, limited: cpu=2");
        assert!(
            quota.contains("a ResourceQuota refused it")
                && quota.contains("kubectl -n netprof describe resourcequota"),
            "{quota}"
        );
        let other = forbidden("pods \"p\" is forbidden: maximum cpu usage per Container is 50m");
        assert!(other.contains("not an RBAC refusal"), "{other}");
        assert_eq!(
            denial("x cannot get resource \"secrets\" in API group"),
            Denial::Rbac
        );
    }

    #[test]
    fn nodes_are_cluster_scoped_and_a_missing_namespace_says_apply_deploy() {
        let err = K8sError::Api {
            verb: "list",
            resource: "nodes",
            namespace: None,
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
            namespace: Some("netprof".into()),
            name: "p".into(),
            source: status(404, "NotFound", "namespaces \"netprof\" not found"),
        };
        assert!(
            err.to_string()
                .contains("the namespace netprof is missing: apply deploy/ first"),
            "{err}"
        );
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
