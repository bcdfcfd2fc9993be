//! `netprof report` against known answers: a run directory whose every number is chosen by
//! hand (`report/known_run.rs`: asymmetric nodes, a segment on one node only, a node attached
//! half the time, sampled flows, a calibration), with the expected split, shares, netprof's
//! share and QPS prediction worked out here on paper. The golden files hold the layout of that
//! run's text and Markdown and are themselves checked against the known numbers. Then bad
//! input, refused with the file and the field; a recorded real run (tests/fixtures/report/run)
//! that must load and render; and the HTML in headless Chromium. No root needed.
//!
//! Regenerate the golden files after an intended layout change with
//! `NETPROF_UPDATE_GOLDEN=1 cargo test -p netprof-tests --test report`, and read the diff.

#[path = "report/known_run.rs"]
mod known_run;

use std::fs;
use std::path::{Path, PathBuf};

use netprof::report::category::Category;
use netprof::report::split::Measure;
use netprof::report::{self, render, render::Format, InputError};
use netprof::rundir::Node;

/// Relative, so the report's `source` line is the same on every machine (tests run in tests/).
const RUN: &str = "fixtures/report/run";
const GOLDEN: &str = "fixtures/report/golden";

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn known(name: &str) -> (Scratch, report::Report) {
    let dir = Scratch(known_run::write_known_run(name));
    let mut report = report::from_dir(&dir.0).expect("the known run loads");
    report.source = "known-run".to_owned();
    (dir, report)
}

fn stage(split: &report::split::Split, c: Category) -> &report::split::StageShare {
    split.stages.iter().find(|s| s.stage == c).unwrap()
}

/// The headline split, worked out by hand (ns per RTT; `known_run.rs` has the inputs).
/// Each segment less the calibrated probe it holds, (from + to) / 2:
/// - veth (dev-tx 50, dev-rx 50): node 1 (2000 - 50) × 2 passes = 3900; node 2
///   (520 - 50) × 1000 passes / 500 RTTs covered (attached half the time) = 940;
/// - bridge (tc-ingress 70, tc-egress 70), node 1 only: (1000 - 70) × 2 = 1860;
/// - filter (netfilter 30 each end): node 1 (40 - 30) × 2.1 = 21, node 2 (1200 - 30) × 1.9
///   = 2223; the two nodes' pooled histogram has its median at 40 ns, which gave 162 ns;
/// - uplink: 940 per node on both sides: 0.
///
/// Explained 8944 against the p50 delta without agents, 59 - 49 µs = 10000: unexplained 1056,
/// shares 89.44% and 10.56%.
#[test]
fn the_split_without_netprof_is_the_hand_computed_one() {
    let (_dir, report) = known("split");
    assert_eq!(report.latency.len(), 1);
    let l = &report.latency[0];
    assert_eq!(l.mode, "flannel-hostgw");
    let s = &l.clean;
    assert_eq!(s.measure, Measure::CleanP50);
    assert_eq!(
        (s.mode_ns, s.baseline_ns, s.delta_ns),
        (59_000, 49_000, 10_000)
    );
    let veth = stage(s, Category::Veth);
    assert_eq!((veth.node(Node::One), veth.node(Node::Two)), (3900, 940));
    let bridge = stage(s, Category::Bridge);
    assert_eq!((bridge.node(Node::One), bridge.node(Node::Two)), (1860, 0));
    let filter = stage(s, Category::Filter);
    assert_eq!((filter.node(Node::One), filter.node(Node::Two)), (21, 2223));
    assert_eq!(filter.delta_ns, 2244);
    assert_eq!(stage(s, Category::Uplink).mode_ns, 1880);
    assert_eq!(stage(s, Category::Uplink).delta_ns, 0);
    assert_eq!(s.explained_ns, 8944);
    assert_eq!(s.unexplained_ns, 1056);
    assert!((s.explained_pct.unwrap() - 89.44).abs() < 1e-9);
    assert!((s.unexplained_pct.unwrap() - 10.56).abs() < 1e-9);
    let by_node: Vec<i64> = s.explained_by_node.iter().map(|n| n.delta_ns).collect();
    assert_eq!(by_node, [5781, 3163]);
}

/// As profiled (medians as measured, netprof inside): veth 4000 + 1040, bridge 2000, filter
/// 84 + 2280; explained 9404 of 60 - 50 µs. netprof's probes per RTT: checkpoints passed ×
/// cost per run; node 1: dev-rx 3 × 50 + tc-ingress 3 × 70 + dev-tx 2 × 50 + tc-egress 2 × 70 +
/// netfilter 4.2 × 30 = 726; node 2 (counts cover 500 RTTs): dev-rx 3 × 50 + tc-ingress 1 ×
/// 70 + dev-tx 2 × 50 + netfilter 3.8 × 30 = 434; the baseline 2 × (50 + 70) = 240: 920 of the
/// delta. With the costs' low and high ends: 920 - 280 = 640 and 1440 - 200 = 1240.
/// p99 by means (the same single-bucket values): 9404 of 80 - 60 µs.
#[test]
fn the_profiled_split_and_netprofs_share_are_the_hand_computed_ones() {
    let (_dir, report) = known("profiled");
    let l = &report.latency[0];
    let p = &l.profiled;
    assert_eq!(p.delta_ns, 10_000);
    assert_eq!(stage(p, Category::Veth).delta_ns, 5040);
    assert_eq!(stage(p, Category::Bridge).delta_ns, 2000);
    let filter = stage(p, Category::Filter);
    assert_eq!((filter.node(Node::One), filter.node(Node::Two)), (84, 2280));
    assert_eq!(p.explained_ns, 9404);
    assert_eq!(l.probes.mode_ns.median, 1160.0);
    assert_eq!(l.probes.baseline_ns.median, 240.0);
    let d = l.probes.delta_ns;
    assert_eq!((d.median, d.lo, d.hi), (920.0, 640.0, 1240.0));
    assert_eq!(l.p99.delta_ns, 20_000);
    assert_eq!(l.p99.explained_ns, 9404);
    assert_eq!(l.p99.unexplained_ns, 10_596);
}

/// nginx: the baseline without agents serves 10000 QPS on 2 CPUs, 200 µs of cpu time per
/// request. Extra per request, means less probes: node 1 veth (2000 - 50) × 4 passes (20000
/// counted, 1 flow in 2 followed, 10000 requests) = 7800, node 2 (520 - 50) × 4 = 1880;
/// uplink 2 passes × 940 on both sides: 0. Extra 9680 ns: predicted 2 / 209.68 µs = 9538.34
/// QPS against 8000 measured (+19.23%). Measured CPU per request 150 -> 170 µs: 48.4% of the
/// 20 µs explained; at the baseline's busy share, 10000 × 150 / 159.68 = 9393.79 QPS.
#[test]
fn the_qps_prediction_is_the_hand_computed_one() {
    let (_dir, report) = known("qps");
    let t = &report.throughput[0];
    assert!(t.measured_without_agents);
    assert_eq!((t.baseline_qps, t.measured_qps), (10_000.0, 8000.0));
    assert_eq!(t.extra_ns_per_request, 9680);
    let veth = stage(&t.split, Category::Veth);
    assert_eq!((veth.node(Node::One), veth.node(Node::Two)), (7800, 1880));
    assert!(
        (t.predicted_qps - 9538.344).abs() < 0.001,
        "{}",
        t.predicted_qps
    );
    assert!((t.prediction_error_pct - 19.2293).abs() < 0.001);
    let cpu = t.cpu.unwrap();
    assert_eq!(cpu.measured_extra_ns, 20_000.0);
    assert!((cpu.explained_pct.unwrap() - 48.4).abs() < 1e-9);
    assert!(
        (cpu.predicted_qps - 9393.788).abs() < 0.001,
        "{}",
        cpu.predicted_qps
    );
    assert!(report
        .notes
        .iter()
        .any(|n| n.contains("flannel-hostgw") && n.contains("1 in N flows")));
}

/// The known run pings 2 ms apart. Beside its 2 ms calibration, one at 10 ms with ten times
/// the netfilter cost changes nothing: the split takes the calibration of its own interval.
/// With only the 10 ms one left, the split takes it (less explained: more probe time taken
/// out) and a note says the intervals differ.
#[test]
fn the_split_takes_the_calibration_of_its_own_ping_interval() {
    let (dir, alone) = known("own-interval");
    let two_ms: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.0.join("calibration.json")).unwrap()).unwrap();
    let mut ten_ms = two_ms.clone();
    ten_ms["ping_interval_s"] = serde_json::json!(0.01);
    for field in ["followed_ns", "untracked_ns", "dispatch_ns"] {
        ten_ms["per_run"]["netfilter"][field] =
            serde_json::json!({"median": 300.0, "lo": 200.0, "hi": 450.0});
    }
    fs::write(dir.0.join("calibration-10ms.json"), ten_ms.to_string()).unwrap();
    let both = report::from_dir(&dir.0).unwrap();
    assert_eq!(both.latency[0].clean, alone.latency[0].clean);
    assert_eq!(
        both.calibration.as_ref().unwrap().ping_interval_ms,
        Some(2.0)
    );
    assert!(!both.notes.iter().any(|n| n.contains("the calibration (")));
    fs::remove_file(dir.0.join("calibration.json")).unwrap();
    let other = report::from_dir(&dir.0).unwrap();
    assert!(
        other.latency[0].clean.explained_ns < alone.latency[0].clean.explained_ns,
        "{} vs {}",
        other.latency[0].clean.explained_ns,
        alone.latency[0].clean.explained_ns
    );
    assert_eq!(
        other.calibration.as_ref().unwrap().ping_interval_ms,
        Some(10.0)
    );
    assert!(
        other
            .notes
            .iter()
            .any(|n| n.contains("2 ms apart") && n.contains("calibration-10ms.json")),
        "{:#?}",
        other.notes
    );
}

/// Three repeats of the known run, each with its twin without agents measuring the pod p50 at
/// `clean_p50_us[k]`; `edit` changes each repeat's directory before it moves into place.
fn known_repeats(name: &str, clean_p50_us: [f64; 3], edit: impl Fn(&Path)) -> Scratch {
    let root =
        Scratch(std::env::temp_dir().join(format!("netprof-known-{name}-{}", std::process::id())));
    let _ = fs::remove_dir_all(&root.0);
    for (k, p50_us) in (1..).zip(clean_p50_us) {
        let one = Scratch(known_run::write_known_run(&format!("{name}{k}")));
        edit_json(&one.0.join("clean/flannel-hostgw.json"), |doc| {
            doc["pod_path"]["ping"]["stats"]["p50_ms"] = serde_json::json!(p50_us / 1e3);
            doc["pod_path"]["ping"]["stats"]["p90_ms"] = serde_json::json!(p50_us / 1e3);
        });
        edit(&one.0);
        if k == 1 {
            fs::create_dir_all(&root.0).unwrap();
            fs::rename(
                one.0.join("calibration.json"),
                root.0.join("calibration.json"),
            )
            .unwrap();
        } else {
            fs::remove_file(one.0.join("calibration.json")).unwrap();
        }
        fs::rename(&one.0, root.0.join(format!("repeat-{k}"))).unwrap();
    }
    root
}

/// Three repeats whose runs without agents measured the pod p50 at 59, 65 and 61 µs (the
/// baseline at 49): deltas 10, 16 and 12 µs. The stages are the same in each (8944), so the
/// median split explains 8944 of the median delta 12000: 25.47% unexplained, beside each
/// repeat's own 10.56%, 44.10% and 25.47%.
#[test]
fn repeats_are_judged_on_their_medians() {
    let root = known_repeats("repeats", [59.0, 65.0, 61.0], |_| {});
    let report = report::from_dir(&root.0).unwrap();
    assert_eq!(report.run.repeats, 3);
    let s = &report.latency[0].clean;
    assert_eq!(
        (s.delta_ns, s.explained_ns, s.unexplained_ns),
        (12_000, 8944, 3056)
    );
    let r = report.repeats.as_ref().unwrap();
    let m = &r.modes[0];
    assert_eq!(m.delta_by_repeat, [10_000, 16_000, 12_000]);
    let shares: Vec<String> = m
        .unexplained_pct_by_repeat
        .iter()
        .map(|p| format!("{:.2}", p.unwrap()))
        .collect();
    assert_eq!(shares, ["10.56", "44.10", "25.47"]);
    assert_eq!(
        format!("{:.2}", m.unexplained_pct_of_medians.unwrap()),
        "25.47"
    );
    let filter = m
        .stages
        .iter()
        .find(|s| s.stage == Category::Filter)
        .unwrap();
    assert_eq!((filter.median, filter.min, filter.max), (2244, 2244, 2244));
    // The table without agents is the median of the repeats: 61 µs.
    let clean = report.clean_table.as_ref().unwrap();
    assert_eq!(clean[1].values.ping_p50_ms, Some(0.061));
}

/// Repeats whose profiled passes pinged with the agents detached: each repeat's detached delta
/// is 7920 ns (`pinged_detached`), so is their median; the median split explains 8729
/// (`the_probes_cost_what_the_pass_measured_with_the_agents_detached`), 809 more than it, and
/// the median clean delta (12000, as in `repeats_are_judged_on_their_medians`) is 4080 above.
#[test]
fn repeats_set_the_median_split_against_the_median_detached_delta() {
    let root = known_repeats("detached-repeats", [59.0, 65.0, 61.0], pinged_detached);
    let report = report::from_dir(&root.0).unwrap();
    let l = &report.latency[0];
    assert_eq!((l.clean.delta_ns, l.clean.explained_ns), (12_000, 8729));
    let d = l.detached.expect("every repeat pinged detached");
    assert_eq!(
        (d.delta_ns, d.unexplained_ns, d.between_passes_ns),
        (7920, -809, Some(4080))
    );
    let m = &report.repeats.as_ref().unwrap().modes[0];
    assert_eq!(m.detached_delta_by_repeat, [Some(7920); 3]);
    let text = render::render(&report, Format::Table);
    assert!(
        text.lines()
            .any(|l| l.starts_with("delta, agents detached ") && l.contains("+7.9 [+7.9..+7.9]")),
        "{text}"
    );
}

/// A run without agents whose modes ran side by side (their labs up at once, every path pinged
/// in turns) says so where its table starts; the known run's own twin ran one mode at a time
/// and says nothing of the kind (the golden files hold it).
#[test]
fn the_table_without_agents_says_its_modes_were_pinged_side_by_side() {
    let dir = Scratch(known_run::write_known_run("side-by-side"));
    for (mode, other) in [("host", "flannel-hostgw"), ("flannel-hostgw", "host")] {
        let clean = dir.0.join(format!("clean/{mode}.json"));
        let mut doc: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&clean).unwrap()).unwrap();
        doc["pinged_with"] = serde_json::json!([other]);
        doc["config"]["ping_blocks"] = serde_json::json!(10);
        fs::write(&clean, doc.to_string()).unwrap();
    }
    let report = report::from_dir(&dir.0).unwrap();
    let s = report.clean_pings_side_by_side.unwrap();
    assert_eq!((s.modes, s.paths, s.blocks), (2, 3, 10));
    let text = render::render(&report, Format::Table);
    assert!(
        text.contains("All 2 modes' labs were up at once and their 3 paths were pinged in turns (10 blocks each)"),
        "{text}"
    );
}

/// A paired check whose `b` run is missing from `validate.json` is not dropped: the report
/// names it as not judged and why, and judges the other check.
#[test]
fn a_check_that_cannot_be_judged_is_named_with_its_reason() {
    let dir = Scratch(known_run::write_known_run("unjudged"));
    known_run::write_known_validation(&dir.0);
    let path = dir.0.join("validate.json");
    let mut doc: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    doc["checks"][1]["profiled"].as_array_mut().unwrap().pop();
    fs::write(&path, doc.to_string()).unwrap();
    let report = report::from_dir(&dir.0).unwrap();
    let v = report.validation.as_ref().unwrap();
    assert_eq!(v.checks.len(), 1);
    assert_eq!(v.unjudged.len(), 1);
    assert!(
        v.unjudged[0]
            .why
            .contains("1 profiled run(s) of a and 0 of b"),
        "{:?}",
        v.unjudged
    );
    let text = render::render(&report, Format::Table);
    assert!(
        text.contains("one-node-rules: NOT JUDGED: 1 profiled run(s) of a and 0 of b"),
        "{text}"
    );
}

/// The checks against ground truth, worked out by hand (inputs in `known_run.rs`), with the
/// calibrated 30 ns per netfilter probe run (15 ns at each end of a segment):
/// - one-node-rules, ping: node 2's filter (1200 - 30) × 2 in `a` against (40 - 30) × 2 in
///   `b`: 2320 ns, node 1 unchanged. Measured: the median of 1800, 2000, 2200, 2400, 2600,
///   3100 = 2300. Bound: 30% of 2320 is 696, under the 2 µs floor: within, -0.86%; 2320 of
///   the 2300 measured are predicted in node 2's filter stage: 100.87%.
///   CPU: (1170 - 10) × 4 passes per request = 4640 against a median of 5100: within, +9.91%.
/// - notrack, ping: conntrack above its hook's empty-bracket floor (40 - 30 = 10): node 1
///   (1000 - 30 - 10) × 1 = 960, node 2 (2000 - 30 - 10) × 1 = 1960: 2920 against 2800.
///   CPU: the same × 2 passes per request: 5840 against 8500: outside (bound 2000).
#[test]
fn ground_truth_checks_are_judged_as_worked_out_by_hand() {
    use netprof::report::validation::Verdict;
    let dir = Scratch(known_run::write_known_run("validate"));
    known_run::write_known_validation(&dir.0);
    let report = report::from_dir(&dir.0).unwrap();
    let v = report.validation.as_ref().expect("validate.json is read");
    assert_eq!(v.checks.len(), 2);
    let notrack = &v.checks[0];
    assert_eq!(notrack.rtt.predicted_ns, 2920);
    let by: Vec<(Node, Category, i64)> = notrack
        .rtt
        .predicted_by
        .iter()
        .map(|n| (n.node, n.stage, n.ns))
        .collect();
    assert_eq!(
        by,
        [
            (Node::Two, Category::Conntrack, 1960),
            (Node::One, Category::Conntrack, 960)
        ]
    );
    assert_eq!(
        (notrack.rtt.measured_ns, notrack.rtt.verdict),
        (2800, Verdict::Within)
    );
    let cpu = notrack.cpu.as_ref().unwrap();
    assert_eq!(
        (cpu.predicted_ns, cpu.measured_ns, cpu.verdict),
        (5840, 8500, Verdict::Outside)
    );
    let rules = &v.checks[1];
    assert_eq!(rules.rtt.predicted_ns, 2320);
    assert_eq!(
        rules.rtt.predicted_by.len(),
        1,
        "node 1 unchanged: {:?}",
        rules.rtt.predicted_by
    );
    assert_eq!((rules.rtt.measured_ns, rules.rtt.bound_ns), (2300, 2000));
    assert_eq!(rules.rtt.verdict, Verdict::Within);
    assert_eq!(format!("{:.2}", rules.rtt.error_pct.unwrap()), "-0.86");
    assert_eq!(format!("{:.2}", rules.right_place_pct.unwrap()), "100.87");
    let (lo, hi) = rules.rtt.interval_ns.unwrap();
    assert!(
        lo >= 1800 && hi <= 3100 && lo <= 2300 && 2300 <= hi,
        "{lo}..{hi}"
    );
    let cpu = rules.cpu.as_ref().unwrap();
    assert_eq!(
        (cpu.predicted_ns, cpu.measured_ns, cpu.verdict),
        (4640, 5100, Verdict::Within)
    );
    let text = render::render(&report, Format::Table);
    let section = &text[text.find("Ground truth").unwrap()..];
    assert_eq!(row(section, "one-node-rules  ping")[4..6], ["+2.3", "+2.3"]);
    assert!(section.contains("OUTSIDE"), "{section}");
}

/// The notrack check's `a` with ab also run with the agents detached around its profiled ab:
/// 150000 ns of CPU per request profiled, 149040 in both detached runs, so netprof cost 960 ns
/// per request where the calibration's per-run costs say 16 netfilter runs per request × 30 =
/// 480: 480 beyond the runs, out of the 149520 ns of CPU work per request net of them, a share
/// of 0.32% that every part of the request loses: conntrack node 1 970 × 0.9968 = 966.9 above
/// a floor of 10 × 0.9968 = 10.0, × 2 passes = 1914; node 2 (1963.7 - 10.0) × 2 = 3907; 5821
/// in all (5840 with the calibration alone). A negative detached
/// CPU time is refused with its field named.
#[test]
fn a_ground_truth_cpu_prediction_takes_out_what_its_pass_measured_netprof_to_cost() {
    use netprof::report::validation::Verdict;
    let dir = Scratch(known_run::write_known_run("validate-ab-off"));
    known_run::write_known_validation(&dir.0);
    let path = dir.0.join("validate.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let profiled = &mut v["checks"][0]["profiled"][0];
    let run =
        serde_json::json!({"ab": profiled["sample"]["ab"].clone(), "cpu_ns_per_request": 149040.0});
    profiled["ab_agents_off"] = serde_json::json!({"runs": [run.clone(), run]});
    fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
    let report = report::from_dir(&dir.0).unwrap();
    let cpu = report.validation.as_ref().unwrap().checks[0]
        .cpu
        .clone()
        .unwrap();
    assert_eq!(
        (cpu.predicted_ns, cpu.measured_ns, cpu.verdict),
        (5821, 8500, Verdict::Outside)
    );

    v["checks"][0]["profiled"][0]["ab_agents_off"]["runs"][1]["cpu_ns_per_request"] =
        serde_json::json!(-1.0);
    fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
    let err = report::from_dir(&dir.0).unwrap_err().to_string();
    assert!(
        err.contains("validate.json")
            && err.contains("profiled[0].ab_agents_off.runs[1].cpu_ns_per_request"),
        "{err}"
    );
}

fn golden(name: &str, actual: &str) -> String {
    let path = Path::new(GOLDEN).join(name);
    if std::env::var_os("NETPROF_UPDATE_GOLDEN").is_some() {
        fs::create_dir_all(GOLDEN).unwrap();
        fs::write(&path, actual).unwrap();
    }
    let expected = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (create it with NETPROF_UPDATE_GOLDEN=1)",
            path.display()
        )
    });
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from the rendered report at line {}:\n  golden: {:?}\n  actual: {:?}\n(if intended: NETPROF_UPDATE_GOLDEN=1)",
            path.display(),
            first + 1,
            expected.lines().nth(first),
            actual.lines().nth(first)
        );
    }
    expected
}

/// The line of `text` that starts with `label` (after Markdown's `| `), split into cells.
fn row<'a>(text: &'a str, label: &str) -> Vec<&'a str> {
    let line = text
        .lines()
        .find(|l| l.trim_start_matches("| ").starts_with(label))
        .unwrap_or_else(|| panic!("no line starting with {label:?}"));
    line.split(['|', ' ']).filter(|c| !c.is_empty()).collect()
}

/// The golden text holds the hand-computed numbers where a reader looks for them, and the
/// table without agents comes first.
#[test]
fn the_golden_text_is_the_known_run_with_its_known_numbers() {
    let (_dir, report) = known("golden-text");
    let text = golden("report.txt", &render::render(&report, Format::Table));
    let clean_at = text.find("The study's table, no agent attached").unwrap();
    let with_agents_at = text
        .find("Measured with netprof's agents attached")
        .unwrap();
    assert!(clean_at < text.find("Where the extra p50 RTT goes").unwrap());
    assert!(
        text.find("The study's table with the agents attached")
            .unwrap()
            > with_agents_at
    );
    assert!(row(&text, "flannel-hostgw  pod").contains(&"0.059"));
    assert_eq!(row(&text, "iptables filter")[2], "+2.2");
    assert_eq!(row(&text, "veth")[1], "+4.8");
    assert_eq!(row(&text, "bridge")[1], "+1.9");
    assert_eq!(row(&text, "= explained")[2], "+8.9");
    assert_eq!(row(&text, "unexplained")[1], "+1.1");
    assert_eq!(row(&text, "explained share")[2], "89.4%");
    // By node: filter 0.021 on node 1, 2.223 on node 2.
    let nodes = &text[text.find("The same split by node").unwrap()..];
    assert_eq!(&row(nodes, "iptables filter")[2..4], ["+0.0", "+2.2"]);
    assert_eq!(&row(nodes, "= explained")[2..4], ["+5.8", "+3.2"]);
    let throughput = &text[text.find("Throughput: nginx QPS").unwrap()..];
    assert_eq!(row(throughput, "flannel-hostgw")[4], "9538");
    let profiled = &text[with_agents_at..];
    assert_eq!(row(profiled, "of which netprof probes")[4], "+0.9");
}

#[test]
fn the_golden_markdown_is_the_known_run_with_its_known_numbers() {
    let (_dir, report) = known("golden-md");
    let md = golden("report.md", &render::render(&report, Format::Markdown));
    assert!(md.starts_with("# netprof report: known-run"));
    assert_eq!(row(&md, "iptables filter")[2], "+2.2");
    assert_eq!(row(&md, "unexplained share")[2], "10.6%");
    assert!(
        md.find("## Measured with netprof's agents attached")
            .unwrap()
            > md.find("89.4%").unwrap()
    );
}

#[test]
fn json_carries_the_split_per_node() {
    let (_dir, report) = known("json");
    let json: serde_json::Value =
        serde_json::from_str(&render::render(&report, Format::Json)).unwrap();
    assert_eq!(json["schema"], "netprof.report/v2");
    assert_eq!(json["clean_table"][1]["ping_p50_ms"], 0.059);
    let filter = json["latency"][0]["clean"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "filter")
        .unwrap();
    assert_eq!(filter["by_node"][1]["node"], "node2");
    assert_eq!(filter["by_node"][1]["delta_ns"], 2223);
    assert_eq!(json["latency"][0]["clean"]["measure"], "clean-p50");
    assert_eq!(json["latency"][0]["probes"]["sources"][0], "calibration");
    assert_eq!(json["calibration"]["followed_ns"]["netfilter"]["hi"], 45.0);
    assert_eq!(json["calibration"]["ratios"]["held_rtt"]["median"], 1.02);
}

/// A private copy of the recorded run to break.
fn scratch_copy(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("netprof-report-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    copy_dir(Path::new(RUN), &dir);
    Scratch(dir)
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn load_err(dir: &Path) -> (InputError, String) {
    let err = report::from_dir(dir).expect_err("bad input must be refused");
    let text = err.to_string();
    (err, text)
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut doc: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut doc);
    fs::write(path, doc.to_string()).unwrap();
}

#[test]
fn a_missing_or_incomplete_profile_is_named() {
    let s = scratch_copy("missing");
    let gone = s.0.join("profile/flannel-vxlan/pod-path-ping-node2.json");
    fs::remove_file(&gone).unwrap();
    let (err, text) = load_err(&s.0);
    assert!(matches!(err, InputError::MissingProfile { .. }), "{text}");
    assert!(
        text.contains(&gone.display().to_string()) && text.contains("flannel-vxlan"),
        "{text}"
    );

    let s = scratch_copy("incomplete");
    edit_json(&s.0.join("calico.json"), |doc| {
        doc["profiles"]
            .as_array_mut()
            .unwrap()
            .retain(|p| !(p["path"] == "pod path" && p["tool"] == "ab" && p["node"] == "node1"));
    });
    let (err, text) = load_err(&s.0);
    assert!(
        matches!(err, InputError::IncompleteProfile { .. }),
        "{text}"
    );
    assert!(
        text.contains("calico")
            && text.contains("pod path ab node1")
            && text.contains("pod-path-ab-node1.json"),
        "{text}"
    );
}

#[test]
fn foreign_and_misnamed_files_are_named() {
    let s = scratch_copy("schema");
    let path = s.0.join("profile/l2/host-path-ping-node1.json");
    let text = fs::read_to_string(&path)
        .unwrap()
        .replace("netprof.agent/v1", "netprof.agent/v9");
    fs::write(&path, text).unwrap();
    let (err, text) = load_err(&s.0);
    assert!(matches!(err, InputError::Schema { .. }), "{text}");
    assert!(
        text.contains(&path.display().to_string()) && text.contains("netprof.agent/v9"),
        "{text}"
    );

    let s = scratch_copy("foreign");
    fs::write(s.0.join("notes.json"), "{\"hello\": 1}").unwrap();
    let (err, text) = load_err(&s.0);
    assert!(
        matches!(err, InputError::NoSchema { .. }) && text.contains("notes.json"),
        "{text}"
    );

    let s = scratch_copy("unknown");
    fs::copy(s.0.join("l2.json"), s.0.join("weave.json")).unwrap();
    let (err, text) = load_err(&s.0);
    assert!(
        matches!(err, InputError::UnknownFile { .. }) && text.contains("weave.json"),
        "{text}"
    );

    let s = scratch_copy("renamed");
    fs::rename(s.0.join("l2.json"), s.0.join("calico.json")).unwrap();
    let (err, text) = load_err(&s.0);
    assert!(
        matches!(err, InputError::ModeMismatch { .. }) && text.contains("calico.json"),
        "{text}"
    );
}

/// A mode file that cannot be read (a dangling link) is an error, not a mode left out.
#[test]
fn an_unreadable_mode_file_is_an_error() {
    let s = scratch_copy("dangling");
    let link = s.0.join("calico.json");
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(s.0.join("gone.json"), &link).unwrap();
    let (err, text) = load_err(&s.0);
    assert!(
        matches!(err, InputError::Read { .. }) && text.contains("calico.json"),
        "{text}"
    );
}

/// Impossible values are refused, each naming the file and the field.
#[test]
fn impossible_values_name_the_file_and_the_field() {
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, &str, Edit)> = vec![
        (
            "flannel-vxlan.json",
            "pod_path.ping.rtts_us[3]",
            Box::new(|d| d["pod_path"]["ping"]["rtts_us"][3] = serde_json::json!(1e308)),
        ),
        (
            "flannel-vxlan.json",
            "pod_path.ping.rtts_us[0]",
            Box::new(|d| d["pod_path"]["ping"]["rtts_us"][0] = serde_json::json!(-5.0)),
        ),
        (
            "host.json",
            "host_path.ping.received",
            Box::new(|d| d["host_path"]["ping"]["received"] = serde_json::json!(51)),
        ),
        (
            "host.json",
            "host_path.ping.rtts_us",
            Box::new(|d| {
                d["host_path"]["ping"]["rtts_us"]
                    .as_array_mut()
                    .unwrap()
                    .pop();
            }),
        ),
        (
            "calico.json",
            "pod_path.ab.requests_per_second",
            Box::new(|d| d["pod_path"]["ab"]["requests_per_second"] = serde_json::json!(-1.0)),
        ),
        (
            "calico.json",
            "pod_path.ping.stats.p99_ms",
            Box::new(|d| d["pod_path"]["ping"]["stats"]["p99_ms"] = serde_json::json!(90000.0)),
        ),
        (
            "profile/calico/pod-path-ping-node1.json",
            ".count",
            Box::new(|d| d["segments"][0]["count"] = serde_json::json!(7)),
        ),
        (
            "profile/calico/pod-path-ping-node2.json",
            "segments[1]",
            Box::new(|d| d["segments"][1]["mean_ns"] = serde_json::json!(-3.0)),
        ),
        (
            "profile/l2/host-path-ab-node1.json",
            "stats_s",
            Box::new(|d| d["stats_s"] = serde_json::json!(1e6)),
        ),
        (
            "profile/l2/host-path-ab-node2.json",
            "sample",
            Box::new(|d| d["sample"] = serde_json::json!(3)),
        ),
    ];
    for (i, (file, field, edit)) in cases.into_iter().enumerate() {
        let s = scratch_copy(&format!("invalid{i}"));
        let path = s.0.join(file);
        edit_json(&path, edit);
        let (err, text) = load_err(&s.0);
        assert!(matches!(err, InputError::Invalid { .. }), "{file}: {text}");
        assert!(
            text.contains(&path.display().to_string()) && text.contains(field),
            "{file}: {text}"
        );
    }
}

#[test]
fn a_bad_calibration_is_named() {
    let dir = Scratch(known_run::write_known_run("badcal"));
    let path = dir.0.join("calibration.json");
    edit_json(&path, |d| {
        d["per_run"]["netfilter"]["followed_ns"]["lo"] = serde_json::json!(99.0)
    });
    let (err, text) = load_err(&dir.0);
    assert!(matches!(err, InputError::Invalid { .. }), "{text}");
    assert!(
        text.contains("calibration.json") && text.contains("per_run.netfilter.followed_ns"),
        "{text}"
    );
}

#[test]
fn an_empty_or_missing_directory_says_what_to_give() {
    let dir = std::env::temp_dir().join(format!("netprof-report-empty-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let (err, text) = load_err(&dir);
    assert!(
        matches!(err, InputError::Empty { .. }) && text.contains("netprof bench --profile"),
        "{text}"
    );
    fs::remove_dir_all(&dir).unwrap();
    let (err, text) = load_err(&dir);
    assert!(
        matches!(err, InputError::Read { .. }) && text.contains(&dir.display().to_string()),
        "{text}"
    );
}

/// The recorded real run (no twin without agents, no calibration) loads, attributes every pod
/// mode and says that its first table was measured with the agents attached.
#[test]
fn a_recorded_run_without_twin_says_its_numbers_include_netprof() {
    let report = report::from_dir(Path::new(RUN)).unwrap();
    let modes: Vec<&str> = report.latency.iter().map(|l| l.mode.as_str()).collect();
    assert_eq!(modes, ["flannel-hostgw", "flannel-vxlan", "calico", "l2"]);
    assert!(report.clean_table.is_none());
    assert!(report
        .latency
        .iter()
        .all(|l| l.clean.measure == Measure::ProfiledP50LessProbes));
    let text = render::render(&report, Format::Table);
    assert!(
        text.lines()
            .nth(2)
            .unwrap()
            .contains("measured WITH netprof's agents attached"),
        "{text}"
    );
    // VXLAN pays for encapsulation and decapsulation on both nodes; host-gw does not.
    let vxlan = &report.latency[1].clean;
    for c in [Category::VxlanEncap, Category::VxlanDecap] {
        let s = stage(vxlan, c);
        assert!(s.node(Node::One) > 0 && s.node(Node::Two) > 0, "{s:?}");
    }
    assert_eq!(report.latency[0].clean.stage(Category::VxlanEncap), 0);
    // l2 has no iptables and no conntrack on its path.
    for c in [Category::Conntrack, Category::Nat, Category::Filter] {
        assert_eq!(stage(&report.latency[3].clean, c).mode_ns, 0);
    }
}

#[test]
fn without_profiles_the_table_still_renders_and_says_why_the_rest_is_missing() {
    let s = scratch_copy("unprofiled");
    for mode in ["host", "flannel-hostgw", "flannel-vxlan", "calico", "l2"] {
        edit_json(&s.0.join(format!("{mode}.json")), |doc| {
            doc["profiles"] = serde_json::json!([])
        });
    }
    fs::remove_dir_all(s.0.join("profile")).unwrap();
    let report = report::from_dir(&s.0).unwrap();
    assert!(report.latency.is_empty() && report.throughput.is_empty());
    let text = render::render(&report, Format::Table);
    assert!(
        text.contains("flannel-vxlan")
            && text.contains("not profiled (run `netprof bench --profile`)"),
        "{text}"
    );
}

/// bpf_stats count from each program's load and one agent serves a mode's six steps, so a
/// step's own probe cost takes the step before off (checked on the recorded files).
#[test]
fn bpf_stats_probe_costs_are_the_ping_steps_own() {
    use netprof::lab::Mode;
    use netprof::report::overhead::probe_ns_by_kind;
    use netprof::rundir::{NetPath, Tool};

    let input = report::input::load(Path::new(RUN)).unwrap();
    let mode = input.mode(Mode::FlannelVxlan).unwrap();
    // netfilter programs on both nodes, pod path ping minus the host path's ab before it,
    // read off the files: node1 and node2 run counts and times.
    let (mut count, mut time) = (0u64, 0u64);
    for node in Node::BOTH {
        let steps: Vec<_> = mode
            .profiles
            .iter()
            .filter(|p| p.file.node == node)
            .collect();
        let at = steps
            .iter()
            .position(|p| p.file.path == NetPath::Pod && p.file.tool == Tool::Ping)
            .unwrap();
        for p in steps[at]
            .report
            .programs
            .iter()
            .filter(|p| p.name.starts_with("nf_"))
        {
            let before = steps[at - 1]
                .report
                .programs
                .iter()
                .find(|b| b.id == p.id)
                .unwrap();
            count += p.run_count - before.run_count;
            time += p.run_time_ns - before.run_time_ns;
        }
    }
    let got = probe_ns_by_kind(&mode.profiles, NetPath::Pod, Tool::Ping)["netfilter"];
    assert!((got - time as f64 / count as f64).abs() < 1e-6);
}

#[test]
fn the_cli_writes_every_format_and_names_a_bad_directory() {
    use std::process::Command;
    let bin = netprof_tests::netprof_bin();
    let dir = Scratch(known_run::write_known_run("cli"));
    for format in ["table", "json", "markdown", "html"] {
        let out = Command::new(&bin)
            .arg("report")
            .arg(&dir.0)
            .args(["--format", format])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{format}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stdout.is_empty(), "{format}");
    }
    let file = dir.0.join("out.md");
    let out = Command::new(&bin)
        .arg("report")
        .arg(&dir.0)
        .args(["--format", "markdown", "--out"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success() && out.stdout.is_empty());
    assert!(fs::read_to_string(&file)
        .unwrap()
        .starts_with("# netprof report"));
    let out = Command::new(&bin)
        .args(["report", "/nonexistent/netprof-dir"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("netprof: error: cannot read /nonexistent/netprof-dir"),
        "{stderr}"
    );
}

/// Runs headless Chromium on `file` with `extra` arguments; `None` (with a visible SKIPPED
/// line) when Debian's `chromium` is not installed.
fn chromium(file: &Path, extra: &[&str]) -> Option<std::process::Output> {
    use std::process::Command;
    let bin = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|dir| Path::new(dir).join("chromium"))
        .find(|c| c.is_file());
    let Some(bin) = bin else {
        netprof_tests::print_skip(
            "html_renders_in_headless_chromium",
            "`chromium` is not installed (cargo xtask setup installs it)",
        );
        return None;
    };
    let profile = std::env::temp_dir().join(format!("netprof-chromium-{}", std::process::id()));
    let url = format!("file://{}", file.canonicalize().unwrap().display());
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    let _ = fs::remove_dir_all(&profile);
    Some(out)
}

#[test]
fn html_renders_in_headless_chromium() {
    let (dir, report) = known("html");
    let html = render::render(&report, Format::Html);
    for forbidden in ["http://", "https://", "<script", "<link", "@import", "url("] {
        assert!(!html.contains(forbidden), "the page contains {forbidden:?}");
    }
    let page = dir.0.join("report.html");
    fs::write(&page, &html).unwrap();
    let Some(out) = chromium(&page, &["--dump-dom"]) else {
        return;
    };
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("id=\"notes\"") && dom.matches("<svg").count() >= 2,
        "{}",
        &dom[..dom.len().min(2000)]
    );
    // The known numbers, in the order a reader meets them: the table without agents, the
    // measured delta, the share, then the part with agents.
    let at = |needle: &str| {
        dom.find(needle)
            .unwrap_or_else(|| panic!("{needle} not in the page"))
    };
    assert!(at("0.059 (1.20x)") < at("89.4%"));
    assert!(at("89.4%") < at("id=\"with-agents\""));
    // The waterfall draws node 2's part of the filter stage.
    assert!(
        dom.contains("iptables filter on node2: +2.2 µs"),
        "waterfall"
    );
    let png = dir.0.join("report.png");
    let shot = chromium(
        &page,
        &[
            "--window-size=1300,2400",
            &format!("--screenshot={}", png.display()),
        ],
    )
    .unwrap();
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let bytes = fs::read(&png).unwrap();
    assert!(
        bytes.len() > 10_000 && bytes.starts_with(b"\x89PNG"),
        "screenshot of {} bytes",
        bytes.len()
    );
}

/// `ping` with every RTT at `us` (the known run's pings are all at their p50).
fn ping_at(ping: &serde_json::Value, us: f64) -> serde_json::Value {
    let mut p = ping.clone();
    let n = p["rtts_us"].as_array().unwrap().len();
    p["rtts_us"] = serde_json::json!(vec![us; n]);
    for field in ["min_ms", "avg_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms"] {
        p["stats"][field] = serde_json::json!(us / 1e3);
    }
    p
}

/// The known run's profiled pass as `bench --profile` pings: each path also with the agents
/// detached, the pod path at 57.68 µs and the baseline at 49.76.
fn pinged_detached(dir: &Path) {
    for (file, path, us) in [
        ("flannel-hostgw.json", "pod_path", 57.68),
        ("host.json", "host_path", 49.76),
    ] {
        edit_json(&dir.join(file), |d| {
            let off = ping_at(&d[path]["ping"], us);
            d[path]["ping_agents_off"] = serde_json::json!({
                "ping": off,
                "block_rtts": [250, 250, 250, 250],
                "profiled_block_rtts": [250, 250, 250, 250],
            });
        })
    }
}

/// The measured delta's interval comes from the clean pings' blocks, resampled in pairs: a
/// steady 10 µs gap is known exactly (and the known run's 8.9 µs of stages lie outside it);
/// a pod path whose blocks swing between 54 and 64 µs leaves a wide interval that holds them.
/// Pings taken in one piece give no interval and no rows.
#[test]
fn the_measured_delta_has_the_interval_its_ping_blocks_give() {
    let dir = Scratch(known_run::write_known_run("interval"));
    let row = |report: &report::Report, label: &str| {
        let text = render::render(report, Format::Table);
        text.lines()
            .find(|l| l.starts_with(label))
            .map(|l| l[label.len()..].trim().to_owned())
    };
    let report = report::from_dir(&dir.0).expect("the run loads");
    assert_eq!(report.latency[0].clean_delta_interval_ns, None);
    assert_eq!(row(&report, "measured delta, 95% interval"), None);

    for file in ["clean/host.json", "clean/flannel-hostgw.json"] {
        edit_json(&dir.0.join(file), |d| {
            d["config"]["ping_blocks"] = serde_json::json!(10)
        });
    }
    let report = report::from_dir(&dir.0).expect("the run loads");
    assert_eq!(report.latency[0].clean.delta_ns, 10_000);
    assert_eq!(
        report.latency[0].clean_delta_interval_ns,
        Some([10_000, 10_000])
    );
    assert_eq!(
        row(&report, "measured delta, 95% interval").as_deref(),
        Some("+10.0..+10.0")
    );
    assert_eq!(row(&report, "explained inside it").as_deref(), Some("no"));
    let json: serde_json::Value =
        serde_json::from_str(&render::render(&report, Format::Json)).unwrap();
    assert_eq!(
        json["latency"][0]["clean_delta_interval_ns"],
        serde_json::json!([10000, 10000])
    );

    edit_json(&dir.0.join("clean/flannel-hostgw.json"), |d| {
        let swinging: Vec<f64> = (0..1000)
            .map(|i| if (i / 100) % 2 == 0 { 54.0 } else { 64.0 })
            .collect();
        d["pod_path"]["ping"]["rtts_us"] = serde_json::json!(swinging);
    });
    let report = report::from_dir(&dir.0).expect("the run loads");
    let [lo, hi] = report.latency[0].clean_delta_interval_ns.unwrap();
    assert!(lo <= 5_000 && hi >= 15_000, "[{lo}, {hi}]");
    assert_eq!(row(&report, "explained inside it").as_deref(), Some("yes"));
    let wide = "Some intervals are wider than 20 µs";
    assert!(hi - lo <= 20_000, "[{lo}, {hi}]");
    assert!(!render::render(&report, Format::Table).contains(wide));

    // Blocks that swing by 40 µs leave an interval too wide to judge a split by: the report
    // names the CPUs' wake-ups and the setting that keeps them out, unless it was in force.
    edit_json(&dir.0.join("clean/flannel-hostgw.json"), |d| {
        let swinging: Vec<f64> = (0..1000)
            .map(|i| if (i / 100) % 2 == 0 { 40.0 } else { 80.0 })
            .collect();
        d["pod_path"]["ping"]["rtts_us"] = serde_json::json!(swinging);
    });
    let report = report::from_dir(&dir.0).expect("the run loads");
    let [lo, hi] = report.latency[0].clean_delta_interval_ns.unwrap();
    assert!(hi - lo > 20_000, "[{lo}, {hi}]");
    let text = render::render(&report, Format::Table);
    assert!(
        text.contains(wide) && text.contains("--cpu-idle poll"),
        "{text}"
    );
    set_cpu_idle(&dir.0, "poll");
    let text = render::render(&report::from_dir(&dir.0).unwrap(), Format::Table);
    assert!(!text.contains(wide), "{text}");
}

/// Clean numbers from the profiled run's own twins (`bench --profile` with several modes):
/// the report says where its measured delta came from and what the detached rows then compare;
/// a run whose clean files are not all twins is not called one.
#[test]
fn clean_twins_are_named_as_what_they_are() {
    let dir = Scratch(known_run::write_known_run("twins"));
    pinged_detached(&dir.0);
    let clean = dir.0.join("clean");
    let mut files: Vec<_> = std::fs::read_dir(&clean)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    for file in &files {
        edit_json(file, |d| d["clean_twin"] = serde_json::json!(true));
    }
    let report = report::from_dir(&dir.0).expect("the run loads");
    assert!(report.clean_twins);
    let json: serde_json::Value =
        serde_json::from_str(&render::render(&report, Format::Json)).unwrap();
    assert_eq!(json["clean_twins"], true);
    let text = render::render(&report, Format::Table);
    assert!(
        text.contains("on the clean twin labs in the same turns as the profile"),
        "{text}"
    );
    assert!(
        text.contains("measured − detached (twins − profiled labs)  +2.1"),
        "{text}"
    );
    assert!(!text.contains("(between passes)"), "{text}");

    edit_json(&files[0], |d| {
        d.as_object_mut().unwrap().remove("clean_twin");
    });
    let report = report::from_dir(&dir.0).expect("the run loads");
    assert!(!report.clean_twins);
    let json: serde_json::Value =
        serde_json::from_str(&render::render(&report, Format::Json)).unwrap();
    assert!(json.get("clean_twins").is_none(), "{json}");
    let text = render::render(&report, Format::Table);
    assert!(
        text.contains("measured − detached (between passes)"),
        "{text}"
    );
    assert!(!text.contains("clean twin"), "{text}");
}

/// Pings with the agents detached in the profiled pass itself (`bench --profile`) fix what the
/// probes cost: the pod path's 60 µs profiled against 57.68 µs detached is 2320 ns, twice the
/// 1160 the calibration's per-run costs give; the baseline's 50 against 49.76 is the 240
/// predicted. The pod path's 1160 beyond the runs is 1.97% of its 58840 ns of work net of them,
/// and every segment, net of the runs at its ends, loses that share
/// (`the_split_without_netprof_is_the_hand_computed_one` has the rest of the arithmetic): veth
/// node 1 1950 × 2 × 0.9803 = 3823, node 2 470 × 2 × 0.9803 = 921; bridge 930 × 2 × 0.9803 =
/// 1823; filter node 1 10 × 2.1 × 0.9803 = 21, node 2 1170 × 1.9 × 0.9803 = 2179; uplink 940
/// × 0.9803 = 921 per node against the baseline's 940: -38. Explained 8729 of the 10000
/// without agents.
#[test]
fn the_probes_cost_what_the_pass_measured_with_the_agents_detached() {
    let dir = Scratch(known_run::write_known_run("in-pass"));
    pinged_detached(&dir.0);
    let report = report::from_dir(&dir.0).expect("the run loads");
    let l = &report.latency[0];
    assert_eq!(l.mode, "flannel-hostgw");
    let near = |a: f64, b: f64| (a - b).abs() < 1e-6;
    assert!(near(l.probes.mode_ns.median, 2320.0), "{:?}", l.probes);
    assert!(near(l.probes.baseline_ns.median, 240.0), "{:?}", l.probes);
    assert!(near(l.probes.delta_ns.median, 2080.0), "{:?}", l.probes);
    let before = l
        .probes
        .delta_before_in_pass_ns
        .expect("the calibration's own figure");
    assert!(near(before.median, 920.0), "{before:?}");
    use report::probe_cost::ProbeSource;
    assert_eq!(
        l.probes.sources,
        [ProbeSource::Calibration, ProbeSource::InPass]
    );
    let c = &l.clean;
    assert_eq!(stage(c, Category::Veth).delta_ns, 4744);
    assert_eq!(stage(c, Category::Bridge).delta_ns, 1823);
    let filter = stage(c, Category::Filter);
    assert_eq!((filter.node(Node::One), filter.node(Node::Two)), (21, 2179));
    assert_eq!(stage(c, Category::Uplink).delta_ns, -38);
    assert_eq!(c.explained_ns, 8729);
    assert_eq!(c.unexplained_ns, 1271);
    // The detached delta, 57.68 - 49.76 µs, is the split's check in the same minutes: the
    // stages add up to 809 ns more; the clean pass's delta was 2080 above it.
    let d = l
        .detached
        .expect("the pass pinged with the agents detached");
    assert_eq!(
        (d.delta_ns, d.unexplained_ns, d.between_passes_ns),
        (7920, -809, Some(2080))
    );
    let text = render::render(&report, Format::Table);
    assert!(text.contains("(per-run costs alone)"), "{text}");
    let row = |label: &str| {
        text.lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no row {label}: {text}"))
            .split_whitespace()
            .last()
            .unwrap()
            .to_owned()
    };
    assert_eq!(row("delta, agents detached (profiled pass)"), "+7.9");
    assert_eq!(row("unexplained against it"), "-0.8");
    assert_eq!(row("measured − detached (between passes)"), "+2.1");

    // ab with the agents detached around the profiled ab, at the same CPU time per request:
    // netprof cost nothing measurable under that load, so the segment means stay whole (the
    // known run's 9680 ns with the calibration's probes): node 1 veth 2000 × 4 passes = 8000,
    // node 2 520 × 4 = 2080, uplink 1000 × 2 per node on both sides = 0; extra 10080.
    let ab_detached = |file: &str, path: &str, cpu: f64| {
        edit_json(&dir.0.join(file), |d| {
            let ab = d[path]["ab"].clone();
            d[path]["ab_cpu_ns_per_request"] = serde_json::json!(cpu);
            d[path]["ab_agents_off"] = serde_json::json!({"runs": [
                {"ab": ab, "cpu_ns_per_request": cpu},
                {"ab": ab, "cpu_ns_per_request": cpu},
            ]});
        })
    };
    ab_detached("flannel-hostgw.json", "pod_path", 170_000.0);
    ab_detached("host.json", "host_path", 150_000.0);
    let report = report::from_dir(&dir.0).expect("the run loads");
    assert_eq!(report.throughput[0].extra_ns_per_request, 10_080);

    // Blocks that do not add up to their pings, or do not pair up, are refused by name.
    let path = dir.0.join("host.json");
    edit_json(&path, |d| {
        d["host_path"]["ping_agents_off"]["block_rtts"] = serde_json::json!([250, 250, 250]);
    });
    let (err, text) = load_err(&dir.0);
    assert!(matches!(err, InputError::Invalid { .. }), "{text}");
    assert!(
        text.contains(&path.display().to_string())
            && text.contains("host_path.ping_agents_off.block_rtts"),
        "{text}"
    );
}

/// Journeys an agent's log had no room for are named in a note, with the mode, never dropped
/// from the report without a word.
#[test]
fn journeys_lost_to_a_full_log_are_noted() {
    let (dir, before) = known("log-full");
    assert!(!before.notes.iter().any(|n| n.contains("journey log full")));
    let profile = dir.0.join("profile").join("flannel-hostgw");
    let doc = fs::read_dir(&profile)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("-node2.json"))
        .expect("an agent document of node 2");
    let mut report: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&doc).unwrap()).unwrap();
    // The known run writes the field under its older name, which the reader still takes.
    let counters = report["counters"].as_object_mut().unwrap();
    assert!(counters.remove("segment_map_full").is_some());
    counters.insert("journey_log_full".into(), serde_json::json!(3));
    fs::write(&doc, report.to_string()).unwrap();
    let after = report::from_dir(&dir.0).unwrap();
    assert!(
        after.notes.iter().any(|n| n
            .starts_with("flannel-hostgw: 3 ended journeys found the agents' journey log full")),
        "{:#?}",
        after.notes
    );
}

/// Sets `config.cpu_idle` in every mode file of a run directory and of its `clean/`.
fn set_cpu_idle(run: &Path, idle: &str) {
    for dir in [run.to_path_buf(), run.join("clean")] {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".json") && !name.starts_with("calibration") {
                edit_json(&path, |d| d["config"]["cpu_idle"] = serde_json::json!(idle));
            }
        }
    }
}

/// A run with the CPUs polling says so in its first line, and its split takes the calibration
/// (measured with them halting) as an estimate, named. Repeats that differ in it are refused,
/// naming a file of each.
#[test]
fn runs_with_polling_cpus_say_so_and_are_not_mixed_with_halting_ones() {
    let root = known_repeats("idle", [59.0, 65.0, 61.0], |run| set_cpu_idle(run, "poll"));
    let report = report::from_dir(&root.0).unwrap();
    assert_eq!(
        report.run.config.cpu_idle,
        netprof::bench::cpu_idle::CpuIdle::Poll
    );
    let first = report::render::headline(&report);
    assert!(
        first.contains("polling when idle (--cpu-idle poll)"),
        "{first}"
    );
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("CPUs idling poll") && n.contains("with them as-is")),
        "{:#?}",
        report.notes
    );
    let halting = root.0.join("repeat-2/clean/flannel-hostgw.json");
    edit_json(&halting, |d| {
        d["config"]["cpu_idle"] = serde_json::json!("as-is")
    });
    let (err, text) = load_err(&root.0);
    assert!(matches!(err, InputError::CpuIdleMismatch { .. }), "{text}");
    assert!(
        text.contains("repeat-2/clean/flannel-hostgw.json")
            && text.contains("repeat-1/")
            && text.contains("--cpu-idle poll"),
        "{text}"
    );
    let plain = Scratch(known_run::write_known_run("idle-plain"));
    let first = report::render::headline(&report::from_dir(&plain.0).unwrap());
    assert!(!first.contains("polling"), "{first}");
}
