//! [`Agent`]: the one owner of everything the agent puts into the kernel. It loads the aya
//! object, writes the configuration, flows and devices, attaches the checkpoint families (one
//! file each, owning its links: `tc`, `tracers`, `netfilter`, `nf_fentry`), rescans devices
//! every second, and detaches everything when dropped.
//!
//! Anything that cannot be attached is recorded as not measured and the rest goes on.

use std::{
    collections::BTreeMap,
    sync::{mpsc, Arc, Mutex, MutexGuard},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::Ebpf;
use profiler_common::datapath::{Config, CP_NONE};

use super::{
    btf::{self, KernelBtf},
    collect,
    devices::{self, Found, Registry},
    duty::{AttachedTime, Cycler, Duty},
    expedited_rcu::ExpeditedRcu,
    flows::{self, FlowSpec},
    journey_log::{JourneyLog, DRAIN_EVERY},
    report::{AgentReport, NotMeasured},
    stages::{Catalog, DeviceHook, DeviceRole},
    stats::{StatsGuard, STATS_PERIOD},
    tracefs::Tracefs,
    AgentError, AgentOptions, STALE, VXLAN_PORT,
};
use crate::{ebpf, netns::NetnsHandle};

mod admission;
mod maps;
mod netfilter;
mod nf_fentry;
mod snapshot;
mod tc;
mod tracers;
mod windows;

pub use maps::map_fd;
pub use netfilter::netfilter_tables;
use windows::{close_window, finish_detaching, open_window, with_inner};

/// The running agent. Dropping it (or [`Agent::stop`]) stops the rescan and detaches every
/// program: tc links close, tracepoint links drop, netfilter links close, maps go.
#[derive(Debug)]
pub struct Agent {
    /// Stopped first on drop (so no window opens while the rest goes).
    cycler: Option<Cycler>,
    /// Switches bpf_stats on and off (always-attached agents with a stats share under 100%).
    stats_cycler: Option<Cycler>,
    /// Stopped next.
    rescan: Option<Periodic>,
    /// Drains the journey log between snapshots.
    drainer: Option<Periodic>,
    inner: Arc<Mutex<Inner>>,
    /// Locked after `inner` where both are.
    journeys: Arc<Mutex<JourneyLog>>,
    node: String,
    netns: String,
    kernel: String,
    attach_ms: f64,
}

/// A thread that does one thing every so often until told to stop.
#[derive(Debug)]
struct Periodic {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Periodic {
    /// Runs `work` every `every` until stopped or until `work` returns `false`.
    fn spawn(name: &str, every: Duration, mut work: impl FnMut() -> bool + Send + 'static) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || loop {
                match stopped.recv_timeout(every) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                if !work() {
                    return;
                }
            })
            .expect("spawning a thread");
        Self { stop, thread }
    }

    fn stop(self, what: &str) {
        let _ = self.stop.send(());
        if self.thread.join().is_err() {
            log::error!("the agent's {what} thread panicked");
        }
    }
}

/// Where the agent works: the node's namespace, its uplink and the watched pods.
#[derive(Debug)]
struct NodePlace {
    handle: NetnsHandle,
    netns: String,
    uplink: String,
    pod_netns: Vec<String>,
}

/// bpf_stats while attached.
#[derive(Debug, Default)]
struct Statistics {
    /// On while this lives. With a duty cycle only during the windows: the links of a closing
    /// or opening window stay in for ~100 ms while the programs are paused, and statistics
    /// would double what each of those paused runs costs and water down the per-run figures.
    guard: Option<StatsGuard>,
    /// Asked for and came on (so each window or slice turns them on again).
    wanted: bool,
    /// Kept on between slices (a counting pass: see `Agent::full_stats`).
    full: bool,
    /// On in slices of every second, switched by the slices' thread: a window opening leaves
    /// them to it (unless `full`).
    sliced: bool,
    /// Time on while attached (program runs and run time cover only this).
    time: AttachedTime,
}

/// Duty-cycle windows (see `windows`).
#[derive(Debug, Default)]
struct Windows {
    duty: Option<Duty>,
    /// Between windows: links dropped, programs and maps kept.
    paused: bool,
    /// The threads closing the last window's tc and tracepoint links (each waits for RCU).
    detaching: Vec<JoinHandle<()>>,
    /// Expedited RCU for window edges, when asked for and available.
    expedite: Option<ExpeditedRcu>,
    /// Window edges that ran with expedited RCU, and all edges.
    expedited_edges: u64,
    edges: u64,
    attached: AttachedTime,
}

/// Everything in the kernel, in drop order: the families' links, then the programs, the object
/// and its maps.
#[derive(Debug)]
struct Inner {
    tc: tc::TcFamily,
    dev: tracers::DevFamily,
    tracers: tracers::TracerFamily,
    nf: netfilter::NetfilterFamily,
    fentry: nf_fentry::FentryFamily,
    ebpf: Ebpf,
    /// The admission program arrays, closed after everything that tail-calls through them.
    tc_admission: Option<admission::CloseAfterCallers<aya::maps::Map>>,
    nf_admission: Option<admission::CloseAfterCallers<crate::ebpf::netfilter::ProgramArray>>,
    stats: Statistics,
    node: NodePlace,
    registry: Registry,
    catalog: Catalog,
    /// The configuration written to `NP_CONFIG` (its `epoch` changes per window and step).
    config: Config,
    flows: Vec<FlowSpec>,
    sample: u32,
    windows: Windows,
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

    /// A new epoch: journeys in flight are forgotten by every checkpoint from now on.
    fn new_epoch(&mut self) -> Result<(), AgentError> {
        self.config.epoch = self.config.epoch.wrapping_add(1);
        let config = self.config;
        maps::write_config(&mut self.ebpf, &config)
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

/// `log2(sample)` for `Config::sample_shift`.
fn sample_shift(sample: u32) -> Result<u16, AgentError> {
    if sample == 0 || !sample.is_power_of_two() || sample > 1 << 15 {
        return Err(AgentError::Sample(sample));
    }
    Ok(sample.trailing_zeros() as u16)
}

fn check_stats_share(share: u32) -> Result<(), AgentError> {
    if (1..=100).contains(&share) {
        Ok(())
    } else {
        Err(AgentError::StatsShare(share))
    }
}

/// What the kernel's BTF and tracefs tell the programs.
struct KernelConfig {
    config: Config,
    /// Drop reason names by number (empty without tracefs).
    drop_reasons: BTreeMap<u32, String>,
    /// tracefs, or why it cannot be read.
    tracefs: Result<Tracefs, String>,
}

/// The configuration from the kernel's BTF and tracefs; what tracefs could not give is noted.
fn kernel_config(
    options: &AgentOptions,
    node_inum: u32,
    not_measured: &mut Vec<NotMeasured>,
) -> Result<KernelConfig, AgentError> {
    let mut config = Config {
        node_netns_inum: node_inum,
        // Until a LOCAL_OUT netfilter point admits (see `netfilter::attach_family`).
        uplink_egress_admits: 1,
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
    let tracefs = tracefs.map_err(|err| chain(&err));
    if let Err(reason) = &tracefs {
        // Only the retransmit counter has no tp_btf twin; drop reasons lose their names.
        for (_, program, group, event) in tracers::TRACEPOINTS.iter().filter(|t| t.0.is_none()) {
            not_measured.push(NotMeasured {
                what: format!("{group}:{event} ({program})"),
                reason: reason.clone(),
            });
        }
    }
    Ok(KernelConfig {
        config,
        drop_reasons,
        tracefs,
    })
}

impl Agent {
    /// Loads and attaches everything for `options`. Blocks (it enters the node namespace on
    /// this thread for the attach, and runs `ip`); on tokio call it from `spawn_blocking`.
    pub fn start(options: &AgentOptions) -> Result<Self, AgentError> {
        // Bad options first, before anything touches the kernel or the namespaces.
        flows::check_count(&options.flows)?;
        sample_shift(options.sample)?;
        check_stats_share(options.stats_share)?;
        if !options.hooks.tracepoints && (options.hooks.tc || options.hooks.netfilter) {
            return Err(AgentError::NoJourneyEnd);
        }
        ebpf::preflight()?;
        let started = Instant::now();
        let handle = NetnsHandle::open(&options.netns)?;
        let node_inum = devices::netns_inum(&options.netns)?;
        for pod in &options.pod_netns {
            devices::netns_inum(pod)?;
        }
        let links = devices::list_links(&options.netns)?;
        let uplink = devices::find_uplink(&options.netns, options.uplink.as_deref(), &links)?;

        let mut not_measured = Vec::new();
        let KernelConfig {
            config,
            drop_reasons,
            tracefs,
        } = kernel_config(options, node_inum, &mut not_measured)?;
        let mut ebpf = ebpf::load_object(&config).map_err(|source| AgentError::Load {
            source: Box::new(source),
        })?;
        let journeys = Arc::new(Mutex::new(JourneyLog::take(&mut ebpf)?));

        let mut inner = Inner {
            tc: Default::default(),
            dev: Default::default(),
            tracers: Default::default(),
            nf: Default::default(),
            fentry: Default::default(),
            ebpf,
            tc_admission: None,
            nf_admission: None,
            stats: Statistics::default(),
            node: NodePlace {
                handle,
                netns: options.netns.clone(),
                uplink,
                pod_netns: options.pod_netns.clone(),
            },
            registry: Registry::default(),
            catalog: Catalog::new(),
            config,
            flows: Vec::new(),
            sample: options.sample,
            windows: Windows {
                duty: options.duty,
                expedite: options
                    .duty
                    .filter(|_| options.expedite_rcu)
                    .and_then(|_| ExpeditedRcu::probe()),
                ..Windows::default()
            },
            not_measured,
            drop_reasons,
            since: Instant::now(),
        };
        inner.config.flow_flags = maps::write_flows(&mut inner.ebpf, &options.flows)?;
        inner.flows = options.flows.clone();
        maps::write_config(&mut inner.ebpf, &inner.config)?;

        let hooks = options.hooks;
        if hooks.tc {
            tc::load(&mut inner);
        }
        rescan(&mut inner)?;
        if hooks.dev {
            tracers::attach_dev(&mut inner);
        }
        if hooks.tracepoints {
            tracers::attach(&mut inner, tracefs.as_ref().err().cloned());
            tracers::attach_delivery(&mut inner);
        }
        if hooks.backlog {
            tracers::attach_backlog(&mut inner);
        }
        if hooks.netfilter {
            netfilter::attach_family(&mut inner, hooks.nf_fentry, hooks.gauge);
        }
        if options.stats {
            match StatsGuard::enable() {
                Ok(guard) => {
                    inner.stats.guard = Some(guard);
                    inner.stats.wanted = true;
                    inner.stats.time.start();
                }
                Err(reason) => inner.not_measured("bpf_stats (program run time)", reason),
            }
        }
        let attach_ms = started.elapsed().as_secs_f64() * 1e3;
        inner.since = Instant::now();
        inner.windows.attached.start();
        log::info!(
            "agent attached in {attach_ms:.1} ms on {} ({} devices, {} netfilter links, {} flows)",
            options.netns,
            inner.registry.devices().len(),
            inner.nf.links.len(),
            inner.flows.len()
        );

        // Only statistics of our own fd can be switched off and on; the sysctl fallback is
        // shared with other holders and stays as it is.
        let stats_by_fd = matches!(inner.stats.guard, Some(StatsGuard::Fd(_)));
        // Statistics in slices when attached throughout (duty windows already limit them).
        inner.stats.sliced = options.duty.is_none() && options.stats_share < 100 && stats_by_fd;
        let sliced = inner.stats.sliced;
        let inner = Arc::new(Mutex::new(inner));
        let rescan = options
            .rescan
            .map(|every| spawn_rescanner(Arc::clone(&inner), every));
        let drainer = {
            let journeys = Arc::clone(&journeys);
            Periodic::spawn("netprof-journeys", DRAIN_EVERY, move || {
                let Ok(mut log) = journeys.lock() else {
                    return false;
                };
                log.drain();
                true
            })
        };
        let stats_cycler = if sliced {
            let slices = Duty {
                on: STATS_PERIOD * options.stats_share / 100,
                period: STATS_PERIOD,
            };
            Some(spawn_cycler(&inner, slices, stats_off, stats_on)?)
        } else {
            None
        };
        let cycler = match options.duty {
            Some(duty) => Some(spawn_cycler(&inner, duty, close_window, open_window)?),
            None => None,
        };
        Ok(Self {
            cycler,
            stats_cycler,
            rescan,
            drainer: Some(drainer),
            inner,
            journeys,
            node: options
                .node
                .clone()
                .unwrap_or_else(|| options.netns.clone()),
            netns: options.netns.clone(),
            kernel: crate::kernel_release(),
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
        let mut journeys = self.journeys.lock().map_err(|_| AgentError::Poisoned)?;
        snapshot::report(
            &inner,
            journeys.tally(),
            &self.node,
            &self.netns,
            &self.kernel,
            self.attach_ms,
        )
    }

    /// Keeps bpf_stats on throughout (`true`) or back in slices (`false`) from now on, for an
    /// always-attached agent whose statistics are sampled: per-run figures from every run, for
    /// counting passes. Not for a timed step: statistics read the clock twice per program
    /// run, time the segments would hold and the calibration (statistics off) would not take
    /// out.
    pub fn full_stats(&self, full: bool) -> Result<(), AgentError> {
        let mut inner = self.lock()?;
        if self.stats_cycler.is_none() {
            return Ok(());
        }
        inner.stats.full = full;
        if full {
            stats_on(&mut inner);
        } else {
            stats_off(&mut inner);
        }
        Ok(())
    }

    /// Holds every program (`true`: each returns right after reading its configuration, as
    /// between duty-cycle windows) or lets them run again, without detaching anything: the
    /// calibration's "programs that only return", at the same hooks and priorities.
    pub fn hold(&self, held: bool) -> Result<(), AgentError> {
        let mut inner = self.lock()?;
        inner.config.paused = u32::from(held);
        // A new epoch: journeys begun before the hold are not continued after it.
        inner.new_epoch()
    }

    /// Detaches every link (`false`) or attaches them all again (`true`), as a duty-cycle
    /// window closes and opens: in between the datapath runs with no netprof program at all,
    /// which is what netprof's in-path cost is measured against. Attaching again starts a new
    /// epoch. Refused under a duty cycle, whose thread owns the links.
    pub fn set_attached(&self, attached: bool) -> Result<(), AgentError> {
        if self.cycler.is_some() {
            return Err(AgentError::DutyCycleOwnsLinks);
        }
        let mut inner = self.lock()?;
        if attached {
            open_window(&mut inner);
        } else {
            close_window(&mut inner);
            // Unlike a duty cycle's edge, the caller measures right after this: the links'
            // closing (RCU waits on both CPUs) must be over before, not during, that.
            finish_detaching(&mut inner);
        }
        Ok(())
    }

    /// Follows `flows` from now on instead of the flows given so far (a new benchmark step);
    /// journeys in flight are forgotten.
    pub fn set_flows(&self, flows: &[FlowSpec]) -> Result<(), AgentError> {
        flows::check_count(flows)?;
        let mut inner = self.lock()?;
        inner.config.flow_flags = maps::write_flows(&mut inner.ebpf, flows)?;
        inner.flows = flows.to_vec();
        inner.new_epoch()
    }

    /// Clears segments, hits, counters and drops and forgets the journeys in flight, so the
    /// next snapshot covers only what happens from now on (one benchmark step).
    pub fn reset(&self) -> Result<(), AgentError> {
        let mut inner = self.lock()?;
        if !inner.windows.paused {
            inner.new_epoch()?;
        }
        collect::reset(&mut inner.ebpf)?;
        self.journeys
            .lock()
            .map_err(|_| AgentError::Poisoned)?
            .clear();
        inner.since = Instant::now();
        inner.windows.attached.restart();
        inner.stats.time.restart();
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
            rescan.stop("rescan");
        }
        if let Some(drainer) = self.drainer.take() {
            drainer.stop("journey log");
        }
        // `inner` drops with the last Arc (this one, now that the threads are gone): links
        // first, then programs, the object and its maps.
        log::info!("agent on {} detached", self.netns);
    }
}

/// A thread that calls `close` and `open` on the agent's state by `duty`.
fn spawn_cycler(
    inner: &Arc<Mutex<Inner>>,
    duty: Duty,
    close: fn(&mut Inner),
    open: fn(&mut Inner),
) -> Result<Cycler, AgentError> {
    let (a, b) = (Arc::clone(inner), Arc::clone(inner));
    Cycler::spawn(
        duty,
        move || with_inner(&a, close),
        move || with_inner(&b, open),
    )
    .map_err(AgentError::Thread)
}

/// The host-side ifindexes of the watched pods' `eth0` (`None`: no pods named, so every host
/// veth is watched).
fn pod_peers(found: &[Found], pods_named: bool) -> Option<Vec<u32>> {
    pods_named.then(|| {
        found
            .iter()
            .filter(|f| f.role == DeviceRole::PodEth)
            .filter_map(|f| f.link.peer_ifindex)
            .collect()
    })
}

/// Finds devices not seen before, registers them, and attaches tc to them.
fn rescan(inner: &mut Inner) -> Result<(), AgentError> {
    let mut found: Vec<Found> = Vec::new();
    for pod in inner.node.pod_netns.clone() {
        match devices::scan_pod(&pod) {
            Ok(list) => found.extend(list),
            Err(err) => inner.not_measured(format!("pod netns {pod}"), chain(&err)),
        }
    }
    let peers = pod_peers(&found, !inner.node.pod_netns.is_empty());
    found.extend(devices::scan_node(
        &inner.node.netns,
        &inner.node.uplink,
        peers.as_deref(),
    )?);
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
    if new.is_empty() {
        return Ok(());
    }
    for device in &new {
        maps::write_traced_device(&mut inner.ebpf, device)?;
        if device.found.role == DeviceRole::Uplink {
            inner.config.uplink_ingress_cp = device.id(DeviceHook::TcIngress);
            inner.config.uplink_egress_cp = device.id(DeviceHook::TcEgress);
            // A veth uplink (the lab) receives through the backlog: paths from the other node
            // start there.
            inner.config.uplink_backlog_cp = if device.found.link.receives_through_backlog() {
                device.id(DeviceHook::Backlog)
            } else {
                CP_NONE
            };
            inner.config.uplink_ifindex = device.found.link.ifindex;
            let config = inner.config;
            maps::write_config(&mut inner.ebpf, &config)?;
        }
    }
    for device in new {
        inner.catalog.add_device(device.base, device.label());
        match maps::write_tc_device(&mut inner.ebpf, &device)? {
            Ok(()) => {
                // Between windows the next window's opening attaches it.
                if inner.tc.loaded && !inner.windows.paused {
                    tc::attach(inner, &device);
                }
            }
            Err(taken) => inner.not_measured(
                format!("{} tc", device.label().label),
                format!("its tc checkpoints cannot be told from another device's ({taken:?})"),
            ),
        }
        log::info!(
            "watching {} ({:?}) in {} as checkpoints {}..{}",
            device.found.link.ifname,
            device.found.role,
            device.found.netns,
            device.base,
            device.base + devices::IDS_PER_DEVICE as u16 - 1
        );
    }
    Ok(())
}

/// Ends a bpf_stats slice (see `stats::DEFAULT_STATS_SHARE`), unless they are kept on.
fn stats_off(inner: &mut Inner) {
    if !inner.stats.full && matches!(inner.stats.guard, Some(StatsGuard::Fd(_))) {
        inner.stats.guard = None;
        inner.stats.time.stop();
    }
}

/// Starts a bpf_stats slice.
fn stats_on(inner: &mut Inner) {
    // Detached (`set_attached(false)`): no program runs, and the next attach turns them on.
    if inner.stats.wanted && inner.stats.guard.is_none() && !inner.windows.paused {
        match StatsGuard::enable() {
            Ok(guard) => {
                inner.stats.guard = Some(guard);
                inner.stats.time.start();
            }
            Err(reason) => log::warn!("bpf_stats stay off for this slice: {reason}"),
        }
    }
}

fn spawn_rescanner(inner: Arc<Mutex<Inner>>, every: Duration) -> Periodic {
    Periodic::spawn("netprof-rescan", every, move || {
        let Ok(mut inner) = inner.lock() else {
            return false;
        };
        if let Err(err) = rescan(&mut inner) {
            log::warn!("device rescan in {}: {}", inner.node.netns, chain(&err));
        }
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_can_move_to_another_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<Agent>();
    }

    #[test]
    fn error_chains_read_as_one_line() {
        let err = crate::cmd::CmdError::NotInstalled {
            program: "x".into(),
        };
        assert!(chain(&err).contains("cargo xtask setup"));
    }

    #[test]
    fn sampling_rates_are_powers_of_two() {
        assert_eq!(sample_shift(1).unwrap(), 0);
        assert_eq!(sample_shift(16).unwrap(), 4);
        for bad in [0, 3, 24, 1 << 16] {
            assert!(sample_shift(bad).is_err(), "{bad}");
        }
    }
}
