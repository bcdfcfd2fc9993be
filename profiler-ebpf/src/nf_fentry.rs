//! The netfilter fallback for kernels without netfilter links (before 6.4; contract:
//! `profiler_common::datapath::NF_TRACED`): fentry/fexit on conntrack (`nf_conntrack_in`) and
//! on the table walkers, `ipt_do_table` (iptables-legacy) and `nft_do_chain` (nftables and
//! iptables-nft). A function's entry and exit record the checkpoints of the two netfilter
//! points around its priority (`nf_points_around`), so segments and stages come out named as
//! with the links.
//!
//! These functions run for every namespace and protocol family, so a pass counts only when
//! `state->net` is the node's namespace and `state->pf` is IPv4. Argument positions and struct
//! offsets come from `NP_CONFIG` (user space reads them from BTF: `ipt_do_table` changed its
//! signature in 5.19).
//!
//! Netfilter links are preferred where they exist, and some kernels refuse fentry programs
//! (EPERM) anyway, so these programs are loaded only where the links fail, or when asked for
//! (`--hooks nf-fentry`); the agent reports a refusal as "not measured".

use aya_ebpf::{
    macros::{btf_tracepoint, fentry, fexit},
    programs::{BtfTracePointContext, FEntryContext, FExitContext},
    EbpfContext,
};
use profiler_common::{
    datapath::{
        nf_checkpoint, nf_points_around, Config, ARG_CT_SKB, ARG_CT_STATE, ARG_IPT_SKB,
        ARG_IPT_STATE, ARG_IPT_TABLE, ARG_NFT_CHAIN, ARG_NFT_PKT, CP_NONE, NF_HOOK_COUNT,
        NF_PRI_CONNTRACK, PROG_FENTRY_CT, PROG_FENTRY_IPT, PROG_FENTRY_NFT, PROG_FEXIT_CT,
        PROG_FEXIT_IPT, PROG_FEXIT_NFT, VERIFIER_TWINS,
    },
    names_match,
};

use crate::{
    checkpoint::{config, followed, probe_read_counted, record, skb_address, visit_admitting},
    flows::Skb,
};

const _: () = assert!(names_match(stringify!(cp_fe_ct), PROG_FENTRY_CT));
const _: () = assert!(names_match(stringify!(cp_fx_ct), PROG_FEXIT_CT));
const _: () = assert!(names_match(stringify!(cp_fe_ipt), PROG_FENTRY_IPT));
const _: () = assert!(names_match(stringify!(cp_fx_ipt), PROG_FEXIT_IPT));
const _: () = assert!(names_match(stringify!(cp_fe_nft), PROG_FENTRY_NFT));
const _: () = assert!(names_match(stringify!(cp_fx_nft), PROG_FEXIT_NFT));

const _: () = assert!(names_match(stringify!(cp_vt_ct), VERIFIER_TWINS[0].0));
const _: () = assert!(names_match(stringify!(cp_vt_ipt), VERIFIER_TWINS[1].0));
const _: () = assert!(names_match(stringify!(cp_vt_nft), VERIFIER_TWINS[2].0));

/// `NFPROTO_IPV4`.
const NFPROTO_IPV4: u8 = 2;

#[derive(Clone, Copy)]
enum Edge {
    Entry,
    Exit,
}

/// Argument `index` (a position from `Config::fentry_args`) of a function taking `ARITY`
/// arguments (at most 3), from an fentry, fexit or tp_btf context: an array of u64s.
///
/// The verifier allows context reads at constant offsets only, and never past the traced
/// function's arguments, even on a branch the configuration never takes. So each argument is
/// read once at its constant offset (volatile: the compiler must not merge the reads into one
/// indexed read, which it does for a plain `match`), then one is picked.
#[inline(always)]
fn arg_at<const ARITY: u8, C: EbpfContext>(ctx: &C, index: u8) -> Option<u64> {
    let args = ctx.as_ptr() as *const u64;
    // SAFETY: the context of these program types holds the traced function's arguments as
    // u64s; only the first ARITY are read.
    let read = |n: usize| unsafe { core::ptr::read_volatile(args.add(n)) };
    let (a0, a1) = (read(0), read(1));
    let a2 = if ARITY > 2 { read(2) } else { 0 };
    match index {
        0 => Some(a0),
        1 => Some(a1),
        2 if ARITY > 2 => Some(a2),
        _ => None,
    }
}

/// `nf_conntrack_in(skb, state)`, `nft_do_chain(pkt, priv)`, `ipt_do_table` (three).
const CT_ARITY: u8 = 2;
const NFT_ARITY: u8 = 2;
const IPT_ARITY: u8 = 3;

// ---- conntrack ----

#[fentry(function = "nf_conntrack_in")]
pub fn cp_fe_ct(ctx: FEntryContext) -> i32 {
    conntrack(&ctx, Edge::Entry);
    0
}

#[fexit(function = "nf_conntrack_in")]
pub fn cp_fx_ct(ctx: FExitContext) -> i32 {
    conntrack(&ctx, Edge::Exit);
    0
}

#[inline(always)]
fn conntrack<C: EbpfContext>(ctx: &C, edge: Edge) {
    let Some(cfg) = config() else { return };
    let skb = arg_at::<CT_ARITY, C>(ctx, cfg.fentry_args[ARG_CT_SKB]);
    let state = arg_at::<CT_ARITY, C>(ctx, cfg.fentry_args[ARG_CT_STATE]);
    if let (Some(skb), Some(state)) = (skb, state) {
        pass(cfg, skb, state, NF_PRI_CONNTRACK, edge);
    }
}

// ---- iptables-legacy ----

#[fentry(function = "ipt_do_table")]
pub fn cp_fe_ipt(ctx: FEntryContext) -> i32 {
    iptables(&ctx, Edge::Entry);
    0
}

#[fexit(function = "ipt_do_table")]
pub fn cp_fx_ipt(ctx: FExitContext) -> i32 {
    iptables(&ctx, Edge::Exit);
    0
}

#[inline(always)]
fn iptables<C: EbpfContext>(ctx: &C, edge: Edge) {
    let Some(cfg) = config() else { return };
    if cfg.xt_table_priority == 0 {
        return;
    }
    let skb = arg_at::<IPT_ARITY, C>(ctx, cfg.fentry_args[ARG_IPT_SKB]);
    let state = arg_at::<IPT_ARITY, C>(ctx, cfg.fentry_args[ARG_IPT_STATE]);
    let table = arg_at::<IPT_ARITY, C>(ctx, cfg.fentry_args[ARG_IPT_TABLE]);
    let (Some(skb), Some(state), Some(table)) = (skb, state, table) else {
        return;
    };
    let Some(priority) = probe_read_counted::<i32>(table + u64::from(cfg.xt_table_priority)) else {
        return;
    };
    pass(cfg, skb, state, priority, edge);
}

// ---- nftables, iptables-nft ----

#[fentry(function = "nft_do_chain")]
pub fn cp_fe_nft(ctx: FEntryContext) -> i32 {
    nftables(&ctx, Edge::Entry);
    0
}

#[fexit(function = "nft_do_chain")]
pub fn cp_fx_nft(ctx: FExitContext) -> i32 {
    nftables(&ctx, Edge::Exit);
    0
}

#[inline(always)]
fn nftables<C: EbpfContext>(ctx: &C, edge: Edge) {
    let Some(cfg) = config() else { return };
    // The chain sits inside its `struct nft_base_chain`, after the hook ops holding the
    // priority (`nft_do_chain` runs base chains only; jumps stay inside it). 0: unknown. The
    // bound also lets the verifier accept the arithmetic on a trusted pointer (its limit is
    // ±2^29; struct offsets are far smaller).
    let back = cfg.nft_chain_priority;
    if !(-4096..0).contains(&back) {
        return;
    }
    let pkt = arg_at::<NFT_ARITY, C>(ctx, cfg.fentry_args[ARG_NFT_PKT]);
    let chain = arg_at::<NFT_ARITY, C>(ctx, cfg.fentry_args[ARG_NFT_CHAIN]);
    let (Some(pkt), Some(chain)) = (pkt, chain) else {
        return;
    };
    // One read at a time, leaving at the first failure: with the three reads' results matched
    // together, LLVM emitted code that reads a register a helper call had clobbered on a path
    // only the correlation of the three results rules out, which older verifiers (6.1's) do
    // not track, so they refused the program.
    let Some(skb) = probe_read_counted::<u64>(pkt + u64::from(cfg.nft_pkt_skb)) else {
        return;
    };
    let Some(state) = probe_read_counted::<u64>(pkt + u64::from(cfg.nft_pkt_state)) else {
        return;
    };
    let Some(priority) = probe_read_counted::<i32>(chain.wrapping_add_signed(i64::from(back)))
    else {
        return;
    };
    pass(cfg, skb, state, priority, edge);
}

// ---- the shared step ----

/// An IPv4 pass of the node's namespace through a hook function at `priority` on
/// `state->hook`: its entry or exit is the netfilter point below or above it.
#[inline(always)]
fn pass(cfg: &Config, skb: u64, state: u64, priority: i32, edge: Edge) {
    if cfg.nf_state_net == 0 || skb == 0 || state == 0 {
        return;
    }
    // These functions run for every packet of every namespace: one that is not followed leaves
    // before the reads below, unless a locally sent packet may start its path here.
    let Some(skb) = skb_address(skb) else { return };
    let slot = followed(skb);
    if slot.is_none() && cfg.nf_admit_cp == CP_NONE {
        return;
    }
    let Some(hook) = probe_read_counted::<u8>(state + u64::from(cfg.nf_state_hook)) else {
        return;
    };
    let Some(pf) = probe_read_counted::<u8>(state + u64::from(cfg.nf_state_pf)) else {
        return;
    };
    if pf != NFPROTO_IPV4 || u32::from(hook) >= NF_HOOK_COUNT {
        return;
    }
    let (below, above) = nf_points_around(priority);
    let point = match edge {
        Edge::Entry => below,
        Edge::Exit => above,
    };
    let Some(point) = point else { return };
    let cp = nf_checkpoint(u32::from(hook), point);
    if slot.is_none() && cp != cfg.nf_admit_cp {
        return;
    }
    let Some(net) = probe_read_counted::<u64>(state + u64::from(cfg.nf_state_net)) else {
        return;
    };
    if probe_read_counted::<u32>(net + u64::from(cfg.net_ns_inum)) != Some(cfg.node_netns_inum) {
        return;
    }
    match slot {
        Some(slot) => record(cfg, slot, skb, cp),
        None => visit_admitting(cfg, skb, cp, &Skb(skb)),
    }
}

// ---- verifier twins ----
//
// The same bodies behind tp_btf entries (`VERIFIER_TWINS`), which this kernel loads while it
// refuses fentry: loading them in the tests puts the fallback's code through a real verifier
// (context reads within the arity, pointer arithmetic on BTF pointers, map access). Both
// edges run, so both points' code paths are checked. Never attached.

#[btf_tracepoint(function = "consume_skb")]
pub fn cp_vt_ct(ctx: BtfTracePointContext) -> i32 {
    conntrack(&ctx, Edge::Entry);
    conntrack(&ctx, Edge::Exit);
    0
}

#[btf_tracepoint(function = "kfree_skb")]
pub fn cp_vt_ipt(ctx: BtfTracePointContext) -> i32 {
    iptables(&ctx, Edge::Entry);
    iptables(&ctx, Edge::Exit);
    0
}

#[btf_tracepoint(function = "consume_skb")]
pub fn cp_vt_nft(ctx: BtfTracePointContext) -> i32 {
    nftables(&ctx, Edge::Entry);
    nftables(&ctx, Edge::Exit);
    0
}
