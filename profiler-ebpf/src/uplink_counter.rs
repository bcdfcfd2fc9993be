//! Uplink counter: tc classifiers that sort every packet crossing one interface into a per-CPU
//! count slot (direction x {ICMP echo request, echo reply, other IPv4, non-IPv4}).
//!
//! Direction: two programs, `count_ingress` and `count_egress`, rather than one program with a
//! read-only global. A global lives in the object's `.rodata`, which all programs of one loaded
//! object share, so a per-attachment direction would mean loading the object twice and getting
//! two separate count maps. Two thin entries over one `#[inline(always)]` body share one map and
//! one load, and the direction is a compile-time constant in each, so nothing is looked up per
//! packet.
//!
//! Verdict: always `TC_ACT_PIPE`. For cls_bpf (clsact) and for TCX alike it means "no opinion,
//! run the next program": the packet continues unmodified, and programs attached after ours
//! (a CNI's, say) still run. `TC_ACT_OK` would end the TCX chain early.

use aya_ebpf::{
    bindings::TC_ACT_PIPE,
    macros::{classifier, map},
    maps::PerCpuArray,
    programs::TcContext,
};
use profiler_common::{
    counter::{
        slot, CLASS_ECHO_REPLY, CLASS_ECHO_REQUEST, CLASS_NON_IPV4, CLASS_OTHER_IPV4,
        DIRECTION_EGRESS, DIRECTION_INGRESS, MAP_NAME, PROG_EGRESS, PROG_INGRESS, SLOT_COUNT,
    },
    names_match,
};

#[map]
static UPLINK_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SLOT_COUNT, 0);

// The loader finds maps and programs by symbol name; keep the symbols and the shared constants
// in step at compile time.
const _: () = assert!(names_match(stringify!(UPLINK_COUNTS), MAP_NAME));
const _: () = assert!(names_match(stringify!(count_ingress), PROG_INGRESS));
const _: () = assert!(names_match(stringify!(count_egress), PROG_EGRESS));

/// Verdict for every packet: continue unmodified (see the module docs).
const VERDICT: i32 = TC_ACT_PIPE;

const ETH_HDR_LEN: usize = 14;
/// Offset of the EtherType inside the Ethernet header.
const ETH_TYPE_OFFSET: usize = 12;
const ETH_P_IP: u16 = 0x0800;
const IPV4_MIN_HDR_LEN: usize = 20;
const IPPROTO_ICMP: u8 = 1;
/// Fragment offset bits of the IPv4 `frag_off` field (the other three are flags).
const IPV4_FRAG_OFFSET_MASK: u16 = 0x1fff;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;

/// The IPv4 header fields the classifier reads. Byte arrays keep the alignment at 1, so a
/// pointer into the packet at any offset is a valid `&Ipv4Head`.
#[repr(C)]
struct Ipv4Head {
    version_ihl: u8,
    tos: u8,
    total_len: [u8; 2],
    id: [u8; 2],
    frag_off: [u8; 2],
    ttl: u8,
    protocol: u8,
    checksum: [u8; 2],
    saddr: [u8; 4],
    daddr: [u8; 4],
}

/// The first bytes of an ICMP header (type, code, checksum).
#[repr(C)]
struct IcmpHead {
    kind: u8,
    code: u8,
    checksum: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<Ipv4Head>() == IPV4_MIN_HDR_LEN);

#[classifier]
pub fn count_ingress(ctx: TcContext) -> i32 {
    try_count(&ctx, DIRECTION_INGRESS).unwrap_or_else(|verdict| verdict)
}

#[classifier]
pub fn count_egress(ctx: TcContext) -> i32 {
    try_count(&ctx, DIRECTION_EGRESS).unwrap_or_else(|verdict| verdict)
}

/// Counts the packet in its slot. `Err` carries the verdict to return as well: the counter
/// never changes what happens to a packet, even when it cannot count it.
#[inline(always)]
fn try_count(ctx: &TcContext, direction: u32) -> Result<i32, i32> {
    let class = classify(ctx);
    let count = UPLINK_COUNTS
        .get_ptr_mut(slot(direction, class))
        .ok_or(VERDICT)?;
    // SAFETY: the pointer comes from a successful lookup in a per-CPU array; this CPU's value
    // is only touched by programs running on this CPU, which do not preempt each other here.
    unsafe { *count += 1 };
    Ok(VERDICT)
}

/// Sorts the packet into one of the `CLASS_*` values. Reads only the linear part of the skb
/// (direct packet access, bounds-checked against `data_end`); tc always has the Ethernet
/// header there, and locally built or GRO-ed IPv4/ICMP headers are there as well. A header
/// that is not is counted as `CLASS_OTHER_IPV4` rather than guessed at.
#[inline(always)]
fn classify(ctx: &TcContext) -> u32 {
    let Some(ether_type) = header::<[u8; 2]>(ctx, ETH_TYPE_OFFSET) else {
        return CLASS_NON_IPV4;
    };
    if u16::from_be_bytes(*ether_type) != ETH_P_IP {
        return CLASS_NON_IPV4;
    }
    let Some(ip) = header::<Ipv4Head>(ctx, ETH_HDR_LEN) else {
        return CLASS_OTHER_IPV4;
    };
    let ihl = usize::from(ip.version_ihl & 0x0f) * 4;
    if ip.version_ihl >> 4 != 4 || ihl < IPV4_MIN_HDR_LEN || ip.protocol != IPPROTO_ICMP {
        return CLASS_OTHER_IPV4;
    }
    // A non-first fragment carries payload where the ICMP header would be.
    if u16::from_be_bytes(ip.frag_off) & IPV4_FRAG_OFFSET_MASK != 0 {
        return CLASS_OTHER_IPV4;
    }
    let Some(icmp) = header::<IcmpHead>(ctx, ETH_HDR_LEN + ihl) else {
        return CLASS_OTHER_IPV4;
    };
    match icmp.kind {
        ICMP_ECHO_REQUEST => CLASS_ECHO_REQUEST,
        ICMP_ECHO_REPLY => CLASS_ECHO_REPLY,
        _ => CLASS_OTHER_IPV4,
    }
}

/// A `T` at `offset` bytes into the packet, if all of it lies before `data_end`.
/// `T` must have alignment 1 and no invalid bit patterns (only `u8` fields and arrays of them).
#[inline(always)]
fn header<T>(ctx: &TcContext, offset: usize) -> Option<&T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    // SAFETY: the range [start + offset, start + offset + size_of::<T>()) was just checked to
    // lie inside the packet; `T` is made of bytes only, so any content and alignment is valid.
    Some(unsafe { &*((start + offset) as *const T) })
}
