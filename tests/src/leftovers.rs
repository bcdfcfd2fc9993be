//! Leftover checks that look where leftovers live: the kernel's program, map and link tables
//! (scoped to the ids a test's own programs had), the tc side of every device in a test's own
//! namespaces (TCX links, qdiscs, cls_bpf filters), iptables rules, and the bpf_stats switch
//! (which a leaked `BPF_ENABLE_STATS` fd keeps on without changing the sysctl).
//!
//! Every query that fails is an error: "could not look" never passes as "nothing there".

use std::{
    collections::BTreeSet,
    io::ErrorKind,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::run;

/// How long the kernel may take to free what a closed fd held. Program and map freeing and
/// TCX link release are deferred past an RCU grace period: milliseconds when idle, much longer
/// on a loaded 2-CPU machine. Checks poll and return as soon as the state is clean.
pub const RELEASE_DEADLINE: Duration = Duration::from_secs(10);

const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Calls `probe` until `done` holds for its value or `deadline` passes; returns the last value
/// either way, so the caller's exact assertions say what was wrong.
pub fn poll<T>(
    deadline: Duration,
    mut probe: impl FnMut() -> Result<T>,
    done: impl Fn(&T) -> bool,
) -> Result<T> {
    let until = Instant::now() + deadline;
    loop {
        let value = probe()?;
        if done(&value) || Instant::now() >= until {
            return Ok(value);
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Whether `err` (or one of its sources) is the kernel's ENOENT: the object went away between
/// listing its id and opening it, which is what a release looks like mid-listing.
fn is_gone(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == ErrorKind::NotFound {
                return true;
            }
        }
        if let Some(sys) = err.downcast_ref::<aya::sys::SyscallError>() {
            if sys.io_error.kind() == ErrorKind::NotFound {
                return true;
            }
        }
        current = err.source();
    }
    false
}

/// Skips entries freed while listing; every other listing error is returned.
fn present<T, E: std::error::Error + Send + Sync + 'static>(
    entries: impl Iterator<Item = std::result::Result<T, E>>,
    what: &str,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => out.push(entry),
            Err(err) if is_gone(&err) => {}
            Err(err) => return Err(err).with_context(|| format!("listing the kernel's {what}")),
        }
    }
    Ok(out)
}

/// Ids of every BPF map in the kernel, by `BPF_MAP_GET_NEXT_ID` (no map is opened).
pub fn map_ids() -> Result<Vec<u32>> {
    const BPF_MAP_GET_NEXT_ID: libc::c_long = 12;
    #[repr(C)]
    struct NextId {
        start_id: u32,
        next_id: u32,
        _pad: [u8; 120],
    }
    let mut ids = Vec::new();
    let mut attr = NextId {
        start_id: 0,
        next_id: 0,
        _pad: [0; 120],
    };
    loop {
        // SAFETY: `attr` is a valid, fully initialised `union bpf_attr` prefix for this command,
        // and its size is passed along.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_ID,
                &mut attr as *mut NextId,
                std::mem::size_of::<NextId>(),
            )
        };
        if ret < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENOENT) {
                return Ok(ids);
            }
            return Err(err).context("listing the kernel's BPF map ids");
        }
        ids.push(attr.next_id);
        attr.start_id = attr.next_id;
    }
}

/// Ids of every loaded BPF program.
pub fn loaded_program_ids() -> Result<BTreeSet<u32>> {
    Ok(present(aya::programs::loaded_programs(), "BPF programs")?
        .iter()
        .map(|p| p.id())
        .collect())
}

/// The kernel objects a test's programs own: the programs and the maps they use.
#[derive(Debug, Clone, Default)]
pub struct BpfObjects {
    pub programs: BTreeSet<u32>,
    pub maps: BTreeSet<u32>,
}

impl BpfObjects {
    /// Programs `ids` and their maps, as the kernel reports them now (call it while they are
    /// loaded). An id the kernel does not have is an error: the caller's list is wrong.
    pub fn of_programs(ids: impl IntoIterator<Item = u32>) -> Result<Self> {
        let programs: BTreeSet<u32> = ids.into_iter().collect();
        let mut maps = BTreeSet::new();
        let mut found = BTreeSet::new();
        for info in present(aya::programs::loaded_programs(), "BPF programs")? {
            if programs.contains(&info.id()) {
                found.insert(info.id());
                let ids = info
                    .map_ids()
                    .with_context(|| format!("map ids of program {}", info.id()))?
                    .context("the kernel does not report map ids (kernel < 4.15?)")?;
                maps.extend(ids);
            }
        }
        let missing: Vec<_> = programs.difference(&found).collect();
        if !missing.is_empty() {
            bail!("programs {missing:?} are not loaded: nothing to check them against");
        }
        Ok(Self { programs, maps })
    }

    /// What of these objects the kernel still has: programs, maps, and any link whose
    /// program is one of them (TCX, netfilter, tracing, ...).
    pub fn still_loaded(&self) -> Result<Vec<String>> {
        let mut left = Vec::new();
        for info in present(aya::programs::loaded_programs(), "BPF programs")? {
            if self.programs.contains(&info.id()) {
                left.push(format!(
                    "program {} ({})",
                    info.id(),
                    info.name_as_str().unwrap_or("?")
                ));
            }
        }
        for link in present(aya::programs::loaded_links(), "BPF links")? {
            if self.programs.contains(&link.program_id()) {
                left.push(format!(
                    "link {} ({:?}) of program {}",
                    link.id(),
                    link.link_type(),
                    link.program_id()
                ));
            }
        }
        // Maps by id only: opening a map by id and closing it again, after its owner closed it,
        // makes the kernel clear a program array a second time, which leaks it (the kernel
        // takes a reference for a clearing that is already queued).
        for id in map_ids()? {
            if self.maps.contains(&id) {
                left.push(format!("map {id}"));
            }
        }
        Ok(left)
    }

    /// Waits (up to [`RELEASE_DEADLINE`]) for the kernel to free all of these; the error
    /// lists what is still there.
    pub fn wait_released(&self) -> Result<()> {
        let left = poll(RELEASE_DEADLINE, || self.still_loaded(), Vec::is_empty)?;
        if !left.is_empty() {
            bail!(
                "still in the kernel {} s after release: {}",
                RELEASE_DEADLINE.as_secs(),
                left.join(", ")
            );
        }
        Ok(())
    }
}

/// The tc side of every device in `netns`, one line per fact (TCX programs per direction,
/// qdiscs, filters on the ingress and egress hooks), so two snapshots compare with
/// `assert_eq!` and a difference names the device.
pub fn tc_state(netns: &str) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for device in devices(netns)? {
        for (direction, ids) in tcx_ids(netns, &device)? {
            lines.push(format!("{device} tcx/{direction}: {ids:?}"));
        }
        let tc = |args: &[&str]| {
            run(Command::new("ip")
                .args(["netns", "exec", netns, "tc"])
                .args(args)
                .args(["dev", &device]))
        };
        for qdisc in tc(&["qdisc", "show"])?.lines() {
            // The reference count moves with unrelated users of the qdisc.
            let kept: Vec<&str> = qdisc.split_whitespace().collect();
            let kept: Vec<&str> = match kept.iter().position(|w| *w == "refcnt") {
                Some(at) => [&kept[..at], &kept[(at + 2).min(kept.len())..]].concat(),
                None => kept,
            };
            lines.push(format!("{device} {}", kept.join(" ")));
        }
        for hook in ["ingress", "egress"] {
            for filter in tc(&["filter", "show", hook])?.lines() {
                lines.push(format!("{device} filter {hook}: {}", filter.trim()));
            }
        }
    }
    Ok(lines)
}

/// Names of the devices in `netns` (`ip -j link show`).
pub fn devices(netns: &str) -> Result<Vec<String>> {
    let json = run(Command::new("ip").args(["-n", netns, "-j", "link", "show"]))?;
    let links: serde_json::Value =
        serde_json::from_str(&json).with_context(|| format!("ip -j link show: {json}"))?;
    let names: Vec<String> = links
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect();
    if names.is_empty() {
        bail!("`ip -n {netns} link show` listed no device: {json}");
    }
    Ok(names)
}

/// Program ids on the TCX hooks of `iface` in `netns`, straight from the kernel
/// (`BPF_PROG_QUERY`), per direction. A failed query is an error.
pub fn tcx_ids(netns: &str, iface: &str) -> Result<Vec<(&'static str, Vec<u32>)>> {
    use aya::programs::{SchedClassifier, TcAttachType};
    netprof::netns::run_in(netns, || {
        let mut out = Vec::new();
        for (attach_type, direction) in [
            (TcAttachType::Ingress, "ingress"),
            (TcAttachType::Egress, "egress"),
        ] {
            let (_revision, infos) = SchedClassifier::query_tcx(iface, attach_type)
                .with_context(|| format!("BPF_PROG_QUERY tcx/{direction} on {iface} in {netns}"))?;
            out.push((direction, infos.iter().map(|i| i.id()).collect()));
        }
        Ok(out)
    })?
}

/// [`tc_state`] of each namespace, polled (up to [`RELEASE_DEADLINE`]) until it equals
/// `before`: a closed TCX link is released a moment after its fd closes. The error shows
/// both states.
pub fn wait_tc_state(netns: &[String], before: &[Vec<String>]) -> Result<()> {
    let now = poll(
        RELEASE_DEADLINE,
        || {
            netns
                .iter()
                .map(|ns| tc_state(ns))
                .collect::<Result<Vec<_>>>()
        },
        |now| now == before,
    )?;
    for ((ns, before), now) in netns.iter().zip(before).zip(&now) {
        if before != now {
            bail!("tc state of {ns} changed:\nbefore: {before:#?}\nafter: {now:#?}");
        }
    }
    Ok(())
}

/// `iptables-save` of `netns` (`None`: the root namespace) without comments and packet
/// counters, so two snapshots compare. A failed `iptables-save` is an error.
pub fn iptables_rules(netns: Option<&str>) -> Result<String> {
    let mut command = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "iptables-save"]);
            c
        }
        None => Command::new("iptables-save"),
    };
    Ok(run(&mut command)?
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(" [").next().unwrap_or(l).to_owned())
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Checks that the kernel's run-time statistics are off. The sysctl alone cannot say: a
/// `BPF_ENABLE_STATS` fd (what the agent holds) turns statistics on without changing it. So
/// a probe program (the uplink counter) is attached to `iface` in `netns`; first, with a
/// statistics fd of its own, `traffic` must make its run count grow (the probe can see
/// statistics); then, with that fd closed, its run count and run time must stay flat through
/// `traffic` again. Call it with nothing else of the test loaded.
pub fn check_bpf_stats_off(
    netns: &str,
    iface: &str,
    mut traffic: impl FnMut() -> Result<()>,
) -> Result<()> {
    use netprof::agent::stats::SYSCTL;
    let sysctl = std::fs::read_to_string(SYSCTL).with_context(|| format!("reading {SYSCTL}"))?;
    if sysctl.trim() != "0" {
        bail!("{SYSCTL} is {}: statistics were left on", sysctl.trim());
    }
    let counter = netprof::ebpf::uplink_counter::UplinkCounter::attach(Some(netns), iface)
        .with_context(|| format!("attaching the statistics probe to {iface} in {netns}"))?;
    let ids: BTreeSet<u32> = tcx_ids(netns, iface)?
        .into_iter()
        .flat_map(|(_, ids)| ids)
        .collect();
    let stats = || -> Result<(u64, Duration)> {
        let mut runs = (0, Duration::ZERO);
        for info in present(aya::programs::loaded_programs(), "BPF programs")? {
            if ids.contains(&info.id()) {
                runs.0 += info.run_count();
                runs.1 += info.run_time();
            }
        }
        Ok(runs)
    };
    let own = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("BPF_ENABLE_STATS for the probe's control run")?;
    traffic()?;
    let control = stats()?;
    drop(own);
    if control.0 == 0 {
        bail!("the probe on {iface} counted no run with statistics on: it cannot see a leak");
    }
    let before = stats()?;
    traffic()?;
    let after = stats()?;
    counter.detach().context("detaching the statistics probe")?;
    if after != before {
        bail!(
            "bpf_stats still on: the probe's runs went from {} to {} ({:?} -> {:?} run time) \
             with no statistics fd of this test open (a leaked BPF_ENABLE_STATS fd?)",
            before.0,
            after.0,
            before.1,
            after.1
        );
    }
    Ok(())
}
