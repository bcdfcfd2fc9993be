//! Loader for the uplink counter (`profiler-ebpf/src/uplink_counter.rs`): tc classifiers on
//! both directions of one interface that count ICMP echo requests/replies, other IPv4 and
//! non-IPv4 packets in a per-CPU array. Nothing per packet reaches user space; [`counts`]
//! sums the per-CPU slots on demand. Only tests use it, so the programs live in
//! [`TEST_OBJECT`], not in the agent's object.
//!
//! Attachment prefers TCX links (kernel >= 6.6): they belong to their file descriptor, leave no
//! qdisc behind and vanish when netprof exits, even on SIGKILL. Older kernels get the netlink
//! path: a clsact qdisc (created only if absent) and two cls_bpf filters, all removed on drop.
//!
//! [`counts`]: UplinkCounter::counts

use std::ffi::CString;

use aya::{
    maps::{MapData, PerCpuArray},
    programs::{
        tc::{SchedClassifierLink, TcAttachOptions},
        Link as _, LinkOrder, SchedClassifier, TcAttachType,
    },
    Ebpf, EbpfLoader,
};
use profiler_common::counter::{
    EGRESS_ECHO_REPLY, EGRESS_ECHO_REQUEST, EGRESS_NON_IPV4, EGRESS_OTHER_IPV4, INGRESS_ECHO_REPLY,
    INGRESS_ECHO_REQUEST, INGRESS_NON_IPV4, INGRESS_OTHER_IPV4, MAP_NAME, PROG_EGRESS,
    PROG_INGRESS,
};
use serde::Serialize;

use super::{
    clsact::{ClsactFilters, QdiscOwner},
    denied_or,
    test_objects::TEST_OBJECT,
    EbpfError,
};
use crate::netns::NetnsHandle;

/// Which kernel interface to attach the classifiers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttachMode {
    /// TCX, falling back to netlink when the kernel has no TCX (before 6.6).
    #[default]
    Auto,
    /// TCX links only.
    Tcx,
    /// clsact qdisc + cls_bpf filters over netlink only (what pre-6.6 kernels get).
    Netlink,
}

/// How the classifiers ended up attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Attachment {
    /// Two TCX links.
    Tcx,
    /// Two cls_bpf filters on a clsact qdisc. `created_clsact`: netprof added the qdisc (and
    /// removes it on detach when no other filters remain on it).
    Netlink { created_clsact: bool },
}

/// Packet counts since attach, summed over CPUs. "Ingress" and "egress" are as seen from the
/// interface: on a pod's `eth0`, egress is what the pod sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct IcmpCounts {
    pub ingress_echo_requests: u64,
    pub ingress_echo_replies: u64,
    pub egress_echo_requests: u64,
    pub egress_echo_replies: u64,
    /// IPv4 that is not an ICMP echo request/reply (incl. non-first fragments).
    pub ingress_other_ipv4: u64,
    pub egress_other_ipv4: u64,
    /// Frames that are not IPv4 by EtherType (ARP, IPv6, ...).
    pub ingress_non_ipv4: u64,
    pub egress_non_ipv4: u64,
}

/// The uplink counter, attached to one interface. Owns the loaded object and both links;
/// dropping it detaches everything (see [`UplinkCounter::detach`] to see errors).
#[derive(Debug)]
pub struct UplinkCounter {
    /// `None` once detached. Declared before `ebpf`: links go before their programs.
    hooks: Option<Hooks>,
    ebpf: Ebpf,
    /// The `ip netns` name given to attach, if any.
    netns_name: Option<String>,
    iface: String,
    attachment: Attachment,
}

impl UplinkCounter {
    /// Loads the counter and attaches it to both directions of `iface`, which lives in the
    /// `ip netns` namespace `netns` (`/run/netns/NAME`) or, for `None`, in the calling
    /// thread's namespace. Prefers TCX and falls back to netlink on kernels without it.
    ///
    /// Blocks and briefly moves the calling thread into `netns`: on tokio, call it from
    /// `spawn_blocking` (see [`crate::netns`]).
    pub fn attach(netns: Option<&str>, iface: &str) -> Result<Self, EbpfError> {
        Self::attach_with(netns, iface, AttachMode::Auto)
    }

    /// [`UplinkCounter::attach`] with an explicit [`AttachMode`] (tests use it to exercise the
    /// netlink path on TCX kernels).
    pub fn attach_with(
        netns: Option<&str>,
        iface: &str,
        mode: AttachMode,
    ) -> Result<Self, EbpfError> {
        let netns_name = netns.map(str::to_owned);
        let netns = match netns {
            Some(name) => NetnsHandle::open(name)?,
            None => NetnsHandle::current()?,
        };
        // Parsing, map creation and verification do not depend on the namespace.
        let mut ebpf = EbpfLoader::new().load(TEST_OBJECT).map_err(|err| {
            denied_or("loading netprof's test eBPF object", err, |source| {
                EbpfError::Load {
                    source: source.into(),
                }
            })
        })?;
        for program in [PROG_INGRESS, PROG_EGRESS] {
            classifier(&mut ebpf, program)?.load().map_err(|err| {
                denied_or(format!("loading program {program}"), err, |source| {
                    EbpfError::ProgramLoad {
                        program,
                        source: source.into(),
                    }
                })
            })?;
        }

        // Interface lookup, netlink and TCX link creation by ifindex all act in the calling
        // thread's namespace.
        let guard = netns.enter_if_elsewhere()?;
        let attached = attach_hooks(&mut ebpf, netns_name.as_deref(), iface, mode);
        drop(guard);
        let (hooks, attachment) = attached?;
        log::info!(
            "uplink counter attached to {iface} in {} ({attachment:?})",
            super::netns_label(netns_name.as_deref())
        );
        Ok(Self {
            hooks: Some(hooks),
            ebpf,
            netns_name,
            iface: iface.to_owned(),
            attachment,
        })
    }

    /// Counts since attach, summed over all CPUs.
    pub fn counts(&self) -> Result<IcmpCounts, EbpfError> {
        let map = self
            .ebpf
            .map(MAP_NAME)
            .ok_or(EbpfError::MapMissing { map: MAP_NAME })?;
        let slots: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|source| EbpfError::Map {
                map: MAP_NAME,
                source: source.into(),
            })?;
        let read = |slot: u32| -> Result<u64, EbpfError> {
            let per_cpu = slots.get(&slot, 0).map_err(|source| EbpfError::Map {
                map: MAP_NAME,
                source: source.into(),
            })?;
            Ok(per_cpu
                .iter()
                .fold(0u64, |sum, count| sum.wrapping_add(*count)))
        };
        Ok(IcmpCounts {
            ingress_echo_requests: read(INGRESS_ECHO_REQUEST)?,
            ingress_echo_replies: read(INGRESS_ECHO_REPLY)?,
            egress_echo_requests: read(EGRESS_ECHO_REQUEST)?,
            egress_echo_replies: read(EGRESS_ECHO_REPLY)?,
            ingress_other_ipv4: read(INGRESS_OTHER_IPV4)?,
            egress_other_ipv4: read(EGRESS_OTHER_IPV4)?,
            ingress_non_ipv4: read(INGRESS_NON_IPV4)?,
            egress_non_ipv4: read(EGRESS_NON_IPV4)?,
        })
    }

    /// How the classifiers are attached.
    pub fn attachment(&self) -> Attachment {
        self.attachment
    }

    /// The interface the counter is attached to.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// The `ip netns` name the interface lives in, `None` for the caller's namespace.
    pub fn netns(&self) -> Option<&str> {
        self.netns_name.as_deref()
    }

    /// Detaches both programs (and removes a clsact qdisc netprof added, when nothing else is
    /// attached to it), reporting errors that dropping would only log.
    pub fn detach(mut self) -> Result<(), EbpfError> {
        self.detach_hooks()
    }

    fn detach_hooks(&mut self) -> Result<(), EbpfError> {
        match self.hooks.take() {
            Some(hooks) => hooks.detach(),
            None => Ok(()),
        }
    }
}

impl Drop for UplinkCounter {
    fn drop(&mut self) {
        if let Err(err) = self.detach_hooks() {
            log::error!("uplink counter on {}: {err}", self.iface);
        }
    }
}

/// The attached classifiers of one counter: TCX links (closing them detaches, wherever the
/// thread is), or filters on a clsact qdisc (which go back to their namespace to detach).
#[derive(Debug)]
enum Hooks {
    Tcx {
        ifindex: u32,
        links: Vec<(&'static str, SchedClassifierLink)>,
    },
    Clsact(ClsactFilters),
}

impl Hooks {
    fn detach(self) -> Result<(), EbpfError> {
        match self {
            Hooks::Tcx { ifindex, links } => {
                let mut first_error = None;
                for (program, link) in links {
                    if let Err(source) = link.detach() {
                        first_error.get_or_insert(EbpfError::Detach {
                            program,
                            ifindex,
                            source: source.into(),
                        });
                    }
                }
                first_error.map_or(Ok(()), Err)
            }
            Hooks::Clsact(filters) => filters.detach(),
        }
    }
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    program: &'static str,
) -> Result<&'a mut SchedClassifier, EbpfError> {
    ebpf.program_mut(program)
        .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
        .ok_or(EbpfError::ProgramMissing { program })
}

/// The programs and the hooks they go on.
const HOOKS: [(&str, TcAttachType, &str); 2] = [
    (PROG_INGRESS, TcAttachType::Ingress, "ingress"),
    (PROG_EGRESS, TcAttachType::Egress, "egress"),
];

/// Attaches both programs. Runs in the interface's namespace.
fn attach_hooks(
    ebpf: &mut Ebpf,
    netns: Option<&str>,
    iface: &str,
    mode: AttachMode,
) -> Result<(Hooks, Attachment), EbpfError> {
    let not_found = || EbpfError::InterfaceNotFound {
        iface: iface.to_owned(),
        netns: netns.map(str::to_owned),
    };
    let name = CString::new(iface).map_err(|_| not_found())?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(not_found());
    }
    match mode {
        AttachMode::Tcx => attach_tcx(ebpf, iface, ifindex),
        AttachMode::Netlink => attach_netlink(ebpf, iface),
        AttachMode::Auto => match attach_tcx(ebpf, iface, ifindex) {
            Err(err) if tcx_unsupported(&err) => {
                log::info!("TCX is not available ({err}); attaching with netlink/clsact");
                attach_netlink(ebpf, iface)
            }
            other => other,
        },
    }
}

fn attach_tcx(
    ebpf: &mut Ebpf,
    iface: &str,
    ifindex: u32,
) -> Result<(Hooks, Attachment), EbpfError> {
    let mut links = Vec::new();
    for (program, attach_type, direction) in HOOKS {
        // LinkOrder::default() is "after every existing TCX program": with TC_ACT_PIPE the
        // counter never ends the chain, so the programs before it decide what it sees.
        let options = TcAttachOptions::TcxOrder(LinkOrder::default());
        // On error, `links` drops here: closing the TCX link fds detaches what was attached.
        let link = attach_one(ebpf, program, iface, attach_type, direction, "TCX", options)?;
        links.push((program, link));
    }
    Ok((Hooks::Tcx { ifindex, links }, Attachment::Tcx))
}

fn attach_netlink(ebpf: &mut Ebpf, iface: &str) -> Result<(Hooks, Attachment), EbpfError> {
    // On error, `filters` drops: the filters attached so far go, and the qdisc if it was ours.
    let mut filters = ClsactFilters::prepare(iface)?;
    for (program, attach_type, _) in HOOKS {
        filters.attach(program, classifier(ebpf, program)?, attach_type)?;
    }
    let created_clsact = filters.owner() == QdiscOwner::Netprof;
    Ok((
        Hooks::Clsact(filters),
        Attachment::Netlink { created_clsact },
    ))
}

fn attach_one(
    ebpf: &mut Ebpf,
    program: &'static str,
    iface: &str,
    attach_type: TcAttachType,
    direction: &'static str,
    method: &'static str,
    options: TcAttachOptions,
) -> Result<SchedClassifierLink, EbpfError> {
    let classifier = classifier(ebpf, program)?;
    classifier
        .attach_with_options(iface, attach_type, options)
        .and_then(|id| classifier.take_link(id))
        .map_err(|err| {
            denied_or(
                format!("attaching {program} to {iface} {direction}"),
                err,
                |source| EbpfError::Attach {
                    program,
                    iface: iface.to_owned(),
                    direction,
                    method,
                    source: source.into(),
                },
            )
        })
}

/// Whether a TCX attach failed because the kernel has no TCX (Linux < 6.6): an unknown attach
/// type or `bpf_attr` layout, rather than a problem netlink would share.
fn tcx_unsupported(err: &EbpfError) -> bool {
    match err {
        EbpfError::Attach { source, .. } => super::clsact::tcx_unsupported(source.as_ref()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_can_move_to_another_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<UplinkCounter>();
    }

    #[test]
    fn counts_serialize_with_field_names() {
        let json = serde_json::to_value(IcmpCounts {
            egress_echo_requests: 25,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(json["egress_echo_requests"], 25);
        assert_eq!(json["ingress_non_ipv4"], 0);
    }

    #[test]
    fn only_unsupported_errnos_trigger_the_netlink_fallback() {
        let attach_error = |errno| EbpfError::Attach {
            program: PROG_INGRESS,
            iface: "eno1".into(),
            direction: "ingress",
            method: "TCX",
            source: Box::new(
                aya::sys::SyscallError {
                    call: "bpf_mprog_attach",
                    io_error: std::io::Error::from_raw_os_error(errno),
                }
                .into(),
            ),
        };
        assert!(tcx_unsupported(&attach_error(libc::EINVAL)));
        assert!(!tcx_unsupported(&attach_error(libc::ENODEV)));
        assert!(!tcx_unsupported(&EbpfError::NotRoot { euid: 1 }));
    }
}
