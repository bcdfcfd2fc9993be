//! `netprof bench --profile` end to end: the real binary on the real lab with one agent per
//! node; every step leaves a readable agent report per node with exact ping hits, and nothing
//! of netprof stays loaded in the kernel afterwards.

use std::process::Command;

use netprof::agent::AgentReport;
use netprof_tests::{ebpf_skip_reason, loaded_netprof_programs, netprof_bin, print_skip, unique_lab_name};

const PINGS: u64 = 30;

#[test]
fn profile_writes_a_report_per_step_and_node() {
    if let Some(reason) = ebpf_skip_reason(&["bpftool", "ping", "iperf3", "ab", "nginx"]) {
        print_skip("profile_writes_a_report_per_step_and_node", &reason);
        return;
    }
    let before = loaded_netprof_programs().len();
    let lab = unique_lab_name();
    let out = std::env::temp_dir().join(format!("netprof-profile-{lab}"));
    let status = Command::new(netprof_bin())
        .args(["bench", "--modes", "flannel-hostgw", "--profile", "--lab", &lab])
        .args(["--ping-count", &PINGS.to_string(), "--iperf3-seconds", "1", "--ab-requests", "500", "--ab-concurrency", "10"])
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());

    let result: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("flannel-hostgw.json")).unwrap()).unwrap();
    let profiles = result["profiles"].as_array().unwrap();
    assert_eq!(profiles.len(), 2 * 3 * 2, "2 paths x 3 tools x 2 nodes");
    for entry in profiles {
        let file = out.join(entry["file"].as_str().unwrap());
        let report: AgentReport = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(report.schema, netprof::agent::SCHEMA);
        assert!(report.counters.admitted > 0, "{}: nothing admitted", file.display());
        if entry["tool"] == "ping" {
            // Each step starts from zero: the uplink saw exactly this step's requests and replies.
            assert_eq!(report.hits("eno1 tc-egress"), PINGS, "{}", file.display());
            assert_eq!(report.hits("eno1 tc-ingress"), PINGS, "{}", file.display());
            assert_eq!(report.counters.abandoned, 0, "{}", file.display());
        }
    }
    assert_eq!(loaded_netprof_programs().len(), before, "programs left loaded after bench");
    let _ = std::fs::remove_dir_all(out);
}
