//! `netprof bench`: for each mode, build the lab, ping the host path and the pod path in turns
//! (`ping_step`), run iperf3 and ab on each, write `<out>/<mode>.json`, tear the lab down, and
//! finally print the study's table. Several modes run side by side instead (`side_by_side`):
//! every lab up at once and all their paths pinged in turns; profiled, beside a clean twin of
//! every lab that no agent attaches to.

// Errors here end a run (one per run), so carrying their context inline costs nothing.
#![allow(clippy::result_large_err)]

mod ab_step;
pub mod bootstrap;
pub mod calibrate;
pub mod config;
pub mod cpu_idle;
pub mod cpu_time;
pub mod overhead;
pub mod ping_blocks;
mod ping_step;
pub mod profile;
pub mod result;
pub mod servers;
pub mod side_by_side;
pub mod table;
pub mod tools;
pub mod validate;

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::agent::FlowSpec;
use crate::cmd::{ensure_installed, Cmd, CmdError};
use crate::lab::{self, kube_proxy, Lab, LabError, LabNames, LabSpec, Mode, PathEndpoints};
use crate::rundir::{NetPath, RunDir, Tool};
pub use config::BenchConfig;
use result::{Environment, ModeResult, PathResult, SCHEMA};

/// Every program a benchmark run needs, checked before anything is built.
pub const REQUIRED_TOOLS: [&str; 9] = [
    "ip",
    "bridge",
    "sysctl",
    "ss",
    "iptables-restore",
    "ping",
    "iperf3",
    "ab",
    "nginx",
];

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error("{mode}: {step}: {source}")]
    Tool {
        mode: Mode,
        step: String,
        #[source]
        source: tools::ToolError,
    },
    #[error("{mode}: starting the {what}: {source}")]
    Server {
        mode: Mode,
        what: &'static str,
        #[source]
        source: servers::ServerError,
    },
    #[error("{mode}: profiling")]
    Profile {
        mode: Mode,
        #[source]
        source: profile::ProfileError,
    },
    #[error("cannot write results to {path}: {source} (choose a writable --out directory)")]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Progress lines on stderr, so stdout stays for the table.
struct Progress {
    index: usize,
    total: usize,
    mode: Mode,
    /// The mode's clean twin lab (see `side_by_side`), which no agent attaches to.
    twin: bool,
}

impl Progress {
    fn step(&self, text: &str) -> Instant {
        let twin = if self.twin { "clean twin: " } else { "" };
        eprint!(
            "[{}/{}] {:<14} {twin}{text} ... ",
            self.index,
            self.total,
            self.mode.name()
        );
        let _ = std::io::stderr().flush();
        Instant::now()
    }

    fn done(&self, started: Instant, text: &str) {
        eprintln!("{text} ({:.1} s)", started.elapsed().as_secs_f64());
    }

    /// Ends an open progress line so the error message starts on its own line.
    fn failed<E>(&self, err: E) -> E {
        eprintln!("failed");
        err
    }
}

/// Runs every mode in order. The lab is always torn down, also when a step fails; the caller
/// handles Ctrl-C by dropping this future and calling `lab::down`.
pub async fn run(
    modes: &[Mode],
    cfg: &BenchConfig,
    names: &LabNames,
    out_dir: &Path,
    profile: Option<&profile::AgentTuning>,
    validate: Option<&validate::ValidatePlan>,
) -> Result<Vec<ModeResult>, BenchError> {
    cfg.validate()?;
    lab::require_root()?;
    for tool in REQUIRED_TOOLS {
        ensure_installed(tool)?;
    }
    let out = RunDir::new(out_dir);
    out.prepare().map_err(|source| BenchError::Output {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let results = if side_by_side::applies(modes, cfg, profile) {
        side_by_side::run(modes, cfg, names, &out, profile).await?
    } else {
        let mut results = Vec::new();
        for (i, &mode) in modes.iter().enumerate() {
            let progress = Progress {
                index: i + 1,
                total: modes.len(),
                mode,
                twin: false,
            };
            let outcome = run_mode(&progress, cfg, names, &out, profile).await;
            // Whatever happened, nothing of this mode's lab may survive.
            let teardown = lab::down(names);
            let result = outcome?;
            teardown?;
            write_result(&out, &result)?;
            results.push(result);
        }
        results
    };
    let summary = out.table_file();
    fs::write(&summary, table::render(&results)).map_err(|source| BenchError::Output {
        path: summary,
        source,
    })?;
    if let Some(plan) = validate {
        validate::run(cfg, names, out_dir, plan).await?;
    }
    Ok(results)
}

fn write_result(out: &RunDir, result: &ModeResult) -> Result<(), BenchError> {
    let path = out.mode_file(result.mode);
    let json = serde_json::to_string_pretty(result).expect("results serialize");
    fs::write(&path, json).map_err(|source| BenchError::Output { path, source })
}

/// When a mode's measurement began.
#[derive(Clone, Copy)]
struct Started {
    unix_s: u64,
    at: Instant,
}

impl Started {
    fn now() -> Self {
        Self {
            unix_s: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            at: Instant::now(),
        }
    }
}

/// `progress.mode`'s lab, built under `names`.
fn bring_up(progress: &Progress, cfg: &BenchConfig, names: &LabNames) -> Result<Lab, BenchError> {
    let mode = progress.mode;
    let services = if mode.has_kube_proxy() {
        cfg.services
    } else {
        0
    };
    let t = progress.step(&format!("building the lab (+{services} services)"));
    let lab = lab::up(names, LabSpec { mode, services }).map_err(|e| progress.failed(e))?;
    progress.done(t, "up");
    Ok(lab)
}

/// The lab's paths: the host path, and the pod path where the mode has pods.
fn paths_of(lab: &Lab) -> Vec<(NetPath, PathEndpoints)> {
    let mut paths = vec![(NetPath::Host, lab.host_path())];
    if let Some(pod) = lab.pod_path() {
        paths.push((NetPath::Pod, pod));
    }
    paths
}

async fn run_mode(
    progress: &Progress,
    cfg: &BenchConfig,
    names: &LabNames,
    out: &RunDir,
    profile: Option<&profile::AgentTuning>,
) -> Result<ModeResult, BenchError> {
    let started = Started::now();
    let lab = bring_up(progress, cfg, names)?;
    let profiler = match profile {
        Some(tuning) => Some(start_profiler(progress, &lab, out, tuning)?),
        None => None,
    };
    measure_mode(progress, cfg, &lab, profiler, None, started).await
}

/// One agent per node of `lab`, attached.
fn start_profiler(
    progress: &Progress,
    lab: &Lab,
    out: &RunDir,
    tuning: &profile::AgentTuning,
) -> Result<profile::Profiler, BenchError> {
    let t = progress.step("attaching one agent per node");
    let profiler = profile::Profiler::start_with(lab, out, tuning).map_err(|source| {
        progress.failed(BenchError::Profile {
            mode: progress.mode,
            source,
        })
    })?;
    progress.done(t, "attached");
    Ok(profiler)
}

/// A mode's pings taken before its other steps, in turns with other modes' paths.
struct TakenPings {
    /// One per path of the mode's lab, in `paths_of`'s order.
    reports: Vec<ping_step::PathPings>,
    /// The agents' reports of the profiled blocks (none without agents).
    profiles: Vec<crate::rundir::ProfileFile>,
    /// The modes whose paths took turns with these.
    with: Vec<Mode>,
}

/// Every step of a mode on its lab, profiled by `profiler`'s agents (attached) when given;
/// the pings are taken here unless `pings` brings them.
async fn measure_mode(
    progress: &Progress,
    cfg: &BenchConfig,
    lab: &Lab,
    profiler: Option<profile::Profiler>,
    pings: Option<TakenPings>,
    started: Started,
) -> Result<ModeResult, BenchError> {
    let mode = progress.mode;
    let environment = environment(lab)?;
    let (taken, mut profiles, pinged_with) = match pings {
        Some(p) => (Some(p.reports), p.profiles, p.with),
        None => (None, Vec::new(), Vec::new()),
    };
    let mut ctx = PathContext {
        progress,
        cfg,
        lab,
        profiler: profiler.as_ref(),
        profiles: &mut profiles,
    };
    let paths = paths_of(lab);
    let pings = match taken {
        Some(reports) => reports,
        None => {
            let refs: Vec<(NetPath, &PathEndpoints)> = paths.iter().map(|(p, e)| (*p, e)).collect();
            ping_step::ping_paths(&mut ctx, &refs).await?
        }
    };
    assert_eq!(pings.len(), paths.len(), "a ping report per path");
    let mut host_path = None;
    let mut pod_path = None;
    for ((path, endpoints), ping) in paths.iter().zip(pings) {
        let result = run_path(&mut ctx, *path, endpoints, ping).await?;
        match path {
            NetPath::Host => host_path = Some(result),
            NetPath::Pod => pod_path = Some(result),
        }
    }
    let host_path = host_path.expect("every lab has a host path");
    // Detach before the lab goes away.
    drop(profiler);
    Ok(ModeResult {
        schema: SCHEMA.to_owned(),
        mode,
        environment,
        config: cfg.clone(),
        started_unix_s: started.unix_s,
        duration_s: started.at.elapsed().as_secs_f64(),
        host_path,
        pod_path,
        pinged_with,
        clean_twin: progress.twin,
        profiles,
        cluster: None,
    })
}

/// What every step of a path needs.
struct PathContext<'a> {
    progress: &'a Progress,
    cfg: &'a BenchConfig,
    lab: &'a Lab,
    profiler: Option<&'a profile::Profiler>,
    profiles: &'a mut Vec<crate::rundir::ProfileFile>,
}

impl PathContext<'_> {
    /// Whether agents are attached to the lab.
    fn profiled(&self) -> bool {
        self.profiler.is_some()
    }

    /// Detaches the agents' programs or attaches them again (no-op without agents).
    fn set_attached(&self, attached: bool) -> Result<(), BenchError> {
        let Some(p) = self.profiler else {
            return Ok(());
        };
        p.set_attached(attached)
            .map_err(|source| BenchError::Profile {
                mode: self.lab.mode(),
                source,
            })
    }

    /// The flows of `tool`'s step on `endpoints` (none without agents: nothing to follow).
    fn flows(&self, endpoints: &PathEndpoints, tool: Tool) -> Result<Vec<FlowSpec>, BenchError> {
        if self.profiler.is_none() {
            return Ok(Vec::new());
        }
        profile::step_flows(self.lab, endpoints, tool).map_err(|source| BenchError::Profile {
            mode: self.lab.mode(),
            source,
        })
    }

    /// Points the agents at `flows` and clears their histograms and counters.
    fn follow(&self, flows: &[FlowSpec]) -> Result<(), BenchError> {
        let Some(p) = self.profiler else {
            return Ok(());
        };
        p.before_step(flows).map_err(|source| BenchError::Profile {
            mode: self.lab.mode(),
            source,
        })
    }

    /// Points the agents at the flows of `tool`'s step on `endpoints`.
    fn before(&self, endpoints: &PathEndpoints, tool: Tool) -> Result<(), BenchError> {
        self.follow(&self.flows(endpoints, tool)?)
    }

    fn after(&mut self, path: NetPath, tool: Tool) -> Result<(), BenchError> {
        self.after_part(path, tool, None)
    }

    /// Writes the agents' reports of the step (or with `block`, of one block of it) just run.
    fn after_part(
        &mut self,
        path: NetPath,
        tool: Tool,
        block: Option<usize>,
    ) -> Result<(), BenchError> {
        let mode = self.lab.mode();
        if let Some(p) = self.profiler {
            let files = p
                .after_step_part(path, tool, block)
                .map_err(|source| BenchError::Profile { mode, source })?;
            self.profiles.extend(files);
        }
        Ok(())
    }
}

/// iperf3 and ab on one path, with its ping (taken before, see `ping_step`).
async fn run_path(
    ctx: &mut PathContext<'_>,
    path: NetPath,
    endpoints: &PathEndpoints,
    pings: ping_step::PathPings,
) -> Result<PathResult, BenchError> {
    let (progress, cfg, lab) = (ctx.progress, ctx.cfg, ctx.lab);
    let mode = lab.mode();
    let label = path.label();
    let tool_err = |step: &str| {
        let step = format!("{label}: {step}");
        move |source| progress.failed(BenchError::Tool { mode, step, source })
    };
    let work_dir = PathBuf::from("/run/netprof/labs")
        .join(lab.names.lab())
        .join(format!("nginx-{}", endpoints.server_netns));
    let server_err = |what| move |source| BenchError::Server { mode, what, source };
    let _nginx =
        servers::start_nginx(&endpoints.server_netns, &work_dir).map_err(server_err("nginx"))?;
    let _iperf3 =
        servers::start_iperf3(&endpoints.server_netns).map_err(server_err("iperf3 server"))?;

    let t = progress.step(&format!("{label}: iperf3 {} s", cfg.iperf3_seconds));
    ctx.before(endpoints, Tool::Iperf3)?;
    let iperf3 = tools::iperf3(&endpoints.client_netns, endpoints.server_ip, cfg)
        .await
        .map_err(tool_err("iperf3"))?;
    ctx.after(path, Tool::Iperf3)?;
    let retrans = iperf3
        .retransmits
        .map_or(String::new(), |r| format!(", {r} retransmits"));
    progress.done(
        t,
        &format!("{:.2} Gbit/s{retrans}", iperf3.receiver_bps / 1e9),
    );

    let t = progress.step(&format!(
        "{label}: ab {} requests x {} concurrent -> {}",
        cfg.ab_requests, cfg.ab_concurrency, endpoints.http_target
    ));
    let step = ab_step::run(ctx, path, endpoints)
        .await
        .map_err(|e| progress.failed(e))?;
    let ab = step.ab;
    let off = step.agents_off.as_ref().map_or(String::new(), |off| {
        let qps: Vec<String> = off
            .runs
            .iter()
            .map(|r| format!("{:.0}", r.ab.requests_per_second))
            .collect();
        format!(
            " (agents detached before and after: {} req/s)",
            qps.join(", ")
        )
    });
    progress.done(
        t,
        &format!(
            "{:.0} req/s, mean {:.3} ms, {} failed{off}",
            ab.requests_per_second, ab.mean_time_per_request_ms, ab.failed_requests
        ),
    );

    Ok(PathResult {
        endpoints: endpoints.clone(),
        ping: pings.ping,
        iperf3,
        ab,
        ab_cpu_ns_per_request: step.cpu_ns_per_request,
        ping_agents_off: pings.agents_off,
        ab_agents_off: step.agents_off,
    })
}

fn environment(lab: &Lab) -> Result<Environment, BenchError> {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let iptables = Cmd::new("iptables")
        .arg("-V")
        .run()
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "not installed".to_owned());
    let rules = if lab.mode().has_kube_proxy() {
        kube_proxy::rule_count(&kube_proxy::ruleset(
            lab.mode(),
            lab::Node::Two,
            lab.spec.services,
        ))
    } else {
        0
    };
    Ok(Environment {
        kernel,
        iptables,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        extra_services: lab.spec.services,
        iptables_rules_per_node: rules,
    })
}
