//! `netprof k8s doctor`, and what it and `k8s run` catch on a first cluster, against the
//! in-process fake API server (tests/src/fake_apiserver: the project's one mock, since no real
//! API server can run here): the real binary, canned pods and canned agents. Each case ends in
//! its one clear error, names its fix, creates nothing it should not, and leaves nothing.
//!
//! Cases: a clean cluster end to end; admission refusing with Pod Security's 403; an image the
//! nodes cannot pull; a pod Running but not Ready; a host port taken by another pod; a TCP port
//! dropped on the way and ICMP blocked; a killed run's pods on the nodes; the agents' token
//! Secret missing, and agents that answer without it; SIGHUP; a kubeconfig's proxy-url;
//! dual-stack and IPv6-only pods; other namespaces by flag; a default-deny NetworkPolicy.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netprof_tests::fake_apiserver::canned::{
    agent_pod_in, fixture_output, CannedAgent, CannedBackend, AGENT_IMAGE, NODE_A, NODE_A_IP,
    NODE_B, NODE_B_IP,
};
use netprof_tests::fake_apiserver::harness::{
    error_line, is_benchmark_ping, labelled_nodes, read_result, run_id, with_agents, Harness,
    SMALL_RUN,
};
use netprof_tests::fake_apiserver::{ExecOutcome, FakeConfig, Ipv6Pods, State};

/// A harness with canned agents on both nodes.
fn cluster(config: FakeConfig, backend: CannedBackend) -> (Harness, CannedAgent, CannedAgent) {
    let backend = Arc::new(backend);
    let harness = Harness::start(labelled_nodes(), backend.clone(), config);
    let (a, b) = with_agents(&harness, &backend, None);
    (harness, a, b)
}

/// The benchmark execs (the doctor's checks aside).
fn benchmarks(harness: &Harness) -> Vec<String> {
    harness.state(|s| {
        s.execs()
            .into_iter()
            .filter(|e| !e.contains("timeout 3") && !e.contains("-c 3 "))
            .collect()
    })
}

#[test]
fn doctor_on_a_clean_cluster_passes_every_check_and_leaves_nothing() {
    let (harness, a, b) = cluster(FakeConfig::default(), CannedBackend::new());
    let output = harness.k8s(&["doctor"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(output.status.success(), "{stdout}");
    for row in [
        "ok    nodes ",
        "ok    node fake-a ",
        "ok    agent token ",
        "ok    agent on fake-b ",
        "ok    agent on fake-b refuses anonymous calls ",
        "ok    images ",
        "ok    other pods in the way ",
        "ok    NetworkPolicies ",
        "ok    admission ",
        "ok    host ports ",
        "ok    pod namespaces on fake-a ",
        "ok    host path ICMP ",
        "ok    pod path TCP 5201 ",
    ] {
        assert!(stdout.contains(row), "no row {row:?} in\n{stdout}");
    }
    assert!(stdout.contains(
        "kernel 6.18.0-fake: tc via tcx, clsact; netfilter via netfilter-links; kernel BTF"
    ));
    assert!(
        stdout.contains(&format!("{AGENT_IMAGE} (the agents')")),
        "{stdout}"
    );
    let checks = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(
        stdout.ends_with(&format!("all {checks} checks passed\n")),
        "{stdout}"
    );
    // Admission was asked with dry runs (six), then the six pods were created for real.
    let dry_runs = harness.state(|s| {
        s.requests
            .iter()
            .filter(|r| {
                r.resource == "pods" && r.method == "POST" && r.query.contains("dryRun=All")
            })
            .count()
    });
    assert_eq!(dry_runs, 6);
    assert_eq!(harness.state(|s| s.created.len()), 6);
    assert!(
        benchmarks(&harness).is_empty(),
        "no benchmark: {:?}",
        benchmarks(&harness)
    );
    for agent in [&a, &b] {
        assert!(
            !agent.routes().iter().any(|r| r.contains("start")),
            "never attached"
        );
    }
    harness.assert_nothing_left();
    harness.assert_within_rbac();
}

#[test]
fn pod_security_403_at_admission_is_told_apart_from_rbac() {
    let config = FakeConfig {
        pod_security_baseline: true,
        ..FakeConfig::default()
    };
    let (harness, _a, _b) = cluster(config, CannedBackend::new());
    let line = error_line(&harness.run("calico", &[]));
    assert!(line.contains("FAIL  admission"), "{line}");
    assert!(
        line.contains("3 of 6 pods refused") && line.contains("violates PodSecurity \"baseline:latest\": host namespaces (hostNetwork=true), hostPort (container \"nginx\" uses hostPort 80)"),
        "{line}"
    );
    assert!(
        line.contains("Pod Security Admission refused it (not RBAC)"),
        "{line}"
    );
    assert!(
        line.contains(
            "kubectl label namespace netprof pod-security.kubernetes.io/enforce=privileged"
        ),
        "{line}"
    );
    assert!(
        !line.contains("deploy/rbac.yaml"),
        "not called RBAC: {line}"
    );
    assert!(
        harness.state(|s| s.created.is_empty()),
        "dry runs create nothing"
    );
    harness.assert_nothing_left();
}

#[test]
fn an_image_the_nodes_cannot_pull_is_named_with_its_waiting_reason_and_the_fix() {
    let config = FakeConfig {
        unpullable_images: vec![AGENT_IMAGE.to_owned()],
        ..FakeConfig::default()
    };
    let (harness, _a, _b) = cluster(config, CannedBackend::new());
    let output = harness.run("calico", &["--ready-timeout", "3"]);
    let line = error_line(&output);
    let id = run_id(&String::from_utf8_lossy(&output.stderr));
    assert!(
        line.contains("benchmark pods not ready after 3 s"),
        "{line}"
    );
    assert!(
        line.contains(&format!("netprof-{id}-client: Pending, on fake-a, client ImagePullBackOff: Back-off pulling image \"{AGENT_IMAGE}\"")),
        "{line}"
    );
    assert!(
        !line.contains(&format!("netprof-{id}-nginx:")),
        "nginx's image is pulled: {line}"
    );
    assert!(line.contains("cargo xtask image"), "{line}");
    assert!(benchmarks(&harness).is_empty());
    harness.assert_nothing_left();
}

#[test]
fn a_pod_running_but_not_ready_is_named() {
    let config = FakeConfig {
        running_not_ready: vec!["-iperf3".into()],
        ..FakeConfig::default()
    };
    let (harness, _a, _b) = cluster(config, CannedBackend::new());
    let output = harness.run("calico", &["--ready-timeout", "3"]);
    let line = error_line(&output);
    let id = run_id(&String::from_utf8_lossy(&output.stderr));
    assert!(
        line.contains(&format!(
            "netprof-{id}-iperf3: Running, on fake-b, iperf3 running, not ready"
        )),
        "{line}"
    );
    assert!(!line.contains("-iperf3-host:"), "{line}");
    harness.assert_nothing_left();
}

#[test]
fn a_host_port_held_by_another_pod_keeps_the_twin_pending_with_the_reason() {
    let (harness, _a, _b) = cluster(FakeConfig::default(), CannedBackend::new());
    // An ingress controller holding port 80 of the server node.
    harness.server.add_pod(serde_json::json!({
        "metadata": {"name": "ingress-abc", "labels": {"app": "ingress"}},
        "spec": {"nodeName": NODE_B, "hostNetwork": true, "containers": [{"name": "ingress", "image": "x",
            "ports": [{"containerPort": 80, "hostPort": 80, "protocol": "TCP"}]}]},
        "status": {"phase": "Running"}
    }));
    let output = harness.run("calico", &["--ready-timeout", "3"]);
    let line = error_line(&output);
    let id = run_id(&String::from_utf8_lossy(&output.stderr));
    assert!(
        line.contains(&format!("netprof-{id}-nginx-host: Pending, Unschedulable: 0/3 nodes are available: 1 node(s) didn't have free ports for the requested pod ports")),
        "{line}"
    );
    assert!(
        line.contains("another pod holds port 80 or 5201 on that node"),
        "{line}"
    );
    assert!(!line.contains("-iperf3-host:"), "5201 is free: {line}");
    assert!(
        harness.state(|s| s.pods.contains_key("ingress-abc")),
        "not ours"
    );
    harness.assert_nothing_left();
}

#[test]
fn a_dropped_port_and_blocked_icmp_fail_the_doctor_before_any_benchmark() {
    let backend = CannedBackend::with_exec(|pod, command| {
        let line = command.join(" ");
        let outcome = if line.ends_with("/dev/tcp/198.19.2.30/5201") {
            // `timeout` killed the connect: nothing answered.
            ExecOutcome::Exited {
                stdout: Vec::new(),
                stderr: Vec::new(),
                code: 124,
            }
        } else if command[0] == "ping" && !pod.host_network {
            ExecOutcome::Exited {
                stdout: b"PING 198.19.2.30 (198.19.2.30) 56(84) bytes of data.\n\n--- 198.19.2.30 ping statistics ---\n3 packets transmitted, 0 received, 100% packet loss, time 410ms\n\n".to_vec(),
                stderr: Vec::new(),
                code: 1,
            }
        } else {
            fixture_output(command)
        };
        Box::pin(async move { outcome })
    });
    let (harness, a, _b) = cluster(FakeConfig::default(), backend);
    let line = error_line(&harness.run("flannel-vxlan", &[]));
    assert!(line.contains("k8s doctor found 2 problem(s)"), "{line}");
    assert!(
        line.contains("TCP 198.19.2.30:5201: no answer within 3 s"),
        "{line}"
    );
    assert!(
        line.contains("fix: packets to port 5201 are dropped on the way: allow TCP 5201"),
        "{line}"
    );
    assert!(
        line.contains("no echo reply from 198.19.2.30 (3 pings)"),
        "{line}"
    );
    assert!(line.contains("fix: ICMP is dropped on the way"), "{line}");
    assert!(
        line.contains("ok    host path TCP 5201"),
        "the host path gets through: {line}"
    );
    assert!(
        benchmarks(&harness).is_empty(),
        "stopped before the benchmarks"
    );
    assert!(!a.routes().iter().any(|r| r.contains("start")));
    harness.assert_nothing_left();
}

#[test]
fn a_killed_runs_pods_on_the_nodes_are_refused_with_the_clean_command() {
    let (harness, _a, _b) = cluster(FakeConfig::default(), CannedBackend::new());
    // What activeDeadlineSeconds leaves of a SIGKILLed run: Failed pods, still listed.
    harness.server.add_pod(serde_json::json!({
        "metadata": {"name": "netprof-0badf00d-client", "labels": {"netprof.io/run": "0badf00d", "app.kubernetes.io/name": "netprof-bench"}},
        "spec": {"nodeName": NODE_A, "containers": [{"name": "client", "image": "x"}]},
        "status": {"phase": "Failed", "reason": "DeadlineExceeded"}
    }));
    let line = error_line(&harness.run("calico", &[]));
    assert!(
        line.contains("run 0badf00d left 1 pods (netprof-0badf00d-client Failed on fake-a) on the chosen nodes"),
        "{line}"
    );
    assert!(
        line.contains("delete them with `netprof k8s clean --run 0badf00d`"),
        "{line}"
    );
    assert!(harness.state(|s| s.created.is_empty()));
    let output = harness.k8s(&["clean", "--run", "0badf00d"]);
    assert!(output.status.success());
    let output = harness.run("calico", &[]);
    assert!(output.status.success(), "runs once the leftovers are gone");
    harness.assert_nothing_left();
}

#[test]
fn a_missing_token_secret_is_named_with_the_command_that_creates_it() {
    let config = FakeConfig {
        agent_token: None,
        ..FakeConfig::default()
    };
    let (harness, _a, _b) = cluster(config, CannedBackend::new());
    let line = error_line(&harness.run("calico", &[]));
    assert!(
        line.contains("the agents' token Secret netprof-system/netprof-agent-token does not exist: create it with `kubectl -n netprof-system create secret generic netprof-agent-token --from-literal=token=$(head -c 32 /dev/urandom | base64)`"),
        "{line}"
    );
    assert!(harness.state(|s| s.created.is_empty()));
}

#[test]
fn agents_that_answer_without_a_token_fail_the_doctor() {
    let backend = Arc::new(CannedBackend::new());
    let harness = Harness::start(labelled_nodes(), backend.clone(), FakeConfig::default());
    let mut agents = Vec::new();
    for (pod, node, ip) in [
        ("netprof-agent-a", NODE_A, NODE_A_IP),
        ("netprof-agent-b", NODE_B, NODE_B_IP),
    ] {
        let agent = CannedAgent::with_token(None, None);
        harness
            .server
            .add_pod(agent_pod_in("netprof-system", pod, node, ip));
        backend.route_agent(pod, agent.addr);
        agents.push(agent);
    }
    let line = error_line(&harness.run("calico", &[]));
    assert!(line.contains("k8s doctor found 2 problem(s)"), "{line}");
    assert!(
        line.contains(
            "answered 200 without a token: any hostNetwork pod on the node could attach programs"
        ),
        "{line}"
    );
    assert!(
        line.contains(
            "fix: apply deploy/ (the DaemonSet runs `netprof agent --serve --token-file ...`)"
        ),
        "{line}"
    );
    assert!(harness.state(|s| s.created.is_empty()));
}

#[test]
fn sighup_deletes_the_pods_and_stops_the_agents_as_sigint_does() {
    let backend = CannedBackend::with_exec(|_, command| {
        let outcome = fixture_output(command);
        let hang = is_benchmark_ping(command);
        Box::pin(async move {
            if hang {
                std::future::pending::<()>().await;
            }
            outcome
        })
    });
    let (harness, a, b) = cluster(FakeConfig::default(), backend);
    let out = harness.out();
    let mut args = vec![
        "run",
        "--mode-name",
        "calico",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(SMALL_RUN);
    let mut child = harness
        .command(&args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            eprintln!("  [k8s run] {line}");
            text.push_str(&(line + "\n"));
        }
        text
    });
    let in_ping = harness.server.wait_for(Duration::from_secs(60), |s| {
        s.execs().iter().any(|e| e.contains("ping -n -c 20"))
    });
    assert!(in_ping, "the run never reached its ping");
    std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "k8s run did not exit after SIGHUP"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = reader.join().unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains("hung up (SIGHUP): stopping the benchmarks and deleting the run's pods"),
        "{stderr}"
    );
    for agent in [&a, &b] {
        assert_eq!(
            agent.routes().last().map(String::as_str),
            Some("POST /v1/stop")
        );
    }
    harness.assert_nothing_left();
}

/// An HTTP CONNECT proxy on 127.0.0.1 that counts the tunnels it opened.
struct ConnectProxy {
    addr: std::net::SocketAddr,
    tunnels: Arc<AtomicUsize>,
}

impl ConnectProxy {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let tunnels = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&tunnels);
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let count = Arc::clone(&count);
                std::thread::spawn(move || tunnel(client, &count));
            }
        });
        Self { addr, tunnels }
    }
}

fn tunnel(mut client: TcpStream, count: &AtomicUsize) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let Some(target) = head
        .strip_prefix("CONNECT ")
        .and_then(|r| r.split(' ').next())
    else {
        let _ = client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n");
        return;
    };
    let Ok(server) = TcpStream::connect(target) else {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n");
        return;
    };
    count.fetch_add(1, Ordering::SeqCst);
    let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n");
    let (mut up_from, mut up_to) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut up_from, &mut up_to);
        let _ = up_to.shutdown(std::net::Shutdown::Write);
    });
    let (mut down_from, mut down_to) = (server, client);
    let _ = std::io::copy(&mut down_from, &mut down_to);
    let _ = down_to.shutdown(std::net::Shutdown::Write);
}

#[test]
fn a_kubeconfigs_proxy_url_carries_the_api_calls_exec_and_port_forward() {
    let (harness, _a, _b) = cluster(FakeConfig::default(), CannedBackend::new());
    let proxy = ConnectProxy::start();
    let kubeconfig = harness.dir.0.join("via-proxy");
    std::fs::write(
        &kubeconfig,
        harness
            .server
            .kubeconfig_via(Some(&format!("http://{}", proxy.addr))),
    )
    .unwrap();
    let output = std::process::Command::new(netprof_tests::netprof_bin())
        .args(["k8s", "doctor", "--kubeconfig"])
        .arg(&kubeconfig)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        proxy.tunnels.load(Ordering::SeqCst) > 10,
        "API calls, exec and port-forward went through the proxy: {} tunnels",
        proxy.tunnels.load(Ordering::SeqCst)
    );
    harness.assert_nothing_left();
}

#[test]
fn dual_stack_pods_are_measured_on_ipv4_and_found_by_both_addresses() {
    let config = FakeConfig {
        ipv6: Ipv6Pods::DualStack,
        ..FakeConfig::default()
    };
    let (harness, _a, b) = cluster(config, CannedBackend::new());
    let output = harness.run("calico", &[]);
    assert!(output.status.success());
    let result = read_result(&harness.out(), "calico");
    assert_eq!(
        result.pod_path.unwrap().endpoints.server_ip.to_string(),
        "198.19.2.30"
    );
    let start = b.bodies("POST /v1/start")[0].clone();
    let pod_ips: Vec<&str> = start["pod_ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for ip in [
        "198.19.2.20",
        "fd00:198:19:2::20",
        "198.19.2.30",
        "fd00:198:19:2::30",
    ] {
        assert!(pod_ips.contains(&ip), "{ip} not in {pod_ips:?}");
    }
    harness.assert_nothing_left();
}

#[test]
fn ipv6_only_pods_are_refused_by_name() {
    let config = FakeConfig {
        ipv6: Ipv6Pods::Only,
        ..FakeConfig::default()
    };
    let (harness, _a, _b) = cluster(config, CannedBackend::new());
    let output = harness.run("calico", &[]);
    let line = error_line(&output);
    let id = run_id(&String::from_utf8_lossy(&output.stderr));
    assert!(line.contains(&format!("pod netprof-{id}-")), "{line}");
    assert!(
        line.contains("has only IPv6 addresses (fd00:198:19:"),
        "{line}"
    );
    assert!(
        line.contains("netprof's agents follow IPv4 flows"),
        "{line}"
    );
    harness.assert_nothing_left();
}

#[test]
fn other_namespaces_by_flag() {
    let config = FakeConfig {
        namespaces: vec!["bench-b".into(), "agents-b".into()],
        ..FakeConfig::default()
    };
    let backend = Arc::new(CannedBackend::new());
    let harness = Harness::start(labelled_nodes(), backend.clone(), config);
    let mut agents = Vec::new();
    for (pod, node, ip) in [
        ("netprof-agent-a", NODE_A, NODE_A_IP),
        ("netprof-agent-b", NODE_B, NODE_B_IP),
    ] {
        let agent = CannedAgent::start(None);
        harness
            .server
            .add_pod(agent_pod_in("agents-b", pod, node, ip));
        backend.route_agent(pod, agent.addr);
        agents.push(agent);
    }
    // Without the flags: the default namespaces do not exist here.
    let line = error_line(&harness.run("calico", &[]));
    assert!(
        line.contains("namespace netprof-system is missing")
            || line.contains("namespaces \"netprof-system\" not found"),
        "{line}"
    );
    let output = harness.run(
        "calico",
        &["--namespace", "bench-b", "--agent-namespace", "agents-b"],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let in_bench = harness.state(|s: &State| {
        s.requests
            .iter()
            .filter(|r| r.resource == "pods" && r.method == "POST")
            .all(|r| r.namespace.as_deref() == Some("bench-b"))
    });
    assert!(in_bench, "every pod created in bench-b");
    let line = error_line(&harness.run(
        "calico",
        &["--namespace", "same", "--agent-namespace", "same"],
    ));
    assert!(line.contains("live apart"), "{line}");
    harness.assert_nothing_left();
}

#[test]
fn a_default_deny_policy_is_named_beside_the_ports_it_blocks() {
    let backend = CannedBackend::with_exec(|_, command| {
        let line = command.join(" ");
        // The policy drops pod-to-pod TCP: the connects to the pods' IPs get no answer.
        let outcome = if line.starts_with("timeout") && line.contains("/dev/tcp/198.19.") {
            ExecOutcome::Exited {
                stdout: Vec::new(),
                stderr: Vec::new(),
                code: 124,
            }
        } else {
            fixture_output(command)
        };
        Box::pin(async move { outcome })
    });
    let config = FakeConfig {
        network_policies: vec![serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "default-deny", "namespace": "netprof"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
        })],
        ..FakeConfig::default()
    };
    let (harness, _a, _b) = cluster(config, backend);
    let output = harness.k8s(&["doctor"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    assert!(
        stdout.contains("note  NetworkPolicies")
            && stdout.contains("default-deny (Ingress) may select the benchmark pods"),
        "{stdout}"
    );
    assert!(stdout.contains("FAIL  pod path TCP 80"), "{stdout}");
    assert!(
        stdout.contains("check the NetworkPolicies listed above"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok    host path TCP 80"),
        "host networking is not subject to it: {stdout}"
    );
    harness.assert_nothing_left();
}
