//! `netprof k8s run`: the study on a cluster. Choose the nodes, check the agents, create the
//! pods, wait for them, run ping, iperf3 and ab on the host path (hostNetwork client to the
//! hostNetwork servers, node IP to node IP) and the pod path (client pod to server pod IPs)
//! with the agents started and stopped around each step, and write `<out>/<mode>.json` and
//! `table.txt` as `netprof bench` does.
//!
//! [`run`] never deletes anything: the caller runs [`cleanup`](super::cleanup) after it, whether
//! it finished, failed or was dropped on Ctrl-C, using the run's label and [`RunState`].

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};

use super::agents::{self, NodeAgent};
use super::client::Cluster;
use super::error::api;
use super::nodes::{self, ChosenNodes};
use super::pods::{self, BenchPod, Images, NetPath, Role};
use super::profile::{Attached, ClusterProfiler};
use super::rbac::NAMESPACE;
use super::ready::{self, ReadyPod};
use super::{progress, tools, K8sError, BENCH_APP, NAME_LABEL, PATH_LABEL, RUN_LABEL};
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
    pub images: Images,
    pub ready_timeout: Duration,
    pub profile: bool,
    /// Duty-cycle the agents (`--duty`); `None`: attached throughout each step.
    pub duty: Option<crate::agent::duty::Duty>,
    pub cfg: BenchConfig,
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
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), NAMESPACE);

    let step = progress::step(&format!(
        "choosing the nodes ({})",
        plan.nodes
            .as_deref()
            .map_or("labels workern=1/2".to_owned(), |n| format!("--nodes {n}"))
    ));
    let nodes = nodes::pick(&cluster.client, plan.nodes.as_deref())
        .await
        .map_err(|e| step.failed(e))?;
    step.done(&format!(
        "client {} ({}), server {} ({})",
        nodes.client.name,
        nodes.client.ip(),
        nodes.server.name,
        nodes.server.ip()
    ));

    let agents = if plan.profile {
        let step = progress::step("checking the agents on both nodes");
        let agents = check_agents(&pods, &nodes)
            .await
            .map_err(|e| step.failed(e))?;
        step.done(&format!("{} and {} ready", agents[0].pod, agents[1].pod));
        Some(agents)
    } else {
        progress::note("--no-profile: the agents stay idle");
        None
    };
    refuse_template_pods(&pods, &nodes).await?;

    let bench_pods = pods::plan(&state.run_id);
    let step = progress::step(&format!(
        "creating {} pods labelled {RUN_LABEL}={}",
        bench_pods.len(),
        state.run_id
    ));
    state.creating.store(true, Ordering::SeqCst);
    for bench in &bench_pods {
        let node = if bench.role.on_server_node() {
            &nodes.server
        } else {
            &nodes.client
        };
        let spec = pods::spec(bench, &state.run_id, node, &plan.images);
        pods.create(&PostParams::default(), &spec)
            .await
            .map_err(|e| step.failed(api("create", "pods", &bench.name)(e)))?;
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

    let endpoints = Endpoints::new(&bench_pods, &ready);
    let mut profiler = match agents {
        Some(agents) => Some(ClusterProfiler::new(
            &pods,
            agents,
            endpoints.all(&nodes),
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

    let result = ModeResult {
        schema: SCHEMA.to_owned(),
        mode: plan.mode,
        environment: environment(&nodes),
        config: plan.cfg.clone(),
        started_unix_s,
        duration_s: started.elapsed().as_secs_f64(),
        host_path,
        pod_path: Some(pod_path),
        profiles,
        cluster: Some(ClusterRecord {
            api_server: cluster.server.clone(),
            run_id: state.run_id.clone(),
            node1: nodes.client.record(),
            node2: nodes.server.record(),
            images: vec![plan.images.netprof.clone(), plan.images.nginx.clone()],
            not_measured,
        }),
    };
    write_results(&plan.out_dir, &result)?;
    Ok(result)
}

fn prepare_out_dir(out_dir: &Path) -> Result<(), K8sError> {
    RunDir::new(out_dir)
        .prepare()
        .map_err(|source| K8sError::Write {
            path: out_dir.to_path_buf(),
            source,
        })
}

/// Both agents found and answering, before anything is created: without them the run would
/// measure without profiles, which `--no-profile` asks for explicitly.
async fn check_agents(pods: &Api<Pod>, nodes: &ChosenNodes) -> Result<Vec<NodeAgent>, K8sError> {
    let agents = agents::find(pods, nodes).await?;
    let checks = agents.iter().map(|agent| agent.check(pods));
    for (agent, result) in agents.iter().zip(futures::future::join_all(checks).await) {
        result.map_err(|source| K8sError::Agent {
            node: agent.node.clone(),
            pod: agent.pod.clone(),
            source,
        })?;
    }
    Ok(agents)
}

/// deploy/bench-pods.yaml's own pods (no run label) start once the nodes are labelled; their
/// hostNetwork servers would hold ports 80 and 5201 of the server node, so the run's twins
/// could not listen.
async fn refuse_template_pods(pods: &Api<Pod>, nodes: &ChosenNodes) -> Result<(), K8sError> {
    let selector = format!("{NAME_LABEL}={BENCH_APP},{PATH_LABEL}=host,!{RUN_LABEL}");
    let listed = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(api("list", "pods", ""))?;
    let in_the_way: Vec<String> = listed
        .items
        .iter()
        .filter(|p| {
            p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(nodes.server.name.as_str())
        })
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
        Err(K8sError::TemplatePodsRunning {
            node: nodes.server.name.clone(),
            pods: in_the_way.join(" "),
        })
    }
}

/// The pods and addresses of both paths.
struct Endpoints {
    pods: BTreeMap<(Role, NetPath), (BenchPod, Ipv4Addr)>,
}

impl Endpoints {
    fn new(bench_pods: &[BenchPod], ready: &BTreeMap<String, ReadyPod>) -> Self {
        let pods = bench_pods
            .iter()
            .map(|p| ((p.role, p.path), (p.clone(), ready[&p.name].ip)))
            .collect();
        Self { pods }
    }

    fn get(&self, role: Role, path: NetPath) -> &(BenchPod, Ipv4Addr) {
        &self.pods[&(role, path)]
    }

    /// Every address the benchmarks use: both nodes and the pods (the agents follow these).
    fn all(&self, nodes: &ChosenNodes) -> Vec<Ipv4Addr> {
        let mut all = vec![nodes.client.ip(), nodes.server.ip()];
        for (_, ip) in self.pods.values() {
            if !all.contains(ip) {
                all.push(*ip);
            }
        }
        all
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
