//! Helpers shared by the integration tests: root/kernel checks that skip visibly, unique lab
//! names, and the path of the `netprof` binary.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// Why this machine cannot run a kernel-level test, if it cannot.
pub fn kernel_test_blocker() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        return Some("needs root (network namespaces, iptables, eBPF)".to_owned());
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some("kernel lacks BTF (/sys/kernel/btf/vmlinux)".to_owned());
    }
    None
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Prints a visible skip line and returns true when the test cannot run here.
pub fn skip_unless_kernel_ready(test: &str) -> bool {
    match kernel_test_blocker() {
        Some(reason) => {
            let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
            eprintln!("SKIPPED {test}: {reason} (kernel {})", kernel.trim());
            true
        }
        None => false,
    }
}

/// A lab name no other test (or user) has: `it<pid>-<n>`.
pub fn unique_lab_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("it{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst))
}

/// The `netprof` binary next to the test executable (`cargo xtask test` builds it first).
pub fn netprof_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps");
    let bin = dir.join("netprof");
    assert!(bin.exists(), "{} is missing: run `cargo build` (cargo xtask test does)", bin.display());
    bin
}

/// Runs `iptables-save` in the root namespace (what the lab must never change).
pub fn root_iptables() -> String {
    std::process::Command::new("iptables-save")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| l.split(" [").next().unwrap_or(l).to_owned())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}
