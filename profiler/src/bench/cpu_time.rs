//! The machine's busy CPU time from `/proc/stat`: in the lab both nodes share one kernel, so
//! the busy time during an ab run, divided by its requests, is what one request costs in CPU
//! over the whole datapath. It moves far less between runs than latency percentiles do.

use std::time::Duration;

/// Busy time of all CPUs so far (user, nice, system, irq, softirq, steal), `None` if
/// `/proc/stat` cannot be read.
fn busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    busy_of(&stat, clock_ticks_per_second())
}

/// Counts the machine's busy time from its start.
pub struct CpuMeter(Option<Duration>);

impl CpuMeter {
    pub fn start() -> Self {
        CpuMeter(busy())
    }

    /// Busy time since the start per request, ns; `None` if `/proc/stat` could not be read or
    /// no request completed.
    pub fn per_request(&self, requests: u64) -> Option<f64> {
        let used = busy()?.saturating_sub(self.0?);
        (requests > 0).then(|| used.as_nanos() as f64 / requests as f64)
    }
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// The aggregate `cpu` line: user nice system idle iowait irq softirq steal ...
fn busy_of(stat: &str, ticks_per_second: u64) -> Option<Duration> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    let ticks = field(0) + field(1) + field(2) + field(5) + field(6) + field(7);
    Some(Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000 / ticks_per_second.max(1)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 9000 40 3 7 2 0 0\ncpu0 50 2 25 4500 20 1 3 1 0 0\nintr 1\n";
        // 100 + 5 + 50 + 3 + 7 + 2 ticks of 10 ms
        assert_eq!(busy_of(stat, 100), Some(Duration::from_millis(1670)));
        assert_eq!(busy_of("intr 1\n", 100), None);
        assert_eq!(busy_of("cpu  1 x 3\n", 100), None);
    }
}
