//! `netprof overhead --calibrate DIR` end to end on flannel-vxlan: the real binary, a lab of its
//! own, rounds without programs, with held programs and with netprof; `DIR/calibration.json`
//! holds every field the report reads, the runs per RTT counted exactly from the checkpoints'
//! hits, and the report's reader accepts it; `--calibrate-append` adds rounds to it; `--hooks`
//! with some families goes to `--out`, never to DIR. Nothing of netprof stays loaded afterwards.

use std::process::Command;

use netprof_tests::{
    ebpf_skip_reason, loaded_netprof_programs, netprof_bin, print_skip, unique_lab_name, TempPath,
};

#[test]
fn calibration_writes_every_field_with_exact_run_counts() {
    let test = "calibration_writes_every_field_with_exact_run_counts";
    if let Some(reason) = ebpf_skip_reason(&["bpftool", "ping", "ab", "nginx"]) {
        print_skip(test, &reason);
        return;
    }
    let before = loaded_netprof_programs().len();
    let scratch = TempPath::new("calibration");
    let dir = scratch.path();
    let lab = unique_lab_name();
    // One round, short ab.
    let calibrate = |extra: &[&str]| {
        Command::new(netprof_bin())
            .args(["overhead", "--calibrate"])
            .arg(dir)
            .args([
                "--rounds",
                "1",
                "--ab-requests",
                "300",
                "--ab-concurrency",
                "4",
            ])
            .args(["--lab", &lab])
            .args(extra)
            .output()
            .unwrap()
    };
    let output = calibrate(&[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("per run, followed:"), "{stdout}");
    assert!(stdout.contains("target <= 80 ns"), "{stdout}");
    assert!(stdout.contains("against no programs"), "{stdout}");
    assert!(stdout.contains("(target <= 1.15x: "), "{stdout}");

    // An empty DIR holds no run to take intervals from: the default 2 ms.
    let path = dir.join("calibration-2ms.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(doc["schema"], "netprof.calibration/v1");
    assert_eq!(doc["mode"], "flannel-vxlan");
    assert_eq!(doc["rounds"], 1);
    assert_eq!(doc["ping_interval_s"], 0.002);
    // netprof calibrated as profiled steps run it: bpf_stats in slices of 10%.
    assert_eq!(doc["stats_share"], 10);
    // One round: off, paused and netprof once each.
    let samples = doc["samples"].as_array().unwrap();
    let variants: Vec<&str> = samples
        .iter()
        .map(|s| s["variant"].as_str().unwrap())
        .collect();
    assert_eq!(variants, ["off", "paused", "netprof"]);
    for s in samples {
        assert!(s["followed_p50_ns"].as_f64().unwrap() > 0.0, "{s}");
        assert!(s["untracked_p50_ns"].as_f64().unwrap() > 0.0, "{s}");
    }
    // Pings are followed at every tc hook of the path: on flannel-vxlan each node's pod eth0,
    // veth, bridge, vxlan and uplink, in both directions, twice (request and reply) per RTT
    // over the two nodes. Hits are exact, so the runs per RTT are whole numbers.
    let followed = doc["runs"]["followed"].as_object().unwrap();
    for kind in ["tc-ingress", "tc-egress", "netfilter", "consumed"] {
        let runs = followed[kind]["runs_per_rtt"].as_f64().unwrap();
        assert!(
            runs >= 1.0 && runs.fract() == 0.0,
            "{kind}: {runs} runs per RTT"
        );
    }
    assert_eq!(
        followed["tc-ingress"]["runs_per_rtt"], followed["tc-egress"]["runs_per_rtt"],
        "every tc hook a ping crosses on the way in it crosses on the way out"
    );
    // Two journeys (request, reply) per RTT on each of the two nodes, each ending once
    // (consumed, or freed with a reason: the raw socket's ping reads a clone).
    assert_eq!(followed["consumed"]["runs_per_rtt"], 4.0);
    let per_run = doc["per_run"].as_object().unwrap();
    assert_eq!(
        per_run.keys().collect::<Vec<_>>(),
        followed.keys().collect::<Vec<_>>()
    );
    for (kind, cost) in per_run {
        for field in ["followed_ns", "untracked_ns", "dispatch_ns"] {
            let i = &cost[field];
            let (lo, m, hi) = (
                i["lo"].as_f64().unwrap(),
                i["median"].as_f64().unwrap(),
                i["hi"].as_f64().unwrap(),
            );
            assert!(0.0 <= lo && lo <= m && m <= hi, "{kind}.{field}: {i}");
        }
    }
    for field in [
        "rtt_shift_ns",
        "untracked_rtt_shift_ns",
        "dispatch_rtt_ns",
        "body_rtt_ns",
    ] {
        assert!(doc[field]["median"].is_number(), "{field}");
    }
    // Each variant against `off`: one round, so each interval is a point, the round's own
    // ratio (noise can put it under 1, never near 0).
    let ratio_of = |variant: &str, field: &str| {
        let of = |v: &str| {
            samples.iter().find(|s| s["variant"] == v).unwrap()[field]
                .as_f64()
                .unwrap()
        };
        of(variant) / of("off")
    };
    for (key, variant) in [("held_rtt", "paused"), ("netprof_rtt", "netprof")] {
        let r = &doc["ratios"][key];
        let median = r["median"].as_f64().unwrap();
        assert_eq!(r["lo"], r["median"], "{key}: {r}");
        assert!(
            (median - ratio_of(variant, "followed_p50_ns")).abs() < 1e-9,
            "{key}: {r}"
        );
        assert!(median > 0.5, "{key}: {r}");
    }
    if samples[0]["cpu_ns_per_request"].is_number() {
        let held = doc["ratios"]["held_cpu"]["median"].as_f64().unwrap();
        assert!((held - ratio_of("paused", "cpu_ns_per_request")).abs() < 1e-9);
    }
    // The report's reader takes it as it is.
    netprof::report::calibration::load(&path).unwrap();

    // `--calibrate-append` adds a round after the first (a demo calibrates between its
    // repeats): round 2's three variants join round 1's, which stay as they were.
    let output = calibrate(&["--calibrate-append"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let appended: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(appended["rounds"], 2);
    let rounds: Vec<u64> = appended["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["round"].as_u64().unwrap())
        .collect();
    assert_eq!(rounds, [1, 1, 1, 2, 2, 2]);
    assert_eq!(appended["samples"][0], doc["samples"][0]);
    // Rounds measured another way are refused, the file left as it was.
    let output = calibrate(&["--calibrate-append", "--no-stats"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("stats_share") && stderr.contains("--calibrate-append"),
        "{stderr}"
    );
    let after: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(after, appended);

    // Some families alone: what they cost, printed and written to --out, DIR left alone.
    // Admission is at tc, so netfilter and the free tracers alone follow nothing: their runs
    // per RTT are the programs' run counts over the pod path's pings.
    let nf_file = TempPath::new("calibration-nf");
    let output = calibrate(&["--hooks", "nf,trace", "--out", nf_file.as_str()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("for comparison only"), "{stderr}");
    let nf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(nf_file.path()).unwrap()).unwrap();
    let kinds: Vec<&String> = nf["per_run"].as_object().unwrap().keys().collect();
    assert_eq!(kinds, ["consumed", "netfilter"], "{nf}");
    assert!(
        nf["runs"]["followed"]["netfilter"]["runs_per_rtt"]
            .as_f64()
            .unwrap()
            >= 1.0
    );
    let after: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(after, appended, "DIR's calibration is not the families'");
    let output = calibrate(&["--hooks", "nf", "--calibrate-append"]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("only default --hooks"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        loaded_netprof_programs().len(),
        before,
        "every program detached and unloaded"
    );
}
