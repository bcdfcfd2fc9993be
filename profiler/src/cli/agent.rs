//! `netprof agent`: attach the datapath checkpoints to one node, measure until SIGINT/SIGTERM
//! (or `--duration`), write the JSON document, detach and exit 0.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    net::Ipv4Addr,
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context, Result};
use clap::Args;

use crate::agent::{Agent, AgentOptions};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The node's network namespace (`ip netns` name).
    #[arg(long)]
    pub netns: String,
    /// Pod namespaces whose `eth0` is watched too (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub pod_netns: Vec<String>,
    /// The node's uplink (default: the default route's device, else eno1).
    #[arg(long)]
    pub uplink: Option<String>,
    /// A benchmark endpoint address; packets from or to it are followed (repeatable).
    #[arg(long = "endpoint", required = true)]
    pub endpoints: Vec<Ipv4Addr>,
    /// Measure this many seconds, then stop (default: until SIGINT/SIGTERM).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Node name in the report (default: the namespace's name).
    #[arg(long)]
    pub node: Option<String>,
    /// Where to write the JSON document.
    #[arg(long)]
    pub out: PathBuf,
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
    if let Some(d) = args.duration {
        anyhow::ensure!(
            d > 0.0 && d.is_finite(),
            "--duration must be a positive number of seconds"
        );
    }
    crate::ebpf::preflight()?;
    let existed = args.out.exists();
    let mut out = open_output(&args.out)?;
    let options = AgentOptions {
        pod_netns: args.pod_netns.clone(),
        uplink: args.uplink.clone(),
        node: args.node.clone(),
        ..AgentOptions::new(args.netns.clone(), args.endpoints.clone())
    };
    let agent = match Agent::start(&options) {
        Ok(agent) => agent,
        Err(err) => {
            // Leave no empty report behind.
            if !existed {
                let _ = std::fs::remove_file(&args.out);
            }
            return Err(anyhow::Error::new(err).context("cannot start the agent"));
        }
    };
    eprintln!(
        "netprof agent: attached to {} in {:.0} ms; {}",
        args.netns,
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
        .with_context(|| format!("cannot write the report to {}", args.out.display()))?;
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
        args.out.display()
    );
    Ok(())
}
