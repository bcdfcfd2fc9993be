//! The kernel matrix's verdicts: what `cargo xtask vm` (run by `cargo xtask test` too) brought
//! back from Debian's 6.1 and 6.12 cloud kernels booted under qemu (`xtask/src/vm/`). Each
//! kernel ran every lab mode with one agent per node and 20 pings on the path; this test reads
//! the agents' documents and the guest's listings and checks, per kernel:
//!
//! - every step of every scenario ran (lab up, both agents attached and stopped, ping, lab
//!   down), and nothing was left behind (no BPF program or link, no clsact qdisc of ours, no
//!   lab namespace; another tool's clsact qdisc and filter survive untouched);
//! - exact ping accounting: every tc checkpoint on the path saw the 20 requests or the 20
//!   replies, and each netfilter hook as many passes as the path makes through it (as on the
//!   host kernel in `agent_lab`); through fentry, whose points sit on the functions rather
//!   than the hooks, conntrack and filter are exact too, while the nat chains run only for a
//!   connection's first packet (later ones take the NAT binding from conntrack), so their
//!   stages are present but not counted per ping;
//! - the stages named as on the host kernel (conntrack, nat, filter, bridge, veth, vxlan);
//! - every "not measured" entry is one the kernel explains (its version or configuration
//!   lacks the feature); anything else fails with the entry's text.
//!
//! Every failure names the kernel. Without `NETPROF_VM_RESULTS` (set by `cargo xtask vm` and
//! `cargo xtask test`) there are no results to judge and the test says so.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use netprof::agent::{
    report::{AgentReport, Via},
    Stage,
};
use netprof_tests::print_skip;
use serde_json::Value;

const RESULTS_ENV: &str = "NETPROF_VM_RESULTS";

/// What one kernel offers, from its version and its package's configuration.
#[derive(Debug, Clone, Copy)]
struct Features {
    tcx: bool,
    nf_links: bool,
    fentry: bool,
}

impl Features {
    fn of(kernel: &Value) -> Self {
        let on = |option: &str| kernel["config"][option] == "y";
        Self {
            tcx: on("CONFIG_NET_XGRESS"),
            nf_links: on("CONFIG_NETFILTER_BPF_LINK"),
            fentry: on("CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS"),
        }
    }
}

/// Failures of one kernel, each prefixed with the kernel and scenario.
struct Verdict {
    kernel: String,
    failures: Vec<String>,
}

impl Verdict {
    fn fail(&mut self, scenario: &str, what: impl std::fmt::Display) {
        self.failures
            .push(format!("kernel {} / {scenario}: {what}", self.kernel));
    }

    fn check(&mut self, scenario: &str, ok: bool, what: impl std::fmt::Display) {
        if !ok {
            self.fail(scenario, what);
        }
    }
}

#[test]
fn kernel_matrix() {
    let Some(dir) = std::env::var_os(RESULTS_ENV).map(PathBuf::from) else {
        print_skip(
            "vm_matrix",
            &format!("{RESULTS_ENV} is not set: run `cargo xtask vm` (or `cargo xtask test`)"),
        );
        return;
    };
    let manifest = read_json(&dir.join("manifest.json"));
    let kernels = manifest["kernels"]
        .as_array()
        .expect("manifest lists kernels");
    assert!(!kernels.is_empty(), "the matrix ran no kernel");
    let mut failures = Vec::new();
    for kernel in kernels {
        let id = kernel["id"].as_str().unwrap_or("?");
        let release = kernel["release"].as_str().unwrap_or("?").to_owned();
        let mut verdict = Verdict {
            kernel: format!("{id} ({release})"),
            failures: Vec::new(),
        };
        if let Some(error) = kernel["error"].as_str() {
            verdict.fail("boot", error);
        } else {
            let results = PathBuf::from(kernel["results"].as_str().expect("results path"));
            check_kernel(&mut verdict, kernel, &release, &results);
        }
        println!(
            "kernel {}: {} failures (VM {:.0} s)",
            verdict.kernel,
            verdict.failures.len(),
            kernel["vm_seconds"].as_f64().unwrap_or(0.0)
        );
        failures.extend(verdict.failures);
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn check_kernel(verdict: &mut Verdict, kernel: &Value, release: &str, results: &Path) {
    let exit = fs::read_to_string(results.join("runner-exit")).unwrap_or_default();
    verdict.check(
        "runner",
        exit.trim() == "0",
        format!("the guest runner exited {exit:?}"),
    );
    let summary_path = results.join("summary.json");
    if !summary_path.exists() {
        verdict.fail("runner", format!("no {}", summary_path.display()));
        return;
    }
    let summary = read_json(&summary_path);
    verdict.check(
        "guest",
        summary["kernel"] == release,
        format!("the guest ran {} instead", summary["kernel"]),
    );
    verdict.check(
        "modprobe",
        summary["modprobe"]["ok"] == true,
        &summary["modprobe"]["detail"],
    );
    let left: Vec<&str> = summary["netns_left"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    verdict.check("end", left.is_empty(), format!("namespaces left: {left:?}"));
    verdict.check(
        "end",
        summary["programs_left"]
            .as_array()
            .is_some_and(Vec::is_empty),
        format!("programs left: {}", summary["programs_left"]),
    );
    let pings = summary["pings"].as_u64().expect("pings");
    let features = Features::of(kernel);
    println!("kernel {}: {features:?}", verdict.kernel);
    let scenarios = summary["scenarios"].as_array().expect("scenarios");
    check_coverage(verdict, scenarios, features);
    for scenario in scenarios {
        let name = scenario["name"].as_str().expect("name");
        let mut steps_ok = true;
        for step in scenario["steps"].as_array().expect("steps") {
            if step["ok"] != true {
                steps_ok = false;
                verdict.fail(name, format!("step {}: {}", step["step"], step["detail"]));
            }
        }
        if steps_ok {
            let dir = results.join(name);
            let run = Run::new(scenario, features, pings);
            check_scenario(verdict, &run, release, &dir);
        }
    }
}

/// Every lab mode ran with the default hooks, and netfilter through fentry ran on its own
/// where the kernel would otherwise take links.
fn check_coverage(verdict: &mut Verdict, scenarios: &[Value], features: Features) {
    for mode in ["host", "flannel-hostgw", "flannel-vxlan", "calico", "l2"] {
        let ran = scenarios
            .iter()
            .any(|s| s["mode"] == mode && s["hooks"].is_null());
        verdict.check(mode, ran, "the guest did not run this mode");
    }
    let forced = scenarios
        .iter()
        .any(|s| s["hooks"].as_str().is_some_and(|h| h.contains("nf-fentry")));
    verdict.check(
        "nf-fentry",
        forced == features.nf_links,
        format!("a forced fentry run: {forced}, want it exactly where links exist"),
    );
}

/// One scenario as the test reads it.
struct Run<'a> {
    name: &'a str,
    mode: &'a str,
    /// Netfilter through fentry (forced, or the kernel has no links).
    fentry: bool,
    foreign_clsact: bool,
    features: Features,
    pings: u64,
}

impl<'a> Run<'a> {
    fn new(scenario: &'a Value, features: Features, pings: u64) -> Self {
        let forced = scenario["hooks"]
            .as_str()
            .is_some_and(|h| h.contains("nf-fentry"));
        Self {
            name: scenario["name"].as_str().expect("name"),
            mode: scenario["mode"].as_str().expect("mode"),
            fentry: forced || !features.nf_links,
            foreign_clsact: scenario["foreign_clsact"] == true,
            features,
            pings,
        }
    }

    fn has_pods(&self) -> bool {
        self.mode != "host"
    }

    fn kube_proxy(&self) -> bool {
        matches!(self.mode, "flannel-hostgw" | "flannel-vxlan" | "calico")
    }

    /// The devices each node's agent watches on the path (as in `agent_lab`).
    fn devices(&self) -> Vec<&'static str> {
        let mut devices = vec!["eno1"];
        match self.mode {
            "flannel-hostgw" => devices.extend(["cni0", "veth-pod"]),
            "flannel-vxlan" => devices.extend(["cni0", "veth-pod", "flannel.1"]),
            "l2" => devices.push("veth-pod"),
            "calico" => devices.push("cali0pod"),
            _ => {}
        }
        devices
    }

    /// Passes per netfilter hook on each node (requests and replies): forwarded pod traffic
    /// crosses PRE_ROUTING, FORWARD and POST_ROUTING; VXLAN's outer packets add LOCAL_OUT
    /// and POST_ROUTING on the sender, PRE_ROUTING and LOCAL_IN on the receiver.
    fn hook_passes(&self) -> BTreeMap<&'static str, u64> {
        let n = self.pings;
        let table: &[(&str, u64)] = match self.mode {
            "flannel-hostgw" | "calico" => &[
                ("PRE_ROUTING", 2 * n),
                ("LOCAL_IN", 0),
                ("FORWARD", 2 * n),
                ("LOCAL_OUT", 0),
                ("POST_ROUTING", 2 * n),
            ],
            "flannel-vxlan" => &[
                ("PRE_ROUTING", 3 * n),
                ("LOCAL_IN", n),
                ("FORWARD", 2 * n),
                ("LOCAL_OUT", n),
                ("POST_ROUTING", 3 * n),
            ],
            _ => &[],
        };
        table.iter().copied().collect()
    }
}

fn check_scenario(verdict: &mut Verdict, run: &Run, release: &str, dir: &Path) {
    let scenario = run.name;
    for node in [1, 2] {
        let path = dir.join(format!("agent{node}.json"));
        let report = match fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<AgentReport>(&t).map_err(|e| e.to_string()))
        {
            Ok(report) => report,
            Err(err) => {
                verdict.fail(scenario, format!("{}: {err}", path.display()));
                continue;
            }
        };
        let at = format!("{scenario} node{node}");
        verdict.check(
            &at,
            report.kernel == release,
            format!("agent ran on {}", report.kernel),
        );
        check_devices(verdict, run, &at, node, &report);
        check_netfilter(verdict, run, &at, &report);
        check_stages(verdict, run, &at, &report);
        check_mechanisms(verdict, run, &at, &report);
        check_refusals(verdict, run, &at, &report);
        // A journey is abandoned when its skb shows up again after the agent's stale limit
        // (50 ms): under emulation a vCPU can be off that long, so the odd one happens
        // without anything being wrong. Hits above stay exact either way.
        let c = &report.counters;
        verdict.check(
            &at,
            c.abandoned <= run.pings / 10,
            format!("abandoned journeys: {c:?}"),
        );
        verdict.check(&at, c.read_errors == 0, format!("read errors: {c:?}"));
    }
    check_leftovers(verdict, run, dir);
}

fn check_devices(verdict: &mut Verdict, run: &Run, at: &str, node: u32, report: &AgentReport) {
    let mut names: Vec<String> = run.devices().iter().map(|d| d.to_string()).collect();
    if run.has_pods() {
        names.push(format!("netprof-vm-pod{node}:eth0"));
    }
    for device in names {
        for hook in ["tc-ingress", "tc-egress"] {
            let name = format!("{device} {hook}");
            let hits = report.hits(&name);
            verdict.check(
                at,
                hits == run.pings,
                format!("{name}: {hits} hits, want {}", run.pings),
            );
        }
    }
}

/// Hits of each netfilter point, by hook then priority.
fn nf_points(report: &AgentReport) -> BTreeMap<String, BTreeMap<i32, u64>> {
    let mut out: BTreeMap<String, BTreeMap<i32, u64>> = BTreeMap::new();
    for cp in report.checkpoints.iter().filter(|c| c.kind == "netfilter") {
        if let (Some(hook), Some(priority)) = (&cp.hook, cp.priority) {
            out.entry(hook.clone())
                .or_default()
                .insert(priority, cp.hits);
        }
    }
    out
}

fn check_netfilter(verdict: &mut Verdict, run: &Run, at: &str, report: &AgentReport) {
    let points = nf_points(report);
    if !run.kube_proxy() {
        let total: u64 = points.values().flat_map(|p| p.values()).sum();
        verdict.check(
            at,
            total == 0,
            format!("netfilter hits without tables: {points:?}"),
        );
        return;
    }
    for (hook, passes) in run.hook_passes() {
        let seen = points.get(hook).cloned().unwrap_or_default();
        if !run.fentry {
            // Links sit on the hook itself: every point of the hook sees every pass.
            for (priority, hits) in &seen {
                verdict.check(
                    at,
                    *hits == passes,
                    format!("nf {hook} {priority}: {hits} hits, want {passes} (links)"),
                );
            }
            verdict.check(
                at,
                passes == 0 || !seen.is_empty(),
                format!("no points on {hook}"),
            );
            continue;
        }
        // fentry: conntrack's bracket (PRE_ROUTING, LOCAL_OUT) and filter's (LOCAL_IN,
        // FORWARD, LOCAL_OUT) see every pass.
        let exact: &[i32] = match hook {
            "PRE_ROUTING" => &[-201, -199],
            "LOCAL_OUT" => &[-201, -199, 1],
            "LOCAL_IN" | "FORWARD" => &[-99, 1],
            _ => &[],
        };
        for priority in exact {
            let hits = seen.get(priority).copied().unwrap_or(0);
            verdict.check(
                at,
                hits == passes,
                format!("nf {hook} {priority}: {hits} hits, want {passes} (fentry)"),
            );
        }
        for (priority, hits) in &seen {
            verdict.check(
                at,
                *hits <= passes,
                format!("nf {hook} {priority}: {hits} hits, more than the {passes} passes"),
            );
        }
    }
}

fn check_stages(verdict: &mut Verdict, run: &Run, at: &str, report: &AgentReport) {
    let has = |stage: Stage| report.stage_segments(stage).next().is_some();
    for stage in [
        Stage::Conntrack,
        Stage::NatDnat,
        Stage::NatSnat,
        Stage::Filter,
    ] {
        verdict.check(
            at,
            has(stage) == run.kube_proxy(),
            format!(
                "stage {stage}: present {}, want {}",
                has(stage),
                run.kube_proxy()
            ),
        );
    }
    let vxlan = run.mode == "flannel-vxlan";
    for stage in [Stage::VxlanEncap, Stage::VxlanDecap] {
        verdict.check(
            at,
            has(stage) == vxlan,
            format!("stage {stage}: present {}", has(stage)),
        );
    }
    let bridged = matches!(run.mode, "flannel-hostgw" | "flannel-vxlan" | "l2");
    verdict.check(
        at,
        has(Stage::Bridge) == bridged,
        format!("stage bridge: {}", has(Stage::Bridge)),
    );
    verdict.check(
        at,
        has(Stage::Veth) == run.has_pods(),
        format!("stage veth: {}", has(Stage::Veth)),
    );
    verdict.check(at, !has(Stage::Other), "unnamed segments (stage other)");
}

/// Each checkpoint names the mechanism this kernel should have given it: TCX or clsact for
/// tc, links or fentry for netfilter.
fn check_mechanisms(verdict: &mut Verdict, run: &Run, at: &str, report: &AgentReport) {
    let tc = if run.features.tcx {
        Via::Tcx
    } else {
        Via::Clsact
    };
    let nf = if run.fentry {
        Via::Fentry
    } else {
        Via::NetfilterLink
    };
    for cp in &report.checkpoints {
        let want = match cp.kind.as_str() {
            "tc-ingress" | "tc-egress" => tc,
            "netfilter" => nf,
            _ => continue,
        };
        verdict.check(
            at,
            cp.via == Some(want),
            format!("{}: attached via {:?}, want {want:?}", cp.name, cp.via),
        );
    }
}

/// Every "not measured" entry must be one this kernel explains.
fn check_refusals(verdict: &mut Verdict, run: &Run, at: &str, report: &AgentReport) {
    for entry in &report.not_measured {
        let explained = if entry.reason.starts_with("no netfilter tables in ") {
            !run.kube_proxy()
        } else if entry.what.starts_with("nf ") {
            // A netfilter link point: only kernels without links refuse them.
            !run.features.nf_links && entry.reason.contains("kernel < 6.4")
        } else if entry.what.contains("tc-") {
            // A tc hook: where TCX is missing the agent falls back to clsact, so no kernel
            // explains a tc hook left out.
            verdict.fail(
                at,
                format!(
                    "tc hook not measured (TCX {} here, clsact otherwise): {}: {}",
                    if run.features.tcx {
                        "available"
                    } else {
                        "missing"
                    },
                    entry.what,
                    entry.reason
                ),
            );
            continue;
        } else if entry.what.starts_with("netfilter via fentry/fexit") {
            !run.features.fentry
        } else {
            false
        };
        verdict.check(
            at,
            explained,
            format!("unexpected refusal: {}: {}", entry.what, entry.reason),
        );
    }
}

fn check_leftovers(verdict: &mut Verdict, run: &Run, dir: &Path) {
    let scenario = run.name;
    for listing in ["programs-after.json", "links-after.json"] {
        let value = read_json(&dir.join(listing));
        verdict.check(
            scenario,
            value.as_array().is_some_and(Vec::is_empty),
            format!("{listing} after the agents stopped: {value}"),
        );
    }
    let tc = fs::read_to_string(dir.join("tc-after.txt")).unwrap_or_default();
    let mut netns = "";
    for line in tc.lines() {
        if let Some(name) = line.strip_prefix("# qdiscs ") {
            netns = name;
            continue;
        }
        if line.starts_with('#') {
            netns = "";
            continue;
        }
        let foreign =
            run.foreign_clsact && netns == "netprof-vm-node2" && line.contains("dev eno1");
        if !netns.is_empty() && line.contains("clsact") && !foreign {
            verdict.fail(scenario, format!("clsact qdisc left in {netns}: {line}"));
        }
    }
    if run.foreign_clsact {
        let foreign_qdisc = tc
            .lines()
            .any(|l| l.contains("clsact") && l.contains("dev eno1"));
        verdict.check(
            scenario,
            foreign_qdisc,
            "another tool's clsact qdisc was removed",
        );
        verdict.check(
            scenario,
            tc.contains("matchall"),
            "another tool's filter was removed",
        );
        verdict.check(
            scenario,
            !tc.contains(" bpf "),
            "a bpf filter is left on eno1",
        );
    }
}
