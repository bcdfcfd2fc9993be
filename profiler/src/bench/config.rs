//! What one benchmark run measures and for how long. Defaults are sized for 2 shared cores so
//! all five modes finish in a few minutes.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BenchConfig {
    /// Echo requests per ping run.
    pub ping_count: u32,
    /// Seconds between echo requests (below 0.2 s needs root, which the lab needs anyway).
    pub ping_interval_s: f64,
    /// Seconds per iperf3 run.
    pub iperf3_seconds: u32,
    /// ab requests per run and how many are in flight at once.
    pub ab_requests: u32,
    pub ab_concurrency: u32,
    /// Extra kube-proxy Services in the pod modes (5 iptables rules each).
    pub services: u32,
    /// Blocks the host path's and the pod path's pings are split into, alternating between the
    /// two paths, so both see the same stretches of the machine's speed (1: each path's pings
    /// in one piece). Runs written before this field pinged in one piece.
    #[serde(default = "one_piece")]
    pub ping_blocks: u32,
    /// What the CPUs did between packets (see `cpu_idle`); runs written before this field left
    /// them as they were.
    #[serde(default)]
    pub cpu_idle: super::cpu_idle::CpuIdle,
}

fn one_piece() -> u32 {
    1
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            ping_count: 200,
            ping_interval_s: 0.01,
            iperf3_seconds: 3,
            ab_requests: 20_000,
            ab_concurrency: 50,
            services: 0,
            ping_blocks: super::ping_blocks::BLOCKS,
            cpu_idle: super::cpu_idle::CpuIdle::AsIs,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("--ping-count must be at least 1")]
    PingCount,
    #[error("--ping-interval {0} is out of range: use 0.002 to 10 seconds")]
    PingInterval(f64),
    #[error("--ping-blocks {blocks} must be 1 to --ping-count {count}")]
    PingBlocks { blocks: u32, count: u32 },
    #[error("--iperf3-seconds must be 1 to 600")]
    IperfSeconds,
    #[error(
        "--ab-concurrency {concurrency} must be 1 to 1000 and at most --ab-requests {requests}"
    )]
    AbConcurrency { concurrency: u32, requests: u32 },
}

impl BenchConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ping_count == 0 {
            return Err(ConfigError::PingCount);
        }
        if self.ping_blocks == 0 || self.ping_blocks > self.ping_count {
            return Err(ConfigError::PingBlocks {
                blocks: self.ping_blocks,
                count: self.ping_count,
            });
        }
        if !(0.002..=10.0).contains(&self.ping_interval_s) {
            return Err(ConfigError::PingInterval(self.ping_interval_s));
        }
        if !(1..=600).contains(&self.iperf3_seconds) {
            return Err(ConfigError::IperfSeconds);
        }
        if self.ab_concurrency == 0
            || self.ab_concurrency > 1000
            || self.ab_concurrency > self.ab_requests
        {
            return Err(ConfigError::AbConcurrency {
                concurrency: self.ab_concurrency,
                requests: self.ab_requests,
            });
        }
        Ok(())
    }

    /// Longest a ping run may take before it counts as hung.
    pub fn ping_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.ping_count as f64 * self.ping_interval_s + 15.0)
    }

    pub fn iperf3_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.iperf3_seconds) + 20)
    }

    /// ab at a pessimistic 500 requests/s, plus start-up.
    pub fn ab_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.ab_requests) / 500 + 30)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        BenchConfig::default().validate().unwrap();
    }

    #[test]
    fn bad_values_name_the_flag() {
        let cfg = BenchConfig {
            ab_concurrency: 100,
            ab_requests: 10,
            ..Default::default()
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--ab-concurrency"));
        let cfg = BenchConfig {
            ping_interval_s: 0.0,
            ..Default::default()
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--ping-interval"));
        let cfg = BenchConfig {
            ping_count: 5,
            ping_blocks: 6,
            ..Default::default()
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--ping-blocks 6"));
    }

    #[test]
    fn a_run_written_before_blocks_pinged_in_one_piece() {
        let mut old = serde_json::to_value(BenchConfig::default()).unwrap();
        old.as_object_mut().unwrap().remove("ping_blocks");
        let old: BenchConfig = serde_json::from_value(old).unwrap();
        assert_eq!(old.ping_blocks, 1);
    }
}
