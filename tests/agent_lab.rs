//! The agent in the real lab (flannel-hostgw, flannel-vxlan, calico, l2, host): one `Agent` per node (node1 watching pod1, node2 watching pod2),
//! `ping -c 20 -i 0.01` pod1 -> pod2 (node1 -> node2 in `host` mode), then exact hit counts per
//! checkpoint, the stages each mode must (and must not) have, and nothing of ours left in the
//! kernel after the agents are dropped.
//!
//! Expected hits: every device hook the path crosses sees each packet once in one direction,
//! so 20 (requests one way, replies the other). Netfilter hooks (flannel modes, where the lab
//! has kube-proxy's tables) count 20 per crossing: br_netfilter runs PRE_ROUTING for the pod's
//! frame on the bridge port (and the bridge's own ip_rcv pass is skipped), forwarded packets
//! cross FORWARD and POST_ROUTING, and in vxlan mode the outer packet adds LOCAL_OUT +
//! POST_ROUTING on the sending node and PRE_ROUTING + LOCAL_IN on the receiving one.

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use netprof::agent::{report::AgentReport, Agent, AgentError, AgentOptions, HookFamilies, Stage};
use netprof::lab::{self, addressing, LabNames, LabSpec, Mode, Node};
use netprof_tests::{ebpf_skip_reason, print_skip, program_unloaded, unique_lab_name};

const PINGS: u64 = 20;

struct Cleanup(LabNames);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = lab::down(&self.0);
    }
}

/// A lab of `mode` (removed when the returned `Cleanup` drops), its pod path, and the options
/// of an agent on node 1 watching pod 1, with both pods as endpoints.
fn node_one_lab(mode: Mode) -> (Cleanup, LabNames, netprof::lab::PathEndpoints, AgentOptions) {
    let names = LabNames::new(&unique_lab_name()).unwrap();
    let cleanup = Cleanup(names.clone());
    let built = lab::up(&names, LabSpec { mode, services: 0 }).unwrap();
    let path = built.pod_path().unwrap();
    let endpoints = vec![
        addressing::pod_ip(mode, Node::One),
        addressing::pod_ip(mode, Node::Two),
    ];
    let mut options = AgentOptions::new(names.node(Node::One), endpoints);
    options.pod_netns = vec![names.pod(Node::One)];
    (cleanup, names, path, options)
}

/// Hits per netfilter hook name (all points of a hook must agree).
fn nf_hits(report: &AgentReport) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for cp in report.checkpoints.iter().filter(|c| c.kind == "netfilter") {
        let hook = cp.hook.clone().unwrap();
        let prev = out.insert(hook.clone(), cp.hits);
        if let Some(prev) = prev {
            assert_eq!(prev, cp.hits, "{}: points of {hook} disagree", report.node);
        }
    }
    out
}

fn print_report(report: &AgentReport) {
    println!("== {} (attach {:.1} ms)", report.node, report.attach_ms);
    for cp in &report.checkpoints {
        if cp.hits > 0 || cp.kind != "netfilter" {
            println!("  hits {:>4}  {}", cp.hits, cp.name);
        }
    }
    let mut per_stage: BTreeMap<Stage, (u64, f64)> = BTreeMap::new();
    for s in &report.segments {
        let e = per_stage.entry(s.stage).or_default();
        e.0 += 1;
        e.1 += s.mean_ns * s.count as f64;
    }
    for s in &report.segments {
        println!(
            "  seg {:<12} {:>4} x p50 {:>6} ns  {} -> {}",
            s.stage.name(),
            s.count,
            s.p50_ns,
            s.from_name,
            s.to_name
        );
    }
    let stages: Vec<&str> = report.stages().iter().map(|s| s.name()).collect();
    println!("  stages: {}", stages.join(", "));
    println!("  counters: {:?}", report.counters);
    for d in &report.drops {
        println!(
            "  drop {} x {} at {}",
            d.count, d.reason_name, d.checkpoint_name
        );
    }
    for n in &report.not_measured {
        println!("  not measured: {}: {}", n.what, n.reason);
    }
    for p in &report.programs {
        if p.run_count > 0 {
            println!(
                "  prog {:<15} runs {:>7} {:>8.0} ns/run",
                p.name, p.run_count, p.ns_per_run
            );
        }
    }
}

fn ping(from_netns: &str, target: Ipv4Addr, count: u64) {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            from_netns,
            "ping",
            "-c",
            &count.to_string(),
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

/// Programs of ours attached to the TCX hooks of `iface` in `netns`.
fn tcx_ids(netns: &str, iface: &str) -> Vec<u32> {
    use aya::programs::{SchedClassifier, TcAttachType};
    netprof::netns::run_in(netns, || {
        let mut ids = Vec::new();
        for t in [TcAttachType::Ingress, TcAttachType::Egress] {
            if let Ok((_, infos)) = SchedClassifier::query_tcx(iface, t) {
                ids.extend(infos.iter().map(|i| i.id()));
            }
        }
        ids
    })
    .unwrap()
}

/// The device hooks `hooks` attaches: tc always, the tp_btf pair only with `dev`.
fn device_hooks(hooks: HookFamilies) -> Vec<&'static str> {
    if hooks.dev {
        vec!["dev-rx", "tc-ingress", "tc-egress", "dev-tx"]
    } else {
        vec!["tc-ingress", "tc-egress"]
    }
}

/// [`tcx_ids`] once the kernel has finished releasing closed links: a TCX link's release can
/// complete a moment after its fd is closed on a loaded machine, so this polls (up to 2 s).
fn tcx_ids_after_release(netns: &str, iface: &str) -> Vec<u32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let ids = tcx_ids(netns, iface);
        if ids.is_empty() || std::time::Instant::now() > deadline {
            return ids;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run(mode: Mode, hooks: HookFamilies) {
    let test = format!("agent_lab {mode}");
    if let Some(reason) = ebpf_skip_reason(&["ip", "ping", "bpftool", "iptables-save"]) {
        print_skip(&test, &reason);
        return;
    }
    let names = LabNames::new(&unique_lab_name()).unwrap();
    let _cleanup = Cleanup(names.clone());
    let built = lab::up(&names, LabSpec { mode, services: 0 }).unwrap();
    let (n1, n2) = (names.node(Node::One), names.node(Node::Two));
    let path = built.pod_path().unwrap_or_else(|| built.host_path());
    let endpoints = if mode.has_pods() {
        vec![
            addressing::pod_ip(mode, Node::One),
            addressing::pod_ip(mode, Node::Two),
        ]
    } else {
        vec![
            addressing::node_ip(Node::One),
            addressing::node_ip(Node::Two),
        ]
    };
    let options = |node: Node| {
        let mut o = AgentOptions::new(names.node(node), endpoints.clone());
        o.hooks = hooks;
        if mode.has_pods() {
            o.pod_netns = vec![names.pod(node)];
        }
        o
    };
    let agent1 = Agent::start(&options(Node::One)).unwrap();
    let agent2 = Agent::start(&options(Node::Two)).unwrap();

    ping(&path.client_netns, path.server_ip, PINGS);
    // The last reply's skb is freed right after ping reads it; give the tracepoints a moment.
    std::thread::sleep(Duration::from_millis(200));
    let r1 = agent1.snapshot().unwrap();
    let r2 = agent2.snapshot().unwrap();
    print_report(&r1);
    print_report(&r2);

    // ---- exact hits on every device hook of the path ----
    let mut devices: Vec<&str> = vec!["eno1"];
    if matches!(mode, Mode::FlannelHostgw | Mode::FlannelVxlan) {
        devices.extend(["cni0", "veth-pod"]);
    }
    if mode == Mode::FlannelVxlan {
        devices.push("flannel.1");
    }
    if mode == Mode::L2 {
        devices.push("veth-pod");
    }
    if mode == Mode::Calico {
        devices.push("cali0pod");
    }
    for (report, pod) in [(&r1, names.pod(Node::One)), (&r2, names.pod(Node::Two))] {
        for device in &devices {
            for hook in device_hooks(hooks) {
                let name = format!("{device} {hook}");
                assert_eq!(report.hits(&name), PINGS, "{}: {name}", report.node);
            }
        }
        if mode.has_pods() {
            for hook in device_hooks(hooks) {
                let name = format!("{pod}:eth0 {hook}");
                assert_eq!(report.hits(&name), PINGS, "{}: {name}", report.node);
            }
        }
        if !hooks.dev {
            // Without the tp_btf family its checkpoints are not reported (never as zero).
            assert!(
                report.checkpoint("eno1 dev-rx").is_none(),
                "{}",
                report.node
            );
        }
        if mode == Mode::L2 {
            // Bridged frames never reach the bridge device itself.
            for hook in ["dev-rx", "tc-ingress", "tc-egress", "dev-tx"] {
                assert_eq!(report.hits(&format!("cni0 {hook}")), 0, "{}", report.node);
            }
        }
        assert_eq!(report.counters.abandoned, 0, "{}", report.node);
        assert_eq!(report.counters.read_errors, 0, "{}", report.node);
        assert!(report.counters.admitted >= PINGS, "{}", report.node);
        assert!(
            report.attach_ms < 1000.0,
            "{}: attach took {} ms",
            report.node,
            report.attach_ms
        );
        assert_eq!(report.schema, "netprof.agent/v1");
    }

    // ---- netfilter: exact per hook where the lab has tables, absent elsewhere ----
    let has_stage = |r: &AgentReport, s: Stage| r.stage_segments(s).next().is_some();
    for report in [&r1, &r2] {
        let nf = nf_hits(report);
        match mode {
            Mode::FlannelHostgw | Mode::Calico => {
                let want: BTreeMap<String, u64> = [
                    ("FORWARD", 40),
                    ("LOCAL_IN", 0),
                    ("LOCAL_OUT", 0),
                    ("POST_ROUTING", 40),
                    ("PRE_ROUTING", 40),
                ]
                .into_iter()
                .map(|(h, n)| (h.to_owned(), n))
                .collect();
                assert_eq!(nf, want, "{}", report.node);
            }
            Mode::FlannelVxlan => {
                let want: BTreeMap<String, u64> = [
                    ("FORWARD", 40),
                    ("LOCAL_IN", 20),
                    ("LOCAL_OUT", 20),
                    ("POST_ROUTING", 60),
                    ("PRE_ROUTING", 60),
                ]
                .into_iter()
                .map(|(h, n)| (h.to_owned(), n))
                .collect();
                assert_eq!(nf, want, "{}", report.node);
            }
            _ => {
                assert!(nf.values().all(|n| *n == 0), "{}: {nf:?}", report.node);
                let reason = format!("no netfilter tables in {}", report.netns);
                assert!(
                    report.not_measured.iter().any(|n| n.reason == reason),
                    "{}: {:?}",
                    report.node,
                    report.not_measured
                );
            }
        }
        let kube_proxy = mode.has_kube_proxy();
        for stage in [
            Stage::Conntrack,
            Stage::NatDnat,
            Stage::NatSnat,
            Stage::Filter,
        ] {
            assert_eq!(
                has_stage(report, stage),
                kube_proxy,
                "{}: {stage}",
                report.node
            );
        }
        // The lab has no raw table: the agent brackets only the tables present, so no raw stage.
        assert!(!has_stage(report, Stage::Raw), "{}: raw", report.node);
        let vxlan = mode == Mode::FlannelVxlan;
        assert_eq!(
            has_stage(report, Stage::VxlanEncap),
            vxlan,
            "{}",
            report.node
        );
        assert_eq!(
            has_stage(report, Stage::VxlanDecap),
            vxlan,
            "{}",
            report.node
        );
        let bridged = matches!(mode, Mode::FlannelHostgw | Mode::FlannelVxlan | Mode::L2);
        assert_eq!(has_stage(report, Stage::Bridge), bridged, "{}", report.node);
        assert_eq!(
            has_stage(report, Stage::Veth),
            mode.has_pods(),
            "{}",
            report.node
        );
        // The uplink's own stage is the segment between its tc and tp_btf hooks (its qdisc and
        // driver): there only when the tp_btf family is attached.
        assert_eq!(
            has_stage(report, Stage::Uplink),
            hooks.dev,
            "{}",
            report.node
        );
        if mode == Mode::Host {
            let allowed = [Stage::Uplink, Stage::Stack, Stage::TxDone];
            assert!(
                report.stages().iter().all(|s| allowed.contains(s)),
                "{}: {:?}",
                report.node,
                report.stages()
            );
        }
        assert!(
            !has_stage(report, Stage::Other),
            "{}: unnamed segments",
            report.node
        );
        // Every segment's histogram adds up to its count.
        for s in &report.segments {
            assert_eq!(
                s.buckets.iter().map(|b| b[1]).sum::<u64>(),
                s.count,
                "{s:?}"
            );
        }
        // bpf_stats are on: the tc programs ran and were timed.
        let tc = report
            .programs
            .iter()
            .find(|p| p.name == "cp_tc_egress")
            .unwrap();
        assert!(tc.run_count > 0 && tc.run_time_ns > 0, "{tc:?}");
        // Journeys end in the tp_btf programs (the classic tracepoints are the fallback).
        let consume = report.programs.iter().find(|p| p.name == "cp_consume_btf");
        assert!(
            consume.is_some_and(|p| p.run_count > 0),
            "{:?}",
            report.programs
        );
        assert!(
            !report.programs.iter().any(|p| p.name == "cp_consume_skb"),
            "classic fallback loaded"
        );
    }

    // The server node delivers the requests to its stack (`consumed`). The client's replies
    // end as drops: iputils ping reads them on a raw socket, then ping_rcv finds no ping
    // socket and frees them with NO_SOCKET.
    assert!(has_stage(&r2, Stage::Stack), "{}", r2.node);
    assert_eq!(r2.hits("consumed"), r2.counters.completed);
    assert!(r2.counters.completed >= PINGS, "{:?}", r2.counters);

    // ---- reset: the next period starts from zero ----
    agent1.reset().unwrap();
    let empty = agent1.snapshot().unwrap();
    assert!(empty.segments.is_empty(), "{:?}", empty.segments);
    assert!(empty.checkpoints.iter().all(|c| c.hits == 0));
    assert_eq!(empty.counters.admitted, 0);
    ping(&path.client_netns, path.server_ip, 5);
    std::thread::sleep(Duration::from_millis(200));
    let after = agent1.snapshot().unwrap();
    assert_eq!(after.hits("eno1 tc-egress"), 5);
    assert_eq!(after.hits("eno1 tc-ingress"), 5);

    // ---- drop: nothing of ours stays loaded or attached ----
    let ids: Vec<u32> = r1
        .programs
        .iter()
        .chain(&r2.programs)
        .map(|p| p.id)
        .collect();
    assert!(ids.len() >= 2 * 5, "{ids:?}");
    drop(agent1);
    drop(agent2);
    for id in &ids {
        assert!(
            program_unloaded(*id).unwrap(),
            "program {id} still loaded after drop"
        );
    }
    let lab_devices: &[&str] = match mode {
        Mode::Host => &["eno1"],
        Mode::FlannelVxlan => &["eno1", "cni0", "veth-pod", "flannel.1"],
        Mode::Calico => &["eno1", "cali0pod"],
        _ => &["eno1", "cni0", "veth-pod"],
    };
    let mut watched: Vec<(String, &str)> = Vec::new();
    for ns in [&n1, &n2] {
        watched.extend(lab_devices.iter().map(|dev| (ns.clone(), *dev)));
    }
    if mode.has_pods() {
        watched.extend([Node::One, Node::Two].map(|node| (names.pod(node), "eth0")));
    }
    for (ns, dev) in &watched {
        assert_eq!(
            tcx_ids_after_release(ns, dev),
            Vec::<u32>::new(),
            "TCX left on {dev} in {ns}"
        );
    }
    println!("{mode}: {} programs unloaded, no TCX links left", ids.len());
}

#[test]
fn flannel_hostgw() {
    run(Mode::FlannelHostgw, HookFamilies::default());
}

#[test]
fn flannel_vxlan() {
    run(Mode::FlannelVxlan, HookFamilies::default());
}

/// Every family, the tp_btf device hooks too: they count each packet once more per device and
/// split the uplink's own stage out.
#[test]
fn flannel_vxlan_all_hooks() {
    run(Mode::FlannelVxlan, HookFamilies::ALL);
}

#[test]
fn calico() {
    run(Mode::Calico, HookFamilies::default());
}

#[test]
fn l2() {
    run(Mode::L2, HookFamilies::default());
}

#[test]
fn host() {
    run(Mode::Host, HookFamilies::default());
}

/// A veth created after the agent started is found by the rescan (pods come and go), gets
/// checkpoints and TCX programs, and loses them again on drop.
#[test]
fn rescan_watches_devices_created_later() {
    let test = "agent_lab rescan_watches_devices_created_later";
    if let Some(reason) = ebpf_skip_reason(&["ip", "ping", "bpftool", "iptables-save"]) {
        print_skip(test, &reason);
        return;
    }
    let names = LabNames::new(&unique_lab_name()).unwrap();
    let _cleanup = Cleanup(names.clone());
    let mode = Mode::FlannelHostgw;
    lab::up(&names, LabSpec { mode, services: 0 }).unwrap();
    let node = names.node(Node::One);
    let endpoints = vec![addressing::pod_ip(mode, Node::One)];
    let agent = Agent::start(&AgentOptions::new(node.clone(), endpoints)).unwrap();
    assert!(agent
        .snapshot()
        .unwrap()
        .checkpoint("veth-late tc-ingress")
        .is_none());
    let ip = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .arg("-n")
            .arg(&node)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ip(&[
        "link",
        "add",
        "veth-late",
        "type",
        "veth",
        "peer",
        "name",
        "veth-late-p",
    ]);
    ip(&["link", "set", "veth-late", "up"]);
    std::thread::sleep(Duration::from_millis(2500));
    let report = agent.snapshot().unwrap();
    for name in [
        "veth-late tc-ingress",
        "veth-late tc-egress",
        "veth-late-p tc-ingress",
        "veth-late-p tc-egress",
    ] {
        let cp = report
            .checkpoint(name)
            .unwrap_or_else(|| panic!("{name} not watched"));
        assert_eq!(cp.role.as_deref(), Some("host-veth"));
    }
    assert_eq!(
        tcx_ids(&node, "veth-late").len(),
        2,
        "TCX ingress + egress on the late veth"
    );
    println!(
        "rescan: veth-late watched as checkpoints {}..{}",
        report.checkpoint("veth-late tc-ingress").unwrap().id,
        report.checkpoint("veth-late-p tc-egress").unwrap().id
    );
    drop(agent);
    assert!(tcx_ids_after_release(&node, "veth-late").is_empty());
    assert!(tcx_ids_after_release(&node, "veth-late-p").is_empty());
}

fn netprof(args: &[&str]) -> std::process::Output {
    std::process::Command::new(netprof_tests::netprof_bin())
        .args(args)
        .output()
        .unwrap()
}

/// The CLI's errors name what to do, and come before anything is attached.
#[test]
fn cli_errors_come_before_attaching() {
    let test = "agent_lab cli_errors_come_before_attaching";
    if let Some(reason) = ebpf_skip_reason(&["ip"]) {
        print_skip(test, &reason);
        return;
    }
    let ns = netprof_tests::Netns::create("agent-cli").unwrap();
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();

    let out = netprof(&[
        "agent",
        "--netns",
        "netprof-no-such-node",
        "--endpoint",
        "198.18.0.1",
        "--out",
        "/tmp/netprof-agent-x.json",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("ip netns list"), "{}", stderr(&out));
    assert!(
        !std::path::Path::new("/tmp/netprof-agent-x.json").exists(),
        "empty report left behind"
    );

    let out = netprof(&[
        "agent",
        "--netns",
        ns.name(),
        "--endpoint",
        "198.18.0.1",
        "--out",
        "/nonexistent-dir/x.json",
    ]);
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains("--out") && !text.contains("attached"),
        "{text}"
    );

    let out = netprof(&["agent", "--netns", ns.name(), "--out", "/tmp/x.json"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--endpoint"), "{}", stderr(&out));

    // Not root: told so before anything else.
    if std::process::Command::new("setpriv")
        .arg("--help")
        .output()
        .is_ok()
    {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(netprof_tests::netprof_bin())
            .args([
                "agent",
                "--netns",
                ns.name(),
                "--endpoint",
                "198.18.0.1",
                "--out",
                "/tmp/netprof-agent-x.json",
            ])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(stderr(&out).contains("run as root"), "{}", stderr(&out));
    }

    // A namespace without the uplink says how to name it.
    let out = netprof(&[
        "agent",
        "--netns",
        ns.name(),
        "--endpoint",
        "198.18.0.1",
        "--out",
        "/tmp/netprof-agent-x.json",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--uplink"), "{}", stderr(&out));
    println!("{}", stderr(&out).trim());
}

/// `netprof agent` end to end: SIGTERM ends the measurement, the JSON is written, exit 0.
#[test]
fn cli_writes_the_report_on_sigterm() {
    let test = "agent_lab cli_writes_the_report_on_sigterm";
    if let Some(reason) = ebpf_skip_reason(&["ip", "ping", "bpftool", "iptables-save"]) {
        print_skip(test, &reason);
        return;
    }
    let names = LabNames::new(&unique_lab_name()).unwrap();
    let _cleanup = Cleanup(names.clone());
    let built = lab::up(
        &names,
        LabSpec {
            mode: Mode::Host,
            services: 0,
        },
    )
    .unwrap();
    let out = std::env::temp_dir().join(format!("netprof-agent-{}.json", names.lab()));
    let child = std::process::Command::new(netprof_tests::netprof_bin())
        .args([
            "agent",
            "--netns",
            &names.node(Node::Two),
            "--endpoint",
            "198.18.0.1",
            "--endpoint",
            "198.18.0.2",
            "--out",
        ])
        .arg(&out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the "attached" line (programs of the same name may belong to other tests).
    let mut child = child;
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("attached to") {
            break;
        }
    }
    assert!(seen.contains("attached to"), "{seen}");
    let rest =
        std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>().join("\n"));
    let host = built.host_path();
    ping(&host.client_netns, host.server_ip, PINGS);
    // SAFETY: signalling our own child.
    unsafe { libc_kill(child.id() as i32, 15) };
    let status = child.wait().unwrap();
    let stderr = seen + &rest.join().unwrap();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    let report: AgentReport =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let _ = std::fs::remove_file(&out);
    assert_eq!(report.schema, "netprof.agent/v1");
    assert_eq!(report.hits("eno1 tc-ingress"), PINGS);
    assert_eq!(report.hits("eno1 tc-egress"), PINGS);
    println!("cli: {}", stderr.trim());
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn sampling_follows_a_fraction_and_decides_each_packet_once() {
    if let Some(reason) = ebpf_skip_reason(&["ip", "ping"]) {
        print_skip(
            "sampling_follows_a_fraction_and_decides_each_packet_once",
            &reason,
        );
        return;
    }
    const N: u64 = 200;
    let (_cleanup, _names, path, mut options) = node_one_lab(Mode::FlannelHostgw);
    options.sample = 4;
    let agent = Agent::start(&options).unwrap();
    ping(&path.client_netns, path.server_ip, N);
    std::thread::sleep(Duration::from_millis(200));
    let report = agent.snapshot().unwrap();
    let c = report.counters;
    println!(
        "sample 1/4 over {} packets: admitted {}, sampled out {}",
        2 * N,
        c.admitted,
        c.sampled_out
    );
    // Every request and reply is decided once, where it first meets a checkpoint of this node.
    assert_eq!(c.admitted + c.sampled_out, 2 * N, "{c:?}");
    // 1 in 4 on average (100 of 400); the bounds are 8 standard deviations wide.
    assert!((30..=170).contains(&c.admitted), "{c:?}");
    // Only followed packets count as hits; the uplink saw the followed ones exactly once.
    let uplink = report.hits("eno1 tc-egress") + report.hits("eno1 tc-ingress");
    assert_eq!(uplink, c.admitted, "{c:?}");
    assert_eq!(c.abandoned, 0);
    assert!(AgentError::Sample(3).to_string().contains("power of two"));
    options.sample = 3;
    assert!(matches!(Agent::start(&options), Err(AgentError::Sample(3))));
}

/// bpf_stats in slices: an always-attached agent keeps them on for 10% of every second (they
/// cost two clock reads per program run), so its report says how long they were on, the
/// programs counted runs only then, every packet still counts (hits come from netprof's own
/// maps), a light step can keep them on throughout, and the kernel's statistics are off again
/// afterwards.
#[test]
fn statistics_are_sampled_in_slices_and_hits_stay_exact() {
    let test = "statistics_are_sampled_in_slices_and_hits_stay_exact";
    if let Some(reason) = ebpf_skip_reason(&["ip", "ping"]) {
        print_skip(test, &reason);
        return;
    }
    const N: u64 = 250;
    let mode = Mode::FlannelHostgw;
    let (_cleanup, _names, path, options) = node_one_lab(mode);
    assert_eq!(
        options.stats_share,
        netprof::agent::stats::DEFAULT_STATS_SHARE
    );
    let agent = Agent::start(&options).unwrap();
    // 250 pings 10 ms apart: about 2.5 s, three slices of 100 ms.
    ping(&path.client_netns, path.server_ip, N);
    let report = agent.snapshot().unwrap();
    let stats_s = report
        .stats_s
        .expect("the report says how long bpf_stats were on");
    println!("bpf_stats on {stats_s:.3} s of {:.3} s", report.elapsed_s);
    assert!(
        (0.15..=0.6).contains(&stats_s),
        "stats on {stats_s} s of {} s",
        report.elapsed_s
    );
    let uplink = report
        .programs
        .iter()
        .find(|p| p.name == "cp_tc_egress")
        .expect("cp_tc_egress in the programs");
    // Runs counted only in the slices: far fewer than the programs' runs, but some.
    let hits = report.hits("eno1 tc-egress");
    assert_eq!(hits, N, "every request counted by netprof's own maps");
    assert!(
        uplink.run_count > 0 && uplink.ns_per_run > 0.0,
        "{uplink:?}"
    );
    assert!(
        uplink.run_count < 4 * N * 6 / 10,
        "runs counted outside the slices? {uplink:?}"
    );
    // A light step keeps them on throughout (bench --profile does so for pings).
    agent.full_stats(true).unwrap();
    agent.reset().unwrap();
    ping(&path.client_netns, path.server_ip, 100);
    let full = agent.snapshot().unwrap();
    let full_s = full.stats_s.unwrap();
    println!(
        "with full statistics: on {full_s:.3} s of {:.3} s",
        full.elapsed_s
    );
    assert!(
        full_s >= 0.95 * full.elapsed_s,
        "{full_s} of {}",
        full.elapsed_s
    );
    agent.full_stats(false).unwrap();
    drop(agent);
    let enabled = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap();
    assert_eq!(enabled.trim(), "0", "bpf_stats left on");
    assert!(Agent::start(&AgentOptions {
        stats_share: 0,
        ..options
    })
    .is_err_and(|e| matches!(e, AgentError::StatsShare(0))));
}

/// The netfilter fallback for kernels without netfilter links, forced (`nf-fentry`): where the
/// kernel loads fentry programs, conntrack and the tables are measured at the same points as
/// with links (exact counts); where it refuses them (this CI kernel: EPERM), each traced
/// function is reported as not measured with the kernel's reason, no netfilter checkpoint is
/// reported (never zero), the tc checkpoints still count exactly, and nothing stays loaded.
#[test]
fn netfilter_through_fentry_is_measured_or_reported_not_measured() {
    let test = "netfilter_through_fentry_is_measured_or_reported_not_measured";
    if let Some(reason) = ebpf_skip_reason(&["ip", "ping"]) {
        print_skip(test, &reason);
        return;
    }
    let mode = Mode::FlannelHostgw;
    let (_cleanup, _names, path, mut options) = node_one_lab(mode);
    options.hooks = "tc,nf-fentry,trace".parse().unwrap();
    let agent = Agent::start(&options).unwrap();
    ping(&path.client_netns, path.server_ip, PINGS);
    std::thread::sleep(Duration::from_millis(200));
    let report = agent.snapshot().unwrap();
    print_report(&report);
    let refused: Vec<_> = report
        .not_measured
        .iter()
        .filter(|n| n.what.starts_with("netfilter via fentry/fexit on "))
        .collect();
    for entry in &refused {
        println!("not measured: {}: {}", entry.what, entry.reason);
        assert!(
            entry.reason.contains("asked for")
                && entry.reason.len() > "asked for (--hooks nf-fentry); ".len(),
            "{entry:?}"
        );
    }
    if refused.len() == profiler_common::datapath::NF_TRACED.len() {
        print_skip(
            test,
            "this kernel refuses fentry programs: checked the refusal path only",
        );
        assert!(
            report.checkpoints.iter().all(|c| c.kind != "netfilter"),
            "netfilter checkpoints reported though nothing traces them"
        );
    } else {
        // Forwarded pod traffic crosses PRE_ROUTING, FORWARD and POST_ROUTING, 40 passes each.
        let nf = nf_hits(&report);
        for hook in ["PRE_ROUTING", "FORWARD", "POST_ROUTING"] {
            assert_eq!(nf.get(hook), Some(&(2 * PINGS)), "{hook}: {nf:?}");
        }
        assert!(report.stage_segments(Stage::Conntrack).next().is_some());
    }
    assert_eq!(report.hits("eno1 tc-egress"), PINGS);
    assert_eq!(report.hits("eno1 tc-ingress"), PINGS);
    assert_eq!(report.counters.abandoned, 0, "{:?}", report.counters);
    let ids: Vec<u32> = report.programs.iter().map(|p| p.id).collect();
    drop(agent);
    for id in &ids {
        assert!(
            program_unloaded(*id).unwrap(),
            "program {id} still loaded after drop"
        );
    }
}

/// Duty cycling: attached 40% of every 500 ms, during 500 pings 10 ms apart (~5 s). Only the
/// windows count, every counted packet is counted whole (each packet's request and reply pass
/// the uplink in one window or are forgotten with their epoch, never abandoned), the report
/// says how long the agent was attached, and nothing stays attached after the agent goes.
#[test]
fn duty_cycling_counts_only_the_windows_and_leaves_nothing() {
    let test = "duty_cycling_counts_only_the_windows_and_leaves_nothing";
    if let Some(reason) = ebpf_skip_reason(&["ip", "ping"]) {
        print_skip(test, &reason);
        return;
    }
    const N: u64 = 500;
    let mode = Mode::FlannelVxlan;
    let (_cleanup, names, path, mut options) = node_one_lab(mode);
    options.duty =
        netprof::agent::duty::Duty::from_percent(40, Duration::from_millis(500)).unwrap();
    const RCU_KNOB: &str = "/sys/kernel/rcu_expedited";
    let knob_before = std::fs::read_to_string(RCU_KNOB).unwrap();
    let agent = Agent::start(&options).unwrap();
    ping(&path.client_netns, path.server_ip, N);
    let report = agent.snapshot().unwrap();
    print_report(&report);
    let duty = report
        .duty
        .clone()
        .expect("the report says the agent was duty-cycled");
    let share = report.attached_fraction();
    println!(
        "duty: {duty:?}, attached {:.0}% of {:.2} s",
        share * 100.0,
        report.elapsed_s
    );
    assert!(duty.windows >= 6, "{duty:?}");
    assert!((0.25..=0.6).contains(&share), "attached share {share}");
    // Every edge (a close and an open per window) ran with expedited RCU on this root machine.
    assert!(duty.edges >= 2 * duty.windows - 2, "{duty:?}");
    assert_eq!(duty.expedited_edges, duty.edges, "{duty:?}");
    let requests = report.hits("eno1 tc-egress");
    let replies = report.hits("eno1 tc-ingress");
    println!("windows saw {requests} requests and {replies} replies of {N}");
    // About 40% of the pings; wide bounds for scheduling jitter, far from 0 and from N.
    assert!(
        (N / 6..=N * 3 / 4).contains(&requests),
        "requests {requests}"
    );
    // A window edge can fall between a request and its reply: at most one per window.
    assert!(
        requests.abs_diff(replies) <= duty.windows,
        "{requests} vs {replies}"
    );
    assert_eq!(report.counters.abandoned, 0, "{:?}", report.counters);
    let other: Vec<String> = report
        .stage_segments(Stage::Other)
        .map(|s| format!("{} x {} -> {}", s.count, s.from_name, s.to_name))
        .collect();
    assert!(
        other.is_empty(),
        "unnamed segments: {other:?}; not measured: {:?}",
        report.not_measured
    );
    assert!(report.stage_segments(Stage::VxlanEncap).next().is_some());
    let ids: Vec<u32> = report.programs.iter().map(|p| p.id).collect();
    drop(agent);
    for id in &ids {
        assert!(
            program_unloaded(*id).unwrap(),
            "program {id} still loaded after drop"
        );
    }
    for (ns, dev) in [
        (names.node(Node::One), "eno1"),
        (names.node(Node::One), "flannel.1"),
        (names.pod(Node::One), "eth0"),
    ] {
        assert_eq!(
            tcx_ids_after_release(&ns, dev),
            Vec::<u32>::new(),
            "TCX left on {dev} in {ns}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(RCU_KNOB).unwrap(),
        knob_before,
        "{RCU_KNOB} written back"
    );
    let note = std::fs::read_to_string("/run/netprof/rcu_expedited.lock").unwrap_or_default();
    assert_eq!(note, "", "no value left to restore");
}

/// The agent lists a namespace's links with one rtnetlink dump (no process per rescan); it
/// must see exactly what `ip -j -d link show` sees: names, indexes, kinds and masters.
#[test]
fn netlink_link_listing_matches_ip() {
    let test = "netlink_link_listing_matches_ip";
    if let Some(reason) = ebpf_skip_reason(&["ip"]) {
        print_skip(test, &reason);
        return;
    }
    let names = LabNames::new(&unique_lab_name()).unwrap();
    let _cleanup = Cleanup(names.clone());
    lab::up(
        &names,
        LabSpec {
            mode: Mode::FlannelVxlan,
            services: 0,
        },
    )
    .unwrap();
    for netns in [names.node(Node::One), names.pod(Node::One)] {
        let mut ours = netprof::agent::netlink_links::list(&netns).unwrap();
        let mut ip = netprof::agent::devices::list_links_with_ip(&netns).unwrap();
        ours.sort_by_key(|l| l.ifindex);
        ip.sort_by_key(|l| l.ifindex);
        println!(
            "{netns}: {:?}",
            ours.iter()
                .map(|l| (&l.ifname, &l.kind, &l.master))
                .collect::<Vec<_>>()
        );
        assert_eq!(ours, ip, "{netns}");
    }
}
