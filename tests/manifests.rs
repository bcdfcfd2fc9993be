//! `deploy/` parsed into k8s-openapi types and checked: every document is a known kind whose
//! fields all exist (a typo such as `mountPropogation` fails: the typed value must serialize
//! back to exactly the YAML), the agent DaemonSet is privileged on the host network with the
//! mounts it needs, its probes reach the control API, it tolerates every taint; the RBAC
//! grants exactly `netprof::k8s::rbac::REQUIRED_RULES`, nothing to the agent; the benchmark
//! pods are the study's; the kustomization lists every file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Container, Namespace, Pod, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding},
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use netprof::k8s::rbac::{CLUSTER_SCOPED, NAMESPACE, REQUIRED_RULES};
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

fn load() -> Manifests {
    let mut m = Manifests::default();
    for file in yaml_files() {
        let text = std::fs::read_to_string(deploy_dir().join(&file)).unwrap();
        m.add(&file, &text);
    }
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
fn every_document_is_a_known_kind_in_the_netprof_namespace() {
    let m = load();
    assert!(m.objects.len() >= 10, "{:?}", m.objects);
    assert_eq!(m.namespaces.len(), 1);
    let ns = &m.namespaces[0];
    assert_eq!(ns.metadata.name.as_deref(), Some(NAMESPACE));
    let labels = ns.metadata.labels.as_ref().unwrap();
    assert_eq!(
        labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("privileged"),
        "Pod Security Admission must allow the privileged agent"
    );
    const CLUSTER_KINDS: &[&str] = &["Namespace", "ClusterRole", "ClusterRoleBinding"];
    let mut seen = BTreeSet::new();
    for (file, kind, name, namespace) in &m.objects {
        assert!(seen.insert((kind, name)), "{file}: {kind} {name} twice");
        if CLUSTER_KINDS.contains(&kind.as_str()) {
            assert_eq!(namespace, &None, "{file}: {kind} {name} is cluster-scoped");
        } else {
            assert_eq!(
                namespace.as_deref(),
                Some(NAMESPACE),
                "{file}: {kind} {name}"
            );
        }
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
    assert_ne!(pod.host_pid, Some(true), "hostPID is not needed");
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
        let host = volume
            .host_path
            .as_ref()
            .unwrap_or_else(|| panic!("volume {} is not a hostPath", mount.name));
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
        Some("Bidirectional")
    );
    assert_eq!(mount("/sys/fs/bpf").read_only, None);
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
    assert_eq!(command, format!("netprof agent --serve --listen {listen}"));
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
        let control = netprof::api::Control::new();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let response = runtime.block_on(control.handle(netprof::api::http::Request {
            method: "GET".into(),
            path: path.into(),
            body: vec![],
        }));
        assert_ne!(response.status, 404, "{path}");
    }
    assert!(
        c.ports.is_none(),
        "no port is declared: hostNetwork would make it a host port"
    );
}

/// (group, resource, verb) triples of `rules`, refusing what the set cannot express.
fn triples(rules: &[PolicyRule], scope: &str) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "{scope}: {rule:?}"
        );
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    assert!(
                        out.insert((group.clone(), resource.clone(), verb.clone())),
                        "{scope}: {group}/{resource} {verb} granted twice"
                    );
                }
            }
        }
    }
    out
}

#[test]
fn rbac_grants_exactly_what_the_orchestrator_uses() {
    let m = load();
    let required = |cluster: bool| -> BTreeSet<(String, String, String)> {
        REQUIRED_RULES
            .iter()
            .filter(|(_, resource, _)| CLUSTER_SCOPED.contains(resource) == cluster)
            .flat_map(|(g, r, verbs)| {
                verbs
                    .iter()
                    .map(move |v| (g.to_string(), r.to_string(), v.to_string()))
            })
            .collect()
    };
    let mut namespaced = BTreeSet::new();
    for role in &m.roles {
        assert_eq!(role.metadata.namespace.as_deref(), Some(NAMESPACE));
        namespaced.extend(triples(role.rules.as_deref().unwrap_or_default(), "Role"));
    }
    let mut cluster = BTreeSet::new();
    for role in &m.cluster_roles {
        assert!(role.aggregation_rule.is_none());
        cluster.extend(triples(
            role.rules.as_deref().unwrap_or_default(),
            "ClusterRole",
        ));
    }
    assert_eq!(
        namespaced,
        required(false),
        "the Role must grant exactly REQUIRED_RULES' namespaced rules"
    );
    assert_eq!(
        cluster,
        required(true),
        "the ClusterRole must grant exactly REQUIRED_RULES' cluster-scoped rules"
    );

    // Bindings: to declared roles, for the orchestrator's ServiceAccount only.
    let roles: BTreeSet<&str> = m
        .roles
        .iter()
        .filter_map(|r| r.metadata.name.as_deref())
        .collect();
    let cluster_roles: BTreeSet<&str> = m
        .cluster_roles
        .iter()
        .filter_map(|r| r.metadata.name.as_deref())
        .collect();
    let accounts: BTreeSet<&str> = m
        .service_accounts
        .iter()
        .filter_map(|s| s.metadata.name.as_deref())
        .collect();
    let mut bound = BTreeSet::new();
    let bindings = m
        .role_bindings
        .iter()
        .map(|b| (&b.role_ref, &b.subjects, "RoleBinding"))
        .chain(
            m.cluster_role_bindings
                .iter()
                .map(|b| (&b.role_ref, &b.subjects, "ClusterRoleBinding")),
        );
    for (role_ref, subjects, kind) in bindings {
        match role_ref.kind.as_str() {
            "Role" => assert!(
                kind == "RoleBinding" && roles.contains(role_ref.name.as_str()),
                "{role_ref:?}"
            ),
            "ClusterRole" => assert!(
                cluster_roles.contains(role_ref.name.as_str()),
                "{role_ref:?}"
            ),
            other => panic!("{kind} to a {other}"),
        }
        bound.insert(role_ref.name.as_str());
        for subject in subjects.iter().flatten() {
            assert_eq!(subject.kind, "ServiceAccount");
            assert_eq!(
                subject.name, "netprof-orchestrator",
                "only the orchestrator gets API access"
            );
            assert_eq!(subject.namespace.as_deref(), Some(NAMESPACE));
            assert!(accounts.contains(subject.name.as_str()));
        }
    }
    assert_eq!(
        bound.len(),
        roles.len() + cluster_roles.len(),
        "every role is bound"
    );
}

#[test]
fn bench_pods_are_the_studys() {
    let m = load();
    let page = m
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
    assert_eq!(k["namespace"].as_str(), Some(NAMESPACE));
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
        5,
        "agent + 4 tool pods"
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
