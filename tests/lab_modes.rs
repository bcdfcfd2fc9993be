//! The lab for every mode, for real: pod-to-pod ping, HTTP through the NodePort (or straight to
//! the pod in l2) with the real nginx and ab, and nothing left behind after `down`.

use netprof::bench::{servers, tools, BenchConfig};
use netprof::cmd::Cmd;
use netprof::lab::{self, LabNames, LabSpec, Mode};
use netprof_tests::{
    root_iptables, skip_unless_kernel_ready, unique_lab_name, LabCleanup as Cleanup,
};

fn tiny_bench() -> BenchConfig {
    BenchConfig {
        ping_count: 5,
        ping_interval_s: 0.01,
        iperf3_seconds: 1,
        ab_requests: 200,
        ab_concurrency: 10,
        services: 0,
        ping_blocks: 1,
        ..BenchConfig::default()
    }
}

fn check_mode(mode: Mode, services: u32) {
    let names = LabNames::new(&unique_lab_name()).unwrap();
    let _cleanup = Cleanup(names.clone());
    let rules_before = root_iptables();
    let built = lab::up(&names, LabSpec { mode, services }).unwrap();
    let cfg = tiny_bench();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let path = built.pod_path().unwrap_or_else(|| built.host_path());
    assert_eq!(
        path.client_netns.ends_with("-pod1"),
        mode.has_pods(),
        "{mode}: measured path"
    );
    let ping = runtime
        .block_on(tools::ping(&path.client_netns, path.server_ip, &cfg))
        .unwrap();
    assert_eq!(
        (ping.transmitted, ping.received),
        (5, 5),
        "{mode}: pod-to-pod ping"
    );

    // Where bench keeps nginx's files: `down` removes them.
    let work = lab::work_dir(&names).join("nginx");
    let nginx = servers::start_nginx(&path.server_netns, &work).unwrap();
    let ab = runtime
        .block_on(tools::ab(&path.http_client_netns, path.http_target, &cfg))
        .unwrap();
    assert_eq!(
        ab.complete_requests, 200,
        "{mode}: HTTP via {}",
        path.http_target
    );
    assert_eq!(ab.failed_requests, 0);
    assert_eq!(ab.document_length_bytes, servers::PAGE_BYTES as u64);
    drop(nginx);

    // The NodePort really goes through kube-proxy's DNAT: conntrack saw the translated flow.
    if mode.has_kube_proxy() {
        assert_eq!(path.http_target.port(), 30001);
        let nat = Cmd::new("iptables")
            .args(["-t", "nat", "-L", "KUBE-NODEPORTS", "-v", "-n", "-x"])
            .in_netns(&names.node(lab::Node::Two))
            .run()
            .unwrap();
        let packets: u64 = nat
            .lines()
            .find(|l| l.contains("dpt:30001"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap();
        // The nat table sees each connection's first packet: ab's 200 requests, one
        // connection each (no keep-alive), and a few more under load (seen: 203, 208).
        assert!(
            packets >= 200,
            "{mode}: NodePort rule matched {packets} connections:\n{nat}"
        );
    } else {
        // No kube-proxy: no iptables tables were ever created in the node namespaces.
        let tables = Cmd::new("iptables-save")
            .in_netns(&names.node(lab::Node::Two))
            .run()
            .unwrap();
        assert!(
            !tables.contains("KUBE-"),
            "{mode}: unexpected rules:\n{tables}"
        );
    }

    let report = lab::down(&names).unwrap();
    assert!(!report.namespaces.is_empty());
    let left: Vec<String> = lab::list_namespaces()
        .unwrap()
        .into_iter()
        .filter(|ns| names.owns(ns))
        .collect();
    assert!(left.is_empty(), "{mode}: namespaces left: {left:?}");
    assert_eq!(
        root_iptables(),
        rules_before,
        "{mode}: the root namespace's rules changed"
    );
    let state = std::path::Path::new(lab::STATE_DIR);
    for left in [
        lab::work_dir(&names),
        state.join(format!("{}.json", names.lab())),
    ] {
        assert!(!left.exists(), "{mode}: {} left behind", left.display());
    }
}

#[test]
fn host_mode() {
    if skip_unless_kernel_ready("host_mode") {
        return;
    }
    check_mode(Mode::Host, 0);
}

#[test]
fn flannel_hostgw_mode() {
    if skip_unless_kernel_ready("flannel_hostgw_mode") {
        return;
    }
    check_mode(Mode::FlannelHostgw, 0);
}

#[test]
fn flannel_vxlan_mode_with_extra_services() {
    if skip_unless_kernel_ready("flannel_vxlan_mode_with_extra_services") {
        return;
    }
    check_mode(Mode::FlannelVxlan, 300);
}

#[test]
fn calico_mode() {
    if skip_unless_kernel_ready("calico_mode") {
        return;
    }
    check_mode(Mode::Calico, 0);
}

#[test]
fn l2_mode() {
    if skip_unless_kernel_ready("l2_mode") {
        return;
    }
    check_mode(Mode::L2, 0);
}

#[test]
fn up_is_idempotent_and_removes_leftovers_of_a_crashed_run() {
    if skip_unless_kernel_ready("up_is_idempotent") {
        return;
    }
    let names = LabNames::new(&unique_lab_name()).unwrap();
    let _cleanup = Cleanup(names.clone());
    // A crashed run's half-built lab: one namespace with a stray link and a process inside.
    let node1 = names.node(lab::Node::One);
    Cmd::new("ip").args(["netns", "add", &node1]).run().unwrap();
    Cmd::new("ip")
        .args([
            "-n", &node1, "link", "add", "eno1", "type", "veth", "peer", "name", "stray",
        ])
        .run()
        .unwrap();
    let mut sleeper = Cmd::new("sleep")
        .arg("300")
        .in_netns(&node1)
        .to_std()
        .spawn()
        .unwrap();
    lab::up(
        &names,
        LabSpec {
            mode: Mode::Calico,
            services: 0,
        },
    )
    .unwrap();
    assert!(
        sleeper.try_wait().unwrap().is_some(),
        "the leftover process was stopped"
    );
    lab::up(
        &names,
        LabSpec {
            mode: Mode::FlannelHostgw,
            services: 0,
        },
    )
    .unwrap();
    let status = lab::status().unwrap();
    let entry = status.iter().find(|s| s.lab == names.lab()).unwrap();
    assert!(entry.complete);
    assert_eq!(entry.spec.unwrap().mode, Mode::FlannelHostgw);
}
