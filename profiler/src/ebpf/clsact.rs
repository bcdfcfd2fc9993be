//! The two clsact qdisc operations aya 0.14 lacks: "are any tc filters left on it?" and
//! "delete it". Used only by the netlink (pre-TCX) attach fallback, to remove a clsact qdisc
//! netprof created once its own filters are gone, without taking other tools' filters with it.
//!
//! Plain rtnetlink over a `NETLINK_ROUTE` socket. Like every netlink call it acts in the network
//! namespace of the calling thread: call inside a [`crate::netns::NetnsGuard`] when needed.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// `TC_H_CLSACT`: parent handle of the clsact qdisc (shared with `TC_H_INGRESS`).
const TC_H_CLSACT: u32 = 0xffff_fff1;
/// The clsact qdisc's own handle, `ffff:`.
const CLSACT_HANDLE: u32 = 0xffff_0000;
/// `TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)`: the ingress filter block.
const CLSACT_INGRESS: u32 = 0xffff_fff2;
/// `TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_EGRESS)`: the egress filter block.
const CLSACT_EGRESS: u32 = 0xffff_fff3;

const NLMSG_HDR_LEN: usize = 16;
const TCMSG_LEN: usize = 20;
const RECV_BUF_LEN: usize = 64 * 1024;

/// Whether any tc filter (from any tool) is attached to the ingress or egress block of the
/// clsact qdisc on `ifindex`. `Ok(false)` too when there is no clsact qdisc.
pub(crate) fn has_filters(ifindex: u32) -> io::Result<bool> {
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

/// Deletes the clsact qdisc on `ifindex`, and with it any filters still attached to it. The
/// kind is part of the request, so an `ingress` qdisc in the same slot is never touched.
pub(crate) fn delete(ifindex: u32) -> io::Result<()> {
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
