//! A canned fake cluster for the fault tests, which need no root: commands answer with tool
//! output captured under tests/fixtures, and each agent is a small HTTP server on 127.0.0.1
//! that answers like `netprof agent --serve` with a captured agent report.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Backend, BoxFuture, ExecOutcome, PodInfo};

/// The fake cluster's two nodes.
pub const NODE_A: &str = "fake-a";
pub const NODE_B: &str = "fake-b";
pub const NODE_A_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const NODE_B_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

pub fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(path)
}

fn read_fixture(path: &str) -> Vec<u8> {
    std::fs::read(fixture(path)).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

/// What ping, iperf3 -J and ab printed in captured runs, and a TCP connect that succeeds
/// (`timeout 3 bash -c 'exec 3<>/dev/tcp/...'` prints nothing); anything else is not in the
/// image.
pub fn fixture_output(command: &[String]) -> ExecOutcome {
    let stdout = match command.first().map(String::as_str) {
        Some("ping") => read_fixture("ping/iputils-loopback.txt"),
        Some("iperf3") => read_fixture("iperf3/tcp-loopback-1s.json"),
        Some("ab") => read_fixture("ab/nginx-loopback-n2000-c20.txt"),
        Some("timeout") => Vec::new(),
        other => {
            let program = other.unwrap_or_default();
            return ExecOutcome::NotRun(format!(
                "exec: \"{program}\": executable file not found in $PATH"
            ));
        }
    };
    ExecOutcome::Exited {
        stdout,
        stderr: Vec::new(),
        code: 0,
    }
}

pub type ExecFn = dyn Fn(&PodInfo, &[String]) -> BoxFuture<ExecOutcome> + Send + Sync;

/// Canned pods: IPs by node and role, exec by a function, port-forward to canned agents.
pub struct CannedBackend {
    exec: Box<ExecFn>,
    /// Agent pod name -> where its port-forward connects (absent: refused).
    agents: Mutex<BTreeMap<String, SocketAddr>>,
}

impl CannedBackend {
    /// Every command answers with [`fixture_output`].
    pub fn new() -> Self {
        Self::with_exec(|_, command| {
            let outcome = fixture_output(command);
            Box::pin(async move { outcome })
        })
    }

    pub fn with_exec(
        exec: impl Fn(&PodInfo, &[String]) -> BoxFuture<ExecOutcome> + Send + Sync + 'static,
    ) -> Self {
        Self {
            exec: Box::new(exec),
            agents: Mutex::new(BTreeMap::new()),
        }
    }

    /// Port-forwards to `pod` reach `addr`.
    pub fn route_agent(&self, pod: &str, addr: SocketAddr) {
        self.agents.lock().unwrap().insert(pod.to_owned(), addr);
    }
}

impl Default for CannedBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend for CannedBackend {
    fn pod_ip(&self, pod: &PodInfo) -> Ipv4Addr {
        let node = if pod.node == NODE_A { 1 } else { 2 };
        let host = match pod.label("netprof.io/role") {
            "client" => 10,
            "nginx" => 20,
            "iperf3" => 30,
            _ => 40,
        };
        Ipv4Addr::new(198, 19, node, host)
    }

    fn exec(
        &self,
        pod: &PodInfo,
        _container: &str,
        command: Vec<String>,
    ) -> BoxFuture<ExecOutcome> {
        (self.exec)(pod, &command)
    }

    fn port_forward(
        &self,
        pod: &PodInfo,
        port: u16,
    ) -> BoxFuture<std::io::Result<tokio::net::TcpStream>> {
        let target = self.agents.lock().unwrap().get(&pod.name).copied();
        Box::pin(async move {
            match target {
                Some(addr) => tokio::net::TcpStream::connect(addr).await,
                None => Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    format!("dial tcp4 127.0.0.1:{port}: connect: connection refused"),
                )),
            }
        })
    }
}

/// The image the fake's agent pods run (the benchmark pods get it too).
pub const AGENT_IMAGE: &str = "registry.example/netprof:fake";

/// The JSON of an agent pod Running on `node` (as the DaemonSet would have made it), in the
/// agents' namespace.
pub fn agent_pod(name: &str, node: &str, node_ip: Ipv4Addr) -> serde_json::Value {
    agent_pod_in(super::AGENT_NAMESPACE, name, node, node_ip)
}

/// ... in `namespace`.
pub fn agent_pod_in(
    namespace: &str,
    name: &str,
    node: &str,
    node_ip: Ipv4Addr,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/name": "netprof-agent", "app.kubernetes.io/part-of": "netprof"}},
        "spec": {"nodeName": node, "hostNetwork": true, "containers": [{"name": "agent", "image": AGENT_IMAGE}]},
        "status": {"phase": "Running", "podIP": node_ip.to_string(), "hostIP": node_ip.to_string(),
            "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

/// One call an agent received: method and path, the body, and whether it carried the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCall {
    pub route: String,
    pub body: String,
    pub authorized: bool,
}

/// A stand-in for `netprof agent --serve`: health, status, features, locate (every pod is
/// found), start (remembers the node name), stop (answers a captured report under that name),
/// one request per connection; with a token, every route but the probes answers 401 without it.
pub struct CannedAgent {
    pub addr: SocketAddr,
    pub calls: Arc<Mutex<Vec<AgentCall>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CannedAgent {
    /// `fail`: a route (e.g. "POST /v1/stop") answered with HTTP 500. Asks for the fake's
    /// token ([`super::AGENT_TOKEN`]).
    pub fn start(fail: Option<&'static str>) -> Self {
        Self::with_token(fail, Some(super::AGENT_TOKEN))
    }

    /// `token`: `None` answers anyone (an agent started without `--token-file`).
    pub fn with_token(fail: Option<&'static str>, token: Option<&'static str>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let calls = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, stopping) = (Arc::clone(&calls), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut attached: Option<String> = None;
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => answer(stream, &log, &mut attached, fail, token),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self {
            addr,
            calls,
            stop,
            thread: Some(thread),
        }
    }

    /// The routes called with the token (an anonymous call, as `k8s doctor` makes one to see
    /// it refused, is left out).
    pub fn routes(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.authorized)
            .map(|c| c.route.clone())
            .collect()
    }

    /// The bodies of the calls to `route`, as JSON.
    pub fn bodies(&self, route: &str) -> Vec<serde_json::Value> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.route == route)
            .map(|c| serde_json::from_str(&c.body).unwrap_or_default())
            .collect()
    }
}

impl Drop for CannedAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a capable kernel reports (`GET /v1/features`).
fn features() -> String {
    use netprof::ebpf::features::{Feature, KernelFeatures, Probe};
    let features = KernelFeatures {
        kernel: "6.18.0-fake".into(),
        cannot_probe: None,
        probes: Feature::ALL
            .iter()
            .map(|f| Probe {
                feature: *f,
                available: *f != Feature::Fentry,
                detail: "canned".into(),
            })
            .collect(),
    };
    serde_json::to_string(&features).unwrap()
}

fn answer(
    mut stream: TcpStream,
    log: &Mutex<Vec<AgentCall>>,
    attached: &mut Option<String>,
    fail: Option<&str>,
    token: Option<&str>,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head, body) = loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
        }
        let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let length = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if bytes.len() >= end + 4 + length {
            break (
                head,
                String::from_utf8_lossy(&bytes[end + 4..end + 4 + length]).into_owned(),
            );
        }
    };
    let route = head
        .lines()
        .next()
        .unwrap_or_default()
        .rsplit_once(' ')
        .map_or("", |(r, _)| r)
        .to_owned();
    let authorized = token.is_none_or(|t| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .any(|(k, v)| {
                k.eq_ignore_ascii_case("authorization") && v.trim() == format!("Bearer {t}")
            })
    });
    log.lock().unwrap().push(AgentCall {
        route: route.clone(),
        body: body.clone(),
        authorized,
    });
    let open = route == "GET /readyz" || route == "GET /healthz";
    let (status, text) = if !authorized && !open {
        (401, r#"{"error":"this agent needs a token"}"#.to_owned())
    } else if fail == Some(route.as_str()) {
        (500, r#"{"error":"canned failure"}"#.to_owned())
    } else {
        match route.as_str() {
            "GET /readyz" => (200, "ready: tc via tcx, clsact; netfilter via netfilter-links; kernel BTF\n".to_owned()),
            "GET /v1/features" => (200, features()),
            "POST /v1/locate" => (200, r#"{"found":[],"missing":[],"named_searched":1,"process_searched":0,"unreadable":[]}"#.to_owned()),
            "GET /v1/status" => match attached {
                Some(_) => (200, r#"{"state":"attached"}"#.to_owned()),
                None => (200, r#"{"state":"idle"}"#.to_owned()),
            },
            "POST /v1/start" if attached.is_some() => {
                (409, r#"{"error":"already attached"}"#.to_owned())
            }
            "POST /v1/start" => {
                let request: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                *attached = Some(request["node"].as_str().unwrap_or("node?").to_owned());
                (200, r#"{"attach_ms":1.0}"#.to_owned())
            }
            "POST /v1/stop" => match attached.take() {
                Some(node) => {
                    let mut report: serde_json::Value = serde_json::from_slice(&read_fixture(
                        "report/run/profile/flannel-hostgw/pod-path-ping-node1.json",
                    ))
                    .unwrap();
                    report["node"] = serde_json::json!(node);
                    (200, report.to_string())
                }
                None => (
                    409,
                    r#"{"error":"no agent is attached: POST /v1/start first"}"#.to_owned(),
                ),
            },
            _ => (404, r#"{"error":"no route"}"#.to_owned()),
        }
    };
    let response = format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}", text.len());
    let _ = stream.write_all(response.as_bytes());
}
