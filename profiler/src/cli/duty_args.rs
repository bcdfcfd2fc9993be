//! `--duty` / `--duty-period-ms`, shared by the subcommands that start agents.

use std::time::Duration;

use crate::agent::duty::{Duty, DEFAULT_PERIOD};

#[derive(Debug, Clone, clap::Args)]
pub struct DutyArgs {
    /// Attach the agents' programs for this percentage of every period only (100: always).
    /// Between windows the datapath runs without them; stage distributions come from the
    /// windows and counts are scaled to the whole run. Lower values cost less.
    #[arg(long, default_value_t = 100, value_name = "PERCENT")]
    pub duty: u32,
    /// The duty cycle's period.
    #[arg(long, default_value_t = DEFAULT_PERIOD.as_millis() as u64, value_name = "MS")]
    pub duty_period_ms: u64,
    /// With --duty: switch the kernel-wide /sys/kernel/rcu_expedited on during each window
    /// edge (the old value is written back after it). Edges then take ~2 ms instead of ~100 ms
    /// of paused programs, but every workload on the node feels expedited grace periods.
    #[arg(long)]
    pub expedite_rcu: bool,
}

impl DutyArgs {
    /// The duty cycle asked for (`None`: always attached).
    pub fn duty(&self) -> anyhow::Result<Option<Duty>> {
        Duty::from_percent(self.duty, Duration::from_millis(self.duty_period_ms))
            .map_err(|reason| anyhow::anyhow!("--{reason}"))
    }
}
