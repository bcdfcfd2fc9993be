//! The `netprof` binary on bad input and faults: one actionable error line, a non-zero exit,
//! and nothing left behind (namespaces, processes).

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use netprof::lab::{self, LabLock, LabNames};
use netprof_tests::{netprof_bin, skip_unless_kernel_ready, unique_lab_name};

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

fn nginx_workers() -> usize {
    let out = Command::new("pgrep")
        .args(["-c", "-f", "nginx: worker process"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn unknown_mode_names_the_valid_ones() {
    let line = error_line(&netprof(&[
        "bench",
        "--modes",
        "host,weave",
        "--out",
        "/tmp/netprof-unused",
    ]));
    assert!(
        line.contains("unknown network mode 'weave'") && line.contains("flannel-vxlan"),
        "{line}"
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
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(netprof_bin())
        .args(["lab", "up", "--mode", "host", "--lab", &unique_lab_name()])
        .output()
        .unwrap();
    let line = error_line(&output);
    assert!(line.contains("needs root"), "{line}");
}

#[test]
fn an_occupied_lab_is_refused_with_the_holder() {
    if skip_unless_kernel_ready("an_occupied_lab_is_refused_with_the_holder") {
        return;
    }
    let lab = unique_lab_name();
    let _held = LabLock::acquire(&lab).unwrap();
    let line = error_line(&netprof(&["lab", "up", "--mode", "host", "--lab", &lab]));
    assert!(
        line.contains("in use") && line.contains(&std::process::id().to_string()),
        "{line}"
    );
    assert!(lab_namespaces(&lab).is_empty());
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
    assert!(lab_namespaces(&lab).is_empty());
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

fn bench_with_path(path: &FakePath, lab: &str) -> Output {
    Command::new(netprof_bin())
        .args(["bench", "--modes", "flannel-hostgw", "--lab", lab, "--out"])
        .arg(std::env::temp_dir().join(format!("netprof-out-{lab}")))
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
    let line = error_line(&bench_with_path(&path, &lab));
    assert!(
        line.contains("`iperf3` is not installed") && line.contains("cargo xtask setup"),
        "{line}"
    );
    assert!(lab_namespaces(&lab).is_empty());
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
    let line = error_line(&bench_with_path(&path, &lab));
    assert!(line.contains("flannel-hostgw: host path: ab"), "{line}");
    assert!(lab_namespaces(&lab).is_empty(), "namespaces left");
    assert_eq!(nginx_workers(), workers, "nginx left running");
}

#[test]
fn ctrl_c_during_bench_removes_everything() {
    if skip_unless_kernel_ready("ctrl_c_during_bench_removes_everything") {
        return;
    }
    let workers = nginx_workers();
    let lab = unique_lab_name();
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
        .arg(std::env::temp_dir().join(format!("netprof-out-{lab}")))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until iperf3 (60 s) is running, then interrupt.
    let start = Instant::now();
    while !Command::new("pgrep")
        .args(["-f", "iperf3 -c"])
        .status()
        .unwrap()
        .success()
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "iperf3 never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: signalling our own child.
    unsafe { libc_kill(child.id() as i32, 2) };
    let output = child.wait_with_output().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "interrupt took too long"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(lab_namespaces(&lab).is_empty(), "namespaces left");
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
