//! `netprof bench`: the study's benchmarks on the namespace lab, with Ctrl-C handling.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::bench::validate::CheckKind;
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
    /// Blocks each path's pings are split into, alternating between the host path and the pod
    /// path, so the two RTTs the table compares see the same stretches of the machine's speed
    /// (a shared machine's RTT changes in steps that last seconds). 1 pings the host path, then
    /// the pod path, each in one piece. [default: 10, or --ping-count when fewer]
    #[arg(long)]
    pub ping_blocks: Option<u32>,
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
    /// With --profile and several modes side by side: leave out the clean twins (without
    /// --profile there are none, so it changes nothing). By default
    /// every mode is also measured on a twin lab that no agent ever attaches to, pinged in the
    /// same turns and its iperf3 and ab run right beside the profiled lab's, into <out>/clean/:
    /// the numbers without netprof, taken in the same minutes as the profile (a clean pass run
    /// minutes apart sees another machine speed).
    #[arg(long)]
    pub no_clean_twins: bool,
    /// With --profile: the checkpoint families the agents attach (as `netprof agent --hooks`),
    /// in the modes' passes and in the --validate runs. The default has the gauge, which
    /// measures what netprof leaves in each netfilter segment in every step;
    /// `tc,nf,trace,backlog` leaves it out (the calibration's per-run cost is then taken).
    #[arg(long, default_value = "default")]
    pub hooks: crate::agent::HookFamilies,
    /// With --profile: duty-cycle the agents (see `netprof agent --help`). The --validate runs
    /// always keep them attached.
    #[command(flatten)]
    pub duty: super::duty_args::DutyArgs,
    /// After the modes, check the attribution against ground truth: for each check, profile
    /// the lab with the cost, then measure it against the lab without the cost in interleaved
    /// rounds with no agent attached; writes <out>/validate.json for `netprof report`.
    #[arg(long)]
    pub validate: bool,
    /// The mode of the checks (one with kube-proxy: flannel-hostgw, flannel-vxlan, calico);
    /// the encapsulation check always compares flannel-vxlan with flannel-hostgw.
    #[arg(long, default_value = "flannel-vxlan")]
    pub validate_mode: Mode,
    /// Which checks (comma-separated): notrack, no-kube-proxy, one-node-rules, encapsulation.
    #[arg(
        long,
        default_value = "notrack,no-kube-proxy,one-node-rules,encapsulation",
        value_delimiter = ','
    )]
    pub validate_checks: Vec<CheckKind>,
    /// Interleaved rounds per check (each round measures both states, the order alternating;
    /// the report takes the median of the rounds' differences and its bootstrap interval,
    /// which needs at least 3).
    #[arg(long, default_value_t = 6)]
    pub validate_rounds: u32,
    /// Non-matching iptables rules at the top of node 2's FORWARD chain in the one-node check.
    #[arg(long, default_value_t = bench::validate::ONE_NODE_RULES)]
    pub validate_one_node_rules: u32,
    /// Echo requests per `--validate` ping run.
    #[arg(long, default_value_t = bench::validate::PING_COUNT)]
    pub validate_ping_count: u32,
    /// Seconds between `--validate`'s echo requests. Shorter than the study's 10 ms on purpose:
    /// between pings 10 ms apart the CPUs go idle, and waking them makes the p50 swing from run
    /// to run by far more than the few µs conntrack costs. At 2 ms they stay awake.
    #[arg(long, default_value_t = bench::validate::PING_INTERVAL_S)]
    pub validate_ping_interval: f64,
    /// What the CPUs do between packets for the whole run. `as-is`: whatever the idle governor
    /// chooses, as on nodes left alone (pings 10 ms apart then pay for waking a CPU, and on a
    /// shared machine that cost swings from run to run). `poll`: hold a 0 µs CPU latency request
    /// (/dev/cpu_dma_latency) so idle CPUs poll instead of halting, for repeatable RTTs of the
    /// datapath itself. Recorded in every mode file; `netprof overhead --calibrate DIR` follows it.
    #[arg(long, value_enum, default_value_t = bench::cpu_idle::CpuIdle::AsIs)]
    pub cpu_idle: bench::cpu_idle::CpuIdle,
    /// Print the table as JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let modes = Mode::parse_list(&args.modes)?;
    let names = LabNames::new(&args.lab)?;
    let ping_blocks = args
        .ping_blocks
        .unwrap_or_else(|| bench::ping_blocks::BLOCKS.min(args.tools.ping_count.max(1)));
    let cfg = bench::BenchConfig {
        cpu_idle: args.cpu_idle,
        ..args.tools.config(args.services, ping_blocks)?
    };
    let duty = args.duty.duty()?;
    anyhow::ensure!(
        args.profile || duty.is_none(),
        "--duty needs --profile (it duty-cycles the agents)"
    );
    anyhow::ensure!(
        args.profile || args.hooks == crate::agent::HookFamilies::default(),
        "--hooks needs --profile (it chooses what the agents attach)"
    );
    let tuning = args.profile.then_some(bench::profile::AgentTuning {
        hooks: args.hooks,
        duty,
        expedite_rcu: args.duty.expedite_rcu,
        clean_twins: !args.no_clean_twins,
        ..Default::default()
    });
    let side_by_side = bench::side_by_side::applies(&modes, &cfg, tuning.as_ref());
    let labs = if side_by_side {
        let twins = bench::side_by_side::with_twins(tuning.as_ref());
        bench::side_by_side::lab_names(&names, modes.len(), twins).map_err(|_| {
            let last = if twins { 2 * modes.len() } else { modes.len() };
            anyhow::anyhow!(
                "--lab {}: too long for {last} labs side by side (<lab>-2 to <lab>-{last} run beside it); give a shorter name, --no-clean-twins, or --ping-blocks 1 to run the modes one after the other",
                args.lab
            )
        })?
    } else {
        vec![names.clone()]
    };
    let plan = if args.validate {
        Some(validate_plan(&args, &cfg)?)
    } else {
        None
    };
    lab::require_root()?;
    let _lock = LabLock::acquire(&args.lab)?;
    let _idle = bench::cpu_idle::hold(cfg.cpu_idle)?;
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
    // The benchmark future is gone (its tools were killed); now nothing of the labs may remain.
    let teardown = lab::down_all(&labs);
    if plan.is_some() {
        lab::down(&bench::validate::second_lab(&names)?)?;
    }
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
        let clean = crate::rundir::RunDir::new(&args.out).clean().table_file();
        if side_by_side && bench::side_by_side::with_twins(tuning.as_ref()) {
            let table = std::fs::read_to_string(&clean)
                .with_context(|| format!("cannot read {}", clean.display()))?;
            println!("\nWithout agents (the clean twin labs, in the same turns):\n{table}");
            println!("With the agents attached:");
        } else {
            println!();
        }
        println!("{}", table::render(&results));
        println!(
            "{} modes in {:.0} s; results in {}",
            results.len(),
            started.elapsed().as_secs_f64(),
            args.out.display()
        );
    }
    Ok(())
}

/// The `--validate-*` flags checked.
fn validate_plan(
    args: &BenchArgs,
    cfg: &bench::BenchConfig,
) -> Result<bench::validate::ValidatePlan> {
    use bench::validate::{CheckKind, MAX_ONE_NODE_RULES};
    let needs_kube_proxy = args
        .validate_checks
        .iter()
        .any(|c| *c != CheckKind::Encapsulation);
    if needs_kube_proxy && !args.validate_mode.has_kube_proxy() {
        anyhow::bail!(
            "--validate-mode {} has no kube-proxy rules to check: use flannel-hostgw, flannel-vxlan or calico",
            args.validate_mode
        );
    }
    if args.validate_rounds < 3 {
        anyhow::bail!(
            "--validate-rounds must be at least 3 (a median's interval needs three rounds)"
        );
    }
    if args.validate_checks.is_empty() {
        anyhow::bail!("--validate-checks is empty: name at least one check");
    }
    if !(1..=MAX_ONE_NODE_RULES).contains(&args.validate_one_node_rules) {
        anyhow::bail!("--validate-one-node-rules must be 1 to {MAX_ONE_NODE_RULES}");
    }
    if args.lab.len() > 22 {
        anyhow::bail!(
            "--lab {}: with --validate at most 22 characters (a second lab <lab>-b runs beside it)",
            args.lab
        );
    }
    let ping = bench::BenchConfig {
        ping_count: args.validate_ping_count,
        ping_interval_s: args.validate_ping_interval,
        // The checks split their pings into blocks of their own.
        ping_blocks: 1,
        ..cfg.clone()
    };
    ping.validate()
        .map_err(|e| anyhow::anyhow!("{}", e.to_string().replace("--ping-", "--validate-ping-")))?;
    let mut checks = args.validate_checks.clone();
    checks.dedup();
    Ok(bench::validate::ValidatePlan {
        mode: args.validate_mode,
        checks,
        rounds: args.validate_rounds,
        one_node_rules: args.validate_one_node_rules,
        ping_count: args.validate_ping_count,
        ping_interval_s: args.validate_ping_interval,
        hooks: args.hooks,
    })
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
