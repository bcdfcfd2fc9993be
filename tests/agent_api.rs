//! The agent's control API for real: the `netprof agent --serve` binary on a loopback port,
//! driven over HTTP/1.1 (a hand-written client on `TcpStream`) while a flannel-hostgw lab
//! carries a real benchmark. The agent watches node 2 (and pod 2), like a DaemonSet pod would.
//!
//! Checked: bad requests get 4xx with a reason and the server keeps answering; a start attaches
//! (a second one is 409); `ping -c 20` pod1 -> pod2 gives exactly 20 hits on `eno1 tc-ingress`
//! in the snapshot and the same number in `/metrics`; after a reset, ab through the NodePort
//! (DNAT + conntrack on node 2) gives segments in the iptables stages; stop returns the final
//! report; `duration_s` stops by itself; SIGTERM detaches, exits 0, and every program the
//! agent loaded is freed.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use netprof::agent::{AgentReport, SCHEMA};
use netprof::bench::{config::BenchConfig, servers, tools};
use netprof::lab::{self, LabNames, LabSpec, Mode, Node};
use netprof_tests::{
    ebpf_skip_reason, netprof_bin, print_skip, program_unloaded, settled, unique_lab_name,
    LabCleanup as Cleanup,
};

const PINGS: u64 = 20;

/// The server process; killed on drop if a failed assertion left it running.
struct Server {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    /// The network namespace the server runs in (None: the test's own).
    netns: Option<String>,
    /// Sent as `Authorization: Bearer` when set (the server was started with it).
    token: Option<String>,
}

impl Server {
    /// Starts `netprof agent --serve` on a port the kernel picks and reads the address back
    /// from its "listening on" line (no race for a "free" port).
    fn start() -> Self {
        Self::start_in(None)
    }

    /// Starts the server in `netns` (`nsenter --net`: only the network namespace changes, as
    /// for a hostNetwork pod), or in the test's own.
    fn start_in(netns: Option<&str>) -> Self {
        Self::start_with(netns, None)
    }

    /// As [`Server::start_in`], with `--token-file` holding `token`.
    fn start_with(netns: Option<&str>, token: Option<(&std::path::Path, &str)>) -> Self {
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(netprof_bin());
                c
            }
            None => Command::new(netprof_bin()),
        };
        command.args(["agent", "--serve", "--listen", "127.0.0.1:0"]);
        if let Some((file, text)) = token {
            std::fs::write(file, format!("{text}\n")).unwrap();
            command.arg("--token-file").arg(file);
        }
        let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let log = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(addr.trim().to_owned());
                }
                eprintln!("  [server] {line}");
                log.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the server printed its address")
            .parse()
            .unwrap();
        Server {
            child,
            addr,
            stderr,
            netns: netns.map(str::to_owned),
            token: token.map(|(_, text)| text.to_owned()),
        }
    }

    /// (status, headers, body) of one request.
    fn call(&self, method: &str, path: &str, body: &str) -> (u16, String, String) {
        self.call_as(self.token.as_deref(), method, path, body)
    }

    /// [`Server::call`] with `token` (or none) instead of the server's.
    fn call_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: &str,
    ) -> (u16, String, String) {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        self.raw(raw.as_bytes())
    }

    /// Sends `bytes` as they are and reads the response to the end.
    fn raw(&self, bytes: &[u8]) -> (u16, String, String) {
        let mut stream = match &self.netns {
            // The socket belongs to the namespace it was created in: the server's loopback.
            Some(ns) => netprof::netns::run_in(ns, || TcpStream::connect(self.addr))
                .unwrap()
                .unwrap(),
            None => TcpStream::connect(self.addr).unwrap(),
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.write_all(bytes).unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no head in {text:?}"));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {head:?}"));
        (status, head.to_owned(), body.to_owned())
    }

    fn json(&self, method: &str, path: &str, body: &str, expected: u16) -> serde_json::Value {
        let (status, _, text) = self.call(method, path, body);
        assert_eq!(status, expected, "{method} {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
    }

    fn report(&self, method: &str, path: &str) -> AgentReport {
        serde_json::from_value(self.json(method, path, "", 200)).unwrap()
    }

    /// The agent's pid (nsenter execs it, so the child's).
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn healthy(&self) {
        let (status, _, body) = self.call("GET", "/healthz", "");
        assert_eq!((status, body.as_str()), (200, "ok\n"));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn ping(netns: &str, target: std::net::Ipv4Addr) {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "ping",
            "-n",
            "-c",
            &PINGS.to_string(),
            "-i",
            "0.01",
            "-W",
            "1",
        ])
        .arg(target.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ping failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Asserts 4xx and that the reason mentions `needle`.
fn refused(server: &Server, (status, _, body): (u16, String, String), expected: u16, needle: &str) {
    assert_eq!(status, expected, "{body}");
    assert!(
        body.contains(needle),
        "{expected}: {body:?} lacks {needle:?}"
    );
    server.healthy();
}

#[test]
fn control_api_profiles_a_real_benchmark() {
    let test = "agent_api control_api_profiles_a_real_benchmark";
    if let Some(reason) =
        ebpf_skip_reason(&["ip", "ping", "ab", "nginx", "bpftool", "iptables-save"])
    {
        print_skip(test, &reason);
        return;
    }
    let names = LabNames::new(&unique_lab_name()).unwrap();
    let _cleanup = Cleanup(names.clone());
    let mode = Mode::FlannelHostgw;
    let built = lab::up(&names, LabSpec { mode, services: 0 }).unwrap();
    let pod_path = built.pod_path().unwrap();
    let server = Server::start();
    println!("server on {}", server.addr);

    // ---- before anything is attached: bad input costs one connection, never the server ----
    server.healthy();
    let (status, _, body) = server.call("GET", "/readyz", "");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("ready: tc via "), "{body}");
    refused(
        &server,
        server.call("POST", "/v1/start", "garbage"),
        400,
        "invalid start request",
    );
    refused(
        &server,
        server.call(
            "POST",
            "/v1/start",
            r#"{"netns":"x","endpoints":["1.2.3"]}"#,
        ),
        400,
        "endpoints[0]",
    );
    refused(
        &server,
        server.call(
            "POST",
            "/v1/start",
            r#"{"netns":"x","endpoints":["198.18.0.1"],"bogus":1}"#,
        ),
        400,
        "unknown field `bogus`",
    );
    refused(
        &server,
        server.raw(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"),
        400,
        "request",
    );
    refused(
        &server,
        server.raw(b"GET /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        411,
        "Content-Length",
    );
    let big = "x".repeat(70 * 1024);
    refused(
        &server,
        server.call("POST", "/v1/start", &big),
        413,
        "limit is 65536",
    );
    refused(
        &server,
        server.call("GET", "/v2/anything", ""),
        404,
        "POST /v1/start",
    );
    let (status, head, _) = server.call("DELETE", "/v1/snapshot", "");
    assert_eq!(status, 405);
    assert!(head.contains("Allow: GET"), "{head}");
    refused(
        &server,
        server.call("GET", "/v1/snapshot", ""),
        409,
        "POST /v1/start first",
    );
    refused(
        &server,
        server.call("POST", "/v1/stop", ""),
        409,
        "POST /v1/start first",
    );
    refused(
        &server,
        server.call(
            "POST",
            "/v1/start",
            r#"{"netns":"netprof-no-such-ns","endpoints":["198.18.0.1"]}"#,
        ),
        422,
        "netprof-no-such-ns",
    );
    // A client that connects and says nothing does not block the others.
    let _silent = TcpStream::connect(server.addr).unwrap();
    server.healthy();

    // ---- start on node 2, as the DaemonSet's agent on the server's node ----
    let endpoints: Vec<String> = lab_addresses(&built)
        .iter()
        .map(ToString::to_string)
        .collect();
    let start = serde_json::json!({
        "netns": names.node(Node::Two),
        "pod_netns": [names.pod(Node::Two)],
        "endpoints": endpoints,
        "uplink": null,
        "node": "node2",
    })
    .to_string();
    let started = server.json("POST", "/v1/start", &start, 200);
    println!("start: {started}");
    assert!(started["attach_ms"].as_f64().unwrap() > 0.0);
    refused(
        &server,
        server.call("POST", "/v1/start", &start),
        409,
        "already attached",
    );
    assert_eq!(
        server.json("GET", "/v1/status", "", 200)["state"],
        "attached"
    );

    // ---- ping pod1 -> pod2: exact hits in the snapshot and in /metrics ----
    ping(&pod_path.client_netns, pod_path.server_ip);
    settled(|| Ok(server.report("GET", "/v1/snapshot"))).unwrap();
    let (status, head, _) = server.call("GET", "/v1/snapshot", "");
    assert_eq!(status, 200);
    assert!(head.contains("X-Netprof-State: attached"), "{head}");
    let report = server.report("GET", "/v1/snapshot");
    assert_eq!(
        (report.schema.as_str(), report.node.as_str()),
        (SCHEMA, "node2")
    );
    assert_eq!(report.hits("eno1 tc-ingress"), PINGS);
    assert_eq!(report.hits("eno1 tc-egress"), PINGS);
    assert_eq!(
        report.hits(&format!("{}:eth0 tc-ingress", names.pod(Node::Two))),
        PINGS
    );
    assert!(!report.segments.is_empty(), "no segments after ping");
    let program_ids: Vec<u32> = report.programs.iter().map(|p| p.id).collect();
    assert!(
        !program_ids.is_empty(),
        "the report lists the agent's programs"
    );
    let (status, head, metrics) = server.call("GET", "/metrics", "");
    assert_eq!(status, 200);
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    for line in [
        "netprof_agent_attached 1",
        "# TYPE netprof_checkpoint_hits_total counter",
        "netprof_checkpoint_hits_total{checkpoint=\"eno1 tc-ingress\"} 20",
        "netprof_checkpoint_hits_total{checkpoint=\"eno1 tc-egress\"} 20",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }
    for family in [
        "netprof_segment_count{stage=",
        "netprof_segment_p50_seconds{stage=",
        "netprof_counter_total{counter=\"admitted\"}",
        "netprof_program_runs_total{program=\"cp_",
    ] {
        assert!(metrics.contains(family), "no {family} in\n{metrics}");
    }

    // ---- reset, then ab through the NodePort (DNAT to the nginx pod on node 2) ----
    let (status, _, _) = server.call("POST", "/v1/reset", "");
    assert_eq!(status, 204);
    assert_eq!(
        server.report("GET", "/v1/snapshot").hits("eno1 tc-ingress"),
        0,
        "reset clears the hits"
    );
    // Under the lab's work directory: removed with the lab, also when the test fails.
    let work = lab::work_dir(&names).join("nginx");
    let nginx = servers::start_nginx(&pod_path.server_netns, &work).unwrap();
    let cfg = BenchConfig {
        ab_requests: 500,
        ab_concurrency: 10,
        ..BenchConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ab = runtime
        .block_on(tools::ab(
            &pod_path.http_client_netns,
            pod_path.http_target,
            &cfg,
        ))
        .unwrap();
    println!(
        "ab: {} requests, {:.0} req/s, {} failed",
        ab.complete_requests, ab.requests_per_second, ab.failed_requests
    );
    assert_eq!((ab.complete_requests, ab.failed_requests), (500, 0));
    let report = settled(|| Ok(server.report("GET", "/v1/snapshot"))).unwrap();
    let stages: Vec<&str> = report.stages().iter().map(|s| s.name()).collect();
    println!("ab stages on node2: {}", stages.join(", "));
    for s in report.stage_segments(netprof::agent::Stage::Other) {
        println!("  other: {} x {} -> {}", s.count, s.from_name, s.to_name);
    }
    assert!(
        report.hits("eno1 tc-ingress") >= 500,
        "every request crosses node 2's uplink"
    );
    for stage in ["conntrack", "nat-dnat", "bridge", "veth"] {
        assert!(
            stages.contains(&stage),
            "no {stage} segment for ab through the NodePort"
        );
    }
    assert!(!report.segments.is_empty());
    assert!(report.counters.admitted > 0);
    drop(nginx);

    // ---- stop: the final report; then nothing attached ----
    let last = server.report("POST", "/v1/stop");
    assert!(last.hits("eno1 tc-ingress") >= 500);
    refused(
        &server,
        server.call("GET", "/v1/snapshot", ""),
        409,
        "POST /v1/start first",
    );
    for id in &program_ids {
        assert!(
            program_unloaded(*id).unwrap(),
            "program {id} still loaded after /v1/stop"
        );
    }
    assert!(server
        .call("GET", "/metrics", "")
        .2
        .ends_with("netprof_agent_attached 0\n"));

    // ---- duration_s: stops by itself, the final report waits for /v1/stop ----
    let timed = start.replacen('{', "{\"duration_s\": 2,", 1);
    server.json("POST", "/v1/start", &timed, 200);
    ping(&pod_path.client_netns, pod_path.server_ip);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.json("GET", "/v1/status", "", 200)["state"] != "stopped" {
        assert!(
            Instant::now() < deadline,
            "duration_s did not stop the agent"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, head, _) = server.call("GET", "/v1/snapshot", "");
    assert!(head.contains("X-Netprof-State: stopped"), "{head}");
    assert_eq!(
        server.report("POST", "/v1/stop").hits("eno1 tc-ingress"),
        PINGS
    );
    assert_eq!(server.json("GET", "/v1/status", "", 200)["state"], "idle");

    // ---- SIGTERM while attached: detach, exit 0, nothing left in the kernel ----
    server.json("POST", "/v1/start", &start, 200);
    let ids: Vec<u32> = server
        .report("GET", "/v1/snapshot")
        .programs
        .iter()
        .map(|p| p.id)
        .collect();
    let mut server = server;
    sigterm(server.child.id());
    let status = wait(&mut server.child, Duration::from_secs(15));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status; stderr:\n{}",
        server.stderr.lock().unwrap()
    );
    for id in &ids {
        assert!(
            program_unloaded(*id).unwrap(),
            "program {id} still loaded after SIGTERM"
        );
    }
    let left = loaded(&ids);
    assert!(left.is_empty(), "still loaded after SIGTERM: {left:?}");
    let log = server.stderr.lock().unwrap().clone();
    assert!(
        log.contains("terminated (SIGTERM)") && log.contains("detached from"),
        "{log}"
    );
    println!("{} programs freed after SIGTERM", ids.len());
}

/// The DaemonSet's way: the agent runs in the node's namespace (hostNetwork; here node 2's,
/// entered with `nsenter --net`), with a token, and the start request names no namespace, so
/// the agent names its own (`netprof.agent-PID` under /run/netns) and removes the name when it
/// stops. The pods come by IP: pod 2's namespace has an `ip netns` name, as containerd leaves
/// them; a second "pod" is a namespace only a process holds, as cri-dockerd leaves them, which
/// the agent names (`netprof.pod-PID-0`) while attached.
#[test]
fn without_netns_the_agent_profiles_the_namespace_it_runs_in() {
    let test = "agent_api without_netns_the_agent_profiles_the_namespace_it_runs_in";
    if let Some(reason) = ebpf_skip_reason(&["ip", "ping", "nsenter", "unshare", "bpftool"]) {
        print_skip(test, &reason);
        return;
    }
    let names = LabNames::new(&unique_lab_name()).unwrap();
    let _cleanup = Cleanup(names.clone());
    let built = lab::up(
        &names,
        LabSpec {
            mode: Mode::FlannelHostgw,
            services: 0,
        },
    )
    .unwrap();
    let pod_path = built.pod_path().unwrap();
    let hidden = ProcessPod::start(HIDDEN_POD_IP);
    let node2 = names.node(Node::Two);
    let token_file = std::env::temp_dir().join(format!("netprof-api-token-{}", std::process::id()));
    let _token_gone = RemoveFile(token_file.clone());
    let server = Server::start_with(
        Some(&node2),
        Some((&token_file, "agent-api-test-token-0123")),
    );
    println!("server on {} in {node2}", server.addr);
    let (status, _, body) = server.call("GET", "/readyz", "");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("ready: tc via "), "{body}");
    for (method, path) in [
        ("GET", "/v1/status"),
        ("POST", "/v1/start"),
        ("GET", "/metrics"),
    ] {
        let (status, _, body) = server.call_as(None, method, path, "{}");
        assert_eq!(status, 401, "{path}: {body}");
        let (status, _, body) =
            server.call_as(Some("agent-api-test-token-0124"), method, path, "{}");
        assert_eq!(status, 401, "{path}: {body}");
    }
    assert_eq!(server.call_as(None, "GET", "/healthz", "").0, 200);

    // Where the pods are, before anything is attached; an IP on no pod of the node is named.
    let located = server.json(
        "POST",
        "/v1/locate",
        &format!(
            r#"{{"pod_ips": ["{}", "{HIDDEN_POD_IP}", "198.19.99.99"]}}"#,
            pod_path.server_ip
        ),
        200,
    );
    println!("locate: {located}");
    assert_eq!(located["found"][0]["netns"]["named"], names.pod(Node::Two));
    assert_eq!(located["found"][0]["interface"], "eth0");
    assert_eq!(located["found"][1]["netns"]["process"], hidden.pid());
    assert_eq!(located["missing"], serde_json::json!(["198.19.99.99"]));
    assert!(
        located["explanation"]
            .as_str()
            .unwrap()
            .contains("198.19.99.99 in no network namespace on this node"),
        "{located}"
    );

    let endpoints: Vec<String> = lab_addresses(&built)
        .iter()
        .map(ToString::to_string)
        .collect();
    refused(
        &server,
        server.call(
            "POST",
            "/v1/start",
            &serde_json::json!({"pod_ips": ["198.19.99.99"], "endpoints": endpoints}).to_string(),
        ),
        422,
        "pod_ips: 198.19.99.99 in no network namespace on this node",
    );
    let body = serde_json::json!({
        "pod_ips": [pod_path.server_ip.to_string(), HIDDEN_POD_IP],
        "endpoints": endpoints,
    })
    .to_string();
    let started = server.json("POST", "/v1/start", &body, 200);
    println!("start: {started}");
    let own = started["netns"].as_str().unwrap().to_owned();
    assert!(own.starts_with("netprof.agent-"), "{own}");
    let own_path = std::path::Path::new("/run/netns").join(&own);
    assert!(own_path.exists());
    assert_eq!(started["pods"][0]["netns"]["named"], names.pod(Node::Two));
    let alias = format!("netprof.pod-{}-0", server.pid());
    let alias_path = std::path::Path::new("/run/netns").join(&alias);
    assert!(
        alias_path.exists(),
        "{} while attached",
        alias_path.display()
    );

    ping(&pod_path.client_netns, pod_path.server_ip);
    let report = settled(|| Ok(server.report("GET", "/v1/snapshot"))).unwrap();
    assert_eq!(report.netns, own);
    assert_eq!(
        report.hits("eno1 tc-ingress"),
        PINGS,
        "node 2's uplink, seen from inside node 2"
    );
    assert_eq!(
        report.hits(&format!("{}:eth0 tc-ingress", names.pod(Node::Two))),
        PINGS,
        "pod 2's eth0, found from its IP"
    );
    assert!(
        report
            .checkpoints
            .iter()
            .any(|c| c.name == format!("{alias}:eth0 tc-ingress")),
        "the process-held pod's eth0 is watched: {:?}",
        report
            .checkpoints
            .iter()
            .map(|c| &c.name)
            .collect::<Vec<_>>()
    );
    let ids: Vec<u32> = report.programs.iter().map(|p| p.id).collect();

    let last = server.report("POST", "/v1/stop");
    assert_eq!(last.hits("eno1 tc-ingress"), PINGS);
    for path in [&own_path, &alias_path] {
        assert!(!path.exists(), "{} left after /v1/stop", path.display());
    }
    for id in &ids {
        assert!(
            program_unloaded(*id).unwrap(),
            "program {id} still loaded after /v1/stop"
        );
    }

    // Started again and then terminated: the names go too.
    server.json("POST", "/v1/start", &body, 200);
    assert!(own_path.exists() && alias_path.exists());
    let mut server = server;
    sigterm(server.child.id());
    let status = wait(&mut server.child, Duration::from_secs(15));
    // nsenter execs netprof: the exit status is the agent's.
    assert_eq!(
        status.code(),
        Some(0),
        "stderr:\n{}",
        server.stderr.lock().unwrap()
    );
    for path in [&own_path, &alias_path] {
        assert!(!path.exists(), "{} left after SIGTERM", path.display());
    }
}

/// The address of the pod only a process holds (a lab-range address no lab uses).
const HIDDEN_POD_IP: &str = "198.19.250.7";

/// A network namespace with no name under /run/netns, held by a `sleep` (as a sandbox process
/// holds a pod's under cri-dockerd), with an `eth0` (a veth whose peer stays inside) carrying
/// `ip`. Killed, and with it the namespace, on drop.
struct ProcessPod(Child);

impl ProcessPod {
    fn start(ip: &str) -> Self {
        let child = Command::new("unshare")
            .args(["--net", "sleep", "600"])
            .spawn()
            .unwrap();
        let pod = ProcessPod(child);
        let netns = format!("--net=/proc/{}/ns/net", pod.pid());
        // unshare execs sleep once the namespace is made: wait for that.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_link(format!("/proc/{}/ns/net", pod.pid())).ok()
            == std::fs::read_link("/proc/self/ns/net").ok()
        {
            assert!(
                Instant::now() < deadline,
                "unshare did not make a namespace"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        for args in [
            vec![
                "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
            ],
            vec!["ip", "addr", "add", &format!("{ip}/32"), "dev", "eth0"],
            vec!["ip", "link", "set", "eth0", "up"],
            vec!["ip", "link", "set", "peer0", "up"],
        ] {
            let out = Command::new("nsenter")
                .arg(&netns)
                .args(&args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        pod
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ProcessPod {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct RemoveFile(std::path::PathBuf);

impl Drop for RemoveFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Our programs (by id, named `cp_*`/`nf_h*`) that the kernel still has loaded.
fn loaded(ids: &[u32]) -> Vec<String> {
    netprof_tests::loaded_netprof_programs()
        .into_iter()
        .filter(|(id, _)| ids.contains(id))
        .map(|(_, name)| name)
        .collect()
}

fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not exit within {limit:?} of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The lab's node and pod addresses: the start requests name them as `endpoints` (every
/// packet of each is followed).
fn lab_addresses(lab: &netprof::lab::Lab) -> Vec<std::net::Ipv4Addr> {
    let mut addresses: Vec<std::net::Ipv4Addr> = Node::BOTH
        .iter()
        .map(|&n| netprof::lab::addressing::node_ip(n))
        .collect();
    if lab.mode().has_pods() {
        addresses.extend(
            Node::BOTH
                .iter()
                .map(|&n| netprof::lab::addressing::pod_ip(lab.mode(), n)),
        );
    }
    addresses
}
