//! `netprof overhead`: what the agents cost the benchmark they profile, measured side by side.

// Errors here end the command; their size does not matter.
#![allow(clippy::result_large_err)]

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::agent::report::ProgramStats;
use crate::bench::overhead::{self, median, OverheadResult};
use crate::bench::{profile, BenchConfig, BenchError};
use crate::lab::{self, names::DEFAULT_LAB, LabLock, LabNames, LabSpec, Mode};

#[derive(Debug, Args)]
pub struct OverheadArgs {
    /// The mode to measure on (the reference is flannel-vxlan, the busiest datapath).
    #[arg(long, default_value = "flannel-vxlan")]
    pub mode: Mode,
    /// Rounds; each runs ab and iperf3 once without and once with the agents.
    #[arg(long, default_value_t = 4)]
    pub rounds: u32,
    #[arg(long, default_value_t = BenchConfig::default().ab_requests)]
    pub ab_requests: u32,
    #[arg(long, default_value_t = BenchConfig::default().ab_concurrency)]
    pub ab_concurrency: u32,
    #[arg(long, default_value_t = BenchConfig::default().iperf3_seconds)]
    pub iperf3_seconds: u32,
    #[arg(long, default_value = DEFAULT_LAB)]
    pub lab: String,
    /// Checkpoint families the agents attach: default (tc,nf,trace, what `bench --profile`
    /// attaches), all, or some of tc,dev,nf,trace (to see which family costs what).
    #[arg(long, default_value = "default")]
    pub hooks: crate::agent::HookFamilies,
    /// Leave the kernel's bpf_stats off (no per-program run time; removes its own cost).
    #[arg(long)]
    pub no_stats: bool,
    /// The agents follow 1 in N benchmark packets (power of two; 1 = every packet).
    #[arg(long, default_value_t = 1)]
    pub sample: u32,
    #[command(flatten)]
    pub duty: super::duty_args::DutyArgs,
    /// Also write the samples, medians and per-program costs as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The result plus the kernel programs' own run time, from bpf_stats.
#[derive(Debug, serde::Serialize)]
struct OverheadReport {
    #[serde(flatten)]
    result: OverheadResult,
    programs: Vec<ProgramStats>,
    median_ns_per_run: f64,
}

pub fn run(args: OverheadArgs) -> Result<()> {
    let names = LabNames::new(&args.lab)?;
    let cfg = BenchConfig {
        ab_requests: args.ab_requests,
        ab_concurrency: args.ab_concurrency,
        iperf3_seconds: args.iperf3_seconds,
        ..BenchConfig::default()
    };
    cfg.validate()?;
    let duty = args.duty.duty()?;
    anyhow::ensure!(args.rounds >= 1, "--rounds must be at least 1");
    lab::require_root()?;
    let _lock = LabLock::acquire(&args.lab)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    let built = lab::up(&names, LabSpec { mode: args.mode, services: 0 })?;
    let work_dir = PathBuf::from("/run/netprof/labs").join(&args.lab).join("overhead-nginx");
    let mut programs: Vec<ProgramStats> = Vec::new();
    let outcome = runtime.block_on(async {
        tokio::select! {
            result = overhead::run(
                &built,
                &cfg,
                args.rounds,
                work_dir,
                || profile::start_agents_with(&built, &profile::AgentTuning { hooks: args.hooks, stats: !args.no_stats, sample: args.sample, duty }).map_err(|source| BenchError::Profile { mode: args.mode, source }),
                |agents| {
                    // Keep the programs' run time of the last attached round (node 1's agent).
                    if let Some((_, agent)) = agents.first() {
                        if let Ok(report) = agent.snapshot() {
                            programs = report.programs;
                        }
                    }
                },
            ) => result.map(Some),
            signal = super::bench::shutdown_signal() => {
                eprintln!("\nnetprof: {signal}: stopping and removing the lab");
                Ok(None)
            }
        }
    });
    let teardown = lab::down(&names);
    let samples = outcome?.context("interrupted; the lab was removed")?;
    teardown?;
    let result = OverheadResult::from_samples(args.mode, args.rounds, samples);
    let mut per_run: Vec<f64> = programs.iter().filter(|p| p.run_count > 0).map(|p| p.ns_per_run).collect();
    let report = OverheadReport { median_ns_per_run: median(&mut per_run), result, programs };
    println!("{}", report.result.render());
    println!("program run time (bpf_stats, node 1, last round with agents):");
    for p in &report.programs {
        println!("  {:<16} {:>10} runs  {:>7.0} ns/run", p.name, p.run_count, p.ns_per_run);
    }
    if report.median_ns_per_run.is_nan() {
        println!("  not measured (bpf_stats off)");
    } else {
        println!("  median over programs: {:.0} ns/run", report.median_ns_per_run);
    }
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?).with_context(|| format!("cannot write {}", out.display()))?;
    }
    Ok(())
}
