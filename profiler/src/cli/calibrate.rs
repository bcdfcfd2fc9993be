//! `netprof overhead --calibrate DIR`: netprof's in-path cost per program run, measured on a
//! lab of its own (see `bench::calibrate`), written to `DIR/calibration-<ms>ms.json`, one per
//! ping interval.

// Errors here end the command; their size does not matter.
#![allow(clippy::result_large_err)]

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::overhead::OverheadArgs;
use crate::agent::{report::AgentReport, Agent, HookFamilies};
use crate::bench::calibrate::{self, CalibrationAgents, RoundSample, StatsMode};
use crate::bench::cpu_idle::CpuIdle;
use crate::bench::{profile, BenchConfig, BenchError};
use crate::lab::{Lab, Mode, Node};
use crate::rundir::{RunDir, TopFile};

/// Without a run in DIR to take them from: pings close enough that the CPUs stay busy.
const DEFAULT_PING_INTERVAL_S: f64 = 0.002;
/// Rounds without `--rounds`: each calibration round runs three variants of pings and ab, so
/// fewer rounds than the QPS comparison's give the same interval width.
const DEFAULT_ROUNDS: u32 = 8;
const PINGS: u32 = 1000;

/// Both nodes' agents, following the pod path's benchmark flows.
struct LabAgents {
    mode: Mode,
    agents: Vec<(Node, Agent)>,
}

impl CalibrationAgents for LabAgents {
    fn start(lab: &Lab, stats: StatsMode, hooks: HookFamilies) -> Result<Self, BenchError> {
        let mode = lab.mode();
        let err = |source| BenchError::Profile { mode, source };
        let tuning = profile::AgentTuning {
            hooks,
            stats: stats != StatsMode::Off,
            stats_share: stats.share().max(1),
            ..profile::AgentTuning::default()
        };
        let path = lab.pod_path().unwrap_or_else(|| lab.host_path());
        let flows = profile::all_path_flows(lab, &path).map_err(err)?;
        let agents = profile::start_agents_with(lab, &tuning, &flows).map_err(err)?;
        if stats == StatsMode::Throughout {
            for (_, agent) in &agents {
                agent
                    .full_stats(true)
                    .map_err(|source| read_err(mode, source))?;
            }
        }
        Ok(Self { mode, agents })
    }

    fn hold(&self, held: bool) -> Result<(), BenchError> {
        for (_, agent) in &self.agents {
            agent.hold(held).map_err(|e| read_err(self.mode, e))?;
        }
        Ok(())
    }

    fn snapshots(&self) -> Result<Vec<AgentReport>, BenchError> {
        self.agents
            .iter()
            .map(|(_, agent)| agent.snapshot().map_err(|e| read_err(self.mode, e)))
            .collect()
    }

    fn reset(&self) -> Result<(), BenchError> {
        for (_, agent) in &self.agents {
            agent.reset().map_err(|e| read_err(self.mode, e))?;
        }
        Ok(())
    }
}

fn read_err(mode: Mode, source: crate::agent::AgentError) -> BenchError {
    BenchError::Profile {
        mode,
        source: profile::ProfileError::Read {
            node: "lab".to_owned(),
            source,
        },
    }
}

/// How the run in `dir` pinged (its bench steps', and `--validate`'s; every repeat's): the
/// intervals its splits need calibrated, and what its CPUs did between packets. No intervals
/// when `dir` holds no run.
struct RunPings {
    intervals: Vec<f64>,
    cpu_idle: CpuIdle,
}

fn pings_of(dir: &Path) -> Result<RunPings> {
    let mut intervals: Vec<f64> = Vec::new();
    let root = RunDir::new(dir);
    if !dir.exists() {
        return Ok(RunPings {
            intervals,
            cpu_idle: CpuIdle::AsIs,
        });
    }
    let mut runs = vec![root.clone()];
    runs.extend(
        root.repeats()
            .with_context(|| format!("cannot list {}", dir.display()))?
            .into_iter()
            .map(|(_, r)| r),
    );
    let mut files: Vec<PathBuf> = Vec::new();
    for run in &runs {
        let top = run
            .top_files()
            .with_context(|| format!("cannot list {}", run.root().display()))?;
        files.extend(
            top.into_iter()
                .filter(|(_, kind)| matches!(kind, TopFile::Mode(_) | TopFile::Validate))
                .map(|(path, _)| path),
        );
    }
    let mut idle_of: Option<(PathBuf, CpuIdle)> = None;
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let doc: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", file.display()))?;
        let interval = doc["config"]["ping_interval_s"]
            .as_f64()
            .filter(|s| s.is_finite() && *s > 0.0)
            .with_context(|| {
                format!(
                    "{}: config.ping_interval_s is missing or not a positive number",
                    file.display()
                )
            })?;
        if !intervals.iter().any(|i| (i - interval).abs() < 1e-9) {
            intervals.push(interval);
        }
        // Files written before the setting existed left the CPUs as they were.
        let idle: CpuIdle = match doc["config"].get("cpu_idle") {
            None => CpuIdle::AsIs,
            Some(v) => serde_json::from_value(v.clone()).with_context(|| {
                format!(
                    "{}: config.cpu_idle is {v}, not as-is or poll",
                    file.display()
                )
            })?,
        };
        match &idle_of {
            Some((first, was)) if *was != idle => anyhow::bail!(
                "{} ran with --cpu-idle {was}, {} with --cpu-idle {idle}: one calibration cannot stand for both; put the runs in separate directories",
                first.display(),
                file.display()
            ),
            Some(_) => {}
            None => idle_of = Some((file, idle)),
        }
    }
    intervals.sort_by(f64::total_cmp);
    Ok(RunPings {
        intervals,
        cpu_idle: idle_of.map_or(CpuIdle::AsIs, |(_, idle)| idle),
    })
}

/// The rounds of the calibration in `path`, to be added to: it must have calibrated `mode` on
/// this kernel with the same bpf_stats share and CPU idle setting, or the rounds would not
/// measure one thing.
fn earlier_rounds(
    path: &Path,
    mode: Mode,
    stats: StatsMode,
    cpu_idle: CpuIdle,
) -> Result<Vec<RoundSample>> {
    // The report's reader checks the file (schema, every value) and names it in its errors.
    let earlier = crate::report::calibration::load(path)?.calibration;
    let now = [
        ("mode", Some(mode.name().to_owned())),
        ("kernel", Some(crate::kernel_release())),
        ("stats_share", Some(stats.share().to_string())),
        ("cpu_idle", Some(cpu_idle.to_string())),
    ];
    let found = [
        earlier.mode,
        earlier.kernel,
        earlier.stats_share.map(|s| s.to_string()),
        Some(earlier.cpu_idle.unwrap_or_default().to_string()),
    ];
    for ((field, now), found) in now.into_iter().zip(found) {
        if found != now {
            anyhow::bail!(
                "{}: {field} is {}, this calibration's is {}: rounds of the two would not measure one thing; give another DIR or leave out --calibrate-append",
                path.display(),
                found.as_deref().unwrap_or("not recorded"),
                now.as_deref().unwrap_or_default()
            );
        }
    }
    let doc = crate::report::input::read_json(path)?;
    serde_json::from_value(doc["samples"].clone())
        .with_context(|| format!("{}: samples are not a calibration's rounds", path.display()))
}

pub fn run(args: &OverheadArgs, dir: &Path) -> Result<()> {
    anyhow::ensure!(
        args.mode.has_pods(),
        "--calibrate needs a mode with pods (the followed pings run pod to pod); {} has none",
        args.mode
    );
    let rounds = args.rounds.unwrap_or(DEFAULT_ROUNDS);
    anyhow::ensure!(rounds >= 1, "--rounds must be at least 1");
    // A probe run costs more when the CPUs idle between packets (cold caches) than when they
    // stay busy: calibrate at the rate of every ping DIR's splits correct.
    // ... and with the CPUs idling as the run's did (waking one is part of every RTT or not).
    let run = pings_of(dir)?;
    let intervals = match args.calibrate_ping_interval {
        Some(s) => vec![s],
        None if run.intervals.is_empty() => vec![DEFAULT_PING_INTERVAL_S],
        None => run.intervals.clone(),
    };
    // The segments a calibration corrects were measured with bpf_stats in slices (profiled
    // steps' default): calibrate netprof as it ran there, their clock reads included.
    let stats = if args.no_stats {
        StatsMode::Off
    } else {
        StatsMode::Slices(crate::agent::stats::DEFAULT_STATS_SHARE)
    };
    // Some families alone measure what those hooks cost (their dispatch above all), which is
    // not netprof's cost in a profiled run: such a calibration is printed (and written to
    // --out), never put where `netprof report DIR` would take it for the probes' cost.
    let partial = args.hooks != HookFamilies::default();
    anyhow::ensure!(
        !(partial && args.calibrate_append),
        "--calibrate-append adds to DIR's calibration, which only default --hooks write"
    );
    anyhow::ensure!(
        !(args.out.is_some() && intervals.len() > 1),
        "--out holds one calibration: give --calibrate-ping-interval with it"
    );
    if partial {
        eprintln!(
            "[calibrate] --hooks {}: measured for comparison only; {} is left as it is",
            args.hooks,
            dir.display()
        );
    } else {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create {} for the calibration", dir.display()))?;
    }
    let _idle = crate::bench::cpu_idle::hold(run.cpu_idle)?;
    for (i, &interval) in intervals.iter().enumerate() {
        let cfg = BenchConfig {
            ab_requests: args.ab_requests,
            ab_concurrency: args.ab_concurrency,
            ping_count: PINGS,
            ping_interval_s: interval,
            cpu_idle: run.cpu_idle,
            ..BenchConfig::default()
        };
        cfg.validate()?;
        eprintln!(
            "[calibrate] {}/{}: pings {} ms apart, CPUs idle {}",
            i + 1,
            intervals.len(),
            interval * 1e3,
            run.cpu_idle
        );
        let in_dir = (!partial).then(|| RunDir::new(dir).calibration_file(interval));
        let earlier = match &in_dir {
            Some(file) if args.calibrate_append && file.exists() => {
                earlier_rounds(file, args.mode, stats, run.cpu_idle)?
            }
            _ => Vec::new(),
        };
        let doc = super::own_lab::on_own_lab(
            &args.lab,
            args.mode,
            "calibration-nginx",
            async |built, work_dir| {
                calibrate::run::<LabAgents>(
                    built, &cfg, rounds, stats, args.hooks, work_dir, earlier,
                )
                .await
            },
        )?;
        print!("{}", doc.render());
        for out in in_dir.iter().chain(&args.out) {
            std::fs::write(out, serde_json::to_string_pretty(&doc)?)
                .with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!("calibration written to {}", out.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("netprof-cal-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        root
    }

    /// `root/rel` holding a mode file's config: `ping_interval_s` and what follows it.
    fn write_config(root: &Path, rel: &str, config: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            path,
            format!(r#"{{"config": {{"ping_interval_s": {config}}}}}"#),
        )
        .unwrap();
    }

    /// A demo directory: 10 ms pings in every repeat's modes, 2 ms in the last one's
    /// `validate.json`; other files are not read. A mode file without the interval is an error
    /// that names it.
    #[test]
    fn the_intervals_are_those_the_runs_pinged_at() {
        let root = scratch("intervals");
        let write = |rel: &str, interval: &str| write_config(&root, rel, interval);
        assert_eq!(pings_of(&root).unwrap().intervals, Vec::<f64>::new());
        write("repeat-1/host.json", "0.01");
        write("repeat-2/calico.json", "0.01");
        write("repeat-2/validate.json", "0.002");
        write("repeat-2/notes.json", "7");
        let found = pings_of(&root).unwrap();
        assert_eq!(found.intervals, [0.002, 0.01]);
        assert_eq!(found.cpu_idle, CpuIdle::AsIs);
        write("repeat-1/l2.json", "null");
        let err = format!("{:#}", pings_of(&root).err().unwrap());
        assert!(
            err.contains("repeat-1/l2.json") && err.contains("ping_interval_s"),
            "{err}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// The CPUs' idle setting comes from the run's files (absent: as-is); a directory whose
    /// runs differ in it is refused with both files named.
    #[test]
    fn the_cpu_idle_setting_is_the_runs() {
        let root = scratch("idle");
        let write = |rel: &str, idle: &str| write_config(&root, rel, &format!("0.01{idle}"));
        write("repeat-1/host.json", r#", "cpu_idle": "poll""#);
        write("repeat-2/host.json", r#", "cpu_idle": "poll""#);
        assert_eq!(pings_of(&root).unwrap().cpu_idle, CpuIdle::Poll);
        write("repeat-2/l2.json", "");
        let err = format!("{:#}", pings_of(&root).err().unwrap());
        assert!(
            err.contains("repeat-1/host.json")
                && err.contains("repeat-2/l2.json")
                && err.contains("--cpu-idle poll")
                && err.contains("--cpu-idle as-is"),
            "{err}"
        );
        write("repeat-2/l2.json", r#", "cpu_idle": "sleepy""#);
        let err = format!("{:#}", pings_of(&root).err().unwrap());
        assert!(
            err.contains("repeat-2/l2.json") && err.contains("cpu_idle"),
            "{err}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
