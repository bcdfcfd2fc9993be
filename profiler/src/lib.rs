//! netprof: benchmarks pod networks and attributes their cost to datapath stages.

pub mod agent;
pub mod api;
pub mod bench;
pub mod cli;
pub mod cmd;
pub mod ebpf;
pub mod k8s;
pub mod lab;
pub mod netns;
pub mod parse;
pub mod report;
pub mod rundir;
pub mod testing;

/// The running kernel's release (`uname -r`), or `unknown` when it cannot be read.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}
