//! The datapath profiler's netfilter checkpoints (`BPF_PROG_TYPE_NETFILTER`), thin entries
//! over the shared step in `checkpoint.rs`. User space links them around the node's iptables
//! tables at `NF_POINT_PRIORITIES`, so consecutive points bracket one table:
//! - `nf_point` at every point but one, and at the gauge (`CP_NF_GAUGE`, one priority after
//!   a FORWARD point: what it measures of netprof is then exactly what every point runs). A
//!   program cannot learn the priority it was linked at
//!   (netfilter links carry no cookie, and netprof's netfilter loader knows no globals), so it
//!   takes its point from the followed packet's journey: the next point attached on its hook
//!   (`ctx->state->hook`) after the journey's last checkpoint (`Config::nf_next_point`). One
//!   program at every point keeps one image of netprof's code on the packet's path, warm in
//!   the instruction cache from one point to the next, where one program per point made 14
//!   copies of the same code on a flannel-vxlan path.
//! - `nf_out_entry` at the first point on LOCAL_OUT (`Config::nf_admit_cp`): a locally sent
//!   packet meets netprof there first, so a packet not followed yet goes to admission there;
//!   every other path starts at a tc checkpoint.
//!
//! A packet that is not followed leaves after its tag check. The skb is `ctx->skb`; its
//! headers are read with `bpf_probe_read_kernel` from `skb->head + skb->network_header` at
//! offsets from `NP_CONFIG`.
//!
//! Verdict: always `NF_ACCEPT` (the packet goes on to the next hook function unchanged).

use aya_ebpf::{macros::map, maps::ProgramArray, EbpfContext};
use profiler_common::{
    datapath::{
        nf_checkpoint_at, nf_resume_index, CP_NONE, MAP_NF_ADMIT, PROG_NF_ADMIT, PROG_NF_OUT_ENTRY,
        PROG_NF_POINT,
    },
    names_match,
};

use crate::{
    checkpoint::{
        admit, close_hand_over, config, followed, hand_over, opaque, record, record_from,
        skb_address, take_hand_over,
    },
    flows::Skb,
};

#[map]
static NP_NF_ADMIT: ProgramArray = ProgramArray::with_max_entries(1, 0);

const _: () = assert!(names_match(stringify!(NP_NF_ADMIT), MAP_NF_ADMIT));
const _: () = assert!(names_match(stringify!(nf_admit), PROG_NF_ADMIT));
const _: () = assert!(names_match(stringify!(nf_point), PROG_NF_POINT));
const _: () = assert!(names_match(stringify!(nf_out_entry), PROG_NF_OUT_ENTRY));

/// `NF_ACCEPT` from `include/uapi/linux/netfilter.h`.
const NF_ACCEPT: i32 = 1;

/// The kernel's `struct bpf_nf_ctx { const struct nf_hook_state *state; struct sk_buff *skb; }`.
#[repr(C)]
pub struct BpfNfCtx {
    pub state: *const core::ffi::c_void,
    pub skb: *const core::ffi::c_void,
}

/// A netfilter program's context, for the tail call (aya-ebpf has no netfilter context type).
struct NfContext(*const BpfNfCtx);

impl EbpfContext for NfContext {
    fn as_ptr(&self) -> *mut core::ffi::c_void {
        self.0 as *mut core::ffi::c_void
    }
}

/// The skb of a netfilter program's context.
#[inline(always)]
fn skb_of(ctx: *const BpfNfCtx) -> u64 {
    // SAFETY: the kernel passes a valid `struct bpf_nf_ctx`; reading `skb` is a context access
    // the verifier allows (8 bytes at offset 8).
    unsafe { (*ctx).skb as u64 }
}

/// The hook a netfilter program runs on: `ctx->state->hook`.
#[inline(always)]
fn hook_of(ctx: *const BpfNfCtx) -> u32 {
    // SAFETY: `state` is a context access the verifier allows (8 bytes at offset 0), typed as
    // `struct nf_hook_state *`, whose first field is `u8 hook` in every kernel with
    // netfilter links; the verifier checks this load against that struct's BTF.
    unsafe { u32::from(core::ptr::read_volatile((*ctx).state as *const u8)) }
}

/// Every point but the admitting one: a followed packet is recorded at the point it reaches
/// next on this hook (see the module's comment).
#[unsafe(no_mangle)]
#[unsafe(link_section = "netfilter")]
pub extern "C" fn nf_point(ctx: *const BpfNfCtx) -> i32 {
    let Some(skb) = skb_address(skb_of(ctx)) else {
        return NF_ACCEPT;
    };
    let Some(slot) = followed(skb) else {
        return NF_ACCEPT;
    };
    let Some(cfg) = config() else {
        return NF_ACCEPT;
    };
    let hook = hook_of(ctx);
    record_from(cfg, slot, skb, |last| {
        // The bound check on the index must stay in the program for the verifier.
        let resume = opaque(nf_resume_index(hook, last));
        nf_checkpoint_at(&cfg.nf_next_point, hook, resume)
    });
    NF_ACCEPT
}

/// The first point on LOCAL_OUT (`Config::nf_admit_cp`): a packet that is not followed yet
/// goes to admission (`nf_admit`, by tail call).
#[unsafe(no_mangle)]
#[unsafe(link_section = "netfilter")]
pub extern "C" fn nf_out_entry(ctx: *const BpfNfCtx) -> i32 {
    let (Some(skb), Some(cfg)) = (skb_address(skb_of(ctx)), config()) else {
        return NF_ACCEPT;
    };
    let cp = cfg.nf_admit_cp;
    if cp == CP_NONE {
        return NF_ACCEPT;
    }
    match followed(skb) {
        Some(slot) => record(cfg, slot, skb, cp),
        None => {
            if let Some(level) = hand_over(skb, cp, 0) {
                // SAFETY: the tail call jumps to `nf_admit`, which returns the verdict, or
                // fails and returns here.
                unsafe { NP_NF_ADMIT.tail_call(&NfContext(ctx), 0) };
                // Still here: no admission program; close the frame it would have taken.
                close_hand_over(level);
            }
        }
    }
    NF_ACCEPT
}

/// Admission for the netfilter checkpoints: reads the handed-over packet's headers and starts
/// its journey if it belongs to a followed flow. Reached by tail call only.
#[unsafe(no_mangle)]
#[unsafe(link_section = "netfilter")]
pub extern "C" fn nf_admit(_ctx: *const BpfNfCtx) -> i32 {
    // First of all: the frame the checkpoint opened is closed whatever happens next.
    let handed = take_hand_over();
    if let (Some(cfg), Some((skb, cp, _))) = (config(), handed) {
        let _ = admit(cfg, skb, cp, &Skb(skb));
    }
    NF_ACCEPT
}
