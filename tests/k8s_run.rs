//! `netprof k8s run` and `netprof k8s clean` against the in-process fake API server
//! (tests/src/fake_apiserver): the real binary, a kubeconfig pointing at the fake over plain
//! HTTP, and the real kube protocols (list, watch, create, delete, exec and port-forward over
//! WebSocket).
//!
//! Without root: canned pods (captured tool output) and canned agents check the whole flow and
//! its faults: a full run that `netprof report` reads, pods that never get ready, a failing
//! exec, a 403 from RBAC, an agent that does not answer (before the run, and mid-run), Ctrl-C,
//! `k8s clean`, node choice. With root and a BTF kernel: one run end to end on a namespace lab,
//! where exec runs the real ping, iperf3 and ab in the lab's namespaces and port-forward reaches
//! real `netprof agent --serve` processes in the lab's node namespaces.
//!
//! Every test checks that nothing the run created is left and that it used only the API verbs of
//! `netprof::k8s::rbac::REQUIRED_RULES` (the full runs: exactly those).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netprof::lab::{self, LabNames, LabSpec, Mode};
use netprof_tests::fake_apiserver::canned::{
    agent_pod, fixture_output, CannedAgent, CannedBackend, AGENT_IMAGE, NODE_A, NODE_A_IP, NODE_B,
    NODE_B_IP,
};
use netprof_tests::fake_apiserver::harness::{
    error_line, is_benchmark_ping, labelled_nodes, netprof_report, read_result, required_verbs,
    run_id, with_agents, Harness, TempDir, SMALL_RUN,
};
use netprof_tests::fake_apiserver::lab_backend::{LabAgents, LabBackend};
use netprof_tests::fake_apiserver::{ExecOutcome, FakeConfig, FakeNode, State};
use netprof_tests::{
    ebpf_skip_reason, netprof_bin, print_skip, unique_lab_name, LabCleanup as LabGuard,
};

#[test]
fn run_help_documents_a_complete_run() {
    let output = Command::new(netprof_bin())
        .args(["k8s", "run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "kubectl apply -k deploy/",
        "workern=1",
        "--mode-name",
        "netprof.io/run",
        "hostNetwork",
        "netprof report <out>",
        "netprof k8s clean",
        "--image",
        "--nginx-image",
        "--ready-timeout",
        "--no-profile",
    ] {
        assert!(
            help.contains(needle),
            "`k8s run --help` lacks {needle:?}:\n{help}"
        );
    }
}

#[test]
fn generated_pods_mirror_deploy_bench_pods() {
    use k8s_openapi::api::core::v1::Pod;
    use netprof::k8s::nodes::NodeInfo;
    use netprof::k8s::pods::{self, Images, NetPath, PodSettings};
    let yaml = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/manual/bench-pods.yaml"),
    )
    .unwrap();
    let templates: Vec<Pod> = yaml
        .split("\n---")
        .filter(|doc| doc.contains("kind: Pod"))
        .map(|doc| serde_yaml::from_str(doc).unwrap())
        .collect();
    assert_eq!(templates.len(), 6);
    let node = NodeInfo::from_node(&serde_json::from_value(serde_json::json!({"metadata": {"name": "n", "labels": {"kubernetes.io/hostname": "n"}}})).unwrap());
    let settings = PodSettings {
        run_id: "r1".into(),
        namespace: "netprof".into(),
        images: Images {
            netprof: "ghcr.io/netprof/netprof:0.1.0".into(),
            nginx: "docker.io/library/nginx:1.27-bookworm".into(),
        },
        deadline: Duration::from_secs(600),
    };
    for bench in pods::plan("r1") {
        let mut made = pods::spec(&bench, &node, &settings);
        let suffix = if bench.path == NetPath::Host {
            "-host"
        } else {
            ""
        };
        let template_name = format!("netprof-{}{suffix}", bench.role.name());
        let mut template = templates
            .iter()
            .find(|t| t.metadata.name.as_deref() == Some(&template_name))
            .unwrap()
            .clone();
        // What differs on purpose: name, the run label, the node pinning, the deadline (a
        // run's own length; the templates, run by hand, get an hour).
        let labels = made.metadata.labels.as_mut().unwrap();
        assert_eq!(labels.remove("netprof.io/run").as_deref(), Some("r1"));
        assert_eq!(
            made.metadata.labels, template.metadata.labels,
            "{template_name}: labels"
        );
        let (made_spec, template_spec) =
            (made.spec.as_mut().unwrap(), template.spec.as_mut().unwrap());
        assert_eq!(
            made_spec
                .node_selector
                .take()
                .unwrap()
                .get("kubernetes.io/hostname")
                .map(String::as_str),
            Some("n")
        );
        assert_eq!(template_spec.node_selector.take().unwrap().len(), 1);
        assert_eq!(made_spec.active_deadline_seconds.take(), Some(600));
        assert_eq!(template_spec.active_deadline_seconds.take(), Some(3600));
        assert_eq!(
            made_spec, template_spec,
            "{template_name}: spec differs from deploy/bench-pods.yaml"
        );
    }
}

#[test]
fn a_full_run_writes_what_netprof_report_reads() {
    let backend = Arc::new(CannedBackend::new());
    let harness = Harness::start(labelled_nodes(), backend.clone(), FakeConfig::default());
    let (a, b) = with_agents(&harness, &backend, None);
    let output = harness.run("calico", &[]);
    assert!(output.status.success(), "k8s run failed");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let id = run_id(&stderr);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("calico"),
        "the table on stdout"
    );

    let result = read_result(&harness.out(), "calico");
    assert_eq!(result.mode, Mode::Calico);
    let cluster = result.cluster.as_ref().unwrap();
    assert_eq!(
        (
            cluster.node1.name.as_str(),
            cluster.node2.name.as_str(),
            cluster.run_id.as_str()
        ),
        (NODE_A, NODE_B, id.as_str())
    );
    assert!(cluster.not_measured.is_empty());
    // Host path: node IP to node IP; pod path: the server pods' IPs (iperf3 .30, nginx .20).
    assert_eq!(result.host_path.endpoints.server_ip, NODE_B_IP);
    assert_eq!(
        result.host_path.endpoints.http_target.to_string(),
        "198.18.0.2:80"
    );
    let pod = result.pod_path.as_ref().unwrap();
    assert_eq!(
        (
            pod.endpoints.server_ip.to_string(),
            pod.endpoints.http_target.to_string()
        ),
        ("198.19.2.30".into(), "198.19.2.20:80".into())
    );
    assert_eq!(pod.ab.document_length_bytes, 612);
    assert_eq!(result.profiles.len(), 12, "2 paths x 3 tools x 2 nodes");
    for profile in &result.profiles {
        assert!(
            harness.out().join(&profile.file).is_file(),
            "{} missing",
            profile.file
        );
    }
    assert!(harness.out().join("table.txt").is_file());

    let execs = harness.state(State::execs);
    assert_eq!(execs.len(), 12, "6 doctor checks, 6 benchmarks: {execs:#?}");
    for check in [
        format!("netprof-{id}-client-host: ping -n -c 3 -i 0.2 -W 1 198.18.0.2"),
        format!("netprof-{id}-client-host: timeout 3 bash -c exec 3<>/dev/tcp/198.18.0.2/80"),
        format!("netprof-{id}-client: timeout 3 bash -c exec 3<>/dev/tcp/198.19.2.30/5201"),
    ] {
        assert!(execs.contains(&check), "{check} missing: {execs:#?}");
    }
    assert!(
        execs.contains(&format!(
            "netprof-{id}-client-host: ping -n -c 20 -i 0.01 -W 1 198.18.0.2"
        )),
        "{execs:#?}"
    );
    assert!(
        execs.contains(&format!(
            "netprof-{id}-client: iperf3 -c 198.19.2.30 -p 5201 -t 1 -J"
        )),
        "{execs:#?}"
    );
    assert!(
        execs.contains(&format!(
            "netprof-{id}-client: ab -q -n 200 -c 4 -s 10 http://198.19.2.20:80/"
        )),
        "{execs:#?}"
    );

    // Each agent: checked by the doctor (ready, idle, its kernel, refusing anonymous calls,
    // finding its node's pods), then started and stopped around each of the 6 steps, always
    // with the token.
    for (agent, node, pods) in [
        (&a, "node1", vec!["198.19.1.10"]),
        (&b, "node2", vec!["198.19.2.20", "198.19.2.30"]),
    ] {
        let routes = agent.routes();
        assert_eq!(
            &routes[..4],
            [
                "GET /readyz",
                "GET /v1/status",
                "GET /v1/features",
                "POST /v1/locate"
            ]
        );
        assert_eq!(routes[4..].len(), 12, "{routes:?}");
        for pair in routes[4..].chunks(2) {
            assert_eq!(pair, ["POST /v1/start", "POST /v1/stop"]);
        }
        let anonymous: Vec<String> = agent
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| !c.authorized)
            .map(|c| c.route.clone())
            .collect();
        assert_eq!(anonymous, ["GET /v1/status"], "the doctor's anonymous try");
        let mut located = agent.bodies("POST /v1/locate")[0]["pod_ips"].clone();
        located
            .as_array_mut()
            .unwrap()
            .sort_by_key(|v| v.to_string());
        assert_eq!(located, serde_json::json!(pods));
        let start = agent.bodies("POST /v1/start")[0].clone();
        assert_eq!(start["node"], node);
        let mut pod_ips = start["pod_ips"].clone();
        pod_ips
            .as_array_mut()
            .unwrap()
            .sort_by_key(|v| v.to_string());
        assert_eq!(
            pod_ips,
            serde_json::json!(pods),
            "each agent watches its node's pods"
        );
        let mut flows: Vec<String> = agent
            .bodies("POST /v1/start")
            .iter()
            .map(|start| {
                assert!(start.get("endpoints").is_none(), "flows, not addresses");
                let step: Vec<&str> = start["flows"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f.as_str().unwrap())
                    .collect();
                step.join(" ")
            })
            .collect();
        flows.sort();
        assert_eq!(
            flows,
            [
                // The host path's source is the node's choice: any peer.
                "icmp:*-198.18.0.2",
                "icmp:198.19.1.10-198.19.2.30",
                "tcp:*-198.18.0.2:5201",
                "tcp:*-198.18.0.2:80",
                "tcp:198.19.1.10-198.19.2.20:80",
                "tcp:198.19.1.10-198.19.2.30:5201",
            ],
            "each step follows its own flow"
        );
        assert!(
            start["duration_s"].as_f64().unwrap() > 0.0,
            "a safety-net duration"
        );
        assert!(
            start.get("duty_percent").is_none(),
            "attached throughout unless --duty"
        );
    }

    assert_eq!(harness.state(|s| s.created.len()), 6);
    assert_eq!(
        cluster.images[0], AGENT_IMAGE,
        "the benchmark pods run the agents' image"
    );
    harness.assert_nothing_left();
    assert_eq!(
        harness.assert_within_rbac(),
        required_verbs(),
        "a full run uses exactly REQUIRED_RULES"
    );
    let report = netprof_report(&harness.out(), "table");
    assert!(report.contains("calico"), "{report}");
}

#[test]
fn pods_that_never_get_ready_time_out_by_name_and_are_deleted() {
    let config = FakeConfig {
        never_ready: vec!["-nginx".into()],
        ..Default::default()
    };
    let harness = Harness::start(labelled_nodes(), Arc::new(CannedBackend::new()), config);
    let started = Instant::now();
    let output = harness.run("flannel-vxlan", &["--ready-timeout", "2", "--no-profile"]);
    let line = error_line(&output);
    let id = run_id(&String::from_utf8_lossy(&output.stderr));
    assert!(
        line.contains("benchmark pods not ready after 2 s (--ready-timeout)"),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "netprof-{id}-nginx: Pending, on fake-b, nginx ContainerCreating"
        )),
        "{line}"
    );
    assert!(line.contains("ConfigMap netprof-bench-nginx"), "{line}");
    assert!(
        !line.contains("nginx-host:"),
        "only the pod that is not ready is named: {line}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(harness.state(|s| s.created.len()), 6);
    harness.assert_nothing_left();
    harness.assert_within_rbac();
    assert!(
        !harness.out().join("flannel-vxlan.json").exists(),
        "no result from a failed run"
    );
}

#[test]
fn a_failing_exec_names_the_pod_the_command_and_stderr() {
    // The benchmark's ping (20 echoes), not the doctor's three.
    let backend = CannedBackend::with_exec(|_, command| {
        let outcome = if is_benchmark_ping(command) {
            ExecOutcome::Exited {
                stdout: Vec::new(),
                stderr: b"ping: connect: Network is unreachable\n".to_vec(),
                code: 2,
            }
        } else {
            fixture_output(command)
        };
        Box::pin(async move { outcome })
    });
    let harness = Harness::start(labelled_nodes(), Arc::new(backend), FakeConfig::default());
    let output = harness.run("flannel-hostgw", &["--no-profile"]);
    let line = error_line(&output);
    let id = run_id(&String::from_utf8_lossy(&output.stderr));
    let expected = format!(
        "`ping -n -c 20 -i 0.01 -W 1 198.18.0.2` in pod netprof/netprof-{id}-client-host: exited with 2: ping: connect: Network is unreachable"
    );
    assert!(line.contains(&expected), "{line}");
    harness.assert_nothing_left();
    harness.assert_within_rbac();
}

#[test]
fn a_tool_missing_from_the_image_is_named() {
    let backend = CannedBackend::with_exec(|_, command| {
        let outcome = if command[0] == "iperf3" {
            fixture_output(&["iperf3-missing".to_owned()])
        } else {
            fixture_output(command)
        };
        Box::pin(async move { outcome })
    });
    let harness = Harness::start(labelled_nodes(), Arc::new(backend), FakeConfig::default());
    let line = error_line(&harness.run("flannel-hostgw", &["--no-profile"]));
    assert!(
        line.contains("`iperf3 -c 198.18.0.2 -p 5201 -t 1 -J`")
            && line.contains("could not run: exec: \"iperf3-missing\""),
        "{line}"
    );
    harness.assert_nothing_left();
}

#[test]
fn rbac_403_on_pod_create_names_the_verb_and_resource() {
    let config = FakeConfig {
        forbidden: vec![("create".into(), "pods".into())],
        ..Default::default()
    };
    let harness = Harness::start(labelled_nodes(), Arc::new(CannedBackend::new()), config);
    let line = error_line(&harness.run("calico", &["--no-profile"]));
    // The doctor's dry run meets the refusal before anything is created.
    assert!(line.contains("FAIL  admission"), "{line}");
    assert!(
        line.contains("6 of 6 pods refused; first: cannot create pods netprof-"),
        "{line}"
    );
    assert!(
        line.contains("is forbidden: User \"system:serviceaccount:netprof-system:netprof-orchestrator\" cannot create resource \"pods\""),
        "{line}"
    );
    assert!(
        line.contains("(HTTP 403 Forbidden); RBAC: netprof needs `create` on `pods` in netprof"),
        "{line}"
    );
    assert!(harness.state(|s| s.created.is_empty()));
    harness.assert_nothing_left();
}

#[test]
fn an_agent_that_does_not_answer_stops_the_run_before_anything_is_created() {
    let backend = Arc::new(CannedBackend::new());
    let harness = Harness::start(labelled_nodes(), backend.clone(), FakeConfig::default());
    let a = CannedAgent::start(None);
    harness
        .server
        .add_pod(agent_pod("netprof-agent-a", NODE_A, NODE_A_IP));
    backend.route_agent("netprof-agent-a", a.addr);

    // No agent pod on fake-b at all.
    let line = error_line(&harness.run("calico", &[]));
    assert!(
        line.contains("FAIL  agents ")
            && line.contains(
                "no netprof agent pod on node fake-b (agent pods in namespace netprof-system found on: fake-a (Running))"
            ),
        "{line}"
    );
    assert!(line.contains("--no-profile"), "{line}");

    // An agent pod whose port-forward is refused (nothing listens on 9476).
    harness
        .server
        .add_pod(agent_pod("netprof-agent-b", NODE_B, NODE_B_IP));
    let line = error_line(&harness.run("calico", &[]));
    assert!(
        line.contains("k8s doctor found 1 problem(s)")
            && line.contains("FAIL  agent on fake-b ")
            && line.contains("netprof-agent-b did not answer: /readyz: "),
        "{line}"
    );
    // The error channel's message, unless the stream closed before kube read it (a race kube has
    // with any server that closes right after the error, the kubelet too).
    let refused = "the port-forward reported: error forwarding port 9476 to pod netprof-agent-b";
    let closed = "the port-forward closed without any response (is anything listening on that port of the pod?)";
    assert!(
        (line.contains(refused) && line.contains("connection refused")) || line.contains(closed),
        "{line}"
    );
    assert!(
        line.contains("fix: `kubectl -n netprof-system logs netprof-agent-b`"),
        "{line}"
    );
    assert!(
        harness.state(|s| s.created.is_empty()),
        "nothing created before the agents answered"
    );
    harness.assert_within_rbac();
}

#[test]
fn an_agent_failing_mid_run_keeps_the_benchmarks_without_profiles() {
    let backend = Arc::new(CannedBackend::new());
    let harness = Harness::start(labelled_nodes(), backend.clone(), FakeConfig::default());
    let (a, b) = with_agents(&harness, &backend, Some("POST /v1/stop"));
    let output = harness.run("flannel-vxlan", &[]);
    assert!(output.status.success(), "the benchmarks go on");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = "not measured: agent on fake-b (node2) did not answer at the host path ping step: /v1/stop answered HTTP 500";
    assert!(stderr.contains(expected), "{stderr}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(expected),
        "the reason is repeated under the table"
    );
    let result = read_result(&harness.out(), "flannel-vxlan");
    assert!(
        result.profiles.is_empty(),
        "no profiles listed: {:?}",
        result.profiles
    );
    assert!(result.cluster.unwrap().not_measured[0].starts_with(expected));
    assert!(result.pod_path.is_some());
    // Both agents were started once and stopped; none was started again.
    for agent in [&a, &b] {
        assert_eq!(
            agent.routes(),
            [
                "GET /readyz",
                "GET /v1/status",
                "GET /v1/features",
                "POST /v1/locate",
                "POST /v1/start",
                "POST /v1/stop"
            ]
        );
    }
    harness.assert_nothing_left();
    let report = netprof_report(&harness.out(), "table");
    assert!(report.contains("flannel-vxlan"), "{report}");
}

#[test]
fn ctrl_c_stops_the_agents_and_deletes_every_pod() {
    // ping never ends: the run is interrupted in its first step, agents attached.
    let backend = Arc::new(CannedBackend::with_exec(|_, command| {
        let outcome = fixture_output(command);
        let hang = is_benchmark_ping(command);
        Box::pin(async move {
            if hang {
                std::future::pending::<()>().await;
            }
            outcome
        })
    }));
    let harness = Harness::start(labelled_nodes(), backend.clone(), FakeConfig::default());
    let (a, b) = with_agents(&harness, &backend, None);
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
    let stderr = Arc::new(Mutex::new(String::new()));
    let (pipe, log) = (child.stderr.take().unwrap(), Arc::clone(&stderr));
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            eprintln!("  [k8s run] {line}");
            log.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    let in_ping = harness.server.wait_for(Duration::from_secs(60), |s| {
        s.execs().iter().any(|e| e.contains("ping -n -c 20"))
    });
    assert!(in_ping, "the run never reached ping");
    assert!(
        a.routes().contains(&"POST /v1/start".to_owned())
            && b.routes().contains(&"POST /v1/start".to_owned())
    );
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "k8s run did not exit after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    reader.join().unwrap();
    let stderr = stderr.lock().unwrap().clone();
    assert!(!status.success());
    assert!(
        stderr
            .contains("interrupted (SIGINT): stopping the benchmarks and deleting the run's pods"),
        "{stderr}"
    );
    assert!(
        stderr.contains("netprof: error: interrupted; the run's pods were deleted"),
        "{stderr}"
    );
    for agent in [&a, &b] {
        assert_eq!(
            agent.routes().last().map(String::as_str),
            Some("POST /v1/stop"),
            "the attached agent was stopped"
        );
    }
    assert_eq!(harness.state(|s| s.created.len()), 6);
    harness.assert_nothing_left();
    harness.assert_within_rbac();
}

#[test]
fn deploy_template_pods_on_the_server_node_are_named_before_anything_is_created() {
    let harness = Harness::start(
        labelled_nodes(),
        Arc::new(CannedBackend::new()),
        FakeConfig::default(),
    );
    // As `kubectl apply -k deploy/` leaves them once the nodes are labelled.
    harness.server.add_pod(serde_json::json!({
        "metadata": {"name": "netprof-nginx-host", "labels": {"app.kubernetes.io/name": "netprof-bench", "netprof.io/path": "host"}},
        "spec": {"nodeName": NODE_B, "hostNetwork": true, "containers": [{"name": "nginx", "image": "x"}]},
        "status": {"phase": "Running"}
    }));
    let line = error_line(&harness.run("calico", &["--no-profile"]));
    assert!(line.contains("FAIL  other pods in the way  pods not of this run hold the host ports the run's hostNetwork servers need on the server node fake-b (netprof-nginx-host)"), "{line}");
    assert!(
        line.contains("kubectl -n netprof delete pod netprof-nginx-host"),
        "{line}"
    );
    assert!(harness.state(|s| s.created.is_empty()));
    assert!(
        harness.state(|s| s.pods.contains_key("netprof-nginx-host")),
        "not ours to delete"
    );
}

#[test]
fn k8s_clean_deletes_only_run_labelled_pods() {
    let harness = Harness::start(
        labelled_nodes(),
        Arc::new(CannedBackend::new()),
        FakeConfig::default(),
    );
    let leftover = |name: &str, run: &str| {
        serde_json::json!({"metadata": {"name": name, "labels": {"netprof.io/run": run, "app.kubernetes.io/part-of": "netprof"}},
            "spec": {"nodeName": NODE_A, "containers": [{"name": "client", "image": "x"}]}, "status": {"phase": "Running"}})
    };
    harness
        .server
        .add_pod(leftover("netprof-a1b2c3d4-client", "a1b2c3d4"));
    harness
        .server
        .add_pod(leftover("netprof-0badf00d-nginx-host", "0badf00d"));
    harness
        .server
        .add_pod(agent_pod("netprof-agent-a", NODE_A, NODE_A_IP));

    let output = harness.k8s(&["clean", "--run", "0badf00d"]);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout,
        "deleted pod netprof/netprof-0badf00d-nginx-host (run 0badf00d)\n1 pods deleted\n"
    );

    // Without --run or --all nothing is deleted: other users' runs are not ours to take.
    let output = harness.k8s(&["clean"]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--run <RUN>"),
        "clap names the missing flag"
    );
    let output = harness.k8s(&["clean", "--run", "12345678"]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "nothing to clean: no pod labelled netprof.io/run=12345678 in namespace netprof\nruns with pods left: a1b2c3d4\n",
        "a mistyped id lists the runs there are"
    );
    let output = harness.k8s(&["clean", "--all"]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "deleted pod netprof/netprof-a1b2c3d4-client (run a1b2c3d4)\n1 pods deleted\n"
    );
    let output = harness.k8s(&["clean", "--all"]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "nothing to clean: no pod labelled netprof.io/run in namespace netprof\n"
    );
    assert_eq!(
        harness.state(|s| s.pods.keys().cloned().collect::<Vec<_>>()),
        ["netprof-agent-a"],
        "the agent stays"
    );
    harness.assert_nothing_left();
    harness.assert_within_rbac();

    let line = error_line(&harness.k8s(&["clean", "--run", "Bad Id"]));
    assert!(line.contains("--run \"Bad Id\" is not a run id"), "{line}");
}

#[test]
fn nodes_are_chosen_by_flag_or_labels_and_a_failure_lists_them() {
    let unlabelled = vec![
        FakeNode::new(NODE_A, NODE_A_IP, &[]),
        FakeNode::new(NODE_B, NODE_B_IP, &[]),
    ];
    let harness = Harness::start(
        unlabelled,
        Arc::new(CannedBackend::new()),
        FakeConfig::default(),
    );
    let line = error_line(&harness.run("calico", &["--no-profile"]));
    assert!(
        line.contains(
            "no nodes chosen: give --nodes CLIENT,SERVER, or label two nodes as the study did"
        ),
        "{line}"
    );
    assert!(
        line.contains("nodes found: fake-a (Ready, 198.18.0.1), fake-b (Ready, 198.18.0.2)"),
        "{line}"
    );
    let line = error_line(&harness.run("calico", &["--no-profile", "--nodes", "fake-a,nope"]));
    assert!(
        line.contains("node nope (from --nodes) does not exist; nodes: fake-a (Ready, 198.18.0.1)"),
        "{line}"
    );
    assert!(harness.state(|s| s.created.is_empty()));
    // --nodes reversed: fake-b runs the client.
    let output = harness.run("calico", &["--no-profile", "--nodes", "fake-b,fake-a"]);
    assert!(output.status.success());
    let result = read_result(&harness.out(), "calico");
    assert_eq!(result.cluster.unwrap().node1.name, NODE_B);
    assert_eq!(result.host_path.endpoints.server_ip, NODE_A_IP);
    harness.assert_nothing_left();
}

#[test]
fn the_context_flag_picks_the_cluster_and_an_unreachable_one_is_named() {
    let harness = Harness::start(
        labelled_nodes(),
        Arc::new(CannedBackend::new()),
        FakeConfig::default(),
    );
    // Current context: a server nobody listens on; context `fake`: the fake server.
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
         - name: dead\n  cluster:\n    server: http://127.0.0.1:1\nusers:\n- name: u\n  user:\n    token: t\n\
         contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: u\n\
         - name: dead\n  context:\n    cluster: dead\n    user: u\ncurrent-context: dead\n",
        harness.server.addr
    );
    let path = harness.dir.0.join("two-contexts");
    std::fs::write(&path, &kubeconfig).unwrap();
    let clean = |context: Option<&str>| {
        let mut command = Command::new(netprof_bin());
        command
            .args(["k8s", "clean", "--all"])
            .env("KUBECONFIG", &path);
        if let Some(context) = context {
            command.args(["--context", context]);
        }
        command.output().unwrap()
    };
    let output = clean(Some("fake"));
    assert!(
        output.status.success(),
        "{}\n{kubeconfig}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("nothing to clean"));
    let line = error_line(&clean(None));
    assert!(
        line.contains("cannot list pods in namespace netprof")
            && line.contains("is the API server reachable?"),
        "{line}"
    );
}

#[test]
fn end_to_end_on_a_lab_with_real_tools_and_agents() {
    let test = "k8s_run end_to_end_on_a_lab_with_real_tools_and_agents";
    if let Some(reason) = ebpf_skip_reason(&["ping", "iperf3", "ab", "nginx", "ss", "nsenter"])
        .or_else(netprof::api::not_ready)
    {
        print_skip(test, &reason);
        return;
    }
    let names = LabNames::new(&unique_lab_name()).unwrap();
    let _guard = LabGuard(names.clone());
    let mode = Mode::FlannelHostgw;
    let lab = lab::up(&names, LabSpec { mode, services: 0 }).unwrap();
    let work = TempDir::new("lab");
    let (backend, nodes) = LabBackend::new(lab.clone(), work.0.clone());
    let harness = Harness::start(nodes, Arc::new(backend), FakeConfig::default());
    let agents = LabAgents::start(&netprof_bin(), &lab);
    for (i, node) in ["node1", "node2"].iter().enumerate() {
        let ip = netprof::lab::addressing::node_ip(netprof::lab::Node::BOTH[i]);
        harness.server.add_pod(agent_pod(
            &format!("netprof-agent-{node}"),
            &format!("{}-{node}", names.lab()),
            ip,
        ));
    }

    // KUBECONFIG instead of --kubeconfig: kube's own configuration lookup.
    let out = harness.out();
    let started = Instant::now();
    let output = Command::new(netprof_bin())
        .args([
            "k8s",
            "run",
            "--mode-name",
            mode.name(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args([
            "--ping-count",
            "50",
            "--iperf3-seconds",
            "1",
            "--ab-requests",
            "500",
            "--ab-concurrency",
            "5",
        ])
        .env("KUBECONFIG", harness.kubeconfig())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!(
        "--- netprof k8s run ({}, {:.1} s)\n{stderr}",
        output.status,
        started.elapsed().as_secs_f64()
    );
    println!("{}", String::from_utf8_lossy(&output.stdout));
    assert!(output.status.success(), "k8s run on the lab failed");

    let result = read_result(&out, mode.name());
    for (path, server) in [
        (&result.host_path, "198.18.0.2"),
        (result.pod_path.as_ref().unwrap(), "198.19.2.2"),
    ] {
        assert_eq!(path.endpoints.server_ip.to_string(), server);
        assert_eq!(
            (path.ping.transmitted, path.ping.received),
            (50, 50),
            "every echo answered"
        );
        assert!(
            path.iperf3.receiver_bps > 1e6,
            "iperf3 moved data: {}",
            path.iperf3.receiver_bps
        );
        assert_eq!(
            (
                path.ab.complete_requests,
                path.ab.failed_requests,
                path.ab.document_length_bytes
            ),
            (500, 0, 612)
        );
    }
    assert_eq!(result.profiles.len(), 12);
    for profile in &result.profiles {
        let report: netprof::agent::AgentReport =
            serde_json::from_str(&std::fs::read_to_string(out.join(&profile.file)).unwrap())
                .unwrap();
        assert_eq!(report.node, profile.node.name());
        if profile.tool == netprof::rundir::Tool::Ping {
            // 50 echo requests and 50 replies cross each node's uplink, once each.
            assert_eq!(
                report.hits("eno1 tc-ingress") + report.hits("eno1 tc-egress"),
                100,
                "{}: {:?}",
                profile.file,
                report
                    .checkpoints
                    .iter()
                    .map(|c| (&c.name, c.hits))
                    .collect::<Vec<_>>()
            );
        }
    }
    let report = netprof_report(&out, "json");
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(
        report["run"]["profiled"],
        serde_json::json!(["flannel-hostgw"])
    );
    assert_eq!(
        report["latency"][0]["mode"], "flannel-hostgw",
        "the pod path's extra latency is attributed"
    );
    println!("{}", netprof_report(&out, "table"));

    harness.assert_nothing_left();
    assert_eq!(harness.assert_within_rbac(), required_verbs());
    // The agents are idle again (every start was stopped) and still serving.
    for log in &agents.logs {
        let log = log.lock().unwrap();
        assert_eq!(log.matches("attached to").count(), 6, "{log}");
        assert_eq!(log.matches("detached from").count(), 6, "{log}");
    }
    drop(agents);
}

/// `--duty` reaches every agent's start request (the agents duty-cycle themselves).
#[test]
fn duty_cycling_is_asked_of_the_agents() {
    let backend = Arc::new(CannedBackend::new());
    let harness = Harness::start(labelled_nodes(), backend.clone(), FakeConfig::default());
    let (a, b) = with_agents(&harness, &backend, None);
    let output = harness.run(
        "flannel-vxlan",
        &["--duty", "10", "--duty-period-ms", "2000"],
    );
    assert!(
        output.status.success(),
        "k8s run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    for agent in [&a, &b] {
        let calls = agent.calls.lock().unwrap();
        let starts: Vec<serde_json::Value> = calls
            .iter()
            .filter(|c| c.route == "POST /v1/start")
            .map(|c| serde_json::from_str(&c.body).unwrap())
            .collect();
        assert_eq!(starts.len(), 6);
        for start in starts {
            assert_eq!(
                (
                    start["duty_percent"].as_u64(),
                    start["duty_period_ms"].as_u64()
                ),
                (Some(10), Some(2000)),
                "{start}"
            );
        }
    }
    harness.assert_nothing_left();
}
