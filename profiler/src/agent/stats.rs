//! The kernel's per-program run time statistics (bpf_stats), on while the agent runs.
//!
//! Preferred: `BPF_ENABLE_STATS`, which counts per holder and switches itself off when the
//! last fd closes (also when the agent is killed), so two agents in one kernel never switch
//! statistics off under each other. Fallback: `/proc/sys/kernel/bpf_stats_enabled`, whose old
//! value is written back on drop.

use std::{os::fd::OwnedFd, time::Duration};

pub const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Always-attached agents keep bpf_stats on for this share of every [`STATS_PERIOD`] only.
/// Statistics cost two clock reads per program run, a cost of the same order as the programs'
/// own (docs/profiling-and-overhead.md measures it side by side). The run time per run comes
/// from the sampled slices (steady benchmark traffic), and totals are scaled by the share
/// (`AgentReport::stats_s`).
pub const DEFAULT_STATS_SHARE: u32 = 10;
pub const STATS_PERIOD: Duration = Duration::from_secs(1);

/// Keeps bpf_stats on while alive.
#[derive(Debug)]
pub enum StatsGuard {
    Fd(#[allow(dead_code)] OwnedFd),
    Sysctl { old: String },
}

impl StatsGuard {
    /// Turns statistics on; the error text says why they could not be (the agent goes on).
    pub fn enable() -> Result<Self, String> {
        match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => return Ok(StatsGuard::Fd(fd)),
            Err(err) => log::debug!("BPF_ENABLE_STATS failed ({err}); trying {SYSCTL}"),
        }
        let old = std::fs::read_to_string(SYSCTL)
            .map_err(|e| format!("cannot read {SYSCTL}: {e}"))?
            .trim()
            .to_owned();
        std::fs::write(SYSCTL, "1").map_err(|e| format!("cannot write {SYSCTL}: {e}"))?;
        Ok(StatsGuard::Sysctl { old })
    }
}

impl Drop for StatsGuard {
    fn drop(&mut self) {
        if let StatsGuard::Sysctl { old } = self {
            if let Err(err) = std::fs::write(SYSCTL, old.as_bytes()) {
                log::warn!("cannot restore {SYSCTL} to {old}: {err}");
            }
        }
    }
}
