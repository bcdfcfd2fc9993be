//! Which network namespace holds a pod's IP, found on the node itself: on a cluster the
//! orchestrator knows a pod's IP but not the container runtime's name for its namespace.
//!
//! Runtimes leave pod namespaces in two ways: as a bind mount under `/run/netns` (containerd
//! and CRI-O name them `cni-<uuid>` or `<uuid>`), or only as `/proc/PID/ns/net` of the pod's
//! sandbox process (cri-dockerd, and runtimes configured without the mount). Both are searched,
//! each namespace once (by inode), names first; a namespace is entered on a thread of its own
//! and its interface addresses read (`getifaddrs`, which asks the namespace's own netlink).
//! The node's namespace is skipped: a hostNetwork pod's IP is the node's, not a pod's.
//!
//! Reading `/proc/*/ns/net` of the node's processes needs the agent in the host's PID namespace
//! (the DaemonSet sets `hostPID`); without it only `/run/netns` is searched, and the answer
//! says how much was searched so a miss can be told from a blind spot.

use std::{
    collections::BTreeSet,
    ffi::CStr,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::netns::{NetnsError, NetnsHandle, NETNS_RUN_DIR};

/// Where a pod's namespace was found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NetnsSource {
    /// `/run/netns/NAME`: an `ip netns` name the agent can use as it is.
    Named(String),
    /// `/proc/PID/ns/net` only: the agent names it for the time it is attached.
    Process(u32),
}

impl NetnsSource {
    pub fn path(&self) -> PathBuf {
        match self {
            NetnsSource::Named(name) => Path::new(NETNS_RUN_DIR).join(name),
            NetnsSource::Process(pid) => PathBuf::from(format!("/proc/{pid}/ns/net")),
        }
    }
}

impl fmt::Display for NetnsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path().display())
    }
}

/// A pod IP and the namespace (and interface) that holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodNetns {
    pub ip: IpAddr,
    pub netns: NetnsSource,
    pub interface: String,
}

/// What a search found, and how much it looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Located {
    /// Every match, in the order of the IPs asked for (an IP in two namespaces, e.g. a stale
    /// sandbox not yet removed, is listed twice).
    pub found: Vec<PodNetns>,
    pub missing: Vec<IpAddr>,
    /// Namespaces searched under `/run/netns`, and those reachable only through processes.
    pub named_searched: usize,
    pub process_searched: usize,
    /// Namespaces that could not be entered or read, with why (they may hold a missing IP).
    pub unreadable: Vec<String>,
}

impl Located {
    /// Why the IPs in `missing` were not found, for an error message.
    pub fn explain_missing(&self) -> String {
        let ips: Vec<String> = self.missing.iter().map(IpAddr::to_string).collect();
        let mut text = format!(
            "{} in no network namespace on this node (searched {} under {NETNS_RUN_DIR} and {} more \
             through /proc/*/ns/net)",
            ips.join(", "),
            self.named_searched,
            self.process_searched
        );
        if self.process_searched == 0 {
            text.push_str(
                "; no process namespaces were visible: run the agent in the host's PID namespace \
                 (the DaemonSet's hostPID: true)",
            );
        }
        if !self.unreadable.is_empty() {
            text.push_str(&format!("; could not read {}", self.unreadable.join(", ")));
        }
        text.push_str(": is the pod on this node, and Running?");
        text
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PodNetnsError {
    #[error("cannot tell the node's own network namespace apart")]
    Own(#[source] NetnsError),
    #[error("the namespace search thread panicked")]
    Panicked,
}

/// A namespace file and its identity.
struct Candidate {
    source: NetnsSource,
    inode: u64,
}

/// Searches the node's network namespaces for `ips`. `node` is the node's namespace file
/// (skipped); blocks while it enters each namespace in turn, on a thread of its own.
pub fn locate(ips: &[IpAddr], node: &Path) -> Result<Located, PodNetnsError> {
    let skip = std::fs::metadata(node).map(|m| m.ino()).map_err(|source| {
        PodNetnsError::Own(NetnsError::Open {
            path: node.to_owned(),
            source,
        })
    })?;
    let ips = ips.to_vec();
    std::thread::spawn(move || search(&ips, skip, Path::new("/proc")))
        .join()
        .map_err(|_| PodNetnsError::Panicked)
}

fn search(ips: &[IpAddr], skip_inode: u64, proc: &Path) -> Located {
    let mut seen = BTreeSet::from([skip_inode]);
    let mut candidates = Vec::new();
    let mut located = Located::default();
    for source in named_namespaces() {
        if let Ok(meta) = std::fs::metadata(source.path()) {
            if seen.insert(meta.ino()) {
                candidates.push(Candidate {
                    source,
                    inode: meta.ino(),
                });
                located.named_searched += 1;
            }
        }
    }
    for pid in processes(proc) {
        let path = proc.join(pid.to_string()).join("ns/net");
        if let Ok(meta) = std::fs::metadata(&path) {
            if seen.insert(meta.ino()) {
                candidates.push(Candidate {
                    source: NetnsSource::Process(pid),
                    inode: meta.ino(),
                });
                located.process_searched += 1;
            }
        }
    }
    let mut matches: Vec<(usize, PodNetns)> = Vec::new();
    for candidate in &candidates {
        match addresses_in(&candidate.source) {
            Ok(addresses) => {
                for (interface, address) in addresses {
                    if let Some(i) = ips.iter().position(|ip| *ip == address) {
                        matches.push((
                            i,
                            PodNetns {
                                ip: address,
                                netns: candidate.source.clone(),
                                interface,
                            },
                        ));
                    }
                }
            }
            Err(reason) => located.unreadable.push(format!(
                "{} (inode {}): {reason}",
                candidate.source, candidate.inode
            )),
        }
    }
    matches.sort_by(|a, b| (a.0, &a.1.netns).cmp(&(b.0, &b.1.netns)));
    located.missing = ips
        .iter()
        .enumerate()
        .filter(|(i, _)| !matches.iter().any(|(m, _)| m == i))
        .map(|(_, ip)| *ip)
        .collect();
    located.found = matches.into_iter().map(|(_, m)| m).collect();
    located
}

/// `/run/netns/*`, but netprof's own names for namespaces (`netprof.*`: the agent's aliases of
/// namespaces it finds here anyway).
fn named_namespaces() -> Vec<NetnsSource> {
    let Ok(entries) = std::fs::read_dir(NETNS_RUN_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with("netprof."))
        .collect();
    names.sort();
    names.into_iter().map(NetnsSource::Named).collect()
}

/// The pids under `proc`, ascending (a pod's sandbox usually started before its containers).
fn processes(proc: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(proc) else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids
}

/// The addresses of every interface in the namespace at `source` (entered on this thread,
/// which returns to its own namespace before this returns).
fn addresses_in(source: &NetnsSource) -> Result<Vec<(String, IpAddr)>, String> {
    let handle = NetnsHandle::open_path(&source.path()).map_err(|e| e.to_string())?;
    let guard = handle.enter().map_err(|e| e.to_string())?;
    let addresses = interface_addresses().map_err(|e| format!("getifaddrs: {e}"));
    guard.leave().map_err(|e| e.to_string())?;
    addresses
}

/// `getifaddrs(3)` in the calling thread's namespace: (interface, address) pairs.
fn interface_addresses() -> std::io::Result<Vec<(String, IpAddr)>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut next = list;
    while !next.is_null() {
        // SAFETY: a node of the list getifaddrs returned, valid until freeifaddrs.
        let entry = unsafe { &*next };
        next = entry.ifa_next;
        if entry.ifa_addr.is_null() || entry.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points at a sockaddr of the family it names; ifa_name is a C string.
        let (family, name) = unsafe {
            (
                (*entry.ifa_addr).sa_family as i32,
                CStr::from_ptr(entry.ifa_name)
                    .to_string_lossy()
                    .into_owned(),
            )
        };
        let address = match family {
            libc::AF_INET => {
                // SAFETY: AF_INET: the sockaddr is a sockaddr_in.
                let sin = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
            }
            libc::AF_INET6 => {
                // SAFETY: AF_INET6: the sockaddr is a sockaddr_in6.
                let sin6 = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in6) };
                IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
            }
            _ => continue,
        };
        out.push((name, address));
    }
    // SAFETY: the list from getifaddrs above, freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_namespace_lists_loopback() {
        let addresses = interface_addresses().unwrap();
        assert!(
            addresses
                .iter()
                .any(|(name, ip)| name == "lo" && *ip == IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{addresses:?}"
        );
    }

    #[test]
    fn a_miss_says_what_was_searched_and_what_to_check() {
        let located = Located {
            missing: vec!["198.19.1.2".parse().unwrap(), "fd00::2".parse().unwrap()],
            named_searched: 3,
            ..Located::default()
        };
        let text = located.explain_missing();
        assert!(
            text.starts_with("198.19.1.2, fd00::2 in no network namespace on this node (searched 3 under /run/netns and 0 more"),
            "{text}"
        );
        assert!(text.contains("hostPID: true"), "{text}");
        assert!(
            text.ends_with("is the pod on this node, and Running?"),
            "{text}"
        );
    }

    #[test]
    fn sources_name_their_files() {
        assert_eq!(
            NetnsSource::Named("cni-1234".into()).to_string(),
            "/run/netns/cni-1234"
        );
        assert_eq!(NetnsSource::Process(42).to_string(), "/proc/42/ns/net");
        assert_eq!(
            serde_json::to_value(NetnsSource::Process(42)).unwrap(),
            serde_json::json!({"process": 42})
        );
    }
}
