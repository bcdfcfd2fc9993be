//! The links of a network namespace from one rtnetlink dump (`RTM_GETLINK`), without starting
//! a process: the agent lists its namespaces every second to find new pods, and exec'ing `ip`
//! for that cost the benchmark measurably (a few % of nginx QPS on the 2-CPU lab, measured with
//! `netprof overhead --duty 1`). The socket is opened inside the namespace (a netlink socket
//! stays bound to the namespace it was created in), then the thread returns.

use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use super::devices::Link;
use crate::netns::NetnsHandle;

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
/// `struct nlmsghdr` and `struct ifinfomsg` sizes.
const NLMSG_HDR: usize = 16;
const IFINFOMSG: usize = 16;
const NLA_HDR: usize = 4;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The links of the `ip netns` namespace `netns`.
pub fn list(netns: &str) -> io::Result<Vec<Link>> {
    let handle = NetnsHandle::open(netns).map_err(io::Error::other)?;
    let socket = {
        let _inside = handle.enter_if_elsewhere().map_err(io::Error::other)?;
        // SAFETY: socket(2) with constant arguments; the fd is owned below.
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
        // SAFETY: a fresh fd nobody else owns.
        unsafe { OwnedFd::from_raw_fd(fd) }
    };
    dump(&socket)
}

fn dump(socket: &OwnedFd) -> io::Result<Vec<Link>> {
    let mut request = [0u8; NLMSG_HDR + IFINFOMSG];
    request[0..4].copy_from_slice(&((NLMSG_HDR + IFINFOMSG) as u32).to_ne_bytes());
    request[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    request[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // ifinfomsg: family AF_UNSPEC and everything else zero: every link.
    // SAFETY: sending a buffer we own on a valid socket (the kernel is the default peer).
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut links = Vec::new();
    let mut masters: Vec<(usize, u32)> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: receiving into a buffer we own.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut msg = &buf[..n as usize];
        while msg.len() >= NLMSG_HDR {
            let len = u32::from_ne_bytes(msg[0..4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(msg[4..6].try_into().unwrap());
            if len < NLMSG_HDR || len > msg.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated netlink message",
                ));
            }
            match kind {
                NLMSG_DONE => return Ok(resolve_masters(links, masters)),
                NLMSG_ERROR => {
                    let errno = i32::from_ne_bytes(
                        msg[NLMSG_HDR..NLMSG_HDR + 4].try_into().unwrap_or([0; 4]),
                    );
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                RTM_NEWLINK => {
                    if let Some((link, master)) = parse_link(&msg[NLMSG_HDR..len]) {
                        if let Some(master) = master {
                            masters.push((links.len(), master));
                        }
                        links.push(link);
                    }
                }
                _ => {}
            }
            msg = &msg[align4(len).min(msg.len())..];
        }
    }
}

/// Masters come as ifindexes; `Link` names them.
fn resolve_masters(mut links: Vec<Link>, masters: Vec<(usize, u32)>) -> Vec<Link> {
    let names: BTreeMap<u32, String> = links
        .iter()
        .map(|l| (l.ifindex, l.ifname.clone()))
        .collect();
    for (i, master) in masters {
        links[i].master = names.get(&master).cloned();
    }
    links
}

/// One `RTM_NEWLINK` payload (ifinfomsg + attributes): the link and its master's ifindex.
fn parse_link(payload: &[u8]) -> Option<(Link, Option<u32>)> {
    let ifindex = u32::from_ne_bytes(payload.get(4..8)?.try_into().ok()?);
    let (mut ifname, mut kind, mut master, mut mac, mut peer) =
        (None, String::new(), None, None, None);
    for (ty, value) in attributes(payload.get(IFINFOMSG..)?) {
        match ty {
            IFLA_IFNAME => ifname = Some(c_string(value)),
            IFLA_ADDRESS => mac = value.try_into().ok(),
            IFLA_LINK => {
                peer = value
                    .get(0..4)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_ne_bytes)
            }
            IFLA_MASTER => {
                master = value
                    .get(0..4)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_ne_bytes)
            }
            IFLA_LINKINFO => {
                for (ty, value) in attributes(value) {
                    if ty == IFLA_INFO_KIND {
                        kind = c_string(value);
                    }
                }
            }
            _ => {}
        }
    }
    Some((
        Link {
            ifname: ifname?,
            ifindex,
            kind,
            master: None,
            mac,
            peer_ifindex: peer,
        },
        master,
    ))
}

/// The attributes (type without the nested/byte-order flags, value) in `data`.
fn attributes(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < NLA_HDR {
            return None;
        }
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let ty = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < NLA_HDR || len > data.len() {
            return None;
        }
        let value = &data[NLA_HDR..len];
        data = &data[align4(len).min(data.len())..];
        Some((ty, value))
    })
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nla(ty: u16, value: &[u8]) -> Vec<u8> {
        let mut out = ((NLA_HDR + value.len()) as u16).to_ne_bytes().to_vec();
        out.extend(ty.to_ne_bytes());
        out.extend(value);
        out.resize(align4(out.len()), 0);
        out
    }

    #[test]
    fn a_link_message_gives_name_index_kind_and_master() {
        let mut payload = vec![0u8; IFINFOMSG];
        payload[4..8].copy_from_slice(&7u32.to_ne_bytes());
        payload.extend(nla(IFLA_IFNAME, b"veth-pod\0"));
        payload.extend(nla(IFLA_MASTER, &3u32.to_ne_bytes()));
        payload.extend(nla(IFLA_LINKINFO, &nla(IFLA_INFO_KIND, b"veth\0")));
        let (link, master) = parse_link(&payload).unwrap();
        assert_eq!(
            (
                link.ifname.as_str(),
                link.ifindex,
                link.kind.as_str(),
                master
            ),
            ("veth-pod", 7, "veth", Some(3))
        );
        let bridge = Link {
            ifname: "cni0".into(),
            ifindex: 3,
            kind: "bridge".into(),
            master: None,
            mac: None,
            peer_ifindex: None,
        };
        let links = resolve_masters(vec![link, bridge], vec![(0, 3)]);
        assert_eq!(links[0].master.as_deref(), Some("cni0"));
        // No name: not a link we can use.
        assert!(parse_link(&payload[..IFINFOMSG]).is_none());
        assert!(parse_link(&[0u8; 3]).is_none());
    }
}
