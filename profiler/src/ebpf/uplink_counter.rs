//! Loader for the uplink counter (`profiler-ebpf/src/uplink_counter.rs`): tc classifiers on
//! both directions of one interface that count ICMP echo requests/replies, other IPv4 and
//! non-IPv4 packets in a per-CPU array. Nothing per packet reaches user space; [`counts`]
//! sums the per-CPU slots on demand.
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
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError},
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

use super::{clsact, denied_or, EbpfError, OBJECT};
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
    /// The namespace the interface lives in (also when attached without a name); held open so
    /// detach acts in the same namespace whichever thread drops the counter.
    netns: NetnsHandle,
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
        let mut ebpf = EbpfLoader::new().load(OBJECT).map_err(|err| {
            denied_or("loading netprof's eBPF object", err, |source| {
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
            netns,
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
        let Some(hooks) = self.hooks.take() else {
            return Ok(());
        };
        let guard = match self.netns.enter_if_elsewhere() {
            Ok(guard) => guard,
            Err(err) => {
                hooks.abandon();
                return Err(err.into());
            }
        };
        let result = hooks.detach();
        drop(guard);
        result
    }
}

impl Drop for UplinkCounter {
    fn drop(&mut self) {
        if let Err(err) = self.detach_hooks() {
            log::error!("uplink counter on {}: {err}", self.iface);
        }
    }
}

/// The attached classifiers of one counter, and what must be undone to remove them.
#[derive(Debug)]
struct Hooks {
    ifindex: u32,
    netlink: bool,
    created_clsact: bool,
    links: Vec<(&'static str, SchedClassifierLink)>,
}

impl Hooks {
    /// Detaches everything. Must run in the interface's network namespace: netlink filters
    /// are addressed by ifindex, which only means something inside one namespace.
    fn detach(mut self) -> Result<(), EbpfError> {
        let mut first_error = None;
        for (program, link) in self.links.drain(..) {
            // TCX: closes the link fd. Netlink: deletes the filter by (ifindex, parent,
            // priority, handle).
            if let Err(source) = link.detach() {
                first_error.get_or_insert(EbpfError::Detach {
                    program,
                    ifindex: self.ifindex,
                    source: source.into(),
                });
            }
        }
        if self.created_clsact {
            if let Err(err) = remove_clsact_if_unused(self.ifindex) {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Gives up on the hooks without entering their namespace (it could not be entered).
    /// TCX links are closed, which detaches them wherever they are. Netlink filters are left
    /// alone: deleting by ifindex here could hit an unrelated interface of this namespace.
    fn abandon(mut self) {
        for (program, link) in self.links.drain(..) {
            if self.netlink {
                log::error!(
                    "leaving {program} attached to interface index {} in a network namespace \
                     netprof can no longer enter",
                    self.ifindex
                );
                std::mem::forget(link);
            } else {
                drop(link);
            }
        }
    }
}

/// Removes the clsact qdisc netprof added on `ifindex`, unless another tool attached filters
/// to it in the meantime (deleting the qdisc would take theirs along).
fn remove_clsact_if_unused(ifindex: u32) -> Result<(), EbpfError> {
    let remove_error = |source| EbpfError::RemoveClsact { ifindex, source };
    if clsact::has_filters(ifindex).map_err(remove_error)? {
        log::warn!(
            "leaving the clsact qdisc netprof added on interface index {ifindex}: other tc \
             filters are attached to it"
        );
        return Ok(());
    }
    match clsact::delete(ifindex) {
        Ok(()) => Ok(()),
        // Already gone (the interface went away, or someone removed it).
        Err(err) if matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ENODEV)) => Ok(()),
        Err(err) => Err(remove_error(err)),
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
        AttachMode::Netlink => attach_netlink(ebpf, iface, ifindex),
        AttachMode::Auto => match attach_tcx(ebpf, iface, ifindex) {
            Err(err) if tcx_unsupported(&err) => {
                log::info!("TCX is not available ({err}); attaching with netlink/clsact");
                attach_netlink(ebpf, iface, ifindex)
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
    let mut hooks = Hooks {
        ifindex,
        netlink: false,
        created_clsact: false,
        links: Vec::new(),
    };
    for (program, attach_type, direction) in HOOKS {
        // LinkOrder::default() is "after every existing TCX program": with TC_ACT_PIPE the
        // counter never ends the chain, so the programs before it decide what it sees.
        let options = TcAttachOptions::TcxOrder(LinkOrder::default());
        // On error, `hooks` drops here: closing the TCX link fds detaches what was attached.
        let link = attach_one(ebpf, program, iface, attach_type, direction, "TCX", options)?;
        hooks.links.push((program, link));
    }
    Ok((hooks, Attachment::Tcx))
}

fn attach_netlink(
    ebpf: &mut Ebpf,
    iface: &str,
    ifindex: u32,
) -> Result<(Hooks, Attachment), EbpfError> {
    let created_clsact = match tc::qdisc_add_clsact(iface) {
        Ok(()) => true,
        Err(TcError::NetlinkError(err)) if err.raw_os_error() == Some(libc::EEXIST) => false,
        Err(err) => {
            return Err(denied_or(
                format!("adding a clsact qdisc to {iface}"),
                err,
                |source| EbpfError::AddClsact {
                    iface: iface.to_owned(),
                    source: source.into(),
                },
            ));
        }
    };
    let mut hooks = Hooks {
        ifindex,
        netlink: true,
        created_clsact,
        links: Vec::new(),
    };
    for (program, attach_type, direction) in HOOKS {
        let options = TcAttachOptions::Netlink(NlOptions::default());
        match attach_one(
            ebpf,
            program,
            iface,
            attach_type,
            direction,
            "netlink/clsact",
            options,
        ) {
            Ok(link) => hooks.links.push((program, link)),
            Err(err) => {
                if let Err(cleanup) = hooks.detach() {
                    log::error!("cleaning up after a failed attach on {iface}: {cleanup}");
                }
                return Err(err);
            }
        }
    }
    Ok((hooks, Attachment::Netlink { created_clsact }))
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
    /// The kernel-internal ENOTSUPP some BPF paths leak to user space.
    const ENOTSUPP: i32 = 524;
    let EbpfError::Attach { source, .. } = err else {
        return false;
    };
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
    while let Some(err) = cause {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return matches!(
                io.raw_os_error(),
                Some(libc::EINVAL | libc::E2BIG | libc::EOPNOTSUPP | ENOTSUPP)
            );
        }
        cause = err.source();
    }
    false
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
    fn embedded_object_names_the_programs_and_the_map() {
        // The ELF string table holds the symbol names the loader looks up.
        let has = |name: &str| OBJECT.windows(name.len()).any(|w| w == name.as_bytes());
        for name in [PROG_INGRESS, PROG_EGRESS, MAP_NAME] {
            assert!(has(name), "{name} not in the embedded object");
        }
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
