//! The `netprof` binary on bad input and faults: one actionable error line, a non-zero exit,
//! and nothing left behind (namespaces, processes).

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use netprof::lab::{self, LabLock, LabNames};
use netprof_tests::{netprof_bin, skip_unless_kernel_ready, unique_lab_name, TempPath};

fn netprof(args: &[&str]) -> Output {
    Command::new(netprof_bin()).args(args).output().unwrap()
}

/// The one `netprof: error:` line, after asserting the run failed.
fn error_line(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "expected failure, got {:?}",
        output.status
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("netprof: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "stderr: {stderr}");
    lines[0].to_owned()
}

fn lab_namespaces(lab: &str) -> Vec<String> {
    let names = LabNames::new(lab).unwrap();
    lab::list_namespaces()
        .unwrap()
        .into_iter()
        .filter(|ns| names.owns(ns))
        .collect()
}

/// nginx workers running now (`pgrep -c` prints the count, 0 included; anything else fails).
fn nginx_workers() -> usize {
    let out = Command::new("pgrep")
        .args(["-c", "-f", "nginx: worker process"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("pgrep -c printed {text:?} ({})", out.status))
}

/// Nothing of lab `lab` is left: namespaces, its state file, work directory and lock.
fn assert_lab_gone(lab: &str) {
    assert!(lab_namespaces(lab).is_empty(), "namespaces of {lab} left");
    let state = Path::new(lab::STATE_DIR);
    for left in [
        state.join(format!("{lab}.json")),
        state.join(format!("{lab}.lock")),
        state.join(lab),
    ] {
        assert!(!left.exists(), "{} left behind", left.display());
    }
}

#[test]
fn unknown_mode_names_the_valid_ones() {
    let out = TempPath::new("out");
    let line = error_line(
        &Command::new(netprof_bin())
            .args(["bench", "--modes", "host,weave", "--out"])
            .arg(out.path())
            .output()
            .unwrap(),
    );
    assert!(
        line.contains("unknown network mode 'weave'") && line.contains("flannel-vxlan"),
        "{line}"
    );
    assert!(
        !out.path().exists(),
        "{} created for a refused run",
        out.as_str()
    );
}

#[test]
fn bad_lab_name_and_flags_are_refused() {
    let line = error_line(&netprof(&[
        "lab", "up", "--mode", "host", "--lab", "Bad Name",
    ]));
    assert!(line.contains("invalid lab name"), "{line}");
    let line = error_line(&netprof(&[
        "bench",
        "--ab-requests",
        "10",
        "--ab-concurrency",
        "50",
    ]));
    assert!(line.contains("--ab-concurrency"), "{line}");
}

#[test]
fn not_root_is_told_to_use_sudo() {
    if skip_unless_kernel_ready("not_root_is_told_to_use_sudo") {
        return;
    }
    use std::os::unix::process::CommandExt;
    let lab = unique_lab_name();
    // std drops the supplementary groups when it changes the uid.
    let output = Command::new(netprof_bin())
        .uid(65534)
        .gid(65534)
        .args(["lab", "up", "--mode", "host", "--lab", &lab])
        .output()
        .unwrap();
    let line = error_line(&output);
    assert!(line.contains("needs root"), "{line}");
    assert_lab_gone(&lab);
}

#[test]
fn an_occupied_lab_is_refused_with_the_holder() {
    if skip_unless_kernel_ready("an_occupied_lab_is_refused_with_the_holder") {
        return;
    }
    let lab = unique_lab_name();
    let held = LabLock::acquire(&lab).unwrap();
    let line = error_line(&netprof(&["lab", "up", "--mode", "host", "--lab", &lab]));
    assert!(
        line.contains("in use") && line.contains(&std::process::id().to_string()),
        "{line}"
    );
    drop(held);
    assert_lab_gone(&lab);
}

#[test]
fn unwritable_output_fails_before_building_anything() {
    if skip_unless_kernel_ready("unwritable_output_fails_before_building_anything") {
        return;
    }
    let lab = unique_lab_name();
    let line = error_line(&netprof(&[
        "bench",
        "--modes",
        "host",
        "--lab",
        &lab,
        "--out",
        "/proc/netprof-out",
    ]));
    assert!(line.contains("--out"), "{line}");
    assert_lab_gone(&lab);
}

/// A PATH holding links to the real tools, with some replaced or left out.
struct FakePath {
    dir: PathBuf,
}

impl FakePath {
    fn new(skip: &[&str], fakes: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(format!("netprof-fakepath-{}", unique_lab_name()));
        std::fs::create_dir_all(&dir).unwrap();
        for tool in netprof::bench::REQUIRED_TOOLS
            .iter()
            .chain(&["iptables", "pgrep", "sleep"])
        {
            if skip.contains(tool) || fakes.iter().any(|(name, _)| name == tool) {
                continue;
            }
            let real = which(tool);
            symlink(real, dir.join(tool)).unwrap();
        }
        for (name, script) in fakes {
            let path = dir.join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
        Self { dir }
    }
}

impl Drop for FakePath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn which(tool: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let path = Path::new(dir).join(tool);
        if path.exists() {
            return path;
        }
    }
    panic!("{tool} not found: run cargo xtask setup");
}

fn bench_with_path(path: &FakePath, lab: &str, out: &TempPath) -> Output {
    Command::new(netprof_bin())
        .args(["bench", "--modes", "flannel-hostgw", "--lab", lab, "--out"])
        .arg(out.path())
        .args([
            "--ping-count",
            "3",
            "--iperf3-seconds",
            "1",
            "--ab-requests",
            "100",
            "--ab-concurrency",
            "5",
        ])
        .env("PATH", &path.dir)
        .output()
        .unwrap()
}

#[test]
fn a_missing_tool_is_named_with_the_fix() {
    if skip_unless_kernel_ready("a_missing_tool_is_named_with_the_fix") {
        return;
    }
    let path = FakePath::new(&["iperf3"], &[]);
    let lab = unique_lab_name();
    let out = TempPath::new("out");
    let line = error_line(&bench_with_path(&path, &lab, &out));
    assert!(
        line.contains("`iperf3` is not installed") && line.contains("cargo xtask setup"),
        "{line}"
    );
    assert_lab_gone(&lab);
}

#[test]
fn a_tool_printing_garbage_fails_cleanly() {
    if skip_unless_kernel_ready("a_tool_printing_garbage_fails_cleanly") {
        return;
    }
    let workers = nginx_workers();
    let path = FakePath::new(
        &[],
        &[("ab", "echo 'Segmentation fault (not really)'; exit 139")],
    );
    let lab = unique_lab_name();
    let out = TempPath::new("out");
    let line = error_line(&bench_with_path(&path, &lab, &out));
    assert!(line.contains("flannel-hostgw: host path: ab"), "{line}");
    assert_lab_gone(&lab);
    assert_eq!(nginx_workers(), workers, "nginx left running");
}

#[test]
fn ctrl_c_during_bench_removes_everything() {
    if skip_unless_kernel_ready("ctrl_c_during_bench_removes_everything") {
        return;
    }
    interrupt_bench_during_iperf3("flannel-vxlan", 1);
}

/// Several modes run side by side (all their labs up at once): Ctrl-C in the first mode's
/// iperf3 removes every lab, the ones still waiting for their turn too.
#[test]
fn ctrl_c_during_modes_side_by_side_removes_every_lab() {
    if skip_unless_kernel_ready("ctrl_c_during_modes_side_by_side_removes_every_lab") {
        return;
    }
    interrupt_bench_during_iperf3("host,flannel-hostgw,flannel-vxlan", 3);
}

/// Interrupts `bench --modes <modes>` once iperf3 runs; asserts nothing is left of its `labs`
/// labs (`<lab>`, `<lab>-2`, ...), nginx or iperf3.
fn interrupt_bench_during_iperf3(modes: &str, labs: usize) {
    let workers = nginx_workers();
    let lab = unique_lab_name();
    let out = TempPath::new("out");
    let child = Command::new(netprof_bin())
        .args([
            "bench",
            "--modes",
            modes,
            "--lab",
            &lab,
            "--iperf3-seconds",
            "60",
            "--ping-count",
            "5",
            "--out",
        ])
        .arg(out.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until iperf3 (60 s) is running, then interrupt. Reaching it takes a lab and a
    // ping step (seconds); the deadline only catches a bench that never gets there.
    let start = Instant::now();
    while !Command::new("pgrep")
        .args(["-f", "iperf3 -c"])
        .status()
        .unwrap()
        .success()
    {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "iperf3 never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = start.elapsed();
    // SAFETY: signalling our own child.
    unsafe { libc_kill(child.id() as i32, 2) };
    let interrupted = Instant::now();
    let output = child.wait_with_output().unwrap();
    let stopped = interrupted.elapsed();
    println!("iperf3 running after {started:?}; bench stopped {stopped:?} after SIGINT");
    // Well before iperf3's 60 s would have ended on its own.
    assert!(
        stopped < Duration::from_secs(30),
        "interrupt took {stopped:?}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("interrupted"), "{stderr}");
    if labs > 1 {
        assert!(stderr.contains("side by side"), "{stderr}");
    }
    assert_lab_gone(&lab);
    for k in 2..=labs {
        assert_lab_gone(&format!("{lab}-{k}"));
    }
    assert_eq!(nginx_workers(), workers, "nginx left running");
    assert!(
        !Command::new("pgrep")
            .args(["-f", "iperf3 -c"])
            .status()
            .unwrap()
            .success(),
        "iperf3 left running"
    );
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Several modes without agents run side by side: every lab is up before the first iperf3, the
/// pings of every path take turns in blocks, each mode still gets all its pings, and no lab is
/// left afterwards.
#[test]
fn modes_side_by_side_ping_in_turns_and_leave_nothing() {
    if skip_unless_kernel_ready("modes_side_by_side_ping_in_turns_and_leave_nothing") {
        return;
    }
    let lab = unique_lab_name();
    let out = TempPath::new("out");
    let output = Command::new(netprof_bin())
        .args(["bench", "--modes", "host,calico", "--lab", &lab])
        .args(["--ping-count", "20", "--iperf3-seconds", "1"])
        .args(["--ab-requests", "200", "--ab-concurrency", "5", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let at = |text: &str| {
        stderr
            .find(text)
            .unwrap_or_else(|| panic!("no {text:?} in {stderr}"))
    };
    // Both labs up, then one ping step over the three paths, then the first mode's iperf3.
    assert!(at("calico         building the lab") < at("[pings] 3 paths of 2 modes side by side"));
    assert!(at("[pings]") < at("host path: iperf3"));
    assert!(stderr.contains("in 10 alternating blocks"), "{stderr}");
    let read = |mode: &str| -> serde_json::Value {
        let file = out.path().join(format!("{mode}.json"));
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap()
    };
    let (host, calico) = (read("host"), read("calico"));
    for (result, path) in [
        (&host, "host_path"),
        (&calico, "host_path"),
        (&calico, "pod_path"),
    ] {
        assert_eq!(result["config"]["ping_blocks"], 10);
        assert_eq!(result[path]["ping"]["transmitted"], 20, "{path}");
        assert_eq!(result[path]["ping"]["received"], 20, "{path}");
    }
    assert_lab_gone(&lab);
    assert_lab_gone(&format!("{lab}-2"));
}

/// The machine's CPU latency target now, µs (reading the PM QoS device gives it).
fn cpu_latency_target_us() -> i32 {
    let bytes = std::fs::read("/dev/cpu_dma_latency").unwrap();
    i32::from_ne_bytes(bytes[..4].try_into().unwrap())
}

/// µs all CPUs have spent in their polling idle state (exit latency 0), if they have one.
fn polling_idle_us() -> Option<u64> {
    let mut total = None;
    for cpu in std::fs::read_dir("/sys/devices/system/cpu").ok()? {
        let states = cpu.ok()?.path().join("cpuidle");
        for state in std::fs::read_dir(states).into_iter().flatten().flatten() {
            let read = |f: &str| std::fs::read_to_string(state.path().join(f)).ok();
            if read("latency").is_some_and(|l| l.trim() == "0") {
                let us: u64 = read("time")?.trim().parse().ok()?;
                total = Some(total.unwrap_or(0) + us);
            }
        }
    }
    total
}

/// `--cpu-idle poll` keeps idle CPUs polling for the run (their polling state's time grows by
/// a large share of the run's length), records it, and leaves the latency target as it found
/// it. Where the kernel has no cpuidle driver it is refused with the reason.
#[test]
fn cpu_idle_poll_keeps_the_cpus_polling_for_the_run_only() {
    if skip_unless_kernel_ready("cpu_idle_poll_keeps_the_cpus_polling_for_the_run_only") {
        return;
    }
    let lab = unique_lab_name();
    let out = TempPath::new("out");
    let target_before = cpu_latency_target_us();
    let polled_before = polling_idle_us();
    let started = Instant::now();
    let output = Command::new(netprof_bin())
        .args([
            "bench",
            "--modes",
            "host",
            "--lab",
            &lab,
            "--cpu-idle",
            "poll",
        ])
        .args(["--ping-count", "100", "--iperf3-seconds", "1"])
        .args(["--ab-requests", "200", "--ab-concurrency", "5", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    let wall_us = started.elapsed().as_micros() as u64;
    assert_lab_gone(&lab);
    assert_eq!(
        cpu_latency_target_us(),
        target_before,
        "the request outlived the run"
    );
    let driver = std::fs::read_to_string("/sys/devices/system/cpu/cpuidle/current_driver")
        .map(|d| d.trim().to_owned())
        .unwrap_or_default();
    let Some(before) = polled_before.filter(|_| !driver.is_empty() && driver != "none") else {
        let line = error_line(&output);
        assert!(
            line.contains("--cpu-idle poll") && line.contains("--cpu-idle as-is"),
            "{line}"
        );
        return;
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let polled = polling_idle_us().unwrap() - before;
    // Two CPUs, mostly idle between 10 ms pings: polling for well over a fifth of one CPU's
    // time (halting, the polling state is hardly entered).
    assert!(
        polled * 5 > wall_us,
        "polled {polled} µs in a {wall_us} µs run"
    );
    let file = out.path().join("host.json");
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(result["config"]["cpu_idle"], "poll");
}
