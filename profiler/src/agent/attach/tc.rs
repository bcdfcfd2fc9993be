//! The tc checkpoints: classifiers on both directions of every watched device, in the device's
//! namespace (the node's, or a pod's for its `eth0`). The uplink's ingress gets the program
//! that admits packets from the other node; a pod's `eth0` gets the pod programs (the egress
//! one admits the pod's packets); every other device the plain node programs.
//!
//! TCX links where the kernel has them (6.6+), otherwise direct-action filters on the device's
//! clsact qdisc ([`ClsactFilters`]); the first device whose TCX attach the kernel refuses as
//! unsupported switches the family to clsact for the rest of the run.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use aya::{
    maps::{Map, ProgramArray},
    programs::{
        tc::{SchedClassifierLink, TcAttachOptions},
        LinkOrder, SchedClassifier, TcAttachType,
    },
};
use profiler_common::datapath::{MAP_TC_ADMIT, PROG_TC_ADMIT};

use super::{admission::CloseAfterCallers, chain, Inner};
use crate::{
    agent::{
        devices::Device,
        report::Via,
        stages::{DeviceHook, DeviceRole},
        PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_TC_POD_EGRESS, PROG_TC_POD_INGRESS,
        PROG_TC_UPLINK_EGRESS, PROG_TC_UPLINK_INGRESS,
    },
    ebpf::clsact::{self, ClsactFilters},
    netns::NetnsHandle,
};

/// How long reopening a duty-cycle window waits for the last window's tc links to go.
const REATTACH_WAIT: Duration = Duration::from_secs(1);

/// The tc family's state: whether its programs loaded, its links or filters, the checkpoints
/// attached.
#[derive(Debug, Default)]
pub(super) struct TcFamily {
    pub loaded: bool,
    /// TCX links.
    pub links: Vec<SchedClassifierLink>,
    /// clsact filters, one owner per device (on kernels without TCX).
    pub filters: Vec<ClsactFilters>,
    /// The kernel refused TCX as unsupported: every device gets clsact filters.
    pub without_tcx: bool,
    /// Checkpoint ids of the tc hooks attached.
    pub attached: BTreeSet<u16>,
}

impl TcFamily {
    /// The mechanism the tc checkpoints are attached with.
    pub fn via(&self) -> Via {
        if self.without_tcx {
            Via::Clsact
        } else {
            Via::Tcx
        }
    }
}

/// The programs that tail-call admission.
const ADMITTING: [&str; 3] = [
    PROG_TC_UPLINK_INGRESS,
    PROG_TC_UPLINK_EGRESS,
    PROG_TC_POD_EGRESS,
];

const PROGRAMS: [&str; 6] = [
    PROG_TC_INGRESS,
    PROG_TC_EGRESS,
    PROG_TC_UPLINK_INGRESS,
    PROG_TC_UPLINK_EGRESS,
    PROG_TC_POD_INGRESS,
    PROG_TC_POD_EGRESS,
];

/// Loads the tc programs (they are attached per device as devices are found) and puts the
/// admission program where the admitting checkpoints tail-call it.
pub(super) fn load(inner: &mut Inner) {
    let mut ok = true;
    for program in PROGRAMS {
        let result = match classifier(inner, program) {
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
    if ok {
        match load_admission(inner) {
            Ok(array) => inner.tc_admission = Some(array),
            Err(reason) => {
                inner.not_measured(format!("tc admission ({PROG_TC_ADMIT})"), reason);
                ok = false;
            }
        }
    }
    inner.tc.loaded = ok;
}

/// Loads the admission program into the program array the admitting checkpoints tail-call
/// through, and takes the array out of the object so it is closed after them.
fn load_admission(inner: &mut Inner) -> Result<CloseAfterCallers<Map>, String> {
    const MISSING: &str = "missing from netprof's eBPF object: rebuild netprof";
    let admit = classifier(inner, PROG_TC_ADMIT).ok_or(MISSING)?;
    admit.load().map_err(|e| chain(&e))?;
    let fd = admit
        .fd()
        .map_err(|e| chain(&e))?
        .try_clone()
        .map_err(|e| chain(&e))?;
    let mut map = inner.ebpf.take_map(MAP_TC_ADMIT).ok_or(MISSING)?;
    ProgramArray::try_from(&mut map)
        .and_then(|mut array| array.set(0, &fd, 0))
        .map_err(|e| chain(&e))?;
    let mut callers = Vec::new();
    for program in ADMITTING {
        let info = classifier(inner, program)
            .ok_or(MISSING)?
            .info()
            .map_err(|e| chain(&e))?;
        callers.push(info.id());
    }
    Ok(CloseAfterCallers::new(map, callers))
}

fn classifier<'a>(inner: &'a mut Inner, program: &str) -> Option<&'a mut SchedClassifier> {
    inner
        .ebpf
        .program_mut(program)
        .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
}

/// The (ingress, egress) programs of a device.
fn programs_for(device: &Device) -> (&'static str, &'static str) {
    match (device.found.on_node, device.found.role) {
        (false, _) => (PROG_TC_POD_INGRESS, PROG_TC_POD_EGRESS),
        (true, DeviceRole::Uplink) => (PROG_TC_UPLINK_INGRESS, PROG_TC_UPLINK_EGRESS),
        (true, _) => (PROG_TC_INGRESS, PROG_TC_EGRESS),
    }
}

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

/// Attaches both directions of `device`, inside the device's namespace.
pub(super) fn attach(inner: &mut Inner, device: &Device) {
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
        None => inner.node.handle.enter_if_elsewhere(),
    };
    let guard = match entered {
        Ok(guard) => guard,
        Err(err) => {
            inner.not_measured(format!("{label} tc"), chain(&err));
            return;
        }
    };
    let (ingress, egress) = programs_for(device);
    if !inner.tc.without_tcx {
        attach_tcx(inner, device, &ifname, [ingress, egress]);
    }
    if inner.tc.without_tcx {
        attach_clsact(inner, device, &ifname, [ingress, egress]);
    }
    drop(guard);
}

const DIRECTIONS: [(TcAttachType, DeviceHook); 2] = [
    (TcAttachType::Ingress, DeviceHook::TcIngress),
    (TcAttachType::Egress, DeviceHook::TcEgress),
];

/// TCX links on both directions. A refusal that says the kernel has no TCX switches the family
/// to clsact (nothing was attached then: the first direction is the one refused).
fn attach_tcx(inner: &mut Inner, device: &Device, ifname: &str, programs: [&'static str; 2]) {
    let label = device.label().label;
    for (program, (attach_type, hook)) in programs.into_iter().zip(DIRECTIONS) {
        let paused = inner.windows.paused;
        let Some(classifier) = classifier(inner, program) else {
            continue;
        };
        let mut attach_once = || {
            // After existing TCX programs: ours return "next", so whatever runs before
            // decides what they see.
            classifier
                .attach_with_options(
                    ifname,
                    attach_type,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .and_then(|id| classifier.take_link(id))
        };
        let mut result = attach_once();
        // Reopening a duty-cycle window: the last window's link on this hook can still be
        // going (its release finishes in the kernel after the close returns, under load), and
        // the kernel refuses the same program twice on a hook (EEXIST) until it is gone.
        let deadline = Instant::now() + REATTACH_WAIT;
        while paused && Instant::now() < deadline && result.as_ref().is_err_and(is_eexist) {
            std::thread::sleep(Duration::from_millis(5));
            result = attach_once();
        }
        match result {
            Ok(link) => {
                inner.tc.links.push(link);
                inner.tc.attached.insert(device.id(hook));
            }
            Err(err) if inner.tc.links.is_empty() && clsact::tcx_unsupported(&err) => {
                log::info!(
                    "TCX refused on {label} ({}): tc checkpoints on clsact qdiscs",
                    chain(&err)
                );
                inner.tc.without_tcx = true;
                return;
            }
            Err(err) => {
                let what = format!("{label} {}", hook.name());
                inner.not_measured(what, format!("TCX attach failed: {}", chain(&err)));
            }
        }
    }
}

/// Direct-action filters on the device's clsact qdisc (added if absent, removed with the
/// filters if netprof added it). Runs in the device's namespace.
fn attach_clsact(inner: &mut Inner, device: &Device, ifname: &str, programs: [&'static str; 2]) {
    let label = device.label().label;
    let mut filters = match ClsactFilters::prepare(ifname) {
        Ok(filters) => filters,
        Err(err) => {
            inner.not_measured(format!("{label} tc"), chain(&err));
            return;
        }
    };
    for (program, (attach_type, hook)) in programs.into_iter().zip(DIRECTIONS) {
        let Some(classifier) = classifier(inner, program) else {
            continue;
        };
        match filters.attach(program, classifier, attach_type) {
            Ok(()) => {
                inner.tc.attached.insert(device.id(hook));
            }
            Err(err) => {
                let what = format!("{label} {}", hook.name());
                inner.not_measured(what, format!("clsact attach failed: {}", chain(&err)));
            }
        }
    }
    // An owner without filters still removes the qdisc it may have added, when dropped here.
    if !filters.is_empty() {
        inner.tc.filters.push(filters);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::devices::{Found, Link};

    fn device(role: DeviceRole, on_node: bool) -> Device {
        Device {
            found: Found {
                netns: "n".into(),
                netns_inum: 1,
                link: Link {
                    ifname: "x".into(),
                    ifindex: 3,
                    kind: String::new(),
                    master: None,
                    mac: None,
                    peer_ifindex: None,
                },
                role,
                on_node,
            },
            base: 64,
        }
    }

    #[test]
    fn the_uplink_and_pods_get_the_programs_where_paths_start() {
        assert_eq!(
            programs_for(&device(DeviceRole::Uplink, true)),
            (PROG_TC_UPLINK_INGRESS, PROG_TC_UPLINK_EGRESS)
        );
        assert_eq!(
            programs_for(&device(DeviceRole::PodEth, false)),
            (PROG_TC_POD_INGRESS, PROG_TC_POD_EGRESS)
        );
        for role in [DeviceRole::Bridge, DeviceRole::Vxlan, DeviceRole::HostVeth] {
            assert_eq!(
                programs_for(&device(role, true)),
                (PROG_TC_INGRESS, PROG_TC_EGRESS)
            );
        }
    }
}
