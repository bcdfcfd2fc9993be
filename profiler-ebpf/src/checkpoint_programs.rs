//! The datapath profiler's checkpoint programs that aya loads (contract:
//! `profiler_common::datapath`; the shared step is in `checkpoint.rs`):
//!
//! - `cp_tc_ingress` / `cp_tc_egress`: tc classifiers (TCX) on node devices, found by ifindex in
//!   the node's namespace; `cp_tc_pod_in` / `cp_tc_pod_eg` the same on pods' `eth0`, found
//!   through `skb->dev` like the tracepoints' devices. The `__sk_buff`
//!   context *is* the kernel's `struct sk_buff *` (the verifier rewrites field accesses), so its
//!   value is the packet's key. Headers by direct packet access. Verdict `TC_ACT_PIPE` always
//!   (next program; the packet's fate never changes).
//! - `cp_dev_rx` / `cp_dev_tx`: tp_btf on `netif_receive_skb` / `net_dev_start_xmit`, every
//!   device of every namespace; devices missing from `NP_DEVICES` are skipped after one lookup.
//!   Off unless asked for (`--hooks all`): on watched devices they sit beside the tc hooks.
//! - `cp_kfree_btf` / `cp_consume_btf` (tp_btf), or where those do not load `cp_kfree_skb` /
//!   `cp_consume_skb` (classic tracepoints): end a tracked packet's journey (drop, by reason;
//!   or completion, recording the segment to `CP_CONSUMED`); a stale journey ends as abandoned.
//! - `cp_tcp_retrans`: counts TCP retransmissions between benchmark endpoints.
//!
//! Kernel struct and tracepoint field offsets come from `NP_CONFIG` (user space reads them from
//! BTF and tracefs), so one object fits every kernel without CO-RE relocations.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_PIPE},
    macros::{btf_tracepoint, classifier, map, tracepoint},
    maps::LruHashMap,
    programs::{BtfTracePointContext, TcContext, TracePointContext},
    EbpfContext as _,
};
use profiler_common::{
    datapath::{
        Config, DeviceCheckpoints, DeviceKey, DropKey, COUNTER_ABANDONED, COUNTER_COMPLETED,
        COUNTER_DROPPED, COUNTER_DROP_FULL, COUNTER_READ_ERRORS, COUNTER_RETRANSMITS, CP_CONSUMED,
        CP_NONE, JOURNEY_IGNORED, MAP_DEV_CACHE, MAX_DEV_CACHE, PROG_CONSUME_SKB,
        PROG_CONSUME_SKB_BTF, PROG_DEV_RX, PROG_DEV_TX, PROG_KFREE_SKB, PROG_KFREE_SKB_BTF,
        PROG_TCP_RETRANSMIT, PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_TC_POD_EGRESS,
        PROG_TC_POD_INGRESS,
    },
    names_match,
};

use crate::checkpoint::{
    bump, config, now, probe_read_counted, record_segment, visit, Headers, Skb, ETH_HDR_LEN,
    NP_DEVICES, NP_DROPS, NP_ENDPOINTS, NP_JOURNEYS,
};

const _: () = assert!(names_match(stringify!(cp_tc_ingress), PROG_TC_INGRESS));
const _: () = assert!(names_match(stringify!(cp_tc_egress), PROG_TC_EGRESS));
const _: () = assert!(names_match(stringify!(cp_tc_pod_in), PROG_TC_POD_INGRESS));
const _: () = assert!(names_match(stringify!(cp_tc_pod_eg), PROG_TC_POD_EGRESS));
const _: () = assert!(names_match(stringify!(cp_dev_rx), PROG_DEV_RX));
const _: () = assert!(names_match(stringify!(cp_dev_tx), PROG_DEV_TX));
const _: () = assert!(names_match(stringify!(cp_kfree_skb), PROG_KFREE_SKB));
const _: () = assert!(names_match(stringify!(cp_consume_skb), PROG_CONSUME_SKB));
const _: () = assert!(names_match(stringify!(cp_kfree_btf), PROG_KFREE_SKB_BTF));
const _: () = assert!(names_match(
    stringify!(cp_consume_btf),
    PROG_CONSUME_SKB_BTF
));
const _: () = assert!(names_match(stringify!(cp_tcp_retrans), PROG_TCP_RETRANSMIT));

/// tc verdict: no opinion, run the next program (see `uplink_counter.rs`).
const TC_VERDICT: i32 = TC_ACT_PIPE;

const ETH_TYPE_OFFSET: usize = 12;
const ETH_P_IP: u16 = 0x0800;

/// Which of a device's checkpoints a program is.
#[derive(Clone, Copy)]
enum Hook {
    TpRx,
    TcIngress,
    TcEgress,
    TpTx,
}

#[map]
static NP_DEV_CACHE: LruHashMap<u64, DeviceCheckpoints> =
    LruHashMap::with_max_entries(MAX_DEV_CACHE, 0);

const _: () = assert!(names_match(stringify!(NP_DEV_CACHE), MAP_DEV_CACHE));

/// `hook`'s checkpoint in a device's entry and whether it admits; `None` for `CP_NONE`.
#[inline(always)]
fn pick(cps: &DeviceCheckpoints, hook: Hook) -> Option<(u16, bool)> {
    let cp = match hook {
        Hook::TpRx => cps.tp_rx,
        Hook::TcIngress => cps.tc_ingress,
        Hook::TcEgress => cps.tc_egress,
        Hook::TpTx => cps.tp_tx,
    };
    (cp != CP_NONE).then_some((cp, cps.admit != 0))
}

// ---- tc ----

#[classifier]
pub fn cp_tc_ingress(ctx: TcContext) -> i32 {
    tc_node_checkpoint(&ctx, Hook::TcIngress);
    TC_VERDICT
}

#[classifier]
pub fn cp_tc_egress(ctx: TcContext) -> i32 {
    tc_node_checkpoint(&ctx, Hook::TcEgress);
    TC_VERDICT
}

#[classifier]
pub fn cp_tc_pod_in(ctx: TcContext) -> i32 {
    tc_pod_checkpoint(&ctx, Hook::TcIngress);
    TC_VERDICT
}

#[classifier]
pub fn cp_tc_pod_eg(ctx: TcContext) -> i32 {
    tc_pod_checkpoint(&ctx, Hook::TcEgress);
    TC_VERDICT
}

/// On a node device: the device is `__sk_buff.ifindex` in the node's namespace (one lookup).
#[inline(always)]
fn tc_node_checkpoint(ctx: &TcContext, hook: Hook) {
    let Some(cfg) = config() else { return };
    // SAFETY: the context is the kernel's `__sk_buff`; `ifindex` is a readable field.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let device = DeviceKey {
        netns_inum: cfg.node_netns_inum,
        ifindex,
    };
    // SAFETY: a value of a live hash map, copied out at once.
    let Some(cps) = NP_DEVICES.get_ptr(&device).map(|p| unsafe { *p }) else {
        return;
    };
    tc_visit(cfg, ctx, &cps, hook);
}

/// On a pod's `eth0`: its namespace is not the node's, so the device is found through
/// `skb->dev` (the ifindex alone could be another pod's `eth0`).
#[inline(always)]
fn tc_pod_checkpoint(ctx: &TcContext, hook: Hook) {
    let Some(cfg) = config() else { return };
    let Some(cps) = device_checkpoints(cfg, ctx.as_ptr() as u64, None) else {
        return;
    };
    tc_visit(cfg, ctx, &cps, hook);
}

#[inline(always)]
fn tc_visit(cfg: &Config, ctx: &TcContext, cps: &DeviceCheckpoints, hook: Hook) {
    let Some((cp, admit)) = pick(cps, hook) else {
        return;
    };
    visit(cfg, ctx.as_ptr() as u64, cp, admit, &TcHeaders { ctx });
}

/// Direct packet access behind an Ethernet header, for IPv4 frames.
struct TcHeaders<'a> {
    ctx: &'a TcContext,
}

impl Headers for TcHeaders<'_> {
    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        let (start, end) = (self.ctx.data(), self.ctx.data_end());
        if start + ETH_HDR_LEN > end {
            return None;
        }
        // SAFETY: the 2 bytes at ETH_TYPE_OFFSET lie inside the checked Ethernet header.
        let ether_type = unsafe { *((start + ETH_TYPE_OFFSET) as *const [u8; 2]) };
        if u16::from_be_bytes(ether_type) != ETH_P_IP {
            return None;
        }
        let at = start + ETH_HDR_LEN + offset;
        if at + core::mem::size_of::<T>() > end {
            return None;
        }
        // SAFETY: [at, at + size_of::<T>()) was just checked to lie inside the packet; `T` is
        // made of bytes (alignment 1, any content valid).
        Some(unsafe { core::ptr::read_unaligned(at as *const T) })
    }
}

// ---- tp_btf: device receive / transmit ----

#[btf_tracepoint(function = "netif_receive_skb")]
pub fn cp_dev_rx(ctx: BtfTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    dev_checkpoint(skb, None, Hook::TpRx);
    0
}

#[btf_tracepoint(function = "net_dev_start_xmit")]
pub fn cp_dev_tx(ctx: BtfTracePointContext) -> i32 {
    let (skb, dev): (u64, u64) = (ctx.arg(0), ctx.arg(1));
    dev_checkpoint(skb, Some(dev), Hook::TpTx);
    0
}

/// A device checkpoint seen from a tracepoint.
#[inline(always)]
fn dev_checkpoint(skb: u64, dev: Option<u64>, hook: Hook) {
    let Some(cfg) = config() else { return };
    let Some(cps) = device_checkpoints(cfg, skb, dev) else {
        return;
    };
    let Some((cp, admit)) = pick(&cps, hook) else {
        return;
    };
    visit(cfg, skb, cp, admit, &Skb(skb));
}

/// The checkpoints of the device a packet is on: `dev` if the hook passes it, else `skb->dev`;
/// looked up by `struct net_device` address in `NP_DEV_CACHE`, filled from `NP_DEVICES` (by
/// namespace inode and ifindex, read once per device).
#[inline(always)]
fn device_checkpoints(cfg: &Config, skb: u64, dev: Option<u64>) -> Option<DeviceCheckpoints> {
    if cfg.skb_dev == 0 || cfg.dev_ifindex == 0 || cfg.dev_nd_net == 0 {
        bump(COUNTER_READ_ERRORS);
        return None;
    }
    let dev = match dev {
        Some(dev) => dev,
        None => match probe_read_counted::<u64>(skb + u64::from(cfg.skb_dev)) {
            Some(dev) if dev != 0 => dev,
            _ => return None,
        },
    };
    // SAFETY: a value of a live hash map, copied out at once.
    if let Some(cps) = NP_DEV_CACHE.get_ptr(dev).map(|p| unsafe { *p }) {
        return Some(cps);
    }
    let cps = device_entry(cfg, dev)?;
    // A full cache evicts its least recently used device; nothing is lost.
    let _ = NP_DEV_CACHE.insert(dev, cps, 0);
    Some(cps)
}

/// The `NP_DEVICES` entry of the `struct net_device` at `dev`: all `CP_NONE` when the device is
/// not watched; `None` when its ifindex or namespace cannot be read (not cached then).
#[inline(always)]
fn device_entry(cfg: &Config, dev: u64) -> Option<DeviceCheckpoints> {
    let ifindex = probe_read_counted::<u32>(dev + u64::from(cfg.dev_ifindex))?;
    let net = probe_read_counted::<u64>(dev + u64::from(cfg.dev_nd_net))?;
    let netns_inum = probe_read_counted::<u32>(net + u64::from(cfg.net_ns_inum))?;
    let device = DeviceKey {
        netns_inum,
        ifindex,
    };
    // SAFETY: a value of a live hash map, copied out at once.
    Some(
        NP_DEVICES
            .get_ptr(&device)
            .map(|p| unsafe { *p })
            .unwrap_or_default(),
    )
}

// ---- classic tracepoints: journey ends, retransmissions ----

/// A tracepoint field at a configured offset; `None` (a read error counted) when the offset is
/// unknown (0: no field of interest sits at 0, where the common header is) or unreadable.
#[inline(always)]
fn tp_field<T: Copy>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    if offset == 0 {
        bump(COUNTER_READ_ERRORS);
        return None;
    }
    probe_read_counted(ctx.as_ptr() as u64 + u64::from(offset))
}

/// Ends the journey of `skb`, if it has one: removes it and returns its last checkpoint and
/// the time since. A stale journey (older than `stale_ns`: its skb was freed unseen, e.g. by
/// `kfree_skb_partial` after TCP coalescing or GRO, and the address reused by a packet nobody
/// admitted) counts as abandoned and returns `None`, so it records no time and no drop.
#[inline(always)]
fn end_journey(cfg: &Config, skb: u64) -> Option<(u16, u64)> {
    let journey = NP_JOURNEYS.get_ptr(skb)?;
    let now = now();
    // SAFETY: a value of a live hash map, copied out before the entry is deleted.
    let (last_cp, last_ns, flags, epoch) = unsafe {
        (
            (*journey).last_cp,
            (*journey).last_ns,
            (*journey).flags,
            (*journey).epoch,
        )
    };
    let _ = NP_JOURNEYS.remove(skb);
    if flags & JOURNEY_IGNORED != 0 || epoch != cfg.epoch {
        return None;
    }
    let delta = now.saturating_sub(last_ns);
    if cfg.stale_ns != 0 && delta > cfg.stale_ns {
        bump(COUNTER_ABANDONED);
        return None;
    }
    Some((last_cp, delta))
}

#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn cp_kfree_skb(ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let Some(skb) = tp_field::<u64>(&ctx, cfg.tp_kfree_skbaddr) else {
        return 0;
    };
    on_kfree(cfg, skb, || {
        tp_field::<u32>(&ctx, cfg.tp_kfree_reason).unwrap_or(0)
    });
    0
}

/// `kfree_skb(skb, location, reason, ...)`: the reason is the third argument.
#[btf_tracepoint(function = "kfree_skb")]
pub fn cp_kfree_btf(ctx: BtfTracePointContext) -> i32 {
    let Some(cfg) = config() else { return 0 };
    let skb: u64 = ctx.arg(0);
    on_kfree(cfg, skb, || {
        let reason: u64 = ctx.arg(2);
        reason as u32
    });
    0
}

/// A freed skb: a followed packet's journey ends as a drop, counted by `reason()` (asked only
/// then) and the last checkpoint it passed.
#[inline(always)]
fn on_kfree(cfg: &Config, skb: u64, reason: impl FnOnce() -> u32) {
    let Some((last_cp, _)) = end_journey(cfg, skb) else {
        return;
    };
    bump(COUNTER_DROPPED);
    count_drop(DropKey {
        last_cp,
        _pad: 0,
        reason: reason(),
    });
}

/// Adds one to `NP_DROPS[key]`.
#[inline(always)]
fn count_drop(key: DropKey) {
    if NP_DROPS.get_ptr_mut(key).is_none() {
        // Another CPU may insert the key first: then the lookup below finds it.
        let _ = NP_DROPS.insert(key, 0, u64::from(BPF_NOEXIST));
    }
    match NP_DROPS.get_ptr_mut(key) {
        // SAFETY: this CPU's value in a per-CPU hash (see `checkpoint::bump`).
        Some(count) => unsafe { *count = (*count).wrapping_add(1) },
        None => bump(COUNTER_DROP_FULL),
    }
}

#[tracepoint(category = "skb", name = "consume_skb")]
pub fn cp_consume_skb(ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let Some(skb) = tp_field::<u64>(&ctx, cfg.tp_consume_skbaddr) else {
        return 0;
    };
    on_consume(cfg, skb);
    0
}

#[btf_tracepoint(function = "consume_skb")]
pub fn cp_consume_btf(ctx: BtfTracePointContext) -> i32 {
    let Some(cfg) = config() else { return 0 };
    on_consume(cfg, ctx.arg(0));
    0
}

/// A consumed skb: a followed packet's journey ends, its last segment goes to `CP_CONSUMED`.
#[inline(always)]
fn on_consume(cfg: &Config, skb: u64) {
    let Some((last_cp, delta)) = end_journey(cfg, skb) else {
        return;
    };
    record_segment(last_cp, CP_CONSUMED, delta);
    bump(COUNTER_COMPLETED);
}

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn cp_tcp_retrans(ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let Some(saddr) = tp_field::<[u8; 4]>(&ctx, cfg.tp_retrans_saddr) else {
        return 0;
    };
    let Some(daddr) = tp_field::<[u8; 4]>(&ctx, cfg.tp_retrans_daddr) else {
        return 0;
    };
    if NP_ENDPOINTS.get_ptr(u32::from_ne_bytes(saddr)).is_some()
        || NP_ENDPOINTS.get_ptr(u32::from_ne_bytes(daddr)).is_some()
    {
        bump(COUNTER_RETRANSMITS);
    }
    0
}
