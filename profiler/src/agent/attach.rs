//! [`Agent`]: the one owner of everything the agent puts into the kernel. It loads the aya
//! object, writes the configuration, devices and endpoints, attaches the checkpoint programs
//! (TCX on node devices inside the node namespace, tp_btf, tracepoints, netfilter links in the
//! node namespace), rescans devices every second, and detaches everything when dropped.
//!
//! Anything that cannot be attached is recorded as not measured and the rest goes on.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap as StdHashMap},
    net::Ipv4Addr,
    os::fd::{AsFd, BorrowedFd},
    sync::{mpsc, Arc, Mutex, MutexGuard},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, HashMap, Map, MapData},
    programs::{
        tc::{SchedClassifierLink, TcAttachOptions},
        tp_btf::BtfTracePointLink,
        trace_point::TracePointLink,
        BtfTracePoint, LinkOrder, SchedClassifier, TcAttachType, TracePoint,
    },
    Ebpf, EbpfLoader,
};
use profiler_common::datapath::{
    nf_checkpoint, Config, DeviceCheckpoints, DeviceKey, ALL_MAPS, CP_NONE, MAP_CONFIG,
    MAP_DEVICES, MAP_DEV_CACHE, MAP_ENDPOINTS, MAX_ENDPOINTS, NF_HOOK_COUNT, NF_HOOK_LOCAL_OUT,
    NF_POINT_COUNT, NF_POINT_PRIORITIES,
};

use super::{
    btf::{self, KernelBtf},
    collect,
    devices::{self, Device, Found, Registry},
    duty::{AttachedTime, Cycler, Duty},
    expedited_rcu::ExpeditedRcu,
    nf_points, nf_program,
    report::{
        AgentReport, CheckpointReport, DropReport, DutyReport, NotMeasured, ProgramStats,
        SegmentReport, SCHEMA,
    },
    stages::{Catalog, DeviceHook, Place, NF_HOOK_NAMES},
    stats::{StatsGuard, STATS_PERIOD},
    tracefs::Tracefs,
    AgentError, AgentOptions, PROG_CONSUME_SKB, PROG_CONSUME_SKB_BTF, PROG_DEV_RX, PROG_DEV_TX,
    PROG_KFREE_SKB, PROG_KFREE_SKB_BTF, PROG_TCP_RETRANSMIT, PROG_TC_EGRESS, PROG_TC_INGRESS,
    PROG_TC_POD_EGRESS, PROG_TC_POD_INGRESS, STALE, TP_DEV_RX, TP_DEV_TX, VXLAN_PORT,
};
use crate::{
    cmd::Cmd,
    ebpf::{
        self,
        netfilter::{Hook, NetfilterLink, NetfilterLoader, NetfilterProgram, NF_OBJECT},
    },
    netns::NetnsHandle,
};

mod nf_fentry;
mod windows;
use windows::{close_window, finish_detaching, open_window, with_inner};

/// The tracepoints: tp_btf program (preferred; `None`: classic only), classic program, group,
/// event. The classic ones need tracefs (field offsets).
const TRACEPOINTS: [(Option<&str>, &str, &str, &str); 3] = [
    (Some(PROG_KFREE_SKB_BTF), PROG_KFREE_SKB, "skb", "kfree_skb"),
    (
        Some(PROG_CONSUME_SKB_BTF),
        PROG_CONSUME_SKB,
        "skb",
        "consume_skb",
    ),
    (None, PROG_TCP_RETRANSMIT, "tcp", "tcp_retransmit_skb"),
];

/// A tracepoint program the agent attached, to attach again when a duty-cycle window opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TraceProgram {
    Btf {
        program: &'static str,
    },
    Classic {
        program: &'static str,
        group: &'static str,
        event: &'static str,
    },
}

/// The running agent. Dropping it (or [`Agent::stop`]) stops the rescan and detaches every
/// program: TCX links close, tracepoint links drop, netfilter links close, maps go.
#[derive(Debug)]
pub struct Agent {
    /// Stopped first on drop (so no window opens while the rest goes).
    cycler: Option<Cycler>,
    /// Switches bpf_stats on and off (always-attached agents with a stats share under 100%).
    stats_cycler: Option<Cycler>,
    /// Stopped next.
    rescan: Option<Rescanner>,
    inner: Arc<Mutex<Inner>>,
    node: String,
    netns: String,
    kernel: String,
    attach_ms: f64,
}

#[derive(Debug)]
struct Rescanner {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

/// Everything in the kernel, in drop order: links, then programs, then the object and maps.
#[derive(Debug)]
struct Inner {
    tc_links: Vec<SchedClassifierLink>,
    tp_links: Vec<BtfTracePointLink>,
    trace_links: Vec<TracePointLink>,
    /// tp_btf journey ends (kfree_skb, consume_skb).
    trace_btf_links: Vec<BtfTracePointLink>,
    nf_links: Vec<NetfilterLink>,
    nf_programs: Vec<NetfilterProgram>,
    /// The fentry/fexit netfilter fallback's links, and the functions it traces.
    fentry_links: nf_fentry::Links,
    fentry_programs: Vec<nf_fentry::Pair>,
    ebpf: Ebpf,
    /// bpf_stats stay on while this lives. With a duty cycle only during the windows: the links
    /// of a closing or opening window stay in for ~100 ms while the programs are paused, and
    /// statistics would double what each of those paused runs costs (two clock reads per run)
    /// and water down the per-run figures with runs that did nothing.
    stats: Option<StatsGuard>,
    /// bpf_stats were asked for and came on (so each window turns them on again).
    stats_wanted: bool,
    node_netns: NetnsHandle,
    netns: String,
    uplink: String,
    pod_netns: Vec<String>,
    registry: Registry,
    catalog: Catalog,
    /// Programs that loaded (tc ones are attached per device later).
    tc_loaded: bool,
    /// Checkpoint ids of the tc hooks attached.
    tc_attached: BTreeSet<u16>,
    /// The tp_btf / classic tracepoint families attached (in every window).
    tp_attached: bool,
    /// The tracepoint programs attached, and whether one of them ends journeys at `consumed`.
    trace_programs: Vec<TraceProgram>,
    consume_attached: bool,
    /// `(hook, point)` of each of `nf_programs`, and the ones that attached.
    nf_points: Vec<(u32, u32)>,
    nf_attached: BTreeSet<(u32, u32)>,
    /// The configuration written to `NP_CONFIG` (its `epoch` changes per window).
    config: Config,
    /// Between duty-cycle windows: links dropped, programs and maps kept.
    paused: bool,
    /// The threads closing the last window's tc and tracepoint links (each waits for RCU).
    detaching: Vec<JoinHandle<()>>,
    /// Expedited RCU for window edges; `None` once it could not be had (edges then take
    /// ~100 ms more, see `expedited_rcu`).
    expedite: Option<ExpeditedRcu>,
    /// Window edges that ran with expedited RCU, and all edges.
    expedited_edges: u64,
    edges: u64,
    attached: AttachedTime,
    /// Time with bpf_stats on while attached (program runs and run time cover only this).
    stats_time: AttachedTime,
    /// Statistics stay on between slices (a light step, e.g. pings: see `Agent::full_stats`).
    stats_full: bool,
    duty: Option<Duty>,
    not_measured: Vec<NotMeasured>,
    drop_reasons: BTreeMap<u32, String>,
    since: Instant,
}

impl Inner {
    fn not_measured(&mut self, what: impl Into<String>, reason: impl Into<String>) {
        let entry = NotMeasured {
            what: what.into(),
            reason: reason.into(),
        };
        log::info!("not measured: {}: {}", entry.what, entry.reason);
        if !self.not_measured.contains(&entry) {
            self.not_measured.push(entry);
        }
    }
}

/// The full cause chain of an error, on one line.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(err) = cause {
        let part = err.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = err.source();
    }
    text
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn map_write(map: &'static str, what: String) -> impl FnOnce(aya::maps::MapError) -> AgentError {
    move |source| AgentError::MapWrite {
        map,
        what,
        source: Box::new(source),
    }
}

/// The fd of an aya map, to lend it to the netfilter loader.
pub fn map_fd(map: &Map) -> Option<BorrowedFd<'_>> {
    let data: &MapData = match map {
        Map::Array(m)
        | Map::HashMap(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuHashMap(m)
        | Map::PerCpuLruHashMap(m) => m,
        _ => return None,
    };
    Some(data.fd().as_fd())
}

fn hook_of(index: u32) -> Hook {
    match index {
        0 => Hook::PreRouting,
        1 => Hook::LocalIn,
        2 => Hook::Forward,
        3 => Hook::LocalOut,
        _ => Hook::PostRouting,
    }
}

/// The iptables/nftables tables of `netns`: `Some(names)` (maybe empty), or `None` when no tool
/// could tell.
pub fn netfilter_tables(netns: &str) -> Option<Vec<String>> {
    let mut known = false;
    let mut tables = Vec::new();
    if let Ok(out) = Cmd::new("iptables-save").in_netns(netns).run() {
        known = true;
        tables.extend(
            out.lines()
                .filter_map(|l| l.strip_prefix('*'))
                .map(|t| format!("ip {}", t.trim())),
        );
    }
    if let Ok(out) = Cmd::new("nft")
        .args(["list", "tables"])
        .in_netns(netns)
        .run()
    {
        known = true;
        for line in out.lines() {
            let name = line.trim().trim_start_matches("table ").to_owned();
            // iptables-nft tables show up in both lists.
            if !name.is_empty() && !tables.contains(&name) {
                tables.push(name);
            }
        }
    }
    known.then_some(tables)
}

/// `log2(sample)` for `Config::sample_shift`.
fn sample_shift(sample: u32) -> Result<u16, AgentError> {
    if sample == 0 || !sample.is_power_of_two() || sample > 1 << 15 {
        return Err(AgentError::Sample(sample));
    }
    Ok(sample.trailing_zeros() as u16)
}

impl Agent {
    /// Loads and attaches everything for `options`. Blocks (it enters the node namespace on
    /// this thread for the attach, and runs `ip`); on tokio call it from `spawn_blocking`.
    pub fn start(options: &AgentOptions) -> Result<Self, AgentError> {
        ebpf::preflight()?;
        let started = Instant::now();
        let node_netns = NetnsHandle::open(&options.netns)?;
        if options.endpoints.len() > MAX_ENDPOINTS as usize {
            return Err(AgentError::TooManyEndpoints {
                count: options.endpoints.len(),
                max: MAX_ENDPOINTS,
            });
        }
        let node_inum = devices::netns_inum(&options.netns)?;
        for pod in &options.pod_netns {
            devices::netns_inum(pod)?;
        }
        let links = devices::list_links(&options.netns)?;
        let uplink = devices::find_uplink(&options.netns, options.uplink.as_deref(), &links)?;

        let mut not_measured = Vec::new();
        check_stats_share(options.stats_share)?;
        let mut config = Config {
            node_netns_inum: node_inum,
            vxlan_port: VXLAN_PORT,
            stale_ns: STALE.as_nanos() as u64,
            sample_shift: sample_shift(options.sample)?,
            ..Config::default()
        };
        let mut kernel_btf = KernelBtf::from_sys_fs()?;
        kernel_btf.vmlinux().fill_config(&mut config)?;
        btf::fill_fentry_config(&mut kernel_btf, &mut config);
        let mut drop_reasons = BTreeMap::new();
        let tracefs = Tracefs::system().and_then(|fs| {
            drop_reasons = fs.fill_config(&mut config)?;
            Ok(fs)
        });
        if let Err(err) = &tracefs {
            // Only the retransmit counter has no tp_btf twin; drop reasons lose their names.
            for (_, program, group, event) in TRACEPOINTS.iter().filter(|t| t.0.is_none()) {
                not_measured.push(NotMeasured {
                    what: format!("{group}:{event} ({program})"),
                    reason: chain(err),
                });
            }
        }

        let mut ebpf = EbpfLoader::new()
            .load(ebpf::OBJECT)
            .map_err(|source| AgentError::Load {
                source: Box::new(source),
            })?;
        write_config(&mut ebpf, &config, &options.endpoints)?;

        let mut inner = Inner {
            tc_links: Vec::new(),
            tp_links: Vec::new(),
            trace_links: Vec::new(),
            nf_links: Vec::new(),
            nf_programs: Vec::new(),
            ebpf,
            stats: None,
            stats_wanted: false,
            node_netns,
            netns: options.netns.clone(),
            uplink,
            pod_netns: options.pod_netns.clone(),
            registry: Registry::default(),
            catalog: Catalog::new(),
            tc_loaded: false,
            tc_attached: BTreeSet::new(),
            tp_attached: false,
            trace_programs: Vec::new(),
            consume_attached: false,
            trace_btf_links: Vec::new(),
            nf_points: Vec::new(),
            nf_attached: BTreeSet::new(),
            fentry_links: nf_fentry::Links::default(),
            fentry_programs: Vec::new(),
            config,
            paused: false,
            detaching: Vec::new(),
            expedite: options.duty.and_then(|_| ExpeditedRcu::probe()),
            expedited_edges: 0,
            edges: 0,
            attached: AttachedTime::default(),
            stats_time: AttachedTime::default(),
            stats_full: false,
            duty: options.duty,
            not_measured,
            drop_reasons,
            since: Instant::now(),
        };

        let hooks = options.hooks;
        if hooks.tc {
            load_tc(&mut inner);
        }
        rescan(&mut inner)?;
        if hooks.dev {
            attach_tp_btf(&mut inner);
        }
        if hooks.tracepoints {
            attach_tracepoints(&mut inner, tracefs.as_ref().err().map(|e| chain(e)));
        }
        if hooks.netfilter {
            attach_netfilter_family(&mut inner, hooks.nf_fentry);
        }
        if options.stats {
            match StatsGuard::enable() {
                Ok(guard) => {
                    inner.stats = Some(guard);
                    inner.stats_wanted = true;
                    inner.stats_time.start();
                }
                Err(reason) => inner.not_measured("bpf_stats (program run time)", reason),
            }
        }
        let attach_ms = started.elapsed().as_secs_f64() * 1e3;
        inner.since = Instant::now();
        inner.attached.start();
        log::info!(
            "agent attached in {attach_ms:.1} ms on {} ({} devices, {} netfilter links)",
            options.netns,
            inner.registry.devices().len(),
            inner.nf_links.len()
        );

        // Only statistics of our own fd can be switched off and on; the sysctl fallback is
        // shared with other holders and stays as it is.
        let stats_by_fd = matches!(inner.stats, Some(StatsGuard::Fd(_)));
        let inner = Arc::new(Mutex::new(inner));
        let rescan = options
            .rescan
            .map(|every| spawn_rescanner(Arc::clone(&inner), every));
        // Statistics in slices when attached throughout (duty windows already limit them).
        let stats_slices = match (options.duty, options.stats_share) {
            (None, share) if share < 100 && stats_by_fd => {
                let slices = Duty {
                    on: STATS_PERIOD * share / 100,
                    period: STATS_PERIOD,
                };
                let (a, b) = (Arc::clone(&inner), Arc::clone(&inner));
                Some(
                    Cycler::spawn(
                        slices,
                        move || with_inner(&a, stats_off),
                        move || with_inner(&b, stats_on),
                    )
                    .map_err(AgentError::Thread)?,
                )
            }
            _ => None,
        };
        let cycler = match options.duty {
            Some(duty) => {
                let (a, b) = (Arc::clone(&inner), Arc::clone(&inner));
                let cycler = Cycler::spawn(
                    duty,
                    move || with_inner(&a, close_window),
                    move || with_inner(&b, open_window),
                )
                .map_err(AgentError::Thread)?;
                Some(cycler)
            }
            None => None,
        };
        Ok(Self {
            cycler,
            stats_cycler: stats_slices,
            rescan,
            inner,
            node: options
                .node
                .clone()
                .unwrap_or_else(|| options.netns.clone()),
            netns: options.netns.clone(),
            kernel: kernel_release(),
            attach_ms,
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, AgentError> {
        self.inner.lock().map_err(|_| AgentError::Poisoned)
    }

    /// Time it took to load and attach everything, in ms.
    pub fn attach_ms(&self) -> f64 {
        self.attach_ms
    }

    /// Looks for new devices now (the rescan thread does this every second).
    pub fn rescan(&self) -> Result<(), AgentError> {
        rescan(&mut *self.lock()?)
    }

    /// Everything measured since start or the last [`reset`](Self::reset).
    pub fn snapshot(&self) -> Result<AgentReport, AgentError> {
        let inner = self.lock()?;
        let hits = collect::read_hits(&inner.ebpf)?;
        let segments = collect::read_segments(&inner.ebpf)?;
        let counters = collect::read_counters(&inner.ebpf)?;
        let drops = collect::read_drops(&inner.ebpf)?;
        let catalog = &inner.catalog;

        let mut checkpoints: Vec<CheckpointReport> = catalog
            .iter()
            .filter(|(id, place)| is_watched(&inner, *id, place) || hits.contains_key(id))
            .map(|(id, place)| {
                let mut count = hits.get(&id).copied().unwrap_or(0);
                // The kernel counts the end of a journey as `completed`, not as a hit.
                if *place == Place::Consumed && count == 0 {
                    count = counters.completed;
                }
                checkpoint_report(id, place, count)
            })
            .collect();
        // Ids the kernel counted that the catalog does not know (should not happen).
        for (id, count) in &hits {
            if catalog.get(*id).is_none() {
                checkpoints.push(CheckpointReport {
                    id: *id,
                    name: catalog.name(*id),
                    kind: "unknown".into(),
                    device: None,
                    role: None,
                    hook: None,
                    priority: None,
                    hits: *count,
                });
            }
        }
        let segments = segments
            .iter()
            .map(|((from, to), hist)| {
                let summary = collect::summarize(hist);
                SegmentReport {
                    from: *from,
                    to: *to,
                    from_name: catalog.name(*from),
                    to_name: catalog.name(*to),
                    stage: catalog.stage(*from, *to),
                    count: summary.count,
                    mean_ns: summary.mean_ns,
                    p50_ns: summary.p50_ns,
                    p90_ns: summary.p90_ns,
                    p99_ns: summary.p99_ns,
                    buckets: summary.buckets,
                }
            })
            .collect();
        let drops = drops
            .iter()
            .map(|((cp, reason), count)| DropReport {
                checkpoint: *cp,
                checkpoint_name: catalog.name(*cp),
                reason: *reason,
                reason_name: inner
                    .drop_reasons
                    .get(reason)
                    .cloned()
                    .unwrap_or_else(|| format!("reason {reason}")),
                count: *count,
            })
            .collect();
        Ok(AgentReport {
            schema: SCHEMA.to_owned(),
            node: self.node.clone(),
            netns: self.netns.clone(),
            kernel: self.kernel.clone(),
            attach_ms: self.attach_ms,
            elapsed_s: inner.since.elapsed().as_secs_f64(),
            checkpoints,
            segments,
            counters,
            drops,
            not_measured: inner.not_measured.clone(),
            programs: program_stats(&inner),
            stats_s: inner
                .stats_wanted
                .then(|| inner.stats_time.total().as_secs_f64()),
            duty: inner.duty.map(|duty| DutyReport {
                percent: duty.percent(),
                period_ms: duty.period.as_millis() as u64,
                windows: inner.attached.windows,
                attached_s: inner.attached.total().as_secs_f64(),
                expedited_edges: inner.expedited_edges,
                edges: inner.edges,
            }),
        })
    }

    /// Keeps bpf_stats on throughout (`true`) or back in slices (`false`) from now on, for an
    /// always-attached agent whose statistics are sampled. A light step such as pings 10 ms
    /// apart costs nothing measurable with statistics on, and its per-run probe cost (which
    /// the report takes off the stage times) then comes from every run instead of a slice.
    pub fn full_stats(&self, full: bool) -> Result<(), AgentError> {
        let mut inner = self.lock()?;
        if self.stats_cycler.is_none() {
            return Ok(());
        }
        inner.stats_full = full;
        if full {
            stats_on(&mut inner);
        } else {
            stats_off(&mut inner);
        }
        Ok(())
    }

    /// Clears segments, hits, counters, drops and journeys, so the next snapshot covers only what
    /// happens from now on (one benchmark step).
    pub fn reset(&self) -> Result<(), AgentError> {
        let mut inner = self.lock()?;
        collect::reset(&mut inner.ebpf)?;
        inner.since = Instant::now();
        inner.attached.restart();
        inner.stats_time.restart();
        Ok(())
    }

    /// Stops the rescan and detaches everything (same as dropping the agent).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        drop(self.stats_cycler.take());
        drop(self.cycler.take());
        if let Ok(mut inner) = self.inner.lock() {
            finish_detaching(&mut inner);
        }
        if let Some(rescan) = self.rescan.take() {
            let _ = rescan.stop.send(());
            if rescan.thread.join().is_err() {
                log::error!("the agent's rescan thread panicked");
            }
        }
        // `inner` drops with the last Arc (this one, now that the thread is gone): links
        // first, then programs, the object and its maps.
        log::info!("agent on {} detached", self.netns);
    }
}

/// Whether a catalog entry is one this agent actually watches (attached), for the report.
fn is_watched(inner: &Inner, id: u16, place: &Place) -> bool {
    match place {
        Place::Netfilter { hook, point } => inner.nf_attached.contains(&(*hook, *point)),
        Place::Consumed => inner.consume_attached,
        Place::Device { hook, .. } => {
            if !inner.registry.devices().iter().any(|d| d.id(*hook) == id) {
                return false;
            }
            match hook {
                DeviceHook::DevRx | DeviceHook::DevTx => inner.tp_attached,
                DeviceHook::TcIngress | DeviceHook::TcEgress => inner.tc_attached.contains(&id),
            }
        }
    }
}

fn checkpoint_report(id: u16, place: &Place, hits: u64) -> CheckpointReport {
    let (device, role, hook, priority) = match place {
        Place::Device { device, .. } => (
            Some(device.label.clone()),
            Some(
                serde_json::to_value(device.role)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            ),
            None,
            None,
        ),
        Place::Netfilter { hook, point } => (
            None,
            None,
            Some(NF_HOOK_NAMES[*hook as usize].to_owned()),
            Some(NF_POINT_PRIORITIES[*point as usize]),
        ),
        Place::Consumed => (None, None, None, None),
    };
    CheckpointReport {
        id,
        name: place.name(),
        kind: place.kind().to_owned(),
        device,
        role,
        hook,
        priority,
        hits,
    }
}

fn program_stats(inner: &Inner) -> Vec<ProgramStats> {
    let mut out = Vec::new();
    let stat = |name: String, id: u32, run_count: u64, run_time_ns: u64| ProgramStats {
        name,
        id,
        run_count,
        run_time_ns,
        ns_per_run: if run_count > 0 {
            run_time_ns as f64 / run_count as f64
        } else {
            0.0
        },
    };
    for (name, program) in inner.ebpf.programs() {
        if let Ok(info) = program.info() {
            out.push(stat(
                name.to_owned(),
                info.id(),
                info.run_count(),
                info.run_time().as_nanos() as u64,
            ));
        }
    }
    let nf_ids: StdHashMap<u32, &str> = inner
        .nf_programs
        .iter()
        .map(|p| (p.id(), p.name()))
        .chain(inner.fentry_programs.iter().flat_map(|p| p.program_ids()))
        .collect();
    if !nf_ids.is_empty() {
        for info in aya::programs::loaded_programs().flatten() {
            if let Some(name) = nf_ids.get(&info.id()) {
                out.push(stat(
                    (*name).to_owned(),
                    info.id(),
                    info.run_count(),
                    info.run_time().as_nanos() as u64,
                ));
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn write_config(
    ebpf: &mut Ebpf,
    config: &Config,
    endpoints: &[Ipv4Addr],
) -> Result<(), AgentError> {
    let missing =
        |map: &'static str| AgentError::Collect(collect::CollectError::MapMissing { map });
    let mut array: Array<&mut MapData, Config> = Array::try_from(
        ebpf.map_mut(MAP_CONFIG)
            .ok_or_else(|| missing(MAP_CONFIG))?,
    )
    .map_err(map_write(MAP_CONFIG, "the configuration".into()))?;
    array
        .set(0, config, 0)
        .map_err(map_write(MAP_CONFIG, "the configuration".into()))?;
    let mut set: HashMap<&mut MapData, u32, u32> = HashMap::try_from(
        ebpf.map_mut(MAP_ENDPOINTS)
            .ok_or_else(|| missing(MAP_ENDPOINTS))?,
    )
    .map_err(map_write(MAP_ENDPOINTS, "the endpoints".into()))?;
    for ip in endpoints {
        // Network byte order, as the programs read it from the IP header.
        let key = u32::from_ne_bytes(ip.octets());
        set.insert(key, 1, 0)
            .map_err(map_write(MAP_ENDPOINTS, format!("endpoint {ip}")))?;
    }
    Ok(())
}

/// Rewrites `NP_CONFIG` alone (a new epoch).
fn write_config_only(ebpf: &mut Ebpf, config: &Config) -> Result<(), AgentError> {
    let map =
        ebpf.map_mut(MAP_CONFIG)
            .ok_or(AgentError::Collect(collect::CollectError::MapMissing {
                map: MAP_CONFIG,
            }))?;
    let mut array: Array<&mut MapData, Config> =
        Array::try_from(map).map_err(map_write(MAP_CONFIG, "the configuration".into()))?;
    array
        .set(0, config, 0)
        .map_err(map_write(MAP_CONFIG, "the configuration".into()))
}

fn insert_device(ebpf: &mut Ebpf, device: &Device) -> Result<(), AgentError> {
    let mut map: HashMap<&mut MapData, DeviceKey, DeviceCheckpoints> =
        HashMap::try_from(ebpf.map_mut(MAP_DEVICES).ok_or(AgentError::Collect(
            collect::CollectError::MapMissing { map: MAP_DEVICES },
        ))?)
        .map_err(map_write(MAP_DEVICES, "a device".into()))?;
    map.insert(device.key(), device.checkpoints(), 0)
        .map_err(map_write(
            MAP_DEVICES,
            format!(
                "device {} of {}",
                device.found.link.ifname, device.found.netns
            ),
        ))
}

/// Forgets every cached `net_device` -> checkpoints entry, so devices watched from now on are
/// seen by the tp_btf programs (which cached them as unwatched until now).
fn clear_device_cache(ebpf: &mut Ebpf) -> Result<(), AgentError> {
    let mut map: HashMap<&mut MapData, u64, DeviceCheckpoints> =
        HashMap::try_from(ebpf.map_mut(MAP_DEV_CACHE).ok_or(AgentError::Collect(
            collect::CollectError::MapMissing { map: MAP_DEV_CACHE },
        ))?)
        .map_err(map_write(MAP_DEV_CACHE, "the device cache".into()))?;
    let keys: Vec<u64> = map.keys().filter_map(Result::ok).collect();
    for key in keys {
        // Gone already (evicted by the kernel) is as good as removed.
        let _ = map.remove(&key);
    }
    Ok(())
}

fn load_tc(inner: &mut Inner) {
    let mut ok = true;
    for program in [
        PROG_TC_INGRESS,
        PROG_TC_EGRESS,
        PROG_TC_POD_INGRESS,
        PROG_TC_POD_EGRESS,
    ] {
        let result = match inner
            .ebpf
            .program_mut(program)
            .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
        {
            Some(p) => p.load().map_err(|e| chain(&e)),
            None => {
                Err("the program is missing from netprof's eBPF object: rebuild netprof".into())
            }
        };
        if let Err(reason) = result {
            inner.not_measured(format!("tc checkpoints ({program})"), reason);
            ok = false;
        }
    }
    inner.tc_loaded = ok;
}

/// Finds devices not seen before, registers them, and attaches tc to the node's ones.
fn rescan(inner: &mut Inner) -> Result<(), AgentError> {
    let mut found: Vec<Found> = devices::scan_node(&inner.netns, &inner.uplink)?;
    for pod in inner.pod_netns.clone() {
        match devices::scan_pod(&pod) {
            Ok(list) => found.extend(list),
            Err(err) => inner.not_measured(format!("pod netns {pod}"), chain(&err)),
        }
    }
    let mut new = Vec::new();
    for f in found {
        match inner.registry.add(f) {
            Ok(Some(device)) => new.push(device.clone()),
            Ok(None) => {}
            Err(full) => {
                let what = format!("{}:{}", full.netns, full.device);
                inner.not_measured(what, full.to_string());
            }
        }
    }
    if !new.is_empty() {
        for device in &new {
            insert_device(&mut inner.ebpf, device)?;
        }
        clear_device_cache(&mut inner.ebpf)?;
    }
    for device in new {
        inner.catalog.add_device(device.base, device.label());
        // Between windows the next window's opening attaches it.
        if inner.tc_loaded && !inner.paused {
            attach_tc(inner, &device);
        }
        log::info!(
            "watching {} ({:?}) in {} as checkpoints {}..{}",
            device.found.link.ifname,
            device.found.role,
            device.found.netns,
            device.base,
            device.base + 3
        );
    }
    Ok(())
}

/// How long reopening a duty-cycle window waits for the last window's TCX links to go.
const REATTACH_WAIT: Duration = Duration::from_secs(1);

/// Whether a program error is the kernel's EEXIST (that program is on that hook already).
fn is_eexist(err: &aya::programs::ProgramError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io.raw_os_error() == Some(libc::EEXIST);
        }
        source = e.source();
    }
    false
}

/// TCX on both directions of `device`, inside the device's namespace (the node's, or a pod's
/// for its `eth0`).
fn attach_tc(inner: &mut Inner, device: &Device) {
    let label = device.label().label;
    let ifname = device.found.link.ifname.clone();
    let pod_netns = if device.found.on_node {
        None
    } else {
        match NetnsHandle::open(&device.found.netns) {
            Ok(handle) => Some(handle),
            Err(err) => {
                inner.not_measured(format!("{label} tc"), chain(&err));
                return;
            }
        }
    };
    let entered = match &pod_netns {
        Some(pod) => pod.enter_if_elsewhere(),
        None => inner.node_netns.enter_if_elsewhere(),
    };
    let guard = match entered {
        Ok(guard) => guard,
        Err(err) => {
            inner.not_measured(format!("{label} tc"), chain(&err));
            return;
        }
    };
    let (ingress, egress) = if device.found.on_node {
        (PROG_TC_INGRESS, PROG_TC_EGRESS)
    } else {
        (PROG_TC_POD_INGRESS, PROG_TC_POD_EGRESS)
    };
    for (program, attach_type, hook) in [
        (ingress, TcAttachType::Ingress, DeviceHook::TcIngress),
        (egress, TcAttachType::Egress, DeviceHook::TcEgress),
    ] {
        let Some(classifier) = inner
            .ebpf
            .program_mut(program)
            .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
        else {
            continue;
        };
        // After existing TCX programs: the kernel programs return TC_ACT_PIPE-like
        // "next", so whatever runs before decides what they see.
        let mut result = classifier
            .attach_with_options(
                &ifname,
                attach_type,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .and_then(|id| classifier.take_link(id));
        // Reopening a duty-cycle window: the last window's link on this hook can still be
        // going (its release finishes in the kernel after the close returns, under load), and
        // the kernel refuses the same program twice on a hook (EEXIST) until it is gone.
        let deadline = Instant::now() + REATTACH_WAIT;
        while inner.paused && Instant::now() < deadline && result.as_ref().is_err_and(is_eexist) {
            std::thread::sleep(Duration::from_millis(5));
            result = classifier
                .attach_with_options(
                    &ifname,
                    attach_type,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .and_then(|id| classifier.take_link(id));
        }
        match result {
            Ok(link) => {
                inner.tc_links.push(link);
                inner.tc_attached.insert(device.id(hook));
            }
            Err(err) => {
                let what = format!("{label} {}", hook.name());
                inner.not_measured(what, format!("TCX attach failed: {}", chain(&err)));
            }
        }
    }
    drop(guard);
}

fn attach_tp_btf(inner: &mut Inner) {
    let btf = match aya::Btf::from_sys_fs() {
        Ok(btf) => btf,
        Err(err) => {
            inner.not_measured("dev-rx/dev-tx checkpoints", chain(&err));
            return;
        }
    };
    for (program, tracepoint) in [(PROG_DEV_RX, TP_DEV_RX), (PROG_DEV_TX, TP_DEV_TX)] {
        let result = match inner
            .ebpf
            .program_mut(program)
            .and_then(|p| <&mut BtfTracePoint>::try_from(p).ok())
        {
            Some(p) => p
                .load(tracepoint, &btf)
                .and_then(|()| p.attach())
                .and_then(|id| p.take_link(id))
                .map_err(|e| chain(&e)),
            None => {
                Err("the program is missing from netprof's eBPF object: rebuild netprof".into())
            }
        };
        match result {
            Ok(link) => {
                inner.tp_links.push(link);
                inner.tp_attached = true;
            }
            Err(reason) => inner.not_measured(format!("tp_btf {tracepoint} ({program})"), reason),
        }
    }
}

/// Journey ends (kfree_skb, consume_skb) as tp_btf, else as classic tracepoints; the
/// retransmit counter as a classic tracepoint. `tracefs_error`: why the classic ones cannot be
/// used, if they cannot.
fn attach_tracepoints(inner: &mut Inner, tracefs_error: Option<String>) {
    let btf = aya::Btf::from_sys_fs().map_err(|e| chain(&e));
    for (btf_program, program, group, event) in TRACEPOINTS {
        let mut reasons = Vec::new();
        if let Some(btf_program) = btf_program {
            let loaded = match &btf {
                Ok(btf) => match inner
                    .ebpf
                    .program_mut(btf_program)
                    .and_then(|p| <&mut BtfTracePoint>::try_from(p).ok())
                {
                    Some(p) => p.load(event, btf).map_err(|e| chain(&e)),
                    None => Err(
                        "the program is missing from netprof's eBPF object: rebuild netprof".into(),
                    ),
                },
                Err(reason) => Err(reason.clone()),
            };
            let attached = loaded.and_then(|()| {
                attach_trace(
                    inner,
                    TraceProgram::Btf {
                        program: btf_program,
                    },
                )
            });
            match attached {
                Ok(()) => continue,
                Err(reason) => reasons.push(format!("tp_btf: {reason}")),
            }
        }
        let classic = TraceProgram::Classic {
            program,
            group,
            event,
        };
        let result = match &tracefs_error {
            Some(reason) => Err(reason.clone()),
            None => match inner
                .ebpf
                .program_mut(program)
                .and_then(|p| <&mut TracePoint>::try_from(p).ok())
            {
                Some(p) => p.load().map_err(|e| chain(&e)),
                None => {
                    Err("the program is missing from netprof's eBPF object: rebuild netprof".into())
                }
            }
            .and_then(|()| attach_trace(inner, classic)),
        };
        if let Err(reason) = result {
            reasons.push(format!("tracepoint: {reason}"));
            inner.not_measured(format!("{group}:{event} ({program})"), reasons.join("; "));
        }
    }
}

/// Attaches a loaded tracepoint program and remembers it (for the next duty-cycle window).
fn attach_trace(inner: &mut Inner, which: TraceProgram) -> Result<(), String> {
    match which {
        TraceProgram::Btf { program } => {
            let p = inner
                .ebpf
                .program_mut(program)
                .and_then(|p| <&mut BtfTracePoint>::try_from(p).ok())
                .ok_or("the program is missing from netprof's eBPF object: rebuild netprof")?;
            let link = p
                .attach()
                .and_then(|id| p.take_link(id))
                .map_err(|e| chain(&e))?;
            inner.trace_btf_links.push(link);
        }
        TraceProgram::Classic {
            program,
            group,
            event,
        } => {
            let p = inner
                .ebpf
                .program_mut(program)
                .and_then(|p| <&mut TracePoint>::try_from(p).ok())
                .ok_or("the program is missing from netprof's eBPF object: rebuild netprof")?;
            let link = p
                .attach(group, event)
                .and_then(|id| p.take_link(id))
                .map_err(|e| chain(&e))?;
            inner.trace_links.push(link);
        }
    }
    if !inner.trace_programs.contains(&which) {
        inner.trace_programs.push(which);
    }
    if matches!(
        which,
        TraceProgram::Btf {
            program: PROG_CONSUME_SKB_BTF
        } | TraceProgram::Classic {
            program: PROG_CONSUME_SKB,
            ..
        }
    ) {
        inner.consume_attached = true;
    }
    Ok(())
}

/// Per hook, the priorities of the hook functions the node namespace has registered (`None`:
/// unknown, e.g. native nftables tables, so every point counts); `None` outside when it has
/// no tables at all (recorded as not measured).
type NetfilterLayout = Option<[Vec<i32>; NF_HOOK_COUNT as usize]>;

fn netfilter_layout(inner: &mut Inner) -> Option<NetfilterLayout> {
    match netfilter_tables(&inner.netns) {
        Some(tables) if tables.is_empty() => {
            let reason = format!("no netfilter tables in {}", inner.netns);
            inner.not_measured("netfilter", reason);
            None
        }
        Some(tables) => {
            log::info!("netfilter tables in {}: {}", inner.netns, tables.join(", "));
            let hooks = nf_points::registered(&tables);
            for (hook, prios) in hooks.iter().flatten().enumerate() {
                inner.catalog.set_registered(hook as u32, prios);
            }
            Some(hooks)
        }
        None => {
            log::warn!(
                "cannot list netfilter tables in {} (iptables-save and nft failed); attaching every point",
                inner.netns
            );
            Some(None)
        }
    }
}

/// The netfilter checkpoints: links where the kernel has them, else (or when asked for) the
/// fentry/fexit fallback (`nf_fentry`).
fn attach_netfilter_family(inner: &mut Inner, force_fentry: bool) {
    let Some(layout) = netfilter_layout(inner) else {
        return;
    };
    if force_fentry {
        nf_fentry::attach(inner, &layout, "asked for (--hooks nf-fentry)");
    } else {
        attach_netfilter(inner, &layout);
        if inner.nf_attached.is_empty() {
            nf_fentry::attach(inner, &layout, "no netfilter link attached");
        }
    }
    inner.config.nf_admit_cp = nf_admit_checkpoint(&inner.nf_attached);
    let config = inner.config;
    if let Err(err) = write_config_only(&mut inner.ebpf, &config) {
        inner.not_measured("netfilter (locally sent packets)", chain(&err));
    }
}

/// The netfilter checkpoint that admits (`Config::nf_admit_cp`): the first point watched on
/// LOCAL_OUT, or none.
fn nf_admit_checkpoint(watched: &BTreeSet<(u32, u32)>) -> u16 {
    watched
        .iter()
        .find(|(hook, _)| *hook == NF_HOOK_LOCAL_OUT)
        .map_or(CP_NONE, |&(hook, point)| nf_checkpoint(hook, point))
}

fn attach_netfilter(inner: &mut Inner, layout: &NetfilterLayout) {
    // Per hook, the points worth a program (see `nf_points`); all of them when the tables
    // cannot be listed or are not iptables' own.
    let points_per_hook: Vec<Vec<u32>> = match layout {
        Some(hooks) => hooks.iter().map(|prios| nf_points::points(prios)).collect(),
        None => (0..NF_HOOK_COUNT)
            .map(|_| (0..NF_POINT_COUNT).collect())
            .collect(),
    };
    let mut maps = StdHashMap::new();
    for name in ALL_MAPS {
        match inner.ebpf.map(name).and_then(map_fd) {
            Some(fd) => {
                maps.insert(name.to_owned(), fd);
            }
            None => {
                let reason = format!("map {name} is missing from the aya object: rebuild netprof");
                inner.not_measured("netfilter", reason);
                return;
            }
        }
    }
    let loader = NetfilterLoader::new(NF_OBJECT).reuse_maps(maps);
    let mut programs = Vec::new();
    let mut failures = Vec::new();
    for hook in 0..NF_HOOK_COUNT {
        for &point in &points_per_hook[hook as usize] {
            let name = nf_program(hook, point);
            match loader.load(name) {
                Ok(program) => programs.push((hook, point, program)),
                Err(err) => failures.push((
                    format!("nf {} point {point} ({name})", NF_HOOK_NAMES[hook as usize]),
                    chain(&err),
                )),
            }
        }
    }
    drop(loader);
    let guard = match inner.node_netns.enter_if_elsewhere() {
        Ok(guard) => guard,
        Err(err) => {
            inner.not_measured("netfilter", chain(&err));
            return;
        }
    };
    let mut links = Vec::new();
    for (hook, point, program) in &programs {
        let priority = NF_POINT_PRIORITIES[*point as usize];
        match program.attach(hook_of(*hook), priority) {
            Ok(link) => {
                links.push(link);
                inner.nf_attached.insert((*hook, *point));
            }
            Err(err) => failures.push((
                format!(
                    "nf {} {priority} (checkpoint {})",
                    NF_HOOK_NAMES[*hook as usize],
                    nf_checkpoint(*hook, *point)
                ),
                chain(&err),
            )),
        }
    }
    drop(guard);
    for (what, reason) in failures {
        inner.not_measured(what, reason);
    }
    inner.nf_links.extend(links);
    for (hook, point, program) in programs {
        inner.nf_points.push((hook, point));
        inner.nf_programs.push(program);
    }
}

fn check_stats_share(share: u32) -> Result<(), AgentError> {
    if (1..=100).contains(&share) {
        Ok(())
    } else {
        Err(AgentError::StatsShare(share))
    }
}

/// Ends a bpf_stats slice (see `stats::DEFAULT_STATS_SHARE`), unless they are kept on.
fn stats_off(inner: &mut Inner) {
    if !inner.stats_full && matches!(inner.stats, Some(StatsGuard::Fd(_))) {
        inner.stats = None;
        inner.stats_time.stop();
    }
}

/// Starts a bpf_stats slice.
fn stats_on(inner: &mut Inner) {
    if inner.stats_wanted && inner.stats.is_none() {
        match StatsGuard::enable() {
            Ok(guard) => {
                inner.stats = Some(guard);
                inner.stats_time.start();
            }
            Err(reason) => log::warn!("bpf_stats stay off for this slice: {reason}"),
        }
    }
}

fn spawn_rescanner(inner: Arc<Mutex<Inner>>, every: Duration) -> Rescanner {
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("netprof-rescan".into())
        .spawn(move || loop {
            match stopped.recv_timeout(every) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            let Ok(mut inner) = inner.lock() else { return };
            if let Err(err) = rescan(&mut inner) {
                log::warn!("device rescan in {}: {}", inner.netns, chain(&err));
            }
        })
        .expect("spawning a thread");
    Rescanner { stop, thread }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_local_out_point_admits() {
        let watched: BTreeSet<(u32, u32)> = [(0, 1), (0, 2), (3, 2), (3, 1), (4, 5)]
            .into_iter()
            .collect();
        assert_eq!(
            nf_admit_checkpoint(&watched),
            nf_checkpoint(NF_HOOK_LOCAL_OUT, 1)
        );
        assert_eq!(
            nf_admit_checkpoint(&[(0, 1), (4, 5)].into_iter().collect()),
            CP_NONE
        );
        assert_eq!(nf_admit_checkpoint(&BTreeSet::new()), CP_NONE);
    }

    #[test]
    fn agent_can_move_to_another_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<Agent>();
    }

    #[test]
    fn hooks_map_to_the_kernel_numbering() {
        for index in 0..NF_HOOK_COUNT {
            assert_eq!(hook_of(index) as u32, index);
        }
    }

    #[test]
    fn error_chains_read_as_one_line() {
        let err = crate::cmd::CmdError::NotInstalled {
            program: "x".into(),
        };
        assert!(chain(&err).contains("cargo xtask setup"));
    }
}
