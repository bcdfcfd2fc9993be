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
    let workers = nginx_workers();
    let lab = unique_lab_name();
    let out = TempPath::new("out");
    let child = Command::new(netprof_bin())
        .args([
            "bench",
            "--modes",
            "flannel-vxlan",
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
    assert_lab_gone(&lab);
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
