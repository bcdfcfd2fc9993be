//! `netprof overhead --calibrate DIR`: netprof's in-path cost per program run, measured on a
//! lab of its own (see `bench::calibrate`), written to `DIR/calibration.json`.

// Errors here end the command; their size does not matter.
#![allow(clippy::result_large_err)]

use std::path::Path;

use anyhow::{Context, Result};

use super::overhead::OverheadArgs;
use crate::agent::{report::AgentReport, Agent};
use crate::bench::calibrate::{self, CalibrationAgents};
use crate::bench::{profile, BenchConfig, BenchError};
use crate::lab::{Lab, Mode, Node};
use crate::rundir::RunDir;

/// Rounds when `--rounds` is left at the QPS comparison's default: each calibration round
/// runs three variants of pings and ab, so fewer rounds give the same interval width.
const DEFAULT_ROUNDS: u32 = 8;
const PINGS: u32 = 1000;
const PING_INTERVAL_S: f64 = 0.002;

/// Both nodes' agents, following the pod path's benchmark flows.
struct LabAgents {
    mode: Mode,
    agents: Vec<(Node, Agent)>,
}

impl CalibrationAgents for LabAgents {
    fn start(lab: &Lab, stats: bool) -> Result<Self, BenchError> {
        let mode = lab.mode();
        let err = |source| BenchError::Profile { mode, source };
        let tuning = profile::AgentTuning {
            stats,
            stats_share: 100,
            ..profile::AgentTuning::default()
        };
        let path = lab.pod_path().unwrap_or_else(|| lab.host_path());
        let flows = profile::all_path_flows(lab, &path).map_err(err)?;
        let agents = profile::start_agents_with(lab, &tuning, &flows).map_err(err)?;
        if stats {
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

pub fn run(args: &OverheadArgs, dir: &Path) -> Result<()> {
    anyhow::ensure!(
        args.mode.has_pods(),
        "--calibrate needs a mode with pods (the followed pings run pod to pod); {} has none",
        args.mode
    );
    let rounds = if args.rounds == 12 {
        DEFAULT_ROUNDS
    } else {
        args.rounds
    };
    anyhow::ensure!(rounds >= 1, "--rounds must be at least 1");
    let out = RunDir::new(dir).calibration_file();
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create {} for the calibration", dir.display()))?;
    // Pings 2 ms apart: between pings 10 ms apart the CPUs go idle, and the wake-ups swing the
    // p50 by tens of µs from run to run, far more than a probe costs.
    let cfg = BenchConfig {
        ab_requests: args.ab_requests,
        ab_concurrency: args.ab_concurrency,
        ping_count: PINGS,
        ping_interval_s: PING_INTERVAL_S,
        ..BenchConfig::default()
    };
    cfg.validate()?;
    let doc = super::own_lab::on_own_lab(
        &args.lab,
        args.mode,
        "calibration-nginx",
        async |built, work_dir| calibrate::run::<LabAgents>(built, &cfg, rounds, work_dir).await,
    )?;
    print!("{}", doc.render());
    std::fs::write(&out, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!("calibration written to {}", out.display());
    Ok(())
}
