//! `netprof bench`: the study's benchmarks on the namespace lab, with Ctrl-C handling.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::bench::{self, table};
use crate::lab::{self, names::DEFAULT_LAB, LabLock, LabNames, Mode};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// `all`, or a comma-separated list of host, flannel-hostgw, flannel-vxlan, calico, l2.
    #[arg(long, default_value = "all")]
    pub modes: String,
    /// Directory for <mode>.json results and table.txt.
    #[arg(long, default_value = "netprof-out")]
    pub out: PathBuf,
    #[command(flatten)]
    pub tools: super::tool_args::ToolArgs,
    /// Extra kube-proxy Services (5 iptables rules each) in the modes with kube-proxy.
    #[arg(long, default_value_t = 0)]
    pub services: u32,
    /// Lab name (namespaces netprof-<lab>-*).
    #[arg(long, default_value = DEFAULT_LAB)]
    pub lab: String,
    /// Run one eBPF agent per lab node during every benchmark and store its stage profile
    /// beside the results (<out>/profile/<mode>/<path>-<tool>-<node>.json).
    #[arg(long)]
    pub profile: bool,
    /// With --profile: duty-cycle the agents (see `netprof agent --help`). The --validate runs
    /// always keep them attached.
    #[command(flatten)]
    pub duty: super::duty_args::DutyArgs,
    /// After the modes, run the counterfactual checks of the attribution on one mode (agents
    /// attached): conntrack off (NOTRACK), no kube-proxy rules, and a sweep of extra Services;
    /// writes <out>/validate.json for `netprof report`.
    #[arg(long)]
    pub validate: bool,
    /// The mode `--validate` runs on (one with kube-proxy: flannel-hostgw, flannel-vxlan, calico).
    #[arg(long, default_value = "flannel-vxlan")]
    pub validate_mode: Mode,
    /// Interleaved rounds of base / notrack / no-kube-proxy runs (the order rotates; the
    /// report takes the median of the rounds' paired differences, so more rounds tame drift).
    #[arg(long, default_value_t = 6)]
    pub validate_rounds: u32,
    /// Echo requests per `--validate` ping run.
    #[arg(long, default_value_t = bench::validate::PING_COUNT)]
    pub validate_ping_count: u32,
    /// Seconds between `--validate`'s echo requests. Shorter than the study's 10 ms on purpose:
    /// between pings 10 ms apart the CPUs go idle, and waking them made the p50 swing by ±40 µs
    /// from run to run here, far more than the few µs conntrack costs. At 2 ms they stay
    /// awake and the swing is a few µs.
    #[arg(long, default_value_t = bench::validate::PING_INTERVAL_S)]
    pub validate_ping_interval: f64,
    /// Extra Services per run of the `--validate` sweep (comma-separated).
    #[arg(long, default_value = "0,1000,5000", value_delimiter = ',')]
    pub sweep_services: Vec<u32>,
    /// Print the table as JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let modes = Mode::parse_list(&args.modes)?;
    let names = LabNames::new(&args.lab)?;
    let cfg = args.tools.config(args.services)?;
    let duty = args.duty.duty()?;
    anyhow::ensure!(
        args.profile || duty.is_none(),
        "--duty needs --profile (it duty-cycles the agents)"
    );
    let tuning = args.profile.then_some(bench::profile::AgentTuning {
        duty,
        ..Default::default()
    });
    let plan = if args.validate {
        if !args.validate_mode.has_kube_proxy() {
            anyhow::bail!(
                "--validate-mode {} has no kube-proxy rules to remove: use flannel-hostgw, flannel-vxlan or calico",
                args.validate_mode
            );
        }
        if args.validate_rounds == 0 {
            anyhow::bail!("--validate-rounds must be at least 1");
        }
        if let Some(&n) = args
            .sweep_services
            .iter()
            .find(|&&n| n > lab::addressing::MAX_EXTRA_SERVICES)
        {
            anyhow::bail!(
                "--sweep-services {n} is too many: the lab holds at most {}",
                lab::addressing::MAX_EXTRA_SERVICES
            );
        }
        let ping = bench::BenchConfig {
            ping_count: args.validate_ping_count,
            ping_interval_s: args.validate_ping_interval,
            ..cfg.clone()
        };
        ping.validate().map_err(|e| {
            anyhow::anyhow!("{}", e.to_string().replace("--ping-", "--validate-ping-"))
        })?;
        Some(bench::validate::ValidatePlan {
            mode: args.validate_mode,
            rounds: args.validate_rounds,
            sweep: args.sweep_services.clone(),
            ping_count: args.validate_ping_count,
            ping_interval_s: args.validate_ping_interval,
        })
    } else {
        None
    };
    lab::require_root()?;
    let _lock = LabLock::acquire(&args.lab)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let started = std::time::Instant::now();
    let outcome = runtime.block_on(async {
        tokio::select! {
            result = bench::run(&modes, &cfg, &names, &args.out, tuning.as_ref(), plan.as_ref()) => result.map(Some),
            signal = shutdown_signal() => {
                eprintln!("\nnetprof: {signal}: stopping the tools and removing the lab");
                Ok(None)
            }
        }
    });
    // The benchmark future is gone (its tools were killed); now nothing of the lab may remain.
    let teardown = lab::down(&names);
    let results = match outcome? {
        Some(results) => results,
        None => {
            teardown?;
            anyhow::bail!(
                "interrupted; the lab was removed and partial results are in {}",
                args.out.display()
            );
        }
    };
    teardown?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        println!("\n{}", table::render(&results));
        println!(
            "{} modes in {:.0} s; results in {}",
            results.len(),
            started.elapsed().as_secs_f64(),
            args.out.display()
        );
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM, naming which.
pub(super) async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted (SIGINT)",
        _ = term.recv() => "terminated (SIGTERM)",
    }
}
