//! A netfilter link: what keeps a program attached to a hook, and what the kernel says about
//! it. Closing its fd is the only way to detach, so dropping the link does.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::{sys::object_info, Hook, NetfilterError};

/// What the kernel reports about a netfilter link (`BPF_OBJ_GET_INFO_BY_FD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    pub link_id: u32,
    pub program_id: u32,
    /// Protocol family (`NFPROTO_IPV4` = 2).
    pub pf: u32,
    /// Hook number (`enum nf_inet_hooks`, see [`Hook`]).
    pub hooknum: u32,
    pub priority: i32,
    pub flags: u32,
}

/// A netfilter link. Dropping it (closing the fd) detaches the program.
#[derive(Debug)]
pub struct NetfilterLink {
    pub(super) fd: OwnedFd,
    pub(super) id: u32,
    pub(super) program_id: u32,
    pub(super) hook: Hook,
    pub(super) priority: i32,
}

impl NetfilterLink {
    /// The kernel's id for the link (`bpftool link show id ID`).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The id of the attached program.
    pub fn program_id(&self) -> u32 {
        self.program_id
    }

    pub fn hook(&self) -> Hook {
        self.hook
    }

    pub fn priority(&self) -> i32 {
        self.priority
    }

    /// Asks the kernel what this link is attached to.
    pub fn query(&self) -> Result<LinkInfo, NetfilterError> {
        let info = object_info(self.fd.as_fd(), "link")?;
        Ok(LinkInfo {
            link_id: info.id,
            program_id: info.third,
            pf: info.netfilter[0],
            hooknum: info.netfilter[1],
            priority: info.netfilter[2] as i32,
            flags: info.netfilter[3],
        })
    }

    /// The link's fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Detaches the program (same as dropping the link).
    pub fn detach(self) {
        drop(self);
    }
}
