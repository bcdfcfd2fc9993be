//! The benchmark tools' settings, shared by the subcommands that run the study's benchmarks
//! (`bench` on the lab, `k8s run` on a cluster).

use crate::bench::BenchConfig;

#[derive(Debug, Clone, clap::Args)]
pub struct ToolArgs {
    /// Echo requests per ping run.
    #[arg(long, default_value_t = BenchConfig::default().ping_count)]
    pub ping_count: u32,
    /// Seconds between echo requests.
    #[arg(long, default_value_t = BenchConfig::default().ping_interval_s)]
    pub ping_interval: f64,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = BenchConfig::default().iperf3_seconds)]
    pub iperf3_seconds: u32,
    /// ab requests per run.
    #[arg(long, default_value_t = BenchConfig::default().ab_requests)]
    pub ab_requests: u32,
    /// ab concurrency.
    #[arg(long, default_value_t = BenchConfig::default().ab_concurrency)]
    pub ab_concurrency: u32,
}

impl ToolArgs {
    /// The benchmark configuration, validated, with `services` extra kube-proxy Services and
    /// the pings in `ping_blocks` blocks alternating between the paths.
    pub fn config(&self, services: u32, ping_blocks: u32) -> anyhow::Result<BenchConfig> {
        let cfg = BenchConfig {
            ping_count: self.ping_count,
            ping_interval_s: self.ping_interval,
            iperf3_seconds: self.iperf3_seconds,
            ab_requests: self.ab_requests,
            ab_concurrency: self.ab_concurrency,
            services,
            ping_blocks,
            // The lab's `bench` chooses it (`--cpu-idle`); a cluster's nodes idle as they do.
            ..BenchConfig::default()
        };
        cfg.validate()?;
        Ok(cfg)
    }
}
