//! tc through a clsact qdisc, for kernels without TCX (before 6.6): netprof's programs as
//! direct-action cls_bpf filters, owned like links ([`ClsactFilters`]), and the two clsact
//! qdisc operations aya 0.14 lacks ("are any tc filters left on it?" and "delete it").
//!
//! The qdisc is shared ground: another tool (a CNI, tc by hand) may have created it and put its
//! own filters on it, before or after netprof. So netprof removes only its own filters, and the
//! qdisc only when netprof created it and no other filter is on it ([`qdisc_fate`]).
//!
//! Plain rtnetlink over a `NETLINK_ROUTE` socket. Like every netlink call it acts in the network
//! namespace of the calling thread; [`ClsactFilters`] keeps its device's namespace open and
//! goes back into it to detach, from whichever thread drops it.

use std::{
    ffi::CString,
    io,
    mem::size_of,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use aya::programs::{
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError},
    Link as _, SchedClassifier, TcAttachType,
};

use super::{denied_or, EbpfError};
use crate::netns::NetnsHandle;

/// Who put the clsact qdisc on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QdiscOwner {
    /// netprof added it (there was none).
    Netprof,
    /// It was there already: another tool's.
    Other,
}

/// What becomes of a clsact qdisc once netprof's filters are off it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QdiscFate {
    Keep,
    Delete,
}

/// The ownership rule: netprof deletes only a qdisc it created, and not while another tool's
/// filter is on it (deleting the qdisc would take that filter along).
pub fn qdisc_fate(owner: QdiscOwner, other_filters: bool) -> QdiscFate {
    match (owner, other_filters) {
        (QdiscOwner::Netprof, false) => QdiscFate::Delete,
        (QdiscOwner::Netprof, true) | (QdiscOwner::Other, _) => QdiscFate::Keep,
    }
}

/// netprof's filters on one device's clsact qdisc, and the qdisc when netprof created it.
/// Dropping it (or [`ClsactFilters::detach`]) goes back into the device's namespace, deletes
/// the filters, then the qdisc as [`qdisc_fate`] says.
#[derive(Debug)]
pub struct ClsactFilters {
    netns: NetnsHandle,
    iface: String,
    ifindex: u32,
    owner: QdiscOwner,
    links: Vec<(&'static str, SchedClassifierLink)>,
    /// Filters removed and the qdisc dealt with (or given up on).
    done: bool,
}

impl ClsactFilters {
    /// The clsact qdisc of `iface` in the calling thread's namespace, added if absent.
    pub fn prepare(iface: &str) -> Result<Self, EbpfError> {
        let netns = NetnsHandle::current()?;
        let ifindex = ifindex(iface).ok_or_else(|| EbpfError::InterfaceNotFound {
            iface: iface.to_owned(),
            netns: None,
        })?;
        let owner = match tc::qdisc_add_clsact(iface) {
            Ok(()) => QdiscOwner::Netprof,
            Err(TcError::NetlinkError(err)) if err.raw_os_error() == Some(libc::EEXIST) => {
                QdiscOwner::Other
            }
            Err(err) => {
                return Err(denied_or(
                    format!("adding a clsact qdisc to {iface}"),
                    err,
                    |source| EbpfError::AddClsact {
                        iface: iface.to_owned(),
                        source: source.into(),
                    },
                ))
            }
        };
        Ok(Self {
            netns,
            iface: iface.to_owned(),
            ifindex,
            owner,
            links: Vec::new(),
            done: false,
        })
    }

    /// Attaches the loaded `classifier` (`program`) as a direct-action filter on `direction`,
    /// ahead of the filters already there (the kernel picks the priority before the first):
    /// a filter behind one that ends classification never runs, and netprof's programs never
    /// end it (they return "unspecified", so the next filter runs as if they were not there).
    /// Call it in the device's namespace, as [`ClsactFilters::prepare`].
    pub fn attach(
        &mut self,
        program: &'static str,
        classifier: &mut SchedClassifier,
        direction: TcAttachType,
    ) -> Result<(), EbpfError> {
        let name = match direction {
            TcAttachType::Ingress => "ingress",
            TcAttachType::Egress => "egress",
            TcAttachType::Custom(_) => "custom",
        };
        let options = TcAttachOptions::Netlink(NlOptions::default());
        let link = classifier
            .attach_with_options(&self.iface, direction, options)
            .and_then(|id| classifier.take_link(id))
            .map_err(|err| {
                denied_or(
                    format!("attaching {program} to {} {name}", self.iface),
                    err,
                    |source| EbpfError::Attach {
                        program,
                        iface: self.iface.clone(),
                        direction: name,
                        method: "clsact",
                        source: source.into(),
                    },
                )
            })?;
        self.links.push((program, link));
        Ok(())
    }

    pub fn owner(&self) -> QdiscOwner {
        self.owner
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// How many filters netprof has on the qdisc.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Removes netprof's filters, then the qdisc if netprof owns it and nothing else is on it.
    pub fn detach(mut self) -> Result<(), EbpfError> {
        self.remove()
    }

    fn remove(&mut self) -> Result<(), EbpfError> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        let guard = match self.netns.enter_if_elsewhere() {
            Ok(guard) => guard,
            Err(err) => {
                // Filters are deleted by interface index, which means something only inside
                // their namespace: leave them rather than hit another device here.
                for (program, link) in self.links.drain(..) {
                    log::error!(
                        "leaving {program} on {} (interface index {}): its namespace {} cannot \
                         be entered",
                        self.iface,
                        self.ifindex,
                        self.netns.path().display()
                    );
                    std::mem::forget(link);
                }
                return Err(err.into());
            }
        };
        let mut first_error = None;
        for (program, link) in self.links.drain(..) {
            if let Err(source) = link.detach() {
                // The device went away (and its qdisc and filters with it).
                if !is_gone(&source) {
                    first_error.get_or_insert(EbpfError::Detach {
                        program,
                        ifindex: self.ifindex,
                        source: source.into(),
                    });
                }
            }
        }
        if let Err(err) = self.settle_qdisc() {
            first_error.get_or_insert(err);
        }
        drop(guard);
        first_error.map_or(Ok(()), Err)
    }

    /// Applies [`qdisc_fate`] once netprof's filters are off.
    fn settle_qdisc(&self) -> Result<(), EbpfError> {
        let remove_error = |source| EbpfError::RemoveClsact {
            ifindex: self.ifindex,
            source,
        };
        let others = match self.owner {
            QdiscOwner::Other => false,
            QdiscOwner::Netprof => has_filters(self.ifindex).map_err(remove_error)?,
        };
        match qdisc_fate(self.owner, others) {
            QdiscFate::Keep => {
                if self.owner == QdiscOwner::Netprof {
                    log::warn!(
                        "leaving the clsact qdisc netprof added on {}: another tool's filters \
                         are on it",
                        self.iface
                    );
                }
                Ok(())
            }
            QdiscFate::Delete => match delete(self.ifindex) {
                Ok(()) => Ok(()),
                Err(err)
                    if matches!(
                        err.raw_os_error(),
                        Some(libc::ENOENT | libc::ENODEV | libc::EINVAL)
                    ) =>
                {
                    Ok(())
                }
                Err(err) => Err(remove_error(err)),
            },
        }
    }
}

impl Drop for ClsactFilters {
    fn drop(&mut self) {
        if let Err(err) = self.remove() {
            log::error!("removing netprof's tc filters from {}: {err}", self.iface);
        }
    }
}

/// Whether a TCX attach failed because the kernel has no TCX (before 6.6 it answers EINVAL to
/// the link type, some paths the kernel-internal ENOTSUPP), rather than for another reason.
pub fn tcx_unsupported(err: &(dyn std::error::Error + 'static)) -> bool {
    /// The kernel-internal ENOTSUPP some BPF paths leak to user space.
    const ENOTSUPP: i32 = 524;
    let mut cause = Some(err);
    while let Some(err) = cause {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return matches!(
                io.raw_os_error(),
                Some(libc::EINVAL | libc::E2BIG | libc::EOPNOTSUPP | ENOTSUPP)
            );
        }
        cause = err.source();
    }
    false
}

/// Whether a detach failed because the device (or its qdisc) is gone already.
fn is_gone(err: &aya::programs::ProgramError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(err) = cause {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return matches!(
                io.raw_os_error(),
                Some(libc::ENODEV | libc::ENOENT | libc::EINVAL)
            );
        }
        cause = err.source();
    }
    false
}

fn ifindex(iface: &str) -> Option<u32> {
    let name = CString::new(iface).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// `TC_H_CLSACT`: parent handle of the clsact qdisc (shared with `TC_H_INGRESS`).
pub(crate) const TC_H_CLSACT: u32 = 0xffff_fff1;
/// The clsact qdisc's own handle, `ffff:`.
pub(crate) const CLSACT_HANDLE: u32 = 0xffff_0000;
/// `TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)`: the ingress filter block.
pub(crate) const CLSACT_INGRESS: u32 = 0xffff_fff2;
/// `TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_EGRESS)`: the egress filter block.
const CLSACT_EGRESS: u32 = 0xffff_fff3;

const NLMSG_HDR_LEN: usize = 16;
const TCMSG_LEN: usize = 20;
const RECV_BUF_LEN: usize = 64 * 1024;

/// Whether any tc filter (from any tool) is attached to the ingress or egress block of the
/// clsact qdisc on `ifindex`. `Ok(false)` too when there is no clsact qdisc.
pub fn has_filters(ifindex: u32) -> io::Result<bool> {
    let socket = RouteSocket::open()?;
    for parent in [CLSACT_INGRESS, CLSACT_EGRESS] {
        let request = tc_request(
            libc::RTM_GETTFILTER,
            (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            ifindex,
            0,
            parent,
            None,
        );
        match socket.transact(&request) {
            Ok(replies) if replies.contains(&libc::RTM_NEWTFILTER) => return Ok(true),
            Ok(_) => {}
            // No clsact qdisc (or no such block): nothing attached there.
            Err(err) if matches!(err.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(false)
}

/// Sends one rtnetlink request that asks for an acknowledgement (`NLM_F_ACK`) on a fresh
/// socket in the calling thread's namespace; the kernel's error, if it answers one.
pub(crate) fn request_acked(request: &[u8]) -> io::Result<()> {
    RouteSocket::open()?.transact(request).map(drop)
}

/// Deletes the clsact qdisc on `ifindex`, and with it any filters still attached to it. The
/// kind is part of the request, so an `ingress` qdisc in the same slot is never touched.
pub fn delete(ifindex: u32) -> io::Result<()> {
    let socket = RouteSocket::open()?;
    let request = tc_request(
        libc::RTM_DELQDISC,
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
        ifindex,
        CLSACT_HANDLE,
        TC_H_CLSACT,
        Some("clsact"),
    );
    socket.transact(&request).map(drop)
}

/// An rtnetlink message: `nlmsghdr`, `tcmsg`, and optionally a `TCA_KIND` attribute.
fn tc_request(
    msg_type: u16,
    flags: u16,
    ifindex: u32,
    handle: u32,
    parent: u32,
    kind: Option<&str>,
) -> Vec<u8> {
    let mut msg = Vec::with_capacity(64);
    // nlmsghdr; the length is patched in at the end, the kernel fills in our port id.
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&msg_type.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id
                                                // tcmsg: family, 3 bytes padding, ifindex, handle, parent, info.
    msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    msg.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    msg.extend_from_slice(&handle.to_ne_bytes());
    msg.extend_from_slice(&parent.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    debug_assert_eq!(msg.len(), NLMSG_HDR_LEN + TCMSG_LEN);
    if let Some(kind) = kind {
        let payload_len = kind.len() + 1; // NUL-terminated string
        msg.extend_from_slice(&((4 + payload_len) as u16).to_ne_bytes());
        msg.extend_from_slice(&libc::TCA_KIND.to_ne_bytes());
        msg.extend_from_slice(kind.as_bytes());
        msg.push(0);
        msg.resize(align4(msg.len()), 0);
    }
    let len = msg.len() as u32;
    msg[..4].copy_from_slice(&len.to_ne_bytes());
    msg
}

const fn align4(len: usize) -> usize {
    (len + 3) & !3
}

struct RouteSocket(OwnedFd);

impl RouteSocket {
    fn open() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked before it is wrapped.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Sends one request and reads replies until the ack (`NLMSG_ERROR` 0) or the end of a
    /// dump (`NLMSG_DONE`). Returns the types of the other messages received.
    fn transact(&self, request: &[u8]) -> io::Result<Vec<u16>> {
        // SAFETY: the buffer is valid for its length; the kernel is the (default) destination.
        let sent = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut types = Vec::new();
        let mut buf = vec![0u8; RECV_BUF_LEN];
        loop {
            // SAFETY: the buffer is valid for writes of its length.
            let len =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if len < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            let mut rest = &buf[..len as usize];
            while rest.len() >= NLMSG_HDR_LEN {
                let msg_len = u32_at(rest, 0) as usize;
                let msg_type = u16::from_ne_bytes([rest[4], rest[5]]);
                if msg_len < NLMSG_HDR_LEN || msg_len > rest.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "malformed netlink reply",
                    ));
                }
                match i32::from(msg_type) {
                    libc::NLMSG_ERROR => {
                        let errno = if msg_len >= NLMSG_HDR_LEN + size_of::<i32>() {
                            -(u32_at(rest, NLMSG_HDR_LEN) as i32)
                        } else {
                            libc::EPROTO
                        };
                        return if errno == 0 {
                            Ok(types)
                        } else {
                            Err(io::Error::from_raw_os_error(errno))
                        };
                    }
                    libc::NLMSG_DONE => return Ok(types),
                    _ => types.push(msg_type),
                }
                rest = &rest[align4(msg_len).min(rest.len())..];
            }
        }
    }
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_ne_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_qdisc_netprof_created_and_nobody_else_uses_is_deleted() {
        use QdiscOwner::{Netprof, Other};
        assert_eq!(qdisc_fate(Netprof, false), QdiscFate::Delete);
        assert_eq!(qdisc_fate(Netprof, true), QdiscFate::Keep);
        assert_eq!(qdisc_fate(Other, false), QdiscFate::Keep);
        assert_eq!(qdisc_fate(Other, true), QdiscFate::Keep);
    }

    #[test]
    fn filters_can_move_to_the_thread_that_drops_them() {
        fn assert_send<T: Send>() {}
        assert_send::<ClsactFilters>();
    }

    #[test]
    fn request_layout_matches_rtnetlink() {
        let msg = tc_request(
            libc::RTM_DELQDISC,
            5,
            7,
            CLSACT_HANDLE,
            TC_H_CLSACT,
            Some("clsact"),
        );
        // 16 header + 20 tcmsg + 4 attribute header + "clsact\0" padded to 8.
        assert_eq!(msg.len(), 48);
        assert_eq!(u32_at(&msg, 0), 48);
        assert_eq!(u16::from_ne_bytes([msg[4], msg[5]]), libc::RTM_DELQDISC);
        assert_eq!(u32_at(&msg, 20), 7, "ifindex");
        assert_eq!(u32_at(&msg, 24), CLSACT_HANDLE);
        assert_eq!(u32_at(&msg, 28), TC_H_CLSACT);
        assert_eq!(
            u16::from_ne_bytes([msg[36], msg[37]]),
            11,
            "attribute length"
        );
        assert_eq!(&msg[40..47], b"clsact\0");
    }
}
