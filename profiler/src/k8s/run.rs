//! `netprof k8s run`: the study on a cluster. Choose the nodes, check the agents, create the
//! pods, wait for them, run ping, iperf3 and ab on the host path (hostNetwork client to the
//! hostNetwork servers, node IP to node IP) and the pod path (client pod to server pod IPs)
//! with the agents started and stopped around each step, and write `<out>/<mode>.json` and
//! `table.txt` as `netprof bench` does.
//!
//! [`run`] never deletes anything: the caller runs [`cleanup`](super::cleanup) after it, whether
//! it finished, failed or was dropped on Ctrl-C, using the run's label and [`RunState`].

use crate::agent::FlowSpec;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};

use super::agents::NodeAgent;
use super::client::Cluster;
use super::error::api;
use super::nodes::ChosenNodes;
use super::pods::{self, BenchPod, Images, NetPath, PodSettings, Role};
use super::profile::{Attached, ClusterProfiler, Targets};
use super::ready::{self, ReadyPod};
use super::{doctor, progress, tools, K8sError, BENCH_APP, NAME_LABEL, PATH_LABEL, RUN_LABEL};
use crate::bench::result::{ClusterRecord, Environment, ModeResult, PathResult, SCHEMA};
use crate::bench::servers::IPERF3_PORT;
use crate::bench::{table, BenchConfig};
use crate::lab::{Mode, PathEndpoints};
use crate::rundir::{RunDir, Tool};

/// What to run.
#[derive(Debug, Clone)]
pub struct RunPlan {
    /// `--nodes CLIENT,SERVER`, else the `workern` labels.
    pub nodes: Option<String>,
    /// The cluster's pod network, as `netprof report` names modes.
    pub mode: Mode,
    pub out_dir: PathBuf,
    /// `--image` (`None`: the agents' image) and `--nginx-image`.
    pub netprof_image: Option<String>,
    pub nginx_image: String,
    pub ready_timeout: Duration,
    pub profile: bool,
    /// Duty-cycle the agents (`--duty`); `None`: attached throughout each step.
    pub duty: Option<crate::agent::duty::Duty>,
    pub cfg: BenchConfig,
}

impl RunPlan {
    /// How long the run's pods may live: waiting for them, then every step with both agents'
    /// start and stop at their longest, and the cleanup. Past it they stop by themselves
    /// (`activeDeadlineSeconds`), should the run have died without deleting them.
    pub fn pod_deadline(&self) -> Duration {
        let agent_calls = 2 * super::agents::ATTACH;
        let steps = [
            self.cfg.ping_timeout(),
            self.cfg.iperf3_timeout(),
            self.cfg.ab_timeout(),
        ];
        let per_path: Duration = steps.iter().map(|s| *s + agent_calls).sum();
        self.ready_timeout + doctor::CHECKS_LIMIT + 2 * per_path + super::cleanup::GONE_WAIT
    }
}

/// What cleanup needs to know, shared with the run (which may be dropped half-way).
#[derive(Debug, Clone)]
pub struct RunState {
    pub run_id: String,
    pub attached: Attached,
    /// Set before the first create request: from then on there may be pods to delete.
    pub creating: Arc<AtomicBool>,
}

impl RunState {
    pub fn new(run_id: String) -> Self {
        Self {
            run_id,
            attached: Attached::default(),
            creating: Arc::default(),
        }
    }

    pub fn may_have_created(&self) -> bool {
        self.creating.load(Ordering::SeqCst)
    }
}

/// Everything a run (or `k8s doctor`) settles before it creates pods.
pub struct Prepared {
    pub nodes: ChosenNodes,
    /// The agents of both nodes (`None` with `--no-profile`).
    pub agents: Option<Vec<NodeAgent>>,
    pub images: Images,
}

/// Runs the study once and writes its results; see the module doc.
pub async fn run(
    cluster: &Cluster,
    plan: &RunPlan,
    state: &RunState,
) -> Result<ModeResult, K8sError> {
    plan.cfg.validate()?;
    prepare_out_dir(&plan.out_dir)?;
    let started_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let started = Instant::now();
    let pods = cluster.bench_pods();
    let agent_pods = cluster.agent_pods();

    let prepared = doctor::before_pods(cluster, plan, &state.run_id).await?;
    let (bench_pods, ready) = create_and_wait(cluster, plan, state, &prepared).await?;
    doctor::with_pods(cluster, &prepared, &bench_pods, &ready).await?;

    let endpoints = Endpoints::new(&bench_pods, &ready);
    let mut profiler = match prepared.agents.clone() {
        Some(agents) => Some(ClusterProfiler::new(
            &agent_pods,
            agents,
            endpoints.targets(),
            &plan.out_dir,
            plan.mode,
            state.attached.clone(),
            plan.duty,
        )?),
        None => None,
    };
    let mut ctx = PathContext {
        pods: &pods,
        cfg: &plan.cfg,
        profiler: profiler.as_mut(),
    };
    let host_path = run_path(&mut ctx, NetPath::Host, &endpoints).await?;
    let pod_path = run_path(&mut ctx, NetPath::Pod, &endpoints).await?;
    let (profiles, not_measured) = profiler.map(ClusterProfiler::finish).unwrap_or_default();

    let nodes = &prepared.nodes;
    let result = ModeResult {
        schema: SCHEMA.to_owned(),
        mode: plan.mode,
        environment: environment(nodes),
        config: plan.cfg.clone(),
        started_unix_s,
        duration_s: started.elapsed().as_secs_f64(),
        host_path,
        pod_path: Some(pod_path),
        pinged_with: Vec::new(),
        clean_twin: false,
        profiles,
        cluster: Some(ClusterRecord {
            api_server: cluster.server.clone(),
            run_id: state.run_id.clone(),
            node1: nodes.client.record(),
            node2: nodes.server.record(),
            images: vec![
                prepared.images.netprof.clone(),
                prepared.images.nginx.clone(),
            ],
            not_measured,
        }),
    };
    write_results(&plan.out_dir, &result)?;
    Ok(result)
}

/// Creates the run's six pods and waits until they are ready.
pub async fn create_and_wait(
    cluster: &Cluster,
    plan: &RunPlan,
    state: &RunState,
    prepared: &Prepared,
) -> Result<(Vec<BenchPod>, BTreeMap<String, ReadyPod>), K8sError> {
    let pods = cluster.bench_pods();
    let bench_pods = pods::plan(&state.run_id);
    let settings = PodSettings {
        run_id: state.run_id.clone(),
        namespace: cluster.namespaces.bench.clone(),
        images: prepared.images.clone(),
        deadline: plan.pod_deadline(),
    };
    let step = progress::step(&format!(
        "creating {} pods labelled {RUN_LABEL}={} in {}",
        bench_pods.len(),
        state.run_id,
        cluster.namespaces.bench
    ));
    state.creating.store(true, Ordering::SeqCst);
    for bench in &bench_pods {
        let node = if bench.role.on_server_node() {
            &prepared.nodes.server
        } else {
            &prepared.nodes.client
        };
        pods.create(&PostParams::default(), &pods::spec(bench, node, &settings))
            .await
            .map_err(|e| step.failed(api(&pods, "create", "pods", &bench.name)(e)))?;
    }
    step.done("created");

    let step = progress::step(&format!(
        "waiting for the pods to be ready (at most {} s)",
        plan.ready_timeout.as_secs()
    ));
    let names: Vec<String> = bench_pods.iter().map(|p| p.name.clone()).collect();
    let ready = ready::wait_ready(
        &pods,
        &pods::run_selector(&state.run_id),
        &names,
        plan.ready_timeout,
    )
    .await
    .map_err(|e| step.failed(e))?;
    step.done("ready");
    Ok((bench_pods, ready))
}

fn prepare_out_dir(out_dir: &Path) -> Result<(), K8sError> {
    RunDir::new(out_dir)
        .prepare()
        .map_err(|source| K8sError::Write {
            path: out_dir.to_path_buf(),
            source,
        })
}

/// Pods in the benchmark namespace that are not this run's but would share the chosen nodes:
/// a killed run's (refused with the `k8s clean --run` to type), and hostNetwork servers of
/// deploy/manual/bench-pods.yaml, which hold the host ports the twins need.
pub async fn refuse_others(
    pods: &Api<Pod>,
    nodes: &ChosenNodes,
    run_id: &str,
) -> Result<(), K8sError> {
    let namespace = pods.namespace().unwrap_or_default().to_owned();
    let chosen = [nodes.client.name.as_str(), nodes.server.name.as_str()];
    let on_node = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .map(str::to_owned)
    };
    let listed = pods
        .list(&ListParams::default().labels(RUN_LABEL))
        .await
        .map_err(api(pods, "list", "pods", ""))?;
    let mut runs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pod in &listed.items {
        let run = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(RUN_LABEL))
            .cloned()
            .unwrap_or_default();
        let node = on_node(pod).unwrap_or_default();
        if run != run_id && chosen.contains(&node.as_str()) {
            let phase = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_else(|| "Pending".into());
            let gone = if pod.metadata.deletion_timestamp.is_some() {
                ", terminating"
            } else {
                ""
            };
            runs.entry(run).or_default().push(format!(
                "{} {phase}{gone} on {node}",
                pod.metadata.name.as_deref().unwrap_or_default()
            ));
        }
    }
    if !runs.is_empty() {
        return Err(K8sError::LeftoverRun {
            runs: runs
                .iter()
                .map(|(run, pods)| {
                    format!("run {run} left {} pods ({})", pods.len(), pods.join(", "))
                })
                .collect::<Vec<_>>()
                .join("; "),
            commands: runs
                .keys()
                .map(|run| format!("`netprof k8s clean --run {run}`"))
                .collect::<Vec<_>>()
                .join(" and "),
        });
    }
    let selector = format!("{NAME_LABEL}={BENCH_APP},{PATH_LABEL}=host,!{RUN_LABEL}");
    let listed = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(api(pods, "list", "pods", ""))?;
    let in_the_way: Vec<String> = listed
        .items
        .iter()
        .filter(|p| on_node(p).as_deref() == Some(nodes.server.name.as_str()))
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    if in_the_way.is_empty() {
        Ok(())
    } else {
        Err(K8sError::HostPortsTaken {
            node: nodes.server.name.clone(),
            namespace,
            pods: in_the_way.join(", "),
            names: in_the_way.join(" "),
        })
    }
}

/// The pods and addresses of both paths.
pub struct Endpoints {
    pods: BTreeMap<(Role, NetPath), (BenchPod, Ipv4Addr)>,
    /// Every address of the pods with their own network, by node.
    pod_ips: BTreeMap<String, Vec<IpAddr>>,
}

impl Endpoints {
    pub fn new(bench_pods: &[BenchPod], ready: &BTreeMap<String, ReadyPod>) -> Self {
        let pods = bench_pods
            .iter()
            .map(|p| ((p.role, p.path), (p.clone(), ready[&p.name].ip)))
            .collect();
        let mut pod_ips: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for pod in bench_pods.iter().filter(|p| p.path == NetPath::Pod) {
            let ready = &ready[&pod.name];
            let ips = pod_ips.entry(ready.node.clone()).or_default();
            for ip in &ready.ips {
                if !ips.contains(ip) {
                    ips.push(*ip);
                }
            }
        }
        Self { pods, pod_ips }
    }

    /// What the agents follow: each step's flows, and the pods each agent's node has.
    fn targets(&self) -> Targets {
        let mut flows = BTreeMap::new();
        for path in NetPath::ALL {
            for tool in Tool::ALL {
                flows.insert((path, tool), self.step_flows(path, tool));
            }
        }
        Targets {
            flows,
            pod_ips: self.pod_ips.clone(),
        }
    }

    /// The flows of `tool`'s step on `path`. A pod's source is its own address; a host
    /// network pod's source is whichever address its node picks, so any peer is followed.
    fn step_flows(&self, path: NetPath, tool: Tool) -> Vec<FlowSpec> {
        let (_, client) = self.get(Role::Client, path);
        let (_, iperf3) = self.get(Role::Iperf3, path);
        let (_, nginx) = self.get(Role::Nginx, path);
        let source = (path == NetPath::Pod).then_some(*client);
        vec![match tool {
            Tool::Ping => FlowSpec::icmp(source, *iperf3),
            Tool::Iperf3 => FlowSpec::tcp(source, *iperf3, crate::bench::profile::IPERF3_PORT),
            Tool::Ab => FlowSpec::tcp(source, *nginx, 80),
        }]
    }

    /// The pods of each node (their own network only), for the agents to find.
    pub fn pod_ips(&self) -> &BTreeMap<String, Vec<IpAddr>> {
        &self.pod_ips
    }

    pub fn get(&self, role: Role, path: NetPath) -> &(BenchPod, Ipv4Addr) {
        &self.pods[&(role, path)]
    }
}

struct PathContext<'a, 'p> {
    pods: &'a Api<Pod>,
    cfg: &'a BenchConfig,
    profiler: Option<&'a mut ClusterProfiler<'p>>,
}

impl PathContext<'_, '_> {
    async fn before(&mut self, path: NetPath, tool: Tool, limit: Duration) {
        if let Some(p) = self.profiler.as_mut() {
            p.before_step(path, tool, limit).await;
        }
    }

    async fn after(&mut self, path: NetPath, tool: Tool) {
        if let Some(p) = self.profiler.as_mut() {
            p.after_step(path, tool).await;
        }
    }
}

/// ping and iperf3 to the iperf3 server, ab to nginx, from the path's client pod.
async fn run_path(
    ctx: &mut PathContext<'_, '_>,
    path: NetPath,
    endpoints: &Endpoints,
) -> Result<PathResult, K8sError> {
    let cfg = ctx.cfg;
    let label = path.label();
    let (client, _) = endpoints.get(Role::Client, path);
    let (iperf3_pod, server_ip) = endpoints.get(Role::Iperf3, path);
    let (_, nginx_ip) = endpoints.get(Role::Nginx, path);
    let http_target = SocketAddrV4::new(*nginx_ip, 80);

    let step = progress::step(&format!(
        "{label}: ping {} x {} ms {client} -> {server_ip}",
        cfg.ping_count,
        cfg.ping_interval_s * 1e3
    ));
    ctx.before(path, Tool::Ping, cfg.ping_timeout()).await;
    let ping = tools::ping(ctx.pods, client, *server_ip, cfg)
        .await
        .map_err(|e| step.failed(e))?;
    ctx.after(path, Tool::Ping).await;
    let loss = ping.loss_ratio() * 100.0;
    let summary = ping.stats.map_or("no replies".to_owned(), |s| {
        format!("avg {:.3} ms, p99 {:.3} ms", s.avg_ms, s.p99_ms)
    });
    step.done(&format!("{summary}, {loss:.1}% loss"));

    let step = progress::step(&format!(
        "{label}: iperf3 {} s -> {server_ip}:{IPERF3_PORT}",
        cfg.iperf3_seconds
    ));
    ctx.before(path, Tool::Iperf3, cfg.iperf3_timeout()).await;
    let iperf3 = tools::iperf3(ctx.pods, client, *server_ip, cfg)
        .await
        .map_err(|e| step.failed(e))?;
    ctx.after(path, Tool::Iperf3).await;
    let retrans = iperf3
        .retransmits
        .map_or(String::new(), |r| format!(", {r} retransmits"));
    step.done(&format!("{:.2} Gbit/s{retrans}", iperf3.receiver_bps / 1e9));

    let step = progress::step(&format!(
        "{label}: ab {} requests x {} concurrent -> {http_target}",
        cfg.ab_requests, cfg.ab_concurrency
    ));
    ctx.before(path, Tool::Ab, cfg.ab_timeout()).await;
    let ab = tools::ab(ctx.pods, client, http_target, cfg)
        .await
        .map_err(|e| step.failed(e))?;
    ctx.after(path, Tool::Ab).await;
    step.done(&format!(
        "{:.0} req/s, mean {:.3} ms, {} failed",
        ab.requests_per_second, ab.mean_time_per_request_ms, ab.failed_requests
    ));

    // The lab's namespace fields name the pods here.
    let endpoints = PathEndpoints {
        client_netns: client.name.clone(),
        server_netns: iperf3_pod.name.clone(),
        server_ip: *server_ip,
        http_client_netns: client.name.clone(),
        http_target,
    };
    // The CPU time of a request is spread over two machines here: not measured.
    Ok(PathResult {
        endpoints,
        ping,
        iperf3,
        ab,
        ab_cpu_ns_per_request: None,
        ping_agents_off: None,
        ab_agents_off: None,
    })
}

/// What the nodes report; the lab's iptables facts are not read on a cluster.
fn environment(nodes: &ChosenNodes) -> Environment {
    let (a, b) = (&nodes.client.kernel, &nodes.server.kernel);
    let kernel = if a == b {
        a.clone()
    } else {
        format!("{} {a}, {} {b}", nodes.client.name, nodes.server.name)
    };
    Environment {
        kernel,
        iptables: "not read (cluster run)".to_owned(),
        // nginx and the iperf3 server run on the server node: its cores bound the QPS.
        cpus: nodes.server.cpus,
        extra_services: 0,
        iptables_rules_per_node: 0,
    }
}

fn write_results(out_dir: &Path, result: &ModeResult) -> Result<(), K8sError> {
    let write = |path: PathBuf, text: String| {
        std::fs::write(&path, text).map_err(|source| K8sError::Write { path, source })
    };
    let json = serde_json::to_string_pretty(result).expect("results serialize");
    let out = RunDir::new(out_dir);
    write(out.mode_file(result.mode), json)?;
    write(
        out.table_file(),
        table::render(std::slice::from_ref(result)),
    )
}
