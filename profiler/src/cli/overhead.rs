//! `netprof overhead`: what the agents cost the benchmark they profile, measured side by side.

// Errors here end the command; their size does not matter.
#![allow(clippy::result_large_err)]

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::agent::report::ProgramStats;
use crate::bench::overhead::{self, median, OverheadResult};
use crate::bench::{profile, BenchConfig, BenchError};
use crate::lab::{names::DEFAULT_LAB, Mode};

#[derive(Debug, Args)]
pub struct OverheadArgs {
    /// The mode to measure on (flannel-vxlan by default: the busiest datapath).
    #[arg(long, default_value = "flannel-vxlan")]
    pub mode: Mode,
    /// Rounds; each runs ab and iperf3 once without the agents and once with each --duty
    /// [default: 12; with --calibrate 8, each of its rounds runs three variants].
    /// On a small shared machine one sample swings by several percent, so judge a target of a
    /// few percent by the paired interval the output gives, and add rounds until it resolves.
    #[arg(long)]
    pub rounds: Option<u32>,
    #[arg(long, default_value_t = BenchConfig::default().ab_requests)]
    pub ab_requests: u32,
    #[arg(long, default_value_t = BenchConfig::default().ab_concurrency)]
    pub ab_concurrency: u32,
    #[arg(long, default_value_t = BenchConfig::default().iperf3_seconds)]
    pub iperf3_seconds: u32,
    #[arg(long, default_value = DEFAULT_LAB)]
    pub lab: String,
    /// Checkpoint families the agents attach: default (tc,nf,trace,backlog,gauge, what
    /// `bench --profile` attaches), all, or some of tc,dev,nf,trace,backlog,gauge (to see which
    /// family costs what).
    /// With --calibrate and other than default: what those families alone cost (the held
    /// programs' dispatch, the bodies), printed and written to --out only, never to DIR.
    #[arg(long, default_value = "default")]
    pub hooks: crate::agent::HookFamilies,
    /// Leave the kernel's bpf_stats off (no per-program run time; removes its own cost). With
    /// --calibrate: calibrate netprof without them (by default they run in slices, as in
    /// profiled steps, whose segments the calibration corrects).
    #[arg(long)]
    pub no_stats: bool,
    /// The agents follow 1 in N TCP flows (power of two; 1 = every flow).
    #[arg(long, default_value_t = 1)]
    pub sample: u32,
    /// With duty-cycled settings: switch /sys/kernel/rcu_expedited on during window edges
    /// (kernel-wide; see `netprof agent --help`).
    #[arg(long)]
    pub expedite_rcu: bool,
    /// Agent settings to compare with "off", side by side in every round: attached for this
    /// percentage of every --duty-period-ms, or of every MS with PERCENT@MS (100: always;
    /// comma-separated, e.g. `100,2,2@4000`; `:nostats` runs a setting without bpf_stats,
    /// `:fullstats` with them on throughout rather than sampled, e.g. `100,100:nostats`). 0
    /// attaches and detaches at once at every
    /// period's start: what the window edges cost by themselves (with a long period such as
    /// 0@100000, what the agents' mere presence costs). The default sets always attached
    /// beside 2%: the cost of following everything beside a short duty cycle's.
    #[arg(
        long,
        default_value = "100,2",
        value_delimiter = ',',
        value_name = "PERCENT[@MS][:nostats|:fullstats]"
    )]
    pub duty: Vec<DutySetting>,
    #[arg(long, default_value_t = crate::agent::duty::DEFAULT_PERIOD.as_millis() as u64, value_name = "MS")]
    pub duty_period_ms: u64,
    /// Also write the samples, medians and per-program costs as JSON here (with --calibrate:
    /// the calibration, of one ping interval).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Instead of the QPS comparison: measure netprof's in-path cost per program run (rounds
    /// of no programs, held programs at the same hooks, and netprof; followed and untracked
    /// pings and CPU per ab request) and write DIR/calibration-<ms>ms.json, which `netprof
    /// report DIR` then uses for the probes' share. DIR is usually a bench output directory.
    #[arg(long, value_name = "DIR")]
    pub calibrate: Option<PathBuf>,
    /// With --calibrate: seconds between the calibration's echo requests. By default every
    /// interval the run in DIR pinged at (its steps', `--validate`'s), one calibration each,
    /// or 0.002 when DIR holds no run: a probe run costs more when the CPUs idle between
    /// packets (cold caches) than when they stay busy, so each split needs its own rate's.
    #[arg(long, value_name = "SECONDS")]
    pub calibrate_ping_interval: Option<f64>,
    /// With --calibrate: add --rounds rounds to DIR's calibration at each interval instead of
    /// replacing it (one is started where none exists), so a long run can calibrate between
    /// its parts: the machine's speed drifts over tens of minutes, and a calibration taken at
    /// another time than the pings it corrects measures another machine.
    #[arg(long)]
    pub calibrate_append: bool,
}

/// One `--duty` setting: a percentage, and its own period if it names one (`2@4000`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DutySetting {
    pub percent: u32,
    pub period_ms: Option<u64>,
    pub stats: SettingStats,
}

/// bpf_stats for one setting, to weigh their cost side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingStats {
    /// In slices, as agents run by default.
    Sampled,
    /// `:fullstats`: on throughout.
    Full,
    /// `:nostats`: off.
    Off,
}

impl std::str::FromStr for DutySetting {
    type Err = String;

    fn from_str(full: &str) -> Result<Self, String> {
        let (text, stats) = match full.split_once(':') {
            Some((text, "nostats")) => (text, SettingStats::Off),
            Some((text, "fullstats")) => (text, SettingStats::Full),
            Some((_, other)) => {
                return Err(format!(
                    "duty setting {full:?}: unknown flag {other:?} (use :nostats or :fullstats)"
                ))
            }
            None => (full, SettingStats::Sampled),
        };
        let number = |part: &str, what: &str| {
            part.trim().parse::<u64>().map_err(|_| format!("duty setting {text:?}: {what} {part:?} is not a whole number (write PERCENT or PERCENT@MS, e.g. 2@4000)"))
        };
        let (percent, period_ms) = match text.split_once('@') {
            Some((percent, ms)) => (number(percent, "percentage")?, Some(number(ms, "period")?)),
            None => (number(text, "percentage")?, None),
        };
        let percent = u32::try_from(percent)
            .map_err(|_| format!("duty setting {text:?}: give a percentage from 1 to 100"))?;
        Ok(DutySetting {
            percent,
            period_ms,
            stats,
        })
    }
}

impl DutySetting {
    /// The duty cycle (`None`: always attached), with `default_period_ms` unless it names its own.
    /// 0% (here only) attaches and detaches at every period's start with no window between:
    /// what the window edges cost by themselves, or with a long period what the agents' mere
    /// presence costs.
    fn duty(&self, default_period_ms: u64) -> Result<Option<crate::agent::duty::Duty>, String> {
        let period = std::time::Duration::from_millis(self.period_ms.unwrap_or(default_period_ms));
        if self.percent == 0 {
            return crate::agent::duty::Duty::from_percent(1, period).map(|_| {
                Some(crate::agent::duty::Duty {
                    on: std::time::Duration::ZERO,
                    period,
                })
            });
        }
        crate::agent::duty::Duty::from_percent(self.percent, period)
    }

    /// The setting's name in the output: `duty 2%`, `duty 2%@4000ms` with its own period,
    /// `duty 100% nostats` without bpf_stats.
    fn name(&self) -> String {
        let mut name = match self.period_ms {
            Some(ms) => format!("duty {}%@{ms}ms", self.percent),
            None => format!("duty {}%", self.percent),
        };
        match self.stats {
            SettingStats::Sampled => {}
            SettingStats::Full => name.push_str(" fullstats"),
            SettingStats::Off => name.push_str(" nostats"),
        }
        name
    }
}

/// The result plus the kernel programs' own run time, from bpf_stats.
#[derive(Debug, serde::Serialize)]
struct OverheadReport {
    #[serde(flatten)]
    result: OverheadResult,
    /// Per agent setting (as in `variants` after `off`): its last run's programs.
    programs: Vec<SettingPrograms>,
}

#[derive(Debug, serde::Serialize)]
struct SettingPrograms {
    variant: String,
    programs: Vec<ProgramStats>,
    /// Median over the programs that ran (NaN without bpf_stats).
    median_ns_per_run: f64,
}

/// Rounds of the QPS comparison without `--rounds`.
const DEFAULT_ROUNDS: u32 = 12;

pub fn run(args: OverheadArgs) -> Result<()> {
    if let Some(dir) = &args.calibrate {
        return super::calibrate::run(&args, dir);
    }
    let cfg = BenchConfig {
        ab_requests: args.ab_requests,
        ab_concurrency: args.ab_concurrency,
        iperf3_seconds: args.iperf3_seconds,
        ..BenchConfig::default()
    };
    cfg.validate()?;
    let mut duties = Vec::new();
    for setting in &args.duty {
        duties.push(
            setting
                .duty(args.duty_period_ms)
                .map_err(|e| anyhow::anyhow!("--{e}"))?,
        );
    }
    let variants: Vec<String> = args.duty.iter().map(|s| s.name()).collect();
    anyhow::ensure!(
        variants
            .iter()
            .enumerate()
            .all(|(i, v)| !variants[..i].contains(v)),
        "--duty lists a setting twice"
    );
    let rounds = args.rounds.unwrap_or(DEFAULT_ROUNDS);
    anyhow::ensure!(rounds >= 1, "--rounds must be at least 1");
    // Per setting, the programs' run time of its last run (node 1's agent).
    let mut programs: Vec<Vec<ProgramStats>> = vec![Vec::new(); variants.len()];
    let samples = super::own_lab::on_own_lab(
        &args.lab,
        args.mode,
        "overhead-nginx",
        async |built, work_dir| {
            overhead::run(
                built,
                &cfg,
                rounds,
                work_dir,
                &variants,
                |i| {
                    let setting = args.duty[i];
                    let tuning = profile::AgentTuning {
                        hooks: args.hooks,
                        stats: !args.no_stats && setting.stats != SettingStats::Off,
                        stats_share: if setting.stats == SettingStats::Full {
                            100
                        } else {
                            crate::agent::stats::DEFAULT_STATS_SHARE
                        },
                        sample: args.sample,
                        duty: duties[i],
                        expedite_rcu: args.expedite_rcu,
                        clean_twins: false,
                    };
                    let path = built.pod_path().expect("overhead runs on a mode with pods");
                    profile::all_path_flows(built, &path)
                        .and_then(|flows| profile::start_agents_with(built, &tuning, &flows))
                        .map_err(|source| BenchError::Profile {
                            mode: args.mode,
                            source,
                        })
                },
                |i, agents| {
                    if let Some((_, agent)) = agents.first() {
                        if let Ok(report) = agent.snapshot() {
                            programs[i] = report.programs;
                        }
                    }
                },
            )
            .await
        },
    )?;
    let result = OverheadResult::from_samples(args.mode, rounds, samples);
    let programs: Vec<SettingPrograms> = variants
        .iter()
        .zip(programs)
        .map(|(variant, programs)| {
            let mut per_run: Vec<f64> = programs
                .iter()
                .filter(|p| p.run_count > 0)
                .map(|p| p.ns_per_run)
                .collect();
            SettingPrograms {
                variant: variant.clone(),
                median_ns_per_run: median(&mut per_run),
                programs,
            }
        })
        .collect();
    let report = OverheadReport { result, programs };
    println!("{}", report.result.render());
    for setting in &report.programs {
        println!(
            "program run time with agents {} (bpf_stats, node 1, last run):",
            setting.variant
        );
        for p in &setting.programs {
            println!(
                "  {:<16} {:>10} runs  {:>7.0} ns/run",
                p.name, p.run_count, p.ns_per_run
            );
        }
        if setting.median_ns_per_run.is_nan() {
            println!("  not measured (bpf_stats off)");
        } else {
            println!(
                "  median over programs: {:.0} ns/run",
                setting.median_ns_per_run
            );
        }
    }
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duty_settings_take_an_optional_period_and_name_it() {
        let plain: DutySetting = "2".parse().unwrap();
        assert_eq!(
            plain,
            DutySetting {
                percent: 2,
                period_ms: None,
                stats: SettingStats::Sampled
            }
        );
        let bare: DutySetting = "100@2000:nostats".parse().unwrap();
        assert_eq!(
            bare,
            DutySetting {
                percent: 100,
                period_ms: Some(2000),
                stats: SettingStats::Off
            }
        );
        assert_eq!(
            "100:fullstats".parse::<DutySetting>().unwrap().name(),
            "duty 100% fullstats"
        );
        assert_eq!(bare.name(), "duty 100%@2000ms nostats");
        assert!("100:fast"
            .parse::<DutySetting>()
            .unwrap_err()
            .contains(":nostats"));
        assert_eq!(plain.name(), "duty 2%");
        assert_eq!(
            plain.duty(1000).unwrap().unwrap().on,
            std::time::Duration::from_millis(20)
        );
        let own: DutySetting = "2@4000".parse().unwrap();
        assert_eq!(own.name(), "duty 2%@4000ms");
        assert_eq!(
            own.duty(1000).unwrap().unwrap().on,
            std::time::Duration::from_millis(80)
        );
        assert_eq!("100".parse::<DutySetting>().unwrap().duty(1000), Ok(None));
        assert!("2@fast"
            .parse::<DutySetting>()
            .unwrap_err()
            .contains("PERCENT@MS"));
        assert!("x"
            .parse::<DutySetting>()
            .unwrap_err()
            .contains("not a whole number"));
        assert!("2@100"
            .parse::<DutySetting>()
            .unwrap()
            .duty(1000)
            .unwrap_err()
            .contains("at least 500 ms"));
    }
}
