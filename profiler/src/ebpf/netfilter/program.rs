//! A loaded netfilter program: attaching it to a hook, in a network namespace if need be, and
//! reading the per-CPU counters in its maps.

use std::{
    collections::HashMap,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
};

use super::{
    elf::MapDef,
    link::NetfilterLink,
    sys::{
        is_permission, object_info, sys_bpf, sys_bpf_fd, zeroed, LinkCreateAttr, MapElemAttr,
        BPF_LINK_CREATE, BPF_LINK_TYPE_NETFILTER, BPF_MAP_LOOKUP_ELEM, BPF_NETFILTER, NFPROTO_IPV4,
    },
    Hook, NetfilterError,
};
use crate::netns;

/// A loaded netfilter program and the maps it uses. Dropping it closes the program fd (links
/// keep the program alive while they exist) and the maps the loader created.
#[derive(Debug)]
pub struct NetfilterProgram {
    pub(super) fd: OwnedFd,
    pub(super) id: u32,
    pub(super) name: String,
    pub(super) maps: HashMap<String, OwnedFd>,
    pub(super) defs: HashMap<String, MapDef>,
}

impl NetfilterProgram {
    /// The program's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kernel's id for the program (`bpftool prog show id ID`).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The program's fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The fd of map `name` (to share it with another loader), if the program uses it.
    pub fn map_fd(&self, name: &str) -> Option<BorrowedFd<'_>> {
        self.maps.get(name).map(AsFd::as_fd)
    }

    /// Attaches the program to `hook` for IPv4 at `priority` in the calling thread's network
    /// namespace.
    pub fn attach(&self, hook: Hook, priority: i32) -> Result<NetfilterLink, NetfilterError> {
        if priority == i32::MIN || priority == i32::MAX {
            return Err(NetfilterError::Priority { priority });
        }
        let mut attr: LinkCreateAttr = zeroed();
        attr.prog_fd = self.fd.as_raw_fd() as u32;
        attr.target_fd = 0;
        attr.attach_type = BPF_NETFILTER;
        attr.nf_pf = NFPROTO_IPV4;
        attr.nf_hooknum = hook as u32;
        attr.nf_priority = priority;
        attr.nf_flags = 0;
        let fd = sys_bpf_fd(BPF_LINK_CREATE, &mut attr).map_err(|source| {
            if is_permission(&source) {
                NetfilterError::PermissionDenied {
                    action: format!("attaching {} to {}", self.name, hook.name()),
                    source,
                }
            } else {
                NetfilterError::Attach {
                    program: self.name.clone(),
                    hook,
                    priority,
                    source,
                }
            }
        })?;
        let info = object_info(fd.as_fd(), "link")?;
        debug_assert_eq!(info.kind, BPF_LINK_TYPE_NETFILTER);
        Ok(NetfilterLink {
            fd,
            id: info.id,
            program_id: info.third,
            hook,
            priority,
        })
    }

    /// [`attach`](Self::attach) inside the `ip netns` namespace `netns` (`None`: the calling
    /// thread's). Briefly moves the calling thread there; on tokio call it from
    /// `spawn_blocking`.
    pub fn attach_in(
        &self,
        netns: Option<&str>,
        hook: Hook,
        priority: i32,
    ) -> Result<NetfilterLink, NetfilterError> {
        match netns {
            Some(name) => netns::run_in(name, || self.attach(hook, priority))?,
            None => self.attach(hook, priority),
        }
    }

    /// Value of slot `key` of the per-CPU `u64` map `map`, summed over all possible CPUs.
    pub fn read_percpu_u64(&self, map: &str, key: u32) -> Result<u64, NetfilterError> {
        let missing = || NetfilterError::MapMissing {
            program: self.name.clone(),
            map: map.to_owned(),
        };
        let fd = self.maps.get(map).ok_or_else(missing)?.as_raw_fd();
        let def = self.defs.get(map).ok_or_else(missing)?;
        if def.value_size != 8 || def.key_size != 4 {
            return Err(missing());
        }
        let cpus = aya::util::nr_cpus().map_err(|(what, source)| NetfilterError::Read {
            what: what.to_owned(),
            source,
        })?;
        // One 8-byte slot per possible CPU (the kernel rounds values up to 8 bytes).
        let mut values = vec![0u64; cpus];
        let mut attr: MapElemAttr = zeroed();
        attr.map_fd = fd as u32;
        attr.key = &key as *const u32 as u64;
        attr.value = values.as_mut_ptr() as u64;
        sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).map_err(|source| NetfilterError::Read {
            what: format!("map {map} slot {key}"),
            source,
        })?;
        Ok(values.iter().fold(0u64, |sum, v| sum.wrapping_add(*v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extreme_priorities_are_refused_before_the_kernel() {
        // No kernel involved: the check comes before BPF_LINK_CREATE. A program struct needs
        // an fd; /dev/null stands in.
        let program = NetfilterProgram {
            fd: std::fs::File::open("/dev/null").unwrap().into(),
            id: 0,
            name: "nf_count".into(),
            maps: HashMap::new(),
            defs: HashMap::new(),
        };
        for priority in [i32::MIN, i32::MAX] {
            let err = program.attach(Hook::LocalOut, priority).unwrap_err();
            assert!(matches!(err, NetfilterError::Priority { .. }), "{err:?}");
        }
    }
}
