//! `deploy/` parsed into k8s-openapi types and checked: every document is a known kind whose
//! fields all exist (a typo such as `mountPropogation` fails: the typed value must serialize
//! back to exactly the YAML), in one of netprof's two namespaces; the agent DaemonSet is
//! privileged on the host network, on Linux nodes, with the mounts it needs and its token
//! Secret, its probes reach the control API, it tolerates every taint; the RBAC grants exactly
//! `netprof::k8s::rbac::REQUIRED_RULES` per namespace, nothing to the agent; the benchmark
//! namespace is guarded by the admission policy; the manual benchmark pods are the study's;
//! the kustomization lists every file; the Dockerfile's build context is what `.dockerignore`
//! leaves.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::{
    admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Container, Namespace, Pod, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding},
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use netprof::k8s::rbac::{
    Scope, AGENT_NAMESPACE, AGENT_TOKEN_KEY, AGENT_TOKEN_SECRET, BENCH_NAMESPACE, REQUIRED_RULES,
};
use serde::{de::DeserializeOwned, Deserialize};

const AGENT_IMAGE: &str = "ghcr.io/netprof/netprof:0.1.0";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every document of every YAML file in deploy/ (but the kustomization), by kind.
#[derive(Default)]
struct Manifests {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    roles: Vec<Role>,
    cluster_roles: Vec<ClusterRole>,
    role_bindings: Vec<RoleBinding>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    daemon_sets: Vec<DaemonSet>,
    config_maps: Vec<ConfigMap>,
    pods: Vec<Pod>,
    policies: Vec<ValidatingAdmissionPolicy>,
    policy_bindings: Vec<ValidatingAdmissionPolicyBinding>,
    /// (file, kind, name, namespace) of every object.
    objects: Vec<(String, String, String, Option<String>)>,
}

/// Parses `doc` as `T` and demands that it serializes back to the same document: fields
/// k8s-openapi does not know would otherwise be dropped without a word.
fn try_typed<T: DeserializeOwned + serde::Serialize>(
    file: &str,
    doc: &serde_yaml::Value,
) -> Result<T, String> {
    let value: T = serde_yaml::from_value(doc.clone()).map_err(|e| format!("{file}: {e}"))?;
    let original: serde_json::Value = serde_json::to_value(doc).unwrap();
    let back = serde_json::to_value(&value).unwrap();
    match first_difference(&original, &back, String::new()) {
        Some(path) => Err(format!(
            "{file}: {path} is not a field of {} (misspelt?)",
            std::any::type_name::<T>()
        )),
        None => Ok(value),
    }
}

fn typed<T: DeserializeOwned + serde::Serialize>(file: &str, doc: &serde_yaml::Value) -> T {
    try_typed(file, doc).unwrap_or_else(|e| panic!("{e}"))
}

/// Where `a` has something `b` lacks or differs.
fn first_difference(a: &serde_json::Value, b: &serde_json::Value, at: String) -> Option<String> {
    use serde_json::Value::*;
    match (a, b) {
        (Object(a), Object(b)) => a.iter().find_map(|(k, v)| match b.get(k) {
            Some(w) => first_difference(v, w, format!("{at}.{k}")),
            None => Some(format!("{at}.{k}")),
        }),
        (Array(a), Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, format!("{at}[{i}]"))),
        (a, b) if a == b => None,
        _ => Some(at),
    }
}

/// What `kubectl apply -k deploy/` applies.
fn load() -> Manifests {
    let mut m = Manifests::default();
    for file in yaml_files() {
        let text = std::fs::read_to_string(deploy_dir().join(&file)).unwrap();
        m.add(&file, &text);
    }
    m
}

/// deploy/manual/: applied by hand, not by the kustomization.
fn load_manual() -> Manifests {
    let mut m = Manifests::default();
    let file = "manual/bench-pods.yaml";
    m.add(
        file,
        &std::fs::read_to_string(deploy_dir().join(file)).unwrap(),
    );
    m
}

impl Manifests {
    /// Parses every document of `text` (from `file`) into its type.
    fn add(&mut self, file: &str, text: &str) {
        for de in serde_yaml::Deserializer::from_str(text) {
            let doc = serde_yaml::Value::deserialize(de).unwrap_or_else(|e| panic!("{file}: {e}"));
            if doc.is_null() {
                continue;
            }
            let kind = doc["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: a document without kind"))
                .to_owned();
            let name = doc["metadata"]["name"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: {kind} without a name"))
                .to_owned();
            let namespace = doc["metadata"]["namespace"].as_str().map(str::to_owned);
            self.objects
                .push((file.to_owned(), kind.clone(), name, namespace));
            match kind.as_str() {
                "Namespace" => self.namespaces.push(typed(file, &doc)),
                "ServiceAccount" => self.service_accounts.push(typed(file, &doc)),
                "Role" => self.roles.push(typed(file, &doc)),
                "ClusterRole" => self.cluster_roles.push(typed(file, &doc)),
                "RoleBinding" => self.role_bindings.push(typed(file, &doc)),
                "ClusterRoleBinding" => self.cluster_role_bindings.push(typed(file, &doc)),
                "DaemonSet" => self.daemon_sets.push(typed(file, &doc)),
                "ConfigMap" => self.config_maps.push(typed(file, &doc)),
                "Pod" => self.pods.push(typed(file, &doc)),
                "ValidatingAdmissionPolicy" => self.policies.push(typed(file, &doc)),
                "ValidatingAdmissionPolicyBinding" => self.policy_bindings.push(typed(file, &doc)),
                other => panic!("{file}: unexpected kind {other}: add it to this test"),
            }
        }
    }
}

/// The YAML files of deploy/ but the kustomization.
fn yaml_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| (n.ends_with(".yaml") || n.ends_with(".yml")) && n != "kustomization.yaml")
        .collect();
    files.sort();
    files
}

fn agent(m: &Manifests) -> (&DaemonSet, &Container) {
    assert_eq!(m.daemon_sets.len(), 1, "one DaemonSet: the agent");
    let ds = &m.daemon_sets[0];
    let spec = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(spec.containers.len(), 1);
    (ds, &spec.containers[0])
}

#[test]
fn every_document_is_a_known_kind_in_one_of_netprofs_namespaces() {
    let m = load();
    assert!(m.objects.len() >= 14, "{:?}", m.objects);
    let label = |name: &str| -> Option<String> {
        let ns = m
            .namespaces
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no namespace {name}"));
        ns.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-security.kubernetes.io/enforce").cloned())
    };
    assert_eq!(m.namespaces.len(), 2);
    assert_eq!(
        label(AGENT_NAMESPACE).as_deref(),
        Some("privileged"),
        "Pod Security Admission must allow the privileged agent"
    );
    assert_eq!(
        label(BENCH_NAMESPACE),
        None,
        "the benchmark namespace is not labelled privileged (bench-policy.yaml guards it)"
    );
    const CLUSTER_KINDS: &[&str] = &[
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ];
    // The agents, their identity and the orchestrator's identity live with the agents; what
    // the benchmark pods use lives in the benchmark namespace.
    const IN_AGENT_NAMESPACE: &[&str] = &["DaemonSet", "ServiceAccount"];
    let mut seen = BTreeSet::new();
    for (file, kind, name, namespace) in &m.objects {
        assert!(
            seen.insert((kind, name, namespace)),
            "{file}: {kind} {name} twice"
        );
        if CLUSTER_KINDS.contains(&kind.as_str()) {
            assert_eq!(namespace, &None, "{file}: {kind} {name} is cluster-scoped");
        } else if IN_AGENT_NAMESPACE.contains(&kind.as_str()) {
            assert_eq!(
                namespace.as_deref(),
                Some(AGENT_NAMESPACE),
                "{file}: {kind} {name}"
            );
        } else if kind == "ConfigMap" {
            assert_eq!(
                namespace.as_deref(),
                Some(BENCH_NAMESPACE),
                "{file}: {kind} {name}"
            );
        } else {
            assert!(
                [Some(AGENT_NAMESPACE), Some(BENCH_NAMESPACE)].contains(&namespace.as_deref()),
                "{file}: {kind} {name} in {namespace:?}"
            );
        }
    }
    for (file, _, name, namespace) in &load_manual().objects {
        assert_eq!(
            namespace.as_deref(),
            Some(BENCH_NAMESPACE),
            "{file}: {name}"
        );
    }
}

#[test]
fn a_misspelt_field_is_caught() {
    let doc: serde_yaml::Value = serde_yaml::from_str(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: x}\nautomountServiceAccountTokn: false\n",
    )
    .unwrap();
    let message = try_typed::<ServiceAccount>("x.yaml", &doc).unwrap_err();
    assert!(
        message.contains(".automountServiceAccountTokn is not a field"),
        "{message}"
    );
}

#[test]
fn the_agent_is_privileged_on_the_host_network_with_its_mounts() {
    let m = load();
    let (ds, c) = agent(&m);
    let spec = ds.spec.as_ref().unwrap();
    let pod = spec.template.spec.as_ref().unwrap();

    // Selector matches the template's labels.
    let selector = spec.selector.match_labels.as_ref().expect("matchLabels");
    let labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(
            labels.get(k),
            Some(v),
            "selector {k}={v} not in the template's labels"
        );
    }
    assert!(spec.selector.match_expressions.is_none());

    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.host_pid,
        Some(true),
        "pods' namespaces held only by a process are found through /proc"
    );
    assert_eq!(
        pod.node_selector
            .as_ref()
            .and_then(|s| s.get("kubernetes.io/os"))
            .map(String::as_str),
        Some("linux"),
        "Linux nodes only"
    );
    assert_eq!(
        c.security_context.as_ref().and_then(|s| s.privileged),
        Some(true)
    );
    assert_eq!(c.image.as_deref(), Some(AGENT_IMAGE));

    // No API access for the agent.
    assert_eq!(pod.service_account_name.as_deref(), Some("netprof-agent"));
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert!(m
        .service_accounts
        .iter()
        .any(|sa| sa.metadata.name.as_deref() == Some("netprof-agent")));

    // Tolerates every taint: a toleration with operator Exists and no key or effect.
    let tolerations = pod.tolerations.as_ref().expect("tolerations");
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "{tolerations:?}"
    );

    // Mounts exist, reference declared volumes, and those are the host's same paths.
    let volumes: BTreeMap<&str, _> = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| (v.name.as_str(), v))
        .collect();
    let mounts = c.volume_mounts.as_ref().unwrap();
    for mount in mounts {
        let volume = volumes
            .get(mount.name.as_str())
            .unwrap_or_else(|| panic!("mount {} has no volume", mount.name));
        if let Some(secret) = &volume.secret {
            assert_eq!(secret.secret_name.as_deref(), Some(AGENT_TOKEN_SECRET));
            assert_eq!(mount.read_only, Some(true));
            continue;
        }
        let host = volume
            .host_path
            .as_ref()
            .unwrap_or_else(|| panic!("volume {} is neither the token nor a hostPath", mount.name));
        assert_eq!(host.path, mount.mount_path, "volume {}", mount.name);
    }
    let mount = |path: &str| {
        mounts
            .iter()
            .find(|m| m.mount_path == path)
            .unwrap_or_else(|| panic!("no mount at {path}"))
    };
    assert_eq!(
        mount("/sys/fs/bpf").mount_propagation.as_deref(),
        Some("HostToContainer"),
        "nothing is pinned: nothing goes back to the host"
    );
    assert_eq!(mount("/sys/fs/bpf").read_only, Some(true));
    assert_eq!(mount("/sys/kernel/btf").read_only, Some(true));
    assert_eq!(mount("/sys/kernel/tracing").read_only, Some(true));
    assert_eq!(
        mount("/run/netns").mount_propagation.as_deref(),
        Some("HostToContainer")
    );
    assert_ne!(
        mount("/run/netns").read_only,
        Some(true),
        "the agent names its own namespace there"
    );
    assert_eq!(mounts.len(), volumes.len(), "every volume is mounted");

    // Resources: requests and limits for cpu and memory.
    let resources = c.resources.as_ref().expect("resources");
    for set in [resources.requests.as_ref(), resources.limits.as_ref()] {
        let set = set.expect("requests and limits");
        assert!(
            set.contains_key("cpu") && set.contains_key("memory"),
            "{set:?}"
        );
    }
}

#[test]
fn probes_and_command_agree_with_the_control_api() {
    let m = load();
    let (_, c) = agent(&m);
    let listen: std::net::SocketAddr = netprof::api::DEFAULT_LISTEN.parse().unwrap();
    let command = c.command.as_ref().unwrap().join(" ");
    let token_dir = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "token")
        .map(|m| m.mount_path.clone())
        .expect("the token Secret is mounted");
    assert_eq!(
        command,
        format!(
            "netprof agent --serve --listen {listen} --token-file {token_dir}/{AGENT_TOKEN_KEY}"
        )
    );
    // The Secret's key lands at that file name.
    let pod = m.daemon_sets[0]
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let secret = pod
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.secret.as_ref())
        .unwrap();
    let item = &secret.items.as_ref().unwrap()[0];
    assert_eq!(
        (item.key.as_str(), item.path.as_str()),
        (AGENT_TOKEN_KEY, AGENT_TOKEN_KEY)
    );
    for (probe, path) in [
        (&c.liveness_probe, "/healthz"),
        (&c.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("no httpGet probe on {path}"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            get.host.as_deref(),
            Some("127.0.0.1"),
            "{path}: the API is on loopback only"
        );
        assert_eq!(get.port, IntOrString::Int(listen.port() as i32), "{path}");
    }
    // The routes exist: a request to them is answered by the API, not with 404.
    for path in ["/healthz", "/readyz"] {
        let features = netprof::ebpf::features::KernelFeatures {
            kernel: "not probed".into(),
            cannot_probe: Some("not probed".into()),
            probes: Vec::new(),
        };
        let control = netprof::api::Control::new(None, features);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let response = runtime.block_on(control.handle(netprof::api::http::Request {
            method: "GET".into(),
            path: path.into(),
            authorization: None,
            body: vec![],
        }));
        assert_ne!(response.status, 404, "{path}");
    }
    assert!(
        c.ports.is_none(),
        "no port is declared: hostNetwork would make it a host port"
    );
}

/// (group, resource, verb, resource names) of `rules`, refusing what the set cannot express.
type Grant = (String, String, String, Vec<String>);

fn grants(rules: &[PolicyRule], scope: &str) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in rules {
        assert!(rule.non_resource_urls.is_none(), "{scope}: {rule:?}");
        let names = rule.resource_names.clone().unwrap_or_default();
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    assert!(
                        out.insert((group.clone(), resource.clone(), verb.clone(), names.clone())),
                        "{scope}: {group}/{resource} {verb} granted twice"
                    );
                }
            }
        }
    }
    out
}

fn required(scope: Scope) -> BTreeSet<Grant> {
    REQUIRED_RULES
        .iter()
        .filter(|r| r.scope == scope)
        .flat_map(|r| {
            r.verbs.iter().map(move |v| {
                (
                    r.group.to_owned(),
                    r.resource.to_owned(),
                    (*v).to_owned(),
                    r.names.iter().map(|n| (*n).to_owned()).collect(),
                )
            })
        })
        .collect()
}

#[test]
fn rbac_grants_exactly_what_the_orchestrator_uses() {
    let m = load();
    let mut by_namespace: BTreeMap<String, BTreeSet<Grant>> = BTreeMap::new();
    for role in &m.roles {
        let ns = role.metadata.namespace.clone().unwrap();
        by_namespace
            .entry(ns)
            .or_default()
            .extend(grants(role.rules.as_deref().unwrap_or_default(), "Role"));
    }
    let mut cluster = BTreeSet::new();
    for role in &m.cluster_roles {
        assert!(role.aggregation_rule.is_none());
        cluster.extend(grants(
            role.rules.as_deref().unwrap_or_default(),
            "ClusterRole",
        ));
    }
    assert_eq!(
        by_namespace.remove(BENCH_NAMESPACE).unwrap_or_default(),
        required(Scope::Bench),
        "the Role in the benchmark namespace must grant exactly REQUIRED_RULES' Bench rules"
    );
    assert_eq!(
        by_namespace.remove(AGENT_NAMESPACE).unwrap_or_default(),
        required(Scope::Agents),
        "the Role in the agents' namespace must grant exactly REQUIRED_RULES' Agents rules"
    );
    assert!(by_namespace.is_empty(), "Roles elsewhere: {by_namespace:?}");
    assert_eq!(
        cluster,
        required(Scope::Cluster),
        "the ClusterRole must grant exactly REQUIRED_RULES' cluster-scoped rules"
    );

    // Bindings: to declared roles in their namespace, for the orchestrator's ServiceAccount only.
    let roles: BTreeSet<(&str, &str)> = m
        .roles
        .iter()
        .filter_map(|r| {
            Some((
                r.metadata.namespace.as_deref()?,
                r.metadata.name.as_deref()?,
            ))
        })
        .collect();
    let cluster_roles: BTreeSet<&str> = m
        .cluster_roles
        .iter()
        .filter_map(|r| r.metadata.name.as_deref())
        .collect();
    let accounts: BTreeSet<(&str, &str)> = m
        .service_accounts
        .iter()
        .filter_map(|s| {
            Some((
                s.metadata.namespace.as_deref()?,
                s.metadata.name.as_deref()?,
            ))
        })
        .collect();
    let mut bound = BTreeSet::new();
    let bindings = m
        .role_bindings
        .iter()
        .map(|b| (&b.role_ref, &b.subjects, b.metadata.namespace.as_deref()))
        .chain(
            m.cluster_role_bindings
                .iter()
                .map(|b| (&b.role_ref, &b.subjects, None)),
        );
    for (role_ref, subjects, namespace) in bindings {
        match (role_ref.kind.as_str(), namespace) {
            ("Role", Some(ns)) => assert!(
                roles.contains(&(ns, role_ref.name.as_str())),
                "{role_ref:?} in {ns}"
            ),
            ("ClusterRole", _) => assert!(
                cluster_roles.contains(role_ref.name.as_str()),
                "{role_ref:?}"
            ),
            other => panic!("{other:?}"),
        }
        bound.insert((namespace, role_ref.name.as_str()));
        for subject in subjects.iter().flatten() {
            assert_eq!(subject.kind, "ServiceAccount");
            assert_eq!(
                subject.name, "netprof-orchestrator",
                "only the orchestrator gets API access"
            );
            assert_eq!(
                subject.namespace.as_deref(),
                Some(AGENT_NAMESPACE),
                "the orchestrator's account is not in the namespace where it creates pods"
            );
            assert!(accounts.contains(&(AGENT_NAMESPACE, subject.name.as_str())));
        }
    }
    assert_eq!(
        bound.len(),
        roles.len() + cluster_roles.len(),
        "every role is bound"
    );
}

/// The benchmark namespace is guarded: the policy is bound to it, denies, and allows exactly
/// the host ports the twins declare.
#[test]
fn the_benchmark_namespace_is_guarded_by_the_admission_policy() {
    let m = load();
    assert_eq!((m.policies.len(), m.policy_bindings.len()), (1, 1));
    let policy = &m.policies[0];
    let name = policy.metadata.name.as_deref().unwrap();
    assert_eq!(
        name, "netprof-bench-pods",
        "the name k8s::error's 403 advice uses"
    );
    let binding = m.policy_bindings[0].spec.as_ref().unwrap();
    assert_eq!(binding.policy_name.as_deref(), Some(name));
    assert_eq!(
        binding.validation_actions.as_deref(),
        Some(&["Deny".to_owned()][..])
    );
    let selector = binding
        .match_resources
        .as_ref()
        .and_then(|r| r.namespace_selector.as_ref())
        .and_then(|s| s.match_labels.as_ref())
        .unwrap();
    assert_eq!(
        selector
            .get("kubernetes.io/metadata.name")
            .map(String::as_str),
        Some(BENCH_NAMESPACE)
    );
    let spec = policy.spec.as_ref().unwrap();
    assert_eq!(spec.failure_policy.as_deref(), Some("Fail"));
    let expressions: Vec<&str> = spec
        .validations
        .iter()
        .flatten()
        .map(|v| v.expression.as_str())
        .collect();
    for needle in [
        "privileged",
        "allowPrivilegeEscalation",
        "capabilities.add",
        "hostPath",
        "hostPID",
        "hostIPC",
        "ephemeralContainers",
    ] {
        assert!(
            expressions.iter().any(|e| e.contains(needle)),
            "no rule on {needle}"
        );
    }
    let manual = load_manual();
    for pod in &manual.pods {
        for port in pod
            .spec
            .as_ref()
            .unwrap()
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
        {
            if let Some(host) = port.host_port {
                assert!(
                    expressions
                        .iter()
                        .any(|e| e.contains(&format!("p.hostPort == {host}"))),
                    "the policy must allow host port {host}"
                );
            }
        }
    }
}

#[test]
fn bench_pods_are_the_studys() {
    let m = load_manual();
    let applied = load();
    let page = applied
        .config_maps
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some("netprof-bench-nginx"))
        .expect("nginx ConfigMap");
    let data = page.data.as_ref().unwrap();
    assert_eq!(
        data["index.html"],
        netprof::bench::servers::page(),
        "the 612-byte page of the lab's nginx"
    );
    assert_eq!(
        data["index.html"].len(),
        netprof::bench::servers::PAGE_BYTES
    );
    assert!(data["nginx.conf"]
        .lines()
        .any(|l| l.trim() == "worker_processes 1;"));

    let mut seen = BTreeSet::new();
    for pod in &m.pods {
        let name = pod.metadata.name.as_deref().unwrap();
        let labels = pod.metadata.labels.as_ref().unwrap();
        let (role, path) = (
            labels["netprof.io/role"].as_str(),
            labels["netprof.io/path"].as_str(),
        );
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.host_network == Some(true), path == "host", "{name}");
        let node = if role == "client" { "1" } else { "2" };
        assert_eq!(
            spec.node_selector
                .as_ref()
                .unwrap()
                .get("workern")
                .map(String::as_str),
            Some(node),
            "{name}"
        );
        let c = &spec.containers[0];
        let host_ports: Vec<i32> = c
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.host_port)
            .collect();
        let want: Vec<i32> = match (role, path) {
            ("nginx", "host") => vec![80],
            ("iperf3", "host") => vec![5201],
            _ => vec![],
        };
        assert_eq!(host_ports, want, "{name}: host ports declared");
        assert!(
            spec.active_deadline_seconds.is_some(),
            "{name}: stops by itself"
        );
        if role != "nginx" {
            assert_eq!(
                c.image.as_deref(),
                Some(AGENT_IMAGE),
                "{name}: the tools come from the netprof image"
            );
        }
        // ConfigMap volumes point at the ConfigMap and its keys.
        for volume in spec.volumes.iter().flatten() {
            let cm = volume.config_map.as_ref().unwrap();
            assert_eq!(cm.name, "netprof-bench-nginx");
            for mount in c
                .volume_mounts
                .iter()
                .flatten()
                .filter(|m| m.name == volume.name)
            {
                let key = mount.sub_path.as_deref().unwrap();
                assert!(data.contains_key(key), "{name}: no key {key}");
            }
        }
        assert!(seen.insert((role, path)), "{name}: {role}/{path} twice");
    }
    let expected: BTreeSet<(&str, &str)> = ["nginx", "iperf3", "client"]
        .iter()
        .flat_map(|r| [(*r, "pod"), (*r, "host")])
        .collect();
    assert_eq!(seen, expected);
}

#[test]
fn kustomization_lists_every_file() {
    let text = std::fs::read_to_string(deploy_dir().join("kustomization.yaml")).unwrap();
    let k: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(k["kind"].as_str(), Some("Kustomization"));
    assert!(
        k["namespace"].is_null(),
        "no `namespace:`: it would move every object into one namespace"
    );
    let mut listed: Vec<String> = k["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        yaml_files(),
        "kustomization.yaml resources vs the YAML files in deploy/"
    );
    let images: Vec<&str> = k["images"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    let agent_repo = AGENT_IMAGE.rsplit_once(':').unwrap().0;
    assert!(
        images.contains(&agent_repo),
        "the agent image can be overridden: {images:?}"
    );
    assert!(deploy_dir().join("Dockerfile").exists());
}

/// What `kubectl apply -k deploy/` sends is what kustomize builds; kubectl's built-in
/// kustomize builds it here (applying needs an API server, which these machines cannot run).
/// The built documents are the same objects, parse into the same types, and an image
/// override in an overlay reaches every netprof container.
#[test]
fn kubectl_kustomize_builds_the_same_objects() {
    let test = "manifests kubectl_kustomize_builds_the_same_objects";
    let Some(built) = kustomize(&deploy_dir()) else {
        netprof_tests::print_skip(
            test,
            "`kubectl` (with its built-in kustomize) is not installed",
        );
        return;
    };
    let mut from_kubectl = Manifests::default();
    from_kubectl.add("kubectl kustomize deploy/", &built);
    let key = |m: &Manifests| -> BTreeSet<(String, String, Option<String>)> {
        m.objects
            .iter()
            .map(|(_, kind, name, ns)| (kind.clone(), name.clone(), ns.clone()))
            .collect()
    };
    let ours = load();
    assert_eq!(key(&from_kubectl), key(&ours));
    assert_eq!(from_kubectl.objects.len(), ours.objects.len());

    let overlay = std::env::temp_dir().join(format!("netprof-overlay-{}", std::process::id()));
    std::fs::create_dir_all(&overlay).unwrap();
    let base = overlay.join("base");
    let _ = std::fs::remove_file(&base);
    std::os::unix::fs::symlink(deploy_dir().canonicalize().unwrap(), &base).unwrap();
    std::fs::write(
        overlay.join("kustomization.yaml"),
        "resources:\n  - base\nimages:\n  - name: ghcr.io/netprof/netprof\n    newName: registry.example/netprof\n    newTag: dev\n",
    )
    .unwrap();
    let built = kustomize(&overlay).expect("kubectl kustomize on the overlay");
    let _ = std::fs::remove_dir_all(&overlay);
    assert_eq!(
        built.matches("image: registry.example/netprof:dev").count(),
        1,
        "the agent's (k8s run gives the benchmark pods the agents' image)"
    );
    assert!(!built.contains(AGENT_IMAGE));
}

/// `kubectl kustomize DIR`, or None without kubectl. Panics with kubectl's message if it fails.
fn kustomize(dir: &Path) -> Option<String> {
    let output = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .ok()?;
    assert!(
        output.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8(output.stdout).unwrap())
}

/// The image's build context: `.dockerignore` keeps out what is built or versioned, and keeps
/// in what the Dockerfile copies and what cargo needs to build (every workspace member, the
/// lock file for `--locked`); bpf-linker's version is the one `cargo xtask setup` installs.
#[test]
fn the_dockerfile_builds_from_what_dockerignore_leaves() {
    let root = deploy_dir().join("..");
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).expect(".dockerignore");
    let patterns: Vec<String> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').trim_start_matches("**/").to_owned())
        .collect();
    let ignored = |path: &str| {
        let first = path
            .trim_start_matches("./")
            .split('/')
            .next()
            .unwrap_or_default();
        patterns.iter().any(|p| p == first || p == path)
    };
    for out in ["target", ".git"] {
        assert!(ignored(out), ".dockerignore must exclude {out}");
    }
    let dockerfile = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    for line in dockerfile.lines().map(str::trim) {
        let Some(args) = line.strip_prefix("COPY ") else {
            continue;
        };
        if args.contains("--from=") {
            continue;
        }
        let parts: Vec<&str> = args.split_whitespace().collect();
        for source in &parts[..parts.len() - 1] {
            assert!(
                *source == "." || !ignored(source),
                "the Dockerfile copies {source}, which .dockerignore excludes"
            );
        }
    }
    let cargo = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let members_line = cargo
        .lines()
        .find(|l| l.starts_with("members"))
        .expect("workspace members");
    for member in members_line.split('"').skip(1).step_by(2) {
        assert!(
            !ignored(member),
            "workspace member {member} is excluded from the image's context"
        );
        assert!(root.join(member).join("Cargo.toml").exists(), "{member}");
    }
    assert!(!ignored("Cargo.lock") && dockerfile.contains("--locked"));
    let setup = std::fs::read_to_string(root.join("xtask/src/setup.rs")).unwrap();
    let version = |text: &str, prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(|rest| {
                rest.trim_matches(|c| c == '"' || c == ';' || c == ' ')
                    .to_owned()
            })
    };
    assert_eq!(
        version(&dockerfile, "ARG BPF_LINKER_VERSION="),
        version(&setup, "const BPF_LINKER_VERSION: &str ="),
        "deploy/Dockerfile and xtask setup build the same bpf-linker"
    );
}
