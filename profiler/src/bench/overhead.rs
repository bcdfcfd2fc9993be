//! The profiler's own cost, measured side by side: on one lab, ab and iperf3 on the pod path run
//! without the agents and with each agent setting to compare (e.g. always attached, and
//! duty-cycled), one after the other in every round, the order rotating each round so drift of
//! the machine hits every setting alike. The ratios of the medians to "off" are the overhead.

use std::path::PathBuf;

use super::bootstrap::{median_interval, verdict, Verdict};
use super::config::BenchConfig;
use super::{servers, tools, BenchError};
use crate::lab::{Lab, Mode};

/// The variant without agents.
pub const OFF: &str = "off";

/// The agents' cost goals: ab QPS and iperf3 throughput with the agents, as a share of
/// without.
pub const QPS_TARGET: f64 = 0.97;
pub const IPERF3_TARGET: f64 = 0.95;

/// One measurement of the pod path.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    pub round: u32,
    /// `off`, or the agents' setting (e.g. `duty 100%`).
    pub variant: String,
    pub qps: f64,
    pub ab_mean_ms: f64,
    pub iperf3_gbit_s: f64,
}

/// One variant's medians and their ratios to `off`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VariantSummary {
    pub variant: String,
    pub qps: f64,
    pub iperf3_gbit_s: f64,
    /// Ratios of the medians to `off`'s.
    pub qps_ratio: f64,
    pub iperf3_ratio: f64,
    /// Median over rounds of (this setting / `off`) within the same round: steadier when the
    /// machine drifts between rounds.
    pub qps_ratio_paired: f64,
    pub iperf3_ratio_paired: f64,
    /// 95% bootstrap intervals of the paired ratios (`None` under 3 rounds).
    #[serde(default)]
    pub qps_ratio_paired_interval: Option<(f64, f64)>,
    #[serde(default)]
    pub iperf3_ratio_paired_interval: Option<(f64, f64)>,
}

/// The outcome: every sample, and each variant's medians and ratios.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OverheadResult {
    pub mode: Mode,
    pub rounds: u32,
    pub samples: Vec<Sample>,
    /// `off` first, then the agent settings in the order given.
    pub variants: Vec<VariantSummary>,
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
        let mut names: Vec<String> = vec![OFF.to_owned()];
        for s in &samples {
            if !names.contains(&s.variant) {
                names.push(s.variant.clone());
            }
        }
        let pick = |variant: &str, f: fn(&Sample) -> f64| {
            let mut v: Vec<f64> = samples
                .iter()
                .filter(|s| s.variant == variant)
                .map(f)
                .collect();
            median(&mut v)
        };
        let (qps_off, bw_off) = (pick(OFF, |s| s.qps), pick(OFF, |s| s.iperf3_gbit_s));
        let paired = |variant: &str, f: fn(&Sample) -> f64| -> Vec<f64> {
            samples
                .iter()
                .filter(|s| s.variant == variant)
                .filter_map(|s| {
                    let off = samples
                        .iter()
                        .find(|o| o.round == s.round && o.variant == OFF)?;
                    Some(f(s) / f(off))
                })
                .collect()
        };
        let variants = names
            .iter()
            .map(|name| {
                let (qps, bw) = (pick(name, |s| s.qps), pick(name, |s| s.iperf3_gbit_s));
                let (mut qps_pairs, mut bw_pairs) =
                    (paired(name, |s| s.qps), paired(name, |s| s.iperf3_gbit_s));
                VariantSummary {
                    variant: name.clone(),
                    qps,
                    iperf3_gbit_s: bw,
                    qps_ratio: qps / qps_off,
                    iperf3_ratio: bw / bw_off,
                    qps_ratio_paired_interval: median_interval(&qps_pairs),
                    iperf3_ratio_paired_interval: median_interval(&bw_pairs),
                    qps_ratio_paired: median(&mut qps_pairs),
                    iperf3_ratio_paired: median(&mut bw_pairs),
                }
            })
            .collect();
        Self {
            mode,
            rounds,
            samples,
            variants,
        }
    }

    pub fn render(&self) -> String {
        let width = self
            .variants
            .iter()
            .map(|v| v.variant.len())
            .max()
            .unwrap_or(0)
            .max("agents".len());
        let mut out = format!(
            "overhead on {} (pod path), {} rounds, settings in rotating order:\n",
            self.mode, self.rounds
        );
        out.push_str(&format!(
            "round  {:<width$}  nginx QPS  ab mean ms  iperf3 Gbit/s\n",
            "agents"
        ));
        for s in &self.samples {
            out.push_str(&format!(
                "{:<5}  {:<width$}  {:>9.0}  {:>10.3}  {:>13.2}\n",
                s.round, s.variant, s.qps, s.ab_mean_ms, s.iperf3_gbit_s
            ));
        }
        out.push_str("medians (ratio: of the medians; paired: median of each round's ratio to off, with its 95% interval):\n");
        out.push_str(&format!("{:<width$}  nginx QPS  ratio   paired  interval       iperf3 Gbit/s  ratio   paired  interval\n", "agents"));
        for v in &self.variants {
            out.push_str(&format!(
                "{:<width$}  {:>9.0}  {:>5.3}x  {:>5.3}x  {:<13}  {:>13.2}  {:>5.3}x  {:>5.3}x  {}\n",
                v.variant,
                v.qps,
                v.qps_ratio,
                v.qps_ratio_paired,
                interval_text(v.qps_ratio_paired_interval),
                v.iperf3_gbit_s,
                v.iperf3_ratio,
                v.iperf3_ratio_paired,
                interval_text(v.iperf3_ratio_paired_interval)
            ));
        }
        out.push_str(&format!("against the targets (nginx QPS >= {QPS_TARGET}x, iperf3 >= {IPERF3_TARGET}x), by the paired intervals:\n"));
        for v in self.variants.iter().filter(|v| v.variant != OFF) {
            out.push_str(&format!(
                "  {:<width$}  QPS {}; iperf3 {}\n",
                v.variant,
                verdict_text(v.qps_ratio_paired_interval, QPS_TARGET),
                verdict_text(v.iperf3_ratio_paired_interval, IPERF3_TARGET)
            ));
        }
        out
    }
}

fn interval_text(interval: Option<(f64, f64)>) -> String {
    interval.map_or_else(|| "-".to_owned(), |(lo, hi)| format!("{lo:.3}-{hi:.3}"))
}

fn verdict_text(interval: Option<(f64, f64)>, target: f64) -> &'static str {
    match interval.map(|i| verdict(i, target)) {
        Some(Verdict::Met) => "met",
        Some(Verdict::Missed) => "missed",
        Some(Verdict::Unresolved) => {
            "not resolved (the interval holds the target: more rounds, or a quieter machine)"
        }
        None => "not judged (fewer than 3 rounds)",
    }
}

/// Runs the rounds on a built lab. `variants` names the agent settings; `attach(i)` starts
/// the agents of setting `i` and returns what `detach` takes back after that run (to read the
/// agents' own statistics, then drop them). Each round runs `off` and every setting once, the
/// order rotated by one each round.
pub async fn run<G, E>(
    lab: &Lab,
    cfg: &BenchConfig,
    rounds: u32,
    work_dir: PathBuf,
    variants: &[String],
    mut attach: impl FnMut(usize) -> Result<G, E>,
    mut detach: impl FnMut(usize, G),
) -> Result<Vec<Sample>, BenchError>
where
    E: Into<BenchError>,
{
    let mode = lab.mode();
    let path = lab.pod_path().unwrap_or_else(|| lab.host_path());
    let server_err = |what| move |source| BenchError::Server { mode, what, source };
    let _nginx =
        servers::start_nginx(&path.server_netns, &work_dir).map_err(server_err("nginx"))?;
    let _iperf3 = servers::start_iperf3(&path.server_netns).map_err(server_err("iperf3 server"))?;
    let tool_err = |step: &'static str| {
        move |source| BenchError::Tool {
            mode,
            step: step.to_owned(),
            source,
        }
    };
    // None: off; Some(i): variants[i].
    let all: Vec<Option<usize>> = std::iter::once(None)
        .chain((0..variants.len()).map(Some))
        .collect();
    let mut samples = Vec::new();
    for round in 1..=rounds {
        let mut order = all.clone();
        order.rotate_left((round as usize - 1) % all.len());
        for which in order {
            let guard = match which {
                Some(i) => Some((i, attach(i).map_err(Into::into)?)),
                None => None,
            };
            let ab = tools::ab(&path.http_client_netns, path.http_target, cfg)
                .await
                .map_err(tool_err("overhead: ab"))?;
            let iperf3 = tools::iperf3(&path.client_netns, path.server_ip, cfg)
                .await
                .map_err(tool_err("overhead: iperf3"))?;
            if let Some((i, guard)) = guard {
                detach(i, guard);
            }
            let variant = which.map_or(OFF.to_owned(), |i| variants[i].clone());
            let sample = Sample {
                round,
                variant,
                qps: ab.requests_per_second,
                ab_mean_ms: ab.mean_time_per_request_ms,
                iperf3_gbit_s: iperf3.receiver_bps / 1e9,
            };
            eprintln!(
                "[overhead] round {round}/{rounds} agents {:<10} {:.0} req/s, {:.2} Gbit/s",
                sample.variant, sample.qps, sample.iperf3_gbit_s
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
    fn ratios_compare_medians_of_each_variant_with_off() {
        let s = |round, variant: &str, qps, bw| Sample {
            round,
            variant: variant.into(),
            qps,
            ab_mean_ms: 1.0,
            iperf3_gbit_s: bw,
        };
        let result = OverheadResult::from_samples(
            Mode::FlannelVxlan,
            2,
            vec![
                s(1, "duty 100%", 98.0, 9.0),
                s(1, OFF, 100.0, 10.0),
                s(1, "duty 10%", 99.0, 10.0),
                s(2, OFF, 100.0, 10.0),
                s(2, "duty 10%", 101.0, 9.8),
                s(2, "duty 100%", 96.0, 9.5),
            ],
        );
        let names: Vec<&str> = result.variants.iter().map(|v| v.variant.as_str()).collect();
        assert_eq!(names, [OFF, "duty 100%", "duty 10%"]);
        assert_eq!(
            (
                result.variants[0].qps_ratio,
                result.variants[0].iperf3_ratio
            ),
            (1.0, 1.0)
        );
        assert_eq!(
            (
                result.variants[1].qps_ratio,
                result.variants[1].iperf3_ratio
            ),
            (0.97, 0.925)
        );
        assert_eq!(
            (
                result.variants[2].qps_ratio,
                result.variants[2].iperf3_ratio
            ),
            (1.0, 0.99)
        );
        // Paired: round 1 duty 100% 98/100, round 2 96/100 -> median 0.97.
        assert!((result.variants[1].qps_ratio_paired - 0.97).abs() < 1e-12);
        assert!((result.variants[2].iperf3_ratio_paired - 0.99).abs() < 1e-12);
        assert!(result.render().contains("duty 10%"));
        assert!(result.render().contains("not judged (fewer than 3 rounds)"));
        assert_eq!(result.variants[1].qps_ratio_paired_interval, None);
    }

    #[test]
    fn paired_intervals_and_verdicts_with_enough_rounds() {
        let s = |round, variant: &str, qps, bw| Sample {
            round,
            variant: variant.into(),
            qps,
            ab_mean_ms: 1.0,
            iperf3_gbit_s: bw,
        };
        let mut samples = Vec::new();
        for round in 1..=8 {
            let wobble = f64::from(round % 3) * 0.004;
            samples.push(s(round, OFF, 100.0, 10.0));
            samples.push(s(round, "always", 65.0 + wobble * 100.0, 6.5));
            samples.push(s(round, "light", 99.0 + wobble * 100.0, 9.9));
        }
        let result = OverheadResult::from_samples(Mode::FlannelVxlan, 8, samples);
        let (lo, hi) = result.variants[1].qps_ratio_paired_interval.unwrap();
        assert!(
            lo <= result.variants[1].qps_ratio_paired && result.variants[1].qps_ratio_paired <= hi
        );
        let text = result.render();
        assert!(text.contains("always  QPS missed; iperf3 missed"), "{text}");
        assert!(text.contains("light   QPS met; iperf3 met"), "{text}");
    }
}
