//! What the `netprof k8s` tests share: the fake API server with a kubeconfig and an output
//! directory, the small benchmark settings, canned agents on both nodes, and readers of what a
//! run printed and wrote. The fake server is the one mock of the project: no real API server
//! can run on these machines.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use netprof::bench::result::ModeResult;
use netprof::k8s::rbac::{Namespaces, REQUIRED_RULES};

use super::canned::{agent_pod, CannedAgent, CannedBackend, NODE_A, NODE_A_IP, NODE_B, NODE_B_IP};
use super::{Backend, FakeApiServer, FakeConfig, FakeNode, State};
use crate::netprof_bin;

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "netprof-k8s-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The fake server, a kubeconfig for it and an output directory.
pub struct Harness {
    pub server: FakeApiServer,
    pub dir: TempDir,
}

impl Harness {
    pub fn start(nodes: Vec<FakeNode>, backend: Arc<dyn Backend>, config: FakeConfig) -> Self {
        let server = FakeApiServer::start(nodes, backend, config);
        let dir = TempDir::new("run");
        server.write_kubeconfig(&dir.0.join("kubeconfig")).unwrap();
        Self { server, dir }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.0.join("kubeconfig")
    }

    pub fn out(&self) -> PathBuf {
        self.dir.0.join("out")
    }

    /// `netprof k8s <args> --kubeconfig <fake>`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(netprof_bin());
        command
            .arg("k8s")
            .args(args)
            .arg("--kubeconfig")
            .arg(self.kubeconfig());
        command
    }

    pub fn k8s(&self, args: &[&str]) -> Output {
        let output = self.command(args).output().unwrap();
        eprintln!(
            "--- netprof k8s {args:?} ({})\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// `k8s run` with small benchmarks into `out()`.
    pub fn run(&self, mode: &str, extra: &[&str]) -> Output {
        let out = self.out();
        let mut args = vec!["run", "--mode-name", mode, "--out", out.to_str().unwrap()];
        args.extend(SMALL_RUN);
        args.extend(extra);
        self.k8s(&args)
    }

    pub fn state<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        self.server.with_state(f)
    }

    /// Every pod the run created was deleted, and no pod of any run is left.
    pub fn assert_nothing_left(&self) {
        let (created, deleted, left) = self.state(|s| {
            let left: Vec<String> = s
                .pods
                .values()
                .filter(|p| {
                    p.metadata
                        .labels
                        .as_ref()
                        .is_some_and(|l| l.contains_key("netprof.io/run"))
                })
                .filter_map(|p| p.metadata.name.clone())
                .collect();
            (s.created.clone(), s.deleted.clone(), left)
        });
        for pod in &created {
            assert!(
                deleted.contains(pod),
                "{pod} was created but not deleted (deleted: {deleted:?})"
            );
        }
        assert!(left.is_empty(), "pods left on the cluster: {left:?}");
    }

    /// Only verbs of REQUIRED_RULES were used, each in the scope that grants it.
    pub fn assert_within_rbac(&self) -> BTreeSet<(String, String, String)> {
        let namespaces = Namespaces::default();
        let used: BTreeSet<(String, String, String)> = self
            .state(State::verbs_used)
            .into_iter()
            .map(|(ns, resource, verb)| {
                (
                    format!("{:?}", namespaces.scope_of(ns.as_deref())),
                    resource,
                    verb,
                )
            })
            .collect();
        let required = required_verbs();
        let extra: Vec<_> = used.difference(&required).collect();
        assert!(
            extra.is_empty(),
            "API calls outside netprof::k8s::rbac::REQUIRED_RULES: {extra:?}"
        );
        used
    }
}

pub const SMALL_RUN: [&str; 8] = [
    "--ping-count",
    "20",
    "--iperf3-seconds",
    "1",
    "--ab-requests",
    "200",
    "--ab-concurrency",
    "4",
];

/// `(scope, resource, verb)` of REQUIRED_RULES.
pub fn required_verbs() -> BTreeSet<(String, String, String)> {
    REQUIRED_RULES
        .iter()
        .flat_map(|rule| {
            rule.verbs.iter().map(move |v| {
                (
                    format!("{:?}", rule.scope),
                    rule.resource.to_owned(),
                    (*v).to_owned(),
                )
            })
        })
        .collect()
}

/// The study's two labelled nodes and an unlabelled control-plane node.
pub fn labelled_nodes() -> Vec<FakeNode> {
    vec![
        FakeNode::new(
            "fake-cp",
            "198.18.0.9".parse().unwrap(),
            &[("node-role.kubernetes.io/control-plane", "")],
        ),
        FakeNode::new(NODE_A, NODE_A_IP, &[("workern", "1")]),
        FakeNode::new(NODE_B, NODE_B_IP, &[("workern", "2")]),
    ]
}

/// The one `netprof: error:` of a failed run, to the end of stderr (a doctor's table follows
/// its first line).
pub fn error_line(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "expected a failure; stdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.matches("netprof: error:").count(),
        1,
        "stderr: {stderr}"
    );
    let start = stderr.find("netprof: error:").unwrap();
    stderr[start..].to_owned()
}

/// The benchmark's ping (SMALL_RUN's 20 echoes), not the doctor's three.
pub fn is_benchmark_ping(command: &[String]) -> bool {
    command[0] == "ping" && command.iter().any(|a| a == "20")
}

/// The run id from `k8s: run <id> on ...`.
pub fn run_id(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("k8s: run "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no run line in {stderr}"))
        .to_owned()
}

pub fn read_result(dir: &Path, mode: &str) -> ModeResult {
    let path = dir.join(format!("{mode}.json"));
    serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

pub fn netprof_report(dir: &Path, format: &str) -> String {
    let output = Command::new(netprof_bin())
        .arg("report")
        .arg(dir)
        .args(["--format", format])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "netprof report {}: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Canned agents on both nodes, routed from their pods.
pub fn with_agents(
    harness: &Harness,
    backend: &CannedBackend,
    fail_b: Option<&'static str>,
) -> (CannedAgent, CannedAgent) {
    let (a, b) = (CannedAgent::start(None), CannedAgent::start(fail_b));
    for (pod, node, ip, agent) in [
        ("netprof-agent-a", NODE_A, NODE_A_IP, &a),
        ("netprof-agent-b", NODE_B, NODE_B_IP, &b),
    ] {
        harness.server.add_pod(agent_pod(pod, node, ip));
        backend.route_agent(pod, agent.addr);
    }
    (a, b)
}
