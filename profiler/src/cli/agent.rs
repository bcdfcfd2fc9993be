//! `netprof agent`: attach the datapath checkpoints to one node, measure until SIGINT/SIGTERM
//! (or `--duration`), write the JSON document, detach and exit 0.
//!
//! `netprof agent --serve`: the same agent driven over the control API ([`crate::api`]) on a
//! loopback address, until SIGINT/SIGTERM (which detach and exit 0).

use std::{
    fs::{File, OpenOptions},
    io::Write,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context, Result};
use clap::Args;

use crate::agent::{Agent, AgentOptions, FlowSpec};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The node's network namespace (`ip netns` name).
    #[arg(long, required_unless_present = "serve")]
    pub netns: Option<String>,
    /// Pod namespaces whose `eth0` is watched too (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub pod_netns: Vec<String>,
    /// The node's uplink (default: the default route's device, else eno1).
    #[arg(long)]
    pub uplink: Option<String>,
    /// A benchmark flow to follow, PROTO:CLIENT-SERVER[:PORT] (repeatable), e.g.
    /// icmp:198.19.1.2-198.19.2.2 or tcp:198.18.0.1-198.18.0.2:5201; CLIENT may be * for any
    /// peer, no PORT means every port. Other traffic is not followed.
    #[arg(long = "flow", value_name = "FLOW", required_unless_present_any = ["serve", "endpoints"])]
    pub flows: Vec<FlowSpec>,
    /// Follow every packet from or to this address (repeatable): as the flows icmp:*-IP,
    /// tcp:*-IP and udp:*-IP, costlier than naming the benchmark's flows.
    #[arg(long = "endpoint", value_name = "IP")]
    pub endpoints: Vec<Ipv4Addr>,
    /// Measure this many seconds, then stop (default: until SIGINT/SIGTERM).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Node name in the report (default: the namespace's name).
    #[arg(long)]
    pub node: Option<String>,
    /// Follow 1 in N TCP/UDP flows (a power of two), chosen by a hash of the client's port so
    /// a request and its reply are followed together; pings are always followed. 1 follows
    /// every flow (exact counts); larger values make the agent cheaper under load.
    #[arg(long, default_value_t = 1)]
    pub sample: u32,
    #[command(flatten)]
    pub duty: super::duty_args::DutyArgs,
    /// With bpf_stats (per-program run time): keep them on for this percentage of every second
    /// only, when attached throughout (100: all the time). Statistics cost two clock reads per
    /// program run; the run time per run comes from the slices, totals are scaled.
    #[arg(long, default_value_t = crate::agent::stats::DEFAULT_STATS_SHARE, value_name = "PERCENT")]
    pub stats_share: u32,
    /// Checkpoint families to attach: default (tc,nf,trace,backlog,gauge), all, or some of
    /// tc,dev,nf,nf-fentry,trace,backlog,gauge (nf-fentry: netfilter through fentry/fexit on
    /// conntrack and the table walkers instead of netfilter links, the fallback kernels before
    /// 6.4 get; backlog: a veth's frame waiting for the receive softirq, tp_btf netif_rx;
    /// gauge: one more netfilter program right after FORWARD -99, whose segment is netprof's
    /// own, for the report to take out of every netfilter segment).
    #[arg(long, default_value = "default")]
    pub hooks: crate::agent::HookFamilies,
    /// Where to write the JSON document.
    #[arg(long, required_unless_present = "serve")]
    pub out: Option<PathBuf>,
    /// Serve the control API instead (start/stop/snapshot/metrics over HTTP); the flows to
    /// follow come with each `POST /v1/start`.
    #[arg(long, conflicts_with_all = ["netns", "pod_netns", "uplink", "flows", "endpoints", "duration", "node", "out", "sample", "hooks", "stats_share"])]
    pub serve: bool,
    /// Loopback address of the control API (with --serve; port 0 picks a free port).
    #[arg(long, default_value = crate::api::DEFAULT_LISTEN, requires = "serve")]
    pub listen: SocketAddr,
    /// With --serve: every route but /healthz and /readyz needs `Authorization: Bearer` with
    /// the token in this file (the DaemonSet mounts it from a Secret). Without it the API is
    /// open to anything that reaches the loopback address.
    #[arg(long, requires = "serve", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// Opens the output before anything is attached, so a bad path fails first.
fn open_output(path: &PathBuf) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| {
            format!(
                "cannot write the report to {}: choose a writable path for --out",
                path.display()
            )
        })
}

pub fn run(args: AgentArgs) -> Result<()> {
    if args.serve {
        return serve(args.listen, args.token_file.as_deref());
    }
    let (Some(netns), Some(out_path)) = (args.netns.clone(), args.out.clone()) else {
        anyhow::bail!("--netns and --out are required without --serve");
    };
    if let Some(d) = args.duration {
        anyhow::ensure!(
            d > 0.0 && d.is_finite(),
            "--duration must be a positive number of seconds"
        );
    }
    crate::ebpf::preflight()?;
    let existed = out_path.exists();
    let mut out = open_output(&out_path)?;
    let mut flows = args.flows.clone();
    flows.extend(
        args.endpoints
            .iter()
            .flat_map(|&ip| FlowSpec::everything_of(ip)),
    );
    let options = AgentOptions {
        pod_netns: args.pod_netns.clone(),
        uplink: args.uplink.clone(),
        node: args.node.clone(),
        sample: args.sample,
        hooks: args.hooks,
        stats_share: args.stats_share,
        duty: args.duty.duty()?,
        expedite_rcu: args.duty.expedite_rcu,
        ..AgentOptions::new(netns.clone(), flows)
    };
    let agent = match Agent::start(&options) {
        Ok(agent) => agent,
        Err(err) => {
            // Leave no empty report behind.
            if !existed {
                let _ = std::fs::remove_file(&out_path);
            }
            return Err(anyhow::Error::new(err).context("cannot start the agent"));
        }
    };
    eprintln!(
        "netprof agent: attached to {} in {:.0} ms; {}",
        netns,
        agent.attach_ms(),
        match args.duration {
            Some(d) => format!("measuring for {d} s"),
            None => "measuring until SIGINT/SIGTERM".to_owned(),
        }
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let reason = runtime.block_on(async {
        match args.duration {
            Some(d) => tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(d)) => "duration elapsed",
                signal = super::bench::shutdown_signal() => signal,
            },
            None => super::bench::shutdown_signal().await,
        }
    });
    let report = agent.snapshot().context("cannot read the measurements")?;
    drop(agent);
    out.set_len(0)
        .and_then(|()| out.write_all((report.to_json() + "\n").as_bytes()))
        .with_context(|| format!("cannot write the report to {}", out_path.display()))?;
    for item in &report.not_measured {
        eprintln!(
            "netprof agent: not measured: {}: {}",
            item.what, item.reason
        );
    }
    eprintln!(
        "netprof agent: {reason}; {} segments, {} packets admitted; detached; report in {}",
        report.segments.len(),
        report.counters.admitted,
        out_path.display()
    );
    Ok(())
}

/// `--serve`: the control API until SIGINT/SIGTERM.
fn serve(listen: SocketAddr, token_file: Option<&std::path::Path>) -> Result<()> {
    let token = token_file
        .map(crate::api::auth::Token::from_file)
        .transpose()?;
    // Several threads: a slow attach or snapshot on a blocking thread never holds up /healthz.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = crate::api::bind(listen).await?;
        let addr = listener
            .local_addr()
            .context("cannot read the bound address")?;
        let features = tokio::task::spawn_blocking(crate::ebpf::features::KernelFeatures::probe)
            .await
            .context("the kernel feature probe failed")?;
        match features.not_ready() {
            Some(reason) => eprintln!("netprof agent: warning: not ready: {reason}"),
            None => eprintln!("netprof agent: {}: {}", features.kernel, features.summary()),
        }
        if token.is_none() {
            eprintln!("netprof agent: no --token-file: the API answers every process that reaches this loopback");
        }
        // Tools read the address from the end of this line.
        eprintln!("netprof agent: control API listening on http://{addr}");
        let control = crate::api::Control::new(token, features);
        let reason = crate::api::serve(listener, control, super::bench::shutdown_signal()).await;
        eprintln!("netprof agent: {reason}; stopped serving");
        Ok(())
    })
}
