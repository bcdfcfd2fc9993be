//! `netprof bench --profile` end to end: the real binary on the real lab with one agent per
//! node; every step leaves a readable agent report per node with exact ping hits, and nothing
//! of netprof stays loaded in the kernel afterwards.

use std::process::Command;

use netprof::agent::AgentReport;
use netprof_tests::{
    ebpf_skip_reason, loaded_netprof_programs, netprof_bin, print_skip,
    settled_netprof_program_count, unique_lab_name, TempPath,
};

const PINGS: u64 = 30;
/// The bench's default ping blocks.
const BLOCKS: u64 = 10;

/// Both tests count netprof's programs loaded in the kernel before and after: one at a time.
static KERNEL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn profile_writes_a_report_per_step_and_node() {
    if let Some(reason) = ebpf_skip_reason(&["bpftool", "ping", "iperf3", "ab", "nginx"]) {
        print_skip("profile_writes_a_report_per_step_and_node", &reason);
        return;
    }
    let _one_at_a_time = KERNEL.lock().unwrap_or_else(|e| e.into_inner());
    let before = loaded_netprof_programs().len();
    let lab = unique_lab_name();
    // Removed when the test ends, also when it fails.
    let scratch = TempPath::new("profile");
    let out = scratch.path();
    let status = Command::new(netprof_bin())
        .args([
            "bench",
            "--modes",
            "flannel-hostgw",
            "--profile",
            "--lab",
            &lab,
        ])
        .args([
            "--ping-count",
            &PINGS.to_string(),
            "--iperf3-seconds",
            "1",
            "--ab-requests",
            "500",
            "--ab-concurrency",
            "10",
        ])
        .arg("--out")
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success());

    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("flannel-hostgw.json")).unwrap())
            .unwrap();
    let profiles = result["profiles"].as_array().unwrap();
    // The host path's and the pod path's pings alternate in 10 blocks, each block's reports
    // written apart.
    assert_eq!(result["config"]["ping_blocks"], BLOCKS);
    assert_eq!(
        profiles.len(),
        2 * (BLOCKS as usize + 2) * 2,
        "2 paths x (ping blocks, iperf3, ab) x 2 nodes"
    );
    let mut ping_hits = std::collections::BTreeMap::<(String, String), u64>::new();
    for path in ["host_path", "pod_path"] {
        let cpu = result[path]["ab_cpu_ns_per_request"].as_f64().unwrap();
        assert!(cpu > 1_000.0, "{path}: {cpu} ns of CPU per request");
        // Each path pinged again with the agents detached, in the same turns: as many pings
        // and blocks as the profiled ones.
        let off = &result[path]["ping_agents_off"];
        assert_eq!(off["ping"]["received"], PINGS, "{path}: {off}");
        let per_block = vec![PINGS / BLOCKS; BLOCKS as usize];
        assert_eq!(off["block_rtts"], serde_json::json!(per_block), "{path}");
        assert_eq!(
            off["profiled_block_rtts"],
            serde_json::json!(per_block),
            "{path}"
        );
        // ab with the agents detached just before and just after the profiled ab.
        let runs = result[path]["ab_agents_off"]["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 2, "{path}");
        for run in runs {
            assert_eq!(run["ab"]["complete_requests"], 500, "{path}: {run}");
            // /proc/stat counts in 10 ms ticks: 500 requests may read none, but are measured.
            assert!(
                run["cpu_ns_per_request"].as_f64().is_some(),
                "{path}: {run}"
            );
        }
    }
    for entry in profiles {
        let file = out.join(entry["file"].as_str().unwrap());
        let report: AgentReport =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(report.schema, netprof::agent::SCHEMA);
        assert!(
            report.counters.admitted > 0,
            "{}: nothing admitted",
            file.display()
        );
        if entry["tool"] == "ping" {
            // Each block starts from zero: the uplink saw exactly this block's requests and
            // replies.
            let block = PINGS / BLOCKS;
            assert!(
                file.display().to_string().contains("-block"),
                "{}",
                file.display()
            );
            assert_eq!(report.hits("eno1 tc-egress"), block, "{}", file.display());
            assert_eq!(report.hits("eno1 tc-ingress"), block, "{}", file.display());
            assert_eq!(report.counters.abandoned, 0, "{}", file.display());
            if entry["path"] == "pod path" {
                // The node forwards the request and the reply through the same FORWARD
                // points: one segment per direction, one pass per ping each (the reply or
                // request that came in on the uplink is `inbound`), from -99 to the gauge
                // right after it (netprof's own) and from the gauge to 1 (filter).
                for (from, to) in [
                    ("nf FORWARD -99", "nf FORWARD -98 gauge"),
                    ("nf FORWARD -98 gauge", "nf FORWARD 1"),
                ] {
                    let forward: Vec<(bool, u64)> = report
                        .segments
                        .iter()
                        .filter(|s| s.from_name == from && s.to_name == to)
                        .map(|s| (s.inbound, s.count))
                        .collect();
                    assert_eq!(
                        forward,
                        [(false, block), (true, block)],
                        "{}: {from} -> {to}",
                        file.display()
                    );
                }
            }
            let key = (entry["path"].to_string(), entry["node"].to_string());
            *ping_hits.entry(key).or_default() += report.hits("eno1 tc-egress");
        }
    }
    assert_eq!(
        ping_hits.len(),
        4,
        "both paths on both nodes: {ping_hits:?}"
    );
    assert!(
        ping_hits.values().all(|&hits| hits == PINGS),
        "{ping_hits:?}"
    );
    assert_eq!(
        settled_netprof_program_count(before),
        before,
        "programs left loaded after bench"
    );
}

/// Several modes profiled side by side: every lab up at once, each lab's agents attached only
/// in its own blocks, and every path also pinged with no agent attached, in the same turns.
/// Each lab's ping blocks count exactly that block's pings (its agents were attached for the
/// whole block and reset before it), and nothing stays loaded. Every mode also ran on a clean
/// twin lab in the same turns: its results are in `clean/`, with no agent report, no detached
/// blocks (it never had agents to detach) and every tool's numbers.
#[test]
fn profiled_modes_side_by_side_attach_one_lab_at_a_time() {
    let test = "profiled_modes_side_by_side_attach_one_lab_at_a_time";
    if let Some(reason) = ebpf_skip_reason(&["bpftool", "ping", "iperf3", "ab", "nginx"]) {
        print_skip(test, &reason);
        return;
    }
    let _one_at_a_time = KERNEL.lock().unwrap_or_else(|e| e.into_inner());
    let before = loaded_netprof_programs().len();
    let lab = unique_lab_name();
    let scratch = TempPath::new("side-by-side");
    let out = scratch.path();
    let output = Command::new(netprof_bin())
        .args(["bench", "--modes", "host,l2", "--profile", "--lab", &lab])
        .args(["--ping-count", &PINGS.to_string(), "--iperf3-seconds", "1"])
        .args(["--ab-requests", "500", "--ab-concurrency", "10"])
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("3 paths of 2 modes side by side, each lab's agents attached in its turns"),
        "{stderr}"
    );
    assert!(
        stderr.contains("beside them 3 paths of 2 clean twin labs"),
        "{stderr}"
    );
    for (mode, other, paths) in [
        ("host", "l2", &["host_path"][..]),
        ("l2", "host", &["host_path", "pod_path"][..]),
    ] {
        let file = out.join("clean").join(format!("{mode}.json"));
        let twin: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(twin["pinged_with"], serde_json::json!([other]), "{mode}");
        assert_eq!(twin["profiles"], serde_json::json!([]), "{mode}: twin");
        for path in paths {
            let result = &twin[path];
            assert_eq!(result["ping"]["received"], PINGS, "{mode} {path}");
            assert!(result["ping_agents_off"].is_null(), "{mode} {path}");
            assert!(result["ab_agents_off"].is_null(), "{mode} {path}");
            assert_eq!(result["ab"]["complete_requests"], 500, "{mode} {path}");
            assert!(
                result["iperf3"]["receiver_bps"].as_f64().unwrap() > 0.0,
                "{mode} {path}"
            );
        }
        assert!(
            stderr.contains(&format!("{mode:<14} clean twin: host path: iperf3")),
            "{stderr}"
        );
    }
    let block = PINGS / BLOCKS;
    for (mode, other, paths) in [
        ("host", "l2", &["host_path"][..]),
        ("l2", "host", &["host_path", "pod_path"][..]),
    ] {
        let result: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("{mode}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(result["pinged_with"], serde_json::json!([other]), "{mode}");
        let profiles = result["profiles"].as_array().unwrap();
        assert_eq!(
            profiles.len(),
            paths.len() * (BLOCKS as usize + 2) * 2,
            "{mode}: paths x (ping blocks, iperf3, ab) x 2 nodes"
        );
        for path in paths {
            let off = &result[path]["ping_agents_off"];
            assert_eq!(off["ping"]["received"], PINGS, "{mode} {path}: {off}");
            let per_block = serde_json::json!(vec![block; BLOCKS as usize]);
            assert_eq!(off["block_rtts"], per_block, "{mode} {path}");
            assert_eq!(off["profiled_block_rtts"], per_block, "{mode} {path}");
        }
        for entry in profiles.iter().filter(|e| e["tool"] == "ping") {
            let file = out.join(entry["file"].as_str().unwrap());
            let report: AgentReport =
                serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
            assert_eq!(report.hits("eno1 tc-egress"), block, "{}", file.display());
            assert_eq!(report.hits("eno1 tc-ingress"), block, "{}", file.display());
            assert_eq!(report.counters.abandoned, 0, "{}", file.display());
        }
    }
    assert_eq!(
        settled_netprof_program_count(before),
        before,
        "programs left loaded after bench"
    );
}

/// `netprof overhead` end to end, short: off, always attached and duty-cycled agents in one run,
/// every setting measured in every round, ratios to "off" for each, and nothing of netprof or
/// of its lab left afterwards.
#[test]
fn overhead_compares_agent_settings_side_by_side() {
    let test = "overhead_compares_agent_settings_side_by_side";
    if let Some(reason) = ebpf_skip_reason(&["bpftool", "iperf3", "ab", "nginx"]) {
        print_skip(test, &reason);
        return;
    }
    let _one_at_a_time = KERNEL.lock().unwrap_or_else(|e| e.into_inner());
    let before = loaded_netprof_programs().len();
    let lab = unique_lab_name();
    let scratch = TempPath::new("overhead");
    let out = scratch.path();
    let output = Command::new(netprof_bin())
        .args([
            "overhead",
            "--mode",
            "flannel-hostgw",
            "--rounds",
            "3",
            "--duty",
            "100,50@600",
            "--duty-period-ms",
            "500",
        ])
        .args([
            "--ab-requests",
            "2000",
            "--ab-concurrency",
            "10",
            "--iperf3-seconds",
            "1",
            "--lab",
            &lab,
        ])
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
    let samples = json["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 3 * 3, "3 rounds x (off + 2 settings)");
    let variants: Vec<&str> = strings(&json["variants"], "variant");
    assert_eq!(
        variants,
        ["off", "duty 100%", "duty 50%@600ms"],
        "a setting's own period is in its name"
    );
    // Each variant's figures follow from its raw samples: the middle of its three rounds'
    // QPS, its ratio to off's, and the middle of its per-round ratios to off.
    let qps_of = |variant: &str, round: u64| -> f64 {
        samples
            .iter()
            .find(|s| s["variant"] == variant && s["round"] == round)
            .and_then(|s| s["qps"].as_f64())
            .unwrap_or_else(|| panic!("no sample of {variant} in round {round}"))
    };
    let middle = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[1]
    };
    let rounds = [1, 2, 3];
    let off_qps = middle(rounds.iter().map(|&r| qps_of("off", r)).collect());
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs();
    for v in json["variants"].as_array().unwrap() {
        let name = v["variant"].as_str().unwrap();
        let qps = middle(rounds.iter().map(|&r| qps_of(name, r)).collect());
        assert!(qps > 0.0, "{v}");
        assert!(close(v["qps"].as_f64().unwrap(), qps), "{v}: qps {qps}");
        let ratio = v["qps_ratio"].as_f64().unwrap();
        assert!(close(ratio, qps / off_qps), "{v}: ratio {}", qps / off_qps);
        let paired = middle(
            rounds
                .iter()
                .map(|&r| qps_of(name, r) / qps_of("off", r))
                .collect(),
        );
        assert!(
            close(v["qps_ratio_paired"].as_f64().unwrap(), paired),
            "{v}: paired {paired}"
        );
        // Three paired rounds give an interval around the paired median.
        let (lo, hi) = (
            v["qps_ratio_paired_interval"][0].as_f64().unwrap(),
            v["qps_ratio_paired_interval"][1].as_f64().unwrap(),
        );
        assert!(lo <= paired && paired <= hi, "{v}");
    }
    assert_eq!(json["variants"][0]["qps_ratio"].as_f64(), Some(1.0));
    assert!(stdout.contains("against the targets"), "{stdout}");
    // The always-attached agents ran their programs and bpf_stats timed them.
    let programs = &json["programs"][0];
    assert_eq!(programs["variant"], "duty 100%");
    assert!(
        programs["median_ns_per_run"].as_f64().unwrap() > 0.0,
        "{programs}"
    );
    assert_eq!(
        settled_netprof_program_count(before),
        before,
        "programs left loaded after overhead"
    );
    let leftover = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&leftover.stdout).contains(&format!("netprof-{lab}-")),
        "lab left behind"
    );
}

/// `bench --validate` end to end, short: every check profiles its `a` (and `b` where the
/// prediction needs it, in alternating ping blocks) in every round, each into a directory of
/// its own, and measures both
/// states in alternating rounds with no agent attached (pings in alternating blocks);
/// the one-node rules are really in node 2's FORWARD chain; the report sets each round's
/// difference against the prediction; nothing of netprof or of either lab is left.
#[test]
fn validate_runs_every_check_and_the_report_judges_each() {
    let test = "validate_runs_every_check_and_the_report_judges_each";
    if let Some(reason) = ebpf_skip_reason(&[
        "bpftool",
        "ping",
        "iperf3",
        "ab",
        "nginx",
        "iptables-restore",
    ]) {
        print_skip(test, &reason);
        return;
    }
    let _one_at_a_time = KERNEL.lock().unwrap_or_else(|e| e.into_inner());
    let before = loaded_netprof_programs().len();
    let lab = unique_lab_name();
    let scratch = TempPath::new("validate");
    let out = scratch.path();
    let status = Command::new(netprof_bin())
        .args(["bench", "--modes", "host", "--profile", "--validate"])
        .args([
            "--validate-rounds",
            "3",
            "--validate-one-node-rules",
            "2000",
        ])
        .args(["--validate-ping-count", "100", "--lab", &lab])
        .args(["--ping-count", "20", "--iperf3-seconds", "1"])
        // /proc/stat counts CPU time in 10 ms ticks: 300 requests (~30 ms) could read 0.
        .args(["--ab-requests", "2000", "--ab-concurrency", "10"])
        .arg("--out")
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success());

    let validate: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("validate.json")).unwrap()).unwrap();
    assert_eq!(validate["schema"], "netprof.validate/v2");
    assert_eq!(
        validate["config"]["ping_count"], 100,
        "the validation's own ping"
    );
    let checks = validate["checks"].as_array().unwrap();
    let names: Vec<&str> = checks
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "notrack",
            "no-kube-proxy",
            "one-node-rules",
            "encapsulation"
        ]
    );
    for check in checks {
        let name = check["check"].as_str().unwrap();
        let rounds = check["rounds"].as_array().unwrap();
        assert_eq!(rounds.len(), 3, "{name}");
        let orders: Vec<String> = rounds.iter().map(|r| r["order"].to_string()).collect();
        assert_eq!(
            orders,
            ["[\"a\",\"b\"]", "[\"b\",\"a\"]", "[\"a\",\"b\"]"],
            "{name}"
        );
        for r in rounds {
            for side in ["a", "b"] {
                assert_eq!(r[side]["ping"]["received"], 100, "{name} {side}");
                assert!(
                    r[side]["ab_cpu_ns_per_request"].as_f64().unwrap() > 1000.0,
                    "{name}"
                );
            }
        }
        let sides: Vec<&str> = strings(&check["profiled"], "side");
        let per_round: &[&str] = if ["one-node-rules", "encapsulation"].contains(&name) {
            &["a", "b"]
        } else {
            &["a"]
        };
        assert_eq!(sides, per_round.repeat(3), "{name}: each round profiles");
        let dirs: std::collections::BTreeSet<&str> =
            strings(&check["profiled"], "dir").into_iter().collect();
        assert_eq!(
            dirs.len(),
            sides.len(),
            "{name}: one directory per profiled run"
        );
        for p in check["profiled"].as_array().unwrap() {
            let files: Vec<&str> = strings(&p["profiles"], "file");
            let pings = files.iter().filter(|f| f.contains("-ping-")).count();
            // Each state profiled in 10 ping blocks (alternating with the other state's when
            // both are), a file per block and node, then ab once per state.
            assert_eq!((pings, files.len()), (20, 22), "{name}: {files:?}");
            assert!(files
                .iter()
                .any(|f| f.ends_with("-ping-node2-block10.json")));
            // And pinged as often with every agent detached, in the same turns.
            let off = &p["ping_agents_off"];
            assert_eq!(off["ping"]["received"], 100, "{name}: {off}");
            assert_eq!(off["block_rtts"], serde_json::json!(vec![10; 10]), "{name}");
            assert_eq!(
                off["profiled_block_rtts"],
                serde_json::json!(vec![10; 10]),
                "{name}"
            );
            // Its ab bracketed by two runs with every agent detached.
            let runs = p["ab_agents_off"]["runs"].as_array().unwrap();
            assert_eq!(runs.len(), 2, "{name}: {runs:?}");
            assert!(
                runs.iter().all(|r| r["ab"]["complete_requests"]
                    == p["sample"]["ab"]["complete_requests"]),
                "{name}: {runs:?}"
            );
            for f in files {
                let at = out.join(p["dir"].as_str().unwrap()).join(f);
                assert!(at.is_file(), "{}", at.display());
            }
        }
    }
    assert_eq!(
        checks[2]["rules"], 2000,
        "the rules counted in node 2's chain"
    );
    assert_eq!(
        (checks[3]["mode_a"].as_str(), checks[3]["mode_b"].as_str()),
        (Some("flannel-vxlan"), Some("flannel-hostgw"))
    );
    // The NOTRACK profile is the tracked lab: it has conntrack's bracket and the raw table.
    let notrack_a = &checks[0]["profiled"][0];
    let ping_file = notrack_a["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["tool"] == "ping")
        .unwrap();
    let doc: AgentReport = serde_json::from_str(
        &std::fs::read_to_string(
            out.join(notrack_a["dir"].as_str().unwrap())
                .join(ping_file["file"].as_str().unwrap()),
        )
        .unwrap(),
    )
    .unwrap();
    let stages: Vec<&str> = doc.segments.iter().map(|s| s.stage.name()).collect();
    assert!(
        stages.contains(&"raw") && stages.contains(&"conntrack"),
        "{stages:?}"
    );

    let report = Command::new(netprof_bin())
        .args(["report", "--format", "json"])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    let judged = report["validation"]["checks"].as_array().unwrap();
    assert_eq!(judged.len(), 4);
    for c in judged {
        let rtt = &c["rtt"];
        assert_eq!(rtt["by_round_ns"].as_array().unwrap().len(), 3, "{c}");
        assert!(rtt["interval_ns"].is_array(), "{c}");
        assert!(
            ["within", "outside"].contains(&rtt["verdict"].as_str().unwrap()),
            "{c}"
        );
        assert!(c["cpu"]["predicted_ns"].is_i64(), "{c}");
    }
    // The rules cost something, and the prediction puts it on node 2's filter stage first.
    let rules = &judged[2];
    assert!(
        rules["rtt"]["predicted_ns"].as_i64().unwrap() > 0,
        "{rules}"
    );
    assert_eq!(rules["rtt"]["predicted_by"][0]["node"], "node2", "{rules}");
    assert_eq!(
        rules["rtt"]["predicted_by"][0]["stage"], "filter",
        "{rules}"
    );
    assert!(rules["right_place_pct"].is_f64(), "{rules}");
    assert_eq!(
        settled_netprof_program_count(before),
        before,
        "programs left loaded after bench"
    );
    let leftover = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&leftover.stdout).contains(&lab),
        "lab {lab} (or {lab}-b) left behind"
    );
}

/// The string field `field` of every element of the JSON array `array`.
fn strings<'a>(array: &'a serde_json::Value, field: &str) -> Vec<&'a str> {
    array
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v[field].as_str().unwrap())
        .collect()
}
