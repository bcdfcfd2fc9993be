//! The few system calls the feature probe makes, by hand: loading a two-instruction program of a
//! given type (`bpf(BPF_PROG_LOAD)`), linking it (`BPF_LINK_CREATE`, `BPF_RAW_TRACEPOINT_OPEN`),
//! and the two rtnetlink requests of a clsact attach (qdisc, then a direct-action `bpf` filter).
//! aya cannot load a program that is not in an ELF object, and the probe must not depend on
//! netprof's own programs passing the verifier: it asks only whether the kernel has the hook.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, BorrowedFd, OwnedFd},
};

use crate::ebpf::clsact::{request_acked, CLSACT_HANDLE, CLSACT_INGRESS, TC_H_CLSACT};
use crate::ebpf::netfilter::{sys_bpf_fd, zeroed, ATTR_SIZE};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_LINK_CREATE: libc::c_long = 28;

pub const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
pub const BPF_PROG_TYPE_TRACING: u32 = 26;
pub const BPF_PROG_TYPE_NETFILTER: u32 = 32;

pub const BPF_TRACE_FENTRY: u32 = 24;
pub const BPF_NETFILTER: u32 = 45;
pub const BPF_TCX_INGRESS: u32 = 46;

pub const NFPROTO_IPV4: u32 = 2;
pub const NF_INET_LOCAL_IN: u32 = 1;

/// `union bpf_attr` for `BPF_PROG_LOAD`, up to `attach_btf_obj_fd`.
#[repr(C)]
#[derive(Clone, Copy)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_btf_obj_fd: u32,
    _pad: [u8; ATTR_SIZE - 116],
}

/// `union bpf_attr` for `BPF_LINK_CREATE`: target, type, flags, then the type's own members
/// (netfilter: pf, hooknum, priority, flags; TCX: relative fd and revision, left zero).
#[repr(C)]
#[derive(Clone, Copy)]
struct LinkCreateAttr {
    prog_fd: u32,
    target: u32,
    attach_type: u32,
    flags: u32,
    extra: [u32; 4],
    _pad: [u8; ATTR_SIZE - 32],
}

/// `union bpf_attr` for `BPF_RAW_TRACEPOINT_OPEN` (a tracing program attaches to its BTF target).
#[repr(C)]
#[derive(Clone, Copy)]
struct RawTracepointAttr {
    name: u64,
    prog_fd: u32,
    _pad: [u8; ATTR_SIZE - 12],
}

const _: () = assert!(size_of::<ProgLoadAttr>() == ATTR_SIZE);
const _: () = assert!(size_of::<LinkCreateAttr>() == ATTR_SIZE);
const _: () = assert!(size_of::<RawTracepointAttr>() == ATTR_SIZE);

/// `r0 = verdict; exit`: the smallest program of any type.
fn return_insns(verdict: i32) -> [u64; 2] {
    // BPF_ALU64 | BPF_MOV | BPF_K, dst r0; then BPF_JMP | BPF_EXIT.
    let mov = 0xb7u64 | ((verdict as u32 as u64) << 32);
    [mov, 0x95]
}

/// What a program load needs beyond its type.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProgSpec<'a> {
    pub prog_type: u32,
    pub expected_attach_type: u32,
    /// BTF id of the traced function (tracing programs).
    pub attach_btf_id: u32,
    /// The module's BTF object when the function is a module's (`None`: vmlinux's).
    pub attach_btf_object: Option<BorrowedFd<'a>>,
    pub verdict: i32,
}

/// Loads `r0 = verdict; exit` as `spec` says. The error carries the verifier's log when it has
/// one (a refusal for the program type shows there, not in errno alone).
pub fn load(spec: ProgSpec<'_>) -> Result<OwnedFd, String> {
    let insns = return_insns(spec.verdict);
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let mut attr: ProgLoadAttr = zeroed();
    attr.prog_type = spec.prog_type;
    attr.insn_cnt = insns.len() as u32;
    attr.insns = insns.as_ptr() as u64;
    attr.license = license.as_ptr() as u64;
    attr.log_level = 1;
    attr.log_size = log.len() as u32;
    attr.log_buf = log.as_mut_ptr() as u64;
    attr.prog_name[..13].copy_from_slice(b"netprof_probe");
    attr.expected_attach_type = spec.expected_attach_type;
    attr.attach_btf_id = spec.attach_btf_id;
    attr.attach_btf_obj_fd = spec.attach_btf_object.map_or(0, |fd| fd.as_raw_fd() as u32);
    sys_bpf_fd(BPF_PROG_LOAD, &mut attr).map_err(|err| {
        let text = String::from_utf8_lossy(&log);
        let text = text.trim_end_matches('\0').trim();
        let last = text.lines().last().unwrap_or_default();
        if last.is_empty() {
            format!("the kernel refused to load it: {}", describe(&err))
        } else {
            format!("the kernel refused to load it: {} ({last})", describe(&err))
        }
    })
}

/// `BPF_LINK_CREATE` of `prog` on `target` (an ifindex, or 0) with the type's members.
pub fn link(prog: &OwnedFd, target: u32, attach_type: u32, extra: [u32; 4]) -> io::Result<OwnedFd> {
    let mut attr: LinkCreateAttr = zeroed();
    attr.prog_fd = prog.as_raw_fd() as u32;
    attr.target = target;
    attr.attach_type = attach_type;
    attr.extra = extra;
    sys_bpf_fd(BPF_LINK_CREATE, &mut attr)
}

/// Attaches a tracing program (fentry) to the function it was loaded for.
pub fn attach_tracing(prog: &OwnedFd) -> io::Result<OwnedFd> {
    let mut attr: RawTracepointAttr = zeroed();
    attr.prog_fd = prog.as_raw_fd() as u32;
    sys_bpf_fd(BPF_RAW_TRACEPOINT_OPEN, &mut attr)
}

/// errno with its name, which is what a kernel developer searches for.
pub fn describe(err: &io::Error) -> String {
    let name = match err.raw_os_error() {
        Some(libc::EPERM) => "EPERM",
        Some(libc::EACCES) => "EACCES",
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::E2BIG) => "E2BIG",
        Some(libc::EOPNOTSUPP) => "EOPNOTSUPP",
        Some(ENOTSUPP) => "ENOTSUPP",
        Some(libc::EEXIST) => "EEXIST",
        Some(libc::ENODEV) => "ENODEV",
        _ => return err.to_string(),
    };
    format!("{name}: {err}")
}

/// Linux's internal ENOTSUPP, which bpf(2) returns for attach types a kernel lacks.
const ENOTSUPP: i32 = 524;

// ---- rtnetlink: a clsact qdisc and a direct-action bpf filter ----

const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_BPF_FD: u16 = 6;
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_FLAGS: u16 = 8;
const TCA_BPF_FLAG_ACT_DIRECT: u32 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const ETH_P_ALL: u16 = 0x0003;

fn push_attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// An rtnetlink tc message: header, `struct tcmsg`, then `attrs`.
fn tc_message(
    kind: u16,
    ifindex: u32,
    handle: u32,
    parent: u32,
    info: u32,
    attrs: &[u8],
) -> Vec<u8> {
    let flags =
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    let mut buf = Vec::with_capacity(64 + attrs.len());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set below
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
    buf.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    buf.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    buf.extend_from_slice(&handle.to_ne_bytes());
    buf.extend_from_slice(&parent.to_ne_bytes());
    buf.extend_from_slice(&info.to_ne_bytes());
    buf.extend_from_slice(attrs);
    let len = buf.len() as u32;
    buf[..4].copy_from_slice(&len.to_ne_bytes());
    buf
}

/// Adds a clsact qdisc to `ifindex`.
pub fn add_clsact(ifindex: u32) -> io::Result<()> {
    let mut attrs = Vec::new();
    push_attr(&mut attrs, TCA_KIND, b"clsact\0");
    request_acked(&tc_message(
        libc::RTM_NEWQDISC,
        ifindex,
        CLSACT_HANDLE,
        TC_H_CLSACT,
        0,
        &attrs,
    ))
}

/// Attaches `prog` as a direct-action `bpf` filter on the clsact ingress of `ifindex`.
pub fn add_bpf_filter(ifindex: u32, prog: &OwnedFd) -> io::Result<()> {
    let mut options = Vec::new();
    push_attr(
        &mut options,
        TCA_BPF_FD,
        &(prog.as_raw_fd() as u32).to_ne_bytes(),
    );
    push_attr(&mut options, TCA_BPF_NAME, b"netprof_probe\0");
    push_attr(
        &mut options,
        TCA_BPF_FLAGS,
        &TCA_BPF_FLAG_ACT_DIRECT.to_ne_bytes(),
    );
    let mut attrs = Vec::new();
    push_attr(&mut attrs, TCA_KIND, b"bpf\0");
    push_attr(&mut attrs, TCA_OPTIONS | NLA_F_NESTED, &options);
    // Priority 1, every protocol (`TC_H_MAKE(prio << 16, htons(ETH_P_ALL))`).
    let info = (1u32 << 16) | u32::from(ETH_P_ALL.to_be());
    request_acked(&tc_message(
        libc::RTM_NEWTFILTER,
        ifindex,
        0,
        CLSACT_INGRESS,
        info,
        &attrs,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_instructions_return_the_verdict() {
        assert_eq!(return_insns(1), [0x0000_0001_0000_00b7, 0x95]);
        assert_eq!(return_insns(-1)[0] >> 32, 0xffff_ffff);
    }

    #[test]
    fn attributes_are_padded_to_four_bytes() {
        let mut buf = Vec::new();
        push_attr(&mut buf, TCA_KIND, b"bpf\0");
        push_attr(&mut buf, TCA_KIND, b"clsact\0");
        assert_eq!(buf.len(), 8 + 12);
        assert_eq!(&buf[..4], &[8, 0, 1, 0]);
        let message = tc_message(libc::RTM_NEWQDISC, 1, CLSACT_HANDLE, TC_H_CLSACT, 0, &buf);
        assert_eq!(message.len(), 16 + 20 + 20);
        assert_eq!(u32::from_ne_bytes(message[..4].try_into().unwrap()), 56);
    }
}
