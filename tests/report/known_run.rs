//! A small run directory whose every number is chosen by hand, so the report's attribution can
//! be checked against answers worked out on paper (see `tests/report.rs` for the sums).
//!
//! Two modes: `host` (the baseline) and `flannel-hostgw`, each profiled (ping and ab on each
//! path, both nodes) and with its twin without agents in `clean/`, plus a calibration.
//!
//! Ping steps have 1000 replies. Segments have all their passes in one histogram bucket, whose
//! middle is the segment's median and mean: [40, 41) -> 40 ns, [512, 528) -> 520 ns,
//! [992, 1008) -> 1000 ns, [1184, 1216) -> 1200 ns, [1984, 2016) -> 2000 ns.
//!
//! | step | node | segment (stage, kinds) | passes | ns |
//! | --- | --- | --- | --- | --- |
//! | host ping | 1, 2 | uplink (dev-rx -> tc-ingress) | 1000 each | 1000 |
//! | pod ping | 1, run with 1 flow in 4 (pings are always all followed) | uplink | 1000 | 1000 |
//! | pod ping | 1 | veth (dev-tx -> dev-rx) | 2000 | 2000 |
//! | pod ping | 1 | bridge (tc-ingress -> tc-egress), node 1 only | 2000 | 1000 |
//! | pod ping | 1 | filter (netfilter -> netfilter) | 2100 | 40 |
//! | pod ping | 2, attached half the time | uplink | 500 | 1000 |
//! | pod ping | 2, attached half the time | veth | 1000 | 520 |
//! | pod ping | 2, attached half the time | filter | 950 | 1200 |
//! | host ab (10000 requests) | 1, 2 | uplink | 20000 each | 1000 |
//! | pod ab (10000 requests) | 1, following 1 flow in 2 | uplink | 10000 | 1000 |
//! | pod ab | 1, following 1 flow in 2 | veth | 20000 | 2000 |
//! | pod ab | 2 | uplink | 20000 | 1000 |
//! | pod ab | 2 | veth | 40000 | 520 |
//!
//! Calibration, ns per run on a followed packet: dev-rx 50 (40..60), dev-tx 50 (40..60),
//! tc-ingress 70 (60..80), tc-egress 70 (60..80), netfilter 30 (20..45).
//! Measured: profiled ping p50 host 50 µs, pod 60 µs (p99 60 and 80 µs); without agents p50
//! host 49 µs, pod 59 µs. nginx: profiled 9000 / 7000 QPS; without agents host 10000 QPS at
//! 150 µs of CPU per request, pod 8000 QPS at 170 µs; 2 CPUs.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// Checkpoint ids of the synthetic documents.
const ENO_RX: u16 = 64;
const ENO_IN: u16 = 65;
const POD_TX: u16 = 83;
const VETH_RX: u16 = 72;
const VETH_IN: u16 = 73;
const CNI_OUT: u16 = 70;
const FWD_IN: u16 = 30;
const FWD_OUT: u16 = 31;
const PRE_M201: u16 = 2;
const PRE_M199: u16 = 3;
const PRE_M101: u16 = 4;

fn checkpoint(id: u16) -> Value {
    let dev = |name: &str, device: &str, role: &str, kind: &str| json!({"id": id, "name": name, "kind": kind, "device": device, "role": role, "hits": 0});
    match id {
        ENO_RX => dev("eno1 dev-rx", "eno1", "uplink", "dev-rx"),
        ENO_IN => dev("eno1 tc-ingress", "eno1", "uplink", "tc-ingress"),
        POD_TX => dev("lab-pod:eth0 dev-tx", "lab-pod:eth0", "pod-eth", "dev-tx"),
        VETH_RX => dev("veth0 dev-rx", "veth0", "host-veth", "dev-rx"),
        VETH_IN => dev("veth0 tc-ingress", "veth0", "host-veth", "tc-ingress"),
        CNI_OUT => dev("cni0 tc-egress", "cni0", "bridge", "tc-egress"),
        FWD_IN => json!({"id": id, "name": "nf FORWARD -1", "kind": "netfilter",
            "hook": "FORWARD", "priority": -1, "hits": 0}),
        FWD_OUT => json!({"id": id, "name": "nf FORWARD 1", "kind": "netfilter",
            "hook": "FORWARD", "priority": 1, "hits": 0}),
        PRE_M201 | PRE_M199 | PRE_M101 => {
            let priority = match id {
                PRE_M201 => -201,
                PRE_M199 => -199,
                _ => -101,
            };
            json!({"id": id, "name": format!("nf PRE_ROUTING {priority}"), "kind": "netfilter",
                "hook": "PRE_ROUTING", "priority": priority, "hits": 0})
        }
        _ => unreachable!("no checkpoint {id}"),
    }
}

/// One segment: all `count` passes in the bucket starting at `low`, whose middle is `ns`.
struct Seg {
    from: u16,
    to: u16,
    stage: &'static str,
    low: u64,
    ns: u64,
    count: u64,
}

const fn seg(from: u16, to: u16, stage: &'static str, low: u64, ns: u64, count: u64) -> Seg {
    Seg {
        from,
        to,
        stage,
        low,
        ns,
        count,
    }
}

/// An agent document: each checkpoint's hits are the passes of the segments it ends or starts.
fn agent_doc(node: &str, segs: &[Seg], attached_s: Option<f64>, sample: Option<u32>) -> Value {
    let mut cps: Vec<Value> = Vec::new();
    for s in segs {
        for id in [s.from, s.to] {
            match cps.iter_mut().find(|c| c["id"] == id) {
                Some(c) => c["hits"] = json!(c["hits"].as_u64().unwrap() + s.count),
                None => {
                    let mut c = checkpoint(id);
                    c["hits"] = json!(s.count);
                    cps.push(c);
                }
            }
        }
    }
    let name = |id: u16| checkpoint(id)["name"].clone();
    let segments: Vec<Value> = segs
        .iter()
        .map(|s| {
            json!({"from": s.from, "to": s.to, "from_name": name(s.from), "to_name": name(s.to),
                "stage": s.stage, "count": s.count, "mean_ns": s.ns as f64, "p50_ns": s.ns,
                "p90_ns": s.ns, "p99_ns": s.ns, "buckets": [[s.low, s.count]]})
        })
        .collect();
    let mut doc = json!({
        "schema": "netprof.agent/v1", "node": node, "netns": format!("known-{node}"),
        "kernel": "6.18.0", "attach_ms": 100.0, "elapsed_s": 2.0,
        "checkpoints": cps, "segments": segments,
        "counters": {"admitted": 1000, "completed": 1000, "dropped": 0, "abandoned": 0,
            "journey_map_full": 0, "segment_map_full": 0, "drop_map_full": 0,
            "read_errors": 0, "retransmits": 0, "repeats": 0},
        "drops": [], "not_measured": [], "programs": []
    });
    if let Some(attached_s) = attached_s {
        doc["duty"] = json!({"percent": 50.0, "period_ms": 1000, "windows": 2,
            "attached_s": attached_s, "expedited_edges": 4, "edges": 4});
    }
    if let Some(sample) = sample {
        doc["sample"] = json!(sample);
    }
    doc
}

fn ping(p50_us: f64, p99_us: f64) -> Value {
    json!({"transmitted": 1000, "received": 1000, "summary_present": true,
        "rtts_us": vec![p50_us; 1000],
        "stats": {"count": 1000, "min_ms": p50_us / 1e3, "avg_ms": p50_us / 1e3,
            "p50_ms": p50_us / 1e3, "p90_ms": p50_us / 1e3, "p99_ms": p99_us / 1e3,
            "max_ms": p99_us / 1e3}})
}

fn ab(qps: f64) -> Value {
    json!({"server_software": "nginx", "document_length_bytes": 612, "concurrency": 50,
        "time_taken_s": 10000.0 / qps, "complete_requests": 10000, "failed_requests": 0,
        "non_2xx_responses": 0, "requests_per_second": qps,
        "mean_time_per_request_ms": 50.0 / qps * 1e3, "mean_time_per_request_all_ms": 1e3 / qps,
        "transfer_rate_kbytes_s": 1000.0, "connection_times": null, "percentiles_ms": []})
}

fn path_result(p50_us: f64, p99_us: f64, qps: f64, cpu_ns: Option<f64>) -> Value {
    let mut p = json!({
        "endpoints": {"client_netns": "known-node1", "server_netns": "known-node2",
            "server_ip": "198.18.0.2", "http_client_netns": "known-node1",
            "http_target": "198.18.0.2:80"},
        "ping": ping(p50_us, p99_us),
        "iperf3": {"protocol": "TCP", "duration_s": 1.0, "sender_bps": 1e10,
            "receiver_bps": 1e10, "bytes_received": 1250000000u64, "retransmits": 0,
            "sender_cpu_percent": null, "receiver_cpu_percent": null, "intervals_bps": [1e10]},
        "ab": ab(qps)
    });
    if let Some(cpu) = cpu_ns {
        p["ab_cpu_ns_per_request"] = json!(cpu);
    }
    p
}

fn mode_result(mode: &str, host: Value, pod: Option<Value>, profiles: Vec<Value>) -> Value {
    json!({"schema": "netprof.bench.mode/v1", "mode": mode,
        "environment": {"kernel": "6.18.0", "iptables": "iptables v1.8.9 (nf_tables)",
            "cpus": 2, "extra_services": 0, "iptables_rules_per_node": 0},
        "config": {"ping_count": 1000, "ping_interval_s": 0.002, "iperf3_seconds": 1,
            "ab_requests": 10000, "ab_concurrency": 50, "services": 0},
        "started_unix_s": 0, "duration_s": 60.0,
        "host_path": host, "pod_path": pod, "profiles": profiles})
}

fn write(path: &Path, value: &Value) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, serde_json::to_string_pretty(value).unwrap()).unwrap();
}

/// The profile entries of one mode, writing each document.
fn profiles(dir: &Path, mode: &str, docs: Vec<(&str, &str, &str, Value)>) -> Vec<Value> {
    docs.into_iter()
        .map(|(path, tool, node, doc)| {
            let slug = path.replace(' ', "-");
            let file = format!("profile/{mode}/{slug}-{tool}-{node}.json");
            write(&dir.join(&file), &doc);
            json!({"path": path, "tool": tool, "node": node, "file": file})
        })
        .collect()
}

/// Writes the known run into a fresh directory and returns it.
pub fn write_known_run(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("netprof-known-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let uplink = |count| seg(ENO_RX, ENO_IN, "uplink", 992, 1000, count);
    let host_ping = || agent_doc_pair(&[uplink(1000)], &[uplink(1000)], None);
    let host_ab = || agent_doc_pair(&[uplink(20000)], &[uplink(20000)], None);
    let (hp1, hp2) = host_ping();
    let (ha1, ha2) = host_ab();
    let host_profiles = profiles(
        &dir,
        "host",
        vec![
            ("host path", "ping", "node1", hp1),
            ("host path", "ping", "node2", hp2),
            ("host path", "ab", "node1", ha1),
            ("host path", "ab", "node2", ha2),
        ],
    );
    write(
        &dir.join("host.json"),
        &mode_result(
            "host",
            path_result(50.0, 60.0, 9000.0, None),
            None,
            host_profiles,
        ),
    );
    let pod_ping_1 = [
        uplink(1000),
        seg(POD_TX, VETH_RX, "veth", 1984, 2000, 2000),
        seg(VETH_IN, CNI_OUT, "bridge", 992, 1000, 2000),
        seg(FWD_IN, FWD_OUT, "filter", 40, 40, 2100),
    ];
    let pod_ping_2 = [
        uplink(500),
        seg(POD_TX, VETH_RX, "veth", 512, 520, 1000),
        seg(FWD_IN, FWD_OUT, "filter", 1184, 1200, 950),
    ];
    let (g1, g2) = host_ping();
    let (a1, a2) = host_ab();
    let mut docs = vec![
        ("host path", "ping", "node1", g1),
        ("host path", "ping", "node2", g2),
        ("host path", "ab", "node1", a1),
        ("host path", "ab", "node2", a2),
    ];
    docs.extend([
        (
            "pod path",
            "ping",
            "node1",
            agent_doc("node1", &pod_ping_1, None, Some(4)),
        ),
        (
            "pod path",
            "ping",
            "node2",
            agent_doc("node2", &pod_ping_2, Some(1.0), None),
        ),
        (
            "pod path",
            "ab",
            "node1",
            agent_doc(
                "node1",
                &[
                    uplink(10000),
                    seg(POD_TX, VETH_RX, "veth", 1984, 2000, 20000),
                ],
                None,
                Some(2),
            ),
        ),
        (
            "pod path",
            "ab",
            "node2",
            agent_doc(
                "node2",
                &[uplink(20000), seg(POD_TX, VETH_RX, "veth", 512, 520, 40000)],
                None,
                None,
            ),
        ),
    ]);
    let hostgw_profiles = profiles(&dir, "flannel-hostgw", docs);
    write(
        &dir.join("flannel-hostgw.json"),
        &mode_result(
            "flannel-hostgw",
            path_result(50.0, 60.0, 9000.0, None),
            Some(path_result(60.0, 80.0, 7000.0, None)),
            hostgw_profiles,
        ),
    );
    write(
        &dir.join("clean/host.json"),
        &mode_result(
            "host",
            path_result(49.0, 55.0, 10000.0, Some(150_000.0)),
            None,
            vec![],
        ),
    );
    write(
        &dir.join("clean/flannel-hostgw.json"),
        &mode_result(
            "flannel-hostgw",
            path_result(49.0, 55.0, 10000.0, Some(150_000.0)),
            Some(path_result(59.0, 70.0, 8000.0, Some(170_000.0))),
            vec![],
        ),
    );
    let cost = |median: f64, lo: f64, hi: f64| {
        let i = json!({"median": median, "lo": lo, "hi": hi});
        json!({"followed_ns": i, "untracked_ns": i, "dispatch_ns": i})
    };
    write(
        &dir.join("calibration.json"),
        &json!({"schema": "netprof.calibration/v1", "mode": "flannel-hostgw",
            "kernel": "6.18.0", "rounds": 12, "ping_interval_s": 0.002,
            "per_run": {"dev-rx": cost(50.0, 40.0, 60.0), "dev-tx": cost(50.0, 40.0, 60.0),
                "tc-ingress": cost(70.0, 60.0, 80.0), "tc-egress": cost(70.0, 60.0, 80.0),
                "netfilter": cost(30.0, 20.0, 45.0)},
            "rtt_shift_ns": {"median": 1500.0, "lo": 900.0, "hi": 2100.0},
            "ratios": {"held_rtt": {"median": 1.02, "lo": 1.0, "hi": 1.05},
                "netprof_rtt": {"median": 1.03, "lo": 1.01, "hi": 1.06},
                "held_cpu": null, "netprof_cpu": null}}),
    );
    dir
}

fn agent_doc_pair(node1: &[Seg], node2: &[Seg], attached_s: Option<f64>) -> (Value, Value) {
    (
        agent_doc("node1", node1, None, None),
        agent_doc("node2", node2, attached_s, None),
    )
}

/// `validate.json` of two checks, with hand-picked profiles (1000 pings, 10000 requests) and
/// rounds, written into `dir` (see `tests/report.rs` for the expected verdicts).
///
/// one-node-rules, a: filter (netfilter -> netfilter) 2 passes per RTT at 40 ns on node 1 and
/// 1200 ns on node 2; b: 40 ns on both; ab: 4 passes per request, the same times. Rounds a - b
/// (ns): ping 2000, 2600, 3100, 1800, 2400, 2200; CPU 5000, 4000, 6000, 4500, 5500, 5200.
/// notrack, a: conntrack (PRE_ROUTING -201 -> -199) 1 pass per RTT at 1000 ns on node 1 and
/// 2000 ns on node 2, the empty bracket after it (-199 -> -101) at 40 ns on both; ab: the same
/// 2 passes per request. Rounds: ping 2500, 3000, 2800; CPU 9000, 8000, 8500.
pub fn write_known_validation(dir: &Path) {
    let filter = |low, ns, count| seg(FWD_IN, FWD_OUT, "filter", low, ns, count);
    let ct = |low, ns, count| seg(PRE_M201, PRE_M199, "conntrack", low, ns, count);
    let empty = |count| seg(PRE_M199, PRE_M101, "netfilter", 40, 40, count);
    let run = |dir_name: &str, side: &str, mode: &str, docs: Vec<(&str, &str, Value)>| {
        let files: Vec<Value> = docs
            .into_iter()
            .map(|(tool, node, doc)| {
                let file = format!("profile/{mode}/pod-path-{tool}-{node}.json");
                write(&dir.join(dir_name).join(&file), &doc);
                json!({"path": "pod path", "tool": tool, "node": node, "file": file})
            })
            .collect();
        json!({"side": side, "mode": mode, "dir": dir_name, "sample": sample(50_000.0, 150_000.0),
            "profiles": files})
    };
    let rules_a = run(
        "validate/one-node-rules-a",
        "a",
        "flannel-vxlan",
        vec![
            (
                "ping",
                "node1",
                agent_doc("node1", &[filter(40, 40, 2000)], None, None),
            ),
            (
                "ping",
                "node2",
                agent_doc("node2", &[filter(1184, 1200, 2000)], None, None),
            ),
            (
                "ab",
                "node1",
                agent_doc("node1", &[filter(40, 40, 40000)], None, None),
            ),
            (
                "ab",
                "node2",
                agent_doc("node2", &[filter(1184, 1200, 40000)], None, None),
            ),
        ],
    );
    let rules_b = run(
        "validate/one-node-rules-b",
        "b",
        "flannel-vxlan",
        vec![
            (
                "ping",
                "node1",
                agent_doc("node1", &[filter(40, 40, 2000)], None, None),
            ),
            (
                "ping",
                "node2",
                agent_doc("node2", &[filter(40, 40, 2000)], None, None),
            ),
            (
                "ab",
                "node1",
                agent_doc("node1", &[filter(40, 40, 40000)], None, None),
            ),
            (
                "ab",
                "node2",
                agent_doc("node2", &[filter(40, 40, 40000)], None, None),
            ),
        ],
    );
    let notrack_a = run(
        "validate/notrack-a",
        "a",
        "flannel-vxlan",
        vec![
            (
                "ping",
                "node1",
                agent_doc("node1", &[ct(992, 1000, 1000), empty(1000)], None, None),
            ),
            (
                "ping",
                "node2",
                agent_doc("node2", &[ct(1984, 2000, 1000), empty(1000)], None, None),
            ),
            (
                "ab",
                "node1",
                agent_doc("node1", &[ct(992, 1000, 20000), empty(20000)], None, None),
            ),
            (
                "ab",
                "node2",
                agent_doc("node2", &[ct(1984, 2000, 20000), empty(20000)], None, None),
            ),
        ],
    );
    let rounds = |ping: &[f64], cpu: &[f64]| -> Vec<Value> {
        ping.iter()
            .zip(cpu)
            .enumerate()
            .map(|(i, (p, c))| {
                let order = if i % 2 == 0 {
                    json!(["a", "b"])
                } else {
                    json!(["b", "a"])
                };
                json!({"round": i, "order": order,
                    "a": sample(50_000.0 + p, 150_000.0 + c),
                    "b": sample(50_000.0, 150_000.0)})
            })
            .collect()
    };
    write(
        &dir.join("validate.json"),
        &json!({"schema": "netprof.validate/v2", "mode": "flannel-vxlan",
        "config": {"ping_count": 1000, "ping_interval_s": 0.002, "iperf3_seconds": 1,
            "ab_requests": 10000, "ab_concurrency": 50, "services": 0},
        "rounds": 6, "one_node_rules": 5000,
        "checks": [
            {"check": "notrack", "mode_a": "flannel-vxlan", "mode_b": "flannel-vxlan",
             "profiled": [notrack_a],
             "rounds": rounds(&[2500.0, 3000.0, 2800.0], &[9000.0, 8000.0, 8500.0])},
            {"check": "one-node-rules", "mode_a": "flannel-vxlan", "mode_b": "flannel-vxlan",
             "rules": 5000, "profiled": [rules_a, rules_b],
             "rounds": rounds(&[2000.0, 2600.0, 3100.0, 1800.0, 2400.0, 2200.0],
                 &[5000.0, 4000.0, 6000.0, 4500.0, 5500.0, 5200.0])}
        ]}),
    );
}

/// One state's measurement: 1000 pings all at `p50_ns`, 10000 requests, the CPU per request.
fn sample(p50_ns: f64, cpu_ns: f64) -> Value {
    let us = p50_ns / 1e3;
    json!({"ping": ping(us, us), "ab": ab(7000.0), "ab_cpu_ns_per_request": cpu_ns})
}
