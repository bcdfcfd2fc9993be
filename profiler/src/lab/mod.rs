//! The namespace lab: the study's two-node cluster built inside one kernel, one mode at a time.
//!
//! Every object lives inside the lab's own network namespaces (the root namespace is never
//! touched), so deleting the namespaces removes every link, route and iptables rule the lab made.

pub mod addressing;
pub mod kube_proxy;
mod lock;
mod mode;
pub mod names;
pub mod topology;

use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

pub use addressing::Node;
pub use lock::{LabLock, LockError, STATE_DIR};
pub use mode::{Mode, UnknownMode};
pub use names::{InvalidLabName, LabNames};

use crate::cmd::{Cmd, CmdError};
use addressing::{node_ip, pod_ip, MAX_EXTRA_SERVICES, NODE_PORT};

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(
        "the lab needs root (it creates network namespaces and iptables rules): run with sudo"
    )]
    NotRoot,
    #[error(transparent)]
    Name(#[from] InvalidLabName),
    #[error(
        "--services {0} is too many: the lab's service range holds at most {MAX_EXTRA_SERVICES}"
    )]
    TooManyServices(u32),
    #[error("building lab '{lab}' ({mode}) failed, and what was built was removed: {source}")]
    Build {
        lab: String,
        mode: Mode,
        #[source]
        source: CmdError,
    },
    #[error("lab '{lab}' ({mode}) was built but {what} does not work: {source}")]
    Check {
        lab: String,
        mode: Mode,
        what: String,
        #[source]
        source: CmdError,
    },
    #[error(transparent)]
    Cmd(#[from] CmdError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("cannot write or remove lab state {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a lab is built as, remembered in /run/netprof/labs/<lab>.json for `lab status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LabSpec {
    pub mode: Mode,
    /// Extra kube-proxy Services besides nginx (per-rule cost).
    pub services: u32,
}

/// What `bench --validate` removes from a lab to check the attribution against reality.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ablation {
    /// `iptables -t raw -I PREROUTING/OUTPUT -j CT --notrack` on both nodes: no packet is
    /// tracked, so conntrack and NAT do (almost) nothing. The NodePort cannot work then
    /// (DNAT needs conntrack), so HTTP goes straight to the pod.
    #[serde(default)]
    pub notrack: bool,
    /// An empty raw table on both nodes (PREROUTING and OUTPUT, policy ACCEPT, no rules): the
    /// validation's base, so that `notrack` differs from it only by its rule. A raw table's
    /// hook passes cost about what conntrack saves, so without it in the base the NOTRACK
    /// run measured the table it adds as much as the tracking it removes.
    #[serde(default)]
    pub empty_raw: bool,
    /// No kube-proxy rules at all (no iptables tables, so no conntrack hooks either); HTTP goes
    /// straight to the pod.
    #[serde(default)]
    pub no_kube_proxy: bool,
}

/// A built lab, with the addresses the benchmarks use.
#[derive(Debug, Clone)]
pub struct Lab {
    pub names: LabNames,
    pub spec: LabSpec,
    pub ablation: Ablation,
}

/// Where one benchmark path runs: client and server namespaces and the targets.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PathEndpoints {
    pub client_netns: String,
    pub server_netns: String,
    /// Address ping and iperf3 target (the server's own address).
    pub server_ip: Ipv4Addr,
    /// Namespace ab runs in (a node, as in the study: ab on one host, nginx behind the other).
    pub http_client_netns: String,
    /// Where ab sends requests: the server node directly, or nginx's NodePort.
    pub http_target: SocketAddrV4,
}

impl Lab {
    pub fn mode(&self) -> Mode {
        self.spec.mode
    }

    /// Node to node, no pods: nginx and iperf3 run in node 2's own namespace (hostNetwork).
    pub fn host_path(&self) -> PathEndpoints {
        let server_ip = node_ip(Node::Two);
        PathEndpoints {
            client_netns: self.names.node(Node::One),
            server_netns: self.names.node(Node::Two),
            server_ip,
            http_client_netns: self.names.node(Node::One),
            http_target: SocketAddrV4::new(server_ip, 80),
        }
    }

    /// Pod to pod; HTTP goes through the NodePort (DNAT + MASQUERADE), or straight to the pod
    /// in `l2`, which has no kube-proxy rules. None in `host` mode.
    pub fn pod_path(&self) -> Option<PathEndpoints> {
        let mode = self.mode();
        if !mode.has_pods() {
            return None;
        }
        let server_ip = pod_ip(mode, Node::Two);
        let http_target = if self.has_node_port() {
            SocketAddrV4::new(node_ip(Node::Two), NODE_PORT)
        } else {
            SocketAddrV4::new(server_ip, 80)
        };
        Some(PathEndpoints {
            client_netns: self.names.pod(Node::One),
            server_netns: self.names.pod(Node::Two),
            server_ip,
            http_client_netns: self.names.node(Node::One),
            http_target,
        })
    }

    /// Whether nginx is reached through kube-proxy's NodePort (DNAT + MASQUERADE).
    pub fn has_node_port(&self) -> bool {
        // The NodePort needs kube-proxy's DNAT, which needs conntrack (an empty raw table is fine).
        self.mode().has_kube_proxy() && !self.ablation.no_kube_proxy && !self.ablation.notrack
    }

    /// Every namespace of this lab.
    pub fn namespaces(&self) -> Vec<String> {
        let mut list = vec![self.names.node(Node::One), self.names.node(Node::Two)];
        if self.mode().has_pods() {
            list.extend([self.names.pod(Node::One), self.names.pod(Node::Two)]);
        }
        list
    }
}

pub fn require_root() -> Result<(), LabError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        Ok(())
    } else {
        Err(LabError::NotRoot)
    }
}

fn state_path(names: &LabNames) -> PathBuf {
    PathBuf::from(lock::STATE_DIR).join(format!("{}.json", names.lab()))
}

/// Builds the lab from scratch (first removing whatever a crashed run left) and checks that the
/// paths the benchmarks use answer. On any failure nothing is left behind.
pub fn up(names: &LabNames, spec: LabSpec) -> Result<Lab, LabError> {
    up_with(names, spec, Ablation::default())
}

/// [`up`] with parts of the datapath removed (`bench --validate`).
pub fn up_with(names: &LabNames, spec: LabSpec, ablation: Ablation) -> Result<Lab, LabError> {
    require_root()?;
    if spec.services > MAX_EXTRA_SERVICES {
        return Err(LabError::TooManyServices(spec.services));
    }
    down(names)?;
    let plan = topology::build_plan_with(names, spec.mode, spec.services, ablation);
    for cmd in &plan {
        if let Err(source) = cmd.run() {
            let _ = down(names);
            return Err(LabError::Build {
                lab: names.lab().to_owned(),
                mode: spec.mode,
                source,
            });
        }
    }
    let lab = Lab {
        names: names.clone(),
        spec,
        ablation,
    };
    if let Err(err) = check_reachability(&lab) {
        let _ = down(names);
        return Err(err);
    }
    let path = state_path(names);
    let json = serde_json::to_string_pretty(&spec).expect("LabSpec serializes");
    fs::create_dir_all(lock::STATE_DIR)
        .and_then(|_| fs::write(&path, json))
        .map_err(|source| LabError::State { path, source })?;
    Ok(lab)
}

/// One ping on each path the benchmarks use, so a broken lab fails here with a clear message
/// instead of as a benchmark that measures nothing.
fn check_reachability(lab: &Lab) -> Result<(), LabError> {
    let mut paths = vec![("the host path", lab.host_path())];
    if let Some(pod) = lab.pod_path() {
        paths.push(("the pod path", pod));
    }
    for (what, path) in paths {
        let target = path.server_ip.to_string();
        // The first packet may wait for ARP (and proxy ARP in calico): allow a few tries.
        let ping = Cmd::new("ping")
            .args(["-c", "1", "-W", "1", "-w", "5", &target])
            .in_netns(&path.client_netns);
        ping.run().map_err(|source| LabError::Check {
            lab: lab.names.lab().to_owned(),
            mode: lab.mode(),
            what: format!("{what} ({} -> {target})", path.client_netns),
            source,
        })?;
    }
    Ok(())
}

/// What `down` removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DownReport {
    pub namespaces: Vec<String>,
    pub processes_killed: usize,
}

/// Removes every namespace of the lab (and so every link, route and rule in them), after
/// stopping every process still running inside. Succeeds when there is nothing to remove.
pub fn down(names: &LabNames) -> Result<DownReport, LabError> {
    require_root()?;
    let mut report = DownReport::default();
    let namespaces: Vec<String> = list_namespaces()?
        .into_iter()
        .filter(|ns| names.owns(ns))
        .collect();
    for ns in &namespaces {
        report.processes_killed += kill_processes_in(ns)?;
    }
    for ns in &namespaces {
        Cmd::new("ip").args(["netns", "del", ns]).run()?;
    }
    let _ = fs::remove_file(state_path(names));
    // The servers' files (nginx's configuration, page and logs) live here while the lab is up.
    let work = work_dir(names);
    match fs::remove_dir_all(&work) {
        Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
            return Err(LabError::State { path: work, source })
        }
        _ => {}
    }
    report.namespaces = namespaces;
    Ok(report)
}

/// [`down`] for every lab of `labs`, each tried even when one before it failed; the first
/// failure is the result.
pub fn down_all(labs: &[LabNames]) -> Result<(), LabError> {
    let mut first = Ok(());
    for names in labs {
        let down = down(names);
        if first.is_ok() {
            first = down.map(drop);
        }
    }
    first
}

/// The directory for files a lab's servers need (`/run/netprof/labs/<lab>/`), removed by
/// [`down`].
pub fn work_dir(names: &LabNames) -> PathBuf {
    PathBuf::from(lock::STATE_DIR).join(names.lab())
}

/// All named network namespaces starting with `netprof-`.
pub fn list_namespaces() -> Result<Vec<String>, LabError> {
    let out = Cmd::new("ip").args(["netns", "list"]).run()?;
    Ok(out
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|ns| ns.starts_with(names::PREFIX))
        .map(str::to_owned)
        .collect())
}

/// SIGTERM, then SIGKILL after a grace period, to every process in `ns` (nginx, iperf3 servers).
fn kill_processes_in(ns: &str) -> Result<usize, LabError> {
    let pids = || -> Result<Vec<i32>, LabError> {
        let out = Cmd::new("ip").args(["netns", "pids", ns]).run()?;
        Ok(out.lines().filter_map(|l| l.trim().parse().ok()).collect())
    };
    let first = pids()?;
    for &pid in &first {
        // SAFETY: kill(2) with a pid from the namespace; a vanished pid only yields ESRCH.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let mut left = first.clone();
    for _ in 0..20 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        left = pids()?;
    }
    for &pid in &left {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    Ok(first.len())
}

/// A lab found on this machine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LabStatus {
    pub lab: String,
    pub spec: Option<LabSpec>,
    pub namespaces: Vec<String>,
    pub complete: bool,
}

/// Every lab with at least one namespace present, with its mode when recorded.
pub fn status() -> Result<Vec<LabStatus>, LabError> {
    let namespaces = list_namespaces()?;
    let mut labs: Vec<LabStatus> = Vec::new();
    for ns in &namespaces {
        let rest = &ns[names::PREFIX.len()..];
        let Some((lab, _)) = rest.rsplit_once('-') else {
            continue;
        };
        let Ok(names) = LabNames::new(lab) else {
            continue;
        };
        if !names.owns(ns) {
            continue;
        }
        if let Some(entry) = labs.iter_mut().find(|l| l.lab == lab) {
            entry.namespaces.push(ns.clone());
            continue;
        }
        let spec = fs::read_to_string(state_path(&names))
            .ok()
            .and_then(|text| serde_json::from_str::<LabSpec>(&text).ok());
        labs.push(LabStatus {
            lab: lab.to_owned(),
            spec,
            namespaces: vec![ns.clone()],
            complete: false,
        });
    }
    for entry in &mut labs {
        entry.namespaces.sort();
        let expected = match entry.spec {
            Some(spec) if spec.mode.has_pods() => 4,
            Some(_) => 2,
            None => usize::MAX,
        };
        entry.complete = entry.namespaces.len() == expected;
    }
    Ok(labs)
}
