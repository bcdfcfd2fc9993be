//! `bench --validate`: ground truth for the attribution. Each check (see `checks`) compares
//! two states of the lab that differ by one thing, `a` with a cost and `b` without:
//! conntrack (NOTRACK), kube-proxy's rules, non-matching rules on one node only, and VXLAN
//! encapsulation against host-gw routing.
//!
//! Per check and round: `a` is profiled (and `b` when the prediction needs it), which is what
//! `netprof report` predicts the gain from (all rounds' profiles of a side merged, so the
//! prediction sees the same stretches of the machine's speed as the measurement); then `a`
//! and `b` are measured with **no agent attached** (the order alternating per round), each
//! sample the pod path's ping RTT p50 at the validation's rate (its pings in blocks
//! alternating with the other state's) and the machine's CPU time per request under ab,
//! straight to the nginx pod (NOTRACK leaves no DNAT, so every state reaches nginx the same
//! way). The report sets each round's `a - b` difference, their median and its bootstrap
//! interval, against the prediction.
//!
//! Labs of a check are up side by side (`<lab>` and `<lab>-b`) or switched in place, and torn
//! down after it.

#![allow(clippy::result_large_err)]

pub mod checks;
mod measure;
pub mod switch;

use std::fs;
use std::path::Path;

use super::{BenchConfig, BenchError};
use crate::lab::{self, LabLock, LabNames, Mode};
use crate::parse::{ab::AbReport, ping::PingReport};
use crate::rundir::{ProfileFile, RunDir};
pub use checks::{CheckKind, Side};

pub const SCHEMA: &str = "netprof.validate/v2";
/// Where `bench --validate` writes its results, next to the `<mode>.json` files.
pub const FILE: &str = crate::rundir::VALIDATE_FILE;

/// The validation's own ping: 1000 echo requests 2 ms apart (see `--validate-ping-interval`).
pub const PING_COUNT: u32 = 1000;
pub const PING_INTERVAL_S: f64 = 0.002;
/// Blocks each state's pings of a round are split into, alternating with the other state's
/// (see `bench::ping_blocks`).
pub const PING_BLOCKS: u32 = crate::bench::ping_blocks::BLOCKS;
/// Non-matching rules on one node by default (about 20 µs per traversal here).
pub const ONE_NODE_RULES: u32 = 5000;
/// At most this many (their addresses fill 198.18.64.0/18).
pub const MAX_ONE_NODE_RULES: u32 = 16_000;

/// What to validate.
#[derive(Debug, Clone)]
pub struct ValidatePlan {
    /// The mode of the checks that are not about the mode itself (all but encapsulation).
    pub mode: Mode,
    pub checks: Vec<CheckKind>,
    pub rounds: u32,
    pub one_node_rules: u32,
    /// The validation runs' ping (the rest of the tools' settings are the bench's).
    pub ping_count: u32,
    pub ping_interval_s: f64,
    /// The checkpoint families of the profiled runs.
    pub hooks: crate::agent::HookFamilies,
}

/// One measurement of a state: ping and ab, no agent attached.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    pub ping: PingReport,
    pub ab: AbReport,
    /// Busy CPU time of the whole machine (both lab nodes) during ab, per request, ns.
    pub ab_cpu_ns_per_request: Option<f64>,
}

/// One round: both states, back to back, in `order`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Round {
    pub round: u32,
    pub order: [Side; 2],
    pub a: Sample,
    pub b: Sample,
}

/// A state profiled with the agents attached: what the prediction is made from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProfiledRun {
    pub side: Side,
    pub mode: Mode,
    /// The run's own directory, relative to the bench directory; `profiles` are relative to it.
    pub dir: String,
    pub sample: Sample,
    /// The same state's pings with every agent detached, in turns with the profiled blocks
    /// (absent in older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping_agents_off: Option<crate::bench::result::AgentsOffPings>,
    /// ab with every agent detached just before and just after the profiled ab (absent in
    /// older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ab_agents_off: Option<crate::bench::result::AbAgentsOff>,
    pub profiles: Vec<ProfileFile>,
}

/// One check's runs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CheckRun {
    pub check: CheckKind,
    pub mode_a: Mode,
    pub mode_b: Mode,
    /// `one-node-rules`: the rules in the chain (counted in the lab).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<usize>,
    pub profiled: Vec<ProfiledRun>,
    pub rounds: Vec<Round>,
}

/// `validate.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ValidateResult {
    pub schema: String,
    pub mode: Mode,
    /// The bench config with the validation's ping.
    pub config: BenchConfig,
    pub rounds: u32,
    pub one_node_rules: u32,
    pub checks: Vec<CheckRun>,
}

/// The second lab's names: `<lab>-b`.
pub fn second_lab(names: &LabNames) -> Result<LabNames, BenchError> {
    Ok(LabNames::new(&format!("{}-b", names.lab())).map_err(lab::LabError::from)?)
}

/// Runs every check of the plan; writes `<out>/validate.json` and the profiled runs' agent
/// reports under `<out>/validate/`. Both labs are always torn down.
pub async fn run(
    cfg: &BenchConfig,
    names: &LabNames,
    out_dir: &Path,
    plan: &ValidatePlan,
) -> Result<ValidateResult, BenchError> {
    let cfg = &BenchConfig {
        ping_count: plan.ping_count,
        ping_interval_s: plan.ping_interval_s,
        // The checks split their pings into blocks of their own.
        ping_blocks: 1,
        ..cfg.clone()
    };
    let second = second_lab(names)?;
    let _second_lock = LabLock::acquire(second.lab()).map_err(lab::LabError::from)?;
    let out = RunDir::new(out_dir);
    let mut checks = Vec::new();
    for (i, &check) in plan.checks.iter().enumerate() {
        let ctx = measure::Context {
            cfg,
            out: &out,
            plan,
            labs: [names, &second],
            index: i + 1,
            total: plan.checks.len(),
        };
        let outcome = measure::check(&ctx, check).await;
        let teardown = [lab::down(names), lab::down(&second)];
        checks.push(outcome?);
        for t in teardown {
            t?;
        }
    }
    let result = ValidateResult {
        schema: SCHEMA.to_owned(),
        mode: plan.mode,
        config: cfg.clone(),
        rounds: plan.rounds,
        one_node_rules: plan.one_node_rules,
        checks,
    };
    let path = out.validate_file();
    let json = serde_json::to_string_pretty(&result).expect("validation results serialize");
    fs::write(&path, json).map_err(|source| BenchError::Output { path, source })?;
    Ok(result)
}
