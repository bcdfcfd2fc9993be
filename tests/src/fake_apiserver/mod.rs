//! An in-process fake Kubernetes API server for `netprof k8s run`: no real API server can run on
//! these machines, so the orchestrator talks to this one, over the same protocols kube uses
//! with a real cluster:
//!
//! - HTTP/1.1 JSON on `/api/v1`: nodes (list, get), pods in netprof's two namespaces (list
//!   with label and field selectors, `watch=true` streams of `{"type","object"}` lines from a
//!   resourceVersion, get, create (also `dryRun=All`), graceful delete), the agents' token
//!   Secret (get), NetworkPolicies (list, `/apis/networking.k8s.io/v1`), errors as `Status`
//!   objects (403 worded as RBAC or Pod Security word it, 404, 409);
//! - exec over WebSocket (`v5.channel.k8s.io`, else `v4.channel.k8s.io`): stdout on channel
//!   1, stderr on 2, the exit `Status` on 3;
//! - port-forward over WebSocket (`v4.channel.k8s.io`, as the kubelet answers kube): a data and
//!   an error channel per port, each opened with the port number (2 bytes, little endian).
//!
//! Pods are scheduled by their nodeSelector (Unschedulable when another pod on the node declares
//! one of their host ports), then marked Running and Ready after a delay, or never (containers
//! being created, an image that cannot be pulled, Running but not Ready). What "runs" in a pod is the [`Backend`]'s job: a test maps pods onto namespace-lab
//! namespaces and runs the real commands there, or answers with canned output. Every request
//! is recorded with the verbs a real API server would authorize, so a test can check the
//! orchestrator stays inside `netprof::k8s::rbac::REQUIRED_RULES` and deletes what it made.

// A handler's error is the HTTP response it sends as it is; its size does not matter here.
#![allow(clippy::result_large_err)]

pub mod canned;
mod exec;
pub mod harness;
pub mod lab_backend;
mod lifecycle;
mod portforward;
mod routes;
mod secrets;
mod selectors;
mod state;
mod status;
mod websocket;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

pub use state::{RequestRecord, State};

/// The namespaces the fake serves by default: netprof's (deploy/namespace.yaml).
pub const NAMESPACE: &str = netprof::k8s::rbac::BENCH_NAMESPACE;
pub const AGENT_NAMESPACE: &str = netprof::k8s::rbac::AGENT_NAMESPACE;
/// The agents' API token the fake's Secret holds by default (canned agents ask for it).
pub const AGENT_TOKEN: &str = "fake-agent-token-0123456789";

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a backend sees of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub name: String,
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub host_network: bool,
    /// The first container's name and command.
    pub container: String,
    pub command: Vec<String>,
}

impl PodInfo {
    pub fn from_pod(pod: &Pod) -> Self {
        let spec = pod.spec.clone().unwrap_or_default();
        let first = spec.containers.first().cloned().unwrap_or_default();
        Self {
            name: pod.metadata.name.clone().unwrap_or_default(),
            node: spec.node_name.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            host_network: spec.host_network.unwrap_or(false),
            container: first.name,
            command: first.command.unwrap_or_default(),
        }
    }

    /// The value of label `key`, or "".
    pub fn label(&self, key: &str) -> &str {
        self.labels.get(key).map_or("", String::as_str)
    }
}

/// How an exec ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecOutcome {
    Exited {
        stdout: Vec<u8>,
        stderr: Vec<u8>,
        code: i32,
    },
    /// The runtime could not start the command (e.g. not in the image).
    NotRun(String),
}

/// What runs inside the fake cluster's pods.
pub trait Backend: Send + Sync + 'static {
    /// The address of a pod with its own network (hostNetwork pods get their node's).
    fn pod_ip(&self, pod: &PodInfo) -> Ipv4Addr;
    /// The pod's container starts; an error makes the pod Failed with that message.
    fn start(&self, _pod: &PodInfo) -> BoxFuture<Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
    /// The pod was deleted.
    fn stop(&self, _pod: &PodInfo) {}
    /// Runs `command` in the pod; dropping the future must stop it (the client went away).
    fn exec(&self, pod: &PodInfo, container: &str, command: Vec<String>) -> BoxFuture<ExecOutcome>;
    /// Connects to `port` on the pod's loopback.
    fn port_forward(
        &self,
        pod: &PodInfo,
        port: u16,
    ) -> BoxFuture<std::io::Result<tokio::net::TcpStream>>;
}

/// How the fake behaves.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// Delay between a pod's creation and it being Running and Ready.
    pub ready_after: Duration,
    /// Pods whose name ends with one of these never become ready (ContainerCreating forever).
    pub never_ready: Vec<String>,
    /// `(verb, resource)` pairs RBAC denies, e.g. `("create", "pods")`.
    pub forbidden: Vec<(String, String)>,
    /// Time a deleted pod stays Terminating before it is gone.
    pub terminate_after: Duration,
    /// The namespaces served (others answer 404 as a missing namespace does).
    pub namespaces: Vec<String>,
    /// The token in the Secret netprof-agent-token of the agents' namespace (`None`: no Secret).
    pub agent_token: Option<String>,
    /// NetworkPolicies in every served namespace (their JSON).
    pub network_policies: Vec<serde_json::Value>,
    /// Pod Security Admission enforcing `baseline`: hostNetwork pods are refused with its 403.
    pub pod_security_baseline: bool,
    /// Pods running one of these images never start: ErrImagePull, then ImagePullBackOff.
    pub unpullable_images: Vec<String>,
    /// Pods whose name ends with one of these run but never become Ready.
    pub running_not_ready: Vec<String>,
    /// Pods with their own network also get an IPv6 address (`podIPs`), or only one.
    pub ipv6: Ipv6Pods,
}

impl FakeConfig {
    /// The agents' namespace: the second served one (the first is the benchmark's).
    pub fn agent_namespace(&self) -> &str {
        self.namespaces
            .get(1)
            .map_or(AGENT_NAMESPACE, String::as_str)
    }
}

/// The address families of the pods' own network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ipv6Pods {
    #[default]
    None,
    /// IPv6 first in `podIPs` (as an IPv6-primary dual-stack cluster lists them), then IPv4.
    DualStack,
    Only,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            ready_after: Duration::from_millis(300),
            never_ready: Vec::new(),
            forbidden: Vec::new(),
            terminate_after: Duration::from_millis(200),
            namespaces: vec![NAMESPACE.to_owned(), AGENT_NAMESPACE.to_owned()],
            agent_token: Some(AGENT_TOKEN.to_owned()),
            network_policies: Vec::new(),
            pod_security_baseline: false,
            unpullable_images: Vec::new(),
            running_not_ready: Vec::new(),
            ipv6: Ipv6Pods::None,
        }
    }
}

/// A node of the fake cluster.
#[derive(Debug, Clone)]
pub struct FakeNode {
    pub name: String,
    pub ip: Ipv4Addr,
    pub labels: BTreeMap<String, String>,
    /// `(key, effect)` taints.
    pub taints: Vec<(String, String)>,
    pub unschedulable: bool,
}

impl FakeNode {
    /// A Ready node with the usual hostname label plus `labels`.
    pub fn new(name: &str, ip: Ipv4Addr, labels: &[(&str, &str)]) -> Self {
        let mut all: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        all.insert("kubernetes.io/hostname".to_owned(), name.to_owned());
        all.entry("kubernetes.io/os".to_owned())
            .or_insert_with(|| "linux".to_owned());
        Self {
            name: name.to_owned(),
            ip,
            labels: all,
            taints: Vec::new(),
            unschedulable: false,
        }
    }
}

/// Everything the request handlers share.
pub(crate) struct Shared {
    pub state: Mutex<State>,
    pub events: tokio::sync::broadcast::Sender<state::Event>,
    pub backend: Arc<dyn Backend>,
    pub config: FakeConfig,
}

/// The running server; stops (and with it every watch, exec and port-forward) on drop.
pub struct FakeApiServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeApiServer {
    /// Serves on 127.0.0.1 (a port the kernel picks), on a thread with its own runtime, so
    /// tests may block while a `netprof` subprocess talks to it.
    pub fn start(nodes: Vec<FakeNode>, backend: Arc<dyn Backend>, config: FakeConfig) -> Self {
        let (events, _) = tokio::sync::broadcast::channel(1024);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(&nodes)),
            events,
            backend,
            config,
        });
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel();
        let serving = Arc::clone(&shared);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind 127.0.0.1");
                addr_tx
                    .send(listener.local_addr().expect("local addr"))
                    .expect("test waits");
                routes::serve(listener, serving, shutdown_rx).await;
            });
            // Abandon connections still open (a client that never hung up).
            runtime.shutdown_timeout(Duration::from_secs(1));
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the fake API server started");
        Self {
            addr,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// A kubeconfig for this server (plain HTTP, a bearer token that is never checked).
    pub fn kubeconfig(&self) -> String {
        self.kubeconfig_via(None)
    }

    /// ... reaching it through `proxy-url` when given.
    pub fn kubeconfig_via(&self, proxy: Option<&str>) -> String {
        let proxy = proxy.map_or(String::new(), |p| format!("    proxy-url: {p}\n"));
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n{proxy}\
             users:\n- name: fake\n  user:\n    token: fake-token\ncontexts:\n- name: fake\n  context:\n    \
             cluster: fake\n    user: fake\n    namespace: {NAMESPACE}\ncurrent-context: fake\n",
            self.addr
        )
    }

    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig())
    }

    /// Adds a pod as it is (e.g. an agent pod Running on a node, or a leftover of a killed run).
    pub fn add_pod(&self, pod: serde_json::Value) {
        let pod: Pod = serde_json::from_value(pod).expect("a valid Pod");
        // Sent under the lock, so watchers see events in resourceVersion order.
        let mut state = self.shared.state.lock().unwrap();
        let event = state.insert(pod);
        let _ = self.shared.events.send(event);
    }

    /// Runs `f` on the state (pods, requests).
    pub fn with_state<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.shared.state.lock().unwrap())
    }

    /// Waits until `f` holds, up to `limit`.
    pub fn wait_for(&self, limit: Duration, f: impl Fn(&State) -> bool) -> bool {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if self.with_state(&f) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.with_state(&f)
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
