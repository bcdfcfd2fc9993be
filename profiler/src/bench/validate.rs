//! `bench --validate`: counterfactual runs that check the attribution against reality. On one
//! mode's lab, with the agents attached throughout (so every run carries the same probes):
//! - `base`: the lab as built plus an empty raw table on both nodes;
//! - `notrack`: that raw table with `CT --notrack` rules (conntrack and NAT do nothing), so it
//!   differs from `base` only by what tracking costs (and two rule matches);
//! - `no-kube-proxy`: no kube-proxy rules (no iptables tables, no conntrack hooks);
//!
//! each `rounds` times. `base` and `notrack` share one lab and alternate, NOTRACK switched in
//! place (rebuilding the lab per run moved the p50 by more than conntrack costs); each
//! `no-kube-proxy` run needs its own lab. The report pairs the runs of a round. Then a sweep of
//! extra Services (`base` with 0, 1000, 5000 Services: 5 rules each) for the per-rule cost.
//! Every run does the pod path's ping and ab: through the NodePort in the sweep, straight to
//! the pod elsewhere (NOTRACK leaves no DNAT), measuring the machine's CPU time per request. `netprof report` predicts each ablation's gain
//! from the `base` runs' profiles and sets it beside the measured one.

#![allow(clippy::result_large_err)]

use std::fs;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};

use super::profile::Profiler;
use super::{cpu_time, servers, tools, BenchConfig, BenchError, Progress};
use crate::cmd::Cmd;
use crate::lab::{self, kube_proxy, Ablation, Lab, LabNames, LabSpec, Mode, Node};
use crate::parse::{ab::AbReport, ping::PingReport};
use crate::rundir::{NetPath, ProfileFile, RunDir, Tool};

pub const SCHEMA: &str = "netprof.validate/v1";
/// Where `bench --validate` writes its summary, next to the `<mode>.json` files.
pub const FILE: &str = "validate.json";

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    Base,
    Notrack,
    NoKubeProxy,
    /// `base` with extra Services (the sweep).
    Services,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::Base => "base",
            Variant::Notrack => "notrack",
            Variant::NoKubeProxy => "no-kube-proxy",
            Variant::Services => "services",
        }
    }

    fn ablation(self) -> Ablation {
        Ablation {
            notrack: self == Variant::Notrack,
            empty_raw: self == Variant::Base,
            no_kube_proxy: self == Variant::NoKubeProxy,
        }
    }
}

/// One run of one variant.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VariantRun {
    pub variant: Variant,
    pub round: u32,
    /// Extra Services in the lab.
    pub services: u32,
    /// kube-proxy + CNI iptables rules per node (0 without kube-proxy).
    pub rules_per_node: usize,
    /// Where nginx was reached (NodePort or the pod).
    pub http_target: String,
    pub ping: PingReport,
    /// `None` only in old runs' `notrack` (the NodePort cannot work without conntrack).
    pub ab: Option<AbReport>,
    /// Busy CPU time of the whole machine (both lab nodes) during ab, per request, ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ab_cpu_ns_per_request: Option<f64>,
    /// Directory of this run's agent reports, relative to the bench directory; the profile
    /// files are relative to it (as in `<mode>.json`).
    pub dir: String,
    pub profiles: Vec<ProfileFile>,
}

/// `validate.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ValidateResult {
    pub schema: String,
    pub mode: Mode,
    pub config: BenchConfig,
    pub rounds: u32,
    pub sweep: Vec<u32>,
    pub runs: Vec<VariantRun>,
}

/// The validation's own ping: 1000 echo requests 2 ms apart (see `--validate-ping-interval`).
pub const PING_COUNT: u32 = 1000;
pub const PING_INTERVAL_S: f64 = 0.002;

/// What to validate.
#[derive(Debug, Clone)]
pub struct ValidatePlan {
    pub mode: Mode,
    pub rounds: u32,
    pub sweep: Vec<u32>,
    /// The validation runs' ping (the rest of the tools' settings are the bench's).
    pub ping_count: u32,
    pub ping_interval_s: f64,
}

fn rules(mode: Mode, services: u32, ablation: Ablation) -> usize {
    if mode.has_kube_proxy() && !ablation.no_kube_proxy {
        kube_proxy::rule_count(&kube_proxy::ruleset(mode, Node::Two, services))
    } else {
        0
    }
}

/// Where a run goes: its variant, round and Services, and its place in the schedule.
#[derive(Debug, Clone, Copy)]
struct Slot {
    variant: Variant,
    round: u32,
    services: u32,
    index: usize,
    total: usize,
}

/// Builds the lab for one run (its own ablation), measures it, tears it down.
async fn run_variant(
    cfg: &BenchConfig,
    names: &LabNames,
    out_dir: &Path,
    mode: Mode,
    slot: Slot,
) -> Result<VariantRun, BenchError> {
    let progress = Progress {
        index: slot.index,
        total: slot.total,
        mode,
    };
    let t = progress.step(&format!("{}: lab", label(slot)));
    let lab = lab::up_with(
        names,
        LabSpec {
            mode,
            services: slot.services,
        },
        slot.variant.ablation(),
    )
    .map_err(|e| progress.failed(e))?;
    progress.done(t, "up");
    let _nginx = start_nginx(&lab)?;
    measure(cfg, &lab, out_dir, slot).await
}

/// nginx on the pod path's server, its files under the lab's state directory.
fn start_nginx(lab: &Lab) -> Result<servers::RunningServer, BenchError> {
    let endpoints = lab.pod_path().expect("validation runs on a mode with pods");
    let work_dir = PathBuf::from("/run/netprof/labs")
        .join(lab.names.lab())
        .join(format!("nginx-{}", endpoints.server_netns));
    servers::start_nginx(&endpoints.server_netns, &work_dir).map_err(|source| BenchError::Server {
        mode: lab.mode(),
        what: "nginx",
        source,
    })
}

fn label(slot: Slot) -> String {
    match slot.variant {
        Variant::Services => format!("validate services={}", slot.services),
        v => format!("validate {} round {}", v.name(), slot.round + 1),
    }
}

/// Switches NOTRACK on or off in a lab built with an empty raw table (`Ablation::empty_raw`):
/// the rules go into, or out of, raw PREROUTING and OUTPUT on both nodes. Nothing else moves.
fn set_notrack(lab: &Lab, on: bool) -> Result<(), BenchError> {
    for node in [Node::One, Node::Two] {
        let ns = lab.names.node(node);
        Cmd::new("iptables")
            .args(["-t", "raw", "-F"])
            .in_netns(&ns)
            .run()?;
        if on {
            for chain in ["PREROUTING", "OUTPUT"] {
                Cmd::new("iptables")
                    .args(["-t", "raw", "-A", chain, "-j", "CT", "--notrack"])
                    .in_netns(&ns)
                    .run()?;
            }
        }
    }
    Ok(())
}

/// One run on a lab that is up with nginx serving: agents attached for its ping and ab (with
/// the machine's CPU time per request), reports under `validate/<run>/`.
async fn measure(
    cfg: &BenchConfig,
    lab: &Lab,
    out_dir: &Path,
    slot: Slot,
) -> Result<VariantRun, BenchError> {
    let Slot {
        variant,
        round,
        services,
        index,
        total,
    } = slot;
    let mode = lab.mode();
    let progress = Progress { index, total, mode };
    let label = label(slot);
    let dir = RunDir::validate_run_relative(&match variant {
        Variant::Services => format!("services-{services}"),
        v => format!("{}-r{}", v.name(), round + 1),
    });
    let run_dir = out_dir.join(&dir);
    let t = progress.step(&format!("{label}: agents"));
    let profiler = Profiler::start(lab, &RunDir::new(&run_dir))
        .map_err(|source| progress.failed(BenchError::Profile { mode, source }))?;
    progress.done(t, "attached");
    let endpoints = lab.pod_path().expect("validation runs on a mode with pods");
    let profile_err = |source| BenchError::Profile { mode, source };
    let tool_err = |step: &'static str| {
        let step = format!("{label}: {step}");
        move |source| BenchError::Tool { mode, step, source }
    };

    let t = progress.step(&format!("{label}: ping"));
    profiler.before_step(Tool::Ping).map_err(profile_err)?;
    let ping = tools::ping(&endpoints.client_netns, endpoints.server_ip, cfg)
        .await
        .map_err(tool_err("ping"))?;
    let mut profiles = profiler
        .after_step(NetPath::Pod, Tool::Ping)
        .map_err(profile_err)?;
    progress.done(
        t,
        &ping.stats.map_or("no replies".to_owned(), |s| {
            format!("p50 {:.3} ms", s.p50_ms)
        }),
    );

    // The sweep goes through the NodePort (its rules are what it measures); every other run
    // straight to the pod, so base, NOTRACK (no DNAT without conntrack) and no kube-proxy
    // compare the same requests.
    let http_target = if variant == Variant::Services {
        endpoints.http_target
    } else {
        SocketAddrV4::new(endpoints.server_ip, 80)
    };
    let t = progress.step(&format!("{label}: ab -> {http_target}"));
    profiler.before_step(Tool::Ab).map_err(profile_err)?;
    let cpu = cpu_time::CpuMeter::start();
    let ab = tools::ab(&endpoints.http_client_netns, http_target, cfg)
        .await
        .map_err(tool_err("ab"))?;
    let ab_cpu_ns_per_request = cpu.per_request(ab.complete_requests);
    profiles.extend(
        profiler
            .after_step(NetPath::Pod, Tool::Ab)
            .map_err(profile_err)?,
    );
    progress.done(
        t,
        &format!(
            "{:.0} req/s, mean {:.3} ms{}",
            ab.requests_per_second,
            ab.mean_time_per_request_ms,
            ab_cpu_ns_per_request.map_or(String::new(), |ns| format!(
                ", {:.0} µs CPU per request",
                ns / 1e3
            ))
        ),
    );
    drop(profiler);
    Ok(VariantRun {
        variant,
        round,
        services,
        rules_per_node: rules(mode, services, variant.ablation()),
        http_target: http_target.to_string(),
        ping,
        ab: Some(ab),
        ab_cpu_ns_per_request,
        dir: dir.display().to_string(),
        profiles,
    })
}

/// `base` and `notrack` on one lab, NOTRACK switched in place between runs (base first in
/// even rounds, NOTRACK first in odd ones): rebuilding the lab for each run moved the p50 by
/// more than conntrack costs.
async fn run_notrack_pairs(
    cfg: &BenchConfig,
    names: &LabNames,
    out_dir: &Path,
    plan: &ValidatePlan,
    total: usize,
) -> Result<Vec<VariantRun>, BenchError> {
    let mode = plan.mode;
    let progress = Progress {
        index: 1,
        total,
        mode,
    };
    let t = progress.step("validate base/notrack: lab");
    let lab = lab::up_with(
        names,
        LabSpec { mode, services: 0 },
        Variant::Base.ablation(),
    )
    .map_err(|e| progress.failed(e))?;
    progress.done(t, "up (NOTRACK is switched in place)");
    let _nginx = start_nginx(&lab)?;
    let mut runs = Vec::new();
    for round in 0..plan.rounds {
        let order = if round % 2 == 0 {
            [Variant::Base, Variant::Notrack]
        } else {
            [Variant::Notrack, Variant::Base]
        };
        for variant in order {
            set_notrack(&lab, variant == Variant::Notrack)?;
            let slot = Slot {
                variant,
                round,
                services: 0,
                index: runs.len() + 1,
                total,
            };
            runs.push(measure(cfg, &lab, out_dir, slot).await?);
        }
    }
    Ok(runs)
}

/// Runs every validation variant; writes `<out>/validate.json` and the runs' agent reports
/// under `<out>/validate/`. The lab is always torn down.
pub async fn run(
    cfg: &BenchConfig,
    names: &LabNames,
    out_dir: &Path,
    plan: &ValidatePlan,
) -> Result<ValidateResult, BenchError> {
    let cfg = &BenchConfig {
        ping_count: plan.ping_count,
        ping_interval_s: plan.ping_interval_s,
        ..cfg.clone()
    };
    let total = 3 * plan.rounds as usize + plan.sweep.len();
    let pairs = run_notrack_pairs(cfg, names, out_dir, plan, total).await;
    let teardown = lab::down(names);
    let mut runs = pairs?;
    teardown?;
    let mut schedule: Vec<(Variant, u32, u32)> = (0..plan.rounds)
        .map(|round| (Variant::NoKubeProxy, round, 0))
        .collect();
    schedule.extend(
        plan.sweep
            .iter()
            .map(|&services| (Variant::Services, 0, services)),
    );
    for (variant, round, services) in schedule {
        let slot = Slot {
            variant,
            round,
            services,
            index: runs.len() + 1,
            total,
        };
        let outcome = run_variant(cfg, names, out_dir, plan.mode, slot).await;
        let teardown = lab::down(names);
        runs.push(outcome?);
        teardown?;
    }
    let result = ValidateResult {
        schema: SCHEMA.to_owned(),
        mode: plan.mode,
        config: cfg.clone(),
        rounds: plan.rounds,
        sweep: plan.sweep.clone(),
        runs,
    };
    let path = out_dir.join(FILE);
    let json = serde_json::to_string_pretty(&result).expect("validation results serialize");
    fs::write(&path, json).map_err(|source| BenchError::Output { path, source })?;
    Ok(result)
}
