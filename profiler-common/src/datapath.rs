//! The datapath profiler's contract between the kernel programs (`profiler-ebpf`) and the agent
//! (`netprof::agent`): map names, checkpoint ids, the per-packet journey, the flows to follow,
//! the per-segment histogram layout and the configuration user space writes before attaching.
//!
//! Model (shared/DESIGN.md "Stage model"): a *checkpoint* is a hook where a packet is seen with a
//! timestamp. A packet of a benchmark *flow* is admitted where its path starts (a pod's `eth0`
//! egress, the uplink's ingress, the first LOCAL_OUT netfilter point) and then followed by its
//! `struct sk_buff` address: each checkpoint it reaches appends (checkpoint, time) to its
//! *journey*. When the kernel frees the skb, the journey ends: in that one place it is copied
//! whole to a ring buffer (`MAP_JOURNEY_LOG`), and user space turns it into *segments* (one
//! checkpoint -> the next), each into its latency histogram, and names segments into stages.
//!
//! The per-packet budget shapes the layout: a packet that is not followed leaves every
//! checkpoint after one read of a small global tag array (`MAP_TAGS`, direct-mapped by a hash
//! of the skb address), before any helper call or hash lookup.
//!
//! Every struct is `#[repr(C)]`, `Copy`, with explicit padding and no bool/enum/Option.

// ---------------------------------------------------------------------------------------------
// Map names (at most 15 bytes: the kernel cuts longer names).

/// `Array<Config>`, 1 entry (key 0): offsets and settings written by user space before attach.
pub const MAP_CONFIG: &str = "NP_CONFIG";
/// `Hash<FlowKey, FlowRule>`: the benchmark flows to follow (see [`FlowKey`]). Looked up only
/// where a path starts, for a packet that is not followed yet.
pub const MAP_FLOWS: &str = "NP_FLOWS";
/// `Array<u64>`, `JOURNEY_SLOTS` entries, global (an skb moves between CPUs): slot
/// `journey_slot(skb)` holds the address of the followed skb whose journey is in the same slot
/// of `MAP_JOURNEYS`, 0 when free. Every checkpoint reads it first; a packet whose address is
/// not there is not followed and leaves.
pub const MAP_TAGS: &str = "NP_TAGS";
/// `Array<Journey>`, `JOURNEY_SLOTS` entries, global: the journeys, in their tags' slots.
pub const MAP_JOURNEYS: &str = "NP_JOURNEYS";
/// `Array<NodeDevice>`, `NODE_DEVICE_SLOTS` entries: the node's watched devices by
/// `ifindex & (NODE_DEVICE_SLOTS - 1)` (the slot repeats the ifindex; user space refuses a
/// second device on a taken slot), for the tc programs in the node's namespace.
pub const MAP_NODE_DEVICES: &str = "NP_NODE_DEVS";
/// `Array<PodDevice>`, `POD_DEVICE_SLOTS` entries: pods' `eth0` by `pod_device_slot(mac)`. An
/// ifindex does not tell pod namespaces apart (every pod's `eth0` may be index 2); the MAC
/// address in the frame does, and costs nothing to read in tc.
pub const MAP_POD_DEVICES: &str = "NP_POD_DEVS";
/// `RingBuf`, `JOURNEY_LOG_BYTES`, aya object only: every ended journey, a whole [`Journey`]
/// with its `end_*` fields set, written once when the skb is freed, without waking the
/// reader (user space drains it every few milliseconds and before every snapshot). The
/// segments, their histograms and the hits per checkpoint are built there: in the kernel
/// they cost a cold cache line or three per segment, in the softirq of the packet that ended.
pub const MAP_JOURNEY_LOG: &str = "NP_JOURNEY_LOG";
/// Bytes of `MAP_JOURNEY_LOG` (a power of two, a multiple of the page size): about 14,000
/// journeys (288 bytes each and an 8-byte record header).
pub const JOURNEY_LOG_BYTES: u32 = 4 << 20;
/// `PerCpuArray<u64>`, `COUNTER_COUNT` entries: the `COUNTER_*` event counters.
pub const MAP_COUNTERS: &str = "NP_COUNTERS";
/// `PerCpuArray<Scratch>`, 1 entry: where a program turns the skb pointer it was handed into
/// a number (the verifier forbids hashing a pointer; stored and read back it is a number), and
/// where a checkpoint hands a packet over to the admission program it tail-calls.
pub const MAP_SCRATCH: &str = "NP_SCRATCH";
/// Frames of `Scratch`: how deep programs may nest on one CPU (a program in process context
/// interrupted by a softirq's, interrupted in turn by a hard interrupt's).
pub const SCRATCH_DEPTH: usize = 4;

/// One CPU's scratch space: a stack of frames, so a program interrupted by another on the same
/// CPU (netfilter programs run in process context, tc programs in softirqs) finds its frame
/// as it left it. Interrupts nest, so the stack is always unwound in order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Scratch {
    /// Frames in use.
    pub level: u64,
    pub frames: [ScratchFrame; SCRATCH_DEPTH],
}

/// One program's scratch frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ScratchFrame {
    /// The pointer being turned into a number.
    pub pointer: u64,
    /// A packet handed over to admission: its skb address, checkpoint and `ADMIT_*` flags.
    pub skb: u64,
    pub cp: u64,
    pub how: u64,
}

/// `ScratchFrame::how`: judge a VXLAN packet by the packet inside.
pub const ADMIT_INSIDE_VXLAN: u64 = 1;
/// The packet's skb address still carries a journey where no journey can be under way (a
/// path's start): that skb was freed unseen and its memory reused. Admission first ends the
/// old journey at its last checkpoint, then judges the packet as new.
pub const ADMIT_RESTART: u64 = 2;
/// `ProgramArray`, 1 entry, aya object: `PROG_TC_ADMIT`, which the admitting tc checkpoints
/// tail-call for a packet that is not followed yet, so the header parsing and flow lookups
/// live in one program instead of in every checkpoint.
pub const MAP_TC_ADMIT: &str = "NP_TC_ADMIT";
/// `ProgramArray`, 1 entry, netfilter object: `PROG_NF_ADMIT`, tail-called the same way by
/// the LOCAL_OUT point that admits.
pub const MAP_NF_ADMIT: &str = "NP_NF_ADMIT";

/// `Hash<DeviceKey, DeviceCheckpoints>`, aya object only: the watched devices by namespace
/// and ifindex, for the optional tp_btf device programs (`--hooks dev`), which see every
/// device of every namespace through `skb->dev`.
pub const MAP_DEVICES: &str = "NP_DEVICES";

/// Read-only `u32` globals of the aya object, set at load time to `Config::skb_dev`,
/// `dev_ifindex`, `dev_nd_net` and `net_ns_inum`: the tp_btf programs' kernel struct offsets,
/// which the verifier must know as constants to let them load fields through BTF-typed
/// pointers without a helper call.
pub const GLOBAL_OFF_SKB_DEV: &str = "NP_OFF_SKB_DEV";
pub const GLOBAL_OFF_DEV_IFINDEX: &str = "NP_OFF_DEV_IFINDEX";
pub const GLOBAL_OFF_DEV_ND_NET: &str = "NP_OFF_DEV_ND_NET";
pub const GLOBAL_OFF_NET_NS_INUM: &str = "NP_OFF_NET_NS_INUM";

/// `Array<BacklogMark>`, `JOURNEY_SLOTS` entries, aya object only: where a frame reached a
/// veth uplink's backlog, by `journey_slot(skb)`, for the uplink's tc ingress to start the
/// path there when it admits the packet (admission parses headers; `netif_rx` only marks).
pub const MAP_BACKLOG_MARKS: &str = "NP_BACKLOG";

/// A `MAP_BACKLOG_MARKS` entry: the skb queued on the uplink's backlog, and when.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BacklogMark {
    pub skb: u64,
    pub at_ns: u64,
}

/// The maps the netfilter object shares with the aya object (it reuses them by name).
pub const ALL_MAPS: [&str; 6] = [
    MAP_CONFIG,
    MAP_SCRATCH,
    MAP_FLOWS,
    MAP_TAGS,
    MAP_JOURNEYS,
    MAP_COUNTERS,
];

/// Slots of `MAP_TAGS` and `MAP_JOURNEYS` (a power of two). A packet whose slot holds another
/// live journey is not admitted (`COUNTER_SLOT_BUSY`): with one ping in flight that never
/// happens; under load it leaves out a few packets, not a flow.
pub const JOURNEY_SLOTS: u32 = 8_192;
/// Checkpoints one journey records; later ones count as `COUNTER_JOURNEY_LONG`. A VXLAN pod
/// path crosses about 25 on one node.
pub const JOURNEY_CAP: usize = 40;
/// Slots of `MAP_NODE_DEVICES` (a power of two).
pub const NODE_DEVICE_SLOTS: u32 = 65_536;
/// Slots of `MAP_POD_DEVICES` (a power of two).
pub const POD_DEVICE_SLOTS: u32 = 1_024;
/// Capacity of `MAP_FLOWS`.
pub const MAX_FLOWS: u32 = 1_024;
/// Capacity of `MAP_DEVICES`.
pub const MAX_DEVICES: u32 = 1_024;

/// The slot of the skb at address `skb` in `MAP_TAGS` / `MAP_JOURNEYS`. skbs come from a slab
/// of 64-byte aligned objects, so the low bits carry nothing; a multiplicative hash of the
/// rest spreads neighbours.
#[inline(always)]
pub const fn journey_slot(skb: u64) -> u32 {
    ((skb >> 6).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - JOURNEY_SLOTS.trailing_zeros())) as u32
}

/// The slot of a pod device with this MAC address in `MAP_POD_DEVICES`: its last two bytes
/// (random in the addresses veths get; a clash is refused by user space).
#[inline(always)]
pub const fn pod_device_slot(mac: [u8; 6]) -> u32 {
    (((mac[4] as u32) << 8) | mac[5] as u32) & (POD_DEVICE_SLOTS - 1)
}

/// The slot of the node device with this ifindex in `MAP_NODE_DEVICES`.
#[inline(always)]
pub const fn node_device_slot(ifindex: u32) -> u32 {
    ifindex & (NODE_DEVICE_SLOTS - 1)
}

// ---------------------------------------------------------------------------------------------
// Checkpoint ids (u16). 0 means "none". Netfilter points have fixed ids; device checkpoints are
// assigned by user space from `DEVICE_CP_BASE` up; pseudo checkpoints end a journey.

/// Number of checkpoint ids; ids are `< MAX_CHECKPOINTS`.
pub const MAX_CHECKPOINTS: u32 = 512;
/// "No checkpoint" (a device direction that is not watched).
pub const CP_NONE: u16 = 0;
/// Set in a segment's `from` checkpoint (`Journey::direction`, then the agent's segment keys)
/// for the segments of a journey that entered the node on its uplink (the packet came from
/// another node); clear for one that started on the node. The
/// same netfilter checkpoints see a request and its reply, one pass of a round trip on cold
/// caches and the other warm: one histogram of both has a median that is neither's.
pub const SEGMENT_INBOUND: u16 = 0x8000;
/// Netfilter hooks (`enum nf_inet_hooks`), in kernel numbering.
pub const NF_HOOK_PRE_ROUTING: u32 = 0;
pub const NF_HOOK_LOCAL_IN: u32 = 1;
pub const NF_HOOK_FORWARD: u32 = 2;
pub const NF_HOOK_LOCAL_OUT: u32 = 3;
pub const NF_HOOK_POST_ROUTING: u32 = 4;
pub const NF_HOOK_COUNT: u32 = 5;

/// Netfilter priorities netprof attaches at on every hook: just outside each iptables table,
/// so consecutive points bracket one table (raw -300, conntrack -200, mangle -150,
/// nat DNAT -100, filter 0, security 50, nat SNAT 100):
/// `[0]->[1]` raw, `[1]->[2]` conntrack, `[2]->[3]` mangle, `[3]->[4]` nat (DNAT),
/// `[4]->[5]` filter, `[5]->[6]` security + nat (SNAT).
pub const NF_POINT_PRIORITIES: [i32; 7] = [-301, -201, -199, -101, -99, 1, 101];
pub const NF_POINT_COUNT: u32 = NF_POINT_PRIORITIES.len() as u32;
/// First netfilter checkpoint id.
pub const NF_CP_BASE: u16 = 1;

/// The checkpoint id of netfilter point `point` (index into `NF_POINT_PRIORITIES`) on `hook`.
#[inline(always)]
pub const fn nf_checkpoint(hook: u32, point: u32) -> u16 {
    NF_CP_BASE + (hook * NF_POINT_COUNT + point) as u16
}

/// The netfilter points just below and just above a hook function at `priority`: the
/// checkpoints its entry and its exit stand for when it is traced with fentry/fexit instead of
/// bracketed by links (`None` beyond the first or last point).
#[inline(always)]
pub const fn nf_points_around(priority: i32) -> (Option<u32>, Option<u32>) {
    let mut below = None;
    let mut point = 0;
    while point < NF_POINT_COUNT {
        if NF_POINT_PRIORITIES[point as usize] < priority {
            below = Some(point);
        }
        point += 1;
    }
    let above = match below {
        Some(b) if b + 1 < NF_POINT_COUNT => Some(b + 1),
        Some(_) => None,
        None => Some(0),
    };
    (below, above)
}

/// The gauge: a netfilter checkpoint on FORWARD one priority after point `NF_GAUGE_AFTER`
/// (-99), where no hook function sits between them (nat's DNAT is at -100, filter at 0). The
/// segment from that point to the gauge holds nothing but netprof: the end of one netfilter
/// run after its clock read, the hook walking to the next entry, and the start of the next
/// run up to its clock read. That is what every segment between two netfilter points holds
/// of netprof, measured in the same step, under the same load, as the segments it is taken
/// out of. Forwarded packets cross it once per node.
pub const CP_NF_GAUGE: u16 = 61;
/// The hook the gauge is on.
pub const NF_GAUGE_HOOK: u32 = NF_HOOK_FORWARD;
/// The point the gauge follows (it is attached only where that point is).
pub const NF_GAUGE_AFTER: u32 = 4;
/// The gauge's priority.
pub const NF_GAUGE_PRIORITY: i32 = NF_POINT_PRIORITIES[NF_GAUGE_AFTER as usize] + 1;

/// Conntrack's priority on PRE_ROUTING and LOCAL_OUT (`NF_IP_PRI_CONNTRACK`), where
/// `nf_conntrack_in` runs.
pub const NF_PRI_CONNTRACK: i32 = -200;

/// One past the last netfilter checkpoint id.
pub const NF_CP_END: u16 = NF_CP_BASE + (NF_HOOK_COUNT * NF_POINT_COUNT) as u16;
/// Pseudo checkpoint: the packet was consumed normally (`skb:consume_skb`), e.g. delivered to a
/// socket. The segment `last -> CP_CONSUMED` is the time until the stack let go of it.
pub const CP_CONSUMED: u16 = 62;

/// `Journey::end`: the skb was consumed (delivered); its last segment goes to `CP_CONSUMED`.
pub const END_CONSUMED: u16 = 1;
/// `Journey::end`: the skb was dropped (`kfree_skb`; the reason is `Journey::drop_reason`).
pub const END_DROPPED: u16 = 2;
/// `Journey::end`: the skb's address came back where a path starts (freed unseen, reused);
/// its journey counts as completed without a last segment.
pub const END_RESTARTED: u16 = 3;
/// First id user space may assign to device checkpoints.
pub const DEVICE_CP_BASE: u16 = 64;

// ---------------------------------------------------------------------------------------------
// Counters (`MAP_COUNTERS` slots).

/// Packets admitted: a benchmark flow's packet with no journey at a checkpoint where paths start.
pub const COUNTER_ADMITTED: u32 = 0;
/// Journeys ended by the skb's consumption (`consume_skb`).
pub const COUNTER_COMPLETED: u32 = 1;
/// Journeys ended by `kfree_skb` (a drop; its reason is in the logged journey).
pub const COUNTER_DROPPED: u32 = 2;
/// Journeys abandoned: one idle longer than `Config::stale_ns` (its skb was freed unseen, e.g.
/// merged by GRO or TCP coalescing), found by a checkpoint or by an admission taking its slot.
pub const COUNTER_ABANDONED: u32 = 3;
/// Benchmark packets not admitted because their slot held another live journey.
pub const COUNTER_SLOT_BUSY: u32 = 4;
/// Ended journeys `MAP_JOURNEY_LOG` had no room for (user space fell behind): their
/// segments and hits are lost.
pub const COUNTER_LOG_FULL: u32 = 5;
// Slot 6 is unused: it counted insert failures of a per-CPU drops table, before a drop's
// reason travelled in its logged journey.
/// `bpf_probe_read_kernel` failures while reading an skb, a device or a header.
pub const COUNTER_READ_ERRORS: u32 = 7;
/// `tcp:tcp_retransmit_skb` events of followed flows.
pub const COUNTER_RETRANSMITS: u32 = 8;
/// A followed packet seen twice in a row at one checkpoint (e.g. looped); not a segment.
pub const COUNTER_REPEATS: u32 = 9;
/// Benchmark packets left out by flow sampling (`Config::sample_shift`).
pub const COUNTER_SAMPLED_OUT: u32 = 10;
/// Checkpoints a followed packet reached after its journey held `JOURNEY_CAP` (not recorded).
pub const COUNTER_JOURNEY_LONG: u32 = 11;
pub const COUNTER_COUNT: u32 = 12;

// ---------------------------------------------------------------------------------------------
// Map key and value types.

/// A benchmark flow (`MAP_FLOWS` key): a protocol, the two endpoints' IPv4 addresses in
/// ascending order (as `u32`s of the header's bytes, `u32::from_ne_bytes`), and the server's
/// port (host order; 0 for ICMP). Both directions of a connection give the same key. A key
/// with `addr_lo == 0` matches any peer of `addr_hi`, one with `port == 0` any TCP/UDP port
/// (`FLOW_ANY_PEER` / `FLOW_ANY_PORT` in the config say such keys exist, so they are looked
/// up only then).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct FlowKey {
    pub addr_lo: u32,
    pub addr_hi: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

impl FlowKey {
    /// The key of a flow between `a` and `b` (header-order `u32`s) to `port` of `proto`.
    #[inline(always)]
    pub const fn new(proto: u8, a: u32, b: u32, port: u16) -> Self {
        let (addr_lo, addr_hi) = if a <= b { (a, b) } else { (b, a) };
        Self {
            addr_lo,
            addr_hi,
            port,
            proto,
            _pad: 0,
        }
    }

    /// The key matching any peer of `server`'s `port`.
    #[inline(always)]
    pub const fn any_peer(proto: u8, server: u32, port: u16) -> Self {
        Self {
            addr_lo: 0,
            addr_hi: server,
            port,
            proto,
            _pad: 0,
        }
    }
}

/// What to do with a flow's packets (`MAP_FLOWS` value).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowRule {
    /// `FLOW_*` flags.
    pub flags: u32,
}

/// `FlowRule::flags`: follow every packet of the flow whatever `Config::sample_shift` says
/// (pings: their counts must be exact).
pub const FLOW_ALWAYS: u32 = 1;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Whether a flow's packet with this client port is followed under sampling of 1 in
/// `2^shift` flows: a hash of the protocol and the client's port (the port that is not the
/// server's), so a request and its reply, seen on either node, decide alike. NAT keeps the
/// client's port unless it collides with another connection's.
#[inline(always)]
pub const fn flow_sampled_in(proto: u8, client_port: u16, shift: u16) -> bool {
    if shift == 0 {
        return true;
    }
    let h = ((client_port as u32) | ((proto as u32) << 16)).wrapping_mul(0x9E37_79B1);
    (h >> (32 - (shift as u32 & 15))) == 0
}

/// Which device: its network namespace (`struct net`'s `ns.inum`, as `ls -i /proc/PID/ns/net`
/// or `stat -L /run/netns/NAME` shows) and its ifindex in that namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DeviceKey {
    pub netns_inum: u32,
    pub ifindex: u32,
}

/// The checkpoint ids of one device's hooks (`CP_NONE` where not watched).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DeviceCheckpoints {
    /// tp_btf `netif_receive_skb` (device receives; runs before tc ingress).
    pub tp_rx: u16,
    /// tc ingress on the device.
    pub tc_ingress: u16,
    /// tc egress on the device.
    pub tc_egress: u16,
    /// tp_btf `net_dev_start_xmit` (handed to the driver; runs after tc egress and the qdisc).
    pub tp_tx: u16,
    /// tp_btf `netif_rx`: the frame a veth's peer transmitted is queued on this CPU's receive
    /// backlog, where it waits for the softirq that takes it to tc ingress.
    pub backlog: u16,
    pub _pad: u16,
}

/// A `MAP_NODE_DEVICES` slot: a node device's ifindex (0: free) and its tc checkpoints.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NodeDevice {
    pub ifindex: u32,
    pub tc_ingress: u16,
    pub tc_egress: u16,
}

/// A `MAP_POD_DEVICES` slot: a pod `eth0`'s MAC address (all zero: free) and its tc checkpoints.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PodDevice {
    pub mac: [u8; 6],
    pub tc_ingress: u16,
    pub tc_egress: u16,
    pub _pad: [u8; 6],
}

/// One followed packet's journey (`MAP_JOURNEYS` value, in its tag's slot): the checkpoints it
/// reached with their times, appended by each checkpoint; when the skb is freed its `end_*`
/// fields are set and the whole journey is copied to `MAP_JOURNEY_LOG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Journey {
    /// The followed skb (the tag repeats it; a mismatch means the slot changed hands).
    pub skb: u64,
    /// `bpf_ktime_get_ns()` at admission.
    pub first_ns: u64,
    /// `bpf_ktime_get_ns()` at the last checkpoint (staleness).
    pub last_ns: u64,
    /// `Config::epoch` at admission: a journey of an earlier window or step is forgotten.
    pub epoch: u32,
    /// The last checkpoint (repeats are not segments).
    pub last_cp: u16,
    /// Entries used in `cps` / `offsets_ns`.
    pub len: u16,
    /// `bpf_ktime_get_ns()` when the journey ended (set in the logged copy only).
    pub end_ns: u64,
    /// How it ended: one of `END_*` (0 while under way).
    pub end: u16,
    /// `SEGMENT_INBOUND` when the journey entered the node on its uplink, else 0: the flag its
    /// segments' `from` carry.
    pub direction: u16,
    /// The kernel's `enum skb_drop_reason` when `end` is `END_DROPPED`, else 0.
    pub drop_reason: u32,
    /// Checkpoint ids, in the order reached.
    pub cps: [u16; JOURNEY_CAP],
    /// ns since `first_ns` when each was reached (a journey is stale long before 4 s).
    pub offsets_ns: [u32; JOURNEY_CAP],
}

impl Journey {
    /// A journey of `skb` starting now at checkpoint `cp`.
    #[inline(always)]
    pub const fn start(skb: u64, now: u64, cp: u16, epoch: u32) -> Self {
        let mut cps = [0; JOURNEY_CAP];
        cps[0] = cp;
        Self {
            skb,
            first_ns: now,
            last_ns: now,
            epoch,
            last_cp: cp,
            len: 1,
            end_ns: 0,
            end: 0,
            direction: 0,
            drop_reason: 0,
            cps,
            offsets_ns: [0; JOURNEY_CAP],
        }
    }
}

// Histogram: log-linear buckets over nanoseconds. Values below 2^SUB_BITS have one bucket each;
// above, every power of two is split into 2^SUB_BITS equal sub-buckets, so a bucket's width is
// at most 1/32 of its lower bound (<= 3.2% relative error; <= 1.6% at the bucket's middle).

pub const HIST_SUB_BITS: u32 = 5;
pub const HIST_SUB_COUNT: u32 = 1 << HIST_SUB_BITS;
/// Highest power of two covered (2^40 ns = 18 minutes); larger values land in the last bucket.
pub const HIST_MAX_EXP: u32 = 40;
/// Buckets: `HIST_SUB_COUNT` exact ones, then `HIST_SUB_COUNT` per exponent from SUB_BITS to MAX_EXP.
pub const HIST_BUCKETS: usize = ((HIST_MAX_EXP - HIST_SUB_BITS + 2) * HIST_SUB_COUNT) as usize;

/// One segment's latency distribution (per CPU in the kernel; summed by user space).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Histogram {
    pub buckets: [u64; HIST_BUCKETS],
    /// Number of values recorded (the sum of `buckets`).
    pub count: u64,
    /// Sum of the values recorded, in ns (for exact means).
    pub sum_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: [0; HIST_BUCKETS],
            count: 0,
            sum_ns: 0,
        }
    }
}

/// Position of the highest set bit (`v > 0`), written without loops the verifier must unroll.
#[inline(always)]
pub const fn log2(mut v: u64) -> u32 {
    let mut r = 0;
    if v >= 1 << 32 {
        v >>= 32;
        r += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        r += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        r += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        r += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        r += 2;
    }
    if v >= 1 << 1 {
        r += 1;
    }
    r
}

/// The bucket of a value in ns; always `< HIST_BUCKETS`.
#[inline(always)]
pub const fn bucket_of(ns: u64) -> usize {
    if ns < HIST_SUB_COUNT as u64 {
        return ns as usize;
    }
    let exp = log2(ns);
    if exp > HIST_MAX_EXP {
        return HIST_BUCKETS - 1;
    }
    let sub = (ns >> (exp - HIST_SUB_BITS)) & (HIST_SUB_COUNT as u64 - 1);
    ((exp - HIST_SUB_BITS + 1) * HIST_SUB_COUNT) as usize + sub as usize
}

/// The smallest value (ns) that lands in `bucket`.
pub const fn bucket_low(bucket: usize) -> u64 {
    let b = bucket as u64;
    let sub_count = HIST_SUB_COUNT as u64;
    if b < sub_count {
        return b;
    }
    let exp = b / sub_count - 1 + HIST_SUB_BITS as u64;
    let sub = b % sub_count;
    (1 << exp) + (sub << (exp - HIST_SUB_BITS as u64))
}

/// One past the largest value (ns) that lands in `bucket`.
pub const fn bucket_high(bucket: usize) -> u64 {
    if bucket + 1 >= HIST_BUCKETS {
        return u64::MAX;
    }
    bucket_low(bucket + 1)
}

// ---------------------------------------------------------------------------------------------
// Configuration, written by user space into `MAP_CONFIG[0]` before any program is attached.
// ---------------------------------------------------------------------------------------------
// Kernel struct offsets come from the running kernel's BTF; tracepoint field offsets from
// tracefs `events/<group>/<name>/format`. A zero offset where a field cannot be at offset 0
// means "unknown": the programs then count a read error instead of guessing.

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// `struct sk_buff`: `head` (pointer), `network_header` (u16), `dev` (pointer).
    /// `skb_dev`, `dev_ifindex`, `dev_nd_net` and `net_ns_inum` also reach the aya object as
    /// its read-only globals (`GLOBAL_OFF_*`), which is where its tp_btf programs read them.
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_dev: u32,
    /// `struct net_device`: `ifindex` (int), `nd_net.net` (pointer to `struct net`).
    pub dev_ifindex: u32,
    pub dev_nd_net: u32,
    /// `struct net`: `ns.inum` (unsigned int).
    pub net_ns_inum: u32,
    /// `skb:kfree_skb`: `skbaddr` and `reason` field offsets.
    pub tp_kfree_skbaddr: u32,
    pub tp_kfree_reason: u32,
    /// `skb:consume_skb`: `skbaddr`.
    pub tp_consume_skbaddr: u32,
    /// `tcp:tcp_retransmit_skb`: `saddr` and `daddr` (4 bytes each, network order), `sport`
    /// and `dport` (2 bytes each, host order).
    pub tp_retrans_saddr: u32,
    pub tp_retrans_daddr: u32,
    pub tp_retrans_sport: u32,
    pub tp_retrans_dport: u32,
    /// The namespace the node's programs watch (fentry passes of other namespaces are skipped).
    pub node_netns_inum: u32,
    /// VXLAN UDP destination port (host order), e.g. 8472 for flannel; 0 = do not look inside.
    pub vxlan_port: u16,
    /// Follow 1 in 2^sample_shift flows (0: every one, exact counts); flows marked
    /// `FLOW_ALWAYS` are always followed.
    pub sample_shift: u16,
    /// Changed by user space for each profiling window or step: journeys of other epochs are
    /// forgotten (their packets crossed hooks unseen, or belong to the last step).
    pub epoch: u32,
    /// A journey whose last checkpoint is older than this is abandoned.
    pub stale_ns: u64,
    /// Non-zero between duty-cycle windows: every program returns at once.
    pub paused: u32,
    /// The fentry/fexit netfilter fallback (`nf_fentry`): `struct nf_hook_state`'s `hook` (u8)
    /// and `net` (pointer; never at offset 0, so 0 means unknown); `struct xt_table`'s
    /// `priority` (int); `struct nft_pktinfo`'s `skb` and `state` (pointers). 0 where the
    /// kernel's BTF lacks them (that program then skips).
    pub nf_state_hook: u32,
    pub nf_state_net: u32,
    pub xt_table_priority: u32,
    pub nft_pkt_skb: u32,
    pub nft_pkt_state: u32,
    /// From a base chain's `struct nft_chain` (what `nft_do_chain` gets) to its
    /// `ops.priority`: negative, `chain` sits after `ops` in `struct nft_base_chain`.
    pub nft_chain_priority: i32,
    /// Argument positions in the traced functions, which differ between kernel versions
    /// (`ARG_*` indexes; `ARG_UNKNOWN` where the function or argument is missing).
    pub fentry_args: [u8; 8],
    /// `struct nf_hook_state`'s `pf` (u8): only IPv4 passes count (bridge or ARP chains reuse
    /// the hook numbers).
    pub nf_state_pf: u32,
    /// The one netfilter checkpoint that admits: the first point attached on LOCAL_OUT, where
    /// a locally sent packet meets netprof before any device (every other packet's path starts
    /// at a pod's `eth0` egress or the uplink's ingress). `CP_NONE` (0): none.
    pub nf_admit_cp: u16,
    /// The uplink's tc ingress checkpoint (its program admits: a path from another node starts
    /// there).
    pub uplink_ingress_cp: u16,
    /// `FLOW_ANY_PEER` / `FLOW_ANY_PORT` when `MAP_FLOWS` holds such keys.
    pub flow_flags: u32,
    /// The uplink's tc egress checkpoint, and whether its program admits: only where no
    /// LOCAL_OUT netfilter point does (a node without iptables tables), so that locally sent
    /// packets still start their path on this node.
    pub uplink_egress_cp: u16,
    pub uplink_egress_admits: u16,
    /// The uplink's backlog checkpoint when the uplink is a veth (frames from the other node
    /// are queued by `netif_rx`): paths from the other node start there (marked there,
    /// admitted at tc ingress), so the wait for the receive softirq is timed on this node as
    /// on every other veth. `CP_NONE` on a NIC.
    pub uplink_backlog_cp: u16,
    pub _pad5: u16,
    /// The uplink's ifindex in the node namespace (`node_netns_inum`), for that admission.
    pub uplink_ifindex: u32,
    pub _pad6: u32,
    /// Which point the shared netfilter program (`PROG_NF_POINT`) records, from where a
    /// followed packet was last (see `NfNextPoint`). All zero (nothing recorded) until user
    /// space has linked the points.
    pub nf_next_point: NfNextPoint,
    pub _pad7: [u8; 3],
}

/// `Config::flow_flags`: some flows match any peer (keys with `addr_lo == 0`: two more lookups
/// per admission check).
pub const FLOW_ANY_PEER: u32 = 1;
/// `Config::flow_flags`: some TCP/UDP flows match any port (keys with `port == 0`).
pub const FLOW_ANY_PORT: u32 = 2;

/// Indexes into `Config::fentry_args`.
pub const ARG_IPT_SKB: usize = 0;
pub const ARG_IPT_STATE: usize = 1;
pub const ARG_IPT_TABLE: usize = 2;
pub const ARG_CT_SKB: usize = 3;
pub const ARG_CT_STATE: usize = 4;
pub const ARG_NFT_PKT: usize = 5;
pub const ARG_NFT_CHAIN: usize = 6;
pub const ARG_UNKNOWN: u8 = 0xff;

// ---------------------------------------------------------------------------------------------
// Program names (at most 15 bytes: the kernel cuts longer names) and where they attach.

/// tc classifiers (ingress and egress) on node devices; checkpoint ids from
/// `MAP_NODE_DEVICES` by ifindex. They never admit.
pub const PROG_TC_INGRESS: &str = "cp_tc_ingress";
pub const PROG_TC_EGRESS: &str = "cp_tc_egress";
/// tc ingress on the node's uplink: admits (a path from another node starts here; VXLAN
/// packets are matched by their inner flow). Checkpoint `Config::uplink_ingress_cp`.
pub const PROG_TC_UPLINK_INGRESS: &str = "cp_tc_upl_in";
/// tc egress on the node's uplink: checkpoint `Config::uplink_egress_cp`; admits only with
/// `Config::uplink_egress_admits`.
pub const PROG_TC_UPLINK_EGRESS: &str = "cp_tc_upl_eg";
/// The same on pods' `eth0`, found by MAC address in `MAP_POD_DEVICES`; egress admits (a
/// pod's packets start their path there).
pub const PROG_TC_POD_INGRESS: &str = "cp_tc_pod_in";
pub const PROG_TC_POD_EGRESS: &str = "cp_tc_pod_eg";
/// Admission for the tc checkpoints (tail-called through `MAP_TC_ADMIT`, never attached).
pub const PROG_TC_ADMIT: &str = "cp_tc_admit";
/// Admission for the netfilter checkpoints (netfilter object, through `MAP_NF_ADMIT`).
pub const PROG_NF_ADMIT: &str = "nf_admit";
/// tp_btf on `TP_DEV_RX` / `TP_DEV_TX`: every device of every namespace; only devices in
/// `MAP_DEVICES` are checkpoints.
pub const PROG_DEV_RX: &str = "cp_dev_rx";
pub const PROG_DEV_TX: &str = "cp_dev_tx";
pub const TP_DEV_RX: &str = "netif_receive_skb";
pub const TP_DEV_TX: &str = "net_dev_start_xmit";
/// tp_btf on `TP_BACKLOG`: a frame queued on a CPU's receive backlog (a veth's transmit hands
/// its frame to the peer there); only devices in `MAP_DEVICES` are checkpoints, and the uplink
/// admits when `Config::uplink_backlog_cp` is set.
pub const PROG_BACKLOG: &str = "cp_backlog";
pub const TP_BACKLOG: &str = "netif_rx";
/// Classic tracepoints `skb:kfree_skb`, `skb:consume_skb`, `tcp:tcp_retransmit_skb`.
pub const PROG_KFREE_SKB: &str = "cp_kfree_skb";
pub const PROG_CONSUME_SKB: &str = "cp_consume_skb";
/// The same two as tp_btf (raw arguments: no perf record is built per event, which made the
/// classic ones the costliest programs, ~400 ns/run, on every skb the kernel frees). Preferred;
/// the classic ones are the fallback where these do not load.
pub const PROG_KFREE_SKB_BTF: &str = "cp_kfree_btf";
pub const PROG_CONSUME_SKB_BTF: &str = "cp_consume_btf";
/// tp_btf `skb_copy_datagram_iovec`: a packet's data handed to a socket reader ends its
/// journey there. UDP and TCP receive paths free such skbs without `consume_skb` (e.g.
/// `skb_consume_udp`, deferred frees), so without it their journeys would never end, and a
/// reused skb address would continue a finished journey.
pub const PROG_DELIVER_BTF: &str = "cp_deliver_btf";
pub const TP_DELIVER: &str = "skb_copy_datagram_iovec";
pub const PROG_TCP_RETRANSMIT: &str = "cp_tcp_retrans";
/// The fentry/fexit fallback for kernels without netfilter links (`nf_fentry.rs`): entry and
/// exit of conntrack (`nf_conntrack_in`) and of the table walkers of iptables-legacy
/// (`ipt_do_table`) and nftables / iptables-nft (`nft_do_chain`). Each pair records the
/// checkpoints of the netfilter points around the function's priority (`nf_points_around`).
pub const PROG_FENTRY_CT: &str = "cp_fe_ct";
pub const PROG_FEXIT_CT: &str = "cp_fx_ct";
pub const PROG_FENTRY_IPT: &str = "cp_fe_ipt";
pub const PROG_FEXIT_IPT: &str = "cp_fx_ipt";
pub const PROG_FENTRY_NFT: &str = "cp_fe_nft";
pub const PROG_FEXIT_NFT: &str = "cp_fx_nft";
/// `(function, entry program, exit program)`.
pub const NF_TRACED: [(&str, &str, &str); 3] = [
    ("nf_conntrack_in", PROG_FENTRY_CT, PROG_FEXIT_CT),
    ("ipt_do_table", PROG_FENTRY_IPT, PROG_FEXIT_IPT),
    ("nft_do_chain", PROG_FENTRY_NFT, PROG_FEXIT_NFT),
];
/// Verifier twins of the fallback (`(program, tracepoint)`): the fentry/fexit bodies behind
/// tp_btf entries with as many arguments, loaded by the tests only, so the fallback's code
/// passes a verifier on kernels that refuse fentry. The agent never loads them.
pub const VERIFIER_TWINS: [(&str, &str); 3] = [
    ("cp_vt_ct", "consume_skb"),
    ("cp_vt_ipt", "kfree_skb"),
    ("cp_vt_nft", "consume_skb"),
];
/// Every program of the aya object.
pub const AYA_PROGRAMS: [&str; 25] = [
    PROG_TC_INGRESS,
    PROG_TC_EGRESS,
    PROG_TC_UPLINK_INGRESS,
    PROG_TC_UPLINK_EGRESS,
    PROG_TC_ADMIT,
    PROG_TC_POD_INGRESS,
    PROG_TC_POD_EGRESS,
    PROG_DEV_RX,
    PROG_DEV_TX,
    PROG_BACKLOG,
    PROG_KFREE_SKB,
    PROG_CONSUME_SKB,
    PROG_KFREE_SKB_BTF,
    PROG_CONSUME_SKB_BTF,
    PROG_DELIVER_BTF,
    PROG_TCP_RETRANSMIT,
    PROG_FENTRY_CT,
    PROG_FEXIT_CT,
    PROG_FENTRY_IPT,
    PROG_FEXIT_IPT,
    PROG_FENTRY_NFT,
    PROG_FEXIT_NFT,
    VERIFIER_TWINS[0].0,
    VERIFIER_TWINS[1].0,
    VERIFIER_TWINS[2].0,
];
/// The netfilter program of every point but the admitting one (object `profiler-nf`), one
/// program attached at every such (hook, point). A program cannot learn the priority it was
/// linked at, so it takes its point from the followed packet's journey: the next point
/// attached on its hook after the journey's last checkpoint (`nf_resume_index`,
/// `Config::nf_next_point`). One program instead of one per point keeps netprof's code on a
/// packet's path to one image that stays in the instruction cache from point to point.
pub const PROG_NF_POINT: &str = "nf_point";
/// The netfilter program of the admitting point (`Config::nf_admit_cp`, the first point on
/// LOCAL_OUT): records that checkpoint, and hands a packet not followed yet to admission.
pub const PROG_NF_OUT_ENTRY: &str = "nf_out_entry";
/// The netfilter object's programs. (The gauge is `PROG_NF_POINT` too: what it measures of
/// netprof between two points is then exactly the code every other point runs.)
pub const NF_OBJECT_PROGRAMS: [&str; 3] = [PROG_NF_POINT, PROG_NF_OUT_ENTRY, PROG_NF_ADMIT];

/// Where on `hook` a followed packet whose journey's last checkpoint is `last_cp` resumes:
/// 0 entering the hook, `k + 1` right after point `k` of that hook, `NF_RESUME_AFTER_GAUGE`
/// right after the gauge. An index into `Config::nf_next_point[hook]`. (Compares only: a
/// division by the point count compiles to arithmetic whose bound the verifier cannot follow.)
#[inline(always)]
pub const fn nf_resume_index(hook: u32, last_cp: u16) -> usize {
    if last_cp == CP_NF_GAUGE {
        return if hook == NF_GAUGE_HOOK {
            NF_RESUME_AFTER_GAUGE
        } else {
            0
        };
    }
    if hook >= NF_HOOK_COUNT {
        return 0;
    }
    let first = nf_checkpoint(hook, 0);
    if last_cp >= first && last_cp < first + NF_POINT_COUNT as u16 {
        (last_cp - first) as usize + 1
    } else {
        0
    }
}

/// The netfilter checkpoint a followed packet reaches on `hook` coming from `last_cp`, by
/// the table user space wrote (`None` where the hook has no point attached).
#[inline(always)]
pub fn nf_next_checkpoint(table: &NfNextPoint, hook: u32, last_cp: u16) -> Option<u16> {
    nf_checkpoint_at(table, hook, nf_resume_index(hook, last_cp))
}

/// The netfilter checkpoint at resume index `resume` (`nf_resume_index`) of `hook`.
#[inline(always)]
pub fn nf_checkpoint_at(table: &NfNextPoint, hook: u32, resume: usize) -> Option<u16> {
    match *table.get(hook as usize)?.get(resume)? {
        0 => None,
        NF_NEXT_GAUGE => Some(CP_NF_GAUGE),
        next => Some(nf_checkpoint(hook, next as u32 - 1)),
    }
}

/// `nf_resume_index` right after the gauge.
pub const NF_RESUME_AFTER_GAUGE: usize = NF_POINT_COUNT as usize + 1;
/// An `NfNextPoint` entry: the gauge (`CP_NF_GAUGE`) comes next.
pub const NF_NEXT_GAUGE: u8 = u8::MAX;

/// `Config::nf_next_point`: per hook and resume index, 1 + the point a packet reaches next
/// (the first attached point at or after that index, or the hook's first attached point when
/// none is left: the hook is crossed again), or `NF_NEXT_GAUGE`; 0 where the hook has no
/// point attached.
pub type NfNextPoint = [[u8; NF_RESUME_AFTER_GAUGE + 1]; NF_HOOK_COUNT as usize];

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all these are #[repr(C)], Copy, made only of integers, with explicit padding.
    unsafe impl aya::Pod for DeviceKey {}
    unsafe impl aya::Pod for DeviceCheckpoints {}
    unsafe impl aya::Pod for NodeDevice {}
    unsafe impl aya::Pod for PodDevice {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowRule {}
    unsafe impl aya::Pod for Journey {}
    unsafe impl aya::Pod for Histogram {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for Scratch {}
    unsafe impl aya::Pod for BacklogMark {}
}

const _: () = assert!(NF_CP_END <= CP_NF_GAUGE && CP_NF_GAUGE < CP_CONSUMED);
// Nothing iptables registers sits between the gauge's point and the gauge.
const _: () = assert!(NF_GAUGE_PRIORITY < 0 && NF_GAUGE_PRIORITY > -100);
const _: () = assert!(NF_GAUGE_PRIORITY < NF_POINT_PRIORITIES[NF_GAUGE_AFTER as usize + 1]);
const _: () = assert!(MAX_CHECKPOINTS <= SEGMENT_INBOUND as u32);
const _: () = assert!((DEVICE_CP_BASE as u32) < MAX_CHECKPOINTS);
const _: () = assert!(core::mem::size_of::<DeviceCheckpoints>() == 12);
const _: () = assert!(core::mem::size_of::<NodeDevice>() == 8);
const _: () = assert!(core::mem::size_of::<PodDevice>() == 16);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 12);
const _: () = assert!(core::mem::size_of::<Journey>() == 48 + JOURNEY_CAP * 6);
const _: () = assert!(JOURNEY_CAP.is_multiple_of(4));
const _: () = assert!(core::mem::size_of::<Config>() == 184);
const _: () = assert!(core::mem::size_of::<Histogram>() <= 32 * 1024);
const _: () = assert!(JOURNEY_SLOTS.is_power_of_two() && journey_slot(u64::MAX) < JOURNEY_SLOTS);
const _: () = assert!(POD_DEVICE_SLOTS.is_power_of_two() && NODE_DEVICE_SLOTS.is_power_of_two());
const _: () = assert!(pod_device_slot([0xff; 6]) < POD_DEVICE_SLOTS);

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    #[test]
    fn buckets_are_contiguous_and_bound_the_error() {
        for b in 0..HIST_BUCKETS - 1 {
            let (lo, hi) = (bucket_low(b), bucket_high(b));
            assert!(hi > lo, "bucket {b}");
            assert_eq!(bucket_of(lo), b);
            assert_eq!(bucket_of(hi - 1), b);
            if lo >= HIST_SUB_COUNT as u64 {
                assert!(
                    (hi - lo) * HIST_SUB_COUNT as u64 <= lo,
                    "bucket {b} too wide"
                );
            }
        }
        assert_eq!(bucket_of(u64::MAX), HIST_BUCKETS - 1);
    }

    #[test]
    fn log2_matches_leading_zeros() {
        for v in [1u64, 2, 3, 31, 32, 33, 1000, 1 << 40, u64::MAX] {
            assert_eq!(log2(v), 63 - v.leading_zeros());
        }
    }

    #[test]
    fn program_names_are_unique_kernel_names() {
        let mut names = AYA_PROGRAMS.to_vec();
        names.extend(NF_OBJECT_PROGRAMS);
        for (i, name) in names.iter().enumerate() {
            assert!(name.len() <= 15, "{name} is longer than the kernel keeps");
            assert!(!names[..i].contains(name), "{name} twice");
        }
    }

    #[test]
    fn traced_functions_map_onto_the_points_around_them() {
        // Conntrack on PRE_ROUTING: the link points -201 and -199.
        assert_eq!(nf_points_around(NF_PRI_CONNTRACK), (Some(1), Some(2)));
        // Every standard table lands between the two points that bracket it as links.
        for (priority, points) in [
            (-300, (0, 1)),
            (-150, (2, 3)),
            (-100, (3, 4)),
            (0, (4, 5)),
            (50, (5, 6)),
            (100, (5, 6)),
        ] {
            assert_eq!(
                nf_points_around(priority),
                (Some(points.0), Some(points.1)),
                "priority {priority}"
            );
        }
        // Before the first point (defrag -400) and after the last (confirm).
        assert_eq!(nf_points_around(-400), (None, Some(0)));
        assert_eq!(nf_points_around(i32::MAX), (Some(NF_POINT_COUNT - 1), None));
    }

    #[test]
    fn netfilter_ids_fit_before_the_pseudo_checkpoints() {
        assert_eq!(nf_checkpoint(NF_HOOK_PRE_ROUTING, 0), NF_CP_BASE);
        assert_eq!(
            nf_checkpoint(NF_HOOK_POST_ROUTING, NF_POINT_COUNT - 1) + 1,
            NF_CP_END
        );
    }

    #[test]
    fn flow_keys_are_the_same_both_ways() {
        let (a, b) = (
            u32::from_ne_bytes([198, 19, 1, 2]),
            u32::from_ne_bytes([198, 19, 2, 2]),
        );
        assert_eq!(
            FlowKey::new(IPPROTO_TCP, a, b, 80),
            FlowKey::new(IPPROTO_TCP, b, a, 80)
        );
        assert_ne!(
            FlowKey::new(IPPROTO_TCP, a, b, 80),
            FlowKey::new(IPPROTO_TCP, a, b, 81)
        );
        assert_eq!(FlowKey::any_peer(IPPROTO_TCP, b, 80).addr_lo, 0);
    }

    #[test]
    fn flow_sampling_keeps_about_one_in_n_and_all_at_shift_zero() {
        for port in 0..=u16::MAX {
            assert!(flow_sampled_in(IPPROTO_TCP, port, 0));
        }
        for shift in [1u16, 4, 6] {
            let kept = (0..=u16::MAX)
                .filter(|&port| flow_sampled_in(IPPROTO_TCP, port, shift))
                .count() as f64;
            let expected = 65_536.0 / f64::from(1u32 << shift);
            assert!(
                (kept - expected).abs() < expected * 0.05,
                "shift {shift}: kept {kept} of 65536, expected about {expected}"
            );
        }
        // Ephemeral ports in a row (as a load tool opens connections) are not all in or out.
        let run: Vec<bool> = (40_000..40_064)
            .map(|p| flow_sampled_in(IPPROTO_TCP, p, 4))
            .collect();
        assert!(run.iter().any(|&k| k) && run.iter().any(|&k| !k));
    }

    #[test]
    fn journey_slots_spread_slab_neighbours() {
        // skbs 256 bytes apart, as a slab hands them out, land in distinct slots.
        let base = 0xffff_8880_1234_5600u64;
        let mut slots: Vec<u32> = (0..1024).map(|i| journey_slot(base + i * 256)).collect();
        slots.sort_unstable();
        slots.dedup();
        assert!(slots.len() > 1000, "{} distinct slots of 1024", slots.len());
    }
}
