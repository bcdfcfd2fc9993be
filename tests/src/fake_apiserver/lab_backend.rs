//! The fake cluster on a namespace lab (`netprof lab` via the library): the fake's two nodes
//! are the lab's nodes, a pod with its own network is the lab pod of its node, a hostNetwork
//! pod is its node's namespace. Pods run for real there: iperf3 runs the pod's own command,
//! nginx the lab's one-worker server with the 612-byte page (the ConfigMap's content; volumes
//! cannot be mounted here), exec runs the command with `ip netns exec`, and port-forward
//! connects to 127.0.0.1:PORT inside the node's namespace, where a real `netprof agent --serve`
//! listens ([`LabAgents`]).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use netprof::bench::servers::{self, RunningServer};
use netprof::lab::{addressing, Lab, Node};

use super::{Backend, BoxFuture, ExecOutcome, FakeNode, PodInfo};

/// A pod's process, stopped when the pod is deleted.
enum Running {
    Nginx(#[allow(dead_code)] RunningServer),
    Process(Child),
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Running::Process(child) = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub struct LabBackend {
    lab: Lab,
    /// Fake node name -> lab node.
    nodes: BTreeMap<String, Node>,
    work_dir: PathBuf,
    running: Mutex<BTreeMap<String, Running>>,
}

impl LabBackend {
    /// The lab's nodes as fake nodes (`<lab>-node1` labelled workern=1, `-node2` workern=2).
    pub fn new(lab: Lab, work_dir: PathBuf) -> (Self, Vec<FakeNode>) {
        let mut nodes = BTreeMap::new();
        let mut fake = Vec::new();
        for node in Node::BOTH {
            let name = format!("{}-node{}", lab.names.lab(), node.index());
            let worker = node.index().to_string();
            fake.push(FakeNode::new(
                &name,
                addressing::node_ip(node),
                &[("workern", &worker)],
            ));
            nodes.insert(name, node);
        }
        (
            Self {
                lab,
                nodes,
                work_dir,
                running: Mutex::new(BTreeMap::new()),
            },
            fake,
        )
    }

    fn node(&self, pod: &PodInfo) -> Node {
        *self
            .nodes
            .get(&pod.node)
            .unwrap_or_else(|| panic!("pod {} is on unknown node {:?}", pod.name, pod.node))
    }

    /// The lab namespace a pod's network is.
    pub fn netns(&self, pod: &PodInfo) -> String {
        let node = self.node(pod);
        if pod.host_network {
            self.lab.names.node(node)
        } else {
            self.lab.names.pod(node)
        }
    }

    fn start_blocking(&self, pod: &PodInfo) -> Result<Option<Running>, String> {
        let netns = self.netns(pod);
        match pod.label("netprof.io/role") {
            "nginx" => servers::start_nginx(&netns, &self.work_dir.join(&pod.name))
                .map(|s| Some(Running::Nginx(s)))
                .map_err(|e| e.to_string()),
            "iperf3" => {
                // The pod's own command (`iperf3 -s -p 5201`), in its namespace.
                let child = Command::new("ip")
                    .args(["netns", "exec", &netns])
                    .args(&pod.command)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("cannot run {:?}: {e}", pod.command))?;
                let running = Running::Process(child);
                wait_listening(&netns, 5201)?;
                Ok(Some(running))
            }
            // The client sleeps; its tools run through exec.
            _ => Ok(None),
        }
    }
}

fn wait_listening(netns: &str, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                netns,
                "ss",
                "-Hltn",
                &format!("sport = :{port}"),
            ])
            .output();
        if out.is_ok_and(|o| !o.stdout.is_empty()) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "nothing listens on port {port} in {netns} after 5 s"
    ))
}

impl Backend for LabBackend {
    fn pod_ip(&self, pod: &PodInfo) -> Ipv4Addr {
        addressing::pod_ip(self.lab.mode(), self.node(pod))
    }

    fn start(&self, pod: &PodInfo) -> BoxFuture<Result<(), String>> {
        // Starting servers blocks (spawn, then poll `ss`): fine on the fake's worker thread for
        // the few ms it takes, and it keeps the backend free of 'static juggling.
        let result = self.start_blocking(pod).map(|running| {
            if let Some(running) = running {
                self.running
                    .lock()
                    .unwrap()
                    .insert(pod.name.clone(), running);
            }
        });
        Box::pin(async move { result })
    }

    fn stop(&self, pod: &PodInfo) {
        self.running.lock().unwrap().remove(&pod.name);
    }

    fn exec(
        &self,
        pod: &PodInfo,
        _container: &str,
        command: Vec<String>,
    ) -> BoxFuture<ExecOutcome> {
        let netns = self.netns(pod);
        Box::pin(async move {
            let mut cmd = tokio::process::Command::new("ip");
            cmd.args(["netns", "exec", &netns])
                .args(&command)
                .stdin(Stdio::null())
                .kill_on_drop(true);
            match cmd.output().await {
                // `ip netns exec` reports a missing program on stderr with 255.
                Ok(out)
                    if out.status.code() == Some(255)
                        && String::from_utf8_lossy(&out.stderr).contains("No such file") =>
                {
                    ExecOutcome::NotRun(format!(
                        "exec: {:?}: executable file not found in $PATH",
                        command[0]
                    ))
                }
                Ok(out) => ExecOutcome::Exited {
                    stdout: out.stdout,
                    stderr: out.stderr,
                    code: out.status.code().unwrap_or(128),
                },
                Err(err) => ExecOutcome::NotRun(format!("cannot run ip netns exec: {err}")),
            }
        })
    }

    fn port_forward(
        &self,
        pod: &PodInfo,
        port: u16,
    ) -> BoxFuture<std::io::Result<tokio::net::TcpStream>> {
        // Agent pods use the host network: the node's loopback.
        let netns = self.lab.names.node(self.node(pod));
        Box::pin(async move {
            let connected = tokio::task::spawn_blocking(move || {
                // A socket belongs to the namespace it was created in.
                netprof::netns::run_in(&netns, || std::net::TcpStream::connect(("127.0.0.1", port)))
                    .map_err(std::io::Error::other)?
            })
            .await
            .map_err(std::io::Error::other)??;
            connected.set_nonblocking(true)?;
            tokio::net::TcpStream::from_std(connected)
        })
    }
}

/// `netprof agent --serve --listen 127.0.0.1:9476 --token-file F` in both lab nodes'
/// namespaces (as the DaemonSet runs it with hostNetwork, F holding the fake Secret's token);
/// SIGTERM on drop, which detaches whatever is attached, and the token file removed.
pub struct LabAgents {
    children: Vec<Child>,
    pub logs: Vec<std::sync::Arc<Mutex<String>>>,
    token_file: PathBuf,
}

impl LabAgents {
    pub fn start(netprof: &std::path::Path, lab: &Lab) -> Self {
        let token_file = std::env::temp_dir().join(format!(
            "netprof-lab-agents-token-{}-{}",
            std::process::id(),
            lab.names.lab()
        ));
        std::fs::write(&token_file, super::AGENT_TOKEN).expect("write the token file");
        let mut agents = Self {
            children: Vec::new(),
            logs: Vec::new(),
            token_file,
        };
        for node in Node::BOTH {
            let netns = lab.names.node(node);
            let mut child = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{netns}"))
                .arg(netprof)
                .args([
                    "agent",
                    "--serve",
                    "--listen",
                    "127.0.0.1:9476",
                    "--token-file",
                ])
                .arg(&agents.token_file)
                .stderr(Stdio::piped())
                .spawn()
                .expect("start netprof agent --serve");
            let (tx, rx) = std::sync::mpsc::channel();
            let log = std::sync::Arc::new(Mutex::new(String::new()));
            let (pipe, sink) = (
                child.stderr.take().expect("piped"),
                std::sync::Arc::clone(&log),
            );
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if line.contains("listening on http://") {
                        let _ = tx.send(());
                    }
                    eprintln!("  [agent {netns}] {line}");
                    sink.lock().unwrap().push_str(&(line + "\n"));
                }
            });
            agents.children.push(child);
            agents.logs.push(log);
            rx.recv_timeout(Duration::from_secs(15))
                .expect("the agent printed its address");
        }
        agents
    }
}

impl Drop for LabAgents {
    fn drop(&mut self) {
        for child in &mut self.children {
            sigterm(child.id());
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.token_file);
    }
}

/// SIGTERM to `pid` (`kill -TERM`: the tests crate has no libc).
pub fn sigterm(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}
