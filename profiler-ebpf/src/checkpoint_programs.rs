//! The datapath profiler's checkpoint programs that aya loads (contract:
//! `profiler_common::datapath`; the shared steps are in `checkpoint.rs`):
//!
//! - `cp_tc_ingress` / `cp_tc_egress`: tc classifiers on node devices, found by ifindex in
//!   `NP_NODE_DEVS`; `cp_tc_upl_in` on the uplink's ingress, where paths from the other node
//!   start (it admits, looking inside VXLAN); `cp_tc_pod_in` / `cp_tc_pod_eg` on pods' `eth0`,
//!   found by MAC address in `NP_POD_DEVS` (egress admits: a pod's packets start there). The
//!   `__sk_buff` context *is* the kernel's `struct sk_buff *` (the verifier rewrites field
//!   accesses), so its value is the packet's key. Headers by direct packet access. Verdict
//!   `TC_ACT_PIPE` always (next program; the packet's fate never changes).
//! - `cp_dev_rx` / `cp_dev_tx`: tp_btf on `netif_receive_skb` / `net_dev_start_xmit`, every
//!   device of every namespace (off unless asked for: on watched devices they sit beside the
//!   tc hooks).
//! - `cp_backlog`: tp_btf on `netif_rx`, a frame queued for the receive softirq (a veth's
//!   transmit); on a veth uplink, paths from the other node start there.
//! - `cp_kfree_btf` / `cp_consume_btf` (tp_btf), or where those do not load `cp_kfree_skb` /
//!   `cp_consume_skb` (classic tracepoints): end a followed packet's journey and log it whole to
//!   `NP_JOURNEY_LOG` for user space (a drop with its reason).
//! - `cp_tcp_retrans`: counts TCP retransmissions of followed flows.
//!
//! Every program reads the packet's tag first: one that is not followed leaves at once.
//! Kernel struct and tracepoint field offsets come from `NP_CONFIG` (user space reads them from
//! BTF and tracefs), so one object fits every kernel without CO-RE relocations.

use aya_ebpf::{
    bindings::TC_ACT_PIPE,
    macros::{btf_tracepoint, classifier, map, tracepoint},
    maps::{Array, HashMap, ProgramArray, RingBuf},
    programs::{BtfTracePointContext, TcContext, TracePointContext},
    EbpfContext as _,
};
use profiler_common::{
    datapath::{
        journey_slot, node_device_slot, pod_device_slot, BacklogMark, Config, DeviceCheckpoints,
        DeviceKey, Journey, NodeDevice, PodDevice, ADMIT_INSIDE_VXLAN, ADMIT_RESTART,
        COUNTER_COMPLETED, COUNTER_DROPPED, COUNTER_READ_ERRORS, COUNTER_RETRANSMITS, CP_NONE,
        END_CONSUMED, END_DROPPED, END_RESTARTED, GLOBAL_OFF_DEV_IFINDEX, GLOBAL_OFF_DEV_ND_NET,
        GLOBAL_OFF_NET_NS_INUM, GLOBAL_OFF_SKB_DEV, IPPROTO_TCP, JOURNEY_LOG_BYTES, JOURNEY_SLOTS,
        MAP_BACKLOG_MARKS, MAP_DEVICES, MAP_JOURNEY_LOG, MAP_NODE_DEVICES, MAP_POD_DEVICES,
        MAP_TC_ADMIT, MAX_DEVICES, NODE_DEVICE_SLOTS, POD_DEVICE_SLOTS, PROG_BACKLOG,
        PROG_CONSUME_SKB, PROG_CONSUME_SKB_BTF, PROG_DEV_RX, PROG_DEV_TX, PROG_KFREE_SKB,
        PROG_KFREE_SKB_BTF, PROG_TCP_RETRANSMIT, PROG_TC_ADMIT, PROG_TC_EGRESS, PROG_TC_INGRESS,
        PROG_TC_POD_EGRESS, PROG_TC_POD_INGRESS, PROG_TC_UPLINK_EGRESS, PROG_TC_UPLINK_INGRESS,
    },
    names_match,
};

use crate::{
    checkpoint::{
        admit, bump, close_hand_over, config, end_journey, followed, hand_over, now, prepend,
        probe_read_counted, record, record_or_needs_admission, skb_address, take_hand_over,
    },
    flows::{in_a_flow, Headers, MaybeVxlan, Plain, ETH_HDR_LEN},
};

const _: () = assert!(names_match(stringify!(cp_tc_ingress), PROG_TC_INGRESS));
const _: () = assert!(names_match(stringify!(cp_tc_egress), PROG_TC_EGRESS));
const _: () = assert!(names_match(
    stringify!(cp_tc_upl_in),
    PROG_TC_UPLINK_INGRESS
));
const _: () = assert!(names_match(stringify!(cp_tc_pod_in), PROG_TC_POD_INGRESS));
const _: () = assert!(names_match(stringify!(cp_tc_upl_eg), PROG_TC_UPLINK_EGRESS));
const _: () = assert!(names_match(stringify!(cp_tc_admit), PROG_TC_ADMIT));
const _: () = assert!(names_match(stringify!(cp_tc_pod_eg), PROG_TC_POD_EGRESS));
const _: () = assert!(names_match(stringify!(cp_dev_rx), PROG_DEV_RX));
const _: () = assert!(names_match(stringify!(cp_dev_tx), PROG_DEV_TX));
const _: () = assert!(names_match(stringify!(cp_backlog), PROG_BACKLOG));
const _: () = assert!(names_match(stringify!(cp_kfree_skb), PROG_KFREE_SKB));
const _: () = assert!(names_match(stringify!(cp_consume_skb), PROG_CONSUME_SKB));
const _: () = assert!(names_match(stringify!(cp_kfree_btf), PROG_KFREE_SKB_BTF));
const _: () = assert!(names_match(
    stringify!(cp_consume_btf),
    PROG_CONSUME_SKB_BTF
));
const _: () = assert!(names_match(stringify!(cp_tcp_retrans), PROG_TCP_RETRANSMIT));

/// tc verdict: no opinion, run the next program.
const TC_VERDICT: i32 = TC_ACT_PIPE;

const ETH_TYPE_OFFSET: usize = 12;
const ETH_P_IP: u16 = 0x0800;
const ETH_SOURCE_OFFSET: usize = 6;

#[map]
static NP_NODE_DEVS: Array<NodeDevice> = Array::with_max_entries(NODE_DEVICE_SLOTS, 0);
#[map]
static NP_POD_DEVS: Array<PodDevice> = Array::with_max_entries(POD_DEVICE_SLOTS, 0);
#[map]
static NP_DEVICES: HashMap<DeviceKey, DeviceCheckpoints> =
    HashMap::with_max_entries(MAX_DEVICES, 0);
#[map]
static NP_TC_ADMIT: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
static NP_BACKLOG: Array<BacklogMark> = Array::with_max_entries(JOURNEY_SLOTS, 0);
#[map]
static NP_JOURNEY_LOG: RingBuf = RingBuf::with_byte_size(JOURNEY_LOG_BYTES, 0);

const _: () = assert!(names_match(stringify!(NP_NODE_DEVS), MAP_NODE_DEVICES));
const _: () = assert!(names_match(stringify!(NP_POD_DEVS), MAP_POD_DEVICES));
const _: () = assert!(names_match(stringify!(NP_DEVICES), MAP_DEVICES));
const _: () = assert!(names_match(stringify!(NP_TC_ADMIT), MAP_TC_ADMIT));
const _: () = assert!(names_match(stringify!(NP_BACKLOG), MAP_BACKLOG_MARKS));
const _: () = assert!(names_match(stringify!(NP_JOURNEY_LOG), MAP_JOURNEY_LOG));

/// `BPF_RB_NO_WAKEUP`: the reader polls; waking it for every journey would cost an irq_work
/// per packet.
const RING_NO_WAKEUP: u64 = 1;

/// Copies an ended journey to the log; `false` when the log is full.
#[inline(always)]
fn log_journey(journey: &Journey) -> bool {
    NP_JOURNEY_LOG
        .output::<Journey>(journey, RING_NO_WAKEUP)
        .is_ok()
}

/// Which way a device hook sees packets.
#[derive(Clone, Copy)]
enum Direction {
    Ingress,
    Egress,
}

// ---- tc on node devices ----

#[classifier]
pub fn cp_tc_ingress(ctx: TcContext) -> i32 {
    node_device(&ctx, Direction::Ingress);
    TC_VERDICT
}

#[classifier]
pub fn cp_tc_egress(ctx: TcContext) -> i32 {
    node_device(&ctx, Direction::Egress);
    TC_VERDICT
}

/// A node device's hook: a followed packet is recorded at the device's checkpoint.
#[inline(always)]
fn node_device(ctx: &TcContext, direction: Direction) {
    let Some(skb) = skb_address(ctx.as_ptr() as u64) else {
        return;
    };
    let Some(slot) = followed(skb) else { return };
    let Some(cfg) = config() else { return };
    // SAFETY: the context is the kernel's `__sk_buff`; `ifindex` is a readable field.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(device) = NP_NODE_DEVS.get(node_device_slot(ifindex)) else {
        return;
    };
    if device.ifindex != ifindex {
        return;
    }
    let cp = match direction {
        Direction::Ingress => device.tc_ingress,
        Direction::Egress => device.tc_egress,
    };
    if cp != CP_NONE {
        record(cfg, slot, skb, cp);
    }
}

/// The uplink's ingress: a packet from the other node starts its path on this node here (at
/// the backlog it was queued on a moment ago, on a veth uplink).
#[classifier]
pub fn cp_tc_upl_in(ctx: TcContext) -> i32 {
    if let (Some(cfg), Some(skb)) = (config(), skb_address(ctx.as_ptr() as u64)) {
        let cp = cfg.uplink_ingress_cp;
        if cp != CP_NONE {
            to_admission(&ctx, skb, cp, ADMIT_INSIDE_VXLAN | path_start(skb));
        }
    }
    TC_VERDICT
}

/// Where a path starts every packet is new to this node: one that looks followed is a reused
/// skb whose journey's end went unseen, and admission ends that journey first.
#[inline(always)]
fn path_start(skb: u64) -> u64 {
    if followed(skb).is_some() {
        ADMIT_RESTART
    } else {
        0
    }
}

/// The uplink's egress: where no LOCAL_OUT netfilter point admits, a locally sent packet
/// starts its path here.
#[classifier]
pub fn cp_tc_upl_eg(ctx: TcContext) -> i32 {
    if let (Some(cfg), Some(skb)) = (config(), skb_address(ctx.as_ptr() as u64)) {
        let cp = cfg.uplink_egress_cp;
        if cp != CP_NONE && record_or_needs_admission(cfg, skb, cp) && cfg.uplink_egress_admits != 0
        {
            to_admission(&ctx, skb, cp, ADMIT_INSIDE_VXLAN);
        }
    }
    TC_VERDICT
}

/// Hands a packet that is not followed yet to `cp_tc_admit`.
#[inline(always)]
fn to_admission(ctx: &TcContext, skb: u64, cp: u16, how: u64) {
    if let Some(level) = hand_over(skb, cp, how) {
        // SAFETY: the tail call either jumps to the admission program (which returns the
        // verdict for this packet) or fails and returns here.
        unsafe { NP_TC_ADMIT.tail_call(ctx, 0) };
        // Still here: no admission program; close the frame it would have taken.
        close_hand_over(level);
    }
}

/// Admission for the tc checkpoints: parses the handed-over packet and starts its journey if
/// it belongs to a followed flow. Reached by tail call only.
#[classifier]
pub fn cp_tc_admit(ctx: TcContext) -> i32 {
    // First of all: the frame the checkpoint opened is closed whatever happens next.
    let handed = take_hand_over();
    let (Some(cfg), Some((skb, cp, how))) = (config(), handed) else {
        return TC_VERDICT;
    };
    if how & ADMIT_RESTART != 0 && end_journey(skb, END_RESTARTED, || 0, log_journey) {
        bump(COUNTER_COMPLETED);
    }
    let headers = TcHeaders { ctx: &ctx };
    let admitted = if how & ADMIT_INSIDE_VXLAN != 0 {
        admit(cfg, skb, cp, &MaybeVxlan(headers))
    } else {
        admit(cfg, skb, cp, &Plain(headers))
    };
    if let Some(slot) = admitted {
        if cp == cfg.uplink_ingress_cp {
            start_at_backlog(cfg, slot, skb);
        }
    }
    TC_VERDICT
}

/// A packet admitted at the uplink's ingress that `cp_backlog` saw queued on the uplink's
/// backlog: its journey starts there instead, so the wait for the softirq is a segment.
#[inline(always)]
fn start_at_backlog(cfg: &Config, slot: u32, skb: u64) {
    let backlog = cfg.uplink_backlog_cp;
    if backlog == CP_NONE {
        return;
    }
    let Some(mark) = NP_BACKLOG.get(journey_slot(skb)) else {
        return;
    };
    if mark.skb == skb {
        prepend(cfg, slot, skb, backlog, mark.at_ns);
    }
}

// ---- tc on pods' eth0 ----

#[classifier]
pub fn cp_tc_pod_in(ctx: TcContext) -> i32 {
    let skb = skb_address(ctx.as_ptr() as u64);
    if let Some((skb, slot)) = skb.and_then(|skb| followed(skb).map(|slot| (skb, slot))) {
        if let (Some(cfg), Some(device)) = (config(), pod_device(&ctx, 0)) {
            if device.tc_ingress != CP_NONE {
                record(cfg, slot, skb, device.tc_ingress);
            }
        }
    }
    TC_VERDICT
}

/// A pod's egress: its packets start their path here.
#[classifier]
pub fn cp_tc_pod_eg(ctx: TcContext) -> i32 {
    if let (Some(_), Some(device)) = (config(), pod_device(&ctx, ETH_SOURCE_OFFSET)) {
        let cp = device.tc_egress;
        if let (true, Some(skb)) = (cp != CP_NONE, skb_address(ctx.as_ptr() as u64)) {
            to_admission(&ctx, skb, cp, path_start(skb));
        }
    }
    TC_VERDICT
}

/// The watched pod device whose MAC address is at `mac_offset` of the frame (the destination
/// on ingress, the source on egress).
#[inline(always)]
fn pod_device(ctx: &TcContext, mac_offset: usize) -> Option<PodDevice> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + ETH_HDR_LEN > end {
        return None;
    }
    // SAFETY: both MAC addresses lie inside the checked Ethernet header.
    let mac = unsafe { *((start + mac_offset) as *const [u8; 6]) };
    let device = NP_POD_DEVS.get(pod_device_slot(mac))?;
    (device.mac == mac).then_some(*device)
}

/// Direct packet access behind an Ethernet header, for IPv4 frames; `bpf_skb_load_bytes`
/// where the headers reach past the linear part.
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
            return self.ctx.load::<T>(ETH_HDR_LEN + offset).ok();
        }
        // SAFETY: [at, at + size_of::<T>()) was just checked to lie inside the packet; `T` is
        // made of bytes (alignment 1, any content valid).
        Some(unsafe { core::ptr::read_unaligned(at as *const T) })
    }
}

// ---- tp_btf: device receive / transmit ----

#[btf_tracepoint(function = "netif_receive_skb")]
pub fn cp_dev_rx(ctx: BtfTracePointContext) -> i32 {
    dev_checkpoint(ctx.arg(0), None, Direction::Ingress);
    0
}

#[btf_tracepoint(function = "net_dev_start_xmit")]
pub fn cp_dev_tx(ctx: BtfTracePointContext) -> i32 {
    dev_checkpoint(ctx.arg(0), Some(ctx.arg(1)), Direction::Egress);
    0
}

/// A frame queued on this CPU's receive backlog by `netif_rx` (a veth's transmit, handing its
/// frame to the peer). A followed packet is recorded at the receiving device's backlog
/// checkpoint. On a veth uplink (`Config::uplink_backlog_cp`) a frame from the other node is
/// not followed yet: it is marked, and if the uplink's tc ingress admits it, its path starts
/// here, so its wait for the receive softirq is timed on this node as on every pod veth.
#[btf_tracepoint(function = "netif_rx")]
pub fn cp_backlog(ctx: BtfTracePointContext) -> i32 {
    let pointer: *const u8 = ctx.arg(0);
    let Some(skb) = skb_address(pointer as u64) else {
        return 0;
    };
    let slot = followed(skb);
    let Some(cfg) = config() else { return 0 };
    match slot {
        Some(slot) => {
            if let Some(cps) = device_checkpoints(pointer, None) {
                if cps.backlog != CP_NONE {
                    record(cfg, slot, skb, cps.backlog);
                }
            }
        }
        None => {
            if cfg.uplink_backlog_cp != CP_NONE && on_uplink(cfg, pointer) {
                if let Some(mark) = NP_BACKLOG.get_ptr_mut(journey_slot(skb)) {
                    // SAFETY: a value of a live array map; two plain stores.
                    unsafe {
                        (*mark).skb = skb;
                        (*mark).at_ns = now();
                    }
                }
            }
        }
    }
    0
}

/// Whether `skb` is on this node's uplink: its device's ifindex first (what tells most
/// frames apart), the device's namespace only on a match.
#[inline(always)]
fn on_uplink(cfg: &Config, skb: *const u8) -> bool {
    let dev = skb_device(skb);
    kernel_field::<u32>(dev, offset(&NP_OFF_DEV_IFINDEX)) == cfg.uplink_ifindex
        && netns_inum_of(dev) == cfg.node_netns_inum
}

/// A device checkpoint seen from a tracepoint (never admits).
#[inline(always)]
fn dev_checkpoint(pointer: *const u8, dev: Option<*const u8>, direction: Direction) {
    let Some(skb) = skb_address(pointer as u64) else {
        return;
    };
    let Some(slot) = followed(skb) else { return };
    let Some(cfg) = config() else { return };
    let Some(cps) = device_checkpoints(pointer, dev) else {
        return;
    };
    let cp = match direction {
        Direction::Ingress => cps.tp_rx,
        Direction::Egress => cps.tp_tx,
    };
    if cp != CP_NONE {
        record(cfg, slot, skb, cp);
    }
}

/// The checkpoints of the device a packet is on (`dev` if the hook passes it, else
/// `skb->dev`), looked up in `NP_DEVICES` by namespace inode and ifindex. Only followed
/// packets get here.
#[inline(always)]
fn device_checkpoints(skb: *const u8, dev: Option<*const u8>) -> Option<DeviceCheckpoints> {
    let dev = dev.unwrap_or_else(|| skb_device(skb));
    let key = DeviceKey {
        netns_inum: netns_inum_of(dev),
        ifindex: kernel_field::<u32>(dev, offset(&NP_OFF_DEV_IFINDEX)),
    };
    // SAFETY: a value of a live hash map, copied out at once.
    NP_DEVICES.get_ptr(&key).map(|p| unsafe { *p })
}

// ---- kernel structs, read by plain loads ----
//
// The tp_btf programs get BTF-typed pointers (`struct sk_buff *`, `struct net_device *`).
// With an offset the verifier knows, a load through such a pointer is checked against the
// struct's BTF and done by the kernel's fault-safe load (a bad pointer reads 0): no
// `bpf_probe_read_kernel` call per field. The offsets are read-only globals that user space
// sets at load time from BTF (the verifier reads frozen read-only globals as constants), so
// one object still fits every kernel.

/// `struct sk_buff`'s `dev`.
#[no_mangle]
static NP_OFF_SKB_DEV: u32 = 0;
/// `struct net_device`'s `ifindex` and `nd_net.net`.
#[no_mangle]
static NP_OFF_DEV_IFINDEX: u32 = 0;
#[no_mangle]
static NP_OFF_DEV_ND_NET: u32 = 0;
/// `struct net`'s `ns.inum`.
#[no_mangle]
static NP_OFF_NET_NS_INUM: u32 = 0;

const _: () = assert!(names_match(stringify!(NP_OFF_SKB_DEV), GLOBAL_OFF_SKB_DEV));
const _: () = assert!(names_match(
    stringify!(NP_OFF_DEV_IFINDEX),
    GLOBAL_OFF_DEV_IFINDEX
));
const _: () = assert!(names_match(
    stringify!(NP_OFF_DEV_ND_NET),
    GLOBAL_OFF_DEV_ND_NET
));
const _: () = assert!(names_match(
    stringify!(NP_OFF_NET_NS_INUM),
    GLOBAL_OFF_NET_NS_INUM
));

/// The value user space gave an offset global at load time.
#[inline(always)]
fn offset(global: &'static u32) -> usize {
    // SAFETY: reading a global. Volatile: the compiler must not fold in the 0 it was
    // compiled with.
    unsafe { core::ptr::read_volatile(global) as usize }
}

/// The `T` at `offset` in the kernel struct `base` points to (a BTF-typed pointer).
#[inline(always)]
fn kernel_field<T: Copy>(base: *const u8, offset: usize) -> T {
    // SAFETY: the verifier checks the access against the struct's BTF and makes the load
    // fault-safe; `offset` is the field's, from BTF.
    unsafe { core::ptr::read_volatile(base.wrapping_add(offset).cast::<T>()) }
}

/// `skb->dev`.
#[inline(always)]
fn skb_device(skb: *const u8) -> *const u8 {
    kernel_field::<*const u8>(skb, offset(&NP_OFF_SKB_DEV))
}

/// The inode of the namespace device `dev` is in.
#[inline(always)]
fn netns_inum_of(dev: *const u8) -> u32 {
    let net = kernel_field::<*const u8>(dev, offset(&NP_OFF_DEV_ND_NET));
    kernel_field::<u32>(net, offset(&NP_OFF_NET_NS_INUM))
}

// ---- journey ends ----

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

#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn cp_kfree_skb(ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let Some(skb) = tp_field::<u64>(&ctx, cfg.tp_kfree_skbaddr) else {
        return 0;
    };
    on_kfree(skb, || {
        tp_field::<u32>(&ctx, cfg.tp_kfree_reason).unwrap_or(0)
    });
    0
}

/// `kfree_skb(skb, location, reason, ...)`: the reason is the third argument.
#[btf_tracepoint(function = "kfree_skb")]
pub fn cp_kfree_btf(ctx: BtfTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    on_kfree(skb, || {
        let reason: u64 = ctx.arg(2);
        reason as u32
    });
    0
}

/// A freed skb: a followed packet's journey ends as a drop, logged with `reason()` (asked
/// only then); user space counts drops by reason and last checkpoint from the log.
#[inline(always)]
fn on_kfree(pointer: u64, reason: impl FnOnce() -> u32) {
    let ended =
        skb_address(pointer).is_some_and(|skb| end_journey(skb, END_DROPPED, reason, log_journey));
    if ended {
        bump(COUNTER_DROPPED);
    }
}

#[tracepoint(category = "skb", name = "consume_skb")]
pub fn cp_consume_skb(ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    if let Some(skb) = tp_field::<u64>(&ctx, cfg.tp_consume_skbaddr) {
        on_consume(skb);
    }
    0
}

#[btf_tracepoint(function = "consume_skb")]
pub fn cp_consume_btf(ctx: BtfTracePointContext) -> i32 {
    on_consume(ctx.arg(0));
    0
}

/// A packet's data copied to a socket reader (`skb_copy_datagram_iovec(skb, len)`): its
/// journey ends as consumed, whether or not `consume_skb` later sees the skb go.
#[btf_tracepoint(function = "skb_copy_datagram_iovec")]
pub fn cp_deliver_btf(ctx: BtfTracePointContext) -> i32 {
    on_consume(ctx.arg(0));
    0
}

/// A consumed skb: a followed packet's journey ends (user space adds its last segment, to
/// `CP_CONSUMED`).
#[inline(always)]
fn on_consume(pointer: u64) {
    let ended =
        skb_address(pointer).is_some_and(|skb| end_journey(skb, END_CONSUMED, || 0, log_journey));
    if ended {
        bump(COUNTER_COMPLETED);
    }
}

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn cp_tcp_retrans(ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let saddr = tp_field::<[u8; 4]>(&ctx, cfg.tp_retrans_saddr);
    let daddr = tp_field::<[u8; 4]>(&ctx, cfg.tp_retrans_daddr);
    let sport = tp_field::<u16>(&ctx, cfg.tp_retrans_sport);
    let dport = tp_field::<u16>(&ctx, cfg.tp_retrans_dport);
    let (Some(saddr), Some(daddr), Some(sport), Some(dport)) = (saddr, daddr, sport, dport) else {
        return 0;
    };
    let (saddr, daddr) = (u32::from_ne_bytes(saddr), u32::from_ne_bytes(daddr));
    if in_a_flow(cfg, IPPROTO_TCP, saddr, daddr, sport, dport) {
        bump(COUNTER_RETRANSMITS);
    }
    0
}
