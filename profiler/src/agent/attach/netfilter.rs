//! The netfilter checkpoints: `BPF_PROG_TYPE_NETFILTER` links around the node namespace's
//! iptables tables (netprof's own loader: aya cannot load these), or where the kernel has no
//! such links, the fentry/fexit fallback (`nf_fentry`).

use std::collections::{BTreeSet, HashMap as StdHashMap};

use profiler_common::datapath::{
    nf_checkpoint, NfNextPoint, ALL_MAPS, CP_NF_GAUGE, CP_NONE, MAP_NF_ADMIT, NF_GAUGE_AFTER,
    NF_GAUGE_HOOK, NF_GAUGE_PRIORITY, NF_HOOK_COUNT, NF_HOOK_LOCAL_OUT, NF_POINT_COUNT,
    NF_POINT_PRIORITIES, PROG_NF_ADMIT, PROG_NF_OUT_ENTRY, PROG_NF_POINT,
};

use super::{admission::CloseAfterCallers, chain, maps, nf_fentry, Inner};
use crate::{
    agent::{nf_points, stages::NF_HOOK_NAMES},
    cmd::Cmd,
    ebpf::netfilter::{
        Hook, NetfilterLink, NetfilterLoader, NetfilterProgram, ProgramArray, NF_OBJECT,
    },
};

/// The netfilter links' state.
#[derive(Debug, Default)]
pub(super) struct NetfilterFamily {
    pub links: Vec<NetfilterLink>,
    /// The `(hook, point)`s to link, each with its program: `entry` at the first point on
    /// LOCAL_OUT, `point` at every other.
    pub points: Vec<(u32, u32)>,
    /// `PROG_NF_POINT`, linked at every point but the first on LOCAL_OUT.
    pub point: Option<NetfilterProgram>,
    /// `PROG_NF_OUT_ENTRY`, at the first point on LOCAL_OUT, with the point it is linked at.
    pub entry: Option<((u32, u32), NetfilterProgram)>,
    /// Admission, tail-called by `entry` (its program array is `Inner::nf_admission`).
    pub admit: Option<NetfilterProgram>,
    /// The `(hook, point)`s watched (by links or by the fentry fallback).
    pub attached: BTreeSet<(u32, u32)>,
    /// Whether to link the gauge (`CP_NF_GAUGE`, the `point` program one priority after the
    /// point it follows): asked for, `point` loaded, and FORWARD has that point.
    pub gauge: bool,
    /// Whether the gauge is watched (its link made once; windows reopen it).
    pub gauge_attached: bool,
}

impl NetfilterFamily {
    /// `Config::nf_next_point` for the points `linked` (and the gauge, when `gauge`), when a
    /// linked program names its point from it; `None` with neither netfilter program loaded.
    fn next_point_table(&self, linked: &BTreeSet<(u32, u32)>, gauge: bool) -> Option<NfNextPoint> {
        (self.point.is_some() || self.entry.is_some())
            .then(|| nf_points::next_point_table(linked, gauge))
    }
}

pub(super) fn hook_of(index: u32) -> Hook {
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

/// Per hook, the priorities of the hook functions the node namespace has registered (`None`:
/// unknown, e.g. native nftables tables, so every point counts).
pub(super) type NetfilterLayout = Option<[Vec<i32>; NF_HOOK_COUNT as usize]>;

/// The layout of the node's tables; `None` outside when it has no tables at all (recorded as
/// not measured).
fn layout(inner: &mut Inner) -> Option<NetfilterLayout> {
    match netfilter_tables(&inner.node.netns) {
        Some(tables) if tables.is_empty() => {
            let reason = format!("no netfilter tables in {}", inner.node.netns);
            inner.not_measured("netfilter", reason);
            None
        }
        Some(tables) => {
            log::info!(
                "netfilter tables in {}: {}",
                inner.node.netns,
                tables.join(", ")
            );
            let hooks = nf_points::registered(&tables);
            for (hook, prios) in hooks.iter().flatten().enumerate() {
                inner.catalog.set_registered(hook as u32, prios);
            }
            Some(hooks)
        }
        None => {
            log::warn!(
                "cannot list netfilter tables in {} (iptables-save and nft failed); attaching every point",
                inner.node.netns
            );
            Some(None)
        }
    }
}

/// The netfilter checkpoints: links where the kernel has them, else (or when asked for) the
/// fentry/fexit fallback. Where no LOCAL_OUT point admits, the uplink's egress does.
pub(super) fn attach_family(inner: &mut Inner, force_fentry: bool, gauge: bool) {
    attach_points(inner, force_fentry, gauge);
    if let Some(table) = inner
        .nf
        .next_point_table(&inner.nf.attached, inner.nf.gauge_attached)
    {
        inner.config.nf_next_point = table;
    }
    inner.config.uplink_egress_admits = u16::from(inner.config.nf_admit_cp == CP_NONE);
    let config = inner.config;
    if let Err(err) = maps::write_config(&mut inner.ebpf, &config) {
        inner.not_measured("locally sent packets", chain(&err));
    }
}

fn attach_points(inner: &mut Inner, force_fentry: bool, gauge: bool) {
    let Some(layout) = layout(inner) else { return };
    if force_fentry {
        nf_fentry::attach(inner, &layout, "asked for (--hooks nf-fentry)");
    } else {
        attach_links(inner, &layout, gauge);
        if inner.nf.attached.is_empty() {
            nf_fentry::attach(inner, &layout, "no netfilter link attached");
        }
    }
    inner.config.nf_admit_cp = admitting_checkpoint(&inner.nf.attached, inner.nf.admitter());
}

/// Which netfilter point may admit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admitter {
    /// With links only the entry program admits, at its point (`None`: it did not load or
    /// link; `nf_point` cannot tell a hook's first point from a later one for a packet that
    /// is not followed, so then no point admits).
    EntryProgram(Option<(u32, u32)>),
    /// The fentry fallback admits at its first LOCAL_OUT point.
    FirstLocalOut,
}

impl NetfilterFamily {
    /// Which point may admit, from what was linked.
    fn admitter(&self) -> Admitter {
        if self.point.is_some() || self.entry.is_some() {
            Admitter::EntryProgram(self.entry.as_ref().map(|(at, _)| *at))
        } else {
            Admitter::FirstLocalOut
        }
    }

    /// The program linked at `(hook, point)`.
    fn program_at(&self, at: (u32, u32)) -> Option<&NetfilterProgram> {
        match &self.entry {
            Some((entry_at, entry)) if *entry_at == at => Some(entry),
            _ => self.point.as_ref(),
        }
    }

    /// The loaded netfilter programs (bpf_stats), with their names.
    pub(super) fn program_ids(&self) -> impl Iterator<Item = (u32, &str)> {
        let entry = self.entry.as_ref().map(|(_, p)| p);
        [self.point.as_ref(), entry]
            .into_iter()
            .flatten()
            .map(|p| (p.id(), p.name()))
    }
}

/// The netfilter checkpoint that admits (`Config::nf_admit_cp`), or none: the entry
/// program's point if it is watched, or the first point the fentry fallback watches on
/// LOCAL_OUT.
fn admitting_checkpoint(watched: &BTreeSet<(u32, u32)>, admitter: Admitter) -> u16 {
    let at = match admitter {
        Admitter::EntryProgram(entry) => entry.filter(|at| watched.contains(at)),
        Admitter::FirstLocalOut => watched
            .iter()
            .find(|(hook, _)| *hook == NF_HOOK_LOCAL_OUT)
            .copied(),
    };
    at.map_or(CP_NONE, |(hook, point)| nf_checkpoint(hook, point))
}

fn attach_links(inner: &mut Inner, layout: &NetfilterLayout, gauge: bool) {
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
        match inner.ebpf.map(name).and_then(maps::map_fd) {
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
    let mut failures = Vec::new();
    let (admission, admission_failure) =
        match load_admission(&NetfilterLoader::new(NF_OBJECT).reuse_maps(maps.clone())) {
            Ok(admission) => (Some(admission), None),
            Err(reason) => (None, Some(reason)),
        };
    let mut loader = NetfilterLoader::new(NF_OBJECT).reuse_maps(maps);
    if let Some((array, _)) = &admission {
        loader = loader.reuse_map(MAP_NF_ADMIT, array.fd());
    }
    let points: Vec<(u32, u32)> = (0..NF_HOOK_COUNT)
        .flat_map(|hook| {
            points_per_hook[hook as usize]
                .iter()
                .map(move |&p| (hook, p))
        })
        .collect();
    let entry_at = points
        .iter()
        .copied()
        .find(|(hook, _)| *hook == NF_HOOK_LOCAL_OUT);
    let mut load = |name: &str, what: String| match loader.load(name) {
        Ok(program) => Some(program),
        Err(err) => {
            failures.push((what, chain(&err)));
            None
        }
    };
    let point = points
        .iter()
        .any(|&at| Some(at) != entry_at)
        .then(|| load(PROG_NF_POINT, format!("nf points ({PROG_NF_POINT})")))
        .flatten();
    let entry = entry_at.and_then(|(hook, p)| {
        let what = format!(
            "nf {} point {p} ({PROG_NF_OUT_ENTRY})",
            NF_HOOK_NAMES[hook as usize]
        );
        load(PROG_NF_OUT_ENTRY, what).map(|program| ((hook, p), program))
    });
    let loaded = point.is_some() || entry.is_some();
    // Only where the kernel took the points: without netfilter links there is no gauge
    // either, and the fentry fallback (whose runs are not netfilter runs) has none.
    // (Without the points' program the gauge has none either; its failure is listed.)
    if gauge && point.is_some() {
        if points_per_hook[NF_GAUGE_HOOK as usize].contains(&NF_GAUGE_AFTER) {
            inner.nf.gauge = true;
        } else {
            let priority = NF_POINT_PRIORITIES[NF_GAUGE_AFTER as usize];
            failures.push((
                "netfilter gauge".to_owned(),
                format!("FORWARD has no point at {priority} to follow (no table there)"),
            ));
        }
    }
    drop(loader);
    // A kernel without netfilter programs refuses every point alike, and the points say so;
    // admission failing on its own is worth a line of its own.
    if let (Some(reason), true) = (admission_failure, loaded) {
        failures.push((format!("netfilter admission ({PROG_NF_ADMIT})"), reason));
    }
    if let Some((array, admit)) = admission {
        let callers = entry.iter().map(|(_, p)| p.id()).collect();
        inner.nf_admission = Some(CloseAfterCallers::new(array, callers));
        inner.nf.admit = Some(admit);
    }
    // A point whose program did not load is not linked (its failure is listed above).
    inner.nf.points = points
        .into_iter()
        .filter(|&at| match &entry {
            Some((entry_at, _)) if *entry_at == at => true,
            _ => point.is_some(),
        })
        .collect();
    inner.nf.point = point;
    inner.nf.entry = entry;
    let Linked {
        links,
        failures: attach_failures,
        ..
    } = link_all(inner);
    failures.extend(attach_failures);
    for (what, reason) in failures {
        inner.not_measured(what, reason);
    }
    inner.nf.links.extend(links);
}

/// The admission program in a program array of its own, for the checkpoints to tail-call.
fn load_admission(loader: &NetfilterLoader) -> Result<(ProgramArray, NetfilterProgram), String> {
    let admit = loader.load(PROG_NF_ADMIT).map_err(|e| chain(&e))?;
    let array = ProgramArray::create(MAP_NF_ADMIT, 1).map_err(|e| chain(&e))?;
    array.set(0, &admit).map_err(|e| chain(&e))?;
    Ok((array, admit))
}

/// What one round of linking made.
#[derive(Default)]
struct Linked {
    links: Vec<NetfilterLink>,
    /// The `(hook, point)`s linked in this round, and whether the gauge was.
    points: BTreeSet<(u32, u32)>,
    gauge: bool,
    failures: Vec<(String, String)>,
}

/// Links every loaded program that is meant to be watched (all of them at start; the attached
/// ones when a duty-cycle window opens), in the node's namespace.
fn link_all(inner: &mut Inner) -> Linked {
    let mut linked = Linked::default();
    let Linked {
        links,
        points,
        gauge: gauge_linked,
        failures,
    } = &mut linked;
    let guard = match inner.node.handle.enter_if_elsewhere() {
        Ok(guard) => guard,
        Err(err) => {
            failures.push(("netfilter".to_owned(), chain(&err)));
            return linked;
        }
    };
    let reopening = !inner.nf.attached.is_empty();
    for &(hook, point) in &inner.nf.points {
        if reopening && !inner.nf.attached.contains(&(hook, point)) {
            continue;
        }
        let Some(program) = inner.nf.program_at((hook, point)) else {
            continue;
        };
        let priority = NF_POINT_PRIORITIES[point as usize];
        match program.attach(hook_of(hook), priority) {
            Ok(link) => {
                links.push(link);
                points.insert((hook, point));
                inner.nf.attached.insert((hook, point));
            }
            Err(err) => failures.push((
                format!(
                    "nf {} {priority} (checkpoint {})",
                    NF_HOOK_NAMES[hook as usize],
                    nf_checkpoint(hook, point)
                ),
                chain(&err),
            )),
        }
    }
    let follows = inner.nf.attached.contains(&(NF_GAUGE_HOOK, NF_GAUGE_AFTER));
    let gauge = inner
        .nf
        .point
        .as_ref()
        .filter(|_| inner.nf.gauge && follows);
    if let Some(gauge) = gauge {
        if !reopening || inner.nf.gauge_attached {
            match gauge.attach(hook_of(NF_GAUGE_HOOK), NF_GAUGE_PRIORITY) {
                Ok(link) => {
                    links.push(link);
                    *gauge_linked = true;
                    inner.nf.gauge_attached = true;
                }
                Err(err) => failures.push((
                    format!(
                        "nf {} {NF_GAUGE_PRIORITY} gauge (checkpoint {CP_NF_GAUGE})",
                        NF_HOOK_NAMES[NF_GAUGE_HOOK as usize]
                    ),
                    chain(&err),
                )),
            }
        }
    }
    drop(guard);
    linked
}

/// Links the watched points again (a duty-cycle window opening). A point that fails to link
/// this time is left out of the next-point table until a window links it again: `nf_point`
/// names its point by the next one linked on its hook, and a gap there would put every later
/// point's time under the wrong checkpoint.
pub(super) fn reattach(inner: &mut Inner) {
    if inner.nf.points.is_empty() || inner.nf.attached.is_empty() {
        return;
    }
    let linked = link_all(inner);
    for (what, reason) in &linked.failures {
        log::warn!("duty cycle: {what}: {reason}");
    }
    if let Some(table) = inner.nf.next_point_table(&linked.points, linked.gauge) {
        // Written with the window's new epoch, before the programs run again.
        inner.config.nf_next_point = table;
    }
    inner.nf.links.extend(linked.links);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_local_out_point_admits() {
        let watched: BTreeSet<(u32, u32)> = [(0, 1), (0, 2), (3, 2), (3, 1), (4, 5)]
            .into_iter()
            .collect();
        let out = |point| (NF_HOOK_LOCAL_OUT, point);
        // Links: the entry program is at the first LOCAL_OUT point.
        assert_eq!(
            admitting_checkpoint(&watched, Admitter::EntryProgram(Some(out(1)))),
            nf_checkpoint(NF_HOOK_LOCAL_OUT, 1)
        );
        // Its link failed, or it did not load: the other points' program cannot admit, so
        // none does (the uplink's egress admits instead).
        let without_first: BTreeSet<_> = watched.iter().copied().filter(|&w| w != out(1)).collect();
        assert_eq!(
            admitting_checkpoint(&without_first, Admitter::EntryProgram(Some(out(1)))),
            CP_NONE
        );
        assert_eq!(
            admitting_checkpoint(&watched, Admitter::EntryProgram(None)),
            CP_NONE
        );
        // The fentry fallback: its first LOCAL_OUT point admits.
        assert_eq!(
            admitting_checkpoint(&watched, Admitter::FirstLocalOut),
            nf_checkpoint(NF_HOOK_LOCAL_OUT, 1)
        );
        assert_eq!(
            admitting_checkpoint(
                &[(0, 1), (4, 5)].into_iter().collect(),
                Admitter::FirstLocalOut
            ),
            CP_NONE
        );
        assert_eq!(
            admitting_checkpoint(&BTreeSet::new(), Admitter::FirstLocalOut),
            CP_NONE
        );
    }

    #[test]
    fn hooks_map_to_the_kernel_numbering() {
        for index in 0..NF_HOOK_COUNT {
            assert_eq!(hook_of(index) as u32, index);
        }
    }
}
