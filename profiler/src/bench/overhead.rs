//! The profiler's own cost, measured side by side: on one lab, ab and iperf3 on the pod path run
//! alternately without and with the agents attached, several rounds, so drift of the machine
//! hits both sides alike. The ratios of the medians are the overhead.

use std::path::PathBuf;

use super::config::BenchConfig;
use super::{servers, tools, BenchError};
use crate::lab::{Lab, Mode};

/// One measurement of the pod path.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    pub round: u32,
    pub with_agent: bool,
    pub qps: f64,
    pub ab_mean_ms: f64,
    pub iperf3_gbit_s: f64,
}

/// The outcome: every sample, the medians and their ratios (with / without).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OverheadResult {
    pub mode: Mode,
    pub rounds: u32,
    pub samples: Vec<Sample>,
    pub qps_without: f64,
    pub qps_with: f64,
    pub qps_ratio: f64,
    pub iperf3_without_gbit_s: f64,
    pub iperf3_with_gbit_s: f64,
    pub iperf3_ratio: f64,
}

pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

impl OverheadResult {
    pub fn from_samples(mode: Mode, rounds: u32, samples: Vec<Sample>) -> Self {
        let pick = |with: bool, f: fn(&Sample) -> f64| {
            let mut v: Vec<f64> = samples.iter().filter(|s| s.with_agent == with).map(f).collect();
            median(&mut v)
        };
        let (qps_without, qps_with) = (pick(false, |s| s.qps), pick(true, |s| s.qps));
        let (bw_without, bw_with) = (pick(false, |s| s.iperf3_gbit_s), pick(true, |s| s.iperf3_gbit_s));
        Self {
            mode,
            rounds,
            qps_ratio: qps_with / qps_without,
            iperf3_ratio: bw_with / bw_without,
            qps_without,
            qps_with,
            iperf3_without_gbit_s: bw_without,
            iperf3_with_gbit_s: bw_with,
            samples,
        }
    }

    pub fn render(&self) -> String {
        let mut out = format!("overhead on {} (pod path), {} rounds alternating:\n", self.mode, self.rounds);
        out.push_str("round  agent  nginx QPS  ab mean ms  iperf3 Gbit/s\n");
        for s in &self.samples {
            out.push_str(&format!(
                "{:<5}  {:<5}  {:>9.0}  {:>10.3}  {:>13.2}\n",
                s.round,
                if s.with_agent { "on" } else { "off" },
                s.qps,
                s.ab_mean_ms,
                s.iperf3_gbit_s
            ));
        }
        out.push_str(&format!(
            "median QPS: {:.0} without, {:.0} with -> {:.3}x\nmedian iperf3: {:.2} without, {:.2} with Gbit/s -> {:.3}x\n",
            self.qps_without, self.qps_with, self.qps_ratio, self.iperf3_without_gbit_s, self.iperf3_with_gbit_s, self.iperf3_ratio
        ));
        out
    }
}

/// Runs the alternation on a built lab. `attach` starts the agents and returns what `detach`
/// takes back after the round's runs (to read the agents' own statistics, then drop them);
/// the order flips every round (off,on / on,off) to cancel drift.
pub async fn run<G, E>(
    lab: &Lab,
    cfg: &BenchConfig,
    rounds: u32,
    work_dir: PathBuf,
    mut attach: impl FnMut() -> Result<G, E>,
    mut detach: impl FnMut(G),
) -> Result<Vec<Sample>, BenchError>
where
    E: Into<BenchError>,
{
    let mode = lab.mode();
    let path = lab.pod_path().unwrap_or_else(|| lab.host_path());
    let server_err = |what| move |source| BenchError::Server { mode, what, source };
    let _nginx = servers::start_nginx(&path.server_netns, &work_dir).map_err(server_err("nginx"))?;
    let _iperf3 = servers::start_iperf3(&path.server_netns).map_err(server_err("iperf3 server"))?;
    let tool_err = |step: &'static str| move |source| BenchError::Tool { mode, step: step.to_owned(), source };
    let mut samples = Vec::new();
    for round in 1..=rounds {
        let order = if round % 2 == 1 { [false, true] } else { [true, false] };
        for with_agent in order {
            let guard = if with_agent { Some(attach().map_err(Into::into)?) } else { None };
            let ab = tools::ab(&path.http_client_netns, path.http_target, cfg).await.map_err(tool_err("overhead: ab"))?;
            let iperf3 = tools::iperf3(&path.client_netns, path.server_ip, cfg).await.map_err(tool_err("overhead: iperf3"))?;
            if let Some(guard) = guard {
                detach(guard);
            }
            let sample = Sample {
                round,
                with_agent,
                qps: ab.requests_per_second,
                ab_mean_ms: ab.mean_time_per_request_ms,
                iperf3_gbit_s: iperf3.receiver_bps / 1e9,
            };
            eprintln!(
                "[overhead] round {round}/{rounds} agent {:<3} {:.0} req/s, {:.2} Gbit/s",
                if with_agent { "on" } else { "off" },
                sample.qps,
                sample.iperf3_gbit_s
            );
            samples.push(sample);
        }
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn ratios_compare_medians_of_each_side() {
        let s = |round, with_agent, qps, bw| Sample { round, with_agent, qps, ab_mean_ms: 1.0, iperf3_gbit_s: bw };
        let result = OverheadResult::from_samples(
            Mode::FlannelVxlan,
            2,
            vec![s(1, false, 100.0, 10.0), s(1, true, 98.0, 9.0), s(2, true, 96.0, 9.5), s(2, false, 100.0, 10.0)],
        );
        assert_eq!(result.qps_ratio, 0.97);
        assert_eq!(result.iperf3_ratio, 0.925);
    }
}
