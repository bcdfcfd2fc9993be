//! `netprof bench --profile` end to end: the real binary on the real lab with one agent per
//! node; every step leaves a readable agent report per node with exact ping hits, and nothing
//! of netprof stays loaded in the kernel afterwards.

use std::process::Command;

use netprof::agent::AgentReport;
use netprof_tests::{
    ebpf_skip_reason, loaded_netprof_programs, netprof_bin, print_skip, unique_lab_name,
};

const PINGS: u64 = 30;

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
    let out = std::env::temp_dir().join(format!("netprof-profile-{lab}"));
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
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());

    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("flannel-hostgw.json")).unwrap())
            .unwrap();
    let profiles = result["profiles"].as_array().unwrap();
    assert_eq!(profiles.len(), 2 * 3 * 2, "2 paths x 3 tools x 2 nodes");
    for path in ["host_path", "pod_path"] {
        let cpu = result[path]["ab_cpu_ns_per_request"].as_f64().unwrap();
        assert!(cpu > 1_000.0, "{path}: {cpu} ns of CPU per request");
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
            // Each step starts from zero: the uplink saw exactly this step's requests and replies.
            assert_eq!(report.hits("eno1 tc-egress"), PINGS, "{}", file.display());
            assert_eq!(report.hits("eno1 tc-ingress"), PINGS, "{}", file.display());
            assert_eq!(report.counters.abandoned, 0, "{}", file.display());
        }
    }
    assert_eq!(
        loaded_netprof_programs().len(),
        before,
        "programs left loaded after bench"
    );
    let _ = std::fs::remove_dir_all(out);
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
    let out = std::env::temp_dir().join(format!("netprof-overhead-{lab}.json"));
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
        .arg(&out)
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
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let samples = json["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 3 * 3, "3 rounds x (off + 2 settings)");
    let variants: Vec<&str> = json["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["variant"].as_str().unwrap())
        .collect();
    assert_eq!(
        variants,
        ["off", "duty 100%", "duty 50%@600ms"],
        "a setting's own period is in its name"
    );
    for v in json["variants"].as_array().unwrap() {
        let (qps, ratio) = (v["qps"].as_f64().unwrap(), v["qps_ratio"].as_f64().unwrap());
        assert!(qps > 0.0 && ratio > 0.0 && ratio < 2.0, "{v}");
        // Three paired rounds give an interval around the paired median.
        let (lo, hi) = (
            v["qps_ratio_paired_interval"][0].as_f64().unwrap(),
            v["qps_ratio_paired_interval"][1].as_f64().unwrap(),
        );
        let paired = v["qps_ratio_paired"].as_f64().unwrap();
        assert!(lo <= paired && paired <= hi, "{v}");
    }
    assert!(stdout.contains("against the targets"), "{stdout}");
    // The always-attached agents ran their programs and bpf_stats timed them.
    let programs = &json["programs"][0];
    assert_eq!(programs["variant"], "duty 100%");
    assert!(
        programs["median_ns_per_run"].as_f64().unwrap() > 0.0,
        "{programs}"
    );
    assert_eq!(
        loaded_netprof_programs().len(),
        before,
        "programs left loaded after overhead"
    );
    let leftover = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&leftover.stdout).contains(&format!("netprof-{lab}-")),
        "lab left behind"
    );
    let _ = std::fs::remove_file(out);
}

/// `bench --validate` end to end, short: every variant in every round, the base with an empty
/// raw table (its profiles have the raw stage, so NOTRACK adds nothing
/// but its rules), and a report whose two checks pair the rounds.
#[test]
fn validate_runs_every_variant_and_the_report_pairs_the_rounds() {
    let test = "validate_runs_every_variant_and_the_report_pairs_the_rounds";
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
    let out = std::env::temp_dir().join(format!("netprof-validate-{lab}"));
    let status = Command::new(netprof_bin())
        .args([
            "bench",
            "--modes",
            "host",
            "--profile",
            "--validate",
            "--validate-rounds",
            "2",
            "--lab",
            &lab,
        ])
        .args([
            "--validate-ping-count",
            "100",
            "--sweep-services",
            "0",
            "--ping-count",
            "20",
        ])
        .args([
            "--iperf3-seconds",
            "1",
            "--ab-requests",
            "300",
            "--ab-concurrency",
            "10",
        ])
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());

    let validate: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("validate.json")).unwrap()).unwrap();
    assert_eq!(
        validate["config"]["ping_count"], 100,
        "the validation's own ping"
    );
    let runs: Vec<(String, u64)> = validate["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["variant"].as_str().unwrap().to_owned(),
                r["round"].as_u64().unwrap(),
            )
        })
        .collect();
    let order: Vec<&str> = runs.iter().map(|(v, _)| v.as_str()).collect();
    // base and notrack alternate on one lab (NOTRACK switched in place), then no-kube-proxy
    // (a lab each), then the sweep.
    assert_eq!(
        order,
        [
            "base",
            "notrack",
            "notrack",
            "base",
            "no-kube-proxy",
            "no-kube-proxy",
            "services"
        ],
        "{runs:?}"
    );
    let rounds: Vec<u64> = runs.iter().map(|(_, r)| *r).collect();
    assert_eq!(rounds, [0, 0, 1, 1, 0, 1, 0]);
    for run in validate["runs"].as_array().unwrap() {
        assert_eq!(run["ping"]["received"], 100, "{}", run["variant"]);
        // nginx through the NodePort in the sweep only (its rules are what it measures), straight
        // to the pod elsewhere; every run measured the CPU time of its requests.
        let via_node_port = run["http_target"].as_str().unwrap().ends_with(":30001");
        assert_eq!(
            via_node_port,
            run["variant"] == "services",
            "{}",
            run["http_target"]
        );
        assert!(run["ab"]["complete_requests"].as_u64().unwrap() > 0);
        assert!(
            run["ab_cpu_ns_per_request"].as_f64().unwrap() > 1000.0,
            "{}",
            run["ab_cpu_ns_per_request"]
        );
        let stages: Vec<String> = run["profiles"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["tool"] == "ping")
            .flat_map(|p| {
                let file = out
                    .join(run["dir"].as_str().unwrap())
                    .join(p["file"].as_str().unwrap());
                let report: AgentReport =
                    serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
                report
                    .segments
                    .iter()
                    .map(|s| s.stage.name().to_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
        let has_raw = stages.iter().any(|s| s == "raw");
        match run["variant"].as_str().unwrap() {
            "base" | "notrack" => assert!(
                has_raw,
                "{}: no raw table stage in {stages:?}",
                run["variant"]
            ),
            "no-kube-proxy" => assert!(
                !has_raw && !stages.iter().any(|s| s == "conntrack"),
                "{stages:?}"
            ),
            _ => assert!(!has_raw, "the sweep runs the lab as built"),
        }
    }

    let report = Command::new(netprof_bin())
        .args(["report", "--format", "json"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    let checks = report["validation"]["checks"].as_array().unwrap();
    for (check, ablation) in checks.iter().zip(["notrack", "no-kube-proxy"]) {
        assert_eq!(check["ablation"], ablation);
        assert_eq!(
            check["measured_by_round_ns"].as_array().unwrap().len(),
            2,
            "{check}"
        );
        assert_eq!(
            check["added_ns"], 0,
            "the base has the raw table too: {check}"
        );
    }
    assert!(
        checks[1]["hook_edge_probes_ns"].as_i64().unwrap() > 0,
        "{}",
        checks[1]
    );
    for check in checks {
        let cpu = &check["qps"]["cpu"];
        assert_eq!(
            cpu["measured_by_round_ns"].as_array().unwrap().len(),
            2,
            "{check}"
        );
        assert!(cpu["predicted_gain_ns"].as_i64().unwrap() > 0, "{cpu}");
    }
    assert_eq!(
        loaded_netprof_programs().len(),
        before,
        "programs left loaded after bench"
    );
    let leftover = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&leftover.stdout).contains(&lab),
        "lab {lab} left behind"
    );
    let _ = std::fs::remove_dir_all(out);
}
