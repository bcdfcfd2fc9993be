//! `netprof k8s run` and `netprof k8s clean`: the study on a real cluster, and removing what a
//! killed run left. Cleanup after a run is an explicit async step after the run's future has
//! finished or was dropped on SIGINT/SIGTERM (never Drop).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

use super::bench::shutdown_signal;
use crate::bench::table;
use crate::k8s::client::{self, Cluster};
use crate::k8s::pods::Images;
use crate::k8s::rbac::NAMESPACE;
use crate::k8s::run::{self, RunPlan, RunState};
use crate::k8s::{cleanup, new_run_id, progress, DEFAULT_IMAGE, DEFAULT_NGINX_IMAGE};
use crate::lab::Mode;

const RUN_HELP: &str = "\
A complete run:
  1. Deploy netprof once:            kubectl apply -k deploy/
     (namespace netprof, ServiceAccounts, RBAC, the agent DaemonSet on every node, and the
     ConfigMap netprof-bench-nginx that the nginx pods mount)
  2. Choose the nodes, as the study:  kubectl label node A workern=1   (client)
                                      kubectl label node B workern=2   (server)
     or pass --nodes A,B. deploy/bench-pods.yaml's own pods start on labelled nodes too:
     delete them before a run (kubectl -n netprof delete pod -l 'app.kubernetes.io/name=netprof-bench,!netprof.io/run'),
     their hostNetwork servers hold ports 80 and 5201 of the server node.
  3. Run:  netprof k8s run --mode-name flannel-vxlan --out results/
     Credentials: --kubeconfig / --context, else KUBECONFIG or ~/.kube/config, else the pod's
     ServiceAccount. Least privilege: deploy/rbac.yaml's netprof-orchestrator roles.

What it creates, in namespace netprof, each pod labelled netprof.io/run=<run id> and
app.kubernetes.io/part-of=netprof: on the server node nginx (one worker, the 612-byte page) and
an iperf3 server, on the client node a client (ping, iperf3, ab); each also as a hostNetwork
twin. It waits for them (--ready-timeout), then runs ping, iperf3 -J and ab through the exec API
on the host path (hostNetwork client -> the server node's IP) and the pod path (client pod ->
the server pods' IPs). Around each step it starts and stops the netprof agent on both nodes
through the port-forward API (--no-profile: no agents). Every pod is deleted at the end: on
success, on failure and on Ctrl-C; `netprof k8s clean` removes the leftovers of a killed run.

Outputs, as `netprof bench --profile` writes them:
  <out>/<mode-name>.json             results (netprof.bench.mode/v1), with the nodes in \"cluster\"
  <out>/profile/<mode-name>/*.json   the agents' report per step and node (node1 = client node)
  <out>/table.txt                    the study's table for this run
Then: netprof report <out>. Runs on clusters with other network modes can write into the same
directory under their own --mode-name, and the report compares them.";

#[derive(Debug, Args)]
pub struct K8sArgs {
    #[command(subcommand)]
    pub command: K8sCommand,
}

#[derive(Debug, Subcommand)]
pub enum K8sCommand {
    /// Run the study's benchmarks on two nodes of a cluster, profiled by the agent DaemonSet.
    #[command(after_long_help = RUN_HELP)]
    Run(RunArgs),
    /// Delete every pod labelled netprof.io/run in namespace netprof (leftovers of a killed run).
    Clean(CleanArgs),
}

/// Which cluster, and as whom.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// kubeconfig file (default: KUBECONFIG, ~/.kube/config, else in-cluster configuration).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// kubeconfig context (default: the current context).
    #[arg(long)]
    pub context: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The cluster's pod network, named as `netprof report` knows modes: flannel-hostgw,
    /// flannel-vxlan, calico or l2 (netprof cannot tell which CNI a cluster runs; for another
    /// CNI name the closest, the result file records the cluster's nodes).
    #[arg(long)]
    pub mode_name: Mode,
    /// Client and server node (default: the nodes labelled workern=1 and workern=2).
    #[arg(long, value_name = "CLIENT,SERVER")]
    pub nodes: Option<String>,
    /// Directory for <mode-name>.json, profile/ and table.txt.
    #[arg(long, default_value = "netprof-k8s-out")]
    pub out: PathBuf,
    /// The netprof image (client tools and iperf3); a mirror's reference on air-gapped clusters.
    #[arg(long, default_value = DEFAULT_IMAGE)]
    pub image: String,
    /// The nginx image.
    #[arg(long, default_value = DEFAULT_NGINX_IMAGE)]
    pub nginx_image: String,
    /// Seconds to wait for the pods to be ready (image pulls included).
    #[arg(long, default_value_t = 120)]
    pub ready_timeout: u64,
    /// Do not start the agents: benchmarks only.
    #[arg(long)]
    pub no_profile: bool,
    /// Duty-cycle the agents: attached for this share of every period only, so a production
    /// node pays for them only in those windows (see `netprof agent --help`).
    #[command(flatten)]
    pub duty: super::duty_args::DutyArgs,
    #[command(flatten)]
    pub tools: super::tool_args::ToolArgs,
    /// Print the result as JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CleanArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Only this run's pods (the id `k8s run` printed); default: every run's.
    #[arg(long)]
    pub run: Option<String>,
}

pub fn run(args: K8sArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match args.command {
        K8sCommand::Run(args) => runtime.block_on(run_command(args)),
        K8sCommand::Clean(args) => runtime.block_on(clean_command(args)),
    }
}

fn plan(args: &RunArgs) -> Result<RunPlan> {
    if args.mode_name == Mode::Host {
        bail!("--mode-name host names the lab's no-pod baseline; a cluster run always measures the host path too: name the cluster's pod network (flannel-hostgw, flannel-vxlan, calico or l2)");
    }
    if args.ready_timeout == 0 {
        bail!("--ready-timeout must be at least 1 second");
    }
    let cfg = args.tools.config(0)?;
    if let Some(nodes) = &args.nodes {
        crate::k8s::nodes::parse_flag(nodes)?;
    }
    Ok(RunPlan {
        nodes: args.nodes.clone(),
        mode: args.mode_name,
        out_dir: args.out.clone(),
        images: Images {
            netprof: args.image.clone(),
            nginx: args.nginx_image.clone(),
        },
        ready_timeout: Duration::from_secs(args.ready_timeout),
        profile: !args.no_profile,
        duty: args.duty.duty()?,
        cfg,
    })
}

async fn connect(args: &ClusterArgs) -> Result<Cluster> {
    Ok(client::connect(args.kubeconfig.as_deref(), args.context.as_deref()).await?)
}

async fn run_command(args: RunArgs) -> Result<()> {
    let plan = plan(&args)?;
    let cluster = connect(&args.cluster).await?;
    let state = RunState::new(new_run_id());
    progress::note(&format!(
        "run {} on {} (namespace {NAMESPACE}), mode {}",
        state.run_id, cluster.server, plan.mode
    ));
    let outcome = tokio::select! {
        result = run::run(&cluster, &plan, &state) => Some(result),
        signal = shutdown_signal() => {
            eprintln!("\nnetprof: {signal}: stopping the benchmarks and deleting the run's pods");
            None
        }
    };
    // The run's future is finished or dropped; now nothing of it may stay on the cluster.
    let cleaned = tokio::select! {
        result = clean_after_run(&cluster, &state) => result,
        signal = shutdown_signal() => Err(anyhow::anyhow!(
            "{signal} during cleanup: stopped; `netprof k8s clean --run {}` deletes what is left", state.run_id
        )),
    };
    let result = match outcome {
        Some(Ok(result)) => result,
        Some(Err(err)) => {
            let err = anyhow::Error::new(err);
            return Err(match cleaned {
                Ok(()) => err,
                Err(cleanup) => err.context(format!("and the cleanup failed too: {cleanup:#}")),
            });
        }
        None => {
            cleaned?;
            bail!(
                "interrupted; the run's pods were deleted (run {})",
                state.run_id
            );
        }
    };
    cleaned?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!("\n{}", table::render(std::slice::from_ref(&result)));
        if let Some(cluster) = &result.cluster {
            for reason in &cluster.not_measured {
                println!("{reason}");
            }
        }
        println!(
            "{} in {:.0} s; results in {} (netprof report {})",
            result.mode,
            result.duration_s,
            args.out.display(),
            args.out.display()
        );
    }
    Ok(())
}

/// Stops agents a broken step left attached, then deletes the run's pods.
async fn clean_after_run(cluster: &Cluster, state: &RunState) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), NAMESPACE);
    let attached = std::mem::take(&mut *state.attached.lock().expect("not poisoned"));
    cleanup::stop_agents(&pods, attached).await;
    if !state.may_have_created() {
        return Ok(());
    }
    let step = progress::step(&format!(
        "deleting the run's pods ({})",
        cleanup::selector(Some(&state.run_id))
    ));
    let deleted = cleanup::delete_selected(
        &pods,
        &cleanup::selector(Some(&state.run_id)),
        cleanup::GONE_WAIT,
        |_, _| {},
    )
    .await
    .map_err(|e| step.failed(e))
    .with_context(|| {
        format!(
            "deleting the run's pods; `netprof k8s clean --run {}` retries",
            state.run_id
        )
    })?;
    if deleted.still_terminating.is_empty() {
        step.done(&format!("{} deleted", deleted.pods.len()));
    } else {
        step.done(&format!(
            "{} deleted, still terminating: {}",
            deleted.pods.len(),
            deleted.still_terminating.join(" ")
        ));
    }
    Ok(())
}

async fn clean_command(args: CleanArgs) -> Result<()> {
    if let Some(id) = &args.run {
        if !crate::k8s::is_run_id(id) {
            bail!("--run {id:?} is not a run id (lower-case letters and digits, as `netprof k8s run` prints)");
        }
    }
    let cluster = connect(&args.cluster).await?;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), NAMESPACE);
    let selector = cleanup::selector(args.run.as_deref());
    let deleted = cleanup::delete_selected(&pods, &selector, cleanup::GONE_WAIT, |pod, run| {
        println!("deleted pod {NAMESPACE}/{pod} (run {run})");
    })
    .await?;
    if deleted.pods.is_empty() {
        println!("nothing to clean: no pod labelled {selector} in namespace {NAMESPACE}");
    } else {
        println!("{} pods deleted", deleted.pods.len());
    }
    if !deleted.still_terminating.is_empty() {
        println!("still terminating: {}", deleted.still_terminating.join(" "));
    }
    Ok(())
}
