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
//! This kernel (6.18 in CI) refuses fentry programs (EPERM) and has netfilter links, so these
//! programs are loaded only where the links fail, or when asked for (`--hooks nf-fentry`); the
//! agent reports a refusal as "not measured".

use aya_ebpf::{
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};
use profiler_common::{
    datapath::{
        nf_checkpoint, nf_points_around, Config, ARG_CT_SKB, ARG_CT_STATE, ARG_IPT_SKB,
        ARG_IPT_STATE, ARG_IPT_TABLE, ARG_NFT_CHAIN, ARG_NFT_PKT, NF_HOOK_COUNT, NF_PRI_CONNTRACK,
        PROG_FENTRY_CT, PROG_FENTRY_IPT, PROG_FENTRY_NFT, PROG_FEXIT_CT, PROG_FEXIT_IPT,
        PROG_FEXIT_NFT,
    },
    names_match,
};

use crate::checkpoint::{config, probe_read_counted, visit, Skb};

const _: () = assert!(names_match(stringify!(cp_fe_ct), PROG_FENTRY_CT));
const _: () = assert!(names_match(stringify!(cp_fx_ct), PROG_FEXIT_CT));
const _: () = assert!(names_match(stringify!(cp_fe_ipt), PROG_FENTRY_IPT));
const _: () = assert!(names_match(stringify!(cp_fx_ipt), PROG_FEXIT_IPT));
const _: () = assert!(names_match(stringify!(cp_fe_nft), PROG_FENTRY_NFT));
const _: () = assert!(names_match(stringify!(cp_fx_nft), PROG_FEXIT_NFT));

/// `NFPROTO_IPV4`.
const NFPROTO_IPV4: u8 = 2;

#[derive(Clone, Copy)]
enum Edge {
    Entry,
    Exit,
}

/// The traced function's arguments, from an fentry or an fexit context.
trait Args {
    fn arg_u64(&self, n: usize) -> u64;
}

impl Args for FEntryContext {
    #[inline(always)]
    fn arg_u64(&self, n: usize) -> u64 {
        self.arg(n)
    }
}

impl Args for FExitContext {
    #[inline(always)]
    fn arg_u64(&self, n: usize) -> u64 {
        self.arg(n)
    }
}

/// Argument `index` (a position from `Config::fentry_args`) of a function taking `ARITY`
/// arguments. A match, not an indexed read: the verifier allows context reads at constant
/// offsets only, and rejects a read past the traced function's arguments even on a branch
/// the configuration never takes, hence the bound.
#[inline(always)]
fn arg_at<const ARITY: u8, C: Args>(ctx: &C, index: u8) -> Option<u64> {
    if index >= ARITY {
        return None;
    }
    match index {
        0 => Some(ctx.arg_u64(0)),
        1 => Some(ctx.arg_u64(1)),
        2 if ARITY > 2 => Some(ctx.arg_u64(2)),
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
fn conntrack<C: Args>(ctx: &C, edge: Edge) {
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
fn iptables<C: Args>(ctx: &C, edge: Edge) {
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
fn nftables<C: Args>(ctx: &C, edge: Edge) {
    let Some(cfg) = config() else { return };
    if cfg.nft_chain_priority == 0 {
        return;
    }
    let pkt = arg_at::<NFT_ARITY, C>(ctx, cfg.fentry_args[ARG_NFT_PKT]);
    let chain = arg_at::<NFT_ARITY, C>(ctx, cfg.fentry_args[ARG_NFT_CHAIN]);
    let (Some(pkt), Some(chain)) = (pkt, chain) else {
        return;
    };
    let skb = probe_read_counted::<u64>(pkt + u64::from(cfg.nft_pkt_skb));
    let state = probe_read_counted::<u64>(pkt + u64::from(cfg.nft_pkt_state));
    // The chain sits inside its `struct nft_base_chain`, after the hook ops holding the
    // priority (`nft_do_chain` runs base chains only; jumps stay inside it).
    let priority = probe_read_counted::<i32>(chain.wrapping_add_signed(i64::from(cfg.nft_chain_priority)));
    if let (Some(skb), Some(state), Some(priority)) = (skb, state, priority) {
        pass(cfg, skb, state, priority, edge);
    }
}

// ---- the shared step ----

/// An IPv4 pass of the node's namespace through a hook function at `priority` on
/// `state->hook`: its entry or exit is the netfilter point below or above it.
#[inline(always)]
fn pass(cfg: &Config, skb: u64, state: u64, priority: i32, edge: Edge) {
    if cfg.nf_state_net == 0 || skb == 0 || state == 0 {
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
    let Some(net) = probe_read_counted::<u64>(state + u64::from(cfg.nf_state_net)) else {
        return;
    };
    if probe_read_counted::<u32>(net + u64::from(cfg.net_ns_inum)) != Some(cfg.node_netns_inum) {
        return;
    }
    let (below, above) = nf_points_around(priority);
    let point = match edge {
        Edge::Entry => below,
        Edge::Exit => above,
    };
    if let Some(point) = point {
        visit(cfg, skb, nf_checkpoint(u32::from(hook), point), true, &Skb(skb));
    }
}
