//! The `bpf(2)` interface as netprof's hand-written loaders use it (this one, the tracing and
//! BTF loaders, the feature probes), for what aya does not expose.
//!
//! The attribute structs mirror `union bpf_attr` in `include/uapi/linux/bpf.h`; each is
//! zero-padded to [`ATTR_SIZE`] bytes, which the kernel accepts as long as the bytes past the
//! fields it knows are zero.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
};

use super::NetfilterError;

// uapi constants (include/uapi/linux/bpf.h, netfilter.h, netfilter_ipv4.h).

pub(super) const BPF_MAP_CREATE: libc::c_long = 0;
pub(super) const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
pub(super) const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
/// `BPF_MAP_TYPE_PROG_ARRAY` in `enum bpf_map_type`.
pub(super) const BPF_MAP_TYPE_PROG_ARRAY: u32 = 3;
pub(crate) const BPF_PROG_LOAD: libc::c_long = 5;
pub(crate) const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
pub(super) const BPF_LINK_CREATE: libc::c_long = 28;

/// `BPF_PROG_TYPE_NETFILTER` in `enum bpf_prog_type`.
pub const BPF_PROG_TYPE_NETFILTER: u32 = 32;
/// `BPF_NETFILTER` in `enum bpf_attach_type`.
pub const BPF_NETFILTER: u32 = 45;
/// `BPF_LINK_TYPE_NETFILTER` in `enum bpf_link_type`.
pub const BPF_LINK_TYPE_NETFILTER: u32 = 10;
/// `NFPROTO_IPV4`.
pub const NFPROTO_IPV4: u32 = 2;

/// Bytes every attr struct is padded to (more than any command used here needs).
pub const ATTR_SIZE: usize = 128;

/// `union bpf_attr` for `BPF_MAP_CREATE` (first fields only).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MapCreateAttr {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub map_flags: u32,
    pub inner_map_fd: u32,
    pub numa_node: u32,
    pub map_name: [u8; 16],
    pub _pad: [u8; ATTR_SIZE - 44],
}

/// `union bpf_attr` for `BPF_MAP_*_ELEM`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct MapElemAttr {
    pub map_fd: u32,
    pub _pad0: u32,
    pub key: u64,
    pub value: u64,
    pub flags: u64,
    pub _pad: [u8; ATTR_SIZE - 32],
}

/// `union bpf_attr` for `BPF_PROG_LOAD` (up to `expected_attach_type`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ProgLoadAttr {
    pub prog_type: u32,
    pub insn_cnt: u32,
    pub insns: u64,
    pub license: u64,
    pub log_level: u32,
    pub log_size: u32,
    pub log_buf: u64,
    pub kern_version: u32,
    pub prog_flags: u32,
    pub prog_name: [u8; 16],
    pub prog_ifindex: u32,
    pub expected_attach_type: u32,
    pub _pad: [u8; ATTR_SIZE - 72],
}

/// `union bpf_attr` for `BPF_LINK_CREATE` with the `netfilter` member.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LinkCreateAttr {
    pub prog_fd: u32,
    pub target_fd: u32,
    pub attach_type: u32,
    pub flags: u32,
    pub nf_pf: u32,
    pub nf_hooknum: u32,
    pub nf_priority: i32,
    pub nf_flags: u32,
    pub _pad: [u8; ATTR_SIZE - 32],
}

/// `union bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct InfoAttr {
    pub bpf_fd: u32,
    pub info_len: u32,
    pub info: u64,
    pub _pad: [u8; ATTR_SIZE - 16],
}

const _: () = assert!(size_of::<MapCreateAttr>() == ATTR_SIZE);
const _: () = assert!(size_of::<MapElemAttr>() == ATTR_SIZE);
const _: () = assert!(size_of::<ProgLoadAttr>() == ATTR_SIZE);
const _: () = assert!(size_of::<LinkCreateAttr>() == ATTR_SIZE);
const _: () = assert!(size_of::<InfoAttr>() == ATTR_SIZE);

/// All-zero value of an attr struct (every field is an integer or a byte array).
pub(crate) fn zeroed<T: Copy>() -> T {
    // SAFETY: only used on the `#[repr(C)]` attr structs above, whose fields are all integers
    // or byte arrays, for which all-zero bytes are valid.
    unsafe { std::mem::zeroed() }
}

/// `bpf(cmd, attr, size_of(attr))`; returns the non-negative result.
pub(crate) fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live `#[repr(C)]` bpf_attr mirror of `size_of::<T>()` bytes; the
    // kernel reads at most that many and writes only into buffers the attr points at, which
    // the callers keep alive across the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// [`sys_bpf`] for commands returning a new file descriptor.
pub(crate) fn sys_bpf_fd<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    let fd = sys_bpf(cmd, attr)?;
    // SAFETY: on success these commands return a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Copies `name` into a kernel object name (at most 15 bytes, NUL-terminated).
pub(crate) fn object_name(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (dst, src) in out.iter_mut().zip(
        name.bytes()
            .filter(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.')
            .take(15),
    ) {
        *dst = src;
    }
    out
}

pub(crate) fn is_permission(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EPERM | libc::EACCES))
}

/// The first fields of `struct bpf_prog_info` / `struct bpf_link_info`.
#[derive(Debug, Clone, Copy)]
pub(super) struct ObjectInfo {
    /// `type` of a link (unused for programs: there it is the program type).
    pub(super) kind: u32,
    pub(super) id: u32,
    /// `prog_id` of a link.
    pub(super) third: u32,
    /// For a netfilter link: the `netfilter` member of `bpf_link_info`'s union (offset 16):
    /// pf, hooknum, priority, flags.
    pub(super) netfilter: [u32; 4],
}

pub(super) fn object_info(fd: BorrowedFd<'_>, what: &str) -> Result<ObjectInfo, NetfilterError> {
    /// The first 32 bytes of the info struct, 8-aligned like the kernel's.
    #[repr(C, align(8))]
    struct InfoBuf([u32; 8]);
    // Ask for the first 32 bytes only; the kernel fills up to info_len.
    let mut info = InfoBuf([0; 8]);
    let mut attr: InfoAttr = zeroed();
    attr.bpf_fd = fd.as_raw_fd() as u32;
    attr.info_len = size_of::<InfoBuf>() as u32;
    attr.info = info.0.as_mut_ptr() as u64;
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map_err(|source| NetfilterError::Read {
        what: format!("the {what}'s info"),
        source,
    })?;
    let word = |i: usize| info.0[i];
    Ok(ObjectInfo {
        kind: word(0),
        id: word(1),
        third: word(2),
        netfilter: [word(4), word(5), word(6), word(7)],
    })
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use super::*;

    #[test]
    fn attr_layouts_match_the_uapi() {
        // union bpf_attr, BPF_PROG_LOAD member.
        assert_eq!(offset_of!(ProgLoadAttr, insn_cnt), 4);
        assert_eq!(offset_of!(ProgLoadAttr, insns), 8);
        assert_eq!(offset_of!(ProgLoadAttr, license), 16);
        assert_eq!(offset_of!(ProgLoadAttr, log_level), 24);
        assert_eq!(offset_of!(ProgLoadAttr, log_size), 28);
        assert_eq!(offset_of!(ProgLoadAttr, log_buf), 32);
        assert_eq!(offset_of!(ProgLoadAttr, kern_version), 40);
        assert_eq!(offset_of!(ProgLoadAttr, prog_flags), 44);
        assert_eq!(offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(offset_of!(ProgLoadAttr, prog_ifindex), 64);
        assert_eq!(offset_of!(ProgLoadAttr, expected_attach_type), 68);
        // BPF_LINK_CREATE: prog_fd, target_fd, attach_type, flags, then the netfilter struct.
        assert_eq!(offset_of!(LinkCreateAttr, target_fd), 4);
        assert_eq!(offset_of!(LinkCreateAttr, attach_type), 8);
        assert_eq!(offset_of!(LinkCreateAttr, flags), 12);
        assert_eq!(offset_of!(LinkCreateAttr, nf_pf), 16);
        assert_eq!(offset_of!(LinkCreateAttr, nf_hooknum), 20);
        assert_eq!(offset_of!(LinkCreateAttr, nf_priority), 24);
        assert_eq!(offset_of!(LinkCreateAttr, nf_flags), 28);
        // BPF_MAP_CREATE.
        assert_eq!(offset_of!(MapCreateAttr, map_flags), 16);
        assert_eq!(offset_of!(MapCreateAttr, map_name), 28);
        // BPF_MAP_LOOKUP_ELEM: map_fd, (pad), key, value, flags.
        assert_eq!(offset_of!(MapElemAttr, key), 8);
        assert_eq!(offset_of!(MapElemAttr, value), 16);
        assert_eq!(offset_of!(MapElemAttr, flags), 24);
        assert_eq!(offset_of!(InfoAttr, info), 8);
        for size in [
            size_of::<ProgLoadAttr>(),
            size_of::<LinkCreateAttr>(),
            size_of::<MapCreateAttr>(),
            size_of::<MapElemAttr>(),
            size_of::<InfoAttr>(),
        ] {
            assert_eq!(size, ATTR_SIZE);
        }
    }
}
