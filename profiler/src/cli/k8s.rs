//! `netprof k8s run`, `doctor` and `clean`: the study on a real cluster, checking a cluster
//! first, and removing what a killed run left. Cleanup after a run is an explicit async step
//! after the run's future has finished or was dropped on SIGINT, SIGTERM or SIGHUP (never Drop).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use crate::bench::table;
use crate::k8s::client::{self, Cluster};
use crate::k8s::doctor::{self, Findings};
use crate::k8s::rbac::{Namespaces, AGENT_NAMESPACE, BENCH_NAMESPACE};
use crate::k8s::run::{self, RunPlan, RunState};
use crate::k8s::{cleanup, new_run_id, progress, DEFAULT_NGINX_IMAGE, RUN_LABEL};
use crate::lab::Mode;

const RUN_HELP: &str = "\
A complete run:
  0. Build and push the image once:  cargo xtask image REGISTRY/netprof:TAG
     (docker build -f deploy/Dockerfile, docker push, and the image set in
     deploy/kustomization.yaml: the agents and the benchmark pods run it)
  1. Deploy netprof once:            kubectl apply -k deploy/
     (namespaces netprof-system for the agents and netprof for the benchmark pods,
     ServiceAccounts, RBAC, the agent DaemonSet on every Linux node, the ConfigMap
     netprof-bench-nginx that the nginx pods mount, and a policy that keeps the benchmark
     namespace unprivileged), then the agents' token:
       kubectl -n netprof-system create secret generic netprof-agent-token \\
         --from-literal=token=$(head -c 32 /dev/urandom | base64)
  2. Choose the nodes, as the study:  kubectl label node A workern=1   (client)
                                      kubectl label node B workern=2   (server)
     or pass --nodes A,B.
  3. Check:  netprof k8s doctor      (what `k8s run` checks first; one row per check)
  4. Run:    netprof k8s run --mode-name flannel-vxlan --out results/
     Credentials: --kubeconfig / --context, else KUBECONFIG or ~/.kube/config, else the pod's
     ServiceAccount. Least privilege: deploy/rbac.yaml's netprof-orchestrator roles.

What it creates, in the benchmark namespace (--namespace, default netprof), each pod labelled
netprof.io/run=<run id> and app.kubernetes.io/part-of=netprof: on the server node nginx (one
worker, the 612-byte page) and an iperf3 server, on the client node a client (ping, iperf3, ab);
each also as a hostNetwork twin declaring its host port. It waits for them (--ready-timeout),
checks ICMP and TCP 80/5201 on both paths, then runs ping, iperf3 -J and ab through the exec API
on the host path (hostNetwork client -> the server node's IP) and the pod path (client pod ->
the server pods' IPs). Around each step it starts and stops the netprof agent on both nodes
through the port-forward API, with the token of the agents' Secret; the agents find the pods'
network namespaces from their IPs (--no-profile: no agents). Every pod is deleted at the end: on
success, on failure and on SIGINT, SIGTERM or SIGHUP; pods of a run killed otherwise stop by
themselves (activeDeadlineSeconds), and `netprof k8s clean --run ID` deletes them (the next run
refuses to start on nodes they are on and prints that command).

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
    /// Check a cluster for a run on two nodes: agents and their kernels, admission, images,
    /// ports, ICMP and TCP on both paths. One row per check, each failure with its fix.
    Doctor(DoctorArgs),
    /// Delete a killed run's pods (`--run ID`, as `k8s run` printed it), or every run's (`--all`).
    Clean(CleanArgs),
}

/// Which cluster, as whom, and where netprof lives on it.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// kubeconfig file (default: KUBECONFIG, ~/.kube/config, else in-cluster configuration).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// kubeconfig context (default: the current context).
    #[arg(long)]
    pub context: Option<String>,
    /// The benchmark pods' namespace.
    #[arg(long, default_value = BENCH_NAMESPACE)]
    pub namespace: String,
    /// The agents' namespace (the DaemonSet and its token Secret).
    #[arg(long, default_value = AGENT_NAMESPACE)]
    pub agent_namespace: String,
}

impl ClusterArgs {
    fn namespaces(&self) -> Result<Namespaces> {
        let namespaces = Namespaces {
            bench: self.namespace.clone(),
            agents: self.agent_namespace.clone(),
        };
        namespaces.validate().map_err(anyhow::Error::msg)?;
        Ok(namespaces)
    }
}

/// The pods a run (or the doctor) creates.
#[derive(Debug, Args)]
pub struct PodArgs {
    /// Client and server node (default: the nodes labelled workern=1 and workern=2).
    #[arg(long, value_name = "CLIENT,SERVER")]
    pub nodes: Option<String>,
    /// The netprof image of the client and server pods (default: the agents' image, so one
    /// setting in deploy/kustomization.yaml covers both); a mirror on air-gapped clusters.
    #[arg(long)]
    pub image: Option<String>,
    /// The nginx image.
    #[arg(long, default_value = DEFAULT_NGINX_IMAGE)]
    pub nginx_image: String,
    /// Seconds to wait for the pods to be ready (image pulls included).
    #[arg(long, default_value_t = 120)]
    pub ready_timeout: u64,
    /// Do not use the agents: benchmarks (or checks) without them.
    #[arg(long)]
    pub no_profile: bool,
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
    #[command(flatten)]
    pub pods: PodArgs,
    /// Directory for <mode-name>.json, profile/ and table.txt.
    #[arg(long, default_value = "netprof-k8s-out")]
    pub out: PathBuf,
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
pub struct DoctorArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub pods: PodArgs,
}

#[derive(Debug, Args)]
pub struct CleanArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// This run's pods (the id `k8s run` printed, or the refusal of the next run).
    #[arg(long, required_unless_present = "all", conflicts_with = "all")]
    pub run: Option<String>,
    /// Every run's pods (other users' runs too).
    #[arg(long)]
    pub all: bool,
}

pub fn run(args: K8sArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match args.command {
        K8sCommand::Run(args) => runtime.block_on(run_command(args)),
        K8sCommand::Doctor(args) => runtime.block_on(doctor_command(args)),
        K8sCommand::Clean(args) => runtime.block_on(clean_command(args)),
    }
}

/// SIGINT, SIGTERM, or SIGHUP (the terminal or SSH session went away): a run must still
/// delete its pods.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted (SIGINT)",
        _ = term.recv() => "terminated (SIGTERM)",
        _ = hup.recv() => "hung up (SIGHUP)",
    }
}

fn plan(
    pods: &PodArgs,
    mode: Mode,
    out_dir: PathBuf,
    cfg: crate::bench::BenchConfig,
) -> Result<RunPlan> {
    if pods.ready_timeout == 0 {
        bail!("--ready-timeout must be at least 1 second");
    }
    if let Some(nodes) = &pods.nodes {
        crate::k8s::nodes::parse_flag(nodes)?;
    }
    Ok(RunPlan {
        nodes: pods.nodes.clone(),
        mode,
        out_dir,
        netprof_image: pods.image.clone(),
        nginx_image: pods.nginx_image.clone(),
        ready_timeout: Duration::from_secs(pods.ready_timeout),
        profile: !pods.no_profile,
        duty: None,
        cfg,
    })
}

fn run_plan(args: &RunArgs) -> Result<RunPlan> {
    if args.mode_name == Mode::Host {
        bail!("--mode-name host names the lab's no-pod baseline; a cluster run always measures the host path too: name the cluster's pod network (flannel-hostgw, flannel-vxlan, calico or l2)");
    }
    // A cluster run pings each path in one piece: its steps run through the API server's
    // exec, whose start-up per block would outweigh the pings.
    let cfg = args.tools.config(0, 1)?;
    Ok(RunPlan {
        duty: args.duty.duty()?,
        ..plan(&args.pods, args.mode_name, args.out.clone(), cfg)?
    })
}

async fn connect(args: &ClusterArgs) -> Result<Cluster> {
    let namespaces = args.namespaces()?;
    Ok(client::connect(
        args.kubeconfig.as_deref(),
        args.context.as_deref(),
        namespaces,
    )
    .await?)
}

async fn run_command(args: RunArgs) -> Result<()> {
    let plan = run_plan(&args)?;
    let cluster = connect(&args.cluster).await?;
    let state = RunState::new(new_run_id());
    progress::note(&format!(
        "run {} on {} (namespaces {} and {}), mode {}",
        state.run_id,
        cluster.server,
        cluster.namespaces.bench,
        cluster.namespaces.agents,
        plan.mode
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

/// `k8s doctor`: the checks before pods; with none failed, the run's pods and the checks that
/// need them; then the pods deleted. The table goes to stdout.
async fn doctor_command(args: DoctorArgs) -> Result<()> {
    let plan = plan(
        &args.pods,
        Mode::FlannelVxlan,
        PathBuf::new(),
        crate::bench::BenchConfig::default(),
    )?;
    let cluster = connect(&args.cluster).await?;
    let state = RunState::new(new_run_id());
    progress::note(&format!(
        "doctor {} on {} (namespaces {} and {})",
        state.run_id, cluster.server, cluster.namespaces.bench, cluster.namespaces.agents
    ));
    let mut findings = Findings::default();
    let outcome = tokio::select! {
        result = doctor_checks(&cluster, &plan, &state, &mut findings) => Some(result),
        signal = shutdown_signal() => {
            eprintln!("\nnetprof: {signal}: stopping the checks and deleting their pods");
            None
        }
    };
    let cleaned = clean_after_run(&cluster, &state).await;
    print!("{}", findings.render());
    cleaned?;
    match outcome {
        None => bail!("interrupted; the doctor's pods were deleted"),
        Some(Err(err)) => Err(err.into()),
        Some(Ok(())) if findings.failures() > 0 => {
            bail!(
                "k8s doctor found {} problem(s): see the rows marked FAIL",
                findings.failures()
            )
        }
        Some(Ok(())) => {
            println!("all {} checks passed", findings.rows.len());
            Ok(())
        }
    }
}

async fn doctor_checks(
    cluster: &Cluster,
    plan: &RunPlan,
    state: &RunState,
    findings: &mut Findings,
) -> Result<(), crate::k8s::K8sError> {
    let prepared = doctor::check_before_pods(cluster, plan, &state.run_id, findings).await?;
    if findings.failures() > 0 {
        findings.note("pods", "not created: fix the failures above first");
        return Ok(());
    }
    match run::create_and_wait(cluster, plan, state, &prepared).await {
        Ok((bench_pods, ready)) => {
            doctor::check_with_pods(cluster, &prepared, &bench_pods, &ready, findings).await
        }
        Err(err) => {
            findings.fail("pods", err.to_string(), "");
            Ok(())
        }
    }
}

/// Stops agents a broken step left attached, then deletes the run's pods.
async fn clean_after_run(cluster: &Cluster, state: &RunState) -> Result<()> {
    let pods = cluster.bench_pods();
    let attached = std::mem::take(&mut *state.attached.lock().expect("not poisoned"));
    cleanup::stop_agents(&cluster.agent_pods(), attached).await;
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
    let pods: Api<Pod> = cluster.bench_pods();
    let namespace = cluster.namespaces.bench.clone();
    let selector = cleanup::selector(args.run.as_deref());
    let deleted = cleanup::delete_selected(&pods, &selector, cleanup::GONE_WAIT, |pod, run| {
        println!("deleted pod {namespace}/{pod} (run {run})");
    })
    .await?;
    if deleted.pods.is_empty() {
        println!("nothing to clean: no pod labelled {selector} in namespace {namespace}");
        if args.run.is_some() {
            print_runs(&pods).await;
        }
    } else {
        println!("{} pods deleted", deleted.pods.len());
    }
    if !deleted.still_terminating.is_empty() {
        println!("still terminating: {}", deleted.still_terminating.join(" "));
    }
    Ok(())
}

/// The runs that have pods left, so a mistyped `--run` is easy to correct.
async fn print_runs(pods: &Api<Pod>) {
    let Ok(listed) = pods.list(&ListParams::default().labels(RUN_LABEL)).await else {
        return;
    };
    let mut runs: Vec<String> = listed
        .items
        .iter()
        .filter_map(|p| p.metadata.labels.as_ref()?.get(RUN_LABEL).cloned())
        .collect();
    runs.sort();
    runs.dedup();
    if !runs.is_empty() {
        println!("runs with pods left: {}", runs.join(", "));
    }
}
