//! `netprof report` on a recorded `bench --profile` run (tests/fixtures/report/run): golden
//! text and Markdown, key JSON numbers, bad input named, and the HTML in headless Chromium.
//! No root needed.
//!
//! Regenerate the golden files after an intended change with
//! `NETPROF_UPDATE_GOLDEN=1 cargo test -p netprof-tests --test report`, and read the diff.

use std::fs;
use std::path::{Path, PathBuf};

use netprof::report::{self, render, render::Format, InputError};

/// Relative, so the report's `source` line is the same on every machine (tests run in tests/).
const RUN: &str = "fixtures/report/run";
const GOLDEN: &str = "fixtures/report/golden";

fn fixture_report() -> report::Report {
    report::from_dir(Path::new(RUN)).expect("the recorded run loads")
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(GOLDEN).join(name);
    if std::env::var_os("NETPROF_UPDATE_GOLDEN").is_some() {
        fs::create_dir_all(GOLDEN).unwrap();
        fs::write(&path, actual).unwrap();
        return;
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
}

#[test]
fn table_matches_golden() {
    golden(
        "report.txt",
        &render::render(&fixture_report(), Format::Table),
    );
}

#[test]
fn markdown_matches_golden() {
    golden(
        "report.md",
        &render::render(&fixture_report(), Format::Markdown),
    );
}

#[test]
fn json_has_the_schema_and_the_key_numbers() {
    let report = fixture_report();
    let json: serde_json::Value =
        serde_json::from_str(&render::render(&report, Format::Json)).unwrap();
    assert_eq!(json["schema"], "netprof.report/v1");
    assert_eq!(json["run"]["modes"].as_array().unwrap().len(), 5);
    assert_eq!(json["run"]["profiled"].as_array().unwrap().len(), 5);
    // The study's table: host first, its numbers straight from host.json.
    let host: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(Path::new(RUN).join("host.json")).unwrap())
            .unwrap();
    assert_eq!(json["table"][0]["mode"], "host");
    assert_eq!(
        json["table"][0]["qps"],
        host["host_path"]["ab"]["requests_per_second"]
    );
    assert_eq!(
        json["table"][0]["ping_p50_ms"],
        host["host_path"]["ping"]["stats"]["p50_ms"]
    );
    assert!(json["table"][0].get("vs_baseline").is_none());
    // Latency attribution: one per pod mode; stages + unexplained = delta, in ns, exactly.
    let latency = json["latency"].as_array().unwrap();
    let modes: Vec<&str> = latency
        .iter()
        .map(|l| l["mode"].as_str().unwrap())
        .collect();
    assert_eq!(modes, ["flannel-hostgw", "flannel-vxlan", "calico", "l2"]);
    for l in latency {
        for split in [&l["p50"], &l["p99"]] {
            let stages: i64 = split["stages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["delta_ns"].as_i64().unwrap())
                .sum();
            assert_eq!(stages, split["explained_ns"].as_i64().unwrap());
            assert_eq!(
                stages + split["unexplained_ns"].as_i64().unwrap(),
                split["delta_ns"].as_i64().unwrap()
            );
        }
        assert_eq!(
            l["p50"]["mode_ns"].as_i64().unwrap() - l["p50"]["baseline_ns"].as_i64().unwrap(),
            l["p50"]["delta_ns"].as_i64().unwrap()
        );
    }
    let vxlan = &latency[1];
    let stage = |name: &str| {
        vxlan["p50"]["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stage"] == name)
            .unwrap()["delta_ns"]
            .as_i64()
            .unwrap()
    };
    // VXLAN pays for encapsulation and decapsulation; host-gw does not.
    assert!(
        stage("vxlan-encap") > 1_000 && stage("vxlan-decap") > 1_000,
        "{vxlan}"
    );
    let hostgw = &latency[0];
    assert!(hostgw["p50"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["stage"] == "vxlan-encap" && s["delta_ns"] == 0));
    // l2 has no iptables and no conntrack on its path.
    let l2 = &latency[3];
    for s in l2["p50"]["stages"].as_array().unwrap() {
        if ["conntrack", "nat", "filter"].contains(&s["stage"].as_str().unwrap()) {
            assert_eq!(s["mode_ns"], 0, "{s}");
        }
    }
    // Throughput: a prediction per pod mode, with the model's inputs.
    let throughput = json["throughput"].as_array().unwrap();
    assert_eq!(throughput.len(), 4);
    for t in throughput {
        assert!(
            t["predicted_qps"].as_f64().unwrap() > 0.0 && t["cpus"].as_u64().unwrap() >= 1,
            "{t}"
        );
    }
    assert_eq!(
        json["overhead"].as_array().unwrap().len(),
        10,
        "5 modes x 2 nodes"
    );
    assert_eq!(json["rtt_samples"].as_array().unwrap().len(), 5);
}

/// A private copy of the recorded run to break.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("netprof-report-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        copy_dir(Path::new(RUN), &dir);
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
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
    let err = report::input::load(dir).expect_err("bad input must be refused");
    let text = err.to_string();
    (err, text)
}

#[test]
fn a_missing_profile_is_named() {
    let s = Scratch::new("missing");
    let gone = s.0.join("profile/flannel-vxlan/pod-path-ping-node2.json");
    fs::remove_file(&gone).unwrap();
    let (err, text) = load_err(&s.0);
    assert!(matches!(err, InputError::MissingProfile { .. }), "{text}");
    assert!(
        text.contains(&gone.display().to_string()) && text.contains("flannel-vxlan"),
        "{text}"
    );
}

#[test]
fn an_incomplete_profile_names_the_missing_step() {
    let s = Scratch::new("incomplete");
    let path = s.0.join("calico.json");
    let mut doc: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let profiles = doc["profiles"].as_array_mut().unwrap();
    profiles.retain(|p| !(p["path"] == "pod path" && p["tool"] == "ab" && p["node"] == "node1"));
    fs::write(&path, doc.to_string()).unwrap();
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
fn a_foreign_schema_is_named() {
    let s = Scratch::new("schema");
    let path = s.0.join("profile/l2/host-path-ping-node1.json");
    let text = fs::read_to_string(&path)
        .unwrap()
        .replace("netprof.agent/v1", "netprof.agent/v9");
    fs::write(&path, text).unwrap();
    let (err, text) = load_err(&s.0);
    assert!(matches!(err, InputError::Schema { .. }), "{text}");
    assert!(
        text.contains(&path.display().to_string())
            && text.contains("netprof.agent/v9")
            && text.contains("netprof.agent/v1"),
        "{text}"
    );

    let s = Scratch::new("foreign");
    let path = s.0.join("notes.json");
    fs::write(&path, "{\"hello\": 1}").unwrap();
    let (err, text) = load_err(&s.0);
    assert!(
        matches!(err, InputError::NoSchema { .. }) && text.contains("notes.json"),
        "{text}"
    );

    let s = Scratch::new("renamed");
    fs::rename(s.0.join("l2.json"), s.0.join("calico.json")).unwrap();
    let (err, text) = load_err(&s.0);
    assert!(
        matches!(err, InputError::ModeMismatch { .. })
            && text.contains("calico.json")
            && text.contains("l2"),
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

#[test]
fn without_profiles_the_table_still_renders_and_says_why_the_rest_is_missing() {
    let s = Scratch::new("unprofiled");
    for mode in ["host", "flannel-hostgw", "flannel-vxlan", "calico", "l2"] {
        let path = s.0.join(format!("{mode}.json"));
        let mut doc: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        doc["profiles"] = serde_json::json!([]);
        fs::write(&path, doc.to_string()).unwrap();
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

#[test]
fn the_cli_writes_every_format_and_names_a_bad_directory() {
    use std::process::Command;
    let bin = netprof_tests::netprof_bin();
    for format in ["table", "json", "markdown", "html"] {
        let out = Command::new(&bin)
            .args(["report", RUN, "--format", format])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{format}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stdout.is_empty(), "{format}");
    }
    let file = std::env::temp_dir().join(format!("netprof-report-cli-{}.md", std::process::id()));
    let out = Command::new(&bin)
        .args(["report", RUN, "--format", "markdown", "--out"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success() && out.stdout.is_empty());
    assert!(fs::read_to_string(&file)
        .unwrap()
        .starts_with("# netprof report"));
    fs::remove_file(&file).unwrap();
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

/// Runs headless Chromium on `file` with `extra` arguments; `None` (with the skip marker
/// printed) when Debian's `chromium` is not installed.
fn chromium(file: &Path, extra: &[&str]) -> Option<std::process::Output> {
    use std::process::Command;
    let Ok(bin) = which_chromium() else {
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

fn which_chromium() -> Result<PathBuf, ()> {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let candidate = Path::new(dir).join("chromium");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(())
}

#[test]
fn html_renders_in_headless_chromium() {
    let report = fixture_report();
    let html = render::render(&report, Format::Html);
    // Self-contained: nothing to fetch, nothing to run.
    for forbidden in ["http://", "https://", "<script", "<link", "@import", "url("] {
        assert!(!html.contains(forbidden), "the page contains {forbidden:?}");
    }
    let dir = std::env::temp_dir().join(format!("netprof-report-html-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let page = dir.join("report.html");
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
    // The browser parsed the whole page: the last section and the charts are in the DOM.
    assert!(
        dom.contains("id=\"notes\"") && dom.matches("<svg").count() >= 5,
        "{}",
        &dom[..dom.len().min(2000)]
    );
    // The key numbers: the study's table, each mode's measured p50 delta and explained share.
    let cells = netprof::bench::table::cells(&report.results);
    for row in &cells.rows {
        for cell in row {
            assert!(
                dom.contains(&render::html::escape(cell)),
                "table cell {cell:?} not in the page"
            );
        }
    }
    for l in &report.latency {
        let delta = render::us_signed(l.p50.delta_ns);
        let share = render::pct(l.p50.explained_pct);
        let unexplained = render::us_signed(l.p50.unexplained_ns);
        for number in [&delta, &share, &unexplained] {
            assert!(
                dom.contains(number.as_str()),
                "{}: {number} not in the page",
                l.mode
            );
        }
    }
    for t in &report.throughput {
        assert!(
            dom.contains(&format!("{:.0}", t.predicted_qps)),
            "{}: predicted QPS",
            t.mode
        );
    }
    // And it paints: a screenshot of the page is written.
    let png = dir.join("report.png");
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
    let _ = fs::remove_dir_all(&dir);
}

/// Rounds pair up: the measured gain is the median of each round's own difference (a drift
/// between rounds, here 300 -> 250 -> 400 µs, does not enter), every round's figure is kept, and
/// a stage the base already has (the raw table) is not counted as added by NOTRACK.
#[test]
fn validation_measures_the_median_of_paired_rounds() {
    use netprof::bench::validate::{ValidateResult, Variant, VariantRun, SCHEMA};
    use netprof::lab::Mode;
    use netprof::report::input::{RunInput, ValidationInput};
    use netprof::report::validation::validate;

    let input = report::input::load(Path::new(RUN)).unwrap();
    let m = input.mode(Mode::FlannelVxlan).unwrap();
    let pod = m.result.pod_path.clone().unwrap();
    let run = |variant: Variant, round: u32, rtt_us: f64| {
        let mut ping = pod.ping.clone();
        ping.rtts_us = vec![rtt_us; 200];
        RunInput {
            run: VariantRun {
                variant,
                round,
                services: 0,
                rules_per_node: 26,
                http_target: pod.endpoints.http_target.to_string(),
                ping,
                ab: None,
                ab_cpu_ns_per_request: None,
                dir: String::new(),
                profiles: vec![],
            },
            profiles: m
                .profiles
                .iter()
                .filter(|p| p.file.path == netprof::rundir::NetPath::Pod)
                .cloned()
                .collect(),
        }
    };
    let runs = vec![
        run(Variant::Base, 0, 300.0),
        run(Variant::Notrack, 0, 288.0),
        run(Variant::Notrack, 1, 240.0),
        run(Variant::Base, 1, 250.0),
        run(Variant::Base, 2, 400.0),
        run(Variant::Notrack, 2, 395.0),
    ];
    let v = ValidationInput {
        result: ValidateResult {
            schema: SCHEMA.into(),
            mode: Mode::FlannelVxlan,
            config: m.result.config.clone(),
            rounds: 3,
            sweep: vec![],
            runs: runs.iter().map(|r| r.run.clone()).collect(),
        },
        runs,
    };
    let out = validate(&v, 2);
    let c = out.checks.iter().find(|c| c.ablation == "notrack").unwrap();
    // (p50s come from an HDR histogram: within its ~1% resolution of 250-400 µs)
    let near = |got: i64, want: i64| (got - want).abs() <= 400;
    let by_round = &c.measured_by_round_ns;
    assert!(
        by_round.len() == 3
            && near(by_round[0], 12_000)
            && near(by_round[1], 10_000)
            && near(by_round[2], 5_000),
        "{by_round:?}"
    );
    assert_eq!(c.measured_gain_ns, by_round[1], "the median round");
    // Both sides ran the same profiles here, so nothing is new in the ablated runs.
    assert_eq!(c.added_ns, 0, "{c:?}");
    assert_eq!(c.net_predicted_gain_ns, c.predicted_gain_ns);
}

/// The validation arithmetic on real profiles: the recorded flannel-vxlan pod path stands in
/// for the base runs, the recorded l2 pod path (no iptables, no conntrack) for the ablated
/// "no-kube-proxy" runs, and flannel-vxlan and calico's ab steps for a two-point sweep.
#[test]
fn validation_predicts_from_base_profiles_and_measures_pooled_pings() {
    use netprof::bench::validate::{ValidateResult, Variant, VariantRun, SCHEMA};
    use netprof::lab::Mode;
    use netprof::report::input::{RunInput, ValidationInput};
    use netprof::report::validation::validate;

    let input = report::input::load(Path::new(RUN)).unwrap();
    let run_of = |mode: Mode, variant: Variant, services: u32, rules: usize| {
        let m = input.mode(mode).unwrap();
        let pod = m.result.pod_path.clone().unwrap();
        RunInput {
            run: VariantRun {
                variant,
                round: 0,
                services,
                rules_per_node: rules,
                http_target: pod.endpoints.http_target.to_string(),
                ping: pod.ping.clone(),
                ab: Some(pod.ab.clone()),
                ab_cpu_ns_per_request: None,
                dir: String::new(),
                profiles: vec![],
            },
            profiles: m
                .profiles
                .iter()
                .filter(|p| p.file.path == netprof::rundir::NetPath::Pod)
                .cloned()
                .collect(),
        }
    };
    let runs = vec![
        run_of(Mode::FlannelVxlan, Variant::Base, 0, 26),
        run_of(Mode::L2, Variant::NoKubeProxy, 0, 0),
        run_of(Mode::FlannelVxlan, Variant::Services, 0, 26),
        run_of(Mode::Calico, Variant::Services, 1000, 5026),
    ];
    let v = ValidationInput {
        result: ValidateResult {
            schema: SCHEMA.into(),
            mode: Mode::FlannelVxlan,
            config: input.modes[0].result.config.clone(),
            rounds: 1,
            sweep: vec![0, 1000],
            runs: runs.iter().map(|r| r.run.clone()).collect(),
        },
        runs,
    };
    let out = validate(&v, 2);
    // No notrack runs: only the no-kube-proxy check.
    assert_eq!(out.checks.len(), 1);
    let c = &out.checks[0];
    assert_eq!(c.ablation, "no-kube-proxy");
    let vxlan = input
        .mode(Mode::FlannelVxlan)
        .unwrap()
        .result
        .pod_path
        .clone()
        .unwrap();
    let l2 = input
        .mode(Mode::L2)
        .unwrap()
        .result
        .pod_path
        .clone()
        .unwrap();
    assert_eq!(
        c.base_p50_ns,
        (vxlan.ping.stats.unwrap().p50_ms * 1e6).round() as i64
    );
    assert_eq!(
        c.measured_gain_ns,
        c.base_p50_ns - (l2.ping.stats.unwrap().p50_ms * 1e6).round() as i64
    );
    // The removed stages plus netprof's probes that leave with the hooks.
    assert!(c.hook_edge_probes_ns > 0, "{c:?}");
    assert_eq!(
        c.predicted_gain_ns,
        c.predicted_by_stage.iter().map(|p| p.ns).sum::<i64>() + c.hook_edge_probes_ns
    );
    // l2 has no netfilter stage left; flannel-vxlan's netfilter stages are the p50 table's
    // conntrack + nat + filter (+ glue in "other").
    assert_eq!(c.remaining_ns, 0);
    let report = fixture_report();
    let split = &report
        .latency
        .iter()
        .find(|l| l.mode == "flannel-vxlan")
        .unwrap()
        .p50;
    let tables: i64 = ["conntrack", "nat", "filter"]
        .iter()
        .map(|k| {
            split
                .stages
                .iter()
                .find(|s| serde_json::to_value(s.stage).unwrap() == *k)
                .unwrap()
                .mode_ns
        })
        .sum();
    assert!(
        c.predicted_gain_ns >= tables && c.predicted_gain_ns > 10_000,
        "{c:?} vs {tables}"
    );
    let e = c.error_pct.unwrap();
    assert!(
        (e - (c.measured_gain_ns - c.predicted_gain_ns) as f64 / c.predicted_gain_ns as f64
            * 100.0)
            .abs()
            < 1e-9
    );
    assert!(c.qps.is_some());
    // Two sweep points: a line through them, with the points' own numbers.
    assert_eq!(out.sweep.points.len(), 2);
    let f = out.sweep.ab_mean_us_per_rule.unwrap();
    let (p0, p1) = (&out.sweep.points[0], &out.sweep.points[1]);
    assert!(
        (f.slope - (p1.ab_mean_ms - p0.ab_mean_ms) * 1e3 / 5000.0).abs() < 1e-9,
        "{f:?}"
    );
    assert!(out.sweep.nat_ns_per_rule.is_some() && p0.nat_ns_per_request > 0.0);
}

/// A probe's cost comes from the ping step itself: bpf_stats count from each program's load,
/// and one agent serves a mode's six steps, so the step before (same node, same program id)
/// is taken off (checked against the recorded files).
#[test]
fn probe_costs_are_the_ping_steps_own() {
    use netprof::lab::Mode;
    use netprof::report::overhead::probe_ns_by_kind;

    let input = report::input::load(Path::new(RUN)).unwrap();
    let mode = input.mode(Mode::FlannelVxlan).unwrap();
    let (mut count, mut time) = (0u64, 0u64);
    for node in netprof::rundir::Node::BOTH {
        let steps: Vec<_> = mode
            .profiles
            .iter()
            .filter(|p| p.file.node == node)
            .collect();
        let at = steps
            .iter()
            .position(|p| {
                p.file.path == netprof::rundir::NetPath::Pod
                    && p.file.tool == netprof::rundir::Tool::Ping
            })
            .unwrap();
        assert!(at > 0, "the pod path's ping follows the host path's steps");
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
    let expected = time as f64 / count as f64;
    let got = probe_ns_by_kind(
        mode,
        netprof::rundir::NetPath::Pod,
        netprof::rundir::Tool::Ping,
    )["netfilter"];
    assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
    // Not the whole mode's average, which ab's warm runs dominate.
    let whole: f64 = {
        let last = mode
            .profiles
            .iter()
            .rev()
            .find(|p| p.file.node == netprof::rundir::Node::One)
            .unwrap();
        let nf: Vec<_> = last
            .report
            .programs
            .iter()
            .filter(|p| p.name.starts_with("nf_"))
            .collect();
        nf.iter().map(|p| p.run_time_ns).sum::<u64>() as f64
            / nf.iter().map(|p| p.run_count).sum::<u64>() as f64
    };
    assert!((got - whole).abs() > 1.0, "{got} vs whole-mode {whole}");
}

/// A run with its unprofiled twin in `DIR/clean/` (what `cargo xtask demo` writes): the report
/// shows the twin's table beside the profiled one, in every format.
#[test]
fn the_clean_twin_is_shown_beside_the_profiled_table() {
    let dir = std::env::temp_dir().join(format!("netprof-report-clean-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("clean")).unwrap();
    let copy = |from: &Path, to: &Path| {
        for entry in fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
            }
        }
    };
    copy(Path::new(RUN), &dir);
    fs::create_dir_all(dir.join("profile")).unwrap();
    for mode_dir in fs::read_dir(Path::new(RUN).join("profile")).unwrap() {
        let mode_dir = mode_dir.unwrap().path();
        let to = dir.join("profile").join(mode_dir.file_name().unwrap());
        fs::create_dir_all(&to).unwrap();
        copy(&mode_dir, &to);
    }
    // The twin: the same results without profiles, nginx 12345 req/s in flannel-vxlan.
    for entry in fs::read_dir(Path::new(RUN)).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let mut value: serde_json::Value =
                serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
            if value["schema"] != "netprof.bench.mode/v1" {
                continue;
            }
            value["profiles"] = serde_json::json!([]);
            if value["mode"] == "flannel-vxlan" {
                value["pod_path"]["ab"]["requests_per_second"] = serde_json::json!(12345.0);
            }
            fs::write(
                dir.join("clean").join(path.file_name().unwrap()),
                value.to_string(),
            )
            .unwrap();
        }
    }
    let report = report::from_dir(&dir).unwrap();
    let clean = report.clean_table.as_ref().expect("the clean twin is read");
    assert_eq!(
        clean
            .iter()
            .find(|r| r.mode == "flannel-vxlan")
            .unwrap()
            .values
            .qps,
        12345.0
    );
    assert_ne!(
        report
            .table
            .iter()
            .find(|r| r.mode == "flannel-vxlan")
            .unwrap()
            .values
            .qps,
        12345.0
    );
    // The p50 split less netprof's probes is set against the twin's p50s; the twin's pings are
    // the profiled ones here, so its delta is the profiled delta.
    let l = report
        .latency
        .iter()
        .find(|l| l.mode == "flannel-vxlan")
        .unwrap();
    assert_eq!(l.p50_net.statistic, "p50 without agents");
    assert_eq!(l.p50_net.delta_ns, l.p50.delta_ns);
    assert!(
        l.p50_net.explained_ns < l.p50.explained_ns,
        "{} vs {}",
        l.p50_net.explained_ns,
        l.p50.explained_ns
    );
    assert_eq!(
        l.p50_net.explained_ns + l.p50_net.unexplained_ns,
        l.p50_net.delta_ns
    );
    for stage in &l.p50_net.stages {
        let full = l
            .p50
            .stages
            .iter()
            .find(|s| s.stage == stage.stage)
            .unwrap();
        assert!(
            stage.mode_ns <= full.mode_ns && stage.mode_ns >= 0,
            "{stage:?} vs {full:?}"
        );
    }
    for format in Format::ALL {
        let text = render::render(&report, format);
        let named = if format == Format::Json {
            "\"clean_table\""
        } else {
            "Latency without netprof"
        };
        assert!(text.contains(named) && text.contains("12345"), "{format:?}");
    }
    // Without the twin: no such section.
    let plain = report::from_dir(Path::new(RUN)).unwrap();
    assert!(
        plain.clean_table.is_none()
            && !render::render(&plain, Format::Table).contains("table without agents")
    );
    assert_eq!(plain.latency[0].p50_net.statistic, "p50 less probes");
    assert!(!render::render(&plain, Format::Table).contains("Latency without netprof's own cost"));
    let _ = fs::remove_dir_all(&dir);
}

/// With the machine's CPU time per request measured (lab runs), the throughput attribution
/// sets the predicted extra against the measured one.
#[test]
fn throughput_sets_the_extra_against_measured_cpu_per_request() {
    use netprof::lab::Mode;

    let mut input = report::input::load(Path::new(RUN)).unwrap();
    for m in input.modes.iter_mut() {
        match m.mode() {
            Mode::Host => m.result.host_path.ab_cpu_ns_per_request = Some(100_000.0),
            Mode::FlannelVxlan => {
                m.result.pod_path.as_mut().unwrap().ab_cpu_ns_per_request = Some(180_000.0)
            }
            _ => {}
        }
    }
    let report = report::build(&input);
    let vxlan = report
        .throughput
        .iter()
        .find(|t| t.mode == "flannel-vxlan")
        .unwrap();
    let cpu = vxlan.cpu.expect("both sides measured");
    assert_eq!(
        (cpu.baseline_ns, cpu.mode_ns, cpu.measured_extra_ns),
        (100_000.0, 180_000.0, 80_000.0)
    );
    let explained = cpu.explained_pct.unwrap();
    assert!(
        (explained - vxlan.extra_ns_per_request as f64 / 80_000.0 * 100.0).abs() < 1e-9,
        "{explained}"
    );
    let expected_qps =
        vxlan.baseline_qps * 100_000.0 / (100_000.0 + vxlan.extra_ns_per_request as f64);
    assert!(
        (cpu.predicted_qps - expected_qps).abs() < 1e-6,
        "{} vs {expected_qps}",
        cpu.predicted_qps
    );
    let error = cpu.prediction_error_pct.unwrap();
    assert!(
        (error - (expected_qps - vxlan.measured_qps) / vxlan.measured_qps * 100.0).abs() < 1e-9
    );
    // A mode without the measurement has none.
    assert!(report
        .throughput
        .iter()
        .find(|t| t.mode == "calico")
        .unwrap()
        .cpu
        .is_none());
    assert!(render::render(&report, Format::Table).contains("100.0 -> 180.0"));
}
