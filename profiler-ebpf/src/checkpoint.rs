//! The datapath profiler's shared kernel core (contract: `profiler_common::datapath`): the maps
//! and the per-checkpoint step every checkpoint program runs.
//!
//! Both objects include this file (`main.rs` for the programs aya loads, `nf_main.rs` for the
//! netfilter ones), so each object declares the same maps under the same names and user space
//! loads the netfilter object reusing the aya object's maps: one set of maps in the kernel.
//!
//! Because netprof's netfilter loader knows no globals, no BTF maps and no bpf-to-bpf calls,
//! everything here is `#[inline(always)]`, settings come from `NP_CONFIG` (not globals), and
//! nothing may panic (a panic path would be a call to the panic handler).
//!
//! One visit (`visit`):
//! - the packet (its `struct sk_buff` address) has a journey: it is stale (abandoned, restarted
//!   here), or a repeat of the same checkpoint (refreshed), or the time since its last
//!   checkpoint goes into the histogram of segment `last -> this`;
//! - it has none: where admission is allowed and its IPv4 addresses (or, for VXLAN, the inner
//!   ones) are benchmark endpoints, a journey starts here.
//!
//! Untracked packets at a checkpoint that does not admit cost one hash lookup.

use aya_ebpf::{
    bindings::BPF_F_NO_COMMON_LRU,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, generated::bpf_probe_read_kernel},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use profiler_common::{
    datapath::{
        bucket_of, segment_slot, Config, DeviceCheckpoints, DeviceKey, DropKey, Histogram, Journey,
        SegmentKey, SegmentSlot, COUNTER_ABANDONED, COUNTER_ADMITTED, COUNTER_COUNT,
        COUNTER_JOURNEY_FULL, COUNTER_READ_ERRORS, COUNTER_REPEATS, COUNTER_SAMPLED_OUT,
        COUNTER_SEGMENT_FULL, HIST_BUCKETS, JOURNEY_IGNORED, MAP_CONFIG, MAP_COUNTERS, MAP_CP_HITS,
        MAP_DEVICES, MAP_DROPS, MAP_ENDPOINTS, MAP_JOURNEYS, MAP_SEGMENTS, MAX_CHECKPOINTS,
        MAX_DEVICES, MAX_DROP_KEYS, MAX_ENDPOINTS, MAX_JOURNEYS, MAX_SEGMENTS, SEGMENT_PROBES,
    },
    names_match,
};

#[map]
pub static NP_CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map]
pub static NP_ENDPOINTS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);
#[map]
pub static NP_DEVICES: HashMap<DeviceKey, DeviceCheckpoints> =
    HashMap::with_max_entries(MAX_DEVICES, 0);
/// Per-CPU LRU lists: admitting a packet does not take the map-wide LRU lock (measured on the
/// pods' tc egress, where packets are admitted: 676 -> 468 ns/run).
#[map]
pub static NP_JOURNEYS: LruHashMap<u64, Journey> =
    LruHashMap::with_max_entries(MAX_JOURNEYS, BPF_F_NO_COMMON_LRU);
#[map]
pub static NP_SEGMENTS: PerCpuArray<SegmentSlot> = PerCpuArray::with_max_entries(MAX_SEGMENTS, 0);
#[map]
pub static NP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);
#[map]
pub static NP_CP_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_CHECKPOINTS, 0);
#[map]
pub static NP_DROPS: PerCpuHashMap<DropKey, u64> =
    PerCpuHashMap::with_max_entries(MAX_DROP_KEYS, 0);

const _: () = assert!(names_match(stringify!(NP_CONFIG), MAP_CONFIG));
const _: () = assert!(names_match(stringify!(NP_ENDPOINTS), MAP_ENDPOINTS));
const _: () = assert!(names_match(stringify!(NP_DEVICES), MAP_DEVICES));
const _: () = assert!(names_match(stringify!(NP_JOURNEYS), MAP_JOURNEYS));
const _: () = assert!(names_match(stringify!(NP_SEGMENTS), MAP_SEGMENTS));
const _: () = assert!(names_match(stringify!(NP_COUNTERS), MAP_COUNTERS));
const _: () = assert!(names_match(stringify!(NP_CP_HITS), MAP_CP_HITS));
const _: () = assert!(names_match(stringify!(NP_DROPS), MAP_DROPS));

/// The configuration; `None` until user space wrote it (the array's zeroed entry has
/// `skb_head == 0`, which no real kernel has) and between duty-cycle windows (`paused`).
#[inline(always)]
pub fn config() -> Option<&'static Config> {
    let cfg = NP_CONFIG.get(0)?;
    (cfg.skb_head != 0 && cfg.paused == 0).then_some(cfg)
}

// ---- packet headers ----

pub const ETH_HDR_LEN: usize = 14;
const IPV4_MIN_HDR_LEN: usize = 20;
const IPPROTO_UDP: u8 = 17;
const UDP_HDR_LEN: usize = 8;
const VXLAN_HDR_LEN: usize = 8;
/// From the outer UDP header to the inner IPv4 header: UDP, VXLAN, inner Ethernet.
const VXLAN_INNER_IP: usize = UDP_HDR_LEN + VXLAN_HDR_LEN + ETH_HDR_LEN;

/// The first 20 bytes of an IPv4 header. Byte arrays only: alignment 1, any content valid, so
/// it may be read from any packet offset.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Head {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub protocol: u8,
    pub checksum: [u8; 2],
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

/// The first 4 bytes of a UDP header (ports).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UdpPorts {
    pub source: [u8; 2],
    pub dest: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<Ipv4Head>() == IPV4_MIN_HDR_LEN);

/// Reads headers relative to the packet's network (IPv4) header: direct packet access in tc,
/// `bpf_probe_read_kernel` from `skb->head + skb->network_header` elsewhere.
pub trait Headers {
    /// The `T` at `offset` bytes past the start of the network header, if it can be read.
    /// `T` is made of bytes only (alignment 1, no invalid values).
    fn read<T: Copy>(&self, offset: usize) -> Option<T>;
}

/// Whether an IPv4 header (`None`: not IPv4 or unreadable) names a benchmark endpoint.
#[inline(always)]
fn names_endpoint(ip: &Ipv4Head) -> bool {
    // Keys are the addresses as they appear in the header (network byte order in memory).
    let (saddr, daddr) = (u32::from_ne_bytes(ip.saddr), u32::from_ne_bytes(ip.daddr));
    NP_ENDPOINTS.get_ptr(saddr).is_some() || NP_ENDPOINTS.get_ptr(daddr).is_some()
}

/// The IPv4 header at `offset` and its header length, when it looks like one.
#[inline(always)]
fn ipv4_at<H: Headers>(headers: &H, offset: usize) -> Option<(Ipv4Head, usize)> {
    let ip: Ipv4Head = headers.read(offset)?;
    let ihl = usize::from(ip.version_ihl & 0x0f) * 4;
    if ip.version_ihl >> 4 != 4 || ihl < IPV4_MIN_HDR_LEN {
        return None;
    }
    Some((ip, ihl))
}

/// Whether the packet belongs to the benchmark: its IPv4 source or destination is an endpoint,
/// or it is VXLAN (UDP to `cfg.vxlan_port`) and the inner IPv4 source or destination is.
#[inline(always)]
pub fn is_benchmark<H: Headers>(cfg: &Config, headers: &H) -> bool {
    let Some((ip, ihl)) = ipv4_at(headers, 0) else {
        return false;
    };
    if names_endpoint(&ip) {
        return true;
    }
    if cfg.vxlan_port == 0 || ip.protocol != IPPROTO_UDP {
        return false;
    }
    let Some(udp) = headers.read::<UdpPorts>(ihl) else {
        return false;
    };
    if u16::from_be_bytes(udp.dest) != cfg.vxlan_port {
        return false;
    }
    match ipv4_at(headers, ihl + VXLAN_INNER_IP) {
        Some((inner, _)) => names_endpoint(&inner),
        None => false,
    }
}

/// `bpf_probe_read_kernel` of a `T` at kernel address `addr` (no panics, no calls).
#[inline(always)]
pub fn probe_read<T: Copy>(addr: u64) -> Option<T> {
    let mut value = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: the helper writes at most size_of::<T>() bytes into `value` and never faults: a
    // bad address makes it return an error (and zero the destination).
    let ret = unsafe {
        bpf_probe_read_kernel(
            value.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u32,
            addr as *const core::ffi::c_void,
        )
    };
    if ret == 0 {
        // SAFETY: the helper filled all of `value`; `T` is plain data.
        Some(unsafe { value.assume_init() })
    } else {
        None
    }
}

/// [`probe_read`] counting failures in `COUNTER_READ_ERRORS`.
#[inline(always)]
pub fn probe_read_counted<T: Copy>(addr: u64) -> Option<T> {
    let value = probe_read(addr);
    if value.is_none() {
        bump(COUNTER_READ_ERRORS);
    }
    value
}

/// Headers of a `struct sk_buff` read with `bpf_probe_read_kernel` from
/// `skb->head + skb->network_header` (offsets from `NP_CONFIG`).
pub struct SkbHeaders {
    network: u64,
}

impl SkbHeaders {
    /// Locates the network header of `skb`; `None` (read error counted) if the offsets are
    /// unknown or the reads fail.
    #[inline(always)]
    pub fn new(cfg: &Config, skb: u64) -> Option<Self> {
        if cfg.skb_head == 0 || cfg.skb_network_header == 0 {
            bump(COUNTER_READ_ERRORS);
            return None;
        }
        let head: u64 = probe_read_counted(skb + u64::from(cfg.skb_head))?;
        let network_header: u16 = probe_read_counted(skb + u64::from(cfg.skb_network_header))?;
        // An unset `network_header` (0xffff; or 0, left from allocation, on a NIC's receive
        // path before `netif_receive_skb` resets it) shows no IPv4 header, so nothing is
        // admitted from it.
        if head == 0 || network_header == u16::MAX {
            return None;
        }
        Some(Self {
            network: head + u64::from(network_header),
        })
    }
}

impl Headers for SkbHeaders {
    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        probe_read_counted(self.network + offset as u64)
    }
}

// ---- counters and histograms ----

/// Adds one to event counter `counter` (a `COUNTER_*`).
#[inline(always)]
pub fn bump(counter: u32) {
    if let Some(slot) = NP_COUNTERS.get_ptr_mut(counter) {
        // SAFETY: a per-CPU array value of this CPU; programs on one CPU do not preempt each
        // other in the middle of this update.
        unsafe { *slot = (*slot).wrapping_add(1) };
    }
}

/// Adds one to the hits of checkpoint `cp`.
#[inline(always)]
fn hit(cp: u16) {
    if let Some(slot) = NP_CP_HITS.get_ptr_mut(u32::from(cp)) {
        // SAFETY: as in `bump`.
        unsafe { *slot = (*slot).wrapping_add(1) };
    }
}

/// Adds `delta_ns` to the histogram of segment `from -> to`: in this CPU's slot of the
/// segment, found (or taken, if free) within `SEGMENT_PROBES` slots from `segment_slot`.
#[inline(always)]
pub fn record_segment(from: u16, to: u16, delta_ns: u64) {
    let mut index = segment_slot(from, to);
    for _ in 0..SEGMENT_PROBES {
        let Some(slot) = NP_SEGMENTS.get_ptr_mut(index) else {
            break;
        };
        // SAFETY: this CPU's value of a per-CPU array; programs on one CPU do not preempt each
        // other in the middle of this update (see `bump`).
        let slot = unsafe { &mut *slot };
        let free = slot.key.from == 0 && slot.key.to == 0;
        if free || (slot.key.from == from && slot.key.to == to) {
            if free {
                slot.key = SegmentKey { from, to };
            }
            add_to_histogram(&mut slot.hist, delta_ns);
            return;
        }
        index = (index + 1) & (MAX_SEGMENTS - 1);
    }
    bump(COUNTER_SEGMENT_FULL);
}

#[inline(always)]
fn add_to_histogram(hist: &mut Histogram, delta_ns: u64) {
    // The volatile read keeps the bounds check below in the program even where the compiler
    // could prove it redundant: the verifier must see the index bounded.
    let bucket = bucket_of(delta_ns);
    // SAFETY: reading a live local.
    let bucket = unsafe { core::ptr::read_volatile(&bucket) };
    if bucket >= HIST_BUCKETS {
        return;
    }
    // SAFETY: the index is in range.
    unsafe {
        let slot = hist.buckets.as_mut_ptr().add(bucket);
        *slot = (*slot).wrapping_add(1);
    }
    hist.count = hist.count.wrapping_add(1);
    hist.sum_ns = hist.sum_ns.wrapping_add(delta_ns);
}

// ---- the checkpoint step ----

/// True for all but 1 in 2^shift calls (a random draw per packet).
#[inline(always)]
fn sampled_out(shift: u16) -> bool {
    // SAFETY: the helper has no preconditions.
    let draw = unsafe { bpf_get_prandom_u32() };
    let mask = (1u32 << (u32::from(shift) & 31)) - 1;
    draw & mask != 0
}

/// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, comparable across CPUs.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// How a checkpoint tells benchmark traffic from the rest; asked only when a packet without a
/// journey may be admitted. (A trait, not a closure: closures are not `#[inline(always)]`, and
/// the netfilter object cannot have calls.)
pub trait Packet {
    fn is_benchmark(&self, cfg: &Config) -> bool;
}

impl<H: Headers> Packet for H {
    #[inline(always)]
    fn is_benchmark(&self, cfg: &Config) -> bool {
        is_benchmark(cfg, self)
    }
}

/// A `struct sk_buff` at a kernel address, its headers read with `bpf_probe_read_kernel`.
pub struct Skb(pub u64);

impl Packet for Skb {
    #[inline(always)]
    fn is_benchmark(&self, cfg: &Config) -> bool {
        match SkbHeaders::new(cfg, self.0) {
            Some(headers) => is_benchmark(cfg, &headers),
            None => false,
        }
    }
}

/// The packet with `struct sk_buff` address `skb` reached checkpoint `cp`.
///
/// `admit`: a packet without a journey may start one here, if `packet` is benchmark traffic
/// (asked only then).
#[inline(always)]
pub fn visit<P: Packet>(cfg: &Config, skb: u64, cp: u16, admit: bool, packet: &P) {
    let now = now();
    if let Some(journey) = NP_JOURNEYS.get_ptr_mut(skb) {
        // SAFETY: a value of a live hash map; concurrent updates of one journey only happen if
        // one skb is at two checkpoints at once, which it is not.
        let journey = unsafe { &mut *journey };
        if journey.epoch != cfg.epoch {
            // Left from an earlier profiling window: forget it, decide afresh below.
            let _ = NP_JOURNEYS.remove(skb);
            return admit_here(cfg, skb, cp, admit, packet, now);
        }
        let delta = now.saturating_sub(journey.last_ns);
        let stale = cfg.stale_ns != 0 && delta > cfg.stale_ns;
        if journey.flags & JOURNEY_IGNORED != 0 {
            if !stale {
                // Sampled out: keep it from going stale mid-path, record nothing.
                journey.last_ns = now;
                return;
            }
            // A stale ignored journey: its skb was freed unseen; decide afresh below.
            let _ = NP_JOURNEYS.remove(skb);
        } else {
            hit(cp);
            if stale {
                // The skb this journey followed was freed unseen and its address reused.
                bump(COUNTER_ABANDONED);
                *journey = Journey::start(now, cp, 0, cfg.epoch);
                return;
            }
            if journey.last_cp == cp {
                bump(COUNTER_REPEATS);
            } else {
                record_segment(journey.last_cp, cp, delta);
                journey.last_cp = cp;
                journey.hops = journey.hops.saturating_add(1);
            }
            journey.last_ns = now;
            return;
        }
    }
    admit_here(cfg, skb, cp, admit, packet, now);
}

/// A packet without a journey at checkpoint `cp`: starts one if it may (see [`visit`]).
#[inline(always)]
fn admit_here<P: Packet>(cfg: &Config, skb: u64, cp: u16, admit: bool, packet: &P, now: u64) {
    if !admit || !packet.is_benchmark(cfg) {
        return;
    }
    if cfg.sample_shift != 0 && sampled_out(cfg.sample_shift) {
        let ignored = Journey::start(now, cp, JOURNEY_IGNORED, cfg.epoch);
        if NP_JOURNEYS.insert(skb, ignored, 0).is_err() {
            bump(COUNTER_JOURNEY_FULL);
        }
        bump(COUNTER_SAMPLED_OUT);
        return;
    }
    let journey = Journey::start(now, cp, 0, cfg.epoch);
    if NP_JOURNEYS.insert(skb, journey, 0).is_err() {
        bump(COUNTER_JOURNEY_FULL);
        return;
    }
    bump(COUNTER_ADMITTED);
    hit(cp);
}
