//! The datapath profiler's netfilter checkpoints: one `BPF_PROG_TYPE_NETFILTER` program per
//! (hook, point) of the contract (`NF_PROGRAMS[hook][point]`, checkpoint id
//! `nf_checkpoint(hook, point)`), each a thin entry over the shared step in `checkpoint.rs`.
//! User space attaches `NF_PROGRAMS[hook][point]` to `hook` at `NF_POINT_PRIORITIES[point]`, so
//! consecutive points bracket one iptables table.
//!
//! The checkpoint id is a constant in each program (no globals: netprof's netfilter loader has
//! none), which is why there are 35 programs rather than one. A packet that is not followed
//! leaves after its tag check. Only LOCAL_OUT programs carry admission code, and only
//! `Config::nf_admit_cp` (the first point attached there) uses it: a locally sent packet meets
//! netprof there first; every other path starts at a tc checkpoint.
//!
//! The skb is `ctx->skb`; its headers are read with `bpf_probe_read_kernel` from
//! `skb->head + skb->network_header` at offsets from `NP_CONFIG`.
//!
//! Verdict: always `NF_ACCEPT` (the packet goes on to the next hook function unchanged).

use aya_ebpf::{macros::map, maps::ProgramArray, EbpfContext};
use profiler_common::{
    datapath::{
        nf_checkpoint, CP_NF_GAUGE, MAP_NF_ADMIT, NF_HOOK_COUNT, NF_HOOK_LOCAL_OUT, NF_POINT_COUNT,
        NF_PROGRAMS, PROG_NF_ADMIT, PROG_NF_GAUGE,
    },
    names_match,
};

use crate::{
    checkpoint::{
        admit, close_hand_over, config, followed, hand_over, record, skb_address, take_hand_over,
        visit,
    },
    flows::Skb,
};

#[map]
static NP_NF_ADMIT: ProgramArray = ProgramArray::with_max_entries(1, 0);

const _: () = assert!(names_match(stringify!(NP_NF_ADMIT), MAP_NF_ADMIT));
const _: () = assert!(names_match(stringify!(nf_admit), PROG_NF_ADMIT));
const _: () = assert!(names_match(stringify!(nf_gauge), PROG_NF_GAUGE));

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

/// Netfilter checkpoint `cp` of a hook where no path starts.
#[inline(always)]
fn nf_visit(ctx: *const BpfNfCtx, cp: u16) -> i32 {
    visit(skb_of(ctx), cp);
    NF_ACCEPT
}

/// Netfilter checkpoint `cp` on LOCAL_OUT: when it is `Config::nf_admit_cp`, a packet that
/// is not followed yet goes to admission (`nf_admit`, by tail call).
#[inline(always)]
fn nf_visit_local_out(ctx: *const BpfNfCtx, cp: u16) -> i32 {
    let (Some(skb), Some(cfg)) = (skb_address(skb_of(ctx)), config()) else {
        return NF_ACCEPT;
    };
    match followed(skb) {
        Some(slot) => record(cfg, slot, skb, cp),
        None if cfg.nf_admit_cp == cp => {
            if let Some(level) = hand_over(skb, cp, 0) {
                // SAFETY: the tail call jumps to `nf_admit`, which returns the verdict, or
                // fails and returns here.
                unsafe { NP_NF_ADMIT.tail_call(&NfContext(ctx), 0) };
                // Still here: no admission program; close the frame it would have taken.
                close_hand_over(level);
            }
        }
        None => {}
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

/// The gauge (`CP_NF_GAUGE`): a checkpoint like any other on FORWARD, one priority after a
/// point, so the segment between them is two runs' worth of netprof and nothing else.
#[unsafe(no_mangle)]
#[unsafe(link_section = "netfilter")]
pub extern "C" fn nf_gauge(ctx: *const BpfNfCtx) -> i32 {
    nf_visit(ctx, CP_NF_GAUGE)
}

/// `nf_programs!((name, hook, point), ...)`: one netfilter program per tuple, checked against
/// the contract's `NF_PROGRAMS` table at compile time.
macro_rules! nf_programs {
    ($(($name:ident, $hook:literal, $point:literal)),* $(,)?) => {
        $(
            const _: () = assert!($hook < NF_HOOK_COUNT && $point < NF_POINT_COUNT);
            const _: () = assert!(names_match(
                stringify!($name),
                NF_PROGRAMS[$hook as usize][$point as usize]
            ));

            #[unsafe(no_mangle)]
            #[unsafe(link_section = "netfilter")]
            pub extern "C" fn $name(ctx: *const BpfNfCtx) -> i32 {
                const CP: u16 = nf_checkpoint($hook, $point);
                if $hook == NF_HOOK_LOCAL_OUT {
                    nf_visit_local_out(ctx, CP)
                } else {
                    nf_visit(ctx, CP)
                }
            }
        )*
        /// Every (hook, point) has its program.
        const _: () = assert!(
            [$(($hook, $point)),*].len() == (NF_HOOK_COUNT * NF_POINT_COUNT) as usize
        );
    };
}

nf_programs!(
    (nf_h0_p0, 0, 0),
    (nf_h0_p1, 0, 1),
    (nf_h0_p2, 0, 2),
    (nf_h0_p3, 0, 3),
    (nf_h0_p4, 0, 4),
    (nf_h0_p5, 0, 5),
    (nf_h0_p6, 0, 6),
    (nf_h1_p0, 1, 0),
    (nf_h1_p1, 1, 1),
    (nf_h1_p2, 1, 2),
    (nf_h1_p3, 1, 3),
    (nf_h1_p4, 1, 4),
    (nf_h1_p5, 1, 5),
    (nf_h1_p6, 1, 6),
    (nf_h2_p0, 2, 0),
    (nf_h2_p1, 2, 1),
    (nf_h2_p2, 2, 2),
    (nf_h2_p3, 2, 3),
    (nf_h2_p4, 2, 4),
    (nf_h2_p5, 2, 5),
    (nf_h2_p6, 2, 6),
    (nf_h3_p0, 3, 0),
    (nf_h3_p1, 3, 1),
    (nf_h3_p2, 3, 2),
    (nf_h3_p3, 3, 3),
    (nf_h3_p4, 3, 4),
    (nf_h3_p5, 3, 5),
    (nf_h3_p6, 3, 6),
    (nf_h4_p0, 4, 0),
    (nf_h4_p1, 4, 1),
    (nf_h4_p2, 4, 2),
    (nf_h4_p3, 4, 3),
    (nf_h4_p4, 4, 4),
    (nf_h4_p5, 4, 5),
    (nf_h4_p6, 4, 6),
);
