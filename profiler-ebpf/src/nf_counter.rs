//! Netfilter counter: counts every IPv4 packet that passes the netfilter hook the program is
//! attached to (the loader picks hook and priority), in a per-CPU array.
//!
//! aya-ebpf 0.2.1 has no macro and no context type for netfilter programs, so the entry point
//! is written by hand: an `extern "C"` function in the `netfilter` section taking the kernel's
//! `struct bpf_nf_ctx *`. The program does not read the packet (that needs the
//! `bpf_dynptr_from_skb` kfunc), so the context stays opaque.
//!
//! Verdict: always `NF_ACCEPT`. Netfilter programs may only return `NF_ACCEPT` or `NF_DROP`;
//! accepting hands the packet on to the next hook function, so the counter never changes what
//! happens to a packet.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use profiler_common::{
    names_match,
    netfilter::{MAP_NAME, PROG_COUNT, SLOT_COUNT, SLOT_PACKETS},
};

#[map]
static NF_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SLOT_COUNT, 0);

const _: () = assert!(names_match(stringify!(NF_COUNTS), MAP_NAME));
const _: () = assert!(names_match(stringify!(nf_count), PROG_COUNT));

/// `NF_ACCEPT` from `include/uapi/linux/netfilter.h`.
const NF_ACCEPT: i32 = 1;

/// The kernel's `struct bpf_nf_ctx { const struct nf_hook_state *state; struct sk_buff *skb; }`.
/// Never dereferenced here; declared so the signature says what the kernel passes.
#[repr(C)]
pub struct BpfNfCtx {
    state: *const core::ffi::c_void,
    skb: *mut core::ffi::c_void,
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "netfilter")]
pub extern "C" fn nf_count(_ctx: *mut BpfNfCtx) -> i32 {
    if let Some(count) = NF_COUNTS.get_ptr_mut(SLOT_PACKETS) {
        // SAFETY: the pointer comes from a successful lookup in a per-CPU array; this CPU's
        // value is only touched by programs running on this CPU, which do not preempt each
        // other here.
        unsafe { *count += 1 };
    }
    NF_ACCEPT
}
